//! `flint join etcd` against a real 3-member etcd cluster with mutual TLS: learner, started,
//! promoted; run-once; crash safety at every step of the add; failover to a peer; deadline;
//! concurrent runs on one node and on two nodes.
mod common;

use common::{
    Canned, CannedHttp, EtcdCluster, FlintOutput, Lab, Node, ProxyMode, dir_entries, read_env_file,
    wait_until,
};
use serde_json::json;
use std::net::TcpListener;
use std::time::Duration;

const JOIN: &[&str] = &["join", "etcd"];
const ADD: &[&str] = &["join", "etcd", "--phase", "add"];
const PROMOTE: &[&str] = &["join", "etcd", "--phase", "promote"];
/// Bound of one whole join as the tests drive it; the configs say "30s" total.
const JOIN_TIMEOUT: Duration = Duration::from_secs(40);
/// Long enough for the test to flip the proxy after reading flint's "about to send" line, short
/// enough to keep the TLS handshake through the proxy quick.
const PROXY_LATENCY: Duration = Duration::from_millis(500);

/// A full `flint join etcd` (both phases), the node's etcd started once the env file appears.
fn join(cluster: &EtcdCluster, node: &mut Node) -> FlintOutput {
    let run = node.spawn(JOIN);
    cluster
        .drive_joins(&mut [node], vec![run], JOIN_TIMEOUT)
        .pop()
        .expect("one run")
}

fn env_value(vars: &[(String, String)], key: &str) -> String {
    vars.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {key} in etcd.env: {vars:?}"))
}

/// Routes every admin request of `node` through `proxy`: leader URL only, no peers to fall back on.
fn through_proxy(node: &mut Node, proxy_url: &str) {
    node.config["leader_url"] = json!(proxy_url);
    node.config["peers"] = json!([]);
}

#[test]
fn join_fourth_member_in_two_phases() {
    let cluster = EtcdCluster::start(3);
    let mut node = cluster.node(3);

    let add = node.run(ADD);
    add.assert_code(0, "--phase add");
    assert!(add.stderr.contains("adding learner"), "{}", add.describe());
    let vars = read_env_file(&node.env_file());
    assert_eq!(env_value(&vars, "ETCD_NAME"), "node04");
    assert_eq!(env_value(&vars, "ETCD_INITIAL_CLUSTER_STATE"), "existing");
    assert_eq!(
        env_value(&vars, "ETCD_INITIAL_ADVERTISE_PEER_URLS"),
        node.peer_url()
    );
    let mut initial: Vec<String> = env_value(&vars, "ETCD_INITIAL_CLUSTER")
        .split(',')
        .map(str::to_string)
        .collect();
    initial.sort();
    let mut expected: Vec<String> = (0..4)
        .map(|i| format!("{}={}", Lab::node_name(i), cluster.lab.peer_url(i)))
        .collect();
    expected.sort();
    assert_eq!(initial, expected, "ETCD_INITIAL_CLUSTER");
    let ours = cluster.members_with_peer_url(&node.peer_url());
    assert_eq!(ours.len(), 1, "{ours:#?}");
    assert!(
        ours[0].is_learner && !ours[0].started,
        "added as an unstarted learner: {ours:#?}"
    );
    assert!(node.marker().is_none(), "marker before promotion");

    node.start_etcd(&cluster);
    let promote = node.run(PROMOTE);
    promote.assert_code(0, "--phase promote");
    let members = cluster.member_list();
    assert_eq!(members.len(), 4, "{members:#?}");
    assert!(
        members.iter().all(|m| m.started && !m.is_learner),
        "expected 4 started voters: {members:#?}"
    );
    let member = cluster.assert_joined(&node);
    assert_eq!(
        member.id, ours[0].id,
        "the learner that was added got promoted"
    );
}

#[test]
fn join_without_phase_then_rerun_is_a_no_op() {
    let mut cluster = EtcdCluster::start(3);
    let mut node = cluster.node(3);

    let out = join(&cluster, &mut node);
    out.assert_code(0, "flint join etcd");
    assert!(out.stderr.contains("joined"), "{}", out.describe());
    cluster.assert_joined(&node);
    cluster.wait_for_voters(4, Duration::from_secs(5));

    // With every member down, only a run that never touches the network can succeed.
    node.stop_etcd();
    cluster.stop_all();
    for args in [JOIN, ADD, PROMOTE] {
        let out = node.run(args);
        out.assert_code(0, &format!("rerun {args:?} with the marker present"));
        assert!(out.stderr.contains("already joined"), "{}", out.describe());
    }
}

#[test]
fn crash_before_the_add_answer_is_read() {
    let cluster = EtcdCluster::start(3);
    let proxy = cluster.lab.proxy(cluster.lab.client_addr(0));
    proxy.set_response_latency(PROXY_LATENCY);
    let mut node = cluster.node(3);
    through_proxy(&mut node, &proxy.url());
    cluster.wait_reconfigurable();

    let mut run = node.spawn(ADD);
    run.wait_for_line("adding learner", Duration::from_secs(20));
    proxy.set_mode(ProxyMode::HoldResponses);
    let added = wait_until("the add to reach etcd", Duration::from_secs(10), || {
        cluster.members_with_peer_url(&node.peer_url()).pop()
    });
    let crashed = run.kill9();
    assert!(
        !node.env_file().exists(),
        "flint got the add answer before the proxy held it; the test missed its point: {}",
        crashed.describe()
    );

    proxy.set_response_latency(Duration::ZERO);
    proxy.set_mode(ProxyMode::Pass);
    let out = join(&cluster, &mut node);
    out.assert_code(0, "rerun after a crash before the add answer");
    let member = cluster.assert_joined(&node);
    assert_eq!(
        member.id, added.id,
        "the rerun must reuse the member the crashed run added"
    );
    cluster.wait_for_voters(4, Duration::from_secs(5));
}

#[test]
fn crash_after_the_env_file_is_written() {
    let cluster = EtcdCluster::start(3);
    let mut node = cluster.node(3);

    let mut run = node.spawn(JOIN);
    run.wait_for_line("wrote", Duration::from_secs(20));
    let crashed = run.kill9();
    assert!(node.env_file().exists(), "{}", crashed.describe());
    assert!(node.marker().is_none());
    let added = cluster.members_with_peer_url(&node.peer_url());
    assert_eq!(added.len(), 1, "{added:#?}");

    let out = join(&cluster, &mut node);
    out.assert_code(0, "rerun after a crash after etcd.env");
    let member = cluster.assert_joined(&node);
    assert_eq!(member.id, added[0].id, "reused, not added again");
    cluster.wait_for_voters(4, Duration::from_secs(5));
}

#[test]
fn crash_before_the_marker_is_written() {
    let cluster = EtcdCluster::start(3);
    let proxy = cluster.lab.proxy(cluster.lab.client_addr(0));
    proxy.set_response_latency(PROXY_LATENCY);
    let mut node = cluster.node(3);
    through_proxy(&mut node, &proxy.url());

    node.run(ADD)
        .assert_code(0, "--phase add through the proxy");
    node.start_etcd(&cluster);
    // A learner that is not yet in sync makes etcd refuse the first promote, whose answer the
    // proxy would then swallow; only a caught-up learner makes the held answer the success.
    cluster.wait_caught_up(node.ip, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));

    let mut run = node.spawn(PROMOTE);
    run.wait_for_line("promoting member", Duration::from_secs(20));
    proxy.set_mode(ProxyMode::HoldResponses);
    wait_until(
        "the promotion to reach etcd",
        Duration::from_secs(10),
        || {
            cluster
                .members_with_peer_url(&node.peer_url())
                .iter()
                .any(|m| !m.is_learner)
                .then_some(())
        },
    );
    let crashed = run.kill9();
    assert!(
        node.marker().is_none(),
        "flint got the promote answer before the proxy held it: {}",
        crashed.describe()
    );

    proxy.set_response_latency(Duration::ZERO);
    proxy.set_mode(ProxyMode::Pass);
    let out = join(&cluster, &mut node);
    out.assert_code(0, "rerun after a crash before the marker");
    cluster.assert_joined(&node);
    cluster.wait_for_voters(4, Duration::from_secs(5));
}

#[test]
fn joins_through_a_peer_when_the_leader_url_is_down() {
    // The leader URL names a host where nothing listens. Stopping a real member would not do:
    // etcd 3.4 rejects every member add while a voter is down ("not healthy for reconfigure").
    let cluster = EtcdCluster::start(3);
    let mut node = cluster.node(3);
    node.config["leader_url"] = json!(cluster.lab.client_url(9));
    node.config["peers"] = json!([cluster.client_url(1)]);

    let out = join(&cluster, &mut node);
    out.assert_code(0, "join with leader_url down and a live peer");
    cluster.assert_joined(&node);
    cluster.wait_for_voters(4, Duration::from_secs(5));
}

#[test]
fn joins_through_a_peer_when_the_leader_url_hangs() {
    let cluster = EtcdCluster::start(3);
    // Accepts connections, never answers: only flint's request timeout gets it out.
    let silent = cluster.lab.proxy(cluster.lab.client_addr(0));
    silent.set_mode(ProxyMode::HoldResponses);
    let mut node = cluster.node(3);
    node.config["leader_url"] = json!(silent.url());
    node.config["peers"] = json!([cluster.client_url(1)]);
    node.config["timeouts"]["request"] = json!("2s");

    let out = join(&cluster, &mut node);
    out.assert_code(0, "join with leader_url hanging and a live peer");
    cluster.assert_joined(&node);
    cluster.wait_for_voters(4, Duration::from_secs(5));
}

#[test]
fn joins_through_a_peer_when_the_leader_url_refuses() {
    let cluster = EtcdCluster::start(3);
    let refusing = cluster.lab.proxy(cluster.lab.client_addr(0));
    refusing.set_mode(ProxyMode::Refuse);
    let mut node = cluster.node(3);
    node.config["leader_url"] = json!(refusing.url());
    node.config["peers"] = json!([cluster.client_url(2)]);

    let out = join(&cluster, &mut node);
    out.assert_code(0, "join with leader_url refusing and a live peer");
    cluster.assert_joined(&node);
    cluster.wait_for_voters(4, Duration::from_secs(5));
}

/// The state dir after a failed run: at most the lock, never an env file or marker, whole or half.
fn assert_nothing_written(node: &Node) {
    let entries = dir_entries(&node.state_dir);
    assert!(
        entries.iter().all(|e| e.ends_with(".lock")),
        "state dir after a failed join: {entries:?}"
    );
}

#[test]
fn unreachable_cluster_ends_with_69_at_the_deadline() {
    // Nothing listens at the lab addresses: every connection is refused.
    let lab = Lab::new();
    let mut node = lab.node(3);
    node.config["peers"] = json!([lab.client_url(1), lab.client_url(2)]);
    node.config["timeouts"] = json!({"total": "3s", "request": "2s", "connect": "1s"});
    for args in [ADD, JOIN] {
        let out = node.run(args);
        out.assert_code(69, &format!("{args:?} with the cluster unreachable"));
        // Refused connections are retried: flint must not give up at the first one.
        assert!(
            out.elapsed >= Duration::from_millis(1500),
            "gave up long before the deadline: {}",
            out.describe()
        );
        assert_nothing_written(&node);
    }
}

#[test]
fn silent_cluster_ends_with_69_at_the_deadline() {
    // Connections are accepted (by the kernel) but nothing ever answers, and a single request
    // may take longer than the whole deadline: the deadline must still win.
    let lab = Lab::new();
    let _silent = TcpListener::bind(lab.client_addr(0)).expect("bind silent listener");
    let mut node = lab.node(3);
    node.config["timeouts"] = json!({"total": "3s", "request": "30s", "connect": "30s"});
    let out = node.run(ADD);
    out.assert_code(69, "cluster that accepts but never answers");
    assert!(
        out.elapsed < Duration::from_secs(10),
        "the deadline did not cut a hanging request: {}",
        out.describe()
    );
    assert_nothing_written(&node);
}

#[test]
fn two_runs_on_one_node_join_once() {
    let cluster = EtcdCluster::start(3);
    let mut node = cluster.node(3);

    let runs = vec![node.spawn(JOIN), node.spawn(JOIN)];
    let outs = cluster.drive_joins(&mut [&mut node], runs, JOIN_TIMEOUT);
    for out in &outs {
        out.assert_code(0, "concurrent flint join etcd on one state dir");
    }
    cluster.assert_joined(&node);
    cluster.wait_for_voters(4, Duration::from_secs(5));
    let waiters = outs
        .iter()
        .filter(|o| o.stderr.contains("already joined"))
        .count();
    assert_eq!(
        waiters,
        1,
        "one run joins, the other finds the marker once it gets the lock:\n{}\n=====\n{}",
        outs[0].describe(),
        outs[1].describe()
    );
}

#[test]
fn two_nodes_joining_at_once_both_become_voters() {
    let cluster = EtcdCluster::start(3);
    let mut node4 = cluster.node(3);
    let mut node5 = cluster.node(4);
    for node in [&mut node4, &mut node5] {
        // Room for the second node to wait for the learner slot and then go through its own join.
        node.config["timeouts"]["total"] = json!("45s");
    }

    let runs = vec![node4.spawn(JOIN), node5.spawn(JOIN)];
    let outs = cluster.drive_joins(&mut [&mut node4, &mut node5], runs, Duration::from_secs(50));
    for out in &outs {
        out.assert_code(0, "two nodes joining at once");
    }
    cluster.assert_joined(&node4);
    cluster.assert_joined(&node5);
    cluster.wait_for_voters(5, Duration::from_secs(5));
}

#[test]
fn bootstrap_nodes_wait_for_a_leader_and_quorum_then_mark() {
    let mut cluster = EtcdCluster::start(3);
    let members = cluster.member_list();

    let mut first = cluster.node(0);
    first.config["bootstrap"] = json!(true);
    let run = first.run(JOIN);
    run.assert_code(0, "bootstrap join of node01");
    let marker = first.marker().expect("marker after a bootstrap join");
    let ours = members
        .iter()
        .find(|m| m.name == "node01")
        .expect("node01 listed");
    assert_eq!(marker["member_id"], json!(ours.id_hex), "{marker}");
    assert!(
        members.iter().any(|m| json!(m.name) == marker["leader"]),
        "the leader is a member by name: {marker}"
    );
    assert_eq!(
        cluster.member_list().len(),
        3,
        "a bootstrap join adds nothing"
    );

    // Without a quorum there is no leader: the bootstrap node waits, then gives up with 69.
    cluster.stop(1);
    cluster.stop(2);
    std::fs::remove_file(first.marker_path()).expect("remove the marker");
    first.config["timeouts"]["total"] = json!("4s");
    let run = first.run(JOIN);
    run.assert_code(69, "bootstrap join without quorum");
    assert!(run.stderr.contains("leader"), "{}", run.describe());
    assert!(first.marker().is_none(), "no marker without a leader");
}

/// The simultaneous 3-node bootstrap, as the units order it: `--phase add` before etcd
/// starts returns at once (it used to wait for a leader that its own etcd, not yet started, was
/// needed to elect: `timeouts.total`, then 69), writing the initial cluster into etcd.env; etcd
/// starts from it; `--phase promote` waits for a leader and a quorum of healthy members.
#[test]
fn a_simultaneous_bootstrap_starts_etcd_at_once_and_marks_after_quorum() {
    let cluster = EtcdCluster::start(0);
    let initial: serde_json::Map<String, serde_json::Value> = (0..3)
        .map(|i| (Lab::node_name(i), json!(cluster.peer_url(i))))
        .collect();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let mut node = cluster.node(i);
            node.config["bootstrap"] = json!(true);
            node.config["peers"] = json!([cluster.client_url(1), cluster.client_url(2)]);
            node.config["etcd"]["initial_cluster"] = json!(initial);
            node
        })
        .collect();

    for node in &nodes {
        let started = std::time::Instant::now();
        let add = node.run(ADD);
        add.assert_code(0, "--phase add on a bootstrap node");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "--phase add waited {:?} before etcd could start: {}",
            started.elapsed(),
            add.describe()
        );
        let vars = read_env_file(&node.env_file());
        assert_eq!(env_value(&vars, "ETCD_NAME"), node.id);
        assert_eq!(env_value(&vars, "ETCD_INITIAL_CLUSTER_STATE"), "new");
        assert_eq!(
            env_value(&vars, "ETCD_INITIAL_ADVERTISE_PEER_URLS"),
            node.peer_url()
        );
        let mut members: Vec<&str> = env_value(&vars, "ETCD_INITIAL_CLUSTER")
            .leak()
            .split(',')
            .collect();
        members.sort_unstable();
        let expected: Vec<String> = (0..3)
            .map(|i| format!("{}={}", Lab::node_name(i), cluster.peer_url(i)))
            .collect();
        assert_eq!(members, expected);
        assert!(node.marker().is_none(), "phase add marks nothing");
    }

    // One member alone has no leader: promote waits.
    nodes[0].start_etcd(&cluster);
    let mut promote = nodes[0].spawn(PROMOTE);
    promote.wait_for_line("waiting for the etcd cluster", JOIN_TIMEOUT);
    assert!(
        promote.try_status().is_none(),
        "promote ended without a quorum"
    );
    assert!(nodes[0].marker().is_none());

    nodes[1].start_etcd(&cluster);
    let out = promote.wait(JOIN_TIMEOUT);
    out.assert_code(0, "promote on node01 once two of three members run");
    let marker = nodes[0].marker().expect("marker after quorum");
    assert!(
        ["node01", "node02"].contains(&marker["leader"].as_str().unwrap_or_default()),
        "{marker}"
    );
    let health = nodes[0].run(&["health"]);
    health.assert_code(0, "flint health right after the bootstrap node marked");

    nodes[2].start_etcd(&cluster);
    for node in &nodes[1..] {
        node.run(PROMOTE)
            .assert_code(0, "promote on a bootstrap node");
        assert!(node.marker().is_some());
    }
    let endpoints: Vec<String> = (0..3).map(|i| cluster.client_url(i)).collect();
    let list = cluster.etcdctl_at(&endpoints, &["member", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    for i in 0..3 {
        let line = format!("started, {}, {}", Lab::node_name(i), cluster.peer_url(i));
        assert!(list.contains(&line), "{line} missing from:\n{list}");
    }
    assert!(
        !list.contains("true"),
        "a learner among the initial members:\n{list}"
    );
}

/// `etcd.initial_cluster` must name this node with the peer URL it advertises, and belongs on a
/// bootstrap node only.
#[test]
fn an_initial_cluster_that_contradicts_the_node_is_refused() {
    let cluster = EtcdCluster::start(0);
    let mut node = cluster.node(0);
    node.config["bootstrap"] = json!(true);
    node.config["etcd"]["initial_cluster"] = json!({"node02": cluster.peer_url(1)});
    let out = node.run(ADD);
    out.assert_code(78, "initial_cluster without this node");
    assert!(
        out.stderr.contains("etcd.initial_cluster"),
        "{}",
        out.describe()
    );
    node.config["etcd"]["initial_cluster"] = json!({"node01": cluster.peer_url(1)});
    let out = node.run(ADD);
    out.assert_code(78, "initial_cluster with another peer URL for this node");
    assert!(
        out.stderr.contains("etcd.initial_cluster.node01"),
        "{}",
        out.describe()
    );
    node.config["bootstrap"] = json!(false);
    node.config["etcd"]["initial_cluster"] = json!({"node01": cluster.peer_url(0)});
    let out = node.run(ADD);
    out.assert_code(78, "initial_cluster on a joining node");
    assert!(out.stderr.contains("bootstrap"), "{}", out.describe());
    assert!(!node.env_file().exists());
}

/// A member list whose names or peer URLs would smuggle a setting into etcd.env (a line break
/// and `ETCD_FORCE_NEW_CLUSTER=true`, a comma that splits `ETCD_INITIAL_CLUSTER`) is refused with
/// 65, and nothing is written: etcd's unit reads that file as settings.
#[test]
fn member_names_and_urls_that_would_forge_etcd_settings_are_refused() {
    let lab = Lab::new();
    let cases = [
        ("node02\nETCD_FORCE_NEW_CLUSTER=true", lab.peer_url(1)),
        ("node02 x", lab.peer_url(1)),
        (
            "node02",
            format!("{}\nETCD_FORCE_NEW_CLUSTER=true", lab.peer_url(1)),
        ),
        ("node02", "https://a,node09=https:2380".to_owned()),
        ("node02", format!("{}/path", lab.peer_url(1))),
    ];
    for (name, peer_url) in cases {
        let node01 = json!({"ID": "1", "name": "node01", "peerURLs": [lab.peer_url(0)],
                            "clientURLs": [lab.client_url(0)]});
        let node02 = json!({"ID": "2", "name": name, "peerURLs": [peer_url]});
        let mut node = lab.node(3);
        let ours = json!({"ID": "3", "peerURLs": [node.peer_url()], "isLearner": true});
        let server = CannedHttp::start(
            lab.client_addr(0),
            vec![
                Canned {
                    path: "/v3/cluster/member/list",
                    status: 200,
                    body: json!({"header": {"member_id": "1"}, "members": [node01, node02]})
                        .to_string(),
                },
                Canned {
                    path: "/v3/cluster/member/add",
                    status: 200,
                    body: json!({"header": {"member_id": "1"}, "member": ours,
                                 "members": [node01, node02, ours]})
                    .to_string(),
                },
            ],
        );
        node.config["leader_url"] = json!(server.url());
        node.config["peers"] = json!([]);
        node.config["timeouts"]["total"] = json!("5s");
        let out = node.run(ADD);
        out.assert_code(65, &format!("a member named {name:?} at {peer_url:?}"));
        assert!(
            out.stderr
                .contains("will not write into etcd's environment file"),
            "{}",
            out.describe()
        );
        assert!(
            !out.stderr.lines().any(|l| l.starts_with("ETCD_")),
            "a server string broke a log line: {}",
            out.describe()
        );
        assert!(!node.env_file().exists(), "{}", out.describe());
        assert!(node.marker().is_none());
    }
}
