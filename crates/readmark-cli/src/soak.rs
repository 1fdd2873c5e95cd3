//! `readmark soak`: a long mixed load on one store, with the worker process
//! killed (SIGKILL) at intervals, reporting memory, journal and store size
//! and latency over time, and checking after every kill that nothing
//! acknowledged was lost and no mark went backwards.
//!
//! The worker (`readmark soak-worker`, hidden) runs writers (`mark_read` at
//! `ProcessCrash`), a poster (`record_message`), readers (`read_by`,
//! `read_count`, `unread_counts`), a subscriber, catch-ups
//! (`changes_since`, `snapshot`) and membership churn, and prints every
//! acknowledged mark (deduplicated per key, every 50 ms) and a stats line
//! per interval on stdout. The parent kills it, reopens the store itself
//! (recovery), checks every mark it was told of, and starts a new worker.
//! The last segment ends cleanly and the store is verified
//! (`readmark::verify`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use readmark::{
    CatchUp, Config, ConversationId, Cursor, Durability, Error, MessageId, Page, Store, Timestamp,
    UserId,
};
use serde::Serialize;

/// Options of `readmark soak` (and of the worker it starts).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct SoakArgs {
    /// Minutes to run in all.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) minutes: f64,
    /// Seconds between two kills of the worker (0: never kill; the run is
    /// one clean segment).
    #[arg(long, default_value_t = 60.0)]
    pub(crate) kill_every: f64,
    /// Seconds per report line.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) report_every: f64,
    /// Writer threads.
    #[arg(long, default_value_t = 2)]
    pub(crate) writers: usize,
    /// Mark updates per second over all writers (0: as fast as they go).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) rate: u64,
    /// Messages posted per second.
    #[arg(long, default_value_t = 200)]
    pub(crate) messages_per_sec: u64,
    /// Conversations.
    #[arg(long, default_value_t = 200)]
    pub(crate) conversations: u64,
    /// Members per conversation whose marks are checked (plus a few who
    /// join and leave all the time).
    #[arg(long, default_value_t = 20)]
    pub(crate) members: u64,
    /// Store directory (default: a temporary directory, removed at the
    /// end). An existing store is used as it is.
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// RocksDB memtable size per column family in MiB
    /// (`Config::write_buffer_bytes`; default: the store's, 32). The
    /// write-ahead log is capped at four of them.
    #[arg(long)]
    pub(crate) write_buffer_mib: Option<usize>,
    /// RocksDB block cache in MiB (`Config::block_cache_bytes`; default:
    /// the store's, 64).
    #[arg(long)]
    pub(crate) block_cache_mib: Option<usize>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Hide the per-interval lines while running.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// Users who join and leave conversations all the time; their marks are
/// not checked (a leave deletes them).
const CHURNERS: u64 = 4;

/// One interval of the worker, as it prints it.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
struct Interval {
    /// Seconds since the worker started.
    t: f64,
    updates: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    rss_mib: f64,
    /// Bytes the allocator has handed out and not got back (jemalloc's
    /// `stats.allocated`, RocksDB's C++ included): RSS minus this is the
    /// allocator's slack, the journal's mapped pages and stacks.
    heap_mib: f64,
    /// Pages the allocator holds resident (jemalloc's `stats.resident`):
    /// what it has not returned to the kernel.
    allocator_resident_mib: f64,
    /// What RocksDB's own accounting says it holds (`Store::memory_usage`).
    rocksdb_mib: f64,
    memtable_mib: f64,
    block_cache_mib: f64,
    events: u64,
    catch_ups: u64,
    reads: u64,
    messages: u64,
    churn: u64,
    errors: u64,
}

/// A report row: an interval with the parent's view added.
#[derive(Clone, Debug, Serialize)]
struct Row {
    /// Seconds since the soak started.
    at_s: f64,
    segment: usize,
    updates_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    rss_mib: f64,
    heap_mib: f64,
    allocator_resident_mib: f64,
    rocksdb_mib: f64,
    memtable_mib: f64,
    block_cache_mib: f64,
    journal_mib: f64,
    store_mib: f64,
    events: u64,
    catch_ups: u64,
    reads: u64,
    errors: u64,
}

/// What one kill and recovery showed.
#[derive(Clone, Debug, Serialize)]
struct Recovery {
    segment: usize,
    open_ms: f64,
    keys_checked: usize,
    lost: usize,
    backwards: usize,
}

#[derive(Serialize)]
struct Report {
    minutes: f64,
    kills: usize,
    rows: Vec<Row>,
    recoveries: Vec<Recovery>,
    acknowledged_keys: usize,
    lost: usize,
    backwards: usize,
    worker_errors: u64,
    /// Workers that ended other than as planned (killed, or a clean exit
    /// at the end).
    worker_failures: usize,
    verify_problems: usize,
    rss_mib_max: f64,
    journal_mib_max: f64,
    store_mib_first: f64,
    store_mib_last: f64,
    passed: bool,
}

fn config(args: &SoakArgs) -> Config {
    let mut config = Config::new().durability(Durability::ProcessCrash);
    if let Some(mib) = args.write_buffer_mib {
        config = config.write_buffer_bytes(mib << 20);
    }
    if let Some(mib) = args.block_cache_mib {
        config = config.block_cache_bytes(mib << 20);
    }
    config
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(md) if md.is_dir() => dir_bytes(&e.path()),
            Ok(md) => md.len(),
            Err(_) => 0,
        })
        .sum()
}

#[allow(clippy::cast_precision_loss)]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// The parent: runs workers segment by segment, kills them, checks.
pub(crate) fn run(args: &SoakArgs) -> readmark::Result<()> {
    eprintln!("allocator: {}", allocator_settings());
    let tmp;
    let dir = if let Some(d) = &args.dir {
        d.clone()
    } else {
        tmp = tempfile::tempdir()?;
        tmp.path().to_path_buf()
    };
    let exe = std::env::current_exe()?;
    let total = Duration::from_secs_f64(args.minutes.max(0.0) * 60.0);
    let segment_len = if args.kill_every > 0.0 {
        Duration::from_secs_f64(args.kill_every)
    } else {
        total
    };
    let start = Instant::now();
    let mut acked: HashMap<(u64, u64), u64> = HashMap::new();
    let mut rows = Vec::new();
    let mut recoveries = Vec::new();
    let mut worker_errors = 0;
    let mut segment = 0;
    if !args.quiet && !args.json {
        println!(
            "soak: {:.1} min, kill -9 every {} s, {} writers at {} updates/s, {} conversations of {}+{} members",
            args.minutes,
            args.kill_every,
            args.writers,
            args.rate,
            args.conversations,
            args.members,
            CHURNERS
        );
        println!("{}", header());
    }
    let (mut kills, mut worker_failures) = (0usize, 0usize);
    loop {
        let left = total.saturating_sub(start.elapsed());
        let last = left <= segment_len;
        // The last segment ends by itself (a clean close), and there always
        // is one, at least a report interval long; the others are killed
        // while they run.
        let worker_secs = if last {
            left.as_secs_f64().max(args.report_every.max(1.0))
        } else {
            segment_len.as_secs_f64() * 2.0
        };
        let mut child = Command::new(&exe)
            .arg("soak-worker")
            .arg("--worker-seconds")
            .arg(format!("{worker_secs:.3}"))
            .args(worker_args(args, &dir))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Io(std::io::Error::other("the worker has no stdout")))?;
        let seg_start = start.elapsed().as_secs_f64();
        let quiet = args.quiet || args.json;
        let dir2 = dir.clone();
        let reader = std::thread::spawn(move || {
            // The highest acknowledged mark per key: bounded by the keys
            // (a list of every acknowledgement grew by 20,000 entries a
            // second, past 1 GiB in this process in an hour's segment).
            let mut acks: HashMap<(u64, u64), u64> = HashMap::new();
            let mut rows = Vec::new();
            let mut errors = 0u64;
            let mut prev_t = 0.0;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("E ") {
                    // Every error of the worker, as it happens (a killed
                    // segment's last interval is never reported).
                    errors += 1;
                } else if let Some(rest) = line.strip_prefix("A ") {
                    let v: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
                    if let [c, u, m] = v[..] {
                        let e = acks.entry((c, u)).or_insert(0);
                        *e = (*e).max(m);
                    }
                } else if let Some(rest) = line.strip_prefix("S ") {
                    if let Ok(i) = serde_json::from_str::<Interval>(rest) {
                        let dt = (i.t - prev_t).max(1e-9);
                        prev_t = i.t;
                        #[allow(clippy::cast_precision_loss)]
                        let row = Row {
                            at_s: seg_start + i.t,
                            segment,
                            updates_per_s: i.updates as f64 / dt,
                            p50_us: i.p50_us,
                            p99_us: i.p99_us,
                            p999_us: i.p999_us,
                            max_us: i.max_us,
                            rss_mib: i.rss_mib,
                            heap_mib: i.heap_mib,
                            allocator_resident_mib: i.allocator_resident_mib,
                            rocksdb_mib: i.rocksdb_mib,
                            memtable_mib: i.memtable_mib,
                            block_cache_mib: i.block_cache_mib,
                            journal_mib: mib(dir_bytes(&dir2.join("readmark-journal"))),
                            store_mib: mib(dir_bytes(&dir2)),
                            events: i.events,
                            catch_ups: i.catch_ups,
                            reads: i.reads,
                            errors: i.errors,
                        };
                        if !quiet {
                            println!("{}", format_row(&row));
                            let _ = std::io::stdout().flush();
                        }
                        rows.push((row, i));
                    }
                }
            }
            (acks, rows, errors)
        });
        if last {
            let status = child.wait()?;
            if !status.success() {
                worker_failures += 1;
                eprintln!("soak: the last worker ended with {status}");
            }
        } else {
            let deadline = Instant::now() + segment_len;
            let mut early = None;
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait()? {
                    early = Some(status);
                    break;
                }
                std::thread::park_timeout(Duration::from_millis(100));
            }
            if let Some(status) = early {
                // It was to run until killed: it failed.
                worker_failures += 1;
                eprintln!("soak: worker of segment {segment} ended early with {status}");
            } else {
                child.kill()?; // SIGKILL
                child.wait()?;
                kills += 1;
            }
        }
        let (acks, seg_rows, errors) = reader
            .join()
            .map_err(|_| Error::Io(std::io::Error::other("the reader thread panicked")))?;
        worker_errors += errors;
        for (row, _) in seg_rows {
            rows.push(row);
        }
        let before: HashMap<(u64, u64), u64> = acked.clone();
        for ((c, u), m) in acks {
            let e = acked.entry((c, u)).or_insert(0);
            *e = (*e).max(m);
        }
        // Reopen (recovery) and check every acknowledged mark, and that no
        // mark is below what the previous check saw.
        let t0 = Instant::now();
        let store = Store::open(&dir, config(args))?;
        let open_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (mut lost, mut backwards) = (0, 0);
        for (&(c, u), &m) in &acked {
            let got = store
                .mark(ConversationId(c), UserId(u))?
                .map_or(0, |k| k.up_to.0);
            if got < m {
                lost += 1;
                if got < before.get(&(c, u)).copied().unwrap_or(0) {
                    backwards += 1;
                }
                eprintln!("soak: ({c}, {u}) acknowledged at {m}, recovered at {got}");
            }
            // What recovery shows becomes the floor of the next check.
        }
        for ((c, u), m) in &mut acked {
            if let Some(k) = store.mark(ConversationId(*c), UserId(*u))? {
                *m = (*m).max(k.up_to.0);
            }
        }
        store.close()?;
        recoveries.push(Recovery {
            segment,
            open_ms,
            keys_checked: acked.len(),
            lost,
            backwards,
        });
        segment += 1;
        if last {
            break;
        }
    }
    let report = readmark::verify(&dir)?;
    for p in &report.problems {
        eprintln!("soak: verify: {}: {} at {}", p.place, p.what, p.at);
    }
    let lost: usize = recoveries.iter().map(|r| r.lost).sum();
    let backwards: usize = recoveries.iter().map(|r| r.backwards).sum();
    let max = |f: fn(&Row) -> f64| rows.iter().map(f).fold(0.0, f64::max);
    let out = Report {
        minutes: start.elapsed().as_secs_f64() / 60.0,
        kills,
        acknowledged_keys: acked.len(),
        lost,
        backwards,
        worker_errors,
        verify_problems: report.problems.len(),
        rss_mib_max: max(|r| r.rss_mib),
        journal_mib_max: max(|r| r.journal_mib),
        store_mib_first: rows.first().map_or(0.0, |r| r.store_mib),
        store_mib_last: rows.last().map_or(0.0, |r| r.store_mib),
        passed: lost == 0
            && backwards == 0
            && report.problems.is_empty()
            && worker_errors == 0
            && worker_failures == 0
            && !acked.is_empty()
            && !rows.is_empty(),
        worker_failures,
        rows,
        recoveries,
    };
    if args.json {
        super::print_json(&out)?;
    } else {
        print_summary(&out);
    }
    if out.passed {
        Ok(())
    } else {
        Err(Error::InvalidArgument("soak: a check failed (see above)"))
    }
}

fn worker_args(args: &SoakArgs, dir: &Path) -> Vec<String> {
    vec![
        "--dir".into(),
        dir.display().to_string(),
        "--report-every".into(),
        args.report_every.to_string(),
        "--writers".into(),
        args.writers.to_string(),
        "--rate".into(),
        args.rate.to_string(),
        "--messages-per-sec".into(),
        args.messages_per_sec.to_string(),
        "--conversations".into(),
        args.conversations.to_string(),
        "--members".into(),
        args.members.to_string(),
    ]
    .into_iter()
    .chain(
        args.write_buffer_mib
            .map(|m| ["--write-buffer-mib".to_string(), m.to_string()])
            .into_iter()
            .flatten(),
    )
    .chain(
        args.block_cache_mib
            .map(|m| ["--block-cache-mib".to_string(), m.to_string()])
            .into_iter()
            .flatten(),
    )
    .collect()
}

fn header() -> String {
    format!(
        "{:>7} {:>3} {:>9} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6}",
        "time s",
        "seg",
        "updates/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "max us",
        "RSS MiB",
        "heapMiB",
        "resMiB",
        "rdb MiB",
        "jnl MiB",
        "db MiB",
        "events",
        "catchup",
        "errors"
    )
}

fn format_row(r: &Row) -> String {
    format!(
        "{:>7.0} {:>3} {:>9.0} {:>7.1} {:>7.1} {:>7.1} {:>8.0} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7} {:>7} {:>6}",
        r.at_s,
        r.segment,
        r.updates_per_s,
        r.p50_us,
        r.p99_us,
        r.p999_us,
        r.max_us,
        r.rss_mib,
        r.heap_mib,
        r.allocator_resident_mib,
        r.rocksdb_mib,
        r.journal_mib,
        r.store_mib,
        r.events,
        r.catch_ups,
        r.errors
    )
}

fn print_summary(r: &Report) {
    println!(
        "soak: {:.1} min, {} kills; RSS max {:.1} MiB, journal max {:.1} MiB, store {:.1} -> {:.1} MiB",
        r.minutes, r.kills, r.rss_mib_max, r.journal_mib_max, r.store_mib_first, r.store_mib_last
    );
    let slowest = r.recoveries.iter().map(|x| x.open_ms).fold(0.0, f64::max);
    println!(
        "checks: {} acknowledged keys checked after each of {} recoveries (slowest open {:.0} ms): {} lost, {} backwards; worker errors {}, workers ended unplanned {}; verify problems {}",
        r.acknowledged_keys,
        r.recoveries.len(),
        slowest,
        r.lost,
        r.backwards,
        r.worker_errors,
        r.worker_failures,
        r.verify_problems
    );
    println!("result: {}", if r.passed { "PASS" } else { "FAIL" });
}

// ---------------------------------------------------------------------------
// The worker.

/// Options of the hidden `readmark soak-worker`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    pub(crate) soak: SoakArgs,
    /// Seconds to run before closing the store cleanly.
    #[arg(long)]
    pub(crate) worker_seconds: f64,
}

struct Shared {
    store: Store,
    stop: AtomicBool,
    /// Newest message id per conversation (0: none yet).
    newest: Vec<AtomicU64>,
    hist: Mutex<Histogram<u64>>,
    updates: AtomicU64,
    events: AtomicU64,
    catch_ups: AtomicU64,
    reads: AtomicU64,
    messages: AtomicU64,
    churn: AtomicU64,
    errors: AtomicU64,
    acks: Mutex<HashMap<(u64, u64), u64>>,
    out: Mutex<std::io::Stdout>,
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Counts an unexpected error and tells the parent at once (an `E` line).
fn fail(s: &Shared, what: &str, e: &Error) {
    s.errors.fetch_add(1, Ordering::Relaxed);
    eprintln!("soak-worker: {what}: {e}");
    say(s, &format!("E {what}: {e}\n"));
}

/// Writes whole lines to the parent, flushed (a kill may come any time).
fn say(s: &Shared, lines: &str) {
    let mut out = s
        .out
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = out.write_all(lines.as_bytes());
    let _ = out.flush();
}

/// The worker process.
pub(crate) fn worker(args: &WorkerArgs) -> readmark::Result<()> {
    let a = &args.soak;
    let dir = a
        .dir
        .clone()
        .ok_or(Error::InvalidArgument("soak-worker needs --dir"))?;
    let store = Store::open(&dir, config(a))?;
    let convs = a.conversations.max(1);
    let members = a.members.max(1);
    for c in 0..convs {
        let c = ConversationId(c);
        match store.create_conversation(c) {
            Ok(()) | Err(Error::ConversationExists(_)) => {}
            Err(e) => return Err(e),
        }
        for u in 0..members {
            match store.add_member(c, UserId(u), Timestamp(0)) {
                Ok(()) | Err(Error::AlreadyMember { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let shared = Shared {
        store,
        stop: AtomicBool::new(false),
        newest: (0..convs).map(|_| AtomicU64::new(0)).collect(),
        hist: Mutex::new(Histogram::new(3).map_err(|_| Error::InvalidArgument("histogram"))?),
        updates: AtomicU64::new(0),
        events: AtomicU64::new(0),
        catch_ups: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        messages: AtomicU64::new(0),
        churn: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        acks: Mutex::new(HashMap::new()),
        out: Mutex::new(std::io::stdout()),
    };
    // A message in every conversation first, so every writer has something
    // to read; ids are microseconds since the epoch, so a later worker's
    // messages come after an earlier one's.
    for c in 0..convs {
        post(&shared, c, members);
    }
    let s = &shared;
    let run_for = Duration::from_secs_f64(args.worker_seconds.max(0.0));
    let report_every = Duration::from_secs_f64(a.report_every.max(0.1));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for w in 0..a.writers.max(1) {
            // 0 is "unpaced": a rate below the writer count is not.
            let per_writer = if a.rate == 0 {
                0
            } else {
                (a.rate / a.writers.max(1) as u64).max(1)
            };
            scope.spawn(move || writer(s, w as u64, per_writer, convs, members));
        }
        scope.spawn(move || poster(s, a.messages_per_sec, convs, members));
        scope.spawn(move || reader(s, convs, members));
        scope.spawn(move || subscriber(s));
        scope.spawn(move || catch_up(s, members));
        scope.spawn(move || churn(s, convs, members));
        scope.spawn(move || acks_out(s));
        // The reporter, on this thread.
        let mut next = started + report_every;
        let mut last = Counts::of(s);
        while started.elapsed() < run_for {
            let now = Instant::now();
            if now < next {
                std::thread::park_timeout(
                    (next - now).min(run_for - started.elapsed().min(run_for)),
                );
                continue;
            }
            next += report_every;
            let counts = Counts::of(s);
            let h = {
                let mut h = s
                    .hist
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let copy = h.clone();
                h.reset();
                copy
            };
            #[allow(clippy::cast_precision_loss)]
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
            let memory = s.store.memory_usage().unwrap_or_default();
            let heap = heap_mib();
            #[allow(clippy::cast_precision_loss)]
            let line = Interval {
                t: started.elapsed().as_secs_f64(),
                updates: counts.updates - last.updates,
                p50_us: us(0.5),
                p99_us: us(0.99),
                p999_us: us(0.999),
                max_us: h.max() as f64 / 1e3,
                rss_mib: super::measure::rss_mib("self"),
                heap_mib: heap.0,
                allocator_resident_mib: heap.1,
                rocksdb_mib: mib(memory.rocksdb_bytes()),
                memtable_mib: mib(memory.memtable_bytes),
                block_cache_mib: mib(memory.block_cache_bytes),
                events: counts.events - last.events,
                catch_ups: counts.catch_ups - last.catch_ups,
                reads: counts.reads - last.reads,
                messages: counts.messages - last.messages,
                churn: counts.churn - last.churn,
                errors: counts.errors - last.errors,
            };
            last = counts;
            if let Ok(text) = serde_json::to_string(&line) {
                say(s, &format!("S {text}\n"));
            }
        }
        s.stop.store(true, Ordering::Release);
    });
    flush_acks(s);
    shared.store.close()
}

struct Counts {
    updates: u64,
    events: u64,
    catch_ups: u64,
    reads: u64,
    messages: u64,
    churn: u64,
    errors: u64,
}

impl Counts {
    fn of(s: &Shared) -> Self {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            updates: l(&s.updates),
            events: l(&s.events),
            catch_ups: l(&s.catch_ups),
            reads: l(&s.reads),
            messages: l(&s.messages),
            churn: l(&s.churn),
            errors: l(&s.errors),
        }
    }
}

/// The allocator's bytes in use and pages resident, in MiB (jemalloc's
/// `stats.allocated` and `stats.resident`; zeros where the binary has no
/// jemalloc).
fn heap_mib() -> (f64, f64) {
    #[cfg(all(target_os = "linux", not(target_env = "msvc")))]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        // jemalloc's statistics are a snapshot refreshed by advancing the
        // epoch.
        if epoch::advance().is_ok() {
            let allocated = stats::allocated::read().unwrap_or(0);
            let resident = stats::resident::read().unwrap_or(0);
            return (mib(allocated as u64), mib(resident as u64));
        }
    }
    #[allow(unreachable_code)]
    (0.0, 0.0)
}

/// The allocator's settings in force, as jemalloc reports them (what the
/// binary's `malloc_conf` set).
fn allocator_settings() -> String {
    #[cfg(all(target_os = "linux", not(target_env = "msvc")))]
    {
        use tikv_jemalloc_ctl::raw;
        // SAFETY: these names are jemalloc's documented options, read as
        // the types jemalloc documents (bool, ssize_t).
        let (bg, dirty) = unsafe {
            (
                raw::read::<bool>(b"opt.background_thread\0"),
                raw::read::<isize>(b"opt.dirty_decay_ms\0"),
            )
        };
        return format!("jemalloc, background_thread {bg:?}, dirty_decay_ms {dirty:?}");
    }
    #[allow(unreachable_code)]
    "the system's".to_string()
}

/// Paces a loop at `per_sec` (0: no pacing): waits until operation `n` is
/// due.
fn pace(started: Instant, n: u64, per_sec: u64) {
    if per_sec == 0 {
        return;
    }
    #[allow(clippy::cast_precision_loss)]
    let due = started + Duration::from_secs_f64(n as f64 / per_sec as f64);
    let now = Instant::now();
    if due > now {
        std::thread::park_timeout(due - now);
    }
}

fn post(s: &Shared, c: u64, members: u64) {
    let sender = UserId(now_micros() % members);
    let prev = s.newest[c as usize].load(Ordering::Acquire);
    let id = now_micros().max(prev + 1);
    match s
        .store
        .record_message(ConversationId(c), MessageId(id), sender, Timestamp::now())
    {
        Ok(()) => {
            s.newest[c as usize].fetch_max(id, Ordering::AcqRel);
            s.messages.fetch_add(1, Ordering::Relaxed);
        }
        // Two posters never race on one conversation here, but a restarted
        // worker's clock may sit below the last id: take the next one.
        Err(Error::MessageOutOfOrder { last, .. }) => {
            s.newest[c as usize].fetch_max(last.0, Ordering::AcqRel);
        }
        Err(e) => fail(s, "record_message", &e),
    }
}

fn writer(s: &Shared, w: u64, per_sec: u64, convs: u64, members: u64) {
    let mut rng = 0x9E37_79B9_7F4A_7C15 ^ (w + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    let started = Instant::now();
    let mut n = 0u64;
    let mut mine: HashMap<(u64, u64), u64> = HashMap::new();
    let mut last_out = Instant::now();
    while !s.stop.load(Ordering::Acquire) {
        pace(started, n, per_sec);
        n += 1;
        let c = xorshift(&mut rng) % convs;
        let u = xorshift(&mut rng) % members;
        let newest = s.newest[c as usize].load(Ordering::Acquire);
        if newest == 0 {
            continue;
        }
        let t0 = Instant::now();
        let r = s.store.mark_read(
            ConversationId(c),
            UserId(u),
            MessageId(newest),
            Timestamp::now(),
        );
        let dt = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match r {
            Ok(()) => {
                s.updates.fetch_add(1, Ordering::Relaxed);
                let e = mine.entry((c, u)).or_insert(0);
                *e = (*e).max(newest);
                if let Ok(mut h) = s.hist.lock() {
                    let _ = h.record(dt.max(1));
                }
            }
            Err(e) => fail(s, "mark_read", &e),
        }
        if last_out.elapsed() >= Duration::from_millis(50) {
            let mut acks = s
                .acks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (k, m) in mine.drain() {
                let e = acks.entry(k).or_insert(0);
                *e = (*e).max(m);
            }
            last_out = Instant::now();
        }
    }
    let mut acks = s
        .acks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (k, m) in mine.drain() {
        let e = acks.entry(k).or_insert(0);
        *e = (*e).max(m);
    }
}

/// Prints what the writers acknowledged, every 50 ms: a mark is printed
/// only after its `mark_read` returned `Ok`.
fn acks_out(s: &Shared) {
    while !s.stop.load(Ordering::Acquire) {
        std::thread::park_timeout(Duration::from_millis(50));
        flush_acks(s);
    }
}

fn flush_acks(s: &Shared) {
    let acks: Vec<((u64, u64), u64)> = s
        .acks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .drain()
        .collect();
    if acks.is_empty() {
        return;
    }
    let mut text = String::with_capacity(acks.len() * 24);
    for ((c, u), m) in acks {
        text.push_str(&format!("A {c} {u} {m}\n"));
    }
    say(s, &text);
}

fn poster(s: &Shared, per_sec: u64, convs: u64, members: u64) {
    let mut rng = 0x1234_5678_9ABC_DEF1u64;
    let started = Instant::now();
    let mut n = 0u64;
    while !s.stop.load(Ordering::Acquire) {
        pace(started, n, per_sec.max(1));
        n += 1;
        post(s, xorshift(&mut rng) % convs, members);
    }
}

fn reader(s: &Shared, convs: u64, members: u64) {
    let mut rng = 0x0F0F_1234_5555_AAAAu64;
    while !s.stop.load(Ordering::Acquire) {
        let c = ConversationId(xorshift(&mut rng) % convs);
        let u = UserId(xorshift(&mut rng) % members);
        let newest = MessageId(s.newest[c.0 as usize].load(Ordering::Acquire));
        let r = match xorshift(&mut rng) % 3 {
            0 if newest.0 > 0 => s.store.read_by(c, u, newest, Page::first(50)).map(|_| ()),
            1 if newest.0 > 0 => s.store.read_count(c, u, newest).map(|_| ()),
            _ => s.store.unread_counts(u).map(|_| ()),
        };
        match r {
            Ok(()) => {
                s.reads.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => fail(s, "read", &e),
        }
        // Readers take turns with the writers rather than saturate a core.
        std::thread::park_timeout(Duration::from_micros(200));
    }
}

fn subscriber(s: &Shared) {
    let events = s.store.subscribe();
    while !s.stop.load(Ordering::Acquire) {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(_)) => {
                s.events.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(e) => fail(s, "subscription", &e),
        }
    }
}

fn catch_up(s: &Shared, members: u64) {
    let mut cursors: HashMap<u64, Cursor> = HashMap::new();
    let mut rng = 0xDEAD_BEEF_0000_0001u64;
    while !s.stop.load(Ordering::Acquire) {
        let u = xorshift(&mut rng) % members;
        let r = match cursors.get(&u) {
            None => s.store.snapshot(UserId(u)).map(|snap| snap.cursor),
            Some(&cursor) => match s.store.changes_since(UserId(u), cursor, 200) {
                Ok(CatchUp::Changes(page)) => Ok(page.next),
                Ok(CatchUp::SnapshotRequired) => {
                    s.store.snapshot(UserId(u)).map(|snap| snap.cursor)
                }
                Err(e) => Err(e),
            },
        };
        match r {
            Ok(next) => {
                cursors.insert(u, next);
                s.catch_ups.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => fail(s, "catch-up", &e),
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

fn churn(s: &Shared, convs: u64, members: u64) {
    let mut rng = 0xC0FF_EE00_1234_0001u64;
    while !s.stop.load(Ordering::Acquire) {
        let c = ConversationId(xorshift(&mut rng) % convs);
        let u = UserId(members + xorshift(&mut rng) % CHURNERS);
        let r = if xorshift(&mut rng).is_multiple_of(2) {
            match s.store.add_member(c, u, Timestamp::now()) {
                Err(Error::AlreadyMember { .. }) => Ok(()),
                other => other,
            }
        } else {
            match s.store.remove_member(c, u) {
                Err(Error::NotMember { .. }) => Ok(()),
                other => other,
            }
        };
        match r {
            Ok(()) => {
                s.churn.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => fail(s, "membership", &e),
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}
