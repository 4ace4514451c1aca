//! The inventory being served, swapped whole on change so a request sees one version or the
//! other, never a mix; a new version that does not validate is rejected and the old one stays.
//!
//! It comes from a file (reloaded on SIGHUP and when the file changes) or from a key in etcd,
//! shared by every boot server of the site and watched: a change is served within a second of
//! its write, and while etcd cannot be reached the last inventory read goes on being served,
//! and the log, the fleet view and /metrics say so.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flint_ipxe::{Inventory, InventoryErrors};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::ExitError;
use crate::etcd::{self, Ended, Etcd, Event};
use crate::metrics::Metrics;

/// How often the file is checked for changes. Polling the metadata is one `stat` a second, and
/// unlike inotify it sees every way an operator replaces the file (editor, rename, bind mount,
/// a ConfigMap's symlink swap).
const POLL: Duration = Duration::from_secs(1);

/// Where the served inventory comes from and whether it is current: the fleet view and
/// `/api/machines` show it (docs/journeys.md).
#[derive(Debug, Clone, Serialize)]
pub struct Origin {
    /// `file` or `etcd`.
    pub source: &'static str,
    /// The file's path, or the etcd key.
    pub name: String,
    /// The etcd revision of the inventory served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Why the inventory served may be out of date (etcd unreachable), and since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<Stale>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stale {
    pub reason: String,
    pub since_ms: u64,
}

pub struct SharedInventory {
    current: RwLock<Arc<Inventory>>,
    origin: Mutex<Origin>,
    metrics: Arc<Metrics>,
}

/// The inventory's node count, and each of its profiles a series of the scripts served from
/// the start, at 0.
fn count(metrics: &Metrics, inventory: &Inventory) {
    metrics
        .inventory_nodes
        .store(inventory.nodes().len() as u64, Ordering::Relaxed);
    for profile in inventory.profiles().keys() {
        metrics.scripts.add(&[profile], 0);
    }
}

impl SharedInventory {
    fn new(inventory: Inventory, origin: Origin, metrics: Arc<Metrics>) -> Self {
        count(&metrics, &inventory);
        Self {
            current: RwLock::new(Arc::new(inventory)),
            origin: Mutex::new(origin),
            metrics,
        }
    }

    pub fn get(&self) -> Arc<Inventory> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn origin(&self) -> Origin {
        self.origin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace(&self, inventory: Inventory, revision: Option<i64>) {
        count(&self.metrics, &inventory);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(inventory);
        self.origin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .revision = revision;
        self.metrics.inventory_reloads.inc(&["ok"]);
        if let Some(revision) = revision {
            self.metrics
                .inventory_revision
                .store(u64::try_from(revision).unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// Marks the inventory as possibly out of date; `true` the first time, so the cause is
    /// logged once and not at every retry.
    fn set_stale(&self, reason: &str) -> bool {
        self.metrics.inventory_stale.store(1, Ordering::Relaxed);
        let mut origin = self.origin.lock().unwrap_or_else(|e| e.into_inner());
        let first = origin.stale.is_none();
        if first {
            origin.stale = Some(Stale {
                reason: reason.to_owned(),
                since_ms: now_ms(),
            });
        }
        first
    }

    /// Clears the mark; how long it lasted, if there was one.
    fn set_current(&self) -> Option<Duration> {
        self.metrics.inventory_stale.store(0, Ordering::Relaxed);
        let stale = self
            .origin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stale
            .take()?;
        Some(Duration::from_millis(
            now_ms().saturating_sub(stale.since_ms),
        ))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Up to 64 MiB of JSON takes seconds to parse: on a runtime worker it would stall the requests
/// that worker serves.
async fn parse_off_runtime<F>(parse: F) -> Result<Inventory, InventoryErrors>
where
    F: FnOnce() -> Result<Inventory, InventoryErrors> + Send + 'static,
{
    tokio::task::spawn_blocking(parse)
        .await
        .unwrap_or_else(|e| {
            Err(InventoryErrors(vec![flint_ipxe::InventoryError {
                file: "inventory".into(),
                path: ".".into(),
                expected: format!("a parse that does not fail ({e})"),
            }]))
        })
}

fn log_rejection(errors: &InventoryErrors, from: &str, why: &str) {
    for e in &errors.0 {
        tracing::error!("{e}");
    }
    tracing::error!(
        from,
        why,
        problems = errors.0.len(),
        "new inventory rejected, still serving the previous one"
    );
}

// --- a file ------------------------------------------------------------------------------------

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

/// The inventory file and the version of it last read, good or bad, so a bad file is reported
/// once, not every second.
pub struct FileSource {
    path: PathBuf,
    seen: Option<Stamp>,
}

impl FileSource {
    /// Reads the inventory at start; unlike a reload, a bad file here is fatal.
    pub fn load(
        path: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<SharedInventory>, FileSource), InventoryErrors> {
        let seen = Stamp::of(path);
        let inventory = Inventory::load(path)?;
        let origin = Origin {
            source: "file",
            name: path.display().to_string(),
            revision: None,
            stale: None,
        };
        let shared = Arc::new(SharedInventory::new(inventory, origin, metrics));
        Ok((
            shared,
            FileSource {
                path: path.to_owned(),
                seen,
            },
        ))
    }

    /// Reads the file again; on success the new inventory serves from the next request on.
    async fn reload(&mut self, shared: &SharedInventory, why: &str) {
        self.seen = Stamp::of(&self.path);
        let path = self.path.clone();
        let from = self.path.display().to_string();
        match parse_off_runtime(move || Inventory::load(&path)).await {
            Ok(inventory) => {
                let (nodes, profiles) = (inventory.nodes().len(), inventory.profiles().len());
                shared.replace(inventory, None);
                tracing::info!(file = from, why, nodes, profiles, "inventory reloaded");
            }
            Err(errors) => {
                shared.metrics.inventory_reloads.inc(&["rejected"]);
                log_rejection(&errors, &from, why);
            }
        }
    }

    fn changed(&self) -> bool {
        let now = Stamp::of(&self.path);
        // A file briefly missing (mid-replacement) is not a change to act on.
        now.is_some() && now != self.seen
    }

    /// Reloads on SIGHUP and whenever the file changes, until the future is dropped.
    pub async fn watch(mut self, shared: Arc<SharedInventory>) -> std::io::Result<()> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = hup.recv() => self.reload(&shared, "SIGHUP").await,
                _ = tick.tick() => {
                    if self.changed() {
                        self.reload(&shared, "file changed").await;
                    }
                }
            }
        }
    }
}

// --- etcd --------------------------------------------------------------------------------------

/// The etcd key the site's inventory is stored under.
pub fn etcd_key(prefix: &str) -> String {
    format!("{prefix}inventory")
}

/// What an inventory read from etcd is called in its errors.
fn etcd_label(key: &str, revision: i64) -> String {
    format!("etcd {} (revision {revision})", flint_json::one_line(key))
}

/// An inventory as etcd holds it: UTF-8 JSON, validated as a file is.
pub fn parse_stored(key: &str, entry: &etcd::Entry) -> Result<Inventory, InventoryErrors> {
    let label = etcd_label(key, entry.mod_revision);
    let text = std::str::from_utf8(&entry.bytes).map_err(|e| {
        InventoryErrors(vec![flint_ipxe::InventoryError {
            file: label.clone(),
            path: ".".into(),
            expected: format!("UTF-8 JSON ({e})"),
        }])
    })?;
    Inventory::from_json(&label, text)
}

/// The inventory under `key`, and the watch that keeps it current.
pub struct EtcdSource {
    etcd: Arc<Etcd>,
    key: String,
    /// The revision of the value last read, served or rejected, so a rejected one is reported
    /// once and not again at every reconnection.
    seen: i64,
    /// The next revision the watch must see.
    next: i64,
    /// The member the watch runs on.
    endpoint: usize,
}

impl EtcdSource {
    /// Reads the inventory at start, trying every member for up to `wait`, and waiting as long
    /// for one to be written (boot servers may start before the operator's first `inventory
    /// put`): 69 when there is none by then, so systemd starts the server again; 78 when the one
    /// stored does not validate.
    pub async fn load(
        etcd: Arc<Etcd>,
        key: String,
        metrics: Arc<Metrics>,
        wait: Duration,
    ) -> Result<(Arc<SharedInventory>, EtcdSource), ExitError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = etcd::reconnect_pace();
        let mut said_absent = false;
        let (revision, endpoint, entry) = loop {
            let problem = match etcd.get(&key).await {
                Ok(etcd::Read {
                    value: Some(entry),
                    revision,
                    endpoint,
                }) => break (revision, endpoint, entry),
                Ok(_) => {
                    let absent = ExitError::Unavailable(format!(
                        "etcd has no inventory at {}: write one with `flint-boot inventory put FILE`",
                        flint_json::one_line(&key)
                    ));
                    if !said_absent {
                        said_absent = true;
                        tracing::warn!("{absent}; waiting for one");
                    }
                    absent
                }
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for etcd to read the inventory");
                    ExitError::from(e)
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(
                    problem.context(&format!("no inventory read from etcd within {wait:?}"))
                );
            }
            tokio::time::sleep(pause.next().unwrap_or(Duration::from_secs(1))).await;
        };
        let label = etcd_label(&key, entry.mod_revision);
        let (k, e) = (key.clone(), entry.clone());
        let inventory = parse_off_runtime(move || parse_stored(&k, &e))
            .await
            .map_err(|errors| {
                ExitError::Config(format!(
                    "inventory {label} rejected ({} problems):\n{errors}",
                    errors.0.len()
                ))
            })?;
        tracing::info!(
            key = flint_json::one_line(&key), revision = entry.mod_revision,
            nodes = inventory.nodes().len(), endpoint = %etcd.endpoint(endpoint),
            "inventory read from etcd"
        );
        let origin = Origin {
            source: "etcd",
            name: key.clone(),
            revision: Some(entry.mod_revision),
            stale: None,
        };
        let shared = Arc::new(SharedInventory::new(inventory, origin, metrics));
        shared.metrics.inventory_revision.store(
            u64::try_from(entry.mod_revision).unwrap_or(0),
            Ordering::Relaxed,
        );
        Ok((
            shared,
            EtcdSource {
                etcd,
                key,
                seen: entry.mod_revision,
                next: revision + 1,
                endpoint,
            },
        ))
    }

    /// Follows the key until the future is dropped: a watch on one member; when it breaks, a
    /// read from the other members (catching up on what the watch missed) and a watch on the
    /// member that answered. Only when no member answers is the inventory marked stale, and the
    /// reads go on with a growing pause until one does.
    pub async fn watch(mut self, shared: Arc<SharedInventory>) -> std::io::Result<()> {
        loop {
            match self.follow(&shared).await {
                Ended::Compacted(revision) => tracing::info!(
                    revision,
                    "etcd compacted the revisions the watch needed; reading the inventory again"
                ),
                Ended::Broken(e) => {
                    tracing::info!(
                        error = %e, endpoint = %self.etcd.endpoint(self.endpoint),
                        "the watch of the inventory broke; reading it from the other members"
                    );
                    self.endpoint = (self.endpoint + 1) % self.etcd.endpoint_count();
                }
            }
            let mut pause = etcd::reconnect_pace();
            loop {
                match self.catch_up(&shared).await {
                    Ok(()) => break,
                    Err(e) => {
                        let why = e.to_string();
                        if shared.set_stale(&why) {
                            tracing::warn!(
                                error = why,
                                revision = shared.origin().revision,
                                "etcd unreachable: still serving the last inventory read from \
                                 it; trying every member until one answers"
                            );
                        } else {
                            tracing::debug!(error = why, "etcd still unreachable");
                        }
                        tokio::time::sleep(pause.next().unwrap_or(Duration::from_secs(5))).await;
                    }
                }
            }
            if let Some(gone) = shared.set_current() {
                tracing::info!(
                    endpoint = %self.etcd.endpoint(self.endpoint),
                    revision = shared.origin().revision,
                    after_s = gone.as_secs(),
                    "etcd reachable again; serving its inventory"
                );
            }
        }
    }

    /// Reads the key from the first member that answers, from the current one on, applies it
    /// if it changed, and watches from there on the member that answered.
    async fn catch_up(&mut self, shared: &SharedInventory) -> Result<(), etcd::Error> {
        let read = self.etcd.get_from(self.endpoint, &self.key).await?;
        self.endpoint = read.endpoint;
        self.next = read.revision + 1;
        match read.value {
            Some(entry) => {
                self.apply(shared, entry, "read after the watch broke")
                    .await
            }
            None => self.deleted(shared, read.revision),
        }
        Ok(())
    }

    async fn follow(&mut self, shared: &SharedInventory) -> Ended {
        let watch = match self.etcd.watch(self.endpoint, &self.key, self.next).await {
            Ok(watch) => watch,
            Err(e) => return Ended::Broken(e),
        };
        let etcd = self.etcd.clone();
        let mut watch = etcd.keep_watching(self.endpoint, watch).await;
        loop {
            let events = match watch.events().await {
                Ok(events) => events,
                Err(ended) => return ended,
            };
            for event in events {
                match event {
                    Event::Put(entry) => {
                        self.next = entry.mod_revision + 1;
                        self.apply(shared, entry, "written to etcd").await;
                    }
                    Event::Deleted { revision } => {
                        self.next = revision + 1;
                        self.deleted(shared, revision);
                    }
                }
            }
        }
    }

    async fn apply(&mut self, shared: &SharedInventory, entry: etcd::Entry, why: &str) {
        if entry.mod_revision == self.seen {
            return;
        }
        self.seen = entry.mod_revision;
        let revision = entry.mod_revision;
        let label = etcd_label(&self.key, revision);
        let key = self.key.clone();
        match parse_off_runtime(move || parse_stored(&key, &entry)).await {
            Ok(inventory) => {
                let (nodes, profiles) = (inventory.nodes().len(), inventory.profiles().len());
                shared.replace(inventory, Some(revision));
                tracing::info!(from = label, why, nodes, profiles, "inventory reloaded");
            }
            Err(errors) => {
                shared.metrics.inventory_reloads.inc(&["rejected"]);
                log_rejection(&errors, &label, why);
            }
        }
    }

    fn deleted(&mut self, shared: &SharedInventory, revision: i64) {
        if revision == self.seen {
            return;
        }
        self.seen = revision;
        shared.metrics.inventory_reloads.inc(&["rejected"]);
        tracing::error!(
            key = flint_json::one_line(&self.key),
            revision,
            "the inventory was deleted from etcd; still serving the previous one"
        );
    }
}

/// What keeps the served inventory current.
pub enum Watcher {
    File(FileSource),
    Etcd(EtcdSource),
}

impl Watcher {
    pub async fn run(self, shared: Arc<SharedInventory>) -> std::io::Result<()> {
        match self {
            Watcher::File(file) => file.watch(shared).await,
            Watcher::Etcd(etcd) => etcd.watch(shared).await,
        }
    }
}
