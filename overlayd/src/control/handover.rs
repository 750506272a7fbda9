//! Hitless upgrades: a running overlayd hands its dataplane descriptors (every TAP queue, the
//! VXLAN receive socket and the send sockets of each queue) to a new overlayd started next to
//! it, over a Unix socket (`--handover-socket`, on a hostPath both pods of a `maxSurge: 1`
//! rolling update see).
//!
//! Why descriptors and not a second set of queues and SO_REUSEPORT sockets: a TAP queue or UDP
//! socket that is closed loses what is queued in it, and the kernel keeps steering frames and
//! datagrams to it until it is gone. Shared descriptors keep one set of queues: the new
//! process reads the same queues and sockets as the old one, then the old one stops reading,
//! and nothing is ever queued in a descriptor about to close.
//!
//! The exchange (one SEQPACKET message each, JSON, descriptors attached to `Queue`):
//! ```text
//! new -> old  Hello {version, pid, netns, device, port, vni, ipv6, ipv4_optional}
//! old -> new  Refuse {reason}                       (different netns, device, port, VNI)
//!          or Offer {pid, queues} + queues x Queue {id, tso, gro, rx, tx, rx6, tx6}
//!                                                  [tap, rx?, tx..., rx6?, tx6...]
//! new         starts its workers on the received descriptors (both processes forward now)
//! new -> old  Running
//! old         stops its workers, closes its copies, its listener and its HTTP port
//! old -> new  Released
//! ```
//! If the new process goes away before `Running`, the old one never stopped forwarding and
//! carries on. The old process then idles until it is told to stop, and leaves everything to
//! the new one (a Kubernetes container that exited would be restarted and take the dataplane
//! back).
//!
//! IPv6 underlay sockets (dual-stack) were added within version 1, backward-safe both ways:
//! a Hello says `ipv6: true` when its sender takes them, and only then does a Queue carry
//! `rx6`/`tx6` and their descriptors; a Hello without the field (an older overlayd) gets the
//! queues as before, and an older overlayd never sends them. A new process whose IPv6 underlay
//! differs from what it was handed (none, or another address) opens or drops its own IPv6
//! sockets afterwards (`control::adapt`); the shared TAP queues are what keep the handover
//! lossless.
//!
//! IPv6-only queues (no IPv4 sockets) came the same way: a Hello says `ipv4_optional: true`
//! when its sender takes a queue without them, and only then may a Queue say `rx: false`
//! (no IPv4 receive socket, `tx: 0`); a Queue without the field has its IPv4 sockets, as
//! before. An IPv6-only overlayd refuses a Hello without `ipv4_optional` (an older overlayd
//! could not use its queues, and cannot run IPv6-only anyway). Like IPv6, a successor opens
//! the IPv4 sockets it was not handed, or drops those it has no IPv4 underlay for, itself.
//!
//! Only a process of the same user in the same network namespace is served; the socket's
//! directory is created 0700.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use socket2::Socket;
use tracing::{info, warn};

use crate::sys::fdpass;
use crate::sys::tap::TapQueue;
use crate::worker::{Offloads, QueueIo};

/// Protocol version; a process refuses a Hello of another version.
pub const VERSION: u32 = 1;
/// How a refusal for another network namespace starts: the requester then runs on its own.
const OTHER_NETNS: &str = "another network namespace";
/// Bound on every step of the exchange.
const STEP_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Msg {
    Hello {
        version: u32,
        pid: u32,
        netns: String,
        device: String,
        port: u16,
        vni: u32,
        /// The sender takes IPv6 sockets with each queue (absent from older overlayds).
        #[serde(default)]
        ipv6: bool,
        /// The sender takes queues without IPv4 sockets (an IPv6-only predecessor's; absent
        /// from older overlayds).
        #[serde(default)]
        ipv4_optional: bool,
    },
    Refuse {
        reason: String,
    },
    Offer {
        pid: u32,
        queues: usize,
    },
    Queue {
        id: usize,
        tso: bool,
        gro: bool,
        /// An IPv4 receive socket follows the TAP queue; false only for an IPv6-only queue
        /// (then `tx` is 0), and only to an `ipv4_optional` Hello.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        rx: bool,
        tx: usize,
        /// An IPv6 receive socket follows the IPv4 send sockets (only to an `ipv6` Hello).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rx6: bool,
        /// IPv6 send sockets after that.
        #[serde(default, skip_serializing_if = "is_zero")]
        tx6: usize,
    },
    Running,
    Released,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_true(b: &bool) -> bool {
    *b
}

/// Checks a Queue message's layout against the descriptors that came with it
/// (`[tap, rx?, tx..., rx6?, tx6...]`): each family's receive socket comes with its send
/// sockets or neither does, and at least one family is there.
fn check_layout(rx: bool, tx: usize, rx6: bool, tx6: usize, fds: usize) -> Result<(), String> {
    // The counts come from the other process's message: added without overflow.
    let want = [usize::from(rx), tx, usize::from(rx6), tx6]
        .into_iter()
        .try_fold(1usize, usize::checked_add);
    if rx != (tx > 0) || rx6 != (tx6 > 0) || !(rx || rx6) || want != Some(fds) {
        return Err(format!(
            "{fds} descriptors for {} IPv4 receive socket, {tx} IPv4 send sockets, {} IPv6 receive socket and {tx6} IPv6 send sockets",
            u8::from(rx),
            u8::from(rx6)
        ));
    }
    Ok(())
}

/// What both sides must agree on for descriptors to be usable by the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub device: String,
    pub port: u16,
    pub vni: u32,
}

/// This process's network namespace, as the kernel names it (`net:[4026531840]`).
fn netns() -> String {
    std::fs::read_link("/proc/self/ns/net").map_or_else(
        |e| format!("unknown ({e})"),
        |p| p.to_string_lossy().into_owned(),
    )
}

fn send(s: &Socket, m: &Msg, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let bytes = serde_json::to_vec(m).map_err(io::Error::other)?;
    fdpass::send(s, &bytes, fds)
}

fn recv(s: &Socket) -> io::Result<(Msg, Vec<OwnedFd>)> {
    let mut buf = [0u8; 4096];
    let (n, fds) = fdpass::recv(s, &mut buf)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other overlayd closed the handover connection",
        ));
    }
    let m = serde_json::from_slice(&buf[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((m, fds))
}

/// The listening end, owned by the overlayd that runs the dataplane. A small thread blocks
/// in `accept` and passes connections to the control loop, which answers them between its
/// other work.
pub struct Listener {
    sock: Arc<Socket>,
    conns: tokio::sync::mpsc::Receiver<io::Result<Socket>>,
    path: PathBuf,
    ino: u64,
}

impl Listener {
    /// Listens at `path`, replacing a stale socket file a crashed overlayd left; fails when a
    /// live process listens there.
    pub fn bind(path: &Path) -> Result<Listener> {
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let sock = match fdpass::listen(path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if fdpass::connect(path, Duration::from_millis(200)).is_ok() {
                    bail!(
                        "another process listens on --handover-socket {}; give each overlayd its own",
                        path.display()
                    );
                }
                std::fs::remove_file(path).ok();
                fdpass::listen(path)?
            }
            Err(e) => return Err(e.into()),
        };
        sock.set_nonblocking(false)?;
        let ino = std::fs::metadata(path)?.ino();
        let sock = Arc::new(sock);
        let (tx, conns) = tokio::sync::mpsc::channel(1);
        let l = sock.clone();
        std::thread::Builder::new()
            .name("overlayd-handover".into())
            .spawn(move || loop {
                let conn = l.accept().and_then(|(c, _)| {
                    fdpass::set_timeouts(&c, STEP_TIMEOUT)?;
                    Ok(c)
                });
                // Shut down (the listener was dropped): stop.
                if conn.is_err() && Arc::strong_count(&l) == 1 {
                    return;
                }
                if tx.blocking_send(conn).is_err() {
                    return;
                }
            })?;
        Ok(Listener {
            sock,
            conns,
            path: path.to_path_buf(),
            ino,
        })
    }

    /// The next connection, blocking with per-step timeouts.
    pub async fn accept(&mut self) -> io::Result<Socket> {
        match self.conns.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Only our own file: a successor may already listen at the same path.
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
        // Wakes the accepting thread (accept fails with EINVAL), which then exits; new
        // connections are refused from now on.
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// The old side: answers a Hello on `conn` by sending the descriptors of `queues`, and waits
/// until the new process forwards with them. `Ok(Some(pid))`: the caller must now stop its
/// workers and then call [`released`]. `Ok(None)`: nothing changed (a probe that only
/// connected, a refused or aborted handover); go on forwarding.
pub fn offer<'a>(
    conn: &Socket,
    me: &Identity,
    queues: impl Iterator<Item = &'a QueueIo>,
) -> io::Result<Option<u32>> {
    let uid = fdpass::peer_uid(conn)?;
    if uid != fdpass::own_uid() {
        warn!(uid, "handover request from another user refused");
        return Ok(None);
    }
    let (version, pid, their_netns, device, port, vni, ipv6, ipv4_optional) = match recv(conn) {
        Ok((
            Msg::Hello {
                version,
                pid,
                netns,
                device,
                port,
                vni,
                ipv6,
                ipv4_optional,
            },
            _,
        )) => (version, pid, netns, device, port, vni, ipv6, ipv4_optional),
        // `overlayd cleanup` only checks that someone listens.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok((m, _)) => {
            warn!(?m, "unexpected handover message; ignored");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let them = Identity { device, port, vni };
    let queues: Vec<&QueueIo> = queues.collect();
    let ipv6_only = queues.iter().any(|q| q.rx.is_none());
    let refuse = if their_netns != netns() {
        Some(format!(
            "{OTHER_NETNS}: {their_netns}, this overlayd runs in {}",
            netns()
        ))
    } else if version != VERSION {
        Some(format!(
            "protocol version {version}, this overlayd speaks {VERSION}"
        ))
    } else if them != *me {
        Some(format!(
            "device {} port {} VNI {}, this overlayd runs device {} port {} VNI {}",
            them.device, them.port, them.vni, me.device, me.port, me.vni
        ))
    } else if ipv6_only && !(ipv4_optional && ipv6) {
        Some(
            "this overlayd runs IPv6-only (its queues have no IPv4 sockets) and the new one is too old to take such queues; upgrade to a version that supports EnableIPv4: false".to_string()
        )
    } else {
        None
    };
    if let Some(reason) = refuse {
        warn!(pid, %reason, "handover refused");
        send(conn, &Msg::Refuse { reason }, &[])?;
        return Ok(None);
    }
    info!(pid, "handing the dataplane over to a new overlayd");
    send(
        conn,
        &Msg::Offer {
            pid: std::process::id(),
            queues: queues.len(),
        },
        &[],
    )?;
    for (id, q) in queues.into_iter().enumerate() {
        let mut fds = vec![q.tap.file().as_fd()];
        // Without an IPv4 receive socket the successor said it takes such queues (above).
        fds.extend(q.rx.as_ref().map(AsFd::as_fd));
        fds.extend(q.tx_pool.iter().map(AsFd::as_fd));
        // An older successor would not expect them; it opens nothing for IPv6 anyway.
        let (rx6, tx6) = match (&q.rx6, ipv6) {
            (Some(rx6), true) => {
                fds.push(rx6.as_fd());
                fds.extend(q.tx_pool6.iter().map(AsFd::as_fd));
                (true, q.tx_pool6.len())
            }
            _ => (false, 0),
        };
        send(
            conn,
            &Msg::Queue {
                id,
                tso: q.offloads.tso,
                gro: q.offloads.gro,
                rx: q.rx.is_some(),
                tx: q.tx_pool.len(),
                rx6,
                tx6,
            },
            &fds,
        )?;
    }
    match recv(conn) {
        Ok((Msg::Running, _)) => Ok(Some(pid)),
        Ok((m, _)) => {
            warn!(?m, "handover aborted by the new overlayd; still forwarding");
            Ok(None)
        }
        Err(e) => {
            warn!(error = %e, "handover aborted (the new overlayd did not confirm); still forwarding");
            Ok(None)
        }
    }
}

/// The old side's last word: its workers are stopped and its copies closed.
pub fn released(conn: &Socket) -> io::Result<()> {
    send(conn, &Msg::Released, &[])
}

/// The new side's view of a handover in progress.
pub struct Taken {
    conn: Socket,
    pub from_pid: u32,
    /// The descriptors received, in queue order (taken by the caller to start workers).
    pub queues: Vec<QueueIo>,
}

/// The new side: asks an overlayd listening at `path` for its dataplane. `Ok(None)` when no
/// one answers (none runs, or it is stopping) — then the device, if any, is adopted instead.
/// An error when a running overlayd refuses (another device, port or VNI).
pub fn take_over(path: &Path, me: &Identity) -> Result<Option<Taken>> {
    let conn = match fdpass::connect(path, STEP_TIMEOUT) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            warn!(socket = %path.display(), error = %e, "cannot reach the handover socket; not taking over from a running overlayd");
            return Ok(None);
        }
    };
    let hello = Msg::Hello {
        version: VERSION,
        pid: std::process::id(),
        netns: netns(),
        device: me.device.clone(),
        port: me.port,
        vni: me.vni,
        ipv6: true,
        ipv4_optional: true,
    };
    let attempt = || -> io::Result<Result<(u32, Vec<QueueIo>), String>> {
        send(&conn, &hello, &[])?;
        let (from_pid, n) = match recv(&conn)? {
            (Msg::Offer { pid, queues }, _) => (pid, queues),
            (Msg::Refuse { reason }, _) => return Ok(Err(reason)),
            (m, _) => {
                return Err(io::Error::other(format!(
                    "unexpected handover message {m:?}"
                )))
            }
        };
        let mut queues = Vec::with_capacity(n);
        for want in 0..n {
            let (m, fds) = recv(&conn)?;
            let Msg::Queue {
                id,
                tso,
                gro,
                rx,
                tx,
                rx6,
                tx6,
            } = m
            else {
                return Err(io::Error::other(format!(
                    "expected queue {want}, got {m:?}"
                )));
            };
            if id != want {
                return Err(io::Error::other(format!(
                    "expected queue {want}, got queue {id}"
                )));
            }
            check_layout(rx, tx, rx6, tx6, fds.len())
                .map_err(|e| io::Error::other(format!("queue {id}: {e}")))?;
            let mut fds = fds.into_iter();
            let tap = TapQueue::from_fd(fds.next().unwrap_or_else(|| unreachable!()));
            let rx = if rx {
                fds.next().map(UdpSocket::from)
            } else {
                None
            };
            let tx_pool = fds.by_ref().take(tx).map(UdpSocket::from).collect();
            let rx6 = if rx6 {
                fds.next().map(UdpSocket::from)
            } else {
                None
            };
            queues.push(QueueIo {
                tap,
                rx,
                tx_pool,
                rx6,
                tx_pool6: fds.map(UdpSocket::from).collect(),
                offloads: Offloads { tso, gro },
            });
        }
        Ok(Ok((from_pid, queues)))
    };
    match attempt() {
        Ok(Ok((from_pid, queues))) => Ok(Some(Taken {
            conn,
            from_pid,
            queues,
        })),
        Ok(Err(reason)) if reason.starts_with(OTHER_NETNS) => {
            warn!(socket = %path.display(), %reason, "the overlayd at --handover-socket serves another network namespace; not taking over (give each namespace its own --handover-socket)");
            Ok(None)
        }
        Ok(Err(reason)) => bail!(
            "the overlayd running at --handover-socket {} refused the handover: {reason}; stop it first or give this one its own --handover-socket",
            path.display()
        ),
        Err(e) => {
            warn!(error = %e, "handover failed before any descriptor was used; adopting the device instead");
            Ok(None)
        }
    }
}

impl Taken {
    /// Tells the old process that our workers run, and waits until it has stopped its own.
    pub fn confirm(self) -> io::Result<()> {
        send(&self.conn, &Msg::Running, &[])?;
        // The old one joins its workers (each wakes within 100 ms) before answering.
        self.conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        match recv(&self.conn)? {
            (Msg::Released, _) => Ok(()),
            (m, _) => Err(io::Error::other(format!("expected Released, got {m:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::udp;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::os::fd::AsRawFd;

    fn accept(l: &Socket) -> Socket {
        for _ in 0..400 {
            match l.accept() {
                Ok((c, _)) => {
                    fdpass::set_timeouts(&c, STEP_TIMEOUT).unwrap();
                    return c;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        panic!("no connection in 2 s");
    }

    fn addrs(socks: &[UdpSocket]) -> Vec<SocketAddr> {
        socks.iter().map(|s| s.local_addr().unwrap()).collect()
    }

    /// A dual-stack queue as `control::open_queue` builds it, on loopback.
    fn dual_stack_queue(tap_name: &str) -> QueueIo {
        let st = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(st.success());
        let tap = crate::sys::tap::open_multiqueue(tap_name, 1)
            .unwrap()
            .pop()
            .unwrap();
        let rx = udp::bind_vxlan(Ipv4Addr::UNSPECIFIED, 0).unwrap();
        let port = rx.local_addr().unwrap().port();
        QueueIo {
            tap,
            rx: Some(rx),
            tx_pool: udp::bind_source_pool(Ipv4Addr::LOCALHOST, 3, 1).unwrap(),
            rx6: Some(udp::bind_vxlan_v6(Ipv6Addr::UNSPECIFIED, port).unwrap()),
            tx_pool6: udp::bind_source_pool(Ipv6Addr::LOCALHOST, 2, 9).unwrap(),
            offloads: Offloads {
                tso: false,
                gro: true,
            },
        }
    }

    /// An IPv6-only queue as `control::open_queue(.., None, Some(::1))` builds it: no IPv4
    /// socket at all.
    fn ipv6_only_queue(tap_name: &str) -> QueueIo {
        let mut q = dual_stack_queue(tap_name);
        q.rx = None;
        q.tx_pool.clear();
        q
    }

    /// The local ports of the UDP sockets bound in this thread's network namespace, IPv4
    /// (`/proc/net/udp`) or IPv6 (`udp6`).
    fn bound_udp_ports(v6: bool) -> Vec<u16> {
        let table = std::fs::read_to_string(format!(
            "/proc/thread-self/net/udp{}",
            if v6 { "6" } else { "" }
        ))
        .unwrap();
        table
            .lines()
            .skip(1)
            .map(|l| {
                let local = l.split_whitespace().nth(1).unwrap();
                let port = local.rsplit(':').next().unwrap();
                u16::from_str_radix(port, 16).unwrap()
            })
            .collect()
    }

    /// Whether this namespace has no IPv4 UDP socket, waiting up to 2 s: a closed socket can
    /// outlive its close for the moment between another test's fork and its exec (the child
    /// holds a copy of every descriptor until exec closes it).
    fn no_ipv4_udp_socket() -> Result<(), Vec<u16>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let left = bound_udp_ports(false);
            if left.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(left);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Runs the old side's `offer` for `q` on a thread and returns it with the path to ask.
    fn serve(
        name: &str,
        me: &Identity,
        q: QueueIo,
    ) -> (PathBuf, std::thread::JoinHandle<Option<u32>>) {
        let path = socket_path(name);
        let l = fdpass::listen(&path).unwrap();
        let me2 = me.clone();
        let old = std::thread::spawn(move || {
            let conn = accept(&l);
            let r = offer(&conn, &me2, std::iter::once(&q)).unwrap();
            if r.is_some() {
                released(&conn).unwrap();
            }
            r
        });
        (path, old)
    }

    fn socket_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("overlayd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("handover.sock")
    }

    /// Root only (a private network namespace): a dual-stack queue crosses a handover whole:
    /// the successor gets the TAP queue, both receive sockets and both send pools (the same
    /// sockets: same bound addresses), and the old side learns that the new one runs.
    #[test]
    fn ipv6_sockets_are_handed_over_with_their_queue() {
        crate::sys::in_private_netns("ipv6_sockets_are_handed_over_with_their_queue", || {
            let q = dual_stack_queue("hov6a");
            let me = Identity {
                device: "hov6a".into(),
                port: q.rx.as_ref().unwrap().local_addr().unwrap().port(),
                vni: 1,
            };
            let want = (
                q.rx6.as_ref().unwrap().local_addr().unwrap(),
                addrs(&q.tx_pool),
                addrs(&q.tx_pool6),
            );
            let path = socket_path("handover-v6");
            let l = fdpass::listen(&path).unwrap();
            let me2 = me.clone();
            let old = std::thread::spawn(move || {
                let conn = accept(&l);
                let r = offer(&conn, &me2, std::iter::once(&q)).unwrap();
                if r.is_some() {
                    released(&conn).unwrap();
                }
                r
            });
            let taken = take_over(&path, &me).unwrap().expect("handed over");
            assert_eq!(taken.queues.len(), 1);
            let got = &taken.queues[0];
            assert_eq!(
                (
                    got.rx6
                        .as_ref()
                        .expect("the IPv6 receive socket")
                        .local_addr()
                        .unwrap(),
                    addrs(&got.tx_pool),
                    addrs(&got.tx_pool6),
                ),
                want
            );
            assert!(got.offloads.gro && !got.offloads.tso);
            taken.confirm().unwrap();
            assert_eq!(old.join().unwrap(), Some(std::process::id()));
            let _ = std::fs::remove_dir_all(path.parent().unwrap());
        });
    }

    /// Root only: a successor fits handed queues to its own IPv6 underlay: it opens the IPv6
    /// sockets an older (or IPv4-only) overlayd did not hand over, re-binds the IPv6 send pool
    /// when its IPv6 address differs while keeping the shared receive socket, and closes them
    /// when it has no IPv6 underlay; another IPv4 address re-binds the IPv4 send pool alike.
    #[test]
    fn a_successor_fits_handed_queues_to_its_underlay() {
        crate::sys::in_private_netns("a_successor_fits_handed_queues_to_its_underlay", || {
            let mut q = dual_stack_queue("hov6c");
            let port = q.rx.as_ref().unwrap().local_addr().unwrap().port();
            for a in ["fd00:6::1/64", "fd00:6::2/64"] {
                let st = std::process::Command::new("ip")
                    .args(["-6", "addr", "add", a, "dev", "lo", "nodad"])
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            q.rx6 = None;
            q.tx_pool6.clear();
            let ip1: Ipv6Addr = "fd00:6::1".parse().unwrap();
            let mut ios =
                super::super::adapt(vec![q], port, Some(Ipv4Addr::LOCALHOST), Some(ip1)).unwrap();
            let rx6 = ios[0].rx6.as_ref().expect("opened").local_addr().unwrap();
            assert_eq!(rx6.port(), port);
            assert_eq!(ios[0].tx_pool6.len(), 16);
            assert!(addrs(&ios[0].tx_pool6).iter().all(|a| a.ip() == ip1));
            assert!(ios[0].offloads.gro, "GRO on the new socket too");

            let ip2: Ipv6Addr = "fd00:6::2".parse().unwrap();
            let same_rx = ios[0].rx6.as_ref().unwrap().as_raw_fd();
            ios = super::super::adapt(ios, port, Some(Ipv4Addr::LOCALHOST), Some(ip2)).unwrap();
            assert!(addrs(&ios[0].tx_pool6).iter().all(|a| a.ip() == ip2));
            assert_eq!(
                ios[0].rx6.as_ref().unwrap().as_raw_fd(),
                same_rx,
                "the shared receive socket is kept"
            );
            // Unchanged: nothing is reopened.
            let pool = addrs(&ios[0].tx_pool6);
            ios = super::super::adapt(ios, port, Some(Ipv4Addr::LOCALHOST), Some(ip2)).unwrap();
            assert_eq!(addrs(&ios[0].tx_pool6), pool);

            ios = super::super::adapt(ios, port, Some(Ipv4Addr::LOCALHOST), None).unwrap();
            assert!(ios[0].rx6.is_none() && ios[0].tx_pool6.is_empty());
            assert_eq!(ios[0].tx_pool.len(), 3, "IPv4 untouched");

            // The same for IPv4: another IPv4 underlay address re-binds the IPv4 send pool
            // and keeps the shared receive socket.
            let rx_fd = ios[0].rx.as_ref().unwrap().as_raw_fd();
            let ip4 = Ipv4Addr::new(127, 0, 0, 2);
            ios = super::super::adapt(ios, port, Some(ip4), None).unwrap();
            assert_eq!(ios[0].tx_pool.len(), 16);
            assert!(addrs(&ios[0].tx_pool).iter().all(|a| a.ip() == ip4));
            assert_eq!(ios[0].rx.as_ref().unwrap().as_raw_fd(), rx_fd);
        });
    }

    /// Root only: an older successor (its Hello has no `ipv6`) gets each queue exactly as
    /// version 1 sent it before IPv6: no rx6/tx6 fields, TAP + IPv4 sockets only; it then
    /// opens its own IPv6 sockets if it has an IPv6 underlay. And an older predecessor's Queue
    /// message (no rx6/tx6) reads as a queue without IPv6 sockets.
    #[test]
    fn older_overlayds_see_the_protocol_they_know() {
        let old_queue: Msg =
            serde_json::from_str(r#"{"msg":"queue","id":0,"tso":true,"gro":true,"tx":16}"#)
                .unwrap();
        assert!(matches!(
            old_queue,
            Msg::Queue {
                tx: 16,
                rx6: false,
                tx6: 0,
                ..
            }
        ));
        crate::sys::in_private_netns("older_overlayds_see_the_protocol_they_know", || {
            let q = dual_stack_queue("hov6b");
            let me = Identity {
                device: "hov6b".into(),
                port: q.rx.as_ref().unwrap().local_addr().unwrap().port(),
                vni: 1,
            };
            let path = socket_path("handover-old");
            let l = fdpass::listen(&path).unwrap();
            let me2 = me.clone();
            let old = std::thread::spawn(move || {
                let conn = accept(&l);
                offer(&conn, &me2, std::iter::once(&q)).unwrap()
            });
            let conn = fdpass::connect(&path, STEP_TIMEOUT).unwrap();
            // The Hello an overlayd before IPv6 sends.
            let hello = serde_json::json!({
                "msg": "hello", "version": 1, "pid": 1, "netns": netns(),
                "device": me.device, "port": me.port, "vni": 1,
            });
            fdpass::send(&conn, hello.to_string().as_bytes(), &[]).unwrap();
            let mut buf = [0u8; 4096];
            let (n, _) = fdpass::recv(&conn, &mut buf).unwrap();
            let offer_msg: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!(offer_msg["msg"], "offer");
            let (n, fds) = fdpass::recv(&conn, &mut buf).unwrap();
            let queue: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!(
                queue,
                serde_json::json!({"msg": "queue", "id": 0, "tso": false, "gro": true, "tx": 3}),
                "exactly the fields an older overlayd knows"
            );
            assert_eq!(fds.len(), 2 + 3, "TAP, IPv4 receive socket, 3 send sockets");
            // The older successor gives up: the old side keeps forwarding.
            drop(conn);
            assert_eq!(old.join().unwrap(), None);
            let _ = std::fs::remove_dir_all(path.parent().unwrap());
        });
    }

    /// A Queue's layout must match its descriptors, each family's receive socket comes with
    /// its send sockets, and a queue has at least one family; an older overlayd's Queue (no
    /// `rx`) has its IPv4 sockets, and a dual-stack Queue is written without `rx` (exactly
    /// the fields an older successor knows).
    #[test]
    fn queue_layouts_are_checked_and_rx_defaults_to_present() {
        assert_eq!(check_layout(true, 16, false, 0, 18), Ok(()));
        assert_eq!(check_layout(true, 16, true, 16, 35), Ok(()));
        assert_eq!(check_layout(false, 0, true, 16, 18), Ok(()));
        for (rx, tx, rx6, tx6, fds) in [
            (true, 16, false, 0, 17),
            (true, 0, false, 0, 2),
            (false, 16, true, 16, 34),
            (false, 0, true, 0, 2),
            (false, 0, false, 0, 1),
            (false, 0, true, 16, 19),
            // Counts that overflow when added are refused, not wrapped.
            (true, usize::MAX, true, 16, 16),
        ] {
            let e = check_layout(rx, tx, rx6, tx6, fds).unwrap_err();
            assert!(e.starts_with(&format!("{fds} descriptors for")), "{e}");
        }
        let old: Msg =
            serde_json::from_str(r#"{"msg":"queue","id":0,"tso":true,"gro":true,"tx":16}"#)
                .unwrap();
        assert!(matches!(old, Msg::Queue { rx: true, .. }));
        let q = Msg::Queue {
            id: 0,
            tso: true,
            gro: true,
            rx: true,
            tx: 16,
            rx6: true,
            tx6: 16,
        };
        assert_eq!(
            serde_json::to_value(&q).unwrap(),
            serde_json::json!({"msg": "queue", "id": 0, "tso": true, "gro": true, "tx": 16, "rx6": true, "tx6": 16})
        );
        let q = Msg::Queue {
            id: 0,
            tso: true,
            gro: false,
            rx: false,
            tx: 0,
            rx6: true,
            tx6: 16,
        };
        assert_eq!(
            serde_json::to_value(&q).unwrap(),
            serde_json::json!({"msg": "queue", "id": 0, "tso": true, "gro": false, "rx": false, "tx": 0, "rx6": true, "tx6": 16})
        );
        let hello: Msg = serde_json::from_str(
            r#"{"msg":"hello","version":1,"pid":1,"netns":"n","device":"d","port":1,"vni":1,"ipv6":true}"#,
        )
        .unwrap();
        assert!(matches!(
            hello,
            Msg::Hello {
                ipv6: true,
                ipv4_optional: false,
                ..
            }
        ));
    }

    /// Root only: an IPv6-only queue (no IPv4 socket) crosses a handover as it is: the
    /// successor gets the TAP queue and the IPv6 sockets (the same ones), and no IPv4 socket
    /// appears. An IPv6-only successor then keeps them untouched; one with an IPv4 underlay
    /// opens the IPv4 receive socket on the VXLAN port and an IPv4 send pool; and dropping
    /// IPv4 again (a dual-stack predecessor, an IPv6-only successor) closes them, so the
    /// namespace has no IPv4 UDP socket left.
    #[test]
    fn ipv6_only_queues_cross_a_handover_in_every_combination() {
        crate::sys::in_private_netns(
            "ipv6_only_queues_cross_a_handover_in_every_combination",
            || {
                let q = ipv6_only_queue("hov6d");
                let port = q.rx6.as_ref().unwrap().local_addr().unwrap().port();
                let me = Identity {
                    device: "hov6d".into(),
                    port,
                    vni: 1,
                };
                let want = (
                    q.rx6.as_ref().unwrap().local_addr().unwrap(),
                    addrs(&q.tx_pool6),
                );
                assert_eq!(no_ipv4_udp_socket(), Ok(()));
                let (path, old) = serve("handover-v6only", &me, q);
                let mut taken = take_over(&path, &me).unwrap().expect("handed over");
                let queues = std::mem::take(&mut taken.queues);
                assert_eq!(queues.len(), 1);
                let got = &queues[0];
                assert!(got.rx.is_none() && got.tx_pool.is_empty(), "{got:?}");
                assert_eq!(
                    (
                        got.rx6.as_ref().unwrap().local_addr().unwrap(),
                        addrs(&got.tx_pool6)
                    ),
                    want
                );
                taken.confirm().unwrap();
                assert_eq!(old.join().unwrap(), Some(std::process::id()));
                let _ = std::fs::remove_dir_all(path.parent().unwrap());
                assert_eq!(no_ipv4_udp_socket(), Ok(()), "no IPv4 socket");

                // Without IPv4 -> without: nothing changes.
                let ip6 = Ipv6Addr::LOCALHOST;
                let rx6_fd = queues[0].rx6.as_ref().unwrap().as_raw_fd();
                let mut ios = super::super::adapt(queues, port, None, Some(ip6)).unwrap();
                assert!(ios[0].rx.is_none() && ios[0].tx_pool.is_empty());
                assert_eq!(ios[0].rx6.as_ref().unwrap().as_raw_fd(), rx6_fd);
                assert_eq!(addrs(&ios[0].tx_pool6), want.1);
                assert_eq!(no_ipv4_udp_socket(), Ok(()));

                // Without IPv4 -> with: the IPv4 sockets are opened, on the VXLAN port.
                ios = super::super::adapt(ios, port, Some(Ipv4Addr::LOCALHOST), Some(ip6)).unwrap();
                let rx = ios[0].rx.as_ref().expect("IPv4 receive socket opened");
                assert_eq!(
                    rx.local_addr().unwrap(),
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
                );
                assert_eq!(ios[0].tx_pool.len(), 16);
                assert!(addrs(&ios[0].tx_pool)
                    .iter()
                    .all(|a| a.ip() == Ipv4Addr::LOCALHOST));
                assert!(ios[0].offloads.gro, "GRO on the new IPv4 socket too");
                assert_eq!(ios[0].rx6.as_ref().unwrap().as_raw_fd(), rx6_fd);
                assert!(bound_udp_ports(false).contains(&port));

                // With IPv4 -> without: they are closed again.
                ios = super::super::adapt(ios, port, None, Some(ip6)).unwrap();
                assert!(ios[0].rx.is_none() && ios[0].tx_pool.is_empty());
                assert_eq!(ios[0].rx6.as_ref().unwrap().as_raw_fd(), rx6_fd);
                assert_eq!(no_ipv4_udp_socket(), Ok(()), "IPv4 sockets closed");
                assert!(bound_udp_ports(true).contains(&port));
                // Neither family: refused, with what to do.
                let e = super::super::adapt(ios, port, None, None).unwrap_err();
                assert!(e.to_string().contains("IPv4 or IPv6 address"), "{e}");
            },
        );
    }

    /// Root only: a dual-stack overlayd hands its queues (IPv4 sockets included) to an
    /// IPv6-only successor, which closes the IPv4 ones and keeps the IPv6 ones.
    #[test]
    fn a_dual_stack_queue_handed_to_an_ipv6_only_successor_loses_its_ipv4_sockets() {
        crate::sys::in_private_netns(
            "a_dual_stack_queue_handed_to_an_ipv6_only_successor_loses_its_ipv4_sockets",
            || {
                let q = dual_stack_queue("hov6e");
                let port = q.rx.as_ref().unwrap().local_addr().unwrap().port();
                let me = Identity {
                    device: "hov6e".into(),
                    port,
                    vni: 1,
                };
                let pool6 = addrs(&q.tx_pool6);
                let (path, old) = serve("handover-to-v6only", &me, q);
                let mut taken = take_over(&path, &me).unwrap().expect("handed over");
                let queues = std::mem::take(&mut taken.queues);
                assert!(queues[0].rx.is_some() && queues[0].tx_pool.len() == 3);
                let ios =
                    super::super::adapt(queues, port, None, Some(Ipv6Addr::LOCALHOST)).unwrap();
                taken.confirm().unwrap();
                assert_eq!(old.join().unwrap(), Some(std::process::id()));
                let _ = std::fs::remove_dir_all(path.parent().unwrap());
                assert!(ios[0].rx.is_none() && ios[0].tx_pool.is_empty());
                assert_eq!(addrs(&ios[0].tx_pool6), pool6);
                // The old side closed its copies when it released: no IPv4 socket is left.
                assert_eq!(
                    no_ipv4_udp_socket(),
                    Ok(()),
                    "the old side closed its copies"
                );
                assert!(bound_udp_ports(true).contains(&port));
            },
        );
    }

    /// Root only: an IPv6-only overlayd refuses a successor that cannot take queues without
    /// IPv4 sockets (an older Hello: no `ipv4_optional`), saying why, and keeps forwarding.
    #[test]
    fn an_ipv6_only_overlayd_refuses_an_older_successor() {
        crate::sys::in_private_netns("an_ipv6_only_overlayd_refuses_an_older_successor", || {
            let me = Identity {
                device: "hov6f".into(),
                port: 8472,
                vni: 1,
            };
            for (k, hello) in [
                // Before IPv6.
                serde_json::json!({
                    "msg": "hello", "version": 1, "pid": 1, "netns": netns(),
                    "device": me.device, "port": me.port, "vni": 1,
                }),
                // Dual-stack, before IPv6-only.
                serde_json::json!({
                    "msg": "hello", "version": 1, "pid": 1, "netns": netns(),
                    "device": me.device, "port": me.port, "vni": 1, "ipv6": true,
                }),
            ]
            .into_iter()
            .enumerate()
            {
                let path = socket_path(&format!("handover-v6only-old{k}"));
                let l = fdpass::listen(&path).unwrap();
                let (me2, q) = (me.clone(), ipv6_only_queue(&format!("hov6f{k}")));
                assert!(q.rx.is_none());
                let old = std::thread::spawn(move || {
                    let conn = accept(&l);
                    offer(&conn, &me2, std::iter::once(&q)).unwrap()
                });
                let conn = fdpass::connect(&path, STEP_TIMEOUT).unwrap();
                fdpass::send(&conn, hello.to_string().as_bytes(), &[]).unwrap();
                let mut buf = [0u8; 4096];
                let (n, fds) = fdpass::recv(&conn, &mut buf).unwrap();
                let m: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
                assert_eq!(m["msg"], "refuse", "{m}");
                assert!(m["reason"].as_str().unwrap().contains("IPv6-only"), "{m}");
                assert!(fds.is_empty());
                assert_eq!(old.join().unwrap(), None, "the old side keeps forwarding");
                let _ = std::fs::remove_dir_all(path.parent().unwrap());
            }
        });
    }
}
