//! `Type=notify`: the real binary tells the notify socket READY=1 only once every listener is
//! bound, with what it serves in STATUS=, and STOPPING=1 on SIGTERM. The test binds the socket
//! systemd would, on loopback.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_flint-boot");

/// A loopback address of its own per test process, so parallel test binaries do not collide.
fn loopback() -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, 90 + (pid % 60) as u8, (pid / 60 % 250) as u8, 1)
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind((loopback(), 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind((loopback(), 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The notify socket, and `serve` started with it, HTTP on `http` and TFTP on `tftp`.
fn start(dir: &Path, http: SocketAddr, tftp: SocketAddr) -> (UnixDatagram, Child) {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("tftp")).unwrap();
    std::fs::write(dir.join("tftp/ipxe.efi"), "ipxe.efi").unwrap();
    std::fs::write(
        dir.join("inventory.json"),
        r#"{"profiles": {"w": {"kernel": "k"}}, "unknown": {"policy": "default", "profile": "w"}}"#,
    )
    .unwrap();
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let child = Command::new(BIN)
        .arg("serve")
        .args(["--http", &http.to_string(), "--tftp", &tftp.to_string()])
        .args(["--inventory", "inventory.json", "--images", "images"])
        .args(["--tftp-root", "tftp"])
        .current_dir(dir)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    (socket, child)
}

fn recv(socket: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Stops the child by its PID whatever happened, so a failed assertion leaves nothing running.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ready_comes_once_every_listener_answers_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (http, tftp) = (free_tcp(), free_udp());
    let (socket, child) = start(dir.path(), http, tftp);
    let mut child = Reap(child);
    let log = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();

    let ready = recv(&socket).unwrap_or_else(|| panic!("no notification in 10 s:\n{}", log()));
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready
            .lines()
            .any(|l| l == format!("STATUS=serving HTTP on {http}, TFTP on {tftp}")),
        "{ready:?}"
    );

    // At once, with no retry: both services answer.
    let mut s = TcpStream::connect(http).expect("HTTP accepts right after READY=1");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /firmware/ipxe.efi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\nipxe.efi"), "{response}");
    let client = UdpSocket::bind((loopback(), 0)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(b"\0\x01ipxe.efi\0octet\0", tftp).unwrap();
    let mut buf = [0u8; 600];
    let (n, _) = client
        .recv_from(&mut buf)
        .expect("TFTP answers right after READY=1");
    assert_eq!(&buf[..4], b"\0\x03\0\x01", "DATA block 1");
    assert_eq!(&buf[4..n], b"ipxe.efi");

    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let stopping = recv(&socket).expect("a notification on SIGTERM");
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert_eq!(child.0.wait().unwrap().code(), Some(0), "{}", log());
}

#[test]
fn no_ready_while_a_listener_cannot_be_bound() {
    let dir = tempfile::tempdir().unwrap();
    // HTTP binds; TFTP, bound after it, finds its port taken.
    let taken = UdpSocket::bind((loopback(), 0)).unwrap();
    let tftp = taken.local_addr().unwrap();
    let (socket, child) = start(dir.path(), free_tcp(), tftp);
    let mut child = Reap(child);
    let status = child.0.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert_eq!(status.code(), Some(69), "{log}");
    assert!(log.contains(&format!("bind TFTP {tftp}")), "{log}");
    socket.set_nonblocking(true).unwrap();
    while let Some(message) = recv(&socket) {
        assert!(
            !message.lines().any(|l| l == "READY=1"),
            "READY=1 though TFTP never listened: {message:?}"
        );
    }
}

/// In the journal (`$JOURNAL_STREAM` names stderr), each line starts with its syslog priority, so
/// `journalctl -p err -u flint-boot` finds the failure; `FLINT_LOG_FORMAT=json` writes objects.
#[test]
fn journal_lines_carry_their_priority_and_json_lines_their_level() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let render = |env: &[(&str, String)], stderr: Stdio| {
        let mut command = Command::new(BIN);
        command
            .args(["render", "--inventory"])
            .arg(&missing)
            .arg(dir.path().join("out"))
            .env_remove("FLINT_LOG")
            .env_remove("FLINT_LOG_FORMAT")
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        command.status().unwrap()
    };

    let path = dir.path().join("journal");
    let file = std::fs::File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let status = render(&[("JOURNAL_STREAM", stream)], Stdio::from(file));
    assert_ne!(status.code(), Some(0));
    let log = std::fs::read_to_string(&path).unwrap();
    let missing_text = missing.display().to_string();
    // The error and each of its problems, a line each, all at priority 3 (err).
    assert!(
        log.lines()
            .any(|l| l.starts_with("<3>ERROR inventory rejected")),
        "the failure at priority 3, without a timestamp: {log:?}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("<3>") && l.contains(&missing_text)),
        "the problem's own line at priority 3: {log:?}"
    );
    assert!(
        log.lines().all(|l| l.starts_with('<')),
        "every line with its priority: {log:?}"
    );

    let path = dir.path().join("json");
    let file = std::fs::File::create(&path).unwrap();
    render(
        &[("FLINT_LOG_FORMAT", "json".to_owned())],
        Stdio::from(file),
    );
    let log = std::fs::read_to_string(&path).unwrap();
    let failure = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
        })
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR object: {log:?}"));
    assert!(
        failure["message"].as_str().unwrap().contains(&missing_text),
        "{failure}"
    );
    assert!(failure["timestamp"].is_string(), "{failure}");
}
