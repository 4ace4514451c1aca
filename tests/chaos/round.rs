//! One round: a fresh 3-member etcd cluster and fresh chainfire/flaredb/IAM test servers, four
//! nodes running their first-boot units at once under the plan's faults, everything healed, the
//! units left to finish as systemd would (restarts included), then the invariants.

mod faults;
mod invariants;
mod setup;
mod units;

use super::admin::{AdminServer, AdminService};
use super::common::Pki;
use super::etcd::{EtcdMember, Etcdctl, node_name};
use super::net::Net;
use super::plan::{Plan, UnitKind, WINDOW};
use faults::{Ending, LineKill, Refusal};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};
use units::{Unit, UnitState};

/// After the heal, how long the units get to finish.
const SETTLE: Duration = Duration::from_secs(120);
/// The organization and first admin every node's IAM setup asks for.
const IAM_ORG: &str = "chaos";
const IAM_ADMIN: &str = "root";

/// What stays the same for every round.
pub struct Campaign {
    pub net: Net,
    pub pki: Pki,
    pub dir: PathBuf,
    pub token_file: PathBuf,
    /// IAM's bootstrap token.
    pub iam_token_file: PathBuf,
    /// The first IAM admin's public key (PEM), as every node configures it.
    pub admin_public_key: String,
    pub etcdctl: Etcdctl,
    pub flint: PathBuf,
}

#[derive(Default, Debug)]
pub struct Outcome {
    pub faults: BTreeMap<String, u32>,
    pub exits: BTreeMap<String, u32>,
    pub violations: Vec<String>,
    pub unfinished: Vec<String>,
    /// Units that ended for good with the status a planned refusal called for.
    pub refused: Vec<String>,
    /// Planned faults that found nothing to hit (the unit had ended, the line never came, the
    /// member was down), by kind.
    pub missed: BTreeMap<String, u32>,
    /// etcd members that exited without being killed (restarted, as Restart=always does).
    pub etcd_exited: u32,
    /// Nodes joined per service.
    pub joined: BTreeMap<&'static str, usize>,
    pub elapsed: Duration,
    pub dir: PathBuf,
}

struct Round<'a> {
    c: &'a mut Campaign,
    plan: &'a Plan,
    dir: PathBuf,
    t0: Instant,
    out: Outcome,
    units: BTreeMap<(usize, UnitKind), Unit>,
    etcd: BTreeMap<usize, EtcdMember>,
    /// Members killed by a fault, restarted at this time.
    etcd_down: BTreeMap<usize, Instant>,
    admin: BTreeMap<AdminService, AdminServer>,
    endings: Vec<(Instant, Ending)>,
    /// Leadership moves of the "admin leader killed" faults.
    leader_moves: Vec<(Instant, AdminService, String)>,
    line_kills: Vec<LineKill>,
    /// Refusals armed on a server: which, by its `seq` there, and whether a request met it
    /// (known at the heal).
    refusals: Vec<Refusal>,
    fired_tx: Sender<usize>,
    fired_rx: Receiver<usize>,
    armed: Arc<AtomicBool>,
    next_event: usize,
    healed: bool,
    /// For the choices made when a fault fires (which running unit a kill hits).
    rng: fastrand::Rng,
    log: fs::File,
}

pub fn run(c: &mut Campaign, plan: &Plan, index: usize) -> Outcome {
    let dir = c.dir.join(format!("round-{index:03}-seed-{}", plan.seed));
    fs::create_dir_all(&dir).expect("create round dir");
    let log = fs::File::create(dir.join("round.log")).expect("create round log");
    let (fired_tx, fired_rx) = channel();
    let mut round = Round {
        c,
        plan,
        dir: dir.clone(),
        t0: Instant::now(),
        out: Outcome {
            dir,
            ..Outcome::default()
        },
        units: BTreeMap::new(),
        etcd: BTreeMap::new(),
        etcd_down: BTreeMap::new(),
        admin: BTreeMap::new(),
        endings: Vec::new(),
        leader_moves: Vec::new(),
        line_kills: Vec::new(),
        refusals: Vec::new(),
        fired_tx,
        fired_rx,
        armed: Arc::new(AtomicBool::new(true)),
        next_event: 0,
        healed: false,
        rng: fastrand::Rng::with_seed(plan.seed ^ 0x9E37_79B9_7F4A_7C15),
        log,
    };
    let started = Instant::now();
    round.setup();
    round.drive();
    round.check();
    round.teardown();
    round.out.elapsed = started.elapsed();
    round.out
}

impl Round<'_> {
    fn note(&mut self, text: &str) {
        let t = self.t0.elapsed().as_secs_f64();
        let _ = writeln!(self.log, "[{t:8.3}] {text}");
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(node_name(i))
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("state")
    }

    /// The plan's faults on its schedule and the units as systemd runs them, every fault healed
    /// at the end of the window, until every unit has ended or the settle time is over.
    fn drive(&mut self) {
        loop {
            if !self.healed {
                self.fire_due_events();
                self.end_faults();
            }
            self.poll_etcd_services();
            self.poll_units();
            let t = self.t0.elapsed();
            if !self.healed && (t >= WINDOW || self.all_final()) {
                self.heal();
            }
            if self.healed && self.all_final() {
                break;
            }
            if t >= WINDOW + SETTLE {
                self.note("settle time over");
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn teardown(&mut self) {
        for unit in self.units.values_mut() {
            if let UnitState::Running(run) = &unit.state {
                let mut child = run.child.lock().unwrap_or_else(|e| e.into_inner());
                let _ = child.kill();
                let _ = child.wait();
            }
            unit.state = UnitState::Failed("round over".into());
        }
        self.etcd.clear();
        self.admin.clear();
        self.c.net.heal();
    }
}
