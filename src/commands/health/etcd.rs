//! etcd's health: the member list, then each member's status (whom it follows) and `/health`.

use tokio::task::JoinSet;
use url::Url;

use super::{MemberReport, ServiceReport, ask_each};
use crate::commands::Context;
use crate::config::{join_path, one_line};
use crate::engines::etcd::hex_id;

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
    let etcd = ctx.etcd();
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
            // One after the other, so that `/health` reuses the connection `status` opened: asked
            // at once, each would pay a TLS handshake of its own, the costliest part of a check
            // on a small node.
            let asked = async {
                let status = etcd.status(&client).await?;
                let healthy = etcd.healthy(&health_url).await?;
                Ok::<_, crate::engines::Error>((status, healthy))
            };
            match asked.await {
                Ok((status, healthy)) => Probe {
                    index,
                    leader_of: (status.leader != 0).then_some(status.leader),
                    is_leader: status.is_leader(),
                    healthy: healthy && status.errors.is_empty(),
                    error: (!status.errors.is_empty()).then(|| one_line(&status.errors.join("; "))),
                },
                Err(e) => Probe {
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

/// The write check for etcd (see `super::write_check`): `kv/put` through the leader, a
/// serializable `kv/range` on each member (answered from the member's own store, without the
/// leader), `kv/deleterange`.
pub(super) async fn write_check(ctx: &Context, report: &mut ServiceReport) {
    let etcd = ctx.etcd();
    let (put, get, delete) = (etcd.clone(), etcd.clone(), etcd);
    super::write_check(
        ctx,
        report,
        |member| Url::parse(member.client_urls.first()?).ok(),
        |url, key, value| async move {
            put.put(&url, key.as_bytes(), &value)
                .await
                .map_err(|e| one_line(&e.to_string()))
        },
        move |url, key| {
            let get = get.clone();
            async move {
                get.local_value(&url, key.as_bytes())
                    .await
                    .map_err(|e| one_line(&e.to_string()))
            }
        },
        |url, key| async move {
            delete
                .delete(&url, key.as_bytes())
                .await
                .map_err(|e| one_line(&e.to_string()))
        },
    )
    .await;
}
