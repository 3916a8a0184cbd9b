//! Second-level page walks (VT-d spec 3.7, 9.8).
//!
//! A context entry names the top table (SLPTPTR) and the number of levels (3 for 39-bit,
//! 4 for 48-bit input addresses). Each level indexes a 4 KiB table of 512 64-bit entries
//! with 9 bits of the input address:
//!
//! | bits | field |
//! |---|---|
//! | 0 | R, read permission |
//! | 1 | W, write permission |
//! | 2 | X (execute; ignored: no execute requests) |
//! | 6:3 | ignored in non-leaf entries; EMT/IPAT in leaves (ignored without snoop control) |
//! | 7 | PS: a 1 GiB (level 3) or 2 MiB (level 2) leaf when CAP.SLLPS allows it; reserved at level 4 |
//! | 10:8 | ignored |
//! | 11 | reserved (SNP without ECAP.SC) |
//! | 51:12 | address of the next table or of the page (bits at and above [`ADDRESS_BITS`] reserved; a superpage's low bits reserved) |
//! | 61:52 | ignored |
//! | 62 | reserved (TM without ECAP.DT) |
//! | 63 | ignored |
//!
//! An entry with neither R nor W is not present. Permissions narrow on the way down: a
//! request needs its permission in every entry it passes. The walk checks, at each
//! level and in this order: the table is readable (fault 0x3 for the top table, which
//! SLPTPTR names, 0x7 below), the entry is present (else the request's permission fault,
//! 0x5 or 0x6), reserved bits are clear (0xC), the request's permission is there (0x5,
//! 0x6). A walk reads at most one entry per level, so a table that points at itself
//! costs at most four reads; [`leaves`] enumerates mappings within a budget of tables.

use crate::memory::GuestMemoryReader;

use super::fault::DmaFaultReason;

/// Address bits the unit translates and addresses (CAP.MGAW and the host address width
/// both 48): output addresses and table pointers above them are reserved.
pub const ADDRESS_BITS: u32 = 48;
/// log2 of the 4 KiB page.
pub const PAGE_SHIFT: u32 = 12;
/// 4 KiB.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Input-address bits each level consumes.
const LEVEL_STRIDE: u32 = 9;
/// Entries per table.
const TABLE_ENTRIES: usize = 512;
/// Size of one entry.
const ENTRY_SIZE: u64 = 8;
/// Entry bit 0: read.
pub const SL_R: u64 = 1 << 0;
/// Entry bit 1: write.
pub const SL_W: u64 = 1 << 1;
/// Entry bit 7: page size (superpage leaf).
pub const SL_PS: u64 = 1 << 7;
/// Entry bit 11: SNP, reserved without snoop control.
const SL_SNP: u64 = 1 << 11;
/// Entry bit 62: TM, reserved without device-TLBs.
const SL_TM: u64 = 1 << 62;
/// Entry bits 51:12: the address field.
const SL_ADDR_FIELD: u64 = ((1 << 52) - 1) & !0xfff;

/// The depth of a second-level table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Levels {
    /// 39-bit input addresses.
    Three,
    /// 48-bit input addresses.
    Four,
}

impl Levels {
    /// The number of levels.
    pub fn count(self) -> u32 {
        match self {
            Levels::Three => 3,
            Levels::Four => 4,
        }
    }

    /// Input-address bits the table translates.
    pub fn address_bits(self) -> u32 {
        PAGE_SHIFT + LEVEL_STRIDE * self.count()
    }
}

/// Superpage sizes the unit supports (CAP.SLLPS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Superpages {
    /// 2 MiB leaves at level 2.
    pub two_mib: bool,
    /// 1 GiB leaves at level 3.
    pub one_gib: bool,
}

/// A second-level table to walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Table {
    /// Guest-physical address of the top table.
    pub root: u64,
    /// Its depth.
    pub levels: Levels,
    /// Superpages allowed.
    pub superpages: Superpages,
}

/// One leaf: a page (4 KiB, 2 MiB or 1 GiB) and what the walk allows on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Leaf {
    /// Input address of the page (aligned to its size).
    pub iova: u64,
    /// Output (guest-physical) address of the page.
    pub gpa: u64,
    /// Page size in bytes.
    pub size: u64,
    /// Readable (R in every entry on the way).
    pub read: bool,
    /// Writable (W in every entry on the way).
    pub write: bool,
}

impl Leaf {
    /// The level this leaf was found at: 1 (4 KiB), 2 (2 MiB) or 3 (1 GiB).
    pub fn level(&self) -> u32 {
        (self.size.trailing_zeros() - PAGE_SHIFT) / LEVEL_STRIDE + 1
    }
}

/// Shift of the input-address bits level `level` (1 = leaf tables) indexes.
fn level_shift(level: u32) -> u32 {
    PAGE_SHIFT + LEVEL_STRIDE * (level - 1)
}

/// Reserved bits of an entry at `level` (1..=4), given whether it is a leaf.
fn reserved_bits(level: u32, leaf: bool, table: &Table, entry: u64) -> bool {
    let address_reserved = SL_ADDR_FIELD & !((1u64 << ADDRESS_BITS) - 1);
    let mut reserved = SL_SNP | SL_TM | address_reserved;
    if level == 4 {
        reserved |= SL_PS;
    }
    if entry & SL_PS != 0 {
        let allowed = match level {
            2 => table.superpages.two_mib,
            3 => table.superpages.one_gib,
            _ => true,
        };
        if !allowed {
            return true;
        }
    }
    if leaf && level > 1 {
        // A superpage's address bits below its size are reserved.
        reserved |= ((1u64 << level_shift(level)) - 1) & !0xfff;
    }
    entry & reserved != 0
}

/// Whether an entry at `level` is a leaf.
fn is_leaf(level: u32, entry: u64) -> bool {
    level == 1 || (level <= 3 && entry & SL_PS != 0)
}

/// Reads entry `index` of the table at `table_gpa`.
fn read_entry(mem: &dyn GuestMemoryReader, table_gpa: u64, index: u64) -> Option<u64> {
    let gpa = table_gpa.checked_add(index * ENTRY_SIZE)?;
    let mut b = [0u8; 8];
    mem.read(gpa, &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

/// The unreadable-table fault at `level` of a table with `levels` levels.
fn unreadable(level: u32, levels: Levels) -> DmaFaultReason {
    if level == levels.count() {
        DmaFaultReason::ContextInvalid
    } else {
        DmaFaultReason::PagingEntryUnreadable
    }
}

/// Translates `iova` for a read or `write` request through `table`. The caller has checked
/// the address width ([`Levels::address_bits`]).
pub fn translate(
    mem: &dyn GuestMemoryReader,
    table: &Table,
    iova: u64,
    write: bool,
) -> Result<Leaf, DmaFaultReason> {
    let denied = DmaFaultReason::denied(write);
    let mut table_gpa = table.root;
    let mut read_ok = true;
    let mut write_ok = true;
    for level in (1..=table.levels.count()).rev() {
        let shift = level_shift(level);
        let index = (iova >> shift) & (TABLE_ENTRIES as u64 - 1);
        let entry = read_entry(mem, table_gpa, index).ok_or(unreadable(level, table.levels))?;
        if entry & (SL_R | SL_W) == 0 {
            return Err(denied);
        }
        let leaf = is_leaf(level, entry);
        if reserved_bits(level, leaf, table, entry) {
            return Err(DmaFaultReason::PagingEntryReserved);
        }
        read_ok &= entry & SL_R != 0;
        write_ok &= entry & SL_W != 0;
        if !(if write { write_ok } else { read_ok }) {
            return Err(denied);
        }
        let address = entry & SL_ADDR_FIELD;
        if leaf {
            let size = 1u64 << shift;
            return Ok(Leaf {
                iova: iova & !(size - 1),
                gpa: address,
                size,
                read: read_ok,
                write: write_ok,
            });
        }
        table_gpa = address;
    }
    // Level 1 entries are always leaves; not reached.
    Err(DmaFaultReason::PagingEntryUnreadable)
}

/// What [`leaves`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeafScan {
    /// Leaves overlapping the range, in address order, each readable or writable.
    pub leaves: Vec<Leaf>,
    /// Entries skipped because a table could not be read or an entry had reserved bits
    /// (a request there faults; nothing is mapped).
    pub bad_entries: usize,
    /// The table budget ran out before the range was covered: leaves past the last one
    /// returned were not looked at.
    pub truncated: bool,
}

/// Enumerates the leaves of `table` that overlap `[start, end)` (clamped to the table's
/// address width), visiting at most `*budget` tables (decremented). Entries the walk would
/// fault on are skipped and counted, never followed.
pub fn leaves(
    mem: &dyn GuestMemoryReader,
    table: &Table,
    start: u64,
    end: u64,
    budget: &mut usize,
) -> LeafScan {
    let mut scan = LeafScan::default();
    let limit = 1u64 << table.levels.address_bits();
    let end = end.min(limit);
    if start >= end {
        return scan;
    }
    let top = table.levels.count();
    visit(
        mem,
        table,
        Visit {
            table_gpa: table.root,
            level: top,
            base: 0,
            read: true,
            write: true,
        },
        (start, end),
        budget,
        &mut scan,
    );
    scan
}

/// One table to enumerate.
struct Visit {
    table_gpa: u64,
    level: u32,
    /// Input address its entry 0 maps.
    base: u64,
    read: bool,
    write: bool,
}

fn visit(
    mem: &dyn GuestMemoryReader,
    table: &Table,
    v: Visit,
    (start, end): (u64, u64),
    budget: &mut usize,
    scan: &mut LeafScan,
) {
    if scan.truncated {
        return;
    }
    if *budget == 0 {
        scan.truncated = true;
        return;
    }
    *budget -= 1;
    let mut page = [0u8; TABLE_ENTRIES * ENTRY_SIZE as usize];
    if mem.read(v.table_gpa, &mut page).is_err() {
        scan.bad_entries += 1;
        return;
    }
    let shift = level_shift(v.level);
    let span = 1u64 << shift;
    let first = (start.max(v.base) - v.base) >> shift;
    let last = ((end - 1).min(v.base + span * TABLE_ENTRIES as u64 - 1) - v.base) >> shift;
    for index in first..=last {
        let Some(bytes) = page.get(index as usize * 8..index as usize * 8 + 8) else {
            continue;
        };
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        let entry = u64::from_le_bytes(b);
        if entry & (SL_R | SL_W) == 0 {
            continue;
        }
        let leaf = is_leaf(v.level, entry);
        if reserved_bits(v.level, leaf, table, entry) {
            scan.bad_entries += 1;
            continue;
        }
        let read = v.read && entry & SL_R != 0;
        let write = v.write && entry & SL_W != 0;
        if !read && !write {
            continue;
        }
        let iova = v.base + index * span;
        let address = entry & SL_ADDR_FIELD;
        if leaf {
            scan.leaves.push(Leaf {
                iova,
                gpa: address,
                size: span,
                read,
                write,
            });
        } else {
            visit(
                mem,
                table,
                Visit {
                    table_gpa: address,
                    level: v.level - 1,
                    base: iova,
                    read,
                    write,
                },
                (start, end),
                budget,
                scan,
            );
            if scan.truncated {
                return;
            }
        }
    }
}

/// Builders of second-level entries, for tests here and in the VMM.
pub mod build {
    use super::*;

    /// A non-leaf entry pointing at the table `next`.
    pub fn table(next: u64, read: bool, write: bool) -> u64 {
        (next & SL_ADDR_FIELD) | perms(read, write)
    }

    /// A 4 KiB leaf (level 1) mapping `gpa`.
    pub fn page(gpa: u64, read: bool, write: bool) -> u64 {
        (gpa & SL_ADDR_FIELD) | perms(read, write)
    }

    /// A superpage leaf (level 2: 2 MiB, level 3: 1 GiB) mapping `gpa`.
    pub fn superpage(gpa: u64, read: bool, write: bool) -> u64 {
        (gpa & SL_ADDR_FIELD) | perms(read, write) | SL_PS
    }

    fn perms(read: bool, write: bool) -> u64 {
        (if read { SL_R } else { 0 }) | (if write { SL_W } else { 0 })
    }

    /// Index of `iova` in a table at `level` (1 = leaf tables).
    pub fn index(iova: u64, level: u32) -> u64 {
        (iova >> level_shift(level)) & (TABLE_ENTRIES as u64 - 1)
    }
}
