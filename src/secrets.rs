//! Files that hold secrets (private keys, tokens): refused when group or others may read them,
//! and kept in memory in a type that never prints its content.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::exit::{ExitStatus, HasExitStatus};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The secret could leak to other users of the machine.
    #[error(
        "{} holds a secret but is readable by group or others (mode {mode:04o}): run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    /// The file holds nothing usable.
    #[error("secret file {} is empty", path.display())]
    Empty { path: PathBuf },
    /// The file cannot be inspected at all.
    #[error("cannot read secret file {}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// As for the configuration file: 77 when the secret may leak or flint may not read it, 78 for
/// anything else wrong with the file (missing, a folder or a FIFO, too large, not text), which
/// an operator fixes by putting the right file there.
impl HasExitStatus for Error {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Exposed { .. } => ExitStatus::Permission,
            Error::Unreadable { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                ExitStatus::Permission
            }
            Error::Unreadable { .. } | Error::Empty { .. } => ExitStatus::Config,
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

/// Every token this process has read: what `scrub` takes out of any text bound for a log line,
/// `systemctl status` or the standard output, since a server or proxy may echo a request's
/// `Authorization` header back in an error body.
static HELD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// `text` with every token this process holds replaced by `[redacted]`.
pub fn scrub(text: &str) -> std::borrow::Cow<'_, str> {
    let held = HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut text = std::borrow::Cow::Borrowed(text);
    for secret in held.iter() {
        if text.contains(secret.as_str()) {
            text = std::borrow::Cow::Owned(text.replace(secret.as_str(), "[redacted]"));
        }
    }
    text
}

fn hold(secret: &str) {
    let mut held = HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !held.iter().any(|s| s == secret) {
        held.push(secret.to_owned());
    }
}

/// A token read from a file. `Debug` and `Display` print a placeholder, so a secret cannot reach
/// a log line through an error or a `{:?}`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it (an `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Reads a token file (one line; surrounding whitespace dropped) after checking its permissions.
pub fn read_token(path: &Path) -> Result<Secret, Error> {
    ensure_private(path)?;
    let text = crate::files::read_text(path, crate::files::MAX_SMALL).map_err(|source| {
        Error::Unreadable {
            path: path.to_owned(),
            source,
        }
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Empty {
            path: path.to_owned(),
        });
    }
    hold(token);
    Ok(Secret(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;

    #[test]
    fn tokens_are_read_trimmed_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t-token\n").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        let secret = read_token(&path).unwrap();
        assert_eq!(secret.expose(), "s3cr3t-token");
        assert!(!format!("{secret} {secret:?}").contains("s3cr3t"));
    }

    #[test]
    fn shared_or_empty_token_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "t").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        let err = read_token(&path).unwrap_err();
        assert_eq!(err.exit_status(), ExitStatus::Permission);
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::write(&path, "\n").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            read_token(&path).unwrap_err().exit_status(),
            ExitStatus::Config
        );
    }

    /// A wrong file is the configuration's problem (78), as for cluster-config.json; only a
    /// secret that may leak or may not be read is a permission problem (77).
    #[test]
    fn a_folder_or_an_oversized_file_in_a_tokens_place_is_a_configuration_problem() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("token-folder");
        std::fs::create_dir(&folder).unwrap();
        std::fs::set_permissions(&folder, Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            read_token(&folder).unwrap_err().exit_status(),
            ExitStatus::Config
        );
        let large = dir.path().join("token-large");
        std::fs::write(&large, vec![b'a'; 65 * 1024]).unwrap();
        std::fs::set_permissions(&large, Permissions::from_mode(0o600)).unwrap();
        let err = read_token(&large).unwrap_err();
        assert_eq!(err.exit_status(), ExitStatus::Config, "{err}");
    }
}
