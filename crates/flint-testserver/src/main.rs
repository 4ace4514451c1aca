//! The `flint-testserver` binary: parse, check, run; 2 for a bad command line, 1 for a failed start.

use std::process::ExitCode;

use clap::Parser;
use flint_testserver::cli::{Cli, Plan};

fn main() -> ExitCode {
    let plan = match Cli::parse().into_plan() {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("flint-testserver: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match plan {
        Plan::Server(settings) => flint_testserver::run(*settings),
        Plan::Member(settings) => flint_testserver::member::run(*settings),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flint-testserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}
