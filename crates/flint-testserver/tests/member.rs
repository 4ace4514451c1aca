//! Member mode through the binary: one `flint-testserver member` process per node, on its own
//! loopback address, heartbeating the others over HTTPS with client certificates; curl as the
//! client, with a client certificate. Every wait has a deadline; processes are killed by PID.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Curl, Lab, TOKEN, bearer, curl, path_arg, s, tls_args};
use serde_json::{Value, json};

const ADMIN_PORT: u16 = 2379;
const IAM_PORT: u16 = 8080;
/// Each node's control API, on its own address.
const CONTROL_PORT: u16 = 9001;
const START_TIMEOUT: Duration = Duration::from_secs(15);

fn id(k: u8) -> String {
    format!("node{k:02}")
}

/// One member process; dropping it kills it (SIGKILL, by PID).
struct Member {
    k: u8,
    child: Option<Child>,
    log: PathBuf,
    control: String,
}

impl Member {
    /// `flint-testserver member` as node `k` of `nodes` (all of them its peers), with the lab's
    /// CA for mTLS both ways, the lab's client certificate to talk to peers, and the token.
    fn start(lab: &Lab, kind: &str, port: u16, k: u8, initial: &[u8], nodes: &[u8]) -> Member {
        let ready = lab.path(&format!("ready-{k}.json"));
        let _ = fs::remove_file(&ready);
        let log = lab.path(&format!("member-{k}.log"));
        let control = lab.addr(k, CONTROL_PORT);
        let mut args = s(&["member", "--kind", kind, "--id", &id(k)]);
        args.extend(["--listen".into(), lab.addr(k, port)]);
        let initial: Vec<String> = initial.iter().map(|&i| id(i)).collect();
        args.extend(["--initial".into(), initial.join(",")]);
        for &j in nodes.iter().filter(|&&j| j != k) {
            args.push("--peer".into());
            args.push(format!("{}=https://{}", id(j), lab.addr(j, port)));
        }
        for (flag, file) in [
            ("--cert", "server.pem"),
            ("--key", "server-key.pem"),
            ("--client-ca", "ca.pem"),
            ("--client-cert", "client.pem"),
            ("--client-key", "client-key.pem"),
            ("--token-file", "token"),
        ] {
            args.push(flag.into());
            args.push(path_arg(&lab.path(file)));
        }
        args.extend(["--control".into(), control.clone()]);
        args.extend(["--ready-file".into(), path_arg(&ready)]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_flint-testserver"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn flint-testserver member");
        let deadline = Instant::now() + START_TIMEOUT;
        while !ready.exists() {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!(
                    "node {k} exited with {status} before it was ready:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {k} not ready after {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let info: Value = serde_json::from_str(&fs::read_to_string(&ready).unwrap()).unwrap();
        assert_eq!(info["pid"], child.id());
        assert_eq!(info["id"], id(k));
        Member {
            k,
            child: Some(child),
            log,
            control,
        }
    }

    /// SIGKILL by PID: the node vanishes without a word, as a VM that is switched off.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn state(&self) -> Value {
        let out = curl(&[format!("http://{}/state", self.control)]);
        assert_eq!(out.status, 200, "node {} /state: {out:?}", self.k);
        out.json()
    }

    fn control_post(&self, path: &str, body: &str) -> (u16, Value) {
        let out = curl(&s(&[
            "-X",
            "POST",
            "--data-binary",
            body,
            &format!("http://{}{path}", self.control),
        ]));
        (out.status, out.json())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A curl call with the lab's CA and client certificate, the token when asked.
fn call(lab: &Lab, port: u16, k: u8, path: &str, token: bool, extra: &[&str]) -> Curl {
    let mut a = tls_args(lab, Some("client"));
    if token {
        a.extend(bearer(TOKEN));
    }
    a.extend(s(extra));
    a.push(format!("https://{}{path}", lab.addr(k, port)));
    curl(&a)
}

fn list(lab: &Lab, k: u8) -> Curl {
    call(lab, ADMIN_PORT, k, "/admin/member/list", true, &[])
}

fn put(lab: &Lab, k: u8, key: &str, value: &str) -> Curl {
    let path = format!("/v1/kv/{key}");
    call(
        lab,
        ADMIN_PORT,
        k,
        &path,
        false,
        &["-X", "PUT", "--data-binary", value],
    )
}

fn get(lab: &Lab, k: u8, key: &str) -> Curl {
    call(lab, ADMIN_PORT, k, &format!("/v1/kv/{key}"), false, &[])
}

fn add(lab: &Lab, k: u8, node: u8) -> Curl {
    let body = json!({"id": id(node), "raft_addr": lab.addr(node, ADMIN_PORT + 1)}).to_string();
    call(
        lab,
        ADMIN_PORT,
        k,
        "/admin/member/add",
        true,
        &["--data-binary", &body],
    )
}

/// Polls `check` every 100 ms until it gives a value, or panics at the deadline with what it
/// saw last.
fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not within {within:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Node `k`'s list names `leader` and lists `members` (ids, in order).
fn lists(lab: &Lab, k: u8, leader: Option<&str>, members: &[u8]) -> Result<Value, String> {
    let r = list(lab, k);
    if r.status != 200 {
        return Err(format!("{r:?}"));
    }
    let v = r.json();
    let ids: Vec<String> = v["members"]
        .as_array()
        .map(|m| m.iter().map(|m| m["id"].as_str().unwrap_or("").to_owned()))
        .into_iter()
        .flatten()
        .collect();
    let want: Vec<String> = members.iter().map(|&m| id(m)).collect();
    if v["leader"].as_str() == leader && ids == want {
        Ok(v)
    } else {
        Err(v.to_string())
    }
}

fn url(lab: &Lab, k: u8) -> String {
    format!("https://{}", lab.addr(k, ADMIN_PORT))
}

#[test]
fn members_replicate_fail_over_and_lose_quorum() {
    let lab = Lab::new(ADMIN_PORT);
    let all = [1, 2, 3, 4];
    let mut nodes: Vec<Member> = all
        .iter()
        .map(|&k| Member::start(&lab, "cluster", ADMIN_PORT, k, &[1, 2, 3], &all))
        .collect();
    let t0 = Instant::now();

    // 1. One leader, the same members, on every node (node04, not a member, too).
    for k in all {
        let v = wait_for(
            "every node lists node01 as leader",
            Duration::from_secs(10),
            || lists(&lab, k, Some("node01"), &[1, 2, 3]),
        );
        let roles: Vec<&str> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["leader", "follower", "follower"], "node {k}: {v}");
        assert_eq!(v["members"][2]["raft_addr"], lab.addr(3, ADMIN_PORT + 1));
    }
    eprintln!("a leader after {:?}", t0.elapsed());
    let h = call(&lab, ADMIN_PORT, 4, "/health", false, &[]);
    assert_eq!((h.status, h.json()), (200, json!({"status": "healthy"})));

    // A write on the leader is read on the followers, from their own copies, within ~1 s.
    let written = put(&lab, 1, "flint/check", "\"one\"");
    assert_eq!(written.status, 204, "{written:?}");
    for k in [2, 3] {
        wait_for(
            "the followers read the write",
            Duration::from_secs(1),
            || {
                let r = get(&lab, k, "flint/check");
                (r.status == 200 && r.body == "\"one\"")
                    .then_some(())
                    .ok_or(format!("{r:?}"))
            },
        );
    }
    // A follower refuses a write and names the leader's URL.
    let refused = put(&lab, 2, "flint/check", "\"two\"");
    assert_eq!(refused.status, 421, "{refused:?}");
    assert_eq!(
        refused.json(),
        json!({"error": "not the leader", "leader": url(&lab, 1)})
    );

    // The admin API keeps its token; the heartbeat route needs a client certificate and never
    // shows a token.
    let anonymous = curl(&{
        let mut a = tls_args(&lab, Some("client"));
        a.push(format!("{}/admin/member/list", url(&lab, 2)));
        a
    });
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let internal = call(&lab, ADMIN_PORT, 2, "/internal/state", false, &[]);
    assert_eq!(internal.status, 200, "{internal:?}");
    assert_eq!(internal.json()["id"], "node02");
    assert!(!internal.body.contains(TOKEN));
    let no_cert = curl(&{
        let mut a = tls_args(&lab, None);
        a.push(format!("{}/internal/state", url(&lab, 2)));
        a
    });
    assert_eq!(no_cert.status, 0, "mTLS: {no_cert:?}");

    // A follower that never catches up shows no value; set back, it does.
    let (status, _) = nodes[2].control_post("/kv/lag", r#"{"member": "node03", "ms": null}"#);
    assert_eq!(status, 200);
    assert_eq!(
        nodes[2]
            .control_post("/kv/lag", r#"{"member": "node02", "ms": 1}"#)
            .0,
        400
    );
    assert_eq!(put(&lab, 1, "flint/lag", "x").status, 204);
    wait_for("node02 reads", Duration::from_secs(1), || {
        let r = get(&lab, 2, "flint/lag");
        (r.status == 200).then_some(()).ok_or(format!("{r:?}"))
    });
    assert_eq!(get(&lab, 3, "flint/lag").status, 404);
    nodes[2].control_post("/kv/lag", r#"{"ms": 0}"#);
    assert_eq!(get(&lab, 3, "flint/lag").status, 200);

    // Faults work per node; one scoped to another node, or leader-change, is refused.
    let (status, _) = nodes[0].control_post(
        "/faults",
        r#"{"route": "kv-put", "kind": "status", "code": 503, "times": 1}"#,
    );
    assert_eq!(status, 201);
    assert_eq!(put(&lab, 1, "flint/f", "x").status, 503);
    assert_eq!(put(&lab, 1, "flint/f", "x").status, 204);
    let (status, answer) = nodes[0].control_post(
        "/faults",
        r#"{"route": "add", "kind": "drop", "listener": "node02"}"#,
    );
    assert_eq!(status, 400, "{answer}");
    let (status, _) =
        nodes[0].control_post("/faults", r#"{"route": "add", "kind": "leader-change"}"#);
    assert_eq!(status, 400);
    assert_eq!(
        nodes[0].control_post("/leader", r#"{"id": "node02"}"#).0,
        400
    );

    // 2. node04 added through the leader: its own process sees itself a member.
    let added = add(&lab, 1, 4);
    assert_eq!(added.status, 201, "{added:?}");
    let node04 =
        json!({"id": "node04", "raft_addr": lab.addr(4, ADMIN_PORT + 1), "role": "follower"});
    assert_eq!(added.json(), node04);
    wait_for("node04 lists itself", Duration::from_secs(3), || {
        lists(&lab, 4, Some("node01"), &all)
    });
    assert_eq!(nodes[3].state()["member"], true);
    assert_eq!(nodes[3].state()["voter"], true);
    let again = add(&lab, 1, 4);
    assert_eq!(again.status, 409);
    assert_eq!(
        again.json(),
        json!({"error": "already a member", "member": node04})
    );
    let via_follower = add(&lab, 3, 4);
    assert_eq!(via_follower.status, 421);
    assert_eq!(via_follower.json()["leader"], url(&lab, 1));

    // 3. The leader dies: the next voter leads, with the state, on every node left.
    nodes[0].kill();
    let killed = Instant::now();
    for k in [2, 3, 4] {
        let v = wait_for("node02 leads", Duration::from_secs(6), || {
            lists(&lab, k, Some("node02"), &all)
        });
        assert_eq!(v["members"][1]["role"], "leader");
    }
    let took = killed.elapsed();
    eprintln!("node02 leads everywhere {took:?} after node01 died");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(get(&lab, 2, "flint/check").body, "\"one\"");
    let written = put(&lab, 2, "flint/after", "\"two\"");
    assert_eq!(written.status, 204, "{written:?}");
    wait_for(
        "node03 reads the new leader's write",
        Duration::from_secs(1),
        || {
            let r = get(&lab, 3, "flint/after");
            (r.status == 200 && r.body == "\"two\"")
                .then_some(())
                .ok_or(format!("{r:?}"))
        },
    );
    let hint = put(&lab, 4, "flint/after", "x");
    assert_eq!(
        (hint.status, hint.json()["leader"].clone()),
        (421, json!(url(&lab, 2)))
    );

    // 4. Two of four voters left: no majority, no leader; changes answer 503, leader null.
    nodes[1].kill();
    for k in [3, 4] {
        wait_for("no leader", Duration::from_secs(6), || {
            lists(&lab, k, None, &all)
        });
    }
    let v = list(&lab, 3).json();
    assert_eq!(v["members"][2]["role"], "candidate", "{v}");
    for refused in [
        add(&lab, 3, 5),
        add(&lab, 4, 5),
        put(&lab, 3, "flint/x", "x"),
    ] {
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(
            refused.json(),
            json!({"error": "no leader elected yet", "leader": null})
        );
    }
    // Reads still come from the local copy.
    assert_eq!(get(&lab, 3, "flint/after").status, 200);
    let state = nodes[2].state();
    assert_eq!(state["leader"], Value::Null);
    assert_eq!(state["peers"]["node02"]["alive"], false);
    assert_eq!(state["peers"]["node04"]["alive"], true);

    // 5. node01 comes back with nothing on disk: a majority again; it leads, with the state it
    // takes from the voters it reaches.
    nodes[0] = Member::start(&lab, "cluster", ADMIN_PORT, 1, &[1, 2, 3], &all);
    for k in [1, 3, 4] {
        wait_for("node01 leads again", Duration::from_secs(6), || {
            lists(&lab, k, Some("node01"), &all)
        });
    }
    assert_eq!(get(&lab, 1, "flint/after").body, "\"two\"");
    assert_eq!(put(&lab, 1, "flint/back", "x").status, 204);
    assert!(nodes[0].state()["term"].as_u64().unwrap() >= 3);

    for n in &nodes {
        let log = n.log();
        assert!(
            !log.contains(TOKEN),
            "node {}: the token reached the log",
            n.k
        );
    }
    assert!(
        nodes[1].log().contains("node02: leads"),
        "{}",
        nodes[1].log()
    );
    assert!(
        nodes[3].log().contains("it is a member"),
        "{}",
        nodes[3].log()
    );
}

#[test]
fn iam_members_bootstrap_once_for_the_cluster() {
    let lab = Lab::new(IAM_PORT);
    let all = [1, 2, 3];
    let nodes: Vec<Member> = all
        .iter()
        .map(|&k| Member::start(&lab, "iam", IAM_PORT, k, &all, &all))
        .collect();
    for n in &nodes {
        wait_for("every node follows node01", Duration::from_secs(10), || {
            let state = n.state();
            (state["leader"] == "node01")
                .then_some(())
                .ok_or(state["leader"].to_string())
        });
    }
    let public_key = rcgen::KeyPair::generate().unwrap().public_key_pem();
    let body = |org: &str, admin: &str| {
        json!({"org": org, "admin": {"name": admin, "public_key": public_key}}).to_string()
    };
    let bootstrap = |k: u8, body: &str, token: bool| {
        call(
            &lab,
            IAM_PORT,
            k,
            "/admin/bootstrap",
            token,
            &["--data-binary", body],
        )
    };

    assert_eq!(bootstrap(2, &body("acme", "alice"), false).status, 401);
    // A follower forwards to the leader; the first bootstrap in the cluster creates.
    let created = bootstrap(2, &body("acme", "alice"), true);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(
        created.json(),
        json!({"org": "acme", "admin": {"name": "alice"}})
    );
    // Every later one, on any node, learns what exists.
    for k in [3, 1, 2] {
        let again = bootstrap(k, &body("other", "bob"), true);
        assert_eq!(again.status, 409, "node {k}: {again:?}");
        assert_eq!(
            again.json(),
            json!({"error": "already bootstrapped", "org": "acme", "admin": {"name": "alice"}})
        );
    }
    // Secrets are refused where they arrive, before anything is forwarded.
    let private = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let leaked = json!({"org": "acme", "admin": {"name": "alice", "public_key": private}});
    assert_eq!(bootstrap(3, &leaked.to_string(), true).status, 400);
    let field = json!({"org": "acme", "admin": {"name": "alice", "public_key": public_key,
                                                "private_key": "x"}});
    let r = bootstrap(3, &field.to_string(), true);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("private_key"));

    // Every node holds the record.
    for n in &nodes {
        let state = wait_for("the record replicates", Duration::from_secs(1), || {
            let state = n.state();
            (state["iam"]["bootstrapped"] == true)
                .then_some(state.clone())
                .ok_or(state.to_string())
        });
        assert_eq!(state["iam"]["org"], "acme");
        assert_eq!(state["iam"]["public_key"], public_key.as_str());
    }
    // node01 leads: it saw the three forwarded bootstraps and its own.
    assert_eq!(nodes[0].state()["requests"]["bootstrap"], 4);
    assert_eq!(nodes[1].state()["requests"]["bootstrap"], 3);
    for n in &nodes {
        let log = n.log();
        assert!(
            !log.contains(TOKEN) && !log.contains("PRIVATE KEY") && !log.contains("PUBLIC KEY")
        );
    }
}

#[test]
fn member_command_lines_that_cannot_work() {
    let lab = Lab::new(ADMIN_PORT);
    let run = |extra: &[&str]| {
        let mut args = s(&["member", "--listen", &lab.addr(1, ADMIN_PORT)]);
        args.extend(s(&[
            "--cert",
            &path_arg(&lab.path("server.pem")),
            "--key",
            &path_arg(&lab.path("server-key.pem")),
        ]));
        args.extend(s(extra));
        let out = Command::new(env!("CARGO_BIN_EXE_flint-testserver"))
            .args(&args)
            .output()
            .expect("run flint-testserver");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let peer = format!("node02=https://{}", lab.addr(2, ADMIN_PORT));
    let (code, err) = run(&[
        "--kind",
        "cluster",
        "--id",
        "node01",
        "--initial",
        "node01,node02",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("node02 has no --peer"), "{err}");
    let (code, err) = run(&["--kind", "iam", "--id", "node01", "--initial", "node01"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--token-file"), "{err}");
    let (code, err) = run(&[
        "--kind",
        "cluster",
        "--id",
        "node01",
        "--initial",
        "node01",
        "--peer",
        &peer,
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--peer-ca"), "{err}");
    let (code, err) = run(&[
        "--kind",
        "cluster",
        "--id",
        "node01",
        "--initial",
        "node01",
        "--peer",
        "node02=http://10.0.0.2:2379",
        "--client-ca",
        "ca.pem",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("https://HOST:PORT"), "{err}");
    let (code, err) = run(&[
        "--kind",
        "cluster",
        "--id",
        "node01",
        "--initial",
        "node01",
        "--heartbeat-ms",
        "1000",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("at least twice"), "{err}");

    // A one-member cluster leads alone, on any address it is given.
    let ready = lab.path("ready-solo.json");
    let mut solo = Command::new(env!("CARGO_BIN_EXE_flint-testserver"))
        .args(s(&[
            "member",
            "--kind",
            "cluster",
            "--id",
            "solo",
            "--listen",
            &lab.addr(1, ADMIN_PORT),
            "--initial",
            "solo",
            "--cert",
            &path_arg(&lab.path("server.pem")),
            "--key",
            &path_arg(&lab.path("server-key.pem")),
            "--ready-file",
            &path_arg(&ready),
        ]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let guard = KillOnDrop(&mut solo);
    wait_for("the solo node is ready", START_TIMEOUT, || {
        ready.exists().then_some(()).ok_or_default()
    });
    wait_for("the solo node leads", Duration::from_secs(5), || {
        let r = curl(&{
            let mut a = tls_args(&lab, None);
            a.push(format!(
                "https://{}/admin/member/list",
                lab.addr(1, ADMIN_PORT)
            ));
            a
        });
        (r.status == 200 && r.json()["leader"] == "solo")
            .then_some(())
            .ok_or(format!("{r:?}"))
    });
    drop(guard);
}

struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

trait OkOrDefault<T> {
    fn ok_or_default(self) -> Result<T, String>;
}

impl<T> OkOrDefault<T> for Option<T> {
    fn ok_or_default(self) -> Result<T, String> {
        self.ok_or_else(|| "not yet".to_owned())
    }
}
