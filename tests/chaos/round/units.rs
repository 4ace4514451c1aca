//! The units a round runs as systemd would: every node's flint units, started once what they are
//! ordered after has run, restarted after a documented transient exit status up to the start
//! limit, and the joining nodes' etcd.service.

use super::Round;
use crate::common::tail;
use crate::etcd::EtcdMember;
use crate::net::ns_command;
use crate::plan::{JOINERS, UnitKind};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the units' `RestartSec=30s` becomes here, so that a round stays short.
const RESTART_SEC: Duration = Duration::from_secs(1);
/// The units' `StartLimitBurst=6`.
const START_LIMIT: u32 = 6;
/// The exit statuses flint documents (src/exit.rs, docs/join-protocol.md).
const DOCUMENTED: [i32; 8] = [0, 1, 64, 65, 69, 74, 77, 78];
const PERMANENT: [i32; 4] = [64, 65, 77, 78];

/// One flint run, with its stderr read by a thread that also fires the step-triggered kills.
pub(super) struct Run {
    pub(super) child: Arc<Mutex<Child>>,
    pub(super) killed: Arc<AtomicBool>,
    pub(super) log: PathBuf,
}

pub(super) enum UnitState {
    Waiting,
    Running(Run),
    RestartAt(Instant),
    Done,
    Failed(String),
}

pub(super) struct Unit {
    pub(super) state: UnitState,
    pub(super) starts: u32,
    /// The first run has ended (flaredb's join is ordered after chainfire's, not bound to it).
    pub(super) first_run_ended: bool,
    /// Runs the chaos killed.
    pub(super) killed: u32,
}

enum Next {
    Done,
    Restart,
    Fail(String),
}

impl Round<'_> {
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

    pub(super) fn poll_units(&mut self) {
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
    pub(super) fn poll_etcd_services(&mut self) {
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

    pub(super) fn final_state(&self, i: usize, kind: UnitKind) -> bool {
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

    pub(super) fn all_final(&self) -> bool {
        self.units
            .keys()
            .all(|(i, kind)| self.final_state(*i, *kind))
    }

    pub(super) fn unit_states(&self, i: usize) -> String {
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
}
