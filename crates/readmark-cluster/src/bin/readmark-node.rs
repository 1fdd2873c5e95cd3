//! `readmark-node`: one readmark node of a NATS JetStream cluster (see the
//! `readmark_cluster` crate's docs and docs/cluster.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

// jemalloc for the whole process, RocksDB's C++ included, as in the other
// binaries (docs/benchmarks.md, "The hour again, memory by owner").
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

/// One readmark node: leases partitions, applies their log, answers their
/// queries, forwards their receipt events and checkpoints them.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// This node's id, unique in the cluster.
    #[arg(long, env = "READMARK_NODE_ID")]
    node_id: String,
    /// NATS servers, comma-separated.
    #[arg(
        long,
        env = "READMARK_NATS",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: Vec<String>,
    /// Where the node keeps its partitions' stores.
    #[arg(long, default_value = "./readmark-node-data")]
    data: PathBuf,
    /// Partitions of the cluster (the same on every node).
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// JetStream replicas of the stream and buckets.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Lease lifetime, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    lease_ttl_ms: u64,
    /// Checkpoint interval, milliseconds.
    #[arg(long, default_value_t = 60_000)]
    checkpoint_every_ms: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = readmark_cluster::NodeConfig::new(args.node_id, args.nats, args.data)
        .partitions(args.partitions)
        .replicas(args.replicas)
        .lease_ttl(Duration::from_millis(args.lease_ttl_ms))
        .checkpoint_every(Duration::from_millis(args.checkpoint_every_ms));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("readmark-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(readmark_cluster::run(config, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("readmark-node: {e}");
            ExitCode::FAILURE
        }
    }
}
