//! The planner's decisions, cross-checked with etherparse: what it sends is the frame it was
//! given (plain) or valid TCP segments that add up to it (super-frame), to the right VTEP, from a
//! socket fixed per flow, in chunks the kernel takes; and what each errno leads to.
use super::*;
use crate::fdb::Peer;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use std::net::Ipv4Addr;

const PEER_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 2, 0];
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn fdb() -> Fdb {
    Fdb::from_peers(
        &[Peer {
            name: "n2".into(),
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
            vtep_ip: PEER_IP,
            vtep_mac: crate::wire::ethernet::MacAddr(PEER_MAC),
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
    if !v6 {
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
    assert_eq!(t.destination, SocketAddrV4::new(PEER_IP, 8472));
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
    let mut send = SegmentedSend::new(segments, segment_size);
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
