//! Makes the kernel's routes and neighbours on the TAP device equal to the desired peer set,
//! comparing with what the kernel actually holds (not what we believe we wrote), so the same
//! pass applies changes and repairs entries someone else removed.
//!
//! DirectRouting peers (`direct`) get a plain route via their node address on the interface
//! that reaches them instead of the TAP route and neighbour; a peer that moves between the two
//! has its old entries removed.

use std::collections::HashSet;

use anyhow::Result;
use fdb_sync::Peer;

use super::direct::DirectPeers;
use crate::sys::netlink::{DirectRoute, Netlink, PeerNeighbour, PeerRoute};

/// Returns the number of entries added, replaced or removed.
pub async fn reconcile_kernel(
    nl: &Netlink,
    index: u32,
    all_peers: &[Peer],
    direct: &DirectPeers,
) -> Result<usize> {
    let want_direct: Vec<DirectRoute> = all_peers
        .iter()
        .filter_map(|p| {
            direct.get(&p.vtep_ip).map(|&oif| DirectRoute {
                dst: p.pod_cidr,
                gateway: p.vtep_ip,
                oif,
            })
        })
        .collect();
    let peers: Vec<&Peer> = all_peers
        .iter()
        .filter(|p| !direct.contains_key(&p.vtep_ip))
        .collect();
    let want_routes: Vec<PeerRoute> = peers
        .iter()
        .map(|p| PeerRoute {
            dst: p.pod_cidr,
            gateway: p.pod_cidr.network(),
        })
        .collect();
    let want_neigh: Vec<PeerNeighbour> = peers
        .iter()
        .map(|p| PeerNeighbour {
            ip: p.pod_cidr.network(),
            mac: p.vtep_mac,
            permanent: true,
        })
        .collect();
    // Sets, not lists: with thousands of peers a linear `contains` per entry is quadratic.
    let have_routes: HashSet<PeerRoute> = nl.routes(index).await?.into_iter().collect();
    let have_neigh: HashSet<PeerNeighbour> = nl.neighbours(index).await?.into_iter().collect();
    let want_route_set: HashSet<PeerRoute> = want_routes.iter().copied().collect();
    let want_neigh_ips: HashSet<std::net::Ipv4Addr> = want_neigh.iter().map(|n| n.ip).collect();
    let have_direct: HashSet<DirectRoute> = nl.direct_routes(index).await?.into_iter().collect();
    let want_direct_set: HashSet<DirectRoute> = want_direct.iter().copied().collect();
    let mut changed = 0;
    // Neighbours first, so a new route never resolves to nothing.
    for n in &want_neigh {
        if !have_neigh.contains(n) {
            nl.replace_neighbour(index, n.ip, n.mac).await?;
            changed += 1;
        }
    }
    for r in &want_routes {
        if !have_routes.contains(r) {
            nl.replace_route(index, *r).await?;
            changed += 1;
        }
    }
    // A replace takes the place of the peer's VXLAN route (same destination), so the peer
    // never goes without a route while it moves; the delete below then finds nothing.
    for r in &want_direct {
        if !have_direct.contains(r) {
            nl.replace_direct_route(*r).await?;
            changed += 1;
        }
    }
    for r in have_direct.iter().filter(|r| !want_direct_set.contains(r)) {
        nl.delete_direct_route(*r).await?;
        changed += 1;
    }
    for r in have_routes.iter().filter(|r| !want_route_set.contains(r)) {
        nl.delete_route(index, *r).await?;
        changed += 1;
    }
    for n in have_neigh
        .iter()
        .filter(|n| !want_neigh_ips.contains(&n.ip))
    {
        nl.delete_neighbour(index, n.ip).await?;
        changed += 1;
    }
    Ok(changed)
}
