//! Least privilege, failing closed: the daemon keeps only `CAP_NET_ADMIN` (TAP creation,
//! links, addresses, routes, neighbours, nftables over netlink) and `CAP_NET_RAW` (the raw
//! socket iptables-legacy opens, to find and remove Flannel's chains in that backend and for the
//! iptables fallback of the masquerade rules), sets `no_new_privs`, and exits when any of it
//! cannot be done rather than running with more than it says.
//!
//! Capabilities are per thread on Linux and a new thread copies its creator's. So the drop
//! happens in `main` before the tokio runtime and any worker exist: every thread overlayd ever
//! runs, including the ones a device rebuild starts, holds the kept set alone. The bounding set
//! is reduced to the kept set too (when this process may: it needs `CAP_SETPCAP`, which it then drops), and
//! `no_new_privs` makes sure an executed tool (iptables, nft) never has more than the kept set.

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities overlayd keeps (the DaemonSet grants exactly these; a test checks it).
pub const KEPT: &[Capability] = &[Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW];

/// Without this one nothing works.
pub const REQUIRED: Capability = Capability::CAP_NET_ADMIN;

/// What `drop_to_minimum` did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Only the kept capabilities this process had are left in the effective and permitted
    /// sets; `dropped` is how many permitted capabilities went away. `bounding_cleared` is false
    /// when the process had no `CAP_SETPCAP` to clear it with (`no_new_privs` covers that).
    Kept {
        kept: Vec<Capability>,
        dropped: usize,
        bounding_cleared: bool,
    },
    /// The process never had `CAP_NET_ADMIN`; whatever it had is dropped, and setup will fail
    /// with a permission error.
    Missing,
}

/// Why the drop failed; every variant means overlayd must not go on.
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("cannot read the {set:?} capability set: {source}")]
    Read {
        set: CapSet,
        source: caps::errors::CapsError,
    },
    #[error(
        "cannot drop {cap} from the bounding set although this process holds CAP_SETPCAP: {source}"
    )]
    Bounding {
        cap: Capability,
        source: caps::errors::CapsError,
    },
    #[error("cannot set the {set:?} capability set to [{want}]: {source}")]
    Set {
        set: CapSet,
        want: String,
        source: caps::errors::CapsError,
    },
    #[error("the {set:?} capability set is [{have}] after the drop, expected [{want}]")]
    Verify {
        set: CapSet,
        have: String,
        want: String,
    },
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
}

fn names(set: &CapsHashSet) -> String {
    let mut v: Vec<String> = set.iter().map(ToString::to_string).collect();
    v.sort();
    v.join(",")
}

/// Sets `no_new_privs` and drops every capability but [`KEPT`] from this thread (call before
/// spawning any). Any failure is an error: the caller must exit.
pub fn drop_to_minimum() -> Result<Outcome, PrivError> {
    crate::sys::process::set_no_new_privs().map_err(PrivError::NoNewPrivs)?;
    let read =
        |set: CapSet| caps::read(None, set).map_err(|source| PrivError::Read { set, source });
    let permitted = read(CapSet::Permitted)?;
    let keep: CapsHashSet = KEPT
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    // The bounding set first: changing it needs CAP_SETPCAP, which goes next.
    let can_setpcap = read(CapSet::Effective)?.contains(&Capability::CAP_SETPCAP);
    let mut bounding_cleared = can_setpcap;
    if can_setpcap {
        for cap in read(CapSet::Bounding)? {
            if !KEPT.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(|source| PrivError::Bounding { cap, source })?;
            }
        }
    } else {
        bounding_cleared = read(CapSet::Bounding)?.iter().all(|c| KEPT.contains(c));
    }
    caps::clear(None, CapSet::Ambient).map_err(|source| PrivError::Set {
        set: CapSet::Ambient,
        want: String::new(),
        source,
    })?;
    for (set, want) in [
        (CapSet::Inheritable, CapsHashSet::new()),
        (CapSet::Effective, keep.clone()),
        (CapSet::Permitted, keep.clone()),
    ] {
        caps::set(None, set, &want).map_err(|source| PrivError::Set {
            set,
            want: names(&want),
            source,
        })?;
    }
    for set in [CapSet::Effective, CapSet::Permitted] {
        let have = read(set)?;
        if have != keep {
            return Err(PrivError::Verify {
                set,
                have: names(&have),
                want: names(&keep),
            });
        }
    }
    if !keep.contains(&REQUIRED) {
        return Ok(Outcome::Missing);
    }
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(Outcome::Kept {
        dropped: permitted.len() - kept.len(),
        kept,
        bounding_cleared,
    })
}
