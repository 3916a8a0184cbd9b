//! BAR decoding: [`PciRoot::find_bar`] finds the BAR an access falls in from the BARs'
//! current programming and decode bits, and [`PciBarWindow`] puts that on the VMM's MMIO or
//! PIO bus over a whole PCI window, so the buses never change when the guest moves a BAR.

use log::debug;

use super::{PciRoot, SharedPciRoot};
use crate::pci::config::BarSpace;
use crate::pci::{PciAddress, SharedPciFunction};
use crate::{fill_ones, BusDevice};

/// The BAR an access decodes to.
#[derive(Clone)]
pub struct BarTarget {
    /// The function owning the BAR.
    pub function: SharedPciFunction,
    /// Its address.
    pub address: PciAddress,
    /// BAR index.
    pub bar: u8,
    /// Offset of the access from the BAR's base.
    pub offset: u64,
}

impl PciRoot {
    /// The BAR that decodes `len` bytes at `addr` in `space`, if any.
    pub fn find_bar(&self, space: BarSpace, addr: u64, len: u64) -> Option<BarTarget> {
        self.slots.iter().find_map(|(address, slot)| {
            slot.bars
                .iter()
                .find(|b| b.contains(space, addr, len))
                .map(|b| BarTarget {
                    function: slot.function.clone(),
                    address: *address,
                    bar: b.index,
                    offset: addr - b.address,
                })
        })
    }
}

/// A window of the MMIO or PIO bus in which BARs are decoded from their current
/// programming: register it at `base` over the whole PCI window. Accesses no BAR decodes
/// read all ones. The root's lock is released before the function's is taken.
pub struct PciBarWindow {
    root: SharedPciRoot,
    space: BarSpace,
    base: u64,
}

impl PciBarWindow {
    /// A window of `space` registered at bus address `base`.
    pub fn new(root: SharedPciRoot, space: BarSpace, base: u64) -> Self {
        PciBarWindow { root, space, base }
    }

    fn target(&self, offset: u64, len: usize) -> Option<BarTarget> {
        let addr = self.base.checked_add(offset)?;
        let root = self.root.lock().ok()?;
        root.find_bar(self.space, addr, len as u64)
    }
}

impl BusDevice for PciBarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(target) = self.target(offset, data.len()) else {
            fill_ones(data);
            return;
        };
        match target.function.lock() {
            Ok(mut f) => f.bar_read(target.bar, target.offset, data),
            Err(_) => fill_ones(data),
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(target) = self.target(offset, data.len()) else {
            debug!(
                "pci: {}-byte write at window offset {offset:#x} decodes to no BAR",
                data.len()
            );
            return;
        };
        if let Ok(mut f) = target.function.lock() {
            f.bar_write(target.bar, target.offset, data);
        };
    }
}
