//! What a hostile or broken server says never reaches a log line, `systemctl status`, the
//! standard output or a marker as it was sent: a token echoed back is redacted, a line break or a
//! terminal escape in a member ID or address is escaped, and a name no marker can hold is refused.
mod common;

use common::{Canned, CannedHttp, FlintProcess, Lab, Node, random_hex, write_private};
use serde_json::{Value, json};
use std::time::Duration;

const JOIN: &[&str] = &["-v", "join", "chainfire"];

/// node04, whose chainfire (leader and local service alike) is the canned server on node01's
/// address, with a join token in its config folder; returns the token.
fn chainfire_node(lab: &Lab) -> (Node, String) {
    let url = format!("http://{}", lab.client_addr(0));
    let mut node = lab.node(3);
    let token = format!("tok-{}", random_hex(16));
    write_private(&node.dir.join("join-token"), &token);
    let config = node.config.as_object_mut().expect("object");
    config.remove("etcd");
    config.insert("join_token_file".into(), json!("join-token"));
    config.insert(
        "chainfire".into(),
        json!({"leader_url": url, "peers": [], "local_url": url}),
    );
    config.insert(
        "timeouts".into(),
        json!({"total": "3s", "request": "1s", "connect": "1s"}),
    );
    (node, token)
}

fn healthy() -> Canned {
    Canned {
        path: "/health",
        status: 200,
        body: json!({"status": "healthy"}).to_string(),
    }
}

fn run(node: &Node) -> common::FlintOutput {
    let mut command = node.command(JOIN);
    command.env("FLINT_LOG", "trace");
    FlintProcess::spawn(command).wait(Duration::from_secs(30))
}

#[test]
fn a_token_echoed_in_an_error_body_is_redacted_everywhere() {
    // Proxies and debug builds echo the request's headers in their error pages.
    for (status, code) in [(500, 69), (400, 65)] {
        let lab = Lab::new();
        let (node, token) = chainfire_node(&lab);
        let body = json!({"error": format!("bad request; you sent Authorization: Bearer {token}")});
        let server = CannedHttp::start(
            lab.client_addr(0),
            vec![
                healthy(),
                Canned {
                    path: "/admin/member/list",
                    status,
                    body: body.to_string(),
                },
            ],
        );
        let out = run(&node);
        out.assert_code(
            code,
            &format!("member list answering {status} with the token"),
        );
        assert!(
            server.requests().iter().any(|r| r.contains(&token)),
            "the token was never sent, so nothing was tested"
        );
        assert!(!out.stderr.contains(&token), "{}", out.describe());
        assert!(!out.stdout.contains(&token), "{}", out.describe());
        assert!(out.stderr.contains("[redacted]"), "{}", out.describe());
    }
}

#[test]
fn line_breaks_and_escapes_from_a_server_cannot_forge_log_lines() {
    let lab = Lab::new();
    let forged = "10.0.0.9:2380\nERROR forged line\u{1b}[2J";
    let _server = CannedHttp::start(
        lab.client_addr(0),
        vec![
            healthy(),
            Canned {
                path: "/admin/member/list",
                status: 200,
                body: json!({"leader": "node01", "members": [
                    {"id": "node01", "raft_addr": "127.0.0.1:2380", "role": "leader"}]})
                .to_string(),
            },
            Canned {
                path: "/admin/member/add",
                status: 409,
                body: json!({"member": {"id": "node04", "raft_addr": forged, "role": "follower"}})
                    .to_string(),
            },
        ],
    );
    let (node, _) = chainfire_node(&lab);
    let out = run(&node);
    out.assert_code(65, "a 409 naming this node at another address");
    assert!(
        !out.stderr.lines().any(|l| l.starts_with("ERROR forged")),
        "a server string began a log line: {}",
        out.describe()
    );
    assert!(!out.stderr.contains('\u{1b}'), "{}", out.describe());
    assert!(
        out.stderr.contains("\\nERROR forged line"),
        "the server's text, escaped: {}",
        out.describe()
    );
}

#[test]
fn a_leader_name_no_marker_can_hold_is_refused() {
    let lab = Lab::new();
    let leader = "node01\n\"joined_at\": 1";
    let _server = CannedHttp::start(
        lab.client_addr(0),
        vec![
            healthy(),
            Canned {
                path: "/admin/member/list",
                status: 200,
                body: json!({"leader": leader, "members": [
                    {"id": leader, "raft_addr": "127.0.0.1:2380", "role": "leader"},
                    {"id": "node04", "raft_addr": format!("{}:2380", lab.ip(3)), "role": "follower"}]})
                .to_string(),
            },
        ],
    );
    let (node, _) = chainfire_node(&lab);
    let out = run(&node);
    out.assert_code(65, "a leader named with a line break");
    assert!(
        out.stderr.contains("will not record in a marker"),
        "{}",
        out.describe()
    );
    let marker: Option<Value> = std::fs::read_to_string(node.state_dir.join(".chainfire-joined"))
        .ok()
        .map(|t| serde_json::from_str(&t).expect("JSON"));
    assert!(marker.is_none(), "{marker:?}");
}
