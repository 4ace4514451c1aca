//! Every class of bad configuration stops flint with exit 78 before it writes anything, and the
//! message names the file and the field. No etcd is needed: nothing may be contacted.
mod common;

use common::{Lab, Node, dir_entries, flint_command};
use serde_json::json;

const ADD: &[&str] = &["join", "etcd", "--phase", "add"];

/// A node whose config is valid except for what the test breaks; its cluster is a lab address
/// where nothing listens, so a config that slipped through would end in 69, not 78.
fn node(lab: &Lab) -> Node {
    let mut node = lab.node(3);
    node.config["timeouts"]["total"] = json!("1s");
    node
}

/// Runs the add phase and checks the verdict: 78, the config path and every fragment (field
/// names, JSON paths) in stderr, and an untouched state dir.
fn assert_rejected(node: &Node, fragments: &[&str]) {
    let out = node.run(ADD);
    out.assert_code(78, "bad config");
    let path = node.config_path().display().to_string();
    assert!(
        out.stderr.contains(&path),
        "stderr does not name the config file {path}:\n{}",
        out.stderr
    );
    for fragment in fragments {
        assert!(
            out.stderr.contains(fragment),
            "stderr does not mention {fragment:?}:\n{}",
            out.stderr
        );
    }
    assert_eq!(
        dir_entries(&node.state_dir),
        Vec::<String>::new(),
        "flint wrote to the state dir despite a bad config"
    );
}

#[test]
fn the_base_config_is_valid() {
    // Guards every other test here: with the base config, flint gets past the config and fails
    // on the unreachable cluster instead.
    let lab = Lab::new();
    let out = node(&lab).run(ADD);
    out.assert_code(69, "valid config, cluster unreachable");
}

#[test]
fn syntax_error() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.set_config_text(r#"{"node_id": "node04", "leader_url": }"#);
    assert_rejected(&node, &["line"]);
}

#[test]
fn unknown_top_level_field() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["leader_ulr"] = json!("https://127.0.0.1:2379");
    // The typo, and the known fields so the reader can spot the right spelling.
    assert_rejected(&node, &["leader_ulr", "leader_url", "raft_addr"]);
}

/// Found by the config fuzz target: a key with a line break was echoed raw, so one error
/// became two log lines, the second one written by whoever wrote the file.
#[test]
fn a_line_break_in_a_key_cannot_forge_a_log_line() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["x\nflint: join done"] = json!(1);
    assert_rejected(&node, &["x\\nflint: join done"]);
    let out = node.run(ADD);
    assert!(
        !out.stderr
            .lines()
            .any(|l| l.starts_with("flint: join done")),
        "{}",
        out.stderr
    );
}

#[test]
fn unknown_nested_field() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["tls"]["cerrt"] = json!("client.pem");
    assert_rejected(&node, &["tls", "cerrt", "cert"]);
}

#[test]
fn unknown_field_in_service_section() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["etcd"]["peer_ulr"] = json!("https://127.0.0.1:2380");
    assert_rejected(&node, &["etcd", "peer_ulr", "peer_url"]);
}

#[test]
fn wrong_type_list_given_a_string() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["peers"] = json!("https://127.0.0.1:2379");
    assert_rejected(&node, &["peers"]);
}

#[test]
fn wrong_type_bool_given_a_string() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["bootstrap"] = json!("yes");
    assert_rejected(&node, &["bootstrap"]);
}

#[test]
fn wrong_type_nested() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["timeouts"]["request"] = json!(10);
    assert_rejected(&node, &["timeouts", "request"]);
}

#[test]
fn bad_duration() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["timeouts"]["connect"] = json!("3 parsecs");
    assert_rejected(&node, &["timeouts", "connect"]);
}

#[test]
fn bad_leader_url() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["leader_url"] = json!("not a url");
    assert_rejected(&node, &["leader_url"]);
}

#[test]
fn bad_peer_url_in_list() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["peers"] = json!(["https://127.0.0.1:2379", "https//missing-colon:2379"]);
    assert_rejected(&node, &["peers"]);
}

#[test]
fn bad_nested_url() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["etcd"]["peer_url"] = json!("https://:2380");
    assert_rejected(&node, &["peer_url"]);
}

#[test]
fn bad_raft_addr() {
    let lab = Lab::new();
    let mut node = node(&lab);
    // No port.
    node.config["raft_addr"] = json!("127.0.0.4");
    assert_rejected(&node, &["raft_addr"]);
}

#[test]
fn bad_node_id_characters() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["node_id"] = json!("node 04!");
    assert_rejected(&node, &["node_id"]);
}

#[test]
fn node_id_too_long() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["node_id"] = json!("n".repeat(64));
    assert_rejected(&node, &["node_id"]);
}

#[test]
fn missing_node_id() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config
        .as_object_mut()
        .expect("config is an object")
        .remove("node_id");
    assert_rejected(&node, &["node_id"]);
}

#[test]
fn empty_file() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.set_config_text("");
    assert_rejected(&node, &[]);
}

/// `timeouts.total` as large as the file can write it once overflowed the deadline: SIGABRT,
/// which the units restart, instead of a 78 naming the field.
#[test]
fn durations_past_their_bound_name_the_field() {
    let lab = Lab::new();
    for (field, value, fragment) in [
        ("total", "18446744073709551615h", "too long a duration"),
        ("total", "5124095576030431h", "at most \"24h\""),
        ("total", "25h", "at most \"24h\""),
        ("request", "2h", "at most \"1h\""),
        ("connect", "11m", "at most \"10m\""),
    ] {
        let mut node = node(&lab);
        node.config["timeouts"][field] = json!(value);
        assert_rejected(&node, &[&format!("timeouts.{field}"), fragment]);
    }
}

/// Read with a bound, and only from a regular file: a FIFO in its place would have held the
/// unit until systemd's timeout, a huge file the node's memory.
#[test]
fn a_fifo_or_a_huge_file_is_refused_at_once() {
    let lab = Lab::new();
    let node = node(&lab);
    let run_with = |path: &std::path::Path| {
        common::FlintProcess::spawn({
            let mut command = flint_command();
            command
                .arg("--config")
                .arg(path)
                .arg("--state-dir")
                .arg(&node.state_dir)
                .args(ADD);
            command
        })
        .wait(std::time::Duration::from_secs(10))
    };
    let fifo = node.dir.join("fifo.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = run_with(&fifo);
    out.assert_code(78, "a FIFO as the config");
    assert!(out.stderr.contains("not a regular file"), "{}", out.stderr);

    let huge = node.dir.join("huge.json");
    let mut text = String::from(r#"{"node_id": "node04", "x": ""#);
    text.push_str(&" ".repeat(2 * 1024 * 1024));
    text.push_str(r#""}"#);
    std::fs::write(&huge, text).unwrap();
    let out = run_with(&huge);
    out.assert_code(78, "a 2 MiB config");
    assert!(
        out.stderr.contains("larger than 1048576 bytes"),
        "{}",
        out.stderr
    );
    assert_eq!(dir_entries(&node.state_dir), Vec::<String>::new());
}

/// The file is one JSON value, and no key is given twice: serde_json stops at the end of the
/// first value and its maps keep the last of two equal keys, so either mistake would pass.
#[test]
fn trailing_data_and_keys_given_twice_are_refused() {
    let lab = Lab::new();
    let mut node = node(&lab);
    let text = serde_json::to_string(&node.config).unwrap();
    node.set_config_text(&format!("{text} garbage"));
    assert_rejected(
        &node,
        &["expected nothing after the configuration's object"],
    );
    node.set_config_text(&format!("{text}\n{text}"));
    assert_rejected(
        &node,
        &["expected nothing after the configuration's object"],
    );
    node.set_config_text(&text.replacen('{', r#"{"node_id": "node09", "#, 1));
    assert_rejected(&node, &["duplicate field `node_id`"]);

    let mut node = self::node(&lab);
    node.config["bootstrap"] = json!(true);
    let peer = node.peer_url();
    let text = serde_json::to_string(&node.config).unwrap().replacen(
        r#""etcd":{"#,
        &format!(
            r#""etcd":{{"initial_cluster":{{"node04":"{peer}","node04":"https://10.9.9.9:2380"}},"#
        ),
        1,
    );
    node.set_config_text(&text);
    assert_rejected(&node, &["etcd.initial_cluster", "duplicate key `node04`"]);
}

#[test]
fn missing_file() {
    let lab = Lab::new();
    let node = node(&lab);
    let missing = node.dir.join("no-such-dir").join("cluster-config.json");
    let out = common::FlintProcess::spawn({
        let mut command = flint_command();
        command
            .arg("--config")
            .arg(&missing)
            .arg("--state-dir")
            .arg(&node.state_dir)
            .args(ADD);
        command
    })
    .wait(std::time::Duration::from_secs(30));
    out.assert_code(78, "missing config file");
    assert!(
        out.stderr.contains(&missing.display().to_string()),
        "stderr does not name {}:\n{}",
        missing.display(),
        out.stderr
    );
    assert_eq!(dir_entries(&node.state_dir), Vec::<String>::new());
}

#[test]
fn missing_ca_file() {
    let lab = Lab::new();
    let mut node = node(&lab);
    node.config["tls"]["ca"] = json!("no-such-ca.pem");
    let out = node.run(ADD);
    out.assert_code(78, "CA file missing");
    assert!(
        out.stderr.contains("no-such-ca.pem"),
        "stderr does not name the missing CA file:\n{}",
        out.stderr
    );
    assert_eq!(dir_entries(&node.state_dir), Vec::<String>::new());
}

#[test]
fn credentials_directory_takes_precedence_over_config_flag() {
    let lab = Lab::new();
    let node = node(&lab);
    // A valid file at --config, a broken one in the credentials dir: the verdict must come from
    // the credentials file.
    let credentials = lab.path().join("credentials");
    std::fs::create_dir_all(&credentials).expect("create credentials dir");
    let credential = credentials.join("cluster-config.json");
    let mut broken = node.config.clone();
    broken["from_credentials"] = json!(true);
    std::fs::write(&credential, broken.to_string()).expect("write credential");
    for file in ["ca.pem", "client.pem", "client-key.pem"] {
        std::fs::copy(node.dir.join(file), credentials.join(file)).expect("copy TLS file");
    }
    let mut command = node.command(ADD);
    command.env("CREDENTIALS_DIRECTORY", &credentials);
    let out = common::FlintProcess::spawn(command).wait(std::time::Duration::from_secs(30));
    out.assert_code(78, "broken credential, valid --config");
    assert!(
        out.stderr.contains(&credential.display().to_string())
            && out.stderr.contains("from_credentials"),
        "stderr does not blame the credentials file {}:\n{}",
        credential.display(),
        out.stderr
    );
}

#[test]
fn credentials_directory_config_is_used_when_config_flag_is_broken() {
    let lab = Lab::new();
    let mut node = node(&lab);
    let credentials = lab.path().join("credentials");
    std::fs::create_dir_all(&credentials).expect("create credentials dir");
    std::fs::write(
        credentials.join("cluster-config.json"),
        node.config.to_string(),
    )
    .expect("write credential");
    for file in ["ca.pem", "client.pem", "client-key.pem"] {
        std::fs::copy(node.dir.join(file), credentials.join(file)).expect("copy TLS file");
    }
    node.set_config_text("{ this is not json");
    let mut command = node.command(ADD);
    command.env("CREDENTIALS_DIRECTORY", &credentials);
    let out = common::FlintProcess::spawn(command).wait(std::time::Duration::from_secs(30));
    // The credential is valid and the cluster unreachable: 69, never the 78 of --config's file.
    out.assert_code(69, "valid credential, broken --config");
}

#[test]
fn unknown_subcommand_is_usage_error() {
    for args in [
        &["frobnicate"][..],
        &["join", "nosuch"],
        &["join", "etcd", "--phase", "sideways"],
        &["health", "--no-such-flag"],
    ] {
        let out = common::FlintProcess::spawn({
            let mut command = flint_command();
            command.args(args);
            command
        })
        .wait(std::time::Duration::from_secs(30));
        out.assert_code(64, &format!("flint {}", args.join(" ")));
    }
}
