//! One ZDS message from the node agent.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::zds_message(data));
