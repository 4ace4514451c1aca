//! Nodes' reports of their first-boot steps: `POST /api/reports` on a listener of its own, over
//! TLS with a client certificate of the cluster's CA (`docs/journeys.md`, "Node reports").
//!
//! The node is the certificate's subject CommonName, looked up in the inventory being served:
//! the boot server holds no secret of its own to check (only the CA's certificate), and a node
//! cannot report for another, since the body never names one.
//!
//! Any host that reaches the port is a peer to be wary of: connections are bounded in number
//! (more wait in the listen queue) and each in time, handshake to answer; a body is read up to
//! 4 KiB; nothing a client sent reaches a log line, an answer or the fleet view unless printable
//! and short; a failed handshake is logged at debug only, so a scanner does not flood the log.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;

use crate::ExitError;
use crate::identity;
use crate::inventory::SharedInventory;
use crate::journey::{Journeys, Report, ReportStep, printable};
use crate::metrics::{Metrics, ReportAnswer};

/// Where reports are taken; every other path is a 404.
pub const PATH: &str = "/api/reports";
/// A report is about 200 bytes.
pub const MAX_BODY: usize = 4096;
/// Connections served at once; more wait in the listen queue, where the kernel holds them.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection's handshake, request and answer together: a node sends its report at once.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The report's fields, in the wire format's order; any other is refused.
const FIELDS: [&str; 8] = [
    "schema_version",
    "service",
    "step",
    "outcome",
    "exit_status",
    "member_id",
    "duration_ms",
    "sent_at_ms",
];
/// The files of `--tls-ca`, `--tls-cert` and `--tls-key`.
pub struct TlsFiles<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// The TLS server: this server's certificate, and a client certificate of the CA required
/// (rustls checks its chain, validity and the clientAuth key usage); the files are read as
/// [`identity::Files::load`] reads them.
pub fn tls_config(files: &TlsFiles<'_>) -> Result<Arc<ServerConfig>, ExitError> {
    let files = identity::Files {
        ca: ("--tls-ca", files.ca),
        cert: ("--tls-cert", files.cert),
        key: ("--tls-key", files.key),
    };
    let loaded = files.load()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(loaded.roots), provider.clone())
            .build()
            .map_err(|e| {
                ExitError::Config(format!("--tls-ca {}: {e}", identity::shown(files.ca.1)))
            })?;
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ExitError::Config(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(loaded.chain, loaded.key)
        .map_err(|e| files.mismatch(e))?;
    // HTTP/1.1 only; saying so keeps a client that offers h2 from trying it.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// What the listener records into and looks nodes up in.
#[derive(Clone)]
pub struct Context {
    pub inventory: Arc<SharedInventory>,
    pub journeys: Arc<Journeys>,
    pub metrics: Arc<Metrics>,
}

/// Takes reports on `listener` until the future is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    context: Context,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let context = Arc::new(context);
    loop {
        // A slot before the accept: past the bound, connections wait in the listen queue.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: the connections open end in time.
                tracing::warn!(error = %e, "reports: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, context) = (acceptor.clone(), context.clone());
        tokio::spawn(async move {
            connection(stream, peer, &acceptor, context).await;
            drop(slot);
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    context: Arc<Context>,
) {
    let deadline = Instant::now() + DEADLINE;
    let tls = match timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            context.metrics.report(ReportAnswer::BadCertificate);
            tracing::debug!(%peer, error = %printable(&e.to_string()), "reports: TLS handshake failed");
            return;
        }
        Err(_) => {
            context.metrics.report(ReportAnswer::BadCertificate);
            tracing::debug!(%peer, "reports: TLS handshake not done within {DEADLINE:?}");
            return;
        }
    };
    let node = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| common_name(cert));
    let service = service_fn(move |request| {
        let (context, node) = (context.clone(), node.clone());
        async move { Ok::<_, Infallible>(answer(request, node, peer, &context).await) }
    });
    let mut http = http1::Builder::new();
    http.keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(DEADLINE)
        // hyper's smallest: a report's head is a few hundred bytes.
        .max_buf_size(8192);
    let served = http.serve_connection(TokioIo::new(tls), service);
    match timeout_at(deadline, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %printable(&e.to_string()), "reports: connection ended")
        }
        Err(_) => tracing::debug!(%peer, "reports: connection cut at {DEADLINE:?}"),
    }
}

/// The certificate's one subject CommonName; none when it has none, several, or one that is
/// not a string.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let mut names = cert.subject().iter_common_name();
    let name = names.next()?.as_str().ok()?.to_owned();
    names.next().is_none().then_some(name)
}

async fn answer(
    request: Request<Incoming>,
    node: Option<String>,
    peer: SocketAddr,
    context: &Context,
) -> Response<Full<Bytes>> {
    let rejected = |status: StatusCode, why: String| {
        context.metrics.report(ReportAnswer::Rejected);
        text(status, why)
    };
    if request.uri().path() != PATH {
        return rejected(
            StatusCode::NOT_FOUND,
            format!("not found: reports go to POST {PATH}"),
        );
    }
    if request.method() != Method::POST {
        let mut response = rejected(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed: {PATH} takes POST"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let inventory = context.inventory.get();
    let Some(found) = node
        .as_deref()
        .and_then(|name| inventory.node_by_name(name))
    else {
        context.metrics.report(ReportAnswer::UnknownNode);
        let why = match &node {
            Some(name) => format!(
                "forbidden: the client certificate names {:?}, no node of the inventory",
                printable(name)
            ),
            None => "forbidden: the client certificate has no single subject CN naming a node"
                .to_owned(),
        };
        tracing::warn!(%peer, "reports: {why}");
        return text(StatusCode::FORBIDDEN, why);
    };
    let too_large = || format!("body: expected at most {MAX_BODY} bytes");
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return rejected(StatusCode::PAYLOAD_TOO_LARGE, too_large());
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return rejected(StatusCode::PAYLOAD_TOO_LARGE, too_large());
        }
        Err(e) => {
            return rejected(
                StatusCode::BAD_REQUEST,
                format!("body: unreadable ({})", printable(&e.to_string())),
            );
        }
    };
    let report = match parse(&body) {
        Ok(report) => report,
        Err(why) => {
            tracing::warn!(%peer, node = %found.name, "reports: refused: {why}");
            return rejected(StatusCode::BAD_REQUEST, why);
        }
    };
    let runs = found
        .cluster
        .as_ref()
        .map(|c| c.services.clone())
        .unwrap_or_default();
    context
        .journeys
        .report_received(found.mac, &found.name, peer.ip(), &runs, &report);
    context.metrics.report(ReportAnswer::Recorded);
    tracing::info!(
        %peer,
        node = %found.name,
        service = report.step.service(),
        step = report.step.step(),
        outcome = if report.ok { "ok" } else { "failed" },
        "report"
    );
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// A one-line text answer; `why` is this server's words, with anything of the client's in it
/// already printable.
fn text(status: StatusCode, why: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(printable(&why) + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The report in `body`, or one line naming the first field that is wrong and what was
/// expected.
pub fn parse(body: &[u8]) -> Result<Report, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("body: expected a JSON object of the report's fields, found nothing".into());
    }
    #[derive(serde::Deserialize)]
    struct Object(
        #[serde(deserialize_with = "flint_json::unique_keys_required")] BTreeMap<String, Value>,
    );
    let Object(fields) = serde_json::from_slice(body).map_err(|e| {
        format!(
            "body: expected one JSON object, each field once ({})",
            printable(&e.to_string())
        )
    })?;
    let field = |name: &str| fields.get(name).unwrap_or(&Value::Null);
    let missing = |name: &str| !fields.contains_key(name);

    // First, so that a report of a later version is named as one, whatever else it holds.
    if field("schema_version").as_u64() != Some(1) {
        return Err(wrong("schema_version", "1", &fields));
    }
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "{}: unknown field, expected only {}",
            found_text(unknown),
            FIELDS.join(", ")
        ));
    }
    let service = field("service").as_str();
    if !service.is_some_and(|s| ReportStep::ALL.iter().any(|r| r.service() == s)) {
        return Err(wrong(
            "service",
            "one of \"chainfire\", \"flaredb\", \"etcd\", \"iam\", \"cluster\"",
            &fields,
        ));
    }
    let service = service.unwrap_or_default();
    let Some(step) = field("step")
        .as_str()
        .and_then(|s| ReportStep::from_names(service, s))
    else {
        let steps: Vec<String> = ReportStep::ALL
            .iter()
            .filter(|r| r.service() == service)
            .map(|r| format!("{:?}", r.step()))
            .collect();
        return Err(wrong(
            "step",
            &format!("{} for service {service:?}", steps.join(" or ")),
            &fields,
        ));
    };
    let ok = match field("outcome").as_str() {
        Some("ok") => true,
        Some("failed") => false,
        _ => return Err(wrong("outcome", "\"ok\" or \"failed\"", &fields)),
    };
    let Some(exit_status) = field("exit_status")
        .as_u64()
        .and_then(|n| u8::try_from(n).ok())
    else {
        return Err(wrong("exit_status", "an integer from 0 to 255", &fields));
    };
    let member_id = match field("member_id") {
        Value::Null if !missing("member_id") => None,
        Value::String(id)
            if (1..=64).contains(&id.len()) && id.bytes().all(|b| (b' '..=b'~').contains(&b)) =>
        {
            Some(id.clone())
        }
        _ => {
            return Err(wrong(
                "member_id",
                "null or a string of 1 to 64 printable ASCII characters",
                &fields,
            ));
        }
    };
    let millis = |name: &str| {
        field(name)
            .as_u64()
            .ok_or_else(|| wrong(name, "a whole number of milliseconds", &fields))
    };
    Ok(Report {
        step,
        ok,
        exit_status,
        member_id,
        duration_ms: millis("duration_ms")?,
        sent_at_ms: millis("sent_at_ms")?,
    })
}

/// `FIELD: expected WHAT, found VALUE` (or `missing`).
fn wrong(name: &str, expected: &str, fields: &BTreeMap<String, Value>) -> String {
    match fields.get(name) {
        None => format!("{name}: missing, expected {expected}"),
        Some(value) => format!(
            "{name}: expected {expected}, found {}",
            found_text(&value.to_string())
        ),
    }
}

/// What a client sent, as an answer may show it: printable ASCII, at most 40 characters.
fn found_text(sent: &str) -> String {
    let shown = printable(sent);
    if shown.chars().count() > 40 {
        format!("{}...", shown.chars().take(40).collect::<String>())
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"schema_version":1,"service":"chainfire","step":"join","outcome":"ok",
        "exit_status":0,"member_id":"0x2a","duration_ms":1234,"sent_at_ms":1796330000000}"#;

    fn with(field: &str, value: &str) -> String {
        let mut report: serde_json::Map<String, Value> = serde_json::from_str(OK).unwrap();
        report.insert(field.into(), serde_json::from_str(value).unwrap());
        Value::Object(report).to_string()
    }

    fn refused(body: &str) -> String {
        let why = parse(body.as_bytes()).unwrap_err();
        assert!(
            !why.contains('\n') && why.bytes().all(|b| (b' '..=b'~').contains(&b)),
            "{why:?}"
        );
        why
    }

    #[test]
    fn the_wire_format_is_read_exactly() {
        let report = parse(OK.as_bytes()).unwrap();
        assert_eq!(
            report,
            Report {
                step: ReportStep::ChainfireJoin,
                ok: true,
                exit_status: 0,
                member_id: Some("0x2a".into()),
                duration_ms: 1234,
                sent_at_ms: 1_796_330_000_000,
            }
        );
        let failed = parse(
            with("outcome", "\"failed\"")
                .replace("\"exit_status\":0", "\"exit_status\":255")
                .as_bytes(),
        )
        .unwrap();
        assert!(!failed.ok);
        assert_eq!(failed.exit_status, 255);
        assert_eq!(
            parse(with("member_id", "null").as_bytes())
                .unwrap()
                .member_id,
            None
        );
        for (service, step) in [
            ("etcd", "add"),
            ("etcd", "promote"),
            ("iam", "setup"),
            ("cluster", "health"),
        ] {
            let body =
                with("service", &format!("{service:?}")).replace("\"join\"", &format!("{step:?}"));
            let report = parse(body.as_bytes()).unwrap();
            assert_eq!((report.step.service(), report.step.step()), (service, step));
        }
    }

    #[test]
    fn a_bad_report_is_named_by_its_field() {
        for (body, start) in [
            (
                with("schema_version", "2"),
                "schema_version: expected 1, found 2",
            ),
            (with("extra", "1"), "extra: unknown field"),
            (
                with("service", "\"iam\""),
                "step: expected \"setup\" for service \"iam\"",
            ),
            (with("service", "\"nope\""), "service: expected one of"),
            (with("outcome", "\"maybe\""), "outcome: expected"),
            (
                with("exit_status", "256"),
                "exit_status: expected an integer from 0 to 255",
            ),
            (with("exit_status", "-1"), "exit_status:"),
            (with("exit_status", "1.0"), "exit_status:"),
            (
                with("member_id", "\"a\\nb\""),
                "member_id: expected null or a string",
            ),
            (
                with("member_id", &format!("{:?}", "x".repeat(65))),
                "member_id:",
            ),
            (with("member_id", "\"\""), "member_id:"),
            (with("member_id", "\"caf\u{e9}\""), "member_id:"),
            (
                with("duration_ms", "\"1\""),
                "duration_ms: expected a whole number",
            ),
            (
                OK.replace(",\"sent_at_ms\":1796330000000", ""),
                "sent_at_ms: missing",
            ),
            (
                OK.replace("\"member_id\":\"0x2a\",", ""),
                "member_id: missing",
            ),
            ("[1]".to_owned(), "body: expected one JSON object"),
            (
                "{\"schema_version\":1,\"schema_version\":1}".to_owned(),
                "body:",
            ),
            (format!("{OK} {{}}"), "body:"),
            ("not json".to_owned(), "body:"),
            (
                "".to_owned(),
                "body: expected a JSON object of the report's fields, found nothing",
            ),
        ] {
            let why = refused(&body);
            assert!(why.starts_with(start), "{body}: {why}");
        }
        let long = refused(&with(&"\u{1b}".repeat(300), "1"));
        assert!(long.len() < 200, "{long}");
    }
}
