//! Makes the kernel's routes and neighbours on the TAP device equal to the desired peer set,
//! comparing with what the kernel actually holds (not what we believe we wrote), so the same
//! pass applies changes and repairs entries someone else removed.
//!
//! Both families are handled alike: a dual-stack peer also gets the IPv6 route of its IPv6
//! podCIDR via that subnet's network address and the permanent neighbour of that address to
//! its IPv6 VtepMAC (Flannel's `flannel-v6.<VNI>` entries, on the one TAP device here), the
//! route carrying the IPv6 path MTU (see `PeerRouteV6`).
//!
//! DirectRouting peers (`direct`) get a plain route via their node address on the interface
//! that reaches them instead of the TAP route and neighbour; a peer that moves between the two
//! has its old entries removed (the direct route replaces the VXLAN route in place, so the peer
//! never goes without one).
//!
//! Failures are isolated per entry: when the kernel refuses one route or neighbour, every other
//! entry is still added or removed in the same pass; the refused one is retried on later passes
//! with its own exponential backoff (1 s doubling to 60 s), counted, and logged when it starts
//! failing, when its error changes and when it recovers. Only a failed dump (nothing can be
//! compared) fails a pass as a whole.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::Result;
use fdb_sync::Peer;
use tracing::{debug, info, warn};

use super::direct::DirectPeers;
use super::model;
use crate::observe::FailingChange;
use crate::sys::netlink::{
    DirectRoute, DirectRouteV6, Netlink, PeerNeighbour, PeerNeighbourV6, PeerRoute, PeerRouteV6,
};
use crate::wire::ethernet::MacAddr;

/// First retry delay of a refused entry; doubles per failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One change to the kernel: the unit of failure isolation and retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    AddNeighbour { ip: Ipv4Addr, mac: MacAddr },
    AddRoute(PeerRoute),
    AddDirectRoute(DirectRoute),
    DeleteDirectRoute(DirectRoute),
    DeleteRoute(PeerRoute),
    DeleteNeighbour(Ipv4Addr),
    AddNeighbourV6 { ip: Ipv6Addr, mac: MacAddr },
    AddRouteV6(PeerRouteV6),
    DeleteRouteV6(PeerRouteV6),
    DeleteNeighbourV6(Ipv6Addr),
    AddDirectRouteV6(DirectRouteV6),
    DeleteDirectRouteV6(DirectRouteV6),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddNeighbour { ip, mac } => write!(f, "add neighbour {ip} lladdr {mac}"),
            Self::AddRoute(r) => write!(f, "add route {} via {}", r.dst, r.gateway),
            Self::AddDirectRoute(r) => write!(f, "add direct route {} via {}", r.dst, r.gateway),
            Self::DeleteDirectRoute(r) => {
                write!(f, "delete direct route {} via {}", r.dst, r.gateway)
            }
            Self::DeleteRoute(r) => write!(f, "delete route {} via {}", r.dst, r.gateway),
            Self::DeleteNeighbour(ip) => write!(f, "delete neighbour {ip}"),
            Self::AddNeighbourV6 { ip, mac } => write!(f, "add neighbour {ip} lladdr {mac}"),
            Self::AddRouteV6(r) => write!(f, "add route {} via {}", r.dst, r.gateway),
            Self::DeleteRouteV6(r) => write!(f, "delete route {} via {}", r.dst, r.gateway),
            Self::DeleteNeighbourV6(ip) => write!(f, "delete neighbour {ip}"),
            Self::AddDirectRouteV6(r) => {
                write!(f, "add direct route {} via {}", r.dst, r.gateway)
            }
            Self::DeleteDirectRouteV6(r) => {
                write!(f, "delete direct route {} via {}", r.dst, r.gateway)
            }
        }
    }
}

/// A change the kernel refused, and when to try it again.
#[derive(Debug, Clone)]
struct Failure {
    attempts: u32,
    retry_at: Instant,
    error: String,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Entries added, replaced or removed that were not failing before (a change we made or a
    /// repair of something changed behind our back).
    pub changed: usize,
    /// Entries that succeeded on a retry after failing.
    pub recovered: usize,
    /// Attempts the kernel refused in this pass.
    pub errors: usize,
    /// Changes still failing (tried now or waiting for their backoff).
    pub failing: usize,
}

/// The desired kernel entries for `peers`: for a VXLAN peer a permanent neighbour for its
/// podCIDR network address and an onlink route of its podCIDR via that address (Flannel's);
/// for a DirectRouting peer (in `direct`, with the interface that reaches it) a plain route of
/// its podCIDR via its node address.
fn desired(
    peers: &[Peer],
    direct: &DirectPeers,
) -> (Vec<PeerRoute>, Vec<PeerNeighbour>, Vec<DirectRoute>) {
    // The IPv4 sides; a peer without one (IPv6-only) has no IPv4 entry.
    let v4 = || peers.iter().filter_map(|p| p.v4);
    let direct_routes = v4()
        .filter_map(|p| {
            direct.get(&IpAddr::V4(p.vtep_ip)).map(|&oif| DirectRoute {
                dst: p.pod_cidr,
                gateway: p.vtep_ip,
                oif,
            })
        })
        .collect();
    let vxlan = || v4().filter(|p| !direct.contains_key(&IpAddr::V4(p.vtep_ip)));
    let routes = vxlan()
        .map(|p| PeerRoute {
            dst: p.pod_cidr,
            gateway: p.pod_cidr.network(),
        })
        .collect();
    let neighbours = vxlan()
        .map(|p| PeerNeighbour {
            ip: p.pod_cidr.network(),
            mac: model::mac(p.vtep_mac),
            permanent: true,
        })
        .collect();
    (routes, neighbours, direct_routes)
}

/// The desired IPv6 entries for `peers`: for every dual-stack peer a permanent neighbour for
/// its IPv6 podCIDR's network address (to its IPv6 VtepMAC) and an onlink route of that
/// podCIDR via that address, no MTU metric (Flannel's flannel-v6 entries); for one whose IPv6
/// VTEP is in `direct` (DirectRouting), a plain route of its IPv6 podCIDR via that address.
fn desired_v6(peers: &[Peer], direct: &DirectPeers) -> WantV6 {
    let all = || peers.iter().filter_map(|p| p.v6);
    let vxlan = || all().filter(|v| !direct.contains_key(&IpAddr::V6(v.vtep_ip)));
    WantV6 {
        routes: vxlan()
            .map(|v6| PeerRouteV6::for_subnet(v6.pod_cidr))
            .collect(),
        neighbours: vxlan()
            .map(|v6| PeerNeighbourV6 {
                ip: v6.pod_cidr.network(),
                mac: model::mac(v6.vtep_mac),
                permanent: true,
            })
            .collect(),
        direct: all()
            .filter_map(|v6| {
                direct
                    .get(&IpAddr::V6(v6.vtep_ip))
                    .map(|&oif| DirectRouteV6 {
                        dst: v6.pod_cidr,
                        gateway: v6.vtep_ip,
                        oif,
                    })
            })
            .collect(),
    }
}

/// The IPv6 entries a pass wants, or the kernel holds.
#[derive(Debug, Clone, Default)]
struct WantV6 {
    routes: Vec<PeerRouteV6>,
    neighbours: Vec<PeerNeighbourV6>,
    direct: Vec<DirectRouteV6>,
}

/// What turns the kernel's IPv6 entries (`have`) into the wanted ones, in the IPv4 order:
/// neighbours added first (a new route never resolves to nothing), then routes, direct routes
/// (replacing a VXLAN route in place), stale direct routes, stale routes, stale neighbours. A
/// route whose MTU differs is replaced in place, not deleted.
fn v6_changes(want: WantV6, have: WantV6) -> Vec<Change> {
    let have_routes: HashSet<PeerRouteV6> = have.routes.into_iter().collect();
    let have_neigh: HashSet<PeerNeighbourV6> = have.neighbours.into_iter().collect();
    let have_direct: HashSet<DirectRouteV6> = have.direct.into_iter().collect();
    let want_dsts: HashSet<(ipnetwork::Ipv6Network, Ipv6Addr)> =
        want.routes.iter().map(|r| (r.dst, r.gateway)).collect();
    let want_neigh_ips: HashSet<Ipv6Addr> = want.neighbours.iter().map(|n| n.ip).collect();
    let want_direct: HashSet<DirectRouteV6> = want.direct.iter().copied().collect();
    let mut changes = Vec::new();
    for n in want.neighbours.iter().filter(|n| !have_neigh.contains(n)) {
        changes.push(Change::AddNeighbourV6 {
            ip: n.ip,
            mac: n.mac,
        });
    }
    for r in want.routes.iter().filter(|r| !have_routes.contains(r)) {
        changes.push(Change::AddRouteV6(*r));
    }
    for r in want.direct.iter().filter(|r| !have_direct.contains(r)) {
        changes.push(Change::AddDirectRouteV6(*r));
    }
    for r in have_direct.iter().filter(|r| !want_direct.contains(r)) {
        changes.push(Change::DeleteDirectRouteV6(*r));
    }
    for r in have_routes
        .iter()
        .filter(|r| !want_dsts.contains(&(r.dst, r.gateway)))
    {
        changes.push(Change::DeleteRouteV6(*r));
    }
    // The kernel's own entries for multicast groups the device joins (MLD: ff02::16, the
    // solicited-node groups) are not ours to remove: they would only come back.
    for n in have_neigh
        .iter()
        .filter(|n| !want_neigh_ips.contains(&n.ip) && !n.ip.is_multicast())
    {
        changes.push(Change::DeleteNeighbourV6(n.ip));
    }
    changes
}

/// Per-entry failure state across passes.
#[derive(Debug, Default)]
pub struct Reconciler {
    failures: HashMap<Change, Failure>,
}

impl Reconciler {
    /// The changes failing now, sorted for display.
    #[must_use]
    pub fn failing(&self) -> Vec<FailingChange> {
        let mut v: Vec<FailingChange> = self
            .failures
            .iter()
            .map(|(c, f)| FailingChange {
                change: c.to_string(),
                error: f.error.clone(),
                attempts: f.attempts,
            })
            .collect();
        v.sort_by(|a, b| a.change.cmp(&b.change));
        v
    }

    /// One pass. Fails only when the kernel's tables cannot be read.
    pub async fn reconcile(
        &mut self,
        nl: &Netlink,
        index: u32,
        peers: &[Peer],
        direct: &DirectPeers,
    ) -> Result<Outcome> {
        let (want_routes, want_neigh, want_direct) = desired(peers, direct);
        // Sets, not lists: with thousands of peers a linear `contains` per entry is quadratic.
        let have_routes: HashSet<PeerRoute> = nl.routes(index).await?.into_iter().collect();
        let have_neigh: HashSet<PeerNeighbour> = nl.neighbours(index).await?.into_iter().collect();
        let want_route_set: HashSet<PeerRoute> = want_routes.iter().copied().collect();
        let want_neigh_ips: HashSet<Ipv4Addr> = want_neigh.iter().map(|n| n.ip).collect();
        let have_direct: HashSet<DirectRoute> =
            nl.direct_routes(index).await?.into_iter().collect();
        let want_direct_set: HashSet<DirectRoute> = want_direct.iter().copied().collect();

        // Neighbours first, so a new route never resolves to nothing.
        let mut changes = Vec::new();
        for n in want_neigh.iter().filter(|n| !have_neigh.contains(n)) {
            changes.push(Change::AddNeighbour {
                ip: n.ip,
                mac: n.mac,
            });
        }
        for r in want_routes.iter().filter(|r| !have_routes.contains(r)) {
            changes.push(Change::AddRoute(*r));
        }
        // A direct route replaces the peer's VXLAN route in place (same destination), so a
        // peer that moves never goes without a route; the VXLAN route's delete then finds none.
        for r in want_direct.iter().filter(|r| !have_direct.contains(r)) {
            changes.push(Change::AddDirectRoute(*r));
        }
        for r in have_direct.iter().filter(|r| !want_direct_set.contains(r)) {
            changes.push(Change::DeleteDirectRoute(*r));
        }
        for r in have_routes.iter().filter(|r| !want_route_set.contains(r)) {
            changes.push(Change::DeleteRoute(*r));
        }
        for n in have_neigh
            .iter()
            .filter(|n| !want_neigh_ips.contains(&n.ip))
        {
            changes.push(Change::DeleteNeighbour(n.ip));
        }
        changes.extend(v6_changes(
            desired_v6(peers, direct),
            WantV6 {
                routes: nl.routes_v6(index).await?,
                neighbours: nl.neighbours_v6(index).await?,
                direct: nl.direct_routes_v6(index).await?,
            },
        ));

        // A failure whose change is no longer needed (the peer left, someone fixed it) is over.
        let needed: HashSet<Change> = changes.iter().copied().collect();
        self.failures.retain(|c, _| needed.contains(c));

        let mut out = Outcome::default();
        let now = Instant::now();
        for c in changes {
            if self.failures.get(&c).is_some_and(|f| f.retry_at > now) {
                continue;
            }
            let result = match c {
                Change::AddNeighbour { ip, mac } => nl.replace_neighbour(index, ip, mac).await,
                Change::AddRoute(r) => nl.replace_route(index, r).await,
                Change::AddDirectRoute(r) => nl.replace_direct_route(r).await,
                Change::DeleteDirectRoute(r) => nl.delete_direct_route(r).await,
                Change::DeleteRoute(r) => nl.delete_route(index, r).await,
                Change::DeleteNeighbour(ip) => nl.delete_neighbour(index, ip).await,
                Change::AddNeighbourV6 { ip, mac } => nl.replace_neighbour_v6(index, ip, mac).await,
                Change::AddRouteV6(r) => nl.replace_route_v6(index, r).await,
                Change::DeleteRouteV6(r) => nl.delete_route_v6(index, r).await,
                Change::DeleteNeighbourV6(ip) => nl.delete_neighbour_v6(index, ip).await,
                Change::AddDirectRouteV6(r) => nl.replace_direct_route_v6(r).await,
                Change::DeleteDirectRouteV6(r) => nl.delete_direct_route_v6(r).await,
            };
            match result {
                Ok(()) => {
                    debug!(change = %c, "kernel change applied");
                    if let Some(f) = self.failures.remove(&c) {
                        info!(change = %c, attempts = f.attempts, "kernel accepted a change it refused before");
                        out.recovered += 1;
                    } else {
                        out.changed += 1;
                    }
                }
                Err(e) => {
                    out.errors += 1;
                    let error = e.to_string();
                    let f = self.failures.entry(c).or_insert(Failure {
                        attempts: 0,
                        retry_at: now,
                        error: String::new(),
                    });
                    f.attempts += 1;
                    let backoff = FIRST_BACKOFF
                        .saturating_mul(1 << (f.attempts - 1).min(16))
                        .min(MAX_BACKOFF);
                    f.retry_at = now + backoff;
                    if f.error == error {
                        debug!(change = %c, attempts = f.attempts, error = %error, "kernel still refuses a change");
                    } else {
                        warn!(change = %c, attempts = f.attempts, retry_in = ?backoff, error = %error, "kernel refused a change; the other entries are programmed, this one is retried with backoff");
                        f.error = error;
                    }
                }
            }
        }
        out.failing = self.failures.len();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_entries_are_flannels_onlink_route_and_permanent_neighbour() {
        let p = Peer {
            name: "b".into(),
            v4: Some(fdb_sync::PeerV4 {
                pod_cidr: "10.244.2.0/24".parse().unwrap(),
                vtep_ip: "198.18.0.2".parse().unwrap(),
                vtep_mac: "0a:58:0a:f4:02:00".parse().unwrap(),
            }),
            v6: None,
        };
        let (r, n, d) = desired(std::slice::from_ref(&p), &DirectPeers::new());
        assert!(d.is_empty());
        assert_eq!(r[0].gateway.to_string(), "10.244.2.0");
        assert!(n[0].permanent && n[0].ip == r[0].gateway);
        let c = Change::AddRoute(r[0]);
        assert_eq!(c.to_string(), "add route 10.244.2.0/24 via 10.244.2.0");

        // The same peer reached directly: a plain route via its node address, no neighbour.
        let direct: DirectPeers = [(IpAddr::V4(p.v4.unwrap().vtep_ip), 7)].into();
        let (r, n, d) = desired(&[p], &direct);
        assert!(r.is_empty() && n.is_empty(), "{r:?} {n:?}");
        assert_eq!(d[0].gateway.to_string(), "198.18.0.2");
        assert_eq!(
            (d[0].dst.to_string(), d[0].oif),
            ("10.244.2.0/24".into(), 7)
        );
    }

    #[test]
    fn dual_stack_peers_get_flannels_v6_route_without_an_mtu_metric_and_neighbour() {
        let v6 = |n: u8| fdb_sync::PeerV6 {
            pod_cidr: format!("fd00:10:244:{n}::/64").parse().unwrap(),
            vtep_ip: format!("fd00:18::{n}").parse().unwrap(),
            vtep_mac: format!("02:00:00:00:06:0{n}").parse().unwrap(),
        };
        let peer = |n: u8, dual: bool| Peer {
            name: format!("n{n}"),
            v4: Some(fdb_sync::PeerV4 {
                pod_cidr: format!("10.244.{n}.0/24").parse().unwrap(),
                vtep_ip: format!("198.18.0.{n}").parse().unwrap(),
                vtep_mac: format!("0a:58:0a:f4:0{n}:00").parse().unwrap(),
            }),
            v6: dual.then(|| v6(n)),
        };
        let peers = [peer(2, true), peer(3, false), peer(4, true)];
        let none = DirectPeers::new();
        let want = desired_v6(&peers, &none);
        let (r, n) = (&want.routes, &want.neighbours);
        assert!(want.direct.is_empty());
        assert_eq!(r.len(), 2, "only dual-stack peers: {r:?}");
        assert_eq!(
            (r[0].dst.to_string(), r[0].gateway.to_string(), r[0].mtu),
            ("fd00:10:244:2::/64".into(), "fd00:10:244:2::".into(), 0)
        );
        assert_eq!(
            (n[1].ip.to_string(), n[1].mac.to_string(), n[1].permanent),
            ("fd00:10:244:4::".into(), "02:00:00:00:06:04".into(), true)
        );
        assert_eq!(
            Change::AddRouteV6(r[0]).to_string(),
            "add route fd00:10:244:2::/64 via fd00:10:244:2::"
        );

        // From nothing: neighbours first, then routes.
        let c = v6_changes(desired_v6(&peers, &none), WantV6::default());
        assert_eq!(c.len(), 4);
        assert!(
            matches!(c[0], Change::AddNeighbourV6 { .. })
                && matches!(c[1], Change::AddNeighbourV6 { .. })
        );
        assert!(matches!(c[2], Change::AddRouteV6(_)) && matches!(c[3], Change::AddRouteV6(_)));

        // In sync: nothing to do.
        assert!(v6_changes(desired_v6(&peers, &none), want.clone()).is_empty());

        // Node 2's route has an MTU metric (an older overlayd's `mtu lock`, or someone's):
        // replaced in place by one without, not deleted. Node 4 left:
        // its route and neighbour go. A stranger's neighbour on the device goes too.
        let mut have = want.clone();
        have.routes[0].mtu = 1450;
        have.neighbours.push(PeerNeighbourV6 {
            ip: "fd00:99::".parse().unwrap(),
            mac: MacAddr([2, 0, 0, 0, 0, 0x99]),
            permanent: false,
        });
        // The kernel's entry for an MLD group the device joined stays.
        have.neighbours.push(PeerNeighbourV6 {
            ip: "ff02::16".parse().unwrap(),
            mac: MacAddr([0x33, 0x33, 0, 0, 0, 0x16]),
            permanent: false,
        });
        let c = v6_changes(desired_v6(&peers[..2], &none), have);
        let mut shown: Vec<String> = c.iter().map(ToString::to_string).collect();
        shown.sort();
        assert_eq!(
            shown,
            vec![
                "add route fd00:10:244:2::/64 via fd00:10:244:2::",
                "delete neighbour fd00:10:244:4::",
                "delete neighbour fd00:99::",
                "delete route fd00:10:244:4::/64 via fd00:10:244:4::",
            ]
        );
        // Routes are changed before neighbours are removed.
        assert!(matches!(c[0], Change::AddRouteV6(_)) && matches!(c[1], Change::DeleteRouteV6(_)));
    }

    /// DirectRouting per family: node 2's IPv6 address is directly connected (its IPv4 one is
    /// not): a plain IPv6 route via its IPv6 node address replaces the VXLAN one, no IPv6
    /// neighbour; IPv4 stays VXLAN. Back to VXLAN: the direct route goes.
    #[test]
    fn ipv6_direct_routing_is_decided_per_family() {
        let p = Peer {
            name: "n2".into(),
            v4: Some(fdb_sync::PeerV4 {
                pod_cidr: "10.244.2.0/24".parse().unwrap(),
                vtep_ip: "198.19.0.2".parse().unwrap(),
                vtep_mac: "0a:58:0a:f4:02:00".parse().unwrap(),
            }),
            v6: Some(fdb_sync::PeerV6 {
                pod_cidr: "fd00:10:244:2::/64".parse().unwrap(),
                vtep_ip: "fd00:18::2".parse().unwrap(),
                vtep_mac: "0a:58:0a:f4:02:00".parse().unwrap(),
            }),
        };
        let direct: DirectPeers = [("fd00:18::2".parse::<IpAddr>().unwrap(), 5)].into();
        let peers = std::slice::from_ref(&p);
        let (r4, n4, d4) = desired(peers, &direct);
        assert_eq!((r4.len(), n4.len(), d4.len()), (1, 1, 0));
        let want = desired_v6(peers, &direct);
        assert!(want.routes.is_empty() && want.neighbours.is_empty());
        assert_eq!(
            want.direct,
            vec![DirectRouteV6 {
                dst: "fd00:10:244:2::/64".parse().unwrap(),
                gateway: "fd00:18::2".parse().unwrap(),
                oif: 5,
            }]
        );
        // From VXLAN: the direct route replaces the route in place, then the neighbour goes.
        let vxlan = desired_v6(peers, &DirectPeers::new());
        let c: Vec<String> = v6_changes(want.clone(), vxlan.clone())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            c,
            [
                "add direct route fd00:10:244:2::/64 via fd00:18::2",
                "delete route fd00:10:244:2::/64 via fd00:10:244:2::",
                "delete neighbour fd00:10:244:2::",
            ]
        );
        // And back.
        let c: Vec<String> = v6_changes(vxlan, want)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            c,
            [
                "add neighbour fd00:10:244:2:: lladdr 0a:58:0a:f4:02:00",
                "add route fd00:10:244:2::/64 via fd00:10:244:2::",
                "delete direct route fd00:10:244:2::/64 via fd00:18::2",
            ]
        );
    }
}
