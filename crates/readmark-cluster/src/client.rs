//! The routing layer any server node embeds: writes go into the stream
//! (acknowledged once JetStream's replicas hold them), reads go to the
//! owner of the conversation's partition over NATS request/reply, and
//! per-user reads scatter to every partition and gather.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};

use crate::cursor::{ClusterCursor, Part};
use crate::error::{Error, Result, nats};
use crate::op::{Answer, Hidden, Op, Query, Reply, Request, STATES_LIMIT, State};
use crate::partition::{log_subject, partition_of, query_subject};

/// A write the log acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The conversation's partition.
    pub partition: u32,
    /// The write's sequence in the stream: pass it as `after` to read it
    /// back from any node.
    pub sequence: u64,
    /// The stream already held this write (a retry of one whose
    /// acknowledgement was lost): it is in the log once.
    pub duplicate: bool,
}

/// A write the log acknowledged and its partition's owner applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The log's acknowledgement.
    pub ack: Ack,
    /// Why the store refused it (a client code: `not_member`,
    /// `unknown_message`, ...), or `None` if it was carried out.
    pub refused: Option<String>,
    /// Whether the owner knew (see [`Answer::Outcome`]); when it did not,
    /// `refused` is `None`.
    pub known: bool,
}

/// The answer to [`Client::catch_up`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// States to show and readers to forget; continue from `cursor`
    /// (at once if `more`).
    States {
        /// The latest state of each pair listed.
        states: Vec<State>,
        /// Readers to forget.
        hidden: Vec<Hidden>,
        /// Where to continue: opaque text, bounded in size.
        cursor: String,
        /// Whether more remain now.
        more: bool,
    },
    /// The cursor cannot be continued (a partition's owner changed, or its
    /// changes are no longer retained): ask with no cursor.
    SnapshotRequired,
}

/// An answer and who gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    /// The answer.
    pub answer: Answer,
    /// The node that owns the partition.
    pub node: String,
    /// The log sequence the node had applied.
    pub applied: u64,
    /// The owner's lease epoch (see [`Reply::Ok`]).
    pub epoch: u64,
}

/// A connection to the cluster, for a server node (or a test) to write
/// and read through. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    nats: async_nats::Client,
    js: jetstream::Context,
    partitions: u32,
    deadline: Duration,
    /// Per partition, the highest owner epoch that answered: answers from
    /// a lower one are refused (shared by clones).
    epochs: Arc<Vec<AtomicU64>>,
}

impl Client {
    /// Connects to NATS at any of `urls`, for a cluster of `partitions`
    /// partitions. Writes and reads retry for up to 30 s (see
    /// [`deadline`](Client::deadline)).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an address that does not parse,
    /// [`Error::Nats`] if no server can be reached.
    pub async fn connect<S: AsRef<str>>(urls: &[S], partitions: u32) -> Result<Client> {
        let urls: Vec<String> = urls.iter().map(|u| u.as_ref().to_string()).collect();
        let nats = crate::node::connect(&urls, "readmark-client").await?;
        let js = jetstream::new(nats.clone());
        let partitions = partitions.max(1);
        Ok(Client {
            nats,
            js,
            partitions,
            deadline: Duration::from_secs(30),
            epochs: Arc::new((0..partitions).map(|_| AtomicU64::new(0)).collect()),
        })
    }

    /// How long a write or read keeps retrying (through a NATS server's
    /// loss, a partition's failover) before [`Error::Timeout`].
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = d;
        self
    }

    /// The partition of `conversation`.
    pub fn partition_of(&self, conversation: u64) -> u32 {
        partition_of(conversation, self.partitions)
    }

    /// Partitions of the cluster.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Whether the NATS connection is up now.
    pub fn is_connected(&self) -> bool {
        matches!(
            self.nats.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// The underlying NATS connection (to subscribe to `rm.ev.<user>`).
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Appends `op` to its partition's log and waits for JetStream's
    /// acknowledgement: once this returns, a majority of the stream's
    /// replicas holds the write, and the owner applies it. `id` names the
    /// write for JetStream's duplicate detection (two minutes): a retry
    /// with the same id, here or by the caller, is stored once.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if no acknowledgement came within the deadline.
    /// [`Error::Config`] for an operation on every partition (see
    /// [`write_everywhere`](Client::write_everywhere)); [`Error::Timeout`]
    /// if no acknowledgement came within the deadline.
    pub async fn write(&self, op: &Op, id: &str) -> Result<Ack> {
        let Some(conversation) = op.conversation() else {
            return Err(Error::Config(
                "an operation on every partition goes through write_everywhere".into(),
            ));
        };
        self.write_to(self.partition_of(conversation), op, id).await
    }

    /// Appends `op`, an operation of every partition
    /// ([`Op::SetPrivacy`] everywhere), to every partition's log, with
    /// ids `<id>.<partition>`; returns once each is acknowledged. A retry
    /// with the same `id` is stored once per partition.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an operation of one conversation;
    /// [`Error::Timeout`] as [`write`](Client::write), for any partition
    /// (the others may hold it: retry with the same id).
    pub async fn write_everywhere(&self, op: &Op, id: &str) -> Result<Vec<Ack>> {
        if op.conversation().is_some() {
            return Err(Error::Config(
                "an operation of one conversation goes through write".into(),
            ));
        }
        let writes = (0..self.partitions).map(|p| {
            let id = format!("{id}.{p}");
            async move { self.write_to(p, op, &id).await }
        });
        futures_util::future::join_all(writes)
            .await
            .into_iter()
            .collect()
    }

    /// Appends `op` and waits until its partition's owner has applied it:
    /// the answer says whether the store carried it out or refused it,
    /// and why (as [`Op::apply`] did). Costs one request to the owner more
    /// than [`write`](Client::write).
    ///
    /// # Errors
    ///
    /// As [`write`](Client::write) and [`ask`](Client::ask).
    pub async fn write_applied(&self, op: &Op, id: &str) -> Result<Written> {
        let ack = self.write(op, id).await?;
        let answered = self
            .ask(
                ack.partition,
                Query::Outcome { seq: ack.sequence },
                ack.sequence,
            )
            .await?;
        match answered.answer {
            Answer::Outcome { refused, known } => Ok(Written {
                ack,
                refused,
                known,
            }),
            other => Err(Error::Decode {
                what: "outcome",
                reason: format!("{other:?}"),
            }),
        }
    }

    async fn write_to(&self, partition: u32, op: &Op, id: &str) -> Result<Ack> {
        let payload = serde_json::to_vec(op).map_err(|e| Error::Decode {
            what: "operation",
            reason: e.to_string(),
        })?;
        let payload = bytes::Bytes::from(payload);
        let give_up = Instant::now() + self.deadline;
        let mut last_error = String::new();
        while Instant::now() < give_up {
            let sent = self
                .js
                .send_publish(
                    log_subject(partition),
                    PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(id),
                )
                .await;
            match sent {
                Ok(ack) => match ack.await {
                    Ok(ack) => {
                        return Ok(Ack {
                            partition,
                            sequence: ack.sequence,
                            duplicate: ack.duplicate,
                        });
                    }
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Timeout(format!("write {id}: {last_error}")))
    }

    /// Asks the owner of `partition`, once it has applied sequence
    /// `after` (0: whatever it has).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if no owner answered within the deadline.
    pub async fn ask(&self, partition: u32, query: Query, after: u64) -> Result<Answered> {
        let body = serde_json::to_vec(&Request { after, query }).map_err(|e| Error::Decode {
            what: "request",
            reason: e.to_string(),
        })?;
        let body = bytes::Bytes::from(body);
        let give_up = Instant::now() + self.deadline;
        let mut last_error = String::new();
        while Instant::now() < give_up {
            let request = async_nats::Request::new()
                .payload(body.clone())
                .timeout(Some(Duration::from_secs(6)));
            match self
                .nats
                .send_request(query_subject(partition), request)
                .await
            {
                Ok(m) => match serde_json::from_slice::<Reply>(&m.payload) {
                    Ok(Reply::Ok {
                        answer,
                        node,
                        applied,
                        epoch,
                    }) => {
                        // Fencing: once a newer owner answered, an older
                        // one (paused past its lease, not yet aware) is
                        // not listened to.
                        let fence = &self.epochs[partition as usize % self.epochs.len()];
                        if epoch < fence.fetch_max(epoch, Ordering::AcqRel) {
                            last_error =
                                format!("{node} answered as a stale owner (epoch {epoch})");
                        } else {
                            return Ok(Answered {
                                answer,
                                node,
                                applied,
                                epoch,
                            });
                        }
                    }
                    Ok(Reply::Unavailable { reason }) => last_error = reason,
                    Err(e) => last_error = e.to_string(),
                },
                // No owner yet (a failover in progress), or a lost server.
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Timeout(format!(
            "partition {partition}: {last_error}"
        )))
    }

    /// Asks the owner of `conversation`'s partition (see
    /// [`ask`](Client::ask)).
    ///
    /// # Errors
    ///
    /// As [`ask`](Client::ask).
    pub async fn query(&self, conversation: u64, query: Query, after: u64) -> Result<Answered> {
        self.ask(self.partition_of(conversation), query, after)
            .await
    }

    /// `user`'s unread counts over the whole cluster, by conversation:
    /// asks every partition's owner at once and gathers. `after` holds,
    /// per partition, the sequence to wait for (empty: none).
    ///
    /// # Errors
    ///
    /// As [`ask`](Client::ask), for any partition.
    pub async fn unread_counts(
        &self,
        user: u64,
        after: &[u64],
    ) -> Result<Vec<(u64, u64, u64, bool)>> {
        let asks = (0..self.partitions).map(|p| {
            let a = after.get(p as usize).copied().unwrap_or(0);
            self.ask(p, Query::UnreadCounts { user }, a)
        });
        let mut all = Vec::new();
        for answered in futures_util::future::join_all(asks).await {
            match answered?.answer {
                Answer::UnreadCounts { counts } => all.extend(counts),
                other => {
                    return Err(Error::Decode {
                        what: "unread counts",
                        reason: format!("{other:?}"),
                    });
                }
            }
        }
        all.sort_unstable();
        Ok(all)
    }

    /// `user`'s read states over the whole cluster: with no cursor, a
    /// snapshot (in pages: `more` says to ask again from the cursor); with
    /// one, what changed since, as `readmark::Store::changes_since` says it
    /// per partition. `after` holds, per partition, the sequence to wait
    /// for (empty: none).
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] for a cursor this cluster did not give (or one of
    /// another partition count); as [`ask`](Client::ask), for any
    /// partition.
    pub async fn catch_up(
        &self,
        user: u64,
        cursor: Option<&str>,
        after: &[u64],
    ) -> Result<CatchUp> {
        let parts = match cursor {
            None => vec![None; self.partitions as usize],
            Some(text) => ClusterCursor::decode(text, self.partitions)?
                .parts
                .into_iter()
                .map(Some)
                .collect(),
        };
        let limit = (STATES_LIMIT * 2 / self.partitions as usize).clamp(50, STATES_LIMIT);
        let asks = parts.into_iter().enumerate().map(|(p, part)| {
            let a = after.get(p).copied().unwrap_or(0);
            async move {
                let p = u32::try_from(p).unwrap_or(0);
                let query = match &part {
                    None => Query::Snapshot {
                        user,
                        resume: None,
                        limit,
                    },
                    Some(part) if part.resume.is_some() => Query::Snapshot {
                        user,
                        resume: part.resume,
                        limit,
                    },
                    Some(part) => Query::ChangesSince {
                        user,
                        incarnation: part.incarnation,
                        cursor: part.cursor.clone(),
                        limit,
                    },
                };
                self.ask(p, query, a).await.map(|r| (part, r.answer))
            }
        });
        let (mut states, mut hidden, mut parts) = (Vec::new(), Vec::new(), Vec::new());
        for answered in futures_util::future::join_all(asks).await {
            let (before, answer) = answered?;
            match answer {
                Answer::States {
                    states: s,
                    hidden: h,
                    cursor,
                    resume,
                    incarnation,
                } => {
                    let part = match before {
                        // A snapshot's later page: of the same run, and
                        // its cursor stays the one pinned before its first.
                        Some(b) if b.resume.is_some() => {
                            if b.incarnation != incarnation {
                                return Ok(CatchUp::SnapshotRequired);
                            }
                            Part { resume, ..b }
                        }
                        Some(b) => Part {
                            cursor,
                            more: resume.is_some(),
                            ..b
                        },
                        None => Part {
                            incarnation,
                            cursor,
                            resume,
                            more: false,
                        },
                    };
                    states.extend(s);
                    hidden.extend(h);
                    parts.push(part);
                }
                Answer::SnapshotRequired => return Ok(CatchUp::SnapshotRequired),
                Answer::Refused { code, message } => {
                    return Err(Error::Decode {
                        what: "cursor",
                        reason: format!("{code}: {message}"),
                    });
                }
                other => {
                    return Err(Error::Decode {
                        what: "catch-up",
                        reason: format!("{other:?}"),
                    });
                }
            }
        }
        let more = parts.iter().any(|p| p.more || p.resume.is_some());
        Ok(CatchUp::States {
            states,
            hidden,
            cursor: ClusterCursor { parts }.encode(),
            more,
        })
    }

    /// Flushes what this client published.
    ///
    /// # Errors
    ///
    /// [`Error::Nats`] if the connection is gone.
    pub async fn flush(&self) -> Result<()> {
        self.nats.flush().await.map_err(nats)
    }
}
