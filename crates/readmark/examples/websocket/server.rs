//! A small WebSocket server on an embedded readmark store: clients say who
//! they are, join conversations, send and read messages, and receive
//! coalesced receipt events over the same socket. Shared with
//! `tests/it/websocket.rs`, which drives it with real clients over loopback.
//!
//! Protocol: JSON text frames.
//!
//! | client sends | server answers |
//! |---|---|
//! | `{"op":"hello","user":2}` (first) | `{"type":"ok","op":"hello"}` |
//! | `{"op":"join","conversation":1}` | `ok` (creates the conversation if new) |
//! | `{"op":"send","conversation":1,"message":7}` | `ok` |
//! | `{"op":"read","conversation":1,"up_to":7}` | `ok` |
//! | `{"op":"private","private":true}` | `ok` (receipts private everywhere) |
//! | `{"op":"unread","conversation":1,"unread":true}` | `ok` (marks it unread, or clears that) |
//! | `{"op":"catch_up","cursor":null}` | `{"type":"state",...}` (a snapshot) |
//! | `{"op":"catch_up","cursor":"<hex>"}` | `{"type":"state",...}` or `{"type":"snapshot_required"}` |
//!
//! Pushed at any time: `{"type":"receipt","conversation":1,"reader":2,
//! "up_to":7,"read_at":1700000000000}` to the reader's own connections and to
//! the event's recipients; `{"type":"hidden","conversation":1,"reader":2}`
//! to the other members when a reader makes their receipts private (drop
//! what you show of theirs); `{"type":"unread_flag","conversation":1,
//! "marked_unread":true}` to the user's own connections when one of them
//! changes the flag; and `{"type":"resync"}` to everyone if the
//! event buffer overflowed (clients then `catch_up`). A `state` answer has
//! `states`, `hidden` (pairs to forget) and the next `cursor`. Errors are
//! `{"type":"error","error":"..."}`.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use readmark::{
    CatchUp, ConversationId, Cursor, Error, Event, MessageId, PrivacyScope, ReadState, Store,
    Timestamp, UserId,
};
use serde_json::{Value, json};
use tungstenite::Message;

/// Errors of this example end up as text for the client or the log.
type Res<T> = Result<T, String>;

/// Outboxes of the open connections, by user (a user may have several
/// devices connected).
type Registry = Mutex<HashMap<u64, Vec<(u64, Sender<String>)>>>;

/// A running server; dropping it stops the event dispatcher and the
/// listener (connections end when their clients leave).
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Listens on `addr` (port 0: any free one) and serves `store`.
pub fn start(store: Arc<Store>, addr: &str) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let registry: Arc<Registry> = Arc::new(Mutex::new(HashMap::new()));
    let dispatcher = {
        let (store, registry, stop) = (store.clone(), registry.clone(), stop.clone());
        std::thread::spawn(move || dispatch(&store, &registry, &stop))
    };
    let acceptor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let ids = AtomicU64::new(1);
            for stream in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (store, registry) = (store.clone(), registry.clone());
                let id = ids.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    if let Err(e) = serve(stream, id, &store, &registry) {
                        eprintln!("connection {id}: {e}");
                    }
                    for conns in registry.lock().expect("registry").values_mut() {
                        conns.retain(|(c, _)| *c != id);
                    }
                });
            }
        })
    };
    Ok(Server {
        addr,
        stop,
        threads: vec![dispatcher, acceptor],
    })
}

/// Pushes every receipt event to the sockets of the reader and of its
/// recipients: the only place that fans out.
fn dispatch(store: &Store, registry: &Registry, stop: &AtomicBool) {
    let events = store.subscribe();
    while !stop.load(Ordering::Acquire) {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(Event::Receipt(e))) => {
                let text = json!({
                    "type": "receipt",
                    "conversation": e.conversation.0,
                    "thread": e.thread.map(|m| m.0),
                    "reader": e.reader.0,
                    "up_to": e.up_to.0,
                    "read_at": e.read_at.0,
                })
                .to_string();
                let reg = registry.lock().expect("registry");
                for user in std::iter::once(e.reader).chain(e.recipients.iter().copied()) {
                    for (_, outbox) in reg.get(&user.0).into_iter().flatten() {
                        let _ = outbox.send(text.clone());
                    }
                }
            }
            Ok(Some(Event::Hidden {
                conversation,
                reader,
                recipients,
            })) => {
                let text = json!({
                    "type": "hidden",
                    "conversation": conversation.0,
                    "reader": reader.0,
                })
                .to_string();
                let reg = registry.lock().expect("registry");
                for user in recipients {
                    for (_, outbox) in reg.get(&user.0).into_iter().flatten() {
                        let _ = outbox.send(text.clone());
                    }
                }
            }
            Ok(Some(Event::UnreadFlag {
                conversation,
                thread,
                reader,
                marked_unread,
            })) => {
                // The reader's own devices only.
                let text = json!({
                    "type": "unread_flag",
                    "conversation": conversation.0,
                    "thread": thread.map(|m| m.0),
                    "marked_unread": marked_unread,
                })
                .to_string();
                let reg = registry.lock().expect("registry");
                for (_, outbox) in reg.get(&reader.0).into_iter().flatten() {
                    let _ = outbox.send(text.clone());
                }
            }
            Ok(Some(Event::Lagged { .. })) => {
                let text = json!({"type": "resync"}).to_string();
                for (_, outbox) in registry.lock().expect("registry").values().flatten() {
                    let _ = outbox.send(text.clone());
                }
            }
            Ok(Some(_) | None) => {}
            Err(e) => eprintln!("event delivery: {e}"),
        }
    }
}

fn serve(stream: TcpStream, id: u64, store: &Store, registry: &Registry) -> Res<()> {
    let mut ws = tungstenite::accept(stream).map_err(|e| e.to_string())?;
    // Reads wait at most this long, so pushes go out between them.
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(10)))
        .map_err(|e| e.to_string())?;
    let (outbox, pushes): (Sender<String>, Receiver<String>) = channel();
    let mut user: Option<UserId> = None;
    loop {
        while let Ok(text) = pushes.try_recv() {
            ws.send(Message::text(text)).map_err(|e| e.to_string())?;
        }
        let text = match ws.read() {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(Message::Close(_)) => return Ok(()),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                continue;
            }
            // A client that went away, politely or not, is not an error.
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(());
            }
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => return Ok(()),
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::ConnectionReset => {
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        let reply = match handle(&text, &mut user, store) {
            Ok(reply) => reply,
            Err(e) => json!({"type": "error", "error": e}),
        };
        if let (Some(u), Some("hello")) = (user, reply.get("op").and_then(Value::as_str)) {
            registry
                .lock()
                .expect("registry")
                .entry(u.0)
                .or_default()
                .push((id, outbox.clone()));
        }
        ws.send(Message::text(reply.to_string()))
            .map_err(|e| e.to_string())?;
    }
}

fn field(v: &Value, name: &str) -> Res<u64> {
    v.get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("missing number `{name}`"))
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn handle(text: &str, user: &mut Option<UserId>, store: &Store) -> Res<Value> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let op = v
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let err = |e: Error| e.to_string();
    if op == "hello" {
        *user = Some(UserId(field(&v, "user")?));
        return Ok(json!({"type": "ok", "op": op}));
    }
    let me = user.ok_or("say hello first")?;
    match op.as_str() {
        "join" => {
            let c = ConversationId(field(&v, "conversation")?);
            match store.create_conversation(c) {
                Ok(()) | Err(Error::ConversationExists(_)) => {}
                Err(e) => return Err(err(e)),
            }
            store.add_member(c, me, now()).map_err(err)?;
        }
        "send" => {
            let c = ConversationId(field(&v, "conversation")?);
            let m = MessageId(field(&v, "message")?);
            store.record_message(c, m, me, now()).map_err(err)?;
        }
        "read" => {
            let c = ConversationId(field(&v, "conversation")?);
            let m = MessageId(field(&v, "up_to")?);
            store.mark_read(c, me, m, now()).map_err(err)?;
        }
        "unread" => {
            let c = ConversationId(field(&v, "conversation")?);
            if v.get("unread").and_then(Value::as_bool).unwrap_or(true) {
                store.set_unread_flag(c, me, now()).map_err(err)?;
            } else {
                store.clear_unread_flag(c, me, now()).map_err(err)?;
            }
        }
        "private" => {
            let private = v.get("private").and_then(Value::as_bool).unwrap_or(true);
            store
                .set_receipts_private(me, PrivacyScope::Everywhere, private)
                .map_err(err)?;
        }
        "catch_up" => {
            let (states, hidden, cursor) = match v.get("cursor").and_then(Value::as_str) {
                None => {
                    let snap = store.snapshot(me).map_err(err)?;
                    (snap.states, Vec::new(), snap.cursor)
                }
                Some(text) => {
                    let mut cursor: Cursor = text.parse().map_err(err)?;
                    let (mut states, mut hidden) = (Vec::new(), Vec::new());
                    loop {
                        match store.changes_since(me, cursor, 500).map_err(err)? {
                            CatchUp::SnapshotRequired => {
                                return Ok(json!({"type": "snapshot_required"}));
                            }
                            CatchUp::Changes(page) => {
                                states.extend(page.states);
                                hidden.extend(page.hidden);
                                cursor = page.next;
                                if !page.more {
                                    break;
                                }
                            }
                        }
                    }
                    (states, hidden, cursor)
                }
            };
            let states: Vec<Value> = states.iter().map(state_json).collect();
            let hidden: Vec<Value> = hidden
                .iter()
                .map(|(c, r)| json!({"conversation": c.0, "reader": r.0}))
                .collect();
            return Ok(json!({
                "type": "state",
                "states": states,
                "hidden": hidden,
                "cursor": cursor.to_string(),
            }));
        }
        other => return Err(format!("unknown op `{other}`")),
    }
    Ok(json!({"type": "ok", "op": op}))
}

fn state_json(s: &ReadState) -> Value {
    json!({
        "conversation": s.conversation.0,
        "reader": s.reader.0,
        "up_to": s.up_to.0,
        "read_at": s.read_at.0,
        "marked_unread": s.marked_unread,
    })
}
