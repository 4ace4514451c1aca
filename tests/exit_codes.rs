//! Every exit status flint documents (docs/join-protocol.md, "Exit statuses"), each produced by a
//! real case through the binary against the test double: 0, 1, 64, 65, 69, 74, 77, 78. This file is
//! the one place that lists them all; the fault matrix (tests/admin_faults.rs) has many more
//! cases of 65, 69 and 77.
mod common;

use common::{
    ADMIN_PRIVATE_FILE, CHAINFIRE_MARKER, CHAINFIRE_PORT, IAM_TOKEN_FILE, JOIN_TOKEN_FILE, Lab,
    Node, Secrets, TestServer, chain_node, flint_command, marker, run_bounded, without_peers,
};
use serde_json::json;
use std::time::Duration;

const JOIN: &[&str] = &["join", "chainfire"];

/// A lab with a secured chainfire cluster (node01–03 members, node04 listening) and node04.
fn chainfire_lab() -> (Lab, Secrets, TestServer, Node) {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let server = TestServer::cluster(&lab, CHAINFIRE_PORT, 4, 3, secrets.cluster_options(&lab));
    let mut node = chain_node(&lab, 3, &secrets, false);
    without_peers(&mut node);
    node.config["timeouts"] = json!({"total": "3s", "request": "2s", "connect": "1s"});
    (lab, secrets, server, node)
}

fn assert_error_line(out: &common::FlintOutput, fragment: &str) {
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one ERROR line: {}", out.describe());
    assert!(
        errors[0].contains(fragment),
        "the ERROR line lacks {fragment:?}: {}",
        out.describe()
    );
}

#[test]
fn exit_0_joined_and_already_joined() {
    let (_lab, _secrets, server, mut node) = chainfire_lab();
    node.run(JOIN).assert_code(0, "a join that succeeds");
    assert!(marker(&node, CHAINFIRE_MARKER).is_some());
    let out = node.run(JOIN);
    out.assert_code(0, "a join whose marker exists");
    assert!(out.stderr.contains("already joined"), "{}", out.describe());
    assert_eq!(server.requests("add"), 1);
    // Run-once reads no configuration: even a broken one does not matter then.
    let before = server.state()["requests"].clone();
    node.set_config_text("{not json");
    let out = node.run(JOIN);
    out.assert_code(0, "a join whose marker exists, with a broken config");
    assert_eq!(
        server.state()["requests"],
        before,
        "sent something: {}",
        out.describe()
    );
}

#[test]
fn exit_1_health_without_quorum() {
    let (_lab, _secrets, server, mut node) = chainfire_lab();
    // chainfire only: flaredb and IAM are not part of this check.
    node.config
        .as_object_mut()
        .expect("object")
        .remove("flaredb");
    node.config.as_object_mut().expect("object").remove("iam");

    node.run(&["health"])
        .assert_code(0, "health of a healthy cluster");
    for listener in ["node02", "node03"] {
        server.arm(json!({"route": "health", "kind": "status", "code": 503, "listener": listener}));
    }
    let out = node.run(&["health"]);
    out.assert_code(1, "health with two of three members failing");
    assert!(out.stdout.contains("no quorum"), "{}", out.describe());
    assert!(out.stdout.contains("UNHEALTHY"), "{}", out.describe());
}

#[test]
fn exit_64_bad_command_line() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let node = chain_node(&lab, 3, &secrets, false);
    for args in [
        &["join", "nosuch"][..],
        &["join"],
        &["frobnicate"],
        &["join", "chainfire", "--phase", "add"],
        &["node-join", "--force", "--abandon"],
    ] {
        let out = node.run(args);
        out.assert_code(64, &format!("flint {}", args.join(" ")));
        assert!(!out.stderr.is_empty(), "64 says why: {}", out.describe());
    }
    let bare = run_bounded(&mut flint_command(), Duration::from_secs(20));
    assert_eq!(
        bare.status.code(),
        Some(64),
        "flint with no arguments: {bare:?}"
    );
    assert!(dir_is_empty_or_lock(&node), "a usage error wrote state");
}

fn dir_is_empty_or_lock(node: &Node) -> bool {
    common::dir_entries(&node.state_dir)
        .iter()
        .all(|e| e.ends_with(".lock"))
}

#[test]
fn exit_65_membership_conflict() {
    let (_lab, _secrets, server, node) = chainfire_lab();
    server.arm(json!({"route": "add", "kind": "conflict-other"}));
    let out = node.run(JOIN);
    out.assert_code(65, "409 naming this node with another raft_addr");
    let raft = server.raft_addr(3);
    assert_error_line(&out, &raft);
    assert!(marker(&node, CHAINFIRE_MARKER).is_none());
    assert_eq!(server.requests("add"), 1, "a conflict is not retried");
}

#[test]
fn exit_69_deadline_while_unavailable() {
    let (_lab, _secrets, server, node) = chainfire_lab();
    server.arm(json!({"route": "list", "kind": "status", "code": 503}));
    let out = node.run(JOIN);
    out.assert_code(69, "503 until the deadline");
    assert_error_line(&out, "deadline");
    assert!(
        out.elapsed >= Duration::from_millis(2500),
        "{}",
        out.describe()
    );
    assert!(server.requests("list") >= 2, "retried");
    assert!(marker(&node, CHAINFIRE_MARKER).is_none());
}

#[test]
fn exit_69_nothing_listening() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let mut node = chain_node(&lab, 3, &secrets, false);
    node.config["timeouts"] = json!({"total": "2s", "request": "1s", "connect": "1s"});
    let out = node.run(JOIN);
    out.assert_code(69, "no server at all");
    assert!(marker(&node, CHAINFIRE_MARKER).is_none());
}

/// The disk under the state directory fills up after the cluster added the node: the marker
/// cannot be written. 74, retried by the units, nothing half-written; once space is freed the
/// next run finds the node a member and records it without adding it again. The state directory
/// is a 64 KiB tmpfs in a mount namespace of the run's own (`unshare`), filled before flint starts;
/// the lock file is there first with one page, which flint's own PID reuses.
#[test]
fn exit_74_state_directory_disk_full() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test mounts a full tmpfs in a mount namespace: it needs root"
    );
    let (_lab, _secrets, server, node) = chainfire_lab();
    const SCRIPT: &str = r#"state=$1; shift
mount -t tmpfs -o size=64k,mode=0700 flint-test-full "$state" || exit 90
printf '1\n' >"$state/.chainfire.lock"
head -c 1048576 /dev/zero >"$state/filler" 2>/dev/null
"$@"; echo "first run: $?"
echo "left: $(ls -A "$state" | grep -v -x -e filler -e .chainfire.lock | tr '\n' ' ')"
rm "$state/filler"
"$@"; echo "second run: $?"
echo "left: $(ls -A "$state" | tr '\n' ' ')""#;
    let mut unshare = std::process::Command::new("unshare");
    unshare
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCRIPT,
            "sh",
        ])
        .arg(&node.state_dir);
    let out = run_bounded(
        &mut common::wrapped(unshare, &node.command(JOIN)),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "first run: 74",
            "left: ",
            "second run: 0",
            "left: .chainfire-joined .chainfire.lock "
        ],
        "{said}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{said}");
    assert!(
        errors[0].contains(".chainfire-joined") && errors[0].contains("No space left on device"),
        "the ERROR line names the marker and the cause: {said}"
    );
    assert!(stderr.contains("already lists"), "{said}");
    assert_eq!(server.requests("add"), 1, "added once: {said}");
}

#[test]
fn exit_77_credentials_refused_or_exposed() {
    let (lab, secrets, server, node) = chainfire_lab();
    server.arm(json!({"route": "list", "kind": "token-required"}));
    let out = node.run(JOIN);
    out.assert_code(77, "401 from the admin API");
    assert_error_line(&out, "join_token_file");
    assert_eq!(server.requests("list"), 1, "401 is not retried");
    server.clear();

    // A token file readable by others: refused before anything is sent.
    node.chmod(JOIN_TOKEN_FILE, 0o644);
    let before = server.state()["requests"].clone();
    let out = node.run(JOIN);
    out.assert_code(77, "a join token readable by others");
    assert_error_line(&out, "chmod 600");
    assert_eq!(
        server.state()["requests"],
        before,
        "sent something: {}",
        out.describe()
    );
    node.chmod(JOIN_TOKEN_FILE, 0o600);

    // IAM's bootstrap token readable by the group: refused before IAM is asked anything.
    let iam = TestServer::iam_with(&lab, 4, secrets.iam_options(&lab));
    node.chmod(IAM_TOKEN_FILE, 0o640);
    let out = node.run(&["iam-setup"]);
    out.assert_code(77, "an IAM bootstrap token readable by the group");
    assert_error_line(&out, IAM_TOKEN_FILE);
    let state = iam.state();
    assert_eq!(state["requests"]["iam-health"], 0, "{state:#}");
    assert_eq!(state["requests"]["bootstrap"], 0, "{state:#}");
}

#[test]
fn exit_78_configuration() {
    let (_lab, secrets, server, mut node) = chainfire_lab();
    // The admin's private key where its public key belongs.
    node.install(&secrets.path(ADMIN_PRIVATE_FILE), ADMIN_PRIVATE_FILE);
    node.config["iam"]["admin"]["public_key_file"] = json!(ADMIN_PRIVATE_FILE);
    let out = node.run(&["iam-setup"]);
    out.assert_code(78, "a private key as the admin's public key");
    assert_error_line(&out, "iam.admin.public_key_file");

    // An unknown field, named with the known ones.
    node.config["chainfire"]["leader_ulr"] = json!("https://127.0.0.1:2379");
    let out = node.run(JOIN);
    out.assert_code(78, "a typo in the chainfire section");
    assert_error_line(&out, "leader_ulr");
    assert_eq!(
        server.requests("health"),
        0,
        "nothing sent with a bad config"
    );
}

/// `--help` of every command ends with the statuses this file produces, from the table the code
/// exits by (`flint::exit::ExitStatus`), so an operator reads them where they look first.
#[test]
fn every_command_help_lists_every_exit_status() {
    for args in [
        &["--help"][..],
        &["join", "--help"],
        &["iam-setup", "--help"],
        &["health", "--help"],
        &["node-join", "--help"],
        &["config", "check", "--help"],
    ] {
        let out = run_bounded(flint_command().args(args), Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        let statuses = help
            .split_once("Exit status:\n")
            .unwrap_or_else(|| panic!("no exit statuses in {args:?}:\n{help}"))
            .1;
        for status in flint::exit::ExitStatus::ALL {
            let line = format!("{:>4}  {}", status.code(), status.meaning());
            assert!(
                statuses.lines().any(|l| l == line),
                "{line:?} missing in {args:?}:\n{help}"
            );
        }
    }
}
