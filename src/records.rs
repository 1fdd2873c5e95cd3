//! Value encodings of the non-merge records: conversations, members and
//! messages. Fixed layouts, big-endian, a version byte first; the diagrams
//! in `docs/design.md` use the offsets defined here.

use byteorder::{BigEndian, ByteOrder};

use crate::ids::{MessageId, Timestamp, UserId};

/// Version byte of every record in this module.
pub(crate) const RECORD_VERSION: u8 = 1;

fn put(buf: &mut [u8], at: usize, v: u64) {
    BigEndian::write_u64(&mut buf[at..at + 8], v);
}

fn get(buf: &[u8], at: usize) -> u64 {
    BigEndian::read_u64(&buf[at..at + 8])
}

/// `conversations` value.
///
/// ```text
/// 0     1        2                10                 18                26                34
/// | ver | flags  | member_count   | message_count   | last_message    | deleted_count   |
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConversationRecord {
    pub(crate) member_count: u64,
    /// Messages ever recorded; also the ordinal of the newest one.
    pub(crate) message_count: u64,
    /// Newest recorded message, meaningful iff `message_count > 0`.
    pub(crate) last_message: u64,
    /// Messages deleted so far (each also has a `deletions` key).
    pub(crate) deleted_count: u64,
}

pub(crate) const CONV_MEMBER_COUNT: usize = 2;
pub(crate) const CONV_MESSAGE_COUNT: usize = 10;
pub(crate) const CONV_LAST_MESSAGE: usize = 18;
pub(crate) const CONV_DELETED_COUNT: usize = 26;
pub(crate) const CONV_LEN: usize = 34;

impl ConversationRecord {
    pub(crate) fn last_message(&self) -> Option<MessageId> {
        (self.message_count > 0).then_some(MessageId(self.last_message))
    }

    pub(crate) fn encode(&self) -> [u8; CONV_LEN] {
        let mut b = [0u8; CONV_LEN];
        b[0] = RECORD_VERSION;
        put(&mut b, CONV_MEMBER_COUNT, self.member_count);
        put(&mut b, CONV_MESSAGE_COUNT, self.message_count);
        put(&mut b, CONV_LAST_MESSAGE, self.last_message);
        put(&mut b, CONV_DELETED_COUNT, self.deleted_count);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != CONV_LEN || b[0] != RECORD_VERSION || b[1] != 0 {
            return None;
        }
        let r = Self {
            member_count: get(b, CONV_MEMBER_COUNT),
            message_count: get(b, CONV_MESSAGE_COUNT),
            last_message: get(b, CONV_LAST_MESSAGE),
            deleted_count: get(b, CONV_DELETED_COUNT),
        };
        // Counts far beyond anything reachable are damage, and would
        // overflow when incremented.
        let sane = r.member_count < 1 << 62 && r.message_count < 1 << 62;
        (sane && r.deleted_count <= r.message_count).then_some(r)
    }
}

/// `members` value.
///
/// ```text
/// 0     1        2                   10               18
/// | ver | flags  | joined_after      | joined_at      |
///         bit0: joined_after present
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemberRecord {
    /// Newest message when the member joined: unread counting starts after it.
    pub(crate) joined_after: Option<MessageId>,
    pub(crate) joined_at: Timestamp,
}

pub(crate) const MEMBER_FLAG_JOINED_AFTER: u8 = 0x01;
pub(crate) const MEMBER_JOINED_AFTER: usize = 2;
pub(crate) const MEMBER_JOINED_AT: usize = 10;
pub(crate) const MEMBER_LEN: usize = 18;

impl MemberRecord {
    pub(crate) fn encode(&self) -> [u8; MEMBER_LEN] {
        let mut b = [0u8; MEMBER_LEN];
        b[0] = RECORD_VERSION;
        if let Some(m) = self.joined_after {
            b[1] = MEMBER_FLAG_JOINED_AFTER;
            put(&mut b, MEMBER_JOINED_AFTER, m.0);
        }
        put(&mut b, MEMBER_JOINED_AT, self.joined_at.0);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != MEMBER_LEN || b[0] != RECORD_VERSION || b[1] & !MEMBER_FLAG_JOINED_AFTER != 0
        {
            return None;
        }
        let has_joined_after = b[1] & MEMBER_FLAG_JOINED_AFTER != 0;
        // Canonical form only: an absent field is all zeros.
        if !has_joined_after && get(b, MEMBER_JOINED_AFTER) != 0 {
            return None;
        }
        let joined_after = has_joined_after.then(|| MessageId(get(b, MEMBER_JOINED_AFTER)));
        Some(Self {
            joined_after,
            joined_at: Timestamp(get(b, MEMBER_JOINED_AT)),
        })
    }
}

/// `messages` value.
///
/// ```text
/// 0     1        2                10               18               26
/// | ver | flags  | ordinal        | sender         | sent_at        |
///         bit0: deleted
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MessageRecord {
    /// 1-based position among all messages ever recorded in the conversation.
    pub(crate) ordinal: u64,
    pub(crate) sender: UserId,
    pub(crate) sent_at: Timestamp,
    pub(crate) deleted: bool,
}

pub(crate) const MESSAGE_FLAG_DELETED: u8 = 0x01;
pub(crate) const MESSAGE_ORDINAL: usize = 2;
pub(crate) const MESSAGE_SENDER: usize = 10;
pub(crate) const MESSAGE_SENT_AT: usize = 18;
pub(crate) const MESSAGE_LEN: usize = 26;

impl MessageRecord {
    pub(crate) fn encode(&self) -> [u8; MESSAGE_LEN] {
        let mut b = [0u8; MESSAGE_LEN];
        b[0] = RECORD_VERSION;
        if self.deleted {
            b[1] = MESSAGE_FLAG_DELETED;
        }
        put(&mut b, MESSAGE_ORDINAL, self.ordinal);
        put(&mut b, MESSAGE_SENDER, self.sender.0);
        put(&mut b, MESSAGE_SENT_AT, self.sent_at.0);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != MESSAGE_LEN || b[0] != RECORD_VERSION || b[1] & !MESSAGE_FLAG_DELETED != 0 {
            return None;
        }
        let ordinal = get(b, MESSAGE_ORDINAL);
        (ordinal > 0).then(|| Self {
            ordinal,
            sender: UserId(get(b, MESSAGE_SENDER)),
            sent_at: Timestamp(get(b, MESSAGE_SENT_AT)),
            deleted: b[1] & MESSAGE_FLAG_DELETED != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_conversation() {
        let r = ConversationRecord {
            member_count: 2,
            message_count: 3,
            last_message: 4,
            deleted_count: 1,
        };
        let b = r.encode();
        assert_eq!(b[0], 1);
        assert_eq!(b[CONV_MEMBER_COUNT + 7], 2);
        assert_eq!(b[CONV_MESSAGE_COUNT + 7], 3);
        assert_eq!(b[CONV_LAST_MESSAGE + 7], 4);
        assert_eq!(b[CONV_DELETED_COUNT + 7], 1);
        assert_eq!(ConversationRecord::decode(&b), Some(r));
        assert_eq!(ConversationRecord::decode(&b[..CONV_LEN - 1]), None);
    }

    #[test]
    fn golden_member() {
        let r = MemberRecord {
            joined_after: Some(MessageId(9)),
            joined_at: Timestamp(5),
        };
        let b = r.encode();
        assert_eq!(b[1], MEMBER_FLAG_JOINED_AFTER);
        assert_eq!(b[MEMBER_JOINED_AFTER + 7], 9);
        assert_eq!(b[MEMBER_JOINED_AT + 7], 5);
        assert_eq!(MemberRecord::decode(&b), Some(r));
        let none = MemberRecord {
            joined_after: None,
            joined_at: Timestamp(0),
        };
        assert_eq!(MemberRecord::decode(&none.encode()), Some(none));
    }

    #[test]
    fn golden_message() {
        let r = MessageRecord {
            ordinal: 1,
            sender: UserId(2),
            sent_at: Timestamp(3),
            deleted: true,
        };
        let b = r.encode();
        assert_eq!(b[1], MESSAGE_FLAG_DELETED);
        assert_eq!(b[MESSAGE_ORDINAL + 7], 1);
        assert_eq!(b[MESSAGE_SENDER + 7], 2);
        assert_eq!(b[MESSAGE_SENT_AT + 7], 3);
        assert_eq!(MessageRecord::decode(&b), Some(r));
        let mut bad = b;
        bad[1] = 0x80;
        assert_eq!(MessageRecord::decode(&bad), None);
    }
}
