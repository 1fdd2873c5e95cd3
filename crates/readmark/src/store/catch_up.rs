//! Catch-up after a reconnect: the read state that changed since a cursor
//! ([`Store::changes_since`]), or all of it ([`Store::snapshot`]), filtered
//! by what the user may see.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use super::{Cf, Store, View, corrupt};
use crate::config::Recipients;
use crate::error::{Error, Result};
use crate::ids::{ConversationId, MessageId, Timestamp, UserId};
use crate::pure::cursor::Cursor;
use crate::pure::keys;
use crate::pure::records::ChangeRecord;
use crate::pure::records::ConversationRecord;

/// One (conversation, reader) read state, from catch-up or a snapshot.
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
/// store.record_message(c, MessageId(1), alice, Timestamp(1))?;
/// store.mark_read(c, bob, MessageId(1), Timestamp(2))?;
/// store.flush()?;
/// let snapshot = store.snapshot(alice)?;
/// let bobs = snapshot.states.iter().find(|s| s.reader == bob).expect("bob's mark");
/// assert_eq!((bobs.conversation, bobs.up_to, bobs.marked_unread), (c, MessageId(1), false));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ReadState {
    /// The conversation.
    pub conversation: ConversationId,
    /// The thread (its root) the mark is in, `None` for the main timeline.
    pub thread: Option<MessageId>,
    /// Whose mark.
    pub reader: UserId,
    /// Read up to and including this message.
    pub up_to: MessageId,
    /// When.
    pub read_at: Timestamp,
    /// Whether the reader marked the conversation unread (and read nothing
    /// newer since). Only in the user's own states: another member's flag
    /// is never shown, and is `false` here.
    pub marked_unread: bool,
}

/// A page of [`Store::changes_since`].
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
/// let cursor = store.snapshot(alice)?.cursor;
/// store.record_message(c, MessageId(1), alice, Timestamp(1))?;
/// store.mark_read(c, bob, MessageId(1), Timestamp(2))?;
/// store.flush()?;
/// let readmark::CatchUp::Changes(page) = store.changes_since(alice, cursor, 100)? else {
///     panic!("a fresh cursor");
/// };
/// assert!(page.states.iter().any(|s| s.reader == bob));
/// assert!(page.hidden.is_empty() && !page.more);
/// let _keep = page.next; // for the next call
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Changes {
    /// The latest state of every pair that changed, as it is now (a pair
    /// may appear in two pages if it changed again in between).
    pub states: Vec<ReadState>,
    /// (conversation, reader) pairs the user may no longer see (the reader
    /// left, or made their receipts private): forget what was shown, in the
    /// conversation and its threads.
    pub hidden: Vec<(ConversationId, UserId)>,
    /// (conversation, thread root, reader): a reader the user may see who
    /// has no mark in that thread any more (they left and joined again
    /// since, and have not read it): forget what was shown of that thread
    /// only.
    pub hidden_threads: Vec<(ConversationId, MessageId, UserId)>,
    /// Where to continue: the next page if `more`, else the cursor to keep
    /// for the next catch-up.
    pub next: Cursor,
    /// Whether more changes of this walk remain.
    pub more: bool,
}

/// The answer of [`Store::changes_since`]: exactly these two, so a caller's
/// `match` cannot forget the snapshot case.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// let user = UserId(1);
/// let cursor = store.snapshot(user)?.cursor;
/// match store.changes_since(user, cursor, 100)? {
///     readmark::CatchUp::Changes(page) => assert!(page.states.is_empty()),
///     readmark::CatchUp::SnapshotRequired => { let _fresh = store.snapshot(user)?; }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// The changes since the cursor (one page).
    Changes(Changes),
    /// The cursor is older than the retained change log
    /// ([`Config::change_retention`](crate::Config::change_retention)) or
    /// was not issued by this store: fetch the whole current state with
    /// [`Store::snapshot`], which comes with a fresh cursor.
    SnapshotRequired,
}

/// The whole read state a user may see, from [`Store::snapshot`].
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
/// store.record_message(c, MessageId(1), alice, Timestamp(1))?;
/// store.mark_read(c, bob, MessageId(1), Timestamp(2))?;
/// store.flush()?;
/// let snapshot = store.snapshot(alice)?;
/// assert_eq!(snapshot.states.len(), 2); // her own mark (she sent 1) and bob's
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// In conversation, then reader order.
    pub states: Vec<ReadState>,
    /// Catch-up from here: pinned before the state was read, so a change
    /// made during the snapshot is listed again, never missed.
    pub cursor: Cursor,
}

impl Store {
    /// Whether members see each other's (public) read state in a
    /// conversation: when its policy sends receipts to every member.
    pub(crate) fn shows_others(&self, conv: &ConversationRecord) -> bool {
        self.recipients_policy(conv) == Recipients::Members
    }

    /// [`visible_marks`](Store::visible_marks) of the conversation and of
    /// each of its `threads`.
    pub(crate) fn visible_marks_all(
        &self,
        view: &View<'_>,
        conversation: ConversationId,
        threads: &[u64],
    ) -> Result<Vec<(u64, u64)>> {
        let mut out = self.visible_marks(view, conversation)?;
        for &t in threads {
            out.extend(self.visible_marks(view, ConversationId(t))?);
        }
        Ok(out)
    }

    /// The public marks of `conversation`'s members, as changes to list
    /// again: they became visible to someone without moving (a join, a
    /// conversation shrinking into "everyone sees everyone", a member going
    /// public), and a catch-up must not miss them.
    pub(crate) fn visible_marks(
        &self,
        view: &View<'_>,
        conversation: ConversationId,
    ) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        view.for_each_member(conversation, |user, member, state| {
            if state.mark.is_some() && !member.is_private() {
                out.push((conversation.0, user.0));
            }
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// The read state that changed since `cursor`, in every conversation of
    /// `user`, newest state only, at most `limit` entries per page.
    ///
    /// What a user sees is what the events would have told them: their own
    /// marks in all their conversations (their other devices), and the
    /// marks of other members with public receipts in the conversations
    /// whose policy is [`Recipients::Members`]. Authors in larger
    /// conversations are not sent a history of who read their messages:
    /// [`read_count`](Store::read_count) answers that on demand.
    ///
    /// Call it with `next` until `more` is false; keep that last `next`.
    /// Cursors are durable (the log is written with the marks) and survive
    /// restart. Changes reach the log when marks are flushed
    /// ([`Config::flush_interval`](crate::Config::flush_interval)); a later
    /// call lists them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a `limit` of 0, storage errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{CatchUp, Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new())?;
    /// let (chat, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
    /// store.create_conversation(chat)?;
    /// store.add_member(chat, alice, Timestamp(0))?;
    /// store.add_member(chat, bob, Timestamp(0))?;
    /// store.record_message(chat, MessageId(1), alice, Timestamp(1))?;
    /// store.flush()?; // her own mark moved as she sent it
    /// let cursor = store.snapshot(alice)?.cursor; // alice goes offline
    /// store.mark_read(chat, bob, MessageId(1), Timestamp(2))?;
    /// store.flush()?;
    /// let CatchUp::Changes(page) = store.changes_since(alice, cursor, 100)? else {
    ///     panic!("the cursor is fresh");
    /// };
    /// assert_eq!(page.states.len(), 1);
    /// assert_eq!((page.states[0].reader, page.states[0].up_to), (bob, MessageId(1)));
    /// assert!(!page.more);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn changes_since(&self, user: UserId, cursor: Cursor, limit: usize) -> Result<CatchUp> {
        if limit == 0 {
            return Err(Error::InvalidArgument("page limit must be at least 1"));
        }
        let answer = self.privacy_consistent(|| self.changes_since_once(user, cursor, limit))?;
        // Again after the walk: a compaction that started before this
        // check dropped nothing stamped after `since_at` (invariant 25).
        let retention = self.config.change_retention_ms();
        if self.clock.now().saturating_sub(cursor.since_at) >= retention {
            return Ok(CatchUp::SnapshotRequired);
        }
        Ok(answer)
    }

    fn changes_since_once(&self, user: UserId, cursor: Cursor, limit: usize) -> Result<CatchUp> {
        let (seq_now, pinned_at) = self.writer.changes.pin();
        let retention = self.config.change_retention_ms();
        // Every change after `since` was stamped at or after `since_at`; the
        // retention filter removes changes stamped `retention` before its
        // clock, which is this one.
        let now = self.clock.now();
        if cursor.legacy()
            || cursor.since > seq_now
            || cursor.high > seq_now
            || cursor.since_at > now.max(pinned_at)
            || now.saturating_sub(cursor.since_at) >= retention
        {
            return Ok(CatchUp::SnapshotRequired);
        }
        let mut c = cursor;
        if c.high == 0 {
            c.high = seq_now;
            c.high_at = pinned_at;
        }
        // Changes in (since, high]: every one of them has landed (`pin`),
        // so this view, taken after it, holds them.
        let in_walk = |seq: u64| seq > c.since && seq <= c.high;
        let view = self.snapshot_view();
        let mut states = Vec::new();
        // (conversation, thread, reader) to forget: `Changes::hidden` and
        // `Changes::hidden_threads`.
        let mut hidden: Vec<Forget> = Vec::new();
        let full =
            |states: &Vec<ReadState>, hidden: &Vec<Forget>| states.len() + hidden.len() >= limit;
        let conversations = super::conversations::timelines_in(&view, user)?;
        if c.phase == 0 {
            // The user's own marks (their other devices): each carries the
            // sequence of the flush that last moved it.
            for &conversation in conversations.iter().filter(|c2| c2.0 >= c.resume_a) {
                // A flag change has its own sequence, read only here.
                let stored = view.stored_mark(conversation, user)?;
                if stored.mark.is_none()
                    || !(in_walk(stored.changed) || in_walk(stored.flag_changed))
                {
                    continue;
                }
                if full(&states, &hidden) {
                    c.resume_a = conversation.0;
                    return Ok(page(states, hidden, c, true));
                }
                if let Some(s) = read_state(&view, conversation, user, user)? {
                    states.push(s);
                }
            }
            c.phase = 1;
            c.resume_a = 0;
            c.resume_b = 0;
        }
        for &conversation in conversations.iter().filter(|c2| c2.0 >= c.resume_a) {
            let conv = view.conversation_record(conversation)?;
            if !self.shows_others(&conv) {
                continue;
            }
            // Changes up to the user's join are none of their business: no
            // "forget" for readers who left or hid before they came.
            let joined = view
                .member_record(conversation, user)?
                .map_or(0, |m| m.joined_seq);
            // Who to list, by reader: the public members whose mark moved in
            // the walk, and the readers a structural change names (a join,
            // a shrink or going public made their mark visible; a leave or
            // going private hid it), with the newest such change.
            let mut candidates: BTreeMap<u64, u64> = BTreeMap::new();
            view.for_each_member(conversation, |reader, member, state| {
                if reader != user
                    && !member.is_private()
                    && state.mark.is_some()
                    && in_walk(state.changed)
                {
                    candidates.insert(reader.0, 0);
                }
                ControlFlow::Continue(())
            })?;
            walk_log(
                &view,
                Cf::Changes,
                conversation.0,
                c.since,
                c.high,
                |seq, id| {
                    if id != user.0 {
                        let e = candidates.entry(id).or_insert(seq);
                        *e = (*e).max(seq);
                    }
                    Ok(ControlFlow::Continue(()))
                },
            )?;
            let from = if conversation.0 == c.resume_a {
                c.resume_b
            } else {
                0
            };
            for (&reader, &row) in candidates.range(from..) {
                if full(&states, &hidden) {
                    c.resume_a = conversation.0;
                    c.resume_b = reader;
                    return Ok(page(states, hidden, c, true));
                }
                let reader = UserId(reader);
                let shown = view
                    .member_record(conversation, reader)?
                    .is_some_and(|m| !m.is_private());
                // Left, private, or (after leaving and joining again) no
                // mark yet: whatever the user was shown is stale.
                match shown.then(|| read_state(&view, conversation, reader, user)) {
                    Some(Ok(Some(s))) => states.push(s),
                    Some(Err(e)) => return Err(e),
                    _ if row <= joined => {}
                    _ => {
                        // Left or private: forget the reader in the
                        // conversation (once, whichever timeline named
                        // them). Still shown but with no mark in a thread
                        // (joined again, not read it): that thread only.
                        let (public, thread) = view.public_timeline(conversation)?;
                        let entry = (public, thread.filter(|_| shown), reader);
                        if !hidden.contains(&entry) {
                            hidden.push(entry);
                        }
                    }
                }
            }
        }
        Ok(page(
            states,
            hidden,
            Cursor::after(c.high, c.high_at),
            false,
        ))
    }

    /// Everything `user` may see of the read state now (the same scope as
    /// [`changes_since`](Store::changes_since)), with a cursor to catch up
    /// from. For a first connection, or after
    /// [`CatchUp::SnapshotRequired`]. Its size is one entry per
    /// conversation of the user plus one per public member with a mark in
    /// each conversation that shows other members' receipts.
    ///
    /// # Errors
    ///
    /// Storage errors.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let (chat, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
    /// # store.create_conversation(chat)?;
    /// # store.add_member(chat, alice, Timestamp(0))?;
    /// # store.add_member(chat, bob, Timestamp(0))?;
    /// # store.record_message(chat, MessageId(1), alice, Timestamp(1))?;
    /// store.mark_read(chat, bob, MessageId(1), Timestamp(2))?;
    /// let snap = store.snapshot(alice)?;
    /// // alice's own mark (she sent message 1) and bob's
    /// assert_eq!(snap.states.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn snapshot(&self, user: UserId) -> Result<Snapshot> {
        self.privacy_consistent(|| self.snapshot_once(user))
    }

    fn snapshot_once(&self, user: UserId) -> Result<Snapshot> {
        let (seq, at) = self.writer.changes.pin();
        let cursor = Cursor::after(seq, at);
        let view = self.snapshot_view();
        let mut states = Vec::new();
        for conversation in super::conversations::timelines_in(&view, user)? {
            let conv = view.conversation_record(conversation)?;
            if !self.shows_others(&conv) {
                if let Some(s) = read_state(&view, conversation, user, user)? {
                    states.push(s);
                }
                continue;
            }
            let (public, thread) = view.public_timeline(conversation)?;
            view.for_each_member(conversation, |reader, member, state| {
                if let Some(mark) = state.mark
                    && (reader == user || !member.is_private())
                {
                    states.push(ReadState {
                        conversation: public,
                        thread,
                        reader,
                        up_to: mark.up_to,
                        read_at: mark.at,
                        marked_unread: reader == user && state.marked_unread(),
                    });
                }
                ControlFlow::Continue(())
            })?;
        }
        Ok(Snapshot { states, cursor })
    }
}

/// A reader to forget: (conversation, thread if only there, reader).
type Forget = (ConversationId, Option<MessageId>, UserId);

fn page(states: Vec<ReadState>, forget: Vec<Forget>, next: Cursor, more: bool) -> CatchUp {
    let mut hidden = Vec::new();
    let mut hidden_threads = Vec::new();
    for (c, thread, r) in forget {
        match thread {
            None => hidden.push((c, r)),
            Some(root) => hidden_threads.push((c, root, r)),
        }
    }
    CatchUp::Changes(Changes {
        states,
        hidden,
        hidden_threads,
        next,
        more,
    })
}

/// The conversation's record, or `None` if there is none: an event about
/// it has nobody to go to, which is not an error of the subscriber's.
pub(super) fn existing_conversation(
    view: &View<'_>,
    conversation: ConversationId,
) -> Result<Option<ConversationRecord>> {
    match view.conversation_record(conversation) {
        Ok(rec) => Ok(Some(rec)),
        Err(Error::UnknownConversation(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Calls `f(seq, id)` for each change in `outer`'s log in `cf` with a
/// sequence in `(after, high]`, in sequence order, until `f` breaks.
fn walk_log(
    view: &View<'_>,
    cf: Cf,
    outer: u64,
    after: u64,
    high: u64,
    mut f: impl FnMut(u64, u64) -> Result<ControlFlow<()>>,
) -> Result<()> {
    view.scan_prefix(cf, outer, after.saturating_add(1), |seq, v| {
        if seq > high {
            return Ok(ControlFlow::Break(()));
        }
        let rec = ChangeRecord::decode(v)
            .ok_or_else(|| corrupt(cf, &keys::pair_key(outer, seq), "bad change record"))?;
        f(seq, rec.id)
    })
}

/// `reader`'s state as `viewer` may see it (the flag only their own).
fn read_state(
    view: &View<'_>,
    conversation: ConversationId,
    reader: UserId,
    viewer: UserId,
) -> Result<Option<ReadState>> {
    let state = view.mark_state(conversation, reader)?;
    let (public, thread) = view.public_timeline(conversation)?;
    Ok(state.mark.map(|m| ReadState {
        conversation: public,
        thread,
        reader,
        up_to: m.up_to,
        read_at: m.at,
        marked_unread: reader == viewer && state.marked_unread(),
    }))
}
