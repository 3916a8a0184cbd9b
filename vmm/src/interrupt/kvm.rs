//! What the interrupt router asks of KVM, as traits so the router is testable with a
//! recorder: the GSI routing table, `KVM_IRQ_LINE`, `KVM_SIGNAL_MSI` and `KVM_IRQFD`.

use std::sync::Arc;

use kvm_bindings::{kvm_irq_routing_entry, kvm_msi, KvmIrqRouting};
use kvm_ioctls::VmFd;
use virtual_iommu::MsiMessage;
use vmm_sys_util::eventfd::EventFd;

use super::routes::RouteError;

/// Where committed routes go: KVM in production, a recorder in tests.
pub trait RoutingBackend: Send + Sync {
    /// Replaces the whole routing table with `entries`.
    fn set_routes(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), RouteError>;
}

/// Raises and lowers GSIs (`KVM_IRQ_LINE`): IOAPIC pins.
pub trait IrqLine: Send + Sync {
    /// Sets GSI `gsi` to `level`.
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), kvm_ioctls::Error>;
}

/// Injects one message directly (`KVM_SIGNAL_MSI`): emulated devices' vectors and the
/// IOMMU's own events.
pub trait MsiSignal: Send + Sync {
    /// Delivers `msg` (KVM's x2APIC API layout).
    fn signal_msi(&self, msg: MsiMessage) -> Result<(), kvm_ioctls::Error>;
}

/// Binds eventfds to GSIs (`KVM_IRQFD`): KVM then delivers the GSI's route whenever the
/// eventfd is signalled, without the VMM, and a posting-capable host posts it.
pub trait IrqfdBackend: Send + Sync {
    /// Binds `fd` to `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error>;
    /// Unbinds `fd` from `gsi`.
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error>;
}

/// Everything the router needs from the VM.
pub trait InterruptBackend: RoutingBackend + IrqLine + MsiSignal + IrqfdBackend {}
impl<T: RoutingBackend + IrqLine + MsiSignal + IrqfdBackend> InterruptBackend for T {}

impl RoutingBackend for VmFd {
    fn set_routes(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), RouteError> {
        let routing =
            KvmIrqRouting::from_entries(entries).map_err(|_| RouteError::TooMany(entries.len()))?;
        self.set_gsi_routing(&routing).map_err(RouteError::Commit)
    }
}

impl IrqLine for VmFd {
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), kvm_ioctls::Error> {
        VmFd::set_irq_line(self, gsi, level)
    }
}

impl MsiSignal for VmFd {
    fn signal_msi(&self, msg: MsiMessage) -> Result<(), kvm_ioctls::Error> {
        let m = kvm_msi {
            address_lo: msg.address_lo,
            address_hi: msg.address_hi,
            data: msg.data,
            ..Default::default()
        };
        VmFd::signal_msi(self, m).map(|_| ())
    }
}

impl IrqfdBackend for VmFd {
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        VmFd::register_irqfd(self, fd, gsi)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        VmFd::unregister_irqfd(self, fd, gsi)
    }
}

impl<T: RoutingBackend> RoutingBackend for Arc<T> {
    fn set_routes(&self, entries: &[kvm_irq_routing_entry]) -> Result<(), RouteError> {
        (**self).set_routes(entries)
    }
}
