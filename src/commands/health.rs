//! `flint health`: each configured service's quorum (members, exactly one leader) and every
//! member's health endpoint, as a table, as JSON, and as node_exporter textfile metrics.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::task::JoinSet;
use url::Url;

use super::Context;
use crate::config::join_path;
use crate::engines::etcd::{Etcd, MemberList, hex_id};

#[derive(Debug, Serialize)]
pub struct Report {
    pub healthy: bool,
    pub services: Vec<ServiceReport>,
}

#[derive(Debug, Serialize)]
pub struct ServiceReport {
    pub service: &'static str,
    /// A leader that every reachable member agrees on, and a quorum of healthy voters.
    pub healthy: bool,
    pub leader: Option<String>,
    pub members: Vec<MemberReport>,
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

pub async fn run(ctx: &Context, json: bool, textfile: Option<&Path>) -> anyhow::Result<bool> {
    let services = vec![check_etcd(ctx).await?];
    let report = Report {
        healthy: services.iter().all(|s| s.healthy),
        services,
    };
    if let Some(path) = textfile {
        write_textfile(path, &report)?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report always serializes")
        );
    } else {
        print!("{}", table(&report));
    }
    Ok(report.healthy)
}

struct Probe {
    index: usize,
    leader_of: Option<u64>,
    is_leader: bool,
    healthy: bool,
    error: Option<String>,
}

async fn check_etcd(ctx: &Context) -> anyhow::Result<ServiceReport> {
    let settings = ctx.config.etcd()?;
    let etcd = Etcd::new(ctx.http.clone());
    let mut problems = Vec::new();
    let mut asked = settings.endpoints.iter().cloned().collect::<Vec<_>>();
    asked.push(settings.local_url.clone());
    let mut list: Option<MemberList> = None;
    for endpoint in &asked {
        match etcd.member_list(endpoint).await {
            Ok(answer) => {
                list = Some(answer);
                break;
            }
            Err(e) => problems.push(format!("cannot list members: {e}")),
        }
    }
    let Some(list) = list else {
        return Ok(ServiceReport {
            service: "etcd",
            healthy: false,
            leader: None,
            members: Vec::new(),
            problems,
        });
    };
    problems.clear();

    let mut probes = JoinSet::new();
    for (index, member) in list.members.iter().enumerate() {
        let Some(client) = member.client_urls.first().and_then(|u| Url::parse(u).ok()) else {
            continue;
        };
        let etcd = etcd.clone();
        probes.spawn(async move {
            let health_url = join_path(&client, "/health");
            let (status, health) = tokio::join!(etcd.status(&client), etcd.healthy(&health_url));
            match (status, health) {
                (Ok(status), Ok(healthy)) => Probe {
                    index,
                    leader_of: (status.leader != 0).then_some(status.leader),
                    is_leader: status.is_leader(),
                    healthy: healthy && status.errors.is_empty(),
                    error: (!status.errors.is_empty()).then(|| status.errors.join("; ")),
                },
                (Err(e), _) | (_, Err(e)) => Probe {
                    index,
                    leader_of: None,
                    is_leader: false,
                    healthy: false,
                    error: Some(e.to_string()),
                },
            }
        });
    }
    let mut results: Vec<Option<Probe>> = list.members.iter().map(|_| None).collect();
    while let Some(done) = probes.join_next().await {
        let probe = done.expect("health probes do not panic");
        let index = probe.index;
        results[index] = Some(probe);
    }

    let mut members = Vec::new();
    let mut leaders = Vec::new();
    let mut seen_leaders = Vec::new();
    let (mut voters, mut healthy_voters) = (0, 0);
    for (member, probe) in list.members.iter().zip(&results) {
        let name = if member.started() {
            member.name.clone()
        } else {
            "(unstarted)".to_owned()
        };
        let (healthy, error) = match probe {
            Some(p) => (p.healthy, p.error.clone()),
            None => (false, Some("added but never started".to_owned())),
        };
        let is_leader = probe.as_ref().is_some_and(|p| p.is_leader);
        if let Some(leader) = probe.as_ref().and_then(|p| p.leader_of)
            && !seen_leaders.contains(&leader)
        {
            seen_leaders.push(leader);
        }
        if is_leader {
            leaders.push(name.clone());
        }
        if !member.is_learner {
            voters += 1;
            if healthy {
                healthy_voters += 1;
            }
        }
        if !healthy {
            problems.push(format!(
                "member {name} ({}) is unhealthy: {}",
                hex_id(member.id),
                error.as_deref().unwrap_or("its health endpoint says so")
            ));
        }
        members.push(MemberReport {
            id: hex_id(member.id),
            name,
            client_urls: member.client_urls.clone(),
            role: if is_leader {
                "leader"
            } else if member.is_learner {
                "learner"
            } else {
                "follower"
            },
            healthy,
            error,
        });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
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
    if seen_leaders.len() > 1 {
        problems.push(format!(
            "members disagree on the leader: {}",
            seen_leaders
                .iter()
                .map(|id| hex_id(*id))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(ServiceReport {
        service: "etcd",
        healthy: healthy_voters >= quorum && leaders.len() == 1 && seen_leaders.len() <= 1,
        leader: (leaders.len() == 1).then(|| leaders[0].clone()),
        members,
        problems,
    })
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
    for service in &report.services {
        let _ = writeln!(
            out,
            "{}: {} members, leader {}: {}",
            service.service,
            service.members.len(),
            service.leader.as_deref().unwrap_or("none"),
            if service.healthy {
                "healthy"
            } else {
                "UNHEALTHY"
            }
        );
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

fn write_textfile(path: &Path, report: &Report) -> anyhow::Result<()> {
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    };
    gauge(
        &mut out,
        "flint_cluster_healthy",
        "1 when the service has quorum and one leader.",
    );
    for s in &report.services {
        let _ = writeln!(
            out,
            "flint_cluster_healthy{{service=\"{}\"}} {}",
            s.service,
            u8::from(s.healthy)
        );
    }
    gauge(
        &mut out,
        "flint_cluster_members",
        "Members the cluster lists.",
    );
    for s in &report.services {
        let _ = writeln!(
            out,
            "flint_cluster_members{{service=\"{}\"}} {}",
            s.service,
            s.members.len()
        );
    }
    gauge(
        &mut out,
        "flint_cluster_leaders",
        "Members that report themselves leader.",
    );
    for s in &report.services {
        let leaders = s.members.iter().filter(|m| m.role == "leader").count();
        let _ = writeln!(
            out,
            "flint_cluster_leaders{{service=\"{}\"}} {leaders}",
            s.service
        );
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
                m.name,
                m.id,
                u8::from(m.healthy)
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
    crate::state::write_atomic(path, out.as_bytes(), 0o644)?;
    Ok(())
}
