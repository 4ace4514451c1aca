//! A boot server that cannot take a node's report never delays a join past the report's
//! deadline nor changes its outcome: one that accepts the connection and never answers, a port
//! where nothing listens, and a server that does not speak TLS. Each join exits 0 with its
//! marker, and the log says once why the report was lost, without a secret.
//! (Reports delivered to a real flint-boot: tests/prepared_cluster.rs.)
mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::{
    CHAINFIRE_MARKER, CHAINFIRE_PORT, Canned, CannedHttp, Lab, Node, Secrets, TestServer,
    chain_node, marker,
};
use serde_json::json;

/// The join's own work against the test server takes well under a second; the report adds its
/// 2 s deadline at most.
const BOUND: Duration = Duration::from_secs(8);

fn join_with_report_url(node: &mut Node, url: String, lost: &str) {
    node.config["report_url"] = json!(url);
    let out = node.run(&["join", "chainfire"]);
    out.assert_code(0, &format!("{}: join chainfire", node.id));
    assert!(
        out.elapsed < BOUND,
        "the report held the join up: {}",
        out.describe()
    );
    assert!(
        marker(node, CHAINFIRE_MARKER).is_some(),
        "no marker: {}",
        out.describe()
    );
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("could not report"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning: {}", out.describe());
    assert!(
        warnings[0].contains("chainfire join") && warnings[0].contains(lost),
        "the reason ({lost}): {}",
        out.describe()
    );
    assert!(
        warnings[0].contains("goes on without it"),
        "{}",
        out.describe()
    );
    let token_file = node.config["join_token_file"]
        .as_str()
        .expect("a file name");
    let token = std::fs::read_to_string(node.dir.join(token_file)).expect("the join token");
    assert!(!out.stderr.contains(token.trim()), "{}", out.describe());
}

#[test]
fn a_report_that_cannot_be_delivered_neither_delays_nor_fails_the_join() {
    let lab = Lab::new();
    let secrets = Secrets::generate(&lab);
    let _chainfire = TestServer::cluster(&lab, CHAINFIRE_PORT, 3, 3, secrets.cluster_options(&lab));

    // Accepts (the kernel's backlog does) and never answers: the TLS handshake never ends.
    let silent = TcpListener::bind(SocketAddr::new(lab.ip(7).into(), 8443)).expect("bind");
    let mut node = chain_node(&lab, 0, &secrets, true);
    join_with_report_url(
        &mut node,
        format!(
            "https://{}/api/reports",
            silent.local_addr().expect("address")
        ),
        "within 2",
    );

    let mut node = chain_node(&lab, 1, &secrets, true);
    join_with_report_url(
        &mut node,
        format!("https://{}:8443/api/reports", lab.ip(8)),
        "refused",
    );

    let plain = CannedHttp::start(
        SocketAddr::new(lab.ip(9).into(), 8443),
        vec![Canned {
            path: "/api/reports",
            status: 204,
            body: String::new(),
        }],
    );
    let mut node = chain_node(&lab, 2, &secrets, true);
    join_with_report_url(
        &mut node,
        format!(
            "https://{}/api/reports",
            plain.url().trim_start_matches("http://")
        ),
        "report",
    );
}
