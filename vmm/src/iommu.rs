//! The guest's virtual IOMMU in the VM: a VT-d unit reading guest memory, and its MMIO
//! window, whose writes feed invalidations and event interrupts to the interrupt router.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use devices::BusDevice;
use virtual_iommu::vtd::Fault;
use virtual_iommu::{
    Effects, GuestMemoryReader, MemError, MsiMessage, SourceId, Translation, VtdConfig, VtdUnit,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::interrupt::{InterruptBackend, InterruptRouter};

/// Guest RAM as the IOMMU model sees it: accesses outside RAM fail whole.
pub struct GuestRam(pub GuestMemoryMmap);

impl GuestMemoryReader for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.0
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemError::Unmapped {
                gpa,
                len: buf.len(),
            })
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        self.0
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemError::Unmapped {
                gpa,
                len: buf.len(),
            })
    }
}

/// A VT-d unit with interrupt remapping over the guest's memory.
pub struct Iommu {
    unit: Mutex<VtdUnit>,
    mem: GuestRam,
}

impl Iommu {
    /// A unit in its reset state.
    pub fn new(config: VtdConfig, mem: GuestMemoryMmap) -> Self {
        Iommu {
            unit: Mutex::new(VtdUnit::new(config)),
            mem: GuestRam(mem),
        }
    }

    fn unit(&self) -> MutexGuard<'_, VtdUnit> {
        self.unit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `msg` from `sid` becomes now (the IRTE is read at this moment).
    pub fn translate(&self, sid: SourceId, msg: MsiMessage) -> Translation {
        self.unit().translate(&self.mem, sid, msg)
    }

    /// True while the guest has interrupt remapping enabled.
    pub fn remapping_enabled(&self) -> bool {
        self.unit().remapping_enabled()
    }

    /// Records a fault for a request that was blocked.
    pub fn record_fault(&self, fault: &Fault) -> Effects {
        self.unit().record_fault(fault)
    }

    fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        self.unit().mmio_read(offset, data);
    }

    fn mmio_write(&self, offset: u64, data: &[u8]) -> Effects {
        self.unit().mmio_write(&self.mem, offset, data)
    }
}

/// The unit's register page on the MMIO bus. Effects are applied before the writing vCPU
/// resumes, so a guest polling a wait descriptor's status sees the routes already updated.
pub struct VtdMmio<B: InterruptBackend + 'static> {
    iommu: Arc<Iommu>,
    router: Weak<InterruptRouter<B>>,
}

impl<B: InterruptBackend + 'static> VtdMmio<B> {
    /// The register window of `iommu`, reporting effects to `router`.
    pub fn new(iommu: Arc<Iommu>, router: Weak<InterruptRouter<B>>) -> Self {
        VtdMmio { iommu, router }
    }
}

impl<B: InterruptBackend + 'static> BusDevice for VtdMmio<B> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.iommu.mmio_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let effects = self.iommu.mmio_write(offset, data);
        if effects.is_empty() {
            return;
        }
        match self.router.upgrade() {
            Some(router) => {
                if let Err(e) = router.apply(&effects) {
                    log::error!("VT-d: applying invalidation: {e}");
                }
            }
            None => log::error!("VT-d: interrupt router gone"),
        }
    }
}
