//! Each machine's journey from power-on, as this boot server sees it: the ProxyDHCP answer, the
//! iPXE binary sent, `boot.ipxe`, its script, every image sent (bytes, and whether whole). An
//! operator bringing up a rack asks which machines are stuck and where: `GET /api/machines`, the
//! page at `/` and `flint-boot status` answer from here.
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
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flint_ipxe::{Mac, Uuid};
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
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Seen, Phase::Booting, Phase::Installer];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Seen => "seen",
            Phase::Booting => "booting",
            Phase::Installer => "installer",
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
}

impl StepKind {
    pub const ALL: [StepKind; 5] = [
        StepKind::Dhcp,
        StepKind::Binary,
        StepKind::BootScript,
        StepKind::Script,
        StepKind::Image,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StepKind::Dhcp => "dhcp",
            StepKind::Binary => "binary",
            StepKind::BootScript => "boot-script",
            StepKind::Script => "script",
            StepKind::Image => "image",
        }
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
    /// No step for longer than the stuck time.
    pub stuck: bool,
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
    /// Machines per phase (every phase, 0 included), and `stuck`.
    pub counts: BTreeMap<&'static str, usize>,
    /// Stuck machines first, the longest idle first; then the rest, the latest step first.
    pub machines: Vec<Machine>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub machines: usize,
    pub steps: usize,
    pub untied: usize,
    /// A machine short of its last phase with no step for this long is stuck.
    pub stuck_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            machines: 20_000,
            steps: 32,
            untied: 4_096,
            stuck_after: Duration::from_secs(15 * 60),
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
    first_seen: SystemTime,
    steps: VecDeque<Step>,
}

#[derive(Default)]
struct State {
    machines: HashMap<Mac, Journey>,
    by_ip: HashMap<IpAddr, Mac>,
    untied: HashMap<IpAddr, Vec<Step>>,
}

pub struct Journeys {
    server: String,
    limits: Limits,
    state: Mutex<State>,
    /// By `StepKind::ALL`'s order.
    steps_recorded: [AtomicU64; StepKind::ALL.len()],
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
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not stop the recording: the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn step(&self, step: StepKind, detail: String) -> Step {
        let kind = StepKind::ALL.iter().position(|k| *k == step).unwrap_or(0);
        self.steps_recorded[kind].fetch_add(1, Ordering::Relaxed);
        Step {
            step,
            at_ms: millis(SystemTime::now()),
            server: self.server.clone(),
            detail: printable(&detail),
        }
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
        let step = self.step(StepKind::Dhcp, detail);
        let mut state = self.lock();
        let journey = self.journey(&mut state, mac);
        if ipxe {
            journey.phase = Phase::Booting;
        } else {
            journey.phase = Phase::Seen;
            journey.images_due.clear();
        }
        if uuid.is_some() {
            journey.uuid = uuid;
        }
        push(journey, step, self.limits.steps);
        if let Some(ip) = from {
            tie(&mut state, ip, mac, self.limits.steps);
        }
    }

    /// An iPXE binary sent to `ip` (TFTP, or HTTP for UEFI HTTP Boot).
    pub fn binary_sent(&self, ip: IpAddr, file: &str, bytes: u64, whole: bool, via: &str) {
        let detail = format!("{file} over {via}: {}", sent(bytes, whole));
        let step = self.step(StepKind::Binary, detail);
        self.at_address(ip, step, |journey| journey.phase = Phase::Booting);
    }

    /// `boot.ipxe` served to `ip`.
    pub fn boot_script_served(&self, ip: IpAddr) {
        let step = self.step(StepKind::BootScript, "boot.ipxe".into());
        self.at_address(ip, step, |journey| journey.phase = Phase::Booting);
    }

    /// The machine's own script: names its MAC, so its address is tied to it from now on.
    pub fn script_served(&self, script: ScriptServed<'_>) {
        let detail = match script.name {
            Some(name) => format!("{name}: {}", script.served),
            None => format!("unknown machine: {}", script.served),
        };
        let step = self.step(StepKind::Script, detail);
        let mut state = self.lock();
        self.journey(&mut state, script.mac);
        // Before its own step: what waited for this script came before it.
        tie(&mut state, script.ip, script.mac, self.limits.steps);
        let journey = self.journey(&mut state, script.mac);
        journey.phase = Phase::Booting;
        journey.name = script.name.map(printable);
        journey.ip = Some(script.ip);
        if script.uuid.is_some() {
            journey.uuid = script.uuid;
        }
        journey.images_due = script.images;
        push(journey, step, self.limits.steps);
    }

    /// `/images/PATH` sent to `ip`: `whole` when every byte of the file left.
    pub fn image_sent(&self, ip: IpAddr, path: &str, bytes: u64, whole: bool) {
        let step = self.step(StepKind::Image, format!("{path}: {}", sent(bytes, whole)));
        let path = path.to_owned();
        self.at_address(ip, step, move |journey| {
            if whole {
                journey.images_due.retain(|due| *due != path);
                if journey.images_due.is_empty() && journey.phase == Phase::Booting {
                    journey.phase = Phase::Installer;
                }
            }
        });
    }

    /// A step from an address: the machine's, when tied; else kept until its script ties it.
    fn at_address(&self, ip: IpAddr, step: Step, then: impl FnOnce(&mut Journey)) {
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
                .min_by_key(|(_, steps)| steps.first().map_or(0, |s| s.at_ms))
                .map(|(ip, _)| *ip)
            {
                state.untied.remove(&oldest);
            }
        }
        let waiting = state.untied.entry(ip).or_default();
        if waiting.len() < self.limits.steps {
            waiting.push(step);
        }
    }

    /// The journey of `mac`, made when new; room is made by dropping the one idle longest.
    fn journey<'s>(&self, state: &'s mut State, mac: Mac) -> &'s mut Journey {
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
        state.machines.entry(mac).or_insert_with(|| Journey {
            uuid: None,
            name: None,
            ip: None,
            phase: Phase::Seen,
            images_due: Vec::new(),
            first_seen: SystemTime::now(),
            steps: VecDeque::new(),
        })
    }

    /// Machines per phase (every phase, 0 included), and `stuck`: for `/metrics`, without
    /// copying any journey.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let now_ms = millis(SystemTime::now());
        let stuck_after_ms = millis_of(self.limits.stuck_after);
        let mut counts: BTreeMap<&'static str, usize> =
            Phase::ALL.iter().map(|p| (p.name(), 0)).collect();
        let mut stuck = 0;
        for journey in self.lock().machines.values() {
            *counts.entry(journey.phase.name()).or_default() += 1;
            if is_stuck(journey, now_ms, stuck_after_ms) {
                stuck += 1;
            }
        }
        counts.insert("stuck", stuck);
        counts
    }

    /// The journeys' series for `/metrics`: steps recorded by kind, machines by phase, stuck
    /// machines. Every label value is from a fixed set, all of them exported from the start.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP flint_boot_journey_steps_total Steps of machines' journeys recorded, by kind.\n");
        out.push_str("# TYPE flint_boot_journey_steps_total counter\n");
        for (kind, n) in StepKind::ALL.iter().zip(&self.steps_recorded) {
            let _ = writeln!(
                out,
                "flint_boot_journey_steps_total{{step=\"{}\"}} {}",
                kind.name(),
                n.load(Ordering::Relaxed)
            );
        }
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
    }

    /// Every machine, for `/api/machines`, the page and `flint-boot status`.
    pub fn fleet(&self) -> Fleet {
        let now = SystemTime::now();
        let now_ms = millis(now);
        let stuck_after_ms = millis_of(self.limits.stuck_after);
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
                    stuck: is_stuck(j, now_ms, stuck_after_ms),
                    first_seen_ms: millis(j.first_seen),
                    last_step_ms: last.at_ms,
                    idle_s: idle_ms / 1000,
                    last_step: last,
                    steps: j.steps.iter().cloned().collect(),
                })
            })
            .collect();
        drop(state);
        machines.sort_by(|a, b| {
            b.stuck
                .cmp(&a.stuck)
                .then_with(|| {
                    if a.stuck {
                        a.last_step_ms.cmp(&b.last_step_ms)
                    } else {
                        b.last_step_ms.cmp(&a.last_step_ms)
                    }
                })
                .then_with(|| a.mac.cmp(&b.mac))
        });
        let mut counts: BTreeMap<&'static str, usize> =
            Phase::ALL.iter().map(|p| (p.name(), 0)).collect();
        for m in &machines {
            *counts.entry(m.phase.name()).or_default() += 1;
        }
        counts.insert("stuck", machines.iter().filter(|m| m.stuck).count());
        Fleet {
            schema_version: SCHEMA_VERSION,
            server: self.server.clone(),
            generated_at_ms: now_ms,
            stuck_after_s: self.limits.stuck_after.as_secs(),
            counts,
            machines,
        }
    }
}

fn is_stuck(journey: &Journey, now_ms: u64, stuck_after_ms: u64) -> bool {
    journey.phase != Phase::Installer
        && journey
            .steps
            .back()
            .is_some_and(|last| now_ms.saturating_sub(last.at_ms) >= stuck_after_ms)
}

/// From now on steps from `ip` are `mac`'s; steps that waited for it join its journey.
fn tie(state: &mut State, ip: IpAddr, mac: Mac, max_steps: usize) {
    state.by_ip.insert(ip, mac);
    if let Some(waiting) = state.untied.remove(&ip)
        && let Some(journey) = state.machines.get_mut(&mac)
    {
        for step in waiting {
            push(journey, step, max_steps);
        }
        journey
            .steps
            .make_contiguous()
            .sort_by_key(|step| step.at_ms);
    }
}

fn push(journey: &mut Journey, step: Step, max: usize) {
    // The first step says when and how the machine was first seen: it stays.
    if journey.steps.len() >= max.max(2) {
        journey.steps.remove(1);
    }
    journey.steps.push_back(step);
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
            "an installed machine is never stuck"
        );
    }
}
