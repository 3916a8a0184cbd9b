//! The I/O APIC: indirect register access through IOREGSEL/IOWIN and redirection-table
//! entries (RTEs) in compatibility format, with the extended destination ID.

use crate::acpi::madt::{Entry, Madt};
use crate::phys;
use crate::report::Text;
use crate::text;

/// IOREGSEL offset (register index).
const IOREGSEL: u64 = 0x00;
/// IOWIN offset (the selected register's value).
const IOWIN: u64 = 0x10;
/// Index of the ID register (bits 27:24: the I/O APIC ID).
pub const REG_ID: u32 = 0x00;
/// Index of the version register (bits 23:16: highest redirection entry).
pub const REG_VERSION: u32 = 0x01;
/// Index of the low dword of RTE 0; RTE n is at 0x10 + 2n (low) and 0x11 + 2n (high).
const REG_REDTBL_BASE: u32 = 0x10;
/// Shift of the highest-entry field in the version register.
const VERSION_MAX_REDIR_SHIFT: u32 = 16;
/// MMIO window size mapped by the probe's identity map.
const MMIO_SIZE: u64 = 0x20;

/// RTE bits 10:8 = 000: fixed delivery.
pub const RTE_DELIVERY_FIXED: u64 = 0b000 << 8;
/// RTE bit 11 clear: physical destination mode.
pub const RTE_DEST_PHYSICAL: u64 = 0;
/// RTE bit 13: active low.
pub const RTE_ACTIVE_LOW: u64 = 1 << 13;
/// RTE bit 15: level triggered.
pub const RTE_LEVEL: u64 = 1 << 15;
/// RTE bit 16: masked.
pub const RTE_MASKED: u64 = 1 << 16;
/// Read-only RTE bits: delivery status (12) and remote IRR (14).
pub const RTE_READ_ONLY: u64 = (1 << 12) | (1 << 14);
/// Destination APIC ID bits 7:0 go to RTE bits 63:56.
const RTE_DEST_SHIFT: u32 = 56;
/// Destination APIC ID bits 14:8 (the extended destination ID) go to RTE bits 55:49.
const RTE_EXT_DEST_SHIFT: u32 = 49;
/// Width of the extended destination ID.
const EXT_DEST_BITS: u32 = 7;
/// Highest APIC ID an RTE can name with the extended destination ID (15 bits).
pub const MAX_EXT_DEST_ID: u32 = (1 << (8 + EXT_DEST_BITS)) - 1;

/// ISA IRQs default to edge-triggered, active high (MPS INTI flags 0).
const INTI_POLARITY_MASK: u16 = 0b11;
const INTI_POLARITY_LOW: u16 = 0b11;
const INTI_TRIGGER_MASK: u16 = 0b11 << 2;
const INTI_TRIGGER_LEVEL: u16 = 0b11 << 2;

/// One I/O APIC from the MADT.
#[derive(Clone, Copy, Debug)]
pub struct IoApic {
    /// I/O APIC ID from the MADT (the DMAR names it by this ID).
    pub id: u8,
    /// MMIO base.
    pub base: u64,
    /// Number of pins.
    pub pins: u32,
}

/// Where an ISA IRQ arrives: the GSI and its polarity/trigger RTE bits.
#[derive(Clone, Copy, Debug)]
pub struct IsaRoute {
    /// Global system interrupt.
    pub gsi: u32,
    /// [`RTE_ACTIVE_LOW`] and/or [`RTE_LEVEL`] as the MADT's override says (0 = ISA default).
    pub rte_flags: u64,
}

/// The route of ISA `irq`: its interrupt source override if the MADT has one, else GSI = IRQ,
/// edge, active high.
pub fn isa_route(madt: &Madt<'_>, irq: u8) -> Result<IsaRoute, Text> {
    for entry in madt.entries() {
        if let Entry::SourceOverride { source, gsi, flags } = entry? {
            if source == irq {
                let mut rte_flags = 0;
                if flags & INTI_POLARITY_MASK == INTI_POLARITY_LOW {
                    rte_flags |= RTE_ACTIVE_LOW;
                }
                if flags & INTI_TRIGGER_MASK == INTI_TRIGGER_LEVEL {
                    rte_flags |= RTE_LEVEL;
                }
                return Ok(IsaRoute { gsi, rte_flags });
            }
        }
    }
    Ok(IsaRoute {
        gsi: u32::from(irq),
        rte_flags: 0,
    })
}

impl IoApic {
    /// The I/O APIC whose pins include `gsi`.
    pub fn for_gsi(madt: &Madt<'_>, gsi: u32) -> Result<(IoApic, u32), Text> {
        for entry in madt.entries() {
            if let Entry::IoApic { id, addr, gsi_base } = entry? {
                let base = u64::from(addr);
                if !phys::is_mapped(base, MMIO_SIZE) {
                    return Err(text!("IOAPIC at 0x{:x} is not mapped", base));
                }
                let mut io = IoApic { id, base, pins: 0 };
                io.pins = ((io.read(REG_VERSION) >> VERSION_MAX_REDIR_SHIFT) & 0xff) + 1;
                if let Some(pin) = gsi.checked_sub(gsi_base).filter(|&p| p < io.pins) {
                    return Ok((io, pin));
                }
            }
        }
        Err(text!("no IOAPIC in the MADT serves GSI {}", gsi))
    }

    /// Reads register `index` (IOREGSEL, then IOWIN).
    pub fn read(&self, index: u32) -> u32 {
        // SAFETY: `base` is the MADT's IOAPIC, identity-mapped uncached (checked in
        // `for_gsi`); IOREGSEL/IOWIN are 32-bit registers accessed with 32-bit loads/stores.
        unsafe {
            core::ptr::write_volatile((self.base + IOREGSEL) as *mut u32, index);
            core::ptr::read_volatile((self.base + IOWIN) as *const u32)
        }
    }

    /// Writes register `index` (IOREGSEL, then IOWIN).
    pub fn write(&self, index: u32, value: u32) {
        // SAFETY: as in `read`; the probe is the only user of the IOAPIC.
        unsafe {
            core::ptr::write_volatile((self.base + IOREGSEL) as *mut u32, index);
            core::ptr::write_volatile((self.base + IOWIN) as *mut u32, value);
        }
    }

    /// Reads the RTE of `pin`.
    pub fn rte(&self, pin: u32) -> u64 {
        let low = self.read(REG_REDTBL_BASE + 2 * pin);
        let high = self.read(REG_REDTBL_BASE + 2 * pin + 1);
        (u64::from(high) << 32) | u64::from(low)
    }

    /// Writes the RTE of `pin`: the low dword (with the mask bit) first when masking, last
    /// when unmasking, so the entry is never live half-written.
    pub fn set_rte(&self, pin: u32, rte: u64) {
        let (low, high) = (rte as u32, (rte >> 32) as u32);
        let (low_reg, high_reg) = (REG_REDTBL_BASE + 2 * pin, REG_REDTBL_BASE + 2 * pin + 1);
        if rte & RTE_MASKED != 0 {
            self.write(low_reg, low);
            self.write(high_reg, high);
        } else {
            self.write(high_reg, high);
            self.write(low_reg, low);
        }
    }
}

/// Destination bits of an RTE for physical APIC ID `dest` with the extended destination ID
/// convention: bits 7:0 in RTE 63:56, bits 14:8 in RTE 55:49. `None` above
/// [`MAX_EXT_DEST_ID`].
pub fn ext_dest_bits(dest: u32) -> Option<u64> {
    if dest > MAX_EXT_DEST_ID {
        return None;
    }
    let low = u64::from(dest & 0xff) << RTE_DEST_SHIFT;
    let ext = u64::from(dest >> 8) << RTE_EXT_DEST_SHIFT;
    Some(low | ext)
}
