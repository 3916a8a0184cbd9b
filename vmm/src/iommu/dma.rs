//! Emulated devices' DMA through the guest's IOMMU: [`IommuDma`] is the platform's
//! [`DmaTranslator`] when an IOMMU is present.
//!
//! A transfer is translated page by page ([`Iommu::dma_access`]: VT-d's IOTLB, else the
//! guest's tables) before any data moves. The first page that faults ends the
//! translation: the IOMMU has recorded the fault, and its fault event (when one is due) is
//! sent through the interrupt router here, so the device only learns that the DMA failed.

use std::sync::{Arc, Weak};

use devices::dma::{check_range, DmaDirection, DmaError, DmaSegment, DmaTranslator};
use virtual_iommu::{DmaRequest, SourceId};

use super::Iommu;
use crate::interrupt::{InterruptBackend, InterruptRouter};

/// Emulated devices' DMA through `iommu`, fault events sent through the router.
pub struct IommuDma<B: InterruptBackend + 'static> {
    iommu: Arc<Iommu>,
    router: Weak<InterruptRouter<B>>,
}

impl<B: InterruptBackend + 'static> IommuDma<B> {
    /// The translator for `iommu`.
    pub fn new(iommu: Arc<Iommu>, router: Weak<InterruptRouter<B>>) -> Self {
        IommuDma { iommu, router }
    }
}

impl<B: InterruptBackend + 'static> DmaTranslator for IommuDma<B> {
    fn translate(
        &self,
        requester: SourceId,
        iova: u64,
        len: u64,
        direction: DmaDirection,
    ) -> Result<Vec<DmaSegment>, DmaError> {
        let end = check_range(iova, len)?;
        let mut segments: Vec<DmaSegment> = Vec::new();
        let mut at = iova;
        while at < end {
            let (result, effects) = self.iommu.dma_access(DmaRequest {
                source: requester,
                iova: at,
                write: direction.is_write(),
            });
            let mapping = match result {
                Ok(m) => m,
                Err(fault) => {
                    if !effects.is_empty() {
                        match self.router.upgrade() {
                            Some(r) => {
                                if let Err(e) = r.apply(&effects) {
                                    log::error!("IOMMU: sending the DMA fault event: {e}");
                                }
                            }
                            None => log::error!("IOMMU: interrupt router gone"),
                        }
                    }
                    return Err(DmaError::Fault {
                        reason: fault.reason.code(),
                        iova: at,
                    });
                }
            };
            let n = mapping.remaining(at).min(end - at).max(1);
            let gpa = mapping.gpa_of(at);
            match segments.last_mut() {
                Some(last) if last.gpa.checked_add(last.len) == Some(gpa) => last.len += n,
                _ => segments.push(DmaSegment { gpa, len: n }),
            }
            at += n;
        }
        Ok(segments)
    }
}
