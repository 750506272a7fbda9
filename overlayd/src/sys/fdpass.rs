//! Passing open file descriptors to another process over a Unix `SOCK_SEQPACKET` socket
//! (`SCM_RIGHTS`): how a running overlayd hands its TAP queues and UDP sockets to the one that
//! replaces it. The kernel keeps whatever is queued in a shared descriptor, so nothing queued
//! there is lost between the old worker's last read and the new worker's first.
//!
//! One message = one datagram of bytes plus up to [`MAX_FDS`] descriptors; the protocol
//! itself lives in `control::handover`.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use socket2::{Domain, SockAddr, Socket, Type};

/// Most descriptors one message carries (a queue: TAP, receive socket, 16 send sockets).
pub const MAX_FDS: usize = 64;

fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
}

/// A listening socket at `path` (the caller removes a stale file first).
pub fn listen(path: &Path) -> io::Result<Socket> {
    let s = seqpacket()?;
    s.bind(&SockAddr::unix(path)?)?;
    s.listen(4)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Connects to the listener at `path`; `timeout` bounds every later send and receive.
pub fn connect(path: &Path, timeout: Duration) -> io::Result<Socket> {
    let s = seqpacket()?;
    s.connect(&SockAddr::unix(path)?)?;
    set_timeouts(&s, timeout)?;
    Ok(s)
}

/// Makes an accepted connection blocking with `timeout` on every send and receive.
pub fn set_timeouts(s: &Socket, timeout: Duration) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))
}

/// The user id of the process at the other end (`SO_PEERCRED`).
pub fn peer_uid(s: &Socket) -> io::Result<u32> {
    let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    Ok(cred.uid())
}

/// The effective user id of this process.
#[must_use]
pub fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Sends `data` with `fds` attached as one message.
pub fn send(s: &Socket, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors in one message, at most {MAX_FDS}",
            fds.len()
        )));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs = if raw.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let n = sendmsg::<UnixAddr>(
        s.as_raw_fd(),
        &[IoSlice::new(data)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)?;
    if n != data.len() {
        return Err(io::Error::other("short send on a SEQPACKET socket"));
    }
    Ok(())
}

/// Receives one message into `buf`: its length (0 when the peer closed) and the descriptors
/// that came with it, owned (close-on-exec) by the caller.
pub fn recv(s: &Socket, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: SCM_RIGHTS installed `fd` as a new descriptor in this process for
                // this message; nothing else refers to it, so taking ownership is sound.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg
        .flags
        .intersects(MsgFlags::MSG_CTRUNC | MsgFlags::MSG_TRUNC)
    {
        return Err(io::Error::other(
            "handover message or its descriptors were truncated",
        ));
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_cross_a_socket_pair_and_stay_usable() {
        let dir = std::env::temp_dir().join(format!("overlayd-fdpass-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let l = listen(&path).unwrap();
        let c = connect(&path, Duration::from_secs(2)).unwrap();
        let (a, _) = loop {
            match l.accept() {
                Ok(x) => break x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        };
        set_timeouts(&a, Duration::from_secs(2)).unwrap();
        assert_eq!(peer_uid(&a).unwrap(), own_uid());
        let (mut x, y) = UnixStream::pair().unwrap();
        send(&c, b"hello", &[std::os::fd::AsFd::as_fd(&y)]).unwrap();
        drop(y);
        let mut buf = [0u8; 64];
        let (n, fds) = recv(&a, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        let mut y2 = UnixStream::from(fds.into_iter().next().unwrap());
        y2.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        x.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        drop(c);
        assert_eq!(
            recv(&a, &mut buf).unwrap().0,
            0,
            "EOF after the peer closed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
