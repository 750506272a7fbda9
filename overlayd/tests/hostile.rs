//! Hostile and unlucky input, in network namespaces (root only; see tests/common): bad peers
//! through the nodes file and the Kubernetes source are skipped with their reasons and never
//! reach the kernel; an own node with a bad podCIDR waits instead of exiting; a known VTEP
//! cannot speak for another node's pods; a route the kernel refuses does not stop the others;
//! a nodes file written in place is never applied half-written.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{http_get, metric_value, sh_ok, status_json, wait_until, Lab};
use fdb_sync::model::{ANN_BACKEND_TYPE, ANN_PUBLIC_IP};

const SENDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/vxlan_send.py");

/// A NodeList with one item per `(name, podCIDR, InternalIP)`.
fn nodelist(items: &[(&str, &str, &str)]) -> String {
    let mut s = String::from("apiVersion: v1\nkind: NodeList\nitems:\n");
    for (name, cidr, ip) in items {
        s.push_str(&node_item(name, cidr, ip));
    }
    s
}

fn node_item(name: &str, cidr: &str, ip: &str) -> String {
    format!(
        "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: {name}\n  spec:\n    podCIDR: {cidr}\n  status:\n    addresses:\n    - type: InternalIP\n      address: {ip}\n"
    )
}

/// The lab's two real nodes.
const GOOD: [(&str, &str, &str); 2] = [
    ("node1", "10.244.1.0/24", "198.18.0.1"),
    ("node2", "10.244.2.0/24", "198.18.0.2"),
];

/// Every kind of hostile peer the issue names, with the reason node1 must give.
const HOSTILE: [(&str, &str, &str, &str); 9] = [
    (
        "h-loop-cidr",
        "127.0.0.0/24",
        "198.18.0.50",
        "pod_cidr_reserved",
    ),
    (
        "h-mcast-cidr",
        "224.1.0.0/24",
        "198.18.0.51",
        "pod_cidr_reserved",
    ),
    (
        "h-outside",
        "10.99.0.0/24",
        "198.18.0.52",
        "pod_cidr_outside_network",
    ),
    // Covers the underlay: its route would pull VXLAN to peers into the TAP.
    (
        "h-underlay",
        "198.18.0.0/25",
        "198.18.0.53",
        "pod_cidr_outside_network",
    ),
    (
        "h-mcast-vtep",
        "10.244.60.0/24",
        "224.0.0.5",
        "vtep_not_unicast",
    ),
    (
        "h-loop-vtep",
        "10.244.61.0/24",
        "127.0.0.1",
        "vtep_loopback",
    ),
    // Named to sort after node1: a conflict goes to the earlier name (see README), and on
    // node2 this one duplicates node1's VTEP.
    (
        "z-own-vtep",
        "10.244.62.0/24",
        "198.18.0.1",
        "vtep_own_address",
    ),
    (
        "h-in-net-vtep",
        "10.244.64.0/24",
        "10.244.200.1",
        "vtep_in_pod_network",
    ),
    // Sorts after node2 and claims its VTEP address.
    (
        "z-dup-vtep",
        "10.244.63.0/24",
        "198.18.0.2",
        "vtep_duplicate",
    ),
];

/// Node 1 skips every hostile peer with its reason (metric, status, log once), programs none
/// of them, and still reaches node 2; VXLAN to node 2 still leaves by the underlay.
fn assert_hostile_skipped(lab: &Lab) {
    let routes = lab.routes(1);
    assert!(
        routes.contains("10.244.2.0/24 via 10.244.2.0 dev ovl.1"),
        "{routes}"
    );
    for (name, cidr, _, _) in HOSTILE {
        assert!(
            !routes.contains(cidr),
            "{name}'s {cidr} reached the kernel:\n{routes}"
        );
    }
    let get = sh_ok(&["ip", "-n", &lab.node(1), "route", "get", "198.18.0.2"]);
    assert!(
        get.contains("dev eth0"),
        "VXLAN to node2 must use the underlay: {get}"
    );

    let m = http_get(lab, 1, "/metrics");
    let mut want: std::collections::BTreeMap<&str, f64> = Default::default();
    for (_, _, _, reason) in HOSTILE {
        *want.entry(reason).or_default() += 1.0;
    }
    for (reason, n) in &want {
        let series = format!("overlayd_peers_skipped{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&m, &series), *n, "{series}\n{m}");
    }
    assert_eq!(
        metric_value(&m, "overlayd_peers_skipped{reason=\"vtep_mac_duplicate\"}"),
        0.0
    );

    let s = status_json(lab, 1);
    let skipped = s["skipped"].as_array().expect("skipped in /status");
    for (name, cidr, vtep, reason) in HOSTILE {
        let k = skipped
            .iter()
            .find(|k| k["node"] == name)
            .unwrap_or_else(|| panic!("{name} not listed as skipped: {s}"));
        assert_eq!(k["reason"], reason, "{k}");
        let msg = k["message"].as_str().unwrap();
        assert!(msg.contains(cidr) || msg.contains(vtep), "{k}");
    }
    let peers: Vec<_> = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(peers, ["node2"]);
    let text = lab.exec(&lab.node(1), &[common::OVERLAYD, "status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("SKIPPED NODE")
            && text
                .lines()
                .any(|l| l.starts_with("h-loop-cidr ") && l.contains(" pod_cidr_reserved ")),
        "{text}"
    );
}

#[test]
fn hostile_peers_in_the_nodes_file_are_skipped_and_never_reach_the_kernel() {
    let Some(mut lab) = Lab::new_shared(
        "hostile_peers_in_the_nodes_file_are_skipped_and_never_reach_the_kernel",
        2,
        1,
        &[],
    ) else {
        return;
    };
    let mut items: Vec<(&str, &str, &str)> = GOOD.to_vec();
    items.extend(HOSTILE.iter().map(|(n, c, i, _)| (*n, *c, *i)));
    lab.write_nodes_file(&nodelist(&items));
    // Before the fix, a peer podCIDR of 127.0.0.0/24 made overlayd exit here.
    lab.start(1);
    lab.start(2);
    assert!(
        lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(10)),
        "{}",
        lab.log(1)
    );
    assert_hostile_skipped(&lab);

    // The same skips after another change are not logged again.
    items.push(("node3", "10.244.3.0/24", "198.18.0.3"));
    lab.write_nodes_file(&nodelist(&items));
    assert!(wait_until(Duration::from_secs(5), || lab
        .routes(1)
        .contains("10.244.3.0/24")));
    let log = lab.log(1);
    for (name, ..) in HOSTILE {
        let n = log
            .lines()
            .filter(|l| l.contains("node skipped") && l.contains(&format!("node={name} ")))
            .count();
        assert_eq!(n, 1, "{name} logged {n} times:\n{log}");
    }
    assert!(lab.is_running(1) && lab.stop(1) && lab.stop(2));
}

#[test]
fn hostile_peers_from_the_kubernetes_source_are_skipped_and_never_reach_the_kernel() {
    let Some(mut lab) = Lab::new_shared(
        "hostile_peers_from_the_kubernetes_source_are_skipped_and_never_reach_the_kernel",
        2,
        1,
        &[],
    ) else {
        return;
    };
    let (server, kc) = common::fake_api_server_in_switch(&lab);
    for (name, cidr, ip) in GOOD {
        server.apply(&fdb_sync::model::node(name, Some(cidr), ip, &[]));
    }
    for (name, cidr, ip, _) in HOSTILE {
        // Annotated as a Flannel vxlan node would be, so only the validation can stop it.
        server.apply(&fdb_sync::model::node(
            name,
            Some(cidr),
            ip,
            &[(ANN_BACKEND_TYPE, "vxlan"), (ANN_PUBLIC_IP, ip)],
        ));
    }
    lab.start_kube(1, &kc, &[]);
    lab.start_kube(2, &kc, &[]);
    assert!(
        lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(15)),
        "{}\n{}",
        lab.log(1),
        lab.log(2)
    );
    assert_hostile_skipped(&lab);
    assert!(lab.stop(1) && lab.stop(2));
}

/// This node's own podCIDR outside the Network: overlayd stays up, not ready, says why once,
/// and starts serving as soon as the Node is fixed (no crash loop).
#[test]
fn own_pod_cidr_outside_the_network_waits_and_recovers() {
    let Some(mut lab) = Lab::new_shared(
        "own_pod_cidr_outside_the_network_waits_and_recovers",
        2,
        1,
        &[],
    ) else {
        return;
    };
    lab.write_nodes_file(&nodelist(&[
        ("node1", "10.99.1.0/24", "198.18.0.1"),
        GOOD[1],
    ]));
    let nodes_file = lab.nodes_file();
    lab.spawn(1, &["--nodes-file".as_ref(), nodes_file.as_os_str()], &[]);
    assert!(
        wait_until(Duration::from_secs(10), || lab.log(1).contains(
            "podCIDR 10.99.1.0/24 is not inside the cluster Network 10.244.0.0/16"
        )),
        "{}",
        lab.log(1)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(lab.is_running(1), "exited:\n{}", lab.log(1));
    assert_eq!(lab.http_status(1, "/readyz"), 503);
    assert_eq!(
        lab.log(1)
            .matches("is not inside the cluster Network")
            .count(),
        1,
        "{}",
        lab.log(1)
    );
    lab.write_nodes_file(&nodelist(&GOOD));
    lab.wait_ready(1);
    lab.start(2);
    assert!(lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(10)));
    assert!(lab.stop(1) && lab.stop(2));
}

fn send(lab: &Lab, ns: &str, case: &str, count: u32) {
    let out = lab.exec(
        ns,
        &["python3", SENDER, case, &count.to_string(), "198.18.0.1"],
    );
    assert!(
        out.status.success(),
        "{case}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Counts UDP datagrams for pod 1-1 port 9999 arriving within `secs`.
fn count_at_pod(lab: &Lab, secs: f64, during: impl FnOnce()) -> usize {
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.pod(1, 1), "python3", "-c"])
        .arg(
            "import socket,sys,time\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',9999))\n\
             print('up',flush=True)\n\
             end=time.time()+float(sys.argv[1]);n=0\n\
             while time.time()<end:\n\
             \x20 s.settimeout(max(0.01,end-time.time()))\n\
             \x20 try:\n\
             \x20\x20 s.recv(70000);n+=1\n\
             \x20 except OSError: pass\n\
             print(n)",
        )
        .arg(secs.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 listener");
    std::thread::sleep(Duration::from_millis(400));
    during();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().last().unwrap().trim().parse().unwrap()
}

fn rx_drops(lab: &Lab, reason: &str) -> f64 {
    metric_value(
        &http_get(lab, 1, "/metrics"),
        &format!("overlayd_drops_total{{direction=\"rx\",reason=\"{reason}\"}}"),
    )
}

/// Node 2 (a known VTEP) sends real VXLAN datagrams from its own address whose inner source is
/// node 3's pod: dropped and counted as foreign_source. Its own pods and its flannel.1/TAP
/// address pass; `--allow-foreign-inner-source` lets the spoof through.
#[test]
fn known_vtep_cannot_speak_for_another_nodes_pods() {
    let Some(mut lab) = Lab::new("known_vtep_cannot_speak_for_another_nodes_pods", 3, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let n2 = lab.node(2);
    let before = rx_drops(&lab, "foreign_source");
    let got = count_at_pod(&lab, 1.5, || send(&lab, &n2, "foreign_source", 20));
    assert_eq!(got, 0, "a spoofed inner source reached the pod");
    assert_eq!(rx_drops(&lab, "foreign_source") - before, 20.0);

    let got = count_at_pod(&lab, 1.5, || {
        send(&lab, &n2, "good", 5);
        send(&lab, &n2, "vtep_own_source", 5);
    });
    assert_eq!(got, 10, "node 2's pods and its TAP address must pass");
    assert_eq!(rx_drops(&lab, "foreign_source") - before, 20.0);
    // Real pod traffic both ways, including a kernel-vxlan Flannel node (node 3).
    lab.make_kernel_node(3);
    assert!(lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(10)));
    assert!(lab.ping_within(&lab.pod(3, 1), &Lab::pod_ip(1, 1), Duration::from_secs(10)));
    // Node 3's host (flannel.1 source address 10.244.3.0) reaches node 1's pod.
    assert!(lab.ping_within(&lab.node(3), &Lab::pod_ip(1, 1), Duration::from_secs(10)));
    assert_eq!(
        rx_drops(&lab, "foreign_source") - before,
        20.0,
        "{}",
        lab.log(1)
    );

    assert!(lab.stop(1));
    lab.start_with(1, &["--allow-foreign-inner-source"]);
    let got = count_at_pod(&lab, 1.5, || send(&lab, &n2, "foreign_source", 3));
    assert_eq!(got, 3, "--allow-foreign-inner-source turns the check off");
    assert!(lab.stop(1) && lab.stop(2));
}

/// The kernel refuses one peer's route (its gateway became a local address after start): the
/// other peer's route is still restored, the refusal is counted and listed, retried with
/// backoff, and programmed once the kernel accepts it again; the daemon never stops.
#[test]
fn kernel_refusing_one_route_leaves_the_others_programmed() {
    let Some(mut lab) = Lab::new(
        "kernel_refusing_one_route_leaves_the_others_programmed",
        2,
        1,
    ) else {
        return;
    };
    let mut items: Vec<(&str, &str, &str)> = GOOD.to_vec();
    items.push(("node5", "10.244.5.0/24", "198.18.0.5"));
    lab.write_nodes_file(&nodelist(&items));
    lab.start(1);
    lab.start(2);
    assert!(lab.routes(1).contains("10.244.5.0/24"), "{}", lab.routes(1));
    let n1 = lab.node(1);
    // A local 10.244.5.0 makes "10.244.5.0/24 via 10.244.5.0 onlink" invalid for the kernel.
    sh_ok(&["ip", "-n", &n1, "addr", "add", "10.244.5.0/32", "dev", "lo"]);
    for cidr in ["10.244.2.0/24", "10.244.5.0/24"] {
        sh_ok(&["ip", "-n", &n1, "route", "del", cidr, "proto", "77"]);
    }
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .routes(1)
            .contains("10.244.2.0/24 via 10.244.2.0 dev ovl.1")),
        "{}\n{}",
        lab.routes(1),
        lab.log(1)
    );
    assert!(wait_until(Duration::from_secs(5), || metric_value(
        &http_get(&lab, 1, "/metrics"),
        "overlayd_kernel_errors_total"
    ) >= 1.0));
    assert!(!lab.routes(1).contains("10.244.5.0/24"));
    let s = status_json(&lab, 1);
    let failing = s["kernelFailing"].as_array().unwrap();
    assert!(
        failing.len() == 1
            && failing[0]["change"]
                .as_str()
                .unwrap()
                .contains("add route 10.244.5.0/24"),
        "{s}"
    );
    assert!(lab.ping(&lab.pod(1, 1), &Lab::pod_ip(2, 1)));
    // Retried with backoff: a few attempts over some seconds, not one per 2 s tick forever.
    std::thread::sleep(Duration::from_secs(4));
    let attempts = status_json(&lab, 1)["kernelFailing"][0]["attempts"]
        .as_u64()
        .unwrap();
    assert!((2..=4).contains(&attempts), "attempts {attempts}");

    sh_ok(&["ip", "-n", &n1, "addr", "del", "10.244.5.0/32", "dev", "lo"]);
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || lab
            .routes(1)
            .contains("10.244.5.0/24 via 10.244.5.0 dev ovl.1")),
        "{}",
        lab.log(1)
    );
    eprintln!(
        "refused route programmed {:?} after the kernel accepts it",
        t.elapsed()
    );
    assert!(wait_until(Duration::from_secs(3), || status_json(&lab, 1)
        ["kernelFailing"]
        .as_array()
        .unwrap()
        .is_empty()));
    assert!(lab.is_running(1) && lab.stop(1) && lab.stop(2));
}

/// `kubectl get nodes -o yaml > nodes.yaml` writes in place: a writer that truncates, writes
/// a parseable first half, pauses with the file open, then writes the rest. No peer's route
/// may disappear meanwhile, and the complete file is applied once the writer closes it.
#[test]
fn nodes_file_written_in_place_is_applied_only_when_complete() {
    let Some(mut lab) = Lab::new(
        "nodes_file_written_in_place_is_applied_only_when_complete",
        2,
        1,
    ) else {
        return;
    };
    let fakes: Vec<(String, String, String)> = (1..=20)
        .map(|k| {
            (
                format!("fake{k:03}"),
                format!("10.244.{}.0/24", 100 + k),
                format!("198.18.1.{k}"),
            )
        })
        .collect();
    let items = |n: usize| -> Vec<(&str, &str, &str)> {
        let mut v: Vec<(&str, &str, &str)> = GOOD.to_vec();
        v.extend(
            fakes[..n]
                .iter()
                .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str())),
        );
        v
    };
    lab.write_nodes_file(&nodelist(&items(19)));
    lab.start(1);
    let all_present = |lab: &Lab, n: usize| {
        let r = lab.routes(1);
        fakes[..n]
            .iter()
            .all(|(_, cidr, _)| r.contains(cidr.as_str()))
    };
    assert!(wait_until(Duration::from_secs(5), || all_present(&lab, 19)));

    // The new file holds all 20 fakes; its first half (a valid NodeList of node1, node2 and
    // fake001..fake008) would remove fake009..fake019 if applied.
    let full = nodelist(&items(20));
    let cut = full
        .find("- apiVersion: v1\n  kind: Node\n  metadata:\n    name: fake009")
        .unwrap();
    assert!(fdb_sync::parse_node_list(&full[..cut]).is_ok_and(|n| n.len() == 10));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(lab.nodes_file())
        .unwrap();
    f.write_all(&full.as_bytes()[..cut]).unwrap();
    f.flush().unwrap();
    // Longer than any settle window: only knowing the writer still holds the file helps.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(
            all_present(&lab, 19),
            "a route vanished while the file was half-written:\n{}\n{}",
            lab.routes(1),
            lab.log(1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    f.write_all(&full.as_bytes()[cut..]).unwrap();
    drop(f);
    assert!(
        wait_until(Duration::from_secs(5), || all_present(&lab, 20)),
        "the complete file was not applied:\n{}\n{}",
        lab.routes(1),
        lab.log(1)
    );
    assert!(lab.stop(1));
}
