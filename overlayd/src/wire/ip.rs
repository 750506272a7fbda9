//! IPv4/IPv6 header views, as much as overlayd needs: addresses, L4 protocol and offsets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::checksum;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const IPV6_HEADER_LEN: usize = 40;

/// The L3/L4 facts of an IP packet (the Ethernet payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Info {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Offset of the L4 header from the start of the IP header.
    pub l4_offset: usize,
    /// L4 length (header + payload) as the IP header states it.
    pub l4_len: usize,
    /// A fragment (not the first, or more to come): no L4 checksum to reason about.
    pub fragment: bool,
}

impl L4Info {
    /// Parses an IPv4 or IPv6 header (no IPv6 extension headers: those give `proto` of the
    /// first extension, which callers treat as "not TCP/UDP"). `None` when malformed.
    #[must_use]
    pub fn parse(ip: &[u8]) -> Option<Self> {
        match ip.first()? >> 4 {
            4 => {
                if ip.len() < 20 {
                    return None;
                }
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                if ihl < 20 || total < ihl || total > ip.len() {
                    return None;
                }
                let frag = u16::from_be_bytes([ip[6], ip[7]]);
                Some(L4Info {
                    src: IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
                    dst: IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
                    proto: ip[9],
                    l4_offset: ihl,
                    l4_len: total - ihl,
                    fragment: frag & 0x3fff != 0,
                })
            }
            6 => {
                if ip.len() < IPV6_HEADER_LEN {
                    return None;
                }
                let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                if IPV6_HEADER_LEN + payload > ip.len() {
                    return None;
                }
                let a = |o: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&ip[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(b))
                };
                Some(L4Info {
                    src: a(8),
                    dst: a(24),
                    proto: ip[6],
                    l4_offset: IPV6_HEADER_LEN,
                    l4_len: payload,
                    fragment: false,
                })
            }
            _ => None,
        }
    }

    /// Offset of the checksum field inside the L4 header, for TCP and UDP.
    #[must_use]
    pub fn csum_offset(&self) -> Option<usize> {
        match self.proto {
            PROTO_TCP => Some(16),
            PROTO_UDP => Some(6),
            _ => None,
        }
    }

    /// The pseudo-header sum for this packet's L4 segment.
    #[must_use]
    pub fn pseudo_sum(&self) -> u64 {
        #[allow(clippy::cast_possible_truncation)]
        let len = self.l4_len as u32;
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => checksum::pseudo_v4(s, d, self.proto, len),
            (IpAddr::V6(s), IpAddr::V6(d)) => checksum::pseudo_v6(s, d, self.proto, len),
            _ => 0,
        }
    }
}

/// A flow hash over the inner 5-tuple (or the MACs for non-IP frames): the same flow always
/// gets the same value, so the outer source port and the receiving queue stay stable.
#[must_use]
pub fn flow_hash(frame: &[u8]) -> u32 {
    // FNV-1a over the fields that identify a flow; cheap and good enough to spread ports.
    fn fnv(mut h: u32, bytes: &[u8]) -> u32 {
        for &b in bytes {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h
    }
    let mut h = 0x811c_9dc5;
    let Some(ip) = frame.get(super::ethernet::HEADER_LEN..) else {
        return fnv(h, frame);
    };
    let (addrs, proto_at, l4) = match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 20 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            (&ip[12..20], 9, ip.get(ihl..ihl + 4))
        }
        Some(6) if ip.len() >= IPV6_HEADER_LEN => (&ip[8..40], 6, ip.get(40..44)),
        _ => return fnv(h, &frame[..12.min(frame.len())]),
    };
    h = fnv(h, addrs);
    h = fnv(h, &[ip[proto_at]]);
    if matches!(ip[proto_at], PROTO_TCP | PROTO_UDP) {
        if let Some(ports) = l4 {
            h = fnv(h, ports);
        }
    }
    h ^ (h >> 16)
}
