//! Guest RAM: its regions around the 32-bit hole and the memory map given to the guest.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{
    ACPI_END, ACPI_START, EBDA_START, HIGH_RAM_BASE, HIGH_RAM_START, LOW_MEM_START, LOW_RAM_END,
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

/// Allocates guest RAM of `size` bytes.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, vm_memory::mmap::FromRangesError> {
    GuestMemoryMmap::from_ranges(&ram_regions(size))
}

/// The memory map the guest sees (e820 for bzImage, the PVH memmap for ELF kernels).
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
    fn small_guest_has_only_low_ram() {
        let r = ram_regions(256 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 256 << 20)]);
        let m = memory_map(256 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].addr + m[2].size, 256 << 20);
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
