//! The one error type of the crate.

use std::path::PathBuf;

use crate::ids::{ConversationId, MessageId, UserId};

/// Result alias used across readmark.
///
/// # Examples
///
/// ```
/// fn newest(store: &readmark::Store, c: readmark::ConversationId) -> readmark::Result<u64> {
///     Ok(store.member_count(c)?)
/// }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, as data a caller can match on.
///
/// Input errors (`UnknownConversation`, `NotMember`, ...) change nothing in
/// the store. Storage errors (`Storage`, `Io`) are carried with their
/// source, never turned into panics.
///
/// # Examples
///
/// ```
/// use readmark::{Config, ConversationId, Error, MessageId, Store, Timestamp, UserId};
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Config::new())?;
/// let err = store
///     .mark_read(ConversationId(1), UserId(1), MessageId(1), Timestamp(0))
///     .unwrap_err();
/// assert!(matches!(err, Error::UnknownConversation(ConversationId(1))));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The conversation was never created.
    #[error("unknown conversation {0}")]
    UnknownConversation(ConversationId),

    /// The conversation already exists.
    #[error("conversation {0} already exists")]
    ConversationExists(ConversationId),

    /// The user is not (or no longer) a member of the conversation.
    #[error("user {user} is not a member of conversation {conversation}")]
    NotMember {
        /// The conversation.
        conversation: ConversationId,
        /// The user.
        user: UserId,
    },

    /// The user is already a member of the conversation.
    #[error("user {user} is already a member of conversation {conversation}")]
    AlreadyMember {
        /// The conversation.
        conversation: ConversationId,
        /// The user.
        user: UserId,
    },

    /// A message id was not greater than the last one recorded in its
    /// conversation (ids must increase).
    #[error(
        "message {message} in conversation {conversation} is not after the last recorded message {last}"
    )]
    MessageOutOfOrder {
        /// The conversation.
        conversation: ConversationId,
        /// The rejected message id.
        message: MessageId,
        /// The newest message already recorded.
        last: MessageId,
    },

    /// The message was never recorded in this conversation.
    #[error("unknown message {message} in conversation {conversation}")]
    UnknownMessage {
        /// The conversation.
        conversation: ConversationId,
        /// The message.
        message: MessageId,
    },

    /// The thread has no message yet (a thread begins with its first
    /// reply), or its root is not a main-timeline message of the
    /// conversation.
    #[error("conversation {conversation} has no thread rooted at {root}")]
    UnknownThread {
        /// The conversation.
        conversation: ConversationId,
        /// The root named.
        root: MessageId,
    },

    /// The store on disk has a format version this build does not read.
    #[error(
        "unsupported store format version {found} at {path} (this build reads version {supported})"
    )]
    UnsupportedFormat {
        /// Version found on disk.
        found: u32,
        /// Version this build reads and writes.
        supported: u32,
        /// The store's directory.
        path: PathBuf,
    },

    /// A record could not be decoded: the data on disk is damaged or was not
    /// written by readmark.
    #[error("corrupt {column_family} record at key {key:02x?}: {reason}")]
    Corrupt {
        /// The column family holding the record.
        column_family: &'static str,
        /// The record's key.
        key: Vec<u8>,
        /// What was wrong with it.
        reason: &'static str,
    },

    /// An earlier write or fsync failed, so the store no longer knows what
    /// reached the disk and refuses writes. Close it and open it again:
    /// recovery replays the journal and loses nothing acknowledged.
    #[error("store is poisoned by an earlier I/O failure ({0}); close and reopen it")]
    Poisoned(String),

    /// The journal holds damage in data that had been synced (not a torn
    /// tail). Nothing was changed; open with
    /// [`RecoveryMode::TolerateCorruption`](crate::RecoveryMode) to replay
    /// every valid frame and skip the damage.
    #[error("journal {path} is corrupt at offset {offset}")]
    JournalCorrupt {
        /// The journal segment file.
        path: PathBuf,
        /// Byte offset of the first damaged frame.
        offset: u64,
    },

    /// A catch-up cursor that no store wrote (truncated, edited, or from a
    /// newer version): ask for a [`snapshot`](crate::Store::snapshot).
    #[error("invalid catch-up cursor")]
    InvalidCursor,

    /// An argument is out of range (for example a page limit of 0).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),

    /// A [`Config`](crate::Config) value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// An error from the storage layer (RocksDB): I/O, corruption RocksDB
    /// detected, ... Its [`kind`](StorageError::kind) says which.
    #[error("storage: {0}")]
    Storage(#[source] StorageError),

    /// An I/O error outside RocksDB.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The same error as a caller of a call about `timeline` sees it: a
    /// thread's internal id (design §13) replaced by its conversation's.
    pub(crate) fn in_timeline(self, timeline: crate::ids::Timeline) -> Self {
        let public = |c: ConversationId| {
            if crate::ids::is_public_id(c) {
                c
            } else {
                timeline.conversation()
            }
        };
        match self {
            Error::UnknownConversation(c) => Error::UnknownConversation(public(c)),
            Error::NotMember { conversation, user } => Error::NotMember {
                conversation: public(conversation),
                user,
            },
            Error::MessageOutOfOrder {
                conversation,
                message,
                last,
            } => Error::MessageOutOfOrder {
                conversation: public(conversation),
                message,
                last,
            },
            Error::UnknownMessage {
                conversation,
                message,
            } => Error::UnknownMessage {
                conversation: public(conversation),
                message,
            },
            other => other,
        }
    }
}

/// An error reported by the storage layer (RocksDB), as readmark's own
/// type: the `rocksdb` crate's version is not part of readmark's API.
///
/// # Examples
///
/// ```
/// use readmark::{Error, StorageErrorKind};
///
/// fn should_retry(e: &Error) -> bool {
///     matches!(e, Error::Storage(s) if s.kind() == StorageErrorKind::Busy)
/// }
/// assert!(!should_retry(&Error::InvalidCursor));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct StorageError {
    kind: StorageErrorKind,
    message: String,
}

impl StorageError {
    /// What kind of failure it is.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Error, StorageErrorKind, Store};
    /// let dir = tempfile::tempdir()?;
    /// let err = Store::open(dir.path().join("none"), Config::new().create_if_missing(false)).unwrap_err();
    /// let Error::Storage(e) = err else { panic!("{err}") };
    /// assert_eq!(e.kind(), StorageErrorKind::InvalidArgument);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    /// RocksDB's description of it.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{Config, Error, StorageErrorKind, Store};
    /// let dir = tempfile::tempdir()?;
    /// let err = Store::open(dir.path().join("none"), Config::new().create_if_missing(false)).unwrap_err();
    /// let Error::Storage(e) = err else { panic!("{err}") };
    /// assert_eq!(e.kind(), StorageErrorKind::InvalidArgument);
    /// assert!(!e.message().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Kinds of [`StorageError`], by what a caller can do about them.
///
/// # Examples
///
/// ```
/// use readmark::{Config, Error, StorageErrorKind, Store};
/// let dir = tempfile::tempdir()?;
/// let err = Store::open(dir.path().join("none"), Config::new().create_if_missing(false)).unwrap_err();
/// let Error::Storage(e) = err else { panic!("{err}") };
/// assert_eq!(e.kind(), StorageErrorKind::InvalidArgument);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageErrorKind {
    /// The disk or the file system failed (a full disk, a failing device,
    /// a permission): the store poisons itself if this hit a write.
    Io,
    /// RocksDB found damaged data (a checksum mismatch, a truncated file).
    Corruption,
    /// Transient: the database was busy, timed out or asked to try again
    /// (the store's directory locked by another process is `Io`).
    Busy,
    /// RocksDB refused an argument: an option value it rejects, or a
    /// store opened with [`Config::create_if_missing`](crate::Config::create_if_missing)
    /// off where there is none.
    InvalidArgument,
    /// This RocksDB build does not support what was asked (for example a
    /// compression it was built without).
    NotSupported,
    /// Anything else RocksDB reports.
    Other,
}

#[cfg(feature = "store")]
impl StorageErrorKind {
    fn of(e: &rocksdb::Error) -> Self {
        use rocksdb::ErrorKind as K;
        match e.kind() {
            K::IOError => StorageErrorKind::Io,
            K::Corruption => StorageErrorKind::Corruption,
            K::Busy
            | K::TryAgain
            | K::TimedOut
            | K::Aborted
            | K::Expired
            | K::MergeInProgress
            | K::Incomplete => StorageErrorKind::Busy,
            K::InvalidArgument => StorageErrorKind::InvalidArgument,
            K::NotSupported => StorageErrorKind::NotSupported,
            _ => StorageErrorKind::Other,
        }
    }
}

/// Turns a RocksDB error into readmark's: `.map_err(storage)?` wherever
/// RocksDB is called (deliberately not a `From` impl, which would put the
/// `rocksdb` crate into the public API).
#[cfg(feature = "store")]
pub(crate) fn storage(e: rocksdb::Error) -> Error {
    Error::Storage(StorageError {
        kind: StorageErrorKind::of(&e),
        message: e.into_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn io_error_is_the_source() {
        let e = Error::from(std::io::Error::other("disk on fire"));
        assert!(e.source().is_some());
        assert!(e.to_string().contains("disk on fire"));
    }
}
