//! A node's `cluster-config.json`, written from the inventory's cluster: every service in a
//! section of its own with every URL spelled out, the files it names relative to the folder
//! (docs/configuration.md), so the folder works wherever it is copied.

use flint_ipxe::{Cluster, ClusterNode, ClusterService, Node};
use std::collections::BTreeMap;

use serde::Serialize;

/// The names of the files in a node's folder, as its config and the NixOS module name them.
pub const CONFIG: &str = "cluster-config.json";
pub const CA: &str = "ca.pem";
pub const NODE_CERT: &str = "node.pem";
pub const NODE_KEY: &str = "node-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";
pub const ETCD_PEER_CERT: &str = "etcd-peer.pem";
pub const ETCD_PEER_KEY: &str = "etcd-peer-key.pem";
pub const JOIN_TOKEN: &str = "join-token";
pub const IAM_TOKEN: &str = "iam-bootstrap-token";
pub const IAM_ADMIN_PUB: &str = "iam-admin.pub";

/// A node and its part in the cluster (validation gave every node of a cluster one).
pub struct Member<'a> {
    pub node: &'a Node,
    pub part: &'a ClusterNode,
}

/// Where `service` listens on `part`'s host, and its Raft (peer) address there.
fn ports(cluster: &Cluster, part: &ClusterNode, service: ClusterService) -> (u16, Option<u16>) {
    let p = &cluster.ports;
    match service {
        ClusterService::Etcd => (p.etcd, Some(p.etcd_peer)),
        ClusterService::Chainfire => (p.chainfire, Some(part.raft_port)),
        ClusterService::Flaredb => (p.flaredb, Some(p.flaredb_raft)),
        ClusterService::Iam => (p.iam, None),
    }
}

fn url(part: &ClusterNode, port: u16) -> String {
    format!("https://{}", part.addr(port))
}

/// The file, in the order docs/configuration.md lists its fields.
#[derive(Serialize)]
pub struct NodeConfig<'a> {
    node_id: &'a str,
    bootstrap: bool,
    raft_addr: String,
    tls: Tls,
    #[serde(skip_serializing_if = "Option::is_none")]
    join_token_file: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_members: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    report_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd: Option<Section>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chainfire: Option<Section>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flaredb: Option<Section>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iam: Option<Iam<'a>>,
}

#[derive(Serialize)]
struct Tls {
    ca: &'static str,
    cert: &'static str,
    key: &'static str,
}

/// An etcd, chainfire or flaredb section.
#[derive(Serialize)]
struct Section {
    leader_url: String,
    peers: Vec<String>,
    raft_addr: String,
    local_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    initial_cluster: Option<BTreeMap<String, String>>,
}

#[derive(Serialize)]
struct Iam<'a> {
    url: String,
    org: &'a str,
    admin: IamAdmin<'a>,
    bootstrap_token_file: &'static str,
}

#[derive(Serialize)]
struct IamAdmin<'a> {
    name: &'a str,
    public_key_file: &'static str,
}

/// The config of `me`, one of `members` (the inventory's cluster nodes, in its order).
pub fn render<'a>(cluster: &'a Cluster, members: &[Member<'a>], me: &Member<'a>) -> NodeConfig<'a> {
    let part = me.part;
    let section = |service: ClusterService| -> Option<Section> {
        if !part.runs(service) {
            return None;
        }
        let (api, raft) = ports(cluster, part, service);
        // The initial members that run the service, in the inventory's order: the first is
        // asked first, the others after it. Only initial members, so a node added later
        // changes no other node's config.
        let initial: Vec<&Member<'_>> = members
            .iter()
            .filter(|m| m.part.initial && m.part.runs(service))
            .collect();
        let (leader, others) = initial
            .split_first()
            .expect("validation requires an initial member for every service");
        let api_url = |m: &Member<'_>| url(m.part, ports(cluster, m.part, service).0);
        let initial_cluster = (service == ClusterService::Etcd && part.initial).then(|| {
            initial
                .iter()
                .map(|m| {
                    let peer = ports(cluster, m.part, service).1.expect("etcd's peer port");
                    (m.node.name.clone(), url(m.part, peer))
                })
                .collect()
        });
        Some(Section {
            leader_url: api_url(leader),
            peers: others.iter().map(|m| api_url(m)).collect(),
            raft_addr: part.addr(raft.expect("every member service has a Raft port")),
            local_url: url(part, api),
            initial_cluster,
        })
    };
    let iam = part.runs(ClusterService::Iam).then(|| {
        let identity = cluster
            .iam
            .as_ref()
            .expect("validation requires cluster.iam when a node runs iam");
        Iam {
            url: url(part, cluster.ports.iam),
            org: &identity.org,
            admin: IamAdmin {
                name: &identity.admin,
                public_key_file: IAM_ADMIN_PUB,
            },
            bootstrap_token_file: IAM_TOKEN,
        }
    });
    let joins_admin = part.runs(ClusterService::Chainfire) || part.runs(ClusterService::Flaredb);
    NodeConfig {
        node_id: &me.node.name,
        bootstrap: part.initial,
        raft_addr: part.raft_addr(),
        tls: Tls {
            ca: CA,
            cert: NODE_CERT,
            key: NODE_KEY,
        },
        join_token_file: joins_admin.then_some(JOIN_TOKEN),
        expected_members: cluster.expected_members,
        report_url: cluster.report_url.as_ref().map(|url| url.as_str()),
        etcd: section(ClusterService::Etcd),
        chainfire: section(ClusterService::Chainfire),
        flaredb: section(ClusterService::Flaredb),
        iam,
    }
}
