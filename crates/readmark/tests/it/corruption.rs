//! Damage at random offsets of every file a store has (RocksDB's SSTs,
//! MANIFEST, WAL, OPTIONS and the journal segments): bit flips and
//! truncations. Opening either works or fails with a typed error; reads
//! either return the right mark or a typed error. Never a panic, never a
//! wrong mark.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use readmark::{Config, ConversationId, Durability, Error, MessageId, Store, Timestamp, UserId};

const C: ConversationId = ConversationId(1);
const USERS: u64 = 20;

fn config() -> Config {
    common::manual_config()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if !p.ends_with("LOCK")
            && !p.file_name().unwrap().to_string_lossy().starts_with("LOG")
        {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A store whose marks are partly in SST files (flushed and closed), partly
/// in the WAL and partly in the journal (a second session killed in place).
fn build() -> (tempfile::TempDir, BTreeMap<u64, u64>) {
    let dir = tempfile::tempdir().unwrap();
    let mut want = BTreeMap::new();
    {
        let s = Store::open(dir.path(), config()).unwrap();
        s.create_conversation(C).unwrap();
        common::post(&s, C, [common::FAR]);
        for u in 0..USERS {
            s.add_member(C, UserId(u), Timestamp(0)).unwrap();
            s.mark_read(C, UserId(u), MessageId(100 + u), Timestamp(u))
                .unwrap();
            want.insert(u, 100 + u);
        }
        s.close().unwrap();
    }
    let s = Store::open(dir.path(), config()).unwrap();
    for u in 0..USERS / 2 {
        s.mark_read_with(
            C,
            UserId(u),
            MessageId(200 + u),
            Timestamp(50),
            Durability::PowerLoss,
        )
        .unwrap();
        want.insert(u, 200 + u);
    }
    s.__simulate_crash();
    (dir, want)
}

#[test]
fn random_damage_never_panics_and_never_returns_a_wrong_mark() {
    let (dir, want) = build();
    let all = files(dir.path());
    assert!(
        all.iter()
            .any(|p| p.extension().is_some_and(|e| e == "sst")),
        "no SST file: {all:?}"
    );
    let mut x = 0xC0FF_EE00_u64 | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut opened, mut refused, mut read_errors) = (0, 0, 0);
    for trial in 0..150 {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("s");
        common::copy_dir(dir.path(), &root);
        let victim = files(&root)[(next() as usize) % all.len()].clone();
        let mut bytes = std::fs::read(&victim).unwrap();
        if bytes.is_empty() {
            continue;
        }
        let off = (next() as usize) % bytes.len();
        let how = if trial % 3 == 0 {
            bytes.truncate(off);
            "truncated"
        } else {
            bytes[off] ^= 1 << (next() % 8);
            "bit flip"
        };
        std::fs::write(&victim, &bytes).unwrap();
        let what = format!(
            "trial {trial}: {how} at {off} of {}",
            victim.file_name().unwrap().to_string_lossy()
        );
        let store = match Store::open(&root, config()) {
            Ok(s) => s,
            Err(e) => {
                // Typed, and it says where.
                match &e {
                    Error::JournalCorrupt { path, .. } => {
                        assert!(path.starts_with(&root), "{what}: {e}")
                    }
                    Error::Storage(_)
                    | Error::Corrupt { .. }
                    | Error::Io(_)
                    | Error::UnsupportedFormat { .. } => {}
                    other => panic!("{what}: unexpected error kind {other:?}"),
                }
                refused += 1;
                continue;
            }
        };
        opened += 1;
        // Damage to the journal's last synced frames cannot be told from a
        // torn write (no later frame proves they were synced; see
        // docs/design.md): the update they held is lost and the mark is the
        // one before it, a value that was really written. Anywhere else the
        // answer must be exact.
        let in_journal = victim.to_string_lossy().contains("readmark-journal");
        for (&u, &w) in &want {
            match store.mark(C, UserId(u)) {
                Ok(Some(m)) => {
                    let ok = m.up_to.0 == w || (in_journal && m.up_to.0 == 100 + u);
                    assert!(ok, "{what}: wrong mark {} for u{u} (want {w})", m.up_to.0);
                }
                Ok(None) => panic!("{what}: mark of u{u} vanished without an error"),
                Err(Error::Storage(_) | Error::Corrupt { .. }) => {
                    read_errors += 1;
                }
                Err(e) => panic!("{what}: unexpected error {e:?}"),
            }
        }
    }
    eprintln!("corruption: {opened} opened, {refused} refused, {read_errors} reads refused");
    assert!(
        opened > 0 && refused > 0,
        "the trials did not exercise both outcomes"
    );
}
