//! readmark's integration tests, in one binary: each links RocksDB, and one
//! link instead of fifteen saves minutes of CI on a 2-core machine. Every
//! test uses real RocksDB on disk in a temporary directory.
//!
//! The child processes of the crash and fault tests (`crash::crash_child`,
//! `crash::send_child`, `libfiu::fiu_child`) are `#[ignore]`d tests that
//! their parent runs by name with `--ignored`; on their own they fail.

mod common;

mod combining;
mod corruption;
mod crash;
mod errors;
mod events;
mod events_model;
mod fault_injection;
mod fuzz_corpus;
mod inspect;
mod journal_recovery;
mod libfiu;
mod marks_model;
mod receipts;
mod receipts_model;
mod semantics;
mod stress;
mod threads;
mod unread_model;
