//! Integration tests for the data path features beyond plain forwarding: DirectRouting, path
//! MTU discovery through the tunnel, ECN across the tunnel. Root only; see tests/common.

mod common;

use std::time::Duration;

use common::{sh_ok, wait_until, Capture, Lab};

/// `overlayd status --json` inside node `i`.
fn status(lab: &Lab, i: usize) -> serde_json::Value {
    let out = lab.exec(&lab.node(i), &[common::OVERLAYD, "status", "--json"]);
    assert!(
        out.status.success(),
        "overlayd status --json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn event(s: &serde_json::Value, name: &str) -> u64 {
    s["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == name)
        .and_then(|e| e["count"].as_u64())
        .unwrap_or_else(|| panic!("no event {name} in {s}"))
}

fn drop_count(s: &serde_json::Value, direction: &str, reason: &str) -> u64 {
    s["drops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["direction"] == direction && d["reason"] == reason)
        .and_then(|d| d["count"].as_u64())
        .unwrap_or_else(|| panic!("no drop reason {direction}/{reason} in {s}"))
}

fn direct_net_conf(lab: &Lab) {
    std::fs::write(
        lab.dir.join("net-conf.json"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1,"Port":8472,"DirectRouting":true}}"#,
    )
    .unwrap();
}

/// Every pod pings every other pod on another node.
fn all_pods_reach_all(lab: &Lab, nodes: usize) {
    for a in 1..=nodes {
        for b in 1..=nodes {
            if a != b {
                assert!(
                    lab.ping_within(&lab.pod(a, 1), &Lab::pod_ip(b, 1), Duration::from_secs(5)),
                    "pod {a} -> pod {b}\nnode{a}:\n{}\nroutes:\n{}",
                    lab.log(a),
                    lab.routes(a)
                );
            }
        }
    }
}

/// DirectRouting with three nodes: 1 and 2 share the switch's subnet, 3 sits behind a router.
/// Between 1 and 2 the wire carries plain pod IP (a route via the node address, no neighbour,
/// no VXLAN); to 3 it carries VXLAN; all pods reach all. Then node 3 gets a leg on the switch's
/// subnet and its address in the nodes file moves there: nodes 1 and 2 re-program it as direct
/// (VXLAN route and neighbour gone), node 3 re-programs its peers from the route change alone.
#[test]
fn direct_routing_plain_on_shared_subnet_vxlan_across_router_and_moves() {
    let Some(mut lab) = Lab::new_with_env(
        "direct_routing_plain_on_shared_subnet_vxlan_across_router_and_moves",
        3,
        1,
        &[("REMOTE_NODES", "3")],
    ) else {
        return;
    };
    direct_net_conf(&lab);
    for i in 1..=3 {
        lab.start(i);
    }
    let routes1 = lab.routes(1);
    assert!(
        routes1.contains("10.244.2.0/24 via 198.18.0.2 dev eth0"),
        "direct route to node 2: {routes1}"
    );
    assert!(
        routes1.contains("10.244.3.0/24 via 10.244.3.0 dev ovl.1"),
        "VXLAN route to node 3: {routes1}"
    );
    let neigh1 = lab.neighbours(1, "ovl.1");
    assert!(
        !neigh1.contains("10.244.2.0") && neigh1.contains("10.244.3.0"),
        "{neigh1}"
    );
    // Node 3 reaches both others only through the router: VXLAN to both.
    let routes3 = lab.routes(3);
    assert!(
        routes3.contains("10.244.1.0/24 via 10.244.1.0 dev ovl.1")
            && routes3.contains("10.244.2.0/24 via 10.244.2.0 dev ovl.1"),
        "{routes3}"
    );

    let mut cap = Capture::start(
        &lab.node(1),
        "eth0",
        lab.dir.join("direct.pcap"),
        &["icmp", "or", "udp", "port", "8472"],
    );
    all_pods_reach_all(&lab, 3);
    for b in [2, 3] {
        lab.exec(
            &lab.pod(1, 1),
            &["ping", "-c", "3", "-i", "0.2", &Lab::pod_ip(b, 1)],
        );
    }
    cap.stop();
    let plain_to_2 = cap.count("icmp and host 10.244.1.2 and host 10.244.2.2");
    let vxlan_to_2 = cap.count("udp port 8472 and host 198.18.0.2");
    let vxlan_to_3 = cap.count("udp port 8472 and host 198.19.0.3");
    let plain_to_3 = cap.count("icmp and host 10.244.3.2");
    assert!(
        plain_to_2 >= 6 && vxlan_to_2 == 0,
        "node1<->node2 must be plain IP: {plain_to_2} plain, {vxlan_to_2} VXLAN\n{}",
        cap.text("")
    );
    assert!(
        vxlan_to_3 >= 6 && plain_to_3 == 0,
        "node1<->node3 must be VXLAN: {vxlan_to_3} VXLAN, {plain_to_3} plain\n{}",
        cap.text("")
    );

    // A direct route removed by hand is restored like any route of ours.
    sh_ok(&["ip", "-n", &lab.node(1), "route", "del", "10.244.2.0/24"]);
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .routes(1)
            .contains("10.244.2.0/24 via 198.18.0.2 dev eth0")),
        "direct route not restored: {}",
        lab.routes(1)
    );

    // Node 3 moves onto the shared subnet.
    sh_ok(&["bash", common::SCRIPT, "attach", &lab.prefix, "3"]);
    let moved = common::read(&lab.nodes_file()).replace("198.19.0.3", "198.18.0.3");
    lab.write_nodes_file(&moved);
    for (node, via) in [(1, "198.18.0.3"), (2, "198.18.0.3")] {
        let want = format!("10.244.3.0/24 via {via} dev eth0");
        let ok = wait_until(Duration::from_secs(10), || {
            lab.routes(node).contains(&want)
                && !lab.neighbours(node, "ovl.1").contains("10.244.3.0")
        });
        assert!(
            ok,
            "node {node} did not re-program node 3 as direct: {}\n{}\n{}",
            lab.routes(node),
            lab.neighbours(node, "ovl.1"),
            lab.log(node)
        );
        assert!(
            !lab.routes(node).contains("10.244.3.0/24 via 10.244.3.0"),
            "{}",
            lab.routes(node)
        );
    }
    // Node 3 learnt from the new connected route alone that 1 and 2 are now direct.
    let ok = wait_until(Duration::from_secs(10), || {
        let r = lab.routes(3);
        r.contains("10.244.1.0/24 via 198.18.0.1 dev eth1")
            && r.contains("10.244.2.0/24 via 198.18.0.2 dev eth1")
    });
    assert!(ok, "node 3: {}\n{}", lab.routes(3), lab.log(3));
    assert!(
        lab.neighbours(3, "ovl.1").trim().is_empty(),
        "{}",
        lab.neighbours(3, "ovl.1")
    );
    let mut cap = Capture::start(
        &lab.node(1),
        "eth0",
        lab.dir.join("moved.pcap"),
        &["icmp", "or", "udp", "port", "8472"],
    );
    all_pods_reach_all(&lab, 3);
    lab.exec(
        &lab.pod(1, 1),
        &["ping", "-c", "3", "-i", "0.2", &Lab::pod_ip(3, 1)],
    );
    cap.stop();
    let plain_to_3 = cap.count("icmp and host 10.244.1.2 and host 10.244.3.2");
    let vxlan = cap.count("udp port 8472");
    assert!(
        plain_to_3 >= 6 && vxlan == 0,
        "after the move node1<->node3 must be plain IP: {plain_to_3} plain, {vxlan} VXLAN\n{}",
        cap.text("")
    );
    for i in 1..=3 {
        assert!(lab.stop(i), "overlayd {i} exit:\n{}", lab.log(i));
    }
    // A stop leaves the direct routes for the next overlayd (hitless restarts); `overlayd
    // cleanup` removes them with the rest (they carry protocol 77 like the VXLAN routes).
    assert!(
        lab.routes(1).contains("10.244.3.0/24 via 198.18.0.3"),
        "{}",
        lab.routes(1)
    );
    let out = lab.cleanup(1, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(lab.routes(1).trim().is_empty(), "{}", lab.routes(1));
}

/// The underlay path to node 2 crosses a link with MTU 1400 while every node interface says
/// 1500: the routers answer oversized outer packets with ICMP "fragmentation needed", the
/// kernel learns the path MTU, overlayd's sends fail with EMSGSIZE and it answers the pod with
/// ICMP "fragmentation needed" (MTU 1350) through the TAP. TCP adapts both ways instead of
/// stalling; a packet without DF leaves in fragments instead.
#[test]
fn path_mtu_below_interface_mtu_tcp_adapts() {
    let Some(mut lab) = Lab::new_with_env(
        "path_mtu_below_interface_mtu_tcp_adapts",
        2,
        1,
        &[("REMOTE_NODES", "2"), ("RMTU", "1400")],
    ) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(5)),
        "{}",
        lab.log(1)
    );
    // One direction at a time, with the pods' route caches flushed first: a pod that already
    // learnt the path MTU advertises the smaller MSS, and the other direction would then never
    // need an ICMP error.
    let dirs = [
        (&p1, &p2, Lab::pod_ip(2, 1), 1),
        (&p2, &p1, Lab::pod_ip(1, 1), 2),
    ];
    for (client, server, ip, node) in dirs {
        for p in [&p1, &p2] {
            sh_ok(&["ip", "-n", p, "route", "flush", "cache"]);
        }
        let before = event(&status(&lab, node), "icmp_frag_needed");
        let v = Lab::iperf_json(lab.iperf_start(client, server, &ip, 4, &[]));
        let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
        let s = status(&lab, node);
        let icmp = event(&s, "icmp_frag_needed") - before;
        assert!(
            bytes > 20e6,
            "TCP from node {node} moved only {bytes} bytes through the 1400-byte path ({}); icmp_frag_needed {icmp}\n{}",
            v["error"],
            lab.log(node)
        );
        assert!(icmp > 0, "no ICMP frag-needed written on node {node}: {s}");
        assert!(drop_count(&s, "tx", "too_big") >= icmp);
        // The pod's kernel took the reported MTU: 1400 - 50.
        let route = sh_ok(&["ip", "-n", client, "route", "get", &ip]);
        assert!(route.contains("mtu 1350"), "{route}");
        eprintln!(
            "node {node}: {:.1} MB through a 1400-byte path, {icmp} ICMP frag-needed, {} rate-limited",
            bytes / 1e6,
            event(&s, "icmp_rate_limited")
        );
    }
    // A single oversized ping (no TSO: the plain sendmmsg path) gets the error too.
    sh_ok(&["ip", "-n", &p1, "route", "flush", "cache"]);
    let out = lab.exec(
        &p1,
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "0.3",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "1400",
            &Lab::pod_ip(2, 1),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mtu = 1350") || text.contains("mtu=1350"),
        "ping -M do -s 1400 must learn mtu 1350: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without DF the sender allows fragmentation: the outer packet is fragmented, as kernel
    // vxlan (outer DF off by default) does, and the ping gets through both ways.
    for p in [&p1, &p2] {
        sh_ok(&["ip", "-n", p, "route", "flush", "cache"]);
    }
    let before = event(&status(&lab, 1), "outer_fragmented");
    let out = lab.exec(
        &p1,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.3",
            "-W",
            "2",
            "-M",
            "dont",
            "-s",
            "1400",
            &Lab::pod_ip(2, 1),
        ],
    );
    assert!(
        out.status.success(),
        "ping -M dont -s 1400: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(event(&status(&lab, 1), "outer_fragmented") >= before + 3);
    assert!(
        event(&status(&lab, 2), "outer_fragmented") >= 3,
        "the replies too"
    );
}

/// ECN across the tunnel: the inner ECN field shows in the outer header (CE as ECT(0)), and a
/// CE mark a router puts on the outer header arrives on the inner ECT packet; a Not-ECT
/// packet under an outer CE is dropped and counted (RFC 6040, as Linux vxlan).
#[test]
fn ecn_copied_on_encap_and_ce_carried_on_decap() {
    let Some(mut lab) = Lab::new("ecn_copied_on_encap_and_ce_carried_on_decap", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    let ip2 = Lab::pod_ip(2, 1);
    assert!(
        lab.ping_within(&p1, &ip2, Duration::from_secs(5)),
        "{}",
        lab.log(1)
    );
    let mut cap = Capture::start(
        &lab.node(1),
        "eth0",
        lab.dir.join("ecn.pcap"),
        &["udp", "port", "8472", "and", "src", "198.18.0.1"],
    );
    // -Q sets the whole TOS byte: DSCP 0x28 and each ECN codepoint in turn.
    for q in ["0xa1", "0xa2", "0xa3", "0"] {
        lab.exec(&p1, &["ping", "-c", "3", "-i", "0.2", "-Q", q, &ip2]);
    }
    cap.stop();
    let outer = |ecn: u8| cap.count(&format!("ip[1] & 3 == {ecn}"));
    // The inner DSCP never shows outside (Flannel's flannel.1 has tos 0).
    assert_eq!(cap.count("ip[1] & 0xfc != 0"), 0, "{}", cap.text(""));
    assert!(
        outer(1) >= 2,
        "ECT(1) inner -> ECT(1) outer\n{}",
        cap.text("")
    );
    assert!(
        outer(2) >= 4,
        "ECT(0) and CE inner -> ECT(0) outer\n{}",
        cap.text("")
    );
    assert_eq!(outer(3), 0, "CE is never copied outside\n{}", cap.text(""));
    assert!(outer(0) >= 2, "Not-ECT stays Not-ECT\n{}", cap.text(""));

    // ECN-capable TCP: the TSO super-frames leave as UDP_SEGMENT batches with ECT(0) outside
    // (retransmissions are Not-ECT, as Linux TCP sends them).
    for p in [&p1, &p2] {
        sh_ok(&[
            "ip",
            "netns",
            "exec",
            p,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_ecn=1",
        ]);
    }
    let mut cap = Capture::start(
        &lab.node(1),
        "eth0",
        lab.dir.join("ecn-tcp.pcap"),
        &[
            "udp",
            "port",
            "8472",
            "and",
            "src",
            "198.18.0.1",
            "and",
            "greater",
            "1000",
        ],
    );
    let v = Lab::iperf_json(lab.iperf_start(&p1, &p2, &ip2, 2, &["-b", "100M"]));
    cap.stop();
    assert!(v["error"].is_null(), "iperf3: {}", v["error"]);
    // tcpdump on the sending side sees each UDP_SEGMENT send as one GSO packet of up to
    // 64 KiB (veth passes GSO through), so 25 MB of iperf3 is a few hundred captured packets.
    let ect0 = cap.count("ip[1] & 3 == 2");
    assert!(
        ect0 >= 200 && cap.count("ip[1] & 3 == 3") == 0,
        "ECN TCP segments must leave with ECT(0) outside: {ect0} of {}",
        cap.count("")
    );

    // The switch marks every VXLAN packet from node 1 CE, as a congested router would.
    let sw = format!("{}sw", lab.prefix);
    for rule in [
        "add table bridge ovlecn",
        "add chain bridge ovlecn marks { type filter hook forward priority 0; }",
        "add rule bridge ovlecn marks ip saddr 198.18.0.1 udp dport 8472 ip ecn set ce",
    ] {
        let args: Vec<&str> = ["nft"].into_iter().chain(rule.split(' ')).collect();
        let out = lab.exec(&sw, &args);
        assert!(
            out.status.success(),
            "nft {rule}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut inner = Capture::start(
        &p2,
        "eth0",
        lab.dir.join("inner.pcap"),
        &["icmp[icmptype] == 8"],
    );
    let before = status(&lab, 2);
    lab.exec(&p1, &["ping", "-c", "3", "-i", "0.2", "-Q", "2", &ip2]);
    let not_ect = lab.exec(&p1, &["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip2]);
    inner.stop();
    let after = status(&lab, 2);
    assert!(
        inner.count("ip[1] & 3 == 3") >= 3,
        "the ECT(0) echo requests must arrive with CE\n{}",
        inner.text("")
    );
    assert!(
        !not_ect.status.success(),
        "Not-ECT under an outer CE must be dropped"
    );
    assert_eq!(inner.count("ip[1] & 3 == 0"), 0, "{}", inner.text(""));
    assert!(event(&after, "ecn_ce_set") >= event(&before, "ecn_ce_set") + 3);
    assert!(
        drop_count(&after, "rx", "ecn_ce_not_ect")
            >= drop_count(&before, "rx", "ecn_ce_not_ect") + 2
    );
    // ECN TCP under CE marks, set as an AQM router sets them: only on ECT packets (a CE mark
    // on the Not-ECT SYN would drop it, by the rule above). Every data segment arrives with
    // CE and the connection still moves data.
    for rule in [
        "flush chain bridge ovlecn marks",
        "add rule bridge ovlecn marks ip saddr 198.18.0.1 udp dport 8472 ip ecn != not-ect ip ecn set ce",
    ] {
        let args: Vec<&str> = ["nft"].into_iter().chain(rule.split(' ')).collect();
        let out = lab.exec(&sw, &args);
        assert!(
            out.status.success(),
            "nft {rule}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v = Lab::iperf_json(lab.iperf_start(&p1, &p2, &ip2, 2, &["-b", "100M"]));
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    let marked = event(&status(&lab, 2), "ecn_ce_set") - event(&after, "ecn_ce_set");
    assert!(
        bytes > 1e6,
        "iperf3 under CE: {bytes} bytes, {}",
        v["error"]
    );
    assert!(marked >= 100, "only {marked} inner packets got CE");
    eprintln!(
        "ECN TCP under CE: {:.1} MB, {marked} packets marked CE inside",
        bytes / 1e6
    );
}
