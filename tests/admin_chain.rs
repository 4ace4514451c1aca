//! The first-boot chain through the real `flint` binary against the test double
//! (`flint-testserver`) over HTTPS with client certificates and bearer tokens: nodes 1–3 are the
//! initial members (`"bootstrap": true`), node 4 joins; each node runs the first-boot order
//! `join chainfire` → `join flaredb` → `iam-setup` → `health` with its own state dir.
mod common;

use common::{
    ADMIN, CHAINFIRE_MARKER, CHAINFIRE_PORT, FLAREDB_MARKER, FLAREDB_PORT, FlintOutput, IAM_MARKER,
    Lab, Node, ORG, Secrets, TestServer, assert_member_once, chain_node, marker,
};
use serde_json::{Value, json};

/// The first-boot order on every node.
const CHAIN: &[&[&str]] = &[
    &["join", "chainfire"],
    &["join", "flaredb"],
    &["iam-setup"],
    &["health"],
];

struct Servers {
    chainfire: TestServer,
    flaredb: TestServer,
    iam: TestServer,
}

fn servers(lab: &Lab, secrets: &Secrets) -> Servers {
    Servers {
        chainfire: TestServer::cluster(lab, CHAINFIRE_PORT, 4, 3, secrets.cluster_options(lab)),
        flaredb: TestServer::cluster(lab, FLAREDB_PORT, 4, 3, secrets.cluster_options(lab)),
        iam: TestServer::iam_with(lab, 4, secrets.iam_options(lab)),
    }
}

fn nodes(lab: &Lab, secrets: &Secrets) -> Vec<Node> {
    (0..4).map(|i| chain_node(lab, i, secrets, i < 3)).collect()
}

/// Runs the chain on one node, every step asserted to exit 0; returns each step's output.
fn run_chain(node: &Node) -> Vec<FlintOutput> {
    CHAIN
        .iter()
        .map(|args| {
            let out = node.run(args);
            out.assert_code(0, &format!("{}: flint {}", node.id, args.join(" ")));
            out
        })
        .collect()
}

fn health_json(node: &Node) -> Value {
    let out = node.run(&["health", "--json"]);
    out.assert_code(0, &format!("{}: flint health --json", node.id));
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("health --json printed no JSON ({e}): {}", out.describe()))
}

fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == name))
        .unwrap_or_else(|| panic!("no {name} in the health report: {report:#}"))
}

/// Every node marked for every step, the clusters listing the four nodes once each, health
/// reporting it from every node, and IAM set up once with the configured org and admin.
fn assert_chain_done(s: &Servers, secrets: &Secrets, nodes: &[Node]) {
    for (i, node) in nodes.iter().enumerate() {
        for (file, server) in [
            (CHAINFIRE_MARKER, &s.chainfire),
            (FLAREDB_MARKER, &s.flaredb),
        ] {
            let m = marker(node, file).unwrap_or_else(|| panic!("{} has no {file}", node.id));
            assert_eq!(m["node_id"], node.id.as_str(), "{file}: {m}");
            assert_eq!(m["member_id"], node.id.as_str(), "{file}: {m}");
            assert_eq!(m["leader"], "node01", "{file}: {m}");
            for field in ["joined_at", "flint_version", "service"] {
                assert!(!m[field].is_null(), "{file} lacks {field}: {m}");
            }
            let member = assert_member_once(server, node, &server.raft_addr(i));
            let role = if i == 0 { "leader" } else { "follower" };
            assert_eq!(member["role"], role, "{member}");
        }
        let m =
            marker(node, IAM_MARKER).unwrap_or_else(|| panic!("{} has no {IAM_MARKER}", node.id));
        assert_eq!(m["org"], ORG, "{m}");
        assert_eq!(m["node_id"], node.id.as_str(), "{m}");
    }
    for server in [&s.chainfire, &s.flaredb] {
        let state = server.state();
        assert_eq!(
            state["members"].as_array().map(Vec::len),
            Some(4),
            "{state:#}"
        );
        assert_eq!(state["leader"], "node01", "{state:#}");
        assert!(
            state["members"].as_array().is_some_and(|m| m
                .iter()
                .any(|m| m["id"] == "node04" && m["raft_addr"] == server.raft_addr(3))),
            "node04 not listed: {state:#}"
        );
        // Only node04 was added; the initial members only waited for a leader.
        assert_eq!(state["requests"]["add"], 1, "{state:#}");
    }

    let iam = s.iam.state();
    assert_eq!(iam["iam"]["bootstrapped"], true, "{iam:#}");
    assert_eq!(iam["iam"]["org"], ORG, "{iam:#}");
    assert_eq!(iam["iam"]["admin"]["name"], ADMIN, "{iam:#}");
    assert_eq!(
        iam["iam"]["public_key"].as_str().map(str::trim),
        Some(secrets.admin_public_pem.trim()),
        "IAM got another key than the configured public key: {iam:#}"
    );
    assert_eq!(
        iam["requests"]["bootstrap"], 4,
        "one bootstrap request per node: {iam:#}"
    );

    for node in nodes {
        let report = health_json(node);
        assert_eq!(report["healthy"], true, "{}: {report:#}", node.id);
        for name in ["chainfire", "flaredb"] {
            let svc = service(&report, name);
            assert_eq!(svc["healthy"], true, "{}: {svc:#}", node.id);
            let members = svc["members"].as_array().expect("members");
            assert_eq!(members.len(), 4, "{}: {svc:#}", node.id);
            let leaders: Vec<&Value> = members.iter().filter(|m| m["role"] == "leader").collect();
            assert_eq!(leaders.len(), 1, "exactly one leader: {svc:#}");
            assert_eq!(leaders[0]["name"], "node01", "{svc:#}");
            assert_eq!(svc["leader"], "node01", "{svc:#}");
            let mut names: Vec<&str> = members.iter().filter_map(|m| m["name"].as_str()).collect();
            names.sort_unstable();
            assert_eq!(names, ["node01", "node02", "node03", "node04"], "{svc:#}");
            assert!(members.iter().all(|m| m["healthy"] == true), "{svc:#}");
        }
        let iam = service(&report, "iam");
        assert_eq!(iam["healthy"], true, "{}: {iam:#}", node.id);
    }

    // The same as node_exporter textfile metrics.
    let node = &nodes[3];
    let textfile = node.dir.join("flint.prom");
    let out = node.run(&[
        "health",
        "--textfile",
        textfile.to_str().expect("UTF-8 path"),
    ]);
    out.assert_code(0, "health --textfile");
    let metrics = std::fs::read_to_string(&textfile).expect("textfile written");
    for line in [
        "flint_cluster_healthy{service=\"chainfire\"} 1",
        "flint_cluster_members{service=\"chainfire\"} 4",
        "flint_cluster_leaders{service=\"chainfire\"} 1",
        "flint_cluster_members{service=\"flaredb\"} 4",
        "flint_cluster_leaders{service=\"flaredb\"} 1",
        "flint_cluster_healthy{service=\"iam\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no line {line:?} in the textfile:\n{metrics}"
        );
    }
}

#[test]
fn four_nodes_run_the_first_boot_chain_in_order() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let s = servers(&lab, &secrets);
    let nodes = nodes(&lab, &secrets);

    let mut iam_logs = Vec::new();
    for node in &nodes {
        let outs = run_chain(node);
        iam_logs.push(outs[2].stderr.clone());
    }
    // node01 got there first (201); the others found it done (409) and still succeeded.
    assert!(
        iam_logs[0].contains("IAM set up: organization"),
        "node01's iam-setup did not create the organization:\n{}",
        iam_logs[0]
    );
    for (i, log) in iam_logs.iter().enumerate().skip(1) {
        assert!(
            log.contains("already set up by another node"),
            "node0{}'s iam-setup did not find the setup done:\n{log}",
            i + 1
        );
    }
    assert_chain_done(&s, &secrets, &nodes);

    // Run-once: a second chain on every node sends nothing (the health check aside).
    let before: Vec<Value> = [&s.chainfire, &s.flaredb, &s.iam]
        .iter()
        .map(|s| s.state()["requests"].clone())
        .collect();
    for node in &nodes {
        for args in &CHAIN[..3] {
            let out = node.run(args);
            out.assert_code(
                0,
                &format!("{}: rerun of flint {}", node.id, args.join(" ")),
            );
            assert!(
                out.stderr.contains("already joined") || out.stderr.contains("already set up"),
                "{}",
                out.describe()
            );
        }
    }
    let after: Vec<Value> = [&s.chainfire, &s.flaredb, &s.iam]
        .iter()
        .map(|s| s.state()["requests"].clone())
        .collect();
    assert_eq!(
        before, after,
        "a rerun with the markers present sent requests"
    );
}

#[test]
fn four_nodes_booting_at_once_end_in_the_same_state() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let s = servers(&lab, &secrets);
    let nodes = nodes(&lab, &secrets);

    let iam_logs: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|node| scope.spawn(move || run_chain(node)[2].stderr.clone()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a chain panicked"))
            .collect()
    });
    let created = iam_logs
        .iter()
        .filter(|l| l.contains("IAM set up: organization"))
        .count();
    let found = iam_logs
        .iter()
        .filter(|l| l.contains("already set up by another node"))
        .count();
    assert_eq!(
        (created, found),
        (1, 3),
        "exactly one node creates IAM's setup, three find it:\n{}",
        iam_logs.join("\n=====\n")
    );
    assert_chain_done(&s, &secrets, &nodes);
}

#[test]
fn a_node_naming_another_org_is_refused_with_65_naming_both() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let iam = TestServer::iam_with(&lab, 2, secrets.iam_options(&lab));
    let first = chain_node(&lab, 0, &secrets, true);
    first
        .run(&["iam-setup"])
        .assert_code(0, "node01: iam-setup");

    let mut other = chain_node(&lab, 1, &secrets, true);
    other.config["iam"]["org"] = json!("globex");
    let out = other.run(&["iam-setup"]);
    out.assert_code(65, "node02 naming another org");
    for org in [ORG, "globex"] {
        assert!(
            out.stderr.contains(org),
            "the error must name both orgs ({ORG}, globex): {}",
            out.describe()
        );
    }
    assert!(
        marker(&other, IAM_MARKER).is_none(),
        "no marker after a mismatch"
    );
    let state = iam.state();
    assert_eq!(state["iam"]["org"], ORG, "the first org stays: {state:#}");
    assert_eq!(state["requests"]["bootstrap"], 2, "{state:#}");
}

/// node04 alone against a chainfire cluster (node01–03 members), peers node02 and node03.
fn single(learner_ms: u64) -> (Lab, TestServer, Node) {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let server = TestServer::cluster(
        &lab,
        CHAINFIRE_PORT,
        4,
        3,
        common::ServerOptions {
            learner_ms,
            ..secrets.cluster_options(&lab)
        },
    );
    let mut node = chain_node(&lab, 3, &secrets, false);
    node.config["timeouts"] = json!({"total": "20s", "request": "5s", "connect": "2s"});
    (lab, server, node)
}

const JOIN: &[&str] = &["join", "chainfire"];

#[test]
fn joins_through_a_peer_when_the_leader_url_fails() {
    for fault in [
        json!({"route": "list", "kind": "status", "code": 503, "listener": "node01"}),
        json!({"route": "list", "kind": "drop", "listener": "node01"}),
    ] {
        let (_lab, server, node) = single(0);
        server.arm(fault.clone());
        let out = node.run(JOIN);
        out.assert_code(0, &format!("join with leader_url failing ({fault})"));
        assert_member_once(&server, &node, &server.raft_addr(3));
        assert!(marker(&node, CHAINFIRE_MARKER).is_some());
        assert!(
            server.requests_on("node02", "list") >= 1,
            "the peer was not asked: {}",
            out.describe()
        );
        assert_eq!(
            server.requests("add"),
            server.requests_on("node02", "add") + server.requests_on("node01", "add")
        );
    }
}

#[test]
fn two_runs_on_one_node_join_once() {
    let (_lab, server, node) = single(0);
    // The add is held so the second run surely finds the first one holding the lock.
    server.arm(json!({"route": "add", "kind": "delay", "ms": 1000, "times": 1}));
    let mut first = node.spawn(JOIN);
    first.wait_for_line("adding node04", std::time::Duration::from_secs(15));
    let mut second = node.spawn(JOIN);
    let outs = [
        first.wait(std::time::Duration::from_secs(60)),
        second.wait(std::time::Duration::from_secs(60)),
    ];
    for out in &outs {
        out.assert_code(0, "concurrent joins on one state dir");
    }
    assert!(
        outs[1].stderr.contains("waiting for the chainfire lock"),
        "the second run says it waits for the lock: {}",
        outs[1].describe()
    );
    assert!(
        outs[1].stderr.contains("already joined"),
        "the second run finds the marker: {}",
        outs[1].describe()
    );
    assert_eq!(server.requests("add"), 1, "added once");
    assert_member_once(&server, &node, &server.raft_addr(3));
    // The closing lines tell waiting from working: the second run waited for the lock.
    let (took, waited) = outs[1].done_line("chainfire join");
    assert!(
        (0.5..=took).contains(&waited),
        "the second run waited {waited} s of {took} s: {}",
        outs[1].describe()
    );
    let (_, waited) = outs[0].done_line("chainfire join");
    assert!(
        waited < 0.5,
        "the first run waited {waited} s: {}",
        outs[0].describe()
    );
}

/// Holds `file`'s flock as another flint would, with `pid` written in it, until dropped.
fn hold_lock(file: &std::path::Path, pid: &str) -> std::fs::File {
    std::fs::create_dir_all(file.parent().expect("a lock file has a folder")).unwrap();
    std::fs::write(file, pid).unwrap();
    let held = std::fs::File::options().write(true).open(file).unwrap();
    held.lock().unwrap();
    held
}

#[test]
fn a_join_does_not_wait_for_another_services_join() {
    let (lab, server, mut node) = single(0);
    // An etcd add that cannot reach a voter (here: nothing listens) holds the node's etcd join for
    // as long as it retries, as one waiting for etcd's learner slot does.
    node.config["etcd"] = json!({"leader_url": format!("https://{}:9", lab.ip(1)), "peers": []});
    node.config["timeouts"]["total"] = json!("30s");
    let mut etcd_join = node.spawn(&["join", "etcd", "--phase", "add"]);
    etcd_join.wait_for_line("trying again for up to", std::time::Duration::from_secs(15));
    let out = node.run(JOIN);
    let etcd_out = etcd_join.kill9();
    out.assert_code(0, "chainfire join while the node's etcd join retries");
    assert!(
        !out.stderr.contains(".lock"),
        "the chainfire join waited for the etcd join: {}\n===== etcd join =====\n{}",
        out.describe(),
        etcd_out.describe()
    );
    assert_member_once(&server, &node, &server.raft_addr(3));
}

#[test]
fn a_lock_held_past_the_deadline_ends_with_69_naming_it() {
    let (_lab, server, mut node) = single(0);
    node.config["timeouts"]["total"] = json!("2s");
    let lock = node.state_dir.join(".chainfire.lock");
    let _held = hold_lock(&lock, "4242\n");
    let out = node.run(JOIN);
    out.assert_code(
        69,
        "chainfire join while another holds its lock past the deadline",
    );
    let expected = format!(
        "gave up waiting for the chainfire lock {}: the deadline (timeouts.total = 2s) passed; \
         last error: held by flint (PID 4242)",
        lock.display()
    );
    assert!(out.stderr.contains(&expected), "{}", out.describe());
    assert_eq!(server.requests("add"), 0, "added without the lock");
    assert!(marker(&node, CHAINFIRE_MARKER).is_none());
}

#[test]
fn a_learner_is_confirmed_only_once_it_votes() {
    let (_lab, server, node) = single(1500);
    let out = node.run(JOIN);
    out.assert_code(0, "join with a 1.5 s learner phase");
    assert!(
        out.elapsed >= std::time::Duration::from_millis(1400),
        "marked before the learner became a follower: {}",
        out.describe()
    );
    let member = assert_member_once(&server, &node, &server.raft_addr(3));
    assert_eq!(member["role"], "follower", "{member}");
    assert!(marker(&node, CHAINFIRE_MARKER).is_some());
}

#[test]
fn a_learner_that_never_catches_up_is_never_marked() {
    let (_lab, server, mut node) = single(60_000);
    node.config["timeouts"]["total"] = json!("3s");
    let out = node.run(JOIN);
    out.assert_code(69, "a learner until the deadline");
    assert!(out.stderr.contains("learner"), "{}", out.describe());
    assert!(
        marker(&node, CHAINFIRE_MARKER).is_none(),
        "marked a learner"
    );
    let member = assert_member_once(&server, &node, &server.raft_addr(3));
    assert_eq!(member["role"], "learner", "{member}");
}

#[test]
fn a_stale_member_is_an_operators_call() {
    // node04 listed at another Raft address, or its Raft address listed under another ID: 65,
    // naming both, nothing added.
    for (id, addr_of) in [("node04", "other"), ("node09", "ours")] {
        let (_lab, server, node) = single(0);
        let ours = server.raft_addr(3);
        let other = server.raft_addr(3).replace(":2380", ":3380");
        let planted = if addr_of == "ours" { &ours } else { &other };
        server.plant_member(id, planted);
        let out = node.run(JOIN);
        out.assert_code(65, &format!("{id} planted at {planted}"));
        for fragment in [id, planted.as_str(), ours.as_str()] {
            assert!(
                out.stderr.contains(fragment),
                "lacks {fragment}: {}",
                out.describe()
            );
        }
        assert_eq!(server.requests("add"), 0, "added despite a conflict");
        assert!(marker(&node, CHAINFIRE_MARKER).is_none());
    }
}

#[test]
fn a_bootstrap_node_waits_to_be_listed_and_adds_nothing() {
    // node04 claims to be an initial member but the cluster does not list it: never marked.
    let (_lab, server, mut node) = single(0);
    node.config["bootstrap"] = json!(true);
    node.config["timeouts"]["total"] = json!("3s");
    let out = node.run(JOIN);
    out.assert_code(69, "a bootstrap node the cluster does not list");
    assert!(marker(&node, CHAINFIRE_MARKER).is_none());
    assert_eq!(server.requests("add"), 0, "a bootstrap node adds nothing");

    // Listed (an earlier add, say): marked, still nothing added.
    server.plant_member("node04", &server.raft_addr(3));
    node.run(JOIN).assert_code(0, "a listed bootstrap node");
    assert_eq!(
        marker(&node, CHAINFIRE_MARKER).expect("marker")["leader"],
        "node01"
    );
    assert_eq!(server.requests("add"), 0);

    // A bootstrap node refused by the cluster: 77, at once.
    std::fs::remove_file(node.state_dir.join(CHAINFIRE_MARKER)).expect("remove marker");
    server.arm(json!({"route": "list", "kind": "token-required"}));
    let lists = server.requests("list");
    let out = node.run(JOIN);
    out.assert_code(77, "a bootstrap node whose token is refused");
    assert_eq!(
        server.requests("list"),
        lists + 1,
        "401 is not retried, nor asked of a peer"
    );
}

#[test]
fn an_election_in_progress_is_waited_out_by_joining_and_bootstrap_nodes() {
    // Between leaders a Raft service lists `"leader": null` (openraft's `current_leader: None`,
    // Consul's `""` from /v1/status/leader) and no member can add one: no leader yet is
    // transient, never a bad answer.
    const ELECTION_MS: u64 = 1500;
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let server = TestServer::cluster(&lab, CHAINFIRE_PORT, 4, 3, secrets.cluster_options(&lab));
    let node = chain_node(&lab, 3, &secrets, false);
    server.election(ELECTION_MS);
    let during = server.state();
    assert_eq!(during["leader"], Value::Null, "{during:#}");
    let out = node.run(JOIN);
    out.assert_code(0, "a joining node during an election");
    assert!(
        out.elapsed >= std::time::Duration::from_millis(ELECTION_MS - 200),
        "joined before the election ended: {}",
        out.describe()
    );
    assert_member_once(&server, &node, &server.raft_addr(3));
    assert_eq!(
        marker(&node, CHAINFIRE_MARKER).expect("marker")["leader"],
        "node01"
    );

    let bootstrap = chain_node(&lab, 1, &secrets, true);
    server.election(ELECTION_MS);
    let out = bootstrap.run(JOIN);
    out.assert_code(0, "a bootstrap node during an election");
    assert!(
        out.elapsed >= std::time::Duration::from_millis(ELECTION_MS - 200),
        "a bootstrap node marked before a leader was elected: {}",
        out.describe()
    );
    assert_eq!(
        marker(&bootstrap, CHAINFIRE_MARKER).expect("marker")["leader"],
        "node01"
    );
}

#[test]
fn roles_spelled_otherwise_or_unknown_do_not_break_a_join() {
    // openraft's `ServerState` serializes as `Leader`, `Follower`, `Candidate`, `Learner`.
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let server = TestServer::cluster(
        &lab,
        CHAINFIRE_PORT,
        4,
        3,
        common::ServerOptions {
            role_case: Some("title"),
            learner_ms: 500,
            ..secrets.cluster_options(&lab)
        },
    );
    let node = chain_node(&lab, 3, &secrets, false);
    // A candidate among the members while the join reads the list.
    server.election(800);
    let out = node.run(JOIN);
    out.assert_code(
        0,
        "a join against roles spelled Leader/Follower/Candidate/Learner",
    );
    assert!(
        out.stderr.contains("\"Learner\", not yet a voting member"),
        "the learner phase was waited for under its own spelling: {}",
        out.describe()
    );
    assert_member_once(&server, &node, &server.raft_addr(3));
    assert!(marker(&node, CHAINFIRE_MARKER).is_some());
}

#[test]
fn the_join_token_goes_only_where_the_cluster_is() {
    // node01 redirects the add to node05 (307, as rqlite and Vault redirect to their leader's
    // API address), a listener that is no member of the cluster and that node04's configuration
    // does not name. curl drops `Authorization` on a redirect to another host; flint sends the
    // token only where the configuration or the cluster's own member list says the cluster is,
    // and the 401 that follows is no refusal of its credentials.
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let server = TestServer::cluster(&lab, CHAINFIRE_PORT, 5, 3, secrets.cluster_options(&lab));
    server
        .arm(json!({"route": "add", "kind": "redirect-to", "to": "node05", "listener": "node01"}));
    let mut node = chain_node(&lab, 3, &secrets, false);
    node.config["timeouts"]["total"] = json!("3s");
    let out = node.run(JOIN);
    out.assert_code(69, "the add redirected to a server that is not the cluster");
    assert!(
        out.stderr.contains("without the join token") && out.stderr.contains("`peers`"),
        "the error says why and what to configure: {}",
        out.describe()
    );
    let state = server.state();
    assert!(
        server.requests_on("node05", "add") >= 1,
        "the redirect was followed: {state:#}"
    );
    assert!(
        state["with_token_by_listener"]["node05"].is_null(),
        "node05 got the join token: {state:#}"
    );
    assert!(
        state["with_token_by_listener"]["node01"]["add"].as_u64() >= Some(1),
        "the configured leader_url got the token: {state:#}"
    );
    assert!(marker(&node, CHAINFIRE_MARKER).is_none());
    assert!(
        server
            .members_matching("node04", &server.raft_addr(3))
            .is_empty()
    );

    // node05 joins the cluster and becomes its leader, after node04's configuration was
    // written: the cluster lists it, so the token goes there and the join goes through.
    server.clear();
    server.plant_member("node05", &server.raft_addr(4));
    server.set_leader("node05");
    node.config["timeouts"]["total"] = json!("20s");
    node.run(JOIN)
        .assert_code(0, "the leader is a member the cluster lists");
    assert_member_once(&server, &node, &server.raft_addr(3));
    assert!(server.state()["with_token_by_listener"]["node05"]["add"].as_u64() >= Some(1));
}

#[test]
fn health_reports_a_dead_member_but_a_quorum_is_healthy() {
    let (_lab, server, mut node) = single(0);
    node.config
        .as_object_mut()
        .expect("object")
        .remove("flaredb");
    node.config.as_object_mut().expect("object").remove("iam");
    server.arm(json!({"route": "health", "kind": "status", "code": 503, "listener": "node03"}));
    let out = node.run(&["health", "--json"]);
    out.assert_code(0, "health with one of three members down");
    let report: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let svc = service(&report, "chainfire");
    assert_eq!(svc["healthy"], true, "{svc:#}");
    let node03 = svc["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "node03"))
        .unwrap_or_else(|| panic!("node03 not reported: {svc:#}"));
    assert_eq!(node03["healthy"], false, "{node03:#}");
    assert!(node03["error"].is_string(), "{node03:#}");
    assert!(
        svc["problems"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("node03")))),
        "the dead member is reported: {svc:#}"
    );
}

#[test]
fn a_bootstrap_node_waits_for_a_quorum_of_healthy_members_not_only_a_leader() {
    // A leader elected, two of three members failing their health check: the cluster has no
    // quorum of healthy members, so a bootstrap node must not record its join (it used to, and
    // `flint health` right after said unhealthy).
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let server = TestServer::cluster(&lab, CHAINFIRE_PORT, 4, 3, secrets.cluster_options(&lab));
    let mut node = chain_node(&lab, 0, &secrets, false);
    node.config["bootstrap"] = json!(true);
    node.config["timeouts"] = json!({"total": "3s", "request": "1s", "connect": "1s"});
    for section in ["flaredb", "iam"] {
        node.config.as_object_mut().expect("object").remove(section);
    }
    for listener in ["node02", "node03"] {
        server.arm(json!({"route": "health", "kind": "status", "code": 503, "listener": listener}));
    }
    let out = node.run(JOIN);
    out.assert_code(69, "a bootstrap node without a quorum of healthy members");
    assert!(out.stderr.contains("no quorum"), "{}", out.describe());
    assert!(marker(&node, CHAINFIRE_MARKER).is_none());
    node.run(&["health"])
        .assert_code(1, "health agrees: no quorum");

    // One member back: two of three healthy is a quorum.
    server.clear();
    server.arm(json!({"route": "health", "kind": "status", "code": 503, "listener": "node03"}));
    node.run(JOIN)
        .assert_code(0, "a bootstrap node with a quorum");
    assert!(marker(&node, CHAINFIRE_MARKER).is_some());
    node.run(&["health"])
        .assert_code(0, "flint health right after the bootstrap node marked");
    assert_eq!(server.requests("add"), 0, "a bootstrap node adds nothing");
}
