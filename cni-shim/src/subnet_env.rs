//! The node's subnet.env (Flannel's format): which pod subnets this node owns (IPv4, IPv6 or
//! both), their gateways (first host), the cluster networks, the pod MTU and whether the node
//! masquerades. The one definition of the file: overlayd's control side writes it
//! ([`SubnetEnv::for_node`], [`SubnetEnv::write_atomic`]) and this plugin reads it
//! ([`SubnetEnv::parse`]). It lives in the plugin's crate because the plugin is the light side
//! (std, ipnetwork, thiserror here): the writer already depends on everything this crate does.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnetwork::IpNetwork;

/// One address family's share of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSubnet {
    /// `FLANNEL_NETWORK` / `FLANNEL_IPV6_NETWORK`: the whole cluster pod network.
    pub network: IpNetwork,
    /// `FLANNEL_SUBNET` / `FLANNEL_IPV6_SUBNET` normalised to its network address,
    /// e.g. 10.244.1.0/24.
    pub subnet: IpNetwork,
    /// The address part of the `*_SUBNET` value, e.g. 10.244.1.1: the bridge's address and
    /// the pods' gateway.
    pub gateway: IpAddr,
}

impl NodeSubnet {
    /// The gateway with the node subnet's prefix, e.g. 10.244.1.1/24 (the bridge address).
    pub fn gateway_cidr(&self) -> IpNetwork {
        IpNetwork::new(self.gateway, self.subnet.prefix()).unwrap_or(self.subnet)
    }

    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    /// A node's share of one family as the writer knows it: the cluster `network` and the
    /// node's pod CIDR; the gateway is the pod CIDR's first host, as Flannel writes it. Fails
    /// as the reader would on the file (a pod CIDR outside the network, or one too small to
    /// have a first host).
    pub fn for_pod_cidr(network: IpNetwork, pod_cidr: IpNetwork) -> Result<Self, SubnetEnvError> {
        let (key, first) = match pod_cidr {
            IpNetwork::V4(n) => (
                "FLANNEL_SUBNET",
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).wrapping_add(1))),
            ),
            IpNetwork::V6(n) => (
                "FLANNEL_IPV6_SUBNET",
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).wrapping_add(1))),
            ),
        };
        if network.is_ipv4() != pod_cidr.is_ipv4() {
            return Err(SubnetEnvError::SubnetOutsideNetwork {
                key,
                subnet: pod_cidr,
                network,
            });
        }
        let with_gw = IpNetwork::new(first, pod_cidr.prefix()).unwrap_or(pod_cidr);
        let s = node_subnet(with_gw, Some(network), key)?;
        if s.subnet != normalise(pod_cidr) {
            // A /32 or /128 has no first host inside it.
            return Err(SubnetEnvError::GatewayNotAHost(pod_cidr, key));
        }
        Ok(s)
    }
}

/// What the plugin needs from subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// IPv4 first when present, then IPv6; never empty.
    pub subnets: Vec<NodeSubnet>,
    /// `FLANNEL_MTU`, when present.
    pub mtu: Option<u32>,
    /// `FLANNEL_IPMASQ`: informational. overlayd masquerades when it runs with `--ip-masq` (and
    /// then writes true); this plugin never does, unlike Flannel's, whose bridge delegate
    /// masquerades each pod when it is false (see DOCS.md).
    pub ipmasq: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("line {line}: {key} is {value:?}, which is not {expected}")]
    BadValue {
        line: usize,
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set")]
    Missing,
    #[error("{key} {subnet} is not inside {network}")]
    SubnetOutsideNetwork {
        key: &'static str,
        subnet: IpNetwork,
        network: IpNetwork,
    },
    #[error("{key} {0} names its network or last address; it must name the gateway (first host), e.g. 10.244.1.1/24", key = .1)]
    GatewayNotAHost(IpNetwork, &'static str),
}

fn normalise(n: IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).unwrap_or(n)
}

fn last_addr(n: IpNetwork) -> IpAddr {
    match n {
        IpNetwork::V4(v) => IpAddr::V4(v.broadcast()),
        IpNetwork::V6(v) => {
            let host_bits = 128 - u32::from(v.prefix());
            let mask = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            IpAddr::V6((u128::from(v.network()) | mask).into())
        }
    }
}

fn node_subnet(
    with_gw: IpNetwork,
    network: Option<IpNetwork>,
    key: &'static str,
) -> Result<NodeSubnet, SubnetEnvError> {
    let gateway = with_gw.ip();
    let subnet = normalise(with_gw);
    let max = if subnet.is_ipv4() { 32 } else { 128 };
    if subnet.prefix() + 1 < max && (gateway == subnet.network() || gateway == last_addr(subnet)) {
        return Err(SubnetEnvError::GatewayNotAHost(with_gw, key));
    }
    // Flannel always writes the *_NETWORK key; tolerate its absence by treating the node
    // subnet as the network (routes then cover only this node's pods).
    let network = network.map(normalise).unwrap_or(subnet);
    if !network.contains(subnet.network()) || network.prefix() > subnet.prefix() {
        return Err(SubnetEnvError::SubnetOutsideNetwork {
            key,
            subnet,
            network,
        });
    }
    Ok(NodeSubnet {
        network,
        subnet,
        gateway,
    })
}

impl SubnetEnv {
    /// What a node writes: its IPv4 share, its IPv6 share, or both (IPv4 first), the pod MTU
    /// and whether it masquerades.
    pub fn for_node(
        v4: Option<NodeSubnet>,
        v6: Option<NodeSubnet>,
        mtu: u32,
        ipmasq: bool,
    ) -> Result<Self, SubnetEnvError> {
        let subnets: Vec<NodeSubnet> = v4.into_iter().chain(v6).collect();
        if subnets.is_empty() {
            return Err(SubnetEnvError::Missing);
        }
        Ok(Self {
            subnets,
            mtu: Some(mtu),
            ipmasq,
        })
    }

    /// The file's text in Flannel's order (`pkg/subnet/subnet.go` `WriteSubnetFile`): the
    /// IPv4 pair, the IPv6 pair, `FLANNEL_MTU`, `FLANNEL_IPMASQ`. Each `*_SUBNET` names the
    /// gateway (first host) with the pod CIDR's prefix, e.g. `10.244.1.1/24`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(v4) = self.v4() {
            s.push_str(&format!(
                "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\n",
                v4.network,
                v4.gateway_cidr()
            ));
        }
        if let Some(v6) = self.v6() {
            s.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={}\nFLANNEL_IPV6_SUBNET={}\n",
                v6.network,
                v6.gateway_cidr()
            ));
        }
        if let Some(mtu) = self.mtu {
            s.push_str(&format!("FLANNEL_MTU={mtu}\n"));
        }
        s.push_str(&format!("FLANNEL_IPMASQ={}\n", self.ipmasq));
        s
    }

    /// Writes the file atomically (temporary file in the same directory, fsync, rename),
    /// creating the directory when missing, so a plugin never reads half a file.
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(self.render().as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    pub fn parse(text: &str) -> Result<Self, SubnetEnvError> {
        let (mut net4, mut sub4, mut net6, mut sub6) = (None, None, None, None);
        let mut mtu = None;
        let mut ipmasq = false;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim().trim_start_matches("export ").trim();
            let value = value.trim().trim_matches('"').trim_matches('\'');
            let bad = |key: &'static str, expected: &'static str| SubnetEnvError::BadValue {
                line: i + 1,
                key,
                value: value.to_string(),
                expected,
            };
            let cidr = |key: &'static str, v4: bool| -> Result<IpNetwork, SubnetEnvError> {
                let expected = if v4 {
                    "an IPv4 address/prefix"
                } else {
                    "an IPv6 address/prefix"
                };
                match value.parse::<IpNetwork>() {
                    Ok(n) if n.is_ipv4() == v4 => Ok(n),
                    _ => Err(bad(key, expected)),
                }
            };
            match key {
                "FLANNEL_NETWORK" => net4 = Some(cidr("FLANNEL_NETWORK", true)?),
                "FLANNEL_SUBNET" => sub4 = Some(cidr("FLANNEL_SUBNET", true)?),
                "FLANNEL_IPV6_NETWORK" => net6 = Some(cidr("FLANNEL_IPV6_NETWORK", false)?),
                "FLANNEL_IPV6_SUBNET" => sub6 = Some(cidr("FLANNEL_IPV6_SUBNET", false)?),
                "FLANNEL_MTU" => {
                    let range = "a number between 68 and 65535";
                    let m = value
                        .parse::<u32>()
                        .map_err(|_| bad("FLANNEL_MTU", range))?;
                    if !(68..=65535).contains(&m) {
                        return Err(bad("FLANNEL_MTU", range));
                    }
                    mtu = Some(m);
                }
                "FLANNEL_IPMASQ" => {
                    ipmasq = match value {
                        "true" => true,
                        "false" | "" => false,
                        _ => return Err(bad("FLANNEL_IPMASQ", "true or false")),
                    };
                }
                _ => {}
            }
        }
        let mut subnets = Vec::new();
        if let Some(s) = sub4 {
            subnets.push(node_subnet(s, net4, "FLANNEL_SUBNET")?);
        }
        if let Some(s) = sub6 {
            subnets.push(node_subnet(s, net6, "FLANNEL_IPV6_SUBNET")?);
        }
        if subnets.is_empty() {
            return Err(SubnetEnvError::Missing);
        }
        Ok(Self {
            subnets,
            mtu,
            ipmasq,
        })
    }

    pub fn v4(&self) -> Option<&NodeSubnet> {
        self.subnets.iter().find(|s| s.is_ipv4())
    }

    pub fn v6(&self) -> Option<&NodeSubnet> {
        self.subnets.iter().find(|s| !s.is_ipv4())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flannel_file() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        let v4 = env.v4().unwrap();
        assert_eq!(v4.network.to_string(), "10.244.0.0/16");
        assert_eq!(v4.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(v4.gateway.to_string(), "10.244.1.1");
        assert_eq!(v4.gateway_cidr().to_string(), "10.244.1.1/24");
        assert_eq!(env.mtu, Some(1450));
        assert!(env.ipmasq);
        assert!(env.v6().is_none());
    }

    #[test]
    fn parses_dual_stack_and_ipv6_only() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1430\n",
        )
        .unwrap();
        assert_eq!(env.subnets.len(), 2);
        let v6 = env.v6().unwrap();
        assert_eq!(v6.subnet.to_string(), "fd00:10:244:1::/64");
        assert_eq!(v6.gateway.to_string(), "fd00:10:244:1::1");
        assert_eq!(v6.network.to_string(), "fd00:10:244::/56");
        let only6 = SubnetEnv::parse("FLANNEL_IPV6_SUBNET=fd00:1::1/64").unwrap();
        assert!(only6.v4().is_none());
    }

    #[test]
    fn tolerates_comments_quotes_and_export() {
        let env =
            SubnetEnv::parse("# written by overlayd\nexport FLANNEL_SUBNET=\"10.1.2.1/24\"\n\n")
                .unwrap();
        let v4 = env.v4().unwrap();
        assert_eq!(v4.network, v4.subnet);
        assert_eq!(env.mtu, None);
    }

    #[test]
    fn rejects_bad_files() {
        assert_eq!(
            SubnetEnv::parse("FLANNEL_MTU=1450").unwrap_err(),
            SubnetEnvError::Missing
        );
        let bad = |s| SubnetEnv::parse(s).unwrap_err();
        assert!(matches!(
            bad("FLANNEL_SUBNET=10.1.2.300/24"),
            SubnetEnvError::BadValue { .. }
        ));
        assert!(matches!(
            bad("FLANNEL_SUBNET=fd00::1/64"),
            SubnetEnvError::BadValue { .. }
        ));
        assert!(matches!(
            bad("FLANNEL_IPV6_SUBNET=10.0.0.1/24"),
            SubnetEnvError::BadValue { .. }
        ));
        assert!(matches!(
            bad("FLANNEL_SUBNET=10.1.2.0/24"),
            SubnetEnvError::GatewayNotAHost(..)
        ));
        assert!(matches!(
            bad("FLANNEL_IPV6_SUBNET=fd00:1::/64"),
            SubnetEnvError::GatewayNotAHost(..)
        ));
        assert!(matches!(
            bad("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.9.2.1/24"),
            SubnetEnvError::SubnetOutsideNetwork { .. }
        ));
        assert!(matches!(
            bad("FLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=abc"),
            SubnetEnvError::BadValue { .. }
        ));
    }

    /// The writer's text (moved here with it from fdb-sync): byte for byte what flanneld writes.
    #[test]
    fn renders_flannel_format() {
        let v4 = NodeSubnet::for_pod_cidr(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        )
        .unwrap();
        let env = SubnetEnv::for_node(Some(v4), None, 1450, false).unwrap();
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let v6 = NodeSubnet::for_pod_cidr(
            "fd00:10:244::/56".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        )
        .unwrap();
        let dual = SubnetEnv::for_node(Some(v4), Some(v6), 1430, true).unwrap();
        assert_eq!(
            dual.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n\
             FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
        // IPv6-only (EnableIPv4 false): Flannel's WriteSubnetFile omits the IPv4 pair.
        let only6 = SubnetEnv::for_node(None, Some(v6), 1450, false).unwrap();
        assert_eq!(
            only6.render(),
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(SubnetEnv::parse(&only6.render()).unwrap(), only6);
    }

    /// Writer -> file -> reader gives back exactly what was written, for IPv4, IPv6 and dual
    /// stack, with both masquerade settings and the MTU.
    #[test]
    fn round_trips_from_writer_to_reader() {
        let dir = std::env::temp_dir().join(format!("cni-subnet-env-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let v4 = |net: &str, cidr: &str| {
            NodeSubnet::for_pod_cidr(net.parse().unwrap(), cidr.parse().unwrap()).unwrap()
        };
        let cases = [
            (
                Some(v4("10.244.0.0/16", "10.244.7.0/24")),
                None,
                1450,
                false,
            ),
            (
                Some(v4("10.244.0.0/16", "10.244.7.0/24")),
                Some(v4("fd00:10:244::/56", "fd00:10:244:7::/64")),
                1430,
                true,
            ),
            (
                None,
                Some(v4("fd00:20::/48", "fd00:20:0:3::/64")),
                8950,
                true,
            ),
            (Some(v4("172.16.0.0/12", "172.20.128.0/17")), None, 68, true),
        ];
        for (i, (a, b, mtu, masq)) in cases.into_iter().enumerate() {
            let written = SubnetEnv::for_node(a, b, mtu, masq).unwrap();
            let path = dir.join(format!("run/flannel-{i}/subnet.env"));
            written.write_atomic(&path).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let read = SubnetEnv::parse(&text).unwrap();
            assert_eq!(read, written, "{text}");
            assert_eq!(read.mtu, Some(mtu));
            assert_eq!(read.ipmasq, masq);
            assert_eq!(read.v4(), a.as_ref());
            assert_eq!(read.v6(), b.as_ref());
            // Nothing else is left in the directory (the temporary file was renamed).
            let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(left, [std::ffi::OsString::from("subnet.env")]);
        }
        let dual = SubnetEnv::parse(
            &std::fs::read_to_string(dir.join("run/flannel-1/subnet.env")).unwrap(),
        )
        .unwrap();
        assert_eq!(dual.v6().unwrap().gateway.to_string(), "fd00:10:244:7::1");
        assert_eq!(
            dual.v4().unwrap().gateway_cidr().to_string(),
            "10.244.7.1/24"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_writer_refuses_what_the_reader_would() {
        let w = |net: &str, cidr: &str| {
            NodeSubnet::for_pod_cidr(net.parse().unwrap(), cidr.parse().unwrap()).unwrap_err()
        };
        assert_eq!(
            w("10.244.0.0/16", "10.9.1.0/24").to_string(),
            "FLANNEL_SUBNET 10.9.1.0/24 is not inside 10.244.0.0/16"
        );
        assert!(matches!(
            w("fd00:10:244::/56", "10.244.1.0/24"),
            SubnetEnvError::SubnetOutsideNetwork { .. }
        ));
        assert!(matches!(
            w("10.244.0.0/16", "10.244.1.5/32"),
            SubnetEnvError::GatewayNotAHost(..)
        ));
        assert_eq!(
            SubnetEnv::for_node(None, None, 1450, false).unwrap_err(),
            SubnetEnvError::Missing
        );
    }
}
