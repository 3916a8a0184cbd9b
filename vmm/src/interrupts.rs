//! From an interrupt source's raw message to a KVM route.
//!
//! [`translate`] is the single place where a message becomes what KVM delivers: without an
//! IOMMU, remappable-format messages are blocked (nothing could translate them) and, when
//! the guest was offered KVM_FEATURE_MSI_EXT_DEST_ID, address bits 11:5 are moved to
//! `address_hi`. With a virtual IOMMU the router asks it first (see [`crate::router`]).
//! The adapters here connect the IOAPIC and PCI functions to the router.

use std::ops::Range;
use std::sync::Arc;

use devices::pci::MsiSink;
use devices::IoApicSink;
use kvm_ioctls::VmFd;
use virtual_iommu::{MsiMessage, SourceId};

use crate::router::{InterruptBackend, InterruptRouter};
use crate::routes::RoutingBackend;

/// How messages are translated for this VM.
#[derive(Clone, Copy, Debug, Default)]
pub struct TranslationPolicy {
    /// The guest was offered the extended destination ID.
    pub ext_dest_id: bool,
}

/// Translates a source's raw message into the route KVM should hold; `None` blocks it.
pub fn translate(msg: MsiMessage, policy: TranslationPolicy) -> Option<MsiMessage> {
    // A raw message with upper address bits is a memory write above 4 GiB, not an
    // interrupt (KVM would read those bits as destination bits 31:8).
    if !msg.is_msi_window() || msg.is_remappable() || msg.address_hi != 0 {
        return None;
    }
    Some(if policy.ext_dest_id {
        msg.with_ext_dest_swizzled()
    } else {
        msg
    })
}

/// Raises and lowers GSIs in KVM (`KVM_IRQ_LINE`).
pub trait IrqLine: Send + Sync {
    /// Sets GSI `gsi` to `level`.
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), kvm_ioctls::Error>;
}

impl IrqLine for VmFd {
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), kvm_ioctls::Error> {
        VmFd::set_irq_line(self, gsi, level)
    }
}

impl<T: RoutingBackend> RoutingBackend for Arc<T> {
    fn set_routes(
        &self,
        entries: &[kvm_bindings::kvm_irq_routing_entry],
    ) -> Result<(), crate::routes::RouteError> {
        (**self).set_routes(entries)
    }
}

/// The userspace IOAPIC's connection to the router: pin `n` is GSI `n`, and its messages
/// carry the IOAPIC's source ID (as the DMAR's device scope names it).
pub struct IoApicPins<B: InterruptBackend> {
    router: Arc<InterruptRouter<B>>,
    sid: SourceId,
}

impl<B: InterruptBackend> IoApicPins<B> {
    /// Connects IOAPIC pins to `router`; `sid` is the IOAPIC's requester ID.
    pub fn new(router: Arc<InterruptRouter<B>>, sid: SourceId) -> Self {
        IoApicPins { router, sid }
    }
}

impl<B: InterruptBackend> IoApicSink for IoApicPins<B> {
    fn set_pin_route(&self, pin: u8, msg: Option<MsiMessage>) {
        if let Err(e) = self.router.set_sources(&[(u32::from(pin), self.sid, msg)]) {
            log::error!("IOAPIC pin {pin}: route update failed: {e}");
        }
    }

    fn set_pin_level(&self, pin: u8, level: bool) {
        // MSI routes act on assertion only; deassertion has nothing to send.
        if level {
            self.router.trigger(u32::from(pin));
        }
    }
}

/// A PCI function's vectors: vector `i` is GSI `gsis.start + i`.
pub struct PciVectors<B: InterruptBackend> {
    router: Arc<InterruptRouter<B>>,
    sid: SourceId,
    gsis: Range<u32>,
}

impl<B: InterruptBackend> PciVectors<B> {
    /// Connects a function with requester ID `sid` to the GSIs `gsis`.
    pub fn new(router: Arc<InterruptRouter<B>>, sid: SourceId, gsis: Range<u32>) -> Self {
        PciVectors { router, sid, gsis }
    }

    fn gsi(&self, index: u16) -> Option<u32> {
        let gsi = self.gsis.start.checked_add(u32::from(index))?;
        self.gsis.contains(&gsi).then_some(gsi)
    }
}

impl<B: InterruptBackend> MsiSink for PciVectors<B> {
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
        self.set_vector_routes(&[(index, msg)]);
    }

    fn set_vector_routes(&self, routes: &[(u16, Option<MsiMessage>)]) {
        let changes: Vec<_> = routes
            .iter()
            .filter_map(|&(i, m)| self.gsi(i).map(|g| (g, self.sid, m)))
            .collect();
        if let Err(e) = self.router.set_sources(&changes) {
            log::error!("PCI {:04x}: route update failed: {e}", self.sid.0);
        }
    }

    fn trigger_vector(&self, index: u16) {
        if let Some(gsi) = self.gsi(index) {
            self.router.trigger(gsi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtual_iommu::msi::DeliveryMode;

    #[test]
    fn ext_dest_applied_only_when_offered() {
        let raw = MsiMessage {
            address_lo: 0xfee0_0000 | (0x2c << 12) | (0x1 << 5),
            address_hi: 0,
            data: 0x31,
        };
        let on = translate(raw, TranslationPolicy { ext_dest_id: true }).unwrap();
        assert_eq!(on.destination(), 0x12c);
        let off = translate(raw, TranslationPolicy { ext_dest_id: false }).unwrap();
        assert_eq!(off.destination(), 0x2c);
    }

    #[test]
    fn remappable_and_non_msi_blocked_without_iommu() {
        let remap = MsiMessage {
            address_lo: 0xfee0_0010,
            address_hi: 0,
            data: 0,
        };
        assert_eq!(translate(remap, TranslationPolicy::default()), None);
        let bogus = MsiMessage {
            address_lo: 0x1000,
            address_hi: 0,
            data: 0,
        };
        assert_eq!(translate(bogus, TranslationPolicy::default()), None);
        let ok = MsiMessage::compat(3, false, 0x40, DeliveryMode::Fixed, false);
        assert_eq!(translate(ok, TranslationPolicy::default()), Some(ok));
        let above_4g = MsiMessage {
            address_hi: 0x1,
            ..ok
        };
        assert_eq!(translate(above_4g, TranslationPolicy::default()), None);
    }
}
