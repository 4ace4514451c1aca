//! Member mode: one process is one node's local chainfire/flaredb or IAM service, and the
//! processes of several machines together behave as one Raft cluster. Each node heartbeats every
//! peer over HTTPS (`GET /internal/state`, a long poll), the lowest-named live voter leads while
//! it reaches a majority of the voters, followers take the leader's state from its answers and
//! serve reads from their own copy, and the leader answers a write once a majority holds it.
//! `docs/test-server.md` ("Member mode") states every rule.

pub mod api;
pub mod peer;
pub mod replica;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::cluster::RoleCase;
use crate::faults::{Fault, FaultSet, Kind};
use crate::http::{self, Conn};
use crate::state::Counters;
use crate::tls;
use replica::{Decision, Replica, Seen, Wire};

/// The largest state a node takes from a peer (the key-value store travels whole).
pub const MAX_STATE: usize = 8 << 20;
/// The longest a heartbeat is held, whatever the caller asks for.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// The least time between two heartbeats to the same peer, so nothing can make a node spin.
const MIN_GAP: Duration = Duration::from_millis(20);
/// A TCP connection to a peer that takes longer than this has failed (a dead VM never refuses).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What runs, all checked (`cli` builds it).
#[derive(Debug)]
pub struct Settings {
    /// chainfire/flaredb (`true`) or IAM.
    pub cluster: bool,
    pub id: String,
    pub listen: SocketAddr,
    pub raft_addr: String,
    /// `(id, base URL)` of every other node, URL without a trailing slash.
    pub peers: Vec<(String, String)>,
    /// `(id, raft_addr)` of the initial members.
    pub initial: Vec<(String, String)>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    /// The CA peers' server certificates are verified against (set whenever there are peers).
    pub peer_ca: Option<PathBuf>,
    pub client_identity: Option<(PathBuf, PathBuf)>,
    pub token: Option<String>,
    pub faults: Vec<Fault>,
    pub control: Option<SocketAddr>,
    pub ready_file: Option<PathBuf>,
    pub heartbeat: Duration,
    pub leader_timeout: Duration,
    pub learner_for: Duration,
    pub role_case: RoleCase,
}

impl Settings {
    /// `(name, address)` pairs faults may name: this node and its peers (by their URL's
    /// `host:port`); only this node's own name fires here, see [`check_faults`].
    pub fn fault_listeners(&self) -> Vec<(String, String)> {
        let mut names = vec![(self.id.clone(), self.listen.to_string())];
        for (id, url) in &self.peers {
            names.push((id.clone(), authority(url).to_owned()));
        }
        names
    }
}

/// `host:port` of `https://host:port`.
pub fn authority(url: &str) -> &str {
    url.strip_prefix("https://").unwrap_or(url)
}

/// Faults that cannot work on one node are refused: one scoped to another node (it would never
/// fire here; arm it on that node's control API), and `leader-change` (leadership follows
/// liveness here: stop the leader instead).
pub fn check_faults(faults: &[Fault], me: &str) -> Result<(), String> {
    for (index, f) in faults.iter().enumerate() {
        if let Some(l) = f.listener.as_deref().filter(|l| *l != me) {
            return Err(format!(
                "fault at index {index}: listener {l:?} is another node; arm it on that node's \
                 control API"
            ));
        }
        if matches!(f.kind, Kind::LeaderChange { .. }) {
            return Err(format!(
                "fault at index {index}: leader-change is not available in member mode \
                 (leadership follows liveness: stop or kill the leader instead)"
            ));
        }
    }
    Ok(())
}

/// What `GET /internal/state` answers: who the node is, what it makes of the leadership, and
/// its copy of the state. Never a token: only the replica, which holds none.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub id: String,
    pub raft_addr: String,
    pub leading: bool,
    pub leader: Option<String>,
    pub state: Wire,
}

/// What this node knows of one peer.
#[derive(Debug)]
pub struct PeerView {
    pub url: String,
    /// Its last answer to a heartbeat.
    pub answered: Option<Instant>,
    pub leading: bool,
    pub believes: Option<String>,
    pub replica: Option<Replica>,
    /// Why the last heartbeat failed, until one succeeds.
    pub error: Option<String>,
}

/// The version a peer said it holds, in its last heartbeat to this node.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub term: u64,
    pub version: u64,
}

#[derive(Debug)]
pub struct Inner {
    pub replica: Replica,
    pub lead: bool,
    pub leader: Option<String>,
    pub campaigning: bool,
    pub peers: BTreeMap<String, PeerView>,
    pub acks: HashMap<String, Ack>,
    /// When each key's current value reached this node (for `POST /kv/lag`).
    pub first_seen: HashMap<String, (u64, Instant)>,
    /// How late writes show in reads here; `None`: never.
    pub lag: Option<Duration>,
    pub faults: FaultSet,
    pub counters: Counters,
}

pub struct Node {
    pub s: Settings,
    started: Instant,
    client: Option<peer::Client>,
    inner: Mutex<Inner>,
    /// Bumped on every change of the state or of the leadership: wakes held heartbeats.
    changed: watch::Sender<u64>,
    /// Bumped when a peer reports its version, or the leadership changes: wakes commit waits.
    acked: watch::Sender<u64>,
}

impl Node {
    pub fn new(mut s: Settings, client: Option<peer::Client>) -> Node {
        let mut faults = FaultSet::default();
        faults.extend(std::mem::take(&mut s.faults));
        let peers = s
            .peers
            .iter()
            .map(|(id, url)| {
                (
                    id.clone(),
                    PeerView {
                        url: url.clone(),
                        answered: None,
                        leading: false,
                        believes: None,
                        replica: None,
                        error: None,
                    },
                )
            })
            .collect();
        Node {
            inner: Mutex::new(Inner {
                replica: Replica::new(&s.initial),
                lead: false,
                leader: None,
                campaigning: false,
                peers,
                acks: HashMap::new(),
                first_seen: HashMap::new(),
                lag: Some(Duration::ZERO),
                faults,
                counters: Counters::default(),
            }),
            s,
            started: Instant::now(),
            client,
            changed: watch::Sender::new(0),
            acked: watch::Sender::new(0),
        }
    }

    pub fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `https://host:port` of this node or a peer.
    pub fn url_of(&self, id: &str) -> Option<String> {
        if id == self.s.id {
            return Some(format!("https://{}", self.s.listen));
        }
        self.s
            .peers
            .iter()
            .find(|(p, _)| p == id)
            .map(|(_, url)| url.clone())
    }

    fn notify_changed(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Takes `replica` as this node's copy, noting when each new value arrived.
    fn set_replica(&self, inner: &mut Inner, replica: Replica, now: Instant) {
        let was_member = inner.replica.is_member(&self.s.id);
        for (key, entry) in replica.entries() {
            match inner.first_seen.get(key) {
                Some((rev, _)) if *rev == entry.rev => {}
                _ => {
                    inner.first_seen.insert(key.to_owned(), (entry.rev, now));
                }
            }
        }
        inner.first_seen.retain(|key, _| replica.get(key).is_some());
        inner.replica = replica;
        if !was_member && inner.replica.is_member(&self.s.id) {
            eprintln!(
                "{}: the member list now lists this node (version {}): it is a member",
                self.s.id, inner.replica.version
            );
        }
    }

    /// Applies the leadership rule to what this node knows now, and acts on the outcome: a node
    /// that starts leading takes the most recent state among itself and the voters it reaches
    /// (Raft elects only an up-to-date candidate) and starts a new term; a follower takes its
    /// leader's state whenever it differs from its own.
    pub fn recompute(&self, inner: &mut Inner, now: Instant) {
        let timeout = self.s.leader_timeout;
        let alive = |p: &PeerView| {
            p.answered
                .is_some_and(|t| now.saturating_duration_since(t) <= timeout)
        };
        let seen: BTreeMap<String, Seen> = inner
            .peers
            .iter()
            .map(|(id, p)| {
                (
                    id.clone(),
                    Seen {
                        answered: p.answered,
                        leading: p.leading,
                    },
                )
            })
            .collect();
        let voters = inner.replica.voters(now);
        let d: Decision = replica::decide(&self.s.id, &voters, &seen, self.started, timeout, now);
        let mut changed = false;
        if d.lead && !inner.lead {
            let mut best = inner.replica.clone();
            let mut from = self.s.id.clone();
            let mut top_term = best.term;
            for (id, p) in &inner.peers {
                let Some(r) = &p.replica else { continue };
                top_term = top_term.max(r.term);
                if voters.contains(id) && alive(p) && r.recency() > best.recency() {
                    best = r.clone();
                    from = id.clone();
                }
            }
            best.begin_term(top_term + 1);
            let reached = 1 + voters
                .iter()
                .filter(|v| inner.peers.get(*v).is_some_and(alive))
                .count();
            eprintln!(
                "{}: leads (term {}, version {}, state from {from}; {reached} of {} voters reached)",
                self.s.id,
                best.term,
                best.version,
                voters.len()
            );
            self.set_replica(inner, best, now);
            changed = true;
        } else if !d.lead
            && let Some(leader) = &d.leader
            && let Some(r) = inner.peers.get(leader).and_then(|p| p.replica.as_ref())
            && r.recency() != inner.replica.recency()
        {
            let r = r.clone();
            self.set_replica(inner, r, now);
            changed = true;
        }
        if d.lead != inner.lead {
            if !d.lead {
                eprintln!("{}: stops leading", self.s.id);
            }
            self.acked.send_modify(|n| *n = n.wrapping_add(1));
            changed = true;
        }
        if d.leader != inner.leader {
            if !d.lead {
                match &d.leader {
                    Some(l) => eprintln!("{}: follows {l}", self.s.id),
                    None => {
                        let reached = voters
                            .iter()
                            .filter(|v| **v == self.s.id || inner.peers.get(*v).is_some_and(alive))
                            .count();
                        eprintln!(
                            "{}: no leader ({reached} of {} voters reachable from here)",
                            self.s.id,
                            voters.len()
                        );
                    }
                }
            }
            changed = true;
        }
        inner.lead = d.lead;
        inner.leader = d.leader;
        inner.campaigning = d.campaigning;
        if changed {
            self.notify_changed();
        }
    }

    fn on_answer(&self, peer: &str, status: Status) {
        let now = Instant::now();
        let replica = match Replica::from_wire(status.state, now) {
            Ok(r) => r,
            Err(e) => return self.on_failure(peer, format!("its state is not usable: {e}")),
        };
        let mut inner = self.inner();
        let Some(p) = inner.peers.get_mut(peer) else {
            return;
        };
        if p.error.take().is_some() {
            eprintln!("{}: peer {peer} answers", self.s.id);
        }
        p.answered = Some(now);
        p.leading = status.leading;
        p.believes = status.leader;
        p.replica = Some(replica);
        self.recompute(&mut inner, now);
    }

    fn on_failure(&self, peer: &str, error: String) {
        let mut inner = self.inner();
        let Some(p) = inner.peers.get_mut(peer) else {
            return;
        };
        if p.error.is_none() {
            // Once per outage: a dead peer is retried every heartbeat.
            eprintln!("{}: peer {peer} does not answer: {error}", self.s.id);
        }
        p.error = Some(error);
        self.recompute(&mut inner, Instant::now());
    }

    /// Heartbeats one peer until the process ends: a long poll that the peer answers at once
    /// when it leads and this node's copy differs from its own, else after `--heartbeat-ms` or
    /// at its next change.
    async fn heartbeat(self: Arc<Self>, peer: String, url: String) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let beat = self.s.heartbeat;
        let total = beat + self.s.leader_timeout;
        loop {
            let (term, have) = self.inner().replica.recency();
            let target = format!(
                "{url}/internal/state?from={}&term={term}&have={have}&wait_ms={}",
                self.s.id,
                beat.as_millis()
            );
            let started = Instant::now();
            let answer = client
                .send(
                    Method::GET,
                    &target,
                    Vec::new(),
                    Bytes::new(),
                    total,
                    MAX_STATE,
                )
                .await
                .and_then(|a| parse_status(&peer, &url, a));
            match answer {
                Ok(status) => self.on_answer(&peer, status),
                Err(e) => {
                    self.on_failure(&peer, e);
                    tokio::time::sleep(beat).await;
                }
            }
            let gap = MIN_GAP.saturating_sub(started.elapsed());
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
        }
    }

    /// Time alone changes the leadership (a peer's silence): the rule is applied four times per
    /// heartbeat as well as on every answer. No more often: on an emulated machine every wakeup
    /// of three members' timers costs CPU that the machine's etcd needs.
    async fn tick(self: Arc<Self>) {
        let every = (self.s.heartbeat / 4).max(Duration::from_millis(10));
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let mut inner = self.inner();
            self.recompute(&mut inner, Instant::now());
        }
    }

    /// A peer's heartbeat said which state it holds (a name that is not a peer is ignored).
    pub fn ack(&self, from: &str, term: u64, version: u64) {
        {
            let mut inner = self.inner();
            if !inner.peers.contains_key(from) {
                return;
            }
            inner.acks.insert(from.to_owned(), Ack { term, version });
        }
        self.acked.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until a majority of the voters (this node included) hold `version` of `term`, for
    /// at most `--leader-timeout-ms`. An error says why the change is not confirmed (it stays
    /// in this node's state, as an uncommitted Raft entry may still commit).
    pub async fn commit(&self, term: u64, version: u64) -> Result<(), String> {
        self.notify_changed();
        let deadline = tokio::time::Instant::now() + self.s.leader_timeout;
        let mut rx = self.acked.subscribe();
        loop {
            {
                let inner = self.inner();
                if !inner.lead || inner.replica.term != term {
                    return Err(
                        "this node stopped leading before a majority of the voters held the \
                         change"
                            .into(),
                    );
                }
                let voters = inner.replica.voters(Instant::now());
                let holding = voters
                    .iter()
                    .filter(|v| {
                        **v == self.s.id
                            || inner
                                .acks
                                .get(*v)
                                .is_some_and(|a| a.term == term && a.version >= version)
                    })
                    .count();
                if holding > voters.len() / 2 {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(format!(
                    "a majority of the voters did not confirm the change within {} ms",
                    self.s.leader_timeout.as_millis()
                ));
            }
        }
    }

    /// `key` as this node shows it: the leader its latest value; a follower a value once its
    /// lag has passed since the value reached it, never with `"ms": null`.
    pub fn read(&self, inner: &Inner, key: &str, now: Instant) -> Option<Bytes> {
        let entry = inner.replica.get(key)?;
        if inner.lead {
            return Some(entry.value.clone());
        }
        let lag = inner.lag?;
        let shown = match inner.first_seen.get(key) {
            Some((rev, first)) if *rev == entry.rev => now >= *first + lag,
            // Written here while this node led.
            _ => true,
        };
        shown.then(|| entry.value.clone())
    }

    pub fn status(&self, inner: &Inner, now: Instant) -> Status {
        Status {
            id: self.s.id.clone(),
            raft_addr: self.s.raft_addr.clone(),
            leading: inner.lead,
            leader: inner.leader.clone(),
            state: inner.replica.to_wire(now),
        }
    }
}

fn parse_status(peer: &str, url: &str, answer: peer::Answer) -> Result<Status, String> {
    if !answer.status.is_success() {
        let text: String = String::from_utf8_lossy(&answer.body)
            .chars()
            .take(200)
            .collect();
        return Err(format!("{url} answered {}: {text}", answer.status.as_u16()));
    }
    let status: Status = serde_json::from_slice(&answer.body)
        .map_err(|e| format!("{url} answered something that is not a node's state: {e}"))?;
    if status.id != peer {
        return Err(format!(
            "{url} answers as {:?}, not {peer:?}: check --peer",
            status.id
        ));
    }
    Ok(status)
}

/// Binds everything, writes the ready file, and serves until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    crate::block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let server_tls =
        tls::server_config(&settings.cert, &settings.key, settings.client_ca.as_deref())?;
    let client = match (&settings.peer_ca, settings.peers.is_empty()) {
        (_, true) => None,
        (None, false) => anyhow::bail!("peers but no CA to verify them with"),
        (Some(ca), false) => {
            let identity = settings
                .client_identity
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            let config = tls::client_config(ca, identity)?;
            Some(peer::Client::new(
                config,
                CONNECT_TIMEOUT.min(settings.leader_timeout),
            ))
        }
    };
    let tcp = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} ({})", settings.listen, settings.id))?;
    let control_tcp = match settings.control {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (control API)"))?,
        ),
    };

    let node = Arc::new(Node::new(settings, client));
    let s = &node.s;
    {
        let node = node.clone();
        let conn = Conn {
            listener: s.id.clone(),
            local: s.listen,
        };
        tokio::spawn(http::serve(
            tcp,
            Some(TlsAcceptor::from(server_tls)),
            conn,
            move |req, conn, cut| api::handle(node.clone(), req, conn, cut),
        ));
    }
    if let (Some(tcp), Some(addr)) = (control_tcp, s.control) {
        let node = node.clone();
        let conn = Conn {
            listener: "control".into(),
            local: addr,
        };
        tokio::spawn(http::serve(tcp, None, conn, move |req, conn, cut| {
            api::control(node.clone(), req, conn, cut)
        }));
    }
    for (id, url) in &s.peers {
        tokio::spawn(node.clone().heartbeat(id.clone(), url.clone()));
    }
    tokio::spawn(node.clone().tick());

    let kind = if s.cluster { "cluster" } else { "iam" };
    let initial: Vec<String> = s
        .initial
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect();
    let peers: Vec<String> = s
        .peers
        .iter()
        .map(|(id, url)| format!("{id}={url}"))
        .collect();
    eprintln!(
        "flint-testserver member {} ({kind}): https on {}, raft_addr {}; initial members {}; \
         peers {}; control {}; mTLS {}; bearer token {}; heartbeat {} ms, leader timeout {} ms",
        s.id,
        s.listen,
        s.raft_addr,
        initial.join(" "),
        if peers.is_empty() {
            "none".to_string()
        } else {
            peers.join(" ")
        },
        s.control
            .map_or_else(|| "off".to_string(), |a| format!("http://{a}")),
        if s.client_ca.is_some() {
            "required"
        } else {
            "off"
        },
        if s.token.is_some() { "required" } else { "off" },
        s.heartbeat.as_millis(),
        s.leader_timeout.as_millis(),
    );
    if let Some(path) = &s.ready_file {
        let ready = json!({
            "pid": std::process::id(),
            "mode": "member",
            "kind": kind,
            "id": s.id,
            "control": s.control.map(|a| a.to_string()),
            "listeners": [{"name": s.id, "addr": s.listen.to_string()}],
        });
        crate::write_atomically(path, ready.to_string().as_bytes())
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
    }

    crate::wait_for_signal().await?;
    eprintln!("flint-testserver: stopping");
    Ok(())
}
