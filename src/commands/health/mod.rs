//! `flint health`: each configured service's quorum (members, exactly one leader) and every
//! member's health endpoint, as a table, as JSON, and as node_exporter textfile metrics.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use backon::BackoffBuilder;
use serde::Serialize;
use tokio::task::JoinSet;
use url::Url;

use super::Context;
use crate::config::{Service, one_line};
use crate::retry::{Pace, WaitLog};

pub(crate) mod admin;
pub(crate) mod etcd;

/// The version of `--json`'s shape (docs/commands.md): raised only when a field changes meaning
/// or goes away; fields are added without raising it.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub healthy: bool,
    pub services: Vec<ServiceReport>,
}

#[derive(Debug, Serialize)]
pub struct ServiceReport {
    pub service: &'static str,
    /// A leader that every reachable member agrees on, and a quorum of healthy voters.
    pub healthy: bool,
    pub leader: Option<String>,
    /// How many members it should have (`expected_members` or `--expect-members`), if said.
    pub expected_members: Option<usize>,
    /// The write read back from every member, with `--write-check`.
    pub write_check: Option<WriteCheck>,
    pub members: Vec<MemberReport>,
    /// Every endpoint the configuration names for the member list, each asked: one that does not
    /// answer is reported even when another did.
    pub endpoints: Vec<EndpointReport>,
    /// What an operator should look at, healthy or not (a dead member of a cluster that still
    /// has quorum shows up here).
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct MemberReport {
    pub id: String,
    pub name: String,
    pub client_urls: Vec<String>,
    pub role: &'static str,
    pub healthy: bool,
    pub error: Option<String>,
}

/// A value written through the leader and read back from each member's own store.
#[derive(Debug, Serialize)]
pub struct WriteCheck {
    pub key: String,
    /// Whether the leader took the write.
    pub written: bool,
    /// Why the write, or the removal of the key afterwards, failed.
    pub error: Option<String>,
    pub members: Vec<ReadBack>,
}

#[derive(Debug, Serialize)]
pub struct ReadBack {
    pub name: String,
    /// Whether the member returned the value within the wait.
    pub seen: bool,
    /// When, from the write.
    pub after_ms: Option<u64>,
    /// What it returned last when it never showed the value.
    pub error: Option<String>,
}

/// One configured endpoint and what asking it gave.
#[derive(Debug, Serialize)]
pub struct EndpointReport {
    /// Where the configuration names it: `leader_url`, `peers`, `local_url` (etcd's local
    /// member) or `health_url` (IAM's).
    pub field: &'static str,
    pub url: String,
    /// Whether it answered what it was asked (the member list; IAM: its health).
    pub answered: bool,
    /// Why not, on one line.
    pub error: Option<String>,
}

impl EndpointReport {
    fn new<E: std::fmt::Display>(field: &'static str, url: &Url, outcome: Result<(), E>) -> Self {
        let error = outcome.err().map(|e| one_line(&e.to_string()));
        EndpointReport {
            field,
            url: url.to_string(),
            answered: error.is_none(),
            error,
        }
    }

    /// The problem line of an endpoint that did not answer.
    fn problem(&self) -> Option<String> {
        let error = self.error.as_ref()?;
        Some(format!("{} {}: {error}", self.field, self.url))
    }
}

/// Asks every endpoint at once and keeps the first answer in the configured order (the leader
/// URL first), with each endpoint's outcome.
async fn ask_each<T, E, F, Fut>(
    endpoints: Vec<(&'static str, Url)>,
    ask: F,
) -> (Option<T>, Vec<EndpointReport>)
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
    F: Fn(Url) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let mut asks = JoinSet::new();
    for (index, (_, url)) in endpoints.iter().enumerate() {
        let answer = ask(url.clone());
        asks.spawn(async move { (index, answer.await) });
    }
    let mut outcomes: Vec<Option<Result<T, E>>> = endpoints.iter().map(|_| None).collect();
    while let Some(done) = asks.join_next().await {
        let (index, outcome) = done.expect("member list requests do not panic");
        outcomes[index] = Some(outcome);
    }
    let mut first = None;
    let mut reports = Vec::new();
    for ((field, url), outcome) in endpoints.into_iter().zip(outcomes) {
        let outcome = outcome.expect("every request was awaited");
        reports.push(EndpointReport::new(
            field,
            &url,
            outcome.map(|answer| {
                first.get_or_insert(answer);
            }),
        ));
    }
    (first, reports)
}

/// What `flint health` is asked to do besides checking once.
pub struct Options<'a> {
    pub json: bool,
    pub textfile: Option<&'a Path>,
    pub expect_members: Option<usize>,
    pub write_check: bool,
    /// Check again until the cluster is healthy or the deadline (`timeouts.total`) passes.
    pub wait: bool,
}

pub async fn run(ctx: &Context, options: &Options<'_>) -> crate::Result<bool> {
    let expected = options.expect_members.or(ctx.config.expected_members);
    let report = if options.wait {
        check_until_healthy(ctx, expected, options.write_check).await?
    } else {
        check(
            ctx,
            ctx.config.configured_services(),
            expected,
            options.write_check,
        )
        .await?
    };
    if let Some(path) = options.textfile {
        write_textfile(path, &report)?;
    }
    if options.json {
        let json = serde_json::to_string_pretty(&report).expect("a report always serializes");
        println!("{}", crate::secrets::scrub(&json));
    } else {
        print!("{}", crate::logging::safe_lines(&table(&report)));
    }
    Ok(report.healthy)
}

/// Checks again, at the pace of a wait for a remote service, until the cluster is healthy or
/// the deadline passes: a node that finished its joins before its peers have started theirs
/// waits for them here, in one process and over the connections it already holds, instead of
/// failing and being started again by systemd. While it waits only the services still unhealthy
/// are asked again (each check costs every member a request, and a node that boots first may
/// wait minutes); once each has been healthy, every service is checked once more together, and
/// that report, taken at one moment, is the one returned. At the deadline the last report is.
async fn check_until_healthy(
    ctx: &Context,
    expected: Option<usize>,
    write_check: bool,
) -> crate::Result<Report> {
    let all = ctx.config.configured_services();
    let mut waits = Pace::REMOTE.build();
    let mut log = WaitLog::new("the cluster to be healthy");
    // Waiting, for the closing line: from the first check to the round that found it healthy.
    let first_round = Instant::now();
    let mut last_round = first_round;
    let mut report = check(ctx, all, expected, write_check).await?;
    loop {
        let remaining = ctx.deadline.remaining();
        let next = waits.next().map(|wait| wait.min(remaining));
        let Some(next) = next.filter(|_| !report.healthy && !remaining.is_zero()) else {
            crate::retry::note_waited(last_round - first_round);
            return Ok(report);
        };
        log.retrying(&report.first_problem(), remaining, next);
        tokio::time::sleep(next).await;
        last_round = Instant::now();
        let unhealthy: Vec<Service> = all
            .iter()
            .zip(&report.services)
            .filter(|(_, s)| !s.healthy)
            .map(|(service, _)| *service)
            .collect();
        let again = check(ctx, &unhealthy, expected, write_check).await?;
        if again.healthy {
            report = check(ctx, all, expected, write_check).await?;
        } else {
            report.replace(again);
        }
    }
}

/// The services named checked once, the member counts held against `expected`.
async fn check(
    ctx: &Context,
    services: &[Service],
    expected: Option<usize>,
    write_check: bool,
) -> crate::Result<Report> {
    // The services are independent: checked at once, reported in the order given.
    let mut checks = tokio::task::JoinSet::new();
    for (index, service) in services.iter().copied().enumerate() {
        let ctx = ctx.clone();
        checks.spawn(async move {
            let mut report = match service {
                Service::Etcd => etcd::check(&ctx).await,
                Service::Chainfire | Service::Flaredb => admin::check(&ctx, service).await,
                Service::Iam => Ok(admin::check_iam(&ctx).await),
            };
            // After the verdict: the members are read back from the list just taken.
            if let Ok(report) = report.as_mut()
                && write_check
            {
                match service {
                    Service::Etcd => etcd::write_check(&ctx, report).await,
                    Service::Chainfire | Service::Flaredb => {
                        admin::write_check(&ctx, service, report).await;
                    }
                    // Stateless: nothing to write.
                    Service::Iam => {}
                }
            }
            (index, report)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = checks.join_next().await {
        let (index, report) = joined.expect("health checks do not panic");
        done.push((index, report?));
    }
    done.sort_by_key(|(index, _)| *index);
    let mut services: Vec<ServiceReport> = done.into_iter().map(|(_, report)| report).collect();
    if let Some(expected) = expected {
        // IAM is stateless: it has no members to count.
        for service in services.iter_mut().filter(|s| s.service != "iam") {
            service.expect_members(expected);
        }
    }
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        healthy: services.iter().all(|s| s.healthy),
        services,
    })
}

impl Report {
    /// Puts the reports of `newer` in place of those of the same services.
    fn replace(&mut self, newer: Report) {
        for fresh in newer.services {
            if let Some(old) = self
                .services
                .iter_mut()
                .find(|s| s.service == fresh.service)
            {
                *old = fresh;
            }
        }
        self.healthy = self.services.iter().all(|s| s.healthy);
    }

    /// The first thing wrong, for the log line of a wait: `etcd: member node02 ...`.
    fn first_problem(&self) -> String {
        self.services
            .iter()
            .filter(|s| !s.healthy)
            .find_map(|s| {
                s.problems
                    .first()
                    .map(|p| format!("{}: {}", s.service, one_line(p)))
            })
            .unwrap_or_else(|| "a service is unhealthy".to_owned())
    }
}

impl ServiceReport {
    /// Compares the member list with the size the cluster should have: a member missing (one
    /// that never joined, or was removed) or one too many (a node added twice, or one that
    /// should have been removed) makes the service unhealthy. A service that did not answer
    /// is unhealthy already and has no list to count.
    fn expect_members(&mut self, expected: usize) {
        self.expected_members = Some(expected);
        if self.members.is_empty() && !self.healthy {
            return;
        }
        let found = self.members.len();
        // Named, so the member that should not be there (a node added twice, one to remove) is
        // found without a second command; one that never started has only its ID.
        let listed = self
            .members
            .iter()
            .map(|m| if m.name.is_empty() { &m.id } else { &m.name }.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let problem = match found.cmp(&expected) {
            std::cmp::Ordering::Equal => return,
            std::cmp::Ordering::Less => format!(
                "{} member{} missing: {found} listed ({listed}), {expected} expected",
                expected - found,
                if expected - found == 1 { "" } else { "s" }
            ),
            std::cmp::Ordering::Greater => format!(
                "{} extra member{}: {found} listed ({listed}), {expected} expected",
                found - expected,
                if found - expected == 1 { "" } else { "s" }
            ),
        };
        self.problems.push(problem);
        self.healthy = false;
    }

    /// A service none of whose endpoints answered.
    fn unreachable(service: &'static str, endpoints: Vec<EndpointReport>) -> Self {
        ServiceReport {
            service,
            healthy: false,
            leader: None,
            expected_members: None,
            write_check: None,
            members: Vec::new(),
            problems: endpoints
                .iter()
                .filter_map(EndpointReport::problem)
                .collect(),
            endpoints,
        }
    }

    /// A cluster service's report: members sorted by name, endpoints that did not answer and
    /// unhealthy members listed as problems, and healthy when it has one leader, a quorum, and
    /// passes `extra`.
    fn judged(
        service: &'static str,
        mut members: Vec<MemberReport>,
        voters: usize,
        endpoints: Vec<EndpointReport>,
        extra: impl FnOnce(&mut Vec<String>) -> bool,
    ) -> Self {
        let mut problems: Vec<String> = endpoints
            .iter()
            .filter_map(EndpointReport::problem)
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        for m in members.iter().filter(|m| !m.healthy) {
            problems.push(format!(
                "member {} ({}) is unhealthy: {}",
                m.name,
                m.id,
                m.error.as_deref().unwrap_or("its health endpoint says so")
            ));
        }
        let mut healthy = verdict(&members, voters, &mut problems);
        healthy &= extra(&mut problems);
        let leaders: Vec<_> = members.iter().filter(|m| m.role == "leader").collect();
        ServiceReport {
            service,
            healthy,
            leader: (leaders.len() == 1).then(|| leaders[0].name.clone()),
            expected_members: None,
            write_check: None,
            members,
            endpoints,
            problems,
        }
    }
}

/// The deployment flow's validation write/read: a key unique to this check written through the leader, read
/// back from every member's own view (so a member that does not replicate is caught), each
/// member waited for until `timeouts.request` has passed since the write, then removed. The
/// report gets the outcome, and a problem naming each member that never returned the value.
async fn write_check<P, PF, G, GF, D, DF>(
    ctx: &Context,
    report: &mut ServiceReport,
    api: impl Fn(&MemberReport) -> Option<Url>,
    put: P,
    get: G,
    delete: D,
) where
    P: FnOnce(Url, String, Vec<u8>) -> PF,
    PF: Future<Output = Result<(), String>>,
    G: Fn(Url, String) -> GF + Clone + Send + 'static,
    GF: Future<Output = Result<Option<Vec<u8>>, String>> + Send,
    D: FnOnce(Url, String) -> DF,
    DF: Future<Output = Result<(), String>>,
{
    let Some((leader_name, leader_url)) = report
        .members
        .iter()
        .find(|m| m.role == "leader")
        .and_then(|m| Some((m.name.clone(), api(m)?)))
    else {
        // No leader to write through: the verdict already says so.
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let key = format!(
        "/flint/health/{}/{nanos:x}-{}",
        ctx.config.node_id.as_str(),
        std::process::id()
    );
    // A JSON string, so that a store that keeps JSON takes it as well as one that keeps bytes.
    let value = serde_json::to_vec(&key).expect("a string always serializes");
    let written = std::time::Instant::now();
    if let Err(error) = put(leader_url.clone(), key.clone(), value.clone()).await {
        report.problems.push(format!(
            "write check: the write through the leader {leader_name} failed: {error}"
        ));
        report.healthy = false;
        report.write_check = Some(WriteCheck {
            key,
            written: false,
            error: Some(error),
            members: Vec::new(),
        });
        return;
    }
    let wait = ctx.config.timeouts.request;
    let mut reads = JoinSet::new();
    for (index, member) in report.members.iter().enumerate() {
        let client = api(member);
        let (get, key, value) = (get.clone(), key.clone(), value.clone());
        reads.spawn(async move {
            let Some(client) = client else {
                return (index, None, Some("no API URL".to_owned()));
            };
            loop {
                let last = match get(client.clone(), key.clone()).await {
                    Ok(Some(v)) if v == value => return (index, Some(written.elapsed()), None),
                    Ok(Some(_)) => "a different value".to_owned(),
                    Ok(None) => "no such key yet".to_owned(),
                    Err(e) => e,
                };
                if written.elapsed() >= wait {
                    return (index, None, Some(last));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
    }
    let mut read_backs: Vec<Option<ReadBack>> = report.members.iter().map(|_| None).collect();
    while let Some(done) = reads.join_next().await {
        let (index, seen_after, error) = done.expect("read-backs do not panic");
        read_backs[index] = Some(ReadBack {
            name: report.members[index].name.clone(),
            seen: seen_after.is_some(),
            after_ms: seen_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            error,
        });
    }
    let read_backs: Vec<ReadBack> = read_backs.into_iter().flatten().collect();
    for r in read_backs.iter().filter(|r| !r.seen) {
        report.problems.push(format!(
            "write check: member {} did not return the value written through {leader_name} \
             within {}: {}",
            r.name,
            seconds(wait),
            r.error.as_deref().unwrap_or("")
        ));
        report.healthy = false;
    }
    let error = delete(leader_url, key.clone()).await.err();
    if let Some(e) = &error {
        report
            .problems
            .push(format!("write check: {key} was left behind: {e}"));
    }
    report.write_check = Some(WriteCheck {
        key,
        written: true,
        error,
        members: read_backs,
    });
}

/// A duration as the configuration writes it: `10s`, or `1500ms` when not whole seconds.
fn seconds(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The verdict every cluster service gets: exactly one leader, and a quorum of healthy voters.
/// Adds the problems an operator should see to `problems`.
fn verdict(members: &[MemberReport], voters: usize, problems: &mut Vec<String>) -> bool {
    let healthy_voters = members
        .iter()
        .filter(|m| m.healthy && m.role != "learner")
        .count();
    let leaders: Vec<&str> = members
        .iter()
        .filter(|m| m.role == "leader")
        .map(|m| m.name.as_str())
        .collect();
    let quorum = voters / 2 + 1;
    if healthy_voters < quorum {
        problems.push(format!(
            "no quorum: {healthy_voters} of {voters} voting members healthy, {quorum} needed"
        ));
    }
    if leaders.len() != 1 {
        problems.push(format!(
            "expected exactly one leader, found {}",
            leaders.len()
        ));
    }
    healthy_voters >= quorum && leaders.len() == 1
}

fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<14} {:<17} {:<9} {:<8} ENDPOINT",
        "SERVICE", "MEMBER", "ID", "ROLE", "HEALTH"
    );
    for service in &report.services {
        for m in &service.members {
            let _ = writeln!(
                out,
                "{:<10} {:<14} {:<17} {:<9} {:<8} {}",
                service.service,
                m.name,
                m.id,
                m.role,
                if m.healthy { "ok" } else { "FAILED" },
                m.client_urls.first().map_or("-", String::as_str)
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{:<10} {:<12} {:<9} ENDPOINT",
        "SERVICE", "ASKED AS", "ANSWERED"
    );
    for service in &report.services {
        for e in &service.endpoints {
            let _ = writeln!(
                out,
                "{:<10} {:<12} {:<9} {}",
                service.service,
                e.field,
                if e.answered { "yes" } else { "no" },
                e.url
            );
        }
    }
    let _ = writeln!(out);
    for service in &report.services {
        let verdict = if service.healthy {
            "healthy"
        } else {
            "UNHEALTHY"
        };
        if service.service == "iam" {
            let _ = writeln!(out, "iam: {verdict}");
        } else {
            let _ = writeln!(
                out,
                "{}: {} members, leader {}: {verdict}",
                service.service,
                service.members.len(),
                service.leader.as_deref().unwrap_or("none"),
            );
        }
        if let Some(check) = service.write_check.as_ref().filter(|c| c.written) {
            let seen: Vec<u64> = check.members.iter().filter_map(|m| m.after_ms).collect();
            let _ = writeln!(
                out,
                "  write check: read back from {} of {} members{}",
                seen.len(),
                check.members.len(),
                seen.iter().max().map_or(String::new(), |ms| format!(
                    ", the last {ms} ms after the write"
                ))
            );
        }
        for problem in &service.problems {
            let _ = writeln!(out, "  - {problem}");
        }
    }
    let _ = writeln!(
        out,
        "cluster: {}",
        if report.healthy {
            "healthy"
        } else {
            "UNHEALTHY"
        }
    );
    out
}

/// A per-service metric's value.
type ServiceGauge = fn(&ServiceReport) -> usize;

fn write_textfile(path: &Path, report: &Report) -> crate::Result<()> {
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    };
    let per_service: [(&str, &str, ServiceGauge); 3] = [
        (
            "flint_cluster_healthy",
            "1 when the service has quorum and one leader.",
            |s| usize::from(s.healthy),
        ),
        ("flint_cluster_members", "Members the cluster lists.", |s| {
            s.members.len()
        }),
        (
            "flint_cluster_leaders",
            "Members that report themselves leader.",
            |s| s.members.iter().filter(|m| m.role == "leader").count(),
        ),
    ];
    for (name, help, value) in per_service {
        gauge(&mut out, name, help);
        for s in &report.services {
            let _ = writeln!(out, "{name}{{service=\"{}\"}} {}", s.service, value(s));
        }
    }
    gauge(
        &mut out,
        "flint_member_healthy",
        "1 when the member's health endpoint answers healthy.",
    );
    for s in &report.services {
        for m in &s.members {
            let _ = writeln!(
                out,
                "flint_member_healthy{{service=\"{}\",member=\"{}\",id=\"{}\"}} {}",
                s.service,
                label(&m.name),
                label(&m.id),
                u8::from(m.healthy)
            );
        }
    }
    gauge(
        &mut out,
        "flint_endpoint_up",
        "1 when the configured endpoint answered the check's request.",
    );
    for s in &report.services {
        for e in &s.endpoints {
            let _ = writeln!(
                out,
                "flint_endpoint_up{{service=\"{}\",endpoint=\"{}\",field=\"{}\"}} {}",
                s.service,
                label(&e.url),
                e.field,
                u8::from(e.answered)
            );
        }
    }
    gauge(
        &mut out,
        "flint_health_check_timestamp_seconds",
        "When this check ran.",
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let _ = writeln!(out, "flint_health_check_timestamp_seconds {now}");
    // 0644: node_exporter reads it as its own user, and it holds no secret (SECURITY.md). The
    // temporary file (`.NAME.tmp.PID`) does not end in `.prom`: the collector never reads it.
    crate::state::write_atomic(path, out.as_bytes(), 0o644)?;
    Ok(())
}

/// A Prometheus label value: member names come from the cluster and may hold any character.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_error_is_one_line() {
        let url = Url::parse("https://10.0.200.10:2379").unwrap();
        let report = EndpointReport::new("peers", &url, Err("refused:\nINFO forged line"));
        assert!(!report.answered);
        assert_eq!(
            report.problem().as_deref(),
            Some(r"peers https://10.0.200.10:2379/: refused:\nINFO forged line")
        );
    }

    #[test]
    fn textfile_metrics_escape_names_from_the_cluster() {
        let report = Report {
            schema_version: SCHEMA_VERSION,
            healthy: false,
            services: vec![ServiceReport {
                service: "etcd",
                healthy: false,
                leader: None,
                expected_members: None,
                write_check: None,
                members: vec![MemberReport {
                    id: "8e9e05c52164694d".into(),
                    name: "odd\"name\\".into(),
                    client_urls: Vec::new(),
                    role: "leader",
                    healthy: true,
                    error: None,
                }],
                endpoints: Vec::new(),
                problems: Vec::new(),
            }],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flint.prom");
        write_textfile(&path, &report).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("flint_cluster_healthy{service=\"etcd\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("flint_cluster_members{service=\"etcd\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("flint_cluster_leaders{service=\"etcd\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"member="odd\"name\\",id="8e9e05c52164694d"} 1"#),
            "{text}"
        );
    }
}
