//! `flint-boot inventory put` and `get`: the operator's side of the inventory the boot servers
//! share in etcd. A write is validated first and is a compare-and-swap on a revision, so an
//! invalid inventory never reaches the boot servers and a concurrent change is never lost.

use std::path::Path;

use flint_ipxe::Inventory;

use crate::ExitError;
use crate::etcd::{self, Etcd, Expect, Written};
use crate::identity::shown;

/// Validates `file` and writes it under `key` if the stored inventory is at `revision` (0: none
/// stored) or, without one, still the one read just before. What happened, for stdout.
pub async fn put(
    etcd: &Etcd,
    key: &str,
    file: &Path,
    revision: Option<i64>,
) -> Result<String, ExitError> {
    let path = file.to_owned();
    // Read once and checked as `serve --inventory` checks it (a regular file, bounded, every
    // field): what is written is exactly what was validated.
    let (inventory, text) = tokio::task::spawn_blocking(move || {
        let text = Inventory::read_text(&path)?;
        Inventory::from_json(&path.display().to_string(), &text).map(|inventory| (inventory, text))
    })
    .await
    .map_err(|e| ExitError::Unavailable(format!("validating the inventory: {e}")))?
    .map_err(|errors| {
        ExitError::Config(format!(
            "inventory rejected ({} problems), nothing written:\n{errors}",
            errors.0.len()
        ))
    })?;
    let bytes = text.into_bytes();
    let expect = match revision {
        Some(0) => Expect::Absent,
        Some(r) if r > 0 => Expect::Revision(r),
        Some(r) => {
            return Err(ExitError::Usage(format!(
                "--revision {r}: expected a revision `inventory get` printed, or 0"
            )));
        }
        None => {
            let read = etcd.get(key).await?;
            match read.value {
                Some(stored) if stored.bytes == bytes => {
                    return Ok(format!(
                        "{}: unchanged, the inventory stored at revision {} (nothing written)",
                        shown(file),
                        stored.mod_revision
                    ));
                }
                Some(stored) => Expect::Revision(stored.mod_revision),
                None => Expect::Absent,
            }
        }
    };
    let written = etcd
        .put_if(key, &bytes, expect)
        .await
        .map_err(|e| match e {
            etcd::Error::Refused {
                code: 3,
                ref message,
                ..
            } if message.contains("too large") => ExitError::Config(format!(
                "{}: etcd refused it as too large ({} bytes; etcd takes requests up to its \
                 --max-request-bytes, 1.5 MiB by default): {e}",
                shown(file),
                bytes.len()
            )),
            e => e.into(),
        })?;
    let key = flint_json::one_line(key);
    match written {
        Written::Stored(at) => Ok(format!(
            "{}: written to etcd {key} at revision {at} ({} nodes, {} profiles)",
            shown(file),
            inventory.nodes().len(),
            inventory.profiles().len()
        )),
        Written::Conflict(Some(now)) if now.bytes == bytes => Ok(format!(
            "{}: unchanged, the inventory stored at revision {} (nothing written)",
            shown(file),
            now.mod_revision
        )),
        Written::Conflict(now) => {
            let expected = match expect {
                Expect::Absent => "no inventory stored".to_owned(),
                Expect::Revision(r) => format!("revision {r}"),
            };
            let found = match now {
                Some(now) => format!("revision {}", now.mod_revision),
                None => "no inventory".to_owned(),
            };
            Err(ExitError::Conflict(format!(
                "{}: not written: etcd {key} changed (expected {expected}, found {found}); read \
                 it again with `flint-boot inventory get`, merge, and put with --revision",
                shown(file)
            )))
        }
    }
}

/// The stored inventory, as written, and its revision.
pub async fn get(etcd: &Etcd, key: &str) -> Result<(Vec<u8>, i64), ExitError> {
    let read = etcd.get(key).await?;
    let stored = read.value.ok_or_else(|| {
        ExitError::Config(format!(
            "etcd has no inventory at {}: write one with `flint-boot inventory put FILE`",
            flint_json::one_line(key)
        ))
    })?;
    Ok((stored.bytes, stored.mod_revision))
}
