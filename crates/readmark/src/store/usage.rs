//! What the store occupies, and compaction on demand.

use std::ops::ControlFlow;
use std::path::Path;

use super::{Cf, Store};
use crate::error::{Result, storage};
use crate::ids::ConversationId;

/// Disk use of one of the store's tables (a RocksDB column family), from
/// RocksDB's own estimates.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// store.create_conversation(ConversationId(1))?;
/// store.compact()?;
/// let usage = store.disk_usage()?;
/// for t in &usage.tables {
///     println!("{}: {} SST bytes, {} in memtables, ~{} keys", t.name, t.sst_bytes, t.memtable_bytes, t.estimated_keys);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableUsage {
    /// The table's name (`marks`, `receipts`, `read_times`, ...; the list
    /// is in `docs/design.md` §2).
    pub name: &'static str,
    /// Bytes of its live SST files (`rocksdb.live-sst-files-size`): what
    /// it holds on disk once flushed, not counting the write-ahead log.
    pub sst_bytes: u64,
    /// Bytes in its memtables, not yet in SST files
    /// (`rocksdb.cur-size-all-mem-tables`).
    pub memtable_bytes: u64,
    /// Estimated keys (`rocksdb.estimate-num-keys`; merge operands and
    /// deletions make it approximate until a compaction).
    pub estimated_keys: u64,
}

/// Disk use of a store, per table; see [`Store::disk_usage`].
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// store.create_conversation(ConversationId(1))?;
/// store.compact()?;
/// let usage = store.disk_usage()?;
/// assert!(usage.sst_bytes() > 0 && usage.journal_bytes > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiskUsage {
    /// Every table, in a fixed order.
    pub tables: Vec<TableUsage>,
    /// Bytes of the journal's slot file (preallocated: its size follows
    /// [`Config::journal_bytes`](crate::Config::journal_bytes), not the load).
    pub journal_bytes: u64,
}

impl DiskUsage {
    /// The table called `name`, if there is one.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// store.create_conversation(ConversationId(1))?;
    /// store.compact()?;
    /// let usage = store.disk_usage()?;
    /// assert_eq!(usage.table("conversations").map(|t| t.estimated_keys), Some(1));
    /// assert!(usage.table("no such table").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn table(&self, name: &str) -> Option<&TableUsage> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Live SST bytes of every table.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// store.create_conversation(ConversationId(1))?;
    /// store.compact()?;
    /// let usage = store.disk_usage()?;
    /// assert_eq!(usage.sst_bytes(), usage.tables.iter().map(|t| t.sst_bytes).sum::<u64>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn sst_bytes(&self) -> u64 {
        self.tables.iter().map(|t| t.sst_bytes).sum()
    }
}

/// Memory the store holds, by owner; see [`Store::memory_usage`].
///
/// RocksDB's parts are its own accounting (`rocksdb.size-all-mem-tables`,
/// `rocksdb.estimate-table-readers-mem`, the block cache's usage). Their
/// ceilings follow the [`Config`](crate::Config): the block cache holds
/// at most [`Config::block_cache_bytes`](crate::Config::block_cache_bytes)
/// (index and filter blocks included), and the memtables stay near the
/// write-ahead log's cap, four times
/// [`Config::write_buffer_bytes`](crate::Config::write_buffer_bytes),
/// since RocksDB flushes the column families that pin the oldest log file
/// past it. The process's resident size adds the allocator's own slack,
/// the journal's mapped pages and thread stacks to these.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Config::new().block_cache_bytes(8 << 20))?;
/// store.create_conversation(ConversationId(1))?;
/// let m = store.memory_usage()?;
/// assert!(m.block_cache_bytes <= 8 << 20);
/// assert!(m.memtable_bytes > 0);
/// assert_eq!(m.rocksdb_bytes(), m.memtable_bytes + m.table_reader_bytes + m.block_cache_bytes);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryUsage {
    /// Bytes of every column family's memtables, the active one and those
    /// waiting to be flushed.
    pub memtable_bytes: u64,
    /// Bytes of open SST readers held outside the block cache (with the
    /// index and filter blocks in the cache, a few KiB per file).
    pub table_reader_bytes: u64,
    /// Bytes charged to the block cache (data, index and filter blocks).
    pub block_cache_bytes: u64,
    /// Of those, bytes pinned by readers right now.
    pub block_cache_pinned_bytes: u64,
    /// Keys the write-combining buffer holds, about 224 bytes each (its
    /// bound is [`Config::combiner_max_bytes`](crate::Config::combiner_max_bytes)).
    pub buffered_keys: u64,
}

impl MemoryUsage {
    /// What RocksDB holds: memtables, table readers and the block cache.
    #[must_use]
    pub fn rocksdb_bytes(&self) -> u64 {
        self.memtable_bytes + self.table_reader_bytes + self.block_cache_bytes
    }
}

/// The per-message receipt bitsets of one conversation; see
/// [`Store::receipt_usage`].
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// # let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
/// # store.create_conversation(c)?;
/// # store.add_member(c, alice, Timestamp(0))?;
/// # store.add_member(c, bob, Timestamp(0))?;
/// store.record_message(c, MessageId(1), alice, Timestamp::now())?;
/// store.mark_viewed(c, bob, MessageId(1), Timestamp::now())?;
/// store.flush()?;
/// let r = store.receipt_usage(c)?;
/// assert_eq!(r.bitsets, 1);
/// assert!(r.bytes > 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiptUsage {
    /// Messages with a stored bitset.
    pub bitsets: u64,
    /// Bytes of those bitsets' values, merged as a reader sees them.
    pub bytes: u64,
}

impl Store {
    /// Bytes of the store's files on disk (RocksDB files and journal).
    ///
    /// # Errors
    ///
    /// [`Error::Io`](crate::Error::Io) if the directory cannot be read.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new())?;
    /// assert!(store.disk_bytes()? > 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn disk_bytes(&self) -> Result<u64> {
        fn walk(p: &Path) -> std::io::Result<u64> {
            let mut n = 0;
            for e in std::fs::read_dir(p)? {
                let e = e?;
                // RocksDB deletes obsolete files while we walk.
                let md = match e.metadata() {
                    Ok(md) => md,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(err),
                };
                n += if md.is_dir() {
                    walk(&e.path())?
                } else {
                    md.len()
                };
            }
            Ok(n)
        }
        Ok(walk(&self.path)?)
    }

    /// Disk use per table, from RocksDB's estimates. Cheap: no table is
    /// read. Call [`compact`](Store::compact) first for exact figures.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`](crate::Error::Storage) if RocksDB cannot report
    /// a property; [`Error::Io`](crate::Error::Io) if the journal file
    /// cannot be read.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new())?;
    /// store.create_conversation(ConversationId(1))?;
    /// store.add_member(ConversationId(1), UserId(7), Timestamp(0))?;
    /// store.compact()?;
    /// let usage = store.disk_usage()?;
    /// assert!(usage.table("members").is_some_and(|t| t.sst_bytes > 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let mut tables = Vec::with_capacity(Cf::ALL.len());
        for cf in Cf::ALL {
            let int = |p: &str| self.cf_property(cf, p);
            tables.push(TableUsage {
                name: cf.name(),
                sst_bytes: int("rocksdb.live-sst-files-size")?,
                memtable_bytes: int("rocksdb.cur-size-all-mem-tables")?,
                estimated_keys: int("rocksdb.estimate-num-keys")?,
            });
        }
        let journal =
            crate::pure::journal::slot_path(&self.path.join(crate::pure::journal::JOURNAL_DIR));
        let journal_bytes = match std::fs::metadata(journal) {
            Ok(md) => md.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(DiskUsage {
            tables,
            journal_bytes,
        })
    }

    /// An integer property of one column family (0 where RocksDB has none).
    fn cf_property(&self, cf: Cf, property: &str) -> Result<u64> {
        Ok(self
            .db
            .property_int_value_cf(self.cf(cf), property)
            .map_err(storage)?
            .unwrap_or(0))
    }

    /// Memory held by RocksDB and the write-combining buffer, from their
    /// own accounting; cheap (no table is read). For an operator's
    /// dashboard, and the soak's check that memory stays bounded.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`](crate::Error::Storage) if RocksDB cannot report
    /// a property.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new())?;
    /// println!("RocksDB holds {} bytes", store.memory_usage()?.rocksdb_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn memory_usage(&self) -> Result<MemoryUsage> {
        let mut m = MemoryUsage::default();
        for cf in Cf::ALL {
            let int = |p: &str| self.cf_property(cf, p);
            m.memtable_bytes += int("rocksdb.size-all-mem-tables")?;
            m.table_reader_bytes += int("rocksdb.estimate-table-readers-mem")?;
        }
        m.block_cache_bytes = self.block_cache.get_usage() as u64;
        m.block_cache_pinned_bytes = self.block_cache.get_pinned_usage() as u64;
        m.buffered_keys = self.writer.combiner.entries() as u64;
        Ok(m)
    }

    /// The per-message receipt bitsets stored for `conversation` and their
    /// size: what [`Store::set_receipt_threshold`] trades against marks. It
    /// reads every bitset of the conversation (one range scan).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`](crate::Error::Storage) if the scan fails.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new())?;
    /// let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
    /// store.create_conversation(c)?;
    /// store.add_member(c, alice, Timestamp(0))?;
    /// store.add_member(c, bob, Timestamp(0))?;
    /// // Bitsets are kept for recent messages only (Config::receipt_retention).
    /// let now = Timestamp::now();
    /// store.record_message(c, MessageId(1), alice, now)?;
    /// store.mark_viewed(c, bob, MessageId(1), now)?;
    /// store.flush()?;
    /// assert_eq!(store.receipt_usage(c)?.bitsets, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receipt_usage(&self, conversation: ConversationId) -> Result<ReceiptUsage> {
        super::threads::check_public(conversation)?;
        let view = self.snapshot_view();
        let (mut bitsets, mut bytes) = (0u64, 0u64);
        view.scan_prefix(Cf::Receipts, conversation.0, 0, |_, v| {
            bitsets += 1;
            bytes += v.len() as u64;
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(ReceiptUsage { bitsets, bytes })
    }

    /// Flushes every table's memtable and compacts it fully, so merge
    /// operands are folded and the retention filters drop what has expired
    /// ([`Config::receipt_retention`](crate::Config::receipt_retention),
    /// [`Config::change_retention`](crate::Config::change_retention)).
    /// RocksDB compacts in the background anyway; this is for operators
    /// reclaiming space now, and for exact [`disk_usage`](Store::disk_usage)
    /// figures. It blocks until done and rewrites every table: on a large
    /// store, minutes of I/O. Marks still in the write-combining buffer are
    /// not in any table: call [`flush`](Store::flush) first to include
    /// them. RocksDB reports no error from a manual compaction; a failed
    /// one surfaces as a background error on later writes.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`](crate::Error::Storage) if a memtable flush fails.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new())?;
    /// store.compact()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compact(&self) -> Result<()> {
        for cf in Cf::ALL {
            self.db.flush_cf(self.cf(cf)).map_err(storage)?;
            let mut o = rocksdb::CompactOptions::default();
            o.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
            self.db
                .compact_range_cf_opt(self.cf(cf), None::<&[u8]>, None::<&[u8]>, &o);
        }
        Ok(())
    }
}
