//! Command line: what a test passes, checked into [`Settings`] before anything is bound.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cluster::RoleCase;
use crate::faults::{self, Fault, Scope};
use crate::state::Listener;

/// A stand-in for the chainfire/flaredb admin API or the IAM service, over real HTTPS, that
/// misbehaves on demand. One process is one cluster, or one IAM service.
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
    pub fn into_settings(self) -> Result<Settings, Error> {
        let (common, mode, token_file) = match self.command {
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
