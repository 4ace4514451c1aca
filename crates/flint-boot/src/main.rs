//! `flint-boot`: the boot server (TFTP today; HTTP and ProxyDHCP to follow).

mod cli;
mod tftp;

use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // No env-filter in the workspace; RUST_LOG may still name a single level.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .without_time()
        .with_ansi(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flint-boot: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flint-boot: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: cli::Cli) -> Result<(), String> {
    let cli::Command::Serve(args) = cli.command;
    let (Some(addr), Some(root)) = (args.tftp.tftp, args.tftp.tftp_root) else {
        return Err("serve: no service enabled (use --tftp ADDR --tftp-root DIR)".into());
    };
    let socket = tokio::net::UdpSocket::bind(addr)
        .await
        .map_err(|e| format!("bind TFTP {addr}: {e}"))?;
    let mut config = tftp::Config::new(root);
    config.max_transfers = args.tftp.tftp_max_transfers as usize;
    tracing::info!(%addr, root = %config.root.display(), "tftp listening");
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    tokio::select! {
        r = tftp::serve(socket, config) => r.map_err(|e| e.to_string()),
        _ = term.recv() => { tracing::info!("SIGTERM, stopping"); Ok(()) }
        _ = int.recv() => { tracing::info!("SIGINT, stopping"); Ok(()) }
    }
}
