//! pvpanic: the guest's way of telling the VMM it panicked (QEMU's device, driven by Linux's
//! `drivers/misc/pvpanic/`).
//!
//! One 8-bit register. Reading it returns the events the device supports ([`PVPANIC_PANICKED`]
//! and [`PVPANIC_CRASH_LOADED`]; the driver only sends events it finds there). Writing an event:
//! - [`PVPANIC_PANICKED`]: the guest panicked and will not recover by itself: the VMM ends the
//!   VM ([`ExitRequest::Panic`]);
//! - [`PVPANIC_CRASH_LOADED`]: the guest panicked but has a crash kernel (kdump) loaded and is
//!   about to boot it: the VMM logs it and lets the guest continue.
//!
//! Two front ends share [`PvPanic`]: the ISA device at I/O port [`PVPANIC_ISA_PORT`]
//! ([`PvPanicIsa`], described in the DSDT as `QEMU0001`, which Linux's `pvpanic-mmio` driver
//! binds through ACPI: its first resource, I/O or memory, is the register) and the PCI
//! function 1b36:0011 with the register in BAR 0 ([`crate::pci::pvpanic::PvPanicPci`], bound
//! by Linux's `pvpanic-pci`).

use std::sync::Arc;

use log::{debug, warn};

use crate::{byte_lane_offset, fill_ones, BusDevice, ExitRequest, VmExitHandler};

/// I/O port of the ISA pvpanic device (QEMU's default `ioport`).
pub const PVPANIC_ISA_PORT: u64 = 0x505;
/// Number of I/O ports the ISA device decodes.
pub const PVPANIC_ISA_SIZE: u64 = 1;
/// Event: the guest panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event: the guest panicked and is about to run its crash kernel.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// The events this device supports: what its register reads as.
pub const PVPANIC_CAPABILITIES: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

/// The pvpanic register, shared by the ISA and PCI front ends.
pub struct PvPanic {
    handler: Arc<dyn VmExitHandler>,
    /// Where it sits, for log lines ("ISA port 0x505", "PCI 00:03.0").
    name: String,
}

impl PvPanic {
    /// Creates the register; a PANICKED event goes to `handler`. `name` says where the device
    /// sits, for log lines.
    pub fn new(handler: Arc<dyn VmExitHandler>, name: impl Into<String>) -> Self {
        PvPanic {
            handler,
            name: name.into(),
        }
    }

    /// What the register reads as: the supported events.
    pub fn read(&self) -> u8 {
        PVPANIC_CAPABILITIES
    }

    /// The guest wrote `value`: acts on the events it holds.
    pub fn write(&self, value: u8) {
        if value & PVPANIC_PANICKED != 0 {
            self.handler.request_exit(ExitRequest::Panic);
        } else if value & PVPANIC_CRASH_LOADED != 0 {
            warn!(
                "pvpanic ({}): the guest panicked and is starting its crash kernel; it keeps running",
                self.name
            );
        }
        let unsupported = value & !PVPANIC_CAPABILITIES;
        if unsupported != 0 {
            debug!(
                "pvpanic ({}): unsupported event bits {unsupported:#x} ignored",
                self.name
            );
        }
    }

    /// A guest read of `data.len()` bytes at `offset` of the register's window: the byte lane
    /// at offset 0 reads the register, every other byte all ones.
    pub fn read_window(&self, offset: u64, data: &mut [u8]) {
        fill_ones(data);
        for (lane, byte) in data.iter_mut().enumerate() {
            if byte_lane_offset(offset, lane) == Some(0) {
                *byte = self.read();
            }
        }
    }

    /// A guest write at `offset` of a register window: only the byte lane at offset 0 (the
    /// register) acts.
    pub fn write_window(&self, offset: u64, data: &[u8]) {
        let mut hit = false;
        for (lane, &value) in data.iter().enumerate() {
            if byte_lane_offset(offset, lane) == Some(0) {
                self.write(value);
                hit = true;
            }
        }
        if !hit {
            debug!(
                "pvpanic ({}): {}-byte write at offset {offset:#x} ignored",
                self.name,
                data.len()
            );
        }
    }
}

/// The ISA pvpanic device at [`PVPANIC_ISA_PORT`] (one port).
pub struct PvPanicIsa(PvPanic);

impl PvPanicIsa {
    /// Creates the device; a PANICKED event goes to `handler`.
    pub fn new(handler: Arc<dyn VmExitHandler>) -> Self {
        PvPanicIsa(PvPanic::new(
            handler,
            format!("ISA port {PVPANIC_ISA_PORT:#x}"),
        ))
    }
}

impl BusDevice for PvPanicIsa {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read_window(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write_window(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::RecordingExitHandler;

    #[test]
    fn reads_the_capabilities() {
        let mut dev = PvPanicIsa::new(RecordingExitHandler::new());
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b, [PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]);
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [PVPANIC_CAPABILITIES, 0xff]);
        dev.read(1, &mut b);
        assert_eq!(b, [0xff]);
        dev.read(u64::MAX, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        dev.read(0, &mut []);
    }

    #[test]
    fn panicked_requests_the_panic_exit() {
        let handler = RecordingExitHandler::new();
        let mut dev = PvPanicIsa::new(handler.clone());
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(handler.requests(), vec![ExitRequest::Panic]);
        // Both bits: the panic wins.
        dev.write(0, &[PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]);
        assert_eq!(handler.requests().len(), 2);
    }

    #[test]
    fn crash_loaded_and_unknown_events_keep_the_vm_running() {
        let handler = RecordingExitHandler::new();
        let mut dev = PvPanicIsa::new(handler.clone());
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        dev.write(0, &[0x04]);
        dev.write(0, &[0x00]);
        dev.write(1, &[PVPANIC_PANICKED]);
        dev.write(u64::MAX, &[PVPANIC_PANICKED, PVPANIC_PANICKED]);
        dev.write(0, &[]);
        assert!(handler.requests().is_empty());
        // A wide write reaches the register with its low byte.
        dev.write(0, &[PVPANIC_PANICKED, 0]);
        assert_eq!(handler.requests(), vec![ExitRequest::Panic]);
    }
}
