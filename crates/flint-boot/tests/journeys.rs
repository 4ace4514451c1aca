//! Each machine's journey and the fleet view, through the real binary: machines played by curl
//! from loopback addresses of their own (as iPXE asks: boot.ipxe, its script, kernel and initrd),
//! read back from `/api/machines`, the page at `/`, `/metrics` and `flint-boot status`.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::server::{BIN, Server, kernel_bytes};

/// A machine: curl from its own address, so the server ties its requests together as it ties a
/// real machine's.
struct Machine<'a> {
    server: &'a Server,
    ip: IpAddr,
}

impl Machine<'_> {
    fn curl(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--interface", "placeholder"];
        let ip = self.ip.to_string();
        all[1] = &ip;
        all.extend_from_slice(args);
        self.server.curl(&all)
    }

    fn get(&self, path: &str) -> Vec<u8> {
        let out = self.curl(&["--fail", path]);
        assert!(
            out.status.success(),
            "GET {path} from {}: {}",
            self.ip,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// A loopback address beside the server's own, for one machine.
fn machine_ip(server: &Server, n: u8) -> IpAddr {
    let IpAddr::V4(v4) = server.addr.ip() else {
        unreachable!("the test servers listen on IPv4 loopback")
    };
    let [a, b, c, _] = v4.octets();
    IpAddr::from([a, b, c.wrapping_add(100), n])
}

fn machines(server: &Server, query: &str) -> Value {
    let body = server.get(&format!("/api/machines{query}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn by_mac<'v>(fleet: &'v Value, mac: &str) -> &'v Value {
    fleet["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .find(|m| m["mac"] == mac)
        .unwrap_or_else(|| panic!("no {mac} in {fleet:#}"))
}

fn steps(machine: &Value) -> Vec<String> {
    machine["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["step"].as_str().unwrap(),
                s["detail"].as_str().unwrap()
            )
        })
        .collect()
}

fn status(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["status", "--url", &server.url("")])
        .args(args)
        .output()
        .expect("run flint-boot status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_machine_booting_is_followed_step_by_step_and_a_silent_one_is_stuck() {
    let server = Server::start(&["--stuck-after", "2"]);
    let node01 = Machine {
        server: &server,
        ip: machine_ip(&server, 11),
    };
    let stranger = Machine {
        server: &server,
        ip: machine_ip(&server, 12),
    };

    // node01 as iPXE goes: boot.ipxe (no MAC in it), its script, kernel, a first try at the
    // initrd cut short, then the initrd whole.
    node01.get("/boot.ipxe");
    let script = node01.get("/ipxe?mac=52-54-00-00-00-01&uuid=&platform=pcbios&buildarch=i386");
    assert!(String::from_utf8_lossy(&script).contains("booting node01"));
    let fleet = machines(&server, "");
    let m = by_mac(&fleet, "52:54:00:00:00:01");
    assert_eq!(m["name"], "node01");
    assert_eq!(m["ip"], node01.ip.to_string());
    assert_eq!(m["phase"], "booting");
    assert_eq!(
        steps(m),
        ["boot-script boot.ipxe", "script node01: worker"],
        "boot.ipxe, asked before the machine named itself, is its first step"
    );
    assert_eq!(node01.get("/images/debian/vmlinuz"), kernel_bytes());
    let part = node01.curl(&["--fail", "-r", "0-2", "/images/debian/initrd.img"]);
    assert_eq!(part.stdout, b"ini");
    assert_eq!(
        by_mac(&machines(&server, ""), "52:54:00:00:00:01")["phase"],
        "booting"
    );
    node01.get("/images/debian/initrd.img");

    // The stranger asks once for its script, then says nothing more.
    stranger.get("/ipxe?mac=02-00-00-00-00-09");

    let fleet = machines(&server, "");
    let m = by_mac(&fleet, "52:54:00:00:00:01");
    assert_eq!(
        m["phase"], "installer",
        "every image of its script sent whole"
    );
    let kernel = kernel_bytes().len();
    assert_eq!(
        steps(m)[2..],
        [
            format!("image debian/vmlinuz: {kernel} bytes, whole"),
            "image debian/initrd.img: 3 bytes, cut short".to_owned(),
            "image debian/initrd.img: 6 bytes, whole".to_owned(),
        ]
    );
    assert_eq!(fleet["schema_version"], 1);
    assert_eq!(fleet["stuck_after_s"], 2);
    assert_eq!(fleet["counts"]["installer"], 1);
    assert_eq!(fleet["counts"]["booting"], 1);

    // Two seconds on, the stranger is stuck and listed first; node01, in its installer, is not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fleet = loop {
        let fleet = machines(&server, "?steps=0");
        if fleet["counts"]["stuck"] == 1 {
            break fleet;
        }
        assert!(Instant::now() < deadline, "never stuck: {fleet:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let first = &fleet["machines"][0];
    assert_eq!(first["mac"], "02:00:00:00:00:09");
    assert_eq!(first["stuck"], true);
    assert_eq!(first["name"], Value::Null);
    assert_eq!(first["last_step"]["detail"], "unknown machine: menu");
    assert_eq!(
        first["steps"],
        Value::Array(vec![]),
        "?steps=0 leaves them out"
    );
    assert_eq!(by_mac(&fleet, "52:54:00:00:00:01")["stuck"], false);

    // The page: stuck first and marked, counts, reloading itself.
    let page = server.get("/");
    assert!(page.contains("<meta http-equiv=\"refresh\""), "{page}");
    assert!(
        page.contains("<span id=\"count-stuck\" class=\"alarm\">stuck <b>1</b>"),
        "{page}"
    );
    let stuck_row = page
        .find("data-mac=\"02:00:00:00:00:09\"")
        .expect("the stranger's row");
    let node01_row = page
        .find("data-mac=\"52:54:00:00:00:01\"")
        .expect("node01's row");
    assert!(stuck_row < node01_row, "stuck first: {page}");
    assert!(page.contains("STUCK in booting"), "{page}");

    // /metrics: machines by phase, the stuck gauge, steps by kind.
    let metrics = server.get("/metrics");
    for line in [
        "flint_boot_machines{phase=\"installer\"} 1",
        "flint_boot_machines{phase=\"booting\"} 1",
        "flint_boot_machines{phase=\"seen\"} 0",
        "flint_boot_stuck_machines 1",
        "flint_boot_journey_steps_total{step=\"image\"} 3",
        "flint_boot_journey_steps_total{step=\"dhcp\"} 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in:\n{metrics}");
    }

    // flint-boot status: a table, stuck first; --json for scripts.
    let (code, table, err) = status(&server, &[]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].ends_with(
            ": seen 0 booting 1 installer 1 first-boot 0 joined 0 healthy 0 stuck 1 failed 0"
        ),
        "the counts in the order of the phases: {table}"
    );
    assert!(lines[1].starts_with("NAME"), "{table}");
    assert!(
        lines[2].contains("STUCK:booting") && lines[2].contains("02:00:00:00:00:09"),
        "{table}"
    );
    assert!(
        lines[3].starts_with("node01") && lines[3].contains("installer"),
        "{table}"
    );
    let (code, json, err) = status(&server, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(json["machines"].as_array().map(Vec::len), Some(2));
}

#[test]
fn status_says_what_is_wrong_with_the_server_it_asks() {
    // Nothing listening: 69, naming the URL.
    let server = Server::start(&[]);
    let url = server.url("");
    drop(server);
    let out = Command::new(BIN)
        .args(["status", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");

    // A server without the fleet view (an older flint-boot, another HTTP server): 76.
    let server = Server::start(&[]);
    let out = Command::new(BIN)
        .args(["status", "--url", &server.url("/images")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(76), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("answered 404"));

    // Not a plain HTTP URL: 64.
    let out = Command::new(BIN)
        .args(["status", "--url", "https://example.invalid"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
