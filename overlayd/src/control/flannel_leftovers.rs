//! Taking a node over from Flannel: finds what flanneld leaves on a node when its DaemonSet is
//! deleted (flanneld removes nothing on exit) and removes it before overlayd programs the node.
//!
//! What counts as Flannel's, by the names Flannel's code uses:
//! - the kernel VXLAN devices `flannel.1` / `flannel-v6.1` (pkg/backend/vxlan): they hold the
//!   VXLAN UDP port in the kernel, so overlayd could not bind it, and their routes
//!   `podCIDR via X dev flannel.1 onlink` go with them;
//! - the iptables chains `FLANNEL-POSTRTG` (nat) and `FLANNEL-FWD` (filter) with the jumps to
//!   them from POSTROUTING / FORWARD (pkg/trafficmngr/iptables), in either iptables backend;
//! - the nftables tables `ip flannel-ipv4` / `ip6 flannel-ipv6` (pkg/trafficmngr/nftables).
//!
//! Policy: take over. Everything found is removed and logged by name, so a DaemonSet swap needs
//! no step on the node. It refuses to start, naming the object and the command that removes it,
//! only when it cannot remove something, or when `flannel.1` is not a VXLAN device (then it is
//! not Flannel's and not ours to delete). The rules that replace Flannel's masquerade are the
//! masquerade module's; this one never touches any other chain, table or device.

use std::process::Command;

use anyhow::{bail, Result};
use tracing::{info, warn};

use crate::sys::netlink::Netlink;

/// Flannel's VXLAN devices (IPv4, IPv6), as pkg/backend/vxlan names them for VNI 1. A
/// different VNI gives `flannel.<vni>`; those are found by [`vxlan_device_names`].
const DEVICE_PREFIXES: &[&str] = &["flannel.", "flannel-v6."];

/// (table, chain, the built-in chain that jumps to it).
const IPTABLES_CHAINS: &[(&str, &str, &str)] = &[
    ("nat", "FLANNEL-POSTRTG", "POSTROUTING"),
    ("filter", "FLANNEL-FWD", "FORWARD"),
    // Flannel's own CleanUp also looks for FLANNEL-FWD in nat.
    ("nat", "FLANNEL-FWD", "POSTROUTING"),
];

/// (family, table) of Flannel's nftables mode.
const NFT_TABLES: &[(&str, &str)] = &[("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")];

/// The iptables front ends tried, each backend separately: a host may hold Flannel's rules in
/// either, depending on the iptables its image picked.
const IPTABLES_TOOLS: &[&str] = &[
    "iptables-nft",
    "iptables-legacy",
    "ip6tables-nft",
    "ip6tables-legacy",
];

/// The names of Flannel's VXLAN devices for `vni` (`flannel.<vni>`, `flannel-v6.<vni>`).
#[must_use]
pub fn vxlan_device_names(vni: u32) -> Vec<String> {
    DEVICE_PREFIXES
        .iter()
        .map(|p| format!("{p}{vni}"))
        .collect()
}

/// One thing of Flannel's found on the node, and how a person removes it by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    Device {
        name: String,
        index: u32,
    },
    IptablesChain {
        tool: String,
        table: &'static str,
        chain: &'static str,
        /// The jump rules into the chain, as `-S` prints them (`-A POSTROUTING ... -j CHAIN`).
        jumps: Vec<Vec<String>>,
    },
    NftTable {
        family: &'static str,
        table: &'static str,
    },
}

impl Leftover {
    /// What it is, for the log.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Leftover::Device { name, .. } => format!("VXLAN device {name}"),
            Leftover::IptablesChain {
                tool, table, chain, ..
            } => format!("{tool} chain {chain} in table {table}"),
            Leftover::NftTable { family, table } => format!("nftables table {family} {table}"),
        }
    }

    /// The shell command that removes it.
    #[must_use]
    pub fn removal_command(&self) -> String {
        match self {
            Leftover::Device { name, .. } => format!("ip link del {name}"),
            Leftover::IptablesChain {
                tool,
                table,
                chain,
                jumps,
            } => {
                let mut cmds: Vec<String> = jumps
                    .iter()
                    .map(|j| {
                        let spec: Vec<String> =
                            delete_args(j).iter().map(|a| shell_quote(a)).collect();
                        format!("{tool} -t {table} {}", spec.join(" "))
                    })
                    .collect();
                cmds.push(format!("{tool} -t {table} -F {chain}"));
                cmds.push(format!("{tool} -t {table} -X {chain}"));
                cmds.join(" && ")
            }
            Leftover::NftTable { family, table } => format!("nft delete table {family} {table}"),
        }
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:!".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Splits one line of `iptables -S` output into arguments (it double-quotes arguments with
/// spaces, e.g. `--comment "flanneld masq"`, and escapes `"` and `\` inside them).
#[must_use]
pub fn split_rule(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_arg = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_arg = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_arg {
                    out.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            c => {
                cur.push(c);
                in_arg = true;
            }
        }
    }
    if in_arg {
        out.push(cur);
    }
    out
}

/// The rules of `iptables -S <from>` output that jump to `chain`, split into arguments.
#[must_use]
pub fn jumps_to(listing: &str, chain: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .map(split_rule)
        .filter(|a| a.first().is_some_and(|x| x == "-A"))
        .filter(|a| {
            a.windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
        })
        .collect()
}

/// `-A CHAIN spec...` as the arguments that delete that rule: `-D CHAIN spec...`.
fn delete_args(rule: &[String]) -> Vec<String> {
    let mut a = rule.to_vec();
    if let Some(first) = a.first_mut() {
        "-D".clone_into(first);
    }
    a
}

/// Flannel's tables among the lines of `nft list tables` (`table ip flannel-ipv4`).
#[must_use]
pub fn nft_tables_in(listing: &str) -> Vec<(&'static str, &'static str)> {
    NFT_TABLES
        .iter()
        .copied()
        .filter(|(family, table)| {
            listing.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() >= 3 && w[0] == "table" && w[1] == *family && w[2] == *table
            })
        })
        .collect()
}

/// Runs a tool; `None` when it is not installed (or cannot run at all).
fn run(tool: &str, args: &[&str]) -> Option<std::process::Output> {
    Command::new(tool).args(args).output().ok()
}

fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
    .trim()
    .to_string()
}

/// Finds Flannel's leftovers. A device named like Flannel's that is not a VXLAN device is an
/// error: it is not Flannel's and overlayd will not delete it.
pub async fn find(nl: &Netlink, vni: u32) -> Result<Vec<Leftover>> {
    let mut found = Vec::new();
    let mut names = vxlan_device_names(vni);
    for n in vxlan_device_names(1) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    for name in names {
        if let Some(link) = nl.link_by_name(&name).await? {
            // Our own TAP (`--device flannel.1`, left by the previous overlayd): not Flannel's.
            if link.alias.as_deref() == Some(crate::sys::netlink::DEVICE_ALIAS) {
                continue;
            }
            if link.kind.as_deref() != Some("vxlan") {
                bail!(
                    "device {name} exists and is not a VXLAN device (kind {}), so it is not Flannel's: \
                     remove it (ip link del {name}) or rename it before starting overlayd",
                    link.kind.as_deref().unwrap_or("unknown")
                );
            }
            found.push(Leftover::Device {
                name,
                index: link.index,
            });
        }
    }
    let mut missing = Vec::new();
    for tool in IPTABLES_TOOLS {
        for (table, chain, from) in IPTABLES_CHAINS {
            let Some(out) = run(tool, &["-w", "5", "-t", table, "-S", chain]) else {
                if !missing.contains(tool) {
                    missing.push(*tool);
                }
                continue;
            };
            match out.status.code() {
                Some(0) => {}
                // Exit status 1: no such chain (iptables' "other problem" status).
                Some(1) => continue,
                // 3 and up: the backend cannot be read here (no permission, no kernel table).
                _ => {
                    warn!(tool, table, chain, error = %output_text(&out), "cannot look for Flannel's chain in this iptables backend; leaving it alone if present");
                    continue;
                }
            }
            let jumps = match run(tool, &["-w", "5", "-t", table, "-S", from]) {
                Some(o) if o.status.success() => {
                    jumps_to(&String::from_utf8_lossy(&o.stdout), chain)
                }
                _ => Vec::new(),
            };
            found.push(Leftover::IptablesChain {
                tool: (*tool).to_string(),
                table,
                chain,
                jumps,
            });
        }
    }
    match run("nft", &["list", "tables"]) {
        Some(o) if o.status.success() => {
            for (family, table) in nft_tables_in(&String::from_utf8_lossy(&o.stdout)) {
                found.push(Leftover::NftTable { family, table });
            }
        }
        Some(o) => {
            warn!(error = %output_text(&o), "cannot list nftables tables to look for Flannel's")
        }
        None => missing.push("nft"),
    }
    if !missing.is_empty() {
        warn!(
            tools = %missing.join(","),
            "not installed: Flannel's rules in those backends cannot be looked for (and are left alone if present)"
        );
    }
    Ok(found)
}

/// Removes one leftover; the error names it and the command that removes it by hand.
async fn remove(nl: &Netlink, l: &Leftover) -> Result<()> {
    let fail = |why: String| {
        anyhow::anyhow!(
            "found Flannel's {} and cannot remove it ({why}): remove it by hand with `{}` (see deploy/MIGRATING.md), then start overlayd again",
            l.describe(),
            l.removal_command()
        )
    };
    match l {
        Leftover::Device { index, .. } => nl
            .delete_link(*index)
            .await
            .map_err(|e| fail(e.to_string())),
        Leftover::IptablesChain {
            tool,
            table,
            chain,
            jumps,
        } => {
            let mut steps: Vec<Vec<String>> = jumps.iter().map(|j| delete_args(j)).collect();
            steps.push(vec!["-F".into(), (*chain).into()]);
            steps.push(vec!["-X".into(), (*chain).into()]);
            for step in steps {
                let mut args: Vec<&str> = vec!["-w", "5", "-t", table];
                args.extend(step.iter().map(String::as_str));
                match run(tool, &args) {
                    Some(o) if o.status.success() => {}
                    Some(o) => {
                        return Err(fail(format!(
                            "{tool} {}: {}",
                            step.join(" "),
                            output_text(&o)
                        )))
                    }
                    None => return Err(fail(format!("{tool} cannot run"))),
                }
            }
            Ok(())
        }
        Leftover::NftTable { family, table } => {
            match run("nft", &["delete", "table", family, table]) {
                Some(o) if o.status.success() => Ok(()),
                Some(o) => Err(fail(output_text(&o))),
                None => Err(fail("nft cannot run".into())),
            }
        }
    }
}

/// Finds and removes Flannel's leftovers; returns what was removed. Called once at start,
/// before overlayd creates its device or binds the VXLAN port.
pub async fn take_over(nl: &Netlink, vni: u32) -> Result<Vec<Leftover>> {
    let found = find(nl, vni).await?;
    if found.is_empty() {
        info!("no Flannel leftovers on this node");
        return Ok(found);
    }
    for l in &found {
        remove(nl, l).await?;
        info!(removed = %l.describe(), "took over from Flannel: removed its leftover");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAT_POSTROUTING: &str = "-P POSTROUTING ACCEPT\n\
        -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
        -A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
        -A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE\n";

    #[test]
    fn finds_only_the_jumps_to_the_chain() {
        let j = jumps_to(NAT_POSTROUTING, "FLANNEL-POSTRTG");
        assert_eq!(
            j,
            vec![vec![
                "-A",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "FLANNEL-POSTRTG"
            ]]
        );
        assert!(jumps_to(NAT_POSTROUTING, "FLANNEL-FWD").is_empty());
        assert_eq!(
            delete_args(&j[0])[..2],
            ["-D".to_string(), "POSTROUTING".to_string()]
        );
    }

    #[test]
    fn split_rule_handles_quotes_and_escapes() {
        assert_eq!(
            split_rule(r#"-A X -m comment --comment "a \"b\" c" -j Y"#),
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "a \"b\" c",
                "-j",
                "Y"
            ]
        );
        assert_eq!(split_rule(r#"--comment """#), ["--comment", ""]);
    }

    #[test]
    fn nft_tables_are_matched_by_family_and_name() {
        let l = "table inet filter\ntable ip flannel-ipv4\ntable ip6 flannel-ipv6\ntable ip flannel-ipv4x\n";
        assert_eq!(
            nft_tables_in(l),
            [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")]
        );
        assert!(nft_tables_in("table ip6 flannel-ipv4\n").is_empty());
    }

    #[test]
    fn removal_commands_are_runnable_shell() {
        let l = Leftover::IptablesChain {
            tool: "iptables-nft".into(),
            table: "nat",
            chain: "FLANNEL-POSTRTG",
            jumps: jumps_to(NAT_POSTROUTING, "FLANNEL-POSTRTG"),
        };
        assert_eq!(
            l.removal_command(),
            "iptables-nft -t nat -D POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG \
             && iptables-nft -t nat -F FLANNEL-POSTRTG && iptables-nft -t nat -X FLANNEL-POSTRTG"
        );
        assert_eq!(
            Leftover::Device {
                name: "flannel.1".into(),
                index: 3
            }
            .removal_command(),
            "ip link del flannel.1"
        );
        assert_eq!(
            Leftover::NftTable {
                family: "ip",
                table: "flannel-ipv4"
            }
            .removal_command(),
            "nft delete table ip flannel-ipv4"
        );
        assert_eq!(
            vxlan_device_names(4096),
            ["flannel.4096", "flannel-v6.4096"]
        );
    }
}
