//! `cargo fuzz` target `journal`: see `readmark::fuzzing::journal_target` for
//! what it checks. The same body runs over `fuzz/corpus/journal/` in
//! `tests/it/fuzz_corpus.rs` on every CI run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| readmark::fuzzing::journal_target(data));
