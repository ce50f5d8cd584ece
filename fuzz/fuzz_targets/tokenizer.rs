#![no_main]
// `autodidact` catches a panic of the `tokenizers` crate on some malformed `tokenizer.json`
// files (see `core::tokenizer::parse_tokenizer`). libFuzzer's panic hook aborts on any panic,
// caught or not, so this target puts the default hook back; a panic that escapes the target
// still aborts (libfuzzer-sys checks the result of its own `catch_unwind`).
libfuzzer_sys::fuzz_target!(
    init: {
        let _ = std::panic::take_hook();
    },
    |data: &[u8]| autodidact_fuzz::tokenizer(data)
);
