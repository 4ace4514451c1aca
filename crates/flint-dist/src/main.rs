//! `flint-dist DIR`: writes what a package installs beside the binary, from the same clap
//! definition the binary parses with, so none of it drifts from `flint --help`:
//! `DIR/man/flint.1` and `DIR/man/flint-SUBCOMMAND.1` for each subcommand, and
//! `DIR/completions/` for bash, zsh and fish. Kept out of the node binary, which stays small:
//! packaging runs this once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: flint-dist DIR");
        return ExitCode::from(64);
    };
    match write_pages(&dir) {
        Ok(pages) => {
            for page in pages {
                println!("{}", page.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "flint-man: cannot write man pages to {}: {e}",
                dir.display()
            );
            ExitCode::from(73)
        }
    }
}

fn write_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    let command = flint::cli::Cli::command();
    let mut written = vec![write_page(&man, "flint", command.clone())?];
    for sub in command.get_subcommands() {
        let name = format!("flint-{}", sub.get_name());
        let page = sub.clone().name(name.clone());
        written.push(write_page(&man, &name, page)?);
    }
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut command = flint::cli::Cli::command();
        written.push(clap_complete::generate_to(
            shell,
            &mut command,
            "flint",
            &completions,
        )?);
    }
    Ok(written)
}

fn write_page(dir: &Path, name: &str, command: clap::Command) -> std::io::Result<PathBuf> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(command).render(&mut roff)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, roff)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_gets_a_page_and_every_shell_a_completion() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_pages(dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for expected in [
            "flint.1",
            "flint-join.1",
            "flint-iam-setup.1",
            "flint-health.1",
            "flint-node-join.1",
            "flint.bash",
            "_flint",
            "flint.fish",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        let man = dir.path().join("man");
        let join = std::fs::read_to_string(man.join("flint-join.1")).unwrap();
        assert!(join.contains("phase") && join.contains("etcd"), "{join}");
        let node_join = std::fs::read_to_string(man.join("flint-node-join.1")).unwrap();
        assert!(node_join.contains("abandon"), "{node_join}");
        let bash = std::fs::read_to_string(dir.path().join("completions/flint.bash")).unwrap();
        assert!(
            bash.contains("iam-setup") && bash.contains("--textfile"),
            "{bash}"
        );
    }
}
