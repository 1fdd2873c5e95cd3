//! A readmark node: holds leases on partitions, applies each owned
//! partition's log to a store of its own, answers its queries, forwards
//! its receipt events and checkpoints it (docs/cluster.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use futures_util::StreamExt;
use parking_lot::Mutex;
use readmark::{Config, Durability, Event, Store};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::checkpoint;
use crate::config::{CHECKPOINTS, LEASES, NODES, NodeConfig, STREAM};
use crate::error::{Error, Result, blocking, nats};
use crate::op::{Answer, Applied, Op, Query, Reply, Request};
use crate::partition::{RESYNC_SUBJECT, event_subject, log_subject, query_subject};

/// How long a query may wait for its `after` sequence to be applied.
const AFTER_WAIT: Duration = Duration::from_secs(5);
/// How long an applier may stay behind the stream without receiving
/// anything before its consumer is made again.
const STALL_LIMIT: Duration = Duration::from_secs(3);
/// Queries a partition answers at once; more wait for a permit.
const QUERIES_IN_FLIGHT: usize = 64;

/// The lease key of partition `p`.
fn lease_key(p: u32) -> String {
    format!("p{p}")
}

/// The stream, buckets and object store a cluster uses, created by the
/// first node that finds them missing (a client's writes before that are
/// retried until its deadline).
pub(crate) struct Cluster {
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) leases: kv::Store,
    pub(crate) nodes: kv::Store,
    pub(crate) checkpoints: object_store::ObjectStore,
}

impl Cluster {
    pub(crate) async fn ensure(js: jetstream::Context, config: &NodeConfig) -> Result<Cluster> {
        let stream = js
            .get_or_create_stream(stream::Config {
                name: STREAM.to_string(),
                subjects: vec![format!("{}.*", crate::partition::LOG_SUBJECT_PREFIX)],
                num_replicas: config.replicas,
                storage: stream::StorageType::File,
                max_age: config.retention,
                duplicate_window: Duration::from_secs(120),
                ..stream::Config::default()
            })
            .await
            .map_err(nats)?;
        let leases = key_value(&js, LEASES, config.lease_ttl, config.replicas).await?;
        let nodes = key_value(&js, NODES, config.lease_ttl, config.replicas).await?;
        let checkpoints = match js.get_object_store(CHECKPOINTS).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: CHECKPOINTS.to_string(),
                    num_replicas: config.replicas,
                    storage: stream::StorageType::File,
                    ..object_store::Config::default()
                })
                .await
                .map_err(nats)?,
        };
        Ok(Cluster {
            js,
            stream,
            leases,
            nodes,
            checkpoints,
        })
    }
}

/// A key-value bucket of history 1 whose values expire after `max_age`.
/// Its stream is created here, with the settings async-nats's
/// `create_key_value` uses: that call first asks for the account's info,
/// whose answer from nats-server 2.9 lacks fields the client requires.
async fn key_value(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        duplicate_window: max_age.min(Duration::from_secs(120)),
        ..stream::Config::default()
    })
    .await
    .map_err(nats)?;
    js.get_key_value(bucket).await.map_err(nats)
}

/// Connects to NATS with every server of `urls` to fall back on.
pub(crate) async fn connect(urls: &[String], name: &str) -> Result<async_nats::Client> {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| {
            u.parse()
                .map_err(|e| Error::Config(format!("NATS address {u}: {e}")))
        })
        .collect::<Result<_>>()?;
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .connect(addrs)
        .await
        .map_err(nats)
}

/// A partition this node holds the lease of.
struct Owned {
    revision: u64,
    /// Until when the node may answer for it: a quarter of the TTL before
    /// the lease, as last renewed, can run out (clock rates drift; clocks
    /// are not compared).
    valid_until: Arc<Mutex<Instant>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// Runs a node until `shutdown` resolves: then it stops its partitions
/// (flushing each and recording its position), releases their leases so
/// others take them at once, and returns.
///
/// # Errors
///
/// [`Error::Config`] for settings that cannot work; [`Error::Nats`] if the
/// cluster's stream and buckets cannot be created or found.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)?;
    let client = connect(&config.nats, &format!("readmark-node {}", config.node_id)).await?;
    // JetStream requests time out after 3 s, not 5: a request caught by a
    // lost server is retried sooner, and a partition whose owner died at
    // the same moment is back sooner.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(3))
        .build(client.clone());
    // The JetStream cluster may still be electing its leaders.
    let cluster = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match Cluster::ensure(js.clone(), &config).await {
                Ok(c) => break Arc::new(c),
                Err(e) if Instant::now() < deadline => {
                    tracing::info!("waiting for JetStream: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    };
    let failed: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(Vec::new()));
    let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
    let mut tick = tokio::time::interval(config.lease_ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // Start partitions at a place of the node's own, so that nodes
    // starting together try different partitions first.
    let offset = crate::partition::partition_of(
        config
            .node_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
        config.partitions,
    );
    tracing::info!(node = %config.node_id, "node up");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        // Partitions whose store failed: stop and give them up.
        // Taken out first: the lock must not be held across the awaits.
        let failed_now = std::mem::take(&mut *failed.lock());
        for p in failed_now {
            if let Some(o) = owned.remove(&p) {
                stop_partition(o).await;
                let _ = cluster.leases.delete(lease_key(p)).await;
            }
        }
        if let Err(e) = cluster
            .nodes
            .put(&config.node_id, bytes::Bytes::from_static(b"up"))
            .await
        {
            tracing::warn!("heartbeat: {e}");
        }
        // Renew.
        let mut lost = Vec::new();
        for (&p, o) in &mut owned {
            match cluster
                .leases
                .update(
                    lease_key(p),
                    bytes::Bytes::from(config.node_id.clone()),
                    o.revision,
                )
                .await
            {
                Ok(rev) => {
                    o.revision = rev;
                    *o.valid_until.lock() = started + config.lease_ttl * 3 / 4;
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(partition = p, "lease lost: {e}");
                    lost.push(p);
                }
                // No answer (a leader being elected, a lost server): the
                // lease may still be ours. Keep the partition, retry next
                // tick; its answers stop on their own at `valid_until`.
                Err(e) => tracing::warn!(partition = p, "lease not renewed this time: {e}"),
            }
        }
        for p in lost {
            if let Some(o) = owned.remove(&p) {
                stop_partition(o).await;
            }
        }
        // Take or give up partitions towards an even share.
        // Unknown (JetStream busy electing a leader): keep the current
        // share rather than grab or drop partitions on a guess.
        let Some(live) = live_nodes(&cluster.js).await else {
            continue;
        };
        let live = live.max(1);
        let share = config.partitions.div_ceil(live) as usize;
        if owned.len() > share {
            if let Some(p) = owned.keys().next_back().copied()
                && let Some(o) = owned.remove(&p)
            {
                tracing::info!(partition = p, "giving up a partition for balance");
                stop_partition(o).await;
                let _ = cluster.leases.delete(lease_key(p)).await;
            }
        } else if owned.len() < share {
            for i in 0..config.partitions {
                let p = (offset + i) % config.partitions;
                if owned.contains_key(&p) {
                    continue;
                }
                let Ok(revision) = cluster
                    .leases
                    .create(lease_key(p), bytes::Bytes::from(config.node_id.clone()))
                    .await
                else {
                    continue;
                };
                tracing::info!(partition = p, "lease taken");
                let valid_until = Arc::new(Mutex::new(started + config.lease_ttl * 3 / 4));
                let stop = Arc::new(AtomicBool::new(false));
                let task = tokio::spawn(run_partition(
                    Held { p, epoch: revision },
                    config.clone(),
                    client.clone(),
                    cluster.clone(),
                    valid_until.clone(),
                    stop.clone(),
                    failed.clone(),
                ));
                owned.insert(
                    p,
                    Owned {
                        revision,
                        valid_until,
                        stop,
                        task,
                    },
                );
                // One at a time: the others' leases are renewed before
                // the next restore starts.
                break;
            }
        }
    }
    tracing::info!(node = %config.node_id, "shutting down");
    for (p, o) in std::mem::take(&mut owned) {
        stop_partition(o).await;
        let _ = cluster.leases.delete(lease_key(p)).await;
    }
    // The node's heartbeat is left to expire: a delete marker would count
    // as a live subject until then anyway.
    client.flush().await.map_err(nats)?;
    Ok(())
}

async fn stop_partition(o: Owned) {
    o.stop.store(true, Ordering::SeqCst);
    *o.valid_until.lock() = Instant::now();
    let _ = o.task.await;
}

/// Nodes that announced themselves within a lease TTL: the subjects of
/// the nodes bucket's stream (one value per node, expiring with the
/// bucket's age limit). A stream info request, answered by the stream's
/// leader: listing the keys would create a consumer on every tick.
async fn live_nodes(js: &jetstream::Context) -> Option<u32> {
    let stream = js.get_stream(format!("KV_{NODES}")).await.ok()?;
    let info = stream.get_info().await.ok()?;
    u32::try_from(info.state.subjects_count).ok()
}

/// Restores, applies, serves and checkpoints partition `p` until `stop`.
/// A partition whose lease this node took, and the lease's revision then.
#[derive(Clone, Copy)]
struct Held {
    p: u32,
    epoch: u64,
}

async fn run_partition(
    held: Held,
    config: NodeConfig,
    client: async_nats::Client,
    cluster: Arc<Cluster>,
    valid_until: Arc<Mutex<Instant>>,
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Vec<u32>>>,
) {
    let p = held.p;
    // A NATS error while starting (a stream leader being elected, a
    // server lost) is retried while the lease is held; a store error
    // gives the partition up.
    while !stop.load(Ordering::SeqCst) {
        match partition_body(held, &config, &client, &cluster, &valid_until, &stop).await {
            Ok(()) => return,
            Err(e @ (Error::Nats(_) | Error::Timeout(_))) => {
                tracing::warn!(partition = p, "partition interrupted, starting again: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                tracing::error!(partition = p, "partition stopped: {e}");
                *valid_until.lock() = Instant::now();
                failed.lock().push(p);
                return;
            }
        }
    }
}

async fn partition_body(
    held: Held,
    config: &NodeConfig,
    client: &async_nats::Client,
    cluster: &Cluster,
    valid_until: &Arc<Mutex<Instant>>,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    let Held { p, epoch } = held;
    let dir = config.data_dir.join(format!("p{p}"));
    checkpoint::clean(&config.data_dir, p).await?;
    let (store, reopened) = restore(p, &dir, cluster).await?;
    let store = Arc::new(store);
    let mut applier = crate::LogApplier::resume(&store)?;
    let position = applier.last();
    tracing::info!(
        partition = p,
        position,
        "partition restored; replaying the log after it"
    );
    let (applied_tx, applied_rx) = watch::channel(position);
    // This run's number: catch-up cursors of another run are answered
    // "snapshot required", because a replay numbers its changes anew.
    let incarnation: u64 = rand::random();
    let outcomes = Arc::new(Mutex::new(Outcomes::new(position, reopened)));
    // Queries wait until the log is applied as far as it reached when the
    // run started: a new owner does not answer from a store that misses
    // writes acknowledged before it took over.
    let caught_up_to = match cluster
        .stream
        .get_last_raw_message_by_subject(&log_subject(p))
        .await
    {
        Ok(m) => m.sequence,
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => return Err(nats(e)),
    };

    let consumer = cluster
        .stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: log_subject(p),
            deliver_policy: if position == 0 {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: position + 1,
                }
            },
            ..consumer::pull::OrderedConfig::default()
        })
        .await
        .map_err(nats)?;
    let mut messages = consumer.messages().await.map_err(nats)?;

    // This attempt's tasks (queries, events) stop when it ends, whatever
    // ends it; the owner's `stop` ends the attempt.
    let done = Arc::new(AtomicBool::new(false));
    let queries = tokio::spawn(serve_queries(
        Serving {
            p,
            node: config.node_id.clone(),
            incarnation,
            epoch,
            caught_up_to,
            outcomes: outcomes.clone(),
        },
        client.clone(),
        store.clone(),
        applied_rx,
        valid_until.clone(),
        done.clone(),
    ));
    let events = spawn_events(client.clone(), store.clone(), done.clone());

    let mut checkpointed = position;
    let mut flush_tick = tokio::time::interval(config.flush_every);
    let mut checkpoint_tick = tokio::time::interval(config.checkpoint_every);
    checkpoint_tick.tick().await;
    let mut stop_poll = tokio::time::interval(Duration::from_millis(50));
    // The watchdog: the stream's last entry on the partition's subject,
    // against what was applied. An ordered consumer whose server died can
    // stay silent; past `STALL_LIMIT` behind, the partition starts again.
    let mut stall_tick = tokio::time::interval(Duration::from_secs(1));
    let mut behind_since: Option<Instant> = None;
    let subject = log_subject(p);
    let mut first_seen = false;
    // The checkpoint being packed and uploaded, at most one.
    let mut uploading: Option<JoinHandle<Result<u64>>> = None;
    let result: Result<()> = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        tokio::select! {
            m = messages.next() => {
                let Some(m) = m else { break Err(Error::Nats("log consumer ended".into())) };
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        // The ordered consumer recreates itself after a
                        // gap or a lost server; report and go on.
                        tracing::warn!(partition = p, "log consumer: {e}");
                        continue;
                    }
                };
                let seq = match m.info() {
                    Ok(i) => i.stream_sequence,
                    Err(e) => break Err(nats(e)),
                };
                match serde_json::from_slice::<Op>(&m.payload) {
                    Ok(op) => match applier.apply(&store, seq, &op) {
                        Ok(Some(applied)) => {
                            if !first_seen || matches!(applied, Applied::Refused(_)) {
                                let mut o = outcomes.lock();
                                o.first.get_or_insert(seq);
                                if let Applied::Refused(code) = applied {
                                    o.refused(seq, code);
                                }
                                first_seen = true;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => break Err(e.into()),
                    },
                    Err(e) => {
                        tracing::warn!(partition = p, seq, "undecodable log entry skipped: {e}");
                        applier.skip(seq);
                    }
                }
                applied_tx.send_replace(applier.last());
                behind_since = None;
            }
            _ = flush_tick.tick(), if applier.last() > applier.flushed() => {
                if let Err(e) = applier.flush(&store) {
                    break Err(e.into());
                }
            }
            _ = checkpoint_tick.tick(), if applier.last() > checkpointed && uploading.is_none() => {
                // Taken here (a flush and hard links); packed and uploaded
                // beside the loop, which goes on applying meanwhile.
                let position = applier.last();
                match checkpoint::take(&store, position, &config.data_dir, p).await {
                    Ok(Some(dir)) => {
                        applier.flushed_to(position);
                        uploading = Some(tokio::spawn(checkpoint::send(
                            dir,
                            position,
                            config.data_dir.clone(),
                            cluster.checkpoints.clone(),
                            p,
                        )));
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(partition = p, "checkpoint: {e}"),
                }
            }
            sent = async {
                match uploading.as_mut() {
                    Some(u) => u.await,
                    None => std::future::pending().await,
                }
            }, if uploading.is_some() => {
                uploading = None;
                match sent {
                    Ok(Ok(pos)) => {
                        checkpointed = pos;
                        tracing::info!(partition = p, position = pos, "checkpoint uploaded");
                    }
                    Ok(Err(e)) => tracing::warn!(partition = p, "checkpoint: {e}"),
                    Err(e) => tracing::warn!(partition = p, "checkpoint upload task: {e}"),
                }
            }
            _ = stall_tick.tick() => {
                let Ok(newest) = cluster.stream.get_last_raw_message_by_subject(&subject).await else {
                    continue;
                };
                if newest.sequence <= applier.last() {
                    behind_since = None;
                } else if behind_since.is_some_and(|t| t.elapsed() > STALL_LIMIT) {
                    break Err(Error::Timeout(format!(
                        "log consumer stalled at {} (stream at {})",
                        applier.last(),
                        newest.sequence
                    )));
                } else if behind_since.is_none() {
                    behind_since = Some(Instant::now());
                }
            }
            _ = stop_poll.tick() => {}
        }
    };
    // Post-mortem (cluster test): this used to set the owner's `stop`, so
    // a partition interrupted by a stalled consumer was never started
    // again while its lease stayed held and renewed: its queries got no
    // responders for good. The attempt's own tasks stop on `done`.
    done.store(true, Ordering::SeqCst);
    if let Some(u) = uploading {
        u.abort();
        let _ = u.await;
    }
    let _ = queries.await;
    let _ = events.await;
    // Record what was applied (the next owner, maybe this node again,
    // replays less) and close the store, so that a restart of the
    // partition can open it again.
    if result.is_ok() {
        applier.flush(&store)?;
    }
    match Arc::try_unwrap(store) {
        Ok(s) => s.close()?,
        Err(_) => tracing::warn!(partition = p, "store still shared at stop"),
    }
    result
}

/// Opens partition `p`'s store in `dir`, first replacing it with the
/// uploaded checkpoint if that is newer than what the directory holds.
/// The flag says whether it is the directory's own copy, reopened: that
/// one may hold a barrier applied after its recorded position (see
/// [`Outcomes`]); a new store or a checkpoint holds nothing after it.
async fn restore(p: u32, dir: &std::path::Path, cluster: &Cluster) -> Result<(Store, bool)> {
    let d = dir.to_path_buf();
    let local = blocking(move || {
        if !d.exists() {
            return Ok(None);
        }
        let s = Store::open(&d, store_config())?;
        let pos = s.log_position()?;
        Ok(Some((s, pos)))
    })
    .await?;
    let local_position = local.as_ref().and_then(|(_, pos)| *pos);
    let remote = checkpoint::position(&cluster.checkpoints, p).await?;
    let download = remote.is_some_and(|r| local_position.is_none_or(|l| r > l));
    match local {
        // The local copy is as new as the checkpoint: keep it open.
        Some((s, _)) if !download => return Ok((s, true)),
        Some((s, _)) => blocking(move || Ok(s.close()?)).await?,
        None => {}
    }
    if download {
        tracing::info!(partition = p, local = ?local_position, ?remote, "downloading the checkpoint");
        checkpoint::download(&cluster.checkpoints, p, dir).await?;
    }
    let d: PathBuf = dir.to_path_buf();
    let store = blocking(move || Ok(Store::open(&d, store_config())?)).await?;
    Ok((store, false))
}

/// The log is the durable copy: the store buffers at `Memory` and the
/// applier records the log position with what it flushes.
fn store_config() -> Config {
    Config::new().durability(Durability::Memory)
}

/// Refusals of the writes a run applied, for [`Query::Outcome`]: the
/// most recent [`Outcomes::KEPT`], by sequence.
struct Outcomes {
    /// Outcomes are known above this sequence: where the run resumed, or
    /// the newest refusal forgotten.
    floor: u64,
    /// The run's first entry, when its outcome is unknown: in a store
    /// reopened from its own directory, it may be a barrier that RocksDB
    /// held already (barriers are written before the position that
    /// covers them), whose replay is refused as a duplicate.
    first: Option<u64>,
    /// Whether the store was reopened from its own directory.
    reopened: bool,
    refused: BTreeMap<u64, &'static str>,
}

impl Outcomes {
    const KEPT: usize = 65_536;

    fn new(resumed_at: u64, reopened: bool) -> Self {
        Outcomes {
            floor: resumed_at,
            first: None,
            reopened,
            refused: BTreeMap::new(),
        }
    }

    fn refused(&mut self, seq: u64, code: &'static str) {
        self.refused.insert(seq, code);
        while self.refused.len() > Self::KEPT {
            if let Some((s, _)) = self.refused.pop_first() {
                self.floor = self.floor.max(s);
            }
        }
    }

    /// The answer for `seq`, which the run has applied.
    fn answer(&self, seq: u64) -> Answer {
        let known = seq > self.floor && !(self.reopened && self.first.is_none_or(|f| seq == f));
        Answer::Outcome {
            refused: known
                .then(|| self.refused.get(&seq).map(|c| (*c).to_string()))
                .flatten(),
            known,
        }
    }
}

/// What a partition's query service needs to know of its run.
struct Serving {
    p: u32,
    node: String,
    incarnation: u64,
    /// The lease's revision when this node took it: it grows with every
    /// change of owner, so a client that has seen a newer owner's answers
    /// refuses this one's once it is stale.
    epoch: u64,
    caught_up_to: u64,
    outcomes: Arc<Mutex<Outcomes>>,
}

async fn serve_queries(
    serving: Serving,
    client: async_nats::Client,
    store: Arc<Store>,
    applied: watch::Receiver<u64>,
    valid_until: Arc<Mutex<Instant>>,
    stop: Arc<AtomicBool>,
) {
    let p = serving.p;
    let serving = Arc::new(serving);
    let mut sub = match client.subscribe(query_subject(p)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(partition = p, "query subscription: {e}");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(QUERIES_IN_FLIGHT));
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let msg = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => break },
            _ = poll.tick() => continue,
        };
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (client, store, mut applied, valid_until, serving) = (
            client.clone(),
            store.clone(),
            applied.clone(),
            valid_until.clone(),
            serving.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let reply = match serde_json::from_slice::<Request>(&msg.payload) {
                Err(e) => Reply::Unavailable {
                    reason: format!("bad request: {e}"),
                },
                Ok(req) => {
                    let after = req.after.max(serving.caught_up_to);
                    let reached =
                        tokio::time::timeout(AFTER_WAIT, applied.wait_for(|&a| a >= after))
                            .await
                            .is_ok_and(|r| r.is_ok());
                    let at = *applied.borrow();
                    if !reached || at < after {
                        Reply::Unavailable {
                            reason: format!("sequence {after} not applied yet ({at})"),
                        }
                    } else if Instant::now() >= *valid_until.lock() {
                        Reply::Unavailable {
                            reason: "lease not held".into(),
                        }
                    } else {
                        let incarnation = serving.incarnation;
                        let answer = match req.query {
                            Query::Ping => Ok(Answer::Pong {
                                node: serving.node.clone(),
                                applied: at,
                            }),
                            Query::Outcome { seq } if seq <= at => {
                                Ok(serving.outcomes.lock().answer(seq))
                            }
                            Query::Outcome { seq } => Ok(Answer::Refused {
                                code: "invalid_argument".into(),
                                message: format!(
                                    "sequence {seq} not applied ({at}); pass it as `after`"
                                ),
                            }),
                            q => tokio::task::spawn_blocking(move || q.answer(&store, incarnation))
                                .await
                                .map_err(|e| readmark::Error::Io(std::io::Error::other(e)))
                                .and_then(|r| r),
                        };
                        match answer {
                            Ok(answer) => Reply::Ok {
                                answer,
                                node: serving.node.clone(),
                                applied: at,
                                epoch: serving.epoch,
                            },
                            Err(e) => Reply::Unavailable {
                                reason: format!("store: {e}"),
                            },
                        }
                    }
                }
            };
            if let Ok(bytes) = serde_json::to_vec(&reply) {
                let _ = client.publish(reply_to, bytes.into()).await;
            }
        });
    }
    let _ = sub.unsubscribe().await;
    // Every answer in flight holds the store: wait for them, so the
    // partition can close it.
    let _ = permits.acquire_many(QUERIES_IN_FLIGHT as u32).await;
}

/// Forwards the partition's events to `rm.ev.<user>`, as the frames a
/// WebSocket client gets (readmark-server's protocol): receipts to the
/// reader's other devices and every recipient, `hidden` to the members who
/// must forget a reader, `unread_flag` to the user's own devices; an
/// overflow of the subscription to [`RESYNC_SUBJECT`]. From a thread of
/// its own (a subscription blocks).
fn spawn_events(
    client: async_nats::Client,
    store: Arc<Store>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let sub = store.subscribe();
        let publish = |subject: String, body: &serde_json::Value| {
            let Ok(bytes) = serde_json::to_vec(body) else {
                return;
            };
            let c = client.clone();
            handle.block_on(async move {
                let _ = c.publish(subject, bytes.into()).await;
            });
        };
        while !stop.load(Ordering::SeqCst) {
            let event = match sub.recv_timeout(Duration::from_millis(100)) {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => {
                    // One event could not be resolved; the subscription
                    // reports `Lagged` next. Pushes must not stop for it.
                    tracing::warn!("events: {e}");
                    continue;
                }
            };
            match event {
                Event::Lagged { dropped } => {
                    tracing::warn!(dropped, "event subscription lagged; every client resyncs");
                    publish(RESYNC_SUBJECT.to_string(), &crate::push::resync_frame());
                }
                e => {
                    if let Some(push) = crate::push::push_of(&e) {
                        for user in push.to {
                            publish(event_subject(user.0), &push.frame);
                        }
                    }
                }
            }
        }
    })
}
