//! ACPI fixed-hardware PM1 registers (ACPI 6.3 §4.8.3.1-2) at QEMU q35's (ICH9's) ports:
//! the PM1a event block (PM1_STS at +0, PM1_EN at +2) and the PM1a control block (PM1_CNT
//! at +4), each register 16 bits wide.
//!
//! What the model does:
//! - PM1_STS reads 0: no fixed event (timer, global lock, buttons, RTC, wake) is ever raised,
//!   so there is nothing to clear; writes are ignored.
//! - PM1_EN reads 0 and keeps nothing: the platform has no fixed event to enable, and an OS
//!   that probes GBL_EN finds no global-lock hardware (no firmware ever holds the lock).
//! - PM1_CNT reads SCI_EN (bit 0) set, always: there is no SMI handshake (the FADT's
//!   SMI_CMD is 0), the platform is always in ACPI mode. SLP_TYP (bits 12:10) keeps what was
//!   written, so read-modify-write works; SLP_EN (bit 13) is write-only and, with SLP_TYP =
//!   [`ACPI_S5_SLP_TYP`], powers the VM off. Other sleep types are ignored (the DSDT defines
//!   only `\_S5`).
//!
//! Accesses of any width reach consecutive bytes; bytes past the block read all ones.

use std::sync::Arc;

use log::debug;

use crate::{byte_lane_offset, fill_ones, BusDevice, ExitRequest, VmExitHandler};

/// First I/O port of the block (q35's PMBASE).
pub const ACPI_PM_PORT: u64 = 0x600;
/// Number of I/O ports: the 4-byte event block and the 2-byte control block.
pub const ACPI_PM_SIZE: u64 = 6;
/// Offset of PM1_STS (PM1a event block).
pub const PM1_STS_OFFSET: u64 = 0;
/// Offset of PM1_EN (second half of the PM1a event block).
pub const PM1_EN_OFFSET: u64 = 2;
/// Offset of PM1_CNT (PM1a control block).
pub const PM1_CNT_OFFSET: u64 = 4;
/// PM1_CNT: SCI_EN (bit 0), the SCI rather than an SMI signals ACPI events.
pub const PM1_CNT_SCI_EN: u16 = 1 << 0;
/// PM1_CNT: shift of SLP_TYP (bits 12:10).
pub const PM1_CNT_SLP_TYP_SHIFT: u32 = 10;
/// PM1_CNT: mask (after shifting) of SLP_TYP.
pub const PM1_CNT_SLP_TYP_MASK: u16 = 0x7;
/// PM1_CNT: SLP_EN (bit 13), write-only; starts the transition to SLP_TYP.
pub const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// The SLP_TYP value of S5 (soft off); the DSDT's `\_S5` package must give this value.
pub const ACPI_S5_SLP_TYP: u16 = 5;

/// Bits per byte lane.
const BYTE_BITS: u64 = 8;

/// The PM1a event and control blocks: writing SLP_EN with SLP_TYP = S5 to PM1_CNT powers the
/// VM off.
pub struct AcpiPm1 {
    handler: Arc<dyn VmExitHandler>,
    /// PM1_CNT's SLP_TYP field, in place (bits 12:10).
    slp_typ: u16,
}

impl AcpiPm1 {
    /// Creates the block; power-off requests go to `handler`.
    pub fn new(handler: Arc<dyn VmExitHandler>) -> Self {
        AcpiPm1 {
            handler,
            slp_typ: 0,
        }
    }

    /// PM1_CNT as it reads.
    pub fn control(&self) -> u16 {
        PM1_CNT_SCI_EN | self.slp_typ
    }

    /// The register value whose byte is at `offset` (within the block), and that byte's
    /// position in it.
    fn register_at(&self, offset: u64) -> (u16, u64) {
        let base = offset & !1;
        let value = match base {
            PM1_CNT_OFFSET => self.control(),
            // PM1_STS and PM1_EN: nothing is ever raised or enabled.
            _ => 0,
        };
        (value, offset - base)
    }

    /// A write of `byte` to the high byte of PM1_CNT (SLP_TYP and SLP_EN live there; the low
    /// byte holds SCI_EN, read-only here, and the write-only BM_RLD and GBL_RLS, which
    /// have nothing to act on).
    fn write_control_high(&mut self, byte: u8) {
        let value = u16::from(byte) << BYTE_BITS;
        let slp_typ_bits = PM1_CNT_SLP_TYP_MASK << PM1_CNT_SLP_TYP_SHIFT;
        self.slp_typ = value & slp_typ_bits;
        if value & PM1_CNT_SLP_EN == 0 {
            return;
        }
        let slp_typ = self.slp_typ >> PM1_CNT_SLP_TYP_SHIFT;
        if slp_typ == ACPI_S5_SLP_TYP {
            self.handler.request_exit(ExitRequest::PowerOff);
        } else {
            debug!("acpi: sleep to SLP_TYP {slp_typ} not supported, ignored");
        }
    }
}

impl BusDevice for AcpiPm1 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        fill_ones(data);
        for (lane, byte) in data.iter_mut().enumerate() {
            if let Some(port) = byte_lane_offset(offset, lane).filter(|p| *p < ACPI_PM_SIZE) {
                let (value, index) = self.register_at(port);
                *byte = (value >> (index * BYTE_BITS)) as u8;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (lane, &byte) in data.iter().enumerate() {
            match byte_lane_offset(offset, lane) {
                Some(port) if port == PM1_CNT_OFFSET + 1 => self.write_control_high(byte),
                // PM1_STS (write-1-to-clear, never set), PM1_EN (nothing to enable), the
                // low byte of PM1_CNT.
                Some(port) if port < ACPI_PM_SIZE => {}
                _ => debug!("acpi: write past the PM1 registers at {offset:#x} ignored"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::RecordingExitHandler;

    fn control(slp_typ: u16, enable: bool) -> [u8; 2] {
        let v = (slp_typ << PM1_CNT_SLP_TYP_SHIFT) | if enable { PM1_CNT_SLP_EN } else { 0 };
        v.to_le_bytes()
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let handler = RecordingExitHandler::new();
        let mut dev = AcpiPm1::new(handler.clone());
        // ACPICA's legacy sleep: SLP_TYP first, then SLP_TYP | SLP_EN (0x3401 with SCI_EN).
        dev.write(PM1_CNT_OFFSET, &control(5, false));
        assert!(handler.requests().is_empty());
        assert_eq!(dev.control(), 0x1401);
        dev.write(PM1_CNT_OFFSET, &(0x3401u16).to_le_bytes());
        assert_eq!(handler.requests(), vec![ExitRequest::PowerOff]);
    }

    #[test]
    fn byte_write_of_the_high_byte_powers_off() {
        let handler = RecordingExitHandler::new();
        let mut dev = AcpiPm1::new(handler.clone());
        dev.write(PM1_CNT_OFFSET + 1, &[control(5, true)[1]]);
        assert_eq!(handler.requests(), vec![ExitRequest::PowerOff]);
        // A dword write from PM1_EN reaches PM1_CNT in its upper half.
        let handler = RecordingExitHandler::new();
        let mut dev = AcpiPm1::new(handler.clone());
        let c = control(5, true);
        dev.write(PM1_EN_OFFSET, &[0xff, 0xff, c[0], c[1]]);
        assert_eq!(handler.requests(), vec![ExitRequest::PowerOff]);
    }

    #[test]
    fn other_sleep_types_and_registers_do_nothing() {
        let handler = RecordingExitHandler::new();
        let mut dev = AcpiPm1::new(handler.clone());
        for typ in [0, 1, 2, 3, 4, 6, 7] {
            dev.write(PM1_CNT_OFFSET, &control(typ, true));
        }
        // S5 bits written to the status and enable registers, past the block, or nowhere.
        for offset in [PM1_STS_OFFSET, PM1_EN_OFFSET, ACPI_PM_SIZE, u64::MAX] {
            dev.write(offset, &control(5, true));
        }
        dev.write(PM1_CNT_OFFSET, &[]);
        assert!(handler.requests().is_empty());
    }

    #[test]
    fn reads() {
        let handler = RecordingExitHandler::new();
        let mut dev = AcpiPm1::new(handler);
        // Status and enable read 0 whatever was written; SCI_EN is always set.
        dev.write(PM1_STS_OFFSET, &[0xff; 4]);
        let mut data = [0x55u8; 8];
        dev.read(0, &mut data);
        assert_eq!(data, [0, 0, 0, 0, 0x01, 0x00, 0xff, 0xff]);
        // SLP_TYP reads back; SLP_EN does not.
        dev.write(PM1_CNT_OFFSET, &control(3, false));
        let mut word = [0u8; 2];
        dev.read(PM1_CNT_OFFSET, &mut word);
        assert_eq!(u16::from_le_bytes(word), 0x0c01);
        let mut byte = [0u8; 1];
        dev.read(PM1_CNT_OFFSET + 1, &mut byte);
        assert_eq!(byte, [0x0c]);
        dev.read(u64::MAX, &mut byte);
        assert_eq!(byte, [0xff]);
        dev.read(0, &mut []);
    }
}
