//! readmark-server: the receipt service a chat backend runs in front of
//! itself. A readmark store behind two doors:
//!
//! * **clients** (apps, browsers) connect a WebSocket with a token the
//!   backend signed, and may only read, view, set their privacy, catch up
//!   and receive the receipts readmark decides they may see;
//! * **the backend** writes membership and messages over HTTP with a
//!   service credential.
//!
//! Everything is bounded: a connection's send queue, frame and message
//! sizes, connections per user and in all, request rates, and timeouts
//! for headers, idle sockets and slow writers.
//!
//! # Protocol
//!
//! This is the one description of the protocol.
//!
//! ## Connecting
//!
//! `GET /v1/ws` upgraded to a WebSocket, with the token in an
//! `Authorization: Bearer <token>` header or (browsers cannot set headers
//! on a WebSocket) an `access_token` query parameter. The token is an
//! HS256 JWT whose `sub` is the user id in decimal and `exp` its expiry.
//! A missing, forged or expired token gets HTTP 401 before any upgrade,
//! with `{"error": "missing_token" | "invalid_token" | "expired_token"}`
//! and a `WWW-Authenticate` header; too many connections get 429
//! (`too_many_connections`, the user's limit) or 503 (`server_full`).
//!
//! ## Requests (client → server, JSON text frames)
//!
//! Every request may carry `"id"` (a non-negative integer), echoed in its
//! answer. `thread` (optional) names a thread by its root message.
//!
//! | request | answer |
//! |---|---|
//! | `{"op":"read","conversation":1,"thread":null,"up_to":7}` | `{"type":"ok","op":"read"}` |
//! | `{"op":"view","conversation":1,"message":7}` | `ok` |
//! | `{"op":"unread_flag","conversation":1,"unread":true}` | `ok` |
//! | `{"op":"private","private":true}` (or with `"conversation":1`) | `ok` |
//! | `{"op":"catch_up","cursor":null}` | `{"type":"state","states":[...],"hidden":[],"more":false,"cursor":"..."}` (a snapshot) |
//! | `{"op":"catch_up","cursor":"..."}` | `state` with the changes since, or `{"type":"snapshot_required"}` |
//! | `{"op":"unread_counts"}` | `{"type":"unread_counts","counts":[{"conversation":1,"unread":3,"mentions":0,"marked_unread":false}]}` |
//! | `{"op":"read_by","conversation":1,"message":7,"limit":50,"after":null}` | `{"type":"read_by","count":2,"readers":[{"user":2,"read_at":{"at":1700000000000}}],"next":null}` |
//! | `{"op":"ping"}` | `{"type":"pong"}` |
//!
//! A `state` answer lists states (`conversation`, `thread`, `reader`,
//! `up_to`, `read_at`, `marked_unread`) and readers to forget (`hidden`:
//! `conversation`, `reader`, and `thread` when only a thread's);
//! a `read_by` reader's `read_at` is `{"at": ms}` or, where only a bound
//! is known, `{"no_later_than": ms}`;
//! with `"more": true`, ask again from its cursor. The server stamps every
//! read with its own clock; the caller is always the reader.
//!
//! Errors: `{"type":"error","id":3,"code":"...","error":"..."}` with code
//! `bad_request` (not JSON, unknown op or field, wrong type),
//! `not_member` (also for a conversation that does not exist: a
//! non-member learns nothing), `unknown_message`, `unknown_thread`,
//! `invalid_cursor`, `invalid_argument`, `rate_limited` (more than
//! [`ServerConfig::ops_per_second`]; not carried out, malformed frames
//! included), `unavailable` (the store failed) or `internal` (a request's
//! task panicked).
//!
//! ## Pushes (server → client, any time)
//!
//! * `{"type":"receipt","conversation":1,"thread":null,"reader":2,"up_to":7,"read_at":1700000000000}`:
//!   to the reader's own connections and to the members readmark names
//!   as recipients (coalesced over the store's event window; never for a
//!   private read; at most `Config::event_fanout_cap` recipients, so in a
//!   larger group the others learn of it at their next `catch_up`);
//! * `{"type":"hidden","conversation":1,"reader":2}`: forget what you show
//!   of that reader (they went private or left);
//! * `{"type":"unread_flag","conversation":1,"thread":null,"marked_unread":true}`:
//!   to the user's own connections;
//! * `{"type":"resync"}`: pushes were dropped (a full send queue, or the
//!   store's event buffer overflowed): `catch_up` from your cursor.
//!
//! ## Closing
//!
//! The server pings every half [`ServerConfig::idle_timeout`] and closes
//! a socket it heard nothing from for a whole one (code 4002; checked at
//! the pings, so between one and one and a half timeouts). Other
//! codes: 4001 token expired, 4003 the socket did not take a frame within
//! the write timeout, 1003 a binary frame, 1009 a frame or message over
//! the limits, 1001 shutdown. See [`close`].
//!
//! ## Backend API (HTTP, `Authorization: Bearer <service credential>`)
//!
//! | call | answer |
//! |---|---|
//! | `PUT /v1/conversations/{c}` | 204 (created, or already there) |
//! | `PUT /v1/conversations/{c}/members/{u}` | 204; 404 `unknown_conversation`; 409 `already_member` |
//! | `DELETE /v1/conversations/{c}/members/{u}` | 204; 409 `not_member` |
//! | `POST /v1/conversations/{c}/messages` `{"message":7,"sender":1,"thread":null,"mentions":[2],"mention_everyone":false,"kind":"regular"}` | 201; 409 `message_out_of_order`, `not_member` |
//! | `DELETE /v1/conversations/{c}/messages/{m}?thread=root` | 204; 404 `unknown_message` |
//!
//! Unauthenticated: `GET /v1/health` (200 `{"status":"ok","connections":n}`,
//! 503 when the store cannot answer a read) and `GET /metrics` (Prometheus text).
//!
//! # In front of a cluster
//!
//! With [`ServerConfig::cluster`] (`--nats`), the server keeps no store:
//! it serves a readmark cluster on NATS JetStream (docs/cluster.md), and
//! any number of server nodes answer any client. The protocol is the same.
//! A write is answered once the cluster's log holds it and the
//! partition's owner applied it, with the same refusals as one store. A
//! large snapshot comes in pages (`more: true`). A cursor from before a
//! partition changed owner gets `snapshot_required`. `/v1/health` is 200
//! while the NATS connection is up.
//!
//! # Example
//!
//! ```no_run
//! use readmark_server::{Server, ServerConfig};
//! # async fn run() -> Result<(), readmark_server::Error> {
//! let config = ServerConfig::new(
//!     std::env::var("READMARK_JWT_SECRET").unwrap_or_default().into_bytes(),
//!     std::env::var("READMARK_SERVICE_TOKEN").unwrap_or_default(),
//! );
//! let server = Server::start(config).await?;
//! println!("listening on {}", server.addr());
//! tokio::signal::ctrl_c().await?;
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

mod api;
mod auth;
pub mod cli;
mod cluster;
mod config;
mod fanout;
mod metrics;
mod protocol;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use readmark::{Durability, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use auth::{Claims, Refusal, Tokens};
pub use config::{ClusterConfig, MIN_SECRET_BYTES, MIN_SERVICE_TOKEN_BYTES, ServerConfig};
pub use ws::close;

/// Store calls that may read RocksDB or wait for a sync, running at once
/// on tokio's blocking pool; more wait for a turn (a connection has one
/// request in flight at most).
const BLOCKING_CALLS: usize = 64;

/// What can go wrong starting or stopping the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store failed to open or close.
    #[error("store: {0}")]
    Store(#[from] readmark::Error),
    /// Binding the address, or another I/O failure.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The cluster's NATS servers cannot be reached.
    #[error("cluster: {0}")]
    Cluster(#[from] readmark_cluster::Error),
}

/// Where requests are carried out.
pub(crate) enum Backend {
    /// A store in this process.
    Embedded {
        store: Arc<Store>,
        durability: Durability,
    },
    /// A readmark cluster, over NATS.
    Cluster(Box<cluster::ClusterBackend>),
}

/// What every handler shares.
pub(crate) struct App {
    pub(crate) backend: Backend,
    pub(crate) config: ServerConfig,
    pub(crate) tokens: Tokens,
    pub(crate) registry: Arc<fanout::Registry>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Store calls on the blocking pool at once, at most.
    pub(crate) blocking: tokio::sync::Semaphore,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<GracefulShutdown>,
    dispatcher_stop: Arc<AtomicBool>,
    /// The embedded store's event thread, or the cluster's resync task.
    dispatcher: Dispatcher,
}

enum Dispatcher {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn router(app: Arc<App>) -> Router {
    let backend = Router::new()
        .route("/v1/conversations/{c}", put(api::create_conversation))
        .route(
            "/v1/conversations/{c}/members/{u}",
            put(api::add_member).delete(api::remove_member),
        )
        .route("/v1/conversations/{c}/messages", post(api::record_message))
        .route(
            "/v1/conversations/{c}/messages/{m}",
            delete(api::delete_message),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            api::require_service,
        ));
    Router::new()
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .merge(backend)
        .layer(DefaultBodyLimit::max(app.config.max_request_bytes))
        .with_state(app)
}

impl Server {
    /// Opens the store (creating it if missing), or connects to the
    /// cluster ([`ServerConfig::cluster`]; NATS servers not up yet are
    /// retried in the background), binds, and serves on the current tokio
    /// runtime (multi-threaded: store calls that read RocksDB run on its
    /// blocking pool).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad setting, [`Error::Store`] if the store
    /// cannot open, [`Error::Cluster`] for a NATS address that does not
    /// parse, [`Error::Io`] if the address cannot be bound.
    pub async fn start(config: ServerConfig) -> Result<Server, Error> {
        config.validate()?;
        let backend = match &config.cluster {
            Some(c) => Backend::Cluster(Box::new(cluster::ClusterBackend::connect(c).await?)),
            None => {
                let store_config = config.store.clone();
                let path = config.store_path.clone();
                let durability = store_config.get_durability();
                let store = tokio::task::spawn_blocking(move || Store::open(path, store_config))
                    .await
                    .map_err(|e| Error::Config(format!("store open panicked: {e}")))??;
                Backend::Embedded {
                    store: Arc::new(store),
                    durability,
                }
            }
        };
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(metrics::Metrics::new());
        let registry = Arc::new(fanout::Registry::new(
            config.max_connections,
            config.max_connections_per_user,
            config.send_queue_frames,
            metrics.clone(),
            match &backend {
                Backend::Cluster(c) => Some(c.client.nats().clone()),
                Backend::Embedded { .. } => None,
            },
        ));
        let (stop, shutdown) = watch::channel(false);
        let dispatcher_stop = Arc::new(AtomicBool::new(false));
        let dispatcher = match &backend {
            Backend::Embedded { store, .. } => {
                let (store, registry, stop) =
                    (store.clone(), registry.clone(), dispatcher_stop.clone());
                Dispatcher::Thread(
                    std::thread::Builder::new()
                        .name("readmark-fanout".into())
                        .spawn(move || fanout::dispatch(&store, &registry, &stop))?,
                )
            }
            Backend::Cluster(c) => Dispatcher::Task(tokio::spawn(fanout::resyncs(
                c.client.nats().clone(),
                registry.clone(),
            ))),
        };
        let app = Arc::new(App {
            backend,
            tokens: Tokens::new(&config.jwt_secret),
            config,
            registry: registry.clone(),
            metrics,
            shutdown: shutdown.clone(),
            blocking: tokio::sync::Semaphore::new(BLOCKING_CALLS),
        });
        let accept = tokio::spawn(accept_loop(
            listener,
            router(app.clone()),
            app.config.handshake_timeout,
            app.config.socket_send_buffer,
            shutdown,
        ));
        tracing::info!(%addr, "readmark-server listening");
        Ok(Server {
            addr,
            app,
            stop,
            accept,
            dispatcher_stop,
            dispatcher,
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Open WebSocket connections now.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.app.registry.connections()
    }

    /// Stops accepting, closes every WebSocket (1001), waits for HTTP
    /// calls in flight, then flushes and closes the store: everything
    /// acknowledged is in RocksDB when this returns.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] if the final flush or close fails.
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        let graceful = self.accept.await.ok();
        // WebSocket tasks see the signal and close; bounded wait.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.app.registry.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(g) = graceful {
            let _ = tokio::time::timeout(Duration::from_secs(10), g.shutdown()).await;
        }
        self.dispatcher_stop
            .store(true, std::sync::atomic::Ordering::Release);
        let app = self.app;
        let dispatcher = match self.dispatcher {
            Dispatcher::Thread(t) => t,
            Dispatcher::Task(t) => {
                t.abort();
                let _ = t.await;
                // Everything acknowledged is in the cluster's log already;
                // what is left is best effort, bounded: NATS may be gone.
                if let Backend::Cluster(c) = &app.backend {
                    let _ = tokio::time::timeout(Duration::from_secs(5), c.client.flush()).await;
                }
                tracing::info!("readmark-server stopped");
                return Ok(());
            }
        };
        tokio::task::spawn_blocking(move || {
            let _ = dispatcher.join();
            let Backend::Embedded { store, .. } = &app.backend else {
                return Ok(());
            };
            store.flush()?;
            // The last reference closes it with its errors reported; a
            // handler still finishing keeps it open until it drops.
            match Arc::try_unwrap(app) {
                Ok(App {
                    backend: Backend::Embedded { store, .. },
                    ..
                }) => match Arc::try_unwrap(store) {
                    Ok(store) => store.close(),
                    Err(_) => Ok(()),
                },
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| Error::Config(format!("shutdown panicked: {e}")))??;
        tracing::info!("readmark-server stopped");
        Ok(())
    }
}

/// Accepts until shutdown; every connection gets `TCP_NODELAY` (an
/// answer and a push must not wait for each other's ACK), a fixed send
/// buffer and a deadline for its request headers. Returns the watcher of the connections still
/// open.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    handshake_timeout: Duration,
    send_buffer: usize,
    mut shutdown: watch::Receiver<bool>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .max_buf_size(64 * 1024);
    let http = http.http1_only();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, typically: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer);
        let service = TowerToHyperService::new(router.clone());
        let (http, watcher) = (http.clone(), graceful.watcher());
        tokio::spawn(async move {
            let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn).await;
        });
    }
    graceful
}
