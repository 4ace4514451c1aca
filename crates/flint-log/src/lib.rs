//! How flint and flint-boot write their log lines, on stderr:
//!
//! - `FLINT_LOG` sets the level for both (`error`, `warn`, `info`, `debug`, `trace`); a value
//!   that is none of them is said in a warning, and the default level is kept.
//! - `FLINT_LOG_FORMAT=json` writes one JSON object a line (`timestamp`, `level`, `message` and
//!   the event's other fields), for log shippers; `text` (the default) one line of text.
//! - When stderr is the journal (systemd's `$JOURNAL_STREAM` names it), each line starts with its
//!   syslog priority, `<3>` for an error to `<7>` for debug, as sd-daemon(3) describes, so that
//!   `journalctl -p err -u UNIT` finds the failure; and no time, which the journal adds itself.

use std::fmt;
use std::os::unix::fs::MetadataExt as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The variable that sets the level.
pub const LEVEL_VARIABLE: &str = "FLINT_LOG";
/// The variable that sets the format.
pub const FORMAT_VARIABLE: &str = "FLINT_LOG_FORMAT";

/// Sets up the log: `default` is the level when `FLINT_LOG` does not name one, `writer` where
/// each line goes (stderr, or a writer that makes each line safe first). Warns, once set up,
/// about a variable whose value it could not use.
pub fn init<W>(default: Level, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (level, level_problem) = level_from(std::env::var(LEVEL_VARIABLE).ok(), default);
    let (json, format_problem) = match std::env::var(FORMAT_VARIABLE).ok().as_deref() {
        None | Some("" | "text") => (false, None),
        Some("json") => (true, None),
        Some(other) => (
            false,
            Some(format!(
                "{FORMAT_VARIABLE}={other:?} is not a log format (text, json); writing text"
            )),
        ),
    };
    let journal = stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(level)
        .with_target(false)
        // Colours would put control characters into the journal; the lines are escaped.
        .with_ansi(false);
    match (json, journal) {
        (false, false) => builder.init(),
        (false, true) => builder.without_time().map_event_format(Prioritized).init(),
        (true, false) => builder.json().flatten_event(true).init(),
        (true, true) => builder
            .json()
            .flatten_event(true)
            .without_time()
            .map_event_format(Prioritized)
            .init(),
    }
    for problem in [level_problem, format_problem].into_iter().flatten() {
        tracing::warn!("{problem}");
    }
}

/// The level `value` names, or `default` with what was wrong with it.
fn level_from(value: Option<String>, default: Level) -> (Level, Option<String>) {
    match value.as_deref() {
        None | Some("") => (default, None),
        Some(text) => match text.parse::<Level>() {
            Ok(level) => (level, None),
            Err(_) => (
                default,
                Some(format!(
                    "{LEVEL_VARIABLE}={text:?} is not a log level (error, warn, info, debug, \
                     trace); logging at {default}"
                )),
            ),
        },
    }
}

/// The syslog priority of a level (sd-daemon(3)'s `SD_ERR` to `SD_DEBUG`).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Whether stderr is connected to the journal: `$JOURNAL_STREAM` names stderr's device and
/// inode (systemd.exec(5)); a process whose stderr was redirected elsewhere inherits the
/// variable but not the stream.
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// A line format with the event's syslog priority in front of each line.
struct Prioritized<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritized<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // An event of several lines (a list of problems) is several journal entries: each
        // carries the priority, or its details would drop to the default and out of `-p err`.
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        let priority = priority(*event.metadata().level());
        for line in text.lines() {
            writeln!(writer, "<{priority}>{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_read_and_a_bad_one_is_named() {
        assert_eq!(level_from(None, Level::INFO), (Level::INFO, None));
        assert_eq!(
            level_from(Some("".into()), Level::INFO),
            (Level::INFO, None)
        );
        assert_eq!(
            level_from(Some("debug".into()), Level::INFO),
            (Level::DEBUG, None)
        );
        let (level, problem) = level_from(Some("loud".into()), Level::INFO);
        assert_eq!(level, Level::INFO);
        assert!(
            problem
                .unwrap()
                .contains("FLINT_LOG=\"loud\" is not a log level")
        );
    }

    #[test]
    fn priorities_are_sd_daemons() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
        assert_eq!(priority(Level::TRACE), 7);
    }
}
