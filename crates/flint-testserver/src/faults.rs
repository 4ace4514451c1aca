//! Faults on demand: the JSON a test posts, checked once into typed faults, and the bookkeeping
//! that hands each request at most one fault and retires a fault after its last use.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The routes a fault can target; the names are the ones tests write in `"route"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// `GET /health` of a cluster listener.
    Health,
    /// `GET /admin/member/list`.
    List,
    /// `POST /admin/member/add`.
    Add,
    /// `GET /health` of an IAM listener.
    IamHealth,
    /// `POST /admin/bootstrap`.
    Bootstrap,
    /// `PUT /v1/kv/{key}`.
    KvPut,
    /// `GET /v1/kv/{key}`.
    KvGet,
    /// `DELETE /v1/kv/{key}`.
    KvDelete,
}

impl Route {
    pub const ALL: [Route; 8] = [
        Route::Health,
        Route::List,
        Route::Add,
        Route::IamHealth,
        Route::Bootstrap,
        Route::KvPut,
        Route::KvGet,
        Route::KvDelete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::List => "list",
            Route::Add => "add",
            Route::IamHealth => "iam-health",
            Route::Bootstrap => "bootstrap",
            Route::KvPut => "kv-put",
            Route::KvGet => "kv-get",
            Route::KvDelete => "kv-delete",
        }
    }

    /// Routes whose real handling changes state, so `apply` means something there.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Route::Add | Route::Bootstrap | Route::KvPut | Route::KvDelete
        )
    }

    pub fn is_cluster(self) -> bool {
        matches!(
            self,
            Route::Health
                | Route::List
                | Route::Add
                | Route::KvPut
                | Route::KvGet
                | Route::KvDelete
        )
    }
}

/// How a leader hint names the leader, in the forms Raft services use: a URL (rqlite's and
/// Vault's redirects), the base URL alone, `host:port` (Consul's `/v1/status/leader`), the
/// leader's Raft address, its member ID (openraft's `ForwardToLeader { leader_id }`), or none at
/// all while no leader is known (`leader_id: None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `Location`: the leader's URL with the request's path; `{"leader"}`: its base URL.
    Url,
    /// `Location`: the leader's base URL, no path.
    Base,
    /// `{"leader": "ip:port"}` of the leader's listener.
    HostPort,
    /// `{"leader": "ip:port"}` of the leader's Raft address (listener port + 1).
    RaftAddr,
    /// `{"leader": "node02"}`.
    Id,
    /// `{"leader": null}`.
    None,
}

impl Form {
    fn name(self) -> &'static str {
        match self {
            Form::Url => "url",
            Form::Base => "base",
            Form::HostPort => "host-port",
            Form::RaftAddr => "raft-addr",
            Form::Id => "id",
            Form::None => "none",
        }
    }

    fn parse(given: Option<&str>, allowed: &[Form]) -> Result<Form, String> {
        let Some(given) = given else {
            return Ok(Form::Url);
        };
        allowed
            .iter()
            .copied()
            .find(|f| f.name() == given)
            .ok_or_else(|| {
                let names: Vec<&str> = allowed.iter().map(|f| f.name()).collect();
                format!("form {given:?} is not one of {}", names.join(", "))
            })
    }
}

/// What a fault does to the request it catches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Wait, then answer normally.
    Delay { ms: u64 },
    /// This status with a JSON error body.
    Status { code: u16 },
    /// 429 with `Retry-After`.
    TooMany { seconds: u64 },
    /// On a non-leader listener: a redirect to the leader's listener, same path.
    RedirectToLeader { code: u16, form: Form },
    /// On a non-leader listener: `{"leader": "https://..."}` with this status.
    LeaderHint { code: u16, form: Form },
    /// A redirect to the very URL that was asked for.
    RedirectLoop { code: u16 },
    /// A redirect to the same path on another listener, member or not: a server that points
    /// somewhere the cluster does not.
    RedirectTo { code: u16, to: String },
    /// Close the connection once this many bytes of the answer are out (0: no answer at all).
    Drop { after_bytes: usize },
    /// 200 with the full `Content-Length` but only half the body, then close.
    TruncatedJson,
    /// 200 with a correct length, a JSON content type and a body that is not JSON.
    MalformedJson,
    /// 200 with `Content-Type: text/html` and an HTML page.
    WrongContentType,
    /// 409 naming what the request asked for, as if an earlier attempt had succeeded.
    ConflictSame,
    /// 409 naming something else than what the request asked for.
    ConflictOther {
        id: Option<String>,
        raft_addr: Option<String>,
        org: Option<String>,
        admin: Option<String>,
    },
    /// 401 whatever token was sent.
    TokenRequired,
    /// Move the leadership to the next member, then answer with the leader hint.
    LeaderChange { code: u16 },
    /// A success status with no body and no `Content-Type`.
    NoBody { code: u16 },
    /// A success status with `{}`, labelled JSON.
    EmptyJson { code: u16 },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Delay { .. } => "delay",
            Kind::Status { .. } => "status",
            Kind::TooMany { .. } => "too-many",
            Kind::RedirectToLeader { .. } => "redirect-to-leader",
            Kind::LeaderHint { .. } => "leader-hint",
            Kind::RedirectLoop { .. } => "redirect-loop",
            Kind::RedirectTo { .. } => "redirect-to",
            Kind::Drop { .. } => "drop",
            Kind::TruncatedJson => "truncated-json",
            Kind::MalformedJson => "malformed-json",
            Kind::WrongContentType => "wrong-content-type",
            Kind::ConflictSame => "conflict-same",
            Kind::ConflictOther { .. } => "conflict-other",
            Kind::TokenRequired => "token-required",
            Kind::LeaderChange { .. } => "leader-change",
            Kind::NoBody { .. } => "no-body",
            Kind::EmptyJson { .. } => "empty-json",
        }
    }

    /// Faults that only make sense where the listener is not the leader: on the leader the
    /// request is answered normally and the fault stays armed.
    pub fn needs_follower(&self) -> bool {
        matches!(
            self,
            Kind::RedirectToLeader { .. } | Kind::LeaderHint { .. }
        )
    }
}

/// One armed fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Sequence number, for logs and `GET /faults`.
    pub seq: u64,
    pub route: Route,
    /// Listener name (`node02`); `None` for every listener.
    pub listener: Option<String>,
    /// Uses left; `None` for forever.
    pub times: Option<u32>,
    /// Do the real work (add the member, bootstrap) before misbehaving.
    pub apply: bool,
    pub kind: Kind,
    /// How many requests this fault has caught so far.
    pub applied: u64,
}

impl Fault {
    /// The same flat shape a test posts, plus `seq` and `applied`.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("seq".into(), json!(self.seq));
        o.insert("route".into(), json!(self.route.name()));
        o.insert("kind".into(), json!(self.kind.name()));
        o.insert("times".into(), json!(self.times));
        o.insert("listener".into(), json!(self.listener));
        o.insert("apply".into(), json!(self.apply));
        o.insert("applied".into(), json!(self.applied));
        match &self.kind {
            Kind::Delay { ms } => {
                o.insert("ms".into(), json!(ms));
            }
            Kind::RedirectTo { code, to } => {
                o.insert("code".into(), json!(code));
                o.insert("to".into(), json!(to));
            }
            Kind::RedirectToLeader { code, form } | Kind::LeaderHint { code, form } => {
                o.insert("code".into(), json!(code));
                o.insert("form".into(), json!(form.name()));
            }
            Kind::Status { code }
            | Kind::RedirectLoop { code }
            | Kind::LeaderChange { code }
            | Kind::NoBody { code }
            | Kind::EmptyJson { code } => {
                o.insert("code".into(), json!(code));
            }
            Kind::TooMany { seconds } => {
                o.insert("seconds".into(), json!(seconds));
            }
            Kind::Drop { after_bytes } => {
                o.insert("after_bytes".into(), json!(after_bytes));
            }
            Kind::ConflictOther {
                id,
                raft_addr,
                org,
                admin,
            } => {
                for (k, v) in [
                    ("id", id),
                    ("raft_addr", raft_addr),
                    ("org", org),
                    ("admin", admin),
                ] {
                    if let Some(v) = v {
                        o.insert(k.into(), json!(v));
                    }
                }
            }
            Kind::TruncatedJson
            | Kind::MalformedJson
            | Kind::WrongContentType
            | Kind::ConflictSame
            | Kind::TokenRequired => {}
        }
        Value::Object(o)
    }
}

/// A fault that cannot be armed, with the reason a test author needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a fault or a list of faults: {0}")]
    Json(#[from] serde_json::Error),
    #[error("fault at index {index}: {message}")]
    Invalid { index: usize, message: String },
}

/// What the server is, so a fault for a route or listener it does not have is refused at once
/// instead of silently never firing.
pub struct Scope<'a> {
    pub cluster: bool,
    /// `(name, address)` of every listener.
    pub listeners: &'a [(String, String)],
}

/// The flat JSON of one fault: every parameter of every kind, each optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    route: Route,
    kind: String,
    times: Option<u32>,
    listener: Option<String>,
    apply: Option<bool>,
    ms: Option<u64>,
    code: Option<u16>,
    seconds: Option<u64>,
    after_bytes: Option<usize>,
    id: Option<String>,
    raft_addr: Option<String>,
    org: Option<String>,
    admin: Option<String>,
    form: Option<String>,
    to: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<Value>),
    One(Value),
}

/// Parses one fault object or a list of them, all or nothing.
pub fn parse(text: &[u8], scope: &Scope<'_>) -> Result<Vec<Fault>, Error> {
    let values = match serde_json::from_slice::<OneOrMany>(text)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(v) => vec![v],
    };
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            let raw: RawFault = serde_json::from_value(value).map_err(|e| Error::Invalid {
                index,
                message: e.to_string(),
            })?;
            check(raw, scope).map_err(|message| Error::Invalid { index, message })
        })
        .collect()
}

fn check(raw: RawFault, scope: &Scope<'_>) -> Result<Fault, String> {
    let route = raw.route;
    if route.is_cluster() != scope.cluster {
        let what = if scope.cluster {
            "a cluster"
        } else {
            "an IAM service"
        };
        return Err(format!("route {} is not served by {what}", route.name()));
    }
    if raw.times == Some(0) {
        return Err("times must be at least 1 (leave it out for always)".into());
    }
    let listener = match raw.listener {
        None => None,
        Some(l) => Some(
            scope
                .listeners
                .iter()
                .find(|(name, addr)| *name == l || *addr == l)
                .map(|(name, _)| name.clone())
                .ok_or_else(|| {
                    let known: Vec<&str> =
                        scope.listeners.iter().map(|(n, _)| n.as_str()).collect();
                    format!("no listener {l:?} (listeners: {})", known.join(", "))
                })?,
        ),
    };

    let given: Vec<&'static str> = [
        ("ms", raw.ms.is_some()),
        ("code", raw.code.is_some()),
        ("seconds", raw.seconds.is_some()),
        ("after_bytes", raw.after_bytes.is_some()),
        ("id", raw.id.is_some()),
        ("raft_addr", raw.raft_addr.is_some()),
        ("org", raw.org.is_some()),
        ("admin", raw.admin.is_some()),
        ("form", raw.form.is_some()),
        ("to", raw.to.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect();
    let (kind, params, routes): (Kind, &[&str], &[Route]) = match raw.kind.as_str() {
        "delay" => (
            Kind::Delay {
                ms: raw.ms.ok_or("delay needs \"ms\"")?,
            },
            &["ms"],
            &Route::ALL,
        ),
        "status" => {
            let code = raw.code.ok_or("status needs \"code\"")?;
            if !(200..=599).contains(&code) {
                return Err(format!("status code {code} is not in 200..=599"));
            }
            (Kind::Status { code }, &["code"], &Route::ALL)
        }
        "too-many" => (
            Kind::TooMany {
                seconds: raw.seconds.unwrap_or(1),
            },
            &["seconds"],
            &Route::ALL,
        ),
        "redirect-to-leader" => (
            Kind::RedirectToLeader {
                code: redirect_code(raw.code)?,
                form: Form::parse(raw.form.as_deref(), &[Form::Url, Form::Base])?,
            },
            &["code", "form"],
            &[Route::Health, Route::List, Route::Add],
        ),
        "leader-hint" => {
            let code = raw.code.unwrap_or(421);
            if !(400..=599).contains(&code) {
                return Err(format!("leader-hint code {code} is not in 400..=599"));
            }
            let form = Form::parse(
                raw.form.as_deref(),
                &[
                    Form::Url,
                    Form::HostPort,
                    Form::RaftAddr,
                    Form::Id,
                    Form::None,
                ],
            )?;
            (
                Kind::LeaderHint { code, form },
                &["code", "form"],
                &[Route::Health, Route::List, Route::Add],
            )
        }
        "redirect-loop" => (
            Kind::RedirectLoop {
                code: redirect_code(raw.code)?,
            },
            &["code"],
            &Route::ALL,
        ),
        "redirect-to" => (
            Kind::RedirectTo {
                code: redirect_code(raw.code)?,
                to: {
                    let to = raw
                        .to
                        .clone()
                        .ok_or("redirect-to needs \"to\", the listener to send the request to")?;
                    if !scope.listeners.iter().any(|(name, _)| *name == to) {
                        return Err(format!("redirect-to: no listener {to:?}"));
                    }
                    to
                },
            },
            &["code", "to"],
            &[Route::Health, Route::List, Route::Add],
        ),
        "drop" => (
            Kind::Drop {
                after_bytes: raw.after_bytes.unwrap_or(0),
            },
            &["after_bytes"],
            &Route::ALL,
        ),
        "truncated-json" => (Kind::TruncatedJson, &[], &Route::ALL),
        "malformed-json" => (Kind::MalformedJson, &[], &Route::ALL),
        "wrong-content-type" => (Kind::WrongContentType, &[], &Route::ALL),
        "conflict-same" => (Kind::ConflictSame, &[], &[Route::Add, Route::Bootstrap]),
        "conflict-other" => {
            let params: &[&str] = if route == Route::Add {
                &["id", "raft_addr"]
            } else {
                &["org", "admin"]
            };
            (
                Kind::ConflictOther {
                    id: raw.id,
                    raft_addr: raw.raft_addr,
                    org: raw.org,
                    admin: raw.admin,
                },
                params,
                &[Route::Add, Route::Bootstrap],
            )
        }
        "token-required" => (Kind::TokenRequired, &[], &Route::ALL),
        "leader-change" => {
            let code = raw.code.unwrap_or(307);
            if !(is_redirect(code) || (400..=599).contains(&code)) {
                return Err(format!(
                    "leader-change code {code} is neither a redirect (301, 302, 303, 307, 308) nor in 400..=599"
                ));
            }
            (Kind::LeaderChange { code }, &["code"], &[Route::Add])
        }
        "no-body" | "empty-json" => {
            let default = if raw.kind == "no-body" { 201 } else { 200 };
            let code = raw.code.unwrap_or(default);
            if !(200..=299).contains(&code) {
                return Err(format!("{} code {code} is not in 200..=299", raw.kind));
            }
            let kind = if raw.kind == "no-body" {
                Kind::NoBody { code }
            } else {
                Kind::EmptyJson { code }
            };
            (kind, &["code"], &[Route::Add])
        }
        other => {
            return Err(format!(
                "unknown kind {other:?} (kinds: delay, status, too-many, redirect-to-leader, \
                 leader-hint, redirect-loop, drop, truncated-json, malformed-json, \
                 wrong-content-type, conflict-same, conflict-other, token-required, \
                 leader-change, no-body, empty-json)"
            ));
        }
    };
    if !routes.contains(&route) {
        let names: Vec<&str> = routes.iter().map(|r| r.name()).collect();
        return Err(format!(
            "kind {} does not apply to route {} (routes: {})",
            kind.name(),
            route.name(),
            names.join(", ")
        ));
    }
    if let Some(extra) = given.iter().find(|p| !params.contains(p)) {
        return Err(format!(
            "parameter {extra:?} does not apply to kind {} on route {} (its parameters: {})",
            kind.name(),
            route.name(),
            if params.is_empty() {
                "none".to_string()
            } else {
                params.join(", ")
            }
        ));
    }
    let apply = raw.apply.unwrap_or(false);
    if apply {
        let replaces_answer = matches!(
            kind,
            Kind::Status { .. }
                | Kind::TooMany { .. }
                | Kind::Drop { .. }
                | Kind::TruncatedJson
                | Kind::MalformedJson
                | Kind::WrongContentType
                | Kind::NoBody { .. }
                | Kind::EmptyJson { .. }
        );
        if !route.writes() || !replaces_answer {
            return Err(format!(
                "\"apply\" only fits routes add and bootstrap with kinds status, too-many, drop, \
                 truncated-json, malformed-json, wrong-content-type, no-body or empty-json, not \
                 {} on {}",
                kind.name(),
                route.name()
            ));
        }
    }
    Ok(Fault {
        seq: 0,
        route,
        listener,
        times: raw.times,
        apply,
        kind,
        applied: 0,
    })
}

fn is_redirect(code: u16) -> bool {
    matches!(code, 301 | 302 | 303 | 307 | 308)
}

fn redirect_code(code: Option<u16>) -> Result<u16, String> {
    let code = code.unwrap_or(307);
    if is_redirect(code) {
        Ok(code)
    } else {
        Err(format!(
            "redirect code {code} is not one of 301, 302, 303, 307, 308"
        ))
    }
}

/// The armed faults, in the order they were posted.
#[derive(Debug, Default)]
pub struct FaultSet {
    faults: Vec<Fault>,
    next_seq: u64,
}

impl FaultSet {
    /// Arms `faults` after those already armed; returns their sequence numbers.
    pub fn extend(&mut self, faults: Vec<Fault>) -> Vec<u64> {
        faults
            .into_iter()
            .map(|mut f| {
                self.next_seq += 1;
                f.seq = self.next_seq;
                self.faults.push(f);
                self.next_seq
            })
            .collect()
    }

    pub fn clear(&mut self) {
        self.faults.clear();
    }

    pub fn list(&self) -> &[Fault] {
        &self.faults
    }

    /// The fault for one request: the first armed one for this route and listener that applies
    /// here (`on_follower`: the listener is not the leader's). Its use is counted, and it is
    /// disarmed after its last one. A request takes at most one fault, so tests can reason about
    /// `times` without thinking about overlaps.
    pub fn take(&mut self, route: Route, listener: &str, on_follower: bool) -> Option<Fault> {
        let i = self.faults.iter().position(|f| {
            f.route == route
                && f.listener.as_deref().is_none_or(|l| l == listener)
                && (on_follower || !f.kind.needs_follower())
        })?;
        let fault = &mut self.faults[i];
        fault.applied += 1;
        let taken = fault.clone();
        match &mut fault.times {
            None => {}
            Some(1) => {
                self.faults.remove(i);
            }
            Some(n) => *n -= 1,
        }
        Some(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners() -> Vec<(String, String)> {
        vec![
            ("node01".into(), "127.0.0.11:2379".into()),
            ("node02".into(), "127.0.0.12:2379".into()),
        ]
    }

    fn parse_cluster(text: &str) -> Result<Vec<Fault>, Error> {
        let l = listeners();
        parse(
            text.as_bytes(),
            &Scope {
                cluster: true,
                listeners: &l,
            },
        )
    }

    fn err(text: &str) -> String {
        parse_cluster(text).unwrap_err().to_string()
    }

    #[test]
    fn one_or_many_with_defaults() {
        let one = parse_cluster(r#"{"route":"add","kind":"too-many"}"#).unwrap();
        assert_eq!(one[0].kind, Kind::TooMany { seconds: 1 });
        assert_eq!(one[0].times, None);
        let many = parse_cluster(
            r#"[{"route":"list","kind":"status","code":503,"times":2,"listener":"127.0.0.12:2379"},
                {"route":"add","kind":"redirect-to-leader"},
                {"route":"add","kind":"leader-hint"},
                {"route":"health","kind":"drop"}]"#,
        )
        .unwrap();
        assert_eq!(many[0].listener.as_deref(), Some("node02"));
        assert_eq!(many[0].times, Some(2));
        assert_eq!(
            many[1].kind,
            Kind::RedirectToLeader {
                code: 307,
                form: Form::Url
            }
        );
        assert_eq!(
            many[2].kind,
            Kind::LeaderHint {
                code: 421,
                form: Form::Url
            }
        );
        assert_eq!(many[3].kind, Kind::Drop { after_bytes: 0 });
    }

    #[test]
    fn refuses_what_would_never_fire_or_is_a_typo() {
        assert!(err(r#"{"route":"bootstrap","kind":"drop"}"#).contains("not served by a cluster"));
        assert!(err(r#"{"route":"add","kind":"dealy"}"#).contains("unknown kind"));
        assert!(err(r#"{"route":"add","kind":"delay"}"#).contains("needs \"ms\""));
        assert!(err(r#"{"route":"add","kind":"status","code":503,"ms":1}"#).contains("\"ms\""));
        assert!(err(r#"{"route":"add","kind":"drop","times":0}"#).contains("at least 1"));
        assert!(err(r#"{"route":"add","kind":"drop","listener":"node09"}"#).contains("node09"));
        assert!(err(r#"{"route":"add","kind":"drop","tiems":1}"#).contains("tiems"));
        assert!(err(r#"{"route":"list","kind":"leader-change"}"#).contains("does not apply"));
        assert!(err(r#"{"route":"add","kind":"redirect-to-leader","code":200}"#).contains("200"));
        assert!(err(r#"{"route":"list","kind":"drop","apply":true}"#).contains("apply"));
        assert!(
            err(r#"[{"route":"add","kind":"drop"},{"route":"x"}]"#).starts_with("fault at index 1")
        );
    }

    #[test]
    fn hint_forms_belong_to_their_kind() {
        let f = parse_cluster(r#"{"route":"add","kind":"leader-hint","form":"id"}"#).unwrap();
        assert_eq!(
            f[0].kind,
            Kind::LeaderHint {
                code: 421,
                form: Form::Id
            }
        );
        let f =
            parse_cluster(r#"{"route":"add","kind":"redirect-to-leader","form":"base"}"#).unwrap();
        assert_eq!(f[0].to_json()["form"], "base");
        assert!(
            err(r#"{"route":"add","kind":"redirect-to-leader","form":"id"}"#).contains("url, base")
        );
        assert!(err(r#"{"route":"add","kind":"status","code":503,"form":"id"}"#).contains("form"));
    }

    #[test]
    fn bare_successes_are_2xx_on_the_add() {
        let f = parse_cluster(r#"{"route":"add","kind":"no-body","apply":true}"#).unwrap();
        assert_eq!(f[0].kind, Kind::NoBody { code: 201 });
        let f = parse_cluster(r#"{"route":"add","kind":"empty-json"}"#).unwrap();
        assert_eq!(f[0].kind, Kind::EmptyJson { code: 200 });
        assert!(err(r#"{"route":"add","kind":"no-body","code":307}"#).contains("200..=299"));
        assert!(err(r#"{"route":"list","kind":"empty-json"}"#).contains("does not apply"));
    }

    #[test]
    fn conflict_other_takes_the_params_of_its_route() {
        let f =
            parse_cluster(r#"{"route":"add","kind":"conflict-other","raft_addr":"h:1"}"#).unwrap();
        assert!(matches!(&f[0].kind, Kind::ConflictOther { raft_addr: Some(a), .. } if a == "h:1"));
        assert!(err(r#"{"route":"add","kind":"conflict-other","org":"o"}"#).contains("\"org\""));
    }

    #[test]
    fn take_counts_down_and_disarms() {
        let mut set = FaultSet::default();
        set.extend(
            parse_cluster(r#"[{"route":"add","kind":"status","code":503,"times":2}]"#).unwrap(),
        );
        assert_eq!(set.take(Route::List, "node01", false), None);
        let first = set.take(Route::Add, "node01", false).unwrap();
        assert_eq!((first.seq, first.applied), (1, 1));
        assert_eq!(set.list()[0].times, Some(1));
        assert!(set.take(Route::Add, "node02", true).is_some());
        assert!(set.list().is_empty());
        assert_eq!(set.take(Route::Add, "node01", false), None);
    }

    #[test]
    fn take_picks_the_first_that_applies_here() {
        let mut set = FaultSet::default();
        set.extend(
            parse_cluster(
                r#"[{"route":"add","kind":"leader-hint","times":1},
                    {"route":"add","kind":"delay","ms":5,"listener":"node02"},
                    {"route":"add","kind":"drop"}]"#,
            )
            .unwrap(),
        );
        // On the leader a leader hint is no fault: it stays armed for a follower.
        let on_leader = set.take(Route::Add, "node01", false).unwrap();
        assert_eq!(on_leader.kind, Kind::Drop { after_bytes: 0 });
        assert_eq!(set.list().len(), 3);
        let on_follower = set.take(Route::Add, "node02", true).unwrap();
        assert_eq!(
            on_follower.kind,
            Kind::LeaderHint {
                code: 421,
                form: Form::Url
            }
        );
        let next = set.take(Route::Add, "node02", true).unwrap();
        assert_eq!(next.kind, Kind::Delay { ms: 5 });
        // Forever faults never disarm.
        for _ in 0..3 {
            assert!(set.take(Route::Add, "node01", false).is_some());
        }
        assert_eq!(set.list().len(), 2);
        set.clear();
        assert!(set.take(Route::Add, "node01", false).is_none());
    }

    #[test]
    fn json_round_trip_shows_remaining_uses() {
        let mut set = FaultSet::default();
        set.extend(
            parse_cluster(r#"{"route":"add","kind":"too-many","seconds":3,"times":2}"#).unwrap(),
        );
        set.take(Route::Add, "node01", false);
        let v = set.list()[0].to_json();
        assert_eq!(v["kind"], "too-many");
        assert_eq!(v["seconds"], 3);
        assert_eq!(v["times"], 1);
        assert_eq!(v["applied"], 1);
    }
}
