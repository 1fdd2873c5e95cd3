//! # readmark
//!
//! A storage engine for chat read receipts: who read which message and
//! when, at the scale of a large messaging product, without the read traffic
//! outweighing the message traffic.
//!
//! - **Read marks** (last-read pointers), one per (conversation, user),
//!   stored through a RocksDB merge operator that keeps the maximum: no
//!   read-before-write, and duplicated, stale or reordered updates converge.
//! - **Membership** with a second index (user → conversations) kept in the
//!   same atomic batch.
//! - **Exact unread counts** from message ordinals, across deletes, late
//!   joins and the "marked unread" flag, without visiting unread messages.
//! - **Per-message receipts** for small groups (a bitset per message), marks
//!   only for larger conversations.
//! - **Real-time receipt events** ([`Store::subscribe`]), coalesced per
//!   (conversation, reader) and bounded, with recipients by conversation
//!   size; **private receipts** ([`Store::set_receipts_private`]); receipt
//!   queries that take the viewer; **catch-up** after reconnect
//!   ([`Store::changes_since`], [`Store::snapshot`]).
//!
//! - **Threads** ([`Timeline::thread`]): a mark, unread counts, mentions
//!   and receipts per thread, as in Matrix MSC3771; members, privacy and
//!   policies are the conversation's.
//!
//! The design, with every on-disk format as a byte diagram, is in
//! `docs/design.md`.
//!
//! # Examples
//!
//! ```
//! use readmark::{Config, ConversationId, MessageId, Page, Store, Timestamp, UserId};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path(), Config::new())?;
//! let (chat, alice, bob) = (ConversationId(1), UserId(10), UserId(11));
//! store.create_conversation(chat)?;
//! store.add_member(chat, alice, Timestamp(0))?;
//! store.add_member(chat, bob, Timestamp(0))?;
//! store.record_message(chat, MessageId(1), alice, Timestamp(1_000))?;
//!
//! store.mark_read(chat, bob, MessageId(1), Timestamp(2_000))?;
//! assert_eq!(store.read_by(chat, alice, MessageId(1), Page::first(10))?.count, 1);
//! assert_eq!(store.unread_count(chat, bob)?.count, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
// Without the store, the encodings are only reached through `fuzzing`.
#![cfg_attr(not(feature = "store"), allow(dead_code))]

mod config;
mod error;
mod ids;
mod pure;
#[cfg(feature = "store")]
mod store;

pub use config::{Config, Durability, Recipients, RecoveryMode};
pub use error::{Error, Result, StorageError, StorageErrorKind};
pub use ids::{ConversationId, MessageId, Timeline, Timestamp, UserId};
pub use pure::cursor::{CURSOR_LEN, Cursor};
pub use pure::mark::ReadMark;
pub use pure::merge::{MergeOutcome, merge_marks};
#[cfg(feature = "store")]
pub use store::{
    AUTHOR_SCAN_LIMIT, CatchUp, Changes, DiskUsage, Event, EventPolicy, FORMAT_VERSION,
    MAX_MENTIONS, MemoryUsage, MessageKind, MessageOptions, Page, PrivacyScope, Problem, ReadBy,
    ReadCount, ReadState, ReadTime, Reader, ReceiptEvent, ReceiptSource, ReceiptUsage, Report,
    RocksDbIo, SegmentInfo, Snapshot, Stats, Store, Subscription, TableUsage, ThreadUnread, Unread,
    dump, inspect, verify,
};

// The README's usage example is compiled and run as a doc test.
#[cfg(all(doctest, feature = "store"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// Entry points for fuzz targets and external test harnesses: the decoders
/// of every on-disk format and the bodies of the `cargo fuzz` targets,
/// compiled only with the `testing` feature, never part of the supported API.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzzing;
