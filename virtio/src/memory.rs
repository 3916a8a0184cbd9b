//! Guest memory as a virtio device reaches it: guest-physical addresses, or, once the
//! driver negotiated `VIRTIO_F_ACCESS_PLATFORM`, I/O virtual addresses translated by the
//! platform's IOMMU for the device's requester ID.
//!
//! [`DeviceMemory`] is a vm-memory [`GuestMemory`] (the IOVA-aware trait virtio-queue
//! reads rings and descriptors through), so the queue code and every device handler use
//! one type whichever way addresses are meant; rings, descriptors, indirect tables and
//! buffers all go through it.
//!
//! # Why not vm-memory's `IommuMemory`
//!
//! vm-memory 0.18's `iommu` module offers `IommuMemory<M, I: Iommu>`, but an `Iommu` must
//! serve every translation out of a vm-memory `Iotlb` (a range map) that it fills on
//! misses: a second translation cache next to the emulated VT-d unit's own IOTLB and
//! context cache, which would have to be invalidated on every guest invalidation of the
//! device's domain to stay correct. Its translation also carries no requester ID (one
//! instance per device would have to bake it in) and its dirty-bitmap rules are written
//! for vhost-user. Here translation asks the platform's [`DmaTranslator`] at every access
//! instead: the only caches are the unit's, which follow the guest's context-cache and
//! IOTLB invalidations by construction, so a guest that unmaps and invalidates a page
//! stops the device at its next access, and nothing here needs to hear about
//! invalidations.
//!
//! # Rules of a translated access
//!
//! * The whole range is translated (the IOMMU records the first faulting page's fault and
//!   sends its fault event) and every segment checked to be guest RAM before any slice is
//!   handed out, so a failing access moves no byte and nothing outside the guest's mapping
//!   is ever touched. A multi-page range may land in any number of guest-physical pieces.
//! * Reads need read permission, writes write permission, read-modify-writes both.
//! * A range that wraps, touches the interrupt window or translates outside RAM fails like
//!   a fault, as an untranslated access outside RAM fails today.
//!
//! What a failure means is the device's business: virtio-blk completes the request with
//! `VIRTIO_BLK_S_IOERR`, virtio-net drops the frame, and rings that cannot be reached make
//! the device set `DEVICE_NEEDS_RESET` ([`crate::worker`]). A guest that changes a mapping
//! while a request is in flight races with the device as it would on hardware: each access
//! uses the translation current when it is made.

use std::iter::FusedIterator;
use std::sync::Arc;

use devices::dma::{DmaDirection, DmaError, DmaSegment, DmaTranslator};
use virtual_iommu::SourceId;
use vm_memory::bitmap::BS;
use vm_memory::guest_memory::{GuestMemoryBackendSliceIterator, GuestMemorySliceIterator};
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    GuestMemoryRegion, GuestMemoryResult, GuestRegionMmap, Permissions, VolatileSlice,
};

/// The dirty-bitmap type of the guest's RAM regions (none).
type RamBitmap = <GuestRegionMmap as GuestMemoryRegion>::B;

/// A device's translation: the platform's IOMMU and the requester ID its DMA carries.
#[derive(Clone)]
pub struct DmaView {
    /// The platform's translator.
    pub translator: Arc<dyn DmaTranslator>,
    /// The device's requester ID (its PCI bus/device/function).
    pub requester: SourceId,
}

impl std::fmt::Debug for DmaView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaView")
            .field("requester", &self.requester)
            .finish_non_exhaustive()
    }
}

/// Guest memory as one virtio device addresses it.
#[derive(Clone, Debug)]
pub struct DeviceMemory {
    ram: GuestMemoryMmap,
    dma: Option<DmaView>,
}

impl From<GuestMemoryMmap> for DeviceMemory {
    fn from(ram: GuestMemoryMmap) -> Self {
        DeviceMemory::physical(ram)
    }
}

impl DeviceMemory {
    /// Addresses are guest-physical (`VIRTIO_F_ACCESS_PLATFORM` not negotiated).
    pub fn physical(ram: GuestMemoryMmap) -> Self {
        DeviceMemory { ram, dma: None }
    }

    /// Addresses are I/O virtual addresses of `view.requester`, translated by
    /// `view.translator` at every access.
    pub fn translated(ram: GuestMemoryMmap, view: DmaView) -> Self {
        DeviceMemory {
            ram,
            dma: Some(view),
        }
    }

    /// True when addresses go through the IOMMU.
    pub fn is_translated(&self) -> bool {
        self.dma.is_some()
    }

    /// The guest's RAM underneath.
    pub fn ram(&self) -> &GuestMemoryMmap {
        &self.ram
    }

    /// The guest-physical segments `[addr, addr + count)` reaches for `access`, each
    /// checked to be RAM; `Ok(None)` when addresses are guest-physical.
    fn translate(
        &self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<Option<Vec<DmaSegment>>> {
        let Some(view) = &self.dma else {
            return Ok(None);
        };
        if count == 0 {
            return Ok(Some(Vec::new()));
        }
        let len = u64::try_from(count).map_err(|_| GuestMemoryError::InvalidGuestAddress(addr))?;
        let fail = |e: DmaError| GuestMemoryError::InvalidGuestAddress(GuestAddress(failed_at(e)));
        let mut segments = None;
        for &direction in directions(access) {
            let s = view
                .translator
                .translate(view.requester, addr.0, len, direction)
                .map_err(fail)?;
            // Read-modify-write: both directions must be allowed; the write's segments
            // are the ones used (an IOMMU maps one page to one place either way).
            segments.get_or_insert(s);
        }
        let segments = segments.unwrap_or_default();
        let total = segments
            .iter()
            .try_fold(0u64, |acc, s| acc.checked_add(s.len));
        if total != Some(len) {
            // A translator that covered less (or more) than asked: move nothing.
            return Err(GuestMemoryError::InvalidGuestAddress(addr));
        }
        for s in &segments {
            let piece = usize::try_from(s.len)
                .map_err(|_| GuestMemoryError::InvalidGuestAddress(GuestAddress(s.gpa)))?;
            if !GuestMemoryBackend::check_range(&self.ram, GuestAddress(s.gpa), piece) {
                return Err(GuestMemoryError::InvalidGuestAddress(GuestAddress(s.gpa)));
            }
        }
        Ok(Some(segments))
    }
}

/// The translations an access with `access` needs: write first for read-modify-writes.
fn directions(access: Permissions) -> &'static [DmaDirection] {
    match access {
        Permissions::Write => &[DmaDirection::ToMemory],
        Permissions::ReadWrite => &[DmaDirection::ToMemory, DmaDirection::FromMemory],
        Permissions::Read | Permissions::No => &[DmaDirection::FromMemory],
    }
}

/// The address a DMA error names.
fn failed_at(e: DmaError) -> u64 {
    match e {
        DmaError::Fault { iova, .. } | DmaError::InterruptWindow { iova } => iova,
        DmaError::Wraps { iova, .. } => iova,
        DmaError::NotRam { gpa } => gpa,
    }
}

impl GuestMemory for DeviceMemory {
    type PhysicalMemory = GuestMemoryMmap;
    type Bitmap = RamBitmap;

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        match self.translate(addr, count, access) {
            Ok(Some(_)) => true,
            Ok(None) => GuestMemoryBackend::check_range(&self.ram, addr, count),
            Err(_) => false,
        }
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>> {
        Ok(match self.translate(addr, count, access)? {
            None => DeviceSlices {
                ram: &self.ram,
                segments: Vec::new().into_iter(),
                current: Some(GuestMemoryBackend::get_slices(&self.ram, addr, count)),
            },
            Some(segments) => DeviceSlices {
                ram: &self.ram,
                segments: segments.into_iter(),
                current: None,
            },
        })
    }

    fn physical_memory(&self) -> Option<&Self::PhysicalMemory> {
        self.dma.is_none().then_some(&self.ram)
    }
}

/// The host slices of one access: the guest-physical pieces in order, each walked across
/// RAM regions by vm-memory.
pub struct DeviceSlices<'a> {
    ram: &'a GuestMemoryMmap,
    segments: std::vec::IntoIter<DmaSegment>,
    current: Option<GuestMemoryBackendSliceIterator<'a, GuestMemoryMmap>>,
}

impl<'a> Iterator for DeviceSlices<'a> {
    type Item = GuestMemoryResult<VolatileSlice<'a, BS<'a, RamBitmap>>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(slices) = self.current.as_mut() {
                match slices.next() {
                    Some(Ok(s)) => return Some(Ok(s)),
                    Some(Err(e)) => {
                        // Fused: nothing after an error.
                        self.current = None;
                        self.segments = Vec::new().into_iter();
                        return Some(Err(e));
                    }
                    None => self.current = None,
                }
            }
            let s = self.segments.next()?;
            let Ok(len) = usize::try_from(s.len) else {
                self.segments = Vec::new().into_iter();
                return Some(Err(GuestMemoryError::InvalidGuestAddress(GuestAddress(
                    s.gpa,
                ))));
            };
            self.current = Some(GuestMemoryBackend::get_slices(
                self.ram,
                GuestAddress(s.gpa),
                len,
            ));
        }
    }
}

impl FusedIterator for DeviceSlices<'_> {}

impl<'a> GuestMemorySliceIterator<'a, BS<'a, RamBitmap>> for DeviceSlices<'a> {}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use devices::dma::check_range;
    use vm_memory::Bytes;

    use super::*;
    use crate::test_dma::{PageTable, FAULT_READ, FAULT_WRITE, PAGE, R, W};

    /// Where the tests' IOVAs start (beyond the 64 KiB of RAM).
    const IOVA: u64 = 0x10_0000;

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn snapshot(ram: &GuestMemoryMmap) -> Vec<u8> {
        let mut b = vec![0u8; 0x10000];
        ram.read_slice(&mut b, GuestAddress(0)).unwrap();
        b
    }

    #[test]
    fn physical_memory_is_guest_ram() {
        let ram = ram();
        let m = DeviceMemory::from(ram.clone());
        assert!(!m.is_translated());
        m.write_slice(&[1, 2, 3], GuestAddress(0x100)).unwrap();
        let mut b = [0u8; 3];
        ram.read_slice(&mut b, GuestAddress(0x100)).unwrap();
        assert_eq!(b, [1, 2, 3]);
        assert!(m.physical_memory().is_some());
        assert!(m.write_slice(&[0; 4], GuestAddress(0xfffe)).is_err());
        assert!(GuestMemory::check_range(
            &m,
            GuestAddress(0xf000),
            0x1000,
            Permissions::Write
        ));
        assert!(!GuestMemory::check_range(
            &m,
            GuestAddress(0xf001),
            0x1000,
            Permissions::Read
        ));
    }

    #[test]
    fn translated_accesses_land_in_the_mapped_pages_in_pieces() {
        let ram = ram();
        // IOVA pages 0, 1, 2 → GPA pages 5, 3, 9.
        let table = PageTable::new();
        for (i, gpa) in [5u64, 3, 9].iter().enumerate() {
            table.map(IOVA + i as u64 * PAGE, gpa * PAGE, R | W);
        }
        let m = table.memory(&ram);
        assert!(m.is_translated());
        assert!(m.physical_memory().is_none());
        let data: Vec<u8> = (0..0x2000u32).map(|i| (i * 7) as u8).collect();
        m.write_slice(&data, GuestAddress(IOVA + 0x800)).unwrap();
        let mut back = vec![0u8; 0x2000];
        m.read_slice(&mut back, GuestAddress(IOVA + 0x800)).unwrap();
        assert_eq!(back, data);
        let at = |gpa: u64| ram.read_obj::<u8>(GuestAddress(gpa)).unwrap();
        assert_eq!(at(5 * PAGE + 0x800), data[0]);
        assert_eq!(at(3 * PAGE), data[0x800]);
        assert_eq!(at(9 * PAGE + 0x7ff), data[0x1fff]);
        // Atomics (the rings' indices) go through the translation too.
        m.store(0xbeefu16, GuestAddress(IOVA + 0x1002), Ordering::Release)
            .unwrap();
        assert_eq!(
            ram.read_obj::<u16>(GuestAddress(3 * PAGE + 2)).unwrap(),
            0xbeef
        );
        let v: u16 = m
            .load(GuestAddress(IOVA + 0x1002), Ordering::Acquire)
            .unwrap();
        assert_eq!(v, 0xbeef);
        assert_eq!(table.faults(), 0);
    }

    #[test]
    fn a_fault_anywhere_moves_nothing() {
        let ram = ram();
        // Page 1 read-only, page 3 not mapped.
        let table = PageTable::new();
        table.map(IOVA, 5 * PAGE, R | W);
        table.map(IOVA + PAGE, 3 * PAGE, R);
        table.map(IOVA + 2 * PAGE, 9 * PAGE, R | W);
        let m = table.memory(&ram);
        let before = snapshot(&ram);
        // A write that reaches the read-only page fails whole.
        assert!(m.write_slice(&[0xaa; 0x1800], GuestAddress(IOVA)).is_err());
        assert_eq!(table.last_fault(), Some((FAULT_WRITE, IOVA + PAGE)));
        assert!(m
            .store(1u16, GuestAddress(IOVA + 0x1000), Ordering::Release)
            .is_err());
        // A read that runs off the end of the mapping fails.
        let mut buf = [0u8; 0x20];
        assert!(m.read_slice(&mut buf, GuestAddress(IOVA + 0x2ff0)).is_err());
        assert_eq!(table.last_fault(), Some((FAULT_READ, IOVA + 3 * PAGE)));
        // The read-only page reads.
        m.read_slice(&mut buf, GuestAddress(IOVA + 0x1000)).unwrap();
        assert!(snapshot(&ram) == before, "guest memory changed");
        assert_eq!(table.faults(), 3);
        // Checks: write permission needed for Write and ReadWrite.
        let page = |n| GuestAddress(IOVA + n * PAGE);
        assert!(GuestMemory::check_range(
            &m,
            page(1),
            0x1000,
            Permissions::Read
        ));
        assert!(!GuestMemory::check_range(
            &m,
            page(1),
            0x1000,
            Permissions::Write
        ));
        assert!(!GuestMemory::check_range(
            &m,
            page(1),
            0x10,
            Permissions::ReadWrite
        ));
        assert!(GuestMemory::check_range(
            &m,
            page(2),
            0x1000,
            Permissions::ReadWrite
        ));
        assert!(!GuestMemory::check_range(
            &m,
            page(2),
            0x1001,
            Permissions::Read
        ));
        assert!(GuestMemory::check_range(&m, page(7), 0, Permissions::Read));
        // An unmapped page stops the device at its next access.
        m.write_slice(&[1], GuestAddress(IOVA + 2 * PAGE)).unwrap();
        table.unmap(IOVA + 2 * PAGE);
        assert!(m.write_slice(&[2], GuestAddress(IOVA + 2 * PAGE)).is_err());
        assert_eq!(ram.read_obj::<u8>(GuestAddress(9 * PAGE)).unwrap(), 1);
    }

    #[test]
    fn translations_outside_ram_and_short_translators_fail() {
        let ram = ram();
        // An IOVA page that maps beyond RAM.
        let table = PageTable::new();
        table.map(IOVA, 0x20 * PAGE, R | W);
        let m = table.memory(&ram);
        assert!(m.write_slice(&[1], GuestAddress(IOVA)).is_err());
        assert!(!GuestMemory::check_range(
            &m,
            GuestAddress(IOVA),
            1,
            Permissions::Read
        ));

        /// Returns half of what is asked.
        struct Short;
        impl DmaTranslator for Short {
            fn translate(
                &self,
                _: SourceId,
                iova: u64,
                len: u64,
                _: DmaDirection,
            ) -> Result<Vec<DmaSegment>, DmaError> {
                check_range(iova, len)?;
                Ok(vec![DmaSegment {
                    gpa: iova,
                    len: len / 2,
                }])
            }
        }
        let m = DeviceMemory::translated(
            ram.clone(),
            DmaView {
                translator: Arc::new(Short),
                requester: SourceId(1),
            },
        );
        assert!(m.write_slice(&[1, 2], GuestAddress(0x100)).is_err());
        assert!(m
            .load::<u16>(GuestAddress(0x100), Ordering::Acquire)
            .is_err());
        assert!(m
            .load::<u16>(GuestAddress(0xfee0_0000), Ordering::Acquire)
            .is_err());
        assert_eq!(ram.read_obj::<u16>(GuestAddress(0x100)).unwrap(), 0);
    }
}
