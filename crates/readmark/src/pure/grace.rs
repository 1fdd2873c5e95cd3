//! Reader registration for the write-combining buffer's evictions (see
//! [`Grace`]). Pure atomics: `pure/loom_tests.rs` checks it, with the
//! flush-then-evict protocol around it, under every interleaving.

use crate::pure::sync::{AtomicU64, AtomicUsize, Ordering};

/// Reader registration that lets the flusher evict clean entries without a
/// lock readers wait for (an RCU-style grace period with two counters).
///
/// A view registers in the current epoch for its whole life. An entry that
/// became clean while the epoch was `e` may leave the buffer once the epoch
/// is `e + 2`: the flusher advances the epoch only when every view of the
/// epoch before the current one has ended, so by then every view alive
/// started after the entry's write had landed in RocksDB, and reads it
/// there. Readers never wait; the flusher never waits either (it tries
/// again at its next round).
pub(crate) struct Grace {
    epoch: AtomicU64,
    readers: [AtomicUsize; 2],
}

impl Default for Grace {
    fn default() -> Self {
        Self {
            epoch: AtomicU64::new(0),
            readers: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    }
}

/// A registered reader; unregisters on drop.
pub(crate) struct GraceGuard<'a> {
    grace: &'a Grace,
    parity: usize,
}

impl Grace {
    pub(crate) fn enter(&self) -> GraceGuard<'_> {
        loop {
            let e = self.epoch.load(Ordering::SeqCst);
            #[allow(clippy::cast_possible_truncation)]
            let parity = (e & 1) as usize;
            self.readers[parity].fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == e {
                return GraceGuard {
                    grace: self,
                    parity,
                };
            }
            // The epoch moved between the load and the registration: the
            // flusher may already have checked this counter. Try again.
            self.readers[parity].fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Moves to the next epoch if every reader of the previous one has
    /// left. One caller at a time (the flush lock).
    pub(crate) fn try_advance(&self) -> bool {
        let e = self.epoch.load(Ordering::SeqCst);
        #[allow(clippy::cast_possible_truncation)]
        let previous = ((e + 1) & 1) as usize;
        // A read-modify-write, not a load: it reads the counter's latest
        // value, and if a reader registers after it, this (a release)
        // synchronizes with that registration (an acquire), so the
        // reader's snapshot sees every write the flusher made before this
        // check. A plain load relies on SeqCst's single order, which loom
        // does not model and which RocksDB's own (release/acquire)
        // publication of a write is not part of; found by
        // `loom_tests::loom_a_reader_sees_every_acknowledged_update_across_flush_and_eviction`.
        if self.readers[previous].fetch_add(0, Ordering::SeqCst) != 0 {
            return false;
        }
        self.epoch.store(e + 1, Ordering::SeqCst);
        true
    }
}

impl Drop for GraceGuard<'_> {
    fn drop(&mut self) {
        self.grace.readers[self.parity].fetch_sub(1, Ordering::SeqCst);
    }
}
