//! Threads (docs/design.md §13): a thread is a timeline of its own, with
//! an internal conversation id from the reserved half of the id space.
//!
//! Everything kept per timeline (message ordinals, deletions, marks, the
//! write-combining buffer and journal, receipts, mentions, change-log
//! sequences) is kept under that id by the same code as a conversation's;
//! what a thread shares with its conversation (members, their slots and
//! privacy, the receipt and event policies) is read through it
//! (`View::owner`, `View::conversation_record`). The `threads` column
//! family maps (conversation, root) to the id:
//!
//! ```text
//! threads key                                      value
//! <------- 8 bytes -------><------- 8 bytes ------> <------- 8 bytes ------->
//! | conversation (u64 BE) | root (u64 BE)         | | thread id (u64 BE)    |
//!
//! thread id
//!  63  62                                      16 15                    0
//! | 1 | counter (47 bits, store-wide)          | conversation's stripe  |
//! ```
//!
//! The low 16 bits are the conversation's stripe hash, so a thread takes
//! its conversation's lock (`Store::lock`) without a lookup: membership
//! changes and thread updates are ordered as within one conversation.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use rocksdb::WriteBatch;

use super::{Cf, Store, View, corrupt};
use crate::error::{Error, Result};
use crate::ids::{
    ConversationId, MessageId, THREAD_BIT, Timeline, Timestamp, UserId, is_public_id,
};
use crate::pure::keys;
use crate::pure::records::ConversationRecord;

/// The bits of a thread id that hold its conversation's stripe hash.
pub(crate) const STRIPE_MASK: u64 = crate::pure::newest::THREAD_STRIPE_MASK;
/// Where the counter starts in a thread id.
const COUNTER_SHIFT: u32 = 16;
/// Counters beyond this do not fit in an id.
const MAX_COUNTER: u64 = (1 << (63 - COUNTER_SHIFT)) - 1;

/// The id of the `counter`th thread, in `conversation`.
pub(crate) fn thread_id(counter: u64, conversation: ConversationId) -> ConversationId {
    let stripe = crate::pure::newest::stripe_hash(conversation.0) & STRIPE_MASK;
    ConversationId(THREAD_BIT | (counter << COUNTER_SHIFT) | stripe)
}

/// The counter the next thread takes, given the largest key of the
/// `conversations` column family (thread ids sort after every
/// conversation id).
pub(crate) fn next_counter(largest: Option<u64>) -> u64 {
    match largest {
        Some(id) if id & THREAD_BIT != 0 => ((id & !THREAD_BIT) >> COUNTER_SHIFT) + 1,
        _ => 0,
    }
}

/// Refuses the ids readmark reserves for threads.
pub(crate) fn check_public(conversation: ConversationId) -> Result<()> {
    if is_public_id(conversation) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "conversation ids from 2^63 up are reserved for threads",
        ))
    }
}

/// The thread rooted at `root`, if it has begun.
pub(crate) fn find_thread(
    view: &View<'_>,
    conversation: ConversationId,
    root: MessageId,
) -> Result<Option<ConversationId>> {
    let key = keys::pair_key(conversation.0, root.0);
    match view.get_raw(Cf::Threads, &key)? {
        None => Ok(None),
        Some(v) => decode_id(&v)
            .map(|id| Some(ConversationId(id)))
            .ok_or_else(|| corrupt(Cf::Threads, &key, "bad thread id")),
    }
}

fn decode_id(v: &[u8]) -> Option<u64> {
    let id = u64::from_be_bytes(v.try_into().ok()?);
    (id & THREAD_BIT != 0).then_some(id)
}

/// The threads of `conversation`, by root.
pub(crate) fn threads_of(
    view: &View<'_>,
    conversation: ConversationId,
) -> Result<Vec<(MessageId, ConversationId)>> {
    let mut out = Vec::new();
    view.scan_prefix(Cf::Threads, conversation.0, 0, |root, v| {
        let id = decode_id(v).ok_or_else(|| {
            corrupt(
                Cf::Threads,
                &keys::pair_key(conversation.0, root),
                "bad thread id",
            )
        })?;
        out.push((MessageId(root), ConversationId(id)));
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// The internal ids of `conversation`'s threads, in id order.
pub(crate) fn thread_ids(view: &View<'_>, conversation: ConversationId) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> = threads_of(view, conversation)?
        .into_iter()
        .map(|(_, t)| t.0)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Thread ids resolved recently, so a read in a thread costs no lookup: a
/// thread's id never changes once its first reply is written (and is only
/// cached once read back from RocksDB), so an entry is never stale. Bounded:
/// a stripe that fills up is emptied.
pub(crate) struct ThreadCache {
    stripes: Box<[parking_lot::Mutex<CacheStripe>]>,
}

/// (conversation, root) -> thread id.
type CacheStripe = rustc_hash::FxHashMap<(u64, u64), u64>;

/// Stripes of the cache, and entries per stripe: 64 × 256 entries of 24
/// bytes of data each (about 0.5 MiB at most with the maps' overhead).
const CACHE_STRIPES: usize = 64;
const CACHE_PER_STRIPE: usize = 256;

impl ThreadCache {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..CACHE_STRIPES)
                .map(|_| parking_lot::Mutex::new(CacheStripe::default()))
                .collect(),
        }
    }

    fn stripe(
        &self,
        conversation: u64,
        root: u64,
    ) -> &parking_lot::Mutex<rustc_hash::FxHashMap<(u64, u64), u64>> {
        let h = crate::pure::newest::stripe_hash(conversation ^ root.rotate_left(32));
        #[allow(clippy::cast_possible_truncation)]
        &self.stripes[(h as usize) % CACHE_STRIPES]
    }

    fn get(&self, conversation: u64, root: u64) -> Option<u64> {
        self.stripe(conversation, root)
            .lock()
            .get(&(conversation, root))
            .copied()
    }

    fn insert(&self, conversation: u64, root: u64, id: u64) {
        let mut map = self.stripe(conversation, root).lock();
        if map.len() >= CACHE_PER_STRIPE {
            map.clear();
        }
        map.insert((conversation, root), id);
    }
}

/// A thread's unread state, from [`Store::unread_threads`].
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timeline, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// # let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
/// # store.create_conversation(c)?;
/// # store.add_member(c, alice, Timestamp(0))?;
/// # store.add_member(c, bob, Timestamp(0))?;
/// store.record_message(c, MessageId(1), alice, Timestamp(1))?;
/// store.record_message(Timeline::thread(c, MessageId(1)), MessageId(2), alice, Timestamp(2))?;
/// let threads = store.unread_threads(c, bob)?;
/// assert_eq!((threads[0].root, threads[0].unread.count), (MessageId(1), 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ThreadUnread {
    /// The thread's root.
    pub root: MessageId,
    /// The member's unread state in it.
    pub unread: super::Unread,
}

impl Store {
    /// The internal id of `timeline` for a call that reads or updates it
    /// (never creates it): the conversation's own, or its thread's.
    ///
    /// Errors: reserved ids, [`Error::UnknownConversation`],
    /// [`Error::UnknownThread`] for a thread without a message yet.
    pub(crate) fn timeline_id(
        &self,
        view: &View<'_>,
        timeline: Timeline,
    ) -> Result<ConversationId> {
        let conversation = timeline.conversation();
        check_public(conversation)?;
        let Some(root) = timeline.root() else {
            return Ok(conversation);
        };
        if let Some(t) = self.cached_thread(timeline) {
            return Ok(t);
        }
        match find_thread(view, conversation, root)? {
            Some(t) => {
                self.thread_cache.insert(conversation.0, root.0, t.0);
                Ok(t)
            }
            None => {
                view.conversation_record(conversation)?;
                Err(Error::UnknownThread { conversation, root })
            }
        }
    }

    /// The id of `timeline`, a thread, if the cache holds it.
    pub(crate) fn cached_thread(&self, timeline: Timeline) -> Option<ConversationId> {
        let root = timeline.root()?;
        let c = timeline.conversation();
        if !is_public_id(c) {
            return None;
        }
        self.thread_cache.get(c.0, root.0).map(ConversationId)
    }

    /// The thread rooted at `root` for a message sent into it, begun if
    /// this is its first message: its id, and its record if it is new
    /// (with the writes that make it in `batch`). The root must be a
    /// message of the main timeline. Called under the conversation's lock.
    pub(crate) fn thread_for_send(
        &self,
        view: &View<'_>,
        conversation: ConversationId,
        root: MessageId,
        batch: &mut WriteBatch,
    ) -> Result<(ConversationId, Option<ConversationRecord>)> {
        if let Some(t) = self.thread_cache.get(conversation.0, root.0) {
            return Ok((ConversationId(t), None));
        }
        if let Some(t) = find_thread(view, conversation, root)? {
            self.thread_cache.insert(conversation.0, root.0, t.0);
            return Ok((t, None));
        }
        if view.message_record(conversation, root)?.is_none() {
            return Err(Error::UnknownThread { conversation, root });
        }
        let counter = self.next_thread.fetch_add(1, Ordering::Relaxed);
        if counter > MAX_COUNTER {
            return Err(Error::InvalidArgument("thread ids exhausted"));
        }
        let id = thread_id(counter, conversation);
        batch.put_cf(
            self.cf(Cf::Threads),
            keys::pair_key(conversation.0, root.0),
            id.0.to_be_bytes(),
        );
        let record = ConversationRecord {
            thread: Some((conversation.0, root.0)),
            ..ConversationRecord::default()
        };
        Ok((id, Some(record)))
    }

    /// A thread-unaware read (Matrix's unthreaded receipt): `user` has read
    /// everything up to `up_to` in the conversation, in its main timeline
    /// and in every thread. Each timeline's mark moves as
    /// [`mark_read`](Store::mark_read) would move it with `up_to` (by
    /// position: message ids increase across timelines); threads with no
    /// reply at or before `up_to` are left alone. One `mark_read` per
    /// thread that has such a reply, after one scan of the conversation's
    /// threads.
    ///
    /// # Errors
    ///
    /// As [`mark_read`](Store::mark_read).
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timeline, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
    /// # store.create_conversation(c)?;
    /// # store.add_member(c, alice, Timestamp(0))?;
    /// # store.add_member(c, bob, Timestamp(0))?;
    /// store.record_message(c, MessageId(1), alice, Timestamp(1))?;
    /// let thread = Timeline::thread(c, MessageId(1));
    /// store.record_message(thread, MessageId(2), alice, Timestamp(2))?;
    /// store.record_message(c, MessageId(3), alice, Timestamp(3))?;
    /// store.record_message(thread, MessageId(4), alice, Timestamp(4))?;
    /// store.mark_read_all(c, bob, MessageId(3), Timestamp(5))?;
    /// assert_eq!(store.unread_count(c, bob)?.count, 0);
    /// assert_eq!(store.unread_count(thread, bob)?.count, 1); // reply 4 is newer
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mark_read_all(
        &self,
        conversation: ConversationId,
        user: UserId,
        up_to: MessageId,
        at: Timestamp,
    ) -> Result<()> {
        check_public(conversation)?;
        self.mark_read(conversation, user, up_to, at)?;
        // Read first, then released: a view held across the updates would
        // keep their entries in the buffer (`pure::grace`).
        let covered: Vec<MessageId> = {
            let view = self.view();
            let mut roots = Vec::new();
            // A reply is newer than its root: a thread rooted after
            // `up_to` has no reply it covers.
            for (root, t) in threads_of(&view, conversation)? {
                if root > up_to {
                    continue;
                }
                let mut first = None;
                view.scan_prefix(Cf::Messages, t.0, 0, |m, _| {
                    first = Some(m);
                    Ok(ControlFlow::Break(()))
                })?;
                if first.is_some_and(|f| f <= up_to.0) {
                    roots.push(root);
                }
            }
            roots
        };
        for root in covered {
            self.mark_read(Timeline::thread(conversation, root), user, up_to, at)?;
        }
        Ok(())
    }

    /// The threads of `conversation` that have begun (have a message), by
    /// root.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timeline, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let (c, alice) = (ConversationId(1), UserId(1));
    /// # store.create_conversation(c)?;
    /// # store.add_member(c, alice, Timestamp(0))?;
    /// store.record_message(c, MessageId(1), alice, Timestamp(1))?;
    /// assert!(store.threads(c)?.is_empty());
    /// store.record_message(Timeline::thread(c, MessageId(1)), MessageId(2), alice, Timestamp(2))?;
    /// assert_eq!(store.threads(c)?, vec![MessageId(1)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn threads(&self, conversation: ConversationId) -> Result<Vec<MessageId>> {
        check_public(conversation)?;
        let view = self.snapshot_view();
        view.conversation_record(conversation)?;
        Ok(threads_of(&view, conversation)?
            .into_iter()
            .map(|(root, _)| root)
            .collect())
    }

    /// The threads of `conversation` in which `user` has unread messages
    /// or set the unread flag, by root: what a thread list's badges show.
    /// Costs one unread count per thread of the conversation.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::NotMember`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timeline, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
    /// # store.create_conversation(c)?;
    /// # store.add_member(c, alice, Timestamp(0))?;
    /// # store.add_member(c, bob, Timestamp(0))?;
    /// store.record_message(c, MessageId(1), alice, Timestamp(1))?;
    /// let thread = Timeline::thread(c, MessageId(1));
    /// store.record_message(thread, MessageId(2), alice, Timestamp(2))?;
    /// assert_eq!(store.unread_threads(c, bob)?.len(), 1);
    /// store.mark_read(thread, bob, MessageId(2), Timestamp(3))?;
    /// assert!(store.unread_threads(c, bob)?.is_empty());
    /// // The thread read left the main timeline as it was.
    /// assert_eq!(store.unread_count(c, bob)?.count, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unread_threads(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Vec<ThreadUnread>> {
        check_public(conversation)?;
        let view = self.snapshot_view();
        let member = view.require_member(conversation, user)?;
        let mut out = Vec::new();
        for (root, t) in threads_of(&view, conversation)? {
            let conv = view.conversation_record(t)?;
            let state = view.mark_state(t, user)?;
            let unread = super::messages::unread_from(&view, t, user, &conv, &member, &state)?;
            if unread.count > 0 || unread.marked_unread {
                out.push(ThreadUnread { root, unread });
            }
        }
        Ok(out)
    }

    /// The conversation's unread state over its main timeline and all its
    /// threads together (a conversation list's badge when threads count):
    /// the counts and mentions added, flagged if any timeline is. Costs one
    /// unread count per thread.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::NotMember`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timeline, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
    /// # store.create_conversation(c)?;
    /// # store.add_member(c, alice, Timestamp(0))?;
    /// # store.add_member(c, bob, Timestamp(0))?;
    /// store.record_message(c, MessageId(1), alice, Timestamp(1))?;
    /// store.record_message(Timeline::thread(c, MessageId(1)), MessageId(2), alice, Timestamp(2))?;
    /// assert_eq!(store.unread_count(c, bob)?.count, 1);
    /// assert_eq!(store.unread_total(c, bob)?.count, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unread_total(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<super::Unread> {
        let mut total = self.unread_count(conversation, user)?;
        for t in self.unread_threads(conversation, user)? {
            total.count += t.unread.count;
            total.mentions += t.unread.mentions;
            total.marked_unread |= t.unread.marked_unread;
        }
        Ok(total)
    }
}
