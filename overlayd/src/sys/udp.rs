//! The VXLAN UDP sockets: one receive socket per worker bound to the VXLAN port with
//! SO_REUSEPORT, plus a small pool of send sockets whose source ports (49152..65535) carry the
//! inner flow hash, as kernel vxlan does, so ECMP and RSS spread flows.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::setsockopt_int;

/// Lowest outer source port (RFC 7348 recommends the dynamic range 49152..65535).
pub const SRC_PORT_MIN: u16 = 49152;
const SOCKET_BUFFER: usize = 8 << 20;

fn base_socket() -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    // Never fragment the outer packet: DF on every datagram.
    setsockopt_int(
        s.as_fd(),
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO,
    )?;
    // Large buffers absorb bursts; FORCE needs CAP_NET_ADMIN, which we have, else fall back.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let size = SOCKET_BUFFER as libc::c_int;
    if setsockopt_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
        s.set_recv_buffer_size(SOCKET_BUFFER)?;
    }
    if setsockopt_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size).is_err() {
        s.set_send_buffer_size(SOCKET_BUFFER)?;
    }
    Ok(s)
}

/// A receive socket on `bind:port` that shares the port with the other workers.
pub fn bind_vxlan(bind: Ipv4Addr, port: u16) -> io::Result<UdpSocket> {
    let s = base_socket()?;
    s.set_reuse_port(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(bind, port)).into())?;
    Ok(s.into())
}

/// `count` send sockets bound to distinct ports in 49152..65535, starting at a port derived
/// from `seed` and skipping ports in use.
pub fn bind_source_pool(bind: Ipv4Addr, count: usize, seed: u32) -> io::Result<Vec<UdpSocket>> {
    let span = u32::from(u16::MAX - SRC_PORT_MIN) + 1;
    let mut out = Vec::with_capacity(count);
    let mut last_err = None;
    for i in 0..span {
        if out.len() == count {
            break;
        }
        #[allow(clippy::cast_possible_truncation)]
        let port = SRC_PORT_MIN + ((seed.wrapping_add(i.wrapping_mul(257))) % span) as u16;
        let s = base_socket()?;
        match s.bind(&SocketAddr::V4(SocketAddrV4::new(bind, port)).into()) {
            Ok(()) => out.push(s.into()),
            Err(e) => last_err = Some(e),
        }
        if i > 4096 && out.is_empty() {
            break;
        }
    }
    if out.is_empty() {
        return Err(
            last_err.unwrap_or_else(|| io::Error::other("no free source port in 49152..65535"))
        );
    }
    Ok(out)
}
