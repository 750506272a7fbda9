//! ECN across the tunnel, as Linux vxlan does it (RFC 6040 "normal mode").
//!
//! Encap (`ip_tunnel_ecn_encap` / `INET_ECN_encapsulate` in include/net/inet_ecn.h): the outer
//! ECN field copies the inner one, except that an inner CE becomes ECT(0) outside; the outer
//! DSCP is 0, as on Flannel's `flannel.1` (no `tos` set on the device).
//!
//! Decap (`INET_ECN_decapsulate`): an outer CE on a Not-ECT inner packet drops it (the inner
//! endpoint could not see the congestion); an outer CE on an ECT inner packet sets CE inside;
//! an outer ECT(1) turns an inner ECT(0) into ECT(1); everything else leaves the inner packet
//! as it is. IPv4 header checksums are updated incrementally (RFC 1624).
//!
//! Pure functions over byte slices: one byte read per packet on encap, one on decap unless
//! the outer header carries a mark.

use super::DropReason;
use crate::wire::{checksum, ethernet};

pub const NOT_ECT: u8 = 0;
pub const ECT_1: u8 = 1;
pub const ECT_0: u8 = 2;
pub const CE: u8 = 3;
pub const MASK: u8 = 3;

/// The outer TOS byte for an inner ECN field (`INET_ECN_encapsulate(0, inner)`).
#[inline]
#[must_use]
pub fn encapsulate(inner_ecn: u8) -> u8 {
    match inner_ecn & MASK {
        CE => ECT_0,
        e => e,
    }
}

/// The ECN field of an Ethernet frame's IPv4/IPv6 packet (Not-ECT for anything else).
#[inline]
#[must_use]
pub fn inner_ecn(frame: &[u8]) -> u8 {
    let Some(&b0) = frame.get(ethernet::HEADER_LEN) else {
        return NOT_ECT;
    };
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    match (ethertype, b0 >> 4) {
        // TOS is byte 1 of the IPv4 header.
        (ethernet::ETHERTYPE_IPV4, 4) => frame
            .get(ethernet::HEADER_LEN + 1)
            .map_or(NOT_ECT, |t| t & MASK),
        // The traffic class is the low nibble of byte 0 and the high nibble of byte 1 of the
        // IPv6 header; its ECN bits are bits 4..5 of byte 1.
        (ethernet::ETHERTYPE_IPV6, 6) => frame
            .get(ethernet::HEADER_LEN + 1)
            .map_or(NOT_ECT, |b1| (b1 >> 4) & MASK),
        _ => NOT_ECT,
    }
}

/// The outer TOS byte for an Ethernet frame about to be encapsulated.
#[inline]
#[must_use]
pub fn outer_tos(frame: &[u8]) -> u8 {
    encapsulate(inner_ecn(frame))
}

/// What decapsulation did to the inner packet's ECN field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decap {
    /// Nothing to change.
    Unchanged,
    /// The outer CE was copied into the ECT inner packet.
    SetCe,
    /// The outer ECT(1) turned the inner ECT(0) into ECT(1).
    SetEct1,
}

/// Applies the outer TOS byte `outer_tos` to the inner Ethernet frame `frame` in place.
/// `Err(RxEcnNotEct)` when the packet must be dropped (outer CE, inner Not-ECT).
#[inline]
pub fn decapsulate(frame: &mut [u8], outer_tos: u8) -> Result<Decap, DropReason> {
    let outer = outer_tos & MASK;
    if outer == NOT_ECT || outer == ECT_0 {
        return Ok(Decap::Unchanged);
    }
    if frame.len() < ethernet::HEADER_LEN + 2 {
        return Ok(Decap::Unchanged);
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let ip = &mut frame[ethernet::HEADER_LEN..];
    let v4 = match (ethertype, ip[0] >> 4) {
        (ethernet::ETHERTYPE_IPV4, 4) if ip.len() >= 20 => true,
        (ethernet::ETHERTYPE_IPV6, 6) if ip.len() >= 40 => false,
        // Not IP (ARP, ...): nothing to carry the mark, as in Linux (the skb protocol
        // switch there passes other protocols untouched).
        _ => return Ok(Decap::Unchanged),
    };
    let inner = if v4 {
        ip[1] & MASK
    } else {
        (ip[1] >> 4) & MASK
    };
    let want = match (outer, inner) {
        (CE, NOT_ECT) => return Err(DropReason::RxEcnNotEct),
        (CE, CE) | (ECT_1, NOT_ECT | ECT_1 | CE) => return Ok(Decap::Unchanged),
        (CE, _) => CE,
        // Outer ECT(1), inner ECT(0).
        _ => ECT_1,
    };
    if v4 {
        let old = u16::from_be_bytes([ip[0], ip[1]]);
        ip[1] = (ip[1] & !MASK) | want;
        let new = u16::from_be_bytes([ip[0], ip[1]]);
        // RFC 1624 eq. 3: HC' = ~(~HC + ~m + m').
        let hc = u16::from_be_bytes([ip[10], ip[11]]);
        let sum = u64::from(!hc) + u64::from(!old) + u64::from(new);
        ip[10..12].copy_from_slice(&(!checksum::fold(sum)).to_be_bytes());
    } else {
        ip[1] = (ip[1] & !(MASK << 4)) | (want << 4);
    }
    Ok(if want == CE {
        Decap::SetCe
    } else {
        Decap::SetEct1
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Ipv4HeaderSlice, PacketBuilder};

    fn v4_frame(tos: u8) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .udp(1000, 2000);
        let mut out = Vec::new();
        b.write(&mut out, &[1, 2, 3, 4]).unwrap();
        // Set the TOS and recompute the header checksum from scratch.
        out[15] = tos;
        out[24..26].copy_from_slice(&[0, 0]);
        let c = checksum::finish(checksum::sum(&out[14..34], 0));
        out[24..26].copy_from_slice(&c.to_be_bytes());
        out
    }

    fn v6_frame(tclass: u8) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(1000, 2000);
        let mut out = Vec::new();
        b.write(&mut out, &[1, 2, 3, 4]).unwrap();
        out[14] = 0x60 | (tclass >> 4);
        out[15] = (out[15] & 0x0f) | (tclass << 4);
        out
    }

    fn v4_checksum_ok(frame: &[u8]) -> bool {
        let h = Ipv4HeaderSlice::from_slice(&frame[14..]).unwrap();
        h.to_header().calc_header_checksum() == h.header_checksum()
    }

    #[test]
    fn encapsulate_copies_ect_and_turns_ce_into_ect0() {
        assert_eq!(encapsulate(NOT_ECT), NOT_ECT);
        assert_eq!(encapsulate(ECT_0), ECT_0);
        assert_eq!(encapsulate(ECT_1), ECT_1);
        assert_eq!(encapsulate(CE), ECT_0);
        // DSCP bits of the inner packet never leak outside.
        assert_eq!(outer_tos(&v4_frame(0xb8 | ECT_1)), ECT_1);
        assert_eq!(outer_tos(&v4_frame(0xb8 | CE)), ECT_0);
        assert_eq!(outer_tos(&v6_frame(0x20 | ECT_0)), ECT_0);
        assert_eq!(outer_tos(&v6_frame(CE)), ECT_0);
        assert_eq!(outer_tos(&v6_frame(0xfc)), NOT_ECT);
        assert_eq!(outer_tos(&[0u8; 10]), NOT_ECT);
        let mut arp = v4_frame(CE);
        arp[12..14].copy_from_slice(&ethernet::ETHERTYPE_ARP.to_be_bytes());
        assert_eq!(outer_tos(&arp), NOT_ECT);
    }

    #[test]
    fn decapsulate_follows_rfc6040_table_ipv4() {
        // (outer, inner) -> Ok(resulting inner) or drop, as INET_ECN_decapsulate.
        let table = [
            (NOT_ECT, NOT_ECT, Some(NOT_ECT)),
            (NOT_ECT, ECT_0, Some(ECT_0)),
            (NOT_ECT, ECT_1, Some(ECT_1)),
            (NOT_ECT, CE, Some(CE)),
            (ECT_0, NOT_ECT, Some(NOT_ECT)),
            (ECT_0, ECT_0, Some(ECT_0)),
            (ECT_0, ECT_1, Some(ECT_1)),
            (ECT_0, CE, Some(CE)),
            (ECT_1, NOT_ECT, Some(NOT_ECT)),
            (ECT_1, ECT_0, Some(ECT_1)),
            (ECT_1, ECT_1, Some(ECT_1)),
            (ECT_1, CE, Some(CE)),
            (CE, NOT_ECT, None),
            (CE, ECT_0, Some(CE)),
            (CE, ECT_1, Some(CE)),
            (CE, CE, Some(CE)),
        ];
        for (outer, inner, want) in table {
            for dscp in [0u8, 0xb8] {
                let mut f = v4_frame(dscp | inner);
                let r = decapsulate(&mut f, 0x20 | outer);
                match want {
                    None => assert_eq!(r, Err(DropReason::RxEcnNotEct), "{outer} {inner}"),
                    Some(w) => {
                        assert!(r.is_ok(), "{outer} {inner}");
                        assert_eq!(f[15], dscp | w, "outer {outer} inner {inner}");
                        assert!(v4_checksum_ok(&f), "outer {outer} inner {inner}");
                    }
                }
            }
        }
    }

    #[test]
    fn decapsulate_ipv6_sets_ce_in_traffic_class() {
        let mut f = v6_frame(0xa0 | ECT_0);
        assert_eq!(decapsulate(&mut f, CE), Ok(Decap::SetCe));
        let h = etherparse::Ipv6HeaderSlice::from_slice(&f[14..]).unwrap();
        assert_eq!(h.traffic_class(), 0xa0 | CE);
        assert_eq!(inner_ecn(&f), CE);
        let mut f = v6_frame(0xa0);
        assert_eq!(decapsulate(&mut f, CE), Err(DropReason::RxEcnNotEct));
        let mut f = v6_frame(ECT_0);
        assert_eq!(decapsulate(&mut f, ECT_1), Ok(Decap::SetEct1));
        assert_eq!(inner_ecn(&f), ECT_1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn prop_decapsulate_touches_only_the_ecn_bits_and_the_checksum(
            tos: u8,
            outer in 0u8..4,
            v6: bool,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut f = if v6 { v6_frame(tos) } else { v4_frame(tos) };
            f.extend_from_slice(&payload);
            let before = f.clone();
            let r = decapsulate(&mut f, outer);
            let inner = if v6 { (before[15] >> 4) & MASK } else { before[15] & MASK };
            proptest::prop_assert_eq!(r.is_err(), outer == CE && inner == NOT_ECT);
            for (i, (a, b)) in f.iter().zip(&before).enumerate() {
                let allowed = if v6 { i == 15 } else { matches!(i, 15 | 24 | 25) };
                proptest::prop_assert!(a == b || allowed, "byte {} changed", i);
            }
            if v6 {
                proptest::prop_assert_eq!(f[15] & 0xcf, before[15] & 0xcf);
            } else {
                proptest::prop_assert_eq!(f[15] & !MASK, before[15] & !MASK);
                proptest::prop_assert!(v4_checksum_ok(&f));
            }
        }
    }

    #[test]
    fn decapsulate_leaves_non_ip_and_short_frames_alone() {
        let mut arp = v4_frame(0);
        arp[12..14].copy_from_slice(&ethernet::ETHERTYPE_ARP.to_be_bytes());
        let before = arp.clone();
        assert_eq!(decapsulate(&mut arp, CE), Ok(Decap::Unchanged));
        assert_eq!(arp, before);
        let mut short = [0u8; 15];
        assert_eq!(decapsulate(&mut short, CE), Ok(Decap::Unchanged));
    }
}
