//! The plan's faults injected when due: kills of flint, of etcd members and of the admin API's
//! leader, network rules and delays, answers the test servers misbehave or refuse with; each
//! ended when its time is over, and all of them at the heal.

use super::Round;
use super::units::{Unit, UnitState};
use crate::admin::AdminService;
use crate::common::tail;
use crate::etcd::{client_url, node_name};
use crate::net::{Rule, SVC_IP, listener_ip, node_ip};
use crate::plan::{Fault, INITIAL, NODES, UnitKind};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A step-triggered kill waiting for its line.
pub(super) struct LineKill {
    pub(super) event: usize,
    pub(super) node: usize,
    pub(super) unit: UnitKind,
    pub(super) line: &'static str,
    pub(super) after_ms: u64,
}

pub(super) struct Refusal {
    kind: String,
    pub(super) service: AdminService,
    pub(super) exit: i32,
    pub(super) seq: u64,
    pub(super) met: bool,
}

/// A fault whose end is scheduled.
pub(super) enum Ending {
    Rule(u64),
    Listener(u64),
    Delay(usize),
}

impl Round<'_> {
    fn count_fault(&mut self, fault: &Fault) {
        *self.out.faults.entry(fault.kind()).or_default() += 1;
    }
    fn endpoint_addrs(&self, k: usize) -> Vec<Ipv4Addr> {
        if k == 0 {
            let mut addrs = vec![SVC_IP];
            addrs.extend((1..=NODES).map(listener_ip));
            addrs
        } else {
            vec![node_ip(k)]
        }
    }

    pub(super) fn fire_due_events(&mut self) {
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

    pub(super) fn end_faults(&mut self) {
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
    pub(super) fn heal(&mut self) {
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
}
