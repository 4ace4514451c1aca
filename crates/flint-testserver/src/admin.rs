//! The admin API every HTTPS listener serves: routing, the bearer token, the cluster and IAM
//! handlers, and the faults that replace or disturb their answers. One log line per request.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::cluster::{self, Role};
use crate::faults::{Fault, Form, Kind, Route};
use crate::http::{Body, Conn, Cutoff, Reply, read_body};
use crate::iam;
use crate::state::{Service, Shared};

/// The header a member-mode node puts on a request it forwards to its leader (IAM's bootstrap),
/// so the request is never forwarded twice.
pub const FORWARDED: &str = "x-flint-testserver-forwarded";

/// One request as the handlers need it.
pub struct Call {
    pub route: Route,
    pub listener: String,
    /// Path and query, for redirects that keep them.
    pub target: String,
    pub authorized: bool,
    /// Carries [`FORWARDED`]: a member-mode node forwarded it, so it is not forwarded again.
    pub forwarded: bool,
    pub body: Bytes,
}

/// What serves the admin API behind the routing, the token check, the counters and the faults:
/// the one-process cluster or IAM ([`Shared`]), or one node of a member-mode cluster.
pub trait Host: Sync {
    /// A chainfire/flaredb admin API rather than IAM.
    fn cluster(&self) -> bool;
    /// The bearer token `/admin/*` asks for.
    fn token(&self) -> Option<&str>;
    fn count(&self, listener: &str, route: Route, with_token: bool);
    /// The fault for this request, if one is armed (see [`crate::faults::FaultSet::take`]).
    fn take_fault(&self, route: Route, listener: &str) -> Option<Fault>;
    /// The answer without faults; `real: false` answers as if, changing nothing.
    fn normal(&self, call: &Call, real: bool) -> impl Future<Output = Reply> + Send;
    /// "Not the leader", naming the leader in `form` (a redirect for 3xx codes).
    fn leader_hint(&self, code: u16, target: &str, form: Form) -> Reply;
    /// `https://host:port` of a listener or node, by name.
    fn url_of(&self, listener: &str) -> Option<String>;
    /// The `leader-change` fault: move the leadership, answer with the hint.
    fn change_leader(&self, code: u16, target: &str, listener: &str, seq: u64) -> Reply;
}

/// Answers one request on an admin listener.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    conn: Conn,
    cut: Cutoff,
) -> Response<Body> {
    handle_with(&*shared, req, conn, cut).await
}

/// Answers one request for `host`, with its log line.
pub async fn handle_with<H: Host>(
    host: &H,
    req: Request<Incoming>,
    conn: Conn,
    cut: Cutoff,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    // Only the path is logged: the query is the client's business.
    let path = req.uri().path().to_string();
    let (reply, fault) = answer(host, req, &conn, &cut).await;
    let outcome = match &fault {
        Some(Fault {
            kind: Kind::Drop { after_bytes },
            ..
        }) => format!("dropped after {after_bytes} bytes"),
        _ if reply.truncate => format!(
            "{} truncated to {} of {} bytes",
            reply.status.as_u16(),
            reply.body.len() / 2,
            reply.body.len()
        ),
        _ => reply.status.as_u16().to_string(),
    };
    let fault = fault.map_or_else(
        || "none".to_string(),
        |f| format!("#{} {}", f.seq, f.kind.name()),
    );
    // Milliseconds with three decimals: a normal answer takes tens of microseconds, and
    // bench/chain sums these to tell the server's time from the client's.
    eprintln!(
        "{} {} {method} {path} -> {outcome} fault={fault} {:.3} ms",
        conn.listener,
        conn.local,
        started.elapsed().as_secs_f64() * 1e3
    );
    reply.into_response()
}

async fn answer<H: Host>(
    host: &H,
    req: Request<Incoming>,
    conn: &Conn,
    cut: &Cutoff,
) -> (Reply, Option<Fault>) {
    let route = match route(host.cluster(), req.method(), req.uri().path()) {
        Ok(route) => route,
        Err(reply) => return (reply, None),
    };
    let authorized = authorized(host.token(), req.headers());
    host.count(&conn.listener, route, authorized && host.token().is_some());
    let forwarded = req.headers().contains_key(FORWARDED);
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let body = match read_body(req.into_body()).await {
        Ok(body) => body,
        Err(reply) => return (reply, None),
    };
    if route == Route::Bootstrap
        && let Err(message) = iam::screen(&body)
    {
        eprintln!(
            "{} {} refused a bootstrap request carrying a secret (body not logged)",
            conn.listener, conn.local
        );
        return (Reply::error(StatusCode::BAD_REQUEST, message), None);
    }
    let call = Call {
        route,
        listener: conn.listener.clone(),
        target,
        authorized,
        forwarded,
        body,
    };
    let Some(fault) = host.take_fault(route, &call.listener) else {
        return (host.normal(&call, true).await, None);
    };
    let reply = faulted(host, &call, &fault, cut).await;
    (reply, Some(fault))
}

impl Host for Shared {
    fn cluster(&self) -> bool {
        self.cluster
    }

    fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn count(&self, listener: &str, route: Route, with_token: bool) {
        self.world().count(listener, route, with_token);
    }

    fn take_fault(&self, route: Route, listener: &str) -> Option<Fault> {
        let mut world = self.world();
        let on_follower = match &world.service {
            Service::Cluster(c) => c.leader() != listener,
            Service::Iam(_) => false,
        };
        world.faults.take(route, listener, on_follower)
    }

    fn normal(&self, call: &Call, real: bool) -> impl Future<Output = Reply> + Send {
        std::future::ready(normal(self, call, real))
    }

    fn leader_hint(&self, code: u16, target: &str, form: Form) -> Reply {
        let leader = match &self.world().service {
            Service::Cluster(c) => c.leader().to_string(),
            Service::Iam(_) => String::new(),
        };
        leader_hint(self, &leader, code, target, form)
    }

    fn url_of(&self, listener: &str) -> Option<String> {
        self.listener(listener)
            .map(|l| format!("https://{}", l.addr))
    }

    fn change_leader(&self, code: u16, target: &str, listener: &str, seq: u64) -> Reply {
        let leader = {
            let mut world = self.world();
            match &mut world.service {
                Service::Cluster(c) => c
                    .rotate_leader(Instant::now(), |id| self.listener(id).is_some())
                    .to_string(),
                Service::Iam(_) => String::new(),
            }
        };
        eprintln!("{listener} leader changed to {leader} by fault #{seq}");
        leader_hint(self, &leader, code, target, Form::Url)
    }
}

fn route(cluster: bool, method: &Method, path: &str) -> Result<Route, Reply> {
    if cluster && let Some(key) = path.strip_prefix("/v1/kv/") {
        return match *method {
            _ if key.is_empty() => Err(Reply::error(StatusCode::NOT_FOUND, "no key")),
            Method::PUT => Ok(Route::KvPut),
            Method::GET => Ok(Route::KvGet),
            Method::DELETE => Ok(Route::KvDelete),
            _ => Err(Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes GET, PUT or DELETE, not {method}"),
            )
            .with_header(header::ALLOW, "GET, PUT, DELETE")),
        };
    }
    let (route, allowed) = match (cluster, path) {
        (true, "/health") => (Route::Health, Method::GET),
        (true, "/admin/member/list") => (Route::List, Method::GET),
        (true, "/admin/member/add") => (Route::Add, Method::POST),
        (false, "/health") => (Route::IamHealth, Method::GET),
        (false, "/admin/bootstrap") => (Route::Bootstrap, Method::POST),
        _ => {
            return Err(Reply::error(
                StatusCode::NOT_FOUND,
                format!("no route {path}"),
            ));
        }
    };
    if *method != allowed {
        return Err(Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} takes {allowed}, not {method}"),
        )
        .with_header(header::ALLOW, allowed.as_str()));
    }
    Ok(route)
}

/// The key of a `/v1/kv/{key}` target, its query left out.
pub fn kv_key(target: &str) -> String {
    let path = target.split('?').next().unwrap_or(target);
    path.strip_prefix("/v1/kv/").unwrap_or(path).to_owned()
}

/// Whether the request carries the configured bearer token (always true without one).
fn authorized(token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    match value.split_once(' ') {
        Some((scheme, given)) if scheme.eq_ignore_ascii_case("bearer") => {
            constant_time_eq(given.trim().as_bytes(), token.as_bytes())
        }
        _ => false,
    }
}

/// Comparison whose time does not depend on where the first difference is; a test double, but
/// it should not teach clients that timing leaks are fine.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn unauthorized() -> Reply {
    Reply::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
        .with_header(header::WWW_AUTHENTICATE, "Bearer")
}

fn status(code: u16) -> StatusCode {
    // Codes were range-checked when the fault was armed.
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn is_redirect(code: u16) -> bool {
    matches!(code, 301 | 302 | 303 | 307 | 308)
}

/// "Not the leader": a redirect with `Location` for 3xx codes, `{"leader": ...}` for the others,
/// in the given form. The body names the leader either way, as real servers tend to.
fn leader_hint(shared: &Shared, leader: &str, code: u16, target: &str, form: Form) -> Reply {
    let Some(listener) = shared.listener(leader) else {
        return Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("leader {leader} has no listener"),
        );
    };
    let base = format!("https://{}", listener.addr);
    let named = match form {
        Form::Url | Form::Base => json!(base),
        Form::HostPort => json!(listener.addr.to_string()),
        Form::RaftAddr => json!(format!(
            "{}:{}",
            listener.addr.ip(),
            listener.addr.port().saturating_add(1)
        )),
        Form::Id => json!(leader),
        Form::None => Value::Null,
    };
    let reply = Reply::json(
        status(code),
        &json!({"error": "not the leader", "leader": named}),
    );
    if !is_redirect(code) {
        return reply;
    }
    let location = match form {
        Form::Base => base,
        _ => format!("{base}{target}"),
    };
    reply.with_header(header::LOCATION, &location)
}

/// The answer without faults. `real: false` works on a copy of the state, so a fault can show
/// what the answer would have been without the change happening.
fn normal(shared: &Shared, call: &Call, real: bool) -> Reply {
    let mut world = shared.world();
    if real {
        respond(shared, &mut world.service, call)
    } else {
        let mut copy = world.service.clone();
        drop(world);
        respond(shared, &mut copy, call)
    }
}

/// The answer to a change asked of a listener that cannot commit it: during an election, no
/// member can (what openraft reports as `ForwardToLeader { leader_id: None }`); otherwise a
/// follower sends the client to the leader. None on the leader's own listener.
fn not_the_leader(
    shared: &Shared,
    c: &cluster::Cluster,
    call: &Call,
    now: Instant,
) -> Option<Reply> {
    if c.electing(now) {
        return Some(Reply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "no leader elected yet", "leader": null}),
        ));
    }
    (c.leader() != call.listener)
        .then(|| leader_hint(shared, c.leader(), 307, &call.target, Form::Url))
}

fn respond(shared: &Shared, service: &mut Service, call: &Call) -> Reply {
    let healthy = || Reply::json(StatusCode::OK, &json!({"status": "healthy"}));
    let now = Instant::now();
    match (call.route, service) {
        (Route::Health | Route::IamHealth, _) => healthy(),
        // The data API is not the admin API: the bearer token is not asked for (the client
        // certificate still is, when the server asks for one).
        (Route::KvPut | Route::KvDelete, Service::Cluster(c)) => {
            if let Some(refusal) = not_the_leader(shared, c, call, now) {
                return refusal;
            }
            let key = kv_key(&call.target);
            if call.route == Route::KvPut {
                c.put(&key, call.body.clone(), now);
            } else {
                c.delete(&key);
            }
            Reply::raw(StatusCode::NO_CONTENT, "", Bytes::new())
        }
        (Route::KvGet, Service::Cluster(c)) => {
            match c.get(&call.listener, &kv_key(&call.target), now) {
                Some(value) => Reply::raw(StatusCode::OK, "application/octet-stream", value),
                None => Reply::error(StatusCode::NOT_FOUND, "no such key"),
            }
        }
        _ if !call.authorized => unauthorized(),
        (Route::List, Service::Cluster(c)) => {
            let mut list = json!(c.list(now));
            shared.role_case.apply(&mut list);
            Reply::json(StatusCode::OK, &list)
        }
        (Route::Add, Service::Cluster(c)) => {
            if let Some(refusal) = not_the_leader(shared, c, call, now) {
                return refusal;
            }
            let (id, raft_addr) = match cluster::parse_add(&call.body) {
                Ok(req) => req,
                Err(message) => return Reply::error(StatusCode::BAD_REQUEST, message),
            };
            let (status, mut body) = match c.add(&id, &raft_addr, now) {
                Ok(member) => (StatusCode::CREATED, json!(member)),
                Err(conflict) => (
                    StatusCode::CONFLICT,
                    json!({"error": conflict.message(), "member": conflict.member()}),
                ),
            };
            shared.role_case.apply(&mut body);
            Reply::json(status, &body)
        }
        (Route::Bootstrap, Service::Iam(state)) => {
            let req = match iam::parse(&call.body) {
                Ok(req) => req,
                Err(message) => return Reply::error(StatusCode::BAD_REQUEST, message),
            };
            match state.bootstrap(req) {
                Ok(created) => Reply::json(StatusCode::CREATED, &created.summary()),
                Err(existing) => {
                    let mut body = existing.summary();
                    body["error"] = json!("already bootstrapped");
                    Reply::json(StatusCode::CONFLICT, &body)
                }
            }
        }
        // Routing only hands cluster routes to a cluster and IAM routes to IAM.
        _ => Reply::error(StatusCode::NOT_FOUND, "no such route on this server"),
    }
}

async fn faulted<H: Host>(host: &H, call: &Call, fault: &Fault, cut: &Cutoff) -> Reply {
    // Do the real work first, when the fault says so (its answer is replaced).
    if fault.apply && !matches!(fault.kind, Kind::Drop { .. } | Kind::TruncatedJson) {
        host.normal(call, true).await;
    }
    let json_error = |code: u16, message: String| Reply::error(status(code), message);
    match &fault.kind {
        Kind::Delay { ms } => {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            host.normal(call, true).await
        }
        Kind::Status { code } => json_error(*code, format!("injected fault: status {code}")),
        Kind::TooMany { seconds } => json_error(429, "too many requests".into())
            .with_header(header::RETRY_AFTER, &seconds.to_string()),
        Kind::RedirectToLeader { code, form } | Kind::LeaderHint { code, form } => {
            host.leader_hint(*code, &call.target, *form)
        }
        Kind::RedirectTo { code, to } => {
            let there = host
                .url_of(to)
                .map(|base| format!("{base}{}", call.target))
                .unwrap_or_default();
            json_error(*code, "redirected".into()).with_header(header::LOCATION, &there)
        }
        Kind::RedirectLoop { code } => {
            let me = host
                .url_of(&call.listener)
                .map(|base| format!("{base}{}", call.target))
                .unwrap_or_default();
            json_error(*code, "redirected".into()).with_header(header::LOCATION, &me)
        }
        Kind::Drop { after_bytes } => {
            cut.after(*after_bytes);
            host.normal(call, fault.apply).await
        }
        Kind::TruncatedJson => {
            let mut reply = host.normal(call, fault.apply).await;
            if !reply.status.is_success() {
                reply.status = StatusCode::OK;
            }
            reply.truncate = true;
            reply
        }
        Kind::MalformedJson => {
            let garbage: &'static [u8] = match call.route {
                Route::Health | Route::IamHealth => b"{\"status\": \"healthy\",,}",
                Route::List => b"{\"leader\": \"node01\", \"members\": [",
                Route::Add => b"{\"id\": \"node04\" \"raft_addr\": }",
                Route::Bootstrap => b"{\"org\": [\"",
                // The store's values are bytes, not JSON: a broken one is a truncated value.
                Route::KvPut | Route::KvGet | Route::KvDelete => b"{\"error\": ",
            };
            Reply::raw(StatusCode::OK, "application/json", garbage)
        }
        Kind::WrongContentType => Reply::raw(
            StatusCode::OK,
            "text/html",
            "<!DOCTYPE html>\n<html><head><title>Welcome</title></head>\
                 <body><h1>It works!</h1></body></html>\n",
        ),
        Kind::ConflictSame | Kind::ConflictOther { .. } => conflict(call, &fault.kind),
        Kind::TokenRequired => unauthorized(),
        Kind::NoBody { code } => Reply::raw(status(*code), "", Bytes::new()),
        Kind::EmptyJson { code } => Reply::json(status(*code), &json!({})),
        Kind::LeaderChange { code } => {
            host.change_leader(*code, &call.target, &call.listener, fault.seq)
        }
    }
}

/// A 409 made up from the request, as if another run had got there first.
fn conflict(call: &Call, kind: &Kind) -> Reply {
    let other = match kind {
        Kind::ConflictOther {
            id,
            raft_addr,
            org,
            admin,
        } => Some((id, raft_addr, org, admin)),
        _ => None,
    };
    if call.route == Route::Bootstrap {
        let req = match iam::parse(&call.body) {
            Ok(req) => req,
            Err(message) => return Reply::error(StatusCode::BAD_REQUEST, message),
        };
        let (org, admin) = match other {
            None => (req.org, req.admin),
            Some((_, _, org, admin)) => (
                org.clone().unwrap_or_else(|| "other-org".into()),
                admin.clone().unwrap_or_else(|| "other-admin".into()),
            ),
        };
        return Reply::json(
            StatusCode::CONFLICT,
            &json!({"error": "already bootstrapped", "org": org, "admin": {"name": admin}}),
        );
    }
    let (req_id, req_addr) = match cluster::parse_add(&call.body) {
        Ok(req) => req,
        Err(message) => return Reply::error(StatusCode::BAD_REQUEST, message),
    };
    let (id, raft_addr, message) = match other {
        None => (req_id, req_addr, "already a member".to_string()),
        Some((id, raft_addr, _, _)) => {
            let id = id.clone().unwrap_or(req_id);
            let raft_addr = raft_addr.clone().unwrap_or_else(|| moved(&req_addr));
            let message = format!("{id} is already a member with raft_addr {raft_addr}");
            (id, raft_addr, message)
        }
    };
    let member = cluster::MemberView {
        id,
        raft_addr,
        role: Role::Follower,
    };
    Reply::json(
        StatusCode::CONFLICT,
        &json!({"error": message, "member": member}),
    )
}

/// Another raft_addr on the same host: what a node reinstalled with a different port would have.
fn moved(raft_addr: &str) -> String {
    match raft_addr.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse::<u16>().unwrap_or(2380);
            let other = if port > 64_535 {
                port - 1000
            } else {
                port + 1000
            };
            format!("{host}:{other}")
        }
        None => "127.0.0.1:1".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_check() {
        let mut h = HeaderMap::new();
        assert!(authorized(None, &h));
        assert!(!authorized(Some("s3cret"), &h));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorized(Some("s3cret"), &h));
        h.insert(header::AUTHORIZATION, "bearer s3cre".parse().unwrap());
        assert!(!authorized(Some("s3cret"), &h));
        h.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!authorized(Some("s3cret"), &h));
    }

    #[test]
    fn routes_and_methods() {
        assert_eq!(
            route(true, &Method::POST, "/admin/member/add").unwrap(),
            Route::Add
        );
        assert_eq!(
            route(false, &Method::GET, "/health").unwrap(),
            Route::IamHealth
        );
        assert_eq!(
            route(true, &Method::GET, "/admin/member/add")
                .unwrap_err()
                .status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            route(false, &Method::GET, "/admin/member/list")
                .unwrap_err()
                .status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn moved_raft_addr_differs() {
        assert_eq!(moved("127.0.0.14:2380"), "127.0.0.14:3380");
        assert_eq!(moved("h:65000"), "h:64000");
    }
}
