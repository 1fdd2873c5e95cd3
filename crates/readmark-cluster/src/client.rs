//! The routing layer any server node embeds: writes go into the stream
//! (acknowledged once JetStream's replicas hold them), reads go to the
//! owner of the conversation's partition over NATS request/reply, and
//! per-user reads scatter to every partition and gather.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};

use crate::error::{Error, Result, nats};
use crate::op::{Answer, Op, Query, Reply, Request};
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

/// An answer and who gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    /// The answer.
    pub answer: Answer,
    /// The node that owns the partition.
    pub node: String,
    /// The log sequence the node had applied.
    pub applied: u64,
}

/// A connection to the cluster, for a server node (or a test) to write
/// and read through. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    nats: async_nats::Client,
    js: jetstream::Context,
    partitions: u32,
    deadline: Duration,
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
        Ok(Client {
            nats,
            js,
            partitions: partitions.max(1),
            deadline: Duration::from_secs(30),
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
    pub async fn write(&self, op: &Op, id: &str) -> Result<Ack> {
        let partition = self.partition_of(op.conversation());
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
                    }) => {
                        return Ok(Answered {
                            answer,
                            node,
                            applied,
                        });
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

    /// Flushes what this client published.
    ///
    /// # Errors
    ///
    /// [`Error::Nats`] if the connection is gone.
    pub async fn flush(&self) -> Result<()> {
        self.nats.flush().await.map_err(nats)
    }
}
