//! net-conf.json decoded as Flannel decodes it, validated with errors that name the key.
//!
//! Flannel reads the file with Go's `encoding/json` into `subnet.Config`
//! (pkg/subnet/config.go) and the `Backend` object a second time into `VXLANConfig`
//! (pkg/backend/vxlan/vxlan.go). Go matches a key to a field exactly first and otherwise
//! case-insensitively (`"vni"`, `"VNI"` and `"Vni"` are one field), assigns members in document
//! order (the last of two spellings wins), leaves a field alone for `null`, refuses a
//! fraction or a string for an integer field, and ignores keys it has no field for. This
//! module does the same, except that a key Flannel ignores is reported as a warning (returned
//! in [`NetConf::warnings`], for the caller to log once) instead of vanishing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

pub const DEFAULT_VNI: u32 = 1;
/// Linux's default VXLAN port: what the kernel uses when Flannel passes `Port` 0.
pub const DEFAULT_PORT: u16 = 8472;
/// IPv4 + UDP + VXLAN + inner Ethernet.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// IPv6 + UDP + VXLAN + inner Ethernet: the overhead of an IPv6 underlay.
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// Smallest pod MTU accepted (`Backend.MTU` - 50): below it TCP over the overlay is useless.
pub const MIN_INNER_MTU: u32 = 576;
/// Largest pod MTU accepted: the TAP's frames must fit a 64 KiB buffer with headers.
pub const MAX_INNER_MTU: u32 = 65_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("net-conf.json is not valid JSON: {0}")]
    Json(String),
    #[error("net-conf.json field {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        reason: reason.into(),
    }
}

/// The validated network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    /// `Network`, present exactly when `EnableIPv4` is true (`None`: an IPv6-only cluster).
    pub network: Option<Ipv4Network>,
    /// `IPv6Network`, present exactly when `EnableIPv6` is true (Flannel reads it only then and
    /// refuses `EnableIPv6` without it).
    pub network_v6: Option<Ipv6Network>,
    pub vni: u32,
    pub port: u16,
    /// `Backend.MTU` as Flannel means it: the MTU of the *outgoing* (outer) packets, default
    /// the underlay interface's MTU; the device gets 50 bytes less (see [`NetConf::inner_mtu`]).
    /// `None` when absent, null or 0.
    pub mtu: Option<u32>,
    /// `Backend.DirectRouting`: peers on a directly connected underlay subnet get a plain route.
    pub direct_routing: bool,
    /// `EnableNFTables`: masquerade and forward rules through nftables instead of iptables.
    pub enable_nftables: bool,
    /// `SubnetLen` as written (0 = not set); used by the etcd subnet manager only, see
    /// [`NetConf::subnet_allocation`].
    pub subnet_len: u32,
    /// `SubnetMin` as written (`None` = not set or 0.0.0.0, as Flannel treats it).
    pub subnet_min: Option<Ipv4Addr>,
    /// `SubnetMax` as written (`None` = not set or 0.0.0.0).
    pub subnet_max: Option<Ipv4Addr>,
    /// `IPv6SubnetLen` as written (0 = not set); read only with `EnableIPv6`, used by the etcd
    /// subnet manager only, see [`NetConf::subnet_allocation_v6`].
    pub ipv6_subnet_len: u32,
    /// `IPv6SubnetMin` as written (`None` = not set, null or `::`, as Flannel's `ip.IsEmpty`).
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    /// `IPv6SubnetMax` as written (`None` = not set, null or `::`).
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    /// Keys that were read but change nothing here (each said once, with what to do); the
    /// caller logs them.
    pub warnings: Vec<String>,
}

/// The range a subnet manager leases per-node subnets from, computed as Flannel's
/// `CheckNetworkConfig` computes it (pkg/subnet/config.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetAllocation {
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
}

/// The IPv6 range (`IPv6SubnetLen`, `IPv6SubnetMin`, `IPv6SubnetMax` after defaulting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetAllocationV6 {
    pub subnet_len: u8,
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

/// The keys and limits of one family in Flannel's `CheckNetworkConfig`: the same rules with
/// other names and numbers.
struct FamilyRules {
    bits: u32,
    network: &'static str,
    len: &'static str,
    min: &'static str,
    max: &'static str,
    /// Longest SubnetLen allowed (a subnet needs room for the device and a bridge address).
    longest: u32,
    /// Longest Network prefix that still splits into four subnets.
    smallest_network: u32,
    /// SubnetLen given to networks of at most `default_len - 2` bits of prefix.
    default_len: u32,
}

const RULES_V4: FamilyRules = FamilyRules {
    bits: 32,
    network: "Network",
    len: "SubnetLen",
    min: "SubnetMin",
    max: "SubnetMax",
    longest: 30,
    smallest_network: 28,
    default_len: 24,
};

const RULES_V6: FamilyRules = FamilyRules {
    bits: 128,
    network: "IPv6Network",
    len: "IPv6SubnetLen",
    min: "IPv6SubnetMin",
    max: "IPv6SubnetMax",
    longest: 126,
    smallest_network: 124,
    default_len: 64,
};

/// An address as an integer of 32 or 128 bits.
fn to_int(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl FamilyRules {
    fn addr(&self, v: u128) -> IpAddr {
        if self.bits == 32 {
            #[allow(clippy::cast_possible_truncation)]
            IpAddr::V4(Ipv4Addr::from(v as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(v))
        }
    }

    /// `CheckNetworkConfig` for one family: the subnet length, first and last subnet.
    /// Flannel computes IPv4 in `ip.IP4` (uint32, wrapping) and IPv6 in big integers; both
    /// come out the same as arithmetic modulo 2^bits here.
    fn check(
        &self,
        network: IpNetwork,
        subnet_len: u32,
        min: Option<IpAddr>,
        max: Option<IpAddr>,
    ) -> Result<(u8, u128, u128), ConfigError> {
        let plen = u32::from(network.prefix());
        let len = if subnet_len > 0 {
            if subnet_len > self.longest {
                return Err(field(
                    self.len,
                    format!("must be less than /{}", self.longest + 1),
                ));
            }
            if subnet_len < plen + 2 {
                return Err(field(
                    self.len,
                    format!(
                        "/{subnet_len} leaves {} {network} room for fewer than four subnets; use /{} or longer",
                        self.network,
                        plen + 2
                    ),
                ));
            }
            subnet_len
        } else if plen > self.smallest_network {
            return Err(field(
                self.network,
                format!(
                    "{network} is too small: the minimum useful prefix is /{}",
                    self.smallest_network
                ),
            ));
        } else if plen <= self.default_len - 2 {
            self.default_len
        } else {
            plen + 2
        };
        let top = u128::MAX >> (128 - self.bits);
        let size = 1u128 << (self.bits - len);
        let net = to_int(network.network());
        let next = net.wrapping_add(1u128.checked_shl(self.bits - plen).unwrap_or(0)) & top;
        let inside = |key: &'static str, a: IpAddr| {
            if network.contains(a) {
                Ok(to_int(a))
            } else {
                Err(field(
                    key,
                    format!("{a} is not in the range of the {} {network}", self.network),
                ))
            }
        };
        let min = match min {
            None => net.wrapping_add(size) & top,
            Some(a) => inside(self.min, a)?,
        };
        let max = match max {
            None => next.wrapping_sub(size) & top,
            Some(a) => inside(self.max, a)?,
        };
        let mask = (top << (self.bits - len)) & top;
        for (key, v) in [(self.min, min), (self.max, max)] {
            if v & mask != v {
                return Err(field(
                    key,
                    format!(
                        "{} is not on a {} (/{len}) boundary",
                        self.addr(v),
                        self.len
                    ),
                ));
            }
        }
        #[allow(clippy::cast_possible_truncation)]
        Ok((len as u8, min, max))
    }
}

// ---- a JSON value that keeps object members in document order (Go assigns in that order) ----

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    String(String),
    Array(usize),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Int(_) | Json::Float(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(Json::Int(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
                Ok(Json::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::String(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Json, E> {
                Ok(Json::String(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut n = 0;
                while seq.next_element::<Json>()?.is_some() {
                    n += 1;
                }
                Ok(Json::Array(n))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    members.push((k, v));
                }
                Ok(Json::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

/// Go's key folding for field matching (`encoding/json` foldName): upper(lower(c)), so that
/// the Kelvin sign matches `k` and the long s matches `s` as in Go.
fn fold(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .flat_map(char::to_uppercase)
        .collect()
}

/// The members of `obj` assigned to `fields` the way Go's decoder assigns them: exact name
/// first, else case-insensitive; later members overwrite earlier ones. Keys matching no field
/// are returned in document order (de-duplicated).
fn assign<'a>(obj: &'a [(String, Json)], fields: &[&str]) -> (Vec<Option<&'a Json>>, Vec<&'a str>) {
    let mut values = vec![None; fields.len()];
    let mut unknown: Vec<&str> = Vec::new();
    for (k, v) in obj {
        let i = fields.iter().position(|f| f == k).or_else(|| {
            let fk = fold(k);
            fields.iter().position(|f| fold(f) == fk)
        });
        match i {
            Some(i) => values[i] = Some(v),
            None if !unknown.contains(&k.as_str()) => unknown.push(k),
            None => {}
        }
    }
    (values, unknown)
}

/// A Go `bool` field: `null` keeps the default.
fn get_bool(v: Option<&Json>, name: &'static str) -> Result<Option<bool>, ConfigError> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(field(
            name,
            format!("is {}, not a boolean (true or false)", other.kind()),
        )),
    }
}

/// A Go `int`/`uint` field: `null` keeps the default; fractions, exponents and strings are
/// refused as Go refuses them.
fn get_int(v: Option<&Json>, name: &'static str) -> Result<Option<i128>, ConfigError> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Int(i)) if i64::try_from(*i).is_ok() => Ok(Some(*i)),
        Some(Json::Int(i)) => Err(field(name, format!("{i} does not fit a 64-bit integer"))),
        Some(Json::Float(f)) => Err(field(name, format!("{f} is not an integer"))),
        Some(other) => Err(field(name, format!("is {}, not a number", other.kind()))),
    }
}

/// A Flannel `ip.IP4Net`/`ip.IP4` field: its UnmarshalJSON parses the text, so `null` and
/// numbers are errors.
fn get_str<'a>(v: Option<&'a Json>, name: &'static str) -> Result<Option<&'a str>, ConfigError> {
    match v {
        None => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(other) => Err(field(name, format!("is {}, not a string", other.kind()))),
    }
}

fn parse_ipv4(s: &str, name: &'static str) -> Result<Ipv4Addr, ConfigError> {
    // Go's net.ParseIP + To4 also takes the IPv4-mapped IPv6 form.
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(a),
        Ok(IpAddr::V6(a)) => a
            .to_ipv4_mapped()
            .ok_or_else(|| field(name, format!("{s:?} is not an IPv4 address"))),
        Err(e) => Err(field(name, format!("{s:?} is not an IPv4 address: {e}"))),
    }
}

fn parse_cidr(s: &str, name: &'static str) -> Result<IpNetwork, ConfigError> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| field(name, format!("{s:?} is not a CIDR (address/prefix)")))?;
    let addr: IpAddr = a
        .parse()
        .map_err(|e| field(name, format!("{s:?} is not a CIDR: {e}")))?;
    let prefix: u8 = p
        .parse()
        .map_err(|e| field(name, format!("{s:?} has a bad prefix length: {e}")))?;
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    };
    // Go's net.ParseCIDR returns the network, host bits cleared.
    IpNetwork::new(addr, prefix)
        .and_then(|n| IpNetwork::new(n.network(), prefix))
        .map_err(|e| field(name, format!("{s:?} is not a CIDR: {e}")))
}

const TOP_FIELDS: &[&str] = &[
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "IPv6Network",
    "SubnetMin",
    "SubnetMax",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "SubnetLen",
    "IPv6SubnetLen",
    "Backend",
];

/// `VXLANConfig`'s json tags (pkg/backend/vxlan/vxlan.go), plus `Type` (parseBackendType in
/// pkg/subnet/config.go) and the Windows-only keys (vxlan_windows.go) that Linux Flannel ignores.
const BACKEND_FIELDS: &[&str] = &[
    "Type",
    "vni",
    "port",
    "mtu",
    "gbp",
    "learning",
    "directRouting",
    "MacPrefix",
    "Name",
];

impl NetConf {
    /// Parses and validates the text of a net-conf.json.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let root: Json =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let empty = Vec::new();
        let members = match &root {
            Json::Object(m) => m,
            // Go leaves the struct untouched for a top-level null.
            Json::Null => &empty,
            other => {
                return Err(ConfigError::Json(format!(
                    "the top level is {}, not an object",
                    other.kind()
                )))
            }
        };
        let mut warnings = Vec::new();
        let (v, unknown) = assign(members, TOP_FIELDS);
        let [enable_ipv4, enable_ipv6, enable_nftables, network, ipv6_network, subnet_min, subnet_max, ipv6_subnet_min, ipv6_subnet_max, subnet_len, ipv6_subnet_len, backend] =
            v[..]
        else {
            unreachable!("one value per field")
        };
        for k in unknown {
            warnings.push(format!(
                "net-conf.json key {k:?} is unknown to Flannel and overlayd; ignored (check its spelling)"
            ));
        }

        // Types first, as Go's Unmarshal fails before anything is used.
        let enable_ipv4 = get_bool(enable_ipv4, "EnableIPv4")?.unwrap_or(true);
        let enable_ipv6 = get_bool(enable_ipv6, "EnableIPv6")?.unwrap_or(false);
        let enable_nftables = get_bool(enable_nftables, "EnableNFTables")?.unwrap_or(false);
        let network = get_str(network, "Network")?
            .map(|s| parse_cidr(s, "Network"))
            .transpose()?;
        let ipv6_network = get_str(ipv6_network, "IPv6Network")?
            .map(|s| parse_cidr(s, "IPv6Network"))
            .transpose()?;
        let subnet_min = get_str(subnet_min, "SubnetMin")?
            .map(|s| parse_ipv4(s, "SubnetMin"))
            .transpose()?
            .filter(|a| !a.is_unspecified());
        let subnet_max = get_str(subnet_max, "SubnetMax")?
            .map(|s| parse_ipv4(s, "SubnetMax"))
            .transpose()?
            .filter(|a| !a.is_unspecified());
        // *ip.IP6 pointers: null is allowed there; `::` is empty (ip.IsEmpty) as null is.
        let mut v6_bounds = [None, None];
        for (slot, v, name) in [
            (0, ipv6_subnet_min, "IPv6SubnetMin"),
            (1, ipv6_subnet_max, "IPv6SubnetMax"),
        ] {
            if let Some(s) = get_str(v.filter(|v| **v != Json::Null), name)? {
                let a = s
                    .parse::<Ipv6Addr>()
                    .map_err(|e| field(name, format!("{s:?} is not an IPv6 address: {e}")))?;
                v6_bounds[slot] = Some(a).filter(|a| !a.is_unspecified());
            }
        }
        let [ipv6_subnet_min, ipv6_subnet_max_addr] = v6_bounds;
        let subnet_len = uint(get_int(subnet_len, "SubnetLen")?, "SubnetLen")?;
        let ipv6_subnet_len = uint(get_int(ipv6_subnet_len, "IPv6SubnetLen")?, "IPv6SubnetLen")?;

        if !enable_ipv4 && !enable_ipv6 {
            // Flannel's ipmatch.GetIPFamily: "none defined stack".
            return Err(field(
                "EnableIPv4",
                "false while EnableIPv6 is false too: no address family is enabled (Flannel fails with \"none defined stack\"); set EnableIPv4 to true, or EnableIPv6 to true with an IPv6Network",
            ));
        }
        // Flannel reads Network only when EnableIPv4 is true (CheckNetworkConfig).
        let network = match (enable_ipv4, network) {
            (true, Some(IpNetwork::V4(n))) => Some(n),
            // Go's Unmarshal into ip.IP4Net fails on it whatever EnableIPv4 says.
            (_, Some(IpNetwork::V6(n))) => {
                return Err(field(
                    "Network",
                    format!("{n} is not an IPv4 CIDR (IPv6 goes in IPv6Network)"),
                ))
            }
            (true, None) => {
                return Err(field(
                    "Network",
                    "missing; set it to the cluster pod CIDR, e.g. \"10.244.0.0/16\" (or EnableIPv4 to false for an IPv6-only cluster)",
                ))
            }
            (false, n) => {
                if let Some(n) = n {
                    warnings.push(format!(
                        "net-conf.json Network {n} ignored while EnableIPv4 is false (as Flannel does)"
                    ));
                }
                None
            }
        };
        let network_v6 = if enable_ipv6 {
            // Flannel's CheckNetworkConfig: "please define a correct IPv6Network parameter".
            match ipv6_network {
                Some(IpNetwork::V6(n)) => Some(n),
                Some(IpNetwork::V4(n)) => {
                    return Err(field(
                        "IPv6Network",
                        format!("{n} is not an IPv6 CIDR (IPv4 goes in Network)"),
                    ))
                }
                None => {
                    return Err(field(
                        "IPv6Network",
                        "missing while EnableIPv6 is true; set it to the cluster's IPv6 pod CIDR, e.g. \"fd00:10:244::/56\"",
                    ))
                }
            }
        } else {
            None
        };
        // Flannel reads these only when EnableIPv6 is true.
        let v6_keys: Vec<&str> = [
            ("IPv6Network", ipv6_network.is_some() && !enable_ipv6),
            ("IPv6SubnetMin", ipv6_subnet_min.is_some()),
            ("IPv6SubnetMax", ipv6_subnet_max_addr.is_some()),
            ("IPv6SubnetLen", ipv6_subnet_len != 0),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        let (ipv6_subnet_len, ipv6_subnet_min, ipv6_subnet_max) = if enable_ipv6 {
            (ipv6_subnet_len, ipv6_subnet_min, ipv6_subnet_max_addr)
        } else {
            (0, None, None)
        };
        if !v6_keys.is_empty() && !enable_ipv6 {
            warnings.push(format!(
                "net-conf.json {} ignored while EnableIPv6 is false (as Flannel does)",
                v6_keys.join(", ")
            ));
        }

        let b = parse_backend(backend, &mut warnings)?;
        let conf = NetConf {
            network,
            network_v6,
            vni: b.vni,
            port: b.port,
            mtu: b.mtu,
            direct_routing: b.direct_routing,
            enable_nftables,
            subnet_len,
            subnet_min,
            subnet_max,
            ipv6_subnet_len,
            ipv6_subnet_min,
            ipv6_subnet_max,
            warnings: Vec::new(),
        };
        if network.is_some() && (subnet_len != 0 || subnet_min.is_some() || subnet_max.is_some()) {
            // Flannel validates these in CheckNetworkConfig, which only its local (etcd)
            // manager calls (pkg/subnet/config.go:73-74); with the Kubernetes manager a bad
            // value changes nothing, so it is a warning here too, with the reason.
            let verdict = match conf.subnet_allocation() {
                Ok(a) => format!(
                    "valid: /{} from {} to {}",
                    a.subnet_len, a.subnet_min, a.subnet_max
                ),
                Err(e) => format!("and invalid for it: {e}"),
            };
            warnings.push(format!(
                "net-conf.json SubnetLen/SubnetMin/SubnetMax are used by the etcd subnet manager only ({verdict}); with --kube-subnet-mgr or --nodes-file each node's podCIDR decides"
            ));
        }
        if !v6_keys.is_empty() && enable_ipv6 {
            // The same for the IPv6 keys (CheckNetworkConfig checks them with EnableIPv6).
            let verdict = match conf.subnet_allocation_v6() {
                Ok(Some(a)) => format!(
                    "valid: /{} from {} to {}",
                    a.subnet_len, a.subnet_min, a.subnet_max
                ),
                Ok(None) => String::new(),
                Err(e) => format!("and invalid for it: {e}"),
            };
            warnings.push(format!(
                "net-conf.json {} are used by the etcd subnet manager only ({verdict}); with --kube-subnet-mgr or --nodes-file each node's IPv6 podCIDR decides",
                v6_keys.join(", ")
            ));
        }
        Ok(NetConf { warnings, ..conf })
    }

    /// The TAP MTU for an underlay of `underlay_mtu`: `Backend.MTU` (default: the underlay's
    /// MTU) minus the 50 bytes of VXLAN over IPv4, which is flannel.1's MTU for the same file.
    /// Flannel: pkg/backend/vxlan/vxlan.go:124 defaults `MTU` to the external interface's
    /// MTU, device.go:63 creates flannel.1 with `MTU - 50`, and vxlan_network.go:256-257
    /// writes `FLANNEL_MTU` as the same `MTU - encapOverhead(50)`. An explicit `"MTU": 0`
    /// makes Flannel leave the device MTU to the kernel (lower device - 50, the same value)
    /// but write `FLANNEL_MTU=-50`; overlayd uses underlay - 50 for both.
    ///
    /// With `EnableIPv6` the same: flanneld asks for `MTU - 50` on `flannel-v6.1` too
    /// (device.go:63; the kernel clamps an IPv6 VTEP's device to lower device - 70) and writes
    /// the same `FLANNEL_MTU`, so pods keep Flannel's MTU. Inner IPv6 rides an IPv6 underlay
    /// (70 bytes) and overlayd never fragments the outer packet: the control plane sets the
    /// device's IPv6 MTU (`net.ipv6.conf.<device>.mtu`) to the smaller path MTU instead
    /// (`control::ipv6_device_mtu`), so the kernel tells pods with ICMPv6 Packet Too Big.
    #[must_use]
    pub fn inner_mtu(&self, underlay_mtu: u32) -> u32 {
        self.mtu
            .unwrap_or(underlay_mtu)
            .saturating_sub(VXLAN_OVERHEAD_V4)
    }

    /// `SubnetLen`, `SubnetMin` and `SubnetMax` checked and defaulted exactly as Flannel's
    /// `CheckNetworkConfig` does (pkg/subnet/config.go), for a subnet manager that leases
    /// subnets itself (the etcd source).
    pub fn subnet_allocation(&self) -> Result<SubnetAllocation, ConfigError> {
        let network = self.network.ok_or_else(|| {
            field(
                "EnableIPv4",
                "false: there is no IPv4 Network to lease IPv4 subnets from; set EnableIPv4 to true with a Network for IPv4 subnets",
            )
        })?;
        let (subnet_len, min, max) = RULES_V4.check(
            IpNetwork::V4(network),
            self.subnet_len,
            self.subnet_min.map(IpAddr::V4),
            self.subnet_max.map(IpAddr::V4),
        )?;
        #[allow(clippy::cast_possible_truncation)]
        Ok(SubnetAllocation {
            subnet_len,
            subnet_min: Ipv4Addr::from(min as u32),
            subnet_max: Ipv4Addr::from(max as u32),
        })
    }

    /// `IPv6SubnetLen`, `IPv6SubnetMin` and `IPv6SubnetMax` checked and defaulted as Flannel's
    /// `CheckNetworkConfig` does for `EnableIPv6` (a /64 per node from networks up to /62,
    /// else prefix + 2; the first and last subnet skipped). `None` without IPv6.
    pub fn subnet_allocation_v6(&self) -> Result<Option<SubnetAllocationV6>, ConfigError> {
        let Some(network) = self.network_v6 else {
            return Ok(None);
        };
        let (subnet_len, min, max) = RULES_V6.check(
            IpNetwork::V6(network),
            self.ipv6_subnet_len,
            self.ipv6_subnet_min.map(IpAddr::V6),
            self.ipv6_subnet_max.map(IpAddr::V6),
        )?;
        Ok(Some(SubnetAllocationV6 {
            subnet_len,
            subnet_min: Ipv6Addr::from(min),
            subnet_max: Ipv6Addr::from(max),
        }))
    }
}

/// A Go `uint`: negative numbers are decode errors; absent is 0.
fn uint(v: Option<i128>, name: &'static str) -> Result<u32, ConfigError> {
    match v {
        None => Ok(0),
        Some(n) => u32::try_from(n).map_err(|_| field(name, format!("{n} is out of range"))),
    }
}

struct Backend {
    vni: u32,
    port: u16,
    mtu: Option<u32>,
    direct_routing: bool,
}

fn parse_backend(v: Option<&Json>, warnings: &mut Vec<String>) -> Result<Backend, ConfigError> {
    let members = match v {
        // Flannel's parseBackendType: no Backend at all means its "udp" backend.
        None => {
            return Err(field(
                "Backend",
                "missing, which Flannel runs as its \"udp\" backend; overlayd implements \"vxlan\": add \"Backend\": {\"Type\": \"vxlan\"}",
            ))
        }
        Some(Json::Null) => &[][..],
        Some(Json::Object(m)) => &m[..],
        Some(other) => {
            return Err(field(
                "Backend",
                format!("is {}, not an object", other.kind()),
            ))
        }
    };
    let (v, unknown) = assign(members, BACKEND_FIELDS);
    let [type_, vni, port, mtu, gbp, learning, direct_routing, mac_prefix, name] = v[..] else {
        unreachable!("one value per field")
    };
    // Go's `Type string`: null keeps "", anything else but a string is an error.
    let type_ = match type_ {
        None | Some(Json::Null) => "",
        Some(Json::String(s)) => s.as_str(),
        Some(other) => {
            return Err(field(
                "Backend.Type",
                format!("is {}, not a string", other.kind()),
            ))
        }
    };
    // Flannel lower-cases the type before looking the backend up (pkg/backend/manager.go).
    match type_.to_lowercase().as_str() {
        "vxlan" => {}
        "" => {
            return Err(field(
                "Backend.Type",
                "missing (Flannel fails with \"unknown backend type\"); set it to \"vxlan\"",
            ))
        }
        t => {
            return Err(field(
                "Backend.Type",
                format!("{t:?} is not supported: overlayd implements \"vxlan\""),
            ))
        }
    }
    let vni = match get_int(vni, "Backend.VNI")? {
        None => DEFAULT_VNI,
        // Go keeps an explicit 0: Flannel creates flannel.0 with VNI 0, so does overlayd.
        Some(v) => u32::try_from(v)
            .ok()
            .filter(|v| *v <= crate::wire::vxlan::MAX_VNI)
            .ok_or_else(|| field("Backend.VNI", format!("{v} is out of range 0..=16777215")))?,
    };
    let port = match get_int(port, "Backend.Port")? {
        // Flannel passes 0 on, and the kernel then uses its default, 8472.
        None | Some(0) => DEFAULT_PORT,
        Some(p) => u16::try_from(p)
            .map_err(|_| field("Backend.Port", format!("{p} is out of range 1..=65535")))?,
    };
    let lo = MIN_INNER_MTU + VXLAN_OVERHEAD_V4;
    let hi = MAX_INNER_MTU + VXLAN_OVERHEAD_V4;
    let mtu = match get_int(mtu, "Backend.MTU")? {
        None | Some(0) => None,
        Some(m) if (i128::from(lo)..=i128::from(hi)).contains(&m) => u32::try_from(m).ok(),
        Some(m) => {
            return Err(field(
                "Backend.MTU",
                format!(
                    "{m} is out of range {lo}..={hi} (it is the outer packets' MTU, the device gets 50 less; 0 = the underlay's MTU)"
                ),
            ))
        }
    };
    if get_bool(gbp, "Backend.GBP")? == Some(true) {
        return Err(field(
            "Backend.GBP",
            "VXLAN Group Based Policy is not implemented by overlayd (it changes the header on the wire); set it to false",
        ));
    }
    if get_bool(learning, "Backend.Learning")? == Some(true) {
        warnings.push(
            "net-conf.json Backend.Learning=true: overlayd never learns MACs from received frames; its forwarding entries come from the node source only (the entries Flannel programs too); ignored".to_string(),
        );
    }
    let direct_routing = get_bool(direct_routing, "Backend.DirectRouting")?.unwrap_or(false);
    for (v, k) in [(mac_prefix, "MacPrefix"), (name, "Name")] {
        if v.is_some() {
            warnings.push(format!(
                "net-conf.json Backend.{k} is a Windows-only key; Flannel on Linux ignores it, so does overlayd"
            ));
        }
    }
    for k in unknown {
        warnings.push(format!(
            "net-conf.json key Backend.{k:?} is unknown to Flannel's vxlan backend and to overlayd; ignored (check its spelling)"
        ));
    }
    Ok(Backend {
        vni,
        port,
        mtu,
        direct_routing,
    })
}

#[cfg(test)]
mod tests;
