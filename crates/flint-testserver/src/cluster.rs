//! The cluster's membership as a Raft admin API shows it: members, the leader, and learners that
//! become followers after a while. Pure state: time comes in as an argument so tests control it.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    /// The member that will win the election in progress, campaigning for votes.
    Candidate,
    Learner,
}

/// How the admin API spells roles. Raft services differ: openraft's `ServerState` serializes as
/// its variant names (`Leader`, `Candidate`), others in lower case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleCase {
    #[default]
    Lower,
    Title,
}

impl RoleCase {
    /// Respells every `role` in an answer body.
    pub fn apply(self, value: &mut serde_json::Value) {
        if self == RoleCase::Lower {
            return;
        }
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    match v {
                        serde_json::Value::String(role) if key == "role" => {
                            let mut chars = role.chars();
                            if let Some(first) = chars.next() {
                                *role = first.to_uppercase().chain(chars).collect();
                            }
                        }
                        other => self.apply(other),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.apply(v)),
            _ => {}
        }
    }
}

/// A member as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberView {
    pub id: String,
    pub raft_addr: String,
    pub role: Role,
}

/// The body of `GET /admin/member/list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListView {
    /// `null` while an election is in progress, as Raft services show it (openraft's
    /// `current_leader: None`, Consul's empty leader).
    pub leader: Option<String>,
    pub members: Vec<MemberView>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    id: String,
    raft_addr: String,
}

/// A member ID: 1 to 63 characters of `A-Za-z0-9._-`.
pub fn valid_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A Raft address: `host:port` without a scheme, the port in 1..=65535.
pub fn valid_raft_addr(addr: &str) -> bool {
    addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(|c: char| c.is_whitespace() || c == '/')
            && port.parse::<u16>().is_ok_and(|p| p != 0)
    })
}

/// Checks a `POST /admin/member/add` body into `(id, raft_addr)`. Strict on purpose: a field the
/// protocol does not have is more likely a client bug than an extension.
pub fn parse_add(body: &[u8]) -> Result<(String, String), String> {
    let req: AddRequest = serde_json::from_slice(body)
        .map_err(|e| format!("expected {{\"id\": NODE_ID, \"raft_addr\": \"host:port\"}}: {e}"))?;
    if !valid_id(&req.id) {
        return Err(format!(
            "\"id\" {:?} is not 1 to 63 characters of A-Z, a-z, 0-9, '.', '_', '-'",
            req.id
        ));
    }
    if !valid_raft_addr(&req.raft_addr) {
        return Err(format!(
            "\"raft_addr\" {:?} is not host:port (no scheme, a port in 1..=65535)",
            req.raft_addr
        ));
    }
    Ok((req.id, req.raft_addr))
}

/// A member as the cluster holds it (member mode replicates the same).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) raft_addr: String,
    /// A learner until then; a follower (or leader) after.
    pub(crate) learner_until: Option<Instant>,
}

impl Member {
    pub(crate) fn is_learner(&self, now: Instant) -> bool {
        self.learner_until.is_some_and(|t| now < t)
    }
}

/// Why an add was refused; each carries the existing member the client should compare with.
#[derive(Debug, PartialEq, Eq)]
pub enum Conflict {
    /// The same id with the same raft_addr: a repeated add.
    AlreadyMember(MemberView),
    /// The id is a member with another raft_addr.
    IdTaken(MemberView),
    /// The raft_addr belongs to another member.
    AddrTaken(MemberView),
}

impl Conflict {
    pub fn message(&self) -> String {
        match self {
            Conflict::AlreadyMember(_) => "already a member".to_string(),
            Conflict::IdTaken(m) => format!(
                "{} is already a member with raft_addr {}",
                m.id, m.raft_addr
            ),
            Conflict::AddrTaken(m) => {
                format!(
                    "raft_addr {} is already used by member {}",
                    m.raft_addr, m.id
                )
            }
        }
    }

    pub fn member(&self) -> &MemberView {
        match self {
            Conflict::AlreadyMember(m) | Conflict::IdTaken(m) | Conflict::AddrTaken(m) => m,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0} is not a member")]
    NotMember(String),
    #[error("{0} is a learner and cannot lead")]
    Learner(String),
    #[error("{0} is the leader; make another member leader first")]
    IsLeader(String),
    #[error("{0} has no listener of this server, so no client could reach it as leader")]
    Unreachable(String),
}

#[derive(Clone, Debug)]
pub struct Cluster {
    members: Vec<Member>,
    /// The leader once the election in progress ends; the leader itself otherwise.
    leader: String,
    learner_for: Duration,
    /// No leader until then: the election in progress.
    election_until: Option<Instant>,
    /// The key-value store: each key's value and when the leader took it.
    kv: std::collections::BTreeMap<String, (bytes::Bytes, Instant)>,
    /// How long after a write each member shows it (`None`: never); the others at once.
    lag: std::collections::HashMap<String, Option<Duration>>,
}

impl Cluster {
    /// `members` are `(id, raft_addr)` pairs, all voters from the start.
    pub fn new(members: Vec<(String, String)>, leader: &str, learner_for: Duration) -> Cluster {
        debug_assert!(members.iter().any(|(id, _)| id == leader));
        Cluster {
            members: members
                .into_iter()
                .map(|(id, raft_addr)| Member {
                    id,
                    raft_addr,
                    learner_until: None,
                })
                .collect(),
            leader: leader.to_string(),
            learner_for,
            election_until: None,
            kv: Default::default(),
            lag: Default::default(),
        }
    }

    pub fn put(&mut self, key: &str, value: bytes::Bytes, now: Instant) {
        self.kv.insert(key.to_owned(), (value, now));
    }

    pub fn delete(&mut self, key: &str) {
        self.kv.remove(key);
    }

    /// `key` as `member` holds it: a write reaches a member once its lag has passed since the
    /// leader took it, never for a member set to never catch up. Only the latest value is
    /// kept, so a lagging member shows no value, not an older one, until it catches up.
    pub fn get(&self, member: &str, key: &str, now: Instant) -> Option<bytes::Bytes> {
        let (value, written) = self.kv.get(key)?;
        let lag = if member == self.leader {
            Some(Duration::ZERO)
        } else {
            self.lag
                .get(member)
                .copied()
                .unwrap_or(Some(Duration::ZERO))
        };
        lag.filter(|lag| now >= *written + *lag)
            .map(|_| value.clone())
    }

    pub fn set_lag(&mut self, member: &str, lag: Option<Duration>) {
        self.lag.insert(member.to_owned(), lag);
    }

    /// The leader, or the member that wins the election in progress.
    pub fn leader(&self) -> &str {
        &self.leader
    }

    pub fn electing(&self, now: Instant) -> bool {
        self.election_until.is_some_and(|t| now < t)
    }

    /// No leader for `lasts`, then the current leader wins again: what clients see between a
    /// leader's failure and the next term.
    pub fn start_election(&mut self, now: Instant, lasts: Duration) {
        self.election_until = Some(now + lasts);
    }

    fn view_of(&self, m: &Member, now: Instant) -> MemberView {
        let role = if m.id == self.leader && self.electing(now) {
            Role::Candidate
        } else if m.id == self.leader {
            Role::Leader
        } else if m.is_learner(now) {
            Role::Learner
        } else {
            Role::Follower
        };
        MemberView {
            id: m.id.clone(),
            raft_addr: m.raft_addr.clone(),
            role,
        }
    }

    pub fn list(&self, now: Instant) -> ListView {
        ListView {
            leader: (!self.electing(now)).then(|| self.leader.clone()),
            members: self.members.iter().map(|m| self.view_of(m, now)).collect(),
        }
    }

    pub fn member(&self, id: &str, now: Instant) -> Option<MemberView> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| self.view_of(m, now))
    }

    /// Adds a member (a learner for `learner_for` first, when that is not zero).
    pub fn add(&mut self, id: &str, raft_addr: &str, now: Instant) -> Result<MemberView, Conflict> {
        if let Some(m) = self.members.iter().find(|m| m.id == id) {
            let view = self.view_of(m, now);
            return Err(if m.raft_addr == raft_addr {
                Conflict::AlreadyMember(view)
            } else {
                Conflict::IdTaken(view)
            });
        }
        if let Some(m) = self.members.iter().find(|m| m.raft_addr == raft_addr) {
            return Err(Conflict::AddrTaken(self.view_of(m, now)));
        }
        let learner_until = (!self.learner_for.is_zero()).then(|| now + self.learner_for);
        self.members.push(Member {
            id: id.to_string(),
            raft_addr: raft_addr.to_string(),
            learner_until,
        });
        Ok(self.member(id, now).expect("just pushed"))
    }

    pub fn remove(&mut self, id: &str) -> Result<(), Error> {
        if id == self.leader {
            return Err(Error::IsLeader(id.to_string()));
        }
        let before = self.members.len();
        self.members.retain(|m| m.id != id);
        if self.members.len() == before {
            return Err(Error::NotMember(id.to_string()));
        }
        Ok(())
    }

    /// Makes `id` the leader. `reachable` tells whether a listener serves that member: a leader
    /// nobody can talk to would turn every leader hint into a dead end.
    pub fn set_leader(
        &mut self,
        id: &str,
        now: Instant,
        reachable: impl Fn(&str) -> bool,
    ) -> Result<(), Error> {
        let m = self
            .members
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| Error::NotMember(id.to_string()))?;
        if m.is_learner(now) {
            return Err(Error::Learner(id.to_string()));
        }
        if !reachable(id) {
            return Err(Error::Unreachable(id.to_string()));
        }
        self.leader = id.to_string();
        self.election_until = None;
        Ok(())
    }

    /// Moves the leadership to the next voting, reachable member after the current leader (in
    /// member order, wrapping). Returns the new leader; the same one when no other qualifies.
    pub fn rotate_leader(&mut self, now: Instant, reachable: impl Fn(&str) -> bool) -> &str {
        let at = self
            .members
            .iter()
            .position(|m| m.id == self.leader)
            .unwrap_or(0);
        let n = self.members.len();
        if let Some(next) = (1..n)
            .map(|k| &self.members[(at + k) % n])
            .find(|m| !m.is_learner(now) && reachable(&m.id))
        {
            self.leader = next.id.clone();
        }
        &self.leader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(learner_for: Duration) -> Cluster {
        Cluster::new(
            (1..=3)
                .map(|i| (format!("node0{i}"), format!("127.0.0.1{i}:2380")))
                .collect(),
            "node01",
            learner_for,
        )
    }

    fn roles(c: &Cluster, now: Instant) -> Vec<(String, Role)> {
        c.list(now)
            .members
            .into_iter()
            .map(|m| (m.id, m.role))
            .collect()
    }

    #[test]
    fn add_body_is_checked() {
        assert_eq!(
            parse_add(br#"{"id":"node04","raft_addr":"127.0.0.14:2380"}"#),
            Ok(("node04".into(), "127.0.0.14:2380".into()))
        );
        assert!(
            parse_add(br#"{"id":"node04"}"#)
                .unwrap_err()
                .contains("raft_addr")
        );
        assert!(
            parse_add(br#"{"id":"a b","raft_addr":"h:1"}"#)
                .unwrap_err()
                .contains("\"id\"")
        );
        for bad in ["h", "h:0", ":1", "https://h:1", "h:99999"] {
            let body = format!(r#"{{"id":"n","raft_addr":"{bad}"}}"#);
            assert!(parse_add(body.as_bytes()).is_err(), "{bad} accepted");
        }
        let extra = br#"{"id":"n","raft_addr":"h:1","isLearner":true}"#;
        assert!(parse_add(extra).unwrap_err().contains("isLearner"));
    }

    #[test]
    fn list_shows_one_leader_and_followers() {
        let c = three(Duration::ZERO);
        let now = Instant::now();
        let list = c.list(now);
        assert_eq!(list.leader.as_deref(), Some("node01"));
        assert_eq!(
            roles(&c, now),
            vec![
                ("node01".into(), Role::Leader),
                ("node02".into(), Role::Follower),
                ("node03".into(), Role::Follower)
            ]
        );
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["members"][0]["role"], "leader");
        assert_eq!(json["members"][1]["raft_addr"], "127.0.0.12:2380");
    }

    #[test]
    fn add_then_conflicts() {
        let mut c = three(Duration::ZERO);
        let now = Instant::now();
        let added = c.add("node04", "127.0.0.14:2380", now).unwrap();
        assert_eq!(added.role, Role::Follower);
        assert_eq!(c.list(now).members.len(), 4);

        let again = c.add("node04", "127.0.0.14:2380", now).unwrap_err();
        assert_eq!(again, Conflict::AlreadyMember(added.clone()));
        assert_eq!(again.message(), "already a member");

        let moved = c.add("node04", "127.0.0.99:2380", now).unwrap_err();
        assert_eq!(moved, Conflict::IdTaken(added));
        assert!(moved.message().contains("127.0.0.14:2380"));

        let stolen = c.add("node05", "127.0.0.12:2380", now).unwrap_err();
        assert!(matches!(&stolen, Conflict::AddrTaken(m) if m.id == "node02"));
        assert_eq!(c.list(now).members.len(), 4);
    }

    #[test]
    fn learner_becomes_follower_and_cannot_lead_before() {
        let mut c = three(Duration::from_millis(500));
        let t0 = Instant::now();
        assert_eq!(c.add("node04", "a:1", t0).unwrap().role, Role::Learner);
        assert_eq!(c.member("node04", t0).unwrap().role, Role::Learner);
        assert_eq!(
            c.set_leader("node04", t0, |_| true),
            Err(Error::Learner("node04".into()))
        );
        let later = t0 + Duration::from_millis(500);
        assert_eq!(c.member("node04", later).unwrap().role, Role::Follower);
        c.set_leader("node04", later, |_| true).unwrap();
        assert_eq!(c.member("node04", later).unwrap().role, Role::Leader);
    }

    #[test]
    fn an_election_shows_no_leader_then_the_winner() {
        let mut c = three(Duration::ZERO);
        let t0 = Instant::now();
        c.start_election(t0, Duration::from_millis(500));
        let during = c.list(t0);
        assert_eq!(during.leader, None);
        assert_eq!(during.members[0].role, Role::Candidate);
        let json = serde_json::to_value(&during).unwrap();
        assert_eq!(json["leader"], serde_json::Value::Null);
        let after = c.list(t0 + Duration::from_millis(500));
        assert_eq!(after.leader.as_deref(), Some("node01"));
        assert_eq!(after.members[0].role, Role::Leader);
    }

    #[test]
    fn roles_can_be_spelled_as_openraft_does() {
        let mut body = serde_json::json!({"leader": "node01", "members": [{"role": "leader"}],
                                          "member": {"role": "follower"}, "role": "learner"});
        RoleCase::Title.apply(&mut body);
        assert_eq!(body["members"][0]["role"], "Leader");
        assert_eq!(body["member"]["role"], "Follower");
        assert_eq!(body["role"], "Learner");
        assert_eq!(body["leader"], "node01");
    }

    #[test]
    fn leader_moves_and_membership_changes() {
        let mut c = three(Duration::ZERO);
        let now = Instant::now();
        assert_eq!(
            c.set_leader("node09", now, |_| true),
            Err(Error::NotMember("node09".into()))
        );
        assert_eq!(
            c.set_leader("node02", now, |_| false),
            Err(Error::Unreachable("node02".into()))
        );
        c.set_leader("node02", now, |_| true).unwrap();
        assert_eq!(c.list(now).members[0].role, Role::Follower);
        assert_eq!(c.remove("node02"), Err(Error::IsLeader("node02".into())));
        c.remove("node01").unwrap();
        assert_eq!(c.remove("node01"), Err(Error::NotMember("node01".into())));
        assert_eq!(c.list(now).members.len(), 2);
    }

    #[test]
    fn rotation_skips_learners_and_unreachable_members_and_wraps() {
        let mut c = three(Duration::from_secs(60));
        let now = Instant::now();
        c.add("node04", "a:1", now).unwrap();
        assert_eq!(c.rotate_leader(now, |id| id != "node02"), "node03");
        // node04 is still a learner, node01 is next.
        assert_eq!(c.rotate_leader(now, |_| true), "node01");
        let single = &mut Cluster::new(vec![("n".into(), "a:1".into())], "n", Duration::ZERO);
        assert_eq!(single.rotate_leader(now, |_| true), "n");
    }
}
