//! Identifier newtypes.
//!
//! Every id is a `u64` (Snowflake-like for messages: increasing with time
//! inside a conversation, not dense). Newtypes keep a user id from being
//! passed where a conversation id is expected; the on-disk form of each is
//! 8 bytes big-endian (see [`crate::pure::keys`]).

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw `u64`.
            ///
            /// # Examples
            ///
            /// ```
            #[doc = concat!("assert_eq!(readmark::", stringify!($name), "(7).get(), 7);")]
            /// ```
            #[must_use]
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }

        impl From<$name> for u64 {
            fn from(v: $name) -> u64 {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A conversation (DM, group or channel).
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::ConversationId;
    /// let c = ConversationId(7);
    /// assert_eq!(c.get(), 7);
    /// assert_eq!(c.to_string(), "c7");
    /// ```
    ConversationId,
    "c"
);
id_type!(
    /// A user (a reader, a member, a sender).
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::UserId;
    /// assert_eq!(UserId::from(42).to_string(), "u42");
    /// ```
    UserId,
    "u"
);
id_type!(
    /// A message. Ids increase with time inside a conversation but need not
    /// be dense (Snowflake ids are fine).
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::MessageId;
    /// assert!(MessageId(10) < MessageId(11));
    /// ```
    MessageId,
    "m"
);
id_type!(
    /// A point in time, in milliseconds since the Unix epoch, as supplied by
    /// the caller (readmark never reads the clock for data it stores).
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::Timestamp;
    /// let t = Timestamp(1_700_000_000_000);
    /// assert_eq!(t.to_string(), "t1700000000000");
    /// ```
    Timestamp,
    "t"
);

impl Timestamp {
    /// The current wall-clock time, for callers that have no better clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::Timestamp;
    /// assert!(Timestamp::now().get() > 1_600_000_000_000);
    /// ```
    #[must_use]
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// Conversation ids from `2^63` up are readmark's own: they name thread
/// timelines inside the store (`docs/design.md` §13) and are refused from
/// callers. Snowflake and `i64` ids are all below it.
pub(crate) const THREAD_BIT: u64 = 1 << 63;

/// Whether `conversation` is an id callers may use.
pub(crate) fn is_public_id(conversation: ConversationId) -> bool {
    conversation.0 & THREAD_BIT == 0
}

/// A timeline of a conversation: its main timeline, or the thread rooted
/// at one of its main-timeline messages (Matrix MSC3771, Slack, Mattermost
/// and Discord threads).
///
/// Every call about messages, marks, unread counts and receipts takes a
/// timeline; a plain [`ConversationId`] converts into its main timeline, so
/// code that never uses threads never names this type. Each timeline has
/// its own read marks, unread counts, mentions and receipts; membership,
/// privacy and the event and receipt policies are the conversation's.
///
/// # Examples
///
/// ```
/// use readmark::{ConversationId, MessageId, Timeline};
/// let chat = ConversationId(1);
/// assert_eq!(Timeline::from(chat), Timeline::main(chat));
/// let thread = Timeline::thread(chat, MessageId(10));
/// assert_eq!((thread.conversation(), thread.root()), (chat, Some(MessageId(10))));
/// assert_eq!(thread.to_string(), "c1/m10");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timeline {
    conversation: ConversationId,
    root: Option<MessageId>,
}

impl Timeline {
    /// The conversation's main timeline.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{ConversationId, Timeline};
    /// assert_eq!(Timeline::main(ConversationId(1)).root(), None);
    /// ```
    #[must_use]
    pub const fn main(conversation: ConversationId) -> Self {
        Self {
            conversation,
            root: None,
        }
    }

    /// The thread whose root is `root`, a main-timeline message of
    /// `conversation`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{ConversationId, MessageId, Timeline};
    /// let t = Timeline::thread(ConversationId(1), MessageId(5));
    /// assert!(t.is_thread());
    /// ```
    #[must_use]
    pub const fn thread(conversation: ConversationId, root: MessageId) -> Self {
        Self {
            conversation,
            root: Some(root),
        }
    }

    /// The conversation the timeline belongs to.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{ConversationId, MessageId, Timeline};
    /// assert_eq!(Timeline::thread(ConversationId(1), MessageId(5)).conversation(), ConversationId(1));
    /// ```
    #[must_use]
    pub const fn conversation(self) -> ConversationId {
        self.conversation
    }

    /// The thread's root, `None` for the main timeline.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{ConversationId, MessageId, Timeline};
    /// assert_eq!(Timeline::main(ConversationId(1)).root(), None);
    /// ```
    #[must_use]
    pub const fn root(self) -> Option<MessageId> {
        self.root
    }

    /// Whether this is a thread.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{ConversationId, Timeline};
    /// assert!(!Timeline::main(ConversationId(1)).is_thread());
    /// ```
    #[must_use]
    pub const fn is_thread(self) -> bool {
        self.root.is_some()
    }
}

impl From<ConversationId> for Timeline {
    fn from(conversation: ConversationId) -> Self {
        Self::main(conversation)
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.root {
            None => write!(f, "{}", self.conversation),
            Some(r) => write!(f, "{}/{}", self.conversation, r),
        }
    }
}
