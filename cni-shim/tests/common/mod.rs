//! Helpers for the root integration tests: namespaces and temp dirs that clean up on drop,
//! and a bounded way to run the plugin inside a test-made "node" namespace (so the bridge and
//! every device live in namespaces the test owns, never in the host's).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_overlayd-cni");
pub const REFERENCE_DIR: &str = "/usr/lib/cni";
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// True when the test may run. Not root: skip with a message, or fail when `CI` is set so CI
/// proves these tests ran.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root, and CI is set: refusing to skip");
    }
    eprintln!("SKIP {test}: needs root (network namespaces)");
    false
}

pub fn unique(tag: &str) -> String {
    format!(
        "ocni-{}-{}-{}",
        tag,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn run_checked(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        Self { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace; returns stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("spawn");
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn try_exec(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Interface names in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.exec(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test node: its namespace (holding the bridge), subnet.env and IPAM dir.
pub struct Node {
    pub ns: Netns,
    pub dir: TempDir,
    pub network: String,
}

impl Node {
    /// `subnet` is FLANNEL_SUBNET, e.g. "10.244.1.1/24".
    pub fn new(subnet: &str) -> Self {
        Self::with_subnet_env(&format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        ))
    }

    pub fn with_subnet_env(text: &str) -> Self {
        let ns = Netns::new("node");
        let dir = TempDir::new("node");
        std::fs::write(dir.0.join("subnet.env"), text).unwrap();
        Self {
            ns,
            dir,
            network: "testnet".into(),
        }
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.0.join("subnet.env")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.0.join("ipam").join(&self.network)
    }

    /// The plugin config for `version`, with `extra` keys merged in.
    pub fn conf(&self, version: &str, extra: Value) -> Value {
        let mut c = serde_json::json!({
            "cniVersion": version,
            "name": self.network,
            "type": "overlayd-cni",
            "subnetFile": self.subnet_file(),
            "dataDir": self.dir.0.join("ipam"),
        });
        if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
            c.extend(e);
        }
        c
    }

    /// Allocation files (IP-named) in the IPAM dir.
    pub fn ip_files(&self) -> Vec<String> {
        match std::fs::read_dir(self.ipam_dir()) {
            Ok(rd) => rd
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// DELs each `(container ID, pod)` with `conf`, asserting success, then asserts that no
    /// address stays allocated.
    pub fn del_all(&self, conf: &Value, pods: &[(&str, &Netns)]) {
        for (id, pod) in pods {
            let o = call(
                &self.ns.name,
                &Call::new("DEL", id, &pod.path(), "eth0"),
                conf,
            );
            assert!(o.ok, "DEL {id}: {}", o.stdout);
        }
        assert!(self.ip_files().is_empty(), "{:?}", self.ip_files());
    }

    pub fn veths(&self) -> Vec<String> {
        self.ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("veth"))
            .collect()
    }
}

/// One CNI invocation.
pub struct Call<'a> {
    pub bin: &'a str,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
}

impl<'a> Call<'a> {
    pub fn new(command: &'a str, container_id: &'a str, netns: &'a str, ifname: &'a str) -> Self {
        Self {
            bin: PLUGIN,
            command,
            container_id,
            netns,
            ifname,
            args: "",
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// The CNI error code (panics if this was a success).
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected failure, got success: {}", self.stdout);
        let v = self.json();
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "error without msg: {v}"
        );
        v["code"].as_u64().unwrap_or_else(|| panic!("no code: {v}"))
    }
}

/// Starts the plugin (or any CNI plugin) inside `node_ns` with `conf` on stdin.
pub fn spawn(node_ns: &str, call: &Call<'_>, conf: &Value) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node_ns, call.bin])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .env("CNI_PATH", REFERENCE_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn plugin");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(conf.to_string().as_bytes()).unwrap();
    drop(stdin);
    child
}

/// Waits at most `limit` for `child`, killing it after.
pub fn finish(mut child: Child, limit: Duration) -> Outcome {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("plugin did not finish within {limit:?}");
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    let out = child.wait_with_output().expect("output");
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn call(node_ns: &str, c: &Call<'_>, conf: &Value) -> Outcome {
    finish(spawn(node_ns, c, conf), Duration::from_secs(30))
}

pub fn with_prev(mut conf: Value, prev: &Value) -> Value {
    conf["prevResult"] = prev.clone();
    conf
}

pub fn reference_plugins_present(test: &str, names: &[&str]) -> bool {
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !Path::new(REFERENCE_DIR).join(n).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: reference plugins {missing:?} missing in {REFERENCE_DIR} (apt-get install containernetworking-plugins)");
    }
    eprintln!("SKIP {test}: reference plugins {missing:?} missing in {REFERENCE_DIR}");
    false
}
