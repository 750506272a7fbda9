//! overlayd with `--kube-subnet-mgr` in the netns lab, driven by the fake API server bound on
//! the switch namespace's 198.18.0.254 (every node's gateway). Root only; see tests/common.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use common::{sh_ok, wait_until, Lab};
use fdb_sync::fake_apiserver::FakeApiServer;
use fdb_sync::model::{
    ANN_BACKEND_DATA, ANN_BACKEND_TYPE, ANN_BACKEND_V6_DATA, ANN_KUBE_SUBNET_MANAGER,
    ANN_NODE_PUBLIC_IP, ANN_PUBLIC_IP, ANN_PUBLIC_IPV6, ANN_PUBLIC_IP_OVERWRITE,
};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// A Node as the lab's cluster.sh lays it out, before any network plugin annotated it.
fn lab_node(i: usize) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(format!("node{i}")),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(format!("10.244.{i}.0/24")),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: format!("198.18.0.{i}"),
            }]),
            ..Default::default()
        }),
    }
}

/// The fake API server listening on 198.18.0.254:6443 inside the lab's switch namespace. The
/// socket is created by a short-lived thread that entered that namespace; the test process
/// itself never leaves its own.
fn fake_server_in_switch(lab: &Lab) -> (FakeApiServer, PathBuf) {
    let ns = PathBuf::from(format!("/run/netns/{}sw", lab.prefix));
    let binder = move || -> std::io::Result<TcpListener> {
        let ns = ns.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            TcpListener::bind("198.18.0.254:6443")
        })
        .join()
        .expect("bind thread")
    };
    let server = FakeApiServer::start(Box::new(binder)).expect("fake API server in the switch ns");
    let kc = server.write_kubeconfig(&lab.dir).unwrap();
    (server, kc)
}

fn annotated(server: &FakeApiServer, i: usize) -> bool {
    server
        .node(&format!("node{i}"))
        .and_then(|n| n.metadata.annotations)
        .is_some_and(|a| a.get(ANN_BACKEND_TYPE).is_some_and(|v| v == "vxlan"))
}

/// (status, reason) of node i's NetworkUnavailable condition.
fn network_condition(server: &FakeApiServer, i: usize) -> Option<(String, String)> {
    server
        .node(&format!("node{i}"))?
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == "NetworkUnavailable")
        .map(|c| (c.status, c.reason.unwrap_or_default()))
}

fn has_peer(lab: &Lab, on: usize, peer: usize) -> bool {
    lab.routes(on)
        .contains(&format!("10.244.{peer}.0/24 via 10.244.{peer}.0 dev ovl.1"))
        && lab
            .neighbours(on, "ovl.1")
            .contains(&format!("10.244.{peer}.0 lladdr"))
}

fn lacks_peer(lab: &Lab, on: usize, peer: usize) -> bool {
    !lab.routes(on).contains(&format!("10.244.{peer}.0/24"))
        && !lab
            .neighbours(on, "ovl.1")
            .contains(&format!("10.244.{peer}.0 "))
}

/// Nodes join by publishing their annotations; a new node's pods become reachable, a deleted
/// node's route and neighbour vanish, a node that moves to a new IP is followed.
#[test]
fn kube_nodes_join_leave_and_move() {
    let Some(mut lab) = Lab::new_shared("kube_nodes_join_leave_and_move", 3, 1, &[]) else {
        return;
    };
    let (server, kc) = fake_server_in_switch(&lab);
    server.apply(&lab_node(1));
    server.apply(&lab_node(2));
    lab.start_kube(1, &kc, &[]);
    lab.start_kube(2, &kc, &[]);
    // Each publishes Flannel's annotations; only then is it the other's peer.
    assert!(
        wait_until(Duration::from_secs(10), || annotated(&server, 1)
            && annotated(&server, 2)),
        "{}",
        lab.log(1)
    );
    let ann = server.node("node1").unwrap().metadata.annotations.unwrap();
    assert_eq!(
        ann[ANN_BACKEND_DATA],
        r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}"#
    );
    assert_eq!(ann[ANN_PUBLIC_IP], "198.18.0.1");
    // NetworkUnavailable=False as flanneld sets it (its --set-node-network-unavailable
    // default), once the routes are programmed.
    assert!(
        wait_until(Duration::from_secs(10), || network_condition(&server, 1)
            == Some(("False".into(), "FlannelIsUp".into()))),
        "{:?}\n{}",
        network_condition(&server, 1),
        lab.log(1)
    );
    let (p1, p2, p3) = (lab.pod(1, 1), lab.pod(2, 1), lab.pod(3, 1));
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(10)),
        "{}\n{}",
        lab.log(1),
        lab.log(2)
    );
    assert!(lab.ping(&p2, &Lab::pod_ip(1, 1)));

    // Add node 3, with flanneld's flag to leave the condition alone.
    server.apply(&lab_node(3));
    lab.start_kube(3, &kc, &["--set-node-network-unavailable=false"]);
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(3, 1), Duration::from_secs(10)),
        "{}",
        lab.log(1)
    );
    assert!(lab.ping_within(&p3, &Lab::pod_ip(2, 1), Duration::from_secs(5)));
    assert!(annotated(&server, 3));
    assert_eq!(network_condition(&server, 3), None);

    // Delete node 3: its route and neighbour vanish on 1 and 2.
    assert!(server.delete("node3"));
    assert!(
        wait_until(Duration::from_secs(5), || lacks_peer(&lab, 1, 3)
            && lacks_peer(&lab, 2, 3)),
        "{}\n{}",
        lab.routes(1),
        lab.neighbours(1, "ovl.1")
    );
    assert!(has_peer(&lab, 1, 2));

    // Node 2 moves to a new underlay address: restarted there, it publishes the new public-ip,
    // and node 1 follows (the old address is gone, so only the new one can carry traffic).
    assert!(lab.stop(2));
    let n2 = lab.node(2);
    sh_ok(&[
        "ip",
        "-n",
        &n2,
        "addr",
        "del",
        "198.18.0.2/24",
        "dev",
        "eth0",
    ]);
    sh_ok(&[
        "ip",
        "-n",
        &n2,
        "addr",
        "add",
        "198.18.0.102/24",
        "dev",
        "eth0",
    ]);
    // Deleting the last address took the default route with it.
    sh_ok(&[
        "ip",
        "-n",
        &n2,
        "route",
        "replace",
        "default",
        "via",
        "198.18.0.254",
        "dev",
        "eth0",
        "onlink",
    ]);
    lab.start_kube(2, &kc, &[]);
    assert!(
        wait_until(Duration::from_secs(10), || server
            .node("node2")
            .and_then(|n| n.metadata.annotations)
            .is_some_and(|a| a[ANN_PUBLIC_IP] == "198.18.0.102")),
        "{}",
        lab.log(2)
    );
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(10)),
        "{}\n{}",
        lab.log(1),
        lab.log(2)
    );
    assert!(lab.ping(&p2, &Lab::pod_ip(1, 1)));
    // Skipped-node and peer logs are not repeated per event.
    assert!(lab.stop(1) && lab.stop(2) && lab.stop(3));
}

/// /readyz is 503 until the own Node with its podCIDR appears and the first sync is applied;
/// an API server restart keeps the state and traffic, and updates resume afterwards.
#[test]
fn kube_readiness_and_api_server_restart() {
    let Some(mut lab) = Lab::new_shared("kube_readiness_and_api_server_restart", 3, 1, &[]) else {
        return;
    };
    let (mut server, kc) = fake_server_in_switch(&lab);
    server.apply(&lab_node(2));
    lab.start_kube(2, &kc, &[]);
    // Node 1 starts before its Node object exists: alive, not ready, says what it waits for.
    lab.spawn_kube(1, &kc, &[]);
    assert!(wait_until(Duration::from_secs(10), || lab
        .http_status(1, "/healthz")
        == 200));
    assert_eq!(lab.http_status(1, "/readyz"), 503);
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .log(1)
            .contains("waiting for node node1")),
        "{}",
        lab.log(1)
    );
    assert_eq!(
        lab.log(1)
            .lines()
            .filter(|l| l.contains("WARN waiting for node node1"))
            .count(),
        1,
        "logged more than once:\n{}",
        lab.log(1)
    );
    server.apply(&lab_node(1));
    lab.wait_ready(1);
    assert!(wait_until(Duration::from_secs(5), || lab
        .http_status(1, "/readyz")
        == 200));
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(10)),
        "{}",
        lab.log(1)
    );

    // API server down: forwarding continues with the last good state.
    server.stop();
    std::thread::sleep(Duration::from_secs(2));
    assert!(lab.ping(&p1, &Lab::pod_ip(2, 1)), "{}", lab.log(1));
    assert!(lab.ping(&p2, &Lab::pod_ip(1, 1)));
    assert!(has_peer(&lab, 1, 2) && has_peer(&lab, 2, 1));
    assert_eq!(lab.http_status(1, "/readyz"), 200);
    let log = lab.log(1);
    assert!(log.contains("keeping the last good state"), "{log}");

    // Back up: updates flow again (node 3 joins and becomes reachable).
    server.restart().unwrap();
    server.apply(&lab_node(3));
    lab.start_kube(3, &kc, &[]);
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(3, 1), Duration::from_secs(20)),
        "{}",
        lab.log(1)
    );
    assert!(lab.ping(&p2, &Lab::pod_ip(1, 1)));
    assert!(lab.stop(1) && lab.stop(2) && lab.stop(3));
}

/// overlayd started as kube-flannel.yml starts flanneld (`--ip-masq --kube-subnet-mgr
/// --healthz-port=8081`, POD_NAME/POD_NAMESPACE instead of NODE_NAME), plus `--iface=<ip>`
/// and `-ip-masq` in Go's single-dash form, with a net-conf.json in lower-case keys (VNI 4096,
/// port 4789), against a kernel-vxlan Flannel node on that VNI and port. The fake API server
/// stands in for kube-apiserver: it serves the pod whose spec.nodeName names the node.
#[test]
fn kube_flannel_args_against_kernel_vxlan_on_vni_4096() {
    use k8s_openapi::api::core::v1::{Pod, PodSpec};
    let Some(mut lab) = Lab::new("kube_flannel_args_against_kernel_vxlan_on_vni_4096", 2, 1) else {
        return;
    };
    let (server, kc) = fake_server_in_switch(&lab);
    let net_conf = lab.dir.join("net-conf.json");
    std::fs::write(
        &net_conf,
        r#"{"network":"10.244.0.0/16","enablenftables":false,"backend":{"type":"vxlan","vni":4096,"port":4789}}"#,
    )
    .unwrap();
    // Node 2: Flannel's kernel vxlan (flannel.4096 on 4789), annotated as flanneld does.
    lab.make_kernel_node_with(2, 4096, 4789);
    let mut kernel = lab_node(2);
    kernel.metadata.annotations = Some(
        [
            (ANN_BACKEND_TYPE, "vxlan"),
            (
                ANN_BACKEND_DATA,
                r#"{"VNI":4096,"VtepMAC":"02:00:00:00:00:02"}"#,
            ),
            (ANN_PUBLIC_IP, "198.18.0.2"),
            ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    server.apply(&kernel);
    server.apply(&lab_node(1));
    server.apply_pod(&Pod {
        metadata: ObjectMeta {
            name: Some("kube-flannel-ds-x7k2p".into()),
            namespace: Some("kube-flannel".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node1".into()),
            ..Default::default()
        }),
        ..Default::default()
    });

    let subnet_file = lab.subnet_file(1);
    let args: Vec<std::ffi::OsString> = vec![
        // kube-flannel.yml's args, in its order.
        "--ip-masq".into(),
        "--kube-subnet-mgr".into(),
        "--healthz-port=8081".into(),
        // What this lab needs on top: the underlay by address, Go's single-dash form, the
        // kubeconfig (no in-cluster service account here) and the lab's file paths.
        "--iface=198.18.0.1".into(),
        "-ip-masq".into(),
        "-kubeconfig-file".into(),
        kc.clone().into(),
        format!("--net-config-path={}", net_conf.display()).into(),
        "-subnet-file".into(),
        subnet_file.clone().into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsString::as_os_str).collect();
    lab.spawn_exact(
        1,
        &args,
        &[
            ("POD_NAME", "kube-flannel-ds-x7k2p"),
            ("POD_NAMESPACE", "kube-flannel"),
            ("EVENT_QUEUE_DEPTH", "5000"),
            ("CONT_WHEN_CACHE_NOT_READY", "false"),
        ],
    );
    lab.wait_ready(1);
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r == "GET /api/v1/namespaces/kube-flannel/pods/kube-flannel-ds-x7k2p"),
        "{:?}",
        server.requests()
    );
    // It runs as node1 (from the pod) and publishes VNI 4096.
    assert!(
        wait_until(Duration::from_secs(10), || annotated(&server, 1)),
        "{}",
        lab.log(1)
    );
    let ann = server.node("node1").unwrap().metadata.annotations.unwrap();
    assert!(ann[ANN_BACKEND_DATA].contains(r#""VNI":4096"#), "{ann:?}");
    assert_eq!(ann[ANN_PUBLIC_IP], "198.18.0.1");
    // The device MTU and FLANNEL_MTU are what Flannel gives flannel.4096 on this underlay.
    let env = std::fs::read_to_string(&subnet_file).unwrap();
    assert!(env.contains("FLANNEL_MTU=1450"), "{env}");
    assert!(sh_ok(&["ip", "-n", &lab.node(1), "link", "show", "ovl.1"]).contains("mtu 1450"));

    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(10)),
        "{}",
        lab.log(1)
    );
    assert!(lab.ping_within(&p2, &Lab::pod_ip(1, 1), Duration::from_secs(5)));
    let to_kernel = lab.iperf(&p1, &p2, &Lab::pod_ip(2, 1), 2, &[]);
    let from_kernel = lab.iperf(&p2, &p1, &Lab::pod_ip(1, 1), 2, &[]);
    assert!(
        to_kernel > 1e6 && from_kernel > 1e6,
        "to {to_kernel} from {from_kernel}"
    );
    eprintln!(
        "VNI 4096/4789: overlayd->kernel {:.2} Gbit/s, kernel->overlayd {:.2} Gbit/s",
        to_kernel / 1e9,
        from_kernel / 1e9
    );

    // flanneld's healthz server: /healthz on --healthz-ip (0.0.0.0) : --healthz-port, from
    // another host on the underlay, and /readyz for kube-flannel.yml's readiness probe.
    let curl = |path: &str| {
        let out = lab.exec(
            &lab.node(2),
            &[
                "curl",
                "-s",
                "-m",
                "3",
                "-w",
                "\n%{http_code}",
                &format!("http://198.18.0.1:8081{path}"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let healthz = curl("/healthz");
    assert!(
        healthz.ends_with("\n200") && healthz.starts_with("ok"),
        "{healthz:?}"
    );
    let readyz = curl("/readyz");
    assert!(readyz.ends_with("\n200"), "{readyz:?}");
    assert!(curl("/metrics").ends_with("\n404"));
    // --http-addr keeps serving too.
    assert_eq!(lab.http_status(1, "/healthz"), 200);
    assert!(lab.stop(1), "{}", lab.log(1));
}

/// `--kube-annotation-prefix`: nodes publish and read Flannel's annotations under the prefix
/// (Flannel's rule: no '/' in it, so "/" is appended), and nothing under the default one.
#[test]
fn kube_annotation_prefix_is_read_and_written() {
    let Some(mut lab) = Lab::new_shared("kube_annotation_prefix_is_read_and_written", 2, 1, &[])
    else {
        return;
    };
    let (server, kc) = fake_server_in_switch(&lab);
    server.apply(&lab_node(1));
    server.apply(&lab_node(2));
    let extra = ["-kube-annotation-prefix", "overlay.example.com"];
    lab.start_kube(1, &kc, &extra);
    lab.start_kube(2, &kc, &extra);
    let published = |i: usize| {
        server
            .node(&format!("node{i}"))
            .and_then(|n| n.metadata.annotations)
            .is_some_and(|a| {
                a.get("overlay.example.com/backend-type")
                    .is_some_and(|v| v == "vxlan")
            })
    };
    assert!(
        wait_until(Duration::from_secs(10), || published(1) && published(2)),
        "{}",
        lab.log(1)
    );
    let ann = server.node("node1").unwrap().metadata.annotations.unwrap();
    assert_eq!(
        ann["overlay.example.com/backend-data"],
        r#"{"VNI":1,"VtepMAC":"0a:58:0a:f4:01:00"}"#
    );
    assert_eq!(ann["overlay.example.com/public-ip"], "198.18.0.1");
    assert!(
        !ann.keys()
            .any(|k| k.starts_with("flannel.alpha.coreos.com/")),
        "{ann:?}"
    );
    // Each became the other's peer by reading the prefixed annotations.
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(10)),
        "{}",
        lab.log(1)
    );
    assert!(lab.ping(&p2, &Lab::pod_ip(1, 1)));
    assert!(lab.stop(1) && lab.stop(2));
}

/// Dual stack in Kubernetes mode (cluster.sh DUALSTACK=1): Nodes with podCIDRs and
/// InternalIPs of both families; each overlayd publishes `backend-v6-data` (its one device
/// MAC) and `public-ipv6` exactly as Flannel writes them, and the other reads them into its
/// IPv6 route and neighbour.
#[test]
fn kube_dual_stack_annotations_are_written_and_read() {
    let Some(mut lab) = Lab::new_shared(
        "kube_dual_stack_annotations_are_written_and_read",
        2,
        1,
        &[("DUALSTACK", "1")],
    ) else {
        return;
    };
    let (server, kc) = fake_server_in_switch(&lab);
    for i in 1..=2 {
        let mut n = lab_node(i);
        let spec = n.spec.as_mut().unwrap();
        spec.pod_cidrs = Some(vec![
            format!("10.244.{i}.0/24"),
            format!("fd00:10:244:{i}::/64"),
        ]);
        n.status
            .as_mut()
            .unwrap()
            .addresses
            .as_mut()
            .unwrap()
            .push(NodeAddress {
                type_: "InternalIP".into(),
                address: format!("fd00:18::{i}"),
            });
        server.apply(&n);
    }
    lab.start_kube(1, &kc, &[]);
    lab.start_kube(2, &kc, &[]);
    let published = |i: usize| {
        server
            .node(&format!("node{i}"))
            .and_then(|n| n.metadata.annotations)
            .is_some_and(|a| a.contains_key(ANN_PUBLIC_IPV6))
    };
    assert!(
        wait_until(Duration::from_secs(10), || published(1) && published(2)),
        "{}",
        lab.log(1)
    );
    for i in 1..=2 {
        let ann = server
            .node(&format!("node{i}"))
            .unwrap()
            .metadata
            .annotations
            .unwrap();
        let mac = format!("0a:58:0a:f4:0{i}:00");
        assert_eq!(ann[ANN_BACKEND_TYPE], "vxlan");
        assert_eq!(
            ann[ANN_BACKEND_DATA],
            format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)
        );
        assert_eq!(
            ann[ANN_BACKEND_V6_DATA],
            format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)
        );
        assert_eq!(ann[ANN_PUBLIC_IP], format!("198.18.0.{i}"));
        assert_eq!(ann[ANN_PUBLIC_IPV6], format!("fd00:18::{i}"));
    }
    for (on, peer) in [(1, 2), (2, 1)] {
        let want_route = format!("fd00:10:244:{peer}::/64 via fd00:10:244:{peer}:: dev ovl.1");
        let want_neigh = format!("fd00:10:244:{peer}:: lladdr 0a:58:0a:f4:0{peer}:00 PERMANENT");
        let ok = wait_until(Duration::from_secs(10), || {
            sh_ok(&[
                "ip",
                "-n",
                &lab.node(on),
                "-6",
                "route",
                "show",
                "proto",
                "77",
            ])
            .contains(&want_route)
                && sh_ok(&[
                    "ip",
                    "-n",
                    &lab.node(on),
                    "-6",
                    "neigh",
                    "show",
                    "dev",
                    "ovl.1",
                ])
                .contains(&want_neigh)
        });
        assert!(ok, "node {on} lacks IPv6 peer {peer}:\n{}", lab.log(on));
        let st = lab.status_json(on);
        assert_eq!(st["own"]["ipv6"]["vtepIP"], format!("fd00:18::{on}"));
        assert_eq!(
            st["peers"][0]["ipv6"]["vtepIP"],
            format!("fd00:18::{peer}"),
            "{st}"
        );
    }
    assert!(lab.stop(1) && lab.stop(2));
}

/// IPv6-only (`EnableIPv4: false`, cluster.sh IPV6ONLY=1, the API server on the switch's
/// IPv6 address): each overlayd publishes what flanneld publishes for an IPv6-only node,
/// `backend-type`, `kube-subnet-manager`, `backend-v6-data` and `public-ipv6`, and neither
/// `backend-data` nor `public-ip` (not even from `public-ip-overwrite`); each reads the other
/// back from those annotations and their IPv6 pods reach each other.
#[test]
fn kube_ipv6_only_annotations_are_written_as_flanneld_writes_them() {
    let Some(mut lab) = Lab::new_with_env(
        "kube_ipv6_only_annotations_are_written_as_flanneld_writes_them",
        2,
        1,
        &[("IPV6ONLY", "1")],
    ) else {
        return;
    };
    let ns = PathBuf::from(format!("/run/netns/{}sw", lab.prefix));
    let binder = move || -> std::io::Result<TcpListener> {
        let ns = ns.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            TcpListener::bind("[fd00:18::fe]:6443")
        })
        .join()
        .expect("bind thread")
    };
    let server = FakeApiServer::start(Box::new(binder)).expect("fake API server in the switch ns");
    let kc = server.write_kubeconfig(&lab.dir).unwrap();
    for i in 1..=2 {
        let cidr = format!("fd00:10:244:{i}::/64");
        let mut annotations = std::collections::BTreeMap::new();
        if i == 1 {
            annotations.insert(
                ANN_PUBLIC_IP_OVERWRITE.to_string(),
                "198.18.0.9".to_string(),
            );
        } else {
            // IPv4-only keys Flannel does not read without EnableIPv4: broken values make
            // node2 neither an unreadable peer for node1 nor unable to start itself.
            for (k, v) in [
                (ANN_PUBLIC_IP, "not-an-ip"),
                (ANN_PUBLIC_IP_OVERWRITE, "300.1.1.1"),
                (ANN_BACKEND_DATA, "{broken"),
            ] {
                annotations.insert(k.to_string(), v.to_string());
            }
        }
        server.apply(&Node {
            metadata: ObjectMeta {
                name: Some(format!("node{i}")),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(cidr.clone()),
                pod_cidrs: Some(vec![cidr]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: format!("fd00:18::{i}"),
                }]),
                ..Default::default()
            }),
        });
    }
    lab.start_kube(1, &kc, &[]);
    lab.start_kube(2, &kc, &[]);
    let published = |i: usize| {
        server
            .node(&format!("node{i}"))
            .and_then(|n| n.metadata.annotations)
            .is_some_and(|a| a.contains_key(ANN_PUBLIC_IPV6))
    };
    assert!(
        wait_until(Duration::from_secs(10), || published(1) && published(2)),
        "{}",
        lab.log(1)
    );
    for i in 1..=2 {
        let ann = server
            .node(&format!("node{i}"))
            .unwrap()
            .metadata
            .annotations
            .unwrap();
        assert_eq!(ann[ANN_BACKEND_TYPE], "vxlan");
        assert_eq!(ann[ANN_KUBE_SUBNET_MANAGER], "true");
        assert_eq!(
            ann[ANN_BACKEND_V6_DATA],
            format!(r#"{{"VNI":1,"VtepMAC":"0a:58:02:44:00:0{i}"}}"#)
        );
        assert_eq!(ann[ANN_PUBLIC_IPV6], format!("fd00:18::{i}"));
        if i == 1 {
            assert!(
                !ann.contains_key(ANN_BACKEND_DATA) && !ann.contains_key(ANN_PUBLIC_IP),
                "node{i}: {ann:?}"
            );
        } else {
            // Left as they were, as flanneld leaves them.
            assert_eq!(
                (ann[ANN_PUBLIC_IP].as_str(), ann[ANN_BACKEND_DATA].as_str()),
                ("not-an-ip", "{broken")
            );
        }
    }
    let st = lab.status_json(1);
    assert_eq!(st["peers"][0]["ipv6"]["vtepIP"], "fd00:18::2", "{st}");
    let pod6 = |i: usize| format!("fd00:10:244:{i}::2");
    for (a, b) in [(1, 2), (2, 1)] {
        assert!(
            lab.ping_within(&lab.pod(a, 1), &pod6(b), Duration::from_secs(5)),
            "ping -6 pod {a} -> pod {b}:\n{}",
            lab.log(a)
        );
    }
    assert!(lab.stop(1) && lab.stop(2));
}

/// flanneld's GetStoredPublicIP: node1's Node says `node-public-ip: 198.18.0.101` (a second
/// address on its eth0), which replaces --public-ip: overlayd sends from it and publishes it
/// as `public-ip`, node2 reaches node1's pods at that VTEP, and node1 logs where it came from.
#[test]
fn kube_node_public_ip_annotation_is_the_vtep() {
    let Some(mut lab) = Lab::new("kube_node_public_ip_annotation_is_the_vtep", 2, 1) else {
        return;
    };
    sh_ok(&[
        "ip",
        "-n",
        &lab.node(1),
        "addr",
        "add",
        "198.18.0.101/24",
        "dev",
        "eth0",
    ]);
    let (server, kc) = fake_server_in_switch(&lab);
    let mut n1 = lab_node(1);
    n1.metadata.annotations = Some(
        [(ANN_NODE_PUBLIC_IP.to_string(), "198.18.0.101".to_string())]
            .into_iter()
            .collect(),
    );
    server.apply(&n1);
    server.apply(&lab_node(2));
    lab.start_kube(1, &kc, &[]);
    lab.start_kube(2, &kc, &[]);
    let public_ip = |i: usize| {
        server
            .node(&format!("node{i}"))
            .and_then(|n| n.metadata.annotations)
            .and_then(|a| a.get(ANN_PUBLIC_IP).cloned())
    };
    assert!(
        wait_until(Duration::from_secs(10), || public_ip(1).is_some()
            && public_ip(2).is_some()),
        "{}",
        lab.log(1)
    );
    assert_eq!(public_ip(1).as_deref(), Some("198.18.0.101"));
    assert_eq!(public_ip(2).as_deref(), Some("198.18.0.2"));
    let log = lab.log(1);
    assert!(
        log.contains("public IP taken from this node's annotation")
            && log.contains("flannel.alpha.coreos.com/node-public-ip"),
        "{log}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || lab.status_json(2)["peers"][0]
            ["vtepIP"]
            == "198.18.0.101"),
        "{}",
        lab.status_json(2)
    );
    // Both ways: node1's replies must leave from 198.18.0.101, or node2 drops them as
    // unknown_sender.
    for (a, b) in [(2, 1), (1, 2)] {
        assert!(
            lab.ping_within(&lab.pod(a, 1), &Lab::pod_ip(b, 1), Duration::from_secs(5)),
            "ping pod {a} -> pod {b}:\n{}",
            lab.log(a)
        );
    }
    assert!(lab.stop(1) && lab.stop(2));
}
