//! A CONNECT request's authority and headers, as the HBONE listener receives them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::connect_request(data));
