//! Split then coalesce gives back the original stream; every segment is valid TCP (checked by
//! etherparse); runs break where Linux GRO would break them.
use super::gro::{Coalescer, InnerFrame};
use super::tso::Segmenter;
use super::DropReason;
use crate::wire::{checksum, vnet, vxlan};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use proptest::prelude::*;

fn tso_frame(payload_len: usize, v6: bool, seq: u32, psh: bool) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 31 % 251) as u8).collect();
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0x0a, 0x58, 10, 244, 2, 0]);
    let mut b = if v6 {
        eth.ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(40000, 5201, seq, 512)
    } else {
        eth.ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .tcp(40000, 5201, seq, 512)
    };
    b = b
        .ack(77)
        .options(&[etherparse::TcpOptionElement::Timestamp(1, 2)])
        .unwrap();
    if psh {
        b = b.psh();
    }
    let mut out = Vec::new();
    b.write(&mut out, &payload).unwrap();
    out
}

fn gso_header(frame: &[u8], mss: u16, v6: bool) -> vnet::Header {
    let ip_len = if v6 { 40 } else { 20 };
    vnet::Header {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: if v6 { vnet::GSO_TCPV6 } else { vnet::GSO_TCPV4 },
        hdr_len: (14 + ip_len + 32) as u16,
        gso_size: mss,
        csum_start: (14 + ip_len) as u16,
        csum_offset: 16,
    }
    .tap_check(frame)
}

trait TapCheck {
    fn tap_check(self, frame: &[u8]) -> Self;
}
impl TapCheck for vnet::Header {
    fn tap_check(self, frame: &[u8]) -> Self {
        assert!(frame.len() > usize::from(self.hdr_len));
        self
    }
}

/// Split `frame` and return each segment as an inner frame (VXLAN header stripped).
fn split(frame: &[u8], mss: u16, v6: bool) -> Vec<Vec<u8>> {
    let mut s = Segmenter::default();
    let vx = vxlan::header(1);
    let segs = s
        .split(frame, &gso_header(frame, mss, v6), &vx)
        .unwrap()
        .to_vec();
    segs.iter()
        .map(|seg| {
            let h = s.headers(seg);
            assert_eq!(&h[..8], &vx);
            let mut v = h[8..].to_vec();
            v.extend_from_slice(&frame[seg.payload.clone()]);
            v
        })
        .collect()
}

fn tcp_valid(frame: &[u8]) -> (u32, u8, usize) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(TransportSlice::Tcp(t)) = &p.transport else {
        panic!("not tcp")
    };
    let want = match &p.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
            t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap()
        }
        Some(etherparse::NetSlice::Ipv6(ip)) => t
            .to_header()
            .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
            .unwrap(),
        _ => panic!("not ip"),
    };
    assert_eq!(t.checksum(), want, "TCP checksum");
    (
        t.sequence_number(),
        frame[14 + if frame[12] == 0x86 { 40 } else { 20 } + 13],
        t.payload().len(),
    )
}

/// Puts inner frames one after another in a buffer, as a GRO receive would (minus VXLAN).
fn coalesce(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut buf = Vec::new();
    let mut inner = Vec::new();
    for f in frames {
        inner.push(InnerFrame {
            range: buf.len()..buf.len() + f.len(),
            vnet: vnet::Header::default(),
        });
        buf.extend_from_slice(f);
    }
    let mut c = Coalescer::default();
    let runs = c.plan(&mut buf, &inner).to_vec();
    runs.iter()
        .map(|r| {
            let mut out = buf[inner[r.first].range.clone()].to_vec();
            for f in &inner[r.first + 1..r.first + r.count] {
                out.extend_from_slice(&buf[f.range.start + r.payload_offset..f.range.end]);
            }
            if r.count > 1 {
                assert_eq!(r.vnet.flags, vnet::F_NEEDS_CSUM);
                assert_eq!(usize::from(r.vnet.hdr_len), r.payload_offset);
                // Let the "kernel" finish the checksum, as NEEDS_CSUM asks.
                let start = usize::from(r.vnet.csum_start);
                let sum = checksum::sum(&out[start..], 0);
                let c = checksum::finish(sum);
                out[start + 16..start + 18].copy_from_slice(&c.to_be_bytes());
            }
            out
        })
        .collect()
}

#[test]
fn split_64k_into_valid_segments() {
    for v6 in [false, true] {
        let frame = tso_frame(64_000 - 100, v6, 1000, true);
        let segs = split(&frame, 1398, v6);
        assert_eq!(segs.len(), (64_000 - 100usize).div_ceil(1398));
        let mut seq = 1000u32;
        for (i, s) in segs.iter().enumerate() {
            let (sq, flags, len) = tcp_valid(s);
            assert_eq!(sq, seq);
            seq += len as u32;
            let last = i + 1 == segs.len();
            assert_eq!(flags & 0x08 != 0, last, "PSH only on the last segment");
            assert!(len == 1398 || last);
        }
    }
}

#[test]
fn split_then_coalesce_gives_back_the_frame() {
    for v6 in [false, true] {
        let frame = tso_frame(20_000, v6, 5, true);
        let segs = split(&frame, 1398, v6);
        let back = coalesce(&segs);
        assert_eq!(back.len(), 1, "one run");
        assert_eq!(back[0], frame);
    }
}

#[test]
fn runs_break_on_gap_flow_change_and_psh() {
    let a = split(&tso_frame(1398 * 3, false, 0, false), 1398, false);
    let b = split(&tso_frame(1398 * 2, false, 1398 * 4, false), 1398, false); // gap of one MSS
    let all: Vec<_> = a.iter().chain(b.iter()).cloned().collect();
    assert_eq!(coalesce(&all).len(), 2);
    // A segment with PSH ends the run even when the next one follows in sequence.
    let mut p = split(&tso_frame(1398 * 2, false, 0, true), 1398, false);
    p.extend(split(&tso_frame(1398, false, 1398 * 2, false), 1398, false));
    assert_eq!(coalesce(&p).len(), 2);
    // A corrupted checksum is never merged (the kernel must see and drop it).
    let mut c = split(&tso_frame(1398 * 3, false, 0, false), 1398, false);
    let last = c[1].len() - 1;
    c[1][last] ^= 0xff;
    assert_eq!(coalesce(&c).len(), 3);
    // CWR on a later segment ends the run before it, so the receiver sees the flag.
    let mut w = split(&tso_frame(1398 * 3, false, 0, false), 1398, false);
    w[2][14 + 20 + 13] |= 0x80;
    let l4 = crate::wire::ip::L4Info::parse(&w[2][14..]).unwrap();
    w[2][14 + 20 + 16..14 + 20 + 18].copy_from_slice(&[0, 0]);
    let c = checksum::finish(checksum::sum(&w[2][34..], l4.pseudo_sum()));
    w[2][14 + 20 + 16..14 + 20 + 18].copy_from_slice(&c.to_be_bytes());
    assert_eq!(coalesce(&w).len(), 2);
}

#[test]
fn partial_seed_segments_from_kernel_peers_coalesce() {
    let mut segs = split(&tso_frame(1398 * 4, false, 9, false), 1398, false);
    for s in &mut segs {
        let l4 = crate::wire::ip::L4Info::parse(&s[14..]).unwrap();
        let seed = checksum::fold(l4.pseudo_sum());
        let at = 14 + l4.l4_offset + 16;
        s[at..at + 2].copy_from_slice(&seed.to_be_bytes());
    }
    let back = coalesce(&segs);
    assert_eq!(back.len(), 1);
    tcp_valid(&back[0]);
}

#[test]
fn split_handles_the_smallest_mss() {
    // 64 KiB at MSS 88 (Linux's minimum) is 745 segments: all valid, in order.
    let frame = tso_frame(65_000, false, 7, false);
    let segs = split(&frame, 88, false);
    assert_eq!(segs.len(), 65_000usize.div_ceil(88));
    for s in &segs {
        tcp_valid(s);
    }
}

#[test]
fn split_rejects_bad_offload_requests() {
    let frame = tso_frame(5000, false, 0, false);
    let mut s = Segmenter::default();
    let vx = vxlan::header(1);
    let mut h = gso_header(&frame, 1398, false);
    h.gso_size = 0;
    assert_eq!(
        s.split(&frame, &h, &vx).unwrap_err(),
        DropReason::TxBadOffload
    );
    let h6 = gso_header(&frame, 1398, true);
    assert_eq!(
        s.split(&frame, &h6, &vx).unwrap_err(),
        DropReason::TxBadOffload
    );
    let mut h = gso_header(&frame, 1398, false);
    h.gso_size = 4; // 1250 segments
    assert_eq!(
        s.split(&frame, &h, &vx).unwrap_err(),
        DropReason::TxBadOffload
    );
    assert!(s
        .split(&frame[..40], &gso_header(&frame, 1398, false), &vx)
        .is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn prop_split_coalesce_roundtrip(len in 1usize..30_000, mss in 536u16..1460, v6 in any::<bool>(), seq in any::<u32>()) {
        let frame = tso_frame(len, v6, seq, true);
        let segs = split(&frame, mss, v6);
        prop_assert_eq!(segs.len(), len.div_ceil(usize::from(mss)));
        for s in &segs {
            tcp_valid(s);
        }
        let back = coalesce(&segs);
        prop_assert_eq!(back.len(), 1);
        prop_assert_eq!(&back[0], &frame);
    }

    #[test]
    fn prop_coalesce_never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..400), cuts in proptest::collection::vec(0usize..400, 0..6)) {
        let mut frames = Vec::new();
        let mut at = 0;
        let mut sorted = cuts.clone();
        sorted.sort_unstable();
        for c in sorted {
            let c = c.min(data.len());
            if c > at { frames.push(data[at..c].to_vec()); at = c; }
        }
        let _ = coalesce(&frames);
    }
}

/// Rewrites TCP bytes of an IPv4 segment with `edit` and recomputes its checksum.
fn edit_tcp(frame: &mut [u8], edit: impl FnOnce(&mut [u8])) {
    edit(&mut frame[34..]);
    let l4 = crate::wire::ip::L4Info::parse(&frame[14..]).unwrap();
    frame[34 + 16..34 + 18].copy_from_slice(&[0, 0]);
    let c = checksum::finish(checksum::sum(&frame[34..], l4.pseudo_sum()));
    frame[34 + 16..34 + 18].copy_from_slice(&c.to_be_bytes());
}

/// Lays frames out in one buffer, as one receive would.
fn lay_out(frames: &[Vec<u8>]) -> (Vec<u8>, Vec<InnerFrame>) {
    let mut buf = Vec::new();
    let mut inner = Vec::new();
    for f in frames {
        inner.push(InnerFrame {
            range: buf.len()..buf.len() + f.len(),
            vnet: vnet::Header::default(),
        });
        buf.extend_from_slice(f);
    }
    (buf, inner)
}

/// The bytes a run writes to the TAP after its virtio-net header.
fn assemble(buf: &[u8], frames: &[InnerFrame], r: &super::gro::Run) -> Vec<u8> {
    let mut out = buf[frames[r.first].range.clone()].to_vec();
    for f in &frames[r.first + 1..r.first + r.count] {
        out.extend_from_slice(&buf[f.range.start + r.payload_offset..f.range.end]);
    }
    out
}

#[test]
fn a_window_change_ends_the_run() {
    let mut segs = split(&tso_frame(1398 * 5, false, 0, false), 1398, false);
    // The receiver's window moved from segment 3 on (a window update).
    for s in &mut segs[3..] {
        edit_tcp(s, |t| t[14..16].copy_from_slice(&600u16.to_be_bytes()));
        tcp_valid(s);
    }
    let (mut buf, frames) = lay_out(&segs);
    let runs = Coalescer::default().plan(&mut buf, &frames).to_vec();
    let counts: Vec<_> = runs.iter().map(|r| r.count).collect();
    assert_eq!(
        counts,
        [3, 2],
        "segments with another window start a new run"
    );
}

#[test]
fn a_run_headed_by_cwr_carries_the_ecn_gso_flag() {
    // The segmenter keeps CWR on the first segment only, as TSO does.
    let mut segs = split(&tso_frame(1398 * 4, false, 0, false), 1398, false);
    edit_tcp(&mut segs[0], |t| t[13] |= 0x80);
    // And one more run whose second segment carries CWR: it starts a run of its own.
    let mut more = split(&tso_frame(1398 * 3, false, 1398 * 4, false), 1398, false);
    edit_tcp(&mut more[1], |t| t[13] |= 0x80);
    segs.extend(more);
    let (mut buf, frames) = lay_out(&segs);
    let runs = Coalescer::default().plan(&mut buf, &frames).to_vec();
    let shape: Vec<_> = runs
        .iter()
        .map(|r| (r.count, r.vnet.gso_type & vnet::GSO_ECN != 0))
        .collect();
    assert_eq!(shape, [(5, true), (2, true)]);
    assert_eq!(runs[0].vnet.gso_type & !vnet::GSO_ECN, vnet::GSO_TCPV4);
    // The merged head keeps CWR, and no run without CWR at its head gets the flag.
    let first = assemble(&buf, &frames, &runs[0]);
    assert_eq!(first[34 + 13] & 0x80, 0x80);
    let plain = split(&tso_frame(1398 * 4, false, 0, false), 1398, false);
    let (mut buf, frames) = lay_out(&plain);
    let runs = Coalescer::default().plan(&mut buf, &frames).to_vec();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].vnet.gso_type, vnet::GSO_TCPV4);
}

#[test]
fn a_run_stays_open_across_two_receives() {
    for cut in [1, 4, 9] {
        let frame = tso_frame(1398 * 10 + 300, false, 77, true);
        let segs = split(&frame, 1398, false);
        // All at once, for comparison.
        let (mut whole, wf) = lay_out(&segs);
        let whole_runs = Coalescer::default().plan(&mut whole, &wf).to_vec();
        let want: Vec<_> = whole_runs
            .iter()
            .map(|r| assemble(&whole, &wf, r))
            .collect();
        assert_eq!(want.len(), 1);
        // First receive: the run may still grow, so nothing is written.
        let (mut buf, mut frames) = lay_out(&segs[..cut]);
        let mut c = Coalescer::default();
        assert!(c.plan_open(&mut buf, &frames, true).is_empty());
        assert_eq!(c.open_first(), Some(0));
        // Second receive lands elsewhere in the buffer; the open run's frames stay first.
        let (more, mf) = lay_out(&segs[cut..]);
        let off = buf.len() + 64;
        buf.resize(off, 0);
        buf.extend_from_slice(&more);
        frames.extend(mf.iter().map(|f| InnerFrame {
            range: f.range.start + off..f.range.end + off,
            vnet: f.vnet,
        }));
        // The last segment is short and carries PSH: the run is done.
        let runs = c.plan_open(&mut buf, &frames, true).to_vec();
        assert_eq!(c.open_first(), None);
        let got: Vec<_> = runs.iter().map(|r| assemble(&buf, &frames, r)).collect();
        assert_eq!(got, want, "cut after {cut}: one TAP write, same bytes");
        assert_eq!(runs[0].vnet, whole_runs[0].vnet);
    }
}

#[test]
fn an_open_run_closes_on_demand_and_behind_another_flow() {
    let a = split(&tso_frame(1398 * 3, false, 0, false), 1398, false);
    let (mut buf, frames) = lay_out(&a);
    let mut c = Coalescer::default();
    assert!(c.plan_open(&mut buf, &frames, true).is_empty());
    let run = c.close(&mut buf, &frames).expect("open run");
    assert_eq!(run.count, 3);
    let mut merged = assemble(&buf, &frames, &run);
    // Finish the checksum as the kernel would (NEEDS_CSUM), then it is valid TCP.
    let sum = checksum::finish(checksum::sum(&merged[34..], 0));
    merged[34 + 16..34 + 18].copy_from_slice(&sum.to_be_bytes());
    tcp_valid(&merged);
    assert!(c.close(&mut buf, &frames).is_none());
    // A frame of another flow ends the open run and leaves its own open.
    let mut b = split(&tso_frame(1398 * 2, false, 0, false), 1398, false);
    for s in &mut b {
        edit_tcp(s, |t| t[0..2].copy_from_slice(&40001u16.to_be_bytes()));
    }
    let mut both = a.clone();
    both.extend(b);
    let (mut buf, frames) = lay_out(&both);
    let runs = c.plan_open(&mut buf, &frames, true).to_vec();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].count, 3);
    assert_eq!(c.open_first(), Some(3));
}

/// Inner IPv6 (GSO_TCPV6) gets the run rules IPv4 gets: a sequence gap and PSH end a run,
/// a corrupted checksum is never merged, kernel-peer seeds coalesce into a valid frame, and
/// segments whose IPv6 header differs (traffic class, flow label, hop limit) are not merged.
#[test]
fn ipv6_runs_follow_the_same_rules() {
    let mss = 1370; // pod MTU 1430 (IPv6 underlay) - 40 (IPv6) - 20 (TCP)
    let a = split(&tso_frame(mss * 3, true, 0, false), mss as u16, true);
    let b = split(
        &tso_frame(mss * 2, true, mss as u32 * 4, false),
        mss as u16,
        true,
    );
    let all: Vec<_> = a.iter().chain(b.iter()).cloned().collect();
    assert_eq!(coalesce(&all).len(), 2, "gap");
    let mut p = split(&tso_frame(mss * 2, true, 0, true), mss as u16, true);
    p.extend(split(
        &tso_frame(mss, true, mss as u32 * 2, false),
        mss as u16,
        true,
    ));
    assert_eq!(coalesce(&p).len(), 2, "PSH");
    let mut c = split(&tso_frame(mss * 3, true, 0, false), mss as u16, true);
    let last = c[1].len() - 1;
    c[1][last] ^= 0xff;
    assert_eq!(coalesce(&c).len(), 3, "bad checksum");

    let mut seeds = split(&tso_frame(mss * 4, true, 9, false), mss as u16, true);
    for s in &mut seeds {
        let l4 = crate::wire::ip::L4Info::parse(&s[14..]).unwrap();
        let seed = checksum::fold(l4.pseudo_sum());
        let at = 14 + l4.l4_offset + 16;
        s[at..at + 2].copy_from_slice(&seed.to_be_bytes());
    }
    let back = coalesce(&seeds);
    assert_eq!(back.len(), 1, "kernel seeds");
    let (seq, _, len) = tcp_valid(&back[0]);
    assert_eq!((seq, len), (9, mss * 4));

    // Flow label (byte 3 of the IPv6 header) and hop limit (byte 7) must match within a run;
    // neither is covered by the TCP checksum, so no checksum fix is needed.
    for at in [14 + 3, 14 + 7] {
        let mut d = split(&tso_frame(mss * 3, true, 0, false), mss as u16, true);
        d[1][at] ^= 0x01;
        assert_eq!(coalesce(&d).len(), 3, "IPv6 header byte {at} differs");
    }
}
