//! The journal's I/O seam: a copy written into the slot file, and an
//! fdatasync. Shipped builds use [`Mapped`] itself, with no indirection and
//! no check on the write path; the `testing` feature wraps it in
//! [`Faulty`], which fails a chosen operation as a full disk or a failing
//! device would (`Store::__fail_journal_after`).

use std::fs::File;

use memmap2::MmapMut;

use super::slot::HEADER_LEN;

/// What the journal asks of its file.
pub(crate) trait JournalIo: Send + Sync {
    /// Writes a copy's `bytes` at file offset `offset` (at least
    /// `HEADER_LEN`).
    fn write_copy(&self, offset: usize, bytes: &[u8]) -> std::io::Result<()>;
    /// Zeroes `len` bytes at `offset`: a released slot. Not an operation
    /// fault injection counts (a lost zeroing only leaves a stale copy,
    /// which recovery replays harmlessly: marks are monotonic).
    fn clear(&self, offset: usize, len: usize);
    /// Makes every byte written so far durable.
    fn sync_data(&self) -> std::io::Result<()>;
}

/// The I/O the journal is built with.
#[cfg(not(feature = "testing"))]
pub(crate) type Io = Mapped;
/// The I/O the journal is built with.
#[cfg(feature = "testing")]
pub(crate) type Io = Faulty<Mapped>;

/// Wraps the slot file's mapping in the build's [`Io`].
pub(crate) fn io(mapped: Mapped) -> Io {
    #[cfg(feature = "testing")]
    let mapped = Faulty::new(mapped);
    mapped
}

/// The slot area of the journal file, mapped shared, written through a raw
/// pointer with plain stores (see `Journal`: a slot belongs to one key,
/// written under that key's lock, so no two threads write the same bytes).
pub(crate) struct Mapped {
    /// Kept for its `Drop` (the unmap); all access goes through `base`.
    _map: MmapMut,
    base: std::ptr::NonNull<u8>,
    len: usize,
    /// For fdatasync (group commit).
    file: File,
}

// SAFETY: the mapping is owned by `Mapped` and lives as long as it; threads
// write disjoint byte ranges of it (one slot per key, see `Journal`), and
// nothing reads it while the store is open.
#[allow(unsafe_code)]
unsafe impl Send for Mapped {}
// SAFETY: as for `Send`: shared access only ever writes disjoint ranges.
#[allow(unsafe_code)]
unsafe impl Sync for Mapped {}

impl Mapped {
    /// `map` covers the file from `HEADER_LEN` to its end.
    pub(crate) fn new(mut map: MmapMut, file: File) -> std::io::Result<Mapped> {
        let len = map.len();
        let base = std::ptr::NonNull::new(map.as_mut_ptr())
            .ok_or_else(|| std::io::Error::other("null mapping"))?;
        Ok(Mapped {
            _map: map,
            base,
            len,
            file,
        })
    }

    #[allow(unsafe_code)]
    #[inline]
    fn store(&self, off: usize, bytes: &[u8]) {
        let at = off - HEADER_LEN;
        assert!(at + bytes.len() <= self.len, "slot outside the journal");
        // SAFETY: in bounds (checked above) of a live mapping; the caller
        // owns the slot these bytes belong to, so no other thread writes
        // them meanwhile (`Journal`), and `bytes` is a separate buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.as_ptr().add(at), bytes.len());
        }
    }
}

impl JournalIo for Mapped {
    #[inline]
    fn write_copy(&self, offset: usize, bytes: &[u8]) -> std::io::Result<()> {
        self.store(offset, bytes);
        Ok(())
    }

    fn clear(&self, offset: usize, len: usize) {
        const ZEROS: [u8; 512] = [0; 512];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len());
            self.store(offset + done, &ZEROS[..n]);
            done += n;
        }
    }

    fn sync_data(&self) -> std::io::Result<()> {
        // fdatasync on the mapped file: Linux marks pages of a shared
        // mapping dirty in the page cache at the first write fault, and
        // msync(MS_SYNC) itself is vfs_fsync_range on the file.
        self.file.sync_data()
    }
}

/// Fails the `n`-th copy write or sync from when it is armed, once, with a
/// chosen OS error.
#[cfg(feature = "testing")]
pub(crate) struct Faulty<I> {
    inner: I,
    /// Operations left before one fails; -1: disarmed.
    left: std::sync::atomic::AtomicI64,
    errno: std::sync::atomic::AtomicI32,
}

#[cfg(feature = "testing")]
impl<I> Faulty<I> {
    fn new(inner: I) -> Self {
        Faulty {
            inner,
            left: std::sync::atomic::AtomicI64::new(-1),
            errno: std::sync::atomic::AtomicI32::new(libc::EIO),
        }
    }

    /// The `ops`-th operation from now (0: the next) fails with `errno`.
    pub(crate) fn fail_after(&self, ops: u64, errno: i32) {
        use std::sync::atomic::Ordering::SeqCst;
        self.errno.store(errno, SeqCst);
        self.left
            .store(i64::try_from(ops).unwrap_or(i64::MAX), SeqCst);
    }

    /// Exactly one operation fails, even when several race for it.
    fn check(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        let mut left = self.left.load(Relaxed);
        loop {
            if left < 0 {
                return Ok(());
            }
            let next = if left == 0 { -1 } else { left - 1 };
            match self.left.compare_exchange(left, next, SeqCst, Relaxed) {
                Ok(_) if left == 0 => {
                    return Err(std::io::Error::from_raw_os_error(self.errno.load(SeqCst)));
                }
                Ok(_) => return Ok(()),
                Err(now) => left = now,
            }
        }
    }
}

#[cfg(feature = "testing")]
impl<I: JournalIo> JournalIo for Faulty<I> {
    fn write_copy(&self, offset: usize, bytes: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write_copy(offset, bytes)
    }

    fn clear(&self, offset: usize, len: usize) {
        self.inner.clear(offset, len);
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.inner.sync_data()
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::{Faulty, JournalIo};

    struct Sink;

    impl JournalIo for Sink {
        fn write_copy(&self, _: usize, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn clear(&self, _: usize, _: usize) {}
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Post-mortem (review of issue 15): between the countdown's decrement
    /// and its reset, a second thread could fail too, and return `Io`
    /// where the store's poisoning promises `Poisoned`.
    #[test]
    fn regression_exactly_one_operation_fails_however_many_race() {
        for ops in [0u64, 3, 50] {
            let io = Faulty::new(Sink);
            io.fail_after(ops, libc::ENOSPC);
            let failures: usize = std::thread::scope(|s| {
                let workers: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            (0..100)
                                .filter(|i| {
                                    if i % 2 == 0 {
                                        io.write_copy(0, &[]).is_err()
                                    } else {
                                        io.sync_data().is_err()
                                    }
                                })
                                .count()
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap()).sum()
            });
            assert_eq!(failures, 1, "fail_after({ops})");
        }
    }
}
