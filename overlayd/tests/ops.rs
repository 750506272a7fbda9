//! Operations under faults and bad input, in network namespaces (root only; see tests/common):
//! /metrics and `overlayd status`, the ingress filter against a spoofed sender, malformed
//! VXLAN while iperf3 runs, self-healing of device/routes/neighbours, peer churn, restart under
//! load, and least privilege.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{http_get as http, metric_value as metric, sh_ok, wait_until, Lab, SCRIPT};

/// Crafts VXLAN datagrams (good and bad cases) with a plain UDP socket.
const SENDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/vxlan_send.py");
const NODE1_VTEP: &str = "198.18.0.1";
const STRANGER_IP: &str = "198.18.0.99";

fn drops(text: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("overlayd_drops_total{{direction=\"rx\",reason=\"{reason}\"}}"),
    )
}

/// `overlayd status --json` run inside node `i`'s namespace (exercises the client too).
fn status(lab: &Lab, i: usize) -> serde_json::Value {
    let out = lab.exec(&lab.node(i), &[common::OVERLAYD, "status", "--json"]);
    assert!(
        out.status.success(),
        "overlayd status --json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn send(lab: &Lab, ns: &str, case: &str, count: u32) {
    let out = lab.exec(
        ns,
        &["python3", SENDER, case, &count.to_string(), NODE1_VTEP],
    );
    assert!(
        out.status.success(),
        "{case}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Adds a host at 198.18.0.99 on the underlay that is not in the NodeList.
fn add_stranger(lab: &Lab) -> String {
    sh_ok(&["bash", SCRIPT, "stranger", &lab.prefix, STRANGER_IP]);
    format!("{}x", lab.prefix)
}

/// Counts UDP datagrams arriving at pod 1-1 port 9999 until `secs` pass; `finish` returns it.
struct PodListener(Child);

impl PodListener {
    fn start(lab: &Lab, secs: f64) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.pod(1, 1), "python3", "-c"])
            .arg(
                "import socket,sys,time\n\
                 s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',9999))\n\
                 end=time.time()+float(sys.argv[1]);n=0\n\
                 while time.time()<end:\n\
                 \x20 s.settimeout(max(0.01,end-time.time()))\n\
                 \x20 try:\n\
                 \x20\x20 s.recv(70000);n+=1\n\
                 \x20 except OSError: pass\n\
                 print(n)",
            )
            .arg(secs.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 listener");
        std::thread::sleep(Duration::from_millis(300));
        PodListener(child)
    }

    fn finish(self) -> usize {
        let out = self.0.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

/// `RcvbufErrors` of UDP in node `i`'s namespace: datagrams the kernel dropped before
/// overlayd could read (and count) them.
fn udp_rcvbuf_errors(lab: &Lab, i: usize) -> u64 {
    let snmp = lab.exec(&lab.node(i), &["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&snmp.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let col = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .unwrap();
    values.split_whitespace().nth(col).unwrap().parse().unwrap()
}

fn proc_caps(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        for l in status.lines().filter(|l| l.starts_with("Cap")) {
            let (k, v) = l.split_once(':').unwrap();
            out.push((k.to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Every thread of overlayd holds CAP_NET_ADMIN (bit 12) and CAP_NET_RAW (bit 13), nothing
/// else (overlayd::privs::KEPT).
fn assert_only_kept_caps(pid: u32) {
    let caps = proc_caps(pid);
    assert!(!caps.is_empty());
    for (k, v) in caps {
        let want = match k.as_str() {
            "CapEff" | "CapPrm" | "CapBnd" => "0000000000003000",
            "CapInh" | "CapAmb" => "0000000000000000",
            _ => continue,
        };
        assert_eq!(v, want, "{k} of overlayd (pid {pid})");
    }
}

#[test]
fn metrics_and_status_show_peers_traffic_and_drops() {
    let Some(mut lab) = Lab::new("metrics_and_status_show_peers_traffic_and_drops", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let p1 = lab.pod(1, 1);
    assert!(lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(3)));
    lab.exec(&p1, &["ping", "-c", "5", "-i", "0.05", &Lab::pod_ip(2, 1)]);

    let m = http(&lab, 1, "/metrics");
    assert!(m.contains("overlayd_build_info{version=\""), "{m}");
    assert!(metric(&m, "overlayd_peer_tx_packets_total{peer=\"node2\"}") >= 6.0);
    assert!(metric(&m, "overlayd_peer_rx_packets_total{peer=\"node2\"}") >= 6.0);
    assert!(metric(&m, "overlayd_peer_rx_bytes_total{peer=\"node2\"}") >= 6.0 * 98.0);
    assert!(metric(&m, "overlayd_tx_packets_total") >= 6.0);
    assert!(metric(&m, "overlayd_rx_bytes_total") >= 6.0 * 98.0);
    assert!(
        metric(
            &m,
            "overlayd_peer_last_rx_timestamp_seconds{peer=\"node2\"}"
        ) > 1e9
    );
    assert_eq!(metric(&m, "overlayd_fdb_entries"), 1.0);
    assert_eq!(metric(&m, "overlayd_ready"), 1.0);
    assert!(metric(&m, "overlayd_syncs_total") >= 1.0);
    assert_eq!(metric(&m, "overlayd_sync_errors_total"), 0.0);
    assert!(metric(&m, "overlayd_last_sync_timestamp_seconds") > 1e9);
    for q in 0..2 {
        let on: f64 = ["offload", "plain"]
            .iter()
            .map(|mode| {
                metric(
                    &m,
                    &format!("overlayd_queue_offload_mode{{queue=\"{q}\",mode=\"{mode}\"}}"),
                )
            })
            .sum();
        assert_eq!(on, 1.0, "queue {q} runs exactly one mode");
    }
    // Every drop reason is exported, zero included.
    let drop_series = m
        .lines()
        .filter(|l| l.starts_with("overlayd_drops_total{"))
        .count();
    assert!(drop_series >= 13, "{m}");
    assert_eq!(drops(&m, "unknown_sender"), 0.0);

    // The table: one row per peer with its counters.
    let out = lab.exec(&lab.node(1), &[common::OVERLAYD, "status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("node2 "))
        .unwrap_or_else(|| panic!("no node2 row:\n{table}"));
    let cells: Vec<_> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..4],
        ["node2", "10.244.2.0/24", "198.18.0.2", "0a:58:0a:f4:02:00"],
        "{table}"
    );
    assert!(cells[4].parse::<u64>().unwrap() >= 6, "{table}");
    assert!(
        table.contains("QUEUE") && table.contains("ready"),
        "{table}"
    );

    let s = status(&lab, 1);
    assert_eq!(s["own"]["node"], "node1");
    assert_eq!(s["own"]["vtepMAC"], "0a:58:0a:f4:01:00");
    assert_eq!(s["peers"][0]["node"], "node2");
    assert!(s["peers"][0]["txPackets"].as_u64().unwrap() >= 6);
    assert_eq!(s["queues"].as_array().unwrap().len(), 2);

    // Loopback only by default, and a wrong address gives an actionable error.
    let ss = sh_ok(&["ip", "netns", "exec", &lab.node(1), "ss", "-ltnH"]);
    assert!(ss.contains("127.0.0.1:9102"), "{ss}");
    let out = lab.exec(
        &lab.node(1),
        &[common::OVERLAYD, "status", "--http-addr", "127.0.0.1:9"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("127.0.0.1:9") && err.contains("--http-addr"),
        "{err}"
    );
}

#[test]
fn least_privilege_only_net_admin_and_net_raw_in_every_thread() {
    let Some(mut lab) = Lab::new(
        "least_privilege_only_net_admin_and_net_raw_in_every_thread",
        2,
        1,
    ) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    assert!(lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(3)));
    assert_only_kept_caps(lab.pid(1).unwrap());
    assert!(
        lab.log(1).contains("kept=CAP_NET_ADMIN,CAP_NET_RAW"),
        "{}",
        lab.log(1)
    );
}

/// A host that is not a peer sends well-formed VXLAN for our pod: dropped and counted under
/// unknown_sender; the same datagrams from a peer's VTEP arrive. `--allow-any-sender` lets
/// the stranger through.
#[test]
fn ingress_filter_drops_spoofed_sender() {
    let Some(mut lab) = Lab::new("ingress_filter_drops_spoofed_sender", 2, 1) else {
        return;
    };
    let stranger = add_stranger(&lab);
    lab.start(1);
    lab.start(2);
    let before = drops(&http(&lab, 1, "/metrics"), "unknown_sender");

    let l = PodListener::start(&lab, 1.5);
    send(&lab, &stranger, "good", 20);
    assert_eq!(l.finish(), 0, "nothing from a stranger may reach the pod");
    let m = http(&lab, 1, "/metrics");
    assert_eq!(drops(&m, "unknown_sender") - before, 20.0, "{m}");

    let l = PodListener::start(&lab, 1.5);
    send(&lab, &lab.node(2), "good", 5);
    assert_eq!(l.finish(), 5, "the same datagrams from a peer VTEP arrive");

    assert!(lab.stop(1));
    lab.start_with(1, &["--allow-any-sender"]);
    let l = PodListener::start(&lab, 1.5);
    send(&lab, &stranger, "good", 3);
    assert_eq!(l.finish(), 3, "--allow-any-sender accepts any sender");
}

/// While iperf3 runs through node 1, a corpus of bad datagrams arrives at its VXLAN port:
/// overlayd stays up, iperf3 keeps moving data, and every bad datagram is counted under its
/// reason. Reserved VXLAN bits set are ignored (RFC 7348 section 5; see path::decap), so those
/// datagrams reach the pod.
#[test]
fn malformed_traffic_under_iperf3_is_counted_by_reason() {
    let Some(mut lab) = Lab::new("malformed_traffic_under_iperf3_is_counted_by_reason", 2, 1)
    else {
        return;
    };
    let stranger = add_stranger(&lab);
    lab.start(1);
    lab.start(2);
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    assert!(lab.ping_within(&p2, &Lab::pod_ip(1, 1), Duration::from_secs(3)));
    let iperf = lab.iperf_start(&p2, &p1, &Lab::pod_ip(1, 1), 6, &[]);
    std::thread::sleep(Duration::from_millis(1500));

    let before = http(&lab, 1, "/metrics");
    let buf_errors_before = udp_rcvbuf_errors(&lab, 1);
    let n: u32 = 50;
    let node2 = lab.node(2);
    // (case, sender namespace, reason it must be counted under)
    let cases = [
        ("short", node2.as_str(), "short"),
        ("truncated_inner", node2.as_str(), "short"),
        ("no_i_flag", node2.as_str(), "no_i_flag"),
        ("wrong_vni", node2.as_str(), "wrong_vni"),
        ("inner_vlan", node2.as_str(), "inner_vlan"),
        ("not_for_us", node2.as_str(), "not_for_us"),
        ("good", stranger.as_str(), "unknown_sender"),
    ];
    let l = PodListener::start(&lab, 4.0);
    send(&lab, &node2, "reserved_bits", n);
    for (case, ns, _) in cases {
        send(&lab, ns, case, n);
    }
    // Far above the inner MTU in one datagram: what a GRO-ing kernel-vxlan peer sends, so it is
    // decapsulated (not dropped) and the kernel forwards or answers it like Linux vxlan does.
    send(&lab, &node2, "oversized", 5);
    let reserved_delivered = l.finish();
    std::thread::sleep(Duration::from_millis(200));
    let after = http(&lab, 1, "/metrics");
    let lost = udp_rcvbuf_errors(&lab, 1) - buf_errors_before;

    let v = Lab::iperf_json(iperf);
    assert!(lab.is_running(1), "overlayd died:\n{}", lab.log(1));
    assert_eq!(http(&lab, 1, "/healthz"), "ok\n");
    let intervals = v["intervals"].as_array().expect("iperf3 intervals");
    for (k, iv) in intervals.iter().enumerate() {
        let bytes = iv["sum"]["bytes"].as_f64().unwrap_or(0.0);
        assert!(bytes > 0.0, "iperf3 interval {k} moved nothing: {iv}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    assert!(bps > 1e6, "iperf3 {bps} bit/s");

    // Exact counts, unless the kernel itself dropped datagrams before overlayd read them
    // (UDP receive buffer full under load), which /proc/net/snmp tells.
    #[allow(clippy::cast_precision_loss)]
    let slack = lost as f64;
    let mut want: Vec<(&str, f64)> = Vec::new();
    for (_, _, reason) in cases {
        match want.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, c)) => *c += f64::from(n),
            None => want.push((reason, f64::from(n))),
        }
    }
    for (reason, count) in &want {
        let got = drops(&after, reason) - drops(&before, reason);
        assert!(
            got <= *count && got >= count - slack,
            "rx drops {reason}: {got}, want {count} (kernel dropped {lost})\n{after}"
        );
    }
    assert!(
        f64::from(u32::try_from(reserved_delivered).unwrap()) >= f64::from(n) - slack,
        "reserved-bit datagrams delivered to the pod: {reserved_delivered} of {n}"
    );
    eprintln!(
        "iperf3 {:.2} Gbit/s during the corpus; reserved-bit datagrams delivered {reserved_delivered}/{n}; kernel rcvbuf drops {lost}",
        bps / 1e9
    );
}

fn link_state(lab: &Lab) -> Option<String> {
    let out = lab.exec(&lab.node(1), &["ip", "-o", "link", "show", "ovl.1"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn has_peer2_state(lab: &Lab) -> bool {
    lab.routes(1)
        .contains("10.244.2.0/24 via 10.244.2.0 dev ovl.1")
        && lab
            .neighbours(1, "ovl.1")
            .contains("10.244.2.0 lladdr 0a:58:0a:f4:02:00 PERMANENT")
}

/// Restores what someone else removed and returns how long it took.
fn time_restore(f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), f),
        "not restored within 2 s"
    );
    t.elapsed()
}

#[test]
fn removed_route_and_neighbour_are_restored_within_2s() {
    let Some(mut lab) = Lab::new("removed_route_and_neighbour_are_restored_within_2s", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    assert!(has_peer2_state(&lab));
    let n1 = lab.node(1);
    sh_ok(&["ip", "-n", &n1, "route", "del", "10.244.2.0/24"]);
    let route = time_restore(|| has_peer2_state(&lab));
    sh_ok(&[
        "ip",
        "-n",
        &n1,
        "neigh",
        "del",
        "10.244.2.0",
        "dev",
        "ovl.1",
    ]);
    let neigh = time_restore(|| has_peer2_state(&lab));
    // Someone rewrites our neighbour with a wrong MAC: the backstop (or the notification) fixes it.
    sh_ok(&[
        "ip",
        "-n",
        &n1,
        "neigh",
        "replace",
        "10.244.2.0",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "ovl.1",
        "nud",
        "permanent",
    ]);
    let mac = time_restore(|| has_peer2_state(&lab));
    eprintln!("restored: route {route:?}, neighbour {neigh:?}, neighbour MAC {mac:?}");
    assert!(lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(2)));
    let m = http(&lab, 1, "/metrics");
    assert!(metric(&m, "overlayd_kernel_repairs_total") >= 3.0, "{m}");
}

#[test]
fn device_set_down_is_set_up_within_2s() {
    let Some(mut lab) = Lab::new("device_set_down_is_set_up_within_2s", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    sh_ok(&["ip", "-n", &lab.node(1), "link", "set", "ovl.1", "down"]);
    // Setting a link down makes the kernel drop its routes without telling anyone.
    let took = time_restore(|| {
        link_state(&lab).is_some_and(|l| l.contains(",UP")) && has_peer2_state(&lab)
    });
    eprintln!("device up with routes again after {took:?}");
    assert!(lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(2)));
    let m = http(&lab, 1, "/metrics");
    assert_eq!(
        metric(&m, "overlayd_device_repairs_total{action=\"set_up\"}"),
        1.0
    );
}

/// The device is deleted under the daemon: a new dataplane (device, sockets, workers) within
/// 2 s, same VtepMAC, routes back, traffic flows, peers' counters continue, all done with only
/// CAP_NET_ADMIN.
#[test]
fn deleted_device_is_rebuilt_within_2s() {
    let Some(mut lab) = Lab::new("deleted_device_is_rebuilt_within_2s", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let p1 = lab.pod(1, 1);
    assert!(lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(3)));
    let tx_before = status(&lab, 1)["peers"][0]["txPackets"].as_u64().unwrap();
    let pid = lab.pid(1).unwrap();
    sh_ok(&["ip", "-n", &lab.node(1), "link", "del", "ovl.1"]);
    let took = time_restore(|| {
        link_state(&lab).is_some_and(|l| l.contains(",UP") && l.contains("0a:58:0a:f4:01:00"))
            && has_peer2_state(&lab)
    });
    eprintln!("device rebuilt after {took:?}");
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(2)),
        "{}",
        lab.log(1)
    );
    assert!(lab.is_running(1) && lab.pid(1) == Some(pid));
    let s = status(&lab, 1);
    assert_eq!(s["deviceRebuilds"], 1);
    assert!(s["peers"][0]["txPackets"].as_u64().unwrap() > tx_before);
    assert_eq!(s["queues"].as_array().unwrap().len(), 2);
    assert_only_kept_caps(pid);
    let addr = sh_ok(&["ip", "-n", &lab.node(1), "addr", "show", "ovl.1"]);
    assert!(
        addr.contains("inet 10.244.1.0/32") && addr.contains("mtu 1450"),
        "{addr}"
    );
}

/// A NodeList with node1, node2 and the fake peers in `fakes` (unreachable VTEPs; their routes
/// and neighbours are what is checked).
fn nodelist(fakes: &[u32]) -> String {
    let mut s = String::from("apiVersion: v1\nkind: NodeList\nitems:\n");
    let mut node = |name: &str, cidr: String, ip: String| {
        s.push_str(&format!(
            "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: {name}\n  spec:\n    podCIDR: {cidr}\n  status:\n    addresses:\n    - type: InternalIP\n      address: {ip}\n"
        ));
    };
    node("node1", "10.244.1.0/24".into(), "198.18.0.1".into());
    node("node2", "10.244.2.0/24".into(), "198.18.0.2".into());
    for &k in fakes {
        node(
            &format!("fake{k:03}"),
            format!("10.244.{}.0/24", 100 + k),
            format!("198.18.1.{k}"),
        );
    }
    s
}

/// 1000 add/delete cycles of peers through the nodes file, written as fast as the renames go:
/// afterwards the kernel's routes and neighbours and the FDB equal the desired set exactly.
#[test]
fn churn_1000_cycles_ends_with_exact_state() {
    let Some(mut lab) = Lab::new("churn_1000_cycles_ends_with_exact_state", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = Instant::now();
    for cycle in 0..1000 {
        // Add: a random subset of 40 fake peers; delete: drop about half of them again.
        let added: Vec<u32> = (1..=40).filter(|_| next() % 2 == 0).collect();
        lab.write_nodes_file(&nodelist(&added));
        let kept: Vec<u32> = added.iter().copied().filter(|_| next() % 2 == 0).collect();
        lab.write_nodes_file(&nodelist(&kept));
        if cycle % 100 == 0 {
            // Let the watcher see some of the states in between.
            std::thread::sleep(Duration::from_millis(300));
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let fakes = [3, 7, 11, 19, 23, 31, 40];
    lab.write_nodes_file(&nodelist(&fakes));
    let written = started.elapsed();

    let mut want_routes: Vec<String> = vec!["10.244.2.0/24 via 10.244.2.0 dev ovl.1 onlink".into()];
    let mut want_neigh: Vec<String> = vec!["10.244.2.0 lladdr 0a:58:0a:f4:02:00 PERMANENT".into()];
    let mut want_peers: Vec<String> = vec!["node2".into()];
    for k in fakes {
        let o = 100 + k;
        want_routes.push(format!("10.244.{o}.0/24 via 10.244.{o}.0 dev ovl.1 onlink"));
        want_neigh.push(format!(
            "10.244.{o}.0 lladdr 0a:58:0a:f4:{o:02x}:00 PERMANENT"
        ));
        want_peers.push(format!("fake{k:03}"));
    }
    want_routes.sort();
    want_neigh.sort();
    let lines = |s: String| {
        let mut v: Vec<String> = s.lines().map(|l| l.trim().to_string()).collect();
        v.sort();
        v
    };
    let settle = Instant::now();
    let converged = wait_until(Duration::from_secs(5), || {
        lines(lab.routes(1)) == want_routes && lines(lab.neighbours(1, "ovl.1")) == want_neigh
    });
    assert!(
        converged,
        "kernel state differs from the desired set:\nroutes:\n{}\nneighbours:\n{}\n{}",
        lab.routes(1),
        lab.neighbours(1, "ovl.1"),
        lab.log(1)
    );
    let s = status(&lab, 1);
    let peers: Vec<String> = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap().to_string())
        .collect();
    want_peers.sort();
    assert_eq!(peers, want_peers, "FDB");
    assert_eq!(s["syncErrors"], 0);
    assert!(lab.is_running(1));
    assert!(lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(2)));
    eprintln!(
        "2000 writes in {written:?}, converged {:?} after the last; {} syncs applied",
        settle.elapsed(),
        s["syncs"]
    );
}

/// SIGTERM under iperf3 load closes overlayd's UDP and HTTP ports and leaves the device,
/// routes and neighbours for the next overlayd; started again, it adopts them, traffic is back
/// within 1 s with the same VtepMAC and the iperf3 stream survives.
#[test]
fn restart_under_iperf3_load_recovers_within_1s() {
    let Some(mut lab) = Lab::new("restart_under_iperf3_load_recovers_within_1s", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    assert!(lab.ping_within(&p2, &Lab::pod_ip(1, 1), Duration::from_secs(3)));
    let iperf = lab.iperf_start(&p2, &p1, &Lab::pod_ip(1, 1), 10, &[]);
    std::thread::sleep(Duration::from_secs(2));

    assert!(lab.stop(1), "exit 0 on SIGTERM:\n{}", lab.log(1));
    let n1 = lab.node(1);
    assert!(link_state(&lab).is_some(), "device kept");
    assert!(has_peer2_state(&lab), "routes and neighbours kept");
    let udp = sh_ok(&[
        "ip", "netns", "exec", &n1, "ss", "-ulnH", "sport", "=", ":8472",
    ]);
    assert!(udp.trim().is_empty(), "UDP 8472 still bound: {udp}");
    let tcp = sh_ok(&[
        "ip", "netns", "exec", &n1, "ss", "-ltnH", "sport", "=", ":9102",
    ]);
    assert!(tcp.trim().is_empty(), "HTTP port still bound: {tcp}");
    assert!(lab.log(1).contains("left in place for the next overlayd"));

    lab.start(1);
    let ready = Instant::now();
    let back = wait_until(Duration::from_secs(1), || {
        lab.exec(&p2, &["ping", "-c", "1", "-W", "0.2", &Lab::pod_ip(1, 1)])
            .status
            .success()
    });
    let took = ready.elapsed();
    assert!(
        back,
        "no traffic within 1 s of the restart:\n{}",
        lab.log(1)
    );
    let link = link_state(&lab).unwrap();
    assert!(link.contains("0a:58:0a:f4:01:00"), "same VtepMAC: {link}");

    let v = Lab::iperf_json(iperf);
    let intervals = v["intervals"].as_array().expect("iperf3 intervals");
    let last = intervals.last().unwrap()["sum"]["bytes"].as_f64().unwrap();
    assert!(last > 0.0, "iperf3 stream did not resume: {v}");
    eprintln!("traffic back {took:?} after ready; last iperf3 interval {last} bytes");
}
