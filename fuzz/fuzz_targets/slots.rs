//! `cargo fuzz` target `slots`: see `readmark::fuzzing::slots_target` for
//! what it checks. The same body runs over `fuzz/corpus/slots/` in
//! `tests/it/fuzz_corpus.rs` on every CI run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| readmark::fuzzing::slots_target(data));
