//! The write-combining buffer: per (conversation, user), the join of every
//! update since the key was last written, what the store knows RocksDB
//! holds for it, and its journal slot. Sharded by conversation.
//!
//! A burst of scroll updates to one key becomes one entry whose state is the
//! join of all of them, so a flush writes one merge operand per key however
//! many updates arrived. After the flush the entry stays, *clean*, as a
//! cache of the stored mark: the next visit plans its receipts, tells an
//! advance from a no-op and finds the mark an event starts from without
//! reading RocksDB. Clean entries are evicted under memory pressure.
//! Entries of one conversation live in one shard, in a `BTreeMap`, so the
//! buffered marks of a conversation are one range read (read-your-writes
//! for "read by" and "all marks"). Nothing here touches RocksDB or the
//! journal: the store drives both around it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::pure::mark::MarkState;

/// Number of shards; a shard is picked by conversation.
pub(crate) const SHARDS: usize = 1024;

/// One buffered key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Entry {
    /// The join of every update since the entry was created, and of
    /// `base` once known: what reads see, on top of RocksDB.
    pub(crate) state: MarkState,
    /// Exactly what RocksDB holds for the key, once the store knows it (it
    /// read it, or wrote it): the store is the only writer of its marks.
    pub(crate) base: Option<MarkState>,
    /// The member record's `joined_seq` the updates were checked against.
    pub(crate) joined_seq: u64,
    /// The journal slot holding `state` (or an earlier state) while the
    /// key has journaled updates not yet written to RocksDB.
    pub(crate) slot: Option<u32>,
    /// The slot copy the next journal write goes to.
    pub(crate) copy: u8,
    /// The slot's newest copy holds `state`.
    pub(crate) journaled: bool,
    /// Sequence number of the slot's newest copy (the next is one more).
    pub(crate) last_seq: u64,
    /// Updates joined since the entry was last clean (the count trigger).
    pub(crate) updates: u32,
    /// Bumped by every update that changed `state` or wrote the journal: a
    /// flush that copied version `v` makes the entry clean only if it is
    /// still `v` when the write has landed.
    pub(crate) version: u64,
    /// Something is not yet in RocksDB (or a slot is still held).
    pub(crate) dirty: bool,
    /// Queued for the flusher (the user left the conversation, or the
    /// count trigger fired).
    pub(crate) sealed: bool,
    /// An update acknowledged at `PowerLoss` is in the entry: the batch
    /// that writes it must be synced before the slot is given back.
    pub(crate) needs_sync: bool,
    /// The grace epoch at which the entry last became clean (eviction).
    pub(crate) clean_epoch: u64,
}

/// A shard: its entries by (conversation, user).
pub(crate) type Shard = rustc_hash::FxHashMap<(u64, u64), Entry>;

/// The buffer.
pub(crate) struct Combiner {
    shards: Box<[Mutex<Shard>]>,
    entries: AtomicUsize,
    dirty: AtomicUsize,
    /// Entries that went from clean (or new) to dirty: updates that did
    /// not join a key already waiting to be written.
    dirtied: AtomicU64,
}

impl Default for Combiner {
    fn default() -> Self {
        Self::new()
    }
}

impl Combiner {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            entries: AtomicUsize::new(0),
            dirty: AtomicUsize::new(0),
            dirtied: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn shard_of(conversation: u64) -> usize {
        let h = conversation.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        #[allow(clippy::cast_possible_truncation)]
        let i = (h as usize) % SHARDS;
        i
    }

    /// Locks the shard of `conversation`. Lock order: a stripe lock of the
    /// store, the flush lock, then at most one shard at a time.
    pub(crate) fn lock(&self, conversation: u64) -> MutexGuard<'_, Shard> {
        self.shards[Self::shard_of(conversation)].lock()
    }

    /// Inserts a new entry (the caller checked it is absent).
    pub(crate) fn insert(&self, shard: &mut Shard, key: (u64, u64), entry: Entry) {
        if entry.dirty {
            self.dirty.fetch_add(1, Ordering::Relaxed);
            self.dirtied.fetch_add(1, Ordering::Relaxed);
        }
        self.entries.fetch_add(1, Ordering::Relaxed);
        shard.insert(key, entry);
    }

    /// Removes an entry; returns it.
    pub(crate) fn remove(&self, shard: &mut Shard, key: (u64, u64)) -> Option<Entry> {
        let e = shard.remove(&key)?;
        if e.dirty {
            self.dirty.fetch_sub(1, Ordering::Relaxed);
        }
        self.entries.fetch_sub(1, Ordering::Relaxed);
        Some(e)
    }

    /// Sets an entry's dirty flag, keeping the count.
    pub(crate) fn set_dirty(&self, entry: &mut Entry, dirty: bool) {
        match (entry.dirty, dirty) {
            (false, true) => {
                self.dirty.fetch_add(1, Ordering::Relaxed);
                self.dirtied.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.dirty.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        entry.dirty = dirty;
    }

    /// Whether (`conversation`, `user`) has an entry.
    #[cfg(test)]
    pub(crate) fn contains(&self, conversation: u64, user: u64) -> bool {
        self.lock(conversation).contains_key(&(conversation, user))
    }

    /// The state reads join with RocksDB's value for one key.
    pub(crate) fn peek(&self, conversation: u64, user: u64) -> Option<MarkState> {
        self.lock(conversation)
            .get(&(conversation, user))
            .map(|e| e.state)
    }

    /// The entries' states of one conversation, in user order.
    pub(crate) fn pending_in(&self, conversation: u64) -> Vec<(u64, MarkState)> {
        let mut out: Vec<(u64, MarkState)> = self
            .lock(conversation)
            .iter()
            .filter(|&(&(c, _), _)| c == conversation)
            .map(|(&(_, u), e)| (u, e.state))
            .collect();
        out.sort_unstable_by_key(|&(u, _)| u);
        out
    }

    /// Keys with something to write, in all shards.
    pub(crate) fn dirty_keys(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(self.dirty());
        for shard in self.shards.iter() {
            out.extend(
                shard
                    .lock()
                    .iter()
                    .filter(|(_, e)| e.dirty)
                    .map(|(&k, _)| k),
            );
        }
        out
    }

    /// Keys with something to write in one conversation.
    pub(crate) fn dirty_in(&self, conversation: u64) -> Vec<(u64, u64)> {
        self.lock(conversation)
            .iter()
            .filter(|&(&(c, _), e)| c == conversation && e.dirty)
            .map(|(&k, _)| k)
            .collect()
    }

    /// Removes clean entries that became clean at grace epoch `before - 2`
    /// or earlier (no reader that could need them is left, see
    /// `pure::grace::Grace`), until at most `keep` entries remain.
    /// Returns how many were removed.
    pub(crate) fn evict_clean(&self, epoch: u64, keep: usize) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            if self.entries() <= keep {
                break;
            }
            let mut s = shard.lock();
            let before = s.len();
            s.retain(|_, e| e.dirty || e.clean_epoch.saturating_add(2) > epoch);
            let n = before - s.len();
            self.entries.fetch_sub(n, Ordering::Relaxed);
            removed += n;
        }
        removed
    }

    /// Entries now (clean and dirty).
    pub(crate) fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// Entries with something to write.
    pub(crate) fn dirty(&self) -> usize {
        self.dirty.load(Ordering::Relaxed)
    }

    /// Clean-to-dirty transitions since the buffer was made.
    pub(crate) fn dirtied(&self) -> u64 {
        self.dirtied.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MessageId, Timestamp};

    fn mark(m: u64) -> MarkState {
        MarkState::from_mark(MessageId(m), Timestamp(m))
    }

    #[test]
    fn counts_follow_inserts_flags_and_removals() {
        let c = Combiner::new();
        for u in 0..10 {
            let mut s = c.lock(1);
            c.insert(
                &mut s,
                (1, u),
                Entry {
                    state: mark(u),
                    dirty: u % 2 == 0,
                    ..Entry::default()
                },
            );
        }
        assert_eq!((c.entries(), c.dirty()), (10, 5));
        assert_eq!(c.dirty_keys().len(), 5);
        assert_eq!(c.dirty_in(1).len(), 5);
        assert!(c.dirty_in(2).is_empty());
        {
            let mut s = c.lock(1);
            let mut e = s[&(1, 1)];
            c.set_dirty(&mut e, true);
            s.insert((1, 1), e);
            c.remove(&mut s, (1, 0));
        }
        assert_eq!((c.entries(), c.dirty()), (9, 5));
        assert_eq!(c.peek(1, 3), Some(mark(3)));
        assert_eq!(c.peek(1, 0), None);
    }

    #[test]
    fn eviction_keeps_dirty_and_recently_cleaned_entries() {
        let c = Combiner::new();
        for u in 0..6u64 {
            let mut s = c.lock(u);
            c.insert(
                &mut s,
                (u, u),
                Entry {
                    dirty: u == 0,
                    clean_epoch: u,
                    ..Entry::default()
                },
            );
        }
        // At epoch 5, entries cleaned at epochs 1, 2, 3 are old enough.
        assert_eq!(c.evict_clean(5, 0), 3);
        let left: Vec<u64> = (0..6).filter(|&u| c.contains(u, u)).collect();
        assert_eq!(left, vec![0, 4, 5]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Update(u64, u64, u64),
        Clean(u64, u64, u64),
        Remove(u64, u64),
        Evict(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0u64..4, 0u64..4, 0u64..50).prop_map(|(c, u, m)| Op::Update(c, u, m)),
            3 => (0u64..4, 0u64..4, 0u64..4).prop_map(|(c, u, e)| Op::Clean(c, u, e)),
            1 => (0u64..4, 0u64..4).prop_map(|(c, u)| Op::Remove(c, u)),
            1 => (0u64..8).prop_map(Op::Evict),
        ]
    }

    proptest::proptest! {
        /// The buffer against a `BTreeMap` of (state, dirty, clean_epoch):
        /// what the writer does to entries (update, clean after a flush,
        /// remove at a membership change, evict), and the counts and views
        /// the store reads, always agree with the model.
        #[test]
        fn combiner_matches_model(ops in proptest::collection::vec(op(), 1..200)) {
            use std::collections::BTreeMap;
            let c = Combiner::new();
            let mut model: BTreeMap<(u64, u64), (MarkState, bool, u64)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Update(conv, user, m) => {
                        let mut s = c.lock(conv);
                        let update = mark(m);
                        match s.get_mut(&(conv, user)) {
                            Some(e) => {
                                e.state.absorb(&update);
                                c.set_dirty(e, true);
                            }
                            None => c.insert(
                                &mut s,
                                (conv, user),
                                Entry { state: update, dirty: true, ..Entry::default() },
                            ),
                        }
                        let e = model.entry((conv, user)).or_insert((MarkState::default(), true, 0));
                        e.0 = e.0.join(update);
                        e.1 = true;
                    }
                    Op::Clean(conv, user, epoch) => {
                        let mut s = c.lock(conv);
                        if let Some(e) = s.get_mut(&(conv, user)) {
                            e.clean_epoch = epoch;
                            c.set_dirty(e, false);
                        }
                        if let Some(e) = model.get_mut(&(conv, user)) {
                            e.1 = false;
                            e.2 = epoch;
                        }
                    }
                    Op::Remove(conv, user) => {
                        let mut s = c.lock(conv);
                        proptest::prop_assert_eq!(
                            c.remove(&mut s, (conv, user)).map(|e| e.state),
                            model.remove(&(conv, user)).map(|e| e.0)
                        );
                    }
                    Op::Evict(epoch) => {
                        c.evict_clean(epoch, 0);
                        model.retain(|_, e| e.1 || e.2 + 2 > epoch);
                    }
                }
                proptest::prop_assert_eq!(c.entries(), model.len());
                proptest::prop_assert_eq!(c.dirty(), model.values().filter(|e| e.1).count());
                let mut dirty = c.dirty_keys();
                dirty.sort_unstable();
                let want: Vec<(u64, u64)> =
                    model.iter().filter(|(_, e)| e.1).map(|(&k, _)| k).collect();
                proptest::prop_assert_eq!(dirty, want);
                for conv in 0..4 {
                    let want: Vec<(u64, MarkState)> = model
                        .range((conv, 0)..=(conv, u64::MAX))
                        .map(|(&(_, u), e)| (u, e.0))
                        .collect();
                    proptest::prop_assert_eq!(c.pending_in(conv), want);
                }
            }
        }
    }

    #[test]
    fn pending_in_is_one_conversation_in_user_order() {
        let c = Combiner::new();
        for (conv, user) in [(2, 9), (1, 5), (2, 3), (3, 1)] {
            let mut s = c.lock(conv);
            c.insert(
                &mut s,
                (conv, user),
                Entry {
                    state: mark(user),
                    ..Entry::default()
                },
            );
        }
        let users: Vec<u64> = c.pending_in(2).into_iter().map(|(u, _)| u).collect();
        assert_eq!(users, vec![3, 9]);
    }
}
