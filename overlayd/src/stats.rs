//! Per-worker packet counters. Each worker owns one `WorkerStats` and is its only writer
//! (relaxed atomics, no sharing of cache lines between workers); readers sum over workers.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::path::event::PathEvent;
use crate::path::DropReason;

/// Adds to a counter that only its own worker writes: a plain load and store, no locked
/// read-modify-write on the hot path; readers on other threads see a recent value.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Which I/O path a queue runs; exported so operators see a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OffloadMode {
    /// One frame per syscall, no offloads.
    Plain = 0,
    /// TSO super-frames from the TAP, UDP_SEGMENT on send, UDP_GRO on receive.
    Offload = 1,
}

impl OffloadMode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Offload => "offload",
        }
    }

    #[must_use]
    pub fn from_u8(v: u8) -> Self {
        if v == 1 {
            Self::Offload
        } else {
            Self::Plain
        }
    }
}

#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    /// `OffloadMode` as u8, set by the worker at start and on fallback.
    pub mode: AtomicU8,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub drops: [AtomicU64; DropReason::COUNT],
    /// [`monotonic_ms`] when the worker last went round its loop (0: never started).
    pub heartbeat_ms: AtomicU64,
    /// Times the supervisor restarted this queue's worker after it ended or panicked.
    pub restarts: AtomicU64,
    pub events: [AtomicU64; PathEvent::COUNT],
}

/// Milliseconds since this process first asked (never 0), on the monotonic clock.
#[must_use]
pub fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let e = EPOCH.get_or_init(Instant::now);
    u64::try_from(e.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

impl WorkerStats {
    /// The worker is alive and about to poll (at least every 100 ms).
    #[inline]
    pub fn beat(&self) {
        self.heartbeat_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// How long ago the worker last went round its loop; `None` if it never ran.
    #[must_use]
    pub fn silent_for(&self) -> Option<Duration> {
        match self.heartbeat_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(monotonic_ms().saturating_sub(t))),
        }
    }

    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        bump(&self.drops[reason as usize], 1);
    }
    #[inline]
    pub fn count_event(&self, event: PathEvent, n: u64) {
        bump(&self.events[event as usize], n);
    }
    pub fn set_mode(&self, mode: OffloadMode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    #[must_use]
    pub fn mode(&self) -> OffloadMode {
        OffloadMode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    /// `packets` inner packets totalling `bytes` sent toward peers.
    #[inline]
    pub fn tx_many(&self, packets: u64, bytes: usize) {
        bump(&self.tx_packets, packets);
        bump(&self.tx_bytes, bytes as u64);
    }
    /// `packets` inner packets totalling `bytes` delivered to the TAP device.
    #[inline]
    pub fn rx_many(&self, packets: u64, bytes: usize) {
        bump(&self.rx_packets, packets);
        bump(&self.rx_bytes, bytes as u64);
    }
}

/// A summed, plain copy of all workers' counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub drops: [u64; DropReason::COUNT],
    pub events: [u64; PathEvent::COUNT],
}

impl Totals {
    #[must_use]
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerStats>) -> Self {
        let mut t = Totals::default();
        for w in workers {
            t.tx_packets += w.tx_packets.load(Ordering::Relaxed);
            t.tx_bytes += w.tx_bytes.load(Ordering::Relaxed);
            t.rx_packets += w.rx_packets.load(Ordering::Relaxed);
            t.rx_bytes += w.rx_bytes.load(Ordering::Relaxed);
            for (d, s) in t.drops.iter_mut().zip(&w.drops) {
                *d += s.load(Ordering::Relaxed);
            }
            for (d, s) in t.events.iter_mut().zip(&w.events) {
                *d += s.load(Ordering::Relaxed);
            }
        }
        t
    }

    #[must_use]
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    #[must_use]
    pub fn event_count(&self, event: PathEvent) -> u64 {
        self.events[event as usize]
    }
}
