//! Process-wide security settings that have no safe wrapper in our dependencies.

use std::io;

/// Sets `no_new_privs`: no later `execve` (iptables, nft) can gain privileges through setuid
/// bits or file capabilities, and a root exec gets at most the capabilities this process still
/// has. It cannot be unset.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integer arguments (1, then zeros) and touches no
    // memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `no_new_privs` is set for this thread.
pub fn no_new_privs() -> io::Result<bool> {
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointers; all further arguments must be zero.
    let rc = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc == 1)
    }
}
