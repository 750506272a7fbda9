//! One worker thread per TAP queue: reads frames from its queue and sends them as VXLAN over
//! its own UDP sockets; receives VXLAN on its own SO_REUSEPORT socket and writes inner frames
//! to its queue. The hot loop takes no lock and allocates nothing: the FDB is a snapshot loaded
//! once per batch, buffers and scratch space are this worker's own, and so are its counters.
//!
//! With offloads (the normal mode) a TSO super-frame from the TAP is split into MSS segments
//! and sent with one `sendmsg` + UDP_SEGMENT; a UDP_GRO run of received segments is coalesced
//! back into super-frames (also across two receives) and written with one `writev`. Every per-packet decision is made in
//! `path` (`plan::Planner` on the send side): this file only reads, submits what the plan says
//! and waits. A full send buffer (EAGAIN) is backpressure: the worker stops reading the TAP and
//! waits for POLLOUT, keeping what it holds.
//!
//! Dual-stack: one TAP serves both families. With an IPv6 underlay each queue also has an
//! IPv6 receive socket and an IPv6 send pool; inner IPv6 to a peer's IPv6 VtepMAC leaves over
//! the peer's IPv6 VTEP (as Flannel's flannel-v6.1 device), everything else over IPv4 (as
//! flannel.1). Both receive sockets feed the same checks and the same TAP queue. An IPv6-only
//! node (`EnableIPv4: false`) has no IPv4 sockets at all: its queues carry only the IPv6 ones,
//! and a frame for an IPv4 VTEP is counted as unreachable (`plan::Planner` sees the empty pool).

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fdb::{FdbHandle, PeerCounters};
use crate::path::event::PathEvent;
use crate::path::gro::{Coalescer, InnerFrame, Run, MAX_RUN};
use crate::path::plan::{self, PlainStep, Planner, SegmentedSend, Shape, Step, Transmit};
use crate::path::{self, ecn, pmtu, DecapConfig, DropReason};
use crate::stats::{OffloadMode, WorkerStats};
use crate::sys::{self, tap::TapQueue, udp};
use crate::wire::{ethernet, vnet, vxlan};

/// Frames handled per readiness event before polling again (keeps both directions fair).
const BATCH: usize = 64;
/// A 64 KiB super-frame or GRO run plus headroom for the header swap.
const BUF_LEN: usize = 65_536 + 256;
/// Egress arena: at least one maximal frame plus many small ones.
const TXBUF_LEN: usize = 4 * BUF_LEN;
/// Datagrams one recvmmsg takes in plain mode (each may be a 64 KiB GSO burst from a kernel
/// peer, pitfall 2 in fastpath-facts, so every slot is `BUF_LEN`).
const RECV_SLOTS: usize = 8;
/// How long one poll sleeps at most, so the heartbeat and the stop flag are seen.
const POLL_MS: i32 = 100;

/// Sums packets per peer across a batch, so a shared peer counter is touched once per run of
/// packets to the same peer instead of once per packet.
#[derive(Default)]
struct PeerTally<'a> {
    peer: Option<&'a PeerCounters>,
    packets: u64,
    bytes: u64,
}

impl<'a> PeerTally<'a> {
    #[inline]
    fn add(&mut self, peer: &'a PeerCounters, packets: u64, bytes: usize, rx: bool) {
        if !self.peer.is_some_and(|p| std::ptr::eq(p, peer)) {
            self.flush(rx);
            self.peer = Some(peer);
        }
        self.packets += packets;
        self.bytes += bytes as u64;
    }

    fn flush(&mut self, rx: bool) {
        if let Some(p) = self.peer.take() {
            if rx {
                p.add_rx(self.packets, self.bytes);
                p.touch();
            } else {
                p.add_tx(self.packets, self.bytes);
            }
        }
        self.packets = 0;
        self.bytes = 0;
    }
}

/// Which offloads this worker may use; decided by probing at start.
#[derive(Debug, Clone, Copy)]
pub struct Offloads {
    /// TUNSETOFFLOAD took CSUM|TSO4|TSO6: the TAP hands us super-frames.
    pub tso: bool,
    /// UDP_GRO is on for the receive socket.
    pub gro: bool,
}

/// The descriptors of one queue: kept by the supervisor across worker restarts, and what a
/// handover passes to the next overlayd.
#[derive(Debug)]
pub struct QueueIo {
    pub tap: TapQueue,
    /// The IPv4 receive socket (`None` on an IPv6-only node, which binds no IPv4 port).
    pub rx: Option<UdpSocket>,
    /// IPv4 send sockets (empty without an IPv4 underlay); the inner flow hash picks one, so
    /// its port is the outer source port.
    pub tx_pool: Vec<UdpSocket>,
    /// The IPv6 receive socket (IPv6 underlay only; `None` on an IPv4-only node).
    pub rx6: Option<UdpSocket>,
    /// The IPv6 send sockets, bound to the IPv6 underlay address (empty without one).
    pub tx_pool6: Vec<UdpSocket>,
    /// `gro` covers every receive socket of the queue; `tso` the TAP queue.
    pub offloads: Offloads,
}

/// The descriptors of the receive sockets in use (`socks`, IPv4 first), and how many there
/// are: a poll set takes `fds[..n]`; the slots past `n` hold `pad`.
fn rx_fds<'a>(
    socks: impl Iterator<Item = &'a UdpSocket>,
    pad: BorrowedFd<'a>,
) -> ([BorrowedFd<'a>; 2], usize) {
    let mut fds = [pad; 2];
    let mut n = 0;
    for (slot, s) in fds.iter_mut().zip(socks) {
        *slot = s.as_fd();
        n += 1;
    }
    (fds, n)
}

impl QueueIo {
    /// The receive sockets in use, IPv4 first: one or both families. Index `k` of this
    /// matches slot `k` of [`QueueIo::rx_fds`].
    pub fn rx_sockets(&self) -> impl Iterator<Item = &UdpSocket> {
        self.rx.iter().chain(self.rx6.as_ref())
    }

    /// [`rx_fds`] of this queue (padded with the TAP queue's descriptor).
    fn rx_fds(&self) -> ([BorrowedFd<'_>; 2], usize) {
        rx_fds(self.rx_sockets(), self.tap.file().as_fd())
    }

    /// The send pool toward VTEPs of this family.
    #[must_use]
    pub fn pool(&self, v6: bool) -> &[UdpSocket] {
        if v6 {
            &self.tx_pool6
        } else {
            &self.tx_pool
        }
    }
}

pub struct Worker {
    pub id: usize,
    pub io: Arc<QueueIo>,
    pub fdb: FdbHandle,
    pub decap: DecapConfig,
    pub stats: Arc<WorkerStats>,
    pub stop: Arc<AtomicBool>,
    /// Becomes readable (EOF) when the supervisor stops the workers, so every worker leaves
    /// its poll at once: a worker that has exited leaves frames in its queue that are lost
    /// when the queue closes, so all must stop reading at the same moment, just before the
    /// descriptors close (or are handed over).
    pub wake: Arc<std::os::unix::net::UnixStream>,
    /// `--busy-poll-us`: how long to keep checking for work before sleeping (zero: never).
    pub busy_poll: std::time::Duration,
}

/// A plain datagram waiting in `txbuf` for the next sendmmsg.
struct Pending {
    range: Range<usize>,
    /// The VTEP, IPv4 or IPv6: `sock` indexes the pool of that family.
    dst: SocketAddr,
    sock: usize,
    /// Outer TOS byte or traffic class (the ECN field copied from the inner packet).
    tos: u8,
    /// Index of its peer's counters in the batch's `peers`.
    peer: usize,
}

/// ICMP errors per second (and burst) one worker writes for path MTU discovery.
const PMTU_ICMP_PER_SEC: u32 = 200;
const PMTU_ICMP_BURST: u32 = 50;

/// Path MTU discovery state of one worker: only touched when a send fails with EMSGSIZE.
struct Pmtu {
    /// The ICMP error frame being built.
    out: Box<[u8; pmtu::MAX_FRAME]>,
    limit: pmtu::RateLimit,
    origin: std::time::Instant,
    /// Ask the kernel for the path MTU toward an IPv4 / IPv6 peer; opened on first use.
    probe: Option<UdpSocket>,
    probe6: Option<UdpSocket>,
}

/// Send-side scratch space, allocated once.
struct TxScratch {
    /// Egress arena: room for several frames read from the TAP before one send.
    txbuf: Vec<u8>,
    pending: Vec<Pending>,
    planner: Planner,
    /// False once the kernel said it cannot segment for this worker's sockets (EIO).
    gso_send: bool,
    pmtu: Pmtu,
}

/// Receive-side scratch space, allocated once.
struct RxScratch {
    /// Two halves of `half_len` bytes, each one receive: one UDP_GRO run, or up to
    /// `RECV_SLOTS` datagrams of `BUF_LEN` bytes with recvmmsg (plain mode). A run left open
    /// keeps its bytes in one half while the next receive fills the other.
    buf: Vec<u8>,
    half_len: usize,
    /// The half the next receive fills.
    half: usize,
    metas: [udp::RecvMeta; RECV_SLOTS],
    coalescer: Coalescer,
    /// The frames of the last receive, after those of the run left open.
    frames: Vec<InnerFrame>,
}

impl Worker {
    /// Runs until `stop` is set. Returns only on a fatal poll error.
    pub fn run(self) -> io::Result<()> {
        let io = &*self.io;
        let mut tx = TxScratch {
            txbuf: vec![0u8; TXBUF_LEN],
            pending: Vec::with_capacity(BATCH),
            planner: Planner::with_pools(self.decap.vni, io.tx_pool.len(), io.tx_pool6.len()),
            gso_send: true,
            pmtu: Pmtu {
                out: Box::new([0; pmtu::MAX_FRAME]),
                limit: pmtu::RateLimit::new(PMTU_ICMP_PER_SEC, PMTU_ICMP_BURST),
                origin: std::time::Instant::now(),
                probe: None,
                probe6: None,
            },
        };
        let half_len = if io.offloads.gro {
            BUF_LEN
        } else {
            RECV_SLOTS * BUF_LEN
        };
        let mut rx = RxScratch {
            buf: vec![0u8; 2 * half_len],
            half_len,
            half: 0,
            metas: [udp::RecvMeta::EMPTY; RECV_SLOTS],
            coalescer: Coalescer::with_capacity(MAX_RUN),
            frames: Vec::with_capacity(2 * MAX_RUN + RECV_SLOTS),
        };
        // Any send socket tells whether this kernel segments UDP (an IPv6-only node has
        // only IPv6 ones).
        tx.gso_send = io
            .tx_pool
            .first()
            .or(io.tx_pool6.first())
            .is_some_and(udp::probe_segmentation);
        if !tx.gso_send {
            tracing::warn!(
                queue = self.id,
                "this kernel has no UDP_SEGMENT (Linux 4.18+): sending one datagram per segment"
            );
        }
        self.stats
            .set_mode(if io.offloads.tso && io.offloads.gro && tx.gso_send {
                OffloadMode::Offload
            } else {
                OffloadMode::Plain
            });
        let mut busy = false;
        while !self.stop.load(Ordering::Relaxed) {
            // The supervisor and /healthz read this: a worker that stops beating is down.
            self.stats.beat();
            #[cfg(debug_assertions)]
            fault::maybe_panic(self.id, &self.stats);
            let ready = self.wait_readable(if busy { self.busy_poll } else { Duration::ZERO })?;
            busy = ready[0] || ready[2] || ready[3];
            if ready[1] {
                continue;
            }
            if ready[0] {
                self.egress_batch(&mut tx, &mut rx);
            }
            for (sock, ready) in io.rx_sockets().zip(&ready[2..]) {
                if *ready {
                    self.ingress_batch(&mut rx, sock);
                }
            }
        }
        Ok(())
    }

    /// Sleeps until the TAP queue (`[0]`), the wake-up descriptor (`[1]`) or a receive socket
    /// (`[2..]`, in the order of [`QueueIo::rx_sockets`]) is readable, at most `POLL_MS`.
    fn wait_readable(&self, spin: Duration) -> io::Result<[bool; 4]> {
        let io = &*self.io;
        let (rx, n) = io.rx_fds();
        let fds = [io.tap.file().as_fd(), self.wake.as_fd(), rx[0], rx[1]];
        wait_ready(&fds[..2 + n], spin)
    }

    /// Backpressure: send socket `sock` (the one that said EAGAIN) is full. Waits for its
    /// POLLOUT without reading the TAP, so the frame in hand and everything queued behind it
    /// stay where they are; serves the receive sockets meanwhile. False when the worker must
    /// stop instead.
    fn wait_writable(&self, sock: &UdpSocket, rx: &mut RxScratch) -> bool {
        self.stats.count_event(PathEvent::TxSendBufferFull, 1);
        let io = &*self.io;
        let (rx_fds, n) = io.rx_fds();
        let inputs = [self.wake.as_fd(), rx_fds[0], rx_fds[1]];
        let inputs = &inputs[..1 + n];
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            self.stats.beat();
            match udp::poll_writable(sock, inputs, POLL_MS) {
                Ok((true, _)) => return true,
                Ok((false, [true, ..])) | Err(_) => return false,
                Ok((false, [false, ready @ ..])) => {
                    for (s, ready) in io.rx_sockets().zip(ready) {
                        if ready {
                            self.ingress_batch(rx, s);
                        }
                    }
                }
            }
        }
    }

    /// Reads up to `BATCH` frames from the TAP, plans each and sends it. Plain frames
    /// accumulate in `txbuf` and leave with one sendmmsg per socket; a super-frame flushes them
    /// first (per-flow order) and goes out on its own. False when the worker must stop.
    fn egress_batch(&self, tx: &mut TxScratch, rx: &mut RxScratch) -> bool {
        let fdb = self.fdb.load();
        let mut peers: [Option<&PeerCounters>; BATCH] = [None; BATCH];
        let mut tally = PeerTally::default();
        let mut off = 0;
        tx.pending.clear();
        let go = 'batch: {
            for i in 0..BATCH {
                if tx.txbuf.len() - off < BUF_LEN {
                    if !self.flush_pending(tx, rx, &peers, &mut tally) {
                        break 'batch false;
                    }
                    off = 0;
                }
                let Ok(n) = self.io.tap.file().read(&mut tx.txbuf[off..off + BUF_LEN]) else {
                    break;
                };
                let plan = match tx.planner.plan(&mut tx.txbuf[off..off + n], &fdb) {
                    Ok(p) => p,
                    Err(reason) => {
                        self.stats.count_drop(reason);
                        continue;
                    }
                };
                match plan.shape {
                    Shape::Plain { ref bytes } => {
                        peers[i] = Some(&plan.peer.counters);
                        tx.pending.push(Pending {
                            range: off + bytes.start..off + bytes.end,
                            dst: plan.destination,
                            sock: plan.socket,
                            tos: plan.tos,
                            peer: i,
                        });
                        // Keep slots 8-aligned so headers stay aligned.
                        off = (off + n + 7) & !7;
                    }
                    Shape::Segmented {
                        segments,
                        segment_size,
                    } => {
                        if !self.flush_pending(tx, rx, &peers, &mut tally)
                            || !self.send_segmented(
                                tx,
                                rx,
                                off..off + n,
                                &plan,
                                (segments, segment_size),
                                &mut tally,
                            )
                        {
                            break 'batch false;
                        }
                    }
                }
            }
            self.flush_pending(tx, rx, &peers, &mut tally)
        };
        tally.flush(false);
        go
    }

    /// Sends the queued plain datagrams: one sendmmsg per socket, counted once they left.
    /// A full socket buffer waits (`wait_writable`); false when the worker must stop then.
    fn flush_pending<'f>(
        &self,
        tx: &mut TxScratch,
        rx: &mut RxScratch,
        peers: &[Option<&'f PeerCounters>; BATCH],
        tally: &mut PeerTally<'f>,
    ) -> bool {
        let TxScratch {
            txbuf,
            pending,
            pmtu,
            ..
        } = tx;
        // Group by socket (family, then index) so interleaved flows still share a sendmmsg.
        // A flow always maps to one socket and `range.start` grows with arrival, so this keeps
        // per-flow order (and sort_unstable does not allocate).
        pending.sort_unstable_by_key(|p| (p.dst.is_ipv6(), p.sock, p.range.start));
        let mut i = 0;
        let mut go = true;
        'all: while i < pending.len() {
            let (v6, sock) = (pending[i].dst.is_ipv6(), pending[i].sock);
            let socket = &self.io.pool(v6)[sock];
            let mut msgs: [(SocketAddr, &[u8], u8); udp::MAX_BATCH] =
                [(udp::RecvMeta::EMPTY.from, &[], 0); udp::MAX_BATCH];
            let mut k = 0;
            while i + k < pending.len()
                && k < udp::MAX_BATCH
                && (pending[i + k].dst.is_ipv6(), pending[i + k].sock) == (v6, sock)
            {
                let p = &pending[i + k];
                msgs[k] = (p.dst, &txbuf[p.range.clone()], p.tos);
                k += 1;
            }
            let mut done = 0;
            while done < k {
                match udp::send_batch(socket, &msgs[done..k]) {
                    Ok(sent) if sent > 0 => {
                        let mut bytes = 0;
                        for p in &pending[i + done..i + done + sent] {
                            let b = p.range.len() - vxlan::HEADER_LEN;
                            bytes += b;
                            if let Some(c) = peers[p.peer] {
                                tally.add(c, 1, b, false);
                            }
                        }
                        self.stats.tx_many(sent as u64, bytes);
                        done += sent;
                    }
                    Ok(_) => {
                        self.stats.count_drop(DropReason::TxSendError);
                        done += 1;
                    }
                    Err(e) => match plan::plain_step(e.raw_os_error().unwrap_or(0)) {
                        PlainStep::Retry => {}
                        PlainStep::WaitWritable => {
                            if !self.wait_writable(socket, rx) {
                                for _ in i + done..pending.len() {
                                    self.stats.count_drop(DropReason::TxWouldBlock);
                                }
                                go = false;
                                break 'all;
                            }
                        }
                        PlainStep::TooBig => {
                            // Over the path MTU (the datagram is VXLAN header + inner frame):
                            // a packet whose sender allows fragmentation leaves in a fragmented
                            // outer packet, as with kernel vxlan; any other gets an ICMP error.
                            // (Only inner IPv4 may be fragmented, and it always leaves over
                            // IPv4; IPv6 never fragments on the way.)
                            let (dst, bytes, tos) = msgs[done];
                            let inner = &bytes[vxlan::HEADER_LEN..];
                            if let (true, SocketAddr::V4(dst4)) =
                                (pmtu::outer_may_fragment(inner), dst)
                            {
                                match udp::send_fragmentable(socket, dst4, bytes, tos) {
                                    Ok(_) => {
                                        self.stats.count_event(PathEvent::OuterFragmented, 1);
                                        self.stats.tx_many(1, inner.len());
                                        if let Some(c) = peers[pending[i + done].peer] {
                                            tally.add(c, 1, inner.len(), false);
                                        }
                                    }
                                    Err(e) => self.stats.count_drop(
                                        plan::SendError::from_errno(e.raw_os_error().unwrap_or(0))
                                            .drop_reason(),
                                    ),
                                }
                            } else {
                                self.answer_too_big(pmtu, inner, &[], dst);
                            }
                            done += 1;
                        }
                        PlainStep::Dropped(reason) => {
                            self.stats.count_drop(reason);
                            done += 1;
                        }
                    },
                }
            }
            i += k;
        }
        pending.clear();
        go
    }

    /// Sends the segments of the super-frame in `txbuf[slot]` (planned last by `tx.planner`):
    /// as few UDP_SEGMENT sends as the datagram limit allows, or one datagram per segment
    /// where the kernel refuses to segment. False when the worker must stop.
    fn send_segmented<'f>(
        &self,
        tx: &mut TxScratch,
        rx: &mut RxScratch,
        slot: Range<usize>,
        plan: &Transmit<'f>,
        (segments, segment_size): (usize, usize),
        tally: &mut PeerTally<'f>,
    ) -> bool {
        let dst = plan.destination;
        let mut send = SegmentedSend::to(segments, segment_size, &dst);
        let sock = &self.io.pool(dst.is_ipv6())[plan.socket];
        let frame = &tx.txbuf[slot];
        let mut iov = [IoSlice::new(&[]); 2 * plan::MAX_SEGMENTS_PER_SEND];
        while let Some(chunk) = send.next_chunk(tx.gso_send) {
            let mut bytes = 0;
            for (k, i) in chunk.segments.clone().enumerate() {
                let (headers, payload) = tx.planner.segment(i);
                bytes += headers.len() - vxlan::HEADER_LEN + payload.len();
                iov[2 * k] = IoSlice::new(headers);
                iov[2 * k + 1] = IoSlice::new(&frame[payload]);
            }
            let iov = &iov[..2 * chunk.segments.len()];
            let result =
                udp::send_gathered(sock, dst, iov, chunk.segment_size.unwrap_or(0), plan.tos);
            let result = result
                .map(|_| ())
                .map_err(|e| e.raw_os_error().unwrap_or(0));
            match send.on_result(&chunk, result) {
                Step::Sent { packets } => {
                    self.stats.tx_many(packets as u64, bytes);
                    tally.add(&plan.peer.counters, packets as u64, bytes, false);
                }
                Step::Retry => {}
                Step::WaitWritable => {
                    if !self.wait_writable(sock, rx) {
                        for _ in 0..send.abandon() {
                            self.stats.count_drop(DropReason::TxWouldBlock);
                        }
                        return false;
                    }
                }
                Step::Unsegment => self.stats.count_event(PathEvent::SegmentRefused, 1),
                Step::DisableSegmentation => {
                    tracing::warn!(queue = self.id, "UDP_SEGMENT failed with EIO (the device cannot segment); sending one datagram per segment from now on");
                    tx.gso_send = false;
                    self.stats.set_mode(OffloadMode::Plain);
                }
                Step::TooBig { first, .. } => {
                    // The segments do not fit the path MTU: answer for the first of them, as
                    // Linux does for a GSO skb; the sender's stack lowers its MSS and resends.
                    let (headers, payload) = tx.planner.segment(first);
                    self.answer_too_big(
                        &mut tx.pmtu,
                        &headers[vxlan::HEADER_LEN..],
                        &frame[payload],
                        dst,
                    );
                }
                Step::Dropped { reason, .. } => self.stats.count_drop(reason),
            }
        }
        true
    }

    /// Receives up to `BATCH` times and writes the inner frames to the TAP, coalesced into
    /// super-frames. The last run stays open from one receive to the next (its bytes in one
    /// half of `buf`, the next receive in the other), so a burst the kernel hands over in two
    /// reads still becomes one TAP write; it is written when the next read would block, when
    /// it cannot grow, or at the end of the batch.
    /// `sock` is either receive socket (IPv4 or IPv6): the same checks apply.
    fn ingress_batch(&self, s: &mut RxScratch, sock: &UdpSocket) {
        let fdb = self.fdb.load();
        let mut tally = PeerTally::default();
        for _ in 0..BATCH {
            let base = s.half * s.half_len;
            let got = if self.io.offloads.gro {
                udp::recv_gro_any(sock, &mut s.buf[base..base + BUF_LEN]).map(|m| {
                    s.metas[0] = m;
                    1
                })
            } else {
                udp::recv_batch(
                    sock,
                    &mut s.buf[base..base + s.half_len],
                    BUF_LEN,
                    &mut s.metas,
                )
            };
            let Ok(got) = got else {
                break;
            };
            for m in 0..got {
                let meta = s.metas[m];
                self.decap_datagram(s, base + m * BUF_LEN, meta, &fdb, &mut tally);
            }
            self.write_runs(s, base);
        }
        if let Some(run) = s.coalescer.close(&mut s.buf, &s.frames) {
            self.write_run(&s.buf, &s.frames, &run);
        }
        s.frames.clear();
        tally.flush(true);
    }

    /// Checks the datagram (or UDP_GRO run of datagrams) at `buf[at..]` and appends its inner
    /// frames to `s.frames`.
    fn decap_datagram<'f>(
        &self,
        s: &mut RxScratch,
        start: usize,
        meta: udp::RecvMeta,
        fdb: &'f crate::fdb::Fdb,
        tally: &mut PeerTally<'f>,
    ) {
        let udp::RecvMeta {
            len: n,
            from,
            gso,
            tos,
        } = meta;
        let seg = gso.map_or(n, usize::from).max(1);
        let end_all = start + n;
        let mut at = start;
        while at < end_all {
            let end = (at + seg).min(end_all);
            match path::decap(&s.buf[at..end], from.ip(), fdb, &self.decap) {
                Ok(d) => {
                    if tos & ecn::ECT_1 != 0 {
                        // Outer ECT(1) or CE: carry it inside (RFC 6040).
                        match ecn::decapsulate(&mut s.buf[at + vxlan::HEADER_LEN..end], tos) {
                            Ok(ecn::Decap::Unchanged) => {}
                            Ok(ecn::Decap::SetCe) => {
                                self.stats.count_event(PathEvent::EcnCeSet, 1);
                            }
                            Ok(ecn::Decap::SetEct1) => {
                                self.stats.count_event(PathEvent::EcnEct1Set, 1);
                            }
                            Err(reason) => {
                                self.stats.count_drop(reason);
                                at = end;
                                continue;
                            }
                        }
                    }
                    if let Some(p) = d.peer {
                        tally.add(p, 1, end - at - vxlan::HEADER_LEN, true);
                    }
                    s.frames.push(InnerFrame {
                        range: at + vxlan::HEADER_LEN..end,
                        vnet: d.vnet,
                    });
                }
                Err(reason) => self.stats.count_drop(reason),
            }
            at = end;
        }
    }

    /// Answers an inner frame (`head` followed by `tail`, Ethernet onward) that the kernel
    /// refused with EMSGSIZE toward `dst`: learns the path MTU from the kernel and writes an
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" into the TAP, rate-limited. The
    /// MTU it reports is the path MTU toward `dst` less the overhead of `dst`'s family.
    fn answer_too_big(&self, pm: &mut Pmtu, head: &[u8], tail: &[u8], dst: SocketAddr) {
        self.stats.count_drop(DropReason::TxTooBig);
        #[allow(clippy::cast_possible_truncation)]
        let now_ms = pm.origin.elapsed().as_millis() as u64;
        if !pm.limit.allow(now_ms) {
            self.stats.count_event(PathEvent::IcmpRateLimited, 1);
            return;
        }
        let v6 = dst.is_ipv6();
        let probe = if v6 { &mut pm.probe6 } else { &mut pm.probe };
        if probe.is_none() {
            *probe = udp::mtu_probe(v6).ok();
        }
        let Some(path_mtu) = probe.as_ref().and_then(|p| udp::path_mtu(p, dst).ok()) else {
            return;
        };
        let mtu = pmtu::inner_mtu(path_mtu, v6);
        let Some(n) = pmtu::too_big(&mut pm.out, head, tail, mtu) else {
            return;
        };
        let vnet_bytes = vnet::Header::default().to_bytes();
        let iov = [IoSlice::new(&vnet_bytes), IoSlice::new(&pm.out[..n])];
        if matches!(self.io.tap.file().write_vectored(&iov), Ok(w) if w == vnet::LEN + n) {
            let inner_v6 = pm.out[12..14] == ethernet::ETHERTYPE_IPV6.to_be_bytes();
            self.stats.count_event(
                if inner_v6 {
                    PathEvent::Icmpv6PacketTooBig
                } else {
                    PathEvent::IcmpFragNeeded
                },
                1,
            );
        } else {
            self.stats.count_drop(DropReason::RxTapError);
        }
    }

    /// Coalesces the decapsulated frames in `s.frames` (the last receive went to the half at
    /// `base`) and writes each finished run to the TAP; keeps the last run open when it may
    /// still grow and lies wholly in that half (the next receive fills the other half).
    fn write_runs(&self, s: &mut RxScratch, base: usize) {
        let runs = s.coalescer.plan_open(&mut s.buf, &s.frames, true);
        for run in runs {
            self.write_run(&s.buf, &s.frames, run);
        }
        match s.coalescer.open_first() {
            Some(first) if (base..base + s.half_len).contains(&s.frames[first].range.start) => {
                s.frames.drain(..first);
                s.coalescer.open_moved_to_front();
                s.half ^= 1;
            }
            Some(_) => {
                // It began in the other half, which the next receive overwrites: write it now.
                if let Some(run) = s.coalescer.close(&mut s.buf, &s.frames) {
                    self.write_run(&s.buf, &s.frames, &run);
                }
                s.frames.clear();
            }
            None => s.frames.clear(),
        }
    }

    /// Writes one run (`run.count` frames of `frames`, in `buf`) to the TAP with one writev.
    fn write_run(&self, buf: &[u8], frames: &[InnerFrame], run: &Run) {
        let vnet_bytes = run.vnet.to_bytes();
        let mut iov = [IoSlice::new(&[]); 1 + MAX_RUN];
        let first = &frames[run.first];
        iov[0] = IoSlice::new(&vnet_bytes);
        iov[1] = IoSlice::new(&buf[first.range.clone()]);
        let mut len = first.range.len();
        for (k, f) in frames[run.first + 1..run.first + run.count]
            .iter()
            .enumerate()
        {
            let payload = &buf[f.range.start + run.payload_offset..f.range.end];
            len += payload.len();
            iov[2 + k] = IoSlice::new(payload);
        }
        match self.io.tap.file().write_vectored(&iov[..1 + run.count]) {
            // A TAP write takes the whole frame or fails; anything else is an error.
            Ok(w) if w == vnet::LEN + len => self.stats.rx_many(run.count as u64, len),
            // EIO while the device is down (teardown, flap): counted, not logged.
            Ok(_) | Err(_) => self.stats.count_drop(DropReason::RxTapError),
        }
    }
}

/// Waits until one of `fds` is readable (at most 100 ms, so the caller sees `stop`). With a
/// `spin` budget it first checks them without sleeping (a zero-timeout poll, which consumes
/// nothing) until one is ready or the budget is spent: the answer to what the worker just
/// forwarded (a ping reply, a request's response) often arrives within tens of microseconds,
/// and catching it awake saves the sleep and the wake-up on the latency path. The caller passes
/// a budget only after a pass that moved packets, so an idle worker never spins.
fn wait_ready(fds: &[BorrowedFd<'_>], spin: Duration) -> io::Result<[bool; 4]> {
    if !spin.is_zero() {
        let start = Instant::now();
        loop {
            let ready = sys::poll_readable(fds, 0)?;
            if ready.iter().any(|r| *r) {
                return Ok(ready);
            }
            if start.elapsed() >= spin {
                break;
            }
            std::hint::spin_loop();
        }
    }
    sys::poll_readable(fds, POLL_MS)
}

/// A test-only fault (debug builds only, never in a release binary): with
/// `OVERLAYD_TEST_WORKER_PANIC=N` the first worker whose queue has handled N packets panics,
/// once; `NxK` makes that queue's worker panic K times in a row (the first after N packets,
/// the others as soon as they are restarted), which holds the queue down through the
/// supervisor's backoff. The integration tests use it to prove restart, counting and health.
#[cfg(debug_assertions)]
mod fault {
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use crate::stats::WorkerStats;

    pub const ENV: &str = "OVERLAYD_TEST_WORKER_PANIC";

    struct Plan {
        after: u64,
        remaining: AtomicU32,
        /// The queue that took the first panic (`usize::MAX` before).
        queue: AtomicUsize,
    }

    fn plan() -> Option<&'static Plan> {
        static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
        PLAN.get_or_init(|| {
            let v = std::env::var(ENV).ok()?;
            let (after, times) = match v.split_once('x') {
                Some((a, k)) => (a.trim().parse().ok()?, k.trim().parse().ok()?),
                None => (v.trim().parse().ok()?, 1),
            };
            Some(Plan {
                after,
                remaining: AtomicU32::new(times),
                queue: AtomicUsize::new(usize::MAX),
            })
        })
        .as_ref()
    }

    pub fn maybe_panic(id: usize, stats: &WorkerStats) {
        let Some(p) = plan() else { return };
        if p.remaining.load(Ordering::Relaxed) == 0 {
            return;
        }
        let due = match p.queue.load(Ordering::Relaxed) {
            usize::MAX => {
                let handled = stats.tx_packets.load(Ordering::Relaxed)
                    + stats.rx_packets.load(Ordering::Relaxed);
                handled >= p.after
                    && p.queue
                        .compare_exchange(usize::MAX, id, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
            }
            q => q == id,
        };
        if due
            && p.remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                .is_ok()
        {
            panic!("injected worker fault ({ENV}) on queue {id}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The poll set of receive sockets: IPv4 only, IPv6 only (an IPv6-only node: its socket
    /// takes the first slot), both (IPv4 first); slots past the count hold the pad.
    #[test]
    fn rx_fds_lists_the_receive_sockets_in_use() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx6 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let pad = UdpSocket::bind("127.0.0.1:0").unwrap();
        let raw = |(fds, n): ([BorrowedFd<'_>; 2], usize)| (fds.map(|f| f.as_raw_fd()), n);
        let of = |a: Option<&UdpSocket>, b: Option<&UdpSocket>| {
            raw(rx_fds(a.into_iter().chain(b), pad.as_fd()))
        };
        let (r4, r6, p) = (rx.as_raw_fd(), rx6.as_raw_fd(), pad.as_raw_fd());
        assert_eq!(of(Some(&rx), None), ([r4, p], 1));
        assert_eq!(of(None, Some(&rx6)), ([r6, p], 1));
        assert_eq!(of(Some(&rx), Some(&rx6)), ([r4, r6], 2));
        assert_eq!(of(None, None), ([p, p], 0));
    }
}
