//! The Internet checksum (RFC 1071) and the TCP/UDP pseudo-header sums.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Adds `data` as big-endian 16-bit words to `acc` (not folded).
///
/// The one's-complement sum is byte-order independent (RFC 1071 section 2(B)): the bulk is
/// summed as native 32-bit words in four independent accumulators (no carries lost: each u64
/// can take 2^32 additions) and the folded result is byte-swapped once at the end. About 2x
/// the throughput of a big-endian 16-bit loop on the split/coalesce paths.
#[must_use]
pub fn sum(data: &[u8], acc: u64) -> u64 {
    let mut a = [0u64; 4];
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        for (k, w) in c.chunks_exact(4).enumerate() {
            a[k] += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    let mut native = (a[0] + a[1]) + (a[2] + a[3]);
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(4);
    for w in &mut words {
        native += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut tail = [0u8; 4];
    let t = words.remainder();
    tail[..t.len()].copy_from_slice(t);
    native += u64::from(u32::from_ne_bytes(tail));
    // Fold to 16 bits in native order, then convert to big-endian word order.
    let folded = fold(native);
    let be = if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    };
    acc + u64::from(be)
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
