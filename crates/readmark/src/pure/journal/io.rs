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

    fn check(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        if self.left.load(Relaxed) < 0 {
            return Ok(());
        }
        if self.left.fetch_sub(1, SeqCst) <= 0 {
            self.left.store(-1, SeqCst);
            return Err(std::io::Error::from_raw_os_error(self.errno.load(SeqCst)));
        }
        Ok(())
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
