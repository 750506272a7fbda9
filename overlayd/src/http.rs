//! The HTTP endpoint on `--http-addr`: `/healthz` (the process is alive and its workers
//! forward), `/readyz` (own podCIDR known, first peer set applied, device up, workers
//! forwarding; the body says what is missing), `/metrics` (Prometheus text) and
//! `/status` (JSON for `overlayd status`). Bound to loopback by default.
//!
//! It runs on a thread and runtime of its own, with a header-read timeout and a connection
//! limit, so that no client (idle connections, a request flood) can delay the control loop or
//! keep the endpoint from answering a client that asks something. The listener is bound with
//! SO_REUSEPORT, so an overlayd started while the previous one still runs (a rolling upgrade
//! with maxSurge) can listen at once; the old one drops its listener when it hands over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

use crate::health::Health;

/// The daemon's routes; every handler reads `observed` at request time.
pub fn router(observed: Arc<crate::observe::Observed>) -> Router {
    let registry = Arc::new(crate::metrics::registry(observed.clone()));
    health_router(observed.health.clone())
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
}

/// `/healthz` and `/readyz` alone: served on `--http-addr` with the rest, and on flanneld's
/// healthz listener (`--healthz-ip`:`--healthz-port`, Flannel's main.go `mustRunHealthz`).
pub fn health_router(h: Arc<Health>) -> Router {
    let h2 = h.clone();
    Router::new()
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

/// At most this many connections are open at once (see `Slots` for who gives way).
pub const MAX_CONNECTIONS: usize = 128;
/// A client that has not sent a whole request head within this time is disconnected (also an
/// idle keep-alive connection waiting for its next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection lives longer than this, whatever it does (slow bodies, slow readers).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
const BACKLOG: u32 = 1024;

/// A running HTTP listener on its own thread and runtime. Dropping it stops the listener.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// The bound address (the port the kernel chose when `addr` asked for port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr` and serves `router` on a thread of its own with its own single-threaded
/// runtime, so no client (500 idle connections, a request flood) can delay the control loop.
/// Each connection gets `HEADER_READ_TIMEOUT` for its request head and `CONNECTION_LIFETIME`
/// in all; at most `MAX_CONNECTIONS` are open at once, and a silent one gives way to a new
/// one. Call it once per listener.
pub fn serve(addr: SocketAddr, router: Router) -> anyhow::Result<Server> {
    let cannot = |e: std::io::Error| {
        anyhow::anyhow!("cannot listen on {addr}: {e}; pick another address or port")
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(cannot)?;
    socket.set_reuseaddr(true).map_err(cannot)?;
    // Same user, same port: the successor of a rolling upgrade listens before we let go.
    socket.set_reuseport(true).map_err(cannot)?;
    socket.bind(addr).map_err(cannot)?;
    let bound = socket.local_addr().map_err(cannot)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // `listen` registers with the reactor of the current runtime: make that ours (the caller
    // may be inside another runtime, where `block_on` would panic).
    let listener = {
        let _ours = runtime.enter();
        socket.listen(BACKLOG).map_err(cannot)?
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("overlayd-http".into())
        .spawn(move || runtime.block_on(accept_loop(listener, router, stop_rx)))?;
    Ok(Server {
        addr: bound,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// The connections being served: when all slots are taken, a new connection evicts the
/// oldest one that has not sent a single byte yet (an idle client cannot lock out a client
/// that asks something); when every slot is busy with a real request, the new one is shed.
#[derive(Default)]
struct Slots {
    next_id: u64,
    open: std::collections::BTreeMap<u64, Slot>,
}

struct Slot {
    heard: Arc<AtomicBool>,
    abort: tokio::task::AbortHandle,
}

type SharedSlots = Arc<std::sync::Mutex<Slots>>;

fn lock(slots: &SharedSlots) -> std::sync::MutexGuard<'_, Slots> {
    slots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes room for one more connection; false when none can be made.
fn make_room(slots: &SharedSlots) -> bool {
    let mut s = lock(slots);
    if s.open.len() < MAX_CONNECTIONS {
        return true;
    }
    // Ids grow with time, so the first silent one is the oldest.
    let silent = s
        .open
        .iter()
        .find(|(_, c)| !c.heard.load(Ordering::Relaxed))
        .map(|(id, _)| *id);
    match silent.and_then(|id| s.open.remove(&id)) {
        Some(c) => {
            c.abort.abort();
            true
        }
        None => false,
    }
}

/// A stream that notes when its peer first sent something.
struct Heard {
    stream: tokio::net::TcpStream,
    heard: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for Heard {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Heard {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let slots = SharedSlots::default();
    let mut said_full = false;
    let mut said_error = false;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: say it once, back off instead of spinning.
                if !said_error {
                    tracing::warn!(error = %e, "HTTP accept failed; retrying");
                    said_error = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        said_error = false;
        if !make_room(&slots) {
            if !said_full {
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "HTTP connection limit reached with every connection busy; refusing new ones"
                );
                said_full = true;
            }
            drop(stream);
            continue;
        }
        said_full = false;
        let heard = Arc::new(AtomicBool::new(false));
        let io = hyper_util::rt::TokioIo::new(Heard {
            stream,
            heard: heard.clone(),
        });
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut s = lock(&slots);
        let id = s.next_id;
        s.next_id += 1;
        let done = slots.clone();
        let task = tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            lock(&done).open.remove(&id);
        });
        s.open.insert(
            id,
            Slot {
                heard,
                abort: task.abort_handle(),
            },
        );
    }
    for (_, c) in std::mem::take(&mut lock(&slots).open) {
        c.abort.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn request(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    #[test]
    fn silent_connections_give_way_to_a_request_at_the_limit() {
        let server = serve(
            "127.0.0.1:0".parse().unwrap(),
            Router::new().route("/healthz", get(|| async { "ok\n" })),
        )
        .unwrap();
        let addr = server.local_addr();
        // Fill every slot with connections that never send a byte.
        let silent: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // A client that asks something is still answered: the oldest silent one gave way.
        let answer = request(addr, "/healthz").unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let mut first = &silent[0];
        first
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 1];
        let closed = match first.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "the oldest silent connection is closed");
        drop(server);
        assert!(
            TcpStream::connect(addr).is_err(),
            "dropping the server closes the listener"
        );
    }
}
