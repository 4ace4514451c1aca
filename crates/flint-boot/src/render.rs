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
//! DIR/ipxe/.flint-render                           every path render wrote
//! ```
//! Everything else in DIR (images, a site's pages) is the operator's and never touched.
//! `<arch>` is `default`, `i386`, `x86_64` or `arm64`, as `serve` derives it from `buildarch` and
//! `platform` (and the static `boot.ipxe` with iPXE's `iseq`). The scripts the static
//! `boot.ipxe` fetches sit beside it because iPXE resolves a script's relative image URLs
//! (`images/...`) against the script's own URL: from there they reach `DIR/images/`.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flint_ipxe::{Arch, Inventory};

use crate::ExitError;

/// The folder render owns under DIR, and the file beside it that fetches the scripts.
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

/// Writes the files under DIR, which stays the operator's: render owns `DIR/boot.ipxe`,
/// `DIR/ipxe/` and the scripts it lists beside `boot.ipxe`, so images, firmware or a site's own
/// pages can live beside them in one web root. `DIR/ipxe` is written into a fresh folder and
/// swapped in with one rename, so a web server sees the old set or the new one there; each
/// script beside `boot.ipxe` is renamed into place whole, and `boot.ipxe`, which fetches them,
/// last. Anything render did not write where it would write stops it before it changes a thing.
pub fn write(dir: &Path, files: &[(PathBuf, String)]) -> Result<(), ExitError> {
    let cant = |what: &str, path: &Path, e: io::Error| {
        ExitError::CantCreate(format!("{what} {}: {e}", path.display()))
    };
    fs::create_dir_all(dir).map_err(|e| cant("create", dir, e))?;
    let scripts = dir.join(SCRIPTS);
    let boot = dir.join(BOOT);
    let beside: Vec<&(PathBuf, String)> = files
        .iter()
        .filter(|(rel, _)| rel.parent() == Some(Path::new("")) && rel != Path::new(BOOT))
        .collect();
    let wanted: HashSet<&Path> = beside.iter().map(|(rel, _)| rel.as_path()).collect();
    let (owned, foreign) = ownership(dir, &wanted).map_err(|e| cant("inspect", &scripts, e))?;
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
            "{}: render owns {BOOT}, {SCRIPTS}/ and the scripts beside {BOOT} and would replace \
             them, but they hold what it did not write; move it elsewhere (images belong in {}) \
             and render again:\n  {}",
            dir.display(),
            dir.join("images").display(),
            list.join("\n  ")
        )));
    }
    let pid = std::process::id();
    let temporary = |rel: &Path| dir.join(format!(".{}.render-{pid}", rel.display()));
    let staging = dir.join(format!(".{SCRIPTS}.render-{pid}"));
    let boot_tmp = temporary(Path::new(BOOT));
    let existing = scripts.exists();
    let result = stage(&staging, &boot_tmp, files, &temporary).and_then(|()| {
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
        for (rel, _) in &beside {
            fs::rename(temporary(rel), dir.join(rel))?;
        }
        // Only now may boot.ipxe send machines to the scripts beside it.
        fs::rename(&boot_tmp, &boot)?;
        // What the previous render wrote beside boot.ipxe and this one did not: a node gone.
        for rel in owned
            .iter()
            .filter(|rel| rel.parent() == Some(Path::new("")) && rel.as_path() != Path::new(BOOT))
            .filter(|rel| !wanted.contains(rel.as_path()))
        {
            match fs::remove_file(dir.join(rel)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        sync_dir(dir)
    });
    // After an exchange the staging path holds the previous set; after a failure, our partial
    // one. Either way it goes, and only what render wrote is in it.
    let _ = fs::remove_dir_all(&staging);
    let _ = fs::remove_file(&boot_tmp);
    for (rel, _) in &beside {
        let _ = fs::remove_file(temporary(rel));
    }
    result.map_err(|e| cant("write", dir, e))
}

/// What the previous render's manifest lists (relative to DIR), and what is where render would
/// write that it does not list: in `DIR/boot.ipxe`, `DIR/ipxe/`, and at the names of `wanted`
/// beside `boot.ipxe`. A folder no listed file is in is named once, not walked.
fn ownership(dir: &Path, wanted: &HashSet<&Path>) -> io::Result<(HashSet<PathBuf>, Vec<PathBuf>)> {
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
    let mut beside: Vec<&Path> = wanted.iter().copied().collect();
    beside.sort();
    for rel in std::iter::once(Path::new(BOOT)).chain(beside) {
        match fs::symlink_metadata(dir.join(rel)) {
            Ok(_) if !owned.contains(rel) => foreign.push(rel.to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match fs::symlink_metadata(dir.join(scripts)) {
        Ok(m) if m.is_dir() => walk(dir, scripts, &owned, &folders, &mut foreign)?,
        Ok(_) => foreign.push(scripts.to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok((owned, foreign))
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

fn stage(
    staging: &Path,
    boot_tmp: &Path,
    files: &[(PathBuf, String)],
    temporary: &dyn Fn(&Path) -> PathBuf,
) -> io::Result<()> {
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
        } else if rel.parent() == Some(Path::new("")) {
            temporary(rel)
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
