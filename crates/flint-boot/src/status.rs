//! `flint-boot status`: the fleet view of a running boot server, for a terminal or a script. It
//! asks `GET /api/machines?steps=0` and prints a table (or the JSON as it came, with `--json`),
//! once or, with `--watch`, every two seconds until interrupted.
//!
//! The server is treated as any peer: the answer is read up to a bound and within a deadline,
//! checked for its shape, and nothing from it reaches the terminal unless printable.

use std::fmt::Write as _;
use std::time::Duration;

use http_body::Body as _;
use hyper::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::ExitError;
use crate::http::fleet::ago;
// printable: a hostile server cannot move the cursor or flood a line.
use crate::journey::{Phase, SCHEMA_VERSION, printable};

/// The largest answer read: 20,000 machines without their steps fit in a few MiB.
const MAX_ANSWER: usize = 32 << 20;
/// A connection, the request and the whole answer together.
const DEADLINE: Duration = Duration::from_secs(10);
const WATCH_EVERY: Duration = Duration::from_secs(2);

pub struct Options {
    /// The boot server's base URL: `http://HOST:PORT`, with an optional path prefix.
    pub url: String,
    pub json: bool,
    pub watch: bool,
}

pub async fn run(options: &Options) -> Result<(), ExitError> {
    let target = machines_url(&options.url)?;
    loop {
        let body = tokio::time::timeout(DEADLINE, fetch(&target))
            .await
            .map_err(|_| {
                ExitError::Unavailable(format!("{target}: no whole answer within {DEADLINE:?}"))
            })??;
        let fleet: Value = serde_json::from_slice(&body)
            .map_err(|e| ExitError::Protocol(format!("{target}: the answer is not JSON: {e}")))?;
        let text = if options.json {
            // Re-encoded: whatever the server sent, the output is one JSON document.
            let mut json = fleet.to_string();
            json.push('\n');
            json
        } else {
            table(&target, &fleet)?
        };
        if options.watch {
            // Home and clear, as watch(1) does, so the table is redrawn in place.
            print!("\x1b[H\x1b[2J{text}");
        } else {
            print!("{text}");
            return Ok(());
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// `http://HOST:PORT[/PREFIX]` → the URL of its machines, without their steps.
fn machines_url(base: &str) -> Result<hyper::Uri, ExitError> {
    let bad = |why: &str| ExitError::Usage(format!("--url {base:?}: {why}"));
    let uri: hyper::Uri = base.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "expected http://HOST:PORT (the boot server serves plain HTTP)",
        ));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if uri.query().is_some() {
        return Err(bad("expected no query"));
    }
    let prefix = uri.path().trim_end_matches('/');
    format!("http://{authority}{prefix}/api/machines?steps=0")
        .parse()
        .map_err(|_| bad("not a URL once /api/machines is added"))
}

async fn fetch(target: &hyper::Uri) -> Result<Vec<u8>, ExitError> {
    let unavailable = |why: String| ExitError::Unavailable(format!("{target}: {why}"));
    let authority = target.authority().expect("checked in machines_url");
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host().trim_matches(['[', ']']), port))
        .await
        .map_err(|e| unavailable(format!("cannot connect: {e}")))?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(format!("HTTP: {e}")))?;
    tokio::spawn(connection);
    let request = Request::get(target.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a GET with valid parts");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unavailable(format!("HTTP: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(ExitError::Protocol(format!(
            "{target}: answered {status}, expected 200 (is this a flint-boot with the fleet view?)"
        )));
    }
    read_bounded(response.into_body(), target).await
}

async fn read_bounded(mut body: Incoming, target: &hyper::Uri) -> Result<Vec<u8>, ExitError> {
    let mut out = Vec::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame
            .map_err(|e| ExitError::Unavailable(format!("{target}: reading the answer: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_ANSWER {
                return Err(ExitError::Protocol(format!(
                    "{target}: answer larger than {MAX_ANSWER} bytes"
                )));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The table: counts per phase, then one line per machine in the server's order (stuck and
/// failed first).
fn table(target: &hyper::Uri, fleet: &Value) -> Result<String, ExitError> {
    let shape = |field: &str, expected: &str| {
        ExitError::Protocol(format!("{target}: field {field}: expected {expected}"))
    };
    match fleet["schema_version"].as_u64() {
        Some(v) if v == u64::from(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(ExitError::Protocol(format!(
                "{target}: schema_version {v}; this flint-boot reads version {SCHEMA_VERSION}"
            )));
        }
        None => return Err(shape("schema_version", "a number")),
    }
    let counts = fleet["counts"]
        .as_object()
        .ok_or_else(|| shape("counts", "an object"))?;
    let machines = fleet["machines"]
        .as_array()
        .ok_or_else(|| shape("machines", "an array"))?;
    let mut out = String::new();
    let _ = write!(
        out,
        "{}:",
        printable(fleet["server"].as_str().unwrap_or("?"))
    );
    // The phases in the order a machine goes through them, then anything else the server counts.
    let order: Vec<&str> = Phase::ALL
        .iter()
        .map(|p| p.name())
        .chain(["stuck", "failed"])
        .collect();
    let others = counts.keys().filter(|k| !order.contains(&k.as_str()));
    for key in order.iter().copied().chain(others.map(String::as_str)) {
        if let Some(n) = counts.get(key) {
            let _ = write!(out, " {} {}", printable(key), n.as_u64().unwrap_or(0));
        }
    }
    out.push('\n');
    // A fleet view answered from an inventory etcd could not confirm: the operator must know
    // before trusting what it shows of a change just written.
    let stale = &fleet["inventory"]["stale"];
    if stale.is_object() {
        let since = fleet["generated_at_ms"]
            .as_u64()
            .zip(stale["since_ms"].as_u64())
            .map_or_else(
                || "?".to_owned(),
                |(now, since)| ago(now.saturating_sub(since) / 1000),
            );
        let _ = writeln!(
            out,
            "INVENTORY MAY BE OUT OF DATE: etcd unreachable for {since}; serving revision {}: {}",
            fleet["inventory"]["revision"].as_i64().unwrap_or(0),
            printable(stale["reason"].as_str().unwrap_or("?"))
        );
    }
    let rows: Vec<[String; 6]> = machines
        .iter()
        .map(|m| {
            let text = |field: &str| m[field].as_str().map_or_else(|| "-".to_owned(), printable);
            let phase = text("phase");
            let step = &m["last_step"];
            [
                text("name"),
                text("mac"),
                text("ip"),
                match (m["stuck"].as_bool(), m["failed"].as_bool()) {
                    (Some(true), Some(true)) => format!("FAILED:STUCK:{phase}"),
                    (Some(true), _) => format!("STUCK:{phase}"),
                    (_, Some(true)) => format!("FAILED:{phase}"),
                    _ => phase,
                },
                format!(
                    "{}: {}",
                    printable(step["step"].as_str().unwrap_or("?")),
                    printable(step["detail"].as_str().unwrap_or(""))
                ),
                m["idle_s"].as_u64().map_or_else(|| "?".to_owned(), ago),
            ]
        })
        .collect();
    let header = ["NAME", "MAC", "ADDRESS", "PHASE", "LAST STEP", "AGO"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_a_plain_http_base() {
        assert_eq!(
            machines_url("http://10.0.0.2:8080/").unwrap().to_string(),
            "http://10.0.0.2:8080/api/machines?steps=0"
        );
        assert_eq!(
            machines_url("http://[::1]:8080/boot").unwrap().to_string(),
            "http://[::1]:8080/boot/api/machines?steps=0"
        );
        for bad in ["https://h:1", "h:8080", "http://h:1/?x=1", "not a url"] {
            let e = machines_url(bad).unwrap_err();
            assert_eq!(e.code(), 64, "{bad}: {e}");
        }
    }

    #[test]
    fn a_hostile_answer_is_refused_or_printed_harmless() {
        let target = machines_url("http://h:1").unwrap();
        let wrong = serde_json::json!({"schema_version": 2, "counts": {}, "machines": []});
        assert_eq!(table(&target, &wrong).unwrap_err().code(), 76);
        let no_counts = serde_json::json!({"schema_version": 1, "machines": []});
        assert!(
            table(&target, &no_counts)
                .unwrap_err()
                .to_string()
                .contains("field counts: expected an object")
        );
        let escapes = serde_json::json!({"schema_version": 1, "server": "b\u{1b}[2J",
            "counts": {"seen": 1},
            "machines": [{"mac": "m\u{7}", "phase": "seen", "stuck": true, "idle_s": 61,
                          "last_step": {"step": "dhcp", "detail": "\u{1b}]0;x\u{7}"}}]});
        let text = table(&target, &escapes).unwrap();
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(
            text.contains("STUCK:seen") && text.contains("1m 01s"),
            "{text}"
        );
    }

    #[test]
    fn failed_machines_are_marked_and_counted() {
        let target = machines_url("http://h:1").unwrap();
        let fleet = serde_json::json!({"schema_version": 1, "server": "boot1",
            "counts": {"seen": 0, "booting": 0, "installer": 0, "first-boot": 1, "joined": 0,
                       "healthy": 0, "stuck": 0, "failed": 1},
            "machines": [{"name": "node01", "mac": "m", "phase": "first-boot", "stuck": false,
                          "failed": true, "idle_s": 1,
                          "last_step": {"step": "report", "detail": "etcd promote: failed"}}]});
        let text = table(&target, &fleet).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "boot1: seen 0 booting 0 installer 0 first-boot 1 joined 0 healthy 0 stuck 0 failed 1"
        );
        assert!(lines[2].contains("FAILED:first-boot"), "{text}");
    }

    #[test]
    fn a_stale_inventory_is_said_before_the_machines() {
        let target = machines_url("http://h:1").unwrap();
        let fleet = serde_json::json!({"schema_version": 1, "server": "boot1",
            "generated_at_ms": 100_000, "counts": {}, "machines": [],
            "inventory": {"source": "etcd", "name": "/flint/inventory", "revision": 7,
                          "stale": {"reason": "cannot reach etcd\u{1b}[2J", "since_ms": 40_000}}});
        let text = table(&target, &fleet).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(
            line.starts_with("INVENTORY MAY BE OUT OF DATE: etcd unreachable for 1m 00s; serving revision 7: cannot reach etcd?"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text}");
        let current = serde_json::json!({"schema_version": 1, "server": "boot1", "counts": {},
            "machines": [], "inventory": {"source": "etcd", "name": "/flint/inventory", "revision": 7}});
        assert!(!table(&target, &current).unwrap().contains("OUT OF DATE"));
    }
}
