//! `flint-boot render DIR`: every script `serve` can answer, as static files, byte for byte,
//! and a `boot.ipxe` that finds them by file name, so that any web server serving files will
//! do (README: what such a server must do, and an nginx example).
//!
//! Layout:
//!
//! ```text
//! DIR/boot.ipxe
//! DIR/mac-<52-54-00-12-34-56>.<arch>.ipxe         what the static boot.ipxe fetches
//! DIR/uuid-<uuid>.<arch>.ipxe
//! DIR/unknown.<arch>.ipxe
//! DIR/ipxe/mac/<52-54-00-12-34-56>/<arch>.ipxe    the same, for a server mapping /ipxe?...
//! DIR/ipxe/uuid/<uuid>/<arch>.ipxe
//! DIR/ipxe/unknown/<arch>.ipxe
//! ```
//! `<arch>` is `default`, `i386`, `x86_64` or `arm64`, as `serve` derives it from `buildarch` and
//! `platform` (and the static `boot.ipxe` with iPXE's `iseq`). The scripts the static
//! `boot.ipxe` fetches sit beside it because iPXE resolves a script's relative image URLs
//! (`images/...`) against the script's own URL: from there they reach `DIR/images/`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flint_ipxe::{Arch, Inventory};

use crate::ExitError;

/// Written into every rendered folder: an existing DIR without it is not ours to replace.
const OWNED: &str = ".flint-render";

/// The arch variants a script can differ by, with their file names.
pub const ARCHES: [(Option<Arch>, &str); 4] = [
    (None, "default"),
    (Some(Arch::I386), "i386"),
    (Some(Arch::X86_64), "x86_64"),
    (Some(Arch::Arm64), "arm64"),
];

/// `boot_script` as `boot.ipxe`, and every script `serve` can answer for this inventory under
/// both names of the layout above.
pub fn files(inventory: &Inventory, boot_script: &str) -> Vec<(PathBuf, String)> {
    let mut out = vec![(PathBuf::from("boot.ipxe"), boot_script.to_owned())];
    for &(arch, arch_name) in &ARCHES {
        let mut add = |by: &str, key: &str, script: &str| {
            let nested = Path::new("ipxe").join(by).join(key);
            out.push((nested.join(format!("{arch_name}.ipxe")), script.to_owned()));
            out.push((
                PathBuf::from(format!("{by}-{key}.{arch_name}.ipxe")),
                script.to_owned(),
            ));
        };
        for node in inventory.nodes() {
            let script = inventory.render(&inventory.select(Some(&node.mac), None, arch), arch);
            add("mac", &node.mac.hyphenated(), &script);
            if let Some(uuid) = &node.uuid {
                add("uuid", &uuid.to_string(), &script);
            }
        }
        let unknown = inventory.render(&inventory.select(None, None, arch), arch);
        out.push((
            Path::new("ipxe/unknown").join(format!("{arch_name}.ipxe")),
            unknown.clone(),
        ));
        out.push((PathBuf::from(format!("unknown.{arch_name}.ipxe")), unknown));
    }
    out
}

/// Writes the files into a fresh folder beside DIR, then swaps it in with one rename, so a web
/// server serving DIR sees the old set or the new one, never a mix or a half-written file.
pub fn write(dir: &Path, files: &[(PathBuf, String)]) -> Result<(), ExitError> {
    let cant = |what: &str, path: &Path, e: io::Error| {
        ExitError::CantCreate(format!("{what} {}: {e}", path.display()))
    };
    let name = dir
        .file_name()
        .ok_or_else(|| ExitError::Usage(format!("{}: not a folder name", dir.display())))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let existing = match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            let empty = fs::read_dir(dir)
                .map_err(|e| cant("read", dir, e))?
                .next()
                .is_none();
            if !empty && !dir.join(OWNED).exists() {
                return Err(ExitError::CantCreate(format!(
                    "{}: exists, is not empty and was not written by flint-boot render \
                     (no {OWNED}); refusing to replace it",
                    dir.display()
                )));
            }
            true
        }
        Ok(_) => {
            return Err(ExitError::CantCreate(format!(
                "{}: exists and is not a folder",
                dir.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(cant("inspect", dir, e)),
    };
    let staging = parent.join(format!(
        ".{}.render-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = stage(&staging, files).and_then(|()| {
        if existing {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &staging,
                nix::fcntl::AT_FDCWD,
                dir,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(io::Error::from)
        } else {
            fs::rename(&staging, dir)
        }
        .and_then(|()| sync_dir(parent))
    });
    // After an exchange the staging path holds the previous set; after a failure, our partial
    // one. Either way it goes.
    let _ = fs::remove_dir_all(&staging);
    result.map_err(|e| cant("write", dir, e))
}

fn stage(staging: &Path, files: &[(PathBuf, String)]) -> io::Result<()> {
    fs::create_dir(staging)?;
    fs::write(staging.join(OWNED), "written by flint-boot render\n")?;
    // Folder by folder, each created once: ext4 fills one folder before the next much faster
    // than it visits 20,000 folders four times (10,000 nodes, 80,000 files: 75 s before, 31 s
    // after, measured on a busy 2-core machine).
    let mut order: Vec<&(PathBuf, String)> = files.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut made: Option<&Path> = None;
    for (rel, content) in order {
        let path = staging.join(rel);
        let folder = rel.parent();
        if folder.is_some() && folder != made {
            fs::create_dir_all(path.parent().expect("a file in a folder"))?;
            made = folder;
        }
        let mut f = fs::File::create(&path)?;
        f.write_all(content.as_bytes())?;
    }
    // One syncfs for the whole set instead of an fsync per file (tens of thousands for a big
    // inventory).
    let f = fs::File::open(staging)?;
    nix::unistd::syncfs(&f).map_err(io::Error::from)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
