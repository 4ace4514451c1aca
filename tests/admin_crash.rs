//! `kill -9` of `flint join chainfire` (and `flint iam-setup`) at each step of the join, then a
//! rerun: whatever the crash left, the rerun ends with exactly one membership for the node in
//! the server's state and the marker, and no run ever leaves a marker without the membership.
mod common;

use common::{
    CHAINFIRE_MARKER, CHAINFIRE_PORT, IAM_MARKER, Lab, Node, ORG, ProxyMode, Secrets,
    ServerOptions, TestServer, assert_member_once, assert_no_marker_without_membership, chain_node,
    marker, wait_for_member, wait_until, without_peers,
};
use serde_json::json;
use std::time::Duration;

const JOIN: &[&str] = &["join", "chainfire"];
const NODE: usize = 3;
const LINE_TIMEOUT: Duration = Duration::from_secs(15);

struct Setup {
    server: TestServer,
    node: Node,
    raft: String,
    // Last: the processes above are gone before the lab's folders are removed.
    lab: Lab,
}

fn setup(learner_ms: u64) -> Setup {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let server = TestServer::cluster(
        &lab,
        CHAINFIRE_PORT,
        NODE + 1,
        3,
        ServerOptions {
            learner_ms,
            ..secrets.cluster_options(&lab)
        },
    );
    let mut node = chain_node(&lab, NODE, &secrets, false);
    without_peers(&mut node);
    node.config["timeouts"] = json!({"total": "30s", "request": "10s", "connect": "2s"});
    let raft = server.raft_addr(NODE);
    Setup {
        server,
        node,
        raft,
        lab,
    }
}

impl Setup {
    /// After a crash: no marker, at most one member, the invariant.
    fn assert_crashed_cleanly(&self, what: &str) {
        assert!(
            marker(&self.node, CHAINFIRE_MARKER).is_none(),
            "{what}: a marker after a crash before the confirmation"
        );
        self.assert_invariant();
    }

    fn assert_invariant(&self) {
        let ours = self.server.members_matching(&self.node.id, &self.raft);
        assert!(ours.len() <= 1, "two members for node04: {ours:#?}");
        assert_no_marker_without_membership(&self.server, &self.node, CHAINFIRE_MARKER, &self.raft);
    }

    /// The rerun joins: exit 0, marker, exactly one member, a voter.
    fn rerun_joins(&self, what: &str) {
        let out = self.node.run(JOIN);
        out.assert_code(0, &format!("rerun after {what}"));
        let m = marker(&self.node, CHAINFIRE_MARKER)
            .unwrap_or_else(|| panic!("no marker after the rerun: {}", out.describe()));
        assert_eq!(m["node_id"], "node04", "{m}");
        let member = assert_member_once(&self.server, &self.node, &self.raft);
        assert_ne!(
            member["role"], "learner",
            "marked while a learner: {member}"
        );
    }
}

#[test]
fn crash_while_waiting_for_local_health() {
    let s = setup(0);
    s.server
        .arm(json!({"route": "health", "kind": "status", "code": 503, "listener": "node04"}));
    let mut run = s.node.spawn(JOIN);
    run.wait_for_line("to be healthy: ", LINE_TIMEOUT);
    run.kill9();
    s.assert_crashed_cleanly("a crash in the health wait");
    assert_eq!(
        s.server.requests("list"),
        0,
        "nothing sent past the health wait"
    );
    assert!(s.server.members_matching("node04", &s.raft).is_empty());

    s.server.clear();
    s.rerun_joins("a crash in the health wait");
    assert_eq!(s.server.requests("add"), 1);
}

#[test]
fn crash_while_the_add_is_in_flight() {
    // The server holds the add 3 s and only then adds the member and answers: flint is killed
    // while it waits. Whether the server still completes the add after flint is gone or not,
    // the rerun and the late add together leave one member.
    let s = setup(0);
    s.server
        .arm(json!({"route": "add", "kind": "delay", "ms": 3000, "times": 1}));
    let mut run = s.node.spawn(JOIN);
    run.wait_for_line("adding node04", LINE_TIMEOUT);
    wait_until("the add to reach the server", LINE_TIMEOUT, || {
        (s.server.requests("add") >= 1).then_some(())
    });
    let killed_at = std::time::Instant::now();
    run.kill9();
    s.assert_crashed_cleanly("a crash during the add");

    s.rerun_joins("a crash during the add");
    // Past the held add: it may land now, as a 409 to nobody.
    std::thread::sleep(Duration::from_millis(3500).saturating_sub(killed_at.elapsed()));
    s.assert_invariant();
    assert_member_once(&s.server, &s.node, &s.raft);
    assert!(marker(&s.node, CHAINFIRE_MARKER).is_some());
}

#[test]
fn crash_after_the_add_landed_before_its_answer_was_read() {
    // A proxy in front of the leader: the add reaches the server, its answer never reaches flint.
    let mut s = setup(0);
    let proxy = s.lab.proxy(s.lab.client_addr(0));
    proxy.set_response_latency(Duration::from_millis(500));
    s.node.config["leader_url"] = json!(proxy.url());
    s.node.config["chainfire"]["leader_url"] = json!(proxy.url());
    let node = &s.node;

    let mut run = node.spawn(JOIN);
    run.wait_for_line("adding node04", LINE_TIMEOUT);
    proxy.set_mode(ProxyMode::HoldResponses);
    wait_for_member(&s.server, "node04", LINE_TIMEOUT);
    let crashed = run.kill9();
    assert!(
        marker(node, CHAINFIRE_MARKER).is_none(),
        "flint read the add's answer before the proxy held it; the test missed its point: {}",
        crashed.describe()
    );
    s.assert_invariant();

    proxy.set_response_latency(Duration::ZERO);
    proxy.set_mode(ProxyMode::Pass);
    let out = node.run(JOIN);
    out.assert_code(0, "rerun after the lost add answer");
    assert!(
        out.stderr.contains("already lists node04"),
        "the rerun must find the member, not add again: {}",
        out.describe()
    );
    assert_eq!(s.server.requests("add"), 1, "never added twice");
    assert_member_once(&s.server, node, &s.raft);
    assert!(marker(node, CHAINFIRE_MARKER).is_some());
}

#[test]
fn crash_while_the_new_member_is_a_learner() {
    // Added, but a learner for 4 s: flint waits for it to become a voter before the marker.
    let s = setup(4000);
    let mut run = s.node.spawn(JOIN);
    run.wait_for_line("learner", LINE_TIMEOUT);
    run.kill9();
    s.assert_crashed_cleanly("a crash while the member is a learner");
    let ours = s.server.members_matching("node04", &s.raft);
    assert_eq!(ours.len(), 1, "{ours:#?}");
    assert_eq!(ours[0]["role"], "learner", "{ours:#?}");

    s.rerun_joins("a crash while the member is a learner");
    assert_eq!(s.server.requests("add"), 1, "never added twice");
}

#[test]
fn crash_during_the_confirmation_before_the_marker() {
    // The add answers after 0.8 s; the list that confirms it is held 5 s, and flint is killed
    // while it waits for it: the member exists, the marker does not.
    let s = setup(0);
    s.server
        .arm(json!({"route": "add", "kind": "delay", "ms": 800, "times": 1}));
    let mut run = s.node.spawn(JOIN);
    run.wait_for_line("adding node04", LINE_TIMEOUT);
    s.server
        .arm(json!({"route": "list", "kind": "delay", "ms": 5000, "times": 1}));
    wait_until(
        "the confirming list to reach the server",
        LINE_TIMEOUT,
        || (s.server.requests("list") >= 2).then_some(()),
    );
    run.kill9();
    s.assert_crashed_cleanly("a crash during the confirmation");
    assert_member_once(&s.server, &s.node, &s.raft);

    s.rerun_joins("a crash during the confirmation");
    assert_eq!(s.server.requests("add"), 1, "never added twice");
}

#[test]
fn crash_during_iam_bootstrap() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let iam = TestServer::iam_with(&lab, NODE + 1, secrets.iam_options(&lab));
    let mut node = chain_node(&lab, NODE, &secrets, false);
    node.config["timeouts"] = json!({"total": "30s", "request": "10s", "connect": "2s"});
    iam.arm(json!({"route": "bootstrap", "kind": "delay", "ms": 2000, "times": 1}));

    let mut run = node.spawn(&["iam-setup"]);
    run.wait_for_line("setting up IAM organization", LINE_TIMEOUT);
    wait_until("the bootstrap to reach IAM", LINE_TIMEOUT, || {
        (iam.requests("bootstrap") >= 1).then_some(())
    });
    run.kill9();
    assert!(marker(&node, IAM_MARKER).is_none(), "marker after a crash");

    let out = node.run(&["iam-setup"]);
    out.assert_code(0, "iam-setup after a crash during the bootstrap");
    assert_eq!(marker(&node, IAM_MARKER).expect("marker")["org"], ORG);
    std::thread::sleep(Duration::from_millis(2500));
    let state = iam.state();
    assert_eq!(state["iam"]["bootstrapped"], true, "{state:#}");
    assert_eq!(state["iam"]["org"], ORG, "{state:#}");
}
