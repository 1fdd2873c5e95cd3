//! Lost and damaged journal bytes: a crash image of a live store (taken
//! while it runs, as power loss would leave it) has its journal tail
//! truncated or overwritten at random offsets. Everything acknowledged at
//! `PowerLoss` must survive, and nothing that was never written may appear.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use readmark::{
    Config, ConversationId, Durability, Error, MessageId, RecoveryMode, Store, Timestamp, UserId,
};

const C: ConversationId = ConversationId(1);
const USERS: u64 = 5;

fn config() -> Config {
    common::small_config()
        .flush_interval(Duration::from_secs(3600))
        .flush_after_updates(u32::MAX)
}

struct Image {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    /// Every value written per user, and the highest acknowledged at
    /// PowerLoss.
    written: BTreeMap<u64, Vec<u64>>,
    synced: BTreeMap<u64, u64>,
    /// Offset in segment-0 where the synced frames end.
    synced_end: usize,
    frames: Vec<(usize, usize)>,
}

/// A running store: `synced` PowerLoss updates, then `unsynced`
/// ProcessCrash updates; its directory copied while it is still open.
fn crash_image(seed: u64, synced: u64, unsynced: u64) -> Image {
    let live = tempfile::tempdir().unwrap();
    let store = Store::open(live.path(), config()).unwrap();
    store.create_conversation(C).unwrap();
    for u in 0..USERS {
        store.add_member(C, UserId(u), Timestamp(0)).unwrap();
    }
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut written: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    for i in 0..synced + unsynced {
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
    let image = tempfile::tempdir().unwrap();
    let path = image.path().join("store");
    common::copy_dir(live.path(), &path);
    std::mem::forget(store); // the live store "loses power": no close
    let seg = std::fs::read(path.join("readmark-journal/segment-0")).unwrap();
    let (frames, end, _) = readmark::fuzzing::journal_scan(&seg);
    assert_eq!(end, "clean");
    assert_eq!(
        frames.len() as u64,
        synced + unsynced,
        "all frames in segment 0"
    );
    let synced_end = frames
        .get(synced as usize)
        .map_or(frames.last().map_or(32, |f| f.0 + f.1), |f| f.0);
    Image {
        _dir: image,
        path,
        written,
        synced: acked,
        synced_end,
        frames,
    }
}

fn check(store: &Store, img: &Image) {
    for u in 0..USERS {
        let got = store.mark(C, UserId(u)).unwrap().map(|m| m.up_to.0);
        if let Some(&want) = img.synced.get(&u) {
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

fn trial_dir(img: &Image) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    common::copy_dir(&img.path, &t.path().join("s"));
    t
}

#[test]
fn torn_unsynced_tail_at_random_offsets() {
    let img = crash_image(7, 40, 60);
    let seg_len = std::fs::metadata(img.path.join("readmark-journal/segment-0"))
        .unwrap()
        .len() as usize;
    let tail_end = img.frames.last().map_or(32, |f| f.0 + f.1);
    let mut x = 99u64;
    for trial in 0..40 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let span = (tail_end + 64 - img.synced_end) as u64;
        let off = img.synced_end + ((x >> 33) % span) as usize;
        let t = trial_dir(&img);
        let seg = t.path().join("s/readmark-journal/segment-0");
        match trial % 3 {
            // Lost bytes: the file ends at `off`.
            0 => std::fs::OpenOptions::new()
                .write(true)
                .open(&seg)
                .unwrap()
                .set_len(off as u64)
                .unwrap(),
            // Lost pages: zeros from `off` on.
            1 => {
                let mut b = std::fs::read(&seg).unwrap();
                b[off..].fill(0);
                std::fs::write(&seg, b).unwrap();
            }
            // Garbage: random bytes over a stretch starting at `off`.
            _ => {
                let mut b = std::fs::read(&seg).unwrap();
                let end = (off + 1 + (x as usize % 200)).min(seg_len);
                for (i, byte) in b[off..end].iter_mut().enumerate() {
                    *byte = (x >> (i % 56)) as u8 ^ 0xA5;
                }
                std::fs::write(&seg, b).unwrap();
            }
        }
        let store = Store::open(t.path().join("s"), config())
            .unwrap_or_else(|e| panic!("trial {trial} (offset {off}): {e}"));
        check(&store, &img);
        store.close().unwrap();
        // Reopened again, nothing changes (replay is not repeated).
        let store = Store::open(t.path().join("s"), config()).unwrap();
        check(&store, &img);
    }
}

#[test]
fn damage_in_synced_frames_is_refused_then_tolerated() {
    let img = crash_image(11, 30, 0);
    // Damage frame 10 of 30: frames after it prove it had been synced.
    let (off, _) = img.frames[10];
    let t = trial_dir(&img);
    let seg = t.path().join("s/readmark-journal/segment-0");
    let mut b = std::fs::read(&seg).unwrap();
    b[off + 30] ^= 0x40;
    std::fs::write(&seg, b).unwrap();
    match Store::open(t.path().join("s"), config()) {
        Err(Error::JournalCorrupt { path, offset }) => {
            assert!(path.ends_with("segment-0"));
            assert_eq!(offset, off as u64);
        }
        other => panic!("expected JournalCorrupt, got {other:?}"),
    }
    // Strict refusal changed nothing: it refuses again, the same way.
    assert!(matches!(
        Store::open(t.path().join("s"), config()),
        Err(Error::JournalCorrupt { .. })
    ));
    // Tolerant: every other frame is replayed.
    let store = Store::open(
        t.path().join("s"),
        config().recovery_mode(RecoveryMode::TolerateCorruption),
    )
    .unwrap();
    for u in 0..USERS {
        if let Some(got) = store.mark(C, UserId(u)).unwrap().map(|m| m.up_to.0) {
            assert!(img.written[&u].contains(&got));
        }
    }
    let recovered: u64 = (0..USERS)
        .filter(|u| store.mark(C, UserId(*u)).unwrap().is_some())
        .count() as u64;
    assert!(recovered >= img.synced.len() as u64 - 1);
}

#[test]
fn truncated_segment_file_is_recovered_and_resized() {
    let img = crash_image(3, 10, 10);
    let t = trial_dir(&img);
    let seg = t.path().join("s/readmark-journal/segment-0");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(img.synced_end as u64)
        .unwrap();
    let store = Store::open(t.path().join("s"), config()).unwrap();
    check(&store, &img);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), 8 << 20);
}
