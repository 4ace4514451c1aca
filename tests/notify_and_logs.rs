//! What flint tells systemd while it waits (sd_notify), and how its log lines look in the
//! journal: through the real binary, with a real notify socket.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

fn flint() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flint"))
}

/// A config whose cluster never answers (port 9 on loopback refuses at once).
fn unreachable_config(dir: &std::path::Path, total: &str) -> std::path::PathBuf {
    let path = dir.join("cluster-config.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"node_id": "node04", "leader_url": "http://127.0.0.1:9",
                 "raft_addr": "127.0.0.1:2380", "timeouts": {{"total": "{total}"}}}}"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn waits_are_reported_to_systemd_with_status_and_a_timeout_extension() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = unreachable_config(dir.path(), "2s");

    let output = flint()
        .args(["--config".as_ref(), config.as_os_str()])
        .args(["--state-dir".as_ref(), dir.path().join("state").as_os_str()])
        .args(["join", "etcd", "--phase", "add"])
        .env("NOTIFY_SOCKET", &socket_path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69), "{output:?}");

    let mut messages = Vec::new();
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let all = messages.join("\n");
    assert!(
        all.contains("STATUS=waiting for a voting etcd member"),
        "no waiting STATUS= in {all:?}"
    );
    let extension = all
        .lines()
        .find_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC="))
        .expect("EXTEND_TIMEOUT_USEC= sent while waiting");
    let usec: u64 = extension.parse().unwrap();
    // The remaining deadline (under 2 s) plus 30 s of slack for flint's own exit.
    assert!((30_000_000..=32_000_000).contains(&usec), "{usec}");
    assert!(
        all.contains("STATUS=failed (exit 69)"),
        "final STATUS= missing in {all:?}"
    );
}

#[test]
fn journal_lines_carry_no_timestamp_and_each_wait_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = unreachable_config(dir.path(), "2s");
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();

    let status = flint()
        .args(["--config".as_ref(), config.as_os_str()])
        .args(["--state-dir".as_ref(), dir.path().join("state").as_os_str()])
        .args(["join", "etcd"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(Stdio::from(log))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(69));
    let text = std::fs::read_to_string(&log_path).unwrap();
    // sd-daemon(3)'s priority prefix, which journald takes as the line's priority, then the level.
    for line in text.lines() {
        assert!(
            line.starts_with("<6> INFO")
                || line.starts_with("<3>ERROR")
                || line.starts_with("<4> WARN"),
            "a journal line starts with its priority and level, not a timestamp: {line:?}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("<3>ERROR gave up waiting for")),
        "the failure at priority 3 (err), for journalctl -p err:\n{text}"
    );
    let waits = text
        .lines()
        .filter(|l| l.starts_with("<6> INFO waiting for"))
        .count();
    assert_eq!(
        waits, 1,
        "one line for the whole wait, not one per retry:\n{text}"
    );
    assert!(text.contains("gave up waiting for"), "{text}");

    // Outside the journal, lines are timestamped for a person at a terminal or in a file.
    let output = flint()
        .args(["--config".as_ref(), config.as_os_str()])
        .args(["--state-dir".as_ref(), dir.path().join("state").as_os_str()])
        .args(["join", "etcd"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.lines().all(|l| l.starts_with("20")),
        "timestamped lines expected:\n{text}"
    );
}

#[test]
fn flint_log_format_json_writes_one_object_a_line_and_bad_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = unreachable_config(dir.path(), "1s");
    let join = |env: &[(&str, &str)]| {
        let mut command = flint();
        command
            .args(["--config".as_ref(), config.as_os_str()])
            .args(["--state-dir".as_ref(), dir.path().join("state").as_os_str()])
            .args(["join", "etcd"]);
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(69));
        String::from_utf8(output.stderr).unwrap()
    };

    let text = join(&[("FLINT_LOG_FORMAT", "json"), ("FLINT_LOG", "debug")]);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l:?}")))
        .collect();
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
    let level_of = |start: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().unwrap().starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in {text}"))["level"]
            .clone()
    };
    assert_eq!(level_of("waiting for"), "INFO");
    assert_eq!(level_of("gave up waiting for"), "ERROR");
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "FLINT_LOG=debug lets debug lines through:\n{text}"
    );

    let text = join(&[("FLINT_LOG", "loud"), ("FLINT_LOG_FORMAT", "yaml")]);
    assert!(
        text.contains(r#"FLINT_LOG="loud" is not a log level (error, warn, info, debug, trace); logging at INFO"#),
        "{text}"
    );
    assert!(
        text.contains(r#"FLINT_LOG_FORMAT="yaml" is not a log format (text, json); writing text"#),
        "{text}"
    );
    assert!(text.contains("gave up waiting for"), "{text}");
}

#[test]
fn capabilities_are_dropped_and_no_new_privs_is_set_while_joining() {
    let dir = tempfile::tempdir().unwrap();
    let config = unreachable_config(dir.path(), "5s");
    let mut child = flint()
        .args(["--config".as_ref(), config.as_os_str()])
        .args(["--state-dir".as_ref(), dir.path().join("state").as_os_str()])
        .args(["join", "etcd"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The join retries for 5 s; its status is read while it waits.
    let status_path = format!("/proc/{}/status", child.id());
    let mut status = String::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        status = std::fs::read_to_string(&status_path).unwrap_or_default();
        if status.contains("NoNewPrivs:\t1") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");
    assert_eq!(field("CapAmb:"), "0000000000000000", "{status}");
    if nix_is_root() {
        assert_eq!(field("CapBnd:"), "0000000000000000", "{status}");
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}
