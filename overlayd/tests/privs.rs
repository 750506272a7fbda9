//! Least privilege, failing closed (issue 11 item 10): a running overlayd holds CAP_NET_ADMIN
//! and CAP_NET_RAW only, in every thread, with no_new_privs set; when the drop cannot be done
//! it exits non-zero with a message instead of running on.

mod common;

use std::process::Command;

use common::{sh_ok, Lab};

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

/// Syscalls the container runtimes' default seccomp profile allows to any process, whatever its
/// capabilities: the unconditional list of moby's profiles/seccomp/default.json (containerd's
/// default is generated from the same list), minus io_uring_setup/enter/register, which
/// containerd and newer moby block. `socket` (any family but AF_VSOCK), `clone` (without
/// namespace flags) and `clone3` (refused with ENOSYS, so libc falls back to clone) are allowed
/// with conditions and checked apart.
const RUNTIME_DEFAULT_ALLOWED: &str = "
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup
dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat
faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchown
fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr
fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex
futex_time64 futex_waitv futimesat getcpu getcwd getdents getdents64 getegid getegid32
geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid
getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32
getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid
gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64
ioprio_get ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr llistxattr
_llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier memfd_create
memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect
mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall
munmap name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause
pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat
renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask
rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select
semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg
sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32
setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid
setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt set_thread_area
set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack
signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs
statfs64 statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
";

/// Every syscall overlayd (and the iptables/nft it runs at start) makes while starting,
/// forwarding pod traffic and stopping is one RuntimeDefault allows, so the DaemonSet's
/// `seccompProfile: RuntimeDefault` cannot break it.
#[test]
fn every_syscall_is_allowed_by_the_runtime_default_seccomp_profile() {
    let Some(mut lab) = Lab::new(
        "every_syscall_is_allowed_by_the_runtime_default_seccomp_profile",
        2,
        1,
    ) else {
        return;
    };
    lab.start(2);
    // Not beside the nodes file: overlayd watches that directory, and strace writes on every
    // syscall it traces.
    let trace = std::env::temp_dir().join(format!("overlayd-strace-{}.out", std::process::id()));
    let _rm = RemoveOnDrop(trace.clone());
    let log = std::fs::File::create(lab.log_file(1)).unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.node(1), "strace", "-f", "-qq", "-o"])
        .arg(&trace)
        .args([
            "--",
            common::OVERLAYD,
            "--node-name",
            "node1",
            "--nodes-file",
        ])
        .arg(lab.nodes_file())
        .arg("--net-config-path")
        .arg(lab.dir.join("net-conf.json"))
        .arg("--subnet-file")
        .arg(lab.subnet_file(1))
        .args(["--queues", "2"])
        // Only overlayd's own syscalls: the FORWARD rules would trace nft/iptables too.
        .arg("--iptables-forward-rules=false")
        .stderr(log)
        .spawn()
        .expect("strace (apt-get install strace)");
    let ready = common::wait_until(std::time::Duration::from_secs(30), || {
        lab.log(1).contains("overlayd ready")
    });
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        let trace_text = std::fs::read_to_string(&trace).unwrap_or_default();
        let tail: Vec<&str> = trace_text.lines().rev().take(40).collect();
        panic!(
            "overlayd under strace did not start:\n{}\nlast syscalls:\n{}",
            lab.log(1),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    lab.wire(1);
    let ok = lab.ping_within(
        &lab.pod(1, 1),
        &Lab::pod_ip(2, 1),
        std::time::Duration::from_secs(5),
    );
    // Stop overlayd itself (strace follows it out).
    let pids = sh_ok(&["ip", "netns", "pids", &lab.node(1)]);
    for pid in pids.split_whitespace() {
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "overlayd")
        {
            let _ = Command::new("kill").args(["-TERM", pid]).status();
        }
    }
    let _ = child.wait();
    assert!(ok, "pods did not reach each other:\n{}", lab.log(1));
    let allowed: std::collections::BTreeSet<&str> =
        RUNTIME_DEFAULT_ALLOWED.split_whitespace().collect();
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for line in text.lines() {
        let rest = line.split_once(' ').map_or(line, |x| x.1).trim_start();
        let rest = rest.strip_prefix("<... ").unwrap_or(rest);
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty()
            && (rest[name.len()..].starts_with('(') || rest[name.len()..].starts_with(" resumed"))
        {
            used.insert(name);
        }
    }
    assert!(
        used.contains("sendmmsg") || used.contains("sendmsg"),
        "{used:?}"
    );
    assert!(
        used.contains("capset") && used.contains("ioctl"),
        "{used:?}"
    );
    // Allowed per architecture: arch_prctl on amd64 (TLS setup by libc).
    let conditional = ["socket", "clone", "clone3", "arch_prctl"];
    let refused: Vec<&String> = used
        .iter()
        .filter(|s| !allowed.contains(s.as_str()) && !conditional.contains(&s.as_str()))
        .collect();
    assert!(
        refused.is_empty(),
        "not allowed by RuntimeDefault: {refused:?} (used: {used:?})"
    );
    // The conditional ones: no AF_VSOCK socket, no namespace flags on clone.
    assert!(!text.contains("socket(AF_VSOCK"), "AF_VSOCK socket");
    for flag in [
        "CLONE_NEWNET",
        "CLONE_NEWNS",
        "CLONE_NEWUSER",
        "CLONE_NEWPID",
    ] {
        assert!(
            !text
                .lines()
                .any(|l| l.contains("clone(") && l.contains(flag)),
            "clone with {flag}"
        );
    }
    eprintln!("syscalls used ({}): {used:?}", used.len());
}

/// Removes a file when dropped (also when the test panics).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
