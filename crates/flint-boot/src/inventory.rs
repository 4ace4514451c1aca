//! The inventory being served, swapped whole on reload so a request sees one version or the
//! other, never a mix; a new file that does not validate is rejected and the old one stays.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flint_ipxe::{Inventory, InventoryErrors};
use tokio::signal::unix::{SignalKind, signal};

use crate::metrics::Metrics;

/// How often the file is checked for changes. Polling the metadata is one `stat` a second, and
/// unlike inotify it sees every way an operator replaces the file (editor, rename, bind mount,
/// a ConfigMap's symlink swap).
const POLL: Duration = Duration::from_secs(1);

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

pub struct SharedInventory {
    path: PathBuf,
    current: RwLock<Arc<Inventory>>,
    /// The version last read, good or bad, so a bad file is reported once, not every second.
    seen: Mutex<Option<Stamp>>,
    metrics: Arc<Metrics>,
}

impl SharedInventory {
    /// Reads the inventory at start; unlike a reload, a bad file here is fatal.
    pub fn load(path: &Path, metrics: Arc<Metrics>) -> Result<Self, InventoryErrors> {
        let stamp = Stamp::of(path);
        let inventory = Inventory::load(path)?;
        metrics
            .inventory_nodes
            .store(inventory.nodes().len() as u64, Ordering::Relaxed);
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(inventory)),
            seen: Mutex::new(stamp),
            metrics,
        })
    }

    pub fn get(&self) -> Arc<Inventory> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again; on success the new inventory serves from the next request on.
    pub async fn reload(&self, why: &str) {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Stamp::of(&self.path);
        let path = self.path.clone();
        // Up to 64 MiB of JSON takes seconds to parse: on a runtime worker it would stall the
        // requests that worker serves.
        let loaded = match tokio::task::spawn_blocking(move || Inventory::load(&path)).await {
            Ok(loaded) => loaded,
            Err(e) => {
                self.metrics.inventory_reloads.inc(&["rejected"]);
                tracing::error!(
                    file = %self.path.display(), why, error = %e,
                    "inventory reload failed, still serving the previous one"
                );
                return;
            }
        };
        match loaded {
            Ok(inventory) => {
                let (nodes, profiles) = (inventory.nodes().len(), inventory.profiles().len());
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(inventory);
                self.metrics
                    .inventory_nodes
                    .store(nodes as u64, Ordering::Relaxed);
                self.metrics.inventory_reloads.inc(&["ok"]);
                tracing::info!(
                    file = %self.path.display(), why, nodes, profiles,
                    "inventory reloaded"
                );
            }
            Err(errors) => {
                self.metrics.inventory_reloads.inc(&["rejected"]);
                for e in &errors.0 {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    file = %self.path.display(), why, problems = errors.0.len(),
                    "new inventory rejected, still serving the previous one"
                );
            }
        }
    }

    fn changed(&self) -> bool {
        let now = Stamp::of(&self.path);
        // A file briefly missing (mid-replacement) is not a change to act on.
        now.is_some() && now != *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reloads on SIGHUP and whenever the file changes, until the future is dropped.
pub async fn watch(shared: Arc<SharedInventory>) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hup.recv() => shared.reload("SIGHUP").await,
            _ = tick.tick() => {
                if shared.changed() {
                    shared.reload("file changed").await;
                }
            }
        }
    }
}
