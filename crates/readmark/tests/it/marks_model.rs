//! Read marks against a `BTreeMap` model: random interleavings, duplicates
//! and reorderings, from several threads, across close and reopen, in main
//! timelines and threads (each its own mark).

use crate::common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use readmark::{ConversationId, MessageId, ReadMark, Store, Timeline, Timestamp, UserId};

const CONVS: u64 = 3;
/// Timelines `0..CONVS` are the conversations' main ones, the next `CONVS`
/// a thread in each.
const TIMELINES: u64 = 2 * CONVS;
const USERS: u64 = 4;
/// Every thread's root.
const ROOT: MessageId = MessageId(1);

fn timeline(i: u64) -> Timeline {
    if i < CONVS {
        Timeline::main(ConversationId(i))
    } else {
        Timeline::thread(ConversationId(i - CONVS), ROOT)
    }
}

/// The newest message of timeline `i`, which the poster sent.
fn newest(i: u64) -> u64 {
    if i < CONVS {
        common::FAR + 1
    } else {
        common::FAR
    }
}

#[derive(Clone, Debug)]
enum Op {
    Mark {
        conv: u64,
        user: u64,
        up_to: u64,
        at: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Small ranges: duplicates, ties and stale updates are common.
        20 => (0..TIMELINES, 0..USERS, 0u64..30, 0u64..10)
            .prop_map(|(conv, user, up_to, at)| Op::Mark { conv, user, up_to, at }),
        1 => Just(Op::Reopen),
    ]
}

/// The model's join: higher `up_to`, then earliest `at`.
fn model_join(
    model: &mut BTreeMap<(u64, u64), (u64, u64)>,
    conv: u64,
    user: u64,
    up_to: u64,
    at: u64,
) {
    let e = model.entry((conv, user)).or_insert((up_to, at));
    if up_to > e.0 || (up_to == e.0 && at < e.1) {
        *e = (up_to, at);
    }
}

fn setup(store: &Store) {
    for c in 0..CONVS {
        store.create_conversation(ConversationId(c)).unwrap();
        for u in 0..USERS {
            store
                .add_member(ConversationId(c), UserId(u), Timestamp(0))
                .unwrap();
        }
        // Above every mark made here (marks clamp to the newest message):
        // a root, a reply in its thread, then the main timeline's newest.
        common::post(store, ConversationId(c), [ROOT.0]);
        store
            .record_message(
                timeline(c + CONVS),
                MessageId(common::FAR),
                common::POSTER,
                Timestamp(common::FAR),
            )
            .unwrap();
        common::post(store, ConversationId(c), [common::FAR + 1]);
    }
}

fn check(store: &Store, model: &BTreeMap<(u64, u64), (u64, u64)>) -> Result<(), TestCaseError> {
    for c in 0..TIMELINES {
        let mut expected = Vec::new();
        for u in 0..USERS {
            let want = model.get(&(c, u)).map(|&(up_to, at)| ReadMark {
                up_to: MessageId(up_to),
                at: Timestamp(at),
            });
            prop_assert_eq!(store.mark(timeline(c), UserId(u)).unwrap(), want);
            if let Some(m) = want {
                expected.push((UserId(u), m));
            }
        }
        // The poster's, from sending.
        expected.push((
            common::POSTER,
            ReadMark {
                up_to: MessageId(newest(c)),
                at: Timestamp(newest(c)),
            },
        ));
        // Any member may list the marks (nobody is private here).
        prop_assert_eq!(store.marks(timeline(c), UserId(0)).unwrap(), expected);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Sequential operations with reopens: after every step every mark is the
    /// model's maximum, so no mark ever goes backwards, including across
    /// close and reopen.
    #[test]
    fn marks_match_model_across_reopen(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Some(Store::open(dir.path(), common::small_config()).unwrap());
        setup(store.as_ref().unwrap());
        let mut model = BTreeMap::new();
        for op in ops {
            match op {
                Op::Mark { conv, user, up_to, at } => {
                    store.as_ref().unwrap()
                        .mark_read(timeline(conv), UserId(user), MessageId(up_to), Timestamp(at))
                        .unwrap();
                    model_join(&mut model, conv, user, up_to, at);
                }
                Op::Reopen => {
                    store.take().unwrap().close().unwrap();
                    store = Some(Store::open(dir.path(), common::small_config()).unwrap());
                }
            }
            check(store.as_ref().unwrap(), &model)?;
        }
    }

    /// The same updates split over four threads, each in its own shuffled
    /// order and with every update sent twice (a retry from another device),
    /// converge to the model.
    #[test]
    fn concurrent_duplicated_reordered_updates_converge(
        updates in proptest::collection::vec((0..TIMELINES, 0..USERS, 0u64..40, 0u64..10), 1..120),
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), common::small_config()).unwrap();
        setup(&store);
        let mut model = BTreeMap::new();
        for &(c, u, up, at) in &updates {
            model_join(&mut model, c, u, up, at);
        }
        let threads = 4;
        std::thread::scope(|s| {
            for t in 0..threads {
                let store = &store;
                let mut mine: Vec<_> = updates.iter().copied().enumerate()
                    .filter(|(i, _)| i % threads == t || (i + 1) % threads == t)
                    .map(|(_, u)| u)
                    .collect();
                let mut x = seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for i in (1..mine.len()).rev() {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    mine.swap(i, (x % (i as u64 + 1)) as usize);
                }
                s.spawn(move || {
                    for (c, u, up, at) in mine {
                        store.mark_read(timeline(c), UserId(u), MessageId(up), Timestamp(at)).unwrap();
                    }
                });
            }
        });
        check(&store, &model)?;
        store.close().unwrap();
        let store = Store::open(dir.path(), common::small_config()).unwrap();
        check(&store, &model)?;
    }
}

#[test]
fn hot_key_with_many_operands_reads_back_the_max() {
    // Far more operands on one key than max_successive_merges: the write path
    // folds them, reads stay correct.
    let (_d, store) = common::temp_store();
    setup(&store);
    let before = store.stats().mark_updates;
    let (c, u) = (ConversationId(0), UserId(0));
    for i in 0..5_000u64 {
        // Interleave an advancing and a stale stream.
        let up = if i % 2 == 0 { i } else { i / 3 };
        store.mark_read(c, u, MessageId(up), Timestamp(i)).unwrap();
    }
    assert_eq!(store.mark(c, u).unwrap().unwrap().up_to, MessageId(4_998));
    // The thread's mark saw none of it.
    assert_eq!(store.mark(timeline(CONVS), u).unwrap(), None);
    assert_eq!(store.stats().mark_updates - before, 5_000);
}
