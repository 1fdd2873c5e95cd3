//! Read helpers shared by the operation modules, optionally pinned to one
//! RocksDB snapshot.

use std::ops::ControlFlow;

use rocksdb::{DBPinnableSlice, DBRawIterator, ReadOptions, Snapshot};

use super::{Cf, Store, corrupt};
use crate::error::{Error, Result, storage};
use crate::ids::{ConversationId, MessageId, UserId, is_public_id};
use crate::pure::keys;
use crate::pure::mark::MarkState;
use crate::pure::records::{ConversationRecord, MemberRecord, MessageRecord};

/// A reader of the store: the latest state, or one snapshot.
pub(crate) struct View<'a> {
    pub(super) store: &'a Store,
    pub(super) snapshot: Option<Snapshot<'a>>,
    /// Registered for the view's life: a buffered mark this view could
    /// miss in RocksDB (its snapshot predates the write) cannot leave the
    /// buffer meanwhile (`pure::grace::Grace`).
    pub(super) _gate: crate::pure::grace::GraceGuard<'a>,
}

impl<'a> View<'a> {
    fn read_options(&self) -> ReadOptions {
        let mut ro = ReadOptions::default();
        if let Some(s) = &self.snapshot {
            ro.set_snapshot(s);
        }
        ro
    }

    pub(crate) fn get_raw(&self, cf: Cf, key: &[u8]) -> Result<Option<DBPinnableSlice<'a>>> {
        self.get(cf, key)
    }

    /// A raw iterator over the keys of `cf` in `[lower, upper)`, positioned
    /// at the first.
    pub(crate) fn range_iter(&self, cf: Cf, lower: Vec<u8>, upper: Vec<u8>) -> DBRawIterator<'a> {
        let mut ro = self.read_options();
        let start = lower.clone();
        ro.set_iterate_lower_bound(lower);
        ro.set_iterate_upper_bound(upper);
        let mut it = self.store.db.raw_iterator_cf_opt(self.store.cf(cf), ro);
        it.seek(start);
        it
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<DBPinnableSlice<'a>>> {
        self.store
            .db
            .get_pinned_cf_opt(self.store.cf(cf), key, &self.read_options())
            .map_err(storage)
    }

    /// The record of a conversation or of a thread timeline. A thread's
    /// comes with its conversation's member count, receipt mode and
    /// policies, which it follows (docs/design.md §13): callers treat both
    /// alike.
    pub(crate) fn conversation_record(
        &self,
        conversation: ConversationId,
    ) -> Result<ConversationRecord> {
        let record = self.own_record(conversation)?;
        match record.thread {
            Some((parent, _)) => Ok(record.under(&self.own_record(ConversationId(parent))?)),
            None => Ok(record),
        }
    }

    /// [`conversation_record`](View::conversation_record) and the send
    /// time of the timeline's newest message.
    pub(crate) fn record_and_last_sent(
        &self,
        timeline: ConversationId,
    ) -> Result<(ConversationRecord, Option<crate::ids::Timestamp>)> {
        let record = self.conversation_record(timeline)?;
        let last = match record.last_message() {
            Some(last) => self.message_record(timeline, last)?.map(|m| m.sent_at),
            None => None,
        };
        Ok((record, last))
    }

    /// The record as stored, without a thread's overlay.
    pub(crate) fn own_record(&self, conversation: ConversationId) -> Result<ConversationRecord> {
        let key = keys::id_key(conversation.0);
        let raw = self
            .get(Cf::Conversations, &key)?
            .ok_or(Error::UnknownConversation(conversation))?;
        ConversationRecord::decode(&raw)
            .ok_or_else(|| corrupt(Cf::Conversations, &key, "bad conversation record"))
    }

    /// The conversation whose members a timeline has: itself, or a
    /// thread's conversation.
    pub(crate) fn owner(&self, timeline: ConversationId) -> Result<ConversationId> {
        if is_public_id(timeline) {
            return Ok(timeline);
        }
        let key = keys::id_key(timeline.0);
        self.own_record(timeline)?
            .thread
            .map(|(parent, _)| ConversationId(parent))
            .ok_or_else(|| corrupt(Cf::Conversations, &key, "a thread id without a thread"))
    }

    /// A timeline as callers name it: (conversation, thread root).
    pub(crate) fn public_timeline(
        &self,
        timeline: ConversationId,
    ) -> Result<(ConversationId, Option<MessageId>)> {
        if is_public_id(timeline) {
            return Ok((timeline, None));
        }
        let key = keys::id_key(timeline.0);
        self.own_record(timeline)?
            .thread
            .map(|(parent, root)| (ConversationId(parent), Some(MessageId(root))))
            .ok_or_else(|| corrupt(Cf::Conversations, &key, "a thread id without a thread"))
    }

    /// `user`'s membership of `conversation` (for a thread, of its
    /// conversation).
    pub(crate) fn member_record(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<MemberRecord>> {
        let conversation = self.owner(conversation)?;
        let key = keys::member_key(conversation, user);
        match self.get(Cf::Members, &key)? {
            None => Ok(None),
            Some(raw) => MemberRecord::decode(&raw)
                .map(Some)
                .ok_or_else(|| corrupt(Cf::Members, &key, "bad member record")),
        }
    }

    /// The membership record, or the precise reason there is none:
    /// [`Error::UnknownConversation`] or [`Error::NotMember`] (naming the
    /// conversation, also for a thread). The conversation is only looked
    /// up on the error path.
    pub(crate) fn require_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<MemberRecord> {
        match self.member_record(conversation, user)? {
            Some(m) => Ok(m),
            None => {
                let conversation = self.owner(conversation)?;
                self.conversation_record(conversation)?;
                Err(Error::NotMember { conversation, user })
            }
        }
    }

    pub(crate) fn message_record(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<Option<MessageRecord>> {
        let key = keys::message_key(conversation, message);
        match self.get(Cf::Messages, &key)? {
            None => Ok(None),
            Some(raw) => MessageRecord::decode(&raw)
                .map(Some)
                .ok_or_else(|| corrupt(Cf::Messages, &key, "bad message record")),
        }
    }

    /// The message record, or [`Error::UnknownMessage`].
    pub(crate) fn require_message(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<MessageRecord> {
        self.message_record(conversation, message)?
            .ok_or(Error::UnknownMessage {
                conversation,
                message,
            })
    }

    /// The mark state as the user sees it: what RocksDB holds joined with
    /// what the write-combining buffer holds (read-your-writes).
    pub(crate) fn mark_state(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<MarkState> {
        let pending = self.store.writer.combiner.peek(conversation.0, user.0);
        let stored = self.stored_mark(conversation, user)?;
        Ok(match pending {
            Some(p) => stored.join(p),
            None => stored,
        })
    }

    /// The mark state RocksDB holds, without the buffer.
    pub(crate) fn stored_mark(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<MarkState> {
        let key = keys::member_key(conversation, user);
        match self.get(Cf::Marks, &key)? {
            None => Ok(MarkState::default()),
            Some(raw) => {
                MarkState::decode(&raw).ok_or_else(|| corrupt(Cf::Marks, &key, "bad mark record"))
            }
        }
    }

    /// A raw iterator over the pair keys `(outer, inner >= from)` of `cf`.
    pub(crate) fn prefix_iter(&self, cf: Cf, outer: u64, from: u64) -> DBRawIterator<'a> {
        let (lower, upper) = keys::prefix_range(outer, from);
        let mut ro = self.read_options();
        ro.set_iterate_lower_bound(lower.clone());
        if let Some(u) = upper {
            ro.set_iterate_upper_bound(u);
        }
        let mut it = self.store.db.raw_iterator_cf_opt(self.store.cf(cf), ro);
        it.seek(&lower);
        it
    }

    /// Calls `f(inner_id, value)` for each pair key `(outer, inner >= from)`
    /// of `cf` in order, until `f` breaks.
    pub(crate) fn scan_prefix(
        &self,
        cf: Cf,
        outer: u64,
        from: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        let mut it = self.prefix_iter(cf, outer, from);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (_, inner) =
                keys::decode_pair_key(k).ok_or_else(|| corrupt(cf, k, "key is not 16 bytes"))?;
            if f(inner, v)?.is_break() {
                return Ok(());
            }
            it.next();
        }
        it.status().map_err(storage)?;
        Ok(())
    }

    /// Walks the current members of `conversation` in user id order with
    /// their mark state: a merge-join of two prefix scans (members, marks).
    pub(crate) fn for_each_member(
        &self,
        conversation: ConversationId,
        mut f: impl FnMut(UserId, MemberRecord, MarkState) -> ControlFlow<()>,
    ) -> Result<()> {
        let pending = self.store.writer.combiner.pending_in(conversation.0);
        let mut pending = pending.iter().peekable();
        // A thread's members are its conversation's; its marks its own.
        let owner = self.owner(conversation)?;
        let mut members = self.prefix_iter(Cf::Members, owner.0, 0);
        let mut marks = self.prefix_iter(Cf::Marks, conversation.0, 0);
        while let (Some(k), Some(v)) = (members.key(), members.value()) {
            let (_, user) = keys::decode_pair_key(k)
                .ok_or_else(|| corrupt(Cf::Members, k, "key is not 16 bytes"))?;
            let member = MemberRecord::decode(v)
                .ok_or_else(|| corrupt(Cf::Members, k, "bad member record"))?;
            let mut state = MarkState::default();
            while let Some(mk) = marks.key() {
                let (_, mark_user) = keys::decode_pair_key(mk)
                    .ok_or_else(|| corrupt(Cf::Marks, mk, "key is not 16 bytes"))?;
                if mark_user < user {
                    marks.next();
                    continue;
                }
                if mark_user == user {
                    let mv = marks.value().unwrap_or_default();
                    state = MarkState::decode(mv)
                        .ok_or_else(|| corrupt(Cf::Marks, mk, "bad mark record"))?;
                }
                break;
            }
            while pending.next_if(|(u, _)| *u < user).is_some() {}
            if let Some((_, p)) = pending.next_if(|(u, _)| *u == user) {
                state = state.join(*p);
            }
            if f(UserId(user), member, state).is_break() {
                break;
            }
            members.next();
        }
        members.status().map_err(storage)?;
        marks.status().map_err(storage)?;
        Ok(())
    }
}
