//! A node's settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// The JetStream stream every write enters.
pub const STREAM: &str = "READMARK";
/// The key-value bucket of partition leases (`p<partition>` → node id).
pub const LEASES: &str = "readmark-leases";
/// The key-value bucket where live nodes announce themselves.
pub const NODES: &str = "readmark-nodes";
/// The object-store bucket of partition checkpoints (`p<partition>`).
pub const CHECKPOINTS: &str = "readmark-checkpoints";

/// A node's configuration, built from [`NodeConfig::new`] and its setters.
///
/// | setting | default |
/// |---|---|
/// | [`partitions`](NodeConfig::partitions) | 16 |
/// | [`replicas`](NodeConfig::replicas) | 3 |
/// | [`lease_ttl`](NodeConfig::lease_ttl) | 10 s |
/// | [`flush_every`](NodeConfig::flush_every) | 100 ms |
/// | [`checkpoint_every`](NodeConfig::checkpoint_every) | 60 s |
/// | [`retention`](NodeConfig::retention) | 7 days |
///
/// Every node and client of a cluster must agree on `partitions`; the
/// stream, buckets and `replicas` are set by whoever creates them first.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let config = readmark_cluster::NodeConfig::new("node-1", ["nats://127.0.0.1:4222"], "/var/lib/readmark")
///     .partitions(8)
///     .lease_ttl(Duration::from_secs(5));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub(crate) node_id: String,
    pub(crate) nats: Vec<String>,
    pub(crate) data_dir: PathBuf,
    pub(crate) partitions: u32,
    pub(crate) replicas: usize,
    pub(crate) lease_ttl: Duration,
    pub(crate) flush_every: Duration,
    pub(crate) checkpoint_every: Duration,
    pub(crate) retention: Duration,
}

impl NodeConfig {
    /// A node called `node_id` (unique in the cluster), reaching NATS at
    /// any of `nats`, keeping its partitions' stores under `data_dir`.
    pub fn new<S: Into<String>>(
        node_id: impl Into<String>,
        nats: impl IntoIterator<Item = S>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        NodeConfig {
            node_id: node_id.into(),
            nats: nats.into_iter().map(Into::into).collect(),
            data_dir: data_dir.into(),
            partitions: 16,
            replicas: 3,
            lease_ttl: Duration::from_secs(10),
            flush_every: Duration::from_millis(100),
            checkpoint_every: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// Partitions of the conversation space (default 16). Fixed for the
    /// life of the stream.
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = n;
        self
    }

    /// JetStream replicas of the stream and buckets (default 3): a write
    /// is acknowledged once a majority of them holds it.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// How long a lease lasts without renewal (default 10 s): a dead
    /// node's partitions are taken over after about this long. Renewed
    /// every third of it; a node stops answering for a partition a quarter
    /// before it runs out.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// How often the applier writes its buffered marks and the log
    /// position to RocksDB (default 100 ms): after a crash, the log is
    /// replayed from at most this far back.
    pub fn flush_every(mut self, d: Duration) -> Self {
        self.flush_every = d;
        self
    }

    /// How often an owner uploads a checkpoint of each partition (default
    /// 60 s): a new owner replays at most this much of the log.
    pub fn checkpoint_every(mut self, d: Duration) -> Self {
        self.checkpoint_every = d;
        self
    }

    /// How long the stream keeps writes (default 7 days). Must be well
    /// above `checkpoint_every`: a new owner replays from the last
    /// checkpoint, so the log must still hold what came after it.
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// Checks the settings against each other.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: &str| Err(Error::Config(s.to_string()));
        if self.node_id.is_empty()
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("node id: letters, digits, '-' and '_' only, not empty");
        }
        if self.nats.is_empty() {
            return bad("no NATS server given");
        }
        if self.partitions == 0 || self.partitions > 4096 {
            return bad("partitions: 1 to 4096");
        }
        if self.replicas == 0 || self.replicas > 5 {
            return bad("replicas: 1 to 5 (JetStream's limit)");
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return bad("lease TTL below 1 s");
        }
        if self.retention < self.checkpoint_every * 10 {
            return bad("retention must be at least ten checkpoint intervals");
        }
        if self.flush_every.is_zero() || self.checkpoint_every.is_zero() {
            return bad("flush and checkpoint intervals must be above zero");
        }
        Ok(())
    }
}
