//! `readmark bench`: one generated operation stream replayed, in one
//! invocation, through readmark at each durability level and through the
//! designs a backend team would otherwise pick, side by side, on the same
//! number of threads.
//!
//! Three streams (`--stream`):
//!
//! - `visits` (default): the demo's world (DMs, groups of 3–50, channels of
//!   hundreds to thousands, Zipf activity). When a member opens a
//!   conversation, other members first post until `burst` messages are new
//!   to them; they then scroll past those messages (one read update each,
//!   100 ms apart) and leave. `burst` is the number of updates per key per
//!   visit: the combining factor, swept by `--burst 1,10,50`. Only readmark
//!   stores the messages (a send advances its sender's mark); sends are not
//!   timed and the other designs skip them.
//! - `chat`: small groups (`--group-members`, 8) where every member both
//!   posts and reads: a visit reads every message the others posted since
//!   the member's last visit (one update each), then posts three messages
//!   (a send is also its sender's advance), then leaves. Every design
//!   writes one row per message here (and, for the sender, its read
//!   state), and the send path is timed and reported on its own.
//! - `updates`: mark updates alone, no messages, in conversations of
//!   `--group-members`: visits of `burst` updates, then a leave. Nothing
//!   but the read path runs, so it compares designs on several threads and
//!   at power loss. (Marks never pass the newest message, so before the
//!   run readmark records one message per conversation at an id above
//!   every update, from a member of its own; no update covers it.)
//!
//! What each design does with a read update, a leave and a send:
//!
//! | design | read update | leave | send (chat stream) | acknowledged update survives |
//! |---|---|---|---|---|
//! | readmark `Memory` / `ProcessCrash` / `PowerLoss` | `mark_read` | `seal` | `record_message` | clean close / process crash / power loss |
//! | naive rows | RocksDB put (conversation, message, user) -> time | - | put message row + the sender's row, one batch | process crash (WAL unsynced) or power loss (sync per write) |
//! | merge per update | RocksDB merge (conversation, user) -> (up_to, at), max operator | - | put message row + merge of the sender's mark, one batch | as above |
//! | SQLite upsert | `INSERT .. ON CONFLICT DO UPDATE .. WHERE excluded.up_to > up_to`, one statement (= transaction) | - | message insert + the sender's upsert, one transaction | process crash (`synchronous=NORMAL`) or power loss (`FULL`) |
//! | HashMap | insert keeping the max | - | push the message, join the sender's mark | nothing |
//!
//! Throughput is logical read updates divided by the time spent in the read
//! path (read updates and leaves); with `--threads N` each thread replays
//! the conversations whose id is its index modulo N (in the `updates`
//! stream, whole visits go to the least loaded thread), and throughput is the
//! updates over the wall time of the replay (use the `updates` stream,
//! which has no sends, to compare designs on several threads). CPU is the
//! whole process's (flush thread and RocksDB's background work included). Power-loss rows replay only the first
//! `--sync-updates` updates: an fsync per update makes the full stream take
//! minutes. `--steady SECS` replays the stream for at least that long
//! (page write-back then happens inside the run) and reports disk bytes
//! per update; readmark's own message writes are measured by a control
//! run of the same stream without its reads, and taken out.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use readmark::{Config, ConversationId, Durability, MessageId, Store, Timestamp, UserId};
use serde::Serialize;

use super::measure::{cpu_micros, proc_write_bytes, thread_switches, Spread};
use super::workload::{Step, Workload, WorldParams};
use super::{BenchArgs, StreamArg};

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

impl Op {
    fn conv(&self) -> u64 {
        match *self {
            Op::Send { conv, .. } | Op::Read { conv, .. } | Op::Leave { conv, .. } => conv,
        }
    }
}

/// A source of operations over a fixed set of conversations.
pub(crate) trait Generator: Send {
    /// Conversations and their members.
    fn convs(&self) -> &[(u64, Vec<u64>)];
    /// Appends operations holding about `updates` read updates (whole
    /// visits); returns the read updates appended.
    fn fill(&mut self, updates: u64, out: &mut Vec<Op>) -> u64;
}

/// The `visits` stream (see the module docs).
pub(crate) struct Visits {
    w: Workload,
    convs: Vec<(u64, Vec<u64>)>,
    msgs: Vec<Vec<u64>>,
    seen: HashMap<(usize, u64), usize>,
    next_id: u64,
    t: u64,
    burst: u64,
}

impl Visits {
    pub(crate) fn new(seed: u64, users: u64, burst: u64, start_ms: u64) -> Self {
        let w = Workload::new(seed, &WorldParams::for_users(users));
        let convs: Vec<(u64, Vec<u64>)> =
            w.convs.iter().map(|c| (c.id, c.members.clone())).collect();
        Self {
            msgs: vec![Vec::new(); convs.len()],
            convs,
            w,
            seen: HashMap::new(),
            next_id: 1,
            t: start_ms,
            burst: burst.max(1),
        }
    }

    fn send(&mut self, out: &mut Vec<Op>, i: usize, sender: u64) {
        self.t += 200;
        self.msgs[i].push(self.next_id);
        out.push(Op::Send {
            conv: self.convs[i].0,
            msg: self.next_id,
            sender,
            t: self.t,
        });
        self.next_id += 1;
    }
}

impl Generator for Visits {
    fn convs(&self) -> &[(u64, Vec<u64>)] {
        &self.convs
    }

    fn fill(&mut self, updates: u64, out: &mut Vec<Op>) -> u64 {
        let mut done = 0u64;
        while done < updates {
            match self.w.next_step() {
                Step::Messages {
                    conv,
                    sender,
                    count,
                } => {
                    for _ in 0..count {
                        self.send(out, conv, sender);
                    }
                    // The sender has read everything up to their message.
                    self.seen.insert((conv, sender), self.msgs[conv].len());
                }
                Step::Read { conv, reader } => {
                    let from = self.seen.get(&(conv, reader)).copied().unwrap_or(0);
                    let want =
                        usize::try_from(self.burst.min(updates - done)).unwrap_or(usize::MAX);
                    while self.msgs[conv].len() < from + want {
                        let others: Vec<u64> = self.convs[conv]
                            .1
                            .iter()
                            .copied()
                            .filter(|&m| m != reader)
                            .collect();
                        let sender = others[self.w.rng.random_range(0..others.len())];
                        self.send(out, conv, sender);
                    }
                    for k in 0..want {
                        self.t += 100;
                        out.push(Op::Read {
                            conv: self.convs[conv].0,
                            user: reader,
                            msg: self.msgs[conv][from + k],
                            t: self.t,
                        });
                    }
                    self.seen.insert((conv, reader), from + want);
                    done += want as u64;
                    out.push(Op::Leave {
                        conv: self.convs[conv].0,
                        user: reader,
                    });
                }
            }
        }
        done
    }
}

/// The `chat` stream (see the module docs).
pub(crate) struct Chat {
    rng: ChaCha8Rng,
    convs: Vec<(u64, Vec<u64>)>,
    msgs: Vec<Vec<u64>>,
    /// Per group and member: how many of the group's messages they have
    /// seen (read, or sent).
    seen: Vec<Vec<usize>>,
    next_id: u64,
    t: u64,
}

/// Messages a member posts per visit in the chat stream: with 8 members,
/// about 20 messages are new to each member at each of their visits.
const CHAT_SENDS_PER_VISIT: usize = 3;

impl Chat {
    pub(crate) fn new(seed: u64, groups: u64, members: u64, start_ms: u64) -> Self {
        let members = members.max(2);
        let convs: Vec<(u64, Vec<u64>)> = (0..groups.max(1))
            .map(|g| (g + 1, (0..members).map(|m| g * members + m + 1).collect()))
            .collect();
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            msgs: vec![Vec::new(); convs.len()],
            seen: vec![vec![0; usize::try_from(members).unwrap_or(usize::MAX)]; convs.len()],
            convs,
            next_id: 1,
            t: start_ms,
        }
    }
}

impl Generator for Chat {
    fn convs(&self) -> &[(u64, Vec<u64>)] {
        &self.convs
    }

    fn fill(&mut self, updates: u64, out: &mut Vec<Op>) -> u64 {
        let mut done = 0u64;
        while done < updates {
            let g = self.rng.random_range(0..self.convs.len());
            let k = self.rng.random_range(0..self.convs[g].1.len());
            let (conv, user) = (self.convs[g].0, self.convs[g].1[k]);
            let from = self.seen[g][k];
            for i in from..self.msgs[g].len() {
                self.t += 100;
                out.push(Op::Read {
                    conv,
                    user,
                    msg: self.msgs[g][i],
                    t: self.t,
                });
                done += 1;
            }
            for _ in 0..CHAT_SENDS_PER_VISIT {
                self.t += 200;
                self.msgs[g].push(self.next_id);
                out.push(Op::Send {
                    conv,
                    msg: self.next_id,
                    sender: user,
                    t: self.t,
                });
                self.next_id += 1;
            }
            self.seen[g][k] = self.msgs[g].len();
            out.push(Op::Leave { conv, user });
        }
        done
    }
}

/// The `updates` stream: visits of `burst` read updates to keys of a fixed
/// set of conversations, and no messages: what every design does per mark
/// update alone (the concurrency and durability comparison).
pub(crate) struct Updates {
    rng: ChaCha8Rng,
    convs: Vec<(u64, Vec<u64>)>,
    next: HashMap<(u64, u64), u64>,
    burst: u64,
    t: u64,
}

impl Updates {
    pub(crate) fn new(seed: u64, groups: u64, members: u64, burst: u64, start_ms: u64) -> Self {
        let members = members.max(1);
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            convs: (0..groups.max(1))
                .map(|g| (g + 1, (0..members).map(|m| g * members + m + 1).collect()))
                .collect(),
            next: HashMap::new(),
            burst: burst.max(1),
            t: start_ms,
        }
    }
}

impl Generator for Updates {
    fn convs(&self) -> &[(u64, Vec<u64>)] {
        &self.convs
    }

    fn fill(&mut self, updates: u64, out: &mut Vec<Op>) -> u64 {
        let mut done = 0u64;
        while done < updates {
            let g = self.rng.random_range(0..self.convs.len());
            let k = self.rng.random_range(0..self.convs[g].1.len());
            let (conv, user) = (self.convs[g].0, self.convs[g].1[k]);
            let next = self.next.entry((conv, user)).or_insert(0);
            for _ in 0..self.burst.min(updates - done) {
                *next += 1;
                self.t += 100;
                out.push(Op::Read {
                    conv,
                    user,
                    msg: *next,
                    t: self.t,
                });
                done += 1;
            }
            out.push(Op::Leave { conv, user });
        }
        done
    }
}

/// The world and the operations of a `visits` stream, generated at once.
#[cfg(test)]
pub(crate) struct Stream {
    pub(crate) convs: Vec<(u64, Vec<u64>)>,
    pub(crate) ops: Vec<Op>,
    pub(crate) updates: u64,
}

/// Same seed, same parameters: same stream (tested below).
#[cfg(test)]
pub(crate) fn generate(seed: u64, users: u64, updates: u64, burst: u64, start_ms: u64) -> Stream {
    let mut v = Visits::new(seed, users, burst, start_ms);
    let mut ops = Vec::new();
    let updates = v.fill(updates, &mut ops);
    Stream {
        convs: v.convs,
        ops,
        updates,
    }
}

/// The designs compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Design {
    Readmark(Durability),
    /// readmark at `ProcessCrash` replaying the stream without its reads
    /// (`--steady` only): its own message writes, taken out of the bytes.
    ReadmarkSendsOnly,
    NaiveRows {
        sync: bool,
    },
    MergePerUpdate {
        sync: bool,
    },
    Sqlite {
        full: bool,
    },
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

    /// The name `--designs` takes.
    fn key(self) -> &'static str {
        match self {
            Design::Readmark(Durability::Memory) => "memory",
            Design::Readmark(Durability::PowerLoss) => "power-loss",
            Design::Readmark(_) => "process-crash",
            Design::ReadmarkSendsOnly => "sends-only",
            Design::NaiveRows { sync: false } => "naive",
            Design::NaiveRows { sync: true } => "naive-sync",
            Design::MergePerUpdate { sync: false } => "merge",
            Design::MergePerUpdate { sync: true } => "merge-sync",
            Design::Sqlite { full: false } => "sqlite",
            Design::Sqlite { full: true } => "sqlite-full",
            Design::HashMap => "hashmap",
        }
    }

    fn name(self) -> String {
        match self {
            Design::Readmark(d) => format!("readmark {d:?}"),
            Design::ReadmarkSendsOnly => "readmark sends only".to_string(),
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
    threads: u64,
    updates: u64,
    /// Per thread: time in the read path (reads and leaves).
    update_secs: Vec<f64>,
    /// One thread: updates / time in the read path; several: updates /
    /// wall time of the replay.
    updates_per_sec: f64,
    leaves: u64,
    sends: u64,
    /// Time in sends (timed in the chat stream only), all threads.
    send_secs: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    mean_read_us: f64,
    /// Time in leaves, all threads.
    leave_secs: f64,
    send_p50_us: f64,
    send_p99_us: f64,
    send_p999_us: f64,
    send_max_us: f64,
    /// Context switches of the replaying threads: blocked, preempted.
    switches: (u64, u64),
    /// Wall time of the whole replay.
    wall_secs: f64,
    durable_writes: u64,
    fsyncs: Option<u64>,
    keys_written: u64,
    proc_write_bytes: u64,
    rocksdb_bytes_written: Option<u64>,
    disk_bytes: u64,
    /// readmark's journal file (preallocated, fixed size).
    journal_bytes: u64,
    cpu_us: u64,
}

/// A design's counters after its run, from `Design::finish`.
#[derive(Default)]
struct Counters {
    durable_writes: u64,
    fsyncs: Option<u64>,
    keys_written: u64,
    rocksdb_bytes: Option<u64>,
}

/// A design under test, shared by the replaying threads.
trait Subject: Sync {
    /// A replaying thread's handle.
    fn session(&self) -> readmark::Result<Box<dyn Session + '_>>;
    /// Writes what is buffered, closes, and reports its counters.
    fn finish(self: Box<Self>) -> readmark::Result<Counters>;
}

trait Session {
    fn read(&mut self, conv: u64, user: u64, msg: u64, t: u64) -> readmark::Result<()>;
    fn leave(&mut self, conv: u64, user: u64) -> readmark::Result<()>;
    /// A message; `stored`: the chat stream, where every design stores
    /// messages (in the visits stream only readmark does).
    fn send(
        &mut self,
        conv: u64,
        msg: u64,
        sender: u64,
        t: u64,
        stored: bool,
    ) -> readmark::Result<()>;
}

struct Readmark {
    store: Store,
    before: readmark::Stats,
}

impl Subject for Readmark {
    fn session(&self) -> readmark::Result<Box<dyn Session + '_>> {
        Ok(Box::new(&self.store))
    }
    fn finish(self: Box<Self>) -> readmark::Result<Counters> {
        self.store.flush()?;
        let s = self.store.stats();
        let io = self.store.rocksdb_io();
        self.store.close()?;
        let b = &self.before;
        // Marks, read-time runs and bitset operands: what readmark writes
        // for reads, the senders' own advances included (a send is a read
        // of everything before it). Change-log rows are not counted here.
        Ok(Counters {
            durable_writes: s.durable_batches - b.durable_batches,
            fsyncs: Some(s.fsyncs - b.fsyncs),
            keys_written: (s.keys_written - b.keys_written)
                + (s.receipt_operands - b.receipt_operands)
                + (s.read_time_records - b.read_time_records),
            rocksdb_bytes: Some(io.bytes_written),
        })
    }
}

impl Session for &Store {
    fn read(&mut self, conv: u64, user: u64, msg: u64, t: u64) -> readmark::Result<()> {
        self.mark_read(
            ConversationId(conv),
            UserId(user),
            MessageId(msg),
            Timestamp(t),
        )
    }
    fn leave(&mut self, conv: u64, user: u64) -> readmark::Result<()> {
        // The flusher writes the key within `flush_delay`, batched with
        // the others sealed meanwhile: nothing on this thread.
        self.seal(ConversationId(conv), UserId(user));
        Ok(())
    }
    fn send(&mut self, conv: u64, msg: u64, sender: u64, t: u64, _: bool) -> readmark::Result<()> {
        self.record_message(
            ConversationId(conv),
            MessageId(msg),
            UserId(sender),
            Timestamp(t),
        )
    }
}

/// Plain RocksDB designs: one put (naive rows) or one merge (merge per
/// update) per read update.
struct Rocks {
    db: rocksdb::DB,
    opts: rocksdb::Options,
    wo: rocksdb::WriteOptions,
    merge: bool,
    writes: std::sync::atomic::AtomicU64,
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

impl Rocks {
    fn open(path: &Path, merge: bool, sync: bool) -> readmark::Result<Self> {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.enable_statistics();
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_write_buffer_size(32 << 20);
        if merge {
            opts.set_merge_operator_associative("bench.max", max_merge);
        }
        let db = rocksdb::DB::open(&opts, path).map_err(rdb)?;
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        Ok(Self {
            db,
            opts,
            wo,
            merge,
            writes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn mark_value(msg: u64, t: u64) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&msg.to_be_bytes());
        v[8..].copy_from_slice(&t.to_be_bytes());
        v
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

impl Subject for Rocks {
    fn session(&self) -> readmark::Result<Box<dyn Session + '_>> {
        Ok(Box::new(self))
    }
    fn finish(self: Box<Self>) -> readmark::Result<Counters> {
        use rocksdb::statistics::Ticker;
        self.db.flush().map_err(rdb)?;
        let t = |k| self.opts.get_ticker_count(k);
        let writes = self.writes.load(std::sync::atomic::Ordering::Relaxed);
        let c = Counters {
            durable_writes: writes,
            fsyncs: Some(t(Ticker::WalFileSynced)),
            keys_written: writes,
            rocksdb_bytes: Some(t(Ticker::BytesWritten)),
        };
        drop(self.db);
        Ok(c)
    }
}

impl Session for &Rocks {
    fn read(&mut self, conv: u64, user: u64, msg: u64, t: u64) -> readmark::Result<()> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.merge {
            let k = key3(conv, user, 0);
            self.db
                .merge_opt(&k[..16], Rocks::mark_value(msg, t), &self.wo)
                .map_err(rdb)?;
        } else {
            self.db
                .put_opt(key3(conv, msg, user), t.to_be_bytes(), &self.wo)
                .map_err(rdb)?;
        }
        Ok(())
    }
    fn leave(&mut self, _: u64, _: u64) -> readmark::Result<()> {
        Ok(())
    }
    fn send(
        &mut self,
        conv: u64,
        msg: u64,
        sender: u64,
        t: u64,
        stored: bool,
    ) -> readmark::Result<()> {
        if !stored {
            return Ok(());
        }
        // The message row (conversation, message) -> (sender, time), and
        // the sender's own read of it, in one atomic batch.
        let mut b = rocksdb::WriteBatch::default();
        let mut row = [0u8; 16];
        row[..8].copy_from_slice(&sender.to_be_bytes());
        row[8..].copy_from_slice(&t.to_be_bytes());
        let mk = key3(conv, msg, u64::MAX);
        b.put(mk, row);
        if self.merge {
            let k = key3(conv, sender, 0);
            b.merge(&k[..16], Rocks::mark_value(msg, t));
        } else {
            b.put(key3(conv, msg, sender), t.to_be_bytes());
        }
        self.db.write_opt(b, &self.wo).map_err(rdb)?;
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

struct Sqlite {
    path: std::path::PathBuf,
    full: bool,
    writes: std::sync::atomic::AtomicU64,
}

/// A baseline's RocksDB error, reported like readmark's own I/O errors.
pub(crate) fn rdb(e: rocksdb::Error) -> readmark::Error {
    readmark::Error::Io(std::io::Error::other(e))
}

fn sql(e: rusqlite::Error) -> readmark::Error {
    readmark::Error::Io(std::io::Error::other(e))
}

impl Sqlite {
    fn open(dir: &Path, full: bool) -> readmark::Result<Self> {
        let path = dir.join("marks.db");
        let s = Self {
            path,
            full,
            writes: std::sync::atomic::AtomicU64::new(0),
        };
        s.connect()?
            .execute_batch(
                "CREATE TABLE marks (conv INTEGER NOT NULL, user INTEGER NOT NULL,
                                     up_to INTEGER NOT NULL, at INTEGER NOT NULL,
                                     PRIMARY KEY (conv, user)) WITHOUT ROWID;
                 CREATE TABLE messages (conv INTEGER NOT NULL, msg INTEGER NOT NULL,
                                        sender INTEGER NOT NULL, at INTEGER NOT NULL,
                                        PRIMARY KEY (conv, msg)) WITHOUT ROWID;",
            )
            .map_err(sql)?;
        Ok(s)
    }

    fn connect(&self) -> readmark::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(&self.path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(
            None,
            "synchronous",
            if self.full { "FULL" } else { "NORMAL" },
        )
        .map_err(sql)?;
        // Writers of several threads take turns (SQLite has one writer).
        conn.busy_timeout(Duration::from_secs(60)).map_err(sql)?;
        Ok(conn)
    }
}

const UPSERT: &str = "INSERT INTO marks VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (conv, user) DO UPDATE SET up_to = excluded.up_to, at = excluded.at
     WHERE excluded.up_to > marks.up_to";

struct SqliteSession<'a> {
    conn: rusqlite::Connection,
    owner: &'a Sqlite,
}

impl Subject for Sqlite {
    fn session(&self) -> readmark::Result<Box<dyn Session + '_>> {
        Ok(Box::new(SqliteSession {
            conn: self.connect()?,
            owner: self,
        }))
    }
    fn finish(self: Box<Self>) -> readmark::Result<Counters> {
        // Move the WAL into the database file, as RocksDB's memtable flush
        // moves data into SSTs, so the bytes compare like for like.
        self.connect()?
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(sql)?;
        let writes = self.writes.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Counters {
            durable_writes: writes,
            fsyncs: None,
            keys_written: writes,
            rocksdb_bytes: None,
        })
    }
}

#[allow(clippy::cast_possible_wrap)]
fn i(v: u64) -> i64 {
    v as i64
}

impl Session for SqliteSession<'_> {
    fn read(&mut self, conv: u64, user: u64, msg: u64, t: u64) -> readmark::Result<()> {
        self.conn
            .prepare_cached(UPSERT)
            .and_then(|mut s| s.execute((i(conv), i(user), i(msg), i(t))))
            .map_err(sql)?;
        self.owner
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn leave(&mut self, _: u64, _: u64) -> readmark::Result<()> {
        Ok(())
    }
    fn send(
        &mut self,
        conv: u64,
        msg: u64,
        sender: u64,
        t: u64,
        stored: bool,
    ) -> readmark::Result<()> {
        if !stored {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(sql)?;
        tx.prepare_cached("INSERT INTO messages VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut s| s.execute((i(conv), i(msg), i(sender), i(t))))
            .map_err(sql)?;
        tx.prepare_cached(UPSERT)
            .and_then(|mut s| s.execute((i(conv), i(sender), i(msg), i(t))))
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        self.owner
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// The bare in-memory reference: each thread's own map (threads replay
/// disjoint conversations).
#[derive(Default)]
struct Map {
    writes: std::sync::atomic::AtomicU64,
    kept: Mutex<usize>,
}

struct MapSession<'a> {
    marks: HashMap<(u64, u64), (u64, u64)>,
    messages: Vec<(u64, u64, u64, u64)>,
    writes: u64,
    owner: Option<&'a Map>,
}

impl Subject for Map {
    fn session(&self) -> readmark::Result<Box<dyn Session + '_>> {
        Ok(Box::new(MapSession {
            marks: HashMap::new(),
            messages: Vec::new(),
            writes: 0,
            owner: Some(self),
        }))
    }
    fn finish(self: Box<Self>) -> readmark::Result<Counters> {
        std::hint::black_box(*self.kept.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(Counters {
            durable_writes: 0,
            fsyncs: Some(0),
            keys_written: self.writes.load(std::sync::atomic::Ordering::Relaxed),
            rocksdb_bytes: None,
        })
    }
}

impl Drop for MapSession<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.owner {
            o.writes
                .fetch_add(self.writes, std::sync::atomic::Ordering::Relaxed);
            *o.kept.lock().unwrap_or_else(|e| e.into_inner()) +=
                self.marks.len() + self.messages.len();
        }
    }
}

impl Session for MapSession<'_> {
    fn read(&mut self, conv: u64, user: u64, msg: u64, t: u64) -> readmark::Result<()> {
        let e = self.marks.entry((conv, user)).or_insert((msg, t));
        if msg > e.0 {
            *e = (msg, t);
        }
        self.writes += 1;
        Ok(())
    }
    fn leave(&mut self, _: u64, _: u64) -> readmark::Result<()> {
        Ok(())
    }
    fn send(
        &mut self,
        conv: u64,
        msg: u64,
        sender: u64,
        t: u64,
        stored: bool,
    ) -> readmark::Result<()> {
        if stored {
            self.messages.push((conv, msg, sender, t));
            self.read(conv, sender, msg, t)?;
        }
        Ok(())
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

/// How one run replays its stream.
struct Plan<'a> {
    design: Design,
    threads: u64,
    /// Read updates to replay (whole visits).
    limit: u64,
    /// Keep replaying until this much wall time has passed.
    steady: Option<Duration>,
    /// Sends are timed and every design stores them.
    chat: bool,
    /// The stream has no sends: visits may go to any thread.
    no_sends: bool,
    receipt_threshold: u32,
    bar: &'a ProgressBar,
}

/// One thread's measurements.
struct ThreadResult {
    /// Context switches of the replaying thread: (blocked, preempted).
    switches: (u64, u64),
    updates: u64,
    secs: f64,
    leave_secs: f64,
    leaves: u64,
    sends: u64,
    send_secs: f64,
    hist: Histogram<u64>,
    send_hist: Histogram<u64>,
}

fn histogram() -> readmark::Result<Histogram<u64>> {
    Histogram::<u64>::new(3).map_err(|_| readmark::Error::InvalidArgument("histogram"))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// Replays `ops` on one session.
fn replay(
    session: &mut dyn Session,
    ops: &[Op],
    plan: &Plan<'_>,
    r: &mut ThreadResult,
) -> readmark::Result<()> {
    let reads = plan.design != Design::ReadmarkSendsOnly;
    for op in ops {
        match *op {
            Op::Send {
                conv,
                msg,
                sender,
                t,
            } => {
                let t0 = Instant::now();
                session.send(conv, msg, sender, t, plan.chat)?;
                if plan.chat {
                    let took = t0.elapsed();
                    r.send_secs += took.as_secs_f64();
                    r.send_hist.record(nanos(took)).ok();
                }
                r.sends += 1;
            }
            Op::Read { conv, user, msg, t } => {
                r.updates += 1;
                if !reads {
                    continue;
                }
                let t0 = Instant::now();
                session.read(conv, user, msg, t)?;
                let took = t0.elapsed();
                r.secs += took.as_secs_f64();
                r.hist.record(nanos(took)).ok();
                if r.updates.is_multiple_of(1024) {
                    plan.bar.inc(1024);
                }
            }
            Op::Leave { conv, user } => {
                r.leaves += 1;
                if !reads {
                    continue;
                }
                let t0 = Instant::now();
                session.leave(conv, user)?;
                let took = t0.elapsed().as_secs_f64();
                r.secs += took;
                r.leave_secs += took;
            }
        }
    }
    Ok(())
}

/// Splits a chunk of operations among `threads`. Sends must stay in
/// order within a conversation, so a stream with sends goes by
/// conversation (id modulo the thread count). Without sends, each visit
/// (a key's reads up to its leave) goes whole to the thread with the
/// least work so far: every thread then stays busy to the end of the
/// chunk, so "16 threads" means 16 threads for the whole run rather than
/// fewer as the lighter ones finish (which would, for example, shrink
/// group commits in the run's tail).
fn partition(ops: Vec<Op>, threads: usize, no_sends: bool) -> Vec<Vec<Op>> {
    let threads = threads.max(1);
    let mut parts: Vec<Vec<Op>> = vec![Vec::new(); threads];
    if !no_sends {
        for op in ops {
            let t = usize::try_from(op.conv() % threads as u64).unwrap_or(0);
            parts[t].push(op);
        }
        return parts;
    }
    let mut open: HashMap<(u64, u64), usize> = HashMap::new();
    for op in ops {
        let key = match op {
            Op::Read { conv, user, .. } | Op::Leave { conv, user } => (conv, user),
            Op::Send { conv, sender, .. } => (conv, sender),
        };
        let t = *open
            .entry(key)
            .or_insert_with(|| (0..threads).min_by_key(|&t| parts[t].len()).unwrap_or(0));
        if matches!(op, Op::Leave { .. }) {
            open.remove(&key);
        }
        parts[t].push(op);
    }
    parts
}

/// Replays a stream through `design` in a fresh temporary directory.
fn run_once(
    make: &dyn Fn() -> Box<dyn Generator>,
    plan: &Plan<'_>,
    start_ms: u64,
) -> readmark::Result<RunResult> {
    let dir = tempfile::tempdir()?;
    let mut gen = make();
    let subject: Box<dyn Subject> = match plan.design {
        Design::Readmark(_) | Design::ReadmarkSendsOnly => {
            let level = match plan.design {
                Design::Readmark(l) => l,
                _ => Durability::ProcessCrash,
            };
            let config = Config::new()
                .durability(level)
                .statistics(true)
                .receipt_threshold(plan.receipt_threshold);
            let store = Store::open(dir.path(), config)?;
            for (c, members) in gen.convs() {
                store.create_conversation(ConversationId(*c))?;
                for &u in members {
                    store.add_member(ConversationId(*c), UserId(u), Timestamp(start_ms))?;
                }
                if plan.no_sends {
                    super::post_far_message(&store, ConversationId(*c))?;
                }
            }
            store.flush()?;
            let before = store.stats();
            Box::new(Readmark { store, before })
        }
        Design::NaiveRows { sync } => Box::new(Rocks::open(dir.path(), false, sync)?),
        Design::MergePerUpdate { sync } => Box::new(Rocks::open(dir.path(), true, sync)?),
        Design::Sqlite { full } => Box::new(Sqlite::open(dir.path(), full)?),
        Design::HashMap => Box::new(Map::default()),
    };
    let threads = plan.threads.max(1);
    let write0 = proc_write_bytes();
    let cpu0 = cpu_micros();
    let started = Instant::now();
    let mut results: Vec<ThreadResult> = (0..threads)
        .map(|_| -> readmark::Result<ThreadResult> {
            Ok(ThreadResult {
                switches: (0, 0),
                updates: 0,
                secs: 0.0,
                leave_secs: 0.0,
                leaves: 0,
                sends: 0,
                send_secs: 0.0,
                hist: histogram()?,
                send_hist: histogram()?,
            })
        })
        .collect::<readmark::Result<_>>()?;
    // Chunks of whole visits, split by conversation among the threads; a
    // steady run keeps generating chunks until its time is up.
    let chunk = match plan.steady {
        Some(_) => 200_000,
        None => plan.limit,
    };
    let mut replayed = 0u64;
    let mut replay_wall = Duration::ZERO;
    loop {
        let mut ops = Vec::new();
        let want = if plan.steady.is_some() {
            chunk
        } else {
            plan.limit.saturating_sub(replayed)
        };
        if want == 0 {
            break;
        }
        replayed += gen.fill(want, &mut ops);
        let parts = partition(ops, usize::try_from(threads).unwrap_or(1), plan.no_sends);
        let subject = &*subject;
        let scope_started = Instant::now();
        let outcome: Vec<readmark::Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .iter()
                .zip(results.iter_mut())
                .map(|(part, r)| {
                    s.spawn(move || -> readmark::Result<()> {
                        let mut session = subject.session()?;
                        let before = thread_switches();
                        let out = replay(&mut *session, part, plan, r);
                        let after = thread_switches();
                        r.switches.0 += after.0 - before.0;
                        r.switches.1 += after.1 - before.1;
                        out
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
        replay_wall += scope_started.elapsed();
        for o in outcome {
            o?;
        }
        match plan.steady {
            Some(d) if started.elapsed() < d => {}
            Some(_) => break,
            None if replayed >= plan.limit => break,
            None => {}
        }
    }
    let c = subject.finish()?;
    let wall = started.elapsed().as_secs_f64();
    let proc_bytes = proc_write_bytes().saturating_sub(write0);
    let cpu = cpu_micros().saturating_sub(cpu0);
    let mut hist = histogram()?;
    let mut send_hist = histogram()?;
    for r in &results {
        hist.add(&r.hist).ok();
        send_hist.add(&r.send_hist).ok();
    }
    #[allow(clippy::cast_precision_loss)]
    let us = |ns: u64| ns as f64 / 1_000.0;
    // One thread: updates over the time in the read path (sends, and the
    // bench's own work between calls, are outside it). Several threads:
    // updates over the wall time of the replay, since a thread's time
    // outside its calls is time another thread may have run (on a machine
    // with fewer cores than threads, summing per-thread rates would count
    // the same core several times).
    #[allow(clippy::cast_precision_loss)]
    let rate: f64 = if threads == 1 {
        results
            .iter()
            .map(|r| r.updates as f64 / r.secs.max(1e-9))
            .sum()
    } else {
        results.iter().map(|r| r.updates).sum::<u64>() as f64 / replay_wall.as_secs_f64().max(1e-9)
    };
    plan.bar.inc(results.iter().map(|r| r.updates % 1024).sum());
    Ok(RunResult {
        threads,
        updates: results.iter().map(|r| r.updates).sum(),
        update_secs: results.iter().map(|r| r.secs).collect(),
        updates_per_sec: rate,
        leaves: results.iter().map(|r| r.leaves).sum(),
        sends: results.iter().map(|r| r.sends).sum(),
        send_secs: results.iter().map(|r| r.send_secs).sum(),
        p50_us: us(hist.value_at_quantile(0.50)),
        p99_us: us(hist.value_at_quantile(0.99)),
        p999_us: us(hist.value_at_quantile(0.999)),
        max_us: us(hist.max()),
        mean_read_us: hist.mean() / 1_000.0,
        leave_secs: results.iter().map(|r| r.leave_secs).sum(),
        send_p50_us: us(send_hist.value_at_quantile(0.50)),
        send_p99_us: us(send_hist.value_at_quantile(0.99)),
        send_p999_us: us(send_hist.value_at_quantile(0.999)),
        send_max_us: us(send_hist.max()),
        switches: results
            .iter()
            .fold((0, 0), |a, r| (a.0 + r.switches.0, a.1 + r.switches.1)),
        wall_secs: wall,
        durable_writes: c.durable_writes,
        fsyncs: c.fsyncs,
        keys_written: c.keys_written,
        proc_write_bytes: proc_bytes,
        rocksdb_bytes_written: c.rocksdb_bytes,
        disk_bytes: dir_bytes(dir.path()),
        journal_bytes: dir_bytes(&dir.path().join("readmark-journal")),
        cpu_us: cpu,
    })
}

/// One design at one burst size: medians and spreads over the runs.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    stream: &'static str,
    burst: u64,
    threads: u64,
    design: String,
    survives: &'static str,
    updates: u64,
    updates_per_sec: Spread,
    p50_us: Spread,
    p99_us: Spread,
    /// Mean time of one send (chat stream), µs.
    send_us: Option<Spread>,
    send_p99_us: Option<Spread>,
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
    /// Steady runs: disk bytes per update with readmark's own message
    /// writes taken out (its control run's bytes per update subtracted).
    read_path_bytes_per_update: Option<f64>,
    runs: Vec<RunResult>,
}

fn chosen_designs(args: &BenchArgs) -> Vec<Design> {
    let mut designs: Vec<Design> = Design::all()
        .into_iter()
        .filter(|d| args.designs.is_empty() || args.designs.iter().any(|k| k == d.key()))
        .collect();
    let has_pc = designs.contains(&Design::Readmark(Durability::ProcessCrash));
    if args.steady.is_some() && has_pc {
        designs.push(Design::ReadmarkSendsOnly);
    }
    designs
}

#[allow(clippy::cast_precision_loss, clippy::too_many_lines)]
pub(crate) fn run(args: &BenchArgs) -> readmark::Result<()> {
    let designs = chosen_designs(args);
    if designs.is_empty() {
        return Err(readmark::Error::InvalidArgument(
            "--designs matched no design",
        ));
    }
    let start_ms = Timestamp::now().get();
    let threads_list = if args.threads.is_empty() {
        vec![1]
    } else {
        args.threads.clone()
    };
    let bursts = match args.stream {
        StreamArg::Visits | StreamArg::Updates => args.burst.clone(),
        StreamArg::Chat => vec![0],
    };
    let per_run = |d: &Design| {
        if args.steady.is_some() {
            0
        } else if d.syncs_each_update() {
            args.sync_updates.min(args.updates)
        } else {
            args.updates
        }
    };
    let total: u64 = designs.iter().map(per_run).sum::<u64>()
        * args.runs
        * bursts.len() as u64
        * threads_list.len() as u64;
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else if args.steady.is_some() {
        ProgressBar::new_spinner()
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
    let mut rows: Vec<Row> = Vec::new();
    for &threads in &threads_list {
        for &burst in &bursts {
            let make: Box<dyn Fn() -> Box<dyn Generator>> = match args.stream {
                StreamArg::Visits => {
                    let (seed, users) = (args.seed, args.users);
                    Box::new(move || -> Box<dyn Generator> {
                        Box::new(Visits::new(seed, users, burst, start_ms))
                    })
                }
                StreamArg::Chat => {
                    let (seed, groups, members) = (args.seed, args.groups, args.group_members);
                    Box::new(move || -> Box<dyn Generator> {
                        Box::new(Chat::new(seed, groups, members, start_ms))
                    })
                }
                StreamArg::Updates => {
                    let (seed, groups, members) = (args.seed, args.groups, args.group_members);
                    Box::new(move || -> Box<dyn Generator> {
                        Box::new(Updates::new(seed, groups, members, burst, start_ms))
                    })
                }
            };
            let mut measured: Vec<(Design, Vec<RunResult>)> = Vec::new();
            for &d in &designs {
                let plan = Plan {
                    design: d,
                    threads,
                    limit: per_run(&d),
                    steady: args.steady.map(Duration::from_secs),
                    chat: args.stream == StreamArg::Chat,
                    no_sends: args.stream == StreamArg::Updates,
                    receipt_threshold: args.receipt_threshold,
                    bar: &bar,
                };
                let mut runs = Vec::new();
                for r in 0..args.runs {
                    bar.set_message(format!(
                        "{} threads, burst {burst}: {} run {}/{}",
                        threads,
                        d.name(),
                        r + 1,
                        args.runs
                    ));
                    runs.push(run_once(&*make, &plan, start_ms)?);
                }
                measured.push((d, runs));
            }
            rows.extend(summarise(args, burst, threads, &measured));
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

#[allow(clippy::cast_precision_loss)]
fn summarise(
    args: &BenchArgs,
    burst: u64,
    threads: u64,
    measured: &[(Design, Vec<RunResult>)],
) -> Vec<Row> {
    let median = |runs: &[RunResult], g: &dyn Fn(&RunResult) -> f64| {
        Spread::of(&runs.iter().map(g).collect::<Vec<_>>())
    };
    let per_1k = |runs: &[RunResult], g: &dyn Fn(&RunResult) -> u64| {
        let u: u64 = runs.iter().map(|r| r.updates).sum();
        runs.iter().map(g).sum::<u64>() as f64 / u.max(1) as f64 * 1_000.0
    };
    let bytes_per_update = |runs: &[RunResult]| {
        let u: u64 = runs.iter().map(|r| r.updates).sum::<u64>().max(1);
        runs.iter().map(|r| r.proc_write_bytes).sum::<u64>() as f64 / u as f64
    };
    let find = |d: Design| measured.iter().find(|m| m.0 == d).map(|m| &m.1);
    let control = find(Design::ReadmarkSendsOnly).map(|runs| bytes_per_update(runs));
    let mut rows = Vec::new();
    for (d, runs) in measured {
        let ups = median(runs, &|r| r.updates_per_sec);
        let dw = per_1k(runs, &|r| r.durable_writes);
        let reference = find(d.reference()).map_or((ups.median, dw), |rr| {
            (
                median(rr, &|r| r.updates_per_sec).median,
                per_1k(rr, &|r| r.durable_writes),
            )
        });
        let total_updates: u64 = runs.iter().map(|r| r.updates).sum::<u64>().max(1);
        let chat = args.stream == StreamArg::Chat;
        let disk = bytes_per_update(runs);
        rows.push(Row {
            stream: match args.stream {
                StreamArg::Visits => "visits",
                StreamArg::Chat => "chat",
                StreamArg::Updates => "updates",
            },
            burst,
            threads,
            design: d.name(),
            survives: d.survives(),
            updates: runs.first().map_or(0, |r| r.updates),
            updates_per_sec: ups,
            p50_us: median(runs, &|r| r.p50_us),
            p99_us: median(runs, &|r| r.p99_us),
            send_us: chat.then(|| {
                median(runs, &|r| {
                    r.send_secs * 1e6 / r.sends.max(1) as f64 * r.threads as f64
                })
            }),
            send_p99_us: chat.then(|| median(runs, &|r| r.send_p99_us)),
            durable_writes_per_1k: dw,
            fsyncs_per_1k: runs
                .iter()
                .map(|r| r.fsyncs)
                .sum::<Option<u64>>()
                .map(|f| f as f64 / total_updates as f64 * 1_000.0),
            keys_written_per_1k: per_1k(runs, &|r| r.keys_written),
            disk_write_bytes_per_update: disk,
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
            read_path_bytes_per_update: match (args.steady, d) {
                (Some(_), Design::Readmark(Durability::ProcessCrash)) => {
                    // Signed: a value near zero or below it is the control's own
                    // run-to-run spread, which the table should show, not hide.
                    control.map(|c| disk - c)
                }
                (Some(_), Design::Readmark(_) | Design::ReadmarkSendsOnly) => None,
                (Some(_), _) => Some(disk),
                _ => None,
            },
            runs: runs.clone(),
        });
    }
    rows
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
    let stream = match args.stream {
        StreamArg::Visits => format!("visits stream, {} users", args.users),
        StreamArg::Updates => format!(
            "updates stream (no messages), {} conversations of {} members",
            args.groups, args.group_members
        ),
        StreamArg::Chat => format!(
            "chat stream, {} groups of {} members",
            args.groups, args.group_members
        ),
    };
    let size = match args.steady {
        Some(s) => format!("at least {s} s per run"),
        None => format!(
            "{} updates per design and run ({} for power-loss rows)",
            args.updates, args.sync_updates
        ),
    };
    println!(
        "bench: {stream}, seed {}, {size}, {} runs each, medians (± half the range, % of the median)",
        args.seed, args.runs
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
    let mut groups: Vec<(u64, u64)> = rows.iter().map(|r| (r.threads, r.burst)).collect();
    groups.dedup();
    for (threads, burst) in groups {
        println!();
        match args.stream {
            StreamArg::Visits | StreamArg::Updates => println!("{threads} thread(s), burst {burst}: open a conversation, scroll past {burst} new messages (one update each), leave"),
            StreamArg::Chat => println!("{threads} thread(s): open a group, read what the others posted since (one update each), post {CHAT_SENDS_PER_VISIT} messages, leave"),
        }
        println!(
            "{:<22} {:<13} {:>20} {:>7} {:>7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7} {:>7}",
            "design",
            "ack survives",
            "updates/s (spread)",
            "p50 us",
            "p99 us",
            "send us",
            "dur.wr/1k",
            "fsync/1k",
            "keys/1k",
            "disk B/up",
            "read B/up",
            "cpu us",
            "speed",
            "writes"
        );
        for r in rows
            .iter()
            .filter(|r| r.threads == threads && r.burst == burst)
        {
            if r.design.contains("sends only") {
                println!(
                    "{:<22} {:<13} {:>20} {:>7} {:>7} {:>9} {:>9.1} {:>8} {:>8.1} {:>9.1} {:>8} {:>8.2}",
                    r.design,
                    "(control)",
                    "n/a",
                    "",
                    "",
                    "",
                    r.durable_writes_per_1k,
                    opt(r.fsyncs_per_1k, 1),
                    r.keys_written_per_1k,
                    r.disk_write_bytes_per_update,
                    "",
                    r.cpu_us_per_update,
                );
                continue;
            }
            println!(
                "{:<22} {:<13} {:>12.0} ({:>4.0}%) {:>7.2} {:>7.2} {:>9} {:>9.1} {:>8} {:>8.1} {:>9.1} {:>8} {:>8.2} {:>6.2}x {:>6.1}x",
                r.design,
                r.survives,
                r.updates_per_sec.median,
                r.updates_per_sec.spread_pct(),
                r.p50_us.median,
                r.p99_us.median,
                opt(r.send_us.map(|s| s.median), 2),
                r.durable_writes_per_1k,
                opt(r.fsyncs_per_1k, 1),
                r.keys_written_per_1k,
                r.disk_write_bytes_per_update,
                opt(r.read_path_bytes_per_update, 1),
                r.cpu_us_per_update,
                r.speed_vs_readmark,
                r.durable_writes_vs_readmark,
            );
        }
    }
    println!();
    println!("updates/s: read updates over the time spent in reads and leaves (several threads: over the replay's wall time); p50/p99: one read call;");
    println!("send us: mean time of one send (chat stream: every design stores the message and the sender's read of it);");
    println!("dur.wr: durable writes (readmark: RocksDB batches its flushes wrote; others: one per update or send); keys: RocksDB keys /");
    println!("SQLite rows written (readmark: marks + read-time runs + bitset operands, senders' own advances included);");
    println!("disk B/up: /proc/self/io write_bytes of the whole run (close included) / read updates; read B/up (--steady): the same with");
    println!("readmark's own message writes taken out (its sends-only control run); speed, writes: this row over the readmark row");
    println!("whose acknowledged updates survive the same failures. In the visits stream only readmark stores messages (untimed).");
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

    #[test]
    fn chat_members_read_what_others_posted_and_post_in_turn() {
        let mut g = Chat::new(1, 10, 8, 0);
        let mut ops = Vec::new();
        let updates = g.fill(20_000, &mut ops);
        let reads = ops.iter().filter(|o| matches!(o, Op::Read { .. })).count() as u64;
        assert_eq!(updates, reads);
        let sends = ops.iter().filter(|o| matches!(o, Op::Send { .. })).count();
        let leaves = ops.iter().filter(|o| matches!(o, Op::Leave { .. })).count();
        assert_eq!(sends, leaves * CHAT_SENDS_PER_VISIT);
        // About 7 others x 3 messages new per visit, once warm.
        let per_visit = reads as f64 / leaves as f64;
        assert!((15.0..=25.0).contains(&per_visit), "{per_visit}");
        // Nobody reads their own message; reads move forward per member.
        let mut sender_of = HashMap::new();
        let mut last: HashMap<(u64, u64), u64> = HashMap::new();
        for op in &ops {
            match *op {
                Op::Send { msg, sender, .. } => {
                    sender_of.insert(msg, sender);
                }
                Op::Read {
                    conv, user, msg, ..
                } => {
                    assert_ne!(sender_of[&msg], user);
                    let prev = last.insert((conv, user), msg);
                    assert!(prev.is_none_or(|p| msg > p));
                }
                Op::Leave { .. } => {}
            }
        }
    }
}
