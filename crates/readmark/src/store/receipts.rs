//! Hybrid per-message receipts on RocksDB: which conversations keep them
//! (the threshold and the migrations when it is crossed), the bits and
//! read-time runs written in the same batch as a mark advance, single
//! message views, and the "read by" answer that combines bitsets and marks.
//!
//! The rule every answer follows (docs/design.md, "Per-message receipts"):
//! the readers of message `M` are the current members, other than its
//! sender, who were members when `M` was recorded (`M > joined_after`) and
//! whose mark covers `M` or whose bit is set in `M`'s live bitset. While a
//! conversation stays small the bitset alone already holds every such
//! reader once their advance is flushed; the marks complete the answer for
//! advances still buffered and for the periods a crossing left without bits.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{DBRawIterator, WriteBatch};

use super::{Cf, Store, View, corrupt};
use crate::error::{Error, Result, storage};
use crate::ids::{ConversationId, MessageId, Timeline, Timestamp, UserId};
use crate::pure::bitset::{
    Bitset, MAX_SLOTS, ReadTimeRecord, TIME_KEY_LEN, TIME_KEY_MESSAGE, TimeKind, expired, time_key,
    time_key_range,
};
use crate::pure::keys;
use crate::pure::records::{ConversationRecord, MemberRecord};

use super::marks::{Page, ReadBy, ReadTime, Reader, ReceiptSource};

/// The store's notion of "now" for retention: the system clock, or a fixed
/// time set by a test.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    fixed: AtomicU64,
}

impl Clock {
    /// Fixed at `t` (ms), or the system clock for 0.
    pub(crate) fn fixed_at(t: u64) -> Self {
        Clock {
            fixed: AtomicU64::new(t),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        match self.fixed.load(Ordering::Relaxed) {
            0 => Timestamp::now().0,
            t => t,
        }
    }

    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn set(&self, t: Option<Timestamp>) {
        self.fixed
            .store(t.map_or(0, |t| t.0.max(1)), Ordering::Relaxed);
    }
}

/// What the write path needs to know about receipts.
pub(crate) struct ReceiptPolicy {
    pub(crate) retention_ms: u64,
    pub(crate) clock: Arc<Clock>,
}

impl ReceiptPolicy {
    pub(crate) fn expired(&self, at: u64, now: u64) -> bool {
        expired(at, self.retention_ms, now)
    }
}

/// Whether `member` was a member when `message` was recorded.
fn in_audience(member: &MemberRecord, message: MessageId) -> bool {
    member.joined_after.is_none_or(|j| message > j)
}

/// The answer to "how many read message M" (see [`Store::read_count`]).
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
/// store.record_message(c, MessageId(1), alice, Timestamp::now())?;
/// store.mark_read(c, bob, MessageId(1), Timestamp::now())?;
/// let n = store.read_count(c, alice, MessageId(1))?;
/// assert_eq!(n.count, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadCount {
    /// Members (other than the sender) who read it.
    pub count: u64,
    /// What answered.
    pub source: ReceiptSource,
}

impl View<'_> {
    pub(super) fn bitset(
        &self,
        conversation: ConversationId,
        message: MessageId,
    ) -> Result<Bitset> {
        let key = keys::message_key(conversation, message);
        match self.get_raw(Cf::Receipts, &key)? {
            None => Ok(Bitset::default()),
            Some(v) => {
                Bitset::decode(&v).ok_or_else(|| corrupt(Cf::Receipts, &key, "bad receipt bitset"))
            }
        }
    }

    /// An iterator over the read-time records of one conversation, shared
    /// by the lookups of one answer (a new RocksDB iterator per reader
    /// costs more than the seeks).
    fn times_of(&self, conversation: ConversationId) -> DBRawIterator<'_> {
        let lower = time_key(conversation.0, 0, TimeKind::Run, 0).to_vec();
        let upper = match conversation.0.checked_add(1) {
            Some(next) => time_key(next, 0, TimeKind::Run, 0).to_vec(),
            None => vec![0xFF; TIME_KEY_LEN + 1],
        };
        self.range_iter(Cf::ReadTimes, lower, upper)
    }
}

/// When `user` first read `message` according to the read-time records:
/// the earlier of its view and the run that covers it. `it` iterates the
/// conversation's read-time records ([`View::times_of`]).
fn first_read(
    it: &mut DBRawIterator<'_>,
    conversation: ConversationId,
    user: UserId,
    message: MessageId,
) -> Result<Option<u64>> {
    let (c, u, m) = (conversation.0, user.0, message.0);
    let mut at_key = |key: [u8; TIME_KEY_LEN],
                      exact: bool|
     -> Result<Option<(u64, ReadTimeRecord)>> {
        it.seek(key);
        let found = match (it.key(), it.value()) {
            // Same conversation, user and kind.
            (Some(k), Some(v))
                if k.len() == TIME_KEY_LEN && k[..TIME_KEY_MESSAGE] == key[..TIME_KEY_MESSAGE] =>
            {
                if exact && k != key {
                    None
                } else {
                    let r = ReadTimeRecord::decode(v)
                        .ok_or_else(|| corrupt(Cf::ReadTimes, k, "bad read-time record"))?;
                    let mut id = [0u8; 8];
                    id.copy_from_slice(&k[TIME_KEY_MESSAGE..]);
                    Some((u64::from_be_bytes(id), r))
                }
            }
            _ => None,
        };
        it.status().map_err(storage)?;
        Ok(found)
    };
    // Runs are disjoint and keyed by their upper end, so the first run
    // ending at or after `m` is the only one that can cover it.
    let run = at_key(time_key(c, u, TimeKind::Run, m), false)?
        .filter(|(up_to, r)| r.run_covers(*up_to, m))
        .map(|(_, r)| r.at);
    let viewed = at_key(time_key(c, u, TimeKind::View, m), true)?.map(|(_, r)| r.at);
    Ok(match (viewed, run) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

impl Store {
    /// Who read `message`, with the total count and one page of readers in
    /// user id order.
    ///
    /// A reader is a current member, other than the sender, who was a member
    /// when the message was recorded, and whose read mark covers it or who
    /// opened it on its own ([`mark_viewed`](Store::mark_viewed)). For a
    /// message with live per-message receipts (a small conversation, within
    /// [`Config::receipt_retention`](crate::Config::receipt_retention)) the
    /// answer says [`ReceiptSource::PerMessage`] and readers carry the time
    /// they first read it ([`ReadTime::At`]); otherwise it is derived from
    /// the marks ([`ReceiptSource::Marks`], [`ReadTime::NoLaterThan`]).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::UnknownMessage`],
    /// [`Error::InvalidArgument`] for a page limit of 0.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Page, ReadTime, ReceiptSource, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let c = ConversationId(1);
    /// # store.create_conversation(c)?;
    /// # for u in 1..=4 { store.add_member(c, UserId(u), Timestamp(0))?; }
    /// let now = Timestamp::now().0;
    /// store.record_message(c, MessageId(10), UserId(1), Timestamp(now))?;
    /// store.mark_read(c, UserId(2), MessageId(10), Timestamp(now + 2))?;
    /// store.mark_read(c, UserId(3), MessageId(12), Timestamp(now + 3))?;
    /// let page = store.read_by(c, UserId(1), MessageId(10), Page::first(1))?;
    /// assert_eq!(page.count, 2);
    /// assert_eq!(page.source, ReceiptSource::PerMessage);
    /// assert_eq!(page.readers[0].user, UserId(2));
    /// let rest = store.read_by(c, UserId(1), MessageId(10), Page { after: page.next, limit: 1 })?;
    /// assert_eq!(rest.readers[0].user, UserId(3));
    /// assert_eq!(rest.next, None);
    /// store.flush()?; // once flushed, the bitset holds the exact first-read time
    /// let page = store.read_by(c, UserId(1), MessageId(10), Page::first(10))?;
    /// assert_eq!(page.readers[0].read_at, ReadTime::At(Timestamp(now + 2)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_by(
        &self,
        timeline: impl Into<Timeline>,
        viewer: UserId,
        message: MessageId,
        page: Page,
    ) -> Result<ReadBy> {
        self.with_timeline(timeline.into(), |conversation| {
            if page.limit == 0 {
                return Err(Error::InvalidArgument("page limit must be at least 1"));
            }
            self.readers(conversation, viewer, message, Some(page))
        })
    }

    /// How many members read `message` and which data answered: the count
    /// of [`read_by`](Store::read_by) without looking up read times.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::UnknownMessage`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, ReceiptSource, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// // A threshold of 1: two members make this a "large" conversation.
    /// let store = Store::open(dir.path(), Config::new().receipt_threshold(1))?;
    /// # let c = ConversationId(1);
    /// # store.create_conversation(c)?;
    /// # for u in 1..=2 { store.add_member(c, UserId(u), Timestamp(0))?; }
    /// store.record_message(c, MessageId(10), UserId(1), Timestamp(1))?;
    /// store.mark_read(c, UserId(2), MessageId(10), Timestamp(2))?;
    /// let n = store.read_count(c, UserId(1), MessageId(10))?;
    /// assert_eq!((n.count, n.source), (1, ReceiptSource::Marks));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_count(
        &self,
        timeline: impl Into<Timeline>,
        viewer: UserId,
        message: MessageId,
    ) -> Result<ReadCount> {
        self.with_timeline(timeline.into(), |conversation| {
            let r = self.readers(conversation, viewer, message, None)?;
            Ok(ReadCount {
                count: r.count,
                source: r.source,
            })
        })
    }

    fn readers(
        &self,
        conversation: ConversationId,
        viewer: UserId,
        message: MessageId,
        page: Option<Page>,
    ) -> Result<ReadBy> {
        self.privacy_consistent(|| self.readers_once(conversation, viewer, message, page))
    }

    fn readers_once(
        &self,
        conversation: ConversationId,
        viewer: UserId,
        message: MessageId,
        page: Option<Page>,
    ) -> Result<ReadBy> {
        let view = self.snapshot_view();
        view.require_member(conversation, viewer)?;
        let record = view.require_message(conversation, message)?;
        let now = self.clock.now();
        let live = record.tracked && !expired(record.sent_at.0, self.config.retention_ms(), now);
        let bits = if live {
            view.bitset(conversation, message)?
        } else {
            Bitset::default()
        };
        let mut count = 0u64;
        let mut chosen: Vec<(UserId, bool, Option<Timestamp>)> = Vec::new();
        let mut more = false;
        view.for_each_member(conversation, |user, member, state| {
            if user == record.sender
                || !in_audience(&member, message)
                || member.is_private() && user != viewer
            {
                return ControlFlow::Continue(());
            }
            let bit = member.slot.is_some_and(|s| bits.contains(s));
            let mark_at = state.mark.filter(|m| m.covers(message)).map(|m| m.at);
            if !bit && mark_at.is_none() {
                return ControlFlow::Continue(());
            }
            count += 1;
            if let Some(p) = page
                && p.after.is_none_or(|a| user > a)
            {
                if chosen.len() < p.limit {
                    chosen.push((user, bit, mark_at));
                } else {
                    more = true;
                }
            }
            ControlFlow::Continue(())
        })?;
        let mut readers = Vec::with_capacity(chosen.len());
        // In-order reads have no bit: the run of the advance that covered
        // the message holds their time (flush.rs). A reader with neither a
        // run nor a view read it no later than their mark says.
        let mut times = (live && !chosen.is_empty()).then(|| view.times_of(conversation));
        for (user, _bit, mark_at) in chosen {
            let exact = match &mut times {
                Some(it) => first_read(it, conversation, user, message)?,
                None => None,
            };
            let read_at = match (exact, mark_at) {
                // The mark proves an earlier read than the records show:
                // an advance made while the conversation kept no receipts.
                (Some(t), Some(m)) if m.0 < t => ReadTime::NoLaterThan(m),
                (Some(t), _) => ReadTime::At(Timestamp(t)),
                (None, Some(m)) => ReadTime::NoLaterThan(m),
                // A bit without its time record (damage): read, by now.
                (None, None) => ReadTime::NoLaterThan(Timestamp(now)),
            };
            readers.push(Reader { user, read_at });
        }
        let next = if more {
            readers.last().map(|r| r.user)
        } else {
            None
        };
        Ok(ReadBy {
            count,
            readers,
            next,
            source: if live {
                ReceiptSource::PerMessage
            } else {
                ReceiptSource::Marks
            },
        })
    }

    /// Records that `user` opened `message` on its own at `at` (a
    /// notification or a search result deep-linked to it) without moving
    /// their read mark. It then counts as read by them in
    /// [`read_by`](Store::read_by), with the earliest such time.
    ///
    /// Returns whether it was recorded: only messages with live per-message
    /// receipts keep single views (a conversation at or under the
    /// threshold, within retention, a message sent by someone else after
    /// the user joined). Elsewhere nothing is written per message and
    /// `false` is returned; the read mark remains the record.
    ///
    /// Written to RocksDB's write-ahead log at once (synced at
    /// [`Durability::PowerLoss`](crate::Durability::PowerLoss)), like
    /// membership changes: views are rare.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::NotMember`],
    /// [`Error::UnknownMessage`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Page, ReadTime, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let c = ConversationId(1);
    /// # store.create_conversation(c)?;
    /// # for u in 1..=2 { store.add_member(c, UserId(u), Timestamp(0))?; }
    /// let now = Timestamp::now().0;
    /// for m in 1..=3 {
    ///     store.record_message(c, MessageId(m), UserId(1), Timestamp(now))?;
    /// }
    /// assert!(store.mark_viewed(c, UserId(2), MessageId(3), Timestamp(now + 5))?);
    /// assert_eq!(store.mark(c, UserId(2))?, None); // the mark did not move
    /// let page = store.read_by(c, UserId(1), MessageId(3), Page::first(10))?;
    /// assert_eq!(page.readers[0].read_at, ReadTime::At(Timestamp(now + 5)));
    /// assert_eq!(store.read_by(c, UserId(1), MessageId(2), Page::first(10))?.count, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mark_viewed(
        &self,
        timeline: impl Into<Timeline>,
        user: UserId,
        message: MessageId,
        at: Timestamp,
    ) -> Result<bool> {
        self.with_timeline(timeline.into(), |conversation| {
            let _guard = self.lock(conversation);
            let view = self.view();
            let member = view.require_member(conversation, user)?;
            let conv = view.conversation_record(conversation)?;
            let record = view.require_message(conversation, message)?;
            let now = self.clock.now();
            let Some(slot) = member.slot else {
                return Ok(false);
            };
            if !conv.per_message
            || !record.tracked
            || expired(record.sent_at.0, self.config.retention_ms(), now)
            || record.sender == user
            || !in_audience(&member, message)
            // Nothing per message is recorded while private (privacy.rs).
            || member.is_private()
            {
                return Ok(false);
            }
            let at = at.0.max(record.sent_at.0);
            let key = time_key(conversation.0, user.0, TimeKind::View, message.0);
            let earlier = match view.get_raw(Cf::ReadTimes, &key)? {
                Some(v) => ReadTimeRecord::decode(&v).is_some_and(|r| r.at <= at),
                None => false,
            };
            drop(view);
            if earlier {
                return Ok(true);
            }
            let mut bits = Bitset::new(record.sent_at.0);
            bits.set(slot);
            let mut batch = WriteBatch::default();
            batch.put_cf(
                self.cf(Cf::ReadTimes),
                key,
                ReadTimeRecord { at, from: None }.encode(),
            );
            batch.merge_cf(
                self.cf(Cf::Receipts),
                keys::message_key(conversation, message),
                bits.encode(),
            );
            self.write_structural(batch)?;
            let c = &self.writer.counters;
            c.receipt_operands.fetch_add(1, Ordering::Relaxed);
            c.read_time_records.fetch_add(1, Ordering::Relaxed);
            Ok(true)
        })
    }

    /// Sets (or with `None` clears) this conversation's own receipt
    /// threshold, overriding [`Config::receipt_threshold`](crate::Config::receipt_threshold).
    /// The conversation's mode is decided again at once: crossing under the
    /// threshold starts per-message receipts for messages recorded from now
    /// on; crossing over it stops them (existing receipts stay readable).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConversation`], [`Error::InvalidArgument`] above 4096.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, ReceiptSource, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// # let c = ConversationId(1);
    /// # store.create_conversation(c)?;
    /// # for u in 1..=3 { store.add_member(c, UserId(u), Timestamp(0))?; }
    /// store.set_receipt_threshold(c, Some(2))?; // 3 members: now "large"
    /// store.record_message(c, MessageId(1), UserId(1), Timestamp::now())?;
    /// assert_eq!(store.read_count(c, UserId(1), MessageId(1))?.source, ReceiptSource::Marks);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_receipt_threshold(
        &self,
        conversation: ConversationId,
        threshold: Option<u32>,
    ) -> Result<()> {
        super::threads::check_public(conversation)?;
        if threshold.is_some_and(|t| t > MAX_SLOTS) {
            return Err(Error::InvalidArgument(
                "receipt threshold must be at most 4096",
            ));
        }
        // As for a membership change: buffered advances are written under
        // the mode they were made in.
        self.flush_timelines(conversation)?;
        let mut guard = self.lock(conversation);
        guard.forget(conversation);
        let view = self.view();
        let mut conv = view.conversation_record(conversation)?;
        conv.threshold = threshold;
        let mut batch = WriteBatch::default();
        self.decide_mode(
            &view,
            conversation,
            &mut conv,
            &mut batch,
            MemberChange::None,
        )?;
        batch.put_cf(
            self.cf(Cf::Conversations),
            keys::id_key(conversation.0),
            conv.encode(),
        );
        drop(view);
        self.write_structural(batch)
    }

    /// Deletes, in `batch`, every read-time record of one membership.
    pub(crate) fn delete_read_times(
        &self,
        batch: &mut WriteBatch,
        conversation: ConversationId,
        user: UserId,
    ) {
        let (from, to) = time_key_range(conversation.0, user.0);
        batch.delete_range_cf(self.cf(Cf::ReadTimes), &from[..], &to[..]);
    }

    pub(crate) fn threshold_of(&self, conv: &ConversationRecord) -> u64 {
        u64::from(conv.threshold.unwrap_or(self.config.receipt_threshold))
    }

    /// Decides whether `conv` keeps per-message receipts from now on, given
    /// its (already updated) member count. Crossing under the threshold
    /// gives a slot to every member without one (`leaving` excepted), in
    /// `batch`. Returns, in per-message mode, the slot a member `joining`
    /// in the same batch takes: chosen from the table the crossing just
    /// filled, never from the view, which does not show those slots yet.
    /// Called under the conversation's lock, after a durable flush.
    pub(crate) fn decide_mode(
        &self,
        view: &View<'_>,
        conversation: ConversationId,
        conv: &mut ConversationRecord,
        batch: &mut WriteBatch,
        change: MemberChange,
    ) -> Result<Option<u16>> {
        if conv.member_count > self.threshold_of(conv) {
            conv.per_message = false;
            return Ok(None);
        }
        let leaving = match change {
            MemberChange::Leaving(u) => Some(u),
            _ => None,
        };
        let joining = matches!(change, MemberChange::Joining);
        if conv.per_message {
            return if joining {
                Ok(Some(self.free_slot(view, conversation)?))
            } else {
                Ok(None)
            };
        }
        conv.per_message = true;
        let (mut used, slotless) = self.slot_table(view, conversation, leaving)?;
        for (user, mut record) in slotless {
            record.slot = Some(take_free_slot(&mut used)?);
            batch.put_cf(
                self.cf(Cf::Members),
                keys::member_key(conversation, user),
                record.encode(),
            );
        }
        if joining {
            Ok(Some(take_free_slot(&mut used)?))
        } else {
            Ok(None)
        }
    }

    /// The smallest slot no current member holds.
    fn free_slot(&self, view: &View<'_>, conversation: ConversationId) -> Result<u16> {
        let (mut used, _) = self.slot_table(view, conversation, None)?;
        take_free_slot(&mut used)
    }

    /// Slots in use, and the members without one.
    #[allow(clippy::type_complexity)]
    fn slot_table(
        &self,
        view: &View<'_>,
        conversation: ConversationId,
        leaving: Option<UserId>,
    ) -> Result<(Vec<bool>, Vec<(UserId, MemberRecord)>)> {
        let mut used = vec![false; MAX_SLOTS as usize];
        let mut slotless = Vec::new();
        view.scan_prefix(Cf::Members, conversation.0, 0, |user, v| {
            if Some(UserId(user)) == leaving {
                return Ok(ControlFlow::Continue(()));
            }
            let record = MemberRecord::decode(v).ok_or_else(|| {
                corrupt(
                    Cf::Members,
                    &keys::member_key(conversation, UserId(user)),
                    "bad member record",
                )
            })?;
            match record.slot {
                Some(s) => used[usize::from(s)] = true,
                None => slotless.push((UserId(user), record)),
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok((used, slotless))
    }
}

/// The membership change a mode decision is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemberChange {
    /// A threshold change.
    None,
    /// A member joins in the same batch (not yet in the view).
    Joining,
    /// This member leaves in the same batch (still in the view).
    Leaving(UserId),
}

fn take_free_slot(used: &mut [bool]) -> Result<u16> {
    let free = used
        .iter()
        .position(|&u| !u)
        .ok_or(Error::InvalidArgument("no free receipt slot"))?;
    used[free] = true;
    u16::try_from(free).map_err(|_| Error::InvalidArgument("no free receipt slot"))
}

/// Installs the retention compaction filters and the bitset merge operator.
///
/// The filters are installed through a factory, not as a plain filter:
/// RocksDB's C API stores a plain filter as a raw pointer owned by the Rust
/// `Options`, and `DB::create_cf` (used when an existing store gains a
/// column family) drops those options on return, leaving compactions with
/// a dangling filter (found as a SIGSEGV by `tests/it/crash.rs`). A factory is
/// held by a `shared_ptr` inside RocksDB.
pub(crate) mod filters {
    use std::ffi::CStr;
    use std::sync::Arc;

    use rocksdb::MergeOperands;
    use rocksdb::compaction_filter::{CompactionFilter, Decision};
    use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};

    use super::Clock;
    use crate::pure::bitset::{Bitset, RECEIPT_MERGE_NAME, ReadTimeRecord, expired, merge_bitsets};
    use crate::pure::merge::MergeCounters;
    use crate::pure::records::ChangeRecord;

    #[derive(Clone, Copy)]
    enum Records {
        Bitsets,
        ReadTimes,
        Changes,
    }

    struct Retention {
        records: Records,
        clock: Arc<Clock>,
        retention_ms: u64,
    }

    /// One compaction's filter: "now" is read once, when it starts.
    struct RetentionFilter {
        records: Records,
        now: u64,
        retention_ms: u64,
    }

    impl Retention {
        fn name_of(records: Records) -> &'static CStr {
            match records {
                Records::Bitsets => c"readmark.receipts.retention",
                Records::ReadTimes => c"readmark.read_times.retention",
                Records::Changes => c"readmark.changes.retention",
            }
        }
    }

    impl CompactionFilterFactory for Retention {
        type Filter = RetentionFilter;

        fn create(&mut self, _context: CompactionFilterContext) -> RetentionFilter {
            RetentionFilter {
                records: self.records,
                now: self.clock.now(),
                retention_ms: self.retention_ms,
            }
        }

        fn name(&self) -> &CStr {
            Self::name_of(self.records)
        }
    }

    impl CompactionFilter for RetentionFilter {
        // Total: undecodable values are kept, since retention is not the
        // place to destroy evidence of damage (`Stats`, reads report it).
        fn filter(&mut self, _level: u32, _key: &[u8], value: &[u8]) -> Decision {
            let at = match self.records {
                Records::Bitsets => Bitset::decode(value).map(|b| b.sent_at),
                Records::ReadTimes => ReadTimeRecord::decode(value).map(|r| r.at),
                Records::Changes => ChangeRecord::decode(value).map(|r| r.written_at),
            };
            match at {
                Some(at) if expired(at, self.retention_ms, self.now) => Decision::Remove,
                _ => Decision::Keep,
            }
        }

        fn name(&self) -> &CStr {
            Retention::name_of(self.records)
        }
    }

    pub(crate) fn install_receipts(
        opts: &mut rocksdb::Options,
        counters: Arc<MergeCounters>,
        clock: Arc<Clock>,
        retention_ms: u64,
    ) {
        let merge = move |_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands| {
            let out = merge_bitsets(existing, ops.iter());
            counters.record(out.skipped);
            Some(out.value)
        };
        opts.set_merge_operator_associative(RECEIPT_MERGE_NAME, merge);
        opts.set_compaction_filter_factory(Retention {
            records: Records::Bitsets,
            clock,
            retention_ms,
        });
    }

    pub(crate) fn install_changes(
        opts: &mut rocksdb::Options,
        clock: Arc<Clock>,
        retention_ms: u64,
    ) {
        opts.set_compaction_filter_factory(Retention {
            records: Records::Changes,
            clock,
            retention_ms,
        });
    }

    pub(crate) fn install_read_times(
        opts: &mut rocksdb::Options,
        clock: Arc<Clock>,
        retention_ms: u64,
    ) {
        opts.set_compaction_filter_factory(Retention {
            records: Records::ReadTimes,
            clock,
            retention_ms,
        });
    }
}
