//! The write-combining buffer: the newest mark state per (conversation,
//! user) since the last flush, sharded by conversation.
//!
//! A burst of scroll updates to one key becomes one entry whose state is the
//! join of all of them, so a flush writes one merge operand per key however
//! many updates arrived. Entries of one conversation live in one shard, in
//! a `BTreeMap`, so the pending marks of a conversation are one range read
//! (for read-your-writes on "read by" and "all marks"). Nothing here touches
//! RocksDB or the journal: the store drives both around it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::mark::MarkState;

/// Number of shards; a shard is picked by conversation.
const SHARDS: usize = 64;

/// A buffered key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Join of every update since the last flush of this key.
    pub(crate) state: MarkState,
    /// Updates combined into this entry.
    pub(crate) updates: u32,
}

/// Outcome of [`Combiner::add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Added<T> {
    /// What `under_lock` returned.
    pub(crate) value: T,
    /// The key was already buffered (this update was combined away).
    pub(crate) combined: bool,
    /// Updates now in the entry.
    pub(crate) updates: u32,
    /// Keys buffered in all shards after the add.
    pub(crate) keys: usize,
}

type Shard = BTreeMap<(u64, u64), Pending>;

/// The buffer.
pub(crate) struct Combiner {
    shards: Box<[Mutex<Shard>]>,
    keys: AtomicUsize,
}

impl Default for Combiner {
    fn default() -> Self {
        Self::new()
    }
}

impl Combiner {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(BTreeMap::new())).collect(),
            keys: AtomicUsize::new(0),
        }
    }

    fn shard(&self, conversation: u64) -> &Mutex<Shard> {
        let h = conversation.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        #[allow(clippy::cast_possible_truncation)]
        &self.shards[(h as usize) % SHARDS]
    }

    /// Joins `state` into the entry of (`conversation`, `user`). `under_lock`
    /// runs while the shard is locked, before the entry changes: the store
    /// appends to the journal there, so an update is in the journal and in
    /// the buffer together or in neither, and a flush that copies this
    /// shard after rotating the journal sees every update whose frame went
    /// to the segment it is about to retire. If `under_lock` fails, nothing
    /// changes.
    pub(crate) fn add<T, E>(
        &self,
        conversation: u64,
        user: u64,
        state: MarkState,
        under_lock: impl FnOnce() -> Result<T, E>,
    ) -> Result<Added<T>, E> {
        let mut shard = self.shard(conversation).lock();
        let value = under_lock()?;
        let (combined, updates) = match shard.get_mut(&(conversation, user)) {
            Some(p) => {
                p.state = p.state.join(state);
                p.updates = p.updates.saturating_add(1);
                (true, p.updates)
            }
            None => {
                shard.insert((conversation, user), Pending { state, updates: 1 });
                (false, 1)
            }
        };
        let keys = if combined {
            self.keys.load(Ordering::Relaxed)
        } else {
            self.keys.fetch_add(1, Ordering::Relaxed) + 1
        };
        Ok(Added {
            value,
            combined,
            updates,
            keys,
        })
    }

    /// Whether (`conversation`, `user`) is buffered.
    pub(crate) fn contains(&self, conversation: u64, user: u64) -> bool {
        self.shard(conversation)
            .lock()
            .contains_key(&(conversation, user))
    }

    /// The buffered state of one key.
    pub(crate) fn peek(&self, conversation: u64, user: u64) -> Option<MarkState> {
        self.shard(conversation)
            .lock()
            .get(&(conversation, user))
            .map(|p| p.state)
    }

    /// The buffered states of one conversation, in user order.
    pub(crate) fn pending_in(&self, conversation: u64) -> Vec<(u64, MarkState)> {
        self.shard(conversation)
            .lock()
            .range((conversation, 0)..=(conversation, u64::MAX))
            .map(|(&(_, u), p)| (u, p.state))
            .collect()
    }

    /// Every buffered entry, copied (entries stay buffered, and visible to
    /// reads, until [`remove_if_unchanged`](Combiner::remove_if_unchanged)
    /// after they are written).
    pub(crate) fn snapshot(&self) -> Vec<((u64, u64), MarkState)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().iter().map(|(&k, p)| (k, p.state)));
        }
        out
    }

    /// Removes each key whose buffered state is still the one given (it was
    /// written); a key updated since keeps its entry, whose state includes
    /// what was written (the join only grows), for the next flush. Returns
    /// the number removed.
    pub(crate) fn remove_if_unchanged(&self, written: &[((u64, u64), MarkState)]) -> usize {
        let mut removed = 0;
        for &((c, u), state) in written {
            let mut shard = self.shard(c).lock();
            if shard.get(&(c, u)).is_some_and(|p| p.state == state) {
                shard.remove(&(c, u));
                removed += 1;
            }
        }
        self.keys.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Keys buffered now.
    pub(crate) fn keys(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MessageId, Timestamp};
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Add(u64, u64, u64, u64),
        Take(u64, u64),
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u64..4, 0u64..4, 0u64..50, 0u64..5).prop_map(|(c, u, m, t)| Op::Add(c, u, m, t)),
            1 => (0u64..4, 0u64..4).prop_map(|(c, u)| Op::Take(c, u)),
            1 => Just(Op::Drain),
        ]
    }

    proptest! {
        /// Against a `BTreeMap` model: the buffered state is the join of the
        /// updates since the key was last taken, and what is taken or
        /// drained plus what stays equals the model's total.
        #[test]
        fn combiner_matches_model(ops in proptest::collection::vec(op(), 1..200)) {
            let c = Combiner::new();
            let mut model: BTreeMap<(u64, u64), (MarkState, u32)> = BTreeMap::new();
            let mut flushed_model: BTreeMap<(u64, u64), MarkState> = BTreeMap::new();
            let mut flushed: BTreeMap<(u64, u64), MarkState> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Add(conv, user, m, t) => {
                        let s = MarkState::from_mark(MessageId(m), Timestamp(t));
                        let added = c.add(conv, user, s, || Ok::<_, ()>(())).unwrap();
                        let e = model.entry((conv, user)).or_insert((MarkState::default(), 0));
                        prop_assert_eq!(added.combined, e.1 > 0);
                        e.0 = e.0.join(s);
                        e.1 += 1;
                        prop_assert_eq!(added.updates, e.1);
                    }
                    Op::Take(conv, user) => {
                        // A single-key flush: copy, "write", remove.
                        let got = c.peek(conv, user);
                        let want = model.remove(&(conv, user));
                        prop_assert_eq!(got, want.map(|w| w.0));
                        if let Some(s) = got {
                            prop_assert_eq!(c.remove_if_unchanged(&[((conv, user), s)]), 1);
                            let f = flushed.entry((conv, user)).or_default();
                            *f = f.join(s);
                        }
                        if let Some((s, _)) = want {
                            let f = flushed_model.entry((conv, user)).or_default();
                            *f = f.join(s);
                        }
                    }
                    Op::Drain => {
                        let all = c.snapshot();
                        prop_assert_eq!(c.remove_if_unchanged(&all), all.len());
                        for (k, s) in all {
                            let f = flushed.entry(k).or_default();
                            *f = f.join(s);
                        }
                        for (k, (s, _)) in std::mem::take(&mut model) {
                            let f = flushed_model.entry(k).or_default();
                            *f = f.join(s);
                        }
                    }
                }
                prop_assert_eq!(c.keys(), model.len());
                for (&(conv, user), &(s, _)) in &model {
                    prop_assert_eq!(c.peek(conv, user), Some(s));
                }
                prop_assert_eq!(&flushed, &flushed_model);
            }
        }
    }

    #[test]
    fn failed_under_lock_changes_nothing() {
        let c = Combiner::new();
        let s = MarkState::from_mark(MessageId(1), Timestamp(1));
        assert!(c.add(1, 1, s, || Err::<(), _>("journal full")).is_err());
        assert_eq!(c.keys(), 0);
        assert_eq!(c.peek(1, 1), None);
    }

    #[test]
    fn an_entry_updated_during_its_flush_stays_buffered() {
        let c = Combiner::new();
        let s1 = MarkState::from_mark(MessageId(1), Timestamp(1));
        c.add(1, 1, s1, || Ok::<_, ()>(())).unwrap();
        let copied = c.snapshot();
        let s2 = MarkState::from_mark(MessageId(2), Timestamp(2));
        c.add(1, 1, s2, || Ok::<_, ()>(())).unwrap();
        assert_eq!(c.remove_if_unchanged(&copied), 0);
        assert_eq!(c.peek(1, 1), Some(s1.join(s2)));
    }

    #[test]
    fn pending_in_is_one_conversation_in_user_order() {
        let c = Combiner::new();
        for (conv, user) in [(2, 9), (1, 5), (2, 3), (3, 1)] {
            c.add(
                conv,
                user,
                MarkState::from_mark(MessageId(user), Timestamp(0)),
                || Ok::<_, ()>(()),
            )
            .unwrap();
        }
        let users: Vec<u64> = c.pending_in(2).into_iter().map(|(u, _)| u).collect();
        assert_eq!(users, vec![3, 9]);
    }
}
