//! DMA as emulated devices see it: a requester's I/O virtual addresses, translated by
//! whatever IOMMU the platform has, then guest memory.
//!
//! A device never reads or writes guest memory at an address it was given without asking
//! a [`DmaTranslator`] first: the translator maps (requester ID, IOVA, length, direction)
//! to guest-physical segments or refuses with a [`DmaError`], having already recorded the
//! IOMMU's fault (and sent its fault event) when it refuses. [`DmaSpace`] bundles a
//! translator, guest memory and the device's requester ID and offers whole-transfer
//! reads and writes that are all or nothing: the whole range is translated, and for a
//! write checked to be RAM, before the first byte moves, so a fault anywhere in a
//! transfer moves no data and nothing outside the guest's mapping is ever touched.
//!
//! Implementations: [`IdentityDma`] (no IOMMU, or one that does not translate DMA: the
//! IOVA is the guest-physical address); the VMM's VT-d translator (`vmm::iommu::dma`),
//! which walks the guest's tables through the emulated unit's IOTLB.
//!
//! Virtio devices use the same translator when the guest negotiates
//! VIRTIO_F_ACCESS_PLATFORM (`virtio::memory::DeviceMemory`): their descriptor tables, rings
//! and buffers are then IOVAs, turned into guest-physical segments with
//! [`DmaTranslator::translate`] (a buffer may span several segments) at every access, and a
//! [`DmaError`] makes the request fail as the virtio specification says (an error status, a
//! dropped frame, or DEVICE_NEEDS_RESET when a ring is unreachable).

use std::sync::Arc;

use thiserror::Error;
use virtual_iommu::{GuestMemoryReader, SourceId};

/// Which way data moves in a DMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaDirection {
    /// The device reads guest memory.
    FromMemory,
    /// The device writes guest memory.
    ToMemory,
}

impl DmaDirection {
    /// True for a write to memory.
    pub fn is_write(self) -> bool {
        self == DmaDirection::ToMemory
    }
}

/// A guest-physical range a DMA reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaSegment {
    /// First guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Why a DMA does not happen.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DmaError {
    /// The IOMMU refused the request (its fault is recorded, unless the guest suppressed
    /// recording for the device).
    #[error("IOMMU fault {reason:#04x} at I/O virtual address {iova:#x}")]
    Fault {
        /// The IOMMU's fault reason code (VT-d FRCD.FR).
        reason: u8,
        /// The address that faulted.
        iova: u64,
    },
    /// The range runs into the interrupt window (0xFEEx_xxxx), where writes are interrupt
    /// requests, not memory accesses.
    #[error("I/O virtual address {iova:#x} is in the interrupt window")]
    InterruptWindow {
        /// The address.
        iova: u64,
    },
    /// The range wraps around the address space.
    #[error("DMA of {len:#x} bytes at {iova:#x} wraps")]
    Wraps {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// A translated address is not guest RAM (a hole, MMIO, beyond the end of memory).
    #[error("guest-physical {gpa:#x} is not RAM")]
    NotRam {
        /// The address.
        gpa: u64,
    },
}

/// Translates a device's DMA addresses. Implementations record the IOMMU's fault (and
/// signal its fault event) before returning [`DmaError::Fault`].
pub trait DmaTranslator: Send + Sync {
    /// The guest-physical segments `[iova, iova + len)` of `requester` reaches for a
    /// transfer in `direction`, in order, together covering exactly `len` bytes.
    fn translate(
        &self,
        requester: SourceId,
        iova: u64,
        len: u64,
        direction: DmaDirection,
    ) -> Result<Vec<DmaSegment>, DmaError>;
}

/// The interrupt window: DMA writes there are interrupt requests.
pub const INTERRUPT_WINDOW: (u64, u64) = (0xfee0_0000, 0xfef0_0000);

/// Checks `[iova, iova + len)` for wrapping and the interrupt window; returns its end.
pub fn check_range(iova: u64, len: u64) -> Result<u64, DmaError> {
    let end = iova.checked_add(len).ok_or(DmaError::Wraps { iova, len })?;
    let (ws, we) = INTERRUPT_WINDOW;
    if len > 0 && iova < we && end > ws {
        return Err(DmaError::InterruptWindow { iova: iova.max(ws) });
    }
    Ok(end)
}

/// No IOMMU translation: the I/O virtual address is the guest-physical address.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityDma;

impl DmaTranslator for IdentityDma {
    fn translate(
        &self,
        _requester: SourceId,
        iova: u64,
        len: u64,
        _direction: DmaDirection,
    ) -> Result<Vec<DmaSegment>, DmaError> {
        check_range(iova, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        Ok(vec![DmaSegment { gpa: iova, len }])
    }
}

/// Guest memory as a DMA engine reaches it from one device: through a translator, all or
/// nothing per transfer.
#[derive(Clone)]
pub struct DmaSpace {
    translator: Arc<dyn DmaTranslator>,
    memory: Arc<dyn GuestMemoryReader + Send + Sync>,
    requester: SourceId,
}

impl std::fmt::Debug for DmaSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaSpace")
            .field("requester", &self.requester)
            .finish_non_exhaustive()
    }
}

/// Largest chunk checked or copied at once (bounds the scratch buffer of a write check).
const CHECK_CHUNK: usize = 64 * 1024;

impl DmaSpace {
    /// `requester`'s view of `memory` through `translator`.
    pub fn new(
        translator: Arc<dyn DmaTranslator>,
        memory: Arc<dyn GuestMemoryReader + Send + Sync>,
        requester: SourceId,
    ) -> Self {
        DmaSpace {
            translator,
            memory,
            requester,
        }
    }

    /// The requester ID the device's DMA carries.
    pub fn requester(&self) -> SourceId {
        self.requester
    }

    fn segments(
        &self,
        iova: u64,
        len: usize,
        direction: DmaDirection,
    ) -> Result<Vec<DmaSegment>, DmaError> {
        let len64 = u64::try_from(len).map_err(|_| DmaError::Wraps {
            iova,
            len: u64::MAX,
        })?;
        let segments = self
            .translator
            .translate(self.requester, iova, len64, direction)?;
        let total: u64 = segments.iter().map(|s| s.len).sum();
        if total != len64 {
            // A translator that returned less than asked: treat as not RAM, move nothing.
            return Err(DmaError::NotRam { gpa: iova });
        }
        Ok(segments)
    }

    /// Reads `buf.len()` bytes at `iova` into `buf`. On an error `buf` may hold part of
    /// the data but guest memory is untouched.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let segments = self.segments(iova, buf.len(), DmaDirection::FromMemory)?;
        let mut done = 0usize;
        for s in segments {
            let n = usize::try_from(s.len).map_err(|_| DmaError::NotRam { gpa: s.gpa })?;
            let dst = buf
                .get_mut(done..done + n)
                .ok_or(DmaError::NotRam { gpa: s.gpa })?;
            self.memory
                .read(s.gpa, dst)
                .map_err(|_| DmaError::NotRam { gpa: s.gpa })?;
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `iova`: nothing is written unless the whole range translates and
    /// is guest RAM.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let segments = self.segments(iova, data.len(), DmaDirection::ToMemory)?;
        // Every segment must be RAM before the first byte is written.
        let mut scratch = vec![0u8; CHECK_CHUNK.min(data.len())];
        for s in &segments {
            let mut gpa = s.gpa;
            let mut left = s.len;
            while left > 0 {
                let n = left.min(CHECK_CHUNK as u64) as usize;
                let chunk = scratch.get_mut(..n).ok_or(DmaError::NotRam { gpa })?;
                self.memory
                    .read(gpa, chunk)
                    .map_err(|_| DmaError::NotRam { gpa })?;
                gpa += n as u64;
                left -= n as u64;
            }
        }
        let mut done = 0usize;
        for s in segments {
            let n = usize::try_from(s.len).map_err(|_| DmaError::NotRam { gpa: s.gpa })?;
            let src = data
                .get(done..done + n)
                .ok_or(DmaError::NotRam { gpa: s.gpa })?;
            self.memory
                .write(s.gpa, src)
                .map_err(|_| DmaError::NotRam { gpa: s.gpa })?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::TestRam as Ram;

    /// IOVA page n → GPA page (n + 1) for pages 0..4; everything else faults 0x5/0x6.
    struct Shifted;

    impl DmaTranslator for Shifted {
        fn translate(
            &self,
            _r: SourceId,
            iova: u64,
            len: u64,
            d: DmaDirection,
        ) -> Result<Vec<DmaSegment>, DmaError> {
            let end = check_range(iova, len)?;
            let mut out = Vec::new();
            let mut a = iova;
            while a < end {
                if a >= 0x4000 {
                    let reason = if d.is_write() { 5 } else { 6 };
                    return Err(DmaError::Fault { reason, iova: a });
                }
                let n = (0x1000 - (a & 0xfff)).min(end - a);
                out.push(DmaSegment {
                    gpa: a + 0x1000,
                    len: n,
                });
                a += n;
            }
            Ok(out)
        }
    }

    #[test]
    fn transfers_are_translated_and_all_or_nothing() {
        let ram = Ram::new();
        let space = DmaSpace::new(Arc::new(Shifted), ram.clone(), SourceId(8));
        let data: Vec<u8> = (0..0x1800u32).map(|i| i as u8).collect();
        space.write(0x800, &data).unwrap();
        let mut back = vec![0u8; 0x1800];
        space.read(0x800, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(ram.0.lock().unwrap()[0x1800], 0);
        assert_eq!(ram.0.lock().unwrap()[0x1801], 1);
        // A write crossing into a faulting page writes nothing at all.
        let before = ram.0.lock().unwrap().clone();
        let e = space.write(0x3800, &[0xaa; 0x1000]).unwrap_err();
        assert_eq!(
            e,
            DmaError::Fault {
                reason: 5,
                iova: 0x4000
            }
        );
        assert_eq!(*ram.0.lock().unwrap(), before);
        let e = space.read(0x3fff, &mut [0u8; 2]).unwrap_err();
        assert_eq!(
            e,
            DmaError::Fault {
                reason: 6,
                iova: 0x4000
            }
        );
        // Zero-length transfers succeed and touch nothing.
        space.write(0x9000, &[]).unwrap();
    }

    #[test]
    fn identity_checks_ram_before_writing() {
        let ram = Ram::new();
        let space = DmaSpace::new(Arc::new(IdentityDma), ram.clone(), SourceId(8));
        space.write(0x100, &[1, 2, 3]).unwrap();
        assert_eq!(&ram.0.lock().unwrap()[0x100..0x103], &[1, 2, 3]);
        // Runs past the end of RAM: nothing written.
        let e = space.write(0xfffe, &[9; 4]).unwrap_err();
        assert!(matches!(e, DmaError::NotRam { .. }));
        assert_eq!(ram.0.lock().unwrap()[0xfffe], 0);
        assert!(matches!(
            space.write(0xfee0_0000, &[0; 4]),
            Err(DmaError::InterruptWindow { .. })
        ));
        assert!(matches!(
            space.read(u64::MAX, &mut [0; 2]),
            Err(DmaError::Wraps { .. })
        ));
        assert_eq!(
            check_range(0xfedf_f000, 0x1000),
            Ok(0xfee0_0000),
            "ends right before the window"
        );
    }
}
