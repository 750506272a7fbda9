//! Flannel's etcd subnet manager (flanneld without `--kube-subnet-mgr`), on etcd v3.
//!
//! It owns the conversation with etcd and nothing else: the network configuration at
//! `<prefix>/config`, this node's lease at `<prefix>/subnets/<a.b.c.d>-<len>` (taken, renewed,
//! taken again when lost) and the watch of every lease under `<prefix>/subnets/`. Leases become
//! [`NodeView`]s and go through the same [`ClusterState`] decision as Node objects, so a lease
//! written by flanneld and one written by overlayd are peers alike. It never touches the
//! network, and it never waits on the dataplane: while etcd is unreachable it sends nothing
//! (the daemon forwards with the last state) and says why on the `problem` channel.
//!
//! Flannel's code is the reference (pkg/subnet/etcd/{registry,local_manager}.go): the schema,
//! the JSON of a lease, the reuse of a lease found by public IP, the previous subnet from
//! subnet.env, the random choice among the first 100 free subnets, the create-if-absent
//! transaction, and renewal as a new etcd lease plus a put.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::model::{
    derive_vtep_mac, derive_vtep_mac_v6, BackendData, ClusterState, MacAddr, NodeView, PeerFilter,
    SkipReason, Skipped,
};

/// What the source sends: a full state, or why there is none.
pub type Update = Result<ClusterState, String>;

/// Flannel's `subnetTTL`: every lease is granted for 24 hours.
pub const SUBNET_TTL: Duration = Duration::from_secs(24 * 3600);
/// Flannel's `raceRetries`: how often a lost create race is retried with a fresh list.
const RACE_RETRIES: usize = 10;
/// How many free subnets the random choice is made among (Flannel's allocateSubnet).
const CANDIDATES: usize = 100;
/// Bound of every single etcd request (a watch stream is bounded by keep-alive instead).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Flannel's watch backoff cap.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// `--etcd-*` as flanneld takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// `--etcd-prefix`, e.g. `/coreos.com/network`.
    pub prefix: String,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot read {what} {path}: {source}; check --etcd-{what}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--etcd-certfile and --etcd-keyfile go together (given: {given}); pass both or neither"
    )]
    HalfIdentity { given: &'static str },
    #[error("--etcd-endpoints is empty: give one or more URLs like http://10.0.0.1:2379")]
    NoEndpoints,
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoints}: no answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { endpoints: String },
    #[error("no free subnet left in {min}..={max} (/{len}): {leased} leases held; widen {network_key} or {keys} in {prefix}/config")]
    OutOfSubnets {
        min: IpAddr,
        max: IpAddr,
        len: u8,
        leased: usize,
        network_key: &'static str,
        keys: &'static str,
        prefix: String,
    },
    #[error("lost the race for a free subnet {RACE_RETRIES} times in a row; retrying")]
    MaxRetries,
}

/// The range one family's leases are taken from: net-conf's `Network`, `SubnetLen`,
/// `SubnetMin` and `SubnetMax` (or their `IPv6` counterparts) after Flannel's
/// `CheckNetworkConfig` defaulting (the daemon computes it). Both addresses are of the
/// network's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetRange {
    pub network: IpNetwork,
    pub subnet_len: u8,
    pub subnet_min: IpAddr,
    pub subnet_max: IpAddr,
}

/// An address as an integer (IPv4 in the low 32 bits), and its family's width.
fn int_of(a: IpAddr) -> (u128, u32) {
    match a {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// First and last address of `n` as integers.
fn span(n: IpNetwork) -> (u128, u128) {
    let (start, bits) = int_of(n.network());
    let host = u128::MAX >> (128 - bits) >> u32::from(n.prefix());
    (start, start | host)
}

fn addr_of(v: u128, bits: u32) -> IpAddr {
    if bits == 32 {
        #[allow(clippy::cast_possible_truncation)]
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

impl SubnetRange {
    /// Flannel's `isSubnetConfigCompat` / `isIPv6SubnetConfigCompat` for a subnet present.
    #[must_use]
    pub fn compatible(&self, sn: IpNetwork) -> bool {
        let ip = int_of(sn.network());
        sn.is_ipv4() == self.network.is_ipv4()
            && ip >= int_of(self.subnet_min)
            && ip <= int_of(self.subnet_max)
            && sn.prefix() == self.subnet_len
    }

    fn keys(&self) -> (&'static str, &'static str) {
        if self.network.is_ipv4() {
            ("Network", "SubnetMin/SubnetMax")
        } else {
            ("IPv6Network", "IPv6SubnetMin/IPv6SubnetMax")
        }
    }
}

/// The ranges leases are taken from, one per enabled family (`EnableIPv4`, `EnableIPv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub v4: Option<SubnetRange>,
    pub v6: Option<SubnetRange>,
}

impl Allocation {
    /// Whether a lease's subnets fit this configuration: each enabled family present and in
    /// its range, each disabled family absent (Flannel's `isSubnetConfigCompat &&
    /// isIPv6SubnetConfigCompat`; a dual-stack config refuses an IPv4-only lease and the
    /// other way round).
    #[must_use]
    pub fn compatible(&self, sn: &LeaseSubnets) -> bool {
        fn fits(r: Option<SubnetRange>, n: Option<IpNetwork>) -> bool {
            match (r, n) {
                (Some(r), Some(n)) => r.compatible(n),
                (None, None) => true,
                _ => false,
            }
        }
        fits(self.v4, sn.v4.map(IpNetwork::V4)) && fits(self.v6, sn.v6.map(IpNetwork::V6))
    }
}

/// What this node publishes in its lease (the VtepMAC follows from the subnets). An address
/// is present exactly when its family is enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Me {
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub vni: u32,
}

impl Me {
    /// Whether a lease says it is this node's: Flannel's findLeaseByIP matches `PublicIP`;
    /// without IPv4 (where every lease says `PublicIP` 0.0.0.0) `PublicIPv6` is matched.
    fn owns(&self, attrs: &LeaseAttrs) -> bool {
        match (self.public_ip, self.public_ipv6) {
            (Some(ip), _) => attrs.public_ip.parse::<Ipv4Addr>() == Ok(ip),
            (None, Some(ip6)) => attrs
                .public_ipv6
                .as_deref()
                .is_some_and(|a| a.parse::<Ipv6Addr>() == Ok(ip6)),
            (None, None) => false,
        }
    }

    fn describe(&self) -> String {
        match (self.public_ip, self.public_ipv6) {
            (Some(a), Some(b)) => format!("{a} and {b}"),
            (Some(a), None) => a.to_string(),
            (None, Some(b)) => b.to_string(),
            (None, None) => "none".into(),
        }
    }
}

/// Flannel's `lease.LeaseAttrs` as it marshals them: `PublicIP`, `PublicIPv6` (null when
/// unset), then `BackendType`, `BackendData`, `BackendV6Data` when non-empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: String,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<String>,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<serde_json::Value>,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<serde_json::Value>,
}

/// The MAC overlayd's device has for a lease of `sn`: one device and one MAC for both
/// families, derived from the IPv4 subnet (from the IPv6 one without IPv4).
#[must_use]
pub fn vtep_mac_of(sn: &LeaseSubnets) -> Option<MacAddr> {
    sn.v4
        .map(derive_vtep_mac)
        .or_else(|| sn.v6.map(derive_vtep_mac_v6))
}

impl LeaseAttrs {
    /// The value overlayd writes for `sn`: what flanneld's vxlan backend writes
    /// (newSubnetAttrs): `BackendData` with the IPv4 VTEP, `PublicIPv6` and `BackendV6Data`
    /// with the IPv6 one. Without IPv4, `PublicIP` is Go's zero `ip.IP4`, 0.0.0.0.
    #[must_use]
    pub fn of(me: &Me, sn: &LeaseSubnets) -> Self {
        let data = |mac: MacAddr| serde_json::json!({ "VNI": me.vni, "VtepMAC": mac.to_string() });
        let mac = vtep_mac_of(sn);
        let v4 = me.public_ip.filter(|_| sn.v4.is_some());
        let v6 = me.public_ipv6.filter(|_| sn.v6.is_some());
        LeaseAttrs {
            public_ip: v4.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string(),
            public_ipv6: v6.map(|a| a.to_string()),
            backend_type: "vxlan".into(),
            backend_data: v4.and(mac).map(data),
            backend_v6_data: v6.and(mac).map(data),
        }
    }

    fn json(&self) -> String {
        serde_json::to_string(self).expect("lease attributes serialize")
    }
}

/// The subnets a lease key names (Flannel's MakeSubnetKey / ParseSubnetKey):
/// `10.244.7.0-24`, `10.244.7.0-24&fd00:10:244:7::-64` with `EnableIPv6`, and
/// `0.0.0.0-0&fd00:10:244:7::-64` without IPv4 (Flannel's empty `ip.IP4Net`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseSubnets {
    pub v4: Option<Ipv4Network>,
    pub v6: Option<Ipv6Network>,
}

impl LeaseSubnets {
    /// The key's last path element.
    #[must_use]
    pub fn key(&self) -> String {
        let (ip, len) = self
            .v4
            .map_or((Ipv4Addr::UNSPECIFIED, 0), |n| (n.network(), n.prefix()));
        match self.v6 {
            None => format!("{ip}-{len}"),
            Some(n) => format!("{ip}-{len}&{}-{}", n.network(), n.prefix()),
        }
    }

    /// Whether `self` and `other` share an address of either family.
    fn overlaps(&self, other: &LeaseSubnets) -> bool {
        let meet = |a: Option<IpNetwork>, b: Option<IpNetwork>| match (a, b) {
            (Some(a), Some(b)) => {
                let ((a0, a1), (b0, b1)) = (span(a), span(b));
                a0 <= b1 && b0 <= a1
            }
            _ => false,
        };
        meet(self.v4.map(Into::into), other.v4.map(Into::into))
            || meet(self.v6.map(Into::into), other.v6.map(Into::into))
    }
}

impl std::fmt::Display for LeaseSubnets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.v4, self.v6) {
            (Some(a), Some(b)) => write!(f, "{a} + {b}"),
            (Some(a), None) => write!(f, "{a}"),
            (None, Some(b)) => write!(f, "{b}"),
            (None, None) => f.write_str("no subnet"),
        }
    }
}

/// `10.244.7.0/24` -> `10.244.7.0-24` (Flannel's MakeSubnetKey for an IPv4-only lease).
#[must_use]
pub fn subnet_key(sn: Ipv4Network) -> String {
    LeaseSubnets {
        v4: Some(sn),
        v6: None,
    }
    .key()
}

/// Flannel's ParseSubnetKey: the key's last path element `a.b.c.d-len`, optionally followed by
/// `&<ipv6>-<len>`; `0.0.0.0-0` is no IPv4 subnet. `None` for anything else (and for a key
/// with neither family), as well as for host bits set.
#[must_use]
pub fn parse_subnet_key(key: &str) -> Option<LeaseSubnets> {
    let last = key.rsplit('/').next()?;
    let (v4, v6) = match last.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (last, None),
    };
    let (ip, len) = v4.rsplit_once('-')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let v4 = if ip.is_unspecified() && len == 0 {
        None
    } else {
        Some(
            Ipv4Network::new(ip, len)
                .ok()
                .filter(|n| n.network() == ip)?,
        )
    };
    let v6 = match v6 {
        None => None,
        Some(t) => {
            let (ip, len) = t.rsplit_once('-')?;
            let ip: Ipv6Addr = ip.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            Some(
                Ipv6Network::new(ip, len)
                    .ok()
                    .filter(|n| n.network() == ip)?,
            )
        }
    };
    (v4.is_some() || v6.is_some()).then_some(LeaseSubnets { v4, v6 })
}

/// `path.Join(prefix, parts...)` for the keys used here.
fn join(prefix: &str, rest: &str) -> String {
    format!("{}/{rest}", prefix.trim_end_matches('/'))
}

/// A lease as read from etcd: its subnets and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseEntry {
    pub subnets: LeaseSubnets,
    pub attrs: LeaseAttrs,
}

/// `BackendData`/`BackendV6Data` read as flanneld's vxlanLeaseAttrs.
fn read_vtep_mac(what: &str, raw: &serde_json::Value) -> Result<MacAddr, String> {
    let data: BackendData = serde_json::from_value(raw.clone())
        .map_err(|e| format!("{what} {raw} is not {{\"VNI\":..,\"VtepMAC\":..}}: {e}"))?;
    let mac: MacAddr = data.vtep_mac.parse().map_err(|e| format!("{what}: {e}"))?;
    if !mac.is_valid_vtep() {
        return Err(format!(
            "{what} VtepMAC {mac} must be a unicast, non-zero address"
        ));
    }
    Ok(mac)
}

/// A lease read into the node model. The name is the lease key (`10.244.7.0-24`): etcd
/// leases name no node. The IPv6 half (the key's `&<ipv6>-<len>`, `PublicIPv6`,
/// `BackendV6Data`) is read as Flannel's vxlan backend reads it with `EnableIPv6`: a bad or
/// missing `BackendV6Data` leaves the lease out then (`bad_v6_data`), and is no matter in an
/// IPv4-only network.
fn view_of(key: &str, sn: &LeaseSubnets, attrs: &LeaseAttrs) -> Result<NodeView, String> {
    // Flannel unmarshals the whole value first: a bad address fails the lease.
    let public_ip = attrs
        .public_ip
        .parse::<Ipv4Addr>()
        .map_err(|e| format!("PublicIP {:?} is not an IPv4 address: {e}", attrs.public_ip))?;
    let public_ip_v6 = attrs
        .public_ipv6
        .as_deref()
        .map(|a| {
            a.parse::<Ipv6Addr>()
                .map_err(|e| format!("PublicIPv6 {a:?} is not an IPv6 address: {e}"))
        })
        .transpose()?;
    let (mut vtep_mac, mut vtep_mac_v6, mut bad_v6_data) = (None, None, None);
    if attrs.backend_type == "vxlan" {
        match (&attrs.backend_data, sn.v4) {
            (Some(raw), _) => vtep_mac = Some(read_vtep_mac("BackendData", raw)?),
            (None, Some(_)) => return Err("BackendType vxlan without BackendData".into()),
            (None, None) => {}
        }
        if let Some(v6) = sn.v6 {
            match &attrs.backend_v6_data {
                Some(raw) => match read_vtep_mac("BackendV6Data", raw) {
                    Ok(m) => vtep_mac_v6 = Some(m),
                    Err(e) => bad_v6_data = Some(e),
                },
                None => {
                    bad_v6_data = Some(format!(
                        "BackendType vxlan with IPv6 subnet {v6} but without BackendV6Data"
                    ));
                }
            }
        }
    }
    Ok(NodeView {
        name: key.to_string(),
        pod_cidr: sn.v4,
        pod_cidr_v6: sn.v6,
        // A lease without IPv4 says 0.0.0.0 (Go's zero ip.IP4): no address.
        public_ip: Some(public_ip).filter(|_| sn.v4.is_some()),
        public_ip_v6,
        vtep_mac,
        vtep_mac_annotated: vtep_mac.is_some(),
        vtep_mac_v6,
        vtep_mac_v6_annotated: vtep_mac_v6.is_some(),
        bad_v6_data,
        bad_family_data: Vec::new(),
        backend_type: Some(attrs.backend_type.clone()),
    })
}

/// The lease set as last read, by key.
#[derive(Debug, Default, Clone)]
pub struct Leases {
    /// key -> the lease, or why it could not be read.
    by_key: BTreeMap<String, Result<LeaseEntry, String>>,
}

impl Leases {
    fn put(&mut self, key: &str, value: &[u8]) {
        let Some(subnets) = parse_subnet_key(key) else {
            debug!(key, "not a subnet lease key; ignored");
            return;
        };
        let entry = serde_json::from_slice::<LeaseAttrs>(value)
            .map(|attrs| LeaseEntry { subnets, attrs })
            .map_err(|e| {
                format!(
                    "lease value {:?} is not Flannel's lease JSON: {e}",
                    String::from_utf8_lossy(value)
                )
            });
        self.by_key.insert(key.to_string(), entry);
    }

    fn delete(&mut self, key: &str) {
        self.by_key.remove(key);
    }

    /// Readable leases.
    fn entries(&self) -> impl Iterator<Item = (&String, &LeaseEntry)> {
        self.by_key
            .iter()
            .filter_map(|(k, v)| v.as_ref().ok().map(|e| (k, e)))
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The desired state for the node holding `own` (key, subnet, attributes).
    pub fn state(&self, own_key: &str, own: &LeaseEntry) -> Update {
        let own_view = view_of(own_key, &own.subnets, &own.attrs)
            .map_err(|e| format!("own lease {own_key}: {e}"))?;
        let mut views = Vec::with_capacity(self.by_key.len());
        let mut skips = Vec::new();
        for (key, v) in &self.by_key {
            if key == own_key {
                continue;
            }
            let name = key.rsplit('/').next().unwrap_or(key);
            match v
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|e| view_of(name, &e.subnets, &e.attrs))
            {
                Ok(view) => views.push(view),
                Err(reason) => skips.push(Skipped {
                    node: name.to_string(),
                    reason: format!("lease {key}: {reason}"),
                    kind: SkipReason::Unreadable,
                }),
            }
        }
        ClusterState::from_views(own_view, views, skips, PeerFilter::RequireVxlanAnnotation)
            .map_err(|e| e.to_string())
    }
}

/// One connection to etcd and the keys under `--etcd-prefix`.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    prefix: String,
    endpoints: String,
}

fn read(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::ReadFile {
        what,
        path: path.clone(),
        source,
    })
}

/// Runs an etcd request with the request timeout, naming the endpoints in its error.
async fn call<T>(
    endpoints: &str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Etcd {
            endpoints: endpoints.to_string(),
            source,
        }),
        Err(_) => Err(EtcdError::Timeout {
            endpoints: endpoints.to_string(),
        }),
    }
}

impl Registry {
    /// Connects (and authenticates, with a username). TLS is used for `https://` endpoints or
    /// when a CA, certificate or key is given.
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self, EtcdError> {
        if cfg.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            // A dead member is noticed by HTTP/2 pings, also under a quiet watch.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // As Flannel's WithRequireLeader: a member cut off from the quorum fails the
            // request (and cancels the watch) instead of serving stale data.
            .with_require_leader(true)
            .with_auto_token_refresh(true);
        let tls = cfg.cafile.is_some()
            || cfg.certfile.is_some()
            || cfg.keyfile.is_some()
            || cfg.endpoints.iter().any(|e| e.starts_with("https://"));
        if tls {
            let mut t = etcd_client::TlsOptions::new();
            if let Some(ca) = &cfg.cafile {
                t = t.ca_certificate(etcd_client::Certificate::from_pem(read("cafile", ca)?));
            }
            match (&cfg.certfile, &cfg.keyfile) {
                (Some(c), Some(k)) => {
                    t = t.identity(etcd_client::Identity::from_pem(
                        read("certfile", c)?,
                        read("keyfile", k)?,
                    ));
                }
                (Some(_), None) => return Err(EtcdError::HalfIdentity { given: "certfile" }),
                (None, Some(_)) => return Err(EtcdError::HalfIdentity { given: "keyfile" }),
                (None, None) => {}
            }
            opts = opts.with_tls(t);
        } else {
            warn!("no certificate provided: connecting to etcd with http. This is insecure");
        }
        if let Some(user) = &cfg.username {
            opts = opts.with_user(user.clone(), cfg.password.clone().unwrap_or_default());
        }
        let endpoints = cfg.endpoints.join(",");
        let client = call(&endpoints, Client::connect(&cfg.endpoints, Some(opts))).await?;
        Ok(Registry {
            client,
            prefix: cfg.prefix.trim_end_matches('/').to_string(),
            endpoints,
        })
    }

    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The raw `<prefix>/config` value; `None` when the key does not exist.
    pub async fn network_config(&self) -> Result<Option<String>, EtcdError> {
        let mut c = self.client.clone();
        let key = join(&self.prefix, "config");
        let resp = call(&self.endpoints, c.get(key, None)).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    fn subnets_prefix(&self) -> String {
        join(&self.prefix, "subnets/")
    }

    fn lease_key(&self, sn: &LeaseSubnets) -> String {
        join(&self.prefix, &format!("subnets/{}", sn.key()))
    }

    /// Every lease under `<prefix>/subnets/`, and the revision they were read at.
    pub async fn list(&self) -> Result<(Leases, i64), EtcdError> {
        let mut c = self.client.clone();
        let resp = call(
            &self.endpoints,
            c.get(self.subnets_prefix(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut leases = Leases::default();
        for kv in resp.kvs() {
            leases.put(&String::from_utf8_lossy(kv.key()), kv.value());
        }
        let rev = resp.header().map_or(0, |h| h.revision());
        Ok((leases, rev))
    }

    /// Flannel's createSubnet: a new etcd lease of `ttl`, and the key put only if it does not
    /// exist. `Ok(None)` when another node holds the key (the etcd lease is revoked again).
    ///
    /// A dual-stack key names two subnets, and the transaction only guards the exact key: two
    /// nodes that chose the same IPv6 subnet with different IPv4 ones would both succeed
    /// (Flannel has this race). So after the put the leases are read again, and a lease that
    /// overlaps ours in either family and was created first (lower create revision) wins: ours
    /// is given up and `Ok(None)` makes the caller try again with a fresh list. Of two racers
    /// the later one always sees the earlier, so exactly one keeps the subnet.
    pub async fn create(
        &self,
        sn: LeaseSubnets,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<OwnLease>, EtcdError> {
        let mut c = self.client.clone();
        let key = self.lease_key(&sn);
        let granted = call(&self.endpoints, c.lease_grant(ttl_secs(ttl), None)).await?;
        let id = granted.id();
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                attrs.json(),
                Some(PutOptions::new().with_lease(id)),
            )]);
        let outcome = call(&self.endpoints, c.txn(txn)).await;
        let created_at = match outcome {
            Ok(r) if r.succeeded() => r.header().map_or(0, |h| h.revision()),
            Ok(_) => {
                let _ = call(&self.endpoints, c.lease_revoke(id)).await;
                return Ok(None);
            }
            Err(e) => {
                let _ = call(&self.endpoints, c.lease_revoke(id)).await;
                return Err(e);
            }
        };
        let earlier = match self.earlier_overlap(&key, &sn, created_at).await {
            Ok(x) => x,
            Err(e) => {
                let _ = call(&self.endpoints, c.lease_revoke(id)).await;
                return Err(e);
            }
        };
        if let Some(other) = earlier {
            debug!(subnet = %sn, other = %other, "a lease created just before ours overlaps it; giving ours up");
            let _ = call(&self.endpoints, c.lease_revoke(id)).await;
            return Ok(None);
        }
        Ok(Some(OwnLease::new(sn, attrs.clone(), id, granted.ttl())))
    }

    /// The key of a lease other than `own_key` that overlaps `sn` in either family and was
    /// created before revision `created_at`.
    async fn earlier_overlap(
        &self,
        own_key: &str,
        sn: &LeaseSubnets,
        created_at: i64,
    ) -> Result<Option<String>, EtcdError> {
        let mut c = self.client.clone();
        let resp = call(
            &self.endpoints,
            c.get(
                self.subnets_prefix(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await?;
        Ok(resp.kvs().iter().find_map(|kv| {
            let key = String::from_utf8_lossy(kv.key());
            let theirs = parse_subnet_key(&key)?;
            (key != own_key && kv.create_revision() < created_at && theirs.overlaps(sn))
                .then(|| key.into_owned())
        }))
    }

    /// Flannel's updateSubnet: a new etcd lease of `ttl` and a put of the key on it (whoever
    /// held the key). Renewal and the reuse of a lease found by public IP both do this.
    pub async fn update(
        &self,
        sn: LeaseSubnets,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<OwnLease, EtcdError> {
        let mut c = self.client.clone();
        let granted = call(&self.endpoints, c.lease_grant(ttl_secs(ttl), None)).await?;
        let id = granted.id();
        if let Err(e) = call(
            &self.endpoints,
            c.put(
                self.lease_key(&sn),
                attrs.json(),
                Some(PutOptions::new().with_lease(id)),
            ),
        )
        .await
        {
            let _ = call(&self.endpoints, c.lease_revoke(id)).await;
            return Err(e);
        }
        Ok(OwnLease::new(sn, attrs.clone(), id, granted.ttl()))
    }

    /// Flannel's deleteSubnet.
    pub async fn delete(&self, sn: &LeaseSubnets) -> Result<(), EtcdError> {
        let mut c = self.client.clone();
        call(&self.endpoints, c.delete(self.lease_key(sn), None)).await?;
        Ok(())
    }

    /// Flannel's AcquireLease/tryAcquireLease: reuse the lease that holds this node's public
    /// IP (when it fits the configuration; otherwise delete it), else the previous subnets
    /// (from subnet.env) when free and fitting, else, per enabled family, a random free subnet
    /// among the first 100 in [SubnetMin, SubnetMax] (the IPv6 one chosen independently of
    /// the IPv4 one, as Flannel's allocateSubnet); the create is a transaction that fails
    /// when the key exists, and a lost race is retried with a fresh list up to 10 times.
    pub async fn acquire(
        &self,
        alloc: &Allocation,
        me: &Me,
        previous: Option<LeaseSubnets>,
        ttl: Duration,
    ) -> Result<OwnLease, EtcdError> {
        for _ in 0..RACE_RETRIES {
            let (leases, _) = self.list().await?;
            let mine = leases
                .entries()
                .find(|(_, e)| me.owns(&e.attrs))
                .map(|(_, e)| e.subnets);
            if let Some(sn) = mine {
                if alloc.compatible(&sn) {
                    info!(subnet = %sn, public_ip = %me.describe(), "found lease for current IP, reusing");
                    return self.update(sn, &LeaseAttrs::of(me, &sn), ttl).await;
                }
                info!(subnet = %sn, public_ip = %me.describe(), "found lease for current IP but not compatible with current config, deleting");
                self.delete(&sn).await?;
            }
            let mut pick = None;
            if let Some(prev) = previous {
                // Every key counts, an unreadable one too: create() would give way to it.
                let holder = leases.by_key.iter().find(|(k, v)| {
                    parse_subnet_key(k).is_some_and(|s| s.overlaps(&prev))
                        && !v.as_ref().is_ok_and(|e| me.owns(&e.attrs))
                });
                if let Some((key, v)) = holder {
                    let who = v.as_ref().map_or_else(
                        |_| format!("an unreadable lease {key}"),
                        |e| format!("the node with public IP {}", e.attrs.public_ip),
                    );
                    warn!(subnet = %prev, "subnet {prev} has been taken by {who}; taking a new subnet (its routes go with the old one)");
                } else if alloc.compatible(&prev) {
                    info!(subnet = %prev, "found previously leased subnet, reusing");
                    pick = Some(prev);
                } else {
                    warn!(subnet = %prev, "found previously leased subnet that is not compatible with the etcd network config, ignoring");
                }
            }
            let sn = match pick {
                Some(sn) => sn,
                None => {
                    // The subnets of every key, readable or not (as above).
                    let taken: Vec<LeaseSubnets> = leases
                        .by_key
                        .keys()
                        .filter_map(|k| parse_subnet_key(k))
                        .collect();
                    let pick =
                        |r: Option<SubnetRange>, family: fn(&LeaseSubnets) -> Option<IpNetwork>| {
                            r.map(|r| {
                                allocate(
                                    &r,
                                    taken.iter().filter_map(family),
                                    taken.len(),
                                    self.prefix(),
                                )
                            })
                            .transpose()
                        };
                    let v4 = pick(alloc.v4, |s| s.v4.map(IpNetwork::V4))?;
                    let v6 = pick(alloc.v6, |s| s.v6.map(IpNetwork::V6))?;
                    LeaseSubnets {
                        v4: v4.and_then(|n| match n {
                            IpNetwork::V4(n) => Some(n),
                            IpNetwork::V6(_) => None,
                        }),
                        v6: v6.and_then(|n| match n {
                            IpNetwork::V6(n) => Some(n),
                            IpNetwork::V4(_) => None,
                        }),
                    }
                }
            };
            if let Some(lease) = self.create(sn, &LeaseAttrs::of(me, &sn), ttl).await? {
                info!(subnet = %sn, public_ip = %me.describe(), "allocated lease");
                return Ok(lease);
            }
            debug!(subnet = %sn, "subnet taken meanwhile; trying again");
        }
        Err(EtcdError::MaxRetries)
    }

    /// After an authentication error (token expired, or "revision of auth store is old"
    /// after a user or role change), authenticates again so that the next request can work.
    pub async fn heal(&self, e: &EtcdError) {
        let text = e.to_string();
        if text.contains("auth") || text.contains("token") {
            if let Err(err) = tokio::time::timeout(REQUEST_TIMEOUT, self.client.refresh_token())
                .await
                .unwrap_or(Ok(()))
            {
                debug!(error = %err, "etcd re-authentication failed");
            }
        }
    }

    /// Flannel's RenewLease (a new etcd lease and a put of the same value), but only while
    /// the key is still on our etcd lease: Flannel's unconditional put would take the subnet
    /// back from a node that leased it after ours expired. `Ok(None)`: the key expired, was
    /// deleted or is someone else's now.
    pub async fn renew(
        &self,
        lease: &OwnLease,
        ttl: Duration,
    ) -> Result<Option<OwnLease>, EtcdError> {
        let mut c = self.client.clone();
        let key = self.lease_key(&lease.subnets);
        let granted = call(&self.endpoints, c.lease_grant(ttl_secs(ttl), None)).await?;
        let id = granted.id();
        let txn = Txn::new()
            .when([Compare::lease(
                key.clone(),
                CompareOp::Equal,
                lease.etcd_lease,
            )])
            .and_then([TxnOp::put(
                key,
                lease.attrs.json(),
                Some(PutOptions::new().with_lease(id)),
            )]);
        let ok = match call(&self.endpoints, c.txn(txn)).await {
            Ok(r) => r.succeeded(),
            Err(e) => {
                let _ = call(&self.endpoints, c.lease_revoke(id)).await;
                return Err(e);
            }
        };
        // The old etcd lease holds nothing any more (or never will again): let it go.
        let _ = call(
            &self.endpoints,
            c.lease_revoke(if ok { lease.etcd_lease } else { id }),
        )
        .await;
        Ok(ok.then(|| OwnLease::new(lease.subnets, lease.attrs.clone(), id, granted.ttl())))
    }
}

fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX)
}

/// A random number in `0..n` (Flannel uses math/rand; the hasher's random keys do here).
fn rand_below(n: usize) -> usize {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    #[allow(clippy::cast_possible_truncation)]
    let r = h.finish() as usize;
    r % n.max(1)
}

/// Flannel's allocateSubnet for one family: the first 100 subnets from SubnetMin to
/// SubnetMax that overlap no lease, one of them at random. `leased` is the number of leases
/// held (for the message).
pub fn allocate(
    range: &SubnetRange,
    taken: impl Iterator<Item = IpNetwork>,
    leased: usize,
    prefix: &str,
) -> Result<IpNetwork, EtcdError> {
    let (min, bits) = int_of(range.subnet_min);
    let (max, _) = int_of(range.subnet_max);
    let size = 1u128 << (bits - u32::from(range.subnet_len));
    let mut taken_ranges: Vec<(u128, u128)> = taken
        .filter(|n| n.is_ipv4() == (bits == 32))
        .map(span)
        .collect();
    taken_ranges.sort_unstable();
    let mut free = Vec::new();
    let mut ip = min;
    while ip <= max && free.len() < CANDIDATES {
        let end = ip + (size - 1);
        let overlapping = taken_ranges.iter().any(|(s, e)| *s <= end && ip <= *e);
        if !overlapping {
            free.push(ip);
        }
        match ip.checked_add(size) {
            Some(next) => ip = next,
            None => break,
        }
    }
    if free.is_empty() {
        let (network_key, keys) = range.keys();
        return Err(EtcdError::OutOfSubnets {
            min: range.subnet_min,
            max: range.subnet_max,
            len: range.subnet_len,
            leased,
            network_key,
            keys,
            prefix: prefix.to_string(),
        });
    }
    let chosen = free[rand_below(free.len())];
    Ok(IpNetwork::new(addr_of(chosen, bits), range.subnet_len).expect("valid prefix"))
}

/// This node's lease: its subnets, what it says, and when it expires.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnLease {
    pub subnets: LeaseSubnets,
    pub attrs: LeaseAttrs,
    pub etcd_lease: i64,
    pub expires: Instant,
}

impl OwnLease {
    fn new(subnets: LeaseSubnets, attrs: LeaseAttrs, etcd_lease: i64, ttl_secs: i64) -> Self {
        OwnLease {
            subnets,
            attrs,
            etcd_lease,
            expires: Instant::now() + Duration::from_secs(ttl_secs.max(0).unsigned_abs()),
        }
    }

    #[must_use]
    pub fn key(&self) -> String {
        self.subnets.key()
    }

    fn entry(&self) -> LeaseEntry {
        LeaseEntry {
            subnets: self.subnets,
            attrs: self.attrs.clone(),
        }
    }
}

/// When to renew: `--subnet-lease-renew-margin` before expiry (Flannel). A lease shorter than
/// the margin (the test TTL) is renewed at a third of its life left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: Duration,
    pub renew_margin: Duration,
}

impl Timing {
    fn renew_at(&self, lease: &OwnLease) -> Instant {
        let margin = if self.renew_margin >= self.ttl {
            self.ttl / 3
        } else {
            self.renew_margin
        };
        lease
            .expires
            .checked_sub(margin)
            .unwrap_or_else(Instant::now)
    }

    /// Flannel retries a failed renewal after a minute; never later than a quarter of what
    /// is left, so a short lease is retried before it runs out.
    fn retry_after(&self, lease: &OwnLease) -> Duration {
        let left = lease.expires.saturating_duration_since(Instant::now());
        (left / 4).clamp(Duration::from_millis(200), Duration::from_secs(60))
    }
}

/// What the daemon learns besides states: the lease it holds (for subnet.env) and what is
/// wrong with etcd right now (`None`: nothing).
#[derive(Debug)]
pub struct Status {
    pub own: watch::Sender<Option<OwnLease>>,
    pub problem: watch::Sender<Option<String>>,
}

/// Reports a problem once per change, and clears it.
fn set_problem(status: &Status, p: Option<String>) {
    status.problem.send_if_modified(|cur| {
        if *cur == p {
            return false;
        }
        match &p {
            Some(msg) => warn!(problem = %msg, "etcd"),
            None => info!("etcd reachable again"),
        }
        *cur = p.clone();
        true
    });
}

/// What a renewal attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// Not due, or renewed.
    Fine,
    /// etcd did not answer or refused; retried sooner.
    Failed,
    /// The key is no longer on our etcd lease (expired, deleted, or taken).
    Lost,
}

/// Renews `lease` when due (Flannel's CompleteLease timer); on failure says why and sets the
/// next attempt sooner.
async fn renew_if_due(
    reg: &Registry,
    timing: &Timing,
    lease: &mut OwnLease,
    renew_at: &mut Instant,
    status: &Status,
    down_since: &mut Option<Instant>,
) -> Renewal {
    if Instant::now() < *renew_at {
        return Renewal::Fine;
    }
    match reg.renew(lease, timing.ttl).await {
        Ok(None) => Renewal::Lost,
        Ok(Some(l)) => {
            info!(subnet = %l.subnets, ttl_s = timing.ttl.as_secs(), "lease renewed");
            *lease = l;
            status.own.send_replace(Some(lease.clone()));
            *renew_at = timing.renew_at(lease);
            Renewal::Fine
        }
        Err(e) => {
            reg.heal(&e).await;
            let retry = timing.retry_after(lease);
            let t = *down_since.get_or_insert_with(Instant::now);
            set_problem(
                status,
                Some(format!(
                    "cannot renew the lease of {} (retrying in {} ms): {e} (for {} s; forwarding continues with the last state)",
                    lease.subnets,
                    retry.as_millis(),
                    t.elapsed().as_secs()
                )),
            );
            *renew_at = Instant::now() + retry;
            Renewal::Failed
        }
    }
}

/// The source: takes this node's lease, then keeps it (renewing, taking it again when lost)
/// and sends the full state after every change of the lease set. Ends when `tx` is closed.
#[allow(clippy::too_many_lines)]
pub async fn run(
    reg: Registry,
    alloc: Allocation,
    me: Me,
    timing: Timing,
    previous: Option<LeaseSubnets>,
    tx: mpsc::Sender<Update>,
    status: Status,
) {
    let mut backoff = BACKOFF_MIN;
    let mut down_since: Option<Instant> = None;
    let mut previous = previous;
    let mut own: Option<(OwnLease, Instant)> = None;
    let mut last_sent: Option<Update> = None;
    // The lease set and the revision it is current at, while the watch is resumable.
    let mut known: Option<(Leases, i64)> = None;
    loop {
        if tx.is_closed() {
            return;
        }
        // 1. Hold a lease.
        let (mut lease, mut renew_at) = match own.take() {
            Some(l) => l,
            None => match reg.acquire(&alloc, &me, previous, timing.ttl).await {
                Ok(l) => {
                    info!(subnet = %l.subnets, key = %l.key(), public_ip = %me.describe(), "holding lease");
                    previous = Some(l.subnets);
                    status.own.send_replace(Some(l.clone()));
                    let at = timing.renew_at(&l);
                    (l, at)
                }
                Err(e) => {
                    reg.heal(&e).await;
                    fail(&status, &e, "cannot take a subnet lease", &mut down_since);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        // 2. Full read, then watch from the next revision; after a broken watch, resume from
        // the last revision seen (as Flannel's watch cursor), and read everything again only
        // when etcd compacted that revision away. A renewal that is due is tried also while
        // reading fails: the lease must not run out while the watch is down.
        let listed = match known.take() {
            Some(k) => Ok(k),
            None => reg.list().await,
        };
        let (mut leases, mut rev) = match listed {
            Ok(x) => x,
            Err(e) => {
                reg.heal(&e).await;
                fail(&status, &e, "cannot list leases", &mut down_since);
                if renew_if_due(
                    &reg,
                    &timing,
                    &mut lease,
                    &mut renew_at,
                    &status,
                    &mut down_since,
                )
                .await
                    == Renewal::Lost
                {
                    let_go(&lease, &expired(&lease), &mut previous, &status);
                    known = None;
                    continue;
                }
                own = Some((lease, renew_at));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let own_key = reg.lease_key(&lease.subnets);
        if let Err(lost) = check_own(&leases, &own_key, &lease, &me) {
            let_go(&lease, &lost, &mut previous, &status);
            continue;
        }
        if !send(&tx, leases.state(&own_key, &lease.entry()), &mut last_sent).await {
            return;
        }
        let mut wc = reg.client.clone();
        let watch = call(
            &reg.endpoints,
            wc.watch(
                reg.subnets_prefix(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            ),
        )
        .await;
        let mut stream = match watch {
            Ok(s) => s,
            Err(e) => {
                known = Some((leases, rev));
                reg.heal(&e).await;
                fail(&status, &e, "cannot watch leases", &mut down_since);
                if renew_if_due(
                    &reg,
                    &timing,
                    &mut lease,
                    &mut renew_at,
                    &status,
                    &mut down_since,
                )
                .await
                    == Renewal::Lost
                {
                    let_go(&lease, &expired(&lease), &mut previous, &status);
                    known = None;
                    continue;
                }
                own = Some((lease, renew_at));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        match renew_if_due(
            &reg,
            &timing,
            &mut lease,
            &mut renew_at,
            &status,
            &mut down_since,
        )
        .await
        {
            Renewal::Fine => {
                down_since = None;
                set_problem(&status, None);
                backoff = BACKOFF_MIN;
            }
            Renewal::Failed => {}
            Renewal::Lost => {
                let_go(&lease, &expired(&lease), &mut previous, &status);
                continue;
            }
        }
        // 3. Apply events until the watch breaks or the lease is lost.
        let lost = loop {
            tokio::select! {
                () = tokio::time::sleep_until(renew_at.into()) => {
                    match renew_if_due(&reg, &timing, &mut lease, &mut renew_at, &status, &mut down_since).await {
                        Renewal::Fine => {
                            if down_since.take().is_some() {
                                set_problem(&status, None);
                            }
                        }
                        Renewal::Failed => {}
                        Renewal::Lost => break Some(expired(&lease)),
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            // Like 410 Gone: what happened since `rev` is lost, read it all.
                            warn!(compact_revision = resp.compact_revision(), from_revision = rev + 1, "lease watch: revision compacted; reading all leases again");
                            break None;
                        }
                        if resp.canceled() {
                            let e = EtcdError::Etcd { endpoints: reg.endpoints.clone(), source: etcd_client::Error::WatchError(format!("canceled: {}", resp.cancel_reason())) };
                            fail(&status, &e, "lease watch canceled; resuming it", &mut down_since);
                            known = Some((leases, rev));
                            break None;
                        }
                        if resp.events().is_empty() {
                            continue;
                        }
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            rev = rev.max(kv.mod_revision());
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            match ev.event_type() {
                                EventType::Put => leases.put(&key, kv.value()),
                                EventType::Delete => leases.delete(&key),
                            }
                        }
                        if let Err(lost) = check_own(&leases, &own_key, &lease, &me) {
                            break Some(lost);
                        }
                        if !send(&tx, leases.state(&own_key, &lease.entry()), &mut last_sent).await {
                            return;
                        }
                    }
                    Ok(None) => {
                        known = Some((leases, rev));
                        let e = EtcdError::Etcd { endpoints: reg.endpoints.clone(), source: etcd_client::Error::WatchError("watch stream ended".into()) };
                        fail(&status, &e, "lease watch ended", &mut down_since);
                        break None;
                    }
                    Err(source) => {
                        known = Some((leases, rev));
                        let e = EtcdError::Etcd { endpoints: reg.endpoints.clone(), source };
                        reg.heal(&e).await;
                        fail(&status, &e, "lease watch failed", &mut down_since);
                        break None;
                    }
                },
                () = tx.closed() => return,
            }
        };
        match lost {
            Some(why) => let_go(&lease, &why, &mut previous, &status),
            None => {
                own = Some((lease, renew_at));
                if down_since.is_some() {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Gives up `lease` for `why`: the next round takes the same subnet again when free, else a
/// new one (acquire does both).
fn let_go(lease: &OwnLease, why: &str, previous: &mut Option<LeaseSubnets>, status: &Status) {
    warn!(subnet = %lease.subnets, "{why}");
    *previous = Some(lease.subnets);
    status.own.send_replace(None);
}

fn expired(lease: &OwnLease) -> String {
    format!(
        "lease {} has been revoked or expired; taking the same subnet again if still free, else a new one",
        lease.subnets
    )
}

/// Says what fails (once per change of the message) while forwarding goes on.
fn fail(status: &Status, e: &EtcdError, what: &str, since: &mut Option<Instant>) {
    let t = *since.get_or_insert_with(Instant::now);
    set_problem(
        status,
        Some(format!(
            "{what}: {e} (for {} s; forwarding continues with the last state, retrying)",
            t.elapsed().as_secs()
        )),
    );
}

/// Whether the lease set still holds our lease. The message says what happened otherwise.
fn check_own(leases: &Leases, own_key: &str, lease: &OwnLease, me: &Me) -> Result<(), String> {
    match leases.by_key.get(own_key) {
        Some(Ok(e)) if me.owns(&e.attrs) => Ok(()),
        Some(Ok(e)) => Err(format!(
            "lease {} has been taken by the node with public IP {}; taking a new subnet (its routes go with the old one)",
            lease.subnets,
            if me.public_ip.is_some() { e.attrs.public_ip.clone() } else { e.attrs.public_ipv6.clone().unwrap_or_default() }
        )),
        Some(Err(e)) => Err(format!(
            "lease {} was overwritten with an unreadable value ({e}); taking a subnet again",
            lease.subnets
        )),
        None => Err(expired(lease)),
    }
}

async fn send(tx: &mpsc::Sender<Update>, u: Update, last: &mut Option<Update>) -> bool {
    if last.as_ref() == Some(&u) {
        return true;
    }
    *last = Some(u.clone());
    tx.send(u).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn net6(s: &str) -> Ipv6Network {
        s.parse().unwrap()
    }

    fn dual(v4: &str, v6: &str) -> LeaseSubnets {
        LeaseSubnets {
            v4: Some(net(v4)),
            v6: Some(net6(v6)),
        }
    }

    fn v4_only(v4: &str) -> LeaseSubnets {
        LeaseSubnets {
            v4: Some(net(v4)),
            v6: None,
        }
    }

    fn me(v4: &str, v6: Option<&str>) -> Me {
        Me {
            public_ip: Some(v4.parse().unwrap()),
            public_ipv6: v6.map(|a| a.parse().unwrap()),
            vni: 1,
        }
    }

    #[test]
    fn keys_are_flannels() {
        assert_eq!(subnet_key(net("10.244.7.0/24")), "10.244.7.0-24");
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.244.7.0-24"),
            Some(v4_only("10.244.7.0/24"))
        );
        // MakeSubnetKey with an IPv6 subnet: `&` and Go's net.IP text of it.
        let sn = dual("10.244.7.0/24", "fd00:10:244:7::/64");
        assert_eq!(sn.key(), "10.244.7.0-24&fd00:10:244:7::-64");
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.244.7.0-24&fd00:10:244:7::-64"),
            Some(sn)
        );
        // IPv6-only: Flannel's empty ip.IP4Net is 0.0.0.0-0.
        let v6 = LeaseSubnets {
            v4: None,
            v6: Some(net6("fd00:10:244:7::/64")),
        };
        assert_eq!(v6.key(), "0.0.0.0-0&fd00:10:244:7::-64");
        assert_eq!(
            parse_subnet_key(&format!("/p/subnets/{}", v6.key())),
            Some(v6)
        );
        for bad in [
            "/x/subnets/10.244.7.1-24",
            "/x/subnets/garbage",
            "/x/subnets/10.244.7.0-33",
            "/x/subnets/10.244.7.0-24&fd00::1-64",
            "/x/subnets/10.244.7.0-24&fd00::-129",
            "/x/subnets/10.244.7.0-24&10.0.0.0-8",
            "/x/subnets/10.244.7.0-24&",
            "/x/subnets/0.0.0.0-0",
        ] {
            assert_eq!(parse_subnet_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn lease_json_is_what_flanneld_writes() {
        let a = LeaseAttrs::of(&me("198.18.0.7", None), &v4_only("10.244.7.0/24"));
        assert_eq!(
            a.json(),
            r#"{"PublicIP":"198.18.0.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:07:00"}}"#
        );
        let back: LeaseAttrs = serde_json::from_str(&a.json()).unwrap();
        assert_eq!(back, a);
        // flanneld's newSubnetAttrs with both families, json.Marshal'ed: PublicIPv6 as text,
        // BackendV6Data after BackendData, the same vxlanLeaseAttrs shape. One device here,
        // so one MAC for both.
        let a = LeaseAttrs::of(
            &me("198.18.0.7", Some("fd00:198:18::7")),
            &dual("10.244.7.0/24", "fd00:10:244:7::/64"),
        );
        assert_eq!(
            a.json(),
            r#"{"PublicIP":"198.18.0.7","PublicIPv6":"fd00:198:18::7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:07:00"},"BackendV6Data":{"VNI":1,"VtepMAC":"0a:58:0a:f4:07:00"}}"#
        );
        // IPv6-only (ExtAddr nil): PublicIP is Go's zero ip.IP4, no BackendData.
        let a = LeaseAttrs::of(
            &Me {
                public_ip: None,
                public_ipv6: Some("fd00:198:18::7".parse().unwrap()),
                vni: 1,
            },
            &LeaseSubnets {
                v4: None,
                v6: Some(net6("fd00:10:244:7::/64")),
            },
        );
        assert_eq!(
            a.json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:198:18::7","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0a:58:02:44:00:07"}}"#
        );
    }

    fn range(netw: &str, len: u8, min: &str, max: &str) -> SubnetRange {
        SubnetRange {
            network: netw.parse().unwrap(),
            subnet_len: len,
            subnet_min: min.parse().unwrap(),
            subnet_max: max.parse().unwrap(),
        }
    }

    #[test]
    fn allocation_skips_taken_and_runs_out() {
        let a = range("10.5.0.0/20", 24, "10.5.1.0", "10.5.15.0");
        let mut taken: Vec<IpNetwork> = Vec::new();
        for _ in 0..15 {
            let sn = allocate(&a, taken.iter().copied(), taken.len(), "/p").unwrap();
            assert!(a.compatible(sn), "{sn}");
            assert!(!taken.contains(&sn), "{sn} twice");
            taken.push(sn);
        }
        let e = allocate(&a, taken.iter().copied(), 15, "/p")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no free subnet left in 10.5.1.0..=10.5.15.0")
                && e.contains("widen Network or SubnetMin/SubnetMax in /p/config"),
            "{e}"
        );
        // A wider lease held by someone else blocks every subnet it overlaps.
        let e = allocate(&a, ["10.5.0.0/20".parse().unwrap()].into_iter(), 1, "/p").unwrap_err();
        assert!(matches!(e, EtcdError::OutOfSubnets { .. }));
        // Leases of the other family take nothing away.
        let sn = allocate(&a, ["::/0".parse().unwrap()].into_iter(), 1, "/p").unwrap();
        assert!(a.compatible(sn));
    }

    #[test]
    fn ipv6_allocation_is_its_own_range() {
        // /64s of a /56: 255 candidates, the first 100 free ones considered.
        let a = range(
            "fd00:10:244::/56",
            64,
            "fd00:10:244:1::",
            "fd00:10:244:ff::",
        );
        let mut taken: Vec<IpNetwork> = Vec::new();
        for _ in 0..50 {
            let sn = allocate(&a, taken.iter().copied(), taken.len(), "/p").unwrap();
            assert!(a.compatible(sn) && !sn.is_ipv4(), "{sn}");
            assert!(!taken.contains(&sn), "{sn} twice");
            taken.push(sn);
        }
        // Four subnets only; a lease of the whole network blocks them.
        let small = range("fd00::/120", 122, "fd00::40", "fd00::c0");
        let mut taken: Vec<IpNetwork> = Vec::new();
        for _ in 0..3 {
            taken.push(allocate(&small, taken.iter().copied(), taken.len(), "/p").unwrap());
        }
        taken.sort();
        assert_eq!(
            taken.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["fd00::40/122", "fd00::80/122", "fd00::c0/122"]
        );
        let e = allocate(&small, taken.iter().copied(), 3, "/p")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no free subnet left in fd00::40..=fd00::c0 (/122)")
                && e.contains("widen IPv6Network or IPv6SubnetMin/IPv6SubnetMax"),
            "{e}"
        );
        // The top of the address space does not overflow.
        let top = range(
            "ffff::/16",
            64,
            "ffff:ffff:ffff:ffff::",
            "ffff:ffff:ffff:ffff::",
        );
        assert_eq!(
            allocate(&top, std::iter::empty(), 0, "/p")
                .unwrap()
                .to_string(),
            "ffff:ffff:ffff:ffff::/64"
        );
    }

    #[test]
    fn compatibility_needs_exactly_the_enabled_families() {
        let v4 = range("10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0");
        let v6 = range(
            "fd00:10:244::/56",
            64,
            "fd00:10:244:1::",
            "fd00:10:244:ff::",
        );
        let dual_alloc = Allocation {
            v4: Some(v4),
            v6: Some(v6),
        };
        let v4_alloc = Allocation {
            v4: Some(v4),
            v6: None,
        };
        let d = dual("10.244.7.0/24", "fd00:10:244:7::/64");
        assert!(dual_alloc.compatible(&d));
        assert!(
            !v4_alloc.compatible(&d),
            "IPv4-only config keeps a v6 lease"
        );
        assert!(v4_alloc.compatible(&v4_only("10.244.7.0/24")));
        assert!(!dual_alloc.compatible(&v4_only("10.244.7.0/24")));
        assert!(!dual_alloc.compatible(&dual("10.244.7.0/24", "fd00:10:244:7::/80")));
        assert!(!dual_alloc.compatible(&dual("10.244.7.0/24", "fd00:10:245::/64")));
        assert!(!dual_alloc.compatible(&dual("10.244.0.0/24", "fd00:10:244:7::/64")));
    }

    const FLANNELD_DUAL: &[u8] = br#"{"PublicIP":"198.18.0.9","PublicIPv6":"fd00:198:18::9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:1c:3d:00:11:22"},"BackendV6Data":{"VNI":1,"VtepMAC":"7a:4f:00:aa:bb:cc"}}"#;

    #[test]
    fn leases_become_the_same_model() {
        let mut l = Leases::default();
        let flanneld = br#"{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:1c:3d:00:11:22"}}"#;
        l.put("/coreos.com/network/subnets/10.244.9.0-24", flanneld);
        l.put("/coreos.com/network/subnets/10.244.8.0-24", b"{not json");
        l.put(
            "/coreos.com/network/subnets/10.244.6.0-24",
            br#"{"PublicIP":"198.18.0.6","BackendType":"host-gw"}"#,
        );
        let me = me("198.18.0.7", None);
        let sn = v4_only("10.244.7.0/24");
        let own = LeaseEntry {
            subnets: sn,
            attrs: LeaseAttrs::of(&me, &sn),
        };
        l.put(
            "/coreos.com/network/subnets/10.244.7.0-24",
            own.attrs.json().as_bytes(),
        );
        let s = l
            .state("/coreos.com/network/subnets/10.244.7.0-24", &own)
            .unwrap();
        assert_eq!(s.own_pod_cidr(), Some(net("10.244.7.0/24")));
        assert_eq!(s.own_vtep_mac().to_string(), "0a:58:0a:f4:07:00");
        assert_eq!(s.peers.len(), 1);
        assert_eq!(
            s.peers[0].v4.unwrap().vtep_mac.to_string(),
            "6e:1c:3d:00:11:22"
        );
        assert_eq!(
            s.peers[0].v4.unwrap().vtep_ip,
            "198.18.0.9".parse::<Ipv4Addr>().unwrap()
        );
        let kinds: Vec<_> = s
            .skipped
            .iter()
            .map(|k| (k.node.as_str(), k.kind))
            .collect();
        assert!(
            kinds.contains(&("10.244.8.0-24", SkipReason::Unreadable)),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("10.244.6.0-24", SkipReason::BackendType)),
            "{kinds:?}"
        );
        // Another node taking our key is noticed.
        l.put("/coreos.com/network/subnets/10.244.7.0-24", flanneld);
        let lease = OwnLease::new(own.subnets, own.attrs.clone(), 1, 10);
        let e =
            check_own(&l, "/coreos.com/network/subnets/10.244.7.0-24", &lease, &me).unwrap_err();
        assert!(
            e.contains("taken by the node with public IP 198.18.0.9"),
            "{e}"
        );
        l.delete("/coreos.com/network/subnets/10.244.7.0-24");
        let e =
            check_own(&l, "/coreos.com/network/subnets/10.244.7.0-24", &lease, &me).unwrap_err();
        assert!(e.contains("revoked or expired"), "{e}");
    }

    #[test]
    fn dual_stack_leases_carry_their_ipv6_side() {
        let p = "/coreos.com/network/subnets/";
        let mut l = Leases::default();
        // flanneld, dual-stack: its own flannel-v6.1 MAC.
        l.put(
            &format!("{p}10.244.9.0-24&fd00:10:244:9::-64"),
            FLANNELD_DUAL,
        );
        // An IPv4-only lease (a flanneld without EnableIPv6).
        l.put(
            &format!("{p}10.244.5.0-24"),
            br#"{"PublicIP":"198.18.0.5","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:1c:3d:00:00:05"}}"#,
        );
        // IPv6 subnet in the key but no BackendV6Data: Flannel's json.Unmarshal of it fails.
        l.put(
            &format!("{p}10.244.4.0-24&fd00:10:244:4::-64"),
            br#"{"PublicIP":"198.18.0.4","PublicIPv6":"fd00:198:18::4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:1c:3d:00:00:04"}}"#,
        );
        // A bad PublicIPv6 fails the whole value, as Go's Unmarshal does.
        l.put(
            &format!("{p}10.244.3.0-24&fd00:10:244:3::-64"),
            br#"{"PublicIP":"198.18.0.3","PublicIPv6":"fd00::zz","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:1c:3d:00:00:03"},"BackendV6Data":{"VNI":1,"VtepMAC":"6e:1c:3d:00:00:33"}}"#,
        );
        let me = me("198.18.0.7", Some("fd00:198:18::7"));
        let sn = dual("10.244.7.0/24", "fd00:10:244:7::/64");
        let own_key = format!("{p}{}", sn.key());
        let own = LeaseEntry {
            subnets: sn,
            attrs: LeaseAttrs::of(&me, &sn),
        };
        l.put(&own_key, own.attrs.json().as_bytes());
        let s = l.state(&own_key, &own).unwrap();
        // The own node's IPv6 side reaches the daemon (subnet.env, TAP address).
        assert_eq!(s.own.pod_cidr_v6, Some(net6("fd00:10:244:7::/64")));
        assert_eq!(s.own.public_ip_v6, Some("fd00:198:18::7".parse().unwrap()));
        assert_eq!(s.own.vtep_mac_v6, Some(s.own_vtep_mac()));
        // Decided under a dual-stack policy, as the daemon does.
        let mut policy = crate::model::PeerPolicy::new(net("10.244.0.0/16"));
        policy.network_v6 = Some(net6("fd00:10:244::/56"));
        let s = s.validated(&policy).unwrap();
        assert_eq!(s.peers.len(), 1, "{:?}", s.skipped);
        let peer = &s.peers[0];
        assert_eq!(peer.name, "10.244.9.0-24&fd00:10:244:9::-64");
        let v6 = peer.v6.expect("IPv6 side");
        assert_eq!(v6.pod_cidr, net6("fd00:10:244:9::/64"));
        assert_eq!(v6.vtep_ip, "fd00:198:18::9".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6.vtep_mac.to_string(), "7a:4f:00:aa:bb:cc");
        assert_eq!(peer.v4.unwrap().vtep_mac.to_string(), "6e:1c:3d:00:11:22");
        let kinds: Vec<_> = s
            .skipped
            .iter()
            .map(|k| (k.node.as_str(), k.kind, k.reason.as_str()))
            .collect();
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        assert!(
            kinds.iter().any(|(n, k, r)| *n == "10.244.5.0-24"
                && *k == SkipReason::NoPodCidr
                && r.contains("no IPv6 podCIDR")),
            "{kinds:?}"
        );
        assert!(
            kinds.iter().any(|(n, k, r)| n.starts_with("10.244.4.0-24")
                && *k == SkipReason::Unreadable
                && r.contains("without BackendV6Data")),
            "{kinds:?}"
        );
        assert!(
            kinds.iter().any(|(n, k, r)| n.starts_with("10.244.3.0-24")
                && *k == SkipReason::Unreadable
                && r.contains("PublicIPv6 \"fd00::zz\"")),
            "{kinds:?}"
        );
        // In an IPv4-only network the IPv6 halves change nothing: all three are peers.
        let v4_state = Leases::state(&l, &own_key, &own)
            .unwrap()
            .validated(&crate::model::PeerPolicy::new(net("10.244.0.0/16")))
            .unwrap();
        let names: Vec<_> = v4_state.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?} {:?}", v4_state.skipped);
        assert!(v4_state.peers.iter().all(|p| p.v6.is_none()));
    }

    #[test]
    fn own_lease_is_matched_by_public_ip_then_public_ipv6() {
        let dual_me = me("198.18.0.9", Some("fd00:198:18::1"));
        let attrs: LeaseAttrs = serde_json::from_slice(FLANNELD_DUAL).unwrap();
        // Flannel's findLeaseByIP compares PublicIP only.
        assert!(dual_me.owns(&attrs));
        let v6_me = Me {
            public_ip: None,
            public_ipv6: Some("fd00:198:18::9".parse().unwrap()),
            vni: 1,
        };
        assert!(v6_me.owns(&attrs));
        let v6_other = Me {
            public_ipv6: Some("fd00:198:18::8".parse().unwrap()),
            ..v6_me
        };
        assert!(!v6_other.owns(&attrs));
        // Every IPv6-only lease says PublicIP 0.0.0.0: that must not make them ours.
        let zero = LeaseAttrs::of(
            &Me {
                public_ip: None,
                ..v6_other
            },
            &LeaseSubnets {
                v4: None,
                v6: Some(net6("fd00::/64")),
            },
        );
        assert!(!v6_me.owns(&zero));
    }

    #[test]
    fn renewal_is_margin_before_expiry() {
        let sn = v4_only("10.244.7.0/24");
        let lease = OwnLease::new(
            sn,
            LeaseAttrs::of(&me("127.0.0.1", None), &sn),
            1,
            24 * 3600,
        );
        let t = Timing {
            ttl: SUBNET_TTL,
            renew_margin: Duration::from_secs(3600),
        };
        let d = t.renew_at(&lease).saturating_duration_since(Instant::now());
        assert!(
            d > Duration::from_secs(22 * 3600 + 3590) && d <= Duration::from_secs(23 * 3600),
            "{d:?}"
        );
        let short = Timing {
            ttl: Duration::from_secs(6),
            renew_margin: Duration::from_secs(3600),
        };
        let lease = OwnLease::new(lease.subnets, lease.attrs, 1, 6);
        let d = short
            .renew_at(&lease)
            .saturating_duration_since(Instant::now());
        assert!(
            d > Duration::from_secs(3) && d <= Duration::from_secs(4),
            "{d:?}"
        );
    }
}
