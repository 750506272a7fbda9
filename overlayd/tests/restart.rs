//! Restarts without losing the node's traffic, in network namespaces (root only; see
//! tests/common): an overlapping upgrade (a second overlayd takes the dataplane over through
//! the handover socket), a stop-and-start and a crash (the device, routes and neighbours are
//! kept and adopted), `overlayd cleanup`, and the worker supervisor (a worker that panics is
//! restarted, counted, and /healthz tells while it is down).
//!
//! Pings go every 5 ms from node 2's pod to node 1's pod while node 1's overlayd is replaced;
//! an iperf3 TCP stream runs the same way and must survive.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{sh_ok, wait_until, Lab, PingRun};

const MAC1: &str = "0a:58:0a:f4:01:00";

fn link(lab: &Lab, i: usize) -> Option<String> {
    let out = lab.exec(&lab.node(i), &["ip", "-d", "-o", "link", "show", "ovl.1"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Node 1's routes and neighbours toward node 2 are exactly the one route and the one
/// permanent neighbour overlayd programs (none missing, none duplicated). While no overlayd
/// holds a queue the device has no carrier, which `ip` shows as `linkdown` on the route.
fn assert_peer2_state_exact(lab: &Lab) {
    let routes = lab.routes(1);
    assert_eq!(
        routes.trim().trim_end_matches(" linkdown"),
        "10.244.2.0/24 via 10.244.2.0 dev ovl.1 onlink",
        "routes (proto 77) on node 1"
    );
    let neigh = lab.neighbours(1, "ovl.1");
    assert_eq!(
        neigh.trim(),
        "10.244.2.0 lladdr 0a:58:0a:f4:02:00 PERMANENT",
        "neighbours on ovl.1"
    );
}

/// Starts the load: iperf3 TCP from pod 2-1 to pod 1-1 for `secs` (rate-limited, so the pings
/// measure overlayd and not a full queue) and pings every 5 ms for `ping_secs`.
fn load(lab: &Lab, secs: u32, ping_secs: u32) -> (std::process::Child, PingRun) {
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    let ip1 = Lab::pod_ip(1, 1);
    assert!(lab.ping_within(&p2, &ip1, Duration::from_secs(3)));
    let iperf = lab.iperf_start(&p2, &p1, &ip1, secs, &["-b", "100M"]);
    std::thread::sleep(Duration::from_millis(700));
    let ping = PingRun::start(lab, &p2, &ip1, ping_secs * 200);
    std::thread::sleep(Duration::from_millis(500));
    (iperf, ping)
}

/// Every 1 s interval of the iperf3 stream moved data and it ended without error.
fn assert_stream_survived(v: &serde_json::Value) -> f64 {
    assert!(v["error"].is_null(), "iperf3 error: {}", v["error"]);
    let intervals = v["intervals"].as_array().expect("iperf3 intervals");
    assert!(intervals.len() >= 4, "{v}");
    for (k, iv) in intervals.iter().enumerate() {
        let bytes = iv["sum"]["bytes"].as_f64().unwrap_or(0.0);
        assert!(bytes > 0.0, "iperf3 interval {k} moved nothing: {iv}");
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
}

/// A rolling update with maxSurge, twice in a row: the new overlayd starts while the old one
/// runs, takes its TAP queues and sockets over, and the old one then stops. No ping is lost
/// (at most 2 tolerated on this shared machine), the TCP stream goes on, the device, MAC,
/// routes and neighbours are untouched, and the new one can hand over again.
#[test]
fn overlapping_upgrade_loses_no_ping_and_tcp_survives() {
    let Some(mut lab) = Lab::new("overlapping_upgrade_loses_no_ping_and_tcp_survives", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let ifindex_before = link(&lab, 1).unwrap();
    let (iperf, ping) = load(&lab, 7, 4);

    for round in 1..=2 {
        let t = Instant::now();
        lab.start_overlapping(1);
        assert!(
            lab.log(1).contains("took the dataplane over"),
            "round {round}:\n{}",
            lab.log(1)
        );
        assert!(
            !lab.log(1).contains("no handover socket"),
            "round {round}: the new one listens for the next upgrade:\n{}",
            lab.log(1)
        );
        assert!(
            lab.stop_retired(1),
            "old overlayd exits 0:\n{}",
            lab.retired_log(1)
        );
        let old = lab.retired_log(1);
        assert!(
            old.contains("handed over") && old.contains("stopped after a handover"),
            "round {round}:\n{old}"
        );
        eprintln!("upgrade {round}: start to old one gone {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }

    let (sent, received) = ping.finish();
    let lost = sent - received;
    eprintln!("two overlapping upgrades: {lost} of {sent} pings (5 ms apart) lost");
    assert!(
        lost <= 2,
        "{lost} of {sent} pings lost during the handovers"
    );
    let bps = assert_stream_survived(&Lab::iperf_json(iperf));
    eprintln!("iperf3 {:.0} Mbit/s across the upgrades", bps / 1e6);

    // The same device (same index), MAC and kernel state; the new one serves HTTP alone.
    let after = link(&lab, 1).unwrap();
    assert_eq!(
        ifindex_before.split(':').next(),
        after.split(':').next(),
        "same device"
    );
    assert!(
        after.contains(MAC1) && after.contains("persist on"),
        "{after}"
    );
    assert_peer2_state_exact(&lab);
    assert_eq!(lab.http_status(1, "/readyz"), 200);
    assert!(lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(2)));
}

/// A new overlayd that disagrees with the running one (here: another UDP port) is refused
/// with the reason and exits; the running one never stopped forwarding.
#[test]
fn mismatched_handover_is_refused_and_the_old_one_keeps_forwarding() {
    let Some(mut lab) = Lab::new(
        "mismatched_handover_is_refused_and_the_old_one_keeps_forwarding",
        2,
        1,
    ) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let conf = lab.dir.join("net-conf-4789.json");
    std::fs::write(
        &conf,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1,"Port":4789}}"#,
    )
    .unwrap();
    let (iperf, ping) = load(&lab, 5, 2);
    let sock = lab.handover_socket(1);
    let nodes = lab.nodes_file();
    let subnet = lab.dir.join("other-subnet.env");
    let out = lab.exec(
        &lab.node(1),
        &[
            "timeout",
            "20",
            common::OVERLAYD,
            "--node-name",
            "node1",
            "--nodes-file",
            nodes.to_str().unwrap(),
            "--net-config-path",
            conf.to_str().unwrap(),
            "--subnet-file",
            subnet.to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:9103",
            "--handover-socket",
            sock.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused the handover") && err.contains("port 4789"),
        "{err}"
    );
    assert!(lab.is_running(1));
    assert!(lab.log(1).contains("handover refused"), "{}", lab.log(1));
    let (sent, received) = ping.finish();
    eprintln!("refused handover: {} of {sent} pings lost", sent - received);
    assert!(sent - received <= 2);
    assert_stream_survived(&Lab::iperf_json(iperf));
    assert_peer2_state_exact(&lab);
}

/// SIGTERM then a new start: what the old one left is adopted, the gap is at most 50 ms
/// worth of pings, and the TCP stream survives.
#[test]
fn stop_and_start_loses_at_most_50ms_of_pings() {
    let Some(mut lab) = Lab::new("stop_and_start_loses_at_most_50ms_of_pings", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let (iperf, ping) = load(&lab, 6, 3);

    let t = Instant::now();
    assert!(lab.stop(1), "exit 0 on SIGTERM:\n{}", lab.log(1));
    lab.start(1);
    let took = t.elapsed();
    assert!(lab.log(1).contains("adopted the device"), "{}", lab.log(1));

    let (sent, received) = ping.finish();
    let lost = sent - received;
    eprintln!(
        "stop-and-start: {lost} of {sent} pings (5 ms apart) lost, ~{} ms; stop to ready {took:?}",
        lost * 5
    );
    assert!(lost <= 10, "{lost} pings lost: more than 50 ms");
    let bps = assert_stream_survived(&Lab::iperf_json(iperf));
    eprintln!("iperf3 {:.0} Mbit/s across the restart", bps / 1e6);
    assert_peer2_state_exact(&lab);
}

/// SIGKILL: the device (persistent), routes and neighbours stay; the next overlayd adopts
/// them with the same MAC and no duplicate route, and the TCP stream survives.
#[test]
fn crash_then_start_adopts_device_routes_and_mac() {
    let Some(mut lab) = Lab::new("crash_then_start_adopts_device_routes_and_mac", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let (iperf, ping) = load(&lab, 6, 2);

    lab.kill(1);
    let l = link(&lab, 1).expect("device survives SIGKILL");
    assert!(l.contains(MAC1) && l.contains("numqueues 0"), "{l}");
    assert_peer2_state_exact(&lab);
    lab.start(1);
    assert!(lab.log(1).contains("adopted the device"), "{}", lab.log(1));
    let (sent, received) = ping.finish();
    eprintln!(
        "crash and start: {} of {sent} pings lost (the test's own kill-to-spawn included)",
        sent - received
    );
    assert_stream_survived(&Lab::iperf_json(iperf));
    let l = link(&lab, 1).unwrap();
    assert!(l.contains(MAC1) && l.contains("numqueues 2"), "{l}");
    assert_peer2_state_exact(&lab);
    assert!(lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(2)));
}

/// `overlayd cleanup` refuses while overlayd runs; after a stop it removes the device, the
/// routes (protocol 77), the neighbours and the handover socket, and a new start works.
#[test]
fn cleanup_removes_device_routes_and_neighbours() {
    let Some(mut lab) = Lab::new("cleanup_removes_device_routes_and_neighbours", 2, 1) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    let out = lab.cleanup(1, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("running") && err.contains("--force"),
        "{err}"
    );
    assert!(link(&lab, 1).is_some());

    assert!(lab.stop(1));
    assert!(link(&lab, 1).is_some(), "a stop leaves the device");
    let out = lab.cleanup(1, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("1 routes") && said.contains("device deleted"),
        "{said}"
    );
    assert!(link(&lab, 1).is_none(), "device removed");
    assert!(lab.routes(1).trim().is_empty(), "routes: {}", lab.routes(1));
    let neigh = sh_ok(&["ip", "-n", &lab.node(1), "neigh", "show", "10.244.2.0"]);
    assert!(neigh.trim().is_empty(), "neighbour: {neigh}");
    assert!(!lab.handover_socket(1).exists());
    // Idempotent, and a fresh start creates everything again.
    assert!(lab.cleanup(1, &[]).status.success());
    lab.start(1);
    assert!(lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(3)));
    assert_peer2_state_exact(&lab);
}

/// `--cleanup-on-exit`: SIGTERM removes everything, as before hitless restarts existed.
#[test]
fn cleanup_on_exit_flag_removes_everything_on_sigterm() {
    let Some(mut lab) = Lab::new("cleanup_on_exit_flag_removes_everything_on_sigterm", 2, 1) else {
        return;
    };
    lab.start_with(1, &["--cleanup-on-exit", "--ip-masq"]);
    lab.start(2);
    assert!(lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(3)));
    // No EnableNFTables in net-conf.json: the iptables backend, as in Flannel.
    let table = |lab: &Lab| {
        let out = lab.exec(&lab.node(1), &["iptables-save", "-t", "nat"]);
        String::from_utf8_lossy(&out.stdout).contains("OVERLAYD-POSTRTG")
    };
    assert!(table(&lab), "masquerade chain installed: {}", lab.log(1));
    assert!(lab.stop(1), "{}", lab.log(1));
    assert!(link(&lab, 1).is_none(), "device removed");
    assert!(lab.routes(1).trim().is_empty());
    // The rule checker is stopped before the removal, so nothing puts the table back.
    std::thread::sleep(Duration::from_millis(700));
    assert!(!table(&lab), "masquerade chain removed and not restored");
    assert!(
        lab.log(1).contains("--cleanup-on-exit removed"),
        "{}",
        lab.log(1)
    );
}

/// GET `path` in node `i`: (status, body).
fn get(lab: &Lab, i: usize, path: &str) -> (u16, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.node(i), "curl", "-s", "-m", "2"])
        .args([
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:9102{path}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A worker that panics (a test-only fault, debug builds) is restarted on the same queue and
/// sockets and counted; when it keeps failing, the backoff holds the queue down and /healthz
/// fails saying which queue, /readyz too; once it runs again both recover and so does the
/// traffic, in the same process.
#[test]
fn panicking_worker_is_restarted_counted_and_health_follows() {
    let Some(mut lab) = Lab::new(
        "panicking_worker_is_restarted_counted_and_health_follows",
        2,
        1,
    ) else {
        return;
    };
    if !cfg!(debug_assertions) {
        // The switch is compiled into debug builds only (CI tests a debug build).
        assert!(
            std::env::var_os("CI").is_none(),
            "the worker fault switch needs a debug build, and CI is set"
        );
        eprintln!("SKIP: the worker fault switch exists in debug builds only");
        return;
    }
    // The first panic after 20 packets, then 5 more at each restart: backoff 0, 0.2, 0.4,
    // 0.8, 1.6, 3.2 s, so the queue is down longer than the 1 s grace near the end.
    lab.start_env(1, &[], &[("OVERLAYD_TEST_WORKER_PANIC", "20x6")]);
    lab.start(2);
    let pid = lab.pid(1).unwrap();
    let (p1, ip2) = (lab.pod(1, 1), Lab::pod_ip(2, 1));
    // Traffic in both directions until a queue has seen 20 packets.
    lab.exec(&p1, &["ping", "-c", "40", "-i", "0.02", "-W", "1", &ip2]);
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .log(1)
            .contains("injected worker fault")),
        "{}",
        lab.log(1)
    );
    let (mut down, mut unready) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline && (down.is_none() || unready.is_none()) {
        let (code, body) = get(&lab, 1, "/healthz");
        if code == 503 {
            down = Some(body);
            let (code, body) = get(&lab, 1, "/readyz");
            if code == 503 {
                unready = Some(body);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let down = down.unwrap_or_else(|| panic!("/healthz never failed:\n{}", lab.log(1)));
    assert!(
        down.contains("not forwarding") && down.contains("worker not running"),
        "{down}"
    );
    let unready = unready.unwrap_or_else(|| panic!("/readyz never failed with /healthz"));
    assert!(
        unready.contains("not ready") && unready.contains("worker not running"),
        "{unready}"
    );
    eprintln!("/healthz while down: {down}/readyz: {unready}");
    // The sixth restart ends the fault; from then on the queue runs.
    let restarts = |lab: &Lab| -> f64 {
        let (_, m) = get(lab, 1, "/metrics");
        m.lines()
            .filter(|l| l.starts_with("overlayd_worker_restarts_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(10), || restarts(&lab) >= 6.0),
        "{}",
        lab.log(1)
    );
    assert!(
        wait_until(Duration::from_secs(5), || get(&lab, 1, "/healthz").0 == 200),
        "/healthz did not recover:\n{}",
        lab.log(1)
    );
    assert!(
        lab.ping_within(&p1, &ip2, Duration::from_secs(3)),
        "{}",
        lab.log(1)
    );
    assert_eq!(get(&lab, 1, "/readyz").0, 200);
    assert!(lab.is_running(1) && lab.pid(1) == Some(pid), "same process");
    // Still 6 a while later: the fault is spent and the queue stays up.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(restarts(&lab), 6.0);
    assert_eq!(get(&lab, 1, "/healthz").0, 200);
    let log = lab.log(1);
    assert_eq!(log.matches("worker restarted").count(), 6, "{log}");
    assert!(
        log.contains("worker panicked: injected worker fault"),
        "{log}"
    );
}
