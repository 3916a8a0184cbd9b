//! Interrupt remapping table entries (remapped format), the table's memory, and the
//! remappable-format messages that name an entry: MSI addresses and I/O APIC RTEs.
//!
//! IRTE layout (128 bits): P 0, FPD 1, DM 2, RH 3, TM 4, DLM 7:5, reserved 14:12, IM 15
//! (0 = remapped), vector 23:16, reserved 31:24, destination 63:32 (the full 32-bit x2APIC
//! ID with IRTA.EIME), SID 79:64, SQ 81:80, SVT 83:82, reserved 127:84.
//!
//! The table lives in the `.ir_table` section (not file-backed, not cleared at boot, see
//! link.ld): 65536 entries, 1 MiB, page aligned. [`clear_table`] zeroes the part in use.

use core::arch::{asm, global_asm};

/// Size of one entry.
const IRTE_SIZE: u64 = 16;
/// log2 of the most entries the table holds (65536, IRTA.S = 15).
pub const TABLE_LOG2_MAX: u32 = 16;
/// Bytes of the table section.
const TABLE_BYTES: u64 = IRTE_SIZE << TABLE_LOG2_MAX;
/// Bytes per `rep stosq` store.
const QWORD: u64 = 8;

/// Low qword bit 0: present.
const IRTE_P: u64 = 1 << 0;
/// Low qword bit 1: fault processing disable.
const IRTE_FPD: u64 = 1 << 1;
/// Low qword bits 7:5 = 000: fixed delivery; DM (2) = 0 physical, TM (4) = 0 edge.
const IRTE_FIXED_PHYSICAL_EDGE: u64 = 0;
/// Low qword bit 12: the lowest reserved bit (14:12) of the remapped format.
const IRTE_RESERVED_BIT: u64 = 1 << 12;
/// Low qword: shift of the vector (23:16).
const IRTE_VECTOR_SHIFT: u32 = 16;
/// Low qword: shift of the destination ID (63:32).
const IRTE_DEST_SHIFT: u32 = 32;
/// High qword: shift of SVT (bits 19:18).
const IRTE_SVT_SHIFT: u32 = 18;
/// SVT = 1: verify the requester against SID (with SQ).
const SVT_REQUESTER_ID: u64 = 1;
/// High qword: shift of SQ (bits 17:16); 0 = compare all 16 SID bits.
const IRTE_SQ_SHIFT: u32 = 16;
/// SQ = 0: every requester-ID bit is compared.
const SQ_ALL_BITS: u64 = 0;

/// Address of the interrupt window, bits 31:20 = 0xfee.
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;
/// Remappable MSI address: handle bits 14:0 in address bits 19:5.
const MSI_HANDLE_SHIFT: u32 = 5;
/// Mask of handle bits 14:0.
const HANDLE_LOW_MASK: u32 = 0x7fff;
/// The handle bit that goes to address bit 2 (and RTE bit 11).
const HANDLE_HIGH_BIT: u32 = 15;
/// Remappable MSI address bit 4: interrupt format = remappable.
const MSI_REMAPPABLE: u32 = 1 << 4;
/// Remappable MSI address bit 3: SHV, subhandle valid (index = handle + data[15:0]).
const MSI_SHV: u32 = 1 << 3;
/// Remappable MSI address bit 2: handle bit 15.
const MSI_HANDLE_15: u32 = 1 << 2;
/// Compatibility MSI address: destination ID in bits 19:12.
const MSI_COMPAT_DEST_SHIFT: u32 = 12;
/// Highest destination a compatibility-format address holds.
const MSI_COMPAT_DEST_MAX: u32 = 0xff;

/// Remappable RTE bit 48: interrupt format = remappable.
const RTE_REMAPPABLE: u64 = 1 << 48;
/// Remappable RTE: index bits 14:0 in bits 63:49.
const RTE_INDEX_SHIFT: u32 = 49;
/// Remappable RTE: index bit 15 in bit 11.
const RTE_INDEX_15_SHIFT: u32 = 11;

/// One 128-bit entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irte {
    /// Bits 63:0.
    pub low: u64,
    /// Bits 127:64.
    pub high: u64,
}

impl Irte {
    /// An entry with P clear (all zero).
    pub const NOT_PRESENT: Irte = Irte { low: 0, high: 0 };

    /// A present remapped-format entry: fixed delivery of `vector` to x2APIC ID `dest`,
    /// physical destination mode, edge, no source validation.
    pub fn remapped(vector: u8, dest: u32) -> Irte {
        Irte {
            low: IRTE_P
                | IRTE_FIXED_PHYSICAL_EDGE
                | (u64::from(vector) << IRTE_VECTOR_SHIFT)
                | (u64::from(dest) << IRTE_DEST_SHIFT),
            high: 0,
        }
    }

    /// The entry with source validation SVT = 1, SQ = 0: only requester `sid` may use it.
    pub fn verify_sid(self, sid: u16) -> Irte {
        Irte {
            low: self.low,
            high: u64::from(sid)
                | (SQ_ALL_BITS << IRTE_SQ_SHIFT)
                | (SVT_REQUESTER_ID << IRTE_SVT_SHIFT),
        }
    }

    /// The entry with FPD set: faults through it are not recorded.
    pub fn with_fpd(self) -> Irte {
        Irte {
            low: self.low | IRTE_FPD,
            high: self.high,
        }
    }

    /// The entry with a reserved bit (12) set: a unit must reject it (fault 0x24).
    pub fn with_reserved_bit(self) -> Irte {
        Irte {
            low: self.low | IRTE_RESERVED_BIT,
            high: self.high,
        }
    }
}

/// A remappable-format MSI address naming `handle`; with `shv` the device's data (the
/// subhandle) is added to it.
pub fn remappable_msi_address(handle: u16, shv: bool) -> u32 {
    let handle = u32::from(handle);
    let mut address = MSI_ADDRESS_BASE
        | MSI_REMAPPABLE
        | ((handle & HANDLE_LOW_MASK) << MSI_HANDLE_SHIFT)
        | (((handle >> HANDLE_HIGH_BIT) & 1) * MSI_HANDLE_15);
    if shv {
        address |= MSI_SHV;
    }
    address
}

/// A compatibility-format MSI address for xAPIC destination `dest`, if it fits in 8 bits.
pub fn compatibility_msi_address(dest: u32) -> Option<u32> {
    (dest <= MSI_COMPAT_DEST_MAX).then_some(MSI_ADDRESS_BASE | (dest << MSI_COMPAT_DEST_SHIFT))
}

/// The remappable-format bits of an I/O APIC RTE naming entry `index`: bit 48, index 14:0
/// in 63:49, index 15 in bit 11. The vector field (7:0) is the caller's (Linux puts the pin
/// number there); trigger, polarity and mask too.
pub fn remappable_rte(index: u16) -> u64 {
    let index = u64::from(index);
    RTE_REMAPPABLE
        | ((index & u64::from(HANDLE_LOW_MASK)) << RTE_INDEX_SHIFT)
        | (((index >> HANDLE_HIGH_BIT) & 1) << RTE_INDEX_15_SHIFT)
}

extern "C" {
    /// First byte of the table section (defined below).
    static probe_ir_table: u8;
}

/// Physical (identity-mapped) address of the table: 4 KiB aligned.
pub fn table_address() -> u64 {
    (&raw const probe_ir_table) as u64
}

/// Zeroes the first `entries` entries (at most 2^[`TABLE_LOG2_MAX`]) with `rep stosq`: the
/// build machines' KVM runs string instructions one iteration at a time, and 64 Ki byte
/// stores (`memset`'s `rep stosb`) would take most of a second.
pub(crate) fn clear_table(entries: u32) {
    let qwords = (u64::from(entries) * IRTE_SIZE).min(TABLE_BYTES) / QWORD;
    // SAFETY: the range lies inside the table section, which only the enabled unit's owner
    // (the BSP, through `Vtd`) writes; the unit reads it only after SIRTP, which follows.
    // DF is clear (the ABI requires it).
    unsafe {
        asm!("rep stosq", inout("rcx") qwords => _, inout("rdi") table_address() => _,
             in("rax") 0u64, options(nostack, preserves_flags))
    }
}

/// Writes entry `index` (< 2^[`TABLE_LOG2_MAX`]): high qword, then low.
pub(crate) fn write_entry(index: u32, entry: Irte) {
    let at = table_address() + u64::from(index) * IRTE_SIZE;
    assert!(at + IRTE_SIZE <= table_address() + TABLE_BYTES);
    // SAFETY: inside the table section (asserted); 16-byte aligned; the unit reads entries
    // concurrently only through its cache rules, which is what the scenarios exercise.
    unsafe {
        core::ptr::write_volatile((at + 8) as *mut u64, entry.high);
        core::ptr::write_volatile(at as *mut u64, entry.low);
    }
}

global_asm!(
    r#"
    /* Not file-backed and not cleared at boot (see link.ld); `clear_table` zeroes it. */
    .pushsection .ir_table, "aw", @nobits
    .p2align 12
    .global probe_ir_table
probe_ir_table:
    .skip {bytes}
    .popsection
"#,
    bytes = const TABLE_BYTES,
    options(att_syntax)
);
