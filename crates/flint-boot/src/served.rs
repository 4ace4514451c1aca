//! What a name in a served folder may reach: the one rule of the TFTP root, `/firmware/`,
//! `/images/` and the start-up check of the iPXE binaries ProxyDHCP names.
//!
//! The folder is the operator's choice, and so are the links root placed in it: Debian's
//! `/usr/lib/ipxe/ipxe.efi` is a link to `/boot/ipxe.efi`, and image trees are often links into
//! a store. A client chooses only the name below the folder, so the name never climbs out (`..`,
//! an absolute path), and a link on its way is followed only when no one but root or the
//! server's own user could have put it there: the link is theirs, and so is every folder from
//! the served one down to it, none writable by group or others. Any other link is refused,
//! wherever it points, so a user who can write somewhere below the folder cannot reach a file
//! outside it that the server may read. Where a followed link points is the operator's choice:
//! the kernel resolves its target as written.
//!
//! Each step opens the next name relative to the folder already open, never a whole path
//! again, and a name that turns into a link between the look and the open is refused (it is
//! opened with `O_NOFOLLOW`): a folder no one else may write cannot change under the check.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

/// Links followed on one name at most, as the kernel's own limit (40) for a path.
const MAX_LINKS: usize = 40;

/// Why a name gives no file.
#[derive(Debug)]
pub enum Refused {
    /// `..` or an absolute path: the name would climb out of the folder.
    Escape(&'static str),
    /// A link someone other than root or the server's user could have placed.
    Link,
    /// Nothing there, or not a regular file (a folder, a FIFO, a device).
    Absent,
    /// There, but the server may not read it.
    Denied,
    /// Anything else (out of file descriptors, say): the same request may work later.
    Io(io::Error),
}

impl From<Errno> for Refused {
    fn from(e: Errno) -> Self {
        match e {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ENAMETOOLONG | Errno::ELOOP => Refused::Absent,
            Errno::EACCES | Errno::EPERM => Refused::Denied,
            e => Refused::Io(e.into()),
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Escape(why) => f.write_str(why),
            Refused::Link => f.write_str(
                "a link not owned by root or the server's user, or in a folder others may write",
            ),
            Refused::Absent => f.write_str("no regular file"),
            Refused::Denied => f.write_str("permission denied"),
            Refused::Io(e) => e.fmt(f),
        }
    }
}

/// The regular file `name` names inside `root`, open for reading, with its metadata.
pub fn open(root: &Path, name: &Path) -> Result<(File, Metadata), Refused> {
    let mut parts: Vec<&OsStr> = Vec::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(Refused::Escape("'..' in path")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(Refused::Escape("absolute path"));
            }
        }
    }
    let Some((file, folders)) = parts.split_last() else {
        return Err(Refused::Absent);
    };
    let folder_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    // Non-blocking, so that a FIFO does not hold a thread until some writer opens it; it is
    // refused below. Reads of a regular file ignore the flag.
    let file_flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let mut dir: OwnedFd = nix::fcntl::open(root, folder_flags, Mode::empty())?;
    let mut way_trusted = trusted_folder(&fstat(&dir)?);
    let mut links = 0;
    for part in folders {
        let next = step(&dir, part, folder_flags, way_trusted, &mut links)?;
        way_trusted &= trusted_folder(&fstat(&next)?);
        dir = next;
    }
    let file = File::from(step(&dir, file, file_flags, way_trusted, &mut links)?);
    let meta = file.metadata().map_err(Refused::Io)?;
    if !meta.is_file() {
        return Err(Refused::Absent);
    }
    Ok((file, meta))
}

/// Opens `part` of `dir` with `flags`: the entry itself, or the target of a link the rule
/// follows.
fn step(
    dir: &OwnedFd,
    part: &OsStr,
    flags: OFlag,
    way_trusted: bool,
    links: &mut usize,
) -> Result<OwnedFd, Refused> {
    let entry = fstatat(dir, part, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if !is(&entry, SFlag::S_IFLNK) {
        return Ok(openat(dir, part, flags | OFlag::O_NOFOLLOW, Mode::empty())?);
    }
    if !(way_trusted && trusted_owner(entry.st_uid)) {
        return Err(Refused::Link);
    }
    *links += 1;
    if *links > MAX_LINKS {
        return Err(Refused::Absent);
    }
    let target = readlinkat(dir, part)?;
    Ok(openat(dir, target.as_os_str(), flags, Mode::empty())?)
}

fn is(stat: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == kind
}

/// Root and the server's own user can already serve whatever they like.
fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// A folder in which only a trusted owner can create, rename or replace an entry.
fn trusted_folder(stat: &FileStat) -> bool {
    trusted_owner(stat.st_uid) && stat.st_mode & 0o022 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn refused(root: &Path, name: &str) -> Refused {
        open(root, Path::new(name)).map(|_| ()).unwrap_err()
    }

    #[test]
    fn names_never_climb_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ipxe.efi"), b"x").unwrap();
        assert!(open(dir.path(), Path::new("ipxe.efi")).is_ok());
        assert!(open(dir.path(), Path::new("./ipxe.efi")).is_ok());
        assert!(matches!(refused(dir.path(), "../x"), Refused::Escape(_)));
        assert!(matches!(
            refused(dir.path(), "/etc/passwd"),
            Refused::Escape(_)
        ));
        assert!(matches!(refused(dir.path(), ""), Refused::Absent));
        assert!(matches!(refused(dir.path(), "."), Refused::Absent));
        assert!(matches!(refused(dir.path(), "nope"), Refused::Absent));
    }

    /// Links of the folder's owner are followed, wherever they point; a link in a folder others
    /// may write is not, whoever owns it (owners other than root and the server's user are
    /// tested as root in tests/links.rs: only root can give a link away).
    #[test]
    fn links_are_followed_only_on_a_way_no_one_else_may_write() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("ipxe.efi"), b"outside").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        symlink(outside.path().join("ipxe.efi"), root.join("ipxe.efi")).unwrap();
        symlink(outside.path(), root.join("store")).unwrap();
        std::fs::create_dir(root.join("drop")).unwrap();
        std::fs::set_permissions(root.join("drop"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        symlink(outside.path().join("ipxe.efi"), root.join("drop/ipxe.efi")).unwrap();
        std::fs::write(root.join("drop/plain"), b"plain").unwrap();
        symlink("loop", root.join("loop")).unwrap();

        let read = |name: &str| {
            let (file, _) = open(root, Path::new(name)).unwrap();
            std::io::read_to_string(file).unwrap()
        };
        assert_eq!(read("ipxe.efi"), "outside");
        assert_eq!(read("store/ipxe.efi"), "outside");
        assert_eq!(read("drop/plain"), "plain");
        assert!(matches!(refused(root, "drop/ipxe.efi"), Refused::Link));
        assert!(matches!(refused(root, "loop"), Refused::Absent));
        assert!(matches!(refused(root, "store"), Refused::Absent));
    }
}
