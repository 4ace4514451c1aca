//! The firmware's DHCP client: the DISCOVER a PXE ROM and then iPXE broadcast, boot server
//! discovery on port 4011 when an offer names no file, each on its firmware's schedule, and the
//! one socket on port 68 that hands every answer to the machine waiting for it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dhcproto::v4::{
    Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::machine::Machine;
use crate::shared::Shared;

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

impl Machine {
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

/// A NUL-terminated field (an offer's `file`, a TFTP ERROR's message) as text.
pub fn field(raw: Option<&[u8]>) -> String {
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
pub async fn dhcp_dispatch(shared: Arc<Shared>) {
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
pub async fn proxy_offer(shared: &Shared, m: &mut Machine, ipxe: bool) -> Result<Message, String> {
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
pub fn check_offer(
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

pub fn dhcp_socket(iface: &str) -> std::io::Result<UdpSocket> {
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
