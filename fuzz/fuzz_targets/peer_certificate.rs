//! A peer's leaf certificate (DER): SAN and key-usage handling.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::peer_certificate(data));
