//! Threads (Matrix MSC3771, Slack, Mattermost and Discord threads): a
//! timeline per root message, with its own marks, unread counts, mentions
//! and receipts, and the conversation's members, privacy and policies.

use std::time::Duration;

use readmark::{
    CatchUp, Config, ConversationId, Error, Event, MessageId, MessageOptions, Page, PrivacyScope,
    Store, Timeline, Timestamp, UserId,
};

use crate::common;

const C: ConversationId = ConversationId(1);
const ALICE: UserId = UserId(1);
const BOB: UserId = UserId(2);
const CAROL: UserId = UserId(3);
const ROOT: MessageId = MessageId(10);

fn thread() -> Timeline {
    Timeline::thread(C, ROOT)
}

/// A conversation of alice, bob and carol: main messages 10 and 20 (by
/// alice), and a thread on 10 with replies 11.. (by alice, ids 30, 40).
fn setup(s: &Store) {
    s.create_conversation(C).unwrap();
    for u in [ALICE, BOB, CAROL] {
        s.add_member(C, u, Timestamp(0)).unwrap();
    }
    s.record_message(C, ROOT, ALICE, Timestamp(1)).unwrap();
    s.record_message(C, MessageId(20), ALICE, Timestamp(2))
        .unwrap();
    s.record_message(thread(), MessageId(30), ALICE, Timestamp(3))
        .unwrap();
    s.record_message(thread(), MessageId(40), ALICE, Timestamp(4))
        .unwrap();
}

fn open(path: &std::path::Path, config: Config) -> Store {
    Store::open(path, config).unwrap()
}

/// MSC3771's rules: a read in a thread never moves the main mark, a main
/// read never covers a thread's messages, and the root counts in the main
/// timeline only.
#[test]
fn thread_and_main_marks_are_independent() {
    let (_d, s) = common::temp_store();
    setup(&s);
    assert_eq!(s.unread_count(C, BOB).unwrap().count, 2);
    assert_eq!(s.unread_count(thread(), BOB).unwrap().count, 2);
    assert_eq!(s.unread_total(C, BOB).unwrap().count, 4);
    // A main read past every thread reply covers none of them.
    s.mark_read(C, BOB, MessageId(40), Timestamp(5)).unwrap();
    assert_eq!(s.mark(C, BOB).unwrap().unwrap().up_to, MessageId(20));
    assert_eq!(s.unread_count(thread(), BOB).unwrap().count, 2);
    assert_eq!(s.mark(thread(), BOB).unwrap(), None);
    // A thread read leaves the main mark where it was.
    s.mark_read(thread(), CAROL, MessageId(30), Timestamp(6))
        .unwrap();
    assert_eq!(s.mark(C, CAROL).unwrap(), None);
    assert_eq!(s.unread_count(C, CAROL).unwrap().count, 2);
    assert_eq!(s.unread_count(thread(), CAROL).unwrap().count, 1);
    // Past the thread's newest reply: clamped to it, not to the main one.
    s.mark_read(thread(), CAROL, MessageId(u64::MAX), Timestamp(7))
        .unwrap();
    assert_eq!(
        s.mark(thread(), CAROL).unwrap().unwrap().up_to,
        MessageId(40)
    );
    // Sending a reply reads the thread up to it, not the main timeline.
    assert_eq!(
        s.mark(thread(), ALICE).unwrap().unwrap().up_to,
        MessageId(40)
    );
    assert_eq!(s.mark(C, ALICE).unwrap().unwrap().up_to, MessageId(20));
}

#[test]
fn unread_threads_lists_threads_with_unread_messages_or_the_flag() {
    let (_d, s) = common::temp_store();
    setup(&s);
    let other = Timeline::thread(C, MessageId(20));
    s.record_message(other, MessageId(50), BOB, Timestamp(5))
        .unwrap();
    assert_eq!(s.threads(C).unwrap(), vec![ROOT, MessageId(20)]);
    let roots = |u| -> Vec<MessageId> {
        s.unread_threads(C, u)
            .unwrap()
            .into_iter()
            .map(|t| t.root)
            .collect()
    };
    assert_eq!(roots(CAROL), vec![ROOT, MessageId(20)]);
    assert_eq!(roots(BOB), vec![ROOT]); // their own reply is read
    s.mark_read(thread(), CAROL, MessageId(40), Timestamp(6))
        .unwrap();
    assert_eq!(roots(CAROL), vec![MessageId(20)]);
    // The flag marks one thread unread, and only that one.
    s.set_unread_flag(thread(), CAROL, Timestamp(7)).unwrap();
    let listed = s.unread_threads(C, CAROL).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[0].unread.marked_unread && listed[0].unread.count == 0);
    assert!(!s.unread_count(C, CAROL).unwrap().marked_unread);
    assert!(s.unread_total(C, CAROL).unwrap().marked_unread);
}

/// A thread begins with its first reply, rooted at a main-timeline message:
/// a reply to a reply, to no message, or a read of a thread that has not
/// begun is a typed error naming the conversation; nothing is recorded.
#[test]
fn thread_errors_are_typed_and_change_nothing() {
    let (dir, s) = common::temp_store();
    setup(&s);
    let nested = Timeline::thread(C, MessageId(30));
    assert!(matches!(
        s.record_message(nested, MessageId(50), ALICE, Timestamp(5)),
        Err(Error::UnknownThread {
            conversation: C,
            root: MessageId(30)
        })
    ));
    let nowhere = Timeline::thread(C, MessageId(15));
    assert!(matches!(
        s.record_message(nowhere, MessageId(50), ALICE, Timestamp(5)),
        Err(Error::UnknownThread { .. })
    ));
    let not_begun = Timeline::thread(C, MessageId(20));
    assert!(matches!(
        s.mark_read(not_begun, BOB, MessageId(20), Timestamp(5)),
        Err(Error::UnknownThread { .. })
    ));
    assert!(matches!(
        s.unread_count(not_begun, BOB),
        Err(Error::UnknownThread { .. })
    ));
    assert!(matches!(
        s.unread_count(Timeline::thread(ConversationId(9), ROOT), BOB),
        Err(Error::UnknownConversation(ConversationId(9)))
    ));
    // Ids increase across timelines: no main message older than a reply.
    assert!(matches!(
        s.record_message(C, MessageId(35), ALICE, Timestamp(5)),
        Err(Error::MessageOutOfOrder {
            conversation: C,
            last: MessageId(40),
            ..
        })
    ));
    // A thread message is not a main-timeline message, nor the reverse.
    assert!(matches!(
        s.delete_message(C, MessageId(30)),
        Err(Error::UnknownMessage {
            conversation: C,
            ..
        })
    ));
    assert!(matches!(
        s.read_by(thread(), ALICE, MessageId(20), Page::first(5)),
        Err(Error::UnknownMessage {
            conversation: C,
            ..
        })
    ));
    // A non-member learns nothing about threads, and names the
    // conversation, never a thread's internal id.
    let dave = UserId(4);
    assert!(matches!(
        s.unread_count(thread(), dave),
        Err(Error::NotMember { conversation: C, user }) if user == dave
    ));
    assert!(matches!(
        s.record_message(thread(), MessageId(50), dave, Timestamp(5)),
        Err(Error::NotMember {
            conversation: C,
            ..
        })
    ));
    assert!(matches!(
        s.unread_threads(C, dave),
        Err(Error::NotMember { .. })
    ));
    assert_eq!(s.threads(C).unwrap(), vec![ROOT]);
    assert_eq!(s.unread_count(thread(), BOB).unwrap().count, 2);
    s.close().unwrap();
    let report = readmark::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A late joiner's history includes replies sent before the join; leaving
/// drops the member's thread marks with the main one.
#[test]
fn late_joiners_and_leavers_in_threads() {
    let (_d, s) = common::temp_store();
    setup(&s);
    s.mark_read(thread(), BOB, MessageId(40), Timestamp(5))
        .unwrap();
    let dave = UserId(4);
    s.add_member(C, dave, Timestamp(6)).unwrap();
    assert_eq!(s.unread_count(thread(), dave).unwrap().count, 0);
    assert!(s.unread_threads(C, dave).unwrap().is_empty());
    s.record_message(thread(), MessageId(50), ALICE, Timestamp(7))
        .unwrap();
    assert_eq!(s.unread_count(thread(), dave).unwrap().count, 1);
    // The reply before the join is not dave's to have read.
    let rb = s
        .read_by(thread(), ALICE, MessageId(40), Page::first(10))
        .unwrap();
    assert_eq!(rb.count, 1);
    assert_eq!(rb.readers[0].user, BOB);
    s.remove_member(C, BOB).unwrap();
    s.add_member(C, BOB, Timestamp(8)).unwrap();
    assert_eq!(s.mark(thread(), BOB).unwrap(), None);
    assert_eq!(s.unread_count(thread(), BOB).unwrap().count, 0);
    let rb = s
        .read_by(thread(), ALICE, MessageId(40), Page::first(10))
        .unwrap();
    assert_eq!(rb.count, 0, "a leaver's thread reads go with them");
}

/// Receipts in a thread answer per message, in small groups (bitsets and
/// runs) and large ones (marks), and private readers stay hidden.
#[test]
fn read_by_in_threads_small_and_large_and_private() {
    for threshold in [Some(64), Some(0)] {
        let (_d, s) = common::temp_store();
        s.create_conversation(C).unwrap();
        s.set_receipt_threshold(C, threshold).unwrap();
        for u in [ALICE, BOB, CAROL] {
            s.add_member(C, u, Timestamp(0)).unwrap();
        }
        s.record_message(C, ROOT, ALICE, Timestamp(1)).unwrap();
        s.record_message(thread(), MessageId(30), ALICE, Timestamp(3))
            .unwrap();
        s.record_message(thread(), MessageId(40), ALICE, Timestamp(4))
            .unwrap();
        s.mark_read(thread(), BOB, MessageId(30), Timestamp(5))
            .unwrap();
        s.mark_read(thread(), CAROL, MessageId(40), Timestamp(6))
            .unwrap();
        s.flush().unwrap();
        let readers = |m: u64, viewer: UserId| -> Vec<UserId> {
            s.read_by(thread(), viewer, MessageId(m), Page::first(10))
                .unwrap()
                .readers
                .iter()
                .map(|r| r.user)
                .collect()
        };
        assert_eq!(readers(30, ALICE), vec![BOB, CAROL], "{threshold:?}");
        assert_eq!(readers(40, ALICE), vec![CAROL], "{threshold:?}");
        let rc = s.read_count(thread(), ALICE, MessageId(40)).unwrap();
        assert_eq!(rc.count, 1);
        // Nobody read the root in the main timeline.
        assert_eq!(s.read_by(C, ALICE, ROOT, Page::first(10)).unwrap().count, 0);
        // Private in the conversation: private in its threads.
        s.set_receipts_private(CAROL, PrivacyScope::Conversation(C), true)
            .unwrap();
        assert_eq!(readers(40, ALICE), Vec::<UserId>::new());
        assert_eq!(readers(40, CAROL), vec![CAROL], "one's own reads show");
    }
}

/// Events and catch-up name the thread (its root) and the conversation,
/// and reach the conversation's members like any receipt.
#[test]
fn events_and_catch_up_carry_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Config::new().event_window(Duration::ZERO));
    setup(&s);
    s.flush().unwrap();
    let cursor = s.snapshot(ALICE).unwrap().cursor;
    let sub = s.subscribe();
    s.mark_read(thread(), BOB, MessageId(40), Timestamp(5))
        .unwrap();
    let e = loop {
        match sub.recv_timeout(Duration::from_secs(10)).unwrap() {
            Some(Event::Receipt(e)) if e.reader == BOB => break e,
            Some(_) => continue,
            None => panic!("no receipt event"),
        }
    };
    assert_eq!(
        (e.conversation, e.thread, e.up_to, e.read_at),
        (C, Some(ROOT), MessageId(40), Timestamp(5))
    );
    assert_eq!(e.recipients, vec![ALICE, CAROL]);
    // The flag of a thread goes to the reader's devices, naming it.
    s.set_unread_flag(thread(), BOB, Timestamp(6)).unwrap();
    let flag = loop {
        match sub.recv_timeout(Duration::from_secs(10)).unwrap() {
            Some(f @ Event::UnreadFlag { .. }) => break f,
            Some(_) => continue,
            None => panic!("no flag event"),
        }
    };
    assert_eq!(
        flag,
        Event::UnreadFlag {
            conversation: C,
            thread: Some(ROOT),
            reader: BOB,
            marked_unread: true
        }
    );
    s.flush().unwrap();
    let (states, _) = common::catch_up(&s, ALICE, cursor, 100);
    let bobs: Vec<_> = states.iter().filter(|r| r.reader == BOB).collect();
    assert_eq!(bobs.len(), 1, "{states:?}");
    assert_eq!(
        (bobs[0].conversation, bobs[0].thread, bobs[0].up_to),
        (C, Some(ROOT), MessageId(40))
    );
    // A snapshot holds every timeline's marks; bob sees his own flag.
    let snap = s.snapshot(BOB).unwrap();
    assert!(
        snap.states
            .iter()
            .any(|r| r.reader == BOB && r.thread == Some(ROOT) && r.marked_unread)
    );
    assert!(
        snap.states
            .iter()
            .any(|r| r.reader == ALICE && r.thread.is_none() && r.up_to == MessageId(20))
    );
    // A leaver is forgotten (once, by conversation) in a later catch-up.
    let cursor = s.snapshot(ALICE).unwrap().cursor;
    s.remove_member(C, BOB).unwrap();
    match s.changes_since(ALICE, cursor, 100).unwrap() {
        CatchUp::Changes(page) => assert_eq!(page.hidden, vec![(C, BOB)]),
        CatchUp::SnapshotRequired => panic!("fresh cursor"),
    }
}

/// Mentions count in the timeline the message is in.
#[test]
fn mentions_count_in_their_thread() {
    let (_d, s) = common::temp_store();
    setup(&s);
    let to_bob = MessageOptions::new().mention([BOB]);
    s.record_message_with(thread(), MessageId(50), ALICE, Timestamp(5), &to_bob)
        .unwrap();
    assert_eq!(s.unread_count(C, BOB).unwrap().mentions, 0);
    assert_eq!(s.unread_count(thread(), BOB).unwrap().mentions, 1);
    assert_eq!(s.unread_total(C, BOB).unwrap().mentions, 1);
    s.mark_read(thread(), BOB, MessageId(50), Timestamp(6))
        .unwrap();
    assert_eq!(s.unread_total(C, BOB).unwrap().mentions, 0);
}

/// Thread marks are durable like main ones: buffered, journaled, replayed
/// after a reopen.
#[test]
fn thread_marks_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), common::small_config());
        setup(&s);
        s.mark_read(thread(), BOB, MessageId(30), Timestamp(5))
            .unwrap();
        s.close().unwrap();
    }
    let s = open(dir.path(), common::small_config());
    assert_eq!(s.mark(thread(), BOB).unwrap().unwrap().up_to, MessageId(30));
    assert_eq!(s.unread_count(thread(), BOB).unwrap().count, 1);
    // New threads after a reopen get new ids.
    s.record_message(
        Timeline::thread(C, MessageId(20)),
        MessageId(50),
        BOB,
        Timestamp(6),
    )
    .unwrap();
    assert_eq!(s.threads(C).unwrap(), vec![ROOT, MessageId(20)]);
    assert_eq!(s.unread_count(thread(), CAROL).unwrap().count, 2);
    s.close().unwrap();
    let report = readmark::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// Rewrites a store of this build into what format 5 left: 43-byte
/// conversation records (no thread fields), no `threads` column family,
/// version 5.
fn make_format_5(path: &std::path::Path) {
    let mut db = common::raw_open(path);
    db.drop_cf("threads").unwrap();
    let cf = db.cf_handle("conversations").unwrap();
    let records: Vec<(Vec<u8>, Vec<u8>)> = db
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|r| {
            let (k, v) = r.unwrap();
            let mut v = v[..43].to_vec();
            v[1] &= 0x0F; // no thread or newest-of-any-timeline flags
            (k.to_vec(), v)
        })
        .collect();
    for (k, v) in records {
        db.put_cf(cf, k, v).unwrap();
    }
    let meta = db.cf_handle("meta").unwrap();
    db.put_cf(meta, b"format_version", 5u32.to_be_bytes())
        .unwrap();
}

#[test]
fn a_format_5_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), common::small_config());
        s.create_conversation(C).unwrap();
        for u in [ALICE, BOB] {
            s.add_member(C, u, Timestamp(0)).unwrap();
        }
        s.record_message(C, ROOT, ALICE, Timestamp(1)).unwrap();
        s.record_message(C, MessageId(20), ALICE, Timestamp(2))
            .unwrap();
        s.mark_read(C, BOB, ROOT, Timestamp(3)).unwrap();
        s.close().unwrap();
    }
    make_format_5(dir.path());
    let s = open(dir.path(), common::small_config());
    assert_eq!(s.unread_count(C, BOB).unwrap().count, 1);
    // Ordering holds across the upgrade, and threads begin.
    assert!(matches!(
        s.record_message(thread(), MessageId(20), ALICE, Timestamp(4)),
        Err(Error::MessageOutOfOrder { .. })
    ));
    s.record_message(thread(), MessageId(30), ALICE, Timestamp(4))
        .unwrap();
    assert_eq!(s.unread_count(thread(), BOB).unwrap().count, 1);
    s.close().unwrap();
    let report = readmark::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.format_version, Some(readmark::FORMAT_VERSION));
}

/// A store that used a conversation id from 2^63 up cannot be upgraded
/// (format 6 reserves them): a typed error, and the store is untouched.
#[test]
fn a_format_5_store_with_a_reserved_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), common::small_config());
        s.create_conversation(C).unwrap();
        s.close().unwrap();
    }
    make_format_5(dir.path());
    {
        let db = common::raw_open(dir.path());
        let cf = db.cf_handle("conversations").unwrap();
        let v = db.get_cf(cf, 1u64.to_be_bytes()).unwrap().unwrap();
        db.put_cf(cf, u64::MAX.to_be_bytes(), v).unwrap();
    }
    assert!(matches!(
        Store::open(dir.path(), common::small_config()),
        Err(Error::InvalidArgument(_))
    ));
    let db = common::raw_open(dir.path());
    let meta = db.cf_handle("meta").unwrap();
    assert_eq!(
        db.get_cf(meta, b"format_version").unwrap().unwrap(),
        5u32.to_be_bytes()
    );
}

/// Matrix's unthreaded receipt: everything up to a position, in every
/// timeline; threads whose replies are all newer are left alone.
#[test]
fn a_thread_unaware_read_covers_every_timeline_up_to_its_position() {
    let (_d, s) = common::temp_store();
    setup(&s); // main 10, 20; thread on 10: replies 30, 40
    let late = Timeline::thread(C, MessageId(20));
    s.record_message(late, MessageId(50), ALICE, Timestamp(5))
        .unwrap();
    s.record_message(C, MessageId(60), ALICE, Timestamp(6))
        .unwrap();
    s.mark_read_all(C, BOB, MessageId(35), Timestamp(7))
        .unwrap();
    // Main: 10 and 20 read, 60 not; the thread on 10: 30 read, 40 not; the
    // thread on 20: its only reply (50) is newer, so no mark at all.
    assert_eq!(s.unread_count(C, BOB).unwrap().count, 1);
    assert_eq!(s.unread_count(thread(), BOB).unwrap().count, 1);
    // (A mark is a position, as a main one is.)
    assert_eq!(s.mark(thread(), BOB).unwrap().unwrap().up_to, MessageId(35));
    assert_eq!(s.mark(late, BOB).unwrap(), None);
    // Past everything: every timeline read, each clamped to its newest.
    s.mark_read_all(C, BOB, MessageId(u64::MAX), Timestamp(8))
        .unwrap();
    assert_eq!(s.unread_total(C, BOB).unwrap().count, 0);
    assert_eq!(s.mark(late, BOB).unwrap().unwrap().up_to, MessageId(50));
    assert!(matches!(
        s.mark_read_all(C, UserId(9), MessageId(1), Timestamp(9)),
        Err(Error::NotMember { .. })
    ));
}

/// Post-mortem (review of the threads change): a reader who left, joined
/// again and read the main timeline but not a thread was listed as a state
/// and then hidden in the same catch-up, because the thread's entry hid
/// them in the whole conversation. A thread-only forget now names the
/// thread (`Changes::hidden_threads`).
#[test]
fn regression_a_thread_without_a_mark_hides_the_reader_in_that_thread_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), common::small_config());
    setup(&s);
    s.mark_read(thread(), BOB, MessageId(40), Timestamp(5))
        .unwrap();
    s.flush().unwrap();
    let cursor = s.snapshot(ALICE).unwrap().cursor;
    s.remove_member(C, BOB).unwrap();
    s.add_member(C, BOB, Timestamp(6)).unwrap();
    s.record_message(C, MessageId(50), ALICE, Timestamp(7))
        .unwrap();
    s.mark_read(C, BOB, MessageId(50), Timestamp(8)).unwrap();
    s.flush().unwrap();
    let CatchUp::Changes(page) = s.changes_since(ALICE, cursor, 100).unwrap() else {
        panic!("fresh cursor");
    };
    assert!(
        page.states
            .iter()
            .any(|r| r.reader == BOB && r.thread.is_none() && r.up_to == MessageId(50)),
        "{page:?}"
    );
    assert!(!page.hidden.contains(&(C, BOB)), "{page:?}");
    assert_eq!(page.hidden_threads, vec![(C, ROOT, BOB)]);
}
