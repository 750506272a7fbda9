//! Scale benchmark of the etcd path (run by benches/etcd-scale.sh, as root), the etcd twin of
//! kube-scale: a real etcd (Debian's etcd-server) holds N leases (default 5000) in Flannel's
//! schema, and one overlayd in etcd mode runs beside it in a throwaway network namespace.
//! Measures: time from start until this node holds its own lease and the FDB, routes and
//! neighbours of all N peers are programmed (/readyz turns 200 only after the first full state
//! is applied; the route and neighbour counts are then checked), time from one lease put (new
//! VtepMAC and public IP of one peer) until the kernel neighbour shows it, and overlayd's VmRSS.
//! Prints one line per measure and a JSON summary.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use overlayd_benches::scale::{count_lines, rss_kib, sh};

use etcd_client::{Client, PutOptions, Txn, TxnOp};

const PREFIX: &str = "/coreos.com/network";
const ENDPOINT: &str = "http://127.0.0.1:23790";

/// Peer i (1-based): subnet 10.(i/256).(i%256).0/24, public IP 100.(64+bump).(i/256).(i%256),
/// as flanneld's vxlan backend writes its lease.
fn lease(i: usize, mac_suffix: u8, ip_bump: usize) -> (String, String) {
    let (hi, lo) = (i / 256, i % 256);
    let key = format!("{PREFIX}/subnets/10.{hi}.{lo}.0-24");
    let value = format!(
        r#"{{"PublicIP":"100.{}.{hi}.{lo}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:{hi:02x}:{lo:02x}:{:02x}:00:{mac_suffix:02x}"}}}}"#,
        64 + ip_bump,
        i % 251
    );
    (key, value)
}

/// The namespace, its etcd and the scratch directory; all removed on drop.
struct Scratch {
    ns: String,
    dir: PathBuf,
    etcd: Option<Child>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut e) = self.etcd.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` with an etcd client on a thread inside namespace `ns`.
fn with_etcd<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce(Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
        + Send
        + 'static,
) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let c = Client::connect([ENDPOINT], None)
                .await
                .expect("etcd connect");
            f(c).await
        })
    })
    .join()
    .expect("etcd thread")
}

fn main() {
    let n: usize = std::env::var("LEASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let overlayd = std::env::var("OVERLAYD")
        .expect("set OVERLAYD to the overlayd binary (benches/etcd-scale.sh does)");
    let ns = format!("ovletcdscale{}", std::process::id());
    let dir = std::env::temp_dir().join(&ns);
    sh(&["ip", "netns", "add", &ns]);
    let mut scratch = Scratch {
        ns: ns.clone(),
        dir: dir.clone(),
        etcd: None,
    };
    for cmd in [
        "link set lo up",
        "link add eth0 type veth peer name eth0p",
        "link set eth0p up",
        "addr add 198.18.0.1/24 dev eth0",
        "link set eth0 up",
        "route add default via 198.18.0.254 dev eth0 onlink",
    ] {
        let mut a = vec!["ip", "-n", &ns];
        a.extend(cmd.split(' '));
        sh(&a);
    }
    std::fs::create_dir_all(&dir).unwrap();
    let etcd_log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    scratch.etcd = Some(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "etcd",
                "--name",
                "bench",
                "--data-dir",
            ])
            .arg(dir.join("etcd.data"))
            .args(["--listen-client-urls", ENDPOINT])
            .args(["--advertise-client-urls", ENDPOINT])
            .args(["--listen-peer-urls", "http://127.0.0.1:23800"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:23800"])
            .args(["--initial-cluster", "bench=http://127.0.0.1:23800"])
            .stdout(Stdio::null())
            .stderr(etcd_log)
            .spawn()
            .expect("etcd (install etcd-server)"),
    );

    // The configuration and N leases, 100 puts per transaction, on one etcd lease.
    let t_fill = Instant::now();
    with_etcd(&ns, move |mut c| {
        Box::pin(async move {
            let start = Instant::now();
            while c.status().await.is_err() {
                assert!(start.elapsed() < Duration::from_secs(20), "etcd not up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            c.put(
                format!("{PREFIX}/config"),
                r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#,
                None,
            )
            .await
            .expect("put config");
            let id = c.lease_grant(3600, None).await.expect("lease").id();
            let all: Vec<usize> = (1..=n).collect();
            for chunk in all.chunks(100) {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|&i| {
                        let (k, v) = lease(i, 1, 0);
                        TxnOp::put(k, v, Some(PutOptions::new().with_lease(id)))
                    })
                    .collect();
                c.txn(Txn::new().and_then(ops)).await.expect("put leases");
            }
        })
    });
    let fill = t_fill.elapsed();

    let log = std::fs::File::create(dir.join("overlayd.log")).unwrap();
    let t0 = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, &overlayd, "--node-name", "self"])
        .args(["--etcd-endpoints", ENDPOINT])
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
                &ns,
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
        let log = || std::fs::read_to_string(dir.join("overlayd.log")).unwrap_or_default();
        assert!(
            t0.elapsed() < limit,
            "overlayd not ready after {limit:?}:\n{}",
            log()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "overlayd exited:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let full_sync = t0.elapsed();
    let routes = count_lines(&ns, "route");
    let neigh = count_lines(&ns, "neigh");
    assert!(
        routes == n && neigh == n,
        "after ready: {routes} routes, {neigh} neighbours, want {n}"
    );
    let rss_after_sync = rss_kib(pid);

    // One lease put: peer n/2 gets a new VtepMAC and public IP (a flanneld restarted there).
    let target = n / 2;
    std::thread::sleep(Duration::from_millis(500));
    let (hi, lo) = (target / 256, target % 256);
    let want = format!("lladdr 02:{hi:02x}:{lo:02x}:{:02x}:00:07", target % 251);
    let (k, v) = lease(target, 7, 1);
    // Timed from the put itself, after the client connected.
    let t1 = with_etcd(&ns, move |mut c| {
        Box::pin(async move {
            let t = Instant::now();
            c.put(k, v, None).await.expect("put lease");
            t
        })
    });
    loop {
        let out = sh(&[
            "ip",
            "-n",
            &ns,
            "neigh",
            "show",
            &format!("10.{hi}.{lo}.0"),
            "dev",
            "ovl.1",
        ]);
        if out.contains(&want) {
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
    drop(scratch);
    #[allow(clippy::cast_precision_loss)]
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "leases in etcd                {n} (written in {:.2} s)",
        fill.as_secs_f64()
    );
    println!(
        "full sync (start -> ready)    {:.3} s   goal <= 2 s",
        full_sync.as_secs_f64()
    );
    println!(
        "one lease put -> kernel       {:.1} ms  goal <= 100 ms",
        update.as_secs_f64() * 1e3
    );
    println!(
        "RSS after sync / steady       {:.1} / {:.1} MiB",
        mib(rss_after_sync),
        mib(rss_steady)
    );
    println!(
        "{}",
        serde_json::json!({"leases": n, "full_sync_s": full_sync.as_secs_f64(),
            "update_ms": update.as_secs_f64() * 1e3, "rss_mib_after_sync": mib(rss_after_sync),
            "rss_mib_steady": mib(rss_steady)})
    );
}
