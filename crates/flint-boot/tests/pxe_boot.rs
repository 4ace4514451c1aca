//! A real PXE boot against flint-boot: QEMU VMs (SeaBIOS and OVMF) in network namespaces get
//! their address from an ordinary DHCP server and everything else from flint-boot's ProxyDHCP,
//! TFTP and HTTP, down to a kernel and initramfs that print the profile they were given. The
//! scenarios and their assertions are in tests/pxe/boot-test.sh; this runs it with the
//! flint-boot of this build. Needs root (namespaces, taps) and Debian's package mirror the first
//! time (tests/pxe/lab-setup.sh unpacks QEMU, its firmware and a kernel once).

use std::path::Path;
use std::process::Command;

#[test]
fn bios_and_uefi_machines_pxe_boot_their_profile_through_flint_boot() {
    let flint_boot = env!("CARGO_BIN_EXE_flint-boot");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/pxe/boot-test.sh");
    let output = Command::new(&script)
        .arg(flint_boot)
        .output()
        .expect("run tests/pxe/boot-test.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
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
