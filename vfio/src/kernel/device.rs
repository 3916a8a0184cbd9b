//! One host PCI function opened through kernel VFIO: the [`VfioBackend`] the passthrough
//! function drives. vfio-ioctls opened it (group attach, device fd); regions, interrupts,
//! reset and region I/O go through [`super::ioctl`] on its fd so that capability chains and
//! errors are seen.

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_bindings::bindings::vfio::VFIO_DEVICE_FLAGS_RESET;
use vfio_ioctls::VfioDevice;

use crate::backend::{
    BackendError, BackendKind, DmaRegion, IrqInfo, Isolation, RegionInfo, RegionMmap, VfioBackend,
    IRQ_INTX, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE, PCI_REGIONS,
};
use crate::caps::{REGION_FLAG_READ, REGION_FLAG_WRITE};

use super::container::KernelVfio;
use super::dma::Owner;
use super::error::KernelOpenError;
use super::ioctl::{self, DeviceInfo, KernelRegion};
use super::sysfs::HostDevice;

/// vfio-pci's VGA region index: absent (EINVAL) on every non-VGA device.
const VGA_REGION: u32 = 8;
/// Granule of mmap offsets and lengths.
const PAGE_SIZE: u64 = 4096;

/// A host PCI function passed through with kernel VFIO. Dropping it releases its DMA
/// claims and closes the device (the kernel disables its interrupts and resets it).
pub struct VfioKernelDevice {
    host: Arc<KernelVfio>,
    owner: Owner,
    bdf: String,
    group: u32,
    sysfs_path: PathBuf,
    info: DeviceInfo,
    regions: BTreeMap<u32, KernelRegion>,
    irqs: BTreeMap<u32, IrqInfo>,
    isolation: Isolation,
    device: ManuallyDrop<VfioDevice>,
}

impl std::fmt::Debug for VfioKernelDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioKernelDevice")
            .field("bdf", &self.bdf)
            .field("group", &self.group)
            .field("info", &self.info)
            .field("regions", &self.regions)
            .field("irqs", &self.irqs)
            .field("isolation", &self.isolation)
            .finish_non_exhaustive()
    }
}

impl VfioKernelDevice {
    /// Reads the regions and interrupts of a device vfio-ioctls just opened.
    pub(crate) fn load(
        host: Arc<KernelVfio>,
        owner: Owner,
        dev: &HostDevice,
        device: VfioDevice,
        isolation: Isolation,
    ) -> Result<Self, KernelOpenError> {
        let info = ioctl::device_info(&device).map_err(|e| KernelOpenError::Host {
            bdf: dev.bdf.clone(),
            op: "VFIO_DEVICE_GET_INFO",
            detail: e.to_string(),
        })?;
        let mut regions = BTreeMap::new();
        for index in 0..info.num_regions.min(PCI_REGIONS) {
            let bytes = match ioctl::region_info_bytes(&device, index) {
                Ok(b) => b,
                Err(e) if index == VGA_REGION && e.raw_os_error() == Some(libc::EINVAL) => continue,
                Err(e) => {
                    log::warn!("vfio: {}: region {index} info: {e}", dev.bdf);
                    continue;
                }
            };
            match ioctl::decode_region(&bytes) {
                Ok((region, broken)) => {
                    if let Some(e) = broken {
                        log::warn!(
                            "vfio: {}: region {index} capability chain malformed ({e}); \
                             the region will not be mapped",
                            dev.bdf
                        );
                    }
                    regions.insert(index, region);
                }
                Err(e) => log::warn!("vfio: {}: region {index} info: {e}", dev.bdf),
            }
        }
        let mut irqs = BTreeMap::new();
        for index in 0..info.num_irqs {
            match ioctl::irq_info(&device, index) {
                Ok(irq) => {
                    irqs.insert(index, irq);
                }
                Err(e) => log::warn!("vfio: {}: IRQ index {index} info: {e}", dev.bdf),
            }
        }
        Ok(VfioKernelDevice {
            host,
            owner,
            bdf: dev.bdf.clone(),
            group: dev.group,
            sysfs_path: dev.path.clone(),
            info,
            regions,
            irqs,
            isolation,
            device: ManuallyDrop::new(device),
        })
    }

    /// The device's IOMMU group.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// Its sysfs directory.
    pub fn sysfs_path(&self) -> &Path {
        &self.sysfs_path
    }

    /// Whether VFIO_DEVICE_RESET is available (function-level or another reset method).
    pub fn resettable(&self) -> bool {
        self.info.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// Offset of region `index` in the device fd (pread/pwrite/mmap), if it exists.
    pub fn region_fd_offset(&self, index: u32) -> Option<u64> {
        self.regions.get(&index).map(|r| r.fd_offset)
    }

    fn fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }

    /// Region `index`, checked to allow `flag` over `[offset, offset + len)`; returns the
    /// offset in the device fd.
    fn span(
        &self,
        op: &'static str,
        index: u32,
        offset: u64,
        len: u64,
        flag: u32,
    ) -> Result<u64, BackendError> {
        let r = self
            .regions
            .get(&index)
            .ok_or_else(|| BackendError::Invalid {
                op,
                what: format!("no region {index}"),
            })?;
        if r.info.flags & flag == 0 {
            return Err(BackendError::Invalid {
                op,
                what: format!(
                    "region {index} does not allow it (flags {:#x})",
                    r.info.flags
                ),
            });
        }
        let inside = offset
            .checked_add(len)
            .is_some_and(|end| end <= r.info.size);
        if !inside {
            return Err(BackendError::Invalid {
                op,
                what: format!(
                    "[{offset:#x}, +{len:#x}) leaves region {index} (size {:#x})",
                    r.info.size
                ),
            });
        }
        r.fd_offset
            .checked_add(offset)
            .ok_or_else(|| BackendError::Invalid {
                op,
                what: format!("region {index} offset overflows"),
            })
    }

    /// VFIO_DEVICE_SET_IRQS for interrupts `start..start + count` of `index`, with `fds`
    /// as data (empty for DATA_NONE).
    fn set_irqs(
        &self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        fds: &[i32],
    ) -> Result<(), BackendError> {
        let words = ioctl::irq_set_words(flags, index, start, count, fds);
        ioctl::set_irqs(&*self.device, &words).map_err(|source| BackendError::Io {
            op: "VFIO_DEVICE_SET_IRQS",
            source,
        })
    }
}

impl VfioBackend for VfioKernelDevice {
    fn describe(&self) -> &str {
        &self.bdf
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Kernel
    }

    fn isolation(&self) -> Isolation {
        self.isolation.clone()
    }

    fn region(&self, index: u32) -> Option<&RegionInfo> {
        self.regions.get(&index).map(|r| &r.info)
    }

    fn irq(&self, index: u32) -> Option<IrqInfo> {
        self.irqs.get(&index).copied()
    }

    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), BackendError> {
        const OP: &str = "region read";
        let at = self.span(OP, index, offset, data.len() as u64, REGION_FLAG_READ)?;
        ioctl::read_exact_at(self.fd(), data, at)
            .map_err(|source| BackendError::Io { op: OP, source })
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        const OP: &str = "region write";
        let at = self.span(OP, index, offset, data.len() as u64, REGION_FLAG_WRITE)?;
        ioctl::write_all_at(self.fd(), data, at)
            .map_err(|source| BackendError::Io { op: OP, source })
    }

    fn mmap(&self, index: u32, offset: u64, size: u64) -> Result<RegionMmap, BackendError> {
        const OP: &str = "mmap";
        let r = self
            .regions
            .get(&index)
            .ok_or_else(|| BackendError::Invalid {
                op: OP,
                what: format!("no region {index}"),
            })?;
        let end = offset
            .checked_add(size)
            .ok_or_else(|| BackendError::Invalid {
                op: OP,
                what: "range wraps".into(),
            })?;
        let in_area = r
            .info
            .mmap_areas()
            .iter()
            .any(|a| a.offset <= offset && end <= a.offset.saturating_add(a.size));
        if size == 0 || !in_area {
            return Err(BackendError::Invalid {
                op: OP,
                what: format!(
                    "[{offset:#x}, +{size:#x}) of region {index} is not inside one of its \
                     mmap areas"
                ),
            });
        }
        if !offset.is_multiple_of(PAGE_SIZE) {
            return Err(BackendError::Invalid {
                op: OP,
                what: format!("offset {offset:#x} is not page-aligned"),
            });
        }
        let at = r
            .fd_offset
            .checked_add(offset)
            .ok_or_else(|| BackendError::Invalid {
                op: OP,
                what: "offset overflows".into(),
            })?;
        let len = usize::try_from(size).map_err(|_| BackendError::Invalid {
            op: OP,
            what: format!("size {size:#x} too large"),
        })?;
        RegionMmap::map(self.fd(), at, len)
    }

    fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        fds: &[Option<RawFd>],
    ) -> Result<(), BackendError> {
        const OP: &str = "VFIO_DEVICE_SET_IRQS";
        let count = self.irqs.get(&index).map_or(0, |i| i.count);
        let n = u32::try_from(fds.len()).unwrap_or(u32::MAX);
        if start.checked_add(n).is_none_or(|end| end > count) {
            return Err(BackendError::Invalid {
                op: OP,
                what: format!(
                    "interrupts {start}..{start}+{} of IRQ index {index} (the device has {count})",
                    fds.len()
                ),
            });
        }
        if fds.is_empty() {
            return Ok(());
        }
        let data: Vec<i32> = fds.iter().map(|fd| fd.unwrap_or(-1)).collect();
        self.set_irqs(
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            index,
            start,
            n,
            &data,
        )
    }

    fn disable_irqs(&mut self, index: u32) -> Result<(), BackendError> {
        if self.irqs.get(&index).map_or(0, |i| i.count) == 0 {
            return Err(BackendError::Invalid {
                op: "VFIO_DEVICE_SET_IRQS",
                what: format!("the device has no IRQ index {index}"),
            });
        }
        self.set_irqs(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, index, 0, 0, &[])
    }

    fn unmask_intx(&mut self) -> Result<(), BackendError> {
        if self.irqs.get(&IRQ_INTX).map_or(0, |i| i.count) == 0 {
            return Err(BackendError::Invalid {
                op: "VFIO_DEVICE_SET_IRQS",
                what: "the device has no INTx".into(),
            });
        }
        self.set_irqs(
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
            IRQ_INTX,
            0,
            1,
            &[],
        )
    }

    fn reset(&mut self) -> Result<(), BackendError> {
        if !self.resettable() {
            return Err(BackendError::Invalid {
                op: "VFIO_DEVICE_RESET",
                what: format!("{} offers no reset method", self.bdf),
            });
        }
        ioctl::reset(&*self.device).map_err(|source| BackendError::Io {
            op: "VFIO_DEVICE_RESET",
            source,
        })
    }

    fn dma_map(&mut self, region: &DmaRegion) -> Result<(), BackendError> {
        self.host.claim(self.owner, region)
    }

    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), BackendError> {
        self.host.release(self.owner, iova, size)
    }

    fn dma_map_with(
        &mut self,
        region: &DmaRegion,
        read: bool,
        write: bool,
    ) -> Result<(), BackendError> {
        self.host.claim_with(self.owner, region, read, write)
    }
}

impl Drop for VfioKernelDevice {
    fn drop(&mut self) {
        self.host.release_all(self.owner);
        // vfio-ioctls' drop re-reads the group from sysfs and unwraps the answer; if the
        // device's sysfs entry is gone, leak it (the kernel reclaims it at exit) rather than
        // panic in a destructor.
        if std::fs::read_link(self.sysfs_path.join("iommu_group")).is_ok() {
            // SAFETY: dropped exactly once, here; the field is never used afterwards.
            unsafe { ManuallyDrop::drop(&mut self.device) };
        } else {
            log::warn!(
                "vfio: {}: sysfs entry gone; leaving the device fd open until exit",
                self.bdf
            );
        }
        self.host.device_closed(&self.bdf, self.group);
    }
}
