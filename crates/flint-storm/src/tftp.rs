//! The firmware's TFTP client: the iPXE binary read as a PXE ROM (iPXE's timer) or EDK2 reads
//! it, EDK2's tsize probe included, failing where the firmware gives up.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::dhcp::field;
use crate::machine::{Firmware, Machine};
use crate::shared::Shared;

/// iPXE's retransmission timer (src/net/retry.c): DEFAULT_MIN_TIMEOUT 1/4 s, DEFAULT_MAX_TIMEOUT 10 s.
const IPXE_MIN_TIMEOUT: Duration = Duration::from_millis(250);
const IPXE_MAX_TIMEOUT: Duration = Duration::from_secs(10);
/// EDK2's PXE TFTP (NetworkPkg/UefiPxeBcDxe/PxeBcImpl.h): PXEBC_MTFTP_TIMEOUT 4 s,
/// PXEBC_MTFTP_RETRIES 6, handed to Mtftp4 as its timeout and try count.
const EDK2_TFTP_TIMEOUT: Duration = Duration::from_secs(4);
const EDK2_TFTP_TRIES: u32 = 6;

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
pub async fn fetch_binary(
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
