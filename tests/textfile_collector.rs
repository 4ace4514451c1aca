//! node_exporter's textfile collector reads what `flint health --textfile` writes. Debian's
//! prometheus-node-exporter (scripts/setup.sh installs it) runs here as its own user
//! `prometheus`, on a loopback address of this test's lab, with a textfile folder owned like
//! Debian's (root, 0755); flint runs with the units' `UMask=0077`. It is scraped over HTTP the
//! whole time flint rewrites the file: flint's metrics with their values, and never a scrape
//! error or a half-written file. The system's own node_exporter service, if any, is not used.
mod common;

use common::{CHAINFIRE_PORT, FlintProcess, Lab, Secrets, TestServer, chain_node, sample};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const USER: &str = "prometheus";

/// node_exporter as user `prometheus`, with only the textfile collector; killed by PID on drop.
struct NodeExporter {
    child: Child,
    addr: SocketAddr,
}

impl NodeExporter {
    fn start(addr: SocketAddr, textfile_dir: &Path, log: &Path) -> NodeExporter {
        assert!(
            Path::new(NODE_EXPORTER).is_file(),
            "{NODE_EXPORTER} is missing: scripts/setup.sh installs prometheus-node-exporter"
        );
        assert!(
            nix::unistd::User::from_name(USER).ok().flatten().is_some(),
            "no user {USER}: scripts/setup.sh installs prometheus-node-exporter, which adds it"
        );
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test runs node_exporter as {USER}: it needs root"
        );
        let log = std::fs::File::create(log).expect("node_exporter log");
        // setpriv execs node_exporter itself, so the child's PID is node_exporter's.
        let child = Command::new("setpriv")
            .args([
                &format!("--reuid={USER}"),
                &format!("--regid={USER}"),
                "--clear-groups",
                NODE_EXPORTER,
            ])
            .arg(format!("--web.listen-address={addr}"))
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg(format!(
                "--collector.textfile.directory={}",
                textfile_dir.display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start node_exporter through setpriv");
        let exporter = NodeExporter { child, addr };
        common::wait_until("node_exporter to answer", Duration::from_secs(15), || {
            scrape(exporter.addr).ok()
        });
        exporter
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /metrics`, the body of a 200.
fn scrape(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("not a 200: {head}"));
    }
    Ok(body.to_owned())
}

#[test]
fn node_exporter_reads_the_health_textfile_as_its_own_user() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let _chainfire = TestServer::cluster(&lab, CHAINFIRE_PORT, 3, 3, secrets.cluster_options(&lab));
    let mut node = chain_node(&lab, 3, &secrets, false);
    let config = node.config.as_object_mut().expect("an object");
    config.remove("flaredb");
    config.remove("iam");
    node.config["timeouts"] = json!({"total": "15s", "request": "3s", "connect": "2s"});

    // Debian's folder is root's, mode 0755, in a path node_exporter's user can walk (the lab's
    // own folder is private).
    let folder = tempfile::Builder::new()
        .prefix("flint-textfile-")
        .tempdir()
        .expect("textfile folder");
    std::fs::set_permissions(folder.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod 0755");
    let textfile = folder.path().join("cluster-health.prom");
    let exporter = NodeExporter::start(
        SocketAddr::new(lab.ip(15).into(), 9100),
        folder.path(),
        &lab.path().join("node_exporter.log"),
    );

    let health = || {
        let command = node.command(&["health", "--textfile", textfile.to_str().expect("UTF-8")]);
        // The units' UMask=0077.
        let out = FlintProcess::spawn(under_umask(&command, "0077")).wait(Duration::from_secs(60));
        out.assert_code(0, "health --textfile");
        out
    };
    let first = health();

    // Scraped without a pause while flint rewrites the file: every scrape sees a whole file.
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let stop = Arc::clone(&stop);
        let addr = exporter.addr;
        std::thread::spawn(move || {
            let mut scrapes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                scrapes.push(scrape(addr));
            }
            scrapes
        })
    };
    let mut runs = vec![first];
    for _ in 0..10 {
        runs.push(health());
    }
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("scraper thread");
    assert!(scrapes.len() >= 10, "only {} scrapes", scrapes.len());
    for scrape in &scrapes {
        let metrics = scrape.as_ref().expect("every scrape answers");
        assert_eq!(
            sample(metrics, "node_textfile_scrape_error", &[]),
            Some(0.0),
            "node_exporter could not read the textfile:\n{metrics}"
        );
        assert_eq!(
            sample(
                metrics,
                "flint_cluster_healthy",
                &[("service", "chainfire")]
            ),
            Some(1.0),
            "a scrape without flint's metrics:\n{metrics}"
        );
    }

    let metrics = scrape(exporter.addr).expect("final scrape");
    let leader = format!("https://{}:{CHAINFIRE_PORT}/", lab.ip(0));
    for (name, labels, value) in [
        (
            "flint_cluster_healthy",
            &[("service", "chainfire")][..],
            1.0,
        ),
        ("flint_cluster_members", &[("service", "chainfire")], 3.0),
        ("flint_cluster_leaders", &[("service", "chainfire")], 1.0),
        (
            "flint_member_healthy",
            &[("service", "chainfire"), ("member", "node02")],
            1.0,
        ),
        (
            "flint_endpoint_up",
            &[
                ("service", "chainfire"),
                ("endpoint", leader.as_str()),
                ("field", "leader_url"),
            ],
            1.0,
        ),
        ("node_textfile_scrape_error", &[], 0.0),
    ] {
        assert_eq!(
            sample(&metrics, name, labels),
            Some(value),
            "{name}{labels:?} in\n{metrics}"
        );
    }
    common::assert_checked_recently(&metrics);

    let meta = std::fs::metadata(&textfile).expect("the textfile");
    assert_eq!(meta.mode() & 0o7777, 0o644, "world-readable, no more");
    assert_eq!(
        common::dir_entries(folder.path()),
        ["cluster-health.prom"],
        "only the textfile: no temporary file left beside it"
    );
    let text = std::fs::read_to_string(&textfile).expect("read the textfile");
    for run in &runs {
        for output in [&run.stdout, &run.stderr, &text] {
            assert!(
                !output.contains(&secrets.join_token),
                "the join token leaked: {output}"
            );
        }
    }
}

/// `command` run by a shell that sets the umask first and then execs it (the workspace has no
/// unsafe code, so no `pre_exec`).
fn under_umask(command: &Command, mask: &str) -> Command {
    let mut shell = Command::new("/bin/sh");
    shell
        .arg("-c")
        .arg(format!("umask {mask} && exec \"$0\" \"$@\""));
    common::wrapped(shell, command)
}
