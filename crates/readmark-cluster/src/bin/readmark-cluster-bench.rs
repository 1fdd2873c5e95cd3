//! `readmark-cluster-bench`: the same write workload through a cluster of
//! 1 and of 3 readmark nodes (on a 3-server JetStream cluster, replicas
//! 3, all on this machine), and into one embedded store, side by side:
//! writes acknowledged and applied per second, acknowledgement latency,
//! and what the log stores per write. Medians of `--runs` runs, runs of
//! each setting interleaved.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use readmark_cluster::local::{NodeArgs, Process, rotated, start_nats, start_node};
use readmark_cluster::{Client, Op, Query};

#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Cluster throughput: 1 node against 3, and against one embedded store.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Seconds of load per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Runs per setting (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Partitions.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Writes in flight (async writers, spread over 3 NATS connections).
    #[arg(long, default_value_t = 48)]
    writers: usize,
    /// Conversations (5 members each).
    #[arg(long, default_value_t = 240)]
    conversations: u64,
    /// Node counts to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    nodes: Vec<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also measure, in the same runs, writes answered once the owner
    /// applied them (`Client::write_applied`: what readmark-server waits
    /// for in front of a cluster).
    #[arg(long)]
    applied: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
struct Run {
    setting: String,
    writes: u64,
    acked_per_s: f64,
    applied_per_s: f64,
    ack_p50_us: f64,
    ack_p99_us: f64,
    log_bytes_per_write: f64,
    payload_bytes_per_write: f64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let node_bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("readmark-node")))
        .filter(|p| p.exists());
    let Some(node_bin) = node_bin else {
        eprintln!(
            "readmark-cluster-bench: readmark-node not found next to this binary (cargo build --release --workspace)"
        );
        return std::process::ExitCode::FAILURE;
    };
    let mut all: Vec<Run> = Vec::new();
    for run in 0..args.runs {
        for &n in &args.nodes {
            for applied in [false, true] {
                if applied && !args.applied {
                    continue;
                }
                eprintln!(
                    "run {}/{}: {n} node(s), applied {applied}",
                    run + 1,
                    args.runs
                );
                match runtime.block_on(cluster_run(&args, &node_bin, n, applied)) {
                    Ok(r) => all.push(r),
                    Err(e) => {
                        eprintln!("readmark-cluster-bench: {e}");
                        return std::process::ExitCode::FAILURE;
                    }
                }
            }
        }
        eprintln!("run {}/{}: one embedded store", run + 1, args.runs);
        all.push(embedded_run(&args));
    }
    let settings: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for r in &all {
            if !v.contains(&r.setting) {
                v.push(r.setting.clone());
            }
        }
        v
    };
    let medians: Vec<Run> = settings
        .iter()
        .map(|s| median(all.iter().filter(|r| &r.setting == s).cloned().collect()))
        .collect();
    if args.json {
        println!("{}", serde_json::json!({ "runs": all, "medians": medians }));
    } else {
        println!(
            "{:<34} {:>8} {:>11} {:>11} {:>9} {:>9} {:>10} {:>9}",
            "setting", "writes", "acked/s", "applied/s", "p50 us", "p99 us", "log B/wr", "JSON B"
        );
        for r in &medians {
            println!(
                "{:<34} {:>8} {:>11.0} {:>11.0} {:>9.1} {:>9.1} {:>10.0} {:>9.0}",
                r.setting,
                r.writes,
                r.acked_per_s,
                r.applied_per_s,
                r.ack_p50_us,
                r.ack_p99_us,
                r.log_bytes_per_write,
                r.payload_bytes_per_write
            );
        }
        if let (Some(one), Some(three)) = (
            medians.iter().find(|r| r.setting == "cluster, 1 node"),
            medians.iter().find(|r| r.setting == "cluster, 3 nodes"),
        ) {
            println!(
                "3 nodes / 1 node: acked {:.2}x, applied {:.2}x",
                three.acked_per_s / one.acked_per_s,
                three.applied_per_s / one.applied_per_s
            );
        }
        for r in medians.iter().filter(|r| r.setting.ends_with(", applied")) {
            let plain = r.setting.trim_end_matches(", applied");
            if let Some(acked) = medians.iter().find(|m| m.setting == plain) {
                println!(
                    "{plain}: answered once applied / once acknowledged: p50 {:.2}x, p99 {:.2}x, writes/s {:.2}x",
                    r.ack_p50_us / acked.ack_p50_us.max(0.001),
                    r.ack_p99_us / acked.ack_p99_us.max(0.001),
                    r.acked_per_s / acked.acked_per_s.max(0.001)
                );
            }
        }
        if let (Some(one), Some(embedded)) = (
            medians.iter().find(|r| r.setting == "cluster, 1 node"),
            medians.iter().find(|r| r.setting.starts_with("embedded")),
        ) {
            println!(
                "embedded / 1-node cluster: {:.1}x the writes per second, p50 latency {:.1}x lower",
                embedded.acked_per_s / one.acked_per_s,
                one.ack_p50_us / embedded.ack_p50_us.max(0.001)
            );
        }
    }
    std::process::ExitCode::SUCCESS
}

/// Latencies up to ten minutes in nanoseconds (or microseconds), 3
/// significant figures: `saturating_record` clamps to the bounds, so they
/// must hold every value.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

/// Per field, the median over runs (each field on its own).
fn median(runs: Vec<Run>) -> Run {
    let m = |f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    Run {
        setting: runs.first().map(|r| r.setting.clone()).unwrap_or_default(),
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        writes: m(&|r| r.writes as f64) as u64,
        acked_per_s: m(&|r| r.acked_per_s),
        applied_per_s: m(&|r| r.applied_per_s),
        ack_p50_us: m(&|r| r.ack_p50_us),
        ack_p99_us: m(&|r| r.ack_p99_us),
        log_bytes_per_write: m(&|r| r.log_bytes_per_write),
        payload_bytes_per_write: m(&|r| r.payload_bytes_per_write),
    }
}

/// Both settings' starting state: `conversations` conversations of 5
/// members and one message each.
fn setup(conversations: u64) -> Vec<Op> {
    let mut ops = Vec::new();
    for c in 1..=conversations {
        ops.push(Op::CreateConversation { conversation: c });
        for u in 1..=5 {
            ops.push(Op::AddMember {
                conversation: c,
                user: u,
                at: 1,
            });
        }
        ops.push(Op::send(c, 1, 1, 2));
    }
    ops
}

/// The write a writer makes next in one of its conversations: mostly
/// reads up to the newest message, one in ten a new message.
fn next_op(rng: &mut ChaCha8Rng, c: u64, newest: &mut u64, at: u64) -> Op {
    let user = rng.random_range(1..=5);
    if rng.random_range(0..10) == 0 {
        *newest += 1;
        Op::send(c, *newest, user, at)
    } else {
        Op::read(c, user, *newest, at)
    }
}

async fn cluster_run(
    args: &Args,
    node_bin: &std::path::Path,
    nodes: usize,
    applied: bool,
) -> readmark_cluster::Result<Run> {
    let dir = tempfile::tempdir()?;
    let (_nats, urls) = start_nats(dir.path(), 3)?;
    let node_args = NodeArgs {
        binary: node_bin.to_path_buf(),
        partitions: args.partitions,
        replicas: 3,
        lease_ttl: Duration::from_secs(10),
        checkpoint_every: Duration::from_secs(60),
    };
    let _nodes: Vec<Process> = (0..nodes)
        .map(|i| {
            start_node(
                dir.path(),
                &format!("node{i}"),
                &rotated(&urls, i),
                &node_args,
            )
        })
        .collect::<readmark_cluster::Result<_>>()?;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(Client::connect(&rotated(&urls, i), args.partitions).await?);
    }
    // Every partition owned, and owners spread over the nodes.
    let give_up = Instant::now() + Duration::from_secs(180);
    loop {
        let mut owners = std::collections::BTreeSet::new();
        let mut all = true;
        for p in 0..args.partitions {
            match clients[0].ask(p, Query::Ping, 0).await {
                Ok(a) => {
                    owners.insert(a.node);
                }
                Err(_) => all = false,
            }
        }
        if all && owners.len() == nodes {
            break;
        }
        if Instant::now() > give_up {
            return Err(readmark_cluster::Error::Timeout(
                "partitions not spread over the nodes".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Setup: conversations of 5 members and one message.
    let setup = setup(args.conversations);
    for (i, chunk) in setup.chunks(64).enumerate() {
        let writes = chunk.iter().enumerate().map(|(j, op)| {
            let client = clients[j % 3].clone();
            let id = format!("setup-{i}-{j}");
            async move { client.write(op, &id).await }
        });
        for r in futures_util::future::join_all(writes).await {
            r?;
        }
    }
    // Load.
    let acked = Arc::new(AtomicU64::new(0));
    let payload = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let client = clients[w % 3].clone();
        let (acked, payload) = (acked.clone(), payload.clone());
        let convs: Vec<u64> = (1..=args.conversations)
            .filter(|c| (*c as usize) % args.writers == w)
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(w as u64);
            let mut newest = vec![1u64; convs.len()];
            let mut h = histogram();
            let mut last = vec![0u64; 0];
            let mut i = 0u64;
            while Instant::now() < deadline && !convs.is_empty() {
                let k = rng.random_range(0..convs.len());
                i += 1;
                let op = next_op(&mut rng, convs[k], &mut newest[k], 10 + i);
                let bytes = serde_json::to_vec(&op).map_or(0, |b| b.len() as u64);
                let t = Instant::now();
                let id = format!("w{w}-{i}");
                let ack = if applied {
                    client.write_applied(&op, &id).await?.ack
                } else {
                    client.write(&op, &id).await?
                };
                h.saturating_record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                acked.fetch_add(1, Ordering::Relaxed);
                payload.fetch_add(bytes, Ordering::Relaxed);
                let p = ack.partition as usize;
                if last.len() <= p {
                    last.resize(p + 1, 0);
                }
                last[p] = last[p].max(ack.sequence);
            }
            Ok::<_, readmark_cluster::Error>((h, last))
        }));
    }
    let mut h = histogram();
    let mut last = vec![0u64; args.partitions as usize];
    for t in tasks {
        let (th, tl) = t
            .await
            .map_err(|e| readmark_cluster::Error::Nats(e.to_string()))??;
        h.add(th).ok();
        for (p, s) in tl.into_iter().enumerate() {
            last[p] = last[p].max(s);
        }
    }
    let acked_time = started.elapsed();
    // Applied: every partition's owner has applied its last write.
    for (p, &s) in last.iter().enumerate() {
        clients[0]
            .ask(u32::try_from(p).unwrap_or(0), Query::Ping, s)
            .await?;
    }
    let applied_time = started.elapsed();
    let js = async_nats::jetstream::new(clients[0].nats().clone());
    let info = js
        .get_stream(readmark_cluster::STREAM)
        .await
        .map_err(|e| readmark_cluster::Error::Nats(e.to_string()))?
        .get_info()
        .await
        .map_err(|e| readmark_cluster::Error::Nats(e.to_string()))?;
    let n = acked.load(Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    Ok(Run {
        setting: format!(
            "cluster, {nodes} node{}{}",
            if nodes == 1 { "" } else { "s" },
            if applied { ", applied" } else { "" }
        ),
        writes: n,
        acked_per_s: n as f64 / acked_time.as_secs_f64(),
        applied_per_s: n as f64 / applied_time.as_secs_f64(),
        ack_p50_us: h.value_at_quantile(0.5) as f64,
        ack_p99_us: h.value_at_quantile(0.99) as f64,
        log_bytes_per_write: info.state.bytes as f64 / info.state.messages.max(1) as f64,
        payload_bytes_per_write: payload.load(Ordering::Relaxed) as f64 / n.max(1) as f64,
    })
}

/// The same writes into one embedded store at `Durability::Memory` (what
/// a node's applier does), from as many threads as the machine has cores.
fn embedded_run(args: &Args) -> Run {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Arc::new(
        readmark::Store::open(
            dir.path(),
            readmark::Config::new().durability(readmark::Durability::Memory),
        )
        .expect("store"),
    );
    for op in setup(args.conversations) {
        op.apply(&store).expect("setup");
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let handles: Vec<_> = (0..threads)
        .map(|w| {
            let store = store.clone();
            let convs: Vec<u64> = (1..=args.conversations)
                .filter(|c| (*c as usize) % threads == w)
                .collect();
            std::thread::spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(w as u64);
                let mut newest = vec![1u64; convs.len()];
                let mut h = histogram();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let k = rng.random_range(0..convs.len());
                    n += 1;
                    let op = next_op(&mut rng, convs[k], &mut newest[k], 10 + n);
                    let t = Instant::now();
                    op.apply(&store).expect("apply");
                    h.saturating_record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                }
                (h, n)
            })
        })
        .collect();
    let mut h = histogram();
    let mut n = 0;
    for t in handles {
        let (th, tn) = t.join().expect("writer thread");
        h.add(th).ok();
        n += tn;
    }
    let elapsed = started.elapsed();
    store.flush().expect("flush");
    let applied = started.elapsed();
    #[allow(clippy::cast_precision_loss)]
    Run {
        setting: "embedded store (Memory)".into(),
        writes: n,
        acked_per_s: n as f64 / elapsed.as_secs_f64(),
        applied_per_s: n as f64 / applied.as_secs_f64(),
        ack_p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
        ack_p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        log_bytes_per_write: 0.0,
        payload_bytes_per_write: 0.0,
    }
}
