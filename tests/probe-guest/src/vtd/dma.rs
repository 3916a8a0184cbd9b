//! Driving a VT-d unit's DMA remapping in legacy mode the way Linux's intel-iommu does
//! (`drivers/iommu/intel/iommu.c`): a root table (one entry per bus) pointing at context
//! tables (one entry per device/function), second-level page tables per domain, GCMD.SRTP
//! then global context-cache and IOTLB invalidations, then GCMD.TE.
//!
//! Memory comes from an [`Arena`]: physical RAM from the first 2 MiB boundary above the
//! probe's image (nothing else uses it), checked against the PVH memory map. Tables and
//! entries are written with volatile stores, 128-bit entries high qword first so a present
//! bit never precedes the rest. With CAP.CM (caching mode) every change, a new mapping
//! included, must be followed by an invalidation before a device may use it: the
//! scenarios do that explicitly, as Linux does under caching mode.

use super::qi;
use super::Vtd;
use crate::report::Text;
use crate::text;

/// Root table address register (64-bit).
const RTADDR_REG: u64 = 0x20;
/// CAP: SAGAW (12:8).
const CAP_SAGAW_SHIFT: u32 = 8;
const CAP_SAGAW_MASK: u64 = 0x1f;
/// SAGAW bits: 39-bit (3-level) and 48-bit (4-level) tables.
pub const SAGAW_39: u8 = 1 << 1;
pub const SAGAW_48: u8 = 1 << 2;
/// CAP: MGAW (21:16), width - 1.
const CAP_MGAW_SHIFT: u32 = 16;
const CAP_MGAW_MASK: u64 = 0x3f;
/// CAP: SLLPS (37:34): bit 0 2 MiB, bit 1 1 GiB.
const CAP_SLLPS_SHIFT: u32 = 34;
const CAP_SLLPS_MASK: u64 = 0xf;
pub const SLLPS_2M: u8 = 1 << 0;
pub const SLLPS_1G: u8 = 1 << 1;
/// CAP.CM (bit 7): caching mode.
const CAP_CM: u64 = 1 << 7;
/// CAP.PSI (bit 39): page-selective invalidation.
const CAP_PSI: u64 = 1 << 39;
/// CAP.MAMV (53:48).
const CAP_MAMV_SHIFT: u32 = 48;
const CAP_MAMV_MASK: u64 = 0x3f;
/// ECAP.PT (bit 6): pass-through contexts.
const ECAP_PT: u64 = 1 << 6;

/// Entry bit 0 (root, context): present.
const PRESENT: u64 = 1 << 0;
/// Context entry: FPD (bit 1).
const CONTEXT_FPD: u64 = 1 << 1;
/// Context entry: TT (3:2) = 10, pass-through.
const CONTEXT_TT_PASS_THROUGH: u64 = 0b10 << 2;
/// Context entry high qword: DID (23:8).
const CONTEXT_DID_SHIFT: u32 = 8;
/// Context entry AW: 1 = 39 bits (3 levels), 2 = 48 bits (4 levels).
const AW_39: u64 = 1;
const AW_48: u64 = 2;
/// Second-level entry bits.
pub const SL_READ: u64 = 1 << 0;
pub const SL_WRITE: u64 = 1 << 1;
const SL_PAGE_SIZE: u64 = 1 << 7;
/// Address field of second-level entries (51:12).
const SL_ADDR: u64 = 0x000f_ffff_ffff_f000;
/// 4 KiB, 2 MiB, 1 GiB.
pub const PAGE_4K: u64 = 1 << 12;
pub const PAGE_2M: u64 = 1 << 21;
pub const PAGE_1G: u64 = 1 << 30;
/// Entries per table.
const ENTRIES: u64 = 512;
/// Bytes per 128-bit root/context entry.
const ENTRY128: u64 = 16;

extern "C" {
    /// End of the probe's image (link.ld): everything above is free RAM.
    static __image_end: u8;
}

/// What the unit's capability registers say about DMA remapping.
#[derive(Clone, Copy, Debug)]
pub struct DmaCaps {
    /// CAP.SAGAW.
    pub sagaw: u8,
    /// CAP.MGAW + 1.
    pub mgaw: u32,
    /// CAP.SLLPS.
    pub sllps: u8,
    /// CAP.CM.
    pub caching_mode: bool,
    /// CAP.PSI.
    pub psi: bool,
    /// CAP.MAMV.
    pub mamv: u8,
    /// ECAP.PT.
    pub pass_through: bool,
}

impl DmaCaps {
    /// Decodes `cap` and `ecap`.
    pub fn new(cap: u64, ecap: u64) -> DmaCaps {
        DmaCaps {
            sagaw: ((cap >> CAP_SAGAW_SHIFT) & CAP_SAGAW_MASK) as u8,
            mgaw: ((cap >> CAP_MGAW_SHIFT) & CAP_MGAW_MASK) as u32 + 1,
            sllps: ((cap >> CAP_SLLPS_SHIFT) & CAP_SLLPS_MASK) as u8,
            caching_mode: cap & CAP_CM != 0,
            psi: cap & CAP_PSI != 0,
            mamv: ((cap >> CAP_MAMV_SHIFT) & CAP_MAMV_MASK) as u8,
            pass_through: ecap & ECAP_PT != 0,
        }
    }

    /// The deepest table the unit walks: 4 levels with 48-bit support, else 3, else none.
    pub fn levels(&self) -> Option<u32> {
        if self.sagaw & SAGAW_48 != 0 {
            Some(4)
        } else if self.sagaw & SAGAW_39 != 0 {
            Some(3)
        } else {
            None
        }
    }
}

fn write64(addr: u64, value: u64) {
    // SAFETY: `addr` is inside the arena (identity-mapped RAM owned by the DMA scenarios,
    // checked by `Arena::claim`) and 8-byte aligned by construction.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

fn read64(addr: u64) -> u64 {
    // SAFETY: as for `write64`.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Zeroes the 4 KiB page at `addr` (arena memory).
fn zero_page(addr: u64) {
    for i in 0..ENTRIES {
        write64(addr + 8 * i, 0);
    }
}

/// Physical RAM for tables and buffers, handed out by a bump pointer.
pub struct Arena {
    next: u64,
    end: u64,
}

impl Arena {
    /// The RAM from the first 2 MiB boundary above the image up to `bytes` further, which
    /// must end below `ram_end` (the PVH memory map's highest RAM end) and inside the
    /// identity map.
    pub fn claim(ram_end: u64, bytes: u64) -> Result<Arena, Text> {
        let image_end = (&raw const __image_end) as u64;
        let base = (image_end + PAGE_2M - 1) & !(PAGE_2M - 1);
        let end = base + bytes;
        if end > ram_end || !crate::phys::is_mapped(base, bytes) {
            return Err(text!(
                "DMA arena 0x{:x}..0x{:x} does not fit below the end of RAM 0x{:x} (give the guest more memory)",
                base,
                end,
                ram_end
            ));
        }
        Ok(Arena { next: base, end })
    }

    /// `size` bytes aligned to `align` (powers of two), not zeroed.
    pub fn raw(&mut self, size: u64, align: u64) -> Result<u64, Text> {
        let at = (self.next + align - 1) & !(align - 1);
        if at + size > self.end {
            return Err(text!("DMA arena exhausted (0x{:x} bytes asked)", size));
        }
        self.next = at + size;
        Ok(at)
    }

    /// A zeroed 4 KiB page.
    pub fn page(&mut self) -> Result<u64, Text> {
        let p = self.raw(PAGE_4K, PAGE_4K)?;
        zero_page(p);
        Ok(p)
    }
}

/// A domain's second-level table.
pub struct Domain {
    /// Domain ID.
    pub id: u16,
    /// Top table.
    pub top: u64,
    /// 3 or 4.
    pub levels: u32,
}

/// Index of `iova` in a table at `level` (1 = page tables).
fn index(iova: u64, level: u32) -> u64 {
    (iova >> (12 + 9 * (level - 1))) & (ENTRIES - 1)
}

/// The level whose entries map `size` bytes.
fn level_of(size: u64) -> Result<u32, Text> {
    match size {
        PAGE_4K => Ok(1),
        PAGE_2M => Ok(2),
        PAGE_1G => Ok(3),
        _ => Err(text!("no page size 0x{:x}", size)),
    }
}

impl Domain {
    /// An empty table of `levels` levels for domain `id`.
    pub fn new(arena: &mut Arena, id: u16, levels: u32) -> Result<Domain, Text> {
        Ok(Domain {
            id,
            top: arena.page()?,
            levels,
        })
    }

    /// The address of the entry that maps `iova` at `level`, creating the tables above it
    /// (read-write non-leaf entries) from `arena`.
    fn slot(&self, arena: &mut Arena, iova: u64, level: u32) -> Result<u64, Text> {
        let mut table = self.top;
        for l in ((level + 1)..=self.levels).rev() {
            let e = table + 8 * index(iova, l);
            let v = read64(e);
            table = if v & (SL_READ | SL_WRITE) != 0 {
                if v & SL_PAGE_SIZE != 0 {
                    return Err(text!(
                        "IOVA 0x{:x}: a superpage is mapped above level {}",
                        iova,
                        level
                    ));
                }
                v & SL_ADDR
            } else {
                let t = arena.page()?;
                write64(e, t | SL_READ | SL_WRITE);
                t
            };
        }
        Ok(table + 8 * index(iova, level))
    }

    /// Maps `[iova, iova + size)` to `gpa` with `perms` ([`SL_READ`], [`SL_WRITE`]); `size`
    /// is 4 KiB, 2 MiB or 1 GiB and both addresses are aligned to it. Returns the entry's
    /// address. Under caching mode the caller invalidates it before a device uses it.
    pub fn map(
        &self,
        arena: &mut Arena,
        iova: u64,
        gpa: u64,
        size: u64,
        perms: u64,
    ) -> Result<u64, Text> {
        if iova % size != 0 || gpa % size != 0 {
            return Err(text!(
                "map 0x{:x} -> 0x{:x}: not aligned to 0x{:x}",
                iova,
                gpa,
                size
            ));
        }
        let level = level_of(size)?;
        let slot = self.slot(arena, iova, level)?;
        let ps = if level > 1 { SL_PAGE_SIZE } else { 0 };
        write64(slot, (gpa & SL_ADDR) | perms | ps);
        Ok(slot)
    }

    /// Clears the leaf that maps `iova` at the level of `size` (tables stay).
    pub fn unmap(&self, arena: &mut Arena, iova: u64, size: u64) -> Result<(), Text> {
        let slot = self.slot(arena, iova, level_of(size)?)?;
        write64(slot, 0);
        Ok(())
    }

    /// The context entry's AW for this table.
    fn aw(&self) -> u64 {
        if self.levels == 4 {
            AW_48
        } else {
            AW_39
        }
    }
}

/// The root table and bus 0's context table.
pub struct RootTable {
    /// Guest-physical address of the root table.
    pub root: u64,
    context: u64,
}

impl RootTable {
    /// An empty root table whose bus 0 entry points at an empty context table.
    pub fn new(arena: &mut Arena) -> Result<RootTable, Text> {
        let root = arena.page()?;
        let context = arena.page()?;
        write64(root + 8, 0);
        write64(root, context | PRESENT);
        Ok(RootTable { root, context })
    }

    fn context_slot(&self, sid: u16) -> Result<u64, Text> {
        if sid >> 8 != 0 {
            return Err(text!("requester 0x{:04x} is not on bus 0", sid));
        }
        Ok(self.context + ENTRY128 * u64::from(sid & 0xff))
    }

    /// Points `sid`'s context at `domain`'s table (FPD as given).
    pub fn translate(&self, sid: u16, domain: &Domain, fpd: bool) -> Result<(), Text> {
        let slot = self.context_slot(sid)?;
        let hi = domain.aw() | (u64::from(domain.id) << CONTEXT_DID_SHIFT);
        let mut lo = domain.top | PRESENT;
        if fpd {
            lo |= CONTEXT_FPD;
        }
        write64(slot, 0);
        write64(slot + 8, hi);
        write64(slot, lo);
        Ok(())
    }

    /// Makes `sid`'s context pass-through in domain `did` (AW 48 bits, as Linux programs
    /// the widest supported width).
    pub fn pass_through(&self, sid: u16, did: u16) -> Result<(), Text> {
        let slot = self.context_slot(sid)?;
        write64(slot, 0);
        write64(slot + 8, AW_48 | (u64::from(did) << CONTEXT_DID_SHIFT));
        write64(slot, PRESENT | CONTEXT_TT_PASS_THROUGH);
        Ok(())
    }

    /// Clears `sid`'s context entry, keeping (or setting) only FPD.
    pub fn clear(&self, sid: u16, fpd: bool) -> Result<(), Text> {
        let slot = self.context_slot(sid)?;
        write64(slot, if fpd { CONTEXT_FPD } else { 0 });
        write64(slot + 8, 0);
        Ok(())
    }
}

/// GCMD.TE (bit 31).
const GCMD_TE: u32 = 1 << 31;

impl Vtd {
    /// The DMA-remapping capabilities.
    pub fn dma_caps(&self) -> DmaCaps {
        DmaCaps::new(self.cap(), self.ecap())
    }

    /// Latches `root` (RTADDR + GCMD.SRTP, wait for RTPS), then invalidates the context
    /// cache and the IOTLB globally, as Linux does before enabling translation.
    pub fn set_root_table(&mut self, root: u64) -> Result<(), Text> {
        self.regs().write64(RTADDR_REG, root);
        self.command(super::GCMD_SRTP, 0)?;
        self.flush_context_global()?;
        self.flush_iotlb_global()
    }

    /// GCMD.TE, waiting for GSTS.TES.
    pub fn enable_translation(&mut self) -> Result<(), Text> {
        self.command(GCMD_TE, 0)
    }

    /// Clears GCMD.TE, waiting for GSTS.TES to clear.
    pub fn disable_translation(&mut self) -> Result<(), Text> {
        self.command(0, GCMD_TE)
    }

    /// Global context-cache invalidation (+ wait).
    pub fn flush_context_global(&mut self) -> Result<(), Text> {
        self.submit(qi::context_cache(qi::GRANULARITY_GLOBAL, 0, 0))
    }

    /// Device-selective context-cache invalidation of `sid` (+ wait).
    pub fn flush_context_device(&mut self, did: u16, sid: u16) -> Result<(), Text> {
        self.submit(qi::context_cache(qi::GRANULARITY_SELECTIVE, did, sid))
    }

    /// Global IOTLB invalidation (+ wait).
    pub fn flush_iotlb_global(&mut self) -> Result<(), Text> {
        self.submit(qi::iotlb(qi::GRANULARITY_GLOBAL, 0, 0, 0))
    }

    /// Domain-selective IOTLB invalidation (+ wait).
    pub fn flush_iotlb_domain(&mut self, did: u16) -> Result<(), Text> {
        self.submit(qi::iotlb(qi::GRANULARITY_DOMAIN, did, 0, 0))
    }

    /// Page-selective IOTLB invalidation of 2^`am` pages at `iova` in `did` (+ wait).
    pub fn flush_iotlb_pages(&mut self, did: u16, iova: u64, am: u8) -> Result<(), Text> {
        self.submit(qi::iotlb(qi::GRANULARITY_SELECTIVE, did, iova, am))
    }
}
