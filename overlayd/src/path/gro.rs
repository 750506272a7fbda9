//! TCP receive coalescing in user space: consecutive in-order segments of one TCP flow, as
//! UDP_GRO hands them to us (one buffer, many VXLAN segments), become one super-frame that the
//! TAP device takes in a single write with a GSO virtio-net header. The kernel then delivers it
//! to the pod as if its own GRO had merged it.
//!
//! Payloads are not copied: the first segment's headers are rewritten in place and the caller
//! writes `[vnet header, first frame, payload of each later frame]` with one `writev`.
//! The merge rules follow Linux's `tcp_gro_receive`: same addresses, ports, ACK, window,
//! options, flags except PSH/CWR; contiguous sequence numbers; equal sizes except the last; a
//! segment with PSH ends the run, one with CWR starts a new one, and a run whose first segment
//! carries CWR is marked `GSO_ECN` (as `tcp_gro_complete` sets `SKB_GSO_TCP_ECN`).
//!
//! A run may stay open across receives (`plan_open`): a burst the kernel hands over in two
//! reads then still becomes one TAP write.

use std::ops::Range;

use super::tso::{fix_ip_header, tcp_field as field, tcp_pseudo, TcpLayout};
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
    let flags = frame[t + field::FLAGS];
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
    let tcp = &frame[t..layout.end];
    let seeded = tcp[field::CHECKSUM] == checksum::fold(pseudo).to_be_bytes();
    if !seeded && checksum::fold(checksum::sum(&frame[t..layout.end], pseudo)) != 0xffff {
        return None;
    }
    Some(SegInfo {
        layout,
        seq: u32::from_be_bytes(tcp[field::SEQ].try_into().ok()?),
        flags,
        payload_len,
    })
}

/// IPv4 header fields that must match within a run (offsets in the IPv4 header).
mod ipv4_field {
    use std::ops::Range;
    pub const TOS: usize = 1;
    /// Flags and fragment offset, TTL, protocol.
    pub const FLAGS_TTL_PROTO: Range<usize> = 6..10;
    pub const ADDRESSES: Range<usize> = 12..20;
}

/// IPv6 header fields that must match within a run (offsets in the IPv6 header).
mod ipv6_field {
    use std::ops::Range;
    /// Version, traffic class, flow label.
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    /// Next header, hop limit, source and destination addresses.
    pub const NEXT_HOP_ADDRESSES: Range<usize> = 6..40;
}

/// Whether `b` may follow `a`'s run: same flow and same headers but for the fields that move
/// (IP length, id and checksum; TCP sequence number, checksum and the PSH/CWR flags).
fn same_flow(a: &[u8], ai: &SegInfo, b: &[u8], bi: &SegInfo) -> bool {
    let (la, lb) = (ai.layout, bi.layout);
    if la.v6 != lb.v6 || la.tcp != lb.tcp || la.payload != lb.payload || a[..14] != b[..14] {
        return false;
    }
    let (ipa, ipb) = (&a[la.ip..la.tcp], &b[lb.ip..lb.tcp]);
    let ip_same = if la.v6 {
        ipa[ipv6_field::VER_TC_FLOW] == ipb[ipv6_field::VER_TC_FLOW]
            && ipa[ipv6_field::NEXT_HOP_ADDRESSES] == ipb[ipv6_field::NEXT_HOP_ADDRESSES]
    } else {
        ipa[ipv4_field::TOS] == ipb[ipv4_field::TOS]
            && ipa[ipv4_field::FLAGS_TTL_PROTO] == ipb[ipv4_field::FLAGS_TTL_PROTO]
            && ipa[ipv4_field::ADDRESSES] == ipb[ipv4_field::ADDRESSES]
    };
    let (ta, tb) = (&a[la.tcp..la.payload], &b[lb.tcp..lb.payload]);
    ip_same
        && ta[field::SRC_PORT] == tb[field::SRC_PORT]
        && ta[field::DST_PORT] == tb[field::DST_PORT]
        && ta[field::ACK] == tb[field::ACK]
        && ta[field::DATA_OFFSET] == tb[field::DATA_OFFSET]
        && (ai.flags ^ bi.flags) & !(TCP_PSH | TCP_CWR) == 0
        && ta[field::WINDOW] == tb[field::WINDOW]
        && ta[field::OPTIONS] == tb[field::OPTIONS]
}

/// A run being built: its first frame's facts and what the run adds up to so far.
#[derive(Debug, Clone, Copy)]
struct OpenRun {
    /// Index of the first frame in the `frames` slice of the current call.
    first: usize,
    head: SegInfo,
    count: usize,
    total: usize,
    next_seq: u32,
    last_len: usize,
    flags: u8,
}

impl OpenRun {
    fn start(first: usize, head: SegInfo) -> Self {
        OpenRun {
            first,
            head,
            count: 1,
            total: head.payload_len,
            next_seq: head
                .seq
                .wrapping_add(u32::try_from(head.payload_len).unwrap_or(0)),
            last_len: head.payload_len,
            flags: head.flags,
        }
    }

    /// Whether any later segment could still join (no PSH, every segment full-size so far,
    /// room left).
    fn may_grow(&self) -> bool {
        self.flags & TCP_PSH == 0
            && self.last_len == self.head.payload_len
            && self.count < MAX_RUN
            && self.head.layout.payload + self.total - self.head.layout.ip < MAX_IP_LEN
    }

    /// Adds `b` (facts `bi`) if it continues the run; `head` is the run's first frame.
    fn try_extend(&mut self, head: &[u8], b: &[u8], bi: &SegInfo) -> bool {
        let mss = self.head.payload_len;
        // CWR must reach the receiver at the head of a run (Linux GRO flushes on it).
        if !self.may_grow()
            || bi.flags & TCP_CWR != 0
            || bi.seq != self.next_seq
            || bi.payload_len > mss
            || self.head.layout.payload + self.total + bi.payload_len - self.head.layout.ip
                > MAX_IP_LEN
            || !same_flow(head, &self.head, b, bi)
        {
            return false;
        }
        self.total += bi.payload_len;
        self.next_seq = self
            .next_seq
            .wrapping_add(u32::try_from(bi.payload_len).unwrap_or(0));
        self.last_len = bi.payload_len;
        self.flags |= bi.flags & TCP_PSH;
        self.count += 1;
        true
    }

    /// Rewrites the head of a multi-frame run in place (IP length and checksum, TCP flags,
    /// checksum seed for the whole run) and says how to write it.
    fn finish(&self, buf: &mut [u8], frames: &[InnerFrame]) -> Run {
        let head = &frames[self.first];
        let l = self.head.layout;
        let mut vnet_hdr = head.vnet;
        if self.count > 1 {
            let base = head.range.start;
            let thl = l.payload - l.tcp;
            let frame = &mut buf[base..base + l.payload];
            fix_ip_header(&mut frame[l.ip..l.tcp], l.v6, thl + self.total);
            let seed = checksum::fold(tcp_pseudo(&frame[l.ip..l.tcp], l.v6, thl + self.total));
            let tcp = &mut frame[l.tcp..];
            tcp[field::FLAGS] = self.flags;
            tcp[field::CHECKSUM].copy_from_slice(&seed.to_be_bytes());
            let mut gso_type = if l.v6 {
                vnet::GSO_TCPV6
            } else {
                vnet::GSO_TCPV4
            };
            if self.head.flags & TCP_CWR != 0 {
                gso_type |= vnet::GSO_ECN;
            }
            #[allow(clippy::cast_possible_truncation)]
            {
                vnet_hdr = vnet::Header {
                    flags: vnet::F_NEEDS_CSUM,
                    gso_type,
                    hdr_len: l.payload as u16,
                    gso_size: self.head.payload_len as u16,
                    csum_start: l.tcp as u16,
                    csum_offset: 16,
                };
            }
        }
        Run {
            first: self.first,
            count: self.count,
            vnet: vnet_hdr,
            payload_offset: l.payload,
        }
    }
}

/// Plans runs over the frames of one receive batch (or, with `plan_open`, over consecutive
/// batches).
#[derive(Default)]
pub struct Coalescer {
    runs: Vec<Run>,
    /// A run left open by the last `plan_open`: its frames come first in the next call.
    open: Option<OpenRun>,
}

impl Coalescer {
    #[must_use]
    pub fn with_capacity(n: usize) -> Self {
        Coalescer {
            runs: Vec::with_capacity(n),
            open: None,
        }
    }

    /// Groups `frames` (ranges of `buf`) into runs and rewrites the head of every multi-frame
    /// run in place (IP length and checksum, TCP flags, checksum seed for the whole run).
    pub fn plan(&mut self, buf: &mut [u8], frames: &[InnerFrame]) -> &[Run] {
        self.open = None;
        self.plan_open(buf, frames, false)
    }

    /// As `plan`, but the last run is left open when a later frame could still join it: it is
    /// not returned and its head is not rewritten. `open_first` then says where it starts; the
    /// caller keeps `frames[open_first..]` (and their bytes) and passes them first, followed by
    /// the next receive's frames, to the next call, or ends it with `close`.
    pub fn plan_open(&mut self, buf: &mut [u8], frames: &[InnerFrame], keep_open: bool) -> &[Run] {
        self.runs.clear();
        let mut cur = self
            .open
            .take()
            .filter(|o| o.first == 0 && o.count <= frames.len());
        let mut i = cur.map_or(0, |o| o.count);
        while i < frames.len() {
            let f = &frames[i];
            let info = seg_info(&buf[f.range.clone()], &f.vnet);
            if let Some(o) = cur.as_mut() {
                let head = frames[o.first].range.clone();
                if info.is_some_and(|bi| o.try_extend(&buf[head], &buf[f.range.clone()], &bi)) {
                    i += 1;
                    continue;
                }
                let run = o.finish(buf, frames);
                self.runs.push(run);
                cur = None;
            }
            match info {
                Some(hi) => cur = Some(OpenRun::start(i, hi)),
                None => self.runs.push(Run {
                    first: i,
                    count: 1,
                    vnet: f.vnet,
                    payload_offset: 0,
                }),
            }
            i += 1;
        }
        if let Some(o) = cur {
            if keep_open && o.may_grow() {
                self.open = Some(o);
            } else {
                let run = o.finish(buf, frames);
                self.runs.push(run);
            }
        }
        &self.runs
    }

    /// Where the run left open by the last `plan_open` starts in its `frames`.
    #[must_use]
    pub fn open_first(&self) -> Option<usize> {
        self.open.map(|o| o.first)
    }

    /// The caller dropped the frames before the open run: it now starts at index 0.
    pub fn open_moved_to_front(&mut self) {
        if let Some(o) = self.open.as_mut() {
            o.first = 0;
        }
    }

    /// Ends the open run (the next read would block, or its bytes must be reused): rewrites
    /// its head and says how to write it. `frames` is the slice of the last `plan_open` (or
    /// the same frames moved to the front, after `open_moved_to_front`).
    pub fn close(&mut self, buf: &mut [u8], frames: &[InnerFrame]) -> Option<Run> {
        let o = self.open.take()?;
        (o.first + o.count <= frames.len()).then(|| o.finish(buf, frames))
    }
}
