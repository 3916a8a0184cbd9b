//! Configuration mechanism #1: the CONFIG_ADDRESS and CONFIG_DATA I/O ports, which reach
//! the first 256 bytes of each function through the [`PciRoot`].
//!
//! [`PciRoot`]: super::PciRoot
//!
//! # Configuration mechanism #1 (ports 0xcf8 and 0xcfc)
//!
//! CONFIG_ADDRESS at 0xcf8 answers 4-byte accesses only (narrower ones belong to other
//! devices: 0xcf9 is the reset control register); it keeps the enable bit 31, bus 23:16,
//! device 15:11, function 10:8 and register 7:2 (reserved bits read 0). CONFIG_DATA at
//! 0xcfc..0xcff reaches the selected dword: a 1-, 2- or 4-byte access at port `0xcfc + k`
//! touches byte `k` of it, and must not cross the dword. With the enable bit clear, a
//! missing function or bus, or a bad access, reads are all ones and writes are dropped.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use log::debug;

use super::{SharedPciRoot, BUS_FIELD_MASK, DEVICE_FIELD_MASK, FUNCTION_FIELD_MASK};
use crate::pci::PciAddress;
use crate::{fill_ones, BusDevice};

/// I/O port of CONFIG_ADDRESS.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// I/O port of CONFIG_DATA.
pub const PCI_CONFIG_DATA_PORT: u16 = 0xcfc;
/// Number of CONFIG_DATA ports.
pub const PCI_CONFIG_DATA_SIZE: u64 = 4;
/// CONFIG_ADDRESS: configuration access enable.
pub const PCI_CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS: shift of the bus number.
pub const PCI_CONFIG_ADDRESS_BUS_SHIFT: u32 = 16;
/// CONFIG_ADDRESS: shift of the device number.
pub const PCI_CONFIG_ADDRESS_DEVICE_SHIFT: u32 = 11;
/// CONFIG_ADDRESS: shift of the function number.
pub const PCI_CONFIG_ADDRESS_FUNCTION_SHIFT: u32 = 8;
/// CONFIG_ADDRESS: the dword-aligned register number (bits 7:2).
pub const PCI_CONFIG_ADDRESS_REGISTER_MASK: u32 = 0xfc;
/// CONFIG_ADDRESS: the bits that hold state (reserved bits 30:24 and 1:0 read 0).
pub const PCI_CONFIG_ADDRESS_WRITABLE: u32 = 0x80ff_fffc;
/// Size of the only access CONFIG_ADDRESS answers.
pub const PCI_CONFIG_ADDRESS_ACCESS_SIZE: usize = 4;

/// CONFIG_ADDRESS (port 0xcf8). Register it at 0xcf8 with length 1 (0xcf9 is the reset
/// control register); a 4-byte access at 0xcf8 arrives as offset 0.
pub struct PciConfigAddressPort {
    latch: Arc<AtomicU32>,
}

impl Default for PciConfigAddressPort {
    fn default() -> Self {
        Self::new()
    }
}

impl PciConfigAddressPort {
    /// A CONFIG_ADDRESS register holding 0.
    pub fn new() -> Self {
        PciConfigAddressPort {
            latch: Arc::new(AtomicU32::new(0)),
        }
    }

    /// The current CONFIG_ADDRESS value.
    pub fn value(&self) -> u32 {
        self.latch.load(Ordering::SeqCst)
    }
}

impl BusDevice for PciConfigAddressPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == PCI_CONFIG_ADDRESS_ACCESS_SIZE {
            data.copy_from_slice(&self.value().to_le_bytes());
        } else {
            fill_ones(data);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match <[u8; PCI_CONFIG_ADDRESS_ACCESS_SIZE]>::try_from(data) {
            Ok(bytes) if offset == 0 => {
                let value = u32::from_le_bytes(bytes) & PCI_CONFIG_ADDRESS_WRITABLE;
                self.latch.store(value, Ordering::SeqCst);
            }
            _ => debug!(
                "pci: {}-byte write at CONFIG_ADDRESS+{offset:#x} ignored",
                data.len()
            ),
        }
    }
}

/// CONFIG_DATA (ports 0xcfc..0xcff): register it at 0xcfc with length 4.
pub struct PciConfigDataPort {
    latch: Arc<AtomicU32>,
    root: SharedPciRoot,
}

impl PciConfigDataPort {
    /// The data port that accesses what `address` selects on `root`.
    pub fn new(root: SharedPciRoot, address: &PciConfigAddressPort) -> Self {
        PciConfigDataPort {
            latch: address.latch.clone(),
            root,
        }
    }

    /// The function and register offset an access at data port `offset` reaches, when
    /// CONFIG_ADDRESS is enabled.
    fn target(&self, offset: u64) -> Option<(PciAddress, u16)> {
        let latch = self.latch.load(Ordering::SeqCst);
        if latch & PCI_CONFIG_ADDRESS_ENABLE == 0 || offset >= PCI_CONFIG_DATA_SIZE {
            return None;
        }
        let address = PciAddress::new(
            ((latch >> PCI_CONFIG_ADDRESS_BUS_SHIFT) & BUS_FIELD_MASK) as u8,
            ((latch >> PCI_CONFIG_ADDRESS_DEVICE_SHIFT) & DEVICE_FIELD_MASK) as u8,
            ((latch >> PCI_CONFIG_ADDRESS_FUNCTION_SHIFT) & FUNCTION_FIELD_MASK) as u8,
        )
        .ok()?;
        // Register (< 0x100) plus the port offset (< 4) fits u16.
        let register = (latch & PCI_CONFIG_ADDRESS_REGISTER_MASK) as u16 + offset as u16;
        Some((address, register))
    }
}

impl BusDevice for PciConfigDataPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (self.target(offset), self.root.lock()) {
            (Some((address, register)), Ok(mut root)) => root.config_read(address, register, data),
            _ => fill_ones(data),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some((address, register)), Ok(mut root)) = (self.target(offset), self.root.lock()) {
            root.config_write(address, register, data);
        }
    }
}
