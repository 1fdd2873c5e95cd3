//! Journal frames and segment headers: encoding and validation.
//!
//! ```text
//! segment header (SEGMENT_HEADER_LEN = 32 bytes)
//! 0                8                16                  24          28         32
//! | magic (8)      | epoch (u64 BE) | first_seq (u64 BE)| crc (u32)  | zero (4) |
//!   crc = crc32(bytes 0..24); first_seq = seq of the segment's first frame
//!
//! frame (8-byte aligned; FRAME_HEADER_LEN = 24 bytes + payload + padding)
//! 0            4            8                16               24
//! | len (u32)  | crc (u32)  | seq (u64 BE)   | synced (u64 BE)| payload (len) | pad to 8 |
//!   len = 0 marks the end of the log
//!   crc = crc32(epoch BE ‖ bytes 8..24+len): a frame left over from an
//!         earlier use of the segment (another epoch) never validates
//! ```
//!
//! `seq` numbers frames 1, 2, 3, ... across the whole journal; `synced` is
//! the highest `seq` known fsynced when the frame was written. Recovery uses
//! it to tell a hole in unsynced data (a torn tail after power loss) from
//! damage to data that had been synced (corruption).

use byteorder::{BigEndian, ByteOrder};

/// Magic bytes opening every segment ("readmark journal, layout 1").
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"RDMKJNL1";
pub(crate) const HEADER_MAGIC: usize = 0;
pub(crate) const HEADER_EPOCH: usize = 8;
pub(crate) const HEADER_FIRST_SEQ: usize = 16;
pub(crate) const HEADER_CRC: usize = 24;
pub(crate) const SEGMENT_HEADER_LEN: usize = 32;

pub(crate) const FRAME_LEN: usize = 0;
pub(crate) const FRAME_CRC: usize = 4;
pub(crate) const FRAME_SEQ: usize = 8;
pub(crate) const FRAME_SYNCED: usize = 16;
pub(crate) const FRAME_HEADER_LEN: usize = 24;
/// Frames start at multiples of this.
pub(crate) const FRAME_ALIGN: usize = 8;
/// Largest payload accepted; anything larger in a length field is damage.
pub(crate) const MAX_PAYLOAD: usize = 4096;

/// Bytes a frame with `payload_len` bytes of payload occupies.
pub(crate) const fn frame_size(payload_len: usize) -> usize {
    (FRAME_HEADER_LEN + payload_len).div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

#[cfg(any(test, feature = "testing"))]
/// Writes a segment header into `buf[..SEGMENT_HEADER_LEN]`.
pub(crate) fn write_header(buf: &mut [u8], epoch: u64, first_seq: u64) {
    buf[..SEGMENT_HEADER_LEN].fill(0);
    buf[HEADER_MAGIC..HEADER_EPOCH].copy_from_slice(SEGMENT_MAGIC);
    BigEndian::write_u64(&mut buf[HEADER_EPOCH..HEADER_FIRST_SEQ], epoch);
    BigEndian::write_u64(&mut buf[HEADER_FIRST_SEQ..HEADER_CRC], first_seq);
    let crc = crc32fast::hash(&buf[..HEADER_CRC]);
    BigEndian::write_u32(&mut buf[HEADER_CRC..HEADER_CRC + 4], crc);
}

/// `(epoch, first_seq)` of a valid header, `None` if absent or damaged.
pub(crate) fn read_header(buf: &[u8]) -> Option<(u64, u64)> {
    if buf.len() < SEGMENT_HEADER_LEN || &buf[HEADER_MAGIC..HEADER_EPOCH] != SEGMENT_MAGIC {
        return None;
    }
    let crc = BigEndian::read_u32(&buf[HEADER_CRC..HEADER_CRC + 4]);
    (crc == crc32fast::hash(&buf[..HEADER_CRC])).then(|| {
        (
            BigEndian::read_u64(&buf[HEADER_EPOCH..HEADER_FIRST_SEQ]),
            BigEndian::read_u64(&buf[HEADER_FIRST_SEQ..HEADER_CRC]),
        )
    })
}

fn frame_crc(epoch: u64, covered: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_be_bytes());
    h.update(covered);
    h.finalize()
}

#[cfg(any(test, feature = "testing"))]
/// Encodes a frame into `buf`, which must be exactly `frame_size(payload.len())`.
pub(crate) fn write_frame(buf: &mut [u8], epoch: u64, seq: u64, synced: u64, payload: &[u8]) {
    debug_assert_eq!(buf.len(), frame_size(payload.len()));
    let end = FRAME_HEADER_LEN + payload.len();
    #[allow(clippy::cast_possible_truncation)] // payload <= MAX_PAYLOAD
    BigEndian::write_u32(&mut buf[FRAME_LEN..FRAME_CRC], payload.len() as u32);
    BigEndian::write_u64(&mut buf[FRAME_SEQ..FRAME_SYNCED], seq);
    BigEndian::write_u64(&mut buf[FRAME_SYNCED..FRAME_HEADER_LEN], synced);
    buf[FRAME_HEADER_LEN..end].copy_from_slice(payload);
    buf[end..].fill(0);
    let crc = frame_crc(epoch, &buf[FRAME_SEQ..end]);
    BigEndian::write_u32(&mut buf[FRAME_CRC..FRAME_SEQ], crc);
}

/// What sits at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameAt<'a> {
    /// A valid frame of this epoch.
    Valid {
        seq: u64,
        synced: u64,
        payload: &'a [u8],
        size: usize,
    },
    /// A zero length field (or no room for a header): the log ends here.
    End,
    /// Anything else: a torn write, damage, or a frame of another epoch.
    Invalid,
}

/// Decodes the frame at the start of `buf` (the rest of the segment).
pub(crate) fn read_frame(buf: &[u8], epoch: u64) -> FrameAt<'_> {
    if buf.len() < FRAME_HEADER_LEN {
        return FrameAt::End;
    }
    let len = BigEndian::read_u32(&buf[FRAME_LEN..FRAME_CRC]) as usize;
    if len == 0 {
        // A zero length with a non-zero rest of the header is damage, not
        // an end marker (an end marker is written as 24 zero bytes).
        return if buf[..FRAME_HEADER_LEN].iter().all(|&b| b == 0) {
            FrameAt::End
        } else {
            FrameAt::Invalid
        };
    }
    if len > MAX_PAYLOAD || frame_size(len) > buf.len() {
        return FrameAt::Invalid;
    }
    let end = FRAME_HEADER_LEN + len;
    let crc = BigEndian::read_u32(&buf[FRAME_CRC..FRAME_SEQ]);
    if crc != frame_crc(epoch, &buf[FRAME_SEQ..end]) {
        return FrameAt::Invalid;
    }
    FrameAt::Valid {
        seq: BigEndian::read_u64(&buf[FRAME_SEQ..FRAME_SYNCED]),
        synced: BigEndian::read_u64(&buf[FRAME_SYNCED..FRAME_HEADER_LEN]),
        payload: &buf[FRAME_HEADER_LEN..end],
        size: frame_size(len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_frame() {
        let mut buf = vec![0u8; frame_size(3)];
        write_frame(&mut buf, 7, 1, 0, b"abc");
        assert_eq!(buf.len(), 32);
        assert_eq!(&buf[FRAME_LEN..FRAME_CRC], &[0, 0, 0, 3]);
        assert_eq!(&buf[FRAME_SEQ..FRAME_SYNCED], &1u64.to_be_bytes());
        assert_eq!(&buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 3], b"abc");
        assert_eq!(&buf[27..], &[0; 5]);
        match read_frame(&buf, 7) {
            FrameAt::Valid {
                seq, payload, size, ..
            } => assert_eq!((seq, payload, size), (1, &b"abc"[..], 32)),
            other => panic!("{other:?}"),
        }
        // Same bytes, another epoch: not valid.
        assert_eq!(read_frame(&buf, 8), FrameAt::Invalid);
    }

    #[test]
    fn golden_header() {
        let mut buf = [0xAAu8; SEGMENT_HEADER_LEN];
        write_header(&mut buf, 0x0102, 5);
        assert_eq!(&buf[..8], SEGMENT_MAGIC);
        assert_eq!(
            &buf[HEADER_EPOCH..HEADER_FIRST_SEQ],
            &0x0102u64.to_be_bytes()
        );
        assert_eq!(&buf[HEADER_FIRST_SEQ..HEADER_CRC], &5u64.to_be_bytes());
        assert_eq!(&buf[28..], &[0; 4]);
        assert_eq!(read_header(&buf), Some((0x0102, 5)));
        buf[HEADER_EPOCH] ^= 1;
        assert_eq!(read_header(&buf), None);
        assert_eq!(read_header(&[0; SEGMENT_HEADER_LEN]), None);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = vec![0u8; frame_size(18)];
        write_frame(&mut buf, 3, 9, 4, &[5u8; 18]);
        for i in 0..FRAME_HEADER_LEN + 18 {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                assert!(
                    !matches!(read_frame(&b, 3), FrameAt::Valid { .. }),
                    "flip at byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn end_marker_and_truncation() {
        assert_eq!(read_frame(&[0u8; 40], 1), FrameAt::End);
        assert_eq!(read_frame(&[0u8; 10], 1), FrameAt::End);
        let mut buf = vec![0u8; frame_size(8)];
        write_frame(&mut buf, 1, 1, 0, &[1; 8]);
        assert_eq!(read_frame(&buf[..28], 1), FrameAt::Invalid);
    }
}
