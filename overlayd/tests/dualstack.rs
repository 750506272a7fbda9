//! Dual stack (issue 14): a cluster of two overlayd nodes and one kernel-vxlan Flannel node
//! (flannel.1 and flannel-v6.1, programmed as flanneld programs them, with its own IPv6
//! VtepMAC), on a dual-stack underlay with dual-stack pods (deploy/local/cluster.sh with
//! DUALSTACK=1). Needs root; each test builds and removes its own namespaces.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{sh_ok, wait_until, Capture, Lab, SCRIPT};

const DEV: &str = "ovl.1";

/// A dual-stack lab: nodes 1 and 2 run overlayd, node 3 is a kernel-vxlan Flannel node with
/// flannel-v6.1; every node has one pod. `None` when the test must be skipped.
fn dual_stack_lab(test: &str) -> Option<Lab> {
    let mut lab = Lab::new_with_env(test, 3, 1, &[("DUALSTACK", "1")])?;
    let out = common::run(
        Command::new("bash")
            .args([SCRIPT, "kernel-node", &lab.prefix, "3", "3"])
            .arg(&lab.dir)
            .env("DUALSTACK", "1"),
    );
    assert!(
        out.status.success(),
        "kernel-node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.wire(3);
    lab.start(1);
    lab.start(2);
    Some(lab)
}

/// The IPv6 address of pod `j` of node `i` (overlayd-cni's sequential IPAM, as for IPv4).
fn pod_ip6(i: usize, j: usize) -> String {
    format!("fd00:10:244:{i}::{:x}", j + 1)
}

fn ip(lab: &Lab, i: usize, args: &[&str]) -> String {
    let mut a = vec!["ip", "-n"];
    let ns = lab.node(i);
    a.push(&ns);
    a.extend_from_slice(args);
    sh_ok(&a)
}

/// Kernel state, subnet.env, status and self-healing of the IPv6 side; IPv4 traffic too.
#[test]
fn dual_stack_node_programs_ipv6_routes_neighbours_address_and_subnet_env() {
    let Some(lab) =
        dual_stack_lab("dual_stack_node_programs_ipv6_routes_neighbours_address_and_subnet_env")
    else {
        return;
    };
    for i in 1..=2 {
        // subnet.env: Flannel's IPv6 pair, the subnet's first host as for IPv4.
        let env = common::read(&lab.subnet_file(i));
        assert!(
            env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n")
                && env.contains(&format!("FLANNEL_IPV6_SUBNET=fd00:10:244:{i}::1/64\n"))
                && env.contains(&format!("FLANNEL_SUBNET=10.244.{i}.1/24\n"))
                && env.contains("FLANNEL_MTU=1450\n"),
            "{env}"
        );
        // The device: the IPv6 podCIDR's network address /128 and no link-local address.
        let addrs = ip(&lab, i, &["-6", "addr", "show", "dev", DEV]);
        assert!(
            addrs.contains(&format!("inet6 fd00:10:244:{i}::/128")),
            "{addrs}"
        );
        assert!(!addrs.contains("fe80:"), "link-local address on {DEV}: {addrs}");
        let mode = sh_ok(&[
            "ip",
            "netns",
            "exec",
            &lab.node(i),
            "cat",
            &format!("/proc/sys/net/ipv6/conf/{DEV}/disable_ipv6"),
        ]);
        assert_eq!(mode.trim(), "0");
        // Routes: Flannel's onlink route per peer IPv6 podCIDR with the IPv6 path MTU
        // (1500 - 70), and the permanent neighbour to the peer's IPv6 VtepMAC: overlayd
        // peers use their one device MAC, the kernel node its flannel-v6.1 MAC.
        let o = 3 - i;
        let routes = ip(&lab, i, &["-6", "route", "show", "proto", "77"]);
        for (peer, mac) in [
            (o, format!("0a:58:0a:f4:0{o}:00")),
            (3, "02:00:00:00:06:03".to_string()),
        ] {
            assert!(
                routes.lines().any(|l| l.starts_with(&format!(
                    "fd00:10:244:{peer}::/64 via fd00:10:244:{peer}:: dev {DEV}"
                )) && l.contains("onlink")
                    && l.contains("mtu lock 1430")),
                "node {i}: {routes}"
            );
            let neigh = ip(&lab, i, &["-6", "neigh", "show", "dev", DEV]);
            assert!(
                neigh.contains(&format!("fd00:10:244:{peer}:: lladdr {mac} PERMANENT")),
                "node {i}: {neigh}"
            );
        }
        // IPv4 is unchanged.
        let routes4 = lab.routes(i);
        assert!(
            routes4.contains(&format!("10.244.{o}.0/24 via 10.244.{o}.0 dev {DEV}")),
            "{routes4}"
        );
        // Status: this node's IPv6 side and each peer's.
        let st = lab.status_json(i);
        assert_eq!(st["own"]["ipv6"]["podCIDR"], format!("fd00:10:244:{i}::/64"));
        assert_eq!(st["own"]["ipv6"]["vtepIP"], format!("fd00:18::{i}"));
        assert_eq!(
            st["own"]["ipv6"]["vtepMAC"],
            format!("0a:58:0a:f4:0{i}:00")
        );
        let peers = st["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 2, "{st}");
        for p in peers {
            let n: usize = p["node"].as_str().unwrap()[4..].parse().unwrap();
            assert_eq!(p["ipv6"]["vtepIP"], format!("fd00:18::{n}"), "{st}");
            assert_eq!(p["ipv6"]["podCIDR"], format!("fd00:10:244:{n}::/64"));
        }
    }
    // IPv4 keeps working between every pair of pods in the dual-stack cluster.
    for i in 1..=3 {
        for o in 1..=3 {
            if i != o {
                assert!(
                    lab.ping_within(&lab.pod(i, 1), &Lab::pod_ip(o, 1), Duration::from_secs(5)),
                    "IPv4 ping pod {i} -> pod {o}"
                );
            }
        }
    }

    // Self-healing: an IPv6 route and neighbour removed behind overlayd's back come back.
    ip(&lab, 1, &["-6", "route", "del", "fd00:10:244:3::/64", "dev", DEV]);
    ip(&lab, 1, &["-6", "neigh", "del", "fd00:10:244:2::", "dev", DEV]);
    let healed = wait_until(Duration::from_secs(6), || {
        ip(&lab, 1, &["-6", "route", "show", "proto", "77"]).contains("fd00:10:244:3::/64")
            && ip(&lab, 1, &["-6", "neigh", "show", "dev", DEV]).contains("fd00:10:244:2:: lladdr")
    });
    assert!(healed, "IPv6 route/neighbour not restored:\n{}", lab.log(1));
}

/// Traffic: IPv4 and IPv6 ping between every pair of pods both ways, a 2 s iperf3 of each
/// family between every ordered pair of nodes, and a capture on the underlay that shows inner
/// IPv6 carried in outer IPv6 UDP to port 8472 with VNI 1.
#[test]
fn dual_stack_pods_reach_each_other_over_both_families_with_a_kernel_node() {
    let Some(lab) = dual_stack_lab(
        "dual_stack_pods_reach_each_other_over_both_families_with_a_kernel_node",
    ) else {
        return;
    };
    for i in 1..=3 {
        let addrs = sh_ok(&["ip", "-n", &lab.pod(i, 1), "-6", "addr", "show", "dev", "eth0"]);
        assert!(addrs.contains(&pod_ip6(i, 1)), "pod {i}: {addrs}");
    }
    // Every pair, both ways, both families.
    for i in 1..=3 {
        for o in (1..=3).filter(|o| *o != i) {
            for dst in [Lab::pod_ip(o, 1), pod_ip6(o, 1)] {
                assert!(
                    lab.ping_within(&lab.pod(i, 1), &dst, Duration::from_secs(5)),
                    "ping pod {i} -> {dst}:\n{}\n{}",
                    lab.log(1),
                    lab.log(2)
                );
            }
        }
    }

    // The wire: inner IPv6 in outer IPv6 UDP to 8472, VNI 1, from node 1 to node 2 and the
    // kernel node, and back.
    let mut cap = Capture::start(
        &lab.node(1),
        "eth0",
        lab.dir.join("dualstack.pcap"),
        &["udp", "port", "8472"],
    );
    for o in [2, 3] {
        assert!(lab.ping(&lab.pod(1, 1), &pod_ip6(o, 1)), "ping6 pod 1 -> {o}");
    }
    cap.stop();
    let text = cap.text("ip6 and udp port 8472");
    for o in [2, 3] {
        for (src, dst) in [(1, o), (o, 1)] {
            let outer = format!("fd00:18::{src}.");
            let want_outer = text.lines().any(|l| {
                l.contains(&outer) && l.contains(&format!("> fd00:18::{dst}.8472"))
            });
            assert!(want_outer, "no outer IPv6 {src} -> {dst}:8472:\n{text}");
            let inner = format!("{} > {}: ICMP6, echo", pod_ip6(src, 1), pod_ip6(dst, 1));
            assert!(text.contains(&inner), "no inner {inner}:\n{text}");
        }
    }
    assert!(text.contains("VXLAN, flags [I] (0x08), vni 1"), "{text}");
    // Inner IPv6 never rides outer IPv4.
    assert_eq!(cap.count("ip and udp port 8472 and udp[28:2] = 0x86dd"), 0);

    // iperf3, 2 s per family and ordered pair of nodes.
    for i in 1..=3 {
        for o in (1..=3).filter(|o| *o != i) {
            for (family, dst) in [("-6", pod_ip6(o, 1)), ("-4", Lab::pod_ip(o, 1))] {
                let bps = lab.iperf(&lab.pod(i, 1), &lab.pod(o, 1), &dst, 2, &[family]);
                eprintln!("iperf3 {family} node{i} -> node{o}: {:.2} Gbit/s", bps / 1e9);
                assert!(bps > 10e6, "iperf3 {family} node{i} -> node{o}: {bps} bit/s");
            }
        }
    }
    // Nothing was dropped for lack of a peer on the IPv6 side.
    for i in 1..=2 {
        let st = lab.status_json(i);
        for p in st["peers"].as_array().unwrap() {
            assert!(p["rxPackets"].as_u64().unwrap_or(0) > 0, "{st}");
        }
    }
}
