//! Everything the runtime hands the plugin: the `CNI_*` environment and the network config
//! JSON on stdin. Parsing and validation only; nothing here touches the system.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{code, CniError};
use crate::version::Version;

pub const DEFAULT_BRIDGE: &str = "cni0";
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// Linux IFNAMSIZ - 1.
pub const MAX_IFNAME_LEN: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "" => return Err(CniError::invalid_env("CNI_COMMAND is not set")),
            other => {
                return Err(CniError::invalid_env(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
                )))
            }
        })
    }
}

/// The validated `CNI_*` environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    /// Set (and validated) for ADD, DEL, CHECK.
    pub container_id: String,
    /// Empty when the runtime passed none (allowed for DEL only).
    pub netns: String,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    /// Addresses the runtime asked for with `CNI_ARGS=IP=a.b.c.d[,fd00::5]`.
    pub requested_ips: Vec<IpAddr>,
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]*`: safe as a file name component and in a veth hash.
pub fn is_safe_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A name Linux accepts for a network interface.
pub fn validate_ifname(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if name.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "{what} {name:?} is {} bytes; Linux allows at most {MAX_IFNAME_LEN}",
            name.len()
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{what} {name:?} contains a character Linux does not allow in interface names"
        ));
    }
    Ok(())
}

impl CniEnv {
    /// Reads and validates the environment through `get` (std::env::var in the binary).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = Command::parse(get("CNI_COMMAND").unwrap_or_default().as_str())?;
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let netns = get("CNI_NETNS").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        if needs_attachment {
            if container_id.is_empty() {
                return Err(CniError::invalid_env("CNI_CONTAINERID is not set"));
            }
            if container_id.len() > 1024 || !is_safe_id(&container_id) {
                return Err(CniError::invalid_env(format!(
                    "CNI_CONTAINERID {container_id:?} is not a valid container ID"
                ))
                .with_details("allowed: a letter or digit, then letters, digits, '_', '.', '-'"));
            }
            validate_ifname("CNI_IFNAME", &ifname).map_err(CniError::invalid_env)?;
            if command != Command::Del && netns.is_empty() {
                return Err(CniError::invalid_env("CNI_NETNS is not set"));
            }
        }
        let (args, requested_ips) = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
            requested_ips,
        })
    }
}

/// `CNI_ARGS` split into pairs, and the `IP` the runtime asked for, if any.
pub type CniArgs = (Vec<(String, String)>, Vec<IpAddr>);

/// `CNI_ARGS`: `K=V;K=V`. Only `IP` means anything to this plugin; the rest (K8S_POD_NAME,
/// IgnoreUnknown, ...) is accepted and ignored.
pub fn parse_cni_args(s: &str) -> Result<CniArgs, CniError> {
    let mut out = Vec::new();
    let mut ips = Vec::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::invalid_env(format!(
                "CNI_ARGS item {pair:?} is not KEY=VALUE"
            )));
        };
        if k == "IP" {
            for one in v.split(',') {
                ips.push(one.parse::<IpAddr>().map_err(|_| {
                    CniError::invalid_env(format!(
                        "CNI_ARGS IP={v:?} is not a list of IP addresses"
                    ))
                })?);
            }
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok((out, ips))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: IpNetwork,
    /// None: via the node gateway of the same family.
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The validated network config.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    pub bridge: String,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    pub routes: Vec<RouteConf>,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub is_default_gateway: bool,
    pub dns: Value,
    pub prev_result: Option<Value>,
    /// From `runtimeConfig.ips` (capability "ips") or `args.cni.ips`.
    pub requested_ips: Vec<IpAddr>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawRuntimeConfig {
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type", default)]
    plugin_type: String,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    subnet_file: Option<String>,
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: Option<bool>,
    #[serde(default)]
    is_default_gateway: Option<bool>,
    #[serde(default)]
    dns: Option<Value>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default)]
    runtime_config: Option<RawRuntimeConfig>,
    #[serde(default)]
    args: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Option<Vec<Attachment>>,
    /// Flannel's CNI plugin passes `delegate` on to the `bridge` plugin; its bridge keys are
    /// read from there when the top level does not set them, so Flannel's cni-conf.json works
    /// with only its `type` changed (deploy/MIGRATING.md).
    #[serde(default)]
    delegate: Option<RawDelegate>,
}

/// The keys of Flannel's `delegate` section that mean the same here.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawDelegate {
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: Option<bool>,
    #[serde(default)]
    is_default_gateway: Option<bool>,
}

/// The `cniVersion` string of a config, for error output, if it decodes at all.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE_FAILURE,
                "network config on stdin is not valid JSON",
            )
            .with_details(e.to_string())
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                code::DECODE_FAILURE,
                "network config on stdin is not a JSON object",
            ));
        }
        let version = match value.get("cniVersion") {
            None => Version::parse("")?,
            Some(Value::String(s)) => Version::parse(s)?,
            Some(other) => {
                return Err(CniError::new(
                    code::DECODE_FAILURE,
                    format!("cniVersion {other} is not a string"),
                ))
            }
        };
        let raw: RawConf = serde_json::from_value(value).map_err(|e| {
            CniError::invalid_config("network config has a field of the wrong type")
                .with_details(e.to_string())
        })?;

        let mut raw = raw;
        if let Some(d) = raw.delegate.take() {
            raw.bridge = raw.bridge.or(d.bridge);
            raw.mtu = raw.mtu.or(d.mtu);
            raw.hairpin_mode = raw.hairpin_mode.or(d.hairpin_mode);
            raw.is_default_gateway = raw.is_default_gateway.or(d.is_default_gateway);
        }
        let name = raw.name.unwrap_or_default();
        if name.is_empty() {
            return Err(CniError::invalid_config("network config has no \"name\""));
        }
        if !is_safe_id(&name) || name.len() > 255 {
            return Err(CniError::invalid_config(format!(
                "network name {name:?} is not valid: use a letter or digit, then letters, digits, '_', '.', '-'"
            )));
        }
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname("bridge", &bridge).map_err(CniError::invalid_config)?;
        if let Some(m) = raw.mtu {
            if !(68..=65535).contains(&m) {
                return Err(CniError::invalid_config(format!(
                    "mtu {m} is outside 68..=65535"
                )));
            }
        }
        let routes = raw
            .routes
            .into_iter()
            .map(|r| {
                let dst = r.dst.parse::<IpNetwork>().map_err(|_| {
                    CniError::invalid_config(format!("route dst {:?} is not a CIDR", r.dst))
                })?;
                let dst = IpNetwork::new(dst.network(), dst.prefix()).unwrap_or(dst);
                let gw = match r.gw.as_deref() {
                    None | Some("") => None,
                    Some(g) => match g.parse::<IpAddr>() {
                        Ok(gw) if gw.is_ipv4() == dst.is_ipv4() => Some(gw),
                        _ => {
                            return Err(CniError::invalid_config(format!(
                                "route gw {g:?} is not an address of the same family as dst {dst}"
                            )))
                        }
                    },
                };
                Ok(RouteConf { dst, gw })
            })
            .collect::<Result<Vec<_>, CniError>>()?;

        let mut requested_ips = Vec::new();
        let from_args = raw
            .args
            .as_ref()
            .and_then(|a| a.pointer("/cni/ips"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for s in raw
            .runtime_config
            .unwrap_or_default()
            .ips
            .into_iter()
            .chain(from_args)
        {
            let addr = s.split('/').next().unwrap_or_default();
            requested_ips.push(addr.parse::<IpAddr>().map_err(|_| {
                CniError::invalid_config(format!("requested IP {s:?} is not an IP address"))
            })?);
        }

        let dns = match raw.dns {
            None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
            Some(v @ Value::Object(_)) => v,
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "dns must be an object, not {other}"
                )))
            }
        };

        Ok(Self {
            version,
            name,
            plugin_type: raw.plugin_type,
            bridge,
            subnet_file: PathBuf::from(
                raw.subnet_file
                    .unwrap_or_else(|| DEFAULT_SUBNET_FILE.to_string()),
            ),
            data_dir: PathBuf::from(raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.to_string())),
            routes,
            mtu: raw.mtu,
            hairpin_mode: raw.hairpin_mode.unwrap_or(true),
            is_default_gateway: raw.is_default_gateway.unwrap_or(true),
            dns,
            prev_result: raw.prev_result,
            requested_ips,
            valid_attachments: raw.valid_attachments,
        })
    }

    /// The IPAM directory for this network: `<dataDir>/<name>`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        k: &'static str,
        v: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<_> = base.iter().filter(|(bk, _)| *bk != k).copied().collect();
        out.push((k, v));
        out
    }

    #[test]
    fn good_env_parses() {
        let e = env(&with(
            ADD,
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.244.1.9",
        ))
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(
            e.requested_ips,
            vec!["10.244.1.9".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(e.args.len(), 3);
    }

    #[test]
    fn bad_env_gives_code_4() {
        let cases: Vec<Vec<(&str, &str)>> = vec![
            with(ADD, "CNI_COMMAND", "FROB"),
            with(ADD, "CNI_COMMAND", ""),
            with(ADD, "CNI_CONTAINERID", ""),
            with(ADD, "CNI_CONTAINERID", "../../etc"),
            with(ADD, "CNI_CONTAINERID", "a/b"),
            with(ADD, "CNI_CONTAINERID", ".hidden"),
            with(ADD, "CNI_IFNAME", "a-very-long-ifname0"),
            with(ADD, "CNI_IFNAME", "eth/0"),
            with(ADD, "CNI_IFNAME", ""),
            with(ADD, "CNI_NETNS", ""),
            with(ADD, "CNI_ARGS", "novalue"),
            with(ADD, "CNI_ARGS", "IP=999.1.1.1"),
        ];
        for c in cases {
            assert_eq!(env(&c).unwrap_err().code, 4, "{c:?}");
        }
    }

    #[test]
    fn del_allows_empty_netns_and_version_needs_nothing() {
        let del = with(ADD, "CNI_COMMAND", "DEL");
        assert!(env(&with(&del, "CNI_NETNS", "")).is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "STATUS")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
    }

    #[test]
    fn ifname_limit_is_15_bytes() {
        assert!(validate_ifname("x", "abcdefghijklmno").is_ok());
        assert!(validate_ifname("x", "abcdefghijklmnop").is_err());
    }

    #[test]
    fn config_defaults() {
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"overlay","type":"overlayd-cni"}"#)
            .unwrap();
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!(c.bridge, "cni0");
        assert_eq!(c.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(c.ipam_dir(), PathBuf::from("/var/lib/cni/networks/overlay"));
        assert!(c.hairpin_mode && c.is_default_gateway);
        assert_eq!(c.dns, serde_json::json!({}));
    }

    /// The plugin entry of Flannel's kube-flannel.yml cni-conf.json with only its type changed,
    /// as the runtime hands it over (name and cniVersion copied in from the conflist): the
    /// delegate's bridge keys apply, IPAM lives in host-local's directory for cbr0.
    #[test]
    fn flannel_delegate_keys_are_read() {
        let c = NetConf::parse(
            br#"{"type":"overlayd-cni","delegate":{"hairpinMode":false,"isDefaultGateway":false,"bridge":"cbr9","mtu":1400},
                "name":"cbr0","cniVersion":"0.3.1"}"#,
        )
        .unwrap();
        assert_eq!(c.ipam_dir(), PathBuf::from("/var/lib/cni/networks/cbr0"));
        assert_eq!(c.bridge, "cbr9");
        assert_eq!(c.mtu, Some(1400));
        assert!(!c.hairpin_mode && !c.is_default_gateway);
        let c = NetConf::parse(
            br#"{"type":"overlayd-cni","delegate":{"hairpinMode":true,"isDefaultGateway":true},
                "name":"cbr0","cniVersion":"0.3.1"}"#,
        )
        .unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(c.hairpin_mode && c.is_default_gateway);
        // The top level wins over the delegate.
        let c = NetConf::parse(
            br#"{"type":"overlayd-cni","hairpinMode":true,"delegate":{"hairpinMode":false},"name":"cbr0","cniVersion":"1.0.0"}"#,
        )
        .unwrap();
        assert!(c.hairpin_mode);
    }

    #[test]
    fn config_full() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"overlayd-cni","bridge":"br9","mtu":1400,
                "hairpinMode":false,"isDefaultGateway":false,"routes":[{"dst":"192.168.7.9/16"},{"dst":"172.16.0.0/12","gw":"10.1.1.254"},{"dst":"fd00::/8"}],
                "dns":{"nameservers":["10.96.0.10"]},"runtimeConfig":{"ips":["10.1.1.7/24"]},
                "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"ipam":{"type":"ignored"}}"#,
        )
        .unwrap();
        assert_eq!(c.routes[0].dst.to_string(), "192.168.0.0/16");
        assert_eq!(c.routes[1].gw, Some("10.1.1.254".parse().unwrap()));
        assert_eq!(c.routes[2].dst.to_string(), "fd00::/8");
        assert_eq!(c.requested_ips, vec!["10.1.1.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.valid_attachments.unwrap().len(), 1);
        assert_eq!(c.mtu, Some(1400));
    }

    #[test]
    fn bad_configs_give_the_right_code() {
        let cases: &[(&[u8], u32)] = &[
            (b"not json", 6),
            (b"[1,2]", 6),
            (br#"{"cniVersion":7,"name":"n"}"#, 6),
            (br#"{"name":"n"}"#, 1),
            (br#"{"cniVersion":"0.2.0","name":"n"}"#, 1),
            (br#"{"cniVersion":"9.9.9","name":"n"}"#, 1),
            (br#"{"cniVersion":"1.0.0"}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"../x"}"#, 7),
            (
                br#"{"cniVersion":"1.0.0","name":"n","bridge":"abcdefghijklmnopq"}"#,
                7,
            ),
            (br#"{"cniVersion":"1.0.0","name":"n","mtu":10}"#, 7),
            (br#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#, 7),
            (
                br#"{"cniVersion":"1.0.0","name":"n","routes":[{"dst":"nope"}]}"#,
                7,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","routes":[{"dst":"fd00::/8","gw":"10.0.0.1"}]}"#,
                7,
            ),
            (br#"{"cniVersion":"1.0.0","name":"n","dns":[]}"#, 7),
        ];
        for (input, want) in cases {
            let got = NetConf::parse(input).unwrap_err();
            assert_eq!(got.code, *want, "{}: {got}", String::from_utf8_lossy(input));
        }
    }
}
