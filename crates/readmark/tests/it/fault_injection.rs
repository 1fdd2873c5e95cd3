//! Fault injection: the store's own file operations fail after N operations
//! (every N in a range), and a real file system fills up. Each time: the
//! failing call returns a clear error, every later write is refused
//! (`Error::Poisoned`), and reopening recovers everything acknowledged
//! before the failure. (Model: redb's `fuzz_redb` countdown backend.)

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use readmark::{Config, ConversationId, Durability, Error, MessageId, Store, Timestamp, UserId};

const C: ConversationId = ConversationId(1);

fn config() -> Config {
    common::manual_config()
        .flush_after_updates(5)
        .journal_bytes(128 << 10)
}

#[derive(Default)]
struct Acked {
    /// Highest up_to per user acknowledged at ProcessCrash or PowerLoss.
    marks: BTreeMap<u64, u64>,
    members: Vec<u64>,
}

/// A fixed workload; stops at the first error and returns it.
fn workload(store: &Store, acked: &mut Acked) -> Option<Error> {
    for i in 0..60u64 {
        let user = i % 4;
        let r = if i == 30 {
            // A membership change: a full flush and a durable retirement.
            store
                .add_member(C, UserId(9), Timestamp(i))
                .map(|()| acked.members.push(9))
        } else if i % 13 == 12 {
            store.flush()
        } else {
            let level = [
                Durability::ProcessCrash,
                Durability::PowerLoss,
                Durability::Memory,
            ][(i % 3) as usize];
            store
                .mark_read_with(C, UserId(user), MessageId(i), Timestamp(i), level)
                .map(|()| {
                    if level != Durability::Memory {
                        let e = acked.marks.entry(user).or_insert(0);
                        *e = (*e).max(i);
                    }
                })
        };
        if let Err(e) = r {
            return Some(e);
        }
    }
    None
}

fn setup(path: &Path) -> Store {
    let store = Store::open(path, config()).unwrap();
    store.create_conversation(C).unwrap();
    for u in 0..4 {
        store.add_member(C, UserId(u), Timestamp(0)).unwrap();
    }
    common::post(&store, C, [common::FAR]);
    store
}

fn check_recovered(path: &Path, acked: &Acked, what: &str) {
    let store =
        Store::open(path, config()).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    for (&u, &want) in &acked.marks {
        let got = store.mark(C, UserId(u)).unwrap().map_or(0, |m| m.up_to.0);
        assert!(
            got >= want,
            "{what}: acknowledged mark of u{u} >= {want} lost (found {got})"
        );
    }
    for &u in &acked.members {
        assert!(
            store.is_member(C, UserId(u)).unwrap(),
            "{what}: acknowledged join of u{u} lost"
        );
    }
    // The reopened store takes writes again.
    store
        .mark_read(C, UserId(0), MessageId(1_000), Timestamp(1_000))
        .unwrap();
}

#[test]
fn every_journal_operation_failing_in_turn() {
    let mut failures = 0;
    for n in 0..80u64 {
        for errno in [libc::ENOSPC, libc::EIO] {
            let dir = tempfile::tempdir().unwrap();
            let mut acked = Acked::default();
            {
                let store = setup(dir.path());
                store.__fail_journal_after(n, errno);
                let Some(err) = workload(&store, &mut acked) else {
                    continue; // the workload has fewer than n journal operations
                };
                failures += 1;
                let what = format!("fault at journal op {n} (errno {errno})");
                match &err {
                    Error::Io(e) => assert_eq!(e.raw_os_error(), Some(errno), "{what}: {err}"),
                    other => panic!("{what}: expected the I/O error itself, got {other:?}"),
                }
                for r in [
                    store.mark_read(C, UserId(0), MessageId(500), Timestamp(500)),
                    store.flush(),
                    store.record_message(C, MessageId(common::FAR + 1), UserId(0), Timestamp(1)),
                    store.add_member(C, UserId(7), Timestamp(1)),
                ] {
                    assert!(
                        matches!(r, Err(Error::Poisoned(_))),
                        "{what}: write after failure: {r:?}"
                    );
                }
                // Reads still answer, from memory and RocksDB.
                store.mark(C, UserId(1)).unwrap();
            }
            check_recovered(
                dir.path(),
                &acked,
                &format!("fault at journal op {n} (errno {errno})"),
            );
        }
    }
    assert!(
        failures >= 40,
        "only {failures} injected faults hit the workload"
    );
}

/// A real full disk: a small tmpfs (mounting needs root, which CI has; a
/// run without it says so and checks nothing else).
#[test]
fn real_full_disk_poisons_and_recovers_after_space_is_freed() {
    let mnt = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(mnt.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path());
    let path = mnt.path().join("store");
    let mut acked = Acked::default();
    let filler = mnt.path().join("filler");
    {
        let store = setup(&path);
        store.flush().unwrap();
        // Fill what is left, less a little.
        let free = {
            let out = std::process::Command::new("df")
                .args(["-B1", "--output=avail"])
                .arg(mnt.path())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        std::fs::write(&filler, vec![1u8; free.saturating_sub(64 << 10) as usize]).unwrap();
        let mut err = None;
        for i in 0..200_000u64 {
            let u = i % 4;
            match store.mark_read_with(
                C,
                UserId(u),
                MessageId(i),
                Timestamp(i),
                Durability::ProcessCrash,
            ) {
                Ok(()) => {
                    let e = acked.marks.entry(u).or_insert(0);
                    *e = (*e).max(i);
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
            // Every flush writes the four marks and their change-log rows
            // to RocksDB's log: that is what fills the disk (the journal is
            // a fixed-size file allocated at open).
            if i % 10 == 9
                && let Err(e) = store.flush()
            {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("the disk never filled");
        assert!(
            matches!(&err, Error::Storage(s) if s.kind() == readmark::StorageErrorKind::Io)
                || matches!(err, Error::Io(_)),
            "a full disk must surface as a storage error, got {err:?}"
        );
        assert!(matches!(
            store.mark_read(C, UserId(0), MessageId(1), Timestamp(1)),
            Err(Error::Poisoned(_))
        ));
    }
    std::fs::remove_file(&filler).unwrap();
    check_recovered(&path, &acked, "full disk");
}
