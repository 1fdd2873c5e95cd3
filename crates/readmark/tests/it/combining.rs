//! The write-combining buffer on a real store: one durable write per key per
//! flush, every flush trigger, read-your-writes, poisoning.

use crate::common;

use std::time::Duration;

use readmark::{
    Config, ConversationId, Durability, Error, MessageId, Page, Store, Timestamp, UserId,
};

const C: ConversationId = ConversationId(1);

/// A store whose timer never fires during a test, so every flush is one the
/// test caused.
fn quiet_config() -> Config {
    common::manual_config()
}

/// Messages `setup` records (`mark_read` clamps to the newest).
const MESSAGES: u64 = 200;

/// `C` with `members` members and [`MESSAGES`] messages to read, flushed.
fn setup(store: &Store, members: u64) {
    setup_empty(store, members);
    common::post(store, C, 1..=MESSAGES);
}

fn setup_empty(store: &Store, members: u64) {
    store.create_conversation(C).unwrap();
    for u in 0..members {
        store.add_member(C, UserId(u), Timestamp(0)).unwrap();
    }
}

#[test]
fn burst_of_50_updates_is_one_key_write_per_flush() {
    for durability in [
        Durability::Memory,
        Durability::ProcessCrash,
        Durability::PowerLoss,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), quiet_config().durability(durability)).unwrap();
        setup(&store, 2);
        let before = store.stats();
        for m in 1..=50 {
            store
                .mark_read(C, UserId(1), MessageId(m), Timestamp(m))
                .unwrap();
        }
        // Read-your-writes before any flush.
        assert_eq!(
            store.mark(C, UserId(1)).unwrap().unwrap().up_to,
            MessageId(50)
        );
        let mid = store.stats();
        assert_eq!(
            mid.keys_written, before.keys_written,
            "{durability:?}: nothing written yet"
        );
        assert_eq!(mid.combined_away - before.combined_away, 49);
        store.flush().unwrap();
        let after = store.stats();
        assert_eq!(
            after.keys_written - before.keys_written,
            1,
            "{durability:?}"
        );
        assert_eq!(
            after.durable_batches - before.durable_batches,
            1,
            "{durability:?}"
        );
        assert_eq!(after.mark_updates - before.mark_updates, 50);
        if durability == Durability::Memory {
            assert_eq!(after.journal_bytes, before.journal_bytes);
        } else {
            assert!(after.journal_bytes > before.journal_bytes);
        }
        store.close().unwrap();
        let store = Store::open(dir.path(), quiet_config()).unwrap();
        assert_eq!(
            store.mark(C, UserId(1)).unwrap().unwrap().up_to,
            MessageId(50)
        );
    }
}

#[test]
fn timer_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        common::small_config().flush_interval(Duration::from_millis(20)),
    )
    .unwrap();
    setup(&store, 2);
    let written = store.stats().keys_written;
    let flushes = store.__flush_count();
    for m in 1..=10 {
        store
            .mark_read(C, UserId(1), MessageId(m), Timestamp(m))
            .unwrap();
    }
    assert!(
        store.__wait_for_flushes(flushes + 1, Duration::from_secs(30)),
        "the timer never flushed"
    );
    // Wait for the flush that drained the buffer (the first one may have
    // raced the updates).
    let mut n = flushes + 1;
    while store.stats().pending_keys > 0 {
        n += 1;
        assert!(store.__wait_for_flushes(n, Duration::from_secs(30)));
    }
    assert_eq!(store.stats().keys_written - written, 1);
}

#[test]
fn flush_key_when_the_user_leaves_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), quiet_config()).unwrap();
    setup(&store, 3);
    let written = store.stats().keys_written;
    for m in 1..=20 {
        store
            .mark_read(C, UserId(1), MessageId(m), Timestamp(m))
            .unwrap();
        store
            .mark_read(C, UserId(2), MessageId(m), Timestamp(m))
            .unwrap();
    }
    store.flush_key(C, UserId(1)).unwrap();
    let s = store.stats();
    assert_eq!((s.keys_written - written, s.pending_keys), (1, 1));
    store.flush_key(C, UserId(1)).unwrap(); // nothing left: no write
    assert_eq!(store.stats().keys_written - written, 1);
}

#[test]
fn count_trigger_seals_a_hot_key() {
    let dir = tempfile::tempdir().unwrap();
    // The messages' own seals would race the rounds counted below.
    let store = Store::open(dir.path(), quiet_config()).unwrap();
    setup(&store, 2);
    store.close().unwrap();
    let store = Store::open(dir.path(), quiet_config().flush_after_updates(10)).unwrap();
    let written = store.stats().keys_written;
    let rounds = store.__flush_count();
    for m in 1..=9 {
        store
            .mark_read(C, UserId(1), MessageId(m), Timestamp(m))
            .unwrap();
    }
    assert_eq!(store.__flush_count(), rounds, "nothing sealed yet");
    assert_eq!(store.stats().keys_written, written);
    for (m, round) in [(10, 1), (20, 2), (30, 3)] {
        let from = if m == 10 { 10 } else { m - 9 };
        for m in from..=m {
            store
                .mark_read(C, UserId(1), MessageId(m), Timestamp(m))
                .unwrap();
        }
        // The tenth update sealed the key; the flusher writes it, not the
        // caller.
        assert!(store.__wait_for_flushes(rounds + round, Duration::from_secs(30)));
        let s = store.stats();
        assert_eq!(
            (s.keys_written - written, s.pending_keys),
            (round, 0),
            "{s:?}"
        );
    }
}

#[test]
fn memory_cap_bounds_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    // 4096 bytes / 224 bytes per key: 18 keys, written or not.
    let store = Store::open(dir.path(), quiet_config().combiner_max_bytes(4096)).unwrap();
    setup(&store, 60);
    for u in 0..60 {
        store
            .mark_read(C, UserId(u), MessageId(1), Timestamp(1))
            .unwrap();
        let s = store.stats();
        assert!(s.cached_keys <= 18, "{s:?}");
    }
    // The cap made the flusher write (nobody called flush), and every mark
    // reads back.
    assert!(store.stats().keys_written >= 60 - 18);
    for u in 0..60 {
        assert_eq!(
            store.mark(C, UserId(u)).unwrap().unwrap().up_to,
            MessageId(1)
        );
    }
}

#[test]
fn a_full_journal_waits_for_slots() {
    let dir = tempfile::tempdir().unwrap();
    // 64 KiB: 360 slots, for 1,000 keys.
    let store = Store::open(
        dir.path(),
        quiet_config()
            .journal_bytes(64 << 10)
            .flush_after_updates(u32::MAX),
    )
    .unwrap();
    store.create_conversation(C).unwrap();
    for u in 0..1_000 {
        store.add_member(C, UserId(u), Timestamp(0)).unwrap();
    }
    common::post(&store, C, 1..=10_000);
    for u in 0..1_000u64 {
        for m in 1..=3 {
            store
                .mark_read(C, UserId(u), MessageId(u * 10 + m), Timestamp(m))
                .unwrap();
        }
        assert!(store.stats().journal_slots_in_use <= 360);
    }
    let s = store.stats();
    assert!(s.durable_batches >= 2, "{s:?}");
    for u in [0u64, 359, 360, 999] {
        assert_eq!(
            store.mark(C, UserId(u)).unwrap().unwrap().up_to,
            MessageId(u * 10 + 3)
        );
    }
}

#[test]
fn close_flushes_and_drop_does_too() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), quiet_config().durability(Durability::Memory)).unwrap();
        setup(&store, 2);
        store
            .mark_read(C, UserId(0), MessageId(7), Timestamp(1))
            .unwrap();
        store.close().unwrap();
    }
    {
        let store = Store::open(dir.path(), quiet_config().durability(Durability::Memory)).unwrap();
        assert_eq!(
            store.mark(C, UserId(0)).unwrap().unwrap().up_to,
            MessageId(7)
        );
        store
            .mark_read(C, UserId(1), MessageId(9), Timestamp(1))
            .unwrap();
        // dropped without close
    }
    let store = Store::open(dir.path(), quiet_config()).unwrap();
    assert_eq!(
        store.mark(C, UserId(1)).unwrap().unwrap().up_to,
        MessageId(9)
    );
}

#[test]
fn buffered_marks_are_visible_to_every_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), quiet_config()).unwrap();
    setup_empty(&store, 3);
    store
        .record_message(C, MessageId(10), UserId(0), Timestamp(1))
        .unwrap();
    store
        .record_message(C, MessageId(11), UserId(0), Timestamp(2))
        .unwrap();
    store
        .mark_read(C, UserId(1), MessageId(10), Timestamp(3))
        .unwrap();
    store
        .mark_read(C, UserId(2), MessageId(11), Timestamp(4))
        .unwrap();
    // The two readers, and the sender's own advance.
    assert_eq!(store.stats().pending_keys, 3);
    assert_eq!(
        store
            .read_by(C, UserId(1), MessageId(10), Page::first(10))
            .unwrap()
            .count,
        2
    );
    assert_eq!(store.marks(C, UserId(1)).unwrap().len(), 3);
    assert_eq!(store.unread_count(C, UserId(1)).unwrap().count, 1);
    assert_eq!(store.unread_count(C, UserId(2)).unwrap().count, 0);
    store.set_unread_flag(C, UserId(2), Timestamp(5)).unwrap();
    assert!(store.unread_count(C, UserId(2)).unwrap().marked_unread);
}

#[test]
fn leaving_member_takes_no_buffered_mark_along_and_rejoin_starts_clean() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), quiet_config()).unwrap();
    setup_empty(&store, 2);
    store
        .record_message(C, MessageId(5), UserId(0), Timestamp(1))
        .unwrap();
    store
        .mark_read(C, UserId(1), MessageId(5), Timestamp(2))
        .unwrap();
    store.remove_member(C, UserId(1)).unwrap();
    store.add_member(C, UserId(1), Timestamp(3)).unwrap();
    assert_eq!(store.mark(C, UserId(1)).unwrap(), None);
    store.close().unwrap();
    let store = Store::open(dir.path(), quiet_config()).unwrap();
    assert_eq!(store.mark(C, UserId(1)).unwrap(), None);
}

#[test]
fn failed_fsync_poisons_and_reopen_recovers_everything_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store =
            Store::open(dir.path(), quiet_config().durability(Durability::PowerLoss)).unwrap();
        setup(&store, 3);
        store
            .mark_read(C, UserId(1), MessageId(10), Timestamp(1))
            .unwrap();
        // Next journal operation: the append of the following update works,
        // its fsync fails.
        store.__fail_journal_after(1, libc::EIO);
        let err = store
            .mark_read(C, UserId(2), MessageId(20), Timestamp(2))
            .unwrap_err();
        assert!(matches!(err, Error::Io(_)), "{err:?}");
        // Poisoned: every write is refused, reads still work.
        for r in [
            store.mark_read(C, UserId(1), MessageId(11), Timestamp(3)),
            store.record_message(C, MessageId(MESSAGES + 1), UserId(0), Timestamp(3)),
            store.flush(),
        ] {
            assert!(matches!(r, Err(Error::Poisoned(_))), "{r:?}");
        }
        assert_eq!(
            store.mark(C, UserId(1)).unwrap().unwrap().up_to,
            MessageId(10)
        );
    }
    let store = Store::open(dir.path(), quiet_config()).unwrap();
    assert_eq!(
        store.mark(C, UserId(1)).unwrap().unwrap().up_to,
        MessageId(10)
    );
    store
        .mark_read(C, UserId(1), MessageId(12), Timestamp(4))
        .unwrap();
}

#[test]
fn failed_append_poisons_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), quiet_config()).unwrap();
        setup(&store, 3);
        store
            .mark_read(C, UserId(1), MessageId(10), Timestamp(1))
            .unwrap();
        store.__fail_journal_after(0, libc::ENOSPC);
        assert!(
            store
                .mark_read(C, UserId(2), MessageId(20), Timestamp(2))
                .is_err()
        );
        assert!(matches!(
            store.mark_read(C, UserId(2), MessageId(21), Timestamp(2)),
            Err(Error::Poisoned(_))
        ));
        // The refused update was not buffered either.
        assert_eq!(store.mark(C, UserId(2)).unwrap(), None);
    }
    let store = Store::open(dir.path(), quiet_config()).unwrap();
    assert_eq!(
        store.mark(C, UserId(1)).unwrap().unwrap().up_to,
        MessageId(10)
    );
    assert_eq!(store.mark(C, UserId(2)).unwrap(), None);
}

#[test]
fn concurrent_power_loss_writers_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), quiet_config().durability(Durability::PowerLoss)).unwrap();
    setup(&store, 8);
    let before = store.stats();
    let per_thread = MESSAGES;
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let store = &store;
            s.spawn(move || {
                for m in 1..=per_thread {
                    store
                        .mark_read(C, UserId(t), MessageId(m), Timestamp(m))
                        .unwrap();
                }
            });
        }
    });
    let s = store.stats();
    assert_eq!(s.mark_updates - before.mark_updates, 8 * per_thread);
    // Every update was acknowledged after an fsync; group commit means no
    // more fsyncs than updates (usually far fewer, but that is for the
    // benchmark to measure, not for a test to assume).
    assert!(s.fsyncs <= s.mark_updates, "{s:?}");
    for t in 0..8 {
        assert_eq!(
            store.mark(C, UserId(t)).unwrap().unwrap().up_to,
            MessageId(per_thread)
        );
    }
}

#[test]
fn sealed_keys_of_many_users_share_one_batch_written_by_the_flusher() {
    let dir = tempfile::tempdir().unwrap();
    // A long delay: the keys wait, sealed, until a caller asks.
    let store = Store::open(
        dir.path(),
        quiet_config().flush_delay(Duration::from_secs(3600)),
    )
    .unwrap();
    setup(&store, 40);
    let before = store.stats();
    let rounds = store.__flush_count();
    for u in 0..40 {
        store
            .mark_read(C, UserId(u), MessageId(1), Timestamp(1))
            .unwrap();
        store.seal(C, UserId(u)); // a visit of one update, then leave
    }
    let s = store.stats();
    assert_eq!(
        (s.keys_written - before.keys_written, s.pending_keys),
        (0, 40),
        "seal returns at once"
    );
    // A caller that must know RocksDB holds its key waits for the round,
    // which writes every key sealed so far.
    store.flush_key(C, UserId(39)).unwrap();
    let s = store.stats();
    assert_eq!(s.keys_written - before.keys_written, 40);
    assert_eq!(store.__flush_count() - rounds, 1, "one round");
    // Written in batches of 8 keys (so a send queued behind one in
    // RocksDB's write queue waits for 8 keys, not a whole round).
    assert_eq!(s.durable_batches - before.durable_batches, 5);
    assert_eq!(s.pending_keys, 0);
}

#[test]
fn stale_and_duplicate_updates_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), quiet_config()).unwrap();
    setup(&store, 2);
    store
        .mark_read(C, UserId(1), MessageId(10), Timestamp(1))
        .unwrap();
    store.flush().unwrap();
    let before = store.stats();
    for m in [10, 9, 3, 10] {
        store
            .mark_read(C, UserId(1), MessageId(m), Timestamp(2))
            .unwrap();
    }
    store.flush().unwrap();
    let s = store.stats();
    assert_eq!(s.keys_written, before.keys_written, "{s:?}");
    assert_eq!(s.change_sequences, before.change_sequences);
    assert_eq!(s.no_ops - before.no_ops, 4);
    // After a reopen the buffer does not know the stored mark: the no-op
    // is found at the flush instead, still without a write.
    store.close().unwrap();
    let store = Store::open(dir.path(), quiet_config()).unwrap();
    store
        .mark_read(C, UserId(1), MessageId(10), Timestamp(3))
        .unwrap();
    store.flush().unwrap();
    let s = store.stats();
    assert_eq!((s.keys_written, s.change_sequences, s.no_ops), (0, 0, 1));
}
