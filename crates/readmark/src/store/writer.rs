//! The mark write path: the combiner and the slot journal in front of
//! RocksDB, the background flusher, group commit, and poisoning.
//!
//! A caller's update costs a shard lock, a join and, above `Memory`, one
//! 80-byte copy into the key's journal slot (plus a shared fsync at
//! `PowerLoss`). Nothing else runs on the caller's path: leaving a
//! conversation ([`Writer::seal`]) queues the key and returns; the flusher
//! thread writes queued keys together, one RocksDB batch for many keys,
//! `flush_delay` after the first of them, and every dirty key every
//! `flush_interval`.
//!
//! Why nothing acknowledged is lost (docs/design.md §8):
//! 1. An update is joined into its entry and, above `Memory`, written to the
//!    entry's slot under the same shard lock; the slot holds the entry's
//!    whole state.
//! 2. A flush copies an entry's state and version, writes it to RocksDB
//!    (synced if any update in it was acknowledged at `PowerLoss`), and only
//!    then, if the version is unchanged, marks the entry clean and gives its
//!    slot back. An entry updated meanwhile keeps its slot for the next
//!    flush.
//! 3. So every acknowledged update is in its slot, or in RocksDB's WAL at
//!    its level, or both.
//!
//! Any failed journal write or sync, or RocksDB write, poisons the store:
//! writes are refused until it is reopened, because after a failed fsync
//! the page cache may already have dropped the data (Rebello et al., ATC
//! '20), so retrying would acknowledge something that is not on disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rocksdb::{DB, WriteBatch, WriteOptions};

use super::change_log::ChangeLog;
use super::flush::{Item, Outcome, plan_round};
use super::receipts::ReceiptPolicy;
use crate::config::Durability;
use crate::error::{Error, Result, storage};
use crate::pure::combiner::{Combiner, Entry};
use crate::pure::grace::Grace;
use crate::pure::journal::Journal;
use crate::pure::mark::MarkState;

/// Keys per RocksDB batch a flush round writes.
const FLUSH_BATCH_KEYS: usize = 8;

/// Counters of the write path.
#[derive(Default)]
pub(crate) struct WriterCounters {
    pub(crate) updates: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) rocksdb_syncs: AtomicU64,
    pub(crate) keys_written: AtomicU64,
    pub(crate) no_ops: AtomicU64,
    pub(crate) receipt_operands: AtomicU64,
    pub(crate) read_time_records: AtomicU64,
    pub(crate) change_sequences: AtomicU64,
    /// Rounds of the background flusher, and their time in nanoseconds.
    pub(crate) flush_rounds: AtomicU64,
    pub(crate) flush_nanos: AtomicU64,
}

/// What a caller verified about the key before its first update: the
/// membership it checked (under the conversation's lock) and, when it
/// needs the previous mark, what RocksDB holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verified {
    pub(crate) joined_seq: u64,
    pub(crate) base: Option<MarkState>,
}

/// Outcome of [`Writer::apply`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Applied {
    /// Acknowledged. `prev` is the key's whole state before the update
    /// when the store knew it.
    Done { prev: Option<MarkState> },
    /// The key has no entry (or, with `want_prev`, its stored mark is not
    /// known yet): check membership and call again with [`Verified`].
    Verify,
}

/// Which keys a flush round writes.
pub(crate) enum Which {
    /// Every key with something to write.
    All,
    /// These keys (sealed, or about to change membership or privacy).
    Keys(Vec<(u64, u64)>),
}

/// The flusher's schedule, under `Writer::sched`.
#[derive(Default)]
struct Sched {
    sealed: Vec<(u64, u64)>,
    /// The flusher is asleep until woken (idle for a while): the next seal
    /// wakes it. While the store is busy it ticks every `flush_delay`
    /// instead, so a seal costs no wake-up.
    idle: bool,
    /// Write sealed keys now (a caller waits for them).
    urgent: bool,
    /// Write every dirty key now (memory, slots, or a caller).
    full: bool,
    stop: bool,
    started: u64,
    done: u64,
}

pub(crate) struct Writer {
    db: Arc<DB>,
    policy: ReceiptPolicy,
    /// The change log's sequence, appended to in every flush batch.
    pub(crate) changes: ChangeLog,
    pub(crate) combiner: Combiner,
    pub(crate) journal: Journal,
    /// Serialises flush rounds with each other and with structural writes
    /// that carry change-log entries (`write_with_changes`).
    flush_lock: Mutex<()>,
    pub(crate) grace: Grace,
    poisoned: Mutex<Option<String>>,
    is_poisoned: AtomicBool,
    max_keys: usize,
    flush_after: u32,
    flush_delay: Duration,
    interval: Duration,
    pub(crate) counters: WriterCounters,
    sched: Mutex<Sched>,
    /// Wakes the flusher.
    wake: Condvar,
    /// Wakes callers waiting for a round.
    round_done: Condvar,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        db: Arc<DB>,
        policy: ReceiptPolicy,
        changes: ChangeLog,
        journal: Journal,
        max_keys: usize,
        flush_after: u32,
        flush_delay: Duration,
        interval: Duration,
    ) -> Self {
        Self {
            db,
            policy,
            changes,
            combiner: Combiner::new(),
            journal,
            flush_lock: Mutex::new(()),
            grace: Grace::default(),
            poisoned: Mutex::new(None),
            is_poisoned: AtomicBool::new(false),
            max_keys,
            flush_after,
            flush_delay,
            interval,
            counters: WriterCounters::default(),
            sched: Mutex::new(Sched {
                idle: true,
                ..Sched::default()
            }),
            wake: Condvar::new(),
            round_done: Condvar::new(),
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
        drop(p);
        // Nobody may wait for a round that will not come.
        let _s = self.sched.lock();
        self.round_done.notify_all();
        self.wake.notify_all();
        err
    }

    /// One logical update of (`conversation`, `user`): joined into the
    /// key's entry and, above `Memory`, written to its journal slot; at
    /// `PowerLoss`, acknowledged after a shared fsync.
    ///
    /// Without `verified`, only a key that already has an entry is
    /// updated (its membership was checked when the entry was made, and a
    /// membership change removes it); otherwise [`Applied::Verify`].
    pub(crate) fn apply(
        &self,
        conversation: u64,
        user: u64,
        update: MarkState,
        durability: Durability,
        verified: Option<Verified>,
        want_prev: bool,
    ) -> Result<Applied> {
        self.check_poison()?;
        let _durable = (durability == Durability::PowerLoss).then(|| self.journal.durable_writer());
        loop {
            let key = (conversation, user);
            let mut shard = self.combiner.lock(conversation);
            if !shard.contains_key(&key) {
                let Some(v) = verified else {
                    return Ok(Applied::Verify);
                };
                if self.combiner.entries() >= self.max_keys {
                    drop(shard);
                    self.relieve_pressure()?;
                    continue;
                }
                let base = v.base;
                self.combiner.insert(
                    &mut shard,
                    key,
                    Entry {
                        state: base.unwrap_or_default(),
                        base,
                        joined_seq: v.joined_seq,
                        ..Entry::default()
                    },
                );
            }
            let Some(e) = shard.get_mut(&key) else {
                continue;
            };
            if e.base.is_none() {
                match verified.and_then(|v| v.base) {
                    Some(b) => {
                        e.base = Some(b);
                        e.state = e.state.join(b);
                    }
                    None if want_prev => return Ok(Applied::Verify),
                    None => {}
                }
            }
            let prev = if want_prev {
                e.base.map(|_| e.state)
            } else {
                None
            };
            let mut joined = e.state;
            let changed = joined.absorb(&update);
            // An update already covered needs no journal write if the slot
            // holds the state, or (for a process crash) RocksDB does.
            let journal = durability != Durability::Memory
                && (changed
                    || !(e.journaled
                        || durability == Durability::ProcessCrash
                            && e.base.is_some_and(|b| b.covers(&update))));
            if journal {
                let slot = match e.slot {
                    Some(s) => s,
                    None => {
                        if let Some(s) = self.journal.alloc() {
                            e.slot = Some(s);
                            s
                        } else {
                            // Every slot holds a buffered key: a flush gives
                            // some back.
                            drop(shard);
                            self.wait_round(true, false)?;
                            continue;
                        }
                    }
                };
                // Numbered after the slot's other copy: a slot is zeroed
                // when given back, so its copies are this key's alone.
                match self.journal.write(
                    slot,
                    e.copy,
                    e.last_seq + 1,
                    conversation,
                    user,
                    e.joined_seq,
                    &joined,
                ) {
                    Ok(()) => {
                        e.copy ^= 1;
                        e.journaled = true;
                        e.last_seq += 1;
                    }
                    Err(err) => return Err(self.poison("journal write", err.into())),
                }
            } else if changed {
                e.journaled = false;
            }
            if changed || journal {
                e.state = joined;
                e.version += 1;
                e.updates = e.updates.saturating_add(1);
                if durability == Durability::PowerLoss {
                    e.needs_sync = true;
                }
                self.combiner.set_dirty(e, true);
            } else {
                self.counters.no_ops.fetch_add(1, Ordering::Relaxed);
            }
            // The slot holds the update (written now or before): a ticket
            // taken now is covered by the next sync that starts.
            let sync_ticket =
                (durability == Durability::PowerLoss && e.journaled).then(|| self.journal.ticket());
            let seal = e.dirty && !e.sealed && e.updates >= self.flush_after;
            if seal {
                e.sealed = true;
            }
            drop(shard);
            self.counters.updates.fetch_add(1, Ordering::Relaxed);
            if let Some(ticket) = sync_ticket
                && let Err(err) = self.journal.sync_to(ticket)
            {
                return Err(self.poison("journal fsync", err.into()));
            }
            if seal {
                self.enqueue(key);
            }
            if self.combiner.dirty() >= self.max_keys / 2 {
                self.request_full();
            }
            return Ok(Applied::Done { prev });
        }
    }

    /// The `joined_seq` a buffered key was checked against: the key's
    /// membership, for a caller holding the conversation's lock (entries
    /// are made, and removed at a membership change, under that lock).
    pub(crate) fn buffered_membership(&self, conversation: u64, user: u64) -> Option<u64> {
        self.combiner
            .lock(conversation)
            .get(&(conversation, user))
            .map(|e| e.joined_seq)
    }

    /// The user left the conversation: write the key soon, batched with
    /// others. Returns without waiting.
    pub(crate) fn seal(&self, conversation: u64, user: u64) {
        let queue = {
            let mut shard = self.combiner.lock(conversation);
            match shard.get_mut(&(conversation, user)) {
                Some(e) if e.dirty && !e.sealed => {
                    e.sealed = true;
                    true
                }
                _ => false,
            }
        };
        if queue {
            self.enqueue((conversation, user));
        }
    }

    fn enqueue(&self, key: (u64, u64)) {
        let mut s = self.sched.lock();
        s.sealed.push(key);
        if s.idle {
            s.idle = false;
            self.wake.notify_one();
        }
    }

    fn request_full(&self) {
        let mut s = self.sched.lock();
        if !s.full {
            s.full = true;
            self.wake.notify_one();
        }
    }

    /// Writes one key now and waits until RocksDB holds it.
    pub(crate) fn flush_key(&self, conversation: u64, user: u64) -> Result<()> {
        self.check_poison()?;
        // Twice at most: a round already running when this call sealed may
        // have copied the key before its latest update, and leaves it dirty
        // (and no longer sealed); the second seal queues it for a round
        // that starts after. (A key still dirty then waits for its message,
        // `Outcome::Partial`, which no round can write yet.)
        for _ in 0..2 {
            let dirty = self
                .combiner
                .lock(conversation)
                .get(&(conversation, user))
                .is_some_and(|e| e.dirty);
            if !dirty {
                return Ok(());
            }
            self.seal(conversation, user);
            self.wait_round(false, true)?;
        }
        Ok(())
    }

    /// Asks the flusher for a round (every dirty key with `full`, sealed
    /// keys with `urgent`) and waits until one that started after this call
    /// has finished.
    fn wait_round(&self, full: bool, urgent: bool) -> Result<()> {
        let mut s = self.sched.lock();
        let target = s.started + 1;
        s.full |= full;
        s.urgent |= urgent;
        self.wake.notify_one();
        while s.done < target && !s.stop {
            self.check_poison()?;
            self.round_done.wait_for(&mut s, Duration::from_millis(100));
        }
        drop(s);
        self.check_poison()
    }

    /// Too many entries: a round evicts clean ones (and writes dirty ones).
    fn relieve_pressure(&self) -> Result<()> {
        self.wait_round(true, false)
    }

    /// Writes every buffered key now, in the caller's thread, with the
    /// write-ahead log synced: afterwards RocksDB holds every update
    /// acknowledged before the call, durably.
    pub(crate) fn flush_all(&self) -> Result<()> {
        self.round(Which::All, true, None).map(|_| ())
    }

    /// [`flush_all`](Self::flush_all), with `position` put in the round's
    /// last batch under `key` (`meta`), unless some entry stays buffered
    /// (its message not written yet): then RocksDB would hold a position
    /// covering an update it does not hold. Returns whether it was put.
    pub(crate) fn flush_all_at(&self, key: &[u8], position: u64) -> Result<bool> {
        self.round(Which::All, true, Some((key, position)))
    }

    /// Writes the given keys now, in the caller's thread (before a
    /// membership, threshold or privacy change of their conversations, so
    /// their advances are planned under the rules they were made under).
    pub(crate) fn flush_keys(&self, keys: Vec<(u64, u64)>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.round(Which::Keys(keys), false, None).map(|_| ())
    }

    /// One flush round: copy the chosen dirty entries, plan their batch
    /// (marks, read-time runs, change log) from what the entries know and
    /// one RocksDB snapshot, write it, then mark clean what did not change
    /// meanwhile and give its slots back.
    fn round(&self, which: Which, durable: bool, position: Option<(&[u8], u64)>) -> Result<bool> {
        self.check_poison()?;
        let _flush = self.flush_lock.lock();
        // Again under the lock: a round that failed while this one waited
        // left entries dirty, and the store refuses writes.
        self.check_poison()?;
        let keys = match which {
            Which::All => self.combiner.dirty_keys(),
            Which::Keys(k) => k,
        };
        let mut items = Vec::with_capacity(keys.len());
        for (c, u) in keys {
            let shard = self.combiner.lock(c);
            if let Some(e) = shard.get(&(c, u))
                && e.dirty
            {
                items.push(Item {
                    conversation: c,
                    user: u,
                    state: e.state,
                    base: e.base,
                    joined_seq: Some(e.joined_seq),
                    version: e.version,
                    needs_sync: e.needs_sync,
                });
            }
        }
        let sync = durable || items.iter().any(|i| i.needs_sync);
        // Batches of at most `FLUSH_BATCH_KEYS` keys: a writer whose own
        // RocksDB write (a send, a membership change) queues behind one
        // waits for a few dozen keys, not for a whole round.
        let c = &self.counters;
        let mut plan = match plan_round(
            &self.db,
            &self.policy,
            &self.changes,
            &items,
            FLUSH_BATCH_KEYS,
        ) {
            Ok(p) => p,
            Err(e) => return Err(self.poison("flush planning", e)),
        };
        // The position goes in the last batch: a crash between batches
        // leaves the previous position, and the log's replay from there
        // is harmless (max and OR merges are idempotent).
        let positioned = match position {
            Some((key, pos))
                if !plan
                    .outcomes
                    .iter()
                    .any(|o| matches!(o, Outcome::Partial(_))) =>
            {
                let meta = self
                    .db
                    .cf_handle(super::Cf::Meta.name())
                    .ok_or(Error::InvalidArgument("no meta column family"))?;
                if plan.batches.is_empty() {
                    plan.batches.push(rocksdb::WriteBatch::default());
                }
                if let Some(last) = plan.batches.last_mut() {
                    last.put_cf(meta, key, pos.to_be_bytes());
                }
                true
            }
            _ => false,
        };
        for batch in plan.batches {
            if let Err(e) = self.db.write_opt(batch, &WriteOptions::default()) {
                return Err(self.poison("RocksDB write", storage(e)));
            }
            c.batches.fetch_add(1, Ordering::Relaxed);
        }
        // Every sequence the plan assigned has landed.
        self.changes.mark_written();
        c.keys_written.fetch_add(plan.marks, Ordering::Relaxed);
        c.read_time_records.fetch_add(plan.runs, Ordering::Relaxed);
        c.change_sequences
            .fetch_add(plan.sequenced, Ordering::Relaxed);
        c.no_ops.fetch_add(plan.no_ops, Ordering::Relaxed);
        let outcomes = plan.outcomes;
        if sync {
            // One WAL sync covers every batch above and every earlier
            // (unsynced) round: only then may the slots of `PowerLoss`
            // updates be given back.
            if let Err(e) = self.db.flush_wal(true) {
                return Err(self.poison("RocksDB WAL sync", storage(e)));
            }
            c.rocksdb_syncs.fetch_add(1, Ordering::Relaxed);
        }
        let epoch = self.grace.epoch();
        let mut release = Vec::new();
        for (item, outcome) in items.iter().zip(outcomes) {
            let key = (item.conversation, item.user);
            let mut shard = self.combiner.lock(item.conversation);
            let Some(e) = shard.get_mut(&key) else {
                // Discarded meanwhile (a membership change), slot and all.
                continue;
            };
            if Some(e.joined_seq) != item.joined_seq {
                continue;
            }
            match outcome {
                Outcome::Stale => {
                    // The membership it was made in has ended.
                    if let Some(gone) = self.combiner.remove(&mut shard, key) {
                        release.extend(gone.slot);
                    }
                }
                Outcome::Partial(new) => {
                    // The rest waits for its message: dirty, slot kept,
                    // written by a later round.
                    e.base = Some(new);
                    e.state = e.state.join(new);
                    e.sealed = false;
                }
                Outcome::Stored(new) => {
                    e.base = Some(new);
                    e.state = e.state.join(new);
                    if e.version == item.version {
                        e.journaled = false;
                        e.last_seq = 0;
                        e.sealed = false;
                        e.updates = 0;
                        e.needs_sync = false;
                        e.clean_epoch = epoch;
                        release.extend(e.slot.take());
                        self.combiner.set_dirty(e, false);
                    } else {
                        // Updated after the copy: still dirty, slot kept; a
                        // later leave queues it again.
                        e.sealed = false;
                    }
                }
            }
        }
        self.journal.release(&release);
        if self.combiner.entries() >= self.max_keys * 3 / 4 {
            self.grace.try_advance();
            self.combiner
                .evict_clean(self.grace.epoch(), self.max_keys / 2);
        }
        Ok(positioned)
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
        if !rows.is_empty()
            && let Err(e) = self
                .changes
                .append_rows(&self.db, rows.into_iter(), &mut batch)
        {
            return Err(self.poison("change log", e));
        }
        let mut o = WriteOptions::default();
        o.set_sync(sync);
        if let Err(e) = self.db.write_opt(batch, &o) {
            return Err(self.poison("RocksDB write", storage(e)));
        }
        self.changes.mark_written();
        Ok(())
    }

    /// Drops a key's entry without writing it: after a membership change,
    /// whatever it holds belongs to a membership that has ended (or not yet
    /// begun). Its slot is zeroed, so no replay brings it back either.
    pub(crate) fn discard(&self, conversation: u64, user: u64) {
        let gone = {
            let mut shard = self.combiner.lock(conversation);
            self.combiner.remove(&mut shard, (conversation, user))
        };
        if let Some(slot) = gone.and_then(|e| e.slot) {
            self.journal.release(&[slot]);
        }
    }

    #[cfg(any(test, feature = "testing"))]
    /// Rounds finished since open.
    pub(crate) fn rounds_done(&self) -> u64 {
        self.sched.lock().done
    }

    #[cfg(any(test, feature = "testing"))]
    /// Waits until at least `n` rounds finished since open, or `timeout`.
    pub(crate) fn wait_rounds(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.sched.lock();
        while s.done < n {
            if self.round_done.wait_until(&mut s, deadline).timed_out() {
                return s.done >= n;
            }
        }
        true
    }

    /// The flusher thread. While the store is busy it ticks every
    /// `flush_delay` and writes the keys sealed since the last tick (at
    /// once if a caller waits for them); every `flush_interval`, or when
    /// memory or slots run short, it writes every dirty key. After
    /// `IDLE_AFTER` without anything to write it sleeps until a seal, a
    /// request or the interval wakes it: an idle store costs nothing, and
    /// a busy one pays no wake-up per seal.
    pub(crate) fn run_flusher(&self) {
        const IDLE_AFTER: Duration = Duration::from_secs(1);
        let ticking = !self.flush_delay.is_zero();
        let mut next_full = Instant::now() + self.interval;
        let mut next_tick: Option<Instant> = None;
        let mut last_work = Instant::now();
        let mut s = self.sched.lock();
        loop {
            if s.stop {
                return;
            }
            let now = Instant::now();
            let full = s.full || now >= next_full;
            let sealed = !s.sealed.is_empty();
            let tick = next_tick.is_some_and(|t| now >= t);
            // A caller waiting (`urgent`) gets a round even with nothing
            // sealed: the key it sealed may be in the round running when it
            // asked (its seal then queued nothing), and it waits for a round
            // that starts after that one.
            if !(full || s.urgent || sealed && (tick || !ticking)) {
                if ticking {
                    if sealed && next_tick.is_none() {
                        // The first seal after idling: wait one delay for
                        // the keys sealed with it.
                        next_tick = Some(now + self.flush_delay);
                    } else if tick {
                        if now.duration_since(last_work) >= IDLE_AFTER {
                            s.idle = true;
                            next_tick = None;
                        } else {
                            next_tick = Some(now + self.flush_delay);
                        }
                    }
                } else {
                    s.idle = true;
                }
                let wake = next_tick.map_or(next_full, |t| t.min(next_full));
                self.wake.wait_until(&mut s, wake);
                continue;
            }
            let keys = std::mem::take(&mut s.sealed);
            s.urgent = false;
            s.full = false;
            s.idle = false;
            s.started += 1;
            drop(s);
            let which = if full { Which::All } else { Which::Keys(keys) };
            let started = Instant::now();
            let result = self.round(which, false, None).map(|_| ());
            last_work = Instant::now();
            self.counters.flush_rounds.fetch_add(1, Ordering::Relaxed);
            self.counters.flush_nanos.fetch_add(
                u64::try_from(last_work.duration_since(started).as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            if full {
                next_full = last_work + self.interval;
            }
            if ticking {
                next_tick = Some(last_work + self.flush_delay);
            }
            s = self.sched.lock();
            s.done += 1;
            self.round_done.notify_all();
            if let Err(e) = result {
                if matches!(e, Error::Poisoned(_)) || self.check_poison().is_err() {
                    s.stop = true;
                    return;
                }
                tracing::error!(error = %e, "flush round failed");
            }
        }
    }

    pub(crate) fn stop_flusher(&self) {
        let mut s = self.sched.lock();
        s.stop = true;
        self.wake.notify_all();
        self.round_done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Durability};
    use crate::error::Error;
    use crate::ids::{ConversationId, MessageId, Timestamp, UserId};
    use crate::store::Store;

    const C: ConversationId = ConversationId(1);
    const ALICE: UserId = UserId(1);
    const BOB: UserId = UserId(2);

    /// A store whose flusher never runs on its own: rounds happen only when
    /// a test asks for them.
    fn store(dir: &std::path::Path, durability: Durability) -> Store {
        let config = Config::new()
            .durability(durability)
            .flush_interval(std::time::Duration::from_secs(3600));
        let store = Store::open(dir, config).unwrap();
        store.create_conversation(C).unwrap();
        for u in [ALICE, BOB] {
            store.add_member(C, u, Timestamp(0)).unwrap();
        }
        for m in 1..=50 {
            store
                .record_message(C, MessageId(m), ALICE, Timestamp(m))
                .unwrap();
        }
        store.flush().unwrap();
        store
    }

    /// Invariant of §8: an acknowledged `ProcessCrash` update is in its
    /// journal slot until a flush has written it to RocksDB, and the slot
    /// is given back then, not before.
    #[test]
    fn a_slot_is_held_from_the_first_update_until_the_flush_writes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), Durability::ProcessCrash);
        let w = &store.writer;
        let slots = w.journal.in_use();
        for m in 1..=50 {
            store
                .mark_read(C, BOB, MessageId(m), Timestamp(100 + m))
                .unwrap();
        }
        assert_eq!(
            w.journal.in_use(),
            slots + 1,
            "one slot per key, not per update"
        );
        assert_eq!(w.combiner.dirty(), 1);
        let stored = store.view().stored_mark(C, BOB).unwrap();
        assert!(stored.mark.is_none_or(|m| m.up_to < MessageId(50)));
        w.flush_key(C.0, BOB.0).unwrap();
        assert_eq!(w.journal.in_use(), slots, "released once written");
        assert_eq!(w.combiner.dirty(), 0);
        let stored = store.view().stored_mark(C, BOB).unwrap();
        assert_eq!(stored.mark.map(|m| m.up_to), Some(MessageId(50)));
    }

    /// `Memory` updates never touch the journal: the buffer alone holds
    /// them until a flush.
    #[test]
    fn memory_updates_take_no_slot() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), Durability::Memory);
        let slots = store.writer.journal.in_use();
        store
            .mark_read(C, BOB, MessageId(7), Timestamp(100))
            .unwrap();
        assert_eq!(store.writer.journal.in_use(), slots);
        assert_eq!(store.writer.combiner.dirty(), 1);
        store.flush().unwrap();
        assert_eq!(store.writer.combiner.dirty(), 0);
    }

    /// A failed journal write poisons the writer: the failing update and
    /// every later one are refused, reads still answer, and the state
    /// before the failure is intact.
    #[test]
    fn a_failed_journal_write_poisons_every_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), Durability::ProcessCrash);
        store
            .mark_read(C, BOB, MessageId(10), Timestamp(100))
            .unwrap();
        store.writer.journal.fail_after(0, libc::EIO);
        assert!(matches!(
            store.mark_read(C, BOB, MessageId(20), Timestamp(101)),
            Err(Error::Poisoned(_) | Error::Io(_))
        ));
        assert!(matches!(
            store.mark_read(C, ALICE, MessageId(30), Timestamp(102)),
            Err(Error::Poisoned(_))
        ));
        assert!(matches!(store.flush(), Err(Error::Poisoned(_))));
        assert_eq!(store.mark(C, BOB).unwrap().unwrap().up_to, MessageId(10));
    }
}
