//! flint-boot's services as a library: the `flint-boot` binary wires them together; the fuzz
//! targets and the scale driver call the packet handling directly.

pub mod cli;
pub mod dhcp;
pub mod etcd;
pub mod exit;
pub mod http;
pub mod identity;
pub mod inventory;
pub mod inventory_command;
pub mod journey;
pub mod metrics;
pub mod prepare;
pub mod render;
pub mod reports;
pub mod served;
pub mod shared;
pub mod status;
pub mod tftp;

pub use exit::ExitError;

/// Receive buffer asked for the DHCP and TFTP listening sockets. A thousand machines powered on
/// together send their DISCOVERs within milliseconds; the default buffer (208 KiB) dropped
/// hundreds of them in bench/storm, 4 MiB none. The kernel caps it at `net.core.rmem_max`.
pub const BURST_BUFFER: usize = 4 * 1024 * 1024;
