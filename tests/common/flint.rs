//! Running the real `flint` binary for one node: its config folder (config, CA, client
//! certificate and key side by side, as systemd's credentials would be), its state dir, and its
//! etcd once flint has written the environment file.
use super::{EtcdCluster, EtcdProcess, Lab, Member, wait_until};
use serde_json::{Value, json};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// No single flint run may take longer; every config also carries a shorter `timeouts.total`.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// `flint` with an environment that cannot leak the runner's systemd or logging settings.
pub fn flint_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flint"));
    command
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("FLINT_LOG")
        .env_remove("FLINT_LOG_FORMAT")
        .env("NO_COLOR", "1");
    command
}

pub struct Node {
    pub id: String,
    pub ip: Ipv4Addr,
    /// The config file's folder; relative TLS paths resolve here.
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    /// Written to `cluster-config.json` before every run, unless `set_config_text` replaced it.
    pub config: Value,
    config_text: Option<String>,
    etcd: Option<EtcdProcess>,
}

impl Node {
    pub fn new(lab: &Lab, id: &str, ip: Ipv4Addr, peers: &[String]) -> Node {
        let dir = lab.path().join("nodes").join(id);
        let state_dir = dir.join("state");
        fs::create_dir_all(&state_dir).expect("create node dirs");
        let node = Node {
            id: id.to_string(),
            ip,
            config: json!({
                "node_id": id,
                "leader_url": lab.client_url(0),
                "raft_addr": format!("{ip}:2380"),
                "peers": peers,
                "tls": {"ca": "ca.pem", "cert": "client.pem", "key": "client-key.pem"},
                "timeouts": {"total": "30s", "request": "5s", "connect": "2s"},
                "etcd": {
                    "peer_url": format!("https://{ip}:2380"),
                    "local_url": format!("https://{ip}:2379"),
                },
            }),
            dir,
            state_dir,
            config_text: None,
            etcd: None,
        };
        for file in ["ca.pem", "client.pem", "client-key.pem"] {
            node.install(&lab.pki.path(file), file);
        }
        node
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("cluster-config.json")
    }

    pub fn env_file(&self) -> PathBuf {
        self.state_dir.join("etcd.env")
    }

    pub fn marker_path(&self) -> PathBuf {
        self.state_dir.join(".etcd-joined")
    }

    pub fn peer_url(&self) -> String {
        format!("https://{}:2380", self.ip)
    }

    /// The marker's JSON, or None when there is no marker.
    pub fn marker(&self) -> Option<Value> {
        let text = fs::read_to_string(self.marker_path()).ok()?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "marker {} is not JSON ({e}): {text:?}",
                self.marker_path().display()
            )
        }))
    }

    /// Copies `source` into the config folder as `name`, keeping a key's 0600 mode.
    pub fn install(&self, source: &Path, name: &str) {
        let dest = self.dir.join(name);
        fs::copy(source, &dest)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", source.display(), dest.display()));
    }

    pub fn chmod(&self, name: &str, mode: u32) {
        fs::set_permissions(self.dir.join(name), fs::Permissions::from_mode(mode))
            .expect("chmod file in the config folder");
    }

    /// Writes `text` as the config file verbatim from now on (for broken configs).
    pub fn set_config_text(&mut self, text: &str) {
        self.config_text = Some(text.to_string());
    }

    /// `flint --config <dir>/cluster-config.json --state-dir <dir>/state ARGS`, config written.
    pub fn command(&self, args: &[&str]) -> Command {
        let text = match &self.config_text {
            Some(text) => text.clone(),
            None => serde_json::to_string_pretty(&self.config).expect("serialize config"),
        };
        // Renamed into place: a flint started a moment earlier may be reading the file.
        let temp = self.dir.join(".cluster-config.json.tmp");
        fs::write(&temp, text).expect("write config");
        fs::rename(&temp, self.config_path()).expect("rename config into place");
        let mut command = flint_command();
        command
            .arg("--config")
            .arg(self.config_path())
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args);
        command
    }

    pub fn run(&self, args: &[&str]) -> FlintOutput {
        FlintProcess::spawn(self.command(args)).wait(RUN_TIMEOUT)
    }

    pub fn spawn(&self, args: &[&str]) -> FlintProcess {
        FlintProcess::spawn(self.command(args))
    }

    /// Starts this node's etcd from the environment file flint wrote.
    pub fn start_etcd(&mut self, cluster: &EtcdCluster) {
        assert!(self.etcd.is_none(), "{}: etcd already running", self.id);
        self.etcd = Some(cluster.start_new_member(self.ip, &self.env_file()));
    }

    /// Kills this node's etcd by PID.
    pub fn stop_etcd(&mut self) {
        assert!(self.etcd.take().is_some(), "{}: etcd not running", self.id);
    }

    pub fn etcd_running(&self) -> bool {
        self.etcd.is_some()
    }
}

/// A finished flint run.
#[derive(Debug)]
pub struct FlintOutput {
    /// None when flint was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl FlintOutput {
    /// The seconds of "STEP done in T s, W s of it waiting ...", the closing line of a
    /// first-boot step: (T, W).
    pub fn done_line(&self, step: &str) -> (f64, f64) {
        let prefix = format!("{step} done in ");
        let line = self
            .stderr
            .lines()
            .find_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no {prefix:?} line: {}", self.describe()));
        let seconds = |text: &str| -> f64 {
            text.trim()
                .strip_suffix(" s")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not seconds: {text:?} in {line:?}"))
        };
        let (took, rest) = line.split_once(", ").expect("two figures");
        let waited = rest
            .split_once(" of it waiting")
            .expect("the waiting figure")
            .0;
        (seconds(took), seconds(waited))
    }

    pub fn assert_code(&self, expected: i32, what: &str) {
        assert_eq!(
            self.code,
            Some(expected),
            "{what}: expected exit {expected}, got {:?} after {:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.code,
            self.elapsed,
            self.stderr,
            self.stdout
        );
    }

    /// The run's report for a failing assertion.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.code, self.elapsed, self.stderr, self.stdout
        )
    }
}

/// A running flint whose stderr lines can be awaited. Dropping it kills flint by PID.
pub struct FlintProcess {
    child: Child,
    lines: Receiver<String>,
    stderr: Vec<String>,
    stdout: Option<JoinHandle<String>>,
    started: Instant,
    status: Option<ExitStatus>,
}

impl FlintProcess {
    pub fn spawn(mut command: Command) -> FlintProcess {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flint");
        let (tx, lines) = channel();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(strip_ansi(&line)).is_err() {
                    break;
                }
            }
        });
        let mut stdout = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        FlintProcess {
            child,
            lines,
            stderr: Vec::new(),
            stdout: Some(stdout),
            started: Instant::now(),
            status: None,
        }
    }

    /// Waits for a stderr line containing `phrase` and returns it; panics with everything flint
    /// said if it exits first or `timeout` passes.
    pub fn wait_for_line(&mut self, phrase: &str, timeout: Duration) -> String {
        if let Some(line) = self.stderr.iter().find(|l| l.contains(phrase)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(phrase) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "flint printed no line with {phrase:?} within {timeout:?}; stderr so far:\n{}",
                    self.stderr.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "flint ended ({status:?}) without printing {phrase:?}; stderr:\n{}",
                        self.stderr.join("\n")
                    )
                }
            }
        }
    }

    /// The exit status if flint has exited, without blocking.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("poll flint");
        }
        self.status
    }

    /// Waits for flint to exit; kills it and panics if it outlives `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> FlintOutput {
        let deadline = Instant::now() + timeout;
        while self.try_status().is_none() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let output = self.collect();
                panic!(
                    "flint still running after {timeout:?}; killed. {}",
                    output.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.collect()
    }

    /// `kill -9` by PID, as a power cut or OOM kill would do.
    pub fn kill9(&mut self) -> FlintOutput {
        self.child.kill().expect("SIGKILL flint");
        self.collect()
    }

    fn collect(&mut self) -> FlintOutput {
        let status = self.child.wait().expect("reap flint");
        self.status = Some(status);
        let elapsed = self.started.elapsed();
        // The reader ends at EOF, which comes once flint (the only writer) is gone.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().expect("stdout reader"))
            .unwrap_or_default();
        FlintOutput {
            code: status.code(),
            stdout,
            stderr: self.stderr.join("\n"),
            elapsed,
        }
    }
}

impl Drop for FlintProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            // What flint said up to the failure is usually the explanation.
            while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                self.stderr.push(line);
            }
            eprintln!(
                "--- stderr of flint (pid {}) ---\n{}",
                self.child.id(),
                self.stderr.join("\n")
            );
        }
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequences end with a letter: ESC [ ... m
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl EtcdCluster {
    /// Waits for every run in `runs`, starting a node's etcd as soon as flint has written its
    /// environment file, as `etcd.service` ordered after the add phase would.
    pub fn drive_joins(
        &self,
        nodes: &mut [&mut Node],
        mut runs: Vec<FlintProcess>,
        timeout: Duration,
    ) -> Vec<FlintOutput> {
        let deadline = Instant::now() + timeout;
        loop {
            for node in nodes.iter_mut() {
                if !node.etcd_running() && node.env_file().exists() {
                    node.start_etcd(self);
                }
            }
            if runs.iter_mut().all(|r| r.try_status().is_some()) {
                return runs
                    .iter_mut()
                    .map(|r| r.wait(Duration::from_secs(1)))
                    .collect();
            }
            if Instant::now() >= deadline {
                let reports: Vec<String> = runs
                    .iter_mut()
                    .map(|r| {
                        let _ = r.child.kill();
                        r.collect().describe()
                    })
                    .collect();
                panic!(
                    "flint runs not finished after {timeout:?}; killed:\n{}",
                    reports.join("\n=====\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts the end state of a join: exactly one member with the node's peer URL, started
    /// under the node's name, a voter; the marker present and naming the node. Returns it.
    pub fn assert_joined(&self, node: &Node) -> Member {
        let ours = self.members_with_peer_url(&node.peer_url());
        assert_eq!(
            ours.len(),
            1,
            "expected exactly one member with peer URL {}, found {ours:#?}",
            node.peer_url()
        );
        let member = ours.into_iter().next().expect("one member");
        assert!(
            !member.is_learner,
            "{} is still a learner: {member:?}",
            node.id
        );
        assert_eq!(member.name, node.id, "member name: {member:?}");
        let marker = node
            .marker()
            .unwrap_or_else(|| panic!("no marker at {}", node.marker_path().display()));
        assert_eq!(marker["node_id"], node.id.as_str(), "marker: {marker}");
        for field in ["leader", "joined_at", "flint_version"] {
            assert!(!marker[field].is_null(), "marker lacks {field}: {marker}");
        }
        let member_id = &marker["member_id"];
        let id_matches = member_id.as_u64() == Some(member.id)
            || member_id.as_str().is_some_and(|s| {
                s.eq_ignore_ascii_case(&member.id_hex) || s == member.id.to_string()
            });
        assert!(
            id_matches,
            "marker member_id {member_id} is not {} ({:x})",
            member.id, member.id
        );
        member
    }

    /// Waits until the cluster lists `count` members, all started voters.
    pub fn wait_for_voters(&self, count: usize, timeout: Duration) -> Vec<Member> {
        wait_until(&format!("{count} started voters"), timeout, || {
            let members = self.member_list();
            let ready =
                members.len() == count && members.iter().all(|m| m.started && !m.is_learner);
            ready.then_some(members)
        })
    }
}
