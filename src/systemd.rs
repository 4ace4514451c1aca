//! Talking to systemd: `sd_notify` status while waiting, the credentials and state directories,
//! and whether stderr goes to the journal.

use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;

/// Slack on top of the remaining deadline, so systemd never kills a unit that is about to give
/// up cleanly with its own error message.
const TIMEOUT_SLACK: Duration = Duration::from_secs(30);

/// Tells systemd what flint waits for (`systemctl status` shows it) and that the start-up may
/// take up to `remaining` more.
pub fn waiting(status: &str, remaining: Duration) {
    let usec = u32::try_from((remaining + TIMEOUT_SLACK).as_micros()).unwrap_or(u32::MAX);
    notify(&[
        NotifyState::Status(&crate::logging::safe_line(status)),
        NotifyState::ExtendTimeoutUsec(usec),
    ]);
}

/// Sets `systemctl status`'s text for a step that is not a wait.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(&crate::logging::safe_line(status))]);
}

fn notify(states: &[NotifyState]) {
    // Without NOTIFY_SOCKET (a shell, a test) this is a no-op; a failure to reach systemd must
    // never fail a join, so it is only worth a debug line.
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// `$CREDENTIALS_DIRECTORY`, set by systemd when the unit has `LoadCredential=`.
pub fn credentials_dir() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from)
}

/// `$STATE_DIRECTORY`, set by systemd for `StateDirectory=`; the first entry when several.
pub fn state_dir() -> Option<PathBuf> {
    let value = std::env::var("STATE_DIRECTORY").ok()?;
    value
        .split(':')
        .next()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}
