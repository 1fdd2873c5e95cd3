//! Real-time receipt events, private receipts, the membership boundary and
//! catch-up, on real stores in temporary directories.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use readmark::{
    CatchUp, Config, ConversationId, Cursor, Error, Event, EventPolicy, MessageId, Page,
    PrivacyScope, ReceiptEvent, Recipients, Store, Timestamp, UserId,
};

const C: ConversationId = ConversationId(1);

fn open(dir: &std::path::Path, config: Config) -> Store {
    Store::open(dir, config.flush_interval(Duration::from_secs(3600))).unwrap()
}

/// A conversation of `members` (users 1..=members) with `messages`
/// messages, sent by `sender(m)`.
fn group_by(s: &Store, members: u64, messages: u64, sender: impl Fn(u64) -> u64) {
    s.create_conversation(C).unwrap();
    for u in 1..=members {
        s.add_member(C, UserId(u), Timestamp(0)).unwrap();
    }
    for m in 1..=messages {
        s.record_message(C, MessageId(m), UserId(sender(m)), Timestamp(m))
            .unwrap();
    }
    s.flush().unwrap();
}

/// [`group_by`] with every message sent by user 1.
fn group(s: &Store, members: u64, messages: u64) {
    group_by(s, members, messages, |_| 1);
}

fn receipts(events: Vec<Event>) -> Vec<ReceiptEvent> {
    events
        .into_iter()
        .map(|e| match e {
            Event::Receipt(r) => r,
            other => panic!("expected a receipt, got {other:?}"),
        })
        .collect()
}

fn ids(users: &[UserId]) -> Vec<u64> {
    users.iter().map(|u| u.0).collect()
}

#[test]
fn ten_advances_within_the_window_become_one_event_with_the_newest_mark() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        Config::new().event_window(Duration::from_millis(200)),
    );
    group(&s, 3, 20);
    let sub = s.subscribe();
    let start = Instant::now();
    for m in 1..=10 {
        s.mark_read(C, UserId(2), MessageId(m), Timestamp(100 + m))
            .unwrap();
    }
    assert_eq!(sub.pending(), 1);
    let Some(Event::Receipt(e)) = sub.recv_timeout(Duration::from_secs(10)).unwrap() else {
        panic!("no event");
    };
    // Not before the window closed: the window is what joins them.
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        (e.conversation, e.reader, e.up_to),
        (C, UserId(2), MessageId(10))
    );
    assert_eq!((e.read_at, e.advances), (Timestamp(110), 10));
    assert_eq!(ids(&e.recipients), vec![1, 3]);
    assert!(!e.capped);
    assert_eq!(sub.try_recv().unwrap(), None);
}

#[test]
fn stale_and_repeated_updates_publish_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Config::new().event_window(Duration::ZERO));
    group(&s, 2, 5);
    s.mark_read(C, UserId(2), MessageId(4), Timestamp(9))
        .unwrap();
    let sub = s.subscribe();
    s.mark_read(C, UserId(2), MessageId(3), Timestamp(10))
        .unwrap();
    s.mark_read(C, UserId(2), MessageId(4), Timestamp(11))
        .unwrap();
    assert_eq!(sub.pending(), 0);
    s.mark_read(C, UserId(2), MessageId(5), Timestamp(12))
        .unwrap();
    assert_eq!(sub.pending(), 1);
}

#[test]
fn a_full_buffer_reports_lag_keeps_newest_state_and_catch_up_recovers_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        Config::new().event_window(Duration::ZERO).event_buffer(2),
    );
    group(&s, 6, 10);
    let cursor = s.snapshot(UserId(1)).unwrap().cursor;
    let sub = s.subscribe();
    for round in 1..=3u64 {
        for u in 2..=6 {
            s.mark_read(C, UserId(u), MessageId(round + u), Timestamp(100 + round))
                .unwrap();
        }
    }
    assert_eq!(sub.pending(), 2, "memory bounded by event_buffer");
    let events = sub.drain().unwrap();
    assert_eq!(events[0], Event::Lagged { dropped: 9 });
    let held = receipts(events[1..].to_vec());
    // The two held pairs carry their newest state, all three rounds joined.
    assert_eq!(
        held.iter()
            .map(|e| (e.reader.0, e.up_to.0, e.advances))
            .collect::<Vec<_>>(),
        vec![(2, 5, 3), (3, 6, 3)]
    );
    s.flush().unwrap();
    let (states, _) = common::catch_up(&s, UserId(1), cursor, 2);
    let mut got: Vec<(u64, u64)> = states.iter().map(|r| (r.reader.0, r.up_to.0)).collect();
    got.sort_unstable();
    assert_eq!(got, vec![(2, 5), (3, 6), (4, 7), (5, 8), (6, 9)]);
}

#[test]
fn large_conversations_notify_the_authors_of_newly_covered_messages_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        Config::new()
            .event_window(Duration::ZERO)
            .event_small_group(3)
            .event_fanout_cap(3),
    );
    // Messages 1..=10 by users 1 2 3 4 5 1 2 3 4 5; user 6 reads.
    group_by(&s, 6, 10, |m| 1 + (m - 1) % 5);
    let reader = UserId(6);
    s.mark_read(C, reader, MessageId(2), Timestamp(50)).unwrap();
    let sub = s.subscribe();
    // Newly covers 3, 4, 5.
    s.mark_read(C, reader, MessageId(5), Timestamp(60)).unwrap();
    let e = receipts(sub.drain().unwrap()).remove(0);
    assert_eq!((ids(&e.recipients), e.capped), (vec![3, 4, 5], false));
    // Newly covers 6..=10, by 1..=5: the newest three authors, capped.
    s.mark_read(C, reader, MessageId(10), Timestamp(70))
        .unwrap();
    let e = receipts(sub.drain().unwrap()).remove(0);
    assert_eq!((ids(&e.recipients), e.capped), (vec![3, 4, 5], true));
    // An author who left is not told.
    s.record_message(C, MessageId(11), UserId(4), Timestamp(11))
        .unwrap();
    s.record_message(C, MessageId(12), UserId(1), Timestamp(12))
        .unwrap();
    s.remove_member(C, UserId(4)).unwrap();
    s.mark_read(C, reader, MessageId(12), Timestamp(80))
        .unwrap();
    // (Both sends covered their senders' unread messages: events of their
    // own, of which 4's went with 4, who left.)
    let got = receipts(sub.drain().unwrap());
    let readers: Vec<u64> = got.iter().map(|e| e.reader.0).collect();
    assert_eq!(readers, vec![1, 6]);
    let e = &got[1];
    assert_eq!((ids(&e.recipients), e.capped), (vec![1], false));
}

#[test]
fn nobody_policy_and_own_devices() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        Config::new()
            .event_window(Duration::ZERO)
            .small_group_recipients(Recipients::Nobody),
    );
    group(&s, 3, 3);
    let sub = s.subscribe();
    s.mark_read(C, UserId(2), MessageId(3), Timestamp(9))
        .unwrap();
    // Still an event: the reader's own devices need their mark.
    let e = receipts(sub.drain().unwrap()).remove(0);
    assert_eq!(
        (e.reader, e.up_to, e.recipients.len()),
        (UserId(2), MessageId(3), 0)
    );
}

#[test]
fn private_receipts_reach_nobody_else_and_hide_the_past() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Config::new().event_window(Duration::ZERO));
    group(&s, 3, 6);
    let now = Timestamp::now().0;
    s.record_message(C, MessageId(7), UserId(1), Timestamp(now))
        .unwrap();
    s.record_message(C, MessageId(8), UserId(1), Timestamp(now))
        .unwrap();
    s.mark_read(C, UserId(2), MessageId(7), Timestamp(now + 1))
        .unwrap();
    s.flush().unwrap();
    assert_eq!(s.read_count(C, UserId(1), MessageId(7)).unwrap().count, 1);

    let sub = s.subscribe();
    s.set_receipts_private(UserId(2), PrivacyScope::Conversation(C), true)
        .unwrap();
    assert!(
        s.receipts_private(UserId(2), PrivacyScope::Conversation(C))
            .unwrap()
    );
    // The past per-message receipt is hidden at once, from every answer.
    assert_eq!(s.read_count(C, UserId(1), MessageId(7)).unwrap().count, 0);
    assert_eq!(
        s.read_by(C, UserId(3), MessageId(7), Page::first(5))
            .unwrap()
            .count,
        0
    );
    assert!(
        s.marks(C, UserId(1))
            .unwrap()
            .iter()
            .all(|(u, _)| *u != UserId(2))
    );
    // ... but they still see their own.
    assert_eq!(s.marks(C, UserId(2)).unwrap().len(), 2);
    // A private member's view is not recorded.
    assert!(
        !s.mark_viewed(C, UserId(2), MessageId(8), Timestamp(now + 2))
            .unwrap()
    );
    s.mark_read(C, UserId(2), MessageId(8), Timestamp(now + 3))
        .unwrap();
    assert_eq!(s.unread_count(C, UserId(2)).unwrap().count, 0);
    let mut events = sub.drain().unwrap();
    // Online members are told to forget what they were shown ...
    assert_eq!(
        events.remove(0),
        Event::Hidden {
            conversation: C,
            reader: UserId(2),
            recipients: vec![UserId(1), UserId(3)],
        }
    );
    // ... and the private read reaches the reader's own devices only.
    let e = receipts(events).remove(0);
    assert_eq!(
        (e.reader, e.up_to, e.recipients.len()),
        (UserId(2), MessageId(8), 0)
    );
    s.flush().unwrap();
    assert!(
        s.snapshot(UserId(1))
            .unwrap()
            .states
            .iter()
            .all(|r| r.reader != UserId(2))
    );

    // Going public shows the mark, not per-message reads of the private time.
    s.set_receipts_private(UserId(2), PrivacyScope::Conversation(C), false)
        .unwrap();
    let page = s
        .read_by(C, UserId(1), MessageId(8), Page::first(5))
        .unwrap();
    assert_eq!(page.count, 1);
    assert_eq!(
        page.readers[0].read_at,
        readmark::ReadTime::NoLaterThan(Timestamp(now + 3))
    );
    let page = s
        .read_by(C, UserId(1), MessageId(7), Page::first(5))
        .unwrap();
    assert_eq!(
        page.readers[0].read_at,
        readmark::ReadTime::At(Timestamp(now + 1))
    );
}

#[test]
fn private_everywhere_covers_later_joins_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), Config::new());
        group(&s, 2, 2);
        s.set_receipts_private(UserId(2), PrivacyScope::Everywhere, true)
            .unwrap();
        s.create_conversation(ConversationId(2)).unwrap();
        s.add_member(ConversationId(2), UserId(1), Timestamp(0))
            .unwrap();
        s.add_member(ConversationId(2), UserId(2), Timestamp(0))
            .unwrap();
        s.close().unwrap();
    }
    let s = open(dir.path(), Config::new().event_window(Duration::ZERO));
    assert!(
        s.receipts_private(UserId(2), PrivacyScope::Everywhere)
            .unwrap()
    );
    s.record_message(ConversationId(2), MessageId(1), UserId(1), Timestamp(1))
        .unwrap();
    s.mark_read(ConversationId(2), UserId(2), MessageId(1), Timestamp(2))
        .unwrap();
    s.mark_read(C, UserId(2), MessageId(2), Timestamp(2))
        .unwrap();
    for c in [C, ConversationId(2)] {
        assert_eq!(s.read_count(c, UserId(1), MessageId(1)).unwrap().count, 0);
    }
    s.set_receipts_private(UserId(2), PrivacyScope::Everywhere, false)
        .unwrap();
    assert_eq!(
        s.read_count(ConversationId(2), UserId(1), MessageId(1))
            .unwrap()
            .count,
        1
    );
}

#[test]
fn non_members_cannot_query_and_leavers_stop_receiving_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        Config::new().event_window(Duration::from_secs(3600)),
    );
    group(&s, 3, 3);
    let outsider = UserId(99);
    let refused =
        |r: Result<(), Error>| matches!(r, Err(Error::NotMember { user, .. }) if user == outsider);
    assert!(refused(
        s.read_by(C, outsider, MessageId(1), Page::first(5))
            .map(|_| ())
    ));
    assert!(refused(s.read_count(C, outsider, MessageId(1)).map(|_| ())));
    assert!(refused(s.marks(C, outsider).map(|_| ())));
    assert!(s.snapshot(outsider).unwrap().states.is_empty());

    let sub = s.subscribe();
    s.mark_read(C, UserId(2), MessageId(3), Timestamp(9))
        .unwrap();
    s.mark_read(C, UserId(3), MessageId(3), Timestamp(9))
        .unwrap();
    // The events are still held in their window when user 3 leaves.
    s.remove_member(C, UserId(3)).unwrap();
    let held = receipts(sub.drain().unwrap());
    // 3's own event is gone with the membership; 2's no longer goes to 3.
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].reader, ids(&held[0].recipients)),
        (UserId(2), vec![1])
    );
}

#[test]
fn catch_up_is_paginated_latest_state_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let text;
    {
        let s = open(dir.path(), Config::new());
        group(&s, 4, 30);
        text = s.snapshot(UserId(1)).unwrap().cursor.to_string();
        for m in 1..=30 {
            for u in 2..=4 {
                s.mark_read(C, UserId(u), MessageId(m), Timestamp(100 + m))
                    .unwrap();
            }
            if m % 10 == 0 {
                s.flush().unwrap(); // three flushes: three changes per reader
            }
        }
        s.close().unwrap();
    }
    let s = open(dir.path(), Config::new());
    let cursor: Cursor = text.parse().unwrap();
    let (states, next) = common::catch_up(&s, UserId(1), cursor, 1);
    let mut got: Vec<(u64, u64)> = states.iter().map(|r| (r.reader.0, r.up_to.0)).collect();
    got.sort_unstable();
    got.dedup();
    // The latest state of each reader, not a replay of every advance.
    assert_eq!(got, vec![(2, 30), (3, 30), (4, 30)]);
    assert!(states.len() <= 9, "{} states for 3 readers", states.len());
    // Nothing new: an empty page, and the cursor is stable.
    let (again, _) = common::catch_up(&s, UserId(1), next, 5);
    assert!(again.is_empty());
    assert!(matches!("00".parse::<Cursor>(), Err(Error::InvalidCursor)));
}

#[test]
fn a_cursor_older_than_retention_requires_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        Config::new().change_retention(Duration::from_secs(60)),
    );
    // Ahead of the real clock, which stamped the store's opening.
    let t0 = Timestamp::now().get() + 3_600_000;
    s.__set_clock(Some(Timestamp(t0)));
    group(&s, 2, 3);
    let old = s.snapshot(UserId(1)).unwrap().cursor;
    s.mark_read(C, UserId(2), MessageId(3), Timestamp(t0))
        .unwrap();
    s.flush().unwrap();
    s.__set_clock(Some(Timestamp(t0 + 61_000)));
    s.compact().unwrap();
    assert_eq!(
        s.changes_since(UserId(1), old, 10).unwrap(),
        CatchUp::SnapshotRequired
    );
    // The snapshot has the state and a fresh cursor that works.
    let snap = s.snapshot(UserId(1)).unwrap();
    assert!(
        snap.states
            .iter()
            .any(|r| (r.reader, r.up_to) == (UserId(2), MessageId(3)))
    );
    assert!(matches!(
        s.changes_since(UserId(1), snap.cursor, 10).unwrap(),
        CatchUp::Changes(_)
    ));
}

#[test]
fn catch_up_lists_marks_that_became_visible_without_moving() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Config::new());
    group(&s, 3, 3);
    s.mark_read(C, UserId(2), MessageId(3), Timestamp(5))
        .unwrap();
    s.set_receipts_private(UserId(3), PrivacyScope::Everywhere, true)
        .unwrap();
    s.mark_read(C, UserId(3), MessageId(2), Timestamp(5))
        .unwrap();
    s.flush().unwrap();
    // A newcomer's catch-up from before they joined lists what is there.
    let before = s.snapshot(UserId(4)).unwrap().cursor;
    s.add_member(C, UserId(4), Timestamp(9)).unwrap();
    let (states, next) = common::catch_up(&s, UserId(4), before, 10);
    assert_eq!(
        states
            .iter()
            .map(|r| (r.reader.0, r.up_to.0))
            .collect::<Vec<_>>(),
        vec![(1, 3), (2, 3)],
        "user 3 is private"
    );
    // Going public lists the unchanged mark to the others.
    s.set_receipts_private(UserId(3), PrivacyScope::Everywhere, false)
        .unwrap();
    let (states, _) = common::catch_up(&s, UserId(4), next, 10);
    assert_eq!(
        states
            .iter()
            .map(|r| (r.reader.0, r.up_to.0))
            .collect::<Vec<_>>(),
        vec![(3, 2)]
    );
}

#[test]
fn a_version_2_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), Config::new());
        group(&s, 2, 2);
        s.mark_read(C, UserId(2), MessageId(2), Timestamp(5))
            .unwrap();
        s.close().unwrap();
    }
    // What version 2 left: no change logs, no user settings.
    {
        let mut db = common::raw_open(dir.path());
        for cf in ["changes", "user_changes", "users"] {
            db.drop_cf(cf).unwrap();
        }
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(meta, b"format_version", 2u32.to_be_bytes())
            .unwrap();
        db.delete_cf(meta, b"change_seq").unwrap();
    }
    let s = open(dir.path(), Config::new());
    assert_eq!(s.mark(C, UserId(2)).unwrap().unwrap().up_to, MessageId(2));
    let cursor = s.snapshot(UserId(1)).unwrap().cursor;
    s.record_message(C, MessageId(3), UserId(1), Timestamp(6))
        .unwrap();
    s.mark_read(C, UserId(2), MessageId(3), Timestamp(6))
        .unwrap();
    s.flush().unwrap();
    let (states, _) = common::catch_up(&s, UserId(1), cursor, 10);
    assert!(
        states
            .iter()
            .any(|r| (r.reader, r.up_to) == (UserId(2), MessageId(3)))
    );
    s.close().unwrap();
    let report = readmark::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn catch_up_and_events_tell_clients_to_forget_readers_who_left_or_went_private() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Config::new().event_window(Duration::ZERO));
    group(&s, 4, 3);
    for u in 2..=4 {
        s.mark_read(C, UserId(u), MessageId(3), Timestamp(5))
            .unwrap();
    }
    s.flush().unwrap();
    let before = s.snapshot(UserId(1)).unwrap();
    assert_eq!(before.states.len(), 4, "all four marks shown to user 1");
    let sub = s.subscribe();
    // Nobody advances after the cursor: only the leave and the privacy
    // change can tell user 1 to forget.
    s.remove_member(C, UserId(2)).unwrap();
    s.set_receipts_private(UserId(3), PrivacyScope::Conversation(C), true)
        .unwrap();
    let events = sub.drain().unwrap();
    assert_eq!(
        events,
        vec![Event::Hidden {
            conversation: C,
            reader: UserId(3),
            recipients: vec![UserId(1), UserId(4)],
        }]
    );
    let (states, hidden, _) = common::catch_up_with_hidden(&s, UserId(1), before.cursor, 10);
    assert!(states.is_empty(), "{states:?}");
    let mut hidden: Vec<u64> = hidden.iter().map(|(_, u)| u.0).collect();
    hidden.sort_unstable();
    assert_eq!(hidden, vec![2, 3]);
    // A private reader's later reads are not even activity to others.
    s.record_message(C, MessageId(4), UserId(1), Timestamp(6))
        .unwrap();
    s.flush().unwrap();
    let cursor = s.snapshot(UserId(1)).unwrap().cursor;
    s.mark_read(C, UserId(3), MessageId(4), Timestamp(7))
        .unwrap();
    s.flush().unwrap();
    let (states, hidden, _) = common::catch_up_with_hidden(&s, UserId(1), cursor, 10);
    assert!(
        states.is_empty() && hidden.is_empty(),
        "{states:?} {hidden:?}"
    );
    // ... while their own devices catch up as usual.
    let own = s.snapshot(UserId(3)).unwrap().cursor;
    s.mark_read(C, UserId(3), MessageId(4), Timestamp(8))
        .unwrap();
    s.record_message(C, MessageId(5), UserId(1), Timestamp(9))
        .unwrap();
    s.mark_read(C, UserId(3), MessageId(5), Timestamp(10))
        .unwrap();
    s.flush().unwrap();
    let (states, _, _) = common::catch_up_with_hidden(&s, UserId(3), own, 10);
    assert!(
        states
            .iter()
            .any(|r| (r.reader, r.up_to) == (UserId(3), MessageId(5)))
    );
}

fn newest_wal(dir: &std::path::Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().expect("a WAL file")
}

/// Post-mortem (review): single-key flushes write unsynced batches that
/// carried change sequences a cursor could pin; a power loss dropped them,
/// the reopened store handed the same numbers out again, and the cursor
/// skipped the new changes. Sequences now come from durably reserved blocks.
#[test]
fn regression_power_loss_cannot_make_a_cursor_skip_later_changes() {
    // `ProcessCrash`: flushes of its updates are unsynced RocksDB batches
    // (a `PowerLoss` update's flush is synced before its journal slot is
    // given back), which a power loss may drop, with their sequences.
    let config = || common::manual_config();
    let live = tempfile::tempdir().unwrap();
    let s = Store::open(live.path(), config()).unwrap();
    let (u, v, w) = (UserId(1), UserId(2), UserId(3));
    s.create_conversation(C).unwrap();
    for x in [u, v, w] {
        s.add_member(C, x, Timestamp(0)).unwrap();
    }
    for m in 1..=5 {
        s.record_message(C, MessageId(m), u, Timestamp(m)).unwrap();
    }
    s.flush().unwrap(); // synced: everything so far survives power loss
    let wal = newest_wal(live.path());
    let durable_len = std::fs::metadata(&wal).unwrap().len();
    s.mark_read(C, v, MessageId(2), Timestamp(10)).unwrap();
    s.flush_key(C, v).unwrap(); // unsynced RocksDB batch
    s.mark_read(C, v, MessageId(3), Timestamp(11)).unwrap();
    s.flush_key(C, v).unwrap();
    let cursor = s.snapshot(u).unwrap().cursor;
    // Power loss: the unsynced WAL tail is gone, and so are v's unsynced
    // `ProcessCrash` updates (their slots were given back once written).
    let image = tempfile::tempdir().unwrap();
    common::copy_dir(live.path(), image.path());
    s.__simulate_crash();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(image.path().join(wal.file_name().unwrap()))
        .unwrap();
    f.set_len(durable_len).unwrap();
    drop(f);
    let s = Store::open(image.path(), config()).unwrap();
    assert!(
        s.mark(C, v)
            .unwrap()
            .is_none_or(|m| m.up_to <= MessageId(3)),
        "nothing that was never written"
    );
    s.mark_read(C, w, MessageId(4), Timestamp(20)).unwrap();
    s.flush().unwrap();
    let (states, _) = common::catch_up(&s, u, cursor, 100);
    let got: Vec<(u64, u64)> = states.iter().map(|r| (r.reader.0, r.up_to.0)).collect();
    assert!(
        got.contains(&(3, 4)),
        "w's read after the restart missed: {got:?}"
    );
}

/// Post-mortem (review): a join computed the marks to list again before
/// taking the flush lock, so a member's first mark flushed in between was
/// neither in that list nor after the joiner's cursor. The list is now
/// read under the flush lock.
#[test]
fn regression_join_racing_a_first_mark_is_not_missed_by_catch_up() {
    use std::sync::Barrier;
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(dir.path(), common::manual_config()).unwrap());
    let (v, w) = (UserId(2), UserId(3));
    let mut checked = 0;
    for i in 0..300u64 {
        let c = ConversationId(10 + i);
        let joiner = UserId(1_000 + i);
        s.create_conversation(c).unwrap();
        s.add_member(c, w, Timestamp(0)).unwrap();
        s.record_message(c, MessageId(1), w, Timestamp(1)).unwrap();
        s.add_member(c, v, Timestamp(0)).unwrap();
        s.flush().unwrap();
        let barrier = Arc::new(Barrier::new(3));
        let done = Arc::new(AtomicBool::new(false));
        let joins = {
            let (s, b, done) = (s.clone(), barrier.clone(), done.clone());
            std::thread::spawn(move || {
                b.wait();
                s.add_member(c, joiner, Timestamp(2)).unwrap();
                done.store(true, Ordering::Release);
            })
        };
        let reads = {
            let (s, b) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                // Varying head starts put the flush anywhere in the join.
                for _ in 0..(i * 37) % 400 {
                    std::hint::spin_loop();
                }
                s.mark_read(c, v, MessageId(1), Timestamp(3)).unwrap();
                s.flush().unwrap();
            })
        };
        barrier.wait();
        let mut snaps = Vec::new();
        while !done.load(Ordering::Acquire) {
            snaps.push(s.snapshot(joiner).unwrap());
        }
        joins.join().unwrap();
        reads.join().unwrap();
        s.flush().unwrap();
        for snap in snaps {
            if snap
                .states
                .iter()
                .any(|r| r.conversation == c && r.reader == v)
            {
                continue;
            }
            checked += 1;
            let (listed, _) = common::catch_up(&s, joiner, snap.cursor, 100);
            assert!(
                listed.iter().any(|r| r.conversation == c && r.reader == v),
                "iteration {i}: v's mark never reaches the joiner"
            );
        }
    }
    assert!(
        checked > 0,
        "no snapshot taken during a join: the race was not exercised"
    );
}

/// Post-mortem (second review): a joiner's cursor from before the join
/// listed as "forget" every reader who had left or hidden before the
/// join, revealing membership history; members now record the change
/// sequence at their join and older hide entries are skipped.
#[test]
fn regression_no_forget_notice_about_readers_before_a_join() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), common::small_config());
    let (other, c) = (ConversationId(7), ConversationId(1));
    let (a, w, x, r) = (UserId(1), UserId(2), UserId(3), UserId(4));
    s.create_conversation(other).unwrap();
    s.add_member(other, a, Timestamp(0)).unwrap();
    let cursor = s.snapshot(a).unwrap().cursor; // A's device goes offline
    s.create_conversation(c).unwrap();
    for u in [w, x, r] {
        s.add_member(c, u, Timestamp(0)).unwrap();
    }
    s.record_message(c, MessageId(1), w, Timestamp(1)).unwrap();
    s.mark_read(c, x, MessageId(1), Timestamp(2)).unwrap();
    s.mark_read(c, r, MessageId(1), Timestamp(2)).unwrap();
    s.flush().unwrap();
    s.remove_member(c, x).unwrap(); // X leaves before A ever joins
    s.set_receipts_private(r, PrivacyScope::Conversation(c), true)
        .unwrap();
    s.add_member(c, a, Timestamp(5)).unwrap();
    let (_, hidden, _) = common::catch_up_with_hidden(&s, a, cursor, 100);
    assert!(
        !hidden.iter().any(|&(cc, u)| cc == c && u == x),
        "A never shared conversation {c:?} with {x:?}, yet is told to forget them: {hidden:?}"
    );
}

/// Post-mortem (second review): answers read member records from a
/// snapshot but marks from the live buffer, so a walk that began before a
/// member went private showed a read they made after; answers now start
/// again when a privacy change lands while they run.
#[test]
fn regression_a_read_made_while_private_never_reaches_a_walk_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path(), common::small_config()));
    let a = UserId(1);
    let n_conv = 2000u64;
    // Many conversations of A, to widen the walk; the target is the last.
    for i in 0..n_conv {
        let c = ConversationId(10 + i);
        s.create_conversation(c).unwrap();
        s.add_member(c, a, Timestamp(0)).unwrap();
    }
    let t = ConversationId(10 + n_conv - 1);
    s.record_message(t, MessageId(1), a, Timestamp(1)).unwrap();
    let mut leaks = Vec::new();
    for round in 0..20u64 {
        let r = UserId(100 + round);
        s.add_member(t, r, Timestamp(0)).unwrap();
        let base = 10 + round * 10;
        s.record_message(t, MessageId(base), a, Timestamp(base))
            .unwrap();
        s.record_message(t, MessageId(base + 1), a, Timestamp(base + 1))
            .unwrap();
        let cursor = s.snapshot(a).unwrap().cursor;
        s.mark_read(t, r, MessageId(base), Timestamp(base)).unwrap();
        s.flush().unwrap(); // a public read: listed to A
        let secret = MessageId(base + 1);
        let stop = Arc::new(AtomicBool::new(false));
        let walks = Arc::new(AtomicU64::new(0));
        let gone_private = Arc::new(AtomicBool::new(false));
        let walker = {
            let (s, stop, walks, gp) =
                (s.clone(), stop.clone(), walks.clone(), gone_private.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    walks.fetch_add(1, Ordering::Relaxed);
                    let after = gp.load(Ordering::Acquire);
                    if let CatchUp::Changes(p) = s.changes_since(a, cursor, 10_000).unwrap() {
                        for st in p.states {
                            if st.reader == r && st.up_to == secret {
                                seen.push(("changes_since", after, st));
                            }
                        }
                    }
                    for st in s.snapshot(a).unwrap().states {
                        if st.reader == r && st.up_to == secret {
                            seen.push(("snapshot", after, st));
                        }
                    }
                }
                seen
            })
        };
        while walks.load(Ordering::Relaxed) < 1 + round % 3 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_micros(500 * (round % 7)));
        s.set_receipts_private(r, PrivacyScope::Conversation(t), true)
            .unwrap();
        gone_private.store(true, Ordering::Release);
        // Read while private: nobody else may ever learn of it.
        s.mark_read(t, r, secret, Timestamp(base + 2)).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        stop.store(true, Ordering::Release);
        let seen = walker.join().unwrap();
        if !seen.is_empty() {
            leaks.push((round, seen));
        }
        s.flush().unwrap();
    }
    assert!(
        leaks.is_empty(),
        "a read made while private was shown to another member: {:?}",
        &leaks[..leaks.len().min(2)]
    );
}

/// Post-mortem (second review): the change log treated a member record it
/// could not decode as public, so a private read replayed at open reached
/// the conversation's log; it now fails closed.
#[test]
fn regression_an_undecodable_member_record_keeps_reads_out_of_the_conversation_log() {
    let dir = tempfile::tempdir().unwrap();
    let (c, a, r) = (ConversationId(1), UserId(1), UserId(2));
    let cursor;
    {
        let s = open(dir.path(), common::small_config());
        s.create_conversation(c).unwrap();
        s.add_member(c, a, Timestamp(0)).unwrap();
        s.add_member(c, r, Timestamp(0)).unwrap();
        s.record_message(c, MessageId(1), a, Timestamp(1)).unwrap();
        s.set_receipts_private(r, PrivacyScope::Conversation(c), true)
            .unwrap();
        s.flush().unwrap();
        cursor = s.snapshot(a).unwrap().cursor;
        s.mark_read(c, r, MessageId(1), Timestamp(2)).unwrap(); // private read, journaled
        s.__simulate_crash();
    }
    {
        let db = common::raw_open(dir.path());
        let cf = db.cf_handle("members").unwrap();
        let mut key = Vec::new();
        key.extend_from_slice(&c.0.to_be_bytes());
        key.extend_from_slice(&r.0.to_be_bytes());
        let mut v = db.get_cf(cf, &key).unwrap().unwrap();
        v[1] |= 0x80;
        db.put_cf(cf, &key, v).unwrap();
        db.flush_cf(cf).unwrap();
    }
    let s = open(dir.path(), common::small_config());
    drop(s);
    {
        // Repair the record (drop the unknown bit) and look again.
        let db = common::raw_open(dir.path());
        let cf = db.cf_handle("members").unwrap();
        let mut key = Vec::new();
        key.extend_from_slice(&c.0.to_be_bytes());
        key.extend_from_slice(&r.0.to_be_bytes());
        let mut v = db.get_cf(cf, &key).unwrap().unwrap();
        v[1] &= 0x7f;
        db.put_cf(cf, &key, v).unwrap();
        db.flush_cf(cf).unwrap();
    }
    let s = open(dir.path(), common::small_config());
    let (_, hidden, _) = common::catch_up_with_hidden(&s, a, cursor, 10);
    assert!(
        hidden.is_empty(),
        "the private read at replay reached the conversation log"
    );
}

/// A conversation's own window: a DM pushed at once while the store's
/// long window holds a group's event back; cleared, the store's applies.
#[test]
fn a_conversation_window_overrides_the_stores() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        Config::new().event_window(Duration::from_secs(3600)),
    );
    group(&s, 3, 3);
    let dm = ConversationId(2);
    s.create_conversation(dm).unwrap();
    for u in [1, 2] {
        s.add_member(dm, UserId(u), Timestamp(0)).unwrap();
    }
    s.record_message(dm, MessageId(1), UserId(1), Timestamp(1))
        .unwrap();
    s.set_event_policy(dm, EventPolicy::new().window(Duration::ZERO))
        .unwrap();
    let sub = s.subscribe();
    s.mark_read(C, UserId(2), MessageId(3), Timestamp(9))
        .unwrap();
    s.mark_read(dm, UserId(2), MessageId(1), Timestamp(9))
        .unwrap();
    // Due at once although published second; the group's is not due.
    let Some(Event::Receipt(e)) = sub.try_recv().unwrap() else {
        panic!("the DM's event was not delivered at once")
    };
    assert_eq!((e.conversation, e.reader), (dm, UserId(2)));
    assert_eq!(sub.try_recv().unwrap(), None);
    assert_eq!(sub.pending(), 1);
    // Persisted; cleared, the store's window applies to the DM again.
    assert_eq!(s.event_policy(dm).unwrap().window, Some(Duration::ZERO));
    s.set_event_policy(dm, EventPolicy::new()).unwrap();
    s.record_message(dm, MessageId(2), UserId(1), Timestamp(10))
        .unwrap();
    s.mark_read(dm, UserId(2), MessageId(2), Timestamp(11))
        .unwrap();
    assert_eq!(sub.try_recv().unwrap(), None);
    assert_eq!(sub.pending(), 2);
    drop(sub);
    s.set_event_policy(dm, EventPolicy::new().window(Duration::from_millis(7)))
        .unwrap();
    s.close().unwrap();
    let s = open(dir.path(), Config::new());
    assert_eq!(
        s.event_policy(dm).unwrap(),
        EventPolicy::new().window(Duration::from_millis(7))
    );
    // Bad input: typed errors.
    assert!(matches!(
        s.set_event_policy(dm, EventPolicy::new().window(Duration::from_secs(1 << 40))),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.set_event_policy(ConversationId(99), EventPolicy::new()),
        Err(Error::UnknownConversation(_))
    ));
}

/// A conversation's own recipient policy, whatever its size: a small
/// group that tells nobody, a large one that shows everyone's marks (in
/// events and, from the change on, in catch-up).
#[test]
fn a_conversation_recipient_policy_overrides_the_size_rule() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        dir.path(),
        Config::new()
            .event_window(Duration::ZERO)
            .event_small_group(3),
    );
    group(&s, 5, 4); // large: authors only, catch-up shows no one else
    s.mark_read(C, UserId(2), MessageId(4), Timestamp(9))
        .unwrap();
    s.flush().unwrap();
    let cursor = s.snapshot(UserId(3)).unwrap().cursor;
    assert!(
        !s.snapshot(UserId(3))
            .unwrap()
            .states
            .iter()
            .any(|x| x.reader == UserId(2))
    );
    s.set_event_policy(C, EventPolicy::new().recipients(Recipients::Members))
        .unwrap();
    let (states, _) = common::catch_up(&s, UserId(3), cursor, 10);
    assert!(
        states
            .iter()
            .any(|x| x.reader == UserId(2) && x.up_to == MessageId(4)),
        "{states:?}"
    );
    let sub = s.subscribe();
    s.mark_read(C, UserId(4), MessageId(4), Timestamp(10))
        .unwrap();
    let e = receipts(sub.drain().unwrap()).remove(0);
    assert_eq!(ids(&e.recipients), vec![1, 2, 3, 5]);
    // Nobody: only the reader's own devices.
    s.set_event_policy(C, EventPolicy::new().recipients(Recipients::Nobody))
        .unwrap();
    s.mark_read(C, UserId(5), MessageId(4), Timestamp(11))
        .unwrap();
    let e = receipts(sub.drain().unwrap()).remove(0);
    assert_eq!((e.reader, e.recipients.len()), (UserId(5), 0));
}
