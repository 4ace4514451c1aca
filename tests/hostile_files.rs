//! The node's own folders as a hostile or careless hand may leave them: a FIFO, a device or a
//! link where a file belongs, a link planted where flint writes. flint reads only regular files,
//! with a bound and without blocking, writes nothing through a link, and says which file is wrong
//! with the documented status, at once.
mod common;

use common::{FlintOutput, FlintProcess, Lab, Node, dir_entries};
use serde_json::json;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

const ADD: &[&str] = &["join", "etcd", "--phase", "add"];

/// A node whose cluster does not exist: anything that gets past the files ends in 69, not in the
/// status a test expects.
fn lab_node(lab: &Lab) -> Node {
    let mut node = lab.node(3);
    node.config["timeouts"] = json!({"total": "2s", "request": "1s", "connect": "1s"});
    node
}

/// Runs flint and requires it to end well before any deadline could have: nothing may block.
fn run_quickly(node: &Node, args: &[&str]) -> FlintOutput {
    let out = FlintProcess::spawn(node.command(args)).wait(Duration::from_secs(20));
    assert!(
        out.elapsed < Duration::from_secs(2),
        "flint took {:?}: {}",
        out.elapsed,
        out.describe()
    );
    out
}

fn fifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

#[test]
fn a_certificate_linked_to_dev_zero_is_refused_not_read() {
    // It once made rustls ask for 2 GiB and abort (134).
    let lab = Lab::new();
    let node = lab_node(&lab);
    let ca = node.dir.join("ca.pem");
    std::fs::remove_file(&ca).expect("remove the CA");
    symlink("/dev/zero", &ca).expect("link the CA to /dev/zero");
    let out = run_quickly(&node, ADD);
    out.assert_code(78, "tls.ca linked to /dev/zero");
    assert!(
        out.stderr.contains("ca.pem") && out.stderr.contains("not a regular file"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_fifo_in_place_of_a_token_or_a_marker_does_not_block() {
    let lab = Lab::new();
    let mut node = lab_node(&lab);
    let token = node.dir.join("join-token");
    fifo(&token);
    node.config["join_token_file"] = json!("join-token");
    let out = run_quickly(&node, &["join", "chainfire"]);
    out.assert_code(78, "a FIFO in place of the join token");
    assert!(out.stderr.contains("join-token"), "{}", out.describe());

    let lab = Lab::new();
    let node = lab_node(&lab);
    std::fs::create_dir_all(&node.state_dir).unwrap();
    fifo(&node.marker_path());
    let out = run_quickly(&node, ADD);
    out.assert_code(78, "a FIFO where the marker belongs");
    assert!(
        out.stderr.contains(".etcd-joined") && out.stderr.contains("not a regular file"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_lock_link_planted_in_the_state_folder_writes_nothing_through_it() {
    let lab = Lab::new();
    let node = lab_node(&lab);
    let victim = lab.path().join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    std::fs::create_dir_all(&node.state_dir).unwrap();
    symlink(&victim, node.state_dir.join(".etcd.lock")).unwrap();
    let out = run_quickly(&node, ADD);
    out.assert_code(78, "a link where the lock belongs");
    assert!(out.stderr.contains(".etcd.lock"), "{}", out.describe());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
}

#[test]
fn the_state_folder_flint_creates_is_private() {
    let lab = Lab::new();
    let node = lab_node(&lab);
    std::fs::remove_dir_all(&node.state_dir).ok();
    let out = node.run(ADD);
    out.assert_code(69, "no cluster");
    let mode = std::fs::metadata(&node.state_dir)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "{:o}", mode);
    assert_eq!(dir_entries(&node.state_dir), [".etcd.lock"]);
}
