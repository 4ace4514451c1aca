//! `flint health` against a real 3-member cluster: healthy, one member down (quorum kept, the
//! dead member reported), two down (quorum lost, exit 1); and each configured endpoint's own
//! state, against the chainfire test server.
mod common;

use common::{
    CHAINFIRE_PORT, EtcdCluster, FLAREDB_PORT, FlintOutput, Lab, Node, Secrets, TestServer,
    chain_node, run_bounded, sample,
};
use serde_json::{Value, json};
use std::time::Duration;

/// The health check as node01 would run it.
fn checker(cluster: &EtcdCluster) -> Node {
    let mut node = cluster.node(0);
    node.config["timeouts"] = json!({"total": "15s", "request": "3s", "connect": "2s"});
    node
}

fn health_json(node: &Node) -> (FlintOutput, Value) {
    let out = node.run(&["health", "--json"]);
    let json: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("health --json printed no JSON ({e}): {}", out.describe()));
    (out, json)
}

/// The etcd entry of the report, with the shape of the interface draft checked.
fn etcd_report(json: &Value) -> &Value {
    assert!(
        json["healthy"].is_boolean(),
        "no top-level healthy: {json:#}"
    );
    let services = json["services"].as_array().expect("services is a list");
    let etcd = services
        .iter()
        .find(|s| s["service"] == "etcd")
        .unwrap_or_else(|| panic!("no etcd service in {json:#}"));
    assert!(etcd["healthy"].is_boolean(), "service healthy: {etcd:#}");
    assert!(etcd["problems"].is_array(), "problems: {etcd:#}");
    for member in etcd["members"].as_array().expect("members is a list") {
        assert!(member["id"].is_string(), "member id: {member:#}");
        assert!(member["name"].is_string(), "member name: {member:#}");
        assert!(member["client_urls"].is_array(), "client_urls: {member:#}");
        assert!(
            ["leader", "follower", "learner"].contains(&member["role"].as_str().unwrap_or("")),
            "member role: {member:#}"
        );
        assert!(member["healthy"].is_boolean(), "member healthy: {member:#}");
        assert!(
            member["error"].is_null() || member["error"].is_string(),
            "member error: {member:#}"
        );
    }
    etcd
}

fn member<'a>(etcd: &'a Value, name: &str) -> &'a Value {
    etcd["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no member {name} in {etcd:#}"))
}

#[test]
fn healthy_cluster_reports_members_and_leader() {
    let cluster = EtcdCluster::start(3);
    let node = checker(&cluster);

    let table = node.run(&["health"]);
    table.assert_code(0, "health of a healthy cluster");
    for name in ["node01", "node02", "node03"] {
        assert!(
            table.stdout.contains(name),
            "table lacks {name}: {}",
            table.describe()
        );
    }
    assert!(
        table.stdout.to_lowercase().contains("leader"),
        "table names no leader: {}",
        table.describe()
    );

    let (out, json) = health_json(&node);
    out.assert_code(0, "health --json of a healthy cluster");
    assert_eq!(json["healthy"], true, "{json:#}");
    let etcd = etcd_report(&json);
    assert_eq!(etcd["healthy"], true, "{etcd:#}");
    let members = etcd["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{etcd:#}");
    let leaders: Vec<&Value> = members.iter().filter(|m| m["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "exactly one leader: {etcd:#}");
    assert_eq!(etcd["leader"], leaders[0]["name"], "{etcd:#}");
    let listed = cluster.member_list();
    for m in members {
        assert_eq!(m["healthy"], true, "{m:#}");
        let known = listed
            .iter()
            .find(|l| l.name == m["name"].as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("{m:#} is not in etcdctl's member list {listed:#?}"));
        assert_eq!(m["id"], known.id_hex.as_str(), "id in etcd's hex form");
        assert_eq!(m["client_urls"], json!(known.client_urls));
    }

    let textfile = node.dir.join("flint.prom");
    let out = node.run(&[
        "health",
        "--textfile",
        textfile.to_str().expect("UTF-8 path"),
    ]);
    out.assert_code(0, "health --textfile");
    let metrics = std::fs::read_to_string(&textfile).expect("textfile written");
    for (name, labels, value) in [
        ("flint_cluster_healthy", &[("service", "etcd")][..], 1.0),
        ("flint_cluster_members", &[("service", "etcd")], 3.0),
        ("flint_cluster_leaders", &[("service", "etcd")], 1.0),
        (
            "flint_member_healthy",
            &[("service", "etcd"), ("member", "node01")],
            1.0,
        ),
        (
            "flint_member_healthy",
            &[("service", "etcd"), ("member", "node02")],
            1.0,
        ),
        (
            "flint_member_healthy",
            &[("service", "etcd"), ("member", "node03")],
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&metrics, name, labels),
            Some(value),
            "{name}{labels:?} in\n{metrics}"
        );
    }
    common::assert_checked_recently(&metrics);
    // node_exporter reads the file at any time: it must be renamed into place, never left as a
    // temp file beside it.
    let leftovers: Vec<String> = common::dir_entries(&node.dir)
        .into_iter()
        .filter(|e| e.contains("flint.prom") && e != "flint.prom")
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn the_expected_member_count_names_a_missing_or_an_extra_member() {
    let cluster = EtcdCluster::start(3);
    let mut node = checker(&cluster);

    node.config["expected_members"] = json!(3);
    let (out, json) = health_json(&node);
    out.assert_code(0, "health with the 3 members the config expects");
    assert_eq!(json["schema_version"], 1, "{json:#}");
    assert_eq!(etcd_report(&json)["expected_members"], 3, "{json:#}");

    // One short: the deployment flow's validation expects the node that joined later too.
    node.config["expected_members"] = json!(4);
    let (out, json) = health_json(&node);
    out.assert_code(1, "health with a member missing");
    let etcd = etcd_report(&json);
    assert_eq!(etcd["healthy"], false, "{etcd:#}");
    assert!(
        etcd["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "1 member missing: 3 listed (node01, node02, node03), 4 expected"),
        "{etcd:#}"
    );

    // The flag overrides the file: one too many.
    let out = node.run(&["health", "--expect-members", "2"]);
    out.assert_code(1, "health with an extra member");
    assert!(
        out.stdout
            .contains("1 extra member: 3 listed (node01, node02, node03), 2 expected"),
        "{}",
        out.describe()
    );
    node.run(&["health", "--expect-members", "3"])
        .assert_code(0, "health with the count given on the command line");

    // A count that cannot be a cluster's is refused, naming the field.
    node.config["expected_members"] = json!(0);
    let out = node.run(&["health"]);
    out.assert_code(78, "expected_members 0");
    assert!(
        out.stderr.contains("expected_members") && out.stderr.contains("from 1 to 1000"),
        "{}",
        out.describe()
    );
}

#[test]
fn the_write_check_reads_the_value_back_from_every_member_and_names_one_that_does_not() {
    let cluster = EtcdCluster::start(3);
    let node = checker(&cluster);

    let out = node.run(&["health", "--write-check", "--json"]);
    out.assert_code(0, "the write check on a healthy cluster");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let check = &etcd_report(&json)["write_check"];
    assert_eq!(check["written"], true, "{json:#}");
    let key = check["key"].as_str().expect("the key written");
    assert!(key.starts_with("/flint/health/node01/"), "{key}");
    let members = check["members"].as_array().expect("read-backs");
    assert_eq!(members.len(), 3, "{json:#}");
    for m in members {
        assert_eq!(m["seen"], true, "{m:#}");
        assert!(m["after_ms"].is_u64(), "{m:#}");
    }
    // Removed afterwards, as etcdctl sees it.
    let left = cluster.etcdctl(&["get", "--prefix", "/flint/health/"]);
    assert!(left.status.success() && left.stdout.is_empty(), "{left:?}");
    let table = node.run(&["health", "--write-check"]);
    table.assert_code(0, "the write check, as a table");
    assert!(
        table
            .stdout
            .contains("write check: read back from 3 of 3 members, the last "),
        "{}",
        table.describe()
    );
    // Without the flag, nothing is written.
    let (_, json) = health_json(&node);
    assert!(etcd_report(&json)["write_check"].is_null(), "{json:#}");

    // A member that hangs: the cluster keeps its quorum and the write goes through, but the
    // member never shows the value and is named.
    cluster.pause(2);
    let out = node.run(&["health", "--write-check"]);
    cluster.resume(2);
    out.assert_code(1, "the write check with a member that does not answer");
    assert!(
        out.stdout
            .contains("write check: member node03 did not return the value written through"),
        "{}",
        out.describe()
    );
    let left = cluster.etcdctl(&["get", "--prefix", "/flint/health/"]);
    assert!(left.status.success() && left.stdout.is_empty(), "{left:?}");
}

#[test]
fn member_loss_is_reported_and_quorum_loss_fails() {
    let mut cluster = EtcdCluster::start(3);
    let node = checker(&cluster);

    cluster.stop(2);
    cluster.wait_for_leader(Duration::from_secs(15));
    let (out, json) = health_json(&node);
    out.assert_code(0, "health with one of three members down (quorum kept)");
    let etcd = etcd_report(&json);
    let dead = member(etcd, "node03");
    assert_eq!(dead["healthy"], false, "node03 is down: {etcd:#}");
    assert!(dead["error"].is_string(), "node03 has no error: {etcd:#}");
    for name in ["node01", "node02"] {
        assert_eq!(member(etcd, name)["healthy"], true, "{name}: {etcd:#}");
    }

    cluster.stop(1);
    let out = node.run(&["health", "--json"]);
    out.assert_code(1, "health with two of three members down (no quorum)");
    let json: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON for an unhealthy cluster ({e}): {}", out.describe()));
    assert_eq!(json["healthy"], false, "{json:#}");
    assert_eq!(etcd_report(&json)["healthy"], false, "{json:#}");

    // Quorum back: the verdict follows the cluster, nothing sticks from the failed check.
    cluster.restart(1);
    cluster.wait_for_leader(Duration::from_secs(15));
    node.run(&["health"])
        .assert_code(0, "health after a member came back (quorum again)");
}

#[test]
fn the_write_check_waits_for_a_lagging_member_and_names_one_that_never_catches_up() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let chainfire = TestServer::cluster(&lab, CHAINFIRE_PORT, 3, 3, secrets.cluster_options(&lab));
    let mut node = chain_node(&lab, 0, &secrets, false);
    let config = node.config.as_object_mut().expect("an object");
    config.remove("flaredb");
    config.remove("iam");
    node.config["timeouts"] = json!({"total": "15s", "request": "3s", "connect": "2s"});

    // node02 shows writes 700 ms late: waited for, not a failure.
    chainfire.kv_lag("node02", Some(700));
    let out = node.run(&["health", "--write-check", "--json"]);
    out.assert_code(0, "the write check with a lagging member");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let check = &json["services"][0]["write_check"];
    assert_eq!(check["written"], true, "{json:#}");
    let read_backs = check["members"].as_array().expect("read-backs");
    assert_eq!(read_backs.len(), 3, "{json:#}");
    let lagging = read_backs
        .iter()
        .find(|m| m["name"] == "node02")
        .expect("node02's read-back");
    assert_eq!(lagging["seen"], true, "{json:#}");
    assert!(lagging["after_ms"].as_u64().unwrap() >= 700, "{json:#}");
    // Removed afterwards: the leader's own view has no such key.
    let key = check["key"]
        .as_str()
        .expect("the key")
        .trim_start_matches('/');
    assert_eq!(
        curl_status(&node, &format!("{}/v1/kv/{key}", chainfire.url(0))),
        "404"
    );

    // node03 never catches up: named, unhealthy, after the request timeout.
    chainfire.kv_lag("node03", None);
    let out = node.run(&["health", "--write-check"]);
    out.assert_code(1, "the write check with a member that never catches up");
    assert!(
        out.stdout.contains(
            "write check: member node03 did not return the value written through node01 within 3s: no such key yet"
        ),
        "{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("member node02 did not"),
        "{}",
        out.describe()
    );

    // A write the leader refuses: the check fails without reading.
    chainfire.kv_lag("node03", Some(0));
    chainfire.arm(json!({"route": "kv-put", "kind": "status", "code": 500}));
    let out = node.run(&["health", "--write-check"]);
    out.assert_code(1, "the write check with the write refused");
    assert!(
        out.stdout
            .contains("write check: the write through the leader node01 failed:"),
        "{}",
        out.describe()
    );
}

/// The HTTP status curl gets for `url` with the node's client certificate.
fn curl_status(node: &Node, url: &str) -> String {
    let tls = &node.config["tls"];
    let file = |k: &str| {
        let p = tls[k].as_str().expect("a tls path");
        node.dir.join(p).to_string_lossy().into_owned()
    };
    let mut curl = std::process::Command::new("curl");
    curl.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ])
    .args([
        "--cacert",
        &file("ca"),
        "--cert",
        &file("cert"),
        "--key",
        &file("key"),
    ])
    .arg(url);
    let out = run_bounded(&mut curl, Duration::from_secs(10));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn each_configured_endpoint_says_whether_it_answered_and_why_not() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let chainfire = TestServer::cluster(&lab, CHAINFIRE_PORT, 3, 3, secrets.cluster_options(&lab));
    let url = |i: usize| format!("https://{}:{CHAINFIRE_PORT}/", lab.ip(i));
    // leader_url: nobody listens there. node02 refuses the token; node03 answers.
    let (dead, refusing, answering) = (url(9), url(1), url(2));
    chainfire.arm(json!({"route": "list", "kind": "token-required", "listener": "node02"}));
    let mut node = chain_node(&lab, 3, &secrets, false);
    let config = node.config.as_object_mut().expect("an object");
    config.remove("flaredb");
    config.remove("iam");
    node.config["chainfire"]["leader_url"] = json!(dead);
    node.config["chainfire"]["peers"] = json!([refusing, answering]);
    node.config["timeouts"] = json!({"total": "15s", "request": "3s", "connect": "2s"});

    let (out, json) = health_json(&node);
    out.assert_code(0, "health with a dead leader_url and an answering peer");
    let service = &json["services"][0];
    assert_eq!(service["service"], "chainfire", "{json:#}");
    assert_eq!(service["healthy"], true, "{json:#}");
    let endpoints = service["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints list: {json:#}"));
    let states: Vec<(&str, &str, bool)> = endpoints
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap_or_default(),
                e["url"].as_str().unwrap_or_default(),
                e["answered"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("leader_url", dead.as_str(), false),
            ("peers", refusing.as_str(), false),
            ("peers", answering.as_str(), true),
        ],
        "{json:#}"
    );
    let why = |i: usize| {
        endpoints[i]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(why(0).contains("cannot connect"), "{json:#}");
    assert!(why(1).contains("401"), "{json:#}");
    assert!(endpoints[2]["error"].is_null(), "{json:#}");
    let problems = service["problems"].to_string();
    for (failed, reason) in [(&dead, why(0)), (&refusing, why(1))] {
        assert!(!reason.contains('\n'), "one line: {reason:?}");
        assert!(
            problems.contains(failed.as_str()),
            "{failed} is not among the problems: {json:#}"
        );
    }

    let table = node.run(&["health"]);
    table.assert_code(0, "health (table)");
    for (endpoint, answered) in [(&dead, "no"), (&refusing, "no"), (&answering, "yes")] {
        let line = table
            .stdout
            .lines()
            .find(|l| l.starts_with("chainfire") && l.ends_with(endpoint.as_str()))
            .unwrap_or_else(|| panic!("no table line for {endpoint}: {}", table.describe()));
        assert!(
            line.split_whitespace().any(|w| w == answered),
            "{endpoint} should say {answered}: {line:?}"
        );
    }
    assert!(table.stdout.contains(&why(0)), "{}", table.describe());

    let textfile = node.dir.join("flint.prom");
    let out = node.run(&["health", "--textfile", textfile.to_str().expect("UTF-8")]);
    out.assert_code(0, "health --textfile");
    let metrics = std::fs::read_to_string(&textfile).expect("textfile written");
    for (endpoint, field, up) in [
        (&dead, "leader_url", 0.0),
        (&refusing, "peers", 0.0),
        (&answering, "peers", 1.0),
    ] {
        let labels = [
            ("service", "chainfire"),
            ("endpoint", endpoint.as_str()),
            ("field", field),
        ];
        assert_eq!(
            sample(&metrics, "flint_endpoint_up", &labels),
            Some(up),
            "{labels:?} in\n{metrics}"
        );
    }
    for text in [
        &out.stdout,
        &out.stderr,
        &table.stdout,
        &table.stderr,
        &metrics,
    ] {
        assert!(
            !text.contains(&secrets.join_token),
            "the join token leaked: {text}"
        );
    }
}

#[test]
fn wait_checks_again_until_the_cluster_is_healthy_and_gives_up_at_the_deadline() {
    let mut cluster = EtcdCluster::start(3);
    let mut node = checker(&cluster);
    node.config["timeouts"] = json!({"total": "60s", "request": "3s", "connect": "2s"});
    cluster.stop(2);
    cluster.stop(1);

    // No quorum when it starts: it waits, says why once, and passes once a member is back.
    let mut waiting = node.spawn(&["health", "--wait"]);
    let line = waiting.wait_for_line(
        "waiting for the cluster to be healthy",
        Duration::from_secs(10),
    );
    assert!(
        line.contains("etcd: "),
        "the wait names the service: {line}"
    );
    assert!(
        waiting.try_status().is_none(),
        "health --wait exited while the cluster had no quorum"
    );
    cluster.restart(1);
    let out = waiting.wait(Duration::from_secs(20));
    out.assert_code(0, "health --wait once quorum is back");
    assert!(
        out.stdout.contains("etcd: 3 members, leader"),
        "the last report is printed: {}",
        out.describe()
    );
    // A line when the reason changes, not one per check (several ran while the member was down).
    let waits = out
        .stderr
        .lines()
        .filter(|l| l.contains("waiting for the cluster to be healthy"))
        .count();
    assert!(waits <= 2, "{waits} lines for the wait: {}", out.describe());
    let (took, waited) = out.done_line("cluster health");
    assert!(
        waited > 0.0 && waited <= took,
        "health --wait waited {waited} s of {took} s: {}",
        out.describe()
    );

    // Never healthy: at the deadline (timeouts.total), the verdict of the last check, exit 1.
    cluster.stop(1);
    node.config["timeouts"] = json!({"total": "4s", "request": "2s", "connect": "1s"});
    let out = node.run(&["health", "--wait"]);
    out.assert_code(1, "health --wait when quorum never comes back");
    assert!(
        out.stdout.contains("etcd: ") && out.stdout.contains("UNHEALTHY"),
        "the last report is printed: {}",
        out.describe()
    );

    // Without --wait: one check, at once.
    node.run(&["health"])
        .assert_code(1, "health without --wait on a cluster without quorum");
}

#[test]
fn the_wait_asks_again_only_for_the_services_still_unhealthy_then_checks_all_at_once() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let chainfire = TestServer::cluster(&lab, CHAINFIRE_PORT, 3, 3, secrets.cluster_options(&lab));
    let flaredb = TestServer::cluster(&lab, FLAREDB_PORT, 3, 3, secrets.cluster_options(&lab));
    let mut node = chain_node(&lab, 0, &secrets, false);
    node.config
        .as_object_mut()
        .expect("an object")
        .remove("iam");
    node.config["timeouts"] = json!({"total": "30s", "request": "3s", "connect": "2s"});

    // What one check asks of each service.
    let before = chainfire.requests("list");
    node.run(&["health"])
        .assert_code(0, "health on two healthy clusters");
    let per_check = chainfire.requests("list") - before;
    assert!(per_check > 0, "a check lists chainfire's members");

    // flaredb has no leader for 4 s: the wait asks flaredb again and again, chainfire only at the
    // start and once more when flaredb is healthy (the report printed is taken at one moment).
    let (chainfire_before, flaredb_before) = (chainfire.requests("list"), flaredb.requests("list"));
    flaredb.election(4000);
    let out = node.run(&["health", "--wait"]);
    out.assert_code(0, "health --wait once flaredb has a leader again");
    assert!(
        out.stderr
            .contains("waiting for the cluster to be healthy: flaredb: "),
        "the wait names flaredb: {}",
        out.describe()
    );
    let chainfire_asked = chainfire.requests("list") - chainfire_before;
    let flaredb_asked = flaredb.requests("list") - flaredb_before;
    assert_eq!(
        chainfire_asked,
        2 * per_check,
        "chainfire, healthy all along, is asked by the first and the last check only: {}",
        out.describe()
    );
    assert!(
        flaredb_asked > 2 * per_check,
        "flaredb is asked again while it waits ({flaredb_asked} lists): {}",
        out.describe()
    );
    assert!(
        out.stdout.contains("chainfire: 3 members") && out.stdout.contains("flaredb: 3 members"),
        "the last report has every service: {}",
        out.describe()
    );
}
