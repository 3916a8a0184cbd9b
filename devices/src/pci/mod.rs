//! PCI segment 0: configuration space, MSI/MSI-X, the host bridge and the test device.
//!
//! # Pieces
//!
//! * [`config`]: a type-0 configuration space (4 KiB, PCIe-sized) with per-byte write masks
//!   (read-only, read-write, write-1-to-clear), BAR sizing, command/status and the
//!   capability list. A write returns [`ConfigWriteEffect`]s (a BAR moved, decoding was
//!   switched) for whoever maps BARs.
//! * [`msi`] and [`msix`]: the MSI capability and the MSI-X capability with its table and
//!   pending-bit array. Both talk to the VMM's route table through [`MsiSink`].
//! * [`bus`]: [`PciRoot`] (bus 0 of segment 0, a host bridge at 00:00.0), configuration
//!   mechanism #1 on ports 0xcf8/0xcfc, ECAM, BAR decoding windows for the MMIO and PIO
//!   buses, and [`PciRoot::assign_bars`], the firmware's job of placing BARs.
//! * [`edu`]: QEMU's `edu` test device (MSI) and an MSI-X variant with 256 vectors.
//! * [`pvpanic`]: QEMU's PCI pvpanic function (1b36:0011).
//!
//! # Interrupts: routes and deliveries
//!
//! Each PCI function gets one [`MsiSink`], created by the VMM for that function's bus,
//! device and function number (so the sink knows the requester ID — [`PciAddress::source_id`]
//! — and no call carries it). The function keeps the sink's route for vector `i` equal to
//! the raw message the guest programmed for `i` (before any remapping) while MSI or MSI-X is
//! enabled, and `None` otherwise:
//!
//! * routes change when the guest enables or disables MSI/MSI-X, changes the number of
//!   enabled MSI vectors, or rewrites a vector's address or data while enabled; changes that
//!   happen together (enabling MSI-X with 256 vectors) arrive in one
//!   [`MsiSink::set_vector_routes`] call, so the VMM can commit them with one
//!   `KVM_SET_GSI_ROUTING`;
//! * masking (MSI per-vector mask, MSI-X vector mask or function mask) never touches the
//!   route: a masked vector is not triggered, its pending bit is set instead, and it is
//!   triggered once when it becomes deliverable again (the pending bit is cleared then);
//! * a message whose address is outside the x86 interrupt window (`0xfeeX_XXXX`, as in
//!   never-programmed MSI-X entries whose address is 0, or with a nonzero upper address
//!   dword: the window is below 4 GiB) is no interrupt on x86: its route is `None` and a
//!   trigger of it is dropped, like the memory write it would be;
//! * a function whose command register has Bus Master Enable clear sends no MSI (a memory
//!   write), as on hardware and in QEMU: guests set bit 2 of the command register before
//!   using MSI (Linux: `pci_set_master`).
//!
//! [`MsiSink::trigger_vector`] is only called for a vector whose current route is `Some`.
//!
//! # Locking
//!
//! Sinks and listeners are called with the function's mutex held (and, for configuration
//! writes, the [`PciRoot`]'s mutex too). They must never call back into the PCI model.
//! The lock order is: bus device → [`PciRoot`] → function.

pub mod bus;
pub mod config;
pub mod edu;
pub mod msi;
pub mod msix;
pub mod pvpanic;
#[cfg(test)]
mod testing;

use std::fmt;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use virtual_iommu::{MsiMessage, SourceId};

pub use bus::{
    BarAssignment, BarTarget, HostBridge, PciBarWindow, PciConfigAddressPort, PciConfigDataPort,
    PciConfigListener, PciEcam, PciRoot, PciWindow, SharedPciRoot,
};
pub use config::{BarKind, BarRegion, BarSpace, ConfigWriteEffect, PciConfigSpace, PciHeader};
pub use edu::EduDevice;
pub use msi::MsiCapability;
pub use msix::{MsixCapability, MsixLayout};
pub use pvpanic::PvPanicPci;

/// Number of device numbers on a PCI bus.
pub const PCI_DEVICES_PER_BUS: u8 = 32;
/// Number of functions per PCI device.
pub const PCI_FUNCTIONS_PER_DEVICE: u8 = 8;

/// A PCI function's view of the VMM's route table: one GSI per vector.
///
/// See the [module documentation](self) for when routes change. Implementations must not
/// call back into the PCI model (they run with the function's lock held).
pub trait MsiSink: Send + Sync {
    /// Vector `index` now produces `msg` (the raw message the guest programmed, before
    /// remapping), or nothing (disabled). The sink commits before returning.
    fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>);

    /// Several vectors changed at once (for instance MSI-X was enabled); the sink may
    /// commit them together. The default calls [`MsiSink::set_vector_route`] for each.
    fn set_vector_routes(&self, routes: &[(u16, Option<MsiMessage>)]) {
        for &(index, msg) in routes {
            self.set_vector_route(index, msg);
        }
    }

    /// Delivers vector `index` (its route is set).
    fn trigger_vector(&self, index: u16);

    /// The vectors' effective masks changed (vector or function mask): `true` = masked.
    /// Emulated devices ignore this (the capability keeps pending bits itself); a sink
    /// whose vectors the hardware raises on its own (passthrough through irqfds) must stop
    /// KVM from delivering masked ones and report their interrupts back as pending.
    fn set_vectors_masked(&self, _changes: &[(u16, bool)]) {}
}

/// Sends route changes to `sink`: nothing for none, one call for one, a batch for more.
pub(crate) fn emit_routes(sink: &dyn MsiSink, changes: &[(u16, Option<MsiMessage>)]) {
    match changes {
        [] => {}
        [(index, msg)] => sink.set_vector_route(*index, *msg),
        _ => sink.set_vector_routes(changes),
    }
}

/// The message a vector may be routed to: `None` unless its address lies in the x86
/// interrupt window (anything else is a plain memory write, not an interrupt). The window
/// is 32-bit: a message with a nonzero upper address dword targets memory above 4 GiB.
pub(crate) fn routable(msg: MsiMessage) -> Option<MsiMessage> {
    (msg.is_msi_window() && msg.address_hi == 0).then_some(msg)
}

/// A PCI function as the root sees it: configuration space and BARs.
///
/// Configuration accesses arrive from [`PciRoot`] with `offset + data.len() <= 4096`, within
/// one dword and 1 to 4 bytes long; BAR accesses with the offset from the BAR's base and
/// any length. Both are guest-controlled: implementations must never panic, and answer
/// reads they do not decode with all ones.
pub trait PciFunction: Send {
    /// Reads `data.len()` bytes of configuration space at `offset`.
    fn config_read(&mut self, offset: u16, data: &mut [u8]);
    /// Writes `data` to configuration space at `offset`; returns what the VMM must act on.
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<ConfigWriteEffect>;
    /// The implemented BARs with their current programming (address, decoding state).
    fn bars(&self) -> Vec<BarRegion>;
    /// Reads `data.len()` bytes at `offset` into BAR `bar`.
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into BAR `bar`.
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]);
}

/// A PCI function shared between the root and whoever else drives it.
pub type SharedPciFunction = Arc<Mutex<dyn PciFunction>>;

/// Bus, device and function number of a PCI function in segment 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PciAddress {
    bus: u8,
    device: u8,
    function: u8,
}

impl PciAddress {
    /// Builds an address; `device` must be below 32 and `function` below 8.
    pub fn new(bus: u8, device: u8, function: u8) -> Result<Self, PciError> {
        if device >= PCI_DEVICES_PER_BUS || function >= PCI_FUNCTIONS_PER_DEVICE {
            return Err(PciError::InvalidAddress {
                bus,
                device,
                function,
            });
        }
        Ok(PciAddress {
            bus,
            device,
            function,
        })
    }

    /// The bus number.
    pub fn bus(&self) -> u8 {
        self.bus
    }

    /// The device number (0..32).
    pub fn device(&self) -> u8 {
        self.device
    }

    /// The function number (0..8).
    pub fn function(&self) -> u8 {
        self.function
    }

    /// The requester ID the IOMMU sees for this function.
    pub fn source_id(&self) -> SourceId {
        SourceId::new(self.bus, self.device, self.function)
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

impl fmt::Debug for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Errors building or wiring PCI functions (never caused by guest accesses).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PciError {
    /// Device or function number out of range.
    #[error("invalid PCI address {bus:02x}:{device:02x}.{function}")]
    InvalidAddress {
        /// Bus number.
        bus: u8,
        /// Device number.
        device: u8,
        /// Function number.
        function: u8,
    },
    /// The root only implements bus 0.
    #[error("PCI bus {0:#04x} does not exist (only bus 0 does)")]
    NoSuchBus(u8),
    /// Two functions at one address.
    #[error("PCI address {0} is already in use")]
    AddressInUse(PciAddress),
    /// BAR index past 5, or a 64-bit BAR at index 5.
    #[error("invalid BAR index {0}")]
    InvalidBarIndex(u8),
    /// The BAR register (or the upper half a 64-bit BAR needs) is taken.
    #[error("BAR {0} is already defined")]
    BarInUse(u8),
    /// The size is not a power of two or out of range for the BAR kind.
    #[error("invalid size {size:#x} for BAR {bar} ({kind:?})")]
    InvalidBarSize {
        /// BAR index.
        bar: u8,
        /// Requested size.
        size: u64,
        /// BAR kind.
        kind: BarKind,
    },
    /// No room left for a capability of `len` bytes below offset 0x100.
    #[error("no room for capability {id:#04x} of {len} bytes")]
    CapabilitySpaceFull {
        /// Capability ID.
        id: u8,
        /// Capability length in bytes.
        len: u8,
    },
    /// An MSI vector count that is not a power of two in 1..=32, or an MSI-X table size
    /// outside 1..=2048.
    #[error("invalid vector count {0}")]
    InvalidVectorCount(u16),
    /// The MSI-X table or PBA does not fit its BAR, is misaligned or overlaps the other.
    #[error("invalid MSI-X layout: {0}")]
    InvalidMsixLayout(&'static str),
    /// A function's lock is poisoned.
    #[error("PCI function {0} is unavailable (lock poisoned)")]
    FunctionUnavailable(PciAddress),
    /// No room for a BAR in its window.
    #[error("no room for BAR {bar} of {address} ({size:#x} bytes) in the {space:?} window")]
    WindowExhausted {
        /// The function.
        address: PciAddress,
        /// BAR index.
        bar: u8,
        /// BAR size.
        size: u64,
        /// The address space of the BAR.
        space: BarSpace,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that only implements the required methods, to exercise the default batch.
    #[derive(Default)]
    struct SingleRouteSink(Mutex<Vec<(u16, Option<MsiMessage>)>>);

    impl MsiSink for SingleRouteSink {
        fn set_vector_route(&self, index: u16, msg: Option<MsiMessage>) {
            self.0.lock().unwrap().push((index, msg));
        }

        fn trigger_vector(&self, _index: u16) {}
    }

    fn msg(data: u32) -> MsiMessage {
        MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data,
        }
    }

    #[test]
    fn default_batch_sets_each_route_in_order() {
        let sink = SingleRouteSink::default();
        let routes = [(3, Some(msg(1))), (0, None), (7, Some(msg(2)))];
        emit_routes(&sink, &routes);
        assert_eq!(*sink.0.lock().unwrap(), routes.to_vec());
        emit_routes(&sink, &[]);
        assert_eq!(sink.0.lock().unwrap().len(), 3);
    }

    #[test]
    fn only_interrupt_window_messages_are_routable() {
        assert_eq!(routable(msg(5)), Some(msg(5)));
        let remappable = MsiMessage {
            address_lo: 0xfee0_0010,
            ..msg(0)
        };
        assert_eq!(routable(remappable), Some(remappable));
        assert_eq!(routable(MsiMessage::default()), None);
        let memory = MsiMessage {
            address_lo: 0x1000,
            ..msg(5)
        };
        assert_eq!(routable(memory), None);
    }

    /// Found by the `pci_config` fuzzer: an MSI-X entry (or a 64-bit MSI capability)
    /// programmed with address 0x1_fee0_0000 got a route, and the VMM handed
    /// `address_hi` to KVM as x2APIC destination bits 31:8 (or KVM rejected the whole
    /// routing table when its low byte was set). Above 4 GiB is memory, not the
    /// interrupt window.
    #[test]
    fn messages_above_4gib_are_not_routable() {
        for address_hi in [1, 0x100, 0x7777_7700, u32::MAX] {
            let m = MsiMessage {
                address_hi,
                ..msg(0x41)
            };
            assert_eq!(routable(m), None, "{m:x?}");
        }
    }

    #[test]
    fn addresses_format_and_map_to_source_ids() {
        let a = PciAddress::new(0, 0x1f, 7).unwrap();
        assert_eq!(format!("{a}"), "00:1f.7");
        assert_eq!(format!("{a:?}"), "00:1f.7");
        assert_eq!(a.source_id(), SourceId(0x00ff));
        assert_eq!((a.bus(), a.device(), a.function()), (0, 0x1f, 7));
        assert_eq!(
            PciAddress::new(2, 32, 0),
            Err(PciError::InvalidAddress {
                bus: 2,
                device: 32,
                function: 0
            })
        );
        assert!(PciAddress::default() < a);
    }
}
