//! iPXE's HTTP client: one keep-alive HTTP/1.1 connection per server, URLs resolved as iPXE
//! resolves them, bodies of images dropped in the kernel rather than copied.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::shared::Shared;

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

/// `http://host:port/path?query` as (host:port, /path?query).
pub fn split_url(url: &str) -> Result<(String, String), String> {
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
pub fn resolve(base: &str, rel: &str) -> String {
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
pub struct Http {
    pub auth: String,
    pub conn: Option<BufReader<TcpStream>>,
}

impl Http {
    /// GETs `path`; keeps the body (`keep`) or only counts it. Returns status, body, length.
    pub async fn get(
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
