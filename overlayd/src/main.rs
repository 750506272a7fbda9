//! The overlayd binary: command line (Flannel's flag names where it has one) and logging.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use overlayd::control::SourceKind;

#[derive(Debug, Parser)]
#[command(
    name = "overlayd",
    version,
    about = "User-space VXLAN overlay, drop-in for Flannel's vxlan backend",
    after_help = "Inspect a running daemon: overlayd status [--json] [--http-addr ADDR] (see overlayd status --help)"
)]
struct Cli {
    /// This node's name in the node source.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Read Node objects from the Kubernetes API server.
    #[arg(long, conflicts_with = "nodes_file")]
    kube_subnet_mgr: bool,
    /// kubeconfig for --kube-subnet-mgr (in-cluster config when absent).
    #[arg(long, requires = "kube_subnet_mgr")]
    kubeconfig_file: Option<PathBuf>,
    /// A v1 NodeList (YAML or JSON, as `kubectl get nodes -o yaml` prints); re-read on change.
    #[arg(long, required_unless_present = "kube_subnet_mgr")]
    nodes_file: Option<PathBuf>,
    /// Underlay interface (default: the interface of the default route).
    #[arg(long)]
    iface: Option<String>,
    /// Underlay IPv4 address VXLAN is sent from (default: the first address of --iface).
    #[arg(long)]
    public_ip: Option<Ipv4Addr>,
    #[arg(long, default_value = "/etc/kube-flannel/net-conf.json")]
    net_config_path: PathBuf,
    #[arg(long, default_value = "/run/flannel/subnet.env")]
    subnet_file: PathBuf,
    /// TAP device name.
    #[arg(long, default_value = "ovl.1")]
    device: String,
    /// Number of TAP queues and worker threads (default: CPU count).
    #[arg(long)]
    queues: Option<usize>,
    /// Address for /metrics, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:9102")]
    http_addr: SocketAddr,
    /// Accept VXLAN from any sender, not only known VTEPs (debugging only).
    #[arg(long)]
    allow_any_sender: bool,
    /// Deliver VXLAN frames whose inner IPv4/IPv6 source address is not inside the sending
    /// node's podCIDR. By default a peer may only speak for its own pods (and its flannel.1
    /// address); turn the check off only for setups that route other networks through a node
    /// over the overlay (e.g. a gateway node forwarding external traffic unNATed).
    #[arg(long)]
    allow_foreign_inner_source: bool,
    /// Accept peers whose VTEP (public) address is link-local (169.254.0.0/16, fe80::/10);
    /// refused by default because such an address is only valid on one link.
    #[arg(long)]
    allow_link_local_vtep: bool,
}

/// `overlayd status`: the running daemon's FDB, counters, queues and drops.
#[derive(Debug, Parser)]
#[command(
    name = "overlayd status",
    bin_name = "overlayd status",
    version,
    about = "Print the running overlayd's FDB (peers, VTEPs, counters, last seen), queue modes and drops"
)]
struct StatusCli {
    /// Print the daemon's /status JSON as it is, for scripts.
    #[arg(long)]
    json: bool,
    /// The daemon's --http-addr.
    #[arg(long, default_value = "127.0.0.1:9102")]
    http_addr: SocketAddr,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // `overlayd status ...` is a client; anything else is the daemon with Flannel's flags.
    if std::env::args_os().nth(1).is_some_and(|a| a == "status") {
        let cli = StatusCli::parse_from(std::env::args_os().skip(1));
        if let Err(e) = overlayd::status::run(cli.http_addr, cli.json) {
            eprintln!("overlayd status: error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    drop_privileges();
    if let Err(e) = run(cli) {
        eprintln!("overlayd: error: {e:#}");
        std::process::exit(1);
    }
}

/// Keeps CAP_NET_ADMIN only, before any thread exists (see `overlayd::privs`).
fn drop_privileges() {
    use overlayd::privs::{drop_to_minimum, Outcome};
    match drop_to_minimum() {
        Ok(Outcome::Kept {
            dropped,
            bounding_cleared,
        }) => tracing::info!(
            kept = "CAP_NET_ADMIN",
            dropped,
            bounding_cleared,
            "capabilities dropped; keeping CAP_NET_ADMIN only"
        ),
        Ok(Outcome::Missing) => tracing::warn!(
            "running without CAP_NET_ADMIN: creating the device and programming routes will fail; run as root or grant CAP_NET_ADMIN"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot drop capabilities; continuing with the ones this process has"),
    }
}

fn run(cli: Cli) -> Result<()> {
    let source = match (cli.kube_subnet_mgr, cli.nodes_file) {
        (true, _) => SourceKind::Kube {
            kubeconfig: cli.kubeconfig_file,
        },
        (false, Some(path)) => SourceKind::NodesFile(path),
        (false, None) => bail!("pass --nodes-file PATH or --kube-subnet-mgr"),
    };
    let queues = cli
        .queues
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    if queues == 0 || queues > 256 {
        bail!("--queues {queues} is out of range 1..=256");
    }
    let opts = overlayd::control::Options {
        node_name: cli.node_name,
        iface: cli.iface,
        public_ip: cli.public_ip,
        net_config_path: cli.net_config_path,
        subnet_file: cli.subnet_file,
        device: cli.device,
        queues,
        allow_any_sender: cli.allow_any_sender,
        allow_foreign_inner_source: cli.allow_foreign_inner_source,
        allow_link_local_vtep: cli.allow_link_local_vtep,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(overlayd::control::run(opts, source, cli.http_addr))
}
