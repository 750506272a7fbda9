//! Least privilege, failing closed (issue 11 item 10): a running overlayd holds CAP_NET_ADMIN
//! and CAP_NET_RAW only, in every thread, with no_new_privs set; when the drop cannot be done
//! it exits non-zero with a message instead of running on.

mod common;

use std::process::Command;

use common::Lab;

/// Runs the command after it with `capset` failing with EPERM (a seccomp filter installed by
/// python's ctypes, then exec): the kernel refuses the drop itself.
const DENY_CAPSET: &str = r#"
import ctypes, os, platform, struct, sys
arch = {"x86_64": (0xC000003E, 126), "aarch64": (0xC00000B7, 91)}.get(platform.machine())
if arch is None:
    sys.exit(77)
audit_arch, nr_capset = arch
def ins(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
prog = b"".join([
    ins(0x20, 0, 0, 4),                 # ld arch
    ins(0x15, 1, 0, audit_arch),        # jeq arch -> check nr
    ins(0x06, 0, 0, 0x7FFF0000),        # ret allow
    ins(0x20, 0, 0, 0),                 # ld nr
    ins(0x15, 0, 1, nr_capset),         # jeq capset
    ins(0x06, 0, 0, 0x00050000 | 1),    # ret errno EPERM
    ins(0x06, 0, 0, 0x7FFF0000),        # ret allow
])
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
fbuf = ctypes.create_string_buffer(fprog)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.addressof(fbuf), 0, 0) != 0:
    sys.exit("seccomp: errno %d" % ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"#;

#[test]
fn capability_drop_failure_exits_nonzero_with_message() {
    let dir = std::env::temp_dir().join(format!("overlayd-privs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("python3")
        .args(["-c", DENY_CAPSET, common::OVERLAYD])
        .args(["--node-name", "n1", "--nodes-file"])
        .arg(dir.join("nodes.yaml"))
        .arg("--net-config-path")
        .arg(dir.join("net-conf.json"))
        .output()
        .expect("python3");
    let _ = std::fs::remove_dir_all(&dir);
    if out.status.code() == Some(77) {
        eprintln!("SKIP: no seccomp numbers for this architecture");
        return;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("overlayd: error: cannot drop capabilities: cannot set the")
            && stderr.contains(
                "refusing to run with more privileges than CAP_NET_ADMIN and CAP_NET_RAW"
            ),
        "{stderr}"
    );
    // It stopped there: it never got to reading its configuration.
    assert!(!stderr.contains("net-conf"), "{stderr}");
}

/// Bits of CAP_NET_ADMIN (12) and CAP_NET_RAW (13) in /proc/<pid>/status.
const KEPT_MASK: u64 = (1 << 12) | (1 << 13);

#[test]
fn running_daemon_keeps_net_admin_and_net_raw_only_with_no_new_privs() {
    let Some(mut lab) = Lab::new(
        "running_daemon_keeps_net_admin_and_net_raw_only_with_no_new_privs",
        1,
        0,
    ) else {
        return;
    };
    lab.start(1);
    let pid = lab.pid(1).unwrap();
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // The control thread and the two queue workers at least.
    assert!(tasks.len() >= 3, "{tasks:?}");
    for t in tasks {
        let status = std::fs::read_to_string(t.join("status")).unwrap();
        let field = |name: &str| -> String {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} missing in {}", t.display()))
                .trim()
                .to_string()
        };
        for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let v = u64::from_str_radix(&field(set), 16).unwrap();
            assert_eq!(v, KEPT_MASK, "{} {set} {v:#x}", t.display());
        }
        assert_eq!(u64::from_str_radix(&field("CapInh:"), 16).unwrap(), 0);
        assert_eq!(field("NoNewPrivs:"), "1", "{}", t.display());
    }
    assert!(
        lab.log(1).contains("kept=CAP_NET_ADMIN,CAP_NET_RAW"),
        "{}",
        lab.log(1)
    );
    assert!(lab.stop(1));
}
