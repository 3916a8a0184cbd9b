//! A guest-visible AMD-Vi (AMD IOMMU) unit that does interrupt remapping and guest
//! virtual APIC posting.
//!
//! [`AmdViUnit`] is the 16 KiB register window of one IOMMU ([`regs`]) plus the engines
//! behind it: device table and interrupt table lookup ([`dte`], [`irte`], [`remap`]), the
//! command buffer ([`cmd`]), the event and GA logs ([`log`]), guest-mode posting ([`ga`])
//! and the unit's own interrupts ([`intr`]); [`pci`] describes the PCI function the unit is
//! to the guest. It is pure: no KVM calls, and guest memory only through
//! [`crate::GuestMemoryReader`]. What the extended feature register advertises, and why there is
//! no DMA translation, is in [`regs`].
//!
//! # How the VMM wires it
//!
//! * **PCI and ACPI**: present the function as [`pci`] describes (class 0806h, the IOMMU
//!   capability block from [`pci::IommuCapability`], a one-message MSI capability) and
//!   describe it in the IVRS (`vmm/src/acpi/ivrs.rs`) with [`AmdViUnit::extended_features`]
//!   as the EFR image. Interrupts from the IOAPIC must carry the device ID its IVRS special
//!   entry names.
//! * **MMIO**: forward guest accesses in the window the VMM placed to
//!   [`AmdViUnit::mmio_read`] and [`AmdViUnit::mmio_write`]. Accesses of 4 bytes at
//!   4-aligned offsets and of 8 bytes at 8-aligned offsets are served; any other size or
//!   alignment reads as all-ones and is ignored on write.
//! * **Effects**: every write returns [`Effects`]. Before resuming the vCPU that wrote,
//!   the VMM must:
//!   1. if `remap_state_changed`, re-translate *every* interrupt source (the unit was
//!      enabled or disabled, the IRTE format, x2APIC mode, guest APIC mode or the device
//!      table pointer changed);
//!   2. otherwise re-translate the sources whose device ID an entry of `invalidations`
//!      covers ([`Effects::invalidates`]: INVALIDATE_DEVTAB_ENTRY and
//!      INVALIDATE_INTERRUPT_TABLE name one device ID, INVALIDATE_IOMMU_ALL covers all);
//!   3. commit the route table once;
//!   4. then deliver `interrupts` with `KVM_SIGNAL_MSI` (already in KVM's x2APIC API
//!      layout, never remapped) and signal the function's MSI once per entry of `msi`
//!      through its MSI capability (if enabled and unmasked).
//!
//!   COMPLETION_WAIT stores are written by the model during the MMIO write, exactly like
//!   VT-d wait descriptor status writes. The vCPU that wrote the tail (in Linux the one that
//!   polls the store, holding `iommu->lock` in `iommu_completion_wait`) sees the store only
//!   once it resumes, i.e. after step 3; the completion-wait interrupt is sent in step 4.
//!   That is what makes COMPLETION_WAIT's promise ("every earlier command is complete")
//!   hold for the routes the earlier invalidations cover. A guest polling the store from a
//!   *different* vCPU could see it before step 3; Linux never does.
//! * **Translation**: [`AmdViUnit::translate`] turns a device's message into a
//!   [`Translation`], reading the DTE and IRTE from guest memory at call time; it is pure.
//!   Key every source by its device ID (the requester ID, [`SourceId`]) so invalidations
//!   find it, failed translations included (a DTE or IRTE the guest fills in later is
//!   announced by an invalidation naming the device).
//!   - [`Translation::Passthrough`], [`Translation::Remapped`]: a route; cache it until an
//!     invalidation covers the device ID or the remapping state changes. Routes are the
//!     interrupt remapping cache, exactly as on hardware.
//!   - [`Translation::Blocked`]: no route (cache the absence the same way). When an
//!     interrupt is actually blocked, record its fault with [`AmdViUnit::record_fault`]
//!     (event log entry and event interrupt) and act on the returned [`Effects`] (step 4).
//!   - [`Translation::GuestMode`]: **never cache this.** It is not a route: the source's
//!     interrupts must reach the VMM (no KVM route, or a route to a VMM-handled vector),
//!     and at *every* interrupt the VMM calls [`AmdViUnit::deliver`], which re-reads the
//!     DTE and IRTE (Destination, IsRun and GATag change without invalidation) and posts:
//!     IRR bit set with [`crate::GuestMemoryReader::fetch_or_u32`] (which the VMM implements
//!     atomically), doorbell counted, GA log entry and interrupt. A later translation of the
//!     same source may well be a plain route again; the VMM re-classifies the source on the
//!     next invalidation covering it.
//!
//!   [`AmdViUnit::deliver`] does translate + record or post in one call and serves every
//!   interrupt the VMM handles itself.
//!
//! # Unit disabled
//!
//! With `IommuEn` = 0 nothing is remapped: every message passes unchanged, as QEMU does.
//! The VMM may then apply the paravirtual extended destination ID convention itself.

pub mod cmd;
pub mod dte;
pub mod fault;
pub mod ga;
pub mod intr;
pub mod irte;
pub mod log;
pub mod pci;
pub mod regs;
pub mod remap;
mod unit;

use crate::msi::{MsiMessage, SourceId};

pub use fault::{AmdFault, FaultKind};
pub use ga::GuestPost;
pub use intr::InterruptCause;
pub use unit::{AmdViUnit, Counters};

/// Configuration of an [`AmdViUnit`]: which features its extended feature register
/// reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdViConfig {
    /// `XTSup`: x2APIC mode (32-bit destinations, XT interrupt control registers). Linux
    /// needs it for interrupt remapping with APIC IDs above 255. Implies `ga`.
    /// Default: true.
    pub xt: bool,
    /// `GASup`: the 128-bit IRTE format. Default: true.
    pub ga: bool,
    /// `GAMSup` = vAPIC: guest-mode IRTEs and the GA log, so a guest hypervisor can post
    /// interrupts to its vCPUs. Implies `ga`. Default: true.
    pub vapic: bool,
}

impl Default for AmdViConfig {
    fn default() -> Self {
        AmdViConfig {
            xt: true,
            ga: true,
            vapic: true,
        }
    }
}

/// Which cached translations an invalidation command covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Invalidation {
    /// INVALIDATE_DEVTAB_ENTRY: the DTE of this device ID changed.
    DeviceTableEntry(u16),
    /// INVALIDATE_INTERRUPT_TABLE: the interrupt table of this device ID changed.
    InterruptTable(u16),
    /// INVALIDATE_IOMMU_ALL: everything.
    All,
}

impl Invalidation {
    /// True when a source with `device_id` must be re-translated.
    pub fn covers(&self, device_id: u16) -> bool {
        match *self {
            Invalidation::DeviceTableEntry(d) | Invalidation::InterruptTable(d) => d == device_id,
            Invalidation::All => true,
        }
    }
}

/// What the VMM must do after an MMIO write, a recorded fault or a post; see the module
/// documentation for the order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Invalidations, in command order.
    pub invalidations: Vec<Invalidation>,
    /// The remapping state changed: every source must be re-translated.
    pub remap_state_changed: bool,
    /// Interrupts the unit sends through its XT interrupt control registers, in KVM's
    /// x2APIC API layout, in the order they occurred.
    pub interrupts: Vec<MsiMessage>,
    /// Interrupts the unit sends through its PCI MSI capability (`IntCapXTEn` clear):
    /// signal MSI message 0 once per entry.
    pub msi: Vec<InterruptCause>,
}

impl Effects {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.invalidations.is_empty()
            && !self.remap_state_changed
            && self.interrupts.is_empty()
            && self.msi.is_empty()
    }

    /// True when a source with `device_id` must be re-translated.
    pub fn invalidates(&self, device_id: u16) -> bool {
        self.remap_state_changed || self.invalidations.iter().any(|i| i.covers(device_id))
    }

    /// True when every source must be re-translated.
    pub fn invalidates_all(&self) -> bool {
        self.remap_state_changed || self.invalidations.contains(&Invalidation::All)
    }

    /// Appends `other`'s effects to these.
    pub fn merge(&mut self, other: Effects) {
        self.invalidations.extend(other.invalidations);
        self.remap_state_changed |= other.remap_state_changed;
        self.interrupts.extend(other.interrupts);
        self.msi.extend(other.msi);
    }
}

/// What the unit does with one interrupt message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// Not remapped (unit disabled, IV = 0, IntCtl = forward, or a passed NMI, INIT,
    /// ExtINT or SMI): the message is unchanged. A route; cacheable.
    Passthrough(MsiMessage),
    /// Remapped through IRTE `index` of `device_id`'s interrupt table. A route; cacheable.
    Remapped {
        /// The requester.
        device_id: u16,
        /// The IRTE index (MSI data 10:0).
        index: u32,
        /// The interrupt to deliver, in KVM's x2APIC API layout.
        message: MsiMessage,
    },
    /// A guest-mode IRTE: not a route, never cacheable; post with
    /// [`AmdViUnit::post`] (or use [`AmdViUnit::deliver`]) at every interrupt.
    GuestMode(GuestPost),
    /// Blocked: no interrupt. The fault is not yet recorded; see
    /// [`AmdViUnit::record_fault`].
    Blocked(AmdFault),
}

impl Translation {
    /// The message to route, if this translation is a route.
    pub fn message(&self) -> Option<MsiMessage> {
        match *self {
            Translation::Passthrough(m) | Translation::Remapped { message: m, .. } => Some(m),
            Translation::GuestMode(_) | Translation::Blocked(_) => None,
        }
    }

    /// True when the VMM may keep this translation until an invalidation covers the
    /// source (everything but guest mode).
    pub fn is_cacheable(&self) -> bool {
        !matches!(self, Translation::GuestMode(_))
    }

    /// The fault, when blocked.
    pub fn fault(&self) -> Option<AmdFault> {
        match *self {
            Translation::Blocked(f) => Some(f),
            _ => None,
        }
    }

    /// The posting to perform, for a guest-mode entry.
    pub fn guest_post(&self) -> Option<GuestPost> {
        match *self {
            Translation::GuestMode(p) => Some(p),
            _ => None,
        }
    }

    /// The IRTE index the message used, once decoded.
    pub fn irte_index(&self) -> Option<u32> {
        match *self {
            Translation::Passthrough(_) => None,
            Translation::Remapped { index, .. } => Some(index),
            Translation::GuestMode(p) => Some(p.index),
            Translation::Blocked(f) => f.index,
        }
    }
}

/// The device ID the unit uses for a source: its PCI requester ID.
pub fn device_id(source: SourceId) -> u16 {
    source.0
}

#[cfg(test)]
mod tests;
