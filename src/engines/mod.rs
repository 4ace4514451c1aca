//! One adapter per service protocol, and the errors they share.

pub mod etcd;

use crate::exit::{Classify, ExitStatus};
use crate::http;
use crate::retry::{Class, Classified};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Http(#[from] http::Error),
    /// The service understood the request and said no, in its own words.
    #[error("{url} refused: {message}")]
    Refused {
        url: String,
        code: i64,
        message: String,
        class: Class,
    },
    /// An HTTP error status with no answer flint recognises.
    #[error("{url} answered HTTP {status}: {snippet:?}")]
    Status {
        url: String,
        status: hyper::StatusCode,
        snippet: String,
        class: Class,
    },
    /// Every endpoint answered, none can change membership (all are learners).
    #[error("no voting member among {tried}: learners cannot change membership")]
    NoVoter { tried: String },
    /// The service answered, but is not where flint waits for it to be yet.
    #[error("{0}")]
    NotReady(String),
    /// The cluster's membership contradicts this node's configuration; an operator must decide.
    #[error("{0}")]
    Conflict(String),
}

impl Classified for Error {
    fn class(&self) -> Class {
        match self {
            Error::Http(e) => e.class(),
            Error::Refused { class, .. } | Error::Status { class, .. } => *class,
            Error::NoVoter { .. } | Error::NotReady(_) => Class::Transient { retry_after: None },
            Error::Conflict(_) => Class::Permanent,
        }
    }
}

impl Classify for Error {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Http(e) => e.exit_status(),
            _ if self.class() != Class::Permanent => ExitStatus::Unavailable,
            _ => ExitStatus::BadAnswer,
        }
    }
}
