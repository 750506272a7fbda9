//! Benchmarks for overlayd: criterion micro-benchmarks and the netns rig.

/// What the scale benchmarks (`kube-scale`, `etcd-scale`) share: running a command, counting
/// what the kernel holds on `ovl.1`, and a process's resident memory.
pub mod scale {
    use std::process::Command;

    /// Runs `args`, panics with its stderr when it fails, returns its stdout.
    pub fn sh(args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Lines of `ip -n <ns> <what> show dev ovl.1` (routes or neighbours).
    pub fn count_lines(ns: &str, what: &str) -> usize {
        sh(&["ip", "-n", ns, what, "show", "dev", "ovl.1"])
            .lines()
            .count()
    }

    /// VmRSS of `pid` in KiB (0 when unreadable).
    pub fn rss_kib(pid: u32) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}
