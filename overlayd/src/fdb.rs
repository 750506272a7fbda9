//! The forwarding table: VtepMAC -> (VTEP address, node), plus the set of known VTEP addresses
//! that ingress accepts. A `Fdb` is immutable; the control plane builds a new one and swaps it
//! in whole (`FdbHandle`), so workers read it without locks.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use arc_swap::ArcSwap;
use fdb_sync::{MacAddr, Peer};
use ipnetwork::Ipv4Network;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub node: Arc<str>,
    pub pod_cidr: Ipv4Network,
    /// Where to send: the peer's public IP and the VXLAN port.
    pub vtep: SocketAddrV4,
}

#[derive(Debug, Default)]
pub struct Fdb {
    by_mac: HashMap<[u8; 6], FdbEntry>,
    vteps: HashSet<Ipv4Addr>,
}

impl Fdb {
    #[must_use]
    pub fn from_peers(peers: &[Peer], port: u16) -> Self {
        let mut fdb = Fdb::default();
        for p in peers {
            fdb.by_mac.insert(
                p.vtep_mac.0,
                FdbEntry {
                    node: Arc::from(p.name.as_str()),
                    pod_cidr: p.pod_cidr,
                    vtep: SocketAddrV4::new(p.vtep_ip, port),
                },
            );
            fdb.vteps.insert(p.vtep_ip);
        }
        fdb
    }

    #[inline]
    #[must_use]
    pub fn lookup(&self, mac: &[u8; 6]) -> Option<&FdbEntry> {
        self.by_mac.get(mac)
    }

    #[inline]
    #[must_use]
    pub fn is_known_vtep(&self, ip: Ipv4Addr) -> bool {
        self.vteps.contains(&ip)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// Entries sorted by node name, for inspection.
    #[must_use]
    pub fn entries(&self) -> Vec<(MacAddr, FdbEntry)> {
        let mut v: Vec<_> = self
            .by_mac
            .iter()
            .map(|(m, e)| (MacAddr(*m), e.clone()))
            .collect();
        v.sort_by(|a, b| a.1.node.cmp(&b.1.node));
        v
    }
}

/// The shared, atomically swapped FDB snapshot.
pub type FdbHandle = Arc<ArcSwap<Fdb>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_vtep_set() {
        let peers = vec![Peer {
            name: "b".into(),
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
            vtep_ip: "198.18.0.2".parse().unwrap(),
            vtep_mac: "0a:58:0a:f4:02:00".parse().unwrap(),
        }];
        let fdb = Fdb::from_peers(&peers, 8472);
        let e = fdb.lookup(&[0x0a, 0x58, 10, 244, 2, 0]).unwrap();
        assert_eq!(e.vtep.to_string(), "198.18.0.2:8472");
        assert!(fdb.is_known_vtep("198.18.0.2".parse().unwrap()));
        assert!(!fdb.is_known_vtep("198.18.0.3".parse().unwrap()));
        assert!(fdb.lookup(&[0; 6]).is_none());
        assert_eq!(fdb.len(), 1);
    }
}
