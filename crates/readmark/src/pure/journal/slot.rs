//! The slot journal's layout: a file header, then one fixed-size slot per
//! buffered key, each slot two alternating copies of the key's state.
//!
//! ```text
//! file header (HEADER_LEN = 4096 bytes: slots start page-aligned)
//! 0                8                16                 24          28      32 .. 4096
//! | magic (8)      | epoch (u64 BE) | slot_count (BE)  | copy_len    | crc   | zeros
//!   crc = crc32(bytes 0..28)
//!
//! sector (512 bytes) = 3 slots (480 bytes) + 32 unused; page (4096) = 8 sectors = 24 slots
//! slot i: page i / 24, sector (i % 24) / 3, offset 160 * (i % 3) in the sector
//!
//! slot (SLOT_LEN = 160) = copy 0 (80) | copy 1 (80)
//!
//! copy (COPY_LEN = 80)
//! 0        4     5     6        8            16             24        32            40          40+len   80
//! | crc    | ver | len | zero   | seq (BE)   | conversation | user    | joined_seq  | mark state | zeros |
//!   crc = crc32(epoch BE ‖ bytes 4..80); ver = 1; len = 2..=34 (mark.rs encoding)
//! ```
//!
//! No copy straddles a 512-byte sector, so on a disk that writes sectors
//! atomically a power loss leaves each copy either as it was at the last
//! fsync or as a later complete write, never torn (docs/design.md §15).
//!
//! A copy holds the whole buffered state of one (conversation, user) key:
//! the join of every update since the key's last flush (and what the store
//! knew of its stored mark), so the last valid copy alone replays the key.
//! Updates write the slot's two copies in turn, numbered by the key: a
//! write cut short by a crash damages only the copy being written, and the
//! other one (the previous state) stays valid. Recovery replays every valid
//! copy, joined per key (a newer state contains an older one), so it needs
//! no ordering between copies; `seq` says which is newer, for inspection. `joined_seq` is the member
//! record's: replay applies a copy only to the membership it was written
//! for. A freed slot is zeroed (all-zero copies are empty, not damage).
//! The epoch in the CRC keeps a copy from another file's life from
//! validating.

use byteorder::{BigEndian, ByteOrder};

use crate::pure::mark::{MAX_ENCODED_LEN, MAX_UNSEQUENCED_LEN, MarkState};

/// Magic bytes opening the slot file ("readmark slots, layout 1").
pub(crate) const SLOT_MAGIC: &[u8; 8] = b"RDMKSLT1";
pub(crate) const HEADER_MAGIC: usize = 0;
pub(crate) const HEADER_EPOCH: usize = 8;
pub(crate) const HEADER_SLOTS: usize = 16;
pub(crate) const HEADER_COPY_LEN: usize = 24;
pub(crate) const HEADER_CRC: usize = 28;
/// The header takes a whole page, so every slot page is page-aligned.
pub(crate) const HEADER_LEN: usize = PAGE;

/// The page-cache unit: one copy write dirties one page.
pub(crate) const PAGE: usize = 4096;
/// The unit a disk writes atomically: no copy straddles two.
pub(crate) const SECTOR: usize = 512;
pub(crate) const COPY_LEN: usize = 80;
pub(crate) const SLOT_LEN: usize = 2 * COPY_LEN;
pub(crate) const SLOTS_PER_SECTOR: usize = SECTOR / SLOT_LEN;
pub(crate) const SLOTS_PER_PAGE: usize = PAGE / SECTOR * SLOTS_PER_SECTOR;

pub(crate) const COPY_CRC: usize = 0;
pub(crate) const COPY_VERSION: usize = 4;
pub(crate) const COPY_STATE_LEN: usize = 5;
pub(crate) const COPY_SEQ: usize = 8;
pub(crate) const COPY_CONVERSATION: usize = 16;
pub(crate) const COPY_USER: usize = 24;
pub(crate) const COPY_JOINED_SEQ: usize = 32;
pub(crate) const COPY_STATE: usize = 40;
/// Version byte of a copy; 0 is an empty (zeroed) copy.
pub(crate) const COPY_FORMAT: u8 = 1;

const _: () = assert!(COPY_STATE + MAX_UNSEQUENCED_LEN <= COPY_LEN);

/// Bytes of a file holding `slots` slots.
pub(crate) const fn file_len(slots: usize) -> usize {
    HEADER_LEN + slots.div_ceil(SLOTS_PER_PAGE) * PAGE
}

/// Slots that fit in a file of at most `bytes`.
pub(crate) const fn slots_in(bytes: usize) -> usize {
    if bytes <= HEADER_LEN {
        0
    } else {
        (bytes - HEADER_LEN) / PAGE * SLOTS_PER_PAGE
    }
}

/// Byte offset of copy `copy` (0 or 1) of slot `slot` in the file.
pub(crate) const fn copy_offset(slot: usize, copy: usize) -> usize {
    let sector = slot / SLOTS_PER_SECTOR;
    HEADER_LEN + sector * SECTOR + slot % SLOTS_PER_SECTOR * SLOT_LEN + copy * COPY_LEN
}

/// Writes the file header into `buf[..HEADER_LEN]`.
pub(crate) fn write_header(buf: &mut [u8], epoch: u64, slots: u64) {
    buf[..HEADER_LEN].fill(0);
    buf[HEADER_MAGIC..HEADER_EPOCH].copy_from_slice(SLOT_MAGIC);
    BigEndian::write_u64(&mut buf[HEADER_EPOCH..HEADER_SLOTS], epoch);
    BigEndian::write_u64(&mut buf[HEADER_SLOTS..HEADER_COPY_LEN], slots);
    #[allow(clippy::cast_possible_truncation)]
    BigEndian::write_u32(&mut buf[HEADER_COPY_LEN..HEADER_CRC], COPY_LEN as u32);
    let crc = crc32fast::hash(&buf[..HEADER_CRC]);
    BigEndian::write_u32(&mut buf[HEADER_CRC..HEADER_CRC + 4], crc);
}

/// What a file header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// Never written (all zero, or shorter than a header): an empty journal.
    Blank,
    /// Valid: `(epoch, slots)`.
    Valid { epoch: u64, slots: u64 },
    /// Something else: another file, or damage.
    Invalid,
}

/// Reads a file header.
pub(crate) fn read_header(buf: &[u8]) -> Header {
    if buf.len() < HEADER_CRC + 4 || buf[..HEADER_LEN.min(buf.len())].iter().all(|&b| b == 0) {
        return Header::Blank;
    }
    let crc = BigEndian::read_u32(&buf[HEADER_CRC..HEADER_CRC + 4]);
    if &buf[HEADER_MAGIC..HEADER_EPOCH] != SLOT_MAGIC
        || crc != crc32fast::hash(&buf[..HEADER_CRC])
        || BigEndian::read_u32(&buf[HEADER_COPY_LEN..HEADER_CRC]) as usize != COPY_LEN
    {
        return Header::Invalid;
    }
    Header::Valid {
        epoch: BigEndian::read_u64(&buf[HEADER_EPOCH..HEADER_SLOTS]),
        slots: BigEndian::read_u64(&buf[HEADER_SLOTS..HEADER_COPY_LEN]),
    }
}

/// The content of one copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Copy {
    pub(crate) seq: u64,
    pub(crate) conversation: u64,
    pub(crate) user: u64,
    pub(crate) joined_seq: u64,
    pub(crate) state: MarkState,
}

/// The CRC state after a file's epoch: every copy's checksum starts from
/// it (computed once per file, not once per write).
pub(crate) fn epoch_hasher(epoch: u64) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_be_bytes());
    h
}

fn crc_of(epoch: u64, body: &[u8]) -> u32 {
    let mut h = epoch_hasher(epoch);
    h.update(body);
    h.finalize()
}

#[cfg(any(test, feature = "testing"))]
/// Encodes `copy` into `out` (exactly [`COPY_LEN`] bytes).
pub(crate) fn encode_copy(out: &mut [u8; COPY_LEN], epoch: u64, copy: &Copy) {
    encode_copy_with(out, &epoch_hasher(epoch), copy);
}

/// [`encode_copy`] from a precomputed [`epoch_hasher`].
#[inline]
pub(crate) fn encode_copy_with(out: &mut [u8; COPY_LEN], epoch: &crc32fast::Hasher, copy: &Copy) {
    // Without its change sequence: the journal holds updates not yet
    // written, and a sequence is assigned when a flush writes them.
    let mut state = [0u8; MAX_ENCODED_LEN];
    let len = MarkState {
        changed: 0,
        flag_changed: 0,
        ..copy.state
    }
    .encode_to(&mut state);
    out.fill(0);
    out[COPY_VERSION] = COPY_FORMAT;
    #[allow(clippy::cast_possible_truncation)]
    {
        out[COPY_STATE_LEN] = len as u8;
    }
    BigEndian::write_u64(&mut out[COPY_SEQ..COPY_CONVERSATION], copy.seq);
    BigEndian::write_u64(&mut out[COPY_CONVERSATION..COPY_USER], copy.conversation);
    BigEndian::write_u64(&mut out[COPY_USER..COPY_JOINED_SEQ], copy.user);
    BigEndian::write_u64(&mut out[COPY_JOINED_SEQ..COPY_STATE], copy.joined_seq);
    out[COPY_STATE..COPY_STATE + len].copy_from_slice(&state[..len]);
    let mut h = epoch.clone();
    h.update(&out[COPY_VERSION..]);
    BigEndian::write_u32(&mut out[COPY_CRC..COPY_VERSION], h.finalize());
}

/// What one copy's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CopyRead {
    /// All zero: never written, or freed.
    Empty,
    /// The checksum fails: a write cut short, or damage (indistinguishable
    /// here; the slot's other copy is used).
    Torn,
    /// The checksum holds but the content is not a valid copy: written by
    /// a newer layout, or a bug. Strict recovery refuses it.
    Malformed,
    /// A valid copy.
    Valid(Copy),
}

/// Reads one copy (`buf` is exactly [`COPY_LEN`] bytes).
pub(crate) fn read_copy(buf: &[u8], epoch: u64) -> CopyRead {
    if buf.len() != COPY_LEN {
        return CopyRead::Torn;
    }
    if buf.iter().all(|&b| b == 0) {
        return CopyRead::Empty;
    }
    if BigEndian::read_u32(&buf[COPY_CRC..COPY_VERSION]) != crc_of(epoch, &buf[COPY_VERSION..]) {
        return CopyRead::Torn;
    }
    let len = usize::from(buf[COPY_STATE_LEN]);
    if buf[COPY_VERSION] != COPY_FORMAT
        || buf[COPY_STATE_LEN + 1..COPY_SEQ].iter().any(|&b| b != 0)
        || len > MAX_UNSEQUENCED_LEN
        || buf[COPY_STATE + len..].iter().any(|&b| b != 0)
    {
        return CopyRead::Malformed;
    }
    let Some(state) = MarkState::decode(&buf[COPY_STATE..COPY_STATE + len]) else {
        return CopyRead::Malformed;
    };
    // Sequences are assigned by flushes, never journaled.
    if state.changed != 0 || state.flag_changed != 0 {
        return CopyRead::Malformed;
    }
    CopyRead::Valid(Copy {
        seq: BigEndian::read_u64(&buf[COPY_SEQ..COPY_CONVERSATION]),
        conversation: BigEndian::read_u64(&buf[COPY_CONVERSATION..COPY_USER]),
        user: BigEndian::read_u64(&buf[COPY_USER..COPY_JOINED_SEQ]),
        joined_seq: BigEndian::read_u64(&buf[COPY_JOINED_SEQ..COPY_STATE]),
        state,
    })
}

/// One valid copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotFound {
    /// Offset of the copy in the file.
    pub(crate) offset: usize,
    pub(crate) copy: Copy,
}

/// What a scan of a slot file image found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlotScan {
    /// `Some(epoch)` for a valid header.
    pub(crate) epoch: Option<u64>,
    /// A non-blank header that does not validate.
    pub(crate) bad_header: bool,
    /// Every valid copy. Both copies of a slot are returned: they may hold
    /// two states of one key (replay joins them: the newer contains the
    /// older) or, after a power loss undid a slot's zeroing, a state of the
    /// slot's previous key (written to RocksDB before the slot was given
    /// back, so replaying it again changes nothing) beside the new key's.
    pub(crate) found: Vec<SlotFound>,
    /// Slots with at least one valid copy.
    pub(crate) slots_used: u64,
    /// Copies whose checksum fails (a write cut short, or damage).
    pub(crate) torn: u64,
    /// Offsets of copies whose checksum holds but whose content is invalid.
    pub(crate) malformed: Vec<usize>,
}

/// Reads every slot of a file image. Never panics, whatever the bytes.
pub(crate) fn scan_slots(buf: &[u8]) -> SlotScan {
    let mut scan = SlotScan::default();
    let epoch = match read_header(buf) {
        Header::Blank => return scan,
        Header::Invalid => {
            scan.bad_header = true;
            return scan;
        }
        Header::Valid { epoch, .. } => epoch,
    };
    scan.epoch = Some(epoch);
    // The slot count comes from the file's length, not the header: a
    // damaged count must not send the scan out of bounds, and a file cut
    // short keeps every copy it still holds whole.
    for slot in 0.. {
        if copy_offset(slot, 0) + COPY_LEN > buf.len() {
            break;
        }
        let mut used = false;
        for copy in 0..2 {
            let off = copy_offset(slot, copy);
            if off + COPY_LEN > buf.len() {
                continue;
            }
            match read_copy(&buf[off..off + COPY_LEN], epoch) {
                CopyRead::Empty => {}
                CopyRead::Torn => scan.torn += 1,
                CopyRead::Malformed => scan.malformed.push(off),
                CopyRead::Valid(c) => {
                    used = true;
                    scan.found.push(SlotFound {
                        offset: off,
                        copy: c,
                    });
                }
            }
        }
        scan.slots_used += u64::from(used);
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MessageId, Timestamp};
    use crate::pure::mark::UnreadFlag;
    use proptest::prelude::*;

    fn copy(seq: u64) -> Copy {
        Copy {
            seq,
            conversation: 2,
            user: 3,
            joined_seq: 4,
            state: MarkState::from_mark(MessageId(5), Timestamp(6)),
        }
    }

    #[test]
    fn golden_copy() {
        let mut b = [0u8; COPY_LEN];
        encode_copy(&mut b, 9, &copy(1));
        assert_eq!(b[COPY_VERSION], COPY_FORMAT);
        assert_eq!(b[COPY_STATE_LEN], 18);
        assert_eq!(&b[COPY_SEQ..COPY_CONVERSATION], &1u64.to_be_bytes());
        assert_eq!(&b[COPY_CONVERSATION..COPY_USER], &2u64.to_be_bytes());
        assert_eq!(&b[COPY_USER..COPY_JOINED_SEQ], &3u64.to_be_bytes());
        assert_eq!(&b[COPY_JOINED_SEQ..COPY_STATE], &4u64.to_be_bytes());
        assert_eq!(
            &b[COPY_STATE..COPY_STATE + 18],
            MarkState::from_mark(MessageId(5), Timestamp(6)).encode()
        );
        assert!(b[COPY_STATE + 18..].iter().all(|&x| x == 0));
        assert_eq!(read_copy(&b, 9), CopyRead::Valid(copy(1)));
        // Another epoch: the checksum fails.
        assert_eq!(read_copy(&b, 10), CopyRead::Torn);
    }

    #[test]
    fn golden_layout() {
        assert_eq!((SLOTS_PER_SECTOR, SLOTS_PER_PAGE), (3, 24));
        assert_eq!(copy_offset(0, 0), 4096);
        assert_eq!(copy_offset(0, 1), 4096 + 80);
        assert_eq!(copy_offset(2, 1), 4096 + 2 * 160 + 80);
        assert_eq!(copy_offset(3, 0), 4096 + 512);
        assert_eq!(copy_offset(23, 1), 4096 + 7 * 512 + 2 * 160 + 80);
        assert_eq!(copy_offset(24, 0), 8192);
        assert_eq!(file_len(24), 8192);
        assert_eq!(file_len(25), 12288);
        assert_eq!(slots_in(file_len(25)), 48);
        // No copy straddles a sector.
        for slot in 0..SLOTS_PER_PAGE * 2 {
            for copy in 0..2 {
                let o = copy_offset(slot, copy);
                assert_eq!(
                    o / SECTOR,
                    (o + COPY_LEN - 1) / SECTOR,
                    "slot {slot} copy {copy}"
                );
            }
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut b = [0u8; COPY_LEN];
        let c = Copy {
            state: MarkState::from_mark(MessageId(5), Timestamp(6)).join(MarkState::from_flag(
                UnreadFlag {
                    time: 7,
                    set: true,
                    pos: Some(5),
                },
            )),
            ..copy(3)
        };
        encode_copy(&mut b, 1, &c);
        for i in 0..COPY_LEN * 8 {
            let mut d = b;
            d[i / 8] ^= 1 << (i % 8);
            assert!(
                !matches!(read_copy(&d, 1), CopyRead::Valid(_)),
                "flip of bit {i} went unnoticed"
            );
        }
    }

    #[test]
    fn both_copies_are_found_and_a_torn_one_falls_back() {
        let mut file = vec![0u8; file_len(30)];
        write_header(&mut file, 5, 30);
        let mut b = [0u8; COPY_LEN];
        encode_copy(&mut b, 5, &copy(10));
        let o0 = copy_offset(27, 0);
        file[o0..o0 + COPY_LEN].copy_from_slice(&b);
        encode_copy(&mut b, 5, &copy(11));
        let o1 = copy_offset(27, 1);
        file[o1..o1 + COPY_LEN].copy_from_slice(&b);
        let s = scan_slots(&file);
        let seqs: Vec<u64> = s.found.iter().map(|f| f.copy.seq).collect();
        assert_eq!((seqs, s.slots_used), (vec![10, 11], 1));
        // Tear the newer copy: the older one is replayed.
        file[o1 + 50] ^= 0xFF;
        let s = scan_slots(&file);
        assert_eq!((s.found.len(), s.found[0].copy.seq, s.torn), (1, 10, 1));
    }

    #[test]
    fn headers() {
        assert_eq!(read_header(&[0u8; 10]), Header::Blank);
        assert_eq!(read_header(&vec![0u8; HEADER_LEN]), Header::Blank);
        let mut h = vec![0u8; HEADER_LEN];
        write_header(&mut h, 3, 100);
        assert_eq!(
            read_header(&h),
            Header::Valid {
                epoch: 3,
                slots: 100
            }
        );
        h[HEADER_EPOCH] ^= 1;
        assert_eq!(read_header(&h), Header::Invalid);
    }

    proptest! {
        /// Any bytes: the scan stays in bounds and never panics, and every
        /// copy it returns is one a writer could have encoded.
        #[test]
        fn scan_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            let s = scan_slots(&bytes);
            for f in s.found {
                let mut b = [0u8; COPY_LEN];
                encode_copy(&mut b, s.epoch.unwrap_or(0), &f.copy);
                prop_assert_eq!(&b[..], &bytes[f.offset..f.offset + COPY_LEN]);
            }
        }
    }
}
