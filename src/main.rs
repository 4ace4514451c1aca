//! The `flint` binary: parse arguments, set up logging, run, exit with a sysexits status.

use std::process::ExitCode;

use clap::Parser;
use flint::cli::{self, Cli};
use flint::exit::ExitStatus;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
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
