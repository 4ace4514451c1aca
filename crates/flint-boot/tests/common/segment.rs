//! One Ethernet segment made of network namespaces: a namespace holding a bridge (`br0`,
//! 10.78.0.1/24), where the test's clients and anything else the servers talk to live, and N
//! server namespaces, server `k` (1-based) with 10.78.0.(1+k)/24 on its `eth0`, the other end of
//! each veth a port of the bridge. Broadcasts from the bridge reach every server and their
//! answers come back, as on one switch; nothing sent can leave the namespaces.
//!
//! Names are unique per test process (its PID and a counter). Every process started here is
//! tracked by PID; on drop each is sent SIGKILL and reaped (bounded), then the namespaces are
//! deleted.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::etcd::{reap, run_bounded};

/// The bridge in the segment's namespace.
pub const BRIDGE: &str = "br0";
/// Each server's interface, in its own namespace.
pub const SERVER_IFACE: &str = "eth0";
/// The bridge's first address: the segment's own host.
pub const SEGMENT_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const PREFIX_LEN: u8 = 24;
/// A process sent SIGKILL that has not exited within this is left behind (and said so).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of one `ip` run.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Server `k`'s address (1-based): 10.78.0.(1+k).
pub fn server_ip(k: usize) -> Ipv4Addr {
    assert!((1..=200).contains(&k), "server {k}: 1 to 200");
    Ipv4Addr::new(10, 78, 0, 1 + k as u8)
}

/// A process started in the segment, for `kill` and `alive`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started(usize);

struct Process {
    what: String,
    child: Child,
    /// Killed and reaped already.
    gone: bool,
}

pub struct Segment {
    /// The namespace of the bridge.
    pub seg: String,
    servers: Vec<String>,
    processes: Vec<Process>,
}

/// `ip ARGS`, bounded; panics with its stderr when it fails.
fn ip(args: &[&str]) {
    let out = run_bounded(Command::new("ip").args(args), IP_TIMEOUT);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip netns add NAME`, after deleting any namespace of that name an earlier, killed run of a
/// process with the same PID left behind.
fn add_namespace(name: &str) {
    let _ = run_bounded(Command::new("ip").args(["netns", "del", name]), IP_TIMEOUT);
    ip(&["netns", "add", name]);
}

impl Segment {
    /// The bridge's namespace and `servers` server namespaces, every link up.
    pub fn new(servers: usize) -> Segment {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("flint-boot-g{}-{n}", std::process::id());
        let mut segment = Segment {
            seg: format!("{base}-seg"),
            servers: Vec::new(),
            processes: Vec::new(),
        };
        add_namespace(&segment.seg);
        let seg = segment.seg.clone();
        ip(&["-n", &seg, "link", "set", "lo", "up"]);
        ip(&["-n", &seg, "link", "add", BRIDGE, "type", "bridge"]);
        let cidr = format!("{SEGMENT_IP}/{PREFIX_LEN}");
        ip(&["-n", &seg, "addr", "add", &cidr, "dev", BRIDGE]);
        ip(&["-n", &seg, "link", "set", BRIDGE, "up"]);
        for k in 1..=servers {
            let ns = format!("{base}-s{k}");
            add_namespace(&ns);
            // Recorded at once, so that a failure below still deletes it.
            segment.servers.push(ns.clone());
            let port = format!("v{k}");
            ip(&[
                "-n",
                &seg,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                SERVER_IFACE,
                "netns",
                &ns,
            ]);
            ip(&["-n", &seg, "link", "set", &port, "master", BRIDGE]);
            ip(&["-n", &seg, "link", "set", &port, "up"]);
            let cidr = format!("{}/{PREFIX_LEN}", server_ip(k));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", SERVER_IFACE]);
            ip(&["-n", &ns, "link", "set", SERVER_IFACE, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        segment
    }

    /// Server `k`'s namespace (1-based).
    pub fn server_ns(&self, k: usize) -> &str {
        &self.servers[k - 1]
    }

    /// One more address on the bridge (a client of its own on the segment).
    pub fn add_address(&self, addr: Ipv4Addr) {
        let cidr = format!("{addr}/{PREFIX_LEN}");
        ip(&["-n", &self.seg, "addr", "add", &cidr, "dev", BRIDGE]);
    }

    /// `program` to run inside namespace `ns` (`ip netns exec`, which execs it: the PID of the
    /// child is the program's), stdin from /dev/null.
    pub fn command(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns])
            .arg(program)
            .stdin(Stdio::null());
        command
    }

    /// Starts `command` (from `command`) with its stdout and stderr appended to `log`; it is
    /// killed by PID when the segment is dropped, or by `kill`.
    pub fn spawn(&mut self, what: &str, mut command: Command, log: &Path) -> Started {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        let child = command
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        self.processes.push(Process {
            what: what.to_owned(),
            child,
            gone: false,
        });
        Started(self.processes.len() - 1)
    }

    pub fn pid(&self, p: Started) -> u32 {
        self.processes[p.0].child.id()
    }

    /// SIGKILL to the process, by PID, and waits (bounded) until it has exited.
    pub fn kill(&mut self, p: Started) -> ExitStatus {
        let process = &mut self.processes[p.0];
        assert!(!process.gone, "{} was killed already", process.what);
        // Only a child not yet reaped: its PID cannot have been reused.
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!(
                "{} had exited ({status}) before it was killed",
                process.what
            );
        }
        process.child.kill().expect("SIGKILL");
        let status = reap(&mut process.child, STOP_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "{} (PID {}) not gone {STOP_TIMEOUT:?} after SIGKILL",
                process.what,
                process.child.id()
            )
        });
        process.gone = true;
        status
    }

    /// Whether the process is still running (not killed, not exited).
    pub fn alive(&self, p: Started) -> bool {
        let process = &self.processes[p.0];
        !process.gone && running(&process.child)
    }

    /// The processes started and not killed that have exited on their own.
    pub fn exited(&self) -> Vec<String> {
        self.processes
            .iter()
            .filter(|p| !p.gone && !running(&p.child))
            .map(|p| format!("{} (PID {})", p.what, p.child.id()))
            .collect()
    }

    /// Runs `program ARGS` in namespace `ns` to completion, killed by PID if it outlives
    /// `timeout` (then this panics).
    pub fn run<S: AsRef<OsStr>>(
        &self,
        ns: &str,
        program: &str,
        args: &[S],
        timeout: Duration,
    ) -> Output {
        let mut command = self.command(ns, program);
        command.args(args);
        run_bounded(&mut command, timeout)
    }

    /// Runs `f` on a thread that has entered namespace `ns`, so every socket it opens lives
    /// there.
    pub fn in_namespace<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open namespace");
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("enter namespace");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SIGKILL to all first, then reap each.
        for process in self.processes.iter_mut().filter(|p| !p.gone) {
            let _ = process.child.kill();
        }
        for process in self.processes.iter_mut().filter(|p| !p.gone) {
            if reap(&mut process.child, STOP_TIMEOUT).is_none() {
                eprintln!(
                    "{} (PID {}) not gone {STOP_TIMEOUT:?} after SIGKILL; left behind",
                    process.what,
                    process.child.id()
                );
            }
            process.gone = true;
        }
        for ns in self.servers.iter().chain([&self.seg]) {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Whether `child` runs: read from /proc rather than with `try_wait` (which needs `&mut`); a
/// zombie has exited.
fn running(child: &Child) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}
