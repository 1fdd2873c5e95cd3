//! The journal: CRC-framed records in two memory-mapped segments that are
//! reused in turn, so an acknowledged update survives a process crash
//! (bytes in a shared file mapping are the page cache's, not the process's)
//! and, after a group-commit fsync, power loss.
//!
//! Life of a segment: `reset` (new epoch in the header, end marker after
//! it) → frames appended while it is active → `rotate` makes the other one
//! active → the combiner flushes to RocksDB → `retire` (a new epoch: every
//! old frame stops validating). Only two segments ever exist, so the pages
//! written are the same pages again and again, and the bytes that reach the
//! disk per logical update fall as more updates share a page between
//! write-backs.
//!
//! Formats: [`frame`] (segment header, frame), [`record`] (payload).
//! Recovery rules: [`scan`].

pub(crate) mod frame;
pub(crate) mod record;
pub(crate) mod scan;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use frame::{
    frame_size, write_frame, write_header, FRAME_HEADER_LEN, MAX_PAYLOAD, SEGMENT_HEADER_LEN,
};
use scan::{scan_segment, ScanEnd};

/// Number of segments.
pub(crate) const SEGMENTS: usize = 2;
/// Directory of the journal inside the store directory.
pub(crate) const JOURNAL_DIR: &str = "readmark-journal";
/// Epochs and sequence numbers at or above this are refused at recovery.
const COUNTER_LIMIT: u64 = 1 << 62;
/// Smallest segment accepted by the configuration.
pub(crate) const MIN_SEGMENT_BYTES: usize = 64 << 10;

pub(crate) fn segment_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("segment-{i}"))
}

/// One recovered frame's payload and where it was.
#[derive(Debug)]
pub(crate) struct RecoveredPayload {
    pub(crate) path: PathBuf,
    pub(crate) offset: usize,
    pub(crate) bytes: Vec<u8>,
}

/// What recovery found: payloads to replay, and where numbering resumes.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    pub(crate) payloads: Vec<RecoveredPayload>,
    pub(crate) max_epoch: u64,
    pub(crate) max_seq: u64,
}

/// Reads every valid frame of every segment, without changing anything.
/// Files are read, not mapped: a file truncated by someone else cannot
/// raise SIGBUS here.
pub(crate) fn recover(dir: &Path, tolerant: bool) -> Result<Recovery> {
    let mut rec = Recovery::default();
    for i in 0..SEGMENTS {
        let path = segment_path(dir, i);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let scan = scan_segment(&bytes, tolerant);
        if let Some((epoch, first_seq)) = scan.header {
            // Numbering resumes after these: values no journal can reach
            // (2^62 frames) are damage that happens to pass the CRC, or a
            // foreign file, and would overflow.
            if epoch >= COUNTER_LIMIT || first_seq >= COUNTER_LIMIT {
                return Err(Error::JournalCorrupt { path, offset: 0 });
            }
            rec.max_epoch = rec.max_epoch.max(epoch);
        }
        match scan.end {
            ScanEnd::Corrupt { offset } => {
                return Err(Error::JournalCorrupt {
                    path,
                    offset: offset as u64,
                })
            }
            ScanEnd::TornTail { offset } => {
                tracing::warn!(file = %path.display(), offset, "journal: torn tail ignored (a write cut short by a crash; nothing after it had been synced)");
            }
            ScanEnd::Clean { .. } => {}
        }
        for (from, to) in &scan.skipped {
            tracing::warn!(file = %path.display(), from, to, "journal: damaged range skipped (tolerant recovery)");
        }
        for f in scan.frames {
            if f.seq >= COUNTER_LIMIT {
                return Err(Error::JournalCorrupt {
                    path,
                    offset: f.offset as u64,
                });
            }
            rec.max_seq = rec.max_seq.max(f.seq);
            rec.payloads.push(RecoveredPayload {
                path: path.clone(),
                offset: f.offset,
                bytes: f.payload.to_vec(),
            });
        }
    }
    Ok(rec)
}

struct State {
    maps: Vec<MmapMut>,
    epochs: [u64; SEGMENTS],
    write_off: [usize; SEGMENTS],
    frames: [u64; SEGMENTS],
    /// Segments written since their last fsync.
    unsynced: [bool; SEGMENTS],
    /// Segments whose last retirement (or creation) is known durable.
    retire_synced: [bool; SEGMENTS],
    active: usize,
    next_seq: u64,
    next_epoch: u64,
}

impl State {
    fn reset(&mut self, i: usize) {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let map = &mut self.maps[i];
        write_header(&mut map[..SEGMENT_HEADER_LEN], epoch, self.next_seq);
        map[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + FRAME_HEADER_LEN].fill(0);
        self.epochs[i] = epoch;
        self.write_off[i] = SEGMENT_HEADER_LEN;
        self.frames[i] = 0;
    }
}

/// The journal of an open store.
pub(crate) struct Journal {
    state: Mutex<State>,
    /// Handles for fdatasync outside the state lock (group commit).
    files: Vec<File>,
    /// Group commit: whether a leader is syncing; waiters sleep on `sync_cv`.
    syncing: Mutex<bool>,
    sync_cv: parking_lot::Condvar,
    /// A sync failed: no later sync may acknowledge anything (the failed
    /// one may have lost dirty pages that a retry would not rewrite).
    sync_failed: std::sync::atomic::AtomicBool,
    /// Highest seq whose bytes are fully in a mapped page.
    written: AtomicU64,
    /// Highest seq made durable by an fsync.
    synced: AtomicU64,
    bytes_appended: AtomicU64,
    syncs: AtomicU64,
    /// Fault injection: journal operations left before one fails (-1: never).
    fail_after: std::sync::atomic::AtomicI64,
    fail_errno: std::sync::atomic::AtomicI32,
}

impl Journal {
    /// Fault injection for tests: the `ops`-th journal operation from now
    /// (append, fsync, durable retire) fails with an I/O error, as a full
    /// disk or a failing device would.
    pub(crate) fn fail_after(&self, ops: u64, errno: i32) {
        self.fail_errno.store(errno, Ordering::SeqCst);
        self.fail_after
            .store(i64::try_from(ops).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    fn injected_fault(&self) -> std::io::Result<()> {
        let left = self.fail_after.load(Ordering::SeqCst);
        if left < 0 {
            return Ok(());
        }
        if self.fail_after.fetch_sub(1, Ordering::SeqCst) <= 0 {
            self.fail_after.store(-1, Ordering::SeqCst);
            return Err(std::io::Error::from_raw_os_error(
                self.fail_errno.load(Ordering::SeqCst),
            ));
        }
        Ok(())
    }

    /// Creates or re-initialises both segments after `recovery`'s payloads
    /// are durable elsewhere: new epochs, so nothing recovered is replayed
    /// twice.
    pub(crate) fn create(dir: &Path, segment_bytes: usize, recovery: &Recovery) -> Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let mut files = Vec::with_capacity(SEGMENTS);
        let mut maps = Vec::with_capacity(SEGMENTS);
        for i in 0..SEGMENTS {
            let path = segment_path(dir, i);
            // Always a new file, swapped in by rename once allocated: the old
            // one's frames were replayed (and are durable in RocksDB) before
            // this is called, and a fresh inode has no page-cache folios left
            // by recovery's read (see `preallocate`).
            let tmp = dir.join(format!("segment-{i}.new"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            preallocate(&file, segment_bytes)?;
            std::fs::rename(&tmp, &path)?;
            maps.push(map_file(&file)?);
            files.push(file);
        }
        sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let mut state = State {
            maps,
            epochs: [0; SEGMENTS],
            write_off: [SEGMENT_HEADER_LEN; SEGMENTS],
            frames: [0; SEGMENTS],
            unsynced: [false; SEGMENTS],
            retire_synced: [true; SEGMENTS],
            active: 0,
            next_seq: recovery.max_seq + 1,
            next_epoch: recovery.max_epoch + 1,
        };
        for i in 0..SEGMENTS {
            state.reset(i);
        }
        for m in &state.maps {
            m.flush()?;
        }
        let synced = recovery.max_seq;
        Ok(Journal {
            state: Mutex::new(state),
            files,
            syncing: Mutex::new(false),
            sync_cv: parking_lot::Condvar::new(),
            sync_failed: std::sync::atomic::AtomicBool::new(false),
            written: AtomicU64::new(synced),
            synced: AtomicU64::new(synced),
            bytes_appended: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            fail_after: std::sync::atomic::AtomicI64::new(-1),
            fail_errno: std::sync::atomic::AtomicI32::new(libc::EIO),
        })
    }

    /// Appends one frame to the active segment. `Ok(None)` when it is full:
    /// flush (which rotates) and retry.
    pub(crate) fn append(&self, payload: &[u8]) -> Result<Option<u64>> {
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::InvalidArgument("journal payload too large"));
        }
        let size = frame_size(payload.len());
        self.injected_fault()?;
        let mut st = self.state.lock();
        let a = st.active;
        let off = st.write_off[a];
        if off + size + FRAME_HEADER_LEN > st.maps[a].len() {
            return Ok(None);
        }
        let seq = st.next_seq;
        let epoch = st.epochs[a];
        let synced = self.synced.load(Ordering::Acquire);
        let map = &mut st.maps[a];
        write_frame(&mut map[off..off + size], epoch, seq, synced, payload);
        // End marker: recovery stops here instead of reading old frames.
        map[off + size..off + size + FRAME_HEADER_LEN].fill(0);
        st.write_off[a] = off + size;
        st.frames[a] += 1;
        st.unsynced[a] = true;
        st.next_seq = seq + 1;
        self.written.store(seq, Ordering::Release);
        self.bytes_appended
            .fetch_add(size as u64, Ordering::Relaxed);
        Ok(Some(seq))
    }

    /// Returns once frame `seq` is durable. Concurrent callers share one
    /// fsync: one caller leads and syncs everything written so far; the
    /// others sleep until a sync covers their frame, and are woken together
    /// the moment it does, so the next sync carries everyone who appended
    /// in the meantime.
    pub(crate) fn sync_to(&self, seq: u64) -> std::io::Result<()> {
        let covered = |j: &Self| -> std::io::Result<bool> {
            if j.sync_failed.load(Ordering::Acquire) {
                return Err(std::io::Error::other("an earlier journal fsync failed"));
            }
            Ok(j.synced.load(Ordering::Acquire) >= seq)
        };
        if covered(self)? {
            return Ok(());
        }
        let mut syncing = self.syncing.lock();
        loop {
            if covered(self)? {
                return Ok(());
            }
            if !*syncing {
                break;
            }
            self.sync_cv.wait(&mut syncing);
        }
        *syncing = true;
        drop(syncing);
        let result = self.sync_now();
        *self.syncing.lock() = false;
        self.sync_cv.notify_all();
        result
    }

    fn sync_now(&self) -> std::io::Result<()> {
        let fail = |e: std::io::Error| {
            self.sync_failed.store(true, Ordering::Release);
            e
        };
        self.injected_fault().map_err(fail)?;
        let (target, dirty) = {
            let mut st = self.state.lock();
            let dirty = st.unsynced;
            st.unsynced = [false; SEGMENTS];
            (self.written.load(Ordering::Acquire), dirty)
        };
        // fdatasync on the mapped file: Linux marks pages of a shared
        // mapping dirty in the page cache at the first write fault, and
        // msync(MS_SYNC) itself is vfs_fsync_range on the file. The handle
        // lets the sync run without the append lock.
        for (f, _) in self.files.iter().zip(dirty).filter(|(_, d)| *d) {
            f.sync_data().map_err(fail)?;
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// Makes the other segment active and returns the one to retire once
    /// the combiner's contents are durable in RocksDB, with whether it holds
    /// any frame.
    ///
    /// Refuses (an error, which poisons the store) to reuse a segment that
    /// still holds frames: they were never retired, so they may be the only
    /// copy of acknowledged updates (a flush that failed after rotating).
    pub(crate) fn rotate(&self) -> std::io::Result<(usize, bool)> {
        let mut st = self.state.lock();
        let old = st.active;
        let new = (old + 1) % SEGMENTS;
        if st.frames[new] > 0 {
            return Err(std::io::Error::other(
                "journal segment to reuse was never retired (an earlier flush failed)",
            ));
        }
        st.reset(new);
        st.active = new;
        Ok((old, st.frames[old] > 0))
    }

    /// Makes every retirement durable that is not yet: before a segment is
    /// reused (so a power loss cannot bring back its old header under new
    /// frames) and before a membership change (so no crash can replay frames
    /// from before it). At most one fsync per segment.
    pub(crate) fn sync_retirements(&self) -> std::io::Result<()> {
        let pending = {
            let st = self.state.lock();
            st.retire_synced
        };
        for (i, f) in self.files.iter().enumerate() {
            if !pending[i] {
                self.checked_sync(f)?;
                self.state.lock().retire_synced[i] = true;
                self.syncs.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// One fdatasync; a failure is sticky (see `sync_failed`).
    fn checked_sync(&self, f: &File) -> std::io::Result<()> {
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(std::io::Error::other("an earlier journal fsync failed"));
        }
        let r = self.injected_fault().and_then(|()| f.sync_data());
        if r.is_err() {
            self.sync_failed.store(true, Ordering::Release);
        }
        r
    }

    /// Invalidates every frame of segment `i` (a new epoch). With `durable`,
    /// the new header is fsynced before returning, so no crash can bring the
    /// old frames back.
    pub(crate) fn retire(&self, i: usize, durable: bool) -> std::io::Result<()> {
        let mut st = self.state.lock();
        if st.active == i {
            return Ok(());
        }
        st.reset(i);
        st.retire_synced[i] = false;
        drop(st);
        if durable {
            // Both files: the active segment's header was rewritten by the
            // rotation and must not fall back to an older epoch either.
            for f in &self.files {
                self.checked_sync(f)?;
            }
            self.state.lock().retire_synced = [true; SEGMENTS];
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Bytes of frames appended since open.
    pub(crate) fn bytes_appended(&self) -> u64 {
        self.bytes_appended.load(Ordering::Relaxed)
    }

    /// Group-commit fsyncs (and durable retirements) since open.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Frames in the active and the other segment.
    pub(crate) fn frames(&self) -> [u64; SEGMENTS] {
        self.state.lock().frames
    }
}

/// Gives the file its blocks with `posix_fallocate`, then fsyncs it.
///
/// Allocated blocks mean a write through the mapping never needs a new
/// block at fault time, so a full disk is an error here, not a SIGBUS later.
/// Not writing zeros matters as much: on Linux 6.x a file filled by
/// buffered writes sits in the page cache as large folios (2 MiB measured
/// here), and dirtying one byte of a mapped large folio makes the next fsync
/// write all of it (2 MiB per group commit instead of 4 KiB, measured with
/// `/proc/self/io`). Unwritten extents are faulted in as 4 KiB pages.
#[allow(unsafe_code)]
fn preallocate(file: &File, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::other("segment too large"))?;
    // SAFETY: plain system call on a file descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    file.sync_all()
}

#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<MmapMut> {
    // SAFETY: the file is readmark's own, sized and filled by `create`
    // before mapping, and only this process writes it while the store is
    // open (RocksDB's LOCK file in the same directory keeps a second
    // process out). If another program truncates it anyway, access raises
    // SIGBUS: the argument is in docs/design.md.
    unsafe { MmapMut::map_mut(file) }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MessageId, Timestamp};
    use crate::mark::MarkState;
    use record::MarkRecord;

    fn payload(i: u64) -> Vec<u8> {
        MarkRecord {
            conversation: 1,
            user: i,
            state: MarkState::from_mark(MessageId(i), Timestamp(i)),
        }
        .encode()
    }

    #[test]
    fn append_recover_roundtrip_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), MIN_SEGMENT_BYTES, &Recovery::default()).unwrap();
        for i in 1..=10 {
            assert_eq!(j.append(&payload(i)).unwrap(), Some(i));
        }
        j.sync_to(10).unwrap();
        let rec = recover(dir.path(), false).unwrap();
        let got: Vec<Vec<u8>> = rec.payloads.iter().map(|p| p.bytes.clone()).collect();
        assert_eq!(got, (1..=10).map(payload).collect::<Vec<_>>());
        // Rotate and retire: the old frames are gone, new ones are kept.
        let (old, nonempty) = j.rotate().unwrap();
        assert!(nonempty);
        j.append(&payload(11)).unwrap();
        j.retire(old, true).unwrap();
        let rec = recover(dir.path(), false).unwrap();
        assert_eq!(rec.payloads.len(), 1);
        assert_eq!(rec.payloads[0].bytes, payload(11));
        assert_eq!(rec.max_seq, 11);
    }

    /// Regression (review): a flush that failed after rotating left its
    /// segment unretired; the next flush rotated back onto it and reset it,
    /// invalidating frames that were the only copy of acknowledged updates.
    #[test]
    fn a_segment_that_was_never_retired_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), MIN_SEGMENT_BYTES, &Recovery::default()).unwrap();
        j.append(&payload(1)).unwrap();
        let (old, _) = j.rotate().unwrap(); // the flush then fails: no retire
        assert!(j.rotate().is_err());
        let rec = recover(dir.path(), false).unwrap();
        assert_eq!(rec.payloads.len(), 1, "the unretired frame is still there");
        j.retire(old, false).unwrap();
        assert!(j.rotate().is_ok());
    }

    #[test]
    fn full_segment_asks_for_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), MIN_SEGMENT_BYTES, &Recovery::default()).unwrap();
        let mut n = 0u64;
        while j.append(&payload(n + 1)).unwrap().is_some() {
            n += 1;
        }
        assert!(n > 1000);
        let (old, _) = j.rotate().unwrap();
        assert!(j.append(&payload(1)).unwrap().is_some());
        j.retire(old, false).unwrap();
    }

    #[test]
    fn reopen_continues_numbering_and_never_replays_twice() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::create(dir.path(), MIN_SEGMENT_BYTES, &Recovery::default()).unwrap();
            for i in 1..=3 {
                j.append(&payload(i)).unwrap();
            }
        }
        let rec = recover(dir.path(), false).unwrap();
        assert_eq!(rec.payloads.len(), 3);
        let j = Journal::create(dir.path(), MIN_SEGMENT_BYTES, &rec).unwrap();
        assert_eq!(j.append(&payload(9)).unwrap(), Some(4));
        let again = recover(dir.path(), false).unwrap();
        assert_eq!(again.payloads.len(), 1);
        assert_eq!(again.payloads[0].bytes, payload(9));
    }
}
