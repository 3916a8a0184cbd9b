//! From an interrupt source's raw message to a KVM route.
//!
//! [`translate`] is the single place where a message becomes what KVM delivers: without an
//! IOMMU, remappable-format messages are blocked (nothing could translate them) and, when
//! the guest was offered KVM_FEATURE_MSI_EXT_DEST_ID, address bits 11:5 are moved to
//! `address_hi`. The virtual IOMMU's remapping will plug in here.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use devices::IoApicSink;
use kvm_ioctls::VmFd;
use virtual_iommu::MsiMessage;

use crate::routes::{RouteTable, RoutingBackend};

/// How messages are translated for this VM.
#[derive(Clone, Copy, Debug, Default)]
pub struct TranslationPolicy {
    /// The guest was offered the extended destination ID.
    pub ext_dest_id: bool,
}

/// Translates a source's raw message into the route KVM should hold; `None` blocks it.
pub fn translate(msg: MsiMessage, policy: TranslationPolicy) -> Option<MsiMessage> {
    if !msg.is_msi_window() || msg.is_remappable() {
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

/// The userspace IOAPIC's connection to KVM: pin `n` is GSI `n`, whose route is the pin's
/// translated RTE message.
pub struct IoApicRoutes<B: RoutingBackend + IrqLine> {
    routes: Arc<RouteTable<Arc<B>>>,
    policy: TranslationPolicy,
    warned: Mutex<HashSet<u8>>,
}

impl<B: RoutingBackend + IrqLine> IoApicRoutes<B> {
    /// Connects IOAPIC pins to `routes`.
    pub fn new(routes: Arc<RouteTable<Arc<B>>>, policy: TranslationPolicy) -> Self {
        IoApicRoutes {
            routes,
            policy,
            warned: Mutex::new(HashSet::new()),
        }
    }
}

impl<B: RoutingBackend + IrqLine> IoApicSink for IoApicRoutes<B> {
    fn set_pin_route(&self, pin: u8, msg: Option<MsiMessage>) {
        let route = msg.and_then(|m| {
            let t = translate(m, self.policy);
            if t.is_none() {
                if let Ok(mut w) = self.warned.lock() {
                    if w.insert(pin) {
                        log::warn!("IOAPIC pin {pin}: RTE message {m:x?} cannot be delivered without an IOMMU; pin blocked");
                    }
                }
            }
            t
        });
        if let Err(e) = self.routes.update([(u32::from(pin), route)]) {
            log::error!("IOAPIC pin {pin}: route update failed: {e}");
        }
    }

    fn set_pin_level(&self, pin: u8, level: bool) {
        if let Err(e) = self.routes.backend().set_irq_line(u32::from(pin), level) {
            log::error!("IOAPIC pin {pin}: KVM_IRQ_LINE failed: {e}");
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
    }
}
