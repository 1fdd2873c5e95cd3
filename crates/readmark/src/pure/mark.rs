//! The read-mark record: its value encoding and its join (the max that the
//! merge operator computes).
//!
//! One record per (conversation, user) holds the last-read pointer and the
//! "marked as unread" flag. Both are join-semilattices, so the record is too:
//! merging is commutative, associative and idempotent, which is what lets
//! RocksDB apply operands in any grouping (partial merges, compactions) and
//! lets duplicated or reordered updates from many devices converge.
//!
//! ```text
//! 0       1       2
//! | ver=1 | bits  | fields...                                  (packed, in this order)
//!
//! field        size  present iff
//! up_to        8 BE  bits & BIT_MARK
//! at           8 BE  bits & BIT_MARK
//! flag_time    8 BE  bits & BIT_FLAG
//! flag_pos     8 BE  bits & BIT_FLAG_POS (only with BIT_FLAG)
//! changed      8 BE  bits & BIT_CHANGED (format 4: the change-log sequence
//!                    of the flush that last moved the mark; catch-up)
//! flag_changed 8 BE  bits & BIT_FLAG_CHANGED (format 5: the sequence of the
//!                    flush that last changed the flag; the owner's catch-up)
//! ```
//!
//! Fields are packed: an absent field takes no space, so `flag_time` starts
//! at offset 2 in a flag-only record and at 18 after a mark.
//! Absent fields take no space: a plain mark is 18 bytes.

use byteorder::{BigEndian, ByteOrder};

use crate::ids::{MessageId, Timestamp};

/// Value format version, byte 0 of every mark value and operand.
pub(crate) const MARK_VERSION: u8 = 1;
/// Offset of the version byte.
pub(crate) const VERSION_OFFSET: usize = 0;
/// Offset of the presence bits.
pub(crate) const BITS_OFFSET: usize = 1;
/// Offset of the first optional field.
pub(crate) const FIELDS_OFFSET: usize = 2;
/// Bit: the `up_to` and `at` fields are present.
pub(crate) const BIT_MARK: u8 = 0x01;
/// Bit: the `flag_time` field is present.
pub(crate) const BIT_FLAG: u8 = 0x02;
/// Bit: the flag is set (marked unread); clear means explicitly cleared.
pub(crate) const BIT_FLAG_SET: u8 = 0x04;
/// Bit: the `flag_pos` field is present (a mark existed when the flag was written).
pub(crate) const BIT_FLAG_POS: u8 = 0x08;
/// Bit: the `changed` field is present.
pub(crate) const BIT_CHANGED: u8 = 0x10;
/// Bit: the `flag_changed` field is present (format 5).
pub(crate) const BIT_FLAG_CHANGED: u8 = 0x20;
const KNOWN_BITS: u8 =
    BIT_MARK | BIT_FLAG | BIT_FLAG_SET | BIT_FLAG_POS | BIT_CHANGED | BIT_FLAG_CHANGED;
/// Length of a value holding a mark and no flag.
#[cfg(test)]
pub(crate) const PLAIN_MARK_LEN: usize = FIELDS_OFFSET + 16;
/// The longest encoding: a mark, a flag with its position, and both change
/// sequences.
pub(crate) const MAX_ENCODED_LEN: usize = FIELDS_OFFSET + 48;
/// The longest encoding without a change sequence (what the journal holds:
/// sequences are assigned when a flush writes the mark).
pub(crate) const MAX_UNSEQUENCED_LEN: usize = FIELDS_OFFSET + 32;

/// A last-read pointer: `user` has read everything up to and including
/// `up_to`, and reached it at `at`.
///
/// # Examples
///
/// ```
/// use readmark::{MessageId, ReadMark, Timestamp};
/// let m = ReadMark { up_to: MessageId(10), at: Timestamp(5) };
/// assert!(m.covers(MessageId(10)));
/// assert!(!m.covers(MessageId(11)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadMark {
    /// The newest message read (inclusive).
    pub up_to: MessageId,
    /// When the mark first reached `up_to` (caller's clock, ms).
    pub at: Timestamp,
}

impl ReadMark {
    /// Whether this mark covers (has read) `message`.
    ///
    /// # Examples
    ///
    /// ```
    /// use readmark::{MessageId, ReadMark, Timestamp};
    /// assert!(ReadMark { up_to: MessageId(3), at: Timestamp(0) }.covers(MessageId(1)));
    /// ```
    #[must_use]
    pub fn covers(&self, message: MessageId) -> bool {
        message <= self.up_to
    }

    /// The join order: a higher `up_to` wins; at equal `up_to` the earlier
    /// `at` wins (the first time the user reached that message). This is a
    /// total order, so "keep the greatest" is commutative, associative and
    /// idempotent.
    #[inline]
    fn rank(&self) -> (u64, std::cmp::Reverse<u64>) {
        (self.up_to.0, std::cmp::Reverse(self.at.0))
    }

    #[inline]
    pub(crate) fn join(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(x), Some(y)) => Some(if y.rank() > x.rank() { y } else { x }),
            (x, None) => x,
            (None, y) => y,
        }
    }
}

/// The "marked as unread" flag, a last-writer-wins register by `time`.
///
/// `pos` is the mark's `up_to` when the flag was written (`None` if there
/// was no mark). The flag is in force while the mark has not advanced past
/// `pos`: the next advance clears it without anyone rewriting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct UnreadFlag {
    pub(crate) time: u64,
    pub(crate) set: bool,
    pub(crate) pos: Option<u64>,
}

impl UnreadFlag {
    /// Later `time` wins; at equal time `set` beats clear, then the larger
    /// position: a total order, so the join converges.
    #[inline]
    fn rank(&self) -> (u64, bool, Option<u64>) {
        (self.time, self.set, self.pos)
    }

    #[inline]
    fn join(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(x), Some(y)) => Some(if y.rank() > x.rank() { y } else { x }),
            (x, None) => x,
            (None, y) => y,
        }
    }
}

/// The decoded record: both halves are optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct MarkState {
    pub(crate) mark: Option<ReadMark>,
    pub(crate) flag: Option<UnreadFlag>,
    /// The change-log sequence of the flush that last moved the mark (0:
    /// none recorded). Joined by max, so it is a third semilattice half.
    pub(crate) changed: u64,
    /// The change-log sequence of the flush that last changed the flag (0:
    /// none recorded): the owner's other devices catch up on it; nobody
    /// else sees the flag. Joined by max, a fourth half.
    pub(crate) flag_changed: u64,
}

impl MarkState {
    pub(crate) fn from_mark(up_to: MessageId, at: Timestamp) -> Self {
        Self {
            mark: Some(ReadMark { up_to, at }),
            flag: None,
            changed: 0,
            flag_changed: 0,
        }
    }

    pub(crate) fn from_flag(flag: UnreadFlag) -> Self {
        Self {
            mark: None,
            flag: Some(flag),
            changed: 0,
            flag_changed: 0,
        }
    }

    /// Joins `other` into `self` in place; returns whether `self` changed.
    /// The write path's join: no temporaries, and "changed" without a
    /// comparison of whole records (each rank covers all of its half's
    /// fields, so an equal rank is an equal half).
    #[inline]
    pub(crate) fn absorb(&mut self, other: &Self) -> bool {
        let mut changed = false;
        if let Some(m) = other.mark
            && self.mark.is_none_or(|s| m.rank() > s.rank())
        {
            self.mark = Some(m);
            changed = true;
        }
        if let Some(f) = other.flag
            && self.flag.is_none_or(|s| f.rank() > s.rank())
        {
            self.flag = Some(f);
            changed = true;
        }
        if other.changed > self.changed {
            self.changed = other.changed;
            changed = true;
        }
        if other.flag_changed > self.flag_changed {
            self.flag_changed = other.flag_changed;
            changed = true;
        }
        changed
    }

    /// Whether joining `other` would change nothing.
    #[inline]
    pub(crate) fn covers(&self, other: &Self) -> bool {
        let mut copy = *self;
        !copy.absorb(other)
    }

    /// The semilattice join of two records.
    #[must_use]
    #[inline]
    pub(crate) fn join(self, other: Self) -> Self {
        Self {
            mark: ReadMark::join(self.mark, other.mark),
            flag: UnreadFlag::join(self.flag, other.flag),
            changed: self.changed.max(other.changed),
            flag_changed: self.flag_changed.max(other.flag_changed),
        }
    }

    /// Whether the user has marked the conversation unread and not read
    /// anything newer since.
    pub(crate) fn marked_unread(&self) -> bool {
        match (self.flag, self.mark) {
            (Some(f), _) if !f.set => false,
            (Some(_), None) => true,
            (Some(f), Some(m)) => f.pos.is_some_and(|p| p >= m.up_to.0),
            (None, _) => false,
        }
    }

    pub(crate) fn encoded_len(&self) -> usize {
        let mut n = FIELDS_OFFSET;
        if self.mark.is_some() {
            n += 16;
        }
        if let Some(f) = self.flag {
            n += 8;
            if f.pos.is_some() {
                n += 8;
            }
        }
        if self.changed != 0 {
            n += 8;
        }
        if self.flag_changed != 0 {
            n += 8;
        }
        n
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Encodes into the front of `out` (at least [`MAX_ENCODED_LEN`] bytes)
    /// without allocating; returns the length. The journal's hot path.
    pub(crate) fn encode_to(&self, out: &mut [u8; MAX_ENCODED_LEN]) -> usize {
        let mut bits = 0u8;
        if self.mark.is_some() {
            bits |= BIT_MARK;
        }
        if let Some(f) = self.flag {
            bits |= BIT_FLAG;
            if f.set {
                bits |= BIT_FLAG_SET;
            }
            if f.pos.is_some() {
                bits |= BIT_FLAG_POS;
            }
        }
        if self.changed != 0 {
            bits |= BIT_CHANGED;
        }
        if self.flag_changed != 0 {
            bits |= BIT_FLAG_CHANGED;
        }
        out[VERSION_OFFSET] = MARK_VERSION;
        out[BITS_OFFSET] = bits;
        let mut n = FIELDS_OFFSET;
        let mut put = |v: u64| {
            BigEndian::write_u64(&mut out[n..n + 8], v);
            n += 8;
        };
        if let Some(m) = self.mark {
            put(m.up_to.0);
            put(m.at.0);
        }
        if let Some(f) = self.flag {
            put(f.time);
            if let Some(p) = f.pos {
                put(p);
            }
        }
        if self.changed != 0 {
            put(self.changed);
        }
        if self.flag_changed != 0 {
            put(self.flag_changed);
        }
        n
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let mut buf = [0u8; MAX_ENCODED_LEN];
        let n = self.encode_to(&mut buf);
        out.extend_from_slice(&buf[..n]);
    }

    /// Decodes a value or operand; `None` if it is malformed in any way
    /// (wrong version, unknown bits, flag bits without a flag, wrong length).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < FIELDS_OFFSET || bytes[VERSION_OFFSET] != MARK_VERSION {
            return None;
        }
        let bits = bytes[BITS_OFFSET];
        if bits & !KNOWN_BITS != 0 {
            return None;
        }
        let has_flag = bits & BIT_FLAG != 0;
        if !has_flag && bits & (BIT_FLAG_SET | BIT_FLAG_POS) != 0 {
            return None;
        }
        let mut rest = &bytes[FIELDS_OFFSET..];
        let mut take = || -> Option<u64> {
            if rest.len() < 8 {
                return None;
            }
            let v = BigEndian::read_u64(&rest[..8]);
            rest = &rest[8..];
            Some(v)
        };
        let mark = if bits & BIT_MARK != 0 {
            let up_to = take()?;
            let at = take()?;
            Some(ReadMark {
                up_to: MessageId(up_to),
                at: Timestamp(at),
            })
        } else {
            None
        };
        let flag = if has_flag {
            let time = take()?;
            let pos = if bits & BIT_FLAG_POS != 0 {
                Some(take()?)
            } else {
                None
            };
            Some(UnreadFlag {
                time,
                set: bits & BIT_FLAG_SET != 0,
                pos,
            })
        } else {
            None
        };
        let changed = if bits & BIT_CHANGED != 0 {
            // Present means non-zero: one encoding per record.
            match take()? {
                0 => return None,
                v => v,
            }
        } else {
            0
        };
        let flag_changed = if bits & BIT_FLAG_CHANGED != 0 {
            match take()? {
                0 => return None,
                v => v,
            }
        } else {
            0
        };
        if !rest.is_empty() {
            return None;
        }
        Some(Self {
            mark,
            flag,
            changed,
            flag_changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn any_state() -> impl Strategy<Value = MarkState> {
        (
            proptest::option::of((0u64..5, 0u64..5)),
            proptest::option::of((0u64..5, any::<bool>(), proptest::option::of(0u64..5))),
        )
            .prop_map(|(m, f)| MarkState {
                mark: m.map(|(u, a)| ReadMark {
                    up_to: MessageId(u),
                    at: Timestamp(a),
                }),
                flag: f.map(|(time, set, pos)| UnreadFlag { time, set, pos }),
                changed: 0,
                flag_changed: 0,
            })
            .prop_flat_map(|s| (Just(s), 0u64..3, 0u64..3))
            .prop_map(|(s, changed, flag_changed)| MarkState {
                changed,
                flag_changed,
                ..s
            })
    }

    proptest! {
        /// The write path's in-place join is the join, and says exactly
        /// whether anything changed; `encode_to` is `encode`.
        #[test]
        fn absorb_is_join_and_covers_is_no_change(a in any_state(), b in any_state()) {
            let mut x = a;
            let changed = x.absorb(&b);
            prop_assert_eq!(x, a.join(b));
            prop_assert_eq!(changed, a.join(b) != a);
            prop_assert_eq!(a.covers(&b), a.join(b) == a);
            let mut buf = [0u8; MAX_ENCODED_LEN];
            let n = a.encode_to(&mut buf);
            let full = a.encode();
            prop_assert_eq!(&buf[..n], full.as_slice());
        }
    }

    use super::*;

    #[test]
    fn golden_plain_mark() {
        let s = MarkState::from_mark(MessageId(0x0102), Timestamp(0x0A0B));
        let bytes = s.encode();
        assert_eq!(bytes.len(), PLAIN_MARK_LEN);
        assert_eq!(
            bytes,
            [
                1, BIT_MARK, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0x0A, 0x0B
            ]
        );
        assert_eq!(MarkState::decode(&bytes), Some(s));
    }

    #[test]
    fn golden_flag_only() {
        let s = MarkState::from_flag(UnreadFlag {
            time: 0x0C,
            set: false,
            pos: None,
        });
        let bytes = s.encode();
        assert_eq!(bytes, [1, BIT_FLAG, 0, 0, 0, 0, 0, 0, 0, 0x0C]);
        assert_eq!(MarkState::decode(&bytes), Some(s));
    }

    #[test]
    fn golden_mark_and_flag() {
        let s = MarkState {
            mark: Some(ReadMark {
                up_to: MessageId(1),
                at: Timestamp(2),
            }),
            flag: Some(UnreadFlag {
                time: 3,
                set: true,
                pos: Some(4),
            }),
            changed: 0,
            flag_changed: 0,
        };
        let bytes = s.encode();
        let mut want = vec![1, BIT_MARK | BIT_FLAG | BIT_FLAG_SET | BIT_FLAG_POS];
        for v in [1u64, 2, 3, 4] {
            want.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(bytes, want);
        assert_eq!(bytes.len(), 34);
        assert_eq!(MarkState::decode(&bytes), Some(s));
    }

    #[test]
    fn golden_mark_with_change_sequence() {
        let s = MarkState {
            changed: 0x0D,
            ..MarkState::from_mark(MessageId(1), Timestamp(2))
        };
        let bytes = s.encode();
        let mut want = vec![1, BIT_MARK | BIT_CHANGED];
        for v in [1u64, 2, 0x0D] {
            want.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(bytes, want);
        assert_eq!(MarkState::decode(&bytes), Some(s));
        // The join keeps the newest sequence, whichever mark wins.
        let older = MarkState {
            changed: 3,
            ..MarkState::from_mark(MessageId(9), Timestamp(2))
        };
        assert_eq!(s.join(older).changed, 0x0D);
        assert_eq!(older.join(s).mark, older.mark);
    }

    #[test]
    fn golden_flag_with_both_sequences() {
        let s = MarkState {
            changed: 0x0D,
            flag_changed: 0x0E,
            ..MarkState::from_mark(MessageId(1), Timestamp(2)).join(MarkState::from_flag(
                UnreadFlag {
                    time: 3,
                    set: true,
                    pos: Some(1),
                },
            ))
        };
        let bytes = s.encode();
        let mut want = vec![
            1,
            BIT_MARK | BIT_FLAG | BIT_FLAG_SET | BIT_FLAG_POS | BIT_CHANGED | BIT_FLAG_CHANGED,
        ];
        for v in [1u64, 2, 3, 1, 0x0D, 0x0E] {
            want.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(bytes, want);
        assert_eq!(bytes.len(), MAX_ENCODED_LEN);
        assert_eq!(MarkState::decode(&bytes), Some(s));
        // Each sequence joins by max on its own.
        let other = MarkState {
            changed: 0x20,
            flag_changed: 0x01,
            ..MarkState::default()
        };
        let j = s.join(other);
        assert_eq!((j.changed, j.flag_changed), (0x20, 0x0E));
        // Present means non-zero.
        let mut zero = vec![1, BIT_FLAG_CHANGED];
        zero.extend_from_slice(&0u64.to_be_bytes());
        assert_eq!(MarkState::decode(&zero), None);
    }

    #[test]
    fn malformed_is_rejected() {
        assert_eq!(MarkState::decode(&[]), None);
        assert_eq!(MarkState::decode(&[2, 0]), None);
        assert_eq!(MarkState::decode(&[1, 0x40]), None);
        assert_eq!(MarkState::decode(&[1, BIT_FLAG_CHANGED]), None);
        // A present sequence is never zero (one encoding per record).
        assert_eq!(
            MarkState::decode(&[1, BIT_CHANGED, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
        assert_eq!(MarkState::decode(&[1, BIT_FLAG_SET]), None);
        assert_eq!(MarkState::decode(&[1, BIT_MARK, 0]), None);
        let mut long = MarkState::from_mark(MessageId(1), Timestamp(1)).encode();
        long.push(0);
        assert_eq!(MarkState::decode(&long), None);
        assert_eq!(MarkState::decode(&[1, 0]), Some(MarkState::default()));
    }

    #[test]
    fn tie_keeps_earliest_time() {
        let a = MarkState::from_mark(MessageId(5), Timestamp(10));
        let b = MarkState::from_mark(MessageId(5), Timestamp(7));
        assert_eq!(a.join(b).mark.map(|m| m.at), Some(Timestamp(7)));
        assert_eq!(b.join(a).mark.map(|m| m.at), Some(Timestamp(7)));
    }

    #[test]
    fn flag_cleared_by_advance() {
        let flagged = MarkState::from_mark(MessageId(5), Timestamp(1)).join(MarkState::from_flag(
            UnreadFlag {
                time: 2,
                set: true,
                pos: Some(5),
            },
        ));
        assert!(flagged.marked_unread());
        let stale = flagged.join(MarkState::from_mark(MessageId(4), Timestamp(3)));
        assert!(stale.marked_unread());
        let advanced = flagged.join(MarkState::from_mark(MessageId(6), Timestamp(3)));
        assert!(!advanced.marked_unread());
    }
}
