//! A test IOMMU for the unit tests: a page table of one requester that the test maps and
//! unmaps at will, counting the faults it reports.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use devices::dma::{check_range, DmaDirection, DmaError, DmaSegment, DmaTranslator};
use virtual_iommu::SourceId;
use vm_memory::GuestMemoryMmap;

use crate::memory::{DeviceMemory, DmaView};

/// Page size of the table.
pub const PAGE: u64 = 0x1000;
/// The requester the table belongs to; others fault.
pub const REQUESTER: SourceId = SourceId(0x18);
/// Read permission.
pub const R: u8 = 1;
/// Write permission.
pub const W: u8 = 2;
/// VT-d's fault reasons: write and read without permission.
pub const FAULT_WRITE: u8 = 5;
/// See [`FAULT_WRITE`].
pub const FAULT_READ: u8 = 6;

/// IOVA page → (GPA page, permissions); unmapped pages fault.
#[derive(Default)]
pub struct PageTable {
    pages: Mutex<BTreeMap<u64, (u64, u8)>>,
    faults: AtomicU32,
    last: Mutex<Option<(u8, u64)>>,
}

impl PageTable {
    /// An empty table.
    pub fn new() -> Arc<PageTable> {
        Arc::new(PageTable::default())
    }

    /// Maps the page at `iova` to the page at `gpa` with `perms`.
    pub fn map(&self, iova: u64, gpa: u64, perms: u8) {
        self.pages
            .lock()
            .unwrap()
            .insert(iova / PAGE, (gpa / PAGE, perms));
    }

    /// Maps `pages` pages from `iova` to `gpa` on.
    pub fn map_range(&self, iova: u64, gpa: u64, pages: u64, perms: u8) {
        for i in 0..pages {
            self.map(iova + i * PAGE, gpa + i * PAGE, perms);
        }
    }

    /// Unmaps the page at `iova`.
    pub fn unmap(&self, iova: u64) {
        self.pages.lock().unwrap().remove(&(iova / PAGE));
    }

    /// Faults reported so far.
    pub fn faults(&self) -> u32 {
        self.faults.load(Ordering::SeqCst)
    }

    /// The last fault: (reason, IOVA).
    pub fn last_fault(&self) -> Option<(u8, u64)> {
        *self.last.lock().unwrap()
    }

    /// `ram` as `REQUESTER` reaches it through this table.
    pub fn memory(self: &Arc<Self>, ram: &GuestMemoryMmap) -> DeviceMemory {
        DeviceMemory::translated(ram.clone(), self.view())
    }

    /// The table as a device's DMA view.
    pub fn view(self: &Arc<Self>) -> DmaView {
        DmaView {
            translator: self.clone(),
            requester: REQUESTER,
        }
    }
}

impl DmaTranslator for PageTable {
    fn translate(
        &self,
        requester: SourceId,
        iova: u64,
        len: u64,
        d: DmaDirection,
    ) -> Result<Vec<DmaSegment>, DmaError> {
        let end = check_range(iova, len)?;
        let pages = self.pages.lock().unwrap();
        let mut out: Vec<DmaSegment> = Vec::new();
        let mut at = iova;
        while at < end {
            let need = if d.is_write() { W } else { R };
            let entry = pages
                .get(&(at / PAGE))
                .filter(|(_, p)| p & need != 0 && requester == REQUESTER);
            let Some(&(gpa_page, _)) = entry else {
                let reason = if d.is_write() {
                    FAULT_WRITE
                } else {
                    FAULT_READ
                };
                self.faults.fetch_add(1, Ordering::SeqCst);
                *self.last.lock().unwrap() = Some((reason, at));
                return Err(DmaError::Fault { reason, iova: at });
            };
            let n = (PAGE - at % PAGE).min(end - at);
            out.push(DmaSegment {
                gpa: gpa_page * PAGE + at % PAGE,
                len: n,
            });
            at += n;
        }
        Ok(out)
    }
}
