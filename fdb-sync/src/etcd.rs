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
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::model::{
    derive_vtep_mac, BackendData, ClusterState, MacAddr, NodeView, PeerFilter, SkipReason, Skipped,
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
    #[error("no free subnet left in {min}..={max} (/{len}): {leased} leases held; widen Network or SubnetMin/SubnetMax in {prefix}/config")]
    OutOfSubnets {
        min: Ipv4Addr,
        max: Ipv4Addr,
        len: u8,
        leased: usize,
        prefix: String,
    },
    #[error("lost the race for a free subnet {RACE_RETRIES} times in a row; retrying")]
    MaxRetries,
}

/// The range leases are taken from: net-conf's Network, SubnetLen, SubnetMin and SubnetMax
/// after Flannel's `CheckNetworkConfig` defaulting (the daemon computes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub network: Ipv4Network,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
}

impl Allocation {
    /// Flannel's `isSubnetConfigCompat`.
    #[must_use]
    pub fn compatible(&self, sn: Ipv4Network) -> bool {
        sn.network() >= self.subnet_min
            && sn.network() <= self.subnet_max
            && sn.prefix() == self.subnet_len
    }
}

/// What this node publishes in its lease (the VtepMAC follows from the subnet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Me {
    pub public_ip: Ipv4Addr,
    pub vni: u32,
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

impl LeaseAttrs {
    /// The value overlayd writes for `subnet`: what flanneld's vxlan backend writes.
    #[must_use]
    pub fn of(me: &Me, subnet: Ipv4Network) -> Self {
        LeaseAttrs {
            public_ip: me.public_ip.to_string(),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(serde_json::json!({
                "VNI": me.vni,
                "VtepMAC": derive_vtep_mac(subnet).to_string(),
            })),
            backend_v6_data: None,
        }
    }

    fn json(&self) -> String {
        serde_json::to_string(self).expect("lease attributes serialize")
    }
}

/// `10.244.7.0/24` -> `10.244.7.0-24` (Flannel's MakeSubnetKey, IPv4 only).
#[must_use]
pub fn subnet_key(sn: Ipv4Network) -> String {
    format!("{}-{}", sn.network(), sn.prefix())
}

/// Flannel's ParseSubnetKey: the key's last path element `a.b.c.d-len`, optionally followed by
/// `&<ipv6>-<len>` (ignored: no IPv6 dataplane yet). `None` for anything else.
#[must_use]
pub fn parse_subnet_key(key: &str) -> Option<Ipv4Network> {
    let last = key.rsplit('/').next()?;
    let v4 = last.split('&').next()?;
    let (ip, len) = v4.rsplit_once('-')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    Ipv4Network::new(ip, len).ok().filter(|n| n.network() == ip)
}

/// `path.Join(prefix, parts...)` for the keys used here.
fn join(prefix: &str, rest: &str) -> String {
    format!("{}/{rest}", prefix.trim_end_matches('/'))
}

/// A lease as read from etcd: its subnet and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseEntry {
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
}

/// A lease read into the node model. The name is the lease key (`10.244.7.0-24`): etcd
/// leases name no node.
fn view_of(key: &str, subnet: Ipv4Network, attrs: &LeaseAttrs) -> Result<NodeView, String> {
    let public_ip = attrs
        .public_ip
        .parse::<Ipv4Addr>()
        .map_err(|e| format!("PublicIP {:?} is not an IPv4 address: {e}", attrs.public_ip))?;
    let mut vtep_mac = None;
    if attrs.backend_type == "vxlan" {
        let raw = attrs
            .backend_data
            .clone()
            .ok_or_else(|| "BackendType vxlan without BackendData".to_string())?;
        let data: BackendData = serde_json::from_value(raw.clone())
            .map_err(|e| format!("BackendData {raw} is not {{\"VNI\":..,\"VtepMAC\":..}}: {e}"))?;
        let mac: MacAddr = data.vtep_mac.parse().map_err(|e| format!("{e}"))?;
        if !mac.is_valid_vtep() {
            return Err(format!("VtepMAC {mac} must be a unicast, non-zero address"));
        }
        vtep_mac = Some(mac);
    }
    Ok(NodeView {
        name: key.to_string(),
        pod_cidr: Some(subnet),
        pod_cidr_v6: None,
        public_ip: Some(public_ip),
        public_ip_v6: None,
        vtep_mac,
        vtep_mac_annotated: true,
        // The lease's IPv6 half (`PublicIPv6`, `BackendV6Data`, the key's `&<ipv6>-<len>`) is
        // not read yet: the dataplane refuses EnableIPv6 (issue 14).
        vtep_mac_v6: None,
        vtep_mac_v6_annotated: false,
        bad_v6_data: None,
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
        let Some(subnet) = parse_subnet_key(key) else {
            debug!(key, "not a subnet lease key; ignored");
            return;
        };
        let entry = serde_json::from_slice::<LeaseAttrs>(value)
            .map(|attrs| LeaseEntry { subnet, attrs })
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
        let own_view = view_of(own_key, own.subnet, &own.attrs)
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
                .and_then(|e| view_of(name, e.subnet, &e.attrs))
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

    fn lease_key(&self, sn: Ipv4Network) -> String {
        join(&self.prefix, &format!("subnets/{}", subnet_key(sn)))
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
    /// exist. `Ok(false)` when another node holds the key (the etcd lease is revoked again).
    pub async fn create(
        &self,
        sn: Ipv4Network,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<OwnLease>, EtcdError> {
        let mut c = self.client.clone();
        let key = self.lease_key(sn);
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
        let ok = match outcome {
            Ok(r) => r.succeeded(),
            Err(e) => {
                let _ = call(&self.endpoints, c.lease_revoke(id)).await;
                return Err(e);
            }
        };
        if !ok {
            let _ = call(&self.endpoints, c.lease_revoke(id)).await;
            return Ok(None);
        }
        Ok(Some(OwnLease::new(sn, attrs.clone(), id, granted.ttl())))
    }

    /// Flannel's updateSubnet: a new etcd lease of `ttl` and a put of the key on it (whoever
    /// held the key). Renewal and the reuse of a lease found by public IP both do this.
    pub async fn update(
        &self,
        sn: Ipv4Network,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<OwnLease, EtcdError> {
        let mut c = self.client.clone();
        let granted = call(&self.endpoints, c.lease_grant(ttl_secs(ttl), None)).await?;
        let id = granted.id();
        if let Err(e) = call(
            &self.endpoints,
            c.put(
                self.lease_key(sn),
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
    pub async fn delete(&self, sn: Ipv4Network) -> Result<(), EtcdError> {
        let mut c = self.client.clone();
        call(&self.endpoints, c.delete(self.lease_key(sn), None)).await?;
        Ok(())
    }

    /// Flannel's AcquireLease/tryAcquireLease: reuse the lease that holds this node's public
    /// IP (when it fits the configuration; otherwise delete it), else the previous subnet
    /// (from subnet.env) when free and fitting, else a random free subnet among the first
    /// 100 in [SubnetMin, SubnetMax]; the create is a transaction that fails when the key
    /// exists, and a lost race is retried with a fresh list up to 10 times.
    pub async fn acquire(
        &self,
        alloc: &Allocation,
        me: &Me,
        previous: Option<Ipv4Network>,
        ttl: Duration,
    ) -> Result<OwnLease, EtcdError> {
        for _ in 0..RACE_RETRIES {
            let (leases, _) = self.list().await?;
            let mine = leases
                .entries()
                .find(|(_, e)| e.attrs.public_ip == me.public_ip.to_string())
                .map(|(_, e)| e.subnet);
            if let Some(sn) = mine {
                if alloc.compatible(sn) {
                    info!(subnet = %sn, public_ip = %me.public_ip, "found lease for current IP, reusing");
                    return self.update(sn, &LeaseAttrs::of(me, sn), ttl).await;
                }
                info!(subnet = %sn, public_ip = %me.public_ip, "found lease for current IP but not compatible with current config, deleting");
                self.delete(sn).await?;
            }
            let taken: Vec<Ipv4Network> = leases.entries().map(|(_, e)| e.subnet).collect();
            let mut pick = None;
            if let Some(prev) = previous {
                if let Some((_, holder)) = leases.entries().find(|(_, e)| e.subnet == prev) {
                    warn!(subnet = %prev, "subnet {prev} has been taken by the node with public IP {}; taking a new subnet (its routes go with the old one)", holder.attrs.public_ip);
                } else if alloc.compatible(prev) {
                    info!(subnet = %prev, "found previously leased subnet, reusing");
                    pick = Some(prev);
                } else {
                    warn!(subnet = %prev, "found previously leased subnet that is not compatible with the etcd network config, ignoring");
                }
            }
            let sn = match pick {
                Some(sn) => sn,
                None => allocate(alloc, &taken, self.prefix())?,
            };
            if let Some(lease) = self.create(sn, &LeaseAttrs::of(me, sn), ttl).await? {
                info!(subnet = %sn, public_ip = %me.public_ip, "allocated lease");
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
        let key = self.lease_key(lease.subnet);
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
        Ok(ok.then(|| OwnLease::new(lease.subnet, lease.attrs.clone(), id, granted.ttl())))
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

/// Flannel's allocateSubnet: the first 100 subnets from SubnetMin to SubnetMax that overlap
/// no lease, one of them at random.
pub fn allocate(
    alloc: &Allocation,
    taken: &[Ipv4Network],
    prefix: &str,
) -> Result<Ipv4Network, EtcdError> {
    let size = 1u64 << (32 - u32::from(alloc.subnet_len));
    let mut taken_ranges: Vec<(u64, u64)> = taken
        .iter()
        .map(|n| {
            let s = u64::from(u32::from(n.network()));
            (s, s + (1u64 << (32 - u32::from(n.prefix()))) - 1)
        })
        .collect();
    taken_ranges.sort_unstable();
    let mut free = Vec::new();
    let mut ip = u64::from(u32::from(alloc.subnet_min));
    let max = u64::from(u32::from(alloc.subnet_max));
    while ip <= max && free.len() < CANDIDATES {
        let end = ip + size - 1;
        let overlapping = taken_ranges.iter().any(|(s, e)| *s <= end && ip <= *e);
        if !overlapping {
            free.push(ip);
        }
        ip += size;
    }
    if free.is_empty() {
        return Err(EtcdError::OutOfSubnets {
            min: alloc.subnet_min,
            max: alloc.subnet_max,
            len: alloc.subnet_len,
            leased: taken.len(),
            prefix: prefix.to_string(),
        });
    }
    let chosen = free[rand_below(free.len())];
    #[allow(clippy::cast_possible_truncation)]
    Ok(Ipv4Network::new(Ipv4Addr::from(chosen as u32), alloc.subnet_len).expect("valid prefix"))
}

/// This node's lease: its subnet, what it says, and when it expires.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnLease {
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
    pub etcd_lease: i64,
    pub expires: Instant,
}

impl OwnLease {
    fn new(subnet: Ipv4Network, attrs: LeaseAttrs, etcd_lease: i64, ttl_secs: i64) -> Self {
        OwnLease {
            subnet,
            attrs,
            etcd_lease,
            expires: Instant::now() + Duration::from_secs(ttl_secs.max(0).unsigned_abs()),
        }
    }

    #[must_use]
    pub fn key(&self) -> String {
        subnet_key(self.subnet)
    }

    fn entry(&self) -> LeaseEntry {
        LeaseEntry {
            subnet: self.subnet,
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
            info!(subnet = %l.subnet, ttl_s = timing.ttl.as_secs(), "lease renewed");
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
                    lease.subnet,
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
    previous: Option<Ipv4Network>,
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
                    info!(subnet = %l.subnet, key = %l.key(), public_ip = %me.public_ip, "holding lease");
                    previous = Some(l.subnet);
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
        let own_key = reg.lease_key(lease.subnet);
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
fn let_go(lease: &OwnLease, why: &str, previous: &mut Option<Ipv4Network>, status: &Status) {
    warn!(subnet = %lease.subnet, "{why}");
    *previous = Some(lease.subnet);
    status.own.send_replace(None);
}

fn expired(lease: &OwnLease) -> String {
    format!(
        "lease {} has been revoked or expired; taking the same subnet again if still free, else a new one",
        lease.subnet
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
        Some(Ok(e)) if e.attrs.public_ip == me.public_ip.to_string() => Ok(()),
        Some(Ok(e)) => Err(format!(
            "lease {} has been taken by the node with public IP {}; taking a new subnet (its routes go with the old one)",
            lease.subnet, e.attrs.public_ip
        )),
        Some(Err(e)) => Err(format!(
            "lease {} was overwritten with an unreadable value ({e}); taking a subnet again",
            lease.subnet
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

    #[test]
    fn keys_are_flannels() {
        assert_eq!(subnet_key(net("10.244.7.0/24")), "10.244.7.0-24");
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.244.7.0-24"),
            Some(net("10.244.7.0/24"))
        );
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.244.7.0-24&fd00:1::-64"),
            Some(net("10.244.7.0/24"))
        );
        assert_eq!(parse_subnet_key("/x/subnets/10.244.7.1-24"), None);
        assert_eq!(parse_subnet_key("/x/subnets/garbage"), None);
        assert_eq!(parse_subnet_key("/x/subnets/10.244.7.0-33"), None);
    }

    #[test]
    fn lease_json_is_what_flanneld_writes() {
        let me = Me {
            public_ip: "198.18.0.7".parse().unwrap(),
            vni: 1,
        };
        let a = LeaseAttrs::of(&me, net("10.244.7.0/24"));
        assert_eq!(
            a.json(),
            r#"{"PublicIP":"198.18.0.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:0a:f4:07:00"}}"#
        );
        let back: LeaseAttrs = serde_json::from_str(&a.json()).unwrap();
        assert_eq!(back, a);
    }

    fn alloc(netw: &str, len: u8, min: &str, max: &str) -> Allocation {
        Allocation {
            network: net(netw),
            subnet_len: len,
            subnet_min: min.parse().unwrap(),
            subnet_max: max.parse().unwrap(),
        }
    }

    #[test]
    fn allocation_skips_taken_and_runs_out() {
        let a = alloc("10.5.0.0/20", 24, "10.5.1.0", "10.5.15.0");
        let mut taken = Vec::new();
        for _ in 0..15 {
            let sn = allocate(&a, &taken, "/p").unwrap();
            assert!(a.compatible(sn), "{sn}");
            assert!(!taken.contains(&sn), "{sn} twice");
            taken.push(sn);
        }
        let e = allocate(&a, &taken, "/p").unwrap_err().to_string();
        assert!(
            e.contains("no free subnet left in 10.5.1.0..=10.5.15.0"),
            "{e}"
        );
        // A wider lease held by someone else blocks every subnet it overlaps.
        let e = allocate(&a, &[net("10.5.0.0/20")], "/p").unwrap_err();
        assert!(matches!(e, EtcdError::OutOfSubnets { .. }));
    }

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
        let me = Me {
            public_ip: "198.18.0.7".parse().unwrap(),
            vni: 1,
        };
        let own = LeaseEntry {
            subnet: net("10.244.7.0/24"),
            attrs: LeaseAttrs::of(&me, net("10.244.7.0/24")),
        };
        l.put(
            "/coreos.com/network/subnets/10.244.7.0-24",
            own.attrs.json().as_bytes(),
        );
        let s = l
            .state("/coreos.com/network/subnets/10.244.7.0-24", &own)
            .unwrap();
        assert_eq!(s.own_pod_cidr(), net("10.244.7.0/24"));
        assert_eq!(s.own_vtep_mac().to_string(), "0a:58:0a:f4:07:00");
        assert_eq!(s.peers.len(), 1);
        assert_eq!(s.peers[0].vtep_mac.to_string(), "6e:1c:3d:00:11:22");
        assert_eq!(
            s.peers[0].vtep_ip,
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
        let lease = OwnLease::new(own.subnet, own.attrs.clone(), 1, 10);
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
    fn renewal_is_margin_before_expiry() {
        let lease = OwnLease::new(
            net("10.244.7.0/24"),
            LeaseAttrs::of(
                &Me {
                    public_ip: Ipv4Addr::LOCALHOST,
                    vni: 1,
                },
                net("10.244.7.0/24"),
            ),
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
        let lease = OwnLease::new(lease.subnet, lease.attrs, 1, 6);
        let d = short
            .renew_at(&lease)
            .saturating_duration_since(Instant::now());
        assert!(
            d > Duration::from_secs(3) && d <= Duration::from_secs(4),
            "{d:?}"
        );
    }
}
