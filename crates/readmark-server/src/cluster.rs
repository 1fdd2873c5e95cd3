//! Serving a readmark cluster (docs/cluster.md) instead of an embedded
//! store: the same protocol, carried out through `readmark_cluster`.
//!
//! - A client's write (read, view, unread flag, privacy) and a backend
//!   call become an operation in the partition's replicated log; the
//!   answer waits until the partition's owner applied it, so a refusal
//!   (`not_member`, `unknown_message`, ...) reaches the caller as it
//!   would from one store, and a read that follows, from any node, sees
//!   the write.
//! - Reads go to the owner, waiting for the writes this node made there.
//! - Pushes arrive on `rm.ev.<user>` for each connected user (see
//!   `fanout`).

use std::sync::atomic::{AtomicU64, Ordering};

use readmark::UserId;
use readmark_cluster::{Answer, CatchUp, Client, Op, Query};
use serde_json::json;

use crate::config::ClusterConfig;
use crate::protocol::{self, Request};
use crate::ws::Answer as WsAnswer;

/// The cluster as this server node sees it.
pub(crate) struct ClusterBackend {
    pub(crate) client: Client,
    /// Per partition, the newest log sequence of a write made through this
    /// node: its reads wait for it (read your writes).
    written: Vec<AtomicU64>,
    /// Names this process's writes for the log's duplicate detection.
    nonce: u64,
    next_id: AtomicU64,
}

impl ClusterBackend {
    pub(crate) async fn connect(c: &ClusterConfig) -> Result<Self, readmark_cluster::Error> {
        let client = Client::connect(&c.nats, c.partitions)
            .await?
            .deadline(std::time::Duration::from_secs(10));
        Ok(ClusterBackend {
            written: (0..c.partitions).map(|_| AtomicU64::new(0)).collect(),
            client,
            nonce: rand_nonce(),
            next_id: AtomicU64::new(0),
        })
    }

    fn id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("s{:x}-{n}", self.nonce)
    }

    fn wrote(&self, partition: u32, seq: u64) {
        if let Some(w) = self.written.get(partition as usize) {
            w.fetch_max(seq, Ordering::AcqRel);
        }
    }

    fn after(&self) -> Vec<u64> {
        self.written
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .collect()
    }

    fn after_of(&self, conversation: u64) -> u64 {
        let p = self.client.partition_of(conversation) as usize;
        self.written.get(p).map_or(0, |w| w.load(Ordering::Acquire))
    }

    /// Writes `op` and waits for its owner to apply it: `Ok(None)` if
    /// carried out, `Ok(Some(code))` if refused.
    pub(crate) async fn write(&self, op: &Op) -> Result<Option<String>, (&'static str, String)> {
        if op.conversation().is_none() {
            let acks = self
                .client
                .write_everywhere(op, &self.id())
                .await
                .map_err(unavailable)?;
            for a in acks {
                self.wrote(a.partition, a.sequence);
            }
            return Ok(None);
        }
        let w = self
            .client
            .write_applied(op, &self.id())
            .await
            .map_err(unavailable)?;
        self.wrote(w.ack.partition, w.ack.sequence);
        Ok(w.refused)
    }

    async fn ask(&self, conversation: u64, q: Query) -> Result<Answer, (&'static str, String)> {
        self.client
            .query(conversation, q, self.after_of(conversation))
            .await
            .map(|a| a.answer)
            .map_err(unavailable)
    }

    /// Whether the cluster answers: the NATS connection is up.
    pub(crate) fn healthy(&self) -> bool {
        self.client.is_connected()
    }

    /// Carries out a client's request as `user` (ws.rs's contract: the
    /// caller is always the reader).
    pub(crate) async fn carry_out(&self, user: UserId, req: Request, now: u64) -> WsAnswer {
        let op = req.name();
        let user = user.0;
        let write = match req {
            Request::Read {
                conversation,
                thread,
                up_to,
            } => Op::MarkRead {
                conversation,
                thread,
                user,
                message: up_to,
                at: now,
            },
            Request::View {
                conversation,
                thread,
                message,
            } => Op::MarkViewed {
                conversation,
                thread,
                user,
                message,
                at: now,
            },
            Request::UnreadFlag {
                conversation,
                thread,
                unread,
            } => Op::SetUnreadFlag {
                conversation,
                thread,
                user,
                unread,
                at: now,
            },
            Request::Private {
                private,
                conversation,
            } => Op::SetPrivacy {
                user,
                conversation,
                private,
            },
            Request::CatchUp { cursor } => return self.catch_up(user, cursor.as_deref()).await,
            Request::UnreadCounts => {
                let counts = self
                    .client
                    .unread_counts(user, &self.after())
                    .await
                    .map_err(unavailable)?;
                return Ok(protocol::unread_counts_answer(counts));
            }
            Request::ReadBy {
                conversation,
                thread,
                message,
                limit,
                after,
            } => {
                let q = Query::ReadBy {
                    conversation,
                    thread,
                    viewer: user,
                    message,
                    limit: limit.unwrap_or(100),
                    after,
                };
                return match self.ask(conversation, q).await? {
                    Answer::ReadBy {
                        count,
                        readers,
                        next,
                    } => Ok(protocol::read_by_answer(
                        count,
                        readers
                            .iter()
                            .map(|r| (r.user, protocol::read_time(r.at, r.exact))),
                        next,
                    )),
                    Answer::Refused { code, message } => Err(client_code(&code, message)),
                    other => Err(unexpected(&other)),
                };
            }
            Request::Ping => return Ok(json!({"type": "pong"})),
        };
        match self.write(&write).await? {
            None => Ok(protocol::ok(None, op)),
            Some(code) => Err(client_code(&code, format!("{op} refused: {code}"))),
        }
    }

    async fn catch_up(&self, user: u64, cursor: Option<&str>) -> WsAnswer {
        match self.client.catch_up(user, cursor, &self.after()).await {
            Ok(CatchUp::States {
                states,
                hidden,
                cursor,
                more,
            }) => {
                let states = states
                    .iter()
                    .map(|s| {
                        protocol::state_row(
                            s.conversation,
                            s.thread,
                            s.reader,
                            s.up_to,
                            s.read_at,
                            s.marked_unread,
                        )
                    })
                    .collect();
                let hidden = hidden
                    .iter()
                    .map(|h| protocol::hidden_row(h.conversation, h.thread, h.reader))
                    .collect();
                Ok(protocol::state_answer(states, hidden, more, cursor))
            }
            Ok(CatchUp::SnapshotRequired) => Ok(json!({"type": "snapshot_required"})),
            Err(readmark_cluster::Error::Decode { what: "cursor", .. }) => Err((
                "invalid_cursor",
                "not a cursor this server gave".to_string(),
            )),
            Err(e) => Err(unavailable(e)),
        }
    }
}

/// A refusal's code as a client is told it: a conversation that does not
/// exist is `not_member` (a non-member learns nothing).
fn client_code(code: &str, text: String) -> (&'static str, String) {
    match code {
        "not_member" | "unknown_conversation" => {
            ("not_member", "not a member of this conversation".into())
        }
        "unknown_message" => ("unknown_message", text),
        "unknown_thread" => ("unknown_thread", text),
        "invalid_cursor" => ("invalid_cursor", text),
        _ => ("invalid_argument", text),
    }
}

fn unavailable(e: readmark_cluster::Error) -> (&'static str, String) {
    tracing::warn!(error = %e, "the cluster did not answer");
    ("unavailable", "the cluster cannot answer now".into())
}

fn unexpected(a: &Answer) -> (&'static str, String) {
    tracing::error!(answer = ?a, "unexpected answer from the cluster");
    ("internal", "unexpected answer".into())
}

/// A random number for this process's write ids: two server processes
/// (or one restarted) never name two writes alike within the log's
/// duplicate window.
fn rand_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}
