//! The command line, and running one command to an exit status.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info};

use crate::commands::{self, Context, join_etcd};
use crate::config;
use crate::exit::{self, ExitStatus};
use crate::state::{MarkerKind, StateDir};
use crate::systemd;

/// Default state directory when systemd does not set `$STATE_DIRECTORY`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/flint";

/// flint joins this machine to its clusters at first boot and checks their health.
#[derive(Debug, Parser)]
#[command(version, about, help_expected = true)]
pub struct Cli {
    /// cluster-config.json to read when $CREDENTIALS_DIRECTORY has none.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where markers and etcd.env live when $STATE_DIRECTORY is not set [default: /var/lib/flint].
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log every retry, not only the first of each wait.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join this node to a service's cluster, once (a marker records it).
    Join {
        /// The service whose cluster to join.
        service: Service,
        /// Run one phase of an etcd join: `add` before etcd starts, `promote` after.
        #[arg(long)]
        phase: Option<join_etcd::Phase>,
    },
    /// Check each service's quorum, leader and members; exit 1 when unhealthy.
    Health {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write node_exporter textfile metrics to this file (atomically).
        #[arg(long, value_name = "PATH")]
        textfile: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    /// etcd, through its v3 JSON gateway.
    Etcd,
}

impl Service {
    fn marker(self) -> MarkerKind {
        match self {
            Service::Etcd => MarkerKind::EtcdJoined,
        }
    }
}

/// Runs the command and returns the status to exit with; every failure is logged here, once,
/// with its whole chain of causes.
pub fn run(cli: Cli) -> ExitStatus {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds without fallible resources");
    match runtime.block_on(dispatch(cli)) {
        Ok(status) => status,
        Err(e) => {
            let status = exit::status_of(&e);
            error!("{e:#}");
            systemd::status(&format!("failed (exit {status}): {e:#}"));
            status
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitStatus> {
    crate::privileges::drop_all()?;
    let state = StateDir::new(
        systemd::state_dir()
            .or(cli.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
    );
    let config_path = config::locate(systemd::credentials_dir().as_deref(), cli.config.as_deref());
    match cli.command {
        Command::Join { service, phase } => {
            // Run-once: a node that has joined never reads its config or touches the network.
            if already_joined(&state, service)? {
                return Ok(ExitStatus::Success);
            }
            let ctx = Context::new(config_path, state)?;
            let _lock = ctx.state.lock().await?;
            if already_joined(&ctx.state, service)? {
                return Ok(ExitStatus::Success);
            }
            match service {
                Service::Etcd => join_etcd::run(&ctx, phase).await?,
            }
            Ok(ExitStatus::Success)
        }
        Command::Health { json, textfile } => {
            let ctx = Context::new(config_path, state)?;
            let healthy = commands::health::run(&ctx, json, textfile.as_deref()).await?;
            Ok(if healthy {
                ExitStatus::Success
            } else {
                ExitStatus::Unhealthy
            })
        }
    }
}

fn already_joined(state: &StateDir, service: Service) -> anyhow::Result<bool> {
    let kind = service.marker();
    let Some(marker) = state.marker(kind)? else {
        return Ok(false);
    };
    info!(
        "already joined as member {} on {} (marker {}); nothing to do",
        marker.member_id,
        marker.node_id,
        state.path().join(kind.file_name()).display()
    );
    Ok(true)
}
