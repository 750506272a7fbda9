//! The VXLAN UDP sockets: one receive socket per worker bound to the VXLAN port with
//! SO_REUSEPORT, plus a small pool of send sockets whose source ports (49152..65535) carry the
//! inner flow hash, as kernel vxlan does, so ECMP and RSS spread flows. The same for an IPv6
//! underlay (`bind_vxlan_v6`, `bind_source_pool` on an IPv6 address): IPv6-only sockets, so
//! each underlay family has its own; the send and receive calls take and report either family.
//! The outer IPv6 flow label is the kernel's automatic one (see `base_socket_v6`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

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
    set_buffers(&s)?;
    Ok(s)
}

/// The IPv6 counterpart of `base_socket`: IPv6 only (IPV6_V6ONLY: IPv4 peers stay on the IPv4
/// sockets, no IPv4-mapped senders), never fragmented (IPV6_MTU_DISCOVER = DO: over the path
/// MTU is EMSGSIZE, as with DF on IPv4). The UDP checksum is always on: Linux sends a zero
/// IPv6 UDP checksum only with UDP_NO_CHECK6_TX, which overlayd never sets (RFC 8200 requires
/// it for VXLAN over IPv6).
fn base_socket_v6() -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_nonblocking(true)?;
    setsockopt_int(
        s.as_fd(),
        libc::IPPROTO_IPV6,
        libc::IPV6_MTU_DISCOVER,
        libc::IPV6_PMTUDISC_DO,
    )?;
    // The outer flow label: the kernel's automatic one, a hash of the outer addresses and
    // ports. The source port carries the inner flow hash (one pool socket per hash bucket),
    // so each inner flow gets a stable label and flows spread over labels as over ports, as
    // kernel vxlan over IPv6 does. Asked for explicitly so that net.ipv6.auto_flowlabels = 2
    // (opt-in) still gives labels; kernels before 4.16 lack the option and follow the sysctl.
    let _ = setsockopt_int(s.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_AUTOFLOWLABEL, 1);
    set_buffers(&s)?;
    Ok(s)
}

/// Large buffers absorb bursts; FORCE needs CAP_NET_ADMIN, which we have, else fall back.
fn set_buffers(s: &Socket) -> io::Result<()> {
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let size = SOCKET_BUFFER as libc::c_int;
    if setsockopt_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
        s.set_recv_buffer_size(SOCKET_BUFFER)?;
    }
    if setsockopt_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size).is_err() {
        s.set_send_buffer_size(SOCKET_BUFFER)?;
    }
    Ok(())
}

/// A receive socket on `bind:port` that shares the port with the other workers.
pub fn bind_vxlan(bind: Ipv4Addr, port: u16) -> io::Result<UdpSocket> {
    let s = base_socket()?;
    s.set_reuse_port(true)?;
    // The outer TOS byte with every datagram (an IP_TOS control message): ECN decapsulation
    // needs the outer CE mark.
    setsockopt_int(s.as_fd(), libc::IPPROTO_IP, libc::IP_RECVTOS, 1)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(bind, port)).into())?;
    Ok(s.into())
}

/// The IPv6 receive socket on `[bind]:port`, shared with the other workers (SO_REUSEPORT),
/// reporting each datagram's outer traffic class (IPV6_RECVTCLASS: the ECN field for
/// decapsulation). Turn on UDP_GRO with `enable_gro`, as for IPv4.
pub fn bind_vxlan_v6(bind: Ipv6Addr, port: u16) -> io::Result<UdpSocket> {
    let s = base_socket_v6()?;
    s.set_reuse_port(true)?;
    setsockopt_int(s.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1)?;
    s.bind(&SocketAddr::V6(SocketAddrV6::new(bind, port, 0, 0)).into())?;
    Ok(s.into())
}

/// `count` send sockets bound to distinct ports in 49152..65535, starting at a port derived
/// from `seed` and skipping ports in use. An IPv6 `bind` gives IPv6-only sockets (as
/// `bind_vxlan_v6`).
pub fn bind_source_pool(
    bind: impl Into<IpAddr>,
    count: usize,
    seed: u32,
) -> io::Result<Vec<UdpSocket>> {
    let bind: IpAddr = bind.into();
    let span = u32::from(u16::MAX - SRC_PORT_MIN) + 1;
    let mut out = Vec::with_capacity(count);
    let mut last_err = None;
    for i in 0..span {
        if out.len() == count {
            break;
        }
        #[allow(clippy::cast_possible_truncation)]
        let port = SRC_PORT_MIN + ((seed.wrapping_add(i.wrapping_mul(257))) % span) as u16;
        let s = if bind.is_ipv4() {
            base_socket()?
        } else {
            base_socket_v6()?
        };
        // Peers never send to these ports: keep what may queue here small.
        s.set_recv_buffer_size(4096)?;
        match s.bind(&SocketAddr::new(bind, port).into()) {
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

/// Turns on UDP_GRO: the kernel hands us runs of same-flow datagrams as one buffer plus the
/// segment size in a control message.
pub fn enable_gro(sock: &UdpSocket) -> io::Result<()> {
    setsockopt_int(sock.as_fd(), libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Turns UDP_GRO off again (a queue whose other receive socket could not have it reads both
/// in plain mode, which does not expect runs).
pub fn disable_gro(sock: &UdpSocket) -> io::Result<()> {
    setsockopt_int(sock.as_fd(), libc::SOL_UDP, libc::UDP_GRO, 0)
}

/// The start-up probe for UDP_SEGMENT (Linux 4.18+): setting a socket's default segment size
/// to 0 (no segmentation) fails with ENOPROTOOPT on a kernel without it. Only this probe and an
/// EIO from a segmented send decide "unsupported".
pub fn probe_segmentation(sock: &UdpSocket) -> bool {
    setsockopt_int(sock.as_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok()
}

fn sockaddr_v4(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn sockaddr_v6(a: SocketAddrV6) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: a.port().to_be(),
        sin6_flowinfo: a.flowinfo(),
        sin6_addr: libc::in6_addr {
            s6_addr: a.ip().octets(),
        },
        sin6_scope_id: a.scope_id(),
    }
}

/// A socket address of either family as the kernel takes and returns it.
#[repr(C)]
#[derive(Clone, Copy)]
union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    fn zeroed() -> Self {
        RawAddr {
            v6: sockaddr_v6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0)),
        }
    }

    /// The address and its length for `msg_name`.
    fn from_addr(a: SocketAddr) -> (Self, libc::socklen_t) {
        match a {
            SocketAddr::V4(a) => (
                RawAddr { v4: sockaddr_v4(a) },
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            SocketAddr::V6(a) => (
                RawAddr { v6: sockaddr_v6(a) },
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }

    /// [`RawAddr::to_addr`], or the unspecified `RecvMeta::EMPTY.from` for an address of
    /// neither family, which the receive path drops as `unknown_sender`: the kernel already
    /// took the datagram (and the others of its batch), so nothing is failed for it.
    fn sender(self) -> SocketAddr {
        self.to_addr().unwrap_or(RecvMeta::EMPTY.from)
    }

    /// What the kernel wrote (a sender's address).
    fn to_addr(self) -> io::Result<SocketAddr> {
        // SAFETY: both members start with the family field, and every bit pattern is a valid
        // sockaddr_in and sockaddr_in6 (plain integers), so reading either member is sound; the
        // family says which one the kernel wrote.
        unsafe {
            match libc::c_int::from(self.v4.sin_family) {
                libc::AF_INET => Ok(SocketAddr::from((
                    Ipv4Addr::from(u32::from_be(self.v4.sin_addr.s_addr)),
                    u16::from_be(self.v4.sin_port),
                ))),
                libc::AF_INET6 => Ok(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(self.v6.sin6_addr.s6_addr),
                    u16::from_be(self.v6.sin6_port),
                    self.v6.sin6_flowinfo,
                    self.v6.sin6_scope_id,
                ))),
                f => Err(io::Error::other(format!(
                    "the kernel returned a sender of address family {f}, neither IPv4 nor IPv6"
                ))),
            }
        }
    }
}

/// The segment size (UDP_GRO) and outer TOS / traffic class of one received message.
///
/// # Safety
/// `msg` must be a header the kernel just filled by a receive: its `msg_control` points at
/// `msg_controllen` valid bytes.
unsafe fn received_cmsgs(msg: &libc::msghdr) -> (Option<u16>, u8) {
    let mut gso = None;
    let mut tos = 0;
    // SAFETY: the caller guarantees the control buffer; CMSG_FIRSTHDR/NXTHDR walk only within
    // msg_controllen; CMSG_DATA of a UDP_GRO or IPV6_TCLASS message holds an int, of an
    // IP_TOS message at least one byte.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::SOL_UDP && kind == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                gso = u16::try_from(v).ok().filter(|s| *s > 0);
            } else if level == libc::IPPROTO_IP && kind == libc::IP_TOS {
                tos = *libc::CMSG_DATA(c);
            } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_TCLASS {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                tos = u8::try_from(v & 0xff).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    (gso, tos)
}

/// Control-message space, 8-aligned: UDP_SEGMENT (`u16`) and IP_TOS (`int`) on send,
/// UDP_GRO (`int`) and IP_TOS (one byte) on receive; each takes CMSG_SPACE = 24 bytes.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Control-message space for one IP_TOS `int`, 8-aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct TosCmsg([u8; 24]);

/// Writes an IP_TOS (IPv4) or IPV6_TCLASS (IPv6) control message holding `tos` at `c`.
///
/// # Safety
/// `c` must point at a writable, 8-aligned cmsghdr with CMSG_SPACE(sizeof(int)) bytes of room.
unsafe fn write_tos_cmsg(c: *mut libc::cmsghdr, tos: u8, v6: bool) {
    // SAFETY: the caller guarantees room for the header and an int payload.
    unsafe {
        if v6 {
            (*c).cmsg_level = libc::IPPROTO_IPV6;
            (*c).cmsg_type = libc::IPV6_TCLASS;
        } else {
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_TOS;
        }
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(
            libc::CMSG_DATA(c).cast::<libc::c_int>(),
            libc::c_int::from(tos),
        );
    }
}

/// CMSG_SPACE of one `int`.
fn int_cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize }
}

/// Sends the gathered `iov` to `dst` (IPv4 or IPv6, on a socket of that family) in one
/// `sendmsg`. With `segment > 0` the kernel cuts it into datagrams of `segment` bytes
/// (UDP_SEGMENT; the last may be shorter). A non-zero `tos` is the outer TOS byte (IPv4, an
/// IP_TOS control message) or traffic class (IPv6, IPV6_TCLASS) of every datagram: the ECN
/// field.
pub fn send_gathered(
    sock: &UdpSocket,
    dst: impl Into<SocketAddr>,
    iov: &[io::IoSlice<'_>],
    segment: u16,
    tos: u8,
) -> io::Result<usize> {
    let dst = dst.into();
    let (mut addr, len) = RawAddr::from_addr(dst);
    send_msg(
        sock,
        std::ptr::from_mut(&mut addr).cast(),
        len as usize,
        iov,
        segment,
        tos,
        dst.is_ipv6(),
    )
}

/// One `sendmsg` to the socket address at `name` (`namelen` bytes, live for the call).
fn send_msg(
    sock: &UdpSocket,
    name: *mut libc::c_void,
    namelen: usize,
    iov: &[io::IoSlice<'_>],
    segment: u16,
    tos: u8,
    v6: bool,
) -> io::Result<usize> {
    let mut cmsg = CmsgBuf([0; 64]);
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths); fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name;
    #[allow(clippy::cast_possible_truncation)]
    {
        msg.msg_namelen = namelen as libc::socklen_t;
    }
    // IoSlice is guaranteed ABI-compatible with iovec on Unix.
    msg.msg_iov = iov.as_ptr().cast_mut().cast();
    msg.msg_iovlen = iov.len();
    if segment > 0 {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `cmsg`, which is 8-aligned and at least `space` bytes,
        // so CMSG_FIRSTHDR returns a valid, writable header inside it and CMSG_DATA points at
        // room for the u16 payload.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
        }
    }
    if tos != 0 {
        let at = msg.msg_controllen;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = at + int_cmsg_space();
        // SAFETY: `at` is 0 or the CMSG_SPACE of the UDP_SEGMENT message (a multiple of 8),
        // and `at + int_cmsg_space()` <= 48 fits the 64-byte, 8-aligned `cmsg`.
        unsafe { write_tos_cmsg(cmsg.0.as_mut_ptr().add(at).cast(), tos, v6) };
    }
    // SAFETY: msg points at live buffers for the duration of the call: the address (the
    // caller's, `namelen` bytes), the iovec
    // array borrowed from `iov` (whose slices outlive the call) and the control buffer.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

/// What `recv_gro_any` (or one message of `recv_batch`) received.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    pub len: usize,
    /// The sender: IPv4 on an IPv4 socket, IPv6 on an IPv6-only one. Unspecified (0.0.0.0:0)
    /// when the kernel reported an address of neither family: the datagram is still handed
    /// on, and the decap path drops it as `unknown_sender` (no batch is failed for it).
    pub from: SocketAddr,
    /// The segment size when the kernel coalesced several datagrams (UDP_GRO).
    pub gso: Option<u16>,
    /// The outer TOS byte (IPv4) or traffic class (IPv6); 0 when the kernel did not report
    /// it. GRO merges only datagrams with equal TOS, so one value covers the whole run.
    pub tos: u8,
}

impl RecvMeta {
    /// A placeholder for receive arrays.
    pub const EMPTY: RecvMeta = RecvMeta {
        len: 0,
        from: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        gso: None,
        tos: 0,
    };
}

/// Receives one datagram (or, with UDP_GRO, one run of them) into `buf`, on a socket of either
/// family (`bind_vxlan`, `bind_vxlan_v6`): the sender and the outer TOS (IP_TOS) or traffic
/// class (IPV6_TCLASS) with the data.
pub fn recv_gro_any(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<RecvMeta> {
    let mut addr = RawAddr::zeroed();
    let mut cmsg = CmsgBuf([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths); fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = std::ptr::from_mut(&mut addr).cast();
    msg.msg_namelen = std::mem::size_of::<RawAddr>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.0.len();
    // SAFETY: every pointer in msg refers to a live local or to `buf`, with its true length.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just filled `msg`, whose control buffer is `cmsg`.
    let (gso, tos) = unsafe { received_cmsgs(&msg) };
    Ok(RecvMeta {
        len: n.unsigned_abs(),
        from: addr.sender(),
        gso,
        tos,
    })
}

/// Most datagrams one `recv_batch` call takes.
pub const MAX_RECV_BATCH: usize = 16;

/// Receives up to `metas.len()` (at most `MAX_RECV_BATCH`) datagrams with one `recvmmsg`:
/// datagram `i` lands in `buf[i * slot .. (i + 1) * slot]` and is described by `metas[i]`.
/// Returns how many arrived (at least one; EAGAIN when none is waiting).
pub fn recv_batch(
    sock: &UdpSocket,
    buf: &mut [u8],
    slot: usize,
    metas: &mut [RecvMeta],
) -> io::Result<usize> {
    let n = metas.len().min(MAX_RECV_BATCH).min(buf.len() / slot.max(1));
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "recv_batch needs room for one slot of {slot} bytes, has {}",
                buf.len()
            ),
        ));
    }
    let mut addrs = [RawAddr::zeroed(); MAX_RECV_BATCH];
    let mut cmsgs = [TosCmsg([0; 24]); MAX_RECV_BATCH];
    let base = buf.as_mut_ptr();
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_RECV_BATCH];
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; MAX_RECV_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i] = libc::iovec {
            // SAFETY: i * slot + slot <= buf.len() (n <= buf.len() / slot), so the pointer
            // stays inside `buf`.
            iov_base: unsafe { base.add(i * slot) }.cast(),
            iov_len: slot,
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = std::ptr::from_mut(&mut addrs[i]).cast();
        h.msg_namelen = std::mem::size_of::<RawAddr>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = cmsgs[i].0.as_mut_ptr().cast();
        h.msg_controllen = cmsgs[i].0.len();
    }
    // SAFETY: the first `n` headers point at live, disjoint slots of `buf` (each `slot` bytes)
    // and at live address and control buffers on this frame, with their true lengths; a null
    // timeout is allowed.
    #[allow(clippy::cast_possible_truncation)]
    let got = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = got.unsigned_abs() as usize;
    for i in 0..got {
        // SAFETY: the kernel filled message i, whose control buffer is `cmsgs[i]`.
        let (gso, tos) = unsafe { received_cmsgs(&hdrs[i].msg_hdr) };
        metas[i] = RecvMeta {
            len: (hdrs[i].msg_len as usize).min(slot),
            from: addrs[i].sender(),
            gso,
            tos,
        };
    }
    Ok(got)
}

/// Most datagrams one `send_batch` call takes.
pub const MAX_BATCH: usize = 64;

/// Sends each `(destination, bytes, outer TOS)` as its own datagram with one `sendmmsg`; a
/// non-zero TOS goes in an IP_TOS (IPv4) or IPV6_TCLASS (IPv6) control message. The
/// destinations must be of the socket's family. Returns how many were sent (the kernel stops
/// at the first failure; the caller decides about the rest).
pub fn send_batch(sock: &UdpSocket, msgs: &[(SocketAddr, &[u8], u8)]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_BATCH);
    let mut cmsgs = [TosCmsg([0; 24]); MAX_BATCH];
    let mut addrs = [RawAddr::zeroed(); MAX_BATCH];
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for (i, (dst, bytes, tos)) in msgs[..n].iter().enumerate() {
        let (addr, len) = RawAddr::from_addr(*dst);
        addrs[i] = addr;
        iovs[i] = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        hdrs[i].msg_hdr.msg_name = std::ptr::from_mut(&mut addrs[i]).cast();
        hdrs[i].msg_hdr.msg_namelen = len;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        if *tos != 0 {
            hdrs[i].msg_hdr.msg_control = cmsgs[i].0.as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_controllen = int_cmsg_space();
            // SAFETY: `cmsgs[i]` is 8-aligned with CMSG_SPACE(sizeof(int)) = 24 bytes.
            unsafe { write_tos_cmsg(cmsgs[i].0.as_mut_ptr().cast(), *tos, dst.is_ipv6()) };
        }
    }
    // SAFETY: the first `n` headers point at live address, iovec and control entries on this
    // stack frame, whose buffers are borrowed from `msgs` for the duration of the call; the kernel
    // only reads them (and writes msg_len).
    #[allow(clippy::cast_possible_truncation)]
    let sent = unsafe { libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent.unsigned_abs() as usize)
    }
}

/// The path MTU the kernel knows toward `dst` (including a PMTU learnt from an ICMP
/// "fragmentation needed" or ICMPv6 "packet too big"): `probe` (from `mtu_probe` of `dst`'s
/// family) is connected to `dst` and asked for IP_MTU / IPV6_MTU. It sends nothing.
pub fn path_mtu(probe: &UdpSocket, dst: impl Into<SocketAddr>) -> io::Result<u32> {
    let dst = dst.into();
    probe.connect(dst)?;
    let (level, name) = if dst.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `probe` is a live socket; `v` and `len` are valid for writes of their sizes.
    let rc = unsafe {
        libc::getsockopt(
            probe.as_raw_fd(),
            level,
            name,
            std::ptr::from_mut(&mut v).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(v).map_err(|_| io::Error::other(format!("IP_MTU / IPV6_MTU returned {v}")))
}

/// Sends one datagram with DF off (the kernel fragments it to the path MTU), then turns DF
/// back on for the socket: for inner packets whose sender allows fragmentation.
pub fn send_fragmentable(
    sock: &UdpSocket,
    dst: SocketAddrV4,
    bytes: &[u8],
    tos: u8,
) -> io::Result<usize> {
    setsockopt_int(
        sock.as_fd(),
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DONT,
    )?;
    let r = send_gathered(sock, dst, &[io::IoSlice::new(bytes)], 0, tos);
    setsockopt_int(
        sock.as_fd(),
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO,
    )?;
    r
}

/// An unbound UDP socket for `path_mtu` toward IPv6 (`v6`) or IPv4 destinations (never sends
/// or receives).
pub fn mtu_probe(v6: bool) -> io::Result<UdpSocket> {
    if v6 {
        UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0))
    } else {
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    }
}

/// Waits up to `timeout_ms` until `sock` can take a datagram again (POLLOUT) or one of
/// `readable` has input. Returns whether `sock` is writable and which of `readable` are
/// readable (or hung up). An interrupted wait reports nothing ready.
pub fn poll_writable(
    sock: &UdpSocket,
    readable: &[BorrowedFd<'_>],
    timeout_ms: i32,
) -> io::Result<(bool, [bool; 3])> {
    assert!(
        readable.len() <= 3,
        "poll_writable watches at most 3 inputs"
    );
    let mut pfds = [libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    }; 4];
    for (p, fd) in pfds[1..].iter_mut().zip(readable) {
        *p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
    }
    let n = 1 + readable.len();
    // SAFETY: the first `n` entries of `pfds` are initialised pollfd structs that outlive the
    // call; the descriptors are borrowed and therefore open.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok((false, [false; 3]));
        }
        return Err(e);
    }
    let input = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    // POLLERR on the send socket (a queued ICMP error) also means "try the send again": the
    // next send reports it.
    let writable = pfds[0].revents & (libc::POLLOUT | libc::POLLERR) != 0;
    let mut ready = [false; 3];
    for (r, p) in ready.iter_mut().zip(&pfds[1..n]) {
        *r = input(p);
    }
    Ok((writable, ready))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender address of neither family (what `recvmmsg` could report) becomes the
    /// unspecified address the decap path drops as unknown_sender, instead of an error that
    /// would lose the whole batch the kernel already returned; both families read back.
    #[test]
    fn a_sender_of_no_ip_family_is_marked_unspecified_not_an_error() {
        for ok in [
            SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 8472)),
            SocketAddr::V6(SocketAddrV6::new("fd00:18::2".parse().unwrap(), 8472, 0, 0)),
        ] {
            assert_eq!(RawAddr::from_addr(ok).0.sender(), ok);
        }
        let (mut odd, _) =
            RawAddr::from_addr(SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 8472)));
        #[allow(clippy::cast_possible_truncation)]
        {
            odd.v4.sin_family = libc::AF_UNIX as libc::sa_family_t;
        }
        assert!(odd.to_addr().is_err());
        assert_eq!(odd.sender(), RecvMeta::EMPTY.from);
        assert!(odd.sender().ip().is_unspecified());
    }

    /// Root only (a private network namespace): a send socket with a tiny SO_SNDBUF into a
    /// rate-limited loopback (tbf holds datagrams, charged to the socket) must hit EAGAIN;
    /// waiting for POLLOUT and sending the same datagram again delivers every datagram, in
    /// order. What the worker does on EAGAIN (`plan::Step::WaitWritable`), with a real socket.
    #[test]
    fn full_send_buffer_waits_for_pollout_and_loses_nothing() {
        crate::sys::in_private_netns(
            "full_send_buffer_waits_for_pollout_and_loses_nothing",
            || {
                for args in [
                    &["ip", "link", "set", "lo", "up"][..],
                    &[
                        "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "4mbit", "burst",
                        "4kb", "limit", "1mb",
                    ],
                ] {
                    let st = std::process::Command::new(args[0])
                        .args(&args[1..])
                        .status()
                        .unwrap();
                    assert!(st.success(), "{args:?} failed");
                }
                let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
                setsockopt_int(rx.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)
                    .unwrap();
                let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
                tx.set_nonblocking(true).unwrap();
                setsockopt_int(tx.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 4096).unwrap();
                let SocketAddr::V4(to) = rx.local_addr().unwrap() else {
                    panic!("v4")
                };
                let (quiet, _other_end) = std::os::unix::net::UnixStream::pair().unwrap();
                let count = 300u32;
                let mut eagain = 0;
                for i in 0..count {
                    let mut d = vec![0u8; 1000];
                    d[..4].copy_from_slice(&i.to_be_bytes());
                    loop {
                        match send_gathered(&tx, to, &[io::IoSlice::new(&d)], 0, 0) {
                            Ok(n) => {
                                assert_eq!(n, d.len());
                                break;
                            }
                            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                                eagain += 1;
                                // Block until POLLOUT (no timeout: the qdisc drains by itself).
                                while !poll_writable(&tx, &[quiet.as_fd()], -1).unwrap().0 {}
                            }
                            Err(e) => panic!("send {i}: {e}"),
                        }
                    }
                }
                assert!(
                    eagain > 0,
                    "300 KB through a 4 KiB send buffer never saw EAGAIN"
                );
                rx.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                    .unwrap();
                let mut b = [0u8; 2000];
                for i in 0..count {
                    let n = rx.recv(&mut b).expect("every datagram arrives");
                    assert_eq!(n, 1000);
                    assert_eq!(u32::from_be_bytes([b[0], b[1], b[2], b[3]]), i, "in order");
                }
            },
        );
    }

    /// Root only (a private network namespace, loopback MTU 1600): the IPv6 sockets are
    /// IPv6-only, never fragment (a 2,000-byte datagram is EMSGSIZE where IPv6's default would
    /// fragment it), carry the traffic class both ways, and take UDP_SEGMENT sends: 40
    /// segments of 1,489 bytes come back to the UDP_GRO socket as one run with its segment
    /// size; 44 of them (65,516 bytes: over IPv4's 65,507 limit, within IPv6's 65,527) go in
    /// one send and all arrive in order.
    #[test]
    fn ipv6_sockets_send_and_receive_gso_runs_without_fragmenting() {
        crate::sys::in_private_netns(
            "ipv6_sockets_send_and_receive_gso_runs_without_fragmenting",
            || {
                let st = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up", "mtu", "1600"])
                    .status()
                    .unwrap();
                assert!(st.success(), "ip link set lo up mtu 1600 failed");
                let rx = bind_vxlan_v6(Ipv6Addr::UNSPECIFIED, 0).unwrap();
                enable_gro(&rx).unwrap();
                assert!(socket2::SockRef::from(&rx).only_v6().unwrap());
                let port = rx.local_addr().unwrap().port();
                // IPV6_V6ONLY: the IPv4 port stays free for the IPv4 socket.
                let v4 = bind_vxlan(Ipv4Addr::UNSPECIFIED, port).unwrap();
                drop(v4);
                let tx = bind_source_pool(Ipv6Addr::UNSPECIFIED, 1, 7)
                    .unwrap()
                    .pop()
                    .unwrap();
                assert!(socket2::SockRef::from(&tx).only_v6().unwrap());
                let to = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
                let from = SocketAddr::from((Ipv6Addr::LOCALHOST, tx.local_addr().unwrap().port()));
                let mut buf = vec![0u8; 70_000];
                let recv = |buf: &mut [u8]| {
                    for _ in 0..1000 {
                        match recv_gro_any(&rx, buf) {
                            Ok(m) => return m,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                std::thread::sleep(std::time::Duration::from_millis(5));
                            }
                            Err(e) => panic!("recv: {e}"),
                        }
                    }
                    panic!("nothing arrived in 5 s");
                };

                // One plain datagram, outer ECT(0).
                let d = [7u8; 1000];
                assert_eq!(
                    send_gathered(&tx, to, &[io::IoSlice::new(&d)], 0, 2).unwrap(),
                    1000
                );
                let m = recv(&mut buf);
                assert_eq!((m.len, m.from, m.gso, m.tos), (1000, from, None, 2));
                assert_eq!(buf[..1000], d);

                // Over the MTU (1600 - 40 - 8 = 1552 bytes of payload): EMSGSIZE, never fragments.
                let big = [1u8; 2000];
                let e = send_gathered(&tx, to, &[io::IoSlice::new(&big)], 0, 0).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{e}");
                let fits = [1u8; 1552];
                send_gathered(&tx, to, &[io::IoSlice::new(&fits)], 0, 0).unwrap();
                assert_eq!(recv(&mut buf).len, 1552);

                // 40 segments of 1,489 bytes in one send, gathered from two slices per segment:
                // the UDP_GRO socket gets them back as one run with the segment size.
                let (seg, n) = (1489usize, 44usize);
                let heads: Vec<[u8; 8]> = (0..n).map(|i| [u8::try_from(i).unwrap(); 8]).collect();
                let body = vec![0xabu8; seg - 8];
                let iov: Vec<io::IoSlice<'_>> = heads
                    .iter()
                    .flat_map(|h| [io::IoSlice::new(h), io::IoSlice::new(&body)])
                    .collect();
                let size = u16::try_from(seg).unwrap();
                assert_eq!(send_gathered(&tx, to, &iov[..80], size, 1).unwrap(), 59_560);
                let m = recv(&mut buf);
                assert_eq!(m.from, from);
                assert_eq!(m.tos, 1, "outer ECT(1) on every segment");
                assert_eq!(
                    m.gso,
                    Some(1489),
                    "one GRO run with its segment size: {m:?}"
                );
                assert_eq!(m.len, 59_560, "all 40 segments in one receive");
                let check = |buf: &[u8], first: usize, count: usize| {
                    for i in 0..count {
                        let d = &buf[i * seg..(i + 1) * seg];
                        assert_eq!(d[..8], heads[first + i], "segment {} in order", first + i);
                        assert!(d[8..].iter().all(|b| *b == 0xab));
                    }
                };
                check(&buf, 0, 40);

                // All 44 (65,516 bytes) in one send: over IPv4's 65,507 limit, within IPv6's. (The
                // loopback then segments it in software, being over its gso_max_size of 65,536
                // with headers, so it arrives in several runs.)
                assert_eq!(send_gathered(&tx, to, &iov, size, 1).unwrap(), 65_516);
                let mut got = 0;
                while got < n {
                    let m = recv(&mut buf);
                    assert_eq!(m.len % seg, 0, "{m:?}");
                    let k = m.len / seg;
                    assert!(k == 1 || m.gso == Some(1489), "{m:?}");
                    check(&buf, got, k);
                    got += k;
                }
                assert_eq!(got, n);
            },
        );
    }

    /// Root only (a private network namespace, loopback MTU 1600): the plain batch calls with
    /// IPv6: one sendmmsg to IPv6 destinations with a traffic class per datagram, one recvmmsg
    /// that reports IPv6 senders and each traffic class; and the path MTU toward an IPv6
    /// destination (IPV6_MTU).
    #[test]
    fn ipv6_batches_and_path_mtu() {
        crate::sys::in_private_netns("ipv6_batches_and_path_mtu", || {
            let st = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up", "mtu", "1600"])
                .status()
                .unwrap();
            assert!(st.success(), "ip link set lo up mtu 1600 failed");
            let rx = bind_vxlan_v6(Ipv6Addr::UNSPECIFIED, 0).unwrap();
            let to = SocketAddr::from((Ipv6Addr::LOCALHOST, rx.local_addr().unwrap().port()));
            let tx = bind_source_pool(Ipv6Addr::LOCALHOST, 1, 3)
                .unwrap()
                .pop()
                .unwrap();
            let from = tx.local_addr().unwrap();
            let data: Vec<Vec<u8>> = (1..=5u8).map(|i| vec![i; 100 * usize::from(i)]).collect();
            let tos = [0u8, 2, 1, 3, 0];
            let msgs: Vec<(SocketAddr, &[u8], u8)> = data
                .iter()
                .zip(tos)
                .map(|(d, t)| (to, d.as_slice(), t))
                .collect();
            assert_eq!(send_batch(&tx, &msgs).unwrap(), 5);
            let slot = 2048;
            let mut buf = vec![0u8; 8 * slot];
            let mut metas = [RecvMeta::EMPTY; 8];
            let mut got = Vec::new();
            for _ in 0..100 {
                match recv_batch(&rx, &mut buf, slot, &mut metas) {
                    Ok(n) => {
                        for (i, m) in metas[..n].iter().enumerate() {
                            assert_eq!(m.from, from, "the IPv6 sender");
                            got.push((buf[i * slot], m.len, m.tos));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if got.len() == 5 {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(e) => panic!("recv_batch: {e}"),
                }
            }
            let want: Vec<(u8, usize, u8)> = (1..=5u8)
                .zip(tos)
                .map(|(i, t)| (i, 100 * usize::from(i), t))
                .collect();
            assert_eq!(
                got, want,
                "every datagram, in order, with its traffic class"
            );
            let probe = mtu_probe(true).unwrap();
            assert_eq!(path_mtu(&probe, to).unwrap(), 1600);
            let probe4 = mtu_probe(false).unwrap();
            assert_eq!(
                path_mtu(&probe4, SocketAddr::from((Ipv4Addr::LOCALHOST, 9))).unwrap(),
                1600
            );
        });
    }

    #[test]
    fn recv_batch_takes_several_datagrams_in_one_call() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let sizes = [1usize, 100, 1500, 3000, 7];
        for (i, n) in sizes.iter().enumerate() {
            #[allow(clippy::cast_possible_truncation)]
            tx.send_to(&vec![i as u8 + 1; *n], to).unwrap();
        }
        let from = tx.local_addr().unwrap();
        let slot = 4096;
        let mut buf = vec![0u8; 4 * slot];
        let mut metas = [RecvMeta::EMPTY; MAX_RECV_BATCH];
        let mut got = Vec::new();
        // Loopback delivers synchronously, so all five are queued; at most 4 slots per call.
        while got.len() < sizes.len() {
            let n = recv_batch(&rx, &mut buf, slot, &mut metas).unwrap();
            assert!(n <= 4);
            for (i, m) in metas[..n].iter().enumerate() {
                assert_eq!(m.from, from);
                let d = &buf[i * slot..i * slot + m.len];
                assert!(d.iter().all(|b| *b == d[0]));
                got.push((d[0], m.len));
            }
        }
        let want: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (u8::try_from(i).unwrap() + 1, *n))
            .collect();
        assert_eq!(got, want);
        let e = recv_batch(&rx, &mut buf, slot, &mut metas).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
