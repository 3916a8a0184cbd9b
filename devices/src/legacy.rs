//! Legacy platform controls: the debug-exit port, the ACPI sleep registers and the reset
//! control register. Each one turns a guest write into an [`ExitRequest`] for the VMM.
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

/// I/O port of the FADT hardware-reduced sleep control register (sleep status follows).
pub const ACPI_PM_PORT: u64 = 0x600;
/// Number of I/O ports of the ACPI sleep registers.
pub const ACPI_PM_SIZE: u64 = 2;
/// Offset of the sleep control register (FADT `SLEEP_CONTROL_REG`).
pub const ACPI_SLEEP_CONTROL_OFFSET: u64 = 0;
/// Offset of the sleep status register (FADT `SLEEP_STATUS_REG`).
pub const ACPI_SLEEP_STATUS_OFFSET: u64 = 1;
/// Sleep control: SLP_EN (bit 5), write-only; starts the transition to SLP_TYP.
pub const ACPI_SLP_EN: u8 = 1 << 5;
/// Sleep control: shift of SLP_TYP (bits 4:2).
pub const ACPI_SLP_TYP_SHIFT: u32 = 2;
/// Sleep control: mask (after shifting) of SLP_TYP.
pub const ACPI_SLP_TYP_MASK: u8 = 0x7;
/// The SLP_TYP value of S5 (soft off); the DSDT's `\_S5` package must give this value.
pub const ACPI_S5_SLP_TYP: u8 = 5;
/// Sleep status: WAK_STS (bit 7). This model never sleeps, so it is never set.
pub const ACPI_WAK_STS: u8 = 1 << 7;
/// What the sleep registers read as: SLP_EN is write-only, SLP_TYP is not kept, and
/// nothing in sleep status is ever set.
pub const ACPI_PM_READ_VALUE: u8 = 0;

/// The ACPI hardware-reduced sleep control and status registers: writing SLP_EN with
/// SLP_TYP = S5 powers the VM off; every other value is ignored.
pub struct AcpiPmControl {
    handler: Arc<dyn VmExitHandler>,
}

impl AcpiPmControl {
    /// Creates the device; power-off requests go to `handler`.
    pub fn new(handler: Arc<dyn VmExitHandler>) -> Self {
        AcpiPmControl { handler }
    }

    fn write_sleep_control(&self, value: u8) {
        let slp_typ = (value >> ACPI_SLP_TYP_SHIFT) & ACPI_SLP_TYP_MASK;
        if value & ACPI_SLP_EN != 0 && slp_typ == ACPI_S5_SLP_TYP {
            self.handler.request_exit(ExitRequest::PowerOff);
        } else if value & ACPI_SLP_EN != 0 {
            debug!("acpi: sleep to SLP_TYP {slp_typ} not supported, ignored");
        }
    }
}

impl BusDevice for AcpiPmControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        fill_ones(data);
        for (lane, byte) in data.iter_mut().enumerate() {
            if byte_lane_offset(offset, lane).is_some_and(|port| port < ACPI_PM_SIZE) {
                *byte = ACPI_PM_READ_VALUE;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (lane, &value) in data.iter().enumerate() {
            match byte_lane_offset(offset, lane) {
                Some(ACPI_SLEEP_CONTROL_OFFSET) => self.write_sleep_control(value),
                // WAK_STS is write-1-to-clear and never set: nothing to do.
                Some(ACPI_SLEEP_STATUS_OFFSET) => {}
                _ => debug!("acpi: write past the sleep registers at {offset:#x} ignored"),
            }
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

    fn sleep_value(slp_typ: u8, enable: bool) -> u8 {
        (slp_typ << ACPI_SLP_TYP_SHIFT) | if enable { ACPI_SLP_EN } else { 0 }
    }

    #[test]
    fn acpi_s5_with_slp_en_powers_off() {
        let handler = RecordingExitHandler::new();
        let mut dev = AcpiPmControl::new(handler.clone());
        // What Linux writes for S5 on a hardware-reduced platform: 0x34.
        assert_eq!(sleep_value(5, true), 0x34);
        dev.write(ACPI_SLEEP_CONTROL_OFFSET, &[0x34]);
        assert_eq!(handler.requests(), vec![ExitRequest::PowerOff]);
    }

    #[test]
    fn acpi_other_values_are_ignored() {
        let handler = RecordingExitHandler::new();
        let mut dev = AcpiPmControl::new(handler.clone());
        dev.write(ACPI_SLEEP_CONTROL_OFFSET, &[sleep_value(5, false)]);
        for typ in [0, 1, 2, 3, 4, 6, 7] {
            dev.write(ACPI_SLEEP_CONTROL_OFFSET, &[sleep_value(typ, true)]);
        }
        // S5 written to sleep status (e.g. WAK_STS clear) does nothing.
        dev.write(
            ACPI_SLEEP_STATUS_OFFSET,
            &[ACPI_WAK_STS | sleep_value(5, true)],
        );
        dev.write(2, &[sleep_value(5, true)]);
        dev.write(u64::MAX, &[sleep_value(5, true), 0]);
        assert!(handler.requests().is_empty());
    }

    #[test]
    fn acpi_wide_write_reaches_sleep_control_in_byte_0() {
        let handler = RecordingExitHandler::new();
        let mut dev = AcpiPmControl::new(handler.clone());
        dev.write(0, &[sleep_value(5, true), ACPI_WAK_STS]);
        assert_eq!(handler.requests(), vec![ExitRequest::PowerOff]);
    }

    #[test]
    fn acpi_registers_read_zero() {
        let handler = RecordingExitHandler::new();
        let mut dev = AcpiPmControl::new(handler);
        dev.write(ACPI_SLEEP_CONTROL_OFFSET, &[sleep_value(3, false)]);
        let mut data = [0x55u8; 4];
        dev.read(0, &mut data);
        assert_eq!(data, [0, 0, 0xff, 0xff]);
        let mut data = [0x55u8; 1];
        dev.read(ACPI_SLEEP_STATUS_OFFSET, &mut data);
        assert_eq!(data, [0]);
        dev.read(5, &mut data);
        assert_eq!(data, [0xff]);
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
