//! One adapter per service protocol, and the errors they share.

pub mod admin;
pub mod etcd;
pub mod iam;

use std::future::Future;

use url::Url;

use crate::config::Endpoints;
use crate::exit::{ExitStatus, HasExitStatus};
use crate::http::{self, Answer};
use crate::retry::{Class, HasRetryClass};

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
    /// The service refused flint's credentials (401/403): a token or client certificate problem.
    #[error("{url} refused this node's credentials (HTTP {status}): check {credentials}")]
    Denied {
        url: String,
        status: hyper::StatusCode,
        /// The configuration fields that hold the credentials this service checks.
        credentials: &'static str,
    },
    /// Redirects and leader hints that went in a circle or too far.
    #[error("redirects went in a circle or too far: {chain}")]
    Redirects { chain: String },
    /// Every endpoint answered, none can change membership (all are learners).
    #[error("no voting member among {tried}: learners cannot change membership")]
    NoVoter { tried: String },
    /// The service answered, but is not where flint waits for it to be yet.
    #[error("{0}")]
    NotReady(String),
    /// The cluster's membership contradicts this node's configuration; an operator must decide.
    #[error("{0}")]
    Conflict(String),
    /// An answer flint will not write into a file or act on: a member name or URL that could
    /// smuggle a second setting into etcd's environment file, say.
    #[error("{0}")]
    Unsafe(String),
}

impl HasRetryClass for Error {
    fn class(&self) -> Class {
        match self {
            Error::Http(e) => e.class(),
            Error::Refused { class, .. } | Error::Status { class, .. } => *class,
            // A redirect circle is what a leader election looks like from outside: try again.
            Error::NoVoter { .. } | Error::NotReady(_) | Error::Redirects { .. } => {
                Class::Transient { retry_after: None }
            }
            Error::Denied { .. } => Class::Permanent,
            Error::Conflict(_) | Error::Unsafe(_) => Class::Permanent,
        }
    }
}

impl HasExitStatus for Error {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Http(e) => e.exit_status(),
            Error::Denied { .. } => ExitStatus::Permission,
            _ if self.class() != Class::Permanent => ExitStatus::Unavailable,
            _ => ExitStatus::BadAnswer,
        }
    }
}

/// An answer that is neither success nor a protocol answer the engine handles: retried when
/// HTTP says so (5xx, 408, 429), a permission problem on 401/403 (naming the `credentials`
/// fields to check), else permanent.
fn status_error(answer: &Answer, credentials: &'static str) -> Error {
    if matches!(
        answer.status,
        hyper::StatusCode::UNAUTHORIZED | hyper::StatusCode::FORBIDDEN
    ) {
        return Error::Denied {
            url: answer.url.clone(),
            status: answer.status,
            credentials,
        };
    }
    Error::Status {
        url: answer.url.clone(),
        status: answer.status,
        snippet: crate::secrets::scrub(&String::from_utf8_lossy(&answer.body))
            .chars()
            .take(200)
            .collect(),
        class: answer.status_class(),
    }
}

/// The answer of the first of `endpoints` (the leader URL, then the peers, in order) that `ask`
/// gets one from; a permanent error stops the search, since every member would answer the
/// same, and otherwise the last endpoint's error is the outcome.
async fn first_answer<'a, T, Fut>(
    endpoints: &'a Endpoints,
    mut ask: impl FnMut(&'a Url) -> Fut,
) -> Result<T, Error>
where
    Fut: Future<Output = Result<T, Error>>,
{
    let mut last = None;
    for endpoint in endpoints.iter() {
        match ask(endpoint).await {
            Ok(answer) => return Ok(answer),
            Err(e) if e.class() == Class::Permanent => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("config validation guarantees at least one endpoint"))
}
