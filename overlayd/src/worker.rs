//! One worker thread per TAP queue: reads frames from its queue and sends them as VXLAN over
//! its own UDP sockets; receives VXLAN on its own SO_REUSEPORT socket and writes inner frames
//! to its queue. The hot loop takes no lock and allocates nothing: the FDB is a snapshot loaded
//! once per batch, counters are this worker's own.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::fdb::{FdbHandle, PeerCounters};
use crate::path::{self, DecapConfig, DropReason};
use crate::stats::WorkerStats;
use crate::sys::{self, tap::TapQueue};
use crate::wire::{vnet, vxlan};

/// Frames handled per readiness event before polling again (keeps both directions fair).
const BATCH: usize = 64;
/// Big enough for a 64 KiB GSO datagram plus headroom for the header swap.
const BUF_LEN: usize = 65_536 + 64;
/// The VXLAN header (8 bytes) ends where the virtio-net header (10 bytes) ends, so a frame is
/// re-framed in place: `[vnet 10][frame]` <-> `[2 spare][vxlan 8][frame]`.
const VX_AT: usize = vnet::LEN - vxlan::HEADER_LEN;

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
    fn add(&mut self, peer: &'a PeerCounters, bytes: usize, rx: bool) {
        if !self.peer.is_some_and(|p| std::ptr::eq(p, peer)) {
            self.flush(rx);
            self.peer = Some(peer);
        }
        self.packets += 1;
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

pub struct Worker {
    pub id: usize,
    pub tap: TapQueue,
    pub rx: UdpSocket,
    /// Send sockets; the inner flow hash picks one, so its port is the outer source port.
    pub tx_pool: Vec<UdpSocket>,
    pub fdb: FdbHandle,
    pub decap: DecapConfig,
    pub stats: Arc<WorkerStats>,
    pub stop: Arc<AtomicBool>,
}

impl Worker {
    /// Runs until `stop` is set. Returns only on a fatal poll error.
    pub fn run(self) -> io::Result<()> {
        let mut buf = vec![0u8; BUF_LEN];
        let vx_header = vxlan::header(self.decap.vni);
        while !self.stop.load(Ordering::Relaxed) {
            let ready = sys::poll_readable(&[self.tap.file().as_fd(), self.rx.as_fd()], 100)?;
            if ready[0] {
                self.egress_batch(&mut buf, &vx_header);
            }
            if ready[1] {
                self.ingress_batch(&mut buf);
            }
        }
        Ok(())
    }

    fn egress_batch(&self, buf: &mut [u8], vx_header: &[u8; vxlan::HEADER_LEN]) {
        let fdb = self.fdb.load();
        let mut tally = PeerTally::default();
        for _ in 0..BATCH {
            let n = match self.tap.file().read(buf) {
                Ok(n) => n,
                Err(_) => break,
            };
            let Some(hdr) = vnet::Header::parse(&buf[..n]) else {
                self.stats.count_drop(DropReason::TxShort);
                continue;
            };
            match path::encap(&mut buf[vnet::LEN..n], &hdr, &fdb) {
                Ok(t) => {
                    buf[VX_AT..vnet::LEN].copy_from_slice(vx_header);
                    let sock = &self.tx_pool[t.flow_hash as usize % self.tx_pool.len()];
                    match sock.send_to(&buf[VX_AT..n], SocketAddr::V4(t.dst)) {
                        Ok(_) => {
                            self.stats.tx(n - vnet::LEN);
                            tally.add(&t.peer.counters, n - vnet::LEN, false);
                        }
                        Err(_) => self.stats.count_drop(DropReason::TxSendError),
                    }
                }
                Err(reason) => self.stats.count_drop(reason),
            }
        }
        tally.flush(false);
    }

    fn ingress_batch(&self, buf: &mut [u8]) {
        let fdb = self.fdb.load();
        let mut tally = PeerTally::default();
        for _ in 0..BATCH {
            let Ok((n, from)) = self.rx.recv_from(&mut buf[VX_AT..]) else {
                break;
            };
            let SocketAddr::V4(from) = from else {
                self.stats.count_drop(DropReason::RxUnknownSender);
                continue;
            };
            let end = VX_AT + n;
            match path::decap(&buf[VX_AT..end], *from.ip(), &fdb, &self.decap) {
                Ok(d) => {
                    buf[..vnet::LEN].copy_from_slice(&d.vnet.to_bytes());
                    match self.tap.file().write(&buf[..end]) {
                        // A TAP write takes the whole frame or fails; anything else is an error.
                        Ok(w) if w == end => {
                            self.stats.rx(end - vnet::LEN);
                            if let Some(p) = d.peer {
                                tally.add(p, end - vnet::LEN, true);
                            }
                        }
                        // EIO while the device is down (teardown, flap): counted, not logged.
                        Ok(_) | Err(_) => self.stats.count_drop(DropReason::RxTapError),
                    }
                }
                Err(reason) => self.stats.count_drop(reason),
            }
        }
        tally.flush(true);
    }
}
