//! Per-message receipts of small conversations: the bitset encoding, its
//! OR merge, and the read-time records that give each bit its time.
//!
//! Pure: no RocksDB, so the encodings, the merge and their fuzz targets
//! build without the C++ library. The write and read paths that use them
//! live in `store::receipts`.
//!
//! ## Bitset (`receipts` value and merge operand, key = conversation|message)
//!
//! ```text
//! 0     1                 9
//! | ver | sent_at (u64 BE) | bitmap: slot s = byte s/8, bit s%8 (LSB first) |
//!                            0..=MAX_BITMAP_BYTES bytes, last byte non-zero
//! ```
//!
//! `sent_at` is the message's time, carried so the retention compaction
//! filter can decide from the value alone. A 50-member group costs
//! 1 + 8 + 7 = 16 bytes per message however many members read it.
//!
//! ## Read-time record (`read_times` value)
//!
//! ```text
//! key:   | conversation u64 | user u64 | kind u8 | message u64 |   (25 bytes)
//! value: 0     1       2              10             18
//!        | ver | flags | at (u64 BE)  | from (u64 BE) |
//!                bit0: from present (runs only)
//! ```
//!
//! A *run* (kind 0, message = the mark's new `up_to`) says: the member's
//! mark advanced over the messages in `(from, message]` at `at` — one record
//! per flushed advance, however many messages it covers. A *view* (kind 1)
//! says the member opened that one message at `at`.

use byteorder::{BigEndian, ByteOrder};

/// Version byte of the bitset encoding.
pub(crate) const BITSET_VERSION: u8 = 1;
/// Offset of `sent_at` in a bitset value.
pub(crate) const BITSET_SENT_AT: usize = 1;
/// Offset of the bitmap in a bitset value.
pub(crate) const BITSET_BITMAP: usize = 9;
/// The most member slots a conversation with per-message receipts can use:
/// the upper bound of [`Config::receipt_threshold`](crate::Config::receipt_threshold).
pub(crate) const MAX_SLOTS: u32 = 4096;
/// Longest bitmap, in bytes.
pub(crate) const MAX_BITMAP_BYTES: usize = MAX_SLOTS as usize / 8;

/// Name of the bitset merge operator, recorded in RocksDB's OPTIONS file.
pub(crate) const RECEIPT_MERGE_NAME: &str = "readmark.receipts.or.v1";

/// The set of member slots that read one message, and the message's time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bitset {
    pub(crate) sent_at: u64,
    /// Trimmed: no trailing zero byte.
    bitmap: Vec<u8>,
}

impl Bitset {
    pub(crate) fn new(sent_at: u64) -> Self {
        Self {
            sent_at,
            bitmap: Vec::new(),
        }
    }

    /// Sets `slot`'s bit; slots at or beyond [`MAX_SLOTS`] are ignored
    /// (never assigned).
    pub(crate) fn set(&mut self, slot: u16) {
        if u32::from(slot) >= MAX_SLOTS {
            return;
        }
        let (byte, bit) = (usize::from(slot / 8), slot % 8);
        if self.bitmap.len() <= byte {
            self.bitmap.resize(byte + 1, 0);
        }
        self.bitmap[byte] |= 1 << bit;
    }

    pub(crate) fn contains(&self, slot: u16) -> bool {
        let (byte, bit) = (usize::from(slot / 8), slot % 8);
        self.bitmap.get(byte).is_some_and(|b| b & (1 << bit) != 0)
    }

    /// Slots set, ascending.
    pub(crate) fn slots(&self) -> impl Iterator<Item = u16> + '_ {
        self.bitmap.iter().enumerate().flat_map(|(i, &b)| {
            (0..8u16).filter_map(move |bit| {
                #[allow(clippy::cast_possible_truncation)] // i < MAX_BITMAP_BYTES
                let slot = i as u16 * 8 + bit;
                (b & (1 << bit) != 0).then_some(slot)
            })
        })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(BITSET_BITMAP + self.bitmap.len());
        b.push(BITSET_VERSION);
        b.extend_from_slice(&self.sent_at.to_be_bytes());
        b.extend_from_slice(&self.bitmap);
        b
    }

    /// Canonical encodings only: right version, bitmap no longer than
    /// [`MAX_BITMAP_BYTES`], no trailing zero byte.
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let (sent_at, bitmap) = Self::parts(b)?;
        Some(Self {
            sent_at,
            bitmap: bitmap.to_vec(),
        })
    }

    /// `sent_at` and the bitmap of a canonical encoding, borrowed.
    fn parts(b: &[u8]) -> Option<(u64, &[u8])> {
        if b.len() < BITSET_BITMAP || b[0] != BITSET_VERSION {
            return None;
        }
        let bitmap = &b[BITSET_BITMAP..];
        if bitmap.len() > MAX_BITMAP_BYTES || bitmap.last() == Some(&0) {
            return None;
        }
        Some((
            BigEndian::read_u64(&b[BITSET_SENT_AT..BITSET_BITMAP]),
            bitmap,
        ))
    }

    /// ORs an encoded bitset into this one without decoding it into a
    /// bitset of its own; false (and nothing changed) if `b` is not a
    /// canonical encoding. `sent_at` becomes the larger of the two: inputs
    /// of one key all carry the same time, so any total choice would do.
    fn or_encoded(&mut self, b: &[u8]) -> bool {
        let Some((sent_at, bitmap)) = Self::parts(b) else {
            return false;
        };
        if self.bitmap.len() < bitmap.len() {
            self.bitmap.resize(bitmap.len(), 0);
        }
        for (a, b) in self.bitmap.iter_mut().zip(bitmap) {
            *a |= b;
        }
        self.sent_at = self.sent_at.max(sent_at);
        true
    }
}

/// Result of one bitset merge (see [`merge_marks`](crate::merge_marks) for
/// the same contract on marks).
pub(crate) struct BitsetMerge {
    pub(crate) value: Vec<u8>,
    pub(crate) skipped: u64,
}

/// ORs a base value and operands of the `receipts` column family. Total:
/// malformed inputs are skipped and counted; if nothing decodes the result
/// is an empty bitset with `sent_at` 0, which retention drops.
pub(crate) fn merge_bitsets<'a>(
    existing: Option<&'a [u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> BitsetMerge {
    let mut skipped = 0u64;
    // One allocation per merge, not one per operand: RocksDB calls this
    // on every read and compaction of a message's bitset.
    let mut acc = Bitset {
        sent_at: 0,
        bitmap: Vec::with_capacity(MAX_BITMAP_BYTES),
    };
    for input in existing.into_iter().chain(operands) {
        if !acc.or_encoded(input) {
            skipped += 1;
        }
    }
    BitsetMerge {
        value: acc.encode(),
        skipped,
    }
}

/// Kinds of read-time record (byte 16 of the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeKind {
    /// A mark advance over `(from, message]`.
    Run = 0,
    /// One message opened on its own.
    View = 1,
}

pub(crate) const TIME_KEY_KIND: usize = 16;
pub(crate) const TIME_KEY_MESSAGE: usize = 17;
pub(crate) const TIME_KEY_LEN: usize = 25;

/// Key of a read-time record.
pub(crate) fn time_key(conversation: u64, user: u64, kind: TimeKind, message: u64) -> [u8; 25] {
    let mut k = [0u8; TIME_KEY_LEN];
    BigEndian::write_u64(&mut k[0..8], conversation);
    BigEndian::write_u64(&mut k[8..TIME_KEY_KIND], user);
    k[TIME_KEY_KIND] = kind as u8;
    BigEndian::write_u64(&mut k[TIME_KEY_MESSAGE..], message);
    k
}

/// `[start, end)` covering every read-time record of one (conversation,
/// user): kinds are below 0xFF, so `end` needs no carry into the user id.
pub(crate) fn time_key_range(conversation: u64, user: u64) -> ([u8; 16], [u8; 17]) {
    let mut start = [0u8; 16];
    BigEndian::write_u64(&mut start[0..8], conversation);
    BigEndian::write_u64(&mut start[8..16], user);
    let mut end = [0xFFu8; 17];
    end[..16].copy_from_slice(&start);
    (start, end)
}

pub(crate) const TIME_VERSION: u8 = 1;
pub(crate) const TIME_FLAG_FROM: u8 = 0x01;
pub(crate) const TIME_AT: usize = 2;
pub(crate) const TIME_FROM: usize = 10;
pub(crate) const TIME_LEN: usize = 18;

/// A read-time record's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReadTimeRecord {
    pub(crate) at: u64,
    /// Runs: the exclusive lower end of the messages covered (`None`: from
    /// the start of the conversation). Views: `None`.
    pub(crate) from: Option<u64>,
}

impl ReadTimeRecord {
    pub(crate) fn encode(&self) -> [u8; TIME_LEN] {
        let mut b = [0u8; TIME_LEN];
        b[0] = TIME_VERSION;
        BigEndian::write_u64(&mut b[TIME_AT..TIME_FROM], self.at);
        if let Some(f) = self.from {
            b[1] = TIME_FLAG_FROM;
            BigEndian::write_u64(&mut b[TIME_FROM..], f);
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != TIME_LEN || b[0] != TIME_VERSION || b[1] & !TIME_FLAG_FROM != 0 {
            return None;
        }
        let from = BigEndian::read_u64(&b[TIME_FROM..]);
        let has_from = b[1] & TIME_FLAG_FROM != 0;
        if !has_from && from != 0 {
            return None;
        }
        Some(Self {
            at: BigEndian::read_u64(&b[TIME_AT..TIME_FROM]),
            from: has_from.then_some(from),
        })
    }

    /// Whether a run record keyed at `up_to` covers `message`.
    pub(crate) fn run_covers(&self, up_to: u64, message: u64) -> bool {
        message <= up_to && self.from.is_none_or(|f| message > f)
    }
}

/// Whether something timed `at` is past a retention of `retention_ms` at
/// time `now` (all in the caller's timestamp unit, milliseconds by
/// convention).
pub(crate) fn expired(at: u64, retention_ms: u64, now: u64) -> bool {
    now >= at.saturating_add(retention_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_bitset() {
        let mut b = Bitset::new(0x0102);
        b.set(0);
        b.set(9);
        let e = b.encode();
        assert_eq!(e, [1, 0, 0, 0, 0, 0, 0, 1, 2, 0b0000_0001, 0b0000_0010]);
        assert_eq!(Bitset::decode(&e), Some(b.clone()));
        assert_eq!(b.slots().collect::<Vec<_>>(), [0, 9]);
        // Trailing zero byte: not canonical.
        let mut bad = e.clone();
        bad.push(0);
        assert_eq!(Bitset::decode(&bad), None);
        assert_eq!(Bitset::decode(&e[..8]), None);
    }

    #[test]
    fn fifty_members_fit_in_sixteen_bytes() {
        let mut b = Bitset::new(1);
        for s in 0..50 {
            b.set(s);
        }
        assert_eq!(b.encode().len(), 16);
    }

    #[test]
    fn golden_time_record_and_key() {
        let r = ReadTimeRecord {
            at: 5,
            from: Some(3),
        };
        let e = r.encode();
        assert_eq!(e[1], TIME_FLAG_FROM);
        assert_eq!(e[TIME_AT + 7], 5);
        assert_eq!(e[TIME_FROM + 7], 3);
        assert_eq!(ReadTimeRecord::decode(&e), Some(r));
        let v = ReadTimeRecord { at: 1, from: None };
        assert_eq!(ReadTimeRecord::decode(&v.encode()), Some(v));
        let k = time_key(1, 2, TimeKind::View, 3);
        assert_eq!(k[7], 1);
        assert_eq!(k[15], 2);
        assert_eq!(k[TIME_KEY_KIND], 1);
        assert_eq!(k[TIME_KEY_MESSAGE + 7], 3);
        let (lo, hi) = time_key_range(1, 2);
        assert!(lo[..] <= k[..] && k[..] < hi[..]);
        let (_, hi_max) = time_key_range(1, u64::MAX);
        assert!(time_key(1, u64::MAX, TimeKind::View, u64::MAX)[..] < hi_max[..]);
        assert!(time_key(2, 0, TimeKind::Run, 0)[..] > hi_max[..]);
    }

    #[test]
    fn run_coverage_bounds() {
        let r = ReadTimeRecord {
            at: 0,
            from: Some(10),
        };
        assert!(!r.run_covers(20, 10));
        assert!(r.run_covers(20, 11));
        assert!(r.run_covers(20, 20));
        assert!(!r.run_covers(20, 21));
        assert!(ReadTimeRecord { at: 0, from: None }.run_covers(20, 0));
    }

    #[test]
    fn retention_edges() {
        assert!(!expired(10, 5, 14));
        assert!(expired(10, 5, 15));
        assert!(!expired(u64::MAX, u64::MAX, u64::MAX - 1));
    }

    fn arb_operand() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => (0u64..4, proptest::collection::vec(0u16..120, 0..10)).prop_map(|(t, slots)| {
                let mut b = Bitset::new(t);
                for s in slots { b.set(s); }
                b.encode()
            }),
            1 => proptest::collection::vec(any::<u8>(), 0..24),
        ]
    }

    proptest! {
        /// OR is associative, commutative and idempotent, so RocksDB may
        /// group and order operands as it likes.
        #[test]
        fn merge_is_order_and_grouping_independent(
            ops in proptest::collection::vec(arb_operand(), 0..10),
            split in 0usize..10,
        ) {
            let all = merge_bitsets(None, ops.iter().map(Vec::as_slice));
            let split = split.min(ops.len());
            let left = merge_bitsets(None, ops[..split].iter().map(Vec::as_slice));
            let right = merge_bitsets(None, ops[split..].iter().map(Vec::as_slice));
            let grouped = merge_bitsets(Some(&left.value), [right.value.as_slice()]);
            prop_assert_eq!(&all.value, &grouped.value);
            let rev = merge_bitsets(None, ops.iter().rev().map(Vec::as_slice));
            prop_assert_eq!(&all.value, &rev.value);
            let twice = merge_bitsets(Some(&all.value), [all.value.as_slice()]);
            prop_assert_eq!(&all.value, &twice.value);
        }

        /// The merged set is the model's union of every decodable operand.
        #[test]
        fn merge_is_union(sets in proptest::collection::vec(proptest::collection::btree_set(0u16..200, 0..8), 0..8)) {
            let ops: Vec<Vec<u8>> = sets.iter().map(|s| {
                let mut b = Bitset::new(7);
                for &x in s { b.set(x); }
                b.encode()
            }).collect();
            let out = merge_bitsets(None, ops.iter().map(Vec::as_slice));
            prop_assert_eq!(out.skipped, 0);
            let model: std::collections::BTreeSet<u16> = sets.iter().flatten().copied().collect();
            let got: std::collections::BTreeSet<u16> =
                Bitset::decode(&out.value).expect("valid").slots().collect();
            prop_assert_eq!(got, model);
        }

        /// Never panics, always produces a decodable value.
        #[test]
        fn merge_is_total(existing in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                          ops in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8)) {
            let out = merge_bitsets(existing.as_deref(), ops.iter().map(Vec::as_slice));
            prop_assert!(Bitset::decode(&out.value).is_some());
        }
    }
}
