//! Several boot servers on one Ethernet segment, one inventory in a 3-member etcd: one server is
//! killed, and machines that power on after that still boot from the others, with no failure;
//! the journeys from every server, the dead one's included, appear in one view.
//!
//! The segment is network namespaces (tests/common/segment.rs): a bridge where etcd and the
//! machines live (10.78.0.1 and one address per machine), three `flint-boot serve --etcd` each
//! in a namespace of its own on the bridge (10.78.0.2-4), each with ProxyDHCP, TFTP and HTTP.
//! A machine is played as its firmware and iPXE play it: a BIOS PXE DISCOVER broadcast on the
//! segment, every offer collected, undionly.kpxe over TFTP from the offer's server, iPXE's own
//! DISCOVER, `boot.ipxe`, its script and the images it names. Needs root and Debian's
//! etcd-server (skipped without it).

mod common;

use std::cell::Cell;
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::dhcp::{self, XID, file, opt};
use common::etcd::{self, ETCD, ETCDCTL};
use common::segment::{BRIDGE, SEGMENT_IP, SERVER_IFACE, Segment, Started, server_ip};
use common::server::{BIN, kernel_bytes};
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use tempfile::TempDir;

const SERVERS: usize = 3;
const HTTP_PORT: u16 = 8080;
const ETCD_CLIENT_PORTS: [u16; 3] = [2379, 2479, 2579];
const ETCD_PEER_PORTS: [u16; 3] = [2380, 2480, 2580];
/// How long a machine collects ProxyDHCP offers after its DISCOVER (iPXE waits about as long).
const OFFER_WINDOW: Duration = Duration::from_secs(2);
/// An offer later than this after the DISCOVER is a failure: firmware would have moved on.
const OFFER_DEADLINE: Duration = Duration::from_secs(1);
/// etcd, and each server, must be up within this.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The views must show what the machines did within this.
const VIEW_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound of one curl, etcdctl or `flint-boot inventory put` run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of each server's log in a failure message.
const TAIL_LINES: usize = 40;

/// What the fake undionly.kpxe holds.
const UNDIONLY: &[u8] = b"not really iPXE, but the bytes a BIOS PXE ROM would run\n";
const INITRD: &[u8] = b"an initrd for the installer\n";

struct Machine {
    name: &'static str,
    mac: [u8; 6],
    /// The machine's own address on the segment: its HTTP and TFTP requests come from it, which
    /// is how each server ties them to the machine.
    ip: Ipv4Addr,
}

impl Machine {
    fn new(i: u8, name: &'static str) -> Machine {
        Machine {
            name,
            mac: [0x52, 0x54, 0x00, 0x78, 0x00, i],
            ip: Ipv4Addr::new(10, 78, 0, 100 + i),
        }
    }

    fn mac(&self, sep: &str) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(sep)
    }
}

/// One offer: the server that sent it (the packet's source), the message, how long after the
/// DISCOVER it came.
struct Offer {
    from: Ipv4Addr,
    message: Message,
    after: Duration,
}

/// The segment, etcd on it, the boot servers, and the files they serve.
struct Site {
    // Dropped first: every process stopped before the folder they write in goes.
    segment: Segment,
    etcd: Vec<Started>,
    /// Server k (1-based) is `servers[k - 1]`.
    servers: Vec<Started>,
    /// Set once a failure message carried the logs, so that drop does not show them again.
    logs_shown: Cell<bool>,
    dir: TempDir,
}

impl Site {
    fn start() -> Site {
        let dir = tempfile::Builder::new()
            .prefix("flint-boot-several-")
            .tempdir()
            .expect("create temp dir");
        for sub in ["logs", "etcd", "images/debian", "tftp"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let images = dir.path().join("images");
        std::fs::write(images.join("debian/vmlinuz"), kernel_bytes()).unwrap();
        std::fs::write(images.join("debian/initrd.img"), INITRD).unwrap();
        std::fs::write(dir.path().join("tftp/undionly.kpxe"), UNDIONLY).unwrap();
        let mut site = Site {
            segment: Segment::new(SERVERS),
            etcd: Vec::new(),
            servers: Vec::new(),
            logs_shown: Cell::new(false),
            dir,
        };
        site.start_etcd();
        site.put_inventory();
        for k in 1..=SERVERS {
            site.start_server(k);
        }
        for k in 1..=SERVERS {
            site.wait_server_ready(k);
        }
        site
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_log(&self, k: usize) -> PathBuf {
        self.path(&format!("logs/server{k}.log"))
    }

    fn etcd_log(&self, i: usize) -> PathBuf {
        self.path(&format!("logs/etcd{i}.log"))
    }

    fn etcd_urls(&self) -> String {
        ETCD_CLIENT_PORTS
            .iter()
            .map(|p| format!("http://{SEGMENT_IP}:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Three members on the bridge's address, plain HTTP, a new cluster; up once
    /// `etcdctl endpoint health` passes for all three.
    fn start_etcd(&mut self) {
        let initial: Vec<String> = (0..3)
            .map(|i| format!("e{i}=http://{SEGMENT_IP}:{}", ETCD_PEER_PORTS[i]))
            .collect();
        for i in 0..3 {
            let client = format!("http://{SEGMENT_IP}:{}", ETCD_CLIENT_PORTS[i]);
            let peer = format!("http://{SEGMENT_IP}:{}", ETCD_PEER_PORTS[i]);
            let data = self.path(&format!("etcd/e{i}.etcd"));
            let mut command = self.segment.command(&self.segment.seg, ETCD);
            command
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .arg(format!("--name=e{i}"))
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=flint-boot-several-servers")
                .arg("--logger=zap");
            let started = self
                .segment
                .spawn(&format!("etcd e{i}"), command, &self.etcd_log(i));
            self.etcd.push(started);
        }
        self.wait_until("etcd's 3 members to be healthy", START_TIMEOUT, |site| {
            let out = site.etcdctl(&["endpoint", "health"]);
            if out.status.success() {
                Ok(())
            } else {
                Err(text(&out))
            }
        });
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        let mut command = self.segment.command(&self.segment.seg, ETCDCTL);
        command
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.etcd_urls()))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args);
        etcd::run_bounded(&mut command, TOOL_TIMEOUT)
    }

    /// A profile `node` (kernel and initrd), machines m1..m3, unknown machines refused; written
    /// with `flint-boot inventory put` from the segment.
    fn put_inventory(&self) {
        let nodes: Vec<serde_json::Value> = machines()
            .iter()
            .map(|m| serde_json::json!({"name": m.name, "mac": m.mac(":"), "profile": "node"}))
            .collect();
        let inventory = serde_json::json!({
            "profiles": {"node": {
                "kernel": "debian/vmlinuz",
                "initrds": ["debian/initrd.img"],
                "cmdline": "console=ttyS0",
            }},
            "nodes": nodes,
            "unknown": {"policy": "refuse"},
        });
        let file = self.path("inventory.json");
        std::fs::write(&file, inventory.to_string()).unwrap();
        let urls = self.etcd_urls();
        let args = ["inventory", "put", file.to_str().unwrap(), "--etcd", &urls];
        let out = self
            .segment
            .run(&self.segment.seg, BIN, &args, TOOL_TIMEOUT);
        self.ensure(out.status.success(), || {
            format!("flint-boot inventory put: {}", text(&out))
        });
    }

    /// `flint-boot serve` in server k's namespace: HTTP, TFTP and ProxyDHCP on its `eth0`, the
    /// inventory from etcd.
    fn start_server(&mut self, k: usize) {
        let ip = server_ip(k);
        let mut command = self.segment.command(self.segment.server_ns(k), BIN);
        command
            .arg("serve")
            .args(["--http", &format!("{ip}:{HTTP_PORT}")])
            .arg("--images")
            .arg(self.path("images"))
            .args(["--tftp", &format!("{ip}:69")])
            .arg("--tftp-root")
            .arg(self.path("tftp"))
            .args(["--proxy-dhcp", SERVER_IFACE])
            .args(["--etcd", &self.etcd_urls()])
            .args(["--server-name", &format!("boot{k}")])
            .env("FLINT_LOG", "debug");
        let started = self
            .segment
            .spawn(&format!("boot server {k}"), command, &self.server_log(k));
        self.servers.push(started);
    }

    /// Waits until server k answers `/healthz` (from the segment) and says ProxyDHCP listens.
    fn wait_server_ready(&self, k: usize) {
        let url = format!("{}/healthz", base_url(server_ip(k)));
        self.wait_until(&format!("server {k} to be up"), START_TIMEOUT, |site| {
            let out = site.curl(None, &["--max-time", "2", &url]);
            let log = std::fs::read_to_string(site.server_log(k)).unwrap_or_default();
            match (out.stdout == b"ok\n", log.contains("proxydhcp listening")) {
                (true, true) => Ok(()),
                (false, _) => Err(format!("/healthz: {}", text(&out))),
                (true, false) => Err("no \"proxydhcp listening\" in its log".into()),
            }
        });
    }

    /// SIGKILL to server k, by PID.
    fn kill_server(&mut self, k: usize) {
        let status = self.segment.kill(self.servers[k - 1]);
        eprintln!("server {k} killed: {status}");
    }

    /// curl from the segment's namespace, from `from` when given.
    fn curl(&self, from: Option<Ipv4Addr>, args: &[&str]) -> Output {
        let from = from.map(|ip| ip.to_string());
        let mut all = vec!["-sS", "--max-time", "10"];
        if let Some(from) = &from {
            all.extend(["--interface", from]);
        }
        all.extend_from_slice(args);
        self.segment
            .run(&self.segment.seg, "curl", &all, TOOL_TIMEOUT)
    }

    /// The body of a GET of `url` from `from`, which must succeed.
    fn get(&self, from: Option<Ipv4Addr>, url: &str) -> Vec<u8> {
        let out = self.curl(from, &["--fail", url]);
        self.ensure(out.status.success(), || {
            format!("GET {url} from {from:?}: {}", text(&out))
        });
        out.stdout
    }

    fn machines_view(&self, k: usize) -> serde_json::Value {
        let url = format!("{}/api/machines", base_url(server_ip(k)));
        let body = self.get(None, &url);
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            self.fail(format!(
                "server {k}'s /api/machines is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            ))
        })
    }

    fn metrics(&self, k: usize) -> String {
        let url = format!("{}/metrics", base_url(server_ip(k)));
        String::from_utf8(self.get(None, &url)).unwrap()
    }

    /// The value of `series` (name and labels, as written) in server k's metrics.
    fn metric(&self, k: usize, series: &str) -> u64 {
        let metrics = self.metrics(k);
        metric_in(&metrics, series).unwrap_or_else(|| {
            self.fail(format!("no {series} in server {k}'s metrics:\n{metrics}"))
        })
    }

    /// Broadcasts `packet` on the bridge from port 68 (as firmware without an address does)
    /// and collects, for `OFFER_WINDOW`, every answer to `m` (its MAC, the transaction ID).
    fn offers(&self, m: &Machine, packet: &[u8]) -> Vec<Offer> {
        self.segment.in_namespace(&self.segment.seg, || {
            let sock = dhcp::client_socket(BRIDGE, 68);
            let sent = Instant::now();
            dhcp::send_broadcast(&sock, packet);
            let deadline = sent + OFFER_WINDOW;
            let mut offers = Vec::new();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                sock.set_read_timeout(Some(left)).unwrap();
                let Some((message, from)) = dhcp::recv(&sock) else {
                    continue;
                };
                if message.xid() != XID || message.chaddr() != m.mac {
                    continue;
                }
                let IpAddr::V4(from) = from.ip() else {
                    continue;
                };
                offers.push(Offer {
                    from,
                    message,
                    after: sent.elapsed(),
                });
            }
            offers
        })
    }

    /// Checks that exactly the servers `offering` answered, each once and at once, with an
    /// offer of its own (siaddr and option 54 its address, no address for the client) that
    /// names `file_of(its address)`.
    fn check_offers(
        &self,
        m: &Machine,
        what: &str,
        offers: &[Offer],
        offering: &[Ipv4Addr],
        file_of: impl Fn(Ipv4Addr) -> String,
    ) {
        let mut got: Vec<Ipv4Addr> = offers.iter().map(|o| o.from).collect();
        got.sort();
        let mut want = offering.to_vec();
        want.sort();
        self.ensure(got == want, || {
            format!(
                "{}'s {what}: offers from {got:?}, expected one from each of {want:?}",
                m.name
            )
        });
        for o in offers {
            let msg = &o.message;
            let problems: Vec<String> = [
                (msg.opcode() == Opcode::BootReply, "not a BOOTREPLY"),
                (
                    msg.opts().msg_type() == Some(MessageType::Offer),
                    "not an OFFER",
                ),
                (msg.siaddr() == o.from, "siaddr is not the sender"),
                (
                    opt(msg, 54) == Some(&DhcpOption::ServerIdentifier(o.from)),
                    "option 54 is not the sender",
                ),
                (
                    msg.yiaddr() == Ipv4Addr::UNSPECIFIED,
                    "an address offered by a proxy",
                ),
                (file(msg) == file_of(o.from), "not the expected boot file"),
                (o.after < OFFER_DEADLINE, "too late for firmware"),
            ]
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, why)| why.to_owned())
            .collect();
            self.ensure(problems.is_empty(), || {
                format!(
                    "{}'s {what}: the offer from {} after {:?}: {}: {msg:?}",
                    m.name,
                    o.from,
                    o.after,
                    problems.join(", ")
                )
            });
        }
    }

    /// Machine `m` powers on and boots, as a BIOS PXE ROM and then iPXE do, from the first
    /// server that offers (or from `prefer`'s offer): the servers `offering` must be exactly
    /// those that offer, every download must succeed and be whole. Returns the server it booted
    /// from.
    fn boot(&self, m: &Machine, offering: &[Ipv4Addr], prefer: Option<Ipv4Addr>) -> Ipv4Addr {
        // The firmware: a DISCOVER, every ProxyDHCP offer, undionly.kpxe over TFTP.
        let offers = self.offers(m, &dhcp::discover(&m.mac, 0));
        self.check_offers(m, "PXE DISCOVER", &offers, offering, |_| {
            "undionly.kpxe".into()
        });
        let chosen = match prefer {
            Some(ip) => offers
                .iter()
                .find(|o| o.from == ip)
                .unwrap_or_else(|| self.fail(format!("{}: no offer from {ip}", m.name))),
            None => &offers[0],
        };
        let server = chosen.message.siaddr();
        eprintln!(
            "{} booting from {server}: offers from {:?}",
            m.name,
            offers
                .iter()
                .map(|o| format!("{} after {:?}", o.from, o.after))
                .collect::<Vec<_>>()
        );
        let tftp = format!("tftp://{server}/{}", file(&chosen.message));
        let out = self.curl(Some(m.ip), &[&tftp]);
        self.ensure(out.status.success() && out.stdout == UNDIONLY, || {
            format!(
                "{}: TFTP {tftp} from {}: {} bytes, {}",
                m.name,
                m.ip,
                out.stdout.len(),
                text(&out)
            )
        });

        // iPXE: its own DISCOVER, answered with each server's boot.ipxe; the chosen one's.
        let offers = self.offers(m, &dhcp::ipxe_discover(&m.mac, 0));
        self.check_offers(m, "iPXE DISCOVER", &offers, offering, |ip| {
            format!("{}/boot.ipxe", base_url(ip))
        });
        let script_url = file(
            &offers
                .iter()
                .find(|o| o.from == server)
                .expect("checked above")
                .message,
        );
        let boot = String::from_utf8(self.get(Some(m.ip), &script_url)).unwrap();
        self.ensure(
            boot.starts_with("#!ipxe") && boot.contains("chain --autofree ipxe?mac="),
            || format!("{}: {script_url}:\n{boot}", m.name),
        );
        let url = format!(
            "{}/ipxe?mac={}&uuid=&platform=pcbios&buildarch=i386",
            base_url(server),
            m.mac("-")
        );
        let script = String::from_utf8(self.get(Some(m.ip), &url)).unwrap();
        self.ensure(
            script.contains(&format!("flint: booting {} profile node", m.name))
                && script.contains("debian/vmlinuz"),
            || format!("{}: {url}:\n{script}", m.name),
        );
        let line = |verb: &str| {
            script
                .lines()
                .find_map(|l| l.strip_prefix(verb)?.split_whitespace().next())
                .unwrap_or_else(|| self.fail(format!("{}: no {verb:?} in\n{script}", m.name)))
        };
        let images = [
            (line("kernel "), "debian/vmlinuz", kernel_bytes()),
            (line("initrd "), "debian/initrd.img", INITRD.to_vec()),
        ];
        for (link, path, want) in images {
            self.ensure(link.ends_with(path), || {
                format!("{}: {link} is not {path} in\n{script}", m.name)
            });
            // As iPXE resolves it: against the script's URL.
            let image = if link.contains("://") {
                link.to_owned()
            } else {
                format!("{}/{link}", base_url(server))
            };
            let got = self.get(Some(m.ip), &image);
            self.ensure(got.len() == want.len() && got == want, || {
                format!(
                    "{}: {image}: {} bytes, not the {} of {path}",
                    m.name,
                    got.len(),
                    want.len()
                )
            });
        }
        server
    }

    /// Polls `check` every 100 ms until it is `Ok`; fails with its last `Err` and the logs once
    /// `timeout` has passed, or at once when a process of the site (not killed by the test)
    /// has exited.
    fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Site) -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.segment.exited();
            if !exited.is_empty() {
                self.fail(format!(
                    "{} exited while waiting for {what}",
                    exited.join(", ")
                ));
            }
            let last = match check(self) {
                Ok(value) => return value,
                Err(last) => last,
            };
            if Instant::now() >= deadline {
                self.fail(format!(
                    "timed out after {timeout:?} waiting for {what}; last: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every server's and etcd member's log.
    fn logs(&self) -> String {
        let servers = (1..=SERVERS).map(|k| {
            (
                format!("server {k} ({})", server_ip(k)),
                self.server_log(k),
                TAIL_LINES,
            )
        });
        let members = (0..3).map(|i| (format!("etcd e{i}"), self.etcd_log(i), 10));
        servers
            .chain(members)
            .map(|(who, log, lines)| {
                format!(
                    "--- last lines of {who}'s log, {} ---\n{}\n",
                    log.display(),
                    tail(&log, lines)
                )
            })
            .collect()
    }

    fn fail(&self, msg: impl Display) -> ! {
        self.logs_shown.set(true);
        panic!("{msg}\n{}", self.logs());
    }

    fn ensure(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(msg());
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.logs_shown.get() {
            eprintln!("{}", self.logs());
        }
    }
}

fn machines() -> [Machine; 3] {
    [
        Machine::new(1, "m1"),
        Machine::new(2, "m2"),
        Machine::new(3, "m3"),
    ]
}

fn base_url(server: Ipv4Addr) -> String {
    format!("http://{server}:{HTTP_PORT}")
}

fn text(out: &Output) -> String {
    format!(
        "{} {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn metric_in(metrics: &str, series: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Which boot server (1..) has address `ip`.
fn server_number(ip: Ipv4Addr) -> usize {
    (1..=SERVERS)
        .find(|k| server_ip(*k) == ip)
        .unwrap_or_else(|| panic!("{ip} is no boot server"))
}

/// The steps a machine's journey must hold in every view: one `dhcp` per server that
/// answered each of its 2 DISCOVERs, then the rest from the one server it booted from.
fn expected_steps(answering: usize) -> Vec<String> {
    let mut steps = vec!["dhcp".to_owned(); 2 * answering];
    steps.extend(
        ["binary", "boot-script", "script", "image", "image"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    steps.sort();
    steps
}

/// A machine of a view: its name, MAC, address and phase, and its steps (kind, time, detail),
/// sorted, as every view must show it.
type Journey = (String, String, String, String, Vec<(String, u64, String)>);

fn journeys(view: &serde_json::Value) -> Vec<Journey> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let mut out: Vec<Journey> = view["machines"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let mut steps: Vec<(String, u64, String)> = m["steps"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|st| {
                    (
                        s(&st["step"]),
                        st["at_ms"].as_u64().unwrap_or(0),
                        s(&st["detail"]),
                    )
                })
                .collect();
            steps.sort();
            (
                s(&m["name"]),
                s(&m["mac"]),
                s(&m["ip"]),
                s(&m["phase"]),
                steps,
            )
        })
        .collect();
    out.sort();
    out
}

/// Whether `view` shows every machine named, at its address, in its installer, with the
/// steps of `expected_steps`; `Err` says what is not yet so.
fn complete(view: &serde_json::Value, want: &[(&Machine, usize)]) -> Result<(), String> {
    let journeys = journeys(view);
    for (m, answering) in want {
        let Some(j) = journeys.iter().find(|j| j.1 == m.mac(":")) else {
            return Err(format!("no {}", m.name));
        };
        let kinds: Vec<String> = {
            let mut k: Vec<String> = j.4.iter().map(|s| s.0.clone()).collect();
            k.sort();
            k
        };
        let ip = m.ip.to_string();
        if (j.0.as_str(), j.2.as_str(), j.3.as_str()) != (m.name, ip.as_str(), "installer")
            || kinds != expected_steps(*answering)
        {
            return Err(format!("{}: {j:?}", m.name));
        }
    }
    if journeys.len() != want.len() {
        return Err(format!("{} machines: {journeys:?}", journeys.len()));
    }
    // When a machine was first seen is its earliest step's time, in every view, whichever
    // server saw that step.
    for m in view["machines"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let earliest = m["steps"]
            .as_array()
            .and_then(|steps| steps.iter().filter_map(|st| st["at_ms"].as_u64()).min());
        if m["first_seen_ms"].as_u64() != earliest {
            return Err(format!(
                "{}: first_seen_ms {} is not its earliest step's time {earliest:?}",
                m["name"], m["first_seen_ms"]
            ));
        }
    }
    Ok(())
}

#[test]
fn a_boot_server_killed_leaves_the_others_to_boot_every_machine_in_one_view() {
    if !etcd::installed_or_say_so() {
        return;
    }
    let started = Instant::now();
    let mut site = Site::start();
    eprintln!("site up in {:?}", started.elapsed());
    let [m1, m2, m3] = machines();
    for m in [&m1, &m2, &m3] {
        site.segment.add_address(m.ip);
    }
    let all: Vec<Ipv4Addr> = (1..=SERVERS).map(server_ip).collect();

    // m1 powers on: all three offer; it boots from server 1's offer.
    let from = site.boot(&m1, &all, Some(server_ip(1)));
    assert_eq!(from, server_ip(1));

    // Server 1 has handed every step it saw to etcd (a crash may lose steps still queued;
    // this test is about what was shared), then dies.
    let shared_by_1 = site.wait_until(
        "server 1 to have written every step it recorded",
        VIEW_TIMEOUT,
        |site| {
            let metrics = site.metrics(1);
            let recorded: u64 = ["dhcp", "binary", "boot-script", "script", "image"]
                .iter()
                .map(|s| {
                    metric_in(
                        &metrics,
                        &format!("flint_boot_journey_steps_total{{step=\"{s}\"}}"),
                    )
                    .unwrap_or(0)
                })
                .sum();
            let written = metric_in(
                &metrics,
                "flint_boot_shared_steps_total{outcome=\"written\"}",
            );
            match written {
                Some(w) if w == recorded && recorded == 7 => Ok(w),
                _ => Err(format!("recorded {recorded}, written {written:?}")),
            }
        },
    );
    site.kill_server(1);
    let healthz = format!("{}/healthz", base_url(server_ip(1)));
    let out = site.curl(None, &["--max-time", "2", &healthz]);
    assert!(!out.status.success(), "server 1 answers: {}", text(&out));

    // m2 powers on: only the two left offer, and it boots from one of them.
    let survivors = [server_ip(2), server_ip(3)];
    let m2_from = site.boot(&m2, &survivors, None);
    assert!(survivors.contains(&m2_from), "{m2_from}");
    // m3 boots from the other survivor, so that both serve.
    let other = if m2_from == server_ip(2) {
        server_ip(3)
    } else {
        server_ip(2)
    };
    let m3_from = site.boot(&m3, &survivors, Some(other));
    assert_eq!(m3_from, other);

    // One view: both survivors show the three machines in their installer, m1's steps (which
    // only the dead server 1 saw) read from etcd; and they show the same journeys.
    let want = [(&m1, 3), (&m2, 2), (&m3, 2)];
    for k in [2, 3] {
        site.wait_until(
            &format!("server {k}'s view to show m1, m2 and m3 in their installer"),
            VIEW_TIMEOUT,
            |site| complete(&site.machines_view(k), &want),
        );
    }
    let (view2, view3) = (site.machines_view(2), site.machines_view(3));
    assert_eq!(
        journeys(&view2),
        journeys(&view3),
        "the two views differ:\n{view2:#}\n{view3:#}"
    );
    for view in [&view2, &view3] {
        assert_eq!(view["inventory"]["source"], "etcd", "{view:#}");
        assert!(view["inventory"].get("stale").is_none(), "{view:#}");
        // Each step names the server that saw it (--server-name: all three share a host name):
        // every server answered each DISCOVER it heard; the rest came from the one that booted
        // the machine.
        for (m, booted_by) in [
            (&m1, 1),
            (&m2, server_number(m2_from)),
            (&m3, server_number(m3_from)),
        ] {
            let machine = view["machines"]
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["name"] == m.name)
                .unwrap();
            for step in machine["steps"].as_array().unwrap() {
                let server = step["server"].as_str().unwrap();
                if step["step"] == "dhcp" {
                    assert!(server.starts_with("boot"), "{machine:#}");
                } else {
                    assert_eq!(server, format!("boot{booted_by}"), "{machine:#}");
                }
            }
        }
    }

    // Each survivor saw of m1 only its 2 DISCOVERs, and served one machine whole: the rest of
    // its view came through etcd, each step once.
    let written_by =
        |k: usize| site.metric(k, "flint_boot_shared_steps_total{outcome=\"written\"}");
    let (written2, written3) = (written_by(2), written_by(3));
    for (k, written, others) in [
        (2, written2, shared_by_1 + written3),
        (3, written3, shared_by_1 + written2),
    ] {
        for (step, n) in [
            ("dhcp", 6),
            ("binary", 1),
            ("boot-script", 1),
            ("script", 1),
            ("image", 2),
        ] {
            assert_eq!(
                site.metric(
                    k,
                    &format!("flint_boot_journey_steps_total{{step=\"{step}\"}}")
                ),
                n,
                "server {k}'s own {step} steps"
            );
        }
        assert_eq!(written, 11, "server {k} shares each of its steps");
        assert_eq!(
            site.metric(k, "flint_boot_shared_steps_total{outcome=\"replayed\"}"),
            others,
            "server {k} replays every other server's steps once"
        );
        for outcome in ["refused", "unshared"] {
            let series = format!("flint_boot_shared_steps_total{{outcome=\"{outcome}\"}}");
            assert_eq!(site.metric(k, &series), 0, "server {k}: {series}");
        }
    }
    eprintln!(
        "m1 from {from}, m2 from {m2_from}, m3 from {m3_from}; {:?} in all",
        started.elapsed()
    );
}
