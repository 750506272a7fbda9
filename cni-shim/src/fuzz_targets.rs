//! The body of the `cni` cargo-fuzz target (`fuzz/fuzz_targets/cni.rs`), kept in the library
//! so `tests/fuzz_corpus.rs` replays `fuzz/seeds/cni` and `fuzz/regressions/cni` on stable in
//! every `cargo test`. Pure parsing only: the commands themselves touch namespaces and netlink.
//! Not part of the API.
#![doc(hidden)]

use crate::config::{self, CniEnv, Command, NetConf, MAX_IFNAME_LEN};
use crate::subnet_env::SubnetEnv;

/// Input: `[KEY=VALUE lines]\0[stdin]`. Never panics; what a parser accepts obeys the rules
/// the commands rely on (IDs and names safe in paths and for the kernel, values in range).
pub fn cni(data: &[u8]) {
    let (env, stdin) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let env = String::from_utf8_lossy(env);
    let lookup = |k: &str| {
        env.lines().find_map(|l| {
            l.split_once('=')
                .filter(|(kk, _)| *kk == k)
                .map(|(_, v)| v.to_string())
        })
    };
    if let Ok(e) = CniEnv::from_lookup(lookup) {
        if matches!(e.command, Command::Add | Command::Del | Command::Check) {
            // The container ID becomes a file name and the ifname a kernel name.
            assert!(config::is_safe_id(&e.container_id) && e.container_id.len() <= 1024);
            assert!(!e.container_id.contains(['/', '\0']) && e.container_id != "..");
            assert!(config::validate_ifname("ifname", &e.ifname).is_ok());
            assert!(e.ifname.len() <= MAX_IFNAME_LEN && !e.ifname.contains('/'));
            if e.command != Command::Del {
                assert!(!e.netns.is_empty());
            }
        }
        // The environment's CNI_ARGS parse the same way on their own.
        let args = config::parse_cni_args(&lookup("CNI_ARGS").unwrap_or_default())
            .expect("CNI_ARGS accepted inside the env must parse alone");
        assert_eq!((e.args.clone(), e.requested_ips.clone()), args);
    }
    if let Ok((pairs, ips)) = config::parse_cni_args(&lookup("CNI_ARGS").unwrap_or_default()) {
        // Pairs re-joined parse to the same pairs; every requested IP came from an IP= pair.
        let joined: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let again = config::parse_cni_args(&joined.join(";")).expect("re-joined CNI_ARGS parse");
        assert_eq!(again, (pairs.clone(), ips.clone()));
        assert!(pairs.iter().all(|(k, _)| !k.contains(['=', ';'])));
        let from_ip: usize = pairs
            .iter()
            .filter(|(k, _)| k == "IP")
            .map(|(_, v)| v.split(',').count())
            .sum();
        assert_eq!(from_ip, ips.len());
    }
    let _ = config::peek_version(stdin);
    if let Ok(c) = NetConf::parse(stdin) {
        assert!(!c.name.is_empty() && c.name.len() <= 255 && config::is_safe_id(&c.name));
        assert!(config::validate_ifname("bridge", &c.bridge).is_ok());
        assert!(c.mtu.is_none_or(|m| (68..=65535).contains(&m)));
        for r in &c.routes {
            assert_eq!(
                r.dst.ip(),
                r.dst.network(),
                "route dst normalised: {}",
                r.dst
            );
        }
    }
    if let Ok(text) = std::str::from_utf8(stdin) {
        if let Ok(s) = SubnetEnv::parse(text) {
            assert!(!s.subnets.is_empty() && s.subnets.len() <= 2);
            assert!(s.mtu.is_none_or(|m| (68..=65535).contains(&m)));
            for n in &s.subnets {
                // The gateway is a host of the node subnet, which lies inside the network.
                assert!(n.subnet.contains(n.gateway), "{n:?}");
                assert_eq!(n.subnet.ip(), n.subnet.network());
                assert!(n.network.contains(n.subnet.network()));
                assert!(n.network.prefix() <= n.subnet.prefix());
                assert_eq!(n.subnet.is_ipv4(), n.gateway.is_ipv4());
            }
            assert!(s.v4().is_none_or(|n| n.is_ipv4()));
        }
    }
}
