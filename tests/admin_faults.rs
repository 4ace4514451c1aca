//! The fault matrix: every fault kind of the test double (docs/test-server.md) at the step of a
//! join it hits — the local health wait, the member list, the add, the confirming list after the
//! add, IAM's health and IAM's bootstrap — with the outcome docs/join-protocol.md promises: joined
//! after retries, or the documented exit code with no marker.
//!
//! The table is data (`matrix!` below): each row is one `#[test]` of its own name, and
//! docs/fault-matrix.md is rendered from the same rows (`fault_matrix_doc_matches_the_rows`
//! checks it; `FLINT_BLESS=1 cargo nextest run --test admin_faults` rewrites it).
//!
//! Every row runs node04 (not an initial member) against a fresh server with mTLS and a bearer
//! token, with no peers (every request goes to `leader_url` = node01), and asserts the invariant
//! of every join: never a marker without the membership, never two members for the node.
mod common;

use common::{
    CHAINFIRE_MARKER, CHAINFIRE_PORT, FlintOutput, IAM_MARKER, Lab, ORG, Secrets, TestServer,
    chain_node, marker, without_peers,
};
use serde_json::{Value, json};
use std::time::Duration;

const JOIN: &[&str] = &["join", "chainfire"];
const IAM_SETUP: &[&str] = &["iam-setup"];
/// The joining node: node04 (index 3), never an initial member.
const NODE: usize = 3;
/// The add is held this long in the `confirm` rows, so the fault can be armed in between.
const CONFIRM_ADD_DELAY_MS: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// `GET {local}/health` of the joining node's own listener.
    Health,
    /// `GET {leader}/admin/member/list` before the add.
    List,
    /// `POST {leader}/admin/member/add`.
    Add,
    /// The member list after the add (confirmation).
    Confirm,
    /// `GET {iam}/health`.
    IamHealth,
    /// `POST {iam}/admin/bootstrap`.
    Bootstrap,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Health => "health",
            Step::List => "list",
            Step::Add => "add",
            Step::Confirm => "confirm",
            Step::IamHealth => "IAM health",
            Step::Bootstrap => "bootstrap",
        }
    }

    /// The server route the fault is armed on.
    fn route(self) -> &'static str {
        match self {
            Step::Health => "health",
            Step::List | Step::Confirm => "list",
            Step::Add => "add",
            Step::IamHealth => "iam-health",
            Step::Bootstrap => "bootstrap",
        }
    }

    fn is_iam(self) -> bool {
        matches!(self, Step::IamHealth | Step::Bootstrap)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    None,
    /// The config names node03 and node02 as peers: the join token goes only to configured
    /// URLs, so a leader the hints lead to must be one of them.
    Peers,
    /// The leader moves to node02 before the run: `leader_url` (node01) is then a follower.
    /// Peers as for `Peers`.
    LeaderNode02,
    /// node04 is planted in the cluster once flint logs `adding`: another run got there first.
    PlantWhenAdding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Exit 0 with the marker; for a cluster also listed exactly once.
    Joined,
    /// This exit status, no marker.
    Exit(i32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// The run took at least this long (a `Retry-After` was honoured).
    MinElapsedMs(u64),
    /// The route's request counter, all listeners.
    Requests(&'static str, u64),
    /// The route's request counter on one listener.
    RequestsOn(&'static str, &'static str, u64),
    /// The cluster's leader after the run.
    LeaderIs(&'static str),
    /// The node is listed (or not) after the run.
    Member(bool),
    /// IAM's state was not changed by the run (a 409 made up by the fault).
    IamUntouched,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    step: Step,
    /// The fault without its route (added from the step). `{raft}` is node04's Raft address.
    fault: &'static str,
    setup: Setup,
    outcome: Outcome,
    /// Fragments of flint's stderr: `{raft}`, `{moved}` (the Raft port + 1000), `{org}`.
    says: &'static [&'static str],
    checks: &'static [Check],
    total: &'static str,
    request: &'static str,
}

const fn row(step: Step, fault: &'static str, outcome: Outcome) -> Row {
    Row {
        step,
        fault,
        setup: Setup::None,
        outcome,
        says: &[],
        checks: &[],
        total: match outcome {
            Outcome::Exit(69) => "3s",
            _ => "20s",
        },
        request: "5s",
    }
}

impl Row {
    const fn setup(self, setup: Setup) -> Row {
        Row { setup, ..self }
    }
    const fn says(self, says: &'static [&'static str]) -> Row {
        Row { says, ..self }
    }
    const fn checks(self, checks: &'static [Check]) -> Row {
        Row { checks, ..self }
    }
    /// For `delay` rows: a request timeout shorter than the delay.
    const fn request(self, request: &'static str) -> Row {
        Row { request, ..self }
    }
}

use Check::*;
use Outcome::*;
use Step::*;

const J: Outcome = Joined;

macro_rules! matrix {
    ($($name:ident => $row:expr,)*) => {
        const ROWS: &[(&str, Row)] = &[$((stringify!($name), $row),)*];
        $(
            #[test]
            fn $name() {
                run_row(&$row);
            }
        )*
    };
}

matrix! {
    // The local health wait (node04's own listener).
    health_delay_beyond_request_timeout => row(Health, r#"{"kind": "delay", "ms": 2500, "times": 1}"#, J).request("1s"),
    health_503_twice => row(Health, r#"{"kind": "status", "code": 503, "times": 2}"#, J).checks(&[Requests("health", 3)]),
    health_500_always => row(Health, r#"{"kind": "status", "code": 500}"#, Exit(69)).says(&["the local chainfire"]).checks(&[Requests("list", 0)]),
    health_429_retry_after => row(Health, r#"{"kind": "too-many", "seconds": 2, "times": 1}"#, J).checks(&[MinElapsedMs(2000)]),
    health_drop => row(Health, r#"{"kind": "drop", "times": 1}"#, J),
    health_drop_mid_headers => row(Health, r#"{"kind": "drop", "after_bytes": 30, "times": 1}"#, J),
    health_truncated_json => row(Health, r#"{"kind": "truncated-json", "times": 1}"#, J),
    health_malformed_json => row(Health, r#"{"kind": "malformed-json"}"#, Exit(65)).checks(&[Requests("list", 0)]),
    health_wrong_content_type => row(Health, r#"{"kind": "wrong-content-type"}"#, Exit(65)).checks(&[Requests("list", 0)]),

    // The member list before the add.
    list_delay_beyond_request_timeout => row(List, r#"{"kind": "delay", "ms": 2500, "times": 1}"#, J).request("1s"),
    list_503_twice => row(List, r#"{"kind": "status", "code": 503, "times": 2}"#, J).checks(&[Requests("list", 4), Requests("add", 1)]),
    list_500_always => row(List, r#"{"kind": "status", "code": 500}"#, Exit(69)).says(&["500"]).checks(&[Requests("add", 0)]),
    list_429_retry_after => row(List, r#"{"kind": "too-many", "seconds": 2, "times": 1}"#, J).checks(&[MinElapsedMs(2000)]),
    list_429_retry_after_beyond_the_deadline => row(List, r#"{"kind": "too-many", "seconds": 30}"#, Exit(69)).checks(&[Requests("add", 0)]),
    list_delay_beyond_the_deadline => row(List, r#"{"kind": "delay", "ms": 10000}"#, Exit(69)).request("30s").checks(&[Requests("add", 0)]),
    list_307_to_leader => row(List, r#"{"kind": "redirect-to-leader", "code": 307, "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node02", "list", 1), RequestsOn("node02", "add", 1), RequestsOn("node03", "list", 0)]),
    list_308_to_leader => row(List, r#"{"kind": "redirect-to-leader", "code": 308, "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node02", "list", 1), RequestsOn("node02", "add", 1), RequestsOn("node03", "list", 0)]),
    list_421_leader_hint => row(List, r#"{"kind": "leader-hint", "code": 421, "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node02", "list", 1), RequestsOn("node02", "add", 1), RequestsOn("node03", "list", 0)]),
    list_503_leader_hint => row(List, r#"{"kind": "leader-hint", "code": 503, "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node02", "list", 1), RequestsOn("node02", "add", 1), RequestsOn("node03", "list", 0)]),
    list_421_hint_host_port => row(List, r#"{"kind": "leader-hint", "code": 421, "form": "host-port", "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node02", "list", 1), RequestsOn("node02", "add", 1), RequestsOn("node03", "list", 0)]),
    list_421_hint_member_id_before_any_list => row(List, r#"{"kind": "leader-hint", "code": 421, "form": "id", "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node02", "list", 0), RequestsOn("node03", "list", 1)]),
    list_redirect_loop => row(List, r#"{"kind": "redirect-loop", "code": 308}"#, Exit(69)).says(&["circle"]).checks(&[Requests("add", 0)]),
    list_drop => row(List, r#"{"kind": "drop", "times": 1}"#, J),
    list_drop_half_status_line => row(List, r#"{"kind": "drop", "after_bytes": 12, "times": 1}"#, J),
    list_truncated_json => row(List, r#"{"kind": "truncated-json", "times": 1}"#, J),
    list_malformed_json => row(List, r#"{"kind": "malformed-json"}"#, Exit(65)).checks(&[Requests("add", 0)]),
    list_wrong_content_type => row(List, r#"{"kind": "wrong-content-type"}"#, Exit(65)).checks(&[Requests("add", 0)]),
    list_token_required => row(List, r#"{"kind": "token-required"}"#, Exit(77)).says(&["join_token_file"]).checks(&[Requests("list", 1), Requests("add", 0)]),
    list_403 => row(List, r#"{"kind": "status", "code": 403}"#, Exit(77)).checks(&[Requests("list", 1), Requests("add", 0)]),

    // The add.
    add_delay_beyond_request_timeout => row(Add, r#"{"kind": "delay", "ms": 2500, "times": 1}"#, J).request("1s"),
    add_503_twice => row(Add, r#"{"kind": "status", "code": 503, "times": 2}"#, J).checks(&[Requests("add", 3)]),
    add_500_always => row(Add, r#"{"kind": "status", "code": 500}"#, Exit(69)).says(&["add this node"]).checks(&[Member(false)]),
    add_400 => row(Add, r#"{"kind": "status", "code": 400}"#, Exit(65)).checks(&[Requests("add", 1), Member(false)]),
    add_429_retry_after => row(Add, r#"{"kind": "too-many", "seconds": 2, "times": 1}"#, J).checks(&[MinElapsedMs(2000)]),
    add_307_to_leader => row(Add, r#"{"kind": "redirect-to-leader", "code": 307, "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node02", "add", 1)]),
    add_308_to_leader => row(Add, r#"{"kind": "redirect-to-leader", "code": 308, "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node02", "add", 1)]),
    add_421_leader_hint => row(Add, r#"{"kind": "leader-hint", "code": 421, "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node02", "add", 1)]),
    add_503_leader_hint => row(Add, r#"{"kind": "leader-hint", "code": 503, "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node02", "add", 1)]),
    add_307_to_leader_base_url => row(Add, r#"{"kind": "redirect-to-leader", "code": 307, "form": "base", "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node01", "add", 1), RequestsOn("node02", "add", 1)]),
    add_421_hint_host_port => row(Add, r#"{"kind": "leader-hint", "code": 421, "form": "host-port", "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node01", "add", 1), RequestsOn("node02", "add", 1)]),
    add_421_hint_raft_addr => row(Add, r#"{"kind": "leader-hint", "code": 421, "form": "raft-addr", "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node01", "add", 1), RequestsOn("node02", "add", 1)]),
    add_421_hint_member_id => row(Add, r#"{"kind": "leader-hint", "code": 421, "form": "id", "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node01", "add", 1), RequestsOn("node02", "add", 1)]),
    add_503_hint_member_id => row(Add, r#"{"kind": "leader-hint", "code": 503, "form": "id", "times": 1}"#, J).setup(Setup::LeaderNode02).checks(&[RequestsOn("node01", "add", 1), RequestsOn("node02", "add", 1)]),
    add_421_no_leader_known => row(Add, r#"{"kind": "leader-hint", "code": 421, "form": "none", "times": 1}"#, J).setup(Setup::LeaderNode02).says(&["it names no leader"]).checks(&[RequestsOn("node01", "add", 2), RequestsOn("node02", "add", 1)]),
    add_307_to_a_member_that_is_not_the_leader => row(Add, r#"{"kind": "redirect-to", "to": "node02", "times": 1}"#, J).checks(&[RequestsOn("node02", "add", 1)]),
    add_redirect_loop => row(Add, r#"{"kind": "redirect-loop", "code": 307}"#, Exit(69)).says(&["circle"]).checks(&[Member(false)]),
    add_drop => row(Add, r#"{"kind": "drop", "times": 1}"#, J),
    add_drop_with_apply => row(Add, r#"{"kind": "drop", "apply": true, "times": 1}"#, J).checks(&[Requests("add", 1)]),
    add_truncated_json => row(Add, r#"{"kind": "truncated-json", "times": 1}"#, J),
    add_truncated_json_with_apply => row(Add, r#"{"kind": "truncated-json", "apply": true, "times": 1}"#, J).checks(&[Requests("add", 1)]),
    add_503_with_apply => row(Add, r#"{"kind": "status", "code": 503, "apply": true, "times": 1}"#, J).checks(&[Requests("add", 1)]),
    add_no_body_with_apply => row(Add, r#"{"kind": "no-body", "code": 201, "apply": true, "times": 1}"#, J).checks(&[Requests("add", 1)]),
    add_empty_json_with_apply => row(Add, r#"{"kind": "empty-json", "code": 200, "apply": true, "times": 1}"#, J).checks(&[Requests("add", 1)]),
    add_no_body_never_listed => row(Add, r#"{"kind": "no-body", "code": 201}"#, Exit(69)).says(&["list this node"]).checks(&[Member(false)]),
    add_malformed_json => row(Add, r#"{"kind": "malformed-json"}"#, Exit(65)).checks(&[Member(false)]),
    add_wrong_content_type => row(Add, r#"{"kind": "wrong-content-type"}"#, Exit(65)).checks(&[Member(false)]),
    add_conflict_same_never_listed => row(Add, r#"{"kind": "conflict-same"}"#, Exit(69)).says(&["list this node"]).checks(&[Member(false)]),
    add_conflict_same_added_meanwhile => row(Add, r#"{"kind": "conflict-same", "times": 1}"#, J).setup(Setup::PlantWhenAdding),
    add_conflict_other_raft_addr => row(Add, r#"{"kind": "conflict-other"}"#, Exit(65)).says(&["{raft}", "{moved}"]).checks(&[Requests("add", 1), Member(false)]),
    add_conflict_other_id => row(Add, r#"{"kind": "conflict-other", "id": "node09", "raft_addr": "{raft}"}"#, Exit(65)).says(&["node09", "{raft}"]).checks(&[Requests("add", 1), Member(false)]),
    add_token_required => row(Add, r#"{"kind": "token-required"}"#, Exit(77)).says(&["join_token_file"]).checks(&[Requests("add", 1), Member(false)]),
    add_leader_change => row(Add, r#"{"kind": "leader-change", "times": 1}"#, J).setup(Setup::Peers).checks(&[LeaderIs("node02"), RequestsOn("node02", "add", 1)]),
    add_leader_change_421 => row(Add, r#"{"kind": "leader-change", "code": 421, "times": 1}"#, J).setup(Setup::Peers).checks(&[LeaderIs("node02"), RequestsOn("node02", "add", 1)]),

    // The confirming list after the add (armed once flint logs `adding`, the add held 1 s).
    confirm_503_twice => row(Confirm, r#"{"kind": "status", "code": 503, "times": 2}"#, J),
    confirm_drop => row(Confirm, r#"{"kind": "drop", "times": 1}"#, J),
    confirm_truncated_json => row(Confirm, r#"{"kind": "truncated-json", "times": 1}"#, J),
    confirm_malformed_json => row(Confirm, r#"{"kind": "malformed-json"}"#, Exit(65)).checks(&[Member(true)]),
    confirm_wrong_content_type => row(Confirm, r#"{"kind": "wrong-content-type"}"#, Exit(65)).checks(&[Member(true)]),
    confirm_token_required => row(Confirm, r#"{"kind": "token-required"}"#, Exit(77)).checks(&[Member(true)]),
    confirm_redirect_loop => row(Confirm, r#"{"kind": "redirect-loop"}"#, Exit(69)).says(&["circle"]).checks(&[Member(true)]),

    // IAM's health, before the setup.
    iam_health_delay_beyond_request_timeout => row(IamHealth, r#"{"kind": "delay", "ms": 2500, "times": 1}"#, J).request("1s"),
    iam_health_503_twice => row(IamHealth, r#"{"kind": "status", "code": 503, "times": 2}"#, J).checks(&[Requests("iam-health", 3)]),
    iam_health_500_always => row(IamHealth, r#"{"kind": "status", "code": 500}"#, Exit(69)).says(&["IAM"]).checks(&[Requests("bootstrap", 0)]),
    iam_health_429_retry_after => row(IamHealth, r#"{"kind": "too-many", "seconds": 2, "times": 1}"#, J).checks(&[MinElapsedMs(2000)]),
    iam_health_drop => row(IamHealth, r#"{"kind": "drop", "times": 1}"#, J),
    iam_health_truncated_json => row(IamHealth, r#"{"kind": "truncated-json", "times": 1}"#, J),

    // IAM's bootstrap.
    bootstrap_delay_beyond_request_timeout => row(Bootstrap, r#"{"kind": "delay", "ms": 2500, "times": 1}"#, J).request("1s"),
    bootstrap_503_twice => row(Bootstrap, r#"{"kind": "status", "code": 503, "times": 2}"#, J).checks(&[Requests("bootstrap", 3)]),
    bootstrap_500_always => row(Bootstrap, r#"{"kind": "status", "code": 500}"#, Exit(69)).says(&["500"]),
    bootstrap_503_with_apply => row(Bootstrap, r#"{"kind": "status", "code": 503, "apply": true, "times": 1}"#, J).checks(&[Requests("bootstrap", 2)]),
    bootstrap_429_retry_after => row(Bootstrap, r#"{"kind": "too-many", "seconds": 2, "times": 1}"#, J).checks(&[MinElapsedMs(2000)]),
    bootstrap_drop => row(Bootstrap, r#"{"kind": "drop", "times": 1}"#, J),
    bootstrap_drop_with_apply => row(Bootstrap, r#"{"kind": "drop", "apply": true, "times": 1}"#, J).checks(&[Requests("bootstrap", 2)]),
    bootstrap_truncated_json => row(Bootstrap, r#"{"kind": "truncated-json", "times": 1}"#, J),
    bootstrap_malformed_json => row(Bootstrap, r#"{"kind": "malformed-json"}"#, Exit(65)).checks(&[Requests("bootstrap", 1)]),
    bootstrap_wrong_content_type => row(Bootstrap, r#"{"kind": "wrong-content-type"}"#, Exit(65)).checks(&[Requests("bootstrap", 1)]),
    bootstrap_conflict_same => row(Bootstrap, r#"{"kind": "conflict-same", "times": 1}"#, J).checks(&[IamUntouched]),
    bootstrap_conflict_other => row(Bootstrap, r#"{"kind": "conflict-other"}"#, Exit(65)).says(&["{org}", "other-org"]).checks(&[Requests("bootstrap", 1)]),
    bootstrap_token_required => row(Bootstrap, r#"{"kind": "token-required"}"#, Exit(77)).checks(&[Requests("bootstrap", 1)]),
    bootstrap_403 => row(Bootstrap, r#"{"kind": "status", "code": 403}"#, Exit(77)).checks(&[Requests("bootstrap", 1)]),
    bootstrap_400 => row(Bootstrap, r#"{"kind": "status", "code": 400}"#, Exit(65)).checks(&[Requests("bootstrap", 1)]),
}

/// `127.A.B.13:2380` → `127.A.B.13:3380`, as the server's `conflict-other` makes it.
fn moved(raft: &str) -> String {
    let (host, port) = raft.rsplit_once(':').expect("host:port");
    format!("{host}:{}", port.parse::<u16>().expect("port") + 1000)
}

fn fault_json(row: &Row, raft: &str) -> Value {
    let text = row.fault.replace("{raft}", raft);
    let mut fault: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("row fault {text}: {e}"));
    fault["route"] = json!(row.step.route());
    if row.step == Health {
        // Only the joining node's own listener: that is where flint waits for local health.
        fault["listener"] = json!("node04");
    }
    fault
}

fn run_row(row: &Row) {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let mut node = chain_node(&lab, NODE, &secrets, false);
    without_peers(&mut node);
    if matches!(row.setup, Setup::Peers | Setup::LeaderNode02) {
        let peers = json!([
            format!("https://{}:{CHAINFIRE_PORT}", lab.ip(2)),
            format!("https://{}:{CHAINFIRE_PORT}", lab.ip(1)),
        ]);
        node.config["peers"] = peers.clone();
        node.config["chainfire"]["peers"] = peers;
    }
    node.config["timeouts"] = json!({"total": row.total, "request": row.request, "connect": "2s"});

    if row.step.is_iam() {
        let iam = TestServer::iam_with(&lab, NODE + 1, secrets.iam_options(&lab));
        iam.arm(fault_json(row, ""));
        let out = node.run(IAM_SETUP);
        judge(row, &out, &iam, &node, IAM_MARKER, "");
        return;
    }

    let server = TestServer::cluster(
        &lab,
        CHAINFIRE_PORT,
        NODE + 1,
        3,
        secrets.cluster_options(&lab),
    );
    let raft = server.raft_addr(NODE);
    if row.setup == Setup::LeaderNode02 {
        server.set_leader("node02");
    }
    let fault = fault_json(row, &raft);
    let out = if row.step == Confirm {
        server
            .arm(json!({"route": "add", "kind": "delay", "ms": CONFIRM_ADD_DELAY_MS, "times": 1}));
        let mut run = node.spawn(JOIN);
        run.wait_for_line("adding node04", Duration::from_secs(15));
        server.arm(fault);
        run.wait(Duration::from_secs(60))
    } else if row.setup == Setup::PlantWhenAdding {
        server.arm(fault);
        let mut run = node.spawn(JOIN);
        run.wait_for_line("adding node04", Duration::from_secs(15));
        server.plant_member("node04", &raft);
        run.wait(Duration::from_secs(60))
    } else {
        server.arm(fault);
        node.run(JOIN)
    };
    judge(row, &out, &server, &node, CHAINFIRE_MARKER, &raft);
}

fn judge(
    row: &Row,
    out: &FlintOutput,
    server: &TestServer,
    node: &common::Node,
    marker_file: &str,
    raft: &str,
) {
    let iam = row.step.is_iam();
    let state = server.state();
    let report = || format!("{}\n--- server state ---\n{state:#}", out.describe());
    let ours: Vec<&Value> = state["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["id"] == node.id.as_str() || m["raft_addr"] == raft)
                .collect()
        })
        .unwrap_or_default();
    let member = ours
        .iter()
        .any(|m| m["id"] == node.id.as_str() && m["raft_addr"] == raft);
    let marked = marker(node, marker_file);

    // The invariants of every row.
    assert!(
        ours.len() <= 1,
        "more than one member for node04: {}",
        report()
    );
    if !iam {
        assert!(
            marked.is_none() || member,
            "a marker without the membership: {}",
            report()
        );
    }

    match row.outcome {
        Joined => {
            out.assert_code(0, "the row expects the join to succeed");
            let m = marked.unwrap_or_else(|| panic!("exit 0 but no {marker_file}: {}", report()));
            if iam {
                assert_eq!(m["org"], ORG, "{m}");
                if !row.checks.contains(&IamUntouched) {
                    assert_eq!(state["iam"]["bootstrapped"], true, "{}", report());
                    assert_eq!(state["iam"]["org"], ORG, "{}", report());
                }
            } else {
                assert!(member, "exit 0 but node04 is not listed: {}", report());
                assert_eq!(m["node_id"], "node04", "{m}");
            }
        }
        Exit(code) => {
            out.assert_code(code, "the row expects a failure");
            assert!(
                marked.is_none(),
                "exit {code} but a marker was written: {}",
                report()
            );
            if code == 69 {
                // Retried until the deadline, not given up early; and the deadline held.
                assert!(
                    out.elapsed >= Duration::from_millis(2500),
                    "gave up before the deadline (timeouts.total = {}): {}",
                    row.total,
                    report()
                );
                assert!(
                    out.elapsed < Duration::from_secs(15),
                    "the deadline did not end the run: {}",
                    report()
                );
            } else {
                assert!(
                    out.elapsed < Duration::from_secs(5),
                    "a permanent failure must end at once: {}",
                    report()
                );
            }
            assert!(
                out.stderr.contains("ERROR"),
                "a failure ends with an ERROR line: {}",
                report()
            );
        }
    }

    for fragment in row.says {
        let fragment = fragment
            .replace("{raft}", raft)
            .replace(
                "{moved}",
                &moved(if raft.is_empty() { "h:1" } else { raft }),
            )
            .replace("{org}", ORG);
        assert!(
            out.stderr.contains(&fragment),
            "flint's stderr lacks {fragment:?}: {}",
            report()
        );
    }

    for check in row.checks {
        match *check {
            MinElapsedMs(ms) => assert!(
                out.elapsed >= Duration::from_millis(ms),
                "Retry-After not honoured: the run took {:?}, less than {ms} ms: {}",
                out.elapsed,
                report()
            ),
            Requests(route, n) => assert_eq!(
                state["requests"][route].as_u64(),
                Some(n),
                "requests.{route}: {}",
                report()
            ),
            RequestsOn(listener, route, n) => assert_eq!(
                state["requests_by_listener"][listener][route]
                    .as_u64()
                    .unwrap_or(0),
                n,
                "requests_by_listener.{listener}.{route}: {}",
                report()
            ),
            LeaderIs(id) => assert_eq!(state["leader"], id, "{}", report()),
            Member(expected) => assert_eq!(
                member,
                expected,
                "node04 listed: {member}, expected {expected}: {}",
                report()
            ),
            IamUntouched => assert_eq!(
                state["iam"]["bootstrapped"],
                false,
                "the fault's 409 must not change IAM: {}",
                report()
            ),
        }
    }

    // The row tested what it says: the fault caught at least one request (a fault with `times`
    // is gone once used up; one still armed must have been applied).
    for fault in server.faults() {
        assert!(
            fault["applied"].as_u64().unwrap_or(0) >= 1,
            "fault {fault} never fired: the row missed its point: {}",
            report()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// docs/fault-matrix.md, rendered from the rows.

const BEGIN: &str = "<!-- BEGIN GENERATED TABLE (tests/admin_faults.rs) -->";
const END: &str = "<!-- END GENERATED TABLE -->";

fn describe_outcome(row: &Row) -> String {
    match (row.outcome, row.step.is_iam()) {
        (Joined, false) => "joined: exit 0, marker, listed once".into(),
        (Joined, true) => "set up: exit 0, marker".into(),
        (Exit(69), _) => "exit 69 at the deadline, no marker".into(),
        (Exit(code), _) => format!("exit {code} at once, no marker"),
    }
}

fn describe_check(check: &Check) -> String {
    match *check {
        MinElapsedMs(ms) => format!("run ≥ {} s (Retry-After honoured)", ms / 1000),
        Requests(route, n) => format!("`{route}` requests = {n}"),
        RequestsOn(listener, route, n) => format!("`{route}` on {listener} = {n}"),
        LeaderIs(id) => format!("leader is then {id}"),
        Member(true) => "node04 listed".into(),
        Member(false) => "node04 not listed".into(),
        IamUntouched => "IAM state unchanged".into(),
    }
}

fn describe_setup(row: &Row) -> &'static str {
    match (row.setup, row.step) {
        (Setup::Peers, _) => "peers node03, node02",
        (Setup::LeaderNode02, _) => "leader moved to node02 first; peers node03, node02",
        (Setup::PlantWhenAdding, _) => "node04 planted while the add is on its way",
        (Setup::None, Confirm) => "add held 1 s, fault armed on `adding`",
        (Setup::None, _) => "",
    }
}

fn render_table() -> String {
    let mut out = String::new();
    out.push_str(BEGIN);
    out.push('\n');
    out.push_str(
        "| test | step | fault (route from the step) | setup | timeouts | outcome | also checked |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|\n");
    for (name, row) in ROWS {
        let mut also: Vec<String> = row.says.iter().map(|s| format!("says `{s}`")).collect();
        also.extend(row.checks.iter().map(describe_check));
        let mut timeouts = Vec::new();
        if row.total != "20s" {
            timeouts.push(format!("total {}", row.total));
        }
        if row.request != "5s" {
            timeouts.push(format!("request {}", row.request));
        }
        let timeouts = timeouts.join(", ");
        out.push_str(&format!(
            "| `{name}` | {} | `{}` | {} | {timeouts} | {} | {} |\n",
            row.step.name(),
            row.fault,
            describe_setup(row),
            describe_outcome(row),
            also.join("; ")
        ));
    }
    out.push_str(END);
    out.push('\n');
    out
}

fn doc_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/fault-matrix.md")
}

#[test]
fn fault_matrix_doc_matches_the_rows() {
    let path = doc_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let start = text.find(BEGIN).expect("the doc has the BEGIN marker");
    let end = text[start..].find(END).expect("the doc has the END marker") + start + END.len() + 1;
    let expected = render_table();
    if text.get(start..end) != Some(expected.as_str()) {
        if std::env::var_os("FLINT_BLESS").is_some() {
            let updated = format!(
                "{}{expected}{}",
                &text[..start],
                &text[end.min(text.len())..]
            );
            std::fs::write(&path, updated).expect("rewrite the fault matrix doc");
            return;
        }
        panic!(
            "{} is out of date with the rows of tests/admin_faults.rs; rerun with FLINT_BLESS=1 \
             to rewrite it. Expected table:\n{expected}",
            path.display()
        );
    }
}

#[test]
fn every_fault_kind_of_the_test_server_is_in_the_matrix() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/test-server.md"),
    )
    .expect("read docs/test-server.md");
    // The kinds table: rows `| \`kind\` | parameters | what the client gets |` after its header.
    let header = doc
        .find("| kind | parameters |")
        .expect("docs/test-server.md has the kinds table");
    let kinds: Vec<String> = doc[header..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cell = l.trim_start_matches('|').split('|').next()?.trim();
            Some(cell.trim_matches('`').to_string())
        })
        .collect();
    assert!(kinds.len() >= 14, "parsed kinds: {kinds:?}");
    let covered: Vec<String> = ROWS
        .iter()
        .map(|(_, r)| {
            let f: Value = serde_json::from_str(r.fault).expect("row fault is JSON");
            f["kind"]
                .as_str()
                .expect("row fault has a kind")
                .to_string()
        })
        .collect();
    let missing: Vec<&String> = kinds.iter().filter(|k| !covered.contains(k)).collect();
    assert!(missing.is_empty(), "fault kinds without a row: {missing:?}");
    for step in [Health, List, Add, Confirm, IamHealth, Bootstrap] {
        assert!(
            ROWS.iter().any(|(_, r)| r.step == step),
            "no row for step {step:?}"
        );
    }
}
