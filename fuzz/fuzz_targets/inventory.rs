//! Inventory parsing, validation and rendering: whatever the file says, no script line starts
//! with anything but a known command or a label, and no data reaches a line as iPXE syntax.
#![no_main]

use flint_ipxe::{Arch, COMMANDS, Inventory, render_refuse};
use libfuzzer_sys::fuzz_target;

/// Lines flint writes itself that use iPXE syntax on purpose.
const TRUSTED: &[&str] = &[
    "menu flint: choose a profile for ${netX/mac}",
    "choose target || exit 1",
    "goto ${target}",
    "echo flint: machine ${netX/mac} is not in the inventory, refused",
];

fn check(script: &str) {
    assert!(
        script.starts_with("#!ipxe\n") && script.ends_with('\n'),
        "{script:?}"
    );
    for line in script.lines().skip(1) {
        if TRUSTED.contains(&line) {
            continue;
        }
        assert!(!line.is_empty() && line.is_ascii(), "{line:?}");
        assert!(!line.bytes().any(|b| b.is_ascii_control()), "{line:?}");
        assert!(!line.contains('$'), "expansion in {line:?}");
        let mut words = line.split(' ');
        let first = words.next().unwrap_or_default();
        assert!(
            COMMANDS.contains(&first) || (first.starts_with(':') && first.len() > 1),
            "line starts with {first:?}"
        );
        for w in words {
            assert!(!w.is_empty(), "double space in {line:?}");
            assert!(!["||", "&&", ";"].contains(&w), "separator in {line:?}");
            assert!(!w.starts_with('#') && !w.starts_with('-'), "{line:?}");
        }
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
