//! A ztunnel-format local config file, as `ferry proxy --local-config` reads it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(input) = ferry_core::local_config::parse(text, "fuzz") {
            let _ = ferry_core::state::Snapshot::build(input, 1);
        }
    }
});
