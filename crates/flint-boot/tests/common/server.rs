//! flint-boot's HTTP side as the tests run it: the real binary on a loopback address, an
//! inventory, images, and curl.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::PathBuf;

pub const BIN: &str = env!("CARGO_BIN_EXE_flint-boot");

pub const INVENTORY: &str = r#"{
  "profiles": {
    "worker": {
      "kernel": "debian/vmlinuz",
      "initrds": ["debian/initrd.img"],
      "cmdline": "console=ttyS0 flint.profile=worker",
      "arch": {"arm64": {"kernel": "arm/vmlinuz", "initrds": ["arm/initrd.img"]}}
    },
    "control-plane": {"kernel": "debian/vmlinuz", "cmdline": "flint.profile=cp"}
  },
  "nodes": [
    {"name": "node01", "mac": "52:54:00:00:00:01", "profile": "worker"},
    {"name": "node02", "mac": "52:54:00:00:00:02", "profile": "control-plane",
     "uuid": "4c4c4544-0042-3510-8051-b4c04f4e3232"}
  ],
  "unknown": {"policy": "menu"}
}"#;

/// A fresh 127.x.y.z per server, its port free.
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let ip = Ipv4Addr::new(127, 30 + (pid % 60) as u8, (pid / 60 % 250) as u8, n);
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}

/// flint-boot `serve --http` on a loopback address of its own, with the inventory above and a
/// few images; its log in `DIR/stderr`; killed by PID when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_inventory(INVENTORY, extra)
    }

    /// As `start`, with `inventory` in the place of `INVENTORY`.
    pub fn start_with_inventory(inventory: &str, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"not for clients").unwrap();
        std::fs::write(dir.path().join("inventory.json"), inventory).unwrap();
        let file = dir.path().join("inventory.json");
        let source = ["--inventory".into(), file.display().to_string()];
        Server::start_in(dir, &source, extra)
    }

    /// flint-boot with the inventory from `source` (`--inventory FILE`, `--etcd URL`...), the
    /// images of `start`; up once `/healthz` answers.
    pub fn start_from(source: &[String], extra: &[&str]) -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), source, extra)
    }

    fn start_in(dir: tempfile::TempDir, source: &[String], extra: &[&str]) -> Server {
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("debian")).unwrap();
        std::fs::write(images.join("debian/vmlinuz"), kernel_bytes()).unwrap();
        std::fs::write(images.join("debian/initrd.img"), b"initrd").unwrap();
        let addr = free_addr();
        let child = Command::new(BIN)
            .arg("serve")
            .args(["--http", &addr.to_string()])
            .args(source)
            .arg("--images")
            .arg(&images)
            .args(extra)
            .env("FLINT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let server = Server { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.curl(&["/healthz"]).stdout != b"ok\n" {
            assert!(Instant::now() < deadline, "not up:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn inventory(&self) -> PathBuf {
        self.dir.path().join("inventory.json")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap()
    }

    /// curl with `args`; an argument starting with `/` is a path on this server, except
    /// `/dev/null`.
    pub fn curl(&self, args: &[&str]) -> Output {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with('/') && *a != "/dev/null" {
                    self.url(a)
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("run curl")
    }

    pub fn get(&self, path: &str) -> String {
        let out = self.curl(&["--fail", path]);
        assert!(
            out.status.success(),
            "GET {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits (10 s at most) for `what` in the log.
    pub fn wait_log(&self, what: &str) {
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

    pub fn status(&self, args: &[&str]) -> String {
        let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        a.extend_from_slice(args);
        String::from_utf8(self.curl(&a).stdout).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn kernel_bytes() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}
