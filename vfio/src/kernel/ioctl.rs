//! The VFIO device-fd calls irvmm issues itself rather than through vfio-ioctls, because
//! vfio-ioctls 0.10 hides what they return: the raw region-info bytes (irvmm parses the
//! capability chain with [`crate::caps`]), the device flags (RESET), the errors of
//! SET_IRQS and RESET, interrupt sub-ranges and `-1` eventfds, and the errors of region
//! reads and writes. The request buffers are built by pure functions, tested here.

use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_iommu_type1_dma_map, vfio_irq_info, VFIO_BASE, VFIO_DMA_MAP_FLAG_READ,
    VFIO_DMA_MAP_FLAG_WRITE, VFIO_TYPE,
};
use vmm_sys_util::ioctl::{
    ioctl, ioctl_with_mut_ptr, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref,
};

use crate::backend::{IrqInfo, RegionInfo};
use crate::caps::{self, CapError, RawRegionInfo, RegionCaps, REGION_FLAG_CAPS, REGION_FLAG_MMAP};

vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 7);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE as u32, VFIO_BASE + 8);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO_TYPE as u32, VFIO_BASE + 9);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE as u32, VFIO_BASE + 10);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE as u32, VFIO_BASE + 11);
vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 13);

/// Largest region-info answer accepted (fixed part and capability chain); real chains are
/// a few hundred bytes.
pub const MAX_REGION_INFO: usize = 64 * 1024;
/// Size of `struct vfio_irq_set` without its data.
pub const IRQ_SET_HEADER: usize = 20;
/// Size of `struct vfio_irq_info`.
const IRQ_INFO_SIZE: u32 = 16;
/// Size of `struct vfio_device_info` as irvmm asks for it.
const DEVICE_INFO_SIZE: u32 = 24;

/// What VFIO_DEVICE_GET_INFO says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*` (RESET, PCI, ...).
    pub flags: u32,
    /// Number of region indices.
    pub num_regions: u32,
    /// Number of IRQ indices.
    pub num_irqs: u32,
}

/// A region as the kernel describes it: what the backend trait shares, plus where the
/// region lives in the device fd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRegion {
    /// Index, flags, size and capabilities.
    pub info: RegionInfo,
    /// Offset of the region in the device fd (pread, pwrite, mmap).
    pub fd_offset: u64,
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// VFIO_DEVICE_GET_INFO.
pub fn device_info(fd: &impl AsRawFd) -> io::Result<DeviceInfo> {
    let mut info = vfio_device_info {
        argsz: DEVICE_INFO_SIZE,
        ..Default::default()
    };
    // SAFETY: `info` is a writable vfio_device_info of `argsz` bytes that outlives the call;
    // the return value is checked.
    let ret = unsafe { ioctl_with_mut_ref(fd, VFIO_DEVICE_GET_INFO(), &mut info) };
    if ret < 0 {
        return Err(last_error());
    }
    Ok(DeviceInfo {
        flags: info.flags,
        num_regions: info.num_regions,
        num_irqs: info.num_irqs,
    })
}

/// Issues VFIO_DEVICE_GET_REGION_INFO for `index` with a buffer of `argsz` bytes.
fn region_info_call(fd: &impl AsRawFd, index: u32, argsz: usize) -> io::Result<Vec<u8>> {
    // u64 words keep the buffer aligned for the structure's u64 fields.
    let mut words = vec![0u64; argsz.div_ceil(8)];
    let head = RawRegionInfo {
        argsz: u32::try_from(argsz).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        index,
        ..Default::default()
    }
    .to_bytes();
    for (w, chunk) in words.iter_mut().zip(head.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_ne_bytes(b);
    }
    // SAFETY: the buffer holds at least `argsz` writable bytes (what the kernel may fill)
    // and outlives the call; the return value is checked.
    let ret = unsafe { ioctl_with_mut_ptr(fd, VFIO_DEVICE_GET_REGION_INFO(), words.as_mut_ptr()) };
    if ret < 0 {
        return Err(last_error());
    }
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    bytes.truncate(argsz);
    Ok(bytes)
}

/// The whole VFIO_DEVICE_GET_REGION_INFO answer for `index`, capability chain included:
/// asks with the fixed size first, then again with the size the kernel says it needs.
pub fn region_info_bytes(fd: &impl AsRawFd, index: u32) -> io::Result<Vec<u8>> {
    let first = region_info_call(fd, index, caps::REGION_INFO_SIZE)?;
    let head = RawRegionInfo::parse(&first)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let need = head.argsz as usize;
    if head.flags & REGION_FLAG_CAPS == 0 || need <= caps::REGION_INFO_SIZE {
        return Ok(first);
    }
    if need > MAX_REGION_INFO {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("region {index} info claims {need} bytes"),
        ));
    }
    region_info_call(fd, index, need)
}

/// Decodes a region-info answer. A malformed capability chain does not fail the region:
/// it is kept without capabilities and without the MMAP flag (so nothing of it is mapped
/// that a SPARSE_MMAP capability might have excluded), and the error is returned beside it.
pub fn decode_region(bytes: &[u8]) -> Result<(KernelRegion, Option<CapError>), CapError> {
    let raw = RawRegionInfo::parse(bytes)?;
    let mut flags = raw.flags;
    let (caps, broken) = if raw.flags & REGION_FLAG_CAPS != 0 && raw.cap_offset != 0 {
        match caps::parse_chain(bytes, raw.cap_offset) {
            Ok(c) => (c, None),
            Err(e) => {
                flags &= !REGION_FLAG_MMAP;
                (RegionCaps::default(), Some(e))
            }
        }
    } else {
        (RegionCaps::default(), None)
    };
    Ok((
        KernelRegion {
            info: RegionInfo {
                index: raw.index,
                flags,
                size: raw.size,
                caps,
            },
            fd_offset: raw.offset,
        },
        broken,
    ))
}

/// VFIO_DEVICE_GET_IRQ_INFO for `index`.
pub fn irq_info(fd: &impl AsRawFd, index: u32) -> io::Result<IrqInfo> {
    let mut info = vfio_irq_info {
        argsz: IRQ_INFO_SIZE,
        flags: 0,
        index,
        count: 0,
    };
    // SAFETY: `info` is a writable vfio_irq_info of `argsz` bytes that outlives the call;
    // the return value is checked.
    let ret = unsafe { ioctl_with_mut_ref(fd, VFIO_DEVICE_GET_IRQ_INFO(), &mut info) };
    if ret < 0 {
        return Err(last_error());
    }
    Ok(IrqInfo {
        index,
        flags: info.flags,
        count: info.count,
    })
}

/// A `struct vfio_irq_set` with `data` (eventfds, or nothing) as 32-bit words.
pub fn irq_set_words(flags: u32, index: u32, start: u32, count: u32, data: &[i32]) -> Vec<u32> {
    let argsz = IRQ_SET_HEADER + data.len() * 4;
    let mut w = Vec::with_capacity(argsz / 4);
    w.extend_from_slice(&[argsz as u32, flags, index, start, count]);
    // Eventfd numbers travel as the kernel's `s32`; the bit pattern is what matters.
    w.extend(data.iter().map(|&fd| fd as u32));
    w
}

/// VFIO_DEVICE_SET_IRQS with a request built by [`irq_set_words`].
pub fn set_irqs(fd: &impl AsRawFd, words: &[u32]) -> io::Result<()> {
    if words.len() * 4 < IRQ_SET_HEADER {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: `words` holds the whole request (header and data, `argsz` bytes as built by
    // irq_set_words); the kernel only reads it. The return value is checked.
    let ret = unsafe { ioctl_with_ptr(fd, VFIO_DEVICE_SET_IRQS(), words.as_ptr()) };
    if ret < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// The VFIO_IOMMU_MAP_DMA request mapping `size` bytes at `vaddr` to `iova` with the
/// device allowed to read (`read`) and write (`write`) them.
pub fn dma_map_request(
    iova: u64,
    size: u64,
    vaddr: u64,
    read: bool,
    write: bool,
) -> vfio_iommu_type1_dma_map {
    vfio_iommu_type1_dma_map {
        argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
        flags: if read { VFIO_DMA_MAP_FLAG_READ } else { 0 }
            | if write { VFIO_DMA_MAP_FLAG_WRITE } else { 0 },
        vaddr,
        iova,
        size,
    }
}

/// VFIO_IOMMU_MAP_DMA on the container fd with the permissions of `request` (vfio-ioctls
/// 0.10 always asks for read and write).
///
/// # Safety
///
/// `[request.vaddr, request.vaddr + request.size)` must be memory of this process that
/// stays mapped while the mapping exists and is touched only as guest memory: the
/// device may read or write it at any time.
pub unsafe fn map_dma(
    container: &impl AsRawFd,
    request: &vfio_iommu_type1_dma_map,
) -> io::Result<()> {
    // SAFETY: `request` is a complete `vfio_iommu_type1_dma_map` the kernel only reads; the
    // memory it names is the caller's to give (this function's contract). The return value
    // is checked.
    let ret = unsafe { ioctl_with_ref(container, VFIO_IOMMU_MAP_DMA(), request) };
    if ret < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// VFIO_DEVICE_RESET.
pub fn reset(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: an argument-less ioctl on the device fd; the return value is checked.
    let ret = unsafe { ioctl(fd, VFIO_DEVICE_RESET()) };
    if ret < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Runs `f` on the device fd viewed as a `File` (for positioned reads and writes) without
/// taking ownership of it.
fn with_file<R>(fd: RawFd, f: impl FnOnce(&File) -> R) -> R {
    // SAFETY: `fd` is the device fd, open for the whole call (the caller holds the device);
    // ManuallyDrop keeps this temporary File from closing it.
    let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    f(&file)
}

/// Reads `buf.len()` bytes of the device fd at `offset` (pread, retried on short reads).
pub fn read_exact_at(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<()> {
    with_file(fd, |f| f.read_exact_at(buf, offset))
}

/// Writes `buf` to the device fd at `offset` (pwrite, retried on short writes).
pub fn write_all_at(fd: RawFd, buf: &[u8], offset: u64) -> io::Result<()> {
    with_file(fd, |f| f.write_all_at(buf, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_map_requests_carry_the_permissions() {
        let r = dma_map_request(0x1000, 0x2000, 0x7f00_0000, true, false);
        assert_eq!(r.argsz, 32);
        assert_eq!(r.flags, VFIO_DMA_MAP_FLAG_READ);
        assert_eq!((r.iova, r.size, r.vaddr), (0x1000, 0x2000, 0x7f00_0000));
        assert_eq!(
            dma_map_request(0, 1, 0, true, true).flags,
            VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE
        );
        assert_eq!(
            dma_map_request(0, 1, 0, false, true).flags,
            VFIO_DMA_MAP_FLAG_WRITE
        );
    }
    use crate::backend::{IRQ_MSIX, IRQ_SET_ACTION_TRIGGER, IRQ_SET_DATA_EVENTFD};
    use crate::caps::build::{region_info, Cap};
    use crate::caps::{SparseArea, REGION_FLAG_READ, REGION_FLAG_WRITE};

    /// vfio-pci places region `i` at `i << 40` in the device fd.
    const VFIO_PCI_OFFSET_SHIFT: u32 = 40;
    const RW_MMAP: u32 = REGION_FLAG_READ | REGION_FLAG_WRITE | REGION_FLAG_MMAP;

    fn raw(index: u32, flags: u32, size: u64) -> RawRegionInfo {
        RawRegionInfo {
            flags,
            index,
            size,
            offset: u64::from(index) << VFIO_PCI_OFFSET_SHIFT,
            ..Default::default()
        }
    }

    /// BAR 0 of a NIC whose MSI-X table and PBA sit in page 0x3000 of a 16 KiB BAR, as a
    /// kernel that excludes them answers: SPARSE_MMAP areas around the hole, then
    /// MSIX_MAPPABLE absent.
    #[test]
    fn bar_with_sparse_holes_around_the_msix_table() {
        let areas = vec![
            SparseArea {
                offset: 0,
                size: 0x3000,
            },
            SparseArea {
                offset: 0x4000,
                size: 0xc000,
            },
        ];
        let bytes = region_info(raw(0, RW_MMAP, 0x10000), &[Cap::Sparse(areas.clone())]);
        let (r, broken) = decode_region(&bytes).unwrap();
        assert_eq!(broken, None);
        assert_eq!(r.fd_offset, 0);
        assert_eq!(r.info.size, 0x10000);
        assert_eq!(r.info.caps.sparse, Some(areas.clone()));
        assert!(!r.info.caps.msix_mappable);
        assert_eq!(r.info.mmap_areas(), areas);
    }

    /// BAR 2 holding the MSI-X table on Linux ≥ 4.16: mappable whole, MSIX_MAPPABLE, no
    /// sparse capability. The bytes are written out as the kernel returns them.
    #[test]
    fn bar_with_msix_mappable_and_no_sparse_cap() {
        #[rustfmt::skip]
        let bytes: [u8; 40] = [
            40, 0, 0, 0,            // argsz
            0x0f, 0, 0, 0,          // READ | WRITE | MMAP | CAPS
            2, 0, 0, 0,             // index
            32, 0, 0, 0,            // cap_offset
            0, 0x40, 0, 0, 0, 0, 0, 0,    // size 0x4000
            0, 0, 0, 0, 0, 2, 0, 0,       // offset 2 << 40
            3, 0, 1, 0, 0, 0, 0, 0,       // MSIX_MAPPABLE v1, next 0
        ];
        let (r, broken) = decode_region(&bytes).unwrap();
        assert_eq!(broken, None);
        assert_eq!(r.fd_offset, 2 << VFIO_PCI_OFFSET_SHIFT);
        assert_eq!(r.info.index, 2);
        assert!(r.info.caps.msix_mappable);
        assert_eq!(r.info.caps.sparse, None);
        assert_eq!(
            r.info.mmap_areas(),
            vec![SparseArea {
                offset: 0,
                size: 0x4000
            }]
        );
        // Same answer built with the shared builder.
        let built = region_info(raw(2, RW_MMAP, 0x4000), &[Cap::MsixMappable]);
        assert_eq!(built, bytes.to_vec());
    }

    /// Configuration space: readable and writable, never mappable, no capabilities.
    #[test]
    fn config_region() {
        let bytes = region_info(raw(7, REGION_FLAG_READ | REGION_FLAG_WRITE, 4096), &[]);
        let (r, broken) = decode_region(&bytes).unwrap();
        assert_eq!(broken, None);
        assert_eq!(r.fd_offset, 7 << VFIO_PCI_OFFSET_SHIFT);
        assert_eq!(r.info.size, 4096);
        assert!(r.info.mmap_areas().is_empty());
        assert_eq!(r.info.caps, RegionCaps::default());
    }

    /// The first, fixed-size answer of the two-step query: CAPS set, argsz grown, no chain
    /// copied (cap_offset 0). Decoding it yields no capabilities and no error.
    #[test]
    fn first_step_answer_without_room_for_caps() {
        let mut head = raw(0, RW_MMAP | REGION_FLAG_CAPS, 0x4000);
        head.argsz = 64;
        let (r, broken) = decode_region(&head.to_bytes()).unwrap();
        assert_eq!(broken, None);
        assert_eq!(r.info.caps, RegionCaps::default());
    }

    #[test]
    fn broken_chain_keeps_region_but_drops_mmap() {
        let mut bytes = region_info(
            raw(0, RW_MMAP, 0x4000),
            &[Cap::Sparse(vec![SparseArea {
                offset: 0,
                size: 0x1000,
            }])],
        );
        // nr_areas far beyond the buffer.
        bytes[40..44].copy_from_slice(&1000u32.to_ne_bytes());
        let (r, broken) = decode_region(&bytes).unwrap();
        assert!(matches!(broken, Some(CapError::AreaCount { .. })));
        assert_eq!(r.info.flags & REGION_FLAG_MMAP, 0);
        assert!(r.info.mmap_areas().is_empty());
        assert!(decode_region(&bytes[..16]).is_err());
    }

    #[test]
    fn irq_set_requests() {
        let w = irq_set_words(
            IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            IRQ_MSIX,
            2,
            3,
            &[17, -1, 19],
        );
        assert_eq!(w, vec![32, 0x24, 2, 2, 3, 17, u32::MAX, 19]);
        let none = irq_set_words(1 | IRQ_SET_ACTION_TRIGGER, IRQ_MSIX, 0, 0, &[]);
        assert_eq!(none, vec![20, 0x21, 2, 0, 0]);
    }
}
