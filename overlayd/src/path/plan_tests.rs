//! The planner's decisions, cross-checked with etherparse: what it sends is the frame it was
//! given (plain) or valid TCP segments that add up to it (super-frame), to the right VTEP, from a
//! socket fixed per flow, in chunks the kernel takes; and what each errno leads to.
use super::*;
use crate::fdb::{Peer, PeerV4};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

const PEER_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 2, 0];
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn fdb() -> Fdb {
    Fdb::from_peers(
        &[Peer {
            name: "n2".into(),
            v4: Some(PeerV4 {
                pod_cidr: "10.244.2.0/24".parse().unwrap(),
                vtep_ip: PEER_IP,
                vtep_mac: crate::wire::ethernet::MacAddr(PEER_MAC),
            }),
            v6: None,
        }],
        8472,
    )
}

fn tcp_frame(payload_len: usize, sport: u16, tos_ecn: u8, v6: bool) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 % 253) as u8).collect();
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], PEER_MAC);
    let b = if v6 {
        eth.ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(sport, 5201, 4000, 512)
    } else {
        eth.ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .tcp(sport, 5201, 4000, 512)
    };
    let b = b
        .ack(9)
        .options(&[etherparse::TcpOptionElement::Timestamp(1, 2)])
        .unwrap();
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    if v6 {
        // ECN field: the low two bits of the traffic class, bits 4..5 of IPv6 byte 1.
        out[15] |= tos_ecn << 4;
    } else {
        // ECN field in the TOS byte; fix the header checksum.
        out[15] = tos_ecn;
        out[24..26].copy_from_slice(&[0, 0]);
        let c = crate::wire::checksum::finish(crate::wire::checksum::sum(&out[14..34], 0));
        out[24..26].copy_from_slice(&c.to_be_bytes());
    }
    out
}

/// A TAP read: virtio-net header, then the frame.
fn slot(hdr: &vnet::Header, frame: &[u8]) -> Vec<u8> {
    let mut s = hdr.to_bytes().to_vec();
    s.extend_from_slice(frame);
    s
}

fn tso(frame: &[u8], mss: u16, v6: bool) -> vnet::Header {
    let ip = if v6 { 40 } else { 20 };
    vnet::Header {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 },
        hdr_len: (14 + ip + 32) as u16,
        gso_size: mss,
        csum_start: (14 + ip) as u16,
        csum_offset: 16,
    }
    .checked(frame)
}

trait Checked {
    fn checked(self, frame: &[u8]) -> Self;
}
impl Checked for vnet::Header {
    fn checked(self, frame: &[u8]) -> Self {
        assert!(frame.len() > usize::from(self.hdr_len));
        self
    }
}

/// Checks one inner TCP segment with etherparse: IPv4 header checksum, TCP checksum.
/// Returns (sequence number, payload).
fn valid_tcp(frame: &[u8]) -> (u32, Vec<u8>) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not TCP")
    };
    let want = match &p.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap()
        }
        Some(etherparse::NetSlice::Ipv6(ip)) => t
            .to_header()
            .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
            .unwrap(),
        _ => panic!("not IP"),
    };
    assert_eq!(t.checksum(), want, "TCP checksum");
    (t.sequence_number(), t.payload().to_vec())
}

#[test]
fn plain_frame_is_reframed_in_place_for_its_peer() {
    let f = fdb();
    let frame = tcp_frame(100, 40000, ecn::ECT_0, false);
    let mut s = slot(&vnet::Header::default(), &frame);
    let mut p = Planner::new(7, 4);
    let t = p.plan(&mut s, &f).unwrap();
    assert_eq!(t.destination, SocketAddr::from((PEER_IP, 8472)));
    assert_eq!(t.tos, ecn::ECT_0, "outer ECN copies the inner ECT(0)");
    assert!(t.socket < 4);
    let Shape::Plain { bytes } = t.shape.clone() else {
        panic!("{:?}", t.shape)
    };
    let d = &s[bytes];
    assert_eq!(d.len(), vxlan::HEADER_LEN + frame.len());
    assert_eq!(d[..8], vxlan::header(7));
    assert_eq!(&d[8..], &frame[..], "the frame leaves unchanged");
    valid_tcp(&d[8..]);
}

#[test]
fn inner_ce_leaves_as_ect0_outside() {
    let f = fdb();
    let mut s = slot(&vnet::Header::default(), &tcp_frame(10, 1, ecn::CE, false));
    let t = Planner::new(1, 1).plan(&mut s, &f).unwrap();
    assert_eq!(t.tos, ecn::ECT_0);
}

#[test]
fn drops_say_why() {
    let f = fdb();
    let mut p = Planner::new(1, 2);
    assert_eq!(p.plan(&mut [0u8; 5], &f).unwrap_err(), DropReason::TxShort);
    let mut other = tcp_frame(10, 1, 0, false);
    other[..6].copy_from_slice(&[0x0a, 0x58, 9, 9, 9, 9]);
    let mut s = slot(&vnet::Header::default(), &other);
    assert_eq!(p.plan(&mut s, &f).unwrap_err(), DropReason::TxUnknownDst);
    let frame = tcp_frame(3000, 1, 0, false);
    let mut bad = tso(&frame, 1000, false);
    bad.gso_type = vnet::GSO_TCPV6;
    let mut s = slot(&bad, &frame);
    assert_eq!(p.plan(&mut s, &f).unwrap_err(), DropReason::TxBadOffload);
}

#[test]
fn a_flow_keeps_its_socket_and_flows_spread() {
    let f = fdb();
    let mut p = Planner::new(1, 4);
    let mut used = [false; 4];
    for sport in 1000..1064 {
        let mut a = slot(&vnet::Header::default(), &tcp_frame(10, sport, 0, false));
        let mut b = slot(&vnet::Header::default(), &tcp_frame(900, sport, 0, false));
        let sa = p.plan(&mut a, &f).unwrap().socket;
        let sb = p.plan(&mut b, &f).unwrap().socket;
        assert_eq!(sa, sb, "one flow, one socket (one outer source port)");
        used[sa] = true;
    }
    assert!(
        used.iter().all(|u| *u),
        "64 flows use all 4 sockets: {used:?}"
    );
}

/// Sends of a planned super-frame, as the worker would make them with no errors.
fn chunks(p: &Planner, t: &Transmit<'_>, s: &[u8]) -> Vec<(Chunk, Vec<Vec<u8>>)> {
    let Shape::Segmented {
        segments,
        segment_size,
    } = t.shape
    else {
        panic!("{:?}", t.shape)
    };
    let mut send = SegmentedSend::to(segments, segment_size, &t.destination);
    let mut out = Vec::new();
    while let Some(c) = send.next_chunk(true) {
        let dgrams = c
            .segments
            .clone()
            .map(|i| {
                let (h, payload) = p.segment(i);
                let mut d = h.to_vec();
                d.extend_from_slice(&s[payload]);
                d
            })
            .collect();
        assert_eq!(
            send.on_result(&c, Ok(())),
            Step::Sent {
                packets: c.segments.len()
            }
        );
        out.push((c, dgrams));
    }
    out
}

#[test]
fn super_frame_becomes_valid_segments_in_sends_the_kernel_takes() {
    let f = fdb();
    for v6 in [false, true] {
        for (len, mss) in [
            (65_000usize, 1398u16),
            (64_000, 1448),
            (3000, 1000),
            (500, 1398),
        ] {
            let frame = tcp_frame(len, 40000, 0, v6);
            let mut s = slot(&tso(&frame, mss, v6), &frame);
            let mut p = Planner::new(1, 2);
            let t = p.plan(&mut s, &f).unwrap();
            let hl = 14 + if v6 { 40 } else { 20 } + 32;
            let Shape::Segmented {
                segments,
                segment_size,
            } = t.shape
            else {
                panic!()
            };
            assert_eq!(segments, len.div_ceil(usize::from(mss)));
            assert_eq!(
                segment_size,
                vxlan::HEADER_LEN + hl + len.min(usize::from(mss))
            );
            let sends = chunks(&p, &t, &s);
            let mut payload = Vec::new();
            let mut seq = 4000u32;
            let mut next = 0;
            for (c, dgrams) in &sends {
                assert_eq!(c.segments.start, next, "chunks cover every segment once");
                next = c.segments.end;
                let total: usize = dgrams.iter().map(Vec::len).sum();
                assert!(total <= MAX_UDP_PAYLOAD, "one send is at most 65,507 bytes");
                assert!(dgrams.len() <= MAX_SEGMENTS_PER_SEND);
                assert_eq!(c.segment_size.is_some(), dgrams.len() > 1);
                for (k, d) in dgrams.iter().enumerate() {
                    // UDP_SEGMENT cuts at segment_size: all but the last are exactly that.
                    if let Some(sz) = c.segment_size {
                        if k + 1 < dgrams.len() {
                            assert_eq!(d.len(), usize::from(sz));
                        } else {
                            assert!(d.len() <= usize::from(sz));
                        }
                    }
                    assert_eq!(d[..8], vxlan::header(1));
                    let (sq, pl) = valid_tcp(&d[8..]);
                    assert_eq!(sq, seq);
                    seq = seq.wrapping_add(pl.len() as u32);
                    payload.extend_from_slice(&pl);
                }
            }
            assert_eq!(next, segments);
            assert_eq!(payload, frame[hl..], "segments add up to the frame");
            // A 64 KiB frame needs two sends: the fewest the datagram limit allows.
            assert_eq!(
                sends.len(),
                segments.div_ceil(segments_per_send(segment_size))
            );
        }
    }
}

#[test]
fn per_send_limits() {
    assert_eq!(segments_per_send(1450), 45);
    assert_eq!(segments_per_send(100), MAX_SEGMENTS_PER_SEND);
    assert_eq!(segments_per_send(65_507), 1);
    assert_eq!(segments_per_send(70_000), 1);
    assert_eq!(segments_per_send(0), MAX_SEGMENTS_PER_SEND);
    // IPv6's payload length does not count its 40-byte header: 20 bytes more per send.
    assert_eq!(MAX_UDP_PAYLOAD_V6, 65_535 - 8);
    assert_eq!(MAX_UDP_PAYLOAD_V6 - MAX_UDP_PAYLOAD, 40 - 20);
    assert_eq!(
        max_udp_payload(&SocketAddr::from((PEER_IP, 1))),
        MAX_UDP_PAYLOAD
    );
    assert_eq!(
        max_udp_payload(&SocketAddr::from((PEER_IP6, 1))),
        MAX_UDP_PAYLOAD_V6
    );
    assert_eq!(segments_per_send(1489), 43);
    assert_eq!(segments_per_send_within(1489, MAX_UDP_PAYLOAD_V6), 44);
    assert_eq!(segments_per_send_within(65_527, MAX_UDP_PAYLOAD_V6), 1);
}

const PEER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
const PEER3_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 3, 0];
const PEER3_MAC6: [u8; 6] = [0x0a, 0x58, 0xfd, 0, 3, 0];
const PEER3_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const PEER3_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 3);

/// n2: dual-stack, one MAC for both families (as overlayd publishes); n3: dual-stack with its
/// own IPv6 VtepMAC (as a Flannel node's flannel-v6.1 device); n4: IPv4 only.
fn dual_stack_fdb() -> Fdb {
    let peer = |name: &str, n: u8, mac: [u8; 6], v6: Option<(Ipv6Addr, [u8; 6])>| Peer {
        name: name.into(),
        v4: Some(PeerV4 {
            pod_cidr: format!("10.244.{n}.0/24").parse().unwrap(),
            vtep_ip: Ipv4Addr::new(198, 18, 0, n),
            vtep_mac: crate::wire::ethernet::MacAddr(mac),
        }),
        v6: v6.map(|(ip, mac6)| crate::fdb::PeerV6 {
            pod_cidr: format!("fd00:10:244:{n}::/64").parse().unwrap(),
            vtep_ip: ip,
            vtep_mac: crate::wire::ethernet::MacAddr(mac6),
        }),
    };
    Fdb::from_peers(
        &[
            peer("n2", 2, PEER_MAC, Some((PEER_IP6, PEER_MAC))),
            peer("n3", 3, PEER3_MAC, Some((PEER3_IP6, PEER3_MAC6))),
            peer("n4", 4, [0x0a, 0x58, 10, 244, 4, 0], None),
        ],
        8472,
    )
}

fn to_mac(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&mac);
    frame
}

/// Inner IPv6 leaves over the peer's IPv6 VTEP, inner IPv4 over its IPv4 VTEP, whichever MAC
/// scheme the peer uses; an IPv4-only peer gets everything over IPv4 as before.
#[test]
fn inner_family_picks_the_outer_family() {
    let f = dual_stack_fdb();
    let mut p = Planner::new(7, 4);
    let v6_dst = SocketAddr::from((PEER_IP6, 8472));
    let cases: [(Vec<u8>, Result<SocketAddr, DropReason>); 6] = [
        (tcp_frame(100, 1, 0, true), Ok(v6_dst)),
        (
            tcp_frame(100, 1, 0, false),
            Ok(SocketAddr::from((PEER_IP, 8472))),
        ),
        (
            to_mac(tcp_frame(100, 1, 0, true), PEER3_MAC6),
            Ok(SocketAddr::from((PEER3_IP6, 8472))),
        ),
        // n3's IPv6 MAC is only n3's IPv6 device: no IPv4 frame goes there.
        (
            to_mac(tcp_frame(100, 1, 0, false), PEER3_MAC6),
            Err(DropReason::TxUnknownDst),
        ),
        // An IPv6 frame to n3's IPv4 MAC: as kernel vxlan (flannel.1) would, over IPv4.
        (
            to_mac(tcp_frame(100, 1, 0, true), PEER3_MAC),
            Ok(SocketAddr::from((PEER3_IP, 8472))),
        ),
        (
            to_mac(tcp_frame(100, 1, 0, true), [0x0a, 0x58, 10, 244, 4, 0]),
            Ok(SocketAddr::from((Ipv4Addr::new(198, 18, 0, 4), 8472))),
        ),
    ];
    for (i, (frame, want)) in cases.into_iter().enumerate() {
        let mut s = slot(&vnet::Header::default(), &frame);
        let got = p.plan(&mut s, &f).map(|t| {
            let Shape::Plain { bytes } = t.shape.clone() else {
                panic!("{:?}", t.shape)
            };
            assert_eq!(s[bytes.clone()][..8], vxlan::header(7));
            assert_eq!(
                &s[bytes][8..],
                &frame[..],
                "case {i}: the frame leaves unchanged"
            );
            t.destination
        });
        assert_eq!(got, want, "case {i}");
    }
    // The peer's counters are the same whichever family carries it.
    let mut a = slot(&vnet::Header::default(), &tcp_frame(10, 1, 0, true));
    let mut b = slot(&vnet::Header::default(), &tcp_frame(10, 1, 0, false));
    let ca = std::sync::Arc::clone(&p.plan(&mut a, &f).unwrap().peer.counters);
    let cb = std::sync::Arc::clone(&p.plan(&mut b, &f).unwrap().peer.counters);
    assert!(std::sync::Arc::ptr_eq(&ca, &cb));
}

/// Each family has its own pool of send sockets (`socket` indexes the pool of the
/// destination's family); with no IPv6 underlay (no IPv6 sockets) a frame for an IPv6 VTEP is
/// unreachable, counted before any work is done on it, and IPv4 is unaffected.
#[test]
fn the_socket_comes_from_the_destination_family_pool() {
    let f = dual_stack_fdb();
    let mut p = Planner::with_pools(1, 16, 3);
    let mut seen6 = std::collections::HashSet::new();
    for sport in 0..200u16 {
        let mut s = slot(&vnet::Header::default(), &tcp_frame(10, sport, 0, true));
        let t = p.plan(&mut s, &f).unwrap();
        assert!(t.destination.is_ipv6());
        assert!(t.socket < 3, "{}", t.socket);
        seen6.insert(t.socket);
        let mut s = slot(&vnet::Header::default(), &tcp_frame(10, sport, 0, false));
        let t = p.plan(&mut s, &f).unwrap();
        assert!(t.socket < 16);
    }
    assert_eq!(seen6.len(), 3, "flows spread over the IPv6 pool");

    let mut p = Planner::with_pools(1, 4, 0);
    let frame = tcp_frame(1395 * 4, 40000, 0, true);
    let mut s = slot(&tso(&frame, 1395, true), &frame);
    assert_eq!(
        p.plan(&mut s, &f).map(|t| t.destination),
        Err(DropReason::TxUnreachable)
    );
    let mut s = slot(&vnet::Header::default(), &tcp_frame(10, 1, 0, false));
    assert!(p.plan(&mut s, &f).unwrap().destination.is_ipv4());
    // An IPv6 frame to a peer known only by its IPv4 VTEP still leaves (over IPv4).
    let frame = to_mac(tcp_frame(100, 1, 0, true), PEER3_MAC);
    let mut s = slot(&vnet::Header::default(), &frame);
    assert!(p.plan(&mut s, &f).unwrap().destination.is_ipv4());
}

/// An IPv6-only node (no IPv4 send sockets): frames for IPv4 VTEPs, plain or super-frames,
/// are unreachable drops, never an index into an empty pool; inner IPv6 to an IPv6 VTEP
/// leaves over the IPv6 pool as on a dual-stack node.
#[test]
fn without_ipv4_sockets_frames_for_ipv4_vteps_are_unreachable() {
    let f = dual_stack_fdb();
    let mut p = Planner::with_pools(1, 0, 4);
    let mut s = slot(&vnet::Header::default(), &tcp_frame(10, 1, 0, false));
    assert_eq!(
        p.plan(&mut s, &f).map(|t| t.destination),
        Err(DropReason::TxUnreachable)
    );
    let frame = tcp_frame(1395 * 4, 40000, 0, false);
    let mut s = slot(&tso(&frame, 1395, false), &frame);
    assert_eq!(
        p.plan(&mut s, &f).map(|t| t.destination),
        Err(DropReason::TxUnreachable)
    );
    // Inner IPv6 to a peer known only by its IPv4 VTEP has no way out either.
    let frame = to_mac(tcp_frame(100, 1, 0, true), PEER3_MAC);
    let mut s = slot(&vnet::Header::default(), &frame);
    assert_eq!(
        p.plan(&mut s, &f).map(|t| t.destination),
        Err(DropReason::TxUnreachable)
    );
    for sport in 0..50u16 {
        let mut s = slot(&vnet::Header::default(), &tcp_frame(10, sport, 0, true));
        let t = p.plan(&mut s, &f).unwrap();
        assert!(t.destination.is_ipv6() && t.socket < 4, "{}", t.destination);
    }
    let frame = tcp_frame(1395 * 4, 40000, 0, true);
    let mut s = slot(&tso(&frame, 1395, true), &frame);
    let t = p.plan(&mut s, &f).unwrap();
    assert!(t.destination.is_ipv6());
    assert!(matches!(t.shape, Shape::Segmented { segments: 4, .. }));
}

/// The outer traffic class carries the inner IPv6 ECN field as the outer TOS carries IPv4's
/// (RFC 6040 normal mode: CE leaves as ECT(0)).
#[test]
fn inner_ipv6_ecn_sets_the_outer_traffic_class() {
    let f = dual_stack_fdb();
    let mut p = Planner::new(1, 1);
    for (inner, outer) in [
        (ecn::NOT_ECT, ecn::NOT_ECT),
        (ecn::ECT_0, ecn::ECT_0),
        (ecn::ECT_1, ecn::ECT_1),
        (ecn::CE, ecn::ECT_0),
    ] {
        let frame = tcp_frame(100, 1, inner, true);
        let mut s = slot(&vnet::Header::default(), &frame);
        let t = p.plan(&mut s, &f).unwrap();
        assert!(t.destination.is_ipv6());
        assert_eq!(t.tos, outer, "inner ECN {inner}");
        valid_tcp(&frame);
    }
}

/// An IPv6 TSO super-frame to an IPv6 VTEP: valid TCP segments (etherparse) adding up to the
/// frame, in sends up to IPv6's 65,527-byte limit, so 44 segments of 1,489 bytes go in one
/// send where IPv4 (65,507) needs two.
#[test]
fn ipv6_super_frame_uses_the_ipv6_datagram_limit() {
    let f = dual_stack_fdb();
    // 1,489 = 8 VXLAN + 14 Ethernet + 40 IPv6 + 32 TCP + 1,395 MSS.
    let (mss, segs) = (1395u16, 44usize);
    let len = usize::from(mss) * segs;
    let frame = tcp_frame(len, 40000, ecn::ECT_0, true);
    let mut s = slot(&tso(&frame, mss, true), &frame);
    let mut p = Planner::new(1, 2);
    let t = p.plan(&mut s, &f).unwrap();
    assert_eq!(t.destination, SocketAddr::from((PEER_IP6, 8472)));
    assert_eq!(t.tos, ecn::ECT_0);
    assert_eq!(
        t.shape,
        Shape::Segmented {
            segments: segs,
            segment_size: 1489
        }
    );
    let sends = chunks(&p, &t, &s);
    assert_eq!(sends.len(), 1, "one send over IPv6");
    let (c, dgrams) = &sends[0];
    assert_eq!(c.segment_size, Some(1489));
    let total: usize = dgrams.iter().map(Vec::len).sum();
    assert_eq!(total, 65_516);
    assert!(total > MAX_UDP_PAYLOAD && total <= MAX_UDP_PAYLOAD_V6);
    let mut payload = Vec::new();
    let mut seq = 4000u32;
    for d in dgrams {
        assert_eq!(d.len(), 1489);
        assert_eq!(d[..8], vxlan::header(1));
        let (sq, pl) = valid_tcp(&d[8..]);
        assert_eq!(sq, seq);
        seq = seq.wrapping_add(pl.len() as u32);
        payload.extend_from_slice(&pl);
    }
    assert_eq!(
        payload,
        frame[14 + 40 + 32..],
        "segments add up to the frame"
    );
    // The same frame to an IPv4 VTEP would need two sends.
    let mut v4 = SegmentedSend::new(segs, 1489);
    let first = v4.next_chunk(true).unwrap();
    assert_eq!(first.segments, 0..43);
    assert_eq!(v4.on_result(&first, Ok(())), Step::Sent { packets: 43 });
    assert_eq!(v4.next_chunk(true).unwrap().segments, 43..44);
}

fn seg_send() -> SegmentedSend {
    // 100 segments of 1000 bytes: 64 per send (the kernel's segment cap).
    SegmentedSend::new(100, 1000)
}

#[test]
fn eagain_keeps_the_chunk_and_the_rest() {
    let mut s = seg_send();
    let c = s.next_chunk(true).unwrap();
    assert_eq!(c.segments, 0..64);
    assert_eq!(s.on_result(&c, Err(libc::EAGAIN)), Step::WaitWritable);
    assert_eq!(
        s.next_chunk(true),
        Some(c.clone()),
        "the same chunk goes again"
    );
    assert_eq!(s.remaining(), 100);
    assert_eq!(s.on_result(&c, Ok(())), Step::Sent { packets: 64 });
    let c2 = s.next_chunk(true).unwrap();
    assert_eq!(c2.segments, 64..100);
    assert_eq!(s.on_result(&c2, Err(libc::EINTR)), Step::Retry);
    assert_eq!(s.on_result(&c2, Ok(())), Step::Sent { packets: 36 });
    assert_eq!(s.next_chunk(true), None);
    // Only a worker that stops gives up what it holds.
    let mut s = seg_send();
    let c = s.next_chunk(true).unwrap();
    s.on_result(&c, Ok(()));
    assert_eq!(s.abandon(), 36);
    assert_eq!(s.next_chunk(true), None);
}

#[test]
fn einval_unsegments_one_chunk_and_segmentation_stays_on() {
    let mut s = seg_send();
    let c = s.next_chunk(true).unwrap();
    assert_eq!(s.on_result(&c, Err(libc::EINVAL)), Step::Unsegment);
    for i in 0..64 {
        let one = s.next_chunk(true).unwrap();
        assert_eq!(one.segments, i..i + 1);
        assert_eq!(one.segment_size, None);
        assert_eq!(s.on_result(&one, Ok(())), Step::Sent { packets: 1 });
    }
    let next = s.next_chunk(true).unwrap();
    assert_eq!(next.segments, 64..100, "the next chunk is segmented again");
    assert_eq!(next.segment_size, Some(1000));
    // EINVAL on a single datagram is a plain send error.
    let mut s = SegmentedSend::new(1, 1000);
    let one = s.next_chunk(true).unwrap();
    assert_eq!(
        s.on_result(&one, Err(libc::EINVAL)),
        Step::Dropped {
            reason: DropReason::TxSendError,
            packets: 1
        }
    );
}

#[test]
fn eio_turns_segmentation_off() {
    let mut s = seg_send();
    let c = s.next_chunk(true).unwrap();
    assert_eq!(s.on_result(&c, Err(libc::EIO)), Step::DisableSegmentation);
    let one = s.next_chunk(false).unwrap();
    assert_eq!((one.segments, one.segment_size), (0..1, None));
}

#[test]
fn emsgsize_answers_once_and_drops_the_rest_of_the_frame() {
    let mut s = seg_send();
    let c = s.next_chunk(true).unwrap();
    s.on_result(&c, Ok(()));
    let c2 = s.next_chunk(true).unwrap();
    assert_eq!(
        s.on_result(&c2, Err(libc::EMSGSIZE)),
        Step::TooBig {
            first: 64,
            dropped: 36
        }
    );
    assert_eq!(s.next_chunk(true), None);
}

#[test]
fn unreachable_and_other_errors_are_told_apart() {
    for (errno, reason) in [
        (libc::ECONNREFUSED, DropReason::TxUnreachable),
        (libc::EHOSTUNREACH, DropReason::TxUnreachable),
        (libc::ENETUNREACH, DropReason::TxUnreachable),
        (libc::EPERM, DropReason::TxSendError),
        (libc::ENOBUFS, DropReason::TxSendError),
    ] {
        let mut s = seg_send();
        let c = s.next_chunk(true).unwrap();
        assert_eq!(
            s.on_result(&c, Err(errno)),
            Step::Dropped {
                reason,
                packets: 64
            }
        );
        assert_eq!(
            s.next_chunk(true).unwrap().segments,
            64..100,
            "the rest still goes"
        );
        assert_eq!(plain_step(errno), PlainStep::Dropped(reason));
    }
    assert_eq!(plain_step(libc::EAGAIN), PlainStep::WaitWritable);
    assert_eq!(plain_step(libc::EINTR), PlainStep::Retry);
    assert_eq!(plain_step(libc::EMSGSIZE), PlainStep::TooBig);
    assert_eq!(
        SendError::from_errno(libc::EAGAIN).drop_reason(),
        DropReason::TxWouldBlock
    );
}

#[test]
fn drop_reasons_are_distinct_and_tx_side() {
    let names: std::collections::HashSet<_> = DropReason::ALL
        .iter()
        .map(|r| (r.direction(), r.as_str()))
        .collect();
    assert_eq!(names.len(), DropReason::COUNT);
    for r in [
        DropReason::TxWouldBlock,
        DropReason::TxUnreachable,
        DropReason::TxTooBig,
    ] {
        assert_eq!(r.direction(), "tx");
    }
}
