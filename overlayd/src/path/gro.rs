//! TCP receive coalescing in user space: consecutive in-order segments of one TCP flow, as
//! UDP_GRO hands them to us (one buffer, many VXLAN segments), become one super-frame that the
//! TAP device takes in a single write with a GSO virtio-net header. The kernel then delivers it
//! to the pod as if its own GRO had merged it.
//!
//! Payloads are not copied: the first segment's headers are rewritten in place and the caller
//! writes `[vnet header, first frame, payload of each later frame]` with one `writev`.
//! The merge rules follow Linux's `tcp_gro_receive`: same addresses, ports, ACK, options,
//! flags except PSH/CWR; contiguous sequence numbers; equal sizes except the last; a segment
//! with PSH ends the run.

use std::ops::Range;

use super::tso::{fix_ip_header, tcp_pseudo, TcpLayout};
use crate::wire::{checksum, vnet};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;
/// Biggest IP packet a super-frame may carry.
const MAX_IP_LEN: usize = 65_535;
/// Most frames in one run (the kernel's UDP_GRO gives at most 64 segments per read).
pub const MAX_RUN: usize = 64;

/// An inner frame that passed `decap`: where it is in the buffer and its own virtio-net header.
#[derive(Debug, Clone)]
pub struct InnerFrame {
    pub range: Range<usize>,
    pub vnet: vnet::Header,
}

/// What to write to the TAP device: `count` frames starting at `first` in the input slice.
/// With `count == 1` it is the frame as is; otherwise the first frame's headers now describe the
/// whole run and later frames contribute only their payload (from `payload_offset` on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub first: usize,
    pub count: usize,
    pub vnet: vnet::Header,
    pub payload_offset: usize,
}

/// Facts of a TCP segment that decide whether it joins a run.
#[derive(Debug, Clone, Copy)]
struct SegInfo {
    layout: TcpLayout,
    seq: u32,
    flags: u8,
    payload_len: usize,
}

fn seg_info(frame: &[u8], vnet_hdr: &vnet::Header) -> Option<SegInfo> {
    // Only frames that arrived as single segments, not already-GSO bursts.
    if vnet_hdr.gso_type != vnet::GSO_NONE {
        return None;
    }
    let layout = TcpLayout::parse(frame)?;
    if layout.end != frame.len() {
        return None; // Ethernet padding: leave it to the kernel.
    }
    if !layout.v6 && frame[layout.ip] != 0x45 {
        return None; // IPv4 options
    }
    let t = layout.tcp;
    let flags = frame[t + 13];
    if flags & (TCP_SYN | TCP_RST | TCP_URG | TCP_FIN) != 0 {
        return None;
    }
    let payload_len = layout.end - layout.payload;
    if payload_len == 0 {
        return None;
    }
    // The checksum must be either verified here or the pseudo-header seed of a local
    // kernel peer (CHECKSUM_PARTIAL, which the kernel itself trusts). Anything else goes
    // in as a plain frame and the kernel verifies (and drops) it.
    let ip_hdr = &frame[layout.ip..t];
    let pseudo = tcp_pseudo(ip_hdr, layout.v6, layout.end - t);
    let field = u16::from_be_bytes([frame[t + 16], frame[t + 17]]);
    let seeded = field == checksum::fold(pseudo);
    if !seeded && checksum::fold(checksum::sum(&frame[t..layout.end], pseudo)) != 0xffff {
        return None;
    }
    Some(SegInfo {
        layout,
        seq: u32::from_be_bytes([frame[t + 4], frame[t + 5], frame[t + 6], frame[t + 7]]),
        flags,
        payload_len,
    })
}

/// Whether `b` may follow `a`'s run: same flow and same headers but for the fields that move.
fn same_flow(a: &[u8], ai: &SegInfo, b: &[u8], bi: &SegInfo) -> bool {
    let (la, lb) = (ai.layout, bi.layout);
    if la.v6 != lb.v6 || la.tcp != lb.tcp || la.payload != lb.payload || a[..14] != b[..14] {
        return false;
    }
    let ip_same = if la.v6 {
        a[14..18] == b[14..18] && a[20..54] == b[20..54]
    } else {
        // TOS, flags/fragment, TTL, protocol, addresses.
        a[15] == b[15] && a[20..24] == b[20..24] && a[26..34] == b[26..34]
    };
    let (ta, tb) = (la.tcp, lb.tcp);
    ip_same
        && a[ta..ta + 4] == b[tb..tb + 4] // ports
        && a[ta + 8..ta + 13] == b[tb + 8..tb + 13] // ack, data offset
        && (ai.flags ^ bi.flags) & !(TCP_PSH | TCP_CWR) == 0
        && a[ta + 20..la.payload] == b[tb + 20..lb.payload] // options
}

/// Plans runs over the frames of one receive batch.
#[derive(Default)]
pub struct Coalescer {
    runs: Vec<Run>,
}

impl Coalescer {
    #[must_use]
    pub fn with_capacity(n: usize) -> Self {
        Coalescer {
            runs: Vec::with_capacity(n),
        }
    }

    /// Groups `frames` (ranges of `buf`) into runs and rewrites the head of every multi-frame
    /// run in place (IP length and checksum, TCP flags, checksum seed for the whole run).
    pub fn plan(&mut self, buf: &mut [u8], frames: &[InnerFrame]) -> &[Run] {
        self.runs.clear();
        let mut i = 0;
        while i < frames.len() {
            let head = &frames[i];
            let Some(hi) = seg_info(&buf[head.range.clone()], &head.vnet) else {
                self.runs.push(Run {
                    first: i,
                    count: 1,
                    vnet: head.vnet,
                    payload_offset: 0,
                });
                i += 1;
                continue;
            };
            let mss = hi.payload_len;
            let mut total = hi.payload_len;
            let mut next_seq = hi.seq.wrapping_add(u32::try_from(mss).unwrap_or(0));
            let mut last_len = mss;
            let mut flags = hi.flags;
            let mut count = 1;
            while i + count < frames.len() && flags & TCP_PSH == 0 && last_len == mss {
                let f = &frames[i + count];
                let b = &buf[f.range.clone()];
                let Some(bi) = seg_info(b, &f.vnet) else {
                    break;
                };
                // CWR must reach the receiver on its own segment (Linux GRO flushes on it).
                if bi.flags & TCP_CWR != 0
                    || count == MAX_RUN
                    || bi.seq != next_seq
                    || bi.payload_len > mss
                    || hi.layout.payload + total + bi.payload_len - hi.layout.ip > MAX_IP_LEN
                    || !same_flow(&buf[head.range.clone()], &hi, b, &bi)
                {
                    break;
                }
                total += bi.payload_len;
                next_seq = next_seq.wrapping_add(u32::try_from(bi.payload_len).unwrap_or(0));
                last_len = bi.payload_len;
                flags |= bi.flags & TCP_PSH;
                count += 1;
            }
            let mut vnet_hdr = head.vnet;
            if count > 1 {
                let l = hi.layout;
                let base = head.range.start;
                let thl = l.payload - l.tcp;
                let frame = &mut buf[base..base + l.payload];
                fix_ip_header(&mut frame[l.ip..l.tcp], l.v6, thl + total);
                frame[l.tcp + 13] = flags;
                let seed = checksum::fold(tcp_pseudo(&frame[l.ip..l.tcp], l.v6, thl + total));
                frame[l.tcp + 16..l.tcp + 18].copy_from_slice(&seed.to_be_bytes());
                #[allow(clippy::cast_possible_truncation)]
                {
                    vnet_hdr = vnet::Header {
                        flags: vnet::F_NEEDS_CSUM,
                        gso_type: if l.v6 {
                            vnet::GSO_TCPV6
                        } else {
                            vnet::GSO_TCPV4
                        },
                        hdr_len: l.payload as u16,
                        gso_size: mss as u16,
                        csum_start: l.tcp as u16,
                        csum_offset: 16,
                    };
                }
            }
            self.runs.push(Run {
                first: i,
                count,
                vnet: vnet_hdr,
                payload_offset: hi.layout.payload,
            });
            i += count;
        }
        &self.runs
    }
}
