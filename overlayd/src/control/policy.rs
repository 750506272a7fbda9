//! What this node knows that Node objects do not, for peer validation
//! ([`fdb_sync::PeerPolicy`]): the cluster Network, the node's own addresses and its underlay
//! subnets. Read from the kernel at start and again before each new node-source state is
//! applied, so an address added later is protected too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fdb_sync::{ClusterState, PeerPolicy};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::sys::netlink::Netlink;

/// The policy for this node. A netlink failure leaves the address lists empty (the Network
/// rules still hold) rather than stopping the node; the caller logs it. With IPv6 on, the
/// IPv6 Network is checked too, the IPv6 VTEP address counts as this node's, and the IPv6
/// subnets of the underlay interface are underlay subnets like the IPv4 ones. IPv6-only
/// (`network` and `underlay_ip` `None`): the IPv6 side alone.
pub async fn peer_policy(
    nl: &Netlink,
    network: Option<Ipv4Network>,
    network_v6: Option<Ipv6Network>,
    underlay_ip: Option<Ipv4Addr>,
    underlay_ip6: Option<Ipv6Addr>,
    allow_link_local_vtep: bool,
) -> (PeerPolicy, Option<String>) {
    let mut policy = PeerPolicy {
        allow_link_local_vtep,
        network,
        network_v6,
        own_addresses: underlay_ip
            .map(IpAddr::V4)
            .into_iter()
            .chain(underlay_ip6.map(IpAddr::V6))
            .collect(),
        underlay_subnets: Vec::new(),
    };
    match nl.all_addresses().await {
        Ok(addrs) => {
            let underlay: Vec<u32> = addrs
                .iter()
                .filter(|(_, a)| {
                    Some(a.ip()) == underlay_ip.map(IpAddr::V4)
                        || Some(a.ip()) == underlay_ip6.map(IpAddr::V6)
                })
                .map(|(i, _)| *i)
                .collect();
            for (index, a) in &addrs {
                if !policy.own_addresses.contains(&a.ip()) {
                    policy.own_addresses.push(a.ip());
                }
                // A link-local prefix (fe80::/64 on every IPv6 link) is no underlay subnet a
                // podCIDR could capture: IPv6Network never holds it.
                let link_local =
                    matches!(a.ip(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
                if underlay.contains(index) && !link_local {
                    if let Ok(net) = IpNetwork::new(a.network(), a.prefix()) {
                        if !policy.underlay_subnets.contains(&net) {
                            policy.underlay_subnets.push(net);
                        }
                    }
                }
            }
            (policy, None)
        }
        Err(e) => (policy, Some(e.to_string())),
    }
}

/// A state from a node source, validated for this node: bad peers moved to `skipped`; an own
/// node that cannot be served becomes the error the control loop reports (and waits on).
pub fn validate(state: &ClusterState, policy: &PeerPolicy) -> Result<ClusterState, String> {
    state.validated(policy).map_err(|e| e.to_string())
}
