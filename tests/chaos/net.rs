//! The chaos network: one network namespace per node, each joined to a bridge in a hub namespace by
//! a veth pair, with a delay line in between (bench/delay-line.c: this kernel has no netem qdisc),
//! and nftables rules in the hub for loss and partitions.
//!
//! ```text
//!  node ns: eth0 ──veth── hub: kNa ~delay-line~ kNb ──veth── kNc ─┐
//!                                                               br0 (nft bridge table "chaos")
//!  ctl ns:  eth0 ──veth── hub: kNc (no delay, never faulted) ────┘
//! ```
//!
//! Nodes are `10.77.0.(10+i)/24`. The admin-API test server (flint-testserver listens only on
//! 127.0.0.0/8) lives in the `svc` namespace, whose eth0 also carries `127.77.0.(10+i)/32`, node
//! i's chainfire and flaredb listeners; `route_localnet` lets those addresses cross the bridge and
//! every node routes `127.77.0.0/24` to its eth0. The `ctl` namespace is the observer's: etcdctl
//! runs there, and no fault ever touches its packets.
//!
//! Cleanup does not depend on this process surviving: a reaper (a shell in a process group of its
//! own, so the test runner's signals to this test's group miss it) holds the read end of a pipe
//! whose only writer is this process. When the pipe closes (a normal end, a panic, SIGTERM, or
//! SIGKILL) it kills every process inside the namespaces by PID (`ip netns pids`) and deletes the
//! namespaces by name.
use super::common::run_bounded;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The reaper of the running campaign, reachable from the signal handler.
static REAPER: Mutex<Option<Reaper>> = Mutex::new(None);

pub const SVC_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const CTL_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

/// Node `i` (1-based, as in `node01`) on the bridge.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + i as u8)
}

/// Node `i`'s admin-API listeners (chainfire and flaredb), in the svc namespace.
pub fn listener_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 77, 0, 10 + i as u8)
}

/// The test servers' control API: on the svc namespace's own loopback, reached from inside it.
pub const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 1);

/// One namespace on the bridge.
pub struct Endpoint {
    pub ns: String,
    /// `k{index}`: the hub-side interface names start with it.
    hub_tag: String,
    /// The delay line of this endpoint, when it has one (not the ctl namespace).
    delay_line: Option<Child>,
    pub base_delay_ms: u64,
    current_delay_ms: u64,
    delayed: bool,
}

/// A fault the hub's nftables table applies.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// Every packet from or to these addresses is dropped (except the observer's).
    Isolate(Vec<Ipv4Addr>),
    /// Packets between the two sets are dropped, both ways.
    Cut(Vec<Ipv4Addr>, Vec<Ipv4Addr>),
    /// This share (percent) of the packets from or to these addresses is dropped.
    Loss(Vec<Ipv4Addr>, u8),
}

pub struct Net {
    pub hub: String,
    /// Index 0 is the svc namespace, 1..=7 the nodes, last the ctl namespace.
    pub endpoints: Vec<Endpoint>,
    delay_line_bin: PathBuf,
    logs: PathBuf,
    hub_rules: Vec<(u64, Rule)>,
    next_rule: u64,
    dead_listeners: Vec<(u64, Ipv4Addr, u16)>,
}

struct Reaper {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// A command run inside namespace `ns` (`ip netns exec` execs it: the child's PID is the
/// program's own).
pub fn ns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.arg("netns").arg("exec").arg(ns).arg(program);
    command
}

fn run(what: &str, command: &mut Command) {
    let out = run_bounded(command, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{what}: {command:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run("ip", Command::new("ip").args(args));
}

fn in_ns(ns: &str, program: &str, args: &[&str]) {
    run(program, ns_command(ns, program).args(args));
}

/// The reaper's script: waits for EOF on stdin, then kills and deletes. `keep` on stdin first
/// keeps the work dir.
const REAPER_SCRIPT: &str = r#"
dir=$1; shift
keep=0
while IFS= read -r line; do [[ $line == keep ]] && keep=1; done
for round in 1 2 3 4 5 6 7 8 9 10; do
    left=0
    for ns in "$@"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; left=1; done
    done
    ((left)) || break
    sleep 0.2
done
for ns in "$@"; do ip netns delete "$ns" 2>/dev/null; done
if ((keep == 0)) && [[ -n $dir && -d $dir ]]; then rm -rf -- "$dir"; fi
"#;

impl Net {
    /// Builds the network for `nodes` nodes under `dir` (the campaign's work dir, removed by the
    /// reaper unless kept).
    pub fn create(dir: &Path, nodes: usize, repo: &Path) -> Net {
        let prefix = format!("flc{}", std::process::id());
        let hub = format!("{prefix}-hub");
        let mut names = vec![hub.clone(), format!("{prefix}-svc")];
        names.extend((1..=nodes).map(|i| format!("{prefix}-n{i}")));
        names.push(format!("{prefix}-ctl"));
        for ns in &names {
            assert!(
                !Path::new("/run/netns").join(ns).exists(),
                "namespace {ns} exists already: a run of this test with the same PID left it?"
            );
        }
        start_reaper(dir, &names);

        let logs = dir.join("net");
        std::fs::create_dir_all(&logs).expect("create net log dir");
        let delay_line_bin = dir.join("delay-line");
        let out = run_bounded(
            Command::new("gcc")
                .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
                .arg(&delay_line_bin)
                .arg(repo.join("bench/delay-line.c")),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "bench/delay-line.c did not build: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        for ns in &names {
            ip(&["netns", "add", ns]);
            // No IPv6: no router solicitations or DAD noise through the delay lines. ARP
            // answers only for an address of the interface asked: with route_localnet, every
            // namespace would otherwise answer for all of 127.0.0.0/8 (its loopback's).
            let mut sysctls = vec![
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.default.arp_ignore=1",
            ];
            // 127.77.0.0/24 crosses the bridge between the endpoints; the hub has no address
            // and must not answer for any.
            if *ns != hub {
                sysctls.push("net.ipv4.conf.all.route_localnet=1");
                sysctls.push("net.ipv4.conf.default.route_localnet=1");
            }
            in_ns(ns, "sysctl", &sysctls);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);

        let mut net = Net {
            hub: hub.clone(),
            endpoints: Vec::new(),
            delay_line_bin,
            logs,
            hub_rules: Vec::new(),
            next_rule: 0,
            dead_listeners: Vec::new(),
        };
        let mut specs: Vec<(String, Ipv4Addr, bool)> = vec![(names[1].clone(), SVC_IP, true)];
        specs.extend((1..=nodes).map(|i| (names[1 + i].clone(), node_ip(i), true)));
        specs.push((names[names.len() - 1].clone(), CTL_IP, false));
        for (k, (ns, addr, delayed)) in specs.into_iter().enumerate() {
            let tag = format!("k{k}");
            let (a, b, c) = (format!("{tag}a"), format!("{tag}b"), format!("{tag}c"));
            if delayed {
                ip(&[
                    "link", "add", "name", "eth0", "netns", &ns, "type", "veth", "peer", "name",
                    &a, "netns", &hub,
                ]);
                ip(&[
                    "-n", &hub, "link", "add", &b, "type", "veth", "peer", "name", &c,
                ]);
                for l in [&a, &b] {
                    ip(&["-n", &hub, "link", "set", l, "up"]);
                }
            } else {
                ip(&[
                    "link", "add", "name", "eth0", "netns", &ns, "type", "veth", "peer", "name",
                    &c, "netns", &hub,
                ]);
            }
            ip(&["-n", &hub, "link", "set", &c, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &c, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            in_ns(
                &ns,
                "sysctl",
                &["-qw", "net.ipv4.conf.eth0.route_localnet=1"],
            );
            // The delay line copies frames as they are: checksums must be complete when sent.
            in_ns(&ns, "ethtool", &["-K", "eth0", "tx", "off"]);
            if addr == SVC_IP {
                for i in 1..=nodes {
                    let l = format!("{}/32", listener_ip(i));
                    ip(&["-n", &ns, "addr", "add", &l, "dev", "eth0"]);
                }
            } else {
                ip(&["-n", &ns, "route", "add", "127.77.0.0/24", "dev", "eth0"]);
            }
            net.endpoints.push(Endpoint {
                ns,
                hub_tag: tag,
                delay_line: None,
                base_delay_ms: 0,
                current_delay_ms: 0,
                delayed,
            });
        }
        for k in 0..net.endpoints.len() {
            if net.endpoints[k].delayed {
                net.start_delay_line(k, 0);
            }
        }
        net.apply_hub_rules();
        net.apply_svc_rules();
        net
    }

    pub fn svc_ns(&self) -> &str {
        &self.endpoints[0].ns
    }

    pub fn ctl_ns(&self) -> &str {
        &self.endpoints[self.endpoints.len() - 1].ns
    }

    /// Node `i`'s namespace (1-based).
    pub fn node_ns(&self, i: usize) -> &str {
        &self.endpoints[i].ns
    }

    fn start_delay_line(&mut self, k: usize, delay_ms: u64) {
        let endpoint = &mut self.endpoints[k];
        if let Some(mut old) = endpoint.delay_line.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log = self
            .logs
            .join(format!("delay-line-{}.log", endpoint.hub_tag));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open delay-line log");
        let child = ns_command(&self.hub, &self.delay_line_bin)
            .arg(format!("{}a", endpoint.hub_tag))
            .arg(format!("{}b", endpoint.hub_tag))
            .arg((delay_ms * 1000).to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .expect("start delay-line");
        endpoint.delay_line = Some(child);
        endpoint.current_delay_ms = delay_ms;
    }

    /// Sets endpoint `k`'s link delay (each way, for everything it sends and receives). A new
    /// delay line replaces the old one: the frames in flight on the old one are lost.
    pub fn set_delay(&mut self, k: usize, delay_ms: u64) {
        if self.endpoints[k].delayed && self.endpoints[k].current_delay_ms != delay_ms {
            self.start_delay_line(k, delay_ms);
        }
    }

    /// The round's base delays (indexed like `endpoints`); spikes return to them.
    pub fn set_base_delays(&mut self, delays: &[u64]) {
        for (k, d) in delays.iter().enumerate() {
            self.endpoints[k].base_delay_ms = *d;
            self.set_delay(k, *d);
        }
    }

    pub fn restore_delay(&mut self, k: usize) {
        let base = self.endpoints[k].base_delay_ms;
        self.set_delay(k, base);
    }

    /// Adds a hub rule; returns its handle for `remove_rule`.
    pub fn add_rule(&mut self, rule: Rule) -> u64 {
        self.next_rule += 1;
        self.hub_rules.push((self.next_rule, rule));
        self.apply_hub_rules();
        self.next_rule
    }

    pub fn remove_rule(&mut self, handle: u64) {
        self.hub_rules.retain(|(h, _)| *h != handle);
        self.apply_hub_rules();
    }

    /// Makes a listener address refuse connections (TCP reset), as a dead process would.
    pub fn kill_listener(&mut self, addr: Ipv4Addr, port: u16) -> u64 {
        self.next_rule += 1;
        self.dead_listeners.push((self.next_rule, addr, port));
        self.apply_svc_rules();
        self.next_rule
    }

    pub fn revive_listener(&mut self, handle: u64) {
        self.dead_listeners.retain(|(h, _, _)| *h != handle);
        self.apply_svc_rules();
    }

    /// Every fault off: no rule, no dead listener, base delays.
    pub fn heal(&mut self) {
        self.hub_rules.clear();
        self.dead_listeners.clear();
        self.apply_hub_rules();
        self.apply_svc_rules();
        for k in 0..self.endpoints.len() {
            self.restore_delay(k);
        }
    }

    fn apply_hub_rules(&self) {
        let set = |addrs: &[Ipv4Addr]| {
            let list: Vec<String> = addrs.iter().map(Ipv4Addr::to_string).collect();
            format!("{{ {} }}", list.join(", "))
        };
        let mut rules = vec![
            // The observer is never faulted.
            format!("ip saddr {CTL_IP} accept"),
            format!("ip daddr {CTL_IP} accept"),
        ];
        for (_, rule) in &self.hub_rules {
            match rule {
                Rule::Isolate(addrs) => {
                    rules.push(format!("ip saddr {} drop", set(addrs)));
                    rules.push(format!("ip daddr {} drop", set(addrs)));
                }
                Rule::Cut(a, b) => {
                    rules.push(format!("ip saddr {} ip daddr {} drop", set(a), set(b)));
                    rules.push(format!("ip saddr {} ip daddr {} drop", set(b), set(a)));
                }
                Rule::Loss(addrs, pct) => {
                    rules.push(format!(
                        "ip saddr {} numgen random mod 100 < {pct} drop",
                        set(addrs)
                    ));
                    rules.push(format!(
                        "ip daddr {} numgen random mod 100 < {pct} drop",
                        set(addrs)
                    ));
                }
            }
        }
        let text = format!(
            "table bridge chaos {{}}\ndelete table bridge chaos\n\
             table bridge chaos {{\n chain forward_filter {{\n  type filter hook forward priority 0; policy accept;\n  {}\n }}\n}}\n",
            rules.join("\n  ")
        );
        self.nft(&self.hub, &text);
    }

    fn apply_svc_rules(&self) {
        let rules: Vec<String> = self
            .dead_listeners
            .iter()
            .map(|(_, addr, port)| {
                format!("ip daddr {addr} tcp dport {port} reject with tcp reset")
            })
            .collect();
        let text = format!(
            "table inet chaos {{}}\ndelete table inet chaos\n\
             table inet chaos {{\n chain input_filter {{\n  type filter hook input priority 0; policy accept;\n  {}\n }}\n}}\n",
            rules.join("\n  ")
        );
        self.nft(self.svc_ns(), &text);
    }

    fn nft(&self, ns: &str, text: &str) {
        let file = self.logs.join(format!("{ns}.nft"));
        std::fs::write(&file, text).expect("write nft rules");
        let out = run_bounded(
            ns_command(ns, "nft").arg("-f").arg(&file),
            Duration::from_secs(10),
        );
        assert!(
            out.status.success(),
            "nft in {ns} refused:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the delay lines (by PID). The namespaces go when the reaper runs.
    fn stop_delay_lines(&mut self) {
        for endpoint in &mut self.endpoints {
            if let Some(mut child) = endpoint.delay_line.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_delay_lines();
    }
}

fn start_reaper(dir: &Path, names: &[String]) {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(REAPER_SCRIPT)
        .arg("reaper")
        .arg(dir)
        .args(names)
        // Its own process group: the runner's SIGTERM/SIGKILL to this test's group miss it.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the reaper (bash)");
    let stdin = child.stdin.take();
    *REAPER.lock().unwrap_or_else(|e| e.into_inner()) = Some(Reaper { child, stdin });
}

use std::os::unix::process::CommandExt;

/// Lets the reaper run now and waits for it (at most `timeout`): every process in the namespaces
/// killed by PID, the namespaces deleted. `keep` keeps the work dir.
pub fn reap(keep: bool, timeout: Duration) -> bool {
    let Some(mut reaper) = REAPER.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return true;
    };
    if let Some(mut stdin) = reaper.stdin.take() {
        if keep {
            let _ = stdin.write_all(b"keep\n");
        }
        drop(stdin);
    }
    let deadline = Instant::now() + timeout;
    loop {
        match reaper.child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => return false,
        }
    }
}

/// On SIGTERM or SIGINT (the runner's time limit, a Ctrl-C): the reaper cleans up, then this
/// process exits. Every child also got the signal (same process group).
pub fn install_signal_cleanup() {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let name = runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let _ = ready_tx.send(());
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        });
        eprintln!("chaos: {name}: stopping every process and deleting the namespaces");
        let done = reap(false, Duration::from_secs(20));
        eprintln!("chaos: cleanup {}", if done { "done" } else { "timed out" });
        std::process::exit(if name == "SIGTERM" { 143 } else { 130 });
    });
    // The handlers exist before any child does.
    ready.recv().expect("signal handler thread");
}
