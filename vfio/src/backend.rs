//! What a passthrough PCI function needs from the device, whoever provides it: the host
//! kernel's VFIO (`/dev/vfio`, vfio-ioctls) or a device server speaking vfio-user over a
//! UNIX socket. [`crate::function`] builds the guest-visible PCI function on this trait only.
//!
//! Region and IRQ indices are vfio-pci's (`include/uapi/linux/vfio.h`): BARs 0–5, the
//! expansion ROM 6, configuration space 7; INTx 0, MSI 1, MSI-X 2.

use std::os::fd::{OwnedFd, RawFd};
use std::ptr::NonNull;

use thiserror::Error;

use crate::caps::{RegionCaps, SparseArea, REGION_FLAG_MMAP};

/// Region index of BAR 0 (BAR `n` is `n`).
pub const BAR0_REGION: u32 = 0;
/// Region index of the expansion ROM.
pub const ROM_REGION: u32 = 6;
/// Region index of configuration space.
pub const CONFIG_REGION: u32 = 7;
/// Number of region indices a PCI device defines (BARs, ROM, config, VGA).
pub const PCI_REGIONS: u32 = 9;
/// IRQ index of INTx.
pub const IRQ_INTX: u32 = 0;
/// IRQ index of MSI.
pub const IRQ_MSI: u32 = 1;
/// IRQ index of MSI-X.
pub const IRQ_MSIX: u32 = 2;

/// `VFIO_IRQ_SET_DATA_NONE`.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_BOOL`.
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_ACTION_MASK`.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// `VFIO_IRQ_SET_ACTION_UNMASK`.
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// IRQ info flag: eventfd signalling supported.
pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// IRQ info flag: maskable.
pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// IRQ info flag: automasked (INTx: the host masks it on each interrupt).
pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;

/// Which kind of backend serves a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The host kernel's vfio-pci.
    Kernel,
    /// A vfio-user device server.
    User,
}

/// Whether the host keeps the device's MSIs from reaching anything but its own interrupts,
/// and how that was established (logged with the MSI-X placement decision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// MSIs are isolated.
    pub isolated: bool,
    /// Why the backend says so (one clause, e.g. "vfio_iommu_type1 attached the group
    /// with allow_unsafe_interrupts=N").
    pub reason: String,
}

/// One region of the device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Region index.
    pub index: u32,
    /// `caps::REGION_FLAG_*`.
    pub flags: u32,
    /// Size in bytes (0: the region does not exist).
    pub size: u64,
    /// Its capability chain.
    pub caps: RegionCaps,
}

impl RegionInfo {
    /// The parts of the region that may be mmapped: none without the MMAP flag, the sparse
    /// areas when the region has SPARSE_MMAP, else the whole region. Areas that leave the
    /// region are dropped.
    pub fn mmap_areas(&self) -> Vec<SparseArea> {
        if self.flags & REGION_FLAG_MMAP == 0 || self.size == 0 {
            return Vec::new();
        }
        match &self.caps.sparse {
            None => vec![SparseArea {
                offset: 0,
                size: self.size,
            }],
            Some(areas) => areas
                .iter()
                .copied()
                .filter(|a| {
                    a.size > 0
                        && a.offset
                            .checked_add(a.size)
                            .is_some_and(|end| end <= self.size)
                })
                .collect(),
        }
    }
}

/// One IRQ index of the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqInfo {
    /// IRQ index.
    pub index: u32,
    /// `IRQ_INFO_*`.
    pub flags: u32,
    /// Number of interrupts (vectors) at this index; 0 when unsupported.
    pub count: u32,
}

/// A stretch of guest RAM the device may reach by DMA, at the same I/O virtual address as
/// its guest-physical address (no DMA remapping yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRegion {
    /// I/O virtual address (the guest-physical address).
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
    /// Where the VMM maps it (kernel VFIO pins these pages).
    pub host_addr: u64,
    /// The memfd backing it (vfio-user servers map it).
    pub fd: RawFd,
    /// Offset of the region in `fd`.
    pub fd_offset: u64,
}

/// Failures talking to the device after it was opened. They never stop the VM: the
/// passthrough function logs them once and answers the guest as hardware with a dead
/// device would (reads all ones, writes dropped).
#[derive(Debug, Error)]
pub enum BackendError {
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The device (or its server) refused the request.
    #[error("{op}: the device refused it (errno {errno})")]
    Refused {
        /// The operation.
        op: &'static str,
        /// The error number it answered with.
        errno: i32,
    },
    /// The server's reply did not follow the protocol.
    #[error("{op}: malformed reply: {what}")]
    Protocol {
        /// The operation.
        op: &'static str,
        /// What was wrong.
        what: String,
    },
    /// The server did not answer in time.
    #[error("{op}: no reply within {millis} ms")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The limit.
        millis: u64,
    },
    /// The connection is gone (the server exited or broke the protocol earlier).
    #[error("the device server is gone")]
    Gone,
    /// The request is outside what the device offers (bad index, range past the region).
    #[error("{op}: {what}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// What was out of range.
        what: String,
    },
}

/// A live shared mapping of part of a region; unmapped on drop.
#[derive(Debug)]
pub struct RegionMmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; accesses go through
// volatile reads and writes, and the address stays valid until drop.
unsafe impl Send for RegionMmap {}
// SAFETY: as above; concurrent volatile accesses to shared memory are what the device
// itself does.
unsafe impl Sync for RegionMmap {}

impl RegionMmap {
    /// Maps `len` bytes of `fd` at `offset`, shared and read-write.
    pub fn map(fd: RawFd, offset: u64, len: usize) -> Result<Self, BackendError> {
        let off = libc::off_t::try_from(offset).map_err(|_| BackendError::Invalid {
            op: "mmap",
            what: format!("file offset {offset:#x} too large"),
        })?;
        if len == 0 {
            return Err(BackendError::Invalid {
                op: "mmap",
                what: "zero-length area".into(),
            });
        }
        // SAFETY: a fresh mapping chosen by the kernel (no fixed address), checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BackendError::Io {
                op: "mmap",
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(BackendError::Invalid {
            op: "mmap",
            what: "null mapping".into(),
        })?;
        Ok(RegionMmap { ptr, len })
    }

    /// The host address of the mapping (for KVM memory slots).
    pub fn host_addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: mappings are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads `data.len()` bytes at `offset` (volatile, byte-wise for odd sizes); false
    /// when the range leaves the mapping.
    pub fn read(&self, offset: usize, data: &mut [u8]) -> bool {
        if offset.checked_add(data.len()).is_none_or(|e| e > self.len) {
            return false;
        }
        // SAFETY: the range is inside the live mapping (checked above).
        let src = unsafe { self.ptr.as_ptr().add(offset) };
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                // SAFETY: aligned and inside the mapping.
                let v = unsafe { std::ptr::read_volatile(src.cast::<u32>()) };
                data.copy_from_slice(&v.to_ne_bytes());
            }
            8 if offset.is_multiple_of(8) => {
                // SAFETY: aligned and inside the mapping.
                let v = unsafe { std::ptr::read_volatile(src.cast::<u64>()) };
                data.copy_from_slice(&v.to_ne_bytes());
            }
            _ => {
                for (i, b) in data.iter_mut().enumerate() {
                    // SAFETY: inside the mapping.
                    *b = unsafe { std::ptr::read_volatile(src.add(i)) };
                }
            }
        }
        true
    }

    /// Writes `data` at `offset` (volatile); false when the range leaves the mapping.
    pub fn write(&self, offset: usize, data: &[u8]) -> bool {
        if offset.checked_add(data.len()).is_none_or(|e| e > self.len) {
            return false;
        }
        // SAFETY: the range is inside the live mapping (checked above).
        let dst = unsafe { self.ptr.as_ptr().add(offset) };
        match data.len() {
            4 if offset.is_multiple_of(4) => {
                let v = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
                // SAFETY: aligned and inside the mapping.
                unsafe { std::ptr::write_volatile(dst.cast::<u32>(), v) };
            }
            8 if offset.is_multiple_of(8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                // SAFETY: aligned and inside the mapping.
                unsafe { std::ptr::write_volatile(dst.cast::<u64>(), u64::from_ne_bytes(b)) };
            }
            _ => {
                for (i, b) in data.iter().enumerate() {
                    // SAFETY: inside the mapping.
                    unsafe { std::ptr::write_volatile(dst.add(i), *b) };
                }
            }
        }
        true
    }
}

impl Drop for RegionMmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value created.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A device as the passthrough function sees it. Every call may fail at run time (a
/// server that died, a device that fell off the bus); callers degrade, never panic.
pub trait VfioBackend: Send {
    /// Names the device in log lines and errors (`0000:01:00.0`, or the socket path).
    fn describe(&self) -> &str;
    /// Kernel VFIO or vfio-user.
    fn kind(&self) -> BackendKind;
    /// Whether the host isolates the device's MSIs.
    fn isolation(&self) -> Isolation;
    /// Region `index` as learnt when the device was opened (`None`: no such region).
    fn region(&self, index: u32) -> Option<&RegionInfo>;
    /// IRQ index `index` as learnt when the device was opened.
    fn irq(&self, index: u32) -> Option<IrqInfo>;
    /// Reads `data.len()` bytes of region `index` at `offset`.
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8])
        -> Result<(), BackendError>;
    /// Writes `data` to region `index` at `offset`.
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError>;
    /// Maps `[offset, offset + size)` of region `index` (inside one of its mmap areas).
    fn mmap(&self, index: u32, offset: u64, size: u64) -> Result<RegionMmap, BackendError>;
    /// Signals interrupts `start..start + fds.len()` of IRQ index `index` through these
    /// eventfds (`None`: that one is not signalled), enabling the index if needed.
    fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        fds: &[Option<RawFd>],
    ) -> Result<(), BackendError>;
    /// Disables every interrupt of IRQ index `index`.
    fn disable_irqs(&mut self, index: u32) -> Result<(), BackendError>;
    /// Unmasks INTx after the guest's EOI (the host masked it when it fired).
    fn unmask_intx(&mut self) -> Result<(), BackendError>;
    /// Resets the device (function-level reset or the server's equivalent).
    fn reset(&mut self) -> Result<(), BackendError>;
    /// Makes `region` of guest RAM reachable by the device's DMA.
    fn dma_map(&mut self, region: &DmaRegion) -> Result<(), BackendError>;
    /// Removes a DMA mapping made by [`VfioBackend::dma_map`] (or
    /// [`VfioBackend::dma_map_with`]).
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), BackendError>;
    /// Makes `region` reachable by the device's DMA with exactly the permissions given:
    /// reads when `read`, writes when `write` (a guest IOMMU's read-only or write-only
    /// mapping, shadowed). The default serves read-write only.
    fn dma_map_with(
        &mut self,
        region: &DmaRegion,
        read: bool,
        write: bool,
    ) -> Result<(), BackendError> {
        if read && write {
            return self.dma_map(region);
        }
        Err(BackendError::Invalid {
            op: "DMA map",
            what: "this backend maps guest memory read-write only".into(),
        })
    }
    /// A descriptor (the caller's own duplicate) that reports a hang-up when the device
    /// goes away (a vfio-user server's socket), so the VMM can stop mapping its memory into
    /// the guest at once.
    fn hangup_fd(&self) -> Option<OwnedFd> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmap_areas_follow_flags_and_sparse_caps() {
        let mut r = RegionInfo {
            index: 0,
            flags: crate::caps::REGION_FLAG_READ,
            size: 0x4000,
            caps: RegionCaps::default(),
        };
        assert!(r.mmap_areas().is_empty(), "no MMAP flag, nothing to map");
        r.flags |= REGION_FLAG_MMAP;
        assert_eq!(
            r.mmap_areas(),
            vec![SparseArea {
                offset: 0,
                size: 0x4000
            }]
        );
        r.caps.sparse = Some(vec![
            SparseArea {
                offset: 0x1000,
                size: 0x1000,
            },
            SparseArea {
                offset: 0x3000,
                size: 0x2000,
            },
            SparseArea {
                offset: u64::MAX,
                size: 2,
            },
            SparseArea { offset: 0, size: 0 },
        ]);
        assert_eq!(
            r.mmap_areas(),
            vec![SparseArea {
                offset: 0x1000,
                size: 0x1000
            }],
            "areas leaving the region or empty are dropped"
        );
    }

    #[test]
    fn region_mmap_reads_and_writes_shared_memory() {
        // SAFETY: creating an anonymous memfd.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: sizing our own memfd.
        assert_eq!(unsafe { libc::ftruncate(fd, 8192) }, 0);
        let a = RegionMmap::map(fd, 0, 8192).unwrap();
        let b = RegionMmap::map(fd, 4096, 4096).unwrap();
        assert!(a.write(4096 + 8, &0x1122_3344u32.to_ne_bytes()));
        let mut v = [0u8; 4];
        assert!(b.read(8, &mut v));
        assert_eq!(u32::from_ne_bytes(v), 0x1122_3344);
        assert!(!b.read(4094, &mut v), "past the end");
        assert!(!b.write(usize::MAX, &v));
        // SAFETY: closing our own fd; the mappings stay valid.
        unsafe { libc::close(fd) };
    }
}
