//! Secrets never leave where they belong: the whole first-boot chain runs with a known join
//! token, IAM bootstrap token and admin key pair (the private half in a file no config names),
//! at the most verbose log level, and none of them — nor any private key of the lab — appears in
//! any output of flint, in any file flint writes, or in the servers' logs. The admin's private
//! key configured as its public key is refused before anything is sent.
mod common;

use common::{
    ADMIN_PRIVATE_FILE, CHAINFIRE_PORT, FLAREDB_PORT, FlintOutput, FlintProcess, IAM_MARKER, Lab,
    Node, Secrets, TestServer, chain_node, dir_entries, marker, random_hex, write_private,
};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const CHAIN: &[&[&str]] = &[
    &["join", "chainfire"],
    &["join", "flaredb"],
    &["iam-setup"],
    &["health"],
    &["health", "--json"],
    &["node-join"],
    &["node-join", "--json"],
];

/// flint at its most talkative: `-v` and `FLINT_LOG=trace`.
fn run_verbose(node: &Node, args: &[&str]) -> FlintOutput {
    let mut all = vec!["-v"];
    all.extend_from_slice(args);
    let mut command = node.command(&all);
    command.env("FLINT_LOG", "trace");
    FlintProcess::spawn(command).wait(Duration::from_secs(60))
}

/// The base64 lines of every PEM private key in `pem` (each long enough to be unmistakable).
fn key_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect()
}

/// Every file under `dir`, recursively, as (path, content).
fn files_under(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in dir_entries(dir) {
        let path = dir.join(&name);
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            let bytes = std::fs::read(&path).unwrap_or_default();
            out.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    out
}

fn assert_no_secret(what: &str, text: &str, secrets: &[(String, String)]) {
    for (name, secret) in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} contains {name}:\n{text}"
        );
    }
}

#[test]
fn the_whole_chain_leaks_no_secret() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let chainfire = TestServer::cluster(&lab, CHAINFIRE_PORT, 5, 3, secrets.cluster_options(&lab));
    let flaredb = TestServer::cluster(&lab, FLAREDB_PORT, 5, 3, secrets.cluster_options(&lab));
    let iam = TestServer::iam_with(&lab, 5, secrets.iam_options(&lab));
    let nodes: Vec<Node> = (0..4)
        .map(|i| chain_node(&lab, i, &secrets, i < 3))
        .collect();

    let mut outputs: Vec<(String, FlintOutput)> = Vec::new();
    for node in &nodes {
        for args in CHAIN {
            let out = run_verbose(node, args);
            out.assert_code(0, &format!("{}: flint {}", node.id, args.join(" ")));
            outputs.push((format!("{}: flint {}", node.id, args.join(" ")), out));
        }
    }
    // Failures log their whole chain of causes: a refused token must not show up there either.
    let mut intruder = chain_node(&lab, 4, &secrets, false);
    let wrong_token = format!("wrong-{}", random_hex(32));
    write_private(&intruder.dir.join("wrong-token"), &wrong_token);
    intruder.config["join_token_file"] = json!("wrong-token");
    intruder.config["timeouts"]["total"] = json!("5s");
    let refused = run_verbose(&intruder, &["join", "chainfire"]);
    refused.assert_code(77, "a join with the wrong token");
    outputs.push(("node05 with a wrong token".into(), refused));
    let mut leaky = chain_node(&lab, 4, &secrets, false);
    leaky.config["iam"]["org"] = json!("globex");
    let mismatch = run_verbose(&leaky, &["iam-setup"]);
    mismatch.assert_code(65, "iam-setup naming another org");
    outputs.push(("node05 with another org".into(), mismatch));

    let mut needles: Vec<(String, String)> = vec![
        ("the join token".into(), secrets.join_token.clone()),
        ("the IAM bootstrap token".into(), secrets.iam_token.clone()),
        ("the wrong token".into(), wrong_token.clone()),
        ("a PEM private key".into(), "PRIVATE KEY".into()),
    ];
    let pki = &lab.pki;
    for (name, pem) in [
        ("the admin's private key", secrets.admin_private_pem.clone()),
        (
            "the client key",
            std::fs::read_to_string(pki.path("client-key.pem")).expect("client key"),
        ),
        (
            "the server key",
            std::fs::read_to_string(pki.path("server-key.pem")).expect("server key"),
        ),
    ] {
        let lines = key_lines(&pem);
        assert!(!lines.is_empty(), "no key material parsed from {name}");
        needles.extend(lines.into_iter().map(|l| (name.to_string(), l)));
    }

    for (what, out) in &outputs {
        assert_no_secret(&format!("stderr of {what}"), &out.stderr, &needles);
        assert_no_secret(&format!("stdout of {what}"), &out.stdout, &needles);
    }
    for node in nodes.iter().chain([&intruder, &leaky]) {
        for (path, content) in files_under(&node.state_dir) {
            assert_no_secret(&format!("file {path}"), &content, &needles);
        }
    }
    for server in [&chainfire, &flaredb, &iam] {
        assert_no_secret(
            &format!(
                "the log of the {} server on port {}",
                server.kind, server.port
            ),
            &server.log(),
            &needles,
        );
    }

    // Only the public half of the admin key reached IAM.
    let state = iam.state();
    let received = state["iam"]["public_key"].as_str().unwrap_or_default();
    assert_eq!(
        received.trim(),
        secrets.admin_public_pem.trim(),
        "{state:#}"
    );
    assert_no_secret("IAM's state", &state.to_string(), &needles);
    // The logs were at their most verbose: the runs did log (this is not an empty check).
    assert!(
        outputs
            .iter()
            .any(|(_, o)| o.stderr.contains("DEBUG") || o.stderr.contains("TRACE")),
        "FLINT_LOG=trace produced no debug lines; the check saw less than it should"
    );
}

#[test]
fn a_private_key_as_the_admin_public_key_is_refused_before_anything_is_sent() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let iam = TestServer::iam_with(&lab, 4, secrets.iam_options(&lab));
    let mut node = chain_node(&lab, 3, &secrets, false);
    node.install(&secrets.path(ADMIN_PRIVATE_FILE), ADMIN_PRIVATE_FILE);
    node.config["iam"]["admin"]["public_key_file"] = json!(ADMIN_PRIVATE_FILE);

    let out = node.run(&["iam-setup"]);
    out.assert_code(78, "iam.admin.public_key_file naming a private key");
    assert!(
        out.stderr.contains("iam.admin.public_key_file"),
        "the error names the field: {}",
        out.describe()
    );
    for line in key_lines(&secrets.admin_private_pem) {
        assert!(
            !out.stderr.contains(&line) && !out.stdout.contains(&line),
            "the refusal printed the private key: {}",
            out.describe()
        );
    }
    let state = iam.state();
    assert_eq!(state["requests"]["iam-health"], 0, "{state:#}");
    assert_eq!(state["requests"]["bootstrap"], 0, "{state:#}");
    assert_eq!(state["iam"]["bootstrapped"], false, "{state:#}");
    assert!(marker(&node, IAM_MARKER).is_none());
    let entries = dir_entries(&node.state_dir);
    assert!(
        entries.iter().all(|e| e.ends_with(".lock")),
        "state dir after a refused config: {entries:?}"
    );
}
