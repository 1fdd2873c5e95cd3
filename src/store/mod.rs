//! The RocksDB-backed store: opening, column families, the format version,
//! and the small helpers the operation modules share.
//!
//! Operations live next to their concept: [`conversations`] (membership and
//! the user index), [`messages`] (messages and unread counts), [`marks`]
//! (read marks, "read by", the unread flag).

mod conversations;
mod marks;
mod messages;
mod view;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use byteorder::{BigEndian, ByteOrder};
use parking_lot::{Mutex, MutexGuard};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch,
    WriteOptions, DB,
};

use crate::config::{Config, Durability};
use crate::error::{Error, Result};
use crate::ids::ConversationId;
use crate::merge::{adapter, MergeCounters};

pub use marks::{Page, ReadBy, ReadTime, Reader, ReceiptSource};
pub use messages::Unread;
pub(crate) use view::View;

/// The on-disk format this build reads and writes, stored in `meta` under
/// [`FORMAT_VERSION_KEY`] and checked on every open.
pub const FORMAT_VERSION: u32 = 1;
/// Key of the format version in the `meta` column family.
pub(crate) const FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// Number of per-conversation lock stripes guarding read-modify-write of
/// conversation records (membership, message ordinals).
const LOCK_STRIPES: usize = 64;

/// The column families, one per kind of record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cf {
    /// Store-wide metadata (format version).
    Meta,
    /// conversation → counts and last message.
    Conversations,
    /// (conversation, user) → membership record.
    Members,
    /// (user, conversation) → empty: the second membership index.
    UserConversations,
    /// (conversation, user) → read mark, merged by max.
    Marks,
    /// (conversation, message) → ordinal, sender, time, deleted flag.
    Messages,
    /// (conversation, message) → empty, one per deleted message.
    Deletions,
}

impl Cf {
    pub(crate) const ALL: [Cf; 7] = [
        Cf::Meta,
        Cf::Conversations,
        Cf::Members,
        Cf::UserConversations,
        Cf::Marks,
        Cf::Messages,
        Cf::Deletions,
    ];

    fn from_name(name: &str) -> Option<Cf> {
        Cf::ALL.iter().copied().find(|c| c.name() == name)
    }

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Conversations => "conversations",
            Cf::Members => "members",
            Cf::UserConversations => "user_conversations",
            Cf::Marks => "marks",
            Cf::Messages => "messages",
            Cf::Deletions => "deletions",
        }
    }
}

/// Counters a user can read with [`Store::stats`].
///
/// # Examples
///
/// ```
/// # use readmark::{Config, Store};
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Config::new())?;
/// assert_eq!(store.stats().malformed_operands, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// `mark_read` calls accepted (logical updates).
    pub mark_updates: u64,
    /// Times a merge skipped an input it could not decode (corruption or a
    /// foreign writer; the rest of the record is kept). One bad operand is
    /// counted each time a read or compaction meets it, until a compaction
    /// folds it away, so any non-zero value means "investigate".
    pub malformed_operands: u64,
}

/// A readmark store: read marks, membership, messages and unread counts on
/// one RocksDB database.
///
/// `Store` is `Send + Sync`; share it behind an `Arc`. Mark updates take no
/// lock of readmark's; membership and message writes take a per-conversation
/// lock stripe.
///
/// # Examples
///
/// ```
/// use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Config::new())?;
/// let (chat, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
/// store.create_conversation(chat)?;
/// store.add_member(chat, alice, Timestamp(0))?;
/// store.add_member(chat, bob, Timestamp(0))?;
/// store.record_message(chat, MessageId(100), alice, Timestamp(1))?;
/// store.record_message(chat, MessageId(101), alice, Timestamp(2))?;
/// assert_eq!(store.unread_count(chat, bob)?.count, 2);
/// store.mark_read(chat, bob, MessageId(100), Timestamp(3))?;
/// assert_eq!(store.unread_count(chat, bob)?.count, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Store {
    db: DB,
    path: PathBuf,
    config: Config,
    merge_counters: Arc<MergeCounters>,
    mark_updates: AtomicU64,
    locks: Box<[Mutex<()>]>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates, see [`Config::create_if_missing`]) the store in
    /// directory `path`.
    ///
    /// # Errors
    ///
    /// [`Error::UnsupportedFormat`] if the store was written by an
    /// incompatible version, [`Error::InvalidConfig`] for a bad `config`,
    /// [`Error::RocksDb`] if RocksDB cannot open it (missing with
    /// `create_if_missing(false)`, locked by another process, corrupt).
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new())?;
    /// store.close()?;
    /// let again = Store::open(dir.path(), Config::new().create_if_missing(false))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(path: impl AsRef<Path>, config: Config) -> Result<Store> {
        config.validate()?;
        let path = path.as_ref().to_path_buf();
        let mut db_opts = Options::default();
        db_opts.create_if_missing(config.create_if_missing);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);

        let merge_counters = Arc::new(MergeCounters::default());
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let existing = if path.join("CURRENT").exists() {
            DB::list_cf(&db_opts, &path)?
        } else {
            Vec::new()
        };
        let is_new = existing.is_empty();
        // An existing store is opened with exactly the column families it
        // has (RocksDB refuses otherwise, and a newer format may have more),
        // so its version can be read and refused before anything is changed.
        db_opts.create_missing_column_families(is_new);
        let names: Vec<String> = if is_new {
            Cf::ALL.iter().map(|c| c.name().to_string()).collect()
        } else {
            existing
        };
        let descriptors = names.iter().map(|name| {
            let opts = match Cf::from_name(name) {
                Some(cf) => cf_options(cf, &config, &cache, &merge_counters),
                None => Options::default(),
            };
            ColumnFamilyDescriptor::new(name.as_str(), opts)
        });
        let mut db = DB::open_cf_descriptors(&db_opts, &path, descriptors)?;
        check_format(&db, &path, is_new, &names)?;
        for cf in Cf::ALL {
            if !names.iter().any(|n| n == cf.name()) {
                db.create_cf(cf.name(), &cf_options(cf, &config, &cache, &merge_counters))?;
            }
        }
        Ok(Store {
            db,
            path,
            config,
            merge_counters,
            mark_updates: AtomicU64::new(0),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    /// Flushes every memtable to disk and closes the store. Dropping a
    /// `Store` also closes it, but cannot report errors.
    ///
    /// # Errors
    ///
    /// [`Error::RocksDb`] if the flush fails; what was acknowledged stays
    /// as durable as its level promised.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, Store};
    /// # let dir = tempfile::tempdir()?;
    /// Store::open(dir.path(), Config::new())?.close()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(self) -> Result<()> {
        let cfs: Vec<&ColumnFamily> = Cf::ALL.iter().map(|&c| self.cf(c)).collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// The directory the store lives in.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters since this store was opened.
    #[must_use]
    pub fn stats(&self) -> Stats {
        Stats {
            mark_updates: self.mark_updates.load(Ordering::Relaxed),
            malformed_operands: self.merge_counters.malformed.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn cf(&self, cf: Cf) -> &ColumnFamily {
        // Every `Cf` is created or opened by `open`, so the handle exists for
        // the life of the store.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(cf.name())
            .expect("column family opened by Store::open")
    }

    pub(crate) fn lock(&self, conversation: ConversationId) -> MutexGuard<'_, ()> {
        let h = conversation.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        #[allow(clippy::cast_possible_truncation)]
        let i = (h as usize) % self.locks.len();
        self.locks[i].lock()
    }

    pub(crate) fn write_options(&self, durability: Durability) -> WriteOptions {
        let mut o = WriteOptions::default();
        match durability {
            Durability::Memory => o.disable_wal(true),
            Durability::ProcessCrash => {}
            Durability::PowerLoss => o.set_sync(true),
        }
        o
    }

    /// Membership and message writes are logged even at
    /// [`Durability::Memory`]: losing a mark only costs a re-read, losing a
    /// membership change would leave counts inconsistent.
    pub(crate) fn write_structural(&self, batch: WriteBatch) -> Result<()> {
        let d = match self.config.durability {
            Durability::Memory => Durability::ProcessCrash,
            d => d,
        };
        self.db.write_opt(batch, &self.write_options(d))?;
        Ok(())
    }

    /// Reads of the latest state.
    pub(crate) fn view(&self) -> View<'_> {
        View {
            store: self,
            snapshot: None,
        }
    }

    /// Reads of one consistent point in time, for answers assembled from
    /// several records (an unread count must not see a deletion without the
    /// message it deletes).
    pub(crate) fn snapshot_view(&self) -> View<'_> {
        View {
            store: self,
            snapshot: Some(self.db.snapshot()),
        }
    }
}

/// Reads the format version: refuses an unknown one, writes it into a new
/// store, and adopts a store that has none only if it holds no record at all
/// (created, then killed before the version was written).
fn check_format(db: &DB, path: &Path, is_new: bool, names: &[String]) -> Result<()> {
    let no_version = |reason| Error::Corrupt {
        column_family: Cf::Meta.name(),
        key: FORMAT_VERSION_KEY.to_vec(),
        reason,
    };
    let meta = db
        .cf_handle(Cf::Meta.name())
        .ok_or(no_version("no meta column family"))?;
    match db.get_cf(meta, FORMAT_VERSION_KEY)? {
        Some(v) if v.len() == 4 => {
            let found = BigEndian::read_u32(&v);
            if found == FORMAT_VERSION {
                Ok(())
            } else {
                Err(Error::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                    path: path.to_path_buf(),
                })
            }
        }
        Some(_) => Err(no_version("format version is not 4 bytes")),
        None => {
            if !is_new {
                for name in names {
                    let Some(cf) = db.cf_handle(name) else {
                        continue;
                    };
                    let mut it = db.raw_iterator_cf(cf);
                    it.seek_to_first();
                    if it.valid() {
                        return Err(no_version("store holds data but no format version"));
                    }
                    it.status()?;
                }
            }
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.put_cf_opt(
                meta,
                FORMAT_VERSION_KEY,
                FORMAT_VERSION.to_be_bytes(),
                &opts,
            )?;
            Ok(())
        }
    }
}

pub(crate) fn corrupt(cf: Cf, key: &[u8], reason: &'static str) -> Error {
    Error::Corrupt {
        column_family: cf.name(),
        key: key.to_vec(),
        reason,
    }
}

fn cf_options(cf: Cf, config: &Config, cache: &Cache, counters: &Arc<MergeCounters>) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Point lookups (membership checks on every mark, conversation records)
    // dominate; a whole-key bloom filter keeps misses off the disk.
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(config.write_buffer_bytes);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    if cf == Cf::Marks {
        adapter::install_mark_operator(&mut opts, counters.clone());
        opts.set_max_successive_merges(config.max_successive_merges);
    }
    opts
}
