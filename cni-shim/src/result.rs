//! The ADD result and its shape per spec version; also reads a `prevResult` back (CHECK).
//! Pure data: no I/O.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::{json, Map, Value};

use crate::error::CniError;
use crate::version::Version;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path, for interfaces inside the container.
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the subnet's prefix, e.g. 10.244.1.5/24.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Value,
}

impl CniResult {
    /// The result in the shape `version` defines.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                o.insert("mac".into(), json!(i.mac));
                if let (Some(m), true) = (i.mtu, version.interface_has_mtu()) {
                    o.insert("mtu".into(), json!(m));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ip_has_version_field() {
                    let family = if ip.address.is_ipv4() { "4" } else { "6" };
                    o.insert("version".into(), json!(family));
                }
                if let Some(idx) = ip.interface {
                    o.insert("interface".into(), json!(idx));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns,
        })
    }

    /// Reads a `prevResult` of any supported version. IPv6 entries are skipped.
    pub fn from_json(v: &Value) -> Result<Self, CniError> {
        let bad = |what: String| CniError::invalid_config(format!("prevResult: {what}"));
        let arr = |key: &str| {
            v.get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let mut interfaces = Vec::new();
        for i in arr("interfaces") {
            interfaces.push(Interface {
                name: i
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("interface without name".into()))?
                    .to_string(),
                mac: i
                    .get("mac")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                sandbox: i.get("sandbox").and_then(Value::as_str).map(str::to_string),
                mtu: i
                    .get("mtu")
                    .and_then(Value::as_u64)
                    .and_then(|m| u32::try_from(m).ok()),
            });
        }
        let mut ips = Vec::new();
        for ip in arr("ips") {
            let addr = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("ip without address".into()))?;
            let address = addr
                .parse::<IpNetwork>()
                .map_err(|_| bad(format!("address {addr:?}")))?;
            let gateway = match ip.get("gateway").and_then(Value::as_str) {
                Some(g) => Some(
                    g.parse::<IpAddr>()
                        .map_err(|_| bad(format!("gateway {g:?}")))?,
                ),
                None => None,
            };
            let interface = ip
                .get("interface")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok());
            ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        let mut routes = Vec::new();
        for r in arr("routes") {
            let dst = r
                .get("dst")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("route without dst".into()))?;
            let dst = dst
                .parse::<IpNetwork>()
                .map_err(|_| bad(format!("route dst {dst:?}")))?;
            let gw = match r.get("gw").and_then(Value::as_str) {
                Some(g) => Some(
                    g.parse::<IpAddr>()
                        .map_err(|_| bad(format!("route gw {g:?}")))?,
                ),
                None => None,
            };
            routes.push(Route { dst, gw });
        }
        Ok(Self {
            interfaces,
            ips,
            routes,
            dns: v.get("dns").cloned().unwrap_or_else(|| json!({})),
        })
    }
}

/// A locally administered MAC for a container interface, derived from its IPv4 address the
/// way Kubernetes and OVN-Kubernetes do (`0a:58:` + the four address bytes): stable for an
/// address, unique within the subnet, and known before the link exists (no read-back).
/// IPv6-only pods use the last four bytes of their address.
pub fn mac_for_ip(ip: IpAddr) -> [u8; 6] {
    let o = match ip {
        IpAddr::V4(v) => v.octets(),
        IpAddr::V6(v) => {
            let b = v.octets();
            [b[12], b[13], b[14], b[15]]
        }
    };
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "0a:58:0a:f4:01:01".into(),
                    sandbox: None,
                    mtu: Some(1450),
                },
                Interface {
                    name: "veth1234abcd".into(),
                    mac: "02:00:00:00:00:01".into(),
                    sandbox: None,
                    mtu: Some(1450),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:05".into(),
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1450),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".parse().unwrap(),
                gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1))),
                interface: Some(2),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1))),
            }],
            dns: json!({}),
        }
    }

    #[test]
    fn shape_per_version() {
        let r = sample();
        for v in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            let j = r.to_json(v);
            assert_eq!(j["cniVersion"], v.as_str());
            assert_eq!(j["ips"][0]["version"], "4");
            assert!(j["interfaces"][0].get("mtu").is_none());
        }
        let j = r.to_json(Version::V1_0_0);
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["interfaces"][2].get("mtu").is_none());
        assert_eq!(j["ips"][0]["interface"], 2);
        assert_eq!(j["ips"][0]["address"], "10.244.1.5/24");
        assert_eq!(j["ips"][0]["gateway"], "10.244.1.1");
        assert_eq!(j["interfaces"][2]["sandbox"], "/run/netns/p");
        assert_eq!(j["routes"][0], json!({"dst":"0.0.0.0/0","gw":"10.244.1.1"}));
        let j = r.to_json(Version::V1_1_0);
        assert_eq!(j["interfaces"][2]["mtu"], 1450);
    }

    #[test]
    fn round_trips_through_prev_result() {
        let r = sample();
        for v in [
            Version::V0_3_0,
            Version::V0_4_0,
            Version::V1_0_0,
            Version::V1_1_0,
        ] {
            let mut back = CniResult::from_json(&r.to_json(v)).unwrap();
            if !v.interface_has_mtu() {
                for i in &mut back.interfaces {
                    i.mtu = Some(1450);
                }
            }
            assert_eq!(back, r);
        }
    }

    #[test]
    fn mac_from_ip() {
        assert_eq!(
            format_mac(&mac_for_ip(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 0)))),
            "0a:58:0a:f4:01:00"
        );
    }
}
