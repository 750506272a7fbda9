//! Path MTU discovery through the tunnel: when an inner packet does not fit the path to its
//! peer (the outer packet has DF set, so the kernel refuses it with EMSGSIZE once it knows the
//! path MTU), answer the inner sender with ICMP "fragmentation needed" (IPv4) or ICMPv6
//! "packet too big", written into the TAP device as if the remote end had sent it. The sender's
//! stack then lowers its MSS / route MTU instead of black-holing.
//!
//! This is what Linux does for a vxlan device in a bridge (`skb_tunnel_check_pmtu` ->
//! `iptunnel_pmtud_check_icmp[v6]` -> `iptunnel_pmtud_build_icmp[v6]` in
//! net/ipv4/ip_tunnel_core.c): the reported MTU is the path MTU minus the encapsulation
//! overhead; the error comes from the inner destination address to the inner source, with the
//! Ethernet addresses swapped and the original hop limit; it quotes as much of the original
//! packet as fits in 576 bytes (IPv4, RFC 1812 4.3.2.3) or 1280 bytes (IPv6, RFC 4443 2.4(c)),
//! which includes the IP header + 8 bytes that RFC 792/1191 require. No error is sent for an
//! inner MTU below 576 (IPv4) or 1280 (IPv6), for IPv4 packets without DF or fragments, for
//! ICMP errors, or for unspecified, loopback, broadcast or multicast sources.
//!
//! I/O-free: the caller provides the frame (in two pieces, so a TSO segment's headers and
//! payload need not be joined first), the MTU and an output buffer; `RateLimit` takes the time
//! as an argument.

use crate::wire::{checksum, ethernet};

/// IPv4 + UDP + VXLAN + inner Ethernet: what the tunnel adds to an inner IP packet.
pub const OVERHEAD_V4: u32 = 50;
/// The largest frame `too_big` writes: Ethernet + the IPv6 minimum MTU.
pub const MAX_FRAME: usize = ethernet::HEADER_LEN + IPV6_MIN_MTU;

const IPV4_MIN_MTU: usize = 576;
const IPV6_MIN_MTU: usize = 1280;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const IP_DF: u16 = 0x4000;

/// IPv6 + UDP + VXLAN + inner Ethernet: the overhead over an IPv6 underlay.
pub const OVERHEAD_V6: u32 = 70;

/// The inner MTU to report for a path MTU to the peer over an IPv6 (`outer_v6`) or IPv4
/// underlay: the path MTU less what the tunnel adds. The overhead depends on the outer family
/// only (an inner IPv6 packet to a peer known only by its IPv4 VTEP costs 50 bytes, as on
/// Flannel's flannel.1). `too_big` then sends nothing when this is below the inner family's
/// minimum (576 / 1280), as Linux does.
#[must_use]
pub fn inner_mtu(path_mtu: u32, outer_v6: bool) -> u32 {
    path_mtu.saturating_sub(if outer_v6 { OVERHEAD_V6 } else { OVERHEAD_V4 })
}

/// Whether an Ethernet frame that does not fit the path may leave in a fragmented outer
/// packet instead: an IPv4 packet without DF (its sender allows fragmentation, and kernel
/// vxlan, whose outer DF is off by default, would fragment it). IPv6 packets and DF packets
/// get an ICMP error instead.
#[must_use]
pub fn outer_may_fragment(frame: &[u8]) -> bool {
    frame.len() >= ethernet::HEADER_LEN + 20
        && frame[12..14] == ethernet::ETHERTYPE_IPV4.to_be_bytes()
        && frame[ethernet::HEADER_LEN] >> 4 == 4
        && frame[ethernet::HEADER_LEN + 6] & 0x40 == 0
}

/// Byte `i` of the frame given as `head` followed by `tail`.
fn byte(head: &[u8], tail: &[u8], i: usize) -> Option<u8> {
    if i < head.len() {
        Some(head[i])
    } else {
        tail.get(i - head.len()).copied()
    }
}

/// Copies `len` bytes of `head ++ tail` from offset `from` into `out`.
fn copy_joined(out: &mut [u8], head: &[u8], tail: &[u8], from: usize) {
    let len = out.len();
    let h = head.get(from..).unwrap_or(&[]);
    let n = h.len().min(len);
    out[..n].copy_from_slice(&h[..n]);
    if n < len {
        let t_from = from + n - head.len();
        out[n..].copy_from_slice(&tail[t_from..t_from + len - n]);
    }
}

/// Writes into `out` the Ethernet frame that tells the sender of `head ++ tail` (an Ethernet
/// frame read from the TAP) that it does not fit an inner MTU of `mtu`. Returns the frame's
/// length, or `None` when no error must be sent (see the module comment).
pub fn too_big(out: &mut [u8; MAX_FRAME], head: &[u8], tail: &[u8], mtu: u32) -> Option<usize> {
    let total = head.len() + tail.len();
    if total < ethernet::HEADER_LEN + 20 {
        return None;
    }
    // A packet that fits was refused for another reason: telling the sender to go below its
    // own size would be wrong (Linux checks the same before building the error).
    if total_ip(head, tail) <= mtu as usize {
        return None;
    }
    let ethertype = u16::from_be_bytes([byte(head, tail, 12)?, byte(head, tail, 13)?]);
    match ethertype {
        ethernet::ETHERTYPE_IPV4 => too_big_v4(out, head, tail, mtu),
        ethernet::ETHERTYPE_IPV6 => too_big_v6(out, head, tail, mtu),
        _ => None,
    }
}

fn ethernet_reply(out: &mut [u8], head: &[u8], tail: &[u8], ethertype: u16) {
    let mut orig = [0u8; ethernet::HEADER_LEN];
    copy_joined(&mut orig, head, tail, 0);
    out[..6].copy_from_slice(&orig[6..12]);
    out[6..12].copy_from_slice(&orig[..6]);
    out[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

fn too_big_v4(out: &mut [u8; MAX_FRAME], head: &[u8], tail: &[u8], mtu: u32) -> Option<usize> {
    const IP: usize = ethernet::HEADER_LEN;
    let mut h = [0u8; 20];
    copy_joined(&mut h, head, tail, IP);
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    let mtu = u16::try_from(mtu).ok()?;
    if usize::from(mtu) < IPV4_MIN_MTU {
        return None;
    }
    // DF set, MF clear, offset 0: exactly what Linux requires (`frag_off != htons(IP_DF)`).
    if u16::from_be_bytes([h[6], h[7]]) != IP_DF {
        return None;
    }
    let src = [h[12], h[13], h[14], h[15]];
    let dst = [h[16], h[17], h[18], h[19]];
    let bcast = |a: [u8; 4]| a == [255; 4];
    let mcast = |a: [u8; 4]| a[0] & 0xf0 == 0xe0;
    if bcast(dst) || mcast(dst) || src[0] == 0 || src[0] == 127 || bcast(src) || mcast(src) {
        return None;
    }
    if h[9] == PROTO_ICMP {
        // ICMP errors (unreachable, source quench, redirect, time exceeded, parameter
        // problem) never trigger another error.
        if matches!(byte(head, tail, IP + ihl), None | Some(3 | 4 | 5 | 11 | 12)) {
            return None;
        }
    }
    let ip_len = usize::from(u16::from_be_bytes([h[2], h[3]])).min(total_ip(head, tail));
    if ip_len < ihl {
        return None;
    }
    let quote = ip_len.min(IPV4_MIN_MTU - 20 - 8);
    let icmp_len = 8 + quote;
    let frame_len = IP + 20 + icmp_len;
    ethernet_reply(out, head, tail, ethernet::ETHERTYPE_IPV4);
    let ip = &mut out[IP..frame_len];
    #[allow(clippy::cast_possible_truncation)]
    let tot = (20 + icmp_len) as u16;
    ip[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, h[8], PROTO_ICMP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip[12..16].copy_from_slice(&dst);
    ip[16..20].copy_from_slice(&src);
    let c = checksum::finish(checksum::sum(&ip[..20], 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut ip[20..];
    icmp[..8].copy_from_slice(&[3, 4, 0, 0, 0, 0, 0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    copy_joined(&mut icmp[8..], head, tail, IP);
    let c = checksum::finish(checksum::sum(icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(frame_len)
}

/// Bytes of the frame after the Ethernet header.
fn total_ip(head: &[u8], tail: &[u8]) -> usize {
    (head.len() + tail.len()).saturating_sub(ethernet::HEADER_LEN)
}

/// The upper-layer protocol of an IPv6 packet whose first next-header is `next` and whose
/// extension headers start at frame offset `at`, with that protocol's offset: Linux's
/// `ipv6_skip_exthdr` (Hop-by-Hop 0, Routing 43, Fragment 44, AH 51, Destination Options 60).
/// `None` for No Next Header (59), headers cut off by the frame's end, or a fragment whose
/// offset is not 0 (its upper-layer header is in another fragment).
fn skip_ext_headers(head: &[u8], tail: &[u8], mut next: u8, mut at: usize) -> Option<(u8, usize)> {
    loop {
        let len = match next {
            0 | 43 | 60 => (usize::from(byte(head, tail, at + 1)?) + 1) * 8,
            51 => (usize::from(byte(head, tail, at + 1)?) + 2) * 4,
            44 => {
                let off =
                    u16::from_be_bytes([byte(head, tail, at + 2)?, byte(head, tail, at + 3)?]);
                if off & !7 != 0 {
                    return None;
                }
                8
            }
            59 => return None,
            _ => return Some((next, at)),
        };
        next = byte(head, tail, at)?;
        at += len;
    }
}

fn too_big_v6(out: &mut [u8; MAX_FRAME], head: &[u8], tail: &[u8], mtu: u32) -> Option<usize> {
    const IP: usize = ethernet::HEADER_LEN;
    if (mtu as usize) < IPV6_MIN_MTU {
        return None;
    }
    let mut h = [0u8; 40];
    if total_ip(head, tail) < 40 {
        return None;
    }
    copy_joined(&mut h, head, tail, IP);
    if h[0] >> 4 != 6 {
        return None;
    }
    let src = &h[8..24];
    // Unspecified, loopback (::1) or multicast sources get no error.
    let unspecified = src.iter().all(|b| *b == 0);
    let loopback = src[..15].iter().all(|b| *b == 0) && src[15] == 1;
    if unspecified || loopback || src[0] == 0xff {
        return None;
    }
    // As Linux's iptunnel_pmtud_check_icmpv6: past the extension headers (ipv6_skip_exthdr),
    // no error for a non-first fragment, and ICMPv6 errors (type < 128) and redirects (137)
    // trigger nothing.
    let (proto, at) = skip_ext_headers(head, tail, h[6], IP + 40)?;
    if proto == PROTO_ICMPV6 {
        match byte(head, tail, at)? {
            t if t < 128 || t == 137 => return None,
            _ => {}
        }
    }
    let ip_len = (40 + usize::from(u16::from_be_bytes([h[4], h[5]]))).min(total_ip(head, tail));
    let quote = ip_len.min(IPV6_MIN_MTU - 40 - 8);
    let icmp_len = 8 + quote;
    let frame_len = IP + 40 + icmp_len;
    ethernet_reply(out, head, tail, ethernet::ETHERTYPE_IPV6);
    let ip = &mut out[IP..frame_len];
    ip[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, PROTO_ICMPV6, h[7]]);
    #[allow(clippy::cast_possible_truncation)]
    ip[4..6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
    ip[8..24].copy_from_slice(&h[24..40]);
    ip[24..40].copy_from_slice(&h[8..24]);
    let (hdr, icmp) = ip.split_at_mut(40);
    icmp[..8].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
    icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
    copy_joined(&mut icmp[8..], head, tail, IP);
    let mut s = [0u8; 16];
    s.copy_from_slice(&hdr[8..24]);
    let mut d = [0u8; 16];
    d.copy_from_slice(&hdr[24..40]);
    #[allow(clippy::cast_possible_truncation)]
    let pseudo = checksum::pseudo_v6(s.into(), d.into(), PROTO_ICMPV6, icmp_len as u32);
    let c = checksum::finish(checksum::sum(icmp, pseudo));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(frame_len)
}

/// A token bucket for the ICMP errors one worker writes: `burst` at once, then `per_sec`.
/// Time comes from the caller (milliseconds from any fixed origin).
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_sec: u32,
    burst: u32,
    /// Tokens in thousandths.
    milli_tokens: u64,
    last_ms: u64,
}

impl RateLimit {
    #[must_use]
    pub fn new(per_sec: u32, burst: u32) -> Self {
        RateLimit {
            per_sec,
            burst,
            milli_tokens: u64::from(burst) * 1000,
            last_ms: 0,
        }
    }

    /// Takes a token at time `now_ms`; false when none is left.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let cap = u64::from(self.burst) * 1000;
        self.milli_tokens = (self.milli_tokens + elapsed * u64::from(self.per_sec)).min(cap);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Type, Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket};

    const POD: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 0];
    const PEER: [u8; 6] = [0x0a, 0x58, 10, 244, 2, 0];

    fn tcp_v4(payload: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
        let b = PacketBuilder::ethernet2(POD, PEER)
            .ipv4([10, 244, 1, 2], [10, 244, 2, 2], 63)
            .tcp(40000, 5201, 7, 512);
        let mut out = Vec::new();
        b.write(&mut out, &data).unwrap();
        // etherparse sets DF by default on IPv4; make sure of it.
        out[14 + 6] = 0x40;
        out[14 + 7] = 0;
        out[24..26].copy_from_slice(&[0, 0]);
        let c = checksum::finish(checksum::sum(&out[14..34], 0));
        out[24..26].copy_from_slice(&c.to_be_bytes());
        out
    }

    fn tcp_v6(payload: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
        let mut src = [0u8; 16];
        src[0] = 0xfd;
        src[15] = 2;
        let mut dst = src;
        dst[14] = 2;
        let b = PacketBuilder::ethernet2(POD, PEER)
            .ipv6(src, dst, 61)
            .tcp(40000, 5201, 7, 512);
        let mut out = Vec::new();
        b.write(&mut out, &data).unwrap();
        out
    }

    #[test]
    fn ipv4_frag_needed_as_linux_builds_it() {
        let frame = tcp_v4(1410);
        let mut out = [0u8; MAX_FRAME];
        // Split the frame anywhere: the result must not depend on it.
        let mut first = None;
        for cut in [frame.len(), 54, 20, 0] {
            let n = too_big(&mut out, &frame[..cut], &frame[cut..], 1350).unwrap();
            let got = out[..n].to_vec();
            assert_eq!(first.get_or_insert_with(|| got.clone()), &got, "cut {cut}");
        }
        let got = first.unwrap();
        assert_eq!(got.len(), 14 + 576, "quotes up to 576 bytes in all");
        assert_eq!(&got[..6], &POD, "back to the pod's MAC");
        assert_eq!(&got[6..12], &PEER);
        let p = SlicedPacket::from_ethernet(&got).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        let h = ip.header();
        assert_eq!(h.source(), [10, 244, 2, 2], "from the inner destination");
        assert_eq!(h.destination(), [10, 244, 1, 2]);
        assert_eq!(h.ttl(), 63);
        assert!(h.dont_fragment());
        assert_eq!(
            h.to_header().calc_header_checksum(),
            h.header_checksum(),
            "IPv4 header checksum"
        );
        let Some(etherparse::TransportSlice::Icmpv4(icmp)) = &p.transport else {
            panic!("not ICMP")
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1350
                }
            )
        );
        assert_eq!(
            etherparse::Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum,
            icmp.checksum(),
            "ICMP checksum"
        );
        // The quote starts with the original IP header + 8 bytes (ports and sequence).
        assert_eq!(icmp.payload(), &frame[14..14 + 548]);
    }

    #[test]
    fn a_packet_that_fits_gets_no_error() {
        let mut out = [0u8; MAX_FRAME];
        let frame = tcp_v4(1310); // IP length 1350
        assert!(too_big(&mut out, &frame, &[], 1350).is_none());
        assert!(too_big(&mut out, &frame, &[], 1349).is_some());
        let frame = tcp_v6(1240); // IP length 1300
        assert!(too_big(&mut out, &frame, &[], 1300).is_none());
        assert!(too_big(&mut out, &frame, &[], 1299).is_some());
    }

    #[test]
    fn ipv4_cases_without_an_error() {
        let mut out = [0u8; MAX_FRAME];
        let frame = tcp_v4(1410);
        assert!(too_big(&mut out, &frame, &[], 575).is_none(), "mtu < 576");
        let mut no_df = frame.clone();
        no_df[20] = 0;
        assert!(too_big(&mut out, &no_df, &[], 1350).is_none(), "no DF");
        let mut frag = frame.clone();
        frag[20] = 0x60; // DF + MF
        assert!(too_big(&mut out, &frag, &[], 1350).is_none(), "fragment");
        let mut mcast = frame.clone();
        mcast[30] = 239;
        assert!(
            too_big(&mut out, &mcast, &[], 1350).is_none(),
            "multicast dst"
        );
        let mut zero = frame.clone();
        zero[26] = 0;
        assert!(too_big(&mut out, &zero, &[], 1350).is_none(), "0.x source");
        let mut icmp_err = frame.clone();
        icmp_err[14 + 9] = PROTO_ICMP;
        icmp_err[34] = 3;
        assert!(
            too_big(&mut out, &icmp_err, &[], 1350).is_none(),
            "ICMP error"
        );
        icmp_err[34] = 8; // echo request: answered
        assert!(too_big(&mut out, &icmp_err, &[], 1350).is_some(), "echo");
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&ethernet::ETHERTYPE_ARP.to_be_bytes());
        assert!(too_big(&mut out, &arp, &[], 1350).is_none(), "not IP");
        assert!(
            too_big(&mut out, &frame[..30], &[], 1350).is_none(),
            "short"
        );
    }

    #[test]
    fn ipv6_packet_too_big_as_linux_builds_it() {
        let frame = tcp_v6(1400);
        let mut out = [0u8; MAX_FRAME];
        let n = too_big(&mut out, &frame[..74], &frame[74..], 1300).unwrap();
        assert_eq!(n, MAX_FRAME, "quotes up to 1280 bytes in all");
        let p = SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        let h = ip.header();
        assert_eq!(h.source(), <[u8; 16]>::try_from(&frame[38..54]).unwrap());
        assert_eq!(
            h.destination(),
            <[u8; 16]>::try_from(&frame[22..38]).unwrap()
        );
        assert_eq!(h.hop_limit(), 61);
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1300 });
        assert_eq!(
            etherparse::Icmpv6Header::with_checksum(
                icmp.icmp_type(),
                h.source(),
                h.destination(),
                icmp.payload()
            )
            .unwrap()
            .checksum,
            icmp.checksum(),
            "ICMPv6 checksum"
        );
        assert_eq!(icmp.payload(), &frame[14..14 + 1232]);
        let mut out2 = [0u8; MAX_FRAME];
        assert!(
            too_big(&mut out2, &frame, &[], 1279).is_none(),
            "mtu < 1280"
        );
    }

    /// An ICMPv6 echo request that does not fit: answered (echo is informational), with the
    /// original hop limit, from the inner destination, quoting the packet; the frame given as a
    /// TSO segment's headers plus payload slice gives the same bytes as joined. ICMPv6 errors,
    /// multicast, loopback and unspecified sources get nothing.
    #[test]
    fn ipv6_packet_too_big_for_echo_and_none_for_errors_or_odd_sources() {
        let mut src = [0u8; 16];
        src[0] = 0xfd;
        src[15] = 2;
        let mut dst = src;
        dst[14] = 2;
        let echo = |src: [u8; 16], kind: u8| {
            let mut out = Vec::new();
            PacketBuilder::ethernet2(POD, PEER)
                .ipv6(src, dst, 17)
                .icmpv6(Icmpv6Type::Unknown {
                    type_u8: kind,
                    code_u8: 0,
                    bytes5to8: [0, 1, 0, 1],
                })
                .write(&mut out, &[0x5a; 1402])
                .unwrap();
            out
        };
        let frame = echo(src, 128);
        assert_eq!(frame.len(), 14 + 1450);
        let mut out = [0u8; MAX_FRAME];
        let n = too_big(&mut out, &frame[..62], &frame[62..], 1430).unwrap();
        let mut joined = [0u8; MAX_FRAME];
        assert_eq!(too_big(&mut joined, &frame, &[], 1430), Some(n));
        assert_eq!(
            out[..n],
            joined[..n],
            "independent of where the frame is cut"
        );
        let p = SlicedPacket::from_ethernet(&out[..n]).unwrap();
        assert_eq!(&out[..6], &POD);
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        let h = ip.header();
        assert_eq!((h.source(), h.destination(), h.hop_limit()), (dst, src, 17));
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1430 });
        assert_eq!(
            etherparse::Icmpv6Header::with_checksum(
                icmp.icmp_type(),
                h.source(),
                h.destination(),
                icmp.payload()
            )
            .unwrap()
            .checksum,
            icmp.checksum(),
        );
        assert_eq!(icmp.payload(), &frame[14..14 + 1232]);

        for (what, f) in [
            ("ICMPv6 error (destination unreachable)", echo(src, 1)),
            ("ICMPv6 packet too big", echo(src, 2)),
            ("redirect", echo(src, 137)),
            ("multicast source", echo([0xff; 16], 128)),
            ("unspecified source", echo([0; 16], 128)),
            ("loopback source", {
                let mut lo = [0u8; 16];
                lo[15] = 1;
                echo(lo, 128)
            }),
        ] {
            assert!(too_big(&mut joined, &f, &[], 1430).is_none(), "{what}");
        }
    }

    /// Extension headers are walked as Linux's ipv6_skip_exthdr does: an ICMPv6 error behind
    /// Hop-by-Hop and Destination Options gets no Packet Too Big, an echo request behind them
    /// does (quoting the headers), and of a fragmented packet only the first fragment does.
    #[test]
    fn ipv6_packet_too_big_skips_extension_headers_and_non_first_fragments() {
        let mut src = [0u8; 16];
        src[0] = 0xfd;
        src[15] = 2;
        let mut dst = src;
        dst[14] = 2;
        // An ICMPv6 message of `kind` after `exts` (each: its next-header value and bytes,
        // whose first byte is filled with the following header's number).
        let frame = |kind: u8, exts: &[(u8, Vec<u8>)]| {
            let mut icmp = vec![kind, 0, 0, 0, 0, 1, 0, 1];
            icmp.extend_from_slice(&[0x5a; 1400]);
            let mut body = Vec::new();
            let mut first = PROTO_ICMPV6;
            for (i, (_, bytes)) in exts.iter().enumerate().rev() {
                let mut b = bytes.clone();
                b[0] = if i + 1 < exts.len() {
                    exts[i + 1].0
                } else {
                    PROTO_ICMPV6
                };
                b.extend_from_slice(&body);
                body = b;
                first = exts[i].0;
            }
            body.extend_from_slice(&icmp);
            let mut f = Vec::new();
            f.extend_from_slice(&POD);
            f.extend_from_slice(&PEER);
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
            f.extend_from_slice(&[first, 17]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst);
            f.extend_from_slice(&body);
            f
        };
        // Hop-by-Hop and Destination Options, 8 bytes each (PadN filling them).
        let opts = |code: u8| (code, vec![0, 0, 1, 4, 0, 0, 0, 0]);
        let frag = |offset: u16, more: bool| {
            let fo = (offset << 3) | u16::from(more);
            let b = fo.to_be_bytes();
            (44u8, vec![0, 0, b[0], b[1], 0, 0, 0x12, 0x34])
        };
        let mut out = [0u8; MAX_FRAME];

        // etherparse sees the headers as built: the ICMPv6 type behind the options.
        let err = frame(1, &[opts(0), opts(60)]);
        let p = SlicedPacket::from_ethernet(&err).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        assert_eq!(
            ip.extensions().first_header(),
            Some(etherparse::IpNumber(0))
        );
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6 behind the options: {:?}", p.transport)
        };
        assert_eq!(icmp.type_u8(), 1);
        assert!(
            too_big(&mut out, &err, &[], 1430).is_none(),
            "error behind options"
        );
        // ...also when the frame is cut inside the options (a TSO segment's headers).
        assert!(too_big(&mut out, &err[..60], &err[60..], 1430).is_none());
        assert!(
            too_big(&mut out, &frame(137, &[opts(60)]), &[], 1430).is_none(),
            "redirect"
        );

        // An echo request behind them is answered, quoting the extension headers.
        let echo = frame(128, &[opts(0), opts(60)]);
        let mut answer = [0u8; MAX_FRAME];
        let n = too_big(&mut answer, &echo, &[], 1430).expect("echo behind options");
        let p = SlicedPacket::from_ethernet(&answer[..n]).unwrap();
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1430 });
        assert_eq!(icmp.payload(), &echo[14..14 + 1232]);

        // Fragments: the first one (offset 0) is answered, a later one is not.
        let first = frame(128, &[frag(0, true)]);
        let p = SlicedPacket::from_ethernet(&first).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        assert!(ip.is_payload_fragmented(), "etherparse sees a fragment");
        assert!(
            too_big(&mut out, &first, &[], 1430).is_some(),
            "first fragment"
        );
        let later = frame(128, &[frag(1448 / 8, true)]);
        assert!(
            too_big(&mut out, &later, &[], 1430).is_none(),
            "non-first fragment"
        );
        let last = frame(128, &[opts(0), frag(2896 / 8, false)]);
        assert!(
            too_big(&mut out, &last, &[], 1430).is_none(),
            "non-first fragment behind options"
        );
        // An ICMPv6 error in a first fragment behind options is still an error.
        assert!(too_big(&mut out, &frame(1, &[opts(0), frag(0, true)]), &[], 1430).is_none());
        // No Next Header: nothing to answer.
        let mut none = frame(128, &[opts(0)]);
        none[14 + 40] = 59;
        assert!(
            too_big(&mut out, &none, &[], 1430).is_none(),
            "no next header"
        );
    }

    #[test]
    fn inner_mtu_takes_the_outer_family_overhead() {
        assert_eq!(inner_mtu(1500, false), 1450);
        assert_eq!(inner_mtu(1500, true), 1430);
        assert_eq!(inner_mtu(60, true), 0);
        // An IPv6 path of 1349 leaves 1279 inside: below IPv6's minimum, so no error at all
        // (a packet too big of 1279 would be ignored by the sender, RFC 8200 5).
        let frame = tcp_v6(1400);
        let mut out = [0u8; MAX_FRAME];
        assert!(too_big(&mut out, &frame, &[], inner_mtu(1349, true)).is_none());
        assert!(too_big(&mut out, &frame, &[], inner_mtu(1350, true)).is_some());
    }

    #[test]
    fn only_ipv4_without_df_may_fragment_outside() {
        let mut f = tcp_v4(1410);
        assert!(!outer_may_fragment(&f), "DF");
        f[20] = 0;
        assert!(outer_may_fragment(&f), "no DF");
        f[20] = 0x20; // MF: a fragment of a packet without DF
        assert!(outer_may_fragment(&f));
        assert!(!outer_may_fragment(&tcp_v6(1400)), "IPv6");
        assert!(!outer_may_fragment(&f[..30]), "short");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn prop_too_big_never_panics_and_ignores_the_split(
            mut data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1700),
            v6: bool,
            mtu in 500u32..1600,
            cut in 0usize..1700,
        ) {
            if data.len() > 21 {
                let et = if v6 { ethernet::ETHERTYPE_IPV6 } else { ethernet::ETHERTYPE_IPV4 };
                data[12..14].copy_from_slice(&et.to_be_bytes());
                if v6 {
                    data[14] = 0x60 | (data[14] & 0x0f);
                } else {
                    data[14] = 0x45;
                    data[20] = 0x40;
                    data[21] = 0;
                }
            }
            let cut = cut.min(data.len());
            let mut a = [0u8; MAX_FRAME];
            let mut b = [0u8; MAX_FRAME];
            let ra = too_big(&mut a, &data, &[], mtu);
            let rb = too_big(&mut b, &data[..cut], &data[cut..], mtu);
            proptest::prop_assert_eq!(ra, rb);
            if let Some(n) = ra {
                proptest::prop_assert_eq!(&a[..n], &b[..n]);
                proptest::prop_assert!(SlicedPacket::from_ethernet(&a[..n]).is_ok());
            }
        }
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let mut r = RateLimit::new(10, 3);
        assert!((0..3).all(|_| r.allow(1000)));
        assert!(!r.allow(1000));
        assert!(!r.allow(1050));
        assert!(r.allow(1100), "one token per 100 ms");
        assert!(!r.allow(1100));
        assert!((0..3).all(|_| r.allow(60_000)), "refills to the burst only");
        assert!(!r.allow(60_000));
    }
}
