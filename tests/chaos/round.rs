//! One round: a fresh 3-member etcd cluster and fresh chainfire/flaredb/IAM test servers, four
//! nodes running their first-boot units at once under the plan's faults, everything healed, the
//! units left to finish as systemd would (restarts included), then the invariants.
use super::admin::{AdminServer, AdminService};
use super::common::{Pki, tail, write_private};
use super::etcd::{EtcdMember, Etcdctl, Member, client_url, describe, node_name, peer_url};
use super::net::{Net, Rule, SVC_IP, listener_ip, node_ip, ns_command};
use super::plan::{Fault, INITIAL, JOINERS, NODES, Plan, UnitKind, WINDOW};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the units' `RestartSec=30s` becomes here, so that a round stays short.
const RESTART_SEC: Duration = Duration::from_secs(1);
/// The units' `StartLimitBurst=6`.
const START_LIMIT: u32 = 6;
/// After the heal, how long the units get to finish.
const SETTLE: Duration = Duration::from_secs(120);
/// flint's `timeouts.total` in every node's config.
const FLINT_TOTAL: &str = "60s";
/// The organization and first admin every node's IAM setup asks for.
const IAM_ORG: &str = "chaos";
const IAM_ADMIN: &str = "root";
/// The exit statuses flint documents (src/exit.rs, docs/join-protocol.md).
pub const DOCUMENTED: [i32; 7] = [0, 1, 64, 65, 69, 77, 78];
const PERMANENT: [i32; 4] = [64, 65, 77, 78];

/// What stays the same for every round.
pub struct Campaign {
    pub net: Net,
    pub pki: Pki,
    pub dir: PathBuf,
    pub token_file: PathBuf,
    /// IAM's bootstrap token.
    pub iam_token_file: PathBuf,
    /// The first IAM admin's public key (PEM), as every node configures it.
    pub admin_public_key: String,
    pub etcdctl: Etcdctl,
    pub flint: PathBuf,
}

#[derive(Default, Debug)]
pub struct Outcome {
    pub faults: BTreeMap<String, u32>,
    pub exits: BTreeMap<String, u32>,
    pub violations: Vec<String>,
    pub unfinished: Vec<String>,
    /// Units that ended for good with the status a planned refusal called for.
    pub refused: Vec<String>,
    /// Planned faults that found nothing to hit (the unit had ended, the line never came, the
    /// member was down), by kind.
    pub missed: BTreeMap<String, u32>,
    /// etcd members that exited without being killed (restarted, as Restart=always does).
    pub etcd_exited: u32,
    /// Nodes joined per service.
    pub joined: BTreeMap<&'static str, usize>,
    pub elapsed: Duration,
    pub dir: PathBuf,
}

/// One flint run, with its stderr read by a thread that also fires the step-triggered kills.
struct Run {
    child: Arc<Mutex<Child>>,
    killed: Arc<AtomicBool>,
    log: PathBuf,
}

enum UnitState {
    Waiting,
    Running(Run),
    RestartAt(Instant),
    Done,
    Failed(String),
}

struct Unit {
    state: UnitState,
    starts: u32,
    /// The first run has ended (flaredb's join is ordered after chainfire's, not bound to it).
    first_run_ended: bool,
    /// Runs the chaos killed.
    killed: u32,
}

/// A step-triggered kill waiting for its line.
struct LineKill {
    event: usize,
    node: usize,
    unit: UnitKind,
    line: &'static str,
    after_ms: u64,
}

struct Refusal {
    kind: String,
    service: AdminService,
    exit: i32,
    seq: u64,
    met: bool,
}

/// A fault whose end is scheduled.
enum Ending {
    Rule(u64),
    Listener(u64),
    Delay(usize),
}

struct Round<'a> {
    c: &'a mut Campaign,
    plan: &'a Plan,
    dir: PathBuf,
    t0: Instant,
    out: Outcome,
    units: BTreeMap<(usize, UnitKind), Unit>,
    etcd: BTreeMap<usize, EtcdMember>,
    /// Members killed by a fault, restarted at this time.
    etcd_down: BTreeMap<usize, Instant>,
    admin: BTreeMap<AdminService, AdminServer>,
    endings: Vec<(Instant, Ending)>,
    /// Leadership moves of the "admin leader killed" faults.
    leader_moves: Vec<(Instant, AdminService, String)>,
    line_kills: Vec<LineKill>,
    /// Refusals armed on a server: which, by its `seq` there, and whether a request met it
    /// (known at the heal).
    refusals: Vec<Refusal>,
    fired_tx: Sender<usize>,
    fired_rx: Receiver<usize>,
    armed: Arc<AtomicBool>,
    next_event: usize,
    healed: bool,
    /// For the choices made when a fault fires (which running unit a kill hits).
    rng: fastrand::Rng,
    log: fs::File,
}

pub fn run(c: &mut Campaign, plan: &Plan, index: usize) -> Outcome {
    let dir = c.dir.join(format!("round-{index:03}-seed-{}", plan.seed));
    fs::create_dir_all(&dir).expect("create round dir");
    let log = fs::File::create(dir.join("round.log")).expect("create round log");
    let (fired_tx, fired_rx) = channel();
    let mut round = Round {
        c,
        plan,
        dir: dir.clone(),
        t0: Instant::now(),
        out: Outcome {
            dir,
            ..Outcome::default()
        },
        units: BTreeMap::new(),
        etcd: BTreeMap::new(),
        etcd_down: BTreeMap::new(),
        admin: BTreeMap::new(),
        endings: Vec::new(),
        leader_moves: Vec::new(),
        line_kills: Vec::new(),
        refusals: Vec::new(),
        fired_tx,
        fired_rx,
        armed: Arc::new(AtomicBool::new(true)),
        next_event: 0,
        healed: false,
        rng: fastrand::Rng::with_seed(plan.seed ^ 0x9E37_79B9_7F4A_7C15),
        log,
    };
    let started = Instant::now();
    round.setup();
    round.drive();
    round.check();
    round.teardown();
    round.out.elapsed = started.elapsed();
    round.out
}

impl Round<'_> {
    fn note(&mut self, text: &str) {
        let t = self.t0.elapsed().as_secs_f64();
        let _ = writeln!(self.log, "[{t:8.3}] {text}");
    }

    fn count_fault(&mut self, fault: &Fault) {
        *self.out.faults.entry(fault.kind()).or_default() += 1;
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(node_name(i))
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("state")
    }

    // ---------------------------------------------------------------- setup

    fn setup(&mut self) {
        self.c.net.heal();
        let delays = self.plan.delays.clone();
        let mut all = delays.clone();
        all.push(0); // the observer
        self.c.net.set_base_delays(&all);
        let delayed = delays.iter().filter(|d| **d > 0).count() as u32;
        if delayed > 0 {
            *self.out.faults.entry("link delay".into()).or_default() += delayed;
        }

        let token = format!("flint-chaos-{}", self.plan.seed);
        for i in 1..=INITIAL {
            let mut member =
                EtcdMember::initial(&self.c.net, &self.c.pki, &self.dir, i, INITIAL, &token);
            member.start();
            self.etcd.insert(i, member);
        }
        for service in [
            AdminService::Chainfire,
            AdminService::Flaredb,
            AdminService::Iam,
        ] {
            let token_file = if service == AdminService::Iam {
                &self.c.iam_token_file
            } else {
                &self.c.token_file
            };
            let server = AdminServer::start(
                &self.c.net,
                &self.c.pki,
                &self.dir,
                service,
                NODES,
                INITIAL,
                self.plan.learner_ms,
                token_file,
            );
            self.admin.insert(service, server);
        }
        for i in JOINERS {
            self.write_node(i);
        }
        self.wait_etcd_healthy();
        for (index, event) in self.plan.events.iter().enumerate() {
            if let Fault::KillFlint {
                node,
                unit: Some(unit),
                line: Some(line),
                after_ms,
            } = event.fault
            {
                self.line_kills.push(LineKill {
                    event: index,
                    node,
                    unit,
                    line,
                    after_ms,
                });
            }
        }
        for i in JOINERS {
            for kind in UnitKind::ALL {
                self.units.insert(
                    (i, kind),
                    Unit {
                        state: UnitState::Waiting,
                        starts: 0,
                        first_run_ended: false,
                        killed: 0,
                    },
                );
            }
        }
        self.t0 = Instant::now();
        self.note("joins start");
    }

    fn wait_etcd_healthy(&mut self) {
        let endpoints: Vec<String> = (1..=INITIAL).map(client_url).collect();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let statuses = self.c.etcdctl.statuses(&endpoints);
            if statuses.len() == INITIAL
                && statuses.iter().all(|s| s.2 != 0 && s.2 == statuses[0].2)
            {
                return;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .etcd
                    .values()
                    .map(|m| format!("{}:\n{}", m.log().display(), tail(m.log(), 15)))
                    .collect();
                panic!(
                    "the initial etcd members did not elect a leader: {statuses:?}\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Node i's config folder: the config, the CA, the client certificate and key, the token.
    fn write_node(&self, i: usize) {
        let dir = self.node_dir(i);
        fs::create_dir_all(dir.join("state")).expect("create node dir");
        for file in ["ca.pem", "client.pem"] {
            fs::copy(self.c.pki.path(file), dir.join(file)).expect("copy certificate");
        }
        let key = fs::read_to_string(self.c.pki.path("client-key.pem")).expect("read key");
        write_private(&dir.join("client-key.pem"), &key);
        let token = fs::read_to_string(&self.c.token_file).expect("read token");
        write_private(&dir.join("join-token"), &token);
        let iam_token = fs::read_to_string(&self.c.iam_token_file).expect("read IAM token");
        write_private(&dir.join("iam-token"), &iam_token);
        fs::write(dir.join("admin.pub.pem"), &self.c.admin_public_key).expect("write admin key");
        let ip = node_ip(i);
        let total = match self.plan.short_deadline {
            Some(short) if short.node == i => format!("{}ms", short.total.as_millis()),
            _ => FLINT_TOTAL.to_string(),
        };
        let admin = |s: AdminService| {
            json!({
                "leader_url": s.url(1),
                "peers": (2..=INITIAL).map(|k| s.url(k)).collect::<Vec<_>>(),
                "raft_addr": s.raft_addr(i),
                "local_url": s.url(i),
            })
        };
        let config = json!({
            "node_id": node_name(i),
            "leader_url": client_url(1),
            "peers": (2..=INITIAL).map(client_url).collect::<Vec<_>>(),
            "raft_addr": format!("{ip}:2380"),
            "tls": {"ca": "ca.pem", "cert": "client.pem", "key": "client-key.pem"},
            "join_token_file": "join-token",
            "timeouts": {"total": total, "request": "5s", "connect": "2s"},
            "etcd": {"peer_url": peer_url(i), "local_url": client_url(i)},
            "chainfire": admin(AdminService::Chainfire),
            "flaredb": admin(AdminService::Flaredb),
            "iam": {
                "url": AdminService::Iam.url(i),
                "org": IAM_ORG,
                "admin": {"name": IAM_ADMIN, "public_key_file": "admin.pub.pem"},
                "bootstrap_token_file": "iam-token",
            },
        });
        fs::write(
            dir.join("cluster-config.json"),
            serde_json::to_string_pretty(&config).expect("serialize config"),
        )
        .expect("write config");
    }

    // ---------------------------------------------------------------- the units

    fn spawn_flint(&mut self, i: usize, kind: UnitKind) -> Run {
        let unit = &self.units[&(i, kind)];
        let log = self
            .node_dir(i)
            .join(format!("{}-{}.log", kind.name(), unit.starts + 1));
        let out = fs::File::create(&log).expect("create flint log");
        let mut child = ns_command(self.c.net.node_ns(i), &self.c.flint)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(self.node_dir(i).join("cluster-config.json"))
            .arg("--state-dir")
            .arg(self.state_dir(i))
            .args(kind.args())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flint");
        let stderr = child.stderr.take().expect("piped stderr");
        let child = Arc::new(Mutex::new(child));
        let killed = Arc::new(AtomicBool::new(false));
        let triggers: Vec<(usize, &'static str, u64)> = self
            .line_kills
            .iter()
            .filter(|k| k.node == i && k.unit == kind)
            .map(|k| (k.event, k.line, k.after_ms))
            .collect();
        {
            let child = Arc::clone(&child);
            let killed = Arc::clone(&killed);
            let armed = Arc::clone(&self.armed);
            let fired = self.fired_tx.clone();
            let t0 = self.t0;
            let mut out = out;
            std::thread::spawn(move || {
                let mut pending = triggers;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(out, "[{:8.3}] {line}", t0.elapsed().as_secs_f64());
                    let Some(pos) = pending.iter().position(|(_, l, _)| line.contains(l)) else {
                        continue;
                    };
                    let (event, _, after_ms) = pending.remove(pos);
                    if after_ms > 0 {
                        std::thread::sleep(Duration::from_millis(after_ms));
                    }
                    let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
                    if armed.load(Ordering::SeqCst) && matches!(child.try_wait(), Ok(None)) {
                        killed.store(true, Ordering::SeqCst);
                        let _ = child.kill();
                        let _ = writeln!(
                            out,
                            "[{:8.3}] CHAOS: SIGKILL ({after_ms} ms after this line)",
                            t0.elapsed().as_secs_f64()
                        );
                        let _ = fired.send(event);
                    }
                }
            });
        }
        Run { child, killed, log }
    }

    /// Starts a unit unless its marker exists (`ConditionPathExists=!`: then it is done).
    fn start_unit(&mut self, i: usize, kind: UnitKind) {
        if self.state_dir(i).join(kind.marker()).exists() {
            self.note(&format!(
                "node{i:02} {}: marker exists, skipped",
                kind.name()
            ));
            self.units.get_mut(&(i, kind)).expect("unit").state = UnitState::Done;
            return;
        }
        let run = self.spawn_flint(i, kind);
        let unit = self.units.get_mut(&(i, kind)).expect("unit");
        unit.starts += 1;
        unit.state = UnitState::Running(run);
        let starts = unit.starts;
        self.note(&format!("node{i:02} {}: start #{starts}", kind.name()));
    }

    fn ready(&mut self, i: usize, kind: UnitKind) -> bool {
        match kind {
            UnitKind::EtcdAdd | UnitKind::Chainfire => true,
            UnitKind::Flaredb => self.units[&(i, UnitKind::Chainfire)].first_run_ended,
            UnitKind::Iam => self.units[&(i, UnitKind::Flaredb)].first_run_ended,
            // Requires=etcd.service, After=etcd.service.
            UnitKind::EtcdPromote => self.etcd.get_mut(&i).is_some_and(|m| m.starts > 0),
        }
    }

    fn poll_units(&mut self) {
        let keys: Vec<(usize, UnitKind)> = self.units.keys().copied().collect();
        for (i, kind) in keys {
            let now = Instant::now();
            let unit = self.units.get_mut(&(i, kind)).expect("unit");
            match &mut unit.state {
                UnitState::Waiting => {
                    if self.ready(i, kind) {
                        self.start_unit(i, kind);
                    }
                }
                UnitState::RestartAt(at) => {
                    if now >= *at {
                        self.start_unit(i, kind);
                    }
                }
                UnitState::Running(run) => {
                    let status = {
                        let mut child = run.child.lock().unwrap_or_else(|e| e.into_inner());
                        child.try_wait().expect("poll flint")
                    };
                    let Some(status) = status else { continue };
                    let killed = run.killed.load(Ordering::SeqCst);
                    let log = run.log.clone();
                    unit.first_run_ended = true;
                    let starts = unit.starts;
                    let (label, next) = match (status.code(), killed) {
                        // A run that exited on its own just before the kill keeps its status.
                        (None, true) => {
                            unit.killed += 1;
                            ("killed by chaos".to_string(), Next::Restart)
                        }
                        (Some(0), _) => ("0".to_string(), Next::Done),
                        (Some(code), _) if PERMANENT.contains(&code) => {
                            (code.to_string(), Next::Fail(format!("exit {code}")))
                        }
                        (Some(code), _) if DOCUMENTED.contains(&code) => {
                            (code.to_string(), Next::Restart)
                        }
                        (code, _) => {
                            let what = match code {
                                Some(code) => format!("exit {code}"),
                                None => format!("{status}"),
                            };
                            let v = format!(
                                "node{i:02} {}: flint ended with {what}, not a documented exit status; log {}:\n{}",
                                kind.name(),
                                log.display(),
                                tail(&log, 20)
                            );
                            self.out.violations.push(v);
                            (format!("undocumented: {what}"), Next::Fail(what))
                        }
                    };
                    *self.out.exits.entry(label.clone()).or_default() += 1;
                    let unit = self.units.get_mut(&(i, kind)).expect("unit");
                    unit.state = match next {
                        Next::Done => UnitState::Done,
                        Next::Fail(why) => UnitState::Failed(why),
                        Next::Restart if starts >= START_LIMIT => {
                            UnitState::Failed(format!("start limit ({START_LIMIT} starts)"))
                        }
                        Next::Restart => UnitState::RestartAt(now + RESTART_SEC),
                    };
                    self.note(&format!("node{i:02} {}: ended, {label}", kind.name()));
                }
                UnitState::Done | UnitState::Failed(_) => {}
            }
        }
    }

    /// The joining nodes' etcd.service: started once the add phase wrote the environment file
    /// (`EnvironmentFile=`), restarted after a kill when the fault says so.
    fn poll_etcd_services(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = self
            .etcd_down
            .iter()
            .filter(|(_, at)| now >= **at)
            .map(|(i, _)| *i)
            .collect();
        for i in due {
            self.etcd_down.remove(&i);
            if let Some(member) = self.etcd.get_mut(&i) {
                member.start();
                self.note(&format!("node{i:02} etcd restarted"));
            }
        }
        // etcd.service has Restart=always: a member that exited on its own (not killed by a
        // fault) is started again. It should not happen, so it is counted and logged.
        let exited: Vec<usize> = self
            .etcd
            .iter_mut()
            .filter_map(|(i, m)| (!m.running()).then_some(*i))
            .filter(|i| !self.etcd_down.contains_key(i))
            .collect();
        for i in exited {
            let log = self.etcd[&i].log().to_path_buf();
            self.note(&format!(
                "node{i:02} etcd exited by itself; restarting it. Its log:\n{}",
                tail(&log, 10)
            ));
            self.out.etcd_exited += 1;
            self.etcd_down.insert(i, now + RESTART_SEC);
        }
        for i in JOINERS {
            if self.etcd.contains_key(&i) {
                continue;
            }
            let add_done = matches!(self.units[&(i, UnitKind::EtcdAdd)].state, UnitState::Done);
            let env = self.state_dir(i).join("etcd.env");
            if add_done && env.exists() {
                let mut member = EtcdMember::joining(&self.c.net, &self.c.pki, &self.dir, i, &env);
                member.start();
                self.etcd.insert(i, member);
                self.note(&format!("node{i:02} etcd started from {}", env.display()));
            }
        }
    }

    fn final_state(&self, i: usize, kind: UnitKind) -> bool {
        match &self.units[&(i, kind)].state {
            UnitState::Done | UnitState::Failed(_) => true,
            // Its etcd never starts when the add phase failed for good.
            UnitState::Waiting if kind == UnitKind::EtcdPromote => {
                matches!(
                    self.units[&(i, UnitKind::EtcdAdd)].state,
                    UnitState::Failed(_)
                )
            }
            _ => false,
        }
    }

    fn all_final(&self) -> bool {
        self.units
            .keys()
            .all(|(i, kind)| self.final_state(*i, *kind))
    }

    // ---------------------------------------------------------------- faults

    fn endpoint_addrs(&self, k: usize) -> Vec<Ipv4Addr> {
        if k == 0 {
            let mut addrs = vec![SVC_IP];
            addrs.extend((1..=NODES).map(listener_ip));
            addrs
        } else {
            vec![node_ip(k)]
        }
    }

    fn fire_due_events(&mut self) {
        let t = self.t0.elapsed();
        while self.next_event < self.plan.events.len() && self.plan.events[self.next_event].at <= t
        {
            let event = self.plan.events[self.next_event].clone();
            self.next_event += 1;
            self.inject(&event.fault);
        }
        while let Ok(index) = self.fired_rx.try_recv() {
            // Once: the runs started from now on do not watch for it.
            self.line_kills.retain(|k| k.event != index);
            let fault = self.plan.events[index].fault.clone();
            self.count_fault(&fault);
            self.note(&format!("injected: {fault}"));
        }
    }

    fn inject(&mut self, fault: &Fault) {
        let now = Instant::now();
        let done = match fault {
            // Watched by the runs' stderr readers.
            Fault::KillFlint { line: Some(_), .. } => return,
            Fault::KillFlint { node, .. } => {
                // The planned node's running units; when it has none, any node's.
                let running_on = |units: &BTreeMap<(usize, UnitKind), Unit>,
                                  only: Option<usize>| {
                    units
                        .iter()
                        .filter(|((i, _), u)| {
                            only.is_none_or(|n| n == *i) && matches!(u.state, UnitState::Running(_))
                        })
                        .map(|(key, _)| *key)
                        .collect::<Vec<_>>()
                };
                let mut running = running_on(&self.units, Some(*node));
                if running.is_empty() {
                    running = running_on(&self.units, None);
                }
                let pick = (!running.is_empty()).then(|| running[self.rng.usize(..running.len())]);
                match pick {
                    Some((i, kind)) => {
                        let mut hit = false;
                        if let UnitState::Running(run) = &self.units[&(i, kind)].state {
                            let mut child = run.child.lock().unwrap_or_else(|e| e.into_inner());
                            if matches!(child.try_wait(), Ok(None)) {
                                run.killed.store(true, Ordering::SeqCst);
                                hit = child.kill().is_ok();
                            }
                        }
                        hit.then(|| format!("SIGKILL node{i:02} {}", kind.name()))
                    }
                    None => None,
                }
            }
            Fault::KillEtcdLeader { down } => match self.etcd_leader() {
                Some(i) => {
                    self.etcd.get_mut(&i).expect("member").kill();
                    self.etcd_down.insert(i, now + *down);
                    Some(format!("SIGKILL etcd of node{i:02} (the leader)"))
                }
                None => None,
            },
            Fault::KillEtcdMember { node, down } => {
                let running = self.etcd.get_mut(node).is_some_and(|m| m.running());
                if running && !self.etcd_down.contains_key(node) {
                    self.etcd.get_mut(node).expect("member").kill();
                    self.etcd_down.insert(*node, now + *down);
                    Some(format!("SIGKILL etcd of node{node:02}"))
                } else {
                    None
                }
            }
            Fault::Isolate { endpoint, dur } => {
                let h = self
                    .c
                    .net
                    .add_rule(Rule::Isolate(self.endpoint_addrs(*endpoint)));
                self.endings.push((now + *dur, Ending::Rule(h)));
                Some(String::new())
            }
            Fault::Cut { a, b, dur } => {
                let h = self
                    .c
                    .net
                    .add_rule(Rule::Cut(self.endpoint_addrs(*a), self.endpoint_addrs(*b)));
                self.endings.push((now + *dur, Ending::Rule(h)));
                Some(String::new())
            }
            Fault::Loss { endpoint, pct, dur } => {
                let h = self
                    .c
                    .net
                    .add_rule(Rule::Loss(self.endpoint_addrs(*endpoint), *pct));
                self.endings.push((now + *dur, Ending::Rule(h)));
                Some(String::new())
            }
            Fault::DelaySpike { endpoint, ms, dur } => {
                self.c.net.set_delay(*endpoint, *ms);
                self.endings.push((now + *dur, Ending::Delay(*endpoint)));
                Some(String::new())
            }
            Fault::AdminLeaderDown { service, dur } => {
                let server = &self.admin[service];
                match server.state() {
                    Ok(state) => {
                        let leader = state["leader"].as_str().unwrap_or_default().to_string();
                        let index = leader
                            .strip_prefix("node")
                            .and_then(|n| n.parse::<usize>().ok())
                            .unwrap_or(1);
                        let h = self.c.net.kill_listener(listener_ip(index), service.port());
                        self.endings.push((now + *dur, Ending::Listener(h)));
                        // The next initial member takes over after an election.
                        let next = (1..=INITIAL)
                            .map(|k| (index + k - 1) % INITIAL + 1)
                            .find(|k| *k != index)
                            .unwrap_or(1);
                        self.leader_moves.push((
                            now + Duration::from_millis(300),
                            *service,
                            node_name(next),
                        ));
                        Some(format!(
                            "{leader}'s listener refuses; {} leads next",
                            node_name(next)
                        ))
                    }
                    Err(e) => {
                        self.note(&format!("admin leader down: no state: {e}"));
                        None
                    }
                }
            }
            Fault::ServerMisbehaves { service, fault, .. } => {
                match self.admin[service].arm(fault) {
                    Ok(_) => Some(String::new()),
                    Err(e) => {
                        self.out
                            .violations
                            .push(format!("the test server refused a fault: {e}"));
                        None
                    }
                }
            }
            Fault::ServerRefuses {
                service,
                fault: answer,
                exit,
                ..
            } => match self.admin[service].arm(answer) {
                Ok(seq) => {
                    // Counted at the heal, injected if a request met it, else missed.
                    self.refusals.push(Refusal {
                        kind: fault.kind(),
                        service: *service,
                        exit: *exit,
                        seq,
                        met: false,
                    });
                    self.note(&format!("armed: {fault} (seq {seq})"));
                    return;
                }
                Err(e) => {
                    self.out
                        .violations
                        .push(format!("the test server refused a fault: {e}"));
                    None
                }
            },
        };
        match done {
            Some(detail) => {
                self.count_fault(fault);
                self.note(&format!("injected: {fault} {detail}"));
            }
            None => {
                *self.out.missed.entry(fault.kind()).or_default() += 1;
                self.note(&format!("skipped (nothing to hit): {fault}"));
            }
        }
    }

    /// The node whose etcd the running members follow.
    fn etcd_leader(&mut self) -> Option<usize> {
        let running: Vec<usize> = self
            .etcd
            .iter_mut()
            .filter_map(|(i, m)| m.running().then_some(*i))
            .collect();
        let endpoints: Vec<String> = running.iter().map(|i| client_url(*i)).collect();
        let statuses = self.c.etcdctl.statuses(&endpoints);
        let leader = statuses.iter().find(|s| s.2 != 0)?.2;
        let (endpoint, _, _) = statuses.iter().find(|s| s.1 == leader)?;
        running.into_iter().find(|i| client_url(*i) == *endpoint)
    }

    fn end_faults(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.endings.drain(..).partition(|(at, _)| now >= *at);
        self.endings = later;
        for (_, ending) in due {
            match ending {
                Ending::Rule(h) => self.c.net.remove_rule(h),
                Ending::Listener(h) => self.c.net.revive_listener(h),
                Ending::Delay(k) => self.c.net.restore_delay(k),
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = self
            .leader_moves
            .drain(..)
            .partition(|(at, _, _)| now >= *at);
        self.leader_moves = later;
        for (_, service, id) in due {
            if let Err(e) = self.admin[&service].set_leader(&id) {
                self.note(&format!("{} leader move to {id}: {e}", service.name()));
            }
        }
    }

    /// Every fault off at once: rules, delays, dead listeners and members, armed server faults.
    fn heal(&mut self) {
        self.healed = true;
        self.armed.store(false, Ordering::SeqCst);
        // A kill that fired just now is counted; the others missed, as did the events not yet
        // due (the units all finished first).
        while let Ok(index) = self.fired_rx.try_recv() {
            self.line_kills.retain(|k| k.event != index);
            let fault = self.plan.events[index].fault.clone();
            self.count_fault(&fault);
        }
        let missed: Vec<String> = self
            .line_kills
            .iter()
            .map(|k| self.plan.events[k.event].fault.kind())
            .chain(
                self.plan.events[self.next_event..]
                    .iter()
                    .filter(|e| !matches!(e.fault, Fault::KillFlint { line: Some(_), .. }))
                    .map(|e| e.fault.kind()),
            )
            .collect();
        for kind in missed {
            *self.out.missed.entry(kind).or_default() += 1;
        }
        self.line_kills.clear();
        self.endings.clear();
        self.c.net.heal();
        for (_, service, id) in std::mem::take(&mut self.leader_moves) {
            let _ = self.admin[&service].set_leader(&id);
        }
        // A refusal catches one request and is then removed: one still armed met nothing.
        for refusal in &mut self.refusals {
            match self.admin[&refusal.service].armed_seqs() {
                Ok(seqs) => refusal.met = !seqs.contains(&refusal.seq),
                Err(e) => self.out.violations.push(format!("listing faults: {e}")),
            }
            let count = if refusal.met {
                &mut self.out.faults
            } else {
                &mut self.out.missed
            };
            *count.entry(refusal.kind.clone()).or_default() += 1;
        }
        for server in self.admin.values() {
            if let Err(e) = server.clear_faults() {
                self.out.violations.push(format!("clearing faults: {e}"));
            }
        }
        let down: Vec<usize> = self.etcd_down.keys().copied().collect();
        for i in down {
            self.etcd_down.remove(&i);
            self.etcd.get_mut(&i).expect("member").start();
        }
        // A member that died on its own (not by a fault) is restarted too: etcd.service has
        // Restart=always. It is noted, since it should not happen.
        let dead: Vec<usize> = self
            .etcd
            .iter_mut()
            .filter_map(|(i, m)| (!m.running()).then_some(*i))
            .collect();
        for i in dead {
            let log = self.etcd[&i].log().to_path_buf();
            self.note(&format!(
                "node{i:02} etcd had exited by itself; restarted. Its log:\n{}",
                tail(&log, 10)
            ));
            self.etcd.get_mut(&i).expect("member").start();
        }
        self.note("healed: every fault off");
    }

    fn drive(&mut self) {
        loop {
            if !self.healed {
                self.fire_due_events();
                self.end_faults();
            }
            self.poll_etcd_services();
            self.poll_units();
            let t = self.t0.elapsed();
            if !self.healed && (t >= WINDOW || self.all_final()) {
                self.heal();
            }
            if self.healed && self.all_final() {
                break;
            }
            if t >= WINDOW + SETTLE {
                self.note("settle time over");
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        // What still runs is killed; the unit is unfinished. A unit that failed (a permanent
        // exit status, or the start limit) did not join either, unless a refusal that met a
        // request called for exactly that status; every other fault here is transient.
        let keys: Vec<(usize, UnitKind)> = self.units.keys().copied().collect();
        for (i, kind) in keys {
            if let UnitState::Failed(why) = &self.units[&(i, kind)].state {
                let text = format!("node{i:02} {} failed: {why}", kind.name());
                let planned = self.refusals.iter().position(|r| {
                    r.met && unit_of(r.service) == kind && *why == format!("exit {}", r.exit)
                });
                match planned {
                    Some(index) => {
                        self.refusals.remove(index);
                        self.out.refused.push(text);
                    }
                    None => self.out.unfinished.push(text),
                }
                continue;
            }
            if self.final_state(i, kind) {
                continue;
            }
            let unit = self.units.get_mut(&(i, kind)).expect("unit");
            let what = match &unit.state {
                UnitState::Running(run) => {
                    let mut child = run.child.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = child.kill();
                    let _ = child.wait();
                    format!("still running (log {})", run.log.display())
                }
                UnitState::RestartAt(_) => "waiting to restart".to_string(),
                UnitState::Waiting => "never started".to_string(),
                _ => unreachable!(),
            };
            let starts = unit.starts;
            self.out.unfinished.push(format!(
                "node{i:02} {} {what} after {starts} starts",
                kind.name()
            ));
        }
        // A refusal that met a request with no unit ending on its status: the run that got it
        // went on as if the answer were transient, unless the chaos killed that run first.
        for refusal in std::mem::take(&mut self.refusals) {
            if !refusal.met {
                continue;
            }
            let kind = unit_of(refusal.service);
            let killed: u32 = JOINERS.map(|i| self.units[&(i, kind)].killed).sum();
            let text = format!(
                "{} refused a request for good (seq {}) but no {} unit ended with {}",
                refusal.service.name(),
                refusal.seq,
                kind.name(),
                refusal.exit
            );
            if killed > 0 {
                self.note(&format!(
                    "{text}; {killed} of its runs were killed by the chaos, one may have had it"
                ));
            } else {
                self.violation(text);
            }
        }
    }

    // ---------------------------------------------------------------- invariants

    fn violation(&mut self, text: String) {
        self.note(&format!("VIOLATION: {text}"));
        self.out.violations.push(text);
    }

    fn unit_finished(&self, i: usize, kinds: &[UnitKind]) -> bool {
        kinds.iter().all(|k| self.final_state(i, *k))
    }

    fn check(&mut self) {
        self.check_etcd();
        for service in [AdminService::Chainfire, AdminService::Flaredb] {
            self.check_admin(service);
        }
        self.check_iam();
    }

    /// IAM is set up at most once, with what the nodes asked for, and a node has its marker
    /// only when it is set up; a unit that ended well left its marker.
    fn check_iam(&mut self) {
        let state = match self.admin[&AdminService::Iam].state() {
            Ok(state) => state["iam"].clone(),
            Err(e) => {
                self.violation(format!("iam: no state: {e}"));
                return;
            }
        };
        let set_up = state["bootstrapped"] == true;
        let key = state["public_key"].as_str().unwrap_or_default().trim();
        if set_up
            && (state["org"] != IAM_ORG
                || state["admin"]["name"] != IAM_ADMIN
                || key != self.c.admin_public_key.trim())
        {
            self.violation(format!(
                "IAM was set up with something no node asked for: {state}"
            ));
        }
        let mut done = 0;
        for i in JOINERS {
            let name = node_name(i);
            let marker = read_marker(&self.state_dir(i).join(UnitKind::Iam.marker()));
            match &marker {
                Some(marker) if !set_up => self.violation(format!(
                    "{name} has an IAM marker ({marker}) but IAM is not set up: {state}"
                )),
                Some(marker) if marker["org"] != IAM_ORG || marker["node_id"] != name.as_str() => {
                    self.violation(format!(
                        "{name}'s IAM marker names another org or node: {marker}"
                    ))
                }
                Some(_) => done += 1,
                None if matches!(self.units[&(i, UnitKind::Iam)].state, UnitState::Done) => self
                    .violation(format!(
                        "{name}'s iam-setup ended well but left no marker ({})",
                        self.unit_states(i)
                    )),
                None => {}
            }
        }
        self.out.joined.insert("iam", done);
    }

    fn check_etcd(&mut self) {
        // Quorum: a majority of the voters answer and agree on a leader that is a voter, and a
        // linearizable write goes through. Elections after the heal get 30 s.
        let all: Vec<String> = (1..=NODES).map(client_url).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        let members = loop {
            let attempt = (|| -> Result<Vec<Member>, String> {
                let members = self.c.etcdctl.member_list(&all)?;
                let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
                let endpoints: Vec<String> = voters
                    .iter()
                    .filter_map(|m| {
                        let i = (1..=NODES).find(|i| m.peer_urls.contains(&peer_url(*i)))?;
                        Some(client_url(i))
                    })
                    .collect();
                let statuses = self.c.etcdctl.statuses(&endpoints);
                let leaders: Vec<u64> = statuses.iter().map(|s| s.2).collect();
                if statuses.len() * 2 <= voters.len() {
                    return Err(format!(
                        "{} of {} voters answer: {statuses:?}",
                        statuses.len(),
                        voters.len()
                    ));
                }
                if leaders.iter().any(|l| *l == 0 || *l != leaders[0])
                    || !voters.iter().any(|v| v.id == leaders[0])
                {
                    return Err(format!("no agreed leader among the voters: {statuses:?}"));
                }
                self.c.etcdctl.put(
                    &endpoints,
                    "/flint-chaos/quorum",
                    &self.plan.seed.to_string(),
                )?;
                Ok(members)
            })();
            match attempt {
                Ok(members) => break Some(members),
                Err(e) if Instant::now() >= deadline => {
                    self.violation(format!("etcd lost its quorum: {e}"));
                    break self.c.etcdctl.member_list(&all).ok();
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        let Some(members) = members else {
            self.violation("etcd: no member list after the round".into());
            return;
        };
        self.note(&format!("etcd members: {}", describe(&members)));
        let mut joined = 0;
        for i in JOINERS {
            let name = node_name(i);
            let ours: Vec<&Member> = members
                .iter()
                .filter(|m| m.peer_urls.contains(&peer_url(i)))
                .collect();
            let named = members.iter().filter(|m| m.name == name).count();
            if ours.len() > 1 || named > 1 {
                self.violation(format!(
                    "etcd lists {} members with {name}'s peer URL and {named} named {name}: {}",
                    ours.len(),
                    describe(&members)
                ));
            }
            let voter = ours.iter().find(|m| !m.is_learner).copied();
            let marker_path = self.state_dir(i).join(".etcd-joined");
            let marker = read_marker(&marker_path);
            let finished = self.unit_finished(i, &[UnitKind::EtcdAdd, UnitKind::EtcdPromote]);
            match (&marker, voter) {
                (Some(marker), Some(voter)) => {
                    joined += 1;
                    let id = marker["member_id"].as_str().unwrap_or_default();
                    if marker["node_id"] != name.as_str()
                        || u64::from_str_radix(id, 16).ok() != Some(voter.id)
                    {
                        self.violation(format!(
                            "{name}'s etcd marker {marker} does not name its member {:x}",
                            voter.id
                        ));
                    }
                }
                (Some(marker), None) => self.violation(format!(
                    "{name} has an etcd marker ({marker}) but is no voting member: {}",
                    describe(&members)
                )),
                (None, Some(voter)) if finished => self.violation(format!(
                    "{name} is voter {:x} but has no etcd marker, and its units are done ({})",
                    voter.id,
                    self.unit_states(i)
                )),
                (None, Some(_)) => {} // unfinished: reported as such
                (None, None) => {}
            }
            if marker.is_none() && ours.iter().any(|m| m.is_learner) && finished {
                self.out.unfinished.push(format!(
                    "{name} left a learner in etcd ({})",
                    self.unit_states(i)
                ));
            }
        }
        self.out.joined.insert("etcd", joined);
    }

    fn check_admin(&mut self, service: AdminService) {
        let state = match self.admin[&service].state() {
            Ok(state) => state,
            Err(e) => {
                self.violation(format!("{}: no state: {e}", service.name()));
                return;
            }
        };
        let members: Vec<Value> = state["members"].as_array().cloned().unwrap_or_default();
        let leader = state["leader"].as_str().unwrap_or_default().to_string();
        if !members
            .iter()
            .any(|m| m["id"] == leader.as_str() && m["role"] == "leader")
        {
            self.violation(format!(
                "{} has no leader among its members: {state}",
                service.name()
            ));
        }
        let kind = unit_of(service);
        let mut joined = 0;
        for i in JOINERS {
            let name = node_name(i);
            let raft = service.raft_addr(i);
            let matching: Vec<&Value> = members
                .iter()
                .filter(|m| m["id"] == name.as_str() || m["raft_addr"] == raft.as_str())
                .collect();
            if matching.len() > 1 {
                self.violation(format!(
                    "{} lists {name} (or {raft}) {} times: {matching:?}",
                    service.name(),
                    matching.len()
                ));
            }
            let member = matching
                .iter()
                .find(|m| m["id"] == name.as_str() && m["raft_addr"] == raft.as_str());
            if matching.len() == 1 && member.is_none() {
                self.violation(format!(
                    "{} lists {name} wrongly: {:?}",
                    service.name(),
                    matching[0]
                ));
            }
            let voter = member.is_some_and(|m| m["role"] == "leader" || m["role"] == "follower");
            let marker = read_marker(&self.state_dir(i).join(service.marker()));
            let finished = self.unit_finished(i, &[kind]);
            match (&marker, voter) {
                (Some(marker), true) => {
                    joined += 1;
                    if marker["node_id"] != name.as_str() {
                        self.violation(format!(
                            "{name}'s {} marker names another node: {marker}",
                            service.name()
                        ));
                    }
                }
                (Some(marker), false) => self.violation(format!(
                    "{name} has a {} marker ({marker}) but is no voting member: {matching:?}",
                    service.name()
                )),
                (None, true) if finished => self.violation(format!(
                    "{name} is a voting {} member but has no marker, and its unit is done ({})",
                    service.name(),
                    self.unit_states(i)
                )),
                _ => {}
            }
        }
        self.out.joined.insert(service.name(), joined);
    }

    fn unit_states(&self, i: usize) -> String {
        let states: Vec<String> = UnitKind::ALL
            .iter()
            .map(|k| {
                let unit = &self.units[&(i, *k)];
                let state = match &unit.state {
                    UnitState::Waiting => "waiting".to_string(),
                    UnitState::Running(_) => "running".to_string(),
                    UnitState::RestartAt(_) => "restarting".to_string(),
                    UnitState::Done => "done".to_string(),
                    UnitState::Failed(why) => format!("failed: {why}"),
                };
                format!("{} {state} after {} starts", k.name(), unit.starts)
            })
            .collect();
        states.join(", ")
    }

    fn teardown(&mut self) {
        for unit in self.units.values_mut() {
            if let UnitState::Running(run) = &unit.state {
                let mut child = run.child.lock().unwrap_or_else(|e| e.into_inner());
                let _ = child.kill();
                let _ = child.wait();
            }
            unit.state = UnitState::Failed("round over".into());
        }
        self.etcd.clear();
        self.admin.clear();
        self.c.net.heal();
    }
}

/// The unit that joins `service`.
fn unit_of(service: AdminService) -> UnitKind {
    match service {
        AdminService::Chainfire => UnitKind::Chainfire,
        AdminService::Flaredb => UnitKind::Flaredb,
        AdminService::Iam => UnitKind::Iam,
    }
}

enum Next {
    Done,
    Restart,
    Fail(String),
}

fn read_marker(path: &Path) -> Option<Value> {
    let text = fs::read_to_string(path).ok()?;
    Some(
        serde_json::from_str(&text)
            .unwrap_or_else(|e| json!({"unparsable": e.to_string(), "text": text})),
    )
}
