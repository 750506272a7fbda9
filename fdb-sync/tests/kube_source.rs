//! The Kubernetes source against the fake API server on loopback: list, watch events, 410 Gone
//! re-lists, API server restarts, and the annotation patch in Flannel's format. No root needed.

use std::collections::BTreeMap;
use std::time::Duration;

use fdb_sync::fake_apiserver::FakeApiServer;
use fdb_sync::kube::{self as ks, Announcement, Update};
use fdb_sync::model::node;
use fdb_sync::model::{
    NodeView, ANN_BACKEND_DATA, ANN_BACKEND_TYPE, ANN_BACKEND_V6_DATA, ANN_KUBE_SUBNET_MANAGER,
    ANN_PUBLIC_IP, ANN_PUBLIC_IPV6, ANN_PUBLIC_IPV6_OVERWRITE, ANN_PUBLIC_IP_OVERWRITE,
};
use k8s_openapi::api::core::v1::Node;
use tokio::sync::{mpsc, watch};

const LIMIT: Duration = Duration::from_secs(20);

/// A node that runs Flannel's vxlan backend (annotated), numbered i.
fn vx(i: u8) -> Node {
    node(
        &format!("n{i}"),
        Some(&format!("10.244.{i}.0/24")),
        &format!("198.18.0.{i}"),
        &[(ANN_BACKEND_TYPE, "vxlan")],
    )
}

struct Running {
    rx: mpsc::Receiver<Update>,
    announce: watch::Sender<Option<Announcement>>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(server: &FakeApiServer, own: &str) -> Running {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fdb-sync-kube-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = server.write_kubeconfig(&dir).unwrap();
    let client = ks::client(Some(&kc), None)
        .await
        .expect("client from kubeconfig");
    let (tx, rx) = mpsc::channel(4);
    let (announce, announce_rx) = watch::channel(None);
    let task = tokio::spawn(ks::run(client, own.to_string(), tx, announce_rx));
    Running {
        rx,
        announce,
        task,
        _dir: TempDir(dir),
    }
}

fn peer_names(u: &Update) -> Vec<String> {
    u.as_ref()
        .map(|s| s.peers.iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default()
}

/// Receives updates until `pred` holds; panics with the last update after LIMIT.
async fn until(r: &mut Running, what: &str, pred: impl Fn(&Update) -> bool) -> Update {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, r.rx.recv()).await {
            Ok(Some(u)) => {
                if pred(&u) {
                    return u;
                }
                last = Some(u);
            }
            Ok(None) => panic!("source ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; last update: {last:?}"),
        }
    }
}

async fn until_peers(r: &mut Running, want: &[&str]) -> fdb_sync::ClusterState {
    until(r, &format!("peers {want:?}"), |u| peer_names(u) == want)
        .await
        .expect("peers match only on Ok")
}

#[tokio::test]
async fn list_then_add_modify_delete() {
    let server = FakeApiServer::start_local().unwrap();
    server.apply(&vx(1));
    server.apply(&vx(2));
    // No backend-type: Flannel is not running there yet; skipped, not a peer.
    server.apply(&node("n3", Some("10.244.3.0/24"), "198.18.0.3", &[]));
    let mut r = start(&server, "n1").await;
    let s = until_peers(&mut r, &["n2"]).await;
    assert_eq!(s.own.name, "n1");
    assert_eq!(s.peers[0].v4.unwrap().vtep_ip.to_string(), "198.18.0.2");
    assert_eq!(
        s.peers[0].v4.unwrap().vtep_mac.to_string(),
        "0a:58:0a:f4:02:00"
    );
    assert!(
        s.skipped
            .iter()
            .any(|k| k.node == "n3" && k.reason.contains("backend-type")),
        "{:?}",
        s.skipped
    );

    server.apply(&vx(4));
    until_peers(&mut r, &["n2", "n4"]).await;

    // MODIFIED: new public IP and a new VtepMAC from backend-data.
    let mut n2 = vx(2);
    n2.metadata.annotations.as_mut().unwrap().extend([
        (ANN_PUBLIC_IP.to_string(), "198.18.0.42".to_string()),
        (
            ANN_BACKEND_DATA.to_string(),
            r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:42"}"#.to_string(),
        ),
    ]);
    server.apply(&n2);
    let u = until(&mut r, "n2 modified", |u| {
        u.as_ref().is_ok_and(|s| {
            s.peers
                .iter()
                .any(|p| p.name == "n2" && p.v4.unwrap().vtep_ip.to_string() == "198.18.0.42")
        })
    })
    .await;
    let p = u
        .unwrap()
        .peers
        .into_iter()
        .find(|p| p.name == "n2")
        .unwrap();
    assert_eq!(p.v4.unwrap().vtep_mac.to_string(), "02:00:00:00:00:42");

    // Flannel starts on n3: it becomes a peer.
    server.apply(&node(
        "n3",
        Some("10.244.3.0/24"),
        "198.18.0.3",
        &[(ANN_BACKEND_TYPE, "vxlan")],
    ));
    until_peers(&mut r, &["n2", "n3", "n4"]).await;

    assert!(server.delete("n4"));
    until_peers(&mut r, &["n2", "n3"]).await;
    // One list, then watches only.
    let lists = server
        .requests()
        .iter()
        .filter(|q| q.starts_with("GET /api/v1/nodes?") && !q.contains("watch="))
        .count();
    assert_eq!(lists, 1, "{:?}", server.requests());
}

#[tokio::test]
async fn waits_for_own_node_and_its_pod_cidr() {
    let server = FakeApiServer::start_local().unwrap();
    server.apply(&vx(2));
    let mut r = start(&server, "n1").await;
    let u = until(&mut r, "an error", Result::is_err).await;
    let e = u.unwrap_err();
    assert!(
        e.contains("waiting for node n1") && e.contains("not in the node list"),
        "{e}"
    );
    server.apply(&node("n1", None, "198.18.0.1", &[]));
    let u = until(&mut r, "podCIDR error", |u| {
        u.as_ref().is_err_and(|e| e.contains("podCIDR"))
    })
    .await;
    assert!(u.unwrap_err().contains("no IPv4 podCIDR"));
    server.apply(&vx(1));
    until_peers(&mut r, &["n2"]).await;
}

/// A delete that happened while the client's resourceVersion expired must disappear: the 410
/// forces a re-list, and the re-list replaces the whole set.
#[tokio::test]
async fn gone_410_relists_and_replaces_the_set() {
    let server = FakeApiServer::start_local().unwrap();
    for i in 1..=4 {
        server.apply(&vx(i));
    }
    let mut r = start(&server, "n1").await;
    until_peers(&mut r, &["n2", "n3", "n4"]).await;
    assert!(server.delete_unseen("n3"));
    server.disconnect_watches();
    until_peers(&mut r, &["n2", "n4"]).await;
    let reqs = server.requests();
    let lists = reqs
        .iter()
        .filter(|q| q.starts_with("GET /api/v1/nodes?") && !q.contains("watch="))
        .count();
    assert_eq!(lists, 2, "expected a re-list after 410: {reqs:?}");
    // And the watch continues after the re-list.
    server.apply(&vx(5));
    until_peers(&mut r, &["n2", "n4", "n5"]).await;
}

/// The API server goes away: the source sends nothing (the daemon keeps its last state), then
/// recovers by itself, including a delete it missed (410 on resume → re-list).
#[tokio::test]
async fn api_server_restart_keeps_state_and_recovers() {
    let mut server = FakeApiServer::start_local().unwrap();
    for i in 1..=3 {
        server.apply(&vx(i));
    }
    let mut r = start(&server, "n1").await;
    until_peers(&mut r, &["n2", "n3"]).await;
    server.stop();
    // Nothing is sent while it is down: no empty peer set, no error replacing the state.
    let quiet = tokio::time::timeout(Duration::from_secs(2), r.rx.recv()).await;
    assert!(
        quiet.is_err(),
        "source sent {quiet:?} while the API server was down"
    );
    // Changes made while it was away, history compacted.
    assert!(server.delete_unseen("n2"));
    server.restart().unwrap();
    until_peers(&mut r, &["n3"]).await;
    server.apply(&vx(6));
    until_peers(&mut r, &["n3", "n6"]).await;

    // Restart without compaction: the watch resumes from its resourceVersion, no re-list.
    let lists_before = server
        .requests()
        .iter()
        .filter(|q| !q.contains("watch=") && q.starts_with("GET /api/v1/nodes?"))
        .count();
    server.stop();
    server.restart().unwrap();
    server.apply(&vx(7));
    until_peers(&mut r, &["n3", "n6", "n7"]).await;
    let lists_after = server
        .requests()
        .iter()
        .filter(|q| !q.contains("watch=") && q.starts_with("GET /api/v1/nodes?"))
        .count();
    assert_eq!(lists_before, lists_after, "{:?}", server.requests());
}

fn announcement() -> Announcement {
    Announcement {
        vtep_mac: "0a:58:0a:f4:01:00".parse().unwrap(),
        public_ip: Some("198.18.0.1".parse().unwrap()),
        vni: 1,
        v6: None,
        set_node_network_unavailable: false,
    }
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn publishes_flannel_annotations_once_and_exactly() {
    let server = FakeApiServer::start_local().unwrap();
    server.apply(&node("n1", Some("10.244.1.0/24"), "198.18.0.1", &[]));
    server.apply(&vx(2));
    let mut r = start(&server, "n1").await;
    until_peers(&mut r, &["n2"]).await;
    assert!(
        server.patches().is_empty(),
        "patched before the announcement"
    );
    r.announce.send_replace(Some(announcement()));
    let p = wait_for("a patch", || server.patches().into_iter().next()).await;
    assert_eq!(p.node, "n1");
    assert_eq!(p.content_type, "application/merge-patch+json");
    let body = p.body.as_object().unwrap();
    assert_eq!(body.len(), 1, "{body:?}");
    let ann = p.body["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(p.body["metadata"].as_object().unwrap().len(), 1);
    assert_eq!(ann.len(), 4, "{ann:?}");
    assert_eq!(ann[ANN_BACKEND_TYPE], "vxlan");
    // Byte for byte what Go's json.Marshal of flannel's vxlanLeaseAttrs gives.
    assert_eq!(
        ann[ANN_BACKEND_DATA],
        r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}"#
    );
    assert_eq!(ann[ANN_PUBLIC_IP], "198.18.0.1");
    assert_eq!(ann[ANN_KUBE_SUBNET_MANAGER], "true");
    let stored = server.node("n1").unwrap();
    let have = stored.metadata.annotations.unwrap();
    assert_eq!(have[ANN_BACKEND_TYPE], "vxlan");
    // The MODIFIED event of our own patch causes no second patch.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.patches().len(), 1, "{:?}", server.patches());

    // Someone removes one annotation: only that key is patched back.
    let mut n1 = server.node("n1").unwrap();
    n1.metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(ANN_PUBLIC_IP);
    server.apply(&n1);
    let p = wait_for("a second patch", || server.patches().get(1).cloned()).await;
    let ann = p.body["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(ann.keys().collect::<Vec<_>>(), [ANN_PUBLIC_IP], "{ann:?}");
}

#[tokio::test]
async fn restart_with_annotations_in_place_patches_nothing() {
    let server = FakeApiServer::start_local().unwrap();
    let ann = ks::desired_annotations(&vx(1), &announcement());
    let pairs: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    server.apply(&node("n1", Some("10.244.1.0/24"), "198.18.0.1", &pairs));
    let mut r = start(&server, "n1").await;
    let u = until(&mut r, "state", Result::is_ok).await;
    assert!(u.unwrap().own.vtep_mac_annotated);
    r.announce.send_replace(Some(announcement()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(server.patches().is_empty(), "{:?}", server.patches());
}

#[test]
fn annotation_patch_only_sends_differences_and_honours_overwrite() {
    let a = announcement();
    let n = node(
        "n1",
        Some("10.244.1.0/24"),
        "198.18.0.1",
        &[
            (ANN_BACKEND_TYPE, "vxlan"),
            (ANN_PUBLIC_IP_OVERWRITE, "203.0.113.7"),
        ],
    );
    let p = ks::annotation_patch(&n, &a).unwrap();
    let ann: BTreeMap<String, String> =
        serde_json::from_value(p["metadata"]["annotations"].clone()).unwrap();
    assert!(!ann.contains_key(ANN_BACKEND_TYPE));
    assert_eq!(ann[ANN_PUBLIC_IP], "203.0.113.7");
    assert_eq!(ann.len(), 3);
    let done = node(
        "n1",
        Some("10.244.1.0/24"),
        "198.18.0.1",
        &ks::desired_annotations(&n, &a)
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([(ANN_PUBLIC_IP_OVERWRITE, "203.0.113.7")])
            .collect::<Vec<_>>(),
    );
    assert_eq!(ks::annotation_patch(&done, &a), None);
}

/// `--kube-annotation-prefix`: `<prefix>X` keys read as the model's default keys, and written
/// back under the prefix; keys under other prefixes are not read.
#[test]
fn annotation_prefix_maps_keys_both_ways() {
    let p = "example.com/net-";
    assert_eq!(
        ks::to_model_key("example.com/net-backend-data", p).as_deref(),
        Some("flannel.alpha.coreos.com/backend-data")
    );
    assert_eq!(
        ks::to_model_key("flannel.alpha.coreos.com/backend-data", p),
        None
    );
    assert_eq!(
        ks::to_wire_key("flannel.alpha.coreos.com/public-ip", p),
        "example.com/net-public-ip"
    );
    let d = "flannel.alpha.coreos.com/";
    assert_eq!(
        ks::to_model_key("flannel.alpha.coreos.com/public-ip", d).as_deref(),
        Some("flannel.alpha.coreos.com/public-ip")
    );
    assert_eq!(
        ks::to_wire_key("flannel.alpha.coreos.com/public-ip", d),
        "flannel.alpha.coreos.com/public-ip"
    );
}

/// flanneld's `--set-node-network-unavailable` (default true): after the annotations, one
/// strategic merge patch to nodes/<name>/status sets NetworkUnavailable=False with Flannel's
/// reason and message (pkg/subnet/kube/kube.go CompleteLease); the node's other conditions stay.
#[tokio::test]
async fn network_unavailable_condition_set_false_as_flanneld_does() {
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    let server = FakeApiServer::start_local().unwrap();
    let mut n1 = vx(1);
    let status = n1.status.get_or_insert_with(NodeStatus::default);
    status.conditions = Some(vec![
        NodeCondition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: Some("KubeletNotReady".into()),
            ..NodeCondition::default()
        },
        NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "True".into(),
            reason: Some("NoRouteCreated".into()),
            ..NodeCondition::default()
        },
    ]);
    server.apply(&n1);
    server.apply(&vx(2));
    let mut r = start(&server, "n1").await;
    until_peers(&mut r, &["n2"]).await;
    assert!(
        server.patches().is_empty(),
        "patched before the announcement"
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    r.announce.send_replace(Some(Announcement {
        set_node_network_unavailable: true,
        ..announcement()
    }));
    let p = wait_for("the condition patch", || server.patches().get(1).cloned()).await;
    // The annotations come first, as flanneld writes them in AcquireLease before CompleteLease.
    assert!(server.patches()[0].body["metadata"]["annotations"].is_object());
    assert_eq!(p.node, "n1");
    assert_eq!(p.content_type, "application/strategic-merge-patch+json");
    let body = p.body.as_object().unwrap();
    assert_eq!(body.keys().collect::<Vec<_>>(), ["status"], "{body:?}");
    let status = p.body["status"].as_object().unwrap();
    assert_eq!(
        status.keys().collect::<Vec<_>>(),
        ["conditions"],
        "{status:?}"
    );
    let conds = p.body["status"]["conditions"].as_array().unwrap();
    assert_eq!(conds.len(), 1, "{conds:?}");
    let c = conds[0].as_object().unwrap();
    let mut keys: Vec<&str> = c.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "lastHeartbeatTime",
            "lastTransitionTime",
            "message",
            "reason",
            "status",
            "type"
        ]
    );
    assert_eq!(c["type"], "NetworkUnavailable");
    assert_eq!(c["status"], "False");
    assert_eq!(c["reason"], "FlannelIsUp");
    assert_eq!(c["message"], "Flannel is running on this node");
    for t in ["lastHeartbeatTime", "lastTransitionTime"] {
        let v = c[t].as_str().unwrap();
        // RFC 3339 in seconds, UTC, as Go's metav1.Time marshals: 2006-01-02T15:04:05Z
        assert!(
            v.len() == 20 && v.ends_with('Z') && v.as_bytes()[10] == b'T',
            "{t}={v}"
        );
        let ts: k8s_openapi::jiff::Timestamp = v.parse().unwrap();
        let secs = u64::try_from(ts.as_second()).unwrap();
        assert!(secs + 1 >= before && secs <= before + 60, "{t}={v}");
    }
    assert_eq!(c["lastHeartbeatTime"], c["lastTransitionTime"]);
    // Stored: NetworkUnavailable replaced by type, Ready untouched.
    let stored = server.node("n1").unwrap();
    let conds = stored.status.unwrap().conditions.unwrap();
    assert_eq!(conds.len(), 2, "{conds:?}");
    let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
    let nu = conds
        .iter()
        .find(|c| c.type_ == "NetworkUnavailable")
        .unwrap();
    assert_eq!(
        (nu.status.as_str(), nu.reason.as_deref()),
        ("False", Some("FlannelIsUp"))
    );
    // Once per start: the MODIFIED events of our own patches cause no further patch.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.patches().len(), 2, "{:?}", server.patches());
}

/// `--set-node-network-unavailable=false`: the annotations only, no condition patch.
#[tokio::test]
async fn network_unavailable_condition_left_alone_when_disabled() {
    let server = FakeApiServer::start_local().unwrap();
    server.apply(&vx(1));
    server.apply(&vx(2));
    let mut r = start(&server, "n1").await;
    until_peers(&mut r, &["n2"]).await;
    r.announce.send_replace(Some(announcement()));
    wait_for("the annotation patch", || {
        server.patches().into_iter().next()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let patches = server.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert!(patches[0].body.get("status").is_none(), "{patches:?}");
}

/// With IPv6 on, the v6 VTEP is published as flanneld's vxlan backend publishes flannel-v6.1:
/// `backend-v6-data` in backend-data's format, `public-ipv6` (the overwrite winning), and the
/// model reads both back.
#[test]
fn ipv6_vtep_is_published_as_flannel_does_and_read_back() {
    let a = Announcement {
        v6: Some(ks::AnnouncementV6 {
            vtep_mac: "02:11:22:33:44:55".parse().unwrap(),
            public_ip: "fd00:198:18::1".parse().unwrap(),
        }),
        ..announcement()
    };
    let n = node(
        "n1",
        Some("10.244.1.0/24"),
        "198.18.0.1",
        &[(ANN_BACKEND_TYPE, "vxlan")],
    );
    let ann = ks::desired_annotations(&n, &a);
    assert_eq!(
        ann[ANN_BACKEND_V6_DATA],
        r#"{"VNI":1,"VtepMAC":"02:11:22:33:44:55"}"#
    );
    assert_eq!(ann[ANN_PUBLIC_IPV6], "fd00:198:18::1");
    assert_eq!(ann.len(), 6, "{ann:?}");
    // IPv4 only: neither key.
    let v4 = ks::desired_annotations(&n, &announcement());
    assert!(!v4.contains_key(ANN_BACKEND_V6_DATA) && !v4.contains_key(ANN_PUBLIC_IPV6));

    let over = node(
        "n1",
        Some("10.244.1.0/24"),
        "198.18.0.1",
        &[
            (ANN_BACKEND_TYPE, "vxlan"),
            (ANN_PUBLIC_IPV6_OVERWRITE, "2001:db8::7"),
        ],
    );
    assert_eq!(
        ks::desired_annotations(&over, &a)[ANN_PUBLIC_IPV6],
        "2001:db8::7"
    );

    let mut spec = n.spec.clone().unwrap();
    spec.pod_cidrs = Some(vec!["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()]);
    let published = Node {
        spec: Some(spec),
        ..node(
            "n1",
            Some("10.244.1.0/24"),
            "198.18.0.1",
            &ann.iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        )
    };
    let v = NodeView::from_node(&published).unwrap();
    assert_eq!(v.vtep_mac_v6.unwrap().to_string(), "02:11:22:33:44:55");
    assert!(v.vtep_mac_v6_annotated);
    assert_eq!(v.public_ip_v6, Some("fd00:198:18::1".parse().unwrap()));
    assert_eq!(v.pod_cidr_v6, Some("fd00:10:244:1::/64".parse().unwrap()));
    assert_eq!(ks::annotation_patch(&published, &a), None);
}

/// IPv6-only (EnableIPv4 false): flanneld's vxlan backend has no IPv4 device, its BackendData
/// marshals to `null` and kube.go's AcquireLease then writes neither `backend-data` nor
/// `public-ip` (not even from `public-ip-overwrite`): only `backend-type`,
/// `kube-subnet-manager`, `backend-v6-data` and `public-ipv6`. The model reads such a node
/// back as an IPv6-only peer.
#[test]
fn ipv6_only_vtep_is_published_without_the_ipv4_keys() {
    let a = Announcement {
        public_ip: None,
        vtep_mac: "0a:58:00:00:00:00".parse().unwrap(),
        v6: Some(ks::AnnouncementV6 {
            vtep_mac: "02:11:22:33:44:55".parse().unwrap(),
            public_ip: "fd00:18::1".parse().unwrap(),
        }),
        ..announcement()
    };
    let n = node(
        "n1",
        Some("fd00:10:244:1::/64"),
        "fd00:18::1",
        &[(ANN_PUBLIC_IP_OVERWRITE, "198.18.0.9")],
    );
    let ann = ks::desired_annotations(&n, &a);
    assert_eq!(
        ann.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut k = vec![
                ANN_BACKEND_TYPE,
                ANN_KUBE_SUBNET_MANAGER,
                ANN_BACKEND_V6_DATA,
                ANN_PUBLIC_IPV6,
            ];
            k.sort_unstable();
            k
        },
        "{ann:?}"
    );
    assert_eq!(ann[ANN_BACKEND_TYPE], "vxlan");
    assert_eq!(ann[ANN_KUBE_SUBNET_MANAGER], "true");
    assert_eq!(
        ann[ANN_BACKEND_V6_DATA],
        r#"{"VNI":1,"VtepMAC":"02:11:22:33:44:55"}"#
    );
    assert_eq!(ann[ANN_PUBLIC_IPV6], "fd00:18::1");
    let patch = ks::annotation_patch(&n, &a).unwrap();
    let keys = patch["metadata"]["annotations"].as_object().unwrap();
    assert!(
        !keys
            .keys()
            .any(|k| k.ends_with("/backend-data") || k.ends_with("/public-ip")),
        "{patch}"
    );

    let published = node(
        "n1",
        Some("fd00:10:244:1::/64"),
        "fd00:18::1",
        &ann.iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    );
    let v = NodeView::from_node(&published).unwrap();
    assert_eq!(v.pod_cidr, None);
    assert_eq!(v.public_ip, None);
    assert_eq!(v.pod_cidr_v6, Some("fd00:10:244:1::/64".parse().unwrap()));
    assert_eq!(v.public_ip_v6, Some("fd00:18::1".parse().unwrap()));
    assert_eq!(v.vtep_mac_v6.unwrap().to_string(), "02:11:22:33:44:55");
    assert_eq!(ks::annotation_patch(&published, &a), None);
}
