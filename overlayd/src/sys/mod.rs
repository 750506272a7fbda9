//! The only place with `unsafe` code: the TAP device, UDP socket options and poll.
//! Netlink (links, addresses, routes, neighbours) goes through rtnetlink and is safe.
//!
//! Every `unsafe` block carries a `// SAFETY:` comment saying why it holds.
#![allow(unsafe_code)]

pub mod fdpass;
pub mod netlink;
pub mod process;
pub mod tap;
pub mod udp;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Sets an integer socket option.
pub(crate) fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is a live descriptor for the borrow; the option value is a plain c_int whose
    // address and size we pass exactly.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Readiness of each descriptor after `poll_readable`.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<[bool; 4]> {
    assert!(fds.len() <= 4, "poll_readable takes at most 4 descriptors");
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    for (p, fd) in pfds.iter_mut().zip(fds) {
        p.fd = fd.as_raw_fd();
        p.events = libc::POLLIN;
    }
    // SAFETY: `pfds` is a valid array of `fds.len()` initialised pollfd structs that outlives
    // the call; the descriptors are borrowed and therefore open.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([false; 4]);
        }
        return Err(e);
    }
    let mut out = [false; 4];
    for (o, p) in out.iter_mut().zip(&pfds[..fds.len()]) {
        *o = p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    }
    Ok(out)
}

/// For tests that need root: runs `f` on a thread of its own moved into a private network
/// namespace, which goes away with the thread and what it opened. Without root it says so and
/// skips, unless `CI` is set, where that fails.
#[cfg(test)]
pub(crate) fn in_private_netns(test: &str, f: impl FnOnce() + Send + 'static) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: needs root, and CI is set"
        );
        eprintln!("{test}: skipped: needs root (a network namespace)");
        return;
    }
    let t = std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) only moves this thread (and the processes it spawns)
        // into a new network namespace, which goes away with them.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        f();
    });
    if let Err(panic) = t.join() {
        std::panic::resume_unwind(panic);
    }
}
