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
