//! QEMU's PCI pvpanic function (1b36:0011, Linux's `pvpanic-pci` driver): the [`PvPanic`]
//! register at offset 0 of a small 32-bit memory BAR 0.
//!
//! | | |
//! |---|---|
//! | vendor:device | 1b36:0011 (Red Hat, QEMU's PCI_DEVICE_ID_REDHAT_PVPANIC) |
//! | revision, class | 1, 0x088000 (system peripheral, other) |
//! | subsystem | 1af4:1100 |
//! | BAR 0 | 16 bytes, 32-bit memory: the register at 0x0 |
//! | interrupts | none |

use std::sync::Arc;

use crate::pci::config::{BarKind, BarRegion, ConfigWriteEffect, PciConfigSpace, PciHeader};
use crate::pci::{PciError, PciFunction};
use crate::pvpanic::PvPanic;
use crate::{fill_ones, VmExitHandler};

/// Red Hat's PCI vendor ID (QEMU's own devices).
pub const PVPANIC_PCI_VENDOR_ID: u16 = 0x1b36;
/// The pvpanic function's device ID.
pub const PVPANIC_PCI_DEVICE_ID: u16 = 0x0011;
/// Revision ID.
pub const PVPANIC_PCI_REVISION: u8 = 1;
/// Class code: system peripheral (0x08), other (0x80).
pub const PVPANIC_PCI_CLASS_CODE: u32 = 0x08_8000;
/// Subsystem vendor ID (Red Hat / Qumranet, as QEMU's devices carry).
pub const PVPANIC_PCI_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem ID.
pub const PVPANIC_PCI_SUBSYSTEM_ID: u16 = 0x1100;
/// The register BAR.
pub const PVPANIC_PCI_BAR: u8 = 0;
/// Its size: the smallest memory BAR.
pub const PVPANIC_PCI_BAR_SIZE: u64 = 16;

/// The PCI pvpanic function.
pub struct PvPanicPci {
    config: PciConfigSpace,
    panic: PvPanic,
}

impl PvPanicPci {
    /// Creates the function; a PANICKED event goes to `handler`. `name` says where it sits,
    /// for log lines.
    pub fn new(handler: Arc<dyn VmExitHandler>, name: impl Into<String>) -> Result<Self, PciError> {
        let mut config = PciConfigSpace::new(&PciHeader {
            vendor_id: PVPANIC_PCI_VENDOR_ID,
            device_id: PVPANIC_PCI_DEVICE_ID,
            revision_id: PVPANIC_PCI_REVISION,
            class_code: PVPANIC_PCI_CLASS_CODE,
            subsystem_vendor_id: PVPANIC_PCI_SUBSYSTEM_VENDOR_ID,
            subsystem_id: PVPANIC_PCI_SUBSYSTEM_ID,
            interrupt_pin: 0,
        });
        config.add_bar(
            PVPANIC_PCI_BAR,
            BarKind::Memory32,
            PVPANIC_PCI_BAR_SIZE,
            false,
        )?;
        Ok(PvPanicPci {
            config,
            panic: PvPanic::new(handler, name),
        })
    }
}

impl PciFunction for PvPanicPci {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<ConfigWriteEffect> {
        self.config.write(offset, data)
    }

    fn bars(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == PVPANIC_PCI_BAR {
            self.panic.read_window(offset, data);
        } else {
            fill_ones(data);
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == PVPANIC_PCI_BAR {
            self.panic.write_window(offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::{PCI_BAR0, PCI_CLASS_CODE, PCI_VENDOR_ID};
    use crate::pvpanic::{PVPANIC_CAPABILITIES, PVPANIC_CRASH_LOADED, PVPANIC_PANICKED};
    use crate::test_utils::RecordingExitHandler;
    use crate::ExitRequest;

    fn read32(dev: &mut PvPanicPci, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        dev.config_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_and_bar_sizing() {
        let mut dev = PvPanicPci::new(RecordingExitHandler::new(), "test").unwrap();
        assert_eq!(read32(&mut dev, PCI_VENDOR_ID), 0x0011_1b36);
        assert_eq!(
            read32(&mut dev, PCI_CLASS_CODE - 1) >> 8,
            PVPANIC_PCI_CLASS_CODE
        );
        dev.config_write(PCI_BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(
            read32(&mut dev, PCI_BAR0),
            !(PVPANIC_PCI_BAR_SIZE as u32 - 1)
        );
        assert_eq!(dev.bars().len(), 1);
    }

    #[test]
    fn register_in_bar0() {
        let handler = RecordingExitHandler::new();
        let mut dev = PvPanicPci::new(handler.clone(), "test").unwrap();
        let mut b = [0u8];
        dev.bar_read(0, 0, &mut b);
        assert_eq!(b, [PVPANIC_CAPABILITIES]);
        dev.bar_read(0, 8, &mut b);
        assert_eq!(b, [0xff]);
        dev.bar_read(1, 0, &mut b);
        assert_eq!(b, [0xff]);
        dev.bar_write(0, 0, &[PVPANIC_CRASH_LOADED]);
        dev.bar_write(1, 0, &[PVPANIC_PANICKED]);
        dev.bar_write(0, 4, &[PVPANIC_PANICKED]);
        assert!(handler.requests().is_empty());
        dev.bar_write(0, 0, &[PVPANIC_PANICKED]);
        assert_eq!(handler.requests(), vec![ExitRequest::Panic]);
    }
}
