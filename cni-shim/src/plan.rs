//! Decisions ADD makes before touching the system, as pure functions: the host-side veth
//! name and MAC for an attachment, and the routes a pod gets.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::config::NetConf;
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

/// The pod's routes, in the order they are installed: the cluster network via the gateway
/// (what Flannel's CNI config gives pods), the default route when `isDefaultGateway`, then the
/// config's routes (gateway defaults to the node gateway). Duplicates and the connected
/// subnet are dropped, since the kernel would refuse them with EEXIST.
pub fn pod_routes(conf: &NetConf, env: &SubnetEnv) -> Vec<Route> {
    let gw = Some(env.gateway);
    let mut out: Vec<Route> = Vec::new();
    let mut push = |dst: Ipv4Network, gw: Option<Ipv4Addr>| {
        let dst = Ipv4Network::new(dst.network(), dst.prefix()).unwrap_or(dst);
        if dst == env.subnet || out.iter().any(|r| r.dst == dst) {
            return;
        }
        out.push(Route { dst, gw });
    };
    push(env.network, gw);
    if conf.is_default_gateway {
        push(
            Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).unwrap_or(env.network),
            gw,
        );
    }
    for r in &conf.routes {
        push(r.dst, r.gw.or(gw));
    }
    out
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
        let gw = Some(Ipv4Addr::new(10, 244, 1, 1));
        let r = pod_routes(&conf, &env);
        let shown: Vec<_> = r.iter().map(|r| (r.dst.to_string(), r.gw)).collect();
        assert_eq!(
            shown,
            vec![
                ("10.244.0.0/16".to_string(), gw),
                ("0.0.0.0/0".to_string(), gw),
                (
                    "192.168.0.0/16".to_string(),
                    Some(Ipv4Addr::new(10, 244, 1, 254))
                ),
            ]
        );
        conf.is_default_gateway = false;
        conf.routes.clear();
        assert_eq!(pod_routes(&conf, &env).len(), 1);
    }
}
