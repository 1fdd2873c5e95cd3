//! Whitebox hooks for readmark's own tests, fuzz targets and benches,
//! compiled only with the `testing` feature: never part of the supported
//! API, so they may change in any release. What users need of them is real
//! API ([`Store::compact`], [`Store::disk_usage`],
//! [`Store::receipt_usage`]).

#![allow(missing_docs)]

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Cf, Store};
use crate::error::{Result, storage};
use crate::ids::{ConversationId, MessageId, Timestamp, UserId};
use crate::pure::keys;

#[doc(hidden)]
impl Store {
    /// Testing hook: waits until at least `n` flushes happened since open.
    #[doc(hidden)]
    pub fn __wait_for_flushes(&self, n: u64, timeout: Duration) -> bool {
        self.writer.wait_rounds(n, timeout)
    }

    /// Testing hook: drops the store the way a process crash would. The
    /// write-combining buffer is not flushed (Memory-level updates are lost);
    /// the journal's mapped pages and RocksDB's write-ahead log stay, as the
    /// page cache keeps them when a process dies.
    #[doc(hidden)]
    pub fn __simulate_crash(self) {
        self.closed.store(true, Ordering::Release);
        drop(self);
    }

    /// Testing hook (fault injection): the `ops`-th journal operation from
    /// now (copy write or fsync; 0 = the next one) fails with the
    /// OS error `errno` (`libc::ENOSPC` for a full disk, `libc::EIO`, ...).
    #[doc(hidden)]
    pub fn __fail_journal_after(&self, ops: u64, errno: i32) {
        self.writer.journal.fail_after(ops, errno);
    }

    /// Testing hook: flushes observed since open.
    #[doc(hidden)]
    pub fn __flush_count(&self) -> u64 {
        self.writer.rounds_done()
    }

    /// Testing hook: the slots set in `message`'s stored bitset (whatever
    /// its age), so tests can check the bitset alone without the marks.
    #[doc(hidden)]
    pub fn __receipt_slots(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<Vec<(UserId, bool)>> {
        let view = self.snapshot_view();
        let bits = view.bitset(conversation, message)?;
        let mut out = Vec::new();
        view.for_each_member(conversation, |user, member, _| {
            if let Some(s) = member.slot {
                out.push((user, bits.contains(s)));
            }
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Testing hook: whether a bitset record exists for `message`.
    #[doc(hidden)]
    pub fn __has_receipt_record(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<bool> {
        Ok(self
            .view()
            .get_raw(Cf::Receipts, &keys::message_key(conversation, message))?
            .is_some())
    }

    /// Testing hook: writes `operand` verbatim as a merge operand of
    /// `message`'s bitset, so tests can show a malformed operand is skipped
    /// and counted.
    #[doc(hidden)]
    pub fn __merge_raw_receipt_operand(
        &self,
        conversation: ConversationId,
        message: MessageId,
        operand: &[u8],
    ) -> Result<()> {
        self.db
            .merge_cf(
                self.cf(Cf::Receipts),
                keys::message_key(conversation, message),
                operand,
            )
            .map_err(storage)?;
        Ok(())
    }

    /// Testing hook: fixes the clock retention is measured against
    /// (`None`: the system clock).
    #[doc(hidden)]
    pub fn __set_clock(&self, now: Option<Timestamp>) {
        self.clock.set(now);
    }

    /// Testing hook: writes `operand` verbatim as a merge operand of the
    /// mark of (`conversation`, `user`), so tests can show that a malformed
    /// operand is skipped and counted. Not part of the API.
    #[doc(hidden)]
    pub fn __merge_raw_mark_operand(
        &self,
        conversation: ConversationId,
        user: UserId,
        operand: &[u8],
    ) -> Result<()> {
        self.db
            .merge_cf(
                self.cf(Cf::Marks),
                keys::member_key(conversation, user),
                operand,
            )
            .map_err(storage)?;
        Ok(())
    }
}

impl crate::Config {
    /// Testing hook: a newest-message table of `stripes` times the lock
    /// stripe count slots, instead of 2^18 (10 MiB zeroed at every open).
    /// Only speed changes: a slot shared by more conversations misses more.
    #[doc(hidden)]
    pub fn __newest_slots(mut self, stripes: usize) -> Self {
        self.newest_slots = stripes.max(1) * super::LOCK_STRIPES;
        self
    }

    /// Testing hook: the retention clock fixed at `now` from the moment
    /// the store opens, as `Store::__set_clock` fixes it afterwards.
    /// Setting it after `open` leaves a window in which a compaction that
    /// RocksDB starts while opening drops the test's read times as
    /// expired by today's clock.
    #[doc(hidden)]
    pub fn __clock(mut self, now: crate::Timestamp) -> Self {
        self.fixed_clock = now.0.max(1);
        self
    }
}
