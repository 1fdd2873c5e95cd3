//! The change log (`changes`: conversation | seq → reader): written in the
//! same RocksDB batch as the marks it records, so it is exactly as durable
//! and survives restart with them. Its sequence counter is reserved in
//! blocks in `meta` (see `docs/design.md` §12.5).

use std::sync::Arc;

use byteorder::{BigEndian, ByteOrder};
use parking_lot::Mutex;
use rocksdb::{DB, WriteBatch};

use super::receipts::Clock;
use super::{Cf, corrupt};
use crate::error::{Error, Result, storage};
use crate::pure::keys;
use crate::pure::records::ChangeRecord;

/// Key of the change-log sequence reservation in `meta`: every sequence
/// number ever handed out is below the stored value.
pub(crate) const CHANGE_SEQ_KEY: &[u8] = b"change_seq";

/// Sequence numbers reserved per synced write of [`CHANGE_SEQ_KEY`].
pub(crate) const CHANGE_SEQ_BLOCK: u64 = 1 << 20;

/// The change-log sequence and the clock it is stamped with.
pub(crate) struct ChangeLog {
    state: Mutex<LogState>,
    clock: Arc<Clock>,
}

/// Sequence numbers are assigned (stamped with a non-decreasing time) when
/// a batch is built and become *written* when it lands; cursors pin only
/// written ones, so a walk never passes a change that has yet to land.
/// Numbers come from a block reserved durably in `meta` before any is used
/// (`reserved`), and every open starts above the stored reservation: a
/// batch lost to a power loss (single-key flushes are not synced) or never
/// written (a failed write) leaves a gap, never a number handed out twice,
/// so no cursor pinned before a crash can skip a change made after it.
#[derive(Default)]
struct LogState {
    assigned: u64,
    stamp: u64,
    written: u64,
    /// The stamp of the batch that wrote `written`: every change after it
    /// is stamped no earlier.
    written_stamp: u64,
    reserved: u64,
}

fn reserve(db: &DB, upto: u64) -> Result<()> {
    let meta = db
        .cf_handle(Cf::Meta.name())
        .ok_or(Error::InvalidArgument("no meta column family"))?;
    let mut o = rocksdb::WriteOptions::default();
    o.set_sync(true);
    db.put_cf_opt(meta, CHANGE_SEQ_KEY, upto.to_be_bytes(), &o)
        .map_err(storage)?;
    Ok(())
}

impl ChangeLog {
    pub(crate) fn open(db: &DB, clock: Arc<Clock>) -> Result<Self> {
        let meta = db
            .cf_handle(Cf::Meta.name())
            .ok_or(Error::InvalidArgument("no meta column family"))?;
        let seq = match db.get_pinned_cf(meta, CHANGE_SEQ_KEY).map_err(storage)? {
            Some(v) if v.len() == 8 => BigEndian::read_u64(&v),
            Some(_) => {
                return Err(corrupt(
                    Cf::Meta,
                    CHANGE_SEQ_KEY,
                    "change sequence is not 8 bytes",
                ));
            }
            None => 0,
        };
        let reserved = seq.saturating_add(CHANGE_SEQ_BLOCK);
        reserve(db, reserved)?;
        let now = clock.now();
        Ok(Self {
            state: Mutex::new(LogState {
                assigned: seq,
                written: seq,
                stamp: now,
                written_stamp: now,
                reserved,
            }),
            clock,
        })
    }

    /// The newest written sequence and a time no later than the stamp of
    /// any change after it (invariant 25): now, if no batch is in flight.
    pub(crate) fn pin(&self) -> (u64, u64) {
        let mut s = self.state.lock();
        if s.assigned == s.written {
            s.stamp = s.stamp.max(self.clock.now());
            s.written_stamp = s.stamp;
        }
        (s.written, s.written_stamp)
    }

    /// The last sequence assigned. Stable while the flush lock is held.
    pub(crate) fn assigned(&self) -> u64 {
        self.state.lock().assigned
    }

    /// The batch holding every assigned sequence has landed.
    pub(crate) fn mark_written(&self) {
        let mut s = self.state.lock();
        s.written = s.assigned;
        s.written_stamp = s.stamp;
    }

    /// The next sequence number, for a flushed advance: it goes into the
    /// mark itself (`MarkState::changed`), not into a row. Called with the
    /// flush lock held (or by the replay at open).
    pub(crate) fn next(&self, db: &DB) -> Result<u64> {
        let mut s = self.state.lock();
        s.stamp = s.stamp.max(self.clock.now());
        Self::assign(db, &mut s)
    }

    fn assign(db: &DB, s: &mut LogState) -> Result<u64> {
        if s.assigned >= s.reserved {
            let next = s.reserved.saturating_add(CHANGE_SEQ_BLOCK);
            reserve(db, next)?;
            s.reserved = next;
        }
        s.assigned += 1;
        Ok(s.assigned)
    }

    /// Adds structural changes (a join, a leave, a privacy change) to
    /// `batch`: `(conversation, reader)` rows in the conversation's log,
    /// listed again (or as hidden) to the other members. Called with the
    /// flush lock held, so batches carrying sequences are written in
    /// sequence order.
    pub(crate) fn append_rows(
        &self,
        db: &DB,
        rows: impl Iterator<Item = (u64, u64)>,
        batch: &mut WriteBatch,
    ) -> Result<()> {
        let conv_log = db
            .cf_handle(Cf::Changes.name())
            .ok_or(Error::InvalidArgument("column family missing"))?;
        let mut s = self.state.lock();
        s.stamp = s.stamp.max(self.clock.now());
        for (c, u) in rows {
            let seq = Self::assign(db, &mut s)?;
            let rec = ChangeRecord {
                id: u,
                written_at: s.stamp,
            };
            batch.put_cf(conv_log, keys::pair_key(c, seq), rec.encode());
        }
        Ok(())
    }
}
