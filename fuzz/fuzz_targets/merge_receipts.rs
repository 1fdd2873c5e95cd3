//! `cargo fuzz` target `merge_receipts`: see `readmark::fuzzing::merge_receipts_target` for
//! what it checks. The same body runs over `fuzz/corpus/merge_receipts/` in
//! `tests/it/fuzz_corpus.rs` on every CI run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| readmark::fuzzing::merge_receipts_target(data));
