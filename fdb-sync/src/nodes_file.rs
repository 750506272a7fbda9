//! The bare-metal node source: a v1 NodeList (or `kind: List` of Nodes, as
//! `kubectl get nodes -o yaml` prints it) in YAML or JSON, parsed here and watched for changes
//! by [`watch`], which sends a whole [`ClusterState`] (or why the file was rejected) each time
//! the file changed and is complete. Like every node source it never touches the network.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use futures::{FutureExt, StreamExt};
use inotify::{EventMask, EventStream, Inotify, WatchMask};
use k8s_openapi::api::core::v1::Node;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{ClusterState, PeerFilter, SourceUpdate};

#[derive(Debug, thiserror::Error)]
pub enum NodesFileError {
    #[error("not a valid NodeList (YAML or JSON): {0}")]
    Syntax(String),
    #[error("kind is {0:?}: expected NodeList or List")]
    WrongKind(String),
    #[error("items[{index}] has kind {kind:?}: expected Node")]
    WrongItemKind { index: usize, kind: String },
    #[error("items[{index}] has no metadata.name")]
    Unnamed { index: usize },
    #[error("node {0:?} appears more than once")]
    Duplicate(String),
}

#[derive(Deserialize)]
struct RawList {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    items: Vec<serde_yaml::Value>,
}

/// Parses the text of a nodes file. Every item must be a named Node; any error rejects the
/// whole file so the caller keeps its last good state.
pub fn parse_node_list(text: &str) -> Result<Vec<Node>, NodesFileError> {
    let raw: RawList =
        serde_yaml::from_str(text).map_err(|e| NodesFileError::Syntax(e.to_string()))?;
    match raw.kind.as_deref() {
        None | Some("NodeList" | "List") => {}
        Some(k) => return Err(NodesFileError::WrongKind(k.to_string())),
    }
    let mut nodes = Vec::with_capacity(raw.items.len());
    let mut seen = std::collections::HashSet::new();
    for (index, item) in raw.items.into_iter().enumerate() {
        if let Some(kind) = item.get("kind").and_then(|k| k.as_str()) {
            if kind != "Node" {
                return Err(NodesFileError::WrongItemKind {
                    index,
                    kind: kind.to_string(),
                });
            }
        }
        let node: Node = serde_yaml::from_value(item)
            .map_err(|e| NodesFileError::Syntax(format!("items[{index}]: {e}")))?;
        let name = node
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(NodesFileError::Unnamed { index })?;
        if !seen.insert(name.clone()) {
            return Err(NodesFileError::Duplicate(name));
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// Reads and interprets the nodes file once: the state it describes for node `own`, or why it
/// cannot be used (naming the file).
pub fn load(path: &Path, own: &str) -> SourceUpdate {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read nodes file {}: {e}", path.display()))?;
    let nodes =
        parse_node_list(&text).map_err(|e| format!("nodes file {}: {e}", path.display()))?;
    ClusterState::from_nodes(&nodes, own, PeerFilter::AllowUnannotated)
        .map_err(|e| format!("nodes file {}: {e}", path.display()))
}

/// How often the nodes file's metadata is checked.
const FILE_POLL: Duration = Duration::from_millis(250);
/// How long the file's metadata must stay unchanged, once no writer holds it, before it is
/// read (several writers or a close-then-append sequence settle first).
const SETTLE: Duration = Duration::from_millis(300);
/// Without inotify, a changed file is read only after this long without a change: the best
/// polling can do against a writer that pauses (it cannot see that the file is still open).
const SETTLE_POLLED: Duration = Duration::from_secs(2);

type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Watches the nodes file and sends a state, or an error, whenever it changed and is complete.
/// Ends when the receiver is gone. A rejected file (unreadable, not a NodeList, this node
/// missing) is sent as an `Err` naming the file: the receiver keeps its last good state.
///
/// A file is never read half-written: `kubectl get nodes -o yaml > nodes.yaml` truncates and
/// writes in place, and a prefix of a NodeList can parse (and would remove every peer after
/// the cut). inotify on the directory says when a writer modified the file (`IN_MODIFY`) and
/// when it closed it (`IN_CLOSE_WRITE`) or renamed a finished file over it (`IN_MOVED_TO`);
/// the file is read only when no writer holds it and its metadata has been unchanged for
/// 300 ms. Without inotify (or after the kernel dropped events), metadata polled every 250 ms
/// must be unchanged for 2 s instead, which a writer that pauses longer can still defeat:
/// write to a temporary file and rename it over the nodes file to be safe everywhere.
pub async fn watch(path: PathBuf, own: String, tx: mpsc::Sender<SourceUpdate>) {
    let mut watch = match FileWatch::new(&path) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot watch the nodes file with inotify; polling it, and reading a change only after 2 s without another");
            None
        }
    };
    // A writer modified the file and has not closed it yet.
    let mut writing = false;
    let mut said_waiting = false;
    let mut seen = stamp(&path);
    let mut seen_since = Instant::now();
    // The stamp of the content last sent; `None` before the first read.
    let mut applied: Option<Stamp> = None;
    loop {
        if applied.is_some() {
            let mut lost = None;
            tokio::select! {
                ev = next_events(watch.as_mut()) => match ev {
                    Ok(events) => {
                        for e in events {
                            match e {
                                FileEvent::Modified => writing = true,
                                FileEvent::ClosedAfterWrite | FileEvent::Replaced | FileEvent::Overflow => writing = false,
                                FileEvent::CreatedOrRemoved => {}
                            }
                        }
                    }
                    Err(e) => lost = Some(e),
                },
                () = tokio::time::sleep(FILE_POLL) => {}
            }
            if let Some(e) = lost {
                warn!(path = %path.display(), error = %e, "inotify on the nodes file failed; polling it from now on");
                watch = None;
                writing = false;
            }
        }
        let now = stamp(&path);
        if now != seen {
            seen = now;
            seen_since = Instant::now();
        }
        if applied.is_some_and(|a| a == seen) {
            continue;
        }
        let settle = if watch.is_some() {
            SETTLE
        } else {
            SETTLE_POLLED
        };
        // The first read is not delayed: nothing has been applied yet that a partial file
        // could take away.
        if applied.is_some() && (writing || seen_since.elapsed() < settle) {
            if writing && !said_waiting && seen_since.elapsed() > Duration::from_secs(5) {
                info!(path = %path.display(), "nodes file changed and is still open for writing; applying it once the writer closes it");
                said_waiting = true;
            }
            continue;
        }
        said_waiting = false;
        applied = Some(seen);
        if tx.send(load(&path, &own)).await.is_err() {
            return;
        }
    }
}

async fn next_events(watch: Option<&mut FileWatch>) -> io::Result<Vec<FileEvent>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// What happened to the watched file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileEvent {
    /// Data or size changed (a write or a truncation); a writer may still be at work.
    Modified,
    /// A writer closed the file after writing.
    ClosedAfterWrite,
    /// Another file was renamed over it (an atomic replace: complete by construction).
    Replaced,
    /// It was created (a writer has it open) or removed / renamed away.
    CreatedOrRemoved,
    /// The kernel dropped events (queue overflow): nothing can be assumed.
    Overflow,
}

/// inotify on the file's directory (so renames over the file and re-creations are seen too),
/// through the `inotify` crate's tokio stream.
struct FileWatch {
    events: EventStream<Vec<u8>>,
    name: OsString,
}

impl FileWatch {
    /// Watches `path` (which need not exist yet; its directory must).
    fn new(path: &Path) -> io::Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} names no file", path.display()),
                )
            })?
            .to_os_string();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let ino = Inotify::init()?;
        ino.watches().add(
            dir,
            WatchMask::MODIFY
                | WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::CREATE
                | WatchMask::DELETE,
        )?;
        let events = ino.into_event_stream(vec![0u8; 4096])?;
        Ok(FileWatch { events, name })
    }

    fn classify(&self, e: &inotify::Event<OsString>) -> Option<FileEvent> {
        if e.mask.contains(EventMask::Q_OVERFLOW) {
            return Some(FileEvent::Overflow);
        }
        if e.name.as_deref() != Some(self.name.as_os_str()) {
            return None;
        }
        let m = e.mask;
        Some(if m.contains(EventMask::CLOSE_WRITE) {
            FileEvent::ClosedAfterWrite
        } else if m.contains(EventMask::MOVED_TO) {
            FileEvent::Replaced
        } else if m.contains(EventMask::MODIFY) {
            FileEvent::Modified
        } else {
            FileEvent::CreatedOrRemoved
        })
    }

    /// The next batch of events about the file (waits until there is at least one): the first
    /// event, and every other one already read or readable without waiting.
    async fn next(&mut self) -> io::Result<Vec<FileEvent>> {
        let ended = || io::Error::new(io::ErrorKind::UnexpectedEof, "inotify stream ended");
        loop {
            let first = self.events.next().await.ok_or_else(ended)??;
            let mut out: Vec<FileEvent> = self.classify(&first).into_iter().collect();
            while let Some(more) = self.events.next().now_or_never() {
                let e = more.ok_or_else(ended)??;
                out.extend(self.classify(&e));
            }
            if !out.is_empty() {
                return Ok(out);
            }
            // Only other files of the directory changed (a busy log beside the nodes file):
            // let the rest of the runtime run before reading again, and do not re-read the
            // nodes file.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodelist(n: usize) -> String {
        let mut s = String::from("apiVersion: v1\nkind: NodeList\nitems:\n");
        for i in 1..=n {
            s.push_str(&format!(
                "- metadata: {{name: node{i}}}\n  spec: {{podCIDR: 10.244.{i}.0/24}}\n  status: {{addresses: [{{type: InternalIP, address: 198.18.0.{i}}}]}}\n"
            ));
        }
        s
    }

    /// A directory of its own per test, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("fdb-sync-nodes-file-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Replaces `path` atomically, as a careful writer does.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Unprivileged twin of the root test in overlayd/tests/hostile.rs: a writer truncates the
    /// file, writes a parseable half, pauses longer than any settle window with the file open,
    /// then finishes. Nothing is sent until it closes the file; then the whole list is.
    #[tokio::test]
    async fn a_file_held_open_for_writing_is_not_read_until_closed() {
        use std::io::Write;
        let dir = TempDir::new("held-open");
        let path = dir.0.join("nodes.yaml");
        std::fs::write(&path, nodelist(6)).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(watch(path.clone(), "node1".into(), tx));
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!(first.peers.len(), 5);

        let full = nodelist(7);
        let cut = full.find("- metadata: {name: node3}").unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(&full.as_bytes()[..cut]).unwrap();
        f.flush().unwrap();
        let early = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
        assert!(
            early.is_err(),
            "read while still open for writing: {early:?}"
        );
        f.write_all(&full.as_bytes()[cut..]).unwrap();
        drop(f);
        let done = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the complete file is read once closed")
            .unwrap()
            .unwrap();
        assert_eq!(done.peers.len(), 6);
        task.abort();
    }

    /// A file that does not parse is sent as an error naming the file and the problem (the
    /// receiver keeps its last good state); the next good file, renamed over it, is applied.
    #[tokio::test]
    async fn a_broken_file_is_reported_and_the_next_good_one_applied() {
        let dir = TempDir::new("broken");
        let path = dir.0.join("nodes.yaml");
        std::fs::write(&path, nodelist(3)).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(watch(path.clone(), "node1".into(), tx));
        assert_eq!(rx.recv().await.unwrap().unwrap().peers.len(), 2);

        replace(&path, "kind: Pod\nitems: []\n");
        let err = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a replaced file is read")
            .unwrap()
            .unwrap_err();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("kind is \"Pod\""),
            "{err}"
        );

        replace(&path, nodelist(4).as_str());
        let good = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the good file is read")
            .unwrap()
            .unwrap();
        assert_eq!(good.peers.len(), 3);
        task.abort();
    }

    /// Writes to other files of the directory neither make the watcher read the nodes file
    /// again (nothing is sent) nor keep the runtime from running other tasks (this test runs
    /// on a single-threaded runtime, so a busy watcher would stop the ticker).
    #[tokio::test]
    async fn other_files_in_the_directory_neither_trigger_a_read_nor_starve_the_runtime() {
        let dir = TempDir::new("busy-dir");
        let path = dir.0.join("nodes.yaml");
        std::fs::write(&path, nodelist(2)).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(watch(path.clone(), "node1".into(), tx));
        assert_eq!(rx.recv().await.unwrap().unwrap().peers.len(), 1);

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log = dir.0.join("busy.log");
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::File::create(&log).unwrap();
                let mut writes = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    f.write_all(b"a line of log\n").unwrap();
                    writes += 1;
                }
                writes
            })
        };
        let mut ticks = 0u32;
        let mut interval = tokio::time::interval(Duration::from_millis(10));
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            interval.tick().await;
            ticks += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = writer.join().unwrap();
        assert!(writes > 1000, "the sibling file was written {writes} times");
        // 200 ticks are due in 2 s; far fewer means the watcher held the thread.
        assert!(ticks >= 50, "only {ticks} ticks of 10 ms in 2 s");
        assert!(
            rx.try_recv().is_err(),
            "other files' changes made the watcher send"
        );
        task.abort();
    }

    const KUBECTL_YAML: &str = r#"
apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: Node
  metadata:
    annotations:
      flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}'
      flannel.alpha.coreos.com/backend-type: vxlan
      flannel.alpha.coreos.com/kube-subnet-manager: "true"
      flannel.alpha.coreos.com/public-ip: 198.18.0.1
    labels:
      kubernetes.io/hostname: n1
    name: n1
  spec:
    podCIDR: 10.244.1.0/24
    podCIDRs:
    - 10.244.1.0/24
  status:
    addresses:
    - address: 198.18.0.1
      type: InternalIP
    - address: n1
      type: Hostname
- apiVersion: v1
  kind: Node
  metadata:
    name: n2
  spec:
    podCIDR: 10.244.2.0/24
  status:
    addresses:
    - address: 198.18.0.2
      type: InternalIP
"#;

    #[test]
    fn parses_kubectl_output_yaml() {
        let nodes = parse_node_list(KUBECTL_YAML).unwrap();
        assert_eq!(nodes.len(), 2);
        let s = ClusterState::from_nodes(&nodes, "n2", PeerFilter::AllowUnannotated).unwrap();
        assert_eq!(s.peers.len(), 1);
        assert_eq!(
            s.peers[0].v4.unwrap().vtep_mac.to_string(),
            "02:00:00:00:00:01"
        );
        assert_eq!(s.peers[0].v4.unwrap().vtep_ip.to_string(), "198.18.0.1");
        assert_eq!(s.own_vtep_mac().to_string(), "0a:58:0a:f4:02:00");
    }

    #[test]
    fn parses_json_nodelist() {
        let json = r#"{"apiVersion":"v1","kind":"NodeList","items":[
            {"metadata":{"name":"a"},"spec":{"podCIDR":"10.244.1.0/24"},
             "status":{"addresses":[{"type":"InternalIP","address":"198.18.0.1"}]}}]}"#;
        let nodes = parse_node_list(json).unwrap();
        assert_eq!(nodes[0].metadata.name.as_deref(), Some("a"));
    }

    #[test]
    fn rejects_broken_files_with_reason() {
        let cases = [
            ("items: [", "not a valid NodeList"),
            ("kind: Pod\nitems: []", "kind is \"Pod\""),
            (
                "items:\n- kind: Service\n  metadata: {name: a}",
                "items[0] has kind \"Service\"",
            ),
            ("items:\n- metadata: {}", "items[0] has no metadata.name"),
            (
                "items:\n- metadata: {name: a}\n- metadata: {name: a}",
                "node \"a\" appears more than once",
            ),
            (
                "items:\n- metadata: {name: a}\n  spec: {podCIDR: 5}",
                "items[0]",
            ),
        ];
        for (text, want) in cases {
            let err = parse_node_list(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn empty_list_is_valid() {
        assert!(
            parse_node_list("apiVersion: v1\nkind: NodeList\nitems: []\n")
                .unwrap()
                .is_empty()
        );
    }
}
