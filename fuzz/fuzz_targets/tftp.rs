//! TFTP: packets as the server reads them, the packets it writes read back, and the mapping of
//! a requested name to a file, which must never open one outside the root.
#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flint_boot::tftp::packet::{self, Packet};
use flint_boot::tftp::path;
use libfuzzer_sys::fuzz_target;

/// What no opened file may hold: the content of a file beside the root.
const SECRET: &[u8] = b"flint-fuzz: outside the TFTP root";

/// A root with a file, a folder, a link inside, and a link out of it in a folder anyone may
/// write, which the rule never follows.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("flint-fuzz-tftp-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("efi")).unwrap();
        std::fs::create_dir_all(root.join("drop")).unwrap();
        std::fs::set_permissions(root.join("drop"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        std::fs::write(root.join("undionly.kpxe"), b"x").unwrap();
        std::fs::write(root.join("efi/ipxe.efi"), b"x").unwrap();
        std::fs::write(base.join("secret"), SECRET).unwrap();
        let _ = std::os::unix::fs::symlink("efi/ipxe.efi", root.join("inside"));
        let _ = std::os::unix::fs::symlink("../../secret", root.join("drop/outside"));
        root.canonicalize().unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(Packet::Request(req)) = packet::parse(data) else {
        return;
    };
    if let Ok((file, _)) = path::open(root(), &req.filename) {
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut content).unwrap();
        assert!(
            content != SECRET,
            "{:?} opened a file outside the root",
            req.filename
        );
    }
    // The server never receives an OACK: it reads one as a packet it does not expect.
    assert_eq!(
        packet::parse(&packet::oack(&req.options)),
        Ok(Packet::Other(6))
    );
    assert_eq!(
        packet::parse(&packet::error(packet::ERR_NOT_FOUND, &req.filename)),
        Ok(Packet::Error(packet::ERR_NOT_FOUND, req.filename.clone()))
    );
});
