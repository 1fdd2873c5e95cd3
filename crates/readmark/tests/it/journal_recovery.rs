//! Lost and damaged journal bytes. A running store writes `PowerLoss`
//! updates (each acknowledged after an fsync), then `ProcessCrash` ones;
//! an image of its directory is taken after each phase, while it runs. A
//! power loss leaves every 512-byte sector of the slot file as it was at
//! the last fsync (the first image) or as a later write left it (the
//! second): disks write a sector whole, and no slot copy straddles two.
//! Every such mix must keep everything acknowledged at `PowerLoss`, and no
//! mark may take a value that was never written. Damage no crash explains
//! is refused by a strict open and skipped by a tolerant one.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use readmark::{
    Config, ConversationId, Durability, Error, MessageId, RecoveryMode, Store, Timestamp, UserId,
};

const C: ConversationId = ConversationId(1);
const USERS: u64 = 30;
const SECTOR: usize = 512;

fn config() -> Config {
    common::manual_config().flush_after_updates(u32::MAX)
}

struct Images {
    _dir: tempfile::TempDir,
    /// After the `PowerLoss` phase: the slot file as the disk holds it.
    synced: PathBuf,
    /// At the end: the page cache's slot file, and the RocksDB files.
    live: PathBuf,
    /// Every value written per user, and the highest acknowledged at
    /// `PowerLoss`.
    written: BTreeMap<u64, Vec<u64>>,
    acked: BTreeMap<u64, u64>,
}

fn slots(store_dir: &Path) -> PathBuf {
    store_dir.join("readmark-journal/slots")
}

fn crash_images(seed: u64, synced: u64, unsynced: u64) -> Images {
    let live = tempfile::tempdir().unwrap();
    let store = Store::open(live.path(), config()).unwrap();
    store.create_conversation(C).unwrap();
    for u in 0..USERS {
        store.add_member(C, UserId(u), Timestamp(0)).unwrap();
    }
    common::post(&store, C, [common::FAR]);
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let dir = tempfile::tempdir().unwrap();
    let (synced_path, live_path) = (dir.path().join("synced"), dir.path().join("live"));
    let mut written: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..synced + unsynced {
        if i == synced {
            common::copy_dir(live.path(), &synced_path);
        }
        let r = next();
        let (u, up_to) = (r % USERS, 1 + (r >> 8) % 1000);
        let level = if i < synced {
            Durability::PowerLoss
        } else {
            Durability::ProcessCrash
        };
        store
            .mark_read_with(C, UserId(u), MessageId(up_to), Timestamp(i), level)
            .unwrap();
        written.entry(u).or_default().push(up_to);
        if level == Durability::PowerLoss {
            let e = acked.entry(u).or_insert(0);
            *e = (*e).max(up_to);
        }
    }
    if unsynced == 0 {
        common::copy_dir(live.path(), &synced_path);
    }
    common::copy_dir(live.path(), &live_path);
    std::mem::forget(store); // the live store "loses power": no close
    Images {
        _dir: dir,
        synced: synced_path,
        live: live_path,
        written,
        acked,
    }
}

fn check(store: &Store, img: &Images) {
    for u in 0..USERS {
        let got = store.mark(C, UserId(u)).unwrap().map(|m| m.up_to.0);
        if let Some(&want) = img.acked.get(&u) {
            let got = got.unwrap_or(0);
            assert!(
                got >= want,
                "user {u}: acknowledged {want} lost, found {got}"
            );
        }
        if let Some(got) = got {
            let ok = img.written.get(&u).is_some_and(|w| w.contains(&got));
            assert!(ok, "user {u}: mark {got} was never written");
        }
    }
}

/// The live image with its slot file replaced by `bytes`.
fn trial(img: &Images, bytes: &[u8]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    common::copy_dir(&img.live, &t.path().join("s"));
    std::fs::write(slots(&t.path().join("s")), bytes).unwrap();
    t
}

#[test]
fn power_loss_keeps_each_sector_old_or_new_and_loses_nothing_synced() {
    let img = crash_images(7, 120, 200);
    let old = std::fs::read(slots(&img.synced)).unwrap();
    let new = std::fs::read(slots(&img.live)).unwrap();
    assert_eq!(old.len(), new.len());
    let differing = old
        .chunks(SECTOR)
        .zip(new.chunks(SECTOR))
        .filter(|(a, b)| a != b)
        .count();
    assert!(differing > 0, "the unsynced phase changed no sector");
    let mut x = 99u64;
    for t in 0..40 {
        let mut mixed = Vec::with_capacity(new.len());
        for (a, b) in old.chunks(SECTOR).zip(new.chunks(SECTOR)) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Trial 0: nothing written back; trial 1: everything.
            let take_new = match t {
                0 => false,
                1 => true,
                _ => (x >> 33) & 1 == 1,
            };
            mixed.extend_from_slice(if take_new { b } else { a });
        }
        let dir = trial(&img, &mixed);
        let store = Store::open(dir.path().join("s"), config())
            .unwrap_or_else(|e| panic!("trial {t}: {e}"));
        check(&store, &img);
        store.close().unwrap();
        // Reopened again, nothing changes (replay is not repeated).
        let store = Store::open(dir.path().join("s"), config()).unwrap();
        check(&store, &img);
    }
}

#[test]
fn a_copy_cut_short_falls_back_to_the_other_copy() {
    let img = crash_images(3, 0, 200);
    let bytes = std::fs::read(slots(&img.live)).unwrap();
    let scan = readmark::fuzzing::slot_scan(&bytes);
    assert!(scan.found.len() as u64 > USERS / 2, "{scan:?}");
    // Tear the newest copy of every slot (a crash in the middle of each
    // one's last write): each key replays its previous state.
    let mut newest: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    for &(off, _, user, _, seq) in &scan.found {
        let e = newest.entry(user).or_insert((seq, off));
        if seq > e.0 {
            *e = (seq, off);
        }
    }
    let mut torn = bytes.clone();
    for &(_, off) in newest.values() {
        torn[off + 40..off + 60].fill(0xEE);
    }
    let after = readmark::fuzzing::slot_scan(&torn);
    assert_eq!(after.torn, newest.len() as u64);
    let dir = trial(&img, &torn);
    let store = Store::open(dir.path().join("s"), config()).unwrap();
    check(&store, &img);
    for &(_, c, u, up_to, _) in &after.found {
        let got = store
            .mark(ConversationId(c), UserId(u))
            .unwrap()
            .map(|m| m.up_to.0);
        assert!(got >= up_to, "user {u}: the other copy was not replayed");
    }
}

#[test]
fn a_copy_that_checks_but_does_not_decode_is_refused_then_tolerated() {
    let img = crash_images(11, 60, 0);
    let mut bytes = std::fs::read(slots(&img.live)).unwrap();
    let epoch = readmark::fuzzing::slot_scan(&bytes).epoch.unwrap();
    // A free slot gets a copy whose checksum holds but whose state is not a
    // mark: no crash writes that.
    let off = readmark::fuzzing::slot_offset(200, 0);
    let bad = readmark::fuzzing::slot_copy(epoch, 1, C.0, 1, &[9, 9, 9]);
    bytes[off..off + bad.len()].copy_from_slice(&bad);
    let dir = trial(&img, &bytes);
    match Store::open(dir.path().join("s"), config()) {
        Err(Error::JournalCorrupt { path, offset }) => {
            assert!(path.ends_with("slots"));
            assert_eq!(offset, off as u64);
        }
        other => panic!("expected JournalCorrupt, got {other:?}"),
    }
    // Strict refusal changed nothing: it refuses again, the same way.
    assert!(matches!(
        Store::open(dir.path().join("s"), config()),
        Err(Error::JournalCorrupt { .. })
    ));
    let store = Store::open(
        dir.path().join("s"),
        config().recovery_mode(RecoveryMode::TolerateCorruption),
    )
    .unwrap();
    check(&store, &img);
}

#[test]
fn a_damaged_header_is_refused_then_tolerated() {
    let img = crash_images(5, 20, 0);
    let mut bytes = std::fs::read(slots(&img.live)).unwrap();
    bytes[9] ^= 0x10; // the epoch
    let dir = trial(&img, &bytes);
    assert!(matches!(
        Store::open(dir.path().join("s"), config()),
        Err(Error::JournalCorrupt { offset: 0, .. })
    ));
    // Tolerant: nothing can be checked without the epoch, so nothing is
    // replayed from the file; every mark is still one that was written.
    let store = Store::open(
        dir.path().join("s"),
        config().recovery_mode(RecoveryMode::TolerateCorruption),
    )
    .unwrap();
    for u in 0..USERS {
        if let Some(got) = store.mark(C, UserId(u)).unwrap() {
            assert!(img.written[&u].contains(&got.up_to.0));
        }
    }
}

#[test]
fn a_truncated_slot_file_is_recovered_and_made_anew() {
    let img = crash_images(13, 40, 0);
    let bytes = std::fs::read(slots(&img.live)).unwrap();
    let scan = readmark::fuzzing::slot_scan(&bytes);
    let end = scan.found.iter().map(|f| f.0).max().unwrap() + 80;
    assert!(end < bytes.len() / 2, "the cut leaves most of the file out");
    let dir = trial(&img, &bytes[..end]);
    let store = Store::open(dir.path().join("s"), config()).unwrap();
    check(&store, &img);
    assert_eq!(
        std::fs::metadata(slots(&dir.path().join("s")))
            .unwrap()
            .len(),
        bytes.len() as u64,
        "the new file has the configured size"
    );
}

/// A format-3 store: its journal was two segment files of frames. The
/// first open of this build replays them, upgrades the store to format 4
/// and removes them.
#[test]
fn a_format_3_journal_is_replayed_at_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), config()).unwrap();
        s.create_conversation(C).unwrap();
        for u in 0..3 {
            s.add_member(C, UserId(u), Timestamp(0)).unwrap();
        }
        common::post(&s, C, [8]);
        s.close().unwrap();
    }
    {
        let db = common::raw_open(dir.path());
        let meta = db.cf_handle("meta").unwrap();
        db.put_cf(meta, b"format_version", 3u32.to_be_bytes())
            .unwrap();
    }
    let jdir = dir.path().join("readmark-journal");
    std::fs::remove_file(jdir.join("slots")).unwrap();
    let seg = readmark::fuzzing::legacy_segment(
        4,
        64 << 10,
        &[
            (C.0, 1, 7, 70),
            (C.0, 2, 9, 90),
            (C.0, 1, 5, 50),
            (C.0, 99, 3, 1),
        ],
    );
    std::fs::write(jdir.join("segment-0"), seg).unwrap();
    std::fs::write(jdir.join("segment-1"), vec![0u8; 64 << 10]).unwrap();
    let s = Store::open(dir.path(), config()).unwrap();
    assert_eq!(s.mark(C, UserId(1)).unwrap().unwrap().up_to, MessageId(7));
    // A frame past the newest message (8) is clamped to it, as
    // `mark_read` would have done.
    assert_eq!(s.mark(C, UserId(2)).unwrap().unwrap().up_to, MessageId(8));
    // User 99 is not a member: the frame is skipped.
    assert_eq!(s.stats().replayed_frames, 3);
    assert!(!jdir.join("segment-0").exists() && !jdir.join("segment-1").exists());
    s.close().unwrap();
    let r = readmark::inspect(dir.path()).unwrap();
    assert_eq!(r.format_version, Some(readmark::FORMAT_VERSION));
}
