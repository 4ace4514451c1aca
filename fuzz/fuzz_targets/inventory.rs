//! Inventory parsing, validation and rendering: whatever the file says, no script line starts
//! with anything but a known command or a label, and no data reaches a line as iPXE syntax.
#![no_main]

use flint_ipxe::{Arch, Inventory, check_script, render_refuse};
use libfuzzer_sys::fuzz_target;

fn check(script: &str) {
    if let Err(broken) = check_script(script) {
        panic!("a rendered script breaks the injection property: {broken}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Inventory::from_json("inventory.json", text) {
        Ok(inv) => {
            for arch in [
                None,
                Some(Arch::I386),
                Some(Arch::X86_64),
                Some(Arch::Arm64),
            ] {
                for node in inv.nodes() {
                    check(&inv.render(&inv.select(Some(&node.mac), None, arch), arch));
                    if let Some(uuid) = &node.uuid {
                        check(&inv.render(&inv.select(None, Some(uuid), arch), arch));
                    }
                }
                check(&inv.render(&inv.select(None, None, arch), arch));
                check(&inv.render_menu(arch));
            }
            check(&render_refuse());
        }
        Err(errors) => {
            for e in errors.0 {
                let msg = e.to_string();
                assert!(msg.starts_with("inventory.json"), "{msg}");
                assert!(!msg.contains(['\n', '\r']), "{msg:?}");
            }
        }
    }
});
