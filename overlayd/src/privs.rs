//! Least privilege: the daemon keeps only `CAP_NET_ADMIN` (TAP creation, links, addresses,
//! routes, neighbours, the device sysctl). It needs no `CAP_NET_RAW` (VXLAN rides ordinary UDP
//! sockets on an unprivileged port) and nothing else.
//!
//! Capabilities are per thread on Linux and a new thread copies its creator's. So the drop
//! happens in `main` before the tokio runtime and any worker exist: every thread overlayd ever
//! runs, including the ones a device rebuild starts, holds `CAP_NET_ADMIN` alone. Setup needs
//! nothing more, which makes "after setup" and "from the start" the same set, and the earlier
//! point cannot miss a thread. The bounding set is cleared too, so no later exec regains more.

use caps::{CapSet, Capability, CapsHashSet};

/// The only capability overlayd keeps.
pub const KEEP: Capability = Capability::CAP_NET_ADMIN;

/// What `drop_to_minimum` did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Only `CAP_NET_ADMIN` is left in the effective and permitted sets (and the bounding set
    /// when `bounding_cleared`). `dropped` is how many permitted capabilities went away.
    Kept {
        dropped: usize,
        bounding_cleared: bool,
    },
    /// The process never had `CAP_NET_ADMIN`; whatever it had is dropped, and setup will fail
    /// with a permission error.
    Missing,
}

/// Drops every capability except `CAP_NET_ADMIN` from this thread (call before spawning any).
pub fn drop_to_minimum() -> Result<Outcome, caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let has = permitted.contains(&KEEP);
    let keep: CapsHashSet = if has {
        std::iter::once(KEEP).collect()
    } else {
        CapsHashSet::new()
    };
    // The bounding set first: changing it needs CAP_SETPCAP, which goes next.
    let mut bounding_cleared = true;
    for cap in caps::read(None, CapSet::Bounding)? {
        if cap != KEEP && caps::drop(None, CapSet::Bounding, cap).is_err() {
            bounding_cleared = false;
        }
    }
    let _ = caps::clear(None, CapSet::Ambient);
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    if has {
        Ok(Outcome::Kept {
            dropped: permitted.len() - 1,
            bounding_cleared,
        })
    } else {
        Ok(Outcome::Missing)
    }
}
