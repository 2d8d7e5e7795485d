#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_fuzz::v2_json(data));
