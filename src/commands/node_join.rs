//! `flint node-join` (also the binary invoked as `node-join`): the manual recovery command.
//! With no flag it only looks: each service's marker, the membership as the cluster sees it,
//! and what a join would do. `--force` and `--abandon` change things, and nothing else does.

use serde::Serialize;
use tracing::info;

use super::{Context, iam_setup, join_admin, join_etcd};
use crate::config::{AdminSettings, EtcdSettings, Service, one_line};
use crate::engines::Error;
use crate::engines::etcd::{bare_url, hex_id};
use crate::exit::ExitStatus;
use crate::state::{Marker, MarkerKind};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this service (default: every service the configuration names).
    #[arg(long, value_enum)]
    pub service: Option<Service>,
    /// Run the join again although its marker exists (the marker is rewritten on success).
    #[arg(long)]
    pub force: bool,
    /// etcd only: remove this node's learner or never-started member, so its learner slot is
    /// free for another node, and delete etcd.env.
    #[arg(long, conflicts_with = "force")]
    pub abandon: bool,
    /// Print the state as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One service's state, as `node-join` prints it.
#[derive(Debug, Serialize)]
pub struct ServiceState {
    pub service: &'static str,
    pub marker: Option<Marker>,
    /// This node as the cluster lists it; `None` when it is not listed (or for IAM).
    pub member: Option<MemberState>,
    /// Why the membership could not be read, when it could not.
    pub error: Option<String>,
    /// What `flint join` (or `iam-setup`) would do now.
    pub next: String,
}

#[derive(Debug, Serialize)]
pub struct MemberState {
    pub id: String,
    pub role: String,
    pub started: bool,
}

pub async fn run(ctx: &Context, args: Args) -> crate::Result<ExitStatus> {
    let services: Vec<Service> = match args.service {
        Some(service) => vec![service],
        None => ctx.config.configured_services().to_vec(),
    };
    if args.abandon {
        if args.service != Some(Service::Etcd) {
            return Err(super::UsageError(
                "--abandon applies to etcd only: `flint node-join --service etcd --abandon`".into(),
            )
            .into());
        }
        abandon_etcd(ctx).await?;
        return Ok(ExitStatus::Success);
    }
    if args.force {
        for service in services {
            let _lock = ctx.state.lock(service, &ctx.deadline).await?;
            info!("--force: running the {service} step again, whatever its marker says");
            match service {
                Service::Etcd => join_etcd::run(ctx, None).await?,
                Service::Chainfire | Service::Flaredb => join_admin::run(ctx, service).await?,
                Service::Iam => iam_setup::run(ctx).await?,
            }
        }
        return Ok(ExitStatus::Success);
    }
    let mut states = Vec::new();
    for service in services {
        states.push(inspect(ctx, service).await?);
    }
    if args.json {
        let json = serde_json::to_string_pretty(&states).expect("states always serialize");
        println!("{}", crate::secrets::scrub(&json));
    } else {
        for state in &states {
            print!("{}", crate::logging::safe_lines(&describe(state)));
        }
    }
    Ok(ExitStatus::Success)
}

async fn inspect(ctx: &Context, service: Service) -> crate::Result<ServiceState> {
    let marker = ctx.state.marker(MarkerKind::of(service))?;
    // The configuration is read before the cluster is asked, and its errors end the command
    // (exit 78): only what the cluster did or said becomes the report's `error`.
    let membership = match service {
        Service::Etcd => {
            let settings = ctx.config.etcd()?;
            let peer_url = bare_url(ctx.config.etcd_peer_url()?);
            etcd_member(ctx, settings, &peer_url).await.map(Some)
        }
        Service::Chainfire | Service::Flaredb => {
            let settings = ctx.config.admin(service)?;
            admin_member(ctx, settings).await.map(Some)
        }
        Service::Iam => Ok(None),
    };
    let (member, error) = match membership {
        Ok(found) => (found.flatten(), None),
        Err(e) => (None, Some(one_line(&e.to_string()))),
    };
    let next = next_step(service, marker.is_some(), member.as_ref(), error.is_some());
    Ok(ServiceState {
        service: service.name(),
        marker,
        member,
        error,
        next,
    })
}

fn next_step(
    service: Service,
    marked: bool,
    member: Option<&MemberState>,
    unknown: bool,
) -> String {
    if service == Service::Iam {
        return if marked {
            "nothing: IAM's initial setup is done".into()
        } else {
            "`flint iam-setup` will run IAM's initial setup (or find it done and record it)".into()
        };
    }
    let voter = member.is_some_and(|m| m.started && m.role != "learner");
    match (marked, member, unknown) {
        (_, _, true) => {
            "cannot tell: the cluster's member list could not be read (see error)".into()
        }
        (true, _, _) if voter => "nothing: joined".into(),
        (true, None, _) => format!(
            "the marker says joined but {service} does not list this node: \
             `flint node-join --service {service} --force` joins again"
        ),
        (true, Some(_), _) => format!(
            "the marker says joined but this node is not a started voter yet: \
             `flint node-join --service {service} --force` finishes the join"
        ),
        (false, None, _) => format!("`flint join {service}` will add this node"),
        (false, Some(_), _) if voter => format!(
            "{service} lists this node but the marker is missing: `flint join {service}` \
             confirms the membership and writes it"
        ),
        (false, Some(_), _) if service == Service::Etcd => "a join is under way: start etcd, \
             then `flint join etcd --phase promote` promotes it; if this node will never come \
             up, `flint node-join --service etcd --abandon` frees the learner slot"
            .into(),
        (false, Some(_), _) => format!(
            "a join is under way: `flint join {service}` waits until the member has caught up"
        ),
    }
}

async fn etcd_member(
    ctx: &Context,
    settings: &EtcdSettings,
    peer_url: &str,
) -> Result<Option<MemberState>, Error> {
    let etcd = ctx.etcd();
    let (_, list) = etcd.voter(&settings.endpoints).await?;
    Ok(list.with_peer_url(peer_url).map(|m| MemberState {
        id: hex_id(m.id),
        role: if m.is_learner { "learner" } else { "voter" }.into(),
        started: m.started(),
    }))
}

async fn admin_member(
    ctx: &Context,
    settings: &AdminSettings,
) -> Result<Option<MemberState>, Error> {
    let admin = ctx.admin(settings);
    let (_, list) = admin.first_members(&settings.endpoints).await?;
    Ok(list
        .member(ctx.config.node_id.as_str())
        .map(|m| MemberState {
            id: m.id.clone(),
            role: m.role.name().into(),
            started: true,
        }))
}

/// Removes this node's etcd member when it is a learner or never started; a started voter is
/// refused: removing it costs the cluster a vote, which is `etcdctl member remove`'s decision.
async fn abandon_etcd(ctx: &Context) -> crate::Result<()> {
    let _lock = ctx.state.lock(Service::Etcd, &ctx.deadline).await?;
    let settings = ctx.config.etcd()?;
    let peer_url = bare_url(ctx.config.etcd_peer_url()?);
    let etcd = ctx.etcd();
    let (endpoint, list) = etcd.voter(&settings.endpoints).await?;
    let env_file = ctx.state.path().join(join_etcd::ENV_FILE);
    match list.with_peer_url(&peer_url) {
        None => info!("no etcd member has peer URL {peer_url}: nothing to abandon"),
        Some(m) if m.started() && !m.is_learner => {
            return Err(Error::Conflict(format!(
                "member {} ({}) is a started voter: --abandon only removes a learner or a member \
                 that never started; use `etcdctl member remove {}` if this node is gone for good",
                hex_id(m.id),
                m.name,
                hex_id(m.id)
            ))
            .into());
        }
        Some(m) => {
            info!(
                "removing member {} (peer URL {peer_url}) through {endpoint}",
                hex_id(m.id)
            );
            etcd.remove(&endpoint, m.id).await?;
            info!("removed member {}: the learner slot is free", hex_id(m.id));
        }
    }
    match std::fs::remove_file(&env_file) {
        Ok(()) => info!("removed {}", env_file.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(crate::state::Error::Io {
                file: env_file,
                action: "remove",
                source,
            }
            .into());
        }
    }
    Ok(())
}

fn describe(state: &ServiceState) -> String {
    let marker = match &state.marker {
        Some(m) => format!(
            "present (member {}, leader {}, at {})",
            m.member_id.as_deref().unwrap_or("-"),
            m.leader.as_deref().unwrap_or("-"),
            m.joined_at
        ),
        None => "absent".into(),
    };
    let member = match (&state.member, &state.error) {
        (_, Some(e)) => format!("unknown: {e}"),
        (Some(m), None) => format!(
            "{} as {}{}",
            m.id,
            m.role,
            if m.started { "" } else { ", never started" }
        ),
        (None, None) if state.service == "iam" => "-".into(),
        (None, None) => "not a member".into(),
    };
    format!(
        "{}:\n  marker: {marker}\n  member: {member}\n  next:   {}\n",
        state.service, state.next
    )
}
