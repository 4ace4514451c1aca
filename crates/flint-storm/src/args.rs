//! The command line: the storm's size and pace, and where flint-boot and the files it serves are.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "N simulated machines PXE-booting at once from one flint-boot")]
pub struct Args {
    /// How many machines.
    #[arg(long, default_value_t = 1000)]
    pub machines: usize,
    /// The interface the machines sit on (broadcasts leave and arrive there).
    #[arg(long)]
    pub iface: String,
    /// flint-boot's address: DHCP offers must name it (siaddr).
    #[arg(long)]
    pub server: Ipv4Addr,
    /// flint-boot's TFTP port.
    #[arg(long, default_value_t = 69)]
    pub tftp_port: u16,
    /// The TFTP root flint-boot serves: the binaries are compared with the files there.
    #[arg(long)]
    pub tftp_root: PathBuf,
    /// The images folder flint-boot serves at /images/: sizes are compared with the files.
    #[arg(long)]
    pub images: PathBuf,
    /// Percentage of machines that are EFI x64 (arch 7, `ipxe.efi`); the rest are BIOS (arch 0).
    #[arg(long, default_value_t = 0)]
    pub efi_percent: u32,
    /// Start the machines evenly over this many milliseconds (0: all at once).
    #[arg(long, default_value_t = 0)]
    pub ramp_ms: u64,
    /// TFTP blksize the machines ask for (BIOS ROMs ask 1432 or 1456; 1468 is one Ethernet frame).
    #[arg(long, default_value_t = 1468)]
    pub blksize: u16,
    /// A machine not booted after this many seconds has failed.
    #[arg(long, default_value_t = 300)]
    pub deadline: u64,
    /// Machine i has MAC <prefix>:ii:ii:ii (i in hex, 24 bits) and node name m<i, 5 digits>.
    #[arg(long, default_value = "52:54:01")]
    pub mac_prefix: String,
}
