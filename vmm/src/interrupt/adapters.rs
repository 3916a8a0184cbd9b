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

/// A PCI function's vectors as one range of router sources: vector `i` is source
/// `handles.start + i`. Emulated functions' vectors are VMM-signalled
/// ([`DeviceVectors::emulated`]); passthrough and virtio vectors are irqfd vectors
/// ([`DeviceVectors::irqfd`]), whose masks also reach the router, which takes masked
/// vectors away from KVM (for VMM-signalled vectors the capability keeps pending bits
/// itself and the router ignores masks).
pub struct DeviceVectors<B: InterruptBackend + 'static> {
    router: Arc<InterruptRouter<B>>,
    name: String,
    handles: Range<u32>,
}

impl<B: InterruptBackend + 'static> DeviceVectors<B> {
    /// Adds `count` VMM-signalled vectors for the emulated function with requester ID `sid`.
    pub fn emulated(
        router: Arc<InterruptRouter<B>>,
        sid: SourceId,
        count: u32,
    ) -> Result<Self, super::RouterError> {
        let handles = router.add_signal_vectors(sid, count)?;
        Ok(DeviceVectors {
            router,
            name: format!("PCI {:04x}", sid.0),
            handles,
        })
    }

    /// The irqfd vectors `handles` (from [`InterruptRouter::add_irqfd_vectors`]) of device
    /// `name`.
    pub fn irqfd(router: Arc<InterruptRouter<B>>, name: &str, handles: Range<u32>) -> Self {
        DeviceVectors {
            router,
            name: name.to_string(),
            handles,
        }
    }

    /// The handle of vector `index`.
    pub fn vector_handle(&self, index: u16) -> Option<IrqHandle> {
        let h = self.handles.start.checked_add(u32::from(index))?;
        self.handles.contains(&h).then_some(IrqHandle(h))
    }

    fn handles_of<T: Copy>(&self, changes: &[(u16, T)]) -> Vec<(IrqHandle, T)> {
        changes
            .iter()
            .filter_map(|&(i, v)| self.vector_handle(i).map(|h| (h, v)))
            .collect()
    }
}

impl<B: InterruptBackend + 'static> MsiSink for DeviceVectors<B> {
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
        self.set_vector_routes(&[(index, msg)]);
    }

    fn set_vector_routes(&self, routes: &[(u16, Option<MsiMessage>)]) {
        if let Err(e) = self.router.set_sources(&self.handles_of(routes)) {
            log::error!("{}: vector update failed: {e}", self.name);
        }
    }

    fn trigger_vector(&self, index: u16) {
        if let Some(h) = self.vector_handle(index) {
            self.router.trigger(h);
        }
    }

    fn set_vectors_masked(&self, changes: &[(u16, bool)]) {
        if let Err(e) = self.router.set_masked(&self.handles_of(changes)) {
            log::error!("{}: mask update failed: {e}", self.name);
        }
    }
}
