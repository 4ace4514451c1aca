//! The HTTP side of the real binary on loopback, driven by curl: scripts, images with HEAD,
//! Range and conditional requests, metrics, inventory reload, `render`, and start-up errors.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::server::{BIN, INVENTORY, Server, free_addr, kernel_bytes};

/// Replaces a file the way a careful operator (or a config tool) does: write, then rename.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scripts_by_mac_uuid_arch_and_policy() {
    let s = Server::start(&[]);
    assert_eq!(
        s.get("/boot.ipxe"),
        "#!ipxe\nchain --autofree ipxe?mac=${netX/mac:hexhyp}&uuid=${uuid}\
         &platform=${platform}&buildarch=${buildarch} || exit 1\n"
    );
    let node01 = "#!ipxe\necho flint: booting node01 profile worker\n\
                  kernel images/debian/vmlinuz initrd=initrd.img console=ttyS0 flint.profile=worker\n\
                  initrd images/debian/initrd.img\nboot\n";
    // What iPXE sends: ${netX/mac:hexhyp}, and BIOS iPXE's buildarch/platform.
    assert_eq!(
        s.get("/ipxe?mac=52-54-00-00-00-01&uuid=&platform=pcbios&buildarch=i386"),
        node01
    );
    assert_eq!(s.get("/ipxe?mac=52:54:00:00:00:01"), node01);
    assert!(
        s.get("/ipxe?mac=52-54-00-00-00-01&platform=efi&buildarch=arm64")
            .contains("kernel images/arm/vmlinuz initrd=initrd.img console=ttyS0")
    );
    // Unknown MAC, known SMBIOS UUID (any case): the node of that UUID.
    assert!(
        s.get("/ipxe?mac=02-00-00-00-00-09&uuid=4C4C4544-0042-3510-8051-B4C04F4E3232")
            .contains("booting node02 profile control-plane")
    );
    // Nobody we know: the menu policy. An unreadable UUID counts as none.
    let menu = s.get("/ipxe?mac=02-00-00-00-00-09&uuid=not-a-uuid");
    assert!(
        menu.starts_with("#!ipxe\nmenu flint: choose a profile for ${netX/mac}\n"),
        "{menu}"
    );
    assert_eq!(
        s.get("/ipxe"),
        menu,
        "no parameters at all: still the policy"
    );
    assert_eq!(s.status(&["/ipxe?mac=52-54-00-zz"]), "400");
    let head = s.curl(&["-I", "/ipxe?mac=52-54-00-00-00-01"]);
    let head = String::from_utf8(head.stdout).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: text/plain; charset=utf-8"),
        "{head}"
    );
    let metrics = s.get("/metrics");
    for line in [
        "flint_boot_scripts_served_total{profile=\"worker\"} 4\n",
        "flint_boot_scripts_served_total{profile=\"control-plane\"} 1\n",
        "flint_boot_scripts_served_total{profile=\"menu\"} 2\n",
        "flint_boot_http_requests_total{route=\"/ipxe\",status=\"400\"} 1\n",
        "flint_boot_inventory_nodes 2\n",
    ] {
        assert!(metrics.contains(line), "want {line:?} in\n{metrics}");
    }
    let log = s.log();
    assert!(
        log.contains("mac=52:54:00:00:00:01 uuid=- arch=\"x86_64\" served=\"worker\""),
        "{log}"
    );
}

#[test]
fn public_url_makes_boot_ipxe_absolute() {
    let s = Server::start(&["--public-url", "http://10.0.200.2:8080/"]);
    assert!(
        s.get("/boot.ipxe")
            .contains("chain --autofree http://10.0.200.2:8080/ipxe?mac=")
    );
}

#[test]
fn images_with_head_range_etag_and_no_escape() {
    let s = Server::start(&[]);
    let kernel = kernel_bytes();
    let full = s.curl(&["--fail", "/images/debian/vmlinuz"]);
    assert_eq!(full.stdout, kernel);

    let head = String::from_utf8(s.curl(&["-I", "/images/debian/vmlinuz"]).stdout).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-length: 300000"), "{head}");
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("an ETag")
        .trim()
        .to_owned();

    // UEFI HTTP Boot and BMC virtual media resume with Range and expect 206.
    let part = s.curl(&[
        "-r",
        "1000-1999",
        "-w",
        "%{http_code}",
        "/images/debian/vmlinuz",
    ]);
    let (body, code) = part.stdout.split_at(part.stdout.len() - 3);
    assert_eq!(code, b"206");
    assert_eq!(body, &kernel[1000..2000]);
    let tail = s.curl(&["-r", "-10", "/images/debian/vmlinuz"]);
    assert_eq!(tail.stdout, &kernel[kernel.len() - 10..]);
    assert_eq!(
        s.status(&["-r", "400000-", "/images/debian/vmlinuz"]),
        "416"
    );

    let inm = format!("If-None-Match: {etag}");
    assert_eq!(s.status(&["-H", &inm, "/images/debian/vmlinuz"]), "304");
    assert_eq!(
        s.status(&["-H", "If-None-Match: \"other\"", "/images/debian/vmlinuz"]),
        "200"
    );

    // Nothing outside the folder, however the path is spelled; no listing, no redirect.
    for path in [
        "/images/../secret.txt",
        "/images/%2e%2e/secret.txt",
        "/images/debian/../../secret.txt",
        "/images/%2F..%2Fsecret.txt",
        "/images/debian",
        "/images/debian/",
        "/images/nope",
    ] {
        let code = s.status(&["--path-as-is", path]);
        assert_eq!(code, "404", "{path}");
    }

    // Keep-alive: two requests on one connection.
    let v = s.curl(&[
        "-v",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "/images/debian/initrd.img",
        "/images/debian/initrd.img",
    ]);
    let verbose = String::from_utf8_lossy(&v.stderr);
    assert!(
        verbose.contains("Re-using existing connection") || verbose.contains("Reusing existing"),
        "{verbose}"
    );

    let metrics = s.get("/metrics");
    assert!(
        metrics.contains("flint_boot_http_requests_total{route=\"/images\",status=\"206\"} 2\n"),
        "{metrics}"
    );
    let sent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("flint_boot_http_bytes_sent_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(sent >= 300_000 + 1000 + 10 + 12, "bytes sent {sent}");
}

#[test]
fn inventory_reloads_on_change_and_sighup_and_keeps_serving_through_a_bad_one() {
    let s = Server::start(&[]);
    let node03 = "/ipxe?mac=52-54-00-00-00-03";
    assert!(s.get(node03).contains("menu flint"));

    let with_node03 = INVENTORY.replace(
        r#"{"name": "node01","#,
        r#"{"name": "node03", "mac": "52:54:00:00:00:03", "profile": "worker"},
    {"name": "node01","#,
    );
    replace(&s.inventory(), &with_node03);
    wait_for("node03 after the file changed", || {
        s.get(node03).contains("booting node03")
    });

    // A broken inventory is rejected with a line naming file, field and what was expected;
    // the previous one keeps serving.
    let broken = with_node03.replace(r#""profile": "control-plane","#, r#""profile": "gpu","#);
    replace(&s.inventory(), &broken);
    wait_for("the rejection", || {
        s.log().contains("new inventory rejected")
    });
    let log = s.log();
    assert!(log.contains("inventory.json: nodes[2].profile"), "{log}");
    assert!(log.contains("gpu"), "{log}");
    assert!(s.get(node03).contains("booting node03"));
    assert!(
        s.get("/metrics")
            .contains("flint_boot_inventory_reloads_total{result=\"rejected\"} 1\n")
    );

    // SIGHUP reads the file again even when its metadata did not change.
    replace(&s.inventory(), INVENTORY);
    wait_for("node03 gone", || s.get(node03).contains("menu flint"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for("the SIGHUP reload", || s.log().contains("why=\"SIGHUP\""));
    assert!(
        s.get("/metrics")
            .contains("flint_boot_inventory_reloads_total{result=\"ok\"} 3\n")
    );
}

fn render(inventory: &Path, dir: &Path) -> Output {
    Command::new(BIN)
        .args(["render", "--inventory"])
        .arg(inventory)
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn render_writes_exactly_what_serve_answers() {
    let s = Server::start(&[]);
    let out = s.dir.path().join("www");
    let r = render(&s.inventory(), &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let file = |rel: &str| std::fs::read_to_string(out.join(rel)).unwrap();
    // The static boot.ipxe finds the scripts by file name (see the plain-server test below).
    assert_eq!(
        file("boot.ipxe"),
        flint_ipxe::render_static_boot_ipxe(None).unwrap()
    );
    let queries = [
        ("default", ""),
        ("x86_64", "&buildarch=i386&platform=pcbios"),
        ("x86_64", "&buildarch=x86_64&platform=efi"),
        ("i386", "&buildarch=i386&platform=efi"),
        ("arm64", "&buildarch=arm64&platform=efi"),
    ];
    for (arch, q) in queries {
        for mac in ["52-54-00-00-00-01", "52-54-00-00-00-02"] {
            let served = s.get(&format!("/ipxe?mac={mac}{q}"));
            assert_eq!(file(&format!("ipxe/mac/{mac}/{arch}.ipxe")), served);
            assert_eq!(file(&format!("mac-{mac}.{arch}.ipxe")), served);
        }
        let uuid = "4c4c4544-0042-3510-8051-b4c04f4e3232";
        let served = s.get(&format!("/ipxe?mac=02-00-00-00-00-09&uuid={uuid}{q}"));
        assert_eq!(file(&format!("ipxe/uuid/{uuid}/{arch}.ipxe")), served);
        assert_eq!(file(&format!("uuid-{uuid}.{arch}.ipxe")), served);
        let unknown = s.get(&format!("/ipxe?mac=02-00-00-00-00-09{q}"));
        assert_eq!(file(&format!("ipxe/unknown/{arch}.ipxe")), unknown);
        assert_eq!(file(&format!("unknown.{arch}.ipxe")), unknown);
    }

    // Rendering again replaces the whole set: a node gone from the inventory leaves no file.
    let one_node = INVENTORY.replace(
        r#"{"name": "node01", "mac": "52:54:00:00:00:01", "profile": "worker"},"#,
        "",
    );
    replace(&s.inventory(), &one_node);
    let r = render(&s.inventory(), &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!out.join("ipxe/mac/52-54-00-00-00-01").exists());
    assert!(!out.join("mac-52-54-00-00-00-01.default.ipxe").exists());
    assert!(out.join("ipxe/mac/52-54-00-00-00-02/default.ipxe").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".render-"))
        .collect();
    assert!(leftovers.is_empty(), "staging folders left: {leftovers:?}");
}

/// Every file under `dir`, relative to it, with its content.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let content = std::fs::read(&path).unwrap();
                out.push((path.strip_prefix(dir).unwrap().to_owned(), content));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn render_never_removes_what_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.json");
    std::fs::write(&inv, INVENTORY).unwrap();
    let www = dir.path().join("www");
    let r = render(&inv, &www);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // Where the README puts images (nginx serves DIR, so /images/ as `serve` does), and a
    // site's own page beside them.
    std::fs::create_dir_all(www.join("images/debian")).unwrap();
    std::fs::write(www.join("images/debian/vmlinuz"), kernel_bytes()).unwrap();
    std::fs::write(www.join("index.html"), "site").unwrap();
    let one_node = INVENTORY.replace(
        r#"{"name": "node01", "mac": "52:54:00:00:00:01", "profile": "worker"},"#,
        "",
    );
    replace(&inv, &one_node);
    let r = render(&inv, &www);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        std::fs::read(www.join("images/debian/vmlinuz")).unwrap(),
        kernel_bytes(),
        "images gone after a re-render"
    );
    assert_eq!(
        std::fs::read_to_string(www.join("index.html")).unwrap(),
        "site"
    );
    assert!(!www.join("ipxe/mac/52-54-00-00-00-01").exists());
    // The scripts beside boot.ipxe are render's too: a node gone takes its own with it.
    assert!(!www.join("mac-52-54-00-00-00-01.default.ipxe").exists());
    assert!(www.join("mac-52-54-00-00-00-02.default.ipxe").exists());

    // A file an operator put among render's own: render stops, names it and changes nothing.
    std::fs::write(
        www.join("ipxe/mac/52-54-00-00-00-02/custom.ipxe"),
        "#!ipxe\n",
    )
    .unwrap();
    std::fs::create_dir(www.join("ipxe/site")).unwrap();
    std::fs::write(www.join("ipxe/site/menu.ipxe"), "#!ipxe\n").unwrap();
    let before = tree(&www);
    let r = render(&inv, &www);
    assert_eq!(r.status.code(), Some(73));
    let err = String::from_utf8_lossy(&r.stderr);
    for named in ["ipxe/mac/52-54-00-00-00-02/custom.ipxe", "ipxe/site"] {
        assert!(
            err.contains(&www.join(named).display().to_string()),
            "{named} not named: {err}"
        );
    }
    assert_eq!(tree(&www), before, "render changed files after refusing");

    // So is a file at the name of a script render would write beside boot.ipxe.
    std::fs::remove_file(www.join("ipxe/mac/52-54-00-00-00-02/custom.ipxe")).unwrap();
    std::fs::remove_dir_all(www.join("ipxe/site")).unwrap();
    let mine = www.join("mac-52-54-00-00-00-01.x86_64.ipxe");
    std::fs::write(&mine, "#!ipxe\necho the operator's\n").unwrap();
    replace(&inv, INVENTORY);
    let before = tree(&www);
    let r = render(&inv, &www);
    assert_eq!(r.status.code(), Some(73));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains(&mine.display().to_string()), "{err}");
    assert_eq!(tree(&www), before, "render changed files after refusing");

    // A boot.ipxe render did not write is the operator's too.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("boot.ipxe"), "#!ipxe\nchain http://elsewhere/\n").unwrap();
    let r = render(&inv, &other);
    assert_eq!(r.status.code(), Some(73));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains(&other.join("boot.ipxe").display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
}

fn serve_fails(args: &[&str], dir: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn start_up_errors_name_the_problem_and_use_the_documented_codes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("images")).unwrap();
    let bad = INVENTORY.replace("52:54:00:00:00:02", "52:54:00:00:00:01");
    std::fs::write(dir.path().join("bad.json"), bad).unwrap();
    std::fs::write(dir.path().join("good.json"), INVENTORY).unwrap();
    let addr = free_addr().to_string();
    let http = |inv: &'static str| -> Vec<String> {
        ["--http", &addr, "--inventory", inv, "--images", "images"]
            .map(String::from)
            .to_vec()
    };
    let args = http("bad.json");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = serve_fails(&args, dir.path());
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("bad.json: nodes[1].mac"), "{err}");

    let (code, err) = serve_fails(&["--http", &addr], dir.path());
    assert_eq!(code, 64, "{err}");

    let mut args = http("good.json");
    args.extend(["--public-url".into(), "http://x/a b".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = serve_fails(&args, dir.path());
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("--public-url"), "{err}");

    let taken = TcpListener::bind(&addr).unwrap();
    let args = http("good.json");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = serve_fails(&args, dir.path());
    assert_eq!(code, 69, "{err}");
    assert!(err.contains(&format!("bind HTTP {addr}")), "{err}");
    drop(taken);

    let (code, err) = serve_fails(&["--proxy-dhcp", "eth0"], dir.path());
    assert_eq!(code, 64, "{err}");
    let (code, err) = serve_fails(&[], dir.path());
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no service enabled"), "{err}");
}

#[test]
fn image_downloads_beyond_the_bound_wait_for_a_slot_and_scripts_do_not() {
    let s = Server::start(&["--http-max-downloads", "1"]);
    // A client that asks for 40 MB and reads nothing holds the only slot once the socket buffers
    // between it and the server are full: by what happens, not by how long things take, so a
    // busy machine cannot make this pass or fail.
    std::fs::write(s.dir.path().join("images/big"), vec![7u8; 40_000_000]).unwrap();
    use std::io::{Read as _, Write as _};
    let mut hog = std::net::TcpStream::connect(s.addr).unwrap();
    hog.write_all(b"GET /images/big HTTP/1.1\r\nHost: flint\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    hog.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    assert!(s.get("/ipxe?mac=52-54-00-00-00-01").contains("node01"));
    let waiting = s.curl(&["--fail", "--max-time", "2", "/images/debian/initrd.img"]);
    assert_eq!(
        waiting.status.code(),
        Some(28),
        "a second download did not wait for the slot: {:?}",
        String::from_utf8_lossy(&waiting.stdout)
    );
    assert!(
        s.get("/metrics")
            .contains("\nflint_boot_http_downloads_in_flight 1\n"),
        "the hog's download holds the one slot"
    );
    drop(hog);
    assert_eq!(s.get("/images/debian/initrd.img"), "initrd");
    wait_for("every slot given back", || {
        s.get("/metrics")
            .contains("\nflint_boot_http_downloads_in_flight 0\n")
    });
}

/// What an alert needs from the first scrape: every series whose labels are known in advance at
/// 0 (an `increase()` sees the first rejected reload), the build, and the descriptors against
/// their limit.
#[test]
fn metrics_show_every_known_series_from_the_start() {
    let s = Server::start(&[]);
    let metrics = s.get("/metrics");
    for line in [
        "flint_boot_inventory_reloads_total{result=\"rejected\"} 0",
        "flint_boot_inventory_reloads_total{result=\"ok\"} 0",
        "flint_boot_scripts_served_total{profile=\"worker\"} 0",
        "flint_boot_scripts_served_total{profile=\"control-plane\"} 0",
        "flint_boot_scripts_served_total{profile=\"menu\"} 0",
        "flint_boot_tftp_transfers_total{outcome=\"failed\"} 0",
        "flint_boot_tftp_transfers_total{outcome=\"sent\"} 0",
        "flint_boot_tftp_waiting_total{event=\"queue-full\"} 0",
        "flint_boot_dhcp_ignored_total{reason=\"no-binary\"} 0",
        "flint_boot_errors_total{kind=\"tftp-io\"} 0",
        "flint_boot_errors_total{kind=\"http\"} 0",
        "flint_boot_http_downloads_in_flight 0",
        "flint_boot_tftp_transfers_in_flight 0",
        &format!(
            "flint_boot_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "want {line:?} in\n{metrics}"
        );
    }
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .parse()
            .unwrap()
    };
    let (open, limit) = (value("process_open_fds"), value("process_max_fds"));
    assert!(3 < open && open < limit, "{open} of {limit}");
}

#[test]
fn a_download_whose_client_stops_reading_ends_and_frees_its_slot() {
    let s = Server::start(&["--http-max-downloads", "1", "--http-stall-timeout", "2"]);
    std::fs::write(s.dir.path().join("images/big"), vec![7u8; 40_000_000]).unwrap();
    use std::io::{Read as _, Write as _};
    let mut hog = std::net::TcpStream::connect(s.addr).unwrap();
    hog.write_all(b"GET /images/big HTTP/1.1\r\nHost: flint\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    hog.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    // The hog does nothing more; the only slot comes free once its download has stalled 2 s.
    let started = Instant::now();
    let second = s.curl(&["--fail", "--max-time", "10", "/images/debian/initrd.img"]);
    assert!(
        second.status.success(),
        "the second download never got the slot: {}\n{}",
        String::from_utf8_lossy(&second.stderr),
        s.log()
    );
    assert_eq!(second.stdout, b"initrd");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // Its connection was closed: what the socket buffers held, then the end, well short of 40 MB.
    hog.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    hog.read_to_end(&mut rest)
        .expect("the stalled download's connection was not closed");
    assert!(rest.len() < 40_000_000, "{}", rest.len());
    assert!(
        s.log().contains("the client took no byte for 2s"),
        "{}",
        s.log()
    );
}

/// Sends a request for `/healthz` on `conn` and reads its answer, leaving the connection open.
fn healthz_on(conn: &mut std::net::TcpStream) {
    use std::io::{Read as _, Write as _};
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: flint\r\n\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = conn.read(&mut buf).expect("an answer to /healthz");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// How long until the server closes `conn` (reads return 0 or an error), at most `limit`.
fn closed_within(conn: &mut std::net::TcpStream, limit: Duration) -> Option<Duration> {
    use std::io::Read as _;
    let started = Instant::now();
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 512];
    while started.elapsed() < limit {
        match conn.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[test]
fn a_request_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    let s = Server::start(&["--http-header-timeout", "2"]);
    use std::io::Write as _;
    let mut slow = std::net::TcpStream::connect(s.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    let mut closed = None;
    // A header line's byte every 200 ms, for up to 10 s: the head never ends.
    for i in 0..50 {
        if slow.write_all(b"X").is_err() {
            closed = Some(started.elapsed());
            break;
        }
        if let Some(after) = closed_within(&mut slow, Duration::from_millis(200)) {
            closed = Some(started.elapsed().max(after));
            break;
        }
        assert!(i < 49, "still open after 10 s");
    }
    let closed = closed.expect("the slow head was never cut off");
    assert!(
        closed >= Duration::from_millis(1500),
        "closed too soon: {closed:?}"
    );
    assert!(closed < Duration::from_secs(6), "closed late: {closed:?}");
}

#[test]
fn a_keep_alive_connection_left_idle_is_closed_at_the_header_timeout() {
    let s = Server::start(&["--http-header-timeout", "2"]);
    let mut idle = std::net::TcpStream::connect(s.addr).unwrap();
    healthz_on(&mut idle);
    let closed = closed_within(&mut idle, Duration::from_secs(10))
        .expect("the idle connection was still open after 10 s");
    assert!(
        closed >= Duration::from_millis(1500),
        "closed too soon: {closed:?}"
    );
}

#[test]
fn at_the_connection_bound_the_oldest_idle_connection_makes_room_for_a_new_machine() {
    let s = Server::start(&["--http-max-connections", "4"]);
    let mut idle: Vec<_> = (0..4)
        .map(|_| {
            let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
            healthz_on(&mut conn);
            // The server parks a connection (starts its idle time) just after the client has
            // read the answer; on a loaded machine the next connection could otherwise be
            // parked first and be the oldest. A quarter second orders them as machines are.
            std::thread::sleep(Duration::from_millis(250));
            conn
        })
        .collect();
    let script = s.curl(&["--fail", "--max-time", "5", "/ipxe?mac=52-54-00-00-00-01"]);
    assert!(
        String::from_utf8_lossy(&script.stdout).contains("node01"),
        "a new machine was not answered at the bound: {}",
        String::from_utf8_lossy(&script.stderr)
    );
    assert!(
        closed_within(&mut idle[0], Duration::from_secs(2)).is_some(),
        "the oldest idle connection was not the one closed"
    );
    for conn in &mut idle[1..] {
        healthz_on(conn);
    }
}

#[test]
fn requests_beyond_the_request_bound_wait_their_turn_and_are_then_answered() {
    let s = Server::start(&["--http-max-requests", "1"]);
    use std::io::{Read as _, Write as _};
    // The only turn for requests other than downloads, held by a head that never ends.
    let mut hog = std::net::TcpStream::connect(s.addr).unwrap();
    hog.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    // Its turn is taken once its bytes are there: until then a probe may get it first.
    wait_for("the unfinished head to hold the only turn", || {
        s.curl(&["--max-time", "1", "/healthz"]).status.code() == Some(28)
    });
    // A download waits in a queue of its own.
    assert_eq!(s.get("/images/debian/initrd.img"), "initrd");

    // The next request is accepted, not refused, and waits unanswered.
    let mut waiting = std::net::TcpStream::connect(s.addr).unwrap();
    waiting
        .write_all(b"GET /ipxe?mac=52-54-00-00-00-01 HTTP/1.1\r\nHost: flint\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let early = waiting.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "answered while the only turn was taken: {early:?}"
    );
    // Its turn comes when the hog's connection goes.
    drop(hog);
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("node01") {
        let n = waiting
            .read(&mut buf)
            .expect("an answer once the turn was free");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // And the connection goes on serving, parked between requests: idle, it holds no turn.
    healthz_on(&mut waiting);
    let next = s.curl(&["--fail", "--max-time", "5", "/healthz"]);
    assert!(
        next.status.success(),
        "an idle keep-alive connection held the only turn: {}",
        String::from_utf8_lossy(&next.stderr)
    );
    healthz_on(&mut waiting);
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let s = Server::start(&["--http-max-requests", "1"]);
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
    // Three requests in one write: hyper reads past the first, and what it read must survive
    // the connection being parked between answers.
    conn.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: flint\r\n\r\n\
          GET /images/debian/initrd.img HTTP/1.1\r\nHost: flint\r\n\r\n\
          GET /ipxe?mac=52-54-00-00-00-01 HTTP/1.1\r\nHost: flint\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got)
        .expect("the connection closes after the third answer");
    let got = String::from_utf8_lossy(&got);
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 3, "{got}");
    let ok = got.find("\r\n\r\nok\n").expect("/healthz answered");
    let initrd = got.find("\r\n\r\ninitrd").expect("the image answered");
    let script = got.find("node01").expect("the script answered");
    assert!(ok < initrd && initrd < script, "{got}");

    // Behind an answer larger than the socket buffers, read slowly: the second request waits in
    // what hyper read ahead while the first answer drains, both answers arrive whole, and the
    // connection then serves a third request.
    let image = image_bytes(16 << 20);
    std::fs::write(s.dir.path().join("images/big"), &image).unwrap();
    let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
    conn.write_all(
        b"GET /images/big HTTP/1.1\r\nHost: flint\r\n\r\n\
          GET /healthz HTTP/1.1\r\nHost: flint\r\n\r\n",
    )
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = conn.read(&mut buf).expect("both answers");
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_micros(200));
    }
    let body_at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the image's head")
        + 4;
    assert_eq!(&got[body_at..body_at + image.len()], &image[..]);
    healthz_on(&mut conn);
}

#[test]
fn a_client_that_asks_for_close_has_its_connection_closed_after_the_answer() {
    let s = Server::start(&[]);
    // Larger than the socket buffers and read slowly, so the answer's end waits for the client:
    // the server sees the answer over before it is all sent, and must send the rest and close.
    let image = image_bytes(32 << 20);
    std::fs::write(s.dir.path().join("images/big"), &image).unwrap();
    use std::io::{Read as _, Write as _};
    for (request, body) in [
        (
            "GET /healthz HTTP/1.1\r\nHost: flint\r\nConnection: keep-alive, close\r\n\r\n",
            &b"ok\n"[..],
        ),
        ("GET /healthz HTTP/1.0\r\n\r\n", b"ok\n"),
        (
            "GET /images/big HTTP/1.1\r\nHost: flint\r\nConnection: close\r\n\r\n",
            &image,
        ),
    ] {
        let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("{request:?}: not closed after the answer: {e}"),
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(got.ends_with(body), "{request:?}: {} bytes", got.len());
    }
    // HTTP/1.0 asking for keep-alive keeps it.
    let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
    conn.write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\r\n\r\nok\n") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    healthz_on(&mut conn);
}

/// Bytes that differ from one offset to the next over many of the server's read buffers, so a
/// chunk sent twice, skipped or out of order shows.
fn image_bytes(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[test]
fn images_larger_than_a_buffer_ranges_across_it_and_every_header() {
    let s = Server::start(&[]);
    let image = image_bytes(3 * 256 * 1024 + 12_345);
    let path = s.dir.path().join("images/debian/big.img");
    std::fs::write(&path, &image).unwrap();
    // Out of the page cache, so that the server's reads wait for the disk: they go through the
    // blocking pool rather than being done in place.
    let file = std::fs::File::open(&path).unwrap();
    file.sync_all().unwrap();
    nix::fcntl::posix_fadvise(
        &file,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();

    assert_eq!(s.curl(&["--fail", "/images/debian/big.img"]).stdout, image);
    // A range that starts in one buffer's worth and ends two later.
    let part = s.curl(&["--fail", "-r", "200000-600000", "/images/debian/big.img"]);
    assert_eq!(part.stdout, &image[200_000..=600_000]);
    let head = String::from_utf8(s.curl(&["-I", "/images/debian/big.img"]).stdout).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", image.len())),
        "{head}"
    );
    assert!(
        head.contains("content-type: application/octet-stream"),
        "{head}"
    );
    let last_modified = head
        .lines()
        .find_map(|l| l.strip_prefix("last-modified: "))
        .expect("Last-Modified")
        .trim()
        .to_owned();
    let ims = format!("If-Modified-Since: {last_modified}");
    assert_eq!(s.status(&["-H", &ims, "/images/debian/big.img"]), "304");
    assert_eq!(
        s.status(&[
            "-H",
            "If-Modified-Since: Thu, 01 Jan 1998 00:00:00 GMT",
            "/images/debian/big.img"
        ]),
        "200"
    );
    assert_eq!(
        s.status(&["-H", "If-Match: \"other\"", "/images/debian/big.img"]),
        "412"
    );

    // A range request on HEAD: range handling is defined for GET only (RFC 9110 §14.2), so
    // the headers of the whole file, no body.
    let head = String::from_utf8(
        s.curl(&["-I", "-r", "10-19", "/images/debian/big.img"])
            .stdout,
    )
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", image.len())),
        "{head}"
    );
    // Several ranges are not served (no multipart answers): the whole file (§14.2 lets a
    // server ignore Range).
    let multi = s.curl(&["-i", "-r", "0-1,5-6", "/images/debian/big.img"]);
    assert!(multi.stdout.starts_with(b"HTTP/1.1 200"));
    assert!(multi.stdout.ends_with(&image));
    // An empty file: 200 with nothing, and no range of it exists.
    std::fs::write(s.dir.path().join("images/empty"), b"").unwrap();
    let empty = s.curl(&["--fail", "-w", "%{http_code}", "/images/empty"]);
    assert_eq!(empty.stdout, b"200");
    assert_eq!(s.status(&["-r", "0-0", "/images/empty"]), "416");
    // Only GET and HEAD.
    assert_eq!(s.status(&["-X", "POST", "/images/debian/big.img"]), "405");
}

#[test]
fn a_file_that_shrinks_while_sent_ends_the_download_and_frees_its_slot() {
    let s = Server::start(&["--http-max-downloads", "1"]);
    let path = s.dir.path().join("images/shrinks");
    std::fs::write(&path, vec![1u8; 40_000_000]).unwrap();
    let started = Instant::now();
    let slow = Command::new("curl")
        .args(["-sS", "--limit-rate", "10M", "-o", "/dev/null"])
        .args(["-w", "%{size_download}"])
        .arg(s.url("/images/shrinks"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1_000_000)
        .unwrap();
    let out = slow.wait_with_output().unwrap();
    // curl's "partial file": the connection was closed before the promised length.
    assert_eq!(out.status.code(), Some(18), "{out:?}");
    let got: u64 = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert!(got < 40_000_000, "received {got}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}: the download hung after the file shrank",
        started.elapsed()
    );
    // The only slot is free again, and the server serves on.
    assert_eq!(s.get("/images/debian/initrd.img"), "initrd");
}

#[test]
fn a_fifo_in_the_folder_is_a_404_not_a_stuck_thread() {
    let s = Server::start(&[]);
    let fifo = s.dir.path().join("images/fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    assert_eq!(s.status(&["/images/fifo"]), "404");
    assert_eq!(s.status(&["-I", "/images/fifo"]), "404");
}

/// Found by the http fuzz target: a name longer than the filesystem allows (one part, or the
/// whole path) was a 500 and a server-error log line; it names no file, so it is a 404. So is a
/// path through a link that loops.
#[test]
fn names_no_file_can_have_are_a_404_not_a_server_error() {
    let s = Server::start(&[]);
    let long_part = format!("/images/{}", "a".repeat(300));
    let long_path = format!("/images/{}b", "a/".repeat(3000));
    std::os::unix::fs::symlink("loop", s.dir.path().join("images/loop")).unwrap();
    for path in [
        long_part.as_str(),
        long_path.as_str(),
        "/images/loop/x",
        "/images/loop",
    ] {
        assert_eq!(
            s.status(&[path]),
            "404",
            "GET {}",
            &path[..40.min(path.len())]
        );
    }
    assert!(!s.log().contains("cannot open"), "{}", s.log());
}

/// Debian's nginx on a loopback port, with the `events`/`http` part of a configuration `conf`
/// writes for that address; stopped by its PID when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Serving `root` as a plain file server.
    fn serving(root: &Path) -> Nginx {
        // `if_modified_since before` is RFC 9110 §13.1.3 (not modified when the file is no
        // newer than the date); nginx's default `exact` only answers 304 to the very date.
        Nginx::start(|addr| {
            format!(
                "events {{}}\nhttp {{\n  access_log off;\n  server {{\n    listen {addr};\n    root {};\n\
                 if_modified_since before;\n  }}\n}}\n",
                root.display()
            )
        })
    }

    fn start(conf: impl FnOnce(SocketAddr) -> String) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let prefix = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log;\n{}",
            conf(addr)
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (scripts/setup.sh installs it)");
        let nginx = Nginx {
            child,
            addr,
            _dir: dir,
        };
        wait_for("nginx to listen", || {
            std::net::TcpStream::connect(nginx.addr).is_ok()
        });
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer as it came off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on its own connection, written byte for byte as given, so that no client
/// library adds, merges or drops a header.
fn ask(addr: SocketAddr, method: &str, path: &str, headers: &[(String, String)]) -> Answer {
    use std::io::{Read, Write};
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: flint\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header section");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// What an answer means, checked against the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    Full,
    Part(u64, u64),
    Multipart,
    NotModified,
    Failed,
    Unsatisfiable,
}

fn classify(a: &Answer, file: &[u8], head: bool) -> Got {
    let size = file.len() as u64;
    let length = a
        .header("content-length")
        .map(|v| v.parse::<u64>().unwrap());
    let body = |want: &[u8]| {
        let want: &[u8] = if head { b"" } else { want };
        assert!(a.body == want, "body of {a:?} is not the file's bytes");
    };
    match a.status {
        200 => {
            assert_eq!(length, Some(size), "{a:?}");
            body(file);
            Got::Full
        }
        206 if a
            .header("content-type")
            .is_some_and(|t| t.starts_with("multipart/byteranges")) =>
        {
            Got::Multipart
        }
        206 => {
            let range = a.header("content-range").expect("a Content-Range");
            let (span, total) = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('/'))
                .unwrap();
            assert_eq!(total, size.to_string(), "{a:?}");
            let (first, last) = span.split_once('-').unwrap();
            let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
            assert_eq!(length, Some(last - first + 1), "{a:?}");
            body(&file[first as usize..=last as usize]);
            Got::Part(first, last)
        }
        304 => {
            assert!(a.body.is_empty(), "{a:?}");
            assert!(a.header("etag").is_some(), "304 without its ETag: {a:?}");
            Got::NotModified
        }
        412 => Got::Failed,
        416 => {
            assert_eq!(
                a.header("content-range"),
                Some(format!("bytes */{size}").as_str()),
                "{a:?}"
            );
            Got::Unsatisfiable
        }
        other => panic!("unexpected status {other}: {a:?}"),
    }
}

/// Every conditional and range rule of RFC 9110 on one file, asked of flint-boot and of
/// nginx alike, GET and HEAD. flint-boot must give the RFC's answer; nginx gives it too, except
/// where a case says why nginx differs.
#[test]
fn conditional_and_range_rules_of_rfc_9110_beside_nginx() {
    let s = Server::start(&[]);
    let root = s.dir.path().join("images");
    let file = image_bytes(100_000);
    let path = root.join("conformance.img");
    std::fs::write(&path, &file).unwrap();
    // A whole second, in the past: dates before, at and after it can all be written.
    let modified = std::time::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let date = |secs: i64| {
        httpdate::fmt_http_date(
            std::time::UNIX_EPOCH + Duration::from_secs((1_750_000_000 + secs) as u64),
        )
    };
    let nginx = Nginx::serving(&root);
    let size = file.len() as u64;

    use Got::*;
    /// Request headers, the RFC's answer, and nginx's where it is not that (or the RFC lets
    /// servers choose) with why.
    type Case<'a> = (&'a [(&'a str, &'a str)], Got, Option<(Got, &'a str)>);
    let cases: &[Case] = &[
        (&[], Full, None),
        // §13.1.1: If-Match uses the strong comparison; `*` matches any current file.
        (&[("If-Match", "{etag}")], Full, None),
        (&[("If-Match", "\"nope\"")], Failed, None),
        (&[("If-Match", "W/{etag}")], Failed, None),
        (&[("If-Match", "*")], Full, None),
        (&[("If-Match", "\"nope\", {etag}")], Full, None),
        // §13.1.2: If-None-Match uses the weak comparison; `*` matches any current file; a
        // GET or HEAD that fails it is a 304.
        (&[("If-None-Match", "{etag}")], NotModified, None),
        (&[("If-None-Match", "W/{etag}")], NotModified, None),
        (&[("If-None-Match", "*")], NotModified, None),
        (&[("If-None-Match", "\"nope\"")], Full, None),
        // §13.1.3: not modified when the file is no newer than the date; a date that does not
        // parse is ignored.
        (&[("If-Modified-Since", "{lm}")], NotModified, None),
        (&[("If-Modified-Since", "{later}")], NotModified, None),
        (&[("If-Modified-Since", "{earlier}")], Full, None),
        (&[("If-Modified-Since", "yesterday")], Full, None),
        // §13.1.4.
        (&[("If-Unmodified-Since", "{lm}")], Full, None),
        (&[("If-Unmodified-Since", "{later}")], Full, None),
        (&[("If-Unmodified-Since", "{earlier}")], Failed, None),
        // §13.2.2's order: If-Match, else If-Unmodified-Since; then If-None-Match, else
        // If-Modified-Since; then If-Range. A header the order skips is not looked at.
        (
            &[("If-Match", "{etag}"), ("If-Unmodified-Since", "{earlier}")],
            Full,
            Some((
                Failed,
                "nginx evaluates If-Unmodified-Since even beside If-Match, which §13.1.4 \
                 says a recipient MUST ignore",
            )),
        ),
        (
            &[("If-Match", "\"nope\""), ("If-None-Match", "{etag}")],
            Failed,
            None,
        ),
        (
            &[
                ("If-Unmodified-Since", "{earlier}"),
                ("If-None-Match", "{etag}"),
            ],
            Failed,
            None,
        ),
        (
            &[
                ("If-None-Match", "{etag}"),
                ("If-Modified-Since", "{earlier}"),
            ],
            NotModified,
            Some((
                Full,
                "nginx answers 304 only when If-Modified-Since agrees too, which §13.1.3 \
                 says a recipient MUST ignore beside If-None-Match",
            )),
        ),
        (
            &[("If-None-Match", "\"nope\""), ("If-Modified-Since", "{lm}")],
            Full,
            None,
        ),
        (
            &[("If-None-Match", "{etag}"), ("Range", "bytes=0-9")],
            NotModified,
            None,
        ),
        (
            &[("If-Match", "{etag}"), ("Range", "bytes=0-9")],
            Part(0, 9),
            None,
        ),
        // §14.1.2: a first-last range (the last clamped to the file), open-ended, suffix.
        (&[("Range", "bytes=0-9")], Part(0, 9), None),
        (
            &[("Range", "bytes=10-99999999999")],
            Part(10, size - 1),
            None,
        ),
        (
            &[("Range", "bytes={size-10}-")],
            Part(size - 10, size - 1),
            None,
        ),
        (&[("Range", "bytes=0-")], Part(0, size - 1), None),
        (&[("Range", "bytes=-10")], Part(size - 10, size - 1), None),
        (&[("Range", "bytes=-999999")], Part(0, size - 1), None),
        // §14.1.1: a range starting at or past the end, or an empty suffix, is unsatisfiable
        // (§15.5.17: 416 with `bytes */size`, §14.4).
        (&[("Range", "bytes={size}-")], Unsatisfiable, None),
        (&[("Range", "bytes=-0")], Unsatisfiable, None),
        // §14.2: a range unit the server does not understand MUST be ignored.
        (&[("Range", "items=0-1")], Full, None),
        // §14.2: a server MAY ignore or reject an invalid ranges-specifier, and MAY ignore
        // Range altogether. flint-boot ignores what it does not serve: a boot client then
        // gets the whole file rather than an error, and no multipart answer (one range is
        // what UEFI HTTP Boot and BMC virtual media ask).
        (
            &[("Range", "bytes=0-1,5-6")],
            Full,
            Some((
                Multipart,
                "§14.2 lets a server ignore Range; nginx serves multipart/byteranges",
            )),
        ),
        (
            &[("Range", "bytes=5-4")],
            Full,
            Some((
                Unsatisfiable,
                "§14.2: a server MAY ignore or reject an invalid range",
            )),
        ),
        (
            &[("Range", "bytes=abc")],
            Full,
            Some((
                Unsatisfiable,
                "§14.2: a server MAY ignore or reject an invalid range",
            )),
        ),
        // §13.1.5: If-Range holds only for the same representation (a strong ETag match or
        // the exact Last-Modified date); otherwise Range is ignored and the whole file goes.
        (
            &[("Range", "bytes=0-9"), ("If-Range", "{etag}")],
            Part(0, 9),
            None,
        ),
        (
            &[("Range", "bytes=0-9"), ("If-Range", "\"nope\"")],
            Full,
            None,
        ),
        (
            &[("Range", "bytes=0-9"), ("If-Range", "W/{etag}")],
            Full,
            None,
        ),
        (
            &[("Range", "bytes=0-9"), ("If-Range", "{lm}")],
            Part(0, 9),
            None,
        ),
        (
            &[("Range", "bytes=0-9"), ("If-Range", "{earlier}")],
            Full,
            None,
        ),
        (
            &[("Range", "bytes={size}-"), ("If-Range", "\"nope\"")],
            Full,
            None,
        ),
        // Without Range, If-Range is ignored.
        (&[("If-Range", "\"nope\"")], Full, None),
    ];

    let mut wrong = Vec::new();
    for (addr, name, target) in [
        (s.addr, "flint-boot", "/images/conformance.img"),
        (nginx.addr, "nginx", "/conformance.img"),
    ] {
        let plain = ask(addr, "GET", target, &[]);
        let etag = plain.header("etag").unwrap().to_owned();
        let lm = plain.header("last-modified").unwrap().to_owned();
        assert_eq!(lm, date(0));
        for (headers, want, differs) in cases {
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| {
                    let v = v
                        .replace("{etag}", &etag)
                        .replace("{lm}", &lm)
                        .replace("{earlier}", &date(-86_400))
                        .replace("{later}", &date(86_400))
                        .replace("{size-10}", &(size - 10).to_string())
                        .replace("{size}", &size.to_string());
                    ((*n).to_owned(), v)
                })
                .collect();
            let want = match (name, differs) {
                ("nginx", Some((theirs, _))) => *theirs,
                _ => *want,
            };
            let get = classify(&ask(addr, "GET", target, &headers), &file, false);
            if get != want {
                wrong.push(format!("{name}: GET {headers:?}: {get:?}, want {want:?}"));
            }
            // §9.3.2: HEAD is GET without the content. §14.2: range handling is defined for
            // GET only, so a HEAD answers as if there were no Range; nginx applies it to HEAD
            // as to GET.
            let head_want = match (name, want) {
                ("flint-boot", Part(..) | Unsatisfiable) => Full,
                _ => want,
            };
            let head = classify(&ask(addr, "HEAD", target, &headers), &file, true);
            if head != head_want {
                wrong.push(format!(
                    "{name}: HEAD {headers:?}: {head:?}, want {head_want:?}"
                ));
            }
        }

        // A download resumed after the file was replaced: the old ETag no longer holds, so the
        // whole new file comes, never its tail spliced onto the old one's head (§13.1.5).
        let tmp = root.join("conformance.tmp");
        let mut newer = file.clone();
        newer.reverse();
        std::fs::write(&tmp, &newer).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let resumed = ask(
            addr,
            "GET",
            target,
            &[
                ("Range".into(), "bytes=50000-".into()),
                ("If-Range".into(), etag.clone()),
            ],
        );
        if resumed.status != 200 || resumed.body != newer {
            wrong.push(format!(
                "{name}: resumed after a replace with the old ETag: {} {:?}",
                resumed.status, resumed.headers
            ));
        }
        std::fs::write(&path, &file).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Python's http.server, the plainest static server, serving `dir` on a loopback port; stopped
/// by its PID when dropped.
struct PlainServer {
    child: Child,
    addr: SocketAddr,
}

impl PlainServer {
    fn start(dir: &Path) -> PlainServer {
        let addr = free_addr();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind"])
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg("--directory")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = PlainServer { child, addr };
        wait_for("http.server to listen", || {
            std::net::TcpStream::connect(server.addr).is_ok()
        });
        server
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A download as iPXE makes it: redirects followed, success only on a 2xx.
fn download(url: &str) -> Option<Vec<u8>> {
    let out = Command::new("curl")
        .args(["-sS", "-L", "--max-time", "10", "-w", "%{http_code}"])
        .arg(url)
        .output()
        .unwrap();
    let (body, code) = out.stdout.split_at(out.stdout.len() - 3);
    code.starts_with(b"2").then(|| body.to_vec())
}

/// `rel` resolved against the URL of the script that names it, as iPXE does.
fn resolve_url(base: &str, rel: &str) -> String {
    if rel.contains("://") {
        return rel.to_owned();
    }
    let base = base.split('?').next().unwrap();
    format!("{}/{rel}", &base[..base.rfind('/').unwrap()])
}

/// What iPXE does with the script at `url` on a machine with these settings, for the commands
/// a `boot.ipxe` uses: settings expanded, `&&` and `||` from left to right (an empty command
/// succeeds), a line that fails ends the script. Ok: the URL and text of the script it runs
/// next. Err: where the machine stops. Running what it fetched is where a plain server's
/// answer matters: iPXE recognises a script by its `#!ipxe` first line; anything else it runs
/// as another image type and, on BIOS, the last type it tries (a PXE boot program) accepts any
/// file: an HTML page is jumped into as code and the machine hangs (iPXE's image probing; the
/// PXE image loader says it "will *always* claim the image").
fn ipxe_runs(url: &str, settings: &[(&str, &str)]) -> Result<(String, String), String> {
    let script = download(url).ok_or(format!("{url}: no script"))?;
    let script = String::from_utf8(script).map_err(|_| format!("{url}: not text"))?;
    let body = script
        .strip_prefix("#!ipxe\n")
        .ok_or(format!("{url}: not an iPXE script"))?;
    let mut settings: std::collections::HashMap<String, String> = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut images: std::collections::HashMap<String, (String, Vec<u8>)> = Default::default();
    for line in body.lines() {
        // Each command with the operator before it.
        let mut commands: Vec<(&str, Vec<&str>)> = vec![("", Vec::new())];
        for word in line.split(' ').filter(|w| !w.is_empty()) {
            if word == "&&" || word == "||" {
                commands.push((word, Vec::new()));
            } else {
                commands.last_mut().unwrap().1.push(word);
            }
        }
        let mut ok = true;
        for (op, command) in commands {
            if (op == "&&" && !ok) || (op == "||" && ok) {
                continue;
            }
            let words: Vec<String> = command
                .iter()
                .map(|w| {
                    let mut w = (*w).to_owned();
                    while let Some(start) = w.find("${") {
                        let end = start + w[start..].find('}').unwrap();
                        let value = settings.get(&w[start + 2..end]).cloned();
                        w.replace_range(start..=end, &value.unwrap_or_default());
                    }
                    w
                })
                .collect();
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            ok = match words.as_slice() {
                [] => true,
                ["set", name, value] => {
                    settings.insert((*name).to_owned(), (*value).to_owned());
                    true
                }
                ["iseq", a, b] => a == b,
                ["exit", _] => return Err(format!("exit: {line}")),
                ["imgfetch", "--name", name, target] => {
                    let target = resolve_url(url, target);
                    download(&target)
                        .map(|bytes| images.insert((*name).to_owned(), (target, bytes)))
                        .is_some()
                }
                ["chain", "--autofree", target] => {
                    let image = images.remove(*target).or_else(|| {
                        let target = resolve_url(url, target);
                        download(&target).map(|bytes| (target, bytes))
                    });
                    match image {
                        None => false,
                        Some((target, bytes)) => {
                            return match String::from_utf8(bytes) {
                                Ok(text) if text.starts_with("#!ipxe\n") => Ok((target, text)),
                                _ => Err(format!(
                                    "{target}: not an iPXE script, run as a PXE program: a \
                                     BIOS machine hangs"
                                )),
                            };
                        }
                    }
                }
                other => panic!("a command this model does not know: {other:?}"),
            };
        }
        if !ok {
            return Err(format!("failed: {line}"));
        }
    }
    Err(format!("{url}: ended without running anything"))
}

/// `flint-boot render`'s set behind plain static servers: Python's http.server, and nginx with
/// the README's configuration. Every machine iPXE could be gets, step by step, the very script
/// `serve` answers it (an iPXE script, never a listing or an error page), and its kernel from
/// `/images/`. Before, the static `boot.ipxe` chained to `ipxe?mac=...`, which http.server
/// answers with a redirect to a listing of the `ipxe/` folder: iPXE ran the HTML.
#[test]
fn a_rendered_set_behind_plain_static_servers_boots_every_machine() {
    let s = Server::start(&[]);
    let www = s.dir.path().join("www");
    let r = render(&s.inventory(), &www);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let plain = PlainServer::start(&www);
    let readme = include_str!("../README.md");
    let conf = readme
        .split("```nginx\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README's nginx.conf");
    let images = s.dir.path().join("images");
    std::fs::create_dir(images.join("arm")).unwrap();
    std::fs::write(images.join("arm/vmlinuz"), b"arm64 kernel").unwrap();
    // Where the README puts them: DIR/images, which render leaves alone.
    std::os::unix::fs::symlink(&images, www.join("images")).unwrap();
    let nginx = Nginx::start(|addr| {
        conf.replace("listen 8080;", &format!("listen {addr};"))
            .replace("/srv/flint-boot/www", &www.display().to_string())
            .replace("http {", "http {\n    access_log off;")
    });

    let machines = [
        // node01 by MAC; node02 by UUID with a MAC we do not know; nobody we know.
        ("52-54-00-00-00-01", ""),
        ("02-00-00-00-00-09", "4c4c4544-0042-3510-8051-b4c04f4e3232"),
        ("02-00-00-00-00-09", ""),
    ];
    let arches = [
        ("i386", "pcbios"),
        ("x86_64", "pcbios"),
        ("i386", "efi"),
        ("x86_64", "efi"),
        ("arm64", "efi"),
        ("riscv64", "efi"),
    ];
    for (base, name) in [(plain.addr, "http.server"), (nginx.addr, "nginx")] {
        for (mac, uuid) in machines {
            for (buildarch, platform) in arches {
                let settings = [
                    ("netX/mac:hexhyp", mac),
                    ("uuid", uuid),
                    ("buildarch", buildarch),
                    ("platform", platform),
                ];
                let what = format!("{name}: {mac} {uuid} {buildarch}-{platform}");
                let (url, script) = ipxe_runs(&format!("http://{base}/boot.ipxe"), &settings)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let served = s.get(&format!(
                    "/ipxe?mac={mac}&uuid={uuid}&buildarch={buildarch}&platform={platform}"
                ));
                assert_eq!(script, served, "{what}");
                // The kernel, as iPXE resolves its URL against the script's.
                if let Some(kernel) = script
                    .lines()
                    .find_map(|l| l.strip_prefix("kernel "))
                    .and_then(|l| l.split(' ').next())
                {
                    let got = download(&resolve_url(&url, kernel));
                    let want = std::fs::read(images.join(kernel.trim_start_matches("images/")));
                    assert!(got.is_some() && got == want.ok(), "{what}: {kernel}");
                }
            }
        }
    }
}
