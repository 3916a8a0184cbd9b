//! A raw disk image: opened (read-only or read-write, optionally `O_DIRECT`), locked
//! against a second writer, and accessed by sector-aligned reads and writes through an
//! aligned bounce buffer, flushes, hole punching and zeroing.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::warn;
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::BlockError;
use crate::spec::SECTOR_SIZE;

/// Alignment of the bounce buffer (what `O_DIRECT` needs on any block size up to 4 KiB).
pub const BOUNCE_ALIGN: usize = 4096;
/// Bytes moved per file access (requests larger than this are served in pieces).
pub const BOUNCE_SIZE: usize = 1 << 20;

/// A page-aligned buffer of [`BOUNCE_SIZE`] bytes.
pub struct Bounce {
    storage: Vec<u8>,
    start: usize,
}

impl Default for Bounce {
    fn default() -> Self {
        Self::new()
    }
}

impl Bounce {
    /// Allocates the buffer.
    pub fn new() -> Self {
        let storage = vec![0u8; BOUNCE_SIZE + BOUNCE_ALIGN];
        let start = storage
            .as_ptr()
            .align_offset(BOUNCE_ALIGN)
            .min(BOUNCE_ALIGN);
        Bounce { storage, start }
    }

    /// The first `len` bytes (at most [`BOUNCE_SIZE`]).
    pub fn get(&mut self, len: usize) -> &mut [u8] {
        let end = self.start + len.min(BOUNCE_SIZE);
        self.storage.get_mut(self.start..end).unwrap_or_default()
    }
}

/// An open image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    sectors: u64,
    readonly: bool,
    direct: bool,
}

impl DiskImage {
    /// Opens and locks `path`: shared lock when read-only, exclusive when writable, so a
    /// second irvmm cannot open the image writable while it is in use (flock(2), advisory).
    pub fn open(path: &Path, readonly: bool, direct: bool) -> Result<Self, BlockError> {
        let err = |source: io::Error| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        if path.is_dir() {
            return Err(BlockError::Directory(path.to_path_buf()));
        }
        let mut options = OpenOptions::new();
        options.read(true).write(!readonly);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let mut file = options.open(path).map_err(|e| {
            if direct && e.raw_os_error() == Some(libc::EINVAL) {
                BlockError::Direct(path.to_path_buf())
            } else {
                err(e)
            }
        })?;
        let locked = if readonly {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match locked {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(BlockError::Locked(path.to_path_buf())),
            Err(TryLockError::Error(e)) => return Err(err(e)),
        }
        let len = file.seek(SeekFrom::End(0)).map_err(err)?;
        if len % SECTOR_SIZE != 0 {
            warn!(
                "{}: size {len} is not a multiple of {SECTOR_SIZE}; the last {} bytes are not visible",
                path.display(),
                len % SECTOR_SIZE
            );
        }
        Ok(DiskImage {
            file,
            path: path.to_path_buf(),
            sectors: len / SECTOR_SIZE,
            readonly,
            direct,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// True when opened read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// True when opened with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when `count` sectors from `sector` lie inside the image.
    pub fn in_range(&self, sector: u64, count: u64) -> bool {
        sector
            .checked_add(count)
            .is_some_and(|end| end <= self.sectors)
    }

    /// Reads `buf.len()` bytes at byte `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes `buf` at byte `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.file.write_all_at(buf, offset)
    }

    /// Makes written data durable.
    pub fn flush(&self) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// Deallocates `len` bytes at `offset` (reads return zeros afterwards).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    /// Zeroes `len` bytes at `offset`: by deallocating when `unmap` allows, else by the
    /// file system's zero-range, else by writing zeros through `bounce`.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        bounce: &mut Bounce,
    ) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if unmap && self.discard(offset, len).is_ok() {
            return Ok(());
        }
        if fallocate(&self.file, FallocateMode::ZeroRange, true, offset, len).is_ok() {
            return Ok(());
        }
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len - done)
                .unwrap_or(BOUNCE_SIZE)
                .min(BOUNCE_SIZE);
            let buf = bounce.get(n);
            buf.fill(0);
            self.write_at(buf, offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}
