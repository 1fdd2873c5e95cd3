//! What travels on the log and on the request subjects: operations
//! (writes, applied in log order by a partition's owner), queries and
//! their answers, as JSON.

use readmark::{
    CatchUp, ConversationId, Cursor, Error, MessageId, MessageKind, MessageOptions, Page,
    PrivacyScope, ReadState, ReadTime, Store, Timeline, Timestamp, UserId,
};
use serde::{Deserialize, Serialize};

/// One write. Every operation names one conversation, which decides its
/// partition, except [`Op::SetPrivacy`] everywhere, which goes to every
/// partition ([`Client::write_everywhere`](crate::Client::write_everywhere));
/// the owner applies it with [`Op::apply`]. Times are the writer's clock
/// (milliseconds, as [`Timestamp`]), carried in the log, so every replay applies the same
/// time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
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
        /// When.
        at: u64,
    },
    /// [`Store::remove_member`].
    RemoveMember {
        /// The conversation.
        conversation: u64,
        /// Who leaves.
        user: u64,
    },
    /// [`Store::record_message_with`].
    RecordMessage {
        /// The conversation.
        conversation: u64,
        /// The thread (its root), `None` for the main timeline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<u64>,
        /// The message, above every earlier one of its timeline.
        message: u64,
        /// Who sent it (a member).
        sender: u64,
        /// When.
        at: u64,
        /// Members mentioned.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<u64>,
        /// `@everyone`.
        #[serde(default, skip_serializing_if = "is_false")]
        mention_everyone: bool,
        /// A system message (counted for nobody's unread).
        #[serde(default, skip_serializing_if = "is_false")]
        system: bool,
    },
    /// [`Store::delete_message`].
    DeleteMessage {
        /// The conversation.
        conversation: u64,
        /// The thread (its root), `None` for the main timeline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<u64>,
        /// The message.
        message: u64,
    },
    /// [`Store::mark_read`].
    MarkRead {
        /// The conversation.
        conversation: u64,
        /// The thread (its root), `None` for the main timeline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<u64>,
        /// The reader (a member).
        user: u64,
        /// Read up to and including this message.
        message: u64,
        /// When.
        at: u64,
    },
    /// [`Store::mark_viewed`]: one message seen out of order.
    MarkViewed {
        /// The conversation.
        conversation: u64,
        /// The thread (its root), `None` for the main timeline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<u64>,
        /// The reader (a member).
        user: u64,
        /// The message seen.
        message: u64,
        /// When.
        at: u64,
    },
    /// [`Store::set_unread_flag`] or [`Store::clear_unread_flag`].
    SetUnreadFlag {
        /// The conversation.
        conversation: u64,
        /// The thread (its root), `None` for the main timeline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<u64>,
        /// Whose flag (a member).
        user: u64,
        /// Set (`true`) or clear.
        unread: bool,
        /// When.
        at: u64,
    },
    /// [`Store::set_receipts_private`]: in one conversation (the user must
    /// be a member), or, with `conversation: None`, everywhere: that one
    /// is written to every partition, each applying it to the user's
    /// conversations it holds.
    SetPrivacy {
        /// Whose receipts.
        user: u64,
        /// The conversation, or `None` for every conversation of the user.
        #[serde(default)]
        conversation: Option<u64>,
        /// Private (`true`) or public again.
        private: bool,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What applying an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// It changed the store, or changed nothing because it was applied
    /// before (a redelivery).
    Done,
    /// The store refused it, the same way on every replica and every
    /// replay: nothing changed. The code is what a client is told
    /// (`not_member`, `unknown_message`, ...; see [`refusal_code`]).
    Refused(&'static str),
}

impl Op {
    /// A regular message in the main timeline, mentioning nobody.
    pub fn send(conversation: u64, message: u64, sender: u64, at: u64) -> Op {
        Op::RecordMessage {
            conversation,
            thread: None,
            message,
            sender,
            at,
            mentions: Vec::new(),
            mention_everyone: false,
            system: false,
        }
    }

    /// `user` read the main timeline up to `message`.
    pub fn read(conversation: u64, user: u64, message: u64, at: u64) -> Op {
        Op::MarkRead {
            conversation,
            thread: None,
            user,
            message,
            at,
        }
    }

    /// `user` opened `message` of the main timeline.
    pub fn view(conversation: u64, user: u64, message: u64, at: u64) -> Op {
        Op::MarkViewed {
            conversation,
            thread: None,
            user,
            message,
            at,
        }
    }

    /// The conversation the operation belongs to (its partition's key);
    /// `None` for an operation on every partition.
    pub fn conversation(&self) -> Option<u64> {
        match *self {
            Op::CreateConversation { conversation }
            | Op::AddMember { conversation, .. }
            | Op::RemoveMember { conversation, .. }
            | Op::RecordMessage { conversation, .. }
            | Op::DeleteMessage { conversation, .. }
            | Op::MarkRead { conversation, .. }
            | Op::MarkViewed { conversation, .. }
            | Op::SetUnreadFlag { conversation, .. } => Some(conversation),
            Op::SetPrivacy { conversation, .. } => conversation,
        }
    }

    /// Whether the operation is a barrier for the applier: the marks
    /// buffered before it are flushed with the position first. Either it
    /// writes to RocksDB at once (not through the buffer) and changes how
    /// later operations apply (membership decides who may mark; the
    /// newest message clamps marks and decides which views exist; privacy
    /// decides what is recorded per message), or, for the unread flag, it
    /// reads the mark it is about. So a replay never holds a later
    /// operation's effect before an earlier one's.
    pub fn is_barrier(&self) -> bool {
        !matches!(self, Op::MarkRead { .. } | Op::MarkViewed { .. })
    }

    /// Whether the applier flushes, with the position, right after the
    /// operation too: the unread flag records the mark's position when it
    /// is set, so a replay of it over marks flushed later (the store's
    /// background flusher writes marks without the position) would record
    /// a later position and keep a flag that the original run cleared.
    /// Flushed with it, it is never replayed.
    pub fn seals(&self) -> bool {
        matches!(self, Op::SetUnreadFlag { .. })
    }

    /// Applies the operation to `store`. A refusal is an answer, the same
    /// on every replay; an error is a failing store (I/O, corruption), on
    /// which the applier stops.
    ///
    /// # Errors
    ///
    /// The store's errors other than its refusals of bad input.
    pub fn apply(&self, store: &Store) -> Result<Applied, Error> {
        let Some(conversation) = self.conversation() else {
            // Privacy everywhere: this partition's part of it.
            let Op::SetPrivacy { user, private, .. } = *self else {
                return Ok(Applied::Refused("invalid_argument"));
            };
            return refused_or(
                store,
                None,
                store.set_receipts_private(UserId(user), PrivacyScope::Everywhere, private),
            );
        };
        let c = ConversationId(conversation);
        let r = match self {
            Op::CreateConversation { .. } => store.create_conversation(c),
            Op::AddMember { user, at, .. } => store.add_member(c, UserId(*user), Timestamp(*at)),
            Op::RemoveMember { user, .. } => store.remove_member(c, UserId(*user)),
            Op::RecordMessage {
                thread,
                message,
                sender,
                at,
                mentions,
                mention_everyone,
                system,
                ..
            } => {
                let t = timeline(conversation, *thread);
                let mut options = MessageOptions::new()
                    .kind(if *system {
                        MessageKind::System
                    } else {
                        MessageKind::Regular
                    })
                    .mention(mentions.iter().copied().map(UserId));
                if *mention_everyone {
                    options = options.mention_everyone();
                }
                let (m, s, at) = (MessageId(*message), UserId(*sender), Timestamp(*at));
                match store.record_message_with(t, m, s, at, &options) {
                    // A redelivery: the message is there, but the sender's
                    // own advance that came with it was buffered and may
                    // have died with the process. Making it again is
                    // harmless (max).
                    Err(Error::MessageOutOfOrder { .. }) if store.read_count(t, s, m).is_ok() => {
                        store.mark_read(t, s, m, at)
                    }
                    r => r,
                }
            }
            Op::DeleteMessage {
                thread, message, ..
            } => store.delete_message(timeline(conversation, *thread), MessageId(*message)),
            Op::MarkRead {
                thread,
                user,
                message,
                at,
                ..
            } => {
                let r = store.mark_read(
                    timeline(conversation, *thread),
                    UserId(*user),
                    MessageId(*message),
                    Timestamp(*at),
                );
                return refused_or(store, Some((c, UserId(*user))), r);
            }
            Op::MarkViewed {
                thread,
                user,
                message,
                at,
                ..
            } => {
                let r = store
                    .mark_viewed(
                        timeline(conversation, *thread),
                        UserId(*user),
                        MessageId(*message),
                        Timestamp(*at),
                    )
                    .map(|_| ());
                return refused_or(store, Some((c, UserId(*user))), r);
            }
            Op::SetUnreadFlag {
                thread,
                user,
                unread,
                at,
                ..
            } => {
                let t = timeline(conversation, *thread);
                let (u, at) = (UserId(*user), Timestamp(*at));
                let r = if *unread {
                    store.set_unread_flag(t, u, at)
                } else {
                    store.clear_unread_flag(t, u, at)
                };
                return refused_or(store, Some((c, u)), r);
            }
            Op::SetPrivacy { user, private, .. } => {
                let u = UserId(*user);
                // Only for a conversation the user is in; a non-member
                // learns nothing about it.
                let r = match store.is_member(c, u) {
                    Ok(true) => {
                        store.set_receipts_private(u, PrivacyScope::Conversation(c), *private)
                    }
                    Ok(false) | Err(Error::UnknownConversation(_)) => Err(Error::NotMember {
                        conversation: c,
                        user: u,
                    }),
                    Err(e) => Err(e),
                };
                return refused_or(store, Some((c, u)), r);
            }
        };
        refused_or(store, None, r)
    }
}

/// The timeline of `conversation`, or of its thread rooted at `thread`.
pub(crate) fn timeline(conversation: u64, thread: Option<u64>) -> Timeline {
    match thread {
        None => Timeline::main(ConversationId(conversation)),
        Some(root) => Timeline::thread(ConversationId(conversation), MessageId(root)),
    }
}

/// `r` as applied, or as refused with its client code. `asker` is the
/// client a refusal is for (a member's own operation): a non-member is
/// told `not_member` whatever else was wrong, so it learns nothing about
/// a conversation it is not in, not even whether a message exists.
fn refused_or(
    store: &Store,
    asker: Option<(ConversationId, UserId)>,
    r: Result<(), Error>,
) -> Result<Applied, Error> {
    match r {
        Ok(()) => Ok(Applied::Done),
        Err(e) => {
            let Some(code) = refusal_code(&e) else {
                return Err(e);
            };
            let hide = matches!(code, "unknown_message" | "unknown_thread")
                && asker.is_some_and(|(c, u)| !store.is_member(c, u).unwrap_or(false));
            Ok(Applied::Refused(if hide { "not_member" } else { code }))
        }
    }
}

/// The client code of a store error that is the store's answer to the
/// input (identical on every replay), or `None` for a failing store.
/// `unknown_conversation` is told to clients as `not_member`.
pub fn refusal_code(e: &Error) -> Option<&'static str> {
    Some(match e {
        Error::UnknownConversation(_) => "unknown_conversation",
        Error::ConversationExists(_) => "conversation_exists",
        Error::NotMember { .. } => "not_member",
        Error::AlreadyMember { .. } => "already_member",
        Error::MessageOutOfOrder { .. } => "message_out_of_order",
        Error::UnknownMessage { .. } => "unknown_message",
        Error::UnknownThread { .. } => "unknown_thread",
        Error::InvalidArgument(_) => "invalid_argument",
        Error::InvalidCursor => "invalid_cursor",
        _ => return None,
    })
}

/// Readers per [`Query::ReadBy`] page at most.
pub const READ_BY_LIMIT: usize = 500;
/// States per [`Query::Snapshot`] or [`Query::ChangesSince`] page at most.
pub const STATES_LIMIT: usize = 1_000;

/// A read, answered by the owner of the conversation's partition (or, for
/// the per-user queries, by every partition's owner).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Query {
    /// Which node owns the partition, and how far it has applied.
    Ping,
    /// [`Store::mark`].
    Mark {
        /// The conversation.
        conversation: u64,
        /// The thread (its root), `None` for the main timeline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<u64>,
        /// The reader.
        user: u64,
    },
    /// [`Store::read_by`]: a page of the readers of a message.
    ReadBy {
        /// The conversation.
        conversation: u64,
        /// The thread (its root), `None` for the main timeline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread: Option<u64>,
        /// Who asks (a member).
        viewer: u64,
        /// The message.
        message: u64,
        /// Readers in this page, at most (capped at [`READ_BY_LIMIT`]).
        limit: usize,
        /// Start after this reader (the previous page's `next`).
        #[serde(default)]
        after: Option<u64>,
    },
    /// [`Store::unread_counts`] over this partition's conversations.
    UnreadCounts {
        /// The user.
        user: u64,
    },
    /// A page of [`Store::snapshot`] over this partition's conversations,
    /// in (conversation, thread, reader) order, after `resume`.
    Snapshot {
        /// Whose view.
        user: u64,
        /// Start after this (conversation, thread, reader).
        #[serde(default)]
        resume: Option<StateKey>,
        /// States in this page, at most (capped at [`STATES_LIMIT`]).
        limit: usize,
    },
    /// [`Store::changes_since`] over this partition's conversations.
    ChangesSince {
        /// Whose view.
        user: u64,
        /// The partition's run the cursor came from: a cursor of another
        /// run (a restart, a failover) is answered
        /// [`Answer::SnapshotRequired`], because a replay numbers its
        /// changes again.
        incarnation: u64,
        /// The store's cursor ([`readmark::Cursor`] as text).
        cursor: String,
        /// States in this page, at most (capped at [`STATES_LIMIT`]).
        limit: usize,
    },
    /// What became of the write at log sequence `seq`: applied, or
    /// refused and why.
    Outcome {
        /// The write's sequence.
        seq: u64,
    },
}

/// Where a snapshot page stops: (conversation, thread root or 0, reader).
pub type StateKey = (u64, u64, u64);

/// One reader of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reader {
    /// Who.
    pub user: u64,
    /// When they read it (ms).
    pub at: u64,
    /// `at` is exact; otherwise a "no later than" bound (the read is not
    /// flushed yet, or only the run covering it is known).
    pub exact: bool,
}

/// One read state of catch-up ([`readmark::ReadState`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The conversation.
    pub conversation: u64,
    /// The thread (its root), `None` for the main timeline.
    pub thread: Option<u64>,
    /// Whose mark.
    pub reader: u64,
    /// Read up to and including.
    pub up_to: u64,
    /// When (ms).
    pub read_at: u64,
    /// The user's own "marked unread" flag.
    pub marked_unread: bool,
}

impl State {
    /// Its place in snapshot order.
    pub fn key(&self) -> StateKey {
        (self.conversation, self.thread.unwrap_or(0), self.reader)
    }
}

/// A reader to forget in catch-up: in the conversation and its threads,
/// or (with `thread`) in that thread only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hidden {
    /// The conversation.
    pub conversation: u64,
    /// The thread, for a reader forgotten in one thread only.
    pub thread: Option<u64>,
    /// Who.
    pub reader: u64,
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
    /// To [`Query::ReadBy`]: how many read it, and a page of who, with
    /// when.
    ReadBy {
        /// Readers over all pages.
        count: u64,
        /// This page.
        readers: Vec<Reader>,
        /// Ask again with this as `after` for the next page.
        next: Option<u64>,
    },
    /// To [`Query::UnreadCounts`]: `(conversation, unread, mentions,
    /// marked_unread)` for each of the user's conversations in the
    /// partition.
    UnreadCounts {
        /// One entry per conversation.
        counts: Vec<(u64, u64, u64, bool)>,
    },
    /// To [`Query::Snapshot`] and [`Query::ChangesSince`].
    States {
        /// States to show (the latest of each pair).
        states: Vec<State>,
        /// Readers to forget.
        hidden: Vec<Hidden>,
        /// For changes: the store's cursor to continue from. For a
        /// snapshot: the cursor pinned before its first page (a page
        /// after the first carries it back unchanged).
        cursor: String,
        /// For a snapshot page: where the next one starts; `None` at the
        /// end. For changes: `Some` while more remain.
        resume: Option<StateKey>,
        /// The partition's run (see [`Query::ChangesSince`]).
        incarnation: u64,
    },
    /// To [`Query::ChangesSince`]: the cursor cannot be continued (another
    /// run, or its changes are no longer retained): take a snapshot.
    SnapshotRequired,
    /// To [`Query::Outcome`].
    Outcome {
        /// `None` if the write was applied; its refusal code if refused.
        refused: Option<String>,
        /// `false` if the owner cannot tell (the write was applied before
        /// it restored the partition): the write is in the log, so it was
        /// carried out unless its own input was wrong.
        known: bool,
    },
    /// The store refused the query (not a member, unknown message).
    Refused {
        /// The client code ([`refusal_code`]).
        code: String,
        /// What was refused, for people.
        message: String,
    },
}

impl Query {
    /// Answers the query from `store` (the node answers [`Query::Ping`]
    /// and [`Query::Outcome`] itself). `incarnation` is the partition's
    /// run.
    ///
    /// # Errors
    ///
    /// The store's errors other than its refusals of bad input.
    pub fn answer(&self, store: &Store, incarnation: u64) -> Result<Answer, Error> {
        let r = match self {
            Query::Ping | Query::Outcome { .. } => Err(Error::InvalidArgument(
                "answered by the node, not the store",
            )),
            Query::Mark {
                conversation,
                thread,
                user,
            } => store
                .mark(timeline(*conversation, *thread), UserId(*user))
                .map(|m| Answer::Mark {
                    mark: m.map(|m| (m.up_to.0, m.at.0)),
                }),
            Query::ReadBy {
                conversation,
                thread,
                viewer,
                message,
                limit,
                after,
            } => {
                let mut page = Page::first((*limit).clamp(1, READ_BY_LIMIT));
                page.after = after.map(UserId);
                // A non-member learns nothing, not even whether the
                // message exists.
                if !store
                    .is_member(ConversationId(*conversation), UserId(*viewer))
                    .unwrap_or(false)
                {
                    return Ok(Answer::Refused {
                        code: "not_member".into(),
                        message: "not a member of this conversation".into(),
                    });
                }
                store
                    .read_by(
                        timeline(*conversation, *thread),
                        UserId(*viewer),
                        MessageId(*message),
                        page,
                    )
                    .map(|r| Answer::ReadBy {
                        count: r.count,
                        readers: r
                            .readers
                            .iter()
                            .map(|x| match x.read_at {
                                ReadTime::At(t) => Reader {
                                    user: x.user.0,
                                    at: t.0,
                                    exact: true,
                                },
                                ReadTime::NoLaterThan(t) => Reader {
                                    user: x.user.0,
                                    at: t.0,
                                    exact: false,
                                },
                                _ => Reader {
                                    user: x.user.0,
                                    at: 0,
                                    exact: false,
                                },
                            })
                            .collect(),
                        next: r.next.map(|u| u.0),
                    })
            }
            Query::UnreadCounts { user } => {
                store
                    .unread_counts(UserId(*user))
                    .map(|v| Answer::UnreadCounts {
                        counts: v
                            .into_iter()
                            .map(|(c, u)| (c.0, u.count, u.mentions, u.marked_unread))
                            .collect(),
                    })
            }
            Query::Snapshot {
                user,
                resume,
                limit,
            } => store.snapshot(UserId(*user)).map(|snap| {
                let mut states: Vec<State> = snap.states.iter().map(state).collect();
                states.sort_unstable_by_key(State::key);
                let from = resume.map_or(0, |r| states.partition_point(|s| s.key() <= r));
                let limit = (*limit).clamp(1, STATES_LIMIT);
                let page: Vec<State> = states.iter().skip(from).take(limit).copied().collect();
                let resume = if from + page.len() < states.len() {
                    page.last().map(State::key)
                } else {
                    None
                };
                Answer::States {
                    states: page,
                    hidden: Vec::new(),
                    cursor: snap.cursor.to_string(),
                    resume,
                    incarnation,
                }
            }),
            Query::ChangesSince {
                user,
                incarnation: asked,
                cursor,
                limit,
            } => {
                if *asked != incarnation {
                    return Ok(Answer::SnapshotRequired);
                }
                let Ok(cursor) = cursor.parse::<Cursor>() else {
                    return Ok(Answer::Refused {
                        code: "invalid_cursor".into(),
                        message: "not a cursor this cluster gave".into(),
                    });
                };
                let limit = (*limit).clamp(1, STATES_LIMIT);
                store
                    .changes_since(UserId(*user), cursor, limit)
                    .map(|c| match c {
                        CatchUp::SnapshotRequired => Answer::SnapshotRequired,
                        CatchUp::Changes(page) => Answer::States {
                            states: page.states.iter().map(state).collect(),
                            hidden: page
                                .hidden
                                .iter()
                                .map(|(c, r)| Hidden {
                                    conversation: c.0,
                                    thread: None,
                                    reader: r.0,
                                })
                                .chain(page.hidden_threads.iter().map(|(c, t, r)| Hidden {
                                    conversation: c.0,
                                    thread: Some(t.0),
                                    reader: r.0,
                                }))
                                .collect(),
                            cursor: page.next.to_string(),
                            resume: page.more.then_some((0, 0, 0)),
                            incarnation,
                        },
                    })
            }
        };
        match r {
            Ok(a) => Ok(a),
            Err(e) => match refusal_code(&e) {
                Some(code) => Ok(Answer::Refused {
                    code: code.into(),
                    message: e.to_string(),
                }),
                None => Err(e),
            },
        }
    }
}

impl From<&ReadState> for State {
    fn from(s: &ReadState) -> State {
        state(s)
    }
}

fn state(s: &ReadState) -> State {
    State {
        conversation: s.conversation.0,
        thread: s.thread.map(|m| m.0),
        reader: s.reader.0,
        up_to: s.up_to.0,
        read_at: s.read_at.0,
        marked_unread: s.marked_unread,
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
        /// The owner's lease epoch: the lease's revision when it took the
        /// partition. A later owner's is higher.
        #[serde(default)]
        epoch: u64,
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
                thread: None,
                message,
                sender,
                at: 1,
                mentions: Vec::new(),
                mention_everyone: false,
                system: false,
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
                thread: Some(4),
                message: 9,
                sender: 2,
                at: 4,
                mentions: vec![3],
                mention_everyone: true,
                system: true,
            },
            Op::DeleteMessage {
                conversation: 1,
                thread: None,
                message: 9,
            },
            Op::MarkRead {
                conversation: 1,
                thread: None,
                user: 2,
                message: 9,
                at: 5,
            },
            Op::MarkViewed {
                conversation: 1,
                thread: Some(4),
                user: 2,
                message: 9,
                at: 6,
            },
            Op::SetUnreadFlag {
                conversation: 1,
                thread: None,
                user: 2,
                unread: true,
                at: 7,
            },
            Op::SetPrivacy {
                user: 2,
                conversation: None,
                private: true,
            },
        ];
        for op in ops {
            let bytes = serde_json::to_vec(&op).unwrap();
            assert_eq!(serde_json::from_slice::<Op>(&bytes).unwrap(), op);
        }
        // The log's older entries (before threads) still decode.
        assert_eq!(
            serde_json::from_slice::<Op>(
                br#"{"op":"record_message","conversation":1,"message":2,"sender":3,"at":4}"#
            )
            .unwrap()
            .conversation(),
            Some(1)
        );
        assert!(serde_json::from_slice::<Op>(br#"{"op":"mark_read","conversation":1}"#).is_err());
        assert!(
            serde_json::from_slice::<Op>(br#"{"op":"create_conversation","conversation":1,"x":2}"#)
                .is_err(),
            "an unknown field is refused, not ignored"
        );
    }

    #[test]
    fn replaying_a_log_prefix_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), readmark::Config::new()).unwrap();
        let mut log = two_members_and_a_send(10, 2);
        log.extend([
            Op::MarkRead {
                conversation: 1,
                thread: None,
                user: 1,
                message: 10,
                at: 2,
            },
            Op::MarkViewed {
                conversation: 1,
                thread: None,
                user: 1,
                message: 10,
                at: 2,
            },
        ]);
        for op in &log {
            assert_eq!(op.apply(&store).unwrap(), Applied::Done, "{op:?}");
        }
        let mark = Query::Mark {
            conversation: 1,
            thread: None,
            user: 1,
        };
        let before = mark.answer(&store, 0).unwrap();
        for op in &log {
            op.apply(&store).unwrap();
        }
        assert_eq!(mark.answer(&store, 0).unwrap(), before);
    }

    #[test]
    fn a_non_member_is_refused_as_not_member_whatever_else_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), readmark::Config::new()).unwrap();
        for op in two_members_and_a_send(10, 2) {
            op.apply(&store).unwrap();
        }
        let mark = |user, message| Op::MarkViewed {
            conversation: 1,
            thread: None,
            user,
            message,
            at: 3,
        };
        assert_eq!(
            mark(1, 99).apply(&store).unwrap(),
            Applied::Refused("unknown_message")
        );
        // User 9 is not a member: not told that message 99 does not exist.
        assert_eq!(
            mark(9, 99).apply(&store).unwrap(),
            Applied::Refused("not_member")
        );
        assert_eq!(
            mark(9, 10).apply(&store).unwrap(),
            Applied::Refused("not_member")
        );
        let private = |conversation| Op::SetPrivacy {
            user: 9,
            conversation: Some(conversation),
            private: true,
        };
        assert_eq!(
            private(1).apply(&store).unwrap(),
            Applied::Refused("not_member")
        );
        assert_eq!(
            private(5).apply(&store).unwrap(),
            Applied::Refused("not_member")
        );
    }

    #[test]
    fn snapshot_pages_resume_after_their_last_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), readmark::Config::new()).unwrap();
        for c in 1..=5 {
            for op in [
                Op::CreateConversation { conversation: c },
                Op::AddMember {
                    conversation: c,
                    user: 1,
                    at: 0,
                },
                Op::AddMember {
                    conversation: c,
                    user: 2,
                    at: 0,
                },
                Op::RecordMessage {
                    conversation: c,
                    thread: None,
                    message: 1,
                    sender: 2,
                    at: 1,
                    mentions: Vec::new(),
                    mention_everyone: false,
                    system: false,
                },
                Op::MarkRead {
                    conversation: c,
                    thread: None,
                    user: 1,
                    message: 1,
                    at: 2,
                },
            ] {
                assert_eq!(op.apply(&store).unwrap(), Applied::Done);
            }
        }
        let page = |resume| Query::Snapshot {
            user: 1,
            resume,
            limit: 3,
        };
        let (mut all, mut resume, mut pages) = (Vec::new(), None, 0);
        loop {
            let Answer::States {
                states, resume: r, ..
            } = page(resume).answer(&store, 7).unwrap()
            else {
                panic!("states");
            };
            all.extend(states);
            pages += 1;
            match r {
                Some(r) => resume = Some(r),
                None => break,
            }
        }
        assert_eq!(all.len(), 10, "both members' marks in five conversations");
        assert_eq!(pages, 4);
        assert!(all.windows(2).all(|w| w[0].key() < w[1].key()));
        let stale = Query::ChangesSince {
            user: 1,
            incarnation: 6,
            cursor: String::new(),
            limit: 10,
        };
        assert_eq!(stale.answer(&store, 7).unwrap(), Answer::SnapshotRequired);
    }
}
