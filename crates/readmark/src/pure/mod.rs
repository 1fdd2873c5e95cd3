//! Everything readmark computes without RocksDB: the on-disk encodings
//! (keys, marks, records, receipt bitsets, the catch-up cursor, each with
//! its byte offsets as `const`s), the merge functions, the write-combining
//! buffer's entries, the event coalescer and the journal.
//!
//! Nothing in this folder links RocksDB: it builds in seconds without the
//! `store` feature, which is what the fuzz targets and their proptests use.
//! The store (`store/`) is the only layer above it that does.

pub(crate) mod bitset;
pub(crate) mod coalescer;
pub(crate) mod combiner;
pub(crate) mod cursor;
pub(crate) mod grace;
pub(crate) mod journal;
pub(crate) mod keys;
pub(crate) mod mark;
pub(crate) mod merge;
pub(crate) mod newest;
pub(crate) mod records;
pub(crate) mod sync;

#[cfg(all(test, loom))]
mod loom_tests;
