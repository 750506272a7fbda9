//! Migrating a node from Flannel (issue 10 item 6): overlayd takes over a node that flanneld
//! ran on (flannel.1, its masquerade chains and nftables tables removed), pods created before
//! the switch keep their addresses and connectivity, and a pod created after it gets an address
//! host-local had not handed out. Also the node without leftovers (nothing else touched) and
//! the refusal for a `flannel.1` that is not Flannel's. Root only; see tests/common.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{sh_ok, wait_until, Lab};

fn ns_run(lab: &Lab, i: usize, args: &[&str]) -> (bool, String) {
    let out = lab.exec(&lab.node(i), args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn has_chain(lab: &Lab, i: usize, tool: &str, table: &str, chain: &str) -> bool {
    ns_run(lab, i, &[tool, "-w", "5", "-t", table, "-S", chain]).0
}

/// A node flanneld ran on, switched to overlayd: the Flannel pod keeps 10.244.1.2 and reaches
/// the other node's pod; Flannel's device, chains (both iptables backends) and nftables tables
/// are gone; a pod wired afterwards by overlayd-cni with Flannel's network name `cbr0` gets a
/// different address, reaches the other node too, and DEL frees the Flannel pod's address.
#[test]
fn takes_over_a_flannel_node_keeping_pod_addresses() {
    let Some(mut lab) = Lab::new("takes_over_a_flannel_node_keeping_pod_addresses", 2, 1) else {
        return;
    };
    lab.make_flannel_node(1);
    lab.start(2);
    let n1 = lab.node(1);
    let (p1, p2) = (lab.pod(1, 1), lab.pod(2, 1));
    // Before the switch: Flannel's kernel vxlan node and overlayd talk.
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(5)),
        "{}",
        lab.log(2)
    );
    let ipam = lab.dir.join("ipam1").join("cbr0");
    assert_eq!(
        common::read(&ipam.join("10.244.1.2")).trim(),
        "pod1-1\r\neth0".trim(),
        "host-local allocated the Flannel pod"
    );
    for tool in ["iptables-nft", "iptables-legacy"] {
        assert!(has_chain(&lab, 1, tool, "nat", "FLANNEL-POSTRTG"));
        assert!(has_chain(&lab, 1, tool, "filter", "FLANNEL-FWD"));
    }

    // The switch: flanneld is gone (its DaemonSet deleted), overlayd starts.
    lab.start(1);
    let log = lab.log(1);
    for what in [
        "VXLAN device flannel.1",
        "iptables-nft chain FLANNEL-POSTRTG in table nat",
        "iptables-legacy chain FLANNEL-FWD in table filter",
        "nftables table ip flannel-ipv4",
        "nftables table ip6 flannel-ipv6",
    ] {
        assert!(log.contains(what), "{what} not reported:\n{log}");
    }
    assert!(log.contains("took over from Flannel"), "{log}");
    let links = sh_ok(&["ip", "-n", &n1, "link", "show"]);
    assert!(!links.contains("flannel.1"), "{links}");
    for tool in ["iptables-nft", "iptables-legacy"] {
        assert!(
            !has_chain(&lab, 1, tool, "nat", "FLANNEL-POSTRTG"),
            "{tool}"
        );
        assert!(!has_chain(&lab, 1, tool, "filter", "FLANNEL-FWD"), "{tool}");
        let (_, post) = ns_run(
            &lab,
            1,
            &[tool, "-w", "5", "-t", "nat", "-S", "POSTROUTING"],
        );
        assert!(!post.contains("FLANNEL"), "{tool}: {post}");
    }
    let (_, tables) = ns_run(&lab, 1, &["nft", "list", "tables"]);
    assert!(!tables.contains("flannel"), "{tables}");
    // The TAP device took the Flannel node's published VtepMAC and its address.
    let tap = sh_ok(&["ip", "-n", &n1, "addr", "show", "ovl.1"]);
    assert!(
        tap.contains("02:00:00:00:00:01") && tap.contains("10.244.1.0/32"),
        "{tap}"
    );

    // The pod from before the switch keeps its address and its traffic, both ways.
    let addr = sh_ok(&["ip", "-n", &p1, "-4", "addr", "show", "eth0"]);
    assert!(addr.contains("10.244.1.2/24"), "{addr}");
    assert!(
        lab.ping_within(&p1, &Lab::pod_ip(2, 1), Duration::from_secs(5)),
        "{}\n{}",
        lab.log(1),
        lab.log(2)
    );
    assert!(lab.ping(&p2, &Lab::pod_ip(1, 1)));

    // A new pod, wired by overlayd-cni as the migration manifest configures it (network cbr0,
    // host-local's directory): an address host-local did not give out.
    let newpod = format!("{}p1-new", lab.prefix);
    sh_ok(&["ip", "netns", "add", &newpod]);
    let _cleanup = NetnsGuard(newpod.clone());
    let wire = |cmd: &str, id: &str| {
        let out = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../cni-shim/scripts/wire-pod.sh"
            ))
            .args([&n1, &newpod, "eth0", id])
            .arg(lab.subnet_file(1))
            .arg(lab.dir.join("ipam1"))
            .arg(cmd)
            .env("OVERLAYD_CNI", common::cni_plugin())
            .env("NETWORK_NAME", "cbr0")
            .env("CNI_VERSION", "0.3.1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let result: serde_json::Value = serde_json::from_str(&wire("ADD", "new-pod")).unwrap();
    let ip = result["ips"][0]["address"].as_str().unwrap().to_string();
    assert_eq!(ip, "10.244.1.3/24", "{result}");
    assert!(
        lab.ping_within(&newpod, &Lab::pod_ip(2, 1), Duration::from_secs(5)),
        "new pod {ip} cannot reach node 2"
    );
    assert!(lab.ping(&newpod, &Lab::pod_ip(1, 1)), "same-node pods");
    // DEL of the pod Flannel made, through overlayd-cni: its pair and its address go.
    wire_del_foreign(&lab, &n1, &p1, &ipam);
    assert!(!ipam.join("10.244.1.2").exists());
    assert!(ipam.join("10.244.1.3").exists());
    assert!(lab.stop(1) && lab.stop(2));
}

fn wire_del_foreign(lab: &Lab, node: &str, pod: &str, ipam: &std::path::Path) {
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../cni-shim/scripts/wire-pod.sh"
        ))
        .args([node, pod, "eth0", "pod1-1"])
        .arg(lab.subnet_file(1))
        .arg(ipam.parent().unwrap())
        .arg("DEL")
        .env("OVERLAYD_CNI", common::cni_plugin())
        .env("NETWORK_NAME", "cbr0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "DEL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let links = sh_ok(&["ip", "-n", pod, "link", "show"]);
    assert!(!links.contains("eth0"), "{links}");
}

struct NetnsGuard(String);
impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A node Flannel never ran on: overlayd says so and leaves every other chain and table alone.
#[test]
fn node_without_flannel_leftovers_is_left_as_it_is() {
    let Some(mut lab) = Lab::new("node_without_flannel_leftovers_is_left_as_it_is", 1, 0) else {
        return;
    };
    for args in [
        &["iptables-nft", "-w", "5", "-t", "nat", "-N", "KUBE-TEST"][..],
        &[
            "iptables-nft",
            "-w",
            "5",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-j",
            "KUBE-TEST",
        ],
        &[
            "iptables-legacy",
            "-w",
            "5",
            "-t",
            "filter",
            "-N",
            "FLANNEL-OTHER",
        ],
        &["nft", "add", "table", "ip", "flannel-other"],
    ] {
        let (ok, out) = ns_run(&lab, 1, args);
        assert!(ok, "{args:?}: {out}");
    }
    lab.start(1);
    let log = lab.log(1);
    assert!(log.contains("no Flannel leftovers on this node"), "{log}");
    assert!(!log.contains("took over"), "{log}");
    assert!(has_chain(&lab, 1, "iptables-nft", "nat", "KUBE-TEST"));
    let (_, post) = ns_run(&lab, 1, &["iptables-nft", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(post.contains("-j KUBE-TEST"), "{post}");
    assert!(has_chain(
        &lab,
        1,
        "iptables-legacy",
        "filter",
        "FLANNEL-OTHER"
    ));
    let (_, tables) = ns_run(&lab, 1, &["nft", "list", "tables"]);
    assert!(tables.contains("table ip flannel-other"), "{tables}");
    assert!(lab.stop(1));
}

/// A `flannel.1` that is not a VXLAN device is not Flannel's: overlayd refuses to start and
/// names the device and the command that removes it, and deletes nothing.
#[test]
fn refuses_a_flannel_named_device_that_is_not_vxlan() {
    let Some(mut lab) = Lab::new("refuses_a_flannel_named_device_that_is_not_vxlan", 1, 0) else {
        return;
    };
    let n1 = lab.node(1);
    sh_ok(&[
        "ip",
        "-n",
        &n1,
        "link",
        "add",
        "flannel.1",
        "type",
        "bridge",
    ]);
    let nodes_file = lab.nodes_file();
    lab.spawn(1, &["--nodes-file".as_ref(), nodes_file.as_os_str()], &[]);
    assert!(
        wait_until(Duration::from_secs(10), || !lab.is_running(1)),
        "overlayd kept running:\n{}",
        lab.log(1)
    );
    assert!(!lab.stop(1), "exit status must be non-zero");
    let log = lab.log(1);
    assert!(
        log.contains("device flannel.1 exists and is not a VXLAN device (kind bridge)")
            && log.contains("ip link del flannel.1"),
        "{log}"
    );
    assert!(sh_ok(&["ip", "-n", &n1, "link", "show"]).contains("flannel.1"));
}
