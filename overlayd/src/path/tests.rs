use super::*;
use crate::fdb::{Peer, PeerV4};
use crate::wire::vxlan;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

const OWN: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 0];
const PEER: [u8; 6] = [0x0a, 0x58, 10, 244, 2, 0];
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn fdb() -> Fdb {
    Fdb::from_peers(
        &[Peer {
            name: "n2".into(),
            v4: Some(PeerV4 {
                pod_cidr: "10.244.2.0/24".parse().unwrap(),
                vtep_ip: PEER_IP,
                vtep_mac: crate::wire::ethernet::MacAddr(PEER),
            }),
            v6: None,
        }],
        8472,
    )
}

fn cfg() -> DecapConfig {
    DecapConfig {
        vni: 1,
        own_mac: OWN,
        inner_mtu: 1450,
        allow_any_sender: false,
        allow_foreign_inner_source: false,
    }
}

fn tcp_frame(dst: [u8; 6], payload_len: usize, sport: u16) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], dst)
        .ipv4([10, 244, 2, 2], [10, 244, 1, 2], 64)
        .tcp(sport, 5201, 1000, 512);
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

fn udp_frame(dst: [u8; 6], payload_len: usize) -> Vec<u8> {
    let payload = vec![7u8; payload_len];
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], dst)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(1234, 53);
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

/// Replaces the L4 checksum with the pseudo-header seed, as a kernel-vxlan peer delivers it.
fn make_partial(frame: &mut [u8]) -> usize {
    let l4 = ip::L4Info::parse(&frame[14..]).unwrap();
    let field = 14 + l4.l4_offset + l4.csum_offset().unwrap();
    let seed = checksum::fold(l4.pseudo_sum());
    frame[field..field + 2].copy_from_slice(&seed.to_be_bytes());
    field
}

fn checksum_ok(frame: &[u8]) -> bool {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ipv4)) = &p.net else {
        if let (Some(etherparse::NetSlice::Ipv6(ipv6)), Some(TransportSlice::Udp(u))) =
            (&p.net, &p.transport)
        {
            let want = u
                .to_header()
                .calc_checksum_ipv6(&ipv6.header().to_header(), u.payload())
                .unwrap();
            return want == u.checksum();
        }
        panic!("unexpected packet");
    };
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t
                .to_header()
                .calc_checksum_ipv4(&ipv4.header().to_header(), t.payload())
                .unwrap();
            want == t.checksum()
        }
        _ => panic!("not tcp"),
    }
}

fn vx(frame: &[u8], vni: u32) -> Vec<u8> {
    let mut v = vxlan::header(vni).to_vec();
    v.extend_from_slice(frame);
    v
}

#[test]
fn vxlan_header_bytes() {
    assert_eq!(vxlan::header(1), [0x08, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(
        vxlan::header(0x00ab_cdef),
        [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]
    );
    let h = vxlan::header(42);
    let p = vxlan::Packet::new_checked(&h).unwrap();
    assert!(p.has_vni() && p.vni() == 42 && !p.reserved_bits_set());
}

#[test]
fn encap_known_peer() {
    let fdb = fdb();
    let mut f = tcp_frame(PEER, 100, 40000);
    let t = encap(&mut f, &vnet::Header::default(), &fdb).unwrap();
    assert_eq!(&*t.peer.node, "n2");
    assert_eq!(t.destination, SocketAddr::from((PEER_IP, 8472)));
    let mut g = tcp_frame(PEER, 100, 40000);
    assert_eq!(
        encap(&mut g, &vnet::Header::default(), &fdb)
            .unwrap()
            .flow_hash,
        t.flow_hash
    );
    let mut h = tcp_frame(PEER, 100, 40001);
    assert_ne!(
        encap(&mut h, &vnet::Header::default(), &fdb)
            .unwrap()
            .flow_hash,
        t.flow_hash
    );
}

#[test]
fn encap_drops_by_reason() {
    let f = fdb();
    let none = vnet::Header::default();
    assert_eq!(encap(&mut [0u8; 13], &none, &f), Err(DropReason::TxShort));
    assert_eq!(
        encap(&mut tcp_frame([0xff; 6], 10, 1), &none, &f),
        Err(DropReason::TxNoFlood)
    );
    assert_eq!(
        encap(&mut tcp_frame([0x33, 0x33, 0, 0, 0, 1], 10, 1), &none, &f),
        Err(DropReason::TxNoFlood)
    );
    assert_eq!(
        encap(&mut tcp_frame([2, 1, 1, 1, 1, 1], 10, 1), &none, &f),
        Err(DropReason::TxUnknownDst)
    );
    let gso = vnet::Header {
        gso_type: vnet::GSO_UDP,
        ..none
    };
    assert_eq!(
        encap(&mut tcp_frame(PEER, 10, 1), &gso, &f),
        Err(DropReason::TxGsoUnsupported)
    );
    let bad = vnet::Header {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: 2000,
        csum_offset: 16,
        ..none
    };
    assert_eq!(
        encap(&mut tcp_frame(PEER, 10, 1), &bad, &f),
        Err(DropReason::TxBadOffload)
    );
    // A checksum request inside the Ethernet/IP headers or at an odd offset is refused and
    // the frame left untouched (fuzz finding).
    for (start, offset) in [(0, 0), (12, 16), (33, 16), (34, 10)] {
        let req = vnet::Header {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: start,
            csum_offset: offset,
            ..none
        };
        let mut frame = tcp_frame(PEER, 10, 1);
        let before = frame.clone();
        assert_eq!(encap(&mut frame, &req, &f), Err(DropReason::TxBadOffload));
        assert_eq!(frame, before);
    }
}

#[test]
fn encap_completes_partial_checksum() {
    let mut f = tcp_frame(PEER, 333, 1);
    make_partial(&mut f);
    assert!(!checksum_ok(&f));
    let h = vnet::Header {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..Default::default()
    };
    encap(&mut f, &h, &fdb()).unwrap();
    assert!(checksum_ok(&f));
}

#[test]
fn decap_accepts_and_plain_for_complete_checksum() {
    let f = tcp_frame(OWN, 100, 1);
    let h = decap(&vx(&f, 1), PEER_IP, &fdb(), &cfg()).unwrap().vnet;
    assert_eq!(h, vnet::Header::default());
}

#[test]
fn decap_marks_partial_checksum_needs_csum() {
    let mut f = tcp_frame(OWN, 100, 1);
    make_partial(&mut f);
    let h = decap(&vx(&f, 1), PEER_IP, &fdb(), &cfg()).unwrap().vnet;
    assert_eq!(h.flags, vnet::F_NEEDS_CSUM);
    assert_eq!(
        (h.csum_start, h.csum_offset, h.gso_type),
        (34, 16, vnet::GSO_NONE)
    );
    // What the kernel does with NEEDS_CSUM gives a valid checksum.
    complete_checksum(&mut f, h.csum_start.into(), h.csum_offset.into()).unwrap();
    assert!(checksum_ok(&f));

    let mut u = udp_frame(OWN, 20);
    make_partial(&mut u);
    // An IPv6 frame: no IPv6 podCIDR in an IPv4 FDB, so only without the source check.
    let any_source = DecapConfig {
        allow_foreign_inner_source: true,
        ..cfg()
    };
    let h = decap(&vx(&u, 1), PEER_IP, &fdb(), &any_source)
        .unwrap()
        .vnet;
    assert_eq!(
        (h.flags, h.csum_start, h.csum_offset),
        (vnet::F_NEEDS_CSUM, 54, 6)
    );
    complete_checksum(&mut u, h.csum_start.into(), h.csum_offset.into()).unwrap();
    assert!(checksum_ok(&u));
}

#[test]
fn decap_turns_oversized_tcp_burst_into_gso() {
    let mut f = tcp_frame(OWN, 20000, 1);
    make_partial(&mut f);
    let h = decap(&vx(&f, 1), PEER_IP, &fdb(), &cfg()).unwrap().vnet;
    assert_eq!(h.gso_type, vnet::GSO_TCPV4);
    assert_eq!(h.gso_size, 1450 - 40);
    assert_eq!(h.hdr_len, 54);
    assert_eq!(h.flags, vnet::F_NEEDS_CSUM);
}

#[test]
fn decap_drops_by_reason() {
    let f = fdb();
    let c = cfg();
    let good = tcp_frame(OWN, 10, 1);
    assert_eq!(
        decap(&[8, 0, 0, 0], PEER_IP, &f, &c),
        Err(DropReason::RxShort)
    );
    assert_eq!(
        decap(&vx(&good[..13], 1), PEER_IP, &f, &c),
        Err(DropReason::RxShort)
    );
    let mut no_i = vx(&good, 1);
    no_i[0] = 0;
    assert_eq!(decap(&no_i, PEER_IP, &f, &c), Err(DropReason::RxNoIFlag));
    assert_eq!(
        decap(&vx(&good, 2), PEER_IP, &f, &c),
        Err(DropReason::RxWrongVni)
    );
    let stranger = Ipv4Addr::new(198, 18, 0, 99);
    assert_eq!(
        decap(&vx(&good, 1), stranger, &f, &c),
        Err(DropReason::RxUnknownSender)
    );
    let any = DecapConfig {
        allow_any_sender: true,
        ..c
    };
    assert!(decap(&vx(&good, 1), stranger, &f, &any).is_ok());
    // A sender of no IP family (marked unspecified by the socket layer) is never accepted.
    for nobody in [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    ] {
        assert_eq!(
            decap(&vx(&good, 1), nobody, &f, &any),
            Err(DropReason::RxUnknownSender)
        );
    }
    assert_eq!(
        decap(&vx(&tcp_frame(PEER, 10, 1), 1), PEER_IP, &f, &c),
        Err(DropReason::RxNotForUs)
    );
    let mut vlan = good.clone();
    vlan[12..14].copy_from_slice(&[0x81, 0]);
    assert_eq!(
        decap(&vx(&vlan, 1), PEER_IP, &f, &c),
        Err(DropReason::RxInnerVlan)
    );
}

fn tcp_from(src: [u8; 4]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], OWN)
        .ipv4(src, [10, 244, 1, 2], 64)
        .tcp(1, 5201, 1000, 512);
    let mut out = Vec::new();
    b.write(&mut out, &[1, 2, 3]).unwrap();
    out
}

#[test]
fn decap_drops_inner_sources_the_sending_vtep_does_not_own() {
    let (f, c) = (fdb(), cfg());
    // The peer's pods and its flannel.1/TAP address (podCIDR network address) pass.
    for src in [[10, 244, 2, 2], [10, 244, 2, 0], [10, 244, 2, 255]] {
        assert!(
            decap(&vx(&tcp_from(src), 1), PEER_IP, &f, &c).is_ok(),
            "{src:?}"
        );
    }
    // Another node's pods, our own pods, and the world do not.
    for src in [
        [10, 244, 3, 2],
        [10, 244, 1, 9],
        [8, 8, 8, 8],
        [198, 18, 0, 2],
    ] {
        assert_eq!(
            decap(&vx(&tcp_from(src), 1), PEER_IP, &f, &c),
            Err(DropReason::RxForeignSource),
            "{src:?}"
        );
    }
    // IPv6 (incl. link-local): no IPv6 podCIDR in the FDB, so no IPv6 source is the peer's.
    let mut v6 = udp_frame(OWN, 20);
    v6[22..24].copy_from_slice(&[0xfe, 0x80]);
    assert_eq!(
        decap(&vx(&v6, 1), PEER_IP, &f, &c),
        Err(DropReason::RxForeignSource)
    );
    // ARP and other non-IP frames.
    let mut arp = tcp_from([10, 244, 2, 2]);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(
        decap(&vx(&arp, 1), PEER_IP, &f, &c),
        Err(DropReason::RxInnerNotIp)
    );
    // An IPv4 header too short to hold a source.
    let short = tcp_from([10, 244, 2, 2]);
    assert_eq!(
        decap(&vx(&short[..14 + 12], 1), PEER_IP, &f, &c),
        Err(DropReason::RxForeignSource)
    );
    // The flag turns the check off; an unknown sender let in by allow_any_sender has no
    // podCIDR to check against.
    let off = DecapConfig {
        allow_foreign_inner_source: true,
        ..c
    };
    for frame in [tcp_from([10, 244, 3, 2]), arp.clone(), v6.clone()] {
        assert!(decap(&vx(&frame, 1), PEER_IP, &f, &off).is_ok());
    }
    let any = DecapConfig {
        allow_any_sender: true,
        ..c
    };
    let stranger = Ipv4Addr::new(198, 18, 0, 99);
    assert!(decap(&vx(&tcp_from([10, 244, 3, 2]), 1), stranger, &f, &any).is_ok());
}

#[test]
fn decap_ignores_reserved_bits() {
    let mut p = vx(&tcp_frame(OWN, 10, 1), 1);
    p[0] |= 0x80; // GBP "G" bit
    p[1] = 0xff;
    p[7] = 0xff;
    assert!(vxlan::Packet::new_checked(&p).unwrap().reserved_bits_set());
    assert!(decap(&p, PEER_IP, &fdb(), &cfg()).is_ok());
}

#[test]
fn malformed_inner_never_panics() {
    let f = fdb();
    let c = cfg();
    let base = tcp_frame(OWN, 40, 1);
    for cut in 0..base.len() {
        let _ = decap(&vx(&base[..cut], 1), PEER_IP, &f, &c);
        let mut g = base[..cut].to_vec();
        let _ = encap(&mut g, &vnet::Header::default(), &f);
    }
    // Garbage IP header lengths.
    for ihl in 0..=255u8 {
        let mut g = base.clone();
        g[14] = ihl;
        let _ = decap(&vx(&g, 1), PEER_IP, &f, &c);
        g[16] = ihl;
        g[17] = 0xff;
        let _ = decap(&vx(&g, 1), PEER_IP, &f, &c);
    }
}

#[test]
fn drop_reason_table_is_complete() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i);
    }
    assert_eq!(DropReason::TxSendError.direction(), "tx");
    assert_eq!(DropReason::RxShort.direction(), "rx");
}

/// A dual-stack peer: its IPv6 VTEP address is a known sender, it speaks for its IPv6 pods
/// (and its device address) only, and a kernel-vxlan peer's IPv6 TCP burst arriving as one
/// datagram goes to the TAP as a GSO_TCPV6 super-frame sized to the inner MTU.
#[test]
fn decap_checks_ipv6_vteps_and_ipv6_inner_sources() {
    let peer_ip6: Ipv6Addr = "fd00:18::2".parse().unwrap();
    let f = Fdb::from_peers(
        &[Peer {
            name: "n2".into(),
            v4: Some(PeerV4 {
                pod_cidr: "10.244.2.0/24".parse().unwrap(),
                vtep_ip: PEER_IP,
                vtep_mac: crate::wire::ethernet::MacAddr(PEER),
            }),
            v6: Some(crate::fdb::PeerV6 {
                pod_cidr: "fd00:10:244:2::/64".parse().unwrap(),
                vtep_ip: peer_ip6,
                vtep_mac: crate::wire::ethernet::MacAddr(PEER),
            }),
        }],
        8472,
    );
    let c = cfg();
    let tcp6 = |src: &str, len: usize| {
        let src: Ipv6Addr = src.parse().unwrap();
        let dst: Ipv6Addr = "fd00:10:244:1::2".parse().unwrap();
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], OWN)
            .ipv6(src.octets(), dst.octets(), 64)
            .tcp(40000, 5201, 1000, 512);
        let mut out = Vec::new();
        b.write(&mut out, &vec![3u8; len]).unwrap();
        out
    };
    for src in ["fd00:10:244:2::5", "fd00:10:244:2::"] {
        let d = decap(&vx(&tcp6(src, 10), 1), peer_ip6, &f, &c).unwrap();
        assert!(
            Arc::ptr_eq(d.peer.unwrap(), f.vtep_counters(PEER_IP).unwrap()),
            "counted on the peer"
        );
    }
    for src in [
        "fd00:10:244:3::5",
        "fd00:10:244:1::9",
        "fe80::1",
        "2001:db8::1",
    ] {
        assert_eq!(
            decap(&vx(&tcp6(src, 10), 1), peer_ip6, &f, &c),
            Err(DropReason::RxForeignSource),
            "{src}"
        );
    }
    let stranger: Ipv6Addr = "fd00:18::99".parse().unwrap();
    assert_eq!(
        decap(&vx(&tcp6("fd00:10:244:2::5", 10), 1), stranger, &f, &c),
        Err(DropReason::RxUnknownSender)
    );
    // IPv4 pods keep their check when the peer sends from its IPv6 address too.
    assert_eq!(
        decap(&vx(&tcp_from([10, 244, 3, 2]), 1), peer_ip6, &f, &c),
        Err(DropReason::RxForeignSource)
    );
    assert!(decap(&vx(&tcp_from([10, 244, 2, 2]), 1), peer_ip6, &f, &c).is_ok());

    // A 20 KB IPv6 TCP burst in one datagram (fastpath-facts pitfall 2).
    let mut burst = tcp6("fd00:10:244:2::5", 20_000);
    make_partial(&mut burst);
    let h = decap(&vx(&burst, 1), peer_ip6, &f, &c).unwrap().vnet;
    assert_eq!(h.gso_type & !vnet::GSO_ECN, vnet::GSO_TCPV6);
    // inner MTU 1450 - 40 (IPv6) - 20 (TCP)
    assert_eq!(h.gso_size, 1390);
    assert_ne!(h.flags & vnet::F_NEEDS_CSUM, 0);
}
