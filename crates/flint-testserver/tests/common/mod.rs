//! Harness for the protocol tests: a free loopback /24 per test, certificates made with rcgen, the
//! server binary started and killed by PID, and curl as the client (so the test proves the
//! server speaks the protocol to a client that is not ours).
#![allow(dead_code)] // Each test binary uses a different part.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::Value;
use tempfile::TempDir;

pub const TOKEN: &str = "t0ken-for-tests";
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// No single curl call may take longer; the server's own delays in these tests are far shorter.
const CURL_MAX_SECS: &str = "10";
/// Node k of the lab has the IP 127.A.B.(10 + k), k = 1..=MAX_NODES.
const MAX_NODES: u8 = 6;
const CONTROL_PORT: u16 = 9000;
/// Held on 127.A.B.1 while the lab lives, so parallel tests never draw the same /24.
const CLAIM_PORT: u16 = 9999;

/// A loopback /24 with its own certificates and temp dir.
pub struct Lab {
    net: [u8; 2],
    _claim: TcpListener,
    pub dir: TempDir,
}

impl Lab {
    /// `port` is the service port every node listens on (2379 for clusters, 8080 for IAM).
    pub fn new(port: u16) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("flint-testserver-")
            .tempdir()
            .expect("temp dir");
        let (net, claim) = claim_network(port);
        let lab = Lab {
            net,
            _claim: claim,
            dir,
        };
        lab.make_pki();
        lab
    }

    pub fn ip(&self, node: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.net[0], self.net[1], 10 + node)
    }

    pub fn addr(&self, node: u8, port: u16) -> String {
        format!("{}:{port}", self.ip(node))
    }

    pub fn control(&self) -> String {
        format!("127.{}.{}.1:{CONTROL_PORT}", self.net[0], self.net[1])
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn make_pki(&self) {
        let ca = new_ca("flint-testserver test CA");
        write(&self.path("ca.pem"), &ca.0.pem());
        let ca = Issuer::new(ca.1, ca.2);
        let mut sans: Vec<SanType> = (1..=MAX_NODES)
            .map(|k| SanType::IpAddress(IpAddr::V4(self.ip(k))))
            .collect();
        sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        self.leaf("server", &ca, sans, ExtendedKeyUsagePurpose::ServerAuth);
        self.leaf("client", &ca, vec![], ExtendedKeyUsagePurpose::ClientAuth);
        let other = new_ca("unrelated CA");
        let other = Issuer::new(other.1, other.2);
        self.leaf(
            "other-client",
            &other,
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write(&self.path("token"), &format!("{TOKEN}\n"));
    }

    fn leaf(
        &self,
        name: &str,
        issuer: &Issuer<'_, KeyPair>,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, issuer).expect("sign");
        write(&self.path(&format!("{name}.pem")), &cert.pem());
        write(&self.path(&format!("{name}-key.pem")), &key.serialize_pem());
    }
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn new_ca(cn: &str) -> (rcgen::Certificate, CertificateParams, KeyPair) {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-sign");
    (cert, params, key)
}

fn claim_network(port: u16) -> ([u8; 2], TcpListener) {
    let seed = RandomState::new().hash_one((
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    ));
    for attempt in 0..200u64 {
        let n = seed.wrapping_add(attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // 127.20-99.*: the flint tests' own labs draw from 127.100-199.*, so the two suites
        // never race for one /24 when nextest runs them side by side.
        let net = [20 + (n % 80) as u8, ((n >> 8) % 256) as u8];
        let ip = |host: u8| Ipv4Addr::new(127, net[0], net[1], host);
        let Ok(claim) = TcpListener::bind((ip(1), CLAIM_PORT)) else {
            continue;
        };
        let free = TcpListener::bind((ip(1), CONTROL_PORT)).is_ok()
            && (1..=MAX_NODES).all(|k| TcpListener::bind((ip(10 + k), port)).is_ok());
        if free {
            return (net, claim);
        }
    }
    panic!("no free /24 in 127.0.0.0/8 after 200 draws");
}

/// A running flint-testserver; dropping it kills it by PID.
pub struct Server {
    child: Child,
    pub log: PathBuf,
    control: String,
}

impl Server {
    /// Starts `flint-testserver ARGS --control ... --ready-file ...` and waits until it is ready.
    pub fn start(lab: &Lab, args: &[String]) -> Server {
        let ready = lab.path("ready.json");
        let _ = fs::remove_file(&ready);
        let log = lab.path("server.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_flint-testserver"))
            .args(args)
            .arg("--control")
            .arg(lab.control())
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn flint-testserver");
        let deadline = Instant::now() + START_TIMEOUT;
        while !ready.exists() {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "flint-testserver exited with {status} before it was ready:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("flint-testserver not ready after {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let info: Value = serde_json::from_str(&fs::read_to_string(&ready).expect("ready file"))
            .expect("ready file is JSON");
        assert_eq!(info["pid"], child.id());
        Server {
            child,
            log,
            control: lab.control(),
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Value {
        let out = curl(&[format!("http://{}{path}", self.control)]);
        assert_eq!(out.status, 200, "GET {path}: {}", out.body);
        out.json()
    }

    /// POSTs to the control API; returns the status and the JSON body.
    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let out = curl(&[
            "-X".into(),
            "POST".into(),
            "--data-binary".into(),
            body.into(),
            format!("http://{}{path}", self.control),
        ]);
        (out.status, out.json())
    }

    pub fn faults(&self, body: &str) {
        let (status, answer) = self.post("/faults", body);
        assert_eq!(status, 201, "arming {body}: {answer}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one curl run gave.
#[derive(Debug)]
pub struct Curl {
    /// curl's exit code: 0, or why the transfer failed (18 short body, 52 empty reply, ...).
    pub exit: i32,
    /// 0 when no HTTP answer came at all.
    pub status: u16,
    pub headers: String,
    pub body: String,
    pub elapsed: Duration,
}

impl Curl {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The last value of a response header (case-insensitive), over every response seen.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .next_back()
    }
}

static CALLS: AtomicUsize = AtomicUsize::new(0);

/// Runs curl with `args` (URL included) and bounded time; the headers and body go to files so a
/// cut-short answer is kept as it came.
pub fn curl(args: &[String]) -> Curl {
    let n = CALLS.fetch_add(1, Ordering::SeqCst);
    let stem = format!("flint-testserver-curl-{}-{n}", std::process::id());
    let head = std::env::temp_dir().join(format!("{stem}.head"));
    let body = std::env::temp_dir().join(format!("{stem}.body"));
    let started = Instant::now();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            CURL_MAX_SECS,
            "-w",
            "%{http_code}",
            "-D",
        ])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl (is it installed?)");
    let result = Curl {
        exit: out.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: fs::read_to_string(&head).unwrap_or_default(),
        body: String::from_utf8_lossy(&fs::read(&body).unwrap_or_default()).to_string(),
        elapsed: started.elapsed(),
    };
    let _ = fs::remove_file(&head);
    let _ = fs::remove_file(&body);
    result
}

/// The TLS options curl needs against a lab: the CA, and a client identity (`None` for none).
pub fn tls_args(lab: &Lab, identity: Option<&str>) -> Vec<String> {
    let mut a = vec!["--cacert".into(), path_arg(&lab.path("ca.pem"))];
    if let Some(name) = identity {
        a.push("--cert".into());
        a.push(path_arg(&lab.path(&format!("{name}.pem"))));
        a.push("--key".into());
        a.push(path_arg(&lab.path(&format!("{name}-key.pem"))));
    }
    a
}

pub fn path_arg(p: &Path) -> String {
    p.to_str().expect("temp paths are UTF-8").to_string()
}

pub fn bearer(token: &str) -> Vec<String> {
    vec!["-H".into(), format!("Authorization: Bearer {token}")]
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}
