//! The CNI plugin's environment and stdin.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_cni::fuzzing::invocation(data));
