//! What travels on the log and on the request subjects: operations
//! (writes, applied in log order by a partition's owner), queries and
//! their answers, as JSON.

use readmark::{ConversationId, Error, MessageId, Page, ReadTime, Store, Timestamp, UserId};
use serde::{Deserialize, Serialize};

/// One write. Every operation names one conversation, which decides its
/// partition; the owner applies it with [`Op::apply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Op {
    /// [`Store::create_conversation`].
    CreateConversation {
        /// The conversation.
        conversation: u64,
    },
    /// [`Store::add_member`].
    AddMember {
        /// The conversation.
        conversation: u64,
        /// Who joins.
        user: u64,
        /// When (microseconds).
        at: u64,
    },
    /// [`Store::remove_member`].
    RemoveMember {
        /// The conversation.
        conversation: u64,
        /// Who leaves.
        user: u64,
    },
    /// [`Store::record_message`].
    RecordMessage {
        /// The conversation.
        conversation: u64,
        /// The message, above every earlier one of the conversation.
        message: u64,
        /// Who sent it (a member).
        sender: u64,
        /// When (microseconds).
        at: u64,
    },
    /// [`Store::mark_read`].
    MarkRead {
        /// The conversation.
        conversation: u64,
        /// The reader (a member).
        user: u64,
        /// Read up to and including this message.
        message: u64,
        /// When (microseconds).
        at: u64,
    },
    /// [`Store::mark_viewed`]: one message seen out of order.
    MarkViewed {
        /// The conversation.
        conversation: u64,
        /// The reader (a member).
        user: u64,
        /// The message seen.
        message: u64,
        /// When (microseconds).
        at: u64,
    },
}

/// What applying an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It changed the store, or changed nothing because it was applied
    /// before (a redelivery).
    Done,
    /// The store refused it, the same way on every replica and every
    /// replay (not a member, a message out of order, ...): nothing
    /// changed.
    Refused,
}

impl Op {
    /// The conversation the operation belongs to (its partition's key).
    pub fn conversation(&self) -> u64 {
        match *self {
            Op::CreateConversation { conversation }
            | Op::AddMember { conversation, .. }
            | Op::RemoveMember { conversation, .. }
            | Op::RecordMessage { conversation, .. }
            | Op::MarkRead { conversation, .. }
            | Op::MarkViewed { conversation, .. } => conversation,
        }
    }

    /// Whether the operation is a barrier for the applier: it writes to
    /// RocksDB at once (not through the buffer), and what it writes
    /// changes how later operations apply (membership decides who may
    /// mark; the newest message clamps marks and decides which views
    /// exist). The applier flushes the marks buffered before one, with the
    /// position, so a replay never holds a later operation's effect before
    /// an earlier one's.
    pub fn is_barrier(&self) -> bool {
        matches!(
            self,
            Op::CreateConversation { .. }
                | Op::AddMember { .. }
                | Op::RemoveMember { .. }
                | Op::RecordMessage { .. }
        )
    }

    /// Applies the operation to `store`. A refusal is an answer, the same
    /// on every replay; an error is a failing store (I/O, corruption), on
    /// which the applier stops.
    ///
    /// # Errors
    ///
    /// The store's errors other than its refusals of bad input.
    pub fn apply(&self, store: &Store) -> Result<Applied, Error> {
        let c = ConversationId(self.conversation());
        let r = match *self {
            Op::CreateConversation { .. } => store.create_conversation(c),
            Op::AddMember { user, at, .. } => store.add_member(c, UserId(user), Timestamp(at)),
            Op::RemoveMember { user, .. } => store.remove_member(c, UserId(user)),
            Op::RecordMessage {
                message,
                sender,
                at,
                ..
            } => match store.record_message(c, MessageId(message), UserId(sender), Timestamp(at)) {
                // A redelivery: the message is there, but the sender's own
                // advance that came with it was buffered and may have died
                // with the process. Making it again is harmless (max).
                Err(Error::MessageOutOfOrder { .. })
                    if store
                        .read_count(c, UserId(sender), MessageId(message))
                        .is_ok() =>
                {
                    store.mark_read(c, UserId(sender), MessageId(message), Timestamp(at))
                }
                r => r,
            },
            Op::MarkRead {
                user, message, at, ..
            } => store.mark_read(c, UserId(user), MessageId(message), Timestamp(at)),
            Op::MarkViewed {
                user, message, at, ..
            } => store
                .mark_viewed(c, UserId(user), MessageId(message), Timestamp(at))
                .map(|_| ()),
        };
        match r {
            Ok(()) => Ok(Applied::Done),
            Err(e) if is_refusal(&e) => Ok(Applied::Refused),
            Err(e) => Err(e),
        }
    }
}

/// The errors that are the store's answer to the input, identical on every
/// replay, as opposed to a failing store.
fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::UnknownConversation(_)
            | Error::ConversationExists(_)
            | Error::NotMember { .. }
            | Error::AlreadyMember { .. }
            | Error::MessageOutOfOrder { .. }
            | Error::UnknownMessage { .. }
            | Error::UnknownThread { .. }
            | Error::InvalidArgument(_)
    )
}

/// A read, answered by the owner of the conversation's partition (or, for
/// [`Query::UnreadCounts`], by every partition's owner).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Query {
    /// Which node owns the partition, and how far it has applied.
    Ping,
    /// [`Store::mark`].
    Mark {
        /// The conversation.
        conversation: u64,
        /// The reader.
        user: u64,
    },
    /// [`Store::read_by`], first page of up to 100 readers.
    ReadBy {
        /// The conversation.
        conversation: u64,
        /// Who asks (a member).
        viewer: u64,
        /// The message.
        message: u64,
    },
    /// [`Store::unread_counts`] over this partition's conversations.
    UnreadCounts {
        /// The user.
        user: u64,
    },
}

/// A query's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "a", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Answer {
    /// To [`Query::Ping`].
    Pong {
        /// The owner's node id.
        node: String,
        /// The last log sequence it applied.
        applied: u64,
    },
    /// To [`Query::Mark`]: `(up_to, at)`, or `None` if nothing was read.
    Mark {
        /// The mark.
        mark: Option<(u64, u64)>,
    },
    /// To [`Query::ReadBy`]: how many read it and who, with when.
    ReadBy {
        /// Readers over all pages.
        count: u64,
        /// `(user, read_at)` of this page. `read_at` is the exact first
        /// read once the owner has flushed it, a "no later than" bound
        /// before: compare users, not times, across nodes.
        readers: Vec<(u64, u64)>,
    },
    /// To [`Query::UnreadCounts`]: `(conversation, unread, mentions,
    /// marked_unread)` for each of the user's conversations in the
    /// partition.
    UnreadCounts {
        /// One entry per conversation.
        counts: Vec<(u64, u64, u64, bool)>,
    },
    /// The store refused the query (not a member, unknown message): the
    /// code is the error's kind.
    Refused {
        /// What was refused, for people.
        message: String,
    },
}

impl Query {
    /// Answers the query from `store`.
    ///
    /// # Errors
    ///
    /// The store's errors other than its refusals of bad input.
    pub fn answer(&self, store: &Store) -> Result<Answer, Error> {
        let r = match *self {
            Query::Ping => Err(Error::InvalidArgument("ping is answered by the node")),
            Query::Mark { conversation, user } => store
                .mark(ConversationId(conversation), UserId(user))
                .map(|m| Answer::Mark {
                    mark: m.map(|m| (m.up_to.0, m.at.0)),
                }),
            Query::ReadBy {
                conversation,
                viewer,
                message,
            } => store
                .read_by(
                    ConversationId(conversation),
                    UserId(viewer),
                    MessageId(message),
                    Page::first(100),
                )
                .map(|r| Answer::ReadBy {
                    count: r.count,
                    readers: r
                        .readers
                        .iter()
                        .map(|x| match x.read_at {
                            ReadTime::At(t) | ReadTime::NoLaterThan(t) => (x.user.0, t.0),
                            _ => (x.user.0, 0),
                        })
                        .collect(),
                }),
            Query::UnreadCounts { user } => {
                store
                    .unread_counts(UserId(user))
                    .map(|v| Answer::UnreadCounts {
                        counts: v
                            .into_iter()
                            .map(|(c, u)| (c.0, u.count, u.mentions, u.marked_unread))
                            .collect(),
                    })
            }
        };
        match r {
            Ok(a) => Ok(a),
            Err(e) if is_refusal(&e) => Ok(Answer::Refused {
                message: e.to_string(),
            }),
            Err(e) => Err(e),
        }
    }
}

/// A request on a partition's query subject.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// Answer only once the partition has applied this log sequence (the
    /// sequence of the caller's last acknowledged write there): read your
    /// writes, from any node.
    #[serde(default)]
    pub after: u64,
    /// The query.
    pub query: Query,
}

/// The reply to a [`Request`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The answer, with the owner and its watermark when it answered.
    Ok {
        /// The answer.
        answer: Answer,
        /// The answering node.
        node: String,
        /// The log sequence applied when it answered.
        applied: u64,
    },
    /// The node could not answer (not the owner any more, its store
    /// failed, `after` not reached in time): ask again.
    Unavailable {
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The start of the tests' logs: conversation 1 with members 1 and 2,
    /// and `sender`'s `message` at time 1.
    pub(crate) fn two_members_and_a_send(message: u64, sender: u64) -> Vec<Op> {
        vec![
            Op::CreateConversation { conversation: 1 },
            Op::AddMember {
                conversation: 1,
                user: 1,
                at: 0,
            },
            Op::AddMember {
                conversation: 1,
                user: 2,
                at: 0,
            },
            Op::RecordMessage {
                conversation: 1,
                message,
                sender,
                at: 1,
            },
        ]
    }

    #[test]
    fn operations_round_trip_as_json() {
        let ops = [
            Op::CreateConversation { conversation: 1 },
            Op::AddMember {
                conversation: 1,
                user: 2,
                at: 3,
            },
            Op::RemoveMember {
                conversation: 1,
                user: 2,
            },
            Op::RecordMessage {
                conversation: 1,
                message: 9,
                sender: 2,
                at: 4,
            },
            Op::MarkRead {
                conversation: 1,
                user: 2,
                message: 9,
                at: 5,
            },
            Op::MarkViewed {
                conversation: 1,
                user: 2,
                message: 9,
                at: 6,
            },
        ];
        for op in ops {
            let bytes = serde_json::to_vec(&op).unwrap();
            assert_eq!(serde_json::from_slice::<Op>(&bytes).unwrap(), op);
        }
        assert!(serde_json::from_slice::<Op>(br#"{"op":"mark_read","conversation":1}"#).is_err());
    }

    #[test]
    fn replaying_a_log_prefix_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), readmark::Config::new()).unwrap();
        let mut log = two_members_and_a_send(10, 2);
        log.extend([
            Op::MarkRead {
                conversation: 1,
                user: 1,
                message: 10,
                at: 2,
            },
            Op::MarkViewed {
                conversation: 1,
                user: 1,
                message: 10,
                at: 2,
            },
        ]);
        for op in &log {
            assert_eq!(op.apply(&store).unwrap(), Applied::Done, "{op:?}");
        }
        let before = Query::Mark {
            conversation: 1,
            user: 1,
        }
        .answer(&store)
        .unwrap();
        for op in &log {
            op.apply(&store).unwrap();
        }
        assert_eq!(
            Query::Mark {
                conversation: 1,
                user: 1
            }
            .answer(&store)
            .unwrap(),
            before
        );
        assert_eq!(
            Op::MarkRead {
                conversation: 1,
                user: 9,
                message: 10,
                at: 3
            }
            .apply(&store)
            .unwrap(),
            Applied::Refused
        );
    }
}
