//! Reports of first-boot steps to the boot server, so its fleet view follows each machine past
//! its installer: one POST to `report_url` after a join, IAM's setup or the first-boot health
//! check, over https with the node's client certificate (the boot server knows the node by it;
//! the report carries no secret and no name of its own).
//!
//! A report never changes what the command does: it is sent once the command is over, gives up
//! after `DEADLINE`, and its failure is one warning line; the exit status is the command's.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tracing::{info, warn};
use url::Url;

use crate::commands::Context;
use crate::commands::join_etcd::Phase;
use crate::config::{Service, Timeouts};
use crate::exit::ExitStatus;
use crate::state::MarkerKind;

/// The whole report, connect and TLS handshake included. A first boot waits this long at most
/// for a boot server that is gone; a join's own retries take far longer.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// The version of the report's shape (docs/journeys.md): flint-boot refuses one it does not know.
const SCHEMA_VERSION: u32 = 1;

/// The longest member ID a report carries, by the boot server's rule.
const MAX_MEMBER_ID: usize = 64;

/// What the command was, as the boot server names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub service: &'static str,
    pub step: &'static str,
    /// The marker that holds the member ID once the step succeeded.
    marker: Option<MarkerKind>,
}

impl Step {
    /// A join of `service`; only etcd's is in phases.
    pub fn join(service: Service, phase: Option<Phase>) -> Step {
        let step = match phase {
            Some(Phase::Add) => "add",
            Some(Phase::Promote) => "promote",
            None => "join",
        };
        Step {
            service: service.name(),
            step,
            marker: Some(MarkerKind::of(service)),
        }
    }

    pub fn iam_setup() -> Step {
        Step {
            service: Service::Iam.name(),
            step: "setup",
            marker: None,
        }
    }

    pub fn health() -> Step {
        Step {
            service: "cluster",
            step: "health",
            marker: None,
        }
    }
}

/// Sends the report when the configuration names a report URL; returns when it is delivered,
/// refused or `DEADLINE` has passed.
pub async fn after(ctx: &Context, step: Step, started: Instant, status: ExitStatus) {
    let Some(url) = &ctx.config.report_url else {
        return;
    };
    let member_id = (status == ExitStatus::Success)
        .then(|| {
            step.marker
                .and_then(|kind| ctx.state.marker(kind).ok().flatten())
        })
        .flatten()
        .and_then(|marker| marker.member_id)
        .filter(|id| id.len() <= MAX_MEMBER_ID);
    let body = json!({
        "schema_version": SCHEMA_VERSION,
        "service": step.service,
        "step": step.step,
        "outcome": if status == ExitStatus::Success { "ok" } else { "failed" },
        "exit_status": status.code(),
        "member_id": member_id,
        "duration_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "sent_at_ms": SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    });
    let what = format!("{} {}", step.service, step.step);
    match tokio::time::timeout(DEADLINE, send(ctx, url, &body)).await {
        Ok(Ok(())) => info!("reported {what} to the boot server at {url}"),
        Ok(Err(reason)) => warn!(
            "could not report {what} to the boot server: {reason}; this node's first boot goes \
             on without it"
        ),
        Err(_) => warn!(
            "could not report {what} to the boot server at {url}: no answer within {} s; this \
             node's first boot goes on without it",
            DEADLINE.as_secs()
        ),
    }
}

async fn send(ctx: &Context, url: &Url, body: &serde_json::Value) -> Result<(), String> {
    let timeouts = Timeouts {
        total: DEADLINE,
        request: DEADLINE,
        connect: DEADLINE,
    };
    let answer = crate::http::Client::new(ctx.tls.clone(), &timeouts)
        .post_json(url, body)
        .await
        .map_err(|e| crate::Error::from(e).chain())?;
    if answer.status.is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", answer.status))
    }
}
