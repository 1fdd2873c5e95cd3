//! `readmark scaling`: throughput, latency and bytes of `mark_read` at each
//! durability level, on real stores in temporary directories.
//!
//! The workload is the one the seeds describe: a user opens a conversation,
//! scrolls through the new messages (one `mark_read` per message scrolled
//! past, `--burst` of them) and leaves (`seal`). Each thread plays its
//! own users, so threads compete for the journal and the fsync, not for one
//! key.

use std::time::Instant;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use readmark::{Config, ConversationId, Durability, MessageId, Store, Timestamp, UserId};
use serde::Serialize;

use super::measure::{cpu_micros, proc_write_bytes, Spread};
use super::ScalingArgs as BenchArgs;

const MEMBERS: u64 = 50;
const CONVS_PER_THREAD: u64 = 20;

#[derive(Clone, Debug, Serialize)]
struct RunResult {
    updates: u64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
    fsyncs: u64,
    durable_batches: u64,
    keys_written: u64,
    journal_bytes: u64,
    proc_write_bytes: u64,
    wal_bytes: u64,
    flush_bytes: u64,
    compaction_bytes: u64,
    disk_bytes: u64,
    cpu_us: u64,
}

#[derive(Debug, Serialize)]
struct LevelReport {
    level: String,
    survives: &'static str,
    updates_per_sec: Spread,
    p50_us: Spread,
    p99_us: Spread,
    fsyncs_per_1k_updates: f64,
    keys_written: u64,
    write_reduction: f64,
    journal_bytes_per_update: f64,
    disk_bytes_per_update: f64,
    wal_bytes_per_update: f64,
    cpu_us_per_update: f64,
    runs: Vec<RunResult>,
}

fn survives(d: Durability) -> &'static str {
    match d {
        Durability::Memory => "clean close only",
        Durability::ProcessCrash => "process crash",
        _ => "power loss",
    }
}

fn run_once(
    args: &BenchArgs,
    durability: Durability,
    bar: &ProgressBar,
) -> Result<RunResult, readmark::Error> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(
        dir.path(),
        Config::new().durability(durability).statistics(true),
    )?;
    let threads = args.threads.max(1);
    for t in 0..threads {
        for c in 0..CONVS_PER_THREAD {
            let conv = ConversationId(t * CONVS_PER_THREAD + c);
            store.create_conversation(conv)?;
            for u in 0..MEMBERS {
                store.add_member(conv, UserId(u), Timestamp(0))?;
            }
            super::post_far_message(&store, conv)?;
        }
    }
    store.flush()?;
    let per_thread = args.updates / threads;
    let write0 = proc_write_bytes();
    let cpu0 = cpu_micros();
    let s0 = store.stats();
    let started = Instant::now();
    let hists: Vec<Result<Histogram<u64>, readmark::Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let store = &store;
                let burst = args.burst.max(1);
                s.spawn(move || -> Result<Histogram<u64>, readmark::Error> {
                    let mut h = Histogram::<u64>::new(3)
                        .map_err(|_| readmark::Error::InvalidArgument("histogram"))?;
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                    let mut done = 0u64;
                    let mut next_msg = vec![0u64; (CONVS_PER_THREAD * MEMBERS) as usize];
                    while done < per_thread {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let c = x % CONVS_PER_THREAD;
                        let u = (x >> 20) % MEMBERS;
                        let conv = ConversationId(t * CONVS_PER_THREAD + c);
                        let slot = (c * MEMBERS + u) as usize;
                        for _ in 0..burst.min(per_thread - done) {
                            next_msg[slot] += 1;
                            let t0 = Instant::now();
                            store.mark_read(
                                conv,
                                UserId(u),
                                MessageId(next_msg[slot]),
                                Timestamp(next_msg[slot]),
                            )?;
                            let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            h.record(ns.max(1)).ok();
                            done += 1;
                        }
                        store.seal(conv, UserId(u));
                        if t == 0 {
                            bar.inc(burst * threads);
                        }
                    }
                    Ok(h)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or(Err(readmark::Error::InvalidArgument(
                    "bench thread panicked",
                )))
            })
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let mut hist =
        Histogram::<u64>::new(3).map_err(|_| readmark::Error::InvalidArgument("histogram"))?;
    for h in hists {
        hist.add(h?).ok();
    }
    store.flush()?;
    let s1 = store.stats();
    let io = store.rocksdb_io();
    let disk_bytes = store.disk_bytes()?;
    store.close()?;
    #[allow(clippy::cast_precision_loss)]
    let us = |ns: u64| ns as f64 / 1_000.0;
    Ok(RunResult {
        updates: s1.mark_updates - s0.mark_updates,
        secs,
        p50_us: us(hist.value_at_quantile(0.50)),
        p99_us: us(hist.value_at_quantile(0.99)),
        fsyncs: s1.fsyncs - s0.fsyncs,
        durable_batches: s1.durable_batches - s0.durable_batches,
        keys_written: s1.keys_written - s0.keys_written,
        journal_bytes: s1.journal_bytes - s0.journal_bytes,
        proc_write_bytes: proc_write_bytes().saturating_sub(write0),
        wal_bytes: io.wal_bytes,
        flush_bytes: io.flush_bytes,
        compaction_bytes: io.compaction_bytes,
        disk_bytes,
        cpu_us: cpu_micros().saturating_sub(cpu0),
    })
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn run(args: &BenchArgs) -> Result<(), readmark::Error> {
    let levels: Vec<Durability> = args.levels.iter().map(|&l| l.into()).collect();
    let total =
        args.updates / args.threads.max(1) * args.threads.max(1) * levels.len() as u64 * args.runs;
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} bench [{bar:30}] {pos}/{len} updates ({per_sec}, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut reports = Vec::new();
    for &level in &levels {
        let mut runs = Vec::new();
        for r in 0..args.runs {
            bar.set_message(format!("{level:?} run {}/{}", r + 1, args.runs));
            runs.push(run_once(args, level, &bar)?);
        }
        let f = |g: &dyn Fn(&RunResult) -> f64| Spread::of(&runs.iter().map(g).collect::<Vec<_>>());
        let sum = |g: &dyn Fn(&RunResult) -> u64| runs.iter().map(g).sum::<u64>() as f64;
        let updates = sum(&|r| r.updates).max(1.0);
        reports.push(LevelReport {
            level: format!("{level:?}"),
            survives: survives(level),
            updates_per_sec: f(&|r| r.updates as f64 / r.secs),
            p50_us: f(&|r| r.p50_us),
            p99_us: f(&|r| r.p99_us),
            fsyncs_per_1k_updates: sum(&|r| r.fsyncs) / updates * 1_000.0,
            keys_written: runs.last().map_or(0, |r| r.keys_written),
            write_reduction: updates / sum(&|r| r.keys_written).max(1.0),
            journal_bytes_per_update: sum(&|r| r.journal_bytes) / updates,
            disk_bytes_per_update: sum(&|r| r.proc_write_bytes) / updates,
            wal_bytes_per_update: sum(&|r| r.wal_bytes) / updates,
            cpu_us_per_update: sum(&|r| r.cpu_us) / updates,
            runs,
        });
    }
    bar.finish_and_clear();
    if args.json {
        return super::print_json(&reports);
    }
    println!(
        "mark_read by durability level: {} updates x {} runs per level, {} threads, bursts of {} updates per key then seal (leave)",
        args.updates, args.runs, args.threads, args.burst
    );
    println!(
        "{:<13} {:<17} {:>22} {:>9} {:>9} {:>11} {:>10} {:>10} {:>10} {:>9}",
        "level",
        "ack survives",
        "updates/s median (±%)",
        "p50 us",
        "p99 us",
        "fsync/1k",
        "reduction",
        "jnl B/upd",
        "disk B/upd",
        "cpu us/upd"
    );
    for r in &reports {
        println!(
            "{:<13} {:<17} {:>15.0} (±{:>3.0}%) {:>9.2} {:>9.2} {:>11.2} {:>9.1}x {:>10.1} {:>10.1} {:>9.2}",
            r.level,
            r.survives,
            r.updates_per_sec.median,
            r.updates_per_sec.spread_pct(),
            r.p50_us.median,
            r.p99_us.median,
            r.fsyncs_per_1k_updates,
            r.write_reduction,
            r.journal_bytes_per_update,
            r.disk_bytes_per_update,
            r.cpu_us_per_update,
        );
    }
    println!("reduction = logical updates / keys written to RocksDB; disk B/upd = /proc/self/io write_bytes (whole run incl. flushes, memtable flush and close) / updates");
    Ok(())
}
