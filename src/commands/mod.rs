//! One module per subcommand, and what they share: the loaded configuration, the state
//! directory, the HTTP client and the deadline.

pub mod config_check;
pub mod health;
pub mod iam_setup;
pub mod join_admin;
pub mod join_etcd;
pub mod node_join;

use std::path::PathBuf;

use crate::config::{AdminSettings, Config};
use crate::engines::admin::Admin;
use crate::engines::etcd::Etcd;
use crate::engines::iam::Iam;
use crate::exit::{ExitStatus, HasExitStatus};
use crate::http;
use crate::retry::Deadline;
use crate::secrets::{self, Secret};
use crate::state::StateDir;
use crate::tls;

#[derive(Clone)]
pub struct Context {
    pub config: Config,
    pub state: StateDir,
    pub http: http::Client,
    /// The TLS client configuration `http` was built with: the report to the boot server
    /// (crate::report) uses it too, with its own short timeouts.
    pub tls: rustls::ClientConfig,
    /// The bearer token for the admin APIs, when the file names one.
    pub join_token: Option<Secret>,
    pub deadline: Deadline,
}

/// Every engine is built from the context, one way: with the node's HTTP client (its CA, client
/// certificate and timeouts) and, for the admin APIs, its token and URL policy.
impl Context {
    /// A client of etcd's gateway.
    pub fn etcd(&self) -> Etcd {
        Etcd::new(self.http.clone())
    }

    /// A client of IAM.
    pub fn iam(&self) -> Iam {
        Iam::new(self.http.clone())
    }

    /// A client of chainfire's or flaredb's admin API, with this node's token and URL policy.
    pub fn admin(&self, settings: &AdminSettings) -> Admin {
        Admin::new(
            self.http.clone(),
            self.join_token.clone(),
            settings,
            self.config.allow_plaintext,
        )
    }

    /// Reads the configuration and the secrets it names, and builds the client; the deadline
    /// starts now.
    pub fn new(config_path: PathBuf, state: StateDir) -> crate::Result<Self> {
        let config = Config::load(&config_path)?;
        let join_token = config
            .join_token_file
            .as_deref()
            .map(secrets::read_token)
            .transpose()?;
        let tls = tls::client_config(config.tls.as_ref())?;
        let http = http::Client::new(tls.clone(), &config.timeouts);
        let deadline = Deadline::after(config.timeouts.total);
        Ok(Context {
            config,
            state,
            http,
            tls,
            join_token,
            deadline,
        })
    }
}

/// A member ID or leader name from a server, fit for a marker (which `node-join` prints and an
/// operator's scripts read): the characters of a host name, or 65.
pub fn marker_name(what: &str, name: &str) -> Result<String, crate::engines::Error> {
    if crate::config::env_member_name(name) {
        Ok(name.to_owned())
    } else {
        Err(crate::engines::Error::Unsafe(format!(
            "the cluster names the {what} {name:?}, which flint will not record in a marker: \
             expected 1 to 253 characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// A command line clap accepts but flint does not: a command refuses it before doing anything.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl HasExitStatus for UsageError {
    fn exit_status(&self) -> ExitStatus {
        ExitStatus::Usage
    }
}
