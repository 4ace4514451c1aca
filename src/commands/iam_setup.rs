//! `flint iam-setup`: IAM's initial setup (first organization and admin), once for the cluster,
//! whichever node gets there first.

use crate::error::Doing as _;
use tracing::info;

use super::Context;
use crate::config::{self, Service};
use crate::engines::iam::Setup;
use crate::retry::{self, Pace};
use crate::secrets;
use crate::state::{Marker, MarkerKind};
use crate::systemd;

pub async fn run(ctx: &Context) -> crate::Result<()> {
    let settings = ctx.config.iam();
    let missing = |field: &str, what: &str| config::Error::Invalid {
        path: ctx.config.file.clone(),
        field: field.to_owned(),
        problem: format!("required for iam-setup: {what}"),
    };
    let org = settings
        .org
        .as_deref()
        .ok_or_else(|| missing("iam.org", "the first organization's name"))?;
    let admin = settings.admin.as_ref().ok_or_else(|| {
        missing(
            "iam.admin",
            "{\"name\": ..., \"public_key_file\": ...} of the first admin",
        )
    })?;
    let token_file = settings.bootstrap_token_file.as_deref().ok_or_else(|| {
        missing(
            "iam.bootstrap_token_file",
            "the file holding IAM's bootstrap token",
        )
    })?;
    let token = secrets::read_token(token_file)?;
    let public_key = read_public_key(&ctx.config.file, &admin.public_key_file)?;

    let iam = ctx.iam();
    info!("waiting for IAM at {} to be reachable", settings.health_url);
    retry::until("IAM to be reachable", &ctx.deadline, Pace::EAGER, || {
        iam.reachable(&settings.health_url)
    })
    .await?;
    info!(
        "setting up IAM organization {org:?} with admin {:?} at {}",
        admin.name, settings.bootstrap_url
    );
    systemd::status("running IAM's initial setup");
    let outcome = retry::until(
        "IAM to accept the initial setup",
        &ctx.deadline,
        Pace::REMOTE,
        || {
            iam.bootstrap(
                &settings.bootstrap_url,
                &token,
                org,
                &admin.name,
                &public_key,
            )
        },
    )
    .await?;
    match outcome {
        Setup::Created => info!("IAM set up: organization {org:?}, admin {:?}", admin.name),
        Setup::AlreadyDone => info!(
            "IAM was already set up by another node with organization {org:?} and admin {:?}",
            admin.name
        ),
    }
    let mut marker = Marker::now(Service::Iam, ctx.config.node_id.as_str());
    marker.org = Some(org.to_owned());
    let path = ctx
        .state
        .write_marker(MarkerKind::IamSetupDone, &marker)
        .doing("recording the IAM setup")?;
    info!("marker {}", path.display());
    systemd::status("IAM set up");
    Ok(())
}

/// The admin's public key, refusing a file that holds a private key: only the public half may
/// ever leave the node.
pub(crate) fn read_public_key(
    config_file: &std::path::Path,
    path: &std::path::Path,
) -> Result<String, config::Error> {
    let invalid = |problem: String| config::Error::Invalid {
        path: config_file.to_owned(),
        field: "iam.admin.public_key_file".into(),
        problem,
    };
    let text = crate::files::read_text(path, crate::files::MAX_SMALL)
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    if text.contains("PRIVATE KEY") {
        return Err(invalid(format!(
            "{} holds a private key; give the admin's public key (`openssl pkey -pubout`)",
            path.display()
        )));
    }
    if !text.contains("-----BEGIN PUBLIC KEY-----") {
        return Err(invalid(format!(
            "{} is not a PEM public key (-----BEGIN PUBLIC KEY-----)",
            path.display()
        )));
    }
    Ok(text)
}
