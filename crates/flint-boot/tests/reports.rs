//! Nodes' first-boot reports through the real binary: certificates made by `openssl` at test
//! time, reports sent by curl with a client certificate, read back from `/api/machines`, the
//! page, `/metrics` and `flint-boot status`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::server::{BIN, Server};

/// node01 runs all four services; node02 chainfire alone.
const INVENTORY: &str = r#"{
  "profiles": {"worker": {"kernel": "debian/vmlinuz", "initrds": ["debian/initrd.img"]}},
  "nodes": [
    {"name": "node01", "mac": "52:54:00:00:00:01", "profile": "worker",
     "raft_addr": "10.0.200.11:2380", "initial": true},
    {"name": "node02", "mac": "52:54:00:00:00:02", "profile": "worker",
     "raft_addr": "10.0.200.12:2380", "services": ["chainfire"]}
  ],
  "cluster": {"services": ["chainfire", "flaredb", "etcd", "iam"],
              "iam": {"org": "acme", "admin": "admin"}},
  "unknown": {"policy": "menu"}
}"#;

const NODE01_MAC: &str = "52:54:00:00:00:01";

const EXTENSIONS: &str = "\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster CA and what it signed, and another CA: `NAME.pem` and `NAME.key` in a folder.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("ext.cnf"), EXTENSIONS).unwrap();
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subject) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN={ca}"),
            );
            let mut args = vec!["req", "-x509", "-new"];
            args.extend(new_key);
            args.extend([
                "-keyout", &key, "-out", &pem, "-subj", &subject, "-days", "2",
            ]);
            args.extend(["-config", "ext.cnf", "-extensions", "ca"]);
            openssl(d, &args);
        }
        for (serial, (name, cn, ca, usage)) in [
            ("node01", "node01", "ca", "client"),
            ("intruder", "intruder", "ca", "client"),
            ("node01-other-ca", "node01", "other-ca", "client"),
            ("server", "boot1", "ca", "server"),
        ]
        .into_iter()
        .enumerate()
        {
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            let subject = format!("/CN={cn}");
            let mut args = vec!["req", "-new"];
            args.extend(new_key);
            args.extend([
                "-keyout", &key, "-out", &csr, "-subj", &subject, "-config", "ext.cnf",
            ]);
            openssl(d, &args);
            let (ca_pem, ca_key, serial) = (
                format!("{ca}.pem"),
                format!("{ca}.key"),
                (serial + 10).to_string(),
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_pem,
                    "-CAkey",
                    &ca_key,
                    "-set_serial",
                    &serial,
                    "-days",
                    "2",
                    "-out",
                    &pem,
                    "-extfile",
                    "ext.cnf",
                    "-extensions",
                    usage,
                ],
            );
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// The boot server with its report listener on 127.0.0.1 (the server certificate's address).
struct Reports {
    server: Server,
    addr: SocketAddr,
    pki: Pki,
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Reports {
    fn start() -> Reports {
        let pki = Pki::new();
        let addr = free_port();
        let server = Server::start_with_inventory(
            INVENTORY,
            &[
                "--reports",
                &addr.to_string(),
                "--tls-ca",
                &pki.arg("ca.pem"),
                "--tls-cert",
                &pki.arg("server.pem"),
                "--tls-key",
                &pki.arg("server.key"),
            ],
        );
        server.wait_log("reports listening");
        Reports { server, addr, pki }
    }

    /// curl POSTs `body` to `path` as `identity` (a certificate of the PKI, or none): the
    /// status and body of the answer, or `None` when curl got no answer (and its stderr).
    fn post_to(&self, path: &str, identity: Option<&str>, body: &[u8], extra: &[&str]) -> Answer {
        let mut curl = Command::new("curl");
        curl.args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &self.pki.arg("ca.pem"),
        ]);
        if let Some(name) = identity {
            curl.args(["--cert", &self.pki.arg(&format!("{name}.pem"))]);
            curl.args(["--key", &self.pki.arg(&format!("{name}.key"))]);
        }
        curl.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ])
        .args(extra)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{}{path}", self.addr))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = curl.spawn().expect("run curl");
        child.stdin.take().unwrap().write_all(body).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (text, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        Answer {
            status: out.status.success().then(|| code.parse().ok()).flatten(),
            body: text.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn post(&self, identity: Option<&str>, body: &[u8]) -> Answer {
        self.post_to("/api/reports", identity, body, &[])
    }

    /// node01 reports `service step` with `outcome`; it must be recorded.
    fn report(&self, service: &str, step: &str, outcome: &str, exit_status: u8) {
        let answer = self.post(
            Some("node01"),
            report(service, step, outcome, exit_status).as_bytes(),
        );
        assert_eq!(answer.status, Some(204), "{answer:?}");
        assert_eq!(answer.body, "", "204 has no body");
    }

    fn machines(&self) -> Value {
        serde_json::from_str(&self.server.get("/api/machines")).unwrap()
    }

    fn node01(&self) -> Value {
        let fleet = self.machines();
        fleet["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mac"] == NODE01_MAC)
            .cloned()
            .unwrap_or_else(|| panic!("no node01 in {fleet:#}"))
    }

    fn metric(&self, series: &str) -> u64 {
        let metrics = self.server.get("/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
    }

    fn answers(&self, answer: &str) -> u64 {
        self.metric(&format!("flint_boot_reports_total{{answer=\"{answer}\"}}"))
    }

    /// Waits (5 s at most) for `answer` to have been counted `n` times: the server counts a
    /// failed handshake just after the client has seen it fail.
    fn wait_answers(&self, answer: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.answers(answer) != n {
            assert!(
                Instant::now() < deadline,
                "{answer}: {} answers, expected {n}\n{}",
                self.answers(answer),
                self.server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[derive(Debug)]
struct Answer {
    status: Option<u16>,
    body: String,
    stderr: String,
}

fn report(service: &str, step: &str, outcome: &str, exit_status: u8) -> String {
    serde_json::json!({
        "schema_version": 1, "service": service, "step": step, "outcome": outcome,
        "exit_status": exit_status, "member_id": (service == "etcd" && outcome == "ok").then_some("0x2a"),
        "duration_ms": 1234, "sent_at_ms": 1_796_330_000_000u64,
    })
    .to_string()
}

fn joined(machine: &Value) -> Vec<&str> {
    machine["joined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn a_node_reports_its_way_to_joined_then_healthy() {
    let r = Reports::start();
    // Every phase and answer is a series from the start.
    for phase in ["first-boot", "joined", "healthy"] {
        assert_eq!(
            r.metric(&format!("flint_boot_machines{{phase=\"{phase}\"}}")),
            0
        );
    }
    assert_eq!(r.answers("recorded"), 0);
    assert_eq!(r.metric("flint_boot_failed_machines"), 0);

    r.report("chainfire", "join", "ok", 0);
    let m = r.node01();
    assert_eq!(m["phase"], "first-boot");
    assert_eq!(m["name"], "node01", "named by its certificate");
    assert_eq!(
        m["ip"], "127.0.0.1",
        "no journey before: the report's address"
    );
    assert_eq!(m["last_step"]["step"], "report");
    assert_eq!(m["last_step"]["detail"], "chainfire join: ok, 1.2 s");
    assert_eq!(m["last_step"]["sent_at_ms"], 1_796_330_000_000u64);
    r.report("flaredb", "join", "ok", 0);
    r.report("etcd", "promote", "ok", 0);
    assert_eq!(r.node01()["phase"], "first-boot", "iam is not set up yet");
    r.report("iam", "setup", "ok", 0);
    let m = r.node01();
    assert_eq!(m["phase"], "joined");
    assert_eq!(joined(&m), ["chainfire", "etcd", "flaredb", "iam"]);
    assert_eq!(m["failed"], false);
    assert_eq!(m["last_step"]["detail"], "iam setup: ok, 1.2 s");

    r.report("cluster", "health", "ok", 0);
    let fleet = r.machines();
    assert_eq!(fleet["machines"][0]["phase"], "healthy");
    assert_eq!(fleet["counts"]["healthy"], 1);
    assert_eq!(fleet["counts"]["joined"], 0);
    assert_eq!(fleet["counts"]["failed"], 0);
    assert_eq!(fleet["install_stuck_after_s"], 7200);
    let steps: Vec<&str> = fleet["machines"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "chainfire join: ok, 1.2 s",
            "flaredb join: ok, 1.2 s",
            "etcd promote: ok, member 0x2a, 1.2 s",
            "iam setup: ok, 1.2 s",
            "cluster health: ok, 1.2 s",
        ]
    );

    assert_eq!(r.metric("flint_boot_machines{phase=\"healthy\"}"), 1);
    assert_eq!(r.metric("flint_boot_machines{phase=\"joined\"}"), 0);
    assert_eq!(
        r.metric("flint_boot_journey_steps_total{step=\"report\"}"),
        5
    );
    assert_eq!(r.answers("recorded"), 5);
    assert_eq!(r.answers("rejected"), 0);

    let page = r.server.get("/");
    assert!(
        page.contains(&format!(
            "data-mac=\"{NODE01_MAC}\" data-phase=\"healthy\"><td>node01</td>"
        )),
        "{page}"
    );
    assert!(
        page.contains("joined: chainfire etcd flaredb iam"),
        "{page}"
    );
    assert!(
        page.contains("id=\"count-healthy\">healthy <b>1</b>"),
        "{page}"
    );
    assert!(
        page.contains("id=\"count-failed\" class=\"calm\">failed <b>0</b>"),
        "{page}"
    );
}

#[test]
fn a_failed_report_marks_the_machine_until_that_service_succeeds() {
    let r = Reports::start();
    r.report("chainfire", "join", "ok", 0);
    r.report("etcd", "promote", "failed", 75);
    // node02 takes a step after node01's failure: it is the latest, yet node01 comes first.
    r.server.get("/ipxe?mac=52-54-00-00-00-02");

    let fleet = r.machines();
    let first = &fleet["machines"][0];
    assert_eq!(first["mac"], NODE01_MAC, "failed first: {fleet:#}");
    assert_eq!(first["failed"], true);
    assert_eq!(first["stuck"], false);
    assert_eq!(
        first["last_step"]["detail"],
        "etcd promote: failed (exit 75) after 1.2 s"
    );
    assert_eq!(fleet["machines"][1]["failed"], false);
    assert_eq!(fleet["counts"]["failed"], 1);
    assert_eq!(r.metric("flint_boot_failed_machines"), 1);

    let page = r.server.get("/");
    let node01 = page.find(&format!("data-mac=\"{NODE01_MAC}\"")).unwrap();
    let node02 = page.find("data-mac=\"52:54:00:00:00:02\"").unwrap();
    assert!(node01 < node02, "failed first: {page}");
    assert!(
        page.contains(&format!(
            "<tr class=\"failed alarm\" data-mac=\"{NODE01_MAC}\" data-phase=\"first-boot\">"
        )),
        "{page}"
    );
    assert!(page.contains("FAILED in first-boot"), "{page}");
    assert!(
        page.contains("id=\"count-failed\" class=\"alarm\">failed <b>1</b>"),
        "{page}"
    );

    let out = Command::new(BIN)
        .args(["status", "--url", &r.server.url("")])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].ends_with(
            ": seen 0 booting 1 installer 0 first-boot 1 joined 0 healthy 0 stuck 0 failed 1"
        ),
        "{table}"
    );
    assert!(
        lines[2].starts_with("node01") && lines[2].contains("FAILED:first-boot"),
        "{table}"
    );

    // Another service's success leaves it failed; etcd's own clears it.
    r.report("flaredb", "join", "ok", 0);
    assert_eq!(r.node01()["failed"], true);
    r.report("etcd", "promote", "ok", 0);
    let m = r.node01();
    assert_eq!(m["failed"], false);
    assert_eq!(joined(&m), ["chainfire", "etcd", "flaredb"]);
    assert_eq!(r.machines()["counts"]["failed"], 0);
    assert_eq!(r.metric("flint_boot_failed_machines"), 0);
}

#[test]
fn only_a_certificate_of_the_ca_naming_a_node_may_report() {
    let r = Reports::start();
    let body = report("chainfire", "join", "ok", 0);

    // No client certificate: the handshake is refused, curl gets no answer.
    let answer = r.post(None, body.as_bytes());
    assert_eq!(answer.status, None, "{answer:?}");
    assert!(answer.stderr.contains("certificate required"), "{answer:?}");
    r.wait_answers("bad-certificate", 1);

    // node01's name, from another CA: the same.
    let answer = r.post(Some("node01-other-ca"), body.as_bytes());
    assert_eq!(answer.status, None, "{answer:?}");
    assert!(answer.stderr.contains("unknown ca"), "{answer:?}");
    r.wait_answers("bad-certificate", 2);

    // Of the CA, but for servers only (no clientAuth key usage): the same.
    let answer = r.post(Some("server"), body.as_bytes());
    assert_eq!(answer.status, None, "{answer:?}");
    r.wait_answers("bad-certificate", 3);

    // Of the CA, but no node of the inventory: 403, naming it.
    let answer = r.post(Some("intruder"), body.as_bytes());
    assert_eq!(answer.status, Some(403), "{answer:?}");
    assert_eq!(
        answer.body,
        "forbidden: the client certificate names \"intruder\", no node of the inventory\n"
    );
    assert_eq!(r.answers("unknown-node"), 1);

    // Not TLS at all.
    let mut plain = TcpStream::connect(r.addr).unwrap();
    plain
        .write_all(b"POST /api/reports HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!got.starts_with(b"HTTP"), "{got:?}");
    r.wait_answers("bad-certificate", 4);

    let fleet = r.machines();
    assert_eq!(fleet["machines"], Value::Array(vec![]), "nothing recorded");
    assert_eq!(r.answers("recorded"), 0);
    // Scanners do not flood the log: handshake failures are at debug only.
    let log = r.server.log();
    assert!(
        log.lines()
            .filter(|l| l.contains("TLS handshake"))
            .all(|l| l.split_whitespace().nth(1) == Some("DEBUG")),
        "{log}"
    );

    // The same request with node01's own certificate is recorded.
    assert_eq!(r.post(Some("node01"), body.as_bytes()).status, Some(204));
    assert_eq!(r.node01()["joined"][0], "chainfire");
}

#[test]
fn hostile_bodies_are_refused_with_a_reason_naming_the_field() {
    let r = Reports::start();
    let ok = report("chainfire", "join", "ok", 0);
    let with = |field: &str, value: Value| {
        let mut body: serde_json::Map<String, Value> = serde_json::from_str(&ok).unwrap();
        body.insert(field.into(), value);
        Value::Object(body).to_string()
    };
    let cases: Vec<(String, u16, &str)> = vec![
        (
            with("hostname", "node02".into()),
            400,
            "hostname: unknown field, expected only schema_version, service, step, outcome, exit_status, member_id, duration_ms, sent_at_ms",
        ),
        (
            with("schema_version", 2.into()),
            400,
            "schema_version: expected 1, found 2",
        ),
        (
            report("iam", "join", "ok", 0),
            400,
            "step: expected \"setup\" for service \"iam\", found \"join\"",
        ),
        (
            with("member_id", "0x2a\nforged log line".into()),
            400,
            "member_id: expected null or a string of 1 to 64 printable ASCII characters, found \"0x2a\\nforged log line\"",
        ),
        (
            with("member_id", "x".repeat(65).into()),
            400,
            "member_id: expected null or a string of 1 to 64 printable ASCII characters, found \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...",
        ),
        (
            with("exit_status", 256.into()),
            400,
            "exit_status: expected an integer from 0 to 255, found 256",
        ),
        (
            format!("{{\"pad\":\"{}\"}}", "x".repeat(5000)),
            413,
            "body: expected at most 4096 bytes",
        ),
        (
            "not json".into(),
            400,
            "body: expected one JSON object, each field once (",
        ),
        (
            "".into(),
            400,
            "body: expected a JSON object of the report's fields, found nothing",
        ),
        (
            with("\u{1b}[2J\u{7}", 1.into()),
            400,
            "?[2J?: unknown field",
        ),
    ];
    for (body, status, reason) in &cases {
        let answer = r.post(Some("node01"), body.as_bytes());
        assert_eq!(answer.status, Some(*status), "{body}: {answer:?}");
        let line = answer.body.strip_suffix('\n').expect("one line");
        assert!(!line.contains('\n'), "{body}: {line:?}");
        assert!(
            line.bytes().all(|b| (b' '..=b'~').contains(&b)),
            "only printable ASCII goes back: {line:?}"
        );
        assert!(
            line.starts_with(*reason),
            "{body}:\n{line}\nexpected {reason}"
        );
    }
    // A body too large without a length announced: read up to the bound, then refused.
    let chunked = r.post_to(
        "/api/reports",
        Some("node01"),
        &vec![b' '; 5000],
        &["-H", "transfer-encoding: chunked"],
    );
    assert_eq!(chunked.status, Some(413), "{chunked:?}");

    // Other paths and methods.
    let elsewhere = r.post_to("/api/machines", Some("node01"), ok.as_bytes(), &[]);
    assert_eq!(elsewhere.status, Some(404), "{elsewhere:?}");
    let get = r.post_to(
        "/api/reports",
        Some("node01"),
        b"",
        &["-X", "GET", "-D", "-"],
    );
    assert!(get.body.starts_with("HTTP/1.1 405"), "{get:?}");
    assert!(
        get.body
            .to_ascii_lowercase()
            .contains("\r\nallow: post\r\n"),
        "{get:?}"
    );

    assert_eq!(
        r.machines()["machines"],
        Value::Array(vec![]),
        "nothing recorded"
    );
    assert_eq!(r.answers("rejected"), cases.len() as u64 + 3);
    assert_eq!(r.answers("recorded"), 0);
}

/// A connection that stays silent, before its handshake or after it, is cut at the 10 s bound;
/// meanwhile reports are answered.
#[test]
fn a_silent_connection_is_cut_at_ten_seconds_while_others_are_answered() {
    let r = Reports::start();
    let started = Instant::now();
    let mut silent = TcpStream::connect(r.addr).unwrap();
    let mut tls_idle = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &r.addr.to_string()])
        .args(["-CAfile", &r.pki.arg("ca.pem")])
        .args([
            "-cert",
            &r.pki.arg("node01.pem"),
            "-key",
            &r.pki.arg("node01.key"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    std::thread::sleep(Duration::from_secs(1));
    r.report("chainfire", "join", "ok", 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered meanwhile"
    );
    assert_eq!(r.node01()["joined"][0], "chainfire");

    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut byte = [0; 1];
    let read = silent.read(&mut byte);
    let cut = started.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(13)).contains(&cut),
        "the silent connection was cut after {cut:?}"
    );
    // A connection that finished its handshake and sends no request: cut at the same bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls_idle.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = tls_idle.kill();
            let _ = tls_idle.wait();
            panic!(
                "a TLS connection without a request still open after {:?}",
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(started.elapsed() < Duration::from_secs(14));
    // The handshake that never came counts as a bad certificate; the idle one does not.
    r.wait_answers("bad-certificate", 1);
    assert_eq!(r.answers("recorded"), 1);
}

/// Past 256 connections at once, a new one waits in the listen queue until one ends.
#[test]
fn connections_past_the_bound_wait_their_turn() {
    let r = Reports::start();
    let started = Instant::now();
    let held: Vec<TcpStream> = (0..256)
        .map(|_| TcpStream::connect(r.addr).unwrap())
        .collect();
    // The kernel completes the 257th connection too; the server accepts it only once a slot
    // is free, when the silent ones are cut at 10 s.
    let body = report("chainfire", "join", "ok", 0);
    let answer = r.post_to(
        "/api/reports",
        Some("node01"),
        body.as_bytes(),
        &["--max-time", "25"],
    );
    assert_eq!(answer.status, Some(204), "{answer:?}");
    let answered = started.elapsed();
    assert!(
        answered >= Duration::from_secs(8),
        "answered after {answered:?}, beside 256 connections held"
    );
    assert_eq!(r.node01()["joined"][0], "chainfire");
    drop(held);
}

#[test]
fn serve_refuses_a_key_others_may_read_and_an_incomplete_tls_setup() {
    let pki = Pki::new();
    let images = tempfile::tempdir().unwrap();
    let inventory = pki.path("inventory.json");
    std::fs::write(&inventory, INVENTORY).unwrap();
    // Each of these must refuse to start; one that serves instead is stopped, and fails.
    let serve = |tls: &[&str]| {
        let mut child = Command::new(BIN)
            .args(["serve", "--http", "127.0.0.1:0", "--inventory"])
            .arg(&inventory)
            .arg("--images")
            .arg(images.path())
            .args(["--reports", "127.0.0.1:0"])
            .args(tls)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ca, cert, key) = (
        pki.arg("ca.pem"),
        pki.arg("server.pem"),
        pki.arg("server.key"),
    );

    std::fs::set_permissions(
        pki.path("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, err) = serve(&["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key]);
    assert_eq!(code, Some(77), "{err}");
    assert!(
        err.contains(&key) && err.contains("readable by group or others"),
        "{err}"
    );
    std::fs::set_permissions(
        pki.path("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let (code, err) = serve(&["--tls-ca", &ca, "--tls-key", &key]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--tls-cert"), "{err}");

    // Not PEM: 78, naming the flag and the file.
    let (code, err) = serve(&[
        "--tls-ca",
        &pki.arg("ext.cnf"),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("--tls-ca") && err.contains("ext.cnf"), "{err}");
    let (code, err) = serve(&[
        "--tls-ca",
        &ca,
        "--tls-cert",
        &pki.arg("missing.pem"),
        "--tls-key",
        &key,
    ]);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("--tls-cert") && err.contains("missing.pem"),
        "{err}"
    );
}
