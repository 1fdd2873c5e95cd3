//! Component benchmarks, each piece alone: the merge functions, bitset
//! operations, the write-combining buffer, the journal append, `mark_read`
//! at each durability level, `read_by` for a small group (bitsets) and a
//! large channel (marks), and unread counts at login. Real stores on disk in
//! temporary directories. Run with `cargo bench --bench components`; the
//! figures in docs/benchmarks.md come from it.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use readmark::fuzzing::bench;
use readmark::{
    Config, ConversationId, Durability, MessageId, Page, Store, Timestamp, UserId, merge_marks,
};

fn operand(up_to: u64, at: u64) -> Vec<u8> {
    // Same layout as docs/design.md: version, presence bits, up_to, at.
    let mut v = vec![1u8, 0x01];
    v.extend_from_slice(&up_to.to_be_bytes());
    v.extend_from_slice(&at.to_be_bytes());
    v
}

fn bench_merge(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge_marks");
    for n in [1usize, 16, 128] {
        let ops: Vec<Vec<u8>> = (0..n as u64).map(|i| operand(i * 7 % 97, i)).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}_operands"), |b| {
            b.iter(|| merge_marks(None, ops.iter().map(Vec::as_slice)));
        });
    }
    g.finish();
}

fn bench_mark_read(c: &mut Criterion) {
    let mut g = c.benchmark_group("mark_read");
    g.throughput(Throughput::Elements(1));
    // With a subscriber, each update also reads the mark it starts from
    // and joins the subscription's queue (50 keys here: it stays small).
    for (d, subscribed) in [
        (Durability::Memory, false),
        (Durability::ProcessCrash, false),
        (Durability::ProcessCrash, true),
        (Durability::PowerLoss, false),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), Config::new().durability(d)).expect("open");
        let conv = ConversationId(1);
        store.create_conversation(conv).expect("create");
        for u in 0..50 {
            store
                .add_member(conv, UserId(u), Timestamp(0))
                .expect("add");
        }
        // Marks never pass the newest message: user 0 posts one above
        // every mark made below, and users 1 to 49 read.
        store
            .record_message(conv, MessageId(1 << 62), UserId(0), Timestamp(0))
            .expect("record");
        store.flush().expect("flush");
        let sub = subscribed.then(|| store.subscribe());
        let name = if sub.is_some() {
            format!("{d:?}_subscribed")
        } else {
            format!("{d:?}")
        };
        let mut i = 0u64;
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    i += 1;
                    i
                },
                |i| {
                    store
                        .mark_read(conv, UserId(1 + i % 49), MessageId(i), Timestamp(i))
                        .expect("mark_read")
                },
                BatchSize::SmallInput,
            );
        });
        drop(sub);
    }
    g.finish();
}

fn bench_bitsets(c: &mut Criterion) {
    let mut g = c.benchmark_group("bitset");
    // One operand per reader of a 50-member group, and the merged value.
    let ops: Vec<Vec<u8>> = (0..50u16).map(|s| bench::bitset(1, [s])).collect();
    for n in [1usize, 16, 50] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("merge_{n}_operands"), |b| {
            b.iter(|| bench::merge_bitsets(None, ops[..n].iter().map(Vec::as_slice)));
        });
    }
    let full = bench::bitset(1, 0..50);
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_50_slots", |b| b.iter(|| bench::bitset(1, 0..50)));
    g.bench_function("contains", |b| {
        b.iter(|| bench::bitset_contains(std::hint::black_box(&full), 37));
    });
    g.finish();
}

fn bench_combiner(c: &mut Criterion) {
    let mut g = c.benchmark_group("combiner");
    g.throughput(Throughput::Elements(1));
    let comb = bench::Combiner::new();
    let mut i = 0u64;
    g.bench_function("insert_new_key", |b| {
        b.iter(|| {
            i += 1;
            comb.add(i % 10_000, i, i, i)
        });
    });
    comb.drain();
    let comb = bench::Combiner::new();
    comb.add(1, 1, 0, 0);
    let mut j = 0u64;
    g.bench_function("combine_into_buffered_key", |b| {
        b.iter(|| {
            j += 1;
            comb.add(1, 1, j, j)
        });
    });
    g.finish();
}

fn bench_journal(c: &mut Criterion) {
    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = bench::Journal::create(dir.path(), 16 << 20).expect("journal");
    let slots = u32::try_from(journal.capacity()).expect("slots");
    // One key's update: a copy rewritten in place, the two copies in turn.
    // `hot`: 64 keys buffered (pages in cache and TLB); `spread`: keys all
    // over a 16 MiB journal.
    for (name, span) in [
        ("write_slot_copy_hot", 64),
        ("write_slot_copy_spread", slots),
    ] {
        let mut i = 0u32;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let slot = i.wrapping_mul(2_654_435_761) % span;
                journal
                    .write(slot, (i & 1) as u8, u64::from(i), 4)
                    .expect("write")
            });
        });
    }
    g.finish();
}

/// A store with one conversation of `members` members, 200 messages, and
/// every member having read a different prefix of them (flushed).
fn conversation_with(members: u64) -> (tempfile::TempDir, Store, ConversationId) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), Config::new()).expect("open");
    let conv = ConversationId(1);
    store.create_conversation(conv).expect("create");
    for u in 0..members {
        store
            .add_member(conv, UserId(u), Timestamp(0))
            .expect("add");
    }
    let t = Timestamp::now().get();
    for m in 1..=200 {
        store
            .record_message(conv, MessageId(m), UserId(0), Timestamp(t + m))
            .expect("record");
    }
    for u in 1..members {
        store
            .mark_read(conv, UserId(u), MessageId(u % 200 + 1), Timestamp(t + 500))
            .expect("mark");
    }
    store.flush().expect("flush");
    (dir, store, conv)
}

fn bench_read_by(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_by");
    g.throughput(Throughput::Elements(1));
    for (name, members) in [
        ("small_group_10_bitsets", 10),
        ("group_50_bitsets", 50),
        ("channel_1000_marks", 1000),
    ] {
        let (_dir, store, conv) = conversation_with(members);
        g.bench_function(format!("{name}_page_of_20"), |b| {
            b.iter(|| {
                store
                    .read_by(conv, UserId(1), MessageId(5), Page::first(20))
                    .expect("read_by")
            });
        });
        g.bench_function(format!("{name}_count"), |b| {
            b.iter(|| {
                store
                    .read_count(conv, UserId(1), MessageId(5))
                    .expect("read_count")
            });
        });
    }
    g.finish();
}

fn bench_unread(c: &mut Criterion) {
    let mut g = c.benchmark_group("unread");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), Config::new()).expect("open");
    let user = UserId(1);
    for conv in 0..50 {
        let conv = ConversationId(conv);
        store.create_conversation(conv).expect("create");
        store.add_member(conv, user, Timestamp(0)).expect("add");
        store
            .add_member(conv, UserId(2), Timestamp(0))
            .expect("add");
        for m in 1..=40 {
            store
                .record_message(conv, MessageId(m), UserId(2), Timestamp(m))
                .expect("record");
        }
        store
            .mark_read(conv, user, MessageId(conv.0 % 40 + 1), Timestamp(50))
            .expect("mark");
    }
    store.flush().expect("flush");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_conversation", |b| {
        b.iter(|| store.unread_count(ConversationId(7), user).expect("unread"));
    });
    g.throughput(Throughput::Elements(50));
    g.bench_function("login_50_conversations", |b| {
        b.iter(|| store.unread_counts(user).expect("unread_counts"));
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_merge,
    bench_bitsets,
    bench_combiner,
    bench_journal,
    bench_mark_read,
    bench_read_by,
    bench_unread
);
criterion_main!(benches);
