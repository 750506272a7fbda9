//! Ethernet II frame offsets.

pub const HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// A checked view of an Ethernet frame.
#[derive(Clone, Copy)]
pub struct Frame<'a>(&'a [u8]);

impl<'a> Frame<'a> {
    /// `None` when shorter than an Ethernet header.
    #[must_use]
    pub fn new_checked(b: &'a [u8]) -> Option<Self> {
        (b.len() >= HEADER_LEN).then_some(Frame(b))
    }
    #[must_use]
    pub fn dst(&self) -> [u8; 6] {
        [
            self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5],
        ]
    }
    #[must_use]
    pub fn src(&self) -> [u8; 6] {
        [
            self.0[6], self.0[7], self.0[8], self.0[9], self.0[10], self.0[11],
        ]
    }
    #[must_use]
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.0[12], self.0[13]])
    }
    #[must_use]
    pub fn payload(&self) -> &'a [u8] {
        &self.0[HEADER_LEN..]
    }
    /// Group bit set: broadcast or multicast.
    #[must_use]
    pub fn dst_is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }
}
