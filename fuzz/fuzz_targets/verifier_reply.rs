#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| autodidact_fuzz::verifier_reply(data));
