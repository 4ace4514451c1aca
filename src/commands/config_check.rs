//! `flint config check [FILE]`: the configuration and every file it names, checked as the units
//! will read them, without the network and without the state directory: for an operator before
//! a first boot, and, with `--config-only`, for a build that renders the file before the files it
//! names exist where the units will read them (the NixOS module: systemd credentials).

use std::path::Path;

use tracing::error;

use crate::config::Config;
use crate::exit::ExitStatus;
use crate::secrets;
use crate::tls;

/// Checks everything it can and prints a line per thing checked; every problem is an ERROR
/// line, and the status is the first problem's. With `config_only`, the configuration alone,
/// and a line naming the files left unchecked.
pub fn run(path: &Path, config_only: bool) -> crate::Result<ExitStatus> {
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
    if config.tls.is_none() {
        passed.push("no tls section: no https peer can be verified".into());
    }
    if config_only {
        let mut out = ok_lines(&passed);
        let unchecked = named_files(&config);
        if !unchecked.is_empty() {
            out.push_str(&format!(
                "files not checked (--config-only): {}\n",
                unchecked.join(", ")
            ));
        }
        print!("{}", crate::logging::safe_lines(&out));
        return Ok(ExitStatus::Success);
    }
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
    if let Some(files) = &config.tls {
        match tls::check(files) {
            Ok(checked) => passed.extend(checked),
            Err(e) => problem(e.into()),
        }
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

    print!("{}", crate::logging::safe_lines(&ok_lines(&passed)));
    Ok(first_problem.unwrap_or(ExitStatus::Success))
}

fn ok_lines(passed: &[String]) -> String {
    passed.iter().map(|line| format!("ok  {line}\n")).collect()
}

/// The files the configuration names, those in its folder by their name there: a build sees the
/// names of the credentials the units will load beside it, not paths in the build's folder.
fn named_files(config: &Config) -> Vec<String> {
    let folder = config.file.parent().unwrap_or(Path::new(""));
    let client = config.tls.as_ref().and_then(|t| t.client.as_ref());
    let iam = config.iam();
    [
        ("join token", config.join_token_file.as_deref()),
        ("TLS CA", config.tls.as_ref().map(|t| t.ca.as_path())),
        ("TLS client certificate", client.map(|c| c.cert.as_path())),
        ("TLS client key", client.map(|c| c.key.as_path())),
        ("IAM bootstrap token", iam.bootstrap_token_file.as_deref()),
        (
            "IAM admin's public key",
            iam.admin.as_ref().map(|a| a.public_key_file.as_path()),
        ),
    ]
    .into_iter()
    .filter_map(|(what, file)| {
        let file = file?;
        Some(format!(
            "{what} {}",
            file.strip_prefix(folder).unwrap_or(file).display()
        ))
    })
    .collect()
}
