//! `subnet.env`, the file CNI plugins read to learn the node's pod subnet (Flannel's format).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnetwork::{Ipv4Network, Ipv6Network};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Network,
    /// The node's pod CIDR; written as its first host (`10.244.1.1/24`), as Flannel does.
    pub subnet: Ipv4Network,
    pub mtu: u32,
    pub ipmasq: bool,
    pub ipv6_network: Option<Ipv6Network>,
    pub ipv6_subnet: Option<Ipv6Network>,
}

fn first_host(net: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(1))
}

impl SubnetEnv {
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            first_host(self.subnet),
            self.subnet.prefix(),
            self.mtu,
            self.ipmasq
        );
        if let (Some(n), Some(sub)) = (self.ipv6_network, self.ipv6_subnet) {
            let host = std::net::Ipv6Addr::from(u128::from(sub.network()).wrapping_add(1));
            s.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={n}\nFLANNEL_IPV6_SUBNET={host}/{}\n",
                sub.prefix()
            ));
        }
        s
    }

    /// Writes the file atomically (temp file in the same directory, fsync, rename), creating the
    /// directory when missing, so a CNI plugin never reads half a file.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannel_format() {
        let env = SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            mtu: 1450,
            ipmasq: false,
            ipv6_network: None,
            ipv6_subnet: None,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let dir = std::env::temp_dir().join(format!("subnetenv-{}", std::process::id()));
        let path = dir.join("sub/subnet.env");
        env.write_atomic(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), env.render());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn renders_ipv6_pair() {
        let env = SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            mtu: 1430,
            ipmasq: true,
            ipv6_network: Some("fd00:10:244::/56".parse().unwrap()),
            ipv6_subnet: Some("fd00:10:244:1::/64".parse().unwrap()),
        };
        let r = env.render();
        assert!(
            r.contains(
                "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
            ),
            "{r}"
        );
    }
}
