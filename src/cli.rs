//! The command line, and running one command to an exit status.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info};

use crate::commands::{self, Context, iam_setup, join_admin, join_etcd, node_join};
use crate::config::{self, Service};
use crate::exit::ExitStatus;
use crate::report::{self, Step};
use crate::state::{MarkerKind, StateDir};
use crate::systemd;

/// Default state directory when systemd does not set `$STATE_DIRECTORY`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/flint";

/// flint joins this machine to its clusters at first boot and checks their health.
#[derive(Debug, Parser)]
#[command(version, about, help_expected = true, after_help = crate::exit::help())]
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
    #[command(after_help = crate::exit::help())]
    Join {
        /// The service whose cluster to join.
        service: JoinService,
        /// Run one phase of an etcd join: `add` before etcd starts, `promote` after.
        #[arg(long)]
        phase: Option<join_etcd::Phase>,
    },
    /// Run IAM's initial setup (first organization and admin), once, after flaredb has joined.
    #[command(after_help = crate::exit::help())]
    IamSetup,
    /// Check each service's quorum, leader and members; exit 1 when unhealthy.
    #[command(after_help = crate::exit::help())]
    Health {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write node_exporter textfile metrics to this file (atomically).
        #[arg(long, value_name = "PATH")]
        textfile: Option<PathBuf>,
        /// How many members each cluster service should have; a missing or an extra member
        /// makes it unhealthy. Overrides the configuration's `expected_members`.
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..=crate::config::MAX_MEMBERS as u64))]
        expect_members: Option<u64>,
        /// Also write a key through each cluster's leader, read it back from every member's own
        /// store (waiting up to `timeouts.request` for each), and remove it: etcd through its
        /// gateway, chainfire and flaredb through /v1/kv/.
        #[arg(long)]
        write_check: bool,
        /// Check again until the cluster is healthy or `timeouts.total` passes (the first-boot
        /// check: a node whose joins are done waits here for peers that are still starting);
        /// the report printed is the last one.
        #[arg(long)]
        wait: bool,
    },
    /// Show this node's join state and what a join would do; with a flag, recover.
    #[command(after_help = crate::exit::help())]
    NodeJoin(node_join::Args),
    /// Check a configuration and the files it names, without the network or the state directory.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// What `flint config` does.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE (by default the one the units read) and every file it names: tokens
    /// private and not empty, the CA usable, the client certificate chaining to it, its key
    /// private and matching, the IAM admin's public key; exit 0, or with the first problem's
    /// status.
    #[command(after_help = crate::exit::help())]
    Check {
        /// The cluster-config.json to check [default: as the other commands locate it].
        file: Option<PathBuf>,
        /// Validate the configuration alone and list the files it names without opening them:
        /// for a build that renders it before those files are where the units will read them.
        #[arg(long)]
        config_only: bool,
    },
}

/// The services `flint join` joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JoinService {
    /// chainfire, through its admin API.
    Chainfire,
    /// flaredb, through its admin API.
    Flaredb,
    /// etcd, through its v3 JSON gateway.
    Etcd,
}

impl From<JoinService> for Service {
    fn from(service: JoinService) -> Service {
        match service {
            JoinService::Chainfire => Service::Chainfire,
            JoinService::Flaredb => Service::Flaredb,
            JoinService::Etcd => Service::Etcd,
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
            let status = e.exit_status();
            let line = e.chain();
            error!("{line}");
            systemd::status(&format!("failed (exit {status}): {line}"));
            status
        }
    }
}

async fn dispatch(cli: Cli) -> crate::Result<ExitStatus> {
    crate::privileges::drop_all()?;
    let state = StateDir::new(
        systemd::state_dir()
            .or(cli.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
    );
    // Located only when a command reads it: a run-once exit reads nothing.
    let cli_config = cli.config;
    let config_path =
        || config::locate(systemd::credentials_dir().as_deref(), cli_config.as_deref());
    match cli.command {
        Command::Join { service, phase } => {
            if phase.is_some() && service != JoinService::Etcd {
                return Err(commands::UsageError(
                    "--phase applies to `flint join etcd` only".into(),
                )
                .into());
            }
            if already_done(&state, service.into())? {
                return Ok(ExitStatus::Success);
            }
            let ctx = Context::new(config_path(), state)?;
            let started = Instant::now();
            let joined = async {
                let _lock = ctx.state.lock(service.into(), &ctx.deadline).await?;
                if already_done(&ctx.state, service.into())? {
                    return Ok(());
                }
                match service {
                    JoinService::Etcd => join_etcd::run(&ctx, phase).await,
                    JoinService::Chainfire | JoinService::Flaredb => {
                        join_admin::run(&ctx, service.into()).await
                    }
                }
            }
            .await;
            reported(&ctx, Step::join(service.into(), phase), started, joined).await
        }
        Command::IamSetup => {
            if already_done(&state, Service::Iam)? {
                return Ok(ExitStatus::Success);
            }
            let ctx = Context::new(config_path(), state)?;
            let started = Instant::now();
            let set_up = async {
                let _lock = ctx.state.lock(Service::Iam, &ctx.deadline).await?;
                if !already_done(&ctx.state, Service::Iam)? {
                    iam_setup::run(&ctx).await?;
                }
                Ok(())
            }
            .await;
            reported(&ctx, Step::iam_setup(), started, set_up).await
        }
        Command::Health {
            json,
            textfile,
            expect_members,
            write_check,
            wait,
        } => {
            let ctx = Context::new(config_path(), state)?;
            let options = commands::health::Options {
                json,
                textfile: textfile.as_deref(),
                expect_members: expect_members.map(|n| n as usize),
                write_check,
                wait,
            };
            let started = Instant::now();
            let checked = commands::health::run(&ctx, &options).await.map(|healthy| {
                if healthy {
                    ExitStatus::Success
                } else {
                    ExitStatus::Unhealthy
                }
            });
            // The first-boot check (`--wait`) is a step of the node's bring-up; an operator's
            // or a timer's check is not.
            if wait {
                let status = checked.as_ref().map_or_else(|e| e.exit_status(), |s| *s);
                if status == ExitStatus::Success {
                    log_done(Step::health(), started);
                }
                report::after(&ctx, Step::health(), started, status).await;
            }
            checked
        }
        Command::NodeJoin(args) => {
            let ctx = Context::new(config_path(), state)?;
            node_join::run(&ctx, args).await
        }
        Command::Config(ConfigCommand::Check { file, config_only }) => {
            commands::config_check::run(&file.unwrap_or_else(config_path), config_only)
        }
    }
}

/// The command's outcome, reported to the boot server when the configuration names one; the
/// exit status stays the command's.
async fn reported(
    ctx: &Context,
    step: Step,
    started: Instant,
    outcome: crate::Result<()>,
) -> crate::Result<ExitStatus> {
    let status = outcome
        .as_ref()
        .map_or_else(|e| e.exit_status(), |()| ExitStatus::Success);
    if status == ExitStatus::Success {
        log_done(step, started);
    }
    report::after(ctx, step, started, status).await;
    outcome.map(|()| ExitStatus::Success)
}

/// A first-boot step's closing line: how long it took and how much of that it waited for the
/// services and peers it needs, so a slow boot shows whether flint or what it waited for was slow.
fn log_done(step: Step, started: Instant) {
    let took = started.elapsed();
    let waited = crate::retry::waited().min(took);
    info!(
        "{} {} done in {:.1} s, {:.1} s of it waiting for the services it needs",
        step.service,
        step.step,
        took.as_secs_f64(),
        waited.as_secs_f64()
    );
}

/// Run-once: with the service's marker present, a join exits 0 without reading its
/// configuration or touching the network. Checked again under the lock, since another flint
/// may have finished meanwhile.
pub fn already_done(state: &StateDir, service: Service) -> crate::Result<bool> {
    let kind = MarkerKind::of(service);
    let Some(marker) = state.marker(kind)? else {
        return Ok(false);
    };
    let path = state.path().join(kind.file_name());
    match service {
        Service::Iam => info!(
            "IAM already set up (organization {}; marker {}); nothing to do",
            marker.org.as_deref().unwrap_or("-"),
            path.display()
        ),
        _ => info!(
            "already joined {service} as member {} (marker {}); nothing to do",
            marker.member_id.as_deref().unwrap_or(&marker.node_id),
            path.display()
        ),
    }
    Ok(true)
}
