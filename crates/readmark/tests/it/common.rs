//! Shared helpers for the integration tests: real RocksDB stores in
//! temporary directories, never mocks.
#![allow(dead_code)]

use std::path::Path;

use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};

/// Who posts the messages a test's members read: a member of its own, so
/// the members' marks are theirs alone. Needed because `mark_read` clamps
/// to the newest recorded message.
pub const POSTER: UserId = UserId(1 << 40);

/// A message id above every mark a marks-only test makes: posted once, it
/// lets those marks stand unclamped.
pub const FAR: u64 = 1 << 40;

/// Adds [`POSTER`] to `c` (if not a member) and records `messages` from
/// them (sent at their id, as a time), then flushes, so the test's own
/// counters start from a settled store.
pub fn post(s: &Store, c: ConversationId, messages: impl IntoIterator<Item = u64>) {
    if !s.is_member(c, POSTER).unwrap() {
        s.add_member(c, POSTER, Timestamp(0)).unwrap();
    }
    for m in messages {
        s.record_message(c, MessageId(m), POSTER, Timestamp(m))
            .unwrap();
    }
    s.flush().unwrap();
}

/// A store in a fresh temporary directory (kept alive by the returned guard).
pub fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), small_config()).expect("open store");
    (dir, store)
}

/// Small memtables so tests exercise flushes and SST reads, not just memory.
pub fn small_config() -> Config {
    Config::new()
        .write_buffer_bytes(256 << 10)
        .block_cache_bytes(8 << 20)
}

/// [`small_config`] with the flusher's timer out of the way: keys reach
/// RocksDB only when a test flushes them (or a count trigger fires), so
/// what is buffered and what is written is the test's choice.
pub fn manual_config() -> Config {
    small_config().flush_interval(std::time::Duration::from_secs(3600))
}

/// Opens the store's RocksDB directly, with every column family and no
/// readmark options, to tamper with it the way a bug or a foreign tool would.
pub fn raw_open(path: &Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, path).expect("list column families");
    rocksdb::DB::open_cf(&opts, path, cfs).expect("raw open")
}

/// Copies a store directory (without RocksDB's `LOCK`), e.g. to take a crash
/// image of a store that is still open.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("dir entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

/// A current member of `c` to ask receipt queries as (they refuse
/// non-members).
pub fn a_member(s: &Store, c: readmark::ConversationId) -> readmark::UserId {
    s.members(c, None, 1).unwrap()[0]
}

/// Follows `changes_since` from `cursor` to the end of the walk with pages
/// of `limit` (each checked to respect it): every state listed and the
/// cursor to keep. Panics on `SnapshotRequired`: callers pass fresh cursors.
pub fn catch_up(
    s: &Store,
    user: readmark::UserId,
    cursor: readmark::Cursor,
    limit: usize,
) -> (Vec<readmark::ReadState>, readmark::Cursor) {
    let (states, _, next) = catch_up_with_hidden(s, user, cursor, limit);
    (states, next)
}

/// [`catch_up`] with the pairs to forget: `hidden`, and `hidden_threads`
/// by their conversation (the models key read states by conversation and
/// reader, one timeline each).
pub fn catch_up_with_hidden(
    s: &Store,
    user: readmark::UserId,
    mut cursor: readmark::Cursor,
    limit: usize,
) -> (
    Vec<readmark::ReadState>,
    Vec<(readmark::ConversationId, readmark::UserId)>,
    readmark::Cursor,
) {
    let (mut out, mut hidden) = (Vec::new(), Vec::new());
    loop {
        match s.changes_since(user, cursor, limit).unwrap() {
            readmark::CatchUp::Changes(page) => {
                assert!(page.states.len() + page.hidden.len() + page.hidden_threads.len() <= limit);
                out.extend(page.states);
                hidden.extend(page.hidden);
                hidden.extend(page.hidden_threads.iter().map(|&(c, _, r)| (c, r)));
                cursor = page.next;
                if !page.more {
                    return (out, hidden, cursor);
                }
            }
            readmark::CatchUp::SnapshotRequired => panic!("a fresh cursor needs a snapshot"),
        }
    }
}

/// A xorshift64 step: the tests' seeded, reproducible choices.
pub fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}
