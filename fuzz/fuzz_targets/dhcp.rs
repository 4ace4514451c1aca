//! The whole ProxyDHCP decision on any packet, on either port: never a panic, and every answer
//! is a well-formed reply to a PXE client carrying the file it decided on.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;

use flint_boot::dhcp::{self, Binaries, Config, Port};
use libfuzzer_sys::fuzz_target;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config {
        server_ip: Ipv4Addr::new(10, 0, 200, 2),
        script_url: "http://10.0.200.2:8080/boot.ipxe".into(),
        firmware_url: Some("http://10.0.200.2:8080/firmware".into()),
        tftp: true,
        binaries: Binaries {
            bios: Some("undionly.kpxe".into()),
            efi_i386: Some("ipxe-i386.efi".into()),
            efi_x64: Some("ipxe.efi".into()),
            efi_arm64: Some("ipxe-arm64.efi".into()),
        },
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, packet)) = data.split_first() else {
        return;
    };
    let port = if selector & 1 == 0 {
        Port::Dhcp
    } else {
        Port::Pxe
    };
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 200, 77), 68);
    let Ok(answer) = dhcp::answer(packet, port, from, config()) else {
        return;
    };
    let request = dhcp::parse_request(packet).expect("an answered packet parses");
    let class = request
        .options
        .get(&60)
        .expect("answered without option 60");
    assert!(class.starts_with(b"PXEClient") || class.starts_with(b"HTTPClient"));
    assert!(
        request.options.contains_key(&93),
        "answered without option 93"
    );

    let bytes = answer.bytes();
    let reply = dhcp::parse_request(&bytes).expect("our reply parses");
    assert_eq!(reply.op, 2, "a BOOTREPLY");
    assert_eq!(reply.xid, request.xid);
    assert_eq!(reply.chaddr, request.chaddr);
    let file = &bytes[108..236];
    let end = file
        .iter()
        .position(|&b| b == 0)
        .expect("file field NUL-terminated");
    assert_eq!(&file[..end], answer.file.as_bytes());
    assert!(!answer.file.is_empty(), "file always set");
    assert_eq!(
        reply.options.get(&54).map(Vec::as_slice),
        Some(&[10, 0, 200, 2][..])
    );
    match port {
        Port::Pxe => assert_eq!(answer.to, from),
        Port::Dhcp if !request.giaddr.is_unspecified() => {
            assert_eq!(answer.to, SocketAddrV4::new(request.giaddr, 67))
        }
        Port::Dhcp => assert_eq!(answer.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)),
    }
});
