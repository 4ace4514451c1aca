//! Giving up privileges at start: flint talks HTTPS and writes files it owns, so it needs no
//! capability at all, and nothing it could exec should gain any.

use caps::{CapSet, CapsHashSet};
use tracing::debug;

use crate::exit::{ExitStatus, HasExitStatus};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused to clear a capability set that is not empty.
    #[error("cannot drop the {set:?} capabilities {held:?}: {detail}")]
    Drop {
        set: CapSet,
        held: CapsHashSet,
        detail: String,
    },
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
}

impl HasExitStatus for Error {
    fn exit_status(&self) -> ExitStatus {
        ExitStatus::Permission
    }
}

/// Empties the bounding, ambient, inheritable, permitted and effective capability sets and sets
/// no_new_privs. A set that is already empty is left alone: under systemd's
/// `CapabilityBoundingSet=` and a system call filter without `capset`, there is nothing to drop
/// and no call to make.
pub fn drop_all() -> Result<(), Error> {
    // The bounding set can only shrink while CAP_SETPCAP is still effective: clear it first.
    for cap in caps::read(None, CapSet::Bounding).unwrap_or_default() {
        if let Err(e) = caps::drop(None, CapSet::Bounding, cap) {
            debug!("cannot drop {cap} from the bounding set: {e}");
        }
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        let held = caps::read(None, set).unwrap_or_default();
        if held.is_empty() {
            continue;
        }
        caps::clear(None, set).map_err(|e| Error::Drop {
            set,
            held,
            detail: e.to_string(),
        })?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(Error::NoNewPrivs)
}
