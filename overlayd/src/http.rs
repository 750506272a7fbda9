//! The HTTP endpoint on `--http-addr`: `/healthz` (the process is alive), `/readyz` (own
//! podCIDR known, first peer set applied, device up), `/metrics` (Prometheus text) and
//! `/status` (JSON for `overlayd status`). Bound to loopback by default.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

/// Readiness facts, set by the control loop.
#[derive(Debug, Default)]
pub struct Health {
    pub own_node_known: AtomicBool,
    pub synced: AtomicBool,
    pub device_up: AtomicBool,
}

impl Health {
    #[must_use]
    pub fn ready(&self) -> bool {
        self.own_node_known.load(Ordering::Relaxed)
            && self.synced.load(Ordering::Relaxed)
            && self.device_up.load(Ordering::Relaxed)
    }

    /// What is missing, for the /readyz body.
    #[must_use]
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if !self.own_node_known.load(Ordering::Relaxed) {
            m.push("own node podCIDR not known yet");
        }
        if !self.synced.load(Ordering::Relaxed) {
            m.push("first peer set not applied yet");
        }
        if !self.device_up.load(Ordering::Relaxed) {
            m.push("device not up");
        }
        m
    }
}

/// The daemon's routes; every handler reads `observed` at request time.
pub fn router(observed: Arc<crate::observe::Observed>) -> Router {
    let h = observed.health.clone();
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
        .route("/healthz", get(|| async { "ok\n" }))
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

/// Binds `addr` (errors name it) and serves `router` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on --http-addr {addr}: {e}; pick another address or port")
    })?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }))
}

/// flanneld's healthz server (`--healthz-ip`:`--healthz-port`, main.go mustRunHealthz):
/// `/healthz` answers 200 while the process runs, `/readyz` 200 once ready else 503. It runs
/// beside the `--http-addr` listener, which serves the same two paths and the rest.
pub async fn serve_healthz(
    addr: SocketAddr,
    health: Arc<Health>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let router = Router::new()
        .route("/healthz", get(|| async { "overlayd is running\n" }))
        .route(
            "/readyz",
            get(move || {
                let h = health.clone();
                async move {
                    if h.ready() {
                        (StatusCode::OK, "overlayd is ready\n".to_string())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("overlayd is not ready yet: {}\n", h.missing().join("; ")),
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on --healthz-ip/--healthz-port {addr}: {e}; pick another port (0 disables it)"
        )
    })?;
    tracing::info!(%addr, "healthz server started");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "healthz server stopped");
        }
    }))
}
