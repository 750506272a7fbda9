//! The egress planner: turns one frame read from the TAP device into the sends that carry it,
//! and says what to do after each send. Owns every per-packet decision of the send side: plain
//! frame or TSO super-frame, the in-place header swap, segment size, chunking to the UDP
//! datagram limit, which socket (so which outer source port), the outer ECN bits, and the
//! reaction to each errno.
//!
//! It never touches a socket or a file descriptor, never allocates after construction and never
//! logs: the worker reads, calls `Planner::plan`, submits what `SegmentedSend::next_chunk`
//! describes and feeds the result back to `SegmentedSend::on_result`.

use std::net::SocketAddr;
use std::ops::Range;

use super::tso::Segmenter;
use super::{ecn, encap, DropReason};
use crate::fdb::{Fdb, FdbEntry};
use crate::wire::{vnet, vxlan};

/// Largest UDP payload one send may carry over IPv4 (65,535 - 20 IPv4 - 8 UDP); more is
/// EMSGSIZE.
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Largest UDP payload one send may carry over IPv6: the IPv6 payload length field (65,535)
/// counts the UDP header but not the 40-byte IPv6 header, so 65,535 - 8 (no jumbograms).
/// Measured on loopback (gso_max_size 65,536): a send above 65,474 bytes (IPv4: 65,494) is
/// still taken but segmented in software before the device, so arrives in several GRO runs.
pub const MAX_UDP_PAYLOAD_V6: usize = 65_527;

/// The UDP payload limit of one send to `destination`.
#[must_use]
pub fn max_udp_payload(destination: &SocketAddr) -> usize {
    match destination {
        SocketAddr::V4(_) => MAX_UDP_PAYLOAD,
        SocketAddr::V6(_) => MAX_UDP_PAYLOAD_V6,
    }
}
/// Most datagrams one UDP_SEGMENT send may carry (the kernel's `UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS_PER_SEND: usize = 64;
/// Where the VXLAN header goes in a TAP read: it ends where the virtio-net header (10 bytes)
/// ends, so a plain frame is re-framed in place: `[vnet 10][frame]` -> `[2 spare][vxlan 8][frame]`.
pub const VX_AT: usize = vnet::LEN - vxlan::HEADER_LEN;

/// How one frame leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// One datagram: the VXLAN header was written in place, send `slot[bytes]`.
    Plain { bytes: Range<usize> },
    /// A TSO super-frame split into `segments` datagrams of `segment_size` bytes (VXLAN header
    /// included; the last may be shorter). Drive the sends with `SegmentedSend`.
    Segmented {
        segments: usize,
        segment_size: usize,
    },
}

/// The plan for one frame read from the TAP device.
#[derive(Debug, Clone)]
pub struct Transmit<'a> {
    pub peer: &'a FdbEntry,
    /// The peer's VTEP (outer destination): IPv6 for an inner IPv6 frame to a dual-stack
    /// peer's IPv6 VtepMAC, else IPv4.
    pub destination: SocketAddr,
    /// Index of the send socket in the pool of the destination's family (IPv4 or IPv6): its
    /// port is the outer source port, picked by the inner flow hash as kernel vxlan does, so
    /// ECMP and RSS spread flows and a flow keeps its order.
    pub socket: usize,
    /// Outer TOS byte (IPv4) or traffic class (IPv6): the ECN field of the inner packet
    /// (RFC 6040 normal mode).
    pub tos: u8,
    pub shape: Shape,
}

/// Plans frames read from the TAP device; holds the segment headers of the last super-frame.
pub struct Planner {
    segmenter: Segmenter,
    vx_header: [u8; vxlan::HEADER_LEN],
    /// IPv4 send sockets; 0: no IPv4 underlay (IPv6-only), frames for IPv4 VTEPs are
    /// unreachable.
    sockets: usize,
    /// IPv6 send sockets; 0: no IPv6 underlay, frames for IPv6 VTEPs are unreachable.
    sockets_v6: usize,
}

impl Planner {
    /// A planner for VNI `vni` over `sockets` send sockets per underlay family.
    #[must_use]
    pub fn new(vni: u32, sockets: usize) -> Self {
        Self::with_pools(vni, sockets, sockets)
    }

    /// A planner over `sockets` IPv4 send sockets and `sockets_v6` IPv6 ones (none: this
    /// node has no underlay of that family, as an IPv4-only or an IPv6-only node).
    #[must_use]
    pub fn with_pools(vni: u32, sockets: usize, sockets_v6: usize) -> Self {
        Planner {
            segmenter: Segmenter::default(),
            vx_header: vxlan::header(vni),
            sockets,
            sockets_v6,
        }
    }

    /// Plans `slot`, one TAP read (`[virtio-net header][frame]`). A plain frame is re-framed in
    /// place (its checksum completed if the kernel asked); a super-frame is split, its segment
    /// headers kept here until the next call (`segment`).
    pub fn plan<'f>(&mut self, slot: &mut [u8], fdb: &'f Fdb) -> Result<Transmit<'f>, DropReason> {
        let hdr = vnet::Header::parse(slot).ok_or(DropReason::TxShort)?;
        let route = encap(&mut slot[vnet::LEN..], &hdr, fdb)?;
        let pool = if route.destination.is_ipv6() {
            self.sockets_v6
        } else {
            self.sockets
        };
        if pool == 0 {
            // A VTEP of a family this node has no underlay (no send socket) of: an IPv6 VTEP
            // on an IPv4-only node, an IPv4 one on an IPv6-only node.
            return Err(DropReason::TxUnreachable);
        }
        let socket = route.flow_hash as usize % pool;
        let tos = ecn::outer_tos(&slot[vnet::LEN..]);
        let shape = if hdr.gso_type & !vnet::GSO_ECN == vnet::GSO_NONE {
            slot[VX_AT..vnet::LEN].copy_from_slice(&self.vx_header);
            Shape::Plain {
                bytes: VX_AT..slot.len(),
            }
        } else {
            self.segmenter
                .split_in_place(&slot[vnet::LEN..], &hdr, &self.vx_header)?;
            let segs = self.segmenter.segments();
            Shape::Segmented {
                segments: segs.len(),
                segment_size: segs[0].headers.len() + segs[0].payload.len(),
            }
        };
        Ok(Transmit {
            peer: route.peer,
            destination: route.destination,
            socket,
            tos,
            shape,
        })
    }

    /// Segment `i` of the last planned super-frame: its headers (VXLAN onward) and its payload
    /// as a range of the slot passed to `plan`.
    #[must_use]
    pub fn segment(&self, i: usize) -> (&[u8], Range<usize>) {
        let seg = &self.segmenter.segments()[i];
        (
            self.segmenter.headers(seg),
            seg.payload.start + vnet::LEN..seg.payload.end + vnet::LEN,
        )
    }
}

/// How many segments of `segment_size` bytes one UDP_SEGMENT send over IPv4 may carry.
#[must_use]
pub fn segments_per_send(segment_size: usize) -> usize {
    segments_per_send_within(segment_size, MAX_UDP_PAYLOAD)
}

/// How many segments of `segment_size` bytes one UDP_SEGMENT send may carry when one send holds
/// at most `max_payload` bytes (`max_udp_payload` of the destination).
#[must_use]
pub fn segments_per_send_within(segment_size: usize, max_payload: usize) -> usize {
    (max_payload / segment_size.max(1)).clamp(1, MAX_SEGMENTS_PER_SEND)
}

/// What a failed send means (from its errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// EINTR: try again at once.
    Interrupted,
    /// EAGAIN: the socket buffer is full. Backpressure, not loss.
    WouldBlock,
    /// EMSGSIZE: over the path MTU (DF is set) or over the datagram limit.
    TooBig,
    /// ECONNREFUSED, EHOSTUNREACH, ENETUNREACH: the peer cannot be reached now.
    Unreachable,
    /// EINVAL: the kernel refused this send's UDP_SEGMENT request (before 6.14 that also
    /// means "a segment exceeds the path MTU"); says nothing about the next send.
    SegmentRefused,
    /// EIO: the device cannot segment (no checksum offload): UDP_SEGMENT will never work here.
    SegmentUnsupported,
    /// Anything else.
    Other,
}

impl SendError {
    #[must_use]
    pub fn from_errno(errno: i32) -> Self {
        match errno {
            libc::EINTR => Self::Interrupted,
            libc::EAGAIN => Self::WouldBlock,
            libc::EMSGSIZE => Self::TooBig,
            libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH => Self::Unreachable,
            libc::EINVAL => Self::SegmentRefused,
            libc::EIO => Self::SegmentUnsupported,
            _ => Self::Other,
        }
    }

    /// The drop reason when the datagrams of this send are given up.
    #[must_use]
    pub fn drop_reason(self) -> DropReason {
        match self {
            Self::WouldBlock => DropReason::TxWouldBlock,
            Self::TooBig => DropReason::TxTooBig,
            Self::Unreachable => DropReason::TxUnreachable,
            Self::Interrupted | Self::SegmentRefused | Self::SegmentUnsupported | Self::Other => {
                DropReason::TxSendError
            }
        }
    }
}

/// One send of a segmented frame: segments `segments` of the plan, cut by the kernel into
/// `segment_size`-byte datagrams (`None`: one datagram, no UDP_SEGMENT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub segments: Range<usize>,
    pub segment_size: Option<u16>,
}

/// What to do after one send of a segmented frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `packets` datagrams left: count them now (never before the send).
    Sent { packets: usize },
    /// Send the same chunk again at once (EINTR).
    Retry,
    /// The socket buffer is full: keep this chunk and the rest, stop reading the TAP, wait for
    /// POLLOUT on this socket, then ask `next_chunk` again. Nothing is lost.
    WaitWritable,
    /// The kernel refused to segment this chunk (EINVAL): it goes again one datagram per
    /// segment; later chunks are segmented as before.
    Unsegment,
    /// The kernel cannot segment on this socket (EIO): turn UDP_SEGMENT off for the worker (log
    /// once, export the mode), then ask `next_chunk` again.
    DisableSegmentation,
    /// Over the path MTU (EMSGSIZE): answer the sender for segment `first` (ICMP), as Linux does
    /// for a GSO packet; the `dropped` datagrams left of the frame are not sent.
    TooBig { first: usize, dropped: usize },
    /// This send's `packets` datagrams are lost for `reason`; go on with the next chunk.
    Dropped { reason: DropReason, packets: usize },
}

/// The send state of one segmented frame: which segments are out, which must go one by one.
#[derive(Debug, Clone)]
pub struct SegmentedSend {
    segments: usize,
    segment_size: usize,
    /// Most bytes one send may carry (`max_udp_payload` of the destination).
    max_payload: usize,
    /// First segment not sent yet.
    next: usize,
    /// Segments before this index go one datagram each (a chunk the kernel refused to segment).
    single_until: usize,
}

impl SegmentedSend {
    /// The sends of `segments` segments of `segment_size` bytes to an IPv4 VTEP.
    #[must_use]
    pub fn new(segments: usize, segment_size: usize) -> Self {
        Self::within(segments, segment_size, MAX_UDP_PAYLOAD)
    }

    /// The sends of a planned super-frame to `destination` (its family sets the send limit).
    #[must_use]
    pub fn to(segments: usize, segment_size: usize, destination: &SocketAddr) -> Self {
        Self::within(segments, segment_size, max_udp_payload(destination))
    }

    fn within(segments: usize, segment_size: usize, max_payload: usize) -> Self {
        SegmentedSend {
            segments,
            segment_size,
            max_payload,
            next: 0,
            single_until: 0,
        }
    }

    /// The next send, or `None` when the frame is done. `segmenting` is false once the worker
    /// turned UDP_SEGMENT off.
    #[must_use]
    pub fn next_chunk(&self, segmenting: bool) -> Option<Chunk> {
        if self.next >= self.segments {
            return None;
        }
        let per_send = if segmenting && self.next >= self.single_until {
            segments_per_send_within(self.segment_size, self.max_payload)
        } else {
            1
        };
        let end = (self.next + per_send).min(self.segments);
        #[allow(clippy::cast_possible_truncation)]
        let segment_size = (end - self.next > 1).then_some(self.segment_size as u16);
        Some(Chunk {
            segments: self.next..end,
            segment_size,
        })
    }

    /// Segments not sent yet.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.segments - self.next
    }

    /// Takes the result of sending `chunk` (the errno on failure) and says what to do.
    pub fn on_result(&mut self, chunk: &Chunk, result: Result<(), i32>) -> Step {
        let packets = chunk.segments.len();
        let Err(errno) = result else {
            self.next = chunk.segments.end;
            return Step::Sent { packets };
        };
        let e = SendError::from_errno(errno);
        match e {
            SendError::Interrupted => Step::Retry,
            SendError::WouldBlock => Step::WaitWritable,
            SendError::SegmentRefused if chunk.segment_size.is_some() => {
                self.single_until = chunk.segments.end;
                Step::Unsegment
            }
            SendError::SegmentUnsupported if chunk.segment_size.is_some() => {
                Step::DisableSegmentation
            }
            SendError::TooBig => {
                let first = chunk.segments.start;
                let dropped = self.remaining();
                self.next = self.segments;
                Step::TooBig { first, dropped }
            }
            _ => {
                self.next = chunk.segments.end;
                Step::Dropped {
                    reason: e.drop_reason(),
                    packets,
                }
            }
        }
    }

    /// Gives up what is left (the worker stops while waiting for POLLOUT): the number of
    /// datagrams dropped.
    pub fn abandon(&mut self) -> usize {
        let n = self.remaining();
        self.next = self.segments;
        n
    }
}

/// What to do after a plain datagram's send failed with `errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainStep {
    Retry,
    WaitWritable,
    /// Over the path MTU: fragment the outer packet if the inner sender allows it
    /// (`pmtu::outer_may_fragment`), else answer with ICMP.
    TooBig,
    Dropped(DropReason),
}

#[must_use]
pub fn plain_step(errno: i32) -> PlainStep {
    match SendError::from_errno(errno) {
        SendError::Interrupted => PlainStep::Retry,
        SendError::WouldBlock => PlainStep::WaitWritable,
        SendError::TooBig => PlainStep::TooBig,
        e => PlainStep::Dropped(e.drop_reason()),
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
