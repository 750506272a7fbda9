//! Node sources: tasks that send the full desired `ClusterState` each time it changes.
//! The nodes file source lives here; the Kubernetes source lives in `fdb-sync`. Both send
//! whole states, so the control loop has one reconcile path whatever the source.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fdb_sync::{ClusterState, PeerFilter};
use tokio::sync::mpsc;

/// What a source sends: a full state, or why the latest input was rejected (the control loop
/// keeps the last good state and reports the error once).
pub type SourceUpdate = Result<ClusterState, String>;

/// How often the nodes file's metadata is checked.
const FILE_POLL: Duration = Duration::from_millis(250);

fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
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

/// Watches the nodes file (metadata polled every 250 ms; a rename over it counts as a change)
/// and sends a state, or an error, whenever it changes. Ends when the receiver is gone.
pub async fn watch_nodes_file(path: PathBuf, own: String, tx: mpsc::Sender<SourceUpdate>) {
    let mut last = None;
    let mut first = true;
    loop {
        let now = stamp(&path);
        if first || now.is_none() || now != last {
            // A missing file is reported every poll only while it stays missing and changes
            // nothing; the control loop de-duplicates identical errors.
            last = now;
            first = false;
            if tx.send(load_nodes_file(&path, &own)).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(FILE_POLL).await;
    }
}
