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
pub mod subnet_env;

pub use model::{
    derive_vtep_mac, ClusterState, MacAddr, ModelError, NodeView, Peer, PeerFilter, PeerPolicy,
    SkipReason, Skipped,
};
pub use nodes_file::{parse_node_list, NodesFileError};
pub use subnet_env::SubnetEnv;
