//! The chainfire and flaredb clusters and IAM: one flint-testserver process each
//! (docs/test-server.md), in the svc namespace, with node i's listener on `127.77.0.(10+i)` at the
//! service's port, mTLS and the join token (IAM: its bootstrap token). The control API is on the
//! svc namespace's loopback and is called with curl from inside it.
use super::common::{Pki, run_bounded, tail, testserver_binary};
use super::net::{CONTROL_IP, Net, listener_ip, ns_command};
use serde_json::{Value, json};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminService {
    Chainfire,
    Flaredb,
    /// Not a Raft cluster: `iam-setup` bootstraps it once, for every node.
    Iam,
}

impl AdminService {
    pub fn port(self) -> u16 {
        match self {
            AdminService::Chainfire => 2379,
            AdminService::Flaredb => 2479,
            AdminService::Iam => 8080,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AdminService::Chainfire => "chainfire",
            AdminService::Flaredb => "flaredb",
            AdminService::Iam => "iam",
        }
    }

    pub fn marker(self) -> &'static str {
        match self {
            AdminService::Chainfire => ".chainfire-joined",
            AdminService::Flaredb => ".flaredb-joined",
            AdminService::Iam => ".iam-setup-done",
        }
    }

    pub fn url(self, i: usize) -> String {
        format!("https://{}:{}", listener_ip(i), self.port())
    }

    /// Node i's Raft address for this service (as the server lists the initial members).
    pub fn raft_addr(self, i: usize) -> String {
        format!("{}:{}", listener_ip(i), self.port() + 1)
    }
}

pub struct AdminServer {
    pub service: AdminService,
    ns: String,
    child: Option<Child>,
    log: PathBuf,
}

impl AdminServer {
    /// Listeners node01..node`nodes`; for a cluster, the first `initial` members, leader node01.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        net: &Net,
        pki: &Pki,
        dir: &Path,
        service: AdminService,
        nodes: usize,
        initial: usize,
        learner_ms: u64,
        token_file: &Path,
    ) -> AdminServer {
        let ready = dir.join(format!("{}.ready.json", service.name()));
        let log = dir.join(format!("{}-server.log", service.name()));
        let mut command = ns_command(net.svc_ns(), testserver_binary());
        command.env_clear();
        if service == AdminService::Iam {
            command.arg("iam");
        } else {
            command
                .arg("cluster")
                .args(["--initial-members", &initial.to_string()])
                .args(["--learner-ms", &learner_ms.to_string()]);
        }
        command
            .arg("--token-file")
            .arg(token_file)
            .arg("--cert")
            .arg(pki.path("server.pem"))
            .arg("--key")
            .arg(pki.path("server-key.pem"))
            .arg("--client-ca")
            .arg(pki.path("ca.pem"))
            .arg("--control")
            .arg(format!("{CONTROL_IP}:{}", 9000 + service.port() % 1000))
            .arg("--ready-file")
            .arg(&ready);
        for i in 1..=nodes {
            command
                .arg("--listen")
                .arg(format!("{}:{}", listener_ip(i), service.port()));
        }
        let out = File::create(&log).expect("create server log");
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .expect("spawn flint-testserver");
        let mut server = AdminServer {
            service,
            ns: net.svc_ns().to_string(),
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            let exited = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "flint-testserver {} did not start ({exited:?}):\n{}",
                service.name(),
                tail(&server.log, 30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn control(&self) -> String {
        format!("http://{CONTROL_IP}:{}", 9000 + self.service.port() % 1000)
    }

    /// One control-API request, with curl inside the svc namespace: status and JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let mut command = ns_command(&self.ns, "curl");
        command
            .args([
                "-sS",
                "--max-time",
                "5",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
            ])
            .args(["-H", "Content-Type: application/json"]);
        if let Some(body) = body {
            command.arg("--data-binary").arg(body.to_string());
        }
        command.arg(format!("{}{path}", self.control()));
        let out = run_bounded(&mut command, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').ok_or_else(|| {
            format!(
                "{method} {path}: no answer: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let code: u16 = code
            .trim()
            .parse()
            .map_err(|_| format!("{method} {path}: bad status {code:?}"))?;
        let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_string()));
        Ok((code, value))
    }

    pub fn state(&self) -> Result<Value, String> {
        match self.call("GET", "/state", None)? {
            (200, state) => Ok(state),
            (code, body) => Err(format!("GET /state: {code} {body}")),
        }
    }

    /// Arms `fault`; returns its `seq`, the highest of the armed faults the server lists.
    pub fn arm(&self, fault: &Value) -> Result<u64, String> {
        match self.call("POST", "/faults", Some(fault))? {
            (201, body) => seqs(&body)
                .into_iter()
                .max()
                .ok_or_else(|| format!("arming {fault}: no seq in {body}")),
            (code, body) => Err(format!("arming {fault}: {code} {body}")),
        }
    }

    /// The `seq` of every fault still armed (one whose `times` ran out is gone).
    pub fn armed_seqs(&self) -> Result<Vec<u64>, String> {
        match self.call("GET", "/faults", None)? {
            (200, body) => Ok(seqs(&body)),
            (code, body) => Err(format!("GET /faults: {code} {body}")),
        }
    }

    pub fn clear_faults(&self) -> Result<(), String> {
        match self.call("DELETE", "/faults", None)? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("DELETE /faults: {code} {body}")),
        }
    }

    pub fn set_leader(&self, id: &str) -> Result<(), String> {
        match self.call("POST", "/leader", Some(&json!({"id": id})))? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("POST /leader {id}: {code} {body}")),
        }
    }
}

fn seqs(faults: &Value) -> Vec<u64> {
    faults["faults"]
        .as_array()
        .map(|list| list.iter().filter_map(|f| f["seq"].as_u64()).collect())
        .unwrap_or_default()
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
