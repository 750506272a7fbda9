//! Where fdb-sync's node model becomes overlayd's own types: the model's peers and MACs turn
//! into the FDB's [`Peer`] and the wire's [`MacAddr`] here, and nowhere else. The dataplane
//! (`fdb`, `path`, `worker`) and `sys` never import fdb-sync, so a new node source or a change
//! to the model stops at the control side.

use crate::fdb::{Peer, PeerV4, PeerV6};
use crate::wire::ethernet::MacAddr;

/// The model's Ethernet address as overlayd's.
#[must_use]
pub fn mac(m: fdb_sync::MacAddr) -> MacAddr {
    MacAddr(m.0)
}

/// One model peer as the FDB's, each side as the model has it.
#[must_use]
pub fn peer(p: &fdb_sync::Peer) -> Peer {
    Peer {
        name: p.name.clone(),
        v4: p.v4.map(|v4| PeerV4 {
            pod_cidr: v4.pod_cidr,
            vtep_ip: v4.vtep_ip,
            vtep_mac: mac(v4.vtep_mac),
        }),
        v6: p.v6.map(|v6| PeerV6 {
            pod_cidr: v6.pod_cidr,
            vtep_ip: v6.vtep_ip,
            vtep_mac: mac(v6.vtep_mac),
        }),
    }
}

/// The model's peer set as the FDB's, in the same order.
#[must_use]
pub fn peers(ps: &[fdb_sync::Peer]) -> Vec<Peer> {
    ps.iter().map(peer).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_keep_every_field_and_the_order() {
        let model = [
            fdb_sync::Peer {
                name: "b".into(),
                v4: Some(fdb_sync::PeerV4 {
                    pod_cidr: "10.244.2.0/24".parse().unwrap(),
                    vtep_ip: "198.18.0.2".parse().unwrap(),
                    vtep_mac: "02:00:00:00:00:02".parse().unwrap(),
                }),
                v6: Some(fdb_sync::PeerV6 {
                    pod_cidr: "fd00:10:244:2::/64".parse().unwrap(),
                    vtep_ip: "fd00:18::2".parse().unwrap(),
                    vtep_mac: "02:00:00:00:00:62".parse().unwrap(),
                }),
            },
            fdb_sync::Peer {
                name: "a".into(),
                v4: Some(fdb_sync::PeerV4 {
                    pod_cidr: "10.244.1.0/24".parse().unwrap(),
                    vtep_ip: "198.18.0.1".parse().unwrap(),
                    vtep_mac: fdb_sync::derive_vtep_mac("10.244.1.0/24".parse().unwrap()),
                }),
                v6: None,
            },
            fdb_sync::Peer {
                name: "c".into(),
                v4: None,
                v6: Some(fdb_sync::PeerV6 {
                    pod_cidr: "fd00:10:244:3::/64".parse().unwrap(),
                    vtep_ip: "fd00:18::3".parse().unwrap(),
                    vtep_mac: "02:00:00:00:00:63".parse().unwrap(),
                }),
            },
        ];
        let ours = peers(&model);
        assert_eq!(ours.len(), 3, "an IPv6-only peer is a peer");
        for (m, o) in model.iter().zip(&ours) {
            assert_eq!(m.name, o.name);
            let (Some(m4), Some(o4)) = (m.v4, o.v4) else {
                assert!(m.v4.is_none() && o.v4.is_none());
                continue;
            };
            assert_eq!((m4.pod_cidr, m4.vtep_ip), (o4.pod_cidr, o4.vtep_ip));
            assert_eq!(m4.vtep_mac.to_string(), o4.vtep_mac.to_string());
        }
        assert_eq!(
            ours[1].v4.unwrap().vtep_mac,
            MacAddr([0x0a, 0x58, 10, 244, 1, 0])
        );
        assert_eq!(
            ours[2].v6.unwrap().vtep_ip.to_string(),
            "fd00:18::3".to_string()
        );
        let v6 = ours[0].v6.unwrap();
        assert_eq!(
            (v6.pod_cidr.to_string(), v6.vtep_ip.to_string()),
            ("fd00:10:244:2::/64".into(), "fd00:18::2".into())
        );
        assert_eq!(v6.vtep_mac, MacAddr([2, 0, 0, 0, 0, 0x62]));
        assert!(ours[1].v6.is_none());
    }
}
