//! flint-boot.service as the flint-boot package installs it, under a real systemd: a Debian 12
//! root booted with systemd as PID 1 in a systemd-nspawn container with its own network
//! namespace. The scenarios and their assertions are in tests/systemd/boot-server-test.sh; this
//! runs it with the release's packages (`$FLINT_PACKAGES`, or built now by scripts/release.sh;
//! flint's as the node that reports) and this build's flint-boot preparing the node on the host.

use std::path::Path;
use std::process::Command;

#[test]
fn the_packaged_unit_is_ready_once_flint_boot_serves_and_waits_for_its_settings() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new(repo.join("tests/systemd/boot-server-test.sh"))
        .arg(env!("CARGO_BIN_EXE_flint-boot"))
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
