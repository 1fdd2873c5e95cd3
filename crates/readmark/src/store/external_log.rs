//! A store fed from an external replicated log (a JetStream stream, a Kafka
//! topic): the log's position recorded atomically with the marks it
//! covers, and checkpoints a new owner of the log can start from
//! (docs/design.md §17, docs/cluster.md).
//!
//! The log is the durable copy, so such a store runs at
//! [`Durability::Memory`](crate::Durability::Memory) and its applier calls
//! [`Store::flush_at`] every so often. After a crash it reopens, reads
//! [`Store::log_position`] and replays the log after it. Replaying what
//! was already applied is harmless: marks merge by max and receipt bits by
//! OR, and the structural operations (membership, messages) set state
//! rather than add to it.

use std::path::Path;

use byteorder::{BigEndian, ByteOrder};

use super::{Cf, Store, corrupt};
use crate::error::{Result, storage};

/// `meta` key of the external log's position: 8 bytes, big-endian.
pub(crate) const LOG_POSITION_KEY: &[u8] = b"log_position";

impl Store {
    /// Writes every buffered update to RocksDB, as [`flush`](Store::flush)
    /// does, and records `position` (the external log's sequence of the
    /// last entry applied) in the same RocksDB batch as the last of them:
    /// once RocksDB holds the position it holds every update made before
    /// the call. Returns `false`, recording nothing, if an update stays
    /// buffered (a mark ahead of a message not written yet): the previous
    /// position stands, and a replay from it loses nothing.
    ///
    /// # Errors
    ///
    /// As [`flush`](Store::flush).
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Durability, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().durability(Durability::Memory))?;
    /// # let (c, u) = (ConversationId(1), UserId(1));
    /// # store.create_conversation(c)?;
    /// # store.add_member(c, u, Timestamp(0))?;
    /// # store.add_member(c, UserId(2), Timestamp(0))?;
    /// # store.record_message(c, MessageId(5), UserId(2), Timestamp(1))?;
    /// store.mark_read(c, u, MessageId(5), Timestamp(2))?; // log entry 41
    /// assert!(store.flush_at(41)?);
    /// assert_eq!(store.log_position()?, Some(41));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush_at(&self, position: u64) -> Result<bool> {
        self.writer.flush_all_at(LOG_POSITION_KEY, position)
    }

    /// The position the last successful [`flush_at`](Store::flush_at)
    /// recorded, or `None` if none did.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`](crate::Error::Storage) if RocksDB fails;
    /// [`Error::Corrupt`](crate::Error::Corrupt) if the value
    /// is not 8 bytes.
    pub fn log_position(&self) -> Result<Option<u64>> {
        match self
            .db
            .get_pinned_cf(self.cf(Cf::Meta), LOG_POSITION_KEY)
            .map_err(storage)?
        {
            None => Ok(None),
            Some(v) if v.len() == 8 => Ok(Some(BigEndian::read_u64(&v))),
            Some(_) => Err(corrupt(
                Cf::Meta,
                LOG_POSITION_KEY,
                "log position is not 8 bytes",
            )),
        }
    }

    /// Flushes as [`flush_at`](Store::flush_at) does, then writes a
    /// RocksDB checkpoint of the store into `dir` (which must not exist):
    /// hard links to the table files where `dir` is on the same file
    /// system, copies elsewhere. [`Store::open`] opens it as a store whose
    /// [`log_position`](Store::log_position) is `position` (or older, if
    /// an update stayed buffered). The journal is not part of it: after
    /// the flush nothing acknowledged is only in the journal.
    ///
    /// # Errors
    ///
    /// As [`flush`](Store::flush); [`Error::Storage`](crate::Error::Storage) if RocksDB cannot
    /// write the checkpoint (`dir` exists, a full disk).
    pub fn checkpoint_at(&self, position: u64, dir: impl AsRef<Path>) -> Result<bool> {
        let positioned = self.flush_at(position)?;
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(storage)?;
        cp.create_checkpoint(dir.as_ref()).map_err(storage)?;
        Ok(positioned)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Durability};
    use crate::ids::{ConversationId, MessageId, Timestamp, UserId};
    use crate::store::Store;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(dir, Config::new().durability(Durability::Memory)).unwrap()
    }

    #[test]
    fn the_position_lands_with_the_marks_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (c, u) = (ConversationId(1), UserId(1));
        {
            let s = store(dir.path());
            assert_eq!(s.log_position().unwrap(), None);
            s.create_conversation(c).unwrap();
            s.add_member(c, u, Timestamp(0)).unwrap();
            s.add_member(c, UserId(2), Timestamp(0)).unwrap();
            s.record_message(c, MessageId(5), UserId(2), Timestamp(1))
                .unwrap();
            s.mark_read(c, u, MessageId(5), Timestamp(2)).unwrap();
            assert!(s.flush_at(7).unwrap());
            // Nothing buffered: the position still moves.
            assert!(s.flush_at(8).unwrap());
            s.close().unwrap();
        }
        let s = store(dir.path());
        assert_eq!(s.log_position().unwrap(), Some(8));
        assert_eq!(s.mark(c, u).unwrap().unwrap().up_to, MessageId(5));
    }

    #[test]
    fn a_mark_still_buffered_keeps_the_old_position() {
        use crate::pure::mark::MarkState;
        use crate::store::writer::Verified;
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let (c, u) = (ConversationId(1), UserId(1));
        s.create_conversation(c).unwrap();
        s.add_member(c, u, Timestamp(0)).unwrap();
        s.add_member(c, UserId(2), Timestamp(0)).unwrap();
        s.record_message(c, MessageId(5), UserId(2), Timestamp(1))
            .unwrap();
        assert!(s.flush_at(3).unwrap());
        // A sender's own advance to a message not written yet (between a
        // send's journaling and its write) stays buffered: RocksDB must
        // not claim a position covering it.
        let joined_seq = s.view().require_member(c, u).unwrap().joined_seq;
        s.writer
            .apply(
                c.0,
                u.0,
                MarkState::from_mark(MessageId(9), Timestamp(2)),
                Durability::Memory,
                Some(Verified {
                    joined_seq,
                    base: None,
                }),
                false,
            )
            .unwrap();
        assert!(!s.flush_at(4).unwrap());
        assert_eq!(s.log_position().unwrap(), Some(3));
        s.record_message(c, MessageId(9), UserId(2), Timestamp(3))
            .unwrap();
        assert!(s.flush_at(5).unwrap());
        assert_eq!(s.log_position().unwrap(), Some(5));
    }

    #[test]
    fn a_checkpoint_opens_as_a_store_at_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join("cp");
        let (c, u) = (ConversationId(1), UserId(1));
        {
            let s = store(&dir.path().join("db"));
            s.create_conversation(c).unwrap();
            s.add_member(c, u, Timestamp(0)).unwrap();
            s.add_member(c, UserId(2), Timestamp(0)).unwrap();
            s.record_message(c, MessageId(5), UserId(2), Timestamp(1))
                .unwrap();
            s.mark_read(c, u, MessageId(5), Timestamp(2)).unwrap();
            assert!(s.checkpoint_at(12, &cp).unwrap());
            // Later updates are not in the checkpoint.
            s.record_message(c, MessageId(6), UserId(2), Timestamp(3))
                .unwrap();
            s.mark_read(c, u, MessageId(6), Timestamp(4)).unwrap();
            s.close().unwrap();
        }
        let s = store(&cp);
        assert_eq!(s.log_position().unwrap(), Some(12));
        assert_eq!(s.mark(c, u).unwrap().unwrap().up_to, MessageId(5));
    }
}
