#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| geecache::fuzzing::config_file(data));
