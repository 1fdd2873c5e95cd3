//! Every typed error, provoked through the public API on a real store.

use crate::common;

use common::{raw_open, small_config, temp_store};
use readmark::{Config, ConversationId, Error, MessageId, Page, Store, Timestamp, UserId};

const C: ConversationId = ConversationId(1);
const ALICE: UserId = UserId(1);
const BOB: UserId = UserId(2);

fn t(ms: u64) -> Timestamp {
    Timestamp(ms)
}

#[test]
fn unknown_conversation_everywhere() {
    let (_d, s) = temp_store();
    let unknown =
        |r: Result<(), Error>| matches!(r, Err(Error::UnknownConversation(ConversationId(1))));
    assert!(unknown(s.mark_read(C, ALICE, MessageId(1), t(0))));
    assert!(unknown(s.add_member(C, ALICE, t(0))));
    assert!(unknown(s.remove_member(C, ALICE)));
    assert!(unknown(s.record_message(C, MessageId(1), ALICE, t(0))));
    assert!(unknown(s.delete_message(C, MessageId(1))));
    assert!(unknown(s.set_unread_flag(C, ALICE, t(0))));
    assert!(unknown(s.unread_count(C, ALICE).map(|_| ())));
    assert!(unknown(s.mark(C, ALICE).map(|_| ())));
    assert!(unknown(s.marks(C, ALICE).map(|_| ())));
    assert!(unknown(s.member_count(C).map(|_| ())));
    assert!(unknown(
        s.read_by(C, ALICE, MessageId(1), Page::first(5))
            .map(|_| ())
    ));
}

#[test]
fn non_member_is_refused_and_changes_nothing() {
    let (_d, s) = temp_store();
    s.create_conversation(C).unwrap();
    s.add_member(C, ALICE, t(0)).unwrap();
    s.record_message(C, MessageId(5), ALICE, t(1)).unwrap();
    let not_member = |r: Result<(), Error>| {
        matches!(
            r,
            Err(Error::NotMember {
                conversation: C,
                user: BOB
            })
        )
    };
    assert!(not_member(s.mark_read(C, BOB, MessageId(5), t(2))));
    assert!(not_member(s.record_message(C, MessageId(6), BOB, t(2))));
    assert!(not_member(s.remove_member(C, BOB)));
    assert!(not_member(s.set_unread_flag(C, BOB, t(2))));
    assert!(not_member(s.unread_count(C, BOB).map(|_| ())));
    assert!(not_member(s.mark(C, BOB).map(|_| ())));
    // Nothing was written for BOB: joining now shows no mark and no history.
    s.add_member(C, BOB, t(3)).unwrap();
    assert_eq!(s.mark(C, BOB).unwrap(), None);
    assert_eq!(s.unread_count(C, BOB).unwrap().count, 0);
    // The refused message 6 was not recorded: 6 is still acceptable.
    s.record_message(C, MessageId(6), ALICE, t(4)).unwrap();
}

#[test]
fn out_of_order_message() {
    let (_d, s) = temp_store();
    s.create_conversation(C).unwrap();
    s.add_member(C, ALICE, t(0)).unwrap();
    s.record_message(C, MessageId(10), ALICE, t(1)).unwrap();
    for bad in [10, 9, 0] {
        match s.record_message(C, MessageId(bad), ALICE, t(2)) {
            Err(Error::MessageOutOfOrder { message, last, .. }) => {
                assert_eq!((message, last), (MessageId(bad), MessageId(10)));
            }
            other => panic!("expected MessageOutOfOrder, got {other:?}"),
        }
    }
    s.record_message(C, MessageId(11), ALICE, t(3)).unwrap();
}

#[test]
fn duplicates_and_unknown_messages() {
    let (_d, s) = temp_store();
    s.create_conversation(C).unwrap();
    assert!(matches!(
        s.create_conversation(C),
        Err(Error::ConversationExists(C))
    ));
    s.add_member(C, ALICE, t(0)).unwrap();
    assert!(matches!(
        s.add_member(C, ALICE, t(1)),
        Err(Error::AlreadyMember { .. })
    ));
    assert_eq!(s.member_count(C).unwrap(), 1);
    assert!(matches!(
        s.delete_message(C, MessageId(3)),
        Err(Error::UnknownMessage { .. })
    ));
    assert!(matches!(
        s.read_by(C, ALICE, MessageId(3), Page::first(5)),
        Err(Error::UnknownMessage { .. })
    ));
}

#[test]
fn invalid_config_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = Store::open(dir.path(), Config::new().max_successive_merges(0));
    assert!(matches!(r, Err(Error::InvalidConfig(_))));
    let r = Store::open(dir.path(), Config::new().write_buffer_bytes(10));
    assert!(matches!(r, Err(Error::InvalidConfig(_))));
}

#[test]
fn missing_store_without_create() {
    let dir = tempfile::tempdir().unwrap();
    let r = Store::open(
        dir.path().join("nope"),
        Config::new().create_if_missing(false),
    );
    assert!(
        matches!(&r, Err(Error::Storage(e)) if e.kind() == readmark::StorageErrorKind::InvalidArgument),
        "{r:?}"
    );
}

#[test]
fn unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), small_config()).unwrap();
    s.create_conversation(C).unwrap();
    s.close().unwrap();
    {
        let db = raw_open(dir.path());
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(meta, b"format_version", 99u32.to_be_bytes())
            .unwrap();
    }
    match Store::open(dir.path(), small_config()) {
        Err(Error::UnsupportedFormat {
            found, supported, ..
        }) => {
            assert_eq!(found, 99);
            assert_eq!(supported, readmark::FORMAT_VERSION);
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
}

#[test]
fn newer_store_with_unknown_column_family_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path(), small_config())
        .unwrap()
        .close()
        .unwrap();
    {
        let mut db = raw_open(dir.path());
        db.create_cf("from_the_future", &rocksdb::Options::default())
            .unwrap();
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(
            meta,
            b"format_version",
            (readmark::FORMAT_VERSION + 1).to_be_bytes(),
        )
        .unwrap();
    }
    match Store::open(dir.path(), small_config()) {
        Err(Error::UnsupportedFormat { found, .. }) => {
            assert_eq!(found, readmark::FORMAT_VERSION + 1);
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
}

#[test]
fn data_without_format_version_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), small_config()).unwrap();
    s.create_conversation(C).unwrap();
    s.close().unwrap();
    {
        let db = raw_open(dir.path());
        db.delete_cf(db.cf_handle("meta").unwrap(), b"format_version")
            .unwrap();
    }
    assert!(matches!(
        Store::open(dir.path(), small_config()),
        Err(Error::Corrupt {
            column_family: "meta",
            ..
        })
    ));
}

#[test]
fn corrupt_record_is_a_typed_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), small_config()).unwrap();
    s.create_conversation(C).unwrap();
    s.close().unwrap();
    {
        let db = raw_open(dir.path());
        db.put_cf(
            db.cf_handle("conversations").unwrap(),
            1u64.to_be_bytes(),
            b"junk",
        )
        .unwrap();
    }
    let s = Store::open(dir.path(), small_config()).unwrap();
    assert!(matches!(
        s.member_count(C),
        Err(Error::Corrupt {
            column_family: "conversations",
            ..
        })
    ));
}

#[test]
fn malformed_merge_operand_is_skipped_and_counted() {
    let (_d, s) = temp_store();
    s.create_conversation(C).unwrap();
    s.add_member(C, ALICE, t(0)).unwrap();
    common::post(&s, C, [common::FAR]);
    s.mark_read(C, ALICE, MessageId(7), t(1)).unwrap();
    s.__merge_raw_mark_operand(C, ALICE, b"\x01\x01short")
        .unwrap();
    s.__merge_raw_mark_operand(C, ALICE, b"").unwrap();
    s.mark_read(C, ALICE, MessageId(9), t(2)).unwrap();
    let mark = s.mark(C, ALICE).unwrap().unwrap();
    assert_eq!((mark.up_to, mark.at), (MessageId(9), t(2)));
    assert!(s.stats().malformed_operands >= 2, "{:?}", s.stats());
    // Later reads see the folded value; the store keeps working.
    s.mark_read(C, ALICE, MessageId(12), t(3)).unwrap();
    assert_eq!(s.mark(C, ALICE).unwrap().unwrap().up_to, MessageId(12));
}

#[test]
fn malformed_operand_survives_flush_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), small_config()).unwrap();
    s.create_conversation(C).unwrap();
    s.add_member(C, ALICE, t(0)).unwrap();
    common::post(&s, C, [common::FAR]);
    s.__merge_raw_mark_operand(C, ALICE, b"\xff").unwrap();
    s.mark_read(C, ALICE, MessageId(3), t(1)).unwrap();
    // close() flushes: the merge runs inside RocksDB's flush, from C.
    s.close().unwrap();
    let s = Store::open(dir.path(), small_config()).unwrap();
    assert_eq!(s.mark(C, ALICE).unwrap().unwrap().up_to, MessageId(3));
}

/// What a store killed during its very first open leaves: RocksDB's
/// `CURRENT` and only the `default` column family.
fn half_created_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    rocksdb::DB::open(&opts, dir.path()).unwrap();
    dir
}

/// Regression (found by `crash::kill_9_at_random_points`): a store killed
/// during its very first open has RocksDB's `CURRENT` and only the `default`
/// column family; open used to refuse it as "no meta column family" instead
/// of adopting the empty store.
#[test]
fn regression_store_killed_during_first_open_is_adopted() {
    let dir = half_created_store();
    let s = Store::open(dir.path(), small_config()).unwrap();
    s.create_conversation(C).unwrap();
    s.close().unwrap();
    Store::open(dir.path(), small_config()).unwrap();
}

/// Post-mortem: column families created on an existing store (`create_cf`,
/// the path above) lost their retention compaction filter when the options
/// were dropped (rust-rocksdb keeps a plain filter alive only through the
/// `Options`), so the first compaction of receipts crashed with SIGSEGV.
#[test]
fn regression_compaction_filter_outlives_column_family_creation() {
    let dir = half_created_store();
    let s = Store::open(dir.path(), small_config()).unwrap();
    s.create_conversation(C).unwrap();
    for u in [ALICE, UserId(8)] {
        s.add_member(C, u, Timestamp(0)).unwrap();
    }
    let t0 = 1_700_000_000_000;
    s.__set_clock(Some(Timestamp(t0)));
    for m in 1..=20 {
        s.record_message(C, MessageId(m), UserId(8), Timestamp(t0))
            .unwrap();
    }
    // A message opened out of order: its bitset is the receipts record
    // the retention filter must drop.
    assert!(
        s.mark_viewed(C, ALICE, MessageId(1), Timestamp(t0 + 1))
            .unwrap()
    );
    s.mark_read(C, ALICE, MessageId(20), Timestamp(t0 + 1))
        .unwrap();
    s.flush().unwrap();
    s.compact().unwrap();
    assert!(s.__has_receipt_record(C, MessageId(1)).unwrap());
    s.__set_clock(Some(Timestamp(t0 + 8 * 24 * 3600 * 1000)));
    s.compact().unwrap();
    s.compact().unwrap();
    assert!(!s.__has_receipt_record(C, MessageId(1)).unwrap());
}

/// The same half-created store, but holding data (not readmark's): refused.
#[test]
fn foreign_rocksdb_with_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = rocksdb::DB::open(&opts, dir.path()).unwrap();
        db.put(b"k", b"v").unwrap();
    }
    assert!(matches!(
        Store::open(dir.path(), small_config()),
        Err(Error::Corrupt {
            column_family: "meta",
            ..
        })
    ));
}

/// Ids at the edges of `u64` work like any other: keys sort and scan
/// correctly at 0 and `u64::MAX` (no upper bound past the last
/// conversation). Conversation ids end at `2^63 - 1`: the rest name threads
/// (format 6) and are refused with a typed error.
#[test]
fn ids_at_the_edges() {
    let (_d, s) = temp_store();
    const LAST: ConversationId = ConversationId((1 << 63) - 1);
    for reserved in [ConversationId(1 << 63), ConversationId(u64::MAX)] {
        assert!(matches!(
            s.create_conversation(reserved),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            s.unread_count(reserved, UserId(0)),
            Err(Error::InvalidArgument(_))
        ));
    }
    for conv in [ConversationId(0), LAST] {
        s.create_conversation(conv).unwrap();
        for user in [UserId(0), UserId(u64::MAX)] {
            s.add_member(conv, user, Timestamp(0)).unwrap();
        }
        s.record_message(conv, MessageId(0), UserId(0), Timestamp(u64::MAX))
            .unwrap();
        s.record_message(conv, MessageId(u64::MAX), UserId(0), Timestamp(1))
            .unwrap();
        assert!(matches!(
            s.record_message(conv, MessageId(u64::MAX), UserId(0), Timestamp(2)),
            Err(Error::MessageOutOfOrder { .. })
        ));
        assert_eq!(s.unread_count(conv, UserId(u64::MAX)).unwrap().count, 2);
        s.mark_read(conv, UserId(u64::MAX), MessageId(0), Timestamp(u64::MAX))
            .unwrap();
        assert_eq!(s.unread_count(conv, UserId(u64::MAX)).unwrap().count, 1);
        s.delete_message(conv, MessageId(u64::MAX)).unwrap();
        assert_eq!(s.unread_count(conv, UserId(u64::MAX)).unwrap().count, 0);
        s.mark_read(conv, UserId(u64::MAX), MessageId(u64::MAX), Timestamp(0))
            .unwrap();
        let rb = s
            .read_by(conv, UserId(0), MessageId(0), Page::first(10))
            .unwrap();
        assert_eq!(rb.count, 1);
        assert_eq!(rb.readers[0].user, UserId(u64::MAX));
        assert_eq!(s.members(conv, Some(UserId(u64::MAX)), 10).unwrap(), vec![]);
        assert_eq!(s.marks(conv, UserId(0)).unwrap().len(), 2);
    }
    assert_eq!(
        s.conversations_of(UserId(u64::MAX)).unwrap(),
        vec![ConversationId(0), LAST]
    );
    assert!(matches!(
        s.read_by(ConversationId(0), UserId(0), MessageId(0), Page::first(0)),
        Err(Error::InvalidArgument(_))
    ));
}

/// A conversation far above any group size, and a burst of updates far
/// above every flush trigger, in one go.
#[test]
fn large_conversation_and_huge_burst() {
    let (_d, s) = temp_store();
    let c = ConversationId(5);
    s.create_conversation(c).unwrap();
    for u in 0..5_000 {
        s.add_member(c, UserId(u), Timestamp(0)).unwrap();
    }
    assert_eq!(s.member_count(c).unwrap(), 5_000);
    for m in 1..=20 {
        s.record_message(c, MessageId(m), UserId(0), Timestamp(m))
            .unwrap();
    }
    for i in 0..100_000u64 {
        s.mark_read(c, UserId(i % 5_000), MessageId(1 + i / 5_000), Timestamp(i))
            .unwrap();
    }
    let rb = s
        .read_by(c, UserId(0), MessageId(1), Page::first(100))
        .unwrap();
    assert_eq!(rb.count, 4_999); // everyone but the sender
    assert_eq!(rb.readers.len(), 100);
}
