//! `flint-boot render DIR`: every script `serve` can answer, as static files, byte for byte.
//!
//! Layout (what a web server maps `/ipxe?mac=&uuid=&buildarch=&platform=` onto; README has an
//! nginx example):
//!
//! ```text
//! DIR/boot.ipxe
//! DIR/ipxe/mac/<52-54-00-12-34-56>/<arch>.ipxe    one folder per node
//! DIR/ipxe/uuid/<uuid>/<arch>.ipxe                 nodes that have a UUID
//! DIR/ipxe/unknown/<arch>.ipxe                     the unknown-machine policy
//! DIR/ipxe/.flint-render                           every path render wrote
//! ```
//! Everything else in DIR (images, a site's pages) is the operator's and never touched.
//! `<arch>` is `default`, `i386`, `x86_64` or `arm64`, as `serve` derives it from `buildarch` and
//! `platform`.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flint_ipxe::{Arch, Inventory};

use crate::ExitError;

/// The folder render owns under DIR, and the one file beside it.
const SCRIPTS: &str = "ipxe";
const BOOT: &str = "boot.ipxe";
/// In `DIR/ipxe`: every path render wrote (relative to DIR), so the next render knows what is
/// its own to replace and what an operator put there.
const MANIFEST: &str = ".flint-render";

/// The arch variants a script can differ by, with their file names.
pub const ARCHES: [(Option<Arch>, &str); 4] = [
    (None, "default"),
    (Some(Arch::I386), "i386"),
    (Some(Arch::X86_64), "x86_64"),
    (Some(Arch::Arm64), "arm64"),
];

/// Every (relative path, content) `serve` can answer for this inventory.
pub fn files(inventory: &Inventory, boot_script: &str) -> Vec<(PathBuf, String)> {
    let mut out = vec![(PathBuf::from("boot.ipxe"), boot_script.to_owned())];
    for &(arch, arch_name) in &ARCHES {
        let file = format!("{arch_name}.ipxe");
        for node in inventory.nodes() {
            let script = inventory.render(&inventory.select(Some(&node.mac), None, arch), arch);
            let by_mac = Path::new("ipxe/mac").join(node.mac.hyphenated());
            out.push((by_mac.join(&file), script.clone()));
            if let Some(uuid) = &node.uuid {
                let by_uuid = Path::new("ipxe/uuid").join(uuid.to_string());
                out.push((by_uuid.join(&file), script));
            }
        }
        let unknown = inventory.render(&inventory.select(None, None, arch), arch);
        out.push((Path::new("ipxe/unknown").join(&file), unknown));
    }
    out
}

/// Writes the files under DIR, which stays the operator's: render owns only `DIR/boot.ipxe` and
/// `DIR/ipxe/`, so images, firmware or a site's own pages can live beside them in one web root.
/// The scripts are written into a fresh folder, then swapped with `DIR/ipxe` in one rename, so
/// a web server sees the old set or the new one, never a mix or a half-written file. Anything in
/// those two places that render did not write stops it before it changes a thing.
pub fn write(dir: &Path, files: &[(PathBuf, String)]) -> Result<(), ExitError> {
    let cant = |what: &str, path: &Path, e: io::Error| {
        ExitError::CantCreate(format!("{what} {}: {e}", path.display()))
    };
    fs::create_dir_all(dir).map_err(|e| cant("create", dir, e))?;
    let scripts = dir.join(SCRIPTS);
    let boot = dir.join(BOOT);
    let foreign = not_ours(dir).map_err(|e| cant("inspect", &scripts, e))?;
    if !foreign.is_empty() {
        const SHOWN: usize = 10;
        let mut list: Vec<String> = foreign
            .iter()
            .take(SHOWN)
            .map(|p| dir.join(p).display().to_string())
            .collect();
        if foreign.len() > SHOWN {
            list.push(format!("and {} more", foreign.len() - SHOWN));
        }
        return Err(ExitError::CantCreate(format!(
            "{}: render owns {BOOT} and {SCRIPTS}/ and would replace them, but they hold what it \
             did not write; move it elsewhere (images belong in {}) and render again:\n  {}",
            dir.display(),
            dir.join("images").display(),
            list.join("\n  ")
        )));
    }
    let pid = std::process::id();
    let staging = dir.join(format!(".{SCRIPTS}.render-{pid}"));
    let boot_tmp = dir.join(format!(".{BOOT}.render-{pid}"));
    let existing = scripts.exists();
    let result = stage(&staging, &boot_tmp, files).and_then(|()| {
        if existing {
            // rustix, not nix: nix offers renameat2 only with glibc, and flint-boot is built
            // static against musl.
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &staging,
                rustix::fs::CWD,
                &scripts,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(io::Error::from)
        } else {
            fs::rename(&staging, &scripts)
        }?;
        // boot.ipxe only chains to /ipxe, so it may change a moment after the scripts do.
        fs::rename(&boot_tmp, &boot)?;
        sync_dir(dir)
    });
    // After an exchange the staging path holds the previous set; after a failure, our partial
    // one. Either way it goes, and only what render wrote is in it.
    let _ = fs::remove_dir_all(&staging);
    let _ = fs::remove_file(&boot_tmp);
    result.map_err(|e| cant("write", dir, e))
}

/// What is in `DIR/boot.ipxe` and `DIR/ipxe/` that the previous render's manifest does not
/// list, relative to DIR. A folder no listed file is in is named once, not walked.
fn not_ours(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let scripts = Path::new(SCRIPTS);
    let mut owned = HashSet::new();
    match fs::read_to_string(dir.join(scripts).join(MANIFEST)) {
        Ok(text) => {
            owned.insert(scripts.join(MANIFEST));
            owned.extend(
                text.lines()
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(PathBuf::from),
            );
        }
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => {}
        Err(e) => return Err(e),
    }
    let folders: HashSet<&Path> = owned.iter().flat_map(|p| p.ancestors().skip(1)).collect();
    let mut foreign = Vec::new();
    match fs::symlink_metadata(dir.join(BOOT)) {
        Ok(_) if !owned.contains(Path::new(BOOT)) => foreign.push(PathBuf::from(BOOT)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match fs::symlink_metadata(dir.join(scripts)) {
        Ok(m) if m.is_dir() => walk(dir, scripts, &owned, &folders, &mut foreign)?,
        Ok(_) => foreign.push(scripts.to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(foreign)
}

fn walk(
    dir: &Path,
    rel: &Path,
    owned: &HashSet<PathBuf>,
    folders: &HashSet<&Path>,
    foreign: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir.join(rel))?.collect::<io::Result<_>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = rel.join(entry.file_name());
        // file_type does not follow links: a link render did not write is foreign, whatever it
        // points at.
        let kind = entry.file_type()?;
        if kind.is_dir() && folders.contains(path.as_path()) {
            walk(dir, &path, owned, folders, foreign)?;
        } else if kind.is_dir() || !owned.contains(&path) {
            foreign.push(path);
        }
    }
    Ok(())
}

fn stage(staging: &Path, boot_tmp: &Path, files: &[(PathBuf, String)]) -> io::Result<()> {
    fs::create_dir(staging)?;
    let mut manifest =
        String::from("# written by flint-boot render: every file it owns under DIR\n");
    // Folder by folder, each created once: ext4 fills one folder before the next much faster
    // than it visits 20,000 folders four times (10,000 nodes, 80,000 files: 75 s before, 31 s
    // after, measured on a busy 2-core machine).
    let mut order: Vec<&(PathBuf, String)> = files.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut made: Option<&Path> = None;
    for (rel, content) in order {
        let path = if rel == Path::new(BOOT) {
            boot_tmp.to_owned()
        } else {
            let inside = rel
                .strip_prefix(SCRIPTS)
                .map_err(|_| io::Error::other(format!("{}: outside {SCRIPTS}/", rel.display())))?;
            let path = staging.join(inside);
            let folder = rel.parent();
            if folder.is_some() && folder != made {
                fs::create_dir_all(path.parent().expect("a file in a folder"))?;
                made = folder;
            }
            path
        };
        let mut f = fs::File::create(&path)?;
        f.write_all(content.as_bytes())?;
        manifest.push_str(&rel.to_string_lossy());
        manifest.push('\n');
    }
    fs::write(staging.join(MANIFEST), manifest)?;
    // One syncfs for the whole set instead of an fsync per file (tens of thousands for a big
    // inventory).
    let f = fs::File::open(staging)?;
    nix::unistd::syncfs(&f).map_err(io::Error::from)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
