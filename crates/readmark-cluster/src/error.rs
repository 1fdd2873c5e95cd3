//! The crate's one error type.

/// What went wrong in a node or a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// NATS or JetStream failed (no connection, a refused request, no
    /// acknowledgement in time).
    #[error("NATS: {0}")]
    Nats(String),
    /// The partition's store failed (I/O, corruption): the node stops
    /// applying that partition and gives up its lease.
    #[error("store: {0}")]
    Store(#[from] readmark::Error),
    /// A local file operation failed (checkpoints).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A message that does not decode.
    #[error("undecodable {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// No owner answered, or no acknowledgement came, within the deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A setting that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn nats(e: impl std::fmt::Display) -> Error {
    Error::Nats(e.to_string())
}

/// Runs `f` (RocksDB, file work) on tokio's blocking pool; a task that
/// panicked or was cancelled is an `Error::Io`.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}
