//! The control side: reads the configuration and the node source, sets up the TAP device,
//! sockets and workers, keeps the FDB snapshot and the kernel's routes and neighbours equal to
//! the desired peer set. On SIGTERM/SIGINT it leaves the device, routes, neighbours and rules for
//! the next overlayd (which adopts them or takes them over by handover; see `handover`).
//!
//! It never blocks the packet path: workers only ever see whole FDB snapshots.
//!
//! Dual stack (net-conf `EnableIPv6`): one TAP device and one MAC carry both families (Flannel
//! uses two kernel devices, `flannel.<VNI>` and `flannel-v6.<VNI>`, each with a MAC of its
//! own); inner IPv4 travels over the IPv4 underlay (`public-ip`), inner IPv6 over the IPv6
//! underlay (`public-ipv6`), as Flannel's two devices do. The device gets the IPv6 podCIDR's
//! network address /128 next to the IPv4 /32, every dual-stack peer an IPv6 route and
//! neighbour, and the MAC is announced in `backend-v6-data` too.
//!
//! Self-healing: rtnetlink notifications (link, IPv4/IPv6 route, neighbour) trigger a check at
//! once, and a 2 s reconcile is the backstop for anything a notification missed. A device
//! found down is set up again; a device found deleted gets a new dataplane (workers stopped,
//! device, sockets and workers created again, peers' counters kept).

mod blackhole;
pub mod cleanup;
mod direct;
pub mod etcd;
pub mod flannel_leftovers;
mod handover;
pub mod model;
mod policy;
mod reconcile;
mod supervise;
pub mod underlay;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use cni_shim::subnet_env::{NodeSubnet, SubnetEnv};
use fdb_sync::kube::Announcement;
use fdb_sync::{ClusterState, SourceUpdate};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::NetConf;
use crate::fdb::{Fdb, FdbHandle};
use crate::health::Health;
use crate::http;
use crate::observe::{Observed, OwnNode};
use crate::path::DecapConfig;
use crate::stats::Totals;
use crate::sys::netlink::{self as nlink, KernelEvent, Link, Netlink, DEVICE_ALIAS};
use crate::sys::{tap, udp};
use crate::worker::{Offloads, QueueIo};
use direct::DirectRouting;
use reconcile::Reconciler;
use supervise::Workers;
use underlay::{find_underlay, Underlay};

/// Everything the command line decides.
#[derive(Debug, Clone)]
pub struct Options {
    pub node_name: String,
    /// `--iface`: names or addresses, the first that exists wins (see [`underlay`]).
    pub iface: Vec<String>,
    /// `--iface-regex`, checked after `iface`.
    pub iface_regex: Vec<String>,
    /// `--iface-can-reach`: the interface `ip route get` uses for it (an IPv6 address only
    /// in an IPv6-only cluster).
    pub iface_can_reach: Option<std::net::IpAddr>,
    /// `--public-ip`: IPv4, or in an IPv6-only cluster IPv6 (see `underlay::find_underlay`).
    pub public_ip: Option<std::net::IpAddr>,
    /// `--public-ipv6`: the IPv6 VTEP address announced and sent from (EnableIPv6).
    pub public_ipv6: Option<Ipv6Addr>,
    pub net_config_path: PathBuf,
    pub subnet_file: PathBuf,
    pub device: String,
    pub queues: usize,
    /// `--busy-poll-us` (or `--latency-mode`'s budget): how long a worker keeps checking for
    /// work after moving packets before it sleeps; zero = never.
    pub busy_poll: Duration,
    pub allow_any_sender: bool,
    /// `--ip-masq`: masquerade pod traffic leaving the cluster Network (see `crate::netfilter`).
    pub ip_masq: bool,
    /// Not `--ip-masq-fully-random-disable`.
    pub ip_masq_random_fully: bool,
    /// `--iptables-forward-rules` (default true): accept the Network in FORWARD.
    pub iptables_forward_rules: bool,
    /// `--iptables-resync`: how often the netfilter rules are checked besides the 2 s backstop.
    pub iptables_resync: Duration,
    /// Unix socket where a running overlayd hands its dataplane to its successor.
    pub handover_socket: PathBuf,
    /// On SIGTERM remove the device, routes and neighbours (as `overlayd cleanup` does)
    /// instead of leaving them for the next overlayd.
    pub cleanup_on_exit: bool,
    /// `--subnet-lease-renew-margin`, for the etcd source.
    pub subnet_lease_renew_margin: Duration,
    /// `--ip-blackhole-route`.
    pub ip_blackhole_route: bool,
    /// `--set-node-network-unavailable`.
    pub set_node_network_unavailable: bool,
    /// `--healthz-ip`:`--healthz-port`: a second listener serving `/healthz` (and `/readyz`)
    /// as flanneld's healthz server does; `None` when the port is 0.
    pub healthz_addr: Option<SocketAddr>,
    /// Accept peers whose VTEP address is link-local (169.254.0.0/16, fe80::/10).
    pub allow_link_local_vtep: bool,
    /// Deliver decapsulated frames whose inner source is outside the sending VTEP's podCIDR.
    pub allow_foreign_inner_source: bool,
}

/// `--handover-socket`'s default: `/run/overlayd/handover-<inode of this network
/// namespace>.sock`. The two pods of a rolling update share the host's namespace and so the
/// path; daemons in different namespaces of one host (the netns demo, tests) never meet.
#[must_use]
pub fn default_handover_socket() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
    PathBuf::from(format!("/run/overlayd/handover-{ns}.sock"))
}

/// Logs the peer set; a skipped node is reported once per reason, not on every change
/// (`reported` remembers what was said).
fn log_peer_set(state: &ClusterState, reported: &mut HashMap<String, String>) {
    log_skips(state, reported);
    // Thousands of names would make one unreadable line; name a few.
    let mut names: Vec<&str> = state
        .peers
        .iter()
        .take(16)
        .map(|p| p.name.as_str())
        .collect();
    if state.peers.len() > names.len() {
        names.push("...");
    }
    info!(
        peers = state.peers.len(),
        names = %names.join(","),
        "peer set applied"
    );
}

fn log_skips(state: &ClusterState, reported: &mut HashMap<String, String>) {
    let now: std::collections::HashSet<&str> =
        state.skipped.iter().map(|s| s.node.as_str()).collect();
    reported.retain(|node, _| now.contains(node.as_str()));
    for s in &state.skipped {
        if reported.get(&s.node) != Some(&s.reason) {
            warn!(node = %s.node, kind = %s.kind, reason = %s.reason, "node skipped");
            reported.insert(s.node.clone(), s.reason.clone());
        }
    }
}

/// Waits for the first usable state (own node with a valid podCIDR), reporting what is
/// missing once per change. `None` when asked to stop first. Every state is validated with
/// `policy` first, so an own node whose podCIDR breaks the rules keeps the daemon waiting
/// (and saying why) instead of exiting into a crash loop.
async fn wait_for_own_node(
    updates: &mut mpsc::Receiver<SourceUpdate>,
    node_name: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    policy: &fdb_sync::PeerPolicy,
) -> Result<Option<ClusterState>> {
    let mut last_err = String::new();
    loop {
        tokio::select! {
            u = updates.recv() => match u.map(|u| u.and_then(|s| policy::validate(&s, policy))) {
                Some(Ok(s)) => return Ok(Some(s)),
                Some(Err(msg)) => {
                    if msg != last_err {
                        warn!(error = %msg, "waiting for node {node_name} with a podCIDR");
                        last_err = msg;
                    }
                }
                None => bail!("node source ended before node {node_name} appeared"),
            },
            _ = stop.changed() => return Ok(None),
        }
    }
}

/// Where Node objects come from.
#[derive(Debug, Clone)]
pub enum SourceKind {
    NodesFile(PathBuf),
    /// The Kubernetes API server (`--kube-subnet-mgr`); in-cluster config when no kubeconfig.
    Kube {
        kubeconfig: Option<PathBuf>,
        /// `--kube-api-url`: replaces the cluster URL.
        api_url: Option<String>,
    },
    /// Flannel's etcd subnet manager: net-conf from `<prefix>/config`, this node's podCIDR
    /// from its lease, peers from the other leases.
    Etcd {
        etcd: fdb_sync::etcd::EtcdConfig,
        /// Flannel's 24 h (shorter only in tests, see `cli::TEST_LEASE_TTL_ENV`).
        lease_ttl: Duration,
    },
}

/// How long the one GET of the own Node for `node-public-ip(v6)` may take before overlayd
/// goes on with the flags alone.
const STORED_PUBLIC_IP_TIMEOUT: Duration = Duration::from_secs(10);

/// The own Node's `node-public-ip` / `node-public-ipv6`, read once before the underlay is
/// chosen: from the API server (flanneld's `GetStoredPublicIP`) or the nodes file; none in
/// etcd mode (flanneld's LocalManager has none). A Node that cannot be read yet leaves the
/// flags in charge, as in flanneld (which logs the error and goes on).
async fn stored_public_ip(source: &SourceKind, node_name: &str) -> fdb_sync::StoredPublicIp {
    let read = async {
        match source {
            SourceKind::Kube {
                kubeconfig,
                api_url,
            } => {
                let client = fdb_sync::kube::client(kubeconfig.as_deref(), api_url.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                fdb_sync::kube::stored_public_ip(client, node_name).await
            }
            // The nodes file's own problems are the source's to report (and wait on).
            SourceKind::NodesFile(path) => Ok(std::fs::read_to_string(path)
                .ok()
                .and_then(|text| fdb_sync::parse_node_list(&text).ok())
                .and_then(|nodes| {
                    nodes
                        .iter()
                        .find(|n| n.metadata.name.as_deref() == Some(node_name))
                        .map(|own| {
                            fdb_sync::StoredPublicIp::of_node(
                                own,
                                fdb_sync::model::ANNOTATION_PREFIX,
                            )
                        })
                })
                .unwrap_or_default()),
            SourceKind::Etcd { .. } => Ok(fdb_sync::StoredPublicIp::default()),
        }
    };
    match tokio::time::timeout(STORED_PUBLIC_IP_TIMEOUT, read).await {
        Ok(Ok(stored)) => stored,
        Ok(Err(e)) => {
            warn!(node = node_name, error = %e, "cannot read this node's node-public-ip/node-public-ipv6 annotations; using --public-ip/--public-ipv6 (as flanneld does)");
            fdb_sync::StoredPublicIp::default()
        }
        Err(_) => {
            warn!(node = node_name, timeout = ?STORED_PUBLIC_IP_TIMEOUT, "reading this node's node-public-ip/node-public-ipv6 annotations timed out; using --public-ip/--public-ipv6");
            fdb_sync::StoredPublicIp::default()
        }
    }
}

/// Starts the node source. `announce` carries what this node publishes about itself once its
/// dataplane is up (sources without a place to publish ignore it).
async fn spawn_source(
    kind: &SourceKind,
    node_name: &str,
    announce: tokio::sync::watch::Receiver<Option<Announcement>>,
) -> Result<mpsc::Receiver<SourceUpdate>> {
    let (tx, rx) = mpsc::channel(4);
    match kind {
        SourceKind::NodesFile(path) => {
            tokio::spawn(fdb_sync::nodes_file::watch(
                path.clone(),
                node_name.to_string(),
                tx,
            ));
        }
        SourceKind::Kube {
            kubeconfig,
            api_url,
        } => {
            let client = fdb_sync::kube::client(kubeconfig.as_deref(), api_url.as_deref()).await?;
            tokio::spawn(fdb_sync::kube::run(
                client,
                node_name.to_string(),
                tx,
                announce,
            ));
        }
        SourceKind::Etcd { .. } => unreachable!("the etcd source is started by run()"),
    }
    Ok(rx)
}

/// The running dataplane: device, workers, FDB.
struct Dataplane {
    link_index: u32,
    fdb: FdbHandle,
    workers: Workers,
}

/// Where the running dataplane's device and queues came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// No device existed: created (persistent, marked with our alias).
    Created,
    /// A device a previous overlayd left (stopped or crashed): new queues attached to it.
    Adopted,
    /// A running overlayd handed its queues and sockets over.
    HandedOver,
}

/// Why an existing device may not be adopted (`None`: it may). Only a TAP device with
/// multi-queue and vnet headers that carries our alias is ours.
fn not_adoptable(link: &Link) -> Option<String> {
    if link.kind.as_deref() != Some("tun") {
        return Some(format!(
            "it is not a TAP device (kind {})",
            link.kind.as_deref().unwrap_or("unknown")
        ));
    }
    let t = link.tun.unwrap_or_default();
    if !(t.tap && t.multi_queue && t.vnet_hdr) {
        return Some(format!(
            "it is a TUN/TAP device without the TAP + multi_queue + vnet_hdr mode overlayd creates ({t:?})"
        ));
    }
    if link.alias.as_deref() != Some(DEVICE_ALIAS) {
        return Some(format!(
            "it does not carry overlayd's alias {DEVICE_ALIAS:?} (alias {:?}), so overlayd did not create it",
            link.alias
        ));
    }
    None
}

/// Opens the sockets of each TAP queue and probes the offloads (a refusal means the plain
/// path, said once per queue). With an IPv6 underlay each queue also gets an IPv6 receive
/// socket and an IPv6 send pool.
fn queue_ios(
    opts: &Options,
    netconf: &NetConf,
    underlay: &Underlay,
    first_id: usize,
    taps: Vec<tap::TapQueue>,
) -> Result<Vec<QueueIo>> {
    let mut out = Vec::new();
    for (k, tapq) in taps.into_iter().enumerate() {
        let id = first_id + k;
        let tso = match tap::set_offload(&tapq, &opts.device, tap::OFFLOAD_TCP) {
            Ok(()) => true,
            Err(e) => {
                warn!(queue = id, error = %e, "TAP offloads unavailable; this queue runs the plain path");
                false
            }
        };
        out.push(open_queue(
            tapq,
            tso,
            id,
            netconf.port,
            underlay.ip,
            underlay.ip6,
        )?);
    }
    Ok(out)
}

/// The sockets of queue `id` around its TAP queue (`tso`: its offloads are on), for each
/// underlay family this node has an address of: with `ip`, the IPv4 receive socket on
/// `0.0.0.0:port` (SO_REUSEPORT, UDP_GRO when the kernel has it) and 16 send sockets bound to
/// `ip`; with `ip6`, the IPv6 receive socket on `[::]:port` and 16 send sockets bound to
/// `ip6`. An IPv6-only node (`ip` None) binds no IPv4 socket at all, as Flannel's lone
/// flannel-v6.1. Public for the worker-level tests, which build queues exactly as overlayd
/// does.
pub fn open_queue(
    tap: tap::TapQueue,
    tso: bool,
    id: usize,
    port: u16,
    ip: Option<Ipv4Addr>,
    ip6: Option<std::net::Ipv6Addr>,
) -> Result<QueueIo> {
    if ip.is_none() && ip6.is_none() {
        bail!(
            "queue {id}: no underlay address of either family to send VXLAN from; give the node an IPv4 or IPv6 address on the underlay interface (or pass --iface, --public-ip or --public-ipv6)"
        );
    }
    let mut io = QueueIo {
        tap,
        rx: None,
        tx_pool: Vec::new(),
        rx6: None,
        tx_pool6: Vec::new(),
        // UDP_GRO unless a receive socket refuses it (`open_family`).
        offloads: Offloads { tso, gro: true },
    };
    if let Some(ip) = ip {
        open_family(&mut io, id, ip.into(), port)?;
    }
    if let Some(ip6) = ip6 {
        open_family(&mut io, id, ip6.into(), port)?;
    }
    Ok(io)
}

/// Where queue `queue`'s send sockets on `ip` start looking for source ports: spread by the
/// address's last 32 bits (so nodes differ) and by queue (so queues do not collide).
#[allow(clippy::cast_possible_truncation)]
fn source_port_seed(ip: std::net::IpAddr, queue: usize) -> u32 {
    let low = match ip {
        std::net::IpAddr::V4(a) => u32::from(a),
        std::net::IpAddr::V6(a) => {
            let o = a.octets();
            u32::from_be_bytes([o[12], o[13], o[14], o[15]])
        }
    };
    low.wrapping_mul(2_654_435_761)
        .wrapping_add(queue as u32 * 4099)
}

/// Gives queue `id` the receive socket of `ip`'s family (`0.0.0.0:port` or `[::]:port`,
/// IPv6-only, SO_REUSEPORT, UDP_GRO as the queue has it) unless it has one, and 16 send
/// sockets bound to `ip` in place of any it has of that family. One receive mode per queue:
/// if UDP_GRO works on the queue's other receive socket but not on this one, both go plain.
fn open_family(io: &mut QueueIo, id: usize, ip: std::net::IpAddr, port: u16) -> Result<()> {
    let v6 = ip.is_ipv6();
    let (family, device) = if v6 {
        ("IPv6", "flannel-v6.1")
    } else {
        ("IPv4", "flannel.1")
    };
    if !has_rx(io, v6) {
        let bound = match ip {
            std::net::IpAddr::V4(_) => udp::bind_vxlan(Ipv4Addr::UNSPECIFIED, port),
            std::net::IpAddr::V6(_) => udp::bind_vxlan_v6(std::net::Ipv6Addr::UNSPECIFIED, port),
        };
        let rx = bound.map_err(|e| {
            let at = if v6 { "[::]" } else { "0.0.0.0" };
            anyhow::anyhow!(
                "cannot bind UDP port {at}:{port}: {e}; is a kernel vxlan device ({device}) or another overlayd using it? Remove it or set Backend.Port"
            )
        })?;
        if io.offloads.gro {
            if let Err(e) = udp::enable_gro(&rx) {
                warn!(queue = id, error = %e, "UDP_GRO unavailable on the {family} receive socket; receiving one datagram per read");
                if let Some(other) = if v6 { &io.rx } else { &io.rx6 } {
                    udp::disable_gro(other).with_context(|| {
                        format!(
                            "cannot turn UDP_GRO off again on the {} receive socket",
                            if v6 { "IPv4" } else { "IPv6" }
                        )
                    })?;
                }
                io.offloads.gro = false;
            }
        }
        if v6 {
            io.rx6 = Some(rx);
        } else {
            io.rx = Some(rx);
        }
    }
    let pool = udp::bind_source_pool(ip, 16, source_port_seed(ip, id))
        .with_context(|| format!("cannot bind {family} source ports on {ip}"))?;
    if v6 {
        io.tx_pool6 = pool;
    } else {
        io.tx_pool = pool;
    }
    Ok(())
}

/// Whether queue `io` has the receive socket of one family.
fn has_rx(io: &QueueIo, v6: bool) -> bool {
    if v6 {
        io.rx6.is_some()
    } else {
        io.rx.is_some()
    }
}

/// Closes queue `io`'s sockets of one family (the node has no underlay address of it now).
fn close_family(io: &mut QueueIo, v6: bool) {
    if v6 {
        io.rx6 = None;
        io.tx_pool6.clear();
    } else {
        io.rx = None;
        io.tx_pool.clear();
    }
}

/// Fits queues handed over by a running overlayd to this process's underlay, per family:
/// opens the sockets it did not hand over (it had no underlay of that family, or is an older
/// overlayd without IPv6 sockets), binds a new send pool where its address differs (keeping
/// the shared receive socket), and closes the sockets of a family this process has no
/// underlay address of (an IPv6-only successor drops the IPv4 ones, an IPv4-only one the IPv6
/// ones). The TAP queues are what keep the handover lossless.
pub(crate) fn adapt(
    mut ios: Vec<QueueIo>,
    port: u16,
    ip: Option<Ipv4Addr>,
    ip6: Option<std::net::Ipv6Addr>,
) -> Result<Vec<QueueIo>> {
    if ip.is_none() && ip6.is_none() {
        bail!("no underlay address of either family for the handed-over queues; give the node an IPv4 or IPv6 address on the underlay interface");
    }
    for (id, io) in ios.iter_mut().enumerate() {
        for (want, v6) in [
            (ip.map(std::net::IpAddr::from), false),
            (ip6.map(std::net::IpAddr::from), true),
        ] {
            let Some(want) = want else {
                if has_rx(io, v6) {
                    info!(queue = id, family = if v6 { "IPv6" } else { "IPv4" }, "closing the handed-over underlay sockets of a family this overlayd has no address of");
                }
                close_family(io, v6);
                continue;
            };
            let bound = io.pool(v6).first().and_then(|s| s.local_addr().ok());
            if !has_rx(io, v6) {
                info!(queue = id, ip = %want, "opening underlay sockets the previous overlayd did not hand over");
                open_family(io, id, want, port)?;
            } else if bound.map(|a| a.ip()) != Some(want) {
                info!(queue = id, ip = %want, was = ?bound.map(|a| a.ip()), "binding new source-port sockets: the underlay address differs from the previous overlayd's");
                open_family(io, id, want, port)?;
            }
        }
    }
    Ok(ios)
}

/// This node's IPv4 podCIDR when IPv4 is on; `None` in an IPv6-only cluster (`EnableIPv4`
/// false), where the device gets no IPv4 address and the kernel no IPv4 route. With IPv4 on
/// the policy refuses an own node without one, so every state used here has it.
fn own_v4(
    state: &fdb_sync::ClusterState,
    netconf: &NetConf,
) -> Result<Option<ipnetwork::Ipv4Network>> {
    if netconf.network.is_none() {
        return Ok(None);
    }
    state.own_pod_cidr().map(Some).with_context(|| {
        format!(
            "node {} has no IPv4 podCIDR: give it one (EnableIPv4 is true), or set EnableIPv4 to false for an IPv6-only cluster",
            state.own.name
        )
    })
}

/// Sets up the dataplane for `state`: takes the queues `handed` over by a running overlayd,
/// or adopts the device a previous overlayd left, or creates it; then starts the workers.
/// Peers' counters carry over from `previous` (a rebuild).
#[allow(clippy::too_many_arguments)]
async fn start_dataplane(
    nl: &Netlink,
    opts: &Options,
    netconf: &NetConf,
    underlay: &Underlay,
    state: &ClusterState,
    previous: Option<&Fdb>,
    handed: Option<Vec<QueueIo>>,
) -> Result<(Dataplane, Origin)> {
    let own_cidr = own_v4(state, netconf)?;
    let own_mac = state.own_vtep_mac();
    let mtu = netconf.inner_mtu(underlay.mtu);
    let existing = nl.link_by_name(&opts.device).await?;
    if let Some(l) = &existing {
        if let Some(why) = not_adoptable(l) {
            bail!(
                "device {} already exists and overlayd may not adopt it: {why}; delete it (ip link del {}) or pass --device",
                opts.device,
                opts.device
            );
        }
    } else if handed.is_some() {
        bail!(
            "the running overlayd handed over queues of device {}, but no such device exists here",
            opts.device
        );
    }
    let (origin, mut ios) = match (handed, &existing) {
        (Some(ios), _) => (
            Origin::HandedOver,
            adapt(ios, netconf.port, underlay.ip, underlay.ip6)?,
        ),
        (None, Some(l)) => {
            let others = l.tun.and_then(|t| t.queues).unwrap_or(0);
            if others > 0 {
                warn!(device = %opts.device, queues = others, "the device has queues attached by another process that did not answer on --handover-socket; adopting it anyway (both forward until that process stops)");
            }
            let taps = tap::open_multiqueue(&opts.device, opts.queues)?;
            if !l.tun.is_some_and(|t| t.persist) {
                tap::set_persist(&taps[0], &opts.device, true)?;
            }
            (
                Origin::Adopted,
                queue_ios(opts, netconf, underlay, 0, taps)?,
            )
        }
        (None, None) => {
            let taps = tap::open_multiqueue(&opts.device, opts.queues)?;
            // Outlives this process: a restart or crash keeps the device, its routes and
            // neighbours, and the next overlayd adopts it.
            tap::set_persist(&taps[0], &opts.device, true)?;
            (
                Origin::Created,
                queue_ios(opts, netconf, underlay, 0, taps)?,
            )
        }
    };
    if origin == Origin::HandedOver && ios.len() < opts.queues {
        let more = tap::open_multiqueue(&opts.device, opts.queues - ios.len())?;
        let first = ios.len();
        ios.extend(queue_ios(opts, netconf, underlay, first, more)?);
    }
    let link = match existing {
        Some(l) => l,
        None => nl
            .link_by_name(&opts.device)
            .await?
            .with_context(|| format!("TAP device {} vanished after creation", opts.device))?,
    };
    let own_v6 = own_v6_of(state, netconf);
    ipv6_sysctls(&opts.device, own_v6.is_some());
    if origin == Origin::Created {
        nl.set_alias(link.index, DEVICE_ALIAS).await?;
        nl.configure_link(
            link.index,
            model::mac(own_mac),
            mtu,
            own_cidr.map(|c| c.network()),
        )
        .await?;
    } else {
        let changed = nl
            .ensure_link_config(
                &link,
                model::mac(own_mac),
                mtu,
                own_cidr.map(|c| c.network()),
            )
            .await?;
        if !changed.is_empty() {
            warn!(device = %opts.device, changed = %changed.join(","), "adopted device differed from the desired state; fixed");
        }
    }
    if let Some(v6) = own_v6 {
        ensure_ipv6_address(nl, link.index, v6, &opts.device).await?;
        // After the link MTU, which resets it.
        apply_ipv6_mtu(&opts.device, netconf, underlay, false);
    }

    let fdb: FdbHandle = Arc::new(ArcSwap::from_pointee(Fdb::from_peers_keeping(
        &model::peers(&state.peers),
        netconf.port,
        previous,
    )));
    #[allow(clippy::cast_possible_truncation)]
    let decap = DecapConfig {
        vni: netconf.vni,
        own_mac: own_mac.0,
        inner_mtu: mtu.min(65_000) as u16,
        allow_any_sender: opts.allow_any_sender,
        allow_foreign_inner_source: opts.allow_foreign_inner_source,
    };
    let modes: Vec<&str> = ios
        .iter()
        .map(|q| {
            if q.offloads.tso && q.offloads.gro {
                "offload"
            } else {
                "plain"
            }
        })
        .collect();
    let workers = Workers::start(ios, fdb.clone(), decap, opts.busy_poll)
        .context("cannot start the worker threads")?;
    info!(modes = %modes.join(","), ?origin, "queue offload modes");
    Ok((
        Dataplane {
            link_index: link.index,
            fdb,
            workers,
        },
        origin,
    ))
}

/// The device's IPv6 settings. With IPv6 on: IPv6 enabled, no router advertisements taken
/// (as Flannel sets `accept_ra` 0 on its devices) and no link-local address generated
/// (`addr_gen_mode` none), so the kernel sends no router solicitations or link-local traffic
/// into the overlay, where it would only be dropped as floods. With IPv6 off: IPv6 disabled on
/// the device altogether. Best effort: the sysctls may be absent (IPv6 compiled out).
fn ipv6_sysctls(device: &str, ipv6: bool) {
    let set = |key: &str, v: &str| {
        let path = format!("/proc/sys/net/ipv6/conf/{device}/{key}");
        if let Err(e) = std::fs::write(&path, v) {
            if ipv6 {
                warn!(path, error = %e, "cannot set an IPv6 sysctl of the device");
            }
        }
    };
    if ipv6 {
        set("accept_ra", "0");
        set("addr_gen_mode", "1");
        set("disable_ipv6", "0");
    } else {
        set("disable_ipv6", "1");
    }
}

/// Gives the device this node's IPv6 address, the IPv6 podCIDR's network address /128 (as
/// Flannel's `ConfigureIPv6(IP6Net{IP: lease.IPv6Subnet.IP, PrefixLen: 128})`), and removes
/// every other IPv6 address (a link-local one the kernel made before `addr_gen_mode` was set,
/// an old subnet's).
async fn ensure_ipv6_address(
    nl: &Netlink,
    index: u32,
    own_v6: ipnetwork::Ipv6Network,
    device: &str,
) -> Result<()> {
    let addr = own_v6.network();
    if nl.ensure_ipv6_address(index, addr).await? {
        info!(device, address = %addr, "device got its IPv6 address");
    }
    let removed = nl.remove_other_ipv6_addresses(index, addr).await?;
    if removed > 0 {
        info!(
            device,
            removed, "removed other IPv6 addresses from the device"
        );
    }
    Ok(())
}

/// subnet.env for this node's podCIDR(s), in cni-shim's one definition of the file:
/// `FLANNEL_IPV6_NETWORK` / `FLANNEL_IPV6_SUBNET` too when IPv6 is on (Flannel's
/// WriteSubnetFile: the IPv6 subnet's first host, like the IPv4 one).
fn subnet_env(
    netconf: &NetConf,
    own_cidr: Option<ipnetwork::Ipv4Network>,
    own_v6: Option<ipnetwork::Ipv6Network>,
    mtu: u32,
    opts: &Options,
) -> Result<SubnetEnv> {
    // One family's pair, when the family is on and the node has a podCIDR of it.
    let describe =
        |network: Option<ipnetwork::IpNetwork>, cidr: Option<ipnetwork::IpNetwork>, what: &str| {
            let (Some(network), Some(cidr)) = (network, cidr) else {
                return Ok(None);
            };
            NodeSubnet::for_pod_cidr(network, cidr)
                .map(Some)
                .with_context(|| {
                    format!(
                        "cannot describe {what} podCIDR {cidr} of {what} network {network} in {}",
                        opts.subnet_file.display()
                    )
                })
        };
    let v4 = describe(
        netconf.network.map(Into::into),
        own_cidr.map(Into::into),
        "IPv4",
    )?;
    let v6 = describe(
        netconf.network_v6.map(Into::into),
        own_v6.map(Into::into),
        "IPv6",
    )?;
    SubnetEnv::for_node(v4, v6, mtu, opts.ip_masq).context("subnet.env without a subnet")
}

/// Pods reach other nodes only when the kernel forwards; like flanneld, overlayd leaves that
/// to the node's setup (kubelet, sysctl.d), but says so when it is off, per family in use.
fn warn_if_not_forwarding(ipv4: bool, ipv6: bool) {
    let off = |path: &str| std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "0");
    if ipv4 && off("/proc/sys/net/ipv4/ip_forward") {
        warn!("net.ipv4.ip_forward is 0: this node does not forward IPv4 pod traffic; set it to 1 (sysctl -w net.ipv4.ip_forward=1)");
    }
    if ipv6 && off("/proc/sys/net/ipv6/conf/all/forwarding") {
        warn!("net.ipv6.conf.all.forwarding is 0 with EnableIPv6: this node does not forward IPv6 pod traffic; set it to 1 (sysctl -w net.ipv6.conf.all.forwarding=1)");
    }
}

/// This node's IPv6 podCIDR in `state` when IPv6 is on.
fn own_v6_of(state: &ClusterState, netconf: &NetConf) -> Option<ipnetwork::Ipv6Network> {
    state
        .own
        .pod_cidr_v6
        .filter(|_| netconf.network_v6.is_some())
}

/// The device's IPv6 MTU (`net.ipv6.conf.<device>.mtu`): the TAP's MTU is Flannel's
/// (underlay − 50, for both families), but inner IPv6 travels over outer IPv6 (70 bytes) and
/// outer packets are never fragmented, so inner IPv6 fits in underlay − 70 (as Flannel's
/// flannel-v6 device has MTU underlay − 70). The kernel uses it for forwarded and locally sent
/// IPv6 alike (`ip6_dst_mtu_maybe_forward`, `ip6_mtu`), sends pods ICMPv6 Packet Too Big above
/// it, and, being no locked route MTU, still learns a smaller path MTU from a Packet Too Big.
fn ipv6_device_mtu(device_mtu: u32, underlay_mtu: u32) -> u32 {
    device_mtu.min(underlay_mtu.saturating_sub(crate::config::VXLAN_OVERHEAD_V6))
}

/// Makes the IPv6 MTU of `device` `want`; true when it was something else. The kernel resets
/// it to the link MTU whenever the link MTU changes, so the backstop checks it too.
fn ensure_ipv6_mtu(device: &str, want: u32) -> std::io::Result<bool> {
    let path = format!("/proc/sys/net/ipv6/conf/{device}/mtu");
    let now = std::fs::read_to_string(&path)?;
    if now.trim().parse::<u32>().ok() == Some(want) {
        return Ok(false);
    }
    std::fs::write(&path, want.to_string())?;
    Ok(true)
}

/// [`ensure_ipv6_mtu`] for this node when IPv6 is on, saying what it did (`heal`: a change
/// is someone else's doing, e.g. a link MTU change, and is warned about).
fn apply_ipv6_mtu(device: &str, netconf: &NetConf, underlay: &Underlay, heal: bool) {
    let want = ipv6_device_mtu(netconf.inner_mtu(underlay.mtu), underlay.mtu);
    match ensure_ipv6_mtu(device, want) {
        Ok(false) => {}
        Ok(true) if heal => {
            warn!(device, mtu = want, "the device's IPv6 MTU was reset (its link MTU changed?); set it back to the underlay's MTU minus 70");
        }
        Ok(true) => info!(device, mtu = want, "device IPv6 MTU set"),
        Err(e) => warn!(
            device, mtu = want, error = %e,
            "cannot set net.ipv6.conf.{device}.mtu to {want}: pods' IPv6 packets above it reach overlayd, which answers them with Packet Too Big; check that IPv6 is enabled on the device"
        ),
    }
}

/// What `overlayd status` shows of this node, at start and after its lease moves.
fn own_node(
    opts: &Options,
    netconf: &NetConf,
    underlay: &Underlay,
    own_cidr: Option<ipnetwork::Ipv4Network>,
    own_mac: fdb_sync::MacAddr,
    own_v6: Option<ipnetwork::Ipv6Network>,
    mtu: u32,
) -> OwnNode {
    OwnNode {
        ipv4: own_cidr
            .zip(underlay.ip)
            .map(|(pod_cidr, vtep_ip)| crate::observe::PeerStatusV4 {
                pod_cidr,
                vtep_ip,
                vtep_mac: model::mac(own_mac),
            }),
        ipv6: own_v6
            .zip(underlay.ip6)
            .map(|(pod_cidr, vtep_ip)| crate::observe::PeerStatusV6 {
                pod_cidr,
                vtep_ip,
                vtep_mac: model::mac(own_mac),
            }),
        node: opts.node_name.clone(),
        device: opts.device.clone(),
        vni: netconf.vni,
        port: netconf.port,
        mtu,
    }
}

/// Runs the daemon until a signal arrives.
pub async fn run(opts: Options, source: SourceKind, http_addr: SocketAddr) -> Result<()> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let health = Arc::new(Health::default());
    let observed = Arc::new(Observed::new(health.clone()));
    let http_server =
        http::serve(http_addr, http::router(observed.clone())).context("--http-addr")?;
    let healthz_server = match opts.healthz_addr {
        Some(addr) => Some(
            http::serve(addr, http::health_router(health.clone()))
                .context("--healthz-ip/--healthz-port (0 disables it)")?,
        ),
        None => None,
    };

    // In etcd mode net-conf.json is `<prefix>/config` (waited for, with /readyz saying why).
    let mut etcd_source = None;
    let netconf = if let SourceKind::Etcd { etcd: cfg, .. } = &source {
        let Some((reg, netconf, alloc)) = etcd::wait_for_config(cfg, &health, &mut stop_rx).await
        else {
            return Ok(());
        };
        etcd_source = Some((reg, alloc));
        netconf
    } else {
        let text = std::fs::read_to_string(&opts.net_config_path).with_context(|| {
            format!(
                "cannot read net-conf {}: pass --net-config-path",
                opts.net_config_path.display()
            )
        })?;
        let netconf =
            NetConf::parse(&text).with_context(|| format!("{}", opts.net_config_path.display()))?;
        for w in &netconf.warnings {
            warn!(path = %opts.net_config_path.display(), "{w}");
        }
        netconf
    };
    // The underlay comes first: validating peers (and the own podCIDR) needs its addresses.
    // IPv6-only (EnableIPv4 false): no IPv4 address is looked for (flanneld's ipv6 stack).
    // flanneld's GetStoredPublicIP: the own Node's node-public-ip(v6) replace the flags.
    let mut opts = opts;
    let stored = stored_public_ip(&source, &opts.node_name).await;
    let from_annotations = underlay::apply_stored_public_ip(
        &mut opts.public_ip,
        &mut opts.public_ipv6,
        &stored,
        netconf.network.is_some(),
        netconf.network_v6.is_some(),
    )?;
    let nl = Netlink::connect()?;
    let underlay = find_underlay(
        &nl,
        &opts,
        netconf.network.is_some(),
        netconf.network_v6.is_some(),
    )
    .await
    .with_context(|| {
        if from_annotations.is_empty() {
            "choosing the underlay".to_string()
        } else {
            format!(
                "choosing the underlay (this node's {})",
                from_annotations.join("; ")
            )
        }
    })?;
    let mut policy = current_policy(&nl, &netconf, &underlay, &opts).await;

    let (announce, announce_rx) = tokio::sync::watch::channel(None);
    let mut updates = match (etcd_source, &source) {
        (Some((reg, alloc)), SourceKind::Etcd { lease_ttl, .. }) => {
            let (tx, rx) = mpsc::channel(4);
            etcd::spawn(
                reg,
                alloc,
                underlay.ip,
                underlay.ip6,
                netconf.vni,
                fdb_sync::etcd::Timing {
                    ttl: *lease_ttl,
                    renew_margin: opts.subnet_lease_renew_margin,
                },
                &opts.subnet_file,
                health.clone(),
                tx,
            )?;
            rx
        }
        _ => spawn_source(&source, &opts.node_name, announce_rx).await?,
    };
    let Some(mut state) =
        wait_for_own_node(&mut updates, &opts.node_name, &mut stop_rx, &policy).await?
    else {
        return Ok(());
    };
    health.own_node_known.store(true, Ordering::Relaxed);
    let mut own_cidr = own_v4(&state, &netconf)?;
    let mut own_mac = state.own_vtep_mac();
    // EnableIPv6 makes an IPv6 podCIDR mandatory for this node (the policy checks it).
    let mut own_v6 = own_v6_of(&state, &netconf);
    // Before the device and the VXLAN port: a node migrated from Flannel has its flannel.1.
    flannel_leftovers::take_over(&nl, netconf.vni).await?;
    let mtu = netconf.inner_mtu(underlay.mtu);
    info!(iface = %underlay.iface, ip = underlay.ip.map(tracing::field::display), ip6 = underlay.ip6.map(tracing::field::display), underlay_mtu = underlay.mtu, mtu, "underlay");
    if mtu + crate::config::VXLAN_OVERHEAD_V4 > underlay.mtu {
        bail!(
            "net-conf Backend.MTU {} (device MTU {mtu}) does not fit the underlay: {} has MTU {} and VXLAN adds {} bytes, \
             and outer packets are never fragmented; set Backend.MTU to at most {} (or 0 for the underlay's MTU)",
            mtu + crate::config::VXLAN_OVERHEAD_V4,
            underlay.iface,
            underlay.mtu,
            crate::config::VXLAN_OVERHEAD_V4,
            underlay.mtu
        );
    }
    warn_if_not_forwarding(own_cidr.is_some(), own_v6.is_some());
    let mtu_v6 = ipv6_device_mtu(mtu, underlay.mtu);
    if underlay.ip6.is_some() && mtu_v6 < 1280 {
        bail!(
            "IPv6 needs a path MTU of at least 1280, but inner IPv6 over the IPv6 underlay gets {mtu_v6} ({} has MTU {} and VXLAN over IPv6 adds {} bytes): raise the underlay MTU{}",
            underlay.iface,
            underlay.mtu,
            crate::config::VXLAN_OVERHEAD_V6,
            if underlay.ip.is_some() {
                " or set EnableIPv6 to false"
            } else {
                " (an IPv6-only cluster has no other family to fall back on)"
            }
        );
    }
    if let (Some(listed), Some(ours)) = (state.own.public_ip_v6, underlay.ip6) {
        if listed != ours && netconf.network_v6.is_some() {
            warn!(
                node = %opts.node_name, listed = %listed, sending_from = %ours,
                "peers know this node's IPv6 VTEP as {listed} but VXLAN over IPv6 leaves from {ours}: they will drop it as unknown_sender; pass --public-ipv6 {listed} or fix the node's address"
            );
        }
    }
    if let Some(listed) = state
        .own
        .vtep_mac_v6
        .filter(|m| own_v6.is_some() && state.own.vtep_mac_v6_annotated && *m != own_mac)
    {
        warn!(
            node = %opts.node_name, listed = %listed, device_mac = %own_mac,
            "this node's backend-v6-data names VtepMAC {listed}, but overlayd's one device answers IPv6 on {own_mac} too: peers that read the old annotation send IPv6 frames this node drops (not_for_us) until it says {own_mac}{}",
            if matches!(source, SourceKind::Kube { .. }) { " (overlayd rewrites it now)" } else { "; update it in the node source" }
        );
    }
    if let (Some(listed), Some(ours)) = (state.own.public_ip, underlay.ip) {
        if listed != ours {
            warn!(
                node = %opts.node_name, listed = %listed, sending_from = %ours,
                "peers know this node as {listed} but VXLAN leaves from {ours}: they will drop it as unknown_sender; pass --public-ip {listed} (and --iface) or fix the node's address"
            );
        }
    }
    let identity = handover::Identity {
        device: opts.device.clone(),
        port: netconf.port,
        vni: netconf.vni,
    };
    // A running overlayd (the previous version of a rolling update) hands its queues over;
    // otherwise a device left by a stopped or crashed one is adopted, or a new one created.
    let mut taken = handover::take_over(&opts.handover_socket, &identity)?;
    let handed = taken.as_mut().map(|t| std::mem::take(&mut t.queues));
    let (mut dp, origin) =
        start_dataplane(&nl, &opts, &netconf, &underlay, &state, None, handed).await?;
    let mut direct = DirectRouting::new(netconf.direct_routing);
    direct.evaluate(&nl, &state.peers, dp.link_index).await;
    direct.sync_fdb(&dp.fdb, &state.peers, netconf.port);
    observed.attach(dp.fdb.clone(), dp.workers.stats());
    health.set_queues(dp.workers.stats());
    if let Some(t) = taken {
        let from = t.from_pid;
        match t.confirm() {
            Ok(()) => info!(
                from_pid = from,
                "took the dataplane over; the previous overlayd has stopped forwarding"
            ),
            Err(e) => {
                warn!(from_pid = from, error = %e, "the previous overlayd did not confirm the handover; forwarding anyway")
            }
        }
    } else if origin == Origin::Adopted {
        info!(device = %opts.device, "adopted the device a previous overlayd left; reconciling its routes and neighbours");
    }
    let mut listener = match handover::Listener::bind(&opts.handover_socket) {
        Ok(l) => Some(l),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "no handover socket: a successor cannot take over without loss");
            None
        }
    };
    let mut blackhole_task = opts.ip_blackhole_route.then(|| {
        tokio::spawn(blackhole::keep(
            nl.clone(),
            own_cidr,
            own_v6,
            opts.iptables_resync,
        ))
    });
    // Subscribe before the first reconcile, so nothing removed after it goes unnoticed.
    let mut events = subscribe_events();
    // A peer the kernel refuses is retried on its own; only unreadable kernel tables stop us.
    let mut reconciler = Reconciler::default();
    let first = reconciler
        .reconcile(&nl, dp.link_index, &state.peers, direct.peers())
        .await?;
    observed.set_kernel_failures(first.errors, reconciler.failing());
    let mut reported_skips = HashMap::new();
    log_peer_set(&state, &mut reported_skips);
    observed.set_skipped(&state);
    // Masquerade and FORWARD rules before subnet.env, as flanneld orders them (readiness implies them).
    let mut netfilter = crate::netfilter::start_from_options(
        &opts,
        &netconf,
        own_cidr,
        own_v6,
        observed.netfilter.clone(),
    )?;
    let env = subnet_env(&netconf, own_cidr, own_v6, mtu, &opts)?;
    env.write_atomic(&opts.subnet_file)
        .with_context(|| format!("cannot write {}", opts.subnet_file.display()))?;
    health.synced.store(true, Ordering::Relaxed);
    health.device_up.store(true, Ordering::Relaxed);
    announce.send_replace(Some(Announcement {
        vtep_mac: own_mac,
        // IPv6-only: no IPv4 VTEP, so no backend-data and public-ip (as flanneld).
        public_ip: underlay.ip.filter(|_| own_cidr.is_some()),
        vni: netconf.vni,
        // One device, one MAC: the IPv6 VtepMAC is the device's MAC too.
        v6: own_v6
            .and(underlay.ip6)
            .map(|public_ip| fdb_sync::kube::AnnouncementV6 {
                vtep_mac: own_mac,
                public_ip,
            }),
        set_node_network_unavailable: opts.set_node_network_unavailable,
    }));
    observed.set_own(own_node(
        &opts, &netconf, &underlay, own_cidr, own_mac, own_v6, mtu,
    ));
    observed.synced();
    info!(
        node = %opts.node_name, pod_cidr = own_cidr.map(tracing::field::display), pod_cidr_v6 = own_v6.map(tracing::field::display), vtep_mac = %own_mac, device = %opts.device,
        queues = dp.workers.len(), vni = netconf.vni, port = netconf.port, "overlayd ready"
    );

    // Periodic backstop: restores routes or neighbours someone else removed, and the device.
    let mut backstop = tokio::time::interval(Duration::from_secs(2));
    let mut last_error = String::new();
    // A burst of notifications (a flap, our own reconcile) becomes one check.
    let mut heal_at: Option<tokio::time::Instant> = None;
    let mut source_open = true;
    // The source's last state before validation (validated again when the device moves).
    let mut last_raw: Option<ClusterState> = None;
    let mut successor = None;
    loop {
        let mut changed = false;
        let mut check = false;
        let mut synced = false;
        tokio::select! {
            _ = stop_rx.changed() => break,
            () = dp.workers.supervise() => continue,
            conn = accept_opt(listener.as_mut()) => {
                match conn {
                    Ok(conn) => match handover::offer(&conn, &identity, dp.workers.ios()) {
                        Ok(Some(pid)) => {
                            successor = Some((conn, pid));
                            break;
                        }
                        Ok(None) => {}
                        Err(e) => warn!(error = %e, "handover connection failed; still forwarding"),
                    },
                    Err(e) => warn!(error = %e, "handover socket accept failed"),
                }
                continue;
            }
            _ = backstop.tick() => {
                check = true;
                // A peer skipped because its podCIDR covered an address of this node (after a
                // lease moved: the old subnet's pod gateway on the bridge, while those pods
                // exist) is taken once that address is gone.
                if state.skipped.iter().any(|s| s.kind == fdb_sync::SkipReason::PodCidrCoversUnderlay) {
                    if let Some(raw) = &last_raw {
                        let now = current_policy(&nl, &netconf, &underlay, &opts).await;
                        if now != policy {
                            policy = now;
                            if let Ok(new) = policy::validate(raw, &policy) {
                                if new.own == state.own && new.peers != state.peers {
                                    let next = Fdb::from_peers_keeping(&model::peers(&new.peers), netconf.port, Some(&dp.fdb.load()));
                                    dp.fdb.store(Arc::new(next));
                                    state = new;
                                    log_peer_set(&state, &mut reported_skips);
                                    observed.set_skipped(&state);
                                    changed = true;
                                }
                            }
                        }
                    }
                }
                if let Some(nf) = &netfilter {
                    nf.check_soon();
                }
                if events.is_none() {
                    events = subscribe_events();
                }
            }
            () = sleep_until_opt(heal_at) => {
                heal_at = None;
                check = true;
            }
            ev = recv_event(&mut events) => match ev {
                Some(ev) => {
                    let underlay_changed = direct.note_event(ev);
                    if (concerns_us(ev, dp.link_index) || underlay_changed) && heal_at.is_none() {
                        heal_at = Some(tokio::time::Instant::now() + HEAL_DEBOUNCE);
                    }
                }
                None => {
                    // Lost notifications (e.g. ENOBUFS): check now, resubscribe on the next tick.
                    warn!("netlink notifications stopped; resubscribing, the 2 s reconcile covers the gap");
                    events = None;
                    direct.mark_stale();
                    check = true;
                }
            },
            u = updates.recv(), if source_open => match match u {
                // Every state is validated for this node before anything else sees it.
                Some(Ok(raw)) => {
                    policy = current_policy(&nl, &netconf, &underlay, &opts).await;
                    let checked = policy::validate(&raw, &policy);
                    last_raw = Some(raw);
                    Some(checked)
                }
                other => other,
            } {
                None => {
                    // Only after a bug or a panic in the source task; forwarding goes on.
                    error!("node source ended; keeping the last state until stopped");
                    source_open = false;
                }
                Some(Err(msg)) => {
                    if msg != last_error {
                        error!(error = %msg, "node source input rejected; keeping the last good state");
                        observed.sync_failed();
                        last_error = msg;
                    }
                }
                Some(Ok(new)) if matches!(source, SourceKind::Etcd { .. })
                    && (new.own.pod_cidr != state.own.pod_cidr
                        || new.own_vtep_mac() != own_mac
                        || own_v6_of(&new, &netconf) != own_v6) =>
                {
                    // The lease was lost and another node took the subnet: move to the new
                    // one. The device gets the new address and VtepMAC (workers restarted
                    // with them), the old address goes, the peer that now holds the old
                    // subnet gets its route like any peer, and subnet.env says the new one.
                    let new_cidr = own_v4(&new, &netconf)?;
                    warn!(old = own_cidr.map(tracing::field::display), new = new_cidr.map(tracing::field::display), old_v6 = own_v6.map(tracing::field::display), new_v6 = own_v6_of(&new, &netconf).map(tracing::field::display), "this node's subnet lease changed; moving the device, routes and subnet.env to the new subnet");
                    let queues = dp.workers.take_ios();
                    let previous = dp.fdb.load_full();
                    let (ndp, _) = start_dataplane(&nl, &opts, &netconf, &underlay, &new, Some(&previous), queues)
                        .await
                        .context("cannot move the dataplane to the new subnet lease; restart overlayd")?;
                    observed.attach(ndp.fdb.clone(), ndp.workers.stats());
                    health.set_queues(ndp.workers.stats());
                    dp = ndp;
                    if let Err(e) = nl.remove_other_ipv4_addresses(dp.link_index, new_cidr.map(|c| c.network())).await {
                        warn!(error = %e, "cannot remove the old subnet's address from the device");
                    }
                    // The peer set was checked while the device still had the old subnet's
                    // address, which made the new holder of that subnet look like it covers
                    // this node: check it again without it.
                    policy = current_policy(&nl, &netconf, &underlay, &opts).await;
                    let new = match last_raw.as_ref().map(|raw| policy::validate(raw, &policy)) {
                        Some(Ok(v)) => v,
                        _ => new,
                    };
                    own_cidr = new_cidr;
                    own_mac = new.own_vtep_mac();
                    own_v6 = own_v6_of(&new, &netconf);
                    state = new;
                    subnet_env(&netconf, own_cidr, own_v6, mtu, &opts)?
                        .write_atomic(&opts.subnet_file)
                        .with_context(|| format!("cannot write {}", opts.subnet_file.display()))?;
                    drop(netfilter.take());
                    netfilter = crate::netfilter::start_from_options(&opts, &netconf, own_cidr, own_v6, observed.netfilter.clone())?;
                    if let Some(t) = blackhole_task.take() {
                        t.abort();
                        blackhole_task = Some(tokio::spawn(blackhole::keep(nl.clone(), own_cidr, own_v6, opts.iptables_resync)));
                    }
                    observed.set_own(own_node(&opts, &netconf, &underlay, own_cidr, own_mac, own_v6, mtu));
                    log_peer_set(&state, &mut reported_skips);
                    observed.set_skipped(&state);
                    last_error.clear();
                    synced = true;
                    changed = true;
                }
                Some(Ok(new)) if new.own.pod_cidr != state.own.pod_cidr
                    || new.own_vtep_mac() != own_mac
                    || own_v6_of(&new, &netconf) != own_v6 => {
                    let msg = format!(
                        "own node changed (podCIDR {:?} -> {:?}, IPv6 podCIDR {:?} -> {:?}, VtepMAC {} -> {}): restart overlayd to apply; keeping the running state",
                        state.own.pod_cidr, new.own.pod_cidr, own_v6, own_v6_of(&new, &netconf), own_mac, new.own_vtep_mac()
                    );
                    if msg != last_error {
                        error!("{msg}");
                        observed.sync_failed();
                        last_error = msg;
                    }
                }
                Some(Ok(new)) => {
                    last_error.clear();
                    synced = true;
                    if new.peers != state.peers {
                        let next = Fdb::from_peers_keeping(&model::peers(&new.peers), netconf.port, Some(&dp.fdb.load()));
                        dp.fdb.store(Arc::new(next));
                        state = new;
                        log_peer_set(&state, &mut reported_skips);
                        changed = true;
                    } else {
                        state.skipped = new.skipped;
                        log_skips(&state, &mut reported_skips);
                    }
                    observed.set_skipped(&state);
                }
            },
        }
        if check {
            heal_device(&nl, &opts, &netconf, &underlay, &state, &mut dp, &observed).await;
        }
        if (changed || check) && direct.evaluate(&nl, &state.peers, dp.link_index).await {
            changed = true;
        }
        direct.sync_fdb(&dp.fdb, &state.peers, netconf.port);
        if !changed && !check {
            if synced {
                observed.synced();
            }
            continue;
        }
        match reconciler
            .reconcile(&nl, dp.link_index, &state.peers, direct.peers())
            .await
        {
            Ok(outcome) => {
                observed.set_kernel_failures(outcome.errors, reconciler.failing());
                let n = outcome.changed;
                if n > 0 && !changed {
                    warn!(
                        changes = n,
                        "restored routes/neighbours changed behind our back"
                    );
                    observed
                        .kernel_repairs
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                if synced {
                    observed.synced();
                }
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reconcile failed; will retry");
                observed.sync_failed();
            }
        }
    }

    info!("shutting down");
    // The checker stops; the rules stay for the next overlayd (which adopts them unchanged) or
    // are removed below with --cleanup-on-exit (`overlayd cleanup` removes them too).
    drop(netfilter);
    // Whoever connects from now on finds nobody (and adopts); then the workers stop.
    drop(listener.take());
    dp.workers.stop_all();
    health.set_queues(Vec::new());
    let totals = Totals::sum(dp.workers.stats().iter().map(AsRef::as_ref));
    info!(
        tx_packets = totals.tx_packets,
        rx_packets = totals.rx_packets,
        drops = totals.drops.iter().sum::<u64>(),
        "final counters"
    );
    if let Some((conn, pid)) = successor {
        // Our copies of the queues and sockets close here; the successor's stay open.
        drop(dp);
        // Both listeners go, and what they would say is no longer true of this process: the
        // successor forwards now and answers the probes on the shared ports.
        drop(http_server);
        drop(healthz_server);
        health.device_up.store(false, Ordering::Relaxed);
        if let Err(e) = handover::released(&conn) {
            warn!(error = %e, "cannot tell the new overlayd that we stopped");
        }
        info!(successor_pid = pid, "handed over; idle until stopped (the device, routes and neighbours belong to the new overlayd)");
        let _ = stop_rx.changed().await;
        info!("stopped after a handover");
        return Ok(());
    }
    if opts.cleanup_on_exit {
        drop(dp.workers);
        let removed = cleanup::remove_all(&nl, &opts.device).await?;
        info!(%removed, "stopped; --cleanup-on-exit removed what overlayd created");
    } else {
        // The masquerade and FORWARD rules stay in place too: the next overlayd adopts them
        // like the device; only --cleanup-on-exit / `overlayd cleanup` remove them.
        info!(
            device = %opts.device,
            "stopped; device {} with its routes and neighbours left in place for the next overlayd (overlayd cleanup removes them)",
            opts.device
        );
    }
    Ok(())
}

async fn accept_opt(l: Option<&mut handover::Listener>) -> std::io::Result<socket2::Socket> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// How long notifications are collected before one check runs.
const HEAL_DEBOUNCE: Duration = Duration::from_millis(20);

fn subscribe_events() -> Option<mpsc::UnboundedReceiver<KernelEvent>> {
    match nlink::subscribe() {
        Ok(rx) => Some(rx),
        Err(e) => {
            warn!(error = %e, "cannot subscribe to netlink notifications; relying on the 2 s reconcile");
            None
        }
    }
}

async fn recv_event(
    events: &mut Option<mpsc::UnboundedReceiver<KernelEvent>>,
) -> Option<KernelEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or for ever when there is nothing due.
pub(crate) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether a notification may mean someone changed what we own: our device, one of our routes
/// (protocol 77), or a neighbour on our device.
fn concerns_us(ev: KernelEvent, link_index: u32) -> bool {
    match ev {
        KernelEvent::Link { index, .. } | KernelEvent::Neighbour { index, .. } => {
            index == link_index
        }
        KernelEvent::Route { ours, deleted, oif } => ours && (deleted || oif != Some(link_index)),
    }
}

/// Makes sure the device exists and is up: sets it up when someone set it down, and rebuilds
/// the dataplane (workers, device, sockets) when it was deleted. Failures are logged and
/// retried on the next check.
async fn heal_device(
    nl: &Netlink,
    opts: &Options,
    netconf: &NetConf,
    underlay: &Underlay,
    state: &ClusterState,
    dp: &mut Dataplane,
    observed: &Observed,
) {
    let health = &observed.health;
    match nl.link_by_index(dp.link_index).await {
        Ok(Some(link)) if link.name == opts.device => {
            if own_v6_of(state, netconf).is_some() {
                apply_ipv6_mtu(&opts.device, netconf, underlay, true);
            }
            if link.up {
                return;
            }
            warn!(device = %opts.device, "device was set down by someone else; setting it up");
            health.device_up.store(false, Ordering::Relaxed);
            match nl.set_up(dp.link_index).await {
                Ok(()) => {
                    observed.device_set_up.fetch_add(1, Ordering::Relaxed);
                    health.device_up.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    warn!(device = %opts.device, error = %e, "cannot set the device up; will retry")
                }
            }
        }
        Ok(_) => {
            warn!(device = %opts.device, index = dp.link_index, "device was deleted by someone else; rebuilding the dataplane");
            health.device_up.store(false, Ordering::Relaxed);
            dp.workers.stop_all();
            let previous = dp.fdb.load_full();
            match start_dataplane(nl, opts, netconf, underlay, state, Some(&previous), None).await {
                Ok((new, _)) => {
                    observed.attach(new.fdb.clone(), new.workers.stats());
                    health.set_queues(new.workers.stats());
                    *dp = new;
                    observed.device_rebuilds.fetch_add(1, Ordering::Relaxed);
                    health.device_up.store(true, Ordering::Relaxed);
                    info!(device = %opts.device, index = dp.link_index, queues = dp.workers.len(), "dataplane rebuilt");
                }
                Err(e) => {
                    warn!(device = %opts.device, error = %format!("{e:#}"), "cannot rebuild the dataplane; will retry")
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot read the device state; will retry"),
    }
}

/// This node's [`fdb_sync::PeerPolicy`] as the kernel shows it now.
async fn current_policy(
    nl: &Netlink,
    netconf: &NetConf,
    underlay: &Underlay,
    opts: &Options,
) -> fdb_sync::PeerPolicy {
    let (p, err) = policy::peer_policy(
        nl,
        netconf.network,
        netconf.network_v6,
        underlay.ip,
        underlay.ip6,
        opts.allow_link_local_vtep,
    )
    .await;
    if let Some(e) = err {
        warn!(error = %e, "cannot read this node's addresses; peers are checked against the Network and the underlay address only");
    }
    p
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netlink::TunInfo;

    fn link(kind: &str, tun: Option<TunInfo>, alias: Option<&str>) -> Link {
        Link {
            index: 7,
            name: "ovl.1".into(),
            mtu: 1450,
            mac: None,
            up: true,
            kind: Some(kind.into()),
            alias: alias.map(String::from),
            tun,
        }
    }

    #[test]
    fn only_our_multiqueue_vnet_tap_is_adopted() {
        let ours = TunInfo {
            tap: true,
            vnet_hdr: true,
            multi_queue: true,
            persist: true,
            queues: Some(0),
        };
        assert_eq!(
            not_adoptable(&link("tun", Some(ours), Some("overlayd"))),
            None
        );
        let why = not_adoptable(&link("bridge", None, Some("overlayd"))).unwrap();
        assert!(why.contains("not a TAP device (kind bridge)"), "{why}");
        let why = not_adoptable(&link("tun", Some(ours), None)).unwrap();
        assert!(why.contains("did not create it"), "{why}");
        for t in [
            TunInfo { tap: false, ..ours },
            TunInfo {
                multi_queue: false,
                ..ours
            },
            TunInfo {
                vnet_hdr: false,
                ..ours
            },
        ] {
            let why = not_adoptable(&link("tun", Some(t), Some("overlayd"))).unwrap();
            assert!(why.contains("multi_queue"), "{why}");
        }
    }

    /// Root only (a private network namespace): an IPv6-only queue has the IPv6 sockets
    /// alone, no IPv4 UDP socket exists in the namespace, and UDP_GRO is on; a queue with no
    /// underlay address of either family is refused with what to do.
    #[test]
    fn open_queue_opens_only_the_families_it_is_given() {
        crate::sys::in_private_netns("open_queue_opens_only_the_families_it_is_given", || {
            let st = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap();
            assert!(st.success());
            let mut taps = tap::open_multiqueue("oq6t", 2).unwrap();
            let e = open_queue(taps.pop().unwrap(), false, 1, 0, None, None).unwrap_err();
            assert!(
                e.to_string()
                    .contains("queue 1: no underlay address of either family"),
                "{e}"
            );
            let io = open_queue(
                taps.pop().unwrap(),
                false,
                0,
                0,
                None,
                Some(Ipv6Addr::LOCALHOST),
            )
            .unwrap();
            assert!(io.rx.is_none() && io.tx_pool.is_empty(), "{io:?}");
            assert!(io.rx6.is_some() && io.tx_pool6.len() == 16);
            assert_eq!(io.rx_sockets().count(), 1);
            assert!(io.offloads.gro);
            let udp4 = std::fs::read_to_string("/proc/thread-self/net/udp").unwrap();
            assert_eq!(udp4.lines().count(), 1, "no IPv4 UDP socket: {udp4}");
        });
    }

    /// Both families' send pools seed from the address's last 32 bits and the queue, as
    /// before they shared this function: an IPv6 address ending in the IPv4 one's bits seeds
    /// the same, and queues of one address differ by 4099.
    #[test]
    fn source_port_seed_is_one_formula_for_both_families() {
        let v4: std::net::IpAddr = "198.18.0.2".parse().unwrap();
        let v6: std::net::IpAddr = "fd00:18::c612:2".parse().unwrap();
        assert_eq!(
            source_port_seed(v4, 0),
            0xc612_0002_u32.wrapping_mul(2_654_435_761)
        );
        assert_eq!(source_port_seed(v6, 3), source_port_seed(v4, 3));
        assert_eq!(
            source_port_seed(v4, 1).wrapping_sub(source_port_seed(v4, 0)),
            4099
        );
    }

    #[test]
    fn ipv6_device_mtu_is_the_underlay_minus_70_capped_by_the_device() {
        // Flannel's device MTU (1500 - 50) is 20 bytes too big for inner IPv6 over IPv6.
        assert_eq!(ipv6_device_mtu(1450, 1500), 1430);
        // Backend.MTU below that is kept.
        assert_eq!(ipv6_device_mtu(1400, 1500), 1400);
        assert_eq!(ipv6_device_mtu(8950, 9000), 8930);
        // A tiny underlay gives a value the startup check refuses (< 1280), never a wrap.
        assert_eq!(ipv6_device_mtu(1300, 60), 0);
    }

    #[test]
    fn default_handover_socket_names_the_network_namespace() {
        let p = default_handover_socket();
        let s = p.to_str().unwrap();
        assert!(
            s.starts_with("/run/overlayd/handover-") && s.ends_with(".sock"),
            "{s}"
        );
        assert_eq!(p, default_handover_socket(), "stable");
    }
}
