//! The Kubernetes node source: watches Node objects with kube-rs and sends the full desired
//! [`ClusterState`] after every change, and publishes this node's Flannel annotations.
//!
//! It owns the connection to the API server and nothing else: it never touches the network
//! devices and never waits on the dataplane. When the API server is unreachable it simply sends
//! nothing, so the daemon keeps forwarding with the last good state. Every (re)list replaces the
//! whole node set, so a delete missed while disconnected cannot leave a stale peer.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::model::{
    BackendData, ClusterState, MacAddr, PeerFilter, ANN_BACKEND_DATA, ANN_BACKEND_TYPE,
    ANN_BACKEND_V6_DATA, ANN_KUBE_SUBNET_MANAGER, ANN_PUBLIC_IP, ANN_PUBLIC_IPV6,
    ANN_PUBLIC_IPV6_OVERWRITE, ANN_PUBLIC_IP_OVERWRITE,
};

/// What the source sends: a full state, or why there is none yet.
pub type Update = crate::SourceUpdate;

/// One Kubernetes API call this code makes: `(resource, verb)`. The RBAC manifest in
/// deploy/kubernetes must grant exactly these (a test checks it).
pub const API_CALLS: &[(&str, &str)] = &[
    ("nodes", "list"),
    ("nodes", "watch"),
    ("nodes", "get"),
    ("nodes/status", "patch"),
    // The node name from POD_NAME/POD_NAMESPACE when NODE_NAME is not set, as flanneld.
    ("pods", "get"),
];

/// Most events handled before the state is recomputed: a burst of MODIFIED events costs one
/// recomputation, not one per event.
const MAX_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "cannot read kubeconfig {path}: {source}; pass a readable file with --kubeconfig-file"
    )]
    ReadKubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "kubeconfig {path} is not usable: {source}; check its current-context, cluster and user"
    )]
    LoadKubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("no in-cluster configuration ({0}): run overlayd in a pod with a ServiceAccount, or pass --kubeconfig-file")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("--kube-api-url {url} is not a URL: {reason}")]
    ApiUrl { url: String, reason: String },
    #[error("cannot find this node's name from pod {pod} (POD_NAMESPACE/POD_NAME): {reason}; set NODE_NAME or pass --node-name, or grant pods get")]
    PodNodeName { pod: String, reason: String },
}

/// A client from `kubeconfig`, or from the pod's service account when `None`.
/// `api_url` (`--kube-api-url`) replaces the cluster URL of the kubeconfig or the in-cluster
/// configuration, as client-go's BuildConfigFromFlags does for flanneld.
pub async fn client(kubeconfig: Option<&Path>, api_url: Option<&str>) -> Result<Client, KubeError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                KubeError::ReadKubeconfig {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::LoadKubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => match api_url {
            // client-go: a master URL alone needs no in-cluster files.
            Some(_) => match kube::Config::incluster() {
                Ok(c) => c,
                Err(_) => kube::Config::new("http://localhost".parse().expect("static URL parses")),
            },
            None => kube::Config::incluster().map_err(KubeError::InCluster)?,
        },
    };
    if let Some(url) = api_url {
        config.cluster_url = url.parse().map_err(|e| KubeError::ApiUrl {
            url: url.to_string(),
            reason: format!("{e}"),
        })?;
    }
    Client::try_from(config).map_err(KubeError::Client)
}

/// The node a pod runs on (`spec.nodeName`), as flanneld finds its node name from
/// `POD_NAME` and `POD_NAMESPACE` (pkg/subnet/kube/kube.go NewSubnetManager).
pub async fn pod_node_name(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<String, KubeError> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, namespace);
    let pod = pods.get(name).await.map_err(|e| KubeError::PodNodeName {
        pod: format!("{namespace}/{name}"),
        reason: e.to_string(),
    })?;
    pod.spec
        .and_then(|s| s.node_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| KubeError::PodNodeName {
            pod: format!("{namespace}/{name}"),
            reason: "node name not present in the pod's spec".into(),
        })
}

/// `--kube-annotation-prefix` as Flannel builds it (ends in `/` or `-`), when not the default.
static ANNOTATION_PREFIX_OVERRIDE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the annotation prefix this process reads and writes instead of
/// `flannel.alpha.coreos.com/` (once, before [`run`]). The model keeps working with the
/// default keys: [`trim`] maps `<prefix>X` to `flannel.alpha.coreos.com/X` on the way in and
/// [`annotation_patch`] maps back on the way out, as Flannel reads and writes only
/// `<prefix>` keys (pkg/subnet/kube/annotations.go).
pub fn set_annotation_prefix(prefix: &str) {
    let _ = ANNOTATION_PREFIX_OVERRIDE.set(prefix.to_string());
}

fn annotation_prefix() -> &'static str {
    ANNOTATION_PREFIX_OVERRIDE
        .get()
        .map_or(crate::model::ANNOTATION_PREFIX, String::as_str)
}

/// `<prefix>X` as the model's `flannel.alpha.coreos.com/X`; `None` for other keys.
#[must_use]
pub fn to_model_key(key: &str, prefix: &str) -> Option<String> {
    key.strip_prefix(prefix)
        .map(|rest| format!("{}{rest}", crate::model::ANNOTATION_PREFIX))
}

/// The model's `flannel.alpha.coreos.com/X` as `<prefix>X`.
#[must_use]
pub fn to_wire_key(key: &str, prefix: &str) -> String {
    key.strip_prefix(crate::model::ANNOTATION_PREFIX)
        .map_or_else(|| key.to_string(), |rest| format!("{prefix}{rest}"))
}

/// What this node publishes about itself once its dataplane is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    pub vtep_mac: MacAddr,
    /// The IPv4 VTEP address (`public-ip`, with `backend-data`); `None` in an IPv6-only cluster,
    /// where flanneld writes neither key (its vxlan backend has no IPv4 device, so its
    /// `BackendData` marshals to `null`, which kube.go's AcquireLease skips).
    pub public_ip: Option<Ipv4Addr>,
    pub vni: u32,
    /// The IPv6 VTEP when `EnableIPv6` is on: published as `backend-v6-data` and `public-ipv6`.
    pub v6: Option<AnnouncementV6>,
    /// Set the Node's `NetworkUnavailable` condition to false once published, as flanneld does
    /// with `--set-node-network-unavailable` (its default, true).
    pub set_node_network_unavailable: bool,
}

/// This node's IPv6 VTEP as Flannel's vxlan backend publishes its `flannel-v6.<VNI>` device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnouncementV6 {
    pub vtep_mac: MacAddr,
    pub public_ip: Ipv6Addr,
}

/// The condition flanneld's kube subnet manager writes in `CompleteLease`
/// (pkg/subnet/kube/kube.go): type, status, reason and message exactly as Flannel has them.
pub const CONDITION_NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";
pub const NETWORK_UP_REASON: &str = "FlannelIsUp";
pub const NETWORK_UP_MESSAGE: &str = "Flannel is running on this node";

/// The strategic merge patch flanneld sends to `nodes/<name>/status` (client-go's
/// `PatchStatus`): one `NetworkUnavailable=False` condition, both times `now`. Conditions merge
/// by `type` under a strategic merge patch, so the node's other conditions stay.
#[must_use]
pub fn network_available_patch(now: jiff::Timestamp) -> serde_json::Value {
    use k8s_openapi::api::core::v1::NodeCondition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let condition = NodeCondition {
        type_: CONDITION_NETWORK_UNAVAILABLE.into(),
        status: "False".into(),
        reason: Some(NETWORK_UP_REASON.into()),
        message: Some(NETWORK_UP_MESSAGE.into()),
        last_transition_time: Some(Time(now)),
        last_heartbeat_time: Some(Time(now)),
    };
    serde_json::json!({ "status": { "conditions": [condition] } })
}

/// The annotations Flannel's vxlan backend writes for `a` on `node`. Like flanneld, an operator's
/// `public-ip-overwrite` becomes the published `public-ip`. IPv6-only (`a.public_ip` `None`):
/// `backend-type`, `kube-subnet-manager` and the IPv6 pair only, as flanneld (no
/// `backend-data`, no `public-ip`, whatever `public-ip-overwrite` says).
#[must_use]
pub fn desired_annotations(node: &Node, a: &Announcement) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([
        (ANN_BACKEND_TYPE.to_string(), "vxlan".to_string()),
        (ANN_KUBE_SUBNET_MANAGER.to_string(), "true".to_string()),
    ]);
    if let Some(own) = a.public_ip {
        let public_ip = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|m| m.get(ANN_PUBLIC_IP_OVERWRITE))
            .and_then(|v| v.trim().parse::<Ipv4Addr>().ok())
            .unwrap_or(own);
        // Field order and format exactly as Go's json.Marshal of flannel's vxlanLeaseAttrs.
        let data = serde_json::to_string(&BackendData {
            vni: a.vni,
            vtep_mac: a.vtep_mac.to_string(),
        })
        .expect("BackendData serializes");
        out.insert(ANN_BACKEND_DATA.to_string(), data);
        out.insert(ANN_PUBLIC_IP.to_string(), public_ip.to_string());
    }
    // Flannel (pkg/subnet/kube/kube.go, AcquireLease): backend-v6-data is the same JSON as
    // backend-data with the v6 device's MAC, and public-ipv6-overwrite wins over the address
    // found; without IPv6 neither key is written.
    if let Some(v6) = a.v6 {
        let public_ipv6 = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|m| m.get(ANN_PUBLIC_IPV6_OVERWRITE))
            .and_then(|v| v.trim().parse::<Ipv6Addr>().ok())
            .unwrap_or(v6.public_ip);
        let data = serde_json::to_string(&BackendData {
            vni: a.vni,
            vtep_mac: v6.vtep_mac.to_string(),
        })
        .expect("BackendData serializes");
        out.insert(ANN_BACKEND_V6_DATA.to_string(), data);
        out.insert(ANN_PUBLIC_IPV6.to_string(), public_ipv6.to_string());
    }
    out
}

/// The JSON merge patch that makes `node`'s annotations match `a`, or `None` when they already
/// do. Only differing keys are sent. `node` holds the model's keys (see [`trim`]); the patch
/// is written under the configured prefix ([`set_annotation_prefix`]).
#[must_use]
pub fn annotation_patch(node: &Node, a: &Announcement) -> Option<serde_json::Value> {
    let have = node.metadata.annotations.clone().unwrap_or_default();
    let prefix = annotation_prefix();
    let diff: serde_json::Map<String, serde_json::Value> = desired_annotations(node, a)
        .into_iter()
        .filter(|(k, v)| have.get(k) != Some(v))
        .map(|(k, v)| (to_wire_key(&k, prefix), serde_json::Value::String(v)))
        .collect();
    if diff.is_empty() {
        return None;
    }
    Some(serde_json::json!({ "metadata": { "annotations": diff } }))
}

/// Keeps only what the model and the annotator read (name, Flannel annotations, podCIDR(s),
/// addresses); without resourceVersion, so a status heartbeat compares equal and costs no
/// recomputation. Real Nodes carry managedFields, images and conditions
/// worth tens of KiB each; holding 5000 of them whole would cost hundreds of MiB.
#[must_use]
pub fn trim(node: Node) -> Node {
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let m = node.metadata;
    let prefix = annotation_prefix();
    let annotations = m.annotations.map(|a| {
        a.into_iter()
            .filter_map(|(k, v)| to_model_key(&k, prefix).map(|k| (k, v)))
            .collect()
    });
    Node {
        metadata: ObjectMeta {
            name: m.name,
            annotations,
            ..ObjectMeta::default()
        },
        spec: node.spec.map(|s| NodeSpec {
            pod_cidr: s.pod_cidr,
            pod_cidrs: s.pod_cidrs,
            ..NodeSpec::default()
        }),
        status: node.status.map(|s| NodeStatus {
            addresses: s.addresses,
            ..NodeStatus::default()
        }),
    }
}

/// Connection state, logged once per change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Conn {
    Starting,
    Synced,
    Relisting,
    Failing(String),
}

/// A coarse error class, so a retry loop failing the same way logs once.
fn classify(e: &watcher::Error) -> String {
    match e {
        watcher::Error::WatchError(s) => format!("watch error {}", s.code),
        watcher::Error::InitialListFailed(e) => format!("list failed: {}", short(e)),
        watcher::Error::WatchStartFailed(e) => format!("watch failed: {}", short(e)),
        watcher::Error::WatchFailed(e) => format!("watch stream failed: {}", short(e)),
        watcher::Error::NoResourceVersion => "no resourceVersion in list".into(),
    }
}

fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("HTTP {} {}", s.code, s.reason),
        kube::Error::HyperError(_) | kube::Error::Service(_) => "API server unreachable".into(),
        other => other.to_string(),
    }
}

/// Watches Nodes and sends the full state after every change (and, while this node or its
/// podCIDR is missing, why not). Publishes this node's annotations once `announce` holds a
/// value. Returns when the receiver of `tx` is gone.
/// flanneld's `GetStoredPublicIP`: GETs this node's Node once and returns its `node-public-ip`
/// and `node-public-ipv6` annotations (under the annotation prefix). An error says why the
/// Node could not be read; flanneld then logs it and goes on without them.
pub async fn stored_public_ip(
    client: Client,
    node_name: &str,
) -> Result<crate::model::StoredPublicIp, String> {
    let api: Api<Node> = Api::all(client);
    let node = api
        .get(node_name)
        .await
        .map_err(|e| format!("GET nodes/{node_name}: {e}"))?;
    Ok(crate::model::StoredPublicIp::of_node(
        &node,
        annotation_prefix(),
    ))
}

pub async fn run(
    client: Client,
    node_name: String,
    tx: mpsc::Sender<Update>,
    announce: watch::Receiver<Option<Announcement>>,
) {
    let api: Api<Node> = Api::all(client);
    let (own_tx, own_rx) = watch::channel::<Option<Node>>(None);
    let annotator = tokio::spawn(annotate(api.clone(), node_name.clone(), own_rx, announce));
    watch_nodes(api, &node_name, &tx, &own_tx).await;
    annotator.abort();
}

async fn watch_nodes(
    api: Api<Node>,
    node_name: &str,
    tx: &mpsc::Sender<Update>,
    own_tx: &watch::Sender<Option<Node>>,
) {
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut nodes: HashMap<String, Node> = HashMap::new();
    // Objects of a (re)list in progress; they replace `nodes` whole at InitDone.
    let mut relist: Option<HashMap<String, Node>> = None;
    let mut conn = Conn::Starting;
    let mut last_sent: Option<Update> = None;
    info!(node = node_name, "watching Nodes on the API server");
    loop {
        let Some(first) = stream.next().await else {
            warn!("Node watch ended; no further updates");
            return;
        };
        let mut changed = false;
        let mut next = Some(first);
        let mut n = 0;
        while let Some(ev) = next.take() {
            match ev {
                Ok(Event::Init) => relist = Some(HashMap::new()),
                Ok(Event::InitApply(node)) => {
                    if let (Some(buf), Some(name)) = (relist.as_mut(), node.metadata.name.clone()) {
                        buf.insert(name, trim(node));
                    }
                }
                Ok(Event::InitDone) => {
                    nodes = relist.take().unwrap_or_default();
                    changed = true;
                    if conn != Conn::Synced {
                        info!(nodes = nodes.len(), "Node list synced from the API server");
                        conn = Conn::Synced;
                    }
                }
                Ok(Event::Apply(node)) => {
                    if let Some(name) = node.metadata.name.clone() {
                        let node = trim(node);
                        if nodes.get(&name) != Some(&node) {
                            nodes.insert(name, node);
                            changed = true;
                        }
                    }
                }
                Ok(Event::Delete(node)) => {
                    if let Some(name) = &node.metadata.name {
                        changed |= nodes.remove(name).is_some();
                    }
                }
                Err(e) => {
                    let gone = matches!(&e, watcher::Error::WatchError(s) if s.code == 410);
                    let next_conn = if gone {
                        Conn::Relisting
                    } else {
                        Conn::Failing(classify(&e))
                    };
                    if next_conn != conn {
                        if gone {
                            info!("watch resourceVersion expired (410 Gone): re-listing all Nodes");
                        } else {
                            warn!(error = %e, "Kubernetes API server: {}; keeping the last good state and retrying with backoff", classify(&e));
                        }
                        conn = next_conn;
                    } else {
                        debug!(error = %e, "Node watch error (unchanged)");
                    }
                }
            }
            n += 1;
            if n < MAX_BATCH {
                next = stream.next().now_or_never().flatten();
            }
        }
        if !changed {
            continue;
        }
        let own = nodes.get(node_name);
        if own != own_tx.borrow().as_ref() {
            own_tx.send_replace(own.cloned());
        }
        let update = ClusterState::from_node_iter(
            nodes.values(),
            node_name,
            PeerFilter::RequireVxlanAnnotation,
        )
        .map_err(|e| format!("waiting for node {node_name} and its spec.podCIDR: {e}"));
        if last_sent.as_ref() == Some(&update) {
            continue;
        }
        last_sent = Some(update.clone());
        if tx.send(update).await.is_err() {
            return;
        }
    }
}

/// Keeps this node's Flannel annotations equal to the announcement: whenever the announcement
/// or the watched own Node changes and differs, GETs the Node fresh and merge-patches only the
/// differing keys into `nodes/<name>/status`. Then, once per start and when the announcement
/// asks for it, sets the `NetworkUnavailable` condition to false with a strategic merge patch
/// (what flanneld sends). Retries with backoff, logging once per outcome.
async fn annotate(
    api: Api<Node>,
    node_name: String,
    mut own: watch::Receiver<Option<Node>>,
    mut announce: watch::Receiver<Option<Announcement>>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut last_error = String::new();
    // NetworkUnavailable=False is written once per start, after the annotations, as flanneld
    // does in CompleteLease.
    let mut condition_done = false;
    loop {
        let a = *announce.borrow_and_update();
        let watched = own.borrow_and_update().clone();
        let needed = match (a, &watched) {
            (Some(a), Some(node)) => annotation_patch(node, &a).is_some(),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let mut result: Result<(), String> = Ok(());
        if let (true, Some(a)) = (needed, a) {
            match patch_own(&api, &node_name, &a).await {
                Ok(Some(patch)) => {
                    info!(node = %node_name, patch = %patch, "published Flannel annotations");
                }
                Ok(None) => {}
                Err(e) => result = Err(e),
            }
        }
        if let (Ok(()), Some(a), false) = (&result, a, condition_done) {
            if a.set_node_network_unavailable {
                let patch = network_available_patch(jiff::Timestamp::now());
                match api
                    .patch_status(
                        &node_name,
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
                {
                    Ok(_) => {
                        info!(node = %node_name, reason = NETWORK_UP_REASON, "set node condition NetworkUnavailable=False");
                        condition_done = true;
                    }
                    Err(e) => {
                        result = Err(format!(
                            "PATCH nodes/{node_name}/status (NetworkUnavailable=False): {e}"
                        ));
                    }
                }
            } else {
                condition_done = true;
            }
        }
        match result {
            Ok(()) => {
                last_error.clear();
                backoff = Duration::from_millis(500);
            }
            Err(e) => {
                if e != last_error {
                    warn!(node = %node_name, error = %e, "cannot publish this node's annotations or condition; retrying with backoff");
                    last_error = e;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        }
        tokio::select! {
            r = own.changed() => if r.is_err() { return },
            r = announce.changed() => if r.is_err() { return },
        }
    }
}

async fn patch_own(
    api: &Api<Node>,
    name: &str,
    a: &Announcement,
) -> Result<Option<serde_json::Value>, String> {
    let node = api
        .get(name)
        .await
        .map_err(|e| format!("GET node {name}: {e}"))?;
    let Some(patch) = annotation_patch(&trim(node), a) else {
        return Ok(None);
    };
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("PATCH nodes/{name}/status: {e}"))?;
    Ok(Some(patch))
}
