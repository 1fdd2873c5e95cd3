//! `readmark bench`: one generated operation stream replayed, in one
//! invocation, through readmark at each durability level and through the
//! designs a backend team would otherwise pick, side by side.
//!
//! The stream (`generate`): the demo's world (DMs, groups of 3–50, channels
//! of hundreds to thousands, Zipf activity). When a member opens a
//! conversation, other members first post until `burst` messages are new to
//! them; they then scroll past those messages (one read update each, 100 ms
//! apart) and leave. `burst` is the number of updates per key per flush: the
//! combining factor, swept by `--burst 1,10,50`.
//!
//! What each design does with it:
//!
//! | design | a read update | acknowledged update survives |
//! |---|---|---|
//! | readmark `Memory` / `ProcessCrash` / `PowerLoss` | `mark_read`; leave = `flush_key`; sends = `record_message` | clean close / process crash / power loss |
//! | naive rows | RocksDB put of (conversation, message, user) -> time, WAL | process crash (WAL unsynced) or power loss (sync per put) |
//! | merge per update | RocksDB merge of (conversation, user) -> (up_to, at) with a max operator, WAL | as above |
//! | SQLite upsert | `INSERT .. ON CONFLICT DO UPDATE .. WHERE excluded.up_to > up_to`, one statement (= transaction) per update, WAL mode | process crash (`synchronous=NORMAL`) or power loss (`FULL`) |
//! | HashMap | insert keeping the max | nothing |
//!
//! Sends and membership exist only in readmark (the others store no
//! messages); sends are not timed. Throughput is logical updates divided by
//! the time spent in the update path (read updates and leaves), so it is the
//! same quantity for every design; CPU time is the whole process's (flush
//! thread and RocksDB's background work included). Power-loss rows replay
//! only the first `--sync-updates` updates of the stream: an fsync per
//! update makes the full stream take minutes.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use readmark::{Config, ConversationId, Durability, MessageId, Store, Timestamp, UserId};
use serde::Serialize;

use super::measure::{cpu_micros, proc_write_bytes, Spread};
use super::workload::{Step, Workload, WorldParams};
use super::BenchArgs;

/// One operation of the generated stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Send {
        conv: u64,
        msg: u64,
        sender: u64,
        t: u64,
    },
    Read {
        conv: u64,
        user: u64,
        msg: u64,
        t: u64,
    },
    Leave {
        conv: u64,
        user: u64,
    },
}

/// The world and the operations, generated once per burst size.
pub(crate) struct Stream {
    pub(crate) convs: Vec<(u64, Vec<u64>)>,
    pub(crate) ops: Vec<Op>,
    pub(crate) updates: u64,
}

/// Same seed, same parameters: same stream (tested below).
pub(crate) fn generate(seed: u64, users: u64, updates: u64, burst: u64, start_ms: u64) -> Stream {
    let mut w = Workload::new(seed, &WorldParams::for_users(users));
    let convs: Vec<(u64, Vec<u64>)> = w.convs.iter().map(|c| (c.id, c.members.clone())).collect();
    let mut msgs: Vec<Vec<u64>> = vec![Vec::new(); convs.len()];
    let mut seen: HashMap<(usize, u64), usize> = HashMap::new();
    let mut next_id = 1u64;
    let mut t = start_ms;
    let mut ops = Vec::new();
    let mut done = 0u64;
    let burst = burst.max(1);
    let mut send = |ops: &mut Vec<Op>, msgs: &mut Vec<Vec<u64>>, i: usize, sender: u64, t: u64| {
        msgs[i].push(next_id);
        ops.push(Op::Send {
            conv: convs[i].0,
            msg: next_id,
            sender,
            t,
        });
        next_id += 1;
    };
    while done < updates {
        match w.next_step() {
            Step::Messages {
                conv,
                sender,
                count,
            } => {
                for _ in 0..count {
                    t += 200;
                    send(&mut ops, &mut msgs, conv, sender, t);
                }
                // The sender has read everything up to their message.
                seen.insert((conv, sender), msgs[conv].len());
            }
            Step::Read { conv, reader } => {
                let members = &convs[conv].1;
                let from = seen.get(&(conv, reader)).copied().unwrap_or(0);
                let want = usize::try_from(burst.min(updates - done)).unwrap_or(usize::MAX);
                while msgs[conv].len() < from + want {
                    let others: Vec<u64> =
                        members.iter().copied().filter(|&m| m != reader).collect();
                    let sender = others[w.rng.random_range(0..others.len())];
                    t += 200;
                    send(&mut ops, &mut msgs, conv, sender, t);
                }
                for k in 0..want {
                    t += 100;
                    ops.push(Op::Read {
                        conv: convs[conv].0,
                        user: reader,
                        msg: msgs[conv][from + k],
                        t,
                    });
                }
                seen.insert((conv, reader), from + want);
                done += want as u64;
                ops.push(Op::Leave {
                    conv: convs[conv].0,
                    user: reader,
                });
            }
        }
    }
    Stream {
        convs,
        ops,
        updates: done,
    }
}

/// The designs compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Design {
    Readmark(Durability),
    NaiveRows { sync: bool },
    MergePerUpdate { sync: bool },
    Sqlite { full: bool },
    HashMap,
}

impl Design {
    pub(crate) fn all() -> Vec<Design> {
        vec![
            Design::Readmark(Durability::Memory),
            Design::Readmark(Durability::ProcessCrash),
            Design::NaiveRows { sync: false },
            Design::MergePerUpdate { sync: false },
            Design::Sqlite { full: false },
            Design::Readmark(Durability::PowerLoss),
            Design::NaiveRows { sync: true },
            Design::MergePerUpdate { sync: true },
            Design::Sqlite { full: true },
            Design::HashMap,
        ]
    }

    fn name(self) -> String {
        match self {
            Design::Readmark(d) => format!("readmark {d:?}"),
            Design::NaiveRows { sync } => format!("naive rows{}", if sync { " +sync" } else { "" }),
            Design::MergePerUpdate { sync } => {
                format!("merge/update{}", if sync { " +sync" } else { "" })
            }
            Design::Sqlite { full } => format!("sqlite {}", if full { "FULL" } else { "NORMAL" }),
            Design::HashMap => "HashMap".to_string(),
        }
    }

    fn survives(self) -> &'static str {
        match self {
            Design::Readmark(Durability::Memory) => "clean close",
            Design::HashMap => "nothing",
            Design::Readmark(Durability::PowerLoss)
            | Design::NaiveRows { sync: true }
            | Design::MergePerUpdate { sync: true }
            | Design::Sqlite { full: true } => "power loss",
            _ => "process crash",
        }
    }

    fn syncs_each_update(self) -> bool {
        matches!(
            self,
            Design::Readmark(Durability::PowerLoss)
                | Design::NaiveRows { sync: true }
                | Design::MergePerUpdate { sync: true }
                | Design::Sqlite { full: true }
        )
    }

    /// The readmark row a design's ratios are taken against: the one whose
    /// acknowledged updates survive the same failures.
    fn reference(self) -> Design {
        match self.survives() {
            "power loss" => Design::Readmark(Durability::PowerLoss),
            "process crash" => Design::Readmark(Durability::ProcessCrash),
            _ => Design::Readmark(Durability::Memory),
        }
    }
}

/// What one run of one design measured.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct RunResult {
    updates: u64,
    update_secs: f64,
    p50_us: f64,
    p99_us: f64,
    durable_writes: u64,
    /// readmark: how many of `durable_writes` were written on leave.
    durable_writes_on_leave: Option<u64>,
    fsyncs: Option<u64>,
    keys_written: u64,
    proc_write_bytes: u64,
    rocksdb_bytes_written: Option<u64>,
    rocksdb_wal_bytes: Option<u64>,
    rocksdb_flush_bytes: Option<u64>,
    rocksdb_compaction_bytes: Option<u64>,
    disk_bytes: u64,
    /// readmark's journal: two preallocated segments of fixed size.
    journal_bytes: u64,
    cpu_us: u64,
}

trait Replayer {
    fn send(&mut self, conv: u64, msg: u64, sender: u64, t: u64) -> readmark::Result<()>;
    fn read(&mut self, conv: u64, user: u64, msg: u64, t: u64) -> readmark::Result<()>;
    fn leave(&mut self, conv: u64, user: u64) -> readmark::Result<()>;
    /// Flushes what is buffered, closes, and reports its own counters:
    /// (durable writes, fsyncs, keys written, RocksDB I/O).
    fn finish(self: Box<Self>) -> readmark::Result<Counters>;
}

#[derive(Default)]
struct Counters {
    durable_writes: u64,
    fsyncs: Option<u64>,
    keys_written: u64,
    rocksdb: Option<[u64; 4]>,
    /// Disk bytes and CPU measured inside calls that are not updates
    /// (readmark's `record_message`), taken out of the update figures.
    send_write_bytes: u64,
    send_cpu_us: u64,
    /// readmark: batches written by `flush_key` when a user leaves.
    leave_batches: Option<u64>,
}

struct ReadmarkReplayer {
    store: Store,
    before: readmark::Stats,
    /// What `record_message` calls wrote and cost, measured around each.
    send_keys: u64,
    send_batches: u64,
    leave_batches: u64,
    send_fsyncs: u64,
    send_write_bytes: u64,
    send_cpu_us: u64,
}

impl Replayer for ReadmarkReplayer {
    fn send(&mut self, conv: u64, msg: u64, sender: u64, t: u64) -> readmark::Result<()> {
        let (s0, w0, c0) = (self.store.stats(), proc_write_bytes(), cpu_micros());
        self.store.record_message(
            ConversationId(conv),
            MessageId(msg),
            UserId(sender),
            Timestamp(t),
        )?;
        let s1 = self.store.stats();
        self.send_write_bytes += proc_write_bytes().saturating_sub(w0);
        self.send_cpu_us += cpu_micros().saturating_sub(c0);
        // The sender's advance may trigger a flush inside the call (the
        // per-key update count): its batch and keys are the send's.
        self.send_keys += (s1.keys_written - s0.keys_written)
            + (s1.receipt_operands - s0.receipt_operands)
            + (s1.read_time_records - s0.read_time_records);
        self.send_batches += s1.durable_batches - s0.durable_batches;
        self.send_fsyncs += s1.fsyncs - s0.fsyncs;
        Ok(())
    }
    fn read(&mut self, conv: u64, user: u64, msg: u64, t: u64) -> readmark::Result<()> {
        self.store.mark_read(
            ConversationId(conv),
            UserId(user),
            MessageId(msg),
            Timestamp(t),
        )
    }
    fn leave(&mut self, conv: u64, user: u64) -> readmark::Result<()> {
        // The flusher writes the key within `flush_delay`, batched with
        // the others sealed meanwhile: nothing on this thread.
        self.store.seal(ConversationId(conv), UserId(user));
        self.leave_batches += 1;
        Ok(())
    }
    fn finish(self: Box<Self>) -> readmark::Result<Counters> {
        self.store.flush()?;
        let s = self.store.stats();
        let io = self.store.rocksdb_io();
        self.store.close()?;
        let b = &self.before;
        Ok(Counters {
            durable_writes: s.durable_batches - b.durable_batches - self.send_batches,
            fsyncs: Some(s.fsyncs - b.fsyncs - self.send_fsyncs),
            // Marks, plus the per-message receipts their advances wrote
            // (not those of the senders' own advances).
            keys_written: (s.keys_written - b.keys_written)
                + (s.receipt_operands - b.receipt_operands)
                + (s.read_time_records - b.read_time_records)
                - self.send_keys,
            rocksdb: Some([
                io.bytes_written,
                io.wal_bytes,
                io.flush_bytes,
                io.compaction_bytes,
            ]),
            send_write_bytes: self.send_write_bytes,
            send_cpu_us: self.send_cpu_us,
            leave_batches: Some(self.leave_batches),
        })
    }
}

/// Plain RocksDB designs: one put (naive rows) or one merge (merge per
/// update) per read update.
struct RocksReplayer {
    db: rocksdb::DB,
    opts: rocksdb::Options,
    wo: rocksdb::WriteOptions,
    merge: bool,
    writes: u64,
}

fn max_merge(
    _key: &[u8],
    existing: Option<&[u8]>,
    ops: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    // (up_to u64 BE, at u64 BE); the largest up_to wins. Total: short
    // inputs are ignored.
    let mut best: Option<[u8; 16]> = None;
    for v in existing.into_iter().chain(ops.iter()) {
        let Ok(v) = <[u8; 16]>::try_from(v) else {
            continue;
        };
        if best.is_none_or(|b| v[..8] > b[..8]) {
            best = Some(v);
        }
    }
    Some(best.map_or_else(Vec::new, |b| b.to_vec()))
}

impl RocksReplayer {
    fn open(path: &Path, merge: bool, sync: bool) -> readmark::Result<Self> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.enable_statistics();
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_write_buffer_size(32 << 20);
        if merge {
            opts.set_merge_operator_associative("bench.max", max_merge);
        }
        let db = rocksdb::DB::open(&opts, path)?;
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        Ok(Self {
            db,
            opts,
            wo,
            merge,
            writes: 0,
        })
    }
}

/// Three ids as a 24-byte big-endian key (the naive design's row key).
pub(crate) fn key3(a: u64, b: u64, c: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..16].copy_from_slice(&b.to_be_bytes());
    k[16..].copy_from_slice(&c.to_be_bytes());
    k
}

impl Replayer for RocksReplayer {
    fn send(&mut self, _: u64, _: u64, _: u64, _: u64) -> readmark::Result<()> {
        Ok(())
    }
    fn read(&mut self, conv: u64, user: u64, msg: u64, t: u64) -> readmark::Result<()> {
        self.writes += 1;
        if self.merge {
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&msg.to_be_bytes());
            v[8..].copy_from_slice(&t.to_be_bytes());
            let k = key3(conv, user, 0);
            self.db.merge_opt(&k[..16], v, &self.wo)?;
        } else {
            self.db
                .put_opt(key3(conv, msg, user), t.to_be_bytes(), &self.wo)?;
        }
        Ok(())
    }
    fn leave(&mut self, _: u64, _: u64) -> readmark::Result<()> {
        Ok(())
    }
    fn finish(self: Box<Self>) -> readmark::Result<Counters> {
        use rocksdb::statistics::Ticker;
        self.db.flush()?;
        let t = |k| self.opts.get_ticker_count(k);
        let c = Counters {
            durable_writes: self.writes,
            fsyncs: Some(t(Ticker::WalFileSynced)),
            keys_written: self.writes,
            rocksdb: Some([
                t(Ticker::BytesWritten),
                t(Ticker::WalFileBytes),
                t(Ticker::FlushWriteBytes),
                t(Ticker::CompactWriteBytes),
            ]),
            ..Counters::default()
        };
        drop(self.db);
        Ok(c)
    }
}

struct SqliteReplayer {
    conn: rusqlite::Connection,
    writes: u64,
}

fn sql(e: rusqlite::Error) -> readmark::Error {
    readmark::Error::Io(std::io::Error::other(e))
}

impl SqliteReplayer {
    fn open(path: &Path, full: bool) -> readmark::Result<Self> {
        let conn = rusqlite::Connection::open(path.join("marks.db")).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })
            .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE marks (conv INTEGER NOT NULL, user INTEGER NOT NULL,
                                 up_to INTEGER NOT NULL, at INTEGER NOT NULL,
                                 PRIMARY KEY (conv, user)) WITHOUT ROWID;",
        )
        .map_err(sql)?;
        Ok(Self { conn, writes: 0 })
    }
}

impl Replayer for SqliteReplayer {
    fn send(&mut self, _: u64, _: u64, _: u64, _: u64) -> readmark::Result<()> {
        Ok(())
    }
    fn read(&mut self, conv: u64, user: u64, msg: u64, t: u64) -> readmark::Result<()> {
        #[allow(clippy::cast_possible_wrap)]
        let p = (conv as i64, user as i64, msg as i64, t as i64);
        self.conn
            .prepare_cached(
                "INSERT INTO marks VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (conv, user) DO UPDATE SET up_to = excluded.up_to, at = excluded.at
                 WHERE excluded.up_to > marks.up_to",
            )
            .and_then(|mut s| s.execute(p))
            .map_err(sql)?;
        self.writes += 1;
        Ok(())
    }
    fn leave(&mut self, _: u64, _: u64) -> readmark::Result<()> {
        Ok(())
    }
    fn finish(self: Box<Self>) -> readmark::Result<Counters> {
        // Move the WAL into the database file, as RocksDB's memtable flush
        // moves data into SSTs, so the bytes compare like for like.
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(sql)?;
        Ok(Counters {
            durable_writes: self.writes,
            fsyncs: None,
            keys_written: self.writes,
            ..Counters::default()
        })
    }
}

#[derive(Default)]
struct MapReplayer {
    map: HashMap<(u64, u64), (u64, u64)>,
    writes: u64,
}

impl Replayer for MapReplayer {
    fn send(&mut self, _: u64, _: u64, _: u64, _: u64) -> readmark::Result<()> {
        Ok(())
    }
    fn read(&mut self, conv: u64, user: u64, msg: u64, t: u64) -> readmark::Result<()> {
        let e = self.map.entry((conv, user)).or_insert((msg, t));
        if msg > e.0 {
            *e = (msg, t);
        }
        self.writes += 1;
        Ok(())
    }
    fn leave(&mut self, _: u64, _: u64) -> readmark::Result<()> {
        Ok(())
    }
    fn finish(self: Box<Self>) -> readmark::Result<Counters> {
        std::hint::black_box(&self.map);
        Ok(Counters {
            durable_writes: 0,
            fsyncs: Some(0),
            keys_written: self.writes,
            ..Counters::default()
        })
    }
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Replays `ops` (all of them, or the prefix holding `limit` updates)
/// through `design` in a fresh temporary directory.
fn run_once(
    stream: &Stream,
    design: Design,
    limit: u64,
    receipt_threshold: u32,
    bar: &ProgressBar,
) -> readmark::Result<RunResult> {
    let dir = tempfile::tempdir()?;
    let mut r: Box<dyn Replayer> = match design {
        Design::Readmark(level) => {
            let config = Config::new()
                .durability(level)
                .statistics(true)
                .receipt_threshold(receipt_threshold);
            let store = Store::open(dir.path(), config)?;
            for (c, members) in &stream.convs {
                store.create_conversation(ConversationId(*c))?;
                for &u in members {
                    store.add_member(ConversationId(*c), UserId(u), Timestamp::now())?;
                }
            }
            let before = store.stats();
            Box::new(ReadmarkReplayer {
                store,
                before,
                send_keys: 0,
                send_batches: 0,
                leave_batches: 0,
                send_fsyncs: 0,
                send_write_bytes: 0,
                send_cpu_us: 0,
            })
        }
        Design::NaiveRows { sync } => Box::new(RocksReplayer::open(dir.path(), false, sync)?),
        Design::MergePerUpdate { sync } => Box::new(RocksReplayer::open(dir.path(), true, sync)?),
        Design::Sqlite { full } => Box::new(SqliteReplayer::open(dir.path(), full)?),
        Design::HashMap => Box::new(MapReplayer::default()),
    };
    let mut hist =
        Histogram::<u64>::new(3).map_err(|_| readmark::Error::InvalidArgument("histogram"))?;
    let write0 = proc_write_bytes();
    let cpu0 = cpu_micros();
    let mut in_updates = Duration::ZERO;
    let mut updates = 0u64;
    for op in &stream.ops {
        match *op {
            Op::Send {
                conv,
                msg,
                sender,
                t,
            } => r.send(conv, msg, sender, t)?,
            Op::Read { conv, user, msg, t } => {
                if updates >= limit {
                    break;
                }
                let t0 = Instant::now();
                r.read(conv, user, msg, t)?;
                let took = t0.elapsed();
                in_updates += took;
                hist.record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1))
                    .ok();
                updates += 1;
                if updates.is_multiple_of(1024) {
                    bar.inc(1024);
                }
            }
            Op::Leave { conv, user } => {
                let t0 = Instant::now();
                r.leave(conv, user)?;
                in_updates += t0.elapsed();
            }
        }
    }
    bar.inc(updates % 1024);
    let c = r.finish()?;
    let proc_bytes = proc_write_bytes()
        .saturating_sub(write0)
        .saturating_sub(c.send_write_bytes);
    let cpu = cpu_micros()
        .saturating_sub(cpu0)
        .saturating_sub(c.send_cpu_us);
    #[allow(clippy::cast_precision_loss)]
    let us = |ns: u64| ns as f64 / 1_000.0;
    Ok(RunResult {
        updates,
        update_secs: in_updates.as_secs_f64(),
        p50_us: us(hist.value_at_quantile(0.50)),
        p99_us: us(hist.value_at_quantile(0.99)),
        durable_writes: c.durable_writes,
        durable_writes_on_leave: c.leave_batches,
        fsyncs: c.fsyncs,
        keys_written: c.keys_written,
        proc_write_bytes: proc_bytes,
        rocksdb_bytes_written: c.rocksdb.map(|x| x[0]),
        rocksdb_wal_bytes: c.rocksdb.map(|x| x[1]),
        rocksdb_flush_bytes: c.rocksdb.map(|x| x[2]),
        rocksdb_compaction_bytes: c.rocksdb.map(|x| x[3]),
        disk_bytes: dir_bytes(dir.path()),
        journal_bytes: dir_bytes(&dir.path().join("readmark-journal")),
        cpu_us: cpu,
    })
}

/// One design at one burst size: medians and spreads over the runs.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    burst: u64,
    design: String,
    survives: &'static str,
    updates: u64,
    updates_per_sec: Spread,
    p50_us: Spread,
    p99_us: Spread,
    durable_writes_per_1k: f64,
    fsyncs_per_1k: Option<f64>,
    keys_written_per_1k: f64,
    disk_write_bytes_per_update: f64,
    rocksdb_bytes_per_update: Option<f64>,
    store_bytes: u64,
    journal_bytes: u64,
    cpu_us_per_update: f64,
    /// This design's updates/s over the readmark row of equal durability.
    speed_vs_readmark: f64,
    /// This design's durable writes over that readmark row's.
    durable_writes_vs_readmark: f64,
    runs: Vec<RunResult>,
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn run(args: &BenchArgs) -> readmark::Result<()> {
    let designs = Design::all();
    let start_ms = Timestamp::now().get();
    let per_burst: u64 = designs
        .iter()
        .map(|d| {
            if d.syncs_each_update() {
                args.sync_updates.min(args.updates)
            } else {
                args.updates
            }
        })
        .sum::<u64>()
        * args.runs;
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(per_burst * args.burst.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} bench [{bar:30}] {pos}/{len} updates ({per_sec}, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut rows: Vec<Row> = Vec::new();
    for &burst in &args.burst {
        let stream = generate(args.seed, args.users, args.updates, burst, start_ms);
        let mut measured: Vec<(Design, Vec<RunResult>)> = Vec::new();
        for &d in &designs {
            let limit = if d.syncs_each_update() {
                args.sync_updates.min(stream.updates)
            } else {
                stream.updates
            };
            let mut runs = Vec::new();
            for r in 0..args.runs {
                bar.set_message(format!(
                    "burst {burst}: {} run {}/{}",
                    d.name(),
                    r + 1,
                    args.runs
                ));
                runs.push(run_once(&stream, d, limit, args.receipt_threshold, &bar)?);
            }
            measured.push((d, runs));
        }
        let median = |runs: &[RunResult], g: &dyn Fn(&RunResult) -> f64| {
            Spread::of(&runs.iter().map(g).collect::<Vec<_>>())
        };
        let per_1k = |runs: &[RunResult], g: &dyn Fn(&RunResult) -> u64| {
            let u: u64 = runs.iter().map(|r| r.updates).sum();
            runs.iter().map(g).sum::<u64>() as f64 / u.max(1) as f64 * 1_000.0
        };
        let find = |d: Design| measured.iter().find(|m| m.0 == d).map(|m| &m.1);
        for (d, runs) in &measured {
            let ups = median(runs, &|r| r.updates as f64 / r.update_secs.max(1e-9));
            let dw = per_1k(runs, &|r| r.durable_writes);
            let reference = find(d.reference()).map_or((ups.median, dw), |rr| {
                (
                    median(rr, &|r| r.updates as f64 / r.update_secs.max(1e-9)).median,
                    per_1k(rr, &|r| r.durable_writes),
                )
            });
            let total_updates: u64 = runs.iter().map(|r| r.updates).sum::<u64>().max(1);
            rows.push(Row {
                burst,
                design: d.name(),
                survives: d.survives(),
                updates: runs.first().map_or(0, |r| r.updates),
                updates_per_sec: ups,
                p50_us: median(runs, &|r| r.p50_us),
                p99_us: median(runs, &|r| r.p99_us),
                durable_writes_per_1k: dw,
                fsyncs_per_1k: runs
                    .iter()
                    .map(|r| r.fsyncs)
                    .sum::<Option<u64>>()
                    .map(|f| f as f64 / total_updates as f64 * 1_000.0),
                keys_written_per_1k: per_1k(runs, &|r| r.keys_written),
                disk_write_bytes_per_update: runs.iter().map(|r| r.proc_write_bytes).sum::<u64>()
                    as f64
                    / total_updates as f64,
                rocksdb_bytes_per_update: runs
                    .iter()
                    .map(|r| r.rocksdb_bytes_written)
                    .sum::<Option<u64>>()
                    .map(|b| b as f64 / total_updates as f64),
                store_bytes: runs.last().map_or(0, |r| r.disk_bytes),
                journal_bytes: runs.last().map_or(0, |r| r.journal_bytes),
                cpu_us_per_update: runs.iter().map(|r| r.cpu_us).sum::<u64>() as f64
                    / total_updates as f64,
                speed_vs_readmark: ups.median / reference.0.max(1e-9),
                durable_writes_vs_readmark: if reference.1 > 0.0 {
                    dw / reference.1
                } else {
                    f64::NAN
                },
                runs: runs.clone(),
            });
        }
    }
    bar.finish_and_clear();
    if let Some(path) = &args.plot {
        std::fs::write(path, super::plot::svg(&rows_for_plot(&rows)))?;
    }
    if args.json {
        return super::print_json(&rows);
    }
    print_table(args, &rows);
    Ok(())
}

fn rows_for_plot(rows: &[Row]) -> Vec<(u64, String, f64, f64)> {
    rows.iter()
        .map(|r| {
            (
                r.burst,
                r.design.clone(),
                r.updates_per_sec.median,
                r.durable_writes_per_1k,
            )
        })
        .collect()
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.prec$}"))
}

fn print_table(args: &BenchArgs, rows: &[Row]) {
    println!(
        "bench: seed {}, {} users, {} updates per design and run ({} for power-loss rows), {} runs each, medians (± half the range, % of the median)",
        args.seed, args.users, args.updates, args.sync_updates, args.runs
    );
    println!(
        "readmark keeps per-message receipts in conversations of at most {} members{}",
        args.receipt_threshold,
        if args.receipt_threshold == 0 {
            " (none: marks only)"
        } else {
            ""
        }
    );
    for burst in &args.burst {
        println!();
        println!("burst {burst}: open a conversation, scroll past {burst} new messages (one update each), leave");
        println!(
            "{:<22} {:<13} {:>20} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>8} {:>10} {:>7} {:>7}",
            "design",
            "ack survives",
            "updates/s (spread)",
            "p50 us",
            "p99 us",
            "dur.wr/1k",
            "fsync/1k",
            "keys/1k",
            "disk B/up",
            "cpu us",
            "data KiB",
            "speed",
            "writes"
        );
        for r in rows.iter().filter(|r| r.burst == *burst) {
            println!(
                "{:<22} {:<13} {:>12.0} ({:>4.0}%) {:>8.2} {:>8.2} {:>9.1} {:>8} {:>9.1} {:>9.1} {:>8.2} {:>10.0} {:>6.2}x {:>6.1}x",
                r.design,
                r.survives,
                r.updates_per_sec.median,
                r.updates_per_sec.spread_pct(),
                r.p50_us.median,
                r.p99_us.median,
                r.durable_writes_per_1k,
                opt(r.fsyncs_per_1k, 1),
                r.keys_written_per_1k,
                r.disk_write_bytes_per_update,
                r.cpu_us_per_update,
                r.store_bytes.saturating_sub(r.journal_bytes) as f64 / 1024.0,
                r.speed_vs_readmark,
                r.durable_writes_vs_readmark,
            );
        }
    }
    println!();
    println!("dur.wr: durable writes (readmark: RocksDB batches its flushes wrote; others: one per update); keys: RocksDB keys / SQLite rows written");
    println!("(readmark: marks + per-message receipt operands + read-time runs); disk B/up: /proc/self/io write_bytes / updates, close included;");
    println!("speed, writes: this row over the readmark row whose acknowledged updates survive the same failures (writes: durable writes).");
    println!("readmark also records every message and advances its sender's mark (the others do neither): record_message calls are not timed,");
    println!("and the disk bytes, CPU, fsyncs, batches and keys measured inside them are left out; timed flushes (which also write senders'");
    println!("buffered advances), background flushes and compactions are not. data KiB: store");
    println!(
        "directory after close, minus readmark's journal (two preallocated segments, {} KiB).",
        rows.iter().map(|r| r.journal_bytes).max().unwrap_or(0) / 1024
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a = generate(3, 400, 2_000, 10, 0);
        let b = generate(3, 400, 2_000, 10, 0);
        assert_eq!(a.ops, b.ops);
        assert_eq!(a.convs, b.convs);
        assert_eq!(a.updates, 2_000);
        let c = generate(4, 400, 2_000, 10, 0);
        assert_ne!(a.ops, c.ops);
    }

    #[test]
    fn every_session_scrolls_exactly_burst_new_messages() {
        let s = generate(5, 300, 3_000, 50, 0);
        let mut run = 0u64;
        let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
        for op in &s.ops {
            match *op {
                Op::Read {
                    conv, user, msg, ..
                } => {
                    let last = seen.insert((conv, user), msg);
                    assert!(last.is_none_or(|l| msg > l), "reads move forward");
                    run += 1;
                }
                Op::Leave { .. } => {
                    assert_eq!(run, 50);
                    run = 0;
                }
                Op::Send { .. } => assert_eq!(run, 0, "no send inside a session"),
            }
        }
    }
}
