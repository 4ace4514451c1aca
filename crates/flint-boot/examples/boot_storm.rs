//! boot_storm: N simulated machines PXE-booting at once from one flint-boot, from one process.
//!
//! Each machine has its own MAC and SMBIOS UUID and goes through the steps a NIC ROM and then
//! iPXE go through (`docs/pxe-firmware.md`):
//!
//! Every machine behaves as its firmware does, with the firmware's own retransmission schedule,
//! and fails where the firmware gives up; nothing is tried again that the firmware would not try
//! again (the sources are cited where each schedule is defined below):
//!
//! 1. **offer**: the ROM broadcasts a DHCPDISCOVER (options 53, 57, 55, 97, 94, 93, 60 as PXE
//!    ROMs send them) and waits for flint-boot's ProxyDHCP offer, 4, 8, 16 and 32 s (the PXE
//!    2.1 specification, and EDK2), then fails;
//! 2. **binary**: the ROM fetches the iPXE binary named in the offer over TFTP from its own
//!    ephemeral port, lockstep ACKs, blksize 1468; EFI machines first send EDK2's tsize probe
//!    and abort it with ERROR 8, then ask again with windowsize 4 (what OVMF 2022.11 does). The
//!    bytes are compared with the file. The RRQ and each ACK are resent on the firmware's
//!    timer: EDK2's every 4 s, 6 sends (EFI), iPXE's from 1/4 s doubling, given up past 10 s
//!    (BIOS); a timer that gives up, or any ERROR from the server, fails the machine;
//! 3. **ipxe offer**: iPXE broadcasts its own DISCOVER (user class `iPXE`, option 175) and
//!    expects the `boot.ipxe` URL, resending after 1, 2, 4 and 8 s, then fails;
//! 4. **script**: over one keep-alive HTTP/1.1 connection, `GET /boot.ipxe`, run as iPXE runs
//!    it (`run_boot_ipxe`): `serve`'s chain to `/ipxe?mac=<hexhyp>&uuid=&platform=&buildarch=`,
//!    or `render`'s static set, fetched file by file until one exists; the script must name this
//!    machine's node;
//! 5. **kernel+initrd**: the `kernel` and `initrd` URLs of the script, resolved against its URL
//!    as iPXE does, fetched on the same connection; each size must match the file.
//!
//! flint-boot's ProxyDHCP answers broadcasts with broadcasts to port 68, so the driver has one
//! socket on 0.0.0.0:68 tied to its interface and hands each offer to the machine by xid and
//! chaddr. Every machine shares the interface's address (there is no real DHCP server here).
//!
//! At the end: a table of p50/p99/max per step, failures, retransmissions and refusals, and
//! one `result key=value ...` line for scripts. Exit status 1 if any machine failed, 2 on a
//! setup error. Needs root (port 68, SO_BINDTODEVICE); `bench/storm` runs it in a network
//! namespace.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use dhcproto::v4::{
    Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

#[derive(Parser, Debug)]
#[command(about = "N simulated machines PXE-booting at once from one flint-boot")]
struct Args {
    /// How many machines.
    #[arg(long, default_value_t = 1000)]
    machines: usize,
    /// The interface the machines sit on (broadcasts leave and arrive there).
    #[arg(long)]
    iface: String,
    /// flint-boot's address: DHCP offers must name it (siaddr).
    #[arg(long)]
    server: Ipv4Addr,
    /// flint-boot's TFTP port.
    #[arg(long, default_value_t = 69)]
    tftp_port: u16,
    /// The TFTP root flint-boot serves: the binaries are compared with the files there.
    #[arg(long)]
    tftp_root: PathBuf,
    /// The images folder flint-boot serves at /images/: sizes are compared with the files.
    #[arg(long)]
    images: PathBuf,
    /// Percentage of machines that are EFI x64 (arch 7, `ipxe.efi`); the rest are BIOS (arch 0).
    #[arg(long, default_value_t = 0)]
    efi_percent: u32,
    /// Start the machines evenly over this many milliseconds (0: all at once).
    #[arg(long, default_value_t = 0)]
    ramp_ms: u64,
    /// TFTP blksize the machines ask for (BIOS ROMs ask 1432 or 1456; 1468 is one Ethernet frame).
    #[arg(long, default_value_t = 1468)]
    blksize: u16,
    /// A machine not booted after this many seconds has failed.
    #[arg(long, default_value_t = 300)]
    deadline: u64,
    /// Machine i has MAC <prefix>:ii:ii:ii (i in hex, 24 bits) and node name m<i, 5 digits>.
    #[arg(long, default_value = "52:54:01")]
    mac_prefix: String,
}

const BIOS_BINARY: &str = "undionly.kpxe";
const EFI_BINARY: &str = "ipxe.efi";
const STEPS: [&str; 5] = ["offer", "binary", "ipxe offer", "script", "kernel+initrd"];
/// The ROM's wait for an offer after each DISCOVER, then it gives up (PXE-E51, or EDK2's PXE-E16)
/// and the machine goes to its next boot device. PXE 2.1 specification: 4, 8, 16, 32 s; EDK2 the
/// same (NetworkPkg/UefiPxeBcDxe/PxeBcImpl.c `mPxeDhcpTimeout`, PXEBC_DHCP_RETRIES 4).
const ROM_DHCP_WAITS: [u64; 4] = [4, 8, 16, 32];
/// iPXE's DISCOVER timer: 1 s doubling until it would pass 10 s, then -ETIMEDOUT
/// (src/config/dhcp.h DHCP_DISC_START_TIMEOUT_SEC 1, DHCP_DISC_END_TIMEOUT_SEC 10; backoff and
/// failure in src/net/retry.c `timer_expired`, acted on in src/net/udp/dhcp.c `dhcp_timer_expired`).
const IPXE_DHCP_WAITS: [u64; 4] = [1, 2, 4, 8];
/// PXE boot server discovery (a DHCPREQUEST to port 4011 for the first menu item, when the
/// ProxyDHCP offer carries a boot menu instead of a file, as dnsmasq's does): the PXE
/// specification's 1, 2, 3 and 4 s, as EDK2 sends it (NetworkPkg/UefiPxeBcDxe/PxeBcDhcp4.c
/// `PxeBcDhcp4Discover`: PXEBC_BOOT_REQUEST_TIMEOUT 1 s × try, PXEBC_BOOT_REQUEST_RETRIES 4).
const ROM_BOOT_SERVER_WAITS: [u64; 4] = [1, 2, 3, 4];
/// iPXE's: its discovery timer, moving on after 3 s, "effectively only sending 3 tries at
/// timeouts of 1, 2, 4" (src/config/dhcp.h, PXEBS_START_TIMEOUT_SEC, PXEBS_MAX_TIMEOUT_SEC).
const IPXE_BOOT_SERVER_WAITS: [u64; 3] = [1, 2, 4];
/// iPXE's retransmission timer (src/net/retry.c): DEFAULT_MIN_TIMEOUT 1/4 s, DEFAULT_MAX_TIMEOUT 10 s.
const IPXE_MIN_TIMEOUT: Duration = Duration::from_millis(250);
const IPXE_MAX_TIMEOUT: Duration = Duration::from_secs(10);
/// EDK2's PXE TFTP (NetworkPkg/UefiPxeBcDxe/PxeBcImpl.h): PXEBC_MTFTP_TIMEOUT 4 s,
/// PXEBC_MTFTP_RETRIES 6, handed to Mtftp4 as its timeout and try count.
const EDK2_TFTP_TIMEOUT: Duration = Duration::from_secs(4);
const EDK2_TFTP_TRIES: u32 = 6;
/// An HTTP connection that stays silent this long has failed (iPXE's TCP gives up on a peer
/// that stops answering); a download that keeps moving has no time limit, as in iPXE, however
/// long 10,000 machines sharing one link make it.
const HTTP_IDLE: Duration = Duration::from_secs(60);
/// iPXE's SYN: its TCP retransmission timer (src/net/tcp.c `tcp_expired`, on src/net/retry.c's
/// 1/4 s doubling to 10 s) resends at 0.25, 0.75, 1.75, 3.75 and 7.75 s and closes the
/// connection with ETIMEDOUT at 15.75 s: a SYN the server's full accept queue drops is a failed
/// fetch unless room opens by then. Linux resends this driver's SYN at 1, 3 and 7 s (its 1 s
/// initial RTO); cut at 15 s, before its next at 15 s, it is never more patient than iPXE: its
/// last SYN leaves earlier (7 s, not 7.75 s) and it gives up sooner.
const IPXE_CONNECT: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Counters {
    dhcp_retx: AtomicU64,
    ipxe_dhcp_retx: AtomicU64,
    stray_offers: AtomicU64,
    rrq_retx: AtomicU64,
    ack_retx: AtomicU64,
    tftp_errors: AtomicU64,
    tftp_timeouts: AtomicU64,
    tftp_foreign: AtomicU64,
    tsize_probes: AtomicU64,
    http_reconnects: AtomicU64,
    http_requests: AtomicU64,
    boot_server_requests: AtomicU64,
    /// Payload bytes the machines received: TFTP data, HTTP bodies.
    tftp_bytes: AtomicU64,
    http_bytes: AtomicU64,
    done: AtomicUsize,
}

type Waiters = Mutex<HashMap<u32, ([u8; 6], oneshot::Sender<Message>)>>;

struct Shared {
    args: Args,
    prefix: [u8; 3],
    dhcp: UdpSocket,
    waiters: Waiters,
    binaries: HashMap<&'static str, Vec<u8>>,
    counters: Counters,
    /// The machines' address, as a boot server discovery REQUEST carries it (ciaddr).
    client_ip: Ipv4Addr,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Firmware {
    Bios,
    Efi,
}

struct Machine {
    index: usize,
    mac: [u8; 6],
    uuid: [u8; 16],
    firmware: Firmware,
    rng: u64,
}

impl Machine {
    fn new(shared: &Shared, index: usize) -> Machine {
        let i = index as u32;
        let p = shared.prefix;
        let mac = [p[0], p[1], p[2], (i >> 16) as u8, (i >> 8) as u8, i as u8];
        // The UUID bench/storm's inventory gives node i: %08x-0000-4000-8000-%012x of i+1, i.
        let mut uuid = [0u8; 16];
        uuid[..4].copy_from_slice(&(i + 1).to_be_bytes());
        uuid[6] = 0x40;
        uuid[8] = 0x80;
        uuid[12..].copy_from_slice(&i.to_be_bytes());
        // Spread evenly: machine i is EFI when the running count of EFI machines steps up at i.
        let p = u64::from(shared.args.efi_percent);
        let efi = (index as u64 + 1) * p / 100 > index as u64 * p / 100;
        Machine {
            index,
            mac,
            uuid,
            firmware: if efi { Firmware::Efi } else { Firmware::Bios },
            rng: 0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn hexhyp(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join("-")
    }

    fn uuid_string(&self) -> String {
        let h: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    fn arch(&self) -> u16 {
        match self.firmware {
            Firmware::Bios => 0,
            Firmware::Efi => 7,
        }
    }

    /// Option 60 as ROMs send it; iPXE sends the same string.
    fn class(&self) -> String {
        match self.firmware {
            Firmware::Bios => "PXEClient:Arch:00000:UNDI:002001".into(),
            Firmware::Efi => "PXEClient:Arch:00007:UNDI:003016".into(),
        }
    }

    fn binary(&self) -> &'static str {
        match self.firmware {
            Firmware::Bios => BIOS_BINARY,
            Firmware::Efi => EFI_BINARY,
        }
    }

    /// A DISCOVER as the ROM (`ipxe` false) or iPXE (`ipxe` true) sends it.
    fn discover(&self, xid: u32, ipxe: bool) -> Vec<u8> {
        self.dhcp_request(xid, ipxe, None)
    }

    /// With `port_4011` (a boot item type or none, from `ciaddr`), the REQUEST for a boot
    /// server's port 4011 instead: the same options, and PXE_BOOT_ITEM (43.71, layer 0) when
    /// an item was chosen from a menu.
    fn dhcp_request(
        &self,
        xid: u32,
        ipxe: bool,
        port_4011: Option<(Option<u16>, Ipv4Addr)>,
    ) -> Vec<u8> {
        let z = Ipv4Addr::UNSPECIFIED;
        let ciaddr = port_4011.map_or(z, |(_, ip)| ip);
        let mut m = Message::new_with_id(xid, ciaddr, z, z, z, &self.mac);
        let o = m.opts_mut();
        if let Some((item, _)) = port_4011 {
            o.insert(DhcpOption::MessageType(MessageType::Request));
            if let Some(item) = item {
                let t = item.to_be_bytes();
                o.insert(DhcpOption::VendorExtensions(vec![
                    71, 4, t[0], t[1], 0, 0, 255,
                ]));
            }
        } else {
            m.set_flags(Flags::default().set_broadcast());
            m.opts_mut()
                .insert(DhcpOption::MessageType(MessageType::Discover));
        }
        let o = m.opts_mut();
        let mut guid = vec![0u8];
        guid.extend_from_slice(&self.uuid);
        o.insert(DhcpOption::ClientMachineIdentifier(guid));
        o.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
            self.arch(),
        )));
        o.insert(DhcpOption::ClassIdentifier(self.class().into_bytes()));
        let prl: &[u8] = if ipxe {
            o.insert(DhcpOption::MaxMessageSize(1472));
            let mut id = vec![1u8];
            id.extend_from_slice(&self.mac);
            o.insert(DhcpOption::ClientIdentifier(id));
            o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
            // iPXE's feature flags (HTTP, DNS, TFTP, PXE ext, bzImage...), one byte each.
            o.insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::from(175),
                vec![0xb1, 5, 1, 0x13, 1, 1, 0x17, 1, 1, 0x15, 1, 1, 0x10, 1, 1],
            )));
            &[
                1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134,
                135, 175, 203,
            ]
        } else {
            o.insert(DhcpOption::MaxMessageSize(1260));
            &[
                1, 2, 3, 4, 5, 6, 11, 12, 13, 15, 16, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51,
                54, 58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
            ]
        };
        o.insert(DhcpOption::ParameterRequestList(
            prl.iter().map(|&c| OptionCode::from(c)).collect(),
        ));
        m.to_vec().expect("a DISCOVER encodes")
    }
}

/// A failure: the step it happened in and why.
type Failure = (usize, String);

fn field(raw: Option<&[u8]>) -> String {
    let raw = raw.unwrap_or_default();
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Sends `packet` to `to`, again after each of `waits` without an answer for `xid`; returns
/// the answer, or fails once the last wait is over, as the firmware does.
async fn dhcp_exchange(
    shared: &Shared,
    m: &Machine,
    xid: u32,
    (packet, to): (&[u8], SocketAddrV4),
    waits: &[u64],
    retx: &AtomicU64,
) -> Result<Message, String> {
    let (tx, mut rx) = oneshot::channel();
    shared.waiters.lock().unwrap().insert(xid, (m.mac, tx));
    for (n, wait) in waits.iter().enumerate() {
        if n > 0 {
            retx.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = shared.dhcp.send_to(packet, to).await {
            shared.waiters.lock().unwrap().remove(&xid);
            return Err(format!("send DISCOVER: {e}"));
        }
        if let Ok(answer) = tokio::time::timeout(Duration::from_secs(*wait), &mut rx).await {
            return answer.map_err(|_| "offer channel closed".to_string());
        }
    }
    shared.waiters.lock().unwrap().remove(&xid);
    Err(format!(
        "no answer after {} sends to {to} ({} s)",
        waits.len(),
        waits.iter().sum::<u64>()
    ))
}

/// Reads every answer on port 68 and hands it to the machine waiting for its xid.
async fn dhcp_dispatch(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 1500];
    loop {
        let Ok((n, _)) = shared.dhcp.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(msg) = Message::decode(&mut Decoder::new(&buf[..n])) else {
            shared.counters.stray_offers.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if msg.opcode() != Opcode::BootReply {
            continue;
        }
        let waiter = {
            let mut w = shared.waiters.lock().unwrap();
            match w.get(&msg.xid()) {
                Some((mac, _)) if msg.chaddr().get(..6) == Some(&mac[..]) => w.remove(&msg.xid()),
                _ => None,
            }
        };
        match waiter {
            Some((_, tx)) => {
                let _ = tx.send(msg);
            }
            // An answer to a retransmitted DISCOVER that was already answered.
            None => {
                shared.counters.stray_offers.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Where a ProxyDHCP offer that names no file sends the machine: with a boot menu (PXE 2.1
/// specification: option 43's PXE_BOOT_MENU, 9, and PXE_BOOT_SERVERS, 8), the first item's type
/// and that item's boot server, or else the offer's server identifier; without one (dnsmasq's
/// offers to EFI clients), the server identifier's port 4011 with no item, which EDK2 asks
/// (`PxeBcRetryBinlOffer` in NetworkPkg/UefiPxeBcDxe/PxeBcDhcp4.c).
fn boot_server(offer: &Message) -> Option<(Option<u16>, Ipv4Addr)> {
    if !field(offer.fname()).is_empty() {
        return None;
    }
    let server = match offer.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => *ip,
        _ => offer.siaddr(),
    };
    let Some(DhcpOption::VendorExtensions(v)) = offer.opts().get(OptionCode::VendorExtensions)
    else {
        return Some((None, server));
    };
    let mut sub = HashMap::new();
    let mut rest = &v[..];
    while let [code, len, tail @ ..] = rest {
        if *code == 255 || tail.len() < usize::from(*len) {
            break;
        }
        sub.insert(*code, &tail[..usize::from(*len)]);
        rest = &tail[usize::from(*len)..];
    }
    let item = match sub.get(&9) {
        Some([hi, lo, ..]) => u16::from_be_bytes([*hi, *lo]),
        _ => return Some((None, server)),
    };
    let mut servers = sub.get(&8).copied().unwrap_or_default();
    while let [hi, lo, n, tail @ ..] = servers {
        let ips = usize::from(*n) * 4;
        if tail.len() < ips {
            break;
        }
        if u16::from_be_bytes([*hi, *lo]) == item && *n > 0 {
            let ip = Ipv4Addr::new(tail[0], tail[1], tail[2], tail[3]);
            return Some((Some(item), ip));
        }
        servers = &tail[ips..];
    }
    Some((Some(item), server))
}

/// The ProxyDHCP step: DISCOVER, then, for an offer that names no file, boot server discovery
/// as the firmware does it; the answer that names the file.
async fn proxy_offer(shared: &Shared, m: &mut Machine, ipxe: bool) -> Result<Message, String> {
    let c = &shared.counters;
    let (waits, retx): (&[u64], _) = if ipxe {
        (&IPXE_DHCP_WAITS, &c.ipxe_dhcp_retx)
    } else {
        (&ROM_DHCP_WAITS, &c.dhcp_retx)
    };
    let xid = m.random() as u32;
    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let offer = dhcp_exchange(
        shared,
        m,
        xid,
        (&m.discover(xid, ipxe), broadcast),
        waits,
        retx,
    )
    .await?;
    let Some((item, server)) = boot_server(&offer) else {
        return Ok(offer);
    };
    c.boot_server_requests.fetch_add(1, Ordering::Relaxed);
    let waits: &[u64] = if ipxe {
        &IPXE_BOOT_SERVER_WAITS
    } else {
        &ROM_BOOT_SERVER_WAITS
    };
    let xid = m.random() as u32;
    let request = m.dhcp_request(xid, ipxe, Some((item, shared.client_ip)));
    dhcp_exchange(
        shared,
        m,
        xid,
        (&request, SocketAddrV4::new(server, 4011)),
        waits,
        retx,
    )
    .await
}

/// Checks a ProxyDHCP offer (or a boot server's ack): no address, our server, option 60 and the
/// expected file.
fn check_offer(
    shared: &Shared,
    offer: &Message,
    want_file: &dyn Fn(&str) -> bool,
) -> Result<String, String> {
    if !matches!(
        offer.opts().msg_type(),
        Some(MessageType::Offer | MessageType::Ack)
    ) {
        return Err(format!(
            "message type {:?}, not an offer or ack",
            offer.opts().msg_type()
        ));
    }
    // A boot server's ack may echo the address the request came from; nothing else may hand
    // out one.
    let echoed =
        offer.opts().msg_type() == Some(MessageType::Ack) && offer.yiaddr() == shared.client_ip;
    if offer.yiaddr() != Ipv4Addr::UNSPECIFIED && !echoed {
        return Err(format!(
            "a proxy answer with an address ({})",
            offer.yiaddr()
        ));
    }
    if offer.siaddr() != shared.args.server {
        return Err(format!("siaddr {} is not the server", offer.siaddr()));
    }
    match offer.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(b"PXEClient") => {}
        other => return Err(format!("option 60 is {other:?}")),
    }
    let file = field(offer.fname());
    if !want_file(&file) {
        return Err(format!("unexpected file {file:?} in the offer"));
    }
    Ok(file)
}

/// When the ROM resends its last packet (the RRQ, or the ACK of the last block it got) and when
/// it gives up the transfer.
enum RetryTimer {
    /// iPXE's (src/net/udp/tftp.c on src/net/retry.c): the timeout starts at 1/4 s and doubles at
    /// each expiry; the expiry that would take it past 10 s ends the transfer (-ETIMEDOUT). A
    /// packet received without an expiry outstanding moves it toward the round trip
    /// (t := 7t/8 + rtt/2, never under 1/4 s); with one outstanding it only counts it off. For an
    /// unanswered RRQ: sent at 0, 0.25, 0.75, 1.75, 3.75, 7.75 s, given up at 15.75 s. No BIOS
    /// PXE ROM but iPXE's has published sources, and iPXE is the less patient of the two.
    Ipxe { timeout: Duration, count: u32 },
    /// EDK2's Mtftp4 (NetworkPkg/Mtftp4Dxe/Mtftp4Support.c `Mtftp4OnTimerTick`): every 4 s the
    /// last packet again, `++CurRetry < MaxRetry` (6), else EFI_TIMEOUT; every packet sent
    /// resets the count. An unanswered RRQ: sent 6 times, given up at 24 s.
    Edk2 { tries: u32 },
}

impl RetryTimer {
    fn new(firmware: Firmware) -> Self {
        match firmware {
            Firmware::Bios => RetryTimer::Ipxe {
                timeout: IPXE_MIN_TIMEOUT,
                count: 0,
            },
            Firmware::Efi => RetryTimer::Edk2 { tries: 0 },
        }
    }

    fn wait(&self) -> Duration {
        match self {
            RetryTimer::Ipxe { timeout, .. } => (*timeout).max(IPXE_MIN_TIMEOUT),
            RetryTimer::Edk2 { .. } => EDK2_TFTP_TIMEOUT,
        }
    }

    /// The wait ran out: true to resend, false when the firmware gives up.
    fn expired(&mut self) -> bool {
        match self {
            RetryTimer::Ipxe { timeout, count } => {
                *count += 1;
                *timeout *= 2;
                *timeout <= IPXE_MAX_TIMEOUT
            }
            RetryTimer::Edk2 { tries } => {
                *tries += 1;
                *tries < EDK2_TFTP_TRIES
            }
        }
    }

    /// The awaited packet came `rtt` after the last send.
    fn received(&mut self, rtt: Duration) {
        match self {
            RetryTimer::Ipxe { timeout, count } => {
                if *count > 0 {
                    *count -= 1;
                } else {
                    *timeout = *timeout - *timeout / 8 + rtt / 2;
                }
            }
            RetryTimer::Edk2 { tries } => *tries = 0,
        }
    }
}

fn rrq(file: &str, options: &[(&str, String)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    for s in [file, "octet"] {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    for (k, v) in options {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, 4, b[0], b[1]]
}

fn tftp_error(code: u16, msg: &str) -> Vec<u8> {
    let mut p = vec![0, 5];
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// An OACK's options, as name (lowercase) to value.
fn oack_options(body: &[u8]) -> HashMap<String, String> {
    let parts: Vec<&[u8]> = body.split(|&b| b == 0).collect();
    parts
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| {
            (
                String::from_utf8_lossy(c[0]).to_ascii_lowercase(),
                String::from_utf8_lossy(c[1]).into_owned(),
            )
        })
        .collect()
}

async fn recv_until(
    sock: &UdpSocket,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
) -> Option<std::io::Result<(usize, SocketAddr)>> {
    tokio::time::timeout_at(deadline, sock.recv_from(buf))
        .await
        .ok()
}

/// One TFTP read as the firmware makes it, from a fresh ephemeral port: the file and the OACK's
/// tsize if any. With `probe`, only EDK2's tsize probe: no data, the OACK's tsize, and the
/// transfer aborted with ERROR 8. Any ERROR from the server ends the machine's boot: OVMF prints
/// PXE-E23 for it (EFI_TFTP_ERROR, NetworkPkg/UefiPxeBcDxe/PxeBcBoot.c) and tries its next boot
/// option, iPXE's `tftp_rx_error` ends the transfer with it (src/net/udp/tftp.c), PXE ROMs print
/// PXE-E36 and exit to the next boot device; none asks again. So does a retransmission timer
/// that gives up.
async fn tftp_attempt(
    shared: &Shared,
    firmware: Firmware,
    server: SocketAddr,
    file: &str,
    options: &[(&str, String)],
    probe: bool,
) -> Result<(Vec<u8>, Option<u64>), String> {
    let c = &shared.counters;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let request = rrq(file, options);
    // A block, or the OACK, as asked: 10,000 machines waiting at once hold one each.
    let mut buf = vec![0u8; usize::from(shared.args.blksize) + 4];
    let asked = |k: &str| options.iter().any(|(n, _)| *n == k);
    let mut timer = RetryTimer::new(firmware);
    let opened = tokio::time::Instant::now();
    let mut sent_at = opened;
    sock.send_to(&request, server)
        .await
        .map_err(|e| format!("send RRQ: {e}"))?;
    // Open: the RRQ until something answers from the server's address.
    let (peer, n) = loop {
        match recv_until(&sock, &mut buf, sent_at + timer.wait()).await {
            None => {
                if !timer.expired() {
                    c.tftp_timeouts.fetch_add(1, Ordering::Relaxed);
                    return Err(format!(
                        "no answer to the RRQ in {:.2} s: the firmware gives up",
                        opened.elapsed().as_secs_f64()
                    ));
                }
                c.rrq_retx.fetch_add(1, Ordering::Relaxed);
                sent_at = tokio::time::Instant::now();
                sock.send_to(&request, server)
                    .await
                    .map_err(|e| format!("send RRQ: {e}"))?;
            }
            Some(Err(e)) => return Err(format!("recv: {e}")),
            Some(Ok((n, from))) if from.ip() == server.ip() && n >= 4 => {
                timer.received(sent_at.elapsed());
                break (from, n);
            }
            Some(Ok(_)) => {}
        }
    };
    let server_error = |buf: &[u8], n: usize, when: &str| {
        c.tftp_errors.fetch_add(1, Ordering::Relaxed);
        format!(
            "ERROR {} {:?} {when}: the firmware gives up",
            u16::from_be_bytes([buf[2], buf[3]]),
            field(Some(&buf[4..n]))
        )
    };
    let mut blksize = 512usize;
    let mut window = 1u16;
    let mut tsize = None;
    let mut data = Vec::new();
    let mut expected: u16 = 1;
    let mut in_window = 0u16;
    let mut last_ack: u16 = 0;
    // The first packet: OACK, DATA 1 (options ignored) or ERROR.
    let mut pending = Some(n);
    match u16::from_be_bytes([buf[0], buf[1]]) {
        6 => {
            let opts = oack_options(&buf[2..n]);
            for (k, v) in &opts {
                if !asked(k) {
                    return Err(format!("OACK has {k}, which was not asked for"));
                }
                let v: u64 = v.parse().map_err(|_| format!("OACK {k}={v}"))?;
                match k.as_str() {
                    "blksize" => blksize = v as usize,
                    "windowsize" => window = v as u16,
                    "tsize" => tsize = Some(v),
                    _ => {}
                }
            }
            if probe {
                let _ = sock.send_to(&tftp_error(8, "tsize probe"), peer).await;
                return Ok((Vec::new(), tsize));
            }
            sent_at = tokio::time::Instant::now();
            sock.send_to(&ack(0), peer)
                .await
                .map_err(|e| format!("send ACK: {e}"))?;
            pending = None;
        }
        3 => {}
        5 => return Err(server_error(&buf, n, "in answer to the RRQ")),
        op => return Err(format!("opcode {op} in answer to RRQ")),
    }
    if probe {
        return Err("the tsize probe got DATA, not an OACK".into());
    }
    loop {
        let n = match pending.take() {
            Some(n) => n,
            None => match recv_until(&sock, &mut buf, sent_at + timer.wait()).await {
                None => {
                    if !timer.expired() {
                        c.tftp_timeouts.fetch_add(1, Ordering::Relaxed);
                        return Err(format!("no DATA {expected}: the firmware gives up"));
                    }
                    c.ack_retx.fetch_add(1, Ordering::Relaxed);
                    in_window = 0;
                    sent_at = tokio::time::Instant::now();
                    let _ = sock.send_to(&ack(last_ack), peer).await;
                    continue;
                }
                Some(Err(e)) => return Err(format!("recv: {e}")),
                Some(Ok((_, from))) if from != peer => {
                    // A second transfer the server started for a resent RRQ: end it.
                    c.tftp_foreign.fetch_add(1, Ordering::Relaxed);
                    let _ = sock
                        .send_to(&tftp_error(5, "unknown transfer ID"), from)
                        .await;
                    continue;
                }
                Some(Ok((n, _))) => n,
            },
        };
        if n < 4 {
            continue;
        }
        match u16::from_be_bytes([buf[0], buf[1]]) {
            3 => {
                let block = u16::from_be_bytes([buf[2], buf[3]]);
                if block != expected {
                    // A resent or out-of-order block: say again where we are.
                    in_window = 0;
                    let _ = sock.send_to(&ack(last_ack), peer).await;
                    continue;
                }
                timer.received(sent_at.elapsed());
                let payload = &buf[4..n];
                data.extend_from_slice(payload);
                in_window += 1;
                let last = payload.len() < blksize;
                if last || in_window >= window {
                    sent_at = tokio::time::Instant::now();
                    sock.send_to(&ack(block), peer)
                        .await
                        .map_err(|e| format!("send ACK: {e}"))?;
                    last_ack = block;
                    in_window = 0;
                }
                expected = expected.wrapping_add(1);
                if last {
                    c.tftp_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    return Ok((data, tsize));
                }
            }
            5 => return Err(server_error(&buf, n, "during the transfer")),
            _ => {}
        }
    }
}

/// The binary step: the EDK2 probe for EFI machines, then the transfer, each once.
async fn fetch_binary(
    shared: &Shared,
    m: &Machine,
    server: SocketAddr,
    file: &str,
) -> Result<(), String> {
    let expect = shared
        .binaries
        .get(file)
        .ok_or_else(|| format!("offer names {file}, which is not in --tftp-root"))?;
    let blk = ("blksize", shared.args.blksize.to_string());
    let (data, tsize) = if m.firmware == Firmware::Efi {
        shared.counters.tsize_probes.fetch_add(1, Ordering::Relaxed);
        let (_, tsize) = tftp_attempt(
            shared,
            m.firmware,
            server,
            file,
            &[("tsize", "0".into()), blk.clone()],
            true,
        )
        .await?;
        if tsize != Some(expect.len() as u64) {
            return Err(format!("tsize probe: {tsize:?}, file has {}", expect.len()));
        }
        tftp_attempt(
            shared,
            m.firmware,
            server,
            file,
            &[blk, ("windowsize", "4".into())],
            false,
        )
        .await?
    } else {
        tftp_attempt(
            shared,
            m.firmware,
            server,
            file,
            std::slice::from_ref(&blk),
            false,
        )
        .await?
    };
    if data != *expect {
        return Err(format!(
            "{file}: {} bytes received differ from the file ({} bytes)",
            data.len(),
            expect.len()
        ));
    }
    if let Some(t) = tsize
        && t != expect.len() as u64
    {
        return Err(format!("{file}: OACK tsize {t}, file has {}", expect.len()));
    }
    Ok(())
}

/// `http://host:port/path?query` as (host:port, /path?query).
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http URL: {url}"))?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((auth.to_string(), path.to_string()))
}

/// `rel` resolved against `base` as iPXE resolves a relative URI.
fn resolve(base: &str, rel: &str) -> String {
    if rel.contains("://") {
        return rel.to_string();
    }
    let (auth, path) = split_url(base).unwrap_or_default();
    if rel.starts_with('/') {
        return format!("http://{auth}{rel}");
    }
    let path = path.split('?').next().unwrap_or("/");
    let dir = &path[..=path.rfind('/').unwrap_or(0)];
    format!("http://{auth}{dir}{rel}")
}

/// Reads and drops `len` bytes of body. A machine copies its kernel into its own memory at no
/// cost to anyone; a driver standing in for 10,000 of them on the server's cores must not, or
/// copying 100 GiB would starve the server and the machines still in their TFTP step. So what
/// the socket holds is dropped in the kernel (recv with MSG_TRUNC, tcp(7)), never copied.
async fn discard(conn: &mut BufReader<TcpStream>, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncBufRead;
    let buffered = conn.buffer().len().min(len as usize);
    std::pin::Pin::new(&mut *conn).consume(buffered);
    let mut left = len - buffered as u64;
    // Never written (MSG_TRUNC), so its zeroed pages are never touched either.
    let mut scratch = vec![0u8; 1 << 20];
    let sock = conn.get_ref();
    while left > 0 {
        idle(sock.readable()).await?;
        let want = scratch
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let flags =
            nix::sys::socket::MsgFlags::MSG_TRUNC | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
        match sock.try_io(tokio::io::Interest::READABLE, || {
            nix::sys::socket::recv(sock.as_raw_fd(), &mut scratch[..want], flags)
                .map_err(std::io::Error::from)
        }) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("closed with {left} bytes to go"),
                ));
            }
            Ok(n) => left = left.saturating_sub(n as u64),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `io`, or TimedOut once it has waited HTTP_IDLE.
async fn idle<T>(io: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(HTTP_IDLE, io)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing for {} s", HTTP_IDLE.as_secs()),
            ))
        })
}

/// One keep-alive HTTP/1.1 connection, as iPXE keeps one per server.
struct Http {
    auth: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    /// GETs `path`; keeps the body (`keep`) or only counts it. Returns status, body, length.
    async fn get(
        &mut self,
        shared: &Shared,
        path: &str,
        keep: bool,
    ) -> Result<(u16, Vec<u8>, u64), String> {
        shared
            .counters
            .http_requests
            .fetch_add(1, Ordering::Relaxed);
        let reused = self.conn.is_some();
        let result = match self.get_once(path, keep).await {
            Ok(r) => Ok(r),
            // A pooled connection the server closed meanwhile: iPXE opens a new one.
            Err((false, _)) if reused => {
                shared
                    .counters
                    .http_reconnects
                    .fetch_add(1, Ordering::Relaxed);
                self.conn = None;
                self.get_once(path, keep)
                    .await
                    .map_err(|(_, e)| format!("GET {path}: {e}"))
            }
            Err((_, e)) => Err(format!("GET {path}: {e}")),
        };
        if let Ok((_, _, length)) = &result {
            shared
                .counters
                .http_bytes
                .fetch_add(*length, Ordering::Relaxed);
        }
        result
    }

    /// The error's flag is true once any byte of the answer was read.
    async fn get_once(
        &mut self,
        path: &str,
        keep: bool,
    ) -> Result<(u16, Vec<u8>, u64), (bool, String)> {
        if self.conn.is_none() {
            let s = tokio::time::timeout(IPXE_CONNECT, TcpStream::connect(&self.auth))
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer to SYN for {} s", IPXE_CONNECT.as_secs()),
                    ))
                })
                .map_err(|e| (true, format!("connect {}: {e}", self.auth)))?;
            s.set_nodelay(true).map_err(|e| (true, e.to_string()))?;
            self.conn = Some(BufReader::with_capacity(16 * 1024, s));
        }
        let conn = self.conn.as_mut().expect("connected");
        let req = format!(
            "GET {path} HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1+ (storm)\r\nHost: {}\r\n\r\n",
            self.auth
        );
        idle(conn.get_mut().write_all(req.as_bytes()))
            .await
            .map_err(|e| (false, format!("send: {e}")))?;
        let mut line = String::new();
        let n = idle(conn.read_line(&mut line))
            .await
            .map_err(|e| (false, format!("read: {e}")))?;
        if n == 0 {
            return Err((false, "connection closed before an answer".into()));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| (true, format!("bad status line {line:?}")))?;
        let mut length = None;
        let mut close = false;
        loop {
            line.clear();
            idle(conn.read_line(&mut line))
                .await
                .map_err(|e| (true, format!("read head: {e}")))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse::<u64>().ok();
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                } else if k == "transfer-encoding" {
                    return Err((true, format!("transfer-encoding {v} (not supported here)")));
                }
            }
        }
        let length = length.ok_or_else(|| (true, "no content-length".to_string()))?;
        let mut body = Vec::new();
        if keep {
            body.resize(length as usize, 0);
            idle(conn.read_exact(&mut body))
                .await
                .map_err(|e| (true, format!("body: {e}")))?;
        } else {
            discard(conn, length)
                .await
                .map_err(|e| (true, format!("body of {length} bytes: {e}")))?;
        }
        if close {
            self.conn = None;
        }
        Ok((status, body, length))
    }
}

/// Runs `boot.ipxe` as iPXE would, as far as the commands flint-boot's scripts use go (both
/// `serve`'s one-line chain and `render`'s static set): `set`, `iseq`, `imgfetch --name`,
/// `chain [--autofree]` and `exit`, joined by `&&` and `||` with iPXE's left-to-right meaning
/// (src/hci/shell.c: a command after `&&` runs if the last one succeeded, after `||` if it
/// failed). `${...}` expands the variables iPXE sets for this machine; a fetch that is not a 200
/// fails its command (iPXE's imgfetch returns the HTTP error), which the next `||` catches.
/// Returns the URL and text of the script the chain ends in.
async fn run_boot_ipxe(
    shared: &Shared,
    m: &Machine,
    http: &mut Http,
    url: &str,
    body: &[u8],
) -> Result<(String, Vec<u8>), String> {
    let text = String::from_utf8_lossy(body).into_owned();
    if !text.starts_with("#!ipxe") {
        return Err(format!("boot.ipxe is not an iPXE script: {text:?}"));
    }
    let (platform, buildarch) = match m.firmware {
        Firmware::Bios => ("pcbios", "i386"),
        Firmware::Efi => ("efi", "x86_64"),
    };
    let mut vars: HashMap<String, String> = HashMap::from([
        ("netX/mac:hexhyp".into(), m.hexhyp()),
        ("uuid".into(), m.uuid_string()),
        ("platform".into(), platform.into()),
        ("buildarch".into(), buildarch.into()),
    ]);
    // Images fetched by name: their URL and bytes.
    let mut images: HashMap<String, (String, Vec<u8>)> = HashMap::new();
    for line in text.lines().skip(1) {
        let mut ok = true;
        let mut op = "";
        let mut words = line.split_whitespace().peekable();
        while words.peek().is_some() {
            let mut command = Vec::new();
            let mut next_op = "";
            for w in words.by_ref() {
                if w == "&&" || w == "||" {
                    next_op = w;
                    break;
                }
                command.push(expand(w, &vars));
            }
            let runs = match op {
                "&&" => ok,
                "||" => !ok,
                _ => true,
            };
            if runs && !command.is_empty() {
                ok = match command[0].as_str() {
                    "set" if command.len() == 3 => {
                        vars.insert(command[1].clone(), command[2].clone());
                        true
                    }
                    "iseq" if command.len() == 3 => command[1] == command[2],
                    "imgfetch" if command.len() == 4 && command[1] == "--name" => {
                        let target = resolve(url, &command[3]);
                        let (_, path) = split_url(&target)?;
                        let (status, body, _) = http.get(shared, &path, true).await?;
                        if status == 200 {
                            images.insert(command[2].clone(), (target, body));
                        }
                        status == 200
                    }
                    "chain" => {
                        let target = command[1..]
                            .iter()
                            .find(|w| !w.starts_with("--"))
                            .ok_or_else(|| format!("chain with no image: {line:?}"))?;
                        if let Some(image) = images.remove(target) {
                            return Ok(image);
                        }
                        let target = resolve(url, target);
                        let (_, path) = split_url(&target)?;
                        let (status, body, _) = http.get(shared, &path, true).await?;
                        if status != 200 {
                            return Err(format!("chain {target}: status {status}"));
                        }
                        return Ok((target, body));
                    }
                    "exit" => return Err(format!("boot.ipxe exited: {line:?}")),
                    other => return Err(format!("boot.ipxe: {other:?} is not simulated here")),
                };
            }
            op = next_op;
        }
    }
    Err(format!("boot.ipxe ended without a chain: {text:?}"))
}

/// `${name}` replaced by iPXE's variable of that name (empty when unset, as in iPXE).
fn expand(word: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            out.push_str(&rest[at..]);
            return out;
        };
        let name = &rest[at + 2..at + end];
        out.push_str(vars.get(name).map(String::as_str).unwrap_or(""));
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Boots one machine; `step` says which step it is in, for a failure.
async fn boot(
    shared: &Shared,
    m: &mut Machine,
    step: &mut usize,
    times: &mut [Duration; 5],
) -> Result<(), String> {
    let server = shared.args.server;

    *step = 0;
    let t = Instant::now();
    let offer = proxy_offer(shared, m, false).await?;
    let binary = m.binary();
    let file = check_offer(shared, &offer, &|f| f == binary)?;
    times[0] = t.elapsed();

    *step = 1;
    let t = Instant::now();
    fetch_binary(
        shared,
        m,
        SocketAddr::from((server, shared.args.tftp_port)),
        &file,
    )
    .await?;
    times[1] = t.elapsed();

    *step = 2;
    let t = Instant::now();
    let offer = proxy_offer(shared, m, true).await?;
    let url = check_offer(shared, &offer, &|f| {
        f.starts_with("http://") && f.ends_with("/boot.ipxe")
    })?;
    times[2] = t.elapsed();

    *step = 3;
    let t = Instant::now();
    let (auth, path) = split_url(&url)?;
    let mut http = Http { auth, conn: None };
    let (status, body, _) = http.get(shared, &path, true).await?;
    if status != 200 {
        return Err(format!("GET {path}: status {status}"));
    }
    let (script_url, body) = run_boot_ipxe(shared, m, &mut http, &url, &body).await?;
    let script = String::from_utf8_lossy(&body);
    let name = format!("booting m{:05}", m.index);
    if !script.contains(&name) {
        return Err(format!(
            "the script for {} is not node m{:05}'s: {script:?}",
            m.hexhyp(),
            m.index
        ));
    }
    let mut images = Vec::new();
    for line in script.lines() {
        let mut words = line.split_whitespace();
        if let (Some("kernel" | "initrd"), Some(u)) = (words.next(), words.next()) {
            images.push(resolve(&script_url, u));
        }
    }
    if images.len() < 2 {
        return Err(format!("no kernel and initrd in the script: {script:?}"));
    }
    times[3] = t.elapsed();

    *step = 4;
    let t = Instant::now();
    for image in &images {
        let (_, path) = split_url(image)?;
        let local = path
            .strip_prefix("/images/")
            .map(|p| shared.args.images.join(p))
            .ok_or_else(|| format!("{image} is not under /images/"))?;
        let size = std::fs::metadata(&local)
            .map_err(|e| format!("{}: {e}", local.display()))?
            .len();
        let (status, _, length) = http.get(shared, &path, false).await?;
        if status != 200 || length != size {
            return Err(format!(
                "GET {path}: status {status}, {length} bytes, file has {size}"
            ));
        }
    }
    times[4] = t.elapsed();
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn dhcp_socket(iface: &str) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    // 1,000 offers arrive within milliseconds; real machines each have their own NIC, so the
    // one socket standing in for all of them must not drop them (root may exceed rmem_max).
    let want = 16 << 20;
    if nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &want).is_err() {
        s.set_recv_buffer_size(want)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
    UdpSocket::from_std(s.into())
}

fn setup(args: Args) -> Result<Shared, String> {
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let shared = match setup(args) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("boot_storm: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tokio::spawn(dhcp_dispatch(shared.clone()));
    let n = shared.args.machines;
    let deadline = Duration::from_secs(shared.args.deadline);
    let ramp = Duration::from_millis(shared.args.ramp_ms);
    let efi = (0..n)
        .filter(|&i| Machine::new(&shared, i).firmware == Firmware::Efi)
        .count();
    eprintln!(
        "boot_storm: {n} machines ({} BIOS, {efi} EFI x64), started {}",
        n - efi,
        if ramp.is_zero() {
            "at once".to_string()
        } else {
            format!("evenly over {} ms", ramp.as_millis())
        }
    );

    let started = Instant::now();
    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!(
                    "boot_storm: {:>5.1} s, {} of {n} done",
                    started.elapsed().as_secs_f64(),
                    shared.counters.done.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut set = JoinSet::new();
    for i in 0..n {
        let shared = shared.clone();
        set.spawn(async move {
            if !ramp.is_zero() {
                tokio::time::sleep(ramp * i as u32 / n as u32).await;
            }
            let mut m = Machine::new(&shared, i);
            let mut step = 0;
            let mut times = [Duration::ZERO; 5];
            let t0 = Instant::now();
            let r =
                match tokio::time::timeout(deadline, boot(&shared, &mut m, &mut step, &mut times))
                    .await
                {
                    Ok(Ok(())) => Ok((times, t0.elapsed())),
                    Ok(Err(e)) => Err((step, e)),
                    Err(_) => Err((step, format!("not booted after {} s", deadline.as_secs()))),
                };
            shared.counters.done.fetch_add(1, Ordering::Relaxed);
            (i, r)
        });
    }
    let mut per_step: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let mut totals = Vec::new();
    let mut failures: Vec<(usize, Failure)> = Vec::new();
    let mut last_done = Duration::ZERO;
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.expect("a machine task panicked");
        match r {
            Ok((times, total)) => {
                for (s, t) in times.iter().enumerate() {
                    per_step[s].push(*t);
                }
                totals.push(total);
                last_done = started.elapsed();
            }
            Err(f) => failures.push((i, f)),
        }
    }
    progress.abort();
    let wall = started.elapsed();

    let c = &shared.counters;
    let booted = totals.len();
    println!(
        "\nboot_storm: {n} machines ({} BIOS, {efi} EFI x64), {}; {booted} booted, {} failed; {} after {:.2} s",
        n - efi,
        if ramp.is_zero() {
            "all at once".to_string()
        } else {
            format!("started over {} ms", ramp.as_millis())
        },
        failures.len(),
        if failures.is_empty() {
            "all booted"
        } else {
            "the last one booted"
        },
        last_done.as_secs_f64()
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10}",
        "step (ms)", "p50", "p99", "max"
    );
    let mut result = format!(
        "result machines={n} efi={efi} booted={booted} failed={} wall_s={:.2} all_booted_s={:.2}",
        failures.len(),
        wall.as_secs_f64(),
        last_done.as_secs_f64()
    );
    for (s, name) in STEPS
        .iter()
        .enumerate()
        .chain([(STEPS.len(), &"machine total")])
    {
        let v = if s < STEPS.len() {
            &mut per_step[s]
        } else {
            &mut totals
        };
        v.sort();
        let (p50, p99, max) = (
            percentile(v, 50.0),
            percentile(v, 99.0),
            v.last().copied().unwrap_or_default(),
        );
        println!("{name:<16} {:>10} {:>10} {:>10}", ms(p50), ms(p99), ms(max));
        let key = name.replace([' ', '+'], "_");
        result += &format!(
            " {key}_p50={} {key}_p99={} {key}_max={}",
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    let counts = [
        ("dhcp_retx", c.dhcp_retx.load(Ordering::Relaxed)),
        ("ipxe_dhcp_retx", c.ipxe_dhcp_retx.load(Ordering::Relaxed)),
        ("stray_offers", c.stray_offers.load(Ordering::Relaxed)),
        ("rrq_retx", c.rrq_retx.load(Ordering::Relaxed)),
        ("ack_retx", c.ack_retx.load(Ordering::Relaxed)),
        ("tftp_errors", c.tftp_errors.load(Ordering::Relaxed)),
        ("tftp_timeouts", c.tftp_timeouts.load(Ordering::Relaxed)),
        ("tftp_foreign_tid", c.tftp_foreign.load(Ordering::Relaxed)),
        ("tsize_probes", c.tsize_probes.load(Ordering::Relaxed)),
        ("http_requests", c.http_requests.load(Ordering::Relaxed)),
        ("http_reconnects", c.http_reconnects.load(Ordering::Relaxed)),
        (
            "boot_server_requests",
            c.boot_server_requests.load(Ordering::Relaxed),
        ),
        ("tftp_bytes", c.tftp_bytes.load(Ordering::Relaxed)),
        ("http_bytes", c.http_bytes.load(Ordering::Relaxed)),
    ];
    println!(
        "retransmissions: DISCOVER (ROM) {}, DISCOVER (iPXE) {}, RRQ {}, ACK {}; offers to no one waiting {}",
        counts[0].1, counts[1].1, counts[3].1, counts[4].1, counts[2].1
    );
    println!(
        "TFTP: {} ERRORs from the server, {} transfers given up by the retransmission timer (each a failed machine), {} stray transfers ended (ERROR 5), {} tsize probes; HTTP: {} requests, {} reconnects",
        counts[5].1, counts[6].1, counts[7].1, counts[8].1, counts[9].1, counts[10].1
    );
    for (k, v) in counts {
        result += &format!(" {k}={v}");
    }
    // The physical bound: the payload alone through one 10 Gbit/s link (headers add about 3 %).
    let bytes = c.tftp_bytes.load(Ordering::Relaxed) + c.http_bytes.load(Ordering::Relaxed);
    let per_machine = bytes / booted.max(1) as u64;
    let link_s = bytes as f64 * 8.0 / 10e9;
    println!(
        "bytes received: {per_machine} per booted machine, {bytes} in all; a 10 GbE link needs {link_s:.2} s for them"
    );
    result +=
        &format!(" bytes_per_machine={per_machine} bytes_total={bytes} link10g_s={link_s:.2}");
    // The machines' CPU is the server's on this one host: say how much the driver took.
    if let Ok(u) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        result += &format!(
            " driver_cpu_s={:.2}",
            secs(u.user_time()) + secs(u.system_time())
        );
    }
    if !failures.is_empty() {
        failures.sort_by_key(|(i, _)| *i);
        let mut by_step = [0usize; 5];
        for (_, (s, _)) in &failures {
            by_step[*s] += 1;
        }
        println!(
            "failures by step: {}",
            STEPS
                .iter()
                .zip(by_step)
                .map(|(s, k)| format!("{s} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (i, (s, e)) in failures.iter().take(10) {
            println!(
                "  machine {i} ({}): {}: {e}",
                Machine::new(&shared, *i).hexhyp(),
                STEPS[*s]
            );
        }
    }
    println!("{result}");
    if failures.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}
