//! The run-once markers in the state directory, as flint reads them back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(marker) = serde_json::from_slice::<flint::state::Marker>(data) {
        // What flint writes it must read back unchanged.
        let text = serde_json::to_vec(&marker).expect("a marker serializes");
        let again: flint::state::Marker = serde_json::from_slice(&text).expect("reads back");
        assert_eq!(format!("{marker:?}"), format!("{again:?}"));
    }
});
