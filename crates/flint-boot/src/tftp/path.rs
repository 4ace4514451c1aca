//! Mapping a requested file name to a file inside the TFTP root, refusing every escape.

use std::io;
use std::path::{Component, Path, PathBuf};

use super::packet;

/// Maps a request path to a file under `root`, or the TFTP error to answer.
pub fn resolve(root: &Path, name: &str) -> Result<PathBuf, (u16, String)> {
    let access = |why: &str| (packet::ERR_ACCESS, format!("access violation: {why}"));
    // PXE ROMs and pxelinux configs commonly write "/ipxe.efi" meaning root-relative.
    let rel = Path::new(name.strip_prefix('/').unwrap_or(name));
    if name.is_empty() || rel.as_os_str().is_empty() {
        return Err((packet::ERR_NOT_FOUND, "file not found".into()));
    }
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(access("'..' in path")),
            Component::RootDir | Component::Prefix(_) => return Err(access("absolute path")),
        }
    }
    let full = root.join(rel);
    // Canonicalising follows symlinks, so a link pointing outside the root is caught below.
    let real = match full.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err((packet::ERR_NOT_FOUND, "file not found".into()));
        }
        Err(_) => return Err(access("cannot resolve path")),
    };
    if !real.starts_with(root) {
        return Err(access("outside the root"));
    }
    if !real.is_file() {
        return Err((packet::ERR_NOT_FOUND, "not a regular file".into()));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_rejects_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("ipxe.efi"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        assert!(resolve(&root, "ipxe.efi").is_ok());
        assert!(resolve(&root, "/ipxe.efi").is_ok());
        assert_eq!(resolve(&root, "../x").unwrap_err().0, packet::ERR_ACCESS);
        assert_eq!(
            resolve(&root, "//etc/passwd").unwrap_err().0,
            packet::ERR_ACCESS
        );
        assert_eq!(
            resolve(&root, "etc/passwd").unwrap_err().0,
            packet::ERR_ACCESS
        );
        assert_eq!(resolve(&root, "nope").unwrap_err().0, packet::ERR_NOT_FOUND);
    }
}
