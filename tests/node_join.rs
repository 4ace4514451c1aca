//! `flint node-join`, the manual recovery command: with no flag it only looks (markers,
//! membership as the cluster lists it, what a join would do) and changes nothing; `--json`;
//! `--force` re-runs a join whose marker exists; the binary invoked as `node-join` through a
//! symlink; `--service etcd --abandon` against a real etcd cluster.
mod common;

use common::{
    CHAINFIRE_MARKER, CHAINFIRE_PORT, EtcdCluster, FLAREDB_PORT, FlintOutput, Lab, Node, Secrets,
    TestServer, assert_member_once, chain_node, dir_entries, marker, run_bounded,
};
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

const NODE: usize = 3;

struct Setup {
    chainfire: TestServer,
    flaredb: Option<TestServer>,
    iam: TestServer,
    node: Node,
    lab: Lab,
}

/// chainfire (and flaredb, when `with_flaredb`) and IAM; node04 has joined chainfire only.
fn joined_chainfire_only(with_flaredb: bool) -> Setup {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let chainfire = TestServer::cluster(&lab, CHAINFIRE_PORT, 4, 3, secrets.cluster_options(&lab));
    let flaredb = with_flaredb
        .then(|| TestServer::cluster(&lab, FLAREDB_PORT, 4, 3, secrets.cluster_options(&lab)));
    let iam = TestServer::iam_with(&lab, 4, secrets.iam_options(&lab));
    let mut node = chain_node(&lab, NODE, &secrets, false);
    node.config["timeouts"]["total"] = serde_json::json!("10s");
    node.run(&["join", "chainfire"])
        .assert_code(0, "join chainfire");
    Setup {
        chainfire,
        flaredb,
        iam,
        node,
        lab,
    }
}

impl Setup {
    /// Every server's request counters, to prove a look changed and sent nothing that writes.
    fn writes(&self) -> Vec<u64> {
        let mut counts = vec![
            self.chainfire.requests("add"),
            self.iam.requests("bootstrap"),
        ];
        if let Some(f) = &self.flaredb {
            counts.push(f.requests("add"));
        }
        counts
    }

    /// The state dir's entries and every file's content and inode.
    fn state_snapshot(&self) -> Vec<(String, String, u64)> {
        dir_entries(&self.node.state_dir)
            .into_iter()
            .map(|name| {
                let path = self.node.state_dir.join(&name);
                let content = std::fs::read_to_string(&path).unwrap_or_default();
                let inode = std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
                (name, content, inode)
            })
            .collect()
    }
}

#[test]
fn status_prints_each_service_and_changes_nothing() {
    let s = joined_chainfire_only(true);
    let writes = s.writes();
    let files = s.state_snapshot();

    let out = s.node.run(&["node-join"]);
    out.assert_code(0, "node-join with no flag");
    let text = &out.stdout;
    for expected in [
        "chainfire:",
        "marker: present (member node04, leader node01",
        "member: node04 as follower",
        "nothing: joined",
        "flaredb:",
        "marker: absent",
        "not a member",
        "`flint join flaredb` will add this node",
        "iam:",
        "`flint iam-setup`",
    ] {
        assert!(
            text.contains(expected),
            "node-join's report lacks {expected:?}: {}",
            out.describe()
        );
    }
    // The services in first-boot order, each once.
    let order: Vec<usize> = ["chainfire:", "flaredb:", "iam:"]
        .iter()
        .map(|h| text.find(h).expect("heading"))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");

    assert_eq!(s.writes(), writes, "node-join with no flag sent a write");
    assert_eq!(
        s.state_snapshot(),
        files,
        "node-join with no flag changed the state dir"
    );
    let flaredb = s.flaredb.as_ref().expect("flaredb");
    assert!(
        flaredb.members().iter().all(|m| m["id"] != "node04"),
        "node-join added node04 to flaredb"
    );

    // A stale marker: the member is gone; node-join says so and points at --force.
    s.chainfire.remove_member("node04");
    let out = s.node.run(&["node-join", "--service", "chainfire"]);
    out.assert_code(0, "node-join with a stale marker");
    assert!(
        out.stdout.contains("does not list this node") && out.stdout.contains("--force"),
        "{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("flaredb:"),
        "--service chainfire only: {}",
        out.describe()
    );
    assert_eq!(s.writes(), writes, "still nothing written");
    assert!(s.chainfire.members().iter().all(|m| m["id"] != "node04"));
}

#[test]
fn json_report_has_the_documented_shape() {
    // No flaredb server: its membership cannot be read, which the report says.
    let s = joined_chainfire_only(false);
    let writes = s.writes();
    let out = s.node.run(&["node-join", "--json"]);
    out.assert_code(0, "node-join --json");
    let report: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("node-join --json printed no JSON ({e}): {}", out.describe()));
    let entries = report.as_array().expect("a list, one entry per service");
    let services: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["service"].as_str())
        .collect();
    assert_eq!(services, ["chainfire", "flaredb", "iam"], "{report:#}");
    for entry in entries {
        let keys: Vec<&String> = entry.as_object().expect("an object").keys().collect();
        for key in ["service", "marker", "member", "error", "next"] {
            assert!(
                entry.get(key).is_some(),
                "no {key} in {entry:#} (keys {keys:?})"
            );
        }
        assert!(entry["next"].is_string(), "{entry:#}");
    }
    let chainfire = &entries[0];
    assert_eq!(chainfire["marker"]["node_id"], "node04", "{chainfire:#}");
    assert_eq!(chainfire["marker"]["member_id"], "node04", "{chainfire:#}");
    assert_eq!(chainfire["marker"]["leader"], "node01", "{chainfire:#}");
    assert!(chainfire["marker"]["joined_at"].is_u64(), "{chainfire:#}");
    assert_eq!(chainfire["member"]["id"], "node04", "{chainfire:#}");
    assert_eq!(chainfire["member"]["role"], "follower", "{chainfire:#}");
    assert!(chainfire["error"].is_null(), "{chainfire:#}");
    let flaredb = &entries[1];
    assert!(flaredb["marker"].is_null(), "{flaredb:#}");
    assert!(flaredb["member"].is_null(), "{flaredb:#}");
    assert!(
        flaredb["error"].as_str().is_some_and(|e| !e.is_empty()),
        "flaredb is down: the error says why: {flaredb:#}"
    );
    let iam = &entries[2];
    assert!(
        iam["marker"].is_null() && iam["member"].is_null(),
        "{iam:#}"
    );
    assert_eq!(s.writes(), writes, "node-join --json sent a write");

    let out = s
        .node
        .run(&["node-join", "--json", "--service", "chainfire"]);
    out.assert_code(0, "node-join --json --service chainfire");
    let one: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{one:#}");
    assert_eq!(one[0]["service"], "chainfire");
}

#[test]
fn force_reruns_a_join_whose_marker_exists() {
    let s = joined_chainfire_only(false);
    let raft = s.chainfire.raft_addr(NODE);
    let marker_path = s.node.state_dir.join(CHAINFIRE_MARKER);
    let inode = std::fs::metadata(&marker_path).expect("marker").ino();
    let adds = s.chainfire.requests("add");
    let lists = s.chainfire.requests("list");

    // Still a member: confirmed again, marker rewritten, nothing added.
    let out = s
        .node
        .run(&["node-join", "--service", "chainfire", "--force"]);
    out.assert_code(0, "node-join --force as a member");
    let rewritten = std::fs::metadata(&marker_path)
        .expect("marker after --force")
        .ino();
    assert_ne!(
        rewritten,
        inode,
        "--force did not rewrite the marker: {}",
        out.describe()
    );
    assert!(
        s.chainfire.requests("list") > lists,
        "--force did not ask the cluster"
    );
    assert_eq!(
        s.chainfire.requests("add"),
        adds,
        "--force added a member twice"
    );
    assert_member_once(&s.chainfire, &s.node, &raft);

    // The member was removed behind the marker's back: --force joins again.
    s.chainfire.remove_member("node04");
    let out = s
        .node
        .run(&["node-join", "--service", "chainfire", "--force"]);
    out.assert_code(0, "node-join --force after the member was removed");
    assert_eq!(s.chainfire.requests("add"), adds + 1, "{}", out.describe());
    assert_member_once(&s.chainfire, &s.node, &raft);
    assert_eq!(
        marker(&s.node, CHAINFIRE_MARKER).expect("marker")["node_id"],
        "node04"
    );

    // A plain join still honours the marker and sends nothing.
    let before = s.chainfire.state()["requests"].clone();
    let out = s.node.run(&["join", "chainfire"]);
    out.assert_code(0, "join with the marker present");
    assert_eq!(
        s.chainfire.state()["requests"],
        before,
        "{}",
        out.describe()
    );

    // IAM's setup again: found done (409), recorded again.
    s.node.run(&["iam-setup"]).assert_code(0, "iam-setup");
    let iam_marker = s.node.state_dir.join(common::IAM_MARKER);
    let inode = std::fs::metadata(&iam_marker).expect("IAM marker").ino();
    let out = s.node.run(&["node-join", "--service", "iam", "--force"]);
    out.assert_code(0, "node-join --service iam --force");
    assert_eq!(s.iam.requests("bootstrap"), 2, "{}", out.describe());
    assert_ne!(
        std::fs::metadata(&iam_marker).expect("IAM marker").ino(),
        inode,
        "--force did not rewrite the IAM marker"
    );
    assert_eq!(s.iam.state()["iam"]["org"], common::ORG);
}

/// The binary run under the name `node-join` (a symlink, as the packages install it).
fn run_as_node_join(lab: &Lab, node: &Node, args: &[&str]) -> FlintOutput {
    let bin = lab.path().join("bin");
    std::fs::create_dir_all(&bin).expect("create bin dir");
    let link = bin.join("node-join");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_flint"), &link).expect("symlink");
    }
    // Writes the config as every run does; the command itself is rebuilt around the symlink.
    drop(node.command(&[]));
    let mut command = Command::new(&link);
    command
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env("NO_COLOR", "1")
        .arg("--config")
        .arg(node.config_path())
        .arg("--state-dir")
        .arg(&node.state_dir)
        .args(args);
    let started = std::time::Instant::now();
    let output = run_bounded(&mut command, Duration::from_secs(60));
    FlintOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

#[test]
fn invoked_as_node_join_through_a_symlink() {
    let s = joined_chainfire_only(true);
    let writes = s.writes();
    let direct = s.node.run(&["node-join"]);
    direct.assert_code(0, "flint node-join");
    let linked = run_as_node_join(&s.lab, &s.node, &[]);
    linked.assert_code(0, "node-join (symlink)");
    assert_eq!(linked.stdout, direct.stdout, "the same report either way");

    let json = run_as_node_join(&s.lab, &s.node, &["--json", "--service", "chainfire"]);
    json.assert_code(0, "node-join --json (symlink)");
    let report: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(report[0]["member"]["id"], "node04", "{report:#}");
    assert_eq!(s.writes(), writes, "node-join (symlink) sent a write");

    let bad = run_as_node_join(&s.lab, &s.node, &["--no-such-flag"]);
    bad.assert_code(64, "node-join (symlink) with a bad flag");
}

/// After a rollback, an older flint reads the marker a newer one wrote: fields it does not know
/// are ignored, so the join stays done instead of failing with 78 on every boot.
#[test]
fn a_marker_from_a_newer_flint_still_counts_as_joined() {
    let s = joined_chainfire_only(false);
    let path = s.node.state_dir.join(".chainfire-joined");
    let mut marker: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    marker["flint_version"] = "9.0.0".into();
    marker["raft_term"] = 42.into();
    marker["confirmed_by"] = serde_json::json!({"endpoint": "https://10.0.0.1:2379", "at": 1});
    std::fs::write(&path, serde_json::to_vec_pretty(&marker).unwrap()).unwrap();
    let writes = s.writes();

    let again = s.node.run(&["join", "chainfire"]);
    again.assert_code(0, "join chainfire with a newer flint's marker");
    assert!(
        again.stderr.contains("already joined"),
        "{}",
        again.describe()
    );
    let look = s
        .node
        .run(&["node-join", "--json", "--service", "chainfire"]);
    look.assert_code(0, "node-join with a newer flint's marker");
    let report: Value = serde_json::from_str(&look.stdout).expect("JSON");
    assert_eq!(report[0]["marker"]["flint_version"], "9.0.0", "{report:#}");
    assert_eq!(s.writes(), writes, "a run-once exit sent a write");
}

#[test]
fn abandon_removes_an_etcd_learner_and_refuses_a_started_voter() {
    let cluster = EtcdCluster::start(3);
    let node = cluster.node(3);
    node.run(&["join", "etcd", "--phase", "add"])
        .assert_code(0, "join etcd --phase add");
    let learner = cluster.members_with_peer_url(&node.peer_url());
    assert_eq!(learner.len(), 1, "{learner:#?}");
    assert!(learner[0].is_learner, "{learner:#?}");
    assert!(node.env_file().exists());

    // Looking first changes nothing.
    let look = node.run(&["node-join", "--service", "etcd"]);
    look.assert_code(0, "node-join --service etcd");
    assert!(look.stdout.contains("--abandon"), "{}", look.describe());
    assert_eq!(cluster.members_with_peer_url(&node.peer_url()).len(), 1);

    let out = node.run(&["node-join", "--service", "etcd", "--abandon"]);
    out.assert_code(0, "node-join --service etcd --abandon");
    assert!(
        cluster.members_with_peer_url(&node.peer_url()).is_empty(),
        "the learner is still there: {}",
        out.describe()
    );
    assert!(
        !node.env_file().exists(),
        "etcd.env not removed: {}",
        out.describe()
    );
    assert!(node.marker().is_none());
    assert_eq!(cluster.member_list().len(), 3);
    // Nothing left to abandon: still fine.
    node.run(&["node-join", "--service", "etcd", "--abandon"])
        .assert_code(0, "a second --abandon");
    // etcd.env that cannot be removed is the state directory's problem, never "retry later":
    // every error reaches an exit status someone chose (69 would have the unit retry forever).
    std::fs::create_dir_all(node.env_file().join("in-the-way")).unwrap();
    let stuck = node.run(&["node-join", "--service", "etcd", "--abandon"]);
    stuck.assert_code(78, "--abandon when etcd.env cannot be removed");
    assert!(
        stuck.stderr.contains("cannot remove") && stuck.stderr.contains("etcd.env"),
        "{}",
        stuck.describe()
    );
    std::fs::remove_dir_all(node.env_file()).unwrap();

    // --abandon names etcd only.
    let usage = node.run(&["node-join", "--abandon"]);
    usage.assert_code(64, "--abandon without --service etcd");

    // node01 is a started voter: removing it is etcdctl's decision, not node-join's.
    let voter = cluster.node(0);
    let out = voter.run(&["node-join", "--service", "etcd", "--abandon"]);
    out.assert_code(65, "--abandon of a started voter");
    assert!(
        out.stderr.contains("etcdctl member remove"),
        "{}",
        out.describe()
    );
    let members = cluster.member_list();
    assert_eq!(members.len(), 3, "{members:#?}");
    assert!(members.iter().any(|m| m.name == "node01"), "{members:#?}");
}

#[test]
fn a_configuration_problem_is_named_as_one_not_blamed_on_the_cluster() {
    // etcd's look finds this node's member by its peer URL, which comes from `raft_addr`: without
    // it there is nothing to look for, whatever the cluster would answer.
    let lab = Lab::new();
    let mut node = lab.node(3);
    node.config
        .as_object_mut()
        .expect("an object")
        .remove("raft_addr");
    node.config["etcd"]
        .as_object_mut()
        .expect("an etcd section")
        .remove("peer_url");
    let config = node.config_path();
    let config = config.to_str().expect("UTF-8 path");
    for args in [
        &["node-join"][..],
        &["node-join", "--json"],
        &["node-join", "--service", "etcd"],
    ] {
        let out = node.run(args);
        out.assert_code(78, &format!("{args:?} without raft_addr"));
        assert!(
            out.stderr.contains(config) && out.stderr.contains("`raft_addr`"),
            "{args:?}: the error names the file and the field: {}",
            out.describe()
        );
        assert!(
            !out.stdout.contains("did not answer") && !out.stderr.contains("did not answer"),
            "{args:?}: the cluster is blamed: {}",
            out.describe()
        );
    }
}
