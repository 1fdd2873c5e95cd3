//! `cargo fuzz` target `api_ops`: see `readmark::fuzzing::api_target` for
//! what it checks. The same body runs over `fuzz/corpus/api_ops/` in
//! `tests/it/fuzz_corpus.rs` on every CI run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| readmark::fuzzing::api_target(data));
