//! Every interleaving (up to loom's bounds) of the lock-free parts, with
//! the code that drives them modelled around them. Built only with
//! `--cfg loom` (`docs/testing.md`, "Concurrency"):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --release -p readmark --no-default-features --lib loom
//! ```
//!
//! **Eviction** (`grace`): a writer joins an update into the buffer and
//! acknowledges it; the flusher writes the entry to "RocksDB", marks it
//! clean at the epoch it then reads, advances the epoch and evicts clean
//! entries two epochs old; a reader registers, takes its "snapshot" of
//! RocksDB, then joins the buffer's entry. The reader must see every update
//! acknowledged before it started. A control with the epoch check removed
//! must fail, so the model can catch what the grace period prevents.
//!
//! **The bound** (`newest`): a slot handed from one conversation to
//! another while a reader looks: a read is a miss or one conversation's
//! own value, never one's id with the other's value.

use loom::sync::Arc;
use loom::sync::Mutex;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;

use super::grace::Grace;
use super::newest::{Newest, stripe_hash};

/// One buffered key: (state, version, dirty, clean_epoch).
#[derive(Clone, Copy)]
struct Entry {
    state: u64,
    version: u64,
    dirty: bool,
    clean_epoch: u64,
}

struct Model {
    grace: Grace,
    buffer: Mutex<Option<Entry>>,
    /// RocksDB's value of the key (marks merge by max).
    db: AtomicU64,
    /// The newest value whose `mark_read` returned.
    acked: AtomicU64,
}

fn write(m: &Model, value: u64) {
    {
        let mut b = m.buffer.lock().unwrap();
        let e = b.get_or_insert(Entry {
            state: 0,
            version: 0,
            dirty: false,
            clean_epoch: 0,
        });
        e.state = e.state.max(value);
        e.version += 1;
        e.dirty = true;
    }
    m.acked.fetch_max(value, Ordering::SeqCst);
}

/// A flush round as `Writer::round` runs it, then evictions as under
/// memory pressure; `respect_epochs: false` is the broken control.
fn flush(m: &Model, respect_epochs: bool) {
    let copy = {
        let b = m.buffer.lock().unwrap();
        b.filter(|e| e.dirty).map(|e| (e.state, e.version))
    };
    if let Some((state, version)) = copy {
        m.db.fetch_max(state, Ordering::SeqCst);
        // Read after the write landed, as the round does.
        let epoch = m.grace.epoch();
        let mut b = m.buffer.lock().unwrap();
        if let Some(e) = b.as_mut()
            && e.version == version
        {
            e.dirty = false;
            e.clean_epoch = epoch;
        }
    }
    for _ in 0..2 {
        m.grace.try_advance();
        let epoch = m.grace.epoch();
        let mut b = m.buffer.lock().unwrap();
        if b.is_some_and(|e| !e.dirty && (!respect_epochs || e.clean_epoch + 2 <= epoch)) {
            *b = None;
        }
    }
}

/// A view: registered, then the snapshot, then the buffer joined in.
fn read(m: &Model) -> (u64, u64) {
    let floor = m.acked.load(Ordering::SeqCst);
    let _gate = m.grace.enter();
    let snapshot = m.db.load(Ordering::SeqCst);
    let buffered = m.buffer.lock().unwrap().map_or(0, |e| e.state);
    (floor, snapshot.max(buffered))
}

fn eviction(respect_epochs: bool) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        let m = Arc::new(Model {
            grace: Grace::default(),
            buffer: Mutex::new(None),
            db: AtomicU64::new(0),
            acked: AtomicU64::new(0),
        });
        let writer = {
            let m = m.clone();
            thread::spawn(move || write(&m, 5))
        };
        let flusher = {
            let m = m.clone();
            thread::spawn(move || {
                flush(&m, respect_epochs);
                flush(&m, respect_epochs);
            })
        };
        let (floor, seen) = read(&m);
        assert!(
            seen >= floor,
            "a read saw {seen} after {floor} was acknowledged"
        );
        writer.join().unwrap();
        flusher.join().unwrap();
        // Quiescent: the value is in the buffer or in RocksDB.
        let (floor, seen) = read(&m);
        assert_eq!((floor, seen), (5, 5));
    });
}

/// Post-mortem: its first run failed. `Grace::try_advance` checked the
/// readers with a load, whose only ordering against a reader's
/// registration was SeqCst's single order, which RocksDB's
/// (release/acquire) publication of the write is not part of; now an RMW.
#[test]
fn loom_a_reader_sees_every_acknowledged_update_across_flush_and_eviction() {
    eviction(true);
}

/// The control: without the grace period an entry leaves the buffer while
/// a reader holds a snapshot from before its write, and loom finds it.
#[test]
#[should_panic(expected = "was acknowledged")]
fn loom_control_eviction_without_the_grace_period_loses_a_read() {
    eviction(false);
}

#[test]
fn loom_a_slot_handed_over_is_never_read_torn() {
    // Two slots: conversations 0 and `b` share one.
    let b = (1..u64::MAX)
        .find(|&c| stripe_hash(c) % 2 == stripe_hash(0) % 2)
        .unwrap();
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        let n = Arc::new(Newest::with_slots(2));
        n.set(0, Some(10), None);
        let w = {
            let n = n.clone();
            thread::spawn(move || {
                n.set(b, Some(21), None);
                n.set(0, Some(12), None);
            })
        };
        for _ in 0..2 {
            match n.get(0) {
                None | Some(Some(10 | 12)) => {}
                other => panic!("conversation 0 read {other:?}"),
            }
            match n.get(b) {
                None | Some(Some(21)) => {}
                other => panic!("conversation {b} read {other:?}"),
            }
        }
        w.join().unwrap();
        assert_eq!(n.get(0), Some(Some(12)));
    });
}
