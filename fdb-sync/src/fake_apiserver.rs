//! A fake kube-apiserver for Nodes, for tests and benchmarks (feature `fake-apiserver`).
//!
//! It honours what kube-rs' watcher relies on, the way kube-apiserver does: a paged list with
//! `metadata.resourceVersion` and `continue`; a chunked watch stream of JSON lines
//! (ADDED/MODIFIED/DELETED/BOOKMARK) resuming after a given resourceVersion; an ERROR event with
//! a 410 Status when that resourceVersion has been compacted away; GET of one Node or Pod; and JSON
//! merge patches and strategic merge patches (conditions and addresses merged by `type`) to
//! `nodes/<name>/status`, which it records, applies and announces as MODIFIED.
//! Plain HTTP, no authentication. It runs on its own runtime, so `stop` cuts every connection
//! at once, as a crashed API server would.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::Router;
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

/// Creates the listening socket; called again on every restart (same address).
pub type Binder = Box<dyn Fn() -> std::io::Result<TcpListener> + Send + Sync>;

/// A recorded PATCH request.
#[derive(Debug, Clone)]
pub struct RecordedPatch {
    pub node: String,
    pub content_type: String,
    pub body: Value,
}

#[derive(Clone, Debug)]
struct WatchEvent {
    rv: u64,
    line: Bytes,
}

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<String, Value>,
    rv: u64,
    /// Events with resourceVersion > `compacted`, oldest first.
    history: VecDeque<WatchEvent>,
    compacted: u64,
    /// resourceVersion of the last event sent to watchers (what a BOOKMARK may promise).
    announced: u64,
    patches: Vec<RecordedPatch>,
    requests: Vec<String>,
    /// Pods by `namespace/name` (GET only: flanneld finds its node name from its pod).
    pods: BTreeMap<String, Value>,
}

struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<WatchEvent>,
    /// Bumped to end every open watch stream.
    disconnect: tokio::sync::watch::Sender<u64>,
    bookmark_every: Duration,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a change: bumps the resourceVersion, stamps the object and announces it.
    fn emit(&self, inner: &mut Inner, kind: &str, mut obj: Value) -> Value {
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        let line = event_line(kind, &obj);
        let ev = WatchEvent { rv: inner.rv, line };
        inner.history.push_back(ev.clone());
        inner.announced = inner.rv;
        let _ = self.events.send(ev);
        obj
    }
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut s = serde_json::to_vec(&json!({"type": kind, "object": obj})).expect("JSON");
    s.push(b'\n');
    Bytes::from(s)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
           "message":message,"reason":reason,"code":code})
}

fn status_response(code: u16, reason: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        status(code, reason, message).to_string(),
    )
        .into_response()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let t = target.as_object_mut().expect("object");
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// Node lists that a strategic merge patch merges by a key instead of replacing (the
/// `patchMergeKey` of NodeStatus in the Kubernetes API).
const MERGE_KEYS: &[(&str, &str)] = &[("conditions", "type"), ("addresses", "type")];

/// A strategic merge patch as kube-apiserver applies one to a Node: a merge patch, except that
/// the lists in [`MERGE_KEYS`] merge element by element on their key.
fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let merge_key = MERGE_KEYS.iter().find(|(list, _)| list == k).map(|m| m.1);
        match (merge_key, v, t.get_mut(k)) {
            (Some(key), Value::Array(items), Some(Value::Array(have))) => {
                for item in items {
                    match have.iter_mut().find(|h| h.get(key) == item.get(key)) {
                        Some(h) => strategic_merge_patch(h, item),
                        None => have.push(item.clone()),
                    }
                }
            }
            _ => strategic_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v),
        }
    }
}

/// The fake API server. Dropping it stops it.
pub struct FakeApiServer {
    store: Arc<Store>,
    binder: Binder,
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeApiServer {
    /// Serves on a free port of 127.0.0.1 (the same port after a restart).
    pub fn start_local() -> std::io::Result<Self> {
        let first = TcpListener::bind("127.0.0.1:0")?;
        let addr = first.local_addr()?;
        let first = Mutex::new(Some(first));
        Self::start(Box::new(move || {
            if let Some(l) = first.lock().expect("lock").take() {
                return Ok(l);
            }
            TcpListener::bind(addr)
        }))
    }

    /// Serves on whatever `binder` returns (e.g. a socket created inside a network namespace).
    pub fn start(binder: Binder) -> std::io::Result<Self> {
        Self::start_with_bookmarks(binder, Duration::from_secs(1))
    }

    /// As [`FakeApiServer::start`], sending a BOOKMARK on every open watch each `every`.
    pub fn start_with_bookmarks(binder: Binder, every: Duration) -> std::io::Result<Self> {
        let store = Arc::new(Store {
            inner: Mutex::new(Inner::default()),
            events: broadcast::channel(1 << 16).0,
            disconnect: tokio::sync::watch::channel(0).0,
            bookmark_every: every,
        });
        let mut s = FakeApiServer {
            store,
            binder,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            runtime: None,
        };
        s.serve()?;
        Ok(s)
    }

    fn serve(&mut self) -> std::io::Result<()> {
        let listener = (self.binder)()?;
        listener.set_nonblocking(true)?;
        self.addr = listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()?;
        let app = router(self.store.clone());
        let listener = {
            let _g = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        self.runtime = Some(rt);
        Ok(())
    }

    /// Stops serving and closes every connection (the store is kept).
    pub fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Starts serving again on the same address, with the same objects and history.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        // The old runtime shuts down in the background; retry the bind briefly.
        let mut last = None;
        for _ in 0..50 {
            match self.serve() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(last.expect("tried"))
    }

    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
                 current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
                self.url()
            ),
        )?;
        Ok(path)
    }

    /// Adds or replaces a Node (ADDED or MODIFIED).
    pub fn apply(&self, node: &Node) {
        let mut obj = serde_json::to_value(node).expect("Node serializes");
        let name = node.metadata.name.clone().expect("node has a name");
        let mut g = self.store.lock();
        let kind = if g.nodes.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{name}"));
        }
        let obj = self.store.emit(&mut g, kind, obj);
        g.nodes.insert(name, obj);
    }

    /// Adds many Nodes as one change set (for scale tests): one resourceVersion each.
    pub fn apply_all<'a>(&self, nodes: impl IntoIterator<Item = &'a Node>) {
        for n in nodes {
            self.apply(n);
        }
    }

    /// Deletes a Node (DELETED). Returns whether it existed.
    pub fn delete(&self, name: &str) -> bool {
        let mut g = self.store.lock();
        let Some(obj) = g.nodes.remove(name) else {
            return false;
        };
        self.store.emit(&mut g, "DELETED", obj);
        true
    }

    /// Deletes a Node and forgets the event, as if it happened while a client was away and
    /// the history was compacted since: watchers only learn of it by re-listing.
    pub fn delete_unseen(&self, name: &str) -> bool {
        let mut g = self.store.lock();
        if g.nodes.remove(name).is_none() {
            return false;
        }
        g.rv += 1;
        drop(g);
        self.compact();
        true
    }

    /// Drops the event history: a watch resuming from any older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut g = self.store.lock();
        g.history.clear();
        g.compacted = g.rv;
    }

    /// Ends every open watch stream (clients resume from their last resourceVersion).
    pub fn disconnect_watches(&self) {
        self.store.disconnect.send_modify(|g| *g += 1);
    }

    /// Adds or replaces a Pod, served to GET `namespaces/<ns>/pods/<name>`.
    pub fn apply_pod(&self, pod: &k8s_openapi::api::core::v1::Pod) {
        let obj = serde_json::to_value(pod).expect("Pod serializes");
        let ns = pod.metadata.namespace.clone().expect("pod has a namespace");
        let name = pod.metadata.name.clone().expect("pod has a name");
        self.store.lock().pods.insert(format!("{ns}/{name}"), obj);
    }

    #[must_use]
    pub fn node(&self, name: &str) -> Option<Node> {
        let g = self.store.lock();
        g.nodes
            .get(name)
            .map(|v| serde_json::from_value(v.clone()).expect("stored Node parses"))
    }

    #[must_use]
    pub fn patches(&self) -> Vec<RecordedPatch> {
        self.store.lock().patches.clone()
    }

    /// Requests served so far, as `METHOD path?query`.
    #[must_use]
    pub fn requests(&self) -> Vec<String> {
        self.store.lock().requests.clone()
    }

    #[must_use]
    pub fn resource_version(&self) -> u64 {
        self.store.lock().rv
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/api/v1/nodes", get(list_or_watch))
        .route("/api/v1/nodes/{name}", get(get_node))
        .route("/api/v1/namespaces/{namespace}/pods/{name}", get(get_pod))
        .route("/api/v1/nodes/{name}/status", patch(patch_status))
        .with_state(store)
}

fn record(store: &Store, line: String) {
    store.lock().requests.push(line);
}

async fn list_or_watch(
    State(store): State<Arc<Store>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut qs: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    qs.sort();
    record(&store, format!("GET /api/v1/nodes?{}", qs.join("&")));
    if matches!(q.get("watch").map(String::as_str), Some("1" | "true")) {
        watch_nodes(store, &q)
    } else {
        list_nodes(&store, &q)
    }
}

fn list_nodes(store: &Store, q: &HashMap<String, String>) -> Response {
    let g = store.lock();
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let offset = q
        .get("continue")
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(0);
    let items: Vec<&Value> = g.nodes.values().skip(offset).take(limit).collect();
    let mut meta = json!({"resourceVersion": g.rv.to_string()});
    if offset + items.len() < g.nodes.len() {
        meta["continue"] = json!((offset + items.len()).to_string());
        meta["remainingItemCount"] = json!(g.nodes.len() - offset - items.len());
    }
    let body = json!({"kind":"NodeList","apiVersion":"v1","metadata":meta,"items":items});
    drop(g);
    (
        [("content-type", "application/json")],
        serde_json::to_vec(&body).expect("JSON"),
    )
        .into_response()
}

fn watch_nodes(store: Arc<Store>, q: &HashMap<String, String>) -> Response {
    let bookmarks = matches!(
        q.get("allowWatchBookmarks").map(String::as_str),
        Some("1" | "true")
    );
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let from = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| v.parse::<u64>().unwrap_or(0));

    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut disconnect = store.disconnect.subscribe();
    // Subscribing under the lock: every later change reaches `events`, every earlier one is
    // in the backlog, none in both.
    let (backlog, mut events) = {
        let g = store.lock();
        let events = store.events.subscribe();
        let backlog: Vec<Bytes> = match from {
            Some(rv) if rv < g.compacted => {
                let msg = format!("too old resource version: {rv} ({})", g.compacted + 1);
                let _ = tx.try_send(event_line("ERROR", &status(410, "Expired", &msg)));
                drop(tx);
                return stream_response(rx);
            }
            Some(rv) => g
                .history
                .iter()
                .filter(|e| e.rv > rv)
                .map(|e| e.line.clone())
                .collect(),
            // No resourceVersion: synthetic ADDED for everything, then changes.
            None => g.nodes.values().map(|o| event_line("ADDED", o)).collect(),
        };
        (backlog, events)
    };
    let every = store.bookmark_every;
    tokio::spawn(async move {
        for l in backlog {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        let mut deadline = std::pin::pin!(deadline);
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                () = &mut deadline => return,
                _ = disconnect.changed() => return,
                ev = events.recv() => match ev {
                    Ok(ev) => if tx.send(ev.line).await.is_err() { return },
                    // Fell behind: end the stream; the client resumes (or gets 410).
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let rv = store.lock().announced;
                    let obj = json!({"kind":"Node","apiVersion":"v1",
                        "metadata":{"resourceVersion": rv.to_string()}});
                    if tx.send(event_line("BOOKMARK", &obj)).await.is_err() { return; }
                }
            }
        }
    });
    stream_response(rx)
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        [("content-type", "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn get_node(State(store): State<Arc<Store>>, UrlPath(name): UrlPath<String>) -> Response {
    record(&store, format!("GET /api/v1/nodes/{name}"));
    let g = store.lock();
    match g.nodes.get(&name) {
        Some(obj) => (
            [("content-type", "application/json")],
            serde_json::to_vec(obj).expect("JSON"),
        )
            .into_response(),
        None => status_response(404, "NotFound", &format!("nodes \"{name}\" not found")),
    }
}

async fn get_pod(
    State(store): State<Arc<Store>>,
    UrlPath((namespace, name)): UrlPath<(String, String)>,
) -> Response {
    record(
        &store,
        format!("GET /api/v1/namespaces/{namespace}/pods/{name}"),
    );
    let g = store.lock();
    match g.pods.get(&format!("{namespace}/{name}")) {
        Some(obj) => (
            [("content-type", "application/json")],
            serde_json::to_vec(obj).expect("JSON"),
        )
            .into_response(),
        None => status_response(404, "NotFound", &format!("pods \"{name}\" not found")),
    }
}

async fn patch_status(
    State(store): State<Arc<Store>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&store, format!("PATCH /api/v1/nodes/{name}/status"));
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let apply: fn(&mut Value, &Value) = match content_type.as_str() {
        "application/merge-patch+json" => merge_patch,
        "application/strategic-merge-patch+json" => strategic_merge_patch,
        _ => {
            return status_response(
                415,
                "UnsupportedMediaType",
                &format!(
                    "the fake API server only takes merge and strategic merge patches, not {content_type:?}"
                ),
            )
        }
    };
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status_response(400, "BadRequest", "patch body is not JSON");
    };
    let mut g = store.lock();
    g.patches.push(RecordedPatch {
        node: name.clone(),
        content_type,
        body: patch.clone(),
    });
    let Some(mut obj) = g.nodes.get(&name).cloned() else {
        return status_response(404, "NotFound", &format!("nodes \"{name}\" not found"));
    };
    let before = obj.clone();
    apply(&mut obj, &patch);
    if obj == before {
        // A no-op patch changes nothing, as on kube-apiserver.
        return ([("content-type", "application/json")], obj.to_string()).into_response();
    }
    let obj = store.emit(&mut g, "MODIFIED", obj);
    g.nodes.insert(name, obj.clone());
    ([("content-type", "application/json")], obj.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a":"b","c":{"d":"e","f":"g"}});
        merge_patch(&mut t, &json!({"a":"z","c":{"f":null}}));
        assert_eq!(t, json!({"a":"z","c":{"d":"e"}}));
    }

    #[test]
    fn strategic_merge_patch_merges_conditions_by_type() {
        let mut t = json!({"status":{"conditions":[
            {"type":"Ready","status":"True"},
            {"type":"NetworkUnavailable","status":"True","reason":"NoRouteCreated"}]}});
        strategic_merge_patch(
            &mut t,
            &json!({"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp"}]}}),
        );
        assert_eq!(
            t,
            json!({"status":{"conditions":[
                {"type":"Ready","status":"True"},
                {"type":"NetworkUnavailable","status":"False","reason":"FlannelIsUp"}]}})
        );
        strategic_merge_patch(
            &mut t,
            &json!({"status":{"conditions":[{"type":"X","status":"False"}]}}),
        );
        assert_eq!(t["status"]["conditions"].as_array().unwrap().len(), 3);
    }
}
