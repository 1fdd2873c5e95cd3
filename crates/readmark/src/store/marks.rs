//! Read marks: the write path (one merge operand, no read of the mark),
//! point and prefix reads, "read by" derived from marks, and the unread flag.

use std::ops::ControlFlow;

use super::Store;
use super::writer::{Applied, Verified};
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::ids::{ConversationId, MessageId, Timeline, Timestamp, UserId};
use crate::pure::mark::{MarkState, ReadMark, UnreadFlag};

/// A page request: items strictly after `after` (a cursor returned by the
/// previous page), at most `limit` of them.
///
/// # Examples
///
/// ```
/// use readmark::{Page, UserId};
/// let first = Page::first(50);
/// let next = Page { after: Some(UserId(7)), limit: 50 };
/// assert_eq!(first.limit, next.limit);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Cursor: start after this user.
    pub after: Option<UserId>,
    /// Largest number of items returned.
    pub limit: usize,
}

impl Page {
    /// The first page of at most `limit` items.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(readmark::Page::first(10).after, None);
    /// ```
    #[must_use]
    pub fn first(limit: usize) -> Self {
        Self { after: None, limit }
    }
}

/// Which data answered a "read by" query.
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
/// # use readmark::{Page, ReadTime, ReceiptSource};
/// let now = Timestamp::now();
/// store.record_message(c, MessageId(1), alice, now)?;
/// store.mark_read(c, bob, MessageId(1), now)?;
/// let r = store.read_by(c, alice, MessageId(1), Page::first(10))?;
/// // A group of two keeps per-message receipts (the threshold is 50).
/// assert_eq!(r.source, ReceiptSource::PerMessage);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReceiptSource {
    /// The message's per-message receipts (a bitset of member slots, with
    /// read-time records), completed by the read marks: the message was
    /// recorded in a conversation at or under its receipt threshold and is
    /// within the retention period.
    PerMessage,
    /// Derived from the members' read marks: a member read message `M` iff
    /// their mark is at or past `M`. The answer for messages of large
    /// conversations and for messages past retention.
    Marks,
}

/// When a reader read the message.
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
/// # use readmark::{Page, ReadTime, ReceiptSource};
/// let now = Timestamp::now();
/// store.record_message(c, MessageId(1), alice, now)?;
/// store.mark_read(c, bob, MessageId(1), now)?;
/// let r = store.read_by(c, alice, MessageId(1), Page::first(10))?;
/// match r.readers[0].read_at {
///     ReadTime::At(t) => assert_eq!(t, now),          // recorded for this message
///     ReadTime::NoLaterThan(t) => assert!(t >= now),  // from a mark
///     _ => {}                                         // kinds added later
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReadTime {
    /// The time the member first read the message: the flushed mark
    /// advance that first covered it, or the single view of it, whichever
    /// came first. Advances combined in one flush window are recorded as
    /// one, at the time of the newest of them.
    At(Timestamp),
    /// Derived from a read mark: the member's mark reached its current
    /// position at this time, so they read the message no later than this.
    NoLaterThan(Timestamp),
}

/// One member who read a message.
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
/// # use readmark::{Page, ReadTime, ReceiptSource};
/// let now = Timestamp::now();
/// store.record_message(c, MessageId(1), alice, now)?;
/// store.mark_read(c, bob, MessageId(1), now)?;
/// let r = store.read_by(c, alice, MessageId(1), Page::first(10))?;
/// assert_eq!(r.readers[0].user, bob);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reader {
    /// The member.
    pub user: UserId,
    /// When they read it.
    pub read_at: ReadTime,
}

/// One page of the answer to "who read message M".
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
/// # use readmark::{Page, ReadTime, ReceiptSource};
/// let now = Timestamp::now();
/// store.record_message(c, MessageId(1), alice, now)?;
/// store.mark_read(c, bob, MessageId(1), now)?;
/// let r = store.read_by(c, alice, MessageId(1), Page::first(10))?;
/// assert_eq!((r.count, r.readers.len(), r.next), (1, 1, None));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBy {
    /// Members (other than the message's sender) who read it, over all pages.
    pub count: u64,
    /// This page of readers, in user id order.
    pub readers: Vec<Reader>,
    /// Cursor for the next page, `None` on the last page.
    pub next: Option<UserId>,
    /// What answered.
    pub source: ReceiptSource,
}

impl Store {
    /// Records that `user` has read `conversation` up to and including
    /// `up_to`, at time `at`, with the store's durability.
    ///
    /// The update joins the key's buffered state (a journal slot rewrite
    /// above [`Durability::Memory`]); the flusher writes it to RocksDB. The
    /// mark is the maximum of every update ever made (higher `up_to` wins;
    /// at equal `up_to` the earliest `at`), so stale, duplicated and
    /// reordered updates are harmless no-ops, not errors. Membership is
    /// checked with one point lookup on a key's first update.
    ///
    /// Nobody reads past the newest message: an `up_to` above the newest
    /// message recorded in the conversation is clamped to it, and in a
    /// conversation with no message yet the call changes nothing. (A
    /// receipt for an id the store has not seen, from a buggy or hostile
    /// client or one that raced a send, would otherwise mark every later
    /// message read. Refusing it instead would fail a client for a race;
    /// Synapse likewise ignores receipts for unknown events.)
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::NotMember`], storage errors.
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
    /// # for m in [10, 20, 30] { store.record_message(c, MessageId(m), UserId(2), Timestamp(1))?; }
    /// store.mark_read(c, u, MessageId(20), Timestamp(2))?;
    /// store.mark_read(c, u, MessageId(10), Timestamp(3))?; // late, ignored
    /// assert_eq!(store.mark(c, u)?.map(|m| m.up_to), Some(MessageId(20)));
    /// store.mark_read(c, u, MessageId(u64::MAX), Timestamp(4))?; // past the newest
    /// assert_eq!(store.mark(c, u)?.map(|m| m.up_to), Some(MessageId(30)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mark_read(
        &self,
        timeline: impl Into<Timeline>,
        user: UserId,
        up_to: MessageId,
        at: Timestamp,
    ) -> Result<()> {
        self.mark_read_with(timeline, user, up_to, at, self.config.durability)
    }

    /// [`mark_read`](Store::mark_read) with a per-call durability.
    ///
    /// # Errors
    ///
    /// As [`mark_read`](Store::mark_read).
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Durability, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let (c, u) = (ConversationId(1), UserId(1));
    /// # store.create_conversation(c)?;
    /// # store.add_member(c, u, Timestamp(0))?;
    /// store.mark_read_with(c, u, MessageId(5), Timestamp(1), Durability::PowerLoss)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mark_read_with(
        &self,
        timeline: impl Into<Timeline>,
        user: UserId,
        up_to: MessageId,
        at: Timestamp,
        durability: Durability,
    ) -> Result<()> {
        self.with_timeline(timeline.into(), |conversation| {
            // Only while someone listens: the mark it starts from tells a
            // no-op from an advance, and which messages it newly covers. The
            // buffer knows it after the key's first update, so this costs no
            // read on the write path. A no-op publishes nothing.
            let listening = self.events.has_subscribers();
            let newest = match self.newest.get(conversation.0) {
                Some(n) => n,
                None => self.newest_message_slow(conversation)?,
            };
            let Some(newest) = newest else {
                // No message yet: nothing to read, but the same answer to a
                // non-member as ever.
                self.view().require_member(conversation, user)?;
                return Ok(());
            };
            let up_to = up_to.min(MessageId(newest));
            let state = MarkState::from_mark(up_to, at);
            let prev = self.update_mark(conversation, user, state, durability, listening)?;
            if listening {
                let before = prev.and_then(|p| p.mark);
                if before.is_none_or(|m| m.up_to < up_to) {
                    let window = self.event_window_ms(conversation);
                    self.events.publish(
                        conversation.0,
                        user.0,
                        up_to.0,
                        at.0,
                        before.map(|m| m.up_to.0),
                        window,
                    );
                }
            }
            Ok(())
        })
    }

    /// The newest message recorded in `conversation` (`None`: none yet)
    /// when memory does not say (`Newest::get` missed): one read of the
    /// conversation record under its stripe lock, which orders it with
    /// sends. Out of line: the hot path is the lock-free hit.
    #[cold]
    #[inline(never)]
    fn newest_message_slow(&self, conversation: ConversationId) -> Result<Option<u64>> {
        let _stripe = self.lock(conversation);
        let record = self.view().conversation_record(conversation)?;
        let n = record.last_message().map(|m| m.0);
        self.newest.set(conversation.0, n, record.event_window_ms);
        Ok(n)
    }

    /// The conversation's own event window in ms, if it has one: from the
    /// slot `mark_read` just read, or (on a miss) the record. Called after
    /// a change is acknowledged, so it never fails: a record that cannot
    /// be read gives the store's window (and a log line).
    pub(crate) fn event_window_ms(&self, conversation: ConversationId) -> Option<u64> {
        if let Some(w) = self.newest.window(conversation.0) {
            return w;
        }
        match self.view().conversation_record(conversation) {
            Ok(r) => r.event_window_ms.map(u64::from),
            Err(e) => {
                tracing::warn!(conversation = conversation.0, error = %e, "event window unknown; the store's applies");
                None
            }
        }
    }

    /// One update of a user's mark state through the buffer. The first
    /// update of a key (since it was last evicted) checks membership under
    /// the conversation's lock, so no membership change comes between the
    /// check and the entry it makes: a change removes the key's entry under
    /// the same lock. Later updates find the entry and skip the check: a
    /// scroll burst pays one membership lookup, not one per update. With
    /// `want_prev`, returns the key's whole state before the update.
    pub(crate) fn update_mark(
        &self,
        conversation: ConversationId,
        user: UserId,
        state: MarkState,
        durability: Durability,
        want_prev: bool,
    ) -> Result<Option<MarkState>> {
        let (c, u) = (conversation.0, user.0);
        if let Applied::Done { prev } = self
            .writer
            .apply(c, u, state, durability, None, want_prev)?
        {
            return Ok(prev);
        }
        let _guard = self.lock(conversation);
        let verified = {
            let view = self.view();
            let member = view.require_member(conversation, user)?;
            let base = if want_prev {
                Some(view.stored_mark(conversation, user)?)
            } else {
                None
            };
            Verified {
                joined_seq: member.joined_seq,
                base,
            }
        };
        match self
            .writer
            .apply(c, u, state, durability, Some(verified), want_prev)?
        {
            Applied::Done { prev } => Ok(prev),
            Applied::Verify => Err(Error::InvalidArgument(
                "a verified update was refused (a bug)",
            )),
        }
    }

    /// The read mark of `user` in `conversation`, `None` if they have read
    /// nothing yet: the user's *own* state (their unread badge, their other
    /// devices). Not a receipt query: it ignores privacy and takes no
    /// viewer, so a server must not answer other users with it; use
    /// [`read_by`](Store::read_by), [`read_count`](Store::read_count) or
    /// [`marks`](Store::marks), which take the viewer.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::NotMember`].
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
    /// store.record_message(c, MessageId(5), alice, Timestamp(1))?;
    /// assert_eq!(store.mark(c, bob)?, None);
    /// store.mark_read(c, bob, MessageId(5), Timestamp(2))?;
    /// let mark = store.mark(c, bob)?.expect("bob read");
    /// assert_eq!((mark.up_to, mark.at), (MessageId(5), Timestamp(2)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mark(&self, timeline: impl Into<Timeline>, user: UserId) -> Result<Option<ReadMark>> {
        self.with_timeline(timeline.into(), |conversation| {
            let view = self.snapshot_view();
            view.require_member(conversation, user)?;
            Ok(view.mark_state(conversation, user)?.mark)
        })
    }

    /// Every current member's mark in `conversation`, in user id order
    /// (members who have read nothing are left out). One prefix scan of the
    /// marks, merge-joined with one of the members.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let c = ConversationId(1);
    /// # store.create_conversation(c)?;
    /// # for u in 1..=2 { store.add_member(c, UserId(u), Timestamp(0))?; }
    /// store.record_message(c, MessageId(4), UserId(1), Timestamp(1))?; // 1 read it by sending
    /// store.mark_read(c, UserId(2), MessageId(4), Timestamp(2))?;
    /// let marks = store.marks(c, UserId(1))?;
    /// let readers: Vec<UserId> = marks.iter().map(|(u, _)| *u).collect();
    /// assert_eq!(readers, vec![UserId(1), UserId(2)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn marks(
        &self,
        timeline: impl Into<Timeline>,
        viewer: UserId,
    ) -> Result<Vec<(UserId, ReadMark)>> {
        self.with_timeline(timeline.into(), |conversation| {
            self.privacy_consistent(|| self.marks_once(conversation, viewer))
        })
    }

    fn marks_once(
        &self,
        conversation: ConversationId,
        viewer: UserId,
    ) -> Result<Vec<(UserId, ReadMark)>> {
        let view = self.snapshot_view();
        view.require_member(conversation, viewer)?;
        let mut out = Vec::new();
        view.for_each_member(conversation, |user, member, state| {
            if member.is_private() && user != viewer {
                return ControlFlow::Continue(());
            }
            if let Some(m) = state.mark {
                out.push((user, m));
            }
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Marks the conversation as unread for `user` (Telegram's
    /// `unread_mark`, Matrix's `m.marked_unread`) without moving the mark
    /// backwards. The flag stays until the mark next advances past its
    /// current position, or until [`clear_unread_flag`](Store::clear_unread_flag)
    /// with a later time. Between flag writes, the later `at` wins.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::NotMember`].
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
    /// # for m in [5, 6] { store.record_message(c, MessageId(m), UserId(2), Timestamp(0))?; }
    /// store.mark_read(c, u, MessageId(5), Timestamp(1))?;
    /// store.set_unread_flag(c, u, Timestamp(2))?;
    /// assert!(store.unread_count(c, u)?.marked_unread);
    /// store.mark_read(c, u, MessageId(6), Timestamp(3))?; // the next advance clears it
    /// assert!(!store.unread_count(c, u)?.marked_unread);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_unread_flag(
        &self,
        timeline: impl Into<Timeline>,
        user: UserId,
        at: Timestamp,
    ) -> Result<()> {
        self.write_flag(timeline, user, at, true)
    }

    /// Clears the flag set by [`set_unread_flag`](Store::set_unread_flag),
    /// if `at` is later than the time it was set.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::NotMember`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let (c, u) = (ConversationId(1), UserId(1));
    /// # store.create_conversation(c)?;
    /// # store.add_member(c, u, Timestamp(0))?;
    /// store.set_unread_flag(c, u, Timestamp(2))?;
    /// store.clear_unread_flag(c, u, Timestamp(3))?;
    /// assert!(!store.unread_count(c, u)?.marked_unread);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear_unread_flag(
        &self,
        timeline: impl Into<Timeline>,
        user: UserId,
        at: Timestamp,
    ) -> Result<()> {
        self.write_flag(timeline, user, at, false)
    }

    fn write_flag(
        &self,
        timeline: impl Into<Timeline>,
        user: UserId,
        at: Timestamp,
        set: bool,
    ) -> Result<()> {
        self.with_timeline(timeline.into(), |conversation| {
            // The flag records the mark's position it applies to, so a later
            // advance clears it without rewriting it. This read is on a rare
            // user action, not on the mark path. The view is dropped before the
            // update, which takes the conversation's lock.
            let pos = {
                let view = self.view();
                view.require_member(conversation, user)?;
                view.mark_state(conversation, user)?.mark.map(|m| m.up_to.0)
            };
            let operand = MarkState::from_flag(UnreadFlag {
                time: at.0,
                set,
                pos,
            });
            let listening = self.events.has_subscribers();
            let prev = self.update_mark(
                conversation,
                user,
                operand,
                self.config.durability,
                listening,
            )?;
            // The owner's other devices hear of it at once; nobody else.
            if listening && prev.is_none_or(|p| !p.covers(&operand)) {
                self.events.publish_flag(conversation.0, user.0);
            }
            Ok(())
        })
    }
}
