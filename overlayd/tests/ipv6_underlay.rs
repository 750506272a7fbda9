//! VXLAN over an IPv6 underlay (issue 14), at the worker level: two nodes in network
//! namespaces joined by a dual-stack veth, each with a TAP device and one overlayd worker on
//! queues built as the daemon builds them (`control::open_queue`: IPv4 and IPv6 receive
//! sockets, both source-port pools, TSO on the TAP, UDP_GRO), and a static FDB holding the
//! other node as a dual-stack peer. The IPv6-only tests (`EnableIPv4: false`) build the same
//! pair without any IPv4 address, queues opened with no IPv4 underlay address (IPv6 sockets
//! only) and IPv6-only peers. Root only: skips without it, fails under CI.
//!
//! One TAP carries both families, as the lead decided for overlayd: inner IPv6 leaves over
//! the outer IPv6 underlay (Flannel's flannel-v6.1), inner IPv4 over IPv4 (flannel.1).

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use overlayd::fdb::{Fdb, Peer, PeerV4, PeerV6};
use overlayd::path::event::PathEvent;
use overlayd::path::{DecapConfig, DropReason};
use overlayd::stats::{OffloadMode, Totals, WorkerStats};
use overlayd::sys::tap;
use overlayd::worker::Worker;

use common::{sh_ok, wait_until};

const VNI: u32 = 7;
const PORT: u16 = 8472;
/// 1500 on the veth less IPv6's 70 bytes of overhead: both families fit without PMTU.
const TAP_MTU: u32 = 1430;

fn mac(n: u8) -> [u8; 6] {
    [0x0a, 0x58, 10, 244, n, 0]
}

fn mac_text(n: u8) -> String {
    mac(n).map(|b| format!("{b:02x}")).join(":")
}

fn underlay4(n: u8) -> String {
    format!("198.19.6.{n}")
}

fn underlay6(n: u8) -> String {
    format!("fd00:6::{n}")
}

/// The TAP's IPv4 / IPv6 address: its podCIDRs' network addresses, as Flannel gives
/// flannel.1 and flannel-v6.1.
fn pod4(n: u8) -> String {
    format!("10.244.{n}.0")
}

fn pod6(n: u8) -> String {
    format!("fd00:244:{n}::")
}

fn peer(n: u8) -> Peer {
    Peer {
        name: format!("n{n}"),
        v4: Some(PeerV4 {
            pod_cidr: format!("10.244.{n}.0/24").parse().unwrap(),
            vtep_ip: underlay4(n).parse().unwrap(),
            vtep_mac: mac_text(n).parse().unwrap(),
        }),
        v6: Some(PeerV6 {
            pod_cidr: format!("fd00:244:{n}::/64").parse().unwrap(),
            vtep_ip: underlay6(n).parse().unwrap(),
            // One TAP, one MAC for both families.
            vtep_mac: mac_text(n).parse().unwrap(),
        }),
    }
}

/// Node `n` as an IPv6-only cluster sees it: no IPv4 side at all.
fn peer_v6_only(n: u8) -> Peer {
    Peer {
        v4: None,
        ..peer(n)
    }
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

fn ip(ns: &str, args: &str) {
    let mut v = vec!["ip", "-n", ns];
    v.extend(args.split_whitespace());
    sh_ok(&v);
}

/// Two nodes, their namespaces and workers; everything goes away on drop.
struct Pair {
    ns: [String; 2],
    veth: [String; 2],
    tap: [String; 2],
    stats: [Arc<WorkerStats>; 2],
    /// Each worker's FDB, replaceable as the control plane replaces it.
    fdb: [overlayd::fdb::FdbHandle; 2],
    stop: Arc<AtomicBool>,
    doorbell: Option<UnixStream>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.doorbell.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One test at a time: they measure throughput and share two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Pair {
    /// Two nodes; `offloads`: TSO on the TAP and UDP_GRO on the receive sockets, as overlayd
    /// runs normally; without, the plain path (one datagram per frame, recvmmsg/sendmmsg).
    /// `tag` (one character) keeps the names of the tests apart. `v4`: a dual-stack underlay
    /// and pods; without, an IPv6-only node (`EnableIPv4: false`): no IPv4 address on the
    /// veth or the TAP, queues opened with no IPv4 underlay address (no IPv4 socket at all).
    fn new(tag: char, offloads: bool, v4: bool) -> Pair {
        let id = std::process::id() % 100_000;
        let ns = [
            format!("ovl-dp6-{id}-{tag}1"),
            format!("ovl-dp6-{id}-{tag}2"),
        ];
        let veth = [format!("d6{tag}v{id}a"), format!("d6{tag}v{id}b")];
        let tap = [format!("d6{tag}t{id}a"), format!("d6{tag}t{id}b")];
        let (doorbell, wake) = UnixStream::pair().unwrap();
        let mut pair = Pair {
            ns: ns.clone(),
            veth: veth.clone(),
            tap: tap.clone(),
            stats: [Arc::default(), Arc::default()],
            fdb: [
                Arc::new(arc_swap::ArcSwap::from_pointee(Fdb::from_peers(&[], PORT))),
                Arc::new(arc_swap::ArcSwap::from_pointee(Fdb::from_peers(&[], PORT))),
            ],
            stop: Arc::new(AtomicBool::new(false)),
            doorbell: Some(doorbell),
            threads: Vec::new(),
        };
        for n in &ns {
            // A namespace left by a killed run of this process id.
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
            sh_ok(&["ip", "netns", "add", n]);
        }
        sh_ok(&[
            "ip", "link", "add", &veth[0], "netns", &ns[0], "type", "veth", "peer", "name",
            &veth[1], "netns", &ns[1],
        ]);
        let wake = Arc::new(wake);
        for i in 0..2 {
            let n = i as u8 + 1;
            let other = 3 - n;
            let (ns_i, v, t) = (&ns[i], &veth[i], &tap[i]);
            ip(ns_i, "link set lo up");
            if v4 {
                ip(ns_i, &format!("addr add {}/24 dev {v}", underlay4(n)));
            }
            ip(
                ns_i,
                &format!("-6 addr add {}/64 dev {v} nodad", underlay6(n)),
            );
            ip(ns_i, &format!("link set {v} up"));
            // The worker thread lives in the node's namespace: its sockets, its TAP and its
            // path MTU probes belong there.
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let (ns_t, tap_t) = (ns_i.clone(), t.clone());
            let (stats, stop, wake) = (pair.stats[i].clone(), pair.stop.clone(), wake.clone());
            // An IPv6-only node's peers are IPv6-only too.
            let other_peer = if v4 { peer(other) } else { peer_v6_only(other) };
            pair.fdb[i].store(Arc::new(Fdb::from_peers(&[other_peer], PORT)));
            let fdb = pair.fdb[i].clone();
            pair.threads.push(std::thread::spawn(move || {
                enter(&ns_t);
                let mut q = tap::open_multiqueue(&tap_t, 1).unwrap();
                let tapq = q.pop().unwrap();
                if offloads {
                    tap::set_offload(&tapq, &tap_t, tap::OFFLOAD_TCP).unwrap();
                }
                let mut io = overlayd::control::open_queue(
                    tapq,
                    offloads,
                    0,
                    PORT,
                    v4.then(|| underlay4(n).parse().unwrap()),
                    Some(underlay6(n).parse().unwrap()),
                )
                .unwrap();
                assert!(io.rx6.is_some() && io.tx_pool6.len() == 16);
                assert_eq!(io.rx.is_some(), v4);
                assert_eq!(io.tx_pool.len(), if v4 { 16 } else { 0 });
                assert!(io.offloads.gro, "UDP_GRO on every receive socket");
                if !offloads {
                    for s in io.rx_sockets() {
                        overlayd::sys::udp::disable_gro(s).unwrap();
                    }
                    io.offloads.gro = false;
                }
                let w = Worker {
                    id: 0,
                    io: Arc::new(io),
                    fdb,
                    decap: DecapConfig {
                        vni: VNI,
                        own_mac: mac(n),
                        inner_mtu: u16::try_from(TAP_MTU).unwrap(),
                        allow_any_sender: false,
                        allow_foreign_inner_source: false,
                    },
                    stats,
                    stop,
                    wake,
                    busy_poll: Duration::ZERO,
                };
                ready_tx.send(()).unwrap();
                w.run().unwrap();
            }));
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("worker set up");
            ip(
                ns_i,
                &format!("link set {t} address {} mtu {TAP_MTU} up", mac_text(n)),
            );
            ip(ns_i, &format!("-6 addr add {}/128 dev {t} nodad", pod6(n)));
            // What flanneld programs for a peer (flannel.1 and flannel-v6.1), on one device.
            if v4 {
                pair.ipv4_pods(i);
            }
            ip(
                ns_i,
                &format!(
                    "-6 route add fd00:244:{other}::/64 via {} dev {t} onlink",
                    pod6(other)
                ),
            );
            ip(
                ns_i,
                &format!(
                    "-6 neigh add {} lladdr {} dev {t} nud permanent",
                    pod6(other),
                    mac_text(other)
                ),
            );
        }
        pair
    }

    /// Node `i`'s IPv4 pod side: the TAP's IPv4 address, and the route and permanent
    /// neighbour flanneld programs on flannel.1 for the other node.
    fn ipv4_pods(&self, i: usize) {
        let (n, t) = (i as u8 + 1, &self.tap[i]);
        let other = 3 - n;
        ip(&self.ns[i], &format!("addr add {}/32 dev {t}", pod4(n)));
        ip(
            &self.ns[i],
            &format!(
                "route add 10.244.{other}.0/24 via {} dev {t} onlink",
                pod4(other)
            ),
        );
        ip(
            &self.ns[i],
            &format!(
                "neigh add {} lladdr {} dev {t} nud permanent",
                pod4(other),
                mac_text(other)
            ),
        );
    }

    /// The local ports of the UDP sockets bound in node `i`'s namespace, IPv4
    /// (`/proc/net/udp`) or IPv6 (`udp6`).
    fn udp_ports(&self, i: usize, v6: bool) -> Vec<u16> {
        let out = self.exec(
            i,
            &[
                "cat",
                if v6 {
                    "/proc/net/udp6"
                } else {
                    "/proc/net/udp"
                },
            ],
        );
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| {
                let local = l.split_whitespace().nth(1).unwrap();
                u16::from_str_radix(local.rsplit(':').next().unwrap(), 16).unwrap()
            })
            .collect()
    }

    fn exec(&self, i: usize, args: &[&str]) -> std::process::Output {
        common::run(
            Command::new("ip")
                .args(["netns", "exec", &self.ns[i], "timeout", "30"])
                .args(args),
        )
    }

    fn ping(&self, from: usize, to: &str, src: &str, extra: &[&str]) -> bool {
        let mut args = vec!["ping", "-c", "1", "-W", "1", "-I", src];
        args.extend_from_slice(extra);
        args.push(to);
        wait_until(Duration::from_secs(8), || {
            self.exec(from, &args).status.success()
        })
    }

    fn totals(&self, i: usize) -> Totals {
        Totals::sum([&*self.stats[i]])
    }

    /// A 2-second iperf3 TCP stream from node 1 to node 2 between the TAP addresses of one
    /// family; bits per second received.
    fn iperf(&self, v6: bool, secs: &str) -> (f64, f64) {
        let (dst, src) = if v6 {
            (pod6(2), pod6(1))
        } else {
            (pod4(2), pod4(1))
        };
        let server: Child = Command::new("ip")
            .args(["netns", "exec", &self.ns[1], "timeout", "30"])
            .args(["iperf3", "-s", "-1", "-B", &dst, "-p", "5299"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = scopeguard(server);
        let mut last = String::new();
        for _ in 0..40 {
            let out = self.exec(
                0,
                &[
                    "iperf3",
                    if v6 { "-6" } else { "-4" },
                    "-c",
                    &dst,
                    "-B",
                    &src,
                    "-p",
                    "5299",
                    "-t",
                    secs,
                    "-J",
                ],
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            // Until the server listens: "unable to connect" (with or without a failing exit).
            if out.status.success() && v.get("error").is_none() {
                let r = &v["end"]["sum_received"];
                let _ = server.0.wait();
                let (Some(bps), Some(bytes)) = (r["bits_per_second"].as_f64(), r["bytes"].as_f64())
                else {
                    panic!("iperf3 to {dst}: {v}");
                };
                return (bps, bytes);
            }
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("iperf3 {dst} never ran: {last}");
    }
}

/// Kills the child on drop (a failing assertion must not leave an iperf3 server behind).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scopeguard(c: Child) -> Guard {
    Guard(c)
}

/// One captured packet's outer headers and what it carries.
#[derive(Debug)]
struct Outer {
    src: IpAddr,
    dst: IpAddr,
    flow_label: u32,
    sport: u16,
    dport: u16,
    udp_checksum: u16,
    vni: u32,
    inner_ethertype: u16,
}

/// The VXLAN packets in a pcap (tcpdump's native little-endian format, Ethernet links).
fn read_pcap(path: &Path) -> Vec<Outer> {
    let b = std::fs::read(path).unwrap();
    assert_eq!(b[..4], 0xa1b2_c3d4u32.to_le_bytes(), "a little-endian pcap");
    let mut at = 24;
    let mut out = Vec::new();
    while at + 16 <= b.len() {
        let caplen = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        let p = &b[at + 16..(at + 16 + caplen).min(b.len())];
        at += 16 + caplen;
        let s = etherparse::LaxSlicedPacket::from_ethernet(p).unwrap();
        let (src, dst, flow_label) = match &s.net {
            Some(etherparse::LaxNetSlice::Ipv6(ip)) => (
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
                ip.header().flow_label().value(),
            ),
            Some(etherparse::LaxNetSlice::Ipv4(ip)) => (
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
                0,
            ),
            _ => continue,
        };
        let Some(etherparse::TransportSlice::Udp(udp)) = &s.transport else {
            continue;
        };
        let vx = udp.payload();
        if vx.len() < 8 + 14 {
            continue;
        }
        out.push(Outer {
            src,
            dst,
            flow_label,
            sport: udp.source_port(),
            dport: udp.destination_port(),
            udp_checksum: udp.checksum(),
            vni: u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
            inner_ethertype: u16::from_be_bytes([vx[8 + 12], vx[8 + 13]]),
        });
    }
    out
}

/// A VXLAN datagram (VNI 7) carrying an ICMPv6 echo request from `inner_src` to node 1's
/// TAP address, Ethernet from node 2's MAC to node 1's.
fn vxlan_echo(inner_src: Ipv6Addr) -> Vec<u8> {
    let mut out = vec![0x08, 0, 0, 0, 0, 0, u8::try_from(VNI).unwrap(), 0];
    let dst: Ipv6Addr = pod6(1).parse().unwrap();
    etherparse::PacketBuilder::ethernet2(mac(2), mac(1))
        .ipv6(inner_src.octets(), dst.octets(), 64)
        .icmpv6_echo_request(1, 1)
        .write(&mut out, &[0u8; 32])
        .unwrap();
    out
}

/// Sends `datagram` from `[from]:any` to node 1's VXLAN port, inside node 2's namespace.
fn send_from(ns: &str, from: &str, datagram: Vec<u8>) {
    let (ns, from) = (ns.to_string(), from.to_string());
    std::thread::spawn(move || {
        enter(&ns);
        let s = UdpSocket::bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
        let to = SocketAddr::new(underlay6(1).parse().unwrap(), PORT);
        s.send_to(&datagram, to).unwrap();
    })
    .join()
    .unwrap();
}

/// IPv6 and IPv4 pod traffic (ping, a 2 s TCP stream each) crosses the overlay between two
/// workers with TSO and UDP_GRO on; on the wire inner IPv6 rides outer IPv6 UDP to port 8472
/// with VNI 7, a real UDP checksum and a flow label, inner IPv4 rides outer IPv4. IPv6
/// datagrams from an unknown IPv6 VTEP are dropped as unknown_sender, and from the known VTEP
/// with an inner source outside its IPv6 podCIDR as foreign_source. Then, with the TAP MTU
/// raised to 1450 (over what IPv6 can carry on a 1500 underlay), an oversized IPv6 packet gets
/// an ICMPv6 packet too big of 1430 from the worker, the sender's kernel learns that path MTU,
/// and TCP over IPv6 still flows.
#[test]
fn ipv6_underlay_carries_both_families_and_filters_ipv6_senders() {
    if !common::privileged("ipv6_underlay_carries_both_families_and_filters_ipv6_senders") {
        return;
    }
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let pair = Pair::new('o', true, true);

    assert!(
        pair.ping(0, &pod6(2), &pod6(1), &[]),
        "IPv6 ping over the IPv6 underlay"
    );
    assert!(
        pair.ping(0, &pod4(2), &pod4(1), &[]),
        "IPv4 ping over the IPv4 underlay"
    );
    for i in 0..2 {
        assert_eq!(pair.stats[i].mode(), OffloadMode::Offload, "node {i}");
    }

    let pcap = std::env::temp_dir().join(format!("ovl-dp6-{}.pcap", std::process::id()));
    let mut cap = common::Capture::start(
        &pair.ns[1],
        &pair.veth[1],
        pcap.clone(),
        &["udp", "port", "8472"],
    );
    assert!(pair.ping(0, &pod6(2), &pod6(1), &["-s", "1000"]));
    let (bps6, bytes6) = pair.iperf(true, "2");
    let (bps4, bytes4) = pair.iperf(false, "2");
    cap.stop();
    let packets = read_pcap(&pcap);
    let _ = std::fs::remove_file(&pcap);
    eprintln!(
        "single TCP stream through the workers: IPv6 in IPv6 {:.2} Gbit/s, IPv4 in IPv4 {:.2} Gbit/s",
        bps6 / 1e9,
        bps4 / 1e9
    );
    assert!(bytes6 > 5e6 && bytes4 > 5e6, "{bytes6} / {bytes4} bytes");

    let (u6_1, u6_2): (IpAddr, IpAddr) =
        (underlay6(1).parse().unwrap(), underlay6(2).parse().unwrap());
    let v6_pkts: Vec<&Outer> = packets.iter().filter(|p| p.src.is_ipv6()).collect();
    let v4_pkts: Vec<&Outer> = packets.iter().filter(|p| p.src.is_ipv4()).collect();
    assert!(
        v6_pkts.len() > 100 && v4_pkts.len() > 100,
        "{} IPv6, {} IPv4",
        v6_pkts.len(),
        v4_pkts.len()
    );
    for p in &packets {
        assert_eq!(p.vni, VNI, "{p:?}");
        assert!(p.dport == PORT || p.sport == PORT, "{p:?}");
        assert!(p.sport >= 49152 || p.sport == PORT, "{p:?}");
        let inner_v6 = p.inner_ethertype == 0x86dd;
        assert_eq!(
            p.src.is_ipv6(),
            inner_v6,
            "inner IPv6 rides outer IPv6, inner IPv4 outer IPv4: {p:?}"
        );
    }
    let mut labels = std::collections::HashMap::new();
    for p in &v6_pkts {
        assert!([u6_1, u6_2].contains(&p.src) && [u6_1, u6_2].contains(&p.dst));
        assert_ne!(p.udp_checksum, 0, "UDP checksum is mandatory over IPv6");
        assert_ne!(p.flow_label, 0, "outer flow label set: {p:?}");
        let l = labels.entry((p.src, p.sport)).or_insert(p.flow_label);
        assert_eq!(*l, p.flow_label, "one flow label per outer flow: {p:?}");
    }

    // The ingress filter on the IPv6 socket.
    ip(
        &pair.ns[1],
        &format!("-6 addr add fd00:6::99/64 dev {} nodad", pair.veth[1]),
    );
    let before = pair.totals(0);
    send_from(
        &pair.ns[1],
        "fd00:6::99",
        vxlan_echo("fd00:244:2::5".parse().unwrap()),
    );
    send_from(
        &pair.ns[1],
        &underlay6(2),
        vxlan_echo("fd00:244:3::5".parse().unwrap()),
    );
    let grew = |r: DropReason| pair.totals(0).drop_count(r) > before.drop_count(r);
    assert!(
        wait_until(Duration::from_secs(5), || grew(DropReason::RxUnknownSender)
            && grew(DropReason::RxForeignSource)),
        "unknown_sender {} -> {}, foreign_source {} -> {}",
        before.drop_count(DropReason::RxUnknownSender),
        pair.totals(0).drop_count(DropReason::RxUnknownSender),
        before.drop_count(DropReason::RxForeignSource),
        pair.totals(0).drop_count(DropReason::RxForeignSource),
    );

    // Path MTU: a TAP MTU of 1450 lets through IPv6 packets that do not fit 1500 - 70.
    for i in 0..2 {
        ip(&pair.ns[i], &format!("link set {} mtu 1450", pair.tap[i]));
    }
    let before = pair.totals(0);
    // 1402 bytes of echo data: a 1450-byte IPv6 packet. The first is answered with a packet
    // too big (ping reports it and fails); the kernel then fragments to 1430 (ping -M want).
    let _ = pair.exec(
        0,
        &[
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-s",
            "1402",
            "-I",
            &pod6(1),
            &pod6(2),
        ],
    );
    assert!(
        pair.totals(0).event_count(PathEvent::Icmpv6PacketTooBig)
            > before.event_count(PathEvent::Icmpv6PacketTooBig),
        "an ICMPv6 packet too big was written to the TAP"
    );
    let route = sh_ok(&["ip", "-n", &pair.ns[0], "-6", "route", "get", &pod6(2)]);
    assert!(route.contains("mtu 1430"), "learnt path MTU: {route}");
    assert!(pair.ping(0, &pod6(2), &pod6(1), &["-s", "1402"]));
    // TCP from a cold start (the learnt MTUs forgotten): its first full-size TSO frames do not
    // fit, the worker answers them, and the stream goes on at the smaller MSS.
    // Both nodes: node 2 learnt 1430 toward node 1 from the ping replies, and would advertise
    // an MSS that fits from the start.
    for ns in &pair.ns {
        ip(ns, "-6 route flush cache");
    }
    let before = pair.totals(0);
    let (_, bytes) = pair.iperf(true, "1");
    assert!(
        bytes > 1e6,
        "TCP over IPv6 after PMTU discovery: {bytes} bytes"
    );
    assert!(
        pair.totals(0).event_count(PathEvent::Icmpv6PacketTooBig)
            > before.event_count(PathEvent::Icmpv6PacketTooBig),
        "the TCP stream met the path MTU: route after flush {}, too_big drops {} -> {}",
        sh_ok(&["ip", "-n", &pair.ns[0], "-6", "route", "get", &pod6(2)]),
        before.drop_count(DropReason::TxTooBig),
        pair.totals(0).drop_count(DropReason::TxTooBig)
    );
    for r in [DropReason::TxUnreachable, DropReason::TxSendError] {
        assert_eq!(pair.totals(0).drop_count(r), 0, "{r:?}");
    }
}

/// The plain path with IPv6 (no TSO on the TAP, no UDP_GRO): frames leave one datagram each
/// through sendmmsg to IPv6 VTEPs and arrive through recvmmsg from IPv6 senders; ping and a
/// TCP stream of each family cross.
#[test]
fn plain_path_carries_both_families_over_both_underlays() {
    if !common::privileged("plain_path_carries_both_families_over_both_underlays") {
        return;
    }
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let pair = Pair::new('p', false, true);
    assert!(pair.ping(0, &pod6(2), &pod6(1), &[]), "IPv6 ping");
    assert!(pair.ping(0, &pod4(2), &pod4(1), &[]), "IPv4 ping");
    for i in 0..2 {
        assert_eq!(pair.stats[i].mode(), OffloadMode::Plain, "node {i}");
    }
    let (bps6, bytes6) = pair.iperf(true, "1");
    let (bps4, bytes4) = pair.iperf(false, "1");
    eprintln!(
        "plain path, single TCP stream: IPv6 in IPv6 {:.2} Gbit/s, IPv4 in IPv4 {:.2} Gbit/s",
        bps6 / 1e9,
        bps4 / 1e9
    );
    assert!(bytes6 > 1e6 && bytes4 > 1e6, "{bytes6} / {bytes4} bytes");
    for i in 0..2 {
        let t = pair.totals(i);
        for r in [
            DropReason::TxUnreachable,
            DropReason::TxSendError,
            DropReason::RxUnknownSender,
            DropReason::RxForeignSource,
        ] {
            assert_eq!(t.drop_count(r), 0, "node {i}: {r:?}");
        }
    }
}

/// Checks an IPv6-only pair (`Pair::new(.., false)`): neither namespace has any IPv4 UDP
/// socket (no IPv4 8472, no IPv4 source ports) while the IPv6 VXLAN port is bound; IPv6 pods
/// reach each other both ways and a TCP stream crosses in each direction. Returns the bytes
/// of the stream from node 1 to node 2.
fn ipv6_only_pair_forwards(pair: &Pair, mode: OffloadMode, secs: &str) -> f64 {
    for i in 0..2 {
        assert_eq!(
            pair.udp_ports(i, false),
            Vec::<u16>::new(),
            "node {i}: no IPv4 UDP socket at all"
        );
        assert!(
            pair.udp_ports(i, true).contains(&PORT),
            "node {i}: the IPv6 VXLAN port is bound: {:?}",
            pair.udp_ports(i, true)
        );
        assert!(
            !sh_ok(&[
                "ip",
                "-n",
                &pair.ns[i],
                "-4",
                "addr",
                "show",
                "dev",
                &pair.veth[i]
            ])
            .contains("inet "),
            "node {i}: an IPv6-only underlay"
        );
    }
    assert!(
        pair.ping(0, &pod6(2), &pod6(1), &[]),
        "IPv6 ping 1 -> 2 over an IPv6-only underlay"
    );
    assert!(
        pair.ping(1, &pod6(1), &pod6(2), &[]),
        "IPv6 ping 2 -> 1 over an IPv6-only underlay"
    );
    for i in 0..2 {
        assert_eq!(pair.stats[i].mode(), mode, "node {i}");
    }
    let (bps, bytes) = pair.iperf(true, secs);
    eprintln!(
        "IPv6-only node, single TCP stream ({mode:?}): {:.2} Gbit/s",
        bps / 1e9
    );
    assert!(bytes > 1e6, "{bytes} bytes");
    for i in 0..2 {
        let t = pair.totals(i);
        assert!(t.tx_packets > 0 && t.rx_packets > 0, "node {i}: {t:?}");
        for r in [
            DropReason::TxUnreachable,
            DropReason::TxSendError,
            DropReason::RxUnknownSender,
            DropReason::RxForeignSource,
        ] {
            assert_eq!(t.drop_count(r), 0, "node {i}: {r:?}");
        }
    }
    // Still none after the traffic (no socket was opened on the way, e.g. for PMTU).
    for i in 0..2 {
        assert_eq!(pair.udp_ports(i, false), Vec::<u16>::new(), "node {i}");
    }
    bytes
}

/// An IPv6-only node (`EnableIPv4: false`, as Flannel's lone flannel-v6.1) with TSO and
/// UDP_GRO, its peer IPv6-only too: queues opened with no IPv4 underlay address bind no IPv4
/// socket, IPv6 pods talk both ways over the IPv6-only underlay. Then, with the peer given an
/// IPv4 side in the FDB (a dual-stack node seen from an IPv6-only one), an IPv4 frame routed
/// into the TAP toward it is counted as an `unreachable` drop (no IPv4 send socket to reach
/// it from), without harming the worker: IPv6 goes on.
#[test]
fn ipv6_only_nodes_forward_ipv6_pods_with_no_ipv4_socket() {
    if !common::privileged("ipv6_only_nodes_forward_ipv6_pods_with_no_ipv4_socket") {
        return;
    }
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let pair = Pair::new('s', true, false);
    let bytes = ipv6_only_pair_forwards(&pair, OffloadMode::Offload, "2");
    assert!(bytes > 5e6, "{bytes} bytes");

    // An IPv4 route into the TAP anyway, and the peer with an IPv4 VTEP.
    pair.fdb[0].store(Arc::new(Fdb::from_peers(&[peer(2)], PORT)));
    pair.ipv4_pods(0);
    let before = pair.totals(0).drop_count(DropReason::TxUnreachable);
    let _ = pair.exec(
        0,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            &pod4(1),
            &pod4(2),
        ],
    );
    let after = pair.totals(0).drop_count(DropReason::TxUnreachable);
    assert!(after >= before + 3, "unreachable drops {before} -> {after}");
    assert!(pair.ping(0, &pod6(2), &pod6(1), &[]), "IPv6 still flows");
    assert_eq!(pair.udp_ports(0, false), Vec::<u16>::new());
}

/// The plain path on an IPv6-only node (no TSO, no UDP_GRO: sendmmsg/recvmmsg on the IPv6
/// sockets alone): IPv6 pods talk both ways, no IPv4 socket is bound.
#[test]
fn plain_path_on_ipv6_only_nodes() {
    if !common::privileged("plain_path_on_ipv6_only_nodes") {
        return;
    }
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let pair = Pair::new('q', false, false);
    ipv6_only_pair_forwards(&pair, OffloadMode::Plain, "1");
}
