//! The file's shape, as serde reads it: every field optional where the file may leave it out,
//! every unknown field an error.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) node_id: String,
    #[serde(default)]
    pub(super) bootstrap: bool,
    pub(super) leader_url: Option<String>,
    pub(super) raft_addr: Option<String>,
    #[serde(default)]
    pub(super) peers: Vec<String>,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) allow_plaintext: bool,
    pub(super) join_token_file: Option<PathBuf>,
    pub(super) expected_members: Option<u64>,
    pub(super) timeouts: Option<RawTimeouts>,
    pub(super) etcd: Option<RawEtcd>,
    pub(super) chainfire: Option<RawAdmin>,
    pub(super) flaredb: Option<RawAdmin>,
    pub(super) iam: Option<RawIam>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca: PathBuf,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) total: Option<String>,
    pub(super) request: Option<String>,
    pub(super) connect: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    pub(super) leader_url: Option<String>,
    pub(super) peers: Option<Vec<String>>,
    pub(super) raft_addr: Option<String>,
    pub(super) peer_url: Option<String>,
    pub(super) local_url: Option<String>,
    pub(super) health_url: Option<String>,
    /// A bootstrap node's initial members, by name: their peer URLs.
    #[serde(default, deserialize_with = "flint_json::unique_keys")]
    pub(super) initial_cluster: Option<std::collections::BTreeMap<String, String>>,
}

/// A chainfire or flaredb section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) leader_url: Option<String>,
    pub(super) peers: Option<Vec<String>>,
    pub(super) raft_addr: Option<String>,
    pub(super) local_url: Option<String>,
    pub(super) health_url: Option<String>,
    pub(super) paths: Option<RawAdminPaths>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdminPaths {
    pub(super) health: Option<String>,
    pub(super) member_list: Option<String>,
    pub(super) member_add: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIam {
    pub(super) url: Option<String>,
    pub(super) health_url: Option<String>,
    pub(super) bootstrap_path: Option<String>,
    pub(super) org: Option<String>,
    pub(super) admin: Option<RawIamAdmin>,
    pub(super) bootstrap_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIamAdmin {
    pub(super) name: String,
    pub(super) public_key_file: PathBuf,
}
