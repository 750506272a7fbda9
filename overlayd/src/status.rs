//! `overlayd status`: asks the running daemon for `/status` over its HTTP port and prints it
//! as tables (or as the JSON itself with `--json`). A plain HTTP/1.0 GET over a TCP stream:
//! loopback only by default, no client library, bounded by timeouts.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::observe::{PeerStatusV4, PeerStatusV6, Status};

const TIMEOUT: Duration = Duration::from_secs(3);

/// GETs `path` from the daemon at `addr` and returns the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let hint = || {
        format!(
            "cannot reach overlayd at http://{addr}{path}: is overlayd running on this node (in this network namespace), and with this --http-addr? Pass the daemon's --http-addr"
        )
    };
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(hint)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .with_context(hint)?;
    let mut raw = Vec::new();
    s.take(64 << 20).read_to_end(&mut raw).with_context(hint)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("http://{addr}{path}: malformed HTTP answer ({} bytes): is something other than overlayd listening there?", raw.len());
    };
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        bail!(
            "http://{addr}{path} answered {status_line:?}: {}",
            body.trim()
        );
    }
    Ok(body.to_string())
}

/// Fetches and parses `/status`.
pub fn fetch(addr: SocketAddr) -> Result<(String, Status)> {
    let body = http_get(addr, "/status")?;
    let status: Status = serde_json::from_str(&body).with_context(|| {
        format!("http://{addr}/status is not overlayd status JSON (version mismatch between this binary and the daemon?)")
    })?;
    Ok((body, status))
}

fn ago(now: u64, then: u64) -> String {
    if then == 0 {
        return "never".into();
    }
    let d = now.saturating_sub(then);
    match d {
        0..=119 => format!("{d}s ago"),
        120..=7199 => format!("{}m ago", d / 60),
        _ => format!("{}h ago", d / 3600),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The human view of a status document, as of `now` (Unix seconds).
#[must_use]
pub fn render(s: &Status, now: u64) -> String {
    let mut out = String::new();
    match &s.own {
        Some(o) => {
            let _ = write!(out, "node {}", o.node);
            if let Some(v4) = &o.ipv4 {
                let _ = write!(
                    out,
                    "  podCIDR {}  VTEP {}  VtepMAC {}",
                    v4.pod_cidr, v4.vtep_ip, v4.vtep_mac
                );
            }
            let _ = writeln!(
                out,
                "  device {} (mtu {})  VNI {}  port {}",
                o.device, o.mtu, o.vni, o.port
            );
            if let Some(v6) = &o.ipv6 {
                let _ = writeln!(
                    out,
                    "  IPv6 podCIDR {}  VTEP {}  VtepMAC {}",
                    v6.pod_cidr, v6.vtep_ip, v6.vtep_mac
                );
            }
        }
        None => out.push_str("node: not known yet\n"),
    }
    if s.ready {
        out.push_str("ready\n");
    } else {
        let _ = writeln!(out, "NOT READY: {}", s.not_ready.join("; "));
    }
    let _ = writeln!(
        out,
        "last sync {}  syncs {}  sync errors {}  kernel repairs {}  device set up {}  device rebuilds {}  overlayd {}",
        ago(now, s.last_sync_unix_ms / 1000),
        s.syncs,
        s.sync_errors,
        s.kernel_repairs,
        s.device_set_up,
        s.device_rebuilds,
        s.version
    );
    match &s.netfilter {
        Some(n) => {
            let _ = writeln!(
                out,
                "netfilter {}  masquerade {}  forward accept {}  rules {}  restores {}{}",
                n.backend,
                if n.masquerade { "on" } else { "off" },
                if n.forward { "on" } else { "off" },
                if n.rules_present {
                    "present"
                } else {
                    "MISSING"
                },
                n.restores,
                n.error
                    .as_deref()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            );
        }
        None => out.push_str(
            "netfilter: no rules managed (no --ip-masq, --iptables-forward-rules=false)\n",
        ),
    }
    out.push('\n');
    let mut rows = vec![[
        "PEER",
        "PODCIDR",
        "VTEP IP",
        "VTEPMAC",
        "TX PKTS",
        "TX BYTES",
        "RX PKTS",
        "RX BYTES",
        "LAST SEEN",
    ]
    .map(String::from)
    .to_vec()];
    for p in &s.peers {
        // The first side (IPv4 when the peer has one) on the peer's line with its counters;
        // the IPv6 side of a dual-stack peer on a line of its own (its traffic is counted above).
        let sides = p.ipv4.iter().map(PeerStatusV4::texts);
        let mut sides = sides.chain(p.ipv6.iter().map(PeerStatusV6::texts));
        let [pod, vtep, mac] = sides.next().unwrap_or_default();
        rows.push(vec![
            p.node.clone(),
            pod,
            vtep,
            mac,
            p.tx_packets.to_string(),
            p.tx_bytes.to_string(),
            p.rx_packets.to_string(),
            p.rx_bytes.to_string(),
            ago(now, p.last_rx_unix),
        ]);
        for [pod, vtep, mac] in sides {
            let mut row = vec![String::new(), pod, vtep, mac];
            row.resize(9, String::new());
            rows.push(row);
        }
    }
    table(&mut out, &rows);
    if s.peers.is_empty() {
        out.push_str("(no peers)\n");
    }
    if !s.skipped.is_empty() {
        out.push('\n');
        let mut rows = vec![["SKIPPED NODE", "REASON", "DETAIL"]
            .map(String::from)
            .to_vec()];
        for k in &s.skipped {
            rows.push(vec![k.node.clone(), k.reason.clone(), k.message.clone()]);
        }
        table(&mut out, &rows);
    }
    if !s.kernel_failing.is_empty() {
        let _ = writeln!(
            out,
            "\nkernel refuses (retried with backoff; {} refusals so far):",
            s.kernel_errors
        );
        for f in &s.kernel_failing {
            let _ = writeln!(out, "  {}: {} ({} attempts)", f.change, f.error, f.attempts);
        }
    }
    let _ = writeln!(
        out,
        "\ntotal  tx {} pkts {} bytes  rx {} pkts {} bytes",
        s.totals.tx_packets, s.totals.tx_bytes, s.totals.rx_packets, s.totals.rx_bytes
    );
    out.push('\n');
    let mut rows = vec![vec!["QUEUE".to_string(), "MODE".to_string()]];
    for q in &s.queues {
        rows.push(vec![q.queue.to_string(), q.mode.clone()]);
    }
    table(&mut out, &rows);
    out.push('\n');
    let nonzero: Vec<_> = s.drops.iter().filter(|d| d.count > 0).collect();
    if nonzero.is_empty() {
        out.push_str("drops: none\n");
    } else {
        let mut rows = vec![["DIRECTION", "DROP REASON", "COUNT"]
            .map(String::from)
            .to_vec()];
        for d in nonzero {
            rows.push(vec![
                d.direction.clone(),
                d.reason.clone(),
                d.count.to_string(),
            ]);
        }
        table(&mut out, &rows);
    }
    let events: Vec<String> = s
        .events
        .iter()
        .filter(|e| e.count > 0)
        .map(|e| format!("{} {}", e.event, e.count))
        .collect();
    if !events.is_empty() {
        let _ = writeln!(out, "path events: {}", events.join(", "));
    }
    out
}

/// Runs the `status` subcommand.
pub fn run(addr: SocketAddr, json: bool) -> Result<()> {
    let (body, status) = fetch(addr)?;
    if json {
        print!("{body}");
    } else {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        print!("{}", render(&status, now));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{
        DropCount, FailingChange, OwnNode, PeerStatus, QueueStatus, SkippedPeer, Traffic,
    };

    #[test]
    fn renders_fdb_queues_and_nonzero_drops() {
        let s = Status {
            version: "0.1.0".into(),
            own: Some(OwnNode {
                node: "node1".into(),
                ipv4: Some(crate::observe::PeerStatusV4 {
                    pod_cidr: "10.244.1.0/24".parse().unwrap(),
                    vtep_ip: "198.18.0.1".parse().unwrap(),
                    vtep_mac: "0a:58:0a:f4:01:00".parse().unwrap(),
                }),
                device: "ovl.1".into(),
                vni: 1,
                port: 8472,
                mtu: 1450,
                ipv6: Some(crate::observe::PeerStatusV6 {
                    pod_cidr: "fd00:10:244:1::/64".parse().unwrap(),
                    vtep_ip: "fd00:18::1".parse().unwrap(),
                    vtep_mac: "0a:58:0a:f4:01:00".parse().unwrap(),
                }),
            }),
            ready: true,
            not_ready: vec![],
            syncs: 3,
            sync_errors: 0,
            last_sync_unix_ms: 995_000,
            kernel_repairs: 0,
            device_set_up: 0,
            device_rebuilds: 0,
            kernel_errors: 2,
            kernel_failing: vec![FailingChange {
                change: "add route 10.244.5.0/24 via 10.244.5.0".into(),
                error: "Invalid argument".into(),
                attempts: 2,
            }],
            skipped: vec![SkippedPeer {
                node: "evil".into(),
                reason: "pod_cidr_reserved".into(),
                message: "podCIDR 127.0.0.0/24 overlaps loopback 127.0.0.0/8".into(),
            }],
            totals: Traffic::default(),
            drops: vec![
                DropCount {
                    direction: "rx".into(),
                    reason: "unknown_sender".into(),
                    count: 4,
                },
                DropCount {
                    direction: "tx".into(),
                    reason: "short".into(),
                    count: 0,
                },
            ],
            events: vec![],
            queues: vec![QueueStatus {
                queue: 0,
                mode: "offload".into(),
                restarts: 0,
            }],
            peers: vec![PeerStatus {
                node: "node2".into(),
                ipv4: Some(crate::observe::PeerStatusV4 {
                    pod_cidr: "10.244.2.0/24".parse().unwrap(),
                    vtep_ip: "198.18.0.2".parse().unwrap(),
                    vtep_mac: "0a:58:0a:f4:02:00".parse().unwrap(),
                }),
                tx_packets: 10,
                tx_bytes: 1000,
                rx_packets: 9,
                rx_bytes: 900,
                last_rx_unix: 998,
                ipv6: None,
            }],
            netfilter: Some(crate::netfilter::NetfilterStatus {
                backend: "nftables".into(),
                masquerade: true,
                forward: true,
                rules_present: true,
                restores: 2,
                error: None,
            }),
        };
        let text = render(&s, 1000);
        assert!(text.contains("node node1  podCIDR 10.244.1.0/24"), "{text}");
        assert!(
            text.contains(
                "  IPv6 podCIDR fd00:10:244:1::/64  VTEP fd00:18::1  VtepMAC 0a:58:0a:f4:01:00\n"
            ),
            "{text}"
        );
        assert!(text.contains("last sync 5s ago"), "{text}");
        assert!(
            text.contains(
                "netfilter nftables  masquerade on  forward accept on  rules present  restores 2"
            ),
            "{text}"
        );
        let row = text.lines().find(|l| l.starts_with("node2")).unwrap();
        let cells: Vec<_> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "node2",
                "10.244.2.0/24",
                "198.18.0.2",
                "0a:58:0a:f4:02:00",
                "10",
                "1000",
                "9",
                "900",
                "2s",
                "ago"
            ]
        );
        assert!(text.contains("rx         unknown_sender  4"), "{text}");
        assert!(!text.contains("short"), "zero drops are not listed: {text}");
        assert!(text.contains("0      offload"), "{text}");
        let row = text.lines().find(|l| l.starts_with("evil")).unwrap();
        assert!(
            row.contains("pod_cidr_reserved") && row.contains("127.0.0.0/24"),
            "{text}"
        );
        assert!(
            text.contains("add route 10.244.5.0/24 via 10.244.5.0: Invalid argument (2 attempts)"),
            "{text}"
        );
    }

    #[test]
    fn unreachable_daemon_names_the_address_and_the_flag() {
        // Port 9 on loopback (discard) is essentially never served in test environments.
        let e = http_get("127.0.0.1:9".parse().unwrap(), "/status").unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("http://127.0.0.1:9/status") && msg.contains("--http-addr"),
            "{msg}"
        );
    }
}
