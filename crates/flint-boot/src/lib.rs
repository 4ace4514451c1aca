//! flint-boot's services as a library: the `flint-boot` binary wires them together; the fuzz
//! targets and the scale driver call the packet handling directly.

pub mod dhcp;
mod exit;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod render;
pub mod tftp;

pub use exit::ExitError;
