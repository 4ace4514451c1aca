//! The `flint-testserver` binary: parse, check, run; 2 for a bad command line, 1 for a failed start.

use std::process::ExitCode;

use clap::Parser;
use flint_testserver::cli::Cli;

fn main() -> ExitCode {
    let settings = match Cli::parse().into_settings() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("flint-testserver: {e}");
            return ExitCode::from(2);
        }
    };
    match flint_testserver::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flint-testserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}
