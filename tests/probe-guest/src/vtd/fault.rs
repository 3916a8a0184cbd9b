//! Primary fault logging: the fault-recording registers (FRCD, CAP.NFR + 1 of them at
//! CAP.FRO * 16), FSTS, and the fault event interrupt (FECTL/FEDATA/FEADDR/FEUADDR).
//!
//! A record is 128 bits: low qword = fault information (for interrupt-remapping faults the
//! interrupt index in bits 63:48), high qword = SID in 15:0, fault reason in 39:32, F (fault)
//! in bit 63. Software clears a record by writing 1 to F (the top bit of its last dword,
//! as Linux's `dmar_fault` does).

use super::Vtd;
use crate::mmio::Mmio;

/// CAP: shift and mask of FRO (fault-recording register offset / 16, bits 33:24).
const CAP_FRO_SHIFT: u32 = 24;
const CAP_FRO_MASK: u64 = 0x3ff;
/// CAP: shift and mask of NFR (number of fault-recording registers - 1, bits 47:40).
const CAP_NFR_SHIFT: u32 = 40;
const CAP_NFR_MASK: u64 = 0xff;
/// Unit of FRO.
const FRO_UNIT: u64 = 16;
/// Size of one record.
const FRCD_SIZE: u64 = 16;
/// Offset of a record's high qword.
const FRCD_HIGH: u64 = 8;
/// Offset of a record's last dword (holding F in bit 31).
const FRCD_LAST_DWORD: u64 = 12;
/// F as seen in the last dword.
const FRCD_LAST_DWORD_F: u32 = 1 << 31;
/// High qword bit 63: F, the record holds a fault.
const FRCD_F: u64 = 1 << 63;
/// High qword: shift and mask of the fault reason (bits 39:32).
const FRCD_FR_SHIFT: u32 = 32;
const FRCD_FR_MASK: u64 = 0xff;
/// High qword: SID (bits 15:0).
const FRCD_SID_MASK: u64 = 0xffff;
/// Low qword: shift of the interrupt index of an interrupt-remapping fault (bits 63:48).
const FRCD_IR_INDEX_SHIFT: u32 = 48;

/// Fault reason 0x21: interrupt index beyond the table size.
pub const FR_INDEX_BEYOND_TABLE: u8 = 0x21;
/// Fault reason 0x22: the entry is not present.
pub const FR_NOT_PRESENT: u8 = 0x22;
/// Fault reason 0x23: the entry could not be read (no table, or not in memory).
pub const FR_TABLE_READ_FAILED: u8 = 0x23;
/// Fault reason 0x24: reserved bits set in a present entry.
pub const FR_RESERVED_BITS: u8 = 0x24;
/// Fault reason 0x25: compatibility-format interrupt blocked.
pub const FR_COMPATIBILITY_BLOCKED: u8 = 0x25;
/// Fault reason 0x26: source-id check failed.
pub const FR_SID_MISMATCH: u8 = 0x26;

/// DMA fault reason 0x2: context entry not present.
pub const FR_DMA_CONTEXT_NOT_PRESENT: u8 = 0x2;
/// DMA fault reason 0x4: address beyond the address width.
pub const FR_DMA_BEYOND_WIDTH: u8 = 0x4;
/// DMA fault reason 0x5: no write permission (or not present, for a write).
pub const FR_DMA_WRITE: u8 = 0x5;
/// DMA fault reason 0x6: no read permission (or not present, for a read).
pub const FR_DMA_READ: u8 = 0x6;
/// High qword bit 62: T, the faulting DMA was a read.
const FRCD_T_READ: u64 = 1 << 62;
/// Low qword bits 63:12: the faulting page of a DMA fault.
const FRCD_FI_MASK: u64 = !0xfff;

/// FSTS bit 0: primary fault overflow (write 1 to clear).
pub const FSTS_PFO: u32 = 1 << 0;
/// FSTS bit 1: primary pending fault (some record has F set).
pub const FSTS_PPF: u32 = 1 << 1;
/// FSTS bits 15:8: FRI, the record that set PPF.
const FSTS_FRI_SHIFT: u32 = 8;
const FSTS_FRI_MASK: u32 = 0xff;

/// Fault event control register: IM (bit 31) masks the event; IP (30) is pending.
pub(crate) const FECTL_REG: u64 = 0x38;
/// Fault event data register (the vector for a fixed interrupt).
pub(crate) const FEDATA_REG: u64 = 0x3c;
/// Fault event address register.
pub(crate) const FEADDR_REG: u64 = 0x40;
/// Fault event upper address register: destination bits 31:8 in x2APIC mode.
pub(crate) const FEUADDR_REG: u64 = 0x44;
/// FECTL value with IM clear: events are sent.
const FECTL_UNMASKED: u32 = 0;
/// Interrupt window address.
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;
/// Compatibility MSI address: destination bits 7:0 in address bits 19:12.
const MSI_DEST_SHIFT: u32 = 12;
/// Destination bits 7:0.
const DEST_LOW_MASK: u32 = 0xff;

/// One fault record with F set.
#[derive(Clone, Copy, Debug)]
pub struct FaultRecord {
    /// Which record register (0 .. NFR).
    pub slot: u32,
    /// Low qword.
    pub low: u64,
    /// High qword.
    pub high: u64,
}

impl FaultRecord {
    /// Fault reason (0x20-0x26 for interrupt remapping).
    pub fn reason(&self) -> u8 {
        ((self.high >> FRCD_FR_SHIFT) & FRCD_FR_MASK) as u8
    }

    /// Source-id of the faulting request.
    pub fn sid(&self) -> u16 {
        (self.high & FRCD_SID_MASK) as u16
    }

    /// Interrupt index of an interrupt-remapping fault.
    pub fn ir_index(&self) -> u16 {
        (self.low >> FRCD_IR_INDEX_SHIFT) as u16
    }

    /// The faulting page of a DMA fault.
    pub fn dma_address(&self) -> u64 {
        self.low & FRCD_FI_MASK
    }

    /// True when the faulting DMA was a read (FRCD.T).
    pub fn dma_read(&self) -> bool {
        self.high & FRCD_T_READ != 0
    }
}

/// Number of fault-recording registers a unit with capability register `cap` has
/// (CAP.NFR + 1).
pub fn record_count(cap: u64) -> u32 {
    ((cap >> CAP_NFR_SHIFT) & CAP_NFR_MASK) as u32 + 1
}

/// Offset in the register page of fault-recording register `slot` (CAP.FRO * 16 + 16 * slot).
pub fn record_offset(cap: u64, slot: u32) -> u64 {
    ((cap >> CAP_FRO_SHIFT) & CAP_FRO_MASK) * FRO_UNIT + u64::from(slot) * FRCD_SIZE
}

/// Record `slot` of the unit whose registers are `regs`, if its F bit is set.
pub fn read_pending(regs: &Mmio, cap: u64, slot: u32) -> Option<FaultRecord> {
    let at = record_offset(cap, slot);
    let high = regs.read64(at + FRCD_HIGH);
    (high & FRCD_F != 0).then(|| FaultRecord {
        slot,
        low: regs.read64(at),
        high,
    })
}

/// Clears record `slot` (writes 1 to its F bit, the top bit of its last dword).
pub fn clear_record(regs: &Mmio, cap: u64, slot: u32) {
    regs.write32(
        record_offset(cap, slot) + FRCD_LAST_DWORD,
        FRCD_LAST_DWORD_F,
    );
}

impl Vtd {
    /// Number of fault-recording registers (CAP.NFR + 1).
    pub fn fault_records(&self) -> u32 {
        record_count(self.cap())
    }

    /// The records with F set, in register order; returns how many were found (at most
    /// `out.len()` are stored).
    pub fn pending_faults(&self, out: &mut [FaultRecord]) -> usize {
        let mut n = 0;
        for slot in 0..self.fault_records() {
            let Some(record) = read_pending(self.regs(), self.cap(), slot) else {
                continue;
            };
            if let Some(o) = out.get_mut(n) {
                *o = record;
            }
            n += 1;
        }
        n
    }

    /// Clears record `slot` (writes 1 to its F bit).
    pub fn clear_fault(&self, slot: u32) {
        clear_record(self.regs(), self.cap(), slot);
    }

    /// FSTS.FRI: the record that set PPF.
    pub fn fault_record_index(fsts: u32) -> u32 {
        (fsts >> FSTS_FRI_SHIFT) & FSTS_FRI_MASK
    }

    /// Routes the fault event interrupt to x2APIC ID `dest`, fixed delivery of `vector`, and
    /// unmasks it (Linux's `dmar_msi_write` order: data, address, upper address, then FECTL).
    pub fn route_fault_events(&self, vector: u8, dest: u32) {
        let regs = self.regs();
        regs.write32(FEDATA_REG, u32::from(vector));
        regs.write32(
            FEADDR_REG,
            MSI_ADDRESS_BASE | ((dest & DEST_LOW_MASK) << MSI_DEST_SHIFT),
        );
        regs.write32(FEUADDR_REG, dest & !DEST_LOW_MASK);
        regs.write32(FECTL_REG, FECTL_UNMASKED);
    }

    /// The fault event control register (IM bit 31, IP bit 30).
    pub fn fectl(&self) -> u32 {
        self.regs().read32(FECTL_REG)
    }
}
