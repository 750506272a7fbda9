//! Node sources (Kubernetes, NodeList file, Flannel's etcd leases) and the node model of overlayd.
//!
//! This crate owns the translation from Kubernetes `Node` objects (read from the API server or
//! from a NodeList file) to the desired forwarding state of one node: its own podCIDR and VtepMAC,
//! and the set of peers it must reach. It never touches the network: the daemon programs what
//! this crate computes.
#![forbid(unsafe_code)]

pub mod etcd;
#[cfg(feature = "fake-apiserver")]
pub mod fake_apiserver;
pub mod kube;
pub mod model;
pub mod nodes_file;

pub use model::{
    derive_vtep_mac, ClusterState, IpFamily, MacAddr, ModelError, NodeView, Peer, PeerFilter,
    PeerPolicy, PeerV4, PeerV6, SkipReason, Skipped, StoredPublicIp,
};
pub use nodes_file::{parse_node_list, NodesFileError};

/// What every node source sends: the whole desired state each time it changed, or why the
/// latest input was rejected (the receiver keeps its last good state and reports the error).
/// A source is a task taking an `mpsc::Sender<SourceUpdate>` that returns when the receiver is
/// gone: [`nodes_file::watch`], [`kube::run`].
pub type SourceUpdate = Result<ClusterState, String>;
