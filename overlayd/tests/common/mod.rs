//! Test lab: a cluster of network-namespace nodes built by deploy/local/cluster.sh, with
//! overlayd daemons the test starts and stops. Needs root: `Lab::new` returns `None` (skip)
//! without it, and panics instead when `CI` is set, so CI proves the tests ran.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/cluster.sh");
pub const OVERLAYD: &str = env!("CARGO_BIN_EXE_overlayd");

static SERIAL: Mutex<()> = Mutex::new(());
static CNI_BUILT: std::sync::Once = std::sync::Once::new();

/// The overlayd-cni binary next to overlayd, built on first use when `cargo test -p overlayd`
/// did not build it (a workspace test run does).
pub fn cni_plugin() -> PathBuf {
    let path = Path::new(OVERLAYD).with_file_name("overlayd-cni");
    CNI_BUILT.call_once(|| {
        if !path.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let profile = if OVERLAYD.contains("/release/") {
                vec!["--release"]
            } else {
                vec![]
            };
            let ok = Command::new(cargo)
                .args(["build", "-p", "cni-shim"])
                .args(profile)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cannot build overlayd-cni for the pods");
        }
    });
    path
}
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// True when the test may run; prints why not otherwise. Fails under CI.
pub fn privileged(test: &str) -> bool {
    // SAFETY-free check: euid via the `id` command keeps the tests free of unsafe code.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root (network namespaces), and CI is set"
    );
    eprintln!("SKIP {test}: needs root for network namespaces");
    false
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

pub fn sh_ok(args: &[&str]) -> String {
    let out = run(Command::new(args[0]).args(&args[1..]));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    pub nodes: usize,
    pub pods: usize,
    daemons: Vec<Option<Child>>,
    wired: Vec<bool>,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// Builds `nodes` nodes with `pods` pods each, or `None` when the test must be skipped.
    pub fn new(test: &str, nodes: usize, pods: usize) -> Option<Lab> {
        if !privileged(test) {
            return None;
        }
        let serial = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prefix = format!(
            "o{}{}",
            std::process::id() % 1000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("overlayd-test-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        let lab = Lab {
            prefix,
            dir,
            nodes,
            pods,
            daemons: (0..=nodes).map(|_| None).collect(),
            wired: vec![false; nodes + 1],
            _serial: serial,
        };
        sh_ok(&[
            "bash",
            SCRIPT,
            "up",
            &lab.prefix,
            lab.dir.to_str().unwrap(),
            &nodes.to_string(),
            &pods.to_string(),
        ]);
        Some(lab)
    }

    pub fn node(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    pub fn pod(&self, i: usize, j: usize) -> String {
        format!("{}p{i}-{j}", self.prefix)
    }

    pub fn pod_ip(i: usize, j: usize) -> String {
        format!("10.244.{i}.{}", j + 1)
    }

    pub fn nodes_file(&self) -> PathBuf {
        self.dir.join("nodes.yaml")
    }

    pub fn subnet_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("subnet{i}.env"))
    }

    pub fn log_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("overlayd{i}.log"))
    }

    /// Programs node `i` as a kernel-vxlan Flannel node, annotates it in the NodeList and
    /// wires its pods.
    pub fn make_kernel_node(&mut self, i: usize) {
        sh_ok(&[
            "bash",
            SCRIPT,
            "kernel-node",
            &self.prefix,
            &i.to_string(),
            &self.nodes.to_string(),
            self.dir.to_str().unwrap(),
        ]);
        self.wire(i);
    }

    /// Wires node `i`'s pods with the overlayd-cni plugin once its subnet.env exists.
    pub fn wire(&mut self, i: usize) {
        if self.wired[i] || self.pods == 0 {
            return;
        }
        let out = run(Command::new("bash")
            .args([
                SCRIPT,
                "wire",
                &self.prefix,
                self.dir.to_str().unwrap(),
                &i.to_string(),
                &self.pods.to_string(),
            ])
            .env("OVERLAYD_CNI", cni_plugin()));
        assert!(
            out.status.success(),
            "wiring pods of node {i}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.wired[i] = true;
    }

    /// Starts overlayd on node `i` and waits until its device is up.
    pub fn start(&mut self, i: usize) {
        self.start_with(i, &[]);
    }

    pub fn start_with(&mut self, i: usize, extra: &[&str]) {
        let nodes_file = self.nodes_file();
        let source = ["--nodes-file".as_ref(), nodes_file.as_os_str()];
        self.spawn(i, &source, extra);
        self.wait_ready(i);
    }

    /// Starts overlayd on node `i` with `--kube-subnet-mgr --kubeconfig-file KUBECONFIG` and
    /// waits until its device is up.
    pub fn start_kube(&mut self, i: usize, kubeconfig: &Path, extra: &[&str]) {
        self.spawn_kube(i, kubeconfig, extra);
        self.wait_ready(i);
    }

    /// As [`Lab::start_kube`] without waiting (the own Node may not exist yet).
    pub fn spawn_kube(&mut self, i: usize, kubeconfig: &Path, extra: &[&str]) {
        let source = [
            "--kube-subnet-mgr".as_ref(),
            "--kubeconfig-file".as_ref(),
            kubeconfig.as_os_str(),
        ];
        self.spawn(i, &source, extra);
    }

    /// Starts overlayd on node `i` with the node source given by `source`; does not wait.
    pub fn spawn(&mut self, i: usize, source: &[&std::ffi::OsStr], extra: &[&str]) {
        assert!(
            self.daemons[i].is_none(),
            "overlayd already running on node {i}"
        );
        let log = std::fs::File::create(self.log_file(i)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node(i), OVERLAYD])
            .args(["--node-name", &format!("node{i}")])
            .args(source)
            .arg("--net-config-path")
            .arg(self.dir.join("net-conf.json"))
            .arg("--subnet-file")
            .arg(self.subnet_file(i))
            .args(["--queues", "2"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn overlayd");
        self.daemons[i] = Some(child);
    }

    /// Waits until overlayd on node `i` logged that it is ready.
    pub fn wait_ready(&mut self, i: usize) {
        let ns = self.node(i);
        let up = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(self.log_file(i)).is_ok_and(|l| l.contains("overlayd ready"))
        });
        assert!(
            up,
            "overlayd on {ns} did not become ready:\n{}",
            self.log(i)
        );
        self.wire(i);
    }

    /// HTTP status of `GET http://127.0.0.1:9102{path}` from inside node `i` (0: no answer).
    pub fn http_status(&self, i: usize, path: &str) -> u16 {
        let out = self.exec(
            &self.node(i),
            &[
                "curl",
                "-s",
                "-m",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://127.0.0.1:9102{path}"),
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_file(i)).unwrap_or_default()
    }

    /// Sends SIGTERM to overlayd on node `i`, waits for it and returns whether it exited 0.
    pub fn stop(&mut self, i: usize) -> bool {
        let Some(mut child) = self.daemons[i].take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of overlayd on node `i` (`ip netns exec` execs it, so it is the child).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.daemons[i].as_ref().map(Child::id)
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        self.daemons[i]
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// One ping from pod namespace `from` to `ip`, 1 s timeout.
    pub fn ping(&self, from: &str, ip: &str) -> bool {
        self.exec(from, &["ping", "-c", "1", "-W", "1", ip])
            .status
            .success()
    }

    /// Pings until one answer arrives or `timeout` passes.
    pub fn ping_within(&self, from: &str, ip: &str, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.exec(from, &["ping", "-c", "1", "-W", "0.3", ip])
                .status
                .success()
        })
    }

    /// Starts an iperf3 server in `server` and, in the background, a TCP client in `client`
    /// for `secs` seconds (1 s intervals, JSON on stdout); collect it with `iperf_json`.
    pub fn iperf_start(
        &self,
        client: &str,
        server: &str,
        server_ip: &str,
        secs: u32,
        extra: &[&str],
    ) -> Child {
        let out = self.exec(server, &["iperf3", "-s", "-1", "-D", "-p", "5201"]);
        assert!(
            out.status.success(),
            "iperf3 server: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
        let limit = (secs + 30).to_string();
        Command::new("ip")
            .args([
                "netns", "exec", client, "timeout", &limit, "iperf3", "-c", server_ip, "-p", "5201",
            ])
            .args(["-t", &secs.to_string(), "-i", "1", "-J"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iperf3 client")
    }

    /// Waits for a client from `iperf_start` and returns its JSON report.
    pub fn iperf_json(client: Child) -> serde_json::Value {
        let out = client.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "iperf3 output not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs iperf3 TCP from `client` to a server started in `server`; returns received bits/s.
    pub fn iperf(
        &self,
        client: &str,
        server: &str,
        server_ip: &str,
        secs: u32,
        extra: &[&str],
    ) -> f64 {
        let v = Self::iperf_json(self.iperf_start(client, server, server_ip, secs, extra));
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .or_else(|| v["end"]["sum"]["bits_per_second"].as_f64());
        bps.unwrap_or_else(|| panic!("iperf3 failed: {}", v["error"]))
    }

    pub fn routes(&self, i: usize) -> String {
        sh_ok(&["ip", "-n", &self.node(i), "route", "show", "proto", "77"])
    }

    pub fn neighbours(&self, i: usize, dev: &str) -> String {
        sh_ok(&["ip", "-n", &self.node(i), "neigh", "show", "dev", dev])
    }

    pub fn write_nodes_file(&self, text: &str) {
        let tmp = self.dir.join("nodes.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.nodes_file()).unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("OVERLAYD_KEEP_LAB").is_some() {
            eprintln!(
                "OVERLAYD_KEEP_LAB: leaving {} up (cluster.sh down {})",
                self.prefix, self.prefix
            );
            return;
        }
        for i in 0..self.daemons.len() {
            if let Some(mut c) = self.daemons[i].take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = Command::new("bash")
            .args([SCRIPT, "down", &self.prefix])
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The fake Kubernetes API server listening on 198.18.0.254:6443 inside the lab's switch
/// namespace, and a kubeconfig for it. The socket is created by a short-lived thread that
/// entered that namespace; the test process itself never leaves its own.
pub fn fake_api_server_in_switch(lab: &Lab) -> (fdb_sync::fake_apiserver::FakeApiServer, PathBuf) {
    let ns = PathBuf::from(format!("/run/netns/{}sw", lab.prefix));
    let binder = move || -> std::io::Result<std::net::TcpListener> {
        let ns = ns.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            std::net::TcpListener::bind("198.18.0.254:6443")
        })
        .join()
        .expect("bind thread")
    };
    let server = fdb_sync::fake_apiserver::FakeApiServer::start(Box::new(binder))
        .expect("fake API server in the switch ns");
    let kc = server.write_kubeconfig(&lab.dir).unwrap();
    (server, kc)
}

/// GET `path` from overlayd's default --http-addr inside node `i`'s namespace.
pub fn http_get(lab: &Lab, i: usize, path: &str) -> String {
    let url = format!("http://127.0.0.1:9102{path}");
    let out = lab.exec(
        &lab.node(i),
        &[
            "python3",
            "-c",
            "import sys,urllib.request;sys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=3).read().decode())",
            &url,
        ],
    );
    assert!(
        out.status.success(),
        "GET {url} in {}: {}",
        lab.node(i),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of one series (`name{labels}` exactly as exposed) in a /metrics text.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// `overlayd status --json` run inside node `i`'s namespace.
pub fn status_json(lab: &Lab, i: usize) -> serde_json::Value {
    let out = lab.exec(&lab.node(i), &[OVERLAYD, "status", "--json"]);
    assert!(
        out.status.success(),
        "overlayd status --json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
