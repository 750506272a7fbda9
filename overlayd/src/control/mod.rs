//! The control side: reads the configuration and the node source, sets up the TAP device,
//! sockets and workers, keeps the FDB snapshot and the kernel's routes and neighbours equal to
//! the desired peer set, and tears everything down on SIGTERM/SIGINT.
//!
//! It never blocks the packet path: workers only ever see whole FDB snapshots.
//!
//! Self-healing: rtnetlink notifications (link, IPv4 route, neighbour) trigger a check at
//! once, and a 2 s reconcile is the backstop for anything a notification missed. A device
//! found down is set up again; a device found deleted gets a new dataplane (workers stopped,
//! device, sockets and workers created again, peers' counters kept).

mod policy;
mod reconcile;
pub mod source;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use fdb_sync::kube::Announcement;
use fdb_sync::{ClusterState, SubnetEnv};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::NetConf;
use crate::fdb::{Fdb, FdbHandle};
use crate::http::{self, Health};
use crate::observe::{Observed, OwnNode};
use crate::path::DecapConfig;
use crate::stats::{Totals, WorkerStats};
use crate::sys::netlink::{self as nlink, KernelEvent, Netlink};
use crate::sys::{tap, udp};
use crate::worker::{Offloads, Worker};
use reconcile::Reconciler;
use source::SourceUpdate;

/// Everything the command line decides.
#[derive(Debug, Clone)]
pub struct Options {
    pub node_name: String,
    pub iface: Option<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub net_config_path: PathBuf,
    pub subnet_file: PathBuf,
    pub device: String,
    pub queues: usize,
    pub allow_any_sender: bool,
    /// Accept peers whose VTEP address is link-local (169.254.0.0/16, fe80::/10).
    pub allow_link_local_vtep: bool,
    /// Deliver decapsulated frames whose inner source is outside the sending VTEP's podCIDR.
    pub allow_foreign_inner_source: bool,
}

/// The underlay: where VXLAN leaves and arrives.
#[derive(Debug, Clone)]
struct Underlay {
    iface: String,
    ip: Ipv4Addr,
    mtu: u32,
}

async fn find_underlay(nl: &Netlink, opts: &Options) -> Result<Underlay> {
    let index = match (&opts.iface, opts.public_ip) {
        (Some(name), _) => {
            nl.link_by_name(name)
                .await?
                .with_context(|| format!("--iface {name}: no such interface"))?
                .index
        }
        (None, Some(ip)) => nl
            .link_with_address(ip)
            .await?
            .with_context(|| format!("--public-ip {ip} is not assigned to any interface here: pass --iface too"))?,
        (None, None) => nl
            .default_route_link()
            .await?
            .context("no IPv4 default route to pick the underlay interface from: pass --iface or --public-ip")?,
    };
    let link = nl
        .link_by_index(index)
        .await?
        .with_context(|| format!("underlay interface #{index} vanished"))?;
    let ip = match opts.public_ip {
        Some(ip) => ip,
        None => *nl.ipv4_addresses(index).await?.first().with_context(|| {
            format!(
                "interface {} has no IPv4 address: pass --public-ip",
                link.name
            )
        })?,
    };
    Ok(Underlay {
        iface: link.name,
        ip,
        mtu: link.mtu,
    })
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
    },
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
            tokio::spawn(source::watch_nodes_file(
                path.clone(),
                node_name.to_string(),
                tx,
            ));
        }
        SourceKind::Kube { kubeconfig } => {
            let client = fdb_sync::kube::client(kubeconfig.as_deref()).await?;
            tokio::spawn(fdb_sync::kube::run(
                client,
                node_name.to_string(),
                tx,
                announce,
            ));
        }
    }
    Ok(rx)
}

/// The running dataplane: device, workers, FDB.
struct Dataplane {
    link_index: u32,
    fdb: FdbHandle,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: Vec<Arc<WorkerStats>>,
}

/// Creates the TAP device and its workers for `state`; peers' counters carry over from
/// `previous` (a rebuild).
async fn start_dataplane(
    nl: &Netlink,
    opts: &Options,
    netconf: &NetConf,
    underlay: &Underlay,
    state: &ClusterState,
    previous: Option<&Fdb>,
) -> Result<Dataplane> {
    let own_cidr = state.own_pod_cidr();
    let own_mac = state.own_vtep_mac();
    let mtu = netconf.inner_mtu(underlay.mtu);
    if let Some(l) = nl.link_by_name(&opts.device).await? {
        bail!(
            "device {} already exists (kind {}): another overlayd may be running; delete it (ip link del {}) or pass --device",
            opts.device,
            l.kind.as_deref().unwrap_or("unknown"),
            opts.device
        );
    }
    let queues = tap::open_multiqueue(&opts.device, opts.queues)?;
    let link = nl
        .link_by_name(&opts.device)
        .await?
        .with_context(|| format!("TAP device {} vanished after creation", opts.device))?;
    // IPv6 link-local traffic (RS, MLD) would only be dropped as floods; Flannel's IPv4 overlay
    // has no use for it. Best effort: the sysctl may be absent.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", opts.device),
        "1",
    );
    nl.configure_link(link.index, own_mac, mtu, own_cidr.network())
        .await?;

    let fdb: FdbHandle = Arc::new(ArcSwap::from_pointee(Fdb::from_peers_keeping(
        &state.peers,
        netconf.port,
        previous,
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let mut stats = Vec::new();
    #[allow(clippy::cast_possible_truncation)]
    let decap = DecapConfig {
        vni: netconf.vni,
        own_mac: own_mac.0,
        inner_mtu: mtu.min(65_000) as u16,
        allow_any_sender: opts.allow_any_sender,
        allow_foreign_inner_source: opts.allow_foreign_inner_source,
    };
    let mut modes = Vec::new();
    for (id, tapq) in queues.into_iter().enumerate() {
        // Probe the offloads per queue and socket; a refusal means the plain path, said once.
        let tso = match tap::set_offload(&tapq, &opts.device, tap::OFFLOAD_TCP) {
            Ok(()) => true,
            Err(e) => {
                warn!(queue = id, error = %e, "TAP offloads unavailable; this queue runs the plain path");
                false
            }
        };
        let rx = udp::bind_vxlan(Ipv4Addr::UNSPECIFIED, netconf.port).map_err(|e| {
            anyhow::anyhow!(
                "cannot bind UDP port {}: {e}; is a kernel vxlan device (flannel.1) or another overlayd using it? Remove it or set Backend.Port",
                netconf.port
            )
        })?;
        let gro = match udp::enable_gro(&rx) {
            Ok(()) => true,
            Err(e) => {
                warn!(queue = id, error = %e, "UDP_GRO unavailable; receiving one datagram per read");
                false
            }
        };
        modes.push(if tso && gro { "offload" } else { "plain" });
        #[allow(clippy::cast_possible_truncation)]
        let seed = u32::from(underlay.ip)
            .wrapping_mul(2_654_435_761)
            .wrapping_add(id as u32 * 4099);
        let tx_pool = udp::bind_source_pool(underlay.ip, 16, seed)
            .with_context(|| format!("cannot bind source ports on {}", underlay.ip))?;
        let s = Arc::new(WorkerStats::default());
        stats.push(s.clone());
        workers.push(Worker {
            id,
            tap: tapq,
            rx,
            tx_pool,
            fdb: fdb.clone(),
            decap,
            offloads: Offloads { tso, gro },
            stats: s,
            stop: stop.clone(),
        });
    }
    // Threads start only once every queue is ready: a failure above drops the queues (and so
    // the device) with no thread left holding one open.
    let mut threads = Vec::new();
    for w in workers {
        let id = w.id;
        let spawned = std::thread::Builder::new()
            .name(format!("overlayd-q{id}"))
            .spawn(move || {
                if let Err(e) = w.run() {
                    error!(queue = id, error = %e, "worker stopped");
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e).context(format!("cannot start the worker thread of queue {id}"));
            }
        }
    }
    info!(modes = %modes.join(","), "queue offload modes");
    Ok(Dataplane {
        link_index: link.index,
        fdb,
        stop,
        threads,
        stats,
    })
}

/// Runs the daemon until a signal arrives.
pub async fn run(opts: Options, source: SourceKind, http_addr: SocketAddr) -> Result<()> {
    let text = std::fs::read_to_string(&opts.net_config_path).with_context(|| {
        format!(
            "cannot read net-conf {}: pass --net-config-path",
            opts.net_config_path.display()
        )
    })?;
    let netconf =
        NetConf::parse(&text).with_context(|| format!("{}", opts.net_config_path.display()))?;

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let health = Arc::new(Health::default());
    let observed = Arc::new(Observed::new(health.clone()));
    let _http = http::serve(http_addr, http::router(observed.clone())).await?;

    // The underlay comes first: validating peers (and the own podCIDR) needs its addresses.
    let nl = Netlink::connect()?;
    let underlay = find_underlay(&nl, &opts).await?;
    let mut policy = current_policy(&nl, &netconf, &underlay, &opts).await;

    let (announce, announce_rx) = tokio::sync::watch::channel(None);
    let mut updates = spawn_source(&source, &opts.node_name, announce_rx).await?;
    let Some(mut state) =
        wait_for_own_node(&mut updates, &opts.node_name, &mut stop_rx, &policy).await?
    else {
        return Ok(());
    };
    health.own_node_known.store(true, Ordering::Relaxed);
    let own_cidr = state.own_pod_cidr();
    let own_mac = state.own_vtep_mac();
    let mtu = netconf.inner_mtu(underlay.mtu);
    info!(iface = %underlay.iface, ip = %underlay.ip, underlay_mtu = underlay.mtu, mtu, "underlay");
    if mtu + crate::config::VXLAN_OVERHEAD_V4 > underlay.mtu {
        bail!(
            "net-conf Backend.MTU {mtu} does not fit the underlay: {} has MTU {} and VXLAN adds {} bytes, \
             and outer packets are never fragmented; set Backend.MTU to at most {} (or 0 to derive it)",
            underlay.iface,
            underlay.mtu,
            crate::config::VXLAN_OVERHEAD_V4,
            underlay.mtu.saturating_sub(crate::config::VXLAN_OVERHEAD_V4)
        );
    }
    if let Some(listed) = state.own.public_ip.filter(|ip| *ip != underlay.ip) {
        warn!(
            node = %opts.node_name, listed = %listed, sending_from = %underlay.ip,
            "peers know this node as {listed} but VXLAN leaves from {}: they will drop it as unknown_sender; pass --public-ip {listed} (and --iface) or fix the node's address",
            underlay.ip
        );
    }
    let mut dp = start_dataplane(&nl, &opts, &netconf, &underlay, &state, None).await?;
    observed.attach(dp.fdb.clone(), dp.stats.clone());
    // Subscribe before the first reconcile, so nothing removed after it goes unnoticed.
    let mut events = subscribe_events();
    // A peer the kernel refuses is retried on its own; only unreadable kernel tables stop us.
    let mut reconciler = Reconciler::default();
    let first = reconciler
        .reconcile(&nl, dp.link_index, &state.peers)
        .await?;
    observed.set_kernel_failures(first.errors, reconciler.failing());
    let mut reported_skips = HashMap::new();
    log_peer_set(&state, &mut reported_skips);
    observed.set_skipped(&state);
    let env = SubnetEnv {
        network: netconf.network,
        subnet: own_cidr,
        mtu,
        ipmasq: false,
        ipv6_network: None,
        ipv6_subnet: None,
    };
    env.write_atomic(&opts.subnet_file)
        .with_context(|| format!("cannot write {}", opts.subnet_file.display()))?;
    health.synced.store(true, Ordering::Relaxed);
    health.device_up.store(true, Ordering::Relaxed);
    announce.send_replace(Some(Announcement {
        vtep_mac: own_mac,
        public_ip: underlay.ip,
        vni: netconf.vni,
    }));
    observed.set_own(OwnNode {
        node: opts.node_name.clone(),
        pod_cidr: own_cidr,
        vtep_ip: underlay.ip,
        vtep_mac: own_mac,
        device: opts.device.clone(),
        vni: netconf.vni,
        port: netconf.port,
        mtu,
    });
    observed.synced();
    info!(
        node = %opts.node_name, pod_cidr = %own_cidr, vtep_mac = %own_mac, device = %opts.device,
        queues = dp.threads.len(), vni = netconf.vni, port = netconf.port, "overlayd ready"
    );

    // Periodic backstop: restores routes or neighbours someone else removed, and the device.
    let mut backstop = tokio::time::interval(Duration::from_secs(2));
    let mut last_error = String::new();
    // A burst of notifications (a flap, our own reconcile) becomes one check.
    let mut heal_at: Option<tokio::time::Instant> = None;
    let mut source_open = true;
    loop {
        let mut changed = false;
        let mut check = false;
        let mut synced = false;
        tokio::select! {
            _ = stop_rx.changed() => break,
            _ = backstop.tick() => {
                check = true;
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
                    if concerns_us(ev, dp.link_index) && heal_at.is_none() {
                        heal_at = Some(tokio::time::Instant::now() + HEAL_DEBOUNCE);
                    }
                }
                None => {
                    // Lost notifications (e.g. ENOBUFS): check now, resubscribe on the next tick.
                    warn!("netlink notifications stopped; resubscribing, the 2 s reconcile covers the gap");
                    events = None;
                    check = true;
                }
            },
            u = updates.recv(), if source_open => match match u {
                // Every state is validated for this node before anything else sees it.
                Some(Ok(raw)) => {
                    policy = current_policy(&nl, &netconf, &underlay, &opts).await;
                    Some(policy::validate(&raw, &policy))
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
                Some(Ok(new)) if new.own.pod_cidr != state.own.pod_cidr || new.own_vtep_mac() != own_mac => {
                    let msg = format!(
                        "own node changed (podCIDR {:?} -> {:?}, VtepMAC {} -> {}): restart overlayd to apply; keeping the running state",
                        state.own.pod_cidr, new.own.pod_cidr, own_mac, new.own_vtep_mac()
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
                        let next = Fdb::from_peers_keeping(&new.peers, netconf.port, Some(&dp.fdb.load()));
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
        if !changed && !check {
            if synced {
                observed.synced();
            }
            continue;
        }
        match reconciler.reconcile(&nl, dp.link_index, &state.peers).await {
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
    dp.stop.store(true, Ordering::Relaxed);
    for t in dp.threads {
        let _ = t.join();
    }
    let totals = Totals::sum(dp.stats.iter().map(AsRef::as_ref));
    info!(
        tx_packets = totals.tx_packets,
        rx_packets = totals.rx_packets,
        drops = totals.drops.iter().sum::<u64>(),
        "final counters"
    );
    let mut last = Reconciler::default();
    match last.reconcile(&nl, dp.link_index, &[]).await {
        Ok(o) if o.errors > 0 => warn!(
            failing = ?last.failing(),
            errors = o.errors,
            "the kernel refused to remove some routes/neighbours on shutdown"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %format!("{e:#}"), "removing routes on shutdown"),
    }
    // Closing the last queue removes the TAP device (it is not persistent); delete explicitly
    // too in case another process holds a queue open.
    nl.delete_link(dp.link_index).await?;
    info!("stopped; device {} removed", opts.device);
    Ok(())
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

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
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
            dp.stop.store(true, Ordering::Relaxed);
            for t in dp.threads.drain(..) {
                let _ = t.join();
            }
            let previous = dp.fdb.load_full();
            match start_dataplane(nl, opts, netconf, underlay, state, Some(&previous)).await {
                Ok(new) => {
                    observed.attach(new.fdb.clone(), new.stats.clone());
                    *dp = new;
                    observed.device_rebuilds.fetch_add(1, Ordering::Relaxed);
                    health.device_up.store(true, Ordering::Relaxed);
                    info!(device = %opts.device, index = dp.link_index, queues = dp.threads.len(), "dataplane rebuilt");
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
    let (p, err) =
        policy::peer_policy(nl, netconf.network, underlay.ip, opts.allow_link_local_vtep).await;
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
