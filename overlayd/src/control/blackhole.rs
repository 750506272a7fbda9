//! `--ip-blackhole-route`: keeps a blackhole route for this node's podCIDR in the main table,
//! checked every `--iptables-resync` period, as flanneld does (main.go, `opts.blackholeRoute`;
//! pkg/ip AddBlackholeV4Route). Traffic to an unused pod address of this node is then dropped
//! here instead of following the default route out. A more specific or equal route (the CNI
//! bridge's) wins or stays; the blackhole is left in place on exit, as flanneld leaves it.

use std::time::Duration;

use ipnetwork::Ipv4Network;
use tracing::{debug, info, warn};

use crate::sys::netlink::Netlink;

/// Ensures the route now and every `period`; runs until the task is dropped.
pub async fn keep(nl: Netlink, pod_cidr: Ipv4Network, period: Duration) {
    let mut last_error = String::new();
    loop {
        match nl.add_blackhole_route(pod_cidr).await {
            Ok(true) => info!(%pod_cidr, "blackhole route added"),
            Ok(false) => debug!(%pod_cidr, "a route for the podCIDR exists"),
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    warn!(%pod_cidr, error = %e, "cannot add the blackhole route; will retry");
                    last_error = e;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}
