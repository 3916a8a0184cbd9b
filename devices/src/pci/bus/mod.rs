//! PCI segment 0: the root bus, its host bridge, configuration access and BAR decoding.
//!
//! # Wiring (what the VMM does)
//!
//! ```text
//! let root: SharedPciRoot = Arc::new(Mutex::new(PciRoot::new()));   // host bridge at 00:00.0
//! let addr = PciAddress::new(0, 3, 0)?;                              // edu at 00:03.0
//! let edu = EduDevice::new(sink_for(addr.source_id()))?;             // one MsiSink per function
//! root.lock()?.add_function(addr, Arc::new(Mutex::new(edu)))?;
//! root.lock()?.assign_bars(PciWindow::MMIO32, Some(PciWindow::IO))?; // no BIOS: we place BARs
//! let address_port = PciConfigAddressPort::new();
//! let data_port = PciConfigDataPort::new(root.clone(), &address_port);
//! pio.insert(0xcf8, 1, Arc::new(Mutex::new(address_port)))?;   // 0xcf9 is the reset register
//! pio.insert(0xcfc, 4, Arc::new(Mutex::new(data_port)))?;
//! mmio.insert(PCI_ECAM_BASE, PCI_ECAM_SIZE, Arc::new(Mutex::new(PciEcam::new(root.clone()))))?;
//! mmio.insert(PCI_MMIO32_BASE, PCI_MMIO32_SIZE,
//!             Arc::new(Mutex::new(PciBarWindow::new(root.clone(), BarSpace::Memory, PCI_MMIO32_BASE))))?;
//! pio.insert(PCI_IO_BASE, PCI_IO_SIZE,
//!            Arc::new(Mutex::new(PciBarWindow::new(root.clone(), BarSpace::Io, PCI_IO_BASE))))?;
//! ```
//!
//! [`PciBarWindow`] decodes BARs dynamically, from the addresses currently programmed and
//! the command register's decode bits, so the VMM's buses never change after start-up even
//! when the guest moves a BAR. A VMM that maps BARs some other way (a KVM memory slot for a
//! passthrough BAR) registers a [`PciConfigListener`] and follows
//! [`ConfigWriteEffect::BarMoved`] and [`ConfigWriteEffect::DecodeChanged`].
//!
//! # Files
//!
//! * `mod.rs` (this file): [`PciRoot`], the registry of the functions on bus 0 that
//!   routes configuration accesses to them, [`SharedPciRoot`], [`PciConfigListener`] and
//!   what the configuration decoders share (field masks, the access check).
//! * `host_bridge.rs`: [`HostBridge`], the function at 00:00.0.
//! * `config_io.rs`: configuration mechanism #1, [`PciConfigAddressPort`] and
//!   [`PciConfigDataPort`].
//! * `ecam.rs`: [`PciEcam`], the memory-mapped configuration window.
//! * `assign.rs`: the default windows, [`PciWindow`], [`BarAssignment`] and
//!   [`PciRoot::assign_bars`].
//! * `window.rs`: BAR decoding, [`PciRoot::find_bar`], [`BarTarget`] and [`PciBarWindow`].
//! * `tests.rs`: the unit tests, which drive all of the above together.

mod assign;
mod config_io;
mod ecam;
mod host_bridge;
#[cfg(test)]
mod tests;
mod window;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use log::debug;

use super::config::{
    BarRegion, ConfigWriteEffect, PCI_CONFIG_SPACE_SIZE, PCI_HEADER_TYPE,
    PCI_HEADER_TYPE_MULTIFUNCTION,
};
use super::{PciAddress, PciError, SharedPciFunction};
use crate::fill_ones;

pub use assign::{
    BarAssignment, PciWindow, PCI_IO_BASE, PCI_IO_SIZE, PCI_MMIO32_BASE, PCI_MMIO32_SIZE,
    PCI_MMIO_MIN_ALIGN,
};
pub use config_io::{
    PciConfigAddressPort, PciConfigDataPort, PCI_CONFIG_ADDRESS_ACCESS_SIZE,
    PCI_CONFIG_ADDRESS_BUS_SHIFT, PCI_CONFIG_ADDRESS_DEVICE_SHIFT, PCI_CONFIG_ADDRESS_ENABLE,
    PCI_CONFIG_ADDRESS_FUNCTION_SHIFT, PCI_CONFIG_ADDRESS_PORT, PCI_CONFIG_ADDRESS_REGISTER_MASK,
    PCI_CONFIG_ADDRESS_WRITABLE, PCI_CONFIG_DATA_PORT, PCI_CONFIG_DATA_SIZE,
};
pub use ecam::{
    PciEcam, PCI_ECAM_BASE, PCI_ECAM_BUS_SHIFT, PCI_ECAM_DEVICE_SHIFT, PCI_ECAM_FUNCTION_SHIFT,
    PCI_ECAM_REGISTER_MASK, PCI_ECAM_SIZE,
};
pub use host_bridge::{
    HostBridge, HOST_BRIDGE_CLASS_CODE, HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_VENDOR_ID,
};
pub use window::{BarTarget, PciBarWindow};

/// Bus-field masks (device 5 bits, function 3 bits, bus 8 bits).
const DEVICE_FIELD_MASK: u32 = 0x1f;
const FUNCTION_FIELD_MASK: u32 = 0x7;
const BUS_FIELD_MASK: u32 = 0xff;
/// Size of the dword a configuration access must stay inside.
const CONFIG_DWORD: usize = 4;

/// The PCI root shared by the configuration and BAR bus devices.
pub type SharedPciRoot = Arc<Mutex<PciRoot>>;

/// Receives configuration-write effects (BAR moves, decode changes) for mapping BARs
/// outside [`PciBarWindow`]. Called with the root locked: never call back into PCI.
pub trait PciConfigListener: Send + Sync {
    /// `effect` happened on the function at `address`.
    fn config_effect(&self, address: PciAddress, effect: ConfigWriteEffect);
}

/// One function on the bus with the BARs it decodes.
struct Slot {
    function: SharedPciFunction,
    /// The function's BARs as of its last configuration write.
    bars: Vec<BarRegion>,
}

/// Bus 0 of PCI segment 0: functions by device and function number, configuration access
/// routing and BAR decoding.
pub struct PciRoot {
    slots: BTreeMap<PciAddress, Slot>,
    listener: Option<Arc<dyn PciConfigListener>>,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

/// True for a configuration access that stays inside one dword of the 4 KiB space.
fn config_access_ok(offset: u16, len: usize) -> bool {
    (1..=CONFIG_DWORD).contains(&len)
        && usize::from(offset) % CONFIG_DWORD + len <= CONFIG_DWORD
        && usize::from(offset) + len <= PCI_CONFIG_SPACE_SIZE
}

impl PciRoot {
    /// A root bus with the [`HostBridge`] at 00:00.0.
    pub fn new() -> Self {
        let mut slots = BTreeMap::new();
        slots.insert(
            PciAddress::default(),
            Slot {
                function: Arc::new(Mutex::new(HostBridge::new())),
                bars: Vec::new(),
            },
        );
        PciRoot {
            slots,
            listener: None,
        }
    }

    /// Adds `function` at `address` (bus 0). A device with functions besides 0 reports the
    /// multi-function bit in function 0's header type automatically.
    pub fn add_function(
        &mut self,
        address: PciAddress,
        function: SharedPciFunction,
    ) -> Result<(), PciError> {
        if address.bus() != 0 {
            return Err(PciError::NoSuchBus(address.bus()));
        }
        if self.slots.contains_key(&address) {
            return Err(PciError::AddressInUse(address));
        }
        let bars = function
            .lock()
            .map_err(|_| PciError::FunctionUnavailable(address))?
            .bars();
        self.slots.insert(address, Slot { function, bars });
        Ok(())
    }

    /// The function at `address`.
    pub fn function(&self, address: PciAddress) -> Option<SharedPciFunction> {
        self.slots.get(&address).map(|s| s.function.clone())
    }

    /// The addresses of every function, in order.
    pub fn addresses(&self) -> Vec<PciAddress> {
        self.slots.keys().copied().collect()
    }

    /// The lowest device number on bus 0 with no function.
    pub fn free_device(&self) -> Option<u8> {
        (0..super::PCI_DEVICES_PER_BUS).find(|&d| !self.slots.keys().any(|a| a.device() == d))
    }

    /// Registers the listener that receives configuration-write effects.
    pub fn set_listener(&mut self, listener: Arc<dyn PciConfigListener>) {
        self.listener = Some(listener);
    }

    /// True when device `device` has a function other than 0.
    fn is_multifunction(&self, device: u8) -> bool {
        self.slots
            .keys()
            .any(|a| a.device() == device && a.function() != 0)
    }

    /// A configuration read of `data.len()` bytes at `offset` of `address` (all ones for
    /// a missing function or an access that leaves its dword).
    pub fn config_read(&mut self, address: PciAddress, offset: u16, data: &mut [u8]) {
        if !config_access_ok(offset, data.len()) {
            debug!(
                "pci: {}-byte config read at {address} {offset:#x} ignored",
                data.len()
            );
            fill_ones(data);
            return;
        }
        let Some(slot) = self.slots.get(&address) else {
            fill_ones(data);
            return;
        };
        match slot.function.lock() {
            Ok(mut f) => f.config_read(offset, data),
            Err(_) => {
                fill_ones(data);
                return;
            }
        }
        if address.function() == 0 && self.is_multifunction(address.device()) {
            let lane = usize::from(PCI_HEADER_TYPE)
                .checked_sub(usize::from(offset))
                .and_then(|i| data.get_mut(i));
            if let Some(byte) = lane {
                *byte |= PCI_HEADER_TYPE_MULTIFUNCTION;
            }
        }
    }

    /// A configuration write of `data` at `offset` of `address`. Returns the effects (also
    /// sent to the listener); missing functions and bad accesses are ignored.
    pub fn config_write(
        &mut self,
        address: PciAddress,
        offset: u16,
        data: &[u8],
    ) -> Vec<ConfigWriteEffect> {
        if !config_access_ok(offset, data.len()) {
            debug!(
                "pci: {}-byte config write at {address} {offset:#x} ignored",
                data.len()
            );
            return Vec::new();
        }
        let Some(slot) = self.slots.get_mut(&address) else {
            return Vec::new();
        };
        let effects = match slot.function.lock() {
            Ok(mut f) => {
                let effects = f.config_write(offset, data);
                slot.bars = f.bars();
                effects
            }
            Err(_) => return Vec::new(),
        };
        if let Some(listener) = &self.listener {
            for &effect in &effects {
                listener.config_effect(address, effect);
            }
        }
        effects
    }
}
