//! Test lab: a cluster of network-namespace nodes built by deploy/local/cluster.sh, with
//! overlayd daemons the test starts and stops. Needs root: `Lab::new` returns `None` (skip)
//! without it, and panics instead when `CI` is set, so CI proves the tests ran.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/cluster.sh");
pub const OVERLAYD: &str = env!("CARGO_BIN_EXE_overlayd");

/// Labs of one test binary run one at a time, except those built with [`Lab::new_shared`],
/// which run beside each other (never beside an exclusive one).
static SERIAL: RwLock<()> = RwLock::new(());

/// What a lab holds of [`SERIAL`] while it lives.
enum Turn {
    Exclusive(RwLockWriteGuard<'static, ()>),
    Shared(RwLockReadGuard<'static, ()>),
}

/// The overlayd-cni binary the pods are wired with: the static build that deploy/Dockerfile
/// ships, made by deploy/build-cni-static.sh (same profile as these tests) on first use.
pub fn cni_plugin() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let profile = if OVERLAYD.contains("/release/") {
            "release"
        } else {
            "dev"
        };
        let out = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/build-cni-static.sh"
            ))
            .arg(profile)
            .stderr(Stdio::inherit())
            .output()
            .expect("run deploy/build-cni-static.sh");
        assert!(out.status.success(), "cannot build the static overlayd-cni");
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(path.exists(), "{} missing after the build", path.display());
        path
    })
    .clone()
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
    /// Extra environment for the overlayd daemons started after it is set (e.g. `PATH`).
    pub daemon_env: Vec<(String, String)>,
    /// Daemons replaced by an overlapping start, until the test stops them.
    retired: Vec<Option<Child>>,
    /// Per node: how many overlapping starts happened (names the current log file).
    generation: Vec<usize>,
    wired: Vec<bool>,
    _turn: Turn,
}

impl Lab {
    /// Builds `nodes` nodes with `pods` pods each, or `None` when the test must be skipped.
    pub fn new(test: &str, nodes: usize, pods: usize) -> Option<Lab> {
        Self::new_with_env(test, nodes, pods, &[])
    }

    /// As [`Lab::new`], with environment for `cluster.sh up` (e.g. `REMOTE_NODES`, `RMTU`).
    pub fn new_with_env(
        test: &str,
        nodes: usize,
        pods: usize,
        env: &[(&str, &str)],
    ) -> Option<Lab> {
        Self::build(test, nodes, pods, env, false)
    }

    /// As [`Lab::new_with_env`] for a test that may run beside other such tests of its binary
    /// (at most `--test-threads` at once; never beside an exclusive lab from [`Lab::new`] or
    /// [`Lab::new_with_env`]): for tests that mostly wait, and measure no throughput and no
    /// deadline short enough for a busy machine to miss. Labs never share names, addresses
    /// or files.
    pub fn new_shared(test: &str, nodes: usize, pods: usize, env: &[(&str, &str)]) -> Option<Lab> {
        Self::build(test, nodes, pods, env, true)
    }

    fn build(
        test: &str,
        nodes: usize,
        pods: usize,
        env: &[(&str, &str)],
        shared: bool,
    ) -> Option<Lab> {
        if !privileged(test) {
            return None;
        }
        let turn = if shared {
            Turn::Shared(
                SERIAL
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        } else {
            Turn::Exclusive(
                SERIAL
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        };
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
            daemon_env: Vec::new(),
            retired: (0..=nodes).map(|_| None).collect(),
            generation: vec![0; nodes + 1],
            wired: vec![false; nodes + 1],
            _turn: turn,
        };
        let out = run(Command::new("bash")
            .args([
                SCRIPT,
                "up",
                &lab.prefix,
                lab.dir.to_str().unwrap(),
                &nodes.to_string(),
                &pods.to_string(),
            ])
            .envs(env.iter().copied()));
        assert!(
            out.status.success(),
            "cluster.sh up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
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

    /// The log of the current overlayd of node `i`.
    pub fn log_file(&self, i: usize) -> PathBuf {
        match self.generation[i] {
            0 => self.dir.join(format!("overlayd{i}.log")),
            g => self.dir.join(format!("overlayd{i}.{g}.log")),
        }
    }

    /// Node `i`'s handover socket (each node its own, as each host has its own /run).
    pub fn handover_socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("handover{i}.sock"))
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

    /// As [`Lab::make_kernel_node`] with Flannel's device `flannel.<vni>` on UDP `port`.
    pub fn make_kernel_node_with(&mut self, i: usize, vni: u32, port: u16) {
        sh_ok(&[
            "bash",
            SCRIPT,
            "kernel-node",
            &self.prefix,
            &i.to_string(),
            &self.nodes.to_string(),
            self.dir.to_str().unwrap(),
            &vni.to_string(),
            &port.to_string(),
        ]);
        self.wire(i);
    }

    /// Programs node `i` as a whole Flannel node (cluster.sh flannel-node): kernel vxlan
    /// `flannel.1`, flanneld's masquerade chains and nftables tables, and its pods wired by
    /// Flannel's delegate (reference bridge + host-local, network `cbr0`, IPAM in
    /// `dir/ipam<i>/cbr0`).
    pub fn make_flannel_node(&mut self, i: usize) {
        sh_ok(&[
            "bash",
            SCRIPT,
            "flannel-node",
            &self.prefix,
            &i.to_string(),
            &self.nodes.to_string(),
            self.dir.to_str().unwrap(),
            &self.pods.to_string(),
        ]);
        self.wired[i] = true;
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
        self.spawn_env(i, source, extra, &[]);
    }

    /// As [`Lab::start_with`], with extra environment variables for overlayd.
    pub fn start_env(&mut self, i: usize, extra: &[&str], env: &[(&str, &str)]) {
        let nodes_file = self.nodes_file();
        let source = ["--nodes-file".as_ref(), nodes_file.as_os_str()];
        self.spawn_env(i, &source, extra, env);
        self.wait_ready(i);
    }

    /// Starts a second overlayd on node `i` while the first still runs (a rolling update
    /// with maxSurge) and waits until it is ready; the first is kept for `stop_retired`.
    pub fn start_overlapping(&mut self, i: usize) {
        assert!(
            self.retired[i].is_none(),
            "node {i} already has a retired overlayd"
        );
        self.retired[i] = self.daemons[i].take();
        self.generation[i] += 1;
        self.start(i);
    }

    /// SIGTERMs the overlayd `start_overlapping` replaced; true when it exited 0.
    pub fn stop_retired(&mut self, i: usize) -> bool {
        self.retired[i].take().is_none_or(terminate)
    }

    /// The log of the overlayd `start_overlapping` replaced.
    pub fn retired_log(&self, i: usize) -> String {
        let g = self.generation[i] - 1;
        let path = match g {
            0 => self.dir.join(format!("overlayd{i}.log")),
            g => self.dir.join(format!("overlayd{i}.{g}.log")),
        };
        read(&path)
    }

    /// SIGKILLs overlayd on node `i` (a crash) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.daemons[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `overlayd cleanup` in node `i` with `extra` arguments.
    pub fn cleanup(&self, i: usize, extra: &[&str]) -> Output {
        let sock = self.handover_socket(i);
        let mut args = vec![
            OVERLAYD,
            "cleanup",
            "--handover-socket",
            sock.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.exec(&self.node(i), &args)
    }

    fn spawn_env(
        &mut self,
        i: usize,
        source: &[&std::ffi::OsStr],
        extra: &[&str],
        env: &[(&str, &str)],
    ) {
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
            .arg("--handover-socket")
            .arg(self.handover_socket(i))
            .args(extra)
            .envs(self.daemon_env.iter().cloned())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn overlayd");
        self.daemons[i] = Some(child);
    }

    /// Starts overlayd on node `i` with exactly `args` (nothing added: no node name, paths or
    /// queues) and the environment variables `env`; stderr goes to the node's log. Does not
    /// wait.
    pub fn spawn_exact(&mut self, i: usize, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) {
        assert!(
            self.daemons[i].is_none(),
            "overlayd already running on node {i}"
        );
        let log = std::fs::File::create(self.log_file(i)).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node(i), OVERLAYD])
            .args(args)
            .env_remove("NODE_NAME")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.daemons[i] = Some(cmd.spawn().expect("spawn overlayd"));
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
        self.daemons[i].take().is_none_or(terminate)
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
        self.iperf_start_port(client, server, server_ip, 5201, secs, extra)
    }

    /// Starts a one-shot iperf3 server in `server` on TCP `port` and waits until it listens.
    pub fn iperf_server(&self, server: &str, port: u16) {
        let port = port.to_string();
        let out = self.exec(server, &["iperf3", "-s", "-1", "-D", "-p", &port]);
        assert!(
            out.status.success(),
            "iperf3 server: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `-D` returns once it forked; the daemon binds right after.
        let filter = format!("sport = :{port}");
        let listening = wait_until(Duration::from_secs(10), || {
            let out = self.exec(server, &["ss", "-H", "-l", "-t", "-n", &filter]);
            !out.stdout.trim_ascii().is_empty()
        });
        assert!(
            listening,
            "iperf3 server in {server} not listening on port {port}"
        );
    }

    /// As [`Lab::iperf_start`] with the server on TCP `port`.
    pub fn iperf_start_port(
        &self,
        client: &str,
        server: &str,
        server_ip: &str,
        port: u16,
        secs: u32,
        extra: &[&str],
    ) -> Child {
        self.iperf_server(server, port);
        Self::iperf_client(client, server_ip, port, secs, extra)
    }

    /// Starts, in the background, an iperf3 TCP client in `client` to `server_ip:port` for
    /// `secs` seconds (1 s intervals, JSON on stdout); collect it with `iperf_json`.
    pub fn iperf_client(
        client: &str,
        server_ip: &str,
        port: u16,
        secs: u32,
        extra: &[&str],
    ) -> Child {
        let limit = (secs + 30).to_string();
        Command::new("ip")
            .args([
                "netns", "exec", client, "timeout", &limit, "iperf3", "-c", server_ip, "-p",
            ])
            .arg(port.to_string())
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

    /// Received bits/s of an iperf3 TCP report.
    fn iperf_bps(v: &serde_json::Value) -> f64 {
        let bps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .or_else(|| v["end"]["sum"]["bits_per_second"].as_f64());
        bps.unwrap_or_else(|| panic!("iperf3 failed: {}", v["error"]))
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
        Self::iperf_bps(&Self::iperf_json(
            self.iperf_start(client, server, server_ip, secs, extra),
        ))
    }

    /// Runs the iperf3 TCP transfers `runs` (client namespace, server namespace, server IP,
    /// extra client arguments) at the same time for `secs` seconds, each to its own server
    /// (a server namespace serving several gets one port per transfer); returns the received
    /// bits/s of each, in the order of `runs`.
    pub fn iperf_concurrent(
        &self,
        runs: &[(String, String, String, &[&str])],
        secs: u32,
    ) -> Vec<f64> {
        let ports: Vec<u16> = runs
            .iter()
            .enumerate()
            .map(|(k, (_, server, _, _))| {
                let before = runs[..k].iter().filter(|r| r.1 == *server).count();
                5201 + u16::try_from(before).unwrap()
            })
            .collect();
        for ((_, server, _, _), port) in runs.iter().zip(&ports) {
            self.iperf_server(server, *port);
        }
        let clients: Vec<Child> = runs
            .iter()
            .zip(&ports)
            .map(|((client, _, ip, extra), port)| {
                Self::iperf_client(client, ip, *port, secs, extra)
            })
            .collect();
        clients
            .into_iter()
            .map(|c| Self::iperf_bps(&Self::iperf_json(c)))
            .collect()
    }

    pub fn routes(&self, i: usize) -> String {
        sh_ok(&["ip", "-n", &self.node(i), "route", "show", "proto", "77"])
    }

    pub fn neighbours(&self, i: usize, dev: &str) -> String {
        sh_ok(&["ip", "-n", &self.node(i), "neigh", "show", "dev", dev])
    }

    /// Adds a host `PREFIXx` at `ip` on the underlay: no node, no route to pod CIDRs.
    pub fn add_stranger(&self, ip: &str) -> String {
        sh_ok(&["bash", SCRIPT, "stranger", &self.prefix, ip]);
        format!("{}x", self.prefix)
    }

    /// `overlayd status --json` run inside node `i`'s namespace.
    pub fn status_json(&self, i: usize) -> serde_json::Value {
        let out = self.exec(&self.node(i), &[OVERLAYD, "status", "--json"]);
        assert!(
            out.status.success(),
            "overlayd status --json: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Starts a TCP server in `ns` on `port` that answers every connection with the peer
    /// address it sees (HTTP/1.0, so `curl` prints it); stopped when the guard drops.
    pub fn whoami_server(&self, ns: &str, port: u16) -> ChildGuard {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c"])
            .arg(
                "import socket,sys\n\
                 s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 s.bind(('0.0.0.0',int(sys.argv[1])));s.listen(64)\n\
                 while True:\n\
                 \x20c,a=s.accept()\n\
                 \x20try:\n\
                 \x20\x20c.settimeout(3);c.recv(4096);b=a[0].encode()\n\
                 \x20\x20c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n'%len(b)+b)\n\
                 \x20except OSError: pass\n\
                 \x20c.close()",
            )
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 whoami server");
        ChildGuard(child)
    }

    /// The peer address the whoami server at `ip:port` saw for a connection from `ns`
    /// (`None`: no answer within 2 s).
    pub fn whoami(&self, ns: &str, ip: &str, port: u16) -> Option<String> {
        let out = self.exec(
            ns,
            &["curl", "-s", "-m", "2", &format!("http://{ip}:{port}/")],
        );
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
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
        // SIGKILL leaves the persistent devices; deleting the namespaces removes them.
        for c in self.daemons.iter_mut().chain(self.retired.iter_mut()) {
            if let Some(mut c) = c.take() {
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

/// A tcpdump writing a pcap inside a namespace; stopped (and waited for) on `stop` or drop.
pub struct Capture {
    child: Option<Child>,
    pub pcap: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i IFACE -w PCAP FILTER...` in `ns` and waits until it listens.
    pub fn start(ns: &str, iface: &str, pcap: PathBuf, filter: &[&str]) -> Capture {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "timeout", "120", "tcpdump", "-i", iface,
            ])
            // Headers only: enough for VXLAN + inner Ethernet/IP/TCP, small files under load.
            .args(["-U", "-n", "-s", "256", "-w"])
            .arg(&pcap)
            .args(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        let cap = Capture {
            child: Some(child),
            pcap,
        };
        // tcpdump creates the file once it listens.
        let up = wait_until(Duration::from_secs(10), || cap.pcap.exists());
        assert!(up, "tcpdump did not start in {ns}");
        std::thread::sleep(Duration::from_millis(300));
        cap
    }

    /// Stops the capture; the pcap is complete afterwards.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            std::thread::sleep(Duration::from_millis(300));
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .stderr(std::process::Stdio::null())
                .status();
            let _ = c.wait();
        }
    }

    /// The number of captured packets that match the tcpdump `filter`.
    pub fn count(&self, filter: &str) -> usize {
        let out = run(Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.pcap)
            .arg(filter));
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// `tcpdump -v` text of the packets matching `filter` (for failure messages).
    pub fn text(&self, filter: &str) -> String {
        let out = run(Command::new("tcpdump")
            .args(["-n", "-v", "-r"])
            .arg(&self.pcap)
            .arg(filter));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills and reaps a helper process on drop (also when the test panics).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERMs `child` and waits (checking every 5 ms, so a stop-and-start measures overlayd,
/// not this loop); true when it exited 0 within 10 s.
pub fn terminate(mut child: Child) -> bool {
    // A child that has exited already (an overlayd that stopped on an error) is fine.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(std::process::Stdio::null())
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
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `ping -i 0.005` from a pod in the background: one echo every 5 ms for `count` echoes;
/// `finish` returns (sent, received).
pub struct PingRun(Child);

impl PingRun {
    pub fn start(lab: &Lab, from: &str, ip: &str, count: u32) -> PingRun {
        let child = Command::new("ip")
            .args([
                "netns", "exec", from, "ping", "-q", "-n", "-i", "0.005", "-W", "1",
            ])
            .args(["-c", &count.to_string(), ip])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ping");
        let _ = lab;
        PingRun(child)
    }

    pub fn finish(self) -> (u32, u32) {
        let out = self.0.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| {
                panic!(
                    "no ping summary: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let num = |word: &str| -> u32 {
            let words: Vec<&str> = line.split([',', ' ']).filter(|w| !w.is_empty()).collect();
            let at = words.iter().position(|w| *w == word).unwrap();
            words[at - 1].parse().unwrap()
        };
        (num("packets"), num("received"))
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
