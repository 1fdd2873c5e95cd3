//! The cluster's catch-up cursor: one store cursor per partition, with
//! the partition's run and where its snapshot stands, as opaque text.
//!
//! ```text
//! "rmc1." base64url( partitions: u32 BE | part × partitions )
//! part:  0            8                  58      59          83
//!        | incarnation | store cursor (50) | flags | resume (24, if flag 2) |
//! ```
//!
//! Flag 1: changes remain (`more`); flag 2: a snapshot in pages, resuming
//! after (conversation, thread, reader). The decoder is total: any text
//! is a cursor of this partition count or an error, never a panic.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use readmark::{CURSOR_LEN, Cursor};

use crate::error::{Error, Result};
use crate::op::StateKey;

const PREFIX: &str = "rmc1.";
pub(crate) const PART_INCARNATION: usize = 0;
pub(crate) const PART_CURSOR: usize = 8;
pub(crate) const PART_FLAGS: usize = PART_CURSOR + CURSOR_LEN;
pub(crate) const PART_RESUME: usize = PART_FLAGS + 1;
const FLAG_MORE: u8 = 1;
const FLAG_RESUME: u8 = 2;
/// Partitions a cursor may name at most (bounds the text a client may
/// send: 4,096 partitions of 83 bytes, 454 KiB as text).
pub const MAX_PARTITIONS: u32 = 4_096;

/// One partition's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub(crate) incarnation: u64,
    /// The store's cursor, as text.
    pub(crate) cursor: String,
    /// A snapshot in pages: where the next one starts.
    pub(crate) resume: Option<StateKey>,
    /// Changes remain.
    pub(crate) more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClusterCursor {
    pub(crate) parts: Vec<Part>,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::Decode {
        what: "cursor",
        reason: reason.into(),
    }
}

impl ClusterCursor {
    pub(crate) fn encode(&self) -> String {
        let mut b = Vec::with_capacity(4 + self.parts.len() * (PART_RESUME + 24));
        let n = u32::try_from(self.parts.len()).unwrap_or(u32::MAX);
        b.extend_from_slice(&n.to_be_bytes());
        for p in &self.parts {
            b.extend_from_slice(&p.incarnation.to_be_bytes());
            // A part's cursor is always one a store gave.
            let c = p.cursor.parse::<Cursor>().unwrap_or_default();
            b.extend_from_slice(&c.to_bytes());
            let flags = if p.more { FLAG_MORE } else { 0 }
                | if p.resume.is_some() { FLAG_RESUME } else { 0 };
            b.push(flags);
            if let Some((c, t, r)) = p.resume {
                for x in [c, t, r] {
                    b.extend_from_slice(&x.to_be_bytes());
                }
            }
        }
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(b))
    }

    /// Decodes `text`, a cursor of a cluster of `partitions` partitions.
    pub(crate) fn decode(text: &str, partitions: u32) -> Result<ClusterCursor> {
        let Some(body) = text.strip_prefix(PREFIX) else {
            return Err(bad("not a cluster cursor"));
        };
        // The longest a cursor of this many partitions can be.
        let longest =
            (4 + partitions.min(MAX_PARTITIONS) as usize * (PART_RESUME + 24)) * 4 / 3 + 4;
        if body.len() > longest {
            return Err(bad("too long"));
        }
        let b = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| bad(e.to_string()))?;
        let (n, mut rest) = b.split_at_checked(4).ok_or_else(|| bad("truncated"))?;
        let n = u32::from_be_bytes(n.try_into().map_err(|_| bad("truncated"))?);
        if n != partitions {
            return Err(bad(format!(
                "a cursor of {n} partitions, the cluster has {partitions}"
            )));
        }
        let mut parts = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let head = rest.get(..PART_RESUME).ok_or_else(|| bad("truncated"))?;
            let incarnation = u64_at(head, PART_INCARNATION)?;
            let cursor = Cursor::from_bytes(&head[PART_CURSOR..PART_FLAGS])
                .map_err(|e| bad(e.to_string()))?;
            let flags = head[PART_FLAGS];
            if flags & !(FLAG_MORE | FLAG_RESUME) != 0 {
                return Err(bad("unknown flags"));
            }
            rest = &rest[PART_RESUME..];
            let resume = if flags & FLAG_RESUME != 0 {
                let r = rest.get(..24).ok_or_else(|| bad("truncated"))?;
                rest = &rest[24..];
                Some((u64_at(r, 0)?, u64_at(r, 8)?, u64_at(r, 16)?))
            } else {
                None
            };
            parts.push(Part {
                incarnation,
                cursor: cursor.to_string(),
                resume,
                more: flags & FLAG_MORE != 0,
            });
        }
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(ClusterCursor { parts })
    }
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| bad("truncated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn part() -> impl Strategy<Value = Part> {
        (
            any::<u64>(),
            any::<Option<(u64, u64, u64)>>(),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(|(incarnation, resume, more, _)| Part {
                incarnation,
                cursor: Cursor::default().to_string(),
                resume,
                more,
            })
    }

    proptest! {
        #[test]
        fn cursors_round_trip(parts in proptest::collection::vec(part(), 1..20)) {
            let c = ClusterCursor { parts };
            let n = u32::try_from(c.parts.len()).unwrap();
            prop_assert_eq!(ClusterCursor::decode(&c.encode(), n).unwrap(), c.clone());
            prop_assert!(ClusterCursor::decode(&c.encode(), n + 1).is_err());
        }

        /// The decoder is total: any text, and any change to a good
        /// cursor, is a cursor or an error.
        #[test]
        fn any_text_decodes_or_is_refused(text in ".{0,200}", cut in 0usize..400, flip in any::<u8>()) {
            let _ = ClusterCursor::decode(&text, 3);
            let _ = ClusterCursor::decode(&format!("{PREFIX}{text}"), 3);
            let good = ClusterCursor { parts: vec![Part {
                incarnation: 1, cursor: Cursor::default().to_string(), resume: Some((1, 2, 3)), more: true,
            }; 3] }.encode();
            let mut bytes = good.into_bytes();
            let i = cut % bytes.len();
            bytes[i] ^= flip;
            if let Ok(t) = String::from_utf8(bytes.clone()) {
                let _ = ClusterCursor::decode(&t, 3);
            }
            bytes.truncate(i);
            if let Ok(t) = String::from_utf8(bytes) {
                let _ = ClusterCursor::decode(&t, 3);
            }
        }
    }
}
