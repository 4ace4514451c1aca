//! `flint config check` through the binary: a node's folder as the units read it passes, each
//! kind of broken file is named with the status the units would exit with, and nothing is
//! contacted or created (the configuration's servers do not exist; the state directory stays
//! absent).
mod common;

use common::{IAM_TOKEN_FILE, JOIN_TOKEN_FILE, Lab, Node, Secrets, chain_node, run_bounded};
use serde_json::json;
use std::time::Duration;

fn node() -> (Lab, Node) {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let node = chain_node(&lab, 3, &secrets, false);
    (lab, node)
}

/// Runs `flint config check` with `flags` on the node's file (written by `Node::command`, named
/// by `--config`) with a state directory that must stay absent.
fn check(node: &Node, flags: &[&str]) -> (Option<i32>, String, String) {
    let _ = std::fs::remove_dir_all(&node.state_dir);
    let args = [&["config", "check"], flags].concat();
    let out = run_bounded(&mut node.command(&args), Duration::from_secs(10));
    assert!(
        !node.state_dir.exists(),
        "config check made the state directory"
    );
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn a_node_folder_as_the_units_read_it_passes_without_the_network() {
    let (_lab, node) = node();
    let (code, stdout, stderr) = check(&node, &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    for line in [
        "ok  configuration ",
        "ok  join token ",
        "ok  TLS CA ",
        "ok  TLS client certificate ",
        "ok  IAM bootstrap token ",
        "ok  IAM admin ",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "no {line:?} in:\n{stdout}"
        );
    }
    assert!(stdout.contains("chains to the CA"), "{stdout}");
    assert!(!stderr.contains("ERROR"), "{stderr}");

    // The file named as an argument, as a build or an operator names it.
    let out = run_bounded(
        common::flint_command()
            .args(["config", "check"])
            .arg(node.config_path()),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let named = String::from_utf8(out.stdout).unwrap();
    assert!(
        named.starts_with(&format!(
            "ok  configuration {}: valid",
            node.config_path().display()
        )),
        "{named}"
    );
}

#[test]
fn each_broken_file_is_named_with_the_status_the_units_would_exit_with() {
    struct Case {
        what: &'static str,
        breaks: fn(&Lab, &mut Node),
        code: i32,
        says: &'static str,
    }
    let cases = [
        Case {
            what: "a token readable by others",
            breaks: |_, node| node.chmod(JOIN_TOKEN_FILE, 0o644),
            code: 77,
            says: JOIN_TOKEN_FILE,
        },
        Case {
            what: "an empty IAM token",
            breaks: |_, node| std::fs::write(node.dir.join(IAM_TOKEN_FILE), "\n").unwrap(),
            code: 78,
            says: IAM_TOKEN_FILE,
        },
        Case {
            what: "the key of another certificate",
            breaks: |lab, node| node.install(&lab.pki.path("server-key.pem"), "client-key.pem"),
            code: 78,
            says: "do not go together",
        },
        Case {
            what: "a client certificate of another CA",
            breaks: |lab, node| {
                node.install(&lab.pki.path("other-client.pem"), "client.pem");
                node.install(&lab.pki.path("other-client-key.pem"), "client-key.pem");
            },
            code: 77,
            says: "would be refused by the cluster's servers",
        },
        Case {
            what: "an expired client certificate",
            breaks: |lab, node| {
                node.install(&lab.pki.path("server-expired.pem"), "client.pem");
                node.install(&lab.pki.path("server-expired-key.pem"), "client-key.pem");
            },
            code: 77,
            says: "certificate expired",
        },
        Case {
            what: "a private key given as the IAM admin's public key",
            breaks: |_, node| {
                node.config["iam"]["admin"]["public_key_file"] = json!("client-key.pem");
            },
            code: 78,
            says: "holds a private key",
        },
        Case {
            what: "a CA file that holds no certificate",
            breaks: |_, node| std::fs::write(node.dir.join("ca.pem"), "not PEM\n").unwrap(),
            code: 78,
            says: "ca.pem",
        },
        Case {
            what: "an unknown field",
            breaks: |_, node| node.config["lader_url"] = json!("https://10.0.0.1:2379"),
            code: 78,
            says: "lader_url",
        },
    ];
    for case in cases {
        let (lab, mut node) = node();
        (case.breaks)(&lab, &mut node);
        let (code, stdout, stderr) = check(&node, &[]);
        assert_eq!(code, Some(case.code), "{}: {stdout}{stderr}", case.what);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(
            errors.iter().any(|l| l.contains(case.says)),
            "{}: no ERROR line saying {:?}:\n{stderr}",
            case.what,
            case.says
        );
    }
}

/// As a build renders the file: the secrets it names are not there yet (on NixOS they become
/// credentials only when the units start).
fn without_the_files_it_names(node: &Node) {
    for entry in std::fs::read_dir(&node.dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::remove_file(path).unwrap();
        }
    }
}

#[test]
fn config_only_validates_the_configuration_and_opens_none_of_its_files() {
    let (_lab, node) = node();
    without_the_files_it_names(&node);

    let (code, stdout, stderr) = check(&node, &["--config-only"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "ok  configuration {}: valid (node {}; services chainfire, flaredb, iam)\n",
            node.config_path().display(),
            node.id
        )),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l
            == "files not checked (--config-only): join token join-token, TLS CA ca.pem, \
                TLS client certificate client.pem, TLS client key client-key.pem, \
                IAM bootstrap token iam-token, IAM admin's public key admin.pub.pem"),
        "{stdout}"
    );
    assert!(!stderr.contains("ERROR"), "{stderr}");

    let (code, stdout, stderr) = check(&node, &[]);
    assert_eq!(code, Some(78), "without --config-only: {stdout}{stderr}");
    assert!(stderr.contains(JOIN_TOKEN_FILE), "{stderr}");
}

#[test]
fn config_only_still_refuses_an_invalid_configuration_naming_the_field() {
    let (_lab, mut node) = node();
    without_the_files_it_names(&node);
    node.config["timeouts"]["total"] = json!("2 days");

    let (code, stdout, stderr) = check(&node, &["--config-only"]);
    assert_eq!(code, Some(78), "{stdout}{stderr}");
    assert!(
        stderr.lines().any(|l| l.contains("ERROR")
            && l.contains(&node.config_path().display().to_string())
            && l.contains("`timeouts.total`")),
        "{stderr}"
    );
    assert!(!stdout.contains("not checked"), "{stdout}");
}

/// The example configuration the flint package installs (docs/examples/cluster-config.json) is
/// valid, for the services a node of the deployment flow runs.
#[test]
fn the_packaged_example_configuration_is_valid() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/cluster-config.json");
    let out = run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_flint"))
            .args(["config", "check", "--config-only"])
            .arg(&example),
        Duration::from_secs(10),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("valid (node node04; services chainfire, flaredb, iam)"),
        "{stdout}"
    );
}
