//! Reading a DHCP request from the wire.
//!
//! Requests are read here and not by dhcproto's decoder: that decoder panics on some malformed
//! input (a client hardware address length over 16, a classless route with a prefix over 32),
//! and one hostile packet must not take the boot server down. Only the fields and options a
//! ProxyDHCP decision needs are kept; replies are still built with dhcproto.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The fixed BOOTP header, before the magic cookie.
const HEADER: usize = 236;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
const PAD: u8 = 0;
const END: u8 = 255;

pub const BOOT_REQUEST: u8 = 1;

/// Why a packet could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than a DHCP header ({0} bytes)")]
    Short(usize),
    #[error("no DHCP magic cookie")]
    Cookie,
    #[error("hardware address length {0} over 16")]
    HardwareLength(u8),
    #[error("option {code} claims {len} bytes past the end of the packet")]
    OptionLength { code: u8, len: u8 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub op: u8,
    pub htype: u8,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: &'a [u8],
    /// Option code to value; a code that appears twice is one value, concatenated (RFC 3396).
    pub options: BTreeMap<u8, Vec<u8>>,
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

pub fn parse(buf: &[u8]) -> Result<Request<'_>, Malformed> {
    if buf.len() < HEADER + COOKIE.len() {
        return Err(Malformed::Short(buf.len()));
    }
    if buf[HEADER..HEADER + 4] != COOKIE {
        return Err(Malformed::Cookie);
    }
    let hlen = buf[2];
    if hlen > 16 {
        return Err(Malformed::HardwareLength(hlen));
    }
    let mut options: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    let mut rest = &buf[HEADER + 4..];
    // A missing END is tolerated: the options simply run to the end of the packet.
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            PAD => rest = tail,
            END => break,
            _ => {
                let Some((&len, tail)) = tail.split_first() else {
                    return Err(Malformed::OptionLength { code, len: 0 });
                };
                if usize::from(len) > tail.len() {
                    return Err(Malformed::OptionLength { code, len });
                }
                let (value, tail) = tail.split_at(usize::from(len));
                options.entry(code).or_default().extend_from_slice(value);
                rest = tail;
            }
        }
    }
    Ok(Request {
        op: buf[0],
        htype: buf[1],
        xid: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        flags: u16::from_be_bytes([buf[10], buf[11]]),
        ciaddr: ipv4(&buf[12..16]),
        giaddr: ipv4(&buf[24..28]),
        chaddr: &buf[28..28 + usize::from(hlen)],
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(options: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; HEADER];
        p[0] = BOOT_REQUEST;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        p[28..34].copy_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
        p.extend_from_slice(&COOKIE);
        p.extend_from_slice(options);
        p
    }

    #[test]
    fn reads_header_and_options() {
        let p = packet(&[53, 1, 1, 0, 60, 3, b'P', b'X', b'E', 255, 7, 7]);
        let r = parse(&p).unwrap();
        assert_eq!(r.xid, 0xdead_beef);
        assert_eq!(r.chaddr, &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(r.options[&53], vec![1]);
        assert_eq!(r.options[&60], b"PXE".to_vec());
        assert_eq!(r.options.len(), 2, "nothing after END is read");
    }

    #[test]
    fn concatenates_split_options() {
        let p = packet(&[43, 2, 1, 2, 43, 1, 3]);
        let r = parse(&p).unwrap();
        assert_eq!(r.options[&43], vec![1, 2, 3]);
    }

    #[test]
    fn rejects_what_cannot_be_read() {
        assert_eq!(parse(&[1; 100]), Err(Malformed::Short(100)));
        let mut p = packet(&[]);
        p[HEADER] = 0;
        assert_eq!(parse(&p), Err(Malformed::Cookie));
        let mut p = packet(&[]);
        p[2] = 17;
        assert_eq!(parse(&p), Err(Malformed::HardwareLength(17)));
        assert_eq!(
            parse(&packet(&[60, 9, b'P'])),
            Err(Malformed::OptionLength { code: 60, len: 9 })
        );
        assert_eq!(
            parse(&packet(&[60])),
            Err(Malformed::OptionLength { code: 60, len: 0 })
        );
    }
}
