//! etcd mode on a real etcd (Debian's etcd-server) run by the test inside the lab's switch
//! namespace: a 3-member cluster for the overlay, its leader killed and the whole cluster
//! stopped for 30 s under iperf3 load; a kernel-vxlan node whose lease the test writes as
//! flanneld writes it; leases lost and taken by others; renewal failures; TLS with client
//! certificates and user/password authentication; 20 nodes racing for 15 subnets; dual-stack
//! leases (`EnableIPv6`) taken, reused, renewed and read back beside one flanneld wrote;
//! dual-stack and IPv6-only (`EnableIPv4: false`, etcd on an IPv6 address) daemons whose pods
//! ping each other.
//!
//! Needs root (namespaces), `etcd`, `openssl`, `iperf3`; skipped without root, failed under CI.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{sh_ok, wait_until, Lab, SCRIPT};
use etcd_client::{Client, ConnectOptions, GetOptions, Permission};

const PREFIX: &str = "/coreos.com/network";
/// Lease TTL for the daemons (test-only variable; Flannel's is 24 h): renewals every few
/// seconds, expiry within the test.
const TTL: &str = "8";

/// An etcd cluster of `n` members in the lab's switch namespace, at 198.18.0.251.. (client
/// port 2379, peer port 2380). Members are killed on drop.
struct Etcd {
    ns: String,
    dir: PathBuf,
    ips: Vec<String>,
    tls: Option<Certs>,
    members: Vec<Option<Child>>,
}

#[derive(Clone)]
struct Certs {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Certs {
    /// A CA, a server certificate for `ips` and a client certificate, made with openssl.
    fn make(dir: &Path, ips: &[String]) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        let p = |n: &str| dir.join(n);
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let key = |path: &Path| {
            sh_ok(&[
                "openssl",
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &s(path),
            ]);
        };
        key(&p("ca.key"));
        sh_ok(&[
            "openssl",
            "req",
            "-x509",
            "-new",
            "-key",
            &s(&p("ca.key")),
            "-subj",
            "/CN=overlayd-test-ca",
            "-days",
            "2",
            "-out",
            &s(&p("ca.pem")),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        let sign = |name: &str, cn: &str, ext: &str| {
            key(&p(&format!("{name}.key")));
            sh_ok(&[
                "openssl",
                "req",
                "-new",
                "-key",
                &s(&p(&format!("{name}.key"))),
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                &s(&p(&format!("{name}.csr"))),
            ]);
            std::fs::write(p(&format!("{name}.ext")), ext).unwrap();
            sh_ok(&[
                "openssl",
                "x509",
                "-req",
                "-in",
                &s(&p(&format!("{name}.csr"))),
                "-CA",
                &s(&p("ca.pem")),
                "-CAkey",
                &s(&p("ca.key")),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &s(&p(&format!("{name}.ext"))),
                "-out",
                &s(&p(&format!("{name}.pem"))),
            ]);
        };
        let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        sign(
            "server",
            "etcd",
            &format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={}\n",
                sans.join(",")
            ),
        );
        sign(
            "client",
            "overlayd",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        );
        Certs {
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
        }
    }
}

/// `ip:port` for a URL (`[ip]:port` for IPv6).
fn host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

impl Etcd {
    fn start(lab: &Lab, n: usize, tls: Option<Certs>) -> Etcd {
        let ips = (0..n).map(|k| format!("198.18.0.{}", 251 + k)).collect();
        Etcd::start_at(lab, ips, tls)
    }

    /// As [`Etcd::start`] on IPv6 addresses fd00:18::fb.. of the switch, for an IPv6-only
    /// underlay (cluster.sh IPV6ONLY=1), where the nodes have no IPv4 to reach etcd with.
    fn start_v6(lab: &Lab, n: usize) -> Etcd {
        let ips = (0..n).map(|k| format!("fd00:18::{:x}", 251 + k)).collect();
        Etcd::start_at(lab, ips, None)
    }

    fn start_at(lab: &Lab, ips: Vec<String>, tls: Option<Certs>) -> Etcd {
        let ns = format!("{}sw", lab.prefix);
        let n = ips.len();
        for ip in &ips {
            let (len, extra): (&str, &[&str]) = if ip.contains(':') {
                // No duplicate address detection: etcd binds it at once.
                ("64", &["nodad"])
            } else {
                ("24", &[])
            };
            let addr = format!("{ip}/{len}");
            let mut args = vec!["ip", "-n", &ns, "addr", "add", &addr, "dev", "br0"];
            args.extend_from_slice(extra);
            sh_ok(&args);
        }
        let mut e = Etcd {
            ns,
            dir: lab.dir.join("etcd"),
            ips,
            tls,
            members: (0..n).map(|_| None).collect(),
        };
        for k in 0..n {
            e.start_member(k);
        }
        let ok = wait_until(Duration::from_secs(20), || {
            e.try_block(|mut c| async move { c.put("/probe", "1", None).await.is_ok() })
                .unwrap_or(false)
        });
        assert!(
            ok,
            "etcd cluster did not come up; logs in {}",
            e.dir.display()
        );
        e
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.ips
            .iter()
            .map(|ip| format!("{}://{}", self.scheme(), host_port(ip, 2379)))
            .collect()
    }

    fn start_member(&mut self, k: usize) {
        assert!(self.members[k].is_none());
        std::fs::create_dir_all(&self.dir).unwrap();
        let cluster: Vec<String> = self
            .ips
            .iter()
            .enumerate()
            .map(|(j, ip)| format!("m{j}=http://{}", host_port(ip, 2380)))
            .collect();
        let client_url = format!("{}://{}", self.scheme(), host_port(&self.ips[k], 2379));
        let peer_url = format!("http://{}", host_port(&self.ips[k], 2380));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("m{k}.log")))
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "etcd"])
            .args(["--name", &format!("m{k}")])
            .arg("--data-dir")
            .arg(self.dir.join(format!("m{k}.data")))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.ns])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        self.members[k] = Some(cmd.spawn().expect("etcd (install etcd-server)"));
    }

    fn kill(&mut self, k: usize) {
        if let Some(mut c) = self.members[k].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn options(&self, user: Option<(&str, &str)>) -> ConnectOptions {
        let mut o = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        if let Some(t) = &self.tls {
            o = o.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(
                        std::fs::read(&t.ca).unwrap(),
                    ))
                    .identity(etcd_client::Identity::from_pem(
                        std::fs::read(&t.client_cert).unwrap(),
                        std::fs::read(&t.client_key).unwrap(),
                    )),
            );
        }
        if let Some((u, p)) = user {
            o = o.with_user(u, p);
        }
        o
    }

    /// Runs `f` with a client connected to every member from inside the switch namespace;
    /// `None` when no connection could be made.
    fn try_block<T, F, Fut>(&self, f: F) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        self.try_block_on(self.running_endpoints(), None, f)
    }

    /// The endpoints of the members running now: the test's own client (like an operator's
    /// etcdctl) talks to those, so that a member the test killed is not the one it picks.
    fn running_endpoints(&self) -> Vec<String> {
        self.endpoints()
            .into_iter()
            .zip(&self.members)
            .filter(|(_, m)| m.is_some())
            .map(|(e, _)| e)
            .collect()
    }

    fn try_block_on<T, F, Fut>(
        &self,
        eps: Vec<String>,
        user: Option<(&str, &str)>,
        f: F,
    ) -> Option<T>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let opts = self.options(user);
        in_ns(&self.ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let c =
                    tokio::time::timeout(Duration::from_secs(5), Client::connect(eps, Some(opts)))
                        .await
                        .ok()?
                        .ok()?;
                tokio::time::timeout(Duration::from_secs(20), f(c))
                    .await
                    .ok()
            })
        })
    }

    fn block<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        self.try_block(f).expect("etcd reachable")
    }

    fn put(&self, key: &str, value: &str) {
        let (k, v) = (key.to_string(), value.to_string());
        self.block(move |mut c| async move { c.put(k, v, None).await.map(|_| ()) })
            .expect("etcd put");
    }

    fn delete(&self, key: &str) {
        let k = key.to_string();
        self.block(move |mut c| async move { c.delete(k, None).await.map(|_| ()) })
            .expect("etcd delete");
    }

    /// `<prefix>/subnets/` as (subnet key, JSON value).
    fn leases(&self) -> Vec<(String, serde_json::Value)> {
        self.block(|mut c| async move {
            let r = c
                .get(
                    format!("{PREFIX}/subnets/"),
                    Some(GetOptions::new().with_prefix()),
                )
                .await
                .expect("etcd get");
            r.kvs()
                .iter()
                .map(|kv| {
                    let key = kv
                        .key_str()
                        .unwrap()
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_string();
                    (key, serde_json::from_slice(kv.value()).unwrap())
                })
                .collect()
        })
    }

    /// The member that leads now.
    fn leader(&self) -> usize {
        for (k, ep) in self.endpoints().into_iter().enumerate() {
            if self.members[k].is_none() {
                continue;
            }
            let is = self.try_block_on(vec![ep], None, |mut c| async move {
                let s = c.status().await.ok()?;
                Some(s.leader() == s.header()?.member_id())
            });
            if is.flatten() == Some(true) {
                return k;
            }
        }
        panic!("no etcd leader");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for k in 0..self.members.len() {
            self.kill(k);
            // The data directories (100-300 MB each) go even when a failed test keeps the
            // lab's directory for its logs; the members' logs stay.
            let _ = std::fs::remove_dir_all(self.dir.join(format!("m{k}.data")));
        }
    }
}

/// Runs `f` on a thread inside network namespace `ns` (the test process never leaves its own).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn etcd_args(e: &Etcd) -> Vec<String> {
    vec!["--etcd-endpoints".into(), e.endpoints().join(",")]
}

/// Starts overlayd in etcd mode on node `i` (test TTL) and waits until it is ready.
fn start_etcd_node(lab: &mut Lab, i: usize, args: &[String]) {
    start_etcd_node_ttl(lab, i, args, TTL);
}

/// As [`start_etcd_node`] with a lease TTL of `ttl` seconds.
fn start_etcd_node_ttl(lab: &mut Lab, i: usize, args: &[String], ttl: &str) {
    let source: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    lab.daemon_env = vec![("OVERLAYD_TEST_ETCD_LEASE_TTL_SECS".into(), ttl.into())];
    lab.spawn(i, &source, &[]);
    lab.wait_ready(i);
}

/// Node `i`'s leased subnet as subnet.env says (`10.244.7.0/24`).
fn subnet_of(lab: &Lab, i: usize) -> String {
    let text = common::read(&lab.subnet_file(i));
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap_or_else(|| panic!("no FLANNEL_SUBNET in {text}"));
    let (ip, len) = v.split_once('/').unwrap();
    let o: Vec<u8> = ip.split('.').map(|x| x.parse().unwrap()).collect();
    format!("{}.{}.{}.0/{len}", o[0], o[1], o[2])
}

fn key_of(subnet: &str) -> String {
    subnet.replace('/', "-")
}

/// Pod `j` of node `i`'s IPv4 address, as its namespace shows it.
fn pod_addr(lab: &Lab, i: usize, j: usize) -> String {
    let out = sh_ok(&[
        "ip",
        "-n",
        &lab.pod(i, j),
        "-4",
        "-o",
        "addr",
        "show",
        "dev",
        "eth0",
    ]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {out}"))
        .to_string()
}

/// Programs the kernel-vxlan node `k` (flannel.1) for the lease `value` of `subnet`, as
/// flanneld's vxlan backend does for a lease it learns.
fn kernel_learns(lab: &Lab, k: usize, subnet: &str, value: &serde_json::Value) {
    let n = lab.node(k);
    let mac = value["BackendData"]["VtepMAC"].as_str().unwrap();
    let ip = value["PublicIP"].as_str().unwrap();
    let net = subnet.split('/').next().unwrap();
    sh_ok(&[
        "ip",
        "-n",
        &n,
        "neigh",
        "replace",
        net,
        "lladdr",
        mac,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    sh_ok(&[
        "ip",
        "-n",
        &n,
        "route",
        "replace",
        subnet,
        "via",
        net,
        "dev",
        "flannel.1",
        "onlink",
    ]);
    sh_ok(&[
        "bridge",
        "-n",
        &n,
        "fdb",
        "replace",
        mac,
        "dev",
        "flannel.1",
        "dst",
        ip,
        "self",
        "permanent",
    ]);
}

/// One iperf3 run's 1 s intervals (bits/s each).
fn intervals(v: &serde_json::Value) -> Vec<f64> {
    v["intervals"]
        .as_array()
        .unwrap_or_else(|| panic!("iperf3: {}", v["error"]))
        .iter()
        .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap())
        .collect()
}

fn readyz(lab: &Lab, i: usize) -> (u16, String) {
    let out = lab.exec(
        &lab.node(i),
        &[
            "curl",
            "-s",
            "-m",
            "2",
            "-w",
            "\n%{http_code}",
            "http://127.0.0.1:9102/readyz",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Three overlayd nodes and a kernel-vxlan Flannel node on a 3-member etcd: distinct leases,
/// pods reach each other both ways, a deleted lease takes its routes within 1 s, the leader
/// killed and then the whole cluster stopped for 30 s under iperf3 load interrupt nothing,
/// /readyz says why, and the leases survive (renewals retried). Alone on the machine (an
/// exclusive lab): its 1 s deadline and iperf3 load are not shared with another test.
#[test]
fn etcd_cluster_overlayd_and_flanneld_nodes() {
    let Some(mut lab) = Lab::new("etcd_cluster_overlayd_and_flanneld_nodes", 4, 1) else {
        return;
    };
    let mut etcd = Etcd::start(&lab, 3, None);
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#,
    );
    // Node 4 is a Flannel node with kernel vxlan; its lease as flanneld writes it.
    sh_ok(&[
        "bash",
        SCRIPT,
        "kernel-node",
        &lab.prefix,
        "4",
        "0",
        lab.dir.to_str().unwrap(),
    ]);
    lab.wire(4);
    let flanneld_lease = r#"{"PublicIP":"198.18.0.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:04"}}"#;
    etcd.put(&format!("{PREFIX}/subnets/10.244.4.0-24"), flanneld_lease);

    let args = etcd_args(&etcd);
    for i in 1..=3 {
        start_etcd_node(&mut lab, i, &args);
    }
    // Distinct subnets, each lease in Flannel's schema, each matching its subnet.env.
    let leases = etcd.leases();
    assert_eq!(leases.len(), 4, "{leases:?}");
    let mut subnets = Vec::new();
    for i in 1..=3 {
        let sn = subnet_of(&lab, i);
        let (_, v) = leases
            .iter()
            .find(|(k, _)| *k == key_of(&sn))
            .unwrap_or_else(|| panic!("no lease {sn} for node {i}: {leases:?}"));
        assert_eq!(v["PublicIP"], format!("198.18.0.{i}"));
        assert_eq!(v["BackendType"], "vxlan");
        assert_eq!(v["BackendData"]["VNI"], 1);
        assert!(v["PublicIPv6"].is_null());
        assert_ne!(sn, "10.244.4.0/24");
        assert!(!subnets.contains(&sn), "{sn} leased twice");
        subnets.push(sn.clone());
        // The kernel node learns the overlayd lease as flanneld would.
        kernel_learns(&lab, 4, &sn, v);
    }
    let pods: Vec<(String, String)> = (1..=4)
        .map(|i| (lab.pod(i, 1), pod_addr(&lab, i, 1)))
        .collect();
    for (a, (from, _)) in pods.iter().enumerate() {
        for (b, (_, to)) in pods.iter().enumerate() {
            if a != b {
                assert!(
                    lab.ping_within(from, to, Duration::from_secs(5)),
                    "pod of node {} cannot reach {to} (node {}):\n{}",
                    a + 1,
                    b + 1,
                    lab.log(1)
                );
            }
        }
    }

    // A deleted lease takes its route (and neighbour) with it within 1 s. Node 3 is stopped
    // first (as a leaving node: its lease stays until deleted or expired).
    assert!(lab.stop(3));
    let sn3 = subnets[2].clone();
    assert!(lab.routes(1).contains(&sn3));
    let t = Instant::now();
    etcd.delete(&format!("{PREFIX}/subnets/{}", key_of(&sn3)));
    let gone = wait_until(Duration::from_secs(3), || {
        !lab.routes(1).contains(&sn3) && !lab.routes(2).contains(&sn3)
    });
    let took = t.elapsed();
    assert!(
        gone && took < Duration::from_millis(1000),
        "routes to {sn3} gone: {gone} after {took:?}"
    );
    eprintln!("lease deleted -> routes gone on both nodes in {took:?}");

    // The leader killed under load: not one 1 s interval without traffic, and a lease
    // change after the election still reaches the kernel.
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    let ip2 = pod_addr(&lab, 2, 1);
    let client = lab.iperf_start(&p1, &p2, &ip2, 6, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let leader = etcd.leader();
    etcd.kill(leader);
    let v = Lab::iperf_json(client);
    let iv = intervals(&v);
    assert!(
        iv.len() >= 5 && iv.iter().all(|b| *b > 0.0),
        "interrupted by the leader kill: {iv:?}"
    );
    etcd.put(
        &format!("{PREFIX}/subnets/10.244.200.0-24"),
        r#"{"PublicIP":"198.18.0.200","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:c8"}}"#,
    );
    assert!(
        wait_until(Duration::from_secs(15), || lab
            .routes(1)
            .contains("10.244.200.0/24")),
        "no route for a lease written after the leader kill:\n{}",
        lab.log(1)
    );
    etcd.start_member(leader);

    // The whole cluster down for 30 s under load: forwarding goes on, /readyz says why.
    let client = lab.iperf_start(&p1, &p2, &ip2, 32, &[]);
    std::thread::sleep(Duration::from_secs(1));
    for k in 0..3 {
        etcd.kill(k);
    }
    let said = wait_until(Duration::from_secs(15), || {
        let (code, body) = readyz(&lab, 1);
        code == 503 && body.contains("etcd")
    });
    let (code, body) = readyz(&lab, 1);
    assert!(said, "/readyz while etcd is down: {code} {body}");
    eprintln!("/readyz with etcd down: {code} {body}");
    let v = Lab::iperf_json(client);
    let iv = intervals(&v);
    assert!(
        iv.len() >= 30 && iv.iter().all(|b| *b > 0.0),
        "interrupted while etcd was down: {iv:?}"
    );
    assert!(
        lab.routes(1).contains(&subnets[1]),
        "routes lost while etcd was down"
    );
    let renewals_before = lab.log(1).matches("lease renewed").count();
    for k in 0..3 {
        etcd.start_member(k);
    }
    assert!(
        wait_until(Duration::from_secs(30), || readyz(&lab, 1).0 == 200
            && readyz(&lab, 2).0 == 200),
        "not ready after etcd came back: {:?}\n{}",
        readyz(&lab, 1),
        lab.log(1)
    );
    // The leases were kept (renewals failed meanwhile and were retried): same subnets.
    let after = etcd.leases();
    for (i, sn) in subnets.iter().enumerate().take(2) {
        assert!(
            after
                .iter()
                .any(|(k, v)| *k == key_of(sn) && v["PublicIP"] == format!("198.18.0.{}", i + 1)),
            "node {} lost its lease {sn}: {after:?}",
            i + 1
        );
        assert_eq!(subnet_of(&lab, i + 1), *sn);
    }
    // A renewal after etcd is back (the TTL is 8 s, so one is due within a few seconds).
    assert!(
        wait_until(Duration::from_secs(15), || lab
            .log(1)
            .matches("lease renewed")
            .count()
            > renewals_before),
        "no renewal after etcd came back:\n{}",
        lab.log(1)
    );
    assert!(
        lab.ping_within(&p1, &pods[3].1, Duration::from_secs(5)),
        "node 1 -> kernel node after recovery"
    );
    assert!(
        lab.ping_within(&pods[3].0, &ip2, Duration::from_secs(5)),
        "kernel node -> node 2 after recovery"
    );
}

/// A lease lost while the node is cut off from etcd: taken again when still free; when
/// another node took it meanwhile, overlayd says so and moves to a new subnet, leaving no
/// route or address of the old one behind.
#[test]
fn etcd_lease_lost_and_taken() {
    let Some(mut lab) = Lab::new_shared("etcd_lease_lost_and_taken", 2, 1, &[]) else {
        return;
    };
    let etcd = Etcd::start(&lab, 1, None);
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    let args = etcd_args(&etcd);
    start_etcd_node(&mut lab, 1, &args);
    // Node 2's lease outlives this test: its cut-off below breaks only its watch.
    start_etcd_node_ttl(&mut lab, 2, &args, "120");
    let sn1 = subnet_of(&lab, 1);
    let ip1 = pod_addr(&lab, 1, 1);
    assert!(lab.ping_within(&lab.pod(2, 1), &ip1, Duration::from_secs(5)));
    let cut_node = |i: usize, on: bool| {
        let verb = if on { "add" } else { "del" };
        sh_ok(&[
            "ip",
            "-n",
            &lab.node(i),
            "route",
            verb,
            "blackhole",
            "198.18.0.251/32",
        ]);
    };
    let cut = |on: bool| cut_node(1, on);

    // 0. Node 2's watch breaks; meanwhile a lease comes and changes, and etcd compacts its
    //    history: the watch cannot resume where it broke and node 2 reads everything again
    //    (Flannel's ErrCompacted), learning the lease it missed.
    cut_node(2, true);
    assert!(
        wait_until(Duration::from_secs(10), || lab
            .log(2)
            .contains("lease watch failed")),
        "{}",
        lab.log(2)
    );
    let late = format!("{PREFIX}/subnets/10.244.201.0-24");
    etcd.put(&late, r#"{"PublicIP":"198.18.0.201","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:c9"}}"#);
    etcd.put(&late, r#"{"PublicIP":"198.18.0.202","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:ca"}}"#);
    etcd.block(|mut c| async move {
        let rev = c
            .get("/probe", None)
            .await?
            .header()
            .map_or(0, |h| h.revision());
        c.compact(rev, None).await.map(|_| ())
    })
    .expect("etcd compact");
    cut_node(2, false);
    assert!(
        wait_until(Duration::from_secs(10), || lab
            .log(2)
            .contains("revision compacted; reading all leases again")),
        "{}",
        lab.log(2)
    );
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .neighbours(2, "ovl.1")
            .contains("10.244.201.0 lladdr 02:00:00:00:00:ca")),
        "node 2 missed the lease written while it was cut off:\n{}",
        lab.neighbours(2, "ovl.1")
    );

    // 1. Cut off longer than the TTL: the lease expires (node 2 drops the route), then the
    //    same subnet is taken again.
    cut(true);
    assert!(
        wait_until(Duration::from_secs(20), || !lab.routes(2).contains(&sn1)),
        "lease of node 1 did not expire:\n{}",
        lab.log(2)
    );
    cut(false);
    assert!(
        wait_until(Duration::from_secs(20), || lab.routes(2).contains(&sn1)),
        "node 1 did not take its subnet again:\n{}",
        lab.log(1)
    );
    assert_eq!(subnet_of(&lab, 1), sn1);
    assert!(lab.log(1).contains("revoked or expired"), "{}", lab.log(1));
    assert!(lab.ping_within(&lab.pod(2, 1), &ip1, Duration::from_secs(5)));

    // 2. Cut off again; this time a flanneld node takes the subnet once it expired.
    cut(true);
    assert!(wait_until(Duration::from_secs(20), || !lab
        .routes(2)
        .contains(&sn1)));
    let other = r#"{"PublicIP":"198.18.0.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:4d"}}"#;
    etcd.put(&format!("{PREFIX}/subnets/{}", key_of(&sn1)), other);
    cut(false);
    let moved = wait_until(Duration::from_secs(20), || subnet_of(&lab, 1) != sn1);
    assert!(
        moved,
        "node 1 did not move to a new subnet:\n{}",
        lab.log(1)
    );
    let new1 = subnet_of(&lab, 1);
    assert!(
        lab.log(1)
            .contains("taken by the node with public IP 198.18.0.77"),
        "{}",
        lab.log(1)
    );
    // Node 2: the old subnet now goes to the new owner's VTEP, the new one to node 1.
    assert!(wait_until(Duration::from_secs(5), || lab
        .routes(2)
        .contains(&new1)));
    let old_net = sn1.split('/').next().unwrap();
    let neigh2 = lab.neighbours(2, "ovl.1");
    assert!(
        neigh2.contains(&format!("{old_net} lladdr 02:00:00:00:00:4d")),
        "{neigh2}"
    );
    // Node 1: no address of the old subnet on its device; the old subnet is a peer route.
    let addrs = sh_ok(&[
        "ip",
        "-n",
        &lab.node(1),
        "-4",
        "addr",
        "show",
        "dev",
        "ovl.1",
    ]);
    assert!(!addrs.contains(&format!("{old_net}/32")), "{addrs}");
    assert!(
        addrs.contains(&format!("{}/32", new1.split('/').next().unwrap())),
        "{addrs}"
    );
    // The old subnet's pods are still wired on node 1 (their gateway on cni0): the new holder
    // of that subnet is not routed over them, and the log says why.
    let old_gw = format!("{}.1", old_net.rsplit_once('.').unwrap().0);
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .log(1)
            .contains(&format!("covers this node's address {old_gw}"))),
        "{}",
        lab.log(1)
    );
    assert!(!lab.routes(1).contains(&sn1), "{}", lab.routes(1));
    // Once those pods are gone (their gateway with them), the old subnet becomes a peer route
    // to its new holder.
    sh_ok(&[
        "ip",
        "-n",
        &lab.node(1),
        "addr",
        "del",
        &format!("{old_gw}/{}", sn1.split('/').nth(1).unwrap()),
        "dev",
        "cni0",
    ]);
    assert!(
        wait_until(Duration::from_secs(5), || lab.routes(1).contains(&sn1)),
        "no route to the old subnet's new holder: {}\n{}",
        lab.routes(1),
        lab.log(1)
    );
    // Pods wired now get the new subnet (subnet.env); node 2 reaches node 1's device address.
    let dev1 = new1.split('/').next().unwrap().to_string();
    assert!(
        lab.ping_within(&lab.pod(2, 1), &dev1, Duration::from_secs(5)),
        "node 2's pod cannot reach node 1's new device address {dev1}"
    );
}

/// TLS with client certificates and user/password auth: overlayd takes a lease, and keeps it
/// through renewals that fail (the user loses write permission) and are retried. While it
/// waits for its first renewal, a wrong password is refused with a message on /readyz, and
/// 20 nodes race for the 15 subnets of a /20 with SubnetLen 24 through the same lease code:
/// no subnet is ever shared. Runs beside the other shared etcd tests.
#[test]
fn etcd_tls_auth_renewal_and_race() {
    let Some(mut lab) = Lab::new_shared("etcd_tls_auth_renewal_and_race", 2, 0, &[]) else {
        return;
    };
    let certs = Certs::make(&lab.dir.join("pki"), &["198.18.0.251".to_string()]);
    let etcd = Etcd::start(&lab, 1, Some(certs.clone()));
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    etcd.put(
        "/race/config",
        r#"{"Network":"10.5.0.0/20","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#,
    );
    etcd.block(|mut c| async move {
        c.user_add("root", "rootpw", None).await?;
        c.user_grant_role("root", "root").await?;
        c.role_add("flannel").await?;
        c.role_grant_permission("flannel", Permission::read_write(PREFIX).with_prefix())
            .await?;
        c.role_grant_permission("flannel", Permission::read_write("/race").with_prefix())
            .await?;
        c.user_add("flannel", "flannelpw", None).await?;
        c.user_grant_role("flannel", "flannel").await?;
        c.auth_enable().await?;
        Ok::<_, etcd_client::Error>(())
    })
    .expect("etcd auth setup");

    let mut args = etcd_args(&etcd);
    for (flag, path) in [
        ("--etcd-cafile", &certs.ca),
        ("--etcd-certfile", &certs.client_cert),
        ("--etcd-keyfile", &certs.client_key),
    ] {
        args.push(flag.into());
        args.push(path.to_str().unwrap().into());
    }
    // A wrong password: not ready, and /readyz says why.
    let mut wrong = args.clone();
    wrong.extend([
        "--etcd-username".into(),
        "flannel".into(),
        "--etcd-password".into(),
        "nope".into(),
    ]);
    args.extend([
        "--etcd-username".into(),
        "flannel".into(),
        "--etcd-password".into(),
        "flannelpw".into(),
    ]);
    // A 20 s lease: renewals every 13 s leave 6 s to retry a failed one before it runs out
    // (8 s left 2.7 s, which a loaded CI machine's slow etcd requests used up).
    start_etcd_node_ttl(&mut lab, 1, &args, "20");
    let sn = subnet_of(&lab, 1);
    // The wrong password and the race below run while node 1 waits for its first renewal
    // (13 s after the lease was taken); neither touches its lease.
    lab.daemon_env.clear();
    let source: Vec<&std::ffi::OsStr> = wrong.iter().map(std::ffi::OsStr::new).collect();
    lab.spawn(2, &source, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (code, body) = readyz(&lab, 2);
            code == 503 && body.contains("cannot connect to etcd") && body.contains("auth")
        }),
        "wrong password: {:?}\n{}",
        readyz(&lab, 2),
        lab.log(2)
    );
    assert!(lab.stop(2));

    // 20 racers, 15 subnets (SubnetMin 10.5.1.0 .. SubnetMax 10.5.15.0), TLS + auth.
    let cfg = fdb_sync::etcd::EtcdConfig {
        endpoints: etcd.endpoints(),
        prefix: "/race".into(),
        cafile: Some(certs.ca.clone()),
        certfile: Some(certs.client_cert.clone()),
        keyfile: Some(certs.client_key.clone()),
        username: Some("flannel".into()),
        password: Some("flannelpw".into()),
    };
    let results = in_ns(&etcd.ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let alloc = fdb_sync::etcd::Allocation {
                v4: Some(fdb_sync::etcd::SubnetRange {
                    network: "10.5.0.0/20".parse().unwrap(),
                    subnet_len: 24,
                    subnet_min: "10.5.1.0".parse().unwrap(),
                    subnet_max: "10.5.15.0".parse().unwrap(),
                }),
                v6: None,
            };
            let mut racers = Vec::new();
            for r in 0..20u8 {
                let cfg = cfg.clone();
                racers.push(tokio::spawn(async move {
                    let reg = fdb_sync::etcd::Registry::connect(&cfg).await.unwrap();
                    let me = fdb_sync::etcd::Me {
                        public_ip: Some(std::net::Ipv4Addr::new(198, 18, 1, r + 1)),
                        public_ipv6: None,
                        vni: 1,
                    };
                    reg.acquire(&alloc, &me, None, Duration::from_secs(60))
                        .await
                        .map(|l| l.subnets)
                        .map_err(|e| e.to_string())
                }));
            }
            let mut out = Vec::new();
            for r in racers {
                out.push(r.await.unwrap());
            }
            out
        })
    });
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let lost: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let mut distinct = won.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), won.len(), "a subnet was shared: {won:?}");
    assert!(
        won.len() <= 15 && won.len() + lost.len() == 20,
        "{results:?}"
    );
    assert!(
        lost.iter()
            .all(|e| e.contains("no free subnet left") || e.contains("lost the race")),
        "{lost:?}"
    );
    let retries = lost.iter().filter(|e| e.contains("lost the race")).count();
    assert!(
        won.len() + retries >= 15,
        "free subnets left unused: {results:?}"
    );
    let keys = etcd
        .try_block_on(
            etcd.endpoints(),
            Some(("root", "rootpw")),
            |mut c| async move {
                c.get(
                    "/race/subnets/",
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .map(|r| r.count())
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(usize::try_from(keys).unwrap(), won.len());
    eprintln!(
        "race: {} won distinct subnets, {} refused",
        won.len(),
        lost.len()
    );

    let renewed = |lab: &Lab| lab.log(1).matches("lease renewed").count();
    // Seen as it happens: the next renewal when one already passed during the above.
    let next = renewed(&lab) + 1;
    assert!(
        wait_until(Duration::from_secs(20), || renewed(&lab) >= next),
        "no renewal:\n{}",
        lab.log(1)
    );
    // Take write permission away right after a renewal; the next one fails and is retried.
    etcd.try_block_on(
        etcd.endpoints(),
        Some(("root", "rootpw")),
        |mut c| async move {
            c.role_revoke_permission(
                "flannel",
                PREFIX,
                Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
            )
            .await?;
            c.role_grant_permission("flannel", Permission::read(PREFIX).with_prefix())
                .await?;
            Ok::<_, etcd_client::Error>(())
        },
    )
    .expect("root reachable")
    .expect("revoke write");
    assert!(
        wait_until(Duration::from_secs(20), || lab
            .log(1)
            .contains("cannot renew the lease")),
        "renewal did not fail:\n{}",
        lab.log(1)
    );
    let before = renewed(&lab);
    etcd.try_block_on(
        etcd.endpoints(),
        Some(("root", "rootpw")),
        |mut c| async move {
            c.role_grant_permission("flannel", Permission::read_write(PREFIX).with_prefix())
                .await?;
            Ok::<_, etcd_client::Error>(())
        },
    )
    .expect("root reachable")
    .expect("grant write");
    assert!(
        wait_until(Duration::from_secs(10), || renewed(&lab) > before),
        "renewal not retried:\n{}",
        lab.log(1)
    );
    assert_eq!(subnet_of(&lab, 1), sn, "lease not kept");
    assert!(!lab.log(1).contains("revoked or expired"), "{}", lab.log(1));
    assert!(
        wait_until(Duration::from_secs(5), || readyz(&lab, 1).0 == 200),
        "{:?}",
        readyz(&lab, 1)
    );
}

/// flanneld's dual-stack lease value as its vxlan backend writes it (newSubnetAttrs,
/// json.Marshal of lease.LeaseAttrs): two devices, two MACs.
const FLANNELD_DUAL_LEASE: &str = r#"{"PublicIP":"198.18.0.9","PublicIPv6":"fd00:198:18::9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:1c:3d:00:11:22"},"BackendV6Data":{"VNI":1,"VtepMAC":"7a:4f:00:aa:bb:cc"}}"#;

/// Lease level, `EnableIPv6`: six nodes take dual-stack leases at once beside one flanneld
/// wrote; keys and values are flanneld's format, the IPv6 subnets distinct and inside
/// IPv6Network; a restart reuses the lease (found by PublicIP, and from subnet.env's subnets
/// when the key is gone); renewal keeps the IPv6 half; flanneld's lease is a peer with its
/// IPv6 side; an IPv4-only config replaces a dual-stack lease as Flannel does; of nodes that
/// race for one IPv6 subnet with different IPv4 subnets, exactly one keeps it; IPv6-only
/// leases (`EnableIPv4: false`) as flanneld writes them, each node keeping its own.
#[test]
fn etcd_dual_stack_leases() {
    use fdb_sync::etcd::{
        Allocation, EtcdConfig, LeaseEntry, LeaseSubnets, Me, Registry, SubnetRange,
    };
    let Some(lab) = Lab::new_shared("etcd_dual_stack_leases", 0, 0, &[]) else {
        return;
    };
    let etcd = Etcd::start(&lab, 1, None);
    let flanneld_key = "/ds/subnets/10.6.9.0-24&fd00:6:0:9::-64";
    etcd.put(flanneld_key, FLANNELD_DUAL_LEASE);
    let cfg = EtcdConfig {
        endpoints: etcd.endpoints(),
        prefix: "/ds".into(),
        cafile: None,
        certfile: None,
        keyfile: None,
        username: None,
        password: None,
    };
    let v4 = SubnetRange {
        network: "10.6.0.0/16".parse().unwrap(),
        subnet_len: 24,
        subnet_min: "10.6.1.0".parse().unwrap(),
        subnet_max: "10.6.255.0".parse().unwrap(),
    };
    let v6 = SubnetRange {
        network: "fd00:6::/48".parse().unwrap(),
        subnet_len: 64,
        subnet_min: "fd00:6:0:1::".parse().unwrap(),
        subnet_max: "fd00:6:0:ffff::".parse().unwrap(),
    };
    let dual = Allocation {
        v4: Some(v4),
        v6: Some(v6),
    };
    let me = |r: u8| Me {
        public_ip: Some(std::net::Ipv4Addr::new(198, 18, 1, r)),
        public_ipv6: Some(format!("fd00:198:18::1:{r}").parse().unwrap()),
        vni: 1,
    };
    let ttl = Duration::from_secs(60);
    let started = Instant::now();
    let (leases, report) = in_ns(&etcd.ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut racers = Vec::new();
            for r in 1..=6u8 {
                let cfg = cfg.clone();
                racers.push(tokio::spawn(async move {
                    let reg = Registry::connect(&cfg).await.unwrap();
                    reg.acquire(&dual, &me(r), None, ttl).await.unwrap()
                }));
            }
            let mut leases = Vec::new();
            for r in racers {
                leases.push(r.await.unwrap());
            }
            let reg = Registry::connect(&cfg).await.unwrap();
            let mut report = Vec::new();
            // A restart finds its lease by PublicIP and keeps both halves.
            let again = reg.acquire(&dual, &me(1), None, ttl).await.unwrap();
            report.push(format!("reuse {} -> {}", leases[0].subnets, again.subnets));
            assert_eq!(again.subnets, leases[0].subnets);
            // Renewal puts the same key and value on a new etcd lease.
            let renewed = reg.renew(&again, ttl).await.unwrap().expect("still ours");
            assert_eq!(
                (renewed.subnets, &renewed.attrs),
                (again.subnets, &again.attrs)
            );
            // Gone from etcd, a restart takes the subnets subnet.env names again.
            reg.delete(&leases[1].subnets).await.unwrap();
            let prev = reg
                .acquire(&dual, &me(2), Some(leases[1].subnets), ttl)
                .await
                .unwrap();
            assert_eq!(prev.subnets, leases[1].subnets);
            // flanneld's lease, read back, is a peer with its IPv6 side.
            let (all, _) = reg.list().await.unwrap();
            let own_key = format!("/ds/subnets/{}", again.key());
            let state = all
                .state(
                    &own_key,
                    &LeaseEntry {
                        subnets: again.subnets,
                        attrs: again.attrs.clone(),
                    },
                )
                .unwrap();
            let mut policy = fdb_sync::model::PeerPolicy::new("10.6.0.0/16".parse().unwrap());
            policy.network_v6 = Some("fd00:6::/48".parse().unwrap());
            let state = state.validated(&policy).unwrap();
            assert_eq!(state.peers.len(), 6, "{:?}", state.skipped);
            let f = state
                .peers
                .iter()
                .find(|p| p.name == "10.6.9.0-24&fd00:6:0:9::-64")
                .expect("flanneld's lease is a peer");
            let f6 = f.v6.expect("with its IPv6 side");
            assert_eq!(
                (
                    f6.pod_cidr.to_string(),
                    f6.vtep_ip.to_string(),
                    f6.vtep_mac.to_string()
                ),
                (
                    "fd00:6:0:9::/64".to_string(),
                    "fd00:198:18::9".to_string(),
                    "7a:4f:00:aa:bb:cc".to_string()
                )
            );
            assert!(state.peers.iter().all(|p| p.v6.is_some()));
            // An IPv4-only config: the dual-stack lease found by PublicIP does not fit
            // (isIPv6SubnetConfigCompat) and is deleted; a new IPv4-only lease is taken.
            let v4_only = Allocation {
                v4: Some(v4),
                v6: None,
            };
            let me3 = Me {
                public_ipv6: None,
                ..me(3)
            };
            let l4 = reg.acquire(&v4_only, &me3, None, ttl).await.unwrap();
            assert_eq!(l4.subnets.v6, None);
            report.push(format!(
                "ipv4-only config: {} -> {}",
                leases[2].subnets, l4.subnets
            ));
            let (after, _) = reg.list().await.unwrap();
            assert_eq!(after.len(), 7, "one lease per node and flanneld's");
            // One IPv6 subnet for five nodes with IPv4 subnets to spare: the create-if-absent
            // transaction guards the whole key only (`<v4>&<v6>` differs), so the later of
            // two nodes with the same IPv6 subnet must give way. Exactly one may keep it.
            let one = Allocation {
                v4: Some(v4),
                v6: Some(SubnetRange {
                    subnet_max: v6.subnet_min,
                    ..v6
                }),
            };
            let single = EtcdConfig {
                prefix: "/ds1".into(),
                ..cfg.clone()
            };
            let mut racers = Vec::new();
            for r in 11..=15u8 {
                let single = single.clone();
                racers.push(tokio::spawn(async move {
                    let reg = Registry::connect(&single).await.unwrap();
                    reg.acquire(&one, &me(r), None, ttl).await
                }));
            }
            let mut won = Vec::new();
            for r in racers {
                match r.await.unwrap() {
                    Ok(l) => won.push(l.subnets),
                    Err(e) => assert!(
                        e.to_string()
                            .contains("no free subnet left in fd00:6:0:1::"),
                        "{e}"
                    ),
                }
            }
            assert_eq!(won.len(), 1, "one IPv6 subnet held twice: {won:?}");
            let held = Registry::connect(&single)
                .await
                .unwrap()
                .list()
                .await
                .unwrap()
                .0;
            assert_eq!(held.len(), 1, "given-up keys left in etcd");
            report.push(format!("one IPv6 subnet, five nodes: {} won", won[0]));
            // IPv6-only (EnableIPv4 false), as flanneld writes it: key 0.0.0.0-0&<v6>-<len>,
            // PublicIP 0.0.0.0, no BackendData. Every such lease says PublicIP 0.0.0.0, so
            // the own lease is found by PublicIPv6 (Flannel's findLeaseByIP would hand the
            // first node's lease to every later one).
            let v6_only = Allocation {
                v4: None,
                v6: Some(v6),
            };
            let v6cfg = EtcdConfig {
                prefix: "/v6o".into(),
                ..cfg.clone()
            };
            let v6me = |r: u8| Me {
                public_ip: None,
                ..me(r)
            };
            let reg6 = Registry::connect(&v6cfg).await.unwrap();
            let mut held = Vec::new();
            for r in 21..=23u8 {
                let l = reg6.acquire(&v6_only, &v6me(r), None, ttl).await.unwrap();
                assert_eq!(l.subnets.v4, None);
                assert!(l.key().starts_with("0.0.0.0-0&fd00:6:"), "{}", l.key());
                assert_eq!(l.attrs.backend_data, None, "no IPv4 VTEP without IPv4");
                assert_eq!(l.attrs.public_ip, "0.0.0.0");
                held.push(l.subnets);
            }
            let mut distinct = held.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{held:?}");
            let again = reg6.acquire(&v6_only, &v6me(22), None, ttl).await.unwrap();
            assert_eq!(again.subnets, held[1], "reuse by PublicIPv6");
            assert_eq!(reg6.list().await.unwrap().0.len(), 3);
            report.push(format!("ipv6-only leases: {held:?}"));
            (leases, report)
        })
    });
    eprintln!("{}", report.join("\n"));
    // Keys and values, as etcd holds them.
    let kvs = etcd.block(|mut c| async move {
        c.get("/ds/subnets/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key().to_vec()).unwrap(),
                    String::from_utf8(kv.value().to_vec()).unwrap(),
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    });
    let mut v6s = Vec::new();
    for (r, l) in (1..=6u8).zip(&leases) {
        let (Some(sn4), Some(sn6)) = (l.subnets.v4, l.subnets.v6) else {
            panic!("lease {r} lacks a family: {}", l.subnets);
        };
        assert!(
            v6.compatible(sn6.into()) && v4.compatible(sn4.into()),
            "{}",
            l.subnets
        );
        assert_ne!(
            sn6.to_string(),
            "fd00:6:0:9::/64",
            "flanneld's subnet taken"
        );
        v6s.push(sn6);
        if r == 3 {
            continue; // replaced by the IPv4-only lease
        }
        let key = format!("/ds/subnets/{}-24&{}-64", sn4.network(), sn6.network());
        let o = sn4.network().octets();
        let mac = format!("0a:58:{:02x}:{:02x}:{:02x}:00", o[0], o[1], o[2]);
        // Byte for byte what flanneld writes (the format of FLANNELD_DUAL_LEASE), with the
        // one MAC of overlayd's one device in both halves.
        let want = format!(
            r#"{{"PublicIP":"198.18.1.{r}","PublicIPv6":"fd00:198:18::1:{r}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        );
        assert_eq!(kvs.get(&key), Some(&want), "{key} in {kvs:#?}");
        assert_eq!(
            LeaseSubnets {
                v4: Some(sn4),
                v6: Some(sn6)
            }
            .key(),
            key.trim_start_matches("/ds/subnets/")
        );
    }
    v6s.sort();
    v6s.dedup();
    assert_eq!(v6s.len(), 6, "IPv6 subnets shared: {leases:?}");
    assert_eq!(
        kvs.get(flanneld_key).map(String::as_str),
        Some(FLANNELD_DUAL_LEASE)
    );
    assert!(
        kvs.keys().filter(|k| !k.contains('&')).count() == 1,
        "exactly the IPv4-only lease lacks '&': {kvs:#?}"
    );
    eprintln!("dual-stack leases: {:?}", started.elapsed());
}

/// The global IPv6 address of pod `j` of node `i`, as its namespace shows it.
fn pod_addr6(lab: &Lab, i: usize, j: usize) -> String {
    let out = sh_ok(&[
        "ip",
        "-n",
        &lab.pod(i, j),
        "-6",
        "-o",
        "addr",
        "show",
        "dev",
        "eth0",
        "scope",
        "global",
    ]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv6 address in {out}"))
        .to_string()
}

/// Two overlayd daemons in etcd mode with `EnableIPv6` on a dual-stack underlay: each takes
/// a dual-stack lease with its IPv6 underlay address as PublicIPv6, writes both halves to
/// subnet.env, and their pods reach each other over IPv6 and IPv4.
#[test]
fn etcd_dual_stack_daemons() {
    let Some(mut lab) = Lab::new_shared("etcd_dual_stack_daemons", 2, 1, &[("DUALSTACK", "1")])
    else {
        return;
    };
    let etcd = Etcd::start(&lab, 1, None);
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    );
    let args = etcd_args(&etcd);
    for i in 1..=2 {
        start_etcd_node(&mut lab, i, &args);
    }
    let leases = etcd.leases();
    assert_eq!(leases.len(), 2, "{leases:?}");
    for i in 1..=2 {
        let env = common::read(&lab.subnet_file(i));
        let v6 = env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
            .unwrap_or_else(|| panic!("no FLANNEL_IPV6_SUBNET in {env}"));
        assert!(
            env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"),
            "{env}"
        );
        // fd00:10:244:X::1/64 -> key part fd00:10:244:X::-64
        let net6 = v6.replace("::1/", "::-");
        let key = format!("{}&{net6}", key_of(&subnet_of(&lab, i)));
        let (_, v) = leases
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no lease {key} for node {i}: {leases:?}"));
        assert_eq!(v["PublicIP"], format!("198.18.0.{i}"));
        assert_eq!(v["PublicIPv6"], format!("fd00:18::{i}"));
        assert_eq!(v["BackendV6Data"]["VtepMAC"], v["BackendData"]["VtepMAC"]);
        assert_eq!(v["BackendV6Data"]["VNI"], 1);
    }
    lab.wire(1);
    lab.wire(2);
    for (a, b) in [(1, 2), (2, 1)] {
        for to in [pod_addr6(&lab, b, 1), pod_addr(&lab, b, 1)] {
            assert!(
                lab.ping_within(&lab.pod(a, 1), &to, Duration::from_secs(5)),
                "pod of node {a} cannot reach {to} (node {b}):\n{}",
                lab.log(a)
            );
        }
    }
}

/// Two overlayd daemons in etcd mode with `EnableIPv4: false` on an IPv6-only underlay
/// (cluster.sh IPV6ONLY=1; etcd on the switch's fd00:18::fb): each takes an IPv6-only lease
/// as flanneld writes one (key `0.0.0.0-0&<v6>-<len>`; PublicIP its zero value, PublicIPv6
/// the node's underlay address, BackendV6Data with the device's MAC, no BackendData), writes
/// only the IPv6 pair to subnet.env, and their pods reach each other over IPv6 both ways.
#[test]
fn etcd_ipv6_only_daemons() {
    let started = Instant::now();
    let Some(mut lab) = Lab::new_with_env("etcd_ipv6_only_daemons", 2, 1, &[("IPV6ONLY", "1")])
    else {
        return;
    };
    let etcd = Etcd::start_v6(&lab, 1);
    etcd.put(
        &format!("{PREFIX}/config"),
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    );
    let args = etcd_args(&etcd);
    for i in 1..=2 {
        start_etcd_node(&mut lab, i, &args);
    }
    // Keys and values as etcd holds them, byte for byte.
    let kvs = etcd.block(|mut c| async move {
        c.get(
            format!("{PREFIX}/subnets/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key().to_vec()).unwrap(),
                String::from_utf8(kv.value().to_vec()).unwrap(),
            )
        })
        .collect::<std::collections::BTreeMap<_, _>>()
    });
    assert_eq!(kvs.len(), 2, "{kvs:#?}");
    let mut subnets = Vec::new();
    for i in 1..=2 {
        // subnet.env: the IPv6 pair only (Flannel's WriteSubnetFile without IPv4).
        let env = common::read(&lab.subnet_file(i));
        assert!(
            env.contains("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"),
            "{env}"
        );
        assert!(
            !env.contains("FLANNEL_NETWORK=") && !env.contains("FLANNEL_SUBNET="),
            "node {i}: IPv4 in subnet.env: {env}"
        );
        let v6 = env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
            .unwrap_or_else(|| panic!("no FLANNEL_IPV6_SUBNET in {env}"));
        // fd00:10:244:X::1/64 -> key fd00:10:244:X::-64, behind flanneld's empty IPv4 part.
        let net6 = v6.replace("::1/", "::-");
        assert!(v6.ends_with("::1/64"), "{v6}");
        let key = format!("{PREFIX}/subnets/0.0.0.0-0&{net6}");
        // The device's one MAC (overlayd's ovl.1), published as the IPv6 VtepMAC.
        let link = sh_ok(&[
            "ip",
            "-n",
            &lab.node(i),
            "-o",
            "link",
            "show",
            "dev",
            "ovl.1",
        ]);
        let mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {link}"));
        // What flanneld's newSubnetAttrs writes without an IPv4 address: PublicIP (ip.IP4,
        // not omitempty) is its zero value, BackendData (omitempty) is absent.
        let want = format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:18::{i}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        );
        assert_eq!(kvs.get(&key), Some(&want), "node {i}: {key} in {kvs:#?}");
        subnets.push(net6);
    }
    assert_ne!(subnets[0], subnets[1], "one IPv6 subnet leased twice");
    lab.wire(1);
    lab.wire(2);
    for (a, b) in [(1, 2), (2, 1)] {
        let to = pod_addr6(&lab, b, 1);
        assert!(
            lab.ping_within(&lab.pod(a, 1), &to, Duration::from_secs(5)),
            "ping -6 pod of node {a} -> {to} (node {b}):\n{}",
            lab.log(a)
        );
    }
    eprintln!("etcd IPv6-only daemons: {:?}", started.elapsed());
}
