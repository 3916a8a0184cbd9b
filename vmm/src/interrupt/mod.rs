//! Interrupts from device to KVM: every source's raw message, its translation through the
//! guest's IOMMU (or the IOMMU-less policy), and how each kind of source is delivered.
//!
//! # Three kinds of source
//!
//! * **VMM-signalled vectors** (emulated devices' MSI/MSI-X): the VMM injects the cached
//!   translation with `KVM_SIGNAL_MSI` when the device raises the vector. They own no GSI,
//!   so reprogramming one or invalidating its IRTE makes no KVM call at all.
//! * **IOAPIC pins**: each pin owns GSI `pin`, whose route is the pin's translated message;
//!   the IOAPIC raises it with `KVM_IRQ_LINE`. Route changes are staged and committed with
//!   one `KVM_SET_GSI_ROUTING` just before the next pin delivery. A level-triggered pin's
//!   `KVM_EXIT_IOAPIC_EOI` is matched by the vector of its last delivery
//!   ([`InterruptRouter::eoi_pins`]), so Remote IRR is cleared even if the pin was masked
//!   or re-routed while in service.
//! * **irqfd vectors** (passthrough, virtio): the device signals an eventfd; while the
//!   vector has a deliverable route, that eventfd is bound to the vector's GSI with
//!   `KVM_IRQFD`, so KVM (and a host that posts interrupts) delivers it without the VMM.
//!   Route changes of irqfd vectors are committed before the call that caused them returns,
//!   so an invalidation's effects are in KVM before the guest can see it complete. A
//!   vector KVM must not deliver (masked at the device, blocked by the IOMMU, no message,
//!   or a `msix=direct` vector in compatibility format) is watched by the VMM instead: a
//!   masked one sets its pending bit, a blocked one records its fault when it fires, as on
//!   hardware.
//!
//! Translations are the interrupt-entry cache: they change when a source is reprogrammed
//! or when the guest invalidates the IRTE a translation used, never because an IRTE was
//! merely written. An index-selective invalidation re-translates only the sources keyed
//! by the indices it covers.
//!
//! # Pieces
//!
//! [`policy`] (translation and postability), [`registry`] (sources and indexes),
//! [`router`] (the [`InterruptRouter`]), [`routes`] (the staged GSI table), `watcher`
//! (the VMM's epoll over detached eventfds), [`report`] (postable counts per device),
//! [`kvm`] (what is asked of KVM), [`adapters`] (IOAPIC pins and PCI functions' vectors).

pub mod adapters;
pub mod kvm;
pub mod policy;
pub mod registry;
pub mod report;
pub mod router;
pub mod routes;
pub(crate) mod watcher;

pub use adapters::{DeviceVectors, IoApicPins};
pub use kvm::{InterruptBackend, IrqLine, IrqfdBackend, MsiSignal, RoutingBackend};
pub use policy::{translate, TranslationPolicy};
pub use registry::{IrqHandle, IrqfdMode, VectorOwner, MAX_GSI};
pub use report::{GroupCounts, HostPosting};
pub use router::{GroupStats, InterruptRouter, IrqfdInfo, RouterError, RouterStats};

#[cfg(test)]
mod tests;
