//! The server's settings: a builder whose docs state every default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::Error;
use readmark_cluster::MAX_PARTITIONS;

/// Shortest HMAC secret accepted for client tokens: 256 bits, as RFC 7518
/// §3.2 requires for HS256.
pub const MIN_SECRET_BYTES: usize = 32;

/// Shortest service credential accepted.
pub const MIN_SERVICE_TOKEN_BYTES: usize = 16;

/// How the server runs. Every field has a default except the two secrets,
/// which [`ServerConfig::new`] takes.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use readmark_server::ServerConfig;
/// let config = ServerConfig::new(b"0123456789abcdef0123456789abcdef".to_vec(), "service-credential-1".into())
///     .listen("127.0.0.1:0".parse()?)
///     .store_path("readmark-data")
///     .send_queue_frames(128)
///     .idle_timeout(Duration::from_secs(30));
/// assert!(config.validate().is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) store_path: PathBuf,
    pub(crate) store: readmark::Config,
    pub(crate) jwt_secret: Vec<u8>,
    pub(crate) service_token: String,
    pub(crate) send_queue_frames: usize,
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_user: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) ops_per_second: u32,
    pub(crate) max_request_bytes: usize,
    pub(crate) socket_send_buffer: usize,
    pub(crate) cluster: Option<ClusterConfig>,
}

/// Where the cluster is, for a server node in front of readmark nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// NATS servers of the cluster (any one is enough to start).
    pub nats: Vec<String>,
    /// The cluster's partition count (the nodes' `--partitions`).
    pub partitions: u32,
}

impl std::fmt::Debug for ServerConfig {
    // The secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("store_path", &self.store_path)
            .field("send_queue_frames", &self.send_queue_frames)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_user", &self.max_connections_per_user)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("ops_per_second", &self.ops_per_second)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Defaults, with the HMAC secret that signs client tokens (HS256, at
    /// least [`MIN_SECRET_BYTES`]) and the bearer credential of the
    /// backend's HTTP calls (at least [`MIN_SERVICE_TOKEN_BYTES`]).
    #[must_use]
    pub fn new(jwt_secret: Vec<u8>, service_token: String) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            store_path: PathBuf::from("readmark-data"),
            store: readmark::Config::new(),
            jwt_secret,
            service_token,
            send_queue_frames: 256,
            max_frame_bytes: 4096,
            max_message_bytes: 16 * 1024,
            max_connections: 50_000,
            max_connections_per_user: 16,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            ops_per_second: 50,
            max_request_bytes: 64 * 1024,
            socket_send_buffer: 64 * 1024,
            cluster: None,
        }
    }

    /// Address to listen on. Default `127.0.0.1:8080`; port 0 picks a free
    /// one ([`Server::addr`](crate::Server::addr) says which).
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Directory of the store, created if missing. Default `readmark-data`
    /// in the working directory; never a temporary directory, so a restart
    /// finds what was acknowledged.
    #[must_use]
    pub fn store_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.store_path = path.into();
        self
    }

    /// The store's own settings (durability, coalescing window, ...).
    /// Default [`readmark::Config::new`].
    #[must_use]
    pub fn store(mut self, config: readmark::Config) -> Self {
        self.store = config;
        self
    }

    /// Serves a readmark cluster (docs/cluster.md) instead of an embedded
    /// store: writes go into the cluster's replicated log and are answered
    /// once the partition's owner applied them; reads go to the owner;
    /// pushes arrive from the owners over NATS. `nats` lists the cluster's
    /// NATS servers, `partitions` its partition count (the nodes'). The
    /// store settings are then unused. Default: none (an embedded store at
    /// [`store_path`](ServerConfig::store_path)).
    #[must_use]
    pub fn cluster(mut self, nats: Vec<String>, partitions: u32) -> Self {
        self.cluster = Some(ClusterConfig { nats, partitions });
        self
    }

    /// Frames a connection may have queued for sending. Default 256. When a
    /// push finds the queue full it is dropped, and the client gets one
    /// `{"type":"resync"}` once its queue moves again (it then catches up),
    /// so a client that does not read costs at most this much memory.
    #[must_use]
    pub fn send_queue_frames(mut self, frames: usize) -> Self {
        self.send_queue_frames = frames;
        self
    }

    /// Largest WebSocket frame a client may send. Default 4 KiB (a request
    /// is about 100 bytes).
    #[must_use]
    pub fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.max_frame_bytes = bytes;
        self
    }

    /// Largest WebSocket message (frames joined) a client may send. Default
    /// 16 KiB.
    #[must_use]
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Open WebSocket connections at most; past it an upgrade gets 503.
    /// Default 50,000.
    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Open WebSocket connections per user at most (their devices); past it
    /// an upgrade gets 429. Default 16.
    #[must_use]
    pub fn max_connections_per_user(mut self, n: usize) -> Self {
        self.max_connections_per_user = n;
        self
    }

    /// Time a new TCP connection has to send its request headers
    /// (slowloris). Default 10 s.
    #[must_use]
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// A WebSocket from which nothing (not even a pong) arrives for this
    /// long is closed; the server pings every half of it. Default 60 s.
    #[must_use]
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// A frame the socket does not take within this long closes the
    /// connection. Default 10 s.
    #[must_use]
    pub fn write_timeout(mut self, t: Duration) -> Self {
        self.write_timeout = t;
        self
    }

    /// Requests per second a connection may make, with bursts of twice
    /// that; the rest are answered `rate_limited` and not carried out.
    /// Default 50.
    #[must_use]
    pub fn ops_per_second(mut self, n: u32) -> Self {
        self.ops_per_second = n;
        self
    }

    /// Largest HTTP request body of the backend API. Default 64 KiB.
    #[must_use]
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// Kernel send buffer of each socket (`SO_SNDBUF`; Linux doubles it
    /// for its bookkeeping). Default 64 KiB. Left to itself the kernel
    /// grows it to 4 MiB for a peer that does not read: ten thousand such
    /// peers would hold 40 GiB. A fixed one still carries 64 KiB per round
    /// trip, far more than receipts need.
    #[must_use]
    pub fn socket_send_buffer(mut self, bytes: usize) -> Self {
        self.socket_send_buffer = bytes;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first setting that cannot work.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s: &str| Err(Error::Config(s.to_string()));
        if self.jwt_secret.len() < MIN_SECRET_BYTES {
            return bad("the token secret must be at least 32 bytes");
        }
        if self.service_token.len() < MIN_SERVICE_TOKEN_BYTES {
            return bad("the service credential must be at least 16 bytes");
        }
        if self.send_queue_frames == 0 {
            return bad("send_queue_frames must be at least 1");
        }
        if self.max_frame_bytes < 256 || self.max_message_bytes < self.max_frame_bytes {
            return bad("max_frame_bytes must be at least 256 and at most max_message_bytes");
        }
        if self.max_connections == 0 || self.max_connections_per_user == 0 {
            return bad("connection limits must be at least 1");
        }
        if self.idle_timeout < Duration::from_millis(100)
            || self.handshake_timeout.is_zero()
            || self.write_timeout.is_zero()
        {
            return bad("timeouts must be positive (idle_timeout at least 100 ms)");
        }
        if self.ops_per_second == 0 {
            return bad("ops_per_second must be at least 1");
        }
        if let Some(c) = &self.cluster
            && (c.nats.is_empty() || c.partitions == 0 || c.partitions > MAX_PARTITIONS)
        {
            return bad("a cluster needs a NATS address and 1 to 4,096 partitions");
        }
        Ok(())
    }
}
