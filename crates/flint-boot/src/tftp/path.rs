//! Mapping a requested file name to a file inside the TFTP root, by the rule of
//! `crate::served`, with the TFTP error each refusal gets.

use std::fs::File;
use std::path::Path;

use super::packet;
use crate::served::{self, Refused};

/// The file a request names under `root`, open, with its size; or the TFTP error to answer.
pub fn open(root: &Path, name: &str) -> Result<(File, u64), (u16, String)> {
    // PXE ROMs and pxelinux configs commonly write "/ipxe.efi" meaning root-relative.
    let rel = name.strip_prefix('/').unwrap_or(name);
    match served::open(root, Path::new(rel)) {
        Ok((file, meta)) => Ok((file, meta.len())),
        Err(refused @ (Refused::Escape(_) | Refused::Link | Refused::Denied)) => {
            Err((packet::ERR_ACCESS, format!("access violation: {refused}")))
        }
        Err(Refused::Absent) => Err((packet::ERR_NOT_FOUND, "file not found".into())),
        // Anything else (out of file descriptors, say) may pass: ERROR 0, which a ROM retries,
        // not ERROR 1, after which it gives up on the file.
        Err(Refused::Io(e)) => Err((packet::ERR_UNDEFINED, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_get_their_tftp_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("ipxe.efi"), b"x").unwrap();
        std::fs::create_dir(root.join("efi")).unwrap();
        assert_eq!(open(root, "ipxe.efi").unwrap().1, 1);
        assert_eq!(open(root, "/ipxe.efi").unwrap().1, 1);
        let code = |name| open(root, name).unwrap_err().0;
        assert_eq!(code("../x"), packet::ERR_ACCESS);
        assert_eq!(code("//etc/passwd"), packet::ERR_ACCESS);
        assert_eq!(code("nope"), packet::ERR_NOT_FOUND);
        assert_eq!(code("efi"), packet::ERR_NOT_FOUND);
        assert_eq!(code(""), packet::ERR_NOT_FOUND);
    }
}
