#![no_main]
//! The CNI plugin's input parsing: the network config on stdin and the CNI_* environment.
//! Input: `[env block]\0[stdin]`, the env block as KEY=VALUE lines. Pure parsing only: the
//! commands themselves touch namespaces and netlink.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
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
    let _ = cni_shim::config::CniEnv::from_lookup(lookup);
    let _ = cni_shim::config::parse_cni_args(&lookup("CNI_ARGS").unwrap_or_default());
    let _ = cni_shim::config::peek_version(stdin);
    let _ = cni_shim::config::NetConf::parse(stdin);
    if let Ok(text) = std::str::from_utf8(stdin) {
        let _ = cni_shim::subnet_env::SubnetEnv::parse(text);
    }
});
