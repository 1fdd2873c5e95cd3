//! Per-message receipts, scenario by scenario: slot reuse, each threshold
//! crossing, retention expiry, write combining of bits, a crash replay, and
//! a malformed operand. `tests/receipts_model.rs` covers random sequences.

use crate::common;

use std::time::Duration;

use readmark::{
    Config, ConversationId, Durability, MessageId, Page, ReadTime, ReceiptSource, Store, Timestamp,
    UserId,
};

const C: ConversationId = ConversationId(3);
const T0: u64 = 1_700_000_000_000;
const DAY: u64 = 24 * 3600 * 1000;

fn open(dir: &std::path::Path, threshold: u32) -> Store {
    let s = Store::open(
        dir,
        common::small_config()
            .receipt_threshold(threshold)
            .flush_interval(Duration::from_secs(3600)),
    )
    .unwrap();
    s.__set_clock(Some(Timestamp(T0)));
    s
}

fn readers(s: &Store, m: u64) -> (Vec<(u64, ReadTime)>, ReceiptSource) {
    let r = s
        .read_by(C, common::a_member(s, C), MessageId(m), Page::first(1000))
        .unwrap();
    (
        r.readers.iter().map(|r| (r.user.0, r.read_at)).collect(),
        r.source,
    )
}

fn users(s: &Store, m: u64) -> Vec<u64> {
    readers(s, m).0.into_iter().map(|r| r.0).collect()
}

fn setup(s: &Store, members: impl IntoIterator<Item = u64>) {
    s.create_conversation(C).unwrap();
    for u in members {
        s.add_member(C, UserId(u), Timestamp(T0)).unwrap();
    }
}

fn send(s: &Store, m: u64, from: u64) {
    s.record_message(C, MessageId(m), UserId(from), Timestamp(T0 + m))
        .unwrap();
}

/// A member leaves and another takes their slot: the newcomer's bit is set
/// on the old messages (it was the leaver's), yet they never appear as a
/// reader of them.
#[test]
fn reused_slot_never_attributes_an_old_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 50);
    setup(&s, [1, 2, 3]);
    send(&s, 10, 1);
    send(&s, 20, 1);
    s.mark_viewed(C, UserId(3), MessageId(10), Timestamp(T0 + 30))
        .unwrap();
    s.mark_read(C, UserId(3), MessageId(20), Timestamp(T0 + 40))
        .unwrap();
    s.flush().unwrap();
    assert_eq!(users(&s, 10), [3]);
    s.remove_member(C, UserId(3)).unwrap();
    s.add_member(C, UserId(4), Timestamp(T0)).unwrap();
    // User 4 holds the slot user 3 had: its bit is set on both messages.
    let slots = s.__receipt_slots(C, MessageId(10)).unwrap();
    assert!(
        slots.contains(&(UserId(4), true)),
        "slot was reused: {slots:?}"
    );
    assert!(users(&s, 10).is_empty());
    assert!(users(&s, 20).is_empty());
    // Even after reading everything, history from before joining is not theirs.
    s.mark_read(C, UserId(4), MessageId(20), Timestamp(T0 + 50))
        .unwrap();
    s.flush().unwrap();
    assert!(users(&s, 20).is_empty());
    send(&s, 30, 1);
    s.mark_read(C, UserId(4), MessageId(30), Timestamp(T0 + 60))
        .unwrap();
    s.flush().unwrap();
    assert_eq!(
        readers(&s, 30),
        (
            vec![(4, ReadTime::At(Timestamp(T0 + 60)))],
            ReceiptSource::PerMessage
        )
    );
}

/// Post-mortem (found in review): a join that is itself the crossing into
/// per-message mode (here after a reopen with a higher store-wide
/// threshold) gave the joiner a slot the crossing had just given to another
/// member, so each was shown as reading what the other read.
#[test]
fn regression_join_that_crosses_down_gets_its_own_slot() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 2);
    setup(&s, [1, 2, 3]); // large: user 3 has no slot
    s.close().unwrap();
    let s = open(dir.path(), 10);
    s.add_member(C, UserId(4), Timestamp(T0)).unwrap(); // the crossing
    send(&s, 10, 1);
    send(&s, 11, 1);
    // Opened out of order: a bit in user 3's slot, no mark.
    assert!(
        s.mark_viewed(C, UserId(3), MessageId(10), Timestamp(T0 + 50))
            .unwrap()
    );
    assert_eq!(users(&s, 10), [3]);
    let slots = s.__receipt_slots(C, MessageId(10)).unwrap();
    assert_eq!(slots.len(), 4, "every member has a slot: {slots:?}");
    assert_eq!(slots.iter().filter(|s| s.1).count(), 1);
    assert!(
        s.mark_viewed(C, UserId(4), MessageId(11), Timestamp(T0 + 60))
            .unwrap()
    );
    assert_eq!(users(&s, 10), [3]);
    assert_eq!(users(&s, 11), [4]);
}

/// Small → large by a join: messages from before keep their receipts and
/// see later reads through the marks; messages after write nothing.
#[test]
fn crossing_up_by_join() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 3);
    setup(&s, [1, 2, 3]);
    send(&s, 10, 1);
    s.mark_read(C, UserId(2), MessageId(10), Timestamp(T0 + 100))
        .unwrap();
    s.add_member(C, UserId(4), Timestamp(T0)).unwrap(); // 4 members > 3
    send(&s, 20, 1);
    s.mark_read(C, UserId(3), MessageId(20), Timestamp(T0 + 200))
        .unwrap();
    s.mark_read(C, UserId(4), MessageId(20), Timestamp(T0 + 210))
        .unwrap();
    s.flush().unwrap();
    let before = s.stats().receipt_operands;
    assert!(
        !s.mark_viewed(C, UserId(2), MessageId(20), Timestamp(T0 + 220))
            .unwrap()
    );
    assert_eq!(
        readers(&s, 10),
        (
            vec![
                (2, ReadTime::At(Timestamp(T0 + 100))),
                (3, ReadTime::NoLaterThan(Timestamp(T0 + 200))),
            ],
            ReceiptSource::PerMessage
        )
    );
    assert_eq!(
        readers(&s, 20),
        (
            vec![
                (3, ReadTime::NoLaterThan(Timestamp(T0 + 200))),
                (4, ReadTime::NoLaterThan(Timestamp(T0 + 210))),
            ],
            ReceiptSource::Marks
        )
    );
    assert!(!s.__has_receipt_record(C, MessageId(20)).unwrap());
    assert_eq!(s.stats().receipt_operands, before);
}

/// Large → small by a leave: every member gets a slot, messages recorded
/// from then on have receipts, messages of the large period stay on marks.
#[test]
fn crossing_down_by_leave() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 3);
    setup(&s, [1, 2, 3, 4]);
    send(&s, 10, 1);
    s.remove_member(C, UserId(4)).unwrap(); // 3 members <= 3
    send(&s, 20, 1);
    for u in [2, 3] {
        s.mark_read(C, UserId(u), MessageId(20), Timestamp(T0 + 100 + u))
            .unwrap();
    }
    s.flush().unwrap();
    assert_eq!(readers(&s, 10).1, ReceiptSource::Marks);
    assert_eq!(users(&s, 10), [2, 3]);
    assert_eq!(
        readers(&s, 20),
        (
            vec![
                (2, ReadTime::At(Timestamp(T0 + 102))),
                (3, ReadTime::At(Timestamp(T0 + 103))),
            ],
            ReceiptSource::PerMessage
        )
    );
    // In-order reads need no bit per message: one run per reader holds
    // their time.
    assert!(!s.__has_receipt_record(C, MessageId(20)).unwrap());
    assert_eq!(s.stats().read_time_records, 2);
}

/// The per-conversation threshold crosses both ways without membership
/// changes, and survives a reopen.
#[test]
fn crossing_by_threshold_override() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 50);
    setup(&s, [1, 2, 3]);
    s.set_receipt_threshold(C, Some(2)).unwrap();
    send(&s, 10, 1);
    s.set_receipt_threshold(C, None).unwrap();
    send(&s, 20, 1);
    s.mark_read(C, UserId(2), MessageId(20), Timestamp(T0 + 100))
        .unwrap();
    s.close().unwrap();
    let s = open(dir.path(), 50);
    assert_eq!(readers(&s, 10).1, ReceiptSource::Marks);
    assert_eq!(
        readers(&s, 20),
        (
            vec![(2, ReadTime::At(Timestamp(T0 + 100)))],
            ReceiptSource::PerMessage
        )
    );
    assert!(s.set_receipt_threshold(C, Some(5000)).is_err());
}

/// Past retention, answers come from the marks and say so; compaction then
/// drops the bitsets and read-time records, and the answers do not change.
#[test]
fn retention_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 50);
    setup(&s, [1, 2, 3]);
    send(&s, 10, 1);
    s.mark_viewed(C, UserId(3), MessageId(10), Timestamp(T0 + 50))
        .unwrap();
    s.mark_read(C, UserId(2), MessageId(10), Timestamp(T0 + 100))
        .unwrap();
    s.flush().unwrap();
    s.compact().unwrap();
    assert_eq!(readers(&s, 10).1, ReceiptSource::PerMessage);
    assert_eq!(receipt_tables(&s)[0], 1);
    s.__set_clock(Some(Timestamp(T0 + 7 * DAY + 11)));
    let expected = (
        vec![(2, ReadTime::NoLaterThan(Timestamp(T0 + 100)))],
        ReceiptSource::Marks,
    );
    assert_eq!(readers(&s, 10), expected);
    // Read-time records expire by their own time, which is never before
    // the message's: a day later everything is gone.
    s.__set_clock(Some(Timestamp(T0 + 8 * DAY)));
    s.compact().unwrap();
    s.compact().unwrap();
    assert!(!s.__has_receipt_record(C, MessageId(10)).unwrap());
    assert_eq!(receipt_tables(&s), [0, 0]);
    assert_eq!(readers(&s, 10), expected);
    // No new receipts for an expired message.
    assert!(
        !s.mark_viewed(C, UserId(3), MessageId(10), Timestamp(T0 + 7 * DAY))
            .unwrap()
    );
}

/// Many readers advancing over the same messages write, per reader, one
/// mark operand and one read-time run, and nothing per message: the mark
/// and the run say everything an in-order read means.
#[test]
fn in_order_reads_write_one_run_per_reader_and_nothing_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 50);
    setup(&s, 1..=40);
    for m in 1..=30 {
        send(&s, m, 1);
    }
    s.flush().unwrap(); // the sender's own advance
    let before = s.stats();
    for u in 2..=40 {
        for m in (3..=30).step_by(3) {
            s.mark_read(C, UserId(u), MessageId(m), Timestamp(T0 + 100 + m))
                .unwrap();
        }
    }
    s.flush().unwrap();
    let after = s.stats();
    assert_eq!(after.receipt_operands - before.receipt_operands, 0);
    assert_eq!(after.keys_written - before.keys_written, 39);
    assert_eq!(after.read_time_records - before.read_time_records, 39);
    for m in [1, 15, 30] {
        assert_eq!(s.read_count(C, UserId(1), MessageId(m)).unwrap().count, 39);
        assert!(!s.__has_receipt_record(C, MessageId(m)).unwrap());
    }
    // Each reader's time is the one of their combined advance.
    let page = s
        .read_by(C, UserId(1), MessageId(15), Page::first(1))
        .unwrap();
    assert_eq!(page.readers[0].read_at, ReadTime::At(Timestamp(T0 + 130)));
}

/// A conversation above the threshold writes nothing per message.
#[test]
fn large_conversation_writes_nothing_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 50);
    setup(&s, 1..=60);
    for m in 1..=20 {
        send(&s, m, 1);
    }
    for u in 2..=60 {
        s.mark_read(C, UserId(u), MessageId(20), Timestamp(T0 + 100))
            .unwrap();
    }
    s.flush().unwrap();
    assert_eq!(s.stats().receipt_operands, 0);
    assert!(!s.__has_receipt_record(C, MessageId(5)).unwrap());
    let page = s
        .read_by(C, UserId(1), MessageId(5), Page::first(25))
        .unwrap();
    assert_eq!(
        (page.count, page.readers.len(), page.source),
        (59, 25, ReceiptSource::Marks)
    );
}

/// Advances acknowledged to the journal and lost with the process get
/// their receipts when the journal is replayed at open.
/// (Real time: the replay runs inside `open`, before a test could set the
/// clock, and must not see the message as expired.)
#[test]
fn replayed_advances_get_their_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 50);
    s.__set_clock(None);
    let t = Timestamp::now().0;
    setup(&s, [1, 2]);
    s.record_message(C, MessageId(10), UserId(1), Timestamp(t))
        .unwrap();
    s.mark_read_with(
        C,
        UserId(2),
        MessageId(10),
        Timestamp(t + 77),
        Durability::ProcessCrash,
    )
    .unwrap();
    s.__simulate_crash();
    let s = open(dir.path(), 50);
    s.__set_clock(None);
    // The sender's advance (journaled with the send) and the read.
    assert_eq!(s.stats().replayed_frames, 2);
    assert_eq!(
        readers(&s, 10),
        (
            vec![(2, ReadTime::At(Timestamp(t + 77)))],
            ReceiptSource::PerMessage
        )
    );
}

/// A malformed bitset operand is skipped and counted; the other readers
/// survive the merge.
#[test]
fn malformed_bitset_operand_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 50);
    setup(&s, [1, 2]);
    send(&s, 10, 1);
    s.mark_read(C, UserId(2), MessageId(10), Timestamp(T0 + 5))
        .unwrap();
    s.flush().unwrap();
    s.__merge_raw_receipt_operand(C, MessageId(10), b"\x07garbage")
        .unwrap();
    assert_eq!(users(&s, 10), [2]);
    assert!(s.stats().malformed_operands >= 1);
    s.compact().unwrap();
    assert_eq!(users(&s, 10), [2]);
}

#[test]
fn threshold_above_the_slot_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Store::open(dir.path(), Config::new().receipt_threshold(4097)),
        Err(readmark::Error::InvalidConfig(_))
    ));
}

/// Estimated keys of the `receipts` and `read_times` tables.
fn receipt_tables(s: &Store) -> [u64; 2] {
    let usage = s.disk_usage().unwrap();
    ["receipts", "read_times"].map(|t| usage.table(t).unwrap().estimated_keys)
}
