//! chainfire's and flaredb's health through their admin API, and IAM's reachability.

use tokio::task::JoinSet;
use url::Url;

use super::{EndpointReport, MemberReport, ServiceReport, ask_each};
use crate::commands::Context;
use crate::config::{AdminSettings, Service, join_path, one_line};
use crate::engines::admin::Role;

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

/// IAM is stateless: one reachable instance on this node is what the deployment flow's validation asks for.
pub(super) async fn check_iam(ctx: &Context) -> ServiceReport {
    let settings = ctx.config.iam();
    let outcome = ctx.iam().reachable(&settings.health_url).await;
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

/// The write check for chainfire and flaredb (see `super::write_check`), through the services'
/// key-value API on each member's API URL: `PUT /v1/kv/{key}` on the leader, `GET` on each
/// member (its own view: 200 with the value, 404 while it has none), `DELETE` on the leader.
/// The join token is not sent: it is for the admin API.
pub(super) async fn write_check(ctx: &Context, service: Service, report: &mut ServiceReport) {
    let Ok(settings) = ctx.config.admin(service) else {
        return;
    };
    let health_path = settings.paths.health.clone();
    let kv_url =
        |base: &Url, key: &str| join_path(base, &format!("/v1/kv/{}", key.trim_start_matches('/')));
    let (put, get, delete) = (ctx.http.clone(), ctx.http.clone(), ctx.http.clone());
    super::write_check(
        ctx,
        report,
        // A member's API: its health URL (as the report lists it) without the health path.
        |member| {
            let mut url = Url::parse(member.client_urls.first()?).ok()?;
            let base = url.path().strip_suffix(health_path.as_str())?.to_owned();
            url.set_path(if base.is_empty() { "/" } else { &base });
            Some(url)
        },
        |url, key, _value| async move {
            let url = kv_url(&url, &key);
            // The value the check compares is this body: the key as a JSON string.
            let answer = put
                .send(
                    hyper::Method::PUT,
                    &url,
                    Some(&serde_json::json!(key)),
                    None,
                )
                .await
                .map_err(|e| one_line(&e.to_string()))?;
            kv_status(&url, &answer).map(drop)
        },
        move |url, key| {
            let (get, url) = (get.clone(), kv_url(&url, &key));
            async move {
                let answer = get.get(&url).await.map_err(|e| one_line(&e.to_string()))?;
                if answer.status == hyper::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                kv_status(&url, &answer).map(|()| Some(answer.body.to_vec()))
            }
        },
        |url, key| async move {
            let url = kv_url(&url, &key);
            let answer = delete
                .send(hyper::Method::DELETE, &url, None, None)
                .await
                .map_err(|e| one_line(&e.to_string()))?;
            kv_status(&url, &answer)
        },
    )
    .await;
}

/// A 2xx, or the status and the start of the body on one line.
fn kv_status(url: &Url, answer: &crate::http::Answer) -> Result<(), String> {
    if answer.status.is_success() {
        return Ok(());
    }
    let snippet: String = String::from_utf8_lossy(&answer.body)
        .chars()
        .take(120)
        .collect();
    Err(one_line(&format!(
        "{url} answered HTTP {}: {snippet}",
        answer.status.as_u16()
    )))
}
