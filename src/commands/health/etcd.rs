//! etcd's health: the member list, then each member's status (whom it follows) and `/health`.

use tokio::task::JoinSet;
use url::Url;

use super::{MemberReport, ReadBack, ServiceReport, WriteCheck, ask_each};
use crate::commands::Context;
use crate::config::{join_path, one_line};
use crate::engines::etcd::{Etcd, hex_id};

struct Probe {
    index: usize,
    leader_of: Option<u64>,
    is_leader: bool,
    healthy: bool,
    error: Option<String>,
}

pub(super) async fn check(ctx: &Context) -> crate::Result<ServiceReport> {
    let settings = ctx.config.etcd()?;
    let mut asked = settings.endpoints.by_field();
    // The local member is asked last, when it is not already among the configured ones.
    if !asked.iter().any(|(_, url)| *url == settings.local_url) {
        asked.push(("local_url", settings.local_url.clone()));
    }
    Ok(report(ctx, asked).await)
}

/// The cluster as `flint health` judges it, each of `asked` (named by its configuration field)
/// asked for the member list. A bootstrap node waits for this verdict, so a node that has
/// recorded its join is one `flint health` calls healthy.
pub(crate) async fn report(ctx: &Context, asked: Vec<(&'static str, Url)>) -> ServiceReport {
    let etcd = Etcd::new(ctx.http.clone());
    let (list, endpoints) = ask_each(asked, |url| {
        let etcd = etcd.clone();
        async move { etcd.member_list(&url).await }
    })
    .await;
    let Some(list) = list else {
        return ServiceReport::unreachable("etcd", endpoints);
    };

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
                    error: (!status.errors.is_empty()).then(|| one_line(&status.errors.join("; "))),
                },
                (Err(e), _) | (_, Err(e)) => Probe {
                    index,
                    leader_of: None,
                    is_leader: false,
                    healthy: false,
                    error: Some(one_line(&e.to_string())),
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
    let mut seen_leaders = Vec::new();
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
        if let Some(leader) = probe.as_ref().and_then(|p| p.leader_of)
            && !seen_leaders.contains(&leader)
        {
            seen_leaders.push(leader);
        }
        let is_leader = probe.as_ref().is_some_and(|p| p.is_leader);
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
    let voters = list.members.iter().filter(|m| !m.is_learner).count();
    ServiceReport::judged("etcd", members, voters, endpoints, |problems| {
        if seen_leaders.len() > 1 {
            problems.push(format!(
                "members disagree on the leader: {}",
                seen_leaders
                    .iter()
                    .map(|id| hex_id(*id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            return false;
        }
        true
    })
}

/// The seed's "test write/read" for etcd: a key unique to this check written through the
/// leader, read back from every member's own store (a serializable range, which the member
/// answers without the leader, so one that does not replicate is caught), each member waited
/// for until `timeouts.request` has passed since the write, then removed. The report gets the
/// outcome, and a problem naming each member that never returned the value.
pub(super) async fn write_check(ctx: &Context, report: &mut ServiceReport) {
    let Some(leader) = report
        .members
        .iter()
        .find(|m| m.role == "leader")
        .and_then(|m| Some((m.name.clone(), Url::parse(m.client_urls.first()?).ok()?)))
    else {
        // No leader to write through: the verdict already says so.
        return;
    };
    let (leader_name, leader_url) = leader;
    let etcd = Etcd::new(ctx.http.clone());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let key = format!(
        "/flint/health/{}/{nanos:x}-{}",
        ctx.config.node_id.as_str(),
        std::process::id()
    );
    let value = key.as_bytes().to_vec();
    let written = std::time::Instant::now();
    if let Err(e) = etcd.put(&leader_url, key.as_bytes(), &value).await {
        let error = one_line(&e.to_string());
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
        let client = member.client_urls.first().and_then(|u| Url::parse(u).ok());
        let (etcd, key, value) = (etcd.clone(), key.clone(), value.clone());
        reads.spawn(async move {
            let Some(client) = client else {
                return (
                    index,
                    None,
                    Some("no client URL (never started)".to_owned()),
                );
            };
            loop {
                let last = match etcd.local_value(&client, key.as_bytes()).await {
                    Ok(Some(v)) if v == value => return (index, Some(written.elapsed()), None),
                    Ok(Some(_)) => "a different value".to_owned(),
                    Ok(None) => "no such key yet".to_owned(),
                    Err(e) => one_line(&e.to_string()),
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
    let mut error = None;
    if let Err(e) = etcd.delete(&leader_url, key.as_bytes()).await {
        let e = one_line(&e.to_string());
        report
            .problems
            .push(format!("write check: {key} was left behind: {e}"));
        error = Some(e);
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
