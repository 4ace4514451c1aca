//! The file's shape, as serde reads it: every field optional where the file may leave it out,
//! every unknown field an error.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) node_id: String,
    #[serde(default)]
    pub(crate) bootstrap: bool,
    pub(crate) leader_url: Option<String>,
    pub(crate) raft_addr: Option<String>,
    #[serde(default)]
    pub(crate) peers: Vec<String>,
    pub(crate) tls: Option<RawTls>,
    #[serde(default)]
    pub(crate) allow_plaintext: bool,
    pub(crate) join_token_file: Option<PathBuf>,
    pub(crate) expected_members: Option<u64>,
    pub(crate) timeouts: Option<RawTimeouts>,
    pub(crate) etcd: Option<RawEtcd>,
    pub(crate) chainfire: Option<RawAdmin>,
    pub(crate) flaredb: Option<RawAdmin>,
    pub(crate) iam: Option<RawIam>,
    pub(crate) report_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) ca: PathBuf,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub(crate) total: Option<String>,
    pub(crate) request: Option<String>,
    pub(crate) connect: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEtcd {
    pub(crate) leader_url: Option<String>,
    pub(crate) peers: Option<Vec<String>>,
    pub(crate) raft_addr: Option<String>,
    pub(crate) peer_url: Option<String>,
    pub(crate) local_url: Option<String>,
    pub(crate) health_url: Option<String>,
    /// A bootstrap node's initial members, by name: their peer URLs.
    #[serde(default, deserialize_with = "flint_json::unique_keys")]
    pub(crate) initial_cluster: Option<std::collections::BTreeMap<String, String>>,
}

/// A chainfire or flaredb section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) leader_url: Option<String>,
    pub(crate) peers: Option<Vec<String>>,
    pub(crate) raft_addr: Option<String>,
    pub(crate) local_url: Option<String>,
    pub(crate) health_url: Option<String>,
    pub(crate) paths: Option<RawAdminPaths>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdminPaths {
    pub(crate) health: Option<String>,
    pub(crate) member_list: Option<String>,
    pub(crate) member_add: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIam {
    pub(crate) url: Option<String>,
    pub(crate) health_url: Option<String>,
    pub(crate) bootstrap_path: Option<String>,
    pub(crate) org: Option<String>,
    pub(crate) admin: Option<RawIamAdmin>,
    pub(crate) bootstrap_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIamAdmin {
    pub(crate) name: String,
    pub(crate) public_key_file: PathBuf,
}
