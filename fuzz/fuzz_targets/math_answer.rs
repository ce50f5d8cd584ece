#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| autodidact_fuzz::math_answer(data));
