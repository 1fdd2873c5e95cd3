//! `readmark bench --adr`: the seed ADR's workload. Messages arrive at
//! `--adr-messages-per-sec` (50,000) in groups of `--adr-members` (50), and
//! a `--adr-read-ratio` share (30 %) of each group's members read every
//! message as it arrives (one `mark_read` per message). The ADR counts
//! 50K x 50 x 0.30 = 750K per-message receipt writes per second for one row
//! per (message, reader); this measures both that design and readmark on
//! the same stream, over `--adr-seconds` simulated seconds, with the
//! default `Config`: readers who stay in a group are written once per
//! `flush_interval` (5 s), played on simulated time.
//!
//! Senders are drawn from the readers: in readmark sending counts as reading
//! (it advances the sender's mark), so a member who sends is one who reads.
//! The journal holds one slot per buffered key (15,000 here), so the
//! interval costs no journal space. Bytes per message are live SST bytes
//! after a full compaction, measured. Answers are checked against the
//! stream (`check_answers`): every group's first and last message, and
//! every reader's mark and unread count.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
use serde::Serialize;

use super::compare::rdb;
use super::BenchArgs;

#[derive(Debug, Serialize)]
struct AdrReport {
    messages_per_sec: u64,
    members: u64,
    readers_per_message: u64,
    seconds: u64,
    messages: u64,
    updates: u64,
    readmark_durable_batches_per_sec: f64,
    readmark_keys_per_sec: f64,
    readmark_keys: [u64; 3],
    readmark_bytes_per_message: f64,
    readmark_update_secs: f64,
    rows_writes_per_sec: f64,
    rows_bytes_per_message: f64,
    rows_update_secs: f64,
    /// `read_by` answers, then marks and unread counts, checked against
    /// the stream.
    answers_checked: [u64; 2],
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn run(args: &BenchArgs) -> readmark::Result<()> {
    let members = args.adr_members.max(2);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let readers = ((members as f64 * args.adr_read_ratio).round() as u64).clamp(1, members - 1);
    let per_group_per_sec = 50u64;
    let groups = (args.adr_messages_per_sec / per_group_per_sec).max(1);
    let messages = groups * per_group_per_sec * args.adr_seconds;
    // Every reader but the sender reads each message.
    let updates = messages * (readers - 1);
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(updates * 2)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} adr [{bar:30}] {pos}/{len} updates (eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let start = Timestamp::now().get();
    // The messages of each simulated second, as (group, id, sender, time):
    // members 0..readers read, and send in turn.
    let schedule: Vec<Vec<(u64, u64, u64, u64)>> = (0..args.adr_seconds)
        .map(|sec| {
            (0..per_group_per_sec)
                .flat_map(|k| {
                    let t = start + sec * 1_000 + k * 1_000 / per_group_per_sec;
                    (0..groups).map(move |g| (g, k, t))
                })
                .collect::<Vec<_>>()
        })
        .scan(0u64, |id, second| {
            Some(
                second
                    .into_iter()
                    .map(|(g, k, t)| {
                        *id += 1;
                        (g, *id, k % readers, t)
                    })
                    .collect(),
            )
        })
        .collect();

    // readmark, with the default `Config`: the flusher writes every
    // buffered key once per `flush_interval` (5 s); the simulation runs
    // faster than real time, so that timer is played on simulated time
    // (the real one may fire too: its writes are counted as well).
    bar.set_message("readmark");
    let dir = tempfile::tempdir()?;
    let config = Config::new();
    let flush_every = config.get_flush_interval().as_secs().max(1);
    let store = Store::open(dir.path(), config)?;
    for g in 0..groups {
        store.create_conversation(ConversationId(g))?;
        for u in 0..members {
            store.add_member(ConversationId(g), UserId(u), Timestamp(start))?;
        }
    }
    let mut in_updates = Duration::ZERO;
    let s0 = store.stats();
    for (sec, second) in schedule.iter().enumerate() {
        for &(g, id, sender, t) in second {
            store.record_message(
                ConversationId(g),
                MessageId(id),
                UserId(sender),
                Timestamp(t),
            )?;
            let t0 = Instant::now();
            for r in (0..readers).filter(|&r| r != sender) {
                store.mark_read(
                    ConversationId(g),
                    UserId(r),
                    MessageId(id),
                    Timestamp(t + 300),
                )?;
            }
            in_updates += t0.elapsed();
            bar.inc(readers - 1);
        }
        // The flush timer, once per interval of simulated time.
        if (sec as u64 + 1).is_multiple_of(flush_every) {
            let t0 = Instant::now();
            store.flush()?;
            in_updates += t0.elapsed();
        }
    }
    let t0 = Instant::now();
    store.flush()?;
    in_updates += t0.elapsed();
    let s1 = store.stats();
    let checked = check_answers(&store, &schedule, readers, flush_every)?;
    store.compact()?;
    let usage = store.disk_usage()?;
    let sst = |t: &str| usage.table(t).map_or(0, |t| t.sst_bytes);
    let (receipts_sst, times_sst) = (sst("receipts"), sst("read_times"));
    store.close()?;
    let marks = s1.keys_written - s0.keys_written;
    let operands = s1.receipt_operands - s0.receipt_operands;
    let runs = s1.read_time_records - s0.read_time_records;
    let readmark_keys = [marks, operands, runs];
    let receipt_keys = marks + operands + runs;
    let secs = args.adr_seconds.max(1) as f64;

    // One row per (message, reader) in RocksDB, WAL unsynced: the same
    // acknowledgement (survives a process crash).
    bar.set_message("one row per read");
    let dir = tempfile::tempdir()?;
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_write_buffer_size(32 << 20);
    let db = rocksdb::DB::open(&opts, dir.path()).map_err(rdb)?;
    let mut rows_secs = Duration::ZERO;
    for &(g, id, sender, t) in schedule.iter().flatten() {
        let t0 = Instant::now();
        for r in (0..readers).filter(|&r| r != sender) {
            db.put(super::compare::key3(g, id, r), (t + 300).to_be_bytes())
                .map_err(rdb)?;
        }
        rows_secs += t0.elapsed();
        bar.inc(readers - 1);
    }
    db.flush().map_err(rdb)?;
    db.compact_range(None::<&[u8]>, None::<&[u8]>);
    let rows_sst = db
        .property_int_value("rocksdb.live-sst-files-size")
        .map_err(rdb)?
        .unwrap_or(0);
    drop(db);
    bar.finish_and_clear();

    let report = AdrReport {
        messages_per_sec: groups * per_group_per_sec,
        members,
        readers_per_message: readers,
        seconds: args.adr_seconds,
        messages,
        updates,
        readmark_durable_batches_per_sec: (s1.durable_batches - s0.durable_batches) as f64 / secs,
        readmark_keys_per_sec: receipt_keys as f64 / secs,
        readmark_keys,
        readmark_bytes_per_message: (receipts_sst + times_sst) as f64 / messages as f64,
        readmark_update_secs: in_updates.as_secs_f64(),
        rows_writes_per_sec: updates as f64 / secs,
        rows_bytes_per_message: rows_sst as f64 / messages as f64,
        rows_update_secs: rows_secs.as_secs_f64(),
        answers_checked: checked,
    };
    if args.json {
        return super::print_json(&report);
    }
    let r = &report;
    println!(
        "ADR workload: {} messages/s for {} simulated s in groups of {} members, {} readers per message, the sender among them ({} messages, {} read updates); default Config, its 5 s flush timer on simulated time",
        r.messages_per_sec, r.seconds, r.members, r.readers_per_message, r.messages, r.updates
    );
    println!(
        "{:<28} {:>22} {:>22} {:>18} {:>16}",
        "design", "durable writes/s", "keys written/s", "SST B/message", "update time s"
    );
    println!(
        "{:<28} {:>22.0} {:>22.0} {:>18.1} {:>16.2}",
        "one row per (message, reader)",
        r.rows_writes_per_sec,
        r.rows_writes_per_sec,
        r.rows_bytes_per_message,
        r.rows_update_secs
    );
    println!(
        "{:<28} {:>22.1} {:>22.0} {:>18.1} {:>16.2}",
        "readmark (marks + runs)",
        r.readmark_durable_batches_per_sec,
        r.readmark_keys_per_sec,
        r.readmark_bytes_per_message,
        r.readmark_update_secs
    );
    println!(
        "ratio: {:.1}x fewer keys written per second, {:.1}x fewer bytes per message; readmark keys: {} marks, {} bitset operands, {} read-time runs",
        r.rows_writes_per_sec / r.readmark_keys_per_sec.max(1e-9),
        r.rows_bytes_per_message / r.readmark_bytes_per_message.max(1e-9),
        r.readmark_keys[0],
        r.readmark_keys[1],
        r.readmark_keys[2],
    );
    println!("(change-log sequences for catch-up ride in the marks: no other key is written)");
    println!(
        "answers checked: {} read_by answers (every group's first and last message), {} marks and unread counts",
        r.answers_checked[0], r.answers_checked[1]
    );
    Ok(())
}

/// Checks readmark's answers against what the stream implies, for every
/// group's first and last message: `read_by` lists exactly the readers
/// other than the sender, each with `ReadTime::At` a time between the
/// message's own and the newest advance of the flush interval that
/// covered it; every reader's mark is the group's last message and
/// nothing is unread. Returns (answers, marks) checked.
fn check_answers(
    store: &Store,
    schedule: &[Vec<(u64, u64, u64, u64)>],
    readers: u64,
    flush_every: u64,
) -> readmark::Result<[u64; 2]> {
    let wrong = |_| readmark::Error::InvalidArgument("ADR answer is not what the stream implies");
    let window = |sec: usize| sec as u64 / flush_every;
    // Per group: (first message, its second), (last message, its second),
    // and the newest message time per (group, window).
    let mut first: std::collections::HashMap<u64, ((u64, u64, u64), usize)> = Default::default();
    let mut last: std::collections::HashMap<u64, ((u64, u64, u64), usize)> = Default::default();
    let mut newest: std::collections::HashMap<(u64, u64), u64> = Default::default();
    for (sec, second) in schedule.iter().enumerate() {
        for &(g, id, sender, t) in second {
            first.entry(g).or_insert(((id, sender, t), sec));
            last.insert(g, ((id, sender, t), sec));
            let n = newest.entry((g, window(sec))).or_insert(t);
            *n = (*n).max(t);
        }
    }
    let mut answers = 0;
    let mut marks = 0;
    for (&g, &(last_msg, _)) in &last {
        for &((id, sender, t), sec) in [&first[&g], &last[&g]] {
            let page = store.read_by(
                ConversationId(g),
                UserId(sender),
                MessageId(id),
                readmark::Page::first(1000),
            )?;
            let want: Vec<u64> = (0..readers).filter(|&r| r != sender).collect();
            let got: Vec<u64> = page.readers.iter().map(|r| r.user.0).collect();
            (page.count == want.len() as u64 && got == want)
                .then_some(())
                .ok_or(())
                .map_err(wrong)?;
            let latest = newest[&(g, window(sec))] + 300;
            for reader in &page.readers {
                match reader.read_at {
                    readmark::ReadTime::At(x) if (t..=latest).contains(&x.get()) => {}
                    _ => return Err(wrong(())),
                }
            }
            answers += 1;
        }
        for r in 0..readers {
            let mark = store.mark(ConversationId(g), UserId(r))?;
            let unread = store.unread_count(ConversationId(g), UserId(r))?.count;
            (mark.map(|m| m.up_to) == Some(MessageId(last_msg.0)) && unread == 0)
                .then_some(())
                .ok_or(())
                .map_err(wrong)?;
            marks += 1;
        }
    }
    Ok([answers, marks])
}
