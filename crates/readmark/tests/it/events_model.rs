//! Receipt events, private receipts and catch-up against an in-memory
//! model, over random joins, leaves, sends, reads, privacy changes,
//! flushes, catch-ups from saved cursors and reopens; once with every send
//! and read in the conversations' main timelines, once in a thread of each
//! (whose events and states must name it).
//!
//! Checked after the operations that can tell:
//! - every drained event is exactly the model's: one per (conversation,
//!   reader) that advanced since the last drain and is still a member, with
//!   the reader's current mark, and recipients equal to the current
//!   members the policy picks (every other member in a small conversation,
//!   the current authors of the newly covered messages in a larger one,
//!   nobody if the reader is private). So no event reaches a non-member or
//!   reveals a private reader, and every member who should see a change
//!   receives the newest state at the next drain;
//! - `read_count` as any member counts exactly the public covering members
//!   (and the viewer), and a non-member is refused;
//! - `changes_since` from any saved cursor (before or after reopens),
//!   applied to the state the user had when the cursor was taken, gives
//!   the user's current visible state, and lists nothing the user may not
//!   see.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use readmark::{
    Config, ConversationId, Cursor, Error, Event, EventPolicy, MessageId, PrivacyScope, ReadState,
    Recipients, Store, Timeline, Timestamp, UserId,
};

const CONVS: u64 = 2;
const USERS: u64 = 5;
/// Conversations of more members are "large": receipts go to authors.
const SMALL: u32 = 2;

thread_local! {
    /// Whether this case sends and reads in threads (set by `run`).
    static THREADED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Every thread's root (recorded at setup; model ids start at 1).
const ROOT: MessageId = MessageId(0);

/// The timeline conversation `c`'s sends and reads go to.
fn tl(c: u64) -> Timeline {
    if THREADED.get() {
        Timeline::thread(ConversationId(c), ROOT)
    } else {
        Timeline::main(ConversationId(c))
    }
}

/// The thread every event and state must name.
fn expected_thread() -> Option<MessageId> {
    THREADED.get().then_some(ROOT)
}

fn config() -> Config {
    common::manual_config()
        .event_window(Duration::ZERO)
        .event_small_group(SMALL)
        .event_fanout_cap(100)
}

#[derive(Clone, Debug)]
enum Op {
    Join(u64, u64),
    Leave(u64, u64),
    Send(u64, u64),
    /// conversation, user, message index
    Read(u64, u64, usize),
    /// user, conversation (None: everywhere), private
    Private(u64, Option<u64>, bool),
    /// conversation, user, set ("mark unread") or clear
    Flag(u64, u64, bool),
    /// The conversation's own recipient policy (`None`: the size rule).
    Policy(u64, Option<Recipients>),
    Drain,
    Flush,
    /// Save `user`'s snapshot and its cursor.
    TakeCursor(u64),
    /// Catch up from saved cursor `i` with pages of `limit`.
    CatchUp(usize, usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CONVS, 0..USERS).prop_map(|(c, u)| Op::Join(c, u)),
        2 => (0..CONVS, 0..USERS).prop_map(|(c, u)| Op::Leave(c, u)),
        4 => (0..CONVS, 0..USERS).prop_map(|(c, u)| Op::Send(c, u)),
        8 => (0..CONVS, 0..USERS, 0usize..10).prop_map(|(c, u, i)| Op::Read(c, u, i)),
        3 => (0..USERS, proptest::option::of(0..CONVS), any::<bool>())
            .prop_map(|(u, c, p)| Op::Private(u, c, p)),
        2 => (0..CONVS, 0..USERS, any::<bool>()).prop_map(|(c, u, s)| Op::Flag(c, u, s)),
        2 => (0..CONVS, 0..4u8).prop_map(|(c, p)| Op::Policy(c, match p {
            0 => None,
            1 => Some(Recipients::Members),
            2 => Some(Recipients::Authors),
            _ => Some(Recipients::Nobody),
        })),
        3 => Just(Op::Drain),
        2 => Just(Op::Flush),
        3 => (0..USERS).prop_map(Op::TakeCursor),
        3 => (0usize..8, 1usize..4).prop_map(|(i, l)| Op::CatchUp(i, l)),
        1 => Just(Op::Reopen),
    ]
}

/// (conversation, reader) -> (up_to, marked unread), as a user saw it (the
/// flag only ever true for their own).
type Seen = BTreeMap<(u64, u64), (u64, bool)>;

#[derive(Default)]
struct Model {
    /// (conversation, user) -> newest message when they joined
    members: BTreeMap<(u64, u64), Option<u64>>,
    /// conversation -> messages (id, sender)
    msgs: BTreeMap<u64, Vec<(u64, u64)>>,
    next_id: u64,
    marks: BTreeMap<(u64, u64), u64>,
    private_all: BTreeSet<u64>,
    private_here: BTreeSet<(u64, u64)>,
    /// Advances not yet delivered: (conversation, reader) -> start mark.
    pending: BTreeMap<(u64, u64), Option<u64>>,
    /// Saved catch-up points: user, cursor, what the user saw then.
    cursors: Vec<(u64, Cursor, Seen)>,
    /// (conversation, reader, `counter` then) that went private since the
    /// last drain.
    pending_hidden: Vec<(u64, u64, u64)>,
    /// Ticks at every join and every going-private: orders them.
    counter: u64,
    /// (conversation, user) -> `counter` at their join.
    join_index: BTreeMap<(u64, u64), u64>,
    /// The user's memberships (conversation -> join index) as each saved
    /// cursor was taken (same order as `cursors`).
    cursor_members: Vec<BTreeMap<u64, u64>>,
    /// (conversation, reader) -> times they left or went private there:
    /// catch-up may say "forget" only for a pair whose count moved.
    hides: BTreeMap<(u64, u64), u64>,
    /// `hides` as each saved cursor was taken (same order as `cursors`).
    cursor_hides: Vec<BTreeMap<(u64, u64), u64>>,
    /// (conversation, user) -> (set, the mark's up_to when written): the
    /// unread flag, last writer wins (the ops write it in time order).
    flags: BTreeMap<(u64, u64), (bool, Option<u64>)>,
    /// Flag changes not yet delivered, in order.
    pending_flags: Vec<(u64, u64)>,
    /// Time of the next flag write.
    flag_clock: u64,
    /// Conversations' own recipient policies.
    policy: BTreeMap<u64, Recipients>,
}

impl Model {
    fn is_member(&self, c: u64, u: u64) -> bool {
        self.members.contains_key(&(c, u))
    }

    fn members_of(&self, c: u64) -> Vec<u64> {
        self.members
            .keys()
            .filter(|k| k.0 == c)
            .map(|k| k.1)
            .collect()
    }

    fn private(&self, c: u64, u: u64) -> bool {
        self.private_all.contains(&u) || self.private_here.contains(&(c, u))
    }

    /// Who receives `c`'s events: its own policy, or by size.
    fn recipients(&self, c: u64) -> Recipients {
        match self.policy.get(&c) {
            Some(&p) => p,
            None if self.members_of(c).len() <= SMALL as usize => Recipients::Members,
            None => Recipients::Authors,
        }
    }

    /// Whether members of `c` see each other's marks.
    fn shows(&self, c: u64) -> bool {
        self.recipients(c) == Recipients::Members
    }

    /// The event the store should deliver for a pending pair, if any.
    fn expected_event(&self, (c, r): (u64, u64), from: Option<u64>) -> Option<(u64, Vec<u64>)> {
        if !self.is_member(c, r) {
            return None;
        }
        let up_to = *self.marks.get(&(c, r))?;
        let recipients = if self.private(c, r) || self.recipients(c) == Recipients::Nobody {
            Vec::new()
        } else if self.shows(c) {
            self.members_of(c).into_iter().filter(|&m| m != r).collect()
        } else {
            // Nothing from before the reader joined.
            let from = match (from, self.members[&(c, r)]) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let authors: BTreeSet<u64> = self.msgs[&c]
                .iter()
                .filter(|&&(id, s)| from.is_none_or(|f| id > f) && id <= up_to && s != r)
                .map(|&(_, s)| s)
                .filter(|&s| self.is_member(c, s))
                .collect();
            authors.into_iter().collect()
        };
        Some((up_to, recipients))
    }

    /// What `user` may see now: their own marks, and other members' public
    /// marks in small conversations.
    /// Whether `u` has `c` marked unread now.
    fn marked_unread(&self, c: u64, u: u64) -> bool {
        match self.flags.get(&(c, u)) {
            Some(&(true, pos)) => match self.marks.get(&(c, u)) {
                None => true,
                Some(&m) => pos.is_some_and(|p| p >= m),
            },
            _ => false,
        }
    }

    fn visible(&self, user: u64) -> Seen {
        let mut out = BTreeMap::new();
        for c in 0..CONVS {
            if !self.is_member(c, user) {
                continue;
            }
            for r in self.members_of(c) {
                let shown = r == user || self.shows(c) && !self.private(c, r);
                if let (true, Some(&m)) = (shown, self.marks.get(&(c, r))) {
                    out.insert((c, r), (m, r == user && self.marked_unread(c, r)));
                }
            }
        }
        out
    }
}

/// `user`'s memberships: conversation -> join index.
fn memberships(model: &Model, user: u64) -> BTreeMap<u64, u64> {
    model
        .join_index
        .iter()
        .filter(|(k, _)| k.1 == user)
        .map(|(k, &i)| (k.0, i))
        .collect()
}

fn states_map(states: &[ReadState]) -> Seen {
    states
        .iter()
        .map(|s| {
            assert_eq!(s.thread, expected_thread(), "{s:?}");
            ((s.conversation.0, s.reader.0), (s.up_to.0, s.marked_unread))
        })
        .collect()
}

fn check_drain(events: Vec<Event>, model: &mut Model) -> Result<(), TestCaseError> {
    let mut got: BTreeMap<(u64, u64), (u64, Vec<u64>)> = BTreeMap::new();
    let mut got_hidden = Vec::new();
    let mut got_flags = Vec::new();
    for e in events {
        let e = match e {
            Event::Receipt(e) => {
                prop_assert_eq!(e.thread, expected_thread(), "{:?}", e);
                e
            }
            Event::UnreadFlag {
                conversation,
                thread,
                reader,
                marked_unread,
            } => {
                prop_assert_eq!(thread, expected_thread());
                got_flags.push((conversation.0, reader.0, marked_unread));
                continue;
            }
            Event::Hidden {
                conversation,
                reader,
                recipients,
            } => {
                let r: Vec<u64> = recipients.iter().map(|u| u.0).collect();
                got_hidden.push((conversation.0, reader.0, r));
                continue;
            }
            e => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
        };
        let key = (e.conversation.0, e.reader.0);
        let recipients = e.recipients.iter().map(|u| u.0).collect();
        prop_assert!(
            got.insert(key, (e.up_to.0, recipients)).is_none(),
            "two events for {:?}",
            key
        );
    }
    let mut want = BTreeMap::new();
    for (&key, &from) in &model.pending {
        if let Some(e) = model.expected_event(key, from) {
            want.insert(key, e);
        }
    }
    model.pending.clear();
    prop_assert_eq!(got, want);
    // "Forget this reader" notices: to the other current members of a
    // small conversation, if the reader is still a private member.
    let mut want_hidden = Vec::new();
    for (c, r, when) in std::mem::take(&mut model.pending_hidden) {
        if model.is_member(c, r) && model.private(c, r) && model.shows(c) {
            // Only those who were members then: a later joiner never saw
            // the reader's receipts.
            let others = model
                .members_of(c)
                .into_iter()
                .filter(|&m| m != r && model.join_index[&(c, m)] < when)
                .collect();
            want_hidden.push((c, r, others));
        }
    }
    got_hidden.sort();
    want_hidden.sort();
    prop_assert_eq!(got_hidden, want_hidden);
    // Flag notices: one per change, to the owner, with the flag in force
    // at delivery; none for a member who left since.
    let mut want_flags: Vec<(u64, u64, bool)> = std::mem::take(&mut model.pending_flags)
        .into_iter()
        .filter(|&(c, u)| model.is_member(c, u))
        .map(|(c, u)| (c, u, model.marked_unread(c, u)))
        .collect();
    got_flags.sort();
    want_flags.sort();
    prop_assert_eq!(got_flags, want_flags);
    Ok(())
}

fn check_queries(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    for c in 0..CONVS {
        let members = model.members_of(c);
        // A thread with no reply yet does not exist: refused as such.
        let not_begun = THREADED.get() && model.msgs[&c].is_empty();
        let refused = |r: Option<&Error>| {
            matches!(r, Some(Error::NotMember { .. }))
                || (not_begun && matches!(r, Some(Error::UnknownThread { .. })))
        };
        let Some(&viewer) = members.first() else {
            let r = store.read_count(tl(c), UserId(0), MessageId(0));
            prop_assert!(refused(r.as_ref().err()), "{:?}", r);
            continue;
        };
        for &(id, sender) in &model.msgs[&c] {
            let want = members
                .iter()
                .filter(|&&m| {
                    m != sender
                        && model.members[&(c, m)].is_none_or(|j| id > j)
                        && model.marks.get(&(c, m)).is_some_and(|&x| x >= id)
                        && (m == viewer || !model.private(c, m))
                })
                .count() as u64;
            let got = store
                .read_count(tl(c), UserId(viewer), MessageId(id))
                .unwrap();
            prop_assert_eq!(
                got.count,
                want,
                "read_count of ({}, {}) as {}",
                c,
                id,
                viewer
            );
        }
        let outsider = (0..USERS).find(|u| !model.is_member(c, *u));
        if let Some(o) = outsider {
            let r = store.marks(tl(c), UserId(o));
            prop_assert!(refused(r.as_ref().err()), "{:?}", r);
        }
    }
    Ok(())
}

/// Runs `ops` on one open store; returns at a `Reopen` with the rest.
fn run_epoch<'o>(
    store: &Store,
    model: &mut Model,
    mut ops: &'o [Op],
) -> Result<&'o [Op], TestCaseError> {
    let sub = store.subscribe();
    while let Some((op, rest)) = ops.split_first() {
        ops = rest;
        match *op {
            Op::Join(c, u) => {
                let r = store.add_member(ConversationId(c), UserId(u), Timestamp(1));
                if model.is_member(c, u) {
                    prop_assert!(matches!(r, Err(Error::AlreadyMember { .. })), "{:?}", r);
                } else {
                    r.unwrap();
                    let last = model.msgs[&c].last().map(|m| m.0);
                    model.members.insert((c, u), last);
                    model.counter += 1;
                    model.join_index.insert((c, u), model.counter);
                }
            }
            Op::Leave(c, u) => {
                let r = store.remove_member(ConversationId(c), UserId(u));
                if model.is_member(c, u) {
                    r.unwrap();
                    model.members.remove(&(c, u));
                    model.marks.remove(&(c, u));
                    model.flags.remove(&(c, u));
                    model.private_here.remove(&(c, u));
                    *model.hides.entry((c, u)).or_default() += 1;
                    model.join_index.remove(&(c, u));
                } else {
                    prop_assert!(matches!(r, Err(Error::NotMember { .. })), "{:?}", r);
                }
            }
            Op::Send(c, u) => {
                if !model.is_member(c, u) {
                    continue;
                }
                model.next_id += 1;
                let id = model.next_id;
                store
                    .record_message(tl(c), MessageId(id), UserId(u), Timestamp(id))
                    .unwrap();
                let msgs = model.msgs.get_mut(&c).expect("conversation");
                let last = msgs.last().map(|m| m.0);
                msgs.push((id, u));
                let before = model.marks.get(&(c, u)).copied();
                model.marks.insert((c, u), id);
                // Sending read what the sender had not: an event, like a
                // read. A send that covers only itself is none (nor do
                // messages from before the sender joined count).
                let joined_after = model.members[&(c, u)];
                let seen = match (before, joined_after) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                if last.is_some_and(|l| seen.is_none_or(|s| s < l)) {
                    let p = model.pending.entry((c, u)).or_insert(before);
                    *p = match (*p, before) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        _ => None,
                    };
                }
            }
            Op::Read(c, u, i) => {
                let msgs = &model.msgs[&c];
                if msgs.is_empty() {
                    continue;
                }
                let id = msgs[i % msgs.len()].0;
                let r = store.mark_read(tl(c), UserId(u), MessageId(id), Timestamp(id + 1));
                if !model.is_member(c, u) {
                    prop_assert!(matches!(r, Err(Error::NotMember { .. })), "{:?}", r);
                    continue;
                }
                r.unwrap();
                let before = model.marks.get(&(c, u)).copied();
                if before.is_some_and(|b| b >= id) {
                    continue;
                }
                model.marks.insert((c, u), id);
                let p = model.pending.entry((c, u)).or_insert(before);
                *p = match (*p, before) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                };
            }
            Op::Private(u, scope, private) => {
                let scope_arg = match scope {
                    Some(c) => PrivacyScope::Conversation(ConversationId(c)),
                    None => PrivacyScope::Everywhere,
                };
                let r = store.set_receipts_private(UserId(u), scope_arg, private);
                let was: Vec<(u64, bool)> = (0..CONVS)
                    .filter(|&c| model.is_member(c, u))
                    .map(|c| (c, model.private(c, u)))
                    .collect();
                match scope {
                    Some(c) if !model.is_member(c, u) => {
                        prop_assert!(matches!(r, Err(Error::NotMember { .. })), "{:?}", r);
                    }
                    Some(c) => {
                        r.unwrap();
                        if private {
                            model.private_here.insert((c, u));
                        } else {
                            model.private_here.remove(&(c, u));
                        }
                    }
                    None => {
                        r.unwrap();
                        if private {
                            model.private_all.insert(u);
                        } else {
                            model.private_all.remove(&u);
                        }
                    }
                }
                for (c, before) in was {
                    // Going public shows the mark: an event (from nothing
                    // read, as far as the others know).
                    if before && !model.private(c, u) && model.marks.contains_key(&(c, u)) {
                        model.pending.insert((c, u), None);
                    }
                    if !before && model.private(c, u) {
                        model.counter += 1;
                        model.pending_hidden.push((c, u, model.counter));
                        *model.hides.entry((c, u)).or_default() += 1;
                    }
                }
            }
            Op::Policy(c, recipients) => {
                let policy = match recipients {
                    Some(r) => EventPolicy::new().recipients(r),
                    None => EventPolicy::new(),
                };
                store.set_event_policy(ConversationId(c), policy).unwrap();
                match recipients {
                    Some(r) => model.policy.insert(c, r),
                    None => model.policy.remove(&c),
                };
            }
            Op::Flag(c, u, set) => {
                // (A thread's flag once it exists.)
                if THREADED.get() && model.msgs[&c].is_empty() {
                    continue;
                }
                model.flag_clock += 1;
                let t = Timestamp(model.flag_clock);
                let (cid, uid) = (tl(c), UserId(u));
                let r = if set {
                    store.set_unread_flag(cid, uid, t)
                } else {
                    store.clear_unread_flag(cid, uid, t)
                };
                if model.is_member(c, u) {
                    r.unwrap();
                    let pos = model.marks.get(&(c, u)).copied();
                    model.flags.insert((c, u), (set, pos));
                    model.pending_flags.push((c, u));
                } else {
                    prop_assert!(matches!(r, Err(Error::NotMember { .. })), "{:?}", r);
                }
            }
            Op::Drain => {
                check_drain(sub.drain().unwrap(), model)?;
                check_queries(store, model)?;
            }
            Op::Flush => store.flush().unwrap(),
            Op::TakeCursor(u) => {
                let snap = store.snapshot(UserId(u)).unwrap();
                let seen = states_map(&snap.states);
                prop_assert_eq!(&seen, &model.visible(u), "snapshot of {}", u);
                model.cursors.push((u, snap.cursor, seen));
                model.cursor_hides.push(model.hides.clone());
                model.cursor_members.push(memberships(model, u));
            }
            Op::CatchUp(i, limit) => {
                if model.cursors.is_empty() {
                    continue;
                }
                let i = i % model.cursors.len();
                let (user, cursor, mut seen) = model.cursors[i].clone();
                let hides_then = model.cursor_hides[i].clone();
                // A client drops what it had of a conversation it left
                // (even if it joined again since: that is a new start).
                let members_then = model.cursor_members[i].clone();
                let members_now = memberships(model, user);
                seen.retain(|(c, _), _| members_then.get(c) == members_now.get(c));
                // Changes reach the log when marks are flushed.
                store.flush().unwrap();
                let (states, hidden, next) =
                    common::catch_up_with_hidden(store, UserId(user), cursor, limit);
                let now = model.visible(user);
                for (c, r) in &hidden {
                    let key = (c.0, r.0);
                    prop_assert!(!now.contains_key(&key), "{:?} hidden but visible", key);
                    // Nothing else may say "forget": a private reader's
                    // reads must not even show as activity.
                    prop_assert_ne!(
                        model.hides.get(&key),
                        hides_then.get(&key),
                        "{:?} hidden though it neither left nor went private",
                        key
                    );
                    seen.remove(&key);
                }
                for s in &states {
                    let key = (s.conversation.0, s.reader.0);
                    prop_assert_eq!(
                        now.get(&key),
                        Some(&(s.up_to.0, s.marked_unread)),
                        "listed {:?} to {}",
                        key,
                        user
                    );
                    seen.insert(key, (s.up_to.0, s.marked_unread));
                }
                for (key, m) in &now {
                    prop_assert_eq!(
                        seen.get(key),
                        Some(m),
                        "{:?} missed by catch-up of {}",
                        key,
                        user
                    );
                }
                // What the client shows: its old view with the changes
                // applied and the hidden pairs removed, less what it drops
                // itself (conversations it left, other members' receipts
                // where the size rule shows none) equals what it may see.
                seen.retain(|&(c, r), _| model.is_member(c, user) && (r == user || model.shows(c)));
                prop_assert_eq!(&seen, &now, "client view of {} after catch-up", user);
                model.cursors.push((user, next, seen));
                model.cursor_hides.push(model.hides.clone());
                model.cursor_members.push(members_now);
                if model.cursors.len() > 8 {
                    model.cursors.remove(0);
                    model.cursor_hides.remove(0);
                    model.cursor_members.remove(0);
                }
            }
            Op::Reopen => break,
        }
    }
    check_drain(sub.drain().unwrap(), model)?;
    check_queries(store, model)?;
    Ok(ops)
}

fn run(ops: &[Op], threaded: bool) -> Result<(), TestCaseError> {
    THREADED.set(threaded);
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let store = Store::open(dir.path(), config()).unwrap();
    for c in 0..CONVS {
        let cid = ConversationId(c);
        store.create_conversation(cid).unwrap();
        model.msgs.insert(c, Vec::new());
        if threaded {
            // The root, from a member who leaves before the model starts.
            let poster = UserId(1_000);
            store.add_member(cid, poster, Timestamp(0)).unwrap();
            store
                .record_message(cid, ROOT, poster, Timestamp(0))
                .unwrap();
            store.remove_member(cid, poster).unwrap();
        }
    }
    let mut rest = run_epoch(&store, &mut model, ops)?;
    store.close().unwrap();
    while !rest.is_empty() {
        let store = Store::open(dir.path(), config()).unwrap();
        rest = run_epoch(&store, &mut model, rest)?;
        store.close().unwrap();
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn events_privacy_and_catch_up_match_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops, false)?;
    }

    #[test]
    fn events_privacy_and_catch_up_in_threads_match_model(
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(&ops, true)?;
    }
}
