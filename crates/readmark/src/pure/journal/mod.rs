//! The journal: one slot per buffered key in a memory-mapped file, so an
//! acknowledged update survives a process crash (bytes in a shared file
//! mapping are the page cache's, not the process's) and, after a
//! group-commit fsync, power loss.
//!
//! A key's slot holds its whole buffered state, rewritten in place at each
//! update ([`slot`]: two alternating copies, the newer wins). So the
//! journal's size follows the number of keys buffered, not the number of
//! updates: a scroll burst of 50 updates rewrites one slot 50 times in the
//! page cache, and the disk sees that page once per write-back. A slot is
//! taken by a key's first journaled update after a flush and given back
//! (zeroed) once a flush has written the key to RocksDB.
//!
//! Stores of format 3 kept an append-only journal of two segments
//! ([`frame`], [`record`], [`scan`]): recovery still reads those files, so
//! an upgraded store replays what its last run acknowledged, and
//! [`Journal::create`] removes them once that replay is durable.

pub(crate) mod frame;
pub(crate) mod io;
pub(crate) mod record;
pub(crate) mod scan;
pub(crate) mod slot;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::{MmapMut, MmapOptions};

use io::JournalIo;
use parking_lot::Mutex;
use parking_lot_core::{DEFAULT_PARK_TOKEN, DEFAULT_UNPARK_TOKEN};

use crate::error::{Error, Result};
use crate::pure::mark::MarkState;
use record::MarkRecord;
use scan::{ScanEnd, scan_segment};
use slot::{
    COPY_LEN, Copy, HEADER_LEN, copy_offset, encode_copy_with, epoch_hasher, file_len, scan_slots,
};

/// Directory of the journal inside the store directory.
pub(crate) const JOURNAL_DIR: &str = "readmark-journal";
/// The slot file inside [`JOURNAL_DIR`].
pub(crate) const SLOT_FILE: &str = "slots";
/// Format 3's segment files, read at upgrade.
pub(crate) const LEGACY_SEGMENTS: usize = 2;
/// Epochs and sequence numbers at or above this are refused at recovery.
const COUNTER_LIMIT: u64 = 1 << 62;
/// How long a group commit's leader waits for the writers it expects, at
/// most (see `Journal::gather`).
const GATHER: std::time::Duration = std::time::Duration::from_micros(300);
/// Smallest journal accepted by the configuration (360 slots).
pub(crate) const MIN_JOURNAL_BYTES: usize = 64 << 10;

pub(crate) fn segment_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("segment-{i}"))
}

pub(crate) fn slot_path(dir: &Path) -> PathBuf {
    dir.join(SLOT_FILE)
}

/// One key's state found by recovery.
#[derive(Debug, Clone)]
pub(crate) struct Recovered {
    pub(crate) conversation: u64,
    pub(crate) user: u64,
    /// The membership the state was written for; `None` for a format-3
    /// frame, which did not record it (replayed if the user is a member).
    pub(crate) joined_seq: Option<u64>,
    pub(crate) state: MarkState,
}

/// What recovery found: states to replay, and counters to resume above.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    pub(crate) records: Vec<Recovered>,
    pub(crate) max_epoch: u64,
    pub(crate) max_seq: u64,
    /// Copies whose checksum failed (writes cut short by a crash).
    pub(crate) torn: u64,
}

/// Reads the slot file and any format-3 segments, without changing
/// anything. Files are read, not mapped: a file truncated by someone else
/// cannot raise SIGBUS here.
pub(crate) fn recover(dir: &Path, tolerant: bool) -> Result<Recovery> {
    let mut rec = Recovery::default();
    recover_legacy(dir, tolerant, &mut rec)?;
    let path = slot_path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rec),
        Err(e) => return Err(e.into()),
    };
    let scan = scan_slots(&bytes);
    if scan.bad_header {
        // Written once, synced, never rewritten while open: only damage
        // (or a foreign file) makes it fail, and without its epoch no copy
        // can be checked.
        if !tolerant {
            return Err(Error::JournalCorrupt { path, offset: 0 });
        }
        tracing::warn!(file = %path.display(), "journal: slot file header damaged; nothing replayed from it (tolerant recovery)");
        return Ok(rec);
    }
    if let Some(epoch) = scan.epoch {
        if epoch >= COUNTER_LIMIT {
            return Err(Error::JournalCorrupt { path, offset: 0 });
        }
        rec.max_epoch = rec.max_epoch.max(epoch);
    }
    if let Some(&offset) = scan.malformed.first() {
        if !tolerant {
            return Err(Error::JournalCorrupt {
                path,
                offset: offset as u64,
            });
        }
        tracing::warn!(file = %path.display(), copies = scan.malformed.len(), "journal: skipped slot copies whose content does not decode (tolerant recovery)");
    }
    if scan.torn > 0 {
        tracing::warn!(file = %path.display(), copies = scan.torn, "journal: copies cut short by a crash ignored (each slot's other copy replayed)");
    }
    rec.torn += scan.torn;
    for f in scan.found {
        if f.copy.seq >= COUNTER_LIMIT {
            return Err(Error::JournalCorrupt {
                path,
                offset: f.offset as u64,
            });
        }
        rec.max_seq = rec.max_seq.max(f.copy.seq);
        rec.records.push(Recovered {
            conversation: f.copy.conversation,
            user: f.copy.user,
            joined_seq: Some(f.copy.joined_seq),
            state: f.copy.state,
        });
    }
    Ok(rec)
}

/// Format 3's two segments (see `docs/design.md`, upgrade).
fn recover_legacy(dir: &Path, tolerant: bool, rec: &mut Recovery) -> Result<()> {
    for i in 0..LEGACY_SEGMENTS {
        let path = segment_path(dir, i);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let scan = scan_segment(&bytes, tolerant);
        if let Some((epoch, first_seq)) = scan.header {
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
                });
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
            let Some(r) = MarkRecord::decode(f.payload) else {
                // The frame's checksum held, so this is not a torn write: a
                // newer writer's record kind, or a bug.
                if !tolerant {
                    return Err(Error::JournalCorrupt {
                        path,
                        offset: f.offset as u64,
                    });
                }
                tracing::warn!("journal: skipped a frame whose payload does not decode");
                continue;
            };
            rec.records.push(Recovered {
                conversation: r.conversation,
                user: r.user,
                joined_seq: None,
                state: r.state,
            });
        }
    }
    Ok(())
}

/// The journal of an open store.
///
/// Copies are written into the mapping with plain stores, without a lock:
/// a slot belongs to exactly one buffered key between [`alloc`] and
/// [`release`], and the store writes a key's slot only under that key's
/// shard lock, so no two threads ever write the same bytes.
///
/// [`alloc`]: Journal::alloc
/// [`release`]: Journal::release
pub(crate) struct Journal {
    /// The slot file (see [`io`]).
    io: io::Io,
    slots: usize,
    /// The CRC state after this file's epoch, which every copy's checksum
    /// covers.
    epoch: crc32fast::Hasher,
    /// Free slots, a stack: the most recently freed slot (a page most
    /// likely still dirty in the page cache) is reused first.
    free: Mutex<Vec<u32>>,
    /// Group commit tickets: a `PowerLoss` caller takes one after its copy
    /// is in the mapping; a sync covers every ticket taken before it.
    tickets: AtomicU64,
    /// Every ticket at or below this is covered by a completed fdatasync.
    synced: AtomicU64,
    /// Tickets the last completed sync covered that the one before had
    /// not: how many writers a group commit's leader expects back.
    last_group: AtomicU64,
    /// Writers between `durable_writer` and the end of their sync.
    durable_writers: std::sync::atomic::AtomicUsize,
    /// Of those, the ones waiting in (or leading) a sync.
    in_sync: std::sync::atomic::AtomicUsize,
    /// A writer leads a group commit (gathers, then syncs). Waiters park
    /// on the address of `synced`, a gathering leader on `gather_goal`
    /// (`parking_lot_core`).
    leading: AtomicBool,
    /// The leader is gathering: a writer that completes its group, or a
    /// durable writer that leaves without syncing, wakes it.
    gathering: AtomicBool,
    /// The ticket a gathering leader waits for (see `Journal::gather`).
    gather_goal: AtomicU64,
    /// A sync failed: no later sync may acknowledge anything (the failed
    /// one may have lost dirty pages that a retry would not rewrite).
    sync_failed: AtomicBool,
    copies: AtomicU64,
    syncs: AtomicU64,
}

impl Journal {
    /// Fault injection for tests: the `ops`-th journal operation from now
    /// (copy write or fsync; 0: the next) fails with the OS error `errno`,
    /// as a full disk or a failing device would.
    #[cfg(feature = "testing")]
    pub(crate) fn fail_after(&self, ops: u64, errno: i32) {
        self.io.fail_after(ops, errno);
    }

    /// Creates a fresh slot file of at most `bytes`, after `recovery`'s
    /// states are durable elsewhere, and removes format 3's segments.
    pub(crate) fn create(dir: &Path, bytes: usize, recovery: &Recovery) -> Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let slots = slot::slots_in(bytes).max(slot::SLOTS_PER_PAGE);
        let len = file_len(slots);
        let epoch = recovery.max_epoch + 1;
        // Always a new file, swapped in by rename once allocated and given
        // its header: the old one's states were replayed (and are durable
        // in RocksDB) before this is called, and a fresh inode has no
        // page-cache folios left by recovery's read (see `preallocate`).
        let tmp = dir.join(format!("{SLOT_FILE}.new"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        preallocate(&file, len)?;
        let mut header = vec![0u8; HEADER_LEN];
        slot::write_header(&mut header, epoch, slots as u64);
        {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&header, 0)?;
        }
        file.sync_data()?;
        std::fs::rename(&tmp, slot_path(dir))?;
        for i in 0..LEGACY_SEGMENTS {
            match std::fs::remove_file(segment_path(dir, i)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let map = map_range(&file, HEADER_LEN, len - HEADER_LEN)?;
        #[allow(clippy::cast_possible_truncation)]
        let free: Vec<u32> = (0..slots as u32).rev().collect();
        Ok(Journal {
            io: io::io(io::Mapped::new(map, file)?),
            slots,
            epoch: epoch_hasher(epoch),
            free: Mutex::new(free),
            tickets: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            last_group: AtomicU64::new(0),
            durable_writers: std::sync::atomic::AtomicUsize::new(0),
            in_sync: std::sync::atomic::AtomicUsize::new(0),
            leading: AtomicBool::new(false),
            gathering: AtomicBool::new(false),
            gather_goal: AtomicU64::new(0),
            sync_failed: AtomicBool::new(false),
            copies: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        })
    }

    /// Takes a free slot; `None` if every slot holds a buffered key (a
    /// flush must give some back first).
    pub(crate) fn alloc(&self) -> Option<u32> {
        self.free.lock().pop()
    }

    /// Slots holding buffered keys.
    pub(crate) fn in_use(&self) -> usize {
        self.slots - self.free.lock().len()
    }

    #[cfg(any(test, feature = "testing"))]
    /// Slots in all.
    pub(crate) fn capacity(&self) -> usize {
        self.slots
    }

    /// Writes `state` of (`conversation`, `user`) into copy `copy` of
    /// `slot`, numbered `seq` (greater than the slot's other copy's). The
    /// caller owns the slot (it took it with [`alloc`](Journal::alloc)),
    /// holds the lock of the key it belongs to, and writes its copies in
    /// turn, so the other copy (the previous state) survives this write
    /// being cut short.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn write(
        &self,
        slot: u32,
        copy: u8,
        seq: u64,
        conversation: u64,
        user: u64,
        joined_seq: u64,
        state: &MarkState,
    ) -> std::io::Result<()> {
        let slot = slot as usize;
        if slot >= self.slots {
            return Err(std::io::Error::other("slot outside the journal"));
        }
        let mut bytes = [0u8; COPY_LEN];
        encode_copy_with(
            &mut bytes,
            &self.epoch,
            &Copy {
                seq,
                conversation,
                user,
                joined_seq,
                state: *state,
            },
        );
        self.io
            .write_copy(copy_offset(slot, usize::from(copy & 1)), &bytes)?;
        self.copies.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Zeroes the slots (both copies) and makes them free. Called once a
    /// flush has written their keys to RocksDB (synced if any of their
    /// updates was acknowledged at `PowerLoss`), by the owner of each slot.
    pub(crate) fn release(&self, slots: &[u32]) {
        for &s in slots {
            let slot = s as usize;
            if slot < self.slots {
                self.io.clear(copy_offset(slot, 0), 2 * COPY_LEN);
            }
        }
        self.free.lock().extend_from_slice(slots);
    }

    /// A group commit ticket, taken after the copies it must cover are in
    /// the mapping: [`sync_to`](Journal::sync_to) returns once a sync
    /// started after it completed.
    pub(crate) fn ticket(&self) -> u64 {
        // Release: the copies written before are visible to the leader
        // that reads this ticket (Acquire) before its fdatasync.
        self.tickets.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Returns once every copy written before `ticket` was taken is
    /// durable. Concurrent callers share one fsync: one caller leads and
    /// syncs everything written so far; the others sleep until a sync
    /// covers their ticket, and are woken together the moment it does, so
    /// the next sync carries everyone who wrote in the meantime.
    pub(crate) fn sync_to(&self, ticket: u64) -> std::io::Result<()> {
        let covered = |j: &Self| -> std::io::Result<bool> {
            if j.sync_failed.load(Ordering::Acquire) {
                return Err(std::io::Error::other("an earlier journal fsync failed"));
            }
            Ok(j.synced.load(Ordering::Acquire) >= ticket)
        };
        if covered(self)? {
            return Ok(());
        }
        self.in_sync.fetch_add(1, Ordering::AcqRel);
        let result = self.wait_or_lead(ticket, covered);
        self.in_sync.fetch_sub(1, Ordering::AcqRel);
        result
    }

    #[allow(unsafe_code)]
    fn wait_or_lead(
        &self,
        _ticket: u64,
        covered: impl Fn(&Self) -> std::io::Result<bool>,
    ) -> std::io::Result<()> {
        loop {
            if covered(self)? {
                return Ok(());
            }
            if self
                .leading
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let result = self.gather().and_then(|target| self.sync_now(target));
                self.leading.store(false, Ordering::Release);
                // Every waiter wakes at once and runs on whatever core is
                // free: no lock to take in turn on the way out (with a
                // condition variable, the waiters of one sync would each
                // wait for the one before to release its mutex).
                // SAFETY: the key is the address of a field of this
                // journal, used as a parking key by this journal only.
                unsafe {
                    parking_lot_core::unpark_all(self.waiters_key(), DEFAULT_UNPARK_TOKEN);
                }
                return result;
            }
            if self.gathering.load(Ordering::Acquire) && self.gathered() {
                self.wake_leader();
            }
            // Sleep while a leader runs and has not covered this ticket;
            // checked under the parking queue's lock, which the leader
            // takes to wake everyone after it clears `leading`.
            // SAFETY: as above; the closures neither panic nor park.
            unsafe {
                parking_lot_core::park(
                    self.waiters_key(),
                    || {
                        self.leading.load(Ordering::Acquire)
                            && !self.sync_failed.load(Ordering::Acquire)
                            && !matches!(covered(self), Ok(true))
                    },
                    || {},
                    |_, _| {},
                    DEFAULT_PARK_TOKEN,
                    None,
                );
            }
        }
    }

    fn waiters_key(&self) -> usize {
        std::ptr::from_ref(&self.synced) as usize
    }

    fn leader_key(&self) -> usize {
        std::ptr::from_ref(&self.gather_goal) as usize
    }

    #[allow(unsafe_code)]
    fn wake_leader(&self) {
        // SAFETY: as in `wait_or_lead`.
        unsafe {
            parking_lot_core::unpark_one(self.leader_key(), |_| DEFAULT_UNPARK_TOKEN);
        }
    }

    /// The leader's wait for the writers it expects, then the ticket its
    /// sync will cover.
    ///
    /// It waits while writers are between their copy and their ticket, or
    /// while fewer tickets have come than the last sync carried, at most
    /// `GATHER` (PostgreSQL's commit_delay, made adaptive: a lone writer
    /// waits for nobody). It sleeps rather than spins, and only the writer
    /// that completes the group wakes it: with more writers than cores,
    /// the writers the last sync woke are runnable but not yet running,
    /// and they need the CPU a spinning leader, or a wake-up per writer,
    /// would take. Without the wait for the last group, a leader that
    /// started at the first quiet moment would split one closed loop of
    /// writers into two alternating groups, each paying a whole fsync.
    #[allow(unsafe_code)]
    fn gather(&self) -> std::io::Result<u64> {
        let before = self.synced.load(Ordering::Acquire);
        let expect = self.last_group.load(Ordering::Relaxed);
        self.gather_goal.store(before + expect, Ordering::Release);
        self.gathering.store(true, Ordering::Release);
        let deadline = std::time::Instant::now() + GATHER;
        while !self.gathered() {
            // SAFETY: as in `wait_or_lead`; `validate` runs under the
            // queue's lock, which a waking writer takes after changing
            // what `gathered` reads, so no wake-up is lost.
            let woke = unsafe {
                parking_lot_core::park(
                    self.leader_key(),
                    || !self.gathered(),
                    || {},
                    |_, _| {},
                    DEFAULT_PARK_TOKEN,
                    Some(deadline),
                )
            };
            if matches!(woke, parking_lot_core::ParkResult::TimedOut)
                || std::time::Instant::now() >= deadline
            {
                break;
            }
        }
        self.gathering.store(false, Ordering::Release);
        // Every ticket up to this one was taken after its copies were in
        // the mapping, and this load sees them (Acquire).
        Ok(self.tickets.load(Ordering::Acquire))
    }

    /// Registers a writer that will take a ticket and sync (a `PowerLoss`
    /// update) until the guard drops: a group commit's leader waits for
    /// registered writers to reach their sync before it starts one.
    pub(crate) fn durable_writer(&self) -> DurableWriter<'_> {
        self.durable_writers.fetch_add(1, Ordering::AcqRel);
        DurableWriter(self)
    }

    /// A gathering leader has what it waits for: as many tickets as the
    /// last group, and no registered writer still on its way to its sync.
    fn gathered(&self) -> bool {
        self.tickets.load(Ordering::Acquire) >= self.gather_goal.load(Ordering::Acquire)
            && self.in_sync.load(Ordering::Acquire) >= self.durable_writers.load(Ordering::Acquire)
    }

    fn sync_now(&self, target: u64) -> std::io::Result<()> {
        let fail = |e: std::io::Error| {
            self.sync_failed.store(true, Ordering::Release);
            e
        };
        self.io.sync_data().map_err(fail)?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let previous = self.synced.fetch_max(target, Ordering::AcqRel);
        self.last_group
            .store(target.saturating_sub(previous), Ordering::Relaxed);
        Ok(())
    }

    /// Bytes of copies written since open.
    pub(crate) fn bytes_written(&self) -> u64 {
        self.copies.load(Ordering::Relaxed) * COPY_LEN as u64
    }

    /// Group-commit fsyncs since open.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

/// A registered durable writer (see [`Journal::durable_writer`]).
pub(crate) struct DurableWriter<'a>(&'a Journal);

impl Drop for DurableWriter<'_> {
    fn drop(&mut self) {
        self.0.durable_writers.fetch_sub(1, Ordering::AcqRel);
        if self.0.gathering.load(Ordering::Acquire) && self.0.gathered() {
            self.0.wake_leader();
        }
    }
}

/// Gives the file its blocks with `posix_fallocate`.
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
    let len = libc::off_t::try_from(len).map_err(|_| std::io::Error::other("journal too large"))?;
    // SAFETY: plain system call on a file descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

#[allow(unsafe_code)]
fn map_range(file: &File, offset: usize, len: usize) -> std::io::Result<MmapMut> {
    // SAFETY: the file is readmark's own, sized by `create` before mapping,
    // and only this process writes it while the store is open (RocksDB's
    // LOCK file in the same directory keeps a second process out). If
    // another program truncates it anyway, access raises SIGBUS: the
    // argument is in docs/design.md.
    unsafe {
        MmapOptions::new()
            .offset(offset as u64)
            .len(len)
            .map_mut(file)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MessageId, Timestamp};

    fn state(i: u64) -> MarkState {
        MarkState::from_mark(MessageId(i), Timestamp(i))
    }

    #[test]
    fn write_recover_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), MIN_JOURNAL_BYTES, &Recovery::default()).unwrap();
        let mut taken = Vec::new();
        for i in 1..=40u64 {
            let s = j.alloc().unwrap();
            j.write(s, 0, 1, 1, i, 7, &state(i)).unwrap();
            j.write(s, 1, 2, 1, i, 7, &state(i + 100)).unwrap();
            taken.push(s);
        }
        j.write(taken[0], 0, 3, 1, 1, 7, &state(500)).unwrap();
        j.sync_to(j.ticket()).unwrap();
        let rec = recover(dir.path(), false).unwrap();
        let mut joined: std::collections::BTreeMap<u64, MarkState> = Default::default();
        for r in &rec.records {
            let e = joined.entry(r.user).or_default();
            *e = e.join(r.state);
        }
        let got: Vec<(u64, MarkState)> = joined.into_iter().collect();
        let mut want: Vec<(u64, MarkState)> = (1..=40).map(|i| (i, state(i + 100))).collect();
        want[0].1 = state(500);
        assert_eq!(got, want);
        assert!(rec.records.iter().all(|r| r.joined_seq == Some(7)));
        // Released slots are zeroed: nothing of them is replayed.
        j.release(&taken[..10]);
        assert_eq!(recover(dir.path(), false).unwrap().records.len(), 60);
        assert_eq!(j.in_use(), 30);
    }

    #[test]
    fn reopen_starts_from_a_fresh_file_with_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::create(dir.path(), MIN_JOURNAL_BYTES, &Recovery::default()).unwrap();
            let s = j.alloc().unwrap();
            for i in 0..5u8 {
                j.write(s, i % 2, u64::from(i) + 1, 1, 1, 0, &state(u64::from(i)))
                    .unwrap();
            }
        }
        let rec = recover(dir.path(), false).unwrap();
        // Both copies, which replay joins: the newest state wins.
        let joined = rec
            .records
            .iter()
            .fold(MarkState::default(), |a, r| a.join(r.state));
        assert_eq!((rec.records.len(), joined), (2, state(4)));
        assert_eq!((rec.max_seq, rec.max_epoch), (5, 1));
        let j = Journal::create(dir.path(), MIN_JOURNAL_BYTES, &rec).unwrap();
        let s = j.alloc().unwrap();
        j.write(s, 0, 1, 1, 2, 0, &state(1)).unwrap();
        let again = recover(dir.path(), false).unwrap();
        assert_eq!(again.max_epoch, 2);
        assert_eq!(again.records.len(), 1);
        assert_eq!(again.records[0].user, 2);
    }

    #[test]
    fn every_slot_can_be_taken_and_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), MIN_JOURNAL_BYTES, &Recovery::default()).unwrap();
        let n = j.capacity();
        assert_eq!(n, 360);
        let all: Vec<u32> = std::iter::from_fn(|| j.alloc()).collect();
        assert_eq!(all.len(), n);
        for &s in &all {
            j.write(s, 0, 1, 9, u64::from(s), 0, &state(1)).unwrap();
        }
        assert_eq!(recover(dir.path(), false).unwrap().records.len(), n);
        j.release(&all);
        assert_eq!(j.in_use(), 0);
        assert!(recover(dir.path(), false).unwrap().records.is_empty());
    }

    #[cfg(feature = "testing")]
    #[test]
    fn a_failed_sync_fails_every_later_sync() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), MIN_JOURNAL_BYTES, &Recovery::default()).unwrap();
        let s = j.alloc().unwrap();
        j.write(s, 0, 1, 1, 1, 0, &state(1)).unwrap();
        let ticket = j.ticket();
        j.fail_after(0, libc::EIO);
        assert!(j.sync_to(ticket).is_err());
        assert!(j.sync_to(ticket).is_err(), "no retry after a failed fsync");
    }
}
