//! One HTTP/1.1 client for every engine: rustls from `tls`, connect and request timeouts, a
//! bound on answer size, and errors that say whether trying again can help.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::Url;

use crate::config::Timeouts;
use crate::exit::{ExitStatus, HasExitStatus};
use crate::retry::Class;
use crate::secrets::Secret;

/// No admin answer flint reads comes near this; a bigger one is a misbehaving server.
const MAX_ANSWER_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TLS handshake failed verification, one way or the other: trying again will not help.
    #[error("TLS with {url} failed: {cause}{hint}")]
    Tls {
        url: String,
        cause: rustls::Error,
        hint: &'static str,
    },
    /// No connection (refused, unreachable, name not resolved).
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    /// The whole request took longer than `timeouts.request`.
    #[error("no answer from {url} within {after:?}")]
    Timeout { url: String, after: Duration },
    /// The connection broke while the request or the answer was on the way.
    #[error("connection to {url} broke: {detail}")]
    Transport { url: String, detail: String },
    /// The answer is larger than any answer flint expects.
    #[error("answer from {url} is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge { url: String },
    /// The token file holds characters an HTTP header cannot carry.
    #[error("the join token holds characters an Authorization header cannot carry")]
    BadToken,
    /// The answer is not the JSON flint expects.
    #[error("unexpected answer from {url} (HTTP {status}): {detail}: {snippet:?}")]
    Decode {
        url: String,
        status: StatusCode,
        detail: String,
        snippet: String,
    },
}

impl Error {
    /// Whether a retry can help: verification failures and malformed answers are permanent.
    pub fn class(&self) -> Class {
        match self {
            Error::Tls { .. } | Error::TooLarge { .. } | Error::Decode { .. } | Error::BadToken => {
                Class::Permanent
            }
            Error::Connect { .. } | Error::Timeout { .. } | Error::Transport { .. } => {
                Class::Transient { retry_after: None }
            }
        }
    }
}

impl HasExitStatus for Error {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Tls { .. } => ExitStatus::Permission,
            Error::BadToken => ExitStatus::Config,
            Error::TooLarge { .. } | Error::Decode { .. } => ExitStatus::BadAnswer,
            Error::Connect { .. } | Error::Timeout { .. } | Error::Transport { .. } => {
                ExitStatus::Unavailable
            }
        }
    }
}

/// A bearer token bound to origins: it goes only to the schemes, hosts and ports the
/// configuration names, so no redirect or leader hint can carry it anywhere else, as curl drops
/// `Authorization` on a redirect to another host. The client certificate needs no such bound: it
/// proves this node's identity to whoever verifies it, and gives them nothing to replay.
#[derive(Clone)]
pub struct Bearer {
    token: Secret,
    origins: Vec<url::Origin>,
}

impl Bearer {
    pub fn new<'u>(token: Secret, urls: impl IntoIterator<Item = &'u Url>) -> Bearer {
        Bearer {
            token,
            origins: urls.into_iter().map(Url::origin).collect(),
        }
    }

    /// The token for a request to `url`; `None` outside the configured origins.
    pub fn for_url(&self, url: &Url) -> Option<&Secret> {
        self.origins.contains(&url.origin()).then_some(&self.token)
    }

    /// The token, for a destination its holder has vouched for by other means (a member the
    /// cluster lists).
    pub fn secret(&self) -> &Secret {
        &self.token
    }
}

/// An answer read to its end.
#[derive(Debug)]
pub struct Answer {
    pub url: String,
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub location: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Answer {
    /// The body as `T`, whatever its `Content-Type` (etcd labels `/health` as text/plain).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| self.decode_error(e.to_string()))
    }

    /// The body as `T` from an API that labels its JSON: anything labelled otherwise is
    /// refused, so an HTML error page from a proxy is never mistaken for the service's answer.
    pub fn labelled_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        match &self.content_type {
            Some(kind) if kind.to_ascii_lowercase().contains("json") => self.json(),
            other => Err(self.decode_error(format!(
                "expected Content-Type application/json, got {}",
                other.as_deref().unwrap_or("none")
            ))),
        }
    }

    pub fn decode_error(&self, detail: String) -> Error {
        let text = String::from_utf8_lossy(&self.body);
        Error::Decode {
            url: self.url.to_string(),
            status: self.status,
            detail,
            snippet: crate::secrets::scrub(&text).chars().take(200).collect(),
        }
    }

    /// HTTP's own say on retrying: 408, 429 and 5xx are worth another try, other 4xx are not.
    pub fn status_class(&self) -> Class {
        let s = self.status;
        if s == StatusCode::REQUEST_TIMEOUT
            || s == StatusCode::TOO_MANY_REQUESTS
            || s.is_server_error()
        {
            Class::Transient {
                retry_after: self.retry_after,
            }
        } else {
            Class::Permanent
        }
    }
}

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    request_timeout: Duration,
}

impl Client {
    pub fn new(tls: rustls::ClientConfig, timeouts: &Timeouts) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeouts.connect));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Client {
            inner,
            request_timeout: timeouts.request,
        }
    }

    pub async fn get(&self, url: &Url) -> Result<Answer, Error> {
        self.send(Method::GET, url, None, None).await
    }

    pub async fn post_json(&self, url: &Url, body: &serde_json::Value) -> Result<Answer, Error> {
        self.send(Method::POST, url, Some(body), None).await
    }

    /// A request with a JSON body (or none) and, when given, a bearer token.
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&serde_json::Value>,
        token: Option<&Secret>,
    ) -> Result<Answer, Error> {
        let mut request = Request::builder().method(method).uri(url.as_str());
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| Error::BadToken)?;
            // Keeps the value out of hyper's own debug output.
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let body = body.map(|b| {
            Bytes::from(serde_json::to_vec(b).expect("a serde_json::Value always serializes"))
        });
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Error::Transport {
                url: url.to_string(),
                detail: e.to_string(),
            })?;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| classify_client_error(url, &e))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        Error::TooLarge {
                            url: url.to_string(),
                        }
                    } else {
                        Error::Transport {
                            url: url.to_string(),
                            detail: e.to_string(),
                        }
                    }
                })?
                .to_bytes();
            let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
            Ok(Answer {
                url: url.to_string(),
                status: parts.status,
                retry_after: header(RETRY_AFTER)
                    .and_then(|v| v.trim().parse().ok())
                    .map(Duration::from_secs),
                location: header(LOCATION).map(str::to_owned),
                content_type: header(CONTENT_TYPE).map(str::to_owned),
                body,
            })
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    url: url.to_string(),
                    after: self.request_timeout,
                })
            })
    }
}

/// A TLS failure reaches hyper-util's error as an `io::Error` wrapping an `io::Error` wrapping
/// the rustls error (`io::Error::source` skips the wrapped error, so both paths are followed);
/// find it so verification failures are never retried.
fn classify_client_error(url: &Url, err: &hyper_util::client::legacy::Error) -> Error {
    if let Some(tls) = find_rustls_error(err) {
        return Error::Tls {
            url: url.to_string(),
            cause: tls.clone(),
            hint: tls_hint(tls),
        };
    }
    let detail = flint_json::causes(err);
    if err.is_connect() {
        Error::Connect {
            url: url.to_string(),
            detail,
        }
    } else {
        Error::Transport {
            url: url.to_string(),
            detail,
        }
    }
}

fn find_rustls_error<'e>(err: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && let Some(tls) = find_rustls_error(inner)
    {
        return Some(tls);
    }
    err.source().and_then(find_rustls_error)
}

fn tls_hint(err: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription, CertificateError};
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (the server's certificate is not signed by the CA in `tls.ca`)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => " (the server's certificate has expired)",
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => " (the server's certificate does not name the host in the URL)",
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired,
        ) => " (the server refused this node's client certificate: check `tls.cert`)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_only_to_configured_origins() {
        let configured = [
            Url::parse("https://node01:2379/prefix").unwrap(),
            Url::parse("https://node02:443").unwrap(),
        ];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "t").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let token = crate::secrets::read_token(&file).unwrap();
        let bearer = Bearer::new(token, &configured);
        let url = |u: &str| Url::parse(u).unwrap();
        assert!(
            bearer
                .for_url(&url("https://node01:2379/admin/member/add"))
                .is_some()
        );
        assert!(bearer.for_url(&url("https://NODE01:2379/")).is_some());
        assert!(
            bearer
                .for_url(&url("https://node02/admin/member/list"))
                .is_some()
        );
        for elsewhere in [
            "https://node01:2479/admin/member/add",
            "http://node01:2379/admin/member/add",
            "https://node03:2379/admin/member/add",
            "https://node01.evil:2379/",
        ] {
            assert!(bearer.for_url(&url(elsewhere)).is_none(), "{elsewhere}");
        }
    }
}
