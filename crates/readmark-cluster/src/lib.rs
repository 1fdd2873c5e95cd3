//! readmark beyond one machine: nodes on a NATS JetStream cluster.
//!
//! - **Partitions.** Conversations map to a fixed number of partitions
//!   ([`partition_of`]); a conversation's members, messages, marks and
//!   receipt bitsets live in its partition's store, so `read_by`, events
//!   and bitsets never cross a node.
//! - **A replicated log.** Every write ([`Op`]) enters the JetStream
//!   stream `READMARK` on subject `rm.p.<partition>` and is acknowledged
//!   once a majority of its replicas holds it ([`Client::write`]).
//! - **Appliers.** The owner of a partition consumes its subject, applies
//!   each write to a store of its own at `Durability::Memory` (the stream
//!   is the log) and records the last applied sequence in the same
//!   RocksDB batch as the marks it covers (`Store::flush_at`). A restart
//!   resumes after it; a redelivery is harmless (max and OR merges).
//! - **Leases.** A key-value bucket holds one lease per partition, taken
//!   with a create, renewed with a revision check, expired by the bucket's
//!   age limit when its node dies; the new owner downloads the last
//!   checkpoint from the object store and replays the log after it.
//! - **Routing.** Reads go to the owner over request/reply
//!   (`rm.q.<partition>`), with the caller's last write sequence so that
//!   any node reads its writes; per-user reads scatter to every partition
//!   and gather; receipt events leave on `rm.ev.<user>`.
//!
//! `docs/cluster.md` walks through what each acknowledgement survives and
//! every failure case.
//!
//! # Examples
//!
//! ```no_run
//! # async fn demo() -> readmark_cluster::Result<()> {
//! use readmark_cluster::{Client, Op, Query};
//! let client = Client::connect(&["nats://127.0.0.1:4222"], 16).await?;
//! let ack = client.write(&Op::CreateConversation { conversation: 7 }, "create-7").await?;
//! client.write(&Op::AddMember { conversation: 7, user: 1, at: 0 }, "join-7-1").await?;
//! // Answered once the owner applied it, with the store's refusal if any.
//! let read = client.write_applied(&Op::read(7, 1, 1, 5), "read-7-1-1").await?;
//! if let Some(code) = &read.refused {
//!     println!("refused: {code}"); // e.g. not_member
//! }
//! let answer = client
//!     .query(7, Query::Mark { conversation: 7, thread: None, user: 1 }, read.ack.sequence)
//!     .await?;
//! println!("{:?} from {}", answer.answer, answer.node);
//! # Ok(()) }
//! ```

mod applier;
mod checkpoint;
mod client;
mod config;
mod cursor;
mod error;
pub mod local;
mod node;
mod op;
mod partition;
mod push;

pub use applier::LogApplier;
/// The NATS client this crate speaks through, at the version it uses.
pub use async_nats;
pub use client::{Ack, Answered, CatchUp, Client, Written};
pub use config::{CHECKPOINTS, LEASES, NODES, NodeConfig, STREAM};
pub use cursor::MAX_PARTITIONS;
pub use error::{Error, Result};
pub use node::run;
pub use op::{
    Answer, Applied, Hidden, Op, Query, READ_BY_LIMIT, Reader, Reply, Request, STATES_LIMIT, State,
    StateKey, refusal_code,
};
pub use partition::{
    EVENT_SUBJECT_PREFIX, LOG_SUBJECT_PREFIX, QUERY_SUBJECT_PREFIX, RESYNC_SUBJECT, event_subject,
    log_subject, partition_of, query_subject,
};
pub use push::{Push, push_of, resync_frame};
