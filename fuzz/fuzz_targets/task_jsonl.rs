#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| autodidact_fuzz::task_jsonl(data));
