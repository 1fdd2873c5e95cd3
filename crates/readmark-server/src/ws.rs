//! Client connections: the authenticated upgrade, then one task per socket
//! that answers requests and sends what the fan-out queued.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use readmark::{
    CatchUp, ConversationId, Cursor, Durability, MessageId, Page, PrivacyScope, Store, Timestamp,
    UserId,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::auth::{Refusal, bearer};
use crate::fanout::{Full, Registration, text};
use crate::metrics::{Op, Reason};
use crate::protocol::{self, Request, read_time_json, state_json};

/// Close codes the server uses besides the standard ones (RFC 6455 §7.4.2
/// leaves 4000-4999 to applications).
pub mod close {
    /// The token expired while connected: get a new one and reconnect.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Nothing arrived (not even a pong) within the idle timeout.
    pub const IDLE: u16 = 4002;
    /// The socket did not take a frame within the write timeout.
    pub const SLOW: u16 = 4003;
    /// A binary frame: the protocol is JSON text.
    pub const UNSUPPORTED: u16 = 1003;
    /// A frame or message over the limits.
    pub const TOO_BIG: u16 = 1009;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
}

/// States per `state` answer at most; `more: true` says to ask again from
/// its cursor.
const CATCH_UP_STATES: usize = 2_000;

/// Readers per `read_by` page at most.
const READ_BY_LIMIT: usize = 500;

#[derive(Deserialize)]
pub(crate) struct TokenQuery {
    access_token: Option<String>,
}

/// `GET /v1/ws`: checks the token (an `Authorization: Bearer` header, or
/// `?access_token=` for browsers, which cannot set headers on a
/// WebSocket), the connection limits, then upgrades.
pub(crate) async fn upgrade(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = bearer(header).or(q.access_token.as_deref());
    let verified = match token {
        None => Err(Refusal::Missing),
        Some(t) => app.tokens.verify(t),
    };
    let (user, exp) = match verified {
        Ok(v) => v,
        Err(r) => {
            app.metrics
                .refused
                .get_or_create(&Reason { reason: r.code() })
                .inc();
            return refuse(StatusCode::UNAUTHORIZED, r.code(), Some(r));
        }
    };
    let registration = match app.registry.register(user) {
        Ok(r) => r,
        Err(full) => {
            let (status, code) = match full {
                Full::Server => (StatusCode::SERVICE_UNAVAILABLE, "server_full"),
                Full::User => (StatusCode::TOO_MANY_REQUESTS, "too_many_connections"),
            };
            app.metrics
                .refused
                .get_or_create(&Reason { reason: code })
                .inc();
            return refuse(status, code, None);
        }
    };
    // Before the upgrade is answered: once the client is connected, it
    // gets every push published from then on.
    app.registry.subscribe(&registration).await;
    let c = &app.config;
    ws.max_frame_size(c.max_frame_bytes)
        .max_message_size(c.max_message_bytes)
        // Buffers grow from small: ten thousand idle sockets must not hold
        // tungstenite's 128 KiB default each.
        .read_buffer_size(4096)
        .write_buffer_size(0)
        // The largest answer must fit: a snapshot of a user in thousands
        // of conversations is megabytes. Data is held here only while the
        // kernel's buffer is full, and the write timeout bounds that.
        .max_write_buffer_size(8 << 20)
        .on_upgrade(move |socket| async move {
            Connection {
                app: app.clone(),
                user,
                expires: exp,
                registration,
                bucket: Bucket::new(app.config.ops_per_second),
            }
            .run(socket)
            .await;
        })
}

fn refuse(status: StatusCode, code: &'static str, auth: Option<Refusal>) -> Response {
    let mut r = (status, axum::Json(json!({"error": code}))).into_response();
    if let Some(a) = auth {
        let v = match a {
            Refusal::Missing => "Bearer".to_string(),
            _ => format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                a.code()
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    r
}

/// A token bucket: `rate` requests a second, bursts of twice that.
struct Bucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self {
            tokens: rate * 2.0,
            rate,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.rate * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Connection {
    app: Arc<App>,
    user: UserId,
    /// Token expiry, seconds since the epoch.
    expires: u64,
    registration: Registration,
    bucket: Bucket,
}

/// How a connection ended, for the close frame and the metrics.
enum End {
    /// The client went away or closed; nothing to send.
    Client,
    /// The server closes with this code and reason.
    Close(u16, &'static str),
}

impl Connection {
    async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let app = self.app.clone();
        let mut shutdown = app.shutdown.clone();
        let idle = app.config.idle_timeout;
        let write_timeout = app.config.write_timeout;
        let mut ping = tokio::time::interval(idle / 2);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let expiry = tokio::time::Instant::now() + until(self.expires);
        let mut last_heard = Instant::now();
        let end = loop {
            if *shutdown.borrow() {
                break End::Close(close::GOING_AWAY, "server shutting down");
            }
            tokio::select! {
                _ = shutdown.changed() => {
                    break End::Close(close::GOING_AWAY, "server shutting down");
                }
                () = tokio::time::sleep_until(expiry) => {
                    break End::Close(close::TOKEN_EXPIRED, "token expired");
                }
                frame = self.registration.rx.recv() => {
                    let Some(frame) = frame else { break End::Client };
                    if let Err(e) = send(&mut sink, write_timeout, Message::Text(frame)).await {
                        break e;
                    }
                    if self.registration.lagged.swap(false, Ordering::AcqRel) {
                        app.metrics.resyncs.inc();
                        let resync = text(&readmark_cluster::resync_frame());
                        if let Err(e) = send(&mut sink, write_timeout, Message::Text(resync)).await {
                            break e;
                        }
                    }
                }
                msg = stream.next() => {
                    last_heard = Instant::now();
                    let answer = match msg {
                        None => break End::Client,
                        Some(Err(e)) => {
                            // tungstenite's capacity errors ("Space limit
                            // exceeded: Message too long") are the client's
                            // fault and get a clear code; anything else is
                            // a broken connection.
                            if e.to_string().contains("Space limit") {
                                break End::Close(close::TOO_BIG, "frame or message too big");
                            }
                            break End::Client;
                        }
                        Some(Ok(Message::Close(_))) => {
                            // Flush tungstenite's queued reply to the
                            // client's Close (its code echoed back).
                            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                            break End::Client;
                        }
                        Some(Ok(Message::Binary(_))) => {
                            break End::Close(close::UNSUPPORTED, "text frames only");
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Text(t))) => self.answer(&t).await,
                    };
                    if let Err(e) = send(&mut sink, write_timeout, Message::Text(text(&answer))).await {
                        break e;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > idle {
                        break End::Close(close::IDLE, "idle timeout");
                    }
                    if let Err(e) = send(&mut sink, write_timeout, Message::Ping(Default::default())).await {
                        break e;
                    }
                }
            }
        };
        if let End::Close(code, reason) = end {
            app.metrics.closed.get_or_create(&Reason { reason }).inc();
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            // Best effort, bounded: the peer may be the reason we close.
            let sent = tokio::time::timeout(
                Duration::from_secs(1),
                sink.send(Message::Close(Some(frame))),
            )
            .await;
            // Then the closing handshake (RFC 6455 §7.1.1): wait a moment
            // for the client's Close before dropping TCP, or a frame it
            // sends meanwhile (a pong) makes the kernel reset the
            // connection and the client never reads the code.
            if matches!(sent, Ok(Ok(()))) {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(m)) = stream.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }

    /// The answer to one text frame.
    async fn answer(&mut self, text: &str) -> Value {
        let started = Instant::now();
        let (id, parsed) = protocol::parse(text);
        let m = &self.app.metrics;
        // Before anything else: malformed frames count against the rate too.
        if !self.bucket.take() {
            m.request_errors
                .get_or_create(&Reason {
                    reason: "rate_limited",
                })
                .inc();
            return protocol::error(id, "rate_limited", "too many requests; slow down");
        }
        let req = match parsed {
            Ok(r) => r,
            Err(e) => {
                m.request_errors
                    .get_or_create(&Reason {
                        reason: "bad_request",
                    })
                    .inc();
                return protocol::error(id, "bad_request", &e);
            }
        };
        let op = req.name();
        m.requests.get_or_create(&Op { op }).inc();
        let out = match carry_out(&self.app, self.user, req).await {
            Ok(mut v) => {
                if let Some(o) = v.as_object_mut() {
                    o.insert("id".into(), json!(id));
                }
                v
            }
            Err((code, text)) => {
                m.request_errors
                    .get_or_create(&Reason { reason: code })
                    .inc();
                protocol::error(id, code, &text)
            }
        };
        m.request_seconds.observe(started.elapsed().as_secs_f64());
        out
    }
}

/// Sends one frame, within the write timeout.
async fn send(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    write_timeout: Duration,
    m: Message,
) -> Result<(), End> {
    match tokio::time::timeout(write_timeout, sink.send(m)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Client),
        Err(_) => Err(End::Close(close::SLOW, "write timeout")),
    }
}

/// Time from now until `exp` (seconds since the epoch).
fn until(exp: u64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Capped: `Instant + Duration` panics on overflow, and a signed token
    // may say any `exp`.
    Duration::from_secs(exp)
        .saturating_sub(now)
        .min(Duration::from_secs(366 * 24 * 3600))
}

pub(crate) type Answer = Result<Value, (&'static str, String)>;

/// Carries out a request as `user`: every call names the caller as the
/// reader or viewer, so nobody reads or writes as someone else, and the
/// store refuses non-members.
async fn carry_out(app: &Arc<App>, user: UserId, req: Request) -> Answer {
    let (store, durability) = match &app.backend {
        crate::Backend::Embedded { store, durability } => (store.clone(), *durability),
        crate::Backend::Cluster(c) => return c.carry_out(user, req, Timestamp::now().0).await,
    };
    // A mark update short of power loss is memory and a journal slot,
    // usually, and runs right here. It can wait (a full buffer waits for a
    // flush: back-pressure; a key's first update reads RocksDB: a point
    // read), which then holds this worker for that long. Measured with
    // `readmark server-load`: `block_in_place` around it cost a third of
    // the reads per second (33,966 -> 22,672) and 66 -> 109 % of a core.
    if matches!(req, Request::Read { .. }) && durability != Durability::PowerLoss {
        return blocking(&store, user, req);
    }
    // Everything else reads RocksDB or waits for a sync, on the blocking
    // pool, a bounded number at a time (the rest wait their turn here).
    let Ok(_permit) = app.blocking.acquire().await else {
        return Err(("unavailable", "the server is shutting down".into()));
    };
    tokio::task::spawn_blocking(move || blocking(&store, user, req))
        .await
        .unwrap_or_else(|_| Err(("internal", "request failed".into())))
}

fn blocking(store: &Store, user: UserId, req: Request) -> Answer {
    let now = Timestamp::now();
    let op = req.name();
    let conv = match &req {
        Request::Read { conversation, .. }
        | Request::View { conversation, .. }
        | Request::UnreadFlag { conversation, .. }
        | Request::ReadBy { conversation, .. } => Some(*conversation),
        Request::Private { conversation, .. } => *conversation,
        _ => None,
    };
    let err = |e: readmark::Error| client_error(store, conv.unwrap_or(0), user, &e);
    match req {
        Request::Read {
            conversation,
            thread,
            up_to,
        } => {
            let t = protocol::timeline(conversation, thread);
            store
                .mark_read(t, user, MessageId(up_to), now)
                .map_err(err)?;
        }
        Request::View {
            conversation,
            thread,
            message,
        } => {
            let t = protocol::timeline(conversation, thread);
            store
                .mark_viewed(t, user, MessageId(message), now)
                .map_err(err)?;
        }
        Request::UnreadFlag {
            conversation,
            thread,
            unread,
        } => {
            let t = protocol::timeline(conversation, thread);
            if unread {
                store.set_unread_flag(t, user, now).map_err(err)?;
            } else {
                store.clear_unread_flag(t, user, now).map_err(err)?;
            }
        }
        Request::Private {
            private,
            conversation,
        } => {
            let scope = match conversation {
                None => PrivacyScope::Everywhere,
                Some(c) => {
                    // Only for a conversation the caller is in.
                    if !store.is_member(ConversationId(c), user).unwrap_or(false) {
                        return Err(("not_member", "not a member of this conversation".into()));
                    }
                    PrivacyScope::Conversation(ConversationId(c))
                }
            };
            store
                .set_receipts_private(user, scope, private)
                .map_err(err)?;
        }
        Request::CatchUp { cursor } => return catch_up(store, user, cursor.as_deref()),
        Request::UnreadCounts => {
            let counts = store.unread_counts(user).map_err(err)?;
            return Ok(protocol::unread_counts_answer(
                counts
                    .iter()
                    .map(|(c, u)| (c.0, u.count, u.mentions, u.marked_unread)),
            ));
        }
        Request::ReadBy {
            conversation,
            thread,
            message,
            limit,
            after,
        } => {
            let t = protocol::timeline(conversation, thread);
            let mut page = Page::first(limit.unwrap_or(100).min(READ_BY_LIMIT));
            page.after = after.map(UserId);
            let r = store
                .read_by(t, user, MessageId(message), page)
                .map_err(err)?;
            return Ok(protocol::read_by_answer(
                r.count,
                r.readers
                    .iter()
                    .map(|x| (x.user.0, read_time_json(x.read_at))),
                r.next.map(|u| u.0),
            ));
        }
        Request::Ping => return Ok(json!({"type": "pong"})),
    }
    Ok(protocol::ok(None, op))
}

fn catch_up(store: &Store, user: UserId, cursor: Option<&str>) -> Answer {
    let err = |e: readmark::Error| client_error(store, 0, user, &e);
    let Some(text) = cursor else {
        let snap = store.snapshot(user).map_err(err)?;
        let states: Vec<Value> = snap.states.iter().map(state_json).collect();
        return Ok(protocol::state_answer(
            states,
            Vec::new(),
            false,
            snap.cursor.to_string(),
        ));
    };
    let mut cursor: Cursor = text.parse().map_err(|_| {
        (
            "invalid_cursor",
            "not a cursor this server gave".to_string(),
        )
    })?;
    let (mut states, mut hidden) = (Vec::new(), Vec::new());
    let more = loop {
        match store.changes_since(user, cursor, 500).map_err(err)? {
            CatchUp::SnapshotRequired => return Ok(json!({"type": "snapshot_required"})),
            CatchUp::Changes(page) => {
                states.extend(page.states.iter().map(state_json));
                hidden.extend(
                    page.hidden
                        .iter()
                        .map(|(c, r)| protocol::hidden_row(c.0, None, r.0)),
                );
                hidden.extend(
                    page.hidden_threads
                        .iter()
                        .map(|(c, t, r)| protocol::hidden_row(c.0, Some(t.0), r.0)),
                );
                cursor = page.next;
                if !page.more {
                    break false;
                }
                if states.len() + hidden.len() >= CATCH_UP_STATES {
                    break true;
                }
            }
        }
    };
    Ok(protocol::state_answer(
        states,
        hidden,
        more,
        cursor.to_string(),
    ))
}

/// The code and text a client gets for a store error. A client that is
/// not a member learns nothing about the conversation, not even whether
/// it exists.
fn client_error(
    store: &Store,
    conversation: u64,
    user: UserId,
    e: &readmark::Error,
) -> (&'static str, String) {
    use readmark::Error as E;
    match e {
        E::NotMember { .. } | E::UnknownConversation(_) => {
            ("not_member", "not a member of this conversation".into())
        }
        E::UnknownThread { .. } | E::UnknownMessage { .. }
            if !store
                .is_member(ConversationId(conversation), user)
                .unwrap_or(false) =>
        {
            ("not_member", "not a member of this conversation".into())
        }
        E::UnknownThread { .. } => ("unknown_thread", e.to_string()),
        E::UnknownMessage { .. } => ("unknown_message", e.to_string()),
        E::InvalidCursor => ("invalid_cursor", e.to_string()),
        E::InvalidArgument(_) => ("invalid_argument", e.to_string()),
        _ => {
            tracing::error!(error = %e, "store error answering a client");
            ("unavailable", "the store cannot answer now".into())
        }
    }
}
