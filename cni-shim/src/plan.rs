//! Decisions ADD makes before touching the system, as pure functions: the host-side veth
//! name and MAC for an attachment, and the routes a pod gets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use crate::config::NetConf;
use crate::error::CniError;
use crate::result::Route;
use crate::subnet_env::SubnetEnv;

/// FNV-1a, 64 bit: stable across releases and platforms (unlike std's SipHash keys).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `veth` + 8 hex digits derived from (containerID, ifname). Deterministic, so DEL can remove
/// the pair from the host side even when the runtime passes no netns, and CHECK can find it.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let h = fnv1a(&[container_id.as_bytes(), ifname.as_bytes()]);
    format!("veth{:08x}", (h >> 32) ^ (h & 0xffff_ffff))
}

/// A locally administered unicast MAC for the host end, derived like the name.
pub fn host_veth_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let h = fnv1a(&[b"mac", container_id.as_bytes(), ifname.as_bytes()]).to_be_bytes();
    [(h[0] & 0xfe) | 0x02, h[1], h[2], h[3], h[4], h[5]]
}

/// The pod's routes, in the order they are installed, per address family of the node: the
/// cluster network via the gateway (what Flannel's CNI config gives pods), the default route
/// when `isDefaultGateway`, then the config's routes of that family (gateway defaults to the
/// node gateway). Duplicates and the connected subnet are dropped, since the kernel would
/// refuse them with EEXIST. A config route of a family the node has no subnet for is an error.
pub fn pod_routes(conf: &NetConf, env: &SubnetEnv) -> Result<Vec<Route>, CniError> {
    let mut out: Vec<Route> = Vec::new();
    for r in &conf.routes {
        if !env.subnets.iter().any(|s| s.is_ipv4() == r.dst.is_ipv4()) {
            return Err(CniError::invalid_config(format!(
                "route {} needs an {} subnet, and subnet.env has none",
                r.dst,
                if r.dst.is_ipv4() { "IPv4" } else { "IPv6" }
            )));
        }
    }
    for s in &env.subnets {
        let gw = Some(s.gateway);
        let mut push = |dst: IpNetwork, gw: Option<IpAddr>| {
            let dst = IpNetwork::new(dst.network(), dst.prefix()).unwrap_or(dst);
            if dst == s.subnet || out.iter().any(|r| r.dst == dst) {
                return;
            }
            out.push(Route { dst, gw });
        };
        push(s.network, gw);
        if conf.is_default_gateway {
            let any = if s.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            };
            push(IpNetwork::new(any, 0).unwrap_or(s.network), gw);
        }
        for r in conf
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv4() == s.is_ipv4())
        {
            push(r.dst, r.gw.or(gw));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_valid_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        // The separator keeps ("ab","ceth0") apart from ("abc","eth0").
        assert_ne!(host_veth_name("ab", "ceth0"), a);
        let names: std::collections::HashSet<_> = (0..10_000)
            .map(|i| host_veth_name(&format!("c{i}"), "eth0"))
            .collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn veth_mac_is_local_unicast() {
        let m = host_veth_mac("abc", "eth0");
        assert_eq!(m[0] & 0x03, 0x02);
    }

    #[test]
    fn routes_follow_flannel_and_config() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450",
        )
        .unwrap();
        let mut conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","routes":[{"dst":"10.244.0.0/16"},{"dst":"10.244.1.0/24"},{"dst":"192.168.0.0/16","gw":"10.244.1.254"}]}"#,
        )
        .unwrap();
        let shown = |conf: &NetConf, env: &SubnetEnv| -> Vec<String> {
            pod_routes(conf, env)
                .unwrap()
                .iter()
                .map(|r| {
                    format!(
                        "{} via {}",
                        r.dst,
                        r.gw.map(|g| g.to_string()).unwrap_or_default()
                    )
                })
                .collect()
        };
        assert_eq!(
            shown(&conf, &env),
            vec![
                "10.244.0.0/16 via 10.244.1.1",
                "0.0.0.0/0 via 10.244.1.1",
                "192.168.0.0/16 via 10.244.1.254"
            ]
        );
        // An IPv6 route needs an IPv6 subnet.
        let mut v6conf = conf.clone();
        v6conf.routes =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","routes":[{"dst":"fd99::/16"}]}"#)
                .unwrap()
                .routes;
        assert_eq!(pod_routes(&v6conf, &env).unwrap_err().code, 7);
        let dual = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64",
        )
        .unwrap();
        assert_eq!(
            shown(&v6conf, &dual),
            vec![
                "10.244.0.0/16 via 10.244.1.1",
                "0.0.0.0/0 via 10.244.1.1",
                "fd00:10:244::/56 via fd00:10:244:1::1",
                "::/0 via fd00:10:244:1::1",
                "fd99::/16 via fd00:10:244:1::1",
            ]
        );
        conf.is_default_gateway = false;
        conf.routes.clear();
        assert_eq!(pod_routes(&conf, &env).unwrap().len(), 1);
    }
}
