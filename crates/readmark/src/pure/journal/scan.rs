//! Recovery: reading the frames of a segment, and deciding what a bad frame
//! means.
//!
//! A frame that does not validate is either
//! - a **torn tail**: the end of what was being written when the process or
//!   the machine stopped. Nothing after it was ever synced, so it was never
//!   acknowledged at [`Durability::PowerLoss`](crate::Durability), and a
//!   process crash can only tear the last frame (appends are serialised).
//!   Recovery keeps everything before it and logs the truncation.
//! - **corruption**: damage to data that had been synced. It is recognised
//!   by a later valid frame whose `synced` field is at least the sequence
//!   number of the bad frame: the bad frame had been fsynced before that
//!   later frame was written, so no crash explains the hole.
//!   Strict recovery refuses; tolerant recovery skips the hole and keeps
//!   every valid frame.

use super::frame::{
    FRAME_ALIGN, FRAME_HEADER_LEN, FrameAt, SEGMENT_HEADER_LEN, read_frame, read_header,
};

/// How a segment's log ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// An end marker (or the end of the segment) at `offset`.
    Clean { offset: usize },
    /// A torn write at `offset`; nothing after it was synced.
    TornTail { offset: usize },
    /// Damage to synced data at `offset` (strict mode stops here).
    Corrupt { offset: usize },
}

/// One recovered frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Recovered<'a> {
    pub(crate) seq: u64,
    pub(crate) payload: &'a [u8],
    pub(crate) offset: usize,
}

/// The result of scanning one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Scan<'a> {
    /// `(epoch, first_seq)` from the header; `None` for an unused or
    /// damaged header (the segment then holds nothing to replay: a header is
    /// only rewritten when the segment's previous contents were retired).
    pub(crate) header: Option<(u64, u64)>,
    pub(crate) frames: Vec<Recovered<'a>>,
    pub(crate) end: ScanEnd,
    /// Byte ranges skipped over in tolerant mode.
    pub(crate) skipped: Vec<(usize, usize)>,
}

/// Reads every frame of a segment image.
pub(crate) fn scan_segment(buf: &[u8], tolerant: bool) -> Scan<'_> {
    let mut scan = Scan {
        header: read_header(buf),
        frames: Vec::new(),
        end: ScanEnd::Clean { offset: 0 },
        skipped: Vec::new(),
    };
    let Some((epoch, first_seq)) = scan.header else {
        return scan;
    };
    let mut off = SEGMENT_HEADER_LEN;
    let mut expected = first_seq;
    loop {
        let rest = buf.get(off..).unwrap_or_default();
        match read_frame(rest, epoch) {
            FrameAt::End => {
                scan.end = ScanEnd::Clean { offset: off };
                return scan;
            }
            FrameAt::Valid {
                seq, payload, size, ..
            } if seq == expected => {
                scan.frames.push(Recovered {
                    seq,
                    payload,
                    offset: off,
                });
                expected = seq.saturating_add(1);
                off += size;
            }
            _ => match find_synced_successor(buf, off, epoch, expected) {
                None => {
                    scan.end = ScanEnd::TornTail { offset: off };
                    return scan;
                }
                Some(_) => {
                    if !tolerant {
                        scan.end = ScanEnd::Corrupt { offset: off };
                        return scan;
                    }
                    // Resume at the first valid frame after the hole, not
                    // at the proof: frames between them may be intact.
                    let (next_off, next_seq) =
                        find_next_valid(buf, off, epoch, expected).unwrap_or((buf.len(), expected));
                    scan.skipped.push((off, next_off));
                    off = next_off;
                    expected = next_seq;
                }
            },
        }
    }
}

/// The first valid frame of `epoch` after `from` with `seq >= min_seq`.
fn find_next_valid(buf: &[u8], from: usize, epoch: u64, min_seq: u64) -> Option<(usize, u64)> {
    let mut probe = from + FRAME_ALIGN;
    while probe + FRAME_HEADER_LEN <= buf.len() {
        if let FrameAt::Valid { seq, .. } = read_frame(&buf[probe..], epoch)
            && seq >= min_seq
        {
            return Some((probe, seq));
        }
        probe += FRAME_ALIGN;
    }
    None
}

/// The first valid frame after `from` whose `synced` covers `hole_seq`, if
/// any: proof that the frame at `from` had been synced and is damaged.
fn find_synced_successor(
    buf: &[u8],
    from: usize,
    epoch: u64,
    hole_seq: u64,
) -> Option<(usize, u64)> {
    let mut probe = from + FRAME_ALIGN;
    while probe + FRAME_HEADER_LEN <= buf.len() {
        if let FrameAt::Valid { seq, synced, .. } = read_frame(&buf[probe..], epoch)
            && seq > hole_seq
            && synced >= hole_seq
        {
            return Some((probe, seq));
        }
        probe += FRAME_ALIGN;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::frame::{frame_size, write_frame, write_header};
    use super::*;

    /// A segment with frames of payload `[i; 10]`, each frame's `synced`
    /// given by `synced(i)`.
    fn segment(n: u64, synced: impl Fn(u64) -> u64) -> (Vec<u8>, Vec<usize>) {
        let mut buf = vec![0u8; 4096];
        write_header(&mut buf, 5, 1);
        let mut off = SEGMENT_HEADER_LEN;
        let mut offsets = Vec::new();
        for seq in 1..=n {
            let size = frame_size(10);
            #[allow(clippy::cast_possible_truncation)]
            write_frame(
                &mut buf[off..off + size],
                5,
                seq,
                synced(seq),
                &[seq as u8; 10],
            );
            offsets.push(off);
            off += size;
        }
        (buf, offsets)
    }

    #[test]
    fn clean_log() {
        let (buf, offsets) = segment(4, |_| 0);
        let s = scan_segment(&buf, false);
        assert_eq!(s.frames.len(), 4);
        assert_eq!(
            s.end,
            ScanEnd::Clean {
                offset: offsets[3] + frame_size(10)
            }
        );
    }

    #[test]
    fn torn_last_frame_is_truncated() {
        let (mut buf, offsets) = segment(4, |_| 0);
        buf[offsets[3] + FRAME_HEADER_LEN + 2] ^= 0xFF;
        let s = scan_segment(&buf, false);
        assert_eq!(s.frames.len(), 3);
        assert_eq!(s.end, ScanEnd::TornTail { offset: offsets[3] });
    }

    #[test]
    fn unsynced_hole_is_a_torn_tail() {
        // Frame 2 lost, frames 3-4 survived, but none of them was synced
        // (power loss with pages written back out of order).
        let (mut buf, offsets) = segment(4, |_| 1);
        buf[offsets[1] + FRAME_HEADER_LEN] ^= 1;
        let s = scan_segment(&buf, false);
        assert_eq!(s.frames.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![1]);
        assert_eq!(s.end, ScanEnd::TornTail { offset: offsets[1] });
    }

    #[test]
    fn synced_hole_is_corruption() {
        // Frames 3 and 4 were written after frame 2 had been synced: damage.
        let (mut buf, offsets) = segment(4, |seq| seq.saturating_sub(1).min(2));
        buf[offsets[1] + FRAME_HEADER_LEN] ^= 1;
        let s = scan_segment(&buf, false);
        assert_eq!(s.end, ScanEnd::Corrupt { offset: offsets[1] });
        let t = scan_segment(&buf, true);
        assert_eq!(
            t.frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        assert_eq!(t.skipped.len(), 1);
    }

    /// Regression (review): tolerant recovery jumped straight to the frame
    /// proving the corruption and dropped intact frames in between.
    #[test]
    fn tolerant_keeps_intact_frames_before_the_proof() {
        // Frame 3 was written before frame 2's sync completed (synced = 1),
        // frame 4 after (synced = 3).
        let (mut buf, offsets) = segment(4, |seq| [0, 0, 1, 1, 3][seq as usize]);
        buf[offsets[1] + FRAME_HEADER_LEN] ^= 1;
        let t = scan_segment(&buf, true);
        assert_eq!(
            t.frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
    }

    #[test]
    fn stale_frames_of_an_old_epoch_are_not_replayed() {
        let (mut buf, offsets) = segment(4, |_| 0);
        // Reuse: new epoch, one frame, then the old frames' bytes remain.
        write_header(&mut buf, 6, 10);
        let size = frame_size(10);
        let off = SEGMENT_HEADER_LEN;
        write_frame(&mut buf[off..off + size], 6, 10, 0, &[9; 10]);
        let s = scan_segment(&buf, false);
        assert_eq!(s.frames.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![10]);
        assert_eq!(s.end, ScanEnd::TornTail { offset: offsets[1] });
    }

    #[test]
    fn damaged_header_means_nothing_to_replay() {
        let (mut buf, _) = segment(2, |_| 0);
        buf[3] ^= 1;
        let s = scan_segment(&buf, false);
        assert!(s.header.is_none() && s.frames.is_empty());
    }
}
