//! Store configuration and durability levels.

use std::time::Duration;

use crate::error::{Error, Result};

/// What an acknowledged write survives.
///
/// Applies to every write of a store (see [`Config::durability`]); calls
/// that take a `Durability` override it for that call.
///
/// # Examples
///
/// ```
/// use readmark::{Config, Durability};
/// let config = Config::new().durability(Durability::PowerLoss);
/// assert_eq!(config.get_durability(), Durability::PowerLoss);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Acknowledged once in the write-combining buffer. Survives a clean
    /// close, nothing else: a crash loses the updates not yet flushed, at
    /// most one [`flush_interval`](Config::flush_interval) of them. Costs no
    /// I/O per update. (Membership and message writes are always logged.)
    Memory,
    /// Acknowledged once appended to the journal through a shared memory
    /// map: no system call, no fsync. Survives a process crash (kill -9,
    /// panic, abort: the kernel owns the mapped pages); a power loss or
    /// kernel crash may lose what was written since the last fsync.
    #[default]
    ProcessCrash,
    /// Acknowledged only after the journal is fsynced; concurrent callers
    /// share one fsync (group commit). Survives power loss and kernel
    /// crashes, as far as the disk honours fsync.
    PowerLoss,
}

/// Options for [`Store::open`](crate::Store::open), built with chained
/// setters.
///
/// ## Defaults
///
/// | setting | default |
/// |---|---|
/// | [`create_if_missing`](Config::create_if_missing) | `true` |
/// | [`durability`](Config::durability) | [`Durability::ProcessCrash`] |
/// | [`block_cache_bytes`](Config::block_cache_bytes) | 64 MiB |
/// | [`max_successive_merges`](Config::max_successive_merges) | 16 |
/// | [`write_buffer_bytes`](Config::write_buffer_bytes) | 32 MiB per column family |
/// | [`flush_interval`](Config::flush_interval) | 5 s |
/// | [`flush_delay`](Config::flush_delay) | 2 ms |
/// | [`flush_after_updates`](Config::flush_after_updates) | 1,000 updates of one key |
/// | [`combiner_max_bytes`](Config::combiner_max_bytes) | 32 MiB |
/// | [`journal_bytes`](Config::journal_bytes) | 16 MiB (98,280 slots) |
/// | [`recovery_mode`](Config::recovery_mode) | [`RecoveryMode::Strict`] |
/// | [`statistics`](Config::statistics) | `false` |
/// | [`receipt_threshold`](Config::receipt_threshold) | 50 members |
/// | [`receipt_retention`](Config::receipt_retention) | 7 days |
/// | [`event_window`](Config::event_window) | 1 s |
/// | [`event_buffer`](Config::event_buffer) | 65,536 (reader, conversation) entries per subscription |
/// | [`event_small_group`](Config::event_small_group) | 50 members |
/// | [`small_group_recipients`](Config::small_group_recipients) | [`Recipients::Members`] |
/// | [`large_group_recipients`](Config::large_group_recipients) | [`Recipients::Authors`] |
/// | [`event_fanout_cap`](Config::event_fanout_cap) | 100 recipients per event |
/// | [`change_retention`](Config::change_retention) | 7 days |
///
/// # Examples
///
/// ```
/// use readmark::{Config, Durability};
/// let config = Config::new()
///     .durability(Durability::PowerLoss)
///     .block_cache_bytes(256 << 20);
/// assert_eq!(config.get_block_cache_bytes(), 256 << 20);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Config {
    pub(crate) create_if_missing: bool,
    pub(crate) durability: Durability,
    pub(crate) block_cache_bytes: usize,
    pub(crate) max_successive_merges: usize,
    pub(crate) write_buffer_bytes: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) flush_delay: Duration,
    pub(crate) flush_after_updates: u32,
    pub(crate) combiner_max_bytes: usize,
    pub(crate) journal_bytes: usize,
    pub(crate) recovery_mode: RecoveryMode,
    pub(crate) statistics: bool,
    pub(crate) receipt_threshold: u32,
    pub(crate) receipt_retention: Duration,
    pub(crate) event_window: Duration,
    pub(crate) event_buffer: usize,
    pub(crate) event_small_group: u32,
    pub(crate) small_group_recipients: Recipients,
    pub(crate) large_group_recipients: Recipients,
    pub(crate) event_fanout_cap: usize,
    pub(crate) change_retention: Duration,
    /// Slots of the newest-message table (`pure/newest.rs`): always
    /// [`SLOTS`](crate::pure::newest::SLOTS) but for the `testing`
    /// feature's `__newest_slots`, which the fuzz target uses to open
    /// stores cheaply.
    pub(crate) newest_slots: usize,
    /// The retention clock from the moment the store opens, in ms (0: the
    /// system clock). Set only by the `testing` feature's `__clock`: a
    /// test whose times are not today's must not have RocksDB's
    /// compactions during the open judge them by today's clock.
    pub(crate) fixed_clock: u64,
}

/// Who, besides the reader's own devices, receives a receipt event (see
/// [`Config::small_group_recipients`] and [`Config::large_group_recipients`]).
/// The reader's own devices always receive their mark; a member with
/// private receipts is never sent to anyone else.
///
/// # Examples
///
/// ```
/// use readmark::{Config, Recipients};
/// // Broadcast channels: nobody learns who read what.
/// let config = Config::new().large_group_recipients(Recipients::Nobody);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Recipients {
    /// Every other current member (WhatsApp-style groups).
    Members,
    /// Only the current members who wrote a message the advance newly
    /// covers ("your message was read"), newest messages first.
    Authors,
    /// Nobody else.
    Nobody,
}

/// What opening a store does with damage in the journal's synced data.
///
/// A torn tail (a write cut short by a crash, after the last fsync) is
/// always truncated with a log line: nothing in it was acknowledged at
/// [`Durability::PowerLoss`], and a process crash can only tear the last
/// frame. This mode decides about damage *before* synced data ends.
///
/// # Examples
///
/// ```
/// use readmark::{Config, RecoveryMode};
/// let config = Config::new().recovery_mode(RecoveryMode::TolerateCorruption);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Refuse to open with [`Error::JournalCorrupt`] naming the file and
    /// offset; nothing is changed.
    #[default]
    Strict,
    /// Replay every frame that validates, skip the damaged ranges (logged).
    TolerateCorruption,
}

/// Estimated memory of one buffered key (map entry and node overhead),
/// used to turn [`Config::combiner_max_bytes`] into a key count.
pub(crate) const PENDING_ENTRY_BYTES: usize = 224;

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    /// The defaults listed above.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Durability};
    /// let config = Config::new();
    /// assert_eq!(config.get_durability(), Durability::ProcessCrash);
    /// assert_eq!(config.get_receipt_threshold(), 50);
    /// ```
    pub fn new() -> Self {
        Self {
            create_if_missing: true,
            durability: Durability::default(),
            block_cache_bytes: 64 << 20,
            max_successive_merges: 16,
            write_buffer_bytes: 32 << 20,
            flush_interval: Duration::from_secs(5),
            flush_delay: Duration::from_millis(2),
            flush_after_updates: 1_000,
            combiner_max_bytes: 32 << 20,
            journal_bytes: 16 << 20,
            recovery_mode: RecoveryMode::Strict,
            statistics: false,
            receipt_threshold: 50,
            receipt_retention: Duration::from_secs(7 * 24 * 3600),
            event_window: Duration::from_secs(1),
            event_buffer: 65_536,
            event_small_group: 50,
            small_group_recipients: Recipients::Members,
            large_group_recipients: Recipients::Authors,
            event_fanout_cap: 100,
            change_retention: Duration::from_secs(7 * 24 * 3600),
            newest_slots: crate::pure::newest::SLOTS,
            fixed_clock: 0,
        }
    }

    /// Create the store if the directory holds none. Default `true`; with
    /// `false`, opening a missing store is an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Error, Store};
    /// let dir = tempfile::tempdir()?;
    /// let missing = Store::open(dir.path().join("none"), Config::new().create_if_missing(false));
    /// assert!(matches!(missing, Err(Error::Storage(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_if_missing(mut self, yes: bool) -> Self {
        self.create_if_missing = yes;
        self
    }

    /// Durability of every write unless a call overrides it. Default
    /// [`Durability::ProcessCrash`].
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Durability};
    /// let config = Config::new().durability(Durability::PowerLoss);
    /// assert_eq!(config.get_durability(), Durability::PowerLoss);
    /// ```
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// The configured durability.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = readmark::Config::new().durability(readmark::Durability::Memory);
    /// assert_eq!(config.get_durability(), readmark::Durability::Memory);
    /// ```
    #[must_use]
    pub fn get_durability(&self) -> Durability {
        self.durability
    }

    /// Size of the block cache shared by all column families. Default 64 MiB.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = readmark::Config::new().block_cache_bytes(256 << 20);
    /// assert_eq!(config.get_block_cache_bytes(), 256 << 20);
    /// ```
    pub fn block_cache_bytes(mut self, bytes: usize) -> Self {
        self.block_cache_bytes = bytes;
        self
    }

    /// The configured block cache size.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(readmark::Config::new().get_block_cache_bytes(), 64 << 20);
    /// ```
    #[must_use]
    pub fn get_block_cache_bytes(&self) -> usize {
        self.block_cache_bytes
    }

    /// How many merge operands a hot mark may pile up in a memtable before
    /// the write path folds them into one value, which bounds the work of a
    /// read of that mark. Default 16; must be at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Error, Store};
    /// let dir = tempfile::tempdir()?;
    /// let refused = Store::open(dir.path(), Config::new().max_successive_merges(0));
    /// assert!(matches!(refused, Err(Error::InvalidConfig(_))));
    /// Store::open(dir.path(), Config::new().max_successive_merges(64))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_successive_merges(mut self, n: usize) -> Self {
        self.max_successive_merges = n;
        self
    }

    /// RocksDB memtable size per column family. Default 32 MiB; at least 64 KiB.
    /// The write-ahead log is kept under four times this: past it RocksDB
    /// flushes the column families that hold its oldest file, so a rarely
    /// written one cannot make the log grow without bound.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().write_buffer_bytes(4 << 20))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_buffer_bytes(mut self, bytes: usize) -> Self {
        self.write_buffer_bytes = bytes;
        self
    }

    /// How often the flusher writes every buffered key to RocksDB: at most
    /// one durable write per key per interval for a user who stays in a
    /// conversation (one who leaves it is written within
    /// [`flush_delay`](Config::flush_delay)). It also bounds how stale a
    /// catch-up is and how coarse a read time recorded for a reader who
    /// stays can be. The journal holds one slot per buffered key, not one
    /// record per update, so a long interval costs no journal space.
    /// Default 5 s; at least 1 ms.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = readmark::Config::new().flush_interval(Duration::from_secs(30));
    /// assert_eq!(config.get_flush_interval(), Duration::from_secs(30));
    /// ```
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every;
        self
    }

    /// How long the flusher waits after a key is sealed
    /// ([`Store::seal`](crate::Store::seal), or the count trigger) before it
    /// writes it, so keys sealed meanwhile, by any user, share one RocksDB
    /// batch. Default 2 ms; zero writes at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().flush_delay(Duration::ZERO))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush_delay(mut self, delay: Duration) -> Self {
        self.flush_delay = delay;
        self
    }

    /// A key is sealed (written within [`flush_delay`](Config::flush_delay))
    /// after this many updates since its last write (a very long scroll).
    /// Default 1,000; at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().flush_after_updates(100))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush_after_updates(mut self, n: u32) -> Self {
        self.flush_after_updates = n;
        self
    }

    /// Memory cap of the write-combining buffer, written and unwritten
    /// keys together (about 224 bytes each): past half of it the flusher
    /// writes every key and evicts written ones; at the cap a new key waits
    /// for that. Default 32 MiB (about 150,000 keys); at least 4 KiB.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().combiner_max_bytes(1 << 20))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn combiner_max_bytes(mut self, bytes: usize) -> Self {
        self.combiner_max_bytes = bytes;
        self
    }

    /// Size of the journal's slot file: one 160-byte slot per key with
    /// journaled updates not yet in RocksDB (24 per 4 KiB page). When every
    /// slot is taken, an update to a new key waits for the flusher to write
    /// keys and give their slots back. Default 16 MiB (98,280 slots); at
    /// least 64 KiB. Changing it on an existing store is allowed (the
    /// journal is replayed, then made anew).
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().journal_bytes(1 << 20))?;
    /// assert!(store.disk_usage()?.journal_bytes > 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn journal_bytes(mut self, bytes: usize) -> Self {
        self.journal_bytes = bytes;
        self
    }

    /// Format 3's setting (two segments of this size): kept so existing
    /// code builds; sets [`journal_bytes`](Config::journal_bytes) to twice
    /// `bytes`.
    ///
    /// # Examples
    ///
    /// ```
    /// #[allow(deprecated)]
    /// let config = readmark::Config::new().journal_segment_bytes(1 << 20);
    /// ```
    #[deprecated(note = "the journal is one slot file now: use `journal_bytes`")]
    pub fn journal_segment_bytes(self, bytes: usize) -> Self {
        self.journal_bytes(bytes.saturating_mul(2))
    }

    /// What to do with damage in synced journal data at open. Default
    /// [`RecoveryMode::Strict`].
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, RecoveryMode, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().recovery_mode(RecoveryMode::TolerateCorruption))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recovery_mode(mut self, mode: RecoveryMode) -> Self {
        self.recovery_mode = mode;
        self
    }

    /// Collect RocksDB's statistics (bytes written, WAL bytes and syncs,
    /// flush and compaction bytes), read with
    /// [`Store::rocksdb_io`](crate::Store::rocksdb_io). Costs a few percent
    /// of write throughput. Default `false`.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().statistics(true))?;
    /// assert!(store.rocksdb_io().wal_bytes > 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn statistics(mut self, yes: bool) -> Self {
        self.statistics = yes;
        self
    }

    /// Conversations with at most this many members keep per-message
    /// receipts (a bitset per message: who read it, with read times);
    /// larger ones keep read marks only and write nothing per message.
    /// Default 50 (the ADR's figure); at most 4096. A conversation can
    /// override it ([`Store::set_receipt_threshold`](crate::Store::set_receipt_threshold)).
    /// A change takes effect for a conversation at its next membership or
    /// threshold change, which is when its mode is decided.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = readmark::Config::new().receipt_threshold(20);
    /// assert_eq!(config.get_receipt_threshold(), 20);
    /// ```
    pub fn receipt_threshold(mut self, members: u32) -> Self {
        self.receipt_threshold = members;
        self
    }

    /// The configured receipt threshold.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(readmark::Config::new().get_receipt_threshold(), 50);
    /// ```
    #[must_use]
    pub fn get_receipt_threshold(&self) -> u32 {
        self.receipt_threshold
    }

    /// How long per-message receipts are kept after the message was sent
    /// (Telegram keeps them 7 days). Older receipts are dropped by a
    /// compaction filter and answers for those messages come from the read
    /// marks. Measured against [`Timestamp`](crate::Timestamp)s read as
    /// milliseconds since the Unix epoch. Default 7 days; at least 1 ms.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().receipt_retention(Duration::from_secs(24 * 3600)))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn receipt_retention(mut self, keep: Duration) -> Self {
        self.receipt_retention = keep;
        self
    }

    /// How long receipt events of one (conversation, reader) are held and
    /// joined before delivery: ten advances within the window become one
    /// event with the newest mark, delivered when the window that the first
    /// opened closes. A read reaches other members within this (plus the
    /// subscriber's own delay). Default 1 s; zero delivers at once.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = readmark::Config::new().event_window(std::time::Duration::from_millis(250));
    /// ```
    pub fn event_window(mut self, window: Duration) -> Self {
        self.event_window = window;
        self
    }

    /// How many (conversation, reader) entries one subscription holds
    /// undelivered. A further advance of a held entry joins it (no growth);
    /// an advance of a new one while full is dropped and the subscriber is
    /// told ([`Event::Lagged`](crate::Event::Lagged)) so it can catch up
    /// with [`Store::changes_since`](crate::Store::changes_since). About
    /// 100 bytes per entry. Default 65,536; at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().event_buffer(4_096))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn event_buffer(mut self, entries: usize) -> Self {
        self.event_buffer = entries;
        self
    }

    /// Conversations with at most this many members are "small groups" for
    /// events and catch-up (their receipts go to
    /// [`small_group_recipients`](Config::small_group_recipients)); larger
    /// ones use [`large_group_recipients`](Config::large_group_recipients).
    /// Default 50.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().event_small_group(10))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn event_small_group(mut self, members: u32) -> Self {
        self.event_small_group = members;
        self
    }

    /// Who receives receipts in small groups. Default [`Recipients::Members`].
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Recipients, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().small_group_recipients(Recipients::Authors))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn small_group_recipients(mut self, r: Recipients) -> Self {
        self.small_group_recipients = r;
        self
    }

    /// Who receives receipts in larger conversations. Default
    /// [`Recipients::Authors`].
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Recipients, Store};
    /// let dir = tempfile::tempdir()?;
    /// // Large channels publish nothing; clients ask read_count on demand.
    /// let store = Store::open(dir.path(), Config::new().large_group_recipients(Recipients::Nobody))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn large_group_recipients(mut self, r: Recipients) -> Self {
        self.large_group_recipients = r;
        self
    }

    /// At most this many recipients per event (the rest are counted in
    /// [`ReceiptEvent::capped`](crate::ReceiptEvent::capped)). Default 100;
    /// at least 1.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().event_fanout_cap(20))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn event_fanout_cap(mut self, recipients: usize) -> Self {
        self.event_fanout_cap = recipients;
        self
    }

    /// How long the change log behind
    /// [`Store::changes_since`](crate::Store::changes_since) is kept. A
    /// cursor older than this gets
    /// [`CatchUp::SnapshotRequired`](crate::CatchUp::SnapshotRequired).
    /// Default 7 days; at least 1 s.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use readmark::{Config, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().change_retention(Duration::from_secs(3 * 24 * 3600)))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn change_retention(mut self, keep: Duration) -> Self {
        self.change_retention = keep;
        self
    }

    /// The configured flush interval.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(readmark::Config::new().get_flush_interval(), std::time::Duration::from_secs(5));
    /// ```
    #[must_use]
    pub fn get_flush_interval(&self) -> Duration {
        self.flush_interval
    }

    /// The configured coalescing window.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(readmark::Config::new().get_event_window(), std::time::Duration::from_secs(1));
    /// ```
    #[must_use]
    pub fn get_event_window(&self) -> Duration {
        self.event_window
    }

    pub(crate) fn change_retention_ms(&self) -> u64 {
        u64::try_from(self.change_retention.as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn retention_ms(&self) -> u64 {
        u64::try_from(self.receipt_retention.as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn max_pending_keys(&self) -> usize {
        (self.combiner_max_bytes / PENDING_ENTRY_BYTES).max(1)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.flush_interval < Duration::from_millis(1) {
            return Err(Error::InvalidConfig(
                "flush_interval must be at least 1 ms".into(),
            ));
        }
        if self.flush_after_updates == 0 {
            return Err(Error::InvalidConfig(
                "flush_after_updates must be at least 1".into(),
            ));
        }
        if self.combiner_max_bytes < 4096 {
            return Err(Error::InvalidConfig(
                "combiner_max_bytes must be at least 4096".into(),
            ));
        }
        if self.journal_bytes < crate::pure::journal::MIN_JOURNAL_BYTES {
            return Err(Error::InvalidConfig(format!(
                "journal_bytes must be at least {}",
                crate::pure::journal::MIN_JOURNAL_BYTES
            )));
        }
        if self.max_successive_merges == 0 {
            return Err(Error::InvalidConfig(
                "max_successive_merges must be at least 1".into(),
            ));
        }
        if self.receipt_threshold > crate::pure::bitset::MAX_SLOTS {
            return Err(Error::InvalidConfig(format!(
                "receipt_threshold must be at most {}, got {}",
                crate::pure::bitset::MAX_SLOTS,
                self.receipt_threshold
            )));
        }
        if self.receipt_retention < Duration::from_millis(1) {
            return Err(Error::InvalidConfig(
                "receipt_retention must be at least 1 ms".into(),
            ));
        }
        if self.event_buffer == 0 || self.event_fanout_cap == 0 {
            return Err(Error::InvalidConfig(
                "event_buffer and event_fanout_cap must be at least 1".into(),
            ));
        }
        if self.change_retention < Duration::from_secs(1) {
            return Err(Error::InvalidConfig(
                "change_retention must be at least 1 s".into(),
            ));
        }
        if self.write_buffer_bytes < 64 << 10 {
            return Err(Error::InvalidConfig(format!(
                "write_buffer_bytes must be at least 65536, got {}",
                self.write_buffer_bytes
            )));
        }
        Ok(())
    }
}
