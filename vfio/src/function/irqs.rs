//! The host side of a passed-through function's interrupts: which of INTx, MSI or MSI-X is
//! enabled on the device (VFIO allows one at a time), always with the eventfds the VMM gave,
//! so the same eventfd identity reaches KVM (irqfd) and, on a posting host, its bypass.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::raw_fds;
use crate::backend::{BackendError, VfioBackend, IRQ_INTX, IRQ_MSI, IRQ_MSIX};

/// Which vectors a masked-fire report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorKind {
    /// MSI-X.
    Msix,
    /// MSI.
    Msi,
}

/// What is enabled on the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Active {
    /// Nothing.
    #[default]
    None,
    /// INTx.
    Intx,
    /// MSI with this many vectors.
    Msi(u16),
    /// MSI-X, every vector.
    Msix,
}

/// The eventfds and the current state.
#[derive(Default)]
pub(crate) struct HostIrqs {
    pub(crate) msix_fds: Vec<Arc<EventFd>>,
    pub(crate) msi_fds: Vec<Arc<EventFd>>,
    pub(crate) intx_fd: Option<Arc<EventFd>>,
    pub(crate) active: Active,
}

impl HostIrqs {
    /// Moves the device from the current state to `want`; on failure the device is left
    /// with nothing enabled (and the state says so), so a retry starts clean.
    pub(crate) fn switch(
        &mut self,
        backend: &mut dyn VfioBackend,
        want: Active,
    ) -> Result<(), BackendError> {
        if want == self.active {
            return Ok(());
        }
        let current = std::mem::replace(&mut self.active, Active::None);
        match current {
            Active::None => {}
            Active::Intx => backend.disable_irqs(IRQ_INTX)?,
            Active::Msi(_) => backend.disable_irqs(IRQ_MSI)?,
            Active::Msix => backend.disable_irqs(IRQ_MSIX)?,
        }
        match want {
            Active::None => {}
            Active::Intx => {
                let Some(fd) = &self.intx_fd else {
                    return Ok(());
                };
                backend.set_irq_eventfds(IRQ_INTX, 0, &[Some(fd.as_raw_fd())])?;
            }
            Active::Msi(n) => {
                let fds = self.msi_fds.get(..usize::from(n)).unwrap_or(&self.msi_fds);
                if fds.is_empty() {
                    return Ok(());
                }
                backend.set_irq_eventfds(IRQ_MSI, 0, &raw_fds(fds))?;
            }
            Active::Msix => {
                if self.msix_fds.is_empty() {
                    return Ok(());
                }
                backend.set_irq_eventfds(IRQ_MSIX, 0, &raw_fds(&self.msix_fds))?;
            }
        }
        self.active = want;
        Ok(())
    }
}
