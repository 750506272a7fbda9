//! The HTTP endpoint on `--http-addr`: `/healthz` (the process is alive and its workers
//! forward), `/readyz` (own podCIDR known, first peer set applied, device up, workers
//! forwarding; the body says what is missing), `/metrics` (Prometheus text) and
//! `/status` (JSON for `overlayd status`). Bound to loopback by default.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

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
    queues: Mutex<Vec<Arc<crate::stats::WorkerStats>>>,
}

impl Health {
    #[must_use]
    pub fn ready(&self) -> bool {
        self.own_node_known.load(Ordering::Relaxed)
            && self.synced.load(Ordering::Relaxed)
            && self.device_up.load(Ordering::Relaxed)
            && self.not_forwarding().is_empty()
    }

    /// Points the heartbeat check at the workers of the dataplane now running (none: empty).
    pub fn set_queues(&self, queues: Vec<Arc<crate::stats::WorkerStats>>) {
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
        m
    }
}

/// The daemon's routes; every handler reads `observed` at request time.
pub fn router(observed: Arc<crate::observe::Observed>) -> Router {
    let h = observed.health.clone();
    let h2 = h.clone();
    let registry = Arc::new(crate::metrics::registry(observed.clone()));
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let r = registry.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                        crate::metrics::encode(&r),
                    )
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let o = observed.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        serde_json::to_string_pretty(&o.status()).unwrap_or_default() + "\n",
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let h = h2.clone();
                async move {
                    // Alive = the process answers and no worker has been down longer than
                    // the grace period (a restart after a panic is quicker than that).
                    let down = h.not_forwarding();
                    if down.is_empty() {
                        (StatusCode::OK, "ok\n".to_string())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("dataplane not forwarding: {}\n", down.join("; ")),
                        )
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let h = h.clone();
                async move {
                    if h.ready() {
                        (StatusCode::OK, "ready\n".to_string())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}\n", h.missing().join("; ")),
                        )
                    }
                }
            }),
        )
}

/// Binds `addr` with SO_REUSEPORT, so an overlayd started while the previous one still runs
/// (a rolling upgrade with maxSurge) can listen at once; the old one closes its listener when
/// it hands over. Both run as the same user, which the kernel requires for sharing the port.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}

/// Binds `addr` (errors name it) and serves `router` until the task is aborted or dropped.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = bind_reuseport(addr).map_err(|e| {
        anyhow::anyhow!("cannot listen on --http-addr {addr}: {e}; pick another address or port")
    })?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }))
}
