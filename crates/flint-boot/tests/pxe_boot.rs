//! A real PXE boot against flint-boot: QEMU VMs (SeaBIOS and OVMF) in network namespaces get
//! their address from an ordinary DHCP server and everything else from flint-boot's ProxyDHCP,
//! TFTP and HTTP, down to a kernel and initramfs that print the profile they were given; and
//! real iPXE booting `flint-boot render`'s static set from a plain web server. The scenarios and
//! their assertions are in tests/pxe/boot-test.sh and static-boot-test.sh; this runs them with
//! the flint-boot of this build. Needs root (namespaces, taps) and Debian's package mirror the first
//! time (tests/pxe/lab-setup.sh unpacks QEMU, its firmware and a kernel once).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use tokio::signal::unix::{Signal, SignalKind, signal};

#[test]
fn bios_and_uefi_machines_pxe_boot_their_profile_through_flint_boot() {
    run("boot-test.sh");
}

/// `flint-boot render`'s set behind `python3 -m http.server`, booted by real iPXE
/// (tests/pxe/static-boot-test.sh): a known machine boots its profile, an unknown one is refused
/// and its firmware moves on.
#[test]
fn a_static_set_behind_a_plain_web_server_boots_real_ipxe() {
    run("static-boot-test.sh");
}

/// Runs tests/pxe/SCRIPT with the flint-boot of this build; it prints "all scenarios passed".
fn run(script: &str) {
    let flint_boot = env!("CARGO_BIN_EXE_flint-boot");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/pxe")
        .join(script);
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
    let child = Command::new(&path)
        .arg(flint_boot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    let (output, stopped_by) = runtime.block_on(wait_for(child, signals));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if let Some(signal) = stopped_by {
        panic!(
            "stopped by {signal}; {script} ended ({}) and said:\n{stdout}\n{stderr}",
            output.status
        );
    }
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
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
        done = &mut waiting => return (done.expect("join").expect("wait for the script"), None),
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let done = waiting.await.expect("join");
    (done.expect("wait for the script"), Some(stopped_by))
}
