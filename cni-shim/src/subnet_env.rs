//! The node's subnet.env, as overlayd (or flanneld) writes it: which pod subnet this node owns,
//! its gateway (first host), the cluster network, and the pod MTU. Parsing only, no I/O.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// What the plugin needs from subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the whole cluster pod network, e.g. 10.244.0.0/16.
    pub network: Ipv4Network,
    /// `FLANNEL_SUBNET` normalised to its network address, e.g. 10.244.1.0/24.
    pub subnet: Ipv4Network,
    /// The address part of `FLANNEL_SUBNET`, e.g. 10.244.1.1: the bridge's address and the
    /// pods' gateway.
    pub gateway: Ipv4Addr,
    /// `FLANNEL_MTU`, when present.
    pub mtu: Option<u32>,
    /// `FLANNEL_IPMASQ`: informational; overlayd masquerades, not the plugin.
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
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("FLANNEL_SUBNET {subnet} is not inside FLANNEL_NETWORK {network}")]
    SubnetOutsideNetwork {
        subnet: Ipv4Network,
        network: Ipv4Network,
    },
    #[error("FLANNEL_SUBNET {0} names its network or broadcast address; it must name the gateway (first host), e.g. 10.244.1.1/24")]
    GatewayNotAHost(Ipv4Network),
}

impl SubnetEnv {
    pub fn parse(text: &str) -> Result<Self, SubnetEnvError> {
        let mut network = None;
        let mut subnet = None;
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
            match key {
                "FLANNEL_NETWORK" => {
                    network = Some(
                        value
                            .parse::<Ipv4Network>()
                            .map_err(|_| bad("FLANNEL_NETWORK", "an IPv4 CIDR"))?,
                    );
                }
                "FLANNEL_SUBNET" => {
                    subnet = Some(
                        value
                            .parse::<Ipv4Network>()
                            .map_err(|_| bad("FLANNEL_SUBNET", "an IPv4 address/prefix"))?,
                    );
                }
                "FLANNEL_MTU" => {
                    let m = value
                        .parse::<u32>()
                        .map_err(|_| bad("FLANNEL_MTU", "a number between 68 and 65535"))?;
                    if !(68..=65535).contains(&m) {
                        return Err(bad("FLANNEL_MTU", "a number between 68 and 65535"));
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
        let with_gw = subnet.ok_or(SubnetEnvError::Missing("FLANNEL_SUBNET"))?;
        let gateway = with_gw.ip();
        let subnet = Ipv4Network::new(with_gw.network(), with_gw.prefix())
            .map_err(|_| SubnetEnvError::GatewayNotAHost(with_gw))?;
        if with_gw.prefix() < 31 && (gateway == subnet.network() || gateway == subnet.broadcast()) {
            return Err(SubnetEnvError::GatewayNotAHost(with_gw));
        }
        // Flannel always writes FLANNEL_NETWORK; tolerate its absence by treating the node
        // subnet as the network (routes then cover only this node's pods).
        let network = network.unwrap_or(subnet);
        if !network.contains(subnet.network()) || network.prefix() > subnet.prefix() {
            return Err(SubnetEnvError::SubnetOutsideNetwork { subnet, network });
        }
        Ok(Self {
            network,
            subnet,
            gateway,
            mtu,
            ipmasq,
        })
    }

    /// The gateway with the node subnet's prefix, e.g. 10.244.1.1/24 (the bridge address).
    pub fn gateway_cidr(&self) -> Ipv4Network {
        Ipv4Network::new(self.gateway, self.subnet.prefix()).unwrap_or(self.subnet)
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
        assert_eq!(env.network.to_string(), "10.244.0.0/16");
        assert_eq!(env.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(env.gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(env.gateway_cidr().to_string(), "10.244.1.1/24");
        assert_eq!(env.mtu, Some(1450));
        assert!(env.ipmasq);
    }

    #[test]
    fn tolerates_comments_quotes_and_export() {
        let env =
            SubnetEnv::parse("# written by overlayd\nexport FLANNEL_SUBNET=\"10.1.2.1/24\"\n\n")
                .unwrap();
        assert_eq!(env.network, env.subnet);
        assert_eq!(env.mtu, None);
    }

    #[test]
    fn rejects_bad_files() {
        assert_eq!(
            SubnetEnv::parse("FLANNEL_MTU=1450").unwrap_err(),
            SubnetEnvError::Missing("FLANNEL_SUBNET")
        );
        assert!(matches!(
            SubnetEnv::parse("FLANNEL_SUBNET=10.1.2.300/24"),
            Err(SubnetEnvError::BadValue { .. })
        ));
        assert!(matches!(
            SubnetEnv::parse("FLANNEL_SUBNET=10.1.2.0/24"),
            Err(SubnetEnvError::GatewayNotAHost(_))
        ));
        assert!(matches!(
            SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.9.2.1/24"),
            Err(SubnetEnvError::SubnetOutsideNetwork { .. })
        ));
        assert!(matches!(
            SubnetEnv::parse("FLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=abc"),
            Err(SubnetEnvError::BadValue { .. })
        ));
    }
}
