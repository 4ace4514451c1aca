//! cluster-config.json parsing and validation: never a panic, and every error names the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = flint::config::Config::parse(Path::new("/etc/flint/fuzz.json"), text) {
        let msg = e.to_string();
        assert!(
            msg.contains("/etc/flint/fuzz.json"),
            "error without the file: {msg}"
        );
        assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
    }
});
