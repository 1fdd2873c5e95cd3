//! Bodies of the `cargo fuzz` targets (`fuzz/fuzz_targets/`), kept in the
//! crate so that `tests/it/fuzz_corpus.rs` runs every checked-in corpus input
//! through them on every CI run, and decoders for external harnesses.
//! Not public API.

use crate::pure::bitset::{Bitset, ReadTimeRecord, merge_bitsets};
use crate::pure::journal::frame::{SEGMENT_HEADER_LEN, frame_size, write_frame, write_header};
use crate::pure::journal::scan::{ScanEnd, scan_segment};
use crate::pure::journal::slot::{self, Copy, encode_copy, scan_slots};
use crate::pure::mark::MarkState;
use crate::pure::merge::merge_marks;
use crate::pure::records::{ConversationRecord, MemberRecord, MessageRecord};

/// Decodes a mark value/operand; re-encodes it if it decodes.
pub fn mark_roundtrip(bytes: &[u8]) -> Option<Vec<u8>> {
    MarkState::decode(bytes).map(|s| s.encode())
}
/// Decodes then re-encodes a conversation record.
pub fn conversation_roundtrip(bytes: &[u8]) -> Option<Vec<u8>> {
    // The shorter forms of formats 2 to 5 decode too and re-encode longer
    // (with the newest message of any timeline filled in): only the
    // current form must come back byte for byte.
    ConversationRecord::decode(bytes)
        .filter(|_| bytes.len() == crate::pure::records::CONV_LEN)
        .map(|r| r.encode().to_vec())
}
/// Decodes then re-encodes a member record.
pub fn member_roundtrip(bytes: &[u8]) -> Option<Vec<u8>> {
    // The 20-byte form of format 2 decodes too and re-encodes longer.
    MemberRecord::decode(bytes)
        .filter(|_| bytes.len() == crate::pure::records::MEMBER_LEN)
        .map(|r| r.encode().to_vec())
}
/// Decodes then re-encodes a message record.
pub fn message_roundtrip(bytes: &[u8]) -> Option<Vec<u8>> {
    MessageRecord::decode(bytes).map(|r| r.encode().to_vec())
}
/// Decodes then re-encodes a journal payload.
pub fn journal_record_roundtrip(bytes: &[u8]) -> Option<Vec<u8>> {
    crate::pure::journal::record::MarkRecord::decode(bytes).map(|r| r.encode())
}
/// Decodes then re-encodes a per-message receipt bitset.
pub fn bitset_roundtrip(bytes: &[u8]) -> Option<Vec<u8>> {
    Bitset::decode(bytes).map(|b| {
        // The slot iterator and membership test agree with the bytes.
        let mut again = Bitset::new(b.sent_at);
        for s in b.slots() {
            assert!(b.contains(s));
            again.set(s);
        }
        assert_eq!(again, b, "slots() must list exactly the set bits");
        b.encode()
    })
}
/// Decodes then re-encodes a read-time record.
pub fn read_time_roundtrip(bytes: &[u8]) -> Option<Vec<u8>> {
    ReadTimeRecord::decode(bytes).map(|r| r.encode().to_vec())
}
/// Decodes and re-encodes a change-log record.
pub fn change_roundtrip(bytes: &[u8]) -> Option<Vec<u8>> {
    crate::pure::records::ChangeRecord::decode(bytes).map(|r| r.encode().to_vec())
}
/// Decodes and re-encodes a user-settings record.
pub fn user_settings_roundtrip(bytes: &[u8]) -> Option<Vec<u8>> {
    crate::pure::records::decode_user_settings(bytes)
        .map(|p| crate::pure::records::encode_user_settings(p).to_vec())
}
/// Decodes and re-encodes a catch-up cursor (client input).
pub fn cursor_roundtrip(bytes: &[u8]) -> Option<Vec<u8>> {
    crate::pure::cursor::Cursor::from_bytes(bytes)
        .ok()
        .map(|c| c.to_bytes().to_vec())
}
/// Decodes a pair key.
pub fn pair_key(bytes: &[u8]) -> Option<(u64, u64)> {
    crate::pure::keys::decode_pair_key(bytes)
}

/// Scans a journal segment image (strict mode): the `(offset, size)` of
/// every valid frame, and how the log ends (`"clean"`, `"torn"`,
/// `"corrupt"`) with its offset.
pub fn journal_scan(bytes: &[u8]) -> (Vec<(usize, usize)>, &'static str, usize) {
    let scan = scan_segment(bytes, false);
    let frames = scan
        .frames
        .iter()
        .map(|f| (f.offset, frame_size(f.payload.len())))
        .collect();
    let (kind, off) = match scan.end {
        ScanEnd::Clean { offset } => ("clean", offset),
        ScanEnd::TornTail { offset } => ("torn", offset),
        ScanEnd::Corrupt { offset } => ("corrupt", offset),
    };
    (frames, kind, off)
}

/// What a scan of a slot-journal image found: `(offset, conversation,
/// user, up_to, seq)` of every valid copy, copies
/// whose checksum fails, offsets of copies whose checksum holds but whose
/// content is invalid, and the header's epoch (`None`: blank or damaged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotSummary {
    /// `(offset, conversation, user, up_to, seq)` per valid copy.
    pub found: Vec<(usize, u64, u64, Option<u64>, u64)>,
    /// Copies whose checksum fails.
    pub torn: u64,
    /// Copies whose checksum holds but whose content does not decode.
    pub malformed: Vec<usize>,
    /// The header's epoch.
    pub epoch: Option<u64>,
    /// The header is neither blank nor valid.
    pub bad_header: bool,
}

/// Scans a slot-journal image.
pub fn slot_scan(bytes: &[u8]) -> SlotSummary {
    let s = scan_slots(bytes);
    SlotSummary {
        found: s
            .found
            .iter()
            .map(|f| {
                (
                    f.offset,
                    f.copy.conversation,
                    f.copy.user,
                    f.copy.state.mark.map(|m| m.up_to.0),
                    f.copy.seq,
                )
            })
            .collect(),
        torn: s.torn,
        malformed: s.malformed,
        epoch: s.epoch,
        bad_header: s.bad_header,
    }
}

/// The bytes of one slot copy with a valid checksum for `epoch` and
/// `state` written verbatim (so a test can plant a copy whose content does
/// not decode), and the file offset of copy `copy` of slot `slot`.
pub fn slot_copy(epoch: u64, seq: u64, conversation: u64, user: u64, state: &[u8]) -> Vec<u8> {
    let mut out = [0u8; slot::COPY_LEN];
    encode_copy(
        &mut out,
        epoch,
        &Copy {
            seq,
            conversation,
            user,
            joined_seq: 0,
            state: MarkState::default(),
        },
    );
    let n = state.len().min(slot::COPY_LEN - slot::COPY_STATE);
    out[slot::COPY_STATE..slot::COPY_STATE + n].copy_from_slice(&state[..n]);
    #[allow(clippy::cast_possible_truncation)]
    {
        out[slot::COPY_STATE_LEN] = n as u8;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_be_bytes());
    h.update(&out[slot::COPY_VERSION..]);
    out[..4].copy_from_slice(&h.finalize().to_be_bytes());
    out.to_vec()
}

/// File offset of copy `copy` of slot `slot`.
#[must_use]
pub fn slot_offset(slot: usize, copy: usize) -> usize {
    slot::copy_offset(slot, copy)
}

/// Target `slots`: the slot journal's scan on arbitrary images never
/// panics, stays in bounds and returns only copies a writer could have
/// encoded; on a well-formed image damaged at an input-chosen byte, every
/// copy the damage missed is found, and nothing that was not written.
pub fn slots_target(data: &[u8]) {
    let scan = scan_slots(data);
    for f in &scan.found {
        let mut b = [0u8; slot::COPY_LEN];
        encode_copy(&mut b, scan.epoch.unwrap_or(0), &f.copy);
        assert_eq!(&b[..], &data[f.offset..f.offset + slot::COPY_LEN]);
    }
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    // Few slots: every chunk of the input lands on one, collisions
    // included, and a scan costs a sixth of what 48 slots did (the target
    // ran at 8 K executions per second).
    let slots = 8;
    let mut file = vec![0u8; slot::file_len(slots)];
    slot::write_header(&mut file, 5, slots as u64);
    // Per slot: the states written to copy 0 and copy 1, and which is newer.
    let mut written: Vec<[Option<Copy>; 2]> = vec![[None, None]; slots];
    let mut seq = 0u64;
    for chunk in rest.chunks(3).take(200) {
        let (slot, copy, v) = (
            usize::from(chunk[0]) % slots,
            usize::from(chunk.get(1).copied().unwrap_or(0) & 1),
            u64::from(chunk.get(2).copied().unwrap_or(0)),
        );
        seq += 1;
        let c = Copy {
            seq,
            conversation: 1,
            user: slot as u64,
            joined_seq: 0,
            state: MarkState::from_mark(crate::MessageId(v), crate::Timestamp(seq)),
        };
        let off = slot::copy_offset(slot, copy);
        let mut b = [0u8; slot::COPY_LEN];
        encode_copy(&mut b, 5, &c);
        file[off..off + slot::COPY_LEN].copy_from_slice(&b);
        written[slot][copy] = Some(c);
    }
    let hit = slot::HEADER_LEN + usize::from(ctl) * 97 % (file.len() - slot::HEADER_LEN);
    file[hit] ^= 0x5A;
    let scan = scan_slots(&file);
    for f in &scan.found {
        let slot = usize::try_from(f.copy.user).unwrap_or(usize::MAX);
        assert!(
            written[slot].iter().flatten().any(|c| *c == f.copy),
            "a copy that was never written"
        );
    }
    // Every copy the damage missed is found: the newest state of each slot
    // survives unless the damage hit that very copy.
    for (slot, copies) in written.iter().enumerate() {
        for (i, c) in copies.iter().enumerate() {
            let Some(c) = c else { continue };
            let off = slot::copy_offset(slot, i);
            if !(off..off + slot::COPY_LEN).contains(&hit) {
                assert!(
                    scan.found.iter().any(|f| f.offset == off && f.copy == *c),
                    "an intact copy was lost"
                );
            }
        }
    }
}

/// A format-3 journal segment of `len` bytes holding one frame per
/// `(conversation, user, up_to, at)`: what a store of that format left
/// behind, for upgrade tests.
#[must_use]
pub fn legacy_segment(epoch: u64, len: usize, marks: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    let mut seg = vec![0u8; len];
    write_header(&mut seg, epoch, 1);
    let mut off = SEGMENT_HEADER_LEN;
    for (i, &(c, u, up_to, at)) in marks.iter().enumerate() {
        let payload = crate::pure::journal::record::MarkRecord {
            conversation: c,
            user: u,
            state: MarkState::from_mark(crate::MessageId(up_to), crate::Timestamp(at)),
        }
        .encode();
        let size = frame_size(payload.len());
        let seq = i as u64 + 1;
        write_frame(&mut seg[off..off + size], epoch, seq, seq, &payload);
        off += size;
    }
    seg
}

/// Target `merge_marks`: the merge function on arbitrary inputs never
/// panics, always yields a value that decodes, and gives the same value
/// however the operands are grouped or ordered.
pub fn merge_marks_target(data: &[u8]) {
    // Operands are separated by 0xFF; the first part, if not empty, is the
    // base value.
    let parts: Vec<&[u8]> = data.split(|&b| b == 0xFF).collect();
    let (base, ops) = match parts.split_first() {
        Some((b, rest)) if !b.is_empty() => (Some(*b), rest),
        _ => (None, &parts[..]),
    };
    let all = merge_marks(base, ops.iter().copied());
    assert!(
        MarkState::decode(&all.value).is_some(),
        "merge output must decode"
    );
    let mid = ops.len() / 2;
    let left = merge_marks(base, ops[..mid].iter().copied());
    let right = merge_marks(None, ops[mid..].iter().copied());
    let grouped = merge_marks(Some(&left.value), [right.value.as_slice()]);
    assert_eq!(
        all.value, grouped.value,
        "partial merges must not change the result"
    );
    let reversed = merge_marks(base, ops.iter().rev().copied());
    assert_eq!(
        all.value, reversed.value,
        "order must not change the result"
    );
    assert_eq!(all.skipped, left.skipped + right.skipped);
}

/// Target `merge_receipts`: the bitset OR merge on arbitrary inputs never
/// panics, always yields a value that decodes, gives the same value however
/// the operands are grouped or ordered, and holds exactly the union of the
/// slots of the inputs that decode.
pub fn merge_receipts_target(data: &[u8]) {
    let parts: Vec<&[u8]> = data.split(|&b| b == 0xFE).collect();
    let (base, ops) = match parts.split_first() {
        Some((b, rest)) if !b.is_empty() => (Some(*b), rest),
        _ => (None, &parts[..]),
    };
    let all = merge_bitsets(base, ops.iter().copied());
    let merged = Bitset::decode(&all.value).expect("merge output must decode");
    let mid = ops.len() / 2;
    let left = merge_bitsets(base, ops[..mid].iter().copied());
    let right = merge_bitsets(None, ops[mid..].iter().copied());
    let grouped = merge_bitsets(Some(&left.value), [right.value.as_slice()]);
    assert_eq!(
        all.value, grouped.value,
        "partial merges must not change the result"
    );
    let reversed = merge_bitsets(base, ops.iter().rev().copied());
    assert_eq!(
        all.value, reversed.value,
        "order must not change the result"
    );
    assert_eq!(all.skipped, left.skipped + right.skipped);
    // The model: a fixed array of every slot, set bit by bit from each
    // decoded input (not by OR of bytes, the code under test's way).
    let mut union = [false; crate::pure::bitset::MAX_SLOTS as usize];
    for input in base.into_iter().chain(ops.iter().copied()) {
        if let Some(b) = Bitset::decode(input) {
            for s in b.slots() {
                union[usize::from(s)] = true;
            }
        }
    }
    assert!(
        merged
            .slots()
            .eq((0u16..).zip(union).filter_map(|(s, set)| set.then_some(s))),
        "merge must be the union"
    );
}

/// Target `decoders`: every on-disk decoder on arbitrary bytes never panics,
/// and whatever decodes re-encodes to the same bytes (one canonical form).
pub fn decoders_target(data: &[u8]) {
    for roundtrip in [
        mark_roundtrip,
        conversation_roundtrip,
        member_roundtrip,
        message_roundtrip,
        journal_record_roundtrip,
        bitset_roundtrip,
        read_time_roundtrip,
        change_roundtrip,
        user_settings_roundtrip,
        cursor_roundtrip,
    ] {
        if let Some(again) = roundtrip(data) {
            assert_eq!(again, data, "decode/encode must round-trip");
        }
    }
    if let Some((a, b)) = pair_key(data) {
        let mut k = a.to_be_bytes().to_vec();
        k.extend_from_slice(&b.to_be_bytes());
        assert_eq!(k, data);
    }
    // A cursor as text: any string, never a panic; what parses prints back
    // to a string that parses to the same cursor.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(c) = text.parse::<crate::pure::cursor::Cursor>()
    {
        assert_eq!(
            c.to_string().parse::<crate::pure::cursor::Cursor>().ok(),
            Some(c)
        );
    }
}

/// Target `journal`: the recovery scan on arbitrary segment images never
/// panics and stays in bounds; on a well-formed segment damaged at an
/// input-chosen place, strict recovery returns a prefix of what was written
/// and tolerant recovery a superset of strict's, never a frame that was
/// not written.
pub fn journal_target(data: &[u8]) {
    for tolerant in [false, true] {
        let scan = scan_segment(data, tolerant);
        for f in &scan.frames {
            assert!(f.offset + f.payload.len() <= data.len());
        }
    }
    // A valid segment built from the input, then damaged.
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let mut seg = vec![0u8; 4096];
    write_header(&mut seg, 7, 1);
    let mut off = SEGMENT_HEADER_LEN;
    let mut written = Vec::new();
    for (i, chunk) in rest.chunks(9).take(40).enumerate() {
        let size = frame_size(chunk.len());
        if off + size + 24 > seg.len() {
            break;
        }
        let seq = i as u64 + 1;
        // `synced` lags by a control-chosen distance.
        let synced = seq.saturating_sub(1 + u64::from(ctl % 4));
        write_frame(&mut seg[off..off + size], 7, seq, synced, chunk);
        written.push((off, chunk.to_vec()));
        off += size;
    }
    // The frames and 128 zero bytes after them (what the
    // `regression-strict-prefix` input needs), not the rest of the page:
    // tolerant recovery tries to resynchronise at every offset, and the
    // target ran at 8 K executions per second.
    seg.truncate(off + 128);
    let damage_at = SEGMENT_HEADER_LEN + usize::from(ctl) * 7 % (off - SEGMENT_HEADER_LEN + 1);
    if damage_at < seg.len() {
        seg[damage_at] ^= 0x5A;
    }
    let strict = scan_segment(&seg, false);
    for (i, f) in strict.frames.iter().enumerate() {
        assert_eq!(
            (f.offset, f.payload),
            (written[i].0, written[i].1.as_slice()),
            "strict recovery returns a prefix"
        );
    }
    // Tolerant recovery keeps everything strict recovery keeps. Past the
    // damage it resynchronises on whatever validates, and that is all it can
    // promise: the fuzzer found (fuzz/corpus/journal/regression-strict-prefix)
    // that written payload bytes plus the zeros after them can form a
    // frame with this segment's epoch and a matching CRC, which tolerant
    // recovery then returns. See docs/design.md §7.4 (recovery).
    let tolerant = scan_segment(&seg, true);
    assert!(tolerant.frames.len() >= strict.frames.len());
    assert_eq!(&tolerant.frames[..strict.frames.len()], &strict.frames[..]);
}

#[cfg(feature = "store")]
pub use api::{api_restart_target, api_target};

#[cfg(feature = "store")]
mod api {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use crate::{
        Config, ConversationId, Durability, Error, MessageId, Page, ReceiptSource, Store, Timeline,
        Timestamp, UserId,
    };

    const CONVS: u64 = 3;
    const USERS: u64 = 4;

    #[derive(Default)]
    struct Model {
        convs: BTreeSet<u64>,
        /// (conv, user) -> joined_after
        members: BTreeMap<(u64, u64), Option<u64>>,
        /// conv -> [(id, sender, deleted)]
        /// conversation -> (id, sender, deleted, system kind)
        msgs: BTreeMap<u64, Vec<(u64, u64, bool, bool)>>,
        /// Conversations not in per-message mode (more than 2 members at
        /// their last membership change).
        large: BTreeSet<u64>,
        /// (conv, message): recorded in per-message mode.
        tracked: BTreeSet<(u64, u64)>,
        /// (conv, user, message): single views the store recorded.
        views: BTreeSet<(u64, u64, u64)>,
        /// (conv, user) -> (up_to, at): what reads must show
        marks: BTreeMap<(u64, u64), (u64, u64)>,
        /// (conv, user) -> highest up_to acknowledged at ProcessCrash or
        /// above (or written by a flush): a crash may not go below it.
        floor: BTreeMap<(u64, u64), u64>,
        /// Every up_to written per key since its membership began.
        written: BTreeMap<(u64, u64), BTreeSet<u64>>,
        /// Users with receipts private everywhere.
        private_all: BTreeSet<u64>,
        /// (conv, user) private in that conversation (ends with the
        /// membership).
        private_here: BTreeSet<(u64, u64)>,
        /// (conv, root) -> [(id, sender, deleted)]: thread replies.
        thread_msgs: BTreeMap<(u64, u64), Replies>,
        /// (conv, root, user) -> up_to: thread marks (all acknowledged at
        /// `ProcessCrash`, so they survive a simulated crash).
        thread_marks: BTreeMap<(u64, u64, u64), u64>,
    }

    /// A thread's replies: (id, sender, deleted).
    type Replies = Vec<(u64, u64, bool)>;

    impl Model {
        fn private(&self, conv: u64, user: u64) -> bool {
            self.private_all.contains(&user) || self.private_here.contains(&(conv, user))
        }

        /// The newest message of any of `conv`'s timelines.
        fn newest(&self, conv: u64) -> Option<u64> {
            let main = self.msgs.get(&conv).and_then(|v| v.last()).map(|x| x.0);
            self.thread_msgs
                .iter()
                .filter(|(k, _)| k.0 == conv)
                .filter_map(|(_, v)| v.last().map(|x| x.0))
                .chain(main)
                .max()
        }
    }

    fn join(m: &mut BTreeMap<(u64, u64), (u64, u64)>, k: (u64, u64), up: u64, at: u64) {
        let e = m.entry(k).or_insert((up, at));
        if up > e.0 || (up == e.0 && at < e.1) {
            *e = (up, at);
        }
    }

    fn config() -> Config {
        Config::new()
            .write_buffer_bytes(64 << 10)
            .block_cache_bytes(1 << 20)
            .flush_interval(Duration::from_secs(3600))
            .flush_after_updates(3)
            .combiner_max_bytes(4096)
            .journal_bytes(128 << 10)
            .receipt_threshold(2)
            .__newest_slots(1)
    }

    /// Inputs that share one store before it is replaced: a fresh store
    /// per input cost a RocksDB open and 14 column families each time (3
    /// executions a second); a shared one costs what the operations cost,
    /// and a bounded number of inputs keeps its reopens cheap.
    const INPUTS_PER_STORE: u64 = 64;

    /// Ids of one input: conversations and users `base..base + 16`, so
    /// inputs that share a store never see each other's state.
    const NAMESPACE: u64 = 16;

    struct Shared {
        dir: tempfile::TempDir,
        store: Option<Store>,
        inputs: u64,
    }

    static SHARED: std::sync::Mutex<Option<Shared>> = std::sync::Mutex::new(None);

    /// A directory in memory where there is one (`/dev/shm`): the store's
    /// files and the journal's mapping cost no disk I/O. The shared store
    /// is a static, never dropped, so the directories of processes that
    /// have exited (their pid is in the name) are removed here.
    fn fuzz_dir() -> Option<tempfile::TempDir> {
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            return tempfile::tempdir().ok();
        }
        if let Ok(entries) = std::fs::read_dir(shm) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name
                    .strip_prefix("readmark-fuzz-")
                    .and_then(|rest| rest.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok());
                if let Some(pid) = pid
                    && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        tempfile::Builder::new()
            .prefix(&format!("readmark-fuzz-{}-", std::process::id()))
            .tempdir_in(shm)
            .ok()
            .or_else(|| tempfile::tempdir().ok())
    }

    /// Retention is measured against a fixed clock, so every receipt of a
    /// run stays live whatever the real date.
    fn open(path: &std::path::Path) -> Store {
        let s = Store::open(path, config()).expect("open");
        s.__set_clock(Some(Timestamp(1)));
        s
    }

    fn members_of(m: &Model, conv: u64) -> usize {
        m.members.keys().filter(|k| k.0 == conv).count()
    }

    /// Target `api_ops`: the public API driven by an arbitrary operation
    /// sequence (membership, messages and thread replies, deletes, marks in
    /// main timelines and threads at every durability,
    /// single views, private receipts, flushes), checked after every step
    /// against a model: marks, unread counts, typed errors, and every
    /// message's readers (the rule of docs/design.md §5, private readers
    /// left out) and source across threshold crossings (threshold 2). No
    /// reopen: inputs share an open store, at hundreds of executions a
    /// second; [`api_restart_target`] adds close/reopen and crashes.
    pub fn api_target(data: &[u8]) {
        run_api(data, false);
    }

    /// Target `api_restart`: [`api_target`]'s operations plus close/reopen
    /// and simulated crashes (at most two of each per input), after which
    /// nothing acknowledged at its durability may be lost and no mark may
    /// be below its durable floor or above anything written. A RocksDB
    /// open costs milliseconds, so this one runs tens of inputs a second.
    pub fn api_restart_target(data: &[u8]) {
        run_api(data, true);
    }

    fn run_api(data: &[u8], restarts: bool) {
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A fresh store per input with `READMARK_FUZZ_FRESH_STORE=1`, to
        // reproduce a failure alone; a fresh one too after an input that
        // panicked (its store was never put back).
        let per_store = if std::env::var_os("READMARK_FUZZ_FRESH_STORE").is_some() {
            1
        } else {
            INPUTS_PER_STORE
        };
        if shared
            .as_ref()
            .is_none_or(|s| s.inputs >= per_store || s.store.is_none())
        {
            if let Some(old) = shared.take()
                && let Some(s) = old.store
            {
                s.close().expect("close");
            }
            let Some(dir) = fuzz_dir() else { return };
            let store = Some(open(dir.path()));
            *shared = Some(Shared {
                dir,
                store,
                inputs: 0,
            });
        }
        let Some(sh) = shared.as_mut() else { return };
        sh.inputs += 1;
        let base = sh.inputs * NAMESPACE;
        let dir = sh.dir.path().to_path_buf();
        let mut store = sh.store.take();
        let mut m = Model::default();
        let mut clock = 0u64;
        let (mut crashes, mut reopens) = (0, 0);
        for op in data.chunks(4).take(64) {
            let [kind, a, b, c] = [
                op[0],
                *op.get(1).unwrap_or(&0),
                *op.get(2).unwrap_or(&0),
                *op.get(3).unwrap_or(&0),
            ];
            let s = store.as_ref().expect("store");
            let conv = u64::from(a) % CONVS;
            let user = u64::from(b) % USERS;
            let key = (conv, user);
            clock += 1;
            let (cid, uid) = (ConversationId(base + conv), UserId(base + user));
            match kind % 14 {
                12 => {
                    // A reply in the thread of a main-timeline message.
                    let Some(v) = m.msgs.get(&conv).filter(|v| !v.is_empty()) else {
                        continue;
                    };
                    let root = v[usize::from(c / 4) % v.len()].0;
                    let newest = m.newest(conv).unwrap_or(0);
                    let id = newest + u64::from(c % 4);
                    let t = Timeline::thread(cid, MessageId(root));
                    let r = s.record_message(t, MessageId(id), uid, Timestamp(clock));
                    if !m.members.contains_key(&key) {
                        assert!(matches!(r, Err(Error::NotMember { .. })), "{r:?}");
                    } else if id <= newest {
                        assert!(matches!(r, Err(Error::MessageOutOfOrder { .. })), "{r:?}");
                    } else {
                        r.expect("reply");
                        m.thread_msgs
                            .entry((conv, root))
                            .or_default()
                            .push((id, user, false));
                        let e = m.thread_marks.entry((conv, root, user)).or_insert(id);
                        *e = (*e).max(id);
                    }
                }
                13 => {
                    // A read (or a delete) in a thread.
                    let threads: Vec<(u64, u64)> = m
                        .thread_msgs
                        .keys()
                        .filter(|k| k.0 == conv)
                        .copied()
                        .collect();
                    let Some(&(_, root)) = threads.get(usize::from(c) % threads.len().max(1))
                    else {
                        continue;
                    };
                    let t = Timeline::thread(cid, MessageId(root));
                    let replies = &m.thread_msgs[&(conv, root)];
                    let (id, _, _) = replies[usize::from(c / 2) % replies.len()];
                    if a & 0x80 != 0 {
                        s.delete_message(t, MessageId(id)).expect("delete reply");
                        let v = m.thread_msgs.get_mut(&(conv, root)).expect("thread");
                        for x in v.iter_mut().filter(|x| x.0 == id) {
                            x.2 = true;
                        }
                        continue;
                    }
                    let r = s.mark_read_with(
                        t,
                        uid,
                        MessageId(id),
                        Timestamp(clock),
                        Durability::ProcessCrash,
                    );
                    if m.members.contains_key(&key) {
                        r.expect("thread read");
                        let e = m.thread_marks.entry((conv, root, user)).or_insert(id);
                        *e = (*e).max(id);
                    } else {
                        assert!(matches!(r, Err(Error::NotMember { .. })), "{r:?}");
                    }
                }
                0 => {
                    let r = s.create_conversation(cid);
                    if m.convs.insert(conv) {
                        r.expect("create");
                        m.msgs.insert(conv, Vec::new());
                    } else {
                        assert!(matches!(r, Err(Error::ConversationExists(_))));
                    }
                }
                1 => {
                    let r = s.add_member(cid, uid, Timestamp(clock));
                    if !m.convs.contains(&conv) {
                        assert!(matches!(r, Err(Error::UnknownConversation(_))));
                    } else if m.members.contains_key(&key) {
                        assert!(matches!(r, Err(Error::AlreadyMember { .. })));
                    } else {
                        r.expect("add");
                        // Thread replies before the join are history too.
                        let newest = m.newest(conv);
                        m.members.insert(key, newest);
                        if members_of(&m, conv) > 2 {
                            m.large.insert(conv);
                        }
                    }
                }
                2 => {
                    let r = s.remove_member(cid, uid);
                    if !m.convs.contains(&conv) {
                        assert!(matches!(r, Err(Error::UnknownConversation(_))));
                    } else if m.members.remove(&key).is_some() {
                        r.expect("remove");
                        m.marks.remove(&key);
                        m.floor.remove(&key);
                        m.written.remove(&key);
                        m.views.retain(|v| (v.0, v.1) != key);
                        m.private_here.remove(&key);
                        m.thread_marks.retain(|k, _| (k.0, k.2) != key);
                        if members_of(&m, conv) <= 2 {
                            m.large.remove(&conv);
                        }
                    } else {
                        assert!(matches!(r, Err(Error::NotMember { .. })));
                    }
                }
                3 => {
                    // Ids increase across the main timeline and threads.
                    let last = m.newest(conv).unwrap_or(0);
                    let id = if c == 0 { last } else { last + u64::from(c) };
                    // A system message (never unread) now and then.
                    let system = a & 0x80 != 0;
                    let kind = if system {
                        crate::MessageKind::System
                    } else {
                        crate::MessageKind::Regular
                    };
                    let r = s.record_message_with(
                        cid,
                        MessageId(id),
                        uid,
                        Timestamp(clock),
                        &crate::MessageOptions::new().kind(kind),
                    );
                    if !m.convs.contains(&conv) {
                        assert!(matches!(r, Err(Error::UnknownConversation(_))));
                    } else if !m.members.contains_key(&key) {
                        assert!(matches!(r, Err(Error::NotMember { .. })));
                    } else if m.newest(conv).is_some() && id <= last {
                        assert!(matches!(r, Err(Error::MessageOutOfOrder { .. })));
                    } else {
                        r.expect("record");
                        m.msgs
                            .get_mut(&conv)
                            .expect("conv")
                            .push((id, user, false, system));
                        if !m.large.contains(&conv) {
                            m.tracked.insert((conv, id));
                        }
                        // Structural batch with the WAL: durable like the message.
                        join(&mut m.marks, key, id, clock);
                        let f = m.floor.entry(key).or_insert(0);
                        *f = (*f).max(id);
                        m.written.entry(key).or_default().insert(id);
                    }
                }
                4 => {
                    if let Some(v) = m.msgs.get_mut(&conv)
                        && !v.is_empty()
                    {
                        let i = usize::from(c) % v.len();
                        s.delete_message(cid, MessageId(v[i].0)).expect("delete");
                        v[i].2 = true;
                    }
                }
                5 | 6 => {
                    let up = u64::from(c);
                    let level = match a / 3 % 3 {
                        0 => Durability::Memory,
                        1 => Durability::ProcessCrash,
                        _ => Durability::PowerLoss,
                    };
                    let r = s.mark_read_with(cid, uid, MessageId(up), Timestamp(clock), level);
                    if !m.convs.contains(&conv) {
                        assert!(matches!(r, Err(Error::UnknownConversation(_))));
                    } else if !m.members.contains_key(&key) {
                        assert!(matches!(r, Err(Error::NotMember { .. })));
                    } else {
                        r.expect("mark_read");
                        // Clamped to the newest message; none yet, nothing.
                        let Some(&(last, _, _, _)) = m.msgs[&conv].last() else {
                            continue;
                        };
                        let up = up.min(last);
                        join(&mut m.marks, key, up, clock);
                        m.written.entry(key).or_default().insert(up);
                        if level != Durability::Memory {
                            let f = m.floor.entry(key).or_insert(0);
                            *f = (*f).max(up);
                        }
                    }
                }
                7 => {
                    if b % 2 == 0 {
                        s.flush().expect("flush");
                    } else {
                        s.flush_key(cid, uid).expect("flush_key");
                    }
                    // Whatever is in RocksDB now survives a crash.
                    for (k, v) in &m.marks {
                        let f = m.floor.entry(*k).or_insert(0);
                        if b % 2 == 0 || *k == key {
                            *f = (*f).max(v.0);
                        }
                    }
                }
                10 => {
                    let Some(v) = m.msgs.get(&conv).filter(|v| !v.is_empty()) else {
                        continue;
                    };
                    let (id, sender, _, _) = v[usize::from(c) % v.len()];
                    let r = s.mark_viewed(cid, uid, MessageId(id), Timestamp(clock));
                    let Some(&joined_after) = m.members.get(&key) else {
                        assert!(matches!(r, Err(Error::NotMember { .. })));
                        continue;
                    };
                    let recordable = !m.large.contains(&conv)
                        && m.tracked.contains(&(conv, id))
                        && sender != user
                        && joined_after.is_none_or(|j| id > j)
                        && !m.private(conv, user);
                    assert_eq!(
                        r.expect("mark_viewed"),
                        recordable,
                        "view ({conv},{user},{id})"
                    );
                    if recordable {
                        m.views.insert((conv, user, id));
                    }
                }
                11 => {
                    let private = c & 2 == 0;
                    if c & 1 == 0 {
                        s.set_receipts_private(uid, crate::PrivacyScope::Everywhere, private)
                            .expect("private everywhere");
                        if private {
                            m.private_all.insert(user);
                        } else {
                            m.private_all.remove(&user);
                        }
                    } else {
                        let r = s.set_receipts_private(
                            uid,
                            crate::PrivacyScope::Conversation(cid),
                            private,
                        );
                        if !m.members.contains_key(&key) {
                            assert!(matches!(
                                r,
                                Err(Error::NotMember { .. } | Error::UnknownConversation(_))
                            ));
                        } else {
                            r.expect("private here");
                            if private {
                                m.private_here.insert(key);
                            } else {
                                m.private_here.remove(&key);
                            }
                        }
                    }
                }
                8 => {
                    // Reopens cost a RocksDB open each: two per input, like
                    // crashes, keep an execution in milliseconds.
                    if !restarts || reopens >= 2 {
                        continue;
                    }
                    reopens += 1;
                    store.take().expect("store").close().expect("close");
                    store = Some(open(&dir));
                    for (k, v) in &m.marks {
                        let f = m.floor.entry(*k).or_insert(0);
                        *f = (*f).max(v.0);
                    }
                }
                _ => {
                    if !restarts || crashes >= 2 {
                        continue;
                    }
                    crashes += 1;
                    store.take().expect("store").__simulate_crash();
                    let s = open(&dir);
                    // Memory-level updates may be lost: adopt what survived,
                    // after checking it is between the floor and the model.
                    for (&k, &(up, _)) in &m.marks.clone() {
                        let got = s
                            .mark(ConversationId(base + k.0), UserId(base + k.1))
                            .expect("mark");
                        let floor = m.floor.get(&k).copied();
                        match got {
                            None => assert!(floor.is_none(), "acknowledged mark {k:?} lost"),
                            Some(g) => {
                                assert!(g.up_to.0 <= up, "mark {k:?} above anything written");
                                assert!(
                                    floor.is_none_or(|f| g.up_to.0 >= f),
                                    "mark {k:?} below its durable floor"
                                );
                                assert!(
                                    m.written[&k].contains(&g.up_to.0),
                                    "mark {k:?} never written"
                                );
                                m.marks.insert(k, (g.up_to.0, g.at.0));
                            }
                        }
                        if got.is_none() {
                            m.marks.remove(&k);
                        }
                    }
                    store = Some(s);
                }
            }
            // The conversation the op touched; all of them after a
            // restart or a privacy change everywhere (kinds 8, 9, 11), and
            // at the end. A full check after every op cost O(ops x
            // messages) `read_by` calls: a third of them per op here.
            let only = match kind % 14 {
                8 | 9 | 11 => None,
                _ => Some(conv),
            };
            check(store.as_ref().expect("store"), &m, base, only);
        }
        check(store.as_ref().expect("store"), &m, base, None);
        sh.store = store;
    }

    fn check(s: &Store, m: &Model, base: u64, only: Option<u64>) {
        for conv in (0..CONVS).filter(|c| only.is_none_or(|o| o == *c)) {
            for user in 0..USERS {
                let (cid, uid) = (ConversationId(base + conv), UserId(base + user));
                let mark = s.mark(cid, uid);
                let unread = s.unread_count(cid, uid);
                match m.members.get(&(conv, user)) {
                    None => {
                        assert!(mark.is_err() && unread.is_err());
                    }
                    Some(joined_after) => {
                        let want = m.marks.get(&(conv, user)).copied();
                        let got = mark.expect("mark").map(|x| (x.up_to.0, x.at.0));
                        assert_eq!(got.map(|g| g.0), want.map(|w| w.0), "mark ({conv},{user})");
                        let seen = match (want.map(|w| w.0), *joined_after) {
                            (Some(x), Some(y)) => Some(x.max(y)),
                            (x, y) => x.or(y),
                        };
                        let count = m.msgs[&conv]
                            .iter()
                            .filter(|x| !x.2 && !x.3 && seen.is_none_or(|p| x.0 > p))
                            .count() as u64;
                        assert_eq!(
                            unread.expect("unread").count,
                            count,
                            "unread ({conv},{user})"
                        );
                    }
                }
            }
            for (&(tc, root), replies) in m.thread_msgs.iter().filter(|(k, _)| k.0 == conv) {
                let t = Timeline::thread(ConversationId(base + tc), MessageId(root));
                for user in 0..USERS {
                    let uid = UserId(base + user);
                    let (mark, unread) = (s.mark(t, uid), s.unread_count(t, uid));
                    let Some(joined_after) = m.members.get(&(conv, user)) else {
                        assert!(matches!(mark, Err(Error::NotMember { .. })));
                        assert!(matches!(unread, Err(Error::NotMember { .. })));
                        continue;
                    };
                    let want = m.thread_marks.get(&(conv, root, user)).copied();
                    let got = mark.expect("thread mark").map(|x| x.up_to.0);
                    assert_eq!(got, want, "thread mark ({conv},{root},{user})");
                    let seen = want.max(*joined_after);
                    let count = replies
                        .iter()
                        .filter(|x| !x.2 && seen.is_none_or(|p| x.0 > p))
                        .count() as u64;
                    assert_eq!(
                        unread.expect("thread unread").count,
                        count,
                        "thread unread ({conv},{root},{user})"
                    );
                }
            }
            let Some(msgs) = m.msgs.get(&conv) else {
                continue;
            };
            // Any current member may ask; a non-member is refused.
            let Some(viewer) = m.members.keys().find(|k| k.0 == conv).map(|k| k.1) else {
                continue;
            };
            for &(id, sender, _, _) in msgs {
                let want: Vec<u64> = m
                    .members
                    .iter()
                    .filter(|(k, ja)| {
                        k.0 == conv
                            && k.1 != sender
                            && (k.1 == viewer || !m.private(conv, k.1))
                            && ja.is_none_or(|j| id > j)
                            && (m.marks.get(k).is_some_and(|x| x.0 >= id)
                                || m.views.contains(&(conv, k.1, id)))
                    })
                    .map(|(k, _)| k.1)
                    .collect();
                let r = s
                    .read_by(
                        ConversationId(base + conv),
                        UserId(base + viewer),
                        MessageId(id),
                        Page::first(10),
                    )
                    .expect("read_by");
                let got: Vec<u64> = r.readers.iter().map(|x| x.user.0 - base).collect();
                assert_eq!(got, want, "readers of ({conv},{id})");
                let source = if m.tracked.contains(&(conv, id)) {
                    ReceiptSource::PerMessage
                } else {
                    ReceiptSource::Marks
                };
                assert_eq!(r.source, source, "source of ({conv},{id})");
            }
        }
    }
}

/// Component handles for `benches/components.rs`: the internal pieces
/// (buffer, journal, bitsets) behind a small surface, so criterion can time
/// them alone. Not public API.
pub mod bench {
    use std::path::Path;

    use crate::ids::{MessageId, Timestamp};
    use crate::pure::bitset::{self as receipts, Bitset};
    use crate::pure::combiner::{Combiner as Inner, Entry};
    use crate::pure::journal::{Journal as InnerJournal, Recovery, record::MarkRecord};
    use crate::pure::mark::MarkState;

    /// The write-combining buffer.
    #[derive(Default)]
    pub struct Combiner(Option<Inner>);

    impl Combiner {
        /// An empty buffer.
        #[must_use]
        pub fn new() -> Self {
            Self(Some(Inner::new()))
        }

        /// Joins one update; `true` if the key was already buffered.
        pub fn add(&self, conversation: u64, user: u64, up_to: u64, at: u64) -> bool {
            let Some(c) = &self.0 else { return false };
            let state = MarkState::from_mark(MessageId(up_to), Timestamp(at));
            let mut shard = c.lock(conversation);
            if let Some(e) = shard.get_mut(&(conversation, user)) {
                e.state = e.state.join(state);
                e.version += 1;
                return true;
            }
            c.insert(
                &mut shard,
                (conversation, user),
                Entry {
                    state,
                    dirty: true,
                    ..Entry::default()
                },
            );
            false
        }

        /// Removes every entry, as writing them all and evicting would;
        /// returns how many.
        pub fn drain(&self) -> usize {
            let Some(c) = &self.0 else { return 0 };
            let keys = c.dirty_keys();
            for &(conv, user) in &keys {
                let mut shard = c.lock(conv);
                c.remove(&mut shard, (conv, user));
            }
            keys.len()
        }
    }

    /// The memory-mapped slot journal.
    pub struct Journal(InnerJournal);

    impl Journal {
        /// A fresh slot file of `bytes` in `dir`.
        ///
        /// # Errors
        ///
        /// I/O errors.
        pub fn create(dir: &Path, bytes: usize) -> crate::Result<Self> {
            Ok(Self(InnerJournal::create(
                dir,
                bytes,
                &Recovery::default(),
            )?))
        }

        /// Slots in the file.
        #[must_use]
        pub fn capacity(&self) -> usize {
            self.0.capacity()
        }

        /// Writes one update's state into copy `copy` of `slot`, as the
        /// write path does (numbered `up_to`).
        ///
        /// # Errors
        ///
        /// I/O errors.
        pub fn write(&self, slot: u32, copy: u8, up_to: u64, at: u64) -> crate::Result<()> {
            let state = MarkState::from_mark(MessageId(up_to), Timestamp(at));
            Ok(self.0.write(slot, copy, up_to, 1, 2, 0, &state)?)
        }
    }

    /// A format-3 journal payload of one mark update (64 bytes framed).
    #[must_use]
    pub fn mark_payload(conversation: u64, user: u64, up_to: u64, at: u64) -> Vec<u8> {
        MarkRecord {
            conversation,
            user,
            state: MarkState::from_mark(MessageId(up_to), Timestamp(at)),
        }
        .encode()
    }

    /// An encoded bitset with `slots` set.
    #[must_use]
    pub fn bitset(sent_at: u64, slots: impl IntoIterator<Item = u16>) -> Vec<u8> {
        let mut b = Bitset::new(sent_at);
        for s in slots {
            b.set(s);
        }
        b.encode()
    }

    /// The bitset merge operator's function.
    #[must_use]
    pub fn merge_bitsets<'a>(
        existing: Option<&'a [u8]>,
        operands: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<u8> {
        receipts::merge_bitsets(existing, operands).value
    }

    /// Whether `slot` is set in an encoded bitset.
    #[must_use]
    pub fn bitset_contains(bytes: &[u8], slot: u16) -> bool {
        Bitset::decode(bytes).is_some_and(|b| b.contains(slot))
    }
}
