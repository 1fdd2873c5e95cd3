//! Real-time receipts, the publishing side: event types, per-conversation
//! event policy, and the hub that joins each mark update into every
//! subscription's [`Coalescer`] entry for its (conversation, reader).
//!
//! Publishing costs a mark update almost nothing. Everything that needs the
//! store (the newest mark, membership, privacy, recipients) is decided when
//! the event is *delivered*, on the subscriber's thread, once per coalesced
//! event (`resolve` below): so a member who left or a reader who went
//! private in the meantime is honoured, and the write path never walks a
//! member list.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use rocksdb::WriteBatch;

use super::catch_up::existing_conversation;
use super::subscription::Subscription;
use super::{Cf, Store, View, corrupt};
use crate::config::Recipients;
use crate::error::{Error, Result, storage};
use crate::ids::{ConversationId, MessageId, Timestamp, UserId};
use crate::pure::coalescer::{Coalescer, Pending, Pushed};
use crate::pure::keys;
use crate::pure::records::{ConversationRecord, MessageRecord};

/// At most this many newly covered messages are read to find their authors
/// ([`Recipients::Authors`]): a reader catching up on a long history costs
/// a bounded walk, newest messages first.
///
/// # Examples
///
/// ```
/// assert!(readmark::AUTHOR_SCAN_LIMIT >= 1_000);
/// ```
pub const AUTHOR_SCAN_LIMIT: usize = 10_000;

/// A receipt to push to clients: `reader` has read `conversation` up to
/// `up_to`. Send it to the reader's own devices (always) and to every user
/// in `recipients`.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # use std::time::Duration;
/// # use readmark::Event;
/// let store = Store::open(dir.path(), Config::new().event_window(Duration::ZERO))?;
/// # let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
/// # store.create_conversation(c)?;
/// # store.add_member(c, alice, Timestamp(0))?;
/// # store.add_member(c, bob, Timestamp(0))?;
/// # store.record_message(c, MessageId(1), alice, Timestamp(1))?;
/// let events = store.subscribe();
/// store.mark_read(c, bob, MessageId(1), Timestamp(2))?;
/// let Some(Event::Receipt(e)) = events.recv_timeout(Duration::from_secs(5))? else { panic!() };
/// assert_eq!((e.conversation, e.reader, e.up_to, e.read_at), (c, bob, MessageId(1), Timestamp(2)));
/// assert_eq!((e.recipients, e.capped, e.advances), (vec![alice], false, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiptEvent {
    /// The conversation.
    pub conversation: ConversationId,
    /// The thread the read was in (its root), `None` for the main timeline.
    pub thread: Option<MessageId>,
    /// Who read.
    pub reader: UserId,
    /// Their read mark when the event was delivered: the newest state, not
    /// the first advance of the window.
    pub up_to: MessageId,
    /// When they read up to `up_to`.
    pub read_at: Timestamp,
    /// The other users to send it to, in user id order, at most
    /// [`Config::event_fanout_cap`](crate::Config::event_fanout_cap): current
    /// members chosen by the recipient policy; empty if the reader's
    /// receipts are private.
    pub recipients: Vec<UserId>,
    /// Whether more users qualified than the cap let through.
    pub capped: bool,
    /// Mark updates joined into this event.
    pub advances: u32,
}

/// What a [`Subscription`] delivers.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # use std::time::Duration;
/// # use readmark::Event;
/// let store = Store::open(dir.path(), Config::new().event_window(Duration::ZERO))?;
/// # let (c, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
/// # store.create_conversation(c)?;
/// # store.add_member(c, alice, Timestamp(0))?;
/// # store.add_member(c, bob, Timestamp(0))?;
/// # store.record_message(c, MessageId(1), alice, Timestamp(1))?;
/// let events = store.subscribe();
/// store.mark_read(c, bob, MessageId(1), Timestamp(2))?;
/// match events.recv_timeout(Duration::from_secs(5))? {
///     Some(Event::Receipt(e)) => assert_eq!(e.reader, bob),
///     Some(Event::Lagged { .. }) => { /* catch up with changes_since */ }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A coalesced receipt.
    Receipt(ReceiptEvent),
    /// The subscription's buffer was full and `dropped` advances of
    /// (conversation, reader) pairs it did not hold were not queued. Their
    /// state is in the change log: clients catch up with
    /// [`Store::changes_since`].
    Lagged {
        /// Advances not queued since the last `Lagged`.
        dropped: u64,
    },
    /// `reader` marked `conversation` unread, or cleared that, from one of
    /// their devices: send it to the reader's own devices only (the flag
    /// is nobody else's business, and no one else is told it moved).
    /// Delivered at once, not coalesced; `marked_unread` is the flag in
    /// force at delivery. (An advance of the mark clears the flag too: the
    /// reader's [`Event::Receipt`] says that.)
    UnreadFlag {
        /// The conversation.
        conversation: ConversationId,
        /// The thread whose flag it is (its root), `None` for the main
        /// timeline's.
        thread: Option<MessageId>,
        /// Whose flag.
        reader: UserId,
        /// Whether the conversation is marked unread now.
        marked_unread: bool,
    },
    /// `reader` made their receipts private in `conversation`: the
    /// `recipients` (the other current members, in conversations whose
    /// policy sends receipts to every member) should drop what they were
    /// shown of the reader's reads. Delivered at once, not coalesced.
    Hidden {
        /// The conversation.
        conversation: ConversationId,
        /// Whose receipts to forget.
        reader: UserId,
        /// Who to tell.
        recipients: Vec<UserId>,
    },
}

/// A conversation's own event settings, overriding the store's
/// ([`Config::event_window`](crate::Config::event_window) and the
/// recipient policy by size): a DM pushed at once while busy groups
/// coalesce, a broadcast channel that tells nobody. `None` in a field:
/// the store's setting.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use readmark::{Config, ConversationId, EventPolicy, Recipients, Store};
/// # let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), Config::new())?;
/// let dm = ConversationId(1);
/// store.create_conversation(dm)?;
/// store.set_event_policy(dm, EventPolicy::new().window(Duration::ZERO))?;
/// assert_eq!(store.event_policy(dm)?.window, Some(Duration::ZERO));
/// assert_eq!(store.event_policy(dm)?.recipients, None::<Recipients>);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventPolicy {
    /// How long advances of one reader are joined before the event goes
    /// out (whole milliseconds, at most `u32::MAX`).
    pub window: Option<Duration>,
    /// Who besides the reader's own devices gets the events, whatever the
    /// conversation's size (catch-up shows other members' marks exactly
    /// when this is [`Recipients::Members`]).
    pub recipients: Option<Recipients>,
}

impl EventPolicy {
    /// The store's settings (no override).
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # use std::time::Duration;
    /// # use readmark::{EventPolicy, Recipients};
    /// let dm = ConversationId(1);
    /// store.create_conversation(dm)?;
    /// store.set_event_policy(dm, EventPolicy::new())?; // the store's defaults
    /// assert_eq!(store.event_policy(dm)?, EventPolicy::new());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// This conversation's own coalescing window.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # use std::time::Duration;
    /// # use readmark::{EventPolicy, Recipients};
    /// let dm = ConversationId(1);
    /// store.create_conversation(dm)?;
    /// store.set_event_policy(dm, EventPolicy::new().window(Duration::ZERO))?; // push DMs at once
    /// assert_eq!(store.event_policy(dm)?.window, Some(Duration::ZERO));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// This conversation's own recipient policy.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # use std::time::Duration;
    /// # use readmark::{EventPolicy, Recipients};
    /// let dm = ConversationId(1);
    /// store.create_conversation(dm)?;
    /// store.set_event_policy(dm, EventPolicy::new().recipients(Recipients::Members))?;
    /// assert_eq!(store.event_policy(dm)?.recipients, Some(Recipients::Members));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn recipients(mut self, recipients: Recipients) -> Self {
        self.recipients = Some(recipients);
        self
    }
}

fn recipients_code(r: Recipients) -> u8 {
    use crate::pure::records::{
        CONV_RECIPIENTS_AUTHORS, CONV_RECIPIENTS_MEMBERS, CONV_RECIPIENTS_NOBODY,
    };
    match r {
        Recipients::Members => CONV_RECIPIENTS_MEMBERS,
        Recipients::Authors => CONV_RECIPIENTS_AUTHORS,
        Recipients::Nobody => CONV_RECIPIENTS_NOBODY,
    }
}

fn recipients_of_code(code: u8) -> Recipients {
    use crate::pure::records::{CONV_RECIPIENTS_AUTHORS, CONV_RECIPIENTS_MEMBERS};
    match code {
        CONV_RECIPIENTS_MEMBERS => Recipients::Members,
        CONV_RECIPIENTS_AUTHORS => Recipients::Authors,
        // The decoder admits no other value.
        _ => Recipients::Nobody,
    }
}

/// One subscriber's queue.
pub(crate) struct Queue {
    pub(super) inner: Mutex<QueueState>,
    pub(super) ready: Condvar,
}

pub(super) struct QueueState {
    pub(super) receipts: Coalescer,
    /// Notices delivered at once, before receipts, in order. Bounded like
    /// the receipts; past it, counted as dropped.
    pub(super) notices: std::collections::VecDeque<Notice>,
}

/// A notice not coalesced.
#[derive(Clone, Copy, Debug)]
pub(super) enum Notice {
    /// (conversation, reader, change sequence before the hiding) to hide.
    Hidden(u64, u64, u64),
    /// (conversation, reader) whose unread flag changed.
    Flag(u64, u64),
}

/// The subscriptions of a store.
pub(crate) struct Hub {
    pub(super) epoch: Instant,
    pub(super) window_ns: u64,
    pub(super) capacity: usize,
    pub(super) queues: RwLock<Vec<Arc<Queue>>>,
    pub(super) count: AtomicUsize,
}

impl Hub {
    pub(crate) fn new(window: Duration, capacity: usize) -> Self {
        Self {
            epoch: Instant::now(),
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            capacity,
            queues: RwLock::new(Vec::new()),
            count: AtomicUsize::new(0),
        }
    }

    pub(super) fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Queues a "forget this reader's receipts" notice in every
    /// subscription.
    pub(crate) fn publish_hidden(&self, conversation: u64, reader: u64, seq: u64) {
        self.publish_notice(Notice::Hidden(conversation, reader, seq));
    }

    /// Queues "the reader's unread flag changed" in every subscription.
    pub(crate) fn publish_flag(&self, conversation: u64, reader: u64) {
        self.publish_notice(Notice::Flag(conversation, reader));
    }

    fn publish_notice(&self, notice: Notice) {
        for q in self.queues.read().iter() {
            let mut s = q.inner.lock();
            if s.notices.len() >= self.capacity {
                s.receipts.add_dropped(1);
            } else {
                s.notices.push_back(notice);
            }
            drop(s);
            q.ready.notify_all();
        }
    }

    pub(crate) fn has_subscribers(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Joins an acknowledged advance into every subscription.
    pub(crate) fn publish(
        &self,
        conversation: u64,
        reader: u64,
        up_to: u64,
        at: u64,
        from: Option<u64>,
        window_ms: Option<u64>,
    ) {
        let window = window_ms.map(|ms| ms.saturating_mul(1_000_000));
        let queues = self.queues.read();
        let mut now = None;
        for q in queues.iter() {
            let pushed = q.inner.lock().receipts.push_with(
                (conversation, reader),
                up_to,
                at,
                from,
                window,
                || *now.get_or_insert_with(|| self.now_ns()),
            );
            // A joined advance changes no deadline: nobody to wake.
            if pushed != Pushed::Coalesced {
                q.ready.notify_all();
            }
        }
    }
}

impl Store {
    /// Subscribes to receipt events. Run the loop on a thread of its own and
    /// push each event over the sockets of the reader's devices and of its
    /// recipients.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use readmark::{Config, ConversationId, Event, MessageId, Store, Timestamp, UserId};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path(), Config::new().event_window(Duration::from_millis(50)))?;
    /// let (chat, alice, bob) = (ConversationId(1), UserId(1), UserId(2));
    /// store.create_conversation(chat)?;
    /// store.add_member(chat, alice, Timestamp(0))?;
    /// store.add_member(chat, bob, Timestamp(0))?;
    /// for m in 1..=10 {
    ///     store.record_message(chat, MessageId(m), alice, Timestamp(m))?;
    /// }
    /// let events = store.subscribe();
    /// for m in 1..=10 {
    ///     store.mark_read(chat, bob, MessageId(m), Timestamp(100 + m))?; // scrolling
    /// }
    /// let Some(Event::Receipt(e)) = events.recv_timeout(Duration::from_secs(5))? else {
    ///     panic!("no event");
    /// };
    /// assert_eq!((e.reader, e.up_to, e.advances), (bob, MessageId(10), 10));
    /// assert_eq!(e.recipients, vec![alice]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe(&self) -> Subscription<'_> {
        let queue = Arc::new(Queue {
            inner: Mutex::new(QueueState {
                receipts: Coalescer::new(self.events.window_ns, self.events.capacity),
                notices: std::collections::VecDeque::new(),
            }),
            ready: Condvar::new(),
        });
        let mut queues = self.events.queues.write();
        queues.push(queue.clone());
        self.events.count.store(queues.len(), Ordering::Release);
        Subscription { store: self, queue }
    }

    /// Sets (or with [`EventPolicy::new`] clears) `conversation`'s own
    /// event window and recipient policy. The window applies to advances
    /// published from now on; the recipient policy to every event
    /// delivered from now on (recipients are resolved at delivery) and to
    /// catch-up. A conversation that comes to show other members' marks
    /// (`Recipients::Members`) lists them to its members' next catch-up;
    /// one that stops showing them is not announced (clients take a
    /// snapshot, as after any change of policy).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::InvalidArgument`] for a
    /// window above `u32::MAX` milliseconds.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # use std::time::Duration;
    /// # use readmark::{EventPolicy, Recipients};
    /// let dm = ConversationId(1);
    /// store.create_conversation(dm)?;
    /// let policy = EventPolicy::new().window(Duration::ZERO).recipients(Recipients::Members);
    /// store.set_event_policy(dm, policy)?;
    /// assert_eq!(store.event_policy(dm)?, policy);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_event_policy(
        &self,
        conversation: ConversationId,
        policy: EventPolicy,
    ) -> Result<()> {
        super::threads::check_public(conversation)?;
        let window = match policy.window {
            None => None,
            Some(w) => Some(u32::try_from(w.as_millis()).map_err(|_| {
                Error::InvalidArgument("an event window is at most u32::MAX milliseconds")
            })?),
        };
        let mut guard = self.lock(conversation);
        guard.forget(conversation);
        let view = self.view();
        let mut conv = view.conversation_record(conversation)?;
        let showed = self.shows_others(&conv);
        conv.event_window_ms = window;
        conv.event_recipients = policy.recipients.map(recipients_code);
        let shows = self.shows_others(&conv);
        // Its threads follow it (their newest message stays theirs).
        let mut threads = Vec::new();
        for t in super::threads::thread_ids(&view, conversation)? {
            let last = view.own_record(ConversationId(t))?.last_message();
            threads.push((t, last.map(|m| m.0)));
        }
        drop(view);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(Cf::Conversations),
            keys::id_key(conversation.0),
            conv.encode(),
        );
        let ids: Vec<u64> = threads.iter().map(|&(t, _)| t).collect();
        self.write_structural_with(batch, |v, _, _| {
            if shows && !showed {
                self.visible_marks_all(v, conversation, &ids)
            } else {
                Ok(Vec::new())
            }
        })?;
        self.newest.set(
            conversation.0,
            conv.last_message().map(|m| m.0),
            conv.event_window_ms,
        );
        for (t, last) in threads {
            self.newest.set(t, last, conv.event_window_ms);
        }
        Ok(())
    }

    /// `conversation`'s own event settings (fields `None`: the store's).
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
    /// # use std::time::Duration;
    /// # use readmark::{EventPolicy, Recipients};
    /// let dm = ConversationId(1);
    /// store.create_conversation(dm)?;
    /// assert_eq!(store.event_policy(dm)?, EventPolicy::new()); // nothing overridden
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn event_policy(&self, conversation: ConversationId) -> Result<EventPolicy> {
        super::threads::check_public(conversation)?;
        let conv = self.view().conversation_record(conversation)?;
        Ok(EventPolicy {
            window: conv
                .event_window_ms
                .map(|ms| Duration::from_millis(u64::from(ms))),
            recipients: conv.event_recipients.map(recipients_of_code),
        })
    }

    /// Who receives receipts in this conversation: its own policy, or the
    /// store's for its size.
    pub(super) fn recipients_policy(&self, conv: &ConversationRecord) -> Recipients {
        if let Some(code) = conv.event_recipients {
            return recipients_of_code(code);
        }
        if conv.member_count <= u64::from(self.config.event_small_group) {
            self.config.small_group_recipients
        } else {
            self.config.large_group_recipients
        }
    }

    /// The members to tell to forget `reader`'s receipts, if the
    /// conversation shows receipts to every member and the reader is still
    /// hidden (they may have gone public again since).
    pub(super) fn resolve_hidden(&self, c: u64, r: u64, seq: u64) -> Result<Option<Event>> {
        self.privacy_consistent(|| self.resolve_hidden_once(c, r, seq))
    }

    fn resolve_hidden_once(&self, c: u64, r: u64, seq: u64) -> Result<Option<Event>> {
        let (conversation, reader) = (ConversationId(c), UserId(r));
        let view = self.snapshot_view();
        let Some(conv) = existing_conversation(&view, conversation)? else {
            return Ok(None);
        };
        let still_hidden = view
            .member_record(conversation, reader)?
            .is_some_and(|m| m.is_private());
        if !still_hidden || !self.shows_others(&conv) {
            return Ok(None);
        }
        // Only those who were members before it: a later joiner never saw
        // the reader's receipts and need not learn they hid them.
        let mut recipients = Vec::new();
        view.for_each_member(conversation, |user, member, _| {
            if user != reader && member.joined_seq <= seq {
                recipients.push(user);
            }
            ControlFlow::Continue(())
        })?;
        Ok(Some(Event::Hidden {
            conversation,
            reader,
            recipients,
        }))
    }

    /// The reader's flag as it is now, if they are still a member.
    pub(super) fn resolve_flag(&self, c: u64, r: u64) -> Result<Option<Event>> {
        let (conversation, reader) = (ConversationId(c), UserId(r));
        let view = self.view();
        if view.member_record(conversation, reader)?.is_none() {
            return Ok(None);
        }
        let (public, thread) = view.public_timeline(conversation)?;
        Ok(Some(Event::UnreadFlag {
            conversation: public,
            thread,
            reader,
            marked_unread: view.mark_state(conversation, reader)?.marked_unread(),
        }))
    }

    /// Turns a due queue entry into an event, from the store as it is now.
    pub(super) fn resolve(
        &self,
        key: (u64, u64),
        pending: Pending,
    ) -> Result<Option<ReceiptEvent>> {
        self.privacy_consistent(|| self.resolve_once(key, pending))
    }

    fn resolve_once(&self, (c, r): (u64, u64), pending: Pending) -> Result<Option<ReceiptEvent>> {
        let (conversation, reader) = (ConversationId(c), UserId(r));
        let view = self.snapshot_view();
        let Some(conv) = existing_conversation(&view, conversation)? else {
            return Ok(None);
        };
        // A reader who left is no longer anyone's business.
        let Some(member) = view.member_record(conversation, reader)? else {
            return Ok(None);
        };
        let Some(mark) = view.mark_state(conversation, reader)?.mark else {
            return Ok(None);
        };
        let cap = self.config.event_fanout_cap;
        let mut recipients = Vec::new();
        let mut capped = false;
        if !member.is_private() {
            match self.recipients_policy(&conv) {
                Recipients::Members => view.for_each_member(conversation, |user, _, _| {
                    if user != reader {
                        if recipients.len() < cap {
                            recipients.push(user);
                        } else {
                            capped = true;
                            return ControlFlow::Break(());
                        }
                    }
                    ControlFlow::Continue(())
                })?,
                Recipients::Authors => {
                    // Nothing before the reader joined was ever theirs to
                    // read: its authors learn nothing from them (a late
                    // joiner's first advance starts from no mark).
                    let from = member
                        .read_position(pending.from.map(MessageId))
                        .map(|m| m.0);
                    capped = authors_of(
                        &view,
                        conversation,
                        reader,
                        from,
                        mark.up_to,
                        cap,
                        &mut recipients,
                    )?;
                }
                Recipients::Nobody => {}
            }
        }
        let (public, thread) = view.public_timeline(conversation)?;
        Ok(Some(ReceiptEvent {
            conversation: public,
            thread,
            reader,
            up_to: mark.up_to,
            read_at: mark.at,
            recipients,
            capped,
            advances: pending.advances,
        }))
    }
}

/// Adds to `out` the current members other than `reader` who wrote a
/// message in `(from, up_to]`, newest messages first, up to `cap`; returns
/// whether more qualified.
fn authors_of(
    view: &View<'_>,
    conversation: ConversationId,
    reader: UserId,
    from: Option<u64>,
    up_to: MessageId,
    cap: usize,
    out: &mut Vec<UserId>,
) -> Result<bool> {
    let lower = from.map_or(0, |f| f.saturating_add(1));
    if lower > up_to.0 {
        return Ok(false);
    }
    // Just past `up_to`'s key: the range includes it.
    let mut upper = keys::pair_key(conversation.0, up_to.0).to_vec();
    upper.push(0);
    let mut it = view.range_iter(
        Cf::Messages,
        keys::pair_key(conversation.0, lower).to_vec(),
        upper,
    );
    it.seek_to_last();
    let mut seen: HashSet<UserId> = HashSet::new();
    let mut capped = false;
    let mut scanned = 0usize;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        scanned += 1;
        if scanned > AUTHOR_SCAN_LIMIT {
            break;
        }
        let rec = MessageRecord::decode(v)
            .ok_or_else(|| corrupt(Cf::Messages, k, "bad message record"))?;
        let sender = rec.sender;
        let fresh = !rec.deleted && sender != reader && seen.insert(sender);
        if fresh && view.member_record(conversation, sender)?.is_some() {
            if out.len() >= cap {
                capped = true;
                break;
            }
            out.push(sender);
        }
        it.prev();
    }
    it.status().map_err(storage)?;
    out.sort_unstable();
    Ok(capped)
}
