//! BAR0's memory: a memfd mapped shared, so the client can map the same pages into its guest.
//!
//! Every access is bounds-checked and goes through volatile or atomic operations, since the
//! guest may write the pages at any time.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use thiserror::Error;
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

/// Name the memfd shows in /proc/PID/fd.
const MEMFD_NAME: &CStr = c"vfio-user-testdev-bar0";

/// Failure to create the BAR memory.
#[derive(Debug, Error)]
pub enum BarError {
    /// memfd_create(2) failed.
    #[error("creating the BAR memfd: {0}")]
    Memfd(#[source] io::Error),
    /// ftruncate(2) on the memfd failed.
    #[error("sizing the BAR memfd to {size} bytes: {source}")]
    Size {
        /// Requested size.
        size: usize,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// mmap(2) of the memfd failed.
    #[error("mapping the BAR memfd: {0}")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
}

/// An access outside the BAR.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("{len} bytes at offset {offset:#x} are outside the {size:#x}-byte BAR")]
pub struct OutOfRange {
    /// First byte of the access.
    pub offset: u64,
    /// Length of the access.
    pub len: usize,
    /// Size of the BAR.
    pub size: usize,
}

/// Shared, memfd-backed memory of one BAR.
pub struct SharedBar {
    map: MmapRegion,
    size: usize,
}

impl SharedBar {
    /// Creates a zeroed memfd of `size` bytes and maps it shared.
    pub fn new(size: usize) -> Result<SharedBar, BarError> {
        // SAFETY: memfd_create reads the NUL-terminated name and returns a new fd or -1;
        // no memory of ours is handed to the kernel beyond that string.
        let fd = unsafe { libc::memfd_create(MEMFD_NAME.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(BarError::Memfd(io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by memfd_create, is valid and owned by nobody else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(size as u64)
            .map_err(|source| BarError::Size { size, source })?;
        let map = MmapRegion::from_file(FileOffset::new(file, 0), size).map_err(BarError::Map)?;
        Ok(SharedBar { map, size })
    }

    /// The memfd, for handing to the client as the region's mmap fd.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.map.file_offset().map(|f| f.file().as_raw_fd())
    }

    fn atomic32(&self, offset: usize) -> Option<&AtomicU32> {
        self.map.get_atomic_ref::<AtomicU32>(offset).ok()
    }

    fn atomic64(&self, offset: usize) -> Option<&AtomicU64> {
        self.map.get_atomic_ref::<AtomicU64>(offset).ok()
    }

    /// Reads the aligned dword at `offset`; `None` if outside the BAR or misaligned.
    pub fn load32(&self, offset: usize) -> Option<u32> {
        self.atomic32(offset)
            .map(|a| u32::from_le(a.load(Ordering::SeqCst)))
    }

    /// Reads the aligned dword at `offset`, 0 if outside the BAR (for fixed register offsets).
    pub fn reg(&self, offset: usize) -> u32 {
        self.load32(offset).unwrap_or(0)
    }

    /// Writes the aligned dword at `offset`; false if outside the BAR or misaligned.
    pub fn store32(&self, offset: usize, value: u32) -> bool {
        self.atomic32(offset)
            .map(|a| a.store(value.to_le(), Ordering::SeqCst))
            .is_some()
    }

    /// Replaces the dword at `offset` with `new` only if it still holds `old`.
    pub fn cas32(&self, offset: usize, old: u32, new: u32) -> bool {
        self.atomic32(offset).is_some_and(|a| {
            a.compare_exchange(old.to_le(), new.to_le(), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        })
    }

    /// Sets `bits` in the aligned qword at `offset`; false if outside or misaligned.
    pub fn or64(&self, offset: usize, bits: u64) -> bool {
        self.atomic64(offset)
            .map(|a| a.fetch_or(bits.to_le(), Ordering::SeqCst))
            .is_some()
    }

    /// Clears `bits` in the aligned qword at `offset`; false if outside or misaligned.
    pub fn clear64(&self, offset: usize, bits: u64) -> bool {
        self.atomic64(offset)
            .map(|a| a.fetch_and(!bits.to_le(), Ordering::SeqCst))
            .is_some()
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize, OutOfRange> {
        let out = OutOfRange {
            offset,
            len,
            size: self.size,
        };
        let start = usize::try_from(offset).map_err(|_| out)?;
        match start.checked_add(len) {
            Some(end) if end <= self.size => Ok(start),
            _ => Err(out),
        }
    }

    /// Copies `buf.len()` bytes at `offset` out of the BAR.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let start = self.check(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        self.map
            .as_volatile_slice()
            .read_slice(buf, start)
            .map_err(|_| OutOfRange {
                offset,
                len: buf.len(),
                size: self.size,
            })
    }

    /// Copies `data` into the BAR at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        let start = self.check(offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        self.map
            .as_volatile_slice()
            .write_slice(data, start)
            .map_err(|_| OutOfRange {
                offset,
                len: data.len(),
                size: self.size,
            })
    }

    /// Zeroes the whole BAR.
    pub fn clear(&self) {
        let zeros = vec![0u8; self.size];
        // The range is the whole BAR, so it cannot be out of range.
        let _ = self.write(0, &zeros);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dwords_are_little_endian_bytes() {
        let bar = SharedBar::new(0x1000).unwrap();
        assert!(bar.store32(8, 0x1122_3344));
        let mut b = [0u8; 4];
        bar.read(8, &mut b).unwrap();
        assert_eq!(b, [0x44, 0x33, 0x22, 0x11]);
        bar.write(8, &[1, 0, 0, 0x80]).unwrap();
        assert_eq!(bar.load32(8), Some(0x8000_0001));
    }

    #[test]
    fn accesses_outside_or_misaligned_are_refused() {
        let bar = SharedBar::new(0x1000).unwrap();
        assert_eq!(bar.load32(0x1000), None);
        assert_eq!(bar.load32(0xffe), None);
        assert_eq!(bar.load32(2), None);
        assert!(!bar.store32(0x1000, 1));
        assert!(!bar.or64(0x1000, 1));
        assert!(bar.read(0xfff, &mut [0u8; 2]).is_err());
        assert!(bar.read(u64::MAX, &mut [0u8; 1]).is_err());
        assert!(bar.write(0x1000, &[1]).is_err());
        assert!(bar.write(0x1000, &[]).is_ok());
    }

    #[test]
    fn cas_and_bit_ops() {
        let bar = SharedBar::new(0x1000).unwrap();
        bar.store32(0, 5);
        assert!(!bar.cas32(0, 4, 9));
        assert!(bar.cas32(0, 5, 9));
        assert_eq!(bar.reg(0), 9);
        assert!(bar.or64(0x10, 1 << 40));
        assert!(bar.clear64(0x10, 1 << 40));
        assert_eq!(bar.reg(0x14), 0);
        assert!(bar.raw_fd().is_some());
    }
}
