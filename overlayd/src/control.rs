//! The control side: reads the configuration and the node source, sets up the TAP device,
//! sockets and workers, keeps the FDB snapshot and the kernel's routes and neighbours equal to
//! the desired peer set, and tears everything down on SIGTERM/SIGINT.
//!
//! It never blocks the packet path: workers only ever see whole FDB snapshots.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use fdb_sync::{ClusterState, PeerFilter, SubnetEnv};
use tracing::{error, info, warn};

use crate::config::NetConf;
use crate::fdb::{Fdb, FdbHandle};
use crate::path::DecapConfig;
use crate::stats::{Totals, WorkerStats};
use crate::sys::netlink::{Netlink, PeerNeighbour, PeerRoute};
use crate::sys::{tap, udp};
use crate::worker::Worker;

/// Everything the command line decides.
#[derive(Debug, Clone)]
pub struct Options {
    pub node_name: String,
    pub nodes_file: PathBuf,
    pub iface: Option<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub net_config_path: PathBuf,
    pub subnet_file: PathBuf,
    pub device: String,
    pub queues: usize,
    pub allow_any_sender: bool,
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

/// The nodes file: its text is re-read when its metadata changes.
struct NodesFile {
    path: PathBuf,
    stamp: Option<(SystemTime, u64, u64)>,
}

impl NodesFile {
    fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len(), m.ino()))
    }

    /// `Some(result)` when the file changed since the last call (or on the first call).
    fn poll(&mut self, own: &str) -> Option<Result<ClusterState>> {
        let stamp = Self::stamp(&self.path);
        if stamp.is_some() && stamp == self.stamp {
            return None;
        }
        self.stamp = stamp;
        Some(self.load(own))
    }

    fn load(&self, own: &str) -> Result<ClusterState> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("cannot read nodes file {}", self.path.display()))?;
        let nodes = fdb_sync::parse_node_list(&text)
            .with_context(|| format!("nodes file {}", self.path.display()))?;
        ClusterState::from_nodes(&nodes, own, PeerFilter::AllowUnannotated)
            .with_context(|| format!("nodes file {}", self.path.display()))
    }
}

/// Makes the kernel's routes and neighbours on the TAP equal to `peers`. Returns how many
/// entries it had to change.
async fn reconcile_kernel(nl: &Netlink, index: u32, state: &ClusterState) -> Result<usize> {
    let want_routes: Vec<PeerRoute> = state
        .peers
        .iter()
        .map(|p| PeerRoute {
            dst: p.pod_cidr,
            gateway: p.pod_cidr.network(),
        })
        .collect();
    let want_neigh: Vec<PeerNeighbour> = state
        .peers
        .iter()
        .map(|p| PeerNeighbour {
            ip: p.pod_cidr.network(),
            mac: p.vtep_mac,
            permanent: true,
        })
        .collect();
    let have_routes = nl.routes(index).await?;
    let have_neigh = nl.neighbours(index).await?;
    let mut changed = 0;
    // Neighbours first, so a new route never resolves to nothing.
    for n in &want_neigh {
        if !have_neigh.contains(n) {
            nl.replace_neighbour(index, n.ip, n.mac).await?;
            changed += 1;
        }
    }
    for r in &want_routes {
        if !have_routes.contains(r) {
            nl.replace_route(index, *r).await?;
            changed += 1;
        }
    }
    for r in have_routes.iter().filter(|r| !want_routes.contains(r)) {
        nl.delete_route(index, *r).await?;
        changed += 1;
    }
    for n in have_neigh
        .iter()
        .filter(|n| !want_neigh.iter().any(|w| w.ip == n.ip))
    {
        nl.delete_neighbour(index, n.ip).await?;
        changed += 1;
    }
    Ok(changed)
}

fn log_peer_set(state: &ClusterState) {
    for s in &state.skipped {
        warn!(node = %s.node, reason = %s.reason, "node skipped");
    }
    info!(
        peers = state.peers.len(),
        names = %state.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(","),
        "peer set applied"
    );
}

/// Waits for the own node to appear with a podCIDR, reporting what is missing once per change.
async fn wait_for_own_node(
    file: &mut NodesFile,
    opts: &Options,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<ClusterState>> {
    let mut last_err = String::new();
    loop {
        match file.load(&opts.node_name) {
            Ok(s) => return Ok(Some(s)),
            Err(e) => {
                let msg = format!("{e:#}");
                if msg != last_err {
                    warn!(error = %msg, "waiting for node {} with a podCIDR in the nodes file", opts.node_name);
                    last_err = msg;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return Ok(None),
        }
    }
}

/// Runs the daemon until a signal arrives.
pub async fn run(opts: Options) -> Result<()> {
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

    let mut nodes = NodesFile {
        path: opts.nodes_file.clone(),
        stamp: None,
    };
    nodes.stamp = NodesFile::stamp(&nodes.path);
    let Some(mut state) = wait_for_own_node(&mut nodes, &opts, &mut stop_rx).await? else {
        return Ok(());
    };
    let own_cidr = state.own_pod_cidr();
    if !netconf.network.contains(own_cidr.network()) {
        bail!(
            "own podCIDR {own_cidr} is outside net-conf Network {}: fix one of them",
            netconf.network
        );
    }
    let own_mac = state.own_vtep_mac();

    let nl = Netlink::connect()?;
    let underlay = find_underlay(&nl, &opts).await?;
    let mtu = netconf.inner_mtu(underlay.mtu);
    info!(iface = %underlay.iface, ip = %underlay.ip, underlay_mtu = underlay.mtu, mtu, "underlay");

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

    let fdb: FdbHandle = Arc::new(ArcSwap::from_pointee(Fdb::from_peers(
        &state.peers,
        netconf.port,
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut stats = Vec::new();
    #[allow(clippy::cast_possible_truncation)]
    let decap = DecapConfig {
        vni: netconf.vni,
        own_mac: own_mac.0,
        inner_mtu: mtu.min(65_000) as u16,
        allow_any_sender: opts.allow_any_sender,
    };
    for (id, tapq) in queues.into_iter().enumerate() {
        let rx = udp::bind_vxlan(Ipv4Addr::UNSPECIFIED, netconf.port).map_err(|e| {
            anyhow::anyhow!(
                "cannot bind UDP port {}: {e}; is a kernel vxlan device (flannel.1) or another overlayd using it? Remove it or set Backend.Port",
                netconf.port
            )
        })?;
        #[allow(clippy::cast_possible_truncation)]
        let seed = u32::from(underlay.ip)
            .wrapping_mul(2_654_435_761)
            .wrapping_add(id as u32 * 4099);
        let tx_pool = udp::bind_source_pool(underlay.ip, 16, seed)
            .with_context(|| format!("cannot bind source ports on {}", underlay.ip))?;
        let s = Arc::new(WorkerStats::default());
        stats.push(s.clone());
        let w = Worker {
            id,
            tap: tapq,
            rx,
            tx_pool,
            fdb: fdb.clone(),
            decap,
            stats: s,
            stop: stop.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("overlayd-q{id}"))
                .spawn(move || {
                    let id = w.id;
                    if let Err(e) = w.run() {
                        error!(queue = id, error = %e, "worker stopped");
                    }
                })?,
        );
    }

    reconcile_kernel(&nl, link.index, &state).await?;
    log_peer_set(&state);
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
    info!(
        node = %opts.node_name, pod_cidr = %own_cidr, vtep_mac = %own_mac, device = %opts.device,
        queues = threads.len(), vni = netconf.vni, port = netconf.port, "overlayd ready"
    );

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_error = String::new();
    let mut since_reconcile = 0u32;
    loop {
        tokio::select! {
            _ = stop_rx.changed() => break,
            _ = tick.tick() => {}
        }
        since_reconcile += 1;
        let mut force = false;
        if let Some(result) = nodes.poll(&opts.node_name) {
            match result {
                Ok(new)
                    if new.own.pod_cidr != state.own.pod_cidr || new.own_vtep_mac() != own_mac =>
                {
                    let msg = format!(
                        "own node changed (podCIDR {:?} -> {:?}, VtepMAC {} -> {}): restart overlayd to apply; keeping the running state",
                        state.own.pod_cidr, new.own.pod_cidr, own_mac, new.own_vtep_mac()
                    );
                    if msg != last_error {
                        error!("{msg}");
                        last_error = msg;
                    }
                }
                Ok(new) => {
                    last_error.clear();
                    if new.peers != state.peers {
                        fdb.store(Arc::new(Fdb::from_peers(&new.peers, netconf.port)));
                        state = new;
                        log_peer_set(&state);
                        force = true;
                    }
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    if msg != last_error {
                        error!(error = %msg, "nodes file rejected; keeping the last good state");
                        last_error = msg;
                    }
                }
            }
        }
        // Periodic backstop: restores routes or neighbours someone else removed.
        if force || since_reconcile >= 8 {
            since_reconcile = 0;
            match reconcile_kernel(&nl, link.index, &state).await {
                Ok(0) => {}
                Ok(n) if !force => warn!(
                    changes = n,
                    "restored routes/neighbours changed behind our back"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %format!("{e:#}"), "reconcile failed; will retry"),
            }
        }
    }

    info!("shutting down");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let totals = Totals::sum(stats.iter().map(AsRef::as_ref));
    info!(
        tx_packets = totals.tx_packets,
        rx_packets = totals.rx_packets,
        drops = totals.drops.iter().sum::<u64>(),
        "final counters"
    );
    let empty = ClusterState {
        peers: Vec::new(),
        ..state
    };
    if let Err(e) = reconcile_kernel(&nl, link.index, &empty).await {
        warn!(error = %format!("{e:#}"), "removing routes on shutdown");
    }
    // Closing the last queue removes the TAP device (it is not persistent); delete explicitly
    // too in case another process holds a queue open.
    drop(fdb);
    nl.delete_link(link.index).await?;
    info!("stopped; device {} removed", opts.device);
    Ok(())
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
