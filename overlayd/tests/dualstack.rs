//! Dual-stack (issue 14), as far as it goes: until the dataplane carries IPv6, a net-conf with
//! `EnableIPv6: true` must stop overlayd at startup with a message that says why and what to
//! do, before it touches the network or hands out subnet.env.

mod common;

use std::process::Command;

#[test]
fn enable_ipv6_is_refused_at_startup_with_the_reason() {
    if !common::privileged("enable_ipv6_is_refused_at_startup_with_the_reason") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("overlayd-dualstack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("net-conf.json"),
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("nodes.yaml"),
        "apiVersion: v1\nkind: NodeList\nitems:\n- metadata: {name: n1}\n  spec: {podCIDRs: [10.244.1.0/24, \"fd00:10:244:1::/64\"]}\n  status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}\n",
    )
    .unwrap();
    // A network namespace of its own (unshare -n): nothing it could touch is the host's.
    let out = Command::new("timeout")
        .args(["20", "unshare", "-n", common::OVERLAYD])
        .args(["--node-name", "n1", "--nodes-file"])
        .arg(dir.join("nodes.yaml"))
        .arg("--net-config-path")
        .arg(dir.join("net-conf.json"))
        .arg("--subnet-file")
        .arg(dir.join("subnet.env"))
        .output()
        .expect("run overlayd");
    let wrote_subnet_env = dir.join("subnet.env").exists();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("EnableIPv6 is true (IPv6Network fd00:10:244::/56)")
            && stderr.contains("set EnableIPv6 to false"),
        "{stderr}"
    );
    assert!(
        !wrote_subnet_env,
        "subnet.env written although startup failed"
    );
}
