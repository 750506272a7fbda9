//! VXLAN header (RFC 7348): 8 bytes, flags byte with the I bit, 24-bit VNI in bytes 4..7.

pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI field is valid.
pub const FLAG_I: u8 = 0x08;
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// A checked view of a VXLAN datagram payload (header + inner frame).
#[derive(Clone, Copy)]
pub struct Packet<'a>(&'a [u8]);

impl<'a> Packet<'a> {
    #[must_use]
    pub fn new_checked(b: &'a [u8]) -> Option<Self> {
        (b.len() >= HEADER_LEN).then_some(Packet(b))
    }
    #[must_use]
    pub fn flags(&self) -> u8 {
        self.0[0]
    }
    #[must_use]
    pub fn has_vni(&self) -> bool {
        self.0[0] & FLAG_I != 0
    }
    #[must_use]
    pub fn vni(&self) -> u32 {
        u32::from_be_bytes([0, self.0[4], self.0[5], self.0[6]])
    }
    /// Reserved bits (everything but the I flag and the VNI) are non-zero.
    #[must_use]
    pub fn reserved_bits_set(&self) -> bool {
        self.0[0] & !FLAG_I != 0 || self.0[1..4] != [0, 0, 0] || self.0[7] != 0
    }
    #[must_use]
    pub fn inner(&self) -> &'a [u8] {
        &self.0[HEADER_LEN..]
    }
}

/// The 8 header bytes for `vni`, reserved bits zero.
#[must_use]
pub fn header(vni: u32) -> [u8; HEADER_LEN] {
    let v = vni.to_be_bytes();
    [FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]
}
