//! ProxyDHCP (PXE spec; `docs/pxe-firmware.md`): beside the site's own DHCP server, which keeps
//! handing out addresses, tell PXE clients where to boot from. Port 67 answers DISCOVERs with an
//! offer that carries no address; port 4011 answers the REQUEST some UEFI firmware sends there.

mod request;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::v4::{DhcpOption, DhcpOptions, Flags, HType, Message, MessageType, Opcode};
use dhcproto::{Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::journey::Journeys;
use crate::metrics::Metrics;
use flint_ipxe::Mac;
pub use request::{Malformed, Request, parse as parse_request};

pub const DHCP_PORT: u16 = 67;
pub const PXE_PORT: u16 = 4011;
const CLIENT_PORT: u16 = 68;

const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_CLASS_ID: u8 = 60;
const OPT_USER_CLASS: u8 = 77;
const OPT_CLIENT_ARCH: u8 = 93;
const OPT_CLIENT_GUID: u8 = 97;
/// iPXE's own encapsulated options: present means the client already runs iPXE.
const OPT_IPXE: u8 = 175;

const DISCOVER: u8 = 1;
const REQUEST: u8 = 3;
const INFORM: u8 = 8;

/// The `file` field is 128 bytes, NUL-terminated.
pub const MAX_FILE: usize = 127;

/// What to hand each kind of client.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our address on the provisioning network: option 54, siaddr, sname.
    pub server_ip: Ipv4Addr,
    /// The HTTP URL of `boot.ipxe`, for clients already running iPXE.
    pub script_url: String,
    /// The HTTP URL the iPXE binaries are served under, for UEFI HTTP Boot clients.
    pub firmware_url: Option<String>,
    /// Whether this server runs TFTP: without it, PXE clients that would fetch iPXE over TFTP
    /// are left to another server, while HTTP Boot clients and iPXE are still answered.
    pub tftp: bool,
    pub binaries: Binaries,
}

/// iPXE binaries by firmware, as names in the TFTP root; `None` where the root has none, so
/// such clients are left to another server instead of being sent a file that is not there.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub bios: Option<String>,
    pub efi_i386: Option<String>,
    pub efi_x64: Option<String>,
    pub efi_arm64: Option<String>,
}

/// The firmware a client runs, from option 93 (RFC 4578, IANA processor architecture types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    EfiI386,
    EfiX64,
    EfiArm64,
}

impl Firmware {
    /// Arch codes with an iPXE build; ARM32 (10, 18) and the rest have none, so another boot
    /// server may answer them. The second value is true for UEFI HTTP Boot.
    pub fn from_arch(code: u16) -> Option<(Firmware, bool)> {
        Some(match code {
            0 => (Firmware::Bios, false),
            6 => (Firmware::EfiI386, false),
            7 | 9 => (Firmware::EfiX64, false),
            11 => (Firmware::EfiArm64, false),
            15 => (Firmware::EfiI386, true),
            16 => (Firmware::EfiX64, true),
            19 => (Firmware::EfiArm64, true),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::EfiI386 => "efi-i386",
            Firmware::EfiX64 => "efi-x64",
            Firmware::EfiArm64 => "efi-arm64",
        }
    }
}

impl Binaries {
    pub fn for_firmware(&self, fw: Firmware) -> Option<&str> {
        match fw {
            Firmware::Bios => self.bios.as_deref(),
            Firmware::EfiI386 => self.efi_i386.as_deref(),
            Firmware::EfiX64 => self.efi_x64.as_deref(),
            Firmware::EfiArm64 => self.efi_arm64.as_deref(),
        }
    }
}

/// Which socket a packet came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Dhcp,
    Pxe,
}

impl Port {
    pub fn number(self) -> u16 {
        match self {
            Port::Dhcp => DHCP_PORT,
            Port::Pxe => PXE_PORT,
        }
    }
}

/// Why a packet got no answer. Most DHCP traffic on a network is not for us: these are counted,
/// and logged only at debug level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("malformed: {0}")]
    Malformed(#[from] Malformed),
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("not a PXE or HTTP Boot client (option 60)")]
    NotPxe,
    #[error("no client architecture (option 93)")]
    NoArch,
    #[error("no iPXE build for client architecture {0}")]
    UnsupportedArch(u16),
    #[error("message type {} is not answered on port {port}", message_type.map_or("(none)".into(), |t| t.to_string()))]
    MessageType { message_type: Option<u8>, port: u16 },
    #[error("UEFI HTTP Boot client, but no HTTP server to boot it from")]
    NoHttp,
    #[error("PXE client that needs TFTP, but no TFTP server runs here")]
    NoTftp,
    #[error("no iPXE binary for {} clients in the TFTP root", .0.name())]
    NoBinary(Firmware),
}

/// Every `Ignored::reason`, for `flint_boot_dhcp_ignored_total` to show at 0 from the start.
pub(crate) const IGNORED_REASONS: [&[&str]; 9] = [
    &["malformed"],
    &["not-request"],
    &["not-pxe"],
    &["no-arch"],
    &["unsupported-arch"],
    &["message-type"],
    &["no-http"],
    &["no-tftp"],
    &["no-binary"],
];

impl Ignored {
    pub fn reason(&self) -> &'static str {
        match self {
            Ignored::Malformed(_) => "malformed",
            Ignored::NotRequest => "not-request",
            Ignored::NotPxe => "not-pxe",
            Ignored::NoArch => "no-arch",
            Ignored::UnsupportedArch(_) => "unsupported-arch",
            Ignored::MessageType { .. } => "message-type",
            Ignored::NoHttp => "no-http",
            Ignored::NoTftp => "no-tftp",
            Ignored::NoBinary(_) => "no-binary",
        }
    }
}

/// What was handed out, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// An iPXE binary over TFTP.
    Tftp,
    /// An iPXE binary over HTTP (UEFI HTTP Boot).
    Http,
    /// The `boot.ipxe` URL, to a client already running iPXE.
    Script,
}

impl Boot {
    pub fn name(self) -> &'static str {
        match self {
            Boot::Tftp => "tftp",
            Boot::Http => "http",
            Boot::Script => "script",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub reply: Message,
    pub to: SocketAddrV4,
    pub firmware: Firmware,
    pub boot: Boot,
    pub file: String,
}

impl Answer {
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(400);
        // Encoding a message we built ourselves into a Vec cannot fail.
        self.reply
            .encode(&mut Encoder::new(&mut out))
            .expect("DHCP reply encodes");
        out
    }
}

fn is_ipxe(req: &Request<'_>) -> bool {
    if req.options.contains_key(&OPT_IPXE) {
        return true;
    }
    // iPXE sends the bare string; RFC 3004 wraps each class in a length byte.
    req.options
        .get(&OPT_USER_CLASS)
        .is_some_and(|v| v == b"iPXE" || v.as_slice() == b"\x04iPXE")
}

/// The whole ProxyDHCP decision for one packet: answer it or say why not. `from` is where the
/// packet came from (a 4011 answer goes back there).
pub fn answer(
    packet: &[u8],
    port: Port,
    from: SocketAddrV4,
    config: &Config,
) -> Result<Answer, Ignored> {
    let req = request::parse(packet)?;
    if req.op != request::BOOT_REQUEST {
        return Err(Ignored::NotRequest);
    }
    let class = req
        .options
        .get(&OPT_CLASS_ID)
        .map_or(&[][..], Vec::as_slice);
    let http_client = class.starts_with(b"HTTPClient");
    if !class.starts_with(b"PXEClient") && !http_client {
        return Err(Ignored::NotPxe);
    }
    let arch = match req.options.get(&OPT_CLIENT_ARCH).map(Vec::as_slice) {
        // RFC 4578 allows a list; the first is the one the client runs.
        Some([hi, lo, ..]) => u16::from_be_bytes([*hi, *lo]),
        _ => return Err(Ignored::NoArch),
    };
    let msg_type = req
        .options
        .get(&OPT_MESSAGE_TYPE)
        .and_then(|v| v.first().copied());
    let reply_type = match (port, msg_type) {
        (Port::Dhcp, Some(DISCOVER)) => MessageType::Offer,
        (Port::Pxe, Some(REQUEST | INFORM)) => MessageType::Ack,
        _ => {
            return Err(Ignored::MessageType {
                message_type: msg_type,
                port: port.number(),
            });
        }
    };
    let (firmware, http_boot) = Firmware::from_arch(arch).ok_or(Ignored::UnsupportedArch(arch))?;
    let (boot, file) = if is_ipxe(&req) {
        (Boot::Script, config.script_url.clone())
    } else {
        let binary = config
            .binaries
            .for_firmware(firmware)
            .ok_or(Ignored::NoBinary(firmware))?;
        if http_boot || http_client {
            let base = config.firmware_url.as_deref().ok_or(Ignored::NoHttp)?;
            (Boot::Http, format!("{base}/{binary}"))
        } else if config.tftp {
            (Boot::Tftp, binary.to_owned())
        } else {
            return Err(Ignored::NoTftp);
        }
    };

    let mut reply = Message::default();
    reply
        .set_opcode(Opcode::BootReply)
        .set_htype(HType::from(req.htype))
        .set_xid(req.xid)
        .set_flags(Flags::new(req.flags))
        .set_ciaddr(req.ciaddr)
        .set_giaddr(req.giaddr)
        .set_siaddr(config.server_ip)
        .set_chaddr(req.chaddr)
        .set_sname_str(config.server_ip.to_string())
        .set_fname_str(&file);
    let mut opts = DhcpOptions::new();
    opts.insert(DhcpOption::MessageType(reply_type));
    opts.insert(DhcpOption::ServerIdentifier(config.server_ip));
    if http_client {
        opts.insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
    } else {
        opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        // PXE_DISCOVERY_CONTROL = 8: boot the file in this packet, skip boot server discovery.
        opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
    }
    if let Some(guid) = req.options.get(&OPT_CLIENT_GUID) {
        opts.insert(DhcpOption::ClientMachineIdentifier(guid.clone()));
    }
    reply.set_opts(opts);

    let to = match port {
        Port::Pxe => from,
        Port::Dhcp if !req.giaddr.is_unspecified() => SocketAddrV4::new(req.giaddr, DHCP_PORT),
        // The client has no address yet: broadcast, and ask relays on the way to do the same.
        Port::Dhcp => {
            reply.set_flags(Flags::new(req.flags).set_broadcast());
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        }
    };
    Ok(Answer {
        reply,
        to,
        firmware,
        boot,
        file,
    })
}

/// A UDP socket on `port` of every address, tied to one interface: broadcasts arrive only on a
/// wildcard socket, and broadcast replies must leave by the provisioning interface whatever
/// the routing table says.
pub fn bind(interface: &str, port: u16) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // The site's DHCP server may share the host and port 67; both then see each broadcast.
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.set_recv_buffer_size(crate::BURST_BUFFER)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(socket.into())
}

/// Answers packets on `socket` until the future is dropped.
pub async fn serve(
    socket: UdpSocket,
    port: Port,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    journeys: Arc<Journeys>,
) {
    let mut buf = vec![0u8; 1500];
    let port_label = if port == Port::Dhcp { "67" } else { "4011" };
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok((len, SocketAddr::V4(from))) => (len, from),
            Ok(_) => continue,
            Err(e) => {
                metrics.error(crate::metrics::ErrorKind::DhcpRecv);
                tracing::warn!(port = port.number(), error = %e, "dhcp receive");
                continue;
            }
        };
        match answer(&buf[..len], port, from, &config) {
            Ok(a) => {
                let mac = a
                    .reply
                    .chaddr()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                match socket.send_to(&a.bytes(), a.to).await {
                    Ok(_) => {
                        metrics
                            .dhcp_answers
                            .inc(&[port_label, a.firmware.name(), a.boot.name()]);
                        tracing::info!(
                            port = port.number(), %mac, firmware = a.firmware.name(),
                            boot = a.boot.name(), file = %a.file, to = %a.to,
                            "proxydhcp answered"
                        );
                        if let Some(mac) = Mac::parse(&mac) {
                            // A request from an address (port 4011) ties that address to the
                            // machine; a DISCOVER comes from 0.0.0.0.
                            let from =
                                Some(IpAddr::V4(*from.ip())).filter(|ip| !ip.is_unspecified());
                            journeys.dhcp_answered(
                                mac,
                                None,
                                from,
                                a.boot == Boot::Script,
                                format!(
                                    "port {port_label}, {} firmware, {}: {}",
                                    a.firmware.name(),
                                    a.boot.name(),
                                    a.file
                                ),
                            );
                        }
                    }
                    Err(e) => {
                        metrics.error(crate::metrics::ErrorKind::DhcpSend);
                        tracing::warn!(port = port.number(), %mac, to = %a.to, error = %e, "dhcp send");
                    }
                }
            }
            Err(why) => {
                metrics.dhcp_ignored.inc(&[why.reason()]);
                tracing::debug!(port = port.number(), %from, "dhcp packet ignored: {why}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_reason_is_known_to_the_metrics() {
        use super::*;
        let reasons: Vec<&str> = [
            Ignored::Malformed(request::Malformed::Cookie),
            Ignored::NotRequest,
            Ignored::NotPxe,
            Ignored::NoArch,
            Ignored::UnsupportedArch(99),
            Ignored::MessageType {
                message_type: None,
                port: 67,
            },
            Ignored::NoHttp,
            Ignored::NoTftp,
            Ignored::NoBinary(Firmware::Bios),
        ]
        .iter()
        .map(Ignored::reason)
        .collect();
        let known: Vec<&str> = IGNORED_REASONS.iter().map(|r| r[0]).collect();
        assert_eq!(reasons, known);
    }

    use super::*;

    #[test]
    fn arch_codes_map_to_firmware() {
        assert_eq!(Firmware::from_arch(0), Some((Firmware::Bios, false)));
        assert_eq!(Firmware::from_arch(6), Some((Firmware::EfiI386, false)));
        assert_eq!(Firmware::from_arch(7), Some((Firmware::EfiX64, false)));
        assert_eq!(Firmware::from_arch(9), Some((Firmware::EfiX64, false)));
        assert_eq!(Firmware::from_arch(11), Some((Firmware::EfiArm64, false)));
        assert_eq!(Firmware::from_arch(16), Some((Firmware::EfiX64, true)));
        assert_eq!(Firmware::from_arch(10), None);
    }
}
