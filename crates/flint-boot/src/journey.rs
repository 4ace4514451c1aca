//! Each machine's journey from power-on, as this boot server sees it: the ProxyDHCP answer, the
//! iPXE binary sent, `boot.ipxe`, its script, every image sent (bytes, and whether whole), then
//! what the installed node reports of its first boot (joins, IAM's setup, the cluster's health).
//! An operator bringing up a rack asks which machines are stuck or failed and where:
//! `GET /api/machines`, the page at `/` and `flint-boot status` answer from here.
//!
//! Machines are known by MAC. Requests that carry no MAC (`boot.ipxe`, images, TFTP) are tied to
//! one by the address the machine last asked from: `/ipxe?mac=` and the ProxyDHCP requests sent
//! from an address teach it. A step from an address not yet tied waits (bounded) for the
//! machine's script request, which names the MAC.
//!
//! Memory is bounded whatever clients send: at most `Limits::machines` journeys (the one idle
//! longest goes first), `Limits::steps` steps each (the oldest go, the first one stays), and
//! `Limits::untied` addresses with steps waiting to be tied.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::collections::BTreeSet;

use flint_ipxe::{ClusterService, Mac, Uuid};
use serde::Serialize;

/// The version of `/api/machines`' shape (docs/journeys.md): raised only when a field changes
/// meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a machine is, from its latest step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Its firmware asked ProxyDHCP.
    Seen,
    /// iPXE is on its way or running: binary, `boot.ipxe`, its script.
    Booting,
    /// It has every image its script boots, whole: the installer (or the OS) runs.
    Installer,
    /// The installed node reported a first-boot step.
    FirstBoot,
    /// Every service the node runs (the inventory's) reported it joined or was set up.
    Joined,
    /// Its latest report of the cluster's health is a success.
    Healthy,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Seen,
        Phase::Booting,
        Phase::Installer,
        Phase::FirstBoot,
        Phase::Joined,
        Phase::Healthy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Seen => "seen",
            Phase::Booting => "booting",
            Phase::Installer => "installer",
            Phase::FirstBoot => "first-boot",
            Phase::Joined => "joined",
            Phase::Healthy => "healthy",
        }
    }
}

/// What happened, as one step of a journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// ProxyDHCP answered (detail: port, firmware, what it was told to boot).
    Dhcp,
    /// An iPXE binary sent over TFTP or HTTP.
    Binary,
    /// `boot.ipxe` served.
    BootScript,
    /// Its own script served (detail: the profile, or the policy that answered).
    Script,
    /// An image sent (detail: path, bytes, whole or cut short).
    Image,
    /// The installed node reported a first-boot step (detail: the step, its outcome, how long).
    Report,
}

impl StepKind {
    pub const ALL: [StepKind; 6] = [
        StepKind::Dhcp,
        StepKind::Binary,
        StepKind::BootScript,
        StepKind::Script,
        StepKind::Image,
        StepKind::Report,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StepKind::Dhcp => "dhcp",
            StepKind::Binary => "binary",
            StepKind::BootScript => "boot-script",
            StepKind::Script => "script",
            StepKind::Image => "image",
            StepKind::Report => "report",
        }
    }
}

/// A first-boot step a node reports: the (service, step) pairs of the report's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportStep {
    ChainfireJoin,
    FlaredbJoin,
    EtcdJoin,
    /// etcd's member added as a learner, before it starts.
    EtcdAdd,
    /// etcd's learner promoted to a voting member: joined, as `EtcdJoin` is.
    EtcdPromote,
    IamSetup,
    ClusterHealth,
}

impl ReportStep {
    pub const ALL: [ReportStep; 7] = [
        ReportStep::ChainfireJoin,
        ReportStep::FlaredbJoin,
        ReportStep::EtcdJoin,
        ReportStep::EtcdAdd,
        ReportStep::EtcdPromote,
        ReportStep::IamSetup,
        ReportStep::ClusterHealth,
    ];

    /// The report's `service`.
    pub fn service(self) -> &'static str {
        match self {
            ReportStep::ChainfireJoin => "chainfire",
            ReportStep::FlaredbJoin => "flaredb",
            ReportStep::EtcdJoin | ReportStep::EtcdAdd | ReportStep::EtcdPromote => "etcd",
            ReportStep::IamSetup => "iam",
            ReportStep::ClusterHealth => "cluster",
        }
    }

    /// The report's `step`.
    pub fn step(self) -> &'static str {
        match self {
            ReportStep::ChainfireJoin | ReportStep::FlaredbJoin | ReportStep::EtcdJoin => "join",
            ReportStep::EtcdAdd => "add",
            ReportStep::EtcdPromote => "promote",
            ReportStep::IamSetup => "setup",
            ReportStep::ClusterHealth => "health",
        }
    }

    pub fn from_names(service: &str, step: &str) -> Option<ReportStep> {
        ReportStep::ALL
            .into_iter()
            .find(|s| s.service() == service && s.step() == step)
    }

    /// The service a success of this step makes joined. Adding etcd's learner is not joining:
    /// the learner still has to start and be promoted.
    fn joins(self) -> Option<ClusterService> {
        match self {
            ReportStep::ChainfireJoin => Some(ClusterService::Chainfire),
            ReportStep::FlaredbJoin => Some(ClusterService::Flaredb),
            ReportStep::EtcdJoin | ReportStep::EtcdPromote => Some(ClusterService::Etcd),
            ReportStep::IamSetup => Some(ClusterService::Iam),
            ReportStep::EtcdAdd | ReportStep::ClusterHealth => None,
        }
    }
}

/// A node's report of one first-boot step, checked (`crate::reports` reads it off the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub step: ReportStep,
    pub ok: bool,
    pub exit_status: u8,
    /// Printable ASCII, 1 to 64 characters.
    pub member_id: Option<String>,
    pub duration_ms: u64,
    /// The node's clock when it sent the report; kept, never used to order steps.
    pub sent_at_ms: u64,
}

impl Report {
    /// `chainfire join: ok, member 0x2a, 1.2 s`, `etcd promote: failed (exit 75) after 30.0 s`.
    fn detail(&self) -> String {
        let mut out = format!("{} {}: ", self.step.service(), self.step.step());
        match (self.ok, self.exit_status) {
            (true, 0) => out.push_str("ok"),
            (true, code) => out.push_str(&format!("ok (exit {code})")),
            (false, code) => out.push_str(&format!("failed (exit {code})")),
        }
        if let Some(member) = &self.member_id {
            out.push_str(&format!(", member {member},"));
        } else if self.ok {
            out.push(',');
        }
        let seconds = format!(
            "{}.{} s",
            self.duration_ms / 1000,
            self.duration_ms % 1000 / 100
        );
        if self.ok {
            out.push_str(&format!(" {seconds}"));
        } else {
            out.push_str(&format!(" after {seconds}"));
        }
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: StepKind,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The boot server that saw it.
    pub server: String,
    /// What an operator reads: printable ASCII only, whatever the client sent.
    pub detail: String,
    /// A report's: the node's clock when it sent it (`at_ms` is this server's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<u64>,
}

/// One machine, as `/api/machines` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub mac: String,
    pub uuid: Option<String>,
    /// Its inventory name, once its script named it.
    pub name: Option<String>,
    pub ip: Option<String>,
    pub phase: Phase,
    /// No step for longer than its phase's stuck time.
    pub stuck: bool,
    /// The services that reported joining (or IAM its setup) since it last booted, sorted.
    pub joined: Vec<&'static str>,
    /// A service's latest report (the cluster's health included) is a failure.
    pub failed: bool,
    pub first_seen_ms: u64,
    pub last_step_ms: u64,
    /// Seconds since its last step, when the answer was made.
    pub idle_s: u64,
    pub last_step: Step,
    pub steps: Vec<Step>,
}

/// `/api/machines`.
#[derive(Debug, Serialize)]
pub struct Fleet {
    pub schema_version: u32,
    pub server: String,
    pub generated_at_ms: u64,
    pub stuck_after_s: u64,
    /// The stuck time of a machine in its installer.
    pub install_stuck_after_s: u64,
    /// Machines per phase (every phase, 0 included), `stuck` and `failed`.
    pub counts: BTreeMap<&'static str, usize>,
    /// Stuck or failed machines first, the longest idle first; then the rest, the latest step
    /// first.
    pub machines: Vec<Machine>,
    /// Where the inventory served comes from, and whether it may be out of date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory: Option<crate::inventory::Origin>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub machines: usize,
    pub steps: usize,
    pub untied: usize,
    /// A machine short of `healthy` with no step for this long is stuck, unless it is in its
    /// installer.
    pub stuck_after: Duration,
    /// A machine in its installer with no step for this long is stuck: installing takes 30 to
    /// 60 minutes, during which the boot server hears nothing.
    pub install_stuck_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            machines: 20_000,
            steps: 32,
            untied: 4_096,
            stuck_after: Duration::from_secs(15 * 60),
            install_stuck_after: Duration::from_secs(2 * 3600),
        }
    }
}

struct Journey {
    uuid: Option<Uuid>,
    name: Option<String>,
    ip: Option<IpAddr>,
    phase: Phase,
    /// The images its script boots, not yet sent whole.
    images_due: Vec<String>,
    /// Its earliest step's time, whichever server saw it and whenever this one heard of it.
    first_seen_ms: u64,
    steps: VecDeque<Step>,
    first_boot: FirstBoot,
}

impl Journey {
    fn new() -> Journey {
        Journey {
            uuid: None,
            name: None,
            ip: None,
            phase: Phase::Seen,
            images_due: Vec::new(),
            first_seen_ms: u64::MAX,
            steps: VecDeque::new(),
            first_boot: FirstBoot::default(),
        }
    }

    /// A step of a new boot: what the node reported of its previous first boot no longer says
    /// where it is.
    fn boots(&mut self, phase: Phase) {
        self.phase = phase;
        self.first_boot = FirstBoot::default();
    }

    fn failed(&self) -> bool {
        !self.first_boot.failing.is_empty()
    }
}

/// What the node reported since it last booted.
#[derive(Default)]
struct FirstBoot {
    /// The services it reported joining (IAM: set up).
    joined: BTreeSet<ClusterService>,
    /// The services (and `cluster`, for health) whose latest report is a failure.
    failing: BTreeSet<&'static str>,
    /// Its latest health report is a success.
    healthy: bool,
}

/// A step from an address not yet tied to a machine, and the image it sent whole, if it did:
/// the script that ties the address names the images still due.
struct Waiting {
    step: Step,
    whole_image: Option<String>,
}

#[derive(Default)]
struct State {
    machines: HashMap<Mac, Journey>,
    by_ip: HashMap<IpAddr, Mac>,
    untied: HashMap<IpAddr, Vec<Waiting>>,
}

pub struct Journeys {
    server: String,
    limits: Limits,
    state: Mutex<State>,
    /// By `StepKind::ALL`'s order: the steps this server saw, not those replayed.
    steps_recorded: [AtomicU64; StepKind::ALL.len()],
    sink: OnceLock<tokio::sync::mpsc::Sender<Stamped>>,
    /// The steps shared through etcd (`crate::shared`).
    pub shared: crate::shared::Counters,
}

/// What a boot server saw of a machine: what its journey is made of, and what boot servers
/// share through etcd so that each one's fleet view shows every machine (`crate::shared`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Dhcp {
        mac: Mac,
        uuid: Option<Uuid>,
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
        mac: Mac,
        uuid: Option<Uuid>,
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
        mac: Mac,
        name: String,
        ip: IpAddr,
        runs: Vec<ClusterService>,
        report: Report,
    },
}

impl Event {
    pub fn kind(&self) -> StepKind {
        match self {
            Event::Dhcp { .. } => StepKind::Dhcp,
            Event::Binary { .. } => StepKind::Binary,
            Event::BootScript { .. } => StepKind::BootScript,
            Event::Script { .. } => StepKind::Script,
            Event::Image { .. } => StepKind::Image,
            Event::Report { .. } => StepKind::Report,
        }
    }
}

/// An event, the server that saw it and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    pub server: String,
    pub at_ms: u64,
    pub event: Event,
}

/// A script served to a known machine or under a policy.
pub struct ScriptServed<'a> {
    pub ip: IpAddr,
    pub mac: Mac,
    pub uuid: Option<Uuid>,
    /// The inventory node, when the MAC or UUID named one.
    pub name: Option<&'a str>,
    /// The profile, or the policy (`menu`, `refuse`).
    pub served: &'a str,
    /// The image paths under `/images/` the script boots.
    pub images: Vec<String>,
}

impl Journeys {
    pub fn new(server: impl Into<String>, limits: Limits) -> Self {
        Journeys {
            server: printable(&server.into()),
            limits,
            state: Mutex::new(State::default()),
            steps_recorded: Default::default(),
            sink: OnceLock::new(),
            shared: Default::default(),
        }
    }

    /// The name this server's steps carry.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not stop the recording: the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends every step this server records, stamped, to `sink` as well (the journeys shared
    /// through etcd): without blocking, so a full sink loses the step there (counted as
    /// unshared), never here.
    pub fn share_to(&self, sink: tokio::sync::mpsc::Sender<Stamped>) {
        let _ = self.sink.set(sink);
    }

    /// ProxyDHCP answered `mac`; `from` is the address it asked from, when it had one. `ipxe`:
    /// the client already runs iPXE (its own DHCP, on the way to `boot.ipxe`); otherwise its
    /// firmware starts a boot.
    pub fn dhcp_answered(
        &self,
        mac: Mac,
        uuid: Option<Uuid>,
        from: Option<IpAddr>,
        ipxe: bool,
        detail: String,
    ) {
        self.record(Event::Dhcp {
            mac,
            uuid,
            from,
            ipxe,
            detail,
        });
    }

    /// An iPXE binary sent to `ip` (TFTP, or HTTP for UEFI HTTP Boot).
    pub fn binary_sent(&self, ip: IpAddr, file: &str, bytes: u64, whole: bool, via: &str) {
        self.record(Event::Binary {
            ip,
            file: file.to_owned(),
            bytes,
            whole,
            via: via.to_owned(),
        });
    }

    /// `boot.ipxe` served to `ip`.
    pub fn boot_script_served(&self, ip: IpAddr) {
        self.record(Event::BootScript { ip });
    }

    /// The machine's own script: names its MAC, so its address is tied to it from now on.
    pub fn script_served(&self, script: ScriptServed<'_>) {
        self.record(Event::Script {
            ip: script.ip,
            mac: script.mac,
            uuid: script.uuid,
            name: script.name.map(str::to_owned),
            served: script.served.to_owned(),
            images: script.images,
        });
    }

    /// `/images/PATH` sent to `ip`: `whole` when every byte of the file left.
    pub fn image_sent(&self, ip: IpAddr, path: &str, bytes: u64, whole: bool) {
        self.record(Event::Image {
            ip,
            path: path.to_owned(),
            bytes,
            whole,
        });
    }

    /// A report from the installed node `name` (its MAC from the inventory), which runs
    /// `runs`; `ip` is where the report came from, the machine's address when the server
    /// restarted since it booted and so has no journey for it.
    pub fn report_received(
        &self,
        mac: Mac,
        name: &str,
        ip: IpAddr,
        runs: &[ClusterService],
        report: &Report,
    ) {
        self.record(Event::Report {
            mac,
            name: name.to_owned(),
            ip,
            runs: runs.to_vec(),
            report: report.clone(),
        });
    }

    /// A step another boot server recorded (read from etcd): into the journeys as if seen here,
    /// under its server's name and time; not counted in this server's steps, not shared again.
    pub fn replay(&self, stamped: &Stamped) {
        self.apply(stamped);
    }

    fn record(&self, event: Event) {
        let kind = event.kind();
        let index = StepKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.steps_recorded[index].fetch_add(1, Ordering::Relaxed);
        let stamped = Stamped {
            server: self.server.clone(),
            at_ms: millis(SystemTime::now()),
            event,
        };
        self.apply(&stamped);
        if let Some(sink) = self.sink.get()
            && sink.try_send(stamped).is_err()
        {
            self.shared.unshared.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn apply(&self, stamped: &Stamped) {
        let step = |detail: String| Step {
            step: stamped.event.kind(),
            at_ms: stamped.at_ms,
            server: stamped.server.clone(),
            detail: printable(&detail),
            sent_at_ms: None,
        };
        // A step older than the machine's latest (another server's, read from etcd after a
        // later one of this server's) joins the journey in its place but does not move the
        // machine back: the phase follows the latest step.
        let late = |journey: &Journey| {
            journey
                .steps
                .back()
                .is_some_and(|last| last.at_ms > stamped.at_ms)
        };
        match &stamped.event {
            Event::Dhcp {
                mac,
                uuid,
                from,
                ipxe,
                detail,
            } => {
                let step = step(detail.clone());
                let mut state = self.lock();
                let journey = match from {
                    Some(ip) => self.tie(&mut state, *ip, *mac).0,
                    None => self.journey(&mut state, *mac),
                };
                if !late(journey) {
                    if *ipxe {
                        journey.boots(Phase::Booting);
                    } else {
                        journey.boots(Phase::Seen);
                        journey.images_due.clear();
                    }
                }
                if uuid.is_some() {
                    journey.uuid = *uuid;
                }
                push(journey, step, self.limits.steps);
            }
            Event::Binary {
                ip,
                file,
                bytes,
                whole,
                via,
            } => {
                let step = step(format!("{file} over {via}: {}", sent(*bytes, *whole)));
                self.at_address(*ip, step, None, |journey| {
                    if !late(journey) {
                        journey.boots(Phase::Booting);
                    }
                });
            }
            Event::BootScript { ip } => {
                let step = step("boot.ipxe".into());
                self.at_address(*ip, step, None, |journey| {
                    if !late(journey) {
                        journey.boots(Phase::Booting);
                    }
                });
            }
            Event::Script {
                ip,
                mac,
                uuid,
                name,
                served,
                images,
            } => {
                let step = step(match name {
                    Some(name) => format!("{name}: {served}"),
                    None => format!("unknown machine: {served}"),
                });
                let mut state = self.lock();
                // Before its own step: what waited for this script came before it.
                let (journey, sent_whole) = self.tie(&mut state, *ip, *mac);
                journey.name = name.as_deref().map(printable);
                journey.ip = Some(*ip);
                if uuid.is_some() {
                    journey.uuid = *uuid;
                }
                if !late(journey) || journey.phase == Phase::Seen {
                    journey.boots(Phase::Booting);
                    journey.images_due.clone_from(images);
                    // Downloads another boot server sent before this script was read here.
                    journey.images_due.retain(|due| !sent_whole.contains(due));
                    if journey.images_due.is_empty() && !images.is_empty() {
                        journey.phase = Phase::Installer;
                    }
                }
                push(journey, step, self.limits.steps);
            }
            Event::Image {
                ip,
                path,
                bytes,
                whole,
            } => {
                let step = step(format!("{path}: {}", sent(*bytes, *whole)));
                let whole = *whole;
                let whole_image = whole.then(|| path.clone());
                self.at_address(*ip, step, whole_image, |journey| {
                    if whole {
                        journey.images_due.retain(|due| due != path);
                        if journey.images_due.is_empty() && journey.phase == Phase::Booting {
                            journey.phase = Phase::Installer;
                        }
                    }
                });
            }
            Event::Report {
                mac,
                name,
                ip,
                runs,
                report,
            } => {
                let mut step = step(report.detail());
                step.sent_at_ms = Some(report.sent_at_ms);
                let mut state = self.lock();
                let journey = self.journey(&mut state, *mac);
                journey.name = Some(printable(name));
                journey.ip.get_or_insert(*ip);
                let first_boot = &mut journey.first_boot;
                let service = report.step.service();
                if report.ok {
                    first_boot.failing.remove(service);
                    if let Some(joined) = report.step.joins() {
                        first_boot.joined.insert(joined);
                    }
                } else {
                    first_boot.failing.insert(service);
                }
                if report.step == ReportStep::ClusterHealth {
                    first_boot.healthy = report.ok;
                }
                // A node in no cluster (no services) joins nothing, so it is never `joined`.
                let all_joined =
                    !runs.is_empty() && runs.iter().all(|s| first_boot.joined.contains(s));
                journey.phase = if first_boot.healthy {
                    Phase::Healthy
                } else if all_joined {
                    Phase::Joined
                } else {
                    Phase::FirstBoot
                };
                push(journey, step, self.limits.steps);
            }
        }
    }

    /// A step from an address: the machine's, when tied; else kept until its script ties it.
    fn at_address(
        &self,
        ip: IpAddr,
        step: Step,
        whole_image: Option<String>,
        then: impl FnOnce(&mut Journey),
    ) {
        let mut state = self.lock();
        if let Some(mac) = state.by_ip.get(&ip).copied() {
            let journey = self.journey(&mut state, mac);
            then(journey);
            push(journey, step, self.limits.steps);
            return;
        }
        if !state.untied.contains_key(&ip) && state.untied.len() >= self.limits.untied {
            // A flood of addresses that never name themselves: the oldest waiting goes.
            if let Some(oldest) = state
                .untied
                .iter()
                .min_by_key(|(_, steps)| steps.first().map_or(0, |w| w.step.at_ms))
                .map(|(ip, _)| *ip)
            {
                state.untied.remove(&oldest);
            }
        }
        let waiting = state.untied.entry(ip).or_default();
        if waiting.len() < self.limits.steps {
            waiting.push(Waiting { step, whole_image });
        }
    }

    /// The journey of `mac`, made when new.
    fn journey<'s>(&self, state: &'s mut State, mac: Mac) -> &'s mut Journey {
        self.make_room(state, mac);
        state.machines.entry(mac).or_insert_with(Journey::new)
    }

    /// When `mac` is new and the machines are at their bound, the one idle longest is
    /// forgotten, with its addresses.
    fn make_room(&self, state: &mut State, mac: Mac) {
        if !state.machines.contains_key(&mac) && state.machines.len() >= self.limits.machines {
            let idlest = state
                .machines
                .iter()
                .min_by_key(|(_, j)| j.steps.back().map_or(0, |s| s.at_ms))
                .map(|(mac, _)| *mac);
            if let Some(idlest) = idlest {
                state.machines.remove(&idlest);
                state.by_ip.retain(|_, m| *m != idlest);
            }
        }
    }

    /// From now on steps from `ip` are `mac`'s; steps that waited for it join its journey (made
    /// when new), in time order; the images they sent whole are returned.
    fn tie<'s>(
        &self,
        state: &'s mut State,
        ip: IpAddr,
        mac: Mac,
    ) -> (&'s mut Journey, Vec<String>) {
        // Room first: making it may forget another machine and its addresses, never this tie.
        self.make_room(state, mac);
        state.by_ip.insert(ip, mac);
        let waiting = state.untied.remove(&ip).unwrap_or_default();
        let journey = state.machines.entry(mac).or_insert_with(Journey::new);
        let mut whole_images = Vec::new();
        for waited in waiting {
            whole_images.extend(waited.whole_image);
            push(journey, waited.step, self.limits.steps);
        }
        (journey, whole_images)
    }

    /// Machines per phase (every phase, 0 included), `stuck` and `failed`: for `/metrics`,
    /// without copying any journey.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let now_ms = millis(SystemTime::now());
        let state = self.lock();
        tally(
            state
                .machines
                .values()
                .map(|j| (j.phase, self.is_stuck(j, now_ms), j.failed())),
        )
    }

    /// The journeys' series for `/metrics`: steps recorded by kind, machines by phase, stuck
    /// machines. Every label value is from a fixed set, all of them exported from the start.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        self.shared.render(out);
        crate::metrics::labelled_counters(
            out,
            "flint_boot_journey_steps_total",
            "Steps of machines' journeys this server saw, by kind.",
            "step",
            StepKind::ALL
                .map(StepKind::name)
                .into_iter()
                .zip(&self.steps_recorded),
        );
        let counts = self.counts();
        out.push_str("# HELP flint_boot_machines Machines known to this boot server, by phase.\n");
        out.push_str("# TYPE flint_boot_machines gauge\n");
        for phase in Phase::ALL {
            let _ = writeln!(
                out,
                "flint_boot_machines{{phase=\"{}\"}} {}",
                phase.name(),
                counts[phase.name()]
            );
        }
        out.push_str("# HELP flint_boot_stuck_machines Machines with no step for longer than the stuck time.\n");
        out.push_str("# TYPE flint_boot_stuck_machines gauge\n");
        let _ = writeln!(out, "flint_boot_stuck_machines {}", counts["stuck"]);
        out.push_str("# HELP flint_boot_failed_machines Machines whose latest report of a service (or of the cluster's health) is a failure.\n");
        out.push_str("# TYPE flint_boot_failed_machines gauge\n");
        let _ = writeln!(out, "flint_boot_failed_machines {}", counts["failed"]);
    }

    /// Every machine, for `/api/machines`, the page and `flint-boot status`.
    pub fn fleet(&self) -> Fleet {
        let now = SystemTime::now();
        let now_ms = millis(now);
        let state = self.lock();
        let mut machines: Vec<Machine> = state
            .machines
            .iter()
            .filter_map(|(mac, j)| {
                let last = j.steps.back()?.clone();
                let idle_ms = now_ms.saturating_sub(last.at_ms);
                Some(Machine {
                    mac: mac.to_string(),
                    uuid: j.uuid.map(|u| u.to_string()),
                    name: j.name.clone(),
                    ip: j.ip.map(|ip| ip.to_string()),
                    phase: j.phase,
                    stuck: self.is_stuck(j, now_ms),
                    joined: j.first_boot.joined.iter().map(|s| s.name()).collect(),
                    failed: j.failed(),
                    first_seen_ms: j.first_seen_ms,
                    last_step_ms: last.at_ms,
                    idle_s: idle_ms / 1000,
                    last_step: last,
                    steps: j.steps.iter().cloned().collect(),
                })
            })
            .collect();
        drop(state);
        for m in &mut machines {
            // Sorted by name, not by the enum's order, as the documentation promises.
            m.joined.sort_unstable();
        }
        let alarm = |m: &Machine| m.stuck || m.failed;
        machines.sort_by(|a, b| {
            alarm(b)
                .cmp(&alarm(a))
                .then_with(|| {
                    if alarm(a) {
                        a.last_step_ms.cmp(&b.last_step_ms)
                    } else {
                        b.last_step_ms.cmp(&a.last_step_ms)
                    }
                })
                .then_with(|| a.mac.cmp(&b.mac))
        });
        let counts = tally(machines.iter().map(|m| (m.phase, m.stuck, m.failed)));
        Fleet {
            schema_version: SCHEMA_VERSION,
            server: self.server.clone(),
            generated_at_ms: now_ms,
            stuck_after_s: self.limits.stuck_after.as_secs(),
            install_stuck_after_s: self.limits.install_stuck_after.as_secs(),
            counts,
            machines,
            inventory: None,
        }
    }

    /// No step for longer than its phase allows. A healthy machine has nothing left to do, so
    /// its silence says nothing.
    fn is_stuck(&self, journey: &Journey, now_ms: u64) -> bool {
        let after = match journey.phase {
            Phase::Healthy => return false,
            Phase::Installer => self.limits.install_stuck_after,
            _ => self.limits.stuck_after,
        };
        journey
            .steps
            .back()
            .is_some_and(|last| now_ms.saturating_sub(last.at_ms) >= millis_of(after))
    }
}

/// Machines per phase (every phase, 0 included), `stuck` and `failed`, from each machine's
/// (phase, stuck, failed): the one count behind `/metrics`, `/api/machines` and the page.
fn tally(machines: impl Iterator<Item = (Phase, bool, bool)>) -> BTreeMap<&'static str, usize> {
    let mut counts: BTreeMap<&'static str, usize> = Phase::ALL
        .iter()
        .map(|p| p.name())
        .chain(["stuck", "failed"])
        .map(|name| (name, 0))
        .collect();
    for (phase, stuck, failed) in machines {
        *counts.entry(phase.name()).or_default() += 1;
        *counts.entry("stuck").or_default() += usize::from(stuck);
        *counts.entry("failed").or_default() += usize::from(failed);
    }
    counts
}

fn push(journey: &mut Journey, step: Step, max: usize) {
    journey.first_seen_ms = journey.first_seen_ms.min(step.at_ms);
    // The first step says when and how the machine was first seen: it stays.
    if journey.steps.len() >= max.max(2) {
        journey.steps.remove(1);
    }
    // Steps that waited for their address to be tied, and steps another boot server saw, come
    // after their time: each goes where its time puts it.
    let at = journey
        .steps
        .iter()
        .rposition(|s| s.at_ms <= step.at_ms)
        .map_or(0, |i| i + 1);
    journey.steps.insert(at, step);
}

fn sent(bytes: u64, whole: bool) -> String {
    if whole {
        format!("{bytes} bytes, whole")
    } else {
        format!("{bytes} bytes, cut short")
    }
}

/// What a client (or a server) sent, fit for a log line, a page and a terminal: printable
/// ASCII, bounded.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis_of)
}

fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> Mac {
        Mac::parse(&format!("52:54:00:00:00:{last:02x}")).expect("a MAC")
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn steps_from_an_address_wait_for_the_script_that_names_the_machine() {
        let journeys = Journeys::new("boot1", Limits::default());
        journeys.dhcp_answered(mac(1), None, None, false, "port 67".into());
        journeys.boot_script_served(ip(1));
        journeys.script_served(ScriptServed {
            ip: ip(1),
            mac: mac(1),
            uuid: None,
            name: Some("node01"),
            served: "installer",
            images: vec!["k".into(), "i".into()],
        });
        journeys.image_sent(ip(1), "k", 10, true);
        let fleet = journeys.fleet();
        let m = &fleet.machines[0];
        let kinds: Vec<_> = m.steps.iter().map(|s| s.step).collect();
        assert_eq!(
            kinds,
            [
                StepKind::Dhcp,
                StepKind::BootScript,
                StepKind::Script,
                StepKind::Image
            ]
        );
        assert_eq!(m.phase, Phase::Booting, "one image of two");
        journeys.image_sent(ip(1), "i", 10, false);
        assert_eq!(
            journeys.fleet().machines[0].phase,
            Phase::Booting,
            "cut short"
        );
        journeys.image_sent(ip(1), "i", 20, true);
        let fleet = journeys.fleet();
        assert_eq!(fleet.machines[0].phase, Phase::Installer);
        assert_eq!(fleet.counts["installer"], 1);
        assert_eq!(fleet.machines[0].name.as_deref(), Some("node01"));
    }

    #[test]
    fn memory_is_bounded_whatever_clients_send() {
        let limits = Limits {
            machines: 3,
            steps: 4,
            untied: 2,
            stuck_after: Duration::from_secs(60),
            install_stuck_after: Duration::from_secs(60),
        };
        let journeys = Journeys::new("boot1", limits);
        for i in 0..10 {
            journeys.dhcp_answered(mac(i), None, None, false, format!("answer {i}"));
        }
        for _ in 0..10 {
            journeys.dhcp_answered(mac(9), None, None, false, "again\u{1b}[2J".into());
        }
        for i in 0..10 {
            journeys.boot_script_served(ip(i));
        }
        let fleet = journeys.fleet();
        assert_eq!(fleet.machines.len(), 3);
        let nine = fleet
            .machines
            .iter()
            .find(|m| m.mac.ends_with(":09"))
            .expect("the latest machine stays");
        assert_eq!(nine.steps.len(), 4);
        assert_eq!(nine.steps[0].detail, "answer 9", "the first step stays");
        assert_eq!(nine.last_step.detail, "again?[2J", "escapes never pass");
        assert!(journeys.lock().untied.len() <= 2);
    }

    #[test]
    fn a_machine_idle_past_the_stuck_time_is_listed_first() {
        let limits = Limits {
            stuck_after: Duration::ZERO,
            ..Limits::default()
        };
        let journeys = Journeys::new("boot1", limits);
        journeys.dhcp_answered(mac(1), None, None, false, "a".into());
        journeys.script_served(ScriptServed {
            ip: ip(2),
            mac: mac(2),
            uuid: None,
            name: Some("node02"),
            served: "installer",
            images: vec![],
        });
        journeys.image_sent(ip(2), "k", 1, true);
        let fleet = journeys.fleet();
        assert_eq!(fleet.counts["stuck"], 1);
        assert!(fleet.machines[0].stuck, "{fleet:?}");
        assert!(
            !fleet.machines[1].stuck,
            "a machine in its installer has a stuck time of its own"
        );
    }

    fn report(step: ReportStep, ok: bool) -> Report {
        Report {
            step,
            ok,
            exit_status: if ok { 0 } else { 75 },
            member_id: None,
            duration_ms: 30_000,
            sent_at_ms: 1,
        }
    }

    fn installed(journeys: &Journeys, n: u8) {
        journeys.dhcp_answered(mac(n), None, None, false, "port 67".into());
        journeys.script_served(ScriptServed {
            ip: ip(n),
            mac: mac(n),
            uuid: None,
            name: Some("node"),
            served: "installer",
            images: vec!["k".into()],
        });
        journeys.image_sent(ip(n), "k", 1, true);
    }

    fn machine(journeys: &Journeys, n: u8) -> Machine {
        let fleet = journeys.fleet();
        let m = fleet
            .machines
            .into_iter()
            .find(|m| m.mac == mac(n).to_string())
            .expect("the machine");
        assert_eq!(
            fleet.counts,
            journeys.counts(),
            "the page and /metrics count alike"
        );
        m
    }

    const ALL_FOUR: [ClusterService; 4] = [
        ClusterService::Chainfire,
        ClusterService::Flaredb,
        ClusterService::Etcd,
        ClusterService::Iam,
    ];

    #[test]
    fn joined_takes_every_service_the_node_runs() {
        let journeys = Journeys::new("boot1", Limits::default());
        installed(&journeys, 1);
        let got = |step, ok| {
            journeys.report_received(mac(1), "node01", ip(1), &ALL_FOUR, &report(step, ok));
            let m = machine(&journeys, 1);
            (m.phase, m.joined, m.failed)
        };
        let (phase, joined, _) = got(ReportStep::ChainfireJoin, true);
        assert_eq!((phase, joined), (Phase::FirstBoot, vec!["chainfire"]));
        got(ReportStep::FlaredbJoin, true);
        got(ReportStep::IamSetup, true);
        let (phase, joined, _) = got(ReportStep::EtcdAdd, true);
        assert_eq!(phase, Phase::FirstBoot, "a learner added has not joined");
        assert_eq!(joined, ["chainfire", "flaredb", "iam"]);
        let (phase, joined, failed) = got(ReportStep::EtcdPromote, true);
        assert_eq!(phase, Phase::Joined);
        assert_eq!(
            joined,
            ["chainfire", "etcd", "flaredb", "iam"],
            "sorted by name"
        );
        assert!(!failed);
        let m = machine(&journeys, 1);
        assert_eq!(m.last_step.detail, "etcd promote: ok, 30.0 s");
        assert_eq!(m.last_step.sent_at_ms, Some(1));

        // A node running chainfire alone has joined once chainfire has; one in no cluster never.
        journeys.report_received(
            mac(2),
            "node02",
            ip(2),
            &[ClusterService::Chainfire],
            &report(ReportStep::ChainfireJoin, true),
        );
        assert_eq!(machine(&journeys, 2).phase, Phase::Joined);
        journeys.report_received(
            mac(3),
            "node03",
            ip(3),
            &[],
            &report(ReportStep::IamSetup, true),
        );
        assert_eq!(machine(&journeys, 3).phase, Phase::FirstBoot);
    }

    #[test]
    fn healthy_and_failed_follow_the_latest_reports() {
        let journeys = Journeys::new("boot1", Limits::default());
        let send = |step, ok| {
            journeys.report_received(mac(1), "node01", ip(1), &ALL_FOUR, &report(step, ok));
            machine(&journeys, 1)
        };
        // No journey yet (the server restarted since the node booted): the report makes one.
        let m = send(ReportStep::EtcdPromote, false);
        assert_eq!(m.phase, Phase::FirstBoot);
        assert_eq!(m.name.as_deref(), Some("node01"));
        assert_eq!(m.ip.as_deref(), Some("10.0.0.1"));
        assert!(m.failed);
        assert_eq!(
            m.last_step.detail,
            "etcd promote: failed (exit 75) after 30.0 s"
        );
        let mut with_member = report(ReportStep::EtcdJoin, false);
        with_member.member_id = Some("0x2a".into());
        assert_eq!(
            with_member.detail(),
            "etcd join: failed (exit 75), member 0x2a, after 30.0 s"
        );
        with_member.ok = true;
        assert_eq!(
            with_member.detail(),
            "etcd join: ok (exit 75), member 0x2a, 30.0 s"
        );
        assert!(
            send(ReportStep::ChainfireJoin, true).failed,
            "another service's success"
        );
        assert!(
            !send(ReportStep::EtcdJoin, true).failed,
            "etcd's own success"
        );
        let m = send(ReportStep::ClusterHealth, false);
        assert!(m.failed, "a health failure counts");
        assert_eq!(m.phase, Phase::FirstBoot);
        let m = send(ReportStep::ClusterHealth, true);
        assert_eq!((m.phase, m.failed), (Phase::Healthy, false));
        assert_eq!(journeys.counts()["healthy"], 1);
        let m = send(ReportStep::ClusterHealth, false);
        assert_eq!((m.phase, m.failed), (Phase::FirstBoot, true));
        assert_eq!(journeys.counts()["failed"], 1);
    }

    #[test]
    fn a_new_boot_starts_over() {
        let journeys = Journeys::new("boot1", Limits::default());
        installed(&journeys, 1);
        for step in [ReportStep::ChainfireJoin, ReportStep::FlaredbJoin] {
            journeys.report_received(mac(1), "node01", ip(1), &ALL_FOUR, &report(step, true));
        }
        journeys.report_received(
            mac(1),
            "node01",
            ip(1),
            &ALL_FOUR,
            &report(ReportStep::IamSetup, false),
        );
        let m = machine(&journeys, 1);
        assert_eq!((m.joined.len(), m.failed), (2, true));
        // Its firmware asks ProxyDHCP again: a reinstall.
        journeys.dhcp_answered(mac(1), None, None, false, "port 67".into());
        let m = machine(&journeys, 1);
        assert_eq!(m.phase, Phase::Seen);
        assert!(m.joined.is_empty() && !m.failed, "{m:?}");
        assert_eq!(journeys.counts()["failed"], 0);
    }

    #[test]
    fn each_phase_has_its_stuck_time_and_healthy_none() {
        let stuck = |limits: Limits| {
            let journeys = Journeys::new("boot1", limits);
            installed(&journeys, 1);
            journeys.script_served(ScriptServed {
                ip: ip(2),
                mac: mac(2),
                uuid: None,
                name: None,
                served: "menu",
                images: vec![],
            });
            for (n, step) in [
                (3, ReportStep::ChainfireJoin),
                (4, ReportStep::ClusterHealth),
            ] {
                journeys.report_received(mac(n), "n", ip(n), &ALL_FOUR, &report(step, true));
            }
            let fleet = journeys.fleet();
            let mut by_phase: Vec<(Phase, bool)> =
                fleet.machines.iter().map(|m| (m.phase, m.stuck)).collect();
            by_phase.sort();
            by_phase
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(
            stuck(Limits {
                stuck_after: Duration::ZERO,
                install_stuck_after: hour,
                ..Limits::default()
            }),
            [
                (Phase::Booting, true),
                (Phase::Installer, false),
                (Phase::FirstBoot, true),
                (Phase::Healthy, false),
            ]
        );
        assert_eq!(
            stuck(Limits {
                stuck_after: hour,
                install_stuck_after: Duration::ZERO,
                ..Limits::default()
            }),
            [
                (Phase::Booting, false),
                (Phase::Installer, true),
                (Phase::FirstBoot, false),
                (Phase::Healthy, false),
            ]
        );
    }
}
