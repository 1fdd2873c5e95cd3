//! readmark-server in front of a cluster (`ServerConfig::cluster`): two
//! server nodes and two readmark nodes on one NATS JetStream server, all
//! on loopback, driven by real WebSocket clients and raw HTTP; and the
//! same script against a server on one embedded store, whose answers
//! the cluster's must equal.
//!
//! Needs Debian's `nats-server` (scripts/setup.sh and .ci/run install it).

use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use readmark::UserId;
use readmark_cluster::local::{LogDir, NodeArgs, Process, start_nats, start_node};
use readmark_cluster::{Client, Query};
use readmark_server::{Server, ServerConfig, Tokens};
use serde_json::{Value, json};

#[path = "../../readmark-server/tests/support/ws.rs"]
mod ws;
use ws::Client as Ws;

const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes!!";
const SERVICE: &str = "backend-service-credential";
const PARTITIONS: u32 = 4;
/// Upper bound of every wait: a failure, never a pace.
const BOUND: Duration = Duration::from_secs(30);

/// One NATS server, two readmark nodes, and a server node in front of the
/// cluster for each of `servers`.
struct Cluster {
    servers: Vec<Server>,
    _nodes: Vec<Process>,
    _nats: Vec<Process>,
    /// Dropped last: the processes' logs are in it.
    _dir: LogDir,
}

async fn cluster(servers: usize) -> Cluster {
    // Every process logs to a file in it; READMARK_KEEP_TEST_DIR=1 keeps
    // it to read them.
    let dir = LogDir::new().unwrap();
    let root = dir.path();
    let (nats, urls) = start_nats(root, 1).unwrap();
    let args = NodeArgs {
        binary: env!("CARGO_BIN_EXE_readmark-node").into(),
        partitions: PARTITIONS,
        replicas: 1,
        lease_ttl: Duration::from_secs(5),
        checkpoint_every: Duration::from_secs(5),
    };
    let nodes: Vec<Process> = (0..2)
        .map(|i| start_node(root, &format!("node{i}"), &urls, &args).unwrap())
        .collect();
    // Every partition owned before the clients come.
    let client = Client::connect(&urls, PARTITIONS)
        .await
        .unwrap()
        .deadline(Duration::from_secs(90));
    for p in 0..PARTITIONS {
        client.ask(p, Query::Ping, 0).await.unwrap();
    }
    let mut started = Vec::new();
    for _ in 0..servers {
        let config = ServerConfig::new(SECRET.to_vec(), SERVICE.into())
            .listen("127.0.0.1:0".parse().unwrap())
            .cluster(urls.clone(), PARTITIONS)
            .ops_per_second(100_000);
        started.push(Server::start(config).await.unwrap());
    }
    Cluster {
        servers: started,
        _nodes: nodes,
        _nats: nats,
        _dir: dir,
    }
}

fn token(user: u64) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    Tokens::new(SECRET).issue(UserId(user), exp)
}

/// One backend request; the status and the body's `error`.
async fn backend(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, body) = ws::http(addr, method, path, body, Some(SERVICE)).await;
    let error = serde_json::from_str::<Value>(&body)
        .map(|v| v["error"].clone())
        .unwrap_or(Value::Null);
    (status, error)
}

/// A WebSocket client of `user`.
async fn connect(addr: SocketAddr, user: u64) -> Ws {
    Ws::connect(addr, &token(user)).await.unwrap()
}

/// An answer with what may differ between two correct servers taken out:
/// times (each server stamps its own clock, and a read time is exact or a
/// bound depending on flushes), cursors (opaque), error texts, request
/// ids; lists sorted.
fn normalized(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                for k in ["read_at", "cursor", "id", "error", "detail"] {
                    o.remove(k);
                }
                for x in o.values_mut() {
                    strip(x);
                }
            }
            Value::Array(a) => {
                for x in a.iter_mut() {
                    strip(x);
                }
                a.sort_by_key(|x| x.to_string());
            }
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// What a client shows after catching up: (conversation, thread,
/// reader) to (up_to, marked_unread), and the cursor to continue from.
#[derive(Default)]
struct View {
    shown: std::collections::BTreeMap<(u64, u64, u64), (u64, bool)>,
    cursor: Option<String>,
}

/// Catches up from the view's cursor (a snapshot the first time, or when
/// asked to) to the end, as a client would; returns what it shows then.
async fn catch_up(ws: &mut Ws, view: &mut View) -> Vec<((u64, u64, u64), (u64, bool))> {
    // Bounded: a few pages at most, and one snapshot.
    for _ in 0..100 {
        let a = match &view.cursor {
            None => ws.call(json!({"op": "catch_up"})).await,
            Some(c) => ws.call(json!({"op": "catch_up", "cursor": c})).await,
        };
        match a["type"].as_str() {
            Some("snapshot_required") => {
                view.cursor = None;
                continue;
            }
            Some("state") => {}
            _ => panic!("catch-up answered {a}"),
        }
        if view.cursor.is_none() {
            view.shown.clear();
        }
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        for h in a["hidden"].as_array().unwrap() {
            let (c, r, t) = (n(&h["conversation"]), n(&h["reader"]), h["thread"].as_u64());
            view.shown
                .retain(|&(vc, vt, vr), _| !(vc == c && vr == r && t.is_none_or(|t| t == vt)));
        }
        for s in a["states"].as_array().unwrap() {
            let key = (n(&s["conversation"]), n(&s["thread"]), n(&s["reader"]));
            view.shown
                .insert(key, (n(&s["up_to"]), s["marked_unread"] == true));
        }
        view.cursor = a["cursor"].as_str().map(str::to_string);
        if a["more"] != true {
            return view.shown.iter().map(|(k, v)| (*k, *v)).collect();
        }
    }
    panic!("catch-up never ended");
}

/// Catches up from `view` until it shows what a fresh snapshot shows;
/// bounded (a flush interval is at most a second here).
async fn converges(ws: &mut Ws, view: &mut View, side: &str) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let shown = catch_up(ws, view).await;
        let now = catch_up(ws, &mut View::default()).await;
        if shown == now {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{side}: catch-up never came to the snapshot:\n{shown:?}\n{now:?}"
        );
        // Pacing the polls; the condition above is what ends the wait.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the clock has moved past `t` (ms): a flag cleared in the
/// same millisecond it was set is not "later" on either server, and the
/// two servers' clocks run at their own pace.
fn next_millisecond() {
    let t = readmark::Timestamp::now();
    while readmark::Timestamp::now() == t {
        std::hint::spin_loop();
    }
}

/// The same random script, step by step, against a server on one store
/// and against two server nodes in front of the cluster (each user's
/// requests alternating between them): every answer equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_answers_like_one_store() {
    let c = cluster(2).await;
    let one_dir = tempfile::tempdir().unwrap();
    let one = Server::start(
        ServerConfig::new(SECRET.to_vec(), SERVICE.into())
            .listen("127.0.0.1:0".parse().unwrap())
            .store_path(one_dir.path().join("store"))
            .ops_per_second(100_000),
    )
    .await
    .unwrap();
    let cluster_addrs = [c.servers[0].addr(), c.servers[1].addr()];
    const USERS: u64 = 5;
    let mut one_ws = Vec::new();
    let mut cluster_ws = Vec::new();
    for u in 1..=USERS {
        one_ws.push(connect(one.addr(), u).await);
        cluster_ws.push([
            connect(cluster_addrs[0], u).await,
            connect(cluster_addrs[1], u).await,
        ]);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0xc105);
    // Conversations 1..=5 (over the 4 partitions), messages numbered per
    // conversation; thread replies from 1,000 on, under message 1.
    let mut newest = [0u64; 6];
    let mut replies = [999u64; 6];
    let (mut compared, mut refused, mut continued) = (0, 0, 0);
    // What each user's client shows on each side, and its cursor.
    let mut one_views: Vec<View> = (0..USERS).map(|_| View::default()).collect();
    let mut cluster_views: Vec<View> = (0..USERS).map(|_| View::default()).collect();
    let mut codes: std::collections::BTreeMap<String, usize> = Default::default();
    // Each conversation starts with four of the five users; the script
    // then adds and removes members.
    for conv in 1..=5u64 {
        let mut calls = vec![format!("/v1/conversations/{conv}")];
        calls.extend(
            (1..=USERS)
                .filter(|u| (u + conv) % 5 != 0)
                .map(|u| format!("/v1/conversations/{conv}/members/{u}")),
        );
        for path in calls {
            let want = backend(one.addr(), "PUT", &path, None).await;
            let got = backend(cluster_addrs[0], "PUT", &path, None).await;
            assert_eq!((got.0, want.0), (204, 204), "{path}");
        }
    }
    for step in 0..700u64 {
        let conv: u64 = rng.random_range(1..=5);
        let user: u64 = rng.random_range(1..=USERS);
        let roll = rng.random_range(0..100);
        let side = (step % 2) as usize;
        if roll < 25 {
            // The backend.
            let (method, path, body) = match roll {
                0..=2 => ("PUT", format!("/v1/conversations/{conv}"), None),
                3..=8 => (
                    "PUT",
                    format!("/v1/conversations/{conv}/members/{user}"),
                    None,
                ),
                9 => (
                    "DELETE",
                    format!("/v1/conversations/{conv}/members/{user}"),
                    None,
                ),
                10..=19 => {
                    newest[conv as usize] += 1;
                    let mentions: Vec<u64> = (1..=USERS).filter(|u| (u + step) % 4 == 0).collect();
                    let kind = if roll == 19 { "system" } else { "regular" };
                    (
                        "POST",
                        format!("/v1/conversations/{conv}/messages"),
                        Some(json!({"message": newest[conv as usize], "sender": user,
                                    "mentions": mentions, "kind": kind})),
                    )
                }
                20..=22 => {
                    replies[conv as usize] += 1;
                    (
                        "POST",
                        format!("/v1/conversations/{conv}/messages"),
                        Some(
                            json!({"message": replies[conv as usize], "sender": user, "thread": 1}),
                        ),
                    )
                }
                _ => (
                    "DELETE",
                    format!(
                        "/v1/conversations/{conv}/messages/{}",
                        newest[conv as usize].max(1)
                    ),
                    None,
                ),
            };
            let want = backend(one.addr(), method, &path, body.clone()).await;
            let got = backend(cluster_addrs[side], method, &path, body).await;
            assert_eq!(got, want, "step {step}: {method} {path}");
            if roll == 9 && want.0 == 204 {
                // The user left: their app forgets the conversation (the
                // backend tells it; catch-up names readers to forget, not
                // conversations).
                let u = user as usize - 1;
                for view in [&mut one_views[u], &mut cluster_views[u]] {
                    view.shown.retain(|&(c, _, _), _| c != conv);
                }
            }
            if want.0 >= 400 {
                refused += 1;
                *codes.entry(want.1.to_string()).or_default() += 1;
            }
            compared += 1;
            continue;
        }
        let m = rng.random_range(1..=newest[conv as usize].max(1) + 1);
        let request = match roll {
            25..=49 => json!({"op": "read", "conversation": conv, "up_to": m}),
            50..=54 => {
                json!({"op": "read", "conversation": conv, "thread": 1, "up_to": replies[conv as usize]})
            }
            55..=64 => json!({"op": "view", "conversation": conv, "message": m}),
            65..=68 => {
                next_millisecond();
                json!({"op": "unread_flag", "conversation": conv, "unread": roll % 2 == 0})
            }
            69..=71 => json!({"op": "private", "conversation": conv, "private": roll % 2 == 0}),
            72 => json!({"op": "private", "private": step % 3 == 0}),
            73..=82 => {
                json!({"op": "read_by", "conversation": conv, "message": m, "limit": 2 + roll % 3})
            }
            83..=89 => json!({"op": "unread_counts"}),
            90..=92 => json!({"op": "catch_up"}),
            93..=94 => {
                // Catch-up from each side's own cursor, applied to what
                // that side showed before, comes to show what a fresh
                // snapshot shows: at once for what is flushed, and within
                // a flush interval for marks still buffered (catch-up
                // lists a mark once its flush numbered it; a snapshot
                // reads the buffer too).
                let u = user as usize - 1;
                converges(&mut cluster_ws[u][side], &mut cluster_views[u], "cluster").await;
                converges(&mut one_ws[u], &mut one_views[u], "one store").await;
                let one_now = catch_up(&mut one_ws[u], &mut View::default()).await;
                let cluster_now = catch_up(&mut cluster_ws[u][side], &mut View::default()).await;
                assert_eq!(cluster_now, one_now, "step {step}: {user}'s snapshot");
                compared += 2;
                continued += 1;
                continue;
            }
            _ => json!({"op": "read_by", "conversation": conv, "thread": 1, "message": 1000}),
        };
        let want = one_ws[user as usize - 1].call(request.clone()).await;
        let got = cluster_ws[user as usize - 1][side]
            .call(request.clone())
            .await;
        if request["op"] == "catch_up" {
            assert_eq!(got["more"], false, "a small snapshot fits one answer");
        }
        assert_eq!(
            normalized(got.clone()),
            normalized(want.clone()),
            "step {step}, user {user}: {request}\ncluster: {got}\none store: {want}"
        );
        if want["type"] == "error" {
            refused += 1;
            *codes.entry(want["code"].to_string()).or_default() += 1;
        }
        compared += 1;
    }
    eprintln!(
        "{compared} answers equal to one store's, {refused} of them refusals: {codes:?}; \
         {continued} catch-ups from a cursor"
    );
    assert!(
        refused > 20 && refused < compared / 2,
        "the script tests both paths"
    );
    one.shutdown().await.unwrap();
    for s in c.servers {
        s.shutdown().await.unwrap();
    }
}

/// Pushes cross server nodes: a read through one node reaches the other
/// members on another, the reader's own devices hear of their unread flag,
/// and a non-member hears nothing (its first push is a sentinel: a later
/// receipt in its own conversation).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_reach_members_on_every_server_node_and_nobody_else() {
    let c = cluster(2).await;
    let (a, b) = (c.servers[0].addr(), c.servers[1].addr());
    for (path, status) in [
        ("/v1/conversations/1", 204),
        ("/v1/conversations/1/members/1", 204),
        ("/v1/conversations/1/members/2", 204),
        ("/v1/conversations/2", 204),
        ("/v1/conversations/2/members/3", 204),
        ("/v1/conversations/2/members/4", 204),
    ] {
        assert_eq!(backend(a, "PUT", path, None).await.0, status, "{path}");
    }
    let (mut alice, mut bob, mut bob_on_a) = (
        connect(a, 1).await,
        connect(b, 2).await,
        connect(a, 2).await,
    );
    let (mut carol, mut dave) = (connect(a, 3).await, connect(b, 4).await);
    let send = |c: u64, m: u64, sender: u64| async move {
        let (s, e) = backend(
            b,
            "POST",
            &format!("/v1/conversations/{c}/messages"),
            Some(json!({"message": m, "sender": sender})),
        )
        .await;
        assert_eq!(s, 201, "{e}");
    };
    send(1, 10, 1).await;
    send(2, 20, 3).await;
    let read = bob
        .call(json!({"op": "read", "conversation": 1, "up_to": 10}))
        .await;
    assert_eq!(read["type"], "ok", "{read}");
    // Alice (on the other node) and bob's other device hear of it.
    for ws in [&mut alice, &mut bob_on_a] {
        let p = ws.push().await;
        assert_eq!(
            (&p["type"], &p["conversation"], &p["reader"], &p["up_to"]),
            (&json!("receipt"), &json!(1), &json!(2), &json!(10)),
            "{p}"
        );
    }
    // The unread flag reaches bob's devices only.
    let flag = bob
        .call(json!({"op": "unread_flag", "conversation": 1, "unread": true}))
        .await;
    assert_eq!(flag["type"], "ok", "{flag}");
    let p = bob_on_a.push().await;
    assert_eq!(
        (&p["type"], &p["marked_unread"]),
        (&json!("unread_flag"), &json!(true)),
        "{p}"
    );
    // The sentinel: dave reads in carol's conversation.
    let read = dave
        .call(json!({"op": "read", "conversation": 2, "up_to": 20}))
        .await;
    assert_eq!(read["type"], "ok", "{read}");
    let p = carol.push().await;
    assert_eq!(
        (&p["type"], &p["conversation"], &p["reader"]),
        (&json!("receipt"), &json!(2), &json!(4)),
        "carol's first push is the sentinel, nothing of conversation 1: {p}"
    );
    // A non-member is refused, and learns nothing of conversation 1.
    for r in [
        json!({"op": "read", "conversation": 1, "up_to": 10}),
        json!({"op": "view", "conversation": 1, "message": 99}),
        json!({"op": "read_by", "conversation": 1, "message": 10}),
        json!({"op": "private", "conversation": 1, "private": true}),
    ] {
        let e = carol.call(r.clone()).await;
        assert_eq!(
            (&e["type"], &e["code"]),
            (&json!("error"), &json!("not_member")),
            "{r} -> {e}"
        );
    }
    // Health, with a cluster behind.
    let (s, _) = backend(a, "GET", "/v1/health", None).await;
    assert_eq!(s, 200);
    for s in c.servers {
        s.shutdown().await.unwrap();
    }
}

/// With the cluster's NATS unreachable, a server node still starts, says
/// it is unhealthy, lets clients connect (they are told to resync), answers
/// a write `unavailable` within its deadline instead of hanging, and stops.
///
/// Post-mortem (found by hand with `readmark-server serve --nats` at a
/// closed port): SIGTERM hung for good, flushing the NATS connection
/// without a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_unreachable_a_server_node_answers_unavailable_and_stops() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::start(
        ServerConfig::new(SECRET.to_vec(), SERVICE.into())
            .listen("127.0.0.1:0".parse().unwrap())
            .cluster(vec![format!("nats://127.0.0.1:{port}")], PARTITIONS),
    )
    .await
    .unwrap();
    let addr = server.addr();
    let (status, _) = backend(addr, "GET", "/v1/health", None).await;
    assert_eq!(status, 503);
    let mut ws = connect(addr, 1).await;
    let a = ws
        .call(json!({"op": "read", "conversation": 1, "up_to": 1}))
        .await;
    assert_eq!(
        (&a["type"], &a["code"]),
        (&json!("error"), &json!("unavailable")),
        "{a}"
    );
    let (status, e) = backend(addr, "PUT", "/v1/conversations/1", None).await;
    assert_eq!((status, e), (503, json!("unavailable")));
    tokio::time::timeout(BOUND, server.shutdown())
        .await
        .expect("shutdown returns")
        .unwrap();
}
