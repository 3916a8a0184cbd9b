//! An IOMMU's register window on the MMIO bus (VT-d's 4 KiB page, AMD-Vi's 16 KiB window).
//! Effects are applied before the writing vCPU resumes, so a guest polling a wait
//! descriptor's status or a COMPLETION_WAIT store sees the routes already updated.
//! Changes of the guest's remapping mode are logged at info level. DMA-remapping effects
//! (VT-d) update passed-through devices' host mappings ([`super::shadow`]) in the same
//! write.

use std::sync::{Arc, Weak};

use devices::BusDevice;

use super::shadow::DmaShadows;
use super::Iommu;
use crate::interrupt::{InterruptBackend, InterruptRouter};

/// The register window of an [`Iommu`], reporting effects to the router.
pub struct IommuMmio<B: InterruptBackend + 'static> {
    iommu: Arc<Iommu>,
    router: Weak<InterruptRouter<B>>,
    shadows: Option<Arc<DmaShadows>>,
}

impl<B: InterruptBackend + 'static> IommuMmio<B> {
    /// The register window of `iommu`, reporting effects to `router`.
    pub fn new(iommu: Arc<Iommu>, router: Weak<InterruptRouter<B>>) -> Self {
        IommuMmio {
            iommu,
            router,
            shadows: None,
        }
    }

    /// Keeps `shadows` (passed-through devices' host DMA mappings) in line with the
    /// guest's DMA remapping.
    pub fn with_shadows(mut self, shadows: Arc<DmaShadows>) -> Self {
        self.shadows = Some(shadows);
        self
    }
}

impl<B: InterruptBackend + 'static> BusDevice for IommuMmio<B> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.iommu.mmio_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let before = self.iommu.remap_mode();
        let (effects, dma) = self.iommu.mmio_write(offset, data);
        if let Some(shadows) = &self.shadows {
            shadows.apply(&self.iommu, &dma);
        }
        let after = self.iommu.remap_mode();
        if after != before && (after.enabled || before.enabled) {
            log::info!(
                "{}: guest set interrupt remapping {after}",
                self.iommu.name()
            );
        }
        if effects.is_empty() {
            return;
        }
        match self.router.upgrade() {
            Some(router) => {
                if let Err(e) = router.apply(&effects) {
                    log::error!("IOMMU: applying invalidation: {e}");
                }
            }
            None => log::error!("IOMMU: interrupt router gone"),
        }
    }
}

/// The VT-d register page.
pub type VtdMmio<B> = IommuMmio<B>;
/// The AMD-Vi register window.
pub type AmdMmio<B> = IommuMmio<B>;
