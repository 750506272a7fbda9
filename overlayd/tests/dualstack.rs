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
    lab_with_kernel_node(test, ("DUALSTACK", "1"))
}

/// Three nodes built by cluster.sh with `mode` in the environment (`DUALSTACK=1` or
/// `IPV6ONLY=1`): overlayd on nodes 1 and 2, a kernel-vxlan Flannel node 3 (its devices as
/// flanneld programs them in that mode), one pod each. `None` when the test must be skipped.
fn lab_with_kernel_node(test: &str, mode: (&str, &str)) -> Option<Lab> {
    let mut lab = Lab::new_with_env(test, 3, 1, &[mode])?;
    let out = common::run(
        Command::new("bash")
            .args([SCRIPT, "kernel-node", &lab.prefix, "3", "3"])
            .arg(&lab.dir)
            .env(mode.0, mode.1),
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

/// `net.ipv6.conf.<DEV>.mtu` of node `i`.
fn mtu6(lab: &Lab, i: usize) -> String {
    let out = lab.exec(
        &lab.node(i),
        &["cat", &format!("/proc/sys/net/ipv6/conf/{DEV}/mtu")],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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
        assert!(
            !addrs.contains("fe80:"),
            "link-local address on {DEV}: {addrs}"
        );
        let mode = sh_ok(&[
            "ip",
            "netns",
            "exec",
            &lab.node(i),
            "cat",
            &format!("/proc/sys/net/ipv6/conf/{DEV}/disable_ipv6"),
        ]);
        assert_eq!(mode.trim(), "0");
        // The device's IPv6 MTU is the IPv6 path MTU (1500 - 70), as flannel-v6.1's device
        // MTU is; the link MTU stays Flannel's 1450 for IPv4.
        assert_eq!(mtu6(&lab, i), "1430", "node {i}");
        assert!(
            ip(&lab, i, &["link", "show", "dev", DEV]).contains(" mtu 1450 "),
            "node {i}"
        );
        // Routes: Flannel's onlink route per peer IPv6 podCIDR, no MTU metric (a locked one
        // would keep the kernel from learning a smaller path MTU), and the permanent
        // neighbour to the peer's IPv6 VtepMAC: overlayd peers use their one device MAC, the
        // kernel node its flannel-v6.1 MAC.
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
                    && !l.contains("mtu")),
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
        assert_eq!(
            st["own"]["ipv6"]["podCIDR"],
            format!("fd00:10:244:{i}::/64")
        );
        assert_eq!(st["own"]["ipv6"]["vtepIP"], format!("fd00:18::{i}"));
        assert_eq!(st["own"]["ipv6"]["vtepMAC"], format!("0a:58:0a:f4:0{i}:00"));
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

    // Settled: the kernel's own IPv6 entries on the device (MLD groups) are left alone, so
    // nothing is re-programmed after the first pass.
    std::thread::sleep(Duration::from_secs(3));
    for i in 1..=2 {
        assert!(
            !lab.log(i).contains("changed behind our back"),
            "node {i} keeps re-programming:\n{}",
            lab.log(i)
        );
    }

    // Restart: the next overlayd adopts the device with its IPv6 address, routes and
    // neighbours as they are (nothing to fix), and IPv6 keeps working.
    let mut lab = lab;
    assert!(lab.stop(1));
    lab.start(1);
    let log = lab.log(1);
    assert!(log.contains("adopted the device"), "{log}");
    assert!(!log.contains("differed from the desired state"), "{log}");
    assert!(!log.contains("device got its IPv6 address"), "{log}");
    assert!(
        ip(&lab, 1, &["-6", "addr", "show", "dev", DEV]).contains("inet6 fd00:10:244:1::/128"),
        "{}",
        ip(&lab, 1, &["-6", "addr", "show", "dev", DEV])
    );

    // Self-healing: an IPv6 route and neighbour removed behind overlayd's back come back.
    ip(
        &lab,
        1,
        &["-6", "route", "del", "fd00:10:244:3::/64", "dev", DEV],
    );
    ip(
        &lab,
        1,
        &["-6", "neigh", "del", "fd00:10:244:2::", "dev", DEV],
    );
    let healed = wait_until(Duration::from_secs(6), || {
        ip(&lab, 1, &["-6", "route", "show", "proto", "77"]).contains("fd00:10:244:3::/64")
            && ip(&lab, 1, &["-6", "neigh", "show", "dev", DEV]).contains("fd00:10:244:2:: lladdr")
    });
    assert!(healed, "IPv6 route/neighbour not restored:\n{}", lab.log(1));

    // A link MTU change resets the device's IPv6 MTU to the link MTU: set back (and said),
    // and a route given a locked MTU metric (as an older overlayd programmed) is replaced by
    // one without.
    ip(&lab, 1, &["link", "set", "dev", DEV, "mtu", "1400"]);
    ip(&lab, 1, &["link", "set", "dev", DEV, "mtu", "1450"]);
    ip(
        &lab,
        1,
        &[
            "-6",
            "route",
            "replace",
            "fd00:10:244:2::/64",
            "via",
            "fd00:10:244:2::",
            "dev",
            DEV,
            "onlink",
            "proto",
            "77",
            "mtu",
            "lock",
            "1430",
        ],
    );
    let route2 = |lab: &Lab| {
        ip(lab, 1, &["-6", "route", "show", "proto", "77"])
            .lines()
            .find(|l| l.starts_with("fd00:10:244:2::/64 "))
            .unwrap_or_default()
            .to_string()
    };
    let healed = wait_until(Duration::from_secs(6), || {
        mtu6(&lab, 1) == "1430" && !route2(&lab).is_empty() && !route2(&lab).contains("mtu")
    });
    assert!(
        healed,
        "IPv6 MTU {} / route {:?} not restored:\n{}",
        mtu6(&lab, 1),
        route2(&lab),
        lab.log(1)
    );
    assert!(lab.log(1).contains("IPv6 MTU was reset"), "{}", lab.log(1));

    // The device deleted: rebuilt with its IPv6 address, routes and neighbours, and the
    // kernel node's IPv6 pod is reachable again.
    ip(&lab, 1, &["link", "del", DEV]);
    let rebuilt = wait_until(Duration::from_secs(10), || {
        lab.log(1).contains("dataplane rebuilt")
            && ip(&lab, 1, &["-6", "route", "show", "proto", "77"]).contains("fd00:10:244:3::/64")
            && String::from_utf8_lossy(
                &lab.exec(&lab.node(1), &["ip", "-6", "addr", "show", "dev", DEV])
                    .stdout,
            )
            .contains("inet6 fd00:10:244:1::/128")
    });
    assert!(rebuilt, "device not rebuilt with IPv6:\n{}", lab.log(1));
    assert!(
        lab.ping_within(&lab.pod(1, 1), &pod_ip6(3, 1), Duration::from_secs(5)),
        "IPv6 after the rebuild:\n{}",
        lab.log(1)
    );
}

/// Traffic: IPv4 and IPv6 ping between every pair of pods both ways, a 2 s iperf3 of each
/// family between every ordered pair of nodes (three at a time), and a capture on the
/// underlay that shows inner IPv6 carried in outer IPv6 UDP to port 8472 with VNI 1.
#[test]
fn dual_stack_pods_reach_each_other_over_both_families_with_a_kernel_node() {
    let Some(lab) =
        dual_stack_lab("dual_stack_pods_reach_each_other_over_both_families_with_a_kernel_node")
    else {
        return;
    };
    for i in 1..=3 {
        let addrs = sh_ok(&[
            "ip",
            "-n",
            &lab.pod(i, 1),
            "-6",
            "addr",
            "show",
            "dev",
            "eth0",
        ]);
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
    // kernel node, and back; inner IPv6 never rides outer IPv4.
    let cap = ipv6_pings_on_the_wire(&lab, "dualstack.pcap");
    assert_eq!(cap.count("ip and udp port 8472 and udp[28:2] = 0x86dd"), 0);

    // Path MTU: pods have Flannel's MTU 1450, but inner IPv6 over an IPv6 underlay fits in
    // 1430. A 1450-byte IPv6 packet gets ICMPv6 Packet Too Big 1430 from the node (the
    // device's IPv6 MTU); 1430 bytes pass, to an overlayd node and to the kernel node.
    for o in [2, 3] {
        let big = lab.exec(
            &lab.pod(1, 1),
            &[
                "ping",
                "-6",
                "-c",
                "1",
                "-W",
                "1",
                "-M",
                "do",
                "-s",
                "1402",
                &pod_ip6(o, 1),
            ],
        );
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&big.stdout),
            String::from_utf8_lossy(&big.stderr)
        );
        assert!(
            !big.status.success(),
            "1450-byte IPv6 ping to node {o} passed: {said}"
        );
        assert!(
            said.contains("mtu=1430") || said.contains("mtu = 1430"),
            "{said}"
        );
        let fits = lab.exec(
            &lab.pod(1, 1),
            &[
                "ping",
                "-6",
                "-c",
                "1",
                "-W",
                "1",
                "-M",
                "do",
                "-s",
                "1382",
                &pod_ip6(o, 1),
            ],
        );
        assert!(
            fits.status.success(),
            "1430-byte IPv6 ping to node {o}: {}",
            String::from_utf8_lossy(&fits.stdout)
        );
    }

    // iperf3, 2 s per family and ordered pair of nodes; the three pairs of one direction
    // around the ring at a time (every node one client and one server).
    for family in ["-6", "-4"] {
        let extra = [family];
        for step in [1, 2] {
            let pairs: Vec<(usize, usize)> = (1..=3).map(|i| (i, (i + step - 1) % 3 + 1)).collect();
            let runs: Vec<_> = pairs
                .iter()
                .map(|&(i, o)| {
                    let dst = if family == "-6" {
                        pod_ip6(o, 1)
                    } else {
                        Lab::pod_ip(o, 1)
                    };
                    (lab.pod(i, 1), lab.pod(o, 1), dst, &extra[..])
                })
                .collect();
            let rates = lab.iperf_concurrent(&runs, 2);
            for ((i, o), bps) in pairs.into_iter().zip(rates) {
                eprintln!(
                    "iperf3 {family} node{i} -> node{o}: {:.2} Gbit/s",
                    bps / 1e9
                );
                assert!(
                    bps > 10e6,
                    "iperf3 {family} node{i} -> node{o}: {bps} bit/s"
                );
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

/// A TCP server in `ns` on `[::]:port` answering each connection with the peer address it
/// sees (IPv6 twin of `Lab::whoami_server`).
fn whoami6_server(lab: &Lab, ns: &str, port: u16) -> common::ChildGuard {
    let _ = lab;
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c"])
        .arg(
            "import socket,sys\n\
             s=socket.socket(socket.AF_INET6);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('::',int(sys.argv[1])));s.listen(64)\n\
             while True:\n\
             \x20c,a=s.accept()\n\
             \x20try:\n\
             \x20\x20c.settimeout(3);c.recv(4096);b=a[0].encode()\n\
             \x20\x20c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n'%len(b)+b)\n\
             \x20except OSError: pass\n\
             \x20c.close()",
        )
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 whoami6 server");
    common::ChildGuard(child)
}

fn whoami6(lab: &Lab, ns: &str, ip: &str, port: u16, secs: u64) -> Option<String> {
    let mut seen = None;
    wait_until(Duration::from_secs(secs), || {
        let out = lab.exec(
            ns,
            &[
                "curl",
                "-s",
                "-m",
                "2",
                "-g",
                &format!("http://[{ip}]:{port}/"),
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        seen = (out.status.success() && !text.is_empty()).then_some(text);
        seen.is_some()
    });
    seen
}

/// `--ip-masq` with EnableIPv6, both backends: the IPv6 rules mirror the IPv4 ones (ip6tables
/// chains or the `ip6 overlayd-ipv6` table), a pod reaches an IPv6 host outside the cluster as
/// its node's IPv6 address, the rules come back after a flush, and `remove_all` takes both
/// families.
#[test]
fn dual_stack_ip_masq_installs_and_keeps_the_ipv6_rules() {
    for nftables in [false, true] {
        let Some(mut lab) = Lab::new_with_env(
            "dual_stack_ip_masq_installs_and_keeps_the_ipv6_rules",
            2,
            1,
            &[("DUALSTACK", "1")],
        ) else {
            return;
        };
        std::fs::write(
            lab.dir.join("net-conf.json"),
            format!(
                r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","EnableNFTables":{nftables},"Backend":{{"Type":"vxlan"}}}}"#
            ),
        )
        .unwrap();
        lab.start_with(1, &["--ip-masq"]);
        lab.start_with(2, &["--ip-masq"]);
        let n1 = lab.node(1);
        let rules6 = |lab: &Lab| -> String {
            if nftables {
                let out = lab.exec(&n1, &["nft", "list", "table", "ip6", "overlayd-ipv6"]);
                String::from_utf8_lossy(&out.stdout).into_owned()
            } else {
                sh_ok(&["ip", "netns", "exec", &n1, "ip6tables-save", "-t", "nat"])
            }
        };
        let complete = |text: &str| {
            if nftables {
                text.contains("ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade")
                    && text.contains("ip6 saddr fd00:10:244::/56 accept")
            } else {
                text.lines()
                    .filter(|l| l.starts_with("-A OVERLAYD-POSTRTG "))
                    .count()
                    == 6
                    && text.contains("-A OVERLAYD-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8")
            }
        };
        let now = rules6(&lab);
        assert!(complete(&now), "nftables={nftables}: {now}");
        let st = lab.status_json(1);
        assert_eq!(st["netfilter"]["rulesPresent"], true, "{st}");

        // The switch (fd00:18::fe) has no route to the pod IPv6Network: an answer at all means
        // the source was rewritten, to node 1's IPv6 address.
        let _server = whoami6_server(&lab, &format!("{}sw", lab.prefix), 8080);
        assert_eq!(
            whoami6(&lab, &lab.pod(1, 1), "fd00:18::fe", 8080, 5).as_deref(),
            Some("fd00:18::1"),
            "nftables={nftables}: the outside IPv6 host must see node 1's address"
        );

        // Flushed behind overlayd's back: restored.
        if nftables {
            lab.exec(&n1, &["nft", "flush", "table", "ip6", "overlayd-ipv6"]);
        } else {
            lab.exec(&n1, &["ip6tables", "-t", "nat", "-F", "OVERLAYD-POSTRTG"]);
        }
        assert!(
            wait_until(Duration::from_secs(5), || complete(&rules6(&lab))),
            "nftables={nftables}: IPv6 rules not restored:\n{}",
            lab.log(1)
        );
        let env = common::read(&lab.subnet_file(1));
        assert!(env.contains("FLANNEL_IPMASQ=true\n"), "{env}");

        // Stopped, the rules stay; remove_all (overlayd cleanup) takes both families.
        assert!(lab.stop(1));
        assert!(complete(&rules6(&lab)));
        let out = lab.cleanup(1, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let left = rules6(&lab);
        assert!(
            !left.contains("OVERLAYD") && !left.contains("masquerade"),
            "{left}"
        );
        let left4 = sh_ok(&["ip", "netns", "exec", &n1, "iptables-save", "-t", "nat"]);
        assert!(!left4.contains("OVERLAYD"), "{left4}");
        assert!(lab.stop(2));
    }
}

/// `Backend.DirectRouting` with EnableIPv6: peers on the same underlay subnets get plain
/// routes for both families (IPv6: `<IPv6 podCIDR> via <public-ipv6> dev eth0`, as Flannel's
/// v6DirectRoute) and no IPv6 neighbour on the device; pods reach each other over both
/// families without VXLAN.
#[test]
fn dual_stack_direct_routing_routes_ipv6_via_the_peers_ipv6_address() {
    let Some(mut lab) = Lab::new_with_env(
        "dual_stack_direct_routing_routes_ipv6_via_the_peers_ipv6_address",
        2,
        1,
        &[("DUALSTACK", "1")],
    ) else {
        return;
    };
    std::fs::write(
        lab.dir.join("net-conf.json"),
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    )
    .unwrap();
    lab.start(1);
    lab.start(2);
    for (i, o) in [(1, 2), (2, 1)] {
        let want = format!("fd00:10:244:{o}::/64 via fd00:18::{o} dev eth0 ");
        let ok = wait_until(Duration::from_secs(5), || {
            ip(&lab, i, &["-6", "route", "show", "proto", "77"]).contains(&want)
        });
        assert!(
            ok,
            "node {i}: {}\n{}",
            ip(&lab, i, &["-6", "route", "show", "proto", "77"]),
            lab.log(i)
        );
        assert!(lab
            .routes(i)
            .contains(&format!("10.244.{o}.0/24 via 198.18.0.{o} dev eth0")));
        let neigh = ip(&lab, i, &["-6", "neigh", "show", "dev", DEV]);
        assert!(!neigh.contains("PERMANENT"), "{neigh}");
        for dst in [Lab::pod_ip(o, 1), pod_ip6(o, 1)] {
            assert!(
                lab.ping_within(&lab.pod(i, 1), &dst, Duration::from_secs(5)),
                "ping pod {i} -> {dst}"
            );
        }
    }
    // Settled: nothing was re-programmed after the first pass.
    std::thread::sleep(Duration::from_secs(3));
    for i in 1..=2 {
        assert!(
            !lab.log(i).contains("changed behind our back"),
            "node {i} keeps re-programming:\n{}",
            lab.log(i)
        );
    }
}

/// EnableIPv6 on a node without an IPv6 underlay stops overlayd at startup with a message
/// that names what is missing and what to do, before subnet.env is written: without `--iface`
/// the IPv6 default route is missing, with it the interface's IPv6 address.
#[test]
fn enable_ipv6_without_an_ipv6_underlay_stops_with_the_reason() {
    // An IPv4-only lab (no DUALSTACK) with a dual-stack net-conf and NodeList.
    let Some(mut lab) = Lab::new(
        "enable_ipv6_without_an_ipv6_underlay_stops_with_the_reason",
        1,
        0,
    ) else {
        return;
    };
    std::fs::write(
        lab.dir.join("net-conf.json"),
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    lab.write_nodes_file(
        "apiVersion: v1\nkind: NodeList\nitems:\n- metadata: {name: node1}\n  spec: {podCIDRs: [10.244.1.0/24, \"fd00:10:244:1::/64\"]}\n  status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}\n",
    );
    let nodes = lab.nodes_file();
    for (extra, want) in [
        (
            &[][..],
            "no IPv6 default route to pick the underlay interface from (EnableIPv6 is true): pass --iface or --public-ipv6",
        ),
        (
            &["--iface", "eth0"][..],
            "no interface matches the --iface/--iface-regex/--iface-can-reach given (--iface eth0: eth0 has no global IPv6 address (EnableIPv6 is true))",
        ),
    ] {
        lab.spawn(1, &[std::ffi::OsStr::new("--nodes-file"), nodes.as_os_str()], extra);
        let exited = wait_until(Duration::from_secs(10), || !lab.is_running(1));
        let log = lab.log(1);
        assert!(exited, "overlayd kept running: {log}");
        assert!(log.contains(want), "{extra:?}: {log}");
        assert!(!lab.subnet_file(1).exists(), "subnet.env written: {log}");
        lab.stop(1);
    }
}

/// `--ip-blackhole-route` with EnableIPv6 keeps a blackhole route for each podCIDR (Flannel's
/// AddBlackholeV4Route and AddBlackholeV6Route) and puts it back when removed. A node without
/// pods: Flannel's option is for nodes whose pods do not sit behind a bridge with a connected
/// route for the podCIDR (the IPv4 blackhole would shadow a bridge route added after it).
#[test]
fn dual_stack_blackhole_routes_for_both_pod_cidrs() {
    let Some(mut lab) = Lab::new_with_env(
        "dual_stack_blackhole_routes_for_both_pod_cidrs",
        1,
        0,
        &[("DUALSTACK", "1")],
    ) else {
        return;
    };
    // With IPv6 forwarding off the node could not route IPv6 pods: overlayd says so.
    sh_ok(&[
        "ip",
        "netns",
        "exec",
        &lab.node(1),
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=0",
    ]);
    lab.start_with(1, &["--ip-blackhole-route", "--iptables-resync", "1"]);
    assert!(
        lab.log(1)
            .contains("net.ipv6.conf.all.forwarding is 0 with EnableIPv6"),
        "{}",
        lab.log(1)
    );
    assert!(!lab.log(1).contains("ip_forward is 0"), "{}", lab.log(1));
    let present = |lab: &Lab| {
        ip(lab, 1, &["route", "show", "type", "blackhole"]).contains("10.244.1.0/24")
            && ip(lab, 1, &["-6", "route", "show", "type", "blackhole"])
                .contains("fd00:10:244:1::/64")
    };
    assert!(
        wait_until(Duration::from_secs(5), || present(&lab)),
        "{}",
        lab.log(1)
    );
    ip(
        &lab,
        1,
        &["-6", "route", "del", "blackhole", "fd00:10:244:1::/64"],
    );
    assert!(
        wait_until(Duration::from_secs(5), || present(&lab)),
        "IPv6 blackhole not restored:\n{}",
        lab.log(1)
    );
}

/// Peer validation with EnableIPv6: a node whose IPv6 VTEP is one of this node's own
/// addresses (one only the kernel knows: not in any Node object) is skipped with its reason
/// and never reaches the kernel; the good peer's IPv6 side is programmed.
#[test]
fn dual_stack_peer_with_this_nodes_ipv6_address_as_vtep_is_skipped() {
    let Some(mut lab) = Lab::new_with_env(
        "dual_stack_peer_with_this_nodes_ipv6_address_as_vtep_is_skipped",
        2,
        0,
        &[("DUALSTACK", "1")],
    ) else {
        return;
    };
    sh_ok(&[
        "ip",
        "-n",
        &lab.node(1),
        "-6",
        "addr",
        "add",
        "fd00:77::1/128",
        "dev",
        "lo",
    ]);
    let mut nodes = common::read(&lab.nodes_file());
    nodes.push_str(
        "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: evil\n    annotations:\n      flannel.alpha.coreos.com/public-ipv6: fd00:77::1\n  spec:\n    podCIDRs: [10.244.9.0/24, \"fd00:10:244:9::/64\"]\n  status:\n    addresses:\n    - {type: InternalIP, address: 198.18.0.9}\n",
    );
    lab.write_nodes_file(&nodes);
    lab.start(1);
    let st = lab.status_json(1);
    let skipped = st["skipped"].as_array().unwrap();
    assert!(
        skipped.iter().any(|s| s["node"] == "evil"
            && s["reason"] == "vtep_own_address"
            && s["message"].as_str().unwrap().contains("fd00:77::1")),
        "{st}"
    );
    let routes = ip(&lab, 1, &["-6", "route", "show", "proto", "77"]);
    assert!(!routes.contains("fd00:10:244:9::"), "{routes}");
    assert!(routes.contains("fd00:10:244:2::/64"), "{routes}");
    assert!(!lab.routes(1).contains("10.244.9.0"), "{}", lab.routes(1));
}

/// An IPv6-only lab (cluster.sh with IPV6ONLY=1: no IPv4 on the underlay, IPv6 podCIDRs only,
/// EnableIPv4 false): nodes 1 and 2 run overlayd, node 3 is a kernel Flannel node with only
/// flannel-v6.1, annotated as flanneld annotates an IPv6-only node. One pod per node.
/// Captures UDP 8472 on node 1's underlay while pod 1 on node 1 pings pod 1 on nodes 2 and 3
/// over IPv6, and checks each ping both ways: outer IPv6 between the nodes' fd00:18::i to port
/// 8472, the inner ICMPv6 echo between the pods, VXLAN flags I and VNI 1 (tcpdump names UDP
/// 8472 OTV, VXLAN's layout). Returns the stopped capture for more checks.
fn ipv6_pings_on_the_wire(lab: &Lab, file: &str) -> Capture {
    let mut cap = Capture::start(
        &lab.node(1),
        "eth0",
        lab.dir.join(file),
        &["udp", "port", "8472"],
    );
    for o in [2, 3] {
        assert!(
            lab.ping(&lab.pod(1, 1), &pod_ip6(o, 1)),
            "ping6 pod 1 -> {o}"
        );
    }
    // tcpdump hands packets over in blocks (TPACKET_V3, up to 1 s): let the last one close
    // before it is stopped, or the pings are lost from the file.
    std::thread::sleep(Duration::from_millis(1500));
    cap.stop();
    let text = cap.text("ip6 and udp port 8472");
    for o in [2, 3] {
        for (src, dst) in [(1, o), (o, 1)] {
            assert!(
                text.lines().any(|l| l.contains(&format!("fd00:18::{src}."))
                    && l.contains(&format!("> fd00:18::{dst}.8472"))),
                "no outer IPv6 {src} -> {dst}:8472:\n{text}\nall:\n{}",
                cap.text("")
            );
            let inner = format!("{} > {}: ", pod_ip6(src, 1), pod_ip6(dst, 1));
            assert!(
                text.lines()
                    .any(|l| l.contains(&inner) && l.contains("ICMP6, echo")),
                "no inner {inner}ICMP6 echo:\n{text}"
            );
        }
    }
    assert!(
        text.contains("flags [I] (0x08), overlay 0, instance 1"),
        "{text}"
    );
    cap
}

/// The IPv6-only lab (cluster.sh `IPV6ONLY=1`): as [`dual_stack_lab`], the kernel node with
/// only flannel-v6.1.
fn ipv6_only_lab(test: &str) -> Option<Lab> {
    lab_with_kernel_node(test, ("IPV6ONLY", "1"))
}

/// IPv6-only (EnableIPv4 false), end to end: two overlayd nodes and a kernel flannel-v6.1
/// node on an IPv6-only underlay with IPv6-only pods. No IPv4 anywhere overlayd manages
/// (subnet.env, device address, routes, UDP socket, pod addresses and routes); IPv6 pods reach
/// each other both ways between every pair, iperf3 -6 runs both ways between the overlayd
/// nodes, and the underlay carries outer IPv6 UDP to 8472 with VNI 1. Then a handover, and
/// netfilter (IPv6 rules only, no `ip` nftables table, removed by `overlayd cleanup`).
#[test]
fn ipv6_only_cluster() {
    let Some(lab) = ipv6_only_lab("ipv6_only_cluster") else {
        return;
    };
    for i in 1..=2 {
        // subnet.env: the IPv6 pair only, as Flannel's WriteSubnetFile without IPv4; the MTU
        // is Flannel's (Backend MTU - 50).
        let env = common::read(&lab.subnet_file(i));
        assert!(
            env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n")
                && env.contains(&format!("FLANNEL_IPV6_SUBNET=fd00:10:244:{i}::1/64\n"))
                && env.contains("FLANNEL_MTU=1450\n"),
            "{env}"
        );
        assert!(
            !env.contains("FLANNEL_NETWORK=") && !env.contains("FLANNEL_SUBNET="),
            "{env}"
        );
        // The device: no IPv4 address, the IPv6 podCIDR's network address /128, the IPv6
        // MTU of an IPv6 underlay (1500 - 70).
        let v4 = ip(&lab, i, &["-4", "addr", "show", "dev", DEV]);
        assert!(!v4.contains("inet "), "node {i}: IPv4 on {DEV}: {v4}");
        assert!(
            ip(&lab, i, &["-6", "addr", "show", "dev", DEV])
                .contains(&format!("inet6 fd00:10:244:{i}::/128")),
            "node {i}"
        );
        assert_eq!(mtu6(&lab, i), "1430", "node {i}");
        // No IPv4 route of overlayd's; an IPv6 route and permanent neighbour per peer (the
        // overlayd peer's MAC derived from its IPv6 podCIDR, the kernel node's annotated).
        let routes4 = lab.routes(i);
        assert!(routes4.trim().is_empty(), "node {i}: {routes4}");
        let routes = ip(&lab, i, &["-6", "route", "show", "proto", "77"]);
        let neigh = ip(&lab, i, &["-6", "neigh", "show", "dev", DEV]);
        let o = 3 - i;
        for (peer, mac) in [
            (o, format!("0a:58:02:44:00:0{o}")),
            (3, "02:00:00:00:06:03".to_string()),
        ] {
            assert!(
                routes.contains(&format!(
                    "fd00:10:244:{peer}::/64 via fd00:10:244:{peer}:: dev {DEV}"
                )),
                "node {i}: {routes}"
            );
            assert!(
                neigh.contains(&format!("fd00:10:244:{peer}:: lladdr {mac} PERMANENT")),
                "node {i}: {neigh}"
            );
        }
        // No IPv4 VXLAN socket: only the IPv6 one listens on 8472.
        let udp4 = sh_ok(&[
            "ip",
            "netns",
            "exec",
            &lab.node(i),
            "ss",
            "-H",
            "-u",
            "-a",
            "-n",
            "-4",
        ]);
        assert!(
            !udp4.lines().any(|l| l.contains(":8472 ")),
            "node {i}: IPv4 UDP 8472 socket: {udp4}"
        );
        let udp6 = sh_ok(&[
            "ip",
            "netns",
            "exec",
            &lab.node(i),
            "ss",
            "-H",
            "-u",
            "-a",
            "-n",
            "-6",
        ]);
        assert!(udp6.contains(":8472 "), "node {i}: {udp6}");
        // Status: no IPv4 side (absent or null, never 0.0.0.0), the IPv6 side as in dual stack.
        let st = lab.status_json(i);
        assert!(!st.to_string().contains("0.0.0.0"), "{st}");
        assert!(st["own"]["vtepIP"].is_null(), "{st}");
        assert!(st["own"]["podCIDR"].is_null(), "{st}");
        assert_eq!(st["own"]["ipv6"]["vtepIP"], format!("fd00:18::{i}"), "{st}");
        assert_eq!(
            st["own"]["ipv6"]["podCIDR"],
            format!("fd00:10:244:{i}::/64")
        );
        assert_eq!(st["peers"].as_array().map(Vec::len), Some(2), "{st}");
    }
    // Pods (overlayd-cni and, on node 3, the same plugin from Flannel's subnet.env): only an
    // IPv6 address and IPv6 routes.
    for i in 1..=3 {
        let pod = lab.pod(i, 1);
        let v4 = sh_ok(&["ip", "-n", &pod, "-4", "addr", "show", "dev", "eth0"]);
        assert!(!v4.contains("inet "), "pod {i}: {v4}");
        let r4 = sh_ok(&["ip", "-n", &pod, "-4", "route", "show"]);
        assert!(r4.trim().is_empty(), "pod {i}: {r4}");
        let v6 = sh_ok(&["ip", "-n", &pod, "-6", "addr", "show", "dev", "eth0"]);
        assert!(
            v6.contains(&format!("inet6 {}/64", pod_ip6(i, 1))),
            "pod {i}: {v6}"
        );
        let r6 = sh_ok(&["ip", "-n", &pod, "-6", "route", "show"]);
        assert!(
            r6.contains(&format!("fd00:10:244::/56 via fd00:10:244:{i}::1 dev eth0")),
            "pod {i}: {r6}"
        );
    }
    // Every pair of pods, both ways.
    for i in 1..=3 {
        for o in (1..=3).filter(|o| *o != i) {
            assert!(
                lab.ping_within(&lab.pod(i, 1), &pod_ip6(o, 1), Duration::from_secs(5)),
                "ping -6 pod {i} -> pod {o}:\n{}\n{}",
                lab.log(1),
                lab.log(2)
            );
        }
    }
    // The wire: outer IPv6 UDP to 8472 with VNI 1 both ways, nothing over IPv4.
    let cap = ipv6_pings_on_the_wire(&lab, "ipv6only.pcap");
    assert_eq!(cap.count("ip"), 0, "{}", cap.text("ip"));

    // iperf3 -6, 2 s each way between the overlayd nodes.
    for (i, o) in [(1, 2), (2, 1)] {
        let bps = lab.iperf(&lab.pod(i, 1), &lab.pod(o, 1), &pod_ip6(o, 1), 2, &["-6"]);
        eprintln!("iperf3 -6 node{i} -> node{o}: {:.2} Gbit/s", bps / 1e9);
        assert!(bps > 10e6, "iperf3 -6 node{i} -> node{o}: {bps} bit/s");
    }

    // Netfilter: the FORWARD accepts (on by default, iptables as Flannel's default) exist for
    // IPv6 only; the IPv4 tools hold nothing of overlayd's.
    let n1 = lab.node(1);
    let save = |tool: &str| sh_ok(&["ip", "netns", "exec", &n1, tool]);
    let v4 = save("iptables-save");
    assert!(!v4.contains("OVERLAYD"), "{v4}");
    let v6 = save("ip6tables-save");
    assert!(v6.contains("-A OVERLAYD-FWD -s fd00:10:244::/56"), "{v6}");
    // A rolling update hands the IPv6-only queues over (no IPv4 socket to pass or open), and
    // the new overlayd forwards.
    let mut lab = lab;
    lab.start_overlapping(1);
    assert!(
        lab.log(1).contains("took the dataplane over"),
        "{}",
        lab.log(1)
    );
    assert!(lab.stop_retired(1), "{}", lab.retired_log(1));
    assert!(
        lab.ping_within(&lab.pod(2, 1), &pod_ip6(1, 1), Duration::from_secs(5)),
        "ping -6 after the handover:\n{}",
        lab.log(1)
    );
    let udp4 = sh_ok(&[
        "ip", "netns", "exec", &n1, "ss", "-H", "-u", "-a", "-n", "-4",
    ]);
    assert!(!udp4.contains(":8472 "), "after the handover: {udp4}");
    // With EnableNFTables and --ip-masq: only the ip6 table, never an ip one; traffic flows;
    // `overlayd cleanup` removes the table and the IPv6 chains.
    assert!(lab.stop(1));
    std::fs::write(
        lab.dir.join("net-conf.json"),
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    lab.start_with(1, &["--ip-masq"]);
    let tables = sh_ok(&["ip", "netns", "exec", &n1, "nft", "list", "tables"]);
    assert!(
        tables.contains("table ip6 overlayd-ipv6") && !tables.contains("overlayd-ipv4"),
        "{tables}"
    );
    let table = sh_ok(&[
        "ip",
        "netns",
        "exec",
        &n1,
        "nft",
        "list",
        "table",
        "ip6",
        "overlayd-ipv6",
    ]);
    assert!(
        table.contains("ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade"),
        "{table}"
    );
    assert!(
        lab.ping_within(&lab.pod(1, 1), &pod_ip6(2, 1), Duration::from_secs(5)),
        "ping -6 after the restart:\n{}",
        lab.log(1)
    );
    assert!(lab.stop(1));
    let out = lab.cleanup(1, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = sh_ok(&["ip", "netns", "exec", &n1, "nft", "list", "tables"]);
    assert!(!tables.contains("overlayd"), "{tables}");
    assert!(!save("ip6tables-save").contains("OVERLAYD"));
    assert!(!save("iptables-save").contains("OVERLAYD"));

    // flanneld's ipv6 stack takes an IPv6 --public-ip (the interface is found by it, and it is
    // the IPv6 VTEP): node 2 starts with one and still reaches the kernel node's pod; an IPv4
    // --public-ip stops it with the reason.
    assert!(lab.stop(2));
    lab.start_with(2, &["--public-ip", "fd00:18::2"]);
    assert!(
        lab.ping_within(&lab.pod(2, 1), &pod_ip6(3, 1), Duration::from_secs(5)),
        "ping -6 with an IPv6 --public-ip:\n{}",
        lab.log(2)
    );
    assert!(lab.stop(2));
    let nodes = lab.nodes_file();
    lab.spawn(
        2,
        &[std::ffi::OsStr::new("--nodes-file"), nodes.as_os_str()],
        &["--public-ip", "198.18.0.2"],
    );
    let exited = wait_until(Duration::from_secs(10), || !lab.is_running(2));
    let log = lab.log(2);
    assert!(exited, "overlayd kept running: {log}");
    assert!(
        log.contains("--public-ip 198.18.0.2 is an IPv4 address, but EnableIPv4 is false"),
        "{log}"
    );
    lab.stop(2);

    // A broken IPv4 iptables does not stop an IPv6-only node: IPv4 is off, so removing IPv4
    // leftovers is best effort (as Flannel's clean-up), with a warning, and the IPv6 rules go
    // in (iptables backend, --ip-masq).
    std::fs::write(
        lab.dir.join("net-conf.json"),
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let bin = lab.dir.join("broken-ipv4-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["iptables", "iptables-save", "iptables-restore"] {
        let path = bin.join(name);
        std::fs::write(
            &path,
            "#!/bin/sh\necho \"$0: broken on purpose\" >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    lab.daemon_env = vec![(
        "PATH".into(),
        format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
    )];
    lab.start_with(1, &["--ip-masq"]);
    lab.daemon_env.clear();
    let log = lab.log(1);
    assert!(
        log.contains(
            "cannot check for rules an earlier run left in a family this node does not use"
        ),
        "{log}"
    );
    assert!(save("ip6tables-save").contains("OVERLAYD"), "{log}");
    assert!(
        lab.ping_within(&lab.pod(1, 1), &pod_ip6(3, 1), Duration::from_secs(5)),
        "ping -6 with a broken IPv4 iptables:\n{log}"
    );
    assert!(lab.stop(1));
    let out = lab.cleanup(1, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!save("ip6tables-save").contains("OVERLAYD"));
}
