//! Log lines for the person reading `journalctl` at 3 a.m.: one line per step, on stderr,
//! without timestamps when the journal adds its own.

use std::io::IsTerminal;

use tracing::Level;

/// `FLINT_LOG` (error, warn, info, debug, trace) overrides the level; `verbose` raises it to debug.
pub fn init(verbose: bool) {
    let level = std::env::var("FLINT_LOG")
        .ok()
        .and_then(|v| v.parse::<Level>().ok())
        .unwrap_or(if verbose { Level::DEBUG } else { Level::INFO });
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    if crate::systemd::stderr_is_journal() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// A step line that a retry loop repeats: `info` the first time, `debug` after, so the journal
/// shows each step once and `--verbose` shows every attempt.
#[derive(Debug, Default)]
pub struct StepLine(std::cell::Cell<bool>);

impl StepLine {
    pub fn log(&self, message: std::fmt::Arguments<'_>) {
        if self.0.replace(true) {
            tracing::debug!("{message} (again)");
        } else {
            tracing::info!("{message}");
        }
    }
}
