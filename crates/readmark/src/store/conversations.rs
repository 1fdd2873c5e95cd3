//! Conversations and membership, with the second index
//! (user → conversations) kept in the same write batch as the first.

use std::ops::ControlFlow;

use rocksdb::WriteBatch;

use super::receipts::MemberChange;
use super::{Cf, Store, View, corrupt};
use crate::error::{Error, Result};
use crate::ids::{ConversationId, MessageId, Timestamp, UserId};
use crate::pure::keys;
use crate::pure::records::{ConversationRecord, MemberRecord};

impl Store {
    /// Creates an empty conversation.
    ///
    /// # Errors
    ///
    /// [`Error::ConversationExists`] if it already exists.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Error, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// store.create_conversation(ConversationId(9))?;
    /// assert!(matches!(store.create_conversation(ConversationId(9)), Err(Error::ConversationExists(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_conversation(&self, conversation: ConversationId) -> Result<()> {
        super::threads::check_public(conversation)?;
        let mut guard = self.lock(conversation);
        guard.forget(conversation);
        match self.view().conversation_record(conversation) {
            Ok(_) => return Err(Error::ConversationExists(conversation)),
            Err(Error::UnknownConversation(_)) => {}
            Err(e) => return Err(e),
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(Cf::Conversations),
            keys::id_key(conversation.0),
            ConversationRecord {
                // No members: at or under any threshold.
                per_message: true,
                ..ConversationRecord::default()
            }
            .encode(),
        );
        self.write_structural(batch)
    }

    /// Adds `user` to `conversation`. Unread counting for the new member
    /// starts after the newest message recorded so far: history is not
    /// shown as unread.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::AlreadyMember`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// store.create_conversation(ConversationId(1))?;
    /// store.add_member(ConversationId(1), UserId(5), Timestamp(0))?;
    /// assert_eq!(store.member_count(ConversationId(1))?, 1);
    /// assert_eq!(store.conversations_of(UserId(5))?, vec![ConversationId(1)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_member(
        &self,
        conversation: ConversationId,
        user: UserId,
        at: Timestamp,
    ) -> Result<()> {
        // The conversation's buffered advances are written under the mode
        // they were made in (this join may cross the threshold). Nothing
        // buffered or journaled for the joiner from an earlier membership
        // is written or replayed after this one begins: both carry the
        // membership's `joined_seq` (docs/design.md §8).
        super::threads::check_public(conversation)?;
        self.flush_timelines(conversation)?;
        // Held until the batch lands: a concurrent "private everywhere"
        // either sees this membership or is seen by it.
        let _settings = self.privacy_lock.lock();
        let private_all = self.private_everywhere(user)?;
        let mut guard = self.lock(conversation);
        guard.forget(conversation);
        let view = self.view();
        let mut conv = view.conversation_record(conversation)?;
        if view.member_record(conversation, user)?.is_some() {
            return Err(Error::AlreadyMember { conversation, user });
        }
        // Under the lock, which a thread's first message takes too.
        let threads = super::threads::thread_ids(&view, conversation)?;
        conv.member_count += 1;
        let mut batch = WriteBatch::default();
        // Slots are only handed out in per-message mode, where the member
        // table is small enough to scan for the lowest free one. A freed
        // slot may be reused: the new holder's bit counts only on messages
        // recorded after they joined (`joined_after`), and the previous
        // holder left before any of those existed (docs/design.md §5.2).
        let slot = self.decide_mode(
            &view,
            conversation,
            &mut conv,
            &mut batch,
            MemberChange::Joining,
        )?;
        let mut member = MemberRecord {
            // The newest message of any timeline: thread replies sent
            // before the join are history too.
            joined_after: conv.newest_any.map(MessageId),
            joined_at: at,
            slot,
            private_here: false,
            private_all,
            joined_seq: 0,
        };
        batch.put_cf(
            self.cf(Cf::UserConversations),
            keys::user_index_key(user, conversation),
            [],
        );
        // A mark write that raced an earlier leave may have landed after the
        // leave deleted the mark, with its read-time run; a new membership
        // starts from nothing.
        for timeline in std::iter::once(conversation.0).chain(threads.iter().copied()) {
            let timeline = ConversationId(timeline);
            batch.delete_cf(self.cf(Cf::Marks), keys::member_key(timeline, user));
            self.delete_read_times(&mut batch, timeline, user);
        }
        batch.put_cf(
            self.cf(Cf::Conversations),
            keys::id_key(conversation.0),
            conv.encode(),
        );
        let shows_others = self.shows_others(&conv);
        drop(view);
        // Before the batch: until it lands the user is not a member, so
        // anything buffered for the key predates this membership. (A key's
        // first update checks membership under this lock, so none can be
        // buffered after the batch for an earlier membership.)
        self.writer.discard(conversation.0, user.0);
        for &t in &threads {
            self.writer.discard(t, user.0);
        }
        let members_cf = self.cf(Cf::Members);
        self.write_structural_with(batch, |v, seq, batch| {
            // Changes up to `seq` predate the membership: catch-up does not
            // tell the joiner about readers who left or hid before it.
            member.joined_seq = seq;
            batch.put_cf(
                members_cf,
                keys::member_key(conversation, user),
                member.encode(),
            );
            // The joiner's catch-up must list the marks already there.
            if shows_others {
                self.visible_marks_all(v, conversation, &threads)
            } else {
                Ok(Vec::new())
            }
        })
    }

    /// Writes what the conversation's timelines have buffered, before a
    /// membership change: under the receipt mode it was made in (the change
    /// may cross the threshold).
    pub(crate) fn flush_timelines(&self, conversation: ConversationId) -> Result<()> {
        let mut dirty = self.writer.combiner.dirty_in(conversation.0);
        let threads = super::threads::thread_ids(&self.view(), conversation)?;
        for t in threads {
            dirty.extend(self.writer.combiner.dirty_in(t));
        }
        self.writer.flush_keys(dirty)
    }

    /// Removes `user` from `conversation`, with their read mark: a member
    /// who left has no unread count and no longer appears in "read by".
    /// If they join again, unread counting restarts at the newest message.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::NotMember`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Error, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # store.create_conversation(ConversationId(1))?;
    /// store.add_member(ConversationId(1), UserId(5), Timestamp(0))?;
    /// store.remove_member(ConversationId(1), UserId(5))?;
    /// assert!(matches!(store.unread_count(ConversationId(1), UserId(5)), Err(Error::NotMember { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove_member(&self, conversation: ConversationId, user: UserId) -> Result<()> {
        // As for a join: the others' buffered advances are written under
        // the mode they were made in.
        super::threads::check_public(conversation)?;
        self.flush_timelines(conversation)?;
        let mut guard = self.lock(conversation);
        guard.forget(conversation);
        let view = self.view();
        let mut conv = view.conversation_record(conversation)?;
        if view.member_record(conversation, user)?.is_none() {
            return Err(Error::NotMember { conversation, user });
        }
        let threads = super::threads::thread_ids(&view, conversation)?;
        let showed_others = self.shows_others(&conv);
        conv.member_count = conv.member_count.saturating_sub(1);
        let mut batch = WriteBatch::default();
        self.decide_mode(
            &view,
            conversation,
            &mut conv,
            &mut batch,
            MemberChange::Leaving(user),
        )?;
        batch.delete_cf(self.cf(Cf::Members), keys::member_key(conversation, user));
        batch.delete_cf(
            self.cf(Cf::UserConversations),
            keys::user_index_key(user, conversation),
        );
        // The leaver's marks in every timeline go with the membership.
        for timeline in std::iter::once(conversation.0).chain(threads.iter().copied()) {
            let timeline = ConversationId(timeline);
            self.delete_read_times(&mut batch, timeline, user);
            batch.delete_cf(self.cf(Cf::Marks), keys::member_key(timeline, user));
        }
        batch.put_cf(
            self.cf(Cf::Conversations),
            keys::id_key(conversation.0),
            conv.encode(),
        );
        let shrunk_into_members = !showed_others && self.shows_others(&conv);
        drop(view);
        // The leaver's entry tells the others' catch-up to forget their
        // mark; after a shrink into "everyone sees everyone", the marks
        // there are news too (the view still has the leaver: left out).
        self.write_structural_with(batch, |v, _, _| {
            let mut rows = if shrunk_into_members {
                self.visible_marks_all(v, conversation, &threads)?
            } else {
                Vec::new()
            };
            rows.retain(|&(_, u)| u != user.0);
            rows.push((conversation.0, user.0));
            rows.extend(threads.iter().map(|&t| (t, user.0)));
            Ok(rows)
        })?;
        // Whatever the leaver has buffered predates the leave: drop it (and
        // zero its journal slot). Under this conversation's lock, so no
        // update of theirs makes a new entry until a new membership.
        self.writer.discard(conversation.0, user.0);
        for &t in &threads {
            self.writer.discard(t, user.0);
        }
        Ok(())
    }

    /// Whether `user` is currently a member of `conversation`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// store.create_conversation(ConversationId(1))?;
    /// assert!(!store.is_member(ConversationId(1), UserId(2))?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_member(&self, conversation: ConversationId, user: UserId) -> Result<bool> {
        super::threads::check_public(conversation)?;
        match self.view().require_member(conversation, user) {
            Ok(_) => Ok(true),
            Err(Error::NotMember { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Number of current members.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Store};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// store.create_conversation(ConversationId(1))?;
    /// assert_eq!(store.member_count(ConversationId(1))?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn member_count(&self, conversation: ConversationId) -> Result<u64> {
        super::threads::check_public(conversation)?;
        Ok(self.view().conversation_record(conversation)?.member_count)
    }

    /// Current members in id order, starting after `after`, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// store.create_conversation(ConversationId(1))?;
    /// for u in 1..=3 { store.add_member(ConversationId(1), UserId(u), Timestamp(0))?; }
    /// assert_eq!(store.members(ConversationId(1), Some(UserId(1)), 10)?, vec![UserId(2), UserId(3)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn members(
        &self,
        conversation: ConversationId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserId>> {
        super::threads::check_public(conversation)?;
        let view = self.snapshot_view();
        view.conversation_record(conversation)?;
        let from = match after {
            None => 0,
            Some(u) => match u.0.checked_add(1) {
                Some(f) => f,
                None => return Ok(Vec::new()),
            },
        };
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        view.scan_prefix(Cf::Members, conversation.0, from, |user, _| {
            out.push(UserId(user));
            Ok(if out.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        Ok(out)
    }

    /// Every conversation `user` is a member of, in id order, from the
    /// second index (one prefix scan).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::Corrupt`] only.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, Store, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// assert!(store.conversations_of(UserId(1))?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationId>> {
        conversations_in(&self.view(), user)
    }
}

/// The conversations of `user` from the second index, read through `view`.
pub(super) fn conversations_in(view: &View<'_>, user: UserId) -> Result<Vec<ConversationId>> {
    let mut out = Vec::new();
    view.scan_prefix(Cf::UserConversations, user.0, 0, |conv, v| {
        if !v.is_empty() {
            return Err(corrupt(
                Cf::UserConversations,
                &keys::user_index_key(user, ConversationId(conv)),
                "index value is not empty",
            ));
        }
        out.push(ConversationId(conv));
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// The timelines of `user`'s conversations (each conversation and its
/// threads), in id order: conversations first, as thread ids sort after
/// every conversation id. What catch-up walks.
pub(super) fn timelines_in(view: &View<'_>, user: UserId) -> Result<Vec<ConversationId>> {
    let conversations = conversations_in(view, user)?;
    let mut out = conversations.clone();
    for c in conversations {
        out.extend(
            super::threads::thread_ids(view, c)?
                .into_iter()
                .map(ConversationId),
        );
    }
    out.sort_unstable();
    Ok(out)
}
