//! Two network namespaces joined by a veth pair: the boot server on one side (10.77.0.2 on
//! `srv0`), the test's clients on the other (10.77.0.1 on `cli0`). Broadcasts really cross a
//! link this way, and nothing the test sends can leave the two namespaces. Both are deleted on
//! drop, with whatever processes were started in them stopped first by PID.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const SERVER_IFACE: &str = "srv0";
pub const CLIENT_IFACE: &str = "cli0";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Link {
    pub server_ns: String,
    pub client_ns: String,
    children: Vec<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Link {
    pub fn new() -> Link {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("flint-boot-t{}-{n}", std::process::id());
        let link = Link {
            server_ns: format!("{base}-s"),
            client_ns: format!("{base}-c"),
            children: Vec::new(),
        };
        ip(&["netns", "add", &link.server_ns]);
        ip(&["netns", "add", &link.client_ns]);
        ip(&[
            "-n",
            &link.server_ns,
            "link",
            "add",
            SERVER_IFACE,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IFACE,
            "netns",
            &link.client_ns,
        ]);
        for (ns, iface, addr) in [
            (&link.server_ns, SERVER_IFACE, SERVER_IP),
            (&link.client_ns, CLIENT_IFACE, CLIENT_IP),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", iface]);
            ip(&["-n", ns, "link", "set", iface, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        link
    }

    /// Starts `program` inside the server namespace; it is stopped when the link is dropped.
    pub fn spawn_server(&mut self, program: &str, args: &[&str], stderr: std::fs::File) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server_ns, program])
            .args(args)
            .env("FLINT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start server in namespace");
        self.children.push(child);
    }

    /// Whether every server started is still running.
    pub fn servers_alive(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `f` on a thread that has entered the client namespace, so every socket it opens
    /// lives there.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.client_ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("open client namespace");
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("enter client namespace");
                f()
            })
            .join()
            .expect("client thread")
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}
