//! flint's node runtime: joins this machine to its clusters at first boot and checks their
//! health. `main.rs` only parses arguments and maps errors to exit statuses.

pub mod cli;
pub mod commands;
pub mod engines;
pub mod error;
pub mod exit;
pub mod http;
pub mod logging;
pub mod privileges;
pub mod report;
pub mod retry;
pub mod secrets;
pub mod state;
pub mod systemd;
pub mod tls;

pub use error::{Error, Result};
pub use flint_config as config;
pub use flint_config::files;
