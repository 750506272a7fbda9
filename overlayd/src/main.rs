//! The overlayd binary: flanneld's command line (overlayd::cli), logging, the
//! `overlayd status` client and `overlayd cleanup`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use overlayd::cli::{Command, Config, Mode, NodeName};
use overlayd::control::SourceKind;

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

/// `overlayd cleanup`: removes what overlayd leaves on the node when it stops.
#[derive(Debug, Parser)]
#[command(
    name = "overlayd cleanup",
    bin_name = "overlayd cleanup",
    version,
    about = "Remove what overlayd created and a stop leaves in place: the device, every route with protocol 77, the device's neighbours, the masquerade/FORWARD rules and the handover socket. Refuses while an overlayd runs."
)]
struct CleanupCli {
    /// The daemon's --device.
    #[arg(long, default_value = "ovl.1")]
    device: String,
    /// The daemon's --handover-socket (used to tell whether an overlayd still runs; default
    /// as the daemon's).
    #[arg(long)]
    handover_socket: Option<PathBuf>,
    /// Clean up even though an overlayd answers (it will rebuild the device).
    #[arg(long)]
    force: bool,
}

fn main() {
    // `overlayd status ...` is a client; anything else is the daemon with flanneld's flags.
    if std::env::args_os().nth(1).is_some_and(|a| a == "status") {
        init_logging("info");
        let cli = StatusCli::parse_from(std::env::args_os().skip(1));
        if let Err(e) = overlayd::status::run(cli.http_addr, cli.json) {
            eprintln!("overlayd status: error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "cleanup") {
        init_logging("info");
        let cli = CleanupCli::parse_from(std::env::args_os().skip(1));
        let socket = cli
            .handover_socket
            .unwrap_or_else(overlayd::control::default_handover_socket);
        if let Err(e) = overlayd::control::cleanup::run(&cli.device, &socket, cli.force) {
            eprintln!("overlayd cleanup: error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match overlayd::cli::parse(&args, &|k| std::env::var(k).ok()) {
        Ok(Command::Run(cfg)) => cfg,
        Ok(Command::Help) => {
            // Go's flag package prints usage to stderr; stdout lets `overlayd --help | less` work.
            print!("{}", overlayd::cli::usage());
            std::process::exit(0);
        }
        Ok(Command::Version) => {
            // flanneld prints its version to stderr (main.go main()).
            eprintln!("{}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0);
        }
        Err(e) => {
            // Go's flag.ExitOnError: the error, a pointer to the usage, exit status 2.
            eprintln!("overlayd: {e}\nRun overlayd --help for the flags.");
            std::process::exit(2);
        }
    };
    init_logging(cfg.log_level());
    // Capabilities go first, before any thread and before anything is read.
    drop_privileges();
    // flanneld logs its parsed flags at start ("CLI flags config"); so does overlayd.
    tracing::info!("command line: {cfg:?}");
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = run(*cfg) {
        eprintln!("overlayd: error: {e:#}");
        std::process::exit(1);
    }
}

/// `RUST_LOG` when set, else the level `-v` maps to.
fn init_logging(level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Keeps CAP_NET_ADMIN and CAP_NET_RAW only and sets no_new_privs, before any thread exists
/// (see `overlayd::privs`). Fails closed: when the drop fails, overlayd exits.
fn drop_privileges() {
    use overlayd::privs::{drop_to_minimum, Outcome};
    match drop_to_minimum() {
        Ok(Outcome::Kept {
            kept,
            dropped,
            bounding_cleared,
        }) => {
            let kept: Vec<String> = kept.iter().map(ToString::to_string).collect();
            tracing::info!(
                kept = %kept.join(","),
                dropped,
                bounding_cleared,
                no_new_privs = true,
                "capabilities dropped"
            );
        }
        Ok(Outcome::Missing) => tracing::warn!(
            "running without CAP_NET_ADMIN: creating the device and programming routes will fail; run as root or grant CAP_NET_ADMIN"
        ),
        Err(e) => {
            eprintln!(
                "overlayd: error: cannot drop capabilities: {e}; refusing to run with more privileges than CAP_NET_ADMIN and CAP_NET_RAW \
                 (check that the container runtime or a seccomp profile allows capset and prctl)"
            );
            std::process::exit(1);
        }
    }
}

fn run(cfg: Config) -> Result<()> {
    let source = match &cfg.mode {
        Mode::Kube {
            kubeconfig,
            api_url,
        } => SourceKind::Kube {
            kubeconfig: kubeconfig.clone(),
            api_url: api_url.clone(),
        },
        Mode::NodesFile(path) => SourceKind::NodesFile(path.clone()),
        Mode::Etcd { etcd, lease_ttl } => SourceKind::Etcd {
            etcd: etcd.clone(),
            lease_ttl: *lease_ttl,
        },
    };
    let queues = cfg.queues.unwrap_or_else(|| {
        overlayd::cli::default_queues(
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        )
    });
    if matches!(cfg.mode, Mode::Kube { .. }) {
        fdb_sync::kube::set_annotation_prefix(&cfg.annotation_prefix);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let node_name = match cfg.node_name {
                NodeName::Given(n) => n,
                NodeName::FromPod { namespace, name } => {
                    let SourceKind::Kube {
                        kubeconfig,
                        api_url,
                    } = &source
                    else {
                        unreachable!("cli allows POD_NAME only with --kube-subnet-mgr")
                    };
                    let client =
                        fdb_sync::kube::client(kubeconfig.as_deref(), api_url.as_deref()).await?;
                    let node = fdb_sync::kube::pod_node_name(client, &namespace, &name)
                        .await
                        .context("finding the node name")?;
                    tracing::info!(pod = %format!("{namespace}/{name}"), node = %node, "node name from the pod's spec.nodeName");
                    node
                }
            };
            let opts = overlayd::control::Options {
                node_name,
                iface: cfg.iface,
                iface_regex: cfg.iface_regex,
                iface_can_reach: cfg.iface_can_reach,
                public_ip: cfg.public_ip,
                public_ipv6: cfg.public_ipv6,
                net_config_path: cfg.net_config_path,
                subnet_file: cfg.subnet_file,
                device: cfg.device,
                queues,
                busy_poll: cfg.busy_poll,
                allow_any_sender: cfg.allow_any_sender,
                allow_foreign_inner_source: cfg.allow_foreign_inner_source,
                allow_link_local_vtep: cfg.allow_link_local_vtep,
                ip_masq: cfg.ip_masq,
                ip_masq_random_fully: cfg.ip_masq_random_fully,
                iptables_forward_rules: cfg.iptables_forward_rules,
                iptables_resync: cfg.iptables_resync,
                subnet_lease_renew_margin: cfg.subnet_lease_renew_margin,
                set_node_network_unavailable: cfg.set_node_network_unavailable,
                ip_blackhole_route: cfg.ip_blackhole_route,
                healthz_addr: cfg.healthz_addr,
                handover_socket: cfg
                    .handover_socket
                    .unwrap_or_else(overlayd::control::default_handover_socket),
                cleanup_on_exit: cfg.cleanup_on_exit,
            };
            overlayd::control::run(opts, source, cfg.http_addr).await
        })
}
