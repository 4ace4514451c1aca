//! The control API tests drive the server with: plain HTTP on loopback to arm faults, read the
//! state and counters, and change the leader or the members behind the client's back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cluster;
use crate::http::{Body, Conn, Cutoff, Reply, read_body};
use crate::state::{Service, Shared};

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    conn: Conn,
    _cut: Cutoff,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (reply, note) = match read_body(req.into_body()).await {
        Ok(body) => answer(&shared, &method, &path, &body),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Id {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Election {
    ms: u64,
}

/// `{"member": ID, "ms": N}` shows writes N ms late on that member; `"ms": null`, never.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lag {
    member: String,
    ms: Option<u64>,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], shape: &str) -> Result<T, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| Reply::error(StatusCode::BAD_REQUEST, format!("expected {shape}: {e}")))
}

/// `405` naming the methods `path` takes, in the text and in `Allow`.
pub(crate) fn wrong_method(path: &str, allowed: &[Method]) -> Reply {
    let names = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    Reply::error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} takes {names}"),
    )
    .with_header(header::ALLOW, &names)
}

/// The reply and a note for the log line.
fn answer(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> (Reply, String) {
    let ok = |reply: Reply| (reply, String::new());
    let allowed: &[Method] = match path {
        "/faults" => &[Method::GET, Method::POST, Method::DELETE],
        "/state" => &[Method::GET],
        "/leader" | "/election" | "/members/add" | "/members/remove" | "/kv/lag" => &[Method::POST],
        _ => {
            return ok(Reply::error(
                StatusCode::NOT_FOUND,
                format!("no route {path}"),
            ));
        }
    };
    if !allowed.contains(method) {
        return ok(wrong_method(path, allowed));
    }
    match (method.as_str(), path) {
        ("GET", "/faults") => ok(faults(shared, StatusCode::OK)),
        ("DELETE", "/faults") => {
            shared.world().faults.clear();
            ok(faults(shared, StatusCode::OK))
        }
        ("POST", "/faults") => match shared.parse_faults(body) {
            Err(e) => ok(Reply::error(StatusCode::BAD_REQUEST, e.to_string())),
            Ok(new) => {
                let names: Vec<String> = new
                    .iter()
                    .map(|f| format!("{} {}", f.route.name(), f.kind.name()))
                    .collect();
                let seqs = shared.world().faults.extend(new);
                let note = seqs
                    .iter()
                    .zip(&names)
                    .map(|(s, n)| format!("#{s} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                (
                    faults(shared, StatusCode::CREATED),
                    format!(" (armed {note})"),
                )
            }
        },
        ("GET", "/state") => ok(state(shared, StatusCode::OK)),
        (_, "/leader") => ok(change(shared, |c, now| {
            let id: Id = parse(body, r#"{"id": NODE_ID}"#)?;
            c.set_leader(&id.id, now, |id| shared.listener(id).is_some())
                .map_err(membership_error)?;
            Ok(StatusCode::OK)
        })),
        (_, "/election") => ok(change(shared, |c, now| {
            let election: Election = parse(body, r#"{"ms": MILLISECONDS}"#)?;
            c.start_election(now, Duration::from_millis(election.ms));
            Ok(StatusCode::OK)
        })),
        (_, "/kv/lag") => ok(change(shared, |c, _| {
            let lag: Lag = parse(body, r#"{"member": NODE_ID, "ms": MILLISECONDS or null}"#)?;
            c.set_lag(&lag.member, lag.ms.map(Duration::from_millis));
            Ok(StatusCode::OK)
        })),
        (_, "/members/remove") => ok(change(shared, |c, _| {
            let id: Id = parse(body, r#"{"id": NODE_ID}"#)?;
            c.remove(&id.id).map_err(membership_error)?;
            Ok(StatusCode::OK)
        })),
        (_, "/members/add") => ok(change(shared, |c, now| {
            // The same checks as the admin API's add: a member tests make here must be one
            // flint could have made.
            let (id, raft_addr) =
                cluster::parse_add(body).map_err(|e| Reply::error(StatusCode::BAD_REQUEST, e))?;
            c.add(&id, &raft_addr, now).map_err(|conflict| {
                Reply::json(
                    StatusCode::CONFLICT,
                    &json!({"error": conflict.message(), "member": conflict.member()}),
                )
            })?;
            Ok(StatusCode::CREATED)
        })),
        _ => ok(Reply::error(
            StatusCode::NOT_FOUND,
            format!("no route {path}"),
        )),
    }
}

fn membership_error(e: cluster::Error) -> Reply {
    let status = match e {
        cluster::Error::NotMember(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::CONFLICT,
    };
    Reply::error(status, e.to_string())
}

/// Runs a membership change on a cluster and answers with the new state.
fn change(
    shared: &Shared,
    f: impl FnOnce(&mut cluster::Cluster, Instant) -> Result<StatusCode, Reply>,
) -> Reply {
    let result = {
        let mut world = shared.world();
        match &mut world.service {
            Service::Cluster(c) => f(c, Instant::now()),
            Service::Iam(_) => Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "an IAM server has no members or leader",
            )),
        }
    };
    match result {
        Ok(status) => state(shared, status),
        Err(reply) => reply,
    }
}

fn faults(shared: &Shared, status: StatusCode) -> Reply {
    let list: Vec<Value> = shared
        .world()
        .faults
        .list()
        .iter()
        .map(|f| f.to_json())
        .collect();
    Reply::json(status, &json!({"faults": list}))
}

fn state(shared: &Shared, status: StatusCode) -> Reply {
    let snapshot = shared.world().snapshot(Instant::now());
    Reply::json(status, &snapshot)
}
