//! `inspect`, `verify` and `dump` on real stores: a clean store verifies
//! clean, and each deliberate corruption is reported in its place, while
//! nothing on disk changes.

use crate::common;

use common::raw_open;
use readmark::{Config, ConversationId, Durability, MessageId, Store, Timestamp, UserId};

const C: ConversationId = ConversationId(4);

fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), common::small_config()).unwrap();
    s.create_conversation(C).unwrap();
    for u in 1..=3 {
        s.add_member(C, UserId(u), Timestamp::now()).unwrap();
    }
    let t = Timestamp::now().get();
    for m in 1..=5 {
        s.record_message(C, MessageId(m), UserId(1), Timestamp(t + m))
            .unwrap();
    }
    s.delete_message(C, MessageId(2)).unwrap();
    s.mark_read(C, UserId(2), MessageId(4), Timestamp(t + 10))
        .unwrap();
    s.mark_viewed(C, UserId(3), MessageId(5), Timestamp(t + 11))
        .unwrap();
    s.close().unwrap();
    dir
}

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walk(dir) {
        out.push((e.display().to_string(), std::fs::read(&e).unwrap()));
    }
    out.sort();
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else if !p.ends_with("LOCK") {
            v.push(p);
        }
    }
    v
}

#[test]
fn clean_store_verifies_clean_and_is_not_changed() {
    let dir = populated();
    let before = files(dir.path());
    let r = readmark::verify(dir.path()).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.format_version, Some(readmark::FORMAT_VERSION));
    assert_eq!(r.records["messages"], 5);
    assert_eq!(r.records["deletions"], 1);
    // The view of 5 is the only bitset: the read of 1 to 4 is timed by
    // one run (read_times) and needs no bit per message.
    assert_eq!(r.records["receipts"], 1);
    assert_eq!(r.records["read_times"], 2);
    assert_eq!(r.journal.len(), 1);
    assert_eq!((r.journal[0].frames, r.journal[0].end), (0, "clean"));
    let text = readmark::dump(dir.path(), C, 10).unwrap();
    assert!(text.contains("3 members, 5 messages (1 deleted)"), "{text}");
    // Message 4: u2 read it in order (their mark), u3 read nothing.
    assert!(text.contains("[u2 | bits: -]"), "{text}");
    // Message 5: u3 opened it on its own (a bit in slot 2).
    assert!(text.contains("[- | bits: 2->u3]"), "{text}");
    assert_eq!(files(dir.path()), before, "inspection changed the store");
}

#[test]
fn verify_finds_a_corrupted_record() {
    let dir = populated();
    {
        let db = raw_open(dir.path());
        let members = db.cf_handle("members").unwrap();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&C.0.to_be_bytes());
        key[8..].copy_from_slice(&2u64.to_be_bytes());
        db.put_cf(members, key, b"\x01garbage").unwrap();
    }
    let r = readmark::verify(dir.path()).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.place == "members" && p.what.contains("does not decode")),
        "{:?}",
        r.problems
    );
    // The count no longer matches the records that decode.
    assert!(r.problems.iter().any(|p| p.what.contains("member_count")));
}

#[test]
fn verify_finds_a_broken_index_and_counts() {
    let dir = populated();
    {
        let db = raw_open(dir.path());
        let index = db.cf_handle("user_conversations").unwrap();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&3u64.to_be_bytes());
        key[8..].copy_from_slice(&C.0.to_be_bytes());
        db.delete_cf(index, key).unwrap();
        let deletions = db.cf_handle("deletions").unwrap();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&C.0.to_be_bytes());
        key[8..].copy_from_slice(&3u64.to_be_bytes());
        db.put_cf(deletions, key, []).unwrap();
    }
    let r = readmark::verify(dir.path()).unwrap();
    let what: Vec<&str> = r.problems.iter().map(|p| p.what.as_str()).collect();
    assert!(
        what.contains(&"membership without its user index entry"),
        "{what:?}"
    );
    assert!(
        what.contains(&"deleted flag and deletions index disagree"),
        "{what:?}"
    );
}

#[test]
fn verify_reports_the_journal_and_finds_damage_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Config::new().durability(Durability::PowerLoss)).unwrap();
    s.create_conversation(C).unwrap();
    for u in 1..=2 {
        s.add_member(C, UserId(u), Timestamp(0)).unwrap();
    }
    common::post(&s, C, [common::FAR]);
    for m in 1..=3 {
        for u in 1..=2 {
            s.mark_read(C, UserId(u), MessageId(m), Timestamp(m))
                .unwrap();
        }
    }
    // A crash image: the two keys are still in their journal slots.
    let image = tempfile::tempdir().unwrap();
    common::copy_dir(dir.path(), image.path());
    s.__simulate_crash();
    let slots = image.path().join("readmark-journal/slots");
    let bytes = std::fs::read(&slots).unwrap();
    let r = readmark::verify(image.path()).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.journal[0].frames, r.journal[0].end), (2, "clean"));
    // A copy cut short (a crash mid-write) is not damage: the slot's other
    // copy stands in.
    let scan = readmark::fuzzing::slot_scan(&bytes);
    let (newest, ..) = *scan.found.iter().max_by_key(|f| f.4).unwrap();
    let mut torn = bytes.clone();
    torn[newest + 50] ^= 0xFF;
    std::fs::write(&slots, &torn).unwrap();
    let r = readmark::verify(image.path()).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.journal[0].frames, r.journal[0].end), (2, "torn"));
    // A damaged header is: a strict open refuses the store.
    let mut bad = bytes;
    bad[9] ^= 0x01;
    std::fs::write(&slots, bad).unwrap();
    let r = readmark::verify(image.path()).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.place == "journal" && p.at.ends_with(":0")),
        "{:?}",
        r.problems
    );
}

#[test]
fn a_directory_without_a_store_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        readmark::inspect(dir.path()),
        Err(readmark::Error::InvalidArgument(_))
    ));
}
