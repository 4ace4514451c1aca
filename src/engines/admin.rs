//! The chainfire-style admin API (chainfire, flaredb): health, member list, member add, with the
//! leader's hints followed and bounded.
//!
//! ```text
//! GET  {local}/health             -> 200 {"status":"healthy"}
//! GET  {leader}/admin/member/list -> 200 {"leader": ID, "members": [{"id","raft_addr","role"}]}
//! POST {leader}/admin/member/add  {"id","raft_addr"}
//!      -> 200/201 added; 409 already a member; 307/308 Location, or 421/503 {"leader": URL}
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::{Error, first_answer, status_error};

/// What a 401/403 from this service asks the operator to check.
const CREDENTIALS: &str = "`join_token_file` and `tls.cert`";
use crate::config::{AdminSettings, Endpoints, join_path, permits};
use crate::http::{Answer, Bearer, Client};
use crate::secrets::Secret;

/// Hops a request may take from member to member before flint calls it a loop. A leader
/// change can add a hop or two; more than this is a misconfigured cluster.
const MAX_HOPS: usize = 5;

/// A member's role, read the way a client of an evolving service must: Raft services spell
/// roles differently (openraft's `ServerState` serializes as `Leader`, `Candidate`), and a role
/// flint does not know is kept as `Other` instead of refusing the whole list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    /// Campaigning in an election: only voters campaign.
    Candidate,
    Learner,
    Other,
}

impl Role {
    fn parse(text: &str) -> Role {
        let folded: String = text
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .flat_map(char::to_lowercase)
            .collect();
        match folded.as_str() {
            "leader" => Role::Leader,
            "follower" => Role::Follower,
            // etcd's raft shows a pre-vote phase before the candidacy.
            "candidate" | "precandidate" => Role::Candidate,
            "learner" => Role::Learner,
            _ => Role::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Other => "unknown",
        }
    }

    /// Known to be a voting member; a role flint does not know is not assumed to vote.
    pub fn votes(self) -> bool {
        matches!(self, Role::Leader | Role::Follower | Role::Candidate)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawMember")]
pub struct Member {
    pub id: String,
    pub raft_addr: String,
    pub role: Role,
    /// The role as the service spelled it, for messages.
    pub role_name: String,
}

#[derive(Deserialize)]
struct RawMember {
    id: String,
    raft_addr: String,
    #[serde(default)]
    role: Option<String>,
}

impl From<RawMember> for Member {
    fn from(raw: RawMember) -> Member {
        let role_name = raw.role.unwrap_or_default();
        Member {
            id: raw.id,
            raft_addr: raw.raft_addr,
            role: Role::parse(&role_name),
            role_name,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct MemberList {
    /// The leader's member ID; empty while there is none (`null`, missing or `""`: what Raft
    /// services show between leaders).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub leader: String,
    pub members: Vec<Member>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl MemberList {
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The leader, when the list names one.
    pub fn leader(&self) -> Option<&str> {
        Some(self.leader.as_str()).filter(|l| !l.is_empty())
    }

    /// A leader the list names and that the list shows in the leader role.
    pub fn has_leader(&self) -> bool {
        !self.leader.is_empty()
            && self
                .member(&self.leader)
                .is_some_and(|m| m.role == Role::Leader)
    }
}

/// What an add came to.
#[derive(Debug)]
pub enum Added {
    /// The leader accepted the add; the member list, not this answer, confirms it.
    New,
    /// It already was a member with this Raft address (409).
    Existing(Member),
    /// 409 without saying which member: the caller lists to find out.
    Unspecified,
}

/// Where the members of the last list serve the API, by member ID and by Raft address: what a
/// leader hint naming a member is resolved through. Only a list flint read itself (from a
/// member verified against the cluster's CA) fills it, and a name it does not hold is not
/// guessed at.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// `(id, raft_addr, API base URL)`.
    members: Vec<(String, String, Url)>,
    /// The members' APIs as the last list read from an origin the join token may go to lists
    /// them: the cluster's own word on where it is, which a redirect or a list from elsewhere
    /// cannot extend.
    vouched: Vec<url::Origin>,
}

impl Directory {
    pub fn new(list: &MemberList, api: impl Fn(&str) -> Option<Url>) -> Directory {
        Directory {
            members: list
                .members
                .iter()
                .filter_map(|m| Some((m.id.clone(), m.raft_addr.clone(), api(&m.raft_addr)?)))
                .collect(),
            vouched: Vec::new(),
        }
    }

    /// The same members, vouched for: their APIs may get the join token.
    fn vouched(mut self) -> Directory {
        self.vouched = self
            .members
            .iter()
            .map(|(_, _, url)| url.origin())
            .collect();
        self
    }

    pub fn vouches_for(&self, url: &Url) -> bool {
        self.vouched.contains(&url.origin())
    }

    fn find(&self, name: &str) -> Option<&Url> {
        self.members
            .iter()
            .find(|(id, raft_addr, _)| id == name || raft_addr == name)
            .map(|(_, _, url)| url)
    }
}

#[derive(Clone)]
pub struct Admin {
    http: Client,
    token: Option<Bearer>,
    settings: AdminSettings,
    allow_plaintext: bool,
    directory: Arc<Mutex<Directory>>,
}

impl Admin {
    pub fn new(
        http: Client,
        token: Option<Secret>,
        settings: &AdminSettings,
        allow_plaintext: bool,
    ) -> Self {
        // Where the configuration says the cluster is: its leader URL, its peers, and this node's
        // own member of it.
        let cluster = settings
            .endpoints
            .iter()
            .chain(std::iter::once(&settings.health_url));
        Admin {
            http,
            token: token.map(|t| Bearer::new(t, cluster)),
            settings: settings.clone(),
            allow_plaintext,
            directory: Arc::default(),
        }
    }

    /// Whether the join token may go to `url`: an origin the configuration names, or a member
    /// the cluster itself listed from such an origin (a leader that joined after this node's
    /// configuration was written is still the cluster's leader).
    fn token_goes_to(&self, url: &Url, directory: &Directory) -> bool {
        self.token
            .as_ref()
            .is_some_and(|b| b.for_url(url).is_some() || directory.vouches_for(url))
    }

    /// `Ok` when the endpoint answers 200 `{"status":"healthy"}`.
    pub async fn healthy(&self, health_url: &Url) -> Result<(), Error> {
        #[derive(Deserialize)]
        struct Health {
            status: String,
        }
        let answer = self.http.get(health_url).await?;
        if !answer.status.is_success() {
            return Err(status_error(&answer, CREDENTIALS));
        }
        let health: Health = answer.labelled_json()?;
        if health.status == "healthy" {
            Ok(())
        } else {
            Err(Error::NotReady(format!(
                "{health_url} reports status {:?}",
                health.status
            )))
        }
    }

    /// The member list, as the member at `base` (or the leader it points to) sees it, and the
    /// base URL of the member that answered.
    pub async fn members(&self, base: &Url) -> Result<(Url, MemberList), Error> {
        let paths = &self.settings.paths;
        let url = join_path(base, &paths.member_list);
        let (answered, answer) = self.exchange(Method::GET, url, None).await?;
        if !answer.status.is_success() {
            return Err(status_error(&answer, CREDENTIALS));
        }
        let list: MemberList = answer.labelled_json()?;
        let directory = Directory::new(&list, |raft_addr| self.settings.member_url(raft_addr));
        {
            let mut current = self
                .directory
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *current = if self.token_goes_to(&answered, &current) {
                directory.vouched()
            } else {
                // Good enough to resolve a hint by, never to extend where the token goes.
                Directory {
                    vouched: std::mem::take(&mut current.vouched),
                    ..directory
                }
            };
        }
        let mut answered_base = answered.clone();
        let path = answered.path();
        answered_base.set_path(path.strip_suffix(paths.member_list.as_str()).unwrap_or("/"));
        Ok((answered_base, list))
    }

    /// The member list from the first of `endpoints` that answers (the leader URL, then the
    /// peers); a permanent error stops the search, since every member would answer the same.
    pub async fn first_members(&self, endpoints: &Endpoints) -> Result<(Url, MemberList), Error> {
        first_answer(endpoints, |endpoint| self.members(endpoint)).await
    }

    /// Asks the leader (found from `base`, following its hints) to add this node.
    pub async fn add(&self, base: &Url, id: &str, raft_addr: &str) -> Result<Added, Error> {
        let url = join_path(base, &self.settings.paths.member_add);
        let body = json!({"id": id, "raft_addr": raft_addr});
        let (answered, answer) = self.exchange(Method::POST, url, Some(&body)).await?;
        read_added(&answered, &answer, id, raft_addr)
    }

    /// Sends the request, following redirects (307/308 `Location`) and leader hints (421/503
    /// with `{"leader": URL}`) for at most `MAX_HOPS` hops, never to the same URL twice.
    async fn exchange(
        &self,
        method: Method,
        mut url: Url,
        body: Option<&serde_json::Value>,
    ) -> Result<(Url, Answer), Error> {
        let mut visited: Vec<Url> = Vec::new();
        loop {
            if visited.contains(&url) || visited.len() > MAX_HOPS {
                visited.push(url);
                return Err(Error::Redirects {
                    chain: visited
                        .iter()
                        .map(Url::as_str)
                        .collect::<Vec<_>>()
                        .join(" -> "),
                });
            }
            let directory = self
                .directory
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let token = self
                .token
                .as_ref()
                .filter(|_| self.token_goes_to(&url, &directory))
                .map(Bearer::secret);
            let answer = self.http.send(method.clone(), &url, body, token).await?;
            let withheld = token.is_none() && self.token.is_some();
            if withheld
                && matches!(
                    answer.status,
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                )
            {
                // Not a refusal of the credentials: they were never shown there. Another
                // endpoint, or the leader moving back, can still take the join.
                return Err(Error::NotReady(format!(
                    "{url} answered HTTP {} to a request without the join token, which flint \
                     sends only to the URLs the configuration names (`leader_url`, `peers`, \
                     `local_url`) and to the members the cluster lists there; list this server \
                     in `peers` if it belongs to the cluster",
                    answer.status
                )));
            }
            let Some(next) = next_hop(&url, &answer, self.allow_plaintext, &directory)? else {
                return Ok((url, answer));
            };
            visited.push(url);
            url = next;
        }
    }
}

/// What an answer to a member add means, once redirects are followed: added, already a member
/// (the same one, or a conflicting one), or an error.
pub fn read_added(
    answered: &Url,
    answer: &Answer,
    id: &str,
    raft_addr: &str,
) -> Result<Added, Error> {
    #[derive(Deserialize)]
    struct Conflict {
        member: Option<Member>,
    }
    match answer.status {
        // Servers answer a successful change as they please (`201` with no body, `200 {}`, the
        // member), and a member the answer names is still not a membership: the list confirms
        // it. A body must still be JSON, so a proxy's HTML page is never taken for success.
        status if status.is_success() => {
            if !answer.body.trim_ascii().is_empty() {
                answer.labelled_json::<serde::de::IgnoredAny>()?;
            }
            Ok(Added::New)
        }
        StatusCode::CONFLICT => match answer.labelled_json::<Conflict>()?.member {
            Some(m) if m.id == id && m.raft_addr == raft_addr => Ok(Added::Existing(m)),
            Some(m) => Err(Error::Conflict(format!(
                "{answered} says this node is already in the cluster differently: member \
                 {:?} has Raft address {}, this node is {id:?} at {raft_addr}; remove the \
                 stale member or fix `raft_addr`",
                m.id, m.raft_addr
            ))),
            None => Ok(Added::Unspecified),
        },
        _ => Err(status_error(answer, CREDENTIALS)),
    }
}

/// Where an answer to a request for `url` sends it next: `None` when it is the final answer,
/// else the redirect's `Location` (307/308) or the leader's hint (421/503 with `{"leader": ...}`).
///
/// Hints come in the forms Raft services send: a URL (rqlite's and Vault's redirects), a base URL
/// without a path, a bare `host:port` (Consul names its leader so), a member's Raft address or
/// its ID (openraft's `ForwardToLeader { leader_id }`), resolved through `directory`. A base URL
/// or `host:port` keeps the request's path (and `host:port` its scheme). A hint that cannot be
/// followed is transient: another endpoint, or the next try, may know the leader. Never plain
/// http to a host that is not loopback unless `allow_plaintext`.
pub fn next_hop(
    url: &Url,
    answer: &Answer,
    allow_plaintext: bool,
    directory: &Directory,
) -> Result<Option<Url>, Error> {
    let unfollowable = |detail: String| {
        Error::NotReady(format!(
            "{url} answered HTTP {} (the leader is elsewhere), but {detail}",
            answer.status
        ))
    };
    let next = match answer.status {
        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT => {
            let Some(location) = answer.location.as_deref() else {
                return Err(unfollowable("without a Location".into()));
            };
            let to = url.join(location).map_err(|e| {
                unfollowable(format!("its Location {location:?} is not a URL: {e}"))
            })?;
            // The API has nothing at the root: a Location without a path names the leader.
            if to.path() == "/" && url.path() != "/" {
                same_request_at(&to, url)
            } else {
                to
            }
        }
        StatusCode::MISDIRECTED_REQUEST | StatusCode::SERVICE_UNAVAILABLE => {
            match leader_hint(answer) {
                Some(hint) => resolve_hint(&hint, url, directory).ok_or_else(|| {
                    unfollowable(format!(
                        "its leader hint {hint:?} is neither a URL, nor host:port, nor a member \
                         of the last member list"
                    ))
                })?,
                // 421 says "not here" even when no leader is known (during an election).
                None if answer.status == StatusCode::MISDIRECTED_REQUEST => {
                    return Err(unfollowable("it names no leader".into()));
                }
                // 503 without a hint: the service is busy, not elsewhere.
                None => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    if !permits(&next, allow_plaintext) {
        return Err(Error::Conflict(format!(
            "{url} points to {next}, which is plain http to a host that is not loopback \
             (set `allow_plaintext: true` to accept it)"
        )));
    }
    Ok(Some(next))
}

/// The request for `url`, sent to the API at `base` instead.
fn same_request_at(base: &Url, url: &Url) -> Url {
    let mut next = join_path(base, url.path());
    next.set_query(url.query());
    next
}

fn resolve_hint(hint: &str, url: &Url, directory: &Directory) -> Option<Url> {
    if hint.contains("://") {
        return Url::parse(hint)
            .ok()
            .map(|base| same_request_at(&base, url));
    }
    // A listed member's ID or Raft address first: a Raft address is also host:port, but the API
    // is not served there.
    if let Some(base) = directory.find(hint) {
        return Some(same_request_at(base, url));
    }
    let (host, port) = hint.rsplit_once(':')?;
    let plain_host = !host.is_empty() && !host.contains(['/', '@', '?', '#', '\\']);
    if !plain_host || port.parse::<u16>().ok()? == 0 {
        return None;
    }
    let base = Url::parse(&format!("{}://{hint}", url.scheme())).ok()?;
    Some(same_request_at(&base, url))
}

/// The leader a 421/503 body names, if it names one (`null` or `""` while none is known).
fn leader_hint(answer: &Answer) -> Option<String> {
    #[derive(Deserialize)]
    struct Hint {
        leader: Option<String>,
    }
    let hint: Hint = serde_json::from_slice(&answer.body).ok()?;
    hint.leader.filter(|l| !l.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> MemberList {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn no_leader_yet_is_an_answer_not_an_error() {
        for leader in [r#""leader": null,"#, r#""leader": "","#, ""] {
            let l = list(&format!(
                r#"{{{leader} "members": [{{"id": "a", "raft_addr": "h:1", "role": "candidate"}}]}}"#
            ));
            assert_eq!(l.leader(), None, "{leader}");
            assert!(!l.has_leader(), "{leader}");
            assert!(l.members[0].role.votes());
        }
    }

    #[test]
    fn roles_in_other_spellings_unknown_roles_and_fields_are_read() {
        let l = list(
            r#"{"leader": "a", "term": 7, "members": [
                {"id": "a", "raft_addr": "h:1", "role": "Leader", "last_contact": 0},
                {"id": "b", "raft_addr": "h:2", "role": "FOLLOWER"},
                {"id": "c", "raft_addr": "h:3", "role": "pre-candidate"},
                {"id": "d", "raft_addr": "h:4", "role": "Learner"},
                {"id": "e", "raft_addr": "h:5", "role": "witness"},
                {"id": "f", "raft_addr": "h:6"}]}"#,
        );
        assert!(l.has_leader());
        let roles: Vec<(Role, bool)> = l.members.iter().map(|m| (m.role, m.role.votes())).collect();
        assert_eq!(
            roles,
            [
                (Role::Leader, true),
                (Role::Follower, true),
                (Role::Candidate, true),
                (Role::Learner, false),
                (Role::Other, false),
                (Role::Other, false),
            ]
        );
        assert_eq!(l.members[4].role_name, "witness");
    }
}
