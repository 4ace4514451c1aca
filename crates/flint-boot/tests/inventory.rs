//! The inventory file as a hostile or careless operator leaves it: a FIFO in its place, a file
//! beyond the size bound. The real binary on loopback, driven by curl.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_flint-boot");

const INVENTORY: &str = r#"{
  "profiles": {"worker": {"kernel": "debian/vmlinuz", "cmdline": "flint.profile=worker"}},
  "nodes": [{"name": "node01", "mac": "52:54:00:00:00:01", "profile": "worker"}],
  "unknown": {"policy": "menu"}
}"#;

/// 64 MiB and one byte; sparse, so it costs no disk.
const OVERSIZED: u64 = 64 * 1024 * 1024 + 1;

fn free_addr() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let ip = Ipv4Addr::new(127, 160 + (pid % 60) as u8, (pid / 60 % 250) as u8, n);
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}

struct Server {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        std::fs::write(dir.path().join("inventory.json"), INVENTORY).unwrap();
        let addr = free_addr();
        let child = Command::new(BIN)
            .arg("serve")
            .args(["--http", &addr.to_string(), "--inventory"])
            .arg(dir.path().join("inventory.json"))
            .arg("--images")
            .arg(dir.path().join("images"))
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let server = Server { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.curl("/healthz").stdout != b"ok\n" {
            assert!(Instant::now() < deadline, "not up:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn inventory(&self) -> PathBuf {
        self.dir.path().join("inventory.json")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap()
    }

    fn curl(&self, path: &str) -> Output {
        Command::new("curl")
            .args(["-sS", "--max-time", "2"])
            .arg(format!("http://{}{path}", self.addr))
            .output()
            .expect("run curl")
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// The node's script, answered within curl's 2 s.
    fn script(&self) -> String {
        let out = self.curl("/ipxe?mac=52-54-00-00-00-01");
        assert!(out.status.success(), "/ipxe: {out:?}\n{}", self.log());
        String::from_utf8(out.stdout).unwrap()
    }

    fn wait_log(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Puts `make`'s file in the inventory's place with one rename, as a config tool would.
fn replace_with(inventory: &Path, make: impl FnOnce(&Path)) {
    let tmp = inventory.with_extension("new");
    make(&tmp);
    std::fs::rename(&tmp, inventory).unwrap();
}

#[test]
fn a_fifo_in_place_of_the_inventory_is_refused_and_stalls_nothing() {
    let mut s = Server::start();
    replace_with(&s.inventory(), |p| {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRUSR).unwrap()
    });
    // Opening a FIFO waits for a writer: none comes. Every request still has its answer.
    s.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.script().contains("booting node01"));
    s.signal(Signal::SIGHUP);
    assert!(s.script().contains("booting node01"));
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
    let s = Server::start();
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
    assert!(s.script().contains("booting node01"));
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

    let s = Server::start();
    replace_with(&s.inventory(), |p| {
        std::fs::File::create(p)
            .unwrap()
            .set_len(OVERSIZED)
            .unwrap()
    });
    s.signal(Signal::SIGHUP);
    s.wait_log("at most 67108864 bytes");
    assert!(s.log().contains("still serving the previous one"));
    assert!(s.script().contains("booting node01"));
}
