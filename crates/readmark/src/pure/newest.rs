//! The newest recorded message of each conversation, in memory: the bound
//! a read mark is clamped to (`docs/design.md` §3.1).
//!
//! A mark names a position, and nobody can have read past the newest
//! message: a receipt for an id above it (a buggy or hostile client, a
//! race with a send not yet recorded) is clamped to it, so it cannot make
//! every later message read for good. The clamp runs on every
//! `mark_read`, whose whole cost is about 100 ns, so the bound is read
//! without a lock: a direct-mapped table of seqlocked slots (two plain
//! loads of the sequence around the fields), one point read of the
//! conversation record on a miss.
//!
//! **Writers.** A slot is written only under the stripe lock of the
//! conversation it holds, and every conversation that maps to a slot maps
//! to the same stripe (the slot index is [`lock_hash`] modulo a multiple
//! of the stripe count, and the stripe is the same hash modulo the stripe
//! count; a thread's hash keeps its conversation's stripe), so a slot has
//! one writer at a time.
//! `record_message` raises its conversation's slot after its write lands,
//! under that lock, and a miss is filled from the record read under that
//! lock: a slot never holds less than a message whose send returned
//! before it was read. Another conversation may take the slot over (a
//! later miss refills it); nothing is ever wrong, only slower.

use crate::pure::sync::{AtomicU64, Ordering, fence};

/// Slots (40 bytes each: 10 MiB), room for about this many busy
/// conversations.
pub(crate) const SLOTS: usize = 1 << 18;

/// `state` values (0: the slot was never written).
const NO_MESSAGE: u64 = 1;
const HAS_MESSAGE: u64 = 2;

/// `window` value: the conversation has no event window of its own.
const NO_WINDOW: u64 = u64::MAX;

struct Slot {
    /// Odd while a writer is in the slot.
    seq: AtomicU64,
    conversation: AtomicU64,
    state: AtomicU64,
    newest: AtomicU64,
    /// The conversation's own event window in ms, or `NO_WINDOW`: read by
    /// `mark_read` when someone subscribes, so it lives with the bound.
    window: AtomicU64,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            seq: AtomicU64::new(0),
            conversation: AtomicU64::new(0),
            state: AtomicU64::new(0),
            newest: AtomicU64::new(0),
            window: AtomicU64::new(0),
        }
    }
}

pub(crate) struct Newest {
    slots: Box<[Slot]>,
}

/// A conversation's hash: its lock stripe and slot ([`lock_hash`]), and
/// what its thread ids carry in their low 16 bits
/// (`store::threads::thread_id`).
#[inline]
pub(crate) fn stripe_hash(conversation: u64) -> u64 {
    conversation.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
}

/// The bits of a thread id that hold its conversation's [`stripe_hash`].
pub(crate) const THREAD_STRIPE_MASK: u64 = 0xFFFF;

/// The hash that picks both a timeline's lock stripe
/// (`store::Store::stripe`: `h % stripes`) and its slot here (`h % slots`):
/// the two agree whenever the stripe count divides the slot count, so a
/// slot's writers all hold one lock. A conversation's is its
/// [`stripe_hash`]; a thread's keeps its conversation's low 16 bits (the
/// stripe, as the stripe count divides 2^16) under bits of its own (which
/// spread its slots).
#[inline]
pub(crate) fn lock_hash(timeline: u64) -> u64 {
    if timeline & crate::ids::THREAD_BIT == 0 {
        stripe_hash(timeline)
    } else {
        (stripe_hash(timeline) << 16) | (timeline & THREAD_STRIPE_MASK)
    }
}

impl Newest {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::with_slots(SLOTS)
    }

    /// A table of `slots` slots: [`SLOTS`] in a store, a multiple of the
    /// stripe count as the argument above needs (the `testing` feature's
    /// `Config::__newest_slots` makes it smaller, the loom tests use two).
    pub(crate) fn with_slots(slots: usize) -> Self {
        Self {
            slots: (0..slots.max(1)).map(|_| Slot::default()).collect(),
        }
    }

    #[inline]
    fn slot(&self, conversation: u64) -> &Slot {
        #[allow(clippy::cast_possible_truncation)]
        let i = (lock_hash(conversation) as usize) % self.slots.len();
        &self.slots[i]
    }

    /// A consistent read of the slot if it holds `conversation`:
    /// (state, newest, window).
    #[inline]
    fn read(&self, conversation: u64) -> Option<(u64, u64, u64)> {
        let s = self.slot(conversation);
        let before = s.seq.load(Ordering::Acquire);
        if before & 1 == 1 {
            return None;
        }
        let (c, state, newest, window) = (
            s.conversation.load(Ordering::Relaxed),
            s.state.load(Ordering::Relaxed),
            s.newest.load(Ordering::Relaxed),
            s.window.load(Ordering::Relaxed),
        );
        fence(Ordering::Acquire);
        if s.seq.load(Ordering::Relaxed) != before || c != conversation {
            return None;
        }
        Some((state, newest, window))
    }

    /// The newest message of `conversation` (`Some(None)`: none yet), or
    /// `None` if the slot holds something else (read the record and
    /// [`set`](Newest::set) it, under the conversation's stripe lock).
    #[inline]
    pub(crate) fn get(&self, conversation: u64) -> Option<Option<u64>> {
        match self.read(conversation)? {
            (NO_MESSAGE, _, _) => Some(None),
            (HAS_MESSAGE, newest, _) => Some(Some(newest)),
            _ => None,
        }
    }

    /// The conversation's own event window in ms (`Some(None)`: it has
    /// none), or `None` on a miss (as [`get`](Newest::get)).
    pub(crate) fn window(&self, conversation: u64) -> Option<Option<u64>> {
        match self.read(conversation)? {
            (NO_MESSAGE | HAS_MESSAGE, _, NO_WINDOW) => Some(None),
            (NO_MESSAGE | HAS_MESSAGE, _, w) => Some(Some(w)),
            _ => None,
        }
    }

    /// Records what the conversation record says, or a message just
    /// recorded, with the conversation's event window. The caller holds
    /// the conversation's stripe lock (the only writer of the slot); a
    /// newest message below what the slot already says for the same
    /// conversation is ignored.
    pub(crate) fn set(&self, conversation: u64, newest: Option<u64>, window: Option<u32>) {
        let s = self.slot(conversation);
        let newest = match (self.get(conversation), newest) {
            (Some(Some(had)), Some(n)) => Some(had.max(n)),
            (Some(Some(had)), None) => Some(had),
            (_, n) => n,
        };
        let seq = s.seq.load(Ordering::Relaxed);
        s.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        s.conversation.store(conversation, Ordering::Relaxed);
        s.state.store(
            if newest.is_some() {
                HAS_MESSAGE
            } else {
                NO_MESSAGE
            },
            Ordering::Relaxed,
        );
        s.newest.store(newest.unwrap_or(0), Ordering::Relaxed);
        s.window
            .store(window.map_or(NO_WINDOW, u64::from), Ordering::Relaxed);
        s.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{Newest, SLOTS, stripe_hash};

    /// Post-mortem (review of the threads change): thread ids took slots by
    /// a hash of their whole id, so a thread's slot could belong to another
    /// stripe than the lock its writers hold, and two writers could tear a
    /// slot. A thread's slot and stripe now follow its conversation's.
    #[test]
    fn regression_a_threads_slot_belongs_to_its_conversations_stripe() {
        let stripes = 64u64;
        let slots = SLOTS as u64;
        for c in [0u64, 1, 7, 12_345, (1 << 63) - 1] {
            for counter in [0u64, 1, 99, (1 << 47) - 1] {
                let t = crate::ids::THREAD_BIT
                    | (counter << 16)
                    | (stripe_hash(c) & super::THREAD_STRIPE_MASK);
                let (hc, ht) = (super::lock_hash(c), super::lock_hash(t));
                assert_eq!(ht % stripes, hc % stripes, "stripe of {t:#x}");
                assert_eq!((ht % slots) % stripes, hc % stripes, "slot of {t:#x}");
            }
        }
    }

    #[test]
    fn set_keeps_the_max_and_a_collision_is_a_miss() {
        let n = Newest::new();
        assert_eq!(n.get(1), None);
        n.set(1, None, None);
        assert_eq!(n.get(1), Some(None));
        n.set(1, Some(5), None);
        n.set(1, Some(3), None);
        n.set(1, None, None); // a stale fill
        assert_eq!(n.get(1), Some(Some(5)));
        n.set(7, Some(u64::MAX), None);
        assert_eq!(n.get(7), Some(Some(u64::MAX)));
        // Another conversation in the same slot takes it over.
        let other = (2..u64::MAX)
            .find(|&c| stripe_hash(c) % SLOTS as u64 == stripe_hash(1) % SLOTS as u64)
            .unwrap();
        n.set(other, Some(9), None);
        assert_eq!(n.get(1), None);
        assert_eq!(n.get(other), Some(Some(9)));
        // The window is the record's, replaced by each set.
        assert_eq!(n.window(1), None);
        n.set(1, Some(5), Some(0));
        assert_eq!((n.get(1), n.window(1)), (Some(Some(5)), Some(Some(0))));
        n.set(1, Some(6), None);
        assert_eq!((n.get(1), n.window(1)), (Some(Some(6)), Some(None)));
    }

    #[test]
    fn readers_never_see_a_torn_slot() {
        // One writer hands a slot back and forth between two conversations:
        // `a` always with even values, `b` with odd ones. A reader that
        // mixed one's id with the other's value would see the wrong parity.
        let n = Newest::new();
        let a = 3;
        let b = (4..u64::MAX)
            .find(|&c| stripe_hash(c) % SLOTS as u64 == stripe_hash(a) % SLOTS as u64)
            .unwrap();
        let rounds = 100_000u64;
        std::thread::scope(|s| {
            s.spawn(|| {
                for k in 0..rounds {
                    n.set(a, Some(2 * k), None);
                    n.set(b, Some(2 * k + 1), None);
                }
            });
            s.spawn(|| {
                let mut last = 0;
                for i in 0..4 * rounds {
                    let (c, parity) = if i % 2 == 0 { (a, 0) } else { (b, 1) };
                    if let Some(Some(v)) = n.get(c) {
                        assert_eq!(v % 2, parity, "torn read of {c}");
                        if c == a {
                            assert!(v >= last, "went backwards");
                            last = v;
                        }
                    }
                }
            });
        });
        // Not a timing assertion: the values are settled after the writer.
        assert_eq!(n.get(b), Some(Some(2 * rounds - 1)));
        assert_eq!(n.get(a), None);
    }
}
