//! flanneld's command line, parsed the way flanneld parses it.
//!
//! flanneld uses Go's `flag` package (main.go `init()`), not GNU-style options: `-flag` and
//! `--flag` are the same, a value is given as `-flag=value` or as the next argument
//! (`-flag value`), a bool flag never takes the next argument (`-ip-masq false` leaves `false`
//! as a positional argument), `--` ends the flags, and a flag given twice keeps the last value
//! except the list flags (`-iface`, `-iface-regex`), which append. After the command line,
//! `FLANNELD_<NAME>` environment variables set the flags not given on it (coreos/pkg
//! flagutil.SetFlagsFromEnv: name upper-cased, `-` and `.` to `_`, empty values skipped).
//!
//! This is a small parser of its own rather than clap with a rewritten argv: whether the next
//! argument is a value depends on the flag's type (bool or not), Go's integer syntax (base
//! prefixes, `_`) and the environment fallback (only for flags not set) are not clap's, and
//! one table of flags then serves parsing, `--help`, the environment and the test that every
//! flanneld flag is known. It does no I/O except reading the environment through a closure.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// How a flag takes its value (Go flag.Value kinds used by flanneld).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `BoolVar`: `-f`, `-f=true|false|1|0|t|f|...`; never consumes the next argument.
    Bool,
    /// `IntVar`: strconv.ParseInt(s, 0, 64).
    Int,
    /// klog's `-v` Level: strconv.ParseInt(s, 10, 32).
    Level,
    /// `StringVar`.
    Str,
    /// flanneld's `flagSlice`: every occurrence appends.
    List,
}

/// One flag: its name, kind, whether flanneld defines it, and its help line.
#[derive(Debug)]
pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
    /// flanneld's flag (`FLANNELD_*` applies) or overlayd's own.
    pub flanneld: bool,
    pub default: &'static str,
    pub help: &'static str,
}

const fn f(
    name: &'static str,
    kind: Kind,
    flanneld: bool,
    default: &'static str,
    help: &'static str,
) -> Flag {
    Flag {
        name,
        kind,
        flanneld,
        default,
        help,
    }
}

/// Every flag, flanneld's first (in main.go's order), then overlayd's own.
pub const FLAGS: &[Flag] = &[
    f("etcd-endpoints", Kind::Str, true, "http://127.0.0.1:4001,http://127.0.0.1:2379", "comma-separated etcd v3 endpoints (etcd mode: the default without --kube-subnet-mgr and --nodes-file)"),
    f("etcd-prefix", Kind::Str, true, "/coreos.com/network", "etcd prefix: <prefix>/config holds net-conf.json, <prefix>/subnets/ the leases"),
    f("etcd-keyfile", Kind::Str, true, "", "etcd TLS client key (with --etcd-certfile)"),
    f("etcd-certfile", Kind::Str, true, "", "etcd TLS client certificate (with --etcd-keyfile)"),
    f("etcd-cafile", Kind::Str, true, "", "CA that signed the etcd servers' certificates"),
    f("etcd-username", Kind::Str, true, "", "etcd user (etcd authentication)"),
    f("etcd-password", Kind::Str, true, "", "etcd user's password"),
    f("iface", Kind::List, true, "", "underlay interface, by name or address; repeatable, the first that exists wins"),
    f("iface-regex", Kind::List, true, "", "regex matching the underlay interface's name or address; repeatable, checked after --iface"),
    f("iface-can-reach", Kind::Str, true, "", "use the interface `ip route get <ip>` would use"),
    f("subnet-file", Kind::Str, true, "/run/flannel/subnet.env", "where FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU... are written"),
    f("public-ip", Kind::Str, true, "", "IPv4 address other nodes reach this one at (default: the interface's first); IPv6 in an IPv6-only cluster"),
    f("public-ipv6", Kind::Str, true, "", "IPv6 address for other nodes (with EnableIPv6)"),
    f("subnet-lease-renew-margin", Kind::Int, true, "60", "etcd mode: renew the 24 h subnet lease this many minutes before it expires, 1..1439"),
    f("ip-masq", Kind::Bool, true, "false", "masquerade traffic from the pod network to outside it"),
    f("ip-masq-fully-random-disable", Kind::Bool, true, "false", "masquerade without --random-fully"),
    f("kube-subnet-mgr", Kind::Bool, true, "false", "read Node objects from the Kubernetes API server"),
    f("kube-api-url", Kind::Str, true, "", "Kubernetes API server URL (default: in-cluster or the kubeconfig's)"),
    f("kube-annotation-prefix", Kind::Str, true, "flannel.alpha.coreos.com", "Node annotation prefix; may contain one '/', else '/' is appended"),
    f("kubeconfig-file", Kind::Str, true, "", "kubeconfig (default: in-cluster configuration)"),
    f("version", Kind::Bool, true, "false", "print the version and exit"),
    f("healthz-ip", Kind::Str, true, "0.0.0.0", "address of the /healthz listener"),
    f("healthz-port", Kind::Int, true, "0", "port of the /healthz listener (0 = off; /healthz is always on --http-addr too)"),
    f("iptables-resync", Kind::Int, true, "5", "resync period of the masquerade/forward rules, seconds"),
    f("iptables-forward-rules", Kind::Bool, true, "true", "accept pod traffic in the FORWARD chain"),
    f("ip-blackhole-route", Kind::Bool, true, "false", "keep a blackhole route for this node's podCIDR (checked every --iptables-resync)"),
    f("net-config-path", Kind::Str, true, "/etc/kube-flannel/net-conf.json", "net-conf.json"),
    f("set-node-network-unavailable", Kind::Bool, true, "true", "set the Node's NetworkUnavailable condition to false once ready"),
    f("v", Kind::Level, true, "0", "log verbosity (klog): 0-3 info, 4-5 debug, 6+ trace (RUST_LOG wins when set)"),
    f("vmodule", Kind::Str, true, "", "klog per-file verbosity: accepted and ignored"),
    f("log_backtrace_at", Kind::Str, true, "", "klog backtrace location: accepted and ignored"),
    f("node-name", Kind::Str, false, "", "this node's name (env NODE_NAME; else POD_NAME/POD_NAMESPACE with --kube-subnet-mgr; in etcd mode the host name)"),
    f("nodes-file", Kind::Str, false, "", "a v1 NodeList (YAML or JSON, as `kubectl get nodes -o yaml` prints); re-read on change"),
    f("device", Kind::Str, false, "ovl.1", "TAP device name"),
    f("queues", Kind::Int, false, "", "TAP queues and worker threads (default: 1 with up to 2 CPUs, else the CPU count)"),
    f("busy-poll-us", Kind::Int, false, "", "microseconds a worker keeps checking its TAP queue and UDP socket for work after moving packets, before it sleeps in poll(), 0..=1000 (0 = never; default: 0, or --latency-mode's budget)"),
    f("latency-mode", Kind::Bool, false, "false", "trade CPU for round-trip time where workers have idle cores: workers busy-poll 20 µs after moving packets (the best spinning budget of the sweep in benches/rig) unless --busy-poll-us is given; on a 2-vCPU machine it made RTT worse (README, Performance)"),
    f("http-addr", Kind::Str, false, "127.0.0.1:9102", "address for /metrics, /healthz, /readyz"),
    f("allow-any-sender", Kind::Bool, false, "false", "accept VXLAN from any sender, not only known VTEPs (debugging only)"),
    f("allow-foreign-inner-source", Kind::Bool, false, "false", "deliver VXLAN frames whose inner source is not inside the sending node's podCIDR (off: a peer speaks only for its own pods; turn on only where a node routes other networks over the overlay unNATed)"),
    f("allow-link-local-vtep", Kind::Bool, false, "false", "accept peers whose VTEP address is link-local (169.254.0.0/16), valid on one link only"),
    f("handover-socket", Kind::Str, false, "", "unix socket where this overlayd hands its dataplane to a new one started beside it (hitless upgrade); default /run/overlayd/handover-<netns inode>.sock"),
    f("cleanup-on-exit", Kind::Bool, false, "false", "on SIGTERM remove the device, routes, neighbours and masquerade/FORWARD rules instead of leaving them for the next overlayd"),
];

/// `--busy-poll-us` when neither it nor `--latency-mode` is given. The sweep on benches/rig
/// (2026-12-03, 5 interleaved rounds, 2 queues, 2 vCPUs shared by both nodes' workers, iperf3
/// and other builds; benches/results/runs/2026-12-03-busy-poll-sweep.txt) found no budget that
/// wins on RTT, let alone within 5 % of throughput and CPU per GB. Medians, overlayd / kernel:
///
/// | budget µs | RTT p50 | single-stream | 4-stream | CPU per GB (machine) |
/// |---|---|---|---|---|
/// | 0   | 2.46 | 0.55 | 0.49 | 1.82 |
/// | 20  | 3.44 | 0.47 | 0.47 | 2.12 |
/// | 50  | 3.66 | 0.46 | 0.42 | 2.18 |
/// | 100 | 5.28 | 0.36 | 0.36 | 2.80 |
/// | 200 | 8.26 | 0.34 | 0.41 | 2.96 |
///
/// A spinning worker takes the CPU that the other workers and the applications need when
/// there are fewer cores than busy threads, so the default is never to spin.
pub const DEFAULT_BUSY_POLL_US: u64 = 0;
/// `--latency-mode`'s budget: the best RTT p50 among the spinning budgets of that sweep
/// (20 µs). On the 2-vCPU rig it still lost to not spinning (RTT p50 3.44x kernel against
/// 2.46x): it is meant for machines where each worker has an idle core, which the rig does not
/// have, so there it is unmeasured.
pub const LATENCY_MODE_BUSY_POLL_US: u64 = 20;
const MAX_BUSY_POLL_US: i64 = 1000;

/// `--queues` when not given, for a machine with `cpus` CPUs: 1 on machines with up to 2, else
/// one per CPU. Measured on benches/rig with 2 vCPUs (2026-12-03, 5 interleaved rounds, busy-poll
/// 0; benches/results/runs/2026-12-03-queues-io-uring.txt), medians overlayd / kernel, 1 queue
/// against 2: single-stream 0.58 vs 0.48, 4-stream 0.51 vs 0.43, RTT p50 2.00 vs 2.41 (p99 2.8
/// vs 28), machine CPU per GB 1.75 vs 2.14, 64-byte UDP 0.61 vs 0.66; in the baseline run the
/// same day 0.53 vs 0.52, 0.43 vs 0.44, RTT p50 2.58 vs 4.14, CPU 1.88 vs 1.93, and 4-stream
/// retransmits 1.35 vs 11,466 per GB. With two workers per node on two vCPUs both nodes'
/// workers, the applications and softirq contend for the same cores, and flows split across
/// queues reorder; one worker per node keeps a core free. Above 2 CPUs it is not measured and
/// stays one queue per CPU, so received flows spread.
pub fn default_queues(cpus: usize) -> usize {
    if cpus <= 2 {
        1
    } else {
        cpus
    }
}

/// A command line flanneld (or overlayd) would not run with; the text names the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("flag provided but not defined: -{0} (see overlayd --help for the flags overlayd and flanneld take)")]
    Unknown(String),
    #[error("bad flag syntax: {0}")]
    Syntax(String),
    #[error("flag needs an argument: -{0}")]
    NeedsValue(&'static str),
    #[error("invalid value {value:?} for flag -{flag}: {reason}")]
    Value {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid value {value:?} for {var}: {reason}")]
    Env {
        var: String,
        value: String,
        reason: String,
    },
    #[error("unexpected argument {0:?}: overlayd takes flags only (a bool flag takes its value as -flag=false, not as the next argument)")]
    Positional(String),
    #[error("{0}")]
    Refused(String),
}

fn lookup(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.name == name)
}

/// Go's strconv.ParseBool.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's strconv.ParseInt(s, 0, 64): sign, then `0x`/`0o`/`0b`/`0` prefixes, `_` between digits.
fn parse_go_int(s: &str) -> Result<i64, String> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string())
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string())
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string())
    } else {
        (10, lower.clone())
    };
    // Underscores only between digits (or right after a base prefix), as Go's underscoreOK.
    let prefixed = radix != 10;
    let ok_underscores =
        !digits.ends_with('_') && !digits.contains("__") && (prefixed || !digits.starts_with('_'));
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    if clean.is_empty() || !ok_underscores {
        return Err("parse error".into());
    }
    let v = u64::from_str_radix(&clean, radix).map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => "value out of range".to_string(),
        _ => "parse error".to_string(),
    })?;
    if neg {
        0i64.checked_sub_unsigned(v)
            .ok_or_else(|| "value out of range".into())
    } else {
        i64::try_from(v).map_err(|_| "value out of range".into())
    }
}

/// The flags as given: the last value of each (all values of a list flag), and which were set
/// on the command line (Go's `FlagSet.Visit`).
#[derive(Debug, Default)]
struct Given {
    values: HashMap<&'static str, Vec<String>>,
}

impl Given {
    /// Go's `FlagSet.Set`: checks the value for the flag's kind, then records it.
    fn set(&mut self, f: &'static Flag, value: &str) -> Result<(), String> {
        match f.kind {
            Kind::Bool => {
                parse_bool(value).ok_or_else(|| "parse error".to_string())?;
            }
            Kind::Int => {
                parse_go_int(value)?;
            }
            Kind::Level => {
                value
                    .parse::<i32>()
                    .map_err(|e| format!("strconv.ParseInt: {e}"))?;
            }
            Kind::Str | Kind::List => {}
        }
        let slot = self.values.entry(f.name).or_default();
        if f.kind != Kind::List {
            slot.clear();
        }
        slot.push(value.to_string());
        Ok(())
    }

    fn last(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn str_or_default(&self, name: &'static str) -> String {
        self.last(name).map_or_else(
            || lookup(name).map_or("", |f| f.default).to_string(),
            str::to_string,
        )
    }

    fn bool(&self, name: &'static str) -> bool {
        parse_bool(&self.str_or_default(name)).unwrap_or(false)
    }

    fn int(&self, name: &'static str) -> Option<i64> {
        let s = self.str_or_default(name);
        if s.is_empty() {
            None
        } else {
            parse_go_int(&s).ok()
        }
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// `-h`/`-help`/`--help`: print [`usage`] and exit 0.
    Help,
    /// `--version`: print the version and exit 0.
    Version,
    /// Run the daemon.
    Run(Box<Config>),
}

/// Where Node objects come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Kube {
        kubeconfig: Option<PathBuf>,
        api_url: Option<String>,
    },
    NodesFile(PathBuf),
    /// Flannel's etcd subnet manager (flanneld without `--kube-subnet-mgr`).
    Etcd {
        etcd: fdb_sync::etcd::EtcdConfig,
        /// The etcd lease's TTL: Flannel's fixed 24 h, unless the test-only variable
        /// `OVERLAYD_TEST_ETCD_LEASE_TTL_SECS` shortens it (renewal tests; not a flag, as
        /// flanneld has none).
        lease_ttl: Duration,
    },
}

/// The test-only variable that shortens the etcd lease TTL (see [`Mode::Etcd`]).
pub const TEST_LEASE_TTL_ENV: &str = "OVERLAYD_TEST_ETCD_LEASE_TTL_SECS";

/// The node name as flanneld finds it (pkg/subnet/kube/kube.go NewSubnetManager).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeName {
    /// `--node-name` or `NODE_NAME`.
    Given(String),
    /// `POD_NAME`/`POD_NAMESPACE`: the pod's `spec.nodeName` (needs `pods get`).
    FromPod { namespace: String, name: String },
}

/// Everything the command line and the environment decide, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_name: NodeName,
    pub mode: Mode,
    /// Annotation key prefix as Flannel builds it (ends in `/` or `-`), e.g. `flannel.alpha.coreos.com/`.
    pub annotation_prefix: String,
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub iface_can_reach: Option<IpAddr>,
    /// IPv4, or (an IPv6-only cluster, as flanneld) an IPv6 address.
    pub public_ip: Option<IpAddr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub subnet_file: PathBuf,
    pub net_config_path: PathBuf,
    /// The extra `/healthz` listener (`--healthz-ip`:`--healthz-port`), when the port is > 0.
    pub healthz_addr: Option<SocketAddr>,
    pub ip_masq: bool,
    pub ip_masq_random_fully: bool,
    pub iptables_forward_rules: bool,
    pub iptables_resync: Duration,
    pub subnet_lease_renew_margin: Duration,
    pub set_node_network_unavailable: bool,
    pub ip_blackhole_route: bool,
    pub device: String,
    pub queues: Option<usize>,
    /// `--busy-poll-us`, or `--latency-mode`'s budget, or the default.
    pub busy_poll: Duration,
    pub http_addr: SocketAddr,
    pub allow_any_sender: bool,
    pub allow_foreign_inner_source: bool,
    pub allow_link_local_vtep: bool,
    /// `--handover-socket`; `None` = the per-network-namespace default.
    pub handover_socket: Option<PathBuf>,
    pub cleanup_on_exit: bool,
    /// klog `-v`.
    pub verbosity: i32,
    /// Accepted flags that change nothing here, each with why; the caller logs them.
    pub warnings: Vec<String>,
}

impl Config {
    /// The tracing filter `-v` maps to: 0-3 info, 4-5 debug, 6 and more trace (klog's V(4)
    /// is Flannel's debug detail, V(6) and up its request-level trace).
    #[must_use]
    pub fn log_level(&self) -> &'static str {
        match self.verbosity {
            i32::MIN..=3 => "info",
            4..=5 => "debug",
            _ => "trace",
        }
    }
}

/// Parses `args` (without the program name) as flanneld does, then the `FLANNELD_*` variables
/// and the node-name variables from `env`.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Command, CliError> {
    let mut given = Given::default();
    let mut i = 0;
    while i < args.len() {
        let s = &args[i];
        i += 1;
        // Go's FlagSet.parseOne.
        if s.len() < 2 || !s.starts_with('-') {
            return Err(CliError::Positional(s.clone()));
        }
        let mut name = &s[1..];
        if let Some(rest) = name.strip_prefix('-') {
            if rest.is_empty() {
                // "--" ends the flags.
                if let Some(extra) = args.get(i) {
                    return Err(CliError::Positional(extra.clone()));
                }
                break;
            }
            name = rest;
        }
        if name.is_empty() || name.starts_with('-') || name.starts_with('=') {
            return Err(CliError::Syntax(s.clone()));
        }
        let (name, value) = match name[1..].find('=') {
            Some(at) => (&name[..=at], Some(&name[at + 2..])),
            None => (name, None),
        };
        let Some(flag) = lookup(name) else {
            if name == "help" || name == "h" {
                return Ok(Command::Help);
            }
            return Err(CliError::Unknown(name.to_string()));
        };
        let value = match (flag.kind, value) {
            (_, Some(v)) => v.to_string(),
            (Kind::Bool, None) => "true".to_string(),
            (_, None) => {
                let v = args.get(i).ok_or(CliError::NeedsValue(flag.name))?;
                i += 1;
                v.clone()
            }
        };
        given.set(flag, &value).map_err(|reason| CliError::Value {
            flag: flag.name,
            value,
            reason,
        })?;
    }
    // flanneld checks --version before it reads the environment (main.go main()).
    if given.bool("version") {
        return Ok(Command::Version);
    }
    let on_command_line: HashSet<&str> = given.values.keys().copied().collect();
    let mut env_errors = Vec::new();
    for f in FLAGS.iter().filter(|f| f.flanneld) {
        if on_command_line.contains(f.name) {
            continue;
        }
        let var = format!(
            "FLANNELD_{}",
            f.name.replace(['-', '.'], "_").to_uppercase()
        );
        if let Some(value) = env(&var).filter(|v| !v.is_empty()) {
            // flanneld logs a bad value and runs on with the flag's default (main.go:223-226).
            if let Err(reason) = given.set(f, &value) {
                env_errors.push(format!(
                    "{}; ignored as flanneld ignores it: -{} keeps its default",
                    CliError::Env { var, value, reason },
                    f.name
                ));
            }
        }
    }
    build(&given, env).map(|mut c| {
        c.warnings.extend(env_errors);
        Command::Run(Box::new(c))
    })
}

/// The host name, for logs and `/status` in etcd mode (leases carry no node name).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `--etcd-*` as flanneld reads them (main.go newSubnetManager: endpoints split on `,`).
fn etcd_config(given: &Given) -> Result<fdb_sync::etcd::EtcdConfig, CliError> {
    let text = given.str_or_default("etcd-endpoints");
    let endpoints: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect();
    if endpoints.is_empty() {
        return Err(bad(
            "etcd-endpoints",
            &text,
            "no endpoint: give URLs like http://10.0.0.1:2379,http://10.0.0.2:2379",
        ));
    }
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(bad(
                "etcd-endpoints",
                e,
                "an endpoint is a URL starting with http:// or https:// (e.g. http://10.0.0.1:2379)",
            ));
        }
    }
    let prefix = given.str_or_default("etcd-prefix");
    if !prefix.starts_with('/') {
        return Err(bad(
            "etcd-prefix",
            &prefix,
            "must start with '/' (e.g. /coreos.com/network)",
        ));
    }
    let certfile = opt_str(given, "etcd-certfile").map(PathBuf::from);
    let keyfile = opt_str(given, "etcd-keyfile").map(PathBuf::from);
    if certfile.is_some() != keyfile.is_some() {
        let (flag, v) = if certfile.is_some() {
            ("etcd-certfile", given.str_or_default("etcd-certfile"))
        } else {
            ("etcd-keyfile", given.str_or_default("etcd-keyfile"))
        };
        return Err(bad(
            flag,
            &v,
            "a client certificate needs its key: pass --etcd-certfile and --etcd-keyfile together",
        ));
    }
    Ok(fdb_sync::etcd::EtcdConfig {
        endpoints,
        prefix,
        cafile: opt_str(given, "etcd-cafile").map(PathBuf::from),
        certfile,
        keyfile,
        username: opt_str(given, "etcd-username"),
        password: opt_str(given, "etcd-password"),
    })
}

fn refuse(msg: impl Into<String>) -> CliError {
    CliError::Refused(msg.into())
}

fn bad(flag: &'static str, value: &str, reason: impl Into<String>) -> CliError {
    CliError::Value {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn opt_str(given: &Given, name: &'static str) -> Option<String> {
    Some(given.str_or_default(name)).filter(|s| !s.is_empty())
}

/// Flannel's annotation prefix rule (pkg/subnet/kube/annotations.go newAnnotations).
pub fn annotation_prefix(prefix: &str) -> Result<String, String> {
    let mut p = prefix.to_string();
    match p.matches('/').count() {
        0 => p.push('/'),
        1 => {}
        _ => return Err("prefix can contain at most single slash".into()),
    }
    if !p.ends_with('/') && !p.ends_with('-') {
        p.push('-');
    }
    // Unanchored at the start, as Flannel's regexp.MatchString.
    let re = regex::Regex::new(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
        .expect("valid regex");
    if re.is_match(&p) {
        Ok(p)
    } else {
        Err("prefix must be in a format: fqdn/[0-9a-z-_]*".into())
    }
}

#[allow(clippy::too_many_lines)]
fn build(given: &Given, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, CliError> {
    let mut warnings = Vec::new();
    let kube = given.bool("kube-subnet-mgr");
    let nodes_file = opt_str(given, "nodes-file").map(PathBuf::from);
    let kubeconfig = opt_str(given, "kubeconfig-file").map(PathBuf::from);
    let api_url = opt_str(given, "kube-api-url");
    let etcd_given: Vec<&str> = FLAGS
        .iter()
        .filter(|f| f.name.starts_with("etcd-") && given.values.contains_key(f.name))
        .map(|f| f.name)
        .collect();
    let mode = match (kube, nodes_file) {
        (true, Some(_)) => {
            return Err(refuse(
                "--kube-subnet-mgr and --nodes-file both given: pass one of them",
            ))
        }
        (true, None) => Mode::Kube {
            kubeconfig,
            api_url,
        },
        (false, Some(path)) => Mode::NodesFile(path),
        (false, None) => Mode::Etcd {
            etcd: etcd_config(given)?,
            lease_ttl: match env(TEST_LEASE_TTL_ENV).filter(|v| !v.is_empty()) {
                None => fdb_sync::etcd::SUBNET_TTL,
                Some(v) => match v.parse::<u64>() {
                    Ok(s) if s >= 2 => Duration::from_secs(s),
                    _ => {
                        return Err(refuse(format!(
                            "{TEST_LEASE_TTL_ENV}={v:?} is not a number of seconds >= 2 (a test-only setting: unset it to get Flannel's 24 h)"
                        )))
                    }
                },
            },
        },
    };
    let etcd_mode = matches!(mode, Mode::Etcd { .. });
    if !matches!(mode, Mode::Kube { .. }) {
        for name in ["kubeconfig-file", "kube-api-url", "kube-annotation-prefix"] {
            if given.values.contains_key(name) {
                warnings.push(format!(
                    "--{name} is used with --kube-subnet-mgr only; ignored with {}",
                    if etcd_mode { "etcd" } else { "--nodes-file" }
                ));
            }
        }
    }
    if !etcd_given.is_empty() && !etcd_mode {
        warnings.push(format!(
            "--{} ignored: etcd flags are used only in etcd mode (without --kube-subnet-mgr), as in flanneld",
            etcd_given.join(", --")
        ));
    }
    let prefix_text = given.str_or_default("kube-annotation-prefix");
    let annotation_prefix = annotation_prefix(&prefix_text)
        .map_err(|e| bad("kube-annotation-prefix", &prefix_text, e))?;

    // flanneld: NODE_NAME, else POD_NAME + POD_NAMESPACE. --node-name is overlayd's own.
    let node_name = match opt_str(given, "node-name").or_else(|| env("NODE_NAME").filter(|s| !s.is_empty())) {
        Some(n) => NodeName::Given(n),
        None => match (
            env("POD_NAME").filter(|s| !s.is_empty()),
            env("POD_NAMESPACE").filter(|s| !s.is_empty()),
        ) {
            (Some(name), Some(namespace)) if matches!(mode, Mode::Kube { .. }) => {
                NodeName::FromPod { namespace, name }
            }
            // flanneld's etcd mode needs no node name: leases are keyed by subnet.
            _ if etcd_mode => NodeName::Given(host_name()),
            _ => {
                return Err(refuse(
                    "no node name: pass --node-name NAME or set NODE_NAME (with --kube-subnet-mgr, POD_NAME and POD_NAMESPACE also work, as in flanneld)",
                ))
            }
        },
    };

    let iface_regex = given.list("iface-regex");
    for r in &iface_regex {
        regex::Regex::new(r).map_err(|e| bad("iface-regex", r, e.to_string()))?;
    }
    // Either family, as flanneld's: which one fits is decided with net-conf.json (see
    // control::underlay: an IPv6 address needs EnableIPv4 false).
    let iface_can_reach = opt_str(given, "iface-can-reach")
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|e| bad("iface-can-reach", &s, format!("not an IP address: {e}")))
        })
        .transpose()?;
    let public_ip = opt_str(given, "public-ip")
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|e| bad("public-ip", &s, format!("not an IP address: {e}")))
        })
        .transpose()?;
    let public_ipv6 = opt_str(given, "public-ipv6")
        .map(|s| {
            s.parse::<Ipv6Addr>()
                .map_err(|e| bad("public-ipv6", &s, format!("not an IPv6 address: {e}")))
        })
        .transpose()?;

    let margin = given.int("subnet-lease-renew-margin").unwrap_or(60);
    // main.go: `>= 24*60 || <= 0` is fatal.
    if !(1..24 * 60).contains(&margin) {
        return Err(bad(
            "subnet-lease-renew-margin",
            &margin.to_string(),
            "out of acceptable range 1..=1439 (minutes)",
        ));
    }
    let resync = given.int("iptables-resync").unwrap_or(5);
    if resync <= 0 {
        return Err(bad(
            "iptables-resync",
            &resync.to_string(),
            "must be at least 1 (seconds)",
        ));
    }
    let healthz_ip_text = given.str_or_default("healthz-ip");
    let healthz_ip: IpAddr = healthz_ip_text.parse().map_err(|e| {
        bad(
            "healthz-ip",
            &healthz_ip_text,
            format!("not an IP address: {e}"),
        )
    })?;
    let healthz_port = given.int("healthz-port").unwrap_or(0);
    // main.go serves healthz only for a port > 0.
    let healthz_addr = match healthz_port {
        i64::MIN..=0 => None,
        p => Some(SocketAddr::new(
            healthz_ip,
            u16::try_from(p)
                .map_err(|_| bad("healthz-port", &p.to_string(), "out of range 0..=65535"))?,
        )),
    };
    for name in ["vmodule", "log_backtrace_at"] {
        if let Some(v) = opt_str(given, name) {
            warnings.push(format!(
                "-{name}={v} accepted and ignored: overlayd logs through tracing (use -v or RUST_LOG)"
            ));
        }
    }
    let queues = match given.int("queues") {
        None => None,
        Some(q) if (1..=256).contains(&q) => usize::try_from(q).ok(),
        Some(q) => return Err(bad("queues", &q.to_string(), "out of range 1..=256")),
    };
    let busy_poll_us = match given.int("busy-poll-us") {
        Some(us) if (0..=MAX_BUSY_POLL_US).contains(&us) => us.unsigned_abs(),
        Some(us) => {
            return Err(bad(
                "busy-poll-us",
                &us.to_string(),
                format!("out of range 0..={MAX_BUSY_POLL_US} (microseconds)"),
            ))
        }
        None if given.bool("latency-mode") => LATENCY_MODE_BUSY_POLL_US,
        None => DEFAULT_BUSY_POLL_US,
    };
    let http_text = given.str_or_default("http-addr");
    let http_addr: SocketAddr = http_text
        .parse()
        .map_err(|e| bad("http-addr", &http_text, format!("not ADDRESS:PORT: {e}")))?;
    let verbosity = given.last("v").and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Config {
        node_name,
        mode,
        annotation_prefix,
        iface: given.list("iface"),
        iface_regex,
        iface_can_reach,
        public_ip,
        public_ipv6,
        subnet_file: given.str_or_default("subnet-file").into(),
        net_config_path: given.str_or_default("net-config-path").into(),
        healthz_addr,
        ip_masq: given.bool("ip-masq"),
        ip_masq_random_fully: !given.bool("ip-masq-fully-random-disable"),
        iptables_forward_rules: given.bool("iptables-forward-rules"),
        iptables_resync: Duration::from_secs(resync.unsigned_abs()),
        subnet_lease_renew_margin: Duration::from_secs(margin.unsigned_abs() * 60),
        set_node_network_unavailable: given.bool("set-node-network-unavailable"),
        ip_blackhole_route: given.bool("ip-blackhole-route"),
        device: given.str_or_default("device"),
        queues,
        busy_poll: Duration::from_micros(busy_poll_us),
        http_addr,
        allow_any_sender: given.bool("allow-any-sender"),
        allow_foreign_inner_source: given.bool("allow-foreign-inner-source"),
        allow_link_local_vtep: given.bool("allow-link-local-vtep"),
        handover_socket: opt_str(given, "handover-socket").map(PathBuf::from),
        cleanup_on_exit: given.bool("cleanup-on-exit"),
        verbosity,
        warnings,
    })
}

/// `--help` text: every flag with its default, flanneld's first.
#[must_use]
pub fn usage() -> String {
    let mut s = String::from(
        "Usage: overlayd [flags]      (Go flag syntax: -flag, --flag, -flag=value, -flag value)\n       overlayd status [--json] [--http-addr ADDR]\n       overlayd cleanup [--device NAME] [--handover-socket PATH] [--force]\n\nflanneld's flags (also from FLANNELD_<NAME> environment variables):\n",
    );
    let mut own = false;
    for f in FLAGS {
        if !f.flanneld && !own {
            s.push_str("\noverlayd's own flags:\n");
            own = true;
        }
        let arg = match f.kind {
            Kind::Bool => "",
            Kind::Int | Kind::Level => " int",
            Kind::Str => " string",
            Kind::List => " value",
        };
        s.push_str(&format!("  --{}{arg}\n        {}", f.name, f.help));
        if !f.default.is_empty() {
            s.push_str(&format!(" (default {})", f.default));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests;
