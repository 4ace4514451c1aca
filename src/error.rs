//! The one error type of the binary: every module's error converts into it, and its exit status
//! is a `match` the compiler checks for totality. A new kind of failure cannot reach `main` without
//! someone deciding the status the units act on (69 is retried, 65/77/78 are not).

use std::fmt::Write as _;

use crate::exit::{ExitStatus, HasExitStatus};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
    #[error(transparent)]
    Http(#[from] crate::http::Error),
    #[error(transparent)]
    State(#[from] crate::state::Error),
    #[error(transparent)]
    Engine(#[from] crate::engines::Error),
    #[error(transparent)]
    Privileges(#[from] crate::privileges::Error),
    #[error(transparent)]
    Usage(#[from] crate::commands::UsageError),
    #[error(transparent)]
    Deadline(#[from] crate::retry::DeadlinePassed),
    /// What flint was doing when `source` happened, for the log line; the status is the source's.
    #[error("{doing}")]
    While {
        doing: &'static str,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Config(e) => e.exit_status(),
            Error::Secrets(e) => e.exit_status(),
            Error::Tls(e) => e.exit_status(),
            Error::Http(e) => e.exit_status(),
            Error::State(e) => e.exit_status(),
            Error::Engine(e) => e.exit_status(),
            Error::Privileges(e) => e.exit_status(),
            Error::Usage(e) => e.exit_status(),
            Error::Deadline(e) => e.exit_status(),
            Error::While { source, .. } => source.exit_status(),
        }
    }

    /// The error and each of its causes on one line, `outer: inner: innermost`, as the journal
    /// shows it.
    pub fn chain(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            let _ = write!(line, ": {e}");
            cause = e.source();
        }
        line
    }
}

/// `.doing("recording the join")` on a result: the log line says what failed, the exit status
/// stays the cause's.
pub trait Doing<T> {
    fn doing(self, doing: &'static str) -> Result<T>;
}

impl<T, E: Into<Error>> Doing<T> for std::result::Result<T, E> {
    fn doing(self, doing: &'static str) -> Result<T> {
        self.map_err(|e| Error::While {
            doing,
            source: Box::new(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_every_cause_once_and_the_status_is_the_root_causes() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let state = crate::state::Error::Io {
            file: "/var/lib/flint/.etcd-joined".into(),
            action: "write",
            source: io,
        };
        let err: Result<()> = Err(state).doing("recording the join");
        let err = err.unwrap_err();
        assert_eq!(err.exit_status(), ExitStatus::Permission);
        let line = err.chain();
        assert!(
            line.starts_with("recording the join: cannot write /var/lib/flint/.etcd-joined: "),
            "{line}"
        );
        assert_eq!(line.matches("cannot write").count(), 1, "{line}");
    }
}
