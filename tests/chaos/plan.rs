//! A round's faults, drawn from its seed alone: the same seed gives the same plan (which faults,
//! where, when, for how long). What the faults meet depends on timing, so a rerun is the same
//! experiment, not the same interleaving.
use super::admin::AdminService;
use serde_json::{Value, json};
use std::fmt;
use std::time::Duration;

/// The initial members of every cluster: node01..node03. The joiners: node04..node07.
pub const INITIAL: usize = 3;
pub const NODES: usize = 7;
pub const JOINERS: std::ops::RangeInclusive<usize> = 4..=7;
/// Faults are injected within this long after the joins start; then everything is healed.
pub const WINDOW: Duration = Duration::from_secs(30);

/// A unit of a joining node, as systemd runs them (systemd/*.service).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnitKind {
    /// etcd-cluster-join.service: `flint join etcd --phase add`.
    EtcdAdd,
    /// etcd-cluster-promote.service: `flint join etcd --phase promote`, after etcd.service.
    EtcdPromote,
    /// chainfire-cluster-join.service.
    Chainfire,
    /// flaredb-cluster-join.service, after chainfire's.
    Flaredb,
    /// iam-initial-setup.service, after flaredb's.
    Iam,
}

impl UnitKind {
    pub const ALL: [UnitKind; 5] = [
        UnitKind::EtcdAdd,
        UnitKind::EtcdPromote,
        UnitKind::Chainfire,
        UnitKind::Flaredb,
        UnitKind::Iam,
    ];

    pub fn args(self) -> &'static [&'static str] {
        match self {
            UnitKind::EtcdAdd => &["join", "etcd", "--phase", "add"],
            UnitKind::EtcdPromote => &["join", "etcd", "--phase", "promote"],
            UnitKind::Chainfire => &["join", "chainfire"],
            UnitKind::Flaredb => &["join", "flaredb"],
            UnitKind::Iam => &["iam-setup"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            UnitKind::EtcdAdd => "etcd-add",
            UnitKind::EtcdPromote => "etcd-promote",
            UnitKind::Chainfire => "chainfire",
            UnitKind::Flaredb => "flaredb",
            UnitKind::Iam => "iam",
        }
    }

    /// The marker whose presence skips the unit (`ConditionPathExists=!`).
    pub fn marker(self) -> &'static str {
        match self {
            UnitKind::EtcdAdd | UnitKind::EtcdPromote => ".etcd-joined",
            UnitKind::Chainfire => ".chainfire-joined",
            UnitKind::Flaredb => ".flaredb-joined",
            UnitKind::Iam => ".iam-setup-done",
        }
    }

    /// Lines flint logs at the steps of this unit (docs/commands.md): the points a kill aims at.
    pub fn steps(self) -> &'static [&'static str] {
        match self {
            UnitKind::EtcdAdd => &[
                "adding learner",
                "added learner",
                "wrote ",
                "already exists; reusing it",
                "waiting for a voting etcd member",
            ],
            UnitKind::EtcdPromote => &[
                "waiting for the local member",
                "promoting member",
                "is a voter",
                "waiting for the learner to catch up",
            ],
            UnitKind::Chainfire | UnitKind::Flaredb => &[
                "waiting for the local",
                "adding node",
                " added node",
                "already lists",
                "waiting for",
            ],
            UnitKind::Iam => &[
                "waiting for IAM",
                "setting up IAM organization",
                "IAM set up",
                "already set up by another node",
                "marker ",
            ],
        }
    }
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// SIGKILL one of the node's flint runs: `unit` (or any that runs) at the event's time, or
    /// `after_ms` after the run logs `line`.
    KillFlint {
        node: usize,
        unit: Option<UnitKind>,
        line: Option<&'static str>,
        after_ms: u64,
    },
    /// SIGKILL the member etcd's members follow, restart it `down` later.
    KillEtcdLeader { down: Duration },
    /// SIGKILL node's etcd (if it runs), restart it `down` later.
    KillEtcdMember { node: usize, down: Duration },
    /// Cut an endpoint (0: the admin-API servers; 1..=7: a node) from every other, both ways.
    Isolate { endpoint: usize, dur: Duration },
    /// Cut two endpoints from each other.
    Cut { a: usize, b: usize, dur: Duration },
    /// Drop this share of an endpoint's packets.
    Loss {
        endpoint: usize,
        pct: u8,
        dur: Duration,
    },
    /// Raise an endpoint's link delay (each way) for a while.
    DelaySpike {
        endpoint: usize,
        ms: u64,
        dur: Duration,
    },
    /// The admin API's leader dies: its listener refuses connections, another member becomes
    /// leader 300 ms later, the listener answers again `dur` later.
    AdminLeaderDown {
        service: AdminService,
        dur: Duration,
    },
    /// A fault of the test server (docs/test-server.md), armed at the event's time.
    ServerMisbehaves {
        service: AdminService,
        kind: &'static str,
        fault: Value,
    },
    /// An answer to one add that flint must take as final (docs/fault-matrix.md): the run it
    /// reaches ends with `exit` at once and its unit is not restarted
    /// (`RestartPreventExitStatus=`), so that node does not join that service.
    ServerRefuses {
        service: AdminService,
        kind: &'static str,
        fault: Value,
        exit: i32,
    },
}

impl Fault {
    /// The kind under which the report counts it.
    pub fn kind(&self) -> String {
        match self {
            Fault::KillFlint { line: None, .. } => "kill-flint (at a time)".into(),
            Fault::KillFlint { line: Some(_), .. } => "kill-flint (at a step)".into(),
            Fault::KillEtcdLeader { .. } => "kill-etcd-leader".into(),
            Fault::KillEtcdMember { .. } => "kill-etcd-member".into(),
            Fault::Isolate { endpoint: 0, .. } => "partition (admin servers cut off)".into(),
            Fault::Isolate { .. } => "partition (node cut off)".into(),
            Fault::Cut { .. } => "partition (two nodes)".into(),
            Fault::Loss { .. } => "loss".into(),
            Fault::DelaySpike { .. } => "delay spike".into(),
            Fault::AdminLeaderDown { .. } => "admin leader killed".into(),
            Fault::ServerMisbehaves {
                service: AdminService::Iam,
                kind,
                ..
            } => format!("iam {kind}"),
            Fault::ServerMisbehaves { kind, .. } => format!("admin {kind}"),
            Fault::ServerRefuses {
                service: AdminService::Iam,
                kind,
                exit,
                ..
            } => format!("iam refusal: {kind} ({exit})"),
            Fault::ServerRefuses { kind, exit, .. } => format!("admin refusal: {kind} ({exit})"),
        }
    }
}

fn endpoint_name(k: usize) -> String {
    if k == 0 {
        "admin-servers".into()
    } else {
        format!("node{k:02}")
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillFlint {
                node,
                unit,
                line,
                after_ms,
            } => {
                let unit = unit.map_or("any unit", UnitKind::name);
                match line {
                    Some(line) => write!(
                        f,
                        "kill flint node{node:02} {unit} {after_ms} ms after {line:?}"
                    ),
                    None => write!(f, "kill flint node{node:02} {unit}"),
                }
            }
            Fault::KillEtcdLeader { down } => write!(f, "kill the etcd leader for {down:?}"),
            Fault::KillEtcdMember { node, down } => {
                write!(f, "kill etcd of node{node:02} for {down:?}")
            }
            Fault::Isolate { endpoint, dur } => {
                write!(f, "cut {} off for {dur:?}", endpoint_name(*endpoint))
            }
            Fault::Cut { a, b, dur } => write!(
                f,
                "cut {} from {} for {dur:?}",
                endpoint_name(*a),
                endpoint_name(*b)
            ),
            Fault::Loss { endpoint, pct, dur } => {
                write!(f, "{pct}% loss at {} for {dur:?}", endpoint_name(*endpoint))
            }
            Fault::DelaySpike { endpoint, ms, dur } => write!(
                f,
                "{ms} ms delay at {} for {dur:?}",
                endpoint_name(*endpoint)
            ),
            Fault::AdminLeaderDown { service, dur } => {
                write!(f, "{} leader down for {dur:?}", service.name())
            }
            Fault::ServerMisbehaves { service, fault, .. } => {
                write!(f, "{} fault {fault}", service.name())
            }
            Fault::ServerRefuses {
                service,
                fault,
                exit,
                ..
            } => write!(
                f,
                "{} refuses once: {fault}; that run must exit {exit}",
                service.name()
            ),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Event {
    pub at: Duration,
    pub fault: Fault,
}

/// One node whose `timeouts.total` is short, cut off for longer than that early on: its runs
/// reach their deadline (exit 69) and are restarted, and it joins once the cut heals.
#[derive(Clone, Copy, Debug)]
pub struct ShortDeadline {
    pub node: usize,
    pub total: Duration,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    /// flint-testserver `--learner-ms`: an added member is a learner this long.
    pub learner_ms: u64,
    /// Link delay (ms, each way) of endpoint k: 0 the admin servers, 1..=7 the nodes.
    pub delays: Vec<u64>,
    pub events: Vec<Event>,
    pub short_deadline: Option<ShortDeadline>,
}

fn ms(rng: &mut fastrand::Rng, range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_millis(rng.u64(range))
}

fn service(rng: &mut fastrand::Rng) -> AdminService {
    if rng.bool() {
        AdminService::Chainfire
    } else {
        AdminService::Flaredb
    }
}

fn kill_flint(rng: &mut fastrand::Rng) -> Fault {
    let node = rng.usize(JOINERS);
    if rng.bool() {
        let unit = UnitKind::ALL[rng.usize(..UnitKind::ALL.len())];
        let steps = unit.steps();
        // Right at the line half the time, else within 40 ms: most steps are short.
        let after_ms = if rng.bool() { 0 } else { rng.u64(1..=40) };
        Fault::KillFlint {
            node,
            unit: Some(unit),
            line: Some(steps[rng.usize(..steps.len())]),
            after_ms,
        }
    } else {
        Fault::KillFlint {
            node,
            unit: None,
            line: None,
            after_ms: 0,
        }
    }
}

fn leader_kill(rng: &mut fastrand::Rng) -> Fault {
    if rng.u8(..3) < 2 {
        Fault::KillEtcdLeader {
            down: ms(rng, 300..=4000),
        }
    } else {
        Fault::AdminLeaderDown {
            service: service(rng),
            dur: ms(rng, 1000..=5000),
        }
    }
}

fn network(rng: &mut fastrand::Rng) -> Fault {
    let endpoint = rng.usize(0..=NODES);
    match rng.u8(..4) {
        0 => Fault::Isolate {
            endpoint,
            dur: ms(rng, 1000..=6000),
        },
        1 => {
            let a = rng.usize(1..=NODES);
            let mut b = rng.usize(0..=NODES);
            while b == a {
                b = rng.usize(0..=NODES);
            }
            Fault::Cut {
                a,
                b,
                dur: ms(rng, 1000..=6000),
            }
        }
        2 => Fault::Loss {
            endpoint,
            pct: rng.u8(10..=40),
            dur: ms(rng, 2000..=8000),
        },
        _ => Fault::DelaySpike {
            endpoint,
            ms: rng.u64(100..=250),
            dur: ms(rng, 2000..=6000),
        },
    }
}

fn admin_fault(rng: &mut fastrand::Rng) -> Fault {
    let service = service(rng);
    let route = if rng.bool() { "list" } else { "add" };
    let (kind, fault) = match rng.u8(..7) {
        0 => {
            let code = [500, 502, 503][rng.usize(..3)];
            let times = rng.u8(1..=3);
            if rng.u8(..3) == 0 {
                let listener = format!("node{:02}", rng.usize(JOINERS));
                let f = json!({"route": "health", "kind": "status", "code": code, "times": times, "listener": listener});
                ("5xx", f)
            } else {
                let f = json!({"route": route, "kind": "status", "code": code, "times": times});
                ("5xx", f)
            }
        }
        1 => (
            "slow",
            json!({"route": route, "kind": "delay", "ms": rng.u64(300..=3000), "times": rng.u8(1..=2)}),
        ),
        2 => {
            let after_bytes = [0, 12, 30][rng.usize(..3)];
            let mut f =
                json!({"route": route, "kind": "drop", "after_bytes": after_bytes, "times": 1});
            if route == "add" && rng.bool() {
                f["apply"] = json!(true);
            }
            ("drop", f)
        }
        3 => (
            "429",
            json!({"route": route, "kind": "too-many", "seconds": rng.u8(1..=2), "times": 1}),
        ),
        4 => {
            let code = [307, 421, 503][rng.usize(..3)];
            (
                "leader change",
                json!({"route": "add", "kind": "leader-change", "code": code, "times": 1}),
            )
        }
        5 => {
            let mut f = json!({"route": route, "kind": "truncated-json", "times": 1});
            if route == "add" && rng.bool() {
                f["apply"] = json!(true);
            }
            ("truncated", f)
        }
        _ => {
            let code = [421, 503][rng.usize(..2)];
            (
                "leader hint",
                json!({"route": route, "kind": "leader-hint", "code": code, "times": rng.u8(1..=2)}),
            )
        }
    };
    Fault::ServerMisbehaves {
        service,
        kind,
        fault,
    }
}

/// A permanent refusal of one add: what the server answers and the status flint must exit with.
fn refusal(rng: &mut fastrand::Rng) -> Fault {
    let (kind, fault, exit) = match rng.u8(..5) {
        0 => ("401", json!({"kind": "token-required"}), 77),
        1 => ("403", json!({"kind": "status", "code": 403}), 77),
        2 => ("malformed", json!({"kind": "malformed-json"}), 65),
        3 => ("html", json!({"kind": "wrong-content-type"}), 65),
        _ => ("conflict", json!({"kind": "conflict-other"}), 65),
    };
    let service = [
        AdminService::Chainfire,
        AdminService::Flaredb,
        AdminService::Iam,
    ][rng.usize(..3)];
    let mut fault = fault;
    fault["route"] = json!(if service == AdminService::Iam {
        "bootstrap"
    } else {
        "add"
    });
    fault["times"] = json!(1);
    Fault::ServerRefuses {
        service,
        kind,
        fault,
        exit,
    }
}

/// A transient fault of IAM: its health or the bootstrap fails, is slow, or its answer is lost
/// after the setup was done.
fn iam_fault(rng: &mut fastrand::Rng) -> Fault {
    let (kind, fault) = match rng.u8(..5) {
        0 => {
            let route = if rng.bool() {
                "iam-health"
            } else {
                "bootstrap"
            };
            let code = [500, 502, 503][rng.usize(..3)];
            (
                "5xx",
                json!({"route": route, "kind": "status", "code": code, "times": rng.u8(1..=3)}),
            )
        }
        1 => (
            "slow",
            json!({"route": "bootstrap", "kind": "delay", "ms": rng.u64(300..=3000), "times": 1}),
        ),
        2 => {
            let after_bytes = [0, 12, 30][rng.usize(..3)];
            (
                "drop",
                json!({"route": "bootstrap", "kind": "drop", "after_bytes": after_bytes, "apply": rng.bool(), "times": 1}),
            )
        }
        3 => (
            "429",
            json!({"route": "bootstrap", "kind": "too-many", "seconds": rng.u8(1..=2), "times": 1}),
        ),
        _ => (
            "truncated",
            json!({"route": "bootstrap", "kind": "truncated-json", "apply": rng.bool(), "times": 1}),
        ),
    };
    Fault::ServerMisbehaves {
        service: AdminService::Iam,
        kind,
        fault,
    }
}

impl Plan {
    pub fn from_seed(seed: u64) -> Plan {
        let mut rng = fastrand::Rng::with_seed(seed);
        let learner_ms = if rng.bool() { 0 } else { rng.u64(100..=1500) };
        let delays = (0..=NODES)
            .map(|_| if rng.bool() { 0 } else { rng.u64(1..=30) })
            .collect();
        // Every round has a flint kill, a leader kill and a network fault; then 2 to 6 more of
        // any kind.
        let mut faults = vec![
            kill_flint(&mut rng),
            leader_kill(&mut rng),
            network(&mut rng),
        ];
        for _ in 0..rng.usize(2..=6) {
            let fault = match rng.u8(..10) {
                0..=2 => kill_flint(&mut rng),
                3 => leader_kill(&mut rng),
                4 => Fault::KillEtcdMember {
                    node: rng.usize(1..=NODES),
                    down: ms(&mut rng, 300..=4000),
                },
                5..=6 => network(&mut rng),
                _ => admin_fault(&mut rng),
            };
            faults.push(fault);
        }
        let window_ms = WINDOW.as_millis() as u64;
        let mut events: Vec<Event> = faults
            .into_iter()
            .map(|fault| {
                // Step-triggered kills watch from the start; the others come at a random time,
                // ending within the window.
                let at = match &fault {
                    Fault::KillFlint { line: Some(_), .. } => Duration::ZERO,
                    _ => ms(&mut rng, 0..=window_ms - 2000),
                };
                Event { at, fault }
            })
            .collect();
        // Drawn after the rest, so the faults above stay what they were for a seed. Half the
        // rounds have an IAM fault; a third refuse one add or bootstrap for good; a third give
        // one node a short deadline.
        if rng.bool() {
            let at = ms(&mut rng, 0..=window_ms - 2000);
            events.push(Event {
                at,
                fault: iam_fault(&mut rng),
            });
        }
        if rng.u8(..3) == 0 {
            // Armed before the units start: the first add (or bootstrap) of that service meets
            // it, whichever node sends it. The adds all come within the first seconds.
            events.push(Event {
                at: Duration::ZERO,
                fault: refusal(&mut rng),
            });
        }
        let mut short_deadline = None;
        if rng.u8(..3) == 0 {
            let node = rng.usize(JOINERS);
            let total = ms(&mut rng, 15_000..=20_000);
            events.push(Event {
                at: ms(&mut rng, 0..=2000),
                fault: Fault::Isolate {
                    endpoint: node,
                    dur: total + ms(&mut rng, 2000..=5000),
                },
            });
            short_deadline = Some(ShortDeadline { node, total });
        }
        events.sort_by_key(|e| e.at);
        Plan {
            seed,
            learner_ms,
            delays,
            events,
            short_deadline,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let delays: Vec<String> = self
            .delays
            .iter()
            .enumerate()
            .filter(|(_, d)| **d > 0)
            .map(|(k, d)| format!("{}={d}ms", endpoint_name(k)))
            .collect();
        writeln!(
            f,
            "  link delays: {}; admin learner period {} ms",
            if delays.is_empty() {
                "none".to_string()
            } else {
                delays.join(" ")
            },
            self.learner_ms
        )?;
        if let Some(short) = self.short_deadline {
            writeln!(
                f,
                "  node{:02} timeouts.total = {:?}",
                short.node, short.total
            )?;
        }
        for event in &self.events {
            writeln!(f, "  t={:>5.1}s {}", event.at.as_secs_f64(), event.fault)?;
        }
        Ok(())
    }
}
