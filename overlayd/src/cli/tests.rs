use super::*;

fn args(s: &[&str]) -> Vec<String> {
    s.iter().map(|a| (*a).to_string()).collect()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn run_with(a: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, CliError> {
    match parse(&args(a), env)? {
        Command::Run(c) => Ok(*c),
        other => panic!("{a:?}: {other:?}"),
    }
}

fn run(a: &[&str]) -> Config {
    run_with(a, &no_env).unwrap_or_else(|e| panic!("{a:?}: {e}"))
}

fn fails(a: &[&str]) -> String {
    run_with(a, &no_env).unwrap_err().to_string()
}

const BASE: &[&str] = &["--node-name", "n1", "--nodes-file", "/tmp/nodes.yaml"];

fn with_base(extra: &[&str]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = BASE.to_vec();
    for e in extra {
        v.push(Box::leak(e.to_string().into_boxed_str()));
    }
    v
}

#[test]
fn defaults_are_flanneld_s() {
    let c = run(BASE);
    assert_eq!(c.node_name, NodeName::Given("n1".into()));
    assert_eq!(c.mode, Mode::NodesFile("/tmp/nodes.yaml".into()));
    assert_eq!(c.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
    assert_eq!(
        c.net_config_path,
        PathBuf::from("/etc/kube-flannel/net-conf.json")
    );
    assert!(!c.ip_masq && c.ip_masq_random_fully && c.iptables_forward_rules);
    assert_eq!(c.iptables_resync, Duration::from_secs(5));
    assert_eq!(c.subnet_lease_renew_margin, Duration::from_secs(3600));
    assert!(c.set_node_network_unavailable && !c.ip_blackhole_route);
    assert_eq!(c.healthz_addr, None);
    assert_eq!(c.annotation_prefix, "flannel.alpha.coreos.com/");
    assert_eq!(c.device, "ovl.1");
    assert_eq!(c.http_addr.to_string(), "127.0.0.1:9102");
    assert_eq!((c.verbosity, c.log_level()), (0, "info"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn go_flag_syntax_forms() {
    // -flag, --flag, -flag=value, --flag=value, -flag value, --flag value.
    let c = run(&[
        "-node-name=n2",
        "--nodes-file",
        "/x",
        "-ip-masq",
        "--iptables-forward-rules=false",
        "-iptables-resync",
        "7",
        "--healthz-port=10256",
        "-healthz-ip",
        "127.0.0.1",
        "-subnet-file=/run/s.env",
        "--net-config-path",
        "/etc/nc.json",
        "-device",
        "ovl.9",
        "--queues=0x2",
        "-allow-any-sender=1",
    ]);
    assert_eq!(c.node_name, NodeName::Given("n2".into()));
    assert_eq!(c.mode, Mode::NodesFile("/x".into()));
    assert!(c.ip_masq && !c.iptables_forward_rules && c.allow_any_sender);
    assert_eq!(c.iptables_resync, Duration::from_secs(7));
    assert_eq!(c.healthz_addr, Some("127.0.0.1:10256".parse().unwrap()));
    assert_eq!(c.subnet_file, PathBuf::from("/run/s.env"));
    assert_eq!(c.net_config_path, PathBuf::from("/etc/nc.json"));
    assert_eq!((c.device.as_str(), c.queues), ("ovl.9", Some(2)));
}

#[test]
fn bool_flags_take_values_only_after_equals() {
    for (v, want) in [
        ("true", true),
        ("1", true),
        ("t", true),
        ("TRUE", true),
        ("false", false),
        ("0", false),
        ("F", false),
    ] {
        let c = run(&with_base(&[&format!("--ip-masq={v}")]));
        assert_eq!(c.ip_masq, want, "{v}");
    }
    // Go: `-ip-masq false` sets true and leaves "false" as an argument, which is refused.
    let e = fails(&with_base(&["-ip-masq", "false"]));
    assert!(
        e.contains("unexpected argument \"false\"") && e.contains("-flag=false"),
        "{e}"
    );
    let e = fails(&with_base(&["--ip-masq=yes"]));
    assert!(e.contains("invalid value \"yes\" for flag -ip-masq"), "{e}");
}

#[test]
fn values_may_start_with_a_dash_and_last_wins() {
    // A non-bool flag takes the next argument whatever it looks like.
    let c = run(&with_base(&["-v", "-1", "-v", "4"]));
    assert_eq!((c.verbosity, c.log_level()), (4, "debug"));
    let c = run(&with_base(&["-v=7"]));
    assert_eq!(c.log_level(), "trace");
    let c = run(&with_base(&["--device", "-odd-name"]));
    assert_eq!(c.device, "-odd-name");
    let e = fails(&with_base(&["--iptables-resync", "-1"]));
    assert!(
        e.contains("-iptables-resync") && e.contains("at least 1"),
        "{e}"
    );
}

#[test]
fn list_flags_append() {
    let c = run(&with_base(&[
        "--iface",
        "eth0",
        "-iface=198.18.0.1",
        "--iface-regex",
        "^en.*",
        "-iface-regex=^10\\.",
    ]));
    assert_eq!(c.iface, ["eth0", "198.18.0.1"]);
    assert_eq!(c.iface_regex, ["^en.*", "^10\\."]);
}

#[test]
fn go_integers() {
    for (s, want) in [
        ("10", 10),
        ("-3", -3),
        ("+4", 4),
        ("0x1f", 31),
        ("0o17", 15),
        ("017", 15),
        ("0b101", 5),
        ("1_000", 1000),
        ("0x_1F", 31),
    ] {
        assert_eq!(parse_go_int(s), Ok(want), "{s}");
    }
    for s in [
        "",
        "1.5",
        "abc",
        "1__0",
        "_1",
        "1_",
        "0x",
        "99999999999999999999",
    ] {
        assert!(parse_go_int(s).is_err(), "{s}");
    }
    let e = fails(&with_base(&["--healthz-port", "ten"]));
    assert!(
        e.contains("invalid value \"ten\" for flag -healthz-port"),
        "{e}"
    );
    // klog's -v is base 10 only.
    let e = fails(&with_base(&["-v", "0x4"]));
    assert!(e.contains("for flag -v"), "{e}");
}

#[test]
fn syntax_errors_name_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--no-such-flag"],
            "flag provided but not defined: -no-such-flag",
        ),
        (
            &["-logtostderr"],
            "flag provided but not defined: -logtostderr",
        ),
        (&["---iface", "x"], "bad flag syntax: ---iface"),
        (&["-=x"], "bad flag syntax: -=x"),
        (&["--iface"], "flag needs an argument: -iface"),
        (&["stray"], "unexpected argument \"stray\""),
        (&["-"], "unexpected argument \"-\""),
        (&["--", "x"], "unexpected argument \"x\""),
    ];
    for (a, want) in cases {
        let e = fails(&with_base(a));
        assert!(e.contains(want), "{a:?}: {e}");
    }
    // "--" alone ends the flags.
    run(&with_base(&["--"]));
}

#[test]
fn help_and_version() {
    for h in ["-h", "--help", "-help"] {
        assert!(matches!(parse(&args(&[h]), &no_env), Ok(Command::Help)));
    }
    assert!(matches!(
        parse(&args(&["--version"]), &no_env),
        Ok(Command::Version)
    ));
    assert!(matches!(
        parse(&args(&["-version=true"]), &no_env),
        Ok(Command::Version)
    ));
    // flanneld checks --version before reading FLANNELD_*: FLANNELD_VERSION does nothing.
    let env = |k: &str| (k == "FLANNELD_VERSION").then(|| "true".to_string());
    assert!(run_with(BASE, &env).is_ok());
    let u = usage();
    for f in FLAGS {
        assert!(
            u.contains(&format!("-{}", f.name)),
            "{} not in usage",
            f.name
        );
    }
}

#[test]
fn flanneld_env_sets_flags_not_given_on_the_command_line() {
    let env = |k: &str| {
        Some(
            match k {
                "FLANNELD_IP_MASQ" => "true",
                "FLANNELD_IFACE" => "eth1,eth2",
                "FLANNELD_IPTABLES_RESYNC" => "9",
                "FLANNELD_SUBNET_FILE" => "/env/subnet.env",
                "FLANNELD_HEALTHZ_PORT" => "",
                "FLANNELD_V" => "6",
                "FLANNELD_LOG_BACKTRACE_AT" => "main.go:1",
                // overlayd's own flags are not flanneld's: no FLANNELD_ variable for them.
                "FLANNELD_DEVICE" => "ovl.env",
                _ => return None,
            }
            .to_string(),
        )
    };
    let c = run_with(&with_base(&["--iptables-resync=3"]), &env).unwrap();
    assert!(c.ip_masq);
    // Set() once with the whole value: no comma splitting, as flagutil does.
    assert_eq!(c.iface, ["eth1,eth2"]);
    // The command line wins.
    assert_eq!(c.iptables_resync, Duration::from_secs(3));
    assert_eq!(c.subnet_file, PathBuf::from("/env/subnet.env"));
    // An empty variable is skipped.
    assert_eq!(c.healthz_addr, None);
    assert_eq!(c.log_level(), "trace");
    assert!(c.warnings.iter().any(|w| w.contains("log_backtrace_at")));
    assert_eq!(c.device, "ovl.1");
    // The command line's list is not extended by the environment.
    let c = run_with(&with_base(&["--iface", "eth0"]), &env).unwrap();
    assert_eq!(c.iface, ["eth0"]);

    // A bad value: flanneld logs it and runs with the default; so does overlayd (a warning).
    let env = |k: &str| (k == "FLANNELD_IP_MASQ").then(|| "maybe".to_string());
    let c = run_with(BASE, &env).unwrap();
    assert!(!c.ip_masq);
    assert!(
        c.warnings[0].contains("invalid value \"maybe\" for FLANNELD_IP_MASQ")
            && c.warnings[0].contains("-ip-masq keeps its default"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn node_name_as_flanneld_finds_it() {
    let kube = ["--kube-subnet-mgr"];
    let env = |k: &str| {
        Some(
            match k {
                "POD_NAME" => "kube-flannel-ds-abc",
                "POD_NAMESPACE" => "kube-flannel",
                _ => return None,
            }
            .to_string(),
        )
    };
    let c = run_with(&kube, &env).unwrap();
    assert_eq!(
        c.node_name,
        NodeName::FromPod {
            namespace: "kube-flannel".into(),
            name: "kube-flannel-ds-abc".into()
        }
    );
    assert_eq!(
        c.mode,
        Mode::Kube {
            kubeconfig: None,
            api_url: None
        }
    );
    let env2 = |k: &str| match k {
        "NODE_NAME" => Some("from-env".to_string()),
        _ => env(k),
    };
    let c = run_with(&kube, &env2).unwrap();
    assert_eq!(c.node_name, NodeName::Given("from-env".into()));
    let c = run_with(&["--kube-subnet-mgr", "--node-name", "flag"], &env2).unwrap();
    assert_eq!(c.node_name, NodeName::Given("flag".into()));
    let e = run_with(&kube, &no_env).unwrap_err().to_string();
    assert!(e.contains("--node-name") && e.contains("POD_NAME"), "{e}");
    // Without the API server there is no pod to ask.
    let e = run_with(&["--nodes-file", "/x"], &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no node name"), "{e}");
}

#[test]
fn kube_flags() {
    let c = run(&[
        "--kube-subnet-mgr",
        "--node-name=n",
        "--kubeconfig-file=/k",
        "--kube-api-url",
        "https://10.0.0.1:6443",
        "--kube-annotation-prefix=flannel.alpha.coreos.com",
        "--set-node-network-unavailable=false",
    ]);
    assert_eq!(
        c.mode,
        Mode::Kube {
            kubeconfig: Some("/k".into()),
            api_url: Some("https://10.0.0.1:6443".into())
        }
    );
    assert!(!c.set_node_network_unavailable);
    let e = fails(&["--kube-subnet-mgr", "--node-name=n", "--nodes-file=/x"]);
    assert!(e.contains("both given"), "{e}");
    let c = run(&with_base(&["--kubeconfig-file=/k"]));
    assert!(c.warnings[0].contains("--kubeconfig-file is used with --kube-subnet-mgr only"));
}

#[test]
fn annotation_prefix_as_flannel_builds_it() {
    assert_eq!(
        annotation_prefix("flannel.alpha.coreos.com").unwrap(),
        "flannel.alpha.coreos.com/"
    );
    assert_eq!(annotation_prefix("example.com/").unwrap(), "example.com/");
    assert_eq!(
        annotation_prefix("example.com/net").unwrap(),
        "example.com/net-"
    );
    assert_eq!(
        annotation_prefix("example.com/net-").unwrap(),
        "example.com/net-"
    );
    assert!(annotation_prefix("a/b/c")
        .unwrap_err()
        .contains("single slash"));
    assert!(annotation_prefix("nodots").unwrap_err().contains("fqdn"));
    let e = fails(&with_base(&["--kube-annotation-prefix=a/b/c"]));
    assert!(e.contains("-kube-annotation-prefix"), "{e}");
}

#[test]
fn values_are_checked_with_the_flag_named() {
    let cases: &[(&str, &str)] = &[
        (
            "--subnet-lease-renew-margin=0",
            "-subnet-lease-renew-margin: out of acceptable range",
        ),
        (
            "--subnet-lease-renew-margin=1440",
            "-subnet-lease-renew-margin",
        ),
        ("--public-ip=fd00::1:x", "-public-ip"),
        ("--public-ipv6=10.0.0.1", "-public-ipv6"),
        ("--iface-can-reach=host", "-iface-can-reach"),
        ("--iface-regex=(", "-iface-regex"),
        ("--healthz-ip=any", "-healthz-ip"),
        ("--healthz-port=70000", "-healthz-port"),
        ("--queues=0", "-queues"),
        ("--busy-poll-us=-1", "-busy-poll-us"),
        ("--busy-poll-us=1001", "-busy-poll-us"),
        ("--http-addr=9102", "-http-addr"),
    ];
    for (a, want) in cases {
        let e = fails(&with_base(&[a]));
        assert!(e.contains(want), "{a}: {e}");
    }
    let c = run(&with_base(&[
        "--subnet-lease-renew-margin=1439",
        "--public-ipv6=fd00::1",
        "--public-ip=fd00::2",
    ]));
    assert_eq!(c.subnet_lease_renew_margin, Duration::from_secs(1439 * 60));
    // An IPv6 --public-ip parses (flanneld's ipv6 stack takes one); the family is checked
    // against EnableIPv4 at startup (underlay::find_underlay).
    assert_eq!(c.public_ip, Some("fd00::2".parse().unwrap()));
    // The busy-poll budget: the default, --latency-mode's, and an explicit one that wins.
    assert_eq!(
        c.busy_poll,
        Duration::from_micros(super::DEFAULT_BUSY_POLL_US)
    );
    let latency = run(&with_base(&["--latency-mode"]));
    assert_eq!(
        latency.busy_poll,
        Duration::from_micros(super::LATENCY_MODE_BUSY_POLL_US)
    );
    let both = run(&with_base(&["--latency-mode", "--busy-poll-us=30"]));
    assert_eq!(both.busy_poll, Duration::from_micros(30));
    assert_eq!(
        run(&with_base(&["--busy-poll-us", "0"])).busy_poll,
        Duration::ZERO
    );
    // --public-ipv6 is the IPv6 VTEP address now (used with EnableIPv6), without a warning.
    assert_eq!(c.public_ipv6, Some("fd00::1".parse().unwrap()));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = run(&with_base(&[
        "--ip-masq-fully-random-disable",
        "-ip-blackhole-route",
    ]));
    assert!(!c.ip_masq_random_fully && c.ip_blackhole_route);
    // Flannel: a negative healthz port disables it as 0 does.
    assert_eq!(run(&with_base(&["--healthz-port=-1"])).healthz_addr, None);
}

#[test]
fn etcd_mode_is_the_default_and_takes_flanneld_flags() {
    let c = run(&[
        "--etcd-endpoints=http://10.0.0.1:2379, https://10.0.0.2:2379",
        "-etcd-prefix",
        "/x/net",
        "--etcd-cafile=/ca.pem",
        "--etcd-certfile=/c.pem",
        "--etcd-keyfile=/k.pem",
        "--etcd-username=flannel",
        "--etcd-password=secret",
        "--subnet-lease-renew-margin=30",
    ]);
    let Mode::Etcd { etcd, lease_ttl } = &c.mode else {
        panic!("{:?}", c.mode)
    };
    assert_eq!(
        etcd.endpoints,
        ["http://10.0.0.1:2379", "https://10.0.0.2:2379"]
    );
    assert_eq!(etcd.prefix, "/x/net");
    assert_eq!(
        etcd.cafile.as_deref(),
        Some(std::path::Path::new("/ca.pem"))
    );
    assert_eq!(etcd.username.as_deref(), Some("flannel"));
    assert_eq!(etcd.password.as_deref(), Some("secret"));
    assert_eq!(*lease_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(c.subnet_lease_renew_margin, Duration::from_secs(30 * 60));
    // No node name needed: the host name stands in.
    assert!(matches!(c.node_name, NodeName::Given(ref n) if !n.is_empty()));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // Defaults are flanneld's; FLANNELD_ETCD_* set them too.
    let c = run(&[]);
    let Mode::Etcd { etcd, .. } = &c.mode else {
        panic!()
    };
    assert_eq!(
        etcd.endpoints,
        ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    );
    assert_eq!(etcd.prefix, "/coreos.com/network");
    let env = |k: &str| match k {
        "FLANNELD_ETCD_ENDPOINTS" => Some("http://192.0.2.1:2379".to_string()),
        "FLANNELD_ETCD_PREFIX" => Some("/env/prefix".to_string()),
        "FLANNELD_ETCD_USERNAME" => Some("u".to_string()),
        super::TEST_LEASE_TTL_ENV => Some("6".to_string()),
        _ => None,
    };
    let Ok(Command::Run(c)) = parse(&[], &env) else {
        panic!()
    };
    let Mode::Etcd { etcd, lease_ttl } = &c.mode else {
        panic!()
    };
    assert_eq!(etcd.endpoints, ["http://192.0.2.1:2379"]);
    assert_eq!(etcd.prefix, "/env/prefix");
    assert_eq!(etcd.username.as_deref(), Some("u"));
    assert_eq!(*lease_ttl, Duration::from_secs(6));

    let e = fails(&["--etcd-endpoints=10.0.0.1:2379"]);
    assert!(e.contains("http://") && e.contains("10.0.0.1:2379"), "{e}");
    let e = fails(&["--etcd-certfile=/c.pem"]);
    assert!(e.contains("--etcd-keyfile"), "{e}");
    let e = fails(&["--etcd-prefix=coreos.com"]);
    assert!(e.contains("must start with '/'"), "{e}");
    // In the other modes the etcd flags are said to be unused.
    let c = run(&with_base(&["--etcd-endpoints=http://e:2379"]));
    assert!(c.warnings[0].contains("--etcd-endpoints ignored"));
}

/// Every flag flanneld's main.go defines (init(), and the klog flags it copies: v, vmodule,
/// log_backtrace_at), with a value of its type: each is accepted, or refused with its name.
#[test]
fn every_flanneld_flag_is_accepted_or_refused_by_name() {
    let flanneld: &[(&str, &str)] = &[
        ("etcd-endpoints", "http://127.0.0.1:2379"),
        ("etcd-prefix", "/coreos.com/network"),
        ("etcd-keyfile", "/k"),
        ("etcd-certfile", "/c"),
        ("etcd-cafile", "/ca"),
        ("etcd-username", "u"),
        ("etcd-password", "p"),
        ("iface", "eth0"),
        ("iface-regex", "^eth"),
        ("iface-can-reach", "198.18.0.1"),
        ("subnet-file", "/run/flannel/subnet.env"),
        ("public-ip", "198.18.0.1"),
        ("public-ipv6", "fd00::1"),
        ("subnet-lease-renew-margin", "60"),
        ("ip-masq", "true"),
        ("ip-masq-fully-random-disable", "true"),
        ("kube-subnet-mgr", "true"),
        ("kube-api-url", "https://127.0.0.1:6443"),
        ("kube-annotation-prefix", "flannel.alpha.coreos.com"),
        ("kubeconfig-file", "/k"),
        ("version", "false"),
        ("healthz-ip", "0.0.0.0"),
        ("healthz-port", "10256"),
        ("iptables-resync", "5"),
        ("iptables-forward-rules", "true"),
        ("ip-blackhole-route", "true"),
        ("net-config-path", "/etc/kube-flannel/net-conf.json"),
        ("set-node-network-unavailable", "true"),
        ("v", "2"),
        ("vmodule", "main=4"),
        ("log_backtrace_at", "main.go:10"),
    ];
    for f in FLAGS.iter().filter(|f| f.flanneld) {
        assert!(
            flanneld.iter().any(|(n, _)| *n == f.name),
            "{} is in the table but not in the list from main.go",
            f.name
        );
    }
    for (name, value) in flanneld {
        for form in [format!("-{name}={value}"), format!("--{name}={value}")] {
            let mut a = vec!["--node-name=n".to_string()];
            if *name != "kube-subnet-mgr" {
                a.push("--nodes-file=/x".into());
            }
            a.push(form.clone());
            match parse(&a, &no_env) {
                Ok(_) => {}
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.contains(&format!("-{name}")), "{form}: {e}");
                    assert!(
                        e.contains("not implemented yet") || e.contains("drop"),
                        "{form}: refused without saying what to do: {e}"
                    );
                }
            }
        }
    }
}

/// The default queue count: one worker on small machines (measured better there), one per
/// CPU above.
#[test]
fn default_queues_one_on_small_machines() {
    assert_eq!(super::default_queues(1), 1);
    assert_eq!(super::default_queues(2), 1);
    assert_eq!(super::default_queues(3), 3);
    assert_eq!(super::default_queues(16), 16);
}
