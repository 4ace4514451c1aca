//! Files that hold secrets (private keys, tokens): refused when group or others may read them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::exit::{Classify, ExitStatus};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The secret could leak to other users of the machine.
    #[error(
        "{} holds a secret but is readable by group or others (mode {mode:04o}): run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    /// The file cannot be inspected at all.
    #[error("cannot read secret file {}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Classify for Error {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Unreadable { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ExitStatus::Config
            }
            _ => ExitStatus::Permission,
        }
    }
}

/// Fails unless `path` is a file only its owner may read.
pub fn ensure_private(path: &Path) -> Result<(), Error> {
    let metadata = std::fs::metadata(path).map_err(|source| Error::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}
