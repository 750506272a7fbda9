//! The worker supervisor: one thread per queue, restarted when it ends or panics, with the
//! queue's descriptors kept (they live in an `Arc<QueueIo>` the supervisor holds, so a panic
//! that unwinds the worker closes nothing and loses nothing queued in them).
//!
//! A first failure is restarted at once; a queue that keeps failing backs off (0.2 s doubling
//! to 5 s) so a crash loop does not spin. Every restart is logged with the panic message and
//! counted in the queue's `WorkerStats::restarts` (`overlayd_worker_restarts_total{queue}`);
//! `/healthz` and `/readyz` see a queue that stays down through its heartbeat.
//!
//! It runs on the control loop's task and never touches the packet path.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info};

use crate::fdb::FdbHandle;
use crate::path::DecapConfig;
use crate::stats::WorkerStats;
use crate::worker::{QueueIo, Worker};

/// Failures further apart than this start the backoff again.
const CALM: Duration = Duration::from_secs(30);
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

struct Slot {
    io: Arc<QueueIo>,
    stats: Arc<WorkerStats>,
    thread: Option<JoinHandle<()>>,
    /// Failures in a row (reset after `CALM` without one).
    failures: u32,
    last_failure: Option<Instant>,
    restart_at: Option<Instant>,
}

/// The workers of one dataplane and what is needed to restart any of them.
pub struct Workers {
    slots: Vec<Slot>,
    fdb: FdbHandle,
    decap: DecapConfig,
    busy_poll: Duration,
    stop: Arc<AtomicBool>,
    /// Dropped to wake every worker out of its poll when stopping.
    doorbell: Option<UnixStream>,
    wake: Arc<UnixStream>,
    exits_tx: mpsc::UnboundedSender<usize>,
    exits_rx: mpsc::UnboundedReceiver<usize>,
}

/// Tells the supervisor that a worker thread ended, however it ended (also while unwinding
/// from a panic).
struct ExitNotice {
    id: usize,
    tx: mpsc::UnboundedSender<usize>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.tx.send(self.id);
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".into())
}

impl Workers {
    /// Starts one worker per queue. On failure every thread already started is stopped.
    pub fn start(
        ios: Vec<QueueIo>,
        fdb: FdbHandle,
        decap: DecapConfig,
        busy_poll: Duration,
    ) -> std::io::Result<Workers> {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let (doorbell, wake) = UnixStream::pair()?;
        let mut w = Workers {
            slots: ios
                .into_iter()
                .map(|io| Slot {
                    io: Arc::new(io),
                    stats: Arc::new(WorkerStats::default()),
                    thread: None,
                    failures: 0,
                    last_failure: None,
                    restart_at: None,
                })
                .collect(),
            fdb,
            decap,
            busy_poll,
            stop: Arc::new(AtomicBool::new(false)),
            doorbell: Some(doorbell),
            wake: Arc::new(wake),
            exits_tx,
            exits_rx,
        };
        for id in 0..w.slots.len() {
            if let Err(e) = w.spawn(id) {
                w.stop_all();
                return Err(e);
            }
        }
        Ok(w)
    }

    fn spawn(&mut self, id: usize) -> std::io::Result<()> {
        let worker = Worker {
            id,
            io: self.slots[id].io.clone(),
            fdb: self.fdb.clone(),
            decap: self.decap,
            stats: self.slots[id].stats.clone(),
            stop: self.stop.clone(),
            wake: self.wake.clone(),
            busy_poll: self.busy_poll,
        };
        let notice = ExitNotice {
            id,
            tx: self.exits_tx.clone(),
        };
        // Counts as alive from now: the thread beats as soon as it runs.
        self.slots[id].stats.beat();
        let t = std::thread::Builder::new()
            .name(format!("overlayd-q{id}"))
            .spawn(move || {
                let _notice = notice;
                if let Err(e) = worker.run() {
                    error!(queue = id, error = %e, "worker stopped");
                }
            })?;
        self.slots[id].thread = Some(t);
        Ok(())
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The queues' counters, in queue order.
    #[must_use]
    pub fn stats(&self) -> Vec<Arc<WorkerStats>> {
        self.slots.iter().map(|s| s.stats.clone()).collect()
    }

    /// The queues' descriptors, in queue order (for a handover).
    pub fn ios(&self) -> impl Iterator<Item = &QueueIo> {
        self.slots.iter().map(|s| &*s.io)
    }

    /// Waits for a worker to end or a delayed restart to fall due, and deals with it.
    /// Cancel-safe: nothing is lost when another branch of the caller's `select!` wins.
    pub async fn supervise(&mut self) {
        let due = self.slots.iter().filter_map(|s| s.restart_at).min();
        tokio::select! {
            Some(id) = self.exits_rx.recv() => self.on_exit(id),
            () = super::sleep_until_opt(due) => self.restart_due(),
        }
    }

    fn on_exit(&mut self, id: usize) {
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        let slot = &mut self.slots[id];
        let how = match slot.thread.take().map(JoinHandle::join) {
            Some(Err(p)) => format!("panicked: {}", panic_text(&*p)),
            Some(Ok(())) | None => "ended".to_string(),
        };
        let now = Instant::now();
        if slot.last_failure.is_none_or(|t| now - t > CALM) {
            slot.failures = 0;
        }
        slot.failures += 1;
        slot.last_failure = Some(now);
        let delay = if slot.failures == 1 {
            Duration::ZERO
        } else {
            (BACKOFF_FIRST * 2u32.saturating_pow(slot.failures - 2)).min(BACKOFF_MAX)
        };
        error!(
            queue = id,
            failures_in_a_row = slot.failures,
            restart_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "worker {how}; restarting it with the same queue and sockets"
        );
        slot.restart_at = Some(now + delay);
        self.restart_due();
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        for id in 0..self.slots.len() {
            if self.slots[id].restart_at.is_some_and(|t| t <= now) {
                self.slots[id].restart_at = None;
                match self.spawn(id) {
                    Ok(()) => {
                        self.slots[id]
                            .stats
                            .restarts
                            .fetch_add(1, Ordering::Relaxed);
                        info!(queue = id, "worker restarted");
                    }
                    Err(e) => {
                        error!(queue = id, error = %e, "cannot restart the worker thread; retrying in 1 s");
                        self.slots[id].restart_at = Some(now + Duration::from_secs(1));
                    }
                }
            }
        }
    }

    /// Stops every worker and hands the queues' descriptors back, for workers started anew on
    /// the same device (this node's subnet lease moved: new MAC and decap rules, same queues,
    /// so nothing is closed or reopened). `None` when a descriptor is still shared, which only
    /// a worker thread that did not end could do; the workers are stopped either way.
    pub fn take_ios(&mut self) -> Option<Vec<QueueIo>> {
        self.stop_all();
        if self.slots.iter().any(|s| Arc::strong_count(&s.io) != 1) {
            return None;
        }
        std::mem::take(&mut self.slots)
            .into_iter()
            .map(|s| Arc::try_unwrap(s.io).ok())
            .collect()
    }

    /// Stops every worker and waits for them; the descriptors stay open until `self` drops.
    pub fn stop_all(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.doorbell.take());
        for s in &mut self.slots {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
            s.restart_at = None;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop_all();
    }
}
