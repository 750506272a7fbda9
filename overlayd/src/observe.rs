//! What the daemon shows about itself: one shared, read-mostly view of the running dataplane
//! (FDB snapshot, per-worker counters), sync and repair counters, and the `Status` document
//! that `/status`, `/metrics` and `overlayd status` are all built from.
//!
//! Nothing here is on the packet path: workers never see `Observed`; readers load the same
//! atomics the workers write, at scrape time only.

use std::fmt::Display;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use crate::fdb::FdbHandle;
use crate::health::Health;
use crate::path::event::PathEvent;
use crate::path::DropReason;
use crate::stats::{Totals, WorkerStats};
use crate::wire::ethernet::MacAddr;

/// Facts about this node, fixed once the daemon has started its dataplane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnNode {
    pub node: String,
    /// The IPv4 side when EnableIPv4 is on (`podCIDR`, `vtepIP`, `vtepMAC` at the top level;
    /// absent on an IPv6-only node).
    #[serde(flatten)]
    pub ipv4: Option<PeerStatusV4>,
    pub device: String,
    pub vni: u32,
    pub port: u16,
    pub mtu: u32,
    /// The IPv6 side when EnableIPv6 is on: this node's IPv6 podCIDR, IPv6 VTEP address and
    /// the VtepMAC announced in `backend-v6-data` (the device's one MAC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<PeerStatusV6>,
}

/// The dataplane currently running, and the counters of the ones it replaced (a device
/// rebuild starts new workers; their predecessors' counts are folded in here so every counter
/// stays monotonic, as Prometheus requires).
#[derive(Default)]
struct Dataplane {
    fdb: Option<FdbHandle>,
    workers: Vec<Arc<WorkerStats>>,
    retired: Totals,
}

/// Shared between the control loop (writer) and the HTTP handlers (readers).
#[derive(Default)]
pub struct Observed {
    pub health: Arc<Health>,
    /// This node's identity; replaced when its lease moves (etcd: a new subnet).
    own: Mutex<Option<OwnNode>>,
    dataplane: Mutex<Dataplane>,
    /// Node-source states applied to the FDB and the kernel.
    pub syncs: AtomicU64,
    /// Rejected node-source inputs (identical repeats counted once) and failed reconciles.
    pub sync_errors: AtomicU64,
    /// Unix time (milliseconds) of the last successful sync; 0 before the first.
    pub last_sync_unix_ms: AtomicU64,
    /// Routes and neighbours restored after someone else removed or changed them.
    pub kernel_repairs: AtomicU64,
    /// The device was found down and set up again.
    pub device_set_up: AtomicU64,
    /// The device vanished and the dataplane was rebuilt.
    pub device_rebuilds: AtomicU64,
    /// Masquerade / FORWARD rules (`crate::netfilter`), written by their checker thread.
    pub netfilter: Arc<crate::netfilter::Shared>,
    /// Route/neighbour changes the kernel refused (every attempt counts).
    pub kernel_errors: AtomicU64,
    /// The changes failing now (retried with backoff).
    kernel_failing: Mutex<Vec<FailingChange>>,
    /// Nodes the model left out of the peer set, with their reasons.
    skipped: Mutex<Vec<SkippedPeer>>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Observed {
    #[must_use]
    pub fn new(health: Arc<Health>) -> Self {
        Observed {
            health,
            ..Observed::default()
        }
    }

    /// Records this node's identity: at start, and again when its lease moves.
    pub fn set_own(&self, own: OwnNode) {
        *self.own.lock().unwrap_or_else(PoisonError::into_inner) = Some(own);
    }

    /// Points the view at a (new) dataplane; the previous workers' counters are kept as totals.
    pub fn attach(&self, fdb: FdbHandle, workers: Vec<Arc<WorkerStats>>) {
        let mut d = self
            .dataplane
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = Totals::sum(d.workers.iter().map(AsRef::as_ref));
        add_totals(&mut d.retired, &old);
        d.fdb = Some(fdb);
        d.workers = workers;
    }

    /// A sync (state applied to FDB and kernel) succeeded now.
    pub fn synced(&self) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.last_sync_unix_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn sync_failed(&self) {
        self.sync_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The nodes left out of the applied state.
    pub fn set_skipped(&self, state: &fdb_sync::ClusterState) {
        let v = state
            .skipped
            .iter()
            .map(|s| SkippedPeer {
                node: s.node.clone(),
                reason: s.kind.as_str().to_string(),
                message: s.reason.clone(),
            })
            .collect();
        *self.skipped.lock().unwrap_or_else(PoisonError::into_inner) = v;
    }

    /// What a reconcile pass left failing, and how many attempts the kernel refused in it.
    pub fn set_kernel_failures(&self, errors: usize, failing: Vec<FailingChange>) {
        self.kernel_errors
            .fetch_add(errors as u64, Ordering::Relaxed);
        *self
            .kernel_failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = failing;
    }

    /// The whole picture, read now.
    #[must_use]
    pub fn status(&self) -> Status {
        let d = self
            .dataplane
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut totals = Totals::sum(d.workers.iter().map(AsRef::as_ref));
        add_totals(&mut totals, &d.retired);
        let queues = d
            .workers
            .iter()
            .enumerate()
            .map(|(queue, w)| QueueStatus {
                queue,
                mode: w.mode().as_str().to_string(),
                restarts: w.restarts.load(Ordering::Relaxed),
            })
            .collect();
        let peers = d.fdb.as_ref().map_or_else(Vec::new, |f| {
            f.load()
                .entries()
                .iter()
                .map(|e| PeerStatus {
                    node: e.node.to_string(),
                    ipv4: e.v4.map(|v4| PeerStatusV4 {
                        pod_cidr: v4.pod_cidr,
                        vtep_ip: v4.vtep_ip,
                        vtep_mac: v4.vtep_mac,
                    }),
                    tx_packets: e.counters.tx_packets.load(Ordering::Relaxed),
                    tx_bytes: e.counters.tx_bytes.load(Ordering::Relaxed),
                    rx_packets: e.counters.rx_packets.load(Ordering::Relaxed),
                    rx_bytes: e.counters.rx_bytes.load(Ordering::Relaxed),
                    last_rx_unix: e.counters.last_rx_unix.load(Ordering::Relaxed),
                    ipv6: e.v6.map(|v6| PeerStatusV6 {
                        pod_cidr: v6.pod_cidr,
                        vtep_ip: v6.vtep_ip,
                        vtep_mac: v6.vtep_mac,
                    }),
                })
                .collect()
        });
        drop(d);
        let skipped = self
            .skipped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let kernel_failing = self
            .kernel_failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            own: self
                .own
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            ready: self.health.ready(),
            not_ready: self.health.missing().into_iter().collect(),
            syncs: self.syncs.load(Ordering::Relaxed),
            sync_errors: self.sync_errors.load(Ordering::Relaxed),
            last_sync_unix_ms: self.last_sync_unix_ms.load(Ordering::Relaxed),
            kernel_repairs: self.kernel_repairs.load(Ordering::Relaxed),
            device_set_up: self.device_set_up.load(Ordering::Relaxed),
            device_rebuilds: self.device_rebuilds.load(Ordering::Relaxed),
            kernel_errors: self.kernel_errors.load(Ordering::Relaxed),
            kernel_failing,
            skipped,
            totals: Traffic {
                tx_packets: totals.tx_packets,
                tx_bytes: totals.tx_bytes,
                rx_packets: totals.rx_packets,
                rx_bytes: totals.rx_bytes,
            },
            drops: DropReason::ALL
                .iter()
                .map(|r| DropCount {
                    direction: r.direction().to_string(),
                    reason: r.as_str().to_string(),
                    count: totals.drop_count(*r),
                })
                .collect(),
            events: PathEvent::ALL
                .iter()
                .map(|e| EventCount {
                    event: e.as_str().to_string(),
                    count: totals.event_count(*e),
                })
                .collect(),
            queues,
            peers,
            netfilter: self.netfilter.status(),
        }
    }
}

/// Serde as the type's `Display` / `FromStr` text (MAC addresses).
mod display {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn add_totals(into: &mut Totals, t: &Totals) {
    into.tx_packets += t.tx_packets;
    into.tx_bytes += t.tx_bytes;
    into.rx_packets += t.rx_packets;
    into.rx_bytes += t.rx_bytes;
    for (a, b) in into.drops.iter_mut().zip(&t.drops) {
        *a += b;
    }
    for (a, b) in into.events.iter_mut().zip(&t.events) {
        *a += b;
    }
}

/// The `/status` document (`overlayd status --json` prints it unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    /// `None` until the own node (with its podCIDR) has been seen.
    pub own: Option<OwnNode>,
    pub ready: bool,
    pub not_ready: Vec<String>,
    pub syncs: u64,
    pub sync_errors: u64,
    pub last_sync_unix_ms: u64,
    pub kernel_repairs: u64,
    pub device_set_up: u64,
    pub device_rebuilds: u64,
    /// Route/neighbour changes the kernel refused, every attempt counted.
    #[serde(default)]
    pub kernel_errors: u64,
    /// Changes the kernel refuses now; each is retried with its own backoff.
    #[serde(default)]
    pub kernel_failing: Vec<FailingChange>,
    /// Nodes that are not peers, with the reason (sorted as the model decided: by name).
    #[serde(default)]
    pub skipped: Vec<SkippedPeer>,
    pub totals: Traffic,
    /// Every drop reason, zero included.
    pub drops: Vec<DropCount>,
    /// Path MTU and ECN events of the packet path (`PathEvent`), zero included.
    #[serde(default)]
    pub events: Vec<EventCount>,
    pub queues: Vec<QueueStatus>,
    /// The FDB, sorted by node name.
    pub peers: Vec<PeerStatus>,
    /// Masquerade / FORWARD rules; absent when overlayd manages none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netfilter: Option<crate::netfilter::NetfilterStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropCount {
    /// `tx` (pod to network) or `rx` (network to pod).
    pub direction: String,
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventCount {
    pub event: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    pub queue: usize,
    /// `offload` or `plain`.
    pub mode: String,
    /// Times the supervisor restarted this queue's worker.
    #[serde(default)]
    pub restarts: u64,
}

/// One FDB entry with its traffic counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub node: String,
    /// The peer's IPv4 VTEP (`podCIDR`, `vtepIP`, `vtepMAC` at the top level; absent for an
    /// IPv6-only peer).
    #[serde(flatten)]
    pub ipv4: Option<PeerStatusV4>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Unix seconds of the last packet received from this peer; 0 = never.
    pub last_rx_unix: u64,
    /// The peer's IPv6 VTEP when dual-stack is on (its traffic is counted in the fields
    /// above: one peer, one set of counters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<PeerStatusV6>,
}

/// A peer's (or this node's) IPv4 side: IPv4 pods behind `pod_cidr`, reached over IPv4 at
/// `vtep_ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatusV4 {
    #[serde(rename = "podCIDR", with = "display")]
    pub pod_cidr: Ipv4Network,
    #[serde(rename = "vtepIP")]
    pub vtep_ip: Ipv4Addr,
    #[serde(rename = "vtepMAC", with = "display")]
    pub vtep_mac: MacAddr,
}

/// A peer's (or this node's) IPv6 side: IPv6 pods behind `pod_cidr`, reached over IPv6 at
/// `vtep_ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatusV6 {
    #[serde(rename = "podCIDR", with = "display")]
    pub pod_cidr: Ipv6Network,
    #[serde(rename = "vtepIP")]
    pub vtep_ip: Ipv6Addr,
    #[serde(rename = "vtepMAC", with = "display")]
    pub vtep_mac: MacAddr,
}

/// A side's podCIDR, VTEP address and VtepMAC as text (the status table, the info metrics).
fn texts(pod_cidr: &dyn Display, vtep_ip: &dyn Display, vtep_mac: &MacAddr) -> [String; 3] {
    [
        pod_cidr.to_string(),
        vtep_ip.to_string(),
        vtep_mac.to_string(),
    ]
}

impl PeerStatusV4 {
    /// podCIDR, VTEP address and VtepMAC as text.
    #[must_use]
    pub fn texts(&self) -> [String; 3] {
        texts(&self.pod_cidr, &self.vtep_ip, &self.vtep_mac)
    }
}

impl PeerStatusV6 {
    /// podCIDR, VTEP address and VtepMAC as text.
    #[must_use]
    pub fn texts(&self) -> [String; 3] {
        texts(&self.pod_cidr, &self.vtep_ip, &self.vtep_mac)
    }
}

/// A node left out of the peer set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedPeer {
    pub node: String,
    /// Stable label (`fdb_sync::SkipReason::as_str`), as in `overlayd_peers_skipped{reason}`.
    pub reason: String,
    /// What is wrong, naming the value.
    pub message: String,
}

/// A route/neighbour change the kernel refuses now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailingChange {
    pub change: String,
    pub error: String,
    pub attempts: u32,
}

impl Status {
    /// The count of one path event (0 when the name is unknown).
    #[must_use]
    pub fn event_count(&self, event: &str) -> u64 {
        self.events
            .iter()
            .find(|e| e.event == event)
            .map_or(0, |e| e.count)
    }

    /// The count of one drop reason (0 when the name is unknown).
    #[must_use]
    pub fn drop_count(&self, direction: &str, reason: &str) -> u64 {
        self.drops
            .iter()
            .find(|d| d.direction == direction && d.reason == reason)
            .map_or(0, |d| d.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdb::{Fdb, Peer, PeerV4};
    use crate::stats::OffloadMode;
    use arc_swap::ArcSwap;

    fn peer(name: &str, n: u8) -> Peer {
        Peer {
            name: name.into(),
            v4: Some(PeerV4 {
                pod_cidr: format!("10.244.{n}.0/24").parse().unwrap(),
                vtep_ip: Ipv4Addr::new(198, 18, 0, n),
                vtep_mac: MacAddr([0x0a, 0x58, 10, 244, n, 0]),
            }),
            v6: None,
        }
    }

    /// A dual-stack peer shows its IPv6 side, and traffic from its IPv6 VTEP counts on it.
    #[test]
    fn status_lists_the_ipv6_side_of_a_peer_and_its_traffic() {
        let obs = Observed::new(Arc::new(Health::default()));
        let dual = Peer {
            v6: Some(crate::fdb::PeerV6 {
                pod_cidr: "fd00:10:244:2::/64".parse().unwrap(),
                vtep_ip: "fd00:18::2".parse().unwrap(),
                vtep_mac: MacAddr([2, 0, 0, 0, 6, 2]),
            }),
            ..peer("b", 2)
        };
        let fdb: FdbHandle = Arc::new(ArcSwap::from_pointee(Fdb::from_peers(
            &[dual, peer("c", 3)],
            8472,
        )));
        obs.attach(fdb.clone(), vec![Arc::new(WorkerStats::default())]);
        fdb.load()
            .vtep_counters("fd00:18::2".parse::<Ipv6Addr>().unwrap())
            .unwrap()
            .add_rx(3, 300);
        let s = obs.status();
        let v6 = s.peers[0].ipv6.as_ref().unwrap();
        assert_eq!(v6.vtep_ip.to_string(), "fd00:18::2");
        assert_eq!(v6.pod_cidr.to_string(), "fd00:10:244:2::/64");
        assert_eq!(s.peers[0].rx_packets, 3);
        assert!(s.peers[1].ipv6.is_none());
        // JSON: an "ipv6" object for the dual-stack peer only; it reads back the same.
        let json = serde_json::to_value(&s.peers).unwrap();
        assert_eq!(
            json[0]["ipv6"],
            serde_json::json!({"podCIDR": "fd00:10:244:2::/64", "vtepIP": "fd00:18::2", "vtepMAC": "02:00:00:00:06:02"})
        );
        assert!(json[1].get("ipv6").is_none(), "{json}");
        let back: Vec<PeerStatus> = serde_json::from_value(json).unwrap();
        assert_eq!(back, s.peers);
        let text = crate::status::render(&s, 1000);
        let at = text.lines().position(|l| l.starts_with("b ")).unwrap();
        let next: Vec<_> = text
            .lines()
            .nth(at + 1)
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(
            next,
            ["fd00:10:244:2::/64", "fd00:18::2", "02:00:00:00:06:02"],
            "{text}"
        );
    }

    /// IPv6-only: a peer and an own node without an IPv4 side have no IPv4 keys in the JSON
    /// (never 0.0.0.0), read back the same, and show their IPv6 side on their line.
    #[test]
    fn ipv6_only_peer_and_node_have_no_ipv4_fields() {
        let obs = Observed::new(Arc::new(Health::default()));
        let v6 = |n: u8| crate::fdb::PeerV6 {
            pod_cidr: format!("fd00:10:244:{n}::/64").parse().unwrap(),
            vtep_ip: format!("fd00:18::{n}").parse().unwrap(),
            vtep_mac: MacAddr([2, 0, 0, 0, 6, n]),
        };
        let only6 = Peer {
            name: "b".into(),
            v4: None,
            v6: Some(v6(2)),
        };
        let fdb: FdbHandle = Arc::new(ArcSwap::from_pointee(Fdb::from_peers(&[only6], 8472)));
        obs.attach(fdb, vec![Arc::new(WorkerStats::default())]);
        obs.set_own(OwnNode {
            node: "a".into(),
            ipv4: None,
            device: "ovl.1".into(),
            vni: 1,
            port: 8472,
            mtu: 1450,
            ipv6: Some(PeerStatusV6 {
                pod_cidr: "fd00:10:244:1::/64".parse().unwrap(),
                vtep_ip: "fd00:18::1".parse().unwrap(),
                vtep_mac: MacAddr([2, 0, 0, 0, 6, 1]),
            }),
        });
        let s = obs.status();
        assert!(s.peers[0].ipv4.is_none());
        let json = serde_json::to_value(&s).unwrap();
        for doc in [&json["own"], &json["peers"][0]] {
            for key in ["podCIDR", "vtepIP", "vtepMAC"] {
                assert!(doc.get(key).is_none(), "{key} in {doc}");
            }
            assert!(doc["ipv6"]["vtepIP"].is_string(), "{doc}");
        }
        assert_eq!(serde_json::from_value::<Status>(json).unwrap(), s);
        let text = crate::status::render(&s, 1000);
        assert!(
            text.starts_with("node a  device ovl.1 (mtu 1450)  VNI 1  port 8472\n  IPv6 podCIDR fd00:10:244:1::/64  VTEP fd00:18::1"),
            "{text}"
        );
        let row: Vec<_> = text
            .lines()
            .find(|l| l.starts_with("b "))
            .unwrap()
            .split_whitespace()
            .take(4)
            .collect();
        assert_eq!(
            row,
            ["b", "fd00:10:244:2::/64", "fd00:18::2", "02:00:00:00:06:02"]
        );
    }

    /// A lease move (etcd: the subnet was taken, a new one leased) changes what status shows
    /// of this node.
    #[test]
    fn the_own_node_follows_a_lease_move() {
        let obs = Observed::new(Arc::new(Health::default()));
        assert!(obs.status().own.is_none());
        let own = |n: u8| OwnNode {
            node: "a".into(),
            ipv4: Some(PeerStatusV4 {
                pod_cidr: format!("10.244.{n}.0/24").parse().unwrap(),
                vtep_ip: Ipv4Addr::new(198, 18, 0, 1),
                vtep_mac: MacAddr([0x0a, 0x58, 10, 244, n, 0]),
            }),
            device: "ovl.1".into(),
            vni: 1,
            port: 8472,
            mtu: 1450,
            ipv6: None,
        };
        obs.set_own(own(1));
        obs.set_own(own(7));
        assert_eq!(obs.status().own, Some(own(7)));
    }

    #[test]
    fn status_reads_live_counters_and_survives_a_rebuild() {
        let obs = Observed::new(Arc::new(Health::default()));
        let fdb: FdbHandle = Arc::new(ArcSwap::from_pointee(Fdb::from_peers(
            &[peer("b", 2), peer("a", 3)],
            8472,
        )));
        let w = Arc::new(WorkerStats::default());
        w.set_mode(OffloadMode::Offload);
        w.tx_many(1, 100);
        w.count_drop(DropReason::RxUnknownSender);
        obs.attach(fdb.clone(), vec![w.clone()]);
        fdb.load()
            .vtep_counters(Ipv4Addr::new(198, 18, 0, 2))
            .unwrap()
            .add_rx(2, 200);
        let s = obs.status();
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.peers[0].node, "a", "sorted by node name");
        assert_eq!((s.peers[1].rx_packets, s.peers[1].rx_bytes), (2, 200));
        assert_eq!(s.totals.tx_bytes, 100);
        assert_eq!(s.drop_count("rx", "unknown_sender"), 1);
        assert_eq!(s.drops.len(), DropReason::COUNT);
        assert_eq!(s.queues[0].mode, "offload");

        // A rebuild: new workers, totals keep counting from where they were.
        let w2 = Arc::new(WorkerStats::default());
        w2.tx_many(1, 1);
        obs.attach(fdb, vec![w2]);
        let s2 = obs.status();
        assert_eq!(s2.totals.tx_packets, 2);
        assert_eq!(s2.drop_count("rx", "unknown_sender"), 1);

        // The JSON round-trips (the status client parses what the daemon serves).
        let json = serde_json::to_string(&s2).unwrap();
        assert!(json.contains("\"podCIDR\":\"10.244.3.0/24\""), "{json}");
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s2);
    }
}
