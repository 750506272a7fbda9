//! Masquerade (`--ip-masq`) and FORWARD accept (`--iptables-forward-rules`) rules, as flanneld
//! installs them (Flannel's `pkg/trafficmngr/{iptables,nftables}`), kept in place by a
//! checker thread and removable in one call (`remove_all`, for `overlayd cleanup`).
//!
//! This module owns the nftables tables `ip overlayd-ipv4` and `ip6 overlayd-ipv6` and the
//! iptables/ip6tables chains `OVERLAYD-POSTRTG` (nat) and `OVERLAYD-FWD` (filter) with their
//! jumps from POSTROUTING and FORWARD. It never touches a rule it did not write, and it never
//! runs on the packet path.
//!
//! **Families.** With EnableIPv6 the same rules are installed for the IPv6 Network and podCIDR
//! (Flannel's `masqIP6Rules` and IPv6 forward rules: the same shape, multicast `ff00::/8`,
//! ip6tables, nftables table `ip6 flannel-ipv6`); every rendering and tool call below takes a
//! [`Family`], so IPv4 and IPv6 share one code path.
//!
//! **Backends, and why.** `EnableNFTables` in net-conf.json picks nftables, as it does in
//! Flannel (`main.go` `newTrafficManager(config.EnableNFTables)`); otherwise iptables, Flannel's
//! default. When the chosen tool is not installed, the other one is used and the log says so.
//! Both are driven through their command-line tools, as Flannel does (knftables feeds `nft`
//! text; go-iptables runs `iptables`/`iptables-restore`): `nft -f -` applies the whole table in
//! one atomic transaction, and `iptables-restore --noflush` rewrites our chains atomically
//! without touching anyone else's. The `nftables` crate would also shell out to `nft` (in JSON)
//! and add a schema of types without adding a capability; nftables over raw netlink needs
//! libnftnl (C) or rustables (GPL-3, which does not fit Apache-2.0). `iptables` means whatever
//! the host's `iptables` alternative is (nf_tables or legacy), the one Docker and kube-proxy use.
//!
//! **The rules** (Network N, this node's podCIDR P), in this order:
//! `mark 0x4000/0x4000 RETURN` (kube-proxy's masquerade mark: no double NAT), `-s P -d N RETURN`,
//! `-s N -d P RETURN` (pod to pod is never NATed), `! -s N -d P RETURN` (outside to our pods is not
//! NATed), `-s N ! -d 224.0.0.0/4 MASQUERADE` (pods to the outside: the node's address; multicast
//! left alone), `! -s N -d N MASQUERADE` (host to remote pods), MASQUERADE `--random-fully`
//! unless `--ip-masq-fully-random-disable` or the tool lacks it. Flannel's iptables rules, used
//! for both backends: Flannel's nftables variant writes rule 4 as `saddr != P daddr N`, which makes
//! its rule 6 dead code; the iptables form is the one its comment describes. Likewise the mark
//! is matched under its mask in both (`meta mark & 0x4000 == 0x4000`), where Flannel's nftables
//! variant compares the whole mark (`meta mark 0x4000`, marked TODO there).
//! FORWARD: `-s N ACCEPT`, `-d N ACCEPT`. An nftables `accept` does not overrule a `drop` in
//! another base chain (iptables' FORWARD with policy DROP, as Docker sets it), so in nftables
//! mode the FORWARD accept also goes into iptables' FORWARD when `iptables` is installed.
//!
//! **Keeping them.** What a check reads (`nft list table`, our lines of `iptables-save`) right
//! after we applied the rules is remembered; a check that reads anything else applies them again
//! and counts a restore. Checks run on the control loop's 2 s backstop (`Handle::check_soon`),
//! every `--iptables-resync`, and on an nf_tables change notification (nft, iptables-nft), at
//! most two a second. Applying is idempotent: twice gives the same rules, one jump each.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

/// The nftables table overlayd owns for IPv4 (Flannel's is `flannel-ipv4`).
pub const NFT_TABLE: &str = "overlayd-ipv4";
/// The nftables table overlayd owns for IPv6 (Flannel's is `flannel-ipv6`).
pub const NFT_TABLE_V6: &str = "overlayd-ipv6";
/// The iptables nat chain for masquerade (Flannel's is `FLANNEL-POSTRTG`).
pub const POSTRTG_CHAIN: &str = "OVERLAYD-POSTRTG";
/// The iptables filter chain for FORWARD accepts (Flannel's is `FLANNEL-FWD`).
pub const FWD_CHAIN: &str = "OVERLAYD-FWD";
const MASQ_COMMENT: &str = "overlayd masq";
const FWD_COMMENT: &str = "overlayd forward";
/// kube-proxy marks packets it will masquerade itself (Flannel's `KubeProxyMark`).
const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

/// An address family: which tools, table and multicast range its rules use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The nftables family (`ip`, `ip6`).
    #[must_use]
    pub fn nft_family(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// Our nftables table of this family.
    #[must_use]
    pub fn nft_table(self) -> &'static str {
        match self {
            Family::V4 => NFT_TABLE,
            Family::V6 => NFT_TABLE_V6,
        }
    }

    /// Multicast, never masqueraded (Flannel: `224.0.0.0/4`, `ff00::/8`).
    #[must_use]
    pub fn multicast(self) -> &'static str {
        match self {
            Family::V4 => "224.0.0.0/4",
            Family::V6 => "ff00::/8",
        }
    }

    /// The iptables tool name of this family (`iptables`, `ip6tables`).
    #[must_use]
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}
/// Checks are at least this far apart, however many notifications arrive.
const MIN_CHECK_GAP: Duration = Duration::from_millis(500);
/// How long a command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error("neither nft nor iptables-restore/iptables-save is installed: install the nftables or iptables package, or run without --ip-masq and with --iptables-forward-rules=false")]
    NoTool,
    #[error("EnableIPv6 needs the IPv6 rules too, but ip6tables-restore/ip6tables-save is not installed (iptables mode): install the iptables package's ip6tables, or install nftables (nft) and set EnableNFTables")]
    NoIp6tables,
    #[error("this host's iptables is iptables-legacy, which needs CAP_NET_RAW, and this overlayd runs without it (the container or systemd unit does not grant it): install nftables (nft) and set EnableNFTables, or switch iptables to iptables-nft (update-alternatives --set iptables /usr/sbin/iptables-nft)")]
    LegacyNeedsNetRaw,
    #[error("cannot run {cmd}: {source}; is it installed and executable?")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{cmd} did not finish within {secs} s; another process may hold the xtables lock")]
    Timeout { cmd: String, secs: u64 },
}

/// What to install, fixed for the daemon's lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The IPv4 Network and podCIDR when EnableIPv4 is on (`None`: an IPv6-only cluster, no
    /// IPv4 rules and no IPv4 nftables table).
    pub v4: Option<RulesV4>,
    /// `--ip-masq`.
    pub masquerade: bool,
    /// Not `--ip-masq-fully-random-disable`.
    pub random_fully: bool,
    /// `--iptables-forward-rules`.
    pub forward: bool,
    /// The same rules for IPv6 when EnableIPv6 is on.
    pub v6: Option<RulesV6>,
}

/// The IPv4 Network and podCIDR of [`Rules`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RulesV4 {
    /// The cluster Network (net-conf `Network`).
    pub network: Ipv4Network,
    /// This node's podCIDR.
    pub pod_cidr: Ipv4Network,
}

/// The IPv6 Network and podCIDR of [`Rules`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RulesV6 {
    /// net-conf `IPv6Network`.
    pub network: Ipv6Network,
    /// This node's IPv6 podCIDR.
    pub pod_cidr: Ipv6Network,
}

impl Rules {
    /// The Network and podCIDR of `family`, as text; `None` for a family that is off.
    #[must_use]
    pub fn nets(&self, family: Family) -> Option<(String, String)> {
        match family {
            Family::V4 => self
                .v4
                .map(|v| (v.network.to_string(), v.pod_cidr.to_string())),
            Family::V6 => self
                .v6
                .map(|v| (v.network.to_string(), v.pod_cidr.to_string())),
        }
    }
}

/// Which tool holds the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Nftables,
    Iptables,
}

// ---- rendering (pure) ----

/// Flannel's masquerade rules of `family` as iptables rule specs for `OVERLAYD-POSTRTG`
/// (empty for IPv6 when it is off).
#[must_use]
pub fn iptables_masq_rules(r: &Rules, family: Family, random_fully: bool) -> Vec<String> {
    let Some((n, p)) = r.nets(family) else {
        return Vec::new();
    };
    let mc = family.multicast();
    let c = format!("-m comment --comment \"{MASQ_COMMENT}\"");
    let masq = if random_fully {
        "-j MASQUERADE --random-fully"
    } else {
        "-j MASQUERADE"
    };
    vec![
        format!("-m mark --mark {KUBE_PROXY_MARK} {c} -j RETURN"),
        format!("-s {p} -d {n} {c} -j RETURN"),
        format!("-s {n} -d {p} {c} -j RETURN"),
        format!("! -s {n} -d {p} {c} -j RETURN"),
        format!("-s {n} ! -d {mc} {c} {masq}"),
        format!("! -s {n} -d {n} {c} {masq}"),
    ]
}

/// Flannel's FORWARD accept rules of `family` as iptables rule specs for `OVERLAYD-FWD`.
#[must_use]
pub fn iptables_fwd_rules(r: &Rules, family: Family) -> Vec<String> {
    let Some((n, _)) = r.nets(family) else {
        return Vec::new();
    };
    let c = format!("-m comment --comment \"{FWD_COMMENT}\"");
    vec![
        format!("-s {n} {c} -j ACCEPT"),
        format!("-d {n} {c} -j ACCEPT"),
    ]
}

fn masq_jump() -> String {
    format!("-m comment --comment \"{MASQ_COMMENT}\" -j {POSTRTG_CHAIN}")
}

fn fwd_jump() -> String {
    format!("-m comment --comment \"{FWD_COMMENT}\" -j {FWD_CHAIN}")
}

/// The `nft -f` script that replaces our tables with exactly `r`'s rules, both families in
/// one transaction (each table's first line makes its delete succeed when it does not exist
/// yet). A family that is off has its table only deleted, and only when `exists` says it is
/// there (indexed by `Family as usize`: a leftover of a run with that family on): an
/// IPv4-only node never names `ip6` in the transaction, which a kernel without nf_tables
/// IPv6 would refuse whole, and an IPv6-only node never creates an `ip` table.
#[must_use]
pub fn nft_script(r: &Rules, random_fully: bool, exists: [bool; 2]) -> String {
    let mut s = String::new();
    for family in Family::ALL {
        if r.nets(family).is_none() && !exists[family as usize] {
            continue;
        }
        nft_table_script(&mut s, r, family, random_fully);
    }
    s
}

fn nft_table_script(s: &mut String, r: &Rules, family: Family, random_fully: bool) {
    let (f, table, mc) = (family.nft_family(), family.nft_table(), family.multicast());
    let _ = writeln!(s, "table {f} {table} {{}}\ndelete table {f} {table}");
    let Some((n, p)) = r.nets(family) else {
        return;
    };
    if !r.masquerade && !r.forward {
        return;
    }
    let masq = if random_fully {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let _ = writeln!(s, "table {f} {table} {{");
    let _ = writeln!(s, "  comment \"rules for overlayd\"");
    if r.masquerade {
        let _ = writeln!(
            s,
            "  chain postrtg {{\n    comment \"{MASQ_COMMENT}\"\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             meta mark & 0x4000 == 0x4000 return\n    \
             {f} saddr {p} {f} daddr {n} return\n    \
             {f} saddr {n} {f} daddr {p} return\n    \
             {f} saddr != {n} {f} daddr {p} return\n    \
             {f} saddr {n} {f} daddr != {mc} {masq}\n    \
             {f} saddr != {n} {f} daddr {n} {masq}\n  }}"
        );
    }
    if r.forward {
        let _ = writeln!(
            s,
            "  chain forward {{\n    comment \"{FWD_COMMENT}\"\n    type filter hook forward priority filter; policy accept;\n    \
             {f} saddr {n} accept\n    \
             {f} daddr {n} accept\n  }}"
        );
    }
    s.push_str("}\n");
}

/// The lines of an `iptables-save` table that are ours: our chains' declarations and rules,
/// and jumps to them. Counters are cut off the declarations. This is what a check compares.
#[must_use]
pub fn our_lines(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| {
            l.starts_with(&format!(":{POSTRTG_CHAIN} "))
                || l.starts_with(&format!(":{FWD_CHAIN} "))
                || l.starts_with(&format!("-A {POSTRTG_CHAIN} "))
                || l.starts_with(&format!("-A {FWD_CHAIN} "))
                || l.ends_with(&format!("-j {POSTRTG_CHAIN}"))
                || l.ends_with(&format!("-j {FWD_CHAIN}"))
        })
        .map(|l| match l.split_once(" [") {
            Some((head, _)) if l.starts_with(':') => head.to_string(),
            _ => l.to_string(),
        })
        .collect()
}

/// One table's part of an `iptables-restore --noflush` input that makes `chain` hold exactly
/// `want` (and one jump from `parent`), or removes chain and jumps when `want` is `None`.
/// `save` is the table's current `iptables-save` text: only what exists is deleted.
fn restore_table(
    out: &mut String,
    table: &str,
    save: &str,
    parent: &str,
    chain: &str,
    jump: &str,
    want: Option<&[String]>,
) {
    let chain_exists = save.lines().any(|l| l.starts_with(&format!(":{chain} ")));
    let jumps: Vec<&str> = save
        .lines()
        .filter(|l| l.starts_with(&format!("-A {parent} ")) && l.ends_with(&format!("-j {chain}")))
        .collect();
    let mut body = String::new();
    match want {
        Some(rules) => {
            // Declaring a chain in a --noflush restore creates it, or flushes it when it exists.
            let _ = writeln!(body, ":{chain} - [0:0]");
            let exact = format!("-A {parent} {jump}");
            let mut kept = false;
            for j in &jumps {
                if *j == exact && !kept {
                    kept = true;
                } else {
                    let _ = writeln!(body, "-D{}", &j[2..]);
                }
            }
            if !kept {
                let _ = writeln!(body, "{exact}");
            }
            for r in rules {
                let _ = writeln!(body, "-A {chain} {r}");
            }
        }
        None => {
            for j in &jumps {
                let _ = writeln!(body, "-D{}", &j[2..]);
            }
            if chain_exists {
                let _ = writeln!(body, "-F {chain}\n-X {chain}");
            }
        }
    }
    if !body.is_empty() {
        let _ = write!(out, "*{table}\n{body}COMMIT\n");
    }
}

/// The whole `iptables-restore --noflush` input for the wanted masquerade and forward rules.
#[must_use]
pub fn iptables_restore_input(
    save_nat: &str,
    save_filter: &str,
    masq: Option<&[String]>,
    fwd: Option<&[String]>,
) -> String {
    let mut out = String::new();
    restore_table(
        &mut out,
        "nat",
        save_nat,
        "POSTROUTING",
        POSTRTG_CHAIN,
        &masq_jump(),
        masq,
    );
    restore_table(
        &mut out,
        "filter",
        save_filter,
        "FORWARD",
        FWD_CHAIN,
        &fwd_jump(),
        fwd,
    );
    out
}

// ---- the tools (I/O) ----

/// Finds `name` in `$PATH` (and the sbin directories, which a non-login PATH may miss).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd args` with `stdin`, bounded by `COMMAND_TIMEOUT`; returns stdout.
fn run(cmd: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, NetfilterError> {
    let label = format!("{} {}", cmd.display(), args.join(" "));
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetfilterError::Spawn {
            cmd: label.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe; its exit status says why.
        let _ = pipe.write_all(text.as_bytes());
    }
    // Read both pipes on threads so a full pipe never blocks the tool while we wait.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = std::io::Read::read_to_end(p, &mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = std::io::Read::read_to_end(p, &mut v);
        }
        v
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > COMMAND_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NetfilterError::Timeout {
                    cmd: label,
                    secs: COMMAND_TIMEOUT.as_secs(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(source) => {
                return Err(NetfilterError::Spawn { cmd: label, source });
            }
        }
    };
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    if !status.success() {
        return Err(NetfilterError::Failed {
            cmd: label,
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&err).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The iptables tools of this host.
#[derive(Debug, Clone)]
struct Iptables {
    save: PathBuf,
    restore: PathBuf,
    /// `nf_tables` or `legacy`, from `iptables --version`.
    variant: String,
    random_fully: bool,
}

impl Iptables {
    /// The tools of `family` (`iptables*` or `ip6tables*`).
    fn find(family: Family) -> Option<Iptables> {
        let tool = family.iptables();
        let save = find_tool(&format!("{tool}-save"))?;
        let restore = find_tool(&format!("{tool}-restore"))?;
        let version = find_tool(tool)
            .and_then(|i| run(&i, &["--version"], None).ok())
            .unwrap_or_default();
        // "iptables v1.8.9 (nf_tables)"; --random-fully needs 1.6.2 (go-iptables' HasRandomFully).
        let variant = if version.contains("nf_tables") {
            "nf_tables"
        } else {
            "legacy"
        };
        let v: Vec<u32> = version
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .trim_start_matches('v')
            .split('.')
            .filter_map(|x| x.parse().ok())
            .collect();
        let random_fully = v.len() >= 3 && (v[0], v[1], v[2]) >= (1, 6, 2);
        Some(Iptables {
            save,
            restore,
            variant: variant.to_string(),
            random_fully,
        })
    }

    fn save(&self, table: &str) -> Result<String, NetfilterError> {
        // A table the kernel has never seen may be reported as an error by legacy iptables:
        // it holds nothing of ours then.
        match run(&self.save, &["-t", table], None) {
            Ok(s) => Ok(s),
            Err(NetfilterError::Failed { stderr, .. })
                if stderr.contains("does not exist") || stderr.contains("Table does not exist") =>
            {
                Ok(String::new())
            }
            Err(e) => Err(e),
        }
    }

    fn restore(&self, input: &str) -> Result<(), NetfilterError> {
        if input.is_empty() {
            return Ok(());
        }
        run(&self.restore, &["-w", "5", "--noflush"], Some(input)).map(|_| ())
    }

    /// Our lines of the nat and filter tables.
    fn ours(&self) -> Result<Vec<String>, NetfilterError> {
        let mut v = our_lines(&self.save("nat")?);
        v.extend(our_lines(&self.save("filter")?));
        Ok(v)
    }

    fn apply(&self, masq: Option<&[String]>, fwd: Option<&[String]>) -> Result<(), NetfilterError> {
        let input = iptables_restore_input(&self.save("nat")?, &self.save("filter")?, masq, fwd);
        self.restore(&input)
    }
}

/// Our nftables table of `family` as `nft list` prints it; `None` when it does not exist.
/// An IPv6 listing that fails otherwise counts as absent too: a kernel without nf_tables
/// IPv6 holds no IPv6 table of ours (as `remove_all` treats ip6tables).
fn nft_list(nft: &Path, family: Family) -> Result<Option<String>, NetfilterError> {
    match run(
        nft,
        &["list", "table", family.nft_family(), family.nft_table()],
        None,
    ) {
        Ok(s) => Ok(Some(s)),
        Err(NetfilterError::Failed { stderr, .. }) if stderr.contains("No such file") => Ok(None),
        Err(e) if family == Family::V6 => {
            tracing::debug!(error = %e, "nft cannot list IPv6 tables here; no IPv6 table of ours");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether this kernel and `nft` accept `masquerade fully-random` (Flannel's
/// `checkRandomfully`): a dry run (`nft -c`) of a throwaway table.
fn nft_random_fully(nft: &Path, family: Family) -> bool {
    let (f, lo) = match family {
        Family::V4 => ("ip", "127.0.0.1"),
        Family::V6 => ("ip6", "::1"),
    };
    let probe = format!("table {f} overlayd-probe {{\n  chain p {{\n    type nat hook postrouting priority srcnat;\n    {f} saddr != {lo} masquerade fully-random\n  }}\n}}\n");
    run(nft, &["-c", "-f", "-"], Some(&probe)).is_ok()
}

/// Installs and checks one `Rules` set with one backend.
#[derive(Debug)]
pub struct Manager {
    rules: Rules,
    backend: Backend,
    nft: Option<PathBuf>,
    iptables: Option<Iptables>,
    /// ip6tables, looked up only when the rules have an IPv6 part.
    ip6tables: Option<Iptables>,
    /// What a check reads when nothing changed since we applied (see the module doc).
    applied: Option<String>,
    /// Per family (`Family as usize`): whether its masquerade is `--random-fully`.
    random_fully: [bool; 2],
}

/// Whether masquerading gets `--random-fully` / `fully-random`: asked for, and supported by
/// the tool in use: nft (`nft_ok`, one probe for both families), or the iptables tool of
/// the family, decided per family as Flannel does (iptables.go masqRules / masqIP6Rules
/// each ask their own tool's HasRandomFully): an old ip6tables does not take it from IPv4.
fn random_fully_of(
    wanted: bool,
    backend: Backend,
    nft_ok: bool,
    family_tool: Option<&Iptables>,
) -> bool {
    wanted
        && match backend {
            Backend::Nftables => nft_ok,
            Backend::Iptables => family_tool.is_some_and(|i| i.random_fully),
        }
}

impl Manager {
    /// Picks the backend: nftables when `prefer_nftables` (net-conf `EnableNFTables`), else
    /// iptables; the other one when the chosen tool is missing.
    pub fn new(rules: Rules, prefer_nftables: bool) -> Result<Manager, NetfilterError> {
        let nft = find_tool("nft");
        // iptables is looked up in IPv6-only too: its chains of an earlier IPv4 run are removed.
        let mut iptables = Iptables::find(Family::V4);
        let mut ip6tables = rules.v6.and_then(|_| Iptables::find(Family::V6));
        // iptables-legacy talks to the kernel through a raw socket; without CAP_NET_RAW (kept by
        // `crate::privs` when the process has it, but a runtime may not grant it) every call
        // fails, so it counts as missing.
        let legacy_unusable = iptables.as_ref().is_some_and(|i| i.variant == "legacy")
            && !caps::has_cap(None, caps::CapSet::Bounding, caps::Capability::CAP_NET_RAW)
                .unwrap_or(true);
        if legacy_unusable {
            iptables = None;
            ip6tables = None;
        }
        // The iptables backend needs the tool of each family in use (checked for IPv6 below).
        let have_iptables = if rules.v4.is_some() {
            iptables.is_some()
        } else {
            ip6tables.is_some()
        };
        let backend = match (prefer_nftables, nft.is_some(), have_iptables) {
            (true, true, _) | (false, true, false) => Backend::Nftables,
            (false, _, true) | (true, false, true) => Backend::Iptables,
            (_, false, false) if legacy_unusable => return Err(NetfilterError::LegacyNeedsNetRaw),
            (_, false, false) => return Err(NetfilterError::NoTool),
        };
        if backend == Backend::Iptables && rules.v6.is_some() && ip6tables.is_none() {
            return Err(NetfilterError::NoIp6tables);
        }
        if legacy_unusable {
            tracing::warn!(
                "iptables is iptables-legacy, which needs CAP_NET_RAW that this process lacks: using nftables only; \
                 a FORWARD policy of DROP set with iptables-legacy is not overruled"
            );
        }
        if (backend == Backend::Nftables) != prefer_nftables {
            tracing::warn!(
                wanted = if prefer_nftables { "nftables" } else { "iptables" },
                using = ?backend,
                "the netfilter tool EnableNFTables selects is not installed; using the other one"
            );
        }
        // The probe's family is one in use: an IPv6-only node never names `ip`.
        let probe = if rules.v4.is_some() {
            Family::V4
        } else {
            Family::V6
        };
        let nft_ok = backend == Backend::Nftables
            && nft.as_deref().is_some_and(|n| nft_random_fully(n, probe));
        let random_fully = [
            random_fully_of(rules.random_fully, backend, nft_ok, iptables.as_ref()),
            random_fully_of(rules.random_fully, backend, nft_ok, ip6tables.as_ref()),
        ];
        for family in Family::ALL {
            let on = rules.nets(family).is_some();
            if on && rules.masquerade && rules.random_fully && !random_fully[family as usize] {
                tracing::warn!(
                    tool = if backend == Backend::Nftables {
                        "nft"
                    } else {
                        family.iptables()
                    },
                    "MASQUERADE --random-fully is not supported here; masquerading {} without it",
                    if family == Family::V4 { "IPv4" } else { "IPv6" }
                );
            }
        }
        Ok(Manager {
            rules,
            backend,
            nft,
            iptables,
            ip6tables,
            applied: None,
            random_fully,
        })
    }

    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `nftables`, `iptables (nf_tables)` or `iptables (legacy)`.
    #[must_use]
    pub fn backend_name(&self) -> String {
        match (self.backend, &self.iptables) {
            (Backend::Nftables, _) => "nftables".into(),
            (Backend::Iptables, Some(i)) => format!("iptables ({})", i.variant),
            (Backend::Iptables, None) => "iptables".into(),
        }
    }

    /// The iptables tools of `family` this manager uses.
    fn iptables_of(&self, family: Family) -> Option<&Iptables> {
        match family {
            Family::V4 => self.iptables.as_ref(),
            Family::V6 => self.ip6tables.as_ref(),
        }
    }

    /// Runs `clean`, the removal of what an earlier run left in `family`'s tables, and
    /// returns its error only when `family` is in use: for a family that is off (IPv4 in an
    /// IPv6-only cluster) the clean-up is best effort, as Flannel's, so a host whose tool for
    /// that family is broken or missing still gets the rules it needs.
    fn clean_family(
        &self,
        family: Family,
        clean: impl FnOnce() -> Result<(), NetfilterError>,
    ) -> Result<(), NetfilterError> {
        match clean() {
            Err(e) if self.rules.nets(family).is_none() => {
                tracing::warn!(family = family.iptables(), error = %e, "cannot check for rules an earlier run left in a family this node does not use; going on without it");
                Ok(())
            }
            r => r,
        }
    }

    /// What a check compares: the state of everything this manager writes.
    fn read(&self) -> Result<String, NetfilterError> {
        let mut s = String::new();
        if let Some(nft) = &self.nft {
            if self.backend == Backend::Nftables {
                for family in Family::ALL {
                    s.push_str(&nft_list(nft, family)?.unwrap_or_default());
                }
            }
        }
        // A family that is off has nothing of ours to watch (its leftovers were removed by
        // `apply`, best effort).
        for family in Family::ALL
            .into_iter()
            .filter(|f| self.rules.nets(*f).is_some())
        {
            if let Some(ipt) = self.iptables_of(family) {
                for l in ipt.ours()? {
                    s.push_str(&l);
                    s.push('\n');
                }
            }
        }
        Ok(s)
    }

    /// Installs the rules (replacing ours, touching nothing else) and removes what the other
    /// backend may hold from an earlier run, as Flannel's start-up clean-up does.
    pub fn apply(&mut self) -> Result<(), NetfilterError> {
        match self.backend {
            Backend::Nftables => {
                let nft = self.nft.as_deref().ok_or(NetfilterError::NoTool)?;
                let mut stale = [false; 2];
                for family in Family::ALL {
                    if self.rules.nets(family).is_none() {
                        self.clean_family(family, || {
                            stale[family as usize] = nft_list(nft, family)?.is_some();
                            Ok(())
                        })?;
                    }
                }
                let random_fully = self.random_fully[usize::from(self.rules.v4.is_none())];
                run(
                    nft,
                    &["-f", "-"],
                    Some(&nft_script(&self.rules, random_fully, stale)),
                )?;
                // An nftables accept does not overrule iptables' FORWARD policy DROP: the
                // FORWARD accept goes there too (module doc), per family.
                for family in Family::ALL {
                    if let Some(ipt) = self.iptables_of(family) {
                        let fwd = iptables_fwd_rules(&self.rules, family);
                        let want = (self.rules.forward && !fwd.is_empty()).then_some(&fwd[..]);
                        self.clean_family(family, || ipt.apply(None, want))?;
                    }
                }
            }
            Backend::Iptables => {
                for family in Family::ALL {
                    let Some(ipt) = self.iptables_of(family) else {
                        continue;
                    };
                    let masq = iptables_masq_rules(
                        &self.rules,
                        family,
                        self.random_fully[family as usize],
                    );
                    let fwd = iptables_fwd_rules(&self.rules, family);
                    self.clean_family(family, || {
                        ipt.apply(
                            (self.rules.masquerade && !masq.is_empty()).then_some(&masq[..]),
                            (self.rules.forward && !fwd.is_empty()).then_some(&fwd[..]),
                        )
                    })?;
                }
                if let Some(nft) = &self.nft {
                    let mut v4 = false;
                    self.clean_family(Family::V4, || {
                        v4 = nft_list(nft, Family::V4)?.is_some();
                        Ok(())
                    })?;
                    let v6 = nft_list(nft, Family::V6)?.is_some();
                    if v4 || v6 {
                        run(
                            nft,
                            &["-f", "-"],
                            Some(&nft_script(&self.rules_none(), false, [v4, v6])),
                        )?;
                    }
                }
            }
        }
        self.applied = Some(self.read()?);
        Ok(())
    }

    /// No rules of either family (each table named only when it exists).
    fn rules_none(&self) -> Rules {
        Rules {
            masquerade: false,
            forward: false,
            v4: None,
            v6: None,
            ..self.rules.clone()
        }
    }

    /// Whether the rules are as we applied them (false before the first `apply`).
    pub fn present(&self) -> Result<bool, NetfilterError> {
        Ok(self.applied.is_some() && self.applied == Some(self.read()?))
    }

    /// Checks the rules and applies them again when someone changed them; `Ok(true)` when it
    /// restored something.
    pub fn ensure(&mut self) -> Result<bool, NetfilterError> {
        if self.present()? {
            return Ok(false);
        }
        self.apply()?;
        Ok(true)
    }
}

/// Removes everything overlayd installed in this network namespace, with either tool: the
/// nftables table, the iptables chains and their jumps. For `overlayd cleanup`; a missing
/// tool or rule is not an error. Returns what it removed, for the log.
pub fn remove_all() -> Result<Vec<String>, NetfilterError> {
    let mut removed = Vec::new();
    if let Some(nft) = find_tool("nft") {
        for family in Family::ALL {
            if nft_list(&nft, family)?.is_some() {
                let (f, table) = (family.nft_family(), family.nft_table());
                run(&nft, &["delete", "table", f, table], None)?;
                removed.push(format!("nftables table {f} {table}"));
            }
        }
    }
    for family in Family::ALL {
        let Some(ipt) = Iptables::find(family) else {
            continue;
        };
        let before = match ipt.ours() {
            Ok(b) => b,
            // A host without IPv6 netfilter support holds no IPv6 rules of ours.
            Err(e) if family == Family::V6 => {
                tracing::debug!(error = %e, "ip6tables unusable here; no IPv6 chains to remove");
                continue;
            }
            Err(e) => return Err(e),
        };
        if !before.is_empty() {
            ipt.apply(None, None)?;
            removed.push(format!(
                "{} chains {POSTRTG_CHAIN}/{FWD_CHAIN} and their jumps ({} lines)",
                family.iptables(),
                before.len()
            ));
        }
    }
    Ok(removed)
}

// ---- the checker thread ----

/// The rules' state for `/status`, `overlayd status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetfilterStatus {
    /// `nftables`, `iptables (nf_tables)`, `iptables (legacy)`, or `none` (no tool found).
    pub backend: String,
    /// `--ip-masq`.
    pub masquerade: bool,
    /// `--iptables-forward-rules`.
    pub forward: bool,
    /// The last check found the rules as overlayd installed them.
    pub rules_present: bool,
    /// Times the rules were found changed and installed again.
    pub restores: u64,
    /// The last check's error, if it failed.
    pub error: Option<String>,
}

/// Shared between the checker thread (writer) and the status readers.
#[derive(Debug, Default)]
pub struct Shared {
    status: Mutex<Option<NetfilterStatus>>,
    restores: AtomicU64,
    checks: AtomicU64,
}

impl Shared {
    /// `None` when overlayd manages no rules (neither `--ip-masq` nor forward rules).
    #[must_use]
    pub fn status(&self) -> Option<NetfilterStatus> {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        s.restores = self.restores.load(Ordering::Relaxed);
        Some(s)
    }

    /// Checks done so far (tests wait on it).
    #[must_use]
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    fn set(&self, f: impl FnOnce(&mut NetfilterStatus)) {
        let mut g = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        f(g.get_or_insert_with(NetfilterStatus::default));
    }
}

/// The running checker; dropping it stops the checker thread and waits for it (at most one
/// check gap, `MIN_CHECK_GAP`, plus a check already under way), so nothing re-adds the rules
/// after the drop: `--cleanup-on-exit` removes them right after. The rules stay in place.
#[derive(Debug)]
pub struct Handle {
    nudge: mpsc::SyncSender<()>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    checker: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    /// Asks for a check now (never blocks; a pending request covers this one).
    pub fn check_soon(&self) {
        let _ = self.nudge.try_send(());
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.nudge.try_send(());
        if let Some(t) = self.checker.take() {
            let _ = t.join();
        }
    }
}

/// Installs `rules` (an error here is the caller's to report: Flannel exits when the masquerade
/// rules cannot be set up) and starts the checker thread.
pub fn start(
    rules: Rules,
    prefer_nftables: bool,
    resync: Duration,
    shared: Arc<Shared>,
) -> Result<Handle, NetfilterError> {
    shared.set(|s| {
        s.backend = "none".into();
        s.masquerade = rules.masquerade;
        s.forward = rules.forward;
    });
    let mut m = Manager::new(rules.clone(), prefer_nftables)?;
    shared.set(|s| {
        s.backend = m.backend_name();
        s.masquerade = rules.masquerade;
        s.forward = rules.forward;
    });
    m.apply()?;
    shared.set(|s| s.rules_present = true);
    tracing::info!(
        backend = %m.backend_name(),
        masquerade = rules.masquerade,
        random_fully = m.rules.v4.is_some() && m.random_fully[0],
        random_fully_v6 = m.rules.v6.is_some() && m.random_fully[1],
        forward = rules.forward,
        network = rules.v4.map(|v| tracing::field::display(v.network)),
        pod_cidr = rules.v4.map(|v| tracing::field::display(v.pod_cidr)),
        network_v6 = rules.v6.map(|v| tracing::field::display(v.network)),
        pod_cidr_v6 = rules.v6.map(|v| tracing::field::display(v.pod_cidr)),
        "netfilter rules installed"
    );
    let (tx, rx) = mpsc::sync_channel(1);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if m.nft.is_some()
        || Family::ALL
            .iter()
            .any(|f| m.iptables_of(*f).is_some_and(|i| i.variant == "nf_tables"))
    {
        watch_nf_tables(tx.clone(), stop.clone());
    }
    let resync = resync.max(Duration::from_millis(100));
    let checker_stop = stop.clone();
    let checker = std::thread::Builder::new()
        .name("overlayd-netfilter".into())
        .spawn(move || checker(m, rx, resync, shared, &checker_stop))
        .map_err(|source| NetfilterError::Spawn {
            cmd: "the netfilter checker thread".into(),
            source,
        })?;
    Ok(Handle {
        nudge: tx,
        stop,
        checker: Some(checker),
    })
}

/// Starts what the command line and net-conf.json ask for: `None` when neither `--ip-masq`
/// nor `--iptables-forward-rules` is on. A masquerade failure is an error (Flannel exits);
/// a forward-rules-only failure is logged and the daemon goes on, as Flannel does.
pub fn start_from_options(
    opts: &crate::control::Options,
    netconf: &crate::config::NetConf,
    pod_cidr: Option<Ipv4Network>,
    pod_cidr_v6: Option<Ipv6Network>,
    shared: Arc<Shared>,
) -> anyhow::Result<Option<Handle>> {
    if !opts.ip_masq && !opts.iptables_forward_rules {
        return Ok(None);
    }
    let rules = Rules {
        v4: netconf
            .network
            .zip(pod_cidr)
            .map(|(network, pod_cidr)| RulesV4 { network, pod_cidr }),
        masquerade: opts.ip_masq,
        random_fully: opts.ip_masq_random_fully,
        forward: opts.iptables_forward_rules,
        v6: netconf
            .network_v6
            .zip(pod_cidr_v6)
            .map(|(network, pod_cidr)| RulesV6 { network, pod_cidr }),
    };
    match start(
        rules,
        netconf.enable_nftables,
        opts.iptables_resync,
        shared.clone(),
    ) {
        Ok(h) => Ok(Some(h)),
        Err(e) if opts.ip_masq => Err(anyhow::anyhow!(
            "--ip-masq: cannot set up the masquerade rules: {e}"
        )),
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the FORWARD accept rules (--iptables-forward-rules); pods may not be forwarded where FORWARD's policy is DROP");
            shared.set(|s| {
                s.rules_present = false;
                s.error = Some(e.to_string());
            });
            Ok(None)
        }
    }
}

fn checker(
    mut m: Manager,
    rx: mpsc::Receiver<()>,
    resync: Duration,
    shared: Arc<Shared>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut last_error = String::new();
    let mut last_check = Instant::now();
    loop {
        match rx.recv_timeout(resync) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // A burst of notifications (our own apply, a flush of many chains) is one check, and
        // a busy ruleset (kube-proxy rewriting its chains) costs at most two checks a second.
        std::thread::sleep(
            MIN_CHECK_GAP
                .saturating_sub(last_check.elapsed())
                .max(Duration::from_millis(20)),
        );
        while rx.try_recv().is_ok() {}
        // A stop that came during the gap wins: `--cleanup-on-exit` is about to remove the rules.
        if stop.load(Ordering::Relaxed) {
            return;
        }
        last_check = Instant::now();
        let result = m.ensure();
        shared.checks.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(restored) => {
                if restored {
                    shared.restores.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(backend = %m.backend_name(), "netfilter rules were changed by someone else; restored them");
                }
                last_error.clear();
                shared.set(|s| {
                    s.rules_present = true;
                    s.error = None;
                });
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_error {
                    tracing::warn!(error = %msg, "cannot check or restore the netfilter rules; will retry");
                    last_error = msg.clone();
                }
                shared.set(|s| {
                    s.rules_present = false;
                    s.error = Some(msg);
                });
            }
        }
    }
}

/// nf_tables notifications (NFNLGRP_NFTABLES): any ruleset change written with `nft` or
/// iptables-nft asks for a check at once. Best effort: without it the periodic checks remain.
fn watch_nf_tables(nudge: mpsc::SyncSender<()>, stop: Arc<std::sync::atomic::AtomicBool>) {
    const NFNLGRP_NFTABLES: u32 = 7;
    let sock =
        netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER).and_then(|mut s| {
            s.bind_auto()?;
            s.add_membership(NFNLGRP_NFTABLES)?;
            // Wake up once a second without a notification, so the thread sees `stop` and
            // ends with the daemon instead of waiting for the next ruleset change.
            nix::sys::socket::setsockopt(
                &s,
                nix::sys::socket::sockopt::ReceiveTimeout,
                &nix::sys::time::TimeVal::new(1, 0),
            )?;
            Ok(s)
        });
    let sock = match sock {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "no nf_tables notifications; relying on the periodic checks");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("overlayd-nfwatch".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                match sock.recv(&mut &mut buf[..], 0) {
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    // ENOBUFS (a burst overflowed the socket) also means "something changed".
                    Ok(_) | Err(_) => {
                        if let Err(mpsc::TrySendError::Disconnected(())) = nudge.try_send(()) {
                            return;
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::info!(error = %e, "no nf_tables notification thread; relying on the periodic checks");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            v4: Some(RulesV4 {
                network: "10.244.0.0/16".parse().unwrap(),
                pod_cidr: "10.244.1.0/24".parse().unwrap(),
            }),
            masquerade: true,
            random_fully: true,
            forward: true,
            v6: None,
        }
    }

    fn dual() -> Rules {
        Rules {
            v6: Some(RulesV6 {
                network: "fd00:10:244::/56".parse().unwrap(),
                pod_cidr: "fd00:10:244:1::/64".parse().unwrap(),
            }),
            ..rules()
        }
    }

    #[test]
    fn ipv6_rules_mirror_the_ipv4_ones_as_flannels_masq_ip6_rules() {
        // pkg/trafficmngr/iptables masqIP6Rules: the same shape, ff00::/8 as multicast.
        let c = "-m comment --comment \"overlayd masq\"";
        let (n, p) = ("fd00:10:244::/56", "fd00:10:244:1::/64");
        assert_eq!(
            iptables_masq_rules(&dual(), Family::V6, true),
            [
                format!("-m mark --mark 0x4000/0x4000 {c} -j RETURN"),
                format!("-s {p} -d {n} {c} -j RETURN"),
                format!("-s {n} -d {p} {c} -j RETURN"),
                format!("! -s {n} -d {p} {c} -j RETURN"),
                format!("-s {n} ! -d ff00::/8 {c} -j MASQUERADE --random-fully"),
                format!("! -s {n} -d {n} {c} -j MASQUERADE --random-fully"),
            ]
        );
        assert_eq!(
            iptables_fwd_rules(&dual(), Family::V6),
            [
                format!("-s {n} -m comment --comment \"overlayd forward\" -j ACCEPT"),
                format!("-d {n} -m comment --comment \"overlayd forward\" -j ACCEPT"),
            ]
        );
        // The IPv4 rules are the same with or without IPv6; IPv6 off: no IPv6 rules.
        assert_eq!(
            iptables_masq_rules(&dual(), Family::V4, true),
            iptables_masq_rules(&rules(), Family::V4, true)
        );
        assert!(iptables_masq_rules(&rules(), Family::V6, true).is_empty());
        assert!(iptables_fwd_rules(&rules(), Family::V6).is_empty());

        // nftables: one transaction replacing both tables; the ip6 table uses ip6 matches.
        let s = nft_script(&dual(), true, [false; 2]);
        let v6 = &s[s.find("table ip6 overlayd-ipv6 {}").expect("ip6 table")..];
        assert!(v6.starts_with(
            "table ip6 overlayd-ipv6 {}\ndelete table ip6 overlayd-ipv6\ntable ip6 overlayd-ipv6 {"
        ), "{s}");
        assert!(
            v6.contains(&format!("ip6 saddr != {n} ip6 daddr {p} return")),
            "{s}"
        );
        assert!(
            v6.contains(&format!(
                "ip6 saddr {n} ip6 daddr != ff00::/8 masquerade fully-random"
            )),
            "{s}"
        );
        assert!(v6.contains(&format!("ip6 saddr {n} accept")), "{s}");
        assert!(!v6.contains("ip saddr"), "{s}");
        // IPv6 off: a stale ip6 table from a dual-stack run is deleted, nothing recreated.
        let s4 = nft_script(&rules(), true, [false, true]);
        assert!(
            s4.ends_with("table ip6 overlayd-ipv6 {}\ndelete table ip6 overlayd-ipv6\n"),
            "{s4}"
        );
        // IPv6 off and no ip6 table: the transaction never names ip6 (a kernel without
        // nf_tables IPv6 would refuse all of it), and the IPv4 table is as with IPv6 on.
        let only4 = nft_script(&rules(), true, [false; 2]);
        assert!(!only4.contains("ip6"), "{only4}");
        assert_eq!(
            only4,
            s4.replace(
                "table ip6 overlayd-ipv6 {}\ndelete table ip6 overlayd-ipv6\n",
                ""
            )
        );
        assert!(only4.contains("masquerade fully-random"), "{only4}");
    }

    /// IPv6-only (EnableIPv4 false): no IPv4 rule of either tool, no `ip` table created (one
    /// left by an IPv4 run is deleted), the IPv6 rules as in dual stack.
    #[test]
    fn ipv6_only_rules_never_name_ipv4() {
        let v6only = Rules { v4: None, ..dual() };
        assert!(iptables_masq_rules(&v6only, Family::V4, true).is_empty());
        assert!(iptables_fwd_rules(&v6only, Family::V4).is_empty());
        assert_eq!(
            iptables_masq_rules(&v6only, Family::V6, true),
            iptables_masq_rules(&dual(), Family::V6, true)
        );
        let s = nft_script(&v6only, true, [false; 2]);
        assert!(!s.contains("table ip "), "{s}");
        assert!(s.starts_with("table ip6 overlayd-ipv6 {}\n"), "{s}");
        assert!(s.contains("ip6 saddr fd00:10:244::/56 accept"), "{s}");
        // A stale IPv4 table is deleted, not filled.
        let stale = nft_script(&v6only, true, [true, false]);
        assert!(
            stale.starts_with(
                "table ip overlayd-ipv4 {}\ndelete table ip overlayd-ipv4\ntable ip6 overlayd-ipv6 {}\n"
            ),
            "{stale}"
        );
        assert_eq!(
            stale.matches("table ip overlayd-ipv4").count(),
            2,
            "{stale}"
        );
    }

    #[test]
    fn iptables_rules_are_flannels() {
        // pkg/trafficmngr/iptables/iptables.go masqRules / forwardRules, with our chain names.
        let m = iptables_masq_rules(&rules(), Family::V4, true);
        let c = "-m comment --comment \"overlayd masq\"";
        assert_eq!(
            m,
            [
                format!("-m mark --mark 0x4000/0x4000 {c} -j RETURN"),
                format!("-s 10.244.1.0/24 -d 10.244.0.0/16 {c} -j RETURN"),
                format!("-s 10.244.0.0/16 -d 10.244.1.0/24 {c} -j RETURN"),
                format!("! -s 10.244.0.0/16 -d 10.244.1.0/24 {c} -j RETURN"),
                format!("-s 10.244.0.0/16 ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully"),
                format!("! -s 10.244.0.0/16 -d 10.244.0.0/16 {c} -j MASQUERADE --random-fully"),
            ]
        );
        assert!(iptables_masq_rules(&rules(), Family::V4, false)
            .iter()
            .all(|r| !r.contains("random-fully")));
        assert_eq!(
            iptables_fwd_rules(&rules(), Family::V4),
            [
                "-s 10.244.0.0/16 -m comment --comment \"overlayd forward\" -j ACCEPT",
                "-d 10.244.0.0/16 -m comment --comment \"overlayd forward\" -j ACCEPT",
            ]
        );
    }

    /// --random-fully per family, as Flannel: an ip6tables without it (older than 1.6.2)
    /// costs only IPv6 masquerading the flag, and the IPv4 rules keep it.
    #[test]
    fn random_fully_is_decided_per_family() {
        let tool = |random_fully| Iptables {
            save: "iptables-save".into(),
            restore: "iptables-restore".into(),
            variant: "nf_tables".into(),
            random_fully,
        };
        let (new, old) = (tool(true), tool(false));
        let ipt = Backend::Iptables;
        assert!(random_fully_of(true, ipt, false, Some(&new)));
        assert!(!random_fully_of(true, ipt, false, Some(&old)));
        assert!(!random_fully_of(true, ipt, false, None));
        assert!(!random_fully_of(false, ipt, true, Some(&new)), "disabled");
        // nftables: the nft probe decides, for both families.
        assert!(random_fully_of(true, Backend::Nftables, true, None));
        assert!(!random_fully_of(true, Backend::Nftables, false, Some(&new)));
        // What each family's rules then say.
        let v4 = iptables_masq_rules(
            &dual(),
            Family::V4,
            random_fully_of(true, ipt, false, Some(&new)),
        );
        let v6 = iptables_masq_rules(
            &dual(),
            Family::V6,
            random_fully_of(true, ipt, false, Some(&old)),
        );
        assert!(
            v4.iter()
                .any(|r| r.ends_with("-j MASQUERADE --random-fully")),
            "{v4:?}"
        );
        assert!(v6.iter().any(|r| r.ends_with("-j MASQUERADE")), "{v6:?}");
        assert!(!v6.iter().any(|r| r.contains("random-fully")), "{v6:?}");
    }

    #[test]
    fn nft_script_replaces_the_table_atomically() {
        let s = nft_script(&rules(), true, [false; 2]);
        assert!(s.starts_with(
            "table ip overlayd-ipv4 {}\ndelete table ip overlayd-ipv4\ntable ip overlayd-ipv4 {"
        ));
        assert!(s.contains("ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return"));
        assert!(
            s.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random")
        );
        assert!(s.contains("type filter hook forward priority filter"));
        let plain = nft_script(
            &Rules {
                random_fully: false,
                forward: false,
                ..rules()
            },
            false,
            [false; 2],
        );
        assert!(!plain.contains("fully-random") && !plain.contains("chain forward"));
        // Nothing wanted: the script only deletes (both tables, when an ip6 one exists).
        let none = nft_script(
            &Rules {
                masquerade: false,
                forward: false,
                ..rules()
            },
            true,
            [true, true],
        );
        assert_eq!(
            none,
            "table ip overlayd-ipv4 {}\ndelete table ip overlayd-ipv4\n\
             table ip6 overlayd-ipv6 {}\ndelete table ip6 overlayd-ipv6\n"
        );
    }

    const SAVE_NAT: &str = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [3:180]\n:OVERLAYD-POSTRTG - [0:0]\n:KUBE-POSTROUTING - [0:0]\n-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n-A POSTROUTING -m comment --comment \"overlayd masq\" -j OVERLAYD-POSTRTG\n-A POSTROUTING -m comment --comment \"overlayd masq\" -j OVERLAYD-POSTRTG\n-A OVERLAYD-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment \"overlayd masq\" -j RETURN\nCOMMIT\n";

    #[test]
    fn our_lines_are_only_ours_without_counters() {
        assert_eq!(
            our_lines(SAVE_NAT),
            [
                ":OVERLAYD-POSTRTG -",
                "-A POSTROUTING -m comment --comment \"overlayd masq\" -j OVERLAYD-POSTRTG",
                "-A POSTROUTING -m comment --comment \"overlayd masq\" -j OVERLAYD-POSTRTG",
                "-A OVERLAYD-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment \"overlayd masq\" -j RETURN",
            ]
        );
    }

    #[test]
    fn restore_input_keeps_one_jump_and_rewrites_the_chain() {
        let masq = iptables_masq_rules(&rules(), Family::V4, true);
        let fwd = iptables_fwd_rules(&rules(), Family::V4);
        let input = iptables_restore_input(SAVE_NAT, "*filter\nCOMMIT\n", Some(&masq), Some(&fwd));
        let nat = input.split("*filter").next().unwrap();
        assert!(
            nat.starts_with("*nat\n:OVERLAYD-POSTRTG - [0:0]\n"),
            "{input}"
        );
        // The duplicate jump goes; the first stays; kube-proxy's is untouched.
        assert_eq!(nat.matches("-D POSTROUTING").count(), 1, "{input}");
        assert!(!nat.contains("-A POSTROUTING"), "{input}");
        assert!(!input.contains("KUBE-POSTROUTING"), "{input}");
        assert_eq!(nat.matches("-A OVERLAYD-POSTRTG").count(), 6);
        // The filter table had nothing: chain, jump and both rules are added.
        assert!(input.contains(
            "*filter\n:OVERLAYD-FWD - [0:0]\n-A FORWARD -m comment --comment \"overlayd forward\" -j OVERLAYD-FWD\n"
        ));
        assert!(input.ends_with("-j ACCEPT\nCOMMIT\n"));

        // Removal deletes what exists and nothing else (a -D of a missing rule fails the whole
        // restore).
        let rm = iptables_restore_input(SAVE_NAT, "*filter\nCOMMIT\n", None, None);
        assert_eq!(
            rm,
            "*nat\n-D POSTROUTING -m comment --comment \"overlayd masq\" -j OVERLAYD-POSTRTG\n\
             -D POSTROUTING -m comment --comment \"overlayd masq\" -j OVERLAYD-POSTRTG\n\
             -F OVERLAYD-POSTRTG\n-X OVERLAYD-POSTRTG\nCOMMIT\n"
        );
        assert_eq!(iptables_restore_input("", "", None, None), "");
    }
}
