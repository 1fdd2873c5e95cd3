//! `readmark timelines`: what threads and mentions cost per update, side by
//! side with the main timeline in one invocation (each run a fresh store,
//! medians of the runs): sends plain, naming a member, and as thread
//! replies; scroll reads in main timelines and in threads; and what an
//! answer over every timeline (`unread_total`) costs as threads multiply.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use readmark::{
    Config, ConversationId, MessageId, MessageOptions, Store, Timeline, Timestamp, UserId,
};

use crate::measure::Spread;

/// Options of `readmark timelines`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct TimelinesArgs {
    /// Conversations (each with its members and one thread per root).
    #[arg(long, default_value_t = 200)]
    pub(crate) conversations: u64,
    /// Members per conversation.
    #[arg(long, default_value_t = 10)]
    pub(crate) members: u64,
    /// Messages per conversation and kind of send (each member then reads
    /// them all, one update per message).
    #[arg(long, default_value_t = 50)]
    pub(crate) messages: u64,
    /// Thread counts for the `unread_total` rows, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,10,100,1000")]
    pub(crate) threads: Vec<u64>,
    /// Runs (a fresh store each; medians and spreads reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// Microseconds per operation of each measured kind, in one run.
#[derive(Default)]
struct Run {
    send_main: f64,
    send_mention: f64,
    send_reply: f64,
    read_main: f64,
    read_thread: f64,
    total: Vec<f64>,
}

#[derive(serde::Serialize)]
struct Row {
    what: String,
    us_per_op: Spread,
    /// Against the main-timeline row of the same kind.
    ratio: Option<f64>,
}

fn per_op(started: Instant, ops: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let ops = ops.max(1) as f64;
    started.elapsed().as_secs_f64() * 1e6 / ops
}

fn one_run(args: &TimelinesArgs) -> readmark::Result<Run> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), Config::new())?;
    let (convs, members, n) = (args.conversations, args.members, args.messages);
    let member = |c: u64, i: u64| UserId(c * 1_000 + i);
    let mut next_id = 1u64;
    // Setup: members, a root per conversation, its thread begun.
    for c in 0..convs {
        let cid = ConversationId(c);
        store.create_conversation(cid)?;
        for i in 0..members {
            store.add_member(cid, member(c, i), Timestamp(0))?;
        }
        store.record_message(cid, MessageId(next_id), member(c, 0), Timestamp(1))?;
        store.record_message(
            Timeline::thread(cid, MessageId(next_id)),
            MessageId(next_id + 1),
            member(c, 0),
            Timestamp(1),
        )?;
        next_id += 2;
    }
    store.flush()?;
    let root = |c: u64| MessageId(1 + 2 * c);
    let mut run = Run::default();
    // Sends, each kind the same count, round-robin over conversations, by
    // member 1 (so each send also moves the sender's mark).
    let mut main_ids = vec![Vec::new(); usize::try_from(convs).unwrap_or(0)];
    let mut reply_ids = main_ids.clone();
    let mut send = |kind: u8, ids: Option<&mut Vec<Vec<u64>>>| -> readmark::Result<f64> {
        let started = Instant::now();
        let mut ids = ids;
        for _ in 0..n {
            for c in 0..convs {
                let cid = ConversationId(c);
                let id = next_id;
                next_id += 1;
                match kind {
                    0 => store.record_message(cid, MessageId(id), member(c, 1), Timestamp(id))?,
                    1 => store.record_message_with(
                        cid,
                        MessageId(id),
                        member(c, 1),
                        Timestamp(id),
                        &MessageOptions::new().mention([member(c, 2)]),
                    )?,
                    _ => store.record_message(
                        Timeline::thread(cid, root(c)),
                        MessageId(id),
                        member(c, 1),
                        Timestamp(id),
                    )?,
                }
                if let Some(ids) = ids.as_deref_mut() {
                    ids[usize::try_from(c).unwrap_or(0)].push(id);
                }
            }
        }
        Ok(per_op(started, n * convs))
    };
    run.send_main = send(0, Some(&mut main_ids))?;
    run.send_mention = send(1, None)?;
    run.send_reply = send(2, Some(&mut reply_ids))?;
    store.flush()?;
    // Reads: every member but the sender scrolls through the messages of
    // one kind in order, one update each, and leaves (seal).
    let read = |ids: &[Vec<u64>], thread: bool| -> readmark::Result<f64> {
        let started = Instant::now();
        let mut ops = 0u64;
        for c in 0..convs {
            let timeline = if thread {
                Timeline::thread(ConversationId(c), root(c))
            } else {
                Timeline::main(ConversationId(c))
            };
            for i in (0..members).filter(|&i| i != 1) {
                for &m in &ids[usize::try_from(c).unwrap_or(0)] {
                    store.mark_read(timeline, member(c, i), MessageId(m), Timestamp(m))?;
                    ops += 1;
                }
                store.seal(timeline, member(c, i));
            }
        }
        store.flush()?;
        Ok(per_op(started, ops))
    };
    run.read_main = read(&main_ids, false)?;
    run.read_thread = read(&reply_ids, true)?;
    store.close()?;
    // One conversation with T threads of two replies each: `unread_total`.
    for &threads in &args.threads {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path(), Config::new())?;
        let cid = ConversationId(1);
        store.create_conversation(cid)?;
        for i in 0..members {
            store.add_member(cid, UserId(i), Timestamp(0))?;
        }
        let mut id = 1u64;
        for _ in 0..threads.max(1) {
            store.record_message(cid, MessageId(id), UserId(0), Timestamp(id))?;
            id += 1;
        }
        for t in 0..threads {
            for _ in 0..2 {
                store.record_message(
                    Timeline::thread(cid, MessageId(t + 1)),
                    MessageId(id),
                    UserId(0),
                    Timestamp(id),
                )?;
                id += 1;
            }
        }
        store.flush()?;
        let calls = (100_000 / (threads + 1)).clamp(20, 10_000);
        let started = Instant::now();
        for _ in 0..calls {
            std::hint::black_box(store.unread_total(cid, UserId(1))?);
        }
        run.total.push(per_op(started, calls));
        store.close()?;
    }
    Ok(run)
}

pub(crate) fn run(args: &TimelinesArgs) -> readmark::Result<()> {
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.runs)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} timelines [{bar:30}] {pos}/{len} runs (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut runs = Vec::new();
    for _ in 0..args.runs.max(1) {
        runs.push(one_run(args)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let spread = |f: &dyn Fn(&Run) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
    let send_main = spread(&|r| r.send_main);
    let read_main = spread(&|r| r.read_main);
    let mut rows = vec![
        Row {
            what: "send, main timeline".into(),
            us_per_op: send_main,
            ratio: None,
        },
        Row {
            what: "send naming a member".into(),
            us_per_op: spread(&|r| r.send_mention),
            ratio: Some(spread(&|r| r.send_mention).median / send_main.median),
        },
        Row {
            what: "send, thread reply".into(),
            us_per_op: spread(&|r| r.send_reply),
            ratio: Some(spread(&|r| r.send_reply).median / send_main.median),
        },
        Row {
            what: "mark_read, main timeline".into(),
            us_per_op: read_main,
            ratio: None,
        },
        Row {
            what: "mark_read, thread".into(),
            us_per_op: spread(&|r| r.read_thread),
            ratio: Some(spread(&|r| r.read_thread).median / read_main.median),
        },
    ];
    let base = spread(&|r| r.total.first().copied().unwrap_or(0.0));
    for (i, &t) in args.threads.iter().enumerate() {
        let s = spread(&|r| r.total.get(i).copied().unwrap_or(0.0));
        rows.push(Row {
            what: format!("unread_total, {t} threads"),
            us_per_op: s,
            ratio: (i > 0).then(|| s.median / base.median),
        });
    }
    if args.json {
        return crate::print_json(&rows);
    }
    println!(
        "timelines: {} conversations of {} members, {} messages per kind of send, {} runs (fresh store each, default Config: ProcessCrash); medians, spread = half the range",
        args.conversations, args.members, args.messages, args.runs
    );
    println!(
        "{:<32} {:>12} {:>9} {:>10}",
        "operation", "µs per op", "spread", "ratio"
    );
    for r in &rows {
        println!(
            "{:<32} {:>12.3} {:>8.1}% {:>10}",
            r.what,
            r.us_per_op.median,
            r.us_per_op.spread_pct(),
            r.ratio.map_or("-".to_string(), |x| format!("{x:.2}x"))
        );
    }
    Ok(())
}
