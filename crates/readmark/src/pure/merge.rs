//! Merge functions: the pure folds and the RocksDB merge-operator adapters
//! that call them.
//!
//! RocksDB calls a merge operator from C through `extern "C"` callbacks that
//! have no `catch_unwind`: a panic aborts the process, and returning "merge
//! failed" during a compaction puts the database into read-only mode until
//! it is reopened. So the functions here are total: they never panic, always
//! return a value, and skip (and count) any operand or base value they cannot
//! decode. Because the join is a semilattice, dropping one malformed input
//! only loses that input's contribution, never anyone else's.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pure::mark::MarkState;

/// Name of the mark merge operator, recorded by RocksDB in the OPTIONS file.
/// Bump the suffix if the join ever changes meaning.
pub(crate) const MARK_MERGE_NAME: &str = "readmark.mark.join.v1";

/// Result of one merge: the encoded value and the number of inputs skipped
/// because they were malformed.
///
/// # Examples
///
/// ```
/// let out = readmark::merge_marks(None, [&b"not a mark"[..]]);
/// assert_eq!(out.skipped, 1); // malformed operands are skipped and counted
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeOutcome {
    /// The merged value, always a valid encoding.
    pub value: Vec<u8>,
    /// Inputs (base value or operands) that could not be decoded.
    pub skipped: u64,
}

/// Joins a base value and operands of the `marks` column family.
///
/// Total: any byte strings are accepted; malformed ones are skipped and
/// counted in [`MergeOutcome::skipped`]. If nothing decodes, the result is
/// the empty record (no mark, no flag).
///
/// # Examples
///
/// ```
/// use readmark::merge_marks;
/// let out = merge_marks(None, [&b"garbage"[..]]);
/// assert_eq!(out.skipped, 1);
/// ```
pub fn merge_marks<'a>(
    existing: Option<&'a [u8]>,
    operands: impl IntoIterator<Item = &'a [u8]>,
) -> MergeOutcome {
    let mut skipped = 0u64;
    let mut state = MarkState::default();
    for input in existing.into_iter().chain(operands) {
        match MarkState::decode(input) {
            Some(s) => state = state.join(s),
            None => skipped += 1,
        }
    }
    MergeOutcome {
        value: state.encode(),
        skipped,
    }
}

/// Counters shared between the merge callbacks and the store.
#[derive(Debug, Default)]
pub(crate) struct MergeCounters {
    pub(crate) malformed: AtomicU64,
}

impl MergeCounters {
    pub(crate) fn record(&self, skipped: u64) {
        if skipped > 0 {
            let before = self.malformed.fetch_add(skipped, Ordering::Relaxed);
            if before == 0 {
                // Once per store: a corrupt operand is worth one loud line,
                // not one per compaction that meets it again.
                tracing::warn!(
                    skipped,
                    "skipped malformed merge input(s); see Stats::malformed_operands"
                );
            }
        }
    }
}

#[cfg(feature = "store")]
pub(crate) mod adapter {
    use std::sync::Arc;

    use rocksdb::MergeOperands;

    use super::{MergeCounters, merge_marks};

    /// Installs the mark merge operator on a column family's options. The
    /// join is associative, so full and partial merge are the same function.
    pub(crate) fn install_mark_operator(opts: &mut rocksdb::Options, counters: Arc<MergeCounters>) {
        let merge = move |_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands| {
            let out = merge_marks(existing, ops.iter());
            counters.record(out.skipped);
            Some(out.value)
        };
        opts.set_merge_operator_associative(super::MARK_MERGE_NAME, merge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MessageId, Timestamp};
    use proptest::prelude::*;

    fn enc(up_to: u64, at: u64) -> Vec<u8> {
        MarkState::from_mark(MessageId(up_to), Timestamp(at)).encode()
    }

    #[test]
    fn malformed_operand_is_skipped_and_counted() {
        let good = enc(7, 1);
        let out = merge_marks(Some(&b"\x01"[..]), [&good[..], &b"\xff\xff"[..]]);
        assert_eq!(out.skipped, 2);
        assert_eq!(
            MarkState::decode(&out.value)
                .and_then(|s| s.mark)
                .map(|m| m.up_to),
            Some(MessageId(7))
        );
    }

    #[test]
    fn nothing_decodes_gives_empty_record() {
        let out = merge_marks(None, [&b""[..]]);
        assert_eq!(MarkState::decode(&out.value), Some(MarkState::default()));
    }

    fn arb_operand() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => (0u64..20, 0u64..20).prop_map(|(u, a)| enc(u, a)),
            1 => proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }

    proptest! {
        /// Any grouping and order of operands gives the same value: the
        /// property RocksDB relies on when it partially merges.
        #[test]
        fn merge_is_order_and_grouping_independent(
            ops in proptest::collection::vec(arb_operand(), 0..12),
            split in 0usize..12,
            seed in any::<u64>(),
        ) {
            let all = merge_marks(None, ops.iter().map(Vec::as_slice));
            let split = split.min(ops.len());
            let left = merge_marks(None, ops[..split].iter().map(Vec::as_slice));
            let right = merge_marks(None, ops[split..].iter().map(Vec::as_slice));
            let grouped = merge_marks(Some(&left.value), [right.value.as_slice()]);
            prop_assert_eq!(&all.value, &grouped.value);
            let mut shuffled = ops.clone();
            let n = shuffled.len();
            if n > 1 {
                let mut s = seed;
                for i in (1..n).rev() {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    shuffled.swap(i, (s >> 33) as usize % (i + 1));
                }
            }
            let reordered = merge_marks(None, shuffled.iter().map(Vec::as_slice));
            prop_assert_eq!(&all.value, &reordered.value);
            // Idempotent: merging the result with itself changes nothing.
            let twice = merge_marks(Some(&all.value), [all.value.as_slice()]);
            prop_assert_eq!(&all.value, &twice.value);
        }

        /// The merged mark is the model's maximum.
        #[test]
        fn merge_is_max(ups in proptest::collection::vec((0u64..50, 0u64..50), 1..20)) {
            let ops: Vec<Vec<u8>> = ups.iter().map(|&(u, a)| enc(u, a)).collect();
            let out = merge_marks(None, ops.iter().map(Vec::as_slice));
            let max_up = ups.iter().map(|p| p.0).max().unwrap_or(0);
            let min_at = ups.iter().filter(|p| p.0 == max_up).map(|p| p.1).min().unwrap_or(0);
            let m = MarkState::decode(&out.value).and_then(|s| s.mark);
            prop_assert_eq!(m.map(|m| (m.up_to.0, m.at.0)), Some((max_up, min_at)));
        }

        /// Never panics, always produces a decodable value.
        #[test]
        fn merge_is_total(existing in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                          ops in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8)) {
            let out = merge_marks(existing.as_deref(), ops.iter().map(Vec::as_slice));
            prop_assert!(MarkState::decode(&out.value).is_some());
        }
    }
}
