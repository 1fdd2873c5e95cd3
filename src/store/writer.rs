//! The mark write path: combiner + journal in front of RocksDB, the flush
//! triggers, group commit, and poisoning.
//!
//! Ordering argument (why nothing acknowledged is lost):
//! 1. An update is appended to the journal and joined into the combiner
//!    under the same shard lock ([`Combiner::add`]).
//! 2. `flush_all` first rotates the journal (new frames go to the other
//!    segment), then copies every shard. An update whose frame is in the old
//!    segment finished its shard insert before the copy of that shard
//!    could take the lock, so it is in the copied set.
//! 3. The copied set is written to RocksDB with the write-ahead log synced
//!    (which also makes every earlier RocksDB write durable, including
//!    single-key flushes), and only then is the old segment retired.
//! 4. Flushes are serialised by `flush_lock`, so a single-key flush is
//!    entirely before or after a full flush.
//! 5. Written entries leave the buffer only if unchanged since the copy, and
//!    under `read_gate`, which every reader holds shared: a mark is always
//!    in the buffer, in RocksDB, or both, for every reader.
//!
//! Any failed journal sync or RocksDB write poisons the store: writes are
//! refused until it is reopened, because after a failed fsync the page
//! cache may already have dropped the data (Rebello et al., ATC '20), so
//! retrying would acknowledge something that is not on disk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use rocksdb::{WriteBatch, WriteOptions, DB};

use super::events::ChangeLog;
use super::receipts::{plan_advances, ReceiptPolicy};
use super::Cf;
use crate::combiner::Combiner;
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::journal::record::MarkRecord;
use crate::journal::Journal;
use crate::keys;
use crate::mark::MarkState;

/// Counters of the write path.
#[derive(Default)]
pub(crate) struct WriterCounters {
    pub(crate) updates: AtomicU64,
    pub(crate) combined: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) rocksdb_syncs: AtomicU64,
    pub(crate) keys_written: AtomicU64,
    pub(crate) receipt_operands: AtomicU64,
    pub(crate) read_time_records: AtomicU64,
}

enum AppendError {
    Full,
    Failed(Error),
}

pub(crate) struct Writer {
    db: Arc<DB>,
    policy: ReceiptPolicy,
    /// The change log's sequence, appended to in every flush batch.
    pub(crate) changes: ChangeLog,
    pub(crate) combiner: Combiner,
    pub(crate) journal: Journal,
    flush_lock: Mutex<()>,
    /// Held shared by every read view, exclusively while written entries
    /// leave the buffer.
    pub(crate) read_gate: RwLock<()>,
    poisoned: Mutex<Option<String>>,
    is_poisoned: AtomicBool,
    max_keys: usize,
    flush_after: u32,
    pub(crate) counters: WriterCounters,
    flushed: Mutex<u64>,
    flushed_cv: Condvar,
    stop: Mutex<bool>,
    stop_cv: Condvar,
}

impl Writer {
    pub(crate) fn new(
        db: Arc<DB>,
        policy: ReceiptPolicy,
        changes: ChangeLog,
        journal: Journal,
        max_keys: usize,
        flush_after: u32,
    ) -> Self {
        Self {
            db,
            policy,
            changes,
            combiner: Combiner::new(),
            journal,
            flush_lock: Mutex::new(()),
            read_gate: RwLock::new(()),
            poisoned: Mutex::new(None),
            is_poisoned: AtomicBool::new(false),
            max_keys,
            flush_after,
            counters: WriterCounters::default(),
            flushed: Mutex::new(0),
            flushed_cv: Condvar::new(),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
        }
    }

    pub(crate) fn check_poison(&self) -> Result<()> {
        if self.is_poisoned.load(Ordering::Acquire) {
            let why = self.poisoned.lock().clone().unwrap_or_default();
            return Err(Error::Poisoned(why));
        }
        Ok(())
    }

    /// Records the first failure and refuses writes from now on; returns the
    /// error to hand to the caller.
    pub(crate) fn poison(&self, what: &str, err: Error) -> Error {
        let mut p = self.poisoned.lock();
        if p.is_none() {
            tracing::error!(error = %err, "{what} failed; the store refuses writes until reopened");
            *p = Some(format!("{what}: {err}"));
        }
        self.is_poisoned.store(true, Ordering::Release);
        err
    }

    fn marks_cf(&self) -> &rocksdb::ColumnFamily {
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(Cf::Marks.name())
            .expect("column family opened by Store::open")
    }

    /// One logical update: buffered, journaled at `durability`, and
    /// acknowledged once it is as durable as asked.
    pub(crate) fn update(
        &self,
        conversation: u64,
        user: u64,
        state: MarkState,
        durability: Durability,
    ) -> Result<()> {
        self.check_poison()?;
        let payload = (durability != Durability::Memory).then(|| {
            MarkRecord {
                conversation,
                user,
                state,
            }
            .encode()
        });
        let sync = durability == Durability::PowerLoss;
        let added = loop {
            let r = self
                .combiner
                .add(conversation, user, state, || match &payload {
                    None => Ok(0),
                    Some(p) => match self.journal.append(p) {
                        Ok(Some(seq)) => Ok(seq),
                        Ok(None) => Err(AppendError::Full),
                        Err(e) => Err(AppendError::Failed(e)),
                    },
                });
            match r {
                Ok(added) => break added,
                // The active segment is full: a flush rotates to the empty
                // one. Done outside the shard lock, which the flush copies.
                Err(AppendError::Full) => self.flush_all(false)?,
                Err(AppendError::Failed(e)) => return Err(self.poison("journal append", e)),
            }
        };
        self.counters.updates.fetch_add(1, Ordering::Relaxed);
        if added.combined {
            self.counters.combined.fetch_add(1, Ordering::Relaxed);
        }
        if sync {
            if let Err(e) = self.journal.sync_to(added.value) {
                return Err(self.poison("journal fsync", e.into()));
            }
        }
        if added.updates >= self.flush_after {
            self.flush_key(conversation, user)?;
        }
        if added.keys >= self.max_keys {
            self.flush_all(false)?;
        }
        Ok(())
    }

    /// Writes one key's buffered state now (a user left the conversation,
    /// or the key passed its update count).
    pub(crate) fn flush_key(&self, conversation: u64, user: u64) -> Result<()> {
        self.check_poison()?;
        let _flush = self.flush_lock.lock();
        // Again under the lock: a flush that failed while this one waited
        // left a segment unretired, which must not be reused.
        self.check_poison()?;
        let Some(state) = self.combiner.peek(conversation, user) else {
            return Ok(());
        };
        // No sync: until the journal segment holding this key's frames is
        // retired, the journal still has them, and retiring waits for a
        // synced RocksDB write, which covers this one too.
        let entries = [((conversation, user), state)];
        let batch = match self.batch_for(&entries) {
            Ok(b) => b,
            Err(e) => return Err(self.poison("receipt planning", e)),
        };
        if let Err(e) = self.db.write_opt(batch, &WriteOptions::default()) {
            return Err(self.poison("RocksDB write", e.into()));
        }
        self.changes.mark_written();
        self.remove_written(&entries);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.keys_written.fetch_add(1, Ordering::Relaxed);
        self.note_flush();
        Ok(())
    }

    /// Writes every buffered key in one RocksDB batch and retires the
    /// journal segment that held them. With `durable_retire`, the
    /// retirement itself is fsynced (before a membership change, so no crash
    /// can replay older frames over it).
    pub(crate) fn flush_all(&self, durable_retire: bool) -> Result<()> {
        self.check_poison()?;
        let _flush = self.flush_lock.lock();
        // Again under the lock: a flush that failed while this one waited
        // left a segment unretired, which must not be reused.
        self.check_poison()?;
        if self.combiner.keys() == 0 && self.journal.frames().iter().all(|&n| n == 0) {
            if durable_retire {
                if let Err(e) = self.journal.sync_retirements() {
                    return Err(self.poison("journal fsync", e.into()));
                }
            }
            return Ok(());
        }
        if let Err(e) = self.journal.sync_retirements() {
            return Err(self.poison("journal fsync", e.into()));
        }
        let (old, had_frames) = match self.journal.rotate() {
            Ok(r) => r,
            Err(e) => return Err(self.poison("journal rotate", e.into())),
        };
        // Copied, not removed: entries stay visible to reads until RocksDB
        // holds them (`remove_written`).
        let entries = self.combiner.snapshot();
        if !entries.is_empty() {
            let batch = match self.batch_for(&entries) {
                Ok(b) => b,
                Err(e) => return Err(self.poison("receipt planning", e)),
            };
            let mut wo = WriteOptions::default();
            wo.set_sync(had_frames);
            if let Err(e) = self.db.write_opt(batch, &wo) {
                return Err(self.poison("RocksDB write", e.into()));
            }
            self.changes.mark_written();
            self.counters.batches.fetch_add(1, Ordering::Relaxed);
            self.counters
                .keys_written
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            if had_frames {
                self.counters.rocksdb_syncs.fetch_add(1, Ordering::Relaxed);
            }
            self.remove_written(&entries);
        } else if had_frames {
            if let Err(e) = self.db.flush_wal(true) {
                return Err(self.poison("RocksDB WAL sync", e.into()));
            }
            self.counters.rocksdb_syncs.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = self.journal.retire(old, durable_retire) {
            return Err(self.poison("journal retire", e.into()));
        }
        self.note_flush();
        Ok(())
    }

    /// One batch for `entries`: their per-message receipts (planned from
    /// the marks RocksDB holds before this batch) and their mark operands.
    /// Called with the flush lock held.
    fn batch_for(&self, entries: &[((u64, u64), MarkState)]) -> Result<WriteBatch> {
        let mut batch = WriteBatch::default();
        let (operands, runs) = plan_advances(&self.db, &self.policy, entries, &mut batch)?;
        self.counters
            .receipt_operands
            .fetch_add(operands, Ordering::Relaxed);
        self.counters
            .read_time_records
            .fetch_add(runs, Ordering::Relaxed);
        let cf = self.marks_cf();
        for ((c, u), state) in entries {
            batch.merge_cf(cf, keys::pair_key(*c, *u), state.encode());
        }
        self.changes.append(&self.db, entries, &mut batch)?;
        Ok(batch)
    }

    /// Writes a structural batch (membership, privacy) together with the
    /// change entries `rows` computes: (conversation, reader) pairs listed
    /// again to the other members. Under the flush lock, so the change
    /// sequence stays in write order, and so `rows` reads the marks with no
    /// flush between that read and this write (a mark flushed in between
    /// would be below a cursor pinned meanwhile and missing from `rows`).
    /// `rows` also gets the last sequence assigned before this batch (a
    /// join records it) and may add to the batch.
    pub(crate) fn write_with_changes(
        &self,
        mut batch: WriteBatch,
        rows: impl FnOnce(u64, &mut WriteBatch) -> Result<Vec<(u64, u64)>>,
        sync: bool,
    ) -> Result<()> {
        self.check_poison()?;
        let _flush = self.flush_lock.lock();
        self.check_poison()?;
        let rows = rows(self.changes.assigned(), &mut batch)?;
        if !rows.is_empty() {
            let rows = rows.iter().map(|&(c, u)| (c, u, true, false));
            if let Err(e) = self.changes.append_rows(&self.db, rows, &mut batch) {
                return Err(self.poison("change log", e));
            }
        }
        let mut o = WriteOptions::default();
        o.set_sync(sync);
        if let Err(e) = self.db.write_opt(batch, &o) {
            return Err(self.poison("RocksDB write", e.into()));
        }
        self.changes.mark_written();
        Ok(())
    }

    /// Drops written entries from the buffer. Readers hold the gate shared
    /// across their read of the buffer and of RocksDB, so none can miss an
    /// entry by reading RocksDB before the write and the buffer after the
    /// removal.
    fn remove_written(&self, written: &[((u64, u64), MarkState)]) {
        let _gate = self.read_gate.write();
        self.combiner.remove_if_unchanged(written);
    }

    /// Drops a key's buffered state without writing it: after a membership
    /// change, whatever is buffered for the key predates it.
    pub(crate) fn discard(&self, conversation: u64, user: u64) {
        let _gate = self.read_gate.write();
        if let Some(state) = self.combiner.peek(conversation, user) {
            self.combiner
                .remove_if_unchanged(&[((conversation, user), state)]);
        }
    }

    fn note_flush(&self) {
        *self.flushed.lock() += 1;
        self.flushed_cv.notify_all();
    }

    /// Flushes observed since open (single-key and full).
    pub(crate) fn flush_count(&self) -> u64 {
        *self.flushed.lock()
    }

    /// Waits until at least `n` flushes happened since open, or `timeout`.
    pub(crate) fn wait_flushes(&self, n: u64, timeout: Duration) -> bool {
        let mut f = self.flushed.lock();
        let deadline = std::time::Instant::now() + timeout;
        while *f < n {
            if self.flushed_cv.wait_until(&mut f, deadline).timed_out() {
                return *f >= n;
            }
        }
        true
    }

    /// The timer: one full flush per interval until stopped.
    pub(crate) fn run_timer(&self, interval: Duration) {
        let mut stop = self.stop.lock();
        loop {
            if *stop {
                return;
            }
            let _ = self.stop_cv.wait_for(&mut stop, interval);
            if *stop {
                return;
            }
            drop(stop);
            if let Err(e) = self.flush_all(false) {
                if matches!(e, Error::Poisoned(_)) {
                    return;
                }
                tracing::error!(error = %e, "timed flush failed");
            }
            stop = self.stop.lock();
        }
    }

    pub(crate) fn stop_timer(&self) {
        *self.stop.lock() = true;
        self.stop_cv.notify_all();
    }
}
