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
/// 0     1        2                10                 18                26                34              38               42           43
/// | ver | flags  | member_count   | message_count   | last_message    | deleted_count   | threshold u32 | event_window u32 | recipients |
///
/// 43           51                59            67
/// | newest_any | thread_parent   | thread_root |        (format 6)
///
///         bit0: per-message receipts on
///         bit1: threshold override present (else the field is 0)
///         bit2: event window override present, in ms (else 0; format 5)
///         bit3: recipient policy override present (else 0; format 5):
///               0 members, 1 authors, 2 nobody
///         bit4: a thread timeline's record: parent and root present
///               (else both 0; format 6)
///         bit5: newest_any present (else 0; format 6)
/// ```
///
/// `last_message` is the newest message of this timeline; `newest_any` the
/// newest of the conversation's main timeline and threads together (message
/// ids increase across both, §13). Records of formats 2 to 4 are 38 bytes
/// (no event fields), of format 5 43 bytes (no thread fields); both still
/// decode, with `newest_any` the last message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConversationRecord {
    pub(crate) member_count: u64,
    /// Messages ever recorded; also the ordinal of the newest one.
    pub(crate) message_count: u64,
    /// Newest recorded message, meaningful iff `message_count > 0`.
    pub(crate) last_message: u64,
    /// Messages excluded from unread counts: deleted, or of an uncounted
    /// kind (each has a `deletions` key).
    pub(crate) deleted_count: u64,
    /// Per-message receipts are kept for messages recorded now (the
    /// conversation was small at its last membership or threshold change).
    pub(crate) per_message: bool,
    /// This conversation's own receipt threshold, if set.
    pub(crate) threshold: Option<u32>,
    /// This conversation's own event window (ms), if set.
    pub(crate) event_window_ms: Option<u32>,
    /// This conversation's own recipient policy, if set
    /// (`CONV_RECIPIENTS_*`).
    pub(crate) event_recipients: Option<u8>,
    /// The newest message of any timeline of the conversation (main or a
    /// thread), if any: new messages must be newer.
    pub(crate) newest_any: Option<u64>,
    /// For a thread timeline: its conversation and root.
    pub(crate) thread: Option<(u64, u64)>,
}

pub(crate) const CONV_MEMBER_COUNT: usize = 2;
pub(crate) const CONV_MESSAGE_COUNT: usize = 10;
pub(crate) const CONV_LAST_MESSAGE: usize = 18;
pub(crate) const CONV_DELETED_COUNT: usize = 26;
pub(crate) const CONV_THRESHOLD: usize = 34;
pub(crate) const CONV_EVENT_WINDOW: usize = 38;
pub(crate) const CONV_RECIPIENTS: usize = 42;
pub(crate) const CONV_NEWEST_ANY: usize = 43;
pub(crate) const CONV_THREAD_PARENT: usize = 51;
pub(crate) const CONV_THREAD_ROOT: usize = 59;
/// Length of a format-2-to-4 record.
pub(crate) const CONV_LEN_V4: usize = 38;
/// Length of a format-5 record.
pub(crate) const CONV_LEN_V5: usize = 43;
pub(crate) const CONV_LEN: usize = 67;
pub(crate) const CONV_FLAG_PER_MESSAGE: u8 = 0x01;
pub(crate) const CONV_FLAG_THRESHOLD: u8 = 0x02;
pub(crate) const CONV_FLAG_EVENT_WINDOW: u8 = 0x04;
pub(crate) const CONV_FLAG_RECIPIENTS: u8 = 0x08;
pub(crate) const CONV_FLAG_THREAD: u8 = 0x10;
pub(crate) const CONV_FLAG_NEWEST_ANY: u8 = 0x20;
pub(crate) const CONV_RECIPIENTS_MEMBERS: u8 = 0;
pub(crate) const CONV_RECIPIENTS_AUTHORS: u8 = 1;
pub(crate) const CONV_RECIPIENTS_NOBODY: u8 = 2;

impl ConversationRecord {
    pub(crate) fn last_message(&self) -> Option<MessageId> {
        (self.message_count > 0).then_some(MessageId(self.last_message))
    }

    /// What a thread's record stores: what it shares with its
    /// conversation (members, receipt mode, policies) is read from there,
    /// so its own copy is left empty rather than left stale.
    fn stored(&self) -> Self {
        match self.thread {
            None => *self,
            Some(_) => Self {
                member_count: 0,
                per_message: false,
                threshold: None,
                event_window_ms: None,
                event_recipients: None,
                ..*self
            },
        }
    }

    /// A thread's record with what it shares taken from its
    /// conversation's (`parent`): the inverse of `stored`.
    pub(crate) fn under(self, parent: &Self) -> Self {
        Self {
            member_count: parent.member_count,
            per_message: parent.per_message,
            threshold: parent.threshold,
            event_window_ms: parent.event_window_ms,
            event_recipients: parent.event_recipients,
            ..self
        }
    }

    pub(crate) fn encode(&self) -> [u8; CONV_LEN] {
        let r = self.stored();
        let mut b = [0u8; CONV_LEN];
        b[0] = RECORD_VERSION;
        put(&mut b, CONV_MEMBER_COUNT, r.member_count);
        put(&mut b, CONV_MESSAGE_COUNT, r.message_count);
        put(&mut b, CONV_LAST_MESSAGE, r.last_message);
        put(&mut b, CONV_DELETED_COUNT, r.deleted_count);
        if r.per_message {
            b[1] |= CONV_FLAG_PER_MESSAGE;
        }
        if let Some(t) = r.threshold {
            b[1] |= CONV_FLAG_THRESHOLD;
            BigEndian::write_u32(&mut b[CONV_THRESHOLD..CONV_EVENT_WINDOW], t);
        }
        if let Some(w) = r.event_window_ms {
            b[1] |= CONV_FLAG_EVENT_WINDOW;
            BigEndian::write_u32(&mut b[CONV_EVENT_WINDOW..CONV_RECIPIENTS], w);
        }
        if let Some(r) = r.event_recipients {
            b[1] |= CONV_FLAG_RECIPIENTS;
            b[CONV_RECIPIENTS] = r;
        }
        if let Some(n) = r.newest_any {
            b[1] |= CONV_FLAG_NEWEST_ANY;
            put(&mut b, CONV_NEWEST_ANY, n);
        }
        if let Some((parent, root)) = r.thread {
            b[1] |= CONV_FLAG_THREAD;
            put(&mut b, CONV_THREAD_PARENT, parent);
            put(&mut b, CONV_THREAD_ROOT, root);
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let known = CONV_FLAG_PER_MESSAGE
            | CONV_FLAG_THRESHOLD
            | CONV_FLAG_EVENT_WINDOW
            | CONV_FLAG_RECIPIENTS
            | CONV_FLAG_THREAD
            | CONV_FLAG_NEWEST_ANY;
        if !(b.len() == CONV_LEN || b.len() == CONV_LEN_V5 || b.len() == CONV_LEN_V4)
            || b[0] != RECORD_VERSION
            || b[1] & !known != 0
        {
            return None;
        }
        let threshold = BigEndian::read_u32(&b[CONV_THRESHOLD..CONV_EVENT_WINDOW]);
        let has_threshold = b[1] & CONV_FLAG_THRESHOLD != 0;
        if !has_threshold && threshold != 0 {
            return None;
        }
        // The event fields: absent from a format-4 record.
        let (window, recipients) = if b.len() >= CONV_LEN_V5 {
            (
                BigEndian::read_u32(&b[CONV_EVENT_WINDOW..CONV_RECIPIENTS]),
                b[CONV_RECIPIENTS],
            )
        } else if b[1] & (CONV_FLAG_EVENT_WINDOW | CONV_FLAG_RECIPIENTS) != 0 {
            return None;
        } else {
            (0, 0)
        };
        let has_window = b[1] & CONV_FLAG_EVENT_WINDOW != 0;
        let has_recipients = b[1] & CONV_FLAG_RECIPIENTS != 0;
        if (!has_window && window != 0)
            || (!has_recipients && recipients != 0)
            || recipients > CONV_RECIPIENTS_NOBODY
        {
            return None;
        }
        let message_count = get(b, CONV_MESSAGE_COUNT);
        let last_message = get(b, CONV_LAST_MESSAGE);
        // The thread fields: absent before format 6, where the newest
        // message of any timeline is the last one (there were no threads).
        let (newest_any, thread) = if b.len() == CONV_LEN {
            let (n, parent, root) = (
                get(b, CONV_NEWEST_ANY),
                get(b, CONV_THREAD_PARENT),
                get(b, CONV_THREAD_ROOT),
            );
            let has_newest = b[1] & CONV_FLAG_NEWEST_ANY != 0;
            let has_thread = b[1] & CONV_FLAG_THREAD != 0;
            if (!has_newest && n != 0) || (!has_thread && (parent | root) != 0) {
                return None;
            }
            (
                has_newest.then_some(n),
                has_thread.then_some((parent, root)),
            )
        } else if b[1] & (CONV_FLAG_THREAD | CONV_FLAG_NEWEST_ANY) != 0 {
            return None;
        } else {
            ((message_count > 0).then_some(last_message), None)
        };
        // A thread's record stores nothing of what it shares with its
        // conversation (`stored`): anything there is damage.
        let shared = CONV_FLAG_PER_MESSAGE
            | CONV_FLAG_THRESHOLD
            | CONV_FLAG_EVENT_WINDOW
            | CONV_FLAG_RECIPIENTS;
        if thread.is_some() && (get(b, CONV_MEMBER_COUNT) != 0 || b[1] & shared != 0) {
            return None;
        }
        let r = Self {
            member_count: get(b, CONV_MEMBER_COUNT),
            message_count,
            last_message,
            deleted_count: get(b, CONV_DELETED_COUNT),
            per_message: b[1] & CONV_FLAG_PER_MESSAGE != 0,
            threshold: has_threshold.then_some(threshold),
            event_window_ms: has_window.then_some(window),
            event_recipients: has_recipients.then_some(recipients),
            newest_any,
            thread,
        };
        // Counts far beyond anything reachable are damage, and would
        // overflow when incremented; a timeline's last message is never
        // newer than the conversation's newest.
        let sane = r.member_count < 1 << 62
            && r.message_count < 1 << 62
            && r.last_message()
                .is_none_or(|l| r.newest_any.is_some_and(|n| l.0 <= n));
        (sane && r.deleted_count <= r.message_count).then_some(r)
    }
}

/// `members` value.
///
/// ```text
/// 0     1        2                   10               18         20           28
/// | ver | flags  | joined_after      | joined_at      | slot u16 | joined_seq |
///         bit0: joined_after present
///         bit1: slot present (else the field is 0)
///         bit2: receipts private in this conversation
///         bit3: receipts private everywhere (copied from the user's setting)
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemberRecord {
    /// Newest message when the member joined: unread counting starts after it.
    pub(crate) joined_after: Option<MessageId>,
    pub(crate) joined_at: Timestamp,
    /// Bit position in the per-message bitsets; assigned while the
    /// conversation keeps per-message receipts.
    pub(crate) slot: Option<u16>,
    /// The member keeps their receipts private in this conversation.
    pub(crate) private_here: bool,
    /// The member keeps their receipts private everywhere: a copy of their
    /// user setting, so queries decide from the record they already read.
    pub(crate) private_all: bool,
    /// The newest change-log sequence when they joined: older changes are
    /// none of their business (0 for memberships from format 2).
    pub(crate) joined_seq: u64,
}

impl MemberRecord {
    /// The newest message this member has seen, given their mark: the mark,
    /// or the newest message when they joined, whichever is later (`None`
    /// orders first, so `Option::max` is exactly that).
    pub(crate) fn read_position(&self, mark: Option<MessageId>) -> Option<MessageId> {
        mark.max(self.joined_after)
    }

    /// Whether anyone else may see this member's reads.
    pub(crate) fn is_private(&self) -> bool {
        self.private_here || self.private_all
    }
}

pub(crate) const MEMBER_FLAG_JOINED_AFTER: u8 = 0x01;
pub(crate) const MEMBER_FLAG_SLOT: u8 = 0x02;
pub(crate) const MEMBER_FLAG_PRIVATE_HERE: u8 = 0x04;
pub(crate) const MEMBER_FLAG_PRIVATE_ALL: u8 = 0x08;
pub(crate) const MEMBER_JOINED_AFTER: usize = 2;
pub(crate) const MEMBER_JOINED_AT: usize = 10;
pub(crate) const MEMBER_SLOT: usize = 18;
pub(crate) const MEMBER_JOINED_SEQ: usize = 20;
pub(crate) const MEMBER_LEN: usize = 28;
/// Length of the record format 2 wrote (no `joined_seq`); still read.
pub(crate) const MEMBER_LEN_V2: usize = 20;

impl MemberRecord {
    pub(crate) fn encode(&self) -> [u8; MEMBER_LEN] {
        let mut b = [0u8; MEMBER_LEN];
        b[0] = RECORD_VERSION;
        if let Some(m) = self.joined_after {
            b[1] = MEMBER_FLAG_JOINED_AFTER;
            put(&mut b, MEMBER_JOINED_AFTER, m.0);
        }
        put(&mut b, MEMBER_JOINED_AT, self.joined_at.0);
        if let Some(s) = self.slot {
            b[1] |= MEMBER_FLAG_SLOT;
            BigEndian::write_u16(&mut b[MEMBER_SLOT..MEMBER_JOINED_SEQ], s);
        }
        if self.private_here {
            b[1] |= MEMBER_FLAG_PRIVATE_HERE;
        }
        if self.private_all {
            b[1] |= MEMBER_FLAG_PRIVATE_ALL;
        }
        put(&mut b, MEMBER_JOINED_SEQ, self.joined_seq);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let known = MEMBER_FLAG_JOINED_AFTER
            | MEMBER_FLAG_SLOT
            | MEMBER_FLAG_PRIVATE_HERE
            | MEMBER_FLAG_PRIVATE_ALL;
        let len_ok = b.len() == MEMBER_LEN || b.len() == MEMBER_LEN_V2;
        if !len_ok || b[0] != RECORD_VERSION || b[1] & !known != 0 {
            return None;
        }
        let has_joined_after = b[1] & MEMBER_FLAG_JOINED_AFTER != 0;
        let has_slot = b[1] & MEMBER_FLAG_SLOT != 0;
        let slot = BigEndian::read_u16(&b[MEMBER_SLOT..MEMBER_JOINED_SEQ]);
        // Canonical form only: an absent field is all zeros.
        if !has_joined_after && get(b, MEMBER_JOINED_AFTER) != 0 || !has_slot && slot != 0 {
            return None;
        }
        if has_slot && u32::from(slot) >= crate::pure::bitset::MAX_SLOTS {
            return None;
        }
        let joined_after = has_joined_after.then(|| MessageId(get(b, MEMBER_JOINED_AFTER)));
        Some(Self {
            joined_after,
            joined_at: Timestamp(get(b, MEMBER_JOINED_AT)),
            slot: has_slot.then_some(slot),
            private_here: b[1] & MEMBER_FLAG_PRIVATE_HERE != 0,
            private_all: b[1] & MEMBER_FLAG_PRIVATE_ALL != 0,
            joined_seq: if b.len() == MEMBER_LEN {
                get(b, MEMBER_JOINED_SEQ)
            } else {
                0
            },
        })
    }
}

/// `messages` value.
///
/// ```text
/// 0     1        2                10               18               26
/// | ver | flags  | ordinal        | sender         | sent_at        |
///         bit0: deleted
///         bit1: tracked (recorded with per-message receipts)
///         bit2: uncounted (a kind never counted as unread; format 5)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MessageRecord {
    /// 1-based position among all messages ever recorded in the conversation.
    pub(crate) ordinal: u64,
    pub(crate) sender: UserId,
    pub(crate) sent_at: Timestamp,
    pub(crate) deleted: bool,
    /// Recorded while the conversation kept per-message receipts.
    pub(crate) tracked: bool,
    /// Of a kind that never counts as unread (`MessageKind::System`): in
    /// the `deletions` index from the start, like a deleted message.
    pub(crate) uncounted: bool,
}

pub(crate) const MESSAGE_FLAG_DELETED: u8 = 0x01;
pub(crate) const MESSAGE_FLAG_TRACKED: u8 = 0x02;
pub(crate) const MESSAGE_FLAG_UNCOUNTED: u8 = 0x04;
pub(crate) const MESSAGE_ORDINAL: usize = 2;
pub(crate) const MESSAGE_SENDER: usize = 10;
pub(crate) const MESSAGE_SENT_AT: usize = 18;
pub(crate) const MESSAGE_LEN: usize = 26;

impl MessageRecord {
    pub(crate) fn encode(&self) -> [u8; MESSAGE_LEN] {
        let mut b = [0u8; MESSAGE_LEN];
        b[0] = RECORD_VERSION;
        if self.deleted {
            b[1] |= MESSAGE_FLAG_DELETED;
        }
        if self.tracked {
            b[1] |= MESSAGE_FLAG_TRACKED;
        }
        if self.uncounted {
            b[1] |= MESSAGE_FLAG_UNCOUNTED;
        }
        put(&mut b, MESSAGE_ORDINAL, self.ordinal);
        put(&mut b, MESSAGE_SENDER, self.sender.0);
        put(&mut b, MESSAGE_SENT_AT, self.sent_at.0);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let known = MESSAGE_FLAG_DELETED | MESSAGE_FLAG_TRACKED | MESSAGE_FLAG_UNCOUNTED;
        if b.len() != MESSAGE_LEN || b[0] != RECORD_VERSION || b[1] & !known != 0 {
            return None;
        }
        let ordinal = get(b, MESSAGE_ORDINAL);
        (ordinal > 0).then(|| Self {
            ordinal,
            sender: UserId(get(b, MESSAGE_SENDER)),
            sent_at: Timestamp(get(b, MESSAGE_SENT_AT)),
            deleted: b[1] & MESSAGE_FLAG_DELETED != 0,
            tracked: b[1] & MESSAGE_FLAG_TRACKED != 0,
            uncounted: b[1] & MESSAGE_FLAG_UNCOUNTED != 0,
        })
    }

    /// In the `deletions` index: not counted as unread.
    pub(crate) fn excluded(&self) -> bool {
        self.deleted || self.uncounted
    }
}

/// `users` value: `| ver | flags |`, flags bit 0 = receipts private
/// everywhere; other bits must be 0.
pub(crate) const USER_SETTINGS_LEN: usize = 2;
pub(crate) const USER_FLAG_PRIVATE: u8 = 0x01;

pub(crate) fn encode_user_settings(private: bool) -> [u8; USER_SETTINGS_LEN] {
    [RECORD_VERSION, if private { USER_FLAG_PRIVATE } else { 0 }]
}

/// Whether the user keeps receipts private everywhere.
pub(crate) fn decode_user_settings(v: &[u8]) -> Option<bool> {
    (v.len() == USER_SETTINGS_LEN && v[0] == RECORD_VERSION && v[1] & !USER_FLAG_PRIVATE == 0)
        .then(|| v[1] & USER_FLAG_PRIVATE != 0)
}

/// Value of the two change logs, `changes` (key `conversation | seq`, `id`
/// is the reader) and `user_changes` (key `reader | seq`, `id` is the
/// conversation).
///
/// ```text
/// 0    8            16
/// | id | written_at |
/// ```
///
/// `written_at` (store clock, ms) is what the retention filter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChangeRecord {
    pub(crate) id: u64,
    pub(crate) written_at: u64,
}

pub(crate) const CHANGE_ID: usize = 0;
pub(crate) const CHANGE_WRITTEN_AT: usize = 8;
pub(crate) const CHANGE_LEN: usize = 16;

impl ChangeRecord {
    pub(crate) fn encode(&self) -> [u8; CHANGE_LEN] {
        let mut b = [0u8; CHANGE_LEN];
        BigEndian::write_u64(&mut b[CHANGE_ID..], self.id);
        BigEndian::write_u64(&mut b[CHANGE_WRITTEN_AT..], self.written_at);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        (b.len() == CHANGE_LEN).then(|| Self {
            id: BigEndian::read_u64(&b[CHANGE_ID..]),
            written_at: BigEndian::read_u64(&b[CHANGE_WRITTEN_AT..]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Post-mortem (shrunk by the `decoders` fuzz target in CI): a thread's
    /// record with a member count and the per-message flag decoded, then
    /// encoded without them (a thread stores none of its conversation's
    /// fields): decode now refuses what encode never writes.
    #[test]
    fn regression_a_thread_record_with_shared_fields_is_refused() {
        let mut b = ConversationRecord {
            thread: Some((1, 2)),
            newest_any: Some(5),
            ..ConversationRecord::default()
        }
        .encode();
        assert!(ConversationRecord::decode(&b).is_some());
        b[CONV_MEMBER_COUNT + 7] = 1;
        assert_eq!(ConversationRecord::decode(&b), None);
        b[CONV_MEMBER_COUNT + 7] = 0;
        b[1] |= CONV_FLAG_PER_MESSAGE;
        assert_eq!(ConversationRecord::decode(&b), None);
    }

    #[test]
    fn golden_conversation() {
        let r = ConversationRecord {
            member_count: 2,
            message_count: 3,
            last_message: 4,
            deleted_count: 1,
            per_message: true,
            threshold: Some(0x0102_0304),
            event_window_ms: None,
            event_recipients: None,
            newest_any: Some(4),
            thread: None,
        };
        let b = r.encode();
        assert_eq!(b[0], 1);
        assert_eq!(
            b[1],
            CONV_FLAG_PER_MESSAGE | CONV_FLAG_THRESHOLD | CONV_FLAG_NEWEST_ANY
        );
        assert_eq!(b[CONV_THRESHOLD..CONV_EVENT_WINDOW], [1, 2, 3, 4]);
        assert_eq!(b[CONV_MEMBER_COUNT + 7], 2);
        assert_eq!(b[CONV_MESSAGE_COUNT + 7], 3);
        assert_eq!(b[CONV_LAST_MESSAGE + 7], 4);
        assert_eq!(b[CONV_DELETED_COUNT + 7], 1);
        assert_eq!(ConversationRecord::decode(&b), Some(r));
        assert_eq!(ConversationRecord::decode(&b[..CONV_LEN - 1]), None);
        // Format-4 (38 bytes) and format-5 (43 bytes) records decode
        // without the fields they lack; the newest message of any timeline
        // is their last one.
        let mut old = b;
        old[1] &= !CONV_FLAG_NEWEST_ANY;
        assert_eq!(ConversationRecord::decode(&old[..CONV_LEN_V4]), Some(r));
        assert_eq!(ConversationRecord::decode(&old[..CONV_LEN_V5]), Some(r));
        assert_eq!(ConversationRecord::decode(&b[..CONV_LEN_V5]), None);
        // Event overrides (format 5).
        let e = ConversationRecord {
            event_window_ms: Some(0x0A0B),
            event_recipients: Some(CONV_RECIPIENTS_NOBODY),
            ..r
        };
        let b = e.encode();
        assert_eq!(
            b[1],
            CONV_FLAG_PER_MESSAGE
                | CONV_FLAG_THRESHOLD
                | CONV_FLAG_EVENT_WINDOW
                | CONV_FLAG_RECIPIENTS
                | CONV_FLAG_NEWEST_ANY
        );
        assert_eq!(b[CONV_EVENT_WINDOW..CONV_RECIPIENTS], [0, 0, 0x0A, 0x0B]);
        assert_eq!(b[CONV_RECIPIENTS], 2);
        assert_eq!(ConversationRecord::decode(&b), Some(e));
        // ... which a 38-byte record cannot hold, and an unknown policy.
        assert_eq!(ConversationRecord::decode(&b[..CONV_LEN_V4]), None);
        let mut bad = b;
        bad[CONV_RECIPIENTS] = 3;
        assert_eq!(ConversationRecord::decode(&bad), None);
        // A thread timeline's record (format 6).
        let t = ConversationRecord {
            newest_any: Some(9),
            last_message: 9,
            thread: Some((0x0102, 0x0304)),
            member_count: 0,
            per_message: false,
            threshold: None,
            ..r
        };
        // What a thread shares with its conversation is not stored.
        let overlaid = ConversationRecord {
            member_count: 5,
            per_message: true,
            ..t
        };
        assert_eq!(overlaid.encode(), t.encode());
        let b = t.encode();
        assert_eq!(b[1] & CONV_FLAG_THREAD, CONV_FLAG_THREAD);
        assert_eq!(b[CONV_NEWEST_ANY + 7], 9);
        assert_eq!(b[CONV_THREAD_PARENT + 6..CONV_THREAD_ROOT], [1, 2]);
        assert_eq!(b[CONV_THREAD_ROOT + 6..CONV_LEN], [3, 4]);
        assert_eq!(ConversationRecord::decode(&b), Some(t));
        // Thread fields without their flag, a last message newer than the
        // newest of any timeline: damage.
        let mut bad = b;
        bad[1] &= !CONV_FLAG_THREAD;
        assert_eq!(ConversationRecord::decode(&bad), None);
        let mut bad = b;
        bad[CONV_NEWEST_ANY + 7] = 8;
        assert_eq!(ConversationRecord::decode(&bad), None);
    }

    #[test]
    fn golden_member() {
        let r = MemberRecord {
            joined_after: Some(MessageId(9)),
            joined_at: Timestamp(5),
            slot: Some(0x0102),
            private_here: false,
            private_all: true,
            joined_seq: 0x0A0B,
        };
        let b = r.encode();
        assert_eq!(b[MEMBER_JOINED_SEQ + 7], 0x0B);
        // Format 2's 20-byte record still decodes, with no join sequence.
        assert_eq!(
            MemberRecord::decode(&b[..MEMBER_LEN_V2]),
            Some(MemberRecord { joined_seq: 0, ..r })
        );
        assert_eq!(
            b[1],
            MEMBER_FLAG_JOINED_AFTER | MEMBER_FLAG_SLOT | MEMBER_FLAG_PRIVATE_ALL
        );
        assert_eq!(b[MEMBER_SLOT..MEMBER_JOINED_SEQ], [1, 2]);
        assert_eq!(b[MEMBER_JOINED_AFTER + 7], 9);
        assert_eq!(b[MEMBER_JOINED_AT + 7], 5);
        assert_eq!(MemberRecord::decode(&b), Some(r));
        let none = MemberRecord::default();
        assert_eq!(MemberRecord::decode(&none.encode()), Some(none));
        let mut too_big = r.encode();
        too_big[MEMBER_SLOT..MEMBER_JOINED_SEQ].copy_from_slice(&4096u16.to_be_bytes());
        assert_eq!(MemberRecord::decode(&too_big), None);
    }

    #[test]
    fn golden_message() {
        let r = MessageRecord {
            ordinal: 1,
            sender: UserId(2),
            sent_at: Timestamp(3),
            deleted: true,
            tracked: true,
            uncounted: false,
        };
        let b = r.encode();
        assert_eq!(b[1], MESSAGE_FLAG_DELETED | MESSAGE_FLAG_TRACKED);
        assert_eq!(b[MESSAGE_ORDINAL + 7], 1);
        assert_eq!(b[MESSAGE_SENDER + 7], 2);
        assert_eq!(b[MESSAGE_SENT_AT + 7], 3);
        assert_eq!(MessageRecord::decode(&b), Some(r));
        let mut bad = b;
        bad[1] = 0x80;
        assert_eq!(MessageRecord::decode(&bad), None);
        let system = MessageRecord {
            deleted: false,
            uncounted: true,
            ..r
        };
        let b = system.encode();
        assert_eq!(b[1], MESSAGE_FLAG_TRACKED | MESSAGE_FLAG_UNCOUNTED);
        assert_eq!(MessageRecord::decode(&b), Some(system));
        assert!(system.excluded() && r.excluded());
    }

    #[test]
    fn change_record_layout() {
        let r = ChangeRecord {
            id: 7,
            written_at: 9,
        };
        let b = r.encode();
        assert_eq!(b[CHANGE_ID + 7], 7);
        assert_eq!(b[CHANGE_WRITTEN_AT + 7], 9);
        assert_eq!(ChangeRecord::decode(&b), Some(r));
        assert_eq!(ChangeRecord::decode(&b[1..]), None);
    }
}
