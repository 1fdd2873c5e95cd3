//! Journal payloads: what one frame records.
//!
//! ```text
//! 0        1                 9                 17
//! | kind=1 | conversation BE | user BE         | mark operand (see mark.rs) |
//! ```
//! The operand is exactly what the combiner will merge into RocksDB, so
//! replay is the same idempotent merge as a flush.

use byteorder::{BigEndian, ByteOrder};

use crate::pure::mark::MarkState;

/// Payload kind: a mark operand for (conversation, user).
pub(crate) const KIND_MARK: u8 = 1;
pub(crate) const RECORD_KIND: usize = 0;
pub(crate) const RECORD_CONVERSATION: usize = 1;
pub(crate) const RECORD_USER: usize = 9;
pub(crate) const RECORD_OPERAND: usize = 17;

/// One journaled update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MarkRecord {
    pub(crate) conversation: u64,
    pub(crate) user: u64,
    pub(crate) state: MarkState,
}

impl MarkRecord {
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_OPERAND + self.state.encoded_len());
        out.push(KIND_MARK);
        out.extend_from_slice(&self.conversation.to_be_bytes());
        out.extend_from_slice(&self.user.to_be_bytes());
        self.state.encode_into(&mut out);
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < RECORD_OPERAND || b[RECORD_KIND] != KIND_MARK {
            return None;
        }
        Some(Self {
            conversation: BigEndian::read_u64(&b[RECORD_CONVERSATION..RECORD_USER]),
            user: BigEndian::read_u64(&b[RECORD_USER..RECORD_OPERAND]),
            state: MarkState::decode(&b[RECORD_OPERAND..])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MessageId, Timestamp};

    #[test]
    fn golden_mark_record() {
        let r = MarkRecord {
            conversation: 2,
            user: 3,
            state: MarkState::from_mark(MessageId(4), Timestamp(5)),
        };
        let b = r.encode();
        assert_eq!(b.len(), RECORD_OPERAND + 18);
        assert_eq!(b[RECORD_KIND], KIND_MARK);
        assert_eq!(&b[RECORD_CONVERSATION..RECORD_USER], &2u64.to_be_bytes());
        assert_eq!(&b[RECORD_USER..RECORD_OPERAND], &3u64.to_be_bytes());
        assert_eq!(MarkRecord::decode(&b), Some(r));
        assert_eq!(MarkRecord::decode(&b[..20]), None);
    }
}
