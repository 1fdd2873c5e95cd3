//! `readmark receipts`: what per-message receipts cost, measured on a real
//! store: bytes per message of the bitsets (as merged values and as live
//! SST bytes after a full compaction) and RocksDB writes per mark advance,
//! for groups of several sizes.
//!
//! Workload per group: `--messages` messages from random members; after
//! each message, every other member who reads the group (a `--read-ratio`
//! share of them) opens it with probability 1 / `--open-every`, reads up to
//! the newest message and leaves (`mark_read` + `flush_key`): one advance
//! covering the messages since their last visit. With `--flush-every N`,
//! visits are not flushed on leave but all together every N messages (the
//! flush timer in a busy group). In-order reads write no bit per message
//! (a run per advance times them); bitsets hold only messages opened out
//! of order (`mark_viewed`), which this workload does not do.
//!
//! Sending also advances the sender's mark (a buffered update, combined with
//! the sender's other advances until their key is flushed), so
//! advances = visits + messages; `reads` counts the (message, reader) pairs
//! newly covered by all of them, the sender's own messages excepted: the
//! rows a one-row-per-read design would write.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
use serde::Serialize;

use super::ReceiptsArgs;

#[derive(Debug, Serialize)]
struct GroupReport {
    members: u64,
    messages: u64,
    visits: u64,
    advances: u64,
    /// (message, reader) pairs: the rows a one-row-per-read design writes.
    reads: u64,
    bitset_records: u64,
    bitset_value_bytes_per_message: f64,
    receipts_sst_bytes_per_message: f64,
    read_times_sst_bytes_per_message: f64,
    mark_writes_per_advance: f64,
    bitset_operands_per_advance: f64,
    run_records_per_advance: f64,
    rocksdb_writes_per_advance: f64,
    reads_per_advance: f64,
}

pub(crate) fn run(args: &ReceiptsArgs) -> readmark::Result<()> {
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.members.len() as u64 * args.messages)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} messages ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut reports = Vec::new();
    for &members in &args.members {
        bar.set_message(format!("{members} members"));
        reports.push(measure_group(args, members, &bar)?);
    }
    bar.finish_and_clear();
    if args.json {
        return super::print_json(&reports);
    }
    let flush = match args.flush_every {
        0 => "each visit flushed on leave".to_string(),
        n => format!("all visits flushed together every {n} messages"),
    };
    println!(
        "per-message receipts: {} messages per group, read ratio {}, a visit every ~{} messages, {flush}, seed {}",
        args.messages, args.read_ratio, args.open_every, args.seed
    );
    println!(
        "{:>7} {:>8} {:>8} {:>8} {:>9} {:>11} {:>13} {:>9} {:>8} {:>10} {:>10}",
        "members",
        "advances",
        "reads",
        "value",
        "receipts",
        "read_times",
        "operands",
        "runs",
        "marks",
        "writes",
        "reads"
    );
    println!(
        "{:>7} {:>8} {:>8} {:>8} {:>9} {:>11} {:>13} {:>9} {:>8} {:>10} {:>10}",
        "",
        "",
        "",
        "B/msg",
        "SST B/msg",
        "SST B/msg",
        "/advance",
        "/advance",
        "/advance",
        "/advance",
        "/advance"
    );
    for r in &reports {
        println!(
            "{:>7} {:>8} {:>8} {:>8.2} {:>9.2} {:>11.2} {:>13.2} {:>9.2} {:>8.2} {:>10.2} {:>10.2}",
            r.members,
            r.advances,
            r.reads,
            r.bitset_value_bytes_per_message,
            r.receipts_sst_bytes_per_message,
            r.read_times_sst_bytes_per_message,
            r.bitset_operands_per_advance,
            r.run_records_per_advance,
            r.mark_writes_per_advance,
            r.rocksdb_writes_per_advance,
            r.reads_per_advance,
        );
    }
    println!("value B/msg: merged bitset value; SST B/msg: live files after a full compaction (LZ4, keys, index, filters);");
    println!(
        "writes/advance: RocksDB keys written per mark advance (mark + bitset operands + runs);"
    );
    println!(
        "reads/advance: (message, reader) pairs covered, i.e. rows one-row-per-read would write."
    );
    Ok(())
}

fn measure_group(
    args: &ReceiptsArgs,
    members: u64,
    bar: &ProgressBar,
) -> readmark::Result<GroupReport> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(
        dir.path(),
        Config::new()
            .receipt_threshold(members.max(50).try_into().unwrap_or(u32::MAX))
            .flush_interval(Duration::from_secs(3600)),
    )?;
    let c = ConversationId(1);
    store.create_conversation(c)?;
    for u in 0..members {
        store.add_member(c, UserId(u), Timestamp::now())?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ members);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let readers = ((members as f64 * args.read_ratio).ceil() as u64).clamp(1, members);
    let start = Timestamp::now().0;
    // Members who joined before any message have seen nothing: seen[u] is
    // the number of messages their mark covers.
    let mut seen = vec![0usize; usize::try_from(members).unwrap_or(0)];
    let mut senders: Vec<u64> = Vec::new();
    let covered = |senders: &[u64], from: usize, u: u64| -> u64 {
        senders[from..].iter().filter(|&&s| s != u).count() as u64
    };
    let (mut visits, mut reads) = (0u64, 0u64);
    let before = store.stats();
    for i in 0..args.messages {
        let id = (i + 1) * 10;
        let t = start + i * 1_000;
        let sender = rng.random_range(0..members);
        store.record_message(c, MessageId(id), UserId(sender), Timestamp(t))?;
        senders.push(sender);
        let s = usize::try_from(sender).unwrap_or(0);
        reads += covered(&senders, seen[s], sender);
        seen[s] = senders.len();
        for u in 0..readers {
            if u == sender || !rng.random_ratio(1, args.open_every) {
                continue;
            }
            let ui = usize::try_from(u).unwrap_or(0);
            reads += covered(&senders, seen[ui], u);
            seen[ui] = senders.len();
            store.mark_read(c, UserId(u), MessageId(id), Timestamp(t + 500))?;
            if args.flush_every == 0 {
                store.flush_key(c, UserId(u))?;
            }
            visits += 1;
        }
        if args.flush_every > 0 && (i + 1) % args.flush_every == 0 {
            store.flush()?;
        }
        bar.inc(1);
    }
    let advances = visits + args.messages;
    store.flush()?;
    let after = store.stats();
    store.compact()?;
    let receipts = store.receipt_usage(c)?;
    let (records, value_bytes) = (receipts.bitsets, receipts.bytes);
    let usage = store.disk_usage()?;
    let sst = |t: &str| usage.table(t).map_or(0, |t| t.sst_bytes);
    let (receipts_sst, times_sst) = (sst("receipts"), sst("read_times"));
    #[allow(clippy::cast_precision_loss)]
    let per = |x: u64, n: u64| x as f64 / n.max(1) as f64;
    // Every mark write, the senders' included (a send is a buffered
    // advance, written by the next flush of its key).
    let marks = after.keys_written - before.keys_written;
    let operands = after.receipt_operands - before.receipt_operands;
    let runs = after.read_time_records - before.read_time_records;
    Ok(GroupReport {
        members,
        messages: args.messages,
        visits,
        advances,
        reads,
        bitset_records: records,
        bitset_value_bytes_per_message: per(value_bytes, records),
        receipts_sst_bytes_per_message: per(receipts_sst, args.messages),
        read_times_sst_bytes_per_message: per(times_sst, args.messages),
        mark_writes_per_advance: per(marks, advances),
        bitset_operands_per_advance: per(operands, advances),
        run_records_per_advance: per(runs, advances),
        rocksdb_writes_per_advance: per(marks + operands + runs, advances),
        reads_per_advance: per(reads, advances),
    })
}
