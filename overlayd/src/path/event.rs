//! Things the packet path does besides forwarding that operators want to count: ICMP errors
//! it generated for path MTU discovery, and ECN marks it carried into inner packets. The
//! discriminant indexes the counters in `stats`.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum PathEvent {
    /// ICMP "fragmentation needed" written to the TAP for an IPv4 packet over the path MTU.
    IcmpFragNeeded,
    /// ICMPv6 "packet too big" written to the TAP for an IPv6 packet over the path MTU.
    Icmpv6PacketTooBig,
    /// An ICMP error for the path MTU was due but the rate limit held it back.
    IcmpRateLimited,
    /// An inner IPv4 packet without DF over the path MTU, sent with the outer packet
    /// fragmented (DF off for that one datagram), as kernel vxlan does.
    OuterFragmented,
    /// An outer CE mark copied into an inner ECN-capable packet.
    EcnCeSet,
    /// An outer ECT(1) copied into an inner ECT(0) packet.
    EcnEct1Set,
    /// A send found the socket buffer full (EAGAIN): the worker waited for it to drain
    /// instead of dropping (backpressure toward the pods).
    TxSendBufferFull,
    /// The kernel refused to segment one UDP_SEGMENT send (EINVAL); that send went one
    /// datagram per segment and segmentation stayed on.
    SegmentRefused,
}

impl PathEvent {
    pub const COUNT: usize = 8;
    pub const ALL: [PathEvent; Self::COUNT] = [
        Self::IcmpFragNeeded,
        Self::Icmpv6PacketTooBig,
        Self::IcmpRateLimited,
        Self::OuterFragmented,
        Self::EcnCeSet,
        Self::EcnEct1Set,
        Self::TxSendBufferFull,
        Self::SegmentRefused,
    ];

    /// Stable snake_case name for metrics and `overlayd status`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IcmpFragNeeded => "icmp_frag_needed",
            Self::Icmpv6PacketTooBig => "icmpv6_packet_too_big",
            Self::IcmpRateLimited => "icmp_rate_limited",
            Self::OuterFragmented => "outer_fragmented",
            Self::EcnCeSet => "ecn_ce_set",
            Self::EcnEct1Set => "ecn_ect1_set",
            Self::TxSendBufferFull => "tx_send_buffer_full",
            Self::SegmentRefused => "segment_refused",
        }
    }
}
