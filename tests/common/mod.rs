//! Test harness: a loopback "lab" per test (its own /24 inside 127.0.0.0/8, its own PKI and temp
//! dir), real etcd clusters with mutual TLS, a switchable TCP proxy, and helpers that run the real
//! `flint` binary with a config written for one node.
// Each test binary compiles this module but uses only part of it.
#![allow(dead_code, unused_imports)]

mod canned;
mod etcd;
mod flint;
mod lab;
mod pki;
mod proxy;
mod testserver;

pub use canned::{Canned, CannedHttp};
pub use etcd::{EtcdCluster, EtcdProcess, Member, ServerCert, read_env_file};
pub use flint::{FlintOutput, FlintProcess, Node, flint_command};
pub use lab::Lab;
pub use pki::Pki;
pub use proxy::{ProxyMode, TcpProxy};
pub use testserver::*;

use std::path::Path;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` once `timeout` has passed, so that
/// no wait in a test can hang.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Names of the entries of a directory, sorted; empty when it does not exist.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                e.expect("read directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot list {}: {e}", dir.display()),
    };
    names.sort();
    names
}

/// The value of the first sample of `name` whose labels include `labels` (more labels, such as a
/// member ID, are fine), in node_exporter's textfile format.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let present: Vec<(&str, &str)> = label_text
                .split(',')
                .filter(|l| !l.is_empty())
                .filter_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    Some((k, v.strip_prefix('"')?.strip_suffix('"')?))
                })
                .collect();
            let matches = metric == name && labels.iter().all(|l| present.contains(l));
            if matches { value.parse().ok() } else { None }
        })
}

/// Checks that `metrics` carries `flint_health_check_timestamp_seconds`, and that it is now (within
/// the minutes a slow test may take), not a stale or zero time.
pub fn assert_checked_recently(metrics: &str) {
    let checked = sample(metrics, "flint_health_check_timestamp_seconds", &[])
        .unwrap_or_else(|| panic!("no timestamp in\n{metrics}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64();
    assert!(
        (now - checked).abs() < 300.0,
        "timestamp {checked}, now {now}"
    );
}

/// The last `lines` lines of a log file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `command` run by `wrapper` (a shell, `unshare`): its program and arguments appended to the
/// wrapper's, its environment changes and working folder carried over.
pub fn wrapped(
    mut wrapper: std::process::Command,
    command: &std::process::Command,
) -> std::process::Command {
    wrapper.arg(command.get_program()).args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapper.env(key, value),
            None => wrapper.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapper.current_dir(dir);
    }
    wrapper
}

/// Runs a short helper command (etcdctl, curl) to completion, killing it by PID if it outlives
/// `timeout`.
pub fn run_bounded(command: &mut std::process::Command, timeout: Duration) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let pipe_reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = pipe_reader(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = pipe_reader(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for helper command") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}
