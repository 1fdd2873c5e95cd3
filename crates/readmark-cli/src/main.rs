//! The `readmark` command-line tool: a realistic demo workload on an
//! embedded store, the side-by-side benchmarks against the designs readmark
//! replaces, and read-only inspection.

mod adr;
mod compare;
mod demo;
mod events_cost;
mod inspect;
mod measure;
mod plot;
mod receipts_cost;
mod scaling;
mod server_load;
mod soak;
mod threads_cost;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// jemalloc for the whole process, RocksDB's C++ included: with glibc's
// malloc an hour-long soak's RSS grew 46 MiB while the heap in use stayed
// flat (freed memory kept by per-thread arenas); docs/benchmarks.md, "The
// hour again, memory by owner".
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
/// jemalloc's settings, read before `main`: a background thread returns
/// freed pages after 1 s (not 10 s, and not only when the arena is busy),
/// so RSS follows what is in use (docs/benchmarks.md, "The hour with
/// jemalloc").
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000".as_ptr() });

#[derive(Parser, Debug)]
#[command(
    name = "readmark",
    version,
    about = "Read receipts storage engine: demo and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a realistic workload (DMs, groups, channels; members scrolling and
    /// marking read) on a store, print what it did and sample answers.
    Demo(DemoArgs),
    /// Replay one generated chat workload through readmark at each
    /// durability level and through the designs it replaces (a row per
    /// read, a merge per update, SQLite upsert, a HashMap), side by side.
    Bench(BenchArgs),
    /// mark_read at each durability level under concurrent writers:
    /// updates/s, latency, group commit (fsyncs shared), bytes to disk.
    Scaling(ScalingArgs),
    /// Counts, sizes and journal state of a store (read-only).
    Stats {
        /// Store directory.
        path: PathBuf,
    },
    /// Check every record and journal frame of a store and report what is
    /// inconsistent, changing nothing. Exits with status 1 if it finds any.
    Verify {
        /// Store directory.
        path: PathBuf,
    },
    /// One conversation's members, marks, messages and receipts (read-only).
    Dump {
        /// Store directory.
        path: PathBuf,
        /// Conversation id.
        #[arg(long)]
        conversation: u64,
        /// Newest messages to show.
        #[arg(long, default_value_t = 20)]
        messages: usize,
    },
    /// Measure what per-message receipts cost: bitset bytes per message and
    /// RocksDB writes per mark advance, for groups of several sizes.
    Receipts(ReceiptsArgs),
    /// Real-time receipt events at wall-clock pace: events per mark
    /// advance, recipients per event by conversation size, and latency from
    /// advance to event, for each coalescing window.
    Events(EventsArgs),
    /// A long mixed load (writers, poster, readers, a subscriber, catch-ups,
    /// membership churn) with the worker killed (SIGKILL) at intervals:
    /// RSS, journal and store size and latency over time, and after every
    /// kill a check that nothing acknowledged was lost.
    Soak(soak::SoakArgs),
    /// What threads and mentions cost per update, side by side with the
    /// main timeline: sends, reads, and unread totals over many threads.
    Timelines(threads_cost::TimelinesArgs),
    /// Run readmark-server (authenticated WebSocket push and the backend's
    /// HTTP API) until SIGTERM or Ctrl-C; `readmark-server serve` does the
    /// same.
    Serve(readmark_server::cli::ServeArgs),
    /// Print a client token for `serve`, signed with READMARK_JWT_SECRET
    /// (for trying the server; the backend signs tokens in production).
    Token(readmark_server::cli::TokenArgs),
    /// readmark-server under load on loopback: memory and CPU of many idle
    /// connections, reads per second with 1,000 clients, and read-to-push
    /// latency at two coalescing windows.
    ServerLoad(server_load::ServerLoadArgs),
    /// The worker process of `soak` (started by it).
    #[command(hide = true, name = "soak-worker")]
    SoakWorker(soak::WorkerArgs),
}

/// Options of `readmark events`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct EventsArgs {
    /// Seed of the workload generator (the stream of `readmark bench`).
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Users of the generated world.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) users: u64,
    /// Wall-clock seconds per run.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) seconds: f64,
    /// Workload steps per second (a step posts messages or opens a
    /// conversation for one reader).
    #[arg(long, default_value_t = 400)]
    pub(crate) steps_per_sec: u64,
    /// Milliseconds between two scroll updates of one reader.
    #[arg(long, default_value_t = 150)]
    pub(crate) scroll_ms: u64,
    /// Coalescing windows to measure, in ms, comma-separated (each a run).
    #[arg(long, value_delimiter = ',', default_value = "1000,250,0")]
    pub(crate) windows: Vec<u64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// Prints `value` as pretty JSON on stdout (the `--json` of every
/// measuring command).
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> readmark::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| readmark::Error::Io(e.into()))?;
    println!("{text}");
    Ok(())
}

/// The id of the one message a marks-only workload records per
/// conversation: above every mark it makes, so its marks (which never pass
/// the newest message) stand as generated.
pub(crate) const FAR_MESSAGE: u64 = 1 << 62;

/// Records [`FAR_MESSAGE`] in `conversation` from a member of its own
/// (`u64::MAX`, added here), for the marks-only workloads (`scaling`,
/// `bench --stream updates`): no read reaches it, so it is covered by no
/// advance and adds no run, receipt or change to what they measure.
pub(crate) fn post_far_message(
    store: &readmark::Store,
    conversation: readmark::ConversationId,
) -> readmark::Result<()> {
    let poster = readmark::UserId(u64::MAX);
    store.add_member(conversation, poster, readmark::Timestamp(0))?;
    store.record_message(
        conversation,
        readmark::MessageId(FAR_MESSAGE),
        poster,
        readmark::Timestamp(0),
    )
}

/// Options of `readmark receipts`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ReceiptsArgs {
    /// Group sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,10,50")]
    pub(crate) members: Vec<u64>,
    /// Messages per group.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) messages: u64,
    /// Share of the members who read the group at all (the ADR assumes 0.3).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) read_ratio: f64,
    /// A reader visits after a message with probability 1 / this.
    #[arg(long, default_value_t = 10)]
    pub(crate) open_every: u32,
    /// Flush all visits together every this many messages instead of each
    /// on leave (0): readers of the same messages then share operands.
    #[arg(long, default_value_t = 0)]
    pub(crate) flush_every: u64,
    /// Seed of the workload.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// Options of `readmark bench`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Seed of the workload generator (same seed, same operations).
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Users of the generated world.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) users: u64,
    /// Read updates in the stream, per design and run.
    #[arg(long, default_value_t = 40_000)]
    pub(crate) updates: u64,
    /// Updates replayed by the rows that fsync every update (a prefix of
    /// the same stream).
    #[arg(long, default_value_t = 2_000)]
    pub(crate) sync_updates: u64,
    /// Updates per key per flush (messages scrolled past per visit),
    /// comma-separated: one table per value.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    pub(crate) burst: Vec<u64>,
    /// Runs per design (median and spread are reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: u64,
    /// Replaying threads, comma-separated: one table per value; every
    /// design runs on the same number. Each thread replays the
    /// conversations whose id is its index modulo the count.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub(crate) threads: Vec<u64>,
    /// Which stream: `visits` (open, scroll `burst` messages, leave),
    /// `chat` (small groups where every member reads and posts), or
    /// `updates` (visits of `burst` updates to keys of `--groups`
    /// conversations of `--group-members`, no messages).
    #[arg(long, value_enum, default_value_t = StreamArg::Visits)]
    pub(crate) stream: StreamArg,
    /// Chat and updates streams: number of conversations.
    #[arg(long, default_value_t = 250)]
    pub(crate) groups: u64,
    /// Chat and updates streams: members per conversation.
    #[arg(long, default_value_t = 8)]
    pub(crate) group_members: u64,
    /// Steady state: replay each design for at least this many seconds
    /// (at least 30 to put page write-back inside the run) and report disk
    /// bytes per update; `--updates` is then ignored.
    #[arg(long)]
    pub(crate) steady: Option<u64>,
    /// Only these designs, comma-separated: memory, process-crash,
    /// power-loss, naive, naive-sync, merge, merge-sync, sqlite,
    /// sqlite-full, hashmap. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub(crate) designs: Vec<String>,
    /// readmark's receipt threshold: conversations of at most this many
    /// members keep per-message receipts (0: marks only, like the others).
    #[arg(long, default_value_t = 50)]
    pub(crate) receipt_threshold: u32,
    /// Write an SVG chart of the results to this file.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
    /// Run the seed ADR's workload instead (per-message receipts in groups:
    /// readmark's bitsets against one row per (message, reader)).
    #[arg(long)]
    pub(crate) adr: bool,
    /// ADR mode: messages per second (in groups of 50 messages/s each).
    #[arg(long, default_value_t = 50_000)]
    pub(crate) adr_messages_per_sec: u64,
    /// ADR mode: simulated seconds (the flush timer fires every 5).
    #[arg(long, default_value_t = 10)]
    pub(crate) adr_seconds: u64,
    /// ADR mode: members per group.
    #[arg(long, default_value_t = 50)]
    pub(crate) adr_members: u64,
    /// ADR mode: share of the members who read each message.
    #[arg(long, default_value_t = 0.3)]
    pub(crate) adr_read_ratio: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// Options of `readmark scaling`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ScalingArgs {
    /// Logical updates per run and level.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) updates: u64,
    /// Writer threads.
    #[arg(long, default_value_t = 4)]
    pub(crate) threads: u64,
    /// Updates per key before the user leaves (flush_key): the combining
    /// factor (1, 10, 50).
    #[arg(long, default_value_t = 50)]
    pub(crate) burst: u64,
    /// Durability levels to measure, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "memory,process-crash,power-loss"
    )]
    pub(crate) levels: Vec<LevelArg>,
    /// Runs per level (median and spread are reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// Options of `readmark demo`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct DemoArgs {
    /// Store directory; default: a temporary directory removed at exit.
    #[arg(long)]
    pub(crate) path: Option<PathBuf>,
    /// Seed of the workload generator (same seed, same operations).
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Number of users.
    #[arg(long, default_value_t = 3_000)]
    pub(crate) users: u64,
    /// Number of workload steps (a step is a burst of messages or a reading
    /// session).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) steps: u64,
    /// Hide the progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// The stream `readmark bench` replays.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamArg {
    Visits,
    Chat,
    Updates,
}

/// A durability level on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LevelArg {
    Memory,
    ProcessCrash,
    PowerLoss,
}

impl From<LevelArg> for readmark::Durability {
    fn from(l: LevelArg) -> Self {
        match l {
            LevelArg::Memory => readmark::Durability::Memory,
            LevelArg::ProcessCrash => readmark::Durability::ProcessCrash,
            LevelArg::PowerLoss => readmark::Durability::PowerLoss,
        }
    }
}

/// `serve` and `token`: readmark-server's own command line.
fn server(command: readmark_server::cli::Command) -> ExitCode {
    match readmark_server::cli::run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("readmark: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) if args.adr => adr::run(&args),
        Command::Bench(args) => compare::run(&args),
        Command::Scaling(args) => scaling::run(&args),
        Command::Receipts(args) => receipts_cost::run(&args),
        Command::Events(args) => events_cost::run(&args),
        Command::Soak(args) => soak::run(&args),
        Command::Timelines(args) => threads_cost::run(&args),
        Command::SoakWorker(args) => soak::worker(&args),
        Command::ServerLoad(args) => server_load::run(&args),
        Command::Serve(args) => return server(readmark_server::cli::Command::Serve(args)),
        Command::Token(args) => return server(readmark_server::cli::Command::Token(args)),
        Command::Stats { path } => inspect::stats(&path),
        Command::Verify { path } => match inspect::verify(&path) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Dump {
            path,
            conversation,
            messages,
        } => readmark::dump(&path, readmark::ConversationId(conversation), messages)
            .map(|text| print!("{text}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("readmark: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
