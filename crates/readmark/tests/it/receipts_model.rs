//! Hybrid per-message receipts against an in-memory model, in a main
//! timeline and in a thread: random joins,
//! leaves, messages, mark advances, single views, threshold changes,
//! private receipts switched on and off, clock ticks past retention,
//! compactions and reopens. Every `read_by` answer
//! (readers, read times, source, pagination), every `read_count` and every
//! `mark_viewed` result must agree with the model after every operation.
//!
//! The flush timer is disabled (1 h) and the per-key flush count is out of
//! reach, so buffered advances are written exactly when the model says:
//! before a membership or threshold change, on `flush`, and on close. That
//! makes the time of each run (one per flushed advance) predictable.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use readmark::{
    Config, ConversationId, Error, MessageId, Page, PrivacyScope, ReadTime, ReceiptSource, Store,
    Timeline, Timestamp, UserId,
};

const C: ConversationId = ConversationId(7);
const USERS: u64 = 7;
const RETENTION_MS: u64 = 1_000;
const T0: u64 = 1_700_000_000_000;
const DEFAULT_THRESHOLD: u32 = 3;

fn config(threshold: u32) -> Config {
    common::small_config()
        .receipt_threshold(threshold)
        .receipt_retention(Duration::from_millis(RETENTION_MS))
        .flush_interval(Duration::from_secs(3600))
        .flush_after_updates(1_000_000)
}

#[derive(Clone, Debug)]
enum Op {
    Join(u64),
    Leave(u64),
    Send(u64, u64),
    /// user, message index (beyond the end: ahead of the newest), time offset
    Read(u64, usize, i64),
    View(u64, usize, i64),
    Threshold(Option<u32>),
    /// user, private (in this conversation)
    Private(u64, bool),
    Flush,
    /// Close and reopen, possibly with another store-wide threshold (it
    /// applies to the conversation at its next membership change).
    Reopen(Option<u32>),
    Tick(u64),
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..USERS).prop_map(Op::Join),
        2 => (0..USERS).prop_map(Op::Leave),
        5 => (0..USERS, 1u64..4).prop_map(|(u, g)| Op::Send(u, g)),
        7 => (0..USERS, 0usize..14, -40i64..40).prop_map(|(u, i, d)| Op::Read(u, i, d)),
        3 => (0..USERS, 0usize..12, -40i64..40).prop_map(|(u, i, d)| Op::View(u, i, d)),
        1 => proptest::option::of(0u32..6).prop_map(Op::Threshold),
        2 => (0..USERS, any::<bool>()).prop_map(|(u, p)| Op::Private(u, p)),
        2 => Just(Op::Flush),
        3 => proptest::option::of(0u32..8).prop_map(Op::Reopen),
        2 => (0u64..450).prop_map(Op::Tick),
        1 => Just(Op::Compact),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Msg {
    id: u64,
    sender: u64,
    sent_at: u64,
    tracked: bool,
}

type Mark = (u64, u64);

fn join(a: Option<Mark>, b: Mark) -> Mark {
    match a {
        None => b,
        Some(a) if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) => b,
        Some(a) => a,
    }
}

#[derive(Debug)]
struct Model {
    /// The store's `Config::receipt_threshold` at the last open.
    default_threshold: u32,
    threshold: Option<u32>,
    per_message: bool,
    /// user -> joined_after
    members: BTreeMap<u64, Option<u64>>,
    msgs: Vec<Msg>,
    durable: BTreeMap<u64, Mark>,
    pending: BTreeMap<u64, Mark>,
    /// message -> users whose bit is set (only while they are members)
    bits: BTreeMap<u64, BTreeSet<u64>>,
    /// user -> runs (from, up_to, at)
    runs: BTreeMap<u64, Vec<(Option<u64>, u64, u64)>>,
    views: BTreeMap<(u64, u64), u64>,
    /// Members whose receipts are private here: their flushed advances
    /// write the mark only, their views nothing, and nobody else sees them.
    private: BTreeSet<u64>,
    now: u64,
}

impl Model {
    fn new() -> Self {
        Self {
            default_threshold: DEFAULT_THRESHOLD,
            threshold: None,
            per_message: true,
            members: BTreeMap::new(),
            msgs: Vec::new(),
            durable: BTreeMap::new(),
            pending: BTreeMap::new(),
            bits: BTreeMap::new(),
            runs: BTreeMap::new(),
            views: BTreeMap::new(),
            private: BTreeSet::new(),
            now: T0,
        }
    }

    fn live(&self, m: &Msg) -> bool {
        m.tracked && self.now < m.sent_at + RETENTION_MS
    }

    fn last(&self) -> Option<u64> {
        self.msgs.last().map(|m| m.id)
    }

    /// The receipts a flushed advance of `u` to `p` writes.
    fn plan(&mut self, u: u64, p: Mark) {
        if self.per_message
            && !self.private.contains(&u)
            && let Some(&joined_after) = self.members.get(&u)
        {
            let prev = self.durable.get(&u).map(|m| m.0);
            if prev.is_none_or(|x| x < p.0) {
                let from = match (prev, joined_after) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                let covered: Vec<Msg> = self
                    .msgs
                    .iter()
                    .filter(|m| {
                        self.live(m)
                            && m.sender != u
                            && m.id <= p.0
                            && from.is_none_or(|f| m.id > f)
                    })
                    .copied()
                    .collect();
                if let Some(newest) = covered.iter().map(|m| m.sent_at).max() {
                    for m in &covered {
                        self.bits.entry(m.id).or_default().insert(u);
                    }
                    self.runs
                        .entry(u)
                        .or_default()
                        .push((from, p.0, p.1.max(newest)));
                }
            }
        }
        let d = join(self.durable.get(&u).copied(), p);
        self.durable.insert(u, d);
    }

    fn flush(&mut self) {
        for (u, p) in std::mem::take(&mut self.pending) {
            self.plan(u, p);
        }
    }

    /// One key's buffered advance written (a privacy change flushes the
    /// user's key only).
    fn flush_user(&mut self, u: u64) {
        if let Some(p) = self.pending.remove(&u) {
            self.plan(u, p);
        }
    }

    fn decide_mode(&mut self) {
        let t = u64::from(self.threshold.unwrap_or(self.default_threshold));
        self.per_message = self.members.len() as u64 <= t;
    }

    fn mark(&self, u: u64) -> Option<Mark> {
        match (self.durable.get(&u), self.pending.get(&u)) {
            (Some(&d), Some(&p)) => Some(join(Some(d), p)),
            (d, p) => d.or(p).copied(),
        }
    }

    fn first_read(&self, u: u64, m: u64) -> Option<u64> {
        let view = self.views.get(&(u, m)).copied();
        let run = self.runs.get(&u).and_then(|runs| {
            runs.iter()
                .find(|(from, up_to, _)| m <= *up_to && from.is_none_or(|f| m > f))
                .map(|r| r.2)
        });
        match (view, run) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expected readers of `msg` as `viewer` sees them, and the source.
    fn read_by(&self, msg: &Msg, viewer: u64) -> (Vec<(u64, ReadTime)>, ReceiptSource) {
        let live = self.live(msg);
        let mut out = Vec::new();
        for (&u, &joined_after) in &self.members {
            if u == msg.sender
                || joined_after.is_some_and(|j| msg.id <= j)
                || self.private.contains(&u) && u != viewer
            {
                continue;
            }
            let bit = live && self.bits.get(&msg.id).is_some_and(|b| b.contains(&u));
            let mark_at = self.mark(u).filter(|m| m.0 >= msg.id).map(|m| m.1);
            if !bit && mark_at.is_none() {
                continue;
            }
            let exact = if bit {
                self.first_read(u, msg.id)
            } else {
                None
            };
            let t = match (exact, mark_at) {
                (Some(t), Some(m)) if m < t => ReadTime::NoLaterThan(Timestamp(m)),
                (Some(t), _) => ReadTime::At(Timestamp(t)),
                (None, Some(m)) => ReadTime::NoLaterThan(Timestamp(m)),
                (None, None) => unreachable!("a bit without a time in the model"),
            };
            out.push((u, t));
        }
        let source = if live {
            ReceiptSource::PerMessage
        } else {
            ReceiptSource::Marks
        };
        (out, source)
    }
}

fn check(
    store: &Store,
    model: &Model,
    page_size: usize,
    tl: Timeline,
) -> Result<(), TestCaseError> {
    // Receipt queries are asked as a member; with nobody left, anyone is
    // refused.
    let Some(viewer) = model.members.keys().next().copied().map(UserId) else {
        let refused = store.read_count(tl, UserId(0), MessageId(0));
        // (A thread with no reply yet refuses everyone as not existing.)
        let not_begun = tl.is_thread() && model.msgs.is_empty();
        prop_assert!(
            matches!(refused, Err(readmark::Error::NotMember { .. }))
                || (not_begun && matches!(refused, Err(readmark::Error::UnknownThread { .. }))),
            "{:?}",
            refused
        );
        return Ok(());
    };
    // Another member sees the same minus private readers other than
    // themselves.
    if let Some(&other) = model.members.keys().last().filter(|&&o| o != viewer.0) {
        for msg in &model.msgs {
            let (want, source) = model.read_by(msg, other);
            let got = store
                .read_by(tl, UserId(other), MessageId(msg.id), Page::first(100))
                .unwrap();
            let got: Vec<(u64, ReadTime)> =
                got.readers.iter().map(|r| (r.user.0, r.read_at)).collect();
            prop_assert_eq!(&got, &want, "readers of message {} as {}", msg.id, other);
            let n = store
                .read_count(tl, UserId(other), MessageId(msg.id))
                .unwrap();
            prop_assert_eq!((n.count, n.source), (want.len() as u64, source));
        }
    }
    for msg in &model.msgs {
        let (want, source) = model.read_by(msg, viewer.0);
        let all = store
            .read_by(tl, viewer, MessageId(msg.id), Page::first(100))
            .unwrap();
        let got: Vec<(u64, ReadTime)> = all.readers.iter().map(|r| (r.user.0, r.read_at)).collect();
        prop_assert_eq!(&got, &want, "readers of message {}", msg.id);
        prop_assert_eq!(all.count, want.len() as u64);
        prop_assert_eq!(all.source, source, "source of message {}", msg.id);
        prop_assert_eq!(all.next, None);
        let n = store.read_count(tl, viewer, MessageId(msg.id)).unwrap();
        prop_assert_eq!((n.count, n.source), (want.len() as u64, source));
        // The same readers, page by page.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let p = store
                .read_by(
                    tl,
                    viewer,
                    MessageId(msg.id),
                    Page {
                        after,
                        limit: page_size,
                    },
                )
                .unwrap();
            prop_assert!(p.readers.len() <= page_size);
            paged.extend(p.readers.iter().map(|r| r.user.0));
            match p.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let want_users: Vec<u64> = want.iter().map(|w| w.0).collect();
        prop_assert_eq!(paged, want_users);
    }
    Ok(())
}

/// Runs `ops` against the main timeline of `C` or, with `thread`, against
/// the thread of a root recorded first (by a member who then leaves, so the
/// model starts from the same empty conversation): the model is the same,
/// since a thread's members, slots, threshold and privacy are its
/// conversation's.
fn run(ops: Vec<Op>, page_size: usize, thread: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    let mut store = Store::open(
        dir.path(),
        config(DEFAULT_THRESHOLD).__clock(Timestamp(model.now)),
    )
    .unwrap();
    store.create_conversation(C).unwrap();
    let tl = if thread {
        let poster = UserId(1_000);
        store.add_member(C, poster, Timestamp(model.now)).unwrap();
        store
            .record_message(C, MessageId(0), poster, Timestamp(model.now))
            .unwrap();
        store.remove_member(C, poster).unwrap();
        Timeline::thread(C, MessageId(0))
    } else {
        Timeline::main(C)
    };
    // The thread begins with its first reply: until then, its calls are
    // refused as about a thread that does not exist.
    let mut begun = !thread;
    for op in ops {
        match op {
            Op::Join(u) => {
                let r = store.add_member(C, UserId(u), Timestamp(model.now));
                // A membership change flushes first, even one refused.
                model.flush();
                if model.members.contains_key(&u) {
                    prop_assert!(
                        matches!(r, Err(Error::AlreadyMember { .. })),
                        "expected AlreadyMember, got {:?}",
                        r
                    );
                } else {
                    r.unwrap();
                    model.members.insert(u, model.last());
                    model.durable.remove(&u);
                    model.decide_mode();
                }
            }
            Op::Leave(u) => {
                let r = store.remove_member(C, UserId(u));
                model.flush();
                if model.members.contains_key(&u) {
                    r.unwrap();
                    model.members.remove(&u);
                    model.private.remove(&u);
                    model.durable.remove(&u);
                    model.runs.remove(&u);
                    model.views.retain(|&(v, _), _| v != u);
                    for b in model.bits.values_mut() {
                        b.remove(&u);
                    }
                    model.decide_mode();
                } else {
                    prop_assert!(
                        matches!(r, Err(Error::NotMember { .. })),
                        "expected NotMember, got {:?}",
                        r
                    );
                }
            }
            Op::Send(u, gap) => {
                let id = model.last().map_or(10, |l| l + gap * 10);
                let r = store.record_message(tl, MessageId(id), UserId(u), Timestamp(model.now));
                if model.members.contains_key(&u) {
                    r.unwrap();
                    begun = true;
                    model.msgs.push(Msg {
                        id,
                        sender: u,
                        sent_at: model.now,
                        tracked: model.per_message,
                    });
                    // Sending is an advance of the sender's mark, buffered
                    // like any other.
                    let p = join(model.pending.get(&u).copied(), (id, model.now));
                    model.pending.insert(u, p);
                } else {
                    prop_assert!(
                        matches!(r, Err(Error::NotMember { .. })),
                        "expected NotMember, got {:?}",
                        r
                    );
                }
            }
            Op::Read(u, i, dt) => {
                // Past the newest message (or in an empty conversation):
                // clamped to the newest, or nothing.
                let up_to = match model.msgs.get(i) {
                    Some(m) => m.id,
                    None => model.last().unwrap_or(0) + 5,
                };
                let at = model.now.saturating_add_signed(dt);
                let r = store.mark_read(tl, UserId(u), MessageId(up_to), Timestamp(at));
                if !begun {
                    prop_assert!(matches!(r, Err(Error::UnknownThread { .. })), "{:?}", r);
                } else if model.members.contains_key(&u) {
                    r.unwrap();
                    if let Some(last) = model.last() {
                        let p = join(model.pending.get(&u).copied(), (up_to.min(last), at));
                        model.pending.insert(u, p);
                    }
                } else {
                    prop_assert!(
                        matches!(r, Err(Error::NotMember { .. })),
                        "expected NotMember, got {:?}",
                        r
                    );
                }
            }
            Op::View(u, i, dt) => {
                let Some(msg) = model.msgs.get(i % model.msgs.len().max(1)).copied() else {
                    continue;
                };
                let at = model.now.saturating_add_signed(dt);
                let r = store.mark_viewed(tl, UserId(u), MessageId(msg.id), Timestamp(at));
                let Some(&joined_after) = model.members.get(&u) else {
                    prop_assert!(
                        matches!(r, Err(Error::NotMember { .. })),
                        "expected NotMember, got {:?}",
                        r
                    );
                    continue;
                };
                let recorded = model.per_message
                    && !model.private.contains(&u)
                    && model.live(&msg)
                    && msg.sender != u
                    && joined_after.is_none_or(|j| msg.id > j);
                prop_assert_eq!(r.unwrap(), recorded, "view of {} by {}", msg.id, u);
                if recorded {
                    let at = at.max(msg.sent_at);
                    let t = model.views.entry((u, msg.id)).or_insert(at);
                    *t = (*t).min(at);
                    model.bits.entry(msg.id).or_default().insert(u);
                }
            }
            Op::Threshold(t) => {
                store.set_receipt_threshold(C, t).unwrap();
                model.flush();
                model.threshold = t;
                model.decide_mode();
            }
            Op::Private(u, private) => {
                let r =
                    store.set_receipts_private(UserId(u), PrivacyScope::Conversation(C), private);
                // The user's buffered advance is written first, under the
                // old setting.
                model.flush_user(u);
                if model.members.contains_key(&u) {
                    r.unwrap();
                    if private {
                        model.private.insert(u);
                    } else {
                        model.private.remove(&u);
                    }
                } else {
                    prop_assert!(
                        matches!(r, Err(Error::NotMember { .. })),
                        "expected NotMember, got {:?}",
                        r
                    );
                }
            }
            Op::Flush => {
                store.flush().unwrap();
                model.flush();
            }
            Op::Reopen(threshold) => {
                store.close().unwrap();
                model.flush();
                if let Some(t) = threshold {
                    model.default_threshold = t;
                }
                // The clock from the open on: RocksDB may compact while
                // opening (see the regression test below).
                let config = config(model.default_threshold).__clock(Timestamp(model.now));
                store = Store::open(dir.path(), config).unwrap();
            }
            Op::Tick(ms) => {
                model.now += ms;
                store.__set_clock(Some(Timestamp(model.now)));
            }
            Op::Compact => store.compact().unwrap(),
        }
        check(&store, &model, page_size, tl)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn read_by_matches_model(
        ops in proptest::collection::vec(op(), 1..60),
        page_size in 1usize..4,
    ) {
        run(ops, page_size, false)?;
    }

    /// The same model against a thread's timeline.
    #[test]
    fn read_by_in_a_thread_matches_model(
        ops in proptest::collection::vec(op(), 1..60),
        page_size in 1usize..4,
    ) {
        run(ops, page_size, true)?;
    }
}

/// Post-mortem (this proptest, once in eight runs of the whole suite):
/// the test fixed the store's clock only after `Store::open` returned. A
/// compaction RocksDB started while opening (the reopens had piled up
/// level-0 files) ran the read-time retention filter on today's clock,
/// three years after the test's times, and dropped every read time: a
/// reader's exact time became the mark's "no later than". The clock is now
/// fixed from the open on (`Config::__clock`); this checks that a
/// compaction right at the open keeps them.
#[test]
fn regression_a_compaction_while_opening_judges_by_the_tests_clock() {
    let dir = tempfile::tempdir().unwrap();
    let at = |t| config(DEFAULT_THRESHOLD).__clock(Timestamp(t));
    {
        let store = Store::open(dir.path(), at(T0)).unwrap();
        store.create_conversation(C).unwrap();
        for u in 1..=2 {
            store.add_member(C, UserId(u), Timestamp(T0)).unwrap();
        }
        store
            .record_message(C, MessageId(1), UserId(1), Timestamp(T0))
            .unwrap();
        store
            .mark_read(C, UserId(2), MessageId(1), Timestamp(T0 + 5))
            .unwrap();
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), at(T0 + 10)).unwrap();
    // What a compaction during the open would do, before any other call.
    store.compact().unwrap();
    let r = store
        .read_by(C, UserId(1), MessageId(1), Page::first(10))
        .unwrap();
    assert_eq!(
        r.readers
            .iter()
            .map(|x| (x.user, x.read_at))
            .collect::<Vec<_>>(),
        vec![(UserId(2), ReadTime::At(Timestamp(T0 + 5)))]
    );
}
