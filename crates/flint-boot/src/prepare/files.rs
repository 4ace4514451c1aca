//! The folders `prepare` writes: what is already there (read as flint reads a node's files:
//! regular, bounded, a secret never readable by group or others), what a run will change, and
//! the writing itself — a new folder made aside and renamed into place, a changed file replaced
//! by rename, so no reader ever sees half a folder or half a file.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use flint_config::files::{MAX_TEXT, read_text};
use flint_json::one_line;

use super::FolderReport;
use crate::ExitError;

/// Whether a file holds a secret: written 0600, and refused when found readable by others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrecy {
    Public,
    Secret,
}

impl Secrecy {
    fn mode(self) -> u32 {
        match self {
            Secrecy::Public => 0o644,
            Secrecy::Secret => 0o600,
        }
    }
}

/// A file as a run finds it.
pub enum Existing {
    Missing,
    Text(String),
}

struct Planned {
    name: &'static str,
    text: String,
    secrecy: Secrecy,
    why: String,
}

/// One folder of DIR: what is in it and what the run will write to it.
pub struct Folder {
    path: PathBuf,
    label: String,
    exists: bool,
    planned: Vec<Planned>,
}

pub fn shown(path: &Path) -> String {
    one_line(&path.display().to_string())
}

fn kind(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

fn cant(what: &str, path: &Path, e: &io::Error) -> ExitError {
    let msg = format!("cannot {what} {}: {e}", shown(path));
    if e.kind() == io::ErrorKind::PermissionDenied {
        ExitError::Permission(msg)
    } else {
        ExitError::CantCreate(msg)
    }
}

/// A secret readable by group or others may already have been copied: refused, as flint refuses
/// such a key or token on the node.
fn check_private(path: &Path, meta: &fs::Metadata, secrecy: Secrecy) -> Result<(), ExitError> {
    let mode = meta.mode() & 0o777;
    if secrecy == Secrecy::Secret && mode & 0o077 != 0 {
        return Err(ExitError::Permission(format!(
            "{} is readable by group or others (mode {mode:04o}): it may have been copied; \
             chmod 600 it if it cannot have been, or replace it (a node's keys: --rotate-keys)",
            shown(path)
        )));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, ExitError> {
    read_text(path, MAX_TEXT).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => ExitError::Config(format!(
            "{}: expected PEM or JSON text, found bytes that are not UTF-8",
            shown(path)
        )),
        _ => cant("read", path, &e),
    })
}

/// A file the operator names on the command line (`--ca-key`, ...).
pub fn read_given(path: &Path, secrecy: Secrecy) -> Result<String, ExitError> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => cant("read", path, &e),
        _ => ExitError::Config(format!("cannot read {}: {e}", shown(path))),
    })?;
    check_private(path, &meta, secrecy)?;
    read(path)
}

/// The names of the folders in `dir` (none when it does not exist), sorted.
pub fn subfolders(dir: &Path) -> Result<Vec<String>, ExitError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(cant("list", dir, &e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| cant("list", dir, &e))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_dir && !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Flushes everything written under `dir` at once (one syncfs, not a fsync per file).
pub fn sync(dir: &Path) -> Result<(), ExitError> {
    let f = fs::File::open(dir).map_err(|e| cant("open", dir, &e))?;
    nix::unistd::syncfs(&f).map_err(|e| cant("sync", dir, &io::Error::from(e)))
}

fn create_folder(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(path)
}

fn write_file(path: &Path, text: &str, secrecy: Secrecy) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(secrecy.mode())
        .open(path)?;
    f.write_all(text.as_bytes())
}

impl Folder {
    pub fn open(path: &Path, label: &str) -> Result<Folder, ExitError> {
        let exists = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => true,
            Ok(meta) => {
                return Err(ExitError::CantCreate(format!(
                    "{}: expected a folder, found {}: move it away",
                    shown(path),
                    kind(&meta)
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(cant("look at", path, &e)),
        };
        Ok(Folder {
            path: path.to_owned(),
            label: label.to_owned(),
            exists,
            planned: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the folder holds `name` now.
    pub fn has(&self, name: &str) -> bool {
        self.exists && fs::symlink_metadata(self.path.join(name)).is_ok()
    }

    /// The file `name` as it is now.
    pub fn existing(&self, name: &str, secrecy: Secrecy) -> Result<Existing, ExitError> {
        if !self.exists {
            return Ok(Existing::Missing);
        }
        let path = self.path.join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Missing),
            Err(e) => return Err(cant("look at", &path, &e)),
        };
        if !meta.is_file() {
            return Err(ExitError::CantCreate(format!(
                "{}: expected a regular file, found {}: move it away",
                shown(&path),
                kind(&meta)
            )));
        }
        check_private(&path, &meta, secrecy)?;
        read(&path).map(Existing::Text)
    }

    /// `name` should hold `text`: written when it does not.
    pub fn put(
        &mut self,
        name: &'static str,
        text: String,
        secrecy: Secrecy,
    ) -> Result<(), ExitError> {
        match self.existing(name, secrecy)? {
            Existing::Text(now) if now == text => Ok(()),
            Existing::Text(_) => {
                self.put_why(name, text, secrecy, "updated");
                Ok(())
            }
            Existing::Missing => {
                self.put_why(name, text, secrecy, "created");
                Ok(())
            }
        }
    }

    /// `name` is written with `text`, for the reason given.
    pub fn put_why(&mut self, name: &'static str, text: String, secrecy: Secrecy, why: &str) {
        self.planned.push(Planned {
            name,
            text,
            secrecy,
            why: why.to_owned(),
        });
    }

    /// Writes what was planned: a new folder whole, by renaming it into place; in a folder that
    /// exists, each file by renaming over the old one.
    pub fn write(self) -> Result<FolderReport, ExitError> {
        let written = self
            .planned
            .iter()
            .map(|p| (p.name.to_owned(), p.why.clone()))
            .collect();
        let report = FolderReport {
            folder: self.label.clone(),
            created: !self.exists,
            written,
        };
        if self.planned.is_empty() {
            return Ok(report);
        }
        let parent = self.path.parent().unwrap_or(Path::new("."));
        let leaf = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = |name: &str| format!(".{name}.prepare-{}", std::process::id());
        if self.exists {
            for p in &self.planned {
                let staged = self.path.join(temporary(p.name));
                let _ = fs::remove_file(&staged);
                let result = write_file(&staged, &p.text, p.secrecy)
                    .and_then(|()| fs::rename(&staged, self.path.join(p.name)));
                if let Err(e) = result {
                    let _ = fs::remove_file(&staged);
                    return Err(cant("write", &self.path.join(p.name), &e));
                }
            }
            return Ok(report);
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| cant("create", parent, &e))?;
        let staging = parent.join(temporary(&leaf));
        let _ = fs::remove_dir_all(&staging);
        let result = create_folder(&staging)
            .and_then(|()| {
                self.planned
                    .iter()
                    .try_for_each(|p| write_file(&staging.join(p.name), &p.text, p.secrecy))
            })
            .and_then(|()| fs::rename(&staging, &self.path));
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&staging);
            return Err(cant("create", &self.path, &e));
        }
        Ok(report)
    }
}
