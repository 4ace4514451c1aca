//! The chainfire/flaredb/IAM test double (`flint-testserver`, docs/test-server.md) run for one
//! lab: one process per service, one HTTPS listener per node on the node's own lab IP at the
//! service's port (so the Raft address flint derives, IP:port+1, is the one the server lists), the
//! control API on `127.A.B.1`, the process killed by PID when the test ends. Also the secrets a
//! chain needs (join token, IAM bootstrap token, the first admin's key pair, all made at test
//! time) and a node config for the whole first-boot chain.
use super::{Lab, Node, tail, wait_until};
use serde_json::{Value, json};
use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

pub const CHAINFIRE_PORT: u16 = 2379;
pub const FLAREDB_PORT: u16 = 2479;
pub const IAM_PORT: u16 = 8080;

pub const CHAINFIRE_MARKER: &str = ".chainfire-joined";
pub const FLAREDB_MARKER: &str = ".flaredb-joined";
pub const IAM_MARKER: &str = ".iam-setup-done";

/// The organization and first admin every node of a chain names.
pub const ORG: &str = "acme";
pub const ADMIN: &str = "admin";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// `flint-testserver`, built beside `flint` by `cargo build --workspace` / `cargo nextest run
/// --workspace`.
pub fn testserver_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_flint")).with_file_name("flint-testserver");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p flint-testserver` (`cargo nextest run \
         --workspace` and `cargo build --workspace` build it too)",
        path.display()
    );
    path
}

/// How a server is started besides its listeners.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// `--token-file`: every `/admin/*` request must carry this bearer token.
    pub token_file: Option<PathBuf>,
    /// `--client-ca`: mTLS, client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
    /// `--learner-ms` (cluster only).
    pub learner_ms: u64,
    /// `--faults`: one fault or a list, armed at start.
    pub faults: Option<Value>,
    /// `--leader` (cluster only; default node01).
    pub leader: Option<String>,
    /// `--role-case` (cluster only): `lower` (default) or `title`.
    pub role_case: Option<&'static str>,
    /// Each listener's certificate and key, in the listeners' order (each node its own, as
    /// `flint-boot prepare` writes them); empty: the lab's server certificate for all.
    pub identities: Vec<(PathBuf, PathBuf)>,
}

impl ServerOptions {
    /// The join token and mTLS with the lab's CA, as a real cluster would be run.
    pub fn secured(lab: &Lab, token_file: &Path) -> ServerOptions {
        ServerOptions {
            token_file: Some(token_file.to_path_buf()),
            client_ca: Some(lab.pki.path("ca.pem")),
            ..ServerOptions::default()
        }
    }
}

/// One `flint-testserver` process; dropping it kills it by PID.
pub struct TestServer {
    child: Child,
    pub kind: &'static str,
    /// The service port every listener uses.
    pub port: u16,
    control: SocketAddr,
    ips: Vec<Ipv4Addr>,
    log: PathBuf,
}

/// The lab's `127.A.B.1`: not a node address, so the control API never collides with a node.
fn control_addr(lab: &Lab, port: u16) -> SocketAddr {
    let [_, a, b, _] = lab.ip(0).octets();
    // 2379 -> 9379, 2479 -> 9479, 8080 -> 9080: one control port per service, none the Lab's
    // claim (2379) holds.
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, a, b, 1)), 9000 + port % 1000)
}

impl TestServer {
    /// A chainfire/flaredb cluster: listeners `node01..` on the lab IPs `0..nodes` at `port`, the
    /// first `initial` of them members from the start.
    pub fn cluster(
        lab: &Lab,
        port: u16,
        nodes: usize,
        initial: usize,
        opts: ServerOptions,
    ) -> TestServer {
        let mut args: Vec<String> = vec!["cluster".into()];
        args.push("--initial-members".into());
        args.push(initial.to_string());
        args.push("--learner-ms".into());
        args.push(opts.learner_ms.to_string());
        if let Some(leader) = &opts.leader {
            args.push("--leader".into());
            args.push(leader.clone());
        }
        if let Some(case) = opts.role_case {
            args.push("--role-case".into());
            args.push(case.into());
        }
        if let Some(token) = &opts.token_file {
            args.push("--token-file".into());
            args.push(token.display().to_string());
        }
        TestServer::start(lab, "cluster", port, nodes, args, &opts)
    }

    /// IAM on the lab IPs `0..nodes` at 8080, with the bootstrap token in `token_file` and mTLS.
    pub fn iam(lab: &Lab, nodes: usize, token_file: &Path) -> TestServer {
        TestServer::iam_with(lab, nodes, ServerOptions::secured(lab, token_file))
    }

    pub fn iam_with(lab: &Lab, nodes: usize, opts: ServerOptions) -> TestServer {
        let token = opts
            .token_file
            .as_ref()
            .expect("an IAM server needs a token file");
        let args = vec![
            "iam".to_string(),
            "--token-file".into(),
            token.display().to_string(),
        ];
        TestServer::start(lab, "iam", IAM_PORT, nodes, args, &opts)
    }

    fn start(
        lab: &Lab,
        kind: &'static str,
        port: u16,
        nodes: usize,
        mut args: Vec<String>,
        opts: &ServerOptions,
    ) -> TestServer {
        let dir = lab.path().join("servers");
        fs::create_dir_all(&dir).expect("create servers dir");
        let ready = dir.join(format!("{kind}-{port}.ready.json"));
        let log = dir.join(format!("{kind}-{port}.log"));
        let control = control_addr(lab, port);
        let ips: Vec<Ipv4Addr> = (0..nodes).map(|i| lab.ip(i)).collect();
        for ip in &ips {
            args.push("--listen".into());
            args.push(format!("{ip}:{port}"));
        }
        let shared = [(lab.pki.path("server.pem"), lab.pki.path("server-key.pem"))];
        let identities = if opts.identities.is_empty() {
            &shared[..]
        } else {
            &opts.identities[..]
        };
        for (cert, key) in identities {
            args.push("--cert".into());
            args.push(cert.display().to_string());
            args.push("--key".into());
            args.push(key.display().to_string());
        }
        if let Some(ca) = &opts.client_ca {
            args.push("--client-ca".into());
            args.push(ca.display().to_string());
        }
        if let Some(faults) = &opts.faults {
            let file = dir.join(format!("{kind}-{port}.faults.json"));
            fs::write(&file, faults.to_string()).expect("write faults file");
            args.push("--faults".into());
            args.push(file.display().to_string());
        }
        args.push("--control".into());
        args.push(control.to_string());
        args.push("--ready-file".into());
        args.push(ready.display().to_string());

        let out = fs::File::create(&log).expect("create server log");
        let child = Command::new(testserver_binary())
            .args(&args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .expect("spawn flint-testserver");
        let mut server = TestServer {
            child,
            kind,
            port,
            control,
            ips,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !ready.exists() {
            if let Some(status) = server.child.try_wait().expect("poll flint-testserver") {
                panic!(
                    "flint-testserver {kind} exited ({status}) before it was ready; args {args:?}\n{}",
                    server.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "flint-testserver {kind} not ready after {START_TIMEOUT:?}\n{}",
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The API URL of node `i` (`https://127.A.B.(10+i):port`).
    pub fn url(&self, i: usize) -> String {
        format!("https://{}:{}", self.ips[i], self.port)
    }

    /// Node `i`'s Raft address as the server lists it (port + 1).
    pub fn raft_addr(&self, i: usize) -> String {
        format!("{}:{}", self.ips[i], self.port + 1)
    }

    /// Everything the server logged so far (one line per request).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Arms one fault or a list (`POST /faults`); panics when the server refuses it.
    pub fn arm(&self, fault: Value) -> Value {
        let (status, body) = self.call("POST", "/faults", Some(&fault));
        assert_eq!(status, 201, "arming {fault} was refused: {body}");
        body
    }

    /// Disarms every fault.
    pub fn clear(&self) {
        let (status, body) = self.call("DELETE", "/faults", None);
        assert_eq!(status, 200, "DELETE /faults: {body}");
    }

    /// The faults still armed, with `applied` counts.
    pub fn faults(&self) -> Vec<Value> {
        let (status, body) = self.call("GET", "/faults", None);
        assert_eq!(status, 200, "GET /faults: {body}");
        body["faults"].as_array().cloned().unwrap_or_default()
    }

    pub fn state(&self) -> Value {
        let (status, body) = self.call("GET", "/state", None);
        assert_eq!(status, 200, "GET /state: {body}");
        body
    }

    /// Requests that reached `route` (health, list, add, iam-health, bootstrap), all listeners.
    pub fn requests(&self, route: &str) -> u64 {
        let state = self.state();
        state["requests"][route]
            .as_u64()
            .unwrap_or_else(|| panic!("no request counter {route:?} in {state}"))
    }

    /// Requests that reached `route` on one listener (`node02`).
    pub fn requests_on(&self, listener: &str, route: &str) -> u64 {
        self.state()["requests_by_listener"][listener][route]
            .as_u64()
            .unwrap_or(0)
    }

    /// The members the cluster lists, as `{"id", "raft_addr", "role"}`.
    pub fn members(&self) -> Vec<Value> {
        self.state()["members"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The members listed under `id` or at `raft_addr`.
    pub fn members_matching(&self, id: &str, raft_addr: &str) -> Vec<Value> {
        self.members()
            .into_iter()
            .filter(|m| m["id"] == id || m["raft_addr"] == raft_addr)
            .collect()
    }

    pub fn set_leader(&self, id: &str) -> Value {
        let (status, body) = self.call("POST", "/leader", Some(&json!({"id": id})));
        assert_eq!(status, 200, "POST /leader {id}: {body}");
        body
    }

    /// No leader for `ms` from now (`"leader": null`, the leader-to-be a candidate), then the
    /// same leader again.
    pub fn election(&self, ms: u64) -> Value {
        let (status, body) = self.call("POST", "/election", Some(&json!({"ms": ms})));
        assert_eq!(status, 200, "POST /election {ms}: {body}");
        body
    }

    pub fn remove_member(&self, id: &str) -> Value {
        let (status, body) = self.call("POST", "/members/remove", Some(&json!({"id": id})));
        assert_eq!(status, 200, "POST /members/remove {id}: {body}");
        body
    }

    /// Writes reach member `id` `ms` after the leader took them; `None`: never.
    pub fn kv_lag(&self, id: &str, ms: Option<u64>) -> Value {
        let (status, body) = self.call("POST", "/kv/lag", Some(&json!({"member": id, "ms": ms})));
        assert_eq!(status, 200, "POST /kv/lag {id} {ms:?}: {body}");
        body
    }

    /// A member as if an earlier run had added it.
    pub fn plant_member(&self, id: &str, raft_addr: &str) -> Value {
        let (status, body) = self.call(
            "POST",
            "/members/add",
            Some(&json!({"id": id, "raft_addr": raft_addr})),
        );
        assert_eq!(status, 201, "POST /members/add {id} {raft_addr}: {body}");
        body
    }

    /// One plain-HTTP/1.1 exchange with the control API: status and JSON body.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect_timeout(&self.control, CONTROL_TIMEOUT)
            .unwrap_or_else(|e| panic!("control API {} unreachable: {e}", self.control));
        stream
            .set_read_timeout(Some(CONTROL_TIMEOUT))
            .expect("set read timeout");
        stream
            .set_write_timeout(Some(CONTROL_TIMEOUT))
            .expect("set write timeout");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            self.control,
            payload.len()
        );
        stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path} to the control API: {e}"));
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("{method} {path}: reading the answer: {e}"));
        parse_http(&raw).unwrap_or_else(|| {
            panic!(
                "{method} {path}: not an HTTP answer: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }
}

fn parse_http(raw: &[u8]) -> Option<(u16, Value)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut decoded = Vec::new();
        let mut rest = body.as_slice();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = decoded;
    }
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    Some((status, value))
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of flint-testserver {} :{} ({}) ---\n{}",
                self.kind,
                self.port,
                self.log.display(),
                tail(&self.log, 60)
            );
        }
    }
}

/// A string no other test uses, for tokens.
pub fn random_hex(len: usize) -> String {
    let mut out = String::new();
    let mut n = 0u64;
    while out.len() < len {
        let word = RandomState::new().hash_one((
            std::process::id(),
            n,
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        ));
        out.push_str(&format!("{word:016x}"));
        n += 1;
    }
    out.truncate(len);
    out
}

/// The secrets of a chain, made at test time in `LAB/secrets`: the admin APIs' join token, IAM's
/// bootstrap token (both 0600), and the first admin's key pair. The private half stays in a file
/// no config names; only the public half is configured.
pub struct Secrets {
    pub join_token: String,
    pub iam_token: String,
    pub admin_public_pem: String,
    pub admin_private_pem: String,
    pub dir: PathBuf,
}

pub const JOIN_TOKEN_FILE: &str = "join-token";
pub const IAM_TOKEN_FILE: &str = "iam-token";
pub const ADMIN_PUBLIC_FILE: &str = "admin.pub.pem";
pub const ADMIN_PRIVATE_FILE: &str = "admin-key.pem";

impl Secrets {
    pub fn generate(lab: &Lab) -> Secrets {
        let dir = lab.path().join("secrets");
        fs::create_dir_all(&dir).expect("create secrets dir");
        let key = rcgen::KeyPair::generate().expect("generate the admin key pair");
        let secrets = Secrets {
            join_token: format!("join-{}", random_hex(32)),
            iam_token: format!("iam-{}", random_hex(32)),
            admin_public_pem: key.public_key_pem(),
            admin_private_pem: key.serialize_pem(),
            dir,
        };
        write_private(&secrets.path(JOIN_TOKEN_FILE), &secrets.join_token);
        write_private(&secrets.path(IAM_TOKEN_FILE), &secrets.iam_token);
        fs::write(secrets.path(ADMIN_PUBLIC_FILE), &secrets.admin_public_pem)
            .expect("write the admin public key");
        write_private(
            &secrets.path(ADMIN_PRIVATE_FILE),
            &secrets.admin_private_pem,
        );
        secrets
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The options of a cluster that requires the join token and client certificates.
    pub fn cluster_options(&self, lab: &Lab) -> ServerOptions {
        ServerOptions::secured(lab, &self.path(JOIN_TOKEN_FILE))
    }

    pub fn iam_options(&self, lab: &Lab) -> ServerOptions {
        ServerOptions::secured(lab, &self.path(IAM_TOKEN_FILE))
    }
}

/// Writes a secret file with mode 0600.
pub fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// Node `i` of a chain: its config folder holds the CA, the client certificate and key, the join
/// token, IAM's bootstrap token and the admin's public key; the config names the chainfire,
/// flaredb and IAM listeners of the lab (leader node01, peers node02 and node03, the local
/// service on node `i`'s own IP). `bootstrap`: one of the initial members.
pub fn chain_node(lab: &Lab, i: usize, secrets: &Secrets, bootstrap: bool) -> Node {
    let ip = lab.ip(i);
    let mut node = Node::new(lab, &Lab::node_name(i), ip, &[]);
    for file in [JOIN_TOKEN_FILE, IAM_TOKEN_FILE, ADMIN_PUBLIC_FILE] {
        node.install(&secrets.path(file), file);
    }
    let url = |k: usize, port: u16| format!("https://{}:{port}", lab.ip(k));
    let peers = |port: u16| vec![url(1, port), url(2, port)];
    node.config = json!({
        "node_id": Lab::node_name(i),
        "bootstrap": bootstrap,
        "leader_url": url(0, CHAINFIRE_PORT),
        "peers": peers(CHAINFIRE_PORT),
        "raft_addr": format!("{ip}:{}", CHAINFIRE_PORT + 1),
        "tls": {"ca": "ca.pem", "cert": "client.pem", "key": "client-key.pem"},
        "join_token_file": JOIN_TOKEN_FILE,
        "timeouts": {"total": "20s", "request": "5s", "connect": "2s"},
        "chainfire": {
            "leader_url": url(0, CHAINFIRE_PORT),
            "peers": peers(CHAINFIRE_PORT),
            "raft_addr": format!("{ip}:{}", CHAINFIRE_PORT + 1),
            "local_url": url(i, CHAINFIRE_PORT),
        },
        "flaredb": {
            "leader_url": url(0, FLAREDB_PORT),
            "peers": peers(FLAREDB_PORT),
            "raft_addr": format!("{ip}:{}", FLAREDB_PORT + 1),
            "local_url": url(i, FLAREDB_PORT),
        },
        "iam": {
            "url": url(i, IAM_PORT),
            "org": ORG,
            "admin": {"name": ADMIN, "public_key_file": ADMIN_PUBLIC_FILE},
            "bootstrap_token_file": IAM_TOKEN_FILE,
        },
    });
    node
}

/// Drops the peers everywhere in a chain config: every request goes to `leader_url` only.
pub fn without_peers(node: &mut Node) {
    node.config["peers"] = json!([]);
    for section in ["chainfire", "flaredb"] {
        node.config[section]["peers"] = json!([]);
    }
}

/// The marker `file` (`.chainfire-joined`, ...) of `node` as JSON, or None when absent.
pub fn marker(node: &Node, file: &str) -> Option<Value> {
    let path = node.state_dir.join(file);
    let text = fs::read_to_string(&path).ok()?;
    Some(
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("marker {} is not JSON ({e}): {text:?}", path.display())),
    )
}

/// Asserts that `node` is listed exactly once (by ID or Raft address) with its own Raft address,
/// and returns the member.
pub fn assert_member_once(server: &TestServer, node: &Node, raft_addr: &str) -> Value {
    let found = server.members_matching(&node.id, raft_addr);
    assert_eq!(
        found.len(),
        1,
        "{} at {raft_addr}: expected exactly one member in the {} server's state, found {found:#?}",
        node.id,
        server.port
    );
    let member = found.into_iter().next().expect("one member");
    assert_eq!(member["id"], node.id.as_str(), "{member}");
    assert_eq!(member["raft_addr"], raft_addr, "{member}");
    member
}

/// The invariant of every join: a marker only for a node the server lists.
pub fn assert_no_marker_without_membership(
    server: &TestServer,
    node: &Node,
    file: &str,
    raft_addr: &str,
) {
    if marker(node, file).is_some() {
        let found = server.members_matching(&node.id, raft_addr);
        assert!(
            found
                .iter()
                .any(|m| m["id"] == node.id.as_str() && m["raft_addr"] == raft_addr),
            "{} has {file} but the server lists no such member: {found:#?}",
            node.id
        );
    }
}

/// Waits until the server lists `id`.
pub fn wait_for_member(server: &TestServer, id: &str, timeout: Duration) -> Value {
    wait_until(&format!("the server to list {id}"), timeout, || {
        server.members().into_iter().find(|m| m["id"] == id)
    })
}
