//! What this node knows that Node objects do not, for peer validation
//! ([`fdb_sync::PeerPolicy`]): the cluster Network, the node's own addresses and its underlay
//! subnets. Read from the kernel at start and again before each new node-source state is
//! applied, so an address added later is protected too.

use std::net::{IpAddr, Ipv4Addr};

use fdb_sync::{ClusterState, PeerPolicy};
use ipnetwork::{IpNetwork, Ipv4Network};

use crate::sys::netlink::Netlink;

/// The policy for this node. A netlink failure leaves the address lists empty (the Network
/// rules still hold) rather than stopping the node; the caller logs it.
pub async fn peer_policy(
    nl: &Netlink,
    network: Ipv4Network,
    underlay_ip: Ipv4Addr,
    allow_link_local_vtep: bool,
) -> (PeerPolicy, Option<String>) {
    let mut policy = PeerPolicy {
        allow_link_local_vtep,
        own_addresses: vec![IpAddr::V4(underlay_ip)],
        ..PeerPolicy::new(network)
    };
    match nl.all_addresses().await {
        Ok(addrs) => {
            let underlay_index = addrs
                .iter()
                .find(|(_, a)| a.ip() == IpAddr::V4(underlay_ip))
                .map(|(i, _)| *i);
            for (index, a) in &addrs {
                if !policy.own_addresses.contains(&a.ip()) {
                    policy.own_addresses.push(a.ip());
                }
                if Some(*index) == underlay_index {
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
