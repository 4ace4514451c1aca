//! TFTP wire format: parsing requests and ACK/ERROR, building DATA, OACK and ERROR.

/// Opcodes from RFC 1350 and RFC 2347 (OACK).
pub const RRQ: u16 = 1;
pub const WRQ: u16 = 2;
pub const DATA: u16 = 3;
pub const ACK: u16 = 4;
pub const ERROR: u16 = 5;
pub const OACK: u16 = 6;

/// Error codes from RFC 1350 and RFC 2347 (8: option negotiation refused).
pub const ERR_UNDEFINED: u16 = 0;
pub const ERR_NOT_FOUND: u16 = 1;
pub const ERR_ACCESS: u16 = 2;
pub const ERR_ILLEGAL_OP: u16 = 4;
pub const ERR_OPTIONS: u16 = 8;

/// A read or write request; option names are lower-cased because RFC 2347 makes them
/// case-insensitive, and order is kept so the OACK can follow the client's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub write: bool,
    pub filename: String,
    pub mode: String,
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Request(Request),
    Ack(u16),
    Error(u16, String),
    /// Anything a server does not expect from a client (DATA, OACK, unknown opcodes).
    Other(u16),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("packet too short")]
    Short,
    #[error("string field not NUL-terminated")]
    Unterminated,
    #[error("string field is not UTF-8")]
    NotUtf8,
}

fn take_str<'a>(buf: &mut &'a [u8]) -> Result<&'a str, ParseError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(ParseError::Unterminated)?;
    let s = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::NotUtf8)?;
    *buf = &buf[end + 1..];
    Ok(s)
}

pub fn parse(buf: &[u8]) -> Result<Packet, ParseError> {
    if buf.len() < 2 {
        return Err(ParseError::Short);
    }
    let op = u16::from_be_bytes([buf[0], buf[1]]);
    let mut rest = &buf[2..];
    match op {
        RRQ | WRQ => {
            let filename = take_str(&mut rest)?.to_owned();
            let mode = take_str(&mut rest)?.to_ascii_lowercase();
            let mut options = Vec::new();
            // Some clients pad the packet with trailing NULs; an empty name ends the list.
            while !rest.is_empty() {
                let name = take_str(&mut rest)?;
                if name.is_empty() {
                    break;
                }
                let value = take_str(&mut rest)?;
                options.push((name.to_ascii_lowercase(), value.to_owned()));
            }
            Ok(Packet::Request(Request {
                write: op == WRQ,
                filename,
                mode,
                options,
            }))
        }
        ACK => {
            if rest.len() < 2 {
                return Err(ParseError::Short);
            }
            Ok(Packet::Ack(u16::from_be_bytes([rest[0], rest[1]])))
        }
        ERROR => {
            if rest.len() < 2 {
                return Err(ParseError::Short);
            }
            let code = u16::from_be_bytes([rest[0], rest[1]]);
            let mut msg = &rest[2..];
            // A missing terminator is common enough in the wild not to reject the packet.
            let text = take_str(&mut msg)
                .map(str::to_owned)
                .unwrap_or_else(|_| String::from_utf8_lossy(&rest[2..]).into_owned());
            Ok(Packet::Error(code, text))
        }
        other => Ok(Packet::Other(other)),
    }
}

pub fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + msg.len());
    out.extend_from_slice(&ERROR.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
    out.push(0);
    out
}

pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut out = OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rrq_with_options() {
        let pkt = b"\0\x01ipxe.efi\0OCTET\0TSize\0\x30\0blksize\0\x31468\0";
        let Packet::Request(req) = parse(pkt).unwrap() else {
            panic!("not a request")
        };
        assert!(!req.write);
        assert_eq!(req.filename, "ipxe.efi");
        assert_eq!(req.mode, "octet");
        assert_eq!(
            req.options,
            vec![
                ("tsize".to_owned(), "0".to_owned()),
                ("blksize".to_owned(), "1468".to_owned())
            ]
        );
    }

    #[test]
    fn tolerates_trailing_padding() {
        let pkt = b"\0\x01f\0octet\0\0\0";
        assert!(matches!(parse(pkt), Ok(Packet::Request(r)) if r.options.is_empty()));
    }

    #[test]
    fn rejects_unterminated_and_short() {
        assert_eq!(parse(b"\0\x01file"), Err(ParseError::Unterminated));
        assert_eq!(parse(b"\0"), Err(ParseError::Short));
        assert_eq!(parse(b"\0\x04\0"), Err(ParseError::Short));
    }

    #[test]
    fn parses_ack_and_error() {
        assert_eq!(parse(b"\0\x04\xff\xff"), Ok(Packet::Ack(65535)));
        assert_eq!(
            parse(b"\0\x05\0\x08abort\0"),
            Ok(Packet::Error(8, "abort".to_owned()))
        );
    }
}
