//! End-to-end tests of the TFTP server: the real binary on a loopback address, driven by
//! curl, tftp-hpa and a raw UDP client.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

struct Server {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(max_transfers: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        let addr = free_addr();
        let log = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flint-boot"))
            .args(["serve", "--tftp", &addr.to_string(), "--tftp-root"])
            .arg(dir.path().join("root"))
            .args(["--tftp-max-transfers", &max_transfers.to_string()])
            .env("FLINT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server { child, addr, dir };
        server.wait_ready();
        server
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let c = Client::new(Duration::from_millis(100));
            c.send_to(&rrq("__probe__", &[]), self.addr);
            if let Some((pkt, _)) = c.try_recv() {
                assert_eq!(opcode(&pkt), ERROR);
                return;
            }
        }
        panic!("flint-boot did not answer on {}: {}", self.addr, self.log());
    }

    fn write(&self, name: &str, data: &[u8]) -> Vec<u8> {
        std::fs::write(self.root().join(name), data).unwrap();
        data.to_vec()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh 127.x.y.z per server so parallel tests never share an address.
fn free_addr() -> SocketAddr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let ip = Ipv4Addr::new(127, 100 + (pid % 100) as u8, (pid / 100 % 250) as u8, n);
    let probe = UdpSocket::bind((ip, 0)).unwrap();
    probe.local_addr().unwrap()
}

struct Client {
    sock: UdpSocket,
}

impl Client {
    fn new(timeout: Duration) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(timeout)).unwrap();
        Client { sock }
    }

    fn send_to(&self, pkt: &[u8], to: SocketAddr) {
        self.sock.send_to(pkt, to).unwrap();
    }

    fn try_recv(&self) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 70000];
        match self.sock.recv_from(&mut buf) {
            Ok((n, from)) => Some((buf[..n].to_vec(), from)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }

    fn recv(&self) -> (Vec<u8>, SocketAddr) {
        self.try_recv().expect("no packet from server in time")
    }
}

fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    request(RRQ, name, "octet", opts)
}

fn request(op: u16, name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = op.to_be_bytes().to_vec();
    for s in [name, mode]
        .into_iter()
        .chain(opts.iter().flat_map(|(k, v)| [*k, *v]))
    {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

fn ack(block: u16) -> Vec<u8> {
    let mut p = ACK.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p
}

fn opcode(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[0], p[1]])
}

fn block(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[2], p[3]])
}

fn oack_options(p: &[u8]) -> Vec<(String, String)> {
    assert_eq!(opcode(p), OACK, "expected OACK, got {p:?}");
    let parts: Vec<String> = p[2..]
        .split(|&b| b == 0)
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    // The trailing NUL leaves one empty piece at the end.
    parts[..parts.len() - 1]
        .chunks(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

fn expect_error(server: &Server, pkt: &[u8]) -> (u16, String) {
    let c = Client::new(Duration::from_secs(5));
    c.send_to(pkt, server.addr);
    let (p, _) = c.recv();
    assert_eq!(opcode(&p), ERROR, "expected ERROR, got {p:?}");
    let msg = String::from_utf8_lossy(&p[4..p.len() - 1]).into_owned();
    (block(&p), msg)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (curl and tftp-hpa must be installed)"));
    assert!(out.status.success(), "{what} failed: {out:?}");
}

fn fetch_with_clients(server: &Server, name: &str, expect: &[u8]) {
    fetch_with_curl(server, name, expect);
    fetch_with_tftp_hpa(server, name, expect);
}

fn fetch_with_curl(server: &Server, name: &str, expect: &[u8]) {
    let out = server.dir.path().join("out");
    let url = format!("tftp://{}/{name}", server.addr);
    let curl_cases: [&[&str]; 2] = [&[], &["--tftp-blksize", "1468"]];
    for extra in curl_cases {
        let _ = std::fs::remove_file(&out);
        run(
            Command::new("curl")
                .args(["-s", "--max-time", "20"])
                .args(extra)
                .arg(&url)
                .arg("-o")
                .arg(&out),
            "curl",
        );
        assert!(
            std::fs::read(&out).unwrap() == expect,
            "curl {extra:?} {name}"
        );
    }
}

fn fetch_with_tftp_hpa(server: &Server, name: &str, expect: &[u8]) {
    let out = server.dir.path().join("out");
    let _ = std::fs::remove_file(&out);
    run(
        Command::new("timeout")
            .args(["20", "tftp"])
            .arg(server.addr.ip().to_string())
            .arg(server.addr.port().to_string())
            .args(["-m", "binary", "-c", "get", name])
            .arg(&out),
        "tftp-hpa",
    );
    assert!(std::fs::read(&out).unwrap() == expect, "tftp-hpa {name}");
}

#[test]
fn curl_and_tftp_hpa_fetch_files() {
    let server = Server::start(8);
    let small = server.write("small.bin", &pattern(1000));
    // 512 × 1468 bytes: a whole number of blocks at both sizes, so an empty last block ends it.
    let exact = server.write("exact.bin", &pattern(512 * 1468));
    let empty = server.write("empty.bin", b"");
    fetch_with_clients(&server, "small.bin", &small);
    fetch_with_clients(&server, "exact.bin", &exact);
    // curl refuses an OACK with tsize=0 (its own check), so the empty file goes through tftp-hpa.
    fetch_with_tftp_hpa(&server, "empty.bin", &empty);
    assert!(server.log().contains("tftp sent"));
}

/// Receives a whole file over `c`, acknowledging each block; returns the data.
fn receive_all(c: &Client, first: (Vec<u8>, SocketAddr), blksize: usize) -> Vec<u8> {
    let (mut pkt, tid) = first;
    let mut data = Vec::new();
    let mut expect: u16 = 1;
    loop {
        assert_eq!(opcode(&pkt), DATA);
        if block(&pkt) == expect {
            data.extend_from_slice(&pkt[4..]);
            c.send_to(&ack(expect), tid);
            expect = expect.wrapping_add(1);
            if pkt.len() - 4 < blksize {
                return data;
            }
        }
        pkt = c.recv().0;
    }
}

#[test]
fn block_numbers_roll_over_past_65535() {
    let server = Server::start(8);
    let path = server.root().join("big.bin");
    let f = std::fs::File::create(&path).unwrap();
    let len: u64 = 40 * 1024 * 1024 + 5;
    f.set_len(len).unwrap();
    let c = Client::new(Duration::from_secs(5));
    let started = Instant::now();
    c.send_to(&rrq("big.bin", &[("windowsize", "16")]), server.addr);
    let (p, tid) = c.recv();
    assert_eq!(oack_options(&p), [("windowsize".into(), "16".into())]);
    c.send_to(&ack(0), tid);
    let data = receive_all(&c, c.recv(), 512);
    assert_eq!(data.len() as u64, len);
    assert!(data.iter().all(|&b| b == 0));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "too slow: {:?}",
        started.elapsed()
    );
}

#[test]
fn tsize_probe_then_error_8_ends_quietly() {
    let server = Server::start(8);
    let file = server.write("ipxe.efi", &pattern(3000));
    let c = Client::new(Duration::from_secs(5));
    c.send_to(&rrq("ipxe.efi", &[("tsize", "0")]), server.addr);
    let (p, tid) = c.recv();
    assert_eq!(oack_options(&p), [("tsize".into(), "3000".into())]);
    let mut err = ERROR.to_be_bytes().to_vec();
    err.extend_from_slice(&8u16.to_be_bytes());
    err.extend_from_slice(b"tsize probe\0");
    c.send_to(&err, tid);
    // The server must neither retransmit the OACK nor send anything else.
    let quiet = Client {
        sock: c.sock.try_clone().unwrap(),
    };
    quiet
        .sock
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    assert!(
        quiet.try_recv().is_none(),
        "server kept talking after ERROR 8"
    );
    c.send_to(&rrq("ipxe.efi", &[("blksize", "1468")]), server.addr);
    let (p, tid) = c.recv();
    assert_eq!(oack_options(&p), [("blksize".into(), "1468".into())]);
    c.send_to(&ack(0), tid);
    assert_eq!(receive_all(&c, c.recv(), 1468), file);
    let log = server.log();
    let probe_lines: Vec<&str> = log.lines().filter(|l| l.contains("after OACK")).collect();
    assert_eq!(probe_lines.len(), 1, "{log}");
    assert!(probe_lines[0].contains("DEBUG"), "{log}");
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}

#[test]
fn oack_lists_only_requested_and_accepted_options() {
    let server = Server::start(8);
    server.write("f", &pattern(5000));
    let c = Client::new(Duration::from_secs(5));
    c.send_to(
        &rrq(
            "f",
            &[("BLKSIZE", "1024"), ("foo", "bar"), ("windowsize", "0")],
        ),
        server.addr,
    );
    let (p, tid) = c.recv();
    assert_eq!(oack_options(&p), [("blksize".into(), "1024".into())]);
    c.send_to(&ack(0), tid);
    assert_eq!(receive_all(&c, c.recv(), 1024), pattern(5000));

    // Larger than the path MTU allows: clamped to 1468.
    c.send_to(&rrq("f", &[("blksize", "9000")]), server.addr);
    let (p, tid) = c.recv();
    assert_eq!(oack_options(&p), [("blksize".into(), "1468".into())]);
    c.send_to(&ack(0), tid);
    assert_eq!(receive_all(&c, c.recv(), 1468), pattern(5000));

    // Nothing accepted: no OACK, DATA 1 straight away.
    c.send_to(&rrq("f", &[("foo", "bar")]), server.addr);
    let (p, _) = c.recv();
    assert_eq!((opcode(&p), block(&p)), (DATA, 1));
}

#[test]
fn windowsize_sends_a_window_before_any_ack() {
    let server = Server::start(8);
    server.write("w", &pattern(512 * 10));
    let c = Client::new(Duration::from_secs(5));
    c.send_to(&rrq("w", &[("windowsize", "4")]), server.addr);
    let (p, tid) = c.recv();
    assert_eq!(oack_options(&p), [("windowsize".into(), "4".into())]);
    c.send_to(&ack(0), tid);
    for n in 1..=4 {
        let (p, _) = c.recv();
        assert_eq!((opcode(&p), block(&p)), (DATA, n));
    }
    // Below the 1 s retransmission timeout: the window is full, nothing more may come.
    c.sock
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    assert!(c.try_recv().is_none(), "sent past the window");
    c.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // A stale ACK moves nothing; ACK 2 opens room for blocks 5 and 6.
    c.send_to(&ack(0), tid);
    c.send_to(&ack(2), tid);
    for n in 5..=6 {
        let (p, _) = c.recv();
        assert_eq!((opcode(&p), block(&p)), (DATA, n));
    }
    c.send_to(&ack(6), tid);
    for n in 7..=10 {
        let (p, _) = c.recv();
        assert_eq!((opcode(&p), block(&p)), (DATA, n));
    }
}

#[test]
fn data_is_retransmitted_when_ack_is_withheld() {
    let server = Server::start(8);
    server.write("r", &pattern(2000));
    let c = Client::new(Duration::from_secs(5));
    c.send_to(&rrq("r", &[]), server.addr);
    let (p1, tid1) = c.recv();
    let started = Instant::now();
    let (p2, tid2) = c.recv();
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(tid1, tid2);
    assert_eq!((opcode(&p2), block(&p2)), (DATA, 1));
    assert_eq!(p1, p2);
    assert_ne!(tid1, server.addr, "transfer must use its own port");

    // Stale ACKs arriving faster than the timeout must not postpone the retransmission.
    c.send_to(&rrq("r", &[]), server.addr);
    let (_, tid) = c.recv();
    c.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    loop {
        c.send_to(&ack(0), tid);
        if let Some((p, _)) = c.try_recv() {
            assert_eq!((opcode(&p), block(&p)), (DATA, 1));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "stale ACKs held off the retransmission"
        );
    }
}

#[test]
fn refusals_carry_the_right_error_codes() {
    let server = Server::start(8);
    server.write("ok", b"fine");
    std::fs::write(server.dir.path().join("secret"), b"outside").unwrap();
    // A link out of the root in a folder anyone may write: anyone could have planted it.
    let drop = server.root().join("drop");
    std::fs::create_dir(&drop).unwrap();
    std::fs::set_permissions(&drop, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(server.dir.path().join("secret"), drop.join("link")).unwrap();
    assert_eq!(expect_error(&server, &rrq("../etc/passwd", &[])).0, 2);
    assert_eq!(expect_error(&server, &rrq("a/../../secret", &[])).0, 2);
    assert_eq!(expect_error(&server, &rrq("//etc/passwd", &[])).0, 2);
    assert_eq!(expect_error(&server, &rrq("drop/link", &[])).0, 2);
    // A single leading '/' means root-relative: this is the root's etc/passwd, which is absent.
    assert_eq!(expect_error(&server, &rrq("/etc/passwd", &[])).0, 1);
    assert_eq!(expect_error(&server, &rrq("missing.efi", &[])).0, 1);
    assert_eq!(
        expect_error(&server, &request(WRQ, "ok", "octet", &[])).0,
        2
    );
    let (code, msg) = expect_error(&server, &request(RRQ, "ok", "netascii", &[]));
    assert_eq!(code, 0);
    assert!(msg.contains("netascii"), "{msg}");
    assert_eq!(expect_error(&server, &request(RRQ, "ok", "mail", &[])).0, 4);
}

/// One client as firmware behaves: RRQ from its own port, resent on iPXE's schedule (retry.c:
/// 250 ms, doubling) until the first answer; any ERROR is the end of its boot. `stall` delays
/// the first ACK (under the server's 1 s timeout), holding its slot that long. Returns the file,
/// the RRQs sent and when the first answer came.
fn firmware_fetch(
    addr: SocketAddr,
    name: &str,
    stall: Duration,
) -> Result<(Vec<u8>, u32, Instant), String> {
    let c = Client::new(Duration::from_millis(250));
    let req = rrq(name, &[]);
    let mut wait = Duration::from_millis(250);
    let mut sent = 0;
    let first = loop {
        c.send_to(&req, addr);
        sent += 1;
        c.sock.set_read_timeout(Some(wait)).unwrap();
        if let Some(first) = c.try_recv() {
            break first;
        }
        wait = (wait * 2).min(Duration::from_secs(2));
        if sent == 30 {
            return Err(format!("no answer to {sent} RRQs"));
        }
    };
    let answered = Instant::now();
    if opcode(&first.0) == ERROR {
        return Err(format!(
            "ERROR {}: {}",
            block(&first.0),
            String::from_utf8_lossy(&first.0[4..])
        ));
    }
    c.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let tid = first.1;
    let (mut pkt, _) = first;
    let mut data = Vec::new();
    let mut expect: u16 = 1;
    loop {
        match opcode(&pkt) {
            DATA if block(&pkt) == expect => {
                data.extend_from_slice(&pkt[4..]);
                if expect == 1 {
                    std::thread::sleep(stall);
                }
                c.send_to(&ack(expect), tid);
                expect = expect.wrapping_add(1);
                if pkt.len() - 4 < 512 {
                    return Ok((data, sent, answered));
                }
            }
            DATA => {}
            op => return Err(format!("opcode {op} during the transfer")),
        }
        let (p, from) = c.recv();
        // A second transfer for a retransmitted RRQ would come from another port.
        if from != tid {
            return Err(format!("a second transfer from {from} (first {tid})"));
        }
        pkt = p;
    }
}

#[test]
fn requests_beyond_max_transfers_wait_instead_of_error() {
    // Two clients hold the 2 slots for 700 ms; 22 more ask meanwhile and must wait,
    // retransmitting their RRQs as they do.
    let server = Server::start(2);
    let data = server.write("f", &pattern(100 * 1024));
    let addr = server.addr;
    let stall = Duration::from_millis(700);
    let started = Instant::now();
    let mut clients: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || firmware_fetch(addr, "f", stall)))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    clients.extend(
        (0..22).map(|_| std::thread::spawn(move || firmware_fetch(addr, "f", Duration::ZERO))),
    );
    let mut retransmitted = 0;
    for (i, c) in clients.into_iter().enumerate() {
        let (got, sent, answered) = c
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
        assert!(got == data, "a client got {} bytes", got.len());
        if sent > 1 {
            retransmitted += 1;
        }
        // Two transfers at most: the others got nothing while the two holders stalled.
        if i >= 2 {
            let after = answered - started;
            assert!(
                after >= Duration::from_millis(600),
                "client {i} answered after {after:?}"
            );
        }
    }
    // The queue was used, and its retransmitted RRQs started no second transfer.
    assert!(
        retransmitted > 0,
        "no client had to wait: the test did not queue"
    );
    // The server logs a transfer once the client's last ACK is in, which can be a moment after
    // the client is done.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.log().matches("tftp sent").count() < 24 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        server.log().matches("tftp sent").count(),
        24,
        "{}",
        server.log()
    );
}

#[test]
fn sigterm_exits_zero() {
    let mut server = Server::start(8);
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_duplicate_option_is_error_8_not_an_oack_that_lies() {
    let server = Server::start(8);
    server.write("f", &pattern(5000));
    let c = Client::new(Duration::from_secs(5));
    // Option names are case-insensitive (RFC 2347): these are one option given twice.
    c.send_to(
        &rrq("f", &[("BLKSIZE", "1024"), ("blksize", "512")]),
        server.addr,
    );
    let (p, _) = c.recv();
    assert_eq!(
        (opcode(&p), block(&p)),
        (ERROR, 8),
        "expected ERROR 8, got {p:?}"
    );
    assert!(String::from_utf8_lossy(&p).contains("blksize"), "{p:?}");
}

#[test]
fn a_client_asking_timeout_255_that_never_acks_frees_its_slot_within_seconds() {
    let server = Server::start(1);
    let data = server.write("f", &pattern(5000));
    let silent = Client::new(Duration::from_secs(5));
    silent.send_to(&rrq("f", &[("timeout", "255")]), server.addr);
    let (first, _) = silent.recv();
    // The silent client holds the only slot; the next one waits for it, retransmitting.
    let started = Instant::now();
    let (got, _, answered) =
        firmware_fetch(server.addr, "f", Duration::ZERO).unwrap_or_else(|e| panic!("{e}"));
    assert!(got == data);
    let waited = answered - started;
    assert!(
        waited < Duration::from_secs(12),
        "the slot was held {waited:?}\n{}",
        server.log()
    );
    // RFC 2349 lets the server only echo the client's timeout or leave it out.
    if opcode(&first) == OACK {
        assert!(
            !oack_options(&first).iter().any(|(k, _)| k == "timeout"),
            "timeout 255 accepted: {first:?}"
        );
    }
}

#[test]
fn a_client_that_acks_just_before_each_timeout_is_cut_off() {
    let server = Server::start(1);
    // 100 blocks; one ACK every 900 ms, each inside the server's 1 s timeout, would hold the
    // slot for 90 s.
    server.write("f", &pattern(512 * 100));
    let c = Client::new(Duration::from_secs(5));
    c.send_to(&rrq("f", &[]), server.addr);
    let started = Instant::now();
    let ended = loop {
        let (p, tid) = c.recv();
        if opcode(&p) == ERROR {
            break Instant::now();
        }
        assert_eq!(opcode(&p), DATA);
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "still sending after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(900));
        c.send_to(&ack(block(&p)), tid);
    };
    let took = ended - started;
    assert!(took < Duration::from_secs(30), "cut off after {took:?}");
    assert!(
        server.log().contains("tftp transfer too slow"),
        "{}",
        server.log()
    );
}
