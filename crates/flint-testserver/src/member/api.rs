//! What one member-mode node answers: the admin and key-value API (through `admin`'s routing,
//! token check, counters and faults), the internal heartbeat route, and the control API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{MAX_WAIT, Node, authority, check_faults};
use crate::admin::{self, Call, FORWARDED, Host};
use crate::cluster::{self, valid_id};
use crate::faults::{self, Fault, Form, Route, Scope};
use crate::http::{Body, Conn, Cutoff, Reply, read_body};
use crate::iam;

/// The largest answer a leader's bootstrap may give back to a forwarding node.
const MAX_FORWARDED_ANSWER: usize = 64 * 1024;

/// Answers one request on the node's HTTPS listener.
pub async fn handle(
    node: Arc<Node>,
    req: Request<Incoming>,
    conn: Conn,
    cut: Cutoff,
) -> Response<Body> {
    if req.uri().path().starts_with("/internal/") {
        return internal(&node, req, &conn).await;
    }
    admin::handle_with(&*node, req, conn, cut).await
}

fn healthy() -> Reply {
    Reply::json(StatusCode::OK, &json!({"status": "healthy"}))
}

fn no_leader() -> Reply {
    Reply::json(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"error": "no leader elected yet", "leader": null}),
    )
}

fn not_committed(why: String) -> Reply {
    Reply::error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not committed: {why}"),
    )
}

impl Node {
    /// A write asked of a node that does not lead: `421 {"leader": URL}`, or `503 {"leader":
    /// null}` while it knows no leader (as the cluster mode during an election).
    fn not_the_leader(&self, leader: Option<&str>) -> Reply {
        match leader {
            None => no_leader(),
            Some(l) => {
                let named = self.url_of(l).unwrap_or_else(|| l.to_owned());
                Reply::json(
                    StatusCode::MISDIRECTED_REQUEST,
                    &json!({"error": "not the leader", "leader": named}),
                )
            }
        }
    }
}

impl Host for Node {
    fn cluster(&self) -> bool {
        self.s.cluster
    }

    fn token(&self) -> Option<&str> {
        self.s.token.as_deref()
    }

    fn count(&self, listener: &str, route: Route, with_token: bool) {
        self.inner().counters.count(listener, route, with_token);
    }

    fn take_fault(&self, route: Route, listener: &str) -> Option<Fault> {
        let mut inner = self.inner();
        let on_follower = !inner.lead;
        inner.faults.take(route, listener, on_follower)
    }

    async fn normal(&self, call: &Call, real: bool) -> Reply {
        respond(self, call, real).await
    }

    fn leader_hint(&self, code: u16, target: &str, form: Form) -> Reply {
        let (leader, raft_addr) = {
            let inner = self.inner();
            let Some(leader) = inner.leader.clone() else {
                return no_leader();
            };
            let raft_addr = inner.replica.raft_addr(&leader).map(str::to_owned);
            (leader, raft_addr)
        };
        let Some(base) = self.url_of(&leader) else {
            return no_leader();
        };
        let named = match form {
            Form::Url | Form::Base => json!(base),
            Form::HostPort => json!(authority(&base)),
            Form::RaftAddr => json!(raft_addr.unwrap_or_else(|| authority(&base).to_owned())),
            Form::Id => json!(leader),
            Form::None => Value::Null,
        };
        let reply = Reply::json(
            StatusCode::from_u16(code).unwrap_or(StatusCode::MISDIRECTED_REQUEST),
            &json!({"error": "not the leader", "leader": named}),
        );
        if !matches!(code, 301 | 302 | 303 | 307 | 308) {
            return reply;
        }
        let location = match form {
            Form::Base => base,
            _ => format!("{base}{target}"),
        };
        reply.with_header(header::LOCATION, &location)
    }

    fn url_of(&self, listener: &str) -> Option<String> {
        Node::url_of(self, listener)
    }

    fn change_leader(&self, _code: u16, _target: &str, _listener: &str, _seq: u64) -> Reply {
        // Refused when armed (`check_faults`); kept total.
        Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "leader-change is not available in member mode",
        )
    }
}

/// The answer without faults; `real: false` answers as the change would, changing nothing.
async fn respond(node: &Node, call: &Call, real: bool) -> Reply {
    let now = Instant::now();
    match call.route {
        Route::Health | Route::IamHealth => healthy(),
        // The data API: no bearer token (the client certificate is still asked for).
        Route::KvGet => {
            let inner = node.inner();
            match node.read(&inner, &admin::kv_key(&call.target), now) {
                Some(value) => Reply::raw(StatusCode::OK, "application/octet-stream", value),
                None => Reply::error(StatusCode::NOT_FOUND, "no such key"),
            }
        }
        Route::KvPut | Route::KvDelete => {
            let written = {
                let mut inner = node.inner();
                if !inner.lead {
                    return node.not_the_leader(inner.leader.as_deref());
                }
                if !real {
                    return Reply::raw(StatusCode::NO_CONTENT, "", Bytes::new());
                }
                let key = admin::kv_key(&call.target);
                if call.route == Route::KvPut {
                    inner.replica.put(&key, call.body.clone());
                } else {
                    inner.replica.delete(&key);
                }
                inner.replica.recency()
            };
            match node.commit(written.0, written.1).await {
                Ok(()) => Reply::raw(StatusCode::NO_CONTENT, "", Bytes::new()),
                Err(why) => not_committed(why),
            }
        }
        _ if !call.authorized => admin::unauthorized(),
        Route::List => {
            let mut list = {
                let inner = node.inner();
                let candidate = inner.campaigning.then_some(node.s.id.as_str());
                json!(inner.replica.list(inner.leader.as_deref(), candidate, now))
            };
            node.s.role_case.apply(&mut list);
            Reply::json(StatusCode::OK, &list)
        }
        Route::Add => {
            let ((status, mut body), written) = {
                let mut inner = node.inner();
                if !inner.lead {
                    return node.not_the_leader(inner.leader.as_deref());
                }
                let (id, raft_addr) = match cluster::parse_add(&call.body) {
                    Ok(req) => req,
                    Err(message) => return Reply::error(StatusCode::BAD_REQUEST, message),
                };
                let leader = inner.leader.clone();
                let learner_for = node.s.learner_for;
                let mut copy;
                let replica = if real {
                    &mut inner.replica
                } else {
                    copy = inner.replica.clone();
                    &mut copy
                };
                match replica.add(&id, &raft_addr, learner_for, leader.as_deref(), now) {
                    Ok(member) => (
                        (StatusCode::CREATED, json!(member)),
                        real.then(|| inner.replica.recency()),
                    ),
                    Err(conflict) => (
                        (
                            StatusCode::CONFLICT,
                            json!({"error": conflict.message(), "member": conflict.member()}),
                        ),
                        None,
                    ),
                }
            };
            if let Some((term, version)) = written {
                eprintln!(
                    "{}: member added (version {version}); waiting for a majority",
                    node.s.id
                );
                if let Err(why) = node.commit(term, version).await {
                    return not_committed(why);
                }
            }
            node.s.role_case.apply(&mut body);
            Reply::json(status, &body)
        }
        Route::Bootstrap => bootstrap(node, call, real).await,
    }
}

/// What a node does with a bootstrap.
enum Next {
    Answer(Reply),
    /// Created here, as leader: answer once a majority holds it.
    Commit(Reply, u64, u64),
    /// Not the leader: the leader at this URL decides.
    Forward(String),
}

/// IAM's bootstrap may reach any node (flint posts to its local IAM): the leader decides, a
/// follower forwards the request to it with its own token and answers what it answered.
async fn bootstrap(node: &Node, call: &Call, real: bool) -> Reply {
    let req = match iam::parse(&call.body) {
        Ok(req) => req,
        Err(message) => return Reply::error(StatusCode::BAD_REQUEST, message),
    };
    let exists = |b: &iam::Bootstrap| {
        let mut body = b.summary();
        body["error"] = json!("already bootstrapped");
        Reply::json(StatusCode::CONFLICT, &body)
    };
    let next = {
        let mut inner = node.inner();
        if inner.lead {
            let result = if real {
                inner.replica.bootstrap(req)
            } else {
                inner.replica.clone().bootstrap(req)
            };
            match result {
                Ok(created) if real => {
                    let (term, version) = inner.replica.recency();
                    Next::Commit(
                        Reply::json(StatusCode::CREATED, &created.summary()),
                        term,
                        version,
                    )
                }
                Ok(created) => Next::Answer(Reply::json(StatusCode::CREATED, &created.summary())),
                Err(existing) => Next::Answer(exists(&existing)),
            }
        } else if !real {
            Next::Answer(match inner.replica.iam() {
                Some(existing) => exists(existing),
                None => Reply::json(StatusCode::CREATED, &req.summary()),
            })
        } else if call.forwarded {
            Next::Answer(Reply::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "not the leader (a forwarded bootstrap is not forwarded again)",
                        "leader": null}),
            ))
        } else {
            match inner.leader.as_deref().and_then(|l| node.url_of(l)) {
                Some(url) => Next::Forward(url),
                None => Next::Answer(no_leader()),
            }
        }
    };
    match next {
        Next::Answer(reply) => reply,
        Next::Commit(reply, term, version) => match node.commit(term, version).await {
            Ok(()) => reply,
            Err(why) => not_committed(why),
        },
        Next::Forward(url) => forward(node, &url, call).await,
    }
}

async fn forward(node: &Node, base: &str, call: &Call) -> Reply {
    let Some(client) = &node.client else {
        return no_leader();
    };
    let mut headers = vec![
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (
            HeaderName::from_static(FORWARDED),
            HeaderValue::from_str(&node.s.id).unwrap_or(HeaderValue::from_static("member")),
        ),
    ];
    if let Some(token) = &node.s.token {
        let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
            return Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the token cannot be sent in a header",
            );
        };
        value.set_sensitive(true);
        headers.push((header::AUTHORIZATION, value));
    }
    let url = format!("{base}/admin/bootstrap");
    let total = node.s.leader_timeout + Duration::from_secs(2);
    match client
        .send(
            Method::POST,
            &url,
            headers,
            call.body.clone(),
            total,
            MAX_FORWARDED_ANSWER,
        )
        .await
    {
        Ok(answer) => {
            eprintln!(
                "{}: forwarded a bootstrap to {url}: {}",
                node.s.id,
                answer.status.as_u16()
            );
            let json = answer
                .content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("application/json"));
            if json {
                Reply::raw(answer.status, "application/json", answer.body)
            } else {
                Reply::error(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the leader at {base} answered {} without JSON",
                        answer.status.as_u16()
                    ),
                )
            }
        }
        Err(e) => {
            eprintln!("{}: cannot forward a bootstrap: {e}", node.s.id);
            Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot reach the leader: {e}"),
            )
        }
    }
}

/// `GET /internal/state?from=ID&term=T&have=V&wait_ms=MS`: a peer's heartbeat. It says which
/// state the peer holds (the leader counts it toward a majority); the answer is this node's
/// status, at once when this node leads and the peer's copy differs, else at this node's next
/// change or after `wait_ms` (at most 5 s). Under `--client-ca` only a peer with a client
/// certificate of that CA gets here; no bearer token, and none is ever in the answer.
async fn internal(node: &Node, req: Request<Incoming>, conn: &Conn) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path != "/internal/state" {
        return Reply::error(StatusCode::NOT_FOUND, format!("no route {path}")).into_response();
    }
    if req.method() != Method::GET {
        eprintln!(
            "{} {} {} {path} -> 405",
            conn.listener,
            conn.local,
            req.method()
        );
        return Reply::error(StatusCode::METHOD_NOT_ALLOWED, format!("{path} takes GET"))
            .with_header(header::ALLOW, "GET")
            .into_response();
    }
    let mut from = None;
    let (mut term, mut have, mut wait) = (0u64, 0u64, Duration::ZERO);
    for pair in req.uri().query().unwrap_or("").split('&') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        match k {
            "from" if valid_id(v) => from = Some(v.to_owned()),
            "term" => term = v.parse().unwrap_or(0),
            "have" => have = v.parse().unwrap_or(0),
            "wait_ms" => wait = Duration::from_millis(v.parse().unwrap_or(0)).min(MAX_WAIT),
            _ => {}
        }
    }
    if let Some(from) = &from {
        node.ack(from, term, have);
    }
    let mut changes = node.changed.subscribe();
    let at_once = {
        let inner = node.inner();
        inner.lead && inner.replica.recency() != (term, have)
    };
    if !at_once && !wait.is_zero() {
        let _ = tokio::time::timeout(wait, changes.changed()).await;
    }
    let status = {
        let inner = node.inner();
        node.status(&inner, Instant::now())
    };
    Reply::json(StatusCode::OK, &json!(status)).into_response()
}

/// `{"ms": N}` or `{"member": THIS_NODE, "ms": N}`; `"ms": null`, never.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lag {
    member: Option<String>,
    ms: Option<u64>,
}

/// The control API (plain HTTP): faults, the state, and this node's replication lag.
pub async fn control(
    node: Arc<Node>,
    req: Request<Incoming>,
    conn: Conn,
    _cut: Cutoff,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (reply, note) = match read_body(req.into_body()).await {
        Ok(body) => control_answer(&node, &method, &path, &body),
        Err(reply) => (reply, String::new()),
    };
    eprintln!(
        "{} {} {method} {path} -> {}{note}",
        conn.listener,
        conn.local,
        reply.status.as_u16()
    );
    reply.into_response()
}

fn control_answer(node: &Node, method: &Method, path: &str, body: &[u8]) -> (Reply, String) {
    let ok = |reply: Reply| (reply, String::new());
    let allowed: &[Method] = match path {
        "/faults" => &[Method::GET, Method::POST, Method::DELETE],
        "/state" => &[Method::GET],
        "/kv/lag" => &[Method::POST],
        "/leader" | "/election" | "/members/add" | "/members/remove" => {
            return ok(Reply::error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{path} is not available in member mode: the leader is the lowest-named live \
                     voter and members are added through the leader's admin API (stop or kill a \
                     node to move the leadership)"
                ),
            ));
        }
        _ => {
            return ok(Reply::error(
                StatusCode::NOT_FOUND,
                format!("no route {path}"),
            ));
        }
    };
    if !allowed.contains(method) {
        return ok(crate::control::wrong_method(path, allowed));
    }
    match (method.as_str(), path) {
        ("GET", "/faults") => ok(faults(node, StatusCode::OK)),
        ("DELETE", "/faults") => {
            node.inner().faults.clear();
            ok(faults(node, StatusCode::OK))
        }
        ("POST", "/faults") => {
            let names = node.s.fault_listeners();
            let scope = Scope {
                cluster: node.s.cluster,
                listeners: &names,
            };
            let parsed = faults::parse(body, &scope)
                .map_err(|e| e.to_string())
                .and_then(|new| check_faults(&new, &node.s.id).map(|()| new));
            match parsed {
                Err(e) => ok(Reply::error(StatusCode::BAD_REQUEST, e)),
                Ok(new) => {
                    let names: Vec<String> = new
                        .iter()
                        .map(|f| format!("{} {}", f.route.name(), f.kind.name()))
                        .collect();
                    let seqs = node.inner().faults.extend(new);
                    let note = seqs
                        .iter()
                        .zip(&names)
                        .map(|(s, n)| format!("#{s} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    (
                        faults(node, StatusCode::CREATED),
                        format!(" (armed {note})"),
                    )
                }
            }
        }
        ("GET", "/state") => ok(Reply::json(StatusCode::OK, &state(node))),
        (_, "/kv/lag") => {
            let lag: Lag = match serde_json::from_slice(body) {
                Ok(lag) => lag,
                Err(e) => {
                    return ok(Reply::error(
                        StatusCode::BAD_REQUEST,
                        format!("expected {{\"ms\": MILLISECONDS or null}}: {e}"),
                    ));
                }
            };
            if let Some(member) = lag.member.filter(|m| *m != node.s.id) {
                return ok(Reply::error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "this process is {}; set {member}'s lag on its own control API",
                        node.s.id
                    ),
                ));
            }
            node.inner().lag = lag.ms.map(Duration::from_millis);
            ok(Reply::json(StatusCode::OK, &state(node)))
        }
        _ => ok(Reply::error(
            StatusCode::NOT_FOUND,
            format!("no route {path}"),
        )),
    }
}

fn faults(node: &Node, status: StatusCode) -> Reply {
    let list: Vec<Value> = node
        .inner()
        .faults
        .list()
        .iter()
        .map(|f| f.to_json())
        .collect();
    Reply::json(status, &json!({"faults": list}))
}

/// The body of `GET /state`: the cluster mode's fields where they make sense, and this node's
/// view of its peers.
fn state(node: &Node) -> Value {
    let now = Instant::now();
    let inner = node.inner();
    let candidate = inner.campaigning.then_some(node.s.id.as_str());
    let list = inner.replica.list(inner.leader.as_deref(), candidate, now);
    let (requests, by_listener, with_token) = inner.counters.to_json();
    let peers: serde_json::Map<String, Value> = inner
        .peers
        .iter()
        .map(|(id, p)| {
            let ago = p.answered.map(|t| {
                u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
            });
            (
                id.clone(),
                json!({
                    "url": p.url,
                    "alive": ago.is_some_and(|ms| u128::from(ms) <= node.s.leader_timeout.as_millis()),
                    "answered_ms_ago": ago,
                    "leading": p.leading,
                    "leader": p.believes,
                    "version": p.replica.as_ref().map(|r| r.version),
                    "error": p.error,
                }),
            )
        })
        .collect();
    let iam = match inner.replica.iam() {
        Some(b) => json!({
            "bootstrapped": true,
            "org": b.org,
            "admin": {"name": b.admin},
            "public_key": b.public_key,
        }),
        None => json!({"bootstrapped": false, "org": null, "admin": null, "public_key": null}),
    };
    json!({
        "id": node.s.id,
        "kind": if node.s.cluster { "cluster" } else { "iam" },
        "leader": list.leader,
        "leading": inner.lead,
        "member": inner.replica.is_member(&node.s.id),
        "voter": inner.replica.voters(now).contains(&node.s.id),
        "term": inner.replica.term,
        "version": inner.replica.version,
        "members": list.members,
        "keys": inner.replica.entries().count(),
        "kv_lag_ms": inner.lag.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "peers": peers,
        "requests": requests,
        "requests_by_listener": by_listener,
        "with_token_by_listener": with_token,
        "iam": iam,
    })
}
