//! Userspace IOAPIC (KVM split irqchip). TO BE WRITTEN.
use virtual_iommu::MsiMessage;

/// The userspace IOAPIC's view of the VMM's interrupt-route table.
///
/// GSI `pin` (0..24) belongs to IOAPIC pin `pin`. The IOAPIC tells the sink which message
/// each pin's RTE currently produces, and raises or lowers the pin's GSI.
pub trait IoApicSink: Send + Sync {
    /// Sets the route of pin `pin` to the raw message its RTE produces (before any
    /// remapping or extended-destination decoding, which the VMM applies), or removes it
    /// when the RTE is masked. The sink commits the change to KVM before returning.
    fn set_pin_route(&self, pin: u8, msg: Option<MsiMessage>);
    /// Drives the pin's GSI in KVM (`KVM_IRQ_LINE`): `true` delivers the routed message.
    fn set_pin_level(&self, pin: u8, level: bool);
}

/// Placeholder.
pub struct IoApic;
