//! TCP segmentation in user space: a TSO super-frame from the TAP device (one Ethernet + IP +
//! TCP header, up to 64 KiB of payload, `gso_size` = MSS) becomes MSS-sized VXLAN segments.
//!
//! The payload is never copied: `Segmenter` writes each segment's headers (VXLAN + Ethernet +
//! IP + TCP, with length, IP id/checksum, sequence number, flags and TCP checksum fixed) into its
//! own arena and returns the payload as a range of the input, so the caller can hand
//! `[header_i, payload_i]` pairs to one `sendmsg` with UDP_SEGMENT.

use std::ops::Range;

use super::DropReason;
use crate::wire::{checksum, ethernet, ip, vnet, vxlan};

/// Largest header stack per segment: VXLAN 8 + Ethernet 14 + IP 60 + TCP 60.
pub const MAX_HEADERS: usize = vxlan::HEADER_LEN + ethernet::HEADER_LEN + 60 + 60;
/// The most segments one super-frame may produce: 64 KiB at Linux's smallest MSS (88) is 745.
/// The TAP device does not cap segments per super-frame, so a flow with a tiny MSS must still
/// split (a lower cap would drop every frame of it and stall the flow).
pub const MAX_SEGMENTS: usize = 1024;

/// TCP header fields (offsets in the TCP header).
pub(crate) mod tcp_field {
    use std::ops::{Range, RangeFrom};
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    /// Data offset (high nibble) and reserved bits.
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const OPTIONS: RangeFrom<usize> = 20..;
}

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// One output segment: its headers in the arena, its payload in the input frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub headers: Range<usize>,
    pub payload: Range<usize>,
}

/// Reusable scratch space for splitting; allocation happens once, at construction.
pub struct Segmenter {
    arena: Vec<u8>,
    segments: Vec<Segment>,
}

impl Default for Segmenter {
    fn default() -> Self {
        Segmenter {
            arena: vec![0; MAX_HEADERS * MAX_SEGMENTS],
            segments: Vec::with_capacity(MAX_SEGMENTS),
        }
    }
}

/// The parsed header layout of a TCP frame (Ethernet at 0).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpLayout {
    pub v6: bool,
    /// Offset of the IP header (always 14).
    pub ip: usize,
    /// Offset of the TCP header.
    pub tcp: usize,
    /// Offset of the payload (end of headers).
    pub payload: usize,
    /// End of the IP packet (frames may carry Ethernet padding after it).
    pub end: usize,
}

impl TcpLayout {
    /// Parses Ethernet + IPv4/IPv6 (no extension headers) + TCP. `None` when the frame is not
    /// plain TCP or its lengths do not add up.
    pub(crate) fn parse(frame: &[u8]) -> Option<Self> {
        let eth = ethernet::Frame::new_checked(frame)?;
        let v6 = match eth.ethertype() {
            ethernet::ETHERTYPE_IPV4 => false,
            ethernet::ETHERTYPE_IPV6 => true,
            _ => return None,
        };
        let l4 = ip::L4Info::parse(eth.payload())?;
        if l4.proto != ip::PROTO_TCP || l4.fragment {
            return None;
        }
        let tcp = ethernet::HEADER_LEN + l4.l4_offset;
        let thl = usize::from(*frame.get(tcp + 12)? >> 4) * 4;
        let end = tcp + l4.l4_len;
        if thl < 20 || tcp + thl > end {
            return None;
        }
        Some(TcpLayout {
            v6,
            ip: ethernet::HEADER_LEN,
            tcp,
            payload: tcp + thl,
            end,
        })
    }
}

/// Writes the IP length field (total length for IPv4, payload length for IPv6) and, for IPv4,
/// the header checksum, for an IP packet whose L4 part is `l4_len` bytes.
pub(crate) fn fix_ip_header(ip_hdr: &mut [u8], v6: bool, l4_len: usize) {
    if v6 {
        #[allow(clippy::cast_possible_truncation)]
        ip_hdr[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        #[allow(clippy::cast_possible_truncation)]
        let total = (ip_hdr.len() + l4_len) as u16;
        ip_hdr[2..4].copy_from_slice(&total.to_be_bytes());
        ip_hdr[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::finish(checksum::sum(ip_hdr, 0));
        ip_hdr[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// The pseudo-header sum of a TCP segment of `l4_len` bytes in the IP header `ip_hdr`.
pub(crate) fn tcp_pseudo(ip_hdr: &[u8], v6: bool, l4_len: usize) -> u64 {
    #[allow(clippy::cast_possible_truncation)]
    let len = l4_len as u32;
    if v6 {
        let addr = |o: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&ip_hdr[o..o + 16]);
            std::net::Ipv6Addr::from(b)
        };
        checksum::pseudo_v6(addr(8), addr(24), ip::PROTO_TCP, len)
    } else {
        let addr = |o: usize| {
            std::net::Ipv4Addr::new(ip_hdr[o], ip_hdr[o + 1], ip_hdr[o + 2], ip_hdr[o + 3])
        };
        checksum::pseudo_v4(addr(12), addr(16), ip::PROTO_TCP, len)
    }
}

impl Segmenter {
    /// Splits `frame` (Ethernet onward, as read after the virtio-net header) according to
    /// `hdr` (GSO TCPv4/TCPv6) and returns the segments. Each segment's headers start with
    /// `vx_header`.
    pub fn split(
        &mut self,
        frame: &[u8],
        hdr: &vnet::Header,
        vx_header: &[u8; vxlan::HEADER_LEN],
    ) -> Result<&[Segment], DropReason> {
        self.split_in_place(frame, hdr, vx_header)?;
        Ok(&self.segments)
    }

    /// `split` without borrowing the result, for callers that then read `segments()` and
    /// `headers()` together.
    pub fn split_in_place(
        &mut self,
        frame: &[u8],
        hdr: &vnet::Header,
        vx_header: &[u8; vxlan::HEADER_LEN],
    ) -> Result<(), DropReason> {
        self.segments.clear();
        let l = TcpLayout::parse(frame).ok_or(DropReason::TxBadOffload)?;
        let want_v6 = hdr.gso_type & !vnet::GSO_ECN == vnet::GSO_TCPV6;
        if l.v6 != want_v6 {
            return Err(DropReason::TxBadOffload);
        }
        let mss = usize::from(hdr.gso_size);
        let payload_len = l.end - l.payload;
        if mss == 0 || payload_len == 0 || payload_len.div_ceil(mss) > MAX_SEGMENTS {
            return Err(DropReason::TxBadOffload);
        }
        let hlen = l.payload;
        let seq0 = u32::from_be_bytes([
            frame[l.tcp + 4],
            frame[l.tcp + 5],
            frame[l.tcp + 6],
            frame[l.tcp + 7],
        ]);
        let id0 = u16::from_be_bytes([frame[l.ip + 4], frame[l.ip + 5]]);
        let flags0 = frame[l.tcp + 13];
        let count = payload_len.div_ceil(mss);
        for i in 0..count {
            let start = l.payload + i * mss;
            let end = (start + mss).min(l.end);
            let seg_len = end - start;
            let at = i * MAX_HEADERS;
            let h = &mut self.arena[at..at + vxlan::HEADER_LEN + hlen];
            h[..vxlan::HEADER_LEN].copy_from_slice(vx_header);
            let inner = &mut h[vxlan::HEADER_LEN..];
            inner.copy_from_slice(&frame[..hlen]);
            let thl = hlen - l.tcp;
            if !l.v6 {
                #[allow(clippy::cast_possible_truncation)]
                let id = id0.wrapping_add(i as u16);
                inner[l.ip + 4..l.ip + 6].copy_from_slice(&id.to_be_bytes());
            }
            fix_ip_header(&mut inner[l.ip..l.tcp], l.v6, thl + seg_len);
            #[allow(clippy::cast_possible_truncation)]
            let seq = seq0.wrapping_add((i * mss) as u32);
            let tcp = &mut inner[l.tcp..];
            tcp[4..8].copy_from_slice(&seq.to_be_bytes());
            let mut flags = flags0;
            if i + 1 < count {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                flags &= !TCP_CWR;
            }
            tcp[13] = flags;
            tcp[16..18].copy_from_slice(&[0, 0]);
            let pseudo = tcp_pseudo(&frame[l.ip..l.tcp], l.v6, thl + seg_len);
            let sum = checksum::sum(&frame[start..end], checksum::sum(tcp, pseudo));
            tcp[16..18].copy_from_slice(&checksum::finish(sum).to_be_bytes());
            self.segments.push(Segment {
                headers: at..at + vxlan::HEADER_LEN + hlen,
                payload: start..end,
            });
        }
        Ok(())
    }

    /// The segments of the last successful split.
    #[must_use]
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The header bytes of a segment returned by `split`.
    #[must_use]
    pub fn headers(&self, seg: &Segment) -> &[u8] {
        &self.arena[seg.headers.clone()]
    }
}
