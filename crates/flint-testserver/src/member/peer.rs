//! Member mode's HTTPS client to its peers: hyper-util's pooled client over hyper-rustls (ring),
//! verifying peers against the configured CA only, presenting the node's client certificate.
//! Every request has a connect timeout and a total timeout, and answers are read up to a bound.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// An answer from a peer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Client {
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration) -> Client {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(tcp);
        // Heartbeats keep a connection per peer busy; the server closes idle ones after 30 s.
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(4)
            .build(connector);
        Client { inner }
    }

    /// One request. The error names the URL and the cause, never a header (a token may be in
    /// one).
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        total: Duration,
        max_answer: usize,
    ) -> Result<Answer, String> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("{url}: {e}"))?;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| format!("{url}: {}", chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, max_answer)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        format!("{url}: answer larger than {max_answer} bytes")
                    } else {
                        format!("{url}: {e}")
                    }
                })?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                content_type: parts
                    .headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body,
            })
        };
        tokio::time::timeout(total, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("{url}: no answer within {} ms", total.as_millis())))
    }
}

/// An error and its causes on one line (hyper-util's "client error (Connect)" alone says little).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}
