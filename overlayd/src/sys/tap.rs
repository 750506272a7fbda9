//! Multi-queue TAP device with a virtio-net header on every frame (`IFF_VNET_HDR`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "cannot open /dev/net/tun: {0} (is the tun module loaded and are we root / CAP_NET_ADMIN?)"
    )]
    Open(io::Error),
    #[error("device name {0:?} is not valid: 1 to 15 bytes, no '/' or whitespace")]
    BadName(String),
    #[error("cannot attach queue {queue} of TAP device {name}: {err}")]
    Attach {
        name: String,
        queue: usize,
        err: io::Error,
    },
    #[error("TAP device {name}: {what} failed: {err}")]
    Ioctl {
        name: String,
        what: &'static str,
        err: io::Error,
    },
}

/// One queue of the TAP device: reads give `vnet header + frame`, writes take the same.
#[derive(Debug)]
pub struct TapQueue {
    file: File,
}

impl TapQueue {
    #[must_use]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A queue received from another process (a handover): the descriptor must be a queue of
    /// our TAP device, which the handover protocol checks before sending it.
    #[must_use]
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> Self {
        TapQueue {
            file: File::from(fd),
        }
    }
}

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name
            .bytes()
            .any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0)
}

/// Creates (or attaches to) TAP device `name` with `queues` queues, each a non-blocking fd.
/// The device disappears when the last queue is closed.
pub fn open_multiqueue(name: &str, queues: usize) -> Result<Vec<TapQueue>, TapError> {
    if !valid_name(name) {
        return Err(TapError::BadName(name.to_string()));
    }
    let mut out = Vec::with_capacity(queues);
    for queue in 0..queues.max(1) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            #[allow(clippy::cast_possible_truncation)]
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE)
                as libc::c_short,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `IfReqFlags` has the same layout
        // for the name and flags members and is padded to the full 40-byte size of ifreq.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETIFF,
                std::ptr::from_mut(&mut req),
            )
        };
        if rc < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                queue,
                err: io::Error::last_os_error(),
            });
        }
        out.push(TapQueue { file });
    }
    Ok(out)
}

/// Makes the device outlive its queues (`TUNSETPERSIST`): when overlayd stops or crashes, the
/// device, its address, routes and neighbours stay, and the next overlayd attaches new queues.
pub fn set_persist(q: &TapQueue, name: &str, persist: bool) -> Result<(), TapError> {
    // SAFETY: TUNSETPERSIST takes its argument by value (0 or 1).
    let rc = unsafe {
        libc::ioctl(
            q.file.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(persist),
        )
    };
    if rc < 0 {
        return Err(TapError::Ioctl {
            name: name.to_string(),
            what: "TUNSETPERSIST",
            err: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Checksum offload plus TCP segmentation offload for IPv4 and IPv6 (TSO needs CSUM).
pub const OFFLOAD_TCP: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

/// Enables TAP offloads (`TUN_F_*` bits) on a queue: with `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`
/// the kernel hands us TCP super-frames with partial checksums.
pub fn set_offload(q: &TapQueue, name: &str, flags: libc::c_uint) -> Result<(), TapError> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of flag bits).
    let rc = unsafe {
        libc::ioctl(
            q.file.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    };
    if rc < 0 {
        return Err(TapError::Ioctl {
            name: name.to_string(),
            what: "TUNSETOFFLOAD",
            err: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_size_matches_kernel() {
        assert_eq!(std::mem::size_of::<super::IfReqFlags>(), 40);
        assert_eq!(std::mem::size_of::<libc::ifreq>(), 40);
    }

    #[test]
    fn names() {
        assert!(super::valid_name("ovl.1"));
        assert!(!super::valid_name(""));
        assert!(!super::valid_name("a/b"));
        assert!(!super::valid_name("0123456789abcdef"));
    }
}
