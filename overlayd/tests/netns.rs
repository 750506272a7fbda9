//! Integration tests: overlayd nodes in network namespaces, real devices, real peers (kernel
//! vxlan, iperf3, ping, tcpdump). Root only; see tests/common.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{sh_ok, wait_until, Lab};

/// Two overlayd nodes with a NodeList that has no annotations at all (names, podCIDRs and
/// InternalIPs only): pods ping both ways and iperf3 TCP moves data.
#[test]
fn two_overlayd_nodes_unannotated_nodelist() {
    let Some(mut lab) = Lab::new("two_overlayd_nodes_unannotated_nodelist", 2, 1) else {
        return;
    };
    assert!(!common::read(&lab.nodes_file()).contains("annotations"));
    lab.start(1);
    lab.start(2);
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(3)),
        "{}",
        lab.log(1)
    );
    assert!(lab.ping(&p2, &Lab::pod_ip(1, 1)));
    let bps = lab.iperf(&p1, &p2, &Lab::pod_ip(2, 1), 2, &[]);
    assert!(bps > 1e6, "iperf3 moved only {bps} bit/s");
    // subnet.env as Flannel writes it.
    assert_eq!(
        common::read(&lab.subnet_file(1)),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    );
    // TAP device: derived MAC, MTU underlay-50, podCIDR network /32, multi-queue.
    let link = sh_ok(&["ip", "-n", &lab.node(1), "-d", "addr", "show", "ovl.1"]);
    assert!(link.contains("link/ether 0a:58:0a:f4:01:00"), "{link}");
    assert!(
        link.contains("mtu 1450") && link.contains("inet 10.244.1.0/32"),
        "{link}"
    );
    assert!(link.contains("multi_queue numqueues 2"), "{link}");
    assert!(
        lab.routes(1)
            .contains("10.244.2.0/24 via 10.244.2.0 dev ovl.1"),
        "{}",
        lab.routes(1)
    );
    assert!(lab
        .neighbours(1, "ovl.1")
        .contains("10.244.2.0 lladdr 0a:58:0a:f4:02:00 PERMANENT"));
}

/// overlayd on node 1, Flannel's kernel vxlan on node 2: ping and iperf3 both directions.
#[test]
fn interop_with_kernel_vxlan_flannel_node() {
    let Some(mut lab) = Lab::new("interop_with_kernel_vxlan_flannel_node", 2, 1) else {
        return;
    };
    lab.make_kernel_node(2);
    lab.start(1);
    // The kernel node published its random VtepMAC in backend-data; overlayd must use it.
    assert!(lab
        .neighbours(1, "ovl.1")
        .contains("10.244.2.0 lladdr 02:00:00:00:00:02 PERMANENT"));
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(3)),
        "{}",
        lab.log(1)
    );
    assert!(lab.ping(&p2, &Lab::pod_ip(1, 1)));
    let to_kernel = lab.iperf(&p1, &p2, &Lab::pod_ip(2, 1), 2, &[]);
    let from_kernel = lab.iperf(&p2, &p1, &Lab::pod_ip(1, 1), 2, &[]);
    assert!(
        to_kernel > 1e6 && from_kernel > 1e6,
        "to {to_kernel} from {from_kernel}"
    );
    eprintln!(
        "overlayd->kernel {:.2} Gbit/s, kernel->overlayd {:.2} Gbit/s",
        to_kernel / 1e9,
        from_kernel / 1e9
    );
}

/// A capture on the underlay shows VXLAN exactly as the design says: UDP to 8472 from a
/// source port in 49152..65535, DF set, flags 0x08, VNI 1, inner frame to the peer's VtepMAC.
#[test]
fn capture_shows_vxlan_on_the_wire() {
    let Some(mut lab) = Lab::new_shared("capture_shows_vxlan_on_the_wire", 2, 1, &[]) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let pcap = lab.dir.join("cap.pcap");
    let mut dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node(1),
            "timeout",
            "10",
            "tcpdump",
            "-i",
            "eth0",
            "-c",
            "4",
            "-U",
            "-w",
        ])
        .arg(&pcap)
        .args(["udp", "port", "8472"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(700));
    let p1 = lab.pod(1, 1);
    assert!(lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(3)));
    lab.exec(&p1, &["ping", "-c", "2", "-i", "0.2", &Lab::pod_ip(2, 1)]);
    assert!(
        dump.wait().unwrap().success(),
        "tcpdump did not capture 4 packets"
    );
    let bytes = std::fs::read(&pcap).unwrap();
    let packets = pcap_records(&bytes);
    assert!(packets.len() >= 4);
    let mut outbound = 0;
    for p in &packets {
        let sliced = etherparse::SlicedPacket::from_ethernet(p).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &sliced.net else {
            panic!("not IPv4")
        };
        let Some(etherparse::TransportSlice::Udp(udp)) = &sliced.transport else {
            panic!("not UDP")
        };
        assert!(ip.header().dont_fragment(), "outer DF must be set");
        let vx = udp.payload();
        assert_eq!(vx[0], 0x08, "VXLAN flags");
        assert_eq!(&vx[1..4], &[0, 0, 0]);
        assert_eq!(u32::from_be_bytes([0, vx[4], vx[5], vx[6]]), 1, "VNI");
        if ip.header().source() == [198, 18, 0, 1] {
            outbound += 1;
            assert_eq!(udp.destination_port(), 8472);
            assert!(
                udp.source_port() >= 49152,
                "source port {}",
                udp.source_port()
            );
            assert_eq!(
                &vx[8..14],
                &[0x0a, 0x58, 10, 244, 2, 0],
                "inner dst = peer VtepMAC"
            );
        }
    }
    assert!(outbound >= 2);
    // A real dissector agrees, when tshark is installed.
    if let Ok(out) = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args([
            "-d",
            "udp.port==8472,vxlan",
            "-T",
            "fields",
            "-e",
            "vxlan.flags.i",
            "-e",
            "vxlan.vni",
        ])
        .output()
    {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            for line in text.lines() {
                let f: Vec<_> = line.split('\t').collect();
                assert!(
                    matches!(f[0], "1" | "True" | "true"),
                    "tshark I flag: {line}"
                );
                assert_eq!(f[1], "1", "tshark VNI: {line}");
            }
        }
    }
}

fn pcap_records(b: &[u8]) -> Vec<&[u8]> {
    assert!(b.len() >= 24, "pcap too short");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let incl = u32::from_le_bytes([b[at + 8], b[at + 9], b[at + 10], b[at + 11]]) as usize;
        at += 16;
        out.push(&b[at..at + incl]);
        at += incl;
    }
    out
}

/// Removing a peer from the nodes file removes its route and neighbour within 2 s; adding it
/// back restores reachability. A broken file keeps the last good state.
#[test]
fn peer_leaves_and_returns_via_nodes_file() {
    let Some(mut lab) = Lab::new("peer_leaves_and_returns_via_nodes_file", 3, 1) else {
        return;
    };
    for i in 1..=3 {
        lab.start(i);
    }
    let p1 = lab.pod(1, 1);
    assert!(lab.ping_within(&p1, &Lab::pod_ip(3, 1), Duration::from_secs(3)));
    let full = common::read(&lab.nodes_file());
    // Drop node3 (the last item).
    let cut = full
        .find("- apiVersion: v1\n  kind: Node\n  metadata:\n    name: node3")
        .unwrap();
    lab.write_nodes_file(&full[..cut]);
    let gone = wait_until(Duration::from_secs(2), || {
        !lab.routes(1).contains("10.244.3.0/24")
            && !lab.neighbours(1, "ovl.1").contains("10.244.3.0 ")
    });
    assert!(
        gone,
        "route/neighbour of node3 still there:\n{}\n{}",
        lab.routes(1),
        lab.log(1)
    );
    assert!(!lab.ping(&p1, &Lab::pod_ip(3, 1)));
    assert!(
        lab.ping(&p1, &Lab::pod_ip(2, 1)),
        "node2 must stay reachable"
    );

    // A broken file is rejected and the last good state stays.
    lab.write_nodes_file("items: [ {metadata: {name: node1}\n");
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        lab.log(1)
            .contains("input rejected; keeping the last good state"),
        "{}",
        lab.log(1)
    );
    assert!(lab.is_running(1));
    assert!(lab.routes(1).contains("10.244.2.0/24"));
    assert!(lab.ping(&p1, &Lab::pod_ip(2, 1)));

    lab.write_nodes_file(&full);
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(3, 1), Duration::from_secs(3)),
        "{}",
        lab.log(1)
    );
}

/// SIGTERM exits 0 and leaves the device (persistent, same MAC), routes and neighbours for the
/// next overlayd; nothing forwards while none runs; a restart adopts them and traffic resumes.
#[test]
fn restart_keeps_vtep_mac_and_traffic_resumes() {
    let Some(mut lab) = Lab::new("restart_keeps_vtep_mac_and_traffic_resumes", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let p1 = lab.pod(1, 1);
    assert!(lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(3)));
    let mac_before = sh_ok(&["ip", "-n", &lab.node(2), "link", "show", "ovl.1"]);
    let routes_before = lab.routes(2);
    assert!(
        lab.stop(2),
        "overlayd must exit 0 on SIGTERM:\n{}",
        lab.log(2)
    );
    let dev = lab.exec(&lab.node(2), &["ip", "link", "show", "ovl.1"]);
    assert!(dev.status.success(), "the device must stay on SIGTERM");
    // Without a queue attached the device has no carrier: `ip` adds "linkdown".
    assert_eq!(
        lab.routes(2).replace(" linkdown", ""),
        routes_before,
        "routes stay on SIGTERM"
    );
    assert!(!lab.ping(&p1, &Lab::pod_ip(2, 1)));
    lab.start(2);
    assert!(lab.log(2).contains("adopted the device"), "{}", lab.log(2));
    let mac_after = sh_ok(&["ip", "-n", &lab.node(2), "link", "show", "ovl.1"]);
    let mac = |s: &str| {
        s.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(String::from)
    };
    assert_eq!(mac(&mac_before), mac(&mac_after));
    assert_eq!(mac(&mac_after).as_deref(), Some("0a:58:0a:f4:02:00"));
    assert_eq!(lab.routes(2), routes_before, "no route added twice");
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(2)),
        "{}",
        lab.log(2)
    );
}

/// Startup errors a person can act on: a device of that name exists and overlayd did not
/// create it (another kind, or a TAP without overlayd's mark): refused, nothing touched.
#[test]
fn refuses_existing_device_with_clear_error() {
    let Some(lab) = Lab::new_shared("refuses_existing_device_with_clear_error", 1, 0, &[]) else {
        return;
    };
    let n1 = lab.node(1);
    let run = || {
        let sock = lab.handover_socket(1);
        lab.exec(
            &n1,
            &[
                common::OVERLAYD,
                "--node-name",
                "node1",
                "--nodes-file",
                lab.nodes_file().to_str().unwrap(),
                "--net-config-path",
                lab.dir.join("net-conf.json").to_str().unwrap(),
                "--subnet-file",
                lab.subnet_file(1).to_str().unwrap(),
                "--handover-socket",
                sock.to_str().unwrap(),
            ],
        )
    };
    sh_ok(&["ip", "-n", &n1, "link", "add", "ovl.1", "type", "bridge"]);
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("device ovl.1 already exists")
            && err.contains("not a TAP device (kind bridge)")
            && err.contains("--device"),
        "{err}"
    );
    sh_ok(&["ip", "-n", &n1, "link", "del", "ovl.1"]);
    // Someone else's TAP, even in overlayd's mode, is not adopted.
    sh_ok(&[
        "ip",
        "-n",
        &n1,
        "tuntap",
        "add",
        "dev",
        "ovl.1",
        "mode",
        "tap",
        "multi_queue",
        "vnet_hdr",
    ]);
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("device ovl.1 already exists") && err.contains("did not create it"),
        "{err}"
    );
    let routes = sh_ok(&["ip", "-n", &n1, "route", "show", "dev", "ovl.1"]);
    assert!(routes.trim().is_empty(), "{routes}");
}

/// With offloads on, what leaves a node under TCP load is valid: outer packets never
/// fragmented (DF, no MF, offset 0), and every inner segment of every UDP GSO burst a valid
/// IPv4 + TCP packet within the inner MTU.
#[test]
fn offloaded_segments_on_the_wire_are_valid() {
    let Some(mut lab) = Lab::new("offloaded_segments_on_the_wire_are_valid", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    assert!(lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(3)));
    let pcap = lab.dir.join("tcp.pcap");
    let mut dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node(1),
            "timeout",
            "15",
            "tcpdump",
            "-i",
            "eth0",
            "-c",
            "60",
            "-U",
            "-w",
        ])
        .arg(&pcap)
        .args(["udp dst port 8472 and src host 198.18.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(700));
    let bps = lab.iperf(&p1, &p2, &Lab::pod_ip(2, 1), 2, &[]);
    assert!(bps > 1e6);
    let _ = dump.wait();
    let bytes = std::fs::read(&pcap).unwrap();
    let mut segments = 0;
    let mut bursts = 0;
    for p in pcap_records(&bytes) {
        let ip = &p[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        assert_eq!(frag & 0x4000, 0x4000, "DF must be set");
        assert_eq!(frag & 0x3fff, 0, "no outer fragments");
        let vx_all = &ip[ihl + 8..];
        // Each segment: VXLAN 8 + Ethernet 14 + the inner IP packet.
        let inner_len = usize::from(u16::from_be_bytes([vx_all[8 + 14 + 2], vx_all[8 + 14 + 3]]));
        let seg = 8 + 14 + inner_len;
        assert!(
            inner_len <= 1450,
            "inner packet {inner_len} above the inner MTU"
        );
        let n = vx_all.len().div_ceil(seg);
        if n > 1 {
            bursts += 1;
        }
        for chunk in vx_all.chunks(seg) {
            assert_eq!(chunk[0], 0x08);
            let inner =
                etherparse::SlicedPacket::from_ethernet(&chunk[8..]).expect("inner frame parses");
            let Some(etherparse::NetSlice::Ipv4(ip4)) = &inner.net else {
                panic!("inner not IPv4")
            };
            let h = ip4.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "inner IPv4 checksum"
            );
            if let Some(etherparse::TransportSlice::Tcp(t)) = &inner.transport {
                let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
                assert_eq!(t.checksum(), want, "inner TCP checksum");
            }
            segments += 1;
        }
    }
    assert!(segments >= 60, "checked only {segments} segments");
    assert!(
        bursts > 0,
        "no UDP GSO burst seen: the offload path is not in use"
    );
}

/// flanneld's underlay selection: `--iface-can-reach` takes the interface and source address
/// `ip route get` gives, `--iface-regex` is tried after every `--iface` missed (matching an
/// address), `--iface` takes a name, and when nothing matches overlayd exits naming what it
/// tried.
#[test]
fn underlay_selection_flags() {
    let Some(mut lab) = Lab::new_shared("underlay_selection_flags", 1, 0, &[]) else {
        return;
    };
    let n1 = lab.node(1);
    // A second interface (a veth pair inside the node: no dummy module needed).
    sh_ok(&[
        "ip", "-n", &n1, "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy0p",
    ]);
    sh_ok(&[
        "ip",
        "-n",
        &n1,
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "dummy0",
    ]);
    sh_ok(&["ip", "-n", &n1, "link", "set", "dummy0p", "up"]);
    sh_ok(&["ip", "-n", &n1, "link", "set", "dummy0", "up"]);
    let underlay_line = |lab: &Lab| {
        lab.log(1)
            .lines()
            .find(|l| l.contains(" underlay ") || l.ends_with(" underlay"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &["--iface-can-reach=192.0.2.7"],
            "iface=dummy0 ip=192.0.2.1",
        ),
        (
            &[
                "--iface=nope",
                "--iface",
                "203.0.113.9",
                "-iface-regex",
                "^192\\.0\\.2\\.",
            ],
            "iface=dummy0 ip=192.0.2.1",
        ),
        (
            &["-iface", "eth0", "--iface-can-reach=192.0.2.7"],
            "iface=eth0 ip=198.18.0.1",
        ),
    ];
    for (args, want) in cases {
        lab.start_with(1, args);
        let line = underlay_line(&lab);
        assert!(line.contains(want), "{args:?}: {line}\n{}", lab.log(1));
        assert!(lab.stop(1), "{}", lab.log(1));
    }
    // Nothing matches: exit 1 with every miss named.
    let nodes_file = lab.nodes_file();
    lab.spawn(
        1,
        &["--nodes-file".as_ref(), nodes_file.as_os_str()],
        &["--iface=nope", "--iface-regex=^wlan"],
    );
    assert!(
        wait_until(Duration::from_secs(10), || !lab.is_running(1)),
        "{}",
        lab.log(1)
    );
    assert!(!lab.stop(1));
    let log = lab.log(1);
    assert!(
        log.contains("--iface nope: no such interface")
            && log.contains("--iface-regex ^wlan: matches no interface")
            && log.contains("dummy0:[192.0.2.1]"),
        "{log}"
    );
}

/// `--ip-blackhole-route`: a blackhole route for the node's podCIDR, put back within the
/// `--iptables-resync` period when someone deletes it, as flanneld does.
#[test]
fn blackhole_route_for_own_pod_cidr() {
    let Some(mut lab) = Lab::new_shared("blackhole_route_for_own_pod_cidr", 1, 0, &[]) else {
        return;
    };
    lab.start_with(1, &["-ip-blackhole-route", "--iptables-resync=1"]);
    let n1 = lab.node(1);
    let blackholes = || sh_ok(&["ip", "-n", &n1, "route", "show", "type", "blackhole"]);
    assert!(
        wait_until(Duration::from_secs(5), || blackholes()
            .contains("blackhole 10.244.1.0/24")),
        "{}\n{}",
        blackholes(),
        lab.log(1)
    );
    sh_ok(&[
        "ip",
        "-n",
        &n1,
        "route",
        "del",
        "blackhole",
        "10.244.1.0/24",
    ]);
    assert!(
        wait_until(Duration::from_secs(5), || blackholes()
            .contains("blackhole 10.244.1.0/24")),
        "not restored: {}",
        lab.log(1)
    );
    assert!(lab.stop(1), "{}", lab.log(1));
}

/// overlayd-cni caps the pod end of the veth so the largest TCP super-frame the pod builds
/// leaves in one UDP_SEGMENT send (cni-shim `plan::pod_gso_limits`); the host end keeps the
/// kernel default, so frames merged on receive are not segmented again on their way in.
#[test]
fn cni_caps_the_pod_interface_tso_size() {
    let Some(mut lab) = Lab::new_shared("cni_caps_the_pod_interface_tso_size", 1, 1, &[]) else {
        return;
    };
    // A kernel node writes subnet.env (FLANNEL_MTU=1450) and wires its pod with overlayd-cni.
    lab.make_kernel_node(1);
    let want = cni_shim::plan::pod_gso_limits(1450);
    let gso = |text: &str| -> u32 {
        let at = text
            .find("gso_max_size ")
            .expect("ip -d link shows gso_max_size")
            + 13;
        text[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let pod = sh_ok(&["ip", "-n", &lab.pod(1, 1), "-d", "link", "show", "eth0"]);
    assert_eq!(gso(&pod), want.gso_max_size, "{pod}");
    let host = sh_ok(&[
        "ip",
        "-n",
        &lab.node(1),
        "-d",
        "link",
        "show",
        "master",
        "cni0",
    ]);
    assert!(host.contains("veth"), "{host}");
    assert_eq!(gso(&host), 65_536, "{host}");
    // iproute2 before 6.3 does not print gso_ipv4_max_size: read it over netlink.
    let ns_path = format!("/run/netns/{}", lab.pod(1, 1));
    let link = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let ns = cni_shim::netns::NetNs::open(&ns_path).unwrap();
            let nl = cni_shim::net::Netlink::connect_in(&ns).unwrap();
            nl.link("eth0").await.unwrap().expect("eth0 in the pod")
        });
    assert_eq!(link.gso_max_size, Some(want.gso_max_size));
    // Kernels before 6.3 have no separate IPv4 limit (gso_max_size applies to IPv4 too).
    if let Some(v4) = link.gso_ipv4_max_size {
        assert_eq!(v4, want.gso_ipv4_max_size);
    }
    // The pod still reaches its node through the capped interface.
    assert!(lab.ping(&lab.pod(1, 1), "10.244.1.1"));
}
