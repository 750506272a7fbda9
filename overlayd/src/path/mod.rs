//! Per-packet decisions, free of I/O: `encap` turns a frame read from the TAP device into a
//! destination (or a drop reason); `decap` checks a received VXLAN datagram and says how to
//! hand its inner frame to the TAP device (or why to drop it).
//!
//! Nothing here touches a socket or a file descriptor, allocates, or logs: callers count the
//! returned `DropReason`s.

pub mod ecn;
pub mod event;
pub mod gro;
pub mod plan;
pub mod pmtu;
pub mod tso;

use std::net::{IpAddr, SocketAddr};

use std::sync::Arc;

use crate::fdb::{Fdb, FdbEntry, PeerCounters};
use crate::wire::{checksum, ethernet, ip, vnet, vxlan};

/// Why a packet was dropped. The discriminant indexes the counters in `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// Egress: a frame shorter than an Ethernet header.
    TxShort,
    /// Egress: broadcast or multicast destination (Flannel's vxlan runs without flooding).
    TxNoFlood,
    /// Egress: no FDB entry for the destination MAC (a peer not, or no longer, known).
    TxUnknownDst,
    /// Egress: a GSO frame of a type this path cannot segment (only TCP is enabled).
    TxGsoUnsupported,
    /// Egress: a malformed virtio-net header or checksum request from the TAP device.
    TxBadOffload,
    /// Egress: the UDP send failed for a reason not counted apart below.
    TxSendError,
    /// Egress: the send buffer stayed full (EAGAIN) until the worker stopped; only then is a
    /// held frame given up (backpressure otherwise waits, it never drops).
    TxWouldBlock,
    /// Egress: the peer's VTEP is unreachable (ECONNREFUSED, EHOSTUNREACH, ENETUNREACH), or of
    /// an underlay family this node has no address (no send socket) of.
    TxUnreachable,
    /// Egress: the packet does not fit the path MTU to the peer (EMSGSIZE); an ICMP
    /// "fragmentation needed" / "packet too big" went back to the sender unless it was
    /// rate-limited or not allowed (see `pmtu`).
    TxTooBig,
    /// Ingress: shorter than a VXLAN header plus an Ethernet header.
    RxShort,
    /// Ingress: the I flag is clear (Linux drops these too).
    RxNoIFlag,
    /// Ingress: a VNI other than ours.
    RxWrongVni,
    /// Ingress: the outer source address is not a known VTEP.
    RxUnknownSender,
    /// Ingress: the inner destination MAC is not this node's VtepMAC.
    RxNotForUs,
    /// Ingress: a VLAN-tagged inner frame (the pod network is untagged).
    RxInnerVlan,
    /// Ingress: the TAP write failed (device down, queue full).
    RxTapError,
    /// Ingress: the outer header says CE (congestion) but the inner packet is not
    /// ECN-capable: dropped, as RFC 6040 and Linux vxlan do.
    RxEcnNotEct,
    /// Ingress: the inner IPv4/IPv6 source is not inside the sending VTEP's podCIDR (a peer
    /// speaking for pods that are not its own; see `check_inner_source`).
    RxForeignSource,
    /// Ingress: an inner frame that is not IPv4/IPv6 (ARP and others) from a known VTEP; Flannel
    /// peers never send any (permanent neighbours), so it cannot be attributed to their pods.
    RxInnerNotIp,
}

impl DropReason {
    pub const COUNT: usize = 19;
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::TxShort,
        Self::TxNoFlood,
        Self::TxUnknownDst,
        Self::TxGsoUnsupported,
        Self::TxBadOffload,
        Self::TxSendError,
        Self::TxWouldBlock,
        Self::TxUnreachable,
        Self::TxTooBig,
        Self::RxShort,
        Self::RxNoIFlag,
        Self::RxWrongVni,
        Self::RxUnknownSender,
        Self::RxNotForUs,
        Self::RxInnerVlan,
        Self::RxTapError,
        Self::RxEcnNotEct,
        Self::RxForeignSource,
        Self::RxInnerNotIp,
    ];

    /// Direction label for metrics: `tx` (pod to network) or `rx`.
    #[must_use]
    pub fn direction(self) -> &'static str {
        if (self as usize) < Self::RxShort as usize {
            "tx"
        } else {
            "rx"
        }
    }

    /// Stable snake_case name for metrics and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TxShort => "short",
            Self::TxNoFlood => "no_flood",
            Self::TxUnknownDst => "unknown_dst",
            Self::TxGsoUnsupported => "gso_unsupported",
            Self::TxBadOffload => "bad_offload",
            Self::TxSendError => "send_error",
            Self::TxWouldBlock => "would_block",
            Self::TxUnreachable => "unreachable",
            Self::TxTooBig => "too_big",
            Self::RxShort => "short",
            Self::RxNoIFlag => "no_i_flag",
            Self::RxWrongVni => "wrong_vni",
            Self::RxUnknownSender => "unknown_sender",
            Self::RxNotForUs => "not_for_us",
            Self::RxInnerVlan => "inner_vlan",
            Self::RxTapError => "tap_error",
            Self::RxEcnNotEct => "ecn_ce_not_ect",
            Self::RxForeignSource => "foreign_source",
            Self::RxInnerNotIp => "inner_not_ip",
        }
    }
}

impl PartialEq for Deliver<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.vnet == other.vnet
            && match (self.peer, other.peer) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// Settings of the decap path, fixed for the life of a worker.
#[derive(Debug, Clone, Copy)]
pub struct DecapConfig {
    pub vni: u32,
    pub own_mac: [u8; 6],
    /// MTU of the TAP device: inner IP packets above it arrive as one GSO datagram from a
    /// kernel-vxlan peer and must be handed to the TAP as a GSO super-frame.
    pub inner_mtu: u16,
    /// Accept VXLAN from any sender (debugging only).
    pub allow_any_sender: bool,
    /// Deliver inner frames whatever their source (`--allow-foreign-inner-source`).
    pub allow_foreign_inner_source: bool,
}

/// Where a frame read from the TAP device goes (`plan::Planner` turns it into sends).
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// Inner flow hash, used to pick the outer UDP source port.
    pub flow_hash: u32,
    pub peer: &'a FdbEntry,
    /// The outer destination: the peer's IPv6 VTEP for an inner IPv6 frame to its IPv6
    /// VtepMAC, else its IPv4 VTEP.
    pub destination: SocketAddr,
}

impl PartialEq for Route<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.destination == other.destination
            && self.flow_hash == other.flow_hash
            && self.peer.node == other.peer.node
    }
}

/// What to do with a received datagram's inner frame.
#[derive(Debug, Clone, Copy)]
pub struct Deliver<'a> {
    /// The virtio-net header to write in front of the inner frame.
    pub vnet: vnet::Header,
    /// The sending peer's counters (`None` only with `allow_any_sender` and an unknown sender).
    pub peer: Option<&'a Arc<PeerCounters>>,
}

/// Decides where a frame from the TAP goes. Completes a checksum the kernel left for us
/// (`NEEDS_CSUM`), so peers always get a finished inner checksum.
pub fn encap<'a>(
    frame: &mut [u8],
    hdr: &vnet::Header,
    fdb: &'a Fdb,
) -> Result<Route<'a>, DropReason> {
    let eth = ethernet::Frame::new_checked(frame).ok_or(DropReason::TxShort)?;
    if eth.dst_is_group() {
        return Err(DropReason::TxNoFlood);
    }
    let inner_v6 = eth.ethertype() == ethernet::ETHERTYPE_IPV6;
    let (peer, destination) = fdb
        .route(&eth.dst(), inner_v6)
        .ok_or(DropReason::TxUnknownDst)?;
    match hdr.gso_type & !vnet::GSO_ECN {
        vnet::GSO_NONE => {
            if hdr.flags & vnet::F_NEEDS_CSUM != 0 {
                // Only TCP/UDP checksums past the shortest IP header: anything else would
                // write into the Ethernet or IP header (found by fuzzing; fuzz/regressions/).
                let start = usize::from(hdr.csum_start);
                if start < ethernet::HEADER_LEN + 20 || !matches!(hdr.csum_offset, 6 | 16) {
                    return Err(DropReason::TxBadOffload);
                }
                complete_checksum(frame, start, hdr.csum_offset.into())?;
            }
        }
        // A TSO super-frame: the caller splits it (`tso::Segmenter`), which computes every
        // segment's checksums.
        vnet::GSO_TCPV4 | vnet::GSO_TCPV6 => {}
        _ => return Err(DropReason::TxGsoUnsupported),
    }
    Ok(Route {
        flow_hash: ip::flow_hash(frame),
        peer,
        destination,
    })
}

/// Finishes a partial checksum: the field at `start + offset` holds the pseudo-header seed;
/// sum from `start` to the end and store the complement.
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> Result<(), DropReason> {
    let field = start + offset;
    if field + 2 > frame.len() {
        return Err(DropReason::TxBadOffload);
    }
    let sum = checksum::sum(&frame[start..], 0);
    let mut c = checksum::finish(sum);
    if c == 0 && offset == 6 {
        // UDP: a computed zero is sent as all ones (RFC 768).
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Checks a received VXLAN payload (header + inner frame) from `from` and says how to write
/// the inner frame (`&payload[8..]`) to the TAP device.
pub fn decap<'a>(
    payload: &[u8],
    from: impl Into<IpAddr>,
    fdb: &'a Fdb,
    cfg: &DecapConfig,
) -> Result<Deliver<'a>, DropReason> {
    let vx = vxlan::Packet::new_checked(payload).ok_or(DropReason::RxShort)?;
    let frame = ethernet::Frame::new_checked(vx.inner()).ok_or(DropReason::RxShort)?;
    // Reserved bits are ignored, as RFC 7348 section 5 says ("MUST be ignored on receipt"):
    // Flannel peers never set them, and an extension bit some sender sets (GBP) must not cut
    // a pod off. Only the I flag matters.
    if !vx.has_vni() {
        return Err(DropReason::RxNoIFlag);
    }
    if vx.vni() != cfg.vni {
        return Err(DropReason::RxWrongVni);
    }
    let from = from.into();
    let vtep = fdb.vtep(from);
    // An unspecified sender is no VTEP, even with allow_any_sender: it is also how the
    // socket layer marks a datagram whose sender was of no IP family (`udp::RecvMeta`).
    if vtep.is_none() && (!cfg.allow_any_sender || from.is_unspecified()) {
        return Err(DropReason::RxUnknownSender);
    }
    if frame.dst() != cfg.own_mac {
        return Err(DropReason::RxNotForUs);
    }
    if matches!(
        frame.ethertype(),
        ethernet::ETHERTYPE_VLAN | ethernet::ETHERTYPE_QINQ
    ) {
        return Err(DropReason::RxInnerVlan);
    }
    if let Some(v) = vtep.filter(|_| !cfg.allow_foreign_inner_source) {
        check_inner_source(&frame, v)?;
    }
    Ok(Deliver {
        vnet: ingress_offload(vx.inner(), cfg.inner_mtu),
        peer: vtep.map(|v| &v.counters),
    })
}

/// A VTEP speaks only for its own pods: the inner source address must lie inside the sending
/// peer's podCIDR (one mask compare, no allocation). That includes the peer's `flannel.1` /
/// TAP address (its podCIDR's network address), which host-network processes there send from.
/// Called per decapsulated segment, so every segment of a UDP_GRO run is checked.
///
/// Not IP (ARP and others): dropped, counted apart. Flannel peers program permanent neighbours
/// and never send ARP over VXLAN, and such a frame cannot be attributed to the peer's pods.
/// IPv6: the source must lie in the peer's IPv6 podCIDR; link-local sources (fe80::/10) are no
/// one's pods and are dropped too (the IPv4-only dataplane disables IPv6 on the device anyway).
///
/// What the others check on decap, for comparison: Cilium (`bpf_overlay.c`, `handle_ipv4`)
/// takes the sender's security identity from the tunnel key (the VNI the sender wrote), drops
/// the reserved host identity, and enforces network policy on that identity; it does not tie
/// the inner source address to the sending node's pod range. Calico accepts VXLAN only from
/// known hosts (the `all-vxlan-net` address set, as our `unknown_sender` does) and drops VXLAN
/// originating in workloads; neither binds an inner source to the sending host's IP block.
/// This check adds that binding, as boringtun/WireGuard do with allowed IPs: a compromised or
/// spoofing node can still speak for its own pods, but not for another node's pods or for
/// addresses outside its podCIDR. It is not a network policy.
#[inline]
fn check_inner_source(frame: &ethernet::Frame<'_>, v: &crate::fdb::Vtep) -> Result<(), DropReason> {
    let ipb = frame.payload();
    let owned = match frame.ethertype() {
        ethernet::ETHERTYPE_IPV4 => ipb
            .get(12..16)
            .is_some_and(|s| v.owns_v4([s[0], s[1], s[2], s[3]])),
        ethernet::ETHERTYPE_IPV6 => ipb.get(8..24).is_some_and(|s| {
            let mut a = [0u8; 16];
            a.copy_from_slice(s);
            v.owns_v6(a)
        }),
        _ => return Err(DropReason::RxInnerNotIp),
    };
    if owned {
        Ok(())
    } else {
        Err(DropReason::RxForeignSource)
    }
}

/// The virtio-net header for an inner frame written to the TAP device.
///
/// Kernel-vxlan peers on a veth underlay deliver TCP/UDP with the checksum field still holding
/// only the pseudo-header seed (never finalised), and may deliver a whole TSO burst as one
/// datagram. Both must be injected with `NEEDS_CSUM` (and GSO for the burst), or the receiving
/// stack drops them. Frames with any other checksum value go in plain and the kernel verifies.
#[must_use]
pub fn ingress_offload(frame: &[u8], inner_mtu: u16) -> vnet::Header {
    let plain = vnet::Header::default();
    let Some(eth) = ethernet::Frame::new_checked(frame) else {
        return plain;
    };
    let is_v6 = match eth.ethertype() {
        ethernet::ETHERTYPE_IPV4 => false,
        ethernet::ETHERTYPE_IPV6 => true,
        _ => return plain,
    };
    let ipb = eth.payload();
    let Some(l4) = ip::L4Info::parse(ipb) else {
        return plain;
    };
    let Some(csum_off) = l4.csum_offset() else {
        return plain;
    };
    if l4.fragment {
        return plain;
    }
    let field = l4.l4_offset + csum_off;
    let Some(cur) = ipb.get(field..field + 2) else {
        return plain;
    };
    let cur = u16::from_be_bytes([cur[0], cur[1]]);
    let seed = checksum::fold(l4.pseudo_sum());
    let ip_len = l4.l4_offset + l4.l4_len;
    let oversize = ip_len > usize::from(inner_mtu);
    let partial = cur == seed;
    if !partial && !oversize {
        return plain;
    }
    #[allow(clippy::cast_possible_truncation)]
    let mut h = vnet::Header {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: (ethernet::HEADER_LEN + l4.l4_offset) as u16,
        csum_offset: csum_off as u16,
    };
    if oversize && l4.proto == ip::PROTO_TCP {
        let Some(&doff) = ipb.get(l4.l4_offset + 12) else {
            return plain;
        };
        let thl = usize::from(doff >> 4) * 4;
        let headers = l4.l4_offset + thl;
        if thl < 20 || headers >= usize::from(inner_mtu) || headers > ip_len {
            return plain;
        }
        if !partial {
            // A complete checksum over the whole burst is meaningless per segment; GSO needs the
            // seed in the field. Without it the frame cannot be injected correctly.
            return plain;
        }
        h.gso_type = if is_v6 {
            vnet::GSO_TCPV6
        } else {
            vnet::GSO_TCPV4
        };
        #[allow(clippy::cast_possible_truncation)]
        {
            h.gso_size = (usize::from(inner_mtu) - headers) as u16;
            h.hdr_len = (ethernet::HEADER_LEN + headers) as u16;
        }
    } else if !partial {
        return plain;
    }
    h
}

#[cfg(test)]
mod offload_tests;
#[cfg(test)]
mod tests;
