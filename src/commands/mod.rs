//! One module per subcommand, and what they share: the loaded configuration, the state
//! directory, the HTTP client and the deadline.

pub mod health;
pub mod join_etcd;

use std::path::PathBuf;

use crate::config::Config;
use crate::http;
use crate::retry::Deadline;
use crate::state::StateDir;
use crate::tls;

pub struct Context {
    pub config: Config,
    pub state: StateDir,
    pub http: http::Client,
    pub deadline: Deadline,
}

impl Context {
    /// Reads the configuration and the secrets it names, and builds the client; the deadline
    /// starts now.
    pub fn new(config_path: PathBuf, state: StateDir) -> anyhow::Result<Self> {
        let config = Config::load(&config_path)?;
        if let Some(token) = &config.join_token_file {
            crate::secrets::ensure_private(token)?;
        }
        let tls = tls::client_config(config.tls.as_ref())?;
        let http = http::Client::new(tls, &config.timeouts);
        let deadline = Deadline::after(config.timeouts.total);
        Ok(Context {
            config,
            state,
            http,
            deadline,
        })
    }
}
