//! Links in the served folders, one rule everywhere: TFTP, `/firmware/`, `/images/` and the
//! start-up check of the binaries ProxyDHCP names follow a link that root (or the server's
//! user) placed on a way no one else may write, and nothing else. Tested on Debian's own `ipxe`
//! package as installed (`/usr/lib/ipxe/ipxe.efi` is a link to `/boot/ipxe.efi`), with the
//! real binary, tftp-hpa and curl on loopback. As root: only root can give a link to another
//! user, as an unprivileged user planting it would.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flint-boot");
/// Debian's `ipxe` package: the folder the README serves, and the file its link names.
const DEBIAN_ROOT: &str = "/usr/lib/ipxe";
const DEBIAN_EFI: &str = "/boot/ipxe.efi";
/// `nobody`: a user other than root and the server's.
const OTHER_USER: u32 = 65534;

const INVENTORY: &str = r#"{"profiles": {"worker": {"kernel": "debian/vmlinuz"}}}"#;

fn free_ip() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        160 + (pid % 40) as u8,
        (pid / 40 % 250) as u8,
        NEXT.fetch_add(1, Ordering::Relaxed),
    )
}

struct Server {
    child: Child,
    http: SocketAddr,
    tftp: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// flint-boot with `--tftp-root root` (so `/firmware/` too) and `--images images`.
    fn start(root: &Path, images: &Path, work: &Path) -> Server {
        let ip = free_ip();
        let http = TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap();
        let tftp = UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap();
        std::fs::write(work.join("inventory.json"), INVENTORY).unwrap();
        let log = work.join(format!("stderr-{}", ip));
        let child = Command::new(BIN)
            .arg("serve")
            .args(["--http", &http.to_string(), "--inventory"])
            .arg(work.join("inventory.json"))
            .arg("--images")
            .arg(images)
            .args(["--tftp", &tftp.to_string(), "--tftp-root"])
            .arg(root)
            .env("FLINT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            http,
            tftp,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.http_get("/healthz").1 != b"ok\n" {
            assert!(Instant::now() < deadline, "not up:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Status and body.
    fn http_get(&self, path: &str) -> (String, Vec<u8>) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--path-as-is"])
            .args(["-w", "\n%{http_code}"])
            .arg(format!("http://{}{path}", self.http))
            .output()
            .unwrap();
        let split = out.stdout.iter().rposition(|b| *b == b'\n').unwrap();
        (
            String::from_utf8(out.stdout[split + 1..].to_vec()).unwrap(),
            out.stdout[..split].to_vec(),
        )
    }

    /// The file over TFTP with tftp-hpa, or its error message.
    fn tftp_get(&self, name: &str, work: &Path) -> Result<Vec<u8>, String> {
        let out_file = work.join("tftp-out");
        let _ = std::fs::remove_file(&out_file);
        let out = Command::new("timeout")
            .args(["20", "tftp"])
            .arg(self.tftp.ip().to_string())
            .arg(self.tftp.port().to_string())
            .args(["-m", "binary", "-c", "get", name])
            .arg(&out_file)
            .stdin(Stdio::null())
            .output()
            .expect("tftp-hpa (scripts/setup.sh installs it)");
        // tftp-hpa exits 0 even on an ERROR packet; it prints the error.
        let said = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        if said.contains("Error code") || !out.status.success() {
            return Err(said);
        }
        Ok(std::fs::read(&out_file).unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn debian_efi() -> Vec<u8> {
    let link = std::fs::read_link(Path::new(DEBIAN_ROOT).join("ipxe.efi"))
        .expect("Debian's ipxe package (scripts/setup.sh installs it)");
    assert_eq!(link, Path::new(DEBIAN_EFI), "the package's layout changed");
    std::fs::read(DEBIAN_EFI).unwrap()
}

/// The README's `--tftp-root /usr/lib/ipxe`, as Debian installs it: before, the start-up check
/// and `/firmware/` followed the link to `/boot/ipxe.efi` but TFTP refused it ("outside the
/// root"), so OVMF got PXE-E23 and gave up on PXE.
#[test]
fn debian_ipxe_efi_is_served_over_tftp_and_http_as_installed() {
    let efi = debian_efi();
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let s = Server::start(Path::new(DEBIAN_ROOT), &images, work.path());
    let tftp = s.tftp_get("ipxe.efi", work.path());
    assert!(tftp.as_ref().is_ok_and(|b| *b == efi), "TFTP: {tftp:?}");
    let (code, body) = s.http_get("/firmware/ipxe.efi");
    assert_eq!(code, "200");
    assert!(body == efi, "/firmware/ipxe.efi is not {DEBIAN_EFI}");
    let undionly = std::fs::read(Path::new(DEBIAN_ROOT).join("undionly.kpxe")).unwrap();
    assert!(
        s.tftp_get("undionly.kpxe", work.path())
            .is_ok_and(|b| b == undionly)
    );
}

/// A served folder laid out as Debian's (root's link to `/boot/ipxe.efi`), plus links someone
/// else could have planted: one they own, a folder link they own, and root's own link in a
/// folder anyone may write. The first is served by TFTP, `/firmware/` and `/images/` and
/// offered by ProxyDHCP; every planted one is refused by all four.
#[test]
fn planted_links_are_refused_everywhere_and_roots_links_followed() {
    let efi = debian_efi();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    symlink(DEBIAN_EFI, root.join("ipxe.efi")).unwrap();
    symlink("/etc/shadow", root.join("shadow")).unwrap();
    lchown(root.join("shadow"), Some(OTHER_USER), Some(OTHER_USER)).unwrap();
    symlink("/etc", root.join("etc")).unwrap();
    lchown(root.join("etc"), Some(OTHER_USER), Some(OTHER_USER)).unwrap();
    let shared = root.join("drop");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    symlink("/etc/shadow", shared.join("shadow")).unwrap();
    let planted = ["shadow", "etc/shadow", "drop/shadow"];

    // The same folder as TFTP root, /firmware/ and /images/.
    let s = Server::start(&root, &root, work.path());
    let tftp = s.tftp_get("ipxe.efi", work.path());
    assert!(tftp.as_ref().is_ok_and(|b| *b == efi), "TFTP: {tftp:?}");
    for prefix in ["/firmware/", "/images/"] {
        let (code, body) = s.http_get(&format!("{prefix}ipxe.efi"));
        assert!(code == "200" && body == efi, "{prefix}ipxe.efi: {code}");
    }
    for name in planted {
        let refused = s.tftp_get(name, work.path());
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("Error code 2") && e.contains("link")),
            "TFTP {name}: {refused:?}"
        );
        for prefix in ["/firmware/", "/images/"] {
            let (code, _) = s.http_get(&format!("{prefix}{name}"));
            assert_eq!(code, "404", "{prefix}{name}");
        }
    }
    assert!(!s.log().contains("cannot open"), "{}", s.log());
    drop(s);

    // The start-up check, in a network namespace of its own so ProxyDHCP can bind ports 67
    // and 4011 on its loopback.
    let log = work.path().join("startup");
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(BIN)
        .args(["serve", "--tftp", "127.0.0.1:6969", "--tftp-root"])
        .arg(&root)
        .args([
            "--proxy-dhcp",
            "lo",
            "--public-url",
            "http://127.0.0.1:8080",
        ])
        .args(["--ipxe-efi-x64", "ipxe.efi", "--ipxe-bios", planted[0]])
        .args([
            "--ipxe-efi-i386",
            planted[1],
            "--ipxe-efi-arm64",
            planted[2],
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let read = || std::fs::read_to_string(&log).unwrap();
    while !read().contains("proxydhcp listening") {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "ProxyDHCP did not start:\n{}",
            read()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = read();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("iPXE binary not served"))
        .collect();
    assert_eq!(refused.len(), 3, "{log}");
    for (firmware, name) in [("bios", planted[0]), ("efi-i386", planted[1])] {
        assert!(
            refused
                .iter()
                .any(|l| l.contains(&format!("firmware=\"{firmware}\""))
                    && l.contains(&format!("file={}", root.join(name).display()))
                    && l.contains("link")),
            "{firmware}: {log}"
        );
    }
    assert!(!log.contains("firmware=\"efi-x64\""), "{log}");
}
