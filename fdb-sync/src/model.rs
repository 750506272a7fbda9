//! The node model: what a `Node` object means for the overlay, as Flannel's vxlan backend reads it.
//!
//! One function, [`ClusterState::from_nodes`], turns a full set of Nodes into the desired state;
//! both the nodes file and the Kubernetes watcher feed it, so they cannot disagree.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
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
/// Set by an operator on a Node: the public IPv4 address of the flanneld on that node,
/// replacing its `--public-ip` (flanneld's main.go, `GetStoredPublicIP`).
pub const ANN_NODE_PUBLIC_IP: &str = "flannel.alpha.coreos.com/node-public-ip";
/// As [`ANN_NODE_PUBLIC_IP`] for `--public-ipv6`.
pub const ANN_NODE_PUBLIC_IPV6: &str = "flannel.alpha.coreos.com/node-public-ipv6";

/// The `node-public-ip` and `node-public-ipv6` annotations of this node's own Node, as
/// flanneld's `GetStoredPublicIP` reads them once at start: each `(key as on the Node, value)`
/// when set to a non-empty string. The values are not checked here; the daemon uses them in
/// place of `--public-ip` / `--public-ipv6` and names the key when one is not an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredPublicIp {
    pub v4: Option<(String, String)>,
    pub v6: Option<(String, String)>,
}

impl StoredPublicIp {
    /// Reads them from `node`, whose annotation keys start with `prefix` (Flannel's
    /// `--kube-annotation-prefix` as built, ending in `/` or `-`).
    #[must_use]
    pub fn of_node(node: &Node, prefix: &str) -> Self {
        let get = |model_key: &str| {
            let key = model_key
                .strip_prefix(ANNOTATION_PREFIX)
                .map_or_else(|| model_key.to_string(), |rest| format!("{prefix}{rest}"));
            let value = node.metadata.annotations.as_ref()?.get(&key)?;
            (!value.is_empty()).then(|| (key, value.clone()))
        };
        StoredPublicIp {
            v4: get(ANN_NODE_PUBLIC_IP),
            v6: get(ANN_NODE_PUBLIC_IPV6),
        }
    }
}

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

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
    #[error("node {node} has no IPv4 podCIDR in spec.podCIDR(s) while EnableIPv4 is true (the default): give the Node an IPv4 podCIDR, or set EnableIPv4 to false for an IPv6-only cluster")]
    NoPodCidr { node: String },
    /// With `EnableIPv6`, this node needs an IPv6 podCIDR too (Flannel: "IPv6 is enabled but
    /// the lease has no IPv6").
    #[error("this node {node} has no IPv6 podCIDR in spec.podCIDRs while EnableIPv6 is true: give the Node an IPv6 podCIDR (kube-controller-manager --cluster-cidr with both families) or set EnableIPv6 to false")]
    NoPodCidrV6 { node: String },
    #[error("node {0} is not in the node list (check --node-name or the NODE_NAME env)")]
    OwnNodeMissing(String),
    /// This node's own podCIDR breaks a rule a peer's would be skipped for; nothing can be
    /// programmed until the Node (or net-conf) is fixed.
    #[error("this node {node}: podCIDR {cidr} {reason}: fix the Node's spec.podCIDR or net-conf.json's Network")]
    OwnPodCidrInvalid {
        node: String,
        cidr: String,
        reason: String,
    },
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

/// The VtepMAC derived from an IPv6 podCIDR (IPv6-only nodes): `0a:58:` + the low 32 bits
/// of the subnet's index (its network address shifted right by the host bits), which differ
/// between any two subnets of one length in a network of up to 2^32 of them.
#[must_use]
pub fn derive_vtep_mac_v6(pod_cidr: Ipv6Network) -> MacAddr {
    let index = u128::from(pod_cidr.network())
        .checked_shr(128 - u32::from(pod_cidr.prefix()))
        .unwrap_or(0);
    #[allow(clippy::cast_possible_truncation)]
    let o = (index as u32).to_be_bytes();
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
    /// The VtepMAC of the node's IPv6 VTEP (Flannel's `flannel-v6.<VNI>`, its own random MAC)
    /// from `backend-v6-data`; when absent, the same MAC as `vtep_mac`. One MAC may serve both
    /// families: the forwarding table is kept per inner family.
    pub vtep_mac_v6: Option<MacAddr>,
    /// Whether `vtep_mac_v6` came from `backend-v6-data`.
    pub vtep_mac_v6_annotated: bool,
    /// Why `backend-v6-data` could not be read. Flannel reads that annotation only with
    /// `EnableIPv6`, so a bad one makes the node unreadable only then (see
    /// `ClusterState::validated`), never in an IPv4-only cluster.
    pub bad_v6_data: Option<String>,
    /// Bad values of the annotations Flannel reads for one family only (`public-ip`,
    /// `public-ip-overwrite`, `backend-data` for IPv4; `public-ipv6`, `public-ipv6-overwrite`
    /// for IPv6), in the order read: each makes the node unreadable only while its family is
    /// enabled (see [`NodeView::unreadable`]), as Flannel's `nodeToLease` reads those keys only
    /// for an enabled family. The bad value is left out of the view.
    pub bad_family_data: Vec<(IpFamily, ModelError)>,
    pub backend_type: Option<String>,
}

/// An address family, for data that matters only while that family is enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
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
        let mut bad_family_data = Vec::new();
        for (key, family) in [
            (ANN_PUBLIC_IP_OVERWRITE, IpFamily::V4),
            (ANN_PUBLIC_IP, IpFamily::V4),
            (ANN_PUBLIC_IPV6_OVERWRITE, IpFamily::V6),
            (ANN_PUBLIC_IPV6, IpFamily::V6),
        ] {
            let parsed = parse_ip(key).unwrap_or_else(|e| {
                bad_family_data.push((family, e));
                None
            });
            match parsed {
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

        let read_mac = |key: &'static str| -> Result<Option<MacAddr>, ModelError> {
            let Some(raw) = ann.get(key).filter(|v| !v.trim().is_empty()) else {
                return Ok(None);
            };
            let bad = |reason: String| ModelError::BadAnnotation {
                node: name.clone(),
                key,
                value: raw.clone(),
                reason,
            };
            // Flannel writes `null` in backend-v6-data when it has no IPv6 VTEP.
            if raw.trim() == "null" {
                return Ok(None);
            }
            let data: BackendData = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
            let mac: MacAddr = data
                .vtep_mac
                .parse()
                .map_err(|e: ModelError| bad(e.to_string()))?;
            if !mac.is_valid_vtep() {
                return Err(bad("VtepMAC must be a unicast, non-zero address".into()));
            }
            Ok(Some(mac))
        };
        let annotated = read_mac(ANN_BACKEND_DATA).unwrap_or_else(|e| {
            bad_family_data.push((IpFamily::V4, e));
            None
        });
        let vtep_mac_annotated = annotated.is_some();
        let vtep_mac = annotated.or_else(|| pod_cidr.map(derive_vtep_mac));
        let (annotated_v6, bad_v6_data) = match read_mac(ANN_BACKEND_V6_DATA) {
            Ok(m) => (m, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let vtep_mac_v6_annotated = annotated_v6.is_some();
        // Without backend-v6-data: the node's one MAC, which for a node with no IPv4 side (an
        // unannotated IPv6-only node) is derived from its IPv6 podCIDR, as
        // `ClusterState::own_vtep_mac` derives the MAC such a node gives itself.
        let vtep_mac_v6 = if bad_v6_data.is_some() {
            None
        } else {
            annotated_v6
                .or(vtep_mac)
                .or_else(|| pod_cidr_v6.map(derive_vtep_mac_v6))
        };

        Ok(NodeView {
            name,
            pod_cidr,
            pod_cidr_v6,
            public_ip,
            public_ip_v6,
            vtep_mac,
            vtep_mac_annotated,
            vtep_mac_v6,
            vtep_mac_v6_annotated,
            bad_v6_data,
            bad_family_data,
            backend_type: ann.get(ANN_BACKEND_TYPE).cloned(),
        })
    }

    /// Why this node cannot be read with these families enabled: the first bad value of an
    /// annotation Flannel reads for an enabled family (`bad_family_data`), if any.
    #[must_use]
    pub fn unreadable(&self, v4: bool, v6: bool) -> Option<&ModelError> {
        self.bad_family_data
            .iter()
            .find(|(f, _)| match f {
                IpFamily::V4 => v4,
                IpFamily::V6 => v6,
            })
            .map(|(_, e)| e)
    }
}

/// First and last address of a network, as integers of one width for both families.
fn bounds(net: IpNetwork) -> (u128, u128) {
    match net {
        IpNetwork::V4(n) => {
            let start = u32::from(n.network());
            (u128::from(start), u128::from(start | !u32::from(n.mask())))
        }
        IpNetwork::V6(n) => {
            let start = u128::from(n.network());
            (start, start | !u128::from(n.mask()))
        }
    }
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    if a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    let ((a0, a1), (b0, b1)) = (bounds(a), bounds(b));
    a0 <= b1 && b0 <= a1
}

/// Whether `inner` lies wholly inside `outer` (same family).
fn within(inner: IpNetwork, outer: IpNetwork) -> bool {
    inner.is_ipv4() == outer.is_ipv4()
        && inner.prefix() >= outer.prefix()
        && outer.contains(inner.network())
}

/// Networks of one family that never overlap, looked up in O(log n) so 5000 nodes stay cheap.
/// Each holds the index of its owner (a candidate).
#[derive(Default)]
struct Disjoint {
    by_start: BTreeMap<(bool, u128), (u128, usize)>,
}

impl Disjoint {
    /// The owner of a held network that overlaps `net`, if any.
    fn conflict(&self, net: IpNetwork) -> Option<usize> {
        let v4 = net.is_ipv4();
        let (start, end) = bounds(net);
        let contained = self.by_start.range((v4, start)..=(v4, end)).next();
        let containing = self
            .by_start
            .range((v4, 0)..(v4, start))
            .next_back()
            .filter(|(_, (e, _))| *e >= start);
        contained.or(containing).map(|(_, (_, owner))| *owner)
    }

    fn insert(&mut self, net: IpNetwork, owner: usize) {
        let (start, end) = bounds(net);
        self.by_start.insert((net.is_ipv4(), start), (end, owner));
    }
}

/// A remote node this node forwards to: one side per enabled family, each present exactly
/// when its family is enabled (`EnableIPv4`, `EnableIPv6`): a node lacking an enabled family
/// is skipped, as Flannel skips a node whose lease lacks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    pub name: String,
    pub v4: Option<PeerV4>,
    pub v6: Option<PeerV6>,
}

/// A peer's IPv4 VTEP (Flannel's `flannel.<VNI>`): IPv4 pods behind `pod_cidr` are reached by
/// VXLAN over IPv4 to `vtep_ip` with inner destination MAC `vtep_mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerV4 {
    pub pod_cidr: Ipv4Network,
    pub vtep_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
}

/// A peer's IPv6 VTEP, as Flannel's `flannel-v6.<VNI>` sees it: IPv6 pods behind `pod_cidr`
/// are reached by VXLAN over IPv6 to `vtep_ip` with inner destination MAC `vtep_mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerV6 {
    pub pod_cidr: Ipv6Network,
    /// `public-ipv6` (or its overwrite), else the node's IPv6 InternalIP.
    pub vtep_ip: Ipv6Addr,
    /// `backend-v6-data`'s VtepMAC, else the IPv4 VtepMAC.
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

/// Why a node is not a peer. [`SkipReason::as_str`] is the stable label of the
/// `overlayd_peers_skipped{reason}` metric and of `overlayd status`; the human message that
/// names the offending value is [`Skipped::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// A field could not be read (podCIDR, an annotation).
    Unreadable,
    /// `backend-type` is set to something other than `vxlan`.
    BackendType,
    /// Kubernetes only: no `backend-type` annotation yet (Flannel not running there).
    NoBackendAnnotation,
    /// No IPv4 podCIDR.
    NoPodCidr,
    /// No IPv4 public address (annotation or InternalIP).
    NoPublicIp,
    /// The podCIDR overlaps loopback, link-local, multicast, "this network" or reserved space.
    PodCidrReserved,
    /// The podCIDR is not inside the cluster Network (net-conf.json), or of the wrong family.
    PodCidrOutsideNetwork,
    /// The podCIDR overlaps this node's own.
    PodCidrOverlapsOwn,
    /// The podCIDR overlaps an earlier (by name) peer's.
    PodCidrOverlapsPeer,
    /// The podCIDR covers an underlay subnet or an address of this node: routing it into the
    /// device would capture the VXLAN packets themselves.
    PodCidrCoversUnderlay,
    /// The VTEP address is unspecified, multicast, broadcast or reserved.
    VtepNotUnicast,
    /// The VTEP address is a loopback address.
    VtepLoopback,
    /// The VTEP address is link-local (and link-local VTEPs are not allowed).
    VtepLinkLocal,
    /// The VTEP address is one of this node's own addresses.
    VtepOwnAddress,
    /// The VTEP address lies inside the pod Network.
    VtepInPodNetwork,
    /// Another (earlier by name) peer already uses this VTEP address.
    VtepDuplicate,
    /// Another node (or this one) already uses this VtepMAC.
    VtepMacDuplicate,
}

impl SkipReason {
    pub const ALL: [SkipReason; 17] = [
        Self::Unreadable,
        Self::BackendType,
        Self::NoBackendAnnotation,
        Self::NoPodCidr,
        Self::NoPublicIp,
        Self::PodCidrReserved,
        Self::PodCidrOutsideNetwork,
        Self::PodCidrOverlapsOwn,
        Self::PodCidrOverlapsPeer,
        Self::PodCidrCoversUnderlay,
        Self::VtepNotUnicast,
        Self::VtepLoopback,
        Self::VtepLinkLocal,
        Self::VtepOwnAddress,
        Self::VtepInPodNetwork,
        Self::VtepDuplicate,
        Self::VtepMacDuplicate,
    ];

    /// Stable snake_case label for metrics and status.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::BackendType => "backend_type",
            Self::NoBackendAnnotation => "no_backend_annotation",
            Self::NoPodCidr => "no_pod_cidr",
            Self::NoPublicIp => "no_public_ip",
            Self::PodCidrReserved => "pod_cidr_reserved",
            Self::PodCidrOutsideNetwork => "pod_cidr_outside_network",
            Self::PodCidrOverlapsOwn => "pod_cidr_overlaps_own",
            Self::PodCidrOverlapsPeer => "pod_cidr_overlaps_peer",
            Self::PodCidrCoversUnderlay => "pod_cidr_covers_underlay",
            Self::VtepNotUnicast => "vtep_not_unicast",
            Self::VtepLoopback => "vtep_loopback",
            Self::VtepLinkLocal => "vtep_link_local",
            Self::VtepOwnAddress => "vtep_own_address",
            Self::VtepInPodNetwork => "vtep_in_pod_network",
            Self::VtepDuplicate => "vtep_duplicate",
            Self::VtepMacDuplicate => "vtep_mac_duplicate",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node left out of the peer set, and why (reported once by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub node: String,
    /// A message for people that names the offending value.
    pub reason: String,
    /// The reason's class, for metrics.
    pub kind: SkipReason,
}

/// What this node knows that the Node objects do not: the cluster Network and its own
/// addresses. With it, [`ClusterState::validated`] keeps every peer that could hurt the node
/// (a route over an underlay subnet, a VTEP on loopback, ...) away from the kernel and the FDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    /// net-conf.json `Network` with `EnableIPv4` (`None`: IPv6-only): every IPv4 podCIDR must
    /// lie inside it, no VTEP may.
    pub network: Option<Ipv4Network>,
    /// net-conf.json `IPv6Network` when IPv6 is enabled; `None` leaves IPv6 fields unchecked
    /// (and unused).
    pub network_v6: Option<Ipv6Network>,
    /// Every address of this node (underlay and others): no peer may use one as its VTEP, and
    /// no peer podCIDR may cover one.
    pub own_addresses: Vec<IpAddr>,
    /// The subnets of the underlay interface: no podCIDR may overlap them.
    pub underlay_subnets: Vec<IpNetwork>,
    /// Accept link-local VTEP addresses (169.254.0.0/16, fe80::/10).
    pub allow_link_local_vtep: bool,
}

/// Address space no podCIDR may touch, with the name used in messages.
const RESERVED_V4: [(&str, [u8; 4], u8); 5] = [
    ("\"this network\" 0.0.0.0/8", [0, 0, 0, 0], 8),
    ("loopback 127.0.0.0/8", [127, 0, 0, 0], 8),
    ("link-local 169.254.0.0/16", [169, 254, 0, 0], 16),
    ("multicast 224.0.0.0/4", [224, 0, 0, 0], 4),
    ("reserved/broadcast 240.0.0.0/4", [240, 0, 0, 0], 4),
];

fn reserved_v4(net: Ipv4Network) -> Option<&'static str> {
    RESERVED_V4.iter().find_map(|(name, a, p)| {
        let r = Ipv4Network::new(Ipv4Addr::from(*a), *p).expect("valid constant");
        overlaps(net.into(), r.into()).then_some(*name)
    })
}

fn reserved_v6(net: Ipv6Network) -> Option<&'static str> {
    const R: [(&str, u128, u8); 4] = [
        ("unspecified/loopback ::/127", 0, 127),
        ("link-local fe80::/10", 0xfe80 << 112, 10),
        ("multicast ff00::/8", 0xff00 << 112, 8),
        ("IPv4-mapped ::ffff:0:0/96", 0xffff << 32, 96),
    ];
    R.iter().find_map(|(name, a, p)| {
        let r = Ipv6Network::new(Ipv6Addr::from(*a), *p).expect("valid constant");
        overlaps(net.into(), r.into()).then_some(*name)
    })
}

type Check = Result<(), (SkipReason, String)>;

fn fail(kind: SkipReason, msg: String) -> Check {
    Err((kind, msg))
}

impl PeerPolicy {
    /// A policy that knows only the Network (no own addresses, link-local VTEPs refused).
    #[must_use]
    pub fn new(network: Ipv4Network) -> Self {
        PeerPolicy {
            network: Some(network),
            network_v6: None,
            own_addresses: Vec::new(),
            underlay_subnets: Vec::new(),
            allow_link_local_vtep: false,
        }
    }

    /// An IPv6-only policy (`EnableIPv4: false`) that knows only the IPv6Network.
    #[must_use]
    pub fn ipv6_only(network_v6: Ipv6Network) -> Self {
        PeerPolicy {
            network: None,
            network_v6: Some(network_v6),
            ..Self::new(Ipv4Network::from(Ipv4Addr::UNSPECIFIED))
        }
    }

    /// Whether `ip` is inside one of the underlay subnets. A Network that nests the underlay
    /// (Network 10.0.0.0/8, nodes on 10.1.0.0/24) is a layout Flannel runs with: VTEPs there
    /// are safe because no podCIDR may overlap an underlay subnet.
    fn in_underlay(&self, ip: IpAddr) -> bool {
        self.underlay_subnets.iter().any(|s| s.contains(ip))
    }

    /// The rules of one VTEP address, alone (duplicates are the caller's).
    fn check_vtep(&self, ip: IpAddr) -> Check {
        let not_unicast = |what: &str| {
            fail(
                SkipReason::VtepNotUnicast,
                format!("VTEP address {ip} is {what}, not a unicast host address"),
            )
        };
        match ip {
            IpAddr::V4(a) => {
                if a.is_unspecified() || a.octets()[0] == 0 {
                    return not_unicast("in \"this network\" 0.0.0.0/8");
                }
                if a.is_multicast() {
                    return not_unicast("multicast");
                }
                if a.is_broadcast() || a.octets()[0] >= 240 {
                    return not_unicast("broadcast or reserved (240.0.0.0/4)");
                }
                if let Some(s) = self.underlay_subnets.iter().find(|s| match s {
                    IpNetwork::V4(n) => n.prefix() < 31 && n.broadcast() == a,
                    IpNetwork::V6(_) => false,
                }) {
                    return not_unicast(&format!("the broadcast address of underlay subnet {s}"));
                }
                if a.is_loopback() {
                    return fail(
                        SkipReason::VtepLoopback,
                        format!("VTEP address {ip} is a loopback address"),
                    );
                }
                if a.is_link_local() && !self.allow_link_local_vtep {
                    return fail(
                        SkipReason::VtepLinkLocal,
                        format!("VTEP address {ip} is link-local (169.254.0.0/16)"),
                    );
                }
                if let Some(n) = self
                    .network
                    .filter(|n| n.contains(a) && !self.in_underlay(ip))
                {
                    return fail(
                        SkipReason::VtepInPodNetwork,
                        format!("VTEP address {ip} is inside the pod Network {n}"),
                    );
                }
            }
            IpAddr::V6(a) => {
                if a.is_unspecified() {
                    return not_unicast("unspecified");
                }
                if a.is_multicast() {
                    return not_unicast("multicast");
                }
                if a.is_loopback() {
                    return fail(
                        SkipReason::VtepLoopback,
                        format!("VTEP address {ip} is a loopback address"),
                    );
                }
                if a.segments()[0] & 0xffc0 == 0xfe80 && !self.allow_link_local_vtep {
                    return fail(
                        SkipReason::VtepLinkLocal,
                        format!("VTEP address {ip} is link-local (fe80::/10)"),
                    );
                }
                if let Some(n) = self
                    .network_v6
                    .filter(|n| n.contains(a) && !self.in_underlay(ip))
                {
                    return fail(
                        SkipReason::VtepInPodNetwork,
                        format!("VTEP address {ip} is inside the pod IPv6Network {n}"),
                    );
                }
            }
        }
        if self.own_addresses.contains(&ip) {
            return fail(
                SkipReason::VtepOwnAddress,
                format!("VTEP address {ip} is an address of this node"),
            );
        }
        Ok(())
    }

    /// The rules of one podCIDR, alone (overlaps with other nodes are the caller's). `peer`
    /// adds the rule that it must not cover any of this node's addresses (this node's own
    /// podCIDR holds its device and bridge addresses by design).
    fn check_pod_cidr(&self, net: IpNetwork, peer: bool) -> Check {
        let reserved = match net {
            IpNetwork::V4(n) => reserved_v4(n),
            IpNetwork::V6(n) => reserved_v6(n),
        };
        if let Some(r) = reserved {
            return fail(
                SkipReason::PodCidrReserved,
                format!("podCIDR {net} overlaps {r}"),
            );
        }
        let network = match net {
            IpNetwork::V4(_) => self.network.map(IpNetwork::V4),
            IpNetwork::V6(_) => self.network_v6.map(IpNetwork::V6),
        };
        match network {
            Some(nw) if !within(net, nw) => {
                return fail(
                    SkipReason::PodCidrOutsideNetwork,
                    format!("podCIDR {net} is not inside the cluster Network {nw}"),
                )
            }
            Some(_) => {}
            None => {
                return fail(
                    SkipReason::PodCidrOutsideNetwork,
                    format!(
                        "podCIDR {net}: {} is not enabled in net-conf.json",
                        if net.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                )
            }
        }
        if let Some(s) = self.underlay_subnets.iter().find(|s| overlaps(net, **s)) {
            return fail(
                SkipReason::PodCidrCoversUnderlay,
                format!("podCIDR {net} overlaps underlay subnet {s}: its route would capture VXLAN itself"),
            );
        }
        if peer {
            if let Some(a) = self.own_addresses.iter().find(|a| net.contains(**a)) {
                return fail(
                    SkipReason::PodCidrCoversUnderlay,
                    format!("podCIDR {net} covers this node's address {a}"),
                );
            }
        }
        Ok(())
    }

    /// The rules a peer must pass on its own, IPv4 first (when enabled), then IPv6 when
    /// enabled.
    fn check_peer(&self, v: &NodeView, v4: Option<PeerV4>) -> Check {
        if let Some(p) = v4 {
            self.check_pod_cidr(p.pod_cidr.into(), true)?;
            self.check_vtep(p.vtep_ip.into())?;
        }
        if self.network_v6.is_some() {
            if let Some(c) = v.pod_cidr_v6 {
                self.check_pod_cidr(c.into(), true)?;
            }
            if let Some(a) = v.public_ip_v6 {
                self.check_vtep(a.into())?;
            }
        }
        Ok(())
    }

    /// The own node's podCIDR(s) must obey the same rules as a peer's (but may hold this
    /// node's own addresses).
    fn check_own(&self, own: &NodeView) -> Result<(), ModelError> {
        if self.network.is_some() && own.pod_cidr.is_none() {
            return Err(ModelError::NoPodCidr {
                node: own.name.clone(),
            });
        }
        if self.network_v6.is_some() && own.pod_cidr_v6.is_none() {
            return Err(ModelError::NoPodCidrV6 {
                node: own.name.clone(),
            });
        }
        let mut cidrs: Vec<IpNetwork> = own
            .pod_cidr
            .filter(|_| self.network.is_some())
            .into_iter()
            .map(IpNetwork::V4)
            .collect();
        if self.network_v6.is_some() {
            cidrs.extend(own.pod_cidr_v6.map(IpNetwork::V6));
        }
        for c in cidrs {
            if let Err((_, msg)) = self.check_pod_cidr(c, false) {
                return Err(ModelError::OwnPodCidrInvalid {
                    node: own.name.clone(),
                    cidr: c.to_string(),
                    reason: msg
                        .strip_prefix(&format!("podCIDR {c} "))
                        .unwrap_or(&msg)
                        .to_string(),
                });
            }
        }
        Ok(())
    }
}

/// The desired state of one node, computed from the full node set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    pub own: NodeView,
    /// Sorted by name; unique pod CIDRs, VTEP addresses, VTEP MACs and names.
    pub peers: Vec<Peer>,
    pub skipped: Vec<Skipped>,
    /// The other nodes that could be read, sorted by name: the input of the peer decision,
    /// kept so that [`ClusterState::validated`] can decide again with this node's
    /// [`PeerPolicy`] (a bad node must not keep out a good one it overlaps; whether data of
    /// one family makes a node unreadable depends on the families enabled).
    candidates: Vec<NodeView>,
    /// Nodes skipped before the decision (unreadable whatever the families).
    early_skips: Vec<Skipped>,
    filter: PeerFilter,
}

impl ClusterState {
    /// Builds the desired state from every Node known. A broken peer is skipped (and listed in
    /// `skipped`); only a missing or unusable own node is an error. Without a [`PeerPolicy`]
    /// only the rules the Nodes alone decide are applied; the daemon applies
    /// [`ClusterState::validated`] to every state before using it.
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
        let mut early_skips = Vec::new();
        for n in nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            let view = NodeView::from_node(n);
            if name == own_name {
                own = Some(view?);
                continue;
            }
            match view {
                Ok(v) => views.push(v),
                Err(e) => early_skips.push(Skipped {
                    node: name,
                    reason: e.to_string(),
                    kind: SkipReason::Unreadable,
                }),
            }
        }
        let own = own.ok_or_else(|| ModelError::OwnNodeMissing(own_name.to_string()))?;
        Self::from_views(own, views, early_skips, filter)
    }

    /// The same decision over nodes already read into [`NodeView`]s (the etcd source reads
    /// leases, not Node objects): `own` is this node, `views` the others, `early_skips` those
    /// that could not be read at all.
    pub fn from_views(
        own: NodeView,
        mut views: Vec<NodeView>,
        early_skips: Vec<Skipped>,
        filter: PeerFilter,
    ) -> Result<Self, ModelError> {
        // Which families are enabled is the policy's (see `validated`); a node without any
        // podCIDR is unusable under every policy.
        if own.pod_cidr.is_none() && own.pod_cidr_v6.is_none() {
            return Err(ModelError::NoPodCidr {
                node: own.name.clone(),
            });
        }

        // The filter, and whether the node has every enabled family, are decided with the
        // policy (`decide`): a node with bad data of a disabled family must pass the filter.
        views.sort_by(|a, b| a.name.cmp(&b.name));
        let mut state = ClusterState {
            own,
            peers: Vec::new(),
            skipped: Vec::new(),
            candidates: views,
            early_skips,
            filter,
        };
        state.decide(None);
        Ok(state)
    }

    /// This state decided again under `policy`: every peer that breaks one of its rules is
    /// moved to `skipped` with its reason, and conflicts are re-decided among the peers that
    /// remain (a node skipped for overlapping a now-invalid one comes back). An own node whose
    /// podCIDR breaks the rules is an error: nothing can be programmed for it.
    pub fn validated(&self, policy: &PeerPolicy) -> Result<Self, ModelError> {
        if let Some(e) = self
            .own
            .unreadable(policy.network.is_some(), policy.network_v6.is_some())
        {
            return Err(e.clone());
        }
        policy.check_own(&self.own)?;
        let mut s = self.clone();
        s.decide(Some(policy));
        Ok(s)
    }

    /// Chooses the peers among `candidates` in name order: each must pass `policy` (when
    /// given), then not conflict with this node or an earlier peer.
    fn decide(&mut self, policy: Option<&PeerPolicy>) {
        // Without a policy IPv4 is on (the Nodes alone decide), IPv6 off.
        let v4 = policy.is_none_or(|p| p.network.is_some());
        let own_cidr = self.own.pod_cidr.filter(|_| v4);
        let own_v6 = self
            .own
            .pod_cidr_v6
            .filter(|_| policy.is_some_and(|p| p.network_v6.is_some()));
        let mut peers = Vec::new();
        let mut skipped = self.early_skips.clone();
        let mut cidrs = Disjoint::default();
        let mut by_mac: HashMap<MacAddr, &str> = HashMap::new();
        // IPv6 VTEPs have their own MACs (flannel-v6.1 is a device of its own), so a MAC may
        // repeat across families of one node, never across nodes within a family.
        let mut by_mac_v6: HashMap<MacAddr, &str> = HashMap::new();
        let mut by_vtep: HashMap<IpAddr, &str> = HashMap::new();
        if let Some(m) = self.own.vtep_mac.filter(|_| v4) {
            by_mac.insert(m, &self.own.name);
        }
        if let Some(m) = self.own.vtep_mac_v6.filter(|_| own_v6.is_some()) {
            by_mac_v6.insert(m, &self.own.name);
        }
        let own_ips = [
            self.own.public_ip.map(IpAddr::V4),
            self.own.public_ip_v6.map(IpAddr::V6),
        ];
        for (i, v) in self.candidates.iter().enumerate() {
            let v6 = policy.is_some_and(|p| p.network_v6.is_some());
            let peer_v4 = match (v.pod_cidr, v.public_ip, v.vtep_mac) {
                (Some(pod_cidr), Some(vtep_ip), Some(vtep_mac)) if v4 => Some(PeerV4 {
                    pod_cidr,
                    vtep_ip,
                    vtep_mac,
                }),
                _ => None,
            };
            let mut nets: Vec<IpNetwork> = peer_v4.map(|p| p.pod_cidr.into()).into_iter().collect();
            let mut vteps: Vec<IpAddr> = peer_v4.map(|p| p.vtep_ip.into()).into_iter().collect();
            let mut peer_v6 = None;
            if v6 {
                nets.extend(v.pod_cidr_v6.map(IpNetwork::V6));
                vteps.extend(v.public_ip_v6.map(IpAddr::V6));
                if let (Some(pod_cidr), Some(vtep_ip), Some(vtep_mac)) =
                    (v.pod_cidr_v6, v.public_ip_v6, v.vtep_mac_v6)
                {
                    peer_v6 = Some(PeerV6 {
                        pod_cidr,
                        vtep_ip,
                        vtep_mac,
                    });
                }
            }
            let verdict = (|| -> Check {
                // As before the filter when every bad value made a node unreadable: a node
                // with bad data of an enabled family is unreadable, whatever its backend-type.
                if let Some(e) = v.unreadable(v4, v6) {
                    return fail(SkipReason::Unreadable, e.to_string());
                }
                match (self.filter, v.backend_type.as_deref()) {
                    (_, Some("vxlan")) | (PeerFilter::AllowUnannotated, None) => {}
                    (_, Some(other)) => {
                        return fail(
                            SkipReason::BackendType,
                            format!("backend-type is {other:?}, not \"vxlan\""),
                        );
                    }
                    (PeerFilter::RequireVxlanAnnotation, None) => {
                        return fail(
                            SkipReason::NoBackendAnnotation,
                            "no backend-type annotation yet (Flannel not running there)".into(),
                        );
                    }
                }
                if v4 && (v.pod_cidr.is_none() || v.vtep_mac.is_none()) {
                    return fail(SkipReason::NoPodCidr, "no IPv4 podCIDR".into());
                }
                if v4 && v.public_ip.is_none() {
                    let msg = ModelError::NoPublicIp {
                        node: v.name.clone(),
                    }
                    .to_string();
                    return fail(SkipReason::NoPublicIp, msg);
                }
                if let Some(why) = v.bad_v6_data.as_ref().filter(|_| v6) {
                    return fail(SkipReason::Unreadable, why.clone());
                }
                // Flannel's nodeToLease fails (and the node is no peer) when EnableIPv6 is on
                // and the node has no IPv6 podCIDR or no public-ipv6.
                if v6 && v.pod_cidr_v6.is_none() {
                    return fail(
                        SkipReason::NoPodCidr,
                        "no IPv6 podCIDR while EnableIPv6 is true".into(),
                    );
                }
                if v6 && v.public_ip_v6.is_none() {
                    return fail(
                        SkipReason::NoPublicIp,
                        format!("no IPv6 public address while EnableIPv6 is true: set annotation {ANN_PUBLIC_IPV6} or an IPv6 InternalIP in status.addresses"),
                    );
                }
                for &net in &nets {
                    let own = match net {
                        IpNetwork::V4(_) => own_cidr.map(IpNetwork::V4),
                        IpNetwork::V6(_) => own_v6.map(IpNetwork::V6),
                    };
                    if let Some(own) = own.filter(|o| overlaps(net, *o)) {
                        return fail(
                            SkipReason::PodCidrOverlapsOwn,
                            format!("podCIDR {net} overlaps this node's {own}"),
                        );
                    }
                }
                // After the own-podCIDR rule (whose message is the clearer one for a peer that
                // claims this node's range) and before conflicts with other peers.
                if let Some(p) = policy {
                    p.check_peer(v, peer_v4)?;
                }
                for &net in &nets {
                    if let Some(j) = cidrs.conflict(net) {
                        let other = &self.candidates[j];
                        let theirs = match net {
                            IpNetwork::V4(_) => other.pod_cidr.map(|c| c.to_string()),
                            IpNetwork::V6(_) => other.pod_cidr_v6.map(|c| c.to_string()),
                        };
                        return fail(
                            SkipReason::PodCidrOverlapsPeer,
                            format!(
                                "podCIDR {net} overlaps node {}'s {}",
                                other.name,
                                theirs.unwrap_or_default()
                            ),
                        );
                    }
                }
                for ip in &vteps {
                    if own_ips.contains(&Some(*ip)) {
                        return fail(
                            SkipReason::VtepOwnAddress,
                            format!("VTEP address {ip} is this node's own address"),
                        );
                    }
                    if let Some(other) = by_vtep.get(ip) {
                        return fail(
                            SkipReason::VtepDuplicate,
                            format!("VTEP address {ip} is already used by node {other}"),
                        );
                    }
                }
                if let Some((p, other)) =
                    peer_v4.and_then(|p| by_mac.get(&p.vtep_mac).map(|o| (p, o)))
                {
                    return fail(
                        SkipReason::VtepMacDuplicate,
                        format!("VtepMAC {} is already used by node {other}", p.vtep_mac),
                    );
                }
                if let Some(p) = peer_v6 {
                    if let Some(other) = by_mac_v6.get(&p.vtep_mac) {
                        return fail(
                            SkipReason::VtepMacDuplicate,
                            format!(
                                "IPv6 VtepMAC {} is already used by node {other}",
                                p.vtep_mac
                            ),
                        );
                    }
                }
                Ok(())
            })();
            if let Err((kind, reason)) = verdict {
                skipped.push(Skipped {
                    node: v.name.clone(),
                    reason,
                    kind,
                });
                continue;
            }
            for net in nets {
                cidrs.insert(net, i);
            }
            for ip in vteps {
                by_vtep.insert(ip, &v.name);
            }
            if let Some(p) = peer_v4 {
                by_mac.insert(p.vtep_mac, &v.name);
            }
            if let Some(p) = peer_v6 {
                by_mac_v6.insert(p.vtep_mac, &v.name);
            }
            peers.push(Peer {
                name: v.name.clone(),
                v4: peer_v4,
                v6: peer_v6,
            });
        }
        self.peers = peers;
        self.skipped = skipped;
    }

    /// How many nodes are skipped for each reason (every reason listed, zero included).
    #[must_use]
    pub fn skipped_by_reason(&self) -> Vec<(SkipReason, usize)> {
        SkipReason::ALL
            .iter()
            .map(|r| (*r, self.skipped.iter().filter(|s| s.kind == *r).count()))
            .collect()
    }

    /// This node's IPv4 pod CIDR; `None` only for an IPv6-only node (a policy with IPv4
    /// enabled refuses such a node in `validated`).
    #[must_use]
    pub fn own_pod_cidr(&self) -> Option<Ipv4Network> {
        self.own.pod_cidr
    }

    /// This node's VtepMAC (overlayd's device has one for both families): `backend-data`'s;
    /// else, when only `backend-v6-data` is annotated (what flanneld writes in an IPv6-only
    /// cluster), that one, so a node migrated from an IPv6-only Flannel keeps its VtepMAC;
    /// else derived from the IPv4 podCIDR, else (IPv6-only) from the IPv6 one.
    #[must_use]
    pub fn own_vtep_mac(&self) -> MacAddr {
        let annotated = if self.own.vtep_mac_annotated {
            self.own.vtep_mac
        } else {
            self.own
                .vtep_mac_v6
                .filter(|_| self.own.vtep_mac_v6_annotated)
        };
        annotated.or(self.own.vtep_mac).unwrap_or_else(|| {
            match (self.own.pod_cidr, self.own.pod_cidr_v6) {
                (Some(c), _) => derive_vtep_mac(c),
                (None, Some(c)) => derive_vtep_mac_v6(c),
                (None, None) => unreachable!("from_views refuses an own node without podCIDR"),
            }
        })
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

    /// `EnableIPv4: false`: an IPv6-only own node is fine, peers carry only their IPv6 side,
    /// a peer lacking IPv6 is skipped with its reason, and an IPv4-only NodeList is refused
    /// for this node with a message that says what to do.
    #[test]
    fn ipv6_only_cluster_model() {
        let bd = |m: &str| format!(r#"{{"VNI":1,"VtepMAC":"{m}"}}"#);
        let v6_node = |name: &str, i: u8| {
            node(
                name,
                Some(&format!("fd00:10:244:{i}::/64")),
                &format!("fd00:18::{i}"),
                &[
                    (ANN_BACKEND_TYPE, "vxlan"),
                    (ANN_BACKEND_V6_DATA, &bd(&format!("02:00:00:00:06:0{i}"))),
                ],
            )
        };
        let mut dual = node(
            "c-dual",
            Some("10.244.3.0/24"),
            "198.18.0.3",
            &[
                (ANN_BACKEND_TYPE, "vxlan"),
                (ANN_PUBLIC_IPV6, "fd00:18::3"),
                (ANN_BACKEND_V6_DATA, &bd("02:00:00:00:06:03")),
            ],
        );
        dual.spec.as_mut().unwrap().pod_cidrs =
            Some(vec!["10.244.3.0/24".into(), "fd00:10:244:3::/64".into()]);
        let v4_only = node(
            "d-v4",
            Some("10.244.4.0/24"),
            "198.18.0.4",
            &[(ANN_BACKEND_TYPE, "vxlan")],
        );
        let nodes = vec![
            v6_node("a-own", 1),
            v6_node("b-v6", 2),
            dual,
            v4_only.clone(),
        ];
        let policy = PeerPolicy::ipv6_only("fd00:10:244::/56".parse().unwrap());
        let s = ClusterState::from_nodes(&nodes, "a-own", PeerFilter::RequireVxlanAnnotation)
            .unwrap()
            .validated(&policy)
            .unwrap();
        assert_eq!(s.own_pod_cidr(), None);
        // Only backend-v6-data annotated (flanneld's IPv6-only node): its MAC is kept.
        assert_eq!(s.own_vtep_mac().to_string(), "02:00:00:00:06:01");
        // Not annotated, and no IPv4 podCIDR to derive it from: the IPv6 one's index.
        let mut bare = nodes.clone();
        bare[0] = node(
            "a-own",
            Some("fd00:10:244:1::/64"),
            "fd00:18::1",
            &[(ANN_BACKEND_TYPE, "vxlan")],
        );
        let s0 = ClusterState::from_nodes(&bare, "a-own", PeerFilter::RequireVxlanAnnotation)
            .unwrap()
            .validated(&policy)
            .unwrap();
        assert_eq!(s0.own_vtep_mac().to_string(), "0a:58:02:44:00:01");
        let names: Vec<_> = s.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b-v6", "c-dual"], "{:?}", s.skipped);
        assert!(s.peers.iter().all(|p| p.v4.is_none() && p.v6.is_some()));
        assert_eq!(
            s.peers[1].v6.unwrap().vtep_ip,
            "fd00:18::3".parse::<Ipv6Addr>().unwrap()
        );
        let skip = s.skipped.iter().find(|k| k.node == "d-v4").unwrap();
        assert_eq!(skip.kind, SkipReason::NoPodCidr);
        assert!(skip.reason.contains("no IPv6 podCIDR"), "{}", skip.reason);

        // An unannotated IPv6-only peer (a hand-written NodeList) is reached at the MAC it
        // gives itself: the one derived from its IPv6 podCIDR.
        let bare = node("e-bare", Some("fd00:10:244:5::/64"), "fd00:18::5", &[]);
        let s = ClusterState::from_nodes(
            &[v6_node("a-own", 1), bare],
            "a-own",
            PeerFilter::AllowUnannotated,
        )
        .unwrap()
        .validated(&policy)
        .unwrap();
        assert_eq!(s.peers.len(), 1, "{:?}", s.skipped);
        let e = s.peers[0].v6.unwrap();
        assert_eq!(e.vtep_mac.to_string(), "0a:58:02:44:00:05");
        assert_eq!(e.vtep_ip, "fd00:18::5".parse::<Ipv6Addr>().unwrap());

        // An IPv4-only NodeList: this node cannot run IPv6-only.
        let e = ClusterState::from_nodes(
            std::slice::from_ref(&v4_only),
            "d-v4",
            PeerFilter::AllowUnannotated,
        )
        .unwrap()
        .validated(&policy)
        .unwrap_err();
        assert_eq!(
            e,
            ModelError::NoPodCidrV6 {
                node: "d-v4".into()
            }
        );
        assert!(
            e.to_string().contains("give the Node an IPv6 podCIDR"),
            "{e}"
        );
        // And an IPv6-only own node under a policy with IPv4 enabled is refused too.
        let e = ClusterState::from_nodes(&nodes, "a-own", PeerFilter::RequireVxlanAnnotation)
            .unwrap()
            .validated(&PeerPolicy::new("10.244.0.0/16".parse().unwrap()))
            .unwrap_err();
        assert_eq!(
            e,
            ModelError::NoPodCidr {
                node: "a-own".into()
            }
        );
        // A node with no podCIDR at all is refused before any policy.
        let e = ClusterState::from_nodes(
            &[node("x", None, "fd00:18::9", &[])],
            "x",
            PeerFilter::AllowUnannotated,
        )
        .unwrap_err();
        assert_eq!(e, ModelError::NoPodCidr { node: "x".into() });
    }

    #[test]
    fn ipv6_derived_mac_is_the_subnet_index() {
        let m = |s: &str| derive_vtep_mac_v6(s.parse().unwrap()).to_string();
        assert_eq!(m("fd00:10:244:7::/64"), "0a:58:02:44:00:07");
        assert_eq!(m("fd00::c0/122"), "0a:58:00:00:00:03");
        assert_ne!(m("fd00:10:244:7::/64"), m("fd00:10:244:8::/64"));
        assert!(derive_vtep_mac_v6("::/0".parse().unwrap()).is_valid_vtep());
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
        // IPv4-only annotations: unreadable while IPv4 is enabled.
        let v = NodeView::from_node(&n).unwrap();
        let e = v.unreadable(true, false).unwrap().to_string();
        assert!(e.contains("backend-data") && e.contains("unicast"), "{e}");
        assert_eq!(v.unreadable(false, true), None);
        let n = node(
            "z",
            Some("10.244.1.0/24"),
            "1.1.1.1",
            &[(ANN_PUBLIC_IP, "not-an-ip")],
        );
        let v = NodeView::from_node(&n).unwrap();
        assert!(v
            .unreadable(true, true)
            .unwrap()
            .to_string()
            .contains("not-an-ip"));
        assert_eq!(v.unreadable(false, true), None);
    }

    /// flanneld's annotations.go keys, under the default and a custom prefix; empty is unset.
    #[test]
    fn stored_public_ip_keys_are_flannels() {
        let n = node(
            "a",
            Some("10.244.1.0/24"),
            "198.18.0.1",
            &[
                ("flannel.alpha.coreos.com/node-public-ip", "198.18.0.101"),
                ("flannel.alpha.coreos.com/node-public-ipv6", ""),
                ("example.com/node-public-ipv6", "fd00::1"),
            ],
        );
        let s = StoredPublicIp::of_node(&n, ANNOTATION_PREFIX);
        assert_eq!(
            s.v4,
            Some((ANN_NODE_PUBLIC_IP.to_string(), "198.18.0.101".to_string()))
        );
        assert_eq!(s.v6, None);
        let s = StoredPublicIp::of_node(&n, "example.com/");
        assert_eq!(s.v4, None);
        assert_eq!(
            s.v6,
            Some((
                "example.com/node-public-ipv6".to_string(),
                "fd00::1".to_string()
            ))
        );
    }

    /// Flannel's nodeToLease reads `public-ip` and `backend-data` only with EnableIPv4, and
    /// `public-ipv6` only with EnableIPv6 (`public-ip-overwrite` is copied into `public-ip`
    /// by Flannel, so it counts as IPv4 data): a bad value there makes a peer unreadable, and
    /// the own node an error, only while its family is enabled.
    #[test]
    fn bad_data_of_a_disabled_family_is_ignored() {
        let bd = |m: &str| format!(r#"{{"VNI":1,"VtepMAC":"{m}"}}"#);
        let v6_node = |name: &str, i: u8, extra: &[(&str, &str)]| {
            let mut ann = vec![
                (ANN_BACKEND_TYPE, "vxlan".to_string()),
                (ANN_BACKEND_V6_DATA, bd(&format!("02:00:00:00:06:0{i}"))),
            ];
            ann.extend(extra.iter().map(|(k, v)| (*k, (*v).to_string())));
            let ann: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (*k, v.as_str())).collect();
            node(
                name,
                Some(&format!("fd00:10:244:{i}::/64")),
                &format!("fd00:18::{i}"),
                &ann,
            )
        };
        let bad_v4: [(&str, &str); 3] = [
            (ANN_PUBLIC_IP, "not-an-ip"),
            (ANN_PUBLIC_IP_OVERWRITE, "300.1.1.1"),
            (ANN_BACKEND_DATA, "{broken"),
        ];
        let v6_only = PeerPolicy::ipv6_only("fd00:10:244::/56".parse().unwrap());
        // IPv6-only: each bad IPv4 annotation alone (and all three) leaves a good peer, and an
        // own node that serves.
        let mut cases: Vec<Vec<(&str, &str)>> = bad_v4.iter().map(|kv| vec![*kv]).collect();
        cases.push(bad_v4.to_vec());
        for extra in &cases {
            let nodes = vec![v6_node("a", 1, &[]), v6_node("b", 2, extra)];
            let s = ClusterState::from_nodes(&nodes, "a", PeerFilter::RequireVxlanAnnotation)
                .unwrap()
                .validated(&v6_only)
                .unwrap();
            assert_eq!(s.skipped, vec![], "{extra:?}");
            let b = &s.peers[0];
            assert_eq!(b.v4, None);
            let p6 = b.v6.unwrap();
            assert_eq!(p6.vtep_ip, "fd00:18::2".parse::<Ipv6Addr>().unwrap());
            assert_eq!(p6.vtep_mac.to_string(), "02:00:00:00:06:02");

            let nodes = vec![v6_node("a", 1, extra), v6_node("b", 2, &[])];
            let s = ClusterState::from_nodes(&nodes, "a", PeerFilter::RequireVxlanAnnotation)
                .unwrap()
                .validated(&v6_only)
                .unwrap_or_else(|e| panic!("own node with {extra:?}: {e}"));
            assert_eq!(s.peers.len(), 1, "{extra:?}");
            // Its backend-v6-data MAC (the bad IPv4 data gives no MAC of its own).
            assert_eq!(s.own_vtep_mac().to_string(), "02:00:00:00:06:01");
        }
        // IPv6-only with a non-vxlan backend-type and bad IPv4 data: skipped for its
        // backend-type, as any node with that backend-type.
        let mut other = v6_node("c", 3, &bad_v4);
        other
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANN_BACKEND_TYPE.into(), "host-gw".into());
        let nodes = vec![v6_node("a", 1, &[]), other];
        let s = ClusterState::from_nodes(&nodes, "a", PeerFilter::RequireVxlanAnnotation)
            .unwrap()
            .validated(&v6_only)
            .unwrap();
        assert_eq!(kind_of(&s, "c"), Some(SkipReason::BackendType));

        // IPv4 on: unchanged. Each bad IPv4 annotation makes a peer unreadable (naming key and
        // value, whatever its backend-type) and the own node an error.
        let v4_node = |name: &str, i: u8, extra: &[(&str, &str)]| {
            let mut ann = vec![(ANN_BACKEND_TYPE, "vxlan")];
            ann.extend_from_slice(extra);
            node(
                name,
                Some(&format!("10.244.{i}.0/24")),
                &format!("198.18.0.{i}"),
                &ann,
            )
        };
        for (key, value) in bad_v4 {
            for backend in ["vxlan", "host-gw"] {
                let mut b = v4_node("b", 2, &[(key, value)]);
                b.metadata
                    .annotations
                    .as_mut()
                    .unwrap()
                    .insert(ANN_BACKEND_TYPE.into(), backend.into());
                let nodes = vec![v4_node("a", 1, &[]), b];
                let raw = ClusterState::from_nodes(&nodes, "a", PeerFilter::RequireVxlanAnnotation)
                    .unwrap();
                for s in [raw.clone(), raw.validated(&policy()).unwrap()] {
                    assert_eq!(s.peers, vec![]);
                    assert_eq!(kind_of(&s, "b"), Some(SkipReason::Unreadable));
                    let why = &s.skipped[0].reason;
                    assert!(
                        why.contains("node b") && why.contains(key) && why.contains(value),
                        "{why}"
                    );
                }
            }
            let nodes = vec![v4_node("a", 1, &[(key, value)]), v4_node("b", 2, &[])];
            let e = ClusterState::from_nodes(&nodes, "a", PeerFilter::RequireVxlanAnnotation)
                .unwrap()
                .validated(&policy())
                .unwrap_err();
            assert!(
                matches!(&e, ModelError::BadAnnotation { node, key: k, value: v, .. }
                    if node == "a" && *k == key && v == value),
                "{e}"
            );
        }

        // The reverse: bad public-ipv6(-overwrite) or backend-v6-data is no matter without
        // EnableIPv6, for a peer and for the own node; with it, the peer is unreadable and
        // the own node (public-ipv6) an error.
        let bad_v6: [(&str, &str); 3] = [
            (ANN_PUBLIC_IPV6, "fd00::zz"),
            (ANN_PUBLIC_IPV6_OVERWRITE, "10.0.0.1x"),
            (ANN_BACKEND_V6_DATA, "{broken"),
        ];
        let dual = PeerPolicy {
            network_v6: Some("fd00:10:244::/56".parse().unwrap()),
            ..policy()
        };
        let dual_node = |name: &str, i: u8, extra: &[(&str, &str)]| {
            let mut n = v4_node(name, i, extra);
            n.spec.as_mut().unwrap().pod_cidrs = Some(vec![
                format!("10.244.{i}.0/24"),
                format!("fd00:10:244:{i}::/64"),
            ]);
            n
        };
        for (key, value) in bad_v6 {
            let nodes = vec![dual_node("a", 1, &[]), dual_node("b", 2, &[(key, value)])];
            let raw =
                ClusterState::from_nodes(&nodes, "a", PeerFilter::RequireVxlanAnnotation).unwrap();
            let s = raw.validated(&policy()).unwrap();
            assert_eq!(s.peers.len(), 1, "{key}: {:?}", s.skipped);
            let own_nodes = vec![dual_node("a", 1, &[(key, value)]), dual_node("b", 2, &[])];
            let own_raw =
                ClusterState::from_nodes(&own_nodes, "a", PeerFilter::RequireVxlanAnnotation)
                    .unwrap();
            let s = own_raw
                .validated(&policy())
                .unwrap_or_else(|e| panic!("own node with {key}: {e}"));
            assert_eq!(s.peers.len(), 1, "{key}: {:?}", s.skipped);
            if key != ANN_BACKEND_V6_DATA {
                let e = own_raw.validated(&dual).unwrap_err().to_string();
                assert!(e.contains(key) && e.contains(value), "{e}");
            }
            let s = raw.validated(&dual).unwrap();
            assert_eq!(kind_of(&s, "b"), Some(SkipReason::Unreadable), "{key}");
            assert!(s.skipped[0].reason.contains(key), "{:?}", s.skipped);
        }
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

    fn policy() -> PeerPolicy {
        PeerPolicy {
            network: Some("10.244.0.0/16".parse().unwrap()),
            network_v6: None,
            own_addresses: ["198.18.0.1", "10.244.1.0", "10.244.1.1", "127.0.0.1"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
            underlay_subnets: vec!["198.18.0.0/24".parse().unwrap()],
            allow_link_local_vtep: false,
        }
    }

    /// The skip kind of `name` in `s`, or `None` when it is a peer.
    fn kind_of(s: &ClusterState, name: &str) -> Option<SkipReason> {
        if s.peers.iter().any(|p| p.name == name) {
            return None;
        }
        Some(
            s.skipped
                .iter()
                .find(|k| k.node == name)
                .unwrap_or_else(|| panic!("{name} neither peer nor skipped: {s:?}"))
                .kind,
        )
    }

    /// Own node "a" (10.244.1.0/24 at 198.18.0.1), a good peer "ok", and `hostile`.
    fn decide_one(hostile: Node, p: &PeerPolicy) -> (ClusterState, ClusterState) {
        let nodes = vec![
            node("a", Some("10.244.1.0/24"), "198.18.0.1", &[]),
            node("ok", Some("10.244.2.0/24"), "198.18.0.2", &[]),
            hostile,
        ];
        let raw = ClusterState::from_nodes(&nodes, "a", PeerFilter::AllowUnannotated).unwrap();
        let v = raw.validated(p).unwrap();
        assert_eq!(kind_of(&v, "ok"), None, "the good peer stays: {v:?}");
        (raw, v)
    }

    #[test]
    fn every_peer_rule_has_its_reason_and_names_the_value() {
        use SkipReason as R;
        let cases: &[(&str, &str, R, &str)] = &[
            (
                "127.0.0.0/24",
                "198.18.0.9",
                R::PodCidrReserved,
                "127.0.0.0/24",
            ),
            (
                "224.1.0.0/24",
                "198.18.0.9",
                R::PodCidrReserved,
                "multicast",
            ),
            ("0.0.0.0/24", "198.18.0.9", R::PodCidrReserved, "0.0.0.0/24"),
            (
                "169.254.0.0/24",
                "198.18.0.9",
                R::PodCidrReserved,
                "link-local",
            ),
            (
                "10.99.0.0/24",
                "198.18.0.9",
                R::PodCidrOutsideNetwork,
                "10.99.0.0/24",
            ),
            (
                "10.0.0.0/12",
                "198.18.0.9",
                R::PodCidrOutsideNetwork,
                "10.244.0.0/16",
            ),
            (
                "198.18.0.0/25",
                "198.18.0.9",
                R::PodCidrOutsideNetwork,
                "198.18.0.0/25",
            ),
            (
                "10.244.1.128/25",
                "198.18.0.9",
                R::PodCidrOverlapsOwn,
                "10.244.1.0/24",
            ),
            (
                "10.244.2.0/23",
                "198.18.0.9",
                R::PodCidrOverlapsPeer,
                "node ok",
            ),
            ("10.244.9.0/24", "0.0.0.0", R::VtepNotUnicast, "0.0.0.0"),
            ("10.244.9.0/24", "224.0.0.5", R::VtepNotUnicast, "multicast"),
            (
                "10.244.9.0/24",
                "255.255.255.255",
                R::VtepNotUnicast,
                "broadcast",
            ),
            (
                "10.244.9.0/24",
                "198.18.0.255",
                R::VtepNotUnicast,
                "198.18.0.0/24",
            ),
            ("10.244.9.0/24", "127.0.0.2", R::VtepLoopback, "127.0.0.2"),
            (
                "10.244.9.0/24",
                "169.254.7.7",
                R::VtepLinkLocal,
                "169.254.7.7",
            ),
            (
                "10.244.9.0/24",
                "198.18.0.1",
                R::VtepOwnAddress,
                "198.18.0.1",
            ),
            (
                "10.244.9.0/24",
                "10.244.200.1",
                R::VtepInPodNetwork,
                "10.244.0.0/16",
            ),
            ("10.244.9.0/24", "198.18.0.2", R::VtepDuplicate, "node ok"),
        ];
        for (cidr, vtep, want, names) in cases {
            let (_, v) = decide_one(node("zz", Some(cidr), vtep, &[]), &policy());
            let s = v.skipped.iter().find(|k| k.node == "zz");
            let s = s.unwrap_or_else(|| panic!("{cidr} at {vtep} accepted: {v:?}"));
            assert_eq!(s.kind, *want, "{cidr} at {vtep}: {}", s.reason);
            assert!(s.reason.contains(names), "{cidr} at {vtep}: {}", s.reason);
        }
        // Two nodes claiming one VtepMAC.
        let mac = [(
            ANN_BACKEND_DATA,
            r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:02:00"}"#,
        )];
        let (_, v) = decide_one(
            node("zz", Some("10.244.9.0/24"), "198.18.0.9", &mac),
            &policy(),
        );
        assert_eq!(kind_of(&v, "zz"), Some(R::VtepMacDuplicate));
        // Read before any policy: not vxlan, no podCIDR, no address, unreadable.
        let (_, v) = decide_one(
            node(
                "zz",
                Some("10.244.9.0/24"),
                "198.18.0.9",
                &[(ANN_BACKEND_TYPE, "host-gw")],
            ),
            &policy(),
        );
        assert_eq!(kind_of(&v, "zz"), Some(R::BackendType));
        let (_, v) = decide_one(node("zz", None, "198.18.0.9", &[]), &policy());
        assert_eq!(kind_of(&v, "zz"), Some(R::NoPodCidr));
        let (_, v) = decide_one(node("zz", Some("10.244.9.0/24"), "x", &[]), &policy());
        assert_eq!(kind_of(&v, "zz"), Some(R::NoPublicIp));
        let (_, v) = decide_one(
            node("zz", Some("10.244.9.1/24"), "198.18.0.9", &[]),
            &policy(),
        );
        assert_eq!(kind_of(&v, "zz"), Some(R::Unreadable));
        let nodes = [
            node("a", Some("10.244.1.0/24"), "198.18.0.1", &[]),
            node("zz", Some("10.244.9.0/24"), "198.18.0.9", &[]),
        ];
        let s = ClusterState::from_nodes(&nodes, "a", PeerFilter::RequireVxlanAnnotation).unwrap();
        assert_eq!(kind_of(&s, "zz"), Some(R::NoBackendAnnotation));
        // Every label is distinct and snake_case.
        let labels: std::collections::HashSet<_> = R::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), R::ALL.len());
        assert!(labels
            .iter()
            .all(|l| l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }

    #[test]
    fn underlay_covering_pod_cidrs_are_skipped_when_the_network_holds_the_underlay() {
        // A Network that contains the underlay (10.0.0.0/8 over 10.1.0.0/24): only the
        // underlay rules keep VXLAN itself out of the device.
        let p = PeerPolicy {
            network: Some("10.0.0.0/8".parse().unwrap()),
            own_addresses: vec!["10.1.0.1".parse().unwrap(), "10.77.0.1".parse().unwrap()],
            underlay_subnets: vec!["10.1.0.0/24".parse().unwrap()],
            ..PeerPolicy::new("10.0.0.0/8".parse().unwrap())
        };
        let nodes = vec![
            node("a", Some("10.244.1.0/24"), "10.1.0.1", &[]),
            node("b", Some("10.1.0.0/25"), "10.1.0.2", &[]),
            node("c", Some("10.77.0.0/24"), "10.1.0.3", &[]),
            node("d", Some("10.244.4.0/24"), "10.1.0.4", &[]),
        ];
        let raw = ClusterState::from_nodes(&nodes, "a", PeerFilter::AllowUnannotated).unwrap();
        assert_eq!(
            raw.peers.len(),
            3,
            "without a policy the Nodes alone look fine"
        );
        let v = raw.validated(&p).unwrap();
        assert_eq!(kind_of(&v, "b"), Some(SkipReason::PodCidrCoversUnderlay));
        assert!(
            v.skipped[0].reason.contains("10.1.0.0/24"),
            "{:?}",
            v.skipped
        );
        assert_eq!(kind_of(&v, "c"), Some(SkipReason::PodCidrCoversUnderlay));
        assert_eq!(
            kind_of(&v, "d"),
            None,
            "a VTEP in a nested underlay subnet is fine"
        );
        // A VTEP inside the Network but outside the underlay could sit in a podCIDR.
        let nodes = vec![
            node("a", Some("10.244.1.0/24"), "10.1.0.1", &[]),
            node("e", Some("10.244.5.0/24"), "10.50.0.5", &[]),
        ];
        let raw = ClusterState::from_nodes(&nodes, "a", PeerFilter::AllowUnannotated).unwrap();
        let v = raw.validated(&p).unwrap();
        assert_eq!(kind_of(&v, "e"), Some(SkipReason::VtepInPodNetwork));
    }

    #[test]
    fn link_local_vteps_only_when_allowed() {
        let hostile = node("zz", Some("10.244.9.0/24"), "169.254.0.9", &[]);
        let (_, v) = decide_one(hostile.clone(), &policy());
        assert_eq!(kind_of(&v, "zz"), Some(SkipReason::VtepLinkLocal));
        let p = PeerPolicy {
            allow_link_local_vtep: true,
            ..policy()
        };
        let (_, v) = decide_one(hostile, &p);
        assert_eq!(kind_of(&v, "zz"), None);
    }

    #[test]
    fn a_skipped_bad_node_no_longer_keeps_out_the_good_node_it_overlaps() {
        let nodes = vec![
            node("a", Some("10.244.1.0/24"), "198.18.0.1", &[]),
            // Sorts first and claims a range around node "b"'s, from a loopback VTEP.
            node("a-evil", Some("10.244.2.0/23"), "127.0.0.9", &[]),
            node("b", Some("10.244.2.0/24"), "198.18.0.2", &[]),
        ];
        let raw = ClusterState::from_nodes(&nodes, "a", PeerFilter::AllowUnannotated).unwrap();
        assert_eq!(kind_of(&raw, "b"), Some(SkipReason::PodCidrOverlapsPeer));
        let v = raw.validated(&policy()).unwrap();
        assert_eq!(kind_of(&v, "a-evil"), Some(SkipReason::VtepLoopback));
        assert_eq!(kind_of(&v, "b"), None, "{v:?}");
        // Validating again changes nothing.
        assert_eq!(v.validated(&policy()).unwrap(), v);
    }

    #[test]
    fn own_node_with_a_bad_pod_cidr_is_an_error_naming_it() {
        for (cidr, words) in [
            (
                "10.99.1.0/24",
                "not inside the cluster Network 10.244.0.0/16",
            ),
            ("127.0.0.0/24", "loopback"),
        ] {
            let nodes = vec![node("a", Some(cidr), "198.18.0.1", &[])];
            let raw = ClusterState::from_nodes(&nodes, "a", PeerFilter::AllowUnannotated).unwrap();
            let e = raw.validated(&policy()).unwrap_err();
            assert!(matches!(e, ModelError::OwnPodCidrInvalid { .. }), "{e}");
            let e = e.to_string();
            assert!(
                e.contains(cidr) && e.contains(words) && e.contains("node a"),
                "{e}"
            );
        }
        let nodes = vec![node("a", Some("198.18.0.0/25"), "198.18.0.1", &[])];
        let p = PeerPolicy {
            network: Some("198.18.0.0/16".parse().unwrap()),
            ..policy()
        };
        let raw = ClusterState::from_nodes(&nodes, "a", PeerFilter::AllowUnannotated).unwrap();
        let e = raw.validated(&p).unwrap_err().to_string();
        assert!(e.contains("underlay subnet 198.18.0.0/24"), "{e}");
    }

    #[test]
    fn ipv6_fields_obey_the_same_rules_when_ipv6_is_enabled() {
        fn v6node(name: &str, v4: &str, ip: &str, cidr6: &str, ip6: &str) -> Node {
            let mut n = node(name, Some(v4), ip, &[(ANN_PUBLIC_IPV6, ip6)]);
            n.spec.as_mut().unwrap().pod_cidrs = Some(vec![v4.into(), cidr6.into()]);
            n
        }
        let p = PeerPolicy {
            network_v6: Some("fd00:10:244::/48".parse().unwrap()),
            own_addresses: vec!["198.18.0.1".parse().unwrap(), "fd00:18::1".parse().unwrap()],
            underlay_subnets: vec![
                "198.18.0.0/24".parse().unwrap(),
                "fd00:18::/64".parse().unwrap(),
            ],
            ..policy()
        };
        let nodes = vec![
            v6node(
                "a",
                "10.244.1.0/24",
                "198.18.0.1",
                "fd00:10:244:1::/64",
                "fd00:18::1",
            ),
            v6node(
                "b",
                "10.244.2.0/24",
                "198.18.0.2",
                "fd00:10:244:2::/64",
                "fd00:18::2",
            ),
            v6node(
                "c",
                "10.244.3.0/24",
                "198.18.0.3",
                "fd00:99::/64",
                "fd00:18::3",
            ),
            v6node(
                "d",
                "10.244.4.0/24",
                "198.18.0.4",
                "fd00:10:244:4::/64",
                "ff02::1",
            ),
            v6node(
                "e",
                "10.244.5.0/24",
                "198.18.0.5",
                "fd00:10:244:5::/64",
                "fe80::5",
            ),
            v6node(
                "f",
                "10.244.6.0/24",
                "198.18.0.6",
                "fd00:10:244:2::/63",
                "fd00:18::6",
            ),
            v6node(
                "g",
                "10.244.7.0/24",
                "198.18.0.7",
                "fd00:10:244:7::/64",
                "fd00:18::2",
            ),
            v6node(
                "h",
                "10.244.8.0/24",
                "198.18.0.8",
                "fd00:10:244:1::/64",
                "fd00:18::8",
            ),
            v6node(
                "i",
                "10.244.9.0/24",
                "198.18.0.9",
                "fd00:10:244:9::/64",
                "fd00:18::1",
            ),
            v6node(
                "j",
                "10.244.10.0/24",
                "198.18.0.10",
                "fd00:10:244:a::/64",
                "fd00:10:244:1::9",
            ),
        ];
        let raw = ClusterState::from_nodes(&nodes, "a", PeerFilter::AllowUnannotated).unwrap();
        assert_eq!(
            raw.peers.len(),
            9,
            "IPv6 fields are not checked without a policy"
        );
        let v = raw.validated(&p).unwrap();
        use SkipReason as R;
        for (name, want) in [
            ("b", None),
            ("c", Some(R::PodCidrOutsideNetwork)),
            ("d", Some(R::VtepNotUnicast)),
            ("e", Some(R::VtepLinkLocal)),
            ("f", Some(R::PodCidrOverlapsPeer)),
            ("g", Some(R::VtepDuplicate)),
            ("h", Some(R::PodCidrOverlapsOwn)),
            ("i", Some(R::VtepOwnAddress)),
            ("j", Some(R::VtepInPodNetwork)),
        ] {
            assert_eq!(kind_of(&v, name), want, "{name}: {:?}", v.skipped);
        }
        // IPv6 disabled: the same nodes are judged by their IPv4 fields only.
        let v = raw.validated(&policy()).unwrap();
        assert_eq!(v.peers.len(), 9, "{:?}", v.skipped);
    }

    #[test]
    fn ipv6_peers_carry_their_v6_vtep_and_lack_of_one_skips_them() {
        fn dual(name: &str, i: u8, ann: &[(&str, &str)]) -> Node {
            let v4 = format!("10.244.{i}.0/24");
            let mut n = node(name, Some(&v4), &format!("198.18.0.{i}"), ann);
            n.spec.as_mut().unwrap().pod_cidrs = Some(vec![v4, format!("fd00:10:244:{i}::/64")]);
            n
        }
        let p = PeerPolicy {
            network_v6: Some("fd00:10:244::/48".parse().unwrap()),
            ..policy()
        };
        let mac_c = r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:0c"}"#;
        let mut v4_only = node("e", Some("10.244.5.0/24"), "198.18.0.5", &[]);
        v4_only.metadata.annotations = Some(BTreeMap::from([(
            ANN_PUBLIC_IPV6.to_string(),
            "fd00:18::5".to_string(),
        )]));
        let nodes = vec![
            dual("a", 1, &[(ANN_PUBLIC_IPV6, "fd00:18::1")]),
            // Derived: the IPv6 VTEP shares the IPv4 VtepMAC.
            dual("b", 2, &[(ANN_PUBLIC_IPV6, "fd00:18::2")]),
            // Flannel's own v6 device MAC, from backend-v6-data.
            dual(
                "c",
                3,
                &[
                    (ANN_PUBLIC_IPV6, "fd00:18::3"),
                    (ANN_BACKEND_V6_DATA, mac_c),
                ],
            ),
            // The same IPv6 VtepMAC as c: the later one (by name) is skipped.
            dual(
                "d",
                4,
                &[
                    (ANN_PUBLIC_IPV6, "fd00:18::4"),
                    (ANN_BACKEND_V6_DATA, mac_c),
                ],
            ),
            // No IPv6 podCIDR.
            v4_only,
            // No IPv6 address at all.
            dual("f", 6, &[]),
            // Flannel writes null when a node has no IPv6 VTEP: derived again.
            dual(
                "g",
                7,
                &[
                    (ANN_PUBLIC_IPV6, "fd00:18::7"),
                    (ANN_BACKEND_V6_DATA, "null"),
                ],
            ),
        ];
        let raw = ClusterState::from_nodes(&nodes, "a", PeerFilter::AllowUnannotated).unwrap();
        assert!(
            raw.peers.iter().all(|p| p.v6.is_none()),
            "no IPv6 side without a policy that enables it"
        );
        let v = raw.validated(&p).unwrap();
        use SkipReason as R;
        for (name, want) in [
            ("b", None),
            ("c", None),
            ("d", Some(R::VtepMacDuplicate)),
            ("e", Some(R::NoPodCidr)),
            ("f", Some(R::NoPublicIp)),
            ("g", None),
        ] {
            assert_eq!(kind_of(&v, name), want, "{name}: {:?}", v.skipped);
        }
        let peer = |n: &str| v.peers.iter().find(|p| p.name == n).unwrap();
        let b = peer("b");
        assert_eq!(
            b.v6,
            Some(PeerV6 {
                pod_cidr: "fd00:10:244:2::/64".parse().unwrap(),
                vtep_ip: "fd00:18::2".parse().unwrap(),
                vtep_mac: b.v4.unwrap().vtep_mac,
            })
        );
        assert_eq!(
            peer("c").v6.unwrap().vtep_mac.to_string(),
            "02:00:00:00:00:0c"
        );
        assert_ne!(
            peer("c").v4.unwrap().vtep_mac.to_string(),
            "02:00:00:00:00:0c"
        );
        assert_eq!(
            peer("g").v6.unwrap().vtep_mac,
            peer("g").v4.unwrap().vtep_mac
        );
        let why = |n: &str| {
            v.skipped
                .iter()
                .find(|s| s.node == n)
                .unwrap()
                .reason
                .clone()
        };
        assert!(why("e").contains("no IPv6 podCIDR"), "{}", why("e"));
        assert!(why("f").contains(ANN_PUBLIC_IPV6), "{}", why("f"));
        assert!(
            why("d").contains("IPv6 VtepMAC 02:00:00:00:00:0c"),
            "{}",
            why("d")
        );

        // IPv6 off: the same nodes are IPv4 peers without an IPv6 side, e and f included.
        let v = raw.validated(&policy()).unwrap();
        assert_eq!(v.peers.len(), 6, "{:?}", v.skipped);
        assert!(v.peers.iter().all(|p| p.v6.is_none()));

        // A broken backend-v6-data makes the node unreadable, naming the key, but only with
        // IPv6 on: Flannel does not read it otherwise, so IPv4-only clusters are unaffected.
        let bad = dual(
            "h",
            8,
            &[
                (ANN_PUBLIC_IPV6, "fd00:18::8"),
                (
                    ANN_BACKEND_V6_DATA,
                    r#"{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}"#,
                ),
            ],
        );
        let with_bad = [nodes[0].clone(), bad];
        let raw = ClusterState::from_nodes(&with_bad, "a", PeerFilter::AllowUnannotated).unwrap();
        let off = raw.validated(&policy()).unwrap();
        assert_eq!(off.peers.len(), 1, "{:?}", off.skipped);
        let on = raw.validated(&p).unwrap();
        assert_eq!(kind_of(&on, "h"), Some(R::Unreadable), "{:?}", on.skipped);
        let why = &on.skipped.iter().find(|s| s.node == "h").unwrap().reason;
        assert!(
            why.contains("backend-v6-data") && why.contains("unicast"),
            "{why}"
        );
    }

    #[test]
    fn own_node_needs_an_ipv6_pod_cidr_when_ipv6_is_on() {
        let nodes = vec![node("a", Some("10.244.1.0/24"), "198.18.0.1", &[])];
        let p = PeerPolicy {
            network_v6: Some("fd00:10:244::/48".parse().unwrap()),
            ..policy()
        };
        let raw = ClusterState::from_nodes(&nodes, "a", PeerFilter::AllowUnannotated).unwrap();
        let e = raw.validated(&p).unwrap_err();
        assert_eq!(e, ModelError::NoPodCidrV6 { node: "a".into() });
        assert!(e.to_string().contains("EnableIPv6"), "{e}");
        assert!(raw.validated(&policy()).is_ok());
    }
}
