//! Conversations to partitions, and the subjects each partition uses.
//!
//! The map is fixed for the life of a cluster: a conversation's whole
//! state (members, messages, marks, receipt bitsets) lives in its
//! partition's store, so `read_by`, events and per-message bitsets never
//! cross a node. Changing the partition count means a new stream.

/// The stream's subjects: `rm.p.<partition>`.
pub const LOG_SUBJECT_PREFIX: &str = "rm.p";
/// Query subjects, one per partition: `rm.q.<partition>`; only the
/// partition's owner subscribes.
pub const QUERY_SUBJECT_PREFIX: &str = "rm.q";
/// Receipt events for a user: `rm.ev.<user>`; every push tier node
/// subscribes to the users connected to it.
pub const EVENT_SUBJECT_PREFIX: &str = "rm.ev";
/// `{"type":"resync"}` for every connected user: a partition's event
/// subscription overflowed, so some pushes were lost; every push tier node
/// subscribes to it.
pub const RESYNC_SUBJECT: &str = "rm.resync";

/// The partition of `conversation` among `partitions` (at least 1): a
/// fixed 64-bit mix (SplitMix64's finaliser) of the id, modulo the count,
/// so consecutive ids spread evenly and every node and client agrees
/// without asking anyone.
///
/// # Examples
///
/// ```
/// let p = readmark_cluster::partition_of(42, 8);
/// assert!(p < 8);
/// assert_eq!(p, readmark_cluster::partition_of(42, 8));
/// ```
pub fn partition_of(conversation: u64, partitions: u32) -> u32 {
    let mut z = conversation.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // The remainder is below `partitions`, which is a u32.
    u32::try_from(z % u64::from(partitions.max(1))).unwrap_or(0)
}

/// The log subject of partition `p`.
pub fn log_subject(p: u32) -> String {
    format!("{LOG_SUBJECT_PREFIX}.{p}")
}

/// The query subject of partition `p`.
pub fn query_subject(p: u32) -> String {
    format!("{QUERY_SUBJECT_PREFIX}.{p}")
}

/// The event subject of `user`.
pub fn event_subject(user: u64) -> String {
    format!("{EVENT_SUBJECT_PREFIX}.{user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_even_for_consecutive_ids() {
        let mut counts = [0u32; 8];
        for c in 0..80_000 {
            counts[partition_of(c, 8) as usize] += 1;
        }
        for n in counts {
            assert!((9_000..=11_000).contains(&n), "{counts:?}");
        }
        assert_eq!(partition_of(7, 0), 0, "zero partitions: one");
    }
}
