//! Node sources: tasks that send the full desired `ClusterState` each time it changes.
//! The nodes file source lives here; the Kubernetes source lives in `fdb-sync`. Both send
//! whole states, so the control loop has one reconcile path whatever the source.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use fdb_sync::{ClusterState, PeerFilter};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::sys::inotify::{FileEvent, FileWatch};

/// What a source sends: a full state, or why the latest input was rejected (the control loop
/// keeps the last good state and reports the error once).
pub type SourceUpdate = Result<ClusterState, String>;

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

/// Reads and interprets the nodes file once.
pub fn load_nodes_file(path: &Path, own: &str) -> SourceUpdate {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read nodes file {}: {e}", path.display()))?;
    let nodes = fdb_sync::parse_node_list(&text)
        .map_err(|e| format!("nodes file {}: {e}", path.display()))?;
    ClusterState::from_nodes(&nodes, own, PeerFilter::AllowUnannotated)
        .map_err(|e| format!("nodes file {}: {e}", path.display()))
}

/// Watches the nodes file and sends a state, or an error, whenever it changed and is complete.
/// Ends when the receiver is gone.
///
/// A file is never read half-written: `kubectl get nodes -o yaml > nodes.yaml` truncates and
/// writes in place, and a prefix of a NodeList can parse (and would remove every peer after
/// the cut). inotify on the directory says when a writer modified the file (`IN_MODIFY`) and
/// when it closed it (`IN_CLOSE_WRITE`) or renamed a finished file over it (`IN_MOVED_TO`);
/// the file is read only when no writer holds it and its metadata has been unchanged for
/// 300 ms. Without inotify (or after the kernel dropped events), metadata polled every 250 ms
/// must be unchanged for 2 s instead, which a writer that pauses longer can still defeat:
/// write to a temporary file and rename it over the nodes file to be safe everywhere.
pub async fn watch_nodes_file(path: PathBuf, own: String, tx: mpsc::Sender<SourceUpdate>) {
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
                ev = next_events(watch.as_ref()) => match ev {
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
        if tx.send(load_nodes_file(&path, &own)).await.is_err() {
            return;
        }
    }
}

async fn next_events(watch: Option<&FileWatch>) -> std::io::Result<Vec<FileEvent>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn nodelist(n: usize) -> String {
        let mut s = String::from("apiVersion: v1\nkind: NodeList\nitems:\n");
        for i in 1..=n {
            s.push_str(&format!(
                "- metadata: {{name: node{i}}}\n  spec: {{podCIDR: 10.244.{i}.0/24}}\n  status: {{addresses: [{{type: InternalIP, address: 198.18.0.{i}}}]}}\n"
            ));
        }
        s
    }

    /// Unprivileged twin of the root test in tests/hostile.rs: a writer truncates the file,
    /// writes a parseable half, pauses longer than any settle window with the file open, then
    /// finishes. Nothing is sent until it closes the file; then the whole list is.
    #[tokio::test]
    async fn a_file_held_open_for_writing_is_not_read_until_closed() {
        let dir = std::env::temp_dir().join(format!("overlayd-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nodes.yaml");
        std::fs::write(&path, nodelist(6)).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(watch_nodes_file(path.clone(), "node1".into(), tx));
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
