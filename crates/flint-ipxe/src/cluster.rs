//! The inventory's cluster: which nodes form it, at which address, running which services, and
//! the ports every node uses. `flint-boot prepare` writes each node's `cluster-config.json` and
//! certificates from it; the boot server only validates it, so one file describes both.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use serde::Deserialize;

use crate::inventory::{Validator, shown};

/// A service of a node that flint joins or sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterService {
    Etcd,
    Chainfire,
    Flaredb,
    Iam,
}

impl ClusterService {
    pub const ALL: [ClusterService; 4] = [
        ClusterService::Etcd,
        ClusterService::Chainfire,
        ClusterService::Flaredb,
        ClusterService::Iam,
    ];

    /// The name in the inventory and the section's name in `cluster-config.json`.
    pub fn name(self) -> &'static str {
        match self {
            ClusterService::Etcd => "etcd",
            ClusterService::Chainfire => "chainfire",
            ClusterService::Flaredb => "flaredb",
            ClusterService::Iam => "iam",
        }
    }

    fn from_name(name: &str) -> Option<ClusterService> {
        ClusterService::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the service is a Raft cluster with members (IAM is set up, not joined).
    pub fn has_members(self) -> bool {
        self != ClusterService::Iam
    }
}

impl fmt::Display for ClusterService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The services a node runs when its entry names none: the default three, chainfire, flaredb, IAM.
pub const DEFAULT_SERVICES: [ClusterService; 3] = [
    ClusterService::Chainfire,
    ClusterService::Flaredb,
    ClusterService::Iam,
];

/// The ports every node of the cluster uses. chainfire's Raft port is each node's own, the port
/// of its `raft_addr`, as in the node's `cluster-config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub etcd: u16,
    pub etcd_peer: u16,
    pub chainfire: u16,
    pub flaredb: u16,
    pub flaredb_raft: u16,
    pub iam: u16,
}

impl Default for Ports {
    /// chainfire at its conventional 2379, flaredb and IAM where flint's config puts them by
    /// default, and etcd beside them at 2579/2580, so the four fit on one host.
    fn default() -> Ports {
        Ports {
            etcd: 2579,
            etcd_peer: 2580,
            chainfire: 2379,
            flaredb: 2479,
            flaredb_raft: 2480,
            iam: 8080,
        }
    }
}

impl Ports {
    fn named(&self) -> [(&'static str, u16); 6] {
        [
            ("etcd", self.etcd),
            ("etcd_peer", self.etcd_peer),
            ("chainfire", self.chainfire),
            ("flaredb", self.flaredb),
            ("flaredb_raft", self.flaredb_raft),
            ("iam", self.iam),
        ]
    }

    /// The ports `service` takes on a node, by the field that sets each.
    fn of(&self, service: ClusterService) -> Vec<(&'static str, u16)> {
        match service {
            ClusterService::Etcd => vec![("etcd", self.etcd), ("etcd_peer", self.etcd_peer)],
            ClusterService::Chainfire => vec![("chainfire", self.chainfire)],
            ClusterService::Flaredb => vec![
                ("flaredb", self.flaredb),
                ("flaredb_raft", self.flaredb_raft),
            ],
            ClusterService::Iam => vec![("iam", self.iam)],
        }
    }
}

/// The organization and first admin IAM's setup creates, the same on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamIdentity {
    pub org: String,
    pub admin: String,
}

/// The inventory's `cluster` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Each node is also `{name}.{domain}` in its certificates.
    pub domain: Option<String>,
    /// How many members each cluster service should have, for `flint health`.
    pub expected_members: Option<usize>,
    pub ports: Ports,
    pub iam: Option<IamIdentity>,
    /// Where each node's flint reports its first-boot steps: a boot server's `/api/reports`.
    pub report_url: Option<url::Url>,
}

/// A node's part in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The host of `raft_addr` as written: an IPv4 address, an IPv6 address in brackets, or a
    /// DNS name (lowercase). Every service of the node is reached there.
    pub host: String,
    /// chainfire's Raft port on this node.
    pub raft_port: u16,
    /// One of the members the cluster starts with (`bootstrap` in its config).
    pub initial: bool,
    pub services: Vec<ClusterService>,
}

impl ClusterNode {
    pub fn runs(&self, service: ClusterService) -> bool {
        self.services.contains(&service)
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        let bare = self
            .host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host);
        bare.parse().ok()
    }

    pub fn raft_addr(&self) -> String {
        format!("{}:{}", self.host, self.raft_port)
    }

    /// `host:port` on this node.
    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.host)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    services: Option<Vec<String>>,
    domain: Option<String>,
    expected_members: Option<u64>,
    #[serde(default)]
    ports: RawPorts,
    iam: Option<RawClusterIam>,
    report_url: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPorts {
    etcd: Option<u16>,
    etcd_peer: Option<u16>,
    chainfire: Option<u16>,
    flaredb: Option<u16>,
    flaredb_raft: Option<u16>,
    iam: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterIam {
    org: String,
    admin: String,
}

/// A node entry's cluster fields, as read.
#[derive(Default)]
pub(crate) struct RawNodeCluster {
    pub(crate) raft_addr: Option<String>,
    pub(crate) initial: bool,
    pub(crate) services: Option<Vec<String>>,
}

impl RawNodeCluster {
    fn is_empty(&self) -> bool {
        self.raft_addr.is_none() && !self.initial && self.services.is_none()
    }
}

/// The most members `expected_members` may name (flint's own bound).
const MAX_MEMBERS: u64 = 1000;

/// The boot server's report endpoint: https only, since the boot server knows a node by the
/// client certificate it presents; no credentials, query or fragment, which flint would send as
/// they are.
fn report_url(text: &str) -> Result<url::Url, String> {
    let expected = "an https URL of a boot server's report endpoint, such as \
                    \"https://10.0.200.2:8443/api/reports\"";
    // The URL parser drops tabs and line breaks without a word: what was written is not what
    // would be used.
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{expected}, found {} (control characters)",
            shown(text)
        ));
    }
    let url =
        url::Url::parse(text).map_err(|e| format!("{expected}, found {} ({e})", shown(text)))?;
    let problem = if url.scheme() != "https" {
        Some("not https: a node proves who it is with its client certificate")
    } else if url.host_str().is_none_or(str::is_empty) {
        Some("no host")
    } else if !url.username().is_empty() || url.password().is_some() {
        Some("credentials in the URL")
    } else if url.query().is_some() || url.fragment().is_some() {
        Some("a query or fragment")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(format!("{expected}, found {} ({problem})", shown(text))),
        None => Ok(url),
    }
}

/// A DNS name: labels of 1 to 63 letters, digits and '-', not starting or ending with '-'.
fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A name IAM keeps: printable, not blank, at most 253 characters (flint's config rule).
fn label(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= 253 && !s.chars().any(char::is_control)
}

/// The host of a `host:port`, in the form kept: IPv4, `[IPv6]`, or a lowercase DNS name; and a
/// key two spellings of one address share.
fn host_and_key(host: &str) -> Option<(String, String)> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: Ipv6Addr = inner.parse().ok()?;
        return Some((format!("[{ip}]"), ip.to_string()));
    }
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        return Some((ip.to_string(), ip.to_string()));
    }
    // A name of digits and dots only would be taken for a (bad) IPv4 address by a resolver.
    let numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    (dns_name(host) && !numeric).then(|| (host.to_ascii_lowercase(), host.to_ascii_lowercase()))
}

impl Validator<'_> {
    fn services(&mut self, path: &str, names: &[String]) -> Vec<ClusterService> {
        if names.is_empty() {
            self.err(
                path.into(),
                "at least one of \"etcd\", \"chainfire\", \"flaredb\", \"iam\"",
            );
        }
        let mut services = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match ClusterService::from_name(name) {
                None => self.err(
                    format!("{path}[{i}]"),
                    format!(
                        "one of \"etcd\", \"chainfire\", \"flaredb\", \"iam\", found {}",
                        shown(name)
                    ),
                ),
                Some(s) if services.contains(&s) => self.err(
                    format!("{path}[{i}]"),
                    format!("a service not already listed, found {}", shown(name)),
                ),
                Some(s) => services.push(s),
            }
        }
        services
    }

    /// The `cluster` section and every node's cluster fields, in the nodes' order. With no
    /// section, a node may not have cluster fields: they would be ignored.
    pub(crate) fn cluster(
        &mut self,
        raw: Option<RawCluster>,
        nodes: Vec<RawNodeCluster>,
    ) -> (Option<Cluster>, Vec<Option<ClusterNode>>) {
        let Some(raw) = raw else {
            for (i, node) in nodes.iter().enumerate() {
                if !node.is_empty() {
                    self.err(
                        format!("nodes[{i}]"),
                        "no \"raft_addr\", \"initial\" or \"services\" without a \"cluster\" \
                         section (they would be ignored)",
                    );
                }
            }
            return (None, nodes.iter().map(|_| None).collect());
        };

        let default_services = match &raw.services {
            Some(names) => self.services("cluster.services", names),
            None => DEFAULT_SERVICES.to_vec(),
        };
        let ports = self.ports(&raw.ports);
        let domain = raw.domain.filter(|d| {
            let ok = dns_name(d);
            if !ok {
                self.err(
                    "cluster.domain".into(),
                    format!(
                        "a DNS domain such as \"example.com\" (labels of letters, digits and \
                         '-'), found {}",
                        shown(d)
                    ),
                );
            }
            ok
        });
        let expected_members = raw.expected_members.and_then(|n| {
            if (1..=MAX_MEMBERS).contains(&n) {
                Some(n as usize)
            } else {
                self.err(
                    "cluster.expected_members".into(),
                    format!("a member count from 1 to {MAX_MEMBERS}, found {n}"),
                );
                None
            }
        });
        let report_url = raw
            .report_url
            .as_deref()
            .and_then(|text| match report_url(text) {
                Ok(url) => Some(url),
                Err(problem) => {
                    self.err("cluster.report_url".into(), problem);
                    None
                }
            });
        let iam = raw.iam.map(|iam| {
            for (field, value) in [("org", &iam.org), ("admin", &iam.admin)] {
                if !label(value) {
                    self.err(
                        format!("cluster.iam.{field}"),
                        format!(
                            "a non-empty name of at most 253 printable characters, found {}",
                            shown(value)
                        ),
                    );
                }
            }
            IamIdentity {
                org: iam.org,
                admin: iam.admin,
            }
        });

        let mut hosts: HashMap<String, usize> = HashMap::new();
        let mut clashes = BTreeSet::new();
        let mut members = Vec::new();
        for (i, node) in nodes.into_iter().enumerate() {
            let path = format!("nodes[{i}]");
            let services = match &node.services {
                Some(names) => self.services(&format!("{path}.services"), names),
                None => default_services.clone(),
            };
            let Some(raft_addr) = node.raft_addr else {
                self.err(
                    format!("{path}.raft_addr"),
                    "this node's cluster address, host:port such as \"10.0.200.13:2380\" \
                     (every node of a cluster has one)",
                );
                members.push(None);
                continue;
            };
            let expected = || {
                format!(
                    "host:port such as \"10.0.200.13:2380\" or \"[fd00::13]:2380\" (an IP address \
                     or a DNS name, a port from 1 to 65535), found {}",
                    shown(&raft_addr)
                )
            };
            let parsed = raft_addr.rsplit_once(':').and_then(|(host, port)| {
                let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
                Some((host_and_key(host)?, port))
            });
            let Some(((host, key), raft_port)) = parsed else {
                self.err(format!("{path}.raft_addr"), expected());
                members.push(None);
                continue;
            };
            if let Some(first) = hosts.insert(key, i) {
                self.err(
                    format!("{path}.raft_addr"),
                    format!(
                        "an address not already used by nodes[{first}] (the cluster's ports are \
                         the same on every node), found {}",
                        shown(&raft_addr)
                    ),
                );
            }
            self.node_ports(
                &path,
                &ports,
                &services,
                raft_port,
                &raft_addr,
                &mut clashes,
            );
            members.push(Some(ClusterNode {
                host,
                raft_port,
                initial: node.initial,
                services,
            }));
        }

        for service in ClusterService::ALL.into_iter().filter(|s| s.has_members()) {
            let runs = |initial_only: bool| {
                members
                    .iter()
                    .flatten()
                    .any(|m| m.runs(service) && (m.initial || !initial_only))
            };
            if runs(false) && !runs(true) {
                self.err(
                    "nodes".into(),
                    format!(
                        "at least one node with \"initial\": true that runs {service} (a cluster \
                         starts from its initial members)"
                    ),
                );
            }
        }
        let runs_iam = members
            .iter()
            .flatten()
            .any(|m| m.runs(ClusterService::Iam));
        if runs_iam && iam.is_none() {
            self.err(
                "cluster.iam".into(),
                "the organization and first admin IAM's setup creates, such as {\"org\": \
                 \"acme\", \"admin\": \"admin\"} (a node runs iam)",
            );
        }

        let cluster = Cluster {
            domain,
            expected_members,
            ports,
            iam,
            report_url,
        };
        (Some(cluster), members)
    }

    fn ports(&mut self, raw: &RawPorts) -> Ports {
        let d = Ports::default();
        let ports = Ports {
            etcd: raw.etcd.unwrap_or(d.etcd),
            etcd_peer: raw.etcd_peer.unwrap_or(d.etcd_peer),
            chainfire: raw.chainfire.unwrap_or(d.chainfire),
            flaredb: raw.flaredb.unwrap_or(d.flaredb),
            flaredb_raft: raw.flaredb_raft.unwrap_or(d.flaredb_raft),
            iam: raw.iam.unwrap_or(d.iam),
        };
        for (name, port) in ports.named() {
            if port == 0 {
                self.err(
                    format!("cluster.ports.{name}"),
                    "a port from 1 to 65535, found 0",
                );
            }
        }
        ports
    }

    /// The ports of the services one node runs must differ: chainfire's Raft port (the node's
    /// own) from every other, and the cluster's from each other where one node runs both. A
    /// clash between two of the cluster's ports is named once, however many nodes it hits.
    fn node_ports(
        &mut self,
        path: &str,
        ports: &Ports,
        services: &[ClusterService],
        raft_port: u16,
        raft_addr: &str,
        clashes: &mut BTreeSet<(&'static str, &'static str)>,
    ) {
        let mut taken: Vec<(&'static str, u16)> = Vec::new();
        for service in services {
            for (name, port) in ports.of(*service) {
                if let Some((first, _)) = taken.iter().find(|(_, p)| *p == port && port != 0) {
                    if clashes.insert((first, name)) {
                        self.err(
                            format!("cluster.ports.{name}"),
                            format!(
                                "a port not already used by cluster.ports.{first} (nodes run \
                                 both), found {port}"
                            ),
                        );
                    }
                } else {
                    taken.push((name, port));
                }
            }
        }
        if services.contains(&ClusterService::Chainfire)
            && let Some((name, _)) = taken.iter().find(|(_, p)| *p == raft_port)
        {
            self.err(
                format!("{path}.raft_addr"),
                format!(
                    "a port not already used by cluster.ports.{name} (it is chainfire's Raft \
                     port on this node), found {}",
                    shown(raft_addr)
                ),
            );
        }
    }
}
