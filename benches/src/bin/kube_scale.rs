//! Scale benchmark of the Kubernetes path (run by benches/kube-scale.sh, as root): a fake API
//! server lists N Nodes (default 5000) to one overlayd in a throwaway network namespace.
//! Measures: time from start until the FDB, routes and neighbours of all peers are programmed
//! (/readyz turns 200 only after the FDB snapshot and the kernel reconcile of the first full
//! state; the route and neighbour counts are then checked), time from one MODIFIED (new VtepMAC
//! and public IP of one peer) until the kernel neighbour shows it (the control loop swaps the
//! FDB before it touches the kernel, so this bounds the FDB too), and overlayd's VmRSS.
//! Prints one line per measure and a JSON summary.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use overlayd_benches::scale::{count_lines, rss_kib, sh};

use fdb_sync::fake_apiserver::FakeApiServer;
use fdb_sync::model::{node, ANN_BACKEND_DATA, ANN_BACKEND_TYPE, ANN_PUBLIC_IP};
use k8s_openapi::api::core::v1::Node;

/// Peer i (1-based): podCIDR 10.(i/256).(i%256).0/24, public IP 100.64.(i/256).(i%256).
fn peer(i: usize, mac_suffix: u8, ip_bump: usize) -> Node {
    let (hi, lo) = (i / 256, i % 256);
    let data = format!(
        r#"{{"VNI":1,"VtepMAC":"02:{:02x}:{:02x}:{:02x}:00:{mac_suffix:02x}"}}"#,
        hi,
        lo,
        i % 251
    );
    let public_ip = format!("100.{}.{hi}.{lo}", 64 + ip_bump);
    node(
        &format!("peer{i:05}"),
        Some(&format!("10.{hi}.{lo}.0/24")),
        &format!("100.64.{hi}.{lo}"),
        &[
            (ANN_BACKEND_TYPE, "vxlan"),
            (ANN_BACKEND_DATA, &data),
            (ANN_PUBLIC_IP, &public_ip),
        ],
    )
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn main() {
    let n: usize = std::env::var("NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let overlayd = std::env::var("OVERLAYD")
        .expect("set OVERLAYD to the overlayd binary (benches/kube-scale.sh does)");
    let ns = Netns(format!("ovlscale{}", std::process::id()));
    sh(&["ip", "netns", "add", &ns.0]);
    for cmd in [
        "link set lo up",
        "link add eth0 type veth peer name eth0p",
        "link set eth0p up",
        "addr add 198.18.0.1/24 dev eth0",
        "link set eth0 up",
        "route add default via 198.18.0.254 dev eth0 onlink",
    ] {
        let mut a = vec!["ip", "-n", &ns.0];
        a.extend(cmd.split(' '));
        sh(&a);
    }
    let dir = std::env::temp_dir().join(&ns.0);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("net-conf.json"),
        r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#,
    )
    .unwrap();

    let ns_path = format!("/run/netns/{}", ns.0);
    let binder = move || -> std::io::Result<TcpListener> {
        let p = ns_path.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&p)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            TcpListener::bind("127.0.0.1:6443")
        })
        .join()
        .expect("bind thread")
    };
    let server = FakeApiServer::start(Box::new(binder)).expect("fake API server");
    let kc = server.write_kubeconfig(&dir).unwrap();
    server.apply(&node("self", Some("10.200.0.0/24"), "198.18.0.1", &[]));
    for i in 1..=n {
        server.apply(&peer(i, 1, 0));
    }

    let log = std::fs::File::create(dir.join("overlayd.log")).unwrap();
    let t0 = Instant::now();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            &overlayd,
            "--node-name",
            "self",
            "--kube-subnet-mgr",
            "--kubeconfig-file",
        ])
        .arg(&kc)
        .arg("--net-config-path")
        .arg(dir.join("net-conf.json"))
        .arg("--subnet-file")
        .arg(dir.join("subnet.env"))
        .args(["--queues", "1"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn overlayd");
    let pid = child.id();
    let ready = || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "curl",
                "-s",
                "-m",
                "1",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:9102/readyz",
            ])
            .output()
            .is_ok_and(|o| o.stdout == b"200")
    };
    let limit = Duration::from_secs(60);
    while !ready() {
        assert!(
            t0.elapsed() < limit,
            "overlayd not ready after {limit:?}:\n{}",
            std::fs::read_to_string(dir.join("overlayd.log")).unwrap_or_default()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "overlayd exited:\n{}",
            std::fs::read_to_string(dir.join("overlayd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let full_sync = t0.elapsed();
    let first_list = server
        .requests()
        .iter()
        .position(|r| r.starts_with("GET /api/v1/nodes?"))
        .is_some();
    let routes = count_lines(&ns.0, "route");
    let neigh = count_lines(&ns.0, "neigh");
    assert!(
        first_list && routes == n && neigh == n,
        "after ready: {routes} routes, {neigh} neighbours, want {n}"
    );
    let rss_after_sync = rss_kib(pid);

    // One MODIFIED: peer 2500 gets a new VtepMAC and public IP.
    let target = n / 2;
    std::thread::sleep(Duration::from_millis(500));
    let (hi, lo) = (target / 256, target % 256);
    let want = format!(
        "10.{hi}.{lo}.0 lladdr {:02x}:{:02x}:{:02x}:{:02x}:00:07",
        2,
        hi,
        lo,
        target % 251
    );
    let t1 = Instant::now();
    server.apply(&peer(target, 7, 1));
    loop {
        let out = sh(&[
            "ip",
            "-n",
            &ns.0,
            "neigh",
            "show",
            &format!("10.{hi}.{lo}.0"),
            "dev",
            "ovl.1",
        ]);
        if out.contains(&want[want.find(" lladdr").unwrap()..]) {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "update not applied: {out}"
        );
    }
    let update = t1.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rss_steady = rss_kib(pid);

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    #[allow(clippy::cast_precision_loss)]
    let mib = |k: u64| k as f64 / 1024.0;
    println!("nodes                         {n}");
    println!(
        "full sync (start -> ready)    {:.3} s   goal <= 2 s",
        full_sync.as_secs_f64()
    );
    println!(
        "one MODIFIED -> kernel        {:.1} ms  goal <= 100 ms",
        update.as_secs_f64() * 1e3
    );
    println!(
        "RSS after sync / steady       {:.1} / {:.1} MiB  goal <= 30 MiB",
        mib(rss_after_sync),
        mib(rss_steady)
    );
    println!(
        "{}",
        serde_json::json!({"nodes": n, "full_sync_s": full_sync.as_secs_f64(),
            "update_ms": update.as_secs_f64() * 1e3, "rss_mib_after_sync": mib(rss_after_sync),
            "rss_mib_steady": mib(rss_steady)})
    );
    let _ = std::fs::remove_dir_all(&dir);
}
