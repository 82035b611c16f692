#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| geecache::fuzzing::client_request(data));
