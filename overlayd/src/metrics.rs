//! `/metrics` in the Prometheus text format (0.0.4), built at scrape time from `Observed`:
//! a prometheus-client `Collector` reads the workers' and peers' atomics when asked, so the
//! packet path pays nothing for metrics.
//!
//! Node totals and per-peer counts are separate families (`overlayd_tx_packets_total` and
//! `overlayd_peer_tx_packets_total{peer}`), so `sum()` over either never double counts.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::observe::{Observed, PeerStatusV4, PeerStatusV6};
use crate::stats::OffloadMode;

/// `Content-Type` of what `encode` returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug)]
struct OverlaydCollector(Arc<Observed>);

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge<T>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: T,
) -> Result<(), std::fmt::Error>
where
    T: prometheus_client::encoding::EncodeGaugeValue + Send + Sync + std::fmt::Debug + 'static,
{
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for OverlaydCollector {
    #[allow(clippy::cast_precision_loss)]
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.status();

        let mut m = enc.encode_descriptor(
            "overlayd_build_info",
            "Build information; the value is always 1.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(m.encode_family(&[("version", s.version.as_str())])?)?;

        if let Some(o) = &s.own {
            let mut m = enc.encode_descriptor(
                "overlayd_node_info",
                "This node's overlay addresses (IPv4 labels empty on an IPv6-only node, IPv6 labels empty without EnableIPv6); the value is always 1.",
                None,
                MetricType::Gauge,
            )?;
            let [pod, vtep, mac] = o.ipv4.as_ref().map(PeerStatusV4::texts).unwrap_or_default();
            let [pod6, vtep6, mac6] = o.ipv6.as_ref().map(PeerStatusV6::texts).unwrap_or_default();
            ConstGauge::new(1i64).encode(m.encode_family(&[
                ("node", o.node.as_str()),
                ("pod_cidr", pod.as_str()),
                ("vtep_ip", vtep.as_str()),
                ("vtep_mac", mac.as_str()),
                ("pod_cidr_v6", pod6.as_str()),
                ("vtep_ip6", vtep6.as_str()),
                ("vtep_mac_v6", mac6.as_str()),
            ])?)?;
        }
        let mut m = enc.encode_descriptor(
            "overlayd_peer_info",
            "Each peer's overlay addresses (IPv4 labels empty for an IPv6-only peer, IPv6 labels empty for an IPv4-only peer); the value is always 1.",
            None,
            MetricType::Gauge,
        )?;
        for p in &s.peers {
            let [pod, vtep, _] = p.ipv4.as_ref().map(PeerStatusV4::texts).unwrap_or_default();
            let [pod6, vtep6, _] = p.ipv6.as_ref().map(PeerStatusV6::texts).unwrap_or_default();
            ConstGauge::new(1i64).encode(m.encode_family(&[
                ("peer", p.node.as_str()),
                ("pod_cidr", pod.as_str()),
                ("vtep_ip", vtep.as_str()),
                ("pod_cidr_v6", pod6.as_str()),
                ("vtep_ip6", vtep6.as_str()),
            ])?)?;
        }

        gauge(
            &mut enc,
            "overlayd_ready",
            "1 when the own node is known, the first peer set is applied and the device is up.",
            i64::from(s.ready),
        )?;

        let totals = [
            (
                "overlayd_tx_packets",
                "VXLAN packets sent to peers (all peers).",
                s.totals.tx_packets,
            ),
            (
                "overlayd_tx_bytes",
                "Bytes of inner frames sent to peers (all peers).",
                s.totals.tx_bytes,
            ),
            (
                "overlayd_rx_packets",
                "VXLAN packets received and delivered to the device (all peers).",
                s.totals.rx_packets,
            ),
            (
                "overlayd_rx_bytes",
                "Bytes of inner frames delivered to the device (all peers).",
                s.totals.rx_bytes,
            ),
        ];
        for (name, help, v) in totals {
            counter(&mut enc, name, help, v)?;
        }

        type PeerField = fn(&crate::observe::PeerStatus) -> u64;
        let per_peer: [(&str, &str, PeerField); 4] = [
            (
                "overlayd_peer_tx_packets",
                "VXLAN packets sent to one peer.",
                |p| p.tx_packets,
            ),
            (
                "overlayd_peer_tx_bytes",
                "Bytes of inner frames sent to one peer.",
                |p| p.tx_bytes,
            ),
            (
                "overlayd_peer_rx_packets",
                "VXLAN packets received from one peer and delivered.",
                |p| p.rx_packets,
            ),
            (
                "overlayd_peer_rx_bytes",
                "Bytes of inner frames received from one peer and delivered.",
                |p| p.rx_bytes,
            ),
        ];
        for (name, help, field) in per_peer {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &s.peers {
                ConstCounter::new(field(p))
                    .encode(m.encode_family(&[("peer", p.node.as_str())])?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "overlayd_peer_last_rx_timestamp_seconds",
            "Unix time of the last packet received from a peer (0: never).",
            None,
            MetricType::Gauge,
        )?;
        for p in &s.peers {
            #[allow(clippy::cast_possible_wrap)]
            ConstGauge::new(p.last_rx_unix as i64)
                .encode(m.encode_family(&[("peer", p.node.as_str())])?)?;
        }

        let mut m = enc.encode_descriptor(
            "overlayd_drops",
            "Packets dropped, by direction (tx: pod to network, rx: network to pod) and reason.",
            None,
            MetricType::Counter,
        )?;
        for d in &s.drops {
            ConstCounter::new(d.count).encode(m.encode_family(&[
                ("direction", d.direction.as_str()),
                ("reason", d.reason.as_str()),
            ])?)?;
        }

        let mut m = enc.encode_descriptor(
            "overlayd_path_events",
            "ICMP errors the packet path generated for path MTU discovery (and those rate-limited), ECN marks carried into inner packets.",
            None,
            MetricType::Counter,
        )?;
        for e in &s.events {
            ConstCounter::new(e.count).encode(m.encode_family(&[("event", e.event.as_str())])?)?;
        }

        let mut m = enc.encode_descriptor(
            "overlayd_queue_offload_mode",
            "1 for the I/O mode each queue runs (offload: TSO/GSO/GRO; plain: one frame per syscall).",
            None,
            MetricType::Gauge,
        )?;
        for q in &s.queues {
            let queue = q.queue.to_string();
            for mode in [OffloadMode::Offload, OffloadMode::Plain] {
                ConstGauge::new(i64::from(q.mode == mode.as_str())).encode(
                    m.encode_family(&[("queue", queue.as_str()), ("mode", mode.as_str())])?,
                )?;
            }
        }

        let mut m = enc.encode_descriptor(
            "overlayd_worker_restarts",
            "Times a queue's worker thread ended or panicked and was restarted by the supervisor.",
            None,
            MetricType::Counter,
        )?;
        for q in &s.queues {
            ConstCounter::new(q.restarts)
                .encode(m.encode_family(&[("queue", q.queue.to_string().as_str())])?)?;
        }

        gauge(
            &mut enc,
            "overlayd_fdb_entries",
            "Peers in the forwarding table.",
            s.peers.len() as i64,
        )?;
        gauge(
            &mut enc,
            "overlayd_last_sync_timestamp_seconds",
            "Unix time of the last node-source state applied to the FDB and the kernel (0: never).",
            s.last_sync_unix_ms as f64 / 1000.0,
        )?;
        counter(
            &mut enc,
            "overlayd_syncs",
            "Node-source states applied to the FDB and the kernel.",
            s.syncs,
        )?;
        counter(
            &mut enc,
            "overlayd_sync_errors",
            "Rejected node-source inputs and failed kernel reconciles.",
            s.sync_errors,
        )?;
        counter(
            &mut enc,
            "overlayd_kernel_repairs",
            "Routes and neighbours restored after someone else removed or changed them.",
            s.kernel_repairs,
        )?;
        let mut m = enc.encode_descriptor(
            "overlayd_peers_skipped",
            "Nodes currently left out of the peer set, by reason (see overlayd status for which and why).",
            None,
            MetricType::Gauge,
        )?;
        for r in fdb_sync::SkipReason::ALL {
            let n = s.skipped.iter().filter(|k| k.reason == r.as_str()).count();
            #[allow(clippy::cast_possible_wrap)]
            ConstGauge::new(n as i64).encode(m.encode_family(&[("reason", r.as_str())])?)?;
        }
        counter(
            &mut enc,
            "overlayd_kernel_errors",
            "Route/neighbour changes the kernel refused (each attempt; the others are still applied and the refused one is retried with backoff).",
            s.kernel_errors,
        )?;
        gauge(
            &mut enc,
            "overlayd_kernel_changes_failing",
            "Route/neighbour changes the kernel refuses now.",
            s.kernel_failing.len() as i64,
        )?;
        let mut m = enc.encode_descriptor(
            "overlayd_device_repairs",
            "Device repairs: set_up (found down) and rebuild (found deleted).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.device_set_up).encode(m.encode_family(&[("action", "set_up")])?)?;
        ConstCounter::new(s.device_rebuilds).encode(m.encode_family(&[("action", "rebuild")])?)?;
        if let Some(n) = &s.netfilter {
            counter(
                &mut enc,
                "overlayd_netfilter_restores",
                "Masquerade/FORWARD rules found changed by someone else and installed again.",
                n.restores,
            )?;
            let mut m = enc.encode_descriptor(
                "overlayd_netfilter_rules_present",
                "1 when the last check found the masquerade/FORWARD rules as overlayd installed them.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(n.rules_present))
                .encode(m.encode_family(&[("backend", n.backend.as_str())])?)?;
        }
        Ok(())
    }
}

/// A registry whose only collector reads `observed` at scrape time.
#[must_use]
pub fn registry(observed: Arc<Observed>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(OverlaydCollector(observed)));
    r
}

/// The text exposition of `registry`.
#[must_use]
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a label value.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        out = format!("# encoding error: {e}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdb::{Fdb, FdbHandle, Peer, PeerV4};
    use crate::health::Health;
    use crate::path::DropReason;
    use crate::stats::WorkerStats;
    use crate::wire::ethernet::MacAddr;
    use arc_swap::ArcSwap;

    #[test]
    fn exposition_has_every_family_and_every_drop_reason() {
        let obs = Arc::new(Observed::new(Arc::new(Health::default())));
        let fdb: FdbHandle = Arc::new(ArcSwap::from_pointee(Fdb::from_peers(
            &[Peer {
                name: "node2".into(),
                v4: Some(PeerV4 {
                    pod_cidr: "10.244.2.0/24".parse().unwrap(),
                    vtep_ip: "198.18.0.2".parse().unwrap(),
                    vtep_mac: MacAddr([0x0a, 0x58, 10, 244, 2, 0]),
                }),
                v6: None,
            }],
            8472,
        )));
        let w = Arc::new(WorkerStats::default());
        w.set_mode(OffloadMode::Offload);
        w.count_drop(DropReason::RxWrongVni);
        w.tx_many(1, 1000);
        obs.attach(fdb.clone(), vec![w, Arc::new(WorkerStats::default())]);
        fdb.load()
            .lookup(&[0x0a, 0x58, 10, 244, 2, 0])
            .unwrap()
            .counters
            .add_tx(3, 330);
        obs.synced();
        let nodes = [
            fdb_sync::model::node("a", Some("10.244.1.0/24"), "198.18.0.1", &[]),
            fdb_sync::model::node("evil", Some("127.0.0.0/24"), "198.18.0.9", &[]),
        ];
        let state =
            fdb_sync::ClusterState::from_nodes(&nodes, "a", fdb_sync::PeerFilter::AllowUnannotated)
                .unwrap()
                .validated(&fdb_sync::PeerPolicy::new("10.244.0.0/16".parse().unwrap()))
                .unwrap();
        obs.set_skipped(&state);
        let text = encode(&registry(obs));
        for want in [
            "overlayd_build_info{version=\"",
            "overlayd_tx_packets_total 1\n",
            "overlayd_tx_bytes_total 1000\n",
            "overlayd_rx_packets_total 0\n",
            "overlayd_peer_tx_packets_total{peer=\"node2\"} 3\n",
            "overlayd_peer_tx_bytes_total{peer=\"node2\"} 330\n",
            "overlayd_peer_rx_bytes_total{peer=\"node2\"} 0\n",
            "overlayd_drops_total{direction=\"rx\",reason=\"wrong_vni\"} 1\n",
            "overlayd_queue_offload_mode{queue=\"0\",mode=\"offload\"} 1\n",
            "overlayd_queue_offload_mode{queue=\"1\",mode=\"plain\"} 1\n",
            "overlayd_queue_offload_mode{queue=\"1\",mode=\"offload\"} 0\n",
            "overlayd_worker_restarts_total{queue=\"0\"} 0\n",
            "overlayd_worker_restarts_total{queue=\"1\"} 0\n",
            "overlayd_fdb_entries 1\n",
            "overlayd_syncs_total 1\n",
            "overlayd_sync_errors_total 0\n",
            "overlayd_last_sync_timestamp_seconds ",
            "overlayd_device_repairs_total{action=\"rebuild\"} 0\n",
            "overlayd_peers_skipped{reason=\"pod_cidr_reserved\"} 1\n",
            "overlayd_peers_skipped{reason=\"vtep_duplicate\"} 0\n",
            "overlayd_kernel_errors_total 0\n",
            "overlayd_kernel_changes_failing 0\n",
            "# TYPE overlayd_drops_total counter\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        for r in DropReason::ALL {
            let series = format!(
                "overlayd_drops_total{{direction=\"{}\",reason=\"{}\"}} ",
                r.direction(),
                r.as_str()
            );
            assert!(text.contains(&series), "missing {series}");
        }
    }

    #[test]
    fn node_and_peer_info_carry_the_ipv6_side() {
        let obs = Arc::new(Observed::new(Arc::new(Health::default())));
        let fdb: FdbHandle = Arc::new(ArcSwap::from_pointee(Fdb::from_peers(
            &[Peer {
                name: "node2".into(),
                v4: Some(PeerV4 {
                    pod_cidr: "10.244.2.0/24".parse().unwrap(),
                    vtep_ip: "198.18.0.2".parse().unwrap(),
                    vtep_mac: MacAddr([0x0a, 0x58, 10, 244, 2, 0]),
                }),
                v6: Some(crate::fdb::PeerV6 {
                    pod_cidr: "fd00:10:244:2::/64".parse().unwrap(),
                    vtep_ip: "fd00:18::2".parse().unwrap(),
                    vtep_mac: MacAddr([0x0a, 0x58, 10, 244, 2, 0]),
                }),
            }],
            8472,
        )));
        obs.attach(fdb, vec![Arc::new(WorkerStats::default())]);
        obs.set_own(crate::observe::OwnNode {
            node: "node1".into(),
            ipv4: Some(crate::observe::PeerStatusV4 {
                pod_cidr: "10.244.1.0/24".parse().unwrap(),
                vtep_ip: "198.18.0.1".parse().unwrap(),
                vtep_mac: MacAddr([0x0a, 0x58, 10, 244, 1, 0]),
            }),
            device: "ovl.1".into(),
            vni: 1,
            port: 8472,
            mtu: 1450,
            ipv6: Some(crate::observe::PeerStatusV6 {
                pod_cidr: "fd00:10:244:1::/64".parse().unwrap(),
                vtep_ip: "fd00:18::1".parse().unwrap(),
                vtep_mac: MacAddr([0x0a, 0x58, 10, 244, 1, 0]),
            }),
        });
        let text = encode(&registry(obs));
        for want in [
            "overlayd_node_info{node=\"node1\",pod_cidr=\"10.244.1.0/24\",vtep_ip=\"198.18.0.1\",vtep_mac=\"0a:58:0a:f4:01:00\",pod_cidr_v6=\"fd00:10:244:1::/64\",vtep_ip6=\"fd00:18::1\",vtep_mac_v6=\"0a:58:0a:f4:01:00\"} 1\n",
            "overlayd_peer_info{peer=\"node2\",pod_cidr=\"10.244.2.0/24\",vtep_ip=\"198.18.0.2\",pod_cidr_v6=\"fd00:10:244:2::/64\",vtep_ip6=\"fd00:18::2\"} 1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    /// IPv6-only: the IPv4 labels are empty (never 0.0.0.0) for the node and its peers.
    #[test]
    fn node_and_peer_info_of_an_ipv6_only_node() {
        let obs = Arc::new(Observed::new(Arc::new(Health::default())));
        let v6 = |n: u8| crate::fdb::PeerV6 {
            pod_cidr: format!("fd00:10:244:{n}::/64").parse().unwrap(),
            vtep_ip: format!("fd00:18::{n}").parse().unwrap(),
            vtep_mac: MacAddr([2, 0, 0, 0, 6, n]),
        };
        let peer = Peer {
            name: "node2".into(),
            v4: None,
            v6: Some(v6(2)),
        };
        let fdb: FdbHandle = Arc::new(ArcSwap::from_pointee(Fdb::from_peers(&[peer], 8472)));
        obs.attach(fdb, vec![Arc::new(WorkerStats::default())]);
        let own = v6(1);
        obs.set_own(crate::observe::OwnNode {
            node: "node1".into(),
            ipv4: None,
            device: "ovl.1".into(),
            vni: 1,
            port: 8472,
            mtu: 1450,
            ipv6: Some(crate::observe::PeerStatusV6 {
                pod_cidr: own.pod_cidr,
                vtep_ip: own.vtep_ip,
                vtep_mac: own.vtep_mac,
            }),
        });
        let text = encode(&registry(obs));
        for want in [
            "overlayd_node_info{node=\"node1\",pod_cidr=\"\",vtep_ip=\"\",vtep_mac=\"\",pod_cidr_v6=\"fd00:10:244:1::/64\",vtep_ip6=\"fd00:18::1\",vtep_mac_v6=\"02:00:00:00:06:01\"} 1\n",
            "overlayd_peer_info{peer=\"node2\",pod_cidr=\"\",vtep_ip=\"\",pod_cidr_v6=\"fd00:10:244:2::/64\",vtep_ip6=\"fd00:18::2\"} 1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
