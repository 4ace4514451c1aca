//! The deployment flow's first and last phases around its middle: `flint-boot prepare` writes the
//! four nodes' folders from one inventory (node01–03 the initial members, node04 joining); the
//! cluster runs from those folders only — real etcd with the prepared certificates, the chainfire,
//! flaredb and IAM test servers each node with its own — flint joins every node with the
//! prepared configs, and `flint health --write-check` validates the cluster as the flow does. Then
//! a member that does not replicate, an extra member and a stopped leader: each found and named.
//! Every node's first-boot steps are reported to a real `flint-boot serve --reports` running
//! with the prepared boot-server folder, whose fleet view must show each node joined and healthy.
mod common;

use common::{
    EtcdProcess, FlintOutput, FlintProcess, Lab, ServerOptions, TestServer, flint_command,
    read_env_file, run_bounded, wait_until,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NODES: usize = 4;
const INITIAL: usize = 3;
/// The inventory's default ports (flint-ipxe's `Ports`): etcd beside the others on each host.
const ETCD_CLIENT: u16 = 2579;
const ETCD_PEER: u16 = 2580;
const CHAINFIRE: u16 = 2379;
const FLAREDB: u16 = 2479;
const RUN: Duration = Duration::from_secs(60);

fn flint_boot_binary() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_flint")).with_file_name("flint-boot")
}

/// Four nodes on the lab's addresses (node01–03 initial), each running the four services.
fn inventory(lab: &Lab) -> Value {
    let nodes: Vec<Value> = (0..NODES)
        .map(|i| {
            json!({"name": Lab::node_name(i), "mac": format!("52:54:00:00:00:{:02x}", i + 1),
                   "profile": "cp", "raft_addr": format!("{}:2380", lab.ip(i)),
                   "initial": i < INITIAL})
        })
        .collect();
    json!({
        "profiles": {"cp": {"kernel": "cp/vmlinuz"}},
        "nodes": nodes,
        "cluster": {"services": ["etcd", "chainfire", "flaredb", "iam"], "expected_members": 4,
                    "iam": {"org": "acme", "admin": "admin"},
                    "report_url": format!("https://{}/api/reports", reports_addr(lab))}
    })
}

/// The boot server, on a lab address of its own.
fn boot_server_ip(lab: &Lab) -> std::net::Ipv4Addr {
    lab.ip(NODES + 2)
}

fn reports_addr(lab: &Lab) -> String {
    format!("{}:8443", boot_server_ip(lab))
}

/// `flint-boot serve` with the prepared boot-server folder, as an operator runs it: the
/// inventory the configs came from, and the report listener. Killed by PID when dropped.
struct BootServer {
    child: std::process::Child,
    http: String,
}

impl BootServer {
    fn start(lab: &Lab, prepared: &Prepared) -> BootServer {
        let images = lab.path().join("images");
        std::fs::create_dir_all(&images).expect("an images folder");
        let tls = |file: &str| prepared.out.join("boot-server").join(file);
        let http = format!("{}:8080", boot_server_ip(lab));
        let log = std::fs::File::create(lab.path().join("flint-boot.log")).expect("a log file");
        let child = Command::new(flint_boot_binary())
            .arg("serve")
            .args(["--http", &http])
            .arg("--inventory")
            .arg(lab.path().join("inventory.json"))
            .arg("--images")
            .arg(&images)
            .args(["--reports", &reports_addr(lab)])
            .arg("--tls-ca")
            .arg(tls("ca.pem"))
            .arg("--tls-cert")
            .arg(tls("boot-server.pem"))
            .arg("--tls-key")
            .arg(tls("boot-server-key.pem"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start flint-boot serve");
        let server = BootServer {
            child,
            http: format!("http://{http}"),
        };
        wait_until("flint-boot to answer", Duration::from_secs(20), || {
            server.get_json("/api/machines")
        });
        server
    }

    /// A GET with curl, a client flint did not write.
    fn get_json(&self, path: &str) -> Option<Value> {
        let out = run_bounded(
            Command::new("curl").args(["-sf", "--max-time", "5", &format!("{}{path}", self.http)]),
            Duration::from_secs(10),
        );
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }
}

impl Drop for BootServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The prepared folders, and each node's state directory.
struct Prepared {
    out: PathBuf,
    state: PathBuf,
}

impl Prepared {
    fn node(&self, i: usize) -> PathBuf {
        self.out.join("nodes").join(Lab::node_name(i))
    }

    fn cluster(&self, file: &str) -> PathBuf {
        self.out.join("cluster").join(file)
    }

    fn state(&self, i: usize) -> PathBuf {
        self.state.join(Lab::node_name(i))
    }

    /// flint as node `i`'s units run it: its prepared config, its own state directory.
    fn flint(&self, i: usize, args: &[&str]) -> Command {
        let mut command = flint_command();
        command
            .arg("--config")
            .arg(self.node(i).join("cluster-config.json"))
            .arg("--state-dir")
            .arg(self.state(i))
            .args(args);
        command
    }

    fn run(&self, i: usize, args: &[&str]) -> FlintOutput {
        FlintProcess::spawn(self.flint(i, args)).wait(RUN)
    }

    /// Each listener's certificate and key: node `k`'s own server certificate.
    fn identities(&self) -> Vec<(PathBuf, PathBuf)> {
        (0..NODES)
            .map(|k| {
                (
                    self.node(k).join("server.pem"),
                    self.node(k).join("server-key.pem"),
                )
            })
            .collect()
    }

    fn server_options(&self, token: &str) -> ServerOptions {
        ServerOptions {
            token_file: Some(self.cluster(token)),
            client_ca: Some(self.cluster("ca.pem")),
            identities: self.identities(),
            ..ServerOptions::default()
        }
    }

    /// etcd as etcd.service runs it on node `i`: the environment file flint wrote, the node's
    /// addresses and its prepared certificates (server.pem on the client side, etcd-peer.pem on
    /// the peer side, the cluster CA on both, client certificates required).
    fn start_etcd(&self, lab: &Lab, i: usize) -> EtcdProcess {
        let ip = lab.ip(i);
        let dir = self.node(i);
        let env = read_env_file(&self.state(i).join("etcd.env"));
        let file = |name: &str| dir.join(name).display().to_string();
        let mut command = Command::new("etcd");
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .arg(format!(
                "--data-dir={}",
                lab.path()
                    .join(format!("{}.etcd", Lab::node_name(i)))
                    .display()
            ))
            .arg(format!("--listen-client-urls=https://{ip}:{ETCD_CLIENT}"))
            .arg(format!(
                "--advertise-client-urls=https://{ip}:{ETCD_CLIENT}"
            ))
            .arg(format!("--listen-peer-urls=https://{ip}:{ETCD_PEER}"))
            .arg(format!("--cert-file={}", file("server.pem")))
            .arg(format!("--key-file={}", file("server-key.pem")))
            .arg(format!("--trusted-ca-file={}", file("ca.pem")))
            .arg("--client-cert-auth")
            .arg(format!("--peer-cert-file={}", file("etcd-peer.pem")))
            .arg(format!("--peer-key-file={}", file("etcd-peer-key.pem")))
            .arg(format!("--peer-trusted-ca-file={}", file("ca.pem")))
            .arg("--peer-client-cert-auth");
        EtcdProcess::spawn(
            &Lab::node_name(i),
            format!("https://{ip}:{ETCD_CLIENT}"),
            command,
            lab.path().join(format!("{}-etcd.log", Lab::node_name(i))),
        )
    }

    /// etcdctl from outside, with node04's client certificate.
    fn etcdctl(&self, lab: &Lab, args: &[&str]) -> String {
        let dir = self.node(3);
        let endpoints: Vec<String> = (0..NODES)
            .map(|i| format!("https://{}:{ETCD_CLIENT}", lab.ip(i)))
            .collect();
        let mut command = Command::new("etcdctl");
        command
            .env_clear()
            .env("ETCDCTL_API", "3")
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", dir.join("ca.pem").display()))
            .arg(format!("--cert={}", dir.join("node.pem").display()))
            .arg(format!("--key={}", dir.join("node-key.pem").display()))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args);
        let out = run_bounded(&mut command, Duration::from_secs(20));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn prepare(lab: &Lab) -> Prepared {
    let inventory = lab.path().join("inventory.json");
    std::fs::write(&inventory, inventory_text(lab)).expect("write the inventory");
    let out = lab.path().join("prepared");
    let mut command = Command::new(flint_boot_binary());
    command
        .arg("prepare")
        .arg("--inventory")
        .arg(&inventory)
        .arg(&out);
    let result = run_bounded(&mut command, Duration::from_secs(30));
    assert!(
        result.status.success(),
        "flint-boot prepare: {}\n{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    Prepared {
        out,
        state: lab.path().join("state"),
    }
}

fn inventory_text(lab: &Lab) -> String {
    inventory(lab).to_string()
}

fn health(prepared: &Prepared, i: usize) -> (FlintOutput, Value) {
    let out = prepared.run(i, &["health", "--json", "--write-check"]);
    let json = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("health --json printed no JSON ({e}): {}", out.describe()));
    (out, json)
}

fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == name))
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

/// What the deployment flow's validation expects of a cluster service: 4 members, one leader, all
/// healthy, and the write read back from each of them.
#[track_caller]
fn assert_validated(report: &Value, name: &str) {
    let s = service(report, name);
    assert_eq!(s["healthy"], true, "{name}: {s:#}");
    assert_eq!(s["expected_members"], 4, "{name}: {s:#}");
    let members = s["members"].as_array().expect("members");
    assert_eq!(members.len(), 4, "{name}: {s:#}");
    assert!(
        members.iter().all(|m| m["healthy"] == true),
        "{name}: {s:#}"
    );
    let leaders = members.iter().filter(|m| m["role"] == "leader").count();
    assert_eq!(leaders, 1, "{name}: {s:#}");
    let check = &s["write_check"];
    assert_eq!(check["written"], true, "{name}: {s:#}");
    let seen = check["members"]
        .as_array()
        .expect("read-backs")
        .iter()
        .filter(|m| m["seen"] == true)
        .count();
    assert_eq!(
        seen, 4,
        "{name}: the write read back from every member: {s:#}"
    );
}

#[test]
fn prepared_folders_bring_up_a_four_node_cluster_and_validation_names_each_fault() {
    let lab = Lab::new();
    let prepared = prepare(&lab);
    let boot = BootServer::start(&lab, &prepared);

    // chainfire, flaredb and IAM: each listener with its node's prepared certificate, client
    // certificates from the prepared CA required, the prepared tokens.
    let chainfire = TestServer::cluster(
        &lab,
        CHAINFIRE,
        NODES,
        INITIAL,
        prepared.server_options("join-token"),
    );
    let flaredb = TestServer::cluster(
        &lab,
        FLAREDB,
        NODES,
        INITIAL,
        prepared.server_options("join-token"),
    );
    let _iam = TestServer::iam_with(&lab, NODES, prepared.server_options("iam-bootstrap-token"));

    // etcd's initial members: flint writes each one's environment file (state new), etcd starts
    // from it, and flint's promote phase waits for the cluster they form.
    let mut etcd: Vec<Option<EtcdProcess>> = Vec::new();
    for i in 0..INITIAL {
        prepared
            .run(i, &["join", "etcd", "--phase", "add"])
            .assert_code(0, &format!("{}: join etcd --phase add", Lab::node_name(i)));
        etcd.push(Some(prepared.start_etcd(&lab, i)));
    }
    let promotes: Vec<FlintProcess> = (0..INITIAL)
        .map(|i| FlintProcess::spawn(prepared.flint(i, &["join", "etcd", "--phase", "promote"])))
        .collect();
    for (i, mut run) in promotes.into_iter().enumerate() {
        run.wait(RUN).assert_code(
            0,
            &format!("{}: join etcd --phase promote", Lab::node_name(i)),
        );
    }

    // The first-boot chain of every node, node04 last: it joins all four services.
    for i in 0..NODES {
        let node = Lab::node_name(i);
        for step in [
            &["join", "chainfire"][..],
            &["join", "flaredb"],
            &["iam-setup"],
        ] {
            prepared
                .run(i, step)
                .assert_code(0, &format!("{node}: {}", step.join(" ")));
        }
    }
    prepared
        .run(3, &["join", "etcd", "--phase", "add"])
        .assert_code(0, "node04: join etcd --phase add");
    etcd.push(Some(prepared.start_etcd(&lab, 3)));
    prepared
        .run(3, &["join", "etcd", "--phase", "promote"])
        .assert_code(0, "node04: join etcd --phase promote");
    let members = prepared.etcdctl(&lab, &["member", "list"]);
    assert_eq!(
        members
            .lines()
            .filter(|l| l.contains(", started, "))
            .count(),
        4,
        "etcdctl sees 4 started members: {members}"
    );
    assert!(!members.contains("true"), "no learner is left: {members}");

    // The first-boot check on every node, as cluster-health-check runs it; then the boot
    // server, which heard every step from the nodes' certificates, shows each one healthy.
    for i in 0..NODES {
        prepared
            .run(i, &["health", "--wait"])
            .assert_code(0, &format!("{}: health --wait", Lab::node_name(i)));
    }
    let fleet = boot.get_json("/api/machines").expect("the fleet view");
    for i in 0..NODES {
        let name = Lab::node_name(i);
        let machine = fleet["machines"]
            .as_array()
            .and_then(|all| all.iter().find(|m| m["name"] == name.as_str()))
            .unwrap_or_else(|| panic!("{name} is not in the fleet view: {fleet:#}"));
        assert_eq!(machine["phase"], "healthy", "{name}: {machine:#}");
        assert_eq!(machine["failed"], false, "{name}: {machine:#}");
        assert_eq!(
            machine["joined"],
            json!(["chainfire", "etcd", "flaredb", "iam"]),
            "{name}: {machine:#}"
        );
        let reported: Vec<&str> = machine["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .filter(|s| s["step"] == "report")
            .filter_map(|s| s["detail"].as_str())
            .collect();
        assert!(
            reported.iter().any(|d| d.starts_with("etcd promote: ok")),
            "{name}: {reported:?}"
        );
    }
    assert_eq!(fleet["counts"]["healthy"], NODES, "{fleet:#}");

    // Validation, from node04 and from node01: 4 members, one leader, healthy, the write read back
    // from every member of every service.
    for i in [3, 0] {
        let (out, report) = health(&prepared, i);
        out.assert_code(
            0,
            &format!("{}: flint health --write-check", Lab::node_name(i)),
        );
        assert_eq!(report["schema_version"], 1);
        for name in ["etcd", "chainfire", "flaredb"] {
            assert_validated(&report, name);
        }
        assert_eq!(service(&report, "iam")["healthy"], true, "{report:#}");
    }

    // A chainfire member that never replicates: the write is not read back from it, and it is
    // named.
    chainfire.kv_lag("node02", None);
    let (out, report) = health(&prepared, 3);
    out.assert_code(1, "health with a chainfire member that does not replicate");
    let check = &service(&report, "chainfire")["write_check"];
    let unseen: Vec<&Value> = check["members"]
        .as_array()
        .expect("read-backs")
        .iter()
        .filter(|m| m["seen"] != true)
        .collect();
    assert_eq!(unseen.len(), 1, "{check:#}");
    assert_eq!(unseen[0]["name"], "node02", "{check:#}");
    let table = prepared.run(3, &["health", "--write-check"]);
    table.assert_code(1, "the table, same fault");
    assert!(table.stdout.contains("node02"), "{}", table.describe());
    chainfire.kv_lag("node02", Some(0));

    // An extra flaredb member: the count is off and the member is named.
    let extra_addr = format!("{}:2480", lab.ip(NODES));
    flaredb.plant_member("node05", &extra_addr);
    let (out, report) = health(&prepared, 3);
    out.assert_code(1, "health with an extra flaredb member");
    let problems = service(&report, "flaredb")["problems"].to_string();
    assert!(
        problems.contains("1 extra member: 5 listed (") && problems.contains("node05"),
        "{problems}"
    );
    flaredb.remove_member("node05");

    // etcd's leader stopped, the hardest member to lose: the others elect a new leader and keep
    // their quorum, and the validation fails naming the stopped one.
    let (_, before) = health(&prepared, 3);
    let stopped = service(&before, "etcd")["leader"]
        .as_str()
        .unwrap_or_else(|| panic!("etcd has a leader: {before:#}"))
        .to_owned();
    let index = (0..NODES)
        .find(|&i| Lab::node_name(i) == stopped)
        .unwrap_or_else(|| panic!("the leader {stopped:?} is one of the nodes"));
    etcd[index] = None;
    let (out, report) = wait_until("etcd to elect a new leader", RUN, || {
        let (out, report) = health(&prepared, 3);
        let leader = service(&report, "etcd")["leader"]
            .as_str()
            .map(str::to_owned);
        leader
            .is_some_and(|l| l != stopped)
            .then_some((out, report))
    });
    out.assert_code(1, "health with etcd's leader stopped");
    let s = service(&report, "etcd");
    let gone = s["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["name"] == stopped.as_str())
        .unwrap_or_else(|| panic!("{stopped} is still listed: {s:#}"));
    assert_eq!(gone["healthy"], false, "{s:#}");
    let unseen: Vec<&Value> = s["write_check"]["members"]
        .as_array()
        .expect("read-backs")
        .iter()
        .filter(|m| m["seen"] != true)
        .collect();
    assert_eq!(unseen.len(), 1, "{s:#}");
    assert_eq!(unseen[0]["name"], stopped.as_str(), "{s:#}");
    for name in ["chainfire", "flaredb"] {
        assert_validated(&report, name);
    }
}
