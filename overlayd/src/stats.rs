//! Per-worker packet counters. Each worker owns one `WorkerStats` and is its only writer
//! (relaxed atomics, no sharing of cache lines between workers); readers sum over workers.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::path::DropReason;

#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub drops: [AtomicU64; DropReason::COUNT],
}

impl WorkerStats {
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn tx(&self, bytes: usize) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    #[inline]
    pub fn rx(&self, bytes: usize) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
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
        }
        t
    }

    #[must_use]
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
}
