//! A 3-server NATS JetStream cluster and 3 readmark nodes, all real child
//! processes on loopback: a random workload through several NATS servers,
//! one node and one NATS server SIGKILLed mid-stream, then every answer
//! compared with a single-node model of the same operations.
//!
//! Needs Debian's `nats-server` (scripts/setup.sh and .ci/run install it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use readmark_cluster::local::{LogDir, NodeArgs, Process, rotated, start_nats, start_node};
use readmark_cluster::{Answer, CatchUp, Client, Op, Query, State};
use tokio::sync::Mutex;

const PARTITIONS: u32 = 6;
/// Lease lifetime of the test's nodes: a dead node's partitions must be
/// served again within `FAILOVER_BOUND`.
const LEASE_TTL_MS: u64 = 5_000;
const FAILOVER_BOUND: Duration = Duration::from_secs(30);

fn node_args() -> NodeArgs {
    NodeArgs {
        binary: env!("CARGO_BIN_EXE_readmark-node").into(),
        partitions: PARTITIONS,
        replicas: 3,
        lease_ttl: Duration::from_millis(LEASE_TTL_MS),
        checkpoint_every: Duration::from_secs(2),
    }
}

/// Who owns each partition, once every partition answers.
async fn owners(client: &Client, deadline: Duration) -> Vec<String> {
    let give_up = Instant::now() + deadline;
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        loop {
            match client.ask(p, Query::Ping, 0).await {
                Ok(a) => {
                    out.push(a.node);
                    break;
                }
                Err(e) => assert!(
                    Instant::now() < give_up,
                    "partition {p} never answered: {e}"
                ),
            }
        }
    }
    out
}

/// What the workload did, shared by its tasks.
#[derive(Default)]
struct Record {
    /// Every acknowledged write, by stream sequence.
    acked: BTreeMap<u64, Op>,
    /// Per partition, the highest acknowledged sequence.
    last_seq: HashMap<u32, u64>,
    /// Marks read back mid-stream, per (conversation, user): never lower.
    seen: HashMap<(u64, u64), u64>,
    backwards: Vec<String>,
}

struct Conversation {
    id: u64,
    core: Vec<u64>,
    guest: u64,
    guest_in: bool,
    last_message: u64,
    last_reply: u64,
}

/// Catches `user` up to the end, as a client would: from `start` (the
/// states it shows and its cursor) or, with none, from a snapshot;
/// applies every page (states replace, hidden readers go). `None` if the
/// cluster asks for a snapshot.
async fn catch_up_all(
    client: &Client,
    user: u64,
    start: Option<&(Vec<State>, String)>,
    after: &[u64],
) -> Option<(Vec<State>, String)> {
    let mut shown: BTreeMap<(u64, u64, u64), State> = BTreeMap::new();
    let mut cursor = None;
    if let Some((states, c)) = start {
        shown.extend(states.iter().map(|s| (s.key(), *s)));
        cursor = Some(c.clone());
    }
    // Bounded: pages of at most a thousand states, a few thousand states.
    for _ in 0..1_000 {
        match client
            .catch_up(user, cursor.as_deref(), after)
            .await
            .unwrap()
        {
            CatchUp::SnapshotRequired => return None,
            CatchUp::States {
                states,
                hidden,
                cursor: next,
                more,
            } => {
                for h in hidden {
                    shown.retain(|&(c, t, r), _| {
                        !(c == h.conversation && r == h.reader && h.thread.is_none_or(|ht| ht == t))
                    });
                }
                shown.extend(states.into_iter().map(|s| (s.key(), s)));
                cursor = Some(next);
                if !more {
                    return Some((shown.into_values().collect(), cursor.unwrap_or_default()));
                }
            }
        }
    }
    panic!("catch-up of {user} never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_a_node_and_a_nats_server_killed_mid_stream() {
    // Every process logs to a file in it; READMARK_KEEP_TEST_DIR=1 keeps
    // it to read them.
    let dir = LogDir::new().unwrap();
    let (mut nats, urls) = start_nats(dir.path(), 3).unwrap();
    let mut nodes: Vec<Process> = (0..3)
        .map(|i| {
            start_node(
                dir.path(),
                &format!("node{i}"),
                &rotated(&urls, i),
                &node_args(),
            )
            .unwrap()
        })
        .collect();
    let clients: Vec<Client> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                Client::connect(&rotated(&urls, i), PARTITIONS)
                    .await
                    .unwrap()
                    .deadline(Duration::from_secs(60)),
            );
        }
        v
    };
    let before = owners(&clients[0], Duration::from_secs(90)).await;
    eprintln!("owners before: {before:?}");

    // Setup: 12 conversations of 4 core members and one guest who comes
    // and goes, users 1..=8.
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    let mut conversations = Vec::new();
    for c in 1..=12u64 {
        let mut core: Vec<u64> = Vec::new();
        while core.len() < 4 {
            let u = rng.random_range(1..=8);
            if !core.contains(&u) {
                core.push(u);
            }
        }
        let guest = (1..=8).find(|u| !core.contains(u)).unwrap();
        conversations.push(Conversation {
            id: c,
            core,
            guest,
            guest_in: false,
            last_message: 0,
            last_reply: 1_000_000,
        });
    }
    // Who may ever hear of a conversation: its core members and its guest.
    let allowed: HashMap<u64, Vec<u64>> = conversations
        .iter()
        .map(|c| (c.id, c.core.iter().copied().chain([c.guest]).collect()))
        .collect();
    // Every receipt event the nodes publish, on any user's subject.
    let mut events_sub = clients[2].nats().subscribe("rm.ev.>").await.unwrap();
    let (events_done, mut events_done_rx) = tokio::sync::oneshot::channel::<()>();
    let events = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut seen = Vec::new();
        let mut done = false;
        loop {
            // Until told the workload is over, then until a quiet second
            // (events are coalesced for up to a window).
            let next = tokio::select! {
                m = events_sub.next() => m,
                _ = &mut events_done_rx, if !done => { done = true; continue; }
                () = tokio::time::sleep(Duration::from_secs(2)), if done => None,
            };
            let Some(m) = next else { break };
            let user: u64 = m.subject.rsplit('.').next().unwrap().parse().unwrap();
            let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            // An unread flag goes to its owner only, and names no reader.
            let reader = body["reader"].as_u64().unwrap_or(user);
            seen.push((user, body["conversation"].as_u64().unwrap(), reader));
        }
        seen
    });
    let record = Arc::new(Mutex::new(Record::default()));
    let mut setup = vec![];
    for c in &conversations {
        setup.push(Op::CreateConversation { conversation: c.id });
        for &u in &c.core {
            setup.push(Op::AddMember {
                conversation: c.id,
                user: u,
                at: 1,
            });
        }
    }
    for (i, op) in setup.iter().enumerate() {
        let ack = clients[i % 3]
            .write(op, &format!("setup-{i}"))
            .await
            .unwrap();
        let mut r = record.lock().await;
        r.acked.insert(ack.sequence, op.clone());
        let e = r.last_seq.entry(ack.partition).or_default();
        *e = (*e).max(ack.sequence);
    }

    // Each user's view before the workload, to catch up from at the end.
    let mut early_snapshots = HashMap::new();
    for u in 1..=8u64 {
        let s = catch_up_all(&clients[0], u, None, &[]).await.unwrap();
        early_snapshots.insert(u, s);
    }

    // The workload: three writers, each on its own client (its own NATS
    // server) and its own conversations.
    let killed_at: Arc<Mutex<Option<(Instant, String)>>> = Arc::new(Mutex::new(None));
    // Writer 0 asks for the node's kill and waits until it is done, so
    // that its remaining writes come after the kill whatever the timing.
    let (kill_node_tx, mut kill_node_rx) =
        tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>(1);
    let (kill_nats_tx, mut kill_nats_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut groups: Vec<Vec<Conversation>> = vec![vec![], vec![], vec![]];
    for (i, c) in conversations.into_iter().enumerate() {
        groups[i % 3].push(c);
    }
    const OPS_PER_WRITER: usize = 900;
    let mut writers = Vec::new();
    for (w, mut convs) in groups.into_iter().enumerate() {
        let client = clients[w].clone();
        let record = record.clone();
        let kill_node_tx = kill_node_tx.clone();
        let kill_nats_tx = kill_nats_tx.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(w as u64);
            for i in 0..OPS_PER_WRITER {
                // Microseconds, increasing with the writer's operations.
                let at = 11 + i as u64;
                if w == 0 && i == 300 {
                    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                    kill_node_tx.send(done_tx).await.unwrap();
                    done_rx.await.unwrap();
                }
                if w == 0 && i == 600 {
                    kill_nats_tx.send(()).await.unwrap();
                }
                let k = rng.random_range(0..convs.len());
                let c = &mut convs[k];
                let roll = rng.random_range(0..100);
                let members: Vec<u64> = c
                    .core
                    .iter()
                    .copied()
                    .chain(c.guest_in.then_some(c.guest))
                    .collect();
                let who = members[rng.random_range(0..members.len())];
                let op = if roll < 25 || c.last_message == 0 {
                    c.last_message += 1 + rng.random_range(0..3);
                    Op::send(c.id, c.last_message, who, at)
                } else if roll < 29 {
                    // A reply in the thread of message 1, mentioning
                    // someone now and then.
                    c.last_reply += 1;
                    Op::RecordMessage {
                        conversation: c.id,
                        thread: Some(1),
                        message: c.last_reply,
                        sender: who,
                        at,
                        mentions: members
                            .iter()
                            .copied()
                            .filter(|&u| u % 3 == roll % 3)
                            .collect(),
                        mention_everyone: false,
                        system: false,
                    }
                } else if roll < 72 {
                    let m = rng.random_range(1..=c.last_message);
                    Op::read(c.id, who, m, at)
                } else if roll < 76 {
                    Op::MarkRead {
                        conversation: c.id,
                        thread: Some(1),
                        user: who,
                        message: c.last_reply,
                        at,
                    }
                } else if roll < 86 {
                    let m = rng.random_range(1..=c.last_message);
                    Op::view(c.id, who, m, at)
                } else if roll < 89 {
                    Op::SetUnreadFlag {
                        conversation: c.id,
                        thread: None,
                        user: who,
                        unread: roll % 2 == 0,
                        at,
                    }
                } else if roll < 92 {
                    Op::SetPrivacy {
                        user: who,
                        conversation: Some(c.id),
                        private: roll % 2 == 0,
                    }
                } else if roll < 93 {
                    // Privacy everywhere: one write per partition.
                    let op = Op::SetPrivacy {
                        user: who,
                        conversation: None,
                        private: i % 2 == 0,
                    };
                    let acks = client
                        .write_everywhere(&op, &format!("w{w}-{i}"))
                        .await
                        .unwrap();
                    let mut r = record.lock().await;
                    for ack in acks {
                        r.acked.insert(ack.sequence, op.clone());
                        let e = r.last_seq.entry(ack.partition).or_default();
                        *e = (*e).max(ack.sequence);
                    }
                    continue;
                } else if c.guest_in {
                    c.guest_in = false;
                    Op::RemoveMember {
                        conversation: c.id,
                        user: c.guest,
                    }
                } else {
                    c.guest_in = true;
                    Op::AddMember {
                        conversation: c.id,
                        user: c.guest,
                        at,
                    }
                };
                let ack = client.write(&op, &format!("w{w}-{i}")).await.unwrap();
                {
                    let mut r = record.lock().await;
                    r.acked.insert(ack.sequence, op.clone());
                    let e = r.last_seq.entry(ack.partition).or_default();
                    *e = (*e).max(ack.sequence);
                }
                // Read a mark back through the owner, after this writer's
                // last write there: never lower than seen before.
                if i % 10 == 0 {
                    // Core members never leave: a removal clears the guest's mark.
                    let u = c.core[rng.random_range(0..c.core.len())];
                    let a = client
                        .query(
                            c.id,
                            Query::Mark {
                                conversation: c.id,
                                thread: None,
                                user: u,
                            },
                            ack.sequence,
                        )
                        .await
                        .unwrap();
                    if let Answer::Mark { mark } = a.answer {
                        let up_to = mark.map_or(0, |m| m.0);
                        let mut guard = record.lock().await;
                        let r: &mut Record = &mut guard;
                        let prev = r.seen.entry((c.id, u)).or_default();
                        if up_to < *prev {
                            let msg =
                                format!("({}, {u}): {prev} then {up_to} from {}", c.id, a.node);
                            r.backwards.push(msg);
                        }
                        *prev = (*prev).max(up_to);
                    }
                }
            }
            convs
        }));
    }
    drop((kill_node_tx, kill_nats_tx));

    // The killer: a node (the owner of the busiest partition) at the first signal,
    // a NATS server at the second; then time how long the dead node's
    // partitions take to answer from another node.
    let killed_tx = kill_node_rx.recv().await.unwrap();
    // The owner of the busiest partition: with 12 conversations over 6
    // partitions some hold none, and killing their owner would restore
    // nothing.
    let busiest = (0..PARTITIONS)
        .max_by_key(|&p| {
            (1..=12u64)
                .filter(|&c| clients[0].partition_of(c) == p)
                .count()
        })
        .unwrap();
    let victim = before[busiest as usize].clone();
    let orphaned: Vec<u32> = (0..PARTITIONS)
        .filter(|&p| before[p as usize] == victim)
        .collect();
    // The kill comes once the victim has uploaded a checkpoint of each of
    // its partitions (every 2 s), so that the new owner restores from one
    // and replays only the log after it; the writers go on meanwhile.
    let js = async_nats::jetstream::new(clients[0].nats().clone());
    let checkpoints = js
        .get_object_store(readmark_cluster::CHECKPOINTS)
        .await
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(60);
    // Partitions that hold conversations (the setup wrote to them); one
    // with none has nothing to checkpoint.
    let written: Vec<u32> = record.lock().await.last_seq.keys().copied().collect();
    for p in orphaned.iter().copied().filter(|p| written.contains(p)) {
        loop {
            let position = match checkpoints.info(format!("p{p}")).await {
                Ok(info) => info.description.and_then(|d| d.parse::<u64>().ok()),
                Err(_) => None,
            };
            if position.is_some_and(|at| at > 0) {
                eprintln!("partition {p} checkpointed at {position:?}");
                break;
            }
            assert!(Instant::now() < give_up, "no checkpoint of partition {p}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let v = nodes.iter_mut().find(|n| n.name() == victim).unwrap();
    v.kill();
    let killed = Instant::now();
    *killed_at.lock().await = Some((killed, victim.clone()));
    eprintln!("SIGKILLed {victim}, owner of partitions {orphaned:?}");
    killed_tx.send(()).unwrap();
    let watcher = {
        let client = clients[1].clone();
        let victim = victim.clone();
        let orphaned = orphaned.clone();
        tokio::spawn(async move {
            let mut served_after = Vec::new();
            for p in orphaned {
                loop {
                    if let Ok(a) = client.ask(p, Query::Ping, 0).await
                        && a.node != victim
                    {
                        served_after.push((p, killed.elapsed(), a.node));
                        break;
                    }
                    assert!(
                        killed.elapsed() < FAILOVER_BOUND * 2,
                        "partition {p} not taken over"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            served_after
        })
    };
    kill_nats_rx.recv().await.unwrap();
    nats[2].kill();
    eprintln!("SIGKILLed {}", nats[2].name());

    for w in writers {
        w.await.unwrap();
    }
    let served_after = watcher.await.unwrap();
    for (p, t, node) in &served_after {
        eprintln!(
            "partition {p} served again by {node} {:.1} s after the kill",
            t.as_secs_f64()
        );
        assert!(
            *t < FAILOVER_BOUND,
            "partition {p} took {t:?} (bound {FAILOVER_BOUND:?})"
        );
    }

    let record = record.lock().await;
    assert!(
        record.backwards.is_empty(),
        "marks went backwards: {:?}",
        record.backwards
    );

    let phase = Instant::now();
    // Nothing acknowledged lost: the stream still holds every
    // acknowledged write, at its sequence.
    let stream = js.get_stream(readmark_cluster::STREAM).await.unwrap();
    for (&seq, op) in &record.acked {
        let m = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(
            &serde_json::from_slice::<Op>(&m.payload).unwrap(),
            op,
            "sequence {seq}"
        );
    }

    eprintln!("stream checked in {:?}", phase.elapsed());
    // The single-node model: one store, every acknowledged write in log
    // order.
    let model_dir = dir.path().join("model");
    let model = readmark::Store::open(&model_dir, readmark::Config::new()).unwrap();
    let mut refused = 0;
    for op in record.acked.values() {
        if let readmark_cluster::Applied::Refused(_) = op.apply(&model).unwrap() {
            refused += 1;
        }
    }
    let after: Vec<u64> = (0..PARTITIONS)
        .map(|p| record.last_seq.get(&p).copied().unwrap_or(0))
        .collect();
    let (mut compared, mut continued) = (0, 0);
    for c in 1..=12u64 {
        let p = clients[0].partition_of(c);
        for u in 1..=8u64 {
            let q = Query::Mark {
                conversation: c,
                thread: None,
                user: u,
            };
            let a = clients[(c + u) as usize % 2]
                .query(c, q.clone(), after[p as usize])
                .await
                .unwrap();
            assert_eq!(
                a.answer,
                q.answer(&model, 0).unwrap(),
                "mark ({c}, {u}) from {}",
                a.node
            );
            compared += 1;
        }
        let last = record
            .acked
            .values()
            .filter_map(|op| match op {
                Op::RecordMessage {
                    conversation,
                    thread: None,
                    message,
                    ..
                } if *conversation == c => Some(*message),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        for m in (1..=last).step_by(3) {
            for viewer in 1..=8u64 {
                let q = Query::ReadBy {
                    conversation: c,
                    thread: None,
                    viewer,
                    message: m,
                    limit: 100,
                    after: None,
                };
                let a = clients[1]
                    .query(c, q.clone(), after[p as usize])
                    .await
                    .unwrap();
                let expected = q.answer(&model, 0).unwrap();
                let users = |a: &Answer| match a {
                    Answer::ReadBy { count, readers, .. } => {
                        Some((*count, readers.iter().map(|r| r.user).collect::<Vec<_>>()))
                    }
                    _ => None,
                };
                match (&a.answer, &expected) {
                    (Answer::Refused { .. }, Answer::Refused { .. }) => {}
                    (got, want) => {
                        assert_eq!(users(got), users(want), "read_by ({c}, {m}) for {viewer}")
                    }
                }
                compared += 1;
            }
        }
    }
    eprintln!("marks and read_by compared at {:?}", phase.elapsed());
    for u in 1..=8u64 {
        let got = clients[u as usize % 2]
            .unread_counts(u, &after)
            .await
            .unwrap();
        let mut want: Vec<(u64, u64, u64, bool)> = model
            .unread_counts(readmark::UserId(u))
            .unwrap()
            .into_iter()
            .map(|(c, n)| (c.0, n.count, n.mentions, n.marked_unread))
            .collect();
        want.sort_unstable();
        assert_eq!(got, want, "unread counts of {u}");
        compared += 1;
        // Catch-up: the snapshot, in pages, equals the model's; the
        // cursor taken before the workload either continues to it or,
        // since owners changed, asks for a snapshot.
        let snapshot = catch_up_all(&clients[u as usize % 3], u, None, &after).await;
        let mut want: Vec<State> = model
            .snapshot(readmark::UserId(u))
            .unwrap()
            .states
            .iter()
            .map(State::from)
            .collect();
        want.sort_unstable_by_key(State::key);
        let (got, _) = snapshot.expect("a snapshot is never refused");
        assert_eq!(got, want, "snapshot of {u}");
        compared += 1;
        if let Some((changed, _)) =
            catch_up_all(&clients[0], u, Some(&early_snapshots[&u]), &after).await
        {
            assert_eq!(changed, want, "{u}'s early snapshot and the changes since");
            continued += 1;
        }
    }
    eprintln!(
        "{} acknowledged writes ({refused} refused alike by the model), {compared} answers equal to the model, \
         {continued} of 8 early cursors continued (the others asked for a snapshot: owners changed)",
        record.acked.len()
    );
    assert!(
        record.acked.len() >= 3 * OPS_PER_WRITER,
        "every write acknowledged"
    );
    assert!(compared > 100);

    // Receipt events reached members only, about members.
    events_done.send(()).unwrap();
    let seen = events.await.unwrap();
    for (user, c, reader) in &seen {
        let members = &allowed[c];
        assert!(
            members.contains(user),
            "user {user} got an event of conversation {c}"
        );
        assert!(
            members.contains(reader),
            "event of {c} about non-member {reader}"
        );
    }
    assert!(!seen.is_empty(), "no receipt event reached NATS");
    eprintln!("{} receipt events, every one to a member", seen.len());
    drop(nodes);
    drop(nats);
}
