//! A real PXE boot against flint-boot: QEMU VMs (SeaBIOS and OVMF) in network namespaces get
//! their address from an ordinary DHCP server and everything else from flint-boot's ProxyDHCP,
//! TFTP and HTTP, down to a kernel and initramfs that print the profile they were given. The
//! scenarios and their assertions are in tests/pxe/boot-test.sh; this runs it with the
//! flint-boot of this build. Needs root (namespaces, taps) and Debian's package mirror the first
//! time (tests/pxe/lab-setup.sh unpacks QEMU, its firmware and a kernel once).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use tokio::signal::unix::{Signal, SignalKind, signal};

#[test]
fn bios_and_uefi_machines_pxe_boot_their_profile_through_flint_boot() {
    let flint_boot = env!("CARGO_BIN_EXE_flint-boot");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/pxe/boot-test.sh");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Signal handlers first, so that no signal can end this test between the spawn and the wait.
    let signals = runtime.block_on(async {
        let term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        (term, int)
    });
    let child = Command::new(&script)
        .arg(flint_boot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/pxe/boot-test.sh");
    let (output, stopped_by) = runtime.block_on(wait_for(child, signals));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if let Some(signal) = stopped_by {
        panic!(
            "stopped by {signal}; the boot test ended ({}) and said:\n{stdout}\n{stderr}",
            output.status
        );
    }
    assert!(
        output.status.success(),
        "PXE boot test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("all scenarios passed"),
        "{stdout}\n{stderr}"
    );
}

/// Waits for the boot test to end, and says which signal stopped this test if one did.
///
/// A SIGTERM or SIGINT meant for this test (the runner's time limit, a Ctrl-C) reaches the
/// script as well, since it runs in this process group, and the script then stops its VMs and
/// deletes its namespaces. Dying at once instead would let the runner kill the whole group
/// while that cleanup runs, leaving the namespaces behind.
async fn wait_for(
    child: Child,
    (mut term, mut int): (Signal, Signal),
) -> (Output, Option<&'static str>) {
    let mut waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    let stopped_by = tokio::select! {
        done = &mut waiting => return (done.expect("join").expect("wait for boot-test.sh"), None),
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let done = waiting.await.expect("join");
    (done.expect("wait for boot-test.sh"), Some(stopped_by))
}
