//! Interrupt remapping table entries in the 128-bit (GA) format, which Linux uses whenever
//! the unit offers GASup (control `GAEn`), and the per-device tables that hold them.
//!
//! | qword | bits | remapped mode (GuestMode = 0) | guest virtual APIC mode (GuestMode = 1) |
//! |---|---|---|---|
//! | lo | 0 | RemapEn | RemapEn |
//! | lo | 1 | SupIOPF | SupIOPF |
//! | lo | 4:2 | IntType (000b fixed) | bit 2 GALogIntr |
//! | lo | 6 | DM (1 = logical) | IsRun |
//! | lo | 7 | GuestMode = 0 | GuestMode = 1 |
//! | lo | 31:8 | destination 23:0 | destination 23:0 (where the vCPU runs) |
//! | lo | 63:32 | - | GATag |
//! | hi | 7:0 | vector | the guest's vector |
//! | hi | 11:8 | reserved | reserved |
//! | hi | 51:12 | - | vAPIC backing page >> 12 |
//! | hi | 63:56 | destination 31:24 | destination 31:24 |
//!
//! A remappable MSI names an entry of its requester's table by its data bits 10:0 (the
//! address is plain 0xfee00000); an I/O APIC pin names one by the RTE's vector field.
//! Entries are written high qword first, so RemapEn never precedes the rest; a guest
//! hypervisor's IsRun/destination/GATag updates touch the low qword only (one store), as
//! Linux's `amd_iommu_update_ga` does.

use super::mem;
use crate::report::Text;
use crate::text;

/// Bytes of one entry.
pub const IRTE_BYTES: u64 = 16;
/// Table alignment (Linux's `IRQ_TABLE_ALIGNMENT`).
pub const TABLE_ALIGN: u64 = 128;
/// The table size Linux uses (IntTabLen 9: 512 entries).
pub const LINUX_LEN_LOG2: u8 = 9;

/// Low qword: RemapEn.
const LO_REMAP_EN: u64 = 1 << 0;
/// Low qword: SupIOPF.
const LO_SUP_IOPF: u64 = 1 << 1;
/// Low qword (guest mode): GALogIntr.
const LO_GA_LOG_INTR: u64 = 1 << 2;
/// Low qword (guest mode): IsRun.
const LO_IS_RUN: u64 = 1 << 6;
/// Low qword: GuestMode.
const LO_GUEST_MODE: u64 = 1 << 7;
/// Low qword: shift of destination bits 23:0.
const LO_DEST_SHIFT: u32 = 8;
/// Mask of destination bits 23:0.
const DEST_LO_MASK: u32 = 0xff_ffff;
/// Bits of the destination in the low qword.
const DEST_LO_BITS: u32 = 24;
/// Low qword: shift of GATag.
const LO_GA_TAG_SHIFT: u32 = 32;
/// Low qword bits a guest hypervisor's vCPU load/put rewrites: IsRun, destination 23:0.
const LO_SCHEDULING: u64 = LO_IS_RUN | ((DEST_LO_MASK as u64) << LO_DEST_SHIFT);
/// High qword: shift of the backing page frame number (51:12).
const HI_PAGE_SHIFT: u32 = 12;
/// High qword: mask (after shifting) of that frame number.
const HI_PAGE_MASK: u64 = 0xff_ffff_ffff;
/// High qword: the lowest reserved bit (11:8).
const HI_RESERVED_BIT: u64 = 1 << 8;
/// High qword: shift of destination bits 31:24.
const HI_DEST_SHIFT: u32 = 56;

/// One 128-bit entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irte {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

/// Where a guest-mode entry posts: the target vCPU as the guest hypervisor names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTarget {
    /// The guest's vector.
    pub vector: u8,
    /// Physical APIC ID of the CPU running (or last running) the vCPU.
    pub destination: u32,
    /// The guest hypervisor's tag for the vCPU.
    pub ga_tag: u32,
    /// Physical address of the vCPU's vAPIC backing page (4 KiB aligned).
    pub backing_page: u64,
}

impl Irte {
    /// RemapEn clear.
    pub const NOT_VALID: Irte = Irte { lo: 0, hi: 0 };

    /// A remapped-mode entry: fixed delivery of `vector` to x2APIC ID `dest`, physical.
    pub fn remapped(vector: u8, dest: u32) -> Irte {
        Irte {
            lo: LO_REMAP_EN | (u64::from(dest & DEST_LO_MASK) << LO_DEST_SHIFT),
            hi: u64::from(vector) | (u64::from(dest >> DEST_LO_BITS) << HI_DEST_SHIFT),
        }
    }

    /// A guest-mode entry for `target`, with IsRun and GALogIntr as given.
    pub fn guest(target: GuestTarget, is_run: bool, ga_log_intr: bool) -> Irte {
        let mut lo = LO_REMAP_EN
            | LO_GUEST_MODE
            | (u64::from(target.destination & DEST_LO_MASK) << LO_DEST_SHIFT)
            | (u64::from(target.ga_tag) << LO_GA_TAG_SHIFT);
        if is_run {
            lo |= LO_IS_RUN;
        }
        if ga_log_intr {
            lo |= LO_GA_LOG_INTR;
        }
        let hi = u64::from(target.vector)
            | (((target.backing_page >> HI_PAGE_SHIFT) & HI_PAGE_MASK) << HI_PAGE_SHIFT)
            | (u64::from(target.destination >> DEST_LO_BITS) << HI_DEST_SHIFT);
        Irte { lo, hi }
    }

    /// The entry with SupIOPF: faults through it are not logged.
    pub fn suppressing_faults(self) -> Irte {
        Irte {
            lo: self.lo | LO_SUP_IOPF,
            hi: self.hi,
        }
    }

    /// The entry with a reserved bit of the high qword set: a unit must reject it.
    pub fn with_reserved_bit(self) -> Irte {
        Irte {
            lo: self.lo,
            hi: self.hi | HI_RESERVED_BIT,
        }
    }

    /// A guest-mode entry as a vCPU load/put leaves it: IsRun and destination 23:0 replaced
    /// in the low qword (Linux's `amd_iommu_update_ga`).
    pub fn scheduled(self, is_run: bool, destination: u32) -> Irte {
        let mut lo =
            (self.lo & !LO_SCHEDULING) | (u64::from(destination & DEST_LO_MASK) << LO_DEST_SHIFT);
        if is_run {
            lo |= LO_IS_RUN;
        }
        Irte { lo, hi: self.hi }
    }

    /// The entry with another GATag (low qword only).
    pub fn retagged(self, ga_tag: u32) -> Irte {
        Irte {
            lo: (self.lo & u64::from(u32::MAX)) | (u64::from(ga_tag) << LO_GA_TAG_SHIFT),
            hi: self.hi,
        }
    }
}

/// One device's interrupt table.
#[derive(Clone, Copy, Debug)]
pub struct IntTable {
    /// Physical address (128-byte aligned).
    pub root: u64,
    /// log2 of the entries.
    pub len_log2: u8,
}

impl IntTable {
    /// A zeroed table of 2^`len_log2` entries.
    pub fn alloc(len_log2: u8) -> Result<IntTable, Text> {
        let root = mem::alloc(IRTE_BYTES << len_log2, TABLE_ALIGN)?;
        Ok(IntTable { root, len_log2 })
    }

    /// Number of entries.
    pub fn entries(&self) -> u32 {
        1 << self.len_log2
    }

    fn entry_address(&self, index: u32) -> Result<u64, Text> {
        if index >= self.entries() {
            return Err(text!(
                "IRTE {} beyond a table of {} entries",
                index,
                self.entries()
            ));
        }
        Ok(self.root + u64::from(index) * IRTE_BYTES)
    }

    /// Writes entry `index`: high qword, then low.
    pub fn set(&self, index: u32, irte: Irte) -> Result<(), Text> {
        let at = self.entry_address(index)?;
        mem::write64(at + 8, irte.hi);
        mem::write64(at, irte.lo);
        Ok(())
    }

    /// Rewrites only the low qword of entry `index` (one store: a guest-mode entry's
    /// scheduling fields and tag).
    pub fn set_low(&self, index: u32, irte: Irte) -> Result<(), Text> {
        let at = self.entry_address(index)?;
        mem::write64(at, irte.lo);
        Ok(())
    }
}

/// MSI data bits 10:0: the entry index.
const MSI_DATA_INDEX_MASK: u32 = 0x7ff;
/// The address of every remappable MSI: the interrupt window with no destination bits (the
/// entry holds the destination).
pub const MSI_ADDRESS: u32 = 0xfee0_0000;

/// The MSI data naming entry `index` (bits 10:0), sent with [`MSI_ADDRESS`].
pub fn msi_data(index: u32) -> u32 {
    index & MSI_DATA_INDEX_MASK
}
