//! Each service's settings: its own section, falling back to the top-level fields and to the
//! service's default ports (chainfire 2379/2380, flaredb 2479/2480, IAM 8080, etcd 2379/2380).

use std::fmt;
use std::path::PathBuf;

use url::Url;

use crate::Endpoints;

/// The services flint knows, in first-boot start-up order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Service {
    /// chainfire, through its admin API.
    Chainfire,
    /// flaredb, through its admin API.
    Flaredb,
    /// etcd, through its v3 JSON gateway.
    Etcd,
    /// IAM's initial setup.
    Iam,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Chainfire => "chainfire",
            Service::Flaredb => "flaredb",
            Service::Etcd => "etcd",
            Service::Iam => "iam",
        }
    }

    /// The port of the service's API, used when the file gives no URL of its own.
    pub(crate) fn api_port(self) -> u16 {
        match self {
            Service::Chainfire | Service::Etcd => 2379,
            Service::Flaredb => 2479,
            Service::Iam => 8080,
        }
    }

    pub(crate) fn raft_port(self) -> u16 {
        self.api_port() + 1
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Endpoints,
    /// This node's peer URL, as it is added to the cluster. `None` when the file names no
    /// `raft_addr`: enough for `flint health`, not for a join.
    pub peer_url: Option<Url>,
    /// The local member's client URL, where flint sees it start and catch up.
    pub local_url: Url,
    pub health_url: Url,
    /// A bootstrap node's initial members, `(name, bare peer URL)`, sorted by name: what etcd
    /// needs before it starts. `None` when the node's own etcd settings hold them.
    pub initial_cluster: Option<Vec<(String, String)>>,
}

/// A chainfire-style admin API (chainfire, flaredb).
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub service: Service,
    pub endpoints: Endpoints,
    /// This node's Raft address; `None` when the file names none (enough for health).
    pub raft_addr: Option<String>,
    /// The local service's health endpoint, waited for before a join.
    pub health_url: Url,
    pub paths: AdminPaths,
    /// Scheme and port of every member's API: members are listed by Raft address only, so
    /// their API is found on the same host at this port.
    pub member_scheme: String,
    pub member_port: u16,
}

#[derive(Debug, Clone)]
pub struct AdminPaths {
    pub health: String,
    pub member_list: String,
    pub member_add: String,
}

impl AdminSettings {
    /// The API base URL of the member at `raft_addr`.
    pub fn member_url(&self, raft_addr: &str) -> Option<Url> {
        let host = raft_addr.rsplit_once(':')?.0;
        Url::parse(&format!(
            "{}://{host}:{}",
            self.member_scheme, self.member_port
        ))
        .ok()
    }
}

#[derive(Debug, Clone)]
pub struct IamSettings {
    pub url: Url,
    pub health_url: Url,
    pub bootstrap_url: Url,
    pub org: Option<String>,
    pub admin: Option<IamAdmin>,
    pub bootstrap_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct IamAdmin {
    pub name: String,
    /// PEM public key of the first admin; only the public half ever leaves the node.
    pub public_key_file: PathBuf,
}
