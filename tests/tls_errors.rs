//! TLS problems are permanent: flint must stop at the first failed verification with an error
//! naming the cause (exit 77, "a peer that failed TLS verification"), never retry until the
//! deadline as it would for an unreachable cluster. A private key others may read is refused.
mod common;

use common::{EtcdCluster, FlintOutput, Lab, Node, ServerCert, dir_entries};
use serde_json::json;
use std::time::Duration;

const ADD: &[&str] = &["join", "etcd", "--phase", "add"];
/// Far beyond FAIL_FAST: a run that retries shows up as a slow run, not as a lucky pass.
const DEADLINE: &str = "60s";
const FAIL_FAST: Duration = Duration::from_secs(20);

/// Runs the add phase with a long deadline; kills flint if it is still retrying at FAIL_FAST.
fn run_failing_fast(node: &mut Node) -> FlintOutput {
    node.config["timeouts"]["total"] = json!(DEADLINE);
    let mut run = node.spawn(ADD);
    let out = run.wait(FAIL_FAST);
    // Shown with --nocapture: the message an operator would read.
    eprintln!("{}", out.describe());
    assert!(
        out.elapsed < FAIL_FAST,
        "flint kept trying a permanent TLS error: {}",
        out.describe()
    );
    out
}

/// The verdict every TLS verification failure must share: exit 77, "certificate" and each of
/// `cause` (any one spelling of the cause, matched case-insensitively) in stderr, nothing written.
fn assert_tls_failure(node: &Node, out: &FlintOutput, causes: &[&str]) {
    out.assert_code(77, "TLS verification failure");
    let stderr = out.stderr.to_lowercase();
    assert!(
        stderr.contains("certificate"),
        "stderr does not say a certificate is at fault:\n{}",
        out.stderr
    );
    assert!(
        causes.iter().any(|c| stderr.contains(c)),
        "stderr names none of {causes:?}:\n{}",
        out.stderr
    );
    assert!(
        node.marker().is_none(),
        "marker written despite the failure"
    );
    assert!(
        !node.env_file().exists(),
        "etcd.env written despite the failure"
    );
    assert!(
        !dir_entries(&node.state_dir)
            .iter()
            .any(|e| e.contains("etcd.env")),
        "temp env file left behind: {:?}",
        dir_entries(&node.state_dir)
    );
}

#[test]
fn server_certificate_from_another_ca() {
    let cluster = EtcdCluster::start(1);
    let mut node = cluster.node(3);
    // flint trusts a CA that did not sign etcd's certificate.
    node.install(&cluster.lab.pki.path("other-ca.pem"), "ca.pem");
    let out = run_failing_fast(&mut node);
    // rustls: "invalid peer certificate: UnknownIssuer".
    assert_tls_failure(&node, &out, &["unknownissuer", "unknown issuer", "issuer"]);
}

#[test]
fn expired_server_certificate() {
    let cluster = EtcdCluster::start_with(1, ServerCert::Expired);
    let mut node = cluster.node(3);
    let out = run_failing_fast(&mut node);
    // rustls: "certificate expired: verification time ..., but certificate is not valid after ...".
    assert_tls_failure(&node, &out, &["expired"]);
}

#[test]
fn server_certificate_for_another_name() {
    let cluster = EtcdCluster::start_with(1, ServerCert::WrongName);
    let mut node = cluster.node(3);
    let out = run_failing_fast(&mut node);
    // rustls: "certificate not valid for name \"127.x.y.10\"; certificate is only valid for
    // DnsName(\"wrong.example\")"; older spellings say NotValidForName.
    assert_tls_failure(
        &node,
        &out,
        &["not valid for name", "notvalidforname", "wrong.example"],
    );
}

#[test]
fn client_certificate_from_another_ca() {
    let cluster = EtcdCluster::start(1);
    let mut node = cluster.node(3);
    // etcd verifies client certificates (--client-cert-auth) and refuses this one.
    node.install(&cluster.lab.pki.path("other-client.pem"), "client.pem");
    node.install(
        &cluster.lab.pki.path("other-client-key.pem"),
        "client-key.pem",
    );
    let out = run_failing_fast(&mut node);
    // The server's alert: "received fatal alert: BadCertificate" (or UnknownCA).
    assert_tls_failure(
        &node,
        &out,
        &[
            "badcertificate",
            "bad certificate",
            "unknownca",
            "unknown ca",
        ],
    );
}

#[test]
fn private_key_readable_by_others_is_refused() {
    let lab = Lab::new();
    for mode in [0o644, 0o640, 0o604] {
        let mut node = lab.node(3);
        node.chmod("client-key.pem", mode);
        let out = run_failing_fast(&mut node);
        out.assert_code(77, &format!("client key with mode {mode:o}"));
        let key = node.dir.join("client-key.pem").display().to_string();
        assert!(
            out.stderr.contains(&key),
            "stderr does not name the key file {key}:\n{}",
            out.stderr
        );
        assert_eq!(dir_entries(&node.state_dir), Vec::<String>::new());
    }
}
