//! `flint config check [FILE]`: the configuration and every file it names, checked as the units
//! will read them, without the network and without the state directory: for an operator before
//! a first boot, and for a build that renders the file (the NixOS module).

use std::path::Path;

use tracing::error;

use crate::config::Config;
use crate::exit::ExitStatus;
use crate::secrets;
use crate::tls;

/// Checks everything it can and prints a line per thing checked; every problem is an ERROR
/// line, and the status is the first problem's.
pub fn run(path: &Path) -> crate::Result<ExitStatus> {
    let config = Config::load(path)?;
    let mut passed = vec![format!(
        "configuration {}: valid (node {}; services {})",
        path.display(),
        config.node_id.as_str(),
        config
            .configured_services()
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    )];
    let mut first_problem = None;
    let mut problem = |e: crate::Error| {
        error!("{}", e.chain());
        first_problem.get_or_insert(e.exit_status());
    };

    if let Some(file) = &config.join_token_file {
        match secrets::read_token(file) {
            Ok(_) => passed.push(format!("join token {}: private, not empty", file.display())),
            Err(e) => problem(e.into()),
        }
    }
    match &config.tls {
        Some(files) => match tls::check(files) {
            Ok(checked) => passed.extend(checked),
            Err(e) => problem(e.into()),
        },
        None => passed.push("no tls section: no https peer can be verified".into()),
    }
    let iam = config.iam();
    if let Some(file) = &iam.bootstrap_token_file {
        match secrets::read_token(file) {
            Ok(_) => passed.push(format!(
                "IAM bootstrap token {}: private, not empty",
                file.display()
            )),
            Err(e) => problem(e.into()),
        }
    }
    if let Some(admin) = &iam.admin {
        match super::iam_setup::read_public_key(&config.file, &admin.public_key_file) {
            Ok(_) => passed.push(format!(
                "IAM admin {:?}'s public key {}: a PEM public key",
                admin.name,
                admin.public_key_file.display()
            )),
            Err(e) => problem(e.into()),
        }
    }

    let mut out = String::new();
    for line in &passed {
        out.push_str("ok  ");
        out.push_str(line);
        out.push('\n');
    }
    print!("{}", crate::logging::safe_lines(&out));
    Ok(first_problem.unwrap_or(ExitStatus::Success))
}
