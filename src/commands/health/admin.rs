//! chainfire's and flaredb's health through their admin API, and IAM's reachability.

use tokio::task::JoinSet;
use url::Url;

use super::{EndpointReport, MemberReport, ServiceReport, ask_each};
use crate::commands::Context;
use crate::config::{AdminSettings, Service, join_path, one_line};
use crate::engines::admin::Role;
use crate::engines::iam::Iam;

pub(super) async fn check(ctx: &Context, service: Service) -> crate::Result<ServiceReport> {
    let settings = ctx.config.admin(service)?;
    Ok(report(ctx, settings, settings.endpoints.by_field()).await)
}

/// The cluster as `flint health` judges it, each of `asked` (named by its configuration field)
/// asked for the member list. A bootstrap node waits for this verdict, so a node that has
/// recorded its join is one `flint health` calls healthy.
pub(crate) async fn report(
    ctx: &Context,
    settings: &AdminSettings,
    asked: Vec<(&'static str, Url)>,
) -> ServiceReport {
    let service = settings.service;
    let admin = ctx.admin(settings);
    let (list, endpoints) = ask_each(asked, |url| {
        let admin = admin.clone();
        async move { admin.members(&url).await.map(|(_, list)| list) }
    })
    .await;
    let Some(list) = list else {
        return ServiceReport::unreachable(service.name(), endpoints);
    };

    let mut probes = JoinSet::new();
    for (index, member) in list.members.iter().enumerate() {
        let Some(base) = settings.member_url(&member.raft_addr) else {
            continue;
        };
        let url = join_path(&base, &settings.paths.health);
        let admin = admin.clone();
        probes.spawn(async move {
            let outcome = admin.healthy(&url).await;
            (index, url, outcome)
        });
    }
    let mut members: Vec<MemberReport> = list
        .members
        .iter()
        .map(|m| MemberReport {
            id: m.id.clone(),
            name: m.id.clone(),
            client_urls: Vec::new(),
            role: m.role.name(),
            healthy: false,
            error: Some(one_line(&format!(
                "no API URL can be derived from {:?}",
                m.raft_addr
            ))),
        })
        .collect();
    while let Some(done) = probes.join_next().await {
        let (index, url, outcome) = done.expect("health probes do not panic");
        let member = &mut members[index];
        member.client_urls = vec![url.to_string()];
        member.healthy = outcome.is_ok();
        member.error = outcome.err().map(|e| one_line(&e.to_string()));
    }
    let voters = list
        .members
        .iter()
        .filter(|m| m.role != Role::Learner)
        .count();
    let named_leader = list.leader.clone();
    ServiceReport::judged(service.name(), members, voters, endpoints, |problems| {
        if !list.has_leader() {
            problems.push(format!(
                "the member list names leader {named_leader:?}, which is not listed as leader"
            ));
            return false;
        }
        true
    })
}

/// IAM is stateless: one reachable instance on this node is what the seed's check asks for.
pub(super) async fn check_iam(ctx: &Context) -> ServiceReport {
    let settings = ctx.config.iam();
    let outcome = Iam::new(ctx.http.clone())
        .reachable(&settings.health_url)
        .await;
    let endpoint = EndpointReport::new("health_url", &settings.health_url, outcome);
    let mut problems = Vec::new();
    if let Some(e) = &endpoint.error {
        problems.push(format!("IAM is not reachable: {e}"));
    }
    ServiceReport {
        service: "iam",
        healthy: endpoint.answered,
        expected_members: None,
        write_check: None,
        leader: None,
        members: vec![MemberReport {
            id: "-".into(),
            name: "local".into(),
            client_urls: vec![settings.health_url.to_string()],
            role: "instance",
            healthy: endpoint.answered,
            error: endpoint.error.clone(),
        }],
        endpoints: vec![endpoint],
        problems,
    }
}
