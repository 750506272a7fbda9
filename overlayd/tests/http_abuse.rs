//! The HTTP endpoint under abuse (root only; see tests/common): 500 idle connections and a
//! `/status` flood neither stop the control loop (a deleted route is still restored within
//! 2 s) nor hold the server: idle clients are cut off by the header-read timeout, and overlayd
//! never holds more than its connection limit.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{sh_ok, wait_until, Lab};

/// Opens N idle connections to 127.0.0.1:9102, floods GET /status from 8 threads for SECS
/// seconds, then prints: connected, /status answers, /status failures, idle connections the
/// server has closed.
const ABUSE: &str = r#"
import socket, sys, threading, time, urllib.request
n, secs = int(sys.argv[1]), float(sys.argv[2])
idle = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", 9102)); idle.append(s)
    except OSError:
        s.close()
print("connected", len(idle), flush=True)
ok, err, end = [0], [0], time.time() + secs
def flood():
    while time.time() < end:
        try:
            urllib.request.urlopen("http://127.0.0.1:9102/status", timeout=2).read(); ok[0] += 1
        except Exception:
            err[0] += 1
ts = [threading.Thread(target=flood) for _ in range(8)]
for t in ts: t.start()
for t in ts: t.join()
closed = 0
for s in idle:
    s.settimeout(0.01)
    try:
        if s.recv(1) == b"": closed += 1
    except socket.timeout:
        pass
    except OSError:
        closed += 1
print(len(idle), ok[0], err[0], closed, flush=True)
"#;

fn has_route(lab: &Lab) -> bool {
    lab.routes(1).contains("10.244.2.0/24")
}

/// Sockets overlayd (`pid`) holds open right now.
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn http_abuse_500_idle_connections_and_status_flood_do_not_stop_route_repair() {
    let Some(mut lab) = Lab::new(
        "http_abuse_500_idle_connections_and_status_flood_do_not_stop_route_repair",
        2,
        1,
    ) else {
        return;
    };
    lab.start(1);
    lab.start(2);
    assert!(has_route(&lab));
    let pid = lab.pid(1).unwrap();
    let baseline = open_sockets(pid);

    let secs = 9.0;
    let abuse = common::ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", &lab.node(1), "python3", "-c", ABUSE, "500"])
            .arg(secs.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 abuse client"),
    );
    // Let the idle connections pile up and the flood start.
    std::thread::sleep(Duration::from_secs(2));
    let mut repairs = Vec::new();
    let mut max_sockets = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        sh_ok(&["ip", "-n", &lab.node(1), "route", "del", "10.244.2.0/24"]);
        let t = Instant::now();
        let back = wait_until(Duration::from_secs(2), || {
            max_sockets = max_sockets.max(open_sockets(pid));
            has_route(&lab)
        });
        assert!(
            back,
            "route not restored within 2 s under HTTP abuse:\n{}",
            lab.log(1)
        );
        repairs.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = {
        let mut guard = abuse;
        let mut stdout = guard.0.stdout.take().unwrap();
        let status = guard.0.wait().unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        assert!(status.success(), "abuse client failed: {text}");
        text
    };
    let last: Vec<u64> = out
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (connected, ok, _err, closed) = (last[0], last[1], last[2], last[3]);
    eprintln!(
        "route repairs under abuse: {repairs:?}; idle connected {connected}, /status ok {ok}, \
         idle closed by the server {closed}, overlayd sockets max {max_sockets} (baseline {baseline})"
    );
    assert!(repairs.len() >= 3, "{repairs:?}");
    assert!(
        connected >= 400,
        "the kernel backlog took only {connected} idle connections"
    );
    // The connection limit: the idle clients never made overlayd hold 500 sockets.
    assert!(
        max_sockets <= baseline + overlayd::http::MAX_CONNECTIONS + 8,
        "overlayd held {max_sockets} sockets (baseline {baseline}, limit {})",
        overlayd::http::MAX_CONNECTIONS
    );
    // The header-read timeout cut idle clients off (at least one full batch in 9 s).
    assert!(
        closed >= 100,
        "only {closed} idle connections were closed by the server"
    );
    assert!(ok > 0, "/status never answered during the flood");
    // And the endpoint is healthy again afterwards.
    assert!(
        wait_until(Duration::from_secs(10), || lab.http_status(1, "/status")
            == 200),
        "/status does not answer after the abuse"
    );
    assert!(lab.ping_within(&lab.pod(1, 1), &Lab::pod_ip(2, 1), Duration::from_secs(3)));
}
