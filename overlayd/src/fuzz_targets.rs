//! The bodies of the cargo-fuzz targets in `fuzz/`, kept in the library so the corpus replay
//! test (`tests/fuzz_corpus.rs`) runs exactly what the fuzzer runs, on stable, in CI.
//!
//! Each takes arbitrary bytes, must never panic, and asserts the invariants its callers rely
//! on (ranges inside the buffer, decisions consistent with the input). Not part of the API.
#![doc(hidden)]

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use crate::fdb::{Fdb, Peer, PeerV4};
use crate::path::{self, gro, plan, tso, DecapConfig};
use crate::wire::ethernet::MacAddr;
use crate::wire::{ethernet, vnet, vxlan};

const OWN_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 0];

/// node N's IPv6 VTEP address (nodes 3 and 4).
fn node_v6(n: u8) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, n.into())
}

/// Three peers: node2 (198.18.0.2, 0a:58:0a:f4:02:00, IPv4 only), node3, dual-stack (IPv6
/// VTEP fd00:18::3, the same MAC for both families, IPv6 pods fd00:10:244:3::/64) and node4,
/// IPv6-only (fd00:18::4, 0a:58:0a:f4:04:00, fd00:10:244:4::/64).
fn fdb() -> &'static Fdb {
    static FDB: OnceLock<Fdb> = OnceLock::new();
    FDB.get_or_init(|| {
        let peer = |n: u8| Peer {
            name: format!("node{n}"),
            v4: (n < 4).then(|| PeerV4 {
                pod_cidr: format!("10.244.{n}.0/24").parse().expect("cidr"),
                vtep_ip: Ipv4Addr::new(198, 18, 0, n),
                vtep_mac: MacAddr([0x0a, 0x58, 10, 244, n, 0]),
            }),
            v6: (n >= 3).then(|| crate::fdb::PeerV6 {
                pod_cidr: format!("fd00:10:244:{n}::/64").parse().expect("cidr"),
                vtep_ip: node_v6(n),
                vtep_mac: MacAddr([0x0a, 0x58, 10, 244, n, 0]),
            }),
        };
        Fdb::from_peers(&[peer(2), peer(3), peer(4)], 8472)
    })
}

/// Input: `[selector][VXLAN payload...]`. The selector's low bits pick the sender (known or
/// not), `allow_any_sender` and `allow_foreign_inner_source`; the rest is a datagram as the UDP socket returns it.
pub fn decap(data: &[u8]) {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let from = if sel & 1 == 0 {
        Ipv4Addr::new(198, 18, 0, 2)
    } else {
        Ipv4Addr::new(198, 18, 0, 99)
    };
    let cfg = DecapConfig {
        vni: 1,
        own_mac: OWN_MAC,
        inner_mtu: if sel & 4 == 0 { 1450 } else { 9000 },
        allow_any_sender: sel & 2 != 0,
        allow_foreign_inner_source: sel & 8 != 0,
    };
    if let Ok(d) = path::decap(payload, from, fdb(), &cfg) {
        // Only what the checks promise is delivered.
        let vx = vxlan::Packet::new_checked(payload).expect("delivered => has a VXLAN header");
        assert!(vx.has_vni() && vx.vni() == 1);
        let eth = ethernet::Frame::new_checked(vx.inner()).expect("delivered => has Ethernet");
        assert_eq!(eth.dst(), OWN_MAC);
        assert!(d.peer.is_some() || cfg.allow_any_sender);
        // From a known VTEP, with the source check on: an IPv4 frame from node2's podCIDR.
        if d.peer.is_some() && !cfg.allow_foreign_inner_source {
            assert_eq!(eth.ethertype(), ethernet::ETHERTYPE_IPV4);
            let src = &eth.payload()[12..16];
            assert_eq!(&src[..3], &[10, 244, 2], "foreign inner source delivered");
        }
        check_vnet(&d.vnet, vx.inner().len());
        ecn_decap(vx.inner(), sel >> 3);
    }
}

/// ECN decapsulation under an outer TOS of `outer`: changes at most the ECN bits of the inner
/// IP header (and the IPv4 header checksum), never the length, and keeps a valid IPv4 header
/// checksum valid.
fn ecn_decap(inner: &[u8], outer: u8) {
    let mut f = inner.to_vec();
    let v4 = f.len() >= 34 && f[12..14] == [8, 0] && f[14] >> 4 == 4;
    let csum_ok = |f: &[u8]| {
        let ihl = usize::from(f[14] & 0x0f) * 4;
        ihl >= 20
            && f.len() >= 14 + ihl
            && crate::wire::checksum::fold(crate::wire::checksum::sum(&f[14..14 + ihl], 0))
                == 0xffff
    };
    let was_ok = v4 && csum_ok(&f);
    match path::ecn::decapsulate(&mut f, outer) {
        Ok(_) => {
            assert_eq!(f.len(), inner.len());
            for (i, (a, b)) in f.iter().zip(inner).enumerate() {
                assert!(
                    a == b || i == 15 || (v4 && (i == 24 || i == 25)),
                    "byte {i} changed"
                );
            }
            if was_ok {
                assert!(csum_ok(&f), "IPv4 header checksum broken");
            }
        }
        Err(r) => assert_eq!(r, path::DropReason::RxEcnNotEct),
    }
}

/// A virtio-net header we hand to the TAP must point inside the frame it goes with.
fn check_vnet(h: &vnet::Header, frame_len: usize) {
    if h.flags & vnet::F_NEEDS_CSUM != 0 {
        assert!(
            usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 <= frame_len,
            "checksum field outside the frame: {h:?} len {frame_len}"
        );
    }
    if h.gso_type != vnet::GSO_NONE {
        assert!(
            h.gso_size > 0 && usize::from(h.hdr_len) <= frame_len,
            "{h:?} len {frame_len}"
        );
    }
}

/// Input: `[vnet header 10][frame...]`, as a TAP read returns it.
pub fn encap(data: &[u8]) {
    let Some(hdr) = vnet::Header::parse(data) else {
        return;
    };
    too_big(&data[vnet::LEN..], u32::from(hdr.gso_size));
    let mut frame = data[vnet::LEN..].to_vec();
    let eth = ethernet::Frame::new_checked(&frame[..]).map(|e| (e.dst(), e.ethertype()));
    if let Ok(t) = path::encap(&mut frame, &hdr, fdb()) {
        let (dst, ethertype) = eth.expect("sent => has Ethernet");
        let routed = fdb().route(&dst, ethertype == ethernet::ETHERTYPE_IPV6);
        assert_eq!(
            routed.map(|(e, to)| (&*e.node, to)),
            Some((&*t.peer.node, t.destination))
        );
        // Completing a checksum must never touch the Ethernet header (regression:
        // fuzz/regressions/encap/csum-start-in-ethernet-header).
        assert_eq!(
            ethernet::Frame::new_checked(&frame[..]).map(|e| e.dst()),
            Some(dst)
        );
    }
}

/// The path-MTU error for `frame` (split at an arbitrary point) is the same whatever the
/// split, fits its buffer, goes back to the frame's source MAC and reports `mtu`.
fn too_big(frame: &[u8], mtu: u32) {
    let mut out = [0u8; path::pmtu::MAX_FRAME];
    let Some(n) = path::pmtu::too_big(&mut out, frame, &[], mtu) else {
        return;
    };
    assert!(n <= out.len() && n > 14 + 20 + 8);
    assert_eq!(out[..6], frame[6..12]);
    let cut = frame.len() / 2;
    let mut again = [0u8; path::pmtu::MAX_FRAME];
    assert_eq!(
        path::pmtu::too_big(&mut again, &frame[..cut], &frame[cut..], mtu),
        Some(n)
    );
    assert_eq!(out[..n], again[..n]);
}

/// Input: `[mtu hi][mtu lo][inner frame...]`.
pub fn ingress_offload(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let mtu = u16::from_be_bytes([data[0], data[1]]);
    let frame = &data[2..];
    let h = path::ingress_offload(frame, mtu);
    check_vnet(&h, frame.len());
}

/// Input: `[vnet header 10][frame...]` where the header usually asks for TSO: the segmenter
/// must reject or split, with every segment inside its buffers and at most `gso_size` long.
pub fn tso_split(data: &[u8]) {
    let Some(hdr) = vnet::Header::parse(data) else {
        return;
    };
    let frame = &data[vnet::LEN..];
    thread_local! {
        static SEG: std::cell::RefCell<tso::Segmenter> = std::cell::RefCell::new(tso::Segmenter::default());
    }
    SEG.with(|s| {
        let mut s = s.borrow_mut();
        let vx = vxlan::header(1);
        let Ok(segs) = s.split(frame, &hdr, &vx) else {
            return;
        };
        let segs = segs.to_vec();
        assert!(!segs.is_empty() && segs.len() <= tso::MAX_SEGMENTS);
        for seg in &segs {
            assert!(seg.payload.start <= seg.payload.end && seg.payload.end <= frame.len());
            assert!(seg.payload.len() <= usize::from(hdr.gso_size.max(1)) || segs.len() == 1);
            let h = s.headers(seg);
            assert!(h.len() <= tso::MAX_HEADERS && h.starts_with(&vx));
        }
    });
}

/// Input: `[n][n send results][vnet header 10][frame...]`, a TAP read preceded by a script of
/// send outcomes (0: sent, else an errno picked by the byte). The planner either drops the
/// frame with a reason or plans it; then, driven through the script:
/// - a plain plan is the VXLAN header followed by the frame, to the VTEP the FDB names for the
///   destination MAC (node3's IPv6 VTEP for an inner IPv6 frame to it, else the IPv4 one), from a socket fixed by the flow, with the outer ECN of the inner packet;
/// - a segmented plan's sends cover every segment exactly once, in order, none over 65,507
///   bytes (65,527 to an IPv6 VTEP) or 64 segments, every datagram but a chunk's last exactly `segment_size`; the
///   segments' payloads add up to the frame's; and every segment ends up sent, dropped with a
///   reason, or given up, never lost without a count, whatever the errnos (EAGAIN, EINTR,
///   EINVAL and EIO lose nothing).
pub fn egress_plan(data: &[u8]) {
    const ERRNOS: [i32; 9] = [
        libc::EAGAIN,
        libc::EINTR,
        libc::EINVAL,
        libc::EIO,
        libc::EMSGSIZE,
        libc::ECONNREFUSED,
        libc::EHOSTUNREACH,
        libc::EPERM,
        libc::ENOBUFS,
    ];
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (script, tap_read) = rest.split_at(n);
    let mut slot = tap_read.to_vec();
    thread_local! {
        static PLANNER: std::cell::RefCell<plan::Planner> = std::cell::RefCell::new(plan::Planner::new(1, 3));
    }
    PLANNER.with(|p| {
        let mut p = p.borrow_mut();
        let Ok(t) = p.plan(&mut slot, fdb()) else {
            return;
        };
        let frame = &tap_read[vnet::LEN..];
        let eth = ethernet::Frame::new_checked(frame).expect("planned => Ethernet");
        let dst = eth.dst();
        let want = if eth.ethertype() == ethernet::ETHERTYPE_IPV6 && dst[4] >= 3 {
            std::net::SocketAddr::from((node_v6(dst[4]), 8472))
        } else {
            let v4 = fdb().lookup(&dst).expect("planned => known").v4;
            std::net::SocketAddr::from((v4.expect("in the IPv4 table").vtep_ip, 8472))
        };
        assert_eq!(t.destination, want);
        assert!(t.socket < 3);
        assert_eq!(t.tos, path::ecn::outer_tos(frame));
        match t.shape.clone() {
            plan::Shape::Plain { bytes } => {
                let d = &slot[bytes];
                assert_eq!(d.len(), vxlan::HEADER_LEN + frame.len());
                assert_eq!(d[..vxlan::HEADER_LEN], vxlan::header(1));
                // Only a checksum the kernel asked for may differ from what was read.
                let hdr = vnet::Header::parse(tap_read).expect("planned => header");
                if hdr.flags & vnet::F_NEEDS_CSUM == 0 {
                    assert_eq!(d[vxlan::HEADER_LEN..], frame[..]);
                } else {
                    assert_eq!(d[vxlan::HEADER_LEN..][..14], frame[..14]);
                }
                let mut sock_again = tap_read.to_vec();
                let t2 = p
                    .plan(&mut sock_again, fdb())
                    .expect("planned once, planned again");
                assert_eq!(t2.socket, t.socket, "a frame's socket is fixed by its flow");
            }
            plan::Shape::Segmented {
                segments,
                segment_size,
            } => {
                assert!((1..=tso::MAX_SEGMENTS).contains(&segments));
                let hdr = vnet::Header::parse(tap_read).expect("planned => header");
                // The payloads are consecutive pieces of the frame, each at most the MSS.
                let mut next = p.segment(0).1.start;
                for i in 0..segments {
                    let (h, r) = p.segment(i);
                    assert!(h.starts_with(&vxlan::header(1)) && r.end <= slot.len());
                    assert_eq!(r.start, next, "segment {i} does not follow its predecessor");
                    next = r.end;
                    assert!(h.len() + r.len() <= segment_size);
                    assert!(i + 1 == segments || h.len() + r.len() == segment_size);
                    assert!(r.len() <= usize::from(hdr.gso_size));
                }
                drive(&p, segments, segment_size, &t.destination, script, &ERRNOS);
            }
        }
    });
}

/// Runs a segmented send through `script` and checks that every segment is accounted for.
fn drive(
    p: &plan::Planner,
    segments: usize,
    segment_size: usize,
    destination: &std::net::SocketAddr,
    script: &[u8],
    errnos: &[i32],
) {
    let mut send = plan::SegmentedSend::to(segments, segment_size, destination);
    let (mut sent, mut dropped) = (0usize, 0usize);
    let mut covered = vec![0u8; segments];
    let mut gso = true;
    let mut waits = 0;
    let mut step = 0;
    while let Some(c) = send.next_chunk(gso) {
        assert!(
            step < 4 * (segments + script.len()) + 8,
            "the send never ends"
        );
        let k = c.segments.len();
        assert!((1..=plan::MAX_SEGMENTS_PER_SEND).contains(&k) && c.segments.end <= segments);
        assert_eq!(c.segment_size.is_some(), k > 1);
        let bytes: usize = c
            .segments
            .clone()
            .map(|i| {
                let (h, r) = p.segment(i);
                h.len() + r.len()
            })
            .sum();
        assert!(k == 1 || bytes <= plan::max_udp_payload(destination));
        let result = match script.get(step) {
            Some(&b) if b % 4 != 0 => Err(errnos[usize::from(b) % errnos.len()]),
            _ => Ok(()),
        };
        step += 1;
        let before = send.remaining();
        match send.on_result(&c, result) {
            plan::Step::Sent { packets } => {
                assert_eq!(packets, k);
                sent += k;
                for i in c.segments.clone() {
                    covered[i] += 1;
                }
            }
            plan::Step::Dropped { packets, reason } => {
                assert_eq!(packets, k);
                assert_eq!(reason.direction(), "tx");
                dropped += k;
                for i in c.segments.clone() {
                    covered[i] += 1;
                }
            }
            plan::Step::TooBig { first, dropped: d } => {
                assert_eq!(first, c.segments.start);
                assert_eq!(d, before);
                dropped += d;
                for c in &mut covered[first..] {
                    *c += 1;
                }
            }
            plan::Step::WaitWritable => {
                waits += 1;
                assert_eq!(send.remaining(), before, "EAGAIN loses nothing");
            }
            plan::Step::Retry | plan::Step::Unsegment => {
                assert_eq!(send.remaining(), before);
            }
            plan::Step::DisableSegmentation => {
                assert_eq!(send.remaining(), before);
                gso = false;
            }
        }
        if waits > 2 {
            // The worker stops while waiting: what it held is counted, then nothing is left.
            let left = send.remaining();
            for c in &mut covered[segments - left..] {
                *c += 1;
            }
            assert_eq!(send.abandon(), left);
            assert_eq!(send.next_chunk(gso), None);
            dropped += left;
            break;
        }
    }
    assert!(
        covered.iter().all(|c| *c == 1),
        "a segment sent or dropped twice, or lost: {covered:?}"
    );
    assert_eq!(sent + dropped, segments);
}

/// Input: frames separated by length prefixes (`[len hi][len lo][frame...]`...), each with an
/// own header that is plain or NEEDS_CSUM; the coalescer's runs must cover every frame once,
/// in order, and describe super-frames that fit the buffer.
pub fn gro_coalesce(data: &[u8]) {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 && frames.len() < 64 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]) & 0x3fff).min(rest.len() - 3);
        let flags = if rest[2] & 1 == 0 {
            0
        } else {
            vnet::F_NEEDS_CSUM
        };
        let body = &rest[3..3 + len];
        let start = buf.len();
        buf.extend_from_slice(body);
        frames.push(gro::InnerFrame {
            range: start..buf.len(),
            vnet: vnet::Header {
                flags,
                ..vnet::Header::default()
            },
        });
        rest = &rest[3 + len..];
    }
    let mut split_buf = buf.clone();
    let mut c = gro::Coalescer::default();
    let runs = c.plan(&mut buf, &frames).to_vec();
    // The same frames in two receives, the run left open in between, give the same writes.
    let cut = frames.len() / 2;
    let mut split_runs = c.plan_open(&mut split_buf, &frames[..cut], true).to_vec();
    let rest = c.open_first().unwrap_or(cut);
    assert!(rest <= cut);
    c.open_moved_to_front();
    let base = split_runs.len();
    let later = &frames[rest..];
    split_runs.extend(
        c.plan_open(&mut split_buf, later, true)
            .iter()
            .map(|r| gro::Run {
                first: r.first + rest,
                ..r.clone()
            }),
    );
    if let Some(r) = c.close(&mut split_buf, later) {
        split_runs.push(gro::Run {
            first: r.first + rest,
            ..r
        });
    }
    let bytes = |b: &[u8], r: &gro::Run| -> Vec<u8> {
        let mut out = b[frames[r.first].range.clone()].to_vec();
        for f in &frames[r.first + 1..r.first + r.count] {
            out.extend_from_slice(
                &b[f.range.start + r.payload_offset.min(f.range.len())..f.range.end],
            );
        }
        out
    };
    assert_eq!(
        split_runs, runs,
        "runs differ when the frames come in two receives ({base} before)"
    );
    for r in &runs {
        assert_eq!(bytes(&buf, r), bytes(&split_buf, r));
    }
    let mut next = 0;
    for r in &runs {
        assert_eq!(r.first, next, "runs must be contiguous");
        assert!(r.count >= 1 && r.first + r.count <= frames.len());
        if r.count > 1 {
            let head = &frames[r.first];
            assert!(r.payload_offset <= head.range.len());
            let total: usize = head.range.len()
                + frames[r.first + 1..r.first + r.count]
                    .iter()
                    .map(|f| f.range.len() - r.payload_offset.min(f.range.len()))
                    .sum::<usize>();
            check_vnet(&r.vnet, total);
        }
        next += r.count;
    }
    assert_eq!(next, frames.len());
}

/// Input: a nodes file (any bytes; invalid UTF-8 is what `read_to_string` would reject).
/// Whatever the model accepts keeps its promises, checked here independently of its code:
/// every non-own node is either a peer or skipped (once); peers have disjoint podCIDRs (also
/// with this node's), unique names, VTEP addresses and MACs; and under a policy every peer is
/// valid by its rules (podCIDR inside the Network and clear of reserved space, the underlay and
/// this node's addresses; VTEP a unicast, non-loopback, non-link-local address that is not
/// this node's and not in the pod Network unless in the underlay subnet).
pub fn nodes_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(nodes) = fdb_sync::parse_node_list(text) else {
        return;
    };
    let names: std::collections::HashSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .filter(|n| *n != "node1")
        .collect();
    let policy = fdb_sync::PeerPolicy {
        own_addresses: vec![
            "198.18.0.1".parse().expect("ip"),
            "10.244.1.1".parse().expect("ip"),
            "10.244.77.1".parse().expect("ip"),
        ],
        underlay_subnets: vec!["198.18.0.0/24".parse().expect("net")],
        ..fdb_sync::PeerPolicy::new("10.244.0.0/16".parse().expect("net"))
    };
    for filter in [
        fdb_sync::PeerFilter::AllowUnannotated,
        fdb_sync::PeerFilter::RequireVxlanAnnotation,
    ] {
        let Ok(raw) = fdb_sync::ClusterState::from_nodes(&nodes, "node1", filter) else {
            continue;
        };
        check_promises(&names, &raw, None);
        let _ = Fdb::from_peers(&crate::control::model::peers(&raw.peers), 8472);
        let _ = raw.own_vtep_mac();
        if let Ok(v) = raw.validated(&policy) {
            check_promises(&names, &v, Some(&policy));
            assert_eq!(
                v.validated(&policy).ok().as_ref(),
                Some(&v),
                "validation is idempotent"
            );
            let _ = Fdb::from_peers(&crate::control::model::peers(&v.peers), 8472);
        } else {
            // Only the own node can make validation fail (IPv4 is enabled: it needs one).
            let network: ipnetwork::Ipv4Network = "10.244.0.0/16".parse().expect("net");
            assert!(raw.own_pod_cidr().is_none_or(|own| {
                !network.contains(own.network())
                    || own.prefix() < network.prefix()
                    || reserved_v4(own)
                    || own.overlaps("198.18.0.0/24".parse().expect("net"))
            }));
        }
    }
}

fn reserved_v4(n: ipnetwork::Ipv4Network) -> bool {
    [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ]
    .iter()
    .any(|r| n.overlaps(r.parse().expect("net")))
}

fn check_promises(
    names: &std::collections::HashSet<&str>,
    s: &fdb_sync::ClusterState,
    policy: Option<&fdb_sync::PeerPolicy>,
) {
    use std::collections::HashSet;
    let own = s.own_pod_cidr();
    let peers: HashSet<&str> = s.peers.iter().map(|p| p.name.as_str()).collect();
    let skipped: HashSet<&str> = s.skipped.iter().map(|k| k.node.as_str()).collect();
    assert_eq!(peers.len(), s.peers.len(), "peer names are unique");
    assert_eq!(skipped.len(), s.skipped.len(), "a node is skipped once");
    assert!(peers.is_disjoint(&skipped));
    assert_eq!(
        &(&peers | &skipped),
        names,
        "every node is a peer or skipped"
    );
    let mut macs = HashSet::from([s.own_vtep_mac()]);
    let mut vteps = HashSet::new();
    let mut cidrs: Vec<ipnetwork::Ipv4Network> = Vec::new();
    for peer in &s.peers {
        // Without a policy, and with the fuzz policy, IPv4 is enabled: every peer has it.
        let p = peer
            .v4
            .expect("IPv4 is enabled: every peer has its IPv4 side");
        assert!(macs.insert(p.vtep_mac), "duplicate VtepMAC {}", p.vtep_mac);
        assert!(vteps.insert(p.vtep_ip), "duplicate VTEP {}", p.vtep_ip);
        assert!(p.vtep_mac.is_valid_vtep());
        if let Some(own) = own {
            assert!(
                !p.pod_cidr.overlaps(own),
                "{} overlaps own {own}",
                p.pod_cidr
            );
        }
        assert!(
            cidrs.iter().all(|c| !c.overlaps(p.pod_cidr)),
            "{} overlaps another peer",
            p.pod_cidr
        );
        cidrs.push(p.pod_cidr);
        assert_ne!(
            Some(p.vtep_ip),
            s.own.public_ip,
            "a peer uses this node's VTEP"
        );
        let Some(pol) = policy else { continue };
        let network = pol.network.expect("the fuzz policy enables IPv4");
        let c = p.pod_cidr;
        assert!(
            network.contains(c.network()) && c.prefix() >= network.prefix(),
            "{c} outside the Network"
        );
        assert!(!reserved_v4(c), "{c} reserved");
        assert!(
            pol.underlay_subnets.iter().all(|u| match u {
                ipnetwork::IpNetwork::V4(u) => !u.overlaps(c),
                ipnetwork::IpNetwork::V6(_) => true,
            }),
            "{c} covers the underlay"
        );
        assert!(
            pol.own_addresses
                .iter()
                .all(|a| !ipnetwork::IpNetwork::V4(c).contains(*a)),
            "{c} covers an own address"
        );
        let v = p.vtep_ip;
        assert!(
            !(v.is_unspecified()
                || v.is_loopback()
                || v.is_multicast()
                || v.is_broadcast()
                || v.is_link_local()
                || v.octets()[0] == 0
                || v.octets()[0] >= 240),
            "VTEP {v} is not a unicast host address"
        );
        assert!(!pol.own_addresses.contains(&v.into()), "VTEP {v} is ours");
        assert!(
            !network.contains(v) || pol.underlay_subnets.iter().any(|u| u.contains(v.into())),
            "VTEP {v} in the pod Network"
        );
        assert!(
            pol.underlay_subnets.iter().all(|u| match u {
                ipnetwork::IpNetwork::V4(n) => n.prefix() >= 31 || n.broadcast() != v,
                ipnetwork::IpNetwork::V6(_) => true,
            }),
            "VTEP {v} is a subnet broadcast"
        );
    }
}

/// Input: a net-conf.json (any bytes).
pub fn net_conf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = crate::config::NetConf::parse(text) {
        assert!(c.vni <= vxlan::MAX_VNI && c.port >= 1);
        let _ = c.inner_mtu(1500);
        let _ = c.subnet_allocation();
    }
}

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay test.
pub const TARGETS: &[(&str, Target)] = &[
    ("decap", decap),
    ("encap", encap),
    ("ingress_offload", ingress_offload),
    ("tso_split", tso_split),
    ("egress_plan", egress_plan),
    ("gro_coalesce", gro_coalesce),
    ("nodes_file", nodes_file),
    ("net_conf", net_conf),
];
