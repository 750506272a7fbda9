use super::*;

fn parse(text: &str) -> NetConf {
    NetConf::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn err(text: &str) -> String {
    NetConf::parse(text).unwrap_err().to_string()
}

#[test]
fn flannel_default_file() {
    // kube-flannel.yml's net-conf.json.
    let c =
        parse(r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#);
    assert_eq!((c.vni, c.port, c.mtu), (1, 8472, None));
    assert_eq!(c.network.unwrap().to_string(), "10.244.0.0/16");
    assert_eq!(c.inner_mtu(1500), 1450);
    assert!(!c.enable_nftables && !c.direct_routing);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn full_backend() {
    let c = parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":false,"EnableNFTables":true,
            "Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"MTU":1400,"DirectRouting":true,"GBP":false}}"#,
    );
    assert_eq!((c.vni, c.port, c.mtu), (4096, 4789, Some(1400)));
    assert!(c.direct_routing && c.enable_nftables);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn keys_match_case_insensitively_as_go_does() {
    let c = parse(
        r#"{"network":"10.244.0.0/16","enablenftables":true,
            "backend":{"type":"VXLAN","vni":4096,"PORT":4789,"Mtu":1400,"directrouting":true}}"#,
    );
    assert_eq!((c.vni, c.port, c.mtu), (4096, 4789, Some(1400)));
    assert!(c.direct_routing && c.enable_nftables);
    // Go's fold: the Kelvin sign is a 'k', the long s an 's'.
    let c = parse(
        "{\"Network\":\"10.244.0.0/16\",\"EnableNFTable\u{17f}\":true,\"Bac\u{212a}end\":{\"Type\":\"vxlan\",\"VNI\":3}}",
    );
    assert!(c.enable_nftables);
    assert_eq!(c.vni, 3);
    // Members are assigned in document order: the last spelling wins.
    let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":7,"vni":9}}"#);
    assert_eq!(c.vni, 9);
    let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","vni":9,"VNI":7}}"#);
    assert_eq!(c.vni, 7);
}

#[test]
fn null_keeps_the_default_as_in_go() {
    let c = parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":null,"Backend":{"Type":"vxlan","VNI":null,"Port":null,"MTU":null}}"#,
    );
    assert_eq!((c.vni, c.port, c.mtu), (1, 8472, None));
}

#[test]
fn vni_zero_is_kept_and_port_zero_is_the_kernel_default() {
    let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":0,"Port":0}}"#);
    assert_eq!((c.vni, c.port), (0, 8472));
}

#[test]
fn mtu_is_the_outer_mtu_as_in_flannel() {
    // Flannel: flannel.1 MTU = Backend.MTU - 50, FLANNEL_MTU the same; default = underlay MTU.
    let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}"#);
    assert_eq!(c.inner_mtu(9000), 1350);
    assert_eq!(c.inner_mtu(1500), 1350);
    let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":0}}"#);
    assert_eq!(c.inner_mtu(9000), 8950);
    let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    assert_eq!(c.inner_mtu(1500), 1450);
}

#[test]
fn network_host_bits_are_cleared_as_go_parsecidr_does() {
    let c = parse(r#"{"Network":"10.244.3.7/16","Backend":{"Type":"vxlan"}}"#);
    assert_eq!(c.network.unwrap().to_string(), "10.244.0.0/16");
}

#[test]
fn unknown_and_ignored_keys_are_warned_about_once() {
    let c = parse(
        r#"{"Network":"10.244.0.0/16","Netwrk":"x","Netwrk":"y","IPv6Network":"fd00::/56",
            "Backend":{"Type":"vxlan","Learning":true,"MacPrefix":"0E-2A","Name":"v","Foo":1}}"#,
    );
    let w = c.warnings.join("\n");
    assert_eq!(c.warnings.len(), 6, "{w}");
    for want in [
        "\"Netwrk\" is unknown",
        "IPv6Network ignored while EnableIPv6 is false",
        "Backend.Learning=true",
        "Backend.MacPrefix is a Windows-only key",
        "Backend.Name is a Windows-only key",
        "Backend.\"Foo\" is unknown",
    ] {
        assert!(w.contains(want), "{want} not in {w}");
    }
}

#[test]
fn subnet_len_min_max_as_flannel_checks_them() {
    // Defaults: /24 for networks up to /22, else prefix + 2; the first and last subnet skipped.
    let c = parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    assert_eq!(
        c.subnet_allocation().unwrap(),
        SubnetAllocation {
            subnet_len: 24,
            subnet_min: "10.244.1.0".parse().unwrap(),
            subnet_max: "10.244.255.0".parse().unwrap(),
        }
    );
    let c = parse(r#"{"Network":"10.244.0.0/26","Backend":{"Type":"vxlan"}}"#);
    let a = c.subnet_allocation().unwrap();
    assert_eq!(a.subnet_len, 28);
    assert_eq!(a.subnet_min.to_string(), "10.244.0.16");
    assert_eq!(a.subnet_max.to_string(), "10.244.0.48");
    // Configuration documentation's example.
    let c = parse(
        r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0",
            "Backend":{"Type":"vxlan"}}"#,
    );
    assert_eq!(c.subnet_len, 20);
    let a = c.subnet_allocation().unwrap();
    assert_eq!(
        (
            a.subnet_len,
            a.subnet_min.to_string(),
            a.subnet_max.to_string()
        ),
        (20, "10.10.0.0".into(), "10.99.0.0".into())
    );
    assert!(c.warnings[0].contains("etcd subnet manager only (valid: /20"));
    // "0.0.0.0" is unset, as Flannel compares with ip.IP4(0).
    let c =
        parse(r#"{"Network":"10.244.0.0/16","SubnetMin":"0.0.0.0","Backend":{"Type":"vxlan"}}"#);
    assert_eq!(c.subnet_min, None);

    let bad = [
        (
            r#""SubnetLen":31"#,
            "/16",
            "SubnetLen: must be less than /31",
        ),
        (r#""SubnetLen":17"#, "/16", "fewer than four subnets"),
        ("", "/29", "too small"),
        (
            r#""SubnetMin":"10.245.0.0""#,
            "/16",
            "SubnetMin: 10.245.0.0 is not in the range",
        ),
        (
            r#""SubnetMax":"10.0.0.0""#,
            "/16",
            "SubnetMax: 10.0.0.0 is not in the range",
        ),
        (
            r#""SubnetMin":"10.244.1.1""#,
            "/16",
            "SubnetMin: 10.244.1.1 is not on a SubnetLen",
        ),
        (
            r#""SubnetMax":"10.244.9.128""#,
            "/16",
            "SubnetMax: 10.244.9.128 is not on a SubnetLen",
        ),
    ];
    for (extra, plen, want) in bad {
        let sep = if extra.is_empty() { "" } else { "," };
        let text =
            format!(r#"{{"Network":"10.244.0.0{plen}"{sep}{extra},"Backend":{{"Type":"vxlan"}}}}"#);
        // Not fatal in parse (Flannel checks only in its etcd manager), but said, with why.
        let c = parse(&text);
        let e = c.subnet_allocation().unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
        if !extra.is_empty() {
            assert!(
                c.warnings.iter().any(|w| w.contains(want)),
                "{text}: {:?}",
                c.warnings
            );
        }
    }
}

#[test]
fn errors_name_the_field() {
    let cases = [
        ("{", "not valid JSON"),
        ("[1]", "not an object"),
        (r#"{"Backend":{"Type":"vxlan"}}"#, "field Network: missing"),
        (r#"{"Network":"10.244.0.0/33"}"#, "field Network"),
        (
            r#"{"Network":"fd00::/56"}"#,
            "field Network: fd00::/56 is not an IPv4",
        ),
        (r#"{"Network":null}"#, "field Network: is null"),
        (
            r#"{"Network":"10.244.0.0/16"}"#,
            "field Backend: missing, which Flannel runs as its \"udp\"",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{}}"#,
            "Backend.Type: missing",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":"vxlan"}"#,
            "field Backend: is a string",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
            "Backend.Type: \"host-gw\"",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            "Backend.VNI: 16777216",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":-1}}"#,
            "Backend.VNI",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1.5}}"#,
            "Backend.VNI: 1.5 is not an integer",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
            "Backend.Port: 70000",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":100}}"#,
            "Backend.MTU: 100",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","GBP":true}}"#,
            "Backend.GBP: VXLAN Group Based Policy",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"yes"}}"#,
            "Backend.DirectRouting: is a string",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#,
            "IPv6Network: missing while EnableIPv6 is true",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"10.245.0.0/16","Backend":{"Type":"vxlan"}}"#,
            "IPv6Network: 10.245.0.0/16 is not an IPv6 CIDR",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56x","Backend":{"Type":"vxlan"}}"#,
            "IPv6Network: \"fd00::/56x\" has a bad prefix length",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv4":false}"#,
            "EnableIPv4",
        ),
        (
            r#"{"Network":"10.244.0.0/16","IPv6Network":"nope","Backend":{"Type":"vxlan"}}"#,
            "IPv6Network",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":-1,"Backend":{"Type":"vxlan"}}"#,
            "SubnetLen: -1",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"x","Backend":{"Type":"vxlan"}}"#,
            "SubnetMin",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}"#,
            "Backend.VNI: is a string",
        ),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn dual_stack_carries_the_ipv6_network_and_a_70_byte_overhead() {
    let c = parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::1/56",
            "Backend":{"Type":"vxlan"}}"#,
    );
    // Host bits cleared, as Go's net.ParseCIDR returns the network.
    assert_eq!(c.network_v6, Some("fd00:10:244::/56".parse().unwrap()));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // Flannel's MTU for both families (underlay - 50); IPv6 routes carry underlay - 70.
    assert_eq!(c.inner_mtu(1500), 1450);
    let c = parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",
            "Backend":{"Type":"vxlan","MTU":9000}}"#,
    );
    assert_eq!(c.inner_mtu(1500), 8950);
    // Without EnableIPv6 the key is read (and type-checked) but not used.
    let c = parse(
        r#"{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    );
    assert_eq!(c.network_v6, None);
    assert_eq!(c.inner_mtu(1500), 1450);
}

#[test]
fn ipv6_allocation_keys_are_etcd_only_when_ipv6_is_on() {
    let c = parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",
            "IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}"#,
    );
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("IPv6SubnetLen are used by the etcd subnet manager only"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn ipv6_subnet_len_min_max_as_flannel_checks_them() {
    // Defaults: /64 for networks up to /62, else prefix + 2; the first and last subnet skipped.
    let c = parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",
            "Backend":{"Type":"vxlan"}}"#,
    );
    assert_eq!(
        c.subnet_allocation_v6().unwrap(),
        Some(SubnetAllocationV6 {
            subnet_len: 64,
            subnet_min: "fd00:10:244:1::".parse().unwrap(),
            subnet_max: "fd00:10:244:ff::".parse().unwrap(),
        })
    );
    let c = parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/120",
            "Backend":{"Type":"vxlan"}}"#,
    );
    let a = c.subnet_allocation_v6().unwrap().unwrap();
    assert_eq!(
        (
            a.subnet_len,
            a.subnet_min.to_string(),
            a.subnet_max.to_string()
        ),
        (122, "fd00::40".into(), "fd00::c0".into())
    );
    // A /0 network: Flannel's big integers do not wrap, the last subnet is 2^128 - size.
    let c = parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"::/0",
            "Backend":{"Type":"vxlan"}}"#,
    );
    let a = c.subnet_allocation_v6().unwrap().unwrap();
    assert_eq!(
        (
            a.subnet_len,
            a.subnet_min.to_string(),
            a.subnet_max.to_string()
        ),
        (64, "0:0:0:1::".into(), "ffff:ffff:ffff:ffff::".into())
    );
    // Given values are kept; `::` and null are unset, as Flannel's ip.IsEmpty.
    let c = parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48",
            "IPv6SubnetLen":80,"IPv6SubnetMin":"fd00:10:244:7::","IPv6SubnetMax":"::",
            "Backend":{"Type":"vxlan"}}"#,
    );
    assert_eq!(c.ipv6_subnet_max, None);
    let a = c.subnet_allocation_v6().unwrap().unwrap();
    assert_eq!(
        (
            a.subnet_len,
            a.subnet_min.to_string(),
            a.subnet_max.to_string()
        ),
        (
            80,
            "fd00:10:244:7::".into(),
            "fd00:10:244:ffff:ffff::".into()
        )
    );
    assert!(
        c.warnings[0].contains("etcd subnet manager only (valid: /80"),
        "{:?}",
        c.warnings
    );
    // Without EnableIPv6 nothing of it is read.
    let c = parse(r#"{"Network":"10.244.0.0/16","IPv6SubnetLen":80,"Backend":{"Type":"vxlan"}}"#);
    assert_eq!((c.ipv6_subnet_len, c.subnet_allocation_v6()), (0, Ok(None)));

    let bad = [
        (
            r#""IPv6SubnetLen":127"#,
            "/56",
            "IPv6SubnetLen: must be less than /127",
        ),
        (r#""IPv6SubnetLen":57"#, "/56", "fewer than four subnets"),
        ("", "/125", "IPv6Network: fd00:10:244::/125 is too small"),
        (
            r#""IPv6SubnetMin":"fd00:10:245::""#,
            "/56",
            "IPv6SubnetMin: fd00:10:245:: is not in the range",
        ),
        (
            r#""IPv6SubnetMax":"fd00::""#,
            "/56",
            "IPv6SubnetMax: fd00:: is not in the range",
        ),
        (
            r#""IPv6SubnetMin":"fd00:10:244:1::1""#,
            "/56",
            "IPv6SubnetMin: fd00:10:244:1::1 is not on a IPv6SubnetLen (/64) boundary",
        ),
    ];
    for (extra, plen, want) in bad {
        let sep = if extra.is_empty() { "" } else { "," };
        let text = format!(
            r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::{plen}"{sep}{extra},"Backend":{{"Type":"vxlan"}}}}"#
        );
        let c = parse(&text);
        let e = c.subnet_allocation_v6().unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
        if !extra.is_empty() {
            assert!(
                c.warnings.iter().any(|w| w.contains(want)),
                "{text}: {:?}",
                c.warnings
            );
        }
    }
}

#[test]
fn enable_ipv4_false_without_ipv6_is_refused_with_its_reason() {
    let e = err(r#"{"EnableIPv4":false,"Backend":{"Type":"vxlan"}}"#);
    assert!(
        e.contains("EnableIPv4: false while EnableIPv6 is false too")
            && e.contains("none defined stack"),
        "{e}"
    );
    // Flannel's CheckNetworkConfig: EnableIPv6 needs an IPv6Network, IPv6-only too.
    let e = err(r#"{"EnableIPv4":false,"EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#);
    assert!(
        e.contains("IPv6Network: missing while EnableIPv6 is true"),
        "{e}"
    );
}

#[test]
fn ipv6_only_is_accepted_without_network() {
    let c = parse(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    );
    assert_eq!(c.network, None);
    assert_eq!(c.network_v6.unwrap().to_string(), "fd00:10:244::/56");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // The IPv6 ranges are Flannel's; there is no IPv4 range to lease from.
    let a = c.subnet_allocation_v6().unwrap().unwrap();
    assert_eq!(a.subnet_len, 64);
    let e = c.subnet_allocation().unwrap_err().to_string();
    assert!(
        e.contains("EnableIPv4: false: there is no IPv4 Network"),
        "{e}"
    );
}

#[test]
fn ipv6_only_ignores_the_ipv4_keys_as_flannel_does() {
    // Flannel reads Network, SubnetLen/Min/Max only with EnableIPv4: even a bad one is ignored.
    let c = parse(
        r#"{"EnableIPv4":false,"Network":"10.244.0.0/16","SubnetLen":40,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    );
    assert_eq!(c.network, None);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("Network 10.244.0.0/16 ignored while EnableIPv4 is false")),
        "{:?}",
        c.warnings
    );
    assert!(
        !c.warnings.iter().any(|w| w.contains("SubnetLen")),
        "{:?}",
        c.warnings
    );
    // An IPv6 Network fails Flannel's JSON decoding (ip.IP4Net) whatever EnableIPv4 says.
    let e = err(
        r#"{"EnableIPv4":false,"Network":"fd00::/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
    );
    assert!(e.contains("Network: fd00::/16 is not an IPv4 CIDR"), "{e}");
}
