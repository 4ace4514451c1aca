//! ProxyDHCP through the real binary, across a veth link between two network namespaces,
//! with requests built by dhcproto as firmware sends them: broadcast DISCOVERs on port 67,
//! unicast REQUESTs on port 4011, relayed requests, the odd cases of real ROMs, and packets
//! that are broken on purpose. Needs root (network namespaces).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::dhcp::{self, field, file, guid, opt, recv, send_broadcast};
use common::netns::{CLIENT_IFACE, CLIENT_IP, Link, SERVER_IFACE, SERVER_IP};
use dhcproto::Encodable;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode, UnknownOption};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01];
const HTTP_PORT: u16 = 8080;
/// How long to wait for an answer that must not come.
const SILENCE: Duration = Duration::from_millis(400);

struct Server {
    link: Link,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::with_binaries(&[
            "undionly.kpxe",
            "ipxe.efi",
            "ipxe-i386.efi",
            "ipxe-arm64.efi",
        ])
    }

    /// A server whose TFTP root holds only `binaries`.
    fn with_binaries(binaries: &[&str]) -> Server {
        Server::spawn(binaries, true)
    }

    /// A server for UEFI HTTP Boot only: its iPXE binaries at /firmware/, no TFTP.
    fn without_tftp() -> Server {
        Server::spawn(&["undionly.kpxe", "ipxe.efi"], false)
    }

    fn spawn(binaries: &[&str], with_tftp: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(root.join("tftp")).unwrap();
        for f in binaries {
            std::fs::write(root.join("tftp").join(f), f).unwrap();
        }
        std::fs::write(
            root.join("inventory.json"),
            r#"{"profiles": {"w": {"kernel": "k"}}, "unknown": {"policy": "default", "profile": "w"}}"#,
        )
        .unwrap();
        let mut link = Link::new();
        let p = |name: &str| root.join(name).to_str().unwrap().to_owned();
        let http = format!("{SERVER_IP}:{HTTP_PORT}");
        let tftp = format!("{SERVER_IP}:69");
        let (inventory, images, tftp_root) = (p("inventory.json"), p("images"), p("tftp"));
        let mut args = vec![
            "serve",
            "--http",
            &http,
            "--inventory",
            &inventory,
            "--images",
            &images,
            "--tftp-root",
            &tftp_root,
            "--proxy-dhcp",
            SERVER_IFACE,
        ];
        if with_tftp {
            args.extend(["--tftp", &tftp]);
        }
        link.spawn_server(
            env!("CARGO_BIN_EXE_flint-boot"),
            &args,
            std::fs::File::create(root.join("stderr")).unwrap(),
        );
        let server = Server { link, dir };
        // Without TFTP, only an HTTP Boot client gets an answer to wait for.
        server.wait_ready(&if with_tftp {
            discover(0)
        } else {
            http_boot_discover()
        });
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap()
    }

    fn wait_ready(&self, probe: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = self.link.in_client(|| {
            let sock = client_socket(68);
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            while Instant::now() < deadline {
                send_broadcast(&sock, probe);
                if recv(&sock).is_some() {
                    return true;
                }
            }
            false
        });
        assert!(ready, "no ProxyDHCP answer in 10 s; log:\n{}", self.log());
    }

    /// Sends `packet` as a PXE client would (broadcast from port 68) and returns the answer.
    fn exchange(&self, packet: &[u8]) -> Option<(Message, SocketAddr)> {
        self.link.in_client(|| {
            let sock = client_socket(68);
            send_broadcast(&sock, packet);
            recv(&sock)
        })
    }

    fn metrics(&self) -> String {
        self.get("/metrics")
    }

    /// The whole HTTP response (status line, headers, body) to a GET of `path`.
    fn get(&self, path: &str) -> String {
        self.link.in_client(|| {
            let mut s = TcpStream::connect((SERVER_IP, HTTP_PORT)).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    }
}

/// A UDP socket in the client namespace on `port`, tied to the client's interface so
/// broadcasts leave through the link.
fn client_socket(port: u16) -> UdpSocket {
    dhcp::client_socket(CLIENT_IFACE, port)
}

fn bound(addr: SocketAddrV4) -> UdpSocket {
    dhcp::bound(CLIENT_IFACE, addr)
}

/// A request as a PXE ROM sends it: message type, option 60, option 93 and option 97.
fn pxe_request(msg: MessageType, arch: u16, class: &str) -> Message {
    dhcp::pxe_request(&MAC, msg, arch, class)
}

fn discover(arch: u16) -> Vec<u8> {
    dhcp::discover(&MAC, arch)
}

fn http_boot_discover() -> Vec<u8> {
    dhcp::http_boot_discover(&MAC)
}

#[test]
fn bios_discover_gets_an_offer_without_an_address_and_undionly() {
    let server = Server::start();
    let started = Instant::now();
    let (offer, from) = server.exchange(&discover(0)).expect("an offer");
    let took = started.elapsed();
    assert_eq!(from, SocketAddr::from((SERVER_IP, 67)));
    assert_eq!(offer.opcode(), Opcode::BootReply);
    assert_eq!(offer.xid(), 0x1234_5678);
    assert_eq!(offer.chaddr(), &MAC);
    assert_eq!(
        offer.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "a proxy gives no address"
    );
    assert_eq!(offer.siaddr(), SERVER_IP);
    assert!(offer.flags().broadcast());
    assert_eq!(file(&offer), "undionly.kpxe");
    assert_eq!(field(offer.sname()), SERVER_IP.to_string());
    let o = offer.opts();
    assert_eq!(o.msg_type(), Some(MessageType::Offer));
    assert_eq!(
        opt(&offer, 54),
        Some(&DhcpOption::ServerIdentifier(SERVER_IP))
    );
    assert_eq!(
        opt(&offer, 60),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(
        opt(&offer, 43),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );
    assert_eq!(
        opt(&offer, 97),
        Some(&DhcpOption::ClientMachineIdentifier(guid()))
    );
    for absent in [1u8, 3, 51] {
        assert!(
            opt(&offer, absent).is_none(),
            "option {absent} in a proxy offer"
        );
    }
    // iPXE waits only about 2 s for proxy offers: the answer must be immediate.
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    let log = server.log();
    assert!(
        log.contains("proxydhcp answered port=67 mac=52:54:00:aa:bb:01 firmware=\"bios\" boot=\"tftp\" file=undionly.kpxe"),
        "{log}"
    );
}

#[test]
fn option_93_picks_the_binary_for_each_firmware() {
    let server = Server::start();
    let http_ipxe = format!("http://{SERVER_IP}:{HTTP_PORT}/firmware/ipxe.efi");
    for (arch, class, want, want_class) in [
        (0, "PXEClient", "undionly.kpxe", "PXEClient"),
        (6, "PXEClient", "ipxe-i386.efi", "PXEClient"),
        (7, "PXEClient", "ipxe.efi", "PXEClient"),
        (9, "PXEClient", "ipxe.efi", "PXEClient"),
        (11, "PXEClient", "ipxe-arm64.efi", "PXEClient"),
        (16, "HTTPClient", http_ipxe.as_str(), "HTTPClient"),
    ] {
        let packet = pxe_request(MessageType::Discover, arch, class)
            .to_vec()
            .unwrap();
        let (offer, _) = server
            .exchange(&packet)
            .unwrap_or_else(|| panic!("no offer for arch {arch}"));
        assert_eq!(file(&offer), want, "arch {arch}");
        assert_eq!(
            opt(&offer, 60),
            Some(&DhcpOption::ClassIdentifier(want_class.as_bytes().to_vec())),
            "arch {arch}"
        );
        assert_eq!(
            opt(&offer, 43).is_some(),
            class == "PXEClient",
            "option 43 only for PXE, arch {arch}"
        );
    }
    // ARM32 has no iPXE build here: stay silent so another server can answer it.
    assert!(server.exchange(&discover(10)).is_none());
    assert!(
        server
            .metrics()
            .contains("flint_boot_dhcp_ignored_total{reason=\"unsupported-arch\"} 1"),
        "{}",
        server.metrics()
    );
}

#[test]
fn a_client_already_in_ipxe_gets_the_script_url_not_ipxe_again() {
    let server = Server::start();
    let script = format!("http://{SERVER_IP}:{HTTP_PORT}/boot.ipxe");
    // iPXE's own user class, as iPXE sends it (no RFC 3004 length byte).
    let (offer, _) = server.exchange(&dhcp::ipxe_discover(&MAC, 7)).unwrap();
    assert_eq!(file(&offer), script);
    // A NIC ROM that runs iPXE without the user class (FlexBoot) still sends option 175.
    let mut m = pxe_request(MessageType::Discover, 0, "PXEClient");
    m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
        OptionCode::from(175),
        vec![19, 1, 1],
    )));
    let (offer, _) = server.exchange(&m.to_vec().unwrap()).unwrap();
    assert_eq!(file(&offer), script);
    let metrics = server.metrics();
    assert!(
        metrics.contains(
            "flint_boot_dhcp_answers_total{port=\"67\",arch=\"efi-x64\",boot=\"script\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn missing_option_97_is_answered_without_it() {
    let server = Server::start();
    let mut m = pxe_request(MessageType::Discover, 0, "PXEClient");
    m.opts_mut().remove(OptionCode::ClientMachineIdentifier);
    let (offer, _) = server.exchange(&m.to_vec().unwrap()).unwrap();
    assert_eq!(file(&offer), "undionly.kpxe");
    assert!(opt(&offer, 97).is_none());
}

#[test]
fn port_4011_request_gets_a_unicast_ack() {
    let server = Server::start();
    let (ack, from) = server.link.in_client(|| {
        let sock = bound(SocketAddrV4::new(CLIENT_IP, 68));
        let mut m = pxe_request(MessageType::Request, 7, "PXEClient");
        m.set_ciaddr(CLIENT_IP);
        sock.send_to(&m.to_vec().unwrap(), (SERVER_IP, 4011))
            .unwrap();
        recv(&sock).expect("an ACK from port 4011")
    });
    assert_eq!(from, SocketAddr::from((SERVER_IP, 4011)));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(file(&ack), "ipxe.efi");
    assert_eq!(
        opt(&ack, 97),
        Some(&DhcpOption::ClientMachineIdentifier(guid()))
    );
    assert_eq!(ack.ciaddr(), CLIENT_IP);
    // A DISCOVER has no business on 4011, nor a REQUEST on 67 (that one is for the DHCP server).
    let silent = server.link.in_client(|| {
        let sock = bound(SocketAddrV4::new(CLIENT_IP, 68));
        sock.send_to(&discover(7), (SERVER_IP, 4011)).unwrap();
        sock.set_read_timeout(Some(SILENCE)).unwrap();
        recv(&sock).is_none()
    });
    assert!(silent);
    let request = pxe_request(MessageType::Request, 7, "PXEClient")
        .to_vec()
        .unwrap();
    assert!(server.exchange(&request).is_none());
}

#[test]
fn a_relayed_discover_is_answered_through_the_relay() {
    let server = Server::start();
    let (offer, from) = server.link.in_client(|| {
        // The relay agent listens on port 67 of its own address, as dhcrelay does.
        let relay = bound(SocketAddrV4::new(CLIENT_IP, 67));
        let mut m = pxe_request(MessageType::Discover, 0, "PXEClient");
        m.set_giaddr(CLIENT_IP).set_hops(1);
        relay
            .send_to(&m.to_vec().unwrap(), (SERVER_IP, 67))
            .unwrap();
        recv(&relay).expect("an offer sent to the relay")
    });
    assert_eq!(from, SocketAddr::from((SERVER_IP, 67)));
    assert_eq!(offer.giaddr(), CLIENT_IP);
    assert_eq!(file(&offer), "undionly.kpxe");
}

/// A DISCOVER with `extra` bytes put where its END option was (any padding after it dropped).
fn discover_ending_with(extra: &[u8]) -> Vec<u8> {
    let mut p = discover(0);
    let end = p.iter().rposition(|&b| b == 255).unwrap();
    p.truncate(end);
    p.extend_from_slice(extra);
    p
}

#[test]
fn a_well_formed_packet_with_an_option_dhcproto_cannot_decode_is_answered() {
    let mut server = Server::start();
    // Option 121 with a prefix length of 33: dhcproto's decoder panics on it; ours never
    // decodes option 121 at all.
    let packet = discover_ending_with(&[121, 5, 33, 10, 0, 0, 1, 255]);
    let (offer, _) = server.exchange(&packet).expect("an offer");
    assert_eq!(file(&offer), "undionly.kpxe");
    assert!(server.link.servers_alive());
}

#[test]
fn broken_and_foreign_packets_are_ignored_and_the_server_carries_on() {
    let mut server = Server::start();
    let good = discover(0);
    let mut short = good.clone();
    short.truncate(200);
    // The last option claims more bytes than the packet has.
    let bad_length = discover_ending_with(&[60, 200, b'P']);
    let mut long_hw = good.clone();
    long_hw[2] = 17;
    let mut no_cookie = good.clone();
    no_cookie[236] = 0;
    let mut plain = Message::new_with_id(
        1,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &MAC,
    );
    plain
        .opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    let mut no_arch = pxe_request(MessageType::Discover, 0, "PXEClient");
    no_arch
        .opts_mut()
        .remove(OptionCode::ClientSystemArchitecture);
    let mut reply = pxe_request(MessageType::Discover, 0, "PXEClient");
    reply.set_opcode(Opcode::BootReply);
    for (name, packet) in [
        ("short", short),
        ("bad option length", bad_length),
        ("hlen 17", long_hw),
        ("no cookie", no_cookie),
        ("plain DHCP client", plain.to_vec().unwrap()),
        ("no option 93", no_arch.to_vec().unwrap()),
        ("a BOOTREPLY", reply.to_vec().unwrap()),
        ("empty", Vec::new()),
    ] {
        let answered = server.link.in_client(|| {
            let sock = client_socket(68);
            sock.set_read_timeout(Some(SILENCE)).unwrap();
            send_broadcast(&sock, &packet);
            recv(&sock).is_some()
        });
        assert!(!answered, "{name}: answered");
    }
    assert!(
        server.link.servers_alive(),
        "server died:\n{}",
        server.log()
    );
    assert!(server.exchange(&good).is_some(), "no answer after the junk");
    let metrics = server.metrics();
    for (reason, n) in [
        ("malformed", 5),
        ("not-pxe", 1),
        ("no-arch", 1),
        ("not-request", 1),
    ] {
        let line = format!("flint_boot_dhcp_ignored_total{{reason=\"{reason}\"}} {n}\n");
        assert!(metrics.contains(&line), "want {line:?} in\n{metrics}");
    }
}

#[test]
fn firmware_without_a_binary_in_the_tftp_root_gets_no_answer() {
    let server = Server::with_binaries(&["undionly.kpxe", "ipxe.efi"]);
    assert!(server.exchange(&discover(11)).is_none(), "arm64 answered");
    assert!(server.exchange(&discover(6)).is_none(), "i386 EFI answered");
    assert_eq!(file(&server.exchange(&discover(7)).unwrap().0), "ipxe.efi");
    let metrics = server.metrics();
    assert!(
        metrics.contains("flint_boot_dhcp_ignored_total{reason=\"no-binary\"} 2\n"),
        "{metrics}"
    );
    let log = server.log();
    assert!(
        log.contains("firmware=\"efi-arm64\"") && log.contains("no such iPXE binary"),
        "{log}"
    );
}

#[test]
fn without_tftp_http_boot_clients_get_the_firmware_url_and_pxe_clients_no_answer() {
    let server = Server::without_tftp();
    let (offer, _) = server.exchange(&http_boot_discover()).expect("an offer");
    let url = format!("http://{SERVER_IP}:{HTTP_PORT}/firmware/ipxe.efi");
    assert_eq!(file(&offer), url);
    assert_eq!(
        opt(&offer, 60),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    // What the offer points at is there, over HTTP, with no TFTP server running.
    let response = server.get("/firmware/ipxe.efi");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\nipxe.efi"), "{response}");

    // A client already in iPXE needs no TFTP either.
    let (offer, _) = server
        .exchange(&dhcp::ipxe_discover(&MAC, 7))
        .expect("an offer");
    assert_eq!(
        file(&offer),
        format!("http://{SERVER_IP}:{HTTP_PORT}/boot.ipxe")
    );

    // PXE clients would fetch iPXE over TFTP: left to another server.
    assert!(server.exchange(&discover(0)).is_none(), "BIOS answered");
    assert!(server.exchange(&discover(7)).is_none(), "UEFI PXE answered");
    let metrics = server.metrics();
    assert!(
        metrics.contains("flint_boot_dhcp_ignored_total{reason=\"no-tftp\"} 2\n"),
        "{metrics}"
    );
    let log = server.log();
    assert_eq!(log.matches("no --tftp: PXE clients").count(), 1, "{log}");
}
