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
const FROM_FLANNEL: &str = include_str!("../../deploy/kubernetes/overlayd-from-flannel.yaml");
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
    parse_text(MANIFEST)
}

fn parse_text(text: &str) -> Docs {
    let mut d = Docs::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
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
    assert_rbac_is_exactly_the_api_calls(&parse());
    assert_rbac_is_exactly_the_api_calls(&parse_text(FROM_FLANNEL));
}

fn assert_rbac_is_exactly_the_api_calls(d: &Docs) {
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
    assert_eq!(nc.network.unwrap().to_string(), "10.244.0.0/16");
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

/// Both DaemonSets: every container runs with least privilege (11.10): no privilege
/// escalation, a read-only root file system, ALL capabilities dropped and only what
/// `overlayd::privs::KEPT` keeps added back (nothing for the init container), a RuntimeDefault
/// seccomp profile; /dev/net/tun granted as a CharDevice hostPath; the iptables lock mounted
/// (the only other path iptables writes).
#[test]
fn daemonsets_run_with_least_privilege_and_the_tun_device() {
    let kept: BTreeSet<String> = overlayd::privs::KEPT
        .iter()
        .map(|c| c.to_string().trim_start_matches("CAP_").to_string())
        .collect();
    assert_eq!(
        kept,
        BTreeSet::from(["NET_ADMIN".to_string(), "NET_RAW".to_string()])
    );
    for (name, text) in [
        ("overlayd.yaml", MANIFEST),
        ("overlayd-from-flannel.yaml", FROM_FLANNEL),
    ] {
        let d = parse_text(text);
        let spec = d.daemon_sets[0].spec.template.spec.as_ref().unwrap();
        let pod_seccomp = spec
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str());
        let inits = spec.init_containers.as_deref().unwrap_or_default();
        for c in inits.iter().chain(&spec.containers) {
            let is_main = c.name == "overlayd";
            let sc = c
                .security_context
                .as_ref()
                .unwrap_or_else(|| panic!("{name}/{}: no securityContext", c.name));
            assert_eq!(
                sc.allow_privilege_escalation,
                Some(false),
                "{name}/{}",
                c.name
            );
            assert_eq!(
                sc.read_only_root_filesystem,
                Some(true),
                "{name}/{}",
                c.name
            );
            assert_ne!(sc.privileged, Some(true), "{name}/{}", c.name);
            let seccomp = sc
                .seccomp_profile
                .as_ref()
                .map(|p| p.type_.as_str())
                .or(pod_seccomp);
            assert_eq!(seccomp, Some("RuntimeDefault"), "{name}/{}", c.name);
            let caps = sc.capabilities.as_ref().unwrap();
            assert_eq!(
                caps.drop.as_deref(),
                Some(&["ALL".to_string()][..]),
                "{name}/{}",
                c.name
            );
            let add: BTreeSet<String> = caps.add.clone().unwrap_or_default().into_iter().collect();
            if is_main {
                assert_eq!(
                    add, kept,
                    "{name}: added capabilities must be what privs keeps"
                );
            } else {
                assert!(add.is_empty(), "{name}/{}: {add:?}", c.name);
            }
        }
        let main = spec
            .containers
            .iter()
            .find(|c| c.name == "overlayd")
            .unwrap();
        let mounts: Vec<(&str, &str)> = main
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        let volume = |v: &str| {
            spec.volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|x| x.name == v)
                .unwrap_or_else(|| panic!("{name}: no volume {v}"))
                .host_path
                .clone()
                .unwrap()
        };
        let tun = mounts.iter().find(|m| m.1 == "/dev/net/tun").unwrap();
        let hp = volume(tun.0);
        assert_eq!(
            (hp.path.as_str(), hp.type_.as_deref()),
            ("/dev/net/tun", Some("CharDevice"))
        );
        let lock = mounts.iter().find(|m| m.1 == "/run/xtables.lock").unwrap();
        assert_eq!(volume(lock.0).path, "/run/xtables.lock");
        // The manifest says why the device is granted this way.
        assert!(
            text.contains("runc 1.2.0-1.2.3")
                || text.contains("see the comment there on /dev/net/tun")
        );
    }
}

#[test]
fn shipped_cni_network_is_flannels_cbr0() {
    let d = parse();
    let data = d.config_maps[0].data.as_ref().unwrap();
    let conf: serde_json::Value = serde_json::from_str(&data["cni-conf.json"]).unwrap();
    assert_eq!(conf["name"], "cbr0");
    assert_eq!(conf["plugins"][0]["bridge"], "cni0");
    assert_eq!(conf["plugins"][0]["dataDir"], "/var/lib/cni/networks");
}

/// The migration manifest lives in Flannel's namespace and uses Flannel's ConfigMap as it is:
/// net-conf.json for the daemon, cni-conf.json for the CNI side; no objects of Flannel's are
/// redefined.
#[test]
fn from_flannel_manifest_uses_kube_flannel_cfg_as_it_is() {
    let d = parse_text(FROM_FLANNEL);
    assert_eq!(
        (
            d.namespaces.len(),
            d.config_maps.len(),
            d.accounts.len(),
            d.daemon_sets.len()
        ),
        (0, 0, 1, 1),
        "Flannel's namespace and ConfigMap stay Flannel's"
    );
    let sa = &d.accounts[0];
    assert_eq!(sa.metadata.namespace.as_deref(), Some("kube-flannel"));
    let b = &d.bindings[0];
    assert_eq!(Some(&b.role_ref.name), d.roles[0].metadata.name.as_ref());
    let subj = &b.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (subj.name.as_str(), subj.namespace.as_deref()),
        ("overlayd", Some("kube-flannel"))
    );
    let ds = &d.daemon_sets[0];
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-flannel"));
    assert_ne!(ds.metadata.name.as_deref(), Some("kube-flannel-ds"));
    let spec = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name, sa.metadata.name);
    assert_eq!(spec.host_network, Some(true));
    let cfg = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.config_map.is_some())
        .unwrap();
    assert_eq!(cfg.config_map.as_ref().unwrap().name, "kube-flannel-cfg");
    assert!(
        cfg.config_map.as_ref().unwrap().items.is_none(),
        "both keys, as they are"
    );
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let main = &spec.containers[0];
    for c in [init, main] {
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.name == cfg.name && m.mount_path == "/etc/kube-flannel/"),
            "{} does not mount kube-flannel-cfg at /etc/kube-flannel/",
            c.name
        );
    }
    let args = main.args.as_ref().unwrap();
    assert!(args.iter().any(|a| a == "--kube-subnet-mgr"));
    assert!(args.contains(&"--net-config-path=/etc/kube-flannel/net-conf.json".to_string()));
    assert!(args.contains(&"--subnet-file=/run/flannel/subnet.env".to_string()));
    let help = Command::new(env!("CARGO_BIN_EXE_overlayd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for a in args {
        let flag = a.split('=').next().unwrap();
        assert!(help.contains(flag), "{flag} is not an overlayd flag");
    }
}

/// kube-flannel.yml's cni-conf.json, byte for byte (Flannel's Documentation/kube-flannel.yml).
const FLANNEL_CNI_CONF: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"#;

/// Runs the migration manifest's install-cni script with its host paths moved into a temp
/// directory, on `cni_conf`; returns whether it succeeded and the directory.
fn run_install_cni(tag: &str, cni_conf: &str) -> (bool, std::path::PathBuf) {
    let d = parse_text(FROM_FLANNEL);
    let init = &d.daemon_sets[0]
        .spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()[0];
    let cmd = init.command.as_ref().unwrap();
    assert_eq!(cmd[..2], ["/bin/sh".to_string(), "-c".to_string()]);
    let root =
        std::env::temp_dir().join(format!("overlayd-install-cni-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for dir in [
        "etc/kube-flannel",
        "etc/cni/net.d",
        "opt/cni/bin",
        "usr/local/bin",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("etc/kube-flannel/cni-conf.json"), cni_conf).unwrap();
    std::fs::write(root.join("usr/local/bin/overlayd-cni"), "binary").unwrap();
    let r = root.to_str().unwrap();
    let mut script = cmd[2].clone();
    for p in [
        "/etc/kube-flannel/",
        "/etc/cni/net.d/",
        "/opt/cni/bin/",
        "/usr/local/bin/",
    ] {
        script = script.replace(p, &format!("{r}{p}"));
    }
    let ok = Command::new("sh")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success();
    (ok, root)
}

#[test]
fn from_flannel_install_cni_turns_flannels_cni_conf_into_overlayd_cni() {
    let (ok, root) = run_install_cni("ok", FLANNEL_CNI_CONF);
    assert!(ok);
    assert_eq!(
        std::fs::read_to_string(root.join("opt/cni/bin/overlayd-cni")).unwrap(),
        "binary"
    );
    let text = std::fs::read_to_string(root.join("etc/cni/net.d/10-flannel.conflist")).unwrap();
    let conf: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut want: serde_json::Value = serde_json::from_str(FLANNEL_CNI_CONF).unwrap();
    want["plugins"][0]["type"] = "overlayd-cni".into();
    assert_eq!(conf, want, "only the type changes");
    // What the runtime hands overlayd-cni: the plugin entry plus name and cniVersion.
    let mut plugin = conf["plugins"][0].clone();
    plugin["name"] = conf["name"].clone();
    plugin["cniVersion"] = conf["cniVersion"].clone();
    let nc = cni_shim::config::NetConf::parse(plugin.to_string().as_bytes()).unwrap();
    assert_eq!(
        nc.ipam_dir(),
        std::path::Path::new("/var/lib/cni/networks/cbr0")
    );
    assert_eq!(nc.bridge, "cni0");
    assert!(nc.hairpin_mode && nc.is_default_gateway);
    assert_eq!(
        nc.subnet_file,
        std::path::Path::new("/run/flannel/subnet.env")
    );
    let _ = std::fs::remove_dir_all(&root);

    // A cni-conf.json without Flannel's plugin is not silently installed.
    let (ok, root) = run_install_cni("bad", &FLANNEL_CNI_CONF.replace("flannel", "calico"));
    assert!(!ok);
    assert!(!root.join("etc/cni/net.d/10-flannel.conflist").exists());
    let _ = std::fs::remove_dir_all(&root);
}

/// deploy/kind/e2e.sh (which needs docker and kind, so it cannot run here) avoids what a read
/// against kind's code found would break it, and passes shellcheck.
#[test]
fn kind_e2e_script_is_clean_and_avoids_known_breakage() {
    let script = include_str!("../../deploy/kind/e2e.sh");
    let code: String = script
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !code.contains("kind load docker-image"),
        "multi-platform images fail to load that way"
    );
    assert!(script.contains("kind load image-archive") && script.contains("--platform"));
    assert!(
        script.contains("docker buildx version"),
        "must check for BuildKit"
    );
    assert!(script.contains("kind export logs") && script.contains("get events"));
    assert!(
        script.contains("FlannelIsUp") && script.contains("seq 1 30"),
        "annotation check retries"
    );
    let scripts = [
        concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kind/e2e.sh"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/build-cni-static.sh"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/cluster.sh"),
    ];
    match Command::new("shellcheck").args(scripts).output() {
        Ok(out) => assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "shellcheck not found and CI is set: deploy/local/install-deps.sh installs it"
            );
            eprintln!("SKIP shellcheck: not installed");
        }
    }
}
