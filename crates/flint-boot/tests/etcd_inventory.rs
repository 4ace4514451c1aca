//! The inventory shared through etcd, against a real 3-member etcd cluster with client
//! certificates (tests/common/etcd.rs), the boot servers presenting `prepare`'s boot-server
//! certificate: `inventory put` validates and writes with compare-and-swap, `inventory get`
//! gives back what was written, and three `serve --etcd` follow every change, keep serving
//! through a killed or paused member and through etcd's whole absence, and say so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::etcd::{self, EtcdCluster};
use common::server::{BIN, Server};

/// Generous: a watch delivers in milliseconds; a paused member is noticed by the liveness
/// probe (every 5 s, 5 s to answer) and the next member read within the pause that follows.
const FOLLOW: Duration = Duration::from_secs(30);

fn etcd_flags(cluster: &EtcdCluster) -> Vec<String> {
    vec![
        "--etcd".into(),
        cluster.client_urls().join(","),
        "--etcd-ca".into(),
        cluster.ca().display().to_string(),
        "--etcd-cert".into(),
        cluster.boot_server_cert().display().to_string(),
        "--etcd-key".into(),
        cluster.boot_server_key().display().to_string(),
    ]
}

fn flint_boot(args: &[&str], etcd_flags: &[String]) -> Output {
    etcd::run_bounded(
        Command::new(BIN).args(args).args(etcd_flags),
        Duration::from_secs(60),
    )
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

/// An inventory whose one node boots `kernel`.
fn inventory(dir: &Path, name: &str, kernel: &str) -> PathBuf {
    let path = dir.join(name);
    let json = format!(
        r#"{{"profiles": {{"node": {{"kernel": "{kernel}"}}}},
            "nodes": [{{"name": "node01", "mac": "52:54:00:00:00:01", "profile": "node"}}],
            "unknown": {{"policy": "refuse"}}}}"#
    );
    std::fs::write(&path, json).unwrap();
    path
}

fn revision_of(output: &Output) -> i64 {
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("revision "))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no revision in {stderr:?}"))
}

/// What a boot server answers node01's iPXE with.
fn script(server: &Server) -> String {
    server.get("/ipxe?mac=52-54-00-00-00-01")
}

fn machines(server: &Server) -> serde_json::Value {
    serde_json::from_str(&server.get("/api/machines")).unwrap()
}

fn metric(server: &Server, name: &str) -> String {
    let metrics = server.get("/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
}

fn wait_for(cluster: &EtcdCluster, what: &str, mut ok: impl FnMut() -> bool) {
    cluster.wait_until(what, FOLLOW, || ok().then_some(()));
}

#[test]
fn put_validates_and_swaps_on_the_revision_and_get_gives_back_what_was_written() {
    if !etcd::installed_or_say_so() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let flags = etcd_flags(&cluster);
    let dir = cluster.dir();

    let none = flint_boot(&["inventory", "get"], &flags);
    assert_eq!(code(&none), Some(78), "{}", text(&none));
    assert!(text(&none).contains("etcd has no inventory at /flint/inventory"));

    // Invalid: refused before anything is sent, naming the file and the field.
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"profiles": {}, "nodes": [{"name": "x", "mac": "nope", "profile": "y"}]}"#,
    )
    .unwrap();
    let refused = flint_boot(&["inventory", "put", bad.to_str().unwrap()], &flags);
    assert_eq!(code(&refused), Some(78), "{}", text(&refused));
    assert!(text(&refused).contains("bad.json"), "{}", text(&refused));
    assert!(
        text(&refused).contains("nothing written"),
        "{}",
        text(&refused)
    );
    let stored = cluster.etcdctl(&["get", "/flint/inventory", "--print-value-only"]);
    assert!(
        stored.stdout.is_empty(),
        "an invalid inventory reached etcd"
    );

    let first = inventory(dir, "first.json", "k1");
    let put = flint_boot(&["inventory", "put", first.to_str().unwrap()], &flags);
    assert_eq!(code(&put), Some(0), "{}", text(&put));
    assert!(text(&put).contains("written to etcd /flint/inventory at revision"));

    let got = flint_boot(&["inventory", "get"], &flags);
    assert_eq!(code(&got), Some(0), "{}", text(&got));
    assert_eq!(
        got.stdout,
        std::fs::read(&first).unwrap(),
        "get gives the bytes put"
    );
    let read_at = revision_of(&got);

    // The same again: nothing written, the revision stays.
    let again = flint_boot(&["inventory", "put", first.to_str().unwrap()], &flags);
    assert_eq!(code(&again), Some(0), "{}", text(&again));
    assert!(text(&again).contains("unchanged"), "{}", text(&again));
    assert_eq!(
        revision_of(&flint_boot(&["inventory", "get"], &flags)),
        read_at
    );

    // Two operators read the same revision and put at once: one wins, the other is told.
    let a = inventory(dir, "a.json", "ka");
    let b = inventory(dir, "b.json", "kb");
    let revision = read_at.to_string();
    let puts: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = [&a, &b]
            .map(|file| {
                let (flags, revision) = (&flags, &revision);
                s.spawn(move || {
                    flint_boot(
                        &[
                            "inventory",
                            "put",
                            file.to_str().unwrap(),
                            "--revision",
                            revision,
                        ],
                        flags,
                    )
                })
            })
            .into_iter()
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let codes: Vec<_> = puts.iter().map(code).collect();
    assert!(
        codes == [Some(0), Some(75)] || codes == [Some(75), Some(0)],
        "{codes:?}: {}\n{}",
        text(&puts[0]),
        text(&puts[1])
    );
    let loser = &puts[codes.iter().position(|c| *c == Some(75)).unwrap()];
    assert!(
        text(loser).contains(&format!("expected revision {read_at}, found revision")),
        "{}",
        text(loser)
    );
    let winner = if codes[0] == Some(0) { &a } else { &b };
    let now = flint_boot(&["inventory", "get"], &flags);
    assert_eq!(
        now.stdout,
        std::fs::read(winner).unwrap(),
        "the winner's is stored"
    );

    // --revision 0: only where none is stored.
    let create_only = [
        "inventory",
        "put",
        first.to_str().unwrap(),
        "--revision",
        "0",
    ];
    let create = flint_boot(&create_only, &flags);
    assert_eq!(code(&create), Some(75), "{}", text(&create));
    let other_prefix = [
        flags.clone(),
        vec!["--etcd-prefix".into(), "/site2/".into()],
    ]
    .concat();
    let create = flint_boot(&create_only, &other_prefix);
    assert_eq!(code(&create), Some(0), "{}", text(&create));
    assert!(
        text(&create).contains("/site2/inventory"),
        "{}",
        text(&create)
    );

    // Without a client certificate etcd refuses the connection; the flags say what is missing.
    let no_cert = flint_boot(&["inventory", "get", "--etcd", &cluster.client_url(0)], &[]);
    assert_eq!(code(&no_cert), Some(64), "{}", text(&no_cert));
    assert!(text(&no_cert).contains("--etcd-ca, --etcd-cert and --etcd-key"));
}

#[test]
fn three_boot_servers_follow_etcd_through_a_killed_member_a_paused_one_and_an_outage() {
    if !etcd::installed_or_say_so() {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    let flags = etcd_flags(&cluster);
    let dir = cluster.dir().to_owned();
    let put = |name: &str, kernel: &str| {
        let file = inventory(&dir, name, kernel);
        let out = flint_boot(&["inventory", "put", file.to_str().unwrap()], &flags);
        assert_eq!(code(&out), Some(0), "{}", text(&out));
    };
    put("v1.json", "v1/vmlinuz");
    let servers: Vec<Server> = (0..3).map(|_| Server::start_from(&flags, &[])).collect();
    for server in &servers {
        assert!(script(server).contains("v1/vmlinuz"), "{}", server.log());
        let origin = &machines(server)["inventory"];
        assert_eq!(origin["source"], "etcd");
        assert_eq!(origin["name"], "/flint/inventory");
        assert!(origin["stale"].is_null());
    }
    let every_server_serves = |kernel: &str| servers.iter().all(|s| script(s).contains(kernel));

    put("v2.json", "v2/vmlinuz");
    wait_for(&cluster, "every boot server to serve v2", || {
        every_server_serves("v2/vmlinuz")
    });

    // Written past `inventory put`'s check: every server refuses it and keeps v2.
    let revision_v2 = metric(&servers[0], "flint_boot_inventory_revision");
    let out = cluster.etcdctl(&["put", "/flint/inventory", r#"{"nodes": "not a list"}"#]);
    assert!(out.status.success(), "{}", text(&out));
    for server in &servers {
        server.wait_log("new inventory rejected, still serving the previous one");
        assert!(script(server).contains("v2/vmlinuz"));
        assert_eq!(
            metric(
                server,
                "flint_boot_inventory_reloads_total{result=\"rejected\"}"
            ),
            "1"
        );
        assert_eq!(metric(server, "flint_boot_inventory_revision"), revision_v2);
    }

    // The member every server watches (the first URL) killed: the others carry the change, and
    // no server calls its inventory stale.
    cluster.kill(0);
    put("v3.json", "v3/vmlinuz");
    wait_for(
        &cluster,
        "every boot server to serve v3 with member 0 dead",
        || every_server_serves("v3/vmlinuz"),
    );
    for server in &servers {
        server.wait_log("the watch of the inventory broke; reading it from the other members");
        assert!(
            !server.log().contains("etcd unreachable"),
            "{}",
            server.log()
        );
        assert_eq!(metric(server, "flint_boot_inventory_stale"), "0");
    }
    cluster.restart(0);

    // A paused member keeps its connections open and says nothing: the liveness probe moves
    // each server off it (they moved to member 1, the next URL, when member 0 died).
    cluster.pause(1);
    put("v4.json", "v4/vmlinuz");
    wait_for(
        &cluster,
        "every boot server to serve v4 with member 1 paused",
        || every_server_serves("v4/vmlinuz"),
    );
    cluster.resume(1);

    // etcd gone entirely: the last inventory serves, and the log, the page, the JSON and
    // /metrics say it may be out of date.
    for i in 0..3 {
        cluster.kill(i);
    }
    for server in &servers {
        server.wait_log("etcd unreachable: still serving the last inventory read from it");
        assert!(script(server).contains("v4/vmlinuz"));
        wait_for(&cluster, "the stale mark", || {
            metric(server, "flint_boot_inventory_stale") == "1"
        });
        let origin = &machines(server)["inventory"];
        assert!(
            origin["stale"]["reason"]
                .as_str()
                .unwrap()
                .contains("cannot reach etcd"),
            "{origin}"
        );
        assert!(
            server
                .get("/")
                .contains("INVENTORY MAY BE OUT OF DATE: etcd unreachable"),
            "{}",
            server.get("/")
        );
    }
    // Back: the servers read what they missed without being told.
    for i in 0..3 {
        cluster.start_member(i);
    }
    cluster.wait_healthy(Duration::from_secs(30));
    put("v5.json", "v5/vmlinuz");
    wait_for(
        &cluster,
        "every boot server to serve v5 after the outage",
        || {
            every_server_serves("v5/vmlinuz")
                && servers
                    .iter()
                    .all(|s| metric(s, "flint_boot_inventory_stale") == "0")
        },
    );
    for server in &servers {
        server.wait_log("etcd reachable again; serving its inventory");
        assert!(machines(server)["inventory"]["stale"].is_null());
    }
}

#[test]
fn serve_waits_for_the_first_inventory_and_gives_up_with_69() {
    if !etcd::installed_or_say_so() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let flags = etcd_flags(&cluster);
    let images = tempfile::tempdir().unwrap();
    let serve = |wait: &str| {
        etcd::run_bounded(
            Command::new(BIN)
                .args(["serve", "--http", "127.0.0.1:0", "--etcd-start-wait", wait])
                .arg("--images")
                .arg(images.path())
                .args(&flags),
            Duration::from_secs(30),
        )
    };
    let out = serve("2");
    assert_eq!(code(&out), Some(69), "{}", text(&out));
    assert!(
        text(&out).contains(
            "no inventory read from etcd within 2s: etcd has no inventory at /flint/inventory: \
             write one with"
        ),
        "{}",
        text(&out)
    );

    // Started before the operator's first put: it serves once the inventory is there.
    let dir = cluster.dir().to_owned();
    let writer = std::thread::spawn({
        let flags = flags.clone();
        move || {
            std::thread::sleep(Duration::from_secs(2));
            let file = inventory(&dir, "late.json", "late/vmlinuz");
            flint_boot(&["inventory", "put", file.to_str().unwrap()], &flags)
        }
    });
    let server = Server::start_from(&flags, &[]);
    let put = writer.join().unwrap();
    assert_eq!(code(&put), Some(0), "{}", text(&put));
    assert!(script(&server).contains("late/vmlinuz"), "{}", server.log());
    assert!(server.log().contains("waiting for one"), "{}", server.log());

    // Both sources at once is a usage error.
    let both = etcd::run_bounded(
        Command::new(BIN)
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--inventory",
                "x.json",
                "--images",
            ])
            .arg(images.path())
            .args(&flags),
        Duration::from_secs(10),
    );
    assert_eq!(code(&both), Some(64), "{}", text(&both));
}

/// An inventory of `n` machines m00.. booting debian/vmlinuz (the image every test server has).
fn fleet_inventory(dir: &Path, n: usize) -> PathBuf {
    let nodes: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({"name": format!("m{i:02}"), "mac": format!("52:54:00:00:01:{i:02x}"),
                               "profile": "node"})
        })
        .collect();
    let inventory = serde_json::json!({
        "profiles": {"node": {"kernel": "debian/vmlinuz"}},
        "nodes": nodes,
        "unknown": {"policy": "refuse"},
    });
    let path = dir.join("fleet.json");
    std::fs::write(&path, inventory.to_string()).unwrap();
    path
}

/// Machine `i` boots from the boot servers `via` (one per request: boot.ipxe, its script, its
/// kernel), from an address of its own in the cluster's /24 (`net`: an address in it).
fn boot(net: [u8; 4], servers: &[Server], i: usize, via: [usize; 3]) {
    let ip = net;
    let from = format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], 100 + i);
    let paths = [
        "/boot.ipxe".to_owned(),
        format!("/ipxe?mac=52-54-00-00-01-{i:02x}"),
        "/images/debian/vmlinuz".to_owned(),
    ];
    for (server, path) in via.iter().zip(&paths) {
        let out = servers[*server].curl(&["--fail", "--interface", &from, "-o", "/dev/null", path]);
        assert!(out.status.success(), "machine {i}, {path}: {}", text(&out));
    }
}

/// Each machine's steps as one server's view lists them: (name, [(step, server)]).
fn journeys_of(server: &Server) -> Vec<(String, Vec<(String, String)>)> {
    let fleet = machines(server);
    let mut out: Vec<_> = fleet["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let steps = m["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["step"].as_str().unwrap().to_owned(),
                        s["server"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            (m["name"].as_str().unwrap_or("-").to_owned(), steps)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_boot_servers_view_shows_every_machine_whichever_server_answered_it() {
    if !etcd::installed_or_say_so() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let flags = etcd_flags(&cluster);
    const MACHINES: usize = 30;
    let file = fleet_inventory(cluster.dir(), MACHINES);
    let put = flint_boot(&["inventory", "put", file.to_str().unwrap()], &flags);
    assert_eq!(code(&put), Some(0), "{}", text(&put));
    let servers: Vec<Server> = (0..3).map(|_| Server::start_from(&flags, &[])).collect();

    // Machine 0 takes its script from server 0 and its kernel from server 1: server 1 alone
    // cannot tell whose download it was, the shared steps tell it.
    let net = cluster.ip(0).octets();
    boot(net, &servers, 0, [0, 0, 1]);
    // The rest at once, each request to a server of its own choosing.
    std::thread::scope(|s| {
        for i in 1..MACHINES {
            let servers = &servers;
            s.spawn(move || boot(net, servers, i, [i % 3, (i + 1) % 3, (i / 3) % 3]));
        }
    });
    let complete = |server: &Server| {
        let journeys = journeys_of(server);
        journeys.len() == MACHINES
            && journeys.iter().all(|(name, steps)| {
                name != "-"
                    && steps
                        .iter()
                        .map(|(step, _)| step.as_str())
                        .collect::<Vec<_>>()
                        == ["boot-script", "script", "image"]
            })
    };
    wait_for(
        &cluster,
        "every view to show every machine's 3 steps",
        || servers.iter().all(complete),
    );
    let first = journeys_of(&servers[0]);
    for server in &servers[1..] {
        assert_eq!(journeys_of(server), first, "the views differ");
    }
    let m00 = &first.iter().find(|(name, _)| name == "m00").unwrap().1;
    assert_eq!(m00.len(), 3);
    for server in &servers {
        let fleet = machines(server);
        let m00 = fleet["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "m00")
            .unwrap();
        assert_eq!(m00["phase"], "installer", "{m00}");
        assert_eq!(
            metric(
                server,
                "flint_boot_shared_steps_total{outcome=\"unshared\"}"
            ),
            "0"
        );
        assert_eq!(
            metric(server, "flint_boot_shared_steps_total{outcome=\"refused\"}"),
            "0"
        );
    }
    let written: u64 = servers
        .iter()
        .map(|s| {
            metric(s, "flint_boot_shared_steps_total{outcome=\"written\"}")
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(
        written,
        3 * MACHINES as u64,
        "each step written once, by the server that saw it"
    );

    // A step written past flint-boot (garbage under the prefix): refused, counted, nothing else.
    let out = cluster.etcdctl(&[
        "put",
        "/flint/journeys/intruder-1-0/0000000000000001",
        "{\"server\":1}",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(&cluster, "the malformed step to be refused", || {
        servers
            .iter()
            .all(|s| metric(s, "flint_boot_shared_steps_total{outcome=\"refused\"}") == "1")
    });

    // A server started now learns every journey from etcd.
    let late = Server::start_from(&flags, &[]);
    wait_for(&cluster, "a new server to show every journey", || {
        journeys_of(&late) == first
    });
}

#[test]
fn shared_steps_expire_after_the_retention_time() {
    if !etcd::installed_or_say_so() {
        return;
    }
    let cluster = EtcdCluster::start(1);
    let flags = etcd_flags(&cluster);
    let file = fleet_inventory(cluster.dir(), 1);
    let put = flint_boot(&["inventory", "put", file.to_str().unwrap()], &flags);
    assert_eq!(code(&put), Some(0), "{}", text(&put));
    let server = Server::start_from(&flags, &["--journey-retention", "10s"]);
    boot(
        cluster.ip(0).octets(),
        std::slice::from_ref(&server),
        0,
        [0, 0, 0],
    );
    // Steps go in batches, a key each, one step a line of its value.
    let stored = || {
        let out = cluster.etcdctl(&["get", "/flint/journeys/", "--prefix", "--print-value-only"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| line.starts_with("{\"server\":"))
            .count()
    };
    wait_for(&cluster, "the machine's 3 steps in etcd", || stored() == 3);
    // Leases end 10 s after they were granted (a new one every 2.5 s): every step goes.
    wait_for(&cluster, "etcd to forget the steps", || stored() == 0);
    assert_eq!(
        journeys_of(&server).len(),
        1,
        "the server's own memory keeps it"
    );

    let refused = etcd::run_bounded(
        Command::new(BIN)
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--journey-retention",
                "5s",
            ])
            .args(["--images", "/nonexistent"])
            .args(&flags),
        Duration::from_secs(10),
    );
    assert_eq!(code(&refused), Some(64), "{}", text(&refused));
    assert!(
        text(&refused).contains("expected from 10s to 720h"),
        "{}",
        text(&refused)
    );
}
