//! deploy/ checked against the code: every manifest document parses as its k8s-openapi type,
//! the ClusterRole grants exactly the API calls overlayd makes, and the DaemonSet wires what the
//! daemon and the CNI plugin expect. No root, no cluster.

use std::collections::BTreeSet;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;

const MANIFEST: &str = include_str!("../../deploy/kubernetes/overlayd.yaml");
const KIND_CONFIG: &str = include_str!("../../deploy/kind/kind-config.yaml");

#[derive(Default)]
struct Docs {
    namespaces: Vec<Namespace>,
    accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn typed<T: serde::de::DeserializeOwned>(v: &serde_yaml::Value, i: usize, kind: &str) -> T {
    serde_yaml::from_value(v.clone()).unwrap_or_else(|e| panic!("document {i} ({kind}): {e}"))
}

fn parse() -> Docs {
    let mut d = Docs::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(MANIFEST).enumerate() {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("document {i} has no kind"));
        match kind {
            "Namespace" => d.namespaces.push(typed(&v, i, kind)),
            "ServiceAccount" => d.accounts.push(typed(&v, i, kind)),
            "ClusterRole" => d.roles.push(typed(&v, i, kind)),
            "ClusterRoleBinding" => {
                d.bindings.push(typed(&v, i, kind));
            }
            "ConfigMap" => d.config_maps.push(typed(&v, i, kind)),
            "DaemonSet" => d.daemon_sets.push(typed(&v, i, kind)),
            other => panic!("document {i}: unexpected kind {other}"),
        }
    }
    d
}

#[test]
fn every_document_parses_and_references_resolve() {
    let d = parse();
    assert_eq!(
        (
            d.namespaces.len(),
            d.accounts.len(),
            d.roles.len(),
            d.bindings.len(),
            d.config_maps.len(),
            d.daemon_sets.len()
        ),
        (1, 1, 1, 1, 1, 1)
    );
    let ns = d.namespaces[0].metadata.name.as_deref().unwrap();
    let sa = &d.accounts[0];
    assert_eq!(sa.metadata.namespace.as_deref(), Some(ns));
    let b = &d.bindings[0];
    assert_eq!(b.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&b.role_ref.name), d.roles[0].metadata.name.as_ref());
    let subj = &b.subjects.as_ref().unwrap()[0];
    assert_eq!(subj.kind, "ServiceAccount");
    assert_eq!(Some(&subj.name), sa.metadata.name.as_ref());
    assert_eq!(subj.namespace.as_deref(), Some(ns));
    let ds = &d.daemon_sets[0];
    assert_eq!(ds.metadata.namespace.as_deref(), Some(ns));
    let spec = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name, sa.metadata.name);
    let cm = &d.config_maps[0];
    assert_eq!(cm.metadata.namespace.as_deref(), Some(ns));
    let cm_name = cm.metadata.name.as_deref().unwrap();
    assert!(spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .any(|v| v.config_map.as_ref().is_some_and(|c| c.name == cm_name)));
}

#[test]
fn cluster_role_grants_exactly_the_calls_the_code_makes() {
    let d = parse();
    let mut granted = BTreeSet::new();
    for rule in d.roles[0].rules.as_ref().unwrap() {
        assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none());
        for g in rule.api_groups.as_ref().unwrap() {
            assert_eq!(g, "", "only the core API group is used");
            for r in rule.resources.as_ref().unwrap() {
                for v in &rule.verbs {
                    assert_ne!(v, "*", "no wildcards");
                    granted.insert((r.clone(), v.clone()));
                }
            }
        }
    }
    let used: BTreeSet<(String, String)> = fdb_sync::kube::API_CALLS
        .iter()
        .map(|(r, v)| ((*r).to_string(), (*v).to_string()))
        .collect();
    assert_eq!(
        granted, used,
        "RBAC must cover every API call and nothing more"
    );
}

#[test]
fn daemonset_matches_what_overlayd_and_the_cni_plugin_expect() {
    let d = parse();
    let spec = d.daemon_sets[0].spec.template.spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    let tol = spec.tolerations.as_ref().unwrap();
    assert!(
        tol.iter().any(|t| t.operator.as_deref() == Some("Exists")
            && t.key.is_none()
            && t.effect.is_none()),
        "must tolerate every taint: {tol:?}"
    );
    let c = &spec.containers[0];
    let args = c.args.as_ref().unwrap();
    assert!(args.iter().any(|a| a == "--kube-subnet-mgr"));
    // Every flag is one the binary accepts.
    let help = Command::new(env!("CARGO_BIN_EXE_overlayd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    // And the whole argument list parses as the daemon's command line.
    let parsed = overlayd::cli::parse(args, &|k| (k == "NODE_NAME").then(|| "n".to_string()));
    assert!(
        matches!(parsed, Ok(overlayd::cli::Command::Run(_))),
        "{args:?}: {parsed:?}"
    );
    for a in args {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.contains(flag),
            "{flag} is not an overlayd flag:\n{help}"
        );
    }
    let env = c.env.as_ref().unwrap();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(
        node_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    let caps = c
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    let add: BTreeSet<&str> = caps
        .add
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(add, BTreeSet::from(["NET_ADMIN", "NET_RAW"]));
    let http_addr = args
        .iter()
        .find_map(|a| a.strip_prefix("--http-addr="))
        .unwrap_or("127.0.0.1:9102");
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let g = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(g.path.as_deref(), Some(path));
        let port = match &g.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => p.to_string(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
        };
        assert_eq!(format!("{}:{port}", g.host.as_deref().unwrap()), http_addr);
    }
    let mounts: BTreeSet<&str> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    for p in [
        "/run/flannel",
        "/run/overlayd",
        "/dev/net/tun",
        "/etc/kube-flannel/",
    ] {
        assert!(mounts.contains(p), "{p} not mounted: {mounts:?}");
    }
    for a in args {
        if let Some(path) = a
            .strip_prefix("--net-config-path=")
            .or(a.strip_prefix("--subnet-file="))
            .or(a.strip_prefix("--handover-socket="))
        {
            assert!(
                mounts
                    .iter()
                    .any(|m| path.starts_with(m.trim_end_matches('/'))),
                "{path} is not on a mounted volume"
            );
        }
    }
    let tun = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "dev-net-tun")
        .unwrap();
    assert_eq!(
        tun.host_path.as_ref().unwrap().type_.as_deref(),
        Some("CharDevice")
    );
    // Hitless upgrades: the new pod starts before the old one stops, and both see the
    // handover socket's directory on the host.
    assert!(
        args.iter()
            .any(|a| a.starts_with("--handover-socket=/run/overlayd/")),
        "{args:?}"
    );
    let ru = d.daemon_sets[0]
        .spec
        .update_strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    let int = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int;
    assert_eq!(ru.max_surge, Some(int(1)));
    assert_eq!(ru.max_unavailable, Some(int(0)));
    let run = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "run-overlayd")
        .unwrap();
    assert_eq!(
        run.host_path.as_ref().unwrap().path,
        "/run/overlayd",
        "a hostPath both pods see"
    );
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let script = init.command.as_ref().unwrap().join(" ");
    assert!(
        script.contains("/opt/cni/bin/overlayd-cni")
            && script.contains("/etc/cni/net.d/10-overlayd.conflist"),
        "{script}"
    );
}

#[test]
fn config_map_holds_a_valid_net_conf_and_conflist() {
    let d = parse();
    let data = d.config_maps[0].data.as_ref().unwrap();
    let nc = overlayd::config::NetConf::parse(&data["net-conf.json"]).unwrap();
    assert_eq!((nc.vni, nc.port), (1, 8472));
    assert_eq!(nc.network.to_string(), "10.244.0.0/16");
    let conf: serde_json::Value = serde_json::from_str(&data["cni-conf.json"]).unwrap();
    let plugins = conf["plugins"].as_array().unwrap();
    assert_eq!(plugins[0]["type"], "overlayd-cni");
    assert_eq!(plugins[0]["subnetFile"], "/run/flannel/subnet.env");
    assert!(plugins.iter().any(|p| p["type"] == "portmap"));
    assert!(conf["cniVersion"].is_string() && conf["name"].is_string());
}

#[test]
fn kind_config_matches_the_manifest() {
    let v: serde_yaml::Value = serde_yaml::from_str(KIND_CONFIG).unwrap();
    assert_eq!(
        v["networking"]["disableDefaultCNI"],
        serde_yaml::Value::Bool(true)
    );
    assert_eq!(v["networking"]["podSubnet"].as_str(), Some("10.244.0.0/16"));
    assert_eq!(v["nodes"].as_sequence().unwrap().len(), 3);
    let out = Command::new("bash")
        .args([
            "-n",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kind/e2e.sh"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
