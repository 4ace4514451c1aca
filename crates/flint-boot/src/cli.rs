//! Command line of `flint-boot`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "flint-boot",
    version,
    about = "Boot server for bare-metal nodes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the boot services until SIGTERM or SIGINT.
    Serve(ServeArgs),
}

/// Each service is an optional group so HTTP and ProxyDHCP can join without reshaping this.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub tftp: TftpArgs,
}

#[derive(Debug, Args)]
pub struct TftpArgs {
    /// Address to serve TFTP on, e.g. 0.0.0.0:69.
    #[arg(long = "tftp", value_name = "ADDR", requires = "tftp_root")]
    pub tftp: Option<SocketAddr>,
    /// Folder served read-only over TFTP; nothing outside it is reachable.
    #[arg(long, value_name = "DIR", requires = "tftp")]
    pub tftp_root: Option<PathBuf>,
    /// Concurrent transfers; further requests get ERROR 0 "too many transfers".
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub tftp_max_transfers: u32,
}
