//! Giving up privileges at start: flint talks HTTPS and writes files it owns, so it needs no
//! capability at all, and nothing it could exec should gain any.

use caps::CapSet;
use tracing::debug;

/// Clears the bounding, ambient, inheritable, permitted and effective capability sets and sets
/// no_new_privs. Works as root and as an unprivileged user (who has nothing to drop).
pub fn drop_all() -> anyhow::Result<()> {
    // The bounding set can only shrink while CAP_SETPCAP is still effective: clear it first.
    for cap in caps::all() {
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
        caps::clear(None, set)
            .map_err(|e| anyhow::anyhow!("cannot clear capability set {set:?}: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs()?;
    Ok(())
}
