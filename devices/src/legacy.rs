//! Legacy platform controls: the debug-exit port and the reset control register. Each one
//! turns a guest write into an [`ExitRequest`] for the VMM. (The ACPI power-off registers
//! are in [`crate::acpi_pm`].)
//!
//! The registers are 8 bits wide: a wider access reaches consecutive registers one byte at
//! a time; bytes past a device's ports read all ones and ignore writes.

use std::sync::Arc;

use log::debug;

use crate::{byte_lane_offset, fill_ones, BusDevice, ExitRequest, VmExitHandler};

/// I/O port of the debug-exit device (QEMU `isa-debug-exit,iobase=0x501,iosize=2`).
pub const DEBUG_EXIT_PORT: u64 = 0x501;
/// Number of I/O ports the debug-exit device decodes.
pub const DEBUG_EXIT_SIZE: u64 = 2;
/// What a debug-exit port reads as (QEMU answers 0, which lets a guest tell it apart from
/// an empty port's all ones).
pub const DEBUG_EXIT_READ_VALUE: u8 = 0;

/// QEMU's `isa-debug-exit`: any write ends the VM with the low byte of the written value
/// as status (QEMU exits with `(value << 1) | 1` for the same write).
pub struct DebugExit {
    handler: Arc<dyn VmExitHandler>,
}

impl DebugExit {
    /// Creates the device; writes are reported to `handler`.
    pub fn new(handler: Arc<dyn VmExitHandler>) -> Self {
        DebugExit { handler }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        fill_ones(data);
        for (lane, byte) in data.iter_mut().enumerate() {
            if byte_lane_offset(offset, lane).is_some_and(|port| port < DEBUG_EXIT_SIZE) {
                *byte = DEBUG_EXIT_READ_VALUE;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match data.first() {
            Some(&status) if offset < DEBUG_EXIT_SIZE => {
                self.handler.request_exit(ExitRequest::DebugExit(status));
            }
            _ => debug!(
                "debug-exit: {}-byte write at offset {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

/// I/O port of the reset control register.
pub const RESET_CONTROL_PORT: u64 = 0xcf9;
/// Number of I/O ports of the reset control register.
pub const RESET_CONTROL_SIZE: u64 = 1;
/// Reset control: SYS_RST (bit 1), selects a system rather than a CPU-only reset.
pub const RESET_SYS_RST: u8 = 1 << 1;
/// Reset control: RST_CPU (bit 2), requests the reset.
pub const RESET_RST_CPU: u8 = 1 << 2;
/// Reset control: FULL_RST (bit 3), selects a full (power-cycle) reset.
pub const RESET_FULL_RST: u8 = 1 << 3;

/// The reset control register at 0xcf9: it keeps the last value written; a write with
/// RST_CPU set asks the VMM to reset (which irvmm treats as exit).
pub struct ResetControl {
    handler: Arc<dyn VmExitHandler>,
    value: u8,
}

impl ResetControl {
    /// Creates the device; reset requests go to `handler`.
    pub fn new(handler: Arc<dyn VmExitHandler>) -> Self {
        ResetControl { handler, value: 0 }
    }

    /// The last value the guest wrote.
    pub fn value(&self) -> u8 {
        self.value
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        fill_ones(data);
        for (lane, byte) in data.iter_mut().enumerate() {
            if byte_lane_offset(offset, lane).is_some_and(|port| port < RESET_CONTROL_SIZE) {
                *byte = self.value;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (lane, &value) in data.iter().enumerate() {
            if byte_lane_offset(offset, lane).is_some_and(|port| port < RESET_CONTROL_SIZE) {
                self.value = value;
                if value & RESET_RST_CPU != 0 {
                    self.handler.request_exit(ExitRequest::Reset);
                }
            } else {
                debug!("reset: write past the register at {offset:#x} ignored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::RecordingExitHandler;

    #[test]
    fn debug_exit_reports_the_written_byte() {
        let handler = RecordingExitHandler::new();
        let mut dev = DebugExit::new(handler.clone());
        dev.write(0, &[0]);
        dev.write(1, &[7]);
        // Wider writes use the low byte, as QEMU's exit status does.
        dev.write(0, &[0x2a, 0x01, 0x00, 0x00]);
        assert_eq!(
            handler.requests(),
            vec![
                ExitRequest::DebugExit(0),
                ExitRequest::DebugExit(7),
                ExitRequest::DebugExit(0x2a)
            ]
        );
    }

    #[test]
    fn debug_exit_reads_zero_like_qemu_and_ignores_odd_accesses() {
        let handler = RecordingExitHandler::new();
        let mut dev = DebugExit::new(handler.clone());
        let mut data = [0x55u8; 4];
        dev.read(0, &mut data);
        assert_eq!(data, [0, 0, 0xff, 0xff]);
        let mut data = [0x55u8; 1];
        dev.read(1, &mut data);
        assert_eq!(data, [0]);
        dev.read(2, &mut data);
        assert_eq!(data, [0xff]);
        dev.read(u64::MAX, &mut data);
        assert_eq!(data, [0xff]);
        dev.read(0, &mut []);
        dev.write(0, &[]);
        dev.write(2, &[1]);
        dev.write(u64::MAX, &[1]);
        assert!(handler.requests().is_empty());
    }

    #[test]
    fn reset_requires_rst_cpu() {
        let handler = RecordingExitHandler::new();
        let mut dev = ResetControl::new(handler.clone());
        // Linux's 0xcf9 sequence: SYS_RST alone, then SYS_RST | RST_CPU.
        dev.write(0, &[RESET_SYS_RST]);
        assert!(handler.requests().is_empty());
        assert_eq!(dev.value(), RESET_SYS_RST);
        dev.write(0, &[RESET_SYS_RST | RESET_RST_CPU]);
        assert_eq!(handler.requests(), vec![ExitRequest::Reset]);
        dev.write(0, &[RESET_FULL_RST | RESET_SYS_RST | RESET_RST_CPU]);
        assert_eq!(handler.requests().len(), 2);
    }

    #[test]
    fn reset_register_reads_back_last_value() {
        let handler = RecordingExitHandler::new();
        let mut dev = ResetControl::new(handler.clone());
        let mut data = [0x55u8];
        dev.read(0, &mut data);
        assert_eq!(data, [0]);
        dev.write(0, &[RESET_FULL_RST | RESET_SYS_RST]);
        dev.read(0, &mut data);
        assert_eq!(data, [RESET_FULL_RST | RESET_SYS_RST]);
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [RESET_FULL_RST | RESET_SYS_RST, 0xff]);
        assert!(handler.requests().is_empty());
    }

    #[test]
    fn reset_ignores_bytes_past_the_register() {
        let handler = RecordingExitHandler::new();
        let mut dev = ResetControl::new(handler.clone());
        dev.write(1, &[RESET_RST_CPU]);
        dev.write(u64::MAX, &[RESET_RST_CPU, RESET_RST_CPU]);
        dev.write(0, &[]);
        // A wide write reaches the register with its low byte only.
        dev.write(0, &[RESET_SYS_RST, RESET_RST_CPU]);
        assert!(handler.requests().is_empty());
        assert_eq!(dev.value(), RESET_SYS_RST);
        let mut data = [0u8; 1];
        dev.read(1, &mut data);
        assert_eq!(data, [0xff]);
        dev.read(0, &mut []);
    }
}
