//! The client's DMA mappings: I/O virtual address ranges backed by fds it sent with DMA_MAP.
//!
//! Each mapping is mmapped shared when it arrives and munmapped when DMA_UNMAP removes it.
//! A transfer is translated as a whole before any byte moves, so one touching an unmapped
//! (or fd-less, or wrongly protected) byte fails without copying anything.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;

use thiserror::Error;
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

/// A failed DMA_MAP, DMA_UNMAP or transfer.
#[derive(Debug, Error)]
pub enum DmaError {
    /// The range is empty or wraps around the 64-bit space.
    #[error("DMA range of {size:#x} bytes at {iova:#x} is empty or wraps")]
    BadRange {
        /// Start of the range.
        iova: u64,
        /// Length of the range.
        size: u64,
    },
    /// The new mapping overlaps an existing one.
    #[error("DMA mapping of {size:#x} bytes at {iova:#x} overlaps an existing mapping")]
    Overlap {
        /// Start of the new mapping.
        iova: u64,
        /// Length of the new mapping.
        size: u64,
    },
    /// The mapping allows neither reads nor writes.
    #[error("DMA mapping at {0:#x} grants neither read nor write")]
    NoAccess(u64),
    /// fstat(2) on the mapping's fd failed.
    #[error("reading the size of the DMA fd: {0}")]
    Stat(#[source] io::Error),
    /// The mapping runs past the end of its file (accesses would raise SIGBUS).
    #[error("DMA mapping of {size:#x} bytes at file offset {offset:#x} ends past the file's {file_len:#x} bytes")]
    PastEof {
        /// Offset of the mapping in the file.
        offset: u64,
        /// Length of the mapping.
        size: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// mmap(2) of the fd failed.
    #[error("mapping the DMA fd: {0}")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    /// DMA_UNMAP would remove part of a mapping.
    #[error("DMA unmap of {size:#x} bytes at {iova:#x} would split a mapping")]
    Split {
        /// Start of the range.
        iova: u64,
        /// Length of the range.
        size: u64,
    },
    /// DMA_UNMAP asked for dirty page tracking, which this device does not do.
    #[error("DMA unmap with dirty page tracking is not supported")]
    DirtyTracking,
    /// A transfer touched an address no mapping covers.
    #[error("I/O virtual address {0:#x} is not DMA-mapped")]
    Unmapped(u64),
    /// A transfer touched a mapping that came without an fd.
    #[error("I/O virtual address {0:#x} is mapped without an fd")]
    NoFd(u64),
    /// A transfer needs an access the mapping does not grant.
    #[error("I/O virtual address {iova:#x} is not mapped for {access}")]
    Denied {
        /// The refused address.
        iova: u64,
        /// "read" or "write".
        access: &'static str,
    },
    /// Copying to or from the mapping failed.
    #[error("copying {len} bytes at I/O virtual address {iova:#x} failed")]
    Copy {
        /// Start of the failed piece.
        iova: u64,
        /// Length of the failed piece.
        len: usize,
    },
}

struct Mapping {
    size: u64,
    readable: bool,
    writable: bool,
    memory: Option<MmapRegion>,
}

/// One contiguous piece of a translated transfer.
struct Piece<'a> {
    memory: &'a MmapRegion,
    offset: usize,
    len: usize,
    iova: u64,
}

/// All DMA mappings of the current client, keyed by I/O virtual address.
#[derive(Default)]
pub struct DmaSpace {
    maps: BTreeMap<u64, Mapping>,
}

impl DmaSpace {
    /// Adds a mapping of `size` bytes at `iova`, backed by `fd` at `offset` (mmapped shared).
    /// A mapping without an fd is recorded, but transfers through it fail.
    pub fn map(
        &mut self,
        iova: u64,
        size: u64,
        fd: Option<File>,
        offset: u64,
        readable: bool,
        writable: bool,
    ) -> Result<(), DmaError> {
        let end = match iova.checked_add(size) {
            Some(end) if size > 0 => end,
            _ => return Err(DmaError::BadRange { iova, size }),
        };
        if let Some((start, m)) = self.maps.range(..end).next_back() {
            if start + m.size > iova {
                return Err(DmaError::Overlap { iova, size });
            }
        }
        if !readable && !writable {
            return Err(DmaError::NoAccess(iova));
        }
        let memory = match fd {
            None => None,
            Some(file) => Some(Self::mmap(file, offset, size, readable, writable)?),
        };
        self.maps.insert(
            iova,
            Mapping {
                size,
                readable,
                writable,
                memory,
            },
        );
        Ok(())
    }

    fn mmap(
        file: File,
        offset: u64,
        size: u64,
        readable: bool,
        writable: bool,
    ) -> Result<MmapRegion, DmaError> {
        let meta = file.metadata().map_err(DmaError::Stat)?;
        let past_eof = DmaError::PastEof {
            offset,
            size,
            file_len: meta.len(),
        };
        let end = offset.checked_add(size);
        if meta.is_file() && !matches!(end, Some(end) if end <= meta.len()) {
            return Err(past_eof);
        }
        let len = usize::try_from(size).map_err(|_| past_eof)?;
        let mut prot = 0;
        if readable {
            prot |= libc::PROT_READ;
        }
        if writable {
            prot |= libc::PROT_WRITE;
        }
        MmapRegion::build(
            Some(FileOffset::new(file, offset)),
            len,
            prot,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
        )
        .map_err(DmaError::Map)
    }

    /// Removes (and munmaps) every mapping inside `iova..iova + size`, or all of them.
    pub fn unmap(&mut self, iova: u64, size: u64, all: bool, dirty: bool) -> Result<(), DmaError> {
        if dirty {
            return Err(DmaError::DirtyTracking);
        }
        if all {
            self.maps.clear();
            return Ok(());
        }
        let end = iova
            .checked_add(size)
            .ok_or(DmaError::BadRange { iova, size })?;
        let mut doomed = Vec::new();
        // The mapping that starts before `iova` may reach into the range.
        if let Some((start, m)) = self.maps.range(..iova).next_back() {
            if start + m.size > iova {
                return Err(DmaError::Split { iova, size });
            }
        }
        for (start, m) in self.maps.range(iova..end) {
            if start + m.size > end {
                return Err(DmaError::Split { iova, size });
            }
            doomed.push(*start);
        }
        for start in doomed {
            self.maps.remove(&start);
        }
        Ok(())
    }

    /// Number of mappings held.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.maps.len()
    }

    fn translate(&self, iova: u64, len: usize, write: bool) -> Result<Vec<Piece<'_>>, DmaError> {
        let size = len as u64;
        let end = iova
            .checked_add(size)
            .ok_or(DmaError::BadRange { iova, size })?;
        let mut pieces = Vec::new();
        let mut cur = iova;
        while cur < end {
            let (start, m) = self
                .maps
                .range(..=cur)
                .next_back()
                .filter(|(start, m)| cur - **start < m.size)
                .ok_or(DmaError::Unmapped(cur))?;
            let allowed = if write { m.writable } else { m.readable };
            if !allowed {
                let access = if write { "write" } else { "read" };
                return Err(DmaError::Denied { iova: cur, access });
            }
            let memory = m.memory.as_ref().ok_or(DmaError::NoFd(cur))?;
            let offset = cur - start;
            let n = (end - cur).min(m.size - offset);
            pieces.push(Piece {
                memory,
                offset: usize::try_from(offset).map_err(|_| DmaError::Unmapped(cur))?,
                len: usize::try_from(n).map_err(|_| DmaError::Unmapped(cur))?,
                iova: cur,
            });
            cur += n;
        }
        Ok(pieces)
    }

    /// Copies guest memory at `iova` into `buf`; nothing is read unless all of it is mapped.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let mut rest = buf;
        for p in self.translate(iova, rest.len(), false)? {
            let (head, tail) = rest.split_at_mut(p.len.min(rest.len()));
            p.memory
                .as_volatile_slice()
                .read_slice(head, p.offset)
                .map_err(|_| DmaError::Copy {
                    iova: p.iova,
                    len: p.len,
                })?;
            rest = tail;
        }
        Ok(())
    }

    /// Copies `data` into guest memory at `iova`; nothing is written unless all of it is mapped.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let mut rest = data;
        for p in self.translate(iova, rest.len(), true)? {
            let (head, tail) = rest.split_at(p.len.min(rest.len()));
            p.memory
                .as_volatile_slice()
                .write_slice(head, p.offset)
                .map_err(|_| DmaError::Copy {
                    iova: p.iova,
                    len: p.len,
                })?;
            rest = tail;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A temporary regular file of `len` bytes, already unlinked.
    pub(crate) fn backing(len: u64) -> File {
        let dir = std::env::temp_dir();
        let name = format!(
            "vfio-user-testdev-dma-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let path = dir.join(name);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(len).unwrap();
        f
    }

    #[test]
    fn read_and_write_across_adjacent_mappings() {
        let f = backing(0x4000);
        let mut dma = DmaSpace::default();
        dma.map(
            0x10000,
            0x1000,
            Some(f.try_clone().unwrap()),
            0x1000,
            true,
            true,
        )
        .unwrap();
        dma.map(
            0x11000,
            0x1000,
            Some(f.try_clone().unwrap()),
            0x3000,
            true,
            true,
        )
        .unwrap();
        f.write_at(&[1, 2, 3, 4], 0x1ffe).unwrap();
        f.write_at(&[5, 6], 0x3000).unwrap();
        let mut b = [0u8; 4];
        dma.read(0x10ffe, &mut b).unwrap();
        assert_eq!(b, [1, 2, 5, 6]);
        dma.write(0x10fff, &[9, 9]).unwrap();
        let mut got = [0u8; 1];
        f.read_at(&mut got, 0x1fff).unwrap();
        assert_eq!(got, [9]);
        f.read_at(&mut got, 0x3000).unwrap();
        assert_eq!(got, [9]);
    }

    #[test]
    fn unmapped_bytes_fail_the_whole_transfer() {
        let f = backing(0x2000);
        let mut dma = DmaSpace::default();
        dma.map(0x10000, 0x1000, Some(f.try_clone().unwrap()), 0, true, true)
            .unwrap();
        assert!(matches!(
            dma.write(0x10ffe, &[7; 4]),
            Err(DmaError::Unmapped(0x11000))
        ));
        let mut got = [0u8; 2];
        f.read_at(&mut got, 0xffe).unwrap();
        assert_eq!(got, [0, 0]);
        assert!(dma.read(0xfff0, &mut [0; 0x20]).is_err());
        assert!(dma.read(u64::MAX - 1, &mut [0; 4]).is_err());
    }

    #[test]
    fn permissions_and_fdless_mappings() {
        let f = backing(0x1000);
        let mut dma = DmaSpace::default();
        dma.map(0x1000, 0x1000, Some(f), 0, true, false).unwrap();
        dma.map(0x2000, 0x1000, None, 0, true, true).unwrap();
        assert!(dma.read(0x1000, &mut [0; 4]).is_ok());
        assert!(matches!(
            dma.write(0x1000, &[0; 4]),
            Err(DmaError::Denied { .. })
        ));
        assert!(matches!(
            dma.read(0x2000, &mut [0; 4]),
            Err(DmaError::NoFd(0x2000))
        ));
    }

    #[test]
    fn bad_maps_are_refused() {
        let mut dma = DmaSpace::default();
        assert!(dma.map(0, 0, None, 0, true, true).is_err());
        assert!(dma.map(u64::MAX, 2, None, 0, true, true).is_err());
        assert!(dma.map(0x1000, 0x1000, None, 0, false, false).is_err());
        let f = backing(0x1000);
        assert!(matches!(
            dma.map(0x1000, 0x2000, Some(f), 0, true, true),
            Err(DmaError::PastEof { .. })
        ));
        dma.map(0x1000, 0x1000, None, 0, true, true).unwrap();
        assert!(dma.map(0x1800, 0x1000, None, 0, true, true).is_err());
        assert!(dma.map(0x800, 0x1000, None, 0, true, true).is_err());
        assert!(dma.map(0x2000, 0x1000, None, 0, true, true).is_ok());
    }

    #[test]
    fn unmap_removes_whole_mappings_only() {
        let mut dma = DmaSpace::default();
        dma.map(0x1000, 0x1000, None, 0, true, true).unwrap();
        dma.map(0x3000, 0x1000, None, 0, true, true).unwrap();
        assert!(matches!(
            dma.unmap(0x1800, 0x1000, false, false),
            Err(DmaError::Split { .. })
        ));
        assert!(dma.unmap(0x3000, 0x800, false, false).is_err());
        dma.unmap(0, 0x2000, false, false).unwrap();
        assert_eq!(dma.count(), 1);
        dma.unmap(0x5000, 0x1000, false, false).unwrap();
        assert!(dma.unmap(0, 0, false, true).is_err());
        dma.unmap(0, 0, true, false).unwrap();
        assert_eq!(dma.count(), 0);
    }
}
