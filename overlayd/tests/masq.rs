//! `--ip-masq` and `--iptables-forward-rules` with real netfilter in network-namespace nodes
//! (root only; see tests/common): pods reach a host outside the cluster as their node, pods
//! reach each other with their own addresses, the rules come back within 2 s after a flush,
//! and a FORWARD policy of DROP (Docker's) does not cut pods off. Both backends: nftables
//! (net-conf `EnableNFTables: true`) and iptables (Flannel's default).

mod common;

use std::time::{Duration, Instant};

use common::{sh_ok, wait_until, Lab};

const STRANGER_IP: &str = "198.18.0.100";
const PORT: u16 = 8080;

fn set_nftables(lab: &Lab, on: bool) {
    std::fs::write(
        lab.dir.join("net-conf.json"),
        format!(
            r#"{{"Network":"10.244.0.0/16","EnableNFTables":{on},"Backend":{{"Type":"vxlan","VNI":1,"Port":8472}}}}"#
        ),
    )
    .unwrap();
}

fn nft_table(lab: &Lab, i: usize) -> Option<String> {
    let out = lab.exec(
        &lab.node(i),
        &["nft", "list", "table", "ip", "overlayd-ipv4"],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn iptables_save(lab: &Lab, i: usize, table: &str) -> String {
    let out = lab.exec(&lab.node(i), &["iptables-save", "-t", table]);
    assert!(out.status.success(), "iptables-save -t {table}");
    // Drop the "# Generated/Completed on <time>" lines and the built-in chains' counters.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn masq_chain_complete(lab: &Lab, i: usize) -> bool {
    let nat = iptables_save(lab, i, "nat");
    nat.lines()
        .filter(|l| l.starts_with("-A OVERLAYD-POSTRTG "))
        .count()
        == 6
        && nat
            .lines()
            .filter(|l| l.starts_with("-A POSTROUTING ") && l.ends_with("-j OVERLAYD-POSTRTG"))
            .count()
            == 1
}

fn metric(lab: &Lab, i: usize, series: &str) -> f64 {
    common::metric_value(&common::http_get(lab, i, "/metrics"), series)
}

/// `overlayd::netfilter::remove_all()` (what `overlayd cleanup` calls) run in node `i`'s
/// namespace by a short-lived thread that enters it; the tools it runs inherit it.
fn remove_all_in(lab: &Lab, i: usize) -> Vec<String> {
    let ns = format!("/run/netns/{}", lab.node(i));
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        overlayd::netfilter::remove_all().expect("remove_all")
    })
    .join()
    .unwrap()
}

fn nothing_of_ours(lab: &Lab, i: usize) -> bool {
    nft_table(lab, i).is_none()
        && !iptables_save(lab, i, "nat").contains("OVERLAYD")
        && !iptables_save(lab, i, "filter").contains("OVERLAYD")
}

/// Waits (up to `secs`) for the whoami answer seen from `from` at `ip`.
fn whoami_within(lab: &Lab, from: &str, ip: &str, secs: u64) -> Option<String> {
    let mut seen = None;
    wait_until(Duration::from_secs(secs), || {
        seen = lab.whoami(from, ip, PORT);
        seen.is_some()
    });
    seen
}

/// The checks both backends share: a pod reaches the outside host as its node; pods reach
/// each other (and the outside reaches a pod) without NAT.
fn assert_masquerade_semantics(lab: &Lab) {
    let pod1 = lab.pod(1, 1);
    assert!(
        lab.ping_within(&pod1, &Lab::pod_ip(2, 1), Duration::from_secs(5)),
        "pods do not reach each other"
    );
    // Pod to outside: the stranger has no route to 10.244.0.0/16, so an answer at all means
    // the source was rewritten; the address it saw must be node 1's.
    assert_eq!(
        whoami_within(lab, &pod1, STRANGER_IP, 5).as_deref(),
        Some("198.18.0.1"),
        "the outside host must see node 1's address"
    );
    // Pod to pod across nodes keeps the pod's own address.
    assert_eq!(
        whoami_within(lab, &pod1, &Lab::pod_ip(2, 1), 5).as_deref(),
        Some(Lab::pod_ip(1, 1).as_str()),
        "pod-to-pod traffic must not be NATed"
    );
    // Outside to this node's pods is not NATed either (the stranger routes via node 1).
    let x = format!("{}x", lab.prefix);
    sh_ok(&[
        "ip",
        "-n",
        &x,
        "route",
        "replace",
        "10.244.1.0/24",
        "via",
        "198.18.0.1",
    ]);
    assert_eq!(
        whoami_within(lab, &x, &Lab::pod_ip(1, 1), 5).as_deref(),
        Some(STRANGER_IP),
        "traffic from outside the Network to a pod must keep its source"
    );
    sh_ok(&["ip", "-n", &x, "route", "del", "10.244.1.0/24"]);
    let env = common::read(&lab.subnet_file(1));
    assert!(env.contains("FLANNEL_IPMASQ=true\n"), "{env}");
}

fn lab_with_servers(test: &str, nftables: bool) -> Option<(Lab, Vec<common::ChildGuard>)> {
    let mut lab = Lab::new(test, 2, 1)?;
    set_nftables(&lab, nftables);
    let x = lab.add_stranger(STRANGER_IP);
    lab.start_with(1, &["--ip-masq"]);
    lab.start_with(2, &["--ip-masq"]);
    let servers = vec![
        lab.whoami_server(&x, PORT),
        lab.whoami_server(&lab.pod(2, 1), PORT),
        lab.whoami_server(&lab.pod(1, 1), PORT),
    ];
    Some((lab, servers))
}

#[test]
fn ip_masq_nftables_masquerades_to_the_outside_only_and_is_restored_after_flush_ruleset() {
    let Some((mut lab, _servers)) = lab_with_servers(
        "ip_masq_nftables_masquerades_to_the_outside_only_and_is_restored_after_flush_ruleset",
        true,
    ) else {
        return;
    };
    let table = nft_table(&lab, 1).expect("table ip overlayd-ipv4 on node 1");
    assert!(
        table.contains("masquerade fully-random") && table.contains("chain forward"),
        "{table}"
    );
    // nftables mode leaves no iptables masquerade chain behind.
    assert!(!iptables_save(&lab, 1, "nat").contains("OVERLAYD-POSTRTG"));
    assert_masquerade_semantics(&lab);
    let st = lab.status_json(1);
    assert_eq!(st["netfilter"]["backend"], "nftables", "{st}");
    assert_eq!(st["netfilter"]["rulesPresent"], true, "{st}");

    // Someone flushes everything: back within 2 s, and masquerading again.
    sh_ok(&[
        "ip",
        "netns",
        "exec",
        &lab.node(1),
        "nft",
        "flush",
        "ruleset",
    ]);
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || nft_table(&lab, 1).as_deref()
            == Some(table.as_str())),
        "nft table not restored within 2 s: {:?}",
        nft_table(&lab, 1)
    );
    eprintln!("nft flush ruleset: restored in {:?}", t.elapsed());
    assert_eq!(
        whoami_within(&lab, &lab.pod(1, 1), STRANGER_IP, 3).as_deref(),
        Some("198.18.0.1")
    );
    // The restore is counted once the checker has read back what it applied: give it time.
    assert!(
        wait_until(Duration::from_secs(2), || metric(
            &lab,
            1,
            "overlayd_netfilter_restores_total"
        ) >= 1.0),
        "{}",
        lab.log(1)
    );
    assert!(lab.status_json(1)["netfilter"]["restores"].as_u64() >= Some(1));

    // SIGTERM leaves the rules; the next overlayd adopts them unchanged (installing twice
    // changes nothing).
    assert!(lab.stop(1));
    assert_eq!(nft_table(&lab, 1).as_deref(), Some(table.as_str()));
    lab.start_with(1, &["--ip-masq"]);
    assert_eq!(nft_table(&lab, 1).as_deref(), Some(table.as_str()));

    // Cleanup removes all of it (the nft table and the iptables FORWARD chain), once.
    assert!(lab.stop(1));
    let removed = remove_all_in(&lab, 1);
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(nothing_of_ours(&lab, 1));
    assert!(remove_all_in(&lab, 1).is_empty());
}

#[test]
fn ip_masq_iptables_masquerades_to_the_outside_only_and_is_restored_after_nat_flush() {
    let Some((mut lab, _servers)) = lab_with_servers(
        "ip_masq_iptables_masquerades_to_the_outside_only_and_is_restored_after_nat_flush",
        false,
    ) else {
        return;
    };
    assert!(
        masq_chain_complete(&lab, 1),
        "{}",
        iptables_save(&lab, 1, "nat")
    );
    assert!(
        nft_table(&lab, 1).is_none(),
        "iptables mode leaves no overlayd nftables table"
    );
    assert_masquerade_semantics(&lab);
    let st = lab.status_json(1);
    assert!(
        st["netfilter"]["backend"]
            .as_str()
            .is_some_and(|b| b.starts_with("iptables")),
        "{st}"
    );
    let nat = iptables_save(&lab, 1, "nat");
    let filter = iptables_save(&lab, 1, "filter");
    assert!(
        nat.contains("-j MASQUERADE --random-fully"),
        "Flannel masquerades with --random-fully: {nat}"
    );

    sh_ok(&[
        "ip",
        "netns",
        "exec",
        &lab.node(1),
        "iptables",
        "-t",
        "nat",
        "-F",
    ]);
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || masq_chain_complete(&lab, 1)),
        "nat rules not restored within 2 s: {}",
        iptables_save(&lab, 1, "nat")
    );
    eprintln!("iptables -t nat -F: restored in {:?}", t.elapsed());
    assert_eq!(iptables_save(&lab, 1, "nat"), nat);
    assert_eq!(
        whoami_within(&lab, &lab.pod(1, 1), STRANGER_IP, 3).as_deref(),
        Some("198.18.0.1")
    );
    // The restore is counted once the checker has read back what it applied: give it time.
    assert!(
        wait_until(Duration::from_secs(2), || metric(
            &lab,
            1,
            "overlayd_netfilter_restores_total"
        ) >= 1.0),
        "{}",
        lab.log(1)
    );

    // Adoption after SIGTERM: same rules, one jump each.
    assert!(lab.stop(1));
    assert_eq!(iptables_save(&lab, 1, "nat"), nat);
    lab.start_with(1, &["--ip-masq"]);
    assert_eq!(iptables_save(&lab, 1, "nat"), nat);
    assert_eq!(iptables_save(&lab, 1, "filter"), filter);

    // --ip-masq-fully-random-disable: the same chain without --random-fully, one jump.
    assert!(lab.stop(1));
    lab.start_with(1, &["--ip-masq", "--ip-masq-fully-random-disable"]);
    let plain = iptables_save(&lab, 1, "nat");
    assert!(masq_chain_complete(&lab, 1), "{plain}");
    assert_eq!(plain, nat.replace(" --random-fully", ""));

    assert!(lab.stop(1));
    assert_eq!(remove_all_in(&lab, 1).len(), 1);
    assert!(nothing_of_ours(&lab, 1));
    // Only ours went: the built-in chains are still there.
    assert!(iptables_save(&lab, 1, "nat").contains(":POSTROUTING ACCEPT"));
    assert!(remove_all_in(&lab, 1).is_empty());
}

/// Docker sets FORWARD's policy to DROP; the FORWARD accept rules keep pods connected.
fn forward_drop(test: &str, nftables: bool) {
    let Some(mut lab) = Lab::new(test, 2, 1) else {
        return;
    };
    set_nftables(&lab, nftables);
    for i in 1..=2 {
        sh_ok(&[
            "ip",
            "netns",
            "exec",
            &lab.node(i),
            "iptables",
            "-P",
            "FORWARD",
            "DROP",
        ]);
    }
    // Control case: without the accept rules, DROP really cuts the pods off.
    lab.start_with(1, &["--iptables-forward-rules=false"]);
    lab.start_with(2, &["--iptables-forward-rules=false"]);
    let (p1, p2) = (lab.pod(1, 1), Lab::pod_ip(2, 1));
    assert!(
        !lab.ping_within(&p1, &p2, Duration::from_secs(2)),
        "FORWARD DROP should block pods without the accept rules"
    );
    assert!(lab.stop(1) && lab.stop(2));
    lab.start(1);
    lab.start(2);
    assert!(
        lab.ping_within(&p1, &p2, Duration::from_secs(5)),
        "pods must reach each other through FORWARD policy DROP"
    );
    assert!(lab.ping_within(&lab.pod(2, 1), &Lab::pod_ip(1, 1), Duration::from_secs(5)));
    let st = lab.status_json(1);
    assert_eq!(st["netfilter"]["forward"], true, "{st}");
    assert_eq!(st["netfilter"]["masquerade"], false, "{st}");
    assert_eq!(st["netfilter"]["rulesPresent"], true, "{st}");
    assert!(iptables_save(&lab, 1, "filter")
        .contains("-A FORWARD -m comment --comment \"overlayd forward\" -j OVERLAYD-FWD"));
    let env = common::read(&lab.subnet_file(1));
    assert!(env.contains("FLANNEL_IPMASQ=false\n"), "{env}");
}

#[test]
fn forward_policy_drop_pods_still_reach_each_other_nftables() {
    forward_drop(
        "forward_policy_drop_pods_still_reach_each_other_nftables",
        true,
    );
}

#[test]
fn forward_policy_drop_pods_still_reach_each_other_iptables() {
    forward_drop(
        "forward_policy_drop_pods_still_reach_each_other_iptables",
        false,
    );
}

/// A host whose `iptables` is iptables-legacy (Flannel's default backend there): it talks to
/// the kernel through a raw socket, which is why overlayd keeps CAP_NET_RAW (`privs::KEPT`);
/// the masquerade rules go into the legacy tables and work.
#[test]
fn ip_masq_with_iptables_legacy_masquerades_through_legacy_tables() {
    let Some(mut lab) = Lab::new(
        "ip_masq_with_iptables_legacy_masquerades_through_legacy_tables",
        2,
        1,
    ) else {
        return;
    };
    // `iptables*` on this PATH are the legacy tools (nft is still found in /usr/sbin).
    let bin = lab.dir.join("legacy-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, target) in [
        ("iptables", "iptables-legacy"),
        ("iptables-save", "iptables-legacy-save"),
        ("iptables-restore", "iptables-legacy-restore"),
    ] {
        let real = ["/usr/sbin", "/sbin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(target))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{target} is not installed (apt-get install iptables)"));
        std::os::unix::fs::symlink(real, bin.join(name)).unwrap();
    }
    lab.daemon_env = vec![("PATH".into(), format!("{}:/usr/bin:/bin", bin.display()))];
    set_nftables(&lab, false);
    let x = lab.add_stranger(STRANGER_IP);
    let _server = lab.whoami_server(&x, PORT);
    lab.start_with(1, &["--ip-masq"]);
    lab.start_with(2, &["--ip-masq"]);
    let st = lab.status_json(1);
    assert_eq!(st["netfilter"]["backend"], "iptables (legacy)", "{st}");
    assert_eq!(st["netfilter"]["rulesPresent"], true, "{st}");
    let legacy_nat = lab.exec(&lab.node(1), &["iptables-legacy-save", "-t", "nat"]);
    assert!(
        String::from_utf8_lossy(&legacy_nat.stdout).contains("-A OVERLAYD-POSTRTG"),
        "{legacy_nat:?}"
    );
    assert_eq!(
        whoami_within(&lab, &lab.pod(1, 1), STRANGER_IP, 5).as_deref(),
        Some("198.18.0.1")
    );
    // The legacy tables are this namespace's: leave none of our chains behind.
    remove_all_in(&lab, 1);
}
