//! Log lines for the person reading `journalctl` at 3 a.m.: one line per step, on stderr,
//! without timestamps when the journal adds its own.

use std::io::Write as _;

use tracing::Level;

/// `FLINT_LOG` and `FLINT_LOG_FORMAT` as flint-log reads them for both binaries; `verbose` makes
/// debug the default level.
pub fn init(verbose: bool) {
    let default = if verbose { Level::DEBUG } else { Level::INFO };
    flint_log::init(default, || GuardedLine(Vec::new()));
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

/// One log line on its way to stderr, written out whole when the event is done: whatever a
/// server said in it (a member ID with a line break, an error body echoing this node's token)
/// arrives as one line, its control characters escaped and every held secret redacted.
struct GuardedLine(Vec<u8>);

impl std::io::Write for GuardedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for GuardedLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.0);
        let mut line = safe_line(text.strip_suffix('\n').unwrap_or(&text));
        line.push('\n');
        // stderr is gone (a closed pipe): nothing is left to tell.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// `text` fit for one log line or `systemctl status`: held secrets redacted, control characters
/// escaped.
pub fn safe_line(text: &str) -> String {
    crate::config::one_line(&crate::secrets::scrub(text))
}

/// Text of several lines for the standard output (a table, a report), each line made safe as
/// `safe_line` makes it: the units' standard output goes to the journal too.
pub fn safe_lines(text: &str) -> String {
    text.lines().map(|line| safe_line(line) + "\n").collect()
}
