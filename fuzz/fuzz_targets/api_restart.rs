//! `cargo fuzz` target `api_restart`: see `readmark::fuzzing::api_restart_target` for
//! what it checks. The same body runs over `fuzz/corpus/api_restart/` in
//! `tests/it/fuzz_corpus.rs` on every CI run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| readmark::fuzzing::api_restart_target(data));
