//! The underlay: which interface and address VXLAN leaves from, chosen as flanneld chooses it
//! (main.go, pkg/ipmatch LookupExtIface, IPv4 stack).
//!
//! Without `--iface`, `--iface-regex` and `--iface-can-reach`: the interface holding
//! `--public-ip`, else the interface of the default route. With them: each `--iface` in order
//! (an address selects the interface holding it and that address, a name selects the interface
//! and its first IPv4 address), then each `--iface-regex` (first against every interface's IPv4
//! addresses, then against every name), then `--iface-can-reach` (the interface and source
//! address of `ip route get`); the first match wins. `--public-ip`, when given, is the address
//! announced and sent from whatever interface was chosen.
//!
//! The matching itself is I/O-free ([`select`] over a [`Snapshot`]); only gathering the
//! snapshot and the route lookups touch netlink.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};

use super::Options;
use crate::sys::netlink::{Link, Netlink};

/// The underlay: where VXLAN leaves and arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub iface: String,
    pub ip: Ipv4Addr,
    /// The IPv6 underlay address (dual-stack): IPv6 VXLAN leaves from and arrives at it.
    /// `None`: no IPv6 underlay, the queues open no IPv6 sockets.
    pub ip6: Option<std::net::Ipv6Addr>,
    pub mtu: u32,
}

/// The links and their IPv4 addresses, in index order.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub links: Vec<(Link, Vec<Ipv4Addr>)>,
}

/// What the interface flags ask for (flanneld's opts.iface, ifaceRegex, ifaceCanReach).
#[derive(Debug, Clone, Default)]
pub struct Selectors<'a> {
    pub iface: &'a [String],
    pub iface_regex: &'a [String],
}

/// A chosen interface and the address found with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub index: u32,
    pub addr: Option<Ipv4Addr>,
}

/// Tries `--iface` then `--iface-regex` against `snap`; `Ok(None)` when nothing matched (the
/// caller tries `--iface-can-reach` next). Each miss is described in `misses`, as flanneld
/// logs it.
pub fn select(
    sel: &Selectors<'_>,
    snap: &Snapshot,
    misses: &mut Vec<String>,
) -> Result<Option<Choice>> {
    for want in sel.iface {
        if let Ok(ip) = want.parse::<std::net::IpAddr>() {
            let std::net::IpAddr::V4(ip) = ip else {
                misses.push(format!(
                    "--iface {want}: an IPv6 underlay is not supported yet"
                ));
                continue;
            };
            match snap.links.iter().find(|(_, a)| a.contains(&ip)) {
                Some((l, _)) => {
                    return Ok(Some(Choice {
                        index: l.index,
                        addr: Some(ip),
                    }))
                }
                None => misses.push(format!("--iface {want}: no interface has this address")),
            }
        } else {
            match snap.links.iter().find(|(l, _)| l.name == *want) {
                Some((l, addrs)) if !addrs.is_empty() => {
                    return Ok(Some(Choice {
                        index: l.index,
                        addr: Some(addrs[0]),
                    }))
                }
                Some(_) => {
                    misses.push(format!("--iface {want}: the interface has no IPv4 address"))
                }
                None => misses.push(format!("--iface {want}: no such interface")),
            }
        }
    }
    for pattern in sel.iface_regex {
        let re = regex::Regex::new(pattern)
            .with_context(|| format!("--iface-regex {pattern:?} is not a valid regex"))?;
        // Flannel checks every interface's addresses first, then the names.
        let by_addr = snap.links.iter().find_map(|(l, addrs)| {
            addrs
                .iter()
                .find(|a| re.is_match(&a.to_string()))
                .map(|a| Choice {
                    index: l.index,
                    addr: Some(*a),
                })
        });
        if by_addr.is_some() {
            return Ok(by_addr);
        }
        match snap.links.iter().find(|(l, _)| re.is_match(&l.name)) {
            Some((l, addrs)) if !addrs.is_empty() => {
                return Ok(Some(Choice {
                    index: l.index,
                    addr: Some(addrs[0]),
                }))
            }
            Some((l, _)) => misses.push(format!(
                "--iface-regex {pattern}: matched {}, which has no IPv4 address",
                l.name
            )),
            None => misses.push(format!(
                "--iface-regex {pattern}: matches no interface name or IPv4 address"
            )),
        }
    }
    Ok(None)
}

async fn snapshot(nl: &Netlink) -> Result<Snapshot> {
    let mut links = Vec::new();
    for l in nl.links().await? {
        let addrs = nl.ipv4_addresses(l.index).await?;
        links.push((l, addrs));
    }
    Ok(Snapshot { links })
}

/// Finds the underlay as flanneld does (see the module documentation).
pub async fn find_underlay(nl: &Netlink, opts: &Options) -> Result<Underlay> {
    let explicit =
        !opts.iface.is_empty() || !opts.iface_regex.is_empty() || opts.iface_can_reach.is_some();
    let choice = if explicit {
        let snap = snapshot(nl).await?;
        let mut misses = Vec::new();
        let sel = Selectors {
            iface: &opts.iface,
            iface_regex: &opts.iface_regex,
        };
        let mut choice = select(&sel, &snap, &mut misses)?;
        if choice.is_none() {
            if let Some(dst) = opts.iface_can_reach {
                match nl.route_get(dst).await? {
                    Some((index, src)) => choice = Some(Choice { index, addr: src }),
                    None => misses.push(format!("--iface-can-reach {dst}: no route to it")),
                }
            }
        }
        match choice {
            Some(c) => c,
            None => {
                let have: Vec<String> = snap
                    .links
                    .iter()
                    .map(|(l, a)| {
                        let a: Vec<String> = a.iter().map(ToString::to_string).collect();
                        format!("{}:[{}]", l.name, a.join(" "))
                    })
                    .collect();
                bail!(
                    "no interface matches the --iface/--iface-regex/--iface-can-reach given ({}); interfaces here: {}",
                    misses.join("; "),
                    have.join(", ")
                );
            }
        }
    } else {
        let index = match opts.public_ip {
            Some(ip) => nl
                .link_with_address(ip)
                .await?
                .with_context(|| format!("--public-ip {ip} is not assigned to any interface here: pass --iface too"))?,
            None => nl
                .default_route_link()
                .await?
                .context("no IPv4 default route to pick the underlay interface from: pass --iface or --public-ip")?,
        };
        Choice {
            index,
            addr: opts.public_ip,
        }
    };
    let link = nl
        .link_by_index(choice.index)
        .await?
        .with_context(|| format!("underlay interface #{} vanished", choice.index))?;
    if link.mtu == 0 {
        bail!("failed to determine the MTU of interface {}", link.name);
    }
    let ip = match (opts.public_ip, choice.addr) {
        (Some(ip), _) | (None, Some(ip)) => ip,
        (None, None) => *nl
            .ipv4_addresses(choice.index)
            .await?
            .first()
            .with_context(|| {
                format!(
                    "interface {} has no IPv4 address: pass --public-ip",
                    link.name
                )
            })?,
    };
    Ok(Underlay {
        iface: link.name,
        ip,
        ip6: None,
        mtu: link.mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mtu: 1500,
            mac: None,
            up: true,
            kind: None,
            alias: None,
            tun: None,
        }
    }

    fn snap() -> Snapshot {
        Snapshot {
            links: vec![
                (link(1, "lo"), vec!["127.0.0.1".parse().unwrap()]),
                (link(2, "eth0"), vec!["198.18.0.1".parse().unwrap()]),
                (
                    link(3, "eth1"),
                    vec!["10.0.0.5".parse().unwrap(), "10.0.1.5".parse().unwrap()],
                ),
                (link(4, "ens5"), vec![]),
            ],
        }
    }

    fn pick(iface: &[&str], regex: &[&str]) -> (Option<Choice>, Vec<String>) {
        let iface: Vec<String> = iface.iter().map(|s| (*s).to_string()).collect();
        let iface_regex: Vec<String> = regex.iter().map(|s| (*s).to_string()).collect();
        let mut misses = Vec::new();
        let c = select(
            &Selectors {
                iface: &iface,
                iface_regex: &iface_regex,
            },
            &snap(),
            &mut misses,
        )
        .unwrap();
        (c, misses)
    }

    fn choice(index: u32, addr: &str) -> Option<Choice> {
        Some(Choice {
            index,
            addr: Some(addr.parse().unwrap()),
        })
    }

    #[test]
    fn iface_by_name_or_address_first_that_exists_wins() {
        assert_eq!(pick(&["eth1"], &[]).0, choice(3, "10.0.0.5"));
        assert_eq!(pick(&["10.0.1.5"], &[]).0, choice(3, "10.0.1.5"));
        let (c, misses) = pick(&["nope", "192.0.2.1", "ens5", "eth0"], &[]);
        assert_eq!(c, choice(2, "198.18.0.1"));
        assert_eq!(misses.len(), 3, "{misses:?}");
        assert!(misses[0].contains("no such interface"));
        assert!(misses[2].contains("no IPv4 address"));
    }

    #[test]
    fn regex_after_iface_addresses_before_names() {
        // --iface wins over --iface-regex.
        assert_eq!(pick(&["eth0"], &["^eth1$"]).0, choice(2, "198.18.0.1"));
        assert_eq!(pick(&["missing"], &["^eth1$"]).0, choice(3, "10.0.0.5"));
        // An address match on any interface beats a name match: lo's 127.0.0.1 ends in a
        // digit before eth0's name does.
        assert_eq!(pick(&[], &["[0-9]$"]).0, choice(1, "127.0.0.1"));
        assert_eq!(pick(&[], &["^198\\.18\\."]).0, choice(2, "198.18.0.1"));
        assert_eq!(pick(&[], &["^10\\.0\\.1\\."]).0, choice(3, "10.0.1.5"));
        // Unanchored, as Go's MatchString.
        assert_eq!(pick(&[], &["th1"]).0, choice(3, "10.0.0.5"));
        let (c, misses) = pick(&[], &["^wlan", "^ens", "^eth0$"]);
        assert_eq!(c, choice(2, "198.18.0.1"));
        assert_eq!(misses.len(), 2, "{misses:?}");
        assert_eq!(pick(&[], &["^nothing$"]).0, None);
    }

    #[test]
    fn bad_regex_is_an_error_naming_it() {
        let iface_regex = vec!["(".to_string()];
        let e = select(
            &Selectors {
                iface: &[],
                iface_regex: &iface_regex,
            },
            &snap(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("--iface-regex \"(\""));
    }
}
