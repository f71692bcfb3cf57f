//! A CA response's PEM chain, turned into a workload certificate.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::ca_response(data));
