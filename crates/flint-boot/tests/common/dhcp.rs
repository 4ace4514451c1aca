//! PXE clients' DHCP as the tests play it: requests built with dhcproto as firmware sends them,
//! sockets tied to one interface (so broadcasts leave by it), broadcasts to port 67, answers
//! decoded. The caller runs these on a thread inside the client's network namespace.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use socket2::{Domain, Protocol, Socket, Type};

/// The transaction ID of every request `pxe_request` builds.
pub const XID: u32 = 0x1234_5678;

/// A UDP socket on `port` of every address, tied to `iface` so broadcasts leave through it.
pub fn client_socket(iface: &str, port: u16) -> UdpSocket {
    bound(iface, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
}

/// A UDP socket on `addr`, tied to `iface`, allowed to broadcast, reading for 2 s at most.
pub fn bound(iface: &str, addr: SocketAddrV4) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(iface.as_bytes())).unwrap();
    s.bind(&SocketAddr::V4(addr).into()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.into()
}

pub fn send_broadcast(sock: &UdpSocket, packet: &[u8]) {
    sock.send_to(packet, (Ipv4Addr::BROADCAST, 67)).unwrap();
}

/// The next answer on `sock`, decoded, and where it came from; `None` once the socket's read
/// timeout passes without one.
pub fn recv(sock: &UdpSocket) -> Option<(Message, SocketAddr)> {
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).ok()?;
    Some((
        Message::decode(&mut Decoder::new(&buf[..n])).expect("our reply decodes"),
        from,
    ))
}

/// The client machine identifier (option 97) of every request: type 0 and a 16-byte GUID.
pub fn guid() -> Vec<u8> {
    let mut g = vec![0u8];
    g.extend(1..=16u8);
    g
}

/// A request as a PXE ROM with `mac` sends it: message type, option 60, option 93 and option 97,
/// the broadcast flag, transaction ID `XID`.
pub fn pxe_request(mac: &[u8; 6], msg: MessageType, arch: u16, class: &str) -> Message {
    let mut m = Message::new_with_id(
        XID,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        mac,
    );
    m.set_flags(Flags::default().set_broadcast());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(msg));
    o.insert(DhcpOption::ClassIdentifier(
        format!("{class}:Arch:{arch:05}:UNDI:003016").into_bytes(),
    ));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
        arch,
    )));
    o.insert(DhcpOption::ClientMachineIdentifier(guid()));
    m
}

/// A PXE firmware's DISCOVER (class PXEClient) for architecture `arch` (option 93).
pub fn discover(mac: &[u8; 6], arch: u16) -> Vec<u8> {
    pxe_request(mac, MessageType::Discover, arch, "PXEClient")
        .to_vec()
        .unwrap()
}

/// The DISCOVER iPXE itself sends once loaded: a PXE one with iPXE's user class (option 77,
/// without RFC 3004's length byte, as iPXE sends it).
pub fn ipxe_discover(mac: &[u8; 6], arch: u16) -> Vec<u8> {
    let mut m = pxe_request(mac, MessageType::Discover, arch, "PXEClient");
    m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    m.to_vec().unwrap()
}

/// A DISCOVER as Debian's OVMF sends it for UEFI HTTP Boot over IPv4 (class HTTPClient, arch 16).
pub fn http_boot_discover(mac: &[u8; 6]) -> Vec<u8> {
    pxe_request(mac, MessageType::Discover, 16, "HTTPClient")
        .to_vec()
        .unwrap()
}

/// A NUL-padded field as a string (dhcproto's decoder keeps the terminating NUL).
pub fn field(raw: Option<&[u8]>) -> String {
    let raw = raw.expect("field set");
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8(raw[..end].to_vec()).unwrap()
}

/// The boot file name of an answer.
pub fn file(m: &Message) -> String {
    field(m.fname())
}

pub fn opt(m: &Message, code: u8) -> Option<&DhcpOption> {
    m.opts().get(OptionCode::from(code))
}
