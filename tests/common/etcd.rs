//! Real etcd members with TLS on the client and the peer side, each on its own lab IP, stopped by
//! PID when the test ends.
use super::lab::{CLIENT_PORT, PEER_PORT};
use super::{Lab, run_bounded, tail, wait_until};
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Which certificate the members present to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCert {
    Good,
    Expired,
    WrongName,
}

impl ServerCert {
    fn file_stem(self) -> &'static str {
        match self {
            ServerCert::Good => "server",
            ServerCert::Expired => "server-expired",
            ServerCert::WrongName => "server-wrong-name",
        }
    }
}

/// One etcd process; dropping it kills it by PID.
pub struct EtcdProcess {
    pub name: String,
    pub client_url: String,
    log: PathBuf,
    child: Child,
}

impl EtcdProcess {
    pub fn spawn(
        name: &str,
        client_url: String,
        mut command: Command,
        log: PathBuf,
    ) -> EtcdProcess {
        let out = File::create(&log).expect("create etcd log");
        let err = out.try_clone().expect("clone log handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn etcd (is etcd installed?)");
        EtcdProcess {
            name: name.to_string(),
            client_url,
            log,
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

/// A member as `etcdctl member list` reports it.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: u64,
    /// The ID as etcd prints it (`%x`).
    pub id_hex: String,
    /// Empty while the member has not started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
    pub started: bool,
}

pub struct EtcdCluster {
    members: Vec<Option<EtcdProcess>>,
    healthy_since: Instant,
    server_cert: ServerCert,
    // Last, so the processes above are gone before their data dirs are removed.
    pub lab: Lab,
}

impl EtcdCluster {
    pub fn start(size: usize) -> EtcdCluster {
        EtcdCluster::start_with(size, ServerCert::Good)
    }

    /// A cluster of `size` members named node01.. on the lab IPs 0..size, all healthy on return.
    pub fn start_with(size: usize, server_cert: ServerCert) -> EtcdCluster {
        let lab = Lab::new();
        fs::create_dir_all(lab.path().join("logs")).expect("create log dir");
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            healthy_since: Instant::now(),
            server_cert,
            lab,
        };
        for i in 0..size {
            let process = cluster.spawn_member(i, size);
            cluster.members.push(Some(process));
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        cluster.healthy_since = Instant::now();
        cluster
    }

    /// Waits until etcd accepts membership changes: with its default strict reconfig check it
    /// rejects a member add ("not healthy for reconfigure") until every voter has been connected
    /// to the others for 5 s. Flint retries that on its own; a test that must catch the answer
    /// to the *first* add waits here first.
    pub fn wait_reconfigurable(&self) {
        let ready_at = self.healthy_since + Duration::from_secs(6);
        std::thread::sleep(ready_at.saturating_duration_since(Instant::now()));
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.lab.ip(i)
    }

    pub fn client_url(&self, i: usize) -> String {
        self.lab.client_url(i)
    }

    pub fn peer_url(&self, i: usize) -> String {
        self.lab.peer_url(i)
    }

    /// A node whose config names member 0 as leader and the other members as peers.
    pub fn node(&self, i: usize) -> super::Node {
        let peers: Vec<String> = (1..self.size()).map(|m| self.client_url(m)).collect();
        super::Node::new(&self.lab, &Lab::node_name(i), self.ip(i), &peers)
    }

    /// Kills member `i` by PID and waits for it to be gone.
    pub fn stop(&mut self, i: usize) {
        let process = self.members[i].take();
        assert!(process.is_some(), "member {i} is not running");
        drop(process);
    }

    /// Freezes member `i` (SIGSTOP, by PID): its connections stay open and nothing answers, as
    /// on a member that hangs; `resume` undoes it. A frozen member left at the end is killed
    /// with the others (SIGKILL needs no SIGCONT).
    pub fn pause(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, i: usize, signal: nix::sys::signal::Signal) {
        let process = self.members[i].as_ref().expect("member is running");
        let pid = nix::unistd::Pid::from_raw(process.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal an etcd member");
    }

    /// Starts member `i` again on its data dir and waits until it is healthy.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].is_none(), "member {i} is still running");
        let process = self.spawn_member(i, self.size());
        self.members[i] = Some(process);
        self.wait_healthy(i);
    }

    /// Stops every member (a cluster that is entirely down).
    pub fn stop_all(&mut self) {
        for i in 0..self.size() {
            self.members[i] = None;
        }
    }

    /// Runs etcdctl against every running member.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let endpoints: Vec<String> = self
            .members
            .iter()
            .flatten()
            .map(|m| m.client_url.clone())
            .collect();
        assert!(!endpoints.is_empty(), "no member is running");
        self.etcdctl_at(&endpoints, args)
    }

    pub fn etcdctl_at(&self, endpoints: &[String], args: &[&str]) -> Output {
        let pki = &self.lab.pki;
        let mut command = Command::new("etcdctl");
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", pki.path("ca.pem").display()))
            .arg(format!("--cert={}", pki.path("client.pem").display()))
            .arg(format!("--key={}", pki.path("client-key.pem").display()))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args);
        if self.server_cert != ServerCert::Good {
            command.arg("--insecure-skip-tls-verify");
        }
        run_bounded(&mut command, Duration::from_secs(20))
    }

    pub fn member_list(&self) -> Vec<Member> {
        let output = self.etcdctl(&["member", "list", "-w", "json"]);
        assert!(
            output.status.success(),
            "etcdctl member list failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("member list is JSON");
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        json["members"]
            .as_array()
            .expect("member list has members")
            .iter()
            .map(|m| {
                // etcdctl prints IDs as JSON numbers (uint64), not strings as the gateway does.
                let id = m["ID"].as_u64().expect("member ID is a number");
                let name = m["name"].as_str().unwrap_or_default().to_string();
                Member {
                    id,
                    id_hex: format!("{id:x}"),
                    started: !name.is_empty(),
                    name,
                    peer_urls: strings(&m["peerURLs"]),
                    client_urls: strings(&m["clientURLs"]),
                    is_learner: m["isLearner"].as_bool().unwrap_or(false),
                }
            })
            .collect()
    }

    /// The members whose peer URLs include `peer_url`.
    pub fn members_with_peer_url(&self, peer_url: &str) -> Vec<Member> {
        self.member_list()
            .into_iter()
            .filter(|m| m.peer_urls.iter().any(|u| u == peer_url))
            .collect()
    }

    /// Starts etcd for a joining node the way etcd.service would: the `KEY=value` lines of flint's
    /// environment file go into the environment, only the node's addresses and TLS are flags.
    pub fn start_new_member(&self, ip: Ipv4Addr, env_file: &Path) -> EtcdProcess {
        let vars = read_env_file(env_file);
        let name = vars
            .iter()
            .find(|(k, _)| k == "ETCD_NAME")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no ETCD_NAME in {}: {vars:?}", env_file.display()));
        let mut command = self.base_command(ip);
        command
            .envs(vars)
            .arg(format!(
                "--data-dir={}",
                self.lab.path().join(format!("{ip}.etcd")).display()
            ))
            .arg(format!("--listen-peer-urls=https://{ip}:{PEER_PORT}"));
        EtcdProcess::spawn(
            &name,
            format!("https://{ip}:{CLIENT_PORT}"),
            command,
            self.lab
                .path()
                .join("logs")
                .join(format!("{name}-{ip}.log")),
        )
    }

    /// Waits until the member at `ip` (a started learner) has caught up with the leader's raft
    /// log, so that etcd accepts its promotion at the first attempt.
    pub fn wait_caught_up(&self, ip: Ipv4Addr, timeout: Duration) {
        let learner_url = format!("https://{ip}:{CLIENT_PORT}");
        let mut endpoints: Vec<String> = self
            .members
            .iter()
            .flatten()
            .map(|m| m.client_url.clone())
            .collect();
        endpoints.push(learner_url.clone());
        wait_until(&format!("{learner_url} to catch up"), timeout, || {
            let output = self.etcdctl_at(&endpoints, &["endpoint", "status", "-w", "json"]);
            let statuses: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            let statuses = statuses.as_array()?;
            let index_of = |url: &str| {
                statuses
                    .iter()
                    .find(|s| s["Endpoint"] == url)
                    .and_then(|s| s["Status"]["raftIndex"].as_u64())
            };
            let learner = index_of(&learner_url)?;
            let highest = statuses
                .iter()
                .filter_map(|s| s["Status"]["raftIndex"].as_u64())
                .max()?;
            (learner >= highest).then_some(())
        });
    }

    /// Waits until every running member reports the same leader, itself running: after a member
    /// stops, the others may need an election before the cluster is usable again.
    pub fn wait_for_leader(&self, timeout: Duration) {
        wait_until("the running members to agree on a leader", timeout, || {
            let output = self.etcdctl(&["endpoint", "status", "-w", "json"]);
            if !output.status.success() {
                return None;
            }
            let statuses: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            let statuses = statuses.as_array()?;
            let running = self.members.iter().flatten().count();
            let leaders: Vec<u64> = statuses
                .iter()
                .filter_map(|s| s["Status"]["leader"].as_u64())
                .collect();
            let ids: Vec<u64> = statuses
                .iter()
                .filter_map(|s| s["Status"]["header"]["member_id"].as_u64())
                .collect();
            let agreed = statuses.len() == running
                && leaders.len() == running
                && leaders.iter().all(|l| *l != 0 && *l == leaders[0])
                && ids.contains(&leaders[0]);
            agreed.then_some(())
        });
    }

    fn spawn_member(&self, i: usize, size: usize) -> EtcdProcess {
        let name = Lab::node_name(i);
        let initial_cluster: Vec<String> = (0..size)
            .map(|m| format!("{}={}", Lab::node_name(m), self.peer_url(m)))
            .collect();
        let mut command = self.base_command(self.ip(i));
        command
            .arg(format!("--name={name}"))
            .arg(format!(
                "--data-dir={}",
                self.lab.path().join(format!("{name}.etcd")).display()
            ))
            .arg(format!("--listen-peer-urls={}", self.peer_url(i)))
            .arg(format!(
                "--initial-advertise-peer-urls={}",
                self.peer_url(i)
            ))
            .arg(format!("--initial-cluster={}", initial_cluster.join(",")))
            .arg("--initial-cluster-state=new")
            .arg(format!(
                "--initial-cluster-token=flint-test-{}",
                self.lab.ip(0)
            ));
        EtcdProcess::spawn(
            &name,
            self.client_url(i),
            command,
            self.lab.path().join("logs").join(format!("{name}.log")),
        )
    }

    /// etcd with a clean environment, the client listener on `ip` and mutual TLS on both sides.
    fn base_command(&self, ip: Ipv4Addr) -> Command {
        let pki = &self.lab.pki;
        let stem = self.server_cert.file_stem();
        let cert = pki.path(&format!("{stem}.pem"));
        let key = pki.path(&format!("{stem}-key.pem"));
        let ca = pki.path("ca.pem");
        let mut command = Command::new("etcd");
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg(format!("--listen-client-urls=https://{ip}:{CLIENT_PORT}"))
            .arg(format!(
                "--advertise-client-urls=https://{ip}:{CLIENT_PORT}"
            ))
            .arg(format!("--cert-file={}", cert.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--trusted-ca-file={}", ca.display()))
            .arg("--client-cert-auth")
            .arg(format!("--peer-cert-file={}", cert.display()))
            .arg(format!("--peer-key-file={}", key.display()))
            .arg(format!("--peer-trusted-ca-file={}", ca.display()))
            .arg("--peer-client-cert-auth");
        command
    }

    fn wait_healthy(&self, i: usize) {
        let url = format!("{}/health", self.client_url(i));
        let pki = &self.lab.pki;
        let healthy = || {
            let mut curl = Command::new("curl");
            curl.args(["-sS", "--max-time", "2"])
                .arg("--cacert")
                .arg(pki.path("ca.pem"))
                .arg("--cert")
                .arg(pki.path("client.pem"))
                .arg("--key")
                .arg(pki.path("client-key.pem"));
            if self.server_cert != ServerCert::Good {
                // The broken certificates are the point of those clusters; only flint must mind.
                curl.arg("--insecure");
            }
            curl.arg(&url);
            let output = run_bounded(&mut curl, Duration::from_secs(5));
            String::from_utf8_lossy(&output.stdout).contains(r#""health":"true""#)
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !healthy() {
            if Instant::now() >= deadline {
                let log = self.members[i]
                    .as_ref()
                    .map(EtcdProcess::log_tail)
                    .unwrap_or_default();
                panic!("etcd member {i} ({url}) not healthy after {START_TIMEOUT:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Reads systemd EnvironmentFile syntax, as far as flint's file needs it: `KEY=value` lines,
/// blank lines and `#` comments skipped, one pair of surrounding double quotes removed.
pub fn read_env_file(path: &Path) -> Vec<(String, String)> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (key, value) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("env file line without '=': {l:?}"));
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            (key.trim().to_string(), value.to_string())
        })
        .collect()
}
