//! The connections between device models and the router: the userspace IOAPIC's pins and
//! emulated PCI functions' vectors.

use std::ops::Range;
use std::sync::Arc;

use devices::pci::MsiSink;
use devices::IoApicSink;
use virtual_iommu::{MsiMessage, SourceId};

use super::kvm::InterruptBackend;
use super::registry::IrqHandle;
use super::router::InterruptRouter;

/// The userspace IOAPIC's connection to the router: pin `n` is source (and GSI) `n`; its
/// messages carry the IOAPIC's source ID (given to the router at creation).
pub struct IoApicPins<B: InterruptBackend + 'static> {
    router: Arc<InterruptRouter<B>>,
}

impl<B: InterruptBackend + 'static> IoApicPins<B> {
    /// Connects IOAPIC pins to `router`.
    pub fn new(router: Arc<InterruptRouter<B>>) -> Self {
        IoApicPins { router }
    }
}

impl<B: InterruptBackend + 'static> IoApicSink for IoApicPins<B> {
    fn set_pin_route(&self, pin: u8, msg: Option<MsiMessage>) {
        if let Err(e) = self.router.set_sources(&[(IrqHandle(u32::from(pin)), msg)]) {
            log::error!("IOAPIC pin {pin}: route update failed: {e}");
        }
    }

    fn set_pin_level(&self, pin: u8, level: bool) {
        // MSI routes act on assertion only; deassertion has nothing to send.
        if level {
            self.router.trigger(IrqHandle(u32::from(pin)));
        }
    }
}

/// An emulated PCI function's vectors, delivered by the VMM with `KVM_SIGNAL_MSI`:
/// vector `i` is source `handles.start + i`.
pub struct PciVectors<B: InterruptBackend + 'static> {
    router: Arc<InterruptRouter<B>>,
    sid: SourceId,
    handles: Range<u32>,
}

impl<B: InterruptBackend + 'static> PciVectors<B> {
    /// Adds `count` vectors for the function with requester ID `sid`.
    pub fn new(
        router: Arc<InterruptRouter<B>>,
        sid: SourceId,
        count: u32,
    ) -> Result<Self, super::RouterError> {
        let handles = router.add_signal_vectors(sid, count)?;
        Ok(PciVectors {
            router,
            sid,
            handles,
        })
    }

    fn handle(&self, index: u16) -> Option<IrqHandle> {
        let h = self.handles.start.checked_add(u32::from(index))?;
        self.handles.contains(&h).then_some(IrqHandle(h))
    }

    /// The handle of vector `index`.
    pub fn vector_handle(&self, index: u16) -> Option<IrqHandle> {
        self.handle(index)
    }
}

impl<B: InterruptBackend + 'static> MsiSink for PciVectors<B> {
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
        self.set_vector_routes(&[(index, msg)]);
    }

    fn set_vector_routes(&self, routes: &[(u16, Option<MsiMessage>)]) {
        let changes: Vec<_> = routes
            .iter()
            .filter_map(|&(i, m)| self.handle(i).map(|h| (h, m)))
            .collect();
        if let Err(e) = self.router.set_sources(&changes) {
            log::error!("PCI {:04x}: vector update failed: {e}", self.sid.0);
        }
    }

    fn trigger_vector(&self, index: u16) {
        if let Some(h) = self.handle(index) {
            self.router.trigger(h);
        }
    }
}

/// A device's vectors signalled through eventfds (passthrough, virtio), delivered by KVM
/// through irqfds: vector `i` is source `handles.start + i`. Masks reach the router, which
/// takes masked vectors away from KVM.
pub struct IrqfdVectors<B: InterruptBackend + 'static> {
    router: Arc<InterruptRouter<B>>,
    name: String,
    handles: Range<u32>,
}

impl<B: InterruptBackend + 'static> IrqfdVectors<B> {
    /// The vectors `handles` (from [`InterruptRouter::add_irqfd_vectors`]) of device `name`.
    pub fn new(router: Arc<InterruptRouter<B>>, name: &str, handles: Range<u32>) -> Self {
        IrqfdVectors {
            router,
            name: name.to_string(),
            handles,
        }
    }

    fn handle(&self, index: u16) -> Option<IrqHandle> {
        let h = self.handles.start.checked_add(u32::from(index))?;
        self.handles.contains(&h).then_some(IrqHandle(h))
    }
}

impl<B: InterruptBackend + 'static> MsiSink for IrqfdVectors<B> {
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
        self.set_vector_routes(&[(index, msg)]);
    }

    fn set_vector_routes(&self, routes: &[(u16, Option<MsiMessage>)]) {
        let changes: Vec<_> = routes
            .iter()
            .filter_map(|&(i, m)| self.handle(i).map(|h| (h, m)))
            .collect();
        if let Err(e) = self.router.set_sources(&changes) {
            log::error!("{}: vector update failed: {e}", self.name);
        }
    }

    fn trigger_vector(&self, index: u16) {
        if let Some(h) = self.handle(index) {
            self.router.trigger(h);
        }
    }

    fn set_vectors_masked(&self, changes: &[(u16, bool)]) {
        let changes: Vec<_> = changes
            .iter()
            .filter_map(|&(i, m)| self.handle(i).map(|h| (h, m)))
            .collect();
        if let Err(e) = self.router.set_masked(&changes) {
            log::error!("{}: mask update failed: {e}", self.name);
        }
    }
}
