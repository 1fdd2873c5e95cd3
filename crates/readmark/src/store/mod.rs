//! The RocksDB-backed store: opening, column families, the format version,
//! and the small helpers the operation modules share.
//!
//! Operations live next to their concept: [`conversations`] (membership and
//! the user index), [`messages`] (messages and unread counts), [`marks`]
//! (read marks, "read by", the unread flag).

mod catch_up;
mod change_log;
mod conversations;
mod external_log;
mod flush;
mod hub;
mod inspect;
mod marks;
mod mentions;
mod messages;
mod privacy;
mod receipts;
mod subscription;
#[cfg(feature = "testing")]
mod testing;
mod threads;
mod usage;
mod view;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use byteorder::{BigEndian, ByteOrder};
use parking_lot::{Mutex, MutexGuard};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteBatch,
    WriteOptions,
};

use crate::config::{Config, Durability, RecoveryMode};
use crate::error::{Error, Result, storage};
use crate::ids::{ConversationId, MessageId, Timestamp};
use crate::pure::journal::{self, Journal};
use crate::pure::mark::MarkState;
use crate::pure::merge::{MergeCounters, adapter};
use writer::Writer;

pub use catch_up::{CatchUp, Changes, ReadState, Snapshot};
pub use hub::{AUTHOR_SCAN_LIMIT, Event, EventPolicy, ReceiptEvent};
pub use inspect::{Problem, Report, SegmentInfo, dump, inspect, verify};
pub use marks::{Page, ReadBy, ReadTime, Reader, ReceiptSource};
pub use mentions::MAX_MENTIONS;
pub use messages::{MessageKind, MessageOptions, Unread};
pub use privacy::PrivacyScope;
pub use receipts::ReadCount;
use receipts::{Clock, ReceiptPolicy};
pub use subscription::Subscription;
pub use threads::ThreadUnread;
pub use usage::{DiskUsage, MemoryUsage, ReceiptUsage, TableUsage};
pub(crate) use view::View;

/// The on-disk format this build reads and writes, stored in `meta` under
/// key `format_version` (`docs/design.md` §2.7) and checked on every open.
///
/// # Examples
///
/// ```
/// assert!(readmark::FORMAT_VERSION >= 5);
/// ```
pub const FORMAT_VERSION: u32 = 6;
/// Earlier formats, opened and upgraded in place. Version 3 added column
/// families (`changes`, `user_changes`, `users`) and member flags that
/// version 2 never set; version 4 changed the journal (slots instead of
/// segments, whose frames are still replayed at the upgrade) and stopped
/// writing a bit per message for in-order reads (runs time them), which
/// reads of older records answer the same way; version 5 added the flag's
/// change sequence to the mark value (`mark::BIT_FLAG_CHANGED`), which no
/// older value has and a version-4 build would refuse to decode; version 6
/// added threads (the `threads` column family and a longer conversation
/// record, whose shorter forms still decode) and reserved conversation ids
/// from 2^63 up for them: a store that used one cannot be upgraded.
pub(crate) const UPGRADABLE_FORMAT_VERSIONS: [u32; 4] = [2, 3, 4, 5];
/// Key of the format version in the `meta` column family.
pub(crate) const FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// Number of per-conversation lock stripes guarding read-modify-write of
/// conversation records (membership, message ordinals).
const LOCK_STRIPES: usize = 64;

// Every conversation of a `newest` slot is in the slot's stripe.
const _: () = assert!(crate::pure::newest::SLOTS.is_multiple_of(LOCK_STRIPES));
/// Conversations whose record a stripe keeps in memory (per stripe).
const STRIPE_CACHE: usize = 4096;

/// What a lock stripe guards besides the order of its conversations'
/// writers: the records those writers last wrote, so a send reads nothing
/// from RocksDB. Exact, because every write of a conversation record
/// happens under its stripe, and updates or forgets the cached copy after
/// the write lands. Bounded: a full cache is emptied.
#[derive(Default)]
pub(crate) struct Stripe {
    convs: rustc_hash::FxHashMap<u64, ConvMeta>,
}

/// A cached conversation record and the `sent_at` of its newest message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvMeta {
    pub(crate) record: crate::pure::records::ConversationRecord,
    pub(crate) last_sent_at: Option<Timestamp>,
}

impl Stripe {
    pub(crate) fn cached(&self, conversation: ConversationId) -> Option<ConvMeta> {
        self.convs.get(&conversation.0).copied()
    }

    pub(crate) fn keep(&mut self, conversation: ConversationId, meta: ConvMeta) {
        if self.convs.len() >= STRIPE_CACHE && !self.convs.contains_key(&conversation.0) {
            self.convs.clear();
        }
        self.convs.insert(conversation.0, meta);
    }

    /// Called by every other writer of the conversation's record.
    pub(crate) fn forget(&mut self, conversation: ConversationId) {
        self.convs.remove(&conversation.0);
    }
}

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
    /// (conversation, message) → bitset of the member slots that read it,
    /// OR-merged; small conversations only.
    Receipts,
    /// (conversation, user, kind, message) → when a run of messages or one
    /// message was first read; small conversations only.
    ReadTimes,
    /// (conversation, seq) → reader, stamp: the change log by conversation.
    Changes,
    /// (reader, seq) → conversation, stamp: the change log by reader.
    UserChanges,
    /// user → settings (private receipts everywhere).
    Users,
    /// (user, conversation, message) and (conversation, message) → sender:
    /// mentions by name and of everyone (format 5, `mentions.rs`).
    Mentions,
    /// (conversation, root) → the thread timeline's internal id (format 6,
    /// `threads.rs`).
    Threads,
}

impl Cf {
    pub(crate) const ALL: [Cf; 14] = [
        Cf::Meta,
        Cf::Conversations,
        Cf::Members,
        Cf::UserConversations,
        Cf::Marks,
        Cf::Messages,
        Cf::Deletions,
        Cf::Receipts,
        Cf::ReadTimes,
        Cf::Changes,
        Cf::UserChanges,
        Cf::Users,
        Cf::Mentions,
        Cf::Threads,
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
            Cf::Receipts => "receipts",
            Cf::ReadTimes => "read_times",
            Cf::Changes => "changes",
            Cf::UserChanges => "user_changes",
            Cf::Users => "users",
            Cf::Mentions => "mentions",
            Cf::Threads => "threads",
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
    /// Logical mark updates accepted (`mark_read`, unread-flag calls, and
    /// the sender's advance of each `record_message`).
    pub mark_updates: u64,
    /// Updates joined into a key already buffered: they cost no write.
    pub combined_away: u64,
    /// RocksDB write batches issued by flushes (full and single-key).
    pub durable_batches: u64,
    /// fsyncs: journal group commits, durable retirements, and synced
    /// RocksDB writes.
    pub fsyncs: u64,
    /// Keys written to RocksDB by flushes (one merge operand each).
    pub keys_written: u64,
    /// Bytes written to the journal's slots (80 per journaled update;
    /// rewritten in place, so what reaches the disk is what the page cache
    /// writes back, not this).
    pub journal_bytes: u64,
    /// Keys with updates not yet written to RocksDB, right now.
    pub pending_keys: u64,
    /// Keys the buffer holds right now, written or not (written ones stay
    /// as a cache of the stored mark until evicted under memory pressure).
    pub cached_keys: u64,
    /// Journal slots holding a key right now.
    pub journal_slots_in_use: u64,
    /// Journal records (slot copies, or frames of a format-3 journal)
    /// replayed into RocksDB at open (those of users who are no longer
    /// members, or of an earlier membership, are skipped and not counted).
    pub replayed_frames: u64,
    /// Times a merge skipped an input it could not decode (corruption or a
    /// foreign writer; the rest of the record is kept). One bad operand is
    /// counted each time a read or compaction meets it, until a compaction
    /// folds it away, so any non-zero value means "investigate".
    pub malformed_operands: u64,
    /// Per-message bitset operands written: one per recorded single view
    /// ([`Store::mark_viewed`]); in-order reads write none.
    pub receipt_operands: u64,
    /// Read-time records written: one run per flushed advance over messages
    /// that keep per-message receipts, one per recorded single view.
    pub read_time_records: u64,
    /// Flushed advances given a change-log sequence (kept in the mark
    /// itself, for catch-up: no row is written for them).
    pub change_sequences: u64,
    /// Updates that changed nothing (stale or duplicated), found on the
    /// write path or at a flush: they cost no write.
    pub no_ops: u64,
    /// Rounds the background flusher ran (timer, seals, memory pressure,
    /// callers waiting).
    pub flush_rounds: u64,
    /// Time those rounds took, together: `flush_time / flush_rounds` is the
    /// mean latency of a round (planning, RocksDB writes, syncs).
    pub flush_time: std::time::Duration,
}

/// RocksDB's I/O counters (see [`Store::rocksdb_io`]).
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Config::new().statistics(true))?;
/// let io = store.rocksdb_io();
/// assert!(io.bytes_written >= io.wal_bytes);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RocksDbIo {
    /// `rocksdb.bytes.written`: bytes of keys and values written.
    pub bytes_written: u64,
    /// `rocksdb.wal.bytes`: bytes appended to the write-ahead log.
    pub wal_bytes: u64,
    /// `rocksdb.wal.synced`: WAL fsyncs.
    pub wal_syncs: u64,
    /// `rocksdb.flush.write.bytes`: bytes written by memtable flushes.
    pub flush_bytes: u64,
    /// `rocksdb.compact.write.bytes`: bytes written by compactions.
    pub compaction_bytes: u64,
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
    db: Arc<DB>,
    db_opts: Options,
    /// Shared by every column family's table reader (`memory_usage`).
    block_cache: Cache,
    path: PathBuf,
    config: Config,
    merge_counters: Arc<MergeCounters>,
    clock: Arc<Clock>,
    writer: Arc<Writer>,
    events: hub::Hub,
    /// Each conversation's newest message: the bound of a read mark.
    newest: crate::pure::newest::Newest,
    /// Serialises privacy changes with joins, which copy the user's
    /// setting. Taken before any conversation lock.
    privacy_lock: Mutex<()>,
    /// Bumped after every privacy change lands (`privacy_consistent`).
    privacy_epoch: std::sync::atomic::AtomicU64,
    timer: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    replayed: u64,
    locks: Box<[Mutex<Stripe>]>,
    /// The counter of the next thread's id (`threads::thread_id`).
    next_thread: std::sync::atomic::AtomicU64,
    /// Thread ids resolved recently (`threads::ThreadCache`).
    thread_cache: threads::ThreadCache,
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
    /// [`Error::Storage`] if RocksDB cannot open it (missing with
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
        db_opts.set_enable_pipelined_write(true);
        // Table statistics are refreshed by compactions anyway; reading the
        // properties block of every file at open made a reopen of a small
        // store cost tens of milliseconds.
        db_opts.set_skip_stats_update_on_db_open(true);
        // RocksDB starts this many threads per column family at every open
        // to load table readers, whether there are files or not (16 by
        // default: 210 thread starts an open for 14 column families). More
        // than the cores cannot load faster.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
        db_opts.set_max_file_opening_threads(i32::try_from(cores).unwrap_or(1));
        // RocksDB keeps a write-ahead log file until every column family
        // with data in it has flushed, and a rarely written one (users,
        // conversations) holds it for long: left to RocksDB's default (4x
        // every memtable: 3.5 GiB here) the log grew 9 MiB a minute under
        // `readmark soak`. Past this much, RocksDB flushes the column
        // families that pin the oldest file.
        db_opts.set_max_total_wal_size(wal_cap(&config));
        if config.statistics {
            db_opts.enable_statistics();
        }

        let merge_counters = Arc::new(MergeCounters::default());
        let clock = Arc::new(Clock::fixed_at(config.fixed_clock));
        let policy = ReceiptPolicy {
            retention_ms: config.retention_ms(),
            clock: clock.clone(),
        };
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let existing = if path.join("CURRENT").exists() {
            DB::list_cf(&db_opts, &path).map_err(storage)?
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
                Some(cf) => cf_options(cf, &config, &cache, &merge_counters, &clock),
                None => Options::default(),
            };
            ColumnFamilyDescriptor::new(name.as_str(), opts)
        });
        let mut db = DB::open_cf_descriptors(&db_opts, &path, descriptors).map_err(storage)?;
        let version = check_format(&db, &path, is_new, &names)?;
        for cf in Cf::ALL {
            if !names.iter().any(|n| n == cf.name()) {
                db.create_cf(
                    cf.name(),
                    &cf_options(cf, &config, &cache, &merge_counters, &clock),
                )
                .map_err(storage)?;
            }
        }
        let largest = largest_conversation(&db)?;
        if version.is_some_and(|v| v < FORMAT_VERSION) {
            if largest.is_some_and(|c| !crate::ids::is_public_id(ConversationId(c))) {
                return Err(Error::InvalidArgument(
                    "this store uses conversation ids from 2^63 up, which format 6 reserves for threads",
                ));
            }
            // Before the version write: a crash in between does it again
            // (it is idempotent).
            clamp_old_marks(&db)?;
        }
        if version != Some(FORMAT_VERSION) {
            let meta = db
                .cf_handle(Cf::Meta.name())
                .ok_or(Error::InvalidArgument("no meta column family"))?;
            let mut opts = WriteOptions::default();
            opts.set_sync(true);
            db.put_cf_opt(
                meta,
                FORMAT_VERSION_KEY,
                FORMAT_VERSION.to_be_bytes(),
                &opts,
            )
            .map_err(storage)?;
        }
        let db = Arc::new(db);
        let journal_dir = path.join(journal::JOURNAL_DIR);
        let recovery = journal::recover(
            &journal_dir,
            config.recovery_mode == RecoveryMode::TolerateCorruption,
        )?;
        let changes = change_log::ChangeLog::open(&db, clock.clone())?;
        let replayed = replay(&db, &recovery, &policy, &changes)?;
        let journal = Journal::create(&journal_dir, config.journal_bytes, &recovery)?;
        let writer = Arc::new(Writer::new(
            db.clone(),
            policy,
            changes,
            journal,
            config.max_pending_keys(),
            config.flush_after_updates,
            config.flush_delay,
            config.flush_interval,
        ));
        let timer = {
            let writer = writer.clone();
            std::thread::Builder::new()
                .name("readmark-flush".into())
                .spawn(move || writer.run_flusher())?
        };
        let events = hub::Hub::new(config.event_window, config.event_buffer);
        let newest = crate::pure::newest::Newest::with_slots(config.newest_slots);
        Ok(Store {
            db,
            db_opts,
            block_cache: cache,
            path,
            config,
            merge_counters,
            clock,
            writer,
            events,
            newest,
            privacy_lock: Mutex::new(()),
            privacy_epoch: std::sync::atomic::AtomicU64::new(0),
            timer: Mutex::new(Some(timer)),
            closed: AtomicBool::new(false),
            replayed,
            locks: (0..LOCK_STRIPES)
                .map(|_| Mutex::new(Stripe::default()))
                .collect(),
            next_thread: std::sync::atomic::AtomicU64::new(threads::next_counter(largest)),
            thread_cache: threads::ThreadCache::new(),
        })
    }

    /// Flushes every memtable to disk and closes the store. Dropping a
    /// `Store` also closes it, but cannot report errors.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] if the flush fails; what was acknowledged stays
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
        self.shutdown()?;
        let cfs: Vec<&ColumnFamily> = Cf::ALL.iter().map(|&c| self.cf(c)).collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            .map_err(storage)?;
        self.db.flush_wal(true).map_err(storage)?;
        Ok(())
    }

    /// Stops the flush timer and flushes the combiner (once).
    fn shutdown(&self) -> Result<()> {
        self.writer.stop_flusher();
        if let Some(t) = self.timer.lock().take() {
            let _ = t.join();
        }
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.writer.flush_all()
    }

    /// Writes every buffered mark to RocksDB now, in the calling thread,
    /// and syncs RocksDB's write-ahead log: afterwards every update
    /// acknowledged before the call is in RocksDB and survives power loss.
    /// The flusher does this (without the sync) every
    /// [`Config::flush_interval`]; call it to bound what a
    /// [`Durability::Memory`] update can lose.
    ///
    /// # Errors
    ///
    /// [`Error::Poisoned`] after an earlier failure; a failing write poisons
    /// the store and returns its error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new())?;
    /// store.flush()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush(&self) -> Result<()> {
        self.writer.flush_all()
    }

    /// The user left the conversation (closed it on screen): their burst of
    /// scroll updates becomes one RocksDB write, made by the flusher thread
    /// within [`Config::flush_delay`], in one batch with the other keys
    /// sealed meanwhile. Returns at once; nothing is written on the
    /// caller's thread. Does nothing if nothing is buffered.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let (c, u) = (ConversationId(1), UserId(1));
    /// # store.create_conversation(c)?;
    /// # store.add_member(c, u, Timestamp(0))?;
    /// # store.add_member(c, UserId(2), Timestamp(0))?;
    /// # for m in 1..=50 { store.record_message(c, MessageId(m), UserId(2), Timestamp(m))?; }
    /// # store.flush()?;
    /// let before = store.stats().keys_written;
    /// for m in 1..=50 {
    ///     store.mark_read(c, u, MessageId(m), Timestamp(m))?;
    /// }
    /// store.seal(c, u); // written soon: one durable write for the 50 updates
    /// store.flush_key(c, u)?; // or wait for it
    /// assert_eq!(store.stats().keys_written - before, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn seal(&self, timeline: impl Into<crate::ids::Timeline>, user: crate::ids::UserId) {
        // A thread that has not begun has nothing buffered to seal.
        let timeline = timeline.into();
        if timeline.root().is_none() {
            self.writer.seal(timeline.conversation().0, user.0);
            return;
        }
        // The view ends with the lookup: a live one holds entries in the
        // buffer (`pure::grace`), which a wait for room would never see.
        let id = self.timeline_id(&self.view(), timeline);
        if let Ok(id) = id {
            self.writer.seal(id.0, user.0);
        }
    }

    /// Runs `f` with the internal id of `timeline`, reporting its errors
    /// as about the timeline's conversation.
    pub(crate) fn with_timeline<T>(
        &self,
        timeline: crate::ids::Timeline,
        f: impl FnOnce(ConversationId) -> Result<T>,
    ) -> Result<T> {
        // The main timeline is the conversation itself: no view, no
        // lookup (a view registers with the buffer's reader epochs, which
        // costs the hot path of `mark_read` measurably).
        if timeline.root().is_none() {
            threads::check_public(timeline.conversation())?;
            return f(timeline.conversation());
        }
        // A thread read recently: its id from memory, no view either.
        if let Some(id) = self.cached_thread(timeline) {
            return f(id).map_err(|e| e.in_timeline(timeline));
        }
        let run = || {
            // Its own statement: the view must end before `f` runs (a live
            // view holds entries in the buffer, `pure::grace`, and an
            // update waiting for room there would wait for ever).
            let id = self.timeline_id(&self.view(), timeline)?;
            f(id)
        };
        run().map_err(|e| e.in_timeline(timeline))
    }

    /// Writes one user's buffered mark in one conversation and waits until
    /// RocksDB holds it: [`seal`](Store::seal), then waiting for the
    /// flusher's next round (which writes every key sealed meanwhile in the
    /// same batch). For callers that need RocksDB to hold the mark before
    /// they go on; a leave that need not wait is [`seal`](Store::seal).
    /// Does nothing if nothing is buffered.
    ///
    /// # Errors
    ///
    /// As [`flush`](Store::flush).
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let (c, u) = (ConversationId(1), UserId(1));
    /// # store.create_conversation(c)?;
    /// # store.add_member(c, u, Timestamp(0))?;
    /// # store.add_member(c, UserId(2), Timestamp(0))?;
    /// # for m in 1..=50 { store.record_message(c, MessageId(m), UserId(2), Timestamp(m))?; }
    /// # store.flush()?;
    /// let before = store.stats().keys_written;
    /// for m in 1..=50 {
    ///     store.mark_read(c, u, MessageId(m), Timestamp(m))?;
    /// }
    /// store.flush_key(c, u)?; // one durable write for the 50 updates
    /// assert_eq!(store.stats().keys_written - before, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush_key(
        &self,
        timeline: impl Into<crate::ids::Timeline>,
        user: crate::ids::UserId,
    ) -> Result<()> {
        self.with_timeline(timeline.into(), |conversation| {
            self.writer.flush_key(conversation.0, user.0)
        })
    }

    /// The directory the store lives in.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// assert_eq!(store.path(), dir.path());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters since this store was opened.
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
    /// # store.record_message(c, MessageId(1), alice, Timestamp(1))?;
    /// let before = store.stats();
    /// for _ in 0..3 {
    ///     store.mark_read(c, bob, MessageId(1), Timestamp(2))?; // a duplicate twice
    /// }
    /// let after = store.stats();
    /// assert_eq!(after.mark_updates - before.mark_updates, 3);
    /// assert_eq!(after.no_ops - before.no_ops, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn stats(&self) -> Stats {
        let c = &self.writer.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            mark_updates: load(&c.updates),
            combined_away: load(&c.updates).saturating_sub(self.writer.combiner.dirtied()),
            durable_batches: load(&c.batches),
            fsyncs: load(&c.rocksdb_syncs) + self.writer.journal.syncs(),
            keys_written: load(&c.keys_written),
            journal_bytes: self.writer.journal.bytes_written(),
            pending_keys: self.writer.combiner.dirty() as u64,
            cached_keys: self.writer.combiner.entries() as u64,
            journal_slots_in_use: self.writer.journal.in_use() as u64,
            replayed_frames: self.replayed,
            malformed_operands: self.merge_counters.malformed.load(Ordering::Relaxed),
            receipt_operands: load(&c.receipt_operands),
            read_time_records: load(&c.read_time_records),
            change_sequences: load(&c.change_sequences),
            no_ops: load(&c.no_ops),
            flush_rounds: load(&c.flush_rounds),
            flush_time: std::time::Duration::from_nanos(load(&c.flush_nanos)),
        }
    }

    /// RocksDB's own I/O counters since open; all zero unless
    /// [`Config::statistics`] is on.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, Store};
    /// # let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().statistics(true))?;
    /// let io = store.rocksdb_io();
    /// assert!(io.wal_bytes >= 8); // the format version was written
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn rocksdb_io(&self) -> RocksDbIo {
        use rocksdb::statistics::Ticker;
        let t = |k| self.db_opts.get_ticker_count(k);
        RocksDbIo {
            bytes_written: t(Ticker::BytesWritten),
            wal_bytes: t(Ticker::WalFileBytes),
            wal_syncs: t(Ticker::WalFileSynced),
            flush_bytes: t(Ticker::FlushWriteBytes),
            compaction_bytes: t(Ticker::CompactWriteBytes),
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

    pub(crate) fn lock(&self, conversation: ConversationId) -> MutexGuard<'_, Stripe> {
        self.locks[self.stripe(conversation)].lock()
    }

    fn stripe(&self, conversation: ConversationId) -> usize {
        // A thread's id carries its conversation's stripe in its low bits
        // (`threads::thread_id`): both take the same lock, and the
        // newest-message slots agree with the locks (`newest::lock_hash`).
        let h = crate::pure::newest::lock_hash(conversation.0);
        #[allow(clippy::cast_possible_truncation)]
        let i = (h as usize) % self.locks.len();
        i
    }

    /// The stripes of several conversations, each once, in stripe order
    /// (the one order every multi-stripe holder uses: no deadlock).
    pub(crate) fn lock_many(
        &self,
        conversations: &[ConversationId],
    ) -> Vec<MutexGuard<'_, Stripe>> {
        let mut stripes: Vec<usize> = conversations.iter().map(|&c| self.stripe(c)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.into_iter().map(|i| self.locks[i].lock()).collect()
    }

    /// [`write_structural`](Store::write_structural) with change entries for
    /// the (conversation, reader) pairs `rows` returns, computed from a
    /// fresh view under the flush lock (see `Writer::write_with_changes`):
    /// marks that became visible, or readers to hide, for other members'
    /// catch-up.
    /// `rows` also gets the last change sequence assigned before this
    /// batch and may add to the batch (a join records the sequence).
    pub(crate) fn write_structural_with(
        &self,
        batch: WriteBatch,
        rows: impl FnOnce(&View<'_>, u64, &mut WriteBatch) -> Result<Vec<(u64, u64)>>,
    ) -> Result<()> {
        self.writer.write_with_changes(
            batch,
            |seq, batch| rows(&self.view(), seq, batch),
            self.config.durability == Durability::PowerLoss,
        )
    }

    /// Runs `read` again until no privacy change landed while it ran. An
    /// answer reads member records from a snapshot but marks from the live
    /// buffer too; without this, a read made right after a member went
    /// private could be joined to a snapshot from before, and shown.
    pub(crate) fn privacy_consistent<T>(&self, mut read: impl FnMut() -> Result<T>) -> Result<T> {
        loop {
            let before = self.privacy_epoch.load(Ordering::SeqCst);
            let answer = read()?;
            if self.privacy_epoch.load(Ordering::SeqCst) == before {
                return Ok(answer);
            }
        }
    }

    /// Membership and message writes go straight to RocksDB's write-ahead
    /// log (they must not be lost to a process crash), synced at
    /// [`Durability::PowerLoss`].
    pub(crate) fn write_structural(&self, batch: WriteBatch) -> Result<()> {
        self.writer.check_poison()?;
        let mut o = WriteOptions::default();
        o.set_sync(self.config.durability == Durability::PowerLoss);
        if let Err(e) = self.db.write_opt(batch, &o) {
            return Err(self.writer.poison("RocksDB write", storage(e)));
        }
        Ok(())
    }

    /// Reads of the latest state.
    pub(crate) fn view(&self) -> View<'_> {
        View {
            store: self,
            snapshot: None,
            _gate: self.writer.grace.enter(),
        }
    }

    /// Reads of one consistent point in time, for answers assembled from
    /// several records (an unread count must not see a deletion without the
    /// message it deletes).
    pub(crate) fn snapshot_view(&self) -> View<'_> {
        // Registered first: the snapshot must not predate a write whose
        // entries then leave the buffer before this view reads it.
        let gate = self.writer.grace.enter();
        View {
            store: self,
            snapshot: Some(self.db.snapshot()),
            _gate: gate,
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "flush at drop failed; the journal keeps what was acknowledged");
        }
    }
}

/// Replays recovered journal states into RocksDB (synced) before the
/// journal is re-initialised: folded per key and planned as one flush
/// would, so replayed advances get their read-time runs and change-log
/// entries, and a state RocksDB already holds costs nothing. Merges are
/// idempotent, so a state whose update had already been flushed is
/// harmless; states of another membership than the current one are
/// skipped (it ended after they were written).
fn replay(
    db: &DB,
    recovery: &journal::Recovery,
    policy: &ReceiptPolicy,
    changes: &change_log::ChangeLog,
) -> Result<u64> {
    let mut folded: std::collections::BTreeMap<(u64, u64, Option<u64>), (MarkState, u64)> =
        std::collections::BTreeMap::new();
    for r in &recovery.records {
        let e = folded
            .entry((r.conversation, r.user, r.joined_seq))
            .or_default();
        e.0 = e.0.join(r.state);
        e.1 += 1;
    }
    // The rule `mark_read` applies (§3.1): no mark past the newest
    // recorded message, whatever a slot says (one written by an older
    // version, or a valid CRC over a bad write).
    let conversations = db
        .cf_handle(Cf::Conversations.name())
        .ok_or(Error::InvalidArgument("no conversations column family"))?;
    let mut newest = std::collections::HashMap::new();
    for (&(c, _, _), (state, _)) in folded.iter_mut() {
        let Some(mark) = state.mark else { continue };
        // `None`: no bound known (a record that does not decode must not
        // stop the store from opening: the conversation's own operations
        // report it).
        let bound: Option<Option<MessageId>> = match newest.get(&c) {
            Some(&b) => b,
            None => {
                let key = crate::pure::keys::id_key(c);
                let b = match db.get_cf(conversations, key).map_err(storage)? {
                    None => Some(None),
                    Some(raw) => match crate::pure::records::ConversationRecord::decode(&raw) {
                        Some(r) => Some(r.last_message()),
                        None => {
                            tracing::warn!(
                                conversation = c,
                                "replay: conversation record does not decode; its marks are not clamped"
                            );
                            None
                        }
                    },
                };
                newest.insert(c, b);
                b
            }
        };
        if let Some(bound) = bound {
            state.mark = bound.map(|b| crate::pure::mark::ReadMark {
                up_to: mark.up_to.min(b),
                at: mark.at,
            });
        }
    }
    let items: Vec<flush::Item> = folded
        .iter()
        .map(|(&(c, u, j), &(state, _))| flush::Item {
            conversation: c,
            user: u,
            state,
            base: None,
            joined_seq: j,
            version: 0,
            needs_sync: true,
        })
        .collect();
    let plan = flush::plan_round(db, policy, changes, &items, usize::MAX)?;
    let n: u64 = folded
        .values()
        .zip(&plan.outcomes)
        .filter(|(_, o)| **o != flush::Outcome::Stale)
        .map(|((_, frames), _)| frames)
        .sum();
    if let Some(batch) = plan.batches.into_iter().next() {
        let mut o = WriteOptions::default();
        o.set_sync(true);
        db.write_opt(batch, &o).map_err(storage)?;
        changes.mark_written();
        tracing::info!(records = n, "journal replayed");
    }
    Ok(n)
}

/// The largest conversation or thread id recorded: thread ids sort last.
fn largest_conversation(db: &DB) -> Result<Option<u64>> {
    let Some(cf) = db.cf_handle(Cf::Conversations.name()) else {
        return Ok(None);
    };
    let mut it = db.raw_iterator_cf(cf);
    it.seek_to_last();
    let largest = it
        .key()
        .and_then(|k| k.try_into().ok())
        .map(u64::from_be_bytes);
    it.status().map_err(storage)?;
    Ok(largest)
}

/// The upgrade to format 5 repairs what older versions let through: a mark
/// past its conversation's newest message (design §3.1) is rewritten (a
/// `Put`, as the merge would keep the larger value) clamped to it, or
/// without its mark in a conversation with no message, and so is an
/// unread flag's position past it. One scan of `marks`, once.
fn clamp_old_marks(db: &DB) -> Result<u64> {
    let (Some(marks), Some(conversations)) = (
        db.cf_handle(Cf::Marks.name()),
        db.cf_handle(Cf::Conversations.name()),
    ) else {
        return Ok(0);
    };
    let mut newest: std::collections::HashMap<u64, Option<Option<u64>>> =
        std::collections::HashMap::new();
    let mut batch = WriteBatch::default();
    let mut repaired = 0u64;
    for item in db.iterator_cf(marks, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(storage)?;
        let (Some((c, _)), Some(mut state)) = (
            crate::pure::keys::decode_pair_key(&k),
            MarkState::decode(&v),
        ) else {
            continue; // `verify` reports it
        };
        let bound = match newest.get(&c) {
            Some(&b) => b,
            None => {
                let b = db
                    .get_cf(conversations, crate::pure::keys::id_key(c))
                    .map_err(storage)?
                    .and_then(|raw| crate::pure::records::ConversationRecord::decode(&raw))
                    .map(|r| r.last_message().map(|m| m.0));
                newest.insert(c, b);
                b
            }
        };
        // No record, or one that does not decode: no bound known.
        let Some(bound) = bound else { continue };
        let before = state;
        if let Some(m) = state.mark {
            state.mark = bound.map(|b| crate::pure::mark::ReadMark {
                up_to: MessageId(m.up_to.0.min(b)),
                at: m.at,
            });
        }
        if let Some(f) = state.flag.as_mut() {
            f.pos = f.pos.map(|p| bound.map_or(p, |b| p.min(b)));
        }
        if state != before {
            batch.put_cf(marks, &k, state.encode());
            repaired += 1;
        }
    }
    if repaired > 0 {
        let mut o = WriteOptions::default();
        o.set_sync(true);
        db.write_opt(batch, &o).map_err(storage)?;
        tracing::warn!(
            marks = repaired,
            "upgrade: marks past their conversation's newest message clamped to it"
        );
    }
    Ok(repaired)
}

/// Reads the format version and refuses an unknown one. `Ok(None)` means
/// "no version": a new store, or one created and killed before its version
/// was written (RocksDB writes `CURRENT` before it creates the column
/// families), which is adopted only if it holds no record at all. Changes
/// nothing on disk.
fn check_format(db: &DB, path: &Path, is_new: bool, names: &[String]) -> Result<Option<u32>> {
    let no_version = |reason| Error::Corrupt {
        column_family: Cf::Meta.name(),
        key: FORMAT_VERSION_KEY.to_vec(),
        reason,
    };
    let stored = match db.cf_handle(Cf::Meta.name()) {
        Some(meta) => db.get_cf(meta, FORMAT_VERSION_KEY).map_err(storage)?,
        None => None,
    };
    match stored {
        Some(v) if v.len() == 4 => {
            let found = BigEndian::read_u32(&v);
            if found == FORMAT_VERSION || UPGRADABLE_FORMAT_VERSIONS.contains(&found) {
                Ok(Some(found))
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
                    it.status().map_err(storage)?;
                }
            }
            Ok(None)
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

/// The write-ahead log's size before RocksDB flushes what pins it: four
/// memtables' worth (128 MiB by default).
fn wal_cap(config: &Config) -> u64 {
    u64::try_from(config.write_buffer_bytes)
        .unwrap_or(u64::MAX)
        .saturating_mul(4)
}

fn cf_options(
    cf: Cf,
    config: &Config,
    cache: &Cache,
    counters: &Arc<MergeCounters>,
    clock: &Arc<Clock>,
) -> Options {
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
    if cf == Cf::Receipts {
        receipts::filters::install_receipts(
            &mut opts,
            counters.clone(),
            clock.clone(),
            config.retention_ms(),
        );
        opts.set_max_successive_merges(config.max_successive_merges);
    }
    if cf == Cf::ReadTimes {
        receipts::filters::install_read_times(&mut opts, clock.clone(), config.retention_ms());
    }
    if cf == Cf::Changes || cf == Cf::UserChanges {
        receipts::filters::install_changes(&mut opts, clock.clone(), config.change_retention_ms());
    }
    opts
}
