//! The underlay: which interface and addresses VXLAN leaves from, chosen as flanneld chooses
//! them (main.go, pkg/ipmatch LookupExtIface, IPv4 and dual stack).
//!
//! Without `--iface`, `--iface-regex` and `--iface-can-reach`: the interface holding
//! `--public-ip` (else, with IPv6, the one holding `--public-ipv6`), else the interface of the
//! default route; with IPv6 on, the IPv6 default route must leave through the same interface,
//! as flanneld requires. With them: each `--iface` in order (an address selects the interface
//! holding it and that address, a name selects the interface and its first address), then
//! each `--iface-regex` (first against every interface's addresses, then against every name),
//! then `--iface-can-reach` (the interface and source address of `ip route get`); the first
//! match wins. With IPv6 on, an interface matches only when it also has an IPv6 address (a
//! regex must match one of each family on the same interface), as flanneld's dual stack.
//! `--public-ip` / `--public-ipv6`, when given, are the addresses announced and sent from,
//! whatever interface was chosen.
//!
//! IPv6-only (`EnableIPv4: false`, flanneld's ipv6 stack): no IPv4 address is looked for or
//! needed. Without the selectors the interface is the one holding `--public-ipv6`, else the
//! one of the IPv6 default route; `--iface` takes a name or an IPv6 address (an IPv4 one is a
//! miss), `--iface-regex` is matched against the IPv6 addresses, then the names, and
//! `--iface-can-reach` takes an address of either family; the VTEP address is then the
//! interface's first usable IPv6 one, as flanneld's (which ignores the route's source
//! address there too). `--public-ip` is refused: there is no IPv4 VTEP.
//!
//! The IPv6 address is the interface's first usable one in Flannel's order (pkg/ip
//! GetInterfaceIP6Addrs): not deprecated, global before anything else, configured by hand
//! before autoconfigured, stable before temporary. Unlike flanneld, which falls back to a
//! link-local address, overlayd takes global unicast (ULA included) only: a link-local VTEP
//! has no meaning off its link and peers refuse it by default (`--allow-link-local-vtep`).
//!
//! In Kubernetes mode (and with a nodes file, whose Nodes carry annotations too) the own
//! Node's `node-public-ip` / `node-public-ipv6` annotations, when set, replace `--public-ip` /
//! `--public-ipv6` before any of this, as flanneld's `GetStoredPublicIP` does
//! ([`apply_stored_public_ip`]).
//!
//! The matching itself is I/O-free ([`select`] over a [`Snapshot`]); only gathering the
//! snapshot and the route lookups touch netlink.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context, Result};

use super::Options;
use crate::sys::netlink::{Addr6, Link, Netlink};

/// The underlay: where VXLAN leaves and arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub iface: String,
    /// The IPv4 VTEP address (`public-ip`); `None` in an IPv6-only cluster.
    pub ip: Option<Ipv4Addr>,
    /// The IPv6 VTEP address (`public-ipv6`) when IPv6 is enabled: inner IPv6 travels over
    /// outer IPv6 from and to it.
    pub ip6: Option<Ipv6Addr>,
    pub mtu: u32,
}

/// One interface with its addresses.
#[derive(Debug, Clone)]
pub struct Iface {
    pub link: Link,
    pub v4: Vec<Ipv4Addr>,
    /// Every IPv6 address, unfiltered (see [`usable_v6`]).
    pub v6: Vec<Addr6>,
}

impl Iface {
    fn first_v6(&self) -> Option<Ipv6Addr> {
        usable_v6(&self.v6).first().copied()
    }
}

/// The links and their addresses, in index order.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub ifaces: Vec<Iface>,
}

/// What the interface flags ask for (flanneld's opts.iface, ifaceRegex, ifaceCanReach), and
/// which families need an address (flanneld's ip stack: EnableIPv4 and EnableIPv6; at least
/// one is on, as net-conf.json requires).
#[derive(Debug, Clone, Default)]
pub struct Selectors<'a> {
    pub iface: &'a [String],
    pub iface_regex: &'a [String],
    pub ipv4: bool,
    pub ipv6: bool,
}

/// A chosen interface and the addresses found with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub index: u32,
    pub addr: Option<Ipv4Addr>,
    pub addr6: Option<Ipv6Addr>,
}

/// Whether `ip` may be a VTEP address found on an interface: global unicast in Go's sense
/// (not unspecified, loopback, multicast or link-local; unique-local counts), and not
/// IPv4-mapped.
fn global_unicast_v6(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.segments()[0] & 0xffc0 == 0xfe80
        || ip.to_ipv4_mapped().is_some())
}

/// The usable IPv6 addresses of an interface in Flannel's preference order: not deprecated,
/// global unicast only, manually configured (permanent) first, then non-temporary first; the
/// sort is stable, so the kernel's order decides the rest.
#[must_use]
pub fn usable_v6(addrs: &[Addr6]) -> Vec<Ipv6Addr> {
    let mut v: Vec<&Addr6> = addrs
        .iter()
        .filter(|a| !a.deprecated && global_unicast_v6(a.ip))
        .collect();
    v.sort_by_key(|a| (!a.permanent, a.temporary));
    v.into_iter().map(|a| a.ip).collect()
}

/// Completes a choice for `ipv6`: the interface's first usable IPv6 address when none was
/// chosen with it; `Err` (a miss) when it has none.
fn with_v6(c: Choice, i: &Iface, ipv6: bool) -> Result<Choice, String> {
    if !ipv6 || c.addr6.is_some() {
        return Ok(c);
    }
    match i.first_v6() {
        Some(a) => Ok(Choice {
            addr6: Some(a),
            ..c
        }),
        None => Err(format!(
            "{} has no global IPv6 address (EnableIPv6 is true)",
            i.link.name
        )),
    }
}

/// An interface chosen by its name (`--iface NAME`, a `--iface-regex` matching a name): its
/// first IPv4 address (with IPv4 on), and with IPv6 on its first usable IPv6 one. `None` when
/// IPv4 is on and it has no IPv4 address (the caller says how it was chosen).
fn by_name(i: &Iface, sel: &Selectors<'_>) -> Option<Result<Choice, String>> {
    let addr = if sel.ipv4 { Some(*i.v4.first()?) } else { None };
    let c = Choice {
        index: i.link.index,
        addr,
        addr6: None,
    };
    Some(with_v6(c, i, sel.ipv6))
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
        let found = if let Ok(ip) = want.parse::<IpAddr>() {
            match ip {
                IpAddr::V4(_) if !sel.ipv4 => Err(
                    "an IPv4 address, but EnableIPv4 is false in net-conf.json (an IPv6-only cluster): give the interface's name or its IPv6 address".into(),
                ),
                IpAddr::V4(ip) => match snap.ifaces.iter().find(|i| i.v4.contains(&ip)) {
                    Some(i) => with_v6(
                        Choice {
                            index: i.link.index,
                            addr: Some(ip),
                            addr6: None,
                        },
                        i,
                        sel.ipv6,
                    ),
                    None => Err("no interface has this address".into()),
                },
                IpAddr::V6(_) if !sel.ipv6 => {
                    Err("an IPv6 address, but EnableIPv6 is false in net-conf.json".into())
                }
                IpAddr::V6(ip) => {
                    match snap.ifaces.iter().find(|i| i.v6.iter().any(|a| a.ip == ip)) {
                        Some(i) if !sel.ipv4 => Ok(Choice {
                            index: i.link.index,
                            addr: None,
                            addr6: Some(ip),
                        }),
                        Some(i) => match i.v4.first() {
                            Some(v4) => Ok(Choice {
                                index: i.link.index,
                                addr: Some(*v4),
                                addr6: Some(ip),
                            }),
                            None => Err(format!("{} has no IPv4 address", i.link.name)),
                        },
                        None => Err("no interface has this address".into()),
                    }
                }
            }
        } else {
            match snap.ifaces.iter().find(|i| i.link.name == *want) {
                Some(i) => by_name(i, sel)
                    .unwrap_or_else(|| Err("the interface has no IPv4 address".into())),
                None => Err("no such interface".into()),
            }
        };
        match found {
            Ok(c) => return Ok(Some(c)),
            Err(why) => misses.push(format!("--iface {want}: {why}")),
        }
    }
    for pattern in sel.iface_regex {
        let re = regex::Regex::new(pattern)
            .with_context(|| format!("--iface-regex {pattern:?} is not a valid regex"))?;
        // Flannel checks every interface's addresses first (with IPv6: an address of each
        // family on the same interface; IPv6-only: the IPv6 addresses), then the names.
        let by_addr = snap.ifaces.iter().find_map(|i| {
            if !sel.ipv4 {
                let a6 = usable_v6(&i.v6)
                    .into_iter()
                    .find(|a| re.is_match(&a.to_string()))?;
                return Some(Choice {
                    index: i.link.index,
                    addr: None,
                    addr6: Some(a6),
                });
            }
            let a = i.v4.iter().find(|a| re.is_match(&a.to_string()))?;
            let a6 = if sel.ipv6 {
                Some(
                    usable_v6(&i.v6)
                        .into_iter()
                        .find(|a| re.is_match(&a.to_string()))?,
                )
            } else {
                None
            };
            Some(Choice {
                index: i.link.index,
                addr: Some(*a),
                addr6: a6,
            })
        });
        if by_addr.is_some() {
            return Ok(by_addr);
        }
        let found = match snap.ifaces.iter().find(|i| re.is_match(&i.link.name)) {
            Some(i) => by_name(i, sel).unwrap_or_else(|| {
                Err(format!(
                    "matched {}, which has no IPv4 address",
                    i.link.name
                ))
            }),
            None => Err(format!(
                "matches no interface name or {} address",
                match (sel.ipv4, sel.ipv6) {
                    (true, true) => "IPv4+IPv6",
                    (true, false) => "IPv4",
                    (false, _) => "IPv6",
                }
            )),
        };
        match found {
            Ok(c) => return Ok(Some(c)),
            Err(why) => misses.push(format!("--iface-regex {pattern}: {why}")),
        }
    }
    Ok(None)
}

async fn snapshot(nl: &Netlink) -> Result<Snapshot> {
    let v6 = nl.all_ipv6_addresses().await?;
    let mut ifaces = Vec::new();
    for l in nl.links().await? {
        let v4 = nl.ipv4_addresses(l.index).await?;
        let v6 = v6
            .iter()
            .filter(|(i, _)| *i == l.index)
            .map(|(_, a)| *a)
            .collect();
        ifaces.push(Iface { link: l, v4, v6 });
    }
    Ok(Snapshot { ifaces })
}

/// Replaces `--public-ip` / `--public-ipv6` (`public_ip`, `public_ipv6`) with the own Node's `node-public-ip` /
/// `node-public-ipv6` annotations when set, as flanneld's main.go does with
/// `GetStoredPublicIP` before it looks for the interface. Returns a description of each one
/// used (for logs and error context). A value that is not an address of its family is an
/// error naming the annotation (flanneld fails too: LookupExtIface cannot use it); so is an
/// IPv4 `node-public-ip` with `EnableIPv4: false`, as such a `--public-ip` is (an IPv6 one is
/// taken, as `--public-ip`, see [`find_underlay`]). `node-public-ipv6` without `EnableIPv6` is
/// ignored, as `--public-ipv6` is.
pub fn apply_stored_public_ip(
    public_ip: &mut Option<IpAddr>,
    public_ipv6: &mut Option<Ipv6Addr>,
    stored: &fdb_sync::StoredPublicIp,
    ipv4: bool,
    ipv6: bool,
) -> Result<Vec<String>> {
    let mut used = Vec::new();
    let parse = |(key, value): &(String, String), flag: &str| -> Result<IpAddr> {
        value.parse::<IpAddr>().map_err(|e| {
            anyhow::anyhow!(
                "this node's Node annotation {key} = {value:?} is not an IP address ({e}); it replaces {flag} (as in flanneld): fix or remove the annotation"
            )
        })
    };
    if let Some(kv @ (key, value)) = &stored.v4 {
        match parse(kv, "--public-ip")? {
            IpAddr::V6(_) if ipv4 => bail!(
                "this node's Node annotation {key} = {value:?} is an IPv6 address, but it replaces --public-ip (IPv4, EnableIPv4 is true): put it in the node-public-ipv6 annotation instead"
            ),
            IpAddr::V4(_) if !ipv4 => bail!(
                "this node's Node annotation {key} = {value:?} sets an IPv4 public address, but EnableIPv4 is false in net-conf.json (an IPv6-only cluster has no IPv4 VTEP): remove the annotation"
            ),
            a => {
                tracing::info!(annotation = %key, address = %a, replaces = ?public_ip, "public IP taken from this node's annotation (in place of --public-ip)");
                *public_ip = Some(a);
                used.push(format!("public IP {a} comes from its Node's annotation {key}"));
            }
        }
    }
    if let Some(kv @ (key, value)) = &stored.v6 {
        match parse(kv, "--public-ipv6")? {
            IpAddr::V4(_) => bail!(
                "this node's Node annotation {key} = {value:?} is an IPv4 address, but it replaces --public-ipv6 (IPv6): put it in the node-public-ip annotation instead"
            ),
            IpAddr::V6(a) if !ipv6 => {
                tracing::info!(annotation = %key, address = %a, "ignoring this node's IPv6 public IP annotation: EnableIPv6 is false");
            }
            IpAddr::V6(a) => {
                tracing::info!(annotation = %key, address = %a, replaces = ?public_ipv6, "public IPv6 taken from this node's annotation (in place of --public-ipv6)");
                *public_ipv6 = Some(a);
                used.push(format!("public IPv6 {a} comes from its Node's annotation {key}"));
            }
        }
    }
    Ok(used)
}

/// Finds the underlay as flanneld does (see the module documentation); `ipv4` / `ipv6` when
/// EnableIPv4 / EnableIPv6 is true (a VTEP address of that family is then required).
pub async fn find_underlay(
    nl: &Netlink,
    opts: &Options,
    ipv4: bool,
    ipv6: bool,
) -> Result<Underlay> {
    // `--public-ip` is the IPv4 VTEP; in an IPv6-only cluster flanneld also takes an IPv6 one
    // (its ipv6 stack looks the interface up by it, and it is the IPv6 VTEP unless
    // --public-ipv6 is given; with --iface* flags it is not looked at).
    let (public_ip, public_ip_as_v6) = match (ipv4, opts.public_ip) {
        (_, None) => (None, None),
        (true, Some(IpAddr::V4(a))) => (Some(a), None),
        (false, Some(IpAddr::V6(a))) => (None, Some(a)),
        (true, Some(IpAddr::V6(a))) => bail!(
            "--public-ip {a} is an IPv6 address, but EnableIPv4 is true in net-conf.json: give --public-ip this node's IPv4 address{}",
            if ipv6 { " and this one to --public-ipv6" } else { " (or set EnableIPv4 to false for an IPv6-only cluster)" }
        ),
        (false, Some(IpAddr::V4(a))) => bail!(
            "--public-ip {a} is an IPv4 address, but EnableIPv4 is false in net-conf.json (an IPv6-only cluster has no IPv4 VTEP): drop --public-ip and pass --public-ipv6 if the IPv6 address needs setting"
        ),
    };
    let explicit =
        !opts.iface.is_empty() || !opts.iface_regex.is_empty() || opts.iface_can_reach.is_some();
    if let (true, Some(a)) = (explicit, public_ip_as_v6) {
        tracing::warn!(public_ip = %a, "--public-ip is not used with --iface/--iface-regex/--iface-can-reach in an IPv6-only cluster (as in flanneld): pass --public-ipv6 to set the IPv6 VTEP address");
    }
    let snap = snapshot(nl).await?;
    let describe = || -> String {
        snap.ifaces
            .iter()
            .map(|i| {
                let mut a: Vec<String> = if ipv4 {
                    i.v4.iter().map(ToString::to_string).collect()
                } else {
                    Vec::new()
                };
                if ipv6 {
                    a.extend(i.v6.iter().map(|a| a.ip.to_string()));
                }
                format!("{}:[{}]", i.link.name, a.join(" "))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let choice = if explicit {
        let mut misses = Vec::new();
        let sel = Selectors {
            iface: &opts.iface,
            iface_regex: &opts.iface_regex,
            ipv4,
            ipv6,
        };
        let mut choice = select(&sel, &snap, &mut misses)?;
        if choice.is_none() {
            match opts.iface_can_reach {
                Some(dst @ IpAddr::V6(_)) if ipv4 => misses.push(format!(
                    "--iface-can-reach {dst}: give an IPv4 address (EnableIPv4 is true){}, or select the interface with --iface (or set EnableIPv4 to false for an IPv6-only cluster)",
                    if ipv6 { ": the interface found for it carries the IPv6 underlay too" } else { "" }
                )),
                Some(dst) => match nl.route_get(dst).await? {
                    // IPv6-only: the interface's first IPv6 address, not the route's source
                    // (flanneld's LookupExtIface does the same).
                    Some((index, src)) => {
                        choice = Some(Choice {
                            index,
                            addr: match src {
                                Some(IpAddr::V4(a)) if ipv4 => Some(a),
                                _ => None,
                            },
                            addr6: None,
                        });
                    }
                    None => misses.push(format!("--iface-can-reach {dst}: no route to it")),
                },
                None => {}
            }
        }
        match choice {
            Some(c) => c,
            None => bail!(
                "no interface matches the --iface/--iface-regex/--iface-can-reach given ({}); interfaces here: {}",
                misses.join("; "),
                describe()
            ),
        }
    } else {
        let index = match (
            public_ip.map(IpAddr::V4).or(public_ip_as_v6.map(IpAddr::V6)),
            opts.public_ipv6.filter(|_| ipv6),
        ) {
            (Some(ip), _) => nl.link_with_address(ip).await?.with_context(|| {
                format!("--public-ip {ip} is not assigned to any interface here: pass --iface too")
            })?,
            (None, Some(ip)) => nl.link_with_address(ip).await?.with_context(|| {
                format!(
                    "--public-ipv6 {ip} is not assigned to any interface here: pass --iface too"
                )
            })?,
            (None, None) if !ipv4 => nl.default_route_link_v6().await?.context(
                "no IPv6 default route to pick the underlay interface from (EnableIPv4 is false: an IPv6-only node): pass --iface or --public-ipv6",
            )?,
            (None, None) => {
                let v4 = nl
                    .default_route_link()
                    .await?
                    .context("no IPv4 default route to pick the underlay interface from: pass --iface or --public-ip")?;
                if ipv6 {
                    let v6 = nl.default_route_link_v6().await?.context(
                        "no IPv6 default route to pick the underlay interface from (EnableIPv6 is true): pass --iface or --public-ipv6",
                    )?;
                    if v6 != v4 {
                        let name = |ix: u32| {
                            snap.ifaces
                                .iter()
                                .find(|i| i.link.index == ix)
                                .map_or_else(|| format!("#{ix}"), |i| i.link.name.clone())
                        };
                        bail!(
                            "the IPv6 default route leaves through {} but the IPv4 one through {}; both families must share the underlay interface (as in flanneld): pass --iface",
                            name(v6),
                            name(v4)
                        );
                    }
                }
                v4
            }
        };
        Choice {
            index,
            addr: public_ip,
            addr6: opts.public_ipv6.or(public_ip_as_v6),
        }
    };
    let link = nl
        .link_by_index(choice.index)
        .await?
        .with_context(|| format!("underlay interface #{} vanished", choice.index))?;
    if link.mtu == 0 {
        bail!("failed to determine the MTU of interface {}", link.name);
    }
    let ip = match (ipv4, public_ip, choice.addr) {
        (false, _, _) => None,
        (true, Some(ip), _) | (true, None, Some(ip)) => Some(ip),
        (true, None, None) => Some(
            *nl.ipv4_addresses(choice.index)
                .await?
                .first()
                .with_context(|| {
                    format!(
                        "interface {} has no IPv4 address: pass --public-ip (or set EnableIPv4 to false for an IPv6-only cluster)",
                        link.name
                    )
                })?,
        ),
    };
    let ip6 = if ipv6 {
        let found = choice.addr6.or_else(|| {
            snap.ifaces
                .iter()
                .find(|i| i.link.index == choice.index)
                .and_then(Iface::first_v6)
        });
        Some(opts.public_ipv6.or(found).with_context(|| {
            let have: Vec<String> = snap
                .ifaces
                .iter()
                .filter(|i| i.link.index == choice.index)
                .flat_map(|i| i.v6.iter().map(|a| a.ip.to_string()))
                .collect();
            format!(
                "EnableIPv6 is true{}, but underlay interface {} has no usable IPv6 address (global unicast, not deprecated; it has [{}]): add one, or pass --public-ipv6",
                if ipv4 { "" } else { " and EnableIPv4 false" },
                link.name,
                have.join(" ")
            )
        })?)
    } else {
        None
    };
    Ok(Underlay {
        iface: link.name,
        ip,
        ip6,
        mtu: link.mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// node-public-ip(v6) replace the flags as in flanneld; bad values name the annotation.
    #[test]
    fn stored_public_ip_replaces_the_flags() {
        let kv = |k: &str, v: &str| Some((k.to_string(), v.to_string()));
        let k4 = "flannel.alpha.coreos.com/node-public-ip";
        let k6 = "flannel.alpha.coreos.com/node-public-ipv6";
        let apply = |s: &fdb_sync::StoredPublicIp, ipv4: bool, ipv6: bool| {
            let (mut p4, mut p6) = (Some(IpAddr::from([192, 0, 2, 1])), None);
            apply_stored_public_ip(&mut p4, &mut p6, s, ipv4, ipv6).map(|u| (p4, p6, u))
        };
        let none = fdb_sync::StoredPublicIp::default();
        let (p4, p6, used) = apply(&none, true, true).unwrap();
        assert_eq!(
            (p4, p6, used.len()),
            (Some(IpAddr::from([192, 0, 2, 1])), None, 0)
        );

        let both = fdb_sync::StoredPublicIp {
            v4: kv(k4, "198.18.0.101"),
            v6: kv(k6, "fd00:18::101"),
        };
        let (p4, p6, used) = apply(&both, true, true).unwrap();
        assert_eq!(p4, Some(IpAddr::from([198, 18, 0, 101])));
        assert_eq!(p6, Some("fd00:18::101".parse().unwrap()));
        assert!(used[0].contains(k4) && used[1].contains(k6), "{used:?}");
        // Without EnableIPv6 node-public-ipv6 is ignored, as --public-ipv6 is.
        let (p4, p6, used) = apply(&both, true, false).unwrap();
        assert_eq!(
            (p4, p6, used.len()),
            (Some(IpAddr::from([198, 18, 0, 101])), None, 1)
        );
        // IPv6-only: an IPv4 node-public-ip is refused, as such a --public-ip is; an IPv6 one
        // replaces --public-ip (flanneld's ipv6 stack takes it).
        let e = apply(&both, false, true).unwrap_err().to_string();
        assert!(e.contains(k4) && e.contains("EnableIPv4 is false"), "{e}");
        let v6_only = fdb_sync::StoredPublicIp {
            v4: None,
            v6: kv(k6, "fd00:18::101"),
        };
        let (_, p6, _) = apply(&v6_only, false, true).unwrap();
        assert_eq!(p6, Some("fd00:18::101".parse().unwrap()));
        let v6_in_v4_key = fdb_sync::StoredPublicIp {
            v4: kv(k4, "fd00:18::102"),
            v6: None,
        };
        let (p4, p6, used) = apply(&v6_in_v4_key, false, true).unwrap();
        assert_eq!((p4, p6), (Some("fd00:18::102".parse().unwrap()), None));
        assert!(used[0].contains(k4), "{used:?}");

        for (s, key, value, what) in [
            (
                fdb_sync::StoredPublicIp {
                    v4: kv(k4, "10.0.0.300"),
                    v6: None,
                },
                k4,
                "10.0.0.300",
                "not an IP address",
            ),
            (
                fdb_sync::StoredPublicIp {
                    v4: kv(k4, "fd00::1"),
                    v6: None,
                },
                k4,
                "fd00::1",
                "is an IPv6 address",
            ),
            (
                fdb_sync::StoredPublicIp {
                    v4: None,
                    v6: kv(k6, "eth0"),
                },
                k6,
                "eth0",
                "not an IP address",
            ),
            (
                fdb_sync::StoredPublicIp {
                    v4: None,
                    v6: kv(k6, "10.0.0.1"),
                },
                k6,
                "10.0.0.1",
                "is an IPv4 address",
            ),
        ] {
            // A bad value is an error whatever the families (flanneld's LookupExtIface fails).
            for ipv6 in [true, false] {
                let e = apply(&s, true, ipv6).unwrap_err().to_string();
                assert!(
                    e.contains(key) && e.contains(&format!("{value:?}")) && e.contains(what),
                    "{e}"
                );
            }
        }
    }

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

    fn a6(ip: &str, permanent: bool, temporary: bool, deprecated: bool) -> Addr6 {
        Addr6 {
            ip: ip.parse().unwrap(),
            permanent,
            temporary,
            deprecated,
        }
    }

    fn iface(index: u32, name: &str, v4: &[&str], v6: Vec<Addr6>) -> Iface {
        Iface {
            link: link(index, name),
            v4: v4.iter().map(|a| a.parse().unwrap()).collect(),
            v6,
        }
    }

    fn snap() -> Snapshot {
        Snapshot {
            ifaces: vec![
                iface(1, "lo", &["127.0.0.1"], vec![a6("::1", true, false, false)]),
                iface(
                    2,
                    "eth0",
                    &["198.18.0.1"],
                    vec![
                        a6("fe80::1", true, false, false),
                        a6("2001:db8::99", false, true, false),
                        a6("2001:db8::1", false, false, false),
                        a6("fd00:18::1", true, false, false),
                    ],
                ),
                iface(3, "eth1", &["10.0.0.5", "10.0.1.5"], vec![]),
                iface(4, "ens5", &[], vec![a6("fd00:5::1", true, false, false)]),
                iface(
                    5,
                    "eth2",
                    &["10.0.2.5"],
                    vec![
                        a6("fd00:2::5", true, false, true),
                        a6("fe80::5", true, false, false),
                    ],
                ),
            ],
        }
    }

    fn pick6(iface: &[&str], regex: &[&str], ipv6: bool) -> (Option<Choice>, Vec<String>) {
        pick_for(iface, regex, true, ipv6)
    }

    fn choice6(index: u32, addr: &str, addr6: &str) -> Option<Choice> {
        Some(Choice {
            index,
            addr: Some(addr.parse().unwrap()),
            addr6: Some(addr6.parse().unwrap()),
        })
    }

    #[test]
    fn ipv6_address_is_flannels_first_global_permanent_stable_one() {
        let s = snap();
        // Hand-configured before autoconfigured, stable before temporary; never link-local.
        assert_eq!(
            usable_v6(&s.ifaces[1].v6),
            vec![
                "fd00:18::1".parse::<Ipv6Addr>().unwrap(),
                "2001:db8::1".parse().unwrap(),
                "2001:db8::99".parse().unwrap()
            ]
        );
        // Deprecated and link-local ones are not usable; loopback neither.
        assert!(usable_v6(&s.ifaces[4].v6).is_empty());
        assert!(usable_v6(&s.ifaces[0].v6).is_empty());
    }

    #[test]
    fn dual_stack_selection_needs_both_families_on_one_interface() {
        // A name: its first IPv4 and its first usable IPv6 address.
        assert_eq!(
            pick6(&["eth0"], &[], true).0,
            choice6(2, "198.18.0.1", "fd00:18::1")
        );
        // An IPv6 address selects its interface and that address, with the first IPv4.
        assert_eq!(
            pick6(&["2001:db8::99"], &[], true).0,
            choice6(2, "198.18.0.1", "2001:db8::99")
        );
        // An IPv4 address: that address and the interface's IPv6 one.
        assert_eq!(
            pick6(&["198.18.0.1"], &[], true).0,
            choice6(2, "198.18.0.1", "fd00:18::1")
        );
        // Interfaces without a usable IPv6 address (eth1: none, eth2: deprecated and
        // link-local) or without IPv4 (ens5) are misses; the next --iface wins.
        let (c, misses) = pick6(&["eth1", "eth2", "ens5", "fd00:5::1", "eth0"], &[], true);
        assert_eq!(c, choice6(2, "198.18.0.1", "fd00:18::1"));
        assert_eq!(misses.len(), 4, "{misses:?}");
        assert!(
            misses[0].contains("eth1 has no global IPv6 address"),
            "{misses:?}"
        );
        assert!(
            misses[1].contains("eth2 has no global IPv6 address"),
            "{misses:?}"
        );
        assert!(misses[2].contains("no IPv4 address"), "{misses:?}");
        assert!(misses[3].contains("ens5 has no IPv4 address"), "{misses:?}");
        // Without EnableIPv6 an IPv6 --iface is a miss that says why.
        let (c, misses) = pick6(&["fd00:18::1"], &[], false);
        assert_eq!(c, None);
        assert!(misses[0].contains("EnableIPv6 is false"), "{misses:?}");
        // Regex: an address of each family must match on the same interface...
        assert_eq!(
            pick6(&[], &["^(198\\.18|fd00:18)"], true).0,
            choice6(2, "198.18.0.1", "fd00:18::1")
        );
        // ...or the name, whose interface then needs an IPv6 address.
        assert_eq!(
            pick6(&[], &["^10\\.0\\.0", "^eth0$"], true).0,
            choice6(2, "198.18.0.1", "fd00:18::1")
        );
        let (c, misses) = pick6(&[], &["^eth1$"], true);
        assert_eq!(c, None);
        assert!(
            misses[0].contains("eth1 has no global IPv6 address"),
            "{misses:?}"
        );
    }

    fn pick_v6_only(iface: &[&str], regex: &[&str]) -> (Option<Choice>, Vec<String>) {
        pick_for(iface, regex, false, true)
    }

    fn only6(index: u32, addr6: &str) -> Option<Choice> {
        Some(Choice {
            index,
            addr: None,
            addr6: Some(addr6.parse().unwrap()),
        })
    }

    /// flanneld's ipv6 stack: no IPv4 address looked for, an interface without one is fine.
    #[test]
    fn ipv6_only_selection_needs_no_ipv4() {
        // ens5 has only IPv6: by name and by address.
        assert_eq!(pick_v6_only(&["ens5"], &[]).0, only6(4, "fd00:5::1"));
        assert_eq!(pick_v6_only(&["fd00:5::1"], &[]).0, only6(4, "fd00:5::1"));
        // A name gives the first usable IPv6 address in Flannel's order.
        assert_eq!(pick_v6_only(&["eth0"], &[]).0, only6(2, "fd00:18::1"));
        assert_eq!(
            pick_v6_only(&["2001:db8::99"], &[]).0,
            only6(2, "2001:db8::99")
        );
        // An IPv4 address is a miss that says why; so is an interface without usable IPv6.
        let (c, misses) = pick_v6_only(&["198.18.0.1", "eth1", "eth2", "ens5"], &[]);
        assert_eq!(c, only6(4, "fd00:5::1"));
        assert_eq!(misses.len(), 3, "{misses:?}");
        assert!(misses[0].contains("EnableIPv4 is false"), "{misses:?}");
        assert!(
            misses[1].contains("eth1 has no global IPv6 address"),
            "{misses:?}"
        );
        assert!(
            misses[2].contains("eth2 has no global IPv6 address"),
            "{misses:?}"
        );
        // Regex: IPv6 addresses first (never link-local or deprecated), then names.
        assert_eq!(pick_v6_only(&[], &["^fd00:5:"]).0, only6(4, "fd00:5::1"));
        assert_eq!(pick_v6_only(&[], &["^2001:"]).0, only6(2, "2001:db8::1"));
        assert_eq!(pick_v6_only(&[], &["^ens"]).0, only6(4, "fd00:5::1"));
        // An IPv4 pattern matches no IPv6 address: only a name could match.
        let (c, misses) = pick_v6_only(&[], &["^10\\.0\\.", "^fe80"]);
        assert_eq!(c, None);
        assert!(
            misses[0].contains("no interface name or IPv6 address"),
            "{misses:?}"
        );
        assert_eq!(misses.len(), 2, "{misses:?}");
    }

    fn pick(iface: &[&str], regex: &[&str]) -> (Option<Choice>, Vec<String>) {
        pick_for(iface, regex, true, false)
    }

    /// `select` over `snap()` with these flags and families.
    fn pick_for(
        iface: &[&str],
        regex: &[&str],
        ipv4: bool,
        ipv6: bool,
    ) -> (Option<Choice>, Vec<String>) {
        let iface: Vec<String> = iface.iter().map(|s| (*s).to_string()).collect();
        let iface_regex: Vec<String> = regex.iter().map(|s| (*s).to_string()).collect();
        let mut misses = Vec::new();
        let c = select(
            &Selectors {
                iface: &iface,
                iface_regex: &iface_regex,
                ipv4,
                ipv6,
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
            addr6: None,
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
                ipv4: true,
                ipv6: false,
            },
            &snap(),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("--iface-regex \"(\""));
    }
}
