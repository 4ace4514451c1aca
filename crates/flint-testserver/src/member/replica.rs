//! Member mode's replicated state (members, key-value store, IAM's bootstrap record, a term and a
//! version), its wire form, and the leadership rule. Pure: time comes in as an argument, so the
//! unit tests below drive it without a clock or a network.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cluster::{self, Conflict, ListView, Member, MemberView, Role};
use crate::iam::Bootstrap;

/// One key's value, and the version that wrote it (so a follower can tell a new write from the
/// one it already holds, for `POST /kv/lag`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub rev: u64,
    pub value: Bytes,
}

/// The state the leader replicates: every change bumps `version`; `term` is bumped by each node
/// that starts leading.
#[derive(Clone, Debug)]
pub struct Replica {
    pub term: u64,
    pub version: u64,
    members: Vec<Member>,
    kv: BTreeMap<String, Entry>,
    iam: Option<Bootstrap>,
}

/// The replica as `GET /internal/state` carries it. Learner time is sent as what is left of it,
/// so nodes need no common clock; values are hex, so any bytes survive JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wire {
    pub term: u64,
    pub version: u64,
    pub members: Vec<WireMember>,
    #[serde(default)]
    pub kv: BTreeMap<String, WireEntry>,
    #[serde(default)]
    pub iam: Option<WireIam>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMember {
    pub id: String,
    pub raft_addr: String,
    #[serde(default)]
    pub learner_ms_left: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    pub rev: u64,
    pub hex: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireIam {
    pub org: String,
    pub admin: String,
    pub public_key: String,
}

impl Replica {
    /// The initial members, `(id, raft_addr)`, all voters; term and version 0.
    pub fn new(initial: &[(String, String)]) -> Replica {
        Replica {
            term: 0,
            version: 0,
            members: initial
                .iter()
                .map(|(id, raft_addr)| Member {
                    id: id.clone(),
                    raft_addr: raft_addr.clone(),
                    learner_until: None,
                })
                .collect(),
            kv: BTreeMap::new(),
            iam: None,
        }
    }

    /// `(term, version)`: the larger is the more recent state.
    pub fn recency(&self) -> (u64, u64) {
        (self.term, self.version)
    }

    pub fn to_wire(&self, now: Instant) -> Wire {
        Wire {
            term: self.term,
            version: self.version,
            members: self
                .members
                .iter()
                .map(|m| WireMember {
                    id: m.id.clone(),
                    raft_addr: m.raft_addr.clone(),
                    learner_ms_left: m.learner_until.map_or(0, |t| {
                        u64::try_from(t.saturating_duration_since(now).as_millis())
                            .unwrap_or(u64::MAX)
                    }),
                })
                .collect(),
            kv: self
                .kv
                .iter()
                .map(|(k, e)| {
                    (
                        k.clone(),
                        WireEntry {
                            rev: e.rev,
                            hex: hex(&e.value),
                        },
                    )
                })
                .collect(),
            iam: self.iam.as_ref().map(|b| WireIam {
                org: b.org.clone(),
                admin: b.admin.clone(),
                public_key: b.public_key.clone(),
            }),
        }
    }

    /// Checks what a peer sent; a node never adopts a state it could not have made itself.
    pub fn from_wire(wire: Wire, now: Instant) -> Result<Replica, String> {
        let mut members: Vec<Member> = Vec::with_capacity(wire.members.len());
        for m in wire.members {
            if !cluster::valid_id(&m.id) || !cluster::valid_raft_addr(&m.raft_addr) {
                return Err(format!("member {:?} is not a valid member", m.id));
            }
            if members.iter().any(|o| o.id == m.id) {
                return Err(format!("member {:?} is listed twice", m.id));
            }
            members.push(Member {
                id: m.id,
                raft_addr: m.raft_addr,
                learner_until: (m.learner_ms_left > 0)
                    .then(|| now + Duration::from_millis(m.learner_ms_left.min(86_400_000))),
            });
        }
        let mut kv = BTreeMap::new();
        for (key, e) in wire.kv {
            let value = unhex(&e.hex).ok_or_else(|| format!("the value of {key:?} is not hex"))?;
            kv.insert(
                key,
                Entry {
                    rev: e.rev,
                    value: Bytes::from(value),
                },
            );
        }
        Ok(Replica {
            term: wire.term,
            version: wire.version,
            members,
            kv,
            iam: wire.iam.map(|b| Bootstrap {
                org: b.org,
                admin: b.admin,
                public_key: b.public_key,
            }),
        })
    }

    pub fn is_member(&self, id: &str) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// The members that vote (every member but a learner), in member order.
    pub fn voters(&self, now: Instant) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| !m.is_learner(now))
            .map(|m| m.id.clone())
            .collect()
    }

    pub fn raft_addr(&self, id: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.raft_addr.as_str())
    }

    fn view_of(
        &self,
        m: &Member,
        leader: Option<&str>,
        candidate: Option<&str>,
        now: Instant,
    ) -> MemberView {
        let role = if leader == Some(m.id.as_str()) {
            Role::Leader
        } else if m.is_learner(now) {
            Role::Learner
        } else if candidate == Some(m.id.as_str()) {
            Role::Candidate
        } else {
            Role::Follower
        };
        MemberView {
            id: m.id.clone(),
            raft_addr: m.raft_addr.clone(),
            role,
        }
    }

    /// The member list as a node shows it: `leader` is the leader it believes in, `candidate`
    /// a member shown campaigning (itself, when it would lead but lacks a majority).
    pub fn list(&self, leader: Option<&str>, candidate: Option<&str>, now: Instant) -> ListView {
        ListView {
            leader: leader.map(str::to_owned),
            members: self
                .members
                .iter()
                .map(|m| self.view_of(m, leader, candidate, now))
                .collect(),
        }
    }

    /// Adds a member, a learner for `learner_for` first when that is not zero. The checks and
    /// conflicts are the cluster mode's.
    pub fn add(
        &mut self,
        id: &str,
        raft_addr: &str,
        learner_for: Duration,
        leader: Option<&str>,
        now: Instant,
    ) -> Result<MemberView, Conflict> {
        if let Some(m) = self.members.iter().find(|m| m.id == id) {
            let view = self.view_of(m, leader, None, now);
            return Err(if m.raft_addr == raft_addr {
                Conflict::AlreadyMember(view)
            } else {
                Conflict::IdTaken(view)
            });
        }
        if let Some(m) = self.members.iter().find(|m| m.raft_addr == raft_addr) {
            return Err(Conflict::AddrTaken(self.view_of(m, leader, None, now)));
        }
        let member = Member {
            id: id.to_owned(),
            raft_addr: raft_addr.to_owned(),
            learner_until: (!learner_for.is_zero()).then(|| now + learner_for),
        };
        let view = self.view_of(&member, leader, None, now);
        self.members.push(member);
        self.version += 1;
        Ok(view)
    }

    pub fn put(&mut self, key: &str, value: Bytes) {
        self.version += 1;
        let rev = self.version;
        self.kv.insert(key.to_owned(), Entry { rev, value });
    }

    /// Whether there was a value to remove (no change, no new version otherwise).
    pub fn delete(&mut self, key: &str) -> bool {
        let removed = self.kv.remove(key).is_some();
        if removed {
            self.version += 1;
        }
        removed
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.kv.get(key)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.kv.iter().map(|(k, e)| (k.as_str(), e))
    }

    pub fn iam(&self) -> Option<&Bootstrap> {
        self.iam.as_ref()
    }

    /// The first creates (a new version); every later one gets what exists.
    pub fn bootstrap(&mut self, req: Bootstrap) -> Result<Bootstrap, Bootstrap> {
        if let Some(existing) = &self.iam {
            return Err(existing.clone());
        }
        self.version += 1;
        Ok(self.iam.insert(req).clone())
    }

    /// A node starts leading: a new term, and a new version so followers take the change.
    pub fn begin_term(&mut self, term: u64) {
        self.term = term;
        self.version += 1;
    }
}

/// What a node last learnt of a peer from its own heartbeats to it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    /// When the peer last answered; `None` if it never has.
    pub answered: Option<Instant>,
    /// The peer said it leads, in that answer.
    pub leading: bool,
}

/// What a node makes of its view, at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// This node leads.
    pub lead: bool,
    /// The leader it believes in (itself when it leads).
    pub leader: Option<String>,
    /// It would lead (no lower-named voter is alive) but does not reach a majority: it shows
    /// itself as `candidate`, as a Raft member that keeps calling elections it cannot win.
    pub campaigning: bool,
}

/// The leadership rule, from one node's view:
///
/// - a peer is *alive* when it answered a heartbeat within `timeout`; one that has not answered
///   yet is *presumed alive* until `timeout` after this node started (so a node that starts
///   first does not take the lead from a lower-named one still starting);
/// - a voter leads when no lower-named voter is alive or presumed alive, and the voters alive
///   (itself included) are a majority of the voters;
/// - any other node follows the lowest-named alive peer that says it leads, or none.
pub fn decide(
    me: &str,
    voters: &[String],
    peers: &BTreeMap<String, Seen>,
    started: Instant,
    timeout: Duration,
    now: Instant,
) -> Decision {
    let seen = |id: &str| peers.get(id).copied().unwrap_or_default();
    let alive = |id: &str| {
        seen(id)
            .answered
            .is_some_and(|t| now.saturating_duration_since(t) <= timeout)
    };
    let presumed = |id: &str| {
        alive(id)
            || (seen(id).answered.is_none() && now.saturating_duration_since(started) <= timeout)
    };
    let voter = voters.iter().any(|v| v == me);
    let first_alive = voter
        && !voters
            .iter()
            .any(|v| v.as_str() < me && v != me && presumed(v));
    let reached = 1 + voters.iter().filter(|v| *v != me && alive(v)).count();
    let majority = voters.len() / 2 + 1;
    let lead = first_alive && reached >= majority;
    let leader = if lead {
        Some(me.to_owned())
    } else {
        peers
            .iter()
            .filter(|(id, s)| id.as_str() != me && s.leading && alive(id))
            .map(|(id, _)| id.clone())
            .min()
    };
    Decision {
        lead,
        campaigning: first_alive && !lead && leader.is_none(),
        leader,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(1500);

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("node0{i}")).collect()
    }

    fn seen(
        at: Instant,
        answered: &[(&str, bool)],
        silent: &[&str],
        long_ago: Instant,
    ) -> BTreeMap<String, Seen> {
        let mut m: BTreeMap<String, Seen> = answered
            .iter()
            .map(|(id, leading)| {
                (
                    id.to_string(),
                    Seen {
                        answered: Some(at),
                        leading: *leading,
                    },
                )
            })
            .collect();
        for id in silent {
            m.insert(
                id.to_string(),
                Seen {
                    answered: Some(long_ago),
                    leading: true,
                },
            );
        }
        m
    }

    #[test]
    fn the_lowest_alive_voter_leads_with_a_majority() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let voters = ids(3);
        let peers = seen(now, &[("node02", false), ("node03", false)], &[], t0);
        let d = decide("node01", &voters, &peers, t0, T, now);
        assert_eq!(
            d,
            Decision {
                lead: true,
                leader: Some("node01".into()),
                campaigning: false
            }
        );
        // node02 sees node01 alive and leading: it follows.
        let peers = seen(now, &[("node01", true), ("node03", false)], &[], t0);
        let d = decide("node02", &voters, &peers, t0, T, now);
        assert_eq!((d.lead, d.leader.as_deref()), (false, Some("node01")));
    }

    #[test]
    fn the_next_voter_takes_over_once_the_leader_is_silent_for_the_timeout() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let voters = ids(4);
        // node01 answered 1 s ago: still alive, still followed.
        let recent = now - Duration::from_secs(1);
        let mut peers = seen(now, &[("node03", false), ("node04", false)], &[], t0);
        peers.insert(
            "node01".into(),
            Seen {
                answered: Some(recent),
                leading: true,
            },
        );
        let d = decide("node02", &voters, &peers, t0, T, now);
        assert_eq!((d.lead, d.leader.as_deref()), (false, Some("node01")));
        // 2 s: dead; node02 has 3 of 4 voters.
        let later = recent + Duration::from_secs(2);
        let peers = seen(
            later,
            &[("node03", false), ("node04", false)],
            &["node01"],
            recent,
        );
        let d = decide("node02", &voters, &peers, t0, T, later);
        assert_eq!((d.lead, d.leader.as_deref()), (true, Some("node02")));
        // node03 and node04 alone: 2 of 4 is no majority; node03 campaigns, nobody leads.
        let peers = seen(later, &[("node04", false)], &["node01", "node02"], recent);
        let d = decide("node03", &voters, &peers, t0, T, later);
        assert_eq!(
            d,
            Decision {
                lead: false,
                leader: None,
                campaigning: true
            }
        );
        let peers = seen(later, &[("node03", false)], &["node01", "node02"], recent);
        let d = decide("node04", &voters, &peers, t0, T, later);
        assert_eq!((d.lead, d.leader, d.campaigning), (false, None, false));
    }

    #[test]
    fn a_node_starting_first_waits_for_lower_voters() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(300);
        let voters = ids(3);
        // node01 has not answered yet but the timeout has not run since node02 started.
        let peers = seen(now, &[("node03", false)], &[], t0);
        let d = decide("node02", &voters, &peers, t0, T, now);
        assert!(!d.lead && !d.campaigning);
        let d = decide(
            "node02",
            &voters,
            &peers,
            t0,
            T,
            t0 + Duration::from_secs(2),
        );
        assert!(!d.lead, "node03's answer is old by then");
        let late = t0 + Duration::from_secs(2);
        let peers = seen(late, &[("node03", false)], &[], t0);
        assert!(decide("node02", &voters, &peers, t0, T, late).lead);
    }

    #[test]
    fn non_voters_follow_the_lowest_alive_claimant() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(5);
        let voters = ids(3);
        let peers = seen(
            now,
            &[("node02", true), ("node03", true), ("node01", false)],
            &[],
            t0,
        );
        let d = decide("node04", &voters, &peers, t0, T, now);
        assert_eq!((d.lead, d.leader.as_deref()), (false, Some("node02")));
        let one = vec!["node04".to_string()];
        assert!(decide("node04", &one, &BTreeMap::new(), t0, T, now).lead);
    }

    #[test]
    fn members_learners_and_conflicts() {
        let t0 = Instant::now();
        let mut r = Replica::new(&[
            ("node01".into(), "10.0.0.11:2380".into()),
            ("node02".into(), "10.0.0.12:2380".into()),
        ]);
        let added = r
            .add(
                "node03",
                "10.0.0.13:2380",
                Duration::from_millis(500),
                Some("node01"),
                t0,
            )
            .unwrap();
        assert_eq!(added.role, Role::Learner);
        assert_eq!(r.version, 1);
        assert_eq!(r.voters(t0), vec!["node01", "node02"]);
        assert_eq!(
            r.voters(t0 + Duration::from_millis(600)),
            vec!["node01", "node02", "node03"]
        );
        let again = r
            .add(
                "node03",
                "10.0.0.13:2380",
                Duration::ZERO,
                Some("node01"),
                t0,
            )
            .unwrap_err();
        assert!(matches!(again, Conflict::AlreadyMember(_)));
        assert!(matches!(
            r.add("node09", "10.0.0.12:2380", Duration::ZERO, None, t0),
            Err(Conflict::AddrTaken(m)) if m.id == "node02"
        ));
        assert_eq!(r.version, 1, "a refused add changes nothing");
        let list = r.list(None, Some("node01"), t0);
        assert_eq!(list.leader, None);
        let roles: Vec<Role> = list.members.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::Candidate, Role::Follower, Role::Learner]);
    }

    #[test]
    fn the_wire_form_round_trips_and_is_checked() {
        let t0 = Instant::now();
        let mut r = Replica::new(&[("node01".into(), "10.0.0.11:2380".into())]);
        r.add("node02", "10.0.0.12:2380", Duration::from_secs(1), None, t0)
            .unwrap();
        r.put("a/b", Bytes::from_static(b"\x00\xffvalue"));
        r.bootstrap(Bootstrap {
            org: "acme".into(),
            admin: "alice".into(),
            public_key: "-----BEGIN PUBLIC KEY-----".into(),
        })
        .unwrap();
        assert!(r.delete("a/b") && !r.delete("a/b"));
        r.put("k", Bytes::from_static(b"\"v\""));
        let wire = r.to_wire(t0 + Duration::from_millis(400));
        assert_eq!(wire.members[1].learner_ms_left, 600);
        assert_eq!(
            wire.kv["k"],
            WireEntry {
                rev: 5,
                hex: "227622".into()
            }
        );
        let text = serde_json::to_string(&wire).unwrap();
        let back = Replica::from_wire(serde_json::from_str(&text).unwrap(), t0).unwrap();
        assert_eq!(back.recency(), (0, 5));
        assert_eq!(back.get("k").unwrap().value, Bytes::from_static(b"\"v\""));
        assert_eq!(back.iam().unwrap().admin, "alice");
        assert_eq!(
            back.voters(t0 + Duration::from_millis(700)),
            vec!["node01", "node02"]
        );

        let mut bad = wire.clone();
        bad.kv.get_mut("k").unwrap().hex = "zz".into();
        assert!(Replica::from_wire(bad, t0).unwrap_err().contains("hex"));
        let mut bad = wire;
        bad.members.push(bad.members[0].clone());
        assert!(Replica::from_wire(bad, t0).unwrap_err().contains("twice"));
    }

    #[test]
    fn hex_round_trip() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&all)).unwrap(), all);
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("0g"), None);
    }
}
