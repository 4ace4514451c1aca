//! etcd's v3 JSON gateway (`/v3/...`): member list, add, promote, remove, status and health,
//! with etcd's refusals sorted into what is worth retrying and what is not.
//!
//! Shapes as measured against etcd 3.4: 64-bit numbers are JSON strings, and zero, false and
//! empty fields are left out (no `isLearner` means a voter; an unstarted member has no name).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::{Error, first_answer, status_error};

/// What a 401/403 from this service asks the operator to check.
const CREDENTIALS: &str = "`tls.cert`";
pub use crate::config::bare_url;
use crate::config::{Endpoints, join_path};
use crate::http::{Answer, Client};
use crate::retry::Class;

/// etcd's refusals that flint acts on, recognised by gRPC code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Only one learner at a time: another node is joining.
    TooManyLearners,
    /// The learner has not started or not caught up yet.
    LearnerNotInSync,
    /// Promoting a member that is already a voter.
    AlreadyVoter,
    /// An add whose peer URL is already a member: an earlier add happened.
    PeerUrlExists,
    /// A retried add in the same second: the add happened.
    MemberIdExists,
    MemberNotFound,
    /// A learner serves only status and serializable reads.
    LearnerCannotServe,
    Other,
}

impl Refusal {
    fn recognise(code: i64, message: &str) -> Refusal {
        let m = message.to_ascii_lowercase();
        if m.contains("too many learner members") {
            Refusal::TooManyLearners
        } else if m.contains("in sync with leader") {
            Refusal::LearnerNotInSync
        } else if m.contains("can only promote a learner member") {
            Refusal::AlreadyVoter
        } else if m.contains("peer urls already exists") {
            Refusal::PeerUrlExists
        } else if m.contains("member id already exist") {
            Refusal::MemberIdExists
        } else if code == 5 && m.contains("member not found") {
            Refusal::MemberNotFound
        } else if m.contains("not supported for learner") {
            Refusal::LearnerCannotServe
        } else {
            Refusal::Other
        }
    }

    fn class(self, code: i64) -> Class {
        let transient = Class::Transient { retry_after: None };
        match self {
            Refusal::TooManyLearners | Refusal::LearnerNotInSync | Refusal::LearnerCannotServe => {
                transient
            }
            Refusal::AlreadyVoter
            | Refusal::PeerUrlExists
            | Refusal::MemberIdExists
            | Refusal::MemberNotFound => Class::Permanent,
            // Unknown(2: "not enough started members"), DeadlineExceeded(4),
            // ResourceExhausted(8), Aborted(10), Unavailable(14: "unhealthy cluster"):
            // conditions of a cluster in motion.
            Refusal::Other if matches!(code, 2 | 4 | 8 | 10 | 14) => transient,
            Refusal::Other => Class::Permanent,
        }
    }
}

/// Formats a member ID as etcd's own tools print it.
pub fn hex_id(id: u64) -> String {
    format!("{id:x}")
}

fn same_url(a: &str, b: &str) -> bool {
    match (Url::parse(a), Url::parse(b)) {
        (Ok(a), Ok(b)) => bare_url(&a) == bare_url(&b),
        _ => a == b,
    }
}

mod id_text {
    use serde::{Deserialize, Deserializer};

    /// etcd writes 64-bit numbers as strings; requests may use either form.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            Number(u64),
            String(String),
        }
        match Text::deserialize(d)? {
            Text::Number(n) => Ok(n),
            Text::String(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Header {
    #[serde(default, with = "id_text")]
    pub member_id: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Member {
    #[serde(rename = "ID", with = "id_text")]
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

impl Member {
    /// A member that was added but has never run: no name, no client URLs.
    pub fn started(&self) -> bool {
        !self.name.is_empty()
    }

    pub fn has_peer_url(&self, url: &str) -> bool {
        self.peer_urls.iter().any(|p| same_url(p, url))
    }

    /// The name to list in `ETCD_INITIAL_CLUSTER`; etcd matches members by peer URL there, so
    /// an unstarted member only needs a name no other member has.
    pub fn cluster_name(&self) -> String {
        if self.started() {
            self.name.clone()
        } else {
            format!("unstarted-{}", hex_id(self.id))
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct MemberList {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub members: Vec<Member>,
}

impl MemberList {
    /// The member that answered, when it is in its own list.
    pub fn answering(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.id == self.header.member_id)
    }

    pub fn with_peer_url(&self, url: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.has_peer_url(url))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AddAnswer {
    pub member: Member,
    #[serde(default)]
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub header: Header,
    /// Zero (absent) while the member knows no leader.
    #[serde(default, with = "id_text")]
    pub leader: u64,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
    #[serde(default)]
    pub errors: Vec<String>,
}

impl Status {
    pub fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.header.member_id
    }
}

#[derive(Debug, Deserialize)]
struct GatewayError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    error: String,
}

/// A client of etcd's gateway, shared by every endpoint.
#[derive(Clone)]
pub struct Etcd {
    http: Client,
}

impl Etcd {
    pub fn new(http: Client) -> Self {
        Etcd { http }
    }

    pub async fn member_list(&self, endpoint: &Url) -> Result<MemberList, Error> {
        self.call(endpoint, "/v3/cluster/member/list", json!({}))
            .await
    }

    /// A member that can change membership, and its member list: each endpoint in order
    /// (the leader URL first); learners are skipped, never asked.
    pub async fn voter(&self, endpoints: &Endpoints) -> Result<(Url, MemberList), Error> {
        first_answer(endpoints, |endpoint| async move {
            let list = self.member_list(endpoint).await?;
            if list.answering().is_some_and(|m| !m.is_learner) {
                Ok((endpoint.clone(), list))
            } else {
                Err(Error::NoVoter {
                    tried: format!("{endpoint} (a learner)"),
                })
            }
        })
        .await
    }

    pub async fn remove(&self, endpoint: &Url, id: u64) -> Result<(), Error> {
        self.call::<serde_json::Value>(
            endpoint,
            "/v3/cluster/member/remove",
            json!({"ID": id.to_string()}),
        )
        .await
        .map(drop)
    }

    pub async fn add_learner(&self, endpoint: &Url, peer_url: &str) -> Result<AddAnswer, Error> {
        self.call(
            endpoint,
            "/v3/cluster/member/add",
            json!({"peerURLs": [peer_url], "isLearner": true}),
        )
        .await
    }

    /// Promotes a learner; the answer is the member list as the voter that applied it sees it.
    pub async fn promote(&self, endpoint: &Url, id: u64) -> Result<Vec<Member>, Error> {
        #[derive(Deserialize)]
        struct Promoted {
            #[serde(default)]
            members: Vec<Member>,
        }
        let answer: Promoted = self
            .call(
                endpoint,
                "/v3/cluster/member/promote",
                json!({"ID": id.to_string()}),
            )
            .await?;
        Ok(answer.members)
    }

    /// A count-only linearizable read of one key under flint's own prefix: it goes through
    /// raft's ReadIndex, so the leader heartbeats every member before answering.
    pub async fn linearizable_read(&self, endpoint: &Url) -> Result<(), Error> {
        // base64("/flint/read-index")
        self.call::<serde_json::Value>(
            endpoint,
            "/v3/kv/range",
            json!({"key": "L2ZsaW50L3JlYWQtaW5kZXg=", "count_only": true}),
        )
        .await
        .map(drop)
    }

    /// Writes `value` at `key` (a write goes through the leader, whichever member is asked).
    pub async fn put(&self, endpoint: &Url, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.call::<serde_json::Value>(
            endpoint,
            "/v3/kv/put",
            json!({"key": BASE64.encode(key), "value": BASE64.encode(value)}),
        )
        .await
        .map(drop)
    }

    /// The value at `key` as this member holds it now: a serializable read, answered from the
    /// member's own store without asking the leader, so a member behind the others shows it.
    pub async fn local_value(&self, endpoint: &Url, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        // The gateway leaves out empty fields: no `kvs` for no key, no `value` for an empty one.
        #[derive(Deserialize)]
        struct Range {
            #[serde(default)]
            kvs: Vec<Kv>,
        }
        #[derive(Deserialize)]
        struct Kv {
            #[serde(default)]
            value: String,
        }
        let url = join_path(endpoint, "/v3/kv/range");
        let range: Range = self
            .call(
                endpoint,
                "/v3/kv/range",
                json!({"key": BASE64.encode(key), "serializable": true}),
            )
            .await?;
        range
            .kvs
            .into_iter()
            .next()
            .map(|kv| {
                BASE64
                    .decode(kv.value.as_bytes())
                    .map_err(|e| Error::Unsafe(format!("{url}: a value that is not base64: {e}")))
            })
            .transpose()
    }

    pub async fn delete(&self, endpoint: &Url, key: &[u8]) -> Result<(), Error> {
        self.call::<serde_json::Value>(
            endpoint,
            "/v3/kv/deleterange",
            json!({"key": BASE64.encode(key)}),
        )
        .await
        .map(drop)
    }

    pub async fn status(&self, endpoint: &Url) -> Result<Status, Error> {
        self.call(endpoint, "/v3/maintenance/status", json!({}))
            .await
    }

    /// `GET /health`: `{"health":"true"}` when the member has a leader and no alarm.
    pub async fn healthy(&self, health_url: &Url) -> Result<bool, Error> {
        #[derive(Deserialize)]
        struct Health {
            health: String,
        }
        let answer = self.http.get(health_url).await?;
        if !answer.status.is_success() && !answer.status.is_server_error() {
            return Err(status_error(&answer, CREDENTIALS));
        }
        Ok(answer.json::<Health>()?.health == "true")
    }

    /// Whether `error` is etcd refusing for `reason`.
    pub fn refused_for(error: &Error, reason: Refusal) -> bool {
        matches!(error, Error::Refused { code, message, .. } if Refusal::recognise(*code, message) == reason)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &Url,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, Error> {
        let url = join_path(endpoint, path);
        let answer = self.http.post_json(&url, &body).await?;
        interpret(&url, &answer)
    }
}

/// What an answer of the gateway means: the value asked for, or etcd's refusal classed by its
/// gRPC code and message, or an HTTP error.
pub fn interpret<T: serde::de::DeserializeOwned>(url: &Url, answer: &Answer) -> Result<T, Error> {
    if answer.status.is_success() {
        return Ok(answer.json()?);
    }
    match serde_json::from_slice::<GatewayError>(&answer.body) {
        Ok(refusal) if !refusal.message.is_empty() || !refusal.error.is_empty() => {
            let message = if refusal.message.is_empty() {
                refusal.error
            } else {
                refusal.message
            };
            let reason = Refusal::recognise(refusal.code, &message);
            Err(Error::Refused {
                url: url.to_string(),
                code: refusal.code,
                class: reason.class(refusal.code),
                message,
            })
        }
        _ => Err(status_error(answer, CREDENTIALS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_list_as_etcd_34_writes_it() {
        let list: MemberList = serde_json::from_str(
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","raft_term":"2"},
                "members":[{"ID":"10276657743932975437","name":"node01","peerURLs":["https://127.0.0.1:2380"],"clientURLs":["https://127.0.0.1:2379"]},
                           {"ID":"3","peerURLs":["https://127.0.0.4:2380"],"isLearner":true}]}"#,
        )
        .unwrap();
        assert_eq!(list.answering().unwrap().name, "node01");
        let new = list.with_peer_url("https://127.0.0.4:2380/").unwrap();
        assert!(new.is_learner && !new.started());
        assert_eq!(new.cluster_name(), "unstarted-3");
    }

    #[test]
    fn refusals_are_sorted() {
        let cases = [
            (
                9,
                "etcdserver: too many learner members in cluster",
                Refusal::TooManyLearners,
            ),
            (
                9,
                "etcdserver: can only promote a learner member which is in sync with leader",
                Refusal::LearnerNotInSync,
            ),
            (
                9,
                "etcdserver: can only promote a learner member",
                Refusal::AlreadyVoter,
            ),
            (
                9,
                "etcdserver: Peer URLs already exists",
                Refusal::PeerUrlExists,
            ),
            (5, "etcdserver: member not found", Refusal::MemberNotFound),
            (
                14,
                "etcdserver: rpc not supported for learner",
                Refusal::LearnerCannotServe,
            ),
        ];
        for (code, message, expected) in cases {
            assert_eq!(Refusal::recognise(code, message), expected, "{message}");
        }
        assert_eq!(
            Refusal::recognise(14, "etcdserver: unhealthy cluster").class(14),
            Class::Transient { retry_after: None }
        );
        assert_eq!(
            Refusal::recognise(3, "etcdserver: given member URLs are invalid").class(3),
            Class::Permanent
        );
    }

    #[test]
    fn bare_urls_have_no_trailing_slash() {
        let url = Url::parse("https://10.0.200.13:2380/").unwrap();
        assert_eq!(bare_url(&url), "https://10.0.200.13:2380");
        let url = Url::parse("https://[::1]:2380").unwrap();
        assert_eq!(bare_url(&url), "https://[::1]:2380");
    }
}
