//! Who is connected, and the one place that fans events out to them.
//!
//! Every connection has a bounded queue of frames. A push never waits: a
//! full queue drops the frame and marks the connection lagged, and the
//! connection sends one `resync` once it can (the client then catches up
//! from its cursor). The registry holds connected users only; a user's
//! entry goes with their last connection, so nothing grows with the number
//! of users ever seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use readmark::{Event, Store, UserId};
use readmark_cluster::{async_nats, push_of, resync_frame};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// A connection as the fan-out sees it.
struct Conn {
    id: u64,
    tx: mpsc::Sender<Utf8Bytes>,
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct Users {
    by_user: HashMap<u64, Vec<Conn>>,
    /// In front of a cluster: each connected user's subscription to
    /// `rm.ev.<user>`, ended with their last connection.
    forwarders: HashMap<u64, tokio::task::AbortHandle>,
    total: usize,
    next_id: u64,
}

/// The connected users and their connections' queues.
pub(crate) struct Registry {
    users: Mutex<Users>,
    max_total: usize,
    max_per_user: usize,
    queue: usize,
    metrics: Arc<Metrics>,
    /// The cluster's NATS connection, in front of a cluster.
    nats: Option<async_nats::Client>,
}

/// Why a connection could not be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// The server's connection limit.
    Server,
    /// The user's.
    User,
}

/// A registered connection: its queue's receiving end and its lagged flag.
/// Dropping it unregisters the connection.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    user: u64,
    id: u64,
    pub(crate) rx: mpsc::Receiver<Utf8Bytes>,
    pub(crate) lagged: Arc<AtomicBool>,
    /// The user's first connection: it subscribes to their pushes.
    first: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut u = self.registry.lock();
        if let Some(conns) = u.by_user.get_mut(&self.user) {
            let before = conns.len();
            conns.retain(|c| c.id != self.id);
            let removed = before - conns.len();
            if conns.is_empty() {
                u.by_user.remove(&self.user);
                if let Some(f) = u.forwarders.remove(&self.user) {
                    f.abort();
                }
            }
            u.total -= removed;
            self.registry.metrics.connections.dec();
        }
    }
}

impl Registry {
    pub(crate) fn new(
        max_total: usize,
        max_per_user: usize,
        queue: usize,
        metrics: Arc<Metrics>,
        nats: Option<async_nats::Client>,
    ) -> Self {
        Self {
            users: Mutex::new(Users::default()),
            max_total,
            max_per_user,
            queue,
            metrics,
            nats,
        }
    }

    /// In front of a cluster, on a user's first connection: subscribes to
    /// `rm.ev.<user>` and forwards what arrives to the user's connections
    /// until their last one closes. Returns once the NATS server has the
    /// subscription, so nothing published after the upgrade is missed.
    pub(crate) async fn subscribe(self: &Arc<Self>, registration: &Registration) {
        let Some(nats) = &self.nats else { return };
        if !registration.first {
            return;
        }
        let user = registration.user;
        let mut sub = match nats.subscribe(readmark_cluster::event_subject(user)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(user, error = %e, "push subscription failed; the client resyncs");
                registration.lagged.store(true, Ordering::Release);
                return;
            }
        };
        // A round trip: the server has processed the subscription. Bounded:
        // with NATS unreachable the client still connects, and resyncs.
        let flushed = tokio::time::timeout(std::time::Duration::from_secs(2), nats.flush()).await;
        if !matches!(flushed, Ok(Ok(()))) {
            registration.lagged.store(true, Ordering::Release);
        }
        let registry = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(m) = sub.next().await {
                let Some(registry) = registry.upgrade() else {
                    break;
                };
                // The owner sends the client's frame as it is.
                let Ok(text) = std::str::from_utf8(&m.payload) else {
                    continue;
                };
                registry.push([UserId(user)], &Utf8Bytes::from(text));
            }
        });
        let mut u = self.lock();
        // The user's connections may all have closed meanwhile.
        if u.by_user.contains_key(&user) {
            if let Some(old) = u.forwarders.insert(user, task.abort_handle()) {
                old.abort();
            }
        } else {
            task.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Users> {
        // A panic while holding the lock leaves plain data behind.
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a connection of `user`, within the limits.
    pub(crate) fn register(self: &Arc<Self>, user: UserId) -> Result<Registration, Full> {
        let mut u = self.lock();
        if u.total >= self.max_total {
            return Err(Full::Server);
        }
        let conns = u.by_user.get(&user.0).map_or(0, Vec::len);
        if conns >= self.max_per_user {
            return Err(Full::User);
        }
        let (tx, rx) = mpsc::channel(self.queue);
        let lagged = Arc::new(AtomicBool::new(false));
        u.next_id += 1;
        let id = u.next_id;
        let first = !u.by_user.contains_key(&user.0);
        u.by_user.entry(user.0).or_default().push(Conn {
            id,
            tx,
            lagged: lagged.clone(),
        });
        u.total += 1;
        self.metrics.connections.inc();
        Ok(Registration {
            registry: self.clone(),
            user: user.0,
            id,
            rx,
            lagged,
            first,
        })
    }

    /// Open connections now.
    pub(crate) fn connections(&self) -> usize {
        self.lock().total
    }

    /// Queues `frame` to every connection of each user in `users`.
    fn push(&self, users: impl IntoIterator<Item = UserId>, frame: &Utf8Bytes) {
        let u = self.lock();
        for user in users {
            for c in u.by_user.get(&user.0).into_iter().flatten() {
                self.offer(c, frame);
            }
        }
    }

    /// Queues `frame` to every connection.
    fn push_all(&self, frame: &Utf8Bytes) {
        let u = self.lock();
        for c in u.by_user.values().flatten() {
            self.offer(c, frame);
        }
    }

    fn offer(&self, c: &Conn, frame: &Utf8Bytes) {
        match c.tx.try_send(frame.clone()) {
            Ok(()) => {
                self.metrics.pushed.inc();
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.queue_drops.inc();
                c.lagged.store(true, Ordering::Release);
            }
            // Closing: its registration is about to go.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Turns the store's events into frames for the sockets that may see them,
/// until `stop`. Runs on a thread of its own (the subscription blocks).
pub(crate) fn dispatch(store: &Store, registry: &Registry, stop: &AtomicBool) {
    let events = store.subscribe();
    while !stop.load(Ordering::Acquire) {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(Event::Lagged { dropped })) => {
                tracing::warn!(dropped, "event subscription lagged; every client resyncs");
                registry.push_all(&text(&resync_frame()));
                registry.metrics.resyncs.inc();
            }
            Ok(Some(event)) => {
                if let Some(push) = push_of(&event) {
                    registry.push(push.to, &text(&push.frame));
                }
            }
            Ok(None) => {}
            // One event could not be resolved (a read failed); the
            // subscription reports it as `Lagged` next, so clients resync.
            // Pushes must not stop for good over it.
            Err(e) => {
                tracing::error!(error = %e, "event subscription failed; going on");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// In front of a cluster: a partition's events overflowed somewhere, so
/// every connected client resyncs. Runs until aborted.
pub(crate) async fn resyncs(nats: async_nats::Client, registry: Arc<Registry>) {
    use futures_util::StreamExt;
    let Ok(mut sub) = nats.subscribe(readmark_cluster::RESYNC_SUBJECT).await else {
        tracing::error!("resync subscription failed");
        return;
    };
    while sub.next().await.is_some() {
        registry.push_all(&text(&resync_frame()));
        registry.metrics.resyncs.inc();
    }
}

pub(crate) fn text(v: &serde_json::Value) -> Utf8Bytes {
    Utf8Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_hold_and_a_users_entry_goes_with_their_last_connection() {
        let r = Arc::new(Registry::new(3, 2, 4, Arc::new(Metrics::new()), None));
        let a1 = r.register(UserId(1)).expect("first");
        let a2 = r.register(UserId(1)).expect("second");
        assert_eq!(r.register(UserId(1)).err(), Some(Full::User));
        let b = r.register(UserId(2)).expect("other user");
        assert_eq!(r.register(UserId(3)).err(), Some(Full::Server));
        drop((a1, a2));
        assert_eq!(r.connections(), 1);
        assert!(!r.lock().by_user.contains_key(&1));
        drop(b);
        assert!(r.lock().by_user.is_empty());
    }

    #[test]
    fn a_full_queue_drops_and_marks_the_connection_lagged() {
        let r = Arc::new(Registry::new(10, 10, 2, Arc::new(Metrics::new()), None));
        let mut a = r.register(UserId(1)).expect("register");
        let f = text(&json!({"type": "x"}));
        for _ in 0..5 {
            r.push([UserId(1)], &f);
        }
        assert!(a.lagged.load(Ordering::Acquire));
        assert_eq!(r.metrics.queue_drops.get(), 3);
        assert!(a.rx.try_recv().is_ok() && a.rx.try_recv().is_ok());
        assert!(a.rx.try_recv().is_err());
    }
}
