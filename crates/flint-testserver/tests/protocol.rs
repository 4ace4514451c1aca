//! The server binary over real HTTPS, with curl as the client: every route, mTLS, the bearer
//! token, the control API, and the faults, each checked the way a client would notice it.

mod common;

use std::time::Duration;

use common::{Lab, Server, TOKEN, bearer, curl, path_arg, s, tls_args};
use serde_json::{Value, json};

const ADMIN_PORT: u16 = 2379;
const IAM_PORT: u16 = 8080;

/// `cluster` with `listeners` nodes (the first three members), TLS files from the lab, and `extra`.
fn cluster(lab: &Lab, listeners: u8, extra: &[String]) -> Server {
    let mut args = s(&["cluster"]);
    for k in 1..=listeners {
        args.push("--listen".into());
        args.push(lab.addr(k, ADMIN_PORT));
    }
    args.extend(s(&["--initial-members", "3"]));
    args.extend(tls_files(lab));
    args.extend_from_slice(extra);
    Server::start(lab, &args)
}

fn tls_files(lab: &Lab) -> Vec<String> {
    vec![
        "--cert".into(),
        path_arg(&lab.path("server.pem")),
        "--key".into(),
        path_arg(&lab.path("server-key.pem")),
    ]
}

fn mtls_and_token(lab: &Lab) -> Vec<String> {
    vec![
        "--client-ca".into(),
        path_arg(&lab.path("ca.pem")),
        "--token-file".into(),
        path_arg(&lab.path("token")),
    ]
}

/// A client call against node `k`: TLS args, then `args`, then the URL.
struct Client<'a> {
    lab: &'a Lab,
    identity: Option<&'a str>,
    token: Option<&'a str>,
    port: u16,
}

impl Client<'_> {
    fn url(&self, node: u8, path: &str) -> String {
        format!("https://{}{path}", self.lab.addr(node, self.port))
    }

    fn args(&self, extra: &[String]) -> Vec<String> {
        let mut a = tls_args(self.lab, self.identity);
        if let Some(t) = self.token {
            a.extend(bearer(t));
        }
        a.extend_from_slice(extra);
        a
    }

    fn get(&self, node: u8, path: &str) -> common::Curl {
        curl(&self.args(&[self.url(node, path)]))
    }

    fn post(&self, node: u8, path: &str, body: &str) -> common::Curl {
        self.call(node, path, &["--data-binary", body])
    }

    fn call(&self, node: u8, path: &str, extra: &[&str]) -> common::Curl {
        let mut a = s(extra);
        a.push(self.url(node, path));
        curl(&self.args(&a))
    }
}

fn add_body(lab: &Lab, node: u8) -> String {
    json!({"id": format!("node{node:02}"), "raft_addr": lab.addr(node, ADMIN_PORT + 1)}).to_string()
}

#[test]
fn cluster_speaks_the_admin_protocol_over_mtls_with_a_token() {
    let lab = Lab::new(ADMIN_PORT);
    let mut extra = mtls_and_token(&lab);
    extra.extend(s(&["--leader", "node01"]));
    let server = cluster(&lab, 4, &extra);
    let client = Client {
        lab: &lab,
        identity: Some("client"),
        token: Some(TOKEN),
        port: ADMIN_PORT,
    };
    let anonymous = Client {
        token: None,
        ..client
    };

    // /health on every listener, members and the node that has not joined alike, no token.
    for k in 1..=4 {
        let h = anonymous.get(k, "/health");
        assert_eq!((h.exit, h.status), (0, 200), "{h:?}");
        assert_eq!(h.json(), json!({"status": "healthy"}));
        assert_eq!(
            h.header("content-type").as_deref(),
            Some("application/json")
        );
    }

    // /admin/* needs the token.
    let no_token = anonymous.get(1, "/admin/member/list");
    assert_eq!(no_token.status, 401);
    assert_eq!(no_token.json()["error"], "missing or wrong bearer token");
    let wrong = Client {
        token: Some("not-it"),
        ..client
    };
    assert_eq!(wrong.get(1, "/admin/member/list").status, 401);

    // Any listener answers the list with the shared state, the non-member too.
    let list = client.get(4, "/admin/member/list");
    assert_eq!(list.status, 200, "{list:?}");
    let expected_members: Vec<Value> = (1..=3)
        .map(|k| {
            json!({"id": format!("node0{k}"), "raft_addr": lab.addr(k, 2380),
                   "role": if k == 1 { "leader" } else { "follower" }})
        })
        .collect();
    assert_eq!(
        list.json(),
        json!({"leader": "node01", "members": expected_members})
    );

    // A follower points at the leader; curl follows the 307 with the same POST body.
    let hint = client.post(2, "/admin/member/add", &add_body(&lab, 4));
    assert_eq!(hint.status, 307);
    assert_eq!(
        hint.header("location"),
        Some(format!(
            "https://{}/admin/member/add",
            lab.addr(1, ADMIN_PORT)
        ))
    );
    let followed = client.call(
        2,
        "/admin/member/add",
        &[
            "-L",
            "--location-trusted",
            "--data-binary",
            &add_body(&lab, 4),
        ],
    );
    assert_eq!(followed.status, 201, "{followed:?}");
    let node04 = json!({"id": "node04", "raft_addr": lab.addr(4, 2380), "role": "follower"});
    assert_eq!(followed.json(), node04);

    // Conflicts name the existing member.
    let again = client.post(1, "/admin/member/add", &add_body(&lab, 4));
    assert_eq!(again.status, 409);
    assert_eq!(
        again.json(),
        json!({"error": "already a member", "member": node04})
    );
    let moved = client.post(
        1,
        "/admin/member/add",
        &json!({"id": "node04", "raft_addr": "127.0.0.1:4444"}).to_string(),
    );
    assert_eq!(moved.status, 409);
    assert_eq!(moved.json()["member"], node04);
    let stolen = client.post(
        1,
        "/admin/member/add",
        &json!({"id": "node05", "raft_addr": lab.addr(4, 2380)}).to_string(),
    );
    assert_eq!(stolen.status, 409);
    assert_eq!(stolen.json()["member"]["id"], "node04");

    // Bad requests.
    let bad = client.post(1, "/admin/member/add", r#"{"id": "node05"}"#);
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("raft_addr"));
    assert_eq!(client.get(1, "/admin/member/add").status, 405);
    assert_eq!(client.get(1, "/nope").status, 404);

    // mTLS: no client certificate, or one from another CA, gets no HTTP answer at all.
    for identity in [None, Some("other-client")] {
        let refused = Client {
            identity,
            ..anonymous
        }
        .get(1, "/health");
        assert_ne!(refused.exit, 0, "{identity:?}: {refused:?}");
        assert_eq!(refused.status, 0, "{identity:?}: {refused:?}");
    }

    // HTTP/1.1 keep-alive: the second request rides the first connection.
    let twice = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code} %{num_connects}\\n"])
        .args(tls_args(&lab, Some("client")))
        .args([client.url(1, "/health"), client.url(1, "/health")])
        .output()
        .expect("run curl");
    assert_eq!(
        String::from_utf8_lossy(&twice.stdout),
        "200 1\n200 0\n",
        "the second transfer opened a connection of its own"
    );

    let state = server.get("/state");
    assert_eq!(state["leader"], "node01");
    assert_eq!(state["members"].as_array().unwrap().len(), 4);
    assert_eq!(state["requests"]["add"], 7);
    assert_eq!(state["requests"]["list"], 3);
    assert_eq!(state["requests_by_listener"]["node02"]["add"], 2);

    let log = server.log();
    assert!(log.contains("node02 ") && log.contains("POST /admin/member/add -> 307"));
    assert!(log.contains("TLS handshake with"), "{log}");
    assert!(!log.contains(TOKEN), "the token reached the log");
}

#[test]
fn faults_misbehave_as_asked_and_disarm() {
    let lab = Lab::new(ADMIN_PORT);
    let server = cluster(
        &lab,
        4,
        &["--token-file".into(), path_arg(&lab.path("token"))],
    );
    let client = Client {
        lab: &lab,
        identity: None,
        token: Some(TOKEN),
        port: ADMIN_PORT,
    };
    let list = |node| client.get(node, "/admin/member/list");

    server.faults(r#"{"route": "list", "kind": "status", "code": 503, "times": 1}"#);
    let r = list(1);
    assert_eq!(r.status, 503);
    assert!(r.json()["error"].is_string());
    assert_eq!(list(1).status, 200, "a times-1 fault fires once");

    server.faults(r#"{"route": "list", "kind": "too-many", "seconds": 2, "times": 1}"#);
    let r = list(1);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("2"));

    // Leader hints fire on followers only: the leader answers normally and the fault stays.
    server.faults(r#"{"route": "add", "kind": "leader-hint", "code": 421, "times": 1}"#);
    let hint = client.post(3, "/admin/member/add", &add_body(&lab, 4));
    assert_eq!(hint.status, 421);
    assert_eq!(
        hint.json()["leader"],
        format!("https://{}", lab.addr(1, ADMIN_PORT))
    );
    server.faults(r#"{"route": "add", "kind": "leader-hint", "code": 503}"#);
    assert_eq!(
        client
            .post(1, "/admin/member/add", &add_body(&lab, 4))
            .status,
        201
    );
    assert_eq!(server.get("/faults")["faults"][0]["applied"], 0);
    let (status, _) = server.post("/faults", "");
    assert_eq!(status, 400);
    assert_eq!(
        curl(&s(&[
            "-X",
            "DELETE",
            &format!("http://{}/faults", lab.control())
        ]))
        .status,
        200
    );
    assert_eq!(server.get("/faults"), json!({"faults": []}));

    server.faults(r#"{"route": "list", "kind": "redirect-to-leader", "code": 308, "times": 1}"#);
    let r = list(3);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!(
            "https://{}/admin/member/list",
            lab.addr(1, ADMIN_PORT)
        ))
    );

    server.faults(r#"{"route": "health", "kind": "redirect-loop", "times": 10}"#);
    let looped = client.call(1, "/health", &["-L", "--max-redirs", "3"]);
    assert_eq!(looped.exit, 47, "curl: too many redirects: {looped:?}");
    assert_eq!(server.get("/faults")["faults"][0]["times"], 6);
    curl(&s(&[
        "-X",
        "DELETE",
        &format!("http://{}/faults", lab.control()),
    ]));

    // Broken transports: no answer, half a head, half a body.
    server.faults(r#"{"route": "list", "kind": "drop", "times": 1}"#);
    let r = list(1);
    assert_eq!((r.exit, r.status), (52, 0), "empty reply: {r:?}");
    server.faults(r#"{"route": "list", "kind": "drop", "after_bytes": 12, "times": 1}"#);
    let r = list(1);
    assert_eq!(
        (r.exit, r.status),
        (52, 0),
        "12 bytes are no status line: {r:?}"
    );
    server.faults(r#"{"route": "list", "kind": "drop", "after_bytes": 30, "times": 1}"#);
    let r = list(1);
    assert!(r.headers.starts_with("HTTP/1.1 200 OK\r\n"), "{r:?}");
    assert!(
        r.header("content-length").is_none() && r.body.is_empty(),
        "{r:?}"
    );
    server.faults(r#"{"route": "list", "kind": "truncated-json", "times": 1}"#);
    let r = list(1);
    assert_eq!((r.exit, r.status), (18, 200), "short body: {r:?}");
    let full: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(r.body.len(), full / 2);
    assert!(serde_json::from_str::<Value>(&r.body).is_err());

    server.faults(r#"{"route": "list", "kind": "malformed-json", "times": 1}"#);
    let r = list(1);
    assert_eq!((r.exit, r.status), (0, 200));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(serde_json::from_str::<Value>(&r.body).is_err(), "{r:?}");

    server.faults(r#"{"route": "list", "kind": "wrong-content-type", "times": 1}"#);
    let r = list(1);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("text/html"));
    assert!(r.body.contains("<html>"));

    server.faults(r#"{"route": "list", "kind": "token-required", "times": 1}"#);
    assert_eq!(list(1).status, 401, "401 even with the right token");

    server.faults(r#"{"route": "health", "kind": "delay", "ms": 600, "times": 1}"#);
    let slow = client.get(2, "/health");
    assert_eq!(slow.status, 200);
    assert!(slow.elapsed >= Duration::from_millis(600), "{slow:?}");

    // Faults scoped to one listener leave the others alone.
    server.faults(r#"{"route": "health", "kind": "status", "code": 502, "listener": "node02"}"#);
    assert_eq!(client.get(1, "/health").status, 200);
    assert_eq!(client.get(2, "/health").status, 502);
    curl(&s(&[
        "-X",
        "DELETE",
        &format!("http://{}/faults", lab.control()),
    ]));

    // Made-up conflicts: as if an earlier run had added us, or someone else with our id.
    server.faults(
        r#"[{"route": "add", "kind": "conflict-same", "times": 1},
                      {"route": "add", "kind": "conflict-other", "times": 1}]"#,
    );
    let same = client.post(1, "/admin/member/add", &add_body(&lab, 5));
    assert_eq!(same.status, 409);
    assert_eq!(same.json()["member"]["raft_addr"], lab.addr(5, 2380));
    let other = client.post(1, "/admin/member/add", &add_body(&lab, 5));
    assert_eq!(other.status, 409);
    assert_eq!(other.json()["member"]["id"], "node05");
    assert_ne!(other.json()["member"]["raft_addr"], lab.addr(5, 2380));
    assert_eq!(server.get("/state")["members"].as_array().unwrap().len(), 4);

    // An add whose answer is lost but which happened: the retry sees 409 with our raft_addr.
    server.faults(r#"{"route": "add", "kind": "drop", "apply": true, "times": 1}"#);
    assert_eq!(
        client.post(1, "/admin/member/add", &add_body(&lab, 5)).exit,
        52
    );
    let retry = client.post(1, "/admin/member/add", &add_body(&lab, 5));
    assert_eq!(retry.status, 409);
    assert_eq!(retry.json()["member"]["raft_addr"], lab.addr(5, 2380));

    // Leader change between list and add.
    server.faults(r#"{"route": "add", "kind": "leader-change", "times": 1}"#);
    let body = json!({"id": "node06", "raft_addr": lab.addr(6, 2380)}).to_string();
    let moved = client.post(1, "/admin/member/add", &body);
    assert_eq!(moved.status, 307);
    assert_eq!(
        moved.header("location"),
        Some(format!(
            "https://{}/admin/member/add",
            lab.addr(2, ADMIN_PORT)
        ))
    );
    assert_eq!(server.get("/state")["leader"], "node02");
    assert_eq!(client.post(1, "/admin/member/add", &body).status, 307);
    assert_eq!(client.post(2, "/admin/member/add", &body).status, 201);

    // The control API moves the leader and removes members behind the client's back.
    let (status, state) = server.post("/leader", r#"{"id": "node03"}"#);
    assert_eq!((status, state["leader"].as_str()), (200, Some("node03")));
    assert_eq!(server.post("/leader", r#"{"id": "node09"}"#).0, 404);
    let (status, state) = server.post("/members/remove", r#"{"id": "node06"}"#);
    assert_eq!(status, 200);
    assert_eq!(state["members"].as_array().unwrap().len(), 5);
    assert_eq!(server.post("/members/remove", r#"{"id": "node03"}"#).0, 409);
    let planted = r#"{"id": "node07", "raft_addr": "127.0.0.1:7"}"#;
    let (status, state) = server.post("/members/add", planted);
    assert_eq!(
        (status, state["members"][5]["id"].as_str()),
        (201, Some("node07"))
    );
    assert_eq!(server.post("/members/add", planted).0, 409);

    // Faults that could never fire are refused with the reason.
    let (status, answer) = server.post("/faults", r#"{"route": "bootstrap", "kind": "drop"}"#);
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("not served"));

    let log = server.log();
    assert!(log.contains("fault=#"), "{log}");
    assert!(log.contains("dropped after 0 bytes"), "{log}");
    assert!(!log.contains(TOKEN));
}

#[test]
fn new_members_are_learners_for_a_while() {
    let lab = Lab::new(ADMIN_PORT);
    let server = cluster(&lab, 4, &s(&["--learner-ms", "1000"]));
    let client = Client {
        lab: &lab,
        identity: None,
        token: None,
        port: ADMIN_PORT,
    };
    let t0 = std::time::Instant::now();
    let added = client.post(1, "/admin/member/add", &add_body(&lab, 4));
    assert_eq!(
        (added.status, added.json()["role"].as_str()),
        (201, Some("learner"))
    );
    let role = || client.get(4, "/admin/member/list").json()["members"][3]["role"].clone();
    assert_eq!(role(), "learner");
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(t0.elapsed()));
    assert_eq!(role(), "follower");
    drop(server);
}

#[test]
fn iam_bootstraps_once_for_every_listener() {
    let lab = Lab::new(IAM_PORT);
    let mut args = s(&["iam", "--listen"]);
    args.push(lab.addr(1, IAM_PORT));
    args.push("--listen".into());
    args.push(lab.addr(2, IAM_PORT));
    args.extend(tls_files(&lab));
    args.extend(mtls_and_token(&lab));
    let server = Server::start(&lab, &args);
    let client = Client {
        lab: &lab,
        identity: Some("client"),
        token: Some(TOKEN),
        port: IAM_PORT,
    };
    let public_key = rcgen::KeyPair::generate().unwrap().public_key_pem();
    let body = |org: &str, admin: &str| {
        json!({"org": org, "admin": {"name": admin, "public_key": public_key}}).to_string()
    };

    assert_eq!(
        client.get(2, "/health").json(),
        json!({"status": "healthy"})
    );
    let anonymous = Client {
        token: None,
        ..client
    };
    assert_eq!(
        anonymous
            .post(1, "/admin/bootstrap", &body("acme", "alice"))
            .status,
        401
    );

    server.faults(r#"{"route": "bootstrap", "kind": "status", "code": 503, "times": 1}"#);
    assert_eq!(
        client
            .post(1, "/admin/bootstrap", &body("acme", "alice"))
            .status,
        503
    );
    assert_eq!(server.get("/state")["iam"]["bootstrapped"], false);

    let created = client.post(1, "/admin/bootstrap", &body("acme", "alice"));
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(
        created.json(),
        json!({"org": "acme", "admin": {"name": "alice"}})
    );
    // The other listener shares the state: a second bootstrap learns what exists.
    let second = client.post(2, "/admin/bootstrap", &body("other", "bob"));
    assert_eq!(second.status, 409);
    assert_eq!(
        second.json(),
        json!({"error": "already bootstrapped", "org": "acme", "admin": {"name": "alice"}})
    );

    // Private keys never pass, not even in a field of their own.
    let private = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let leaked = json!({"org": "acme", "admin": {"name": "alice", "public_key": private}});
    assert_eq!(
        client
            .post(1, "/admin/bootstrap", &leaked.to_string())
            .status,
        400
    );
    let field = json!({"org": "acme", "admin": {"name": "alice", "public_key": public_key,
                                                "private_key": "x"}});
    let r = client.post(1, "/admin/bootstrap", &field.to_string());
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("private_key"));

    server.faults(r#"{"route": "bootstrap", "kind": "conflict-other", "org": "evil", "times": 1}"#);
    let r = client.post(1, "/admin/bootstrap", &body("acme", "alice"));
    assert_eq!((r.status, r.json()["org"].as_str()), (409, Some("evil")));

    let state = server.get("/state");
    assert_eq!(state["iam"]["bootstrapped"], true);
    assert_eq!(state["iam"]["org"], "acme");
    assert_eq!(state["iam"]["admin"], json!({"name": "alice"}));
    assert_eq!(state["iam"]["public_key"], public_key.as_str());
    assert_eq!(state["requests"]["bootstrap"], 7);
    assert_eq!(state["requests"]["iam-health"], 1);
    let log = server.log();
    assert!(!log.contains("PRIVATE KEY") && !log.contains("PUBLIC KEY") && !log.contains(TOKEN));
}

#[test]
fn start_up_faults_and_bad_command_lines() {
    let lab = Lab::new(ADMIN_PORT);
    let faults = lab.path("faults.json");
    std::fs::write(
        &faults,
        r#"[{"route": "list", "kind": "status", "code": 500, "times": 1}]"#,
    )
    .unwrap();
    let server = cluster(&lab, 3, &["--faults".into(), path_arg(&faults)]);
    let client = Client {
        lab: &lab,
        identity: None,
        token: None,
        port: ADMIN_PORT,
    };
    assert_eq!(client.get(1, "/admin/member/list").status, 500);
    assert_eq!(client.get(1, "/admin/member/list").status, 200);
    drop(server);

    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_flint-testserver"))
            .args(args)
            .output()
            .expect("run flint-testserver")
    };
    let cert = path_arg(&lab.path("server.pem"));
    let key = path_arg(&lab.path("server-key.pem"));
    let control = lab.control();
    let outside = run(&[
        "cluster",
        "--listen",
        "10.1.2.3:2379",
        "--initial-members",
        "1",
        "--cert",
        &cert,
        "--key",
        &key,
        "--control",
        &control,
    ]);
    assert_eq!(outside.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&outside.stderr).contains("loopback"));
    let listen = lab.addr(1, ADMIN_PORT);
    let no_cert = run(&[
        "cluster",
        "--listen",
        &listen,
        "--initial-members",
        "1",
        "--cert",
        "/nonexistent.pem",
        "--key",
        &key,
        "--control",
        &control,
    ]);
    assert_eq!(no_cert.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_cert.stderr).contains("/nonexistent.pem"));
}
