//! The enhanced configuration access mechanism: a memory-mapped window onto the
//! configuration space of every function (all 4 KiB of it) through the [`PciRoot`].
//!
//! [`PciRoot`]: super::PciRoot
//!
//! # ECAM
//!
//! 256 MiB of MMIO: offset = bus << 20 | device << 15 | function << 12 | register. Only
//! bus 0 exists; everything else reads all ones. Accesses are 1, 2 or 4 bytes within a
//! dword, like mechanism #1, but reach all 4 KiB of each function.

use super::{SharedPciRoot, BUS_FIELD_MASK, DEVICE_FIELD_MASK, FUNCTION_FIELD_MASK};
use crate::pci::PciAddress;
use crate::{fill_ones, BusDevice};

/// Default ECAM base (q35-like; the MCFG table must say the same).
pub const PCI_ECAM_BASE: u64 = 0xb000_0000;
/// ECAM size: 256 buses × 32 devices × 8 functions × 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// ECAM: shift of the bus number.
pub const PCI_ECAM_BUS_SHIFT: u32 = 20;
/// ECAM: shift of the device number.
pub const PCI_ECAM_DEVICE_SHIFT: u32 = 15;
/// ECAM: shift of the function number.
pub const PCI_ECAM_FUNCTION_SHIFT: u32 = 12;
/// ECAM: the register offset bits.
pub const PCI_ECAM_REGISTER_MASK: u64 = 0xfff;

/// The ECAM window: register it at the ECAM base with [`PCI_ECAM_SIZE`].
pub struct PciEcam {
    root: SharedPciRoot,
}

impl PciEcam {
    /// ECAM access to `root`.
    pub fn new(root: SharedPciRoot) -> Self {
        PciEcam { root }
    }

    /// The function and register an ECAM offset names.
    fn decode(offset: u64) -> Option<(PciAddress, u16)> {
        if offset >= PCI_ECAM_SIZE {
            return None;
        }
        let field = |shift: u32, mask: u32| ((offset >> shift) as u32 & mask) as u8;
        let address = PciAddress::new(
            field(PCI_ECAM_BUS_SHIFT, BUS_FIELD_MASK),
            field(PCI_ECAM_DEVICE_SHIFT, DEVICE_FIELD_MASK),
            field(PCI_ECAM_FUNCTION_SHIFT, FUNCTION_FIELD_MASK),
        )
        .ok()?;
        Some((address, (offset & PCI_ECAM_REGISTER_MASK) as u16))
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (Self::decode(offset), self.root.lock()) {
            (Some((address, register)), Ok(mut root)) => root.config_read(address, register, data),
            _ => fill_ones(data),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some((address, register)), Ok(mut root)) = (Self::decode(offset), self.root.lock())
        {
            root.config_write(address, register, data);
        }
    }
}
