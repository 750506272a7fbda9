//! The daemon's side of Flannel's etcd subnet manager; the etcd conversation itself is
//! `fdb_sync::etcd`. Here: wait for etcd and for a usable `<prefix>/config` (said on the log
//! and on /readyz, never a crash), start the lease source with this node's public IP, and
//! carry the source's problems to /readyz.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use cni_shim::subnet_env::SubnetEnv;
use fdb_sync::etcd::{
    Allocation, EtcdConfig, LeaseSubnets, Me, Registry, Status, SubnetRange, Timing,
};
use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::NetConf;
use crate::health::Health;
use fdb_sync::SourceUpdate;

/// Connects to etcd and reads `<prefix>/config` until both work; `None` when asked to stop
/// first. Each distinct problem is logged once and shown on /readyz.
pub async fn wait_for_config(
    cfg: &EtcdConfig,
    health: &Health,
    stop: &mut watch::Receiver<bool>,
) -> Option<(Registry, NetConf, Allocation)> {
    let mut last = String::new();
    let mut backoff = Duration::from_millis(100);
    let mut reg: Option<Registry> = None;
    loop {
        let problem = match &reg {
            None => match Registry::connect(cfg).await {
                Ok(r) => {
                    info!(endpoints = %cfg.endpoints.join(","), "connected to etcd");
                    reg = Some(r);
                    continue;
                }
                Err(e) => format!("cannot connect to etcd: {e}; retrying"),
            },
            Some(r) => match r.network_config().await {
                Ok(Some(text)) => match NetConf::parse(&text) {
                    Ok(nc) => match allocation(&nc) {
                        Ok(alloc) => {
                            for w in nc.warnings.iter().filter(|w| !w.contains("etcd subnet manager only")) {
                                warn!(key = %format!("{}/config", cfg.prefix), "{w}");
                            }
                            health.set_source_problem(None);
                            for r in [alloc.v4, alloc.v6].into_iter().flatten() {
                                info!(network = %r.network, subnet_len = r.subnet_len, subnet_min = %r.subnet_min, subnet_max = %r.subnet_max, "network config from etcd");
                            }
                            return Some((reg.take().expect("connected"), nc, alloc));
                        }
                        Err(e) => format!("{}/config is not usable: {e}; fix it in etcd (waiting)", cfg.prefix),
                    },
                    Err(e) => format!("{}/config is not valid net-conf.json: {e}; fix it in etcd (waiting)", cfg.prefix),
                },
                Ok(None) => format!(
                    "flannel config not found in etcd store at {}/config: write net-conf.json there, e.g. {{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}} (waiting)",
                    cfg.prefix
                ),
                Err(e) => format!("cannot read {}/config: {e}; retrying", cfg.prefix),
            },
        };
        if problem != last {
            warn!("{problem}");
            health.set_source_problem(Some(problem.clone()));
            last = problem;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The ranges of `<prefix>/config`, checked as Flannel's `CheckNetworkConfig` (IPv6 only
/// with `EnableIPv6`).
fn allocation(nc: &NetConf) -> Result<Allocation, crate::config::ConfigError> {
    let v4 = match nc.network {
        Some(network) => {
            let a = nc.subnet_allocation()?;
            Some(SubnetRange {
                network: IpNetwork::V4(network),
                subnet_len: a.subnet_len,
                subnet_min: IpAddr::V4(a.subnet_min),
                subnet_max: IpAddr::V4(a.subnet_max),
            })
        }
        None => None,
    };
    let v6 = nc.subnet_allocation_v6()?;
    Ok(Allocation {
        v4,
        v6: v6.zip(nc.network_v6).map(|(a, network)| SubnetRange {
            network: IpNetwork::V6(network),
            subnet_len: a.subnet_len,
            subnet_min: IpAddr::V6(a.subnet_min),
            subnet_max: IpAddr::V6(a.subnet_max),
        }),
    })
}

/// `FLANNEL_SUBNET` and `FLANNEL_IPV6_SUBNET` of an existing subnet.env, as flanneld's
/// ReadCIDRFromSubnetFile / ReadIP6CIDRFromSubnetFile: the subnets this node had before a
/// restart, tried first when free.
/// Read with cni-shim's one definition of the file; an unreadable or broken file means no
/// previous subnet (a fresh one is leased), never a failure.
pub fn previous_subnets(path: &Path) -> Option<LeaseSubnets> {
    let text = std::fs::read_to_string(path).ok()?;
    let env = SubnetEnv::parse(&text).ok()?;
    let sn = LeaseSubnets {
        v4: env.v4().and_then(|s| match s.subnet {
            IpNetwork::V4(n) => Some(n),
            IpNetwork::V6(_) => None,
        }),
        v6: env.v6().and_then(|s| match s.subnet {
            IpNetwork::V6(n) => Some(n),
            IpNetwork::V4(_) => None,
        }),
    };
    (sn.v4.is_some() || sn.v6.is_some()).then_some(sn)
}

/// Starts the lease source; its problems go to /readyz. `public_ipv6` is this node's IPv6
/// underlay address, needed exactly when the network config enables IPv6.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    reg: Registry,
    alloc: Allocation,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
    vni: u32,
    timing: Timing,
    subnet_file: &Path,
    health: Arc<Health>,
    tx: mpsc::Sender<SourceUpdate>,
) -> Result<()> {
    if let (Some(r), None) = (alloc.v6, public_ipv6) {
        bail!(
            "the etcd network config enables IPv6 (IPv6Network {}), but the underlay has no IPv6 address to publish as PublicIPv6: add one to the underlay interface or pass --public-ipv6",
            r.network
        );
    }
    let previous = previous_subnets(subnet_file);
    let (own_tx, _own_rx) = watch::channel(None);
    let (problem_tx, mut problem_rx) = watch::channel(None);
    tokio::spawn(fdb_sync::etcd::run(
        reg,
        alloc,
        Me {
            public_ip: public_ip.filter(|_| alloc.v4.is_some()),
            public_ipv6: public_ipv6.filter(|_| alloc.v6.is_some()),
            vni,
        },
        timing,
        previous,
        tx,
        Status {
            own: own_tx,
            problem: problem_tx,
        },
    ));
    tokio::spawn(async move {
        while problem_rx.changed().await.is_ok() {
            let p = problem_rx.borrow_and_update().clone();
            health.set_source_problem(p);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_subnets_are_read_from_subnet_env() {
        let dir = std::env::temp_dir().join(format!("overlayd-prev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("subnet.env");
        std::fs::write(
            &p,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\n",
        )
        .unwrap();
        assert_eq!(
            previous_subnets(&p),
            Some(LeaseSubnets {
                v4: Some("10.244.7.0/24".parse().unwrap()),
                v6: None
            })
        );
        std::fs::write(
            &p,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\nFLANNEL_MTU=1430\n",
        )
        .unwrap();
        assert_eq!(
            previous_subnets(&p),
            Some(LeaseSubnets {
                v4: Some("10.244.7.0/24".parse().unwrap()),
                v6: Some("fd00:10:244:7::/64".parse().unwrap())
            })
        );
        std::fs::write(&p, "FLANNEL_SUBNET=junk\n").unwrap();
        assert_eq!(previous_subnets(&p), None);
        assert_eq!(previous_subnets(&dir.join("absent")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
