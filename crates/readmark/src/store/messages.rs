//! Messages, deletions and exact unread counts.
//!
//! Each message record stores its ordinal (1-based position among all
//! messages ever recorded in the conversation). With `P` the newest message
//! a member has seen (their mark, or the newest message when they joined,
//! whichever is later):
//!
//! ```text
//! unread = message_count - ordinal(newest message <= P) - deleted messages after P
//! ```
//!
//! The ordinal is one `seek_for_prev`; deleted messages after `P` are a
//! range scan over the `deletions` index, which only holds deleted messages
//! (rare, and usually recent). No unread message is ever visited.

use std::ops::ControlFlow;

use rocksdb::WriteBatch;

use super::conversations::conversations_in;
use super::writer::{Applied, Verified};
use super::{Cf, ConvMeta, Store, View, corrupt};
use crate::error::{Error, Result, storage};
use crate::ids::{ConversationId, MessageId, Timeline, Timestamp, UserId};
use crate::pure::keys;
use crate::pure::mark::MarkState;
use crate::pure::records::{ConversationRecord, MemberRecord, MessageRecord};

/// Whether a message counts as unread (see [`MessageOptions`]).
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
/// # use readmark::{MessageKind, MessageOptions};
/// store.record_message(c, MessageId(1), alice, Timestamp(1))?;
/// let joined = MessageOptions::new().kind(MessageKind::System);
/// store.record_message_with(c, MessageId(2), alice, Timestamp(2), &joined)?;
/// assert_eq!(store.unread_count(c, bob)?.count, 1); // the notice does not count
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// Unread to every other member until their mark passes it.
    #[default]
    Regular,
    /// A join, a leave, an edit, a notice: recorded, ordered and readable
    /// like any message (marks, "read by", events), but never counted as
    /// unread, as Mattermost's system messages are not.
    System,
}

/// What [`Store::record_message_with`] records besides the message itself.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, MessageKind, MessageOptions, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// # let c = ConversationId(1);
/// # store.create_conversation(c)?;
/// # for u in 1..=2 { store.add_member(c, UserId(u), Timestamp(0))?; }
/// store.record_message(c, MessageId(1), UserId(1), Timestamp(1))?;
/// let notice = MessageOptions::new().kind(MessageKind::System); // "carol joined"
/// store.record_message_with(c, MessageId(2), UserId(1), Timestamp(2), &notice)?;
/// assert_eq!(store.unread_count(c, UserId(2))?.count, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct MessageOptions {
    kind: MessageKind,
    mentions: Vec<UserId>,
    everyone: bool,
}

impl MessageOptions {
    /// A regular message.
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
    /// # use readmark::{MessageKind, MessageOptions};
    /// store.record_message_with(c, MessageId(1), alice, Timestamp(1), &MessageOptions::new())?;
    /// assert_eq!(store.unread_count(c, bob)?.count, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the kind ([`MessageKind::Regular`] by default).
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
    /// # use readmark::{MessageKind, MessageOptions};
    /// let edit = MessageOptions::new().kind(MessageKind::System);
    /// store.record_message_with(c, MessageId(1), alice, Timestamp(1), &edit)?;
    /// assert_eq!(store.unread_count(c, bob)?.count, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn kind(mut self, kind: MessageKind) -> Self {
        self.kind = kind;
        self
    }

    /// Members the message mentions by name (at most [`MAX_MENTIONS`](crate::MAX_MENTIONS);
    /// duplicates and the sender are ignored; a user who is not a member,
    /// or joins later, never counts it). Counted by
    /// [`Unread::mentions`] while unread.
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
    /// # use readmark::{MessageKind, MessageOptions};
    /// let hey_bob = MessageOptions::new().mention([bob]);
    /// store.record_message_with(c, MessageId(1), alice, Timestamp(1), &hey_bob)?;
    /// assert_eq!(store.unread_count(c, bob)?.mentions, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mention(mut self, users: impl IntoIterator<Item = UserId>) -> Self {
        self.mentions.extend(users);
        self
    }

    /// The message mentions everyone ("@everyone", "@channel"): an unread
    /// mention for every member but its sender who has not read it.
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
    /// # use readmark::{MessageKind, MessageOptions};
    /// let here = MessageOptions::new().mention_everyone();
    /// store.record_message_with(c, MessageId(1), alice, Timestamp(1), &here)?;
    /// assert_eq!(store.unread_count(c, bob)?.mentions, 1);
    /// assert_eq!(store.unread_count(c, alice)?.mentions, 0); // her own message
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mention_everyone(mut self) -> Self {
        self.everyone = true;
        self
    }
}

/// Unread state of one member in one conversation.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// # store.create_conversation(ConversationId(1))?;
/// # store.add_member(ConversationId(1), UserId(1), Timestamp(0))?;
/// let u = store.unread_count(ConversationId(1), UserId(1))?;
/// assert_eq!((u.count, u.marked_unread), (0, false));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Unread {
    /// Live (not deleted) messages after the member's read position.
    pub count: u64,
    /// The member marked the conversation unread and has not advanced their
    /// mark since (shown as a badge even when `count` is 0).
    pub marked_unread: bool,
    /// Unread messages that mention the member, by name or as everyone
    /// (Mattermost's `MentionCount`, Matrix's `highlight_count`): counted
    /// like `count` (after the read position, not deleted, not of an
    /// uncounted kind), and never one's own "@everyone".
    pub mentions: u64,
}

impl Store {
    /// Records a message in a conversation's main timeline or, given a
    /// [`Timeline::thread`], in the thread rooted at a main-timeline message
    /// (its first reply begins the thread). Ids must increase inside a
    /// conversation, across its main timeline and threads together. Sending
    /// counts as reading: the sender's mark in that timeline advances to
    /// the message (an update at the store's durability, journaled before
    /// the message is written), so a user's own messages are never unread
    /// to them. A `sent_at` earlier than the previous message's in the
    /// timeline is stored as that time: times follow ids, as receipt
    /// retention assumes.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::NotMember`] (the sender),
    /// [`Error::MessageOutOfOrder`], [`Error::UnknownThread`] (the root is
    /// not a main-timeline message of the conversation).
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Error, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # store.create_conversation(ConversationId(1))?;
    /// # store.add_member(ConversationId(1), UserId(1), Timestamp(0))?;
    /// store.record_message(ConversationId(1), MessageId(10), UserId(1), Timestamp(1))?;
    /// let err = store.record_message(ConversationId(1), MessageId(10), UserId(1), Timestamp(2));
    /// assert!(matches!(err, Err(Error::MessageOutOfOrder { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn record_message(
        &self,
        timeline: impl Into<Timeline>,
        message: MessageId,
        sender: UserId,
        sent_at: Timestamp,
    ) -> Result<()> {
        self.record_message_with(timeline, message, sender, sent_at, &MessageOptions::new())
    }

    /// [`record_message`](Store::record_message) with options: the
    /// message's [`MessageKind`] and mentions.
    ///
    /// # Errors
    ///
    /// As [`record_message`](Store::record_message).
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
    /// # use readmark::{MessageKind, MessageOptions};
    /// store.record_message_with(c, MessageId(1), alice, Timestamp(1), &MessageOptions::new().mention([bob]))?;
    /// let unread = store.unread_count(c, bob)?;
    /// assert_eq!((unread.count, unread.mentions), (1, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn record_message_with(
        &self,
        timeline: impl Into<Timeline>,
        message: MessageId,
        sender: UserId,
        sent_at: Timestamp,
        options: &MessageOptions,
    ) -> Result<()> {
        let timeline = timeline.into();
        self.record_in(timeline, message, sender, sent_at, options)
            .map_err(|e| e.in_timeline(timeline))
    }

    fn record_in(
        &self,
        timeline: Timeline,
        message: MessageId,
        sender: UserId,
        sent_at: Timestamp,
        options: &MessageOptions,
    ) -> Result<()> {
        let owner = timeline.conversation();
        super::threads::check_public(owner)?;
        let mut stripe = self.lock(owner);
        let listening = self.events.has_subscribers();
        let mut batch = WriteBatch::default();
        // What the last writer under this lock wrote, or one read each.
        let view = self.view();
        let (mut parent, parent_sent_at) = match stripe.cached(owner) {
            Some(meta) => (meta.record, meta.last_sent_at),
            None => view.record_and_last_sent(owner)?,
        };
        // A reply goes to its thread's own timeline (begun by its first
        // reply); only the newest message of any timeline stays in the
        // conversation's record.
        let (conversation, mut conv, last_sent_at) = match timeline.root() {
            None => (owner, parent, parent_sent_at),
            Some(root) => {
                // The sender's membership first: a non-member learns
                // nothing about the conversation's threads.
                view.require_member(owner, sender)?;
                match self.thread_for_send(&view, owner, root, &mut batch)? {
                    (t, Some(fresh)) => (t, fresh.under(&parent), None),
                    // A thread's own fields as this lock's last writer
                    // left them, under its conversation's shared ones.
                    (t, None) => match stripe.cached(t) {
                        Some(meta) => (t, meta.record.under(&parent), meta.last_sent_at),
                        None => {
                            let (conv, last) = view.record_and_last_sent(t)?;
                            (t, conv, last)
                        }
                    },
                }
            }
        };
        // A buffered key was checked when it was buffered, under this lock,
        // and a membership change removes it under this lock too.
        let joined_seq = match self.writer.buffered_membership(conversation.0, sender.0) {
            Some(j) => j,
            None => view.require_member(owner, sender)?.joined_seq,
        };
        // With someone listening, whether the send covered unread messages
        // also depends on where the sender's history starts.
        let joined_after = if listening {
            view.member_record(owner, sender)?
                .and_then(|m| m.joined_after)
        } else {
            None
        };
        drop(view);
        let mut sent_at = sent_at;
        let before_last = conv.last_message();
        // Ids increase across the conversation's timelines together, so a
        // late joiner's starting point (`joined_after`) orders against
        // threads too, and an id names one message of the conversation.
        if let Some(newest) = parent.newest_any
            && message.0 <= newest
        {
            return Err(Error::MessageOutOfOrder {
                conversation: owner,
                message,
                last: MessageId(newest),
            });
        }
        // Times follow ids within a timeline: a skewed client clock cannot
        // make a newer message older, which retention and receipt planning
        // rely on (docs/design.md §5.6).
        if let Some(prev) = last_sent_at {
            sent_at = sent_at.max(prev);
        }
        conv.message_count += 1;
        conv.last_message = message.0;
        conv.newest_any = Some(message.0);
        parent.newest_any = Some(message.0);
        let uncounted = options.kind == MessageKind::System;
        let named = super::mentions::normalise(&options.mentions)?;
        let record = MessageRecord {
            ordinal: conv.message_count,
            sender,
            sent_at,
            deleted: false,
            tracked: conv.per_message,
            uncounted,
        };
        let advance = MarkState::from_mark(message, sent_at);
        batch.put_cf(
            self.cf(Cf::Messages),
            keys::message_key(conversation, message),
            record.encode(),
        );
        super::mentions::write_mentions(
            self,
            &mut batch,
            conversation,
            message,
            sender,
            &named,
            options.everyone,
        );
        if uncounted {
            // Counted out from the start, exactly as a deletion is: the
            // unread formula subtracts the `deletions` index (§4).
            conv.deleted_count += 1;
            batch.put_cf(
                self.cf(Cf::Deletions),
                keys::message_key(conversation, message),
                [],
            );
        }
        batch.put_cf(
            self.cf(Cf::Conversations),
            keys::id_key(conversation.0),
            conv.encode(),
        );
        if conversation != owner {
            batch.put_cf(
                self.cf(Cf::Conversations),
                keys::id_key(owner.0),
                parent.encode(),
            );
        }
        // Sending counts as reading: the sender's advance is an ordinary
        // update at the store's durability, journaled before the message is
        // written, so whatever message survives a failure, the sender's
        // mark covers it (at `Memory`, a crash may lose the advance, as any
        // `Memory` update). Through the buffer it combines with the
        // sender's reads, and its flush plans it like any advance (its
        // change-log entry, and a run over what others posted before).
        // With someone listening, the state it starts from tells whether
        // the send covered messages the sender had not read (an event);
        // the buffer knows it, or one read of the stored mark does.
        let mut verified = Verified {
            joined_seq,
            base: None,
        };
        let prev = loop {
            match self.writer.apply(
                conversation.0,
                sender.0,
                advance,
                self.config.durability,
                Some(verified),
                listening,
            )? {
                Applied::Done { prev } => break prev,
                Applied::Verify if listening && verified.base.is_none() => {
                    verified.base = Some(self.view().stored_mark(conversation, sender)?);
                }
                Applied::Verify => {
                    return Err(Error::InvalidArgument(
                        "a verified update was refused (a bug)",
                    ));
                }
            }
        };
        self.write_structural(batch)?;
        // Marks made from now on may cover it (`mark_read` clamps to it).
        self.newest
            .set(conversation.0, Some(message.0), conv.event_window_ms);
        // A send that covered others' unread messages moved the sender
        // into their `read_by`: other members hear of it like any read.
        // One that covered only itself tells nobody anything new.
        if listening {
            let before = prev.and_then(|p| p.mark);
            // As `MemberRecord::read_position`, from the one field read.
            let seen = before.map(|m| m.up_to).max(joined_after);
            if before_last.is_some_and(|l| seen.is_none_or(|s| s < l)) {
                self.events.publish(
                    conversation.0,
                    sender.0,
                    message.0,
                    sent_at.0,
                    before.map(|m| m.up_to.0),
                    conv.event_window_ms.map(u64::from),
                );
            }
        }
        // The conversation's record as just written: the main timeline's
        // own, or the one a reply moved the newest message of.
        let meta = if conversation == owner {
            ConvMeta {
                record: conv,
                last_sent_at: Some(sent_at),
            }
        } else {
            ConvMeta {
                record: parent,
                last_sent_at: parent_sent_at,
            }
        };
        stripe.keep(owner, meta);
        if conversation != owner {
            // Only its own fields are used from here (the shared ones are
            // read from the conversation's, which membership and policy
            // changes keep or forget).
            stripe.keep(
                conversation,
                ConvMeta {
                    record: conv,
                    last_sent_at: Some(sent_at),
                },
            );
        }
        Ok(())
    }

    /// Deletes a message of a timeline: it stops counting as unread for
    /// everyone. Deleting an already deleted message changes nothing.
    /// Deleting a thread's root leaves its thread as it was.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::UnknownMessage`] (also a
    /// message of another timeline), [`Error::UnknownThread`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let c = ConversationId(1);
    /// # store.create_conversation(c)?;
    /// # store.add_member(c, UserId(1), Timestamp(0))?;
    /// # store.add_member(c, UserId(2), Timestamp(0))?;
    /// store.record_message(c, MessageId(10), UserId(1), Timestamp(1))?;
    /// assert_eq!(store.unread_count(c, UserId(2))?.count, 1);
    /// store.delete_message(c, MessageId(10))?;
    /// assert_eq!(store.unread_count(c, UserId(2))?.count, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn delete_message(&self, timeline: impl Into<Timeline>, message: MessageId) -> Result<()> {
        let timeline = timeline.into();
        self.delete_in(timeline, message)
            .map_err(|e| e.in_timeline(timeline))
    }

    fn delete_in(&self, timeline: Timeline, message: MessageId) -> Result<()> {
        super::threads::check_public(timeline.conversation())?;
        let mut guard = self.lock(timeline.conversation());
        guard.forget(timeline.conversation());
        let view = self.view();
        let conversation = self.timeline_id(&view, timeline)?;
        guard.forget(conversation);
        let mut conv = view.conversation_record(conversation)?;
        let mut record = view.require_message(conversation, message)?;
        if record.deleted {
            return Ok(());
        }
        let key = keys::message_key(conversation, message);
        let mut batch = WriteBatch::default();
        // A message of an uncounted kind is in the index already.
        if !record.uncounted {
            conv.deleted_count += 1;
            batch.put_cf(self.cf(Cf::Deletions), key, []);
        }
        record.deleted = true;
        batch.put_cf(self.cf(Cf::Messages), key, record.encode());
        batch.put_cf(
            self.cf(Cf::Conversations),
            keys::id_key(conversation.0),
            conv.encode(),
        );
        self.write_structural(batch)
    }

    /// The unread state of `user` in a timeline, exact across deletes,
    /// late joins and the unread flag. A conversation's count is its main
    /// timeline's: thread replies count in their thread
    /// ([`unread_threads`](Store::unread_threads)), and both together in
    /// [`unread_total`](Store::unread_total).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::NotMember`] (a member who
    /// left has no count), [`Error::UnknownThread`].
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
    /// for m in 1..=3 {
    ///     store.record_message(c, MessageId(m), alice, Timestamp(m))?;
    /// }
    /// store.mark_read(c, bob, MessageId(1), Timestamp(10))?;
    /// let unread = store.unread_count(c, bob)?;
    /// assert_eq!((unread.count, unread.marked_unread, unread.mentions), (2, false, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unread_count(&self, timeline: impl Into<Timeline>, user: UserId) -> Result<Unread> {
        let timeline = timeline.into();
        let view = self.snapshot_view();
        let counted = || {
            let conversation = self.timeline_id(&view, timeline)?;
            let member = view.require_member(conversation, user)?;
            let conv = view.conversation_record(conversation)?;
            let state = view.mark_state(conversation, user)?;
            unread_from(&view, conversation, user, &conv, &member, &state)
        };
        counted().map_err(|e| e.in_timeline(timeline))
    }

    /// The unread state of every conversation `user` is a member of, in
    /// conversation id order: a few point lookups and one seek each, cheap
    /// enough for every conversation at login.
    ///
    /// # Errors
    ///
    /// Storage errors only.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// for c in 1..=2 {
    ///     store.create_conversation(ConversationId(c))?;
    ///     store.add_member(ConversationId(c), UserId(7), Timestamp(0))?;
    /// }
    /// let all = store.unread_counts(UserId(7))?;
    /// assert_eq!(all.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unread_counts(&self, user: UserId) -> Result<Vec<(ConversationId, Unread)>> {
        let mut out = Vec::new();
        let view = self.snapshot_view();
        for conversation in conversations_in(&view, user)? {
            let member = view.member_record(conversation, user)?.ok_or_else(|| {
                corrupt(
                    Cf::Members,
                    &keys::member_key(conversation, user),
                    "user index names a membership that does not exist",
                )
            })?;
            let conv = view.conversation_record(conversation)?;
            let state = view.mark_state(conversation, user)?;
            out.push((
                conversation,
                unread_from(&view, conversation, user, &conv, &member, &state)?,
            ));
        }
        Ok(out)
    }
}

pub(crate) fn unread_from(
    view: &View<'_>,
    conversation: ConversationId,
    user: UserId,
    conv: &ConversationRecord,
    member: &MemberRecord,
    state: &MarkState,
) -> Result<Unread> {
    let seen = member.read_position(state.mark.map(|m| m.up_to));
    let count = match seen {
        None => conv.message_count - conv.deleted_count,
        Some(p) if conv.last_message().is_none_or(|last| p >= last) => 0,
        Some(p) => {
            let seen_ordinal = ordinal_at_or_before(view, conversation, p)?;
            let deleted_after = if conv.deleted_count == 0 {
                0
            } else {
                deleted_after(view, conversation, p)?
            };
            conv.message_count
                .checked_sub(seen_ordinal)
                .and_then(|n| n.checked_sub(deleted_after))
                .ok_or_else(|| {
                    corrupt(
                        Cf::Conversations,
                        &keys::id_key(conversation.0),
                        "message count below a message ordinal",
                    )
                })?
        }
    };
    // Mentions are of counted unread messages: none without one.
    let mentions = if count == 0 {
        0
    } else {
        super::mentions::unread_mentions(view, conversation, user, seen)?
    };
    Ok(Unread {
        count,
        marked_unread: state.marked_unread(),
        mentions,
    })
}

/// Ordinal of the newest message with id `<= p`, 0 if none.
fn ordinal_at_or_before(
    view: &View<'_>,
    conversation: ConversationId,
    p: MessageId,
) -> Result<u64> {
    let mut it = view.prefix_iter(Cf::Messages, conversation.0, 0);
    it.seek_for_prev(keys::message_key(conversation, p));
    let ordinal = match (it.key(), it.value()) {
        (Some(k), Some(v)) => {
            MessageRecord::decode(v)
                .ok_or_else(|| corrupt(Cf::Messages, k, "bad message record"))?
                .ordinal
        }
        _ => 0,
    };
    it.status().map_err(storage)?;
    Ok(ordinal)
}

/// Deleted messages with id `> p`.
fn deleted_after(view: &View<'_>, conversation: ConversationId, p: MessageId) -> Result<u64> {
    let Some(from) = p.0.checked_add(1) else {
        return Ok(0);
    };
    let mut n = 0u64;
    view.scan_prefix(Cf::Deletions, conversation.0, from, |_, _| {
        n += 1;
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(n)
}
