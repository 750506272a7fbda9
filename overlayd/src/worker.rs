//! One worker thread per TAP queue: reads frames from its queue and sends them as VXLAN over
//! its own UDP sockets; receives VXLAN on its own SO_REUSEPORT socket and writes inner frames
//! to its queue. The hot loop takes no lock and allocates nothing: the FDB is a snapshot loaded
//! once per batch, buffers and scratch space are this worker's own, and so are its counters.
//!
//! With offloads (the normal mode) a TSO super-frame from the TAP is split into MSS segments
//! and sent with one `sendmsg` + UDP_SEGMENT; a UDP_GRO run of received segments is coalesced
//! back into super-frames and written with one `writev`. When the kernel refuses UDP_SEGMENT
//! (EINVAL/EIO), the worker falls back to one datagram per segment, says so once in the log and
//! exports the mode.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fdb::{FdbHandle, PeerCounters};
use crate::path::event::PathEvent;
use crate::path::gro::{Coalescer, InnerFrame, MAX_RUN};
use crate::path::tso::Segmenter;
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
/// The VXLAN header (8 bytes) ends where the virtio-net header (10 bytes) ends, so a plain
/// frame is re-framed in place: `[vnet 10][frame]` <-> `[2 spare][vxlan 8][frame]`.
const VX_AT: usize = vnet::LEN - vxlan::HEADER_LEN;
/// Largest UDP payload one send may carry (65535 - 8 UDP - 20 IPv4).
const MAX_UDP_PAYLOAD: usize = 65_507;

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
    pub rx: UdpSocket,
    /// Send sockets; the inner flow hash picks one, so its port is the outer source port.
    pub tx_pool: Vec<UdpSocket>,
    pub offloads: Offloads,
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
    range: std::ops::Range<usize>,
    dst: SocketAddrV4,
    sock: usize,
    /// Outer TOS byte (the ECN field copied from the inner packet).
    tos: u8,
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
    /// Asks the kernel for the path MTU toward a peer; opened on first use.
    probe: Option<UdpSocket>,
}

/// Per-worker scratch space, allocated once.
struct Scratch {
    /// Receive buffer: one datagram or one UDP_GRO run.
    buf: Vec<u8>,
    /// Egress arena: room for several frames read from the TAP before one send.
    txbuf: Vec<u8>,
    pending: Vec<Pending>,
    segmenter: Segmenter,
    coalescer: Coalescer,
    frames: Vec<InnerFrame>,
    /// False once the kernel refused UDP_SEGMENT.
    gso_send: bool,
    pmtu: Pmtu,
}

impl Worker {
    /// Runs until `stop` is set. Returns only on a fatal poll error.
    pub fn run(self) -> io::Result<()> {
        let mut s = Scratch {
            buf: vec![0u8; BUF_LEN],
            txbuf: vec![0u8; TXBUF_LEN],
            pending: Vec::with_capacity(BATCH),
            segmenter: Segmenter::default(),
            coalescer: Coalescer::with_capacity(MAX_RUN),
            frames: Vec::with_capacity(MAX_RUN),
            gso_send: true,
            pmtu: Pmtu {
                out: Box::new([0; pmtu::MAX_FRAME]),
                limit: pmtu::RateLimit::new(PMTU_ICMP_PER_SEC, PMTU_ICMP_BURST),
                origin: std::time::Instant::now(),
                probe: None,
            },
        };
        let io = &*self.io;
        self.stats.set_mode(if io.offloads.tso && io.offloads.gro {
            OffloadMode::Offload
        } else {
            OffloadMode::Plain
        });
        let vx_header = vxlan::header(self.decap.vni);
        let mut busy = false;
        while !self.stop.load(Ordering::Relaxed) {
            // The supervisor and /healthz read this: a worker that stops beating is down.
            self.stats.beat();
            #[cfg(debug_assertions)]
            fault::maybe_panic(self.id, &self.stats);
            let fds = [io.tap.file().as_fd(), io.rx.as_fd(), self.wake.as_fd()];
            let ready = wait_ready(&fds, if busy { self.busy_poll } else { Duration::ZERO })?;
            busy = ready[0] || ready[1];
            if ready[2] {
                continue;
            }
            if ready[0] {
                self.egress_batch(&mut s, &vx_header);
            }
            if ready[1] {
                self.ingress_batch(&mut s);
            }
        }
        Ok(())
    }

    fn egress_batch(&self, s: &mut Scratch, vx_header: &[u8; vxlan::HEADER_LEN]) {
        let fdb = self.fdb.load();
        let mut tally = PeerTally::default();
        // Plain frames accumulate in `txbuf` and leave with one sendmmsg per socket; a
        // super-frame flushes them first (per-flow order) and goes out on its own.
        let mut off = 0;
        s.pending.clear();
        for _ in 0..BATCH {
            if s.txbuf.len() - off < BUF_LEN {
                self.flush_pending(s);
                off = 0;
            }
            let Ok(n) = self.io.tap.file().read(&mut s.txbuf[off..off + BUF_LEN]) else {
                break;
            };
            let slot = &mut s.txbuf[off..off + n];
            let Some(hdr) = vnet::Header::parse(slot) else {
                self.stats.count_drop(DropReason::TxShort);
                continue;
            };
            let t = match path::encap(&mut slot[vnet::LEN..], &hdr, &fdb) {
                Ok(t) => t,
                Err(reason) => {
                    self.stats.count_drop(reason);
                    continue;
                }
            };
            let sock = t.flow_hash as usize % self.io.tx_pool.len();
            let tos = ecn::outer_tos(&slot[vnet::LEN..]);
            if hdr.gso_type & !vnet::GSO_ECN == vnet::GSO_NONE {
                slot[VX_AT..vnet::LEN].copy_from_slice(vx_header);
                s.pending.push(Pending {
                    range: off + VX_AT..off + n,
                    dst: t.peer.vtep,
                    sock,
                    tos,
                });
                self.stats.tx_many(1, n - vnet::LEN);
                tally.add(&t.peer.counters, 1, n - vnet::LEN, false);
                // Keep slots 8-aligned so headers stay aligned.
                off = (off + n + 7) & !7;
                continue;
            }
            self.flush_pending(s);
            match self.send_super_frame(
                s,
                off,
                n,
                &hdr,
                vx_header,
                &self.io.tx_pool[sock],
                t.peer.vtep,
                tos,
            ) {
                Ok(packets) => {
                    self.stats.tx_many(packets, n - vnet::LEN);
                    tally.add(&t.peer.counters, packets, n - vnet::LEN, false);
                }
                Err(_) => self.stats.count_drop(DropReason::TxSendError),
            }
        }
        self.flush_pending(s);
        tally.flush(false);
    }

    /// Sends the queued plain datagrams: one sendmmsg per socket. A datagram
    /// the kernel refuses is counted and skipped.
    fn flush_pending(&self, s: &mut Scratch) {
        // Group by socket so interleaved flows still share a sendmmsg. A flow always maps to
        // one socket and `range.start` grows with arrival, so this keeps per-flow order
        // (and sort_unstable does not allocate).
        s.pending.sort_unstable_by_key(|p| (p.sock, p.range.start));
        let mut i = 0;
        while i < s.pending.len() {
            let sock = s.pending[i].sock;
            let mut msgs: [(SocketAddrV4, &[u8], u8); udp::MAX_BATCH] = [(
                SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
                &[],
                0,
            );
                udp::MAX_BATCH];
            let mut k = 0;
            while i + k < s.pending.len() && k < udp::MAX_BATCH && s.pending[i + k].sock == sock {
                let p = &s.pending[i + k];
                msgs[k] = (p.dst, &s.txbuf[p.range.clone()], p.tos);
                k += 1;
            }
            let mut done = 0;
            while done < k {
                match udp::send_batch(&self.io.tx_pool[sock], &msgs[done..k]) {
                    Ok(sent) if sent > 0 => done += sent,
                    Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                        // Over the path MTU (the datagram is VXLAN header + inner frame): a
                        // packet whose sender allows fragmentation leaves in a fragmented
                        // outer packet, as with kernel vxlan; any other gets an ICMP error.
                        let (dst, bytes, tos) = msgs[done];
                        let inner = &bytes[vxlan::HEADER_LEN..];
                        if pmtu::outer_may_fragment(inner) {
                            match udp::send_fragmentable(&self.io.tx_pool[sock], dst, bytes, tos) {
                                Ok(_) => self.stats.count_event(PathEvent::OuterFragmented, 1),
                                Err(_) => self.stats.count_drop(DropReason::TxSendError),
                            }
                        } else {
                            self.answer_too_big(&mut s.pmtu, inner, &[], dst);
                        }
                        done += 1;
                    }
                    _ => {
                        self.stats.count_drop(DropReason::TxSendError);
                        done += 1;
                    }
                }
            }
            i += k;
        }
        s.pending.clear();
    }

    /// Splits a TSO super-frame and sends its segments: as few UDP_SEGMENT sends as the 64 KiB
    /// datagram limit allows, or one datagram per segment after a fallback. Returns the number
    /// of segments sent.
    #[allow(clippy::too_many_arguments)]
    fn send_super_frame(
        &self,
        s: &mut Scratch,
        off: usize,
        n: usize,
        hdr: &vnet::Header,
        vx_header: &[u8; vxlan::HEADER_LEN],
        sock: &UdpSocket,
        dst: SocketAddrV4,
        tos: u8,
    ) -> io::Result<u64> {
        let frame = &s.txbuf[off + vnet::LEN..off + n];
        if let Err(reason) = s.segmenter.split_in_place(frame, hdr, vx_header) {
            self.stats.count_drop(reason);
            return Ok(0);
        }
        let segs = s.segmenter.segments();
        let seg_size = segs[0].headers.len() + segs[0].payload.len();
        let max_per_send = (MAX_UDP_PAYLOAD / seg_size).clamp(1, 64);
        let mut iov = [IoSlice::new(&[]); 2 * 64];
        let mut sent = 0;
        while sent < segs.len() {
            // Re-read per chunk: a fallback half-way through a frame applies at once.
            let per_send = if s.gso_send { max_per_send } else { 1 };
            let chunk = &segs[sent..(sent + per_send).min(segs.len())];
            for (k, seg) in chunk.iter().enumerate() {
                iov[2 * k] = IoSlice::new(s.segmenter.headers(seg));
                iov[2 * k + 1] = IoSlice::new(&frame[seg.payload.clone()]);
            }
            let iov = &iov[..2 * chunk.len()];
            #[allow(clippy::cast_possible_truncation)]
            let segment = if chunk.len() > 1 { seg_size as u16 } else { 0 };
            match udp::send_gathered(sock, dst, iov, segment, tos) {
                Ok(_) => sent += chunk.len(),
                // The segments do not fit the path MTU: answer for the first of them, as
                // Linux does for a GSO skb; the sender's stack lowers its MSS and resends.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    let first = &chunk[0];
                    let headers = &s.segmenter.headers(first)[vxlan::HEADER_LEN..];
                    self.answer_too_big(&mut s.pmtu, headers, &frame[first.payload.clone()], dst);
                    break;
                }
                // EINVAL/EIO mean the kernel cannot segment for this socket (EMSGSIZE, a path
                // MTU problem, is not a reason to give up the offload).
                Err(e)
                    if segment > 0
                        && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EIO)) =>
                {
                    tracing::warn!(queue = self.id, error = %e, "UDP_SEGMENT refused by the kernel; sending one datagram per segment from now on");
                    s.gso_send = false;
                    self.stats.set_mode(OffloadMode::Plain);
                }
                Err(e) if sent == 0 => return Err(e),
                Err(_) => {
                    // Part of the frame left; TCP retransmits the rest.
                    self.stats.count_drop(DropReason::TxSendError);
                    break;
                }
            }
        }
        Ok(sent as u64)
    }

    fn ingress_batch(&self, s: &mut Scratch) {
        let fdb = self.fdb.load();
        let mut tally = PeerTally::default();
        for _ in 0..BATCH {
            let Ok(udp::RecvMeta {
                len: n,
                from,
                gso,
                tos,
            }) = udp::recv_gro(&self.io.rx, &mut s.buf)
            else {
                break;
            };
            let seg = gso.map_or(n, usize::from).max(1);
            s.frames.clear();
            let mut at = 0;
            while at < n {
                let end = (at + seg).min(n);
                match path::decap(&s.buf[at..end], *from.ip(), &fdb, &self.decap) {
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
            self.write_runs(s);
        }
        tally.flush(true);
    }

    /// Answers an inner frame (`head` followed by `tail`, Ethernet onward) that the kernel
    /// refused with EMSGSIZE toward `dst`: learns the path MTU from the kernel and writes an
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" into the TAP, rate-limited.
    fn answer_too_big(&self, pm: &mut Pmtu, head: &[u8], tail: &[u8], dst: SocketAddrV4) {
        self.stats.count_drop(DropReason::TxTooBig);
        #[allow(clippy::cast_possible_truncation)]
        let now_ms = pm.origin.elapsed().as_millis() as u64;
        if !pm.limit.allow(now_ms) {
            self.stats.count_event(PathEvent::IcmpRateLimited, 1);
            return;
        }
        if pm.probe.is_none() {
            pm.probe = udp::mtu_probe().ok();
        }
        let Some(path_mtu) = pm.probe.as_ref().and_then(|p| udp::path_mtu(p, dst).ok()) else {
            return;
        };
        let Some(n) = pmtu::too_big(&mut pm.out, head, tail, pmtu::inner_mtu(path_mtu)) else {
            return;
        };
        let vnet_bytes = vnet::Header::default().to_bytes();
        let iov = [IoSlice::new(&vnet_bytes), IoSlice::new(&pm.out[..n])];
        if matches!(self.io.tap.file().write_vectored(&iov), Ok(w) if w == vnet::LEN + n) {
            let v6 = pm.out[12..14] == ethernet::ETHERTYPE_IPV6.to_be_bytes();
            self.stats.count_event(
                if v6 {
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

    /// Coalesces the decapsulated frames in `s.frames` and writes each run to the TAP.
    fn write_runs(&self, s: &mut Scratch) {
        let runs = s.coalescer.plan(&mut s.buf, &s.frames);
        for run in runs {
            let vnet_bytes = run.vnet.to_bytes();
            let mut iov = [IoSlice::new(&[]); 1 + MAX_RUN];
            let first = &s.frames[run.first];
            iov[0] = IoSlice::new(&vnet_bytes);
            iov[1] = IoSlice::new(&s.buf[first.range.clone()]);
            let mut len = first.range.len();
            for (k, f) in s.frames[run.first + 1..run.first + run.count]
                .iter()
                .enumerate()
            {
                let payload = &s.buf[f.range.start + run.payload_offset..f.range.end];
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
    sys::poll_readable(fds, 100)
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
