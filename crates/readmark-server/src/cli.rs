//! The command line of `readmark-server` (also `readmark serve`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use readmark::{Durability, UserId};

use crate::{Error, Server, ServerConfig, Tokens};

/// What the binary does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the server until SIGTERM or SIGINT, then flushes and closes
    /// the store.
    Serve(ServeArgs),
    /// Prints a client token for a user, signed with the server's secret
    /// (for trying the server; the backend signs tokens in production).
    Token(TokenArgs),
}

/// The server's settings. Secrets come from the environment, never from
/// the command line (where `ps` shows them).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "READMARK_LISTEN")]
    pub listen: SocketAddr,
    /// Store directory (created if missing).
    #[arg(long, default_value = "readmark-data", env = "READMARK_STORE")]
    pub store: PathBuf,
    /// HMAC secret of client tokens (HS256), at least 32 bytes.
    #[arg(long = "jwt-secret-env", hide = true, env = "READMARK_JWT_SECRET")]
    pub jwt_secret: String,
    /// Bearer credential of the backend's HTTP calls, at least 16 bytes.
    #[arg(
        long = "service-token-env",
        hide = true,
        env = "READMARK_SERVICE_TOKEN"
    )]
    pub service_token: String,
    /// Durability of acknowledged reads: memory, process-crash or
    /// power-loss (see readmark's `Durability`).
    #[arg(long, default_value = "process-crash")]
    pub durability: String,
    /// Coalescing window of receipt events, in milliseconds (readmark's
    /// default: 1,000).
    #[arg(long, default_value_t = 1000)]
    pub window_ms: u64,
    /// Frames a connection may have queued before pushes are dropped (and
    /// a resync sent).
    #[arg(long, default_value_t = 256)]
    pub send_queue: usize,
    /// Open WebSocket connections at most.
    #[arg(long, default_value_t = 50_000)]
    pub max_connections: usize,
    /// Open WebSocket connections per user at most.
    #[arg(long, default_value_t = 16)]
    pub max_connections_per_user: usize,
    /// Seconds without a frame before a socket is closed (pings every half).
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_s: u64,
    /// Requests per second per connection.
    #[arg(long, default_value_t = 50)]
    pub ops_per_second: u32,
    /// Serve a readmark cluster instead of a store of its own: the
    /// cluster's NATS servers, comma-separated (docs/cluster.md). The
    /// store options are then unused.
    #[arg(long, env = "READMARK_NATS", value_delimiter = ',')]
    pub nats: Vec<String>,
    /// The cluster's partition count (its nodes' `--partitions`).
    #[arg(long, default_value_t = 16, env = "READMARK_PARTITIONS")]
    pub partitions: u32,
}

/// `token`: a signed client token.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user the token names.
    #[arg(long)]
    pub user: u64,
    /// Seconds until it expires.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// HMAC secret (HS256).
    #[arg(long = "jwt-secret-env", hide = true, env = "READMARK_JWT_SECRET")]
    pub jwt_secret: String,
}

impl ServeArgs {
    /// The configuration these arguments describe.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unknown durability.
    pub fn config(&self) -> Result<ServerConfig, Error> {
        let durability = match self.durability.as_str() {
            "memory" => Durability::Memory,
            "process-crash" => Durability::ProcessCrash,
            "power-loss" => Durability::PowerLoss,
            other => {
                return Err(Error::Config(format!(
                    "durability is memory, process-crash or power-loss, not `{other}`"
                )));
            }
        };
        let config = ServerConfig::new(
            self.jwt_secret.clone().into_bytes(),
            self.service_token.clone(),
        )
        .listen(self.listen)
        .store_path(&self.store)
        .store(
            readmark::Config::new()
                .durability(durability)
                .event_window(Duration::from_millis(self.window_ms)),
        )
        .send_queue_frames(self.send_queue)
        .max_connections(self.max_connections)
        .max_connections_per_user(self.max_connections_per_user)
        .idle_timeout(Duration::from_secs(self.idle_timeout_s))
        .ops_per_second(self.ops_per_second);
        Ok(if self.nats.is_empty() {
            config
        } else {
            config.cluster(self.nats.clone(), self.partitions)
        })
    }
}

/// Runs a command to its end (a server: until SIGTERM or SIGINT).
///
/// # Errors
///
/// What starting or stopping the server returned.
pub fn run(command: Command) -> Result<(), Error> {
    match command {
        Command::Token(t) => {
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                + t.ttl;
            println!(
                "{}",
                Tokens::new(t.jwt_secret.as_bytes()).issue(UserId(t.user), exp)
            );
            Ok(())
        }
        Command::Serve(args) => {
            let config = args.config()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let server = Server::start(config).await?;
                // Not println!: a closed stdout (a supervisor gone) must not
                // panic the server.
                let behind = if args.nats.is_empty() {
                    format!("store {}", args.store.display())
                } else {
                    format!(
                        "cluster of {} partitions at {}",
                        args.partitions,
                        args.nats.join(",")
                    )
                };
                let _ = writeln!(
                    std::io::stdout(),
                    "readmark-server on {} ({behind}); SIGTERM or Ctrl-C stops it",
                    server.addr(),
                );
                wait_for_signal().await?;
                let _ = writeln!(
                    std::io::stdout(),
                    "stopping: closing connections{}",
                    if args.nats.is_empty() {
                        ", flushing the store"
                    } else {
                        ""
                    }
                );
                server.shutdown().await
            })
        }
    }
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
