//! net-conf.json in Flannel's format, validated with errors that name the field.

use ipnetwork::Ipv4Network;
use serde::Deserialize;

pub const DEFAULT_VNI: u32 = 1;
pub const DEFAULT_PORT: u16 = 8472;
/// IPv4 + UDP + VXLAN + inner Ethernet.
pub const VXLAN_OVERHEAD_V4: u32 = 50;

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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawNetConf {
    network: Option<String>,
    #[serde(rename = "EnableIPv4", default)]
    enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6", default)]
    enable_ipv6: bool,
    /// Read so a Flannel file parses; unused while `EnableIPv6` must be false.
    #[serde(rename = "IPv6Network")]
    ipv6_network: Option<String>,
    #[serde(rename = "EnableNFTables", default)]
    enable_nftables: bool,
    backend: Option<RawBackend>,
}

#[derive(Debug, Deserialize)]
struct RawBackend {
    #[serde(rename = "Type")]
    type_: Option<String>,
    #[serde(rename = "VNI")]
    vni: Option<i64>,
    #[serde(rename = "Port")]
    port: Option<i64>,
    #[serde(rename = "MTU")]
    mtu: Option<i64>,
    #[serde(rename = "DirectRouting", default)]
    direct_routing: bool,
}

/// The validated network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub network: Ipv4Network,
    pub vni: u32,
    pub port: u16,
    /// Inner MTU override (`Backend.MTU`); `None` means underlay MTU - 50.
    pub mtu: Option<u32>,
    /// `Backend.DirectRouting`: peers on a directly connected network get a plain route via
    /// their node address instead of VXLAN.
    pub direct_routing: bool,
    /// `EnableNFTables`: masquerade and forward rules with nftables instead of iptables.
    pub enable_nftables: bool,
}

impl NetConf {
    /// Parses and validates the text of a net-conf.json.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawNetConf =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        if raw.enable_ipv4 == Some(false) {
            return Err(field(
                "EnableIPv4",
                "IPv6-only networks are not supported yet; set it to true",
            ));
        }
        let network = raw.network.ok_or_else(|| {
            field(
                "Network",
                "missing; set it to the cluster pod CIDR, e.g. \"10.244.0.0/16\"",
            )
        })?;
        let network: Ipv4Network = network
            .parse()
            .map_err(|e| field("Network", format!("{network:?} is not an IPv4 CIDR: {e}")))?;
        // The dataplane forwards IPv4 only so far: accepting IPv6 here and then programming
        // nothing for it would fail silently, so say so instead.
        if raw.enable_ipv6 {
            return Err(field(
                "EnableIPv6",
                "IPv6 pod networks are not supported yet; set it to false (the cni plugin handles FLANNEL_IPV6_* for later)",
            ));
        }
        let _ = raw.ipv6_network;
        let b = raw.backend.unwrap_or(RawBackend {
            type_: None,
            vni: None,
            port: None,
            mtu: None,
            direct_routing: false,
        });
        match b.type_.as_deref() {
            None | Some("vxlan") => {}
            Some(t) => {
                return Err(field(
                    "Backend.Type",
                    format!("{t:?} is not supported: overlayd implements \"vxlan\""),
                ))
            }
        }
        let vni = match b.vni {
            None | Some(0) => DEFAULT_VNI,
            Some(v) => u32::try_from(v)
                .ok()
                .filter(|v| *v <= crate::wire::vxlan::MAX_VNI)
                .ok_or_else(|| field("Backend.VNI", format!("{v} is out of range 1..=16777215")))?,
        };
        let port = match b.port {
            None | Some(0) => DEFAULT_PORT,
            Some(p) => u16::try_from(p)
                .map_err(|_| field("Backend.Port", format!("{p} is out of range 1..=65535")))?,
        };
        let mtu = match b.mtu {
            None | Some(0) => None,
            Some(m) if (576..=65_000).contains(&m) => Some(u32::try_from(m).unwrap_or(1450)),
            Some(m) => {
                return Err(field(
                    "Backend.MTU",
                    format!("{m} is out of range 576..=65000 (0 = derive)"),
                ))
            }
        };
        Ok(NetConf {
            network,
            vni,
            port,
            mtu,
            direct_routing: b.direct_routing,
            enable_nftables: raw.enable_nftables,
        })
    }

    /// The TAP MTU for an underlay of `underlay_mtu`.
    #[must_use]
    pub fn inner_mtu(&self, underlay_mtu: u32) -> u32 {
        self.mtu
            .unwrap_or_else(|| underlay_mtu.saturating_sub(VXLAN_OVERHEAD_V4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_default_file() {
        let c = NetConf::parse(
            r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!((c.vni, c.port, c.mtu), (1, 8472, None));
        assert_eq!(c.network.to_string(), "10.244.0.0/16");
        assert_eq!(c.inner_mtu(1500), 1450);
        assert!(!c.enable_nftables);
        let c = NetConf::parse(r#"{"Network":"10.244.0.0/16","EnableNFTables":true}"#).unwrap();
        assert!(c.enable_nftables);
    }

    #[test]
    fn full_backend() {
        let c = NetConf::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":false,"IPv6Network":"fd00::/56",
                "Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"MTU":1400,"DirectRouting":false}}"#,
        )
        .unwrap();
        assert_eq!((c.vni, c.port, c.mtu), (4096, 4789, Some(1400)));
        assert_eq!(c.inner_mtu(9000), 1400);
        assert!(!c.direct_routing);
        let c = NetConf::parse(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
        )
        .unwrap();
        assert!(c.direct_routing);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("{", "not valid JSON"),
            (r#"{"Backend":{"Type":"vxlan"}}"#, "field Network: missing"),
            (r#"{"Network":"10.244.0.0/33"}"#, "field Network"),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
                "Backend.Type: \"host-gw\"",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"VNI":16777216}}"#,
                "Backend.VNI: 16777216",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"VNI":-1}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Port":70000}}"#,
                "Backend.Port: 70000",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"MTU":100}}"#,
                "Backend.MTU: 100",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#,
                "EnableIPv6: IPv6 pod networks are not supported yet",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"VNI":"1"}}"#,
                "not valid JSON",
            ),
        ];
        for (text, want) in cases {
            let e = NetConf::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
