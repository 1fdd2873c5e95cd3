//! Unread counts (and "read by" from marks) against a model that counts
//! messages one by one, in main timelines and threads, across deletes,
//! late joins, leaves, mark-unread and reopen.

use crate::common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use readmark::{
    ConversationId, Error, MessageId, MessageKind, MessageOptions, Page, Store, Timeline,
    Timestamp, UserId,
};

const USERS: u64 = 5;
const CONVS: u64 = 2;

/// Which timeline an op is about: `None` the main one, `Some(p)` the
/// `p`-th thread (modulo how many exist; the main one while none does).
type Pick = Option<usize>;

#[derive(Clone, Debug)]
enum Op {
    Join {
        conv: u64,
        user: u64,
    },
    Leave {
        conv: u64,
        user: u64,
    },
    Send {
        conv: u64,
        user: u64,
        gap: u64,
        /// `MessageKind::System`: never counted as unread.
        system: bool,
        /// Users mentioned by name (a bit each, members or not).
        mentions: u8,
        everyone: bool,
        /// A reply in the thread of the `p`-th main-timeline message
        /// (begun by it if it is the first).
        reply_to: Option<usize>,
    },
    Delete {
        conv: u64,
        pick: usize,
        timeline: Pick,
    },
    /// Read up to the `pick`-th message (or an id past every message).
    Read {
        conv: u64,
        user: u64,
        pick: usize,
        past_end: bool,
        timeline: Pick,
    },
    Flag {
        conv: u64,
        user: u64,
        set: bool,
        timeline: Pick,
    },
    Reopen,
}

fn pick() -> impl Strategy<Value = Pick> {
    proptest::option::weighted(0.4, any::<usize>())
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CONVS;
    let u = 0..USERS;
    prop_oneof![
        3 => (c.clone(), u.clone()).prop_map(|(conv, user)| Op::Join { conv, user }),
        1 => (c.clone(), u.clone()).prop_map(|(conv, user)| Op::Leave { conv, user }),
        6 => (
            (c.clone(), u.clone(), 1u64..4),
            (proptest::bool::weighted(0.25), any::<u8>(), proptest::bool::weighted(0.15)),
            proptest::option::weighted(0.35, any::<usize>()),
        )
            .prop_map(|((conv, user, gap), (system, mentions, everyone), reply_to)| Op::Send {
                conv,
                user,
                gap,
                system,
                // Mentions in about one message in three.
                mentions: if mentions % 3 == 0 { mentions } else { 0 },
                everyone,
                reply_to,
            }),
        2 => (c.clone(), any::<usize>(), pick())
            .prop_map(|(conv, pick, timeline)| Op::Delete { conv, pick, timeline }),
        6 => (c.clone(), u.clone(), any::<usize>(), proptest::bool::weighted(0.1), pick())
            .prop_map(|(conv, user, pick, past_end, timeline)| Op::Read { conv, user, pick, past_end, timeline }),
        2 => (c.clone(), u.clone(), any::<bool>(), pick())
            .prop_map(|(conv, user, set, timeline)| Op::Flag { conv, user, set, timeline }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default, Debug)]
struct Msg {
    id: u64,
    sender: u64,
    deleted: bool,
    system: bool,
    mentions: Vec<u64>,
    everyone: bool,
}

/// One timeline: the main one or a thread.
#[derive(Default, Debug)]
struct Tl {
    msgs: Vec<Msg>,
    /// user -> (up_to, at)
    marks: BTreeMap<u64, (u64, u64)>,
    /// user -> (time, set, pos)
    flags: BTreeMap<u64, (u64, bool, Option<u64>)>,
}

#[derive(Default, Debug)]
struct Conv {
    main: Tl,
    /// root -> thread
    threads: BTreeMap<u64, Tl>,
    /// user -> joined_after (newest message id of any timeline at join)
    members: BTreeMap<u64, Option<u64>>,
    /// Newest message id of any timeline.
    newest: Option<u64>,
}

impl Conv {
    /// The timeline an op picks, as the store names it, and the model's.
    fn pick(&mut self, conv: u64, p: Pick) -> (Timeline, &mut Tl) {
        let c = ConversationId(conv);
        match p {
            Some(p) if !self.threads.is_empty() => {
                let root = *self.threads.keys().nth(p % self.threads.len()).unwrap();
                (
                    Timeline::thread(c, MessageId(root)),
                    self.threads.get_mut(&root).unwrap(),
                )
            }
            _ => (Timeline::main(c), &mut self.main),
        }
    }

    fn timelines(&self, conv: u64) -> Vec<(Timeline, &Tl)> {
        let c = ConversationId(conv);
        std::iter::once((Timeline::main(c), &self.main))
            .chain(
                self.threads
                    .iter()
                    .map(|(&r, t)| (Timeline::thread(c, MessageId(r)), t)),
            )
            .collect()
    }
}

impl Tl {
    fn last(&self) -> Option<u64> {
        self.msgs.last().map(|m| m.id)
    }

    fn advance(&mut self, user: u64, up_to: u64, at: u64) {
        let e = self.marks.entry(user).or_insert((up_to, at));
        if up_to > e.0 || (up_to == e.0 && at < e.1) {
            *e = (up_to, at);
        }
    }

    /// Counted one message at a time, as a user would: (count, marked
    /// unread, mentions).
    fn unread(&self, user: u64, joined_after: Option<u64>) -> (u64, bool, u64) {
        let mark = self.marks.get(&user).map(|m| m.0);
        let seen = match (mark, joined_after) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let unread: Vec<&Msg> = self
            .msgs
            .iter()
            .filter(|m| !m.deleted && !m.system && seen.is_none_or(|p| m.id > p))
            .collect();
        let count = unread.len() as u64;
        let mentions = unread
            .iter()
            .filter(|m| m.mentions.contains(&user) || m.everyone && m.sender != user)
            .count() as u64;
        let marked_unread = match self.flags.get(&user) {
            Some(&(_, true, pos)) => match mark {
                None => true,
                Some(up) => pos.is_some_and(|p| p >= up),
            },
            _ => false,
        };
        (count, marked_unread, mentions)
    }

    /// Members when the message was recorded (joined before it) whose mark
    /// covers it, its sender excepted.
    fn read_by_count(&self, msg: &Msg, members: &BTreeMap<u64, Option<u64>>) -> u64 {
        members
            .iter()
            .filter(|&(&u, joined_after)| {
                u != msg.sender
                    && joined_after.is_none_or(|j| msg.id > j)
                    && self.marks.get(&u).is_some_and(|m| m.0 >= msg.id)
            })
            .count() as u64
    }
}

fn check(store: &Store, model: &BTreeMap<u64, Conv>) -> Result<(), TestCaseError> {
    for user in 0..USERS {
        let mut expected_all = Vec::new();
        for (&c, conv) in model {
            let Some(&joined_after) = conv.members.get(&user) else {
                for (t, _) in conv.timelines(c) {
                    let got = store.unread_count(t, UserId(user));
                    let not_member = matches!(got, Err(Error::NotMember { conversation, .. }) if conversation == ConversationId(c));
                    prop_assert!(not_member, "{:?}", got);
                }
                continue;
            };
            let mut total = (0, false, 0);
            let mut unread_threads = Vec::new();
            for (t, tl) in conv.timelines(c) {
                let want = tl.unread(user, joined_after);
                let got = store.unread_count(t, UserId(user)).unwrap();
                prop_assert_eq!(
                    (got.count, got.marked_unread, got.mentions),
                    want,
                    "user {} timeline {}",
                    user,
                    t
                );
                total = (total.0 + want.0, total.1 || want.1, total.2 + want.2);
                if let Some(root) = t.root().filter(|_| want.0 > 0 || want.1) {
                    unread_threads.push((root, want));
                }
            }
            expected_all.push((ConversationId(c), conv.main.unread(user, joined_after)));
            let got: Vec<(MessageId, (u64, bool, u64))> = store
                .unread_threads(ConversationId(c), UserId(user))
                .unwrap()
                .into_iter()
                .map(|t| {
                    (
                        t.root,
                        (t.unread.count, t.unread.marked_unread, t.unread.mentions),
                    )
                })
                .collect();
            prop_assert_eq!(got, unread_threads);
            let got = store.unread_total(ConversationId(c), UserId(user)).unwrap();
            prop_assert_eq!((got.count, got.marked_unread, got.mentions), total);
        }
        let all: Vec<(ConversationId, (u64, bool, u64))> = store
            .unread_counts(UserId(user))
            .unwrap()
            .into_iter()
            .map(|(c, u)| (c, (u.count, u.marked_unread, u.mentions)))
            .collect();
        prop_assert_eq!(all, expected_all);
    }
    for (&c, conv) in model {
        prop_assert_eq!(
            store.member_count(ConversationId(c)).unwrap(),
            conv.members.len() as u64
        );
        let roots: Vec<MessageId> = conv.threads.keys().map(|&r| MessageId(r)).collect();
        prop_assert_eq!(store.threads(ConversationId(c)).unwrap(), roots);
        let Some(viewer) = conv.members.keys().next().copied().map(UserId) else {
            continue;
        };
        for (t, tl) in conv.timelines(c) {
            for msg in &tl.msgs {
                let rb = store
                    .read_by(t, viewer, MessageId(msg.id), Page::first(2))
                    .unwrap();
                prop_assert_eq!(
                    rb.count,
                    tl.read_by_count(msg, &conv.members),
                    "{} message {}",
                    t,
                    msg.id
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn unread_counts_match_model(ops in proptest::collection::vec(op(), 1..70)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Some(Store::open(dir.path(), common::small_config()).unwrap());
        let mut model: BTreeMap<u64, Conv> = BTreeMap::new();
        for c in 0..CONVS {
            store.as_ref().unwrap().create_conversation(ConversationId(c)).unwrap();
            model.insert(c, Conv::default());
        }
        let mut clock = 1u64;
        for op in ops {
            clock += 1;
            let s = store.as_ref().unwrap();
            match op {
                Op::Join { conv, user } => {
                    let m = model.get_mut(&conv).unwrap();
                    let r = s.add_member(ConversationId(conv), UserId(user), Timestamp(clock));
                    if m.members.contains_key(&user) {
                        let already = matches!(r, Err(Error::AlreadyMember { .. }));
                        prop_assert!(already);
                    } else {
                        r.unwrap();
                        m.members.insert(user, m.newest);
                    }
                }
                Op::Leave { conv, user } => {
                    let m = model.get_mut(&conv).unwrap();
                    let r = s.remove_member(ConversationId(conv), UserId(user));
                    if m.members.remove(&user).is_some() {
                        r.unwrap();
                        for tl in std::iter::once(&mut m.main).chain(m.threads.values_mut()) {
                            tl.marks.remove(&user);
                            tl.flags.remove(&user);
                        }
                    } else {
                        let not_member = matches!(r, Err(Error::NotMember { .. }));
                        prop_assert!(not_member);
                    }
                }
                Op::Send { conv, user, gap, system, mentions, everyone, reply_to } => {
                    let m = model.get_mut(&conv).unwrap();
                    let id = m.newest.unwrap_or(0) + gap;
                    let root = reply_to
                        .filter(|_| !m.main.msgs.is_empty())
                        .map(|p| m.main.msgs[p % m.main.msgs.len()].id);
                    let timeline = match root {
                        Some(r) => Timeline::thread(ConversationId(conv), MessageId(r)),
                        None => Timeline::main(ConversationId(conv)),
                    };
                    let kind = if system { MessageKind::System } else { MessageKind::Regular };
                    let r = s.record_message_with(
                        timeline,
                        MessageId(id),
                        UserId(user),
                        Timestamp(clock),
                        &{
                            let named = (0..8).filter(|b| mentions & (1 << b) != 0);
                            let o = MessageOptions::new()
                                .kind(kind)
                                .mention(named.clone().map(UserId));
                            if everyone { o.mention_everyone() } else { o }
                        },
                    );
                    if m.members.contains_key(&user) {
                        r.unwrap();
                        let named = (0..8u64).filter(|b| mentions & (1 << b) != 0 && *b != user);
                        let tl = match root {
                            Some(r) => m.threads.entry(r).or_default(),
                            None => &mut m.main,
                        };
                        tl.msgs.push(Msg {
                            id,
                            sender: user,
                            deleted: false,
                            system,
                            mentions: named.collect(),
                            everyone,
                        });
                        tl.advance(user, id, clock);
                        m.newest = Some(id);
                    } else {
                        let not_member = matches!(r, Err(Error::NotMember { .. }));
                        prop_assert!(not_member);
                    }
                }
                Op::Delete { conv, pick, timeline } => {
                    let (t, tl) = model.get_mut(&conv).unwrap().pick(conv, timeline);
                    if !tl.msgs.is_empty() {
                        let i = pick % tl.msgs.len();
                        s.delete_message(t, MessageId(tl.msgs[i].id)).unwrap();
                        tl.msgs[i].deleted = true;
                    }
                }
                Op::Read { conv, user, pick, past_end, timeline } => {
                    let m = model.get_mut(&conv).unwrap();
                    let member = m.members.contains_key(&user);
                    let (t, tl) = m.pick(conv, timeline);
                    let id = if past_end || tl.msgs.is_empty() {
                        tl.last().unwrap_or(0) + 1
                    } else {
                        tl.msgs[pick % tl.msgs.len()].id
                    };
                    let r = s.mark_read(t, UserId(user), MessageId(id), Timestamp(clock));
                    if member {
                        r.unwrap();
                        // Past the newest message: clamped to it (or
                        // nothing, with no message yet).
                        if let Some(last) = tl.last() {
                            tl.advance(user, id.min(last), clock);
                        }
                    } else {
                        let not_member = matches!(r, Err(Error::NotMember { .. }));
                        prop_assert!(not_member);
                    }
                }
                Op::Flag { conv, user, set, timeline } => {
                    let m = model.get_mut(&conv).unwrap();
                    let member = m.members.contains_key(&user);
                    let (t, tl) = m.pick(conv, timeline);
                    let (u, at) = (UserId(user), Timestamp(clock));
                    let r = if set { s.set_unread_flag(t, u, at) } else { s.clear_unread_flag(t, u, at) };
                    if member {
                        r.unwrap();
                        let pos = tl.marks.get(&user).map(|x| x.0);
                        tl.flags.insert(user, (clock, set, pos));
                    } else {
                        let not_member = matches!(r, Err(Error::NotMember { .. }));
                        prop_assert!(not_member);
                    }
                }
                Op::Reopen => {
                    store.take().unwrap().close().unwrap();
                    store = Some(Store::open(dir.path(), common::small_config()).unwrap());
                }
            }
            check(store.as_ref().unwrap(), &model)?;
        }
        // The deletions index and its count agree with the records
        // (deleted or uncounted), as `verify` checks them.
        store.take().unwrap().close().unwrap();
        let report = readmark::verify(dir.path()).unwrap();
        prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// System messages (joins, edits, notices) are ordered and readable but
/// never unread, also once deleted, and a read past them counts the
/// regular ones only.
#[test]
fn system_messages_are_never_unread() {
    let (dir, s) = common::temp_store();
    let c = ConversationId(1);
    s.create_conversation(c).unwrap();
    for u in 1..=2 {
        s.add_member(c, UserId(u), Timestamp(0)).unwrap();
    }
    let system = MessageOptions::new().kind(MessageKind::System);
    s.record_message(c, MessageId(1), UserId(1), Timestamp(1))
        .unwrap();
    s.record_message_with(c, MessageId(2), UserId(1), Timestamp(2), &system)
        .unwrap();
    s.record_message(c, MessageId(3), UserId(1), Timestamp(3))
        .unwrap();
    s.record_message_with(c, MessageId(4), UserId(1), Timestamp(4), &system)
        .unwrap();
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().count, 2);
    s.mark_read(c, UserId(2), MessageId(2), Timestamp(5))
        .unwrap();
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().count, 1);
    // Deleting one changes nothing; deleting a regular one does.
    s.delete_message(c, MessageId(4)).unwrap();
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().count, 1);
    s.delete_message(c, MessageId(3)).unwrap();
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().count, 0);
    // A system message is still read like any other.
    s.mark_read(c, UserId(2), MessageId(4), Timestamp(6))
        .unwrap();
    assert_eq!(s.mark(c, UserId(2)).unwrap().unwrap().up_to, MessageId(4));
    let rb = s
        .read_by(c, UserId(1), MessageId(2), Page::first(10))
        .unwrap();
    assert_eq!(rb.count, 1);
    s.close().unwrap();
    let report = readmark::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn late_joiner_sees_no_history_as_unread() {
    let (_d, s) = common::temp_store();
    let c = ConversationId(1);
    s.create_conversation(c).unwrap();
    s.add_member(c, UserId(1), Timestamp(0)).unwrap();
    for m in 1..=100 {
        s.record_message(c, MessageId(m), UserId(1), Timestamp(m))
            .unwrap();
    }
    s.add_member(c, UserId(2), Timestamp(200)).unwrap();
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().count, 0);
    s.record_message(c, MessageId(101), UserId(1), Timestamp(201))
        .unwrap();
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().count, 1);
}

#[test]
fn deleting_unread_and_read_messages() {
    let (_d, s) = common::temp_store();
    let c = ConversationId(1);
    s.create_conversation(c).unwrap();
    s.add_member(c, UserId(1), Timestamp(0)).unwrap();
    s.add_member(c, UserId(2), Timestamp(0)).unwrap();
    for m in [10, 20, 30, 40] {
        s.record_message(c, MessageId(m), UserId(1), Timestamp(m))
            .unwrap();
    }
    s.mark_read(c, UserId(2), MessageId(20), Timestamp(50))
        .unwrap();
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().count, 2);
    s.delete_message(c, MessageId(10)).unwrap(); // already read: no change
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().count, 2);
    s.delete_message(c, MessageId(30)).unwrap();
    s.delete_message(c, MessageId(30)).unwrap(); // idempotent
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().count, 1);
    // A mark that points at a deleted message still counts from there.
    s.mark_read(c, UserId(2), MessageId(30), Timestamp(60))
        .unwrap();
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().count, 1);
}

/// Post-mortem (shrunk by `unread_counts_match_model`): a message naming a
/// member and also everyone was counted as two mentions; a message is one
/// mention however it names you.
#[test]
fn regression_a_message_naming_you_and_everyone_is_one_mention() {
    let (_d, s) = common::temp_store();
    let c = ConversationId(0);
    s.create_conversation(c).unwrap();
    for u in [2, 0] {
        s.add_member(c, UserId(u), Timestamp(0)).unwrap();
    }
    let both = MessageOptions::new()
        .mention([UserId(0), UserId(1), UserId(2)])
        .mention_everyone();
    s.record_message_with(c, MessageId(1), UserId(2), Timestamp(1), &both)
        .unwrap();
    let u = s.unread_count(c, UserId(0)).unwrap();
    assert_eq!((u.count, u.mentions), (1, 1));
    // The sender's own "@everyone" is no mention of theirs.
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().mentions, 0);
}

/// Mentions stay exact across what moves the read position: a late join
/// does not inherit earlier mentions, a read clears them, "mark unread"
/// brings none back, deleting the message drops its mention.
#[test]
fn mentions_follow_the_read_position() {
    let (dir, s) = common::temp_store();
    let c = ConversationId(1);
    s.create_conversation(c).unwrap();
    for u in 1..=2 {
        s.add_member(c, UserId(u), Timestamp(0)).unwrap();
    }
    let to = |u: u64| MessageOptions::new().mention([UserId(u)]);
    s.record_message_with(c, MessageId(1), UserId(1), Timestamp(1), &to(3))
        .unwrap();
    s.record_message_with(c, MessageId(2), UserId(1), Timestamp(2), &to(2))
        .unwrap();
    s.add_member(c, UserId(3), Timestamp(3)).unwrap(); // after message 1
    assert_eq!(s.unread_count(c, UserId(3)).unwrap().mentions, 0);
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().mentions, 1);
    s.record_message_with(
        c,
        MessageId(3),
        UserId(1),
        Timestamp(4),
        &MessageOptions::new().mention_everyone(),
    )
    .unwrap();
    let all = s.unread_counts(UserId(3)).unwrap();
    assert_eq!((all[0].1.count, all[0].1.mentions), (1, 1));
    s.mark_read(c, UserId(2), MessageId(2), Timestamp(5))
        .unwrap();
    s.set_unread_flag(c, UserId(2), Timestamp(6)).unwrap();
    let u = s.unread_count(c, UserId(2)).unwrap();
    assert_eq!((u.count, u.mentions, u.marked_unread), (1, 1, true));
    s.delete_message(c, MessageId(3)).unwrap();
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().mentions, 0);
    assert_eq!(s.unread_count(c, UserId(3)).unwrap().mentions, 0);
    // Too many names: a typed error, and nothing recorded.
    let crowd = MessageOptions::new().mention((0..=readmark::MAX_MENTIONS as u64).map(UserId));
    assert!(matches!(
        s.record_message_with(c, MessageId(4), UserId(1), Timestamp(7), &crowd),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(s.unread_count(c, UserId(2)).unwrap().count, 0);
    s.close().unwrap();
    let report = readmark::verify(dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.records.get("mentions"), Some(&3));
}
