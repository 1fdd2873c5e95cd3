//! Real-time receipts: subscriptions with coalesced events, recipient
//! resolution, and catch-up from the change log.
//!
//! Publishing costs a mark update almost nothing: the update is joined into
//! each subscription's [`Coalescer`] entry for its (conversation, reader).
//! Everything that needs the store — the newest mark, membership, privacy,
//! recipients — is decided when the event is *delivered*, on the
//! subscriber's thread, once per coalesced event: so a member who left or a
//! reader who went private in the meantime is honoured, and the write path
//! never walks a member list.
//!
//! The change log (`changes`: conversation | seq → reader, `user_changes`:
//! reader | seq → conversation) is written in the same RocksDB batch as the
//! marks it records, so it is exactly as durable, and survives restart with
//! them. Its sequence counter is stored in `meta` in that batch too.

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use byteorder::{BigEndian, ByteOrder};
use parking_lot::{Condvar, Mutex, RwLock};
use rocksdb::{WriteBatch, DB};

use super::receipts::Clock;
use super::{corrupt, Cf, Store, View};
use crate::config::Recipients;
use crate::error::{Error, Result};
use crate::events::{ChangeRecord, Coalescer, Cursor, Pending, Pushed};
use crate::ids::{ConversationId, MessageId, Timestamp, UserId};
use crate::keys;
use crate::records::{ConversationRecord, MessageRecord};

/// Key of the change-log sequence reservation in `meta`: every sequence
/// number ever handed out is below the stored value.
pub(crate) const CHANGE_SEQ_KEY: &[u8] = b"change_seq";

/// Sequence numbers reserved per synced write of [`CHANGE_SEQ_KEY`].
pub(crate) const CHANGE_SEQ_BLOCK: u64 = 1 << 20;

/// At most this many newly covered messages are read to find their authors
/// ([`Recipients::Authors`]): a reader catching up on a long history costs
/// a bounded walk, newest messages first.
pub const AUTHOR_SCAN_LIMIT: usize = 10_000;

/// A receipt to push to clients: `reader` has read `conversation` up to
/// `up_to`. Send it to the reader's own devices (always) and to every user
/// in `recipients`.
///
/// # Examples
///
/// See [`Store::subscribe`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiptEvent {
    /// The conversation.
    pub conversation: ConversationId,
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
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// This conversation's own coalescing window.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// This conversation's own recipient policy.
    #[must_use]
    pub fn recipients(mut self, recipients: Recipients) -> Self {
        self.recipients = Some(recipients);
        self
    }
}

fn recipients_code(r: Recipients) -> u8 {
    use crate::records::{
        CONV_RECIPIENTS_AUTHORS, CONV_RECIPIENTS_MEMBERS, CONV_RECIPIENTS_NOBODY,
    };
    match r {
        Recipients::Members => CONV_RECIPIENTS_MEMBERS,
        Recipients::Authors => CONV_RECIPIENTS_AUTHORS,
        Recipients::Nobody => CONV_RECIPIENTS_NOBODY,
    }
}

fn recipients_of_code(code: u8) -> Recipients {
    use crate::records::{CONV_RECIPIENTS_AUTHORS, CONV_RECIPIENTS_MEMBERS};
    match code {
        CONV_RECIPIENTS_MEMBERS => Recipients::Members,
        CONV_RECIPIENTS_AUTHORS => Recipients::Authors,
        // The decoder admits no other value.
        _ => Recipients::Nobody,
    }
}

/// One subscriber's queue.
pub(crate) struct Queue {
    inner: Mutex<QueueState>,
    ready: Condvar,
}

struct QueueState {
    receipts: Coalescer,
    /// Notices delivered at once, before receipts, in order. Bounded like
    /// the receipts; past it, counted as dropped.
    notices: std::collections::VecDeque<Notice>,
}

/// A notice not coalesced.
#[derive(Clone, Copy, Debug)]
enum Notice {
    /// (conversation, reader, change sequence before the hiding) to hide.
    Hidden(u64, u64, u64),
    /// (conversation, reader) whose unread flag changed.
    Flag(u64, u64),
}

/// The subscriptions of a store.
pub(crate) struct Hub {
    epoch: Instant,
    window_ns: u64,
    capacity: usize,
    queues: RwLock<Vec<Arc<Queue>>>,
    count: AtomicUsize,
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

    fn now_ns(&self) -> u64 {
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

/// A stream of [`Event`]s from [`Store::subscribe`]. Dropping it
/// unsubscribes.
///
/// Every mark advance made while subscribed is delivered, joined with the
/// other advances of its (conversation, reader) within
/// [`Config::event_window`](crate::Config::event_window), when that window
/// closes. Memory is bounded by
/// [`Config::event_buffer`](crate::Config::event_buffer) entries; past it,
/// advances of new pairs are counted and reported as [`Event::Lagged`].
///
/// Advances by [`Store::mark_read`] publish events, and so does a send
/// that covered messages its sender had not read (sending counts as
/// reading), and a mark that becomes visible when its owner makes their
/// receipts public again. A change of the unread flag is an
/// [`Event::UnreadFlag`] for the owner's devices alone. A send that covers
/// only itself and [`Store::mark_viewed`] publish nothing (the sender's
/// clients know what they sent; views change no read mark).
///
/// # Examples
///
/// See [`Store::subscribe`].
pub struct Subscription<'s> {
    store: &'s Store,
    queue: Arc<Queue>,
}

impl std::fmt::Debug for Subscription<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl Subscription<'_> {
    /// Waits up to `timeout` for the next event whose window has closed.
    /// `Ok(None)` if none came in time.
    ///
    /// # Errors
    ///
    /// Storage errors while resolving recipients.
    ///
    /// # Examples
    ///
    /// See [`Store::subscribe`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Event>> {
        let hub = &self.store.events;
        let deadline = Instant::now() + timeout;
        loop {
            let item = {
                let mut q = self.queue.inner.lock();
                loop {
                    let dropped = q.receipts.take_dropped();
                    if dropped > 0 {
                        return Ok(Some(Event::Lagged { dropped }));
                    }
                    if let Some(n) = q.notices.pop_front() {
                        break Item::Notice(n);
                    }
                    if let Some(due) = q.receipts.pop_due(hub.now_ns()) {
                        break Item::Receipt(due);
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    let wake = match q.receipts.next_due() {
                        Some(due) => deadline.min(hub.epoch + Duration::from_nanos(due)),
                        None => deadline,
                    };
                    self.queue.ready.wait_until(&mut q, wake);
                }
            };
            match self.resolve_item(item) {
                Ok(Some(event)) => return Ok(Some(event)),
                Ok(None) => {}
                Err(e) => {
                    // Popped and not delivered: the subscriber hears of it
                    // as lag, and catches up.
                    self.queue.inner.lock().receipts.add_dropped(1);
                    return Err(e);
                }
            }
        }
    }

    /// The next event if one is due now, without waiting.
    ///
    /// # Errors
    ///
    /// As [`recv_timeout`](Subscription::recv_timeout).
    pub fn try_recv(&self) -> Result<Option<Event>> {
        self.recv_timeout(Duration::ZERO)
    }

    /// Every held event now, windows closed or not (at shutdown, or to
    /// flush a test's events): resolved the same way, coalescing kept.
    ///
    /// # Errors
    ///
    /// As [`recv_timeout`](Subscription::recv_timeout).
    ///
    /// # Examples
    ///
    /// See [`Store::subscribe`].
    pub fn drain(&self) -> Result<Vec<Event>> {
        let (dropped, held) = {
            let mut q = self.queue.inner.lock();
            let mut held: Vec<Item> = q.notices.drain(..).map(Item::Notice).collect();
            while let Some(e) = q.receipts.pop_front() {
                held.push(Item::Receipt(e));
            }
            (q.receipts.take_dropped(), held)
        };
        let mut out = Vec::with_capacity(held.len() + 1);
        if dropped > 0 {
            out.push(Event::Lagged { dropped });
        }
        let total = held.len();
        for (i, item) in held.into_iter().enumerate() {
            match self.resolve_item(item) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => {}
                Err(e) => {
                    // Everything popped is lost with the error (those
                    // resolved too): report it all as lag next time.
                    let resolved = out
                        .iter()
                        .filter(|e| !matches!(e, Event::Lagged { .. }))
                        .count();
                    let lost = total - i + resolved;
                    let lost = u64::try_from(lost).unwrap_or(u64::MAX) + dropped;
                    self.queue.inner.lock().receipts.add_dropped(lost);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// (conversation, reader) pairs held, not yet delivered.
    #[must_use]
    pub fn pending(&self) -> usize {
        let q = self.queue.inner.lock();
        q.receipts.len() + q.notices.len()
    }

    fn resolve_item(&self, item: Item) -> Result<Option<Event>> {
        match item {
            Item::Receipt((key, pending)) => {
                Ok(self.store.resolve(key, pending)?.map(Event::Receipt))
            }
            Item::Notice(Notice::Hidden(c, r, seq)) => self.store.resolve_hidden(c, r, seq),
            Item::Notice(Notice::Flag(c, r)) => self.store.resolve_flag(c, r),
        }
    }
}

/// What a queue hands to delivery.
enum Item {
    Receipt(((u64, u64), Pending)),
    Notice(Notice),
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let hub = &self.store.events;
        let mut queues = hub.queues.write();
        queues.retain(|q| !Arc::ptr_eq(q, &self.queue));
        hub.count.store(queues.len(), Ordering::Release);
    }
}

/// One (conversation, reader) read state, from catch-up or a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ReadState {
    /// The conversation.
    pub conversation: ConversationId,
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
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Changes {
    /// The latest state of every pair that changed, as it is now (a pair
    /// may appear in two pages if it changed again in between).
    pub states: Vec<ReadState>,
    /// (conversation, reader) pairs the user may no longer see (the reader
    /// left, or made their receipts private): forget what was shown.
    pub hidden: Vec<(ConversationId, UserId)>,
    /// Where to continue: the next page if `more`, else the cursor to keep
    /// for the next catch-up.
    pub next: Cursor,
    /// Whether more changes of this walk remain.
    pub more: bool,
}

/// The answer of [`Store::changes_since`]: exactly these two, so a caller's
/// `match` cannot forget the snapshot case.
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
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// In conversation, then reader order.
    pub states: Vec<ReadState>,
    /// Catch-up from here: pinned before the state was read, so a change
    /// made during the snapshot is listed again, never missed.
    pub cursor: Cursor,
}

/// The change-log sequence and the clock it is stamped with.
pub(crate) struct ChangeLog {
    state: Mutex<LogState>,
    clock: Arc<Clock>,
}

/// Sequence numbers are assigned (stamped with a non-decreasing time) when
/// a batch is built and become *written* when it lands; cursors pin only
/// written ones, so a walk never passes a change that has yet to land.
/// Numbers come from a block reserved durably in `meta` before any is used
/// (`reserved`), and every open starts above the stored reservation: a
/// batch lost to a power loss (single-key flushes are not synced) or never
/// written (a failed write) leaves a gap, never a number handed out twice,
/// so no cursor pinned before a crash can skip a change made after it.
#[derive(Default)]
struct LogState {
    assigned: u64,
    stamp: u64,
    written: u64,
    /// The stamp of the batch that wrote `written`: every change after it
    /// is stamped no earlier.
    written_stamp: u64,
    reserved: u64,
}

fn reserve(db: &DB, upto: u64) -> Result<()> {
    let meta = db
        .cf_handle(Cf::Meta.name())
        .ok_or(Error::InvalidArgument("no meta column family"))?;
    let mut o = rocksdb::WriteOptions::default();
    o.set_sync(true);
    db.put_cf_opt(meta, CHANGE_SEQ_KEY, upto.to_be_bytes(), &o)?;
    Ok(())
}

impl ChangeLog {
    pub(crate) fn open(db: &DB, clock: Arc<Clock>) -> Result<Self> {
        let meta = db
            .cf_handle(Cf::Meta.name())
            .ok_or(Error::InvalidArgument("no meta column family"))?;
        let seq = match db.get_pinned_cf(meta, CHANGE_SEQ_KEY)? {
            Some(v) if v.len() == 8 => BigEndian::read_u64(&v),
            Some(_) => {
                return Err(corrupt(
                    Cf::Meta,
                    CHANGE_SEQ_KEY,
                    "change sequence is not 8 bytes",
                ))
            }
            None => 0,
        };
        let reserved = seq.saturating_add(CHANGE_SEQ_BLOCK);
        reserve(db, reserved)?;
        let now = clock.now();
        Ok(Self {
            state: Mutex::new(LogState {
                assigned: seq,
                written: seq,
                stamp: now,
                written_stamp: now,
                reserved,
            }),
            clock,
        })
    }

    /// The newest written sequence and a time no later than the stamp of
    /// any change after it (invariant 25): now, if no batch is in flight.
    pub(crate) fn pin(&self) -> (u64, u64) {
        let mut s = self.state.lock();
        if s.assigned == s.written {
            s.stamp = s.stamp.max(self.clock.now());
            s.written_stamp = s.stamp;
        }
        (s.written, s.written_stamp)
    }

    /// The last sequence assigned. Stable while the flush lock is held.
    pub(crate) fn assigned(&self) -> u64 {
        self.state.lock().assigned
    }

    /// The batch holding every assigned sequence has landed.
    pub(crate) fn mark_written(&self) {
        let mut s = self.state.lock();
        s.written = s.assigned;
        s.written_stamp = s.stamp;
    }

    /// The next sequence number, for a flushed advance: it goes into the
    /// mark itself (`MarkState::changed`), not into a row. Called with the
    /// flush lock held (or by the replay at open).
    pub(crate) fn next(&self, db: &DB) -> Result<u64> {
        let mut s = self.state.lock();
        s.stamp = s.stamp.max(self.clock.now());
        Self::assign(db, &mut s)
    }

    fn assign(db: &DB, s: &mut LogState) -> Result<u64> {
        if s.assigned >= s.reserved {
            let next = s.reserved.saturating_add(CHANGE_SEQ_BLOCK);
            reserve(db, next)?;
            s.reserved = next;
        }
        s.assigned += 1;
        Ok(s.assigned)
    }

    /// Adds structural changes (a join, a leave, a privacy change) to
    /// `batch`: `(conversation, reader)` rows in the conversation's log,
    /// listed again (or as hidden) to the other members. Called with the
    /// flush lock held, so batches carrying sequences are written in
    /// sequence order.
    pub(crate) fn append_rows(
        &self,
        db: &DB,
        rows: impl Iterator<Item = (u64, u64)>,
        batch: &mut WriteBatch,
    ) -> Result<()> {
        let conv_log = db
            .cf_handle(Cf::Changes.name())
            .ok_or(Error::InvalidArgument("column family missing"))?;
        let mut s = self.state.lock();
        s.stamp = s.stamp.max(self.clock.now());
        for (c, u) in rows {
            let seq = Self::assign(db, &mut s)?;
            let rec = ChangeRecord {
                id: u,
                written_at: s.stamp,
            };
            batch.put_cf(conv_log, keys::pair_key(c, seq), rec.encode());
        }
        Ok(())
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
    /// See [`EventPolicy`].
    pub fn set_event_policy(
        &self,
        conversation: ConversationId,
        policy: EventPolicy,
    ) -> Result<()> {
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
        drop(view);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(Cf::Conversations),
            keys::id_key(conversation.0),
            conv.encode(),
        );
        self.write_structural_with(batch, |v, _, _| {
            if shows && !showed {
                self.visible_marks(v, conversation)
            } else {
                Ok(Vec::new())
            }
        })?;
        self.newest.set(
            conversation.0,
            conv.last_message().map(|m| m.0),
            conv.event_window_ms,
        );
        Ok(())
    }

    /// `conversation`'s own event settings (fields `None`: the store's).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`].
    pub fn event_policy(&self, conversation: ConversationId) -> Result<EventPolicy> {
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
    fn recipients_policy(&self, conv: &ConversationRecord) -> Recipients {
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
    fn resolve_hidden(&self, c: u64, r: u64, seq: u64) -> Result<Option<Event>> {
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
    fn resolve_flag(&self, c: u64, r: u64) -> Result<Option<Event>> {
        let (conversation, reader) = (ConversationId(c), UserId(r));
        let view = self.view();
        if view.member_record(conversation, reader)?.is_none() {
            return Ok(None);
        }
        Ok(Some(Event::UnreadFlag {
            conversation,
            reader,
            marked_unread: view.mark_state(conversation, reader)?.marked_unread(),
        }))
    }

    /// Turns a due queue entry into an event, from the store as it is now.
    fn resolve(&self, key: (u64, u64), pending: Pending) -> Result<Option<ReceiptEvent>> {
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
        Ok(Some(ReceiptEvent {
            conversation,
            reader,
            up_to: mark.up_to,
            read_at: mark.at,
            recipients,
            capped,
            advances: pending.advances,
        }))
    }

    /// Whether members see each other's (public) read state in a
    /// conversation: when its policy sends receipts to every member.
    pub(crate) fn shows_others(&self, conv: &ConversationRecord) -> bool {
        self.recipients_policy(conv) == Recipients::Members
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
        let mut hidden: Vec<(ConversationId, UserId)> = Vec::new();
        let full = |states: &Vec<ReadState>, hidden: &Vec<(ConversationId, UserId)>| {
            states.len() + hidden.len() >= limit
        };
        let conversations = super::conversations::conversations_in(&view, user)?;
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
                    return Ok(CatchUp::Changes(Changes {
                        states,
                        hidden,
                        next: c,
                        more: true,
                    }));
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
                    return Ok(CatchUp::Changes(Changes {
                        states,
                        hidden,
                        next: c,
                        more: true,
                    }));
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
                    _ => hidden.push((conversation, reader)),
                }
            }
        }
        Ok(CatchUp::Changes(Changes {
            states,
            hidden,
            next: Cursor::after(c.high, c.high_at),
            more: false,
        }))
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
        for conversation in super::conversations::conversations_in(&view, user)? {
            let conv = view.conversation_record(conversation)?;
            if !self.shows_others(&conv) {
                if let Some(s) = read_state(&view, conversation, user, user)? {
                    states.push(s);
                }
                continue;
            }
            view.for_each_member(conversation, |reader, member, state| {
                if let Some(mark) = state.mark {
                    if reader == user || !member.is_private() {
                        states.push(ReadState {
                            conversation,
                            reader,
                            up_to: mark.up_to,
                            read_at: mark.at,
                            marked_unread: reader == user && state.marked_unread(),
                        });
                    }
                }
                ControlFlow::Continue(())
            })?;
        }
        Ok(Snapshot { states, cursor })
    }
}

/// The conversation's record, or `None` if there is none: an event about
/// it has nobody to go to, which is not an error of the subscriber's.
fn existing_conversation(
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
    Ok(state.mark.map(|m| ReadState {
        conversation,
        reader,
        up_to: m.up_to,
        read_at: m.at,
        marked_unread: reader == viewer && state.marked_unread(),
    }))
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
    it.status()?;
    out.sort_unstable();
    Ok(capped)
}
