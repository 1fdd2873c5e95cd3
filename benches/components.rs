//! Component benchmarks: the pure merge function and `mark_read` on a real
//! store at each durability level. Run with `cargo bench --bench components`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use readmark::{
    merge_marks, Config, ConversationId, Durability, MessageId, Store, Timestamp, UserId,
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
    for d in [
        Durability::Memory,
        Durability::ProcessCrash,
        Durability::PowerLoss,
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
        let mut i = 0u64;
        g.bench_function(format!("{d:?}"), |b| {
            b.iter_batched(
                || {
                    i += 1;
                    i
                },
                |i| {
                    store
                        .mark_read(conv, UserId(i % 50), MessageId(i), Timestamp(i))
                        .expect("mark_read")
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, bench_merge, bench_mark_read);
criterion_main!(benches);
