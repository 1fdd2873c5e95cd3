//! Receipt semantics that peers' test suites (Synapse's receipts and
//! unread counts, Mattermost's channel member store) expect, each a
//! regression test of a defect found by porting them: every test here
//! failed on the code before its fix. Real stores in temporary
//! directories.

use std::time::Duration;

use readmark::{
    CatchUp, Config, ConversationId, Durability, Event, MessageId, Page, PrivacyScope,
    ReceiptEvent, Store, Timestamp, UserId,
};

const C: ConversationId = ConversationId(1);
const ALICE: UserId = UserId(1);
const BOB: UserId = UserId(2);
const CAROL: UserId = UserId(3);

fn open(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        Config::new()
            .event_window(Duration::ZERO)
            .flush_interval(Duration::from_secs(3600)),
    )
    .unwrap()
}

/// Alice, Bob and Carol in `C`; Alice posted messages `1..=messages`.
fn trio(s: &Store, messages: u64) {
    s.create_conversation(C).unwrap();
    for u in [ALICE, BOB, CAROL] {
        s.add_member(C, u, Timestamp(0)).unwrap();
    }
    for m in 1..=messages {
        s.record_message(C, MessageId(m), ALICE, Timestamp(m))
            .unwrap();
    }
}

/// An event's recipients' ids (in id order, as delivered).
fn recipients(e: &ReceiptEvent) -> Vec<u64> {
    e.recipients.iter().map(|u| u.0).collect()
}

fn receipts(events: Vec<Event>) -> Vec<ReceiptEvent> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Receipt(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Post-mortem: a mark was taken as the client sent it, so one receipt
/// naming an id above the newest message (`u64::MAX` here) made every
/// later message read for that user, for good.
#[test]
fn regression_a_mark_past_the_newest_message_is_clamped_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    trio(&s, 3);
    s.mark_read(C, BOB, MessageId(u64::MAX), Timestamp(10))
        .unwrap();
    assert_eq!(s.mark(C, BOB).unwrap().unwrap().up_to, MessageId(3));
    s.record_message(C, MessageId(4), ALICE, Timestamp(11))
        .unwrap();
    assert_eq!(s.unread_count(C, BOB).unwrap().count, 1);
    let by = s.read_by(C, ALICE, MessageId(4), Page::first(10)).unwrap();
    assert_eq!(
        by.count, 0,
        "Bob has not read a message sent after his mark"
    );
    // A real read later is an advance like any other.
    let sub = s.subscribe();
    s.mark_read(C, BOB, MessageId(4), Timestamp(12)).unwrap();
    let got = receipts(sub.drain().unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].reader, got[0].up_to), (BOB, MessageId(4)));
    // Every durability level, and across a reopen.
    s.mark_read_with(
        C,
        CAROL,
        MessageId(99),
        Timestamp(13),
        Durability::PowerLoss,
    )
    .unwrap();
    drop(sub);
    s.close().unwrap();
    let s = open(dir.path());
    assert_eq!(s.mark(C, CAROL).unwrap().unwrap().up_to, MessageId(4));
    assert_eq!(s.mark(C, BOB).unwrap().unwrap().up_to, MessageId(4));
}

/// Post-mortem: the same, in a conversation with no message yet: the
/// mark must not exist before anything was sent.
#[test]
fn regression_a_mark_in_an_empty_conversation_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    trio(&s, 0);
    s.mark_read(C, BOB, MessageId(7), Timestamp(1)).unwrap();
    assert_eq!(s.mark(C, BOB).unwrap(), None);
    s.record_message(C, MessageId(1), ALICE, Timestamp(2))
        .unwrap();
    assert_eq!(s.unread_count(C, BOB).unwrap().count, 1);
    s.flush().unwrap();
    assert_eq!(s.unread_count(C, BOB).unwrap().count, 1);
}

/// Post-mortem: going public again wrote a change-log row for catch-up
/// but told nobody online; every change others may now see is an event.
#[test]
fn regression_going_public_publishes_the_now_visible_mark() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    trio(&s, 3);
    s.set_receipts_private(BOB, PrivacyScope::Everywhere, true)
        .unwrap();
    s.mark_read(C, BOB, MessageId(2), Timestamp(10)).unwrap();
    s.flush().unwrap();
    let sub = s.subscribe();
    s.set_receipts_private(BOB, PrivacyScope::Everywhere, false)
        .unwrap();
    let got = receipts(sub.drain().unwrap());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].reader, got[0].up_to), (BOB, MessageId(2)));
    assert_eq!(recipients(&got[0]), vec![1, 3]);
    // Going public where nothing was read shows nothing.
    s.set_receipts_private(CAROL, PrivacyScope::Conversation(C), true)
        .unwrap();
    s.set_receipts_private(CAROL, PrivacyScope::Conversation(C), false)
        .unwrap();
    assert!(receipts(sub.drain().unwrap()).is_empty());
}

/// Post-mortem: sending counts as reading, so a send that covered others'
/// unread messages moved the sender into their `read_by`, but published
/// nothing: the other members never saw it live.
#[test]
fn regression_a_send_that_covers_unread_messages_publishes_a_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    trio(&s, 2);
    let sub = s.subscribe();
    s.record_message(C, MessageId(3), BOB, Timestamp(10))
        .unwrap();
    let got = receipts(sub.drain().unwrap());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].reader, got[0].up_to, got[0].read_at),
        (BOB, MessageId(3), Timestamp(10))
    );
    assert_eq!(recipients(&got[0]), vec![1, 3]);
    // Nothing unread before it: a send covers only itself, which its
    // sender's clients know; no event.
    s.record_message(C, MessageId(4), BOB, Timestamp(11))
        .unwrap();
    assert!(receipts(sub.drain().unwrap()).is_empty());
}

/// Post-mortem (format 3): a stale or duplicate update still wrote a
/// change entry at flush, so catch-up listed an unchanged state again
/// and every member downloaded it.
#[test]
fn regression_catch_up_does_not_list_an_unchanged_state_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    trio(&s, 5);
    s.mark_read(C, BOB, MessageId(4), Timestamp(10)).unwrap();
    s.flush().unwrap();
    let cursor = s.snapshot(ALICE).unwrap().cursor;
    s.mark_read(C, BOB, MessageId(3), Timestamp(11)).unwrap(); // stale
    s.mark_read(C, BOB, MessageId(4), Timestamp(12)).unwrap(); // duplicate
    s.flush().unwrap();
    match s.changes_since(ALICE, cursor, 100).unwrap() {
        CatchUp::Changes(page) => assert!(page.states.is_empty(), "{page:?}"),
        CatchUp::SnapshotRequired => panic!("the cursor is fresh"),
    }
}

/// A store written before the clamp may hold a mark past the newest
/// message: `verify` counts such marks (not a problem: answers stay
/// consistent with the mark), and a clamped write never adds one.
#[test]
fn verify_counts_marks_past_the_newest_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    trio(&s, 3);
    s.mark_read(C, BOB, MessageId(u64::MAX), Timestamp(9))
        .unwrap();
    s.close().unwrap();
    const KEY: &str = "marks past the newest message (older versions)";
    let r = readmark::verify(dir.path()).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.records.get(KEY), None, "{:?}", r.records);
    // What an older version wrote: a plain mark operand (design §2.2) at
    // u64::MAX, merged around the clamp.
    let s = open(dir.path());
    let mut operand = vec![1u8, 1];
    operand.extend_from_slice(&u64::MAX.to_be_bytes());
    operand.extend_from_slice(&10u64.to_be_bytes());
    s.__merge_raw_mark_operand(C, CAROL, &operand).unwrap();
    s.close().unwrap();
    let r = readmark::verify(dir.path()).unwrap();
    assert_eq!(r.records.get(KEY), Some(&1), "{:?}", r.records);
}

/// Post-mortem: "marked unread" was only in `unread_count`; a flag-only
/// change wrote no change sequence, so the user's other devices had to
/// poll for it. Now it is an event to the owner alone and in the owner's
/// catch-up, and nobody else learns it moved.
#[test]
fn regression_the_unread_flag_reaches_the_owners_other_devices_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    trio(&s, 3);
    s.mark_read(C, BOB, MessageId(3), Timestamp(10)).unwrap();
    s.flush().unwrap();
    let bob_cursor = s.snapshot(BOB).unwrap().cursor;
    let alice_cursor = s.snapshot(ALICE).unwrap().cursor;
    let sub = s.subscribe();
    s.set_unread_flag(C, BOB, Timestamp(11)).unwrap();
    assert_eq!(
        sub.drain().unwrap(),
        vec![Event::UnreadFlag {
            conversation: C,
            thread: None,
            reader: BOB,
            marked_unread: true
        }]
    );
    // Setting it again at an older time changes nothing: no event.
    s.set_unread_flag(C, BOB, Timestamp(5)).unwrap();
    assert!(sub.drain().unwrap().is_empty());
    s.flush().unwrap();
    let CatchUp::Changes(own) = s.changes_since(BOB, bob_cursor, 10).unwrap() else {
        panic!("fresh cursor")
    };
    assert_eq!(own.states.len(), 1, "{own:?}");
    assert_eq!(
        (
            own.states[0].reader,
            own.states[0].up_to,
            own.states[0].marked_unread
        ),
        (BOB, MessageId(3), true)
    );
    let CatchUp::Changes(others) = s.changes_since(ALICE, alice_cursor, 10).unwrap() else {
        panic!("fresh cursor")
    };
    assert!(others.states.is_empty(), "{others:?}");
    // Alice's snapshot shows Bob's mark, never his flag.
    let snap = s.snapshot(ALICE).unwrap();
    let bob = snap.states.iter().find(|x| x.reader == BOB).unwrap();
    assert!(!bob.marked_unread);
    assert!(
        s.snapshot(BOB)
            .unwrap()
            .states
            .iter()
            .any(|x| x.reader == BOB && x.marked_unread)
    );
    // Cleared from another device: an event, and the next catch-up says so.
    s.clear_unread_flag(C, BOB, Timestamp(12)).unwrap();
    assert!(matches!(
        sub.drain().unwrap()[..],
        [Event::UnreadFlag {
            marked_unread: false,
            ..
        }]
    ));
    s.flush().unwrap();
    let CatchUp::Changes(own) = s.changes_since(BOB, own.next, 10).unwrap() else {
        panic!("fresh cursor")
    };
    assert_eq!(own.states.len(), 1);
    assert!(!own.states[0].marked_unread);
    // A member who left hears nothing of a flag queued before they left.
    s.set_unread_flag(C, CAROL, Timestamp(13)).unwrap();
    s.remove_member(C, CAROL).unwrap();
    assert!(sub.drain().unwrap().is_empty());
}

/// A format-4 store opens as format 5 with its marks and flags intact,
/// except a mark an older version let past the newest message, which the
/// upgrade clamps (so the users issue 14 describes are repaired).
#[test]
fn a_format_4_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        trio(&s, 3);
        s.mark_read(C, BOB, MessageId(2), Timestamp(10)).unwrap();
        s.set_unread_flag(C, BOB, Timestamp(11)).unwrap();
        // What format 4 let through: a plain mark operand (§2.2) at
        // u64::MAX.
        let mut operand = vec![1u8, 1];
        operand.extend_from_slice(&u64::MAX.to_be_bytes());
        operand.extend_from_slice(&12u64.to_be_bytes());
        s.__merge_raw_mark_operand(C, CAROL, &operand).unwrap();
        s.close().unwrap();
    }
    const KEY: &str = "marks past the newest message (older versions)";
    assert_eq!(
        readmark::verify(dir.path()).unwrap().records.get(KEY),
        Some(&1)
    );
    {
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir.path(), cfs).unwrap();
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(meta, b"format_version", 4u32.to_be_bytes())
            .unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.mark(C, BOB).unwrap().unwrap().up_to, MessageId(2));
    assert!(s.unread_count(C, BOB).unwrap().marked_unread);
    let carol = s.mark(C, CAROL).unwrap().unwrap();
    assert_eq!((carol.up_to, carol.at), (MessageId(3), Timestamp(12)));
    s.close().unwrap();
    let r = readmark::verify(dir.path()).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.records.get(KEY), None);
    assert_eq!(r.format_version, Some(readmark::FORMAT_VERSION));
    assert_eq!(readmark::FORMAT_VERSION, 6);
}

/// Post-mortem (review of issue 14): a late joiner's first send published
/// a receipt "from nothing", and their first read told the authors of
/// messages from before they joined, though none of those was ever theirs
/// to read (`read_by` leaves them out).
#[test]
fn regression_a_late_joiner_tells_nobody_about_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path(),
        Config::new()
            .event_window(Duration::ZERO)
            .flush_interval(Duration::from_secs(3600)),
    )
    .unwrap();
    s.create_conversation(C).unwrap();
    for u in [ALICE, CAROL] {
        s.add_member(C, u, Timestamp(0)).unwrap();
    }
    // Authors only, as in a large conversation.
    s.set_event_policy(
        C,
        readmark::EventPolicy::new().recipients(readmark::Recipients::Authors),
    )
    .unwrap();
    for m in 1..=3 {
        s.record_message(C, MessageId(m), ALICE, Timestamp(m))
            .unwrap();
    }
    s.add_member(C, BOB, Timestamp(4)).unwrap();
    let sub = s.subscribe();
    s.record_message(C, MessageId(4), BOB, Timestamp(5))
        .unwrap();
    assert!(receipts(sub.drain().unwrap()).is_empty());
    s.record_message(C, MessageId(5), CAROL, Timestamp(6))
        .unwrap();
    // Carol's send covered Alice's 1..3 and Bob's 4: an event, to both.
    let got = receipts(sub.drain().unwrap());
    assert_eq!((got.len(), recipients(&got[0])), (1, vec![1, 2]));
    // Bob reads 5: only Carol wrote after he joined.
    s.mark_read(C, BOB, MessageId(5), Timestamp(7)).unwrap();
    let got = receipts(sub.drain().unwrap());
    assert_eq!(recipients(&got[0]), vec![3]);
}
