//! `--ip-blackhole-route`: keeps a blackhole route for this node's podCIDR (with IPv4 on) and
//! its IPv6 podCIDR (with IPv6 on) in the main table, checked every `--iptables-resync` period, as
//! flanneld does (main.go, `opts.blackholeRoute`; pkg/ip AddBlackholeV4Route and
//! AddBlackholeV6Route). Traffic to an unused pod address of this node is then dropped
//! here instead of following the default route out. A more specific or equal route (the CNI
//! bridge's) wins or stays; the blackhole is left in place on exit, as flanneld leaves it.

use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tracing::{debug, info, warn};

use crate::sys::netlink::Netlink;

/// Ensures the routes now and every `period`; runs until the task is dropped.
pub async fn keep(
    nl: Netlink,
    pod_cidr: Option<Ipv4Network>,
    pod_cidr_v6: Option<Ipv6Network>,
    period: Duration,
) {
    let cidrs: Vec<IpNetwork> = pod_cidr
        .map(IpNetwork::V4)
        .into_iter()
        .chain(pod_cidr_v6.map(IpNetwork::V6))
        .collect();
    let mut last_error = vec![String::new(); cidrs.len()];
    loop {
        for (cidr, last_error) in cidrs.iter().zip(&mut last_error) {
            let r = match *cidr {
                IpNetwork::V4(c) => nl.add_blackhole_route(c).await,
                IpNetwork::V6(c) => nl.add_blackhole_route_v6(c).await,
            };
            match r {
                Ok(true) => info!(pod_cidr = %cidr, "blackhole route added"),
                Ok(false) => debug!(pod_cidr = %cidr, "a route for the podCIDR exists"),
                Err(e) => {
                    let e = e.to_string();
                    if e != *last_error {
                        warn!(pod_cidr = %cidr, error = %e, "cannot add the blackhole route; will retry");
                        *last_error = e;
                    }
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}
