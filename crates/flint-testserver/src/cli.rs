//! Command line: what a test passes, checked into [`Settings`] before anything is bound.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cluster::{self, RoleCase};
use crate::faults::{self, Fault, Scope};
use crate::member;
use crate::state::Listener;

/// A stand-in for the chainfire/flaredb admin API or the IAM service, over real HTTPS, that
/// misbehaves on demand. One process is one cluster, or one IAM service; or (`member`) one node
/// of a cluster whose nodes are separate processes, on separate machines.
#[derive(Debug, Parser)]
#[command(name = "flint-testserver", version, help_expected = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// A Raft cluster's admin API: /health, /admin/member/list, /admin/member/add.
    Cluster(ClusterArgs),
    /// IAM: /health and /admin/bootstrap.
    Iam(IamArgs),
    /// One node's local service (cluster or IAM); the member processes of several machines
    /// heartbeat each other over HTTPS and behave as one Raft cluster.
    Member(Box<MemberArgs>),
}

/// What a member-mode node serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MemberKind {
    /// chainfire/flaredb: /health, /admin/member/list, /admin/member/add, /v1/kv/{key}.
    Cluster,
    /// IAM: /health and /admin/bootstrap.
    Iam,
}

#[derive(Debug, Args)]
pub struct MemberArgs {
    /// What this node serves.
    #[arg(long, value_enum)]
    pub kind: MemberKind,
    /// This node's member name (node02).
    #[arg(long, value_name = "NODE_ID")]
    pub id: String,
    /// The one HTTPS listener. Any address: this mode runs inside a VM or a network namespace.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// This node's Raft address, as member lists show it [default: the listen IP, port + 1].
    #[arg(long, value_name = "HOST:PORT")]
    pub raft_addr: Option<String>,
    /// Another node this one may talk to: its member name and API base URL
    /// (node01=https://10.99.0.11:2379); repeat it. List every node that is or may become a
    /// member.
    #[arg(long = "peer", value_name = "ID=URL")]
    pub peers: Vec<String>,
    /// The initial members (voters), comma-separated, the same on every node. A member whose
    /// Raft address is not its URL's host at port + 1 is written ID=HOST:PORT.
    #[arg(
        long,
        value_name = "ID[=RAFT_ADDR],...",
        value_delimiter = ',',
        required = true
    )]
    pub initial: Vec<String>,
    /// The server certificate chain (PEM).
    #[arg(long, value_name = "PEM")]
    pub cert: PathBuf,
    /// The server's private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mTLS), on every route.
    #[arg(long, value_name = "PEM")]
    pub client_ca: Option<PathBuf>,
    /// Verify peers' server certificates against this CA [default: --client-ca].
    #[arg(long, value_name = "PEM")]
    pub peer_ca: Option<PathBuf>,
    /// The client certificate this node presents to its peers (PEM).
    #[arg(long, value_name = "PEM", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The key of --client-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// The bearer token /admin/* requires (IAM: the bootstrap token, required).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Faults armed at start, as JSON: one fault or a list (same as POST /faults).
    #[arg(long, value_name = "JSON")]
    pub faults: Option<PathBuf>,
    /// Where the plain-HTTP control API listens (any address; no authentication).
    #[arg(long, value_name = "IP:PORT")]
    pub control: Option<SocketAddr>,
    /// Written (atomically) once the listeners are bound.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// How often a node heartbeats each peer (a held poll: the longest a peer keeps it).
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub heartbeat_ms: u64,
    /// A peer silent this long is dead; also the longest a write waits for a majority.
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    pub leader_timeout_ms: u64,
    /// Added members are learners (no vote) for this long before they become followers.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub learner_ms: u64,
    /// How roles are spelled in answers: `lower` (`leader`) or `title` (`Leader`).
    #[arg(long, value_name = "CASE", value_enum, default_value_t = RoleCase::Lower)]
    pub role_case: RoleCase,
}

/// What the command line asks for: the one-process server, or one member-mode node.
#[derive(Debug)]
pub enum Plan {
    Server(Box<Settings>),
    Member(Box<member::Settings>),
}

#[derive(Debug, Args)]
pub struct Common {
    /// An address to serve HTTPS on (127.0.0.0/8 only); repeat it. The k-th is node0k.
    #[arg(long = "listen", value_name = "IP:PORT", required = true)]
    pub listen: Vec<SocketAddr>,
    /// The server certificate chain (PEM): once for every listener, or once per `--listen`, in
    /// the same order (each node with its own certificate, as `flint-boot prepare` makes them).
    #[arg(long, value_name = "PEM", required = true)]
    pub cert: Vec<PathBuf>,
    /// The server's private key (PEM), as many times as `--cert`.
    #[arg(long, value_name = "PEM", required = true)]
    pub key: Vec<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    #[arg(long, value_name = "PEM")]
    pub client_ca: Option<PathBuf>,
    /// Faults armed at start, as JSON: one fault or a list (same as POST /faults).
    #[arg(long, value_name = "JSON")]
    pub faults: Option<PathBuf>,
    /// Where the plain-HTTP control API listens (127.0.0.0/8 only).
    #[arg(long, value_name = "IP:PORT")]
    pub control: SocketAddr,
    /// Written (atomically) once every listener is bound.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub common: Common,
    /// How many of the first listeners are members from the start; the others are nodes that
    /// have not joined yet.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub initial_members: usize,
    /// The initial leader.
    #[arg(long, value_name = "NODE_ID", default_value = "node01")]
    pub leader: String,
    /// Require `Authorization: Bearer <token>` on /admin/*; the file holds the token.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Added members are learners for this long before they become followers.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub learner_ms: u64,
    /// How roles are spelled in answers: `lower` (`leader`) or `title` (`Leader`, as openraft's
    /// `ServerState` serializes).
    #[arg(long, value_name = "CASE", value_enum, default_value_t = RoleCase::Lower)]
    pub role_case: RoleCase,
}

#[derive(Debug, Args)]
pub struct IamArgs {
    #[command(flatten)]
    pub common: Common,
    /// The bootstrap bearer token, in a file.
    #[arg(long, value_name = "PATH")]
    pub token_file: PathBuf,
}

/// What runs, all checked.
#[derive(Debug)]
pub struct Settings {
    pub mode: Mode,
    pub listeners: Vec<Listener>,
    /// Each listener's certificate chain and key, in the listeners' order.
    pub identities: Vec<(PathBuf, PathBuf)>,
    pub client_ca: Option<PathBuf>,
    pub token: Option<String>,
    pub faults: Vec<Fault>,
    pub control: SocketAddr,
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug)]
pub enum Mode {
    Cluster {
        /// `(id, raft_addr)` of the initial members.
        members: Vec<(String, String)>,
        leader: String,
        learner_for: Duration,
        role_case: RoleCase,
    },
    Iam,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {addr} is not in 127.0.0.0/8: this server only listens on loopback")]
    NotLoopback {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("{0} is given twice")]
    Duplicate(SocketAddr),
    #[error("--initial-members {given} must be between 1 and the {listeners} listeners")]
    Members { given: usize, listeners: usize },
    #[error("--leader {leader} is not one of the initial members ({members})")]
    Leader { leader: String, members: String },
    #[error(
        "{certs} --cert and {keys} --key for {listeners} --listen: give one pair for every \
         listener, or one pair per listener"
    )]
    Identities {
        certs: usize,
        keys: usize,
        listeners: usize,
    },
    #[error("listener {0} has port 65535, so its raft port (port + 1) does not exist")]
    RaftPort(SocketAddr),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {} is empty", .0.display())]
    EmptyToken(PathBuf),
    #[error("faults in {}: {source}", path.display())]
    Faults {
        path: PathBuf,
        source: faults::Error,
    },
    /// A member-mode command line that cannot work, and why.
    #[error("{0}")]
    Member(String),
}

fn loopback(what: &'static str, addr: SocketAddr) -> Result<SocketAddr, Error> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => Ok(addr),
        _ => Err(Error::NotLoopback { what, addr }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_token(path: &Path) -> Result<String, Error> {
    let text = String::from_utf8_lossy(&read(path)?).trim().to_string();
    if text.is_empty() {
        return Err(Error::EmptyToken(path.to_path_buf()));
    }
    Ok(text)
}

/// `node01` for the first listener.
pub fn node_name(index: usize) -> String {
    format!("node{:02}", index + 1)
}

impl Cli {
    pub fn into_plan(self) -> Result<Plan, Error> {
        match self.command {
            Command::Member(a) => Ok(Plan::Member(Box::new(member_settings(*a)?))),
            command => Cli { command }
                .into_settings()
                .map(|s| Plan::Server(Box::new(s))),
        }
    }

    /// The settings of the one-process server (`cluster`, `iam`).
    pub fn into_settings(self) -> Result<Settings, Error> {
        let (common, mode, token_file) = match self.command {
            Command::Member(_) => {
                return Err(Error::Member(
                    "member mode has its own settings (Cli::into_plan)".into(),
                ));
            }
            Command::Cluster(a) => {
                let n = a.common.listen.len();
                if !(1..=n).contains(&a.initial_members) {
                    return Err(Error::Members {
                        given: a.initial_members,
                        listeners: n,
                    });
                }
                let members = a.common.listen[..a.initial_members]
                    .iter()
                    .enumerate()
                    .map(|(i, addr)| {
                        let port = addr.port().checked_add(1).ok_or(Error::RaftPort(*addr))?;
                        Ok((node_name(i), SocketAddr::new(addr.ip(), port).to_string()))
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                if !members.iter().any(|(id, _)| *id == a.leader) {
                    let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
                    return Err(Error::Leader {
                        leader: a.leader,
                        members: ids.join(", "),
                    });
                }
                let mode = Mode::Cluster {
                    members,
                    leader: a.leader,
                    learner_for: Duration::from_millis(a.learner_ms),
                    role_case: a.role_case,
                };
                (a.common, mode, a.token_file)
            }
            Command::Iam(a) => (a.common, Mode::Iam, Some(a.token_file)),
        };

        let mut seen = HashSet::new();
        let mut listeners = Vec::new();
        for (i, addr) in common.listen.iter().enumerate() {
            let addr = loopback("--listen", *addr)?;
            if !seen.insert(addr) {
                return Err(Error::Duplicate(addr));
            }
            listeners.push(Listener {
                name: node_name(i),
                addr,
            });
        }
        let identities = match (common.cert.len(), common.key.len()) {
            (1, 1) => vec![(common.cert[0].clone(), common.key[0].clone()); listeners.len()],
            (c, k) if c == k && c == listeners.len() => {
                common.cert.into_iter().zip(common.key).collect()
            }
            (certs, keys) => {
                return Err(Error::Identities {
                    certs,
                    keys,
                    listeners: listeners.len(),
                });
            }
        };
        let control = loopback("--control", common.control)?;
        if !seen.insert(control) {
            return Err(Error::Duplicate(control));
        }
        let token = token_file.as_deref().map(read_token).transpose()?;

        let faults = match &common.faults {
            None => Vec::new(),
            Some(path) => {
                let names: Vec<(String, String)> = listeners
                    .iter()
                    .map(|l| (l.name.clone(), l.addr.to_string()))
                    .collect();
                let scope = Scope {
                    cluster: matches!(mode, Mode::Cluster { .. }),
                    listeners: &names,
                };
                faults::parse(&read(path)?, &scope).map_err(|source| Error::Faults {
                    path: path.clone(),
                    source,
                })?
            }
        };

        Ok(Settings {
            mode,
            listeners,
            identities,
            client_ca: common.client_ca,
            token,
            faults,
            control,
            ready_file: common.ready_file,
        })
    }
}

/// `https://HOST:PORT`, a trailing slash allowed, nothing else.
fn peer_url(id: &str, url: &str) -> Result<String, Error> {
    let bad = || {
        Error::Member(format!(
            "--peer {id}={url}: the URL must be https://HOST:PORT (the API's base URL, no path)"
        ))
    };
    let base = url.trim_end_matches('/');
    let authority = base.strip_prefix("https://").ok_or_else(bad)?;
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    if host.is_empty()
        || !port_ok
        || authority.contains(|c: char| "/?#@ ".contains(c) || c.is_control())
    {
        return Err(bad());
    }
    Ok(base.to_owned())
}

/// `host:port + 1` of `host:port`, as the cluster mode derives Raft addresses.
fn next_port(authority: &str) -> Option<String> {
    let (host, port) = authority.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?.checked_add(1)?;
    Some(format!("{host}:{port}"))
}

fn member_settings(a: MemberArgs) -> Result<member::Settings, Error> {
    let err = |m: String| Err(Error::Member(m));
    if !cluster::valid_id(&a.id) {
        return err(format!(
            "--id {:?} is not 1 to 63 characters of A-Z, a-z, 0-9, '.', '_', '-'",
            a.id
        ));
    }
    let raft_addr = match a.raft_addr {
        Some(addr) if cluster::valid_raft_addr(&addr) => addr,
        Some(addr) => return err(format!("--raft-addr {addr:?} is not HOST:PORT")),
        None => next_port(&a.listen.to_string()).ok_or(Error::RaftPort(a.listen))?,
    };
    let mut peers: Vec<(String, String)> = Vec::new();
    for p in &a.peers {
        let Some((id, url)) = p.split_once('=') else {
            return err(format!("--peer {p:?} is not ID=URL"));
        };
        if !cluster::valid_id(id) {
            return err(format!("--peer {p:?}: {id:?} is not a member name"));
        }
        if id == a.id {
            return err(format!("--peer {p:?} is this node (--id {})", a.id));
        }
        if peers.iter().any(|(other, _)| other == id) {
            return err(format!("--peer {id} is given twice"));
        }
        peers.push((id.to_owned(), peer_url(id, url)?));
    }
    let mut initial: Vec<(String, String)> = Vec::new();
    for entry in a.initial.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let (id, given) = match entry.split_once('=') {
            Some((id, addr)) => (id, Some(addr)),
            None => (entry, None),
        };
        if initial.iter().any(|(other, _)| other == id) {
            return err(format!("--initial names {id} twice"));
        }
        if let Some(addr) = given
            && !cluster::valid_raft_addr(addr)
        {
            return err(format!("--initial {entry}: {addr:?} is not HOST:PORT"));
        }
        let addr = if id == a.id {
            match given {
                Some(addr) if addr != raft_addr => {
                    return err(format!(
                        "--initial gives this node the Raft address {addr}, --raft-addr {raft_addr}"
                    ));
                }
                _ => raft_addr.clone(),
            }
        } else {
            let Some((_, url)) = peers.iter().find(|(p, _)| p == id) else {
                return err(format!(
                    "initial member {id} has no --peer: this node could never reach it"
                ));
            };
            match given {
                Some(addr) => addr.to_owned(),
                None => next_port(member::authority(url)).ok_or_else(|| {
                    Error::Member(format!("--peer {id}: its port + 1 does not exist"))
                })?,
            }
        };
        initial.push((id.to_owned(), addr));
    }
    if initial.is_empty() {
        return err("--initial names no member".into());
    }
    let cluster = a.kind == MemberKind::Cluster;
    let token = match (&a.token_file, cluster) {
        (Some(path), _) => Some(read_token(path)?),
        (None, true) => None,
        (None, false) => {
            return err("--kind iam needs --token-file (the bootstrap token)".into());
        }
    };
    let peer_ca = a.peer_ca.or_else(|| a.client_ca.clone());
    if peer_ca.is_none() && !peers.is_empty() {
        return err(
            "peers are verified against --peer-ca, or --client-ca when it is not given: give one"
                .into(),
        );
    }
    if a.heartbeat_ms < 10 {
        return err(format!("--heartbeat-ms {} is below 10 ms", a.heartbeat_ms));
    }
    if a.leader_timeout_ms < 2 * a.heartbeat_ms {
        return err(format!(
            "--leader-timeout-ms {} must be at least twice --heartbeat-ms {}: a live peer answers \
             a heartbeat every --heartbeat-ms",
            a.leader_timeout_ms, a.heartbeat_ms
        ));
    }
    if a.control == Some(a.listen) {
        return Err(Error::Duplicate(a.listen));
    }
    let mut settings = member::Settings {
        cluster,
        id: a.id,
        listen: a.listen,
        raft_addr,
        peers,
        initial,
        cert: a.cert,
        key: a.key,
        client_ca: a.client_ca,
        peer_ca,
        client_identity: a.client_cert.zip(a.client_key),
        token,
        faults: Vec::new(),
        control: a.control,
        ready_file: a.ready_file,
        heartbeat: Duration::from_millis(a.heartbeat_ms),
        leader_timeout: Duration::from_millis(a.leader_timeout_ms),
        learner_for: Duration::from_millis(a.learner_ms),
        role_case: a.role_case,
    };
    if let Some(path) = &a.faults {
        let names = settings.fault_listeners();
        let scope = Scope {
            cluster,
            listeners: &names,
        };
        let parsed = faults::parse(&read(path)?, &scope).map_err(|source| Error::Faults {
            path: path.clone(),
            source,
        })?;
        member::check_faults(&parsed, &settings.id)
            .map_err(|e| Error::Member(format!("faults in {}: {e}", path.display())))?;
        settings.faults = parsed;
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn settings(args: &[&str]) -> Result<Settings, Error> {
        let mut argv = vec!["flint-testserver"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().into_settings()
    }

    const TLS: [&str; 6] = [
        "--cert",
        "c.pem",
        "--key",
        "k.pem",
        "--control",
        "127.0.0.1:9000",
    ];

    fn member(args: &[&str]) -> Result<member::Settings, Error> {
        let mut argv = vec![
            "flint-testserver",
            "member",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
        ];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().into_plan()? {
            Plan::Member(s) => Ok(*s),
            Plan::Server(_) => panic!("not member mode"),
        }
    }

    const NODE02: [&str; 6] = [
        "--kind",
        "cluster",
        "--id",
        "node02",
        "--listen",
        "10.99.0.12:2379",
    ];

    #[test]
    fn member_settings_derive_raft_addrs_from_the_peers() {
        let mut args = NODE02.to_vec();
        args.extend([
            "--initial",
            "node01,node02,node03=10.99.0.13:2390",
            "--peer",
            "node01=https://10.99.0.11:2379/",
            "--peer",
            "node03=https://10.99.0.13:2379",
            "--peer",
            "node04=https://10.99.0.14:2379",
            "--client-ca",
            "ca.pem",
        ]);
        let s = member(&args).unwrap();
        assert_eq!(s.raft_addr, "10.99.0.12:2380");
        let initial: Vec<(&str, &str)> = s
            .initial
            .iter()
            .map(|(id, addr)| (id.as_str(), addr.as_str()))
            .collect();
        assert_eq!(
            initial,
            [
                ("node01", "10.99.0.11:2380"),
                ("node02", "10.99.0.12:2380"),
                ("node03", "10.99.0.13:2390")
            ]
        );
        assert_eq!(
            s.peers[0],
            ("node01".into(), "https://10.99.0.11:2379".into())
        );
        assert_eq!(s.peer_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(s.heartbeat, Duration::from_millis(200));
        assert_eq!(s.leader_timeout, Duration::from_millis(1500));
        assert!(s.cluster && s.token.is_none() && s.control.is_none());
    }

    #[test]
    fn member_refuses_what_cannot_work() {
        let err = |extra: &[&'static str]| {
            let mut args = NODE02.to_vec();
            args.extend_from_slice(extra);
            args.extend(["--client-ca", "ca.pem"]);
            member(&args).unwrap_err().to_string()
        };
        let p1 = "node01=https://10.99.0.11:2379";
        assert!(err(&["--initial", "node01,node02"]).contains("node01 has no --peer"));
        assert!(
            err(&["--initial", "node02", "--peer", "node02=https://h:1"]).contains("this node")
        );
        assert!(err(&["--initial", "node02", "--peer", p1, "--peer", p1]).contains("twice"));
        assert!(err(&["--initial", "node02,node02"]).contains("twice"));
        assert!(
            err(&[
                "--initial",
                "node02=10.99.0.12:9999",
                "--raft-addr",
                "10.99.0.12:2380"
            ])
            .contains("--raft-addr 10.99.0.12:2380")
        );
        for url in [
            "http://h:1",
            "https://h",
            "https://h:1/api",
            "https://u@h:1",
        ] {
            let peer = format!("node01={url}");
            let peer: &'static str = Box::leak(peer.into_boxed_str());
            assert!(
                err(&["--initial", "node02", "--peer", peer]).contains("https://HOST:PORT"),
                "{url}"
            );
        }
        let bad_id = ["--kind", "cluster", "--id", "a b", "--listen", "10.0.0.1:1"];
        let mut bad_id = bad_id.to_vec();
        bad_id.extend(["--initial", "a b"]);
        assert!(member(&bad_id).unwrap_err().to_string().contains("--id"));
        assert!(
            err(&["--initial", "node02", "--leader-timeout-ms", "300"]).contains("at least twice")
        );
        let mut iam = vec!["--kind", "iam", "--id", "n", "--listen", "10.0.0.1:8080"];
        iam.extend(["--initial", "n"]);
        assert!(
            member(&iam)
                .unwrap_err()
                .to_string()
                .contains("--token-file")
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cluster_members_and_raft_addrs() {
        let mut args = vec![
            "cluster",
            "--listen",
            "127.1.2.11:2379",
            "--listen",
            "127.1.2.12:2379",
            "--listen",
            "127.1.2.14:2379",
            "--initial-members",
            "2",
            "--leader",
            "node02",
        ];
        args.extend(TLS);
        let s = settings(&args).unwrap();
        let Mode::Cluster {
            members, leader, ..
        } = s.mode
        else {
            panic!("not a cluster");
        };
        assert_eq!(
            members,
            vec![
                ("node01".to_string(), "127.1.2.11:2380".to_string()),
                ("node02".to_string(), "127.1.2.12:2380".to_string())
            ]
        );
        assert_eq!(leader, "node02");
        assert_eq!(s.listeners[2].name, "node03");
        assert!(s.token.is_none());
    }

    #[test]
    fn refuses_what_cannot_work() {
        let base = |extra: &[&'static str]| {
            let mut a = vec!["cluster", "--listen", "127.1.2.11:2379"];
            a.extend_from_slice(extra);
            a.extend(TLS);
            settings(&a).unwrap_err().to_string()
        };
        assert!(
            base(&["--initial-members", "1", "--listen", "10.0.0.1:2379"]).contains("loopback")
        );
        assert!(base(&["--initial-members", "2"]).contains("between 1 and the 1"));
        assert!(base(&["--initial-members", "1", "--leader", "node02"]).contains("not one of"));
        assert!(
            base(&["--initial-members", "1", "--listen", "127.1.2.11:2379"])
                .contains("given twice")
        );
        assert!(
            base(&["--initial-members", "1", "--token-file", "/nonexistent/t"])
                .contains("/nonexistent/t")
        );
    }

    #[test]
    fn one_certificate_for_all_listeners_or_one_each() {
        let listen = [
            "iam",
            "--token-file",
            "/dev/null",
            "--listen",
            "127.1.2.11:8080",
            "--listen",
            "127.1.2.12:8080",
            "--control",
            "127.0.0.1:9000",
        ];
        let with = |pairs: &[&'static str]| {
            let mut a = listen.to_vec();
            a.extend_from_slice(pairs);
            let mut argv = vec!["flint-testserver"];
            argv.extend_from_slice(&a);
            Cli::try_parse_from(argv).unwrap().into_settings()
        };
        let err = with(&["--cert", "a.pem", "--key", "a-key.pem", "--cert", "b.pem"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 --cert and 1 --key for 2 --listen"), "{err}");
        let err = with(&[
            "--cert",
            "a.pem",
            "--key",
            "a-key.pem",
            "--cert",
            "b.pem",
            "--key",
            "b-key.pem",
            "--cert",
            "c.pem",
            "--key",
            "c-key.pem",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("3 --cert and 3 --key for 2 --listen"), "{err}");
    }

    #[test]
    fn each_listener_gets_its_own_identity() {
        let mut args = vec![
            "cluster",
            "--listen",
            "127.1.2.11:2379",
            "--listen",
            "127.1.2.12:2379",
            "--initial-members",
            "2",
            "--cert",
            "a.pem",
            "--key",
            "a-key.pem",
            "--cert",
            "b.pem",
            "--key",
            "b-key.pem",
        ];
        args.extend(["--control", "127.0.0.1:9000"]);
        let s = settings(&args).unwrap();
        assert_eq!(
            s.identities,
            vec![
                (PathBuf::from("a.pem"), PathBuf::from("a-key.pem")),
                (PathBuf::from("b.pem"), PathBuf::from("b-key.pem"))
            ]
        );
        let mut shared = vec!["cluster", "--listen", "127.1.2.11:2379"];
        shared.extend(["--listen", "127.1.2.12:2379", "--initial-members", "2"]);
        shared.extend(TLS);
        let s = settings(&shared).unwrap();
        assert_eq!(s.identities.len(), 2);
        assert_eq!(s.identities[0], s.identities[1]);
    }
}
