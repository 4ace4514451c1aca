//! etcd's v3 JSON gateway, the way boot servers share their inventory: a read, a write that
//! succeeds only on the revision it was given, and a watch, over TLS with the boot server's
//! client certificate.
//!
//! The gateway rather than gRPC, as flint's own etcd client: hyper and rustls are already in
//! the binary, and a gRPC stack would add tonic, prost and HTTP/2 for three calls. Shapes as
//! measured against etcd 3.4 (docs/etcd-inventory.md): 64-bit numbers are JSON strings, zero and
//! false fields are left out (a PUT event has no `type`), errors are `{"error","code",
//! "message"}`, and a watch is one POST whose answer streams one `{"result":…}` object per line
//! for as long as the connection lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ExitError;
use crate::identity;

/// A request's whole exchange; a member that takes longer is treated as down and the next one
/// asked.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// etcd refuses requests over 1.5 MiB unless `--max-request-bytes` says otherwise; base64 makes
/// that 2 MiB. A larger answer is not etcd's.
pub const MAX_ANSWER: usize = 8 << 20;
/// A watch line carries at most one revision's events on one key: the same bound.
const MAX_WATCH_LINE: usize = MAX_ANSWER;
/// Asks etcd to end a watch on a member that has lost its leader (gRPC metadata `hasleader`,
/// which the gateway passes on from `Grpc-Metadata-*` headers): a member cut off from the others
/// would otherwise keep the watch open and never send another event.
const REQUIRE_LEADER: (&str, &str) = ("grpc-metadata-hasleader", "true");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach etcd at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("etcd at {url} refused: {message} (gRPC code {code})")]
    Refused {
        url: String,
        code: i64,
        message: String,
    },
    #[error("unexpected answer from etcd at {url}: {detail}")]
    BadAnswer { url: String, detail: String },
}

impl Error {
    /// Whether another member may do better: an unreachable one, or a refusal that says this
    /// member cannot serve now (Unavailable, DeadlineExceeded, a lost leader).
    fn try_another(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Refused { code, .. } => matches!(code, 4 | 14),
            Error::BadAnswer { .. } => false,
        }
    }
}

impl From<Error> for ExitError {
    fn from(e: Error) -> Self {
        match e {
            Error::Unreachable { .. } => ExitError::Unavailable(e.to_string()),
            Error::Refused { code: 4 | 14, .. } => ExitError::Unavailable(e.to_string()),
            Error::Refused { code: 7 | 16, .. } => ExitError::Permission(e.to_string()),
            Error::Refused { .. } | Error::BadAnswer { .. } => ExitError::Protocol(e.to_string()),
        }
    }
}

/// One key's value and the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub bytes: Vec<u8>,
    pub mod_revision: i64,
}

/// A read: the store's revision when it was answered, and the key's value if it has one.
#[derive(Debug, Clone)]
pub struct Read {
    pub revision: i64,
    pub value: Option<Entry>,
    pub endpoint: usize,
}

/// What a conditional write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key was last written at this revision.
    Revision(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The value is stored, at this revision.
    Stored(i64),
    /// The key is not as expected: what it holds now (`None`: it does not exist). A write whose
    /// answer was lost and that was tried again finds its own value here.
    Conflict(Option<Entry>),
}

/// The pause between tries of etcd's members while none answers: quick at first (a member
/// restarting comes back within a second), then every 5 s at most. The inventory's watch and the
/// shared journeys both follow it.
pub fn reconnect_pace() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// A page of a prefix's keys.
#[derive(Debug)]
pub struct Page {
    pub revision: i64,
    pub entries: Vec<Entry>,
    pub more: bool,
    pub endpoint: usize,
}

/// etcd's `range_end` for every key that starts with `prefix`: the prefix with its last byte
/// raised by one (trailing 0xff bytes dropped first).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The members to ask, and a client for them.
pub struct Etcd {
    endpoints: Vec<url::Url>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The member that answered last, asked first next time.
    preferred: AtomicUsize,
}

/// The flags that name etcd's members and the files of the client's identity.
pub struct Options<'a> {
    pub endpoints: &'a [String],
    pub ca: Option<&'a std::path::Path>,
    pub cert: Option<&'a std::path::Path>,
    pub key: Option<&'a std::path::Path>,
}

impl Etcd {
    /// Checks the endpoints and reads the TLS files; nothing is sent yet. An https endpoint
    /// needs all three files (etcd clusters that flint builds require client certificates).
    pub fn new(options: &Options<'_>) -> Result<Arc<Etcd>, ExitError> {
        let mut endpoints = Vec::new();
        for text in options.endpoints {
            let url = url::Url::parse(text).map_err(|e| {
                ExitError::Usage(format!(
                    "--etcd {}: expected a URL such as https://10.0.0.1:2379: {e}",
                    flint_json::one_line(text)
                ))
            })?;
            let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
            if !matches!(url.scheme(), "https" | "http") || !bare || url.host().is_none() {
                return Err(ExitError::Usage(format!(
                    "--etcd {}: expected http(s)://HOST:PORT and nothing after it",
                    flint_json::one_line(text)
                )));
            }
            endpoints.push(url);
        }
        if endpoints.is_empty() {
            return Err(ExitError::Usage("--etcd: no endpoint given".into()));
        }
        let https = endpoints.iter().any(|u| u.scheme() == "https");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ExitError::Config(format!("TLS: {e}")))?;
        let tls = match (options.ca, options.cert, options.key) {
            (Some(ca), Some(cert), Some(key)) => {
                let files = identity::Files {
                    ca: ("--etcd-ca", ca),
                    cert: ("--etcd-cert", cert),
                    key: ("--etcd-key", key),
                };
                let loaded = files.load()?;
                builder
                    .with_root_certificates(loaded.roots)
                    .with_client_auth_cert(loaded.chain, loaded.key)
                    .map_err(|e| files.mismatch(e))?
            }
            (None, None, None) if !https => builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            _ => {
                return Err(ExitError::Usage(
                    "--etcd with https needs --etcd-ca, --etcd-cert and --etcd-key".into(),
                ));
            }
        };
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // A member whose host vanished leaves a watch open with no FIN ever coming.
        tcp.set_keepalive(Some(Duration::from_secs(10)));
        tcp.set_keepalive_interval(Some(Duration::from_secs(2)));
        tcp.set_keepalive_retries(Some(3));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Arc::new(Etcd {
            endpoints,
            client,
            preferred: AtomicUsize::new(0),
        }))
    }

    pub fn endpoint(&self, i: usize) -> &url::Url {
        &self.endpoints[i % self.endpoints.len()]
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// The key's value, from the first member that answers, the one that answered last first.
    pub async fn get(&self, key: &str) -> Result<Read, Error> {
        self.get_from(self.preferred.load(Ordering::Relaxed), key)
            .await
    }

    /// The key's value, from the first member that answers, member `first` first.
    pub async fn get_from(&self, first: usize, key: &str) -> Result<Read, Error> {
        let body = json!({"key": BASE64.encode(key)});
        let (endpoint, answer) = self.call_any(first, "/v3/kv/range", &body).await?;
        let range: RangeAnswer = decode(self.endpoint(endpoint), &answer)?;
        Ok(Read {
            revision: range.header.revision,
            value: range.first_value(self.endpoint(endpoint))?,
            endpoint,
        })
    }

    /// Writes `value` under `key` if the key is as `expect` says, in one transaction.
    pub async fn put_if(&self, key: &str, value: &[u8], expect: Expect) -> Result<Written, Error> {
        let key64 = BASE64.encode(key);
        let compare = match expect {
            Expect::Absent => json!({"target": "CREATE", "key": key64, "create_revision": "0"}),
            Expect::Revision(r) => {
                json!({"target": "MOD", "key": key64, "mod_revision": r.to_string()})
            }
        };
        let body = json!({
            "compare": [compare],
            "success": [{"request_put": {"key": key64, "value": BASE64.encode(value)}}],
            "failure": [{"request_range": {"key": key64}}],
        });
        let first = self.preferred.load(Ordering::Relaxed);
        let (endpoint, answer) = self.call_any(first, "/v3/kv/txn", &body).await?;
        let url = self.endpoint(endpoint);
        let txn: TxnAnswer = decode(url, &answer)?;
        if txn.succeeded {
            return Ok(Written::Stored(txn.header.revision));
        }
        let current = txn
            .responses
            .into_iter()
            .find_map(|r| r.response_range)
            .map(|range| range.first_value(url))
            .transpose()?
            .flatten();
        Ok(Written::Conflict(current))
    }

    /// Watches `key` on member `endpoint` from `start_revision` on.
    pub async fn watch(
        &self,
        endpoint: usize,
        key: &str,
        start_revision: i64,
    ) -> Result<Watch, Error> {
        let body = json!({"create_request": {
            "key": BASE64.encode(key),
            "start_revision": start_revision.to_string(),
        }});
        self.open_watch(endpoint, &body).await
    }

    /// Watches every key that starts with `prefix`, on member `endpoint`, from `start_revision`.
    pub async fn watch_prefix(
        &self,
        endpoint: usize,
        prefix: &str,
        start_revision: i64,
    ) -> Result<Watch, Error> {
        let body = json!({"create_request": {
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        self.open_watch(endpoint, &body).await
    }

    async fn open_watch(&self, endpoint: usize, body: &Value) -> Result<Watch, Error> {
        let url = self.endpoint(endpoint).clone();
        let response = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.client.request(request(&url, "/v3/watch", body)),
        )
        .await
        .map_err(|_| unreachable(&url, format!("no answer within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| unreachable(&url, flint_json::causes(&e)))?;
        let (parts, body) = response.into_parts();
        if parts.status != StatusCode::OK {
            let body = read_limited(&url, body).await?;
            return Err(refusal(&url, parts.status, &body));
        }
        Ok(Watch {
            url,
            body,
            buffer: BytesMut::new(),
        })
    }

    /// Up to `limit` keys under `prefix` written after revision `after`, oldest first, from
    /// the first member that answers, member `first` first. Keys written in one transaction
    /// share a revision: a page that ends inside one is read on from that revision again, and
    /// the caller skips what it has (`more` says whether there is more).
    pub async fn range_prefix(
        &self,
        first: usize,
        prefix: &str,
        after: i64,
        limit: usize,
    ) -> Result<Page, Error> {
        let body = json!({
            "key": BASE64.encode(prefix),
            "range_end": BASE64.encode(prefix_end(prefix)),
            "limit": limit.to_string(),
            "sort_order": "ASCEND",
            "sort_target": "MOD",
            "min_mod_revision": (after + 1).to_string(),
        });
        let (endpoint, answer) = self.call_any(first, "/v3/kv/range", &body).await?;
        let url = self.endpoint(endpoint);
        let range: RangeAnswer = decode(url, &answer)?;
        let entries = range
            .kvs
            .into_iter()
            .map(|kv| kv.into_value(url))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            revision: range.header.revision,
            entries,
            more: range.more,
            endpoint,
        })
    }

    /// A lease of `ttl`: keys written with it go when it ends, unless it is renewed.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, Error> {
        #[derive(Deserialize)]
        struct Granted {
            #[serde(rename = "ID", with = "number_text")]
            id: i64,
        }
        let body = json!({"TTL": ttl.as_secs().to_string()});
        let first = self.preferred.load(Ordering::Relaxed);
        let (endpoint, answer) = self.call_any(first, "/v3/lease/grant", &body).await?;
        let granted: Granted = decode(self.endpoint(endpoint), &answer)?;
        Ok(granted.id)
    }

    /// Writes every `(key, value)` in one transaction, with `lease`; the revision they got.
    pub async fn put_all(&self, puts: &[(String, Vec<u8>)], lease: i64) -> Result<i64, Error> {
        let success: Vec<Value> = puts
            .iter()
            .map(|(key, value)| {
                json!({"request_put": {
                    "key": BASE64.encode(key),
                    "value": BASE64.encode(value),
                    "lease": lease.to_string(),
                }})
            })
            .collect();
        let body = json!({"success": success});
        let first = self.preferred.load(Ordering::Relaxed);
        let (endpoint, answer) = self.call_any(first, "/v3/kv/txn", &body).await?;
        let txn: TxnAnswer = decode(self.endpoint(endpoint), &answer)?;
        Ok(txn.header.revision)
    }

    /// Whether member `endpoint` answers and follows a leader: a watch on a member that stopped
    /// answering (a paused process, a host gone) would otherwise wait forever.
    pub async fn alive(&self, endpoint: usize) -> Result<(), Error> {
        let url = self.endpoint(endpoint);
        let answer = self.call(url, "/v3/maintenance/status", &json!({})).await?;
        let status: StatusAnswer = decode(url, &answer)?;
        if status.leader == 0 {
            return Err(Error::Refused {
                url: url.to_string(),
                code: 14,
                message: "this member has no leader".into(),
            });
        }
        Ok(())
    }

    async fn call_any(
        &self,
        first: usize,
        path: &str,
        body: &Value,
    ) -> Result<(usize, Bytes), Error> {
        let mut last = None;
        for step in 0..self.endpoints.len() {
            let i = (first + step) % self.endpoints.len();
            match self.call(&self.endpoints[i], path, body).await {
                Ok(answer) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok((i, answer));
                }
                Err(e) if e.try_another() => {
                    tracing::debug!(error = %e, "etcd member did not serve, trying the next");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("there is at least one endpoint"))
    }

    async fn call(&self, url: &url::Url, path: &str, body: &Value) -> Result<Bytes, Error> {
        let exchange = async {
            let response = self
                .client
                .request(request(url, path, body))
                .await
                .map_err(|e| unreachable(url, flint_json::causes(&e)))?;
            let (parts, body) = response.into_parts();
            let body = read_limited(url, body).await?;
            if parts.status != StatusCode::OK {
                return Err(refusal(url, parts.status, &body));
            }
            Ok(body)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(unreachable(
                    url,
                    format!("no answer within {REQUEST_TIMEOUT:?}"),
                ))
            })
    }
}

fn request(url: &url::Url, path: &str, body: &Value) -> Request<Full<Bytes>> {
    let mut target = url.clone();
    target.set_path(path);
    Request::builder()
        .method(Method::POST)
        .uri(target.as_str())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(REQUIRE_LEADER.0, HeaderValue::from_static(REQUIRE_LEADER.1))
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a URL that parsed and fixed headers make a request")
}

async fn read_limited(url: &url::Url, body: Incoming) -> Result<Bytes, Error> {
    Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                bad(url, format!("an answer larger than {MAX_ANSWER} bytes"))
            } else {
                unreachable(url, e.to_string())
            }
        })
}

fn unreachable(url: &url::Url, detail: String) -> Error {
    Error::Unreachable {
        url: url.to_string(),
        detail: flint_json::one_line(&detail),
    }
}

fn bad(url: &url::Url, detail: String) -> Error {
    Error::BadAnswer {
        url: url.to_string(),
        detail: flint_json::one_line(&detail),
    }
}

/// What is printed of a server's text: one line, short.
fn snippet(text: &str) -> String {
    flint_json::one_line(&text.chars().take(200).collect::<String>())
}

/// etcd's error object, `{"error","code","message"}` (the HTTP status for one gRPC code varies
/// between builds, so the code decides).
fn refusal(url: &url::Url, status: StatusCode, body: &[u8]) -> Error {
    #[derive(Deserialize)]
    struct Refusal {
        #[serde(default)]
        code: i64,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Refusal>(body) {
        Ok(r) if r.code != 0 => Error::Refused {
            url: url.to_string(),
            code: r.code,
            message: snippet(&r.message),
        },
        _ => bad(
            url,
            format!(
                "HTTP {status}: {:?}",
                snippet(&String::from_utf8_lossy(body))
            ),
        ),
    }
}

fn decode<T: serde::de::DeserializeOwned>(url: &url::Url, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| {
        bad(
            url,
            format!("{e}: {:?}", snippet(&String::from_utf8_lossy(body))),
        )
    })
}

mod number_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer};

    /// etcd writes 64-bit numbers as strings (revisions signed, member IDs unsigned), and
    /// leaves out zeros.
    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + FromStr,
        T::Err: Display,
    {
        #[derive(Deserialize)]
        #[serde(untagged, bound = "T: Deserialize<'de>")]
        enum Text<T> {
            Number(T),
            String(String),
        }
        match Text::<T>::deserialize(d)? {
            Text::Number(n) => Ok(n),
            Text::String(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, with = "number_text")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct RawKeyValue {
    #[serde(default)]
    key: Option<String>,
    #[serde(default, with = "number_text")]
    mod_revision: i64,
    #[serde(default)]
    value: Option<String>,
}

impl RawKeyValue {
    fn into_value(self, url: &url::Url) -> Result<Entry, Error> {
        let decode = |text: Option<String>, what: &str| {
            BASE64
                .decode(text.unwrap_or_default())
                .map_err(|e| bad(url, format!("a {what} that is not base64: {e}")))
        };
        Ok(Entry {
            key: decode(self.key, "key")?,
            bytes: decode(self.value, "value")?,
            mod_revision: self.mod_revision,
        })
    }
}

#[derive(Debug, Deserialize)]
struct RangeAnswer {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKeyValue>,
    #[serde(default)]
    more: bool,
}

impl RangeAnswer {
    fn first_value(self, url: &url::Url) -> Result<Option<Entry>, Error> {
        self.kvs
            .into_iter()
            .next()
            .map(|kv| kv.into_value(url))
            .transpose()
    }
}

#[derive(Debug, Deserialize)]
struct TxnAnswer {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<TxnResponse>,
}

#[derive(Debug, Deserialize)]
struct TxnResponse {
    #[serde(default)]
    response_range: Option<RangeAnswer>,
}

#[derive(Debug, Deserialize)]
struct StatusAnswer {
    #[serde(default, with = "number_text")]
    leader: u64,
}

/// A change to the watched key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(Entry),
    Deleted { revision: i64 },
}

/// One line of a watch.
#[derive(Debug)]
pub enum WatchMessage {
    /// etcd accepted the watch; the store is at this revision.
    Created {
        revision: i64,
    },
    Events(Vec<Event>),
    /// The revision asked for was compacted away (read the key again and watch from there), or
    /// etcd ended the watch for another reason (lost leader).
    Canceled {
        compact_revision: Option<i64>,
        reason: String,
    },
    /// Nothing changed; the store is at this revision.
    Progress {
        revision: i64,
    },
}

/// How often a member a watch runs on is asked whether it still answers and follows a leader:
/// a paused or cut-off member keeps the watch's connection open and sends nothing.
const LIVENESS_EVERY: Duration = Duration::from_secs(5);

/// Why a watch ended.
#[derive(Debug)]
pub enum Ended {
    /// The revision it started from is compacted away: read again, then watch anew. No
    /// outage.
    Compacted(i64),
    /// The stream broke, the member stopped answering or etcd ended the watch.
    Broken(Error),
}

/// A watch and a probe of its member, so that a member that goes quiet ends it as one that
/// closes its connection does.
pub struct LiveWatch<'e> {
    etcd: &'e Etcd,
    endpoint: usize,
    watch: Watch,
    liveness: tokio::time::Interval,
}

impl Etcd {
    pub async fn keep_watching(&self, endpoint: usize, watch: Watch) -> LiveWatch<'_> {
        let mut liveness = tokio::time::interval(LIVENESS_EVERY);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        liveness.tick().await;
        LiveWatch {
            etcd: self,
            endpoint,
            watch,
            liveness,
        }
    }
}

impl LiveWatch<'_> {
    /// The next changes; the end of the watch when it ends.
    pub async fn events(&mut self) -> Result<Vec<Event>, Ended> {
        loop {
            let message = tokio::select! {
                message = self.watch.next() => message,
                _ = self.liveness.tick() => match self.etcd.alive(self.endpoint).await {
                    Ok(()) => continue,
                    Err(e) => return Err(Ended::Broken(e)),
                },
            };
            match message.map_err(Ended::Broken)? {
                WatchMessage::Created { .. } | WatchMessage::Progress { .. } => {}
                WatchMessage::Canceled {
                    compact_revision: Some(revision),
                    ..
                } => return Err(Ended::Compacted(revision)),
                WatchMessage::Canceled { reason, .. } => {
                    return Err(Ended::Broken(Error::Refused {
                        url: self.watch.url.to_string(),
                        code: 14,
                        message: format!("etcd ended the watch: {reason}"),
                    }));
                }
                WatchMessage::Events(events) => return Ok(events),
            }
        }
    }
}

/// A watch answer, read one line at a time.
pub struct Watch {
    url: url::Url,
    body: Incoming,
    buffer: BytesMut,
}

impl Watch {
    /// The next message; an error when the stream ended or broke, which the caller answers by
    /// reading the key again and watching anew.
    pub async fn next(&mut self) -> Result<WatchMessage, Error> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return parse_watch_line(&self.url, line);
            }
            if self.buffer.len() > MAX_WATCH_LINE {
                return Err(bad(
                    &self.url,
                    format!("a watch line longer than {MAX_WATCH_LINE} bytes"),
                ));
            }
            match self.body.frame().await {
                None => {
                    return Err(unreachable(&self.url, "the watch stream ended".into()));
                }
                Some(Err(e)) => return Err(unreachable(&self.url, flint_json::causes(&e))),
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buffer.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }
}

fn parse_watch_line(url: &url::Url, line: &[u8]) -> Result<WatchMessage, Error> {
    #[derive(Deserialize)]
    struct Line {
        result: Option<WatchResult>,
        error: Option<StreamError>,
    }
    #[derive(Deserialize)]
    struct StreamError {
        #[serde(default)]
        grpc_code: i64,
        #[serde(default)]
        message: String,
    }
    #[derive(Deserialize)]
    struct WatchResult {
        #[serde(default)]
        header: Header,
        #[serde(default)]
        created: bool,
        #[serde(default)]
        canceled: bool,
        #[serde(default, with = "number_text")]
        compact_revision: i64,
        #[serde(default)]
        cancel_reason: String,
        #[serde(default)]
        events: Vec<RawEvent>,
    }
    #[derive(Deserialize)]
    struct RawEvent {
        #[serde(default, rename = "type")]
        kind: Option<String>,
        kv: RawKeyValue,
    }
    let parsed: Line = decode(url, line)?;
    if let Some(e) = parsed.error {
        return Err(Error::Refused {
            url: url.to_string(),
            code: e.grpc_code,
            message: snippet(&e.message),
        });
    }
    let Some(result) = parsed.result else {
        return Err(bad(
            url,
            "a watch line with neither result nor error".into(),
        ));
    };
    if result.canceled {
        return Ok(WatchMessage::Canceled {
            compact_revision: (result.compact_revision > 0).then_some(result.compact_revision),
            reason: snippet(&result.cancel_reason),
        });
    }
    if result.created {
        return Ok(WatchMessage::Created {
            revision: result.header.revision,
        });
    }
    if result.events.is_empty() {
        return Ok(WatchMessage::Progress {
            revision: result.header.revision,
        });
    }
    let mut events = Vec::with_capacity(result.events.len());
    for event in result.events {
        events.push(match event.kind.as_deref() {
            None | Some("PUT") => Event::Put(event.kv.into_value(url)?),
            Some("DELETE") => Event::Deleted {
                revision: event.kv.mod_revision,
            },
            Some(other) => {
                return Err(bad(
                    url,
                    format!("a watch event of type {:?}", snippet(other)),
                ));
            }
        });
    }
    Ok(WatchMessage::Events(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> url::Url {
        url::Url::parse("https://10.0.0.1:2379").unwrap()
    }

    /// Lines as etcd 3.4.23's gateway sent them (docs/etcd-inventory.md).
    #[test]
    fn watch_lines_as_etcd_sends_them() {
        let created = br#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"2","raft_term":"2"},"created":true}}"#;
        assert!(matches!(
            parse_watch_line(&url(), created).unwrap(),
            WatchMessage::Created { revision: 2 }
        ));
        let put = br#"{"result":{"header":{"revision":"3"},"events":[{"kv":{"key":"L2ZsaW50L2ludmVudG9yeQ==","create_revision":"2","mod_revision":"3","version":"2","value":"eyJhIjoxfQ=="}}]}}"#;
        match parse_watch_line(&url(), put).unwrap() {
            WatchMessage::Events(events) => assert_eq!(
                events,
                [Event::Put(Entry {
                    key: b"/flint/inventory".to_vec(),
                    bytes: br#"{"a":1}"#.to_vec(),
                    mod_revision: 3
                })]
            ),
            other => panic!("{other:?}"),
        }
        let deleted = br#"{"result":{"header":{"revision":"4"},"events":[{"type":"DELETE","kv":{"key":"L2ZsaW50L2ludmVudG9yeQ==","mod_revision":"4"}}]}}"#;
        match parse_watch_line(&url(), deleted).unwrap() {
            WatchMessage::Events(events) => {
                assert_eq!(events, [Event::Deleted { revision: 4 }])
            }
            other => panic!("{other:?}"),
        }
        let compacted = br#"{"result":{"header":{"cluster_id":"1","raft_term":"2"},"canceled":true,"compact_revision":"5"}}"#;
        assert!(matches!(
            parse_watch_line(&url(), compacted).unwrap(),
            WatchMessage::Canceled {
                compact_revision: Some(5),
                ..
            }
        ));
        let error = br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
        assert!(matches!(
            parse_watch_line(&url(), error).unwrap_err(),
            Error::Refused { code: 14, .. }
        ));
    }

    /// A status answer of etcd 3.4.23: the leader's ID needs all 64 bits.
    #[test]
    fn member_ids_need_64_bits() {
        let status: StatusAnswer = serde_json::from_str(
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"4","raft_term":"3"},"version":"3.4.23","dbSize":"20480","leader":"10276657743932975437","raftIndex":"12","raftTerm":"3","raftAppliedIndex":"12","dbSizeInUse":"20480"}"#,
        )
        .unwrap();
        assert_eq!(status.leader, 10276657743932975437);
    }

    #[test]
    fn a_hostile_watch_line_is_refused_and_escaped() {
        let line = br#"{"result":{"events":[{"type":"EVIL\u001b[2J","kv":{}}]}}"#;
        let e = parse_watch_line(&url(), line).unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e}");
        assert!(e.contains("\\u{1b}"), "{e}");
        assert!(parse_watch_line(&url(), b"null").is_err());
        assert!(parse_watch_line(&url(), b"{}").is_err());
        let not_base64 = br#"{"result":{"events":[{"kv":{"value":"***"}}]}}"#;
        assert!(parse_watch_line(&url(), not_base64).is_err());
    }

    #[test]
    fn refusals_are_read_by_their_grpc_code() {
        let e = refusal(
            &url(),
            StatusCode::PRECONDITION_FAILED,
            br#"{"error":"etcdserver: request is too large","message":"etcdserver: request is too large","code":3}"#,
        );
        assert!(matches!(e, Error::Refused { code: 3, .. }), "{e}");
        assert!(!e.try_another());
        let e = refusal(&url(), StatusCode::BAD_GATEWAY, b"<html>proxy</html>");
        assert!(matches!(e, Error::BadAnswer { .. }), "{e}");
        let e = refusal(
            &url(),
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"code":14,"message":"etcdserver: leader changed"}"#,
        );
        assert!(e.try_another());
    }
}
