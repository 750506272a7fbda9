//! Micro-benchmarks of the I/O-free packet path: encap, decap, TSO split of a 64 KiB
//! super-frame, GRO coalescing of its segments, and FDB lookup in a 5000-peer table.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use overlayd::fdb::{Fdb, Peer, PeerV4};
use overlayd::path::gro::{Coalescer, InnerFrame};
use overlayd::path::tso::Segmenter;
use overlayd::path::{decap, encap, DecapConfig};
use overlayd::wire::ethernet::MacAddr;
use overlayd::wire::{checksum, ip, vnet, vxlan};

const OWN: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 0];

fn peers(n: u32) -> Vec<Peer> {
    (0..n)
        .map(|i| {
            let [_, _, b, c] = (i + 2).to_be_bytes();
            Peer {
                name: format!("node{i}"),
                v4: Some(PeerV4 {
                    pod_cidr: format!("10.{b}.{c}.0/24").parse().unwrap(),
                    vtep_ip: Ipv4Addr::new(198, 18, b, c),
                    vtep_mac: MacAddr([0x0a, 0x58, 10, b, c, 0]),
                }),
                v6: None,
            }
        })
        .collect()
}

/// Ethernet + IPv4 + TCP (20-byte header) frame with a valid checksum.
fn tcp_frame(dst: [u8; 6], src_ip: [u8; 4], dst_ip: [u8; 4], seq: u32, payload: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let total = (40 + payload) as u16;
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(&dst_ip);
    let c = checksum::finish(checksum::sum(&f[14..34], 0));
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0x50, 0x10, 0x02, 0, 0, 0, 0, 0]);
    f.extend((0..payload).map(|i| (i % 251) as u8));
    let l4 = ip::L4Info::parse(&f[14..]).unwrap();
    let c = checksum::finish(checksum::sum(&f[34..], l4.pseudo_sum()));
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

fn bench_path(c: &mut Criterion) {
    let fdb = Fdb::from_peers(&peers(5000), 8472);
    let peer_mac = [0x0a, 0x58, 10, 0, 100, 0];
    let cfg = DecapConfig {
        vni: 1,
        own_mac: OWN,
        inner_mtu: 1450,
        allow_any_sender: false,
        allow_foreign_inner_source: false,
    };

    let mut g = c.benchmark_group("per_packet");
    let frame = tcp_frame(peer_mac, [10, 244, 1, 2], [10, 0, 100, 2], 1, 1396);
    g.throughput(Throughput::Elements(1));
    g.bench_function("encap_1450B", |b| {
        let mut f = frame.clone();
        b.iter(|| {
            encap(black_box(&mut f), &vnet::Header::default(), &fdb)
                .map(|t| t.destination)
                .ok()
        });
    });
    let mut datagram = vxlan::header(1).to_vec();
    datagram.extend_from_slice(&tcp_frame(OWN, [10, 0, 100, 2], [10, 244, 1, 2], 1, 1396));
    let from = Ipv4Addr::new(198, 18, 0, 100);
    g.bench_function("decap_1450B", |b| {
        b.iter(|| {
            decap(black_box(&datagram), from, &fdb, &cfg)
                .map(|d| d.vnet)
                .ok()
        });
    });
    g.bench_function("fdb_lookup_5000_peers", |b| {
        b.iter(|| fdb.lookup(black_box(&peer_mac)).is_some())
    });
    g.finish();

    let mut g = c.benchmark_group("offload");
    let payload = 64_000 - 54;
    let big = tcp_frame(peer_mac, [10, 244, 1, 2], [10, 0, 100, 2], 1, payload);
    let hdr = vnet::Header {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1410,
        csum_start: 34,
        csum_offset: 16,
    };
    g.throughput(Throughput::Bytes(payload as u64));
    let vx = vxlan::header(1);
    let mut seg = Segmenter::default();
    g.bench_function("split_64KiB", |b| {
        b.iter(|| seg.split(black_box(&big), &hdr, &vx).map(<[_]>::len).ok())
    });

    // The segments as UDP_GRO would deliver them, inner frames back to back.
    let segs = seg.split(&big, &hdr, &vx).unwrap().to_vec();
    let mut gro = Vec::new();
    let mut frames = Vec::new();
    for s in &segs {
        let start = gro.len();
        gro.extend_from_slice(&seg.headers(s)[vxlan::HEADER_LEN..]);
        gro.extend_from_slice(&big[s.payload.clone()]);
        frames.push(InnerFrame {
            range: start..gro.len(),
            vnet: vnet::Header::default(),
        });
    }
    let mut co = Coalescer::with_capacity(64);
    g.bench_function("coalesce_64KiB", |b| {
        b.iter_batched_ref(
            || gro.clone(),
            |buf| co.plan(buf, black_box(&frames)).len(),
            criterion::BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, bench_path);
criterion_main!(benches);
