//! Real etcd members (Debian's etcd-server), one per node namespace, with mutual TLS on the client
//! and the peer side (certificates of tests/common/pki.rs), and etcdctl run from the observer's
//! namespace.
use super::common::{Pki, read_env_file, run_bounded};
use super::net::{Net, node_ip, ns_command};
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn client_url(i: usize) -> String {
    format!("https://{}:2379", node_ip(i))
}

pub fn peer_url(i: usize) -> String {
    format!("https://{}:2380", node_ip(i))
}

/// `node01` for node 1.
pub fn node_name(i: usize) -> String {
    format!("node{i:02}")
}

/// One member's process and how to start it again (as etcd.service's `Restart=always` would).
pub struct EtcdMember {
    pub node: usize,
    ns: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
}

impl EtcdMember {
    /// Initial member `i` of a cluster of `size`, data in `dir`, cluster token `token`.
    pub fn initial(net: &Net, pki: &Pki, dir: &Path, i: usize, size: usize, token: &str) -> Self {
        let initial_cluster: Vec<String> = (1..=size)
            .map(|m| format!("{}={}", node_name(m), peer_url(m)))
            .collect();
        let mut args = base_args(pki, i);
        args.extend([
            format!("--name={}", node_name(i)),
            format!(
                "--data-dir={}",
                dir.join(format!("{}.etcd", node_name(i))).display()
            ),
            format!("--initial-advertise-peer-urls={}", peer_url(i)),
            format!("--initial-cluster={}", initial_cluster.join(",")),
            "--initial-cluster-state=new".to_string(),
            format!("--initial-cluster-token={token}"),
        ]);
        EtcdMember::new(net, dir, i, args, Vec::new())
    }

    /// A joining node's member, configured by the environment file flint wrote, as etcd.service
    /// with `EnvironmentFile=` would start it.
    pub fn joining(net: &Net, pki: &Pki, dir: &Path, i: usize, env_file: &Path) -> Self {
        let mut args = base_args(pki, i);
        args.push(format!(
            "--data-dir={}",
            dir.join(format!("{}.etcd", node_name(i))).display()
        ));
        EtcdMember::new(net, dir, i, args, read_env_file(env_file))
    }

    fn new(net: &Net, dir: &Path, i: usize, args: Vec<String>, env: Vec<(String, String)>) -> Self {
        EtcdMember {
            node: i,
            ns: net.node_ns(i).to_string(),
            args,
            env,
            log: dir.join(format!("etcd-{}.log", node_name(i))),
            child: None,
            starts: 0,
        }
    }

    pub fn start(&mut self) {
        assert!(
            self.child.is_none(),
            "etcd of node {} runs already",
            self.node
        );
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open etcd log");
        let child = ns_command(&self.ns, "etcd")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .expect("spawn etcd (is etcd-server installed?)");
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL by PID, as a crash or a power cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                _ => {
                    self.child = None;
                    false
                }
            },
            None => false,
        }
    }

    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

fn base_args(pki: &Pki, i: usize) -> Vec<String> {
    let p = |f: &str| pki.path(f).display().to_string();
    vec![
        format!("--listen-client-urls={}", client_url(i)),
        format!("--advertise-client-urls={}", client_url(i)),
        format!("--listen-peer-urls={}", peer_url(i)),
        format!("--cert-file={}", p("server.pem")),
        format!("--key-file={}", p("server-key.pem")),
        format!("--trusted-ca-file={}", p("ca.pem")),
        "--client-cert-auth".to_string(),
        format!("--peer-cert-file={}", p("server.pem")),
        format!("--peer-key-file={}", p("server-key.pem")),
        format!("--peer-trusted-ca-file={}", p("ca.pem")),
        "--peer-client-cert-auth".to_string(),
        // Small: seven members' WALs on one disk.
        "--quota-backend-bytes=67108864".to_string(),
    ]
}

/// A member as `etcdctl member list -w json` reports it.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

/// etcdctl from the observer's namespace.
pub struct Etcdctl {
    ns: String,
    pki: PathBuf,
}

impl Etcdctl {
    pub fn new(net: &Net, pki: &Pki) -> Etcdctl {
        Etcdctl {
            ns: net.ctl_ns().to_string(),
            pki: pki.dir.clone(),
        }
    }

    pub fn command(&self, endpoints: &[String], args: &[&str]) -> Command {
        let mut command = ns_command(&self.ns, "etcdctl");
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", self.pki.join("ca.pem").display()))
            .arg(format!("--cert={}", self.pki.join("client.pem").display()))
            .arg(format!(
                "--key={}",
                self.pki.join("client-key.pem").display()
            ))
            .args(["--dial-timeout=2s", "--command-timeout=4s"])
            .args(args);
        command
    }

    /// The member list as one of `endpoints` answers it, or the error.
    pub fn member_list(&self, endpoints: &[String]) -> Result<Vec<Member>, String> {
        let out = run_bounded(
            &mut self.command(endpoints, &["member", "list", "-w", "json"]),
            Duration::from_secs(15),
        );
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let json: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(json["members"]
            .as_array()
            .ok_or("member list without members")?
            .iter()
            .map(|m| Member {
                id: m["ID"].as_u64().unwrap_or_default(),
                name: m["name"].as_str().unwrap_or_default().to_string(),
                peer_urls: strings(&m["peerURLs"]),
                is_learner: m["isLearner"].as_bool().unwrap_or(false),
            })
            .collect())
    }

    /// `(endpoint, member_id, leader)` for every endpoint that answered `endpoint status`.
    pub fn statuses(&self, endpoints: &[String]) -> Vec<(String, u64, u64)> {
        let out = run_bounded(
            &mut self.command(endpoints, &["endpoint", "status", "-w", "json"]),
            Duration::from_secs(20),
        );
        let Ok(json) = serde_json::from_slice::<Value>(&out.stdout) else {
            return Vec::new();
        };
        json.as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|s| {
                        Some((
                            s["Endpoint"].as_str()?.to_string(),
                            s["Status"]["header"]["member_id"].as_u64()?,
                            s["Status"]["leader"].as_u64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A linearizable write through the cluster: it needs a leader with a quorum.
    pub fn put(&self, endpoints: &[String], key: &str, value: &str) -> Result<(), String> {
        let out = run_bounded(
            &mut self.command(endpoints, &["put", key, value]),
            Duration::from_secs(15),
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

/// The member list as a command line would show it, for reports.
pub fn describe(members: &[Member]) -> String {
    let lines: Vec<String> = members
        .iter()
        .map(|m| {
            format!(
                "{:x} name={:?} peers={:?}{}",
                m.id,
                m.name,
                m.peer_urls,
                if m.is_learner { " learner" } else { "" }
            )
        })
        .collect();
    lines.join("; ")
}
