//! Journeys shared through etcd: every boot server of a site writes the steps it sees, and
//! reads everyone else's into its own journeys, so each server's fleet view shows every machine
//! whichever server answered it (docs/etcd-inventory.md).
//!
//! Each batch of steps is a key of its own, `PREFIXjourneys/INSTANCE/SEQ`, written once:
//! concurrent writers never touch the same key, so no step is lost to a race, and a reader needs
//! no lock. INSTANCE names one run of one server (its name, start time and a random part), SEQ
//! counts its batches; a batch read twice (a page read again, a write retried on another member)
//! is known by its SEQ and applied once. Every key is written with a lease that ends after the
//! retention time, so etcd forgets old machines by itself. A batch is one key rather than a key
//! per step because etcd's work (and the watchers' echo of it) goes by keys: a storm's thousands
//! of steps are tens of keys.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flint_ipxe::{ClusterService, Mac, Uuid};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::etcd::{self, Ended, Etcd};
use crate::journey::{Event, Journeys, Report, ReportStep, Stamped, printable};

/// Steps waiting to be written while etcd is slow or away; beyond them a step is not shared
/// (counted), though this server's own view keeps it.
pub const QUEUE: usize = 65_536;
/// Steps per key at most.
const BATCH: usize = 128;
/// How long a batch waits for more steps before it is written: in a storm, every write is a
/// Raft round and a disk sync on every member, so a thousand machines' steps go in tens of
/// transactions rather than thousands; a step reaches the other servers this much later.
const LINGER: Duration = Duration::from_millis(100);
/// Keys read per page when catching up: more than a transaction writes (one), so a page that
/// ends inside a transaction's revision and is read again from it always moves on; few enough
/// that a page of the largest batches, in base64 with its JSON around it, stays within the
/// largest answer read from etcd.
const PAGE: usize = 8;
/// The largest step accepted from etcd: a step is a few hundred bytes.
const MAX_STEP_BYTES: usize = 4_096;
/// The largest batch accepted from etcd: `BATCH` of the largest steps, one a line.
const MAX_BATCH_BYTES: usize = BATCH * (MAX_STEP_BYTES + 1);
const _: () = assert!(PAGE * (MAX_BATCH_BYTES.div_ceil(3) * 4 + 1_024) <= etcd::MAX_ANSWER);
/// Runs of other servers remembered for their last step (a server restarts as a new run).
const MAX_RUNS: usize = 4_096;

/// What the shared journeys count, for /metrics (`Journeys` holds them: it counts the steps a
/// full queue did not take).
#[derive(Default)]
pub struct Counters {
    pub written: AtomicU64,
    pub replayed: AtomicU64,
    pub refused: AtomicU64,
    pub unshared: AtomicU64,
}

impl Counters {
    pub fn render(&self, out: &mut String) {
        crate::metrics::labelled_counters(
            out,
            "flint_boot_shared_steps_total",
            "Journey steps shared through etcd, by outcome: written by this server, replayed from \
             the others, refused as malformed, unshared (the queue to etcd was full).",
            "outcome",
            [
                ("written", &self.written),
                ("replayed", &self.replayed),
                ("refused", &self.refused),
                ("unshared", &self.unshared),
            ],
        );
    }
}

/// The key prefix of the shared journeys.
pub fn journeys_prefix(prefix: &str) -> String {
    format!("{prefix}journeys/")
}

/// A run of this server: its name made safe for a key, its start time and a random part.
pub fn instance(server: &str) -> String {
    let name: String = server
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{name}-{started:x}-{:04x}", fastrand::u16(..))
}

/// Writes the steps `steps` brings, in batches of one key each, until the channel closes. While etcd refuses or cannot be reached, the batch is tried again with a growing
/// pause and the steps behind it wait in the channel.
pub async fn write(
    etcd: Arc<Etcd>,
    prefix: String,
    instance: String,
    retention: Duration,
    mut steps: mpsc::Receiver<Stamped>,
    journeys: Arc<Journeys>,
) {
    let counters = &journeys.shared;
    let mut seq: u64 = 0;
    let mut lease: Option<(i64, Instant)> = None;
    let mut failing_since: Option<Instant> = None;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if steps.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            let room = BATCH - batch.len();
            tokio::select! {
                got = steps.recv_many(&mut batch, room) => if got == 0 { break },
                _ = &mut linger => break,
            }
        }
        let mut steps_in_batch = 0;
        let mut lines = Vec::new();
        for step in batch.drain(..) {
            let line = encode(&step);
            // Every reader would refuse it; kept out, the batch stays within what etcd takes.
            if line.len() > MAX_STEP_BYTES {
                counters.unshared.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if !lines.is_empty() {
                lines.push(b'\n');
            }
            lines.extend(line);
            steps_in_batch += 1;
        }
        if steps_in_batch == 0 {
            continue;
        }
        seq += 1;
        let puts = [(format!("{prefix}{instance}/{seq:016x}"), lines)];
        let mut pause = etcd::reconnect_pace();
        loop {
            let result = async {
                // A new lease every quarter of the retention: keys live between three
                // quarters of it and all of it.
                let id = match lease {
                    Some((id, granted)) if granted.elapsed() < retention / 4 => id,
                    _ => {
                        let id = etcd.grant_lease(retention).await?;
                        lease = Some((id, Instant::now()));
                        id
                    }
                };
                etcd.put_all(&puts, id).await
            }
            .await;
            match result {
                Ok(_) => {
                    counters
                        .written
                        .fetch_add(steps_in_batch, Ordering::Relaxed);
                    if let Some(since) = failing_since.take() {
                        tracing::info!(
                            after_s = since.elapsed().as_secs(),
                            "journeys reach etcd again; the steps that waited are written"
                        );
                    }
                    break;
                }
                Err(e) => {
                    // A lease that ended (etcd was away longer than it) is granted anew.
                    if matches!(&e, etcd::Error::Refused { code: 5, .. }) {
                        lease = None;
                    }
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::warn!(
                            error = %e,
                            "journey steps cannot be written to etcd: kept in this server's view; \
                             they wait (up to {QUEUE}) and are written when etcd answers"
                        );
                    }
                    tokio::time::sleep(pause.next().unwrap_or(Duration::from_secs(5))).await;
                }
            }
        }
    }
}

/// Replays every other server's steps into `journeys`: those etcd holds, then each as it is
/// written, until the future is dropped. When the watch breaks the next member is read from
/// where it stopped.
pub async fn read(etcd: Arc<Etcd>, prefix: String, own: String, journeys: Arc<Journeys>) {
    let mut reader = Reader {
        prefix,
        own,
        journeys,
        runs: HashMap::new(),
        after: 0,
        endpoint: 0,
    };
    let mut said = false;
    loop {
        let mut pause = etcd::reconnect_pace();
        loop {
            match reader.catch_up(&etcd).await {
                Ok(()) => break,
                Err(e) => {
                    if !said {
                        said = true;
                        tracing::warn!(
                            error = %e,
                            "the other boot servers' journeys cannot be read from etcd; trying \
                             every member until one answers"
                        );
                    }
                    reader.endpoint = (reader.endpoint + 1) % etcd.endpoint_count();
                    tokio::time::sleep(pause.next().unwrap_or(Duration::from_secs(5))).await;
                }
            }
        }
        if std::mem::take(&mut said) {
            tracing::info!("the other boot servers' journeys are read from etcd again");
        }
        let ended = match etcd
            .watch_prefix(reader.endpoint, &reader.prefix, reader.after + 1)
            .await
        {
            Ok(watch) => {
                let mut watch = etcd.keep_watching(reader.endpoint, watch).await;
                loop {
                    match watch.events().await {
                        Ok(events) => {
                            for event in events {
                                if let etcd::Event::Put(entry) = event {
                                    reader.after = reader.after.max(entry.mod_revision);
                                    reader.take(&entry);
                                }
                            }
                        }
                        Err(ended) => break ended,
                    }
                }
            }
            Err(e) => Ended::Broken(e),
        };
        if let Ended::Broken(e) = ended {
            tracing::info!(error = %e, "the watch of the journeys broke; reading them from the other members");
            reader.endpoint = (reader.endpoint + 1) % etcd.endpoint_count();
        }
    }
}

struct Reader {
    prefix: String,
    own: String,
    journeys: Arc<Journeys>,
    /// The last step applied of each run.
    runs: HashMap<String, u64>,
    /// Every step written at or before this revision is applied.
    after: i64,
    endpoint: usize,
}

impl Reader {
    /// Reads, page by page, every step written after `after`.
    async fn catch_up(&mut self, etcd: &Etcd) -> Result<(), etcd::Error> {
        let mut from = self.after;
        loop {
            let page = etcd
                .range_prefix(self.endpoint, &self.prefix, from, PAGE)
                .await?;
            self.endpoint = page.endpoint;
            let mut entries = page.entries;
            // etcd sorts by revision only; within one (a transaction) a run's batches must come
            // in their order, or the later would hide the earlier.
            entries.sort_by(|a, b| (a.mod_revision, &a.key).cmp(&(b.mod_revision, &b.key)));
            let last = entries.last().map(|e| e.mod_revision);
            for entry in &entries {
                self.take(entry);
            }
            match last {
                // A transaction's keys share a revision and a page may end inside one: that
                // revision is read again, its steps already applied are skipped.
                Some(last) if page.more && last - 1 > from => from = last - 1,
                // A page of one revision (a transaction of more keys than a page, which no
                // boot server writes): moving past it is the only way on.
                Some(last) if page.more => from = last,
                _ => {
                    self.after = self.after.max(page.revision);
                    return Ok(());
                }
            }
        }
    }

    fn take(&mut self, entry: &etcd::Entry) {
        let Some((run, seq)) = self.key_parts(&entry.key) else {
            self.refuse(entry, "not a key PREFIXjourneys/RUN/SEQ");
            return;
        };
        if run == self.own {
            return;
        }
        if self.runs.get(&run).is_some_and(|last| seq <= *last) {
            return;
        }
        if entry.bytes.len() > MAX_BATCH_BYTES {
            self.refuse(entry, &format!("larger than {MAX_BATCH_BYTES} bytes"));
            return;
        }
        for line in entry.bytes.split(|b| *b == b'\n') {
            match decode(line) {
                Ok(step) => {
                    self.journeys.replay(&step);
                    self.journeys
                        .shared
                        .replayed
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => self.refuse(entry, &why),
            }
        }
        if self.runs.len() >= MAX_RUNS && !self.runs.contains_key(&run) {
            self.runs.clear();
        }
        self.runs.insert(run, seq);
    }

    fn refuse(&self, entry: &etcd::Entry, why: &str) {
        let refused = self.journeys.shared.refused.fetch_add(1, Ordering::Relaxed);
        // One line per hundred: a writer that sends garbage must not flood the log.
        if refused.is_multiple_of(100) {
            tracing::warn!(
                key = printable(&String::from_utf8_lossy(&entry.key)),
                why,
                "a shared journey step refused"
            );
        }
    }

    /// `PREFIX RUN / SEQ`, SEQ in hex.
    fn key_parts(&self, key: &[u8]) -> Option<(String, u64)> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(&self.prefix)?;
        let (run, seq) = rest.split_once('/')?;
        Some((run.to_owned(), u64::from_str_radix(seq, 16).ok()?))
    }
}

/// A step as it is stored: JSON, one object, its fields named (docs/etcd-inventory.md). Unknown
/// fields are refused by the event's own variant (serde cannot refuse them here as well: with a
/// flattened field it would refuse the event's).
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    server: String,
    at_ms: u64,
    #[serde(flatten)]
    event: WireEvent,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case", deny_unknown_fields)]
enum WireEvent {
    Dhcp {
        mac: String,
        uuid: Option<String>,
        from: Option<IpAddr>,
        ipxe: bool,
        detail: String,
    },
    Binary {
        ip: IpAddr,
        file: String,
        bytes: u64,
        whole: bool,
        via: String,
    },
    BootScript {
        ip: IpAddr,
    },
    Script {
        ip: IpAddr,
        mac: String,
        uuid: Option<String>,
        name: Option<String>,
        served: String,
        images: Vec<String>,
    },
    Image {
        ip: IpAddr,
        path: String,
        bytes: u64,
        whole: bool,
    },
    Report {
        mac: String,
        name: String,
        ip: IpAddr,
        runs: Vec<String>,
        service: String,
        report_step: String,
        ok: bool,
        exit_status: u8,
        member_id: Option<String>,
        duration_ms: u64,
        sent_at_ms: u64,
    },
}

pub fn encode(step: &Stamped) -> Vec<u8> {
    let event = match &step.event {
        Event::Dhcp {
            mac,
            uuid,
            from,
            ipxe,
            detail,
        } => WireEvent::Dhcp {
            mac: mac.to_string(),
            uuid: uuid.map(|u| u.to_string()),
            from: *from,
            ipxe: *ipxe,
            detail: detail.clone(),
        },
        Event::Binary {
            ip,
            file,
            bytes,
            whole,
            via,
        } => WireEvent::Binary {
            ip: *ip,
            file: file.clone(),
            bytes: *bytes,
            whole: *whole,
            via: via.clone(),
        },
        Event::BootScript { ip } => WireEvent::BootScript { ip: *ip },
        Event::Script {
            ip,
            mac,
            uuid,
            name,
            served,
            images,
        } => WireEvent::Script {
            ip: *ip,
            mac: mac.to_string(),
            uuid: uuid.map(|u| u.to_string()),
            name: name.clone(),
            served: served.clone(),
            images: images.clone(),
        },
        Event::Image {
            ip,
            path,
            bytes,
            whole,
        } => WireEvent::Image {
            ip: *ip,
            path: path.clone(),
            bytes: *bytes,
            whole: *whole,
        },
        Event::Report {
            mac,
            name,
            ip,
            runs,
            report,
        } => WireEvent::Report {
            mac: mac.to_string(),
            name: name.clone(),
            ip: *ip,
            runs: runs.iter().map(|s| s.name().to_owned()).collect(),
            service: report.step.service().to_owned(),
            report_step: report.step.step().to_owned(),
            ok: report.ok,
            exit_status: report.exit_status,
            member_id: report.member_id.clone(),
            duration_ms: report.duration_ms,
            sent_at_ms: report.sent_at_ms,
        },
    };
    serde_json::to_vec(&Wire {
        server: step.server.clone(),
        at_ms: step.at_ms,
        event,
    })
    .expect("a step always serializes")
}

/// A step another server wrote, checked as anything from outside is: bounded, every field of
/// the right shape; its text is made printable when it is shown (`Journeys` does).
pub fn decode(bytes: &[u8]) -> Result<Stamped, String> {
    if bytes.len() > MAX_STEP_BYTES {
        return Err(format!("larger than {MAX_STEP_BYTES} bytes"));
    }
    let wire: Wire = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let text = |what: &str, s: String| {
        if s.chars().count() > 256 {
            Err(format!("{what} longer than 256 characters"))
        } else {
            Ok(s)
        }
    };
    let mac = |s: &str| Mac::parse(s).ok_or_else(|| format!("not a MAC: {:?}", printable(s)));
    let uuid = |u: Option<String>| {
        u.map(|s| Uuid::parse(&s).ok_or_else(|| format!("not a UUID: {:?}", printable(&s))))
            .transpose()
    };
    let event = match wire.event {
        WireEvent::Dhcp {
            mac: m,
            uuid: u,
            from,
            ipxe,
            detail,
        } => Event::Dhcp {
            mac: mac(&m)?,
            uuid: uuid(u)?,
            from,
            ipxe,
            detail: text("detail", detail)?,
        },
        WireEvent::Binary {
            ip,
            file,
            bytes,
            whole,
            via,
        } => Event::Binary {
            ip,
            file: text("file", file)?,
            bytes,
            whole,
            via: text("via", via)?,
        },
        WireEvent::BootScript { ip } => Event::BootScript { ip },
        WireEvent::Script {
            ip,
            mac: m,
            uuid: u,
            name,
            served,
            images,
        } => {
            if images.len() > 32 {
                return Err("more than 32 images".into());
            }
            Event::Script {
                ip,
                mac: mac(&m)?,
                uuid: uuid(u)?,
                name: name.map(|n| text("name", n)).transpose()?,
                served: text("served", served)?,
                images: images
                    .into_iter()
                    .map(|i| text("image", i))
                    .collect::<Result<_, _>>()?,
            }
        }
        WireEvent::Image {
            ip,
            path,
            bytes,
            whole,
        } => Event::Image {
            ip,
            path: text("path", path)?,
            bytes,
            whole,
        },
        WireEvent::Report {
            mac: m,
            name,
            ip,
            runs,
            service,
            report_step,
            ok,
            exit_status,
            member_id,
            duration_ms,
            sent_at_ms,
        } => {
            let step = ReportStep::from_names(&service, &report_step).ok_or_else(|| {
                format!(
                    "no report step {:?} {:?}",
                    printable(&service),
                    printable(&report_step)
                )
            })?;
            let runs = runs
                .iter()
                .map(|r| {
                    ClusterService::ALL
                        .into_iter()
                        .find(|s| s.name() == r)
                        .ok_or_else(|| format!("no service {:?}", printable(r)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Event::Report {
                mac: mac(&m)?,
                name: text("name", name)?,
                ip,
                runs,
                report: Report {
                    step,
                    ok,
                    exit_status,
                    member_id: member_id.map(|m| text("member_id", m)).transpose()?,
                    duration_ms,
                    sent_at_ms,
                },
            }
        }
    };
    Ok(Stamped {
        server: text("server", wire.server)?,
        at_ms: wire.at_ms,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> Mac {
        Mac::parse("52:54:00:00:00:01").unwrap()
    }

    #[test]
    fn every_event_goes_through_the_wire_unchanged() {
        let ip: IpAddr = "10.0.0.11".parse().unwrap();
        let events = [
            Event::Dhcp {
                mac: mac(),
                uuid: Uuid::parse("4c4c4544-0042-3510-8051-b4c04f4e3232"),
                from: None,
                ipxe: false,
                detail: "port 67, bios, undionly.kpxe".into(),
            },
            Event::Binary {
                ip,
                file: "undionly.kpxe".into(),
                bytes: 70_000,
                whole: true,
                via: "tftp".into(),
            },
            Event::BootScript { ip },
            Event::Script {
                ip,
                mac: mac(),
                uuid: None,
                name: Some("node01".into()),
                served: "worker".into(),
                images: vec!["debian/vmlinuz".into(), "debian/initrd.img".into()],
            },
            Event::Image {
                ip,
                path: "debian/vmlinuz".into(),
                bytes: 9,
                whole: false,
            },
            Event::Report {
                mac: mac(),
                name: "node01".into(),
                ip,
                runs: vec![ClusterService::Etcd, ClusterService::Iam],
                report: Report {
                    step: ReportStep::EtcdPromote,
                    ok: false,
                    exit_status: 75,
                    member_id: Some("2a".into()),
                    duration_ms: 30_000,
                    sent_at_ms: 1_796_329_999_870,
                },
            },
        ];
        for event in events {
            let step = Stamped {
                server: "boot2".into(),
                at_ms: 1_796_330_000_000,
                event,
            };
            assert_eq!(decode(&encode(&step)).unwrap(), step);
        }
    }

    #[test]
    fn a_batch_is_applied_once_its_bad_lines_refused_and_this_runs_own_skipped() {
        let journeys = Arc::new(Journeys::new("boot1", crate::journey::Limits::default()));
        let mut reader = Reader {
            prefix: "/flint/journeys/".into(),
            own: "boot1-1-0".into(),
            journeys: journeys.clone(),
            runs: HashMap::new(),
            after: 0,
            endpoint: 0,
        };
        let step = |at_ms| Stamped {
            server: "boot2".into(),
            at_ms,
            event: Event::BootScript {
                ip: "10.0.0.11".parse().unwrap(),
            },
        };
        let mut bytes = encode(&step(1));
        bytes.extend(b"\n{\"server\":1}\n");
        bytes.extend(encode(&step(2)));
        let entry = |key: &str, bytes: &[u8]| etcd::Entry {
            key: key.as_bytes().to_vec(),
            bytes: bytes.to_vec(),
            mod_revision: 1,
        };
        let counts = |j: &Journeys| {
            (
                j.shared.replayed.load(Ordering::Relaxed),
                j.shared.refused.load(Ordering::Relaxed),
            )
        };
        reader.take(&entry("/flint/journeys/boot2-1-0/0000000000000001", &bytes));
        assert_eq!(counts(&journeys), (2, 1), "two steps replayed, one refused");
        reader.take(&entry("/flint/journeys/boot2-1-0/0000000000000001", &bytes));
        assert_eq!(
            counts(&journeys),
            (2, 1),
            "a batch read twice is applied once"
        );
        reader.take(&entry("/flint/journeys/boot1-1-0/0000000000000001", &bytes));
        assert_eq!(
            counts(&journeys),
            (2, 1),
            "this run's own batches are not replayed"
        );
        reader.take(&entry(
            "/flint/journeys/boot3-1-0/0000000000000001",
            &vec![b' '; MAX_BATCH_BYTES + 1],
        ));
        reader.take(&entry("/flint/journeys/no-sequence", &bytes));
        assert_eq!(
            counts(&journeys),
            (2, 3),
            "too large, and a key of no batch"
        );
    }

    #[test]
    fn a_malformed_step_is_refused_with_why() {
        let refused = |json: &str| decode(json.as_bytes()).unwrap_err();
        assert!(refused("null").contains("invalid type"));
        assert!(
            refused(r#"{"server":"b","at_ms":1,"step":"boot-script","ip":"10.0.0.1","x":1}"#)
                .contains("unknown field")
        );
        assert!(refused(r#"{"server":"b","at_ms":1,"step":"dhcp","mac":"zz","uuid":null,"from":null,"ipxe":false,"detail":""}"#).contains("not a MAC"));
        let long = "x".repeat(300);
        assert!(
            refused(&format!(
                r#"{{"server":"{long}","at_ms":1,"step":"boot-script","ip":"10.0.0.1"}}"#
            ))
            .contains("server longer than 256")
        );
        assert!(refused(&" ".repeat(5000)).contains("larger than"));
        assert!(refused(r#"{"server":"b","at_ms":1,"step":"report","mac":"52:54:00:00:00:01","name":"n","ip":"10.0.0.1","runs":[],"service":"etcd","report_step":"explode","ok":true,"exit_status":0,"member_id":null,"duration_ms":1,"sent_at_ms":1}"#).contains("no report step"));
    }
}
