//! What every simulated machine shares: the command line, the one DHCP socket on port 68 and the
//! machines waiting for an answer on it, the binaries their transfers are compared with, the
//! counters of the report; `setup` checks the command line and opens all of it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use dhcproto::v4::Message;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::args::Args;
use crate::dhcp::dhcp_socket;
use crate::machine::{BIOS_BINARY, EFI_BINARY};

#[derive(Default)]
pub struct Counters {
    pub dhcp_retx: AtomicU64,
    pub ipxe_dhcp_retx: AtomicU64,
    pub stray_offers: AtomicU64,
    pub rrq_retx: AtomicU64,
    pub ack_retx: AtomicU64,
    pub tftp_errors: AtomicU64,
    pub tftp_timeouts: AtomicU64,
    pub tftp_foreign: AtomicU64,
    pub tsize_probes: AtomicU64,
    pub http_reconnects: AtomicU64,
    pub http_requests: AtomicU64,
    pub boot_server_requests: AtomicU64,
    /// Payload bytes the machines received: TFTP data, HTTP bodies.
    pub tftp_bytes: AtomicU64,
    pub http_bytes: AtomicU64,
    pub done: AtomicUsize,
}

pub type Waiters = Mutex<HashMap<u32, ([u8; 6], oneshot::Sender<Message>)>>;

pub struct Shared {
    pub args: Args,
    pub prefix: [u8; 3],
    pub dhcp: UdpSocket,
    pub waiters: Waiters,
    pub binaries: HashMap<&'static str, Vec<u8>>,
    pub counters: Counters,
    /// The machines' address, as a boot server discovery REQUEST carries it (ciaddr).
    pub client_ip: Ipv4Addr,
}

pub fn setup(args: Args) -> Result<Shared, String> {
    let prefix: Vec<u8> = args
        .mac_prefix
        .split([':', '-'])
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("--mac-prefix {}: expected three hex pairs", args.mac_prefix))?;
    let prefix: [u8; 3] = prefix
        .try_into()
        .map_err(|_| format!("--mac-prefix {}: expected three hex pairs", args.mac_prefix))?;
    if args.machines == 0 || args.machines > 1 << 24 {
        return Err("--machines: 1 to 16777216".into());
    }
    if args.efi_percent > 100 {
        return Err("--efi-percent: 0 to 100".into());
    }
    let mut binaries = HashMap::new();
    for (name, needed) in [
        (BIOS_BINARY, args.efi_percent < 100),
        (EFI_BINARY, args.efi_percent > 0),
    ] {
        if needed {
            let path = args.tftp_root.join(name);
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            binaries.insert(name, bytes);
        }
    }
    let dhcp = dhcp_socket(&args.iface)
        .map_err(|e| format!("DHCP socket on {} port 68: {e}", args.iface))?;
    // The address the kernel picks to reach the server: the one this interface has.
    let route = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((args.server, 4011)).and(s.local_addr()))
        .map_err(|e| format!("no route to {}: {e}", args.server))?;
    let std::net::IpAddr::V4(client_ip) = route.ip() else {
        return Err(format!("no IPv4 address toward {}", args.server));
    };
    Ok(Shared {
        args,
        prefix,
        dhcp,
        waiters: Mutex::new(HashMap::new()),
        binaries,
        counters: Counters::default(),
        client_ip,
    })
}
