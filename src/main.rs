//! The `flint` binary: parse arguments, set up logging, run, exit with a sysexits status.

use std::process::ExitCode;

use clap::Parser;
use flint::cli::{self, Cli};
use flint::exit::ExitStatus;

fn main() -> ExitCode {
    // Installed as `node-join` too (a symlink, as the flint package installs it), the binary is
    // `flint node-join`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str());
    if invoked_as == Some("node-join") {
        args.insert(1, "node-join".into());
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                ExitStatus::Usage.code()
            } else {
                ExitStatus::Success.code()
            });
        }
    };
    flint::logging::init(cli.verbose);
    ExitCode::from(cli::run(cli).code())
}
