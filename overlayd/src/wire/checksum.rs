//! The Internet checksum (RFC 1071) and the TCP/UDP pseudo-header sums.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Adds `data` as big-endian 16-bit words to `acc` (not folded).
#[must_use]
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (v >> 32) + (v & 0xffff_ffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = rest.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds a running sum into 16 bits (not complemented).
#[must_use]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    #[allow(clippy::cast_possible_truncation)]
    let v = acc as u16;
    v
}

/// The final checksum value to store in a header.
#[must_use]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// IPv4 pseudo-header sum for an L4 segment of `len` bytes with protocol `proto`.
#[must_use]
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u32) -> u64 {
    sum(&src.octets(), 0) + sum(&dst.octets(), 0) + u64::from(proto) + u64::from(len)
}

/// IPv6 pseudo-header sum.
#[must_use]
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u64 {
    sum(&src.octets(), 0)
        + sum(&dst.octets(), 0)
        + u64::from(proto)
        + u64::from(len >> 16)
        + u64::from(len & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example bytes: 00 01 f2 03 f4 f5 f6 f7 -> sum 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(
            fold(sum(&data[..5], 0)),
            fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0x00], 0))
        );
    }

    #[test]
    fn odd_and_long_inputs_match_naive() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in [0, 1, 2, 7, 8, 9, 63, 1000, 1001] {
            let mut naive = 0u64;
            for c in data[..n].chunks(2) {
                naive += u64::from(c[0]) << 8 | c.get(1).map_or(0, |&b| u64::from(b));
            }
            assert_eq!(fold(sum(&data[..n], 0)), fold(naive), "len {n}");
        }
    }
}
