//! `overlayd cleanup` (and `--cleanup-on-exit`): removes what overlayd created on this node
//! and a stop leaves in place for the next overlayd: every route with protocol 77, the
//! neighbours on the device and the device itself, the masquerade and FORWARD rules
//! (`crate::netfilter::remove_all`), and the handover socket file. A device of
//! that name that overlayd did not create (see `not_adoptable`) is left alone and reported.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::sys::fdpass;
use crate::sys::netlink::Netlink;

/// What a cleanup removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub routes: usize,
    pub neighbours: usize,
    pub device: bool,
    /// The netfilter tables/chains removed (`crate::netfilter::remove_all`).
    pub netfilter: Vec<String>,
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} routes (protocol 77), {} neighbours, device {}, netfilter rules: {}",
            self.routes,
            self.neighbours,
            if self.device { "deleted" } else { "absent" },
            if self.netfilter.is_empty() {
                "none".to_string()
            } else {
                self.netfilter.join(", ")
            }
        )
    }
}

/// Removes our routes, the neighbours on `device` and `device` itself (only when overlayd
/// created it). The caller has stopped the workers.
pub async fn remove_all(nl: &Netlink, device: &str) -> Result<Removed> {
    let mut removed = Removed {
        routes: nl.delete_all_our_routes().await?,
        ..Removed::default()
    };
    if let Some(link) = nl.link_by_name(device).await? {
        if let Some(why) = super::not_adoptable(&link) {
            bail!("device {device} exists but overlayd did not create it ({why}); left in place");
        }
        for n in nl.neighbours(link.index).await? {
            nl.delete_neighbour(link.index, n.ip).await?;
            removed.neighbours += 1;
        }
        nl.delete_link(link.index).await?;
        removed.device = true;
    }
    // The masquerade and FORWARD rules are the last thing a stop leaves on the node.
    removed.netfilter = crate::netfilter::remove_all()
        .context("removing the masquerade/FORWARD rules (nft/iptables)")?;
    Ok(removed)
}

/// `overlayd cleanup`: refuses while an overlayd answers on `handover_socket` (it would
/// rebuild what is removed), unless `force`.
pub fn run(device: &str, handover_socket: &Path, force: bool) -> Result<()> {
    let live = fdpass::connect(handover_socket, Duration::from_millis(500)).is_ok();
    if live && !force {
        bail!(
            "an overlayd is running on this node (it answers on {}); stop it first, or pass --force",
            handover_socket.display()
        );
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let nl = Netlink::connect()?;
            let removed = remove_all(&nl, device)
                .await
                .with_context(|| format!("cleaning up device {device}"))?;
            match std::fs::remove_file(handover_socket) {
                _ if live => {}
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!(
                    "overlayd cleanup: cannot remove {}: {e}",
                    handover_socket.display()
                ),
            }
            println!("removed {removed}");
            Ok(())
        })
}
