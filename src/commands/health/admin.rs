//! chainfire's and flaredb's health through their admin API, and IAM's reachability.

use tokio::task::JoinSet;

use super::{MemberReport, ServiceReport};
use crate::commands::Context;
use crate::config::{Service, join_path};
use crate::engines::admin::{MemberList, Role};
use crate::engines::iam::Iam;

pub(super) async fn check(ctx: &Context, service: Service) -> crate::Result<ServiceReport> {
    let settings = ctx.config.admin(service)?;
    let admin = ctx.admin(settings);
    let mut problems = Vec::new();
    let mut list: Option<MemberList> = None;
    for endpoint in settings.endpoints.iter() {
        match admin.members(endpoint).await {
            Ok((_, answer)) => {
                list = Some(answer);
                break;
            }
            Err(e) => problems.push(format!("cannot list members: {e}")),
        }
    }
    let Some(list) = list else {
        return Ok(ServiceReport::unreachable(service.name(), problems));
    };
    problems.clear();

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
            error: Some(format!("no API URL can be derived from {:?}", m.raft_addr)),
        })
        .collect();
    while let Some(done) = probes.join_next().await {
        let (index, url, outcome) = done.expect("health probes do not panic");
        let member = &mut members[index];
        member.client_urls = vec![url.to_string()];
        member.healthy = outcome.is_ok();
        member.error = outcome.err().map(|e| e.to_string());
    }
    let voters = list
        .members
        .iter()
        .filter(|m| m.role != Role::Learner)
        .count();
    let named_leader = list.leader.clone();
    Ok(ServiceReport::judged(
        service.name(),
        members,
        voters,
        problems,
        |problems| {
            if !list.has_leader() {
                problems.push(format!(
                    "the member list names leader {named_leader:?}, which is not listed as leader"
                ));
                return false;
            }
            true
        },
    ))
}

/// IAM is stateless: one reachable instance on this node is what the seed's check asks for.
pub(super) async fn check_iam(ctx: &Context) -> ServiceReport {
    let settings = ctx.config.iam();
    let outcome = Iam::new(ctx.http.clone())
        .reachable(&settings.health_url)
        .await;
    let healthy = outcome.is_ok();
    let error = outcome.err().map(|e| e.to_string());
    let mut problems = Vec::new();
    if let Some(e) = &error {
        problems.push(format!("IAM is not reachable: {e}"));
    }
    ServiceReport {
        service: "iam",
        healthy,
        leader: None,
        members: vec![MemberReport {
            id: "-".into(),
            name: "local".into(),
            client_urls: vec![settings.health_url.to_string()],
            role: "instance",
            healthy,
            error,
        }],
        problems,
    }
}
