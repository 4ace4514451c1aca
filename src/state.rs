//! The state directory: the locks that serialise runs, run-once markers, and files written
//! atomically (temporary file, fsync, rename, fsync of the directory), so a crash at any point
//! leaves either the old file or the new one, never half of one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Service;
use crate::exit::{ExitStatus, HasExitStatus};
use crate::retry::{self, Class, Deadline, HasRetryClass, Pace};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A directory, the lock or a file could not be created, read or written.
    #[error("cannot {action} {}", file.display())]
    Io {
        file: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// A marker exists but is not one flint wrote.
    #[error("marker {} is not valid JSON from flint: {detail}; move it away to re-run the join", path.display())]
    BadMarker { path: PathBuf, detail: String },
    /// Another process holds a service's lock: worth waiting for, until the deadline.
    #[error("held by {holder}")]
    LockHeld { holder: String },
}

impl HasRetryClass for Error {
    fn class(&self) -> Class {
        match self {
            Error::LockHeld { .. } => Class::Transient { retry_after: None },
            Error::Io { .. } | Error::BadMarker { .. } => Class::Permanent,
        }
    }
}

impl HasExitStatus for Error {
    fn exit_status(&self) -> ExitStatus {
        match self {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                ExitStatus::Permission
            }
            // Full, over quota or failing: nothing in the configuration to fix, and the unit's
            // next start may find space again.
            Error::Io { source, .. }
                if matches!(
                    source.raw_os_error(),
                    Some(nix::libc::ENOSPC | nix::libc::EDQUOT | nix::libc::EIO)
                ) =>
            {
                ExitStatus::StateDisk
            }
            Error::Io { .. } => ExitStatus::Config,
            Error::BadMarker { .. } => ExitStatus::Config,
            Error::LockHeld { .. } => ExitStatus::Unavailable,
        }
    }
}

/// The run-once markers, under the names the first-boot units' `ConditionPathExists=!` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    ChainfireJoined,
    FlaredbJoined,
    EtcdJoined,
    IamSetupDone,
}

impl MarkerKind {
    pub fn of(service: Service) -> MarkerKind {
        match service {
            Service::Chainfire => MarkerKind::ChainfireJoined,
            Service::Flaredb => MarkerKind::FlaredbJoined,
            Service::Etcd => MarkerKind::EtcdJoined,
            Service::Iam => MarkerKind::IamSetupDone,
        }
    }

    pub fn file_name(self) -> &'static str {
        match self {
            MarkerKind::ChainfireJoined => ".chainfire-joined",
            MarkerKind::FlaredbJoined => ".flaredb-joined",
            MarkerKind::EtcdJoined => ".etcd-joined",
            MarkerKind::IamSetupDone => ".iam-setup-done",
        }
    }
}

/// What a marker records: enough for an operator (and `node-join`) to see what happened.
///
/// Read by flint versions older and newer than the one that wrote it (a rollback, an upgrade):
/// unknown fields are ignored, and a field once written is never removed or given a new meaning.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Marker {
    pub service: String,
    pub node_id: String,
    /// The member's ID in the cluster (etcd's hex ID; the node ID for the admin APIs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// The leader that confirmed the membership, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// IAM: the organization the initial setup created or found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Seconds since the Unix epoch.
    pub joined_at: u64,
    pub flint_version: String,
}

impl Marker {
    /// A marker stamped now with this flint's version.
    pub fn now(service: Service, node_id: &str) -> Marker {
        Marker {
            service: service.name().to_owned(),
            node_id: node_id.to_owned(),
            member_id: None,
            leader: None,
            org: None,
            joined_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            flint_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

/// Held while a command changes one service's state; released when dropped (or when the process
/// dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl StateDir {
    pub fn new(path: PathBuf) -> Self {
        StateDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a marker without taking the lock: markers are only ever renamed into place, so a
    /// reader sees none or a whole one.
    pub fn marker(&self, kind: MarkerKind) -> Result<Option<Marker>, Error> {
        let path = self.path.join(kind.file_name());
        let text = match crate::files::read_bounded(&path, crate::files::MAX_SMALL) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("read", &path, e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| Error::BadMarker {
                path,
                detail: e.to_string(),
            })
    }

    pub fn write_marker(&self, kind: MarkerKind, marker: &Marker) -> Result<PathBuf, Error> {
        let mut text = serde_json::to_vec_pretty(marker).expect("a marker always serializes");
        text.push(b'\n');
        let path = self.path.join(kind.file_name());
        write_atomic(&path, &text, 0o644)?;
        Ok(path)
    }

    /// Takes `service`'s lock, waiting until `deadline` for another flint that holds it (two
    /// units of one service, or an operator running `node-join` during boot). Each service has its
    /// own lock, since what it protects is that service's marker (and `etcd.env`): an etcd join
    /// waiting for a learner slot must not hold up the node's chainfire join. The holder writes
    /// its PID into the file, so whoever waits can name it.
    pub async fn lock(&self, service: Service, deadline: &Deadline) -> crate::Result<Lock> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|e| io_error("create", &self.path, e))?;
        let path = self.path.join(lock_file_name(service));
        // A link planted in the folder's place would have flint write its PID through it.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| io_error("open", &path, e))?;
        let what = format!("the {} lock {}", service.name(), path.display());
        retry::until(&what, deadline, Pace::EAGER, || async {
            match file.try_lock() {
                Ok(()) => Ok(()),
                Err(TryLockError::WouldBlock) => Err(Error::LockHeld {
                    holder: lock_holder(&path),
                }),
                Err(TryLockError::Error(e)) => Err(io_error("lock", &path, e)),
            }
        })
        .await?;
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
            .map_err(|e| io_error("write", &path, e))?;
        Ok(Lock { _file: file })
    }
}

/// `.etcd.lock`, `.chainfire.lock`, ...: one per service, beside its marker.
fn lock_file_name(service: Service) -> String {
    format!(".{}.lock", service.name())
}

/// "flint (PID 1234)" from what the holder wrote, or "another process" when it wrote nothing
/// (yet) or the file is not flint's.
fn lock_holder(path: &Path) -> String {
    crate::files::read_text(path, 64)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map_or_else(
            || "another process".to_owned(),
            |pid| format!("flint (PID {pid})"),
        )
}

fn io_error(action: &'static str, file: &Path, source: std::io::Error) -> Error {
    Error::Io {
        file: file.to_owned(),
        action,
        source,
    }
}

/// Replaces `path` with `contents`, durably: a reader (or a crash) sees the old file or the new
/// one, never a part of either. The file gets exactly `mode`, whatever the umask.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io_error(
            "write",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        )
    })?;
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    // A new file, never a link or a file someone else put at the temporary name (the textfile
    // folder is writable by node_exporter's own user): what was there is unlinked, not opened.
    let create = || {
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
    };
    let write = || -> std::io::Result<()> {
        let mut file = match create() {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&tmp)?;
                create()?
            }
            other => other?,
        };
        // The units' UMask=0077 would make node_exporter's textfile (0644) unreadable to the
        // collector's own user: the mode asked for is set, not masked.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_error("write", &tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_error("rename into place", path, e)
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.env");
        write_atomic(&path, b"A=1\n", 0o600).unwrap();
        write_atomic(&path, b"A=2\n", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"A=2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["etcd.env"]);
    }

    #[test]
    fn markers_round_trip_and_garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().to_owned());
        assert_eq!(state.marker(MarkerKind::EtcdJoined).unwrap(), None);
        let mut marker = Marker::now(Service::Etcd, "node04");
        marker.member_id = Some("8e9e05c52164694d".into());
        marker.leader = Some("node01".into());
        state.write_marker(MarkerKind::EtcdJoined, &marker).unwrap();
        assert_eq!(state.marker(MarkerKind::EtcdJoined).unwrap(), Some(marker));
        std::fs::write(dir.path().join(".etcd-joined"), "{").unwrap();
        let err = state
            .marker(MarkerKind::EtcdJoined)
            .unwrap_err()
            .to_string();
        assert!(err.contains(".etcd-joined"), "{err}");
    }
}
