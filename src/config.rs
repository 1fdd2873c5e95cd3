//! Store configuration and durability levels.

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
    /// Acknowledged once applied in memory (RocksDB memtable, write-ahead log
    /// off). Survives nothing: a process crash loses every update not yet
    /// flushed to an SST file by RocksDB. Reads see it at once.
    Memory,
    /// Acknowledged once handed to the operating system (RocksDB write-ahead
    /// log, no fsync). Survives a process crash (kill -9, panic, abort);
    /// a power loss or kernel crash may lose the last few seconds.
    #[default]
    ProcessCrash,
    /// Acknowledged only after an fsync of the write-ahead log. Survives
    /// power loss and kernel crashes, as far as the disk honours fsync.
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
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    /// The defaults listed above.
    pub fn new() -> Self {
        Self {
            create_if_missing: true,
            durability: Durability::default(),
            block_cache_bytes: 64 << 20,
            max_successive_merges: 16,
            write_buffer_bytes: 32 << 20,
        }
    }

    /// Create the store if the directory holds none. Default `true`; with
    /// `false`, opening a missing store is an error.
    pub fn create_if_missing(mut self, yes: bool) -> Self {
        self.create_if_missing = yes;
        self
    }

    /// Durability of every write unless a call overrides it. Default
    /// [`Durability::ProcessCrash`].
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// The configured durability.
    #[must_use]
    pub fn get_durability(&self) -> Durability {
        self.durability
    }

    /// Size of the block cache shared by all column families. Default 64 MiB.
    pub fn block_cache_bytes(mut self, bytes: usize) -> Self {
        self.block_cache_bytes = bytes;
        self
    }

    /// The configured block cache size.
    #[must_use]
    pub fn get_block_cache_bytes(&self) -> usize {
        self.block_cache_bytes
    }

    /// How many merge operands a hot mark may pile up in a memtable before
    /// the write path folds them into one value, which bounds the work of a
    /// read of that mark. Default 16; must be at least 1.
    pub fn max_successive_merges(mut self, n: usize) -> Self {
        self.max_successive_merges = n;
        self
    }

    /// RocksDB memtable size per column family. Default 32 MiB; at least 64 KiB.
    pub fn write_buffer_bytes(mut self, bytes: usize) -> Self {
        self.write_buffer_bytes = bytes;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_successive_merges == 0 {
            return Err(Error::InvalidConfig(
                "max_successive_merges must be at least 1".into(),
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
