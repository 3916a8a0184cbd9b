//! The translated mode of the `virtio_queue` harness (inputs whose first byte has bit 0x08
//! set): the device negotiated `VIRTIO_F_ACCESS_PLATFORM`, so its ring addresses,
//! descriptors and buffers are I/O virtual addresses that reach guest RAM only through an
//! IOMMU ([`virtio::DeviceMemory`] over [`TableIommu`]).
//!
//! The IOMMU's page table lives in guest RAM, so the fuzzer writes it like everything else:
//! [`ENTRIES`] one-byte entries at [`TABLE`], entry `i` mapping IOVA page `i` (bits 3:0 the
//! guest-physical page, bit 4 read, bit 5 write); IOVAs beyond the table fault. The table is
//! read at every translation (no cache). Its own bytes are never writable through it (the
//! guest keeps its IOMMU tables out of the device's reach; a write that would touch them
//! faults), so the mapping stays what the input says for the whole run and the harness's
//! used-index checks read the same pages.
//!
//! Invariant (checked after the run): every byte of guest RAM that changed lies in a page
//! the IOMMU handed out for a device write; i.e. the device wrote nothing it was not
//! mapped for, and never bypassed the translation.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use devices::dma::{check_range, DmaDirection, DmaError, DmaSegment, DmaTranslator};
use virtio::{DeviceMemory, DmaView};
use virtual_iommu::SourceId;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest-physical address of the page table (inside the first 8 KiB the fuzzer writes).
pub const TABLE: u64 = 0x1fc0;
/// Entries (IOVA pages 0..32: the range ring offsets reach).
pub const ENTRIES: u64 = 32;
/// Page size.
pub const PAGE: u64 = 0x1000;
/// Entry bits: the guest-physical page, read, write.
pub const ENTRY_PAGE: u8 = 0x0f;
pub const ENTRY_READ: u8 = 0x10;
pub const ENTRY_WRITE: u8 = 0x20;
/// The device's requester ID.
const REQUESTER: SourceId = SourceId(0x08);
/// VT-d's fault reasons for writes and reads without permission.
const FAULT_WRITE: u8 = 5;
const FAULT_READ: u8 = 6;

/// An IOMMU whose one-level page table is in guest RAM; remembers the pages it handed
/// out for writes.
pub struct TableIommu {
    ram: GuestMemoryMmap,
    /// Bit p: guest-physical page p was handed out for a write.
    written: AtomicU32,
    faults: AtomicU32,
}

impl TableIommu {
    /// The IOMMU over `ram`.
    pub fn new(ram: GuestMemoryMmap) -> Arc<TableIommu> {
        Arc::new(TableIommu {
            ram,
            written: AtomicU32::new(0),
            faults: AtomicU32::new(0),
        })
    }

    /// `ram` as the device reaches it through this IOMMU.
    pub fn memory(self: &Arc<Self>) -> DeviceMemory {
        DeviceMemory::translated(
            self.ram.clone(),
            DmaView {
                translator: self.clone(),
                requester: REQUESTER,
            },
        )
    }

    /// Pages handed out for writes so far (a bit per guest-physical page).
    pub fn written(&self) -> u32 {
        self.written.load(Ordering::Relaxed)
    }

    /// Faults reported so far.
    pub fn faults(&self) -> u32 {
        self.faults.load(Ordering::Relaxed)
    }

    fn fault(&self, write: bool, iova: u64) -> DmaError {
        self.faults.fetch_add(1, Ordering::Relaxed);
        let reason = if write { FAULT_WRITE } else { FAULT_READ };
        DmaError::Fault { reason, iova }
    }
}

impl DmaTranslator for TableIommu {
    fn translate(
        &self,
        requester: SourceId,
        iova: u64,
        len: u64,
        direction: DmaDirection,
    ) -> Result<Vec<DmaSegment>, DmaError> {
        assert_eq!(requester, REQUESTER, "the device's requester ID");
        let end = check_range(iova, len)?;
        let write = direction.is_write();
        let need = if write { ENTRY_WRITE } else { ENTRY_READ };
        let mut out: Vec<DmaSegment> = Vec::new();
        let mut at = iova;
        while at < end {
            let index = at / PAGE;
            if index >= ENTRIES {
                return Err(self.fault(write, at));
            }
            let entry: u8 = self.ram.read_obj(GuestAddress(TABLE + index)).unwrap_or(0);
            let page = u64::from(entry & ENTRY_PAGE);
            let n = (PAGE - at % PAGE).min(end - at);
            let gpa = page * PAGE + at % PAGE;
            let on_table = gpa < TABLE + ENTRIES && gpa + n > TABLE;
            if entry & need == 0 || (write && on_table) {
                return Err(self.fault(write, at));
            }
            out.push(DmaSegment { gpa, len: n });
            if write {
                self.written.fetch_or(1 << page, Ordering::Relaxed);
            }
            at += n;
        }
        Ok(out)
    }
}

/// Panics when a byte changed between `before` and `after` (both all of RAM) in a page
/// not in `written`.
pub fn assert_writes_mapped(before: &[u8], after: &[u8], written: u32) {
    for (p, (b, a)) in before
        .chunks(PAGE as usize)
        .zip(after.chunks(PAGE as usize))
        .enumerate()
    {
        if b != a {
            let offset = b.iter().zip(a).position(|(x, y)| x != y).unwrap_or(0);
            assert!(
                p < 32 && written & (1 << p) != 0,
                "guest page {p} changed at offset {offset:#x} but was never mapped for a device write (written pages {written:#x})"
            );
        }
    }
}

/// All of `ram` (`len` bytes from 0).
pub fn snapshot(ram: &GuestMemoryMmap, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // The harness's RAM is one region from 0: this cannot fail.
    let _ = ram.read_slice(&mut v, GuestAddress(0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = format!("{}/corpus/virtio_queue/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).expect("seed")
    }

    #[test]
    fn translated_seeds_reach_ram_only_through_the_table() {
        for name in [
            "seed-iommu-blk-read",
            "seed-iommu-blk-write",
            "seed-iommu-rng",
            "seed-iommu-net-rx-mergeable",
            "seed-iommu-net-tx",
            "seed-iommu-net-ctrl",
        ] {
            let iommu = crate::virtio_queue::run_observed(&seed(name)).expect("translated");
            assert_ne!(
                iommu.written(),
                0,
                "{name}: nothing written through the IOMMU"
            );
            assert_eq!(iommu.faults(), 0, "{name}");
        }
        for name in [
            "seed-iommu-blk-read-unmapped-buffer",
            "seed-iommu-blk-unmapped-used-ring",
        ] {
            let iommu = crate::virtio_queue::run_observed(&seed(name)).expect("translated");
            assert_ne!(iommu.faults(), 0, "{name}: no fault");
        }
        assert!(crate::virtio_queue::run_observed(&seed("seed-blk-read")).is_none());
    }

    #[test]
    #[should_panic(expected = "never mapped for a device write")]
    fn a_write_outside_the_handed_out_pages_is_caught() {
        let before = vec![0u8; 0x4000];
        let mut after = before.clone();
        after[0x2001] = 1;
        assert_writes_mapped(&before, &after, 0b1011);
    }

    #[test]
    fn the_table_is_never_writable() {
        let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let iommu = TableIommu::new(ram.clone());
        // IOVA page 0 → the table's page, page 1 → page 5.
        ram.write_obj(0x31u8, GuestAddress(TABLE)).unwrap();
        ram.write_obj(0x35u8, GuestAddress(TABLE + 1)).unwrap();
        let to = DmaDirection::ToMemory;
        let table = TABLE % PAGE;
        assert!(iommu
            .translate(REQUESTER, table, 8, DmaDirection::FromMemory)
            .is_ok());
        assert!(iommu.translate(REQUESTER, table + 31, 1, to).is_err());
        assert!(iommu.translate(REQUESTER, table - 8, 8, to).is_ok());
        assert_eq!(
            iommu.translate(REQUESTER, table - 4, 8, to),
            Err(DmaError::Fault {
                reason: FAULT_WRITE,
                iova: table - 4
            })
        );
        let s = iommu.translate(REQUESTER, PAGE, 8, to).unwrap();
        assert_eq!(
            s,
            vec![DmaSegment {
                gpa: 5 * PAGE,
                len: 8
            }]
        );
        assert_eq!(iommu.written(), 1 << 5 | 1 << 1);
        assert!(iommu.translate(REQUESTER, ENTRIES * PAGE, 1, to).is_err());
    }
}
