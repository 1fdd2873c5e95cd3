//! Key encodings.
//!
//! Every key is a concatenation of fixed-width big-endian `u64`s, so that
//! RocksDB's bytewise order is the numeric order: all records of one
//! conversation are adjacent, and inside it they sort by user or message id.
//! The layouts are drawn in `docs/design.md`; the constants below are the
//! same offsets, and a golden test keeps the two in step.
//!
//! ```text
//! pair key (marks, members, messages, deletions, user index)
//! <------- 8 bytes -------><------- 8 bytes ------->
//! | outer id (u64 BE)     | inner id (u64 BE)      |
//! ```

use byteorder::{BigEndian, ByteOrder};

use crate::ids::{ConversationId, MessageId, UserId};

/// Width of one id on disk.
pub(crate) const ID_LEN: usize = 8;
/// Offset of the outer id (conversation, or user in the user index).
pub(crate) const OUTER_OFFSET: usize = 0;
/// Offset of the inner id (user, message, or conversation in the user index).
pub(crate) const INNER_OFFSET: usize = OUTER_OFFSET + ID_LEN;
/// Length of a pair key.
pub(crate) const PAIR_KEY_LEN: usize = INNER_OFFSET + ID_LEN;

/// An 8-byte big-endian id.
pub(crate) fn id_key(id: u64) -> [u8; ID_LEN] {
    id.to_be_bytes()
}

/// A 16-byte `(outer, inner)` key.
pub(crate) fn pair_key(outer: u64, inner: u64) -> [u8; PAIR_KEY_LEN] {
    let mut k = [0u8; PAIR_KEY_LEN];
    BigEndian::write_u64(&mut k[OUTER_OFFSET..INNER_OFFSET], outer);
    BigEndian::write_u64(&mut k[INNER_OFFSET..PAIR_KEY_LEN], inner);
    k
}

/// Splits a pair key, or `None` if it is not exactly [`PAIR_KEY_LEN`] bytes.
pub(crate) fn decode_pair_key(key: &[u8]) -> Option<(u64, u64)> {
    if key.len() != PAIR_KEY_LEN {
        return None;
    }
    Some((
        BigEndian::read_u64(&key[OUTER_OFFSET..INNER_OFFSET]),
        BigEndian::read_u64(&key[INNER_OFFSET..PAIR_KEY_LEN]),
    ))
}

/// The key of `user`'s read mark in `conversation` (`marks` column family),
/// also the key of the membership record (`members`).
pub(crate) fn member_key(conversation: ConversationId, user: UserId) -> [u8; PAIR_KEY_LEN] {
    pair_key(conversation.0, user.0)
}

/// The key of a message record (`messages`) or a deletion (`deletions`).
pub(crate) fn message_key(conversation: ConversationId, message: MessageId) -> [u8; PAIR_KEY_LEN] {
    pair_key(conversation.0, message.0)
}

/// The key of the second membership index (`user_conversations`).
pub(crate) fn user_index_key(user: UserId, conversation: ConversationId) -> [u8; PAIR_KEY_LEN] {
    pair_key(user.0, conversation.0)
}

/// Iteration bounds `[lower, upper)` covering every pair key whose outer id
/// is `outer` and whose inner id is at least `from`. `upper` is `None` when
/// `outer == u64::MAX` (nothing sorts after it).
pub(crate) fn prefix_range(outer: u64, from: u64) -> (Vec<u8>, Option<Vec<u8>>) {
    let lower = pair_key(outer, from).to_vec();
    let upper = outer.checked_add(1).map(|o| pair_key(o, 0).to_vec());
    (lower, upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_pair_key_layout() {
        let k = member_key(
            ConversationId(0x0102_0304_0506_0708),
            UserId(0x1112_1314_1516_1718),
        );
        assert_eq!(
            k,
            [
                1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18
            ]
        );
        assert_eq!(
            decode_pair_key(&k),
            Some((0x0102_0304_0506_0708, 0x1112_1314_1516_1718))
        );
        assert_eq!(decode_pair_key(&k[..15]), None);
    }

    #[test]
    fn golden_conversation_key() {
        assert_eq!(id_key(0x0102_0304_0506_0708), [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn byte_order_is_numeric_order() {
        let pairs = [
            (0u64, 0u64),
            (0, 1),
            (0, 256),
            (1, 0),
            (255, u64::MAX),
            (256, 0),
        ];
        for w in pairs.windows(2) {
            assert!(pair_key(w[0].0, w[0].1) < pair_key(w[1].0, w[1].1));
        }
    }

    #[test]
    fn prefix_range_edges() {
        let (lo, hi) = prefix_range(u64::MAX, 0);
        assert_eq!(lo, pair_key(u64::MAX, 0));
        assert!(hi.is_none());
        let (_, hi) = prefix_range(5, 3);
        assert_eq!(hi, Some(pair_key(6, 0).to_vec()));
    }
}
