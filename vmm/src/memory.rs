//! Guest RAM: its regions around the 32-bit hole and the memory map given to the guest.
//!
//! RAM is one memfd mapped shared (`MAP_SHARED`), its size sealed, so another process (a
//! vfio-user device server) can map the same pages for DMA: the file descriptor and each
//! region's offset in it are what `DMA_MAP` hands over.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use thiserror::Error;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::layout::{
    ACPI_END, ACPI_START, EBDA_START, HIGH_RAM_BASE, HIGH_RAM_START, LOW_MEM_START, LOW_RAM_END,
    PCIE_ECAM_SIZE, PCIE_ECAM_START,
};

/// Smallest guest RAM irvmm accepts: room for the boot structures and a small kernel.
pub const MIN_MEMORY: u64 = 16 << 20;

/// Kind of a memory-map entry, with the e820 type numbers both boot protocols use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM (e820 type 1).
    Ram = 1,
    /// Reserved (e820 type 2).
    Reserved = 2,
}

/// One entry of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: MemoryKind,
}

/// The RAM regions for `size` bytes of guest memory: up to [`LOW_RAM_END`] below the hole,
/// the rest from 4 GiB.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(LOW_RAM_END);
    let mut regions = vec![(GuestAddress(LOW_MEM_START), low as usize)];
    if size > low {
        regions.push((GuestAddress(HIGH_RAM_BASE), (size - low) as usize));
    }
    regions
}

/// Why guest RAM could not be created.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// The memfd could not be created, sized or sealed.
    #[error("guest RAM memfd: {op}: {source}")]
    Memfd {
        /// The step that failed.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Mapping the regions failed.
    #[error("guest RAM mapping: {0}")]
    Map(#[from] vm_memory::mmap::FromRangesError),
}

/// A sealed memfd of `size` bytes (shrinking, growing and further seals refused).
fn sealed_memfd(size: u64) -> Result<File, MemoryError> {
    let io = |op| move |source| MemoryError::Memfd { op, source };
    // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"irvmm-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io("memfd_create")(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(io("ftruncate"))?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on our own memfd; the result is checked.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io("F_ADD_SEALS")(std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// Allocates guest RAM of `size` bytes: one sealed memfd, mapped shared, low RAM at file
/// offset 0 and high RAM after it.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let file = Arc::new(sealed_memfd(size)?);
    let mut offset = 0u64;
    let ranges: Vec<_> = ram_regions(size)
        .into_iter()
        .map(|(addr, len)| {
            let fo = FileOffset::from_arc(file.clone(), offset);
            offset += len as u64;
            (addr, len, Some(fo))
        })
        .collect();
    Ok(GuestMemoryMmap::from_ranges_with_files(&ranges)?)
}

/// The memory map the guest sees (e820 for bzImage, the PVH memmap for ELF kernels), in
/// address order: RAM below the EBDA, the legacy area with the ACPI tables (reserved), RAM
/// from 1 MiB, the PCIe ECAM window (reserved, as firmware reserves MMCONFIG: Linux uses the
/// MCFG's window early only when the e820 map reserves it, and says "PCI: not using
/// MMCONFIG" otherwise), RAM above 4 GiB.
pub fn memory_map(size: u64) -> Vec<MemoryMapEntry> {
    let low_end = size.min(LOW_RAM_END);
    let mut map = vec![
        MemoryMapEntry {
            addr: LOW_MEM_START,
            size: EBDA_START,
            kind: MemoryKind::Ram,
        },
        MemoryMapEntry {
            addr: ACPI_START,
            size: ACPI_END - ACPI_START,
            kind: MemoryKind::Reserved,
        },
        MemoryMapEntry {
            addr: HIGH_RAM_START,
            size: low_end - HIGH_RAM_START,
            kind: MemoryKind::Ram,
        },
        MemoryMapEntry {
            addr: PCIE_ECAM_START,
            size: PCIE_ECAM_SIZE,
            kind: MemoryKind::Reserved,
        },
    ];
    if size > low_end {
        map.push(MemoryMapEntry {
            addr: HIGH_RAM_BASE,
            size: size - low_end,
            kind: MemoryKind::Ram,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_one_sealed_shared_memfd() {
        use std::os::fd::AsRawFd;
        use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
        let size = LOW_RAM_END + (16 << 20);
        let mem = create_guest_memory(size).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        let (a, b) = (
            regions[0].file_offset().unwrap(),
            regions[1].file_offset().unwrap(),
        );
        assert_eq!(a.file().as_raw_fd(), b.file().as_raw_fd(), "one memfd");
        assert_eq!((a.start(), b.start()), (0, LOW_RAM_END));
        // Another mapping of the file sees guest writes (MAP_SHARED).
        mem.write_obj(0xabcd_u32, GuestAddress(HIGH_RAM_BASE + 8))
            .unwrap();
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_at(b.file(), &mut buf, LOW_RAM_END + 8).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xabcd);
        // The size is sealed.
        assert!(a.file().set_len(size * 2).is_err());
        assert!(a.file().set_len(size / 2).is_err());
    }

    #[test]
    fn small_guest_has_only_low_ram() {
        let r = ram_regions(256 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 256 << 20)]);
        let m = memory_map(256 << 20);
        assert_eq!(m.len(), 4);
        assert_eq!(m[2].addr + m[2].size, 256 << 20);
    }

    /// The ECAM window is reserved in every map, between low RAM and 4 GiB, and it is the
    /// window the MCFG and the DSDT's PNP0C02 describe: base 0xb0000000, one MiB per bus
    /// for buses 0..=PCIE_ECAM_END_BUS.
    #[test]
    fn ecam_window_is_reserved() {
        use crate::layout::{PCIE_ECAM_END_BUS, PCI_MMIO_START};
        let ecam_bus_shift = 20;
        assert_eq!(
            PCIE_ECAM_SIZE,
            (u64::from(PCIE_ECAM_END_BUS) + 1) << ecam_bus_shift
        );
        for size in [MIN_MEMORY, 256 << 20, LOW_RAM_END, 4 << 30, 64 << 30] {
            let m = memory_map(size);
            let ecam: Vec<_> = m
                .iter()
                .filter(|e| e.kind == MemoryKind::Reserved && e.addr == PCIE_ECAM_START)
                .collect();
            assert_eq!(ecam.len(), 1, "{size:#x}: {m:?}");
            assert_eq!(ecam[0].size, 0x1000_0000);
            assert!(ecam[0].addr + ecam[0].size <= PCI_MMIO_START);
            // In address order, no overlaps, RAM never inside the window.
            for w in m.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "{size:#x}: {m:?}");
            }
        }
    }

    #[test]
    fn large_guest_splits_around_hole() {
        let size = 4u64 << 30;
        let r = ram_regions(size);
        assert_eq!(r[0].1 as u64, LOW_RAM_END);
        assert_eq!(
            r[1],
            (GuestAddress(HIGH_RAM_BASE), (size - LOW_RAM_END) as usize)
        );
        let total: u64 = memory_map(size)
            .iter()
            .filter(|e| e.kind == MemoryKind::Ram)
            .map(|e| e.size)
            .sum();
        // Everything except the EBDA..1 MiB legacy area is usable RAM.
        assert_eq!(total, size - (HIGH_RAM_START - EBDA_START));
    }
}
