//! The newest recorded message of each conversation, in memory: the bound
//! a read mark is clamped to (`docs/design.md` §4.4).
//!
//! A mark names a position, and nobody can have read past the newest
//! message: a receipt for an id above it (a buggy or hostile client, a
//! race with a send not yet recorded) is clamped to it, so it cannot make
//! every later message read for good. The clamp runs on every
//! `mark_read`, so the bound is kept here rather than read from the
//! conversation record: a read lock and a hash lookup on the hot path,
//! one point read of the record on a miss.
//!
//! `record_message` raises a conversation's entry after its write lands
//! (under the conversation's stripe lock), so a mark made after a send
//! returned is never clamped below that send. A miss is filled from the
//! record; a shard over its capacity is cleared, and a fill that raced
//! with a clear is dropped (the shard's generation changed), so an entry
//! is never lower than a message recorded before the entry was read.

use parking_lot::RwLock;
use rustc_hash::FxHashMap;

/// Shards of the map (a power of two).
const SHARDS: usize = 64;

struct Shard {
    newest: FxHashMap<u64, Option<u64>>,
    /// Bumped by every clear: a fill read before it is stale.
    generation: u64,
}

pub(crate) struct Newest {
    shards: Box<[RwLock<Shard>]>,
    per_shard: usize,
}

impl Newest {
    /// A map of at most about `capacity` conversations.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        newest: FxHashMap::default(),
                        generation: 0,
                    })
                })
                .collect(),
            per_shard: (capacity / SHARDS).max(16),
        }
    }

    fn shard(&self, conversation: u64) -> &RwLock<Shard> {
        // Fibonacci hashing: consecutive ids spread over the shards.
        let h = conversation.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
        &self.shards[usize::try_from(h).unwrap_or(0) % SHARDS]
    }

    /// The newest message of `conversation` (`None`: none yet), or the
    /// generation to pass to [`fill`](Newest::fill) after reading the record.
    pub(crate) fn get(&self, conversation: u64) -> Result<Option<u64>, u64> {
        let s = self.shard(conversation).read();
        s.newest.get(&conversation).copied().ok_or(s.generation)
    }

    /// Records what the conversation record said (read after `get`
    /// returned `generation`), unless the shard was cleared since.
    pub(crate) fn fill(&self, conversation: u64, newest: Option<u64>, generation: u64) {
        let mut s = self.shard(conversation).write();
        if s.generation == generation {
            self.insert(&mut s, conversation, newest);
        }
    }

    /// A message was recorded (its write has landed).
    pub(crate) fn raise(&self, conversation: u64, message: u64) {
        let mut s = self.shard(conversation).write();
        self.insert(&mut s, conversation, Some(message));
    }

    fn insert(&self, s: &mut Shard, conversation: u64, newest: Option<u64>) {
        if s.newest.len() >= self.per_shard && !s.newest.contains_key(&conversation) {
            s.newest.clear();
            s.generation += 1;
        }
        let e = s.newest.entry(conversation).or_insert(newest);
        *e = (*e).max(newest);
    }
}

#[cfg(test)]
mod tests {
    use super::Newest;

    #[test]
    fn raise_keeps_the_max_and_a_fill_after_a_clear_is_dropped() {
        let n = Newest::new(0); // 16 per shard
        assert_eq!(n.get(1), Err(0));
        n.raise(1, 5);
        n.raise(1, 3);
        assert_eq!(n.get(1), Ok(Some(5)));
        let Err(generation) = n.get(2) else {
            panic!("2 is not there")
        };
        // Fill one shard past its capacity: it is cleared.
        let same_shard: Vec<u64> = (3..100_000)
            .filter(|&c| std::ptr::eq(n.shard(c), n.shard(2)))
            .take(40)
            .collect();
        for &c in &same_shard {
            n.raise(c, 1);
        }
        n.fill(2, Some(7), generation);
        assert!(n.get(2).is_err(), "a fill read before a clear is stale");
    }
}
