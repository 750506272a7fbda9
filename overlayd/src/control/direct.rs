//! DirectRouting (net-conf `Backend.DirectRouting`), as Flannel's vxlan backend decides it
//! (pkg/backend/vxlan/vxlan_network.go handleSubnetEvents + pkg/ip/iface.go DirectRouting):
//! a peer whose public IP the kernel's route lookup reaches without a gateway (a directly
//! connected network) gets a plain route `podCIDR via <public IP>` and no neighbour and no
//! FDB entry, so nothing is encapsulated to it; every other peer keeps VXLAN.
//!
//! With IPv6 on, the same is decided for a peer's IPv6 address on its own (Flannel's
//! `v6DirectRoutingOK` from `ip.DirectRouting(PublicIPv6)`): a directly connected IPv6 peer
//! gets `IPv6 podCIDR via <public IPv6>` and no IPv6 neighbour or IPv6 FDB entry.
//!
//! Unlike flanneld, which decides once per lease event, the decision is cached per peer and
//! looked up again when the kernel announces a route change that is not ours (an address added
//! or removed on the underlay adds or removes its connected route), so a peer that moves
//! between the two is re-programmed; reconcile then removes the old route and neighbour.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use fdb_sync::Peer;
use tracing::{info, warn};

use crate::fdb::{Fdb, FdbHandle};
use crate::sys::netlink::{KernelEvent, Netlink, RouteTo};

/// Which peer VTEP addresses (either family) are directly routable: address -> the interface
/// that reaches it.
pub type DirectPeers = HashMap<IpAddr, u32>;

/// A peer's VTEP addresses: one per family it has.
fn vteps(p: &Peer) -> impl Iterator<Item = IpAddr> + '_ {
    p.v4.map(|v| IpAddr::V4(v.vtep_ip))
        .into_iter()
        .chain(p.v6.map(|v| IpAddr::V6(v.vtep_ip)))
}

/// The interface that reaches a peer directly, from the kernel's route lookup for its public
/// IP: Flannel's rule (one route, without a gateway), and not through our own device, and a
/// real unicast route (a local or unreachable route has no gateway either).
#[must_use]
pub fn direct_oif(route: Option<RouteTo>, tap_index: u32) -> Option<u32> {
    let r = route?;
    if r.unicast && r.gateway.is_none() && r.oif != Some(tap_index) {
        r.oif
    } else {
        None
    }
}

pub struct DirectRouting {
    enabled: bool,
    /// Every peer VTEP's last lookup: `Some(oif)` when directly connected.
    cache: HashMap<IpAddr, Option<u32>>,
    direct: DirectPeers,
    /// Look every peer up again at the next `evaluate`.
    stale: bool,
}

impl DirectRouting {
    #[must_use]
    pub fn new(enabled: bool) -> Self {
        DirectRouting {
            enabled,
            cache: HashMap::new(),
            direct: DirectPeers::new(),
            stale: false,
        }
    }

    /// The peers that get a direct route (empty when DirectRouting is off).
    #[must_use]
    pub fn peers(&self) -> &DirectPeers {
        &self.direct
    }

    /// Whether a kernel notification may change the decision: a route added or removed that
    /// is not one of ours (connected routes come and go with underlay addresses).
    pub fn note_event(&mut self, ev: KernelEvent) -> bool {
        if self.enabled && matches!(ev, KernelEvent::Route { ours: false, .. }) {
            self.stale = true;
        }
        self.stale
    }

    /// Notifications were lost: decide again for everyone.
    pub fn mark_stale(&mut self) {
        self.stale = self.enabled;
    }

    /// Looks up the peers not decided yet (all of them after a route change) and returns
    /// whether the direct set changed. A failed lookup keeps VXLAN for that peer.
    pub async fn evaluate(&mut self, nl: &Netlink, peers: &[Peer], tap_index: u32) -> bool {
        if !self.enabled {
            return false;
        }
        let refresh = std::mem::take(&mut self.stale);
        let current: std::collections::HashSet<IpAddr> = peers.iter().flat_map(vteps).collect();
        self.cache.retain(|ip, _| current.contains(ip));
        for p in peers {
            for ip in vteps(p) {
                if !refresh && self.cache.contains_key(&ip) {
                    continue;
                }
                let oif = match nl.route_to(ip).await {
                    Ok(r) => direct_oif(r, tap_index),
                    Err(e) => {
                        warn!(peer = %p.name, vtep = %ip, error = %e, "route lookup for DirectRouting failed; keeping VXLAN for this peer");
                        None
                    }
                };
                self.cache.insert(ip, oif);
            }
        }
        let next: DirectPeers = peers
            .iter()
            .flat_map(vteps)
            .filter_map(|ip| self.cache.get(&ip).copied().flatten().map(|o| (ip, o)))
            .collect();
        if next == self.direct {
            return false;
        }
        for p in peers {
            for ip in vteps(p) {
                let (was, now) = (self.direct.contains_key(&ip), next.contains_key(&ip));
                if was != now {
                    info!(peer = %p.name, vtep = %ip, direct = now, "DirectRouting: peer {}", if now { "is directly connected: plain route, no VXLAN" } else { "is not directly connected: VXLAN" });
                }
            }
        }
        self.direct = next;
        true
    }

    /// Makes the FDB snapshot agree with the direct set: no entry (so no encapsulation) for a
    /// direct peer, an entry for every other. Rebuilds only when they disagree.
    pub fn sync_fdb(&self, fdb: &FdbHandle, peers: &[Peer], port: u16) {
        if !self.enabled {
            return;
        }
        let cur = fdb.load();
        let agrees = peers.iter().all(|p| {
            p.v4.is_none_or(|v| {
                cur.lookup(&v.vtep_mac.0).is_some()
                    != self.direct.contains_key(&IpAddr::V4(v.vtep_ip))
            }) && p.v6.is_none_or(|v| {
                cur.lookup_v6(&v.vtep_mac.0).is_some()
                    != self.direct.contains_key(&IpAddr::V6(v.vtep_ip))
            })
        });
        if agrees {
            return;
        }
        let next =
            Fdb::from_peers_direct(&super::model::peers(peers), port, Some(&cur), &self.direct);
        fdb.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_only_for_a_unicast_route_without_gateway_off_our_device() {
        let r = |oif, gateway, unicast| {
            Some(RouteTo {
                oif: Some(oif),
                gateway,
                unicast,
            })
        };
        let gw = Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 254)));
        assert_eq!(direct_oif(r(2, None, true), 9), Some(2), "connected");
        assert_eq!(direct_oif(r(2, gw, true), 9), None, "via a router");
        assert_eq!(direct_oif(r(1, None, false), 9), None, "local address");
        assert_eq!(direct_oif(r(9, None, true), 9), None, "through the TAP");
        assert_eq!(direct_oif(None, 9), None, "no route");
    }

    #[test]
    fn only_foreign_route_changes_make_the_decision_stale() {
        let mut d = DirectRouting::new(true);
        let ours = KernelEvent::Route {
            oif: Some(2),
            ours: true,
            deleted: false,
        };
        assert!(!d.note_event(ours));
        assert!(!d.note_event(KernelEvent::Neighbour {
            index: 2,
            deleted: false
        }));
        assert!(d.note_event(KernelEvent::Route {
            oif: Some(2),
            ours: false,
            deleted: true
        }));
        let mut off = DirectRouting::new(false);
        assert!(!off.note_event(KernelEvent::Route {
            oif: Some(2),
            ours: false,
            deleted: true
        }));
        off.mark_stale();
        assert!(off.peers().is_empty());
    }
}
