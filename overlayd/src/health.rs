//! Liveness and readiness of the daemon: the facts the control loop sets (own node known,
//! first peer set applied, device up) and the workers' heartbeats, read at request time.
//! `/healthz` and `/readyz` (in `http`) and the status document (in `observe`) read it; it
//! depends on neither, so the HTTP layer, the status view and the metrics never import each
//! other in a circle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::stats::WorkerStats;

/// How long a worker may go without a heartbeat (it beats at least every 100 ms) before the
/// dataplane counts as not forwarding: longer than a restart after a panic takes, shorter
/// than a probe period.
pub const WORKER_GRACE: Duration = Duration::from_secs(1);

/// Readiness and liveness facts, set by the control loop; the workers' heartbeats are read
/// at request time.
#[derive(Debug, Default)]
pub struct Health {
    pub own_node_known: AtomicBool,
    pub synced: AtomicBool,
    pub device_up: AtomicBool,
    /// The running workers' stats (heartbeat, restarts); empty while no dataplane runs.
    queues: Mutex<Vec<Arc<WorkerStats>>>,
    /// What the node source cannot do right now (etcd unreachable, no lease), said on
    /// /readyz; forwarding goes on with the last state meanwhile.
    source_problem: Mutex<Option<String>>,
}

impl Health {
    #[must_use]
    pub fn ready(&self) -> bool {
        self.own_node_known.load(Ordering::Relaxed)
            && self.synced.load(Ordering::Relaxed)
            && self.device_up.load(Ordering::Relaxed)
            && self.not_forwarding().is_empty()
            && self.source_problem().is_none()
    }

    /// Sets (or clears, with `None`) what the node source cannot do right now.
    pub fn set_source_problem(&self, problem: Option<String>) {
        *self
            .source_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = problem;
    }

    #[must_use]
    pub fn source_problem(&self) -> Option<String> {
        self.source_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Points the heartbeat check at the workers of the dataplane now running (none: empty).
    pub fn set_queues(&self, queues: Vec<Arc<WorkerStats>>) {
        *self.queues.lock().unwrap_or_else(PoisonError::into_inner) = queues;
    }

    /// Queues whose worker has been silent (ended, panicked and not yet restarted, or stuck)
    /// for longer than [`WORKER_GRACE`], with the reason. Empty when all forward.
    #[must_use]
    pub fn not_forwarding(&self) -> Vec<String> {
        let queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for (q, w) in queues.iter().enumerate() {
            let restarts = w.restarts.load(Ordering::Relaxed);
            match w.silent_for() {
                None => out.push(format!("queue {q} worker not started")),
                Some(d) if d > WORKER_GRACE => out.push(format!(
                    "queue {q} worker not running for {:.1} s (restarts: {restarts})",
                    d.as_secs_f64()
                )),
                Some(_) => {}
            }
        }
        out
    }

    /// What is missing, for the /readyz body.
    #[must_use]
    pub fn missing(&self) -> Vec<String> {
        let mut m = Vec::new();
        if !self.own_node_known.load(Ordering::Relaxed) {
            m.push("own node podCIDR not known yet".to_string());
        }
        if !self.synced.load(Ordering::Relaxed) {
            m.push("first peer set not applied yet".to_string());
        }
        if !self.device_up.load(Ordering::Relaxed) {
            m.push("device not up".to_string());
        }
        m.extend(self.not_forwarding());
        m.extend(self.source_problem());
        m
    }
}
