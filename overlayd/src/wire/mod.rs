//! Byte views and header builders for the frames overlayd handles: VXLAN, Ethernet, IPv4/IPv6,
//! TCP/UDP checksums and the virtio-net header of the TAP device.
//!
//! Everything here works on borrowed buffers at fixed offsets; it never allocates and never
//! does I/O. Bounds are checked once, in the `new_checked` constructors.

pub mod checksum;
pub mod ethernet;
pub mod ip;
pub mod vnet;
pub mod vxlan;
