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

/// Largest UDP payload one datagram (and so one UDP_SEGMENT send) can carry over an IPv4
/// underlay: 65,535 (IPv4 total length) - 20 (IPv4 header) - 8 (UDP header). The kernel answers
/// a bigger send with EMSGSIZE.
pub const MAX_UDP_PAYLOAD: u32 = 65_507;
/// What each inner segment costs on the wire in front of its IP packet: the VXLAN header (8)
/// and the inner Ethernet header (14).
const SEGMENT_OVERHEAD: u32 = 8 + 14;
/// Linux TCP fills a super-frame with `limit - (MAX_TCP_HEADER + 1)` bytes of payload at most
/// (sk_setup_caps), rounded down to whole segments; MAX_TCP_HEADER is 320 on x86_64 kernels
/// with the usual configs. Where it is smaller the payload grows by less than one segment, so
/// the segment count below still holds.
const TCP_HEADROOM: u32 = 320 + 1;
/// The TCP timestamp option (10 bytes, padded to 12) Linux puts on every data segment: each
/// segment's payload is the MSS minus these.
const TCP_TIMESTAMPS: u32 = 12;

/// The pod interface's TSO limits (`gso_ipv4_max_size` for IPv4, `gso_max_size` for IPv6), so
/// the largest TCP super-frame the pod's stack builds leaves overlayd in ONE UDP_SEGMENT send
/// instead of two (a 64 KiB frame needs a second send for its last few segments: one more
/// syscall and one more wake-up per frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoLimits {
    pub gso_max_size: u32,
    pub gso_ipv4_max_size: u32,
}

/// Derives [`GsoLimits`] from the pod MTU.
///
/// A full-sized inner segment is an IP packet of `mtu` bytes; overlayd sends it as VXLAN (8) +
/// Ethernet (14) + that packet, so one send of at most 65,507 bytes holds
/// `k = 65,507 / (mtu + 22)` full segments: 44 at the default MTU 1450 (44 x 1472 = 64,768;
/// 45 would be 66,240). Each carries `mtu - IP - TCP - 12` bytes of payload (1,398 for IPv4
/// with timestamps), and TCP keeps 321 bytes of the limit as headroom, so the limit is
/// `321 + k x payload`: 61,833 for IPv4 and 60,953 for IPv6 (40-byte header) at MTU 1450.
/// Linux TCP then builds 44-segment frames (43 without timestamps) that fit one send, where
/// the default 65,536 gives 46 segments and two sends. fastpath-facts.md measured 62,000.
#[must_use]
pub fn pod_gso_limits(mtu: u32) -> GsoLimits {
    let k = (MAX_UDP_PAYLOAD / mtu.saturating_add(SEGMENT_OVERHEAD)).max(1);
    let limit = |ip_tcp: u32| {
        let payload = mtu.saturating_sub(ip_tcp + TCP_TIMESTAMPS).max(1);
        // Never above the legacy 64 KiB limit (BIG TCP's larger values are not for this path).
        TCP_HEADROOM
            .saturating_add(k.saturating_mul(payload))
            .min(65_536)
    };
    GsoLimits {
        gso_max_size: limit(60),
        gso_ipv4_max_size: limit(40),
    }
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

    /// What Linux TCP builds under `limit` (payload `limit - headroom`, whole segments of
    /// `mtu - ip_tcp - opts` bytes) and overlayd sends: the UDP payload of one send holding
    /// them all (each segment with VXLAN, Ethernet, IP, TCP and options in front).
    fn tcp_send_len(limit: u32, headroom: u32, mtu: u32, ip_tcp: u32, opts: u32) -> (u32, u32) {
        let mss = mtu - ip_tcp - opts;
        let segs = (limit - headroom) / mss;
        (segs, segs * (SEGMENT_OVERHEAD + mtu))
    }

    #[test]
    fn gso_limits_fit_one_udp_segment_send() {
        assert_eq!(
            pod_gso_limits(1450),
            GsoLimits {
                gso_max_size: 60_953,
                gso_ipv4_max_size: 61_833
            }
        );
        for mtu in [576, 1280, 1400, 1450, 1500, 4000, 8950, 9000] {
            let g = pod_gso_limits(mtu);
            let k = MAX_UDP_PAYLOAD / (mtu + SEGMENT_OVERHEAD);
            assert!(g.gso_ipv4_max_size <= 65_536 && g.gso_max_size <= 65_536);
            // Kernels with smaller MAX_TCP_HEADER, and senders without timestamps: still one send.
            for headroom in [193, 321] {
                for opts in [0, 12] {
                    let (_, v4) = tcp_send_len(g.gso_ipv4_max_size, headroom, mtu, 40, opts);
                    assert!(
                        v4 <= MAX_UDP_PAYLOAD,
                        "mtu {mtu} opts {opts}: IPv4 send {v4}"
                    );
                    if mtu >= 1280 {
                        let (_, v6) = tcp_send_len(g.gso_max_size, headroom, mtu, 60, opts);
                        assert!(v6 <= MAX_UDP_PAYLOAD, "mtu {mtu} opts {opts}: IPv6 {v6}");
                    }
                }
            }
            // And no segment is wasted: with timestamps the frame holds all `k` that fit.
            assert_eq!(tcp_send_len(g.gso_ipv4_max_size, 321, mtu, 40, 12).0, k);
        }
        // The uncapped default does not fit at MTU 1450: 46 segments, two sends.
        let (segs, len) = tcp_send_len(65_536, 321, 1450, 40, 12);
        assert_eq!(segs, 46);
        assert!(len > MAX_UDP_PAYLOAD);
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
