//! readmark-server driven over loopback by real WebSocket clients
//! (tokio-tungstenite) and raw HTTP, against a real store on disk.
//!
//! "Nothing arrives" is checked with a sentinel: a later event that must
//! reach the same socket. Pushes to one socket keep their order, so a
//! wrongly routed frame would arrive before the sentinel.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use readmark::{ConversationId, MessageId, Store, UserId};
use readmark_server::{Server, ServerConfig, Tokens};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

#[path = "support/ws.rs"]
mod ws;
use ws::{BOUND, Client, http};

const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes!!";
const SERVICE: &str = "backend-service-credential";

struct Harness {
    server: Server,
    dir: tempfile::TempDir,
    tokens: Tokens,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn start(tune: impl FnOnce(ServerConfig) -> ServerConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::new(SECRET.to_vec(), SERVICE.into())
        .listen("127.0.0.1:0".parse().unwrap())
        .store_path(dir.path().join("store"))
        // Window 0: every read is an event at once, so tests see each.
        .store(readmark::Config::new().event_window(Duration::ZERO))
        .ops_per_second(100_000);
    let server = Server::start(tune(config)).await.unwrap();
    Harness {
        server,
        dir,
        tokens: Tokens::new(SECRET),
    }
}

impl Harness {
    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    fn token(&self, user: u64) -> String {
        self.tokens.issue(UserId(user), now_s() + 3600)
    }

    async fn client(&self, user: u64) -> Client {
        Client::connect(self.addr(), &self.token(user))
            .await
            .unwrap()
    }

    async fn backend(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        http(self.addr(), method, path, body, Some(SERVICE)).await
    }

    /// A conversation with these members.
    async fn conversation(&self, c: u64, members: &[u64]) {
        assert_eq!(
            self.backend("PUT", &format!("/v1/conversations/{c}"), None)
                .await
                .0,
            204
        );
        for u in members {
            let (s, b) = self
                .backend("PUT", &format!("/v1/conversations/{c}/members/{u}"), None)
                .await;
            assert_eq!(s, 204, "{b}");
        }
    }

    async fn message(&self, c: u64, m: u64, sender: u64) {
        let (s, b) = self
            .backend(
                "POST",
                &format!("/v1/conversations/{c}/messages"),
                Some(json!({"message": m, "sender": sender})),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
}

fn is_receipt(v: &Value, c: u64, reader: u64, up_to: u64) -> bool {
    v["type"] == "receipt" && v["conversation"] == c && v["reader"] == reader && v["up_to"] == up_to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_exactly_the_right_sockets() {
    let h = start(|c| c).await;
    // 1: alice, bob, carol. 2: alice, dave. 3: erin, frank (strangers to 1).
    h.conversation(1, &[1, 2, 3]).await;
    h.conversation(2, &[1, 4]).await;
    h.conversation(3, &[5, 6]).await;
    let (mut alice, mut bob, mut bob2, mut carol) = (
        h.client(1).await,
        h.client(2).await,
        h.client(2).await,
        h.client(3).await,
    );
    let (mut dave, mut erin, mut frank) = (h.client(4).await, h.client(5).await, h.client(6).await);
    h.message(1, 10, 1).await;
    h.message(2, 20, 4).await;
    h.message(3, 30, 6).await;
    bob.ok(json!({"op": "read", "conversation": 1, "up_to": 10}))
        .await;
    // The sentinels: later events that must reach dave and erin.
    alice
        .ok(json!({"op": "read", "conversation": 2, "up_to": 20}))
        .await;
    erin.ok(json!({"op": "read", "conversation": 3, "up_to": 30}))
        .await;
    frank
        .ok(json!({"op": "read", "conversation": 3, "up_to": 30}))
        .await;
    for (who, c) in [
        ("alice", &mut alice),
        ("carol", &mut carol),
        ("bob's other device", &mut bob2),
    ] {
        let p = c.push().await;
        assert!(is_receipt(&p, 1, 2, 10), "{who} got {p}");
    }
    let p = dave.push().await;
    assert!(
        is_receipt(&p, 2, 1, 20),
        "dave's first push must be the sentinel, got {p}"
    );
    let p = erin.push().await;
    assert!(
        is_receipt(&p, 3, 5, 30) || is_receipt(&p, 3, 6, 30),
        "erin's first push must be from conversation 3, got {p}"
    );
    // The reader's own socket hears of its own read too (its devices sync).
    assert!(is_receipt(&bob.push().await, 1, 2, 10));
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_forged_expired_and_unsigned_tokens_are_refused_before_the_upgrade() {
    let h = start(|c| c).await;
    let other = Tokens::new(b"some-other-secret-also-32-bytes-long");
    let cases = [
        (None, "missing_token"),
        (
            Some(other.issue(UserId(1), now_s() + 3600)),
            "invalid_token",
        ),
        (
            Some(h.tokens.issue(UserId(1), now_s() - 3600)),
            "expired_token",
        ),
        (
            Some(
                "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIiwiZXhwIjo5OTk5OTk5OTk5fQ."
                    .into(),
            ),
            "invalid_token",
        ),
        (Some("garbage".into()), "invalid_token"),
    ];
    for (token, code) in cases {
        let mut req = format!("ws://{}/v1/ws", h.addr())
            .into_client_request()
            .unwrap();
        if let Some(t) = &token {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{code}");
                let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
                assert!(body.contains(code), "{code}: {body}");
            }
            other => panic!("{code}: expected a refusal, got {other:?}"),
        }
    }
    // The query parameter works as the header does.
    let url = format!("ws://{}/v1/ws?access_token={}", h.addr(), h.token(1));
    assert!(tokio_tungstenite::connect_async(url).await.is_ok());
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_can_neither_read_nor_see_a_conversation() {
    let h = start(|c| c).await;
    h.conversation(1, &[1, 2]).await;
    h.message(1, 10, 1).await;
    let mut mallory = h.client(9).await;
    for req in [
        json!({"op": "read", "conversation": 1, "up_to": 10}),
        json!({"op": "view", "conversation": 1, "message": 10}),
        json!({"op": "unread_flag", "conversation": 1, "unread": true}),
        json!({"op": "read_by", "conversation": 1, "message": 10}),
        json!({"op": "private", "private": true, "conversation": 1}),
        json!({"op": "read", "conversation": 1, "thread": 10, "up_to": 10}),
        // A conversation that does not exist looks the same.
        json!({"op": "read", "conversation": 77, "up_to": 1}),
    ] {
        let a = mallory.call(req.clone()).await;
        assert_eq!(a["code"], "not_member", "{req} -> {a}");
    }
    let snap = mallory
        .call(json!({"op": "catch_up", "cursor": null}))
        .await;
    assert_eq!(snap["states"], json!([]));
    assert_eq!(
        mallory.call(json!({"op": "unread_counts"})).await["counts"],
        json!([])
    );
    // Membership is the backend's: neither no credential nor a client's
    // token will do.
    let (s, _) = http(h.addr(), "PUT", "/v1/conversations/1/members/9", None, None).await;
    assert_eq!(s, 401);
    let (s, _) = http(
        h.addr(),
        "PUT",
        "/v1/conversations/1/members/9",
        None,
        Some(&h.token(9)),
    )
    .await;
    assert_eq!(s, 401);
    // Bob's read reached nobody outside: alice hears it, mallory's first
    // push is a later sentinel.
    h.conversation(2, &[9, 1]).await;
    h.message(2, 20, 9).await;
    let mut bob = h.client(2).await;
    bob.ok(json!({"op": "read", "conversation": 1, "up_to": 10}))
        .await;
    let mut alice = h.client(1).await;
    alice
        .ok(json!({"op": "read", "conversation": 2, "up_to": 20}))
        .await;
    let p = mallory.push().await;
    assert!(is_receipt(&p, 2, 1, 20), "{p}");
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_answer_and_the_connection_stays() {
    let h = start(|c| c).await;
    h.conversation(1, &[1, 2]).await;
    let mut c = h.client(1).await;
    for (text, code) in [
        ("{", "bad_request"),
        ("[1,2,3]", "bad_request"),
        (r#"{"op":"fly"}"#, "bad_request"),
        (
            r#"{"op":"read","conversation":"1","up_to":1}"#,
            "bad_request",
        ),
        (r#"{"op":"read","conversation":1,"upto":1}"#, "bad_request"),
        (
            r#"{"op":"read","conversation":1,"up_to":1,"reader":2}"#,
            "bad_request",
        ),
        (r#"{"op":"catch_up","cursor":"zz"}"#, "invalid_cursor"),
        (
            r#"{"op":"view","conversation":1,"message":5}"#,
            "unknown_message",
        ),
    ] {
        c.ws.send(Message::text(text)).await.unwrap();
        let a = c.frame().await;
        assert_eq!(a["code"], code, "{text} -> {a}");
    }
    assert_eq!(
        c.call(json!({"op": "ping", "id": 7})).await,
        json!({"type": "pong", "id": 7})
    );
    // A binary frame closes with 1003.
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(c.close_code().await, Some(1003));
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_with_1009() {
    let h = start(|c| c.max_frame_bytes(1024).max_message_bytes(4096)).await;
    let mut c = h.client(1).await;
    let big = format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(8192));
    c.ws.send(Message::text(big)).await.unwrap();
    assert_eq!(c.close_code().await, Some(1009));
    // Others are unaffected.
    let mut d = h.client(2).await;
    assert_eq!(d.call(json!({"op": "ping"})).await["type"], "pong");
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_gets_drops_and_a_resync_with_memory_bounded() {
    let h = start(|c| {
        c.send_queue_frames(4)
            .socket_send_buffer(4096)
            .write_timeout(Duration::from_millis(500))
    })
    .await;
    // Messages by dave, who never connects: alice's reads advance.
    let members: Vec<u64> = (1..=4).collect();
    h.conversation(1, &members).await;
    let n = 3_000u64;
    for m in 1..=n {
        h.message(1, m, 4).await;
    }
    // Carol reads late; bob's socket is never read. Both with a 4 KiB
    // receive buffer, so the kernel's buffers fill after a few hundred
    // frames and the server's queue after that.
    let bob = Client::connect_small(h.addr(), &h.token(2)).await;
    let mut carol = Client::connect_small(h.addr(), &h.token(3)).await;
    let mut alice = h.client(1).await;
    for m in 1..=n {
        alice
            .ok(json!({"op": "read", "conversation": 1, "up_to": m}))
            .await;
    }
    let (_, metrics) = http(h.addr(), "GET", "/metrics", None, None).await;
    let drops = metric(&metrics, "readmark_queue_drops_total");
    assert!(drops > 0.0, "no push was dropped:\n{metrics}");
    // Carol reads now: some receipts, then a resync (not all 3,000).
    let mut receipts = 0;
    loop {
        let p = carol.push().await;
        if p["type"] == "resync" {
            break;
        }
        receipts += 1;
        assert!(receipts < n, "no resync after {receipts} receipts");
    }
    // Bob never read at all: his pushes were dropped at his queue of 4
    // (the drops above are his and carol's), never held.
    drop(bob);
    h.server.shutdown().await.unwrap();
}

/// The status code of the first close frame in raw server-to-client
/// WebSocket bytes (unmasked frames, short payloads).
fn close_code_in(bytes: &[u8]) -> Option<u16> {
    let mut i = 0;
    while i + 2 <= bytes.len() {
        let (op, len) = (bytes[i] & 0x0f, usize::from(bytes[i + 1] & 0x7f));
        if op == 0x8 && len >= 2 && i + 4 <= bytes.len() {
            return Some(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        }
        i += 2 + len;
    }
    None
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_close_slowloris_idle_and_expired_sessions() {
    let h = start(|c| {
        c.handshake_timeout(Duration::from_millis(300))
            .idle_timeout(Duration::from_millis(600))
    })
    .await;
    // Slowloris: headers never finish; the server hangs up.
    let mut s = TcpStream::connect(h.addr()).await.unwrap();
    s.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(BOUND, s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the half-sent request was kept open");
    // Idle: a client that never answers pings. Its socket is read raw
    // (tungstenite would answer the pings): pings, then the close frame,
    // then the server hangs up.
    let idle = h.client(1).await;
    let MaybeTlsStream::Plain(mut raw) = idle.ws.into_inner() else {
        panic!("plain TCP expected")
    };
    let mut bytes = Vec::new();
    tokio::time::timeout(BOUND, raw.read_to_end(&mut bytes))
        .await
        .expect("the idle socket was kept")
        .unwrap();
    assert_eq!(close_code_in(&bytes), Some(4002), "{bytes:?}");
    // A token that expires while connected.
    let short = h.tokens.issue(UserId(2), now_s() + 1);
    let mut c = Client::connect(h.addr(), &short).await.unwrap();
    assert_eq!(c.call(json!({"op": "ping"})).await["type"], "pong");
    let code = loop {
        // Keep answering pings so only the expiry can close it.
        match tokio::time::timeout(BOUND, c.ws.next()).await.unwrap() {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, Some(4001));
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_are_limited() {
    let h = start(|c| c.max_connections_per_user(2)).await;
    let _a = h.client(1).await;
    let _b = h.client(1).await;
    match Client::connect(h.addr(), &h.token(1)).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("third connection: {:?}", other.map(|_| ())),
    }
    // Another user is not affected.
    let _c = h.client(2).await;
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_loses_nothing_acknowledged() {
    let h = start(|c| c).await;
    // Messages by user 9, who never reads: each mark is the reader's read.
    let users: Vec<u64> = (1..=9).collect();
    h.conversation(1, &users).await;
    for m in 1..=50 {
        h.message(1, m, 9).await;
    }
    let mut acked = Vec::new();
    for u in &users[..8] {
        let mut c = h.client(*u).await;
        let up_to = 1 + (u * 7) % 50;
        c.ok(json!({"op": "read", "conversation": 1, "up_to": up_to}))
            .await;
        acked.push((*u, up_to));
    }
    let mut c = h.client(1).await;
    h.server.shutdown().await.unwrap();
    assert_eq!(c.close_code().await, Some(u16::from(CloseCode::Away)));
    let store = Store::open(h.dir.path().join("store"), readmark::Config::new()).unwrap();
    for (u, up_to) in acked {
        let m = store.mark(ConversationId(1), UserId(u)).unwrap();
        assert_eq!(m.map(|m| m.up_to), Some(MessageId(up_to)), "user {u}");
    }
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_the_backend_api() {
    let h = start(|c| c).await;
    let (s, b) = http(h.addr(), "GET", "/v1/health", None, None).await;
    assert_eq!((s, b.contains("\"ok\"")), (200, true), "{b}");
    h.conversation(1, &[1, 2]).await;
    h.message(1, 5, 1).await;
    let (s, b) = h
        .backend(
            "POST",
            "/v1/conversations/1/messages",
            Some(json!({"message": 4, "sender": 1})),
        )
        .await;
    assert_eq!(s, 409, "{b}");
    assert!(b.contains("message_out_of_order"));
    let (s, _) = h
        .backend(
            "POST",
            "/v1/conversations/1/messages",
            Some(json!({"message": 6, "sender": 1, "surprise": 1})),
        )
        .await;
    assert_eq!(s, 422);
    let (s, _) = h
        .backend("PUT", "/v1/conversations/1/members/2", None)
        .await;
    assert_eq!(s, 409);
    let (s, _) = h
        .backend("DELETE", "/v1/conversations/9/members/2", None)
        .await;
    assert_eq!(s, 404);
    let mut bob = h.client(2).await;
    assert_eq!(
        bob.call(json!({"op": "unread_counts"})).await["counts"][0]["unread"],
        1
    );
    bob.ok(json!({"op": "read", "conversation": 1, "up_to": 5}))
        .await;
    let (_, m) = http(h.addr(), "GET", "/metrics", None, None).await;
    assert_eq!(metric(&m, "readmark_connections"), 1.0, "{m}");
    assert!(metric(&m, "readmark_store_mark_updates") >= 2.0, "{m}");
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_the_unread_flag_and_catch_up_over_the_socket() {
    let h = start(|c| c).await;
    h.conversation(1, &[1, 2]).await;
    h.conversation(2, &[1, 3]).await;
    h.message(1, 10, 1).await;
    h.message(1, 11, 1).await;
    h.message(2, 20, 1).await;
    let (mut alice, mut bob, mut bob2, mut carol) = (
        h.client(1).await,
        h.client(2).await,
        h.client(2).await,
        h.client(3).await,
    );
    let snap = bob.call(json!({"op": "catch_up", "cursor": null})).await;
    assert_eq!(snap["type"], "state");
    let cursor = snap["cursor"].as_str().unwrap().to_string();
    // Bob goes private: his read reaches his own devices only.
    bob.ok(json!({"op": "private", "private": true})).await;
    bob.ok(json!({"op": "read", "conversation": 1, "up_to": 10}))
        .await;
    assert!(is_receipt(&bob2.push().await, 1, 2, 10));
    // Sentinel for alice: carol's read in conversation 2. Before it,
    // only the notice to forget bob's read state (he went private).
    carol
        .ok(json!({"op": "read", "conversation": 2, "up_to": 20}))
        .await;
    let p = alice.push().await;
    assert_eq!(p, json!({"type": "hidden", "conversation": 1, "reader": 2}));
    let p = alice.push().await;
    assert!(
        is_receipt(&p, 2, 3, 20),
        "alice's next push must be carol's read, got {p}"
    );
    // The unread flag reaches bob's other device, not alice.
    bob.ok(json!({"op": "unread_flag", "conversation": 1, "unread": true}))
        .await;
    let p = bob2.push().await;
    assert_eq!(
        (p["type"].as_str(), p["marked_unread"].as_bool()),
        (Some("unread_flag"), Some(true)),
        "{p}"
    );
    // Public again: the next read reaches alice.
    bob.ok(json!({"op": "private", "private": false})).await;
    bob.ok(json!({"op": "read", "conversation": 1, "up_to": 11}))
        .await;
    // (Going public may first re-show bob's earlier read.)
    loop {
        let p = alice.push().await;
        if is_receipt(&p, 1, 2, 11) {
            break;
        }
        assert!(is_receipt(&p, 1, 2, 10), "{p}");
    }
    // Bob's other device catches up from the old cursor: its own state.
    let page = bob2.call(json!({"op": "catch_up", "cursor": cursor})).await;
    assert_eq!(page["type"], "state", "{page}");
    let mine = page["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["conversation"] == 1 && s["reader"] == 2)
        .cloned()
        .unwrap_or_default();
    assert_eq!(mine["up_to"], 11, "{page}");
    assert_eq!(mine["marked_unread"], false, "{page}");
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_rate_are_refused_not_carried_out() {
    // 5 a second, bursts of 10: thirty back to back leave most refused
    // (refilling them would take 4 s; the loop takes milliseconds).
    let h = start(|c| c.ops_per_second(5)).await;
    let mut c = h.client(1).await;
    let mut limited = 0;
    for i in 0..30 {
        let a = c.call(json!({"op": "ping", "id": i})).await;
        if a["code"] == "rate_limited" {
            limited += 1;
        } else {
            assert_eq!(a["type"], "pong", "{a}");
        }
    }
    assert!(limited >= 15, "only {limited} of 30 refused");
    // Malformed frames count too.
    c.ws.send(Message::text("{")).await.unwrap();
    assert_eq!(c.frame().await["code"], "rate_limited");
    h.server.shutdown().await.unwrap();
}
