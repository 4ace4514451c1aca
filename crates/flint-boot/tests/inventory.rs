//! The inventory file as a hostile or careless operator leaves it: a FIFO in its place, a file
//! beyond the size bound. The real binary on loopback, driven by curl.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

mod common;

use common::server::{BIN, Server, free_addr};

/// 64 MiB and one byte; sparse, so it costs no disk.
const OVERSIZED: u64 = 64 * 1024 * 1024 + 1;

/// The node's script, answered within 2 s.
fn script(s: &Server) -> String {
    let out = s.curl(&["--max-time", "2", "/ipxe?mac=52-54-00-00-00-01"]);
    assert!(out.status.success(), "/ipxe: {out:?}\n{}", s.log());
    String::from_utf8(out.stdout).unwrap()
}

/// Puts `make`'s file in the inventory's place with one rename, as a config tool would.
fn replace_with(inventory: &Path, make: impl FnOnce(&Path)) {
    let tmp = inventory.with_extension("new");
    make(&tmp);
    std::fs::rename(&tmp, inventory).unwrap();
}

#[test]
fn a_fifo_in_place_of_the_inventory_is_refused_and_stalls_nothing() {
    let mut s = Server::start(&[]);
    replace_with(&s.inventory(), |p| {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRUSR).unwrap()
    });
    // Opening a FIFO waits for a writer: none comes. Every request still has its answer.
    s.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(script(&s).contains("booting node01"));
    s.signal(Signal::SIGHUP);
    assert!(script(&s).contains("booting node01"));
    s.wait_log("not a FIFO");

    s.signal(Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the server");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let log = s.log();
    assert!(
        log.contains("inventory.json: .: expected a regular file, not a FIFO"),
        "{log}"
    );
    assert!(log.contains("still serving the previous one"), "{log}");
}

#[test]
fn requests_are_answered_while_a_large_inventory_is_parsed() {
    let s = Server::start(&[]);
    // 400,000 nodes, 28 MB: seconds of parsing in a debug build.
    let mut big = String::from(
        r#"{"profiles": {"worker": {"kernel": "debian/vmlinuz", "cmdline": "x"}}, "nodes": ["#,
    );
    for i in 0..400_000u32 {
        let [_, a, b, c] = i.to_be_bytes();
        if i > 0 {
            big.push(',');
        }
        big.push_str(&format!(
            r#"{{"name": "n{i}", "mac": "52:54:01:{a:02x}:{b:02x}:{c:02x}", "profile": "worker"}}"#
        ));
    }
    big.push_str(r#"], "unknown": {"policy": "menu"}}"#);
    replace_with(&s.inventory(), |p| std::fs::write(p, &big).unwrap());
    s.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    // Answered while the parse still runs: by order, not by a time a busy machine could miss.
    assert!(script(&s).contains("booting node01"));
    assert!(
        !s.log().contains("inventory reloaded"),
        "the reload was over before the answer: either the request waited for it, or the parse \
         was too quick for this test to prove anything"
    );
    s.wait_log("nodes=400000");
}

#[test]
fn an_inventory_beyond_64_mib_is_refused_at_start_and_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("images")).unwrap();
    let big = dir.path().join("big.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(OVERSIZED)
        .unwrap();
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["serve", "--http", &free_addr().to_string(), "--inventory"])
        .arg(&big)
        .arg("--images")
        .arg(dir.path().join("images"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("big.json"), "{err}");
    assert!(err.contains("at most 67108864 bytes"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");

    let s = Server::start(&[]);
    replace_with(&s.inventory(), |p| {
        std::fs::File::create(p)
            .unwrap()
            .set_len(OVERSIZED)
            .unwrap()
    });
    s.signal(Signal::SIGHUP);
    s.wait_log("at most 67108864 bytes");
    assert!(s.log().contains("still serving the previous one"));
    assert!(script(&s).contains("booting node01"));
}

/// `--help` of every command ends with flint-boot's exit statuses, from the table the code exits
/// by.
#[test]
fn every_command_help_lists_every_exit_status() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["render", "--help"],
        &["prepare", "--help"],
        &["status", "--help"],
        &["inventory", "put", "--help"],
        &["inventory", "get", "--help"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        let statuses = help
            .split_once("Exit status:\n")
            .unwrap_or_else(|| panic!("no exit statuses in {args:?}:\n{help}"))
            .1;
        for (code, meaning) in flint_boot::exit::EXIT_STATUSES {
            let line = format!("{code:>4}  {meaning}");
            assert!(
                statuses.lines().any(|l| l == line),
                "{line:?} missing in {args:?}:\n{help}"
            );
        }
    }
}

/// The example inventory the flint-boot package installs (docs/examples/inventory.json) is one
/// flint-boot serves: `render` validates it as `serve` does and writes every node's script.
#[test]
fn the_packaged_example_inventory_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/inventory.json");
    let web = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("render")
        .arg("--inventory")
        .arg(&example)
        .arg(web.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in 1..=4 {
        let script = web
            .path()
            .join(format!("mac-52-54-00-00-00-0{n}.default.ipxe"));
        let script = std::fs::read_to_string(&script)
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            script.contains(&format!("booting node0{n} profile cp")),
            "{script}"
        );
    }
}
