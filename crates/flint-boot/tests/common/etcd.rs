//! A real etcd cluster (Debian's etcd-server, `/usr/bin/etcd`) with mutual TLS on the client and
//! the peer side, its certificates made by `flint-boot prepare` from an inventory, as an operator
//! makes them: each member runs with its node folder's `server.pem` (client side) and
//! `etcd-peer.pem` (peer side), and the boot server's folder (`boot-server.pem`, made for the
//! host of `cluster.report_url`) is the client identity flint-boot talks to etcd with.
//!
//! Every cluster has a loopback /24 of its own, 127.A.B.0, held for its lifetime: member `i` is
//! 127.A.B.(10+i) with etcd's standard ports, the boot server 127.A.B.2 (port 8443 in the report
//! URL). Every process is started here, tracked by PID, and killed by PID on drop; every wait is
//! bounded and its failure shows the tails of the members' logs.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fs::{self, OpenOptions};
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::server::BIN;

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;
/// The port of the report URL: where a test runs `flint-boot serve` with the boot server's
/// certificate, on `boot_server_ip()`.
pub const REPORT_PORT: u16 = 8443;

/// Member `i` has the IP `127.A.B.(NODE_BASE + i)`.
const NODE_BASE: u8 = 10;
/// Addresses checked free when a network is claimed: room for members a test adds later.
const MAX_MEMBERS: usize = 20;
/// The boot server's host in the lab's /24.
const BOOT_SERVER_HOST: u8 = 2;
/// A new cluster (or a restarted member) must be healthy within this.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A member stopped with SIGTERM that has not exited within this is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of one etcdctl, curl or prepare run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of each member's log shown in a failure.
const TAIL_LINES: usize = 30;

/// Whether Debian's etcd-server and etcd-client are installed where the harness runs them.
pub fn available() -> bool {
    Path::new(ETCD).is_file() && Path::new(ETCDCTL).is_file()
}

/// Whether the tests that need Debian's etcd-server can run; says so when they cannot.
pub fn installed_or_say_so() -> bool {
    if available() {
        return true;
    }
    eprintln!("skipping: {ETCD} or {ETCDCTL} not found (apt-get install etcd-server etcd-client)");
    false
}

struct Member {
    name: String,
    ip: Ipv4Addr,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    net: [u8; 2],
    /// Held for the cluster's lifetime: another harness (this one or the root crate's, which
    /// claims its labs the same way) that draws the same /24 fails to bind it and draws again.
    _claim: TcpListener,
    /// Set once a panic message carried the logs, so that drop does not show them again.
    logs_shown: Cell<bool>,
    dir: TempDir,
}

impl EtcdCluster {
    /// `n` members named node01.. on 127.A.B.10.., started from `flint-boot prepare`'s folders;
    /// on return every member answers and all agree on a leader.
    pub fn start(n: usize) -> EtcdCluster {
        assert!(
            (1..=MAX_MEMBERS).contains(&n),
            "1 to {MAX_MEMBERS} members, not {n}"
        );
        let (net, claim) = claim_network();
        let dir = tempfile::Builder::new()
            .prefix("flint-boot-etcd-")
            .tempdir()
            .expect("create temp dir");
        fs::create_dir_all(dir.path().join("logs")).expect("create log dir");
        fs::create_dir_all(dir.path().join("data")).expect("create data dir");
        let members = (0..n)
            .map(|i| {
                let name = node_name(i);
                Member {
                    ip: ip_in(net, NODE_BASE + i as u8),
                    log: dir.path().join("logs").join(format!("{name}.log")),
                    name,
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            net,
            _claim: claim,
            logs_shown: Cell::new(false),
            dir,
        };
        cluster.prepare();
        for i in 0..n {
            cluster.start_member(i);
        }
        cluster.wait_healthy(START_TIMEOUT);
        cluster
    }

    /// The inventory an operator would write for these members, and `flint-boot prepare` run on
    /// it into `prepared()`.
    fn prepare(&self) {
        let nodes: Vec<serde_json::Value> = (0..self.size())
            .map(|i| {
                serde_json::json!({
                    "name": self.name(i),
                    "mac": format!("52:54:00:00:00:{:02x}", i + 1),
                    "profile": "node",
                    "raft_addr": format!("{}:{PEER_PORT}", self.ip(i)),
                    "initial": true,
                })
            })
            .collect();
        let inventory = serde_json::json!({
            "profiles": {"node": {"kernel": "node/vmlinuz", "initrds": ["node/initrd"]}},
            "nodes": nodes,
            "cluster": {
                "services": ["etcd"],
                "ports": {"etcd": CLIENT_PORT, "etcd_peer": PEER_PORT},
                "expected_members": self.size(),
                "report_url": self.report_url(),
            },
        });
        let text = serde_json::to_string_pretty(&inventory).expect("JSON serializes");
        fs::write(self.inventory(), text).expect("write inventory");
        let output = run_bounded(
            Command::new(BIN)
                .arg("prepare")
                .arg("--inventory")
                .arg(self.inventory())
                .arg(self.prepared()),
            TOOL_TIMEOUT,
        );
        assert!(
            output.status.success(),
            "flint-boot prepare failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The temp dir: `inventory.json`, `prepared/`, `data/NAME.etcd`, `logs/NAME.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn inventory(&self) -> PathBuf {
        self.dir().join("inventory.json")
    }

    /// What `flint-boot prepare` wrote: `cluster/`, `nodes/NAME/`, `boot-server/`.
    pub fn prepared(&self) -> PathBuf {
        self.dir().join("prepared")
    }

    /// Member `i`'s folder from prepare, as its node would hold it in /etc/nixos/secrets.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.prepared().join("nodes").join(self.name(i))
    }

    /// `node01` for member 0.
    pub fn name(&self, i: usize) -> String {
        self.members[i].name.clone()
    }

    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.members[i].ip
    }

    pub fn client_url(&self, i: usize) -> String {
        format!("https://{}:{CLIENT_PORT}", self.ip(i))
    }

    pub fn peer_url(&self, i: usize) -> String {
        format!("https://{}:{PEER_PORT}", self.ip(i))
    }

    /// Every member's client URL, running or not.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.size()).map(|i| self.client_url(i)).collect()
    }

    /// The client URLs of the members running and not paused: those that can answer.
    pub fn live_client_urls(&self) -> Vec<String> {
        (0..self.size())
            .filter(|&i| self.is_running(i) && !self.members[i].paused)
            .map(|i| self.client_url(i))
            .collect()
    }

    /// The cluster CA (boot server's copy; every folder's `ca.pem` is the same).
    pub fn ca(&self) -> PathBuf {
        self.prepared().join("boot-server").join("ca.pem")
    }

    /// The boot server's certificate: server and client auth, its one name `boot_server_ip()`.
    pub fn boot_server_cert(&self) -> PathBuf {
        self.prepared().join("boot-server").join("boot-server.pem")
    }

    pub fn boot_server_key(&self) -> PathBuf {
        self.prepared()
            .join("boot-server")
            .join("boot-server-key.pem")
    }

    /// 127.A.B.2: the host of the report URL, and so the name in the boot server's certificate.
    pub fn boot_server_ip(&self) -> Ipv4Addr {
        ip_in(self.net, BOOT_SERVER_HOST)
    }

    /// `https://127.A.B.2:8443/api/reports`, as the inventory's `cluster.report_url`.
    pub fn report_url(&self) -> String {
        format!(
            "https://{}:{REPORT_PORT}/api/reports",
            self.boot_server_ip()
        )
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Kills member `i` (SIGKILL, by PID) and reaps it: a crash, no clean shutdown.
    pub fn kill(&mut self, i: usize) {
        let member = &mut self.members[i];
        let mut child = member
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", member.name));
        member.paused = false;
        let _ = child.kill();
        if reap(&mut child, STOP_TIMEOUT).is_none() {
            panic!(
                "{} (PID {}) not gone {STOP_TIMEOUT:?} after SIGKILL",
                member.name,
                child.id()
            );
        }
    }

    /// Stops member `i` as systemd would: SIGTERM, up to 10 s to exit, then SIGKILL. Returns how
    /// it exited (killed by SIGKILL when it did not go on its own).
    pub fn stop(&mut self, i: usize) -> ExitStatus {
        let member = &mut self.members[i];
        let mut child = member
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", member.name));
        let pid = Pid::from_raw(child.id() as i32);
        if member.paused {
            // A stopped process does not act on SIGTERM until it is continued.
            let _ = kill(pid, Signal::SIGCONT);
            member.paused = false;
        }
        let _ = kill(pid, Signal::SIGTERM);
        if let Some(status) = reap(&mut child, STOP_TIMEOUT) {
            return status;
        }
        eprintln!(
            "{} (PID {pid}) still running {STOP_TIMEOUT:?} after SIGTERM; killing it",
            member.name
        );
        let _ = child.kill();
        reap(&mut child, STOP_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "{} (PID {pid}) not gone {STOP_TIMEOUT:?} after SIGKILL",
                member.name
            )
        })
    }

    /// Starts member `i` again (after `kill` or `stop`) on its data dir with the same flags, and
    /// waits until it answers and agrees with the others on a leader: it has rejoined.
    pub fn restart(&mut self, i: usize) {
        self.start_member(i);
        self.wait_healthy(START_TIMEOUT);
    }

    /// As `restart`, without waiting: for a member that cannot become healthy (no quorum).
    pub fn start_member(&mut self, i: usize) {
        assert!(!self.is_running(i), "{} is still running", self.name(i));
        let mut command = self.etcd_command(i);
        let member = &mut self.members[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .expect("open etcd log");
        writeln!(log, "=== harness: starting {} ===", member.name).expect("write etcd log");
        let err = log.try_clone().expect("clone log handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ETCD}: {e}"));
        member.child = Some(child);
        member.paused = false;
    }

    /// Freezes member `i` (SIGSTOP, by PID): its sockets stay open and nothing answers, as on a
    /// member that hangs. `etcdctl` leaves it out until `resume`.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
        self.members[i].paused = true;
    }

    pub fn resume(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
        self.members[i].paused = false;
    }

    fn signal(&mut self, i: usize, signal: Signal) {
        let member = &mut self.members[i];
        let child = member
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("{} is not running", member.name));
        // Only a child not yet reaped: its PID cannot have been reused.
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{} exited ({status}) before {signal}", member.name);
        }
        kill(Pid::from_raw(child.id() as i32), signal)
            .unwrap_or_else(|e| panic!("{signal} to {}: {e}", member.name));
    }

    /// etcdctl against every member that can answer (running, not paused), as the boot server:
    /// its certificate as the client identity.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let endpoints = self.live_client_urls();
        assert!(!endpoints.is_empty(), "no member is running");
        self.etcdctl_at(&endpoints, args)
    }

    /// etcdctl against `endpoints` only, as the boot server.
    pub fn etcdctl_at(&self, endpoints: &[String], args: &[&str]) -> Output {
        let mut command = etcdctl_command(endpoints, &self.ca());
        command
            .arg(format!("--cert={}", self.boot_server_cert().display()))
            .arg(format!("--key={}", self.boot_server_key().display()))
            .args(args);
        run_bounded(&mut command, TOOL_TIMEOUT)
    }

    /// etcdctl against `endpoints` with the CA but no client certificate: etcd must refuse it.
    pub fn etcdctl_without_cert(&self, endpoints: &[String], args: &[&str]) -> Output {
        let mut command = etcdctl_command(endpoints, &self.ca());
        // Refused at every attempt: no use waiting the usual 5 s for it (the last flag wins).
        command.arg("--command-timeout=2s").args(args);
        run_bounded(&mut command, TOOL_TIMEOUT)
    }

    /// The index of the member every live member names as leader, when they agree on one.
    pub fn leader(&self) -> Option<usize> {
        let statuses = self.endpoint_statuses()?;
        let live = self.live_client_urls();
        if statuses.len() != live.len() {
            return None;
        }
        let leaders: Vec<u64> = statuses.iter().map(|s| s.leader).collect();
        if leaders.iter().any(|&l| l == 0 || l != leaders[0]) {
            return None;
        }
        let endpoint = &statuses
            .iter()
            .find(|s| s.member_id == leaders[0])?
            .endpoint;
        (0..self.size()).find(|&i| self.client_url(i) == *endpoint)
    }

    /// Waits until every live member agrees on a leader, itself live: after the leader is lost
    /// the others need an election before they serve writes.
    pub fn wait_for_leader(&self, timeout: Duration) -> usize {
        self.wait_until("the live members to agree on a leader", timeout, || {
            self.leader()
        })
    }

    /// Waits until every live member passes `etcdctl endpoint health` (it has a leader and
    /// serves a read through raft) and all agree on a leader.
    pub fn wait_healthy(&self, timeout: Duration) {
        self.wait_until("every live member to be healthy", timeout, || {
            let health = self.etcdctl(&["endpoint", "health"]);
            if !health.status.success() {
                return None;
            }
            self.leader().map(|_| ())
        });
    }

    /// Polls `check` every 100 ms until it returns `Some`; panics with the members' logs once
    /// `timeout` has passed or as soon as a member the harness started has exited.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_alive(what);
            if let Some(value) = check() {
                return value;
            }
            if Instant::now() >= deadline {
                self.logs_shown.set(true);
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Panics, with the logs, when a member the harness started (and did not stop) has exited.
    fn assert_alive(&self, what: &str) {
        for member in &self.members {
            let Some(child) = &member.child else { continue };
            // Read /proc rather than try_wait (which needs &mut): a zombie has exited.
            let stat = fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            if matches!(state, None | Some(Some('Z' | 'X'))) {
                self.logs_shown.set(true);
                panic!(
                    "{} (PID {}) exited while waiting for {what}\n{}",
                    member.name,
                    child.id(),
                    self.logs()
                );
            }
        }
    }

    /// The last `lines` lines of member `i`'s log (every run of it).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        tail(&self.members[i].log, lines)
    }

    /// The tail of every member's log, for a failure message.
    pub fn logs(&self) -> String {
        (0..self.size())
            .map(|i| {
                format!(
                    "--- last lines of {} ---\n{}\n",
                    self.members[i].log.display(),
                    self.log_tail(i, TAIL_LINES)
                )
            })
            .collect()
    }

    fn endpoint_statuses(&self) -> Option<Vec<EndpointStatus>> {
        let output = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        if !output.status.success() {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        json.as_array()?
            .iter()
            .map(|s| {
                Some(EndpointStatus {
                    endpoint: s["Endpoint"].as_str()?.to_string(),
                    member_id: s["Status"]["header"]["member_id"].as_u64()?,
                    leader: s["Status"]["leader"].as_u64()?,
                })
            })
            .collect()
    }

    /// etcd as member `i`, from its node folder: client certificates required on both sides.
    fn etcd_command(&self, i: usize) -> Command {
        let node = self.node_dir(i);
        let initial_cluster: Vec<String> = (0..self.size())
            .map(|m| format!("{}={}", self.name(m), self.peer_url(m)))
            .collect();
        let mut command = Command::new(ETCD);
        command
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg(format!("--name={}", self.name(i)))
            .arg(format!(
                "--data-dir={}",
                self.dir()
                    .join("data")
                    .join(format!("{}.etcd", self.name(i)))
                    .display()
            ))
            .arg(format!("--listen-client-urls={}", self.client_url(i)))
            .arg(format!("--advertise-client-urls={}", self.client_url(i)))
            .arg(format!("--listen-peer-urls={}", self.peer_url(i)))
            .arg(format!(
                "--initial-advertise-peer-urls={}",
                self.peer_url(i)
            ))
            .arg(format!("--initial-cluster={}", initial_cluster.join(",")))
            .arg("--initial-cluster-state=new")
            .arg(format!(
                "--initial-cluster-token=flint-boot-test-127.{}.{}",
                self.net[0], self.net[1]
            ))
            .arg("--logger=zap")
            .arg("--client-cert-auth")
            .arg(format!(
                "--trusted-ca-file={}",
                node.join("ca.pem").display()
            ))
            .arg(format!("--cert-file={}", node.join("server.pem").display()))
            .arg(format!(
                "--key-file={}",
                node.join("server-key.pem").display()
            ))
            .arg("--peer-client-cert-auth")
            .arg(format!(
                "--peer-trusted-ca-file={}",
                node.join("ca.pem").display()
            ))
            .arg(format!(
                "--peer-cert-file={}",
                node.join("etcd-peer.pem").display()
            ))
            .arg(format!(
                "--peer-key-file={}",
                node.join("etcd-peer-key.pem").display()
            ));
        command
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.logs_shown.get() {
            eprintln!("{}", self.logs());
        }
        // SIGKILL to all first (a paused member needs no SIGCONT for it), then reap each.
        for member in &mut self.members {
            if let Some(child) = &mut member.child {
                let _ = child.kill();
            }
        }
        for member in &mut self.members {
            if let Some(mut child) = member.child.take()
                && reap(&mut child, STOP_TIMEOUT).is_none()
            {
                eprintln!(
                    "{} (PID {}) not gone {STOP_TIMEOUT:?} after SIGKILL; left behind",
                    member.name,
                    child.id()
                );
            }
        }
        // The temp dir goes with `self.dir`, after the processes that wrote to it.
    }
}

struct EndpointStatus {
    endpoint: String,
    member_id: u64,
    leader: u64,
}

fn node_name(i: usize) -> String {
    format!("node{:02}", i + 1)
}

fn ip_in(net: [u8; 2], host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, net[0], net[1], host)
}

/// A random 127.A.B.0/24 (A in 100..200, as the root crate's labs draw theirs) whose `.1:2379`
/// this process can bind, held as the claim, and whose member, peer and boot-server addresses
/// are all free (a process of an earlier, killed run may still hold one).
fn claim_network() -> ([u8; 2], TcpListener) {
    let seed = RandomState::new().hash_one((
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    ));
    for attempt in 0..200u64 {
        let n = seed.wrapping_add(attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let net = [100 + (n % 100) as u8, ((n >> 8) % 256) as u8];
        let Ok(claim) = TcpListener::bind((ip_in(net, 1), CLIENT_PORT)) else {
            continue;
        };
        let all_free = (0..MAX_MEMBERS as u8)
            .flat_map(|i| [(NODE_BASE + i, CLIENT_PORT), (NODE_BASE + i, PEER_PORT)])
            .chain([(BOOT_SERVER_HOST, REPORT_PORT)])
            .all(|(host, port)| TcpListener::bind((ip_in(net, host), port)).is_ok());
        if all_free {
            return (net, claim);
        }
    }
    panic!("found no free /24 inside 127.0.0.0/8 after 200 attempts");
}

/// etcdctl with a clean environment (no ETCDCTL_* from the caller's), the API v3, short
/// timeouts, `endpoints` and the CA.
fn etcdctl_command(endpoints: &[String], ca: &Path) -> Command {
    let mut command = Command::new(ETCDCTL);
    command
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--cacert={}", ca.display()))
        .args(["--dial-timeout=2s", "--command-timeout=5s"]);
    command
}

/// Waits up to `timeout` for `child` to exit; `None` when it has not.
pub fn reap(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return None,
        }
    }
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a short helper (etcdctl, curl, prepare) to completion, killed by PID if it outlives
/// `timeout`.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
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
    let Some(status) = reap(&mut child, timeout) else {
        let _ = child.kill();
        let _ = reap(&mut child, STOP_TIMEOUT);
        panic!("{command:?} still running after {timeout:?}; killed");
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}
