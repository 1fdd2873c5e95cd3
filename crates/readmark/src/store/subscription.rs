//! The subscriber's side of real-time receipts: a [`Subscription`] drains
//! its queue, and each coalesced item is resolved against the store when it
//! is delivered (see `hub`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Store;
use super::hub::{Event, Notice, Queue};
use crate::error::Result;
use crate::pure::coalescer::Pending;

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
/// assert_eq!(e.reader, bob);
/// drop(events); // unsubscribes
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Subscription<'s> {
    pub(super) store: &'s Store,
    pub(super) queue: Arc<Queue>,
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
    /// let first = events.recv_timeout(Duration::from_secs(5))?;
    /// assert!(matches!(first, Some(Event::Receipt(_))));
    /// assert_eq!(events.recv_timeout(Duration::from_millis(1))?, None); // nothing else
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    /// while events.pending() > 0 {
    ///     if let Some(event) = events.try_recv()? {
    ///         assert!(matches!(event, Event::Receipt(_)));
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    /// let held = events.drain()?;
    /// assert_eq!(held.len(), 1);
    /// assert_eq!(events.pending(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    /// assert_eq!(events.pending(), 1);
    /// events.drain()?;
    /// assert_eq!(events.pending(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
