//! The etcd harness itself (tests/common/etcd.rs): three real etcd members started from
//! `flint-boot prepare`'s folders serve the boot server's certificate as a client identity,
//! refuse a client without a certificate, keep serving with a member killed, paused or stopped,
//! and take it back on its data dir.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::time::Duration;

use common::etcd::{self, EtcdCluster};
use nix::sys::signal::Signal;

/// Elections after a member is lost take about a second with etcd's default timings.
const FAILOVER: Duration = Duration::from_secs(15);

fn assert_ok(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn put(cluster: &EtcdCluster, key: &str, value: &str) {
    let out = cluster.etcdctl(&["put", key, value]);
    let stdout = assert_ok(&out, &format!("put {key}"));
    assert_eq!(stdout.trim(), "OK", "{}", cluster.logs());
}

/// The value of `key` as member `i` alone has it (a serializable read: its own copy).
fn local_value(cluster: &EtcdCluster, i: usize, key: &str) -> Option<String> {
    let out = cluster.etcdctl_at(
        &[cluster.client_url(i)],
        &["get", key, "--consistency=s", "--print-value-only"],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
}

/// curl to a member's /health, with the CA and, if given, a client certificate.
fn curl_health(cluster: &EtcdCluster, i: usize, identity: Option<(&str, &str)>) -> Output {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--max-time", "5", "--cacert"])
        .arg(cluster.ca());
    if let Some((cert, key)) = identity {
        curl.args(["--cert", cert, "--key", key]);
    }
    curl.arg(format!("{}/health", cluster.client_url(i)));
    etcd::run_bounded(&mut curl, Duration::from_secs(10))
}

#[test]
fn the_boot_server_certificate_is_a_client_identity_and_one_is_required() {
    if !etcd::installed_or_say_so() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    assert_eq!(cluster.client_urls().len(), 3);
    assert_eq!(
        cluster.report_url(),
        format!("https://{}:8443/api/reports", cluster.boot_server_ip())
    );

    put(&cluster, "/flint/x", "y");
    let got = cluster.etcdctl(&["get", "/flint/x", "--print-value-only"]);
    assert_eq!(assert_ok(&got, "get /flint/x").trim(), "y");
    for i in 0..3 {
        let value = cluster.wait_until("the value on every member", FAILOVER, || {
            local_value(&cluster, i, "/flint/x")
        });
        assert_eq!(value, "y", "member {i}");
    }

    // The same request with and without the boot server's certificate: only the first passes
    // the TLS handshake.
    let cert = cluster.boot_server_cert();
    let key = cluster.boot_server_key();
    let with = curl_health(
        &cluster,
        1,
        Some((cert.to_str().expect("UTF-8"), key.to_str().expect("UTF-8"))),
    );
    assert!(
        String::from_utf8_lossy(&with.stdout).contains(r#""health":"true""#),
        "with the certificate: {with:?}"
    );
    let without = curl_health(&cluster, 1, None);
    assert!(
        !without.status.success() && without.stdout.is_empty(),
        "curl without a client certificate was answered: {without:?}"
    );
    // curl's own error varies (an alert, or a reset); etcd says why it closed the connection.
    cluster.wait_until("etcd to log the refusal", FAILOVER, || {
        cluster
            .log_tail(1, 200)
            .contains("tls: client didn't provide a certificate")
            .then_some(())
    });

    let refused =
        cluster.etcdctl_without_cert(&cluster.client_urls(), &["put", "/flint/nocert", "z"]);
    assert!(
        !refused.status.success(),
        "etcdctl without a client certificate could write: {refused:?}"
    );
    let after = cluster.etcdctl(&["get", "/flint/nocert", "--print-value-only"]);
    assert_eq!(assert_ok(&after, "get /flint/nocert").trim(), "");
}

#[test]
fn a_member_killed_paused_or_stopped_comes_back_on_its_data_dir() {
    if !etcd::installed_or_say_so() {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    put(&cluster, "/flint/before", "1");

    // The leader crashes: the other two elect one of themselves and keep serving writes.
    let leader = cluster.wait_for_leader(FAILOVER);
    cluster.kill(leader);
    assert!(!cluster.is_running(leader));
    assert_eq!(cluster.live_client_urls().len(), 2);
    let new_leader = cluster.wait_for_leader(FAILOVER);
    assert_ne!(new_leader, leader);
    put(&cluster, "/flint/while-down", "2");

    // Back on its data dir: it rejoins and catches up with the write it missed.
    cluster.restart(leader);
    let health = cluster.etcdctl_at(&cluster.client_urls(), &["endpoint", "health"]);
    assert_ok(&health, "endpoint health of all three");
    let caught_up = cluster.wait_until("the restarted member to catch up", FAILOVER, || {
        local_value(&cluster, leader, "/flint/while-down")
    });
    assert_eq!(caught_up, "2");
    assert_eq!(
        local_value(&cluster, leader, "/flint/before").as_deref(),
        Some("1")
    );

    // A member that hangs: the others serve; once resumed it is healthy again.
    let follower = (0..3).find(|&i| i != new_leader).expect("a follower");
    cluster.pause(follower);
    put(&cluster, "/flint/while-paused", "3");
    cluster.resume(follower);
    cluster.wait_healthy(FAILOVER);
    let value = cluster.wait_until("the resumed member to catch up", FAILOVER, || {
        local_value(&cluster, follower, "/flint/while-paused")
    });
    assert_eq!(value, "3");

    // A clean stop ends etcd on its own (it shuts down, then re-raises the SIGTERM: no SIGKILL
    // was needed), and it restarts like a crashed one.
    let status = cluster.stop(follower);
    assert!(
        status.success() || status.signal() == Some(Signal::SIGTERM as i32),
        "etcd on SIGTERM: {status}"
    );
    put(&cluster, "/flint/while-stopped", "4");
    cluster.restart(follower);
    cluster.wait_healthy(FAILOVER);
    let all = cluster.etcdctl(&["get", "/flint/", "--prefix", "--keys-only"]);
    let keys: Vec<String> = assert_ok(&all, "get /flint/ --prefix")
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(
        keys,
        [
            "/flint/before",
            "/flint/while-down",
            "/flint/while-paused",
            "/flint/while-stopped"
        ]
    );
}
