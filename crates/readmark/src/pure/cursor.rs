//! The catch-up cursor: where a walk of the change log stands, opaque to
//! clients. The log's record is in `records`; the store side (writing and
//! reading the log, catch-up) is in `store::change_log` and
//! `store::catch_up`.

use byteorder::{BigEndian, ByteOrder};

use crate::error::{Error, Result};

/// Where a [`changes_since`](crate::Store::changes_since) walk stands.
/// Opaque to callers: store it with the client and hand it back, as bytes
/// ([`Cursor::to_bytes`]) or text (`Display` / `FromStr`, hex).
///
/// ```text
/// 0     1       2       10         18     26        34         42         50
/// | ver | phase | since | since_at | high | high_at | resume_a | resume_b |
/// ```
///
/// The walk lists the changes with sequence numbers in `(since, high]`;
/// `high = 0` means "not pinned yet" (the next call pins the newest
/// sequence and its time). Phase 0 lists the user's own marks (from
/// conversation `resume_a`), phase 1 the other members' in the user's
/// conversations (from conversation `resume_a`, reader `resume_b` in it).
/// `since_at` (store clock, ms, when `since` was the newest sequence) tells
/// whether the changes after `since` are still retained. Version 1 (format
/// 3's log walk) still decodes; catch-up answers it with a snapshot.
///
/// # Examples
///
/// ```
/// # use readmark::{Config, Store, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// let cursor = store.snapshot(UserId(1))?.cursor;
/// let text = cursor.to_string();
/// assert_eq!(text.parse::<readmark::Cursor>()?, cursor);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub(crate) version: u8,
    pub(crate) phase: u8,
    pub(crate) since: u64,
    pub(crate) since_at: u64,
    pub(crate) high: u64,
    pub(crate) high_at: u64,
    pub(crate) resume_a: u64,
    pub(crate) resume_b: u64,
}

pub(crate) const CURSOR_VERSION: u8 = 2;
/// Cursors of format 3's log walk: decoded, then answered with a snapshot.
pub(crate) const LEGACY_CURSOR_VERSION: u8 = 1;
pub(crate) const CURSOR_PHASE: usize = 1;
pub(crate) const CURSOR_SINCE: usize = 2;
pub(crate) const CURSOR_SINCE_AT: usize = 10;
pub(crate) const CURSOR_HIGH: usize = 18;
pub(crate) const CURSOR_HIGH_AT: usize = 26;
pub(crate) const CURSOR_RESUME_A: usize = 34;
pub(crate) const CURSOR_RESUME_B: usize = 42;
/// Encoded length of a [`Cursor`].
///
/// # Examples
///
/// ```
/// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
/// # let dir = tempfile::tempdir()?;
/// # let store = Store::open(dir.path(), Config::new())?;
/// let cursor = store.snapshot(UserId(1))?.cursor;
/// assert_eq!(cursor.to_bytes().len(), readmark::CURSOR_LEN);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub const CURSOR_LEN: usize = 50;

impl Default for Cursor {
    fn default() -> Self {
        Self {
            version: CURSOR_VERSION,
            phase: 0,
            since: 0,
            since_at: 0,
            high: 0,
            high_at: 0,
            resume_a: 0,
            resume_b: 0,
        }
    }
}

impl Cursor {
    /// Whether the cursor comes from a format-3 store's walk, whose
    /// positions mean something else: catch-up asks for a snapshot.
    pub(crate) fn legacy(&self) -> bool {
        self.version == LEGACY_CURSOR_VERSION
    }

    /// A fresh walk of the changes after `since` (pinned at `since_at`).
    pub(crate) fn after(since: u64, since_at: u64) -> Self {
        Self {
            since,
            since_at,
            ..Self::default()
        }
    }

    /// The cursor as bytes, [`CURSOR_LEN`] long.
    ///
    /// # Examples
    ///
    /// ```
    /// # use readmark::{Config, ConversationId, MessageId, Store, Timestamp, UserId};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), Config::new())?;
    /// let cursor = store.snapshot(UserId(1))?.cursor;
    /// let bytes = cursor.to_bytes(); // store it with the client
    /// assert_eq!(readmark::Cursor::from_bytes(&bytes)?, cursor);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_bytes(&self) -> [u8; CURSOR_LEN] {
        let mut b = [0u8; CURSOR_LEN];
        b[0] = self.version;
        b[CURSOR_PHASE] = self.phase;
        let fields = [
            (CURSOR_SINCE, self.since),
            (CURSOR_SINCE_AT, self.since_at),
            (CURSOR_HIGH, self.high),
            (CURSOR_HIGH_AT, self.high_at),
            (CURSOR_RESUME_A, self.resume_a),
            (CURSOR_RESUME_B, self.resume_b),
        ];
        for (at, v) in fields {
            BigEndian::write_u64(&mut b[at..at + 8], v);
        }
        b
    }

    /// Decodes [`to_bytes`](Cursor::to_bytes).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCursor`] if `b` is not a cursor this version wrote.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(readmark::Cursor::from_bytes(b"nope").is_err());
    /// ```
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() != CURSOR_LEN
            || !(b[0] == CURSOR_VERSION || b[0] == LEGACY_CURSOR_VERSION)
            || b[CURSOR_PHASE] > 1
        {
            return Err(Error::InvalidCursor);
        }
        let get = |at: usize| BigEndian::read_u64(&b[at..at + 8]);
        let c = Self {
            version: b[0],
            phase: b[CURSOR_PHASE],
            since: get(CURSOR_SINCE),
            since_at: get(CURSOR_SINCE_AT),
            high: get(CURSOR_HIGH),
            high_at: get(CURSOR_HIGH_AT),
            resume_a: get(CURSOR_RESUME_A),
            resume_b: get(CURSOR_RESUME_B),
        };
        // Only a pinned walk has a position, and it lists (since, high].
        let pinned = c.high != 0;
        let positioned = c.phase != 0 || c.resume_a != 0 || c.resume_b != 0 || c.high_at != 0;
        if pinned && (c.high < c.since || c.high_at < c.since_at) || !pinned && positioned {
            return Err(Error::InvalidCursor);
        }
        Ok(c)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.to_bytes() {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.len() != CURSOR_LEN * 2 || !s.is_ascii() {
            return Err(Error::InvalidCursor);
        }
        let mut b = [0u8; CURSOR_LEN];
        for (i, out) in b.iter_mut().enumerate() {
            *out =
                u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| Error::InvalidCursor)?;
        }
        Self::from_bytes(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            version: CURSOR_VERSION,
            phase: 1,
            since: 1,
            since_at: 6,
            high: 2,
            high_at: 7,
            resume_a: 3,
            resume_b: 4,
        };
        let b = c.to_bytes();
        assert_eq!(b[0], CURSOR_VERSION);
        assert_eq!(b[CURSOR_PHASE], 1);
        assert_eq!(b[CURSOR_SINCE_AT + 7], 6);
        assert_eq!(b[CURSOR_HIGH + 7], 2);
        assert_eq!(b[CURSOR_RESUME_B + 7], 4);
        assert_eq!(Cursor::from_bytes(&b).ok(), Some(c));
        assert_eq!(c.to_string().parse::<Cursor>().ok(), Some(c));
        assert!(Cursor::from_bytes(&b[..CURSOR_LEN - 1]).is_err());
        let unpinned_with_position = Cursor {
            high: 0,
            high_at: 0,
            ..c
        };
        assert!(Cursor::from_bytes(&unpinned_with_position.to_bytes()).is_err());
        assert!("zz".repeat(CURSOR_LEN).parse::<Cursor>().is_err());
        assert!("é".repeat(CURSOR_LEN).parse::<Cursor>().is_err());
        let backwards = Cursor { since: 9, ..c };
        assert!(Cursor::from_bytes(&backwards.to_bytes()).is_err());
        // A format-3 cursor still decodes (and round-trips), as legacy.
        let old = Cursor {
            version: LEGACY_CURSOR_VERSION,
            ..c
        };
        let decoded = Cursor::from_bytes(&old.to_bytes()).unwrap();
        assert!(decoded.legacy() && !c.legacy());
        assert_eq!(decoded.to_bytes(), old.to_bytes());
        let mut future = b;
        future[0] = CURSOR_VERSION + 1;
        assert!(Cursor::from_bytes(&future).is_err());
    }
}
