//! Ethernet II frame offsets, and overlayd's own Ethernet address type.

use std::fmt;
use std::str::FromStr;

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

/// An Ethernet address: a VtepMAC in the FDB, a neighbour's or a link's address in netlink.
/// overlayd's own type, so the dataplane and `sys` need nothing from the node model; the
/// control plane converts the model's addresses (`control::model`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The six bytes, as `Frame::dst` returns them and the FDB is keyed.
    #[must_use]
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Group bit set: broadcast or multicast, never a VtepMAC.
    #[must_use]
    pub const fn is_group(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not six colon-separated hex pairs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex pairs like 0a:58:0a:f4:01:00")]
pub struct BadMac(pub String);

impl FromStr for MacAddr {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_with_the_value() {
        let m: MacAddr = "0a:58:0A:f4:01:00".parse().unwrap();
        assert_eq!(m.octets(), [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x00]);
        assert_eq!(m.to_string(), "0a:58:0a:f4:01:00");
        assert_eq!(format!("{m:?}"), "0a:58:0a:f4:01:00");
        assert!(!m.is_group() && MacAddr([0xff; 6]).is_group());
        for bad in [
            "",
            "0a:58:0a:f4:01",
            "0a:58:0a:f4:01:00:00",
            "0a:58:0a:f4:1:000",
            "zz:58:0a:f4:01:00",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
