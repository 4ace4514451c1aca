//! flint's units under a real systemd: a Debian 12 root booted with systemd as PID 1 in a
//! systemd-nspawn container, against the test servers on loopback, flint installed from its
//! Debian packages (the release's: `$FLINT_PACKAGES`, or built now by scripts/release.sh). The
//! scenarios and their assertions are in tests/systemd/boot-test.sh; this runs it with the test
//! server of this build.

use std::path::Path;
use std::process::Command;

#[test]
fn units_run_in_order_once_and_fail_as_documented_under_systemd() {
    let flint = env!("CARGO_BIN_EXE_flint");
    let testserver = Path::new(flint).with_file_name("flint-testserver");
    assert!(
        testserver.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        testserver.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/systemd/boot-test.sh");
    let output = Command::new(&script)
        .arg(&testserver)
        .output()
        .expect("run tests/systemd/boot-test.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "boot test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("all boots passed"), "{stdout}\n{stderr}");
}
