//! What must hold after every round, faults or not: every unit ended, or failed for good as a
//! planned refusal called for; etcd keeps its quorum; no node is half-joined (a marker iff a
//! voting member) or listed twice, in etcd, chainfire and flaredb; IAM is set up at most once,
//! with what the nodes asked for.

use super::units::UnitState;
use super::{IAM_ADMIN, IAM_ORG, Round};
use crate::admin::AdminService;
use crate::etcd::{Member, client_url, describe, node_name, peer_url};
use crate::plan::{JOINERS, NODES, UnitKind};
use serde_json::{Value, json};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

impl Round<'_> {
    fn violation(&mut self, text: String) {
        self.note(&format!("VIOLATION: {text}"));
        self.out.violations.push(text);
    }

    fn unit_finished(&self, i: usize, kinds: &[UnitKind]) -> bool {
        kinds.iter().all(|k| self.final_state(i, *k))
    }

    pub(super) fn check(&mut self) {
        self.check_units();
        self.check_etcd();
        for service in [AdminService::Chainfire, AdminService::Flaredb] {
            self.check_admin(service);
        }
        self.check_iam();
    }

    /// Every unit ended, and none failed for good but as a refusal that met a request called for.
    fn check_units(&mut self) {
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
}

/// The unit that joins `service`.
fn unit_of(service: AdminService) -> UnitKind {
    match service {
        AdminService::Chainfire => UnitKind::Chainfire,
        AdminService::Flaredb => UnitKind::Flaredb,
        AdminService::Iam => UnitKind::Iam,
    }
}

fn read_marker(path: &Path) -> Option<Value> {
    let text = fs::read_to_string(path).ok()?;
    Some(
        serde_json::from_str(&text)
            .unwrap_or_else(|e| json!({"unparsable": e.to_string(), "text": text})),
    )
}
