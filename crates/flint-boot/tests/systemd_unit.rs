//! systemd/flint-boot.service as shipped, under a real systemd: a Debian 12 root booted with
//! systemd as PID 1 in a systemd-nspawn container with its own network namespace. The scenarios
//! and their assertions are in tests/systemd/boot-server-test.sh; this runs it with this build's
//! flint-boot, and its flint as the node that reports.

use std::path::Path;
use std::process::Command;

#[test]
fn the_unit_is_ready_once_flint_boot_serves_and_needs_its_settings() {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/systemd/boot-server-test.sh");
    // The node binary of the same build, beside this one: the client a node runs.
    let flint = Path::new(env!("CARGO_BIN_EXE_flint-boot")).with_file_name("flint");
    let output = Command::new(&script)
        .arg(env!("CARGO_BIN_EXE_flint-boot"))
        .arg(&flint)
        .output()
        .expect("run tests/systemd/boot-server-test.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "unit test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("all boots passed"), "{stdout}\n{stderr}");
}
