//! The node model: what a `Node` object means for the overlay, as Flannel's vxlan backend reads it.
//!
//! One function, [`ClusterState::from_nodes`], turns a full set of Nodes into the desired state;
//! both the nodes file and the Kubernetes watcher feed it, so they cannot disagree.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{Ipv4Network, Ipv6Network};
use k8s_openapi::api::core::v1::Node;
use serde::Deserialize;

/// Flannel's annotation prefix (`flannel.alpha.coreos.com/`).
pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com/";
pub const ANN_BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
pub const ANN_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
pub const ANN_BACKEND_V6_DATA: &str = "flannel.alpha.coreos.com/backend-v6-data";
pub const ANN_PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// Flannel's key is `public-ipv6` (pkg/subnet/kube/annotations.go), not `public-ip-v6`.
pub const ANN_PUBLIC_IPV6: &str = "flannel.alpha.coreos.com/public-ipv6";
pub const ANN_PUBLIC_IP_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ip-overwrite";
pub const ANN_PUBLIC_IPV6_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ipv6-overwrite";
pub const ANN_KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Unicast and not all-zero: usable as a VtepMAC.
    #[must_use]
    pub fn is_valid_vtep(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ModelError::BadMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("invalid MAC address {0:?}: expected six hex pairs like 0a:58:0a:f4:01:00")]
    BadMac(String),
    #[error("node {node}: invalid podCIDR {value:?}: {reason}")]
    BadPodCidr {
        node: String,
        value: String,
        reason: String,
    },
    #[error("node {node}: annotation {key} = {value:?} is not valid: {reason}")]
    BadAnnotation {
        node: String,
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("node {node} has no IPv4 public address: set annotation {ANN_PUBLIC_IP} or an InternalIP in status.addresses")]
    NoPublicIp { node: String },
    #[error("node {node} has no IPv4 podCIDR in spec.podCIDR(s)")]
    NoPodCidr { node: String },
    #[error("node {0} is not in the node list (check --node-name or the NODE_NAME env)")]
    OwnNodeMissing(String),
}

/// `backend-data` annotation: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`.
#[derive(Debug, Deserialize, serde::Serialize, Clone, PartialEq, Eq)]
pub struct BackendData {
    #[serde(rename = "VNI", default)]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

/// The VtepMAC derived from an IPv4 podCIDR when no annotation gives one:
/// `0a:58:` + the four bytes of the network address (locally administered, unicast).
#[must_use]
pub fn derive_vtep_mac(pod_cidr: Ipv4Network) -> MacAddr {
    let o = pod_cidr.network().octets();
    MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
}

/// A Node with only the fields overlayd reads, as a hand-written NodeList holds them: name,
/// `spec.podCIDR` (if any), one InternalIP and the given annotations. For tools, tests and
/// benchmarks that make Node objects.
#[must_use]
pub fn node(
    name: &str,
    pod_cidr: Option<&str>,
    internal_ip: &str,
    annotations: &[(&str, &str)],
) -> Node {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: pod_cidr.map(Into::into),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: internal_ip.into(),
            }]),
            ..Default::default()
        }),
    }
}

/// What overlayd needs to know about one Node, read and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub pod_cidr: Option<Ipv4Network>,
    pub pod_cidr_v6: Option<Ipv6Network>,
    /// `public-ip-overwrite`, else `public-ip`, else the first IPv4 InternalIP.
    pub public_ip: Option<Ipv4Addr>,
    pub public_ip_v6: Option<Ipv6Addr>,
    /// From `backend-data` when present, else derived from `pod_cidr`.
    pub vtep_mac: Option<MacAddr>,
    /// Whether `vtep_mac` came from the annotation (true) or was derived (false).
    pub vtep_mac_annotated: bool,
    pub backend_type: Option<String>,
}

impl NodeView {
    /// Reads a Node. Errors name the node, the field and the bad value.
    pub fn from_node(node: &Node) -> Result<Self, ModelError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let empty = BTreeMap::new();
        let ann = node.metadata.annotations.as_ref().unwrap_or(&empty);
        let spec = node.spec.as_ref();

        let mut cidrs: Vec<&str> = Vec::new();
        if let Some(s) = spec {
            if let Some(c) = &s.pod_cidr {
                cidrs.push(c);
            }
            if let Some(cs) = &s.pod_cidrs {
                cidrs.extend(cs.iter().map(String::as_str));
            }
        }
        let mut pod_cidr = None;
        let mut pod_cidr_v6 = None;
        for c in cidrs {
            let net = ipnetwork::IpNetwork::from_str(c).map_err(|e| ModelError::BadPodCidr {
                node: name.clone(),
                value: c.to_string(),
                reason: e.to_string(),
            })?;
            if net.network() != net.ip() {
                return Err(ModelError::BadPodCidr {
                    node: name.clone(),
                    value: c.to_string(),
                    reason: format!(
                        "host bits set; did you mean {}/{}?",
                        net.network(),
                        net.prefix()
                    ),
                });
            }
            match net {
                ipnetwork::IpNetwork::V4(n) => {
                    if n.prefix() > 30 {
                        return Err(ModelError::BadPodCidr {
                            node: name.clone(),
                            value: c.to_string(),
                            reason: "prefix longer than /30 leaves no room for pods".into(),
                        });
                    }
                    pod_cidr.get_or_insert(n);
                }
                ipnetwork::IpNetwork::V6(n) => {
                    pod_cidr_v6.get_or_insert(n);
                }
            }
        }

        let parse_ip = |key: &'static str| -> Result<Option<IpAddr>, ModelError> {
            match ann.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => v
                    .parse::<IpAddr>()
                    .map(Some)
                    .map_err(|e| ModelError::BadAnnotation {
                        node: name.clone(),
                        key,
                        value: v.to_string(),
                        reason: e.to_string(),
                    }),
            }
        };
        let mut public_ip = None;
        let mut public_ip_v6 = None;
        for key in [
            ANN_PUBLIC_IP_OVERWRITE,
            ANN_PUBLIC_IP,
            ANN_PUBLIC_IPV6_OVERWRITE,
            ANN_PUBLIC_IPV6,
        ] {
            match parse_ip(key)? {
                Some(IpAddr::V4(a)) => {
                    public_ip.get_or_insert(a);
                }
                Some(IpAddr::V6(a)) => {
                    public_ip_v6.get_or_insert(a);
                }
                None => {}
            }
        }
        if let Some(addrs) = node.status.as_ref().and_then(|s| s.addresses.as_ref()) {
            for a in addrs.iter().filter(|a| a.type_ == "InternalIP") {
                match a.address.parse::<IpAddr>() {
                    Ok(IpAddr::V4(v4)) => {
                        public_ip.get_or_insert(v4);
                    }
                    Ok(IpAddr::V6(v6)) => {
                        public_ip_v6.get_or_insert(v6);
                    }
                    Err(_) => {}
                }
            }
        }

        let mut vtep_mac = None;
        let mut vtep_mac_annotated = false;
        if let Some(raw) = ann.get(ANN_BACKEND_DATA).filter(|v| !v.trim().is_empty()) {
            let bad = |reason: String| ModelError::BadAnnotation {
                node: name.clone(),
                key: ANN_BACKEND_DATA,
                value: raw.clone(),
                reason,
            };
            let data: BackendData = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
            let mac: MacAddr = data
                .vtep_mac
                .parse()
                .map_err(|e: ModelError| bad(e.to_string()))?;
            if !mac.is_valid_vtep() {
                return Err(bad("VtepMAC must be a unicast, non-zero address".into()));
            }
            vtep_mac = Some(mac);
            vtep_mac_annotated = true;
        }
        if vtep_mac.is_none() {
            vtep_mac = pod_cidr.map(derive_vtep_mac);
        }

        Ok(NodeView {
            name,
            pod_cidr,
            pod_cidr_v6,
            public_ip,
            public_ip_v6,
            vtep_mac,
            vtep_mac_annotated,
            backend_type: ann.get(ANN_BACKEND_TYPE).cloned(),
        })
    }
}

/// First and last address of `net`, as integers.
fn cidr_bounds(net: Ipv4Network) -> (u32, u32) {
    let start = u32::from(net.network());
    (start, start | !u32::from(net.mask()))
}

/// A remote node this node forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    pub name: String,
    pub pod_cidr: Ipv4Network,
    pub vtep_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
}

/// Which nodes count as peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFilter {
    /// Hand-written NodeLists: any node with a podCIDR; `backend-type`, if set, must be `vxlan`.
    AllowUnannotated,
    /// Kubernetes: only nodes whose `backend-type` annotation is `vxlan` (Flannel's rule).
    RequireVxlanAnnotation,
}

/// A node left out of the peer set, and why (reported once by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub node: String,
    pub reason: String,
}

/// The desired state of one node, computed from the full node set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    pub own: NodeView,
    /// Sorted by name; unique pod CIDRs, VTEP MACs and names.
    pub peers: Vec<Peer>,
    pub skipped: Vec<Skipped>,
}

impl ClusterState {
    /// Builds the desired state from every Node known. A broken peer is skipped (and listed in
    /// `skipped`); only a missing or unusable own node is an error.
    pub fn from_nodes(
        nodes: &[Node],
        own_name: &str,
        filter: PeerFilter,
    ) -> Result<Self, ModelError> {
        Self::from_node_iter(nodes, own_name, filter)
    }

    /// [`ClusterState::from_nodes`] over any collection of Nodes (the Kubernetes source keeps
    /// them in a map and must not copy thousands of Nodes per event).
    pub fn from_node_iter<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        own_name: &str,
        filter: PeerFilter,
    ) -> Result<Self, ModelError> {
        let mut own = None;
        let mut views = Vec::new();
        let mut skipped = Vec::new();
        for n in nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            let view = NodeView::from_node(n);
            if name == own_name {
                own = Some(view?);
                continue;
            }
            match view {
                Ok(v) => views.push(v),
                Err(e) => skipped.push(Skipped {
                    node: name,
                    reason: e.to_string(),
                }),
            }
        }
        let own = own.ok_or_else(|| ModelError::OwnNodeMissing(own_name.to_string()))?;
        let own_cidr = own.pod_cidr.ok_or_else(|| ModelError::NoPodCidr {
            node: own.name.clone(),
        })?;

        views.sort_by(|a, b| a.name.cmp(&b.name));
        let mut peers: Vec<Peer> = Vec::new();
        // Accepted peer CIDRs by network address (they never overlap each other), so the
        // overlap check is O(log n) and 5000 nodes stay cheap.
        let mut by_start: BTreeMap<u32, (u32, usize)> = BTreeMap::new();
        let mut by_mac: HashMap<MacAddr, String> = HashMap::new();
        if let Some(m) = own.vtep_mac {
            by_mac.insert(m, own.name.clone());
        }
        for v in views {
            let skip = |reason: String| Skipped {
                node: v.name.clone(),
                reason,
            };
            match (filter, v.backend_type.as_deref()) {
                (_, Some("vxlan")) | (PeerFilter::AllowUnannotated, None) => {}
                (_, Some(other)) => {
                    skipped.push(skip(format!("backend-type is {other:?}, not \"vxlan\"")));
                    continue;
                }
                (PeerFilter::RequireVxlanAnnotation, None) => {
                    skipped.push(skip(
                        "no backend-type annotation yet (Flannel not running there)".into(),
                    ));
                    continue;
                }
            }
            let (Some(pod_cidr), Some(vtep_mac)) = (v.pod_cidr, v.vtep_mac) else {
                skipped.push(skip("no IPv4 podCIDR".into()));
                continue;
            };
            let Some(vtep_ip) = v.public_ip else {
                skipped.push(skip(
                    ModelError::NoPublicIp {
                        node: v.name.clone(),
                    }
                    .to_string(),
                ));
                continue;
            };
            if pod_cidr.overlaps(own_cidr) {
                skipped.push(skip(format!(
                    "podCIDR {pod_cidr} overlaps this node's {own_cidr}"
                )));
                continue;
            }
            let (start, end) = cidr_bounds(pod_cidr);
            let contained = by_start.range(start..=end).next();
            let containing = by_start
                .range(..start)
                .next_back()
                .filter(|(_, (e, _))| *e >= start);
            if let Some((_, (_, i))) = contained.or(containing) {
                let p = &peers[*i];
                skipped.push(skip(format!(
                    "podCIDR {pod_cidr} overlaps node {}'s {}",
                    p.name, p.pod_cidr
                )));
                continue;
            }
            if let Some(other) = by_mac.get(&vtep_mac) {
                skipped.push(skip(format!(
                    "VtepMAC {vtep_mac} is already used by node {other}"
                )));
                continue;
            }
            by_mac.insert(vtep_mac, v.name.clone());
            by_start.insert(start, (end, peers.len()));
            peers.push(Peer {
                name: v.name,
                pod_cidr,
                vtep_ip,
                vtep_mac,
            });
        }
        Ok(ClusterState {
            own,
            peers,
            skipped,
        })
    }

    /// This node's IPv4 pod CIDR (validated present by `from_nodes`).
    #[must_use]
    pub fn own_pod_cidr(&self) -> Ipv4Network {
        self.own
            .pod_cidr
            .expect("from_nodes checks the own podCIDR")
    }

    /// This node's VtepMAC (always known once the podCIDR is).
    #[must_use]
    pub fn own_vtep_mac(&self) -> MacAddr {
        self.own
            .vtep_mac
            .unwrap_or_else(|| derive_vtep_mac(self.own_pod_cidr()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_mac_matches_design_example() {
        let mac = derive_vtep_mac("10.244.1.0/24".parse().unwrap());
        assert_eq!(mac.to_string(), "0a:58:0a:f4:01:00");
        assert!(mac.is_valid_vtep());
    }

    #[test]
    fn mac_parse_roundtrip_and_rejects() {
        let m: MacAddr = "AA:bb:0c:0d:0e:0f".parse().unwrap();
        assert_eq!(m.to_string(), "aa:bb:0c:0d:0e:0f");
        for bad in [
            "",
            "aa:bb",
            "aa:bb:cc:dd:ee:ff:00",
            "zz:bb:cc:dd:ee:ff",
            "a:bb:cc:dd:ee:fff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn annotation_mac_wins_and_public_ip_order() {
        let n = node(
            "b",
            Some("10.244.2.0/24"),
            "192.168.0.2",
            &[
                (
                    ANN_BACKEND_DATA,
                    r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}"#,
                ),
                (ANN_PUBLIC_IP, "192.168.9.2"),
                (ANN_PUBLIC_IP_OVERWRITE, "203.0.113.2"),
            ],
        );
        let v = NodeView::from_node(&n).unwrap();
        assert_eq!(v.vtep_mac.unwrap().to_string(), "02:00:00:00:00:02");
        assert!(v.vtep_mac_annotated);
        assert_eq!(v.public_ip, Some("203.0.113.2".parse().unwrap()));

        let n = node(
            "c",
            Some("10.244.3.0/24"),
            "192.168.0.3",
            &[(ANN_PUBLIC_IP, "192.168.9.3")],
        );
        assert_eq!(
            NodeView::from_node(&n).unwrap().public_ip,
            Some("192.168.9.3".parse().unwrap())
        );
        let n = node("d", Some("10.244.4.0/24"), "192.168.0.4", &[]);
        let v = NodeView::from_node(&n).unwrap();
        assert_eq!(v.public_ip, Some("192.168.0.4".parse().unwrap()));
        assert_eq!(v.vtep_mac.unwrap().to_string(), "0a:58:0a:f4:04:00");
    }

    /// The keys exactly as Flannel's pkg/subnet/kube/annotations.go builds them from its
    /// default prefix; `public-ip-v6` is not one of them and is ignored.
    #[test]
    fn ipv6_annotation_keys_are_flannels() {
        assert_eq!(ANN_PUBLIC_IPV6, "flannel.alpha.coreos.com/public-ipv6");
        assert_eq!(
            ANN_PUBLIC_IPV6_OVERWRITE,
            "flannel.alpha.coreos.com/public-ipv6-overwrite"
        );
        assert_eq!(
            ANN_BACKEND_V6_DATA,
            "flannel.alpha.coreos.com/backend-v6-data"
        );
        let n = node(
            "v6",
            Some("10.244.6.0/24"),
            "192.168.0.6",
            &[
                (ANN_PUBLIC_IPV6, "fd00::6"),
                ("flannel.alpha.coreos.com/public-ip-v6", "fd00::bad"),
            ],
        );
        let v = NodeView::from_node(&n).unwrap();
        assert_eq!(v.public_ip_v6, Some("fd00::6".parse().unwrap()));
        let n = node(
            "v6o",
            Some("10.244.7.0/24"),
            "192.168.0.7",
            &[
                (ANN_PUBLIC_IPV6, "fd00::7"),
                (ANN_PUBLIC_IPV6_OVERWRITE, "2001:db8::7"),
            ],
        );
        let v = NodeView::from_node(&n).unwrap();
        assert_eq!(v.public_ip_v6, Some("2001:db8::7".parse().unwrap()));
        assert_eq!(v.public_ip, Some("192.168.0.7".parse().unwrap()));
        let n = node(
            "v6w",
            Some("10.244.8.0/24"),
            "192.168.0.8",
            &[("flannel.alpha.coreos.com/public-ip-v6", "fd00::8")],
        );
        assert_eq!(NodeView::from_node(&n).unwrap().public_ip_v6, None);
    }

    #[test]
    fn bad_values_name_node_field_and_value() {
        let n = node("x", Some("10.244.1.5/24"), "192.168.0.2", &[]);
        let e = NodeView::from_node(&n).unwrap_err().to_string();
        assert!(
            e.contains("node x") && e.contains("10.244.1.5/24") && e.contains("10.244.1.0/24"),
            "{e}"
        );
        let n = node(
            "y",
            Some("10.244.1.0/24"),
            "1.1.1.1",
            &[(ANN_BACKEND_DATA, r#"{"VtepMAC":"ff:ff:ff:ff:ff:ff"}"#)],
        );
        let e = NodeView::from_node(&n).unwrap_err().to_string();
        assert!(e.contains("backend-data") && e.contains("unicast"), "{e}");
        let n = node(
            "z",
            Some("10.244.1.0/24"),
            "1.1.1.1",
            &[(ANN_PUBLIC_IP, "not-an-ip")],
        );
        assert!(NodeView::from_node(&n)
            .unwrap_err()
            .to_string()
            .contains("not-an-ip"));
    }

    #[test]
    fn peers_skip_broken_and_conflicting_nodes() {
        let nodes = vec![
            node("a", Some("10.244.1.0/24"), "198.18.0.1", &[]),
            node("b", Some("10.244.2.0/24"), "198.18.0.2", &[]),
            node("c", None, "198.18.0.3", &[]),
            node("d", Some("10.244.2.0/25"), "198.18.0.4", &[]),
            node(
                "e",
                Some("10.244.5.0/24"),
                "198.18.0.5",
                &[(ANN_BACKEND_TYPE, "host-gw")],
            ),
            node("f", Some("10.244.6.0/24"), "bogus", &[]),
            node(
                "g",
                Some("10.244.7.0/24"),
                "198.18.0.7",
                &[(ANN_BACKEND_TYPE, "vxlan")],
            ),
            node(
                "h",
                Some("10.244.8.0/24"),
                "198.18.0.8",
                &[(ANN_PUBLIC_IP, "x")],
            ),
        ];
        let s = ClusterState::from_nodes(&nodes, "a", PeerFilter::AllowUnannotated).unwrap();
        let names: Vec<_> = s.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "g"]);
        let skipped: Vec<_> = s.skipped.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert_eq!(s.own_vtep_mac().to_string(), "0a:58:0a:f4:01:00");

        let s = ClusterState::from_nodes(&nodes, "a", PeerFilter::RequireVxlanAnnotation).unwrap();
        let names: Vec<_> = s.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["g"]);
    }

    #[test]
    fn own_node_must_exist_with_cidr() {
        let nodes = vec![node("a", None, "198.18.0.1", &[])];
        assert_eq!(
            ClusterState::from_nodes(&nodes, "a", PeerFilter::AllowUnannotated).unwrap_err(),
            ModelError::NoPodCidr { node: "a".into() }
        );
        assert!(matches!(
            ClusterState::from_nodes(&nodes, "zz", PeerFilter::AllowUnannotated),
            Err(ModelError::OwnNodeMissing(_))
        ));
    }
}
