//! `flint-dist DIR`: writes what a package installs beside the binaries, from the same clap
//! definitions the binaries parse with and the same exit status tables they exit by, so none of
//! it drifts from `--help`: `DIR/PROGRAM/man/PROGRAM.1` and `DIR/PROGRAM/man/PROGRAM-SUBCOMMAND.1`
//! for each subcommand of `flint` and `flint-boot`, each with an EXIT STATUS section, and
//! `DIR/PROGRAM/completions/` for bash, zsh and fish. One folder per program, as each goes into
//! its own package. Kept out of the node binary, which stays small: packaging runs this once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use roff::{Roff, bold, roman};

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: flint-dist DIR");
        return ExitCode::from(64);
    };
    match write_all(&dir) {
        Ok(pages) => {
            for page in pages {
                println!("{}", page.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "flint-dist: cannot write man pages and completions to {}: {e}",
                dir.display()
            );
            ExitCode::from(73)
        }
    }
}

/// A program whose pages and completions are written: its command line and exit statuses.
struct Program {
    name: &'static str,
    command: fn() -> clap::Command,
    statuses: Vec<(u8, &'static str)>,
}

fn programs() -> [Program; 2] {
    [
        Program {
            name: "flint",
            command: flint::cli::Cli::command,
            statuses: flint::exit::ExitStatus::ALL
                .iter()
                .map(|s| (s.code(), s.meaning()))
                .collect(),
        },
        Program {
            name: "flint-boot",
            command: flint_boot::cli::Cli::command,
            statuses: flint_boot::exit::EXIT_STATUSES.to_vec(),
        },
    ]
}

fn write_all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for program in programs() {
        let man = dir.join(program.name).join("man");
        std::fs::create_dir_all(&man)?;
        let completions = dir.join(program.name).join("completions");
        std::fs::create_dir_all(&completions)?;
        let command = (program.command)();
        written.push(write_page(
            &man,
            program.name,
            command.clone(),
            &program.statuses,
        )?);
        for sub in command.get_subcommands() {
            let name = format!("{}-{}", program.name, sub.get_name());
            let page = sub.clone().name(name.clone());
            written.push(write_page(&man, &name, page, &program.statuses)?);
        }
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut command = (program.command)();
            written.push(clap_complete::generate_to(
                shell,
                &mut command,
                program.name,
                &completions,
            )?);
        }
    }
    Ok(written)
}

/// The page clap_mangen writes, with the exit statuses in a section of their own where
/// man-pages(7) puts EXIT STATUS (before VERSION), in place of clap's EXTRA section that the
/// same text ends `--help` with.
fn write_page(
    dir: &Path,
    name: &str,
    command: clap::Command,
    statuses: &[(u8, &str)],
) -> std::io::Result<PathBuf> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command.after_help(None::<&str>)).render(&mut page)?;
    let page = String::from_utf8(page).expect("clap_mangen writes UTF-8");
    let section = exit_status_section(statuses);
    let page = match page.find("\n.SH VERSION") {
        Some(at) => format!("{}\n{section}{}", &page[..at], &page[at + 1..]),
        None => format!("{page}{section}"),
    };
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page)?;
    Ok(path)
}

fn exit_status_section(statuses: &[(u8, &str)]) -> String {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in statuses {
        roff.control("TP", [])
            .text([bold(code.to_string())])
            .text([roman(*meaning)]);
    }
    // The page already starts with the apostrophe preamble this rendering repeats.
    let preamble = Roff::new().render();
    let text = roff.render();
    text.strip_prefix(&preamble)
        .map(str::to_owned)
        .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_gets_a_page_and_every_shell_a_completion() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_all(dir.path()).unwrap();
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
            "flint-config.1",
            "flint.bash",
            "_flint",
            "flint.fish",
            "flint-boot.1",
            "flint-boot-serve.1",
            "flint-boot-render.1",
            "flint-boot-prepare.1",
            "flint-boot-status.1",
            "flint-boot-inventory.1",
            "flint-boot.bash",
            "_flint-boot",
            "flint-boot.fish",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        let man = dir.path().join("flint/man");
        let join = std::fs::read_to_string(man.join("flint-join.1")).unwrap();
        assert!(join.contains("phase") && join.contains("etcd"), "{join}");
        let node_join = std::fs::read_to_string(man.join("flint-node-join.1")).unwrap();
        assert!(node_join.contains("abandon"), "{node_join}");
        let bash =
            std::fs::read_to_string(dir.path().join("flint/completions/flint.bash")).unwrap();
        assert!(
            bash.contains("iam-setup") && bash.contains("--textfile"),
            "{bash}"
        );
        let bash =
            std::fs::read_to_string(dir.path().join("flint-boot/completions/flint-boot.bash"))
                .unwrap();
        assert!(
            bash.contains("prepare") && bash.contains("--proxy-dhcp"),
            "{bash}"
        );
    }

    #[test]
    fn every_page_has_an_exit_status_section_listing_the_codes_table() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_all(dir.path()).unwrap();
        let programs = programs();
        let pages = pages
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "1"));
        let mut seen = 0;
        for page in pages {
            seen += 1;
            let stem = page.file_stem().unwrap().to_string_lossy().into_owned();
            let program = if stem.starts_with("flint-boot") {
                &programs[1]
            } else {
                &programs[0]
            };
            let text = std::fs::read_to_string(page).unwrap();
            let section = text
                .split_once(".SH \"EXIT STATUS\"\n")
                .unwrap_or_else(|| panic!("no EXIT STATUS in {stem}:\n{text}"))
                .1;
            let section = section.split("\n.SH ").next().unwrap();
            for (code, _) in &program.statuses {
                assert!(
                    section.contains(&format!("\\fB{code}\\fR")),
                    "{code} missing in {stem}:\n{section}"
                );
            }
            assert!(!text.contains(".SH EXTRA"), "{stem}");
            assert!(
                !text.contains("Exit status:"),
                "the help's own text left in {stem}"
            );
        }
        assert_eq!(seen, 12, "6 pages of flint, 6 of flint-boot");
        // flint's are the statuses the code returns: the table is the enum.
        let flint = std::fs::read_to_string(dir.path().join("flint/man/flint-health.1")).unwrap();
        assert!(flint.contains("\\fB78\\fR"), "{flint}");
        assert!(
            flint.contains("the configuration is missing or invalid"),
            "{flint}"
        );
    }
}
