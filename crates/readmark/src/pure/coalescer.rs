//! The per-subscription coalescing queue of real-time receipts: pending
//! receipts keyed by (conversation, reader), delivered as their windows
//! close, bounded. The store side (publishing, recipients) is in
//! `store::hub`.

use std::collections::{BTreeMap, VecDeque};

/// A coalesced, not yet delivered receipt of one (conversation, reader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Highest `up_to` published in the window.
    pub(crate) up_to: u64,
    /// Its read time (the earliest, at equal `up_to`, as marks merge).
    pub(crate) at: u64,
    /// The reader's mark before the window's first advance (`None`: had
    /// read nothing): the advance newly covers `(from, up_to]`.
    pub(crate) from: Option<u64>,
    /// When the window closes, on the queue's clock.
    pub(crate) due: u64,
    /// Tie-break of entries due at the same time: arrival order.
    pub(crate) arrival: u64,
    /// Advances joined into this entry.
    pub(crate) advances: u32,
}

/// What [`Coalescer::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// A new entry, due one window from now.
    Queued,
    /// Joined into the entry already waiting for this key.
    Coalesced,
    /// The queue was full and the key had no entry: counted, not kept.
    Dropped,
}

/// Pending receipts of one subscription, keyed by (conversation, reader),
/// delivered in the order their windows close (each entry has its
/// conversation's window, so that is not arrival order).
///
/// Bounded by `capacity` entries. An update for a key already queued joins
/// its entry (memory does not grow, and the entry keeps the newest mark);
/// an update for a new key while full is dropped and counted, and the
/// subscriber learns of it before its next event and catches up with the
/// change log. Times are plain `u64` ticks (the store uses nanoseconds since
/// the subscription started) so tests drive the clock.
#[derive(Debug)]
pub(crate) struct Coalescer {
    window: u64,
    capacity: usize,
    pending: rustc_hash::FxHashMap<(u64, u64), Pending>,
    /// Keys of entries with the queue's window, in arrival order, which is
    /// their due order: the common case costs a push.
    fifo: VecDeque<(u64, u64)>,
    /// Keys of entries with a window of their conversation's, by (due,
    /// arrival). The next to deliver is the earlier of the two fronts.
    own: BTreeMap<(u64, u64), (u64, u64)>,
    arrivals: u64,
    dropped: u64,
}

impl Coalescer {
    pub(crate) fn new(window: u64, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            pending: rustc_hash::FxHashMap::default(),
            fifo: VecDeque::new(),
            own: BTreeMap::new(),
            arrivals: 0,
            dropped: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    #[cfg(test)]
    pub(crate) fn push(
        &mut self,
        key: (u64, u64),
        up_to: u64,
        at: u64,
        from: Option<u64>,
        now: u64,
    ) -> Pushed {
        self.push_with(key, up_to, at, from, None, || now)
    }

    /// [`push`](Coalescer::push) with the conversation's own window
    /// (`None`: the queue's), reading the clock only when a new entry
    /// needs a deadline (a joined advance changes none).
    #[inline]
    pub(crate) fn push_with(
        &mut self,
        key: (u64, u64),
        up_to: u64,
        at: u64,
        from: Option<u64>,
        window: Option<u64>,
        now: impl FnOnce() -> u64,
    ) -> Pushed {
        if let Some(p) = self.pending.get_mut(&key) {
            if up_to > p.up_to || up_to == p.up_to && at < p.at {
                p.up_to = up_to;
                p.at = at;
            }
            // `None` (nothing read) is the lowest start.
            p.from = match (p.from, from) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
            p.advances = p.advances.saturating_add(1);
            return Pushed::Coalesced;
        }
        if self.pending.len() >= self.capacity {
            self.dropped = self.dropped.saturating_add(1);
            return Pushed::Dropped;
        }
        let due = now().saturating_add(window.unwrap_or(self.window));
        let arrival = self.arrivals;
        self.arrivals += 1;
        self.pending.insert(
            key,
            Pending {
                up_to,
                at,
                from,
                due,
                arrival,
                advances: 1,
            },
        );
        if window.is_some() {
            self.own.insert((due, arrival), key);
        } else {
            self.fifo.push_back(key);
        }
        Pushed::Queued
    }

    /// The next entry's (due, arrival), and whether it is in the FIFO.
    fn next(&self) -> Option<((u64, u64), bool)> {
        let fifo = self
            .fifo
            .front()
            .and_then(|k| self.pending.get(k))
            .map(|p| (p.due, p.arrival));
        let own = self.own.first_key_value().map(|(&k, _)| k);
        match (fifo, own) {
            (Some(f), Some(o)) if o < f => Some((o, false)),
            (Some(f), _) => Some((f, true)),
            (None, Some(o)) => Some((o, false)),
            (None, None) => None,
        }
    }

    /// When the next entry's window closes.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.next().map(|((due, _), _)| due)
    }

    /// The next entry if its window has closed at `now`.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<((u64, u64), Pending)> {
        if self.next_due()? > now {
            return None;
        }
        self.pop_front()
    }

    /// The next entry, window closed or not (a subscriber draining).
    pub(crate) fn pop_front(&mut self) -> Option<((u64, u64), Pending)> {
        let key = match self.next()? {
            (_, true) => self.fifo.pop_front()?,
            (_, false) => self.own.pop_first()?.1,
        };
        self.pending.remove(&key).map(|p| (key, p))
    }

    /// Counts `n` updates as dropped (popped, then not delivered).
    pub(crate) fn add_dropped(&mut self, n: u64) {
        self.dropped = self.dropped.saturating_add(n);
    }

    /// Updates dropped since the last call.
    pub(crate) fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn ten_advances_in_a_window_become_one_entry_with_the_newest_mark() {
        let mut q = Coalescer::new(2_000, 16);
        for i in 0..10u64 {
            let pushed = q.push((1, 7), 100 + i, 50 + i, Some(99), i * 150);
            assert_eq!(
                pushed,
                if i == 0 {
                    Pushed::Queued
                } else {
                    Pushed::Coalesced
                }
            );
        }
        assert_eq!(q.pop_due(1_999), None);
        let (key, p) = q.pop_due(2_000).expect("due");
        assert_eq!(key, (1, 7));
        assert_eq!((p.up_to, p.at, p.from, p.advances), (109, 59, Some(99), 10));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn full_queue_drops_new_keys_but_keeps_coalescing_queued_ones() {
        let mut q = Coalescer::new(10, 2);
        assert_eq!(q.push((1, 1), 5, 0, None, 0), Pushed::Queued);
        assert_eq!(q.push((1, 2), 5, 0, None, 0), Pushed::Queued);
        assert_eq!(q.push((1, 3), 5, 0, None, 0), Pushed::Dropped);
        assert_eq!(q.push((1, 1), 9, 1, None, 1), Pushed::Coalesced);
        assert_eq!(q.len(), 2);
        assert_eq!(q.take_dropped(), 1);
        assert_eq!(q.take_dropped(), 0);
        assert_eq!(q.pop_due(10).map(|(k, p)| (k, p.up_to)), Some(((1, 1), 9)));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push {
            key: (u64, u64),
            up_to: u64,
            at: u64,
            from: Option<u64>,
            /// The conversation's own window, if it has one.
            window: Option<u64>,
        },
        Tick(u64),
        Pop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (
                (0..3u64, 0..4u64),
                0..50u64,
                0..5u64,
                proptest::option::of(0..50u64),
                proptest::option::weighted(0.3, 0..25u64),
            )
                .prop_map(|(key, up_to, at, from, window)| Op::Push { key, up_to, at, from, window }),
            2 => (0..30u64).prop_map(Op::Tick),
            2 => Just(Op::Pop),
        ]
    }

    proptest! {
        /// Against a model that keeps, per key, the newest (up_to, at) and
        /// the lowest start: nothing is delivered before its window (the
        /// queue's, or the conversation's own) closes, nor before an entry
        /// due earlier, every delivery carries the model's newest state for
        /// its key, the
        /// queue never exceeds its capacity, and every update is delivered,
        /// joined into a delivery, or counted as dropped.
        #[test]
        fn coalescer_matches_model(ops in proptest::collection::vec(op(), 1..200), cap in 1..6usize) {
            let window = 10;
            let mut q = Coalescer::new(window, cap);
            // key -> (up_to, at, from, due)
            type Entry = (u64, u64, Option<u64>, u64);
            let mut model: BTreeMap<(u64, u64), Entry> = BTreeMap::new();
            let mut now = 0u64;
            let (mut pushed, mut delivered, mut dropped) = (0u64, 0u64, 0u64);
            for op in ops {
                match op {
                    Op::Push { key, up_to, at, from, window: own } => {
                        pushed += 1;
                        match q.push_with(key, up_to, at, from, own, || now) {
                            Pushed::Dropped => {
                                prop_assert!(!model.contains_key(&key));
                                prop_assert_eq!(model.len(), cap);
                                dropped += 1;
                            }
                            Pushed::Queued => {
                                let due = now + own.unwrap_or(window);
                                prop_assert!(model.insert(key, (up_to, at, from, due)).is_none());
                            }
                            Pushed::Coalesced => {
                                let m = model.get_mut(&key).expect("queued");
                                if (up_to, std::cmp::Reverse(at)) > (m.0, std::cmp::Reverse(m.1)) {
                                    m.0 = up_to;
                                    m.1 = at;
                                }
                                m.2 = match (m.2, from) { (Some(a), Some(b)) => Some(a.min(b)), _ => None };
                            }
                        }
                    }
                    Op::Tick(d) => now += d,
                    Op::Pop => {
                        if let Some((key, p)) = q.pop_due(now) {
                            let first = model.values().map(|m| m.3).min();
                            let m = model.remove(&key).expect("delivered a queued key");
                            prop_assert!(p.due <= now);
                            prop_assert_eq!(Some(p.due), first, "an entry due earlier waits");
                            prop_assert_eq!((p.up_to, p.at, p.from, p.due), (m.0, m.1, m.2, m.3));
                            delivered += u64::from(p.advances);
                        } else {
                            prop_assert!(model.values().all(|m| m.3 > now));
                        }
                    }
                }
                prop_assert!(q.len() <= cap);
                prop_assert_eq!(q.len(), model.len());
            }
            while let Some((_, p)) = q.pop_front() {
                delivered += u64::from(p.advances);
            }
            prop_assert_eq!(dropped, q.take_dropped());
            prop_assert_eq!(pushed, delivered + dropped);
        }
    }
}
