//! Driving an Intel VT-d remapping unit's interrupt remapping the way Linux does
//! (`drivers/iommu/intel/irq_remapping.c`, `dmar.c`), register by register.
//!
//! [`Vtd::enable`] runs Linux's order: queued invalidation on (IQT = 0, IQA = the queue page
//! with QS = 0, GCMD.QIE, wait for GSTS.QIES), then the table (IRTA = base | EIME | S,
//! GCMD.SIRTP, wait for GSTS.IRTPS), a global interrupt-entry-cache invalidation followed by
//! a wait descriptor whose status write is polled, then GCMD.IRE with CFI clear (wait for
//! GSTS.IRES; compatibility-format interrupts stay blocked). GCMD is written as GSTS with the
//! one-shot bits masked (Linux's `sts & 0x96ffffff`) plus or minus the bit being changed.
//!
//! After that the scenarios write entries ([`Vtd::set_irte`]) and invalidate them
//! ([`Vtd::invalidate_entries`]) exactly as a driver must: a unit may keep using a cached
//! entry until it is invalidated. The queue ([`qi`]), the entry format ([`irte`]) and fault
//! logging ([`fault`]) live in submodules. The probe drives one unit, from the BSP only.

pub mod dma;
pub mod fault;
pub mod irte;
pub mod posted;
pub mod qi;

use core::sync::atomic::{AtomicBool, Ordering};

use crate::clock::Clock;
use crate::mmio::Mmio;
use crate::report::Text;
use crate::{text, x86};

pub use irte::Irte;

/// Size of a unit's register window.
pub(crate) const REGS_SIZE: u64 = 0x1000;

/// Version register (32-bit).
pub(crate) const VER_REG: u64 = 0x00;
/// Capability register (64-bit).
pub(crate) const CAP_REG: u64 = 0x08;
/// Extended capability register (64-bit).
pub(crate) const ECAP_REG: u64 = 0x10;
/// Global command register (32-bit, write-only).
pub(crate) const GCMD_REG: u64 = 0x18;
/// Global status register (32-bit).
pub(crate) const GSTS_REG: u64 = 0x1c;
/// Fault status register (32-bit).
pub(crate) const FSTS_REG: u64 = 0x34;
/// Interrupt remapping table address register (64-bit).
pub(crate) const IRTA_REG: u64 = 0xb8;

/// ECAP.QI: queued invalidation.
const ECAP_QI: u64 = 1 << 1;
/// ECAP.IR: interrupt remapping.
const ECAP_IR: u64 = 1 << 3;
/// ECAP.EIM: extended interrupt mode (32-bit x2APIC destinations).
const ECAP_EIM: u64 = 1 << 4;

/// GCMD/GSTS bit 31: translation enable (DMA remapping; never set by the probe).
pub(crate) const GCMD_TE: u32 = 1 << 31;
/// GCMD bit 30: set root table pointer (one-shot).
pub(crate) const GCMD_SRTP: u32 = 1 << 30;
/// GCMD bit 29: set fault log (one-shot).
pub(crate) const GCMD_SFL: u32 = 1 << 29;
/// GCMD bit 27: write buffer flush (one-shot).
pub(crate) const GCMD_WBF: u32 = 1 << 27;
/// GCMD/GSTS bit 26: queued invalidation enable / status.
pub(crate) const GCMD_QIE: u32 = 1 << 26;
/// GCMD/GSTS bit 25: interrupt remapping enable / status.
pub(crate) const GCMD_IRE: u32 = 1 << 25;
/// GCMD bit 24: set interrupt remap table pointer (one-shot); GSTS bit 24: IRTPS.
pub(crate) const GCMD_SIRTP: u32 = 1 << 24;
/// GCMD/GSTS bit 23: compatibility-format interrupts allowed / status.
pub(crate) const GCMD_CFI: u32 = 1 << 23;
/// GSTS bits that mirror one-shot GCMD bits: never written back (Linux masks them the same
/// way, `sts & 0x96ffffff`), or each GCMD write would repeat the one-shot operation.
pub(crate) const GCMD_ONE_SHOT: u32 = GCMD_SRTP | GCMD_SFL | GCMD_WBF | GCMD_SIRTP;

/// IRTA.EIME (bit 11): extended interrupt mode, 32-bit destination IDs.
pub(crate) const IRTA_EIME: u64 = 1 << 11;
/// Most entries the probe's table holds, as log2 (Linux's 65536, IRTA.S = 15).
pub const TABLE_LOG2_MAX: u32 = irte::TABLE_LOG2_MAX;
/// The table size Linux uses, as log2.
pub const TABLE_LOG2_LINUX: u32 = 16;

/// How long the unit gets to reflect a GCMD change in GSTS or finish a wait descriptor
/// (both VMMs do it during the register write; this only bounds a broken one).
const COMMAND_TIMEOUT_NS: u64 = 1_000_000_000;

/// Set once a unit has been enabled: the queue and table memory belong to it.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// An enabled unit with interrupt remapping on, in x2APIC mode.
pub struct Vtd {
    regs: Mmio,
    clock: Clock,
    cap: u64,
    ecap: u64,
    queue: qi::Queue,
    table_entries: u32,
}

impl Vtd {
    /// Checks the unit at `base` (QI, IR and EIM in ECAP), enables queued invalidation and
    /// interrupt remapping with a zeroed table of 2^`table_log2` entries in Linux's order,
    /// and returns it. Call once per boot, on the BSP.
    pub fn enable(base: u64, clock: Clock, table_log2: u32) -> Result<Vtd, Text> {
        if !(1..=TABLE_LOG2_MAX).contains(&table_log2) {
            return Err(text!("table of 2^{} entries not supported", table_log2));
        }
        if CLAIMED.swap(true, Ordering::AcqRel) {
            return Err(text!("a VT-d unit is already enabled"));
        }
        let regs = Mmio::new("VT-d", base, REGS_SIZE)?;
        let ver = regs.read32(VER_REG);
        let cap = regs.read64(CAP_REG);
        let ecap = regs.read64(ECAP_REG);
        let needed = ECAP_QI | ECAP_IR | ECAP_EIM;
        if ecap & needed != needed {
            return Err(text!(
                "VT-d unit at 0x{:x} (VER 0x{:x}) ECAP 0x{:x} lacks QI/IR/EIM (needs 0x{:x})",
                base,
                ver,
                ecap,
                needed
            ));
        }
        let gsts = regs.read32(GSTS_REG);
        if gsts & (GCMD_QIE | GCMD_IRE | GCMD_TE) != 0 {
            return Err(text!(
                "VT-d unit at 0x{:x} already has QI/IR/DMA remapping on (GSTS 0x{:08x})",
                base,
                gsts
            ));
        }
        let mut vtd = Vtd {
            regs,
            clock,
            cap,
            ecap,
            queue: qi::Queue::claim(),
            table_entries: 1 << table_log2,
        };

        // 1. Queued invalidation.
        vtd.regs.write64(qi::IQT_REG, 0);
        vtd.regs.write64(qi::IQA_REG, vtd.queue.iqa());
        vtd.command(GCMD_QIE, 0)?;
        // 2. The table, in x2APIC mode.
        irte::clear_table(vtd.table_entries);
        let irta = irte::table_address() | IRTA_EIME | u64::from(table_log2 - 1);
        vtd.regs.write64(IRTA_REG, irta);
        vtd.command(GCMD_SIRTP, 0)?;
        // 3. Nothing cached from before may survive.
        vtd.invalidate_all()?;
        // 4. Remapping on, compatibility-format interrupts blocked.
        vtd.command(GCMD_IRE, GCMD_CFI)?;
        let gsts = vtd.gsts();
        if gsts & GCMD_CFI != 0 {
            return Err(text!(
                "GSTS.CFIS still set after clearing CFI (GSTS 0x{:08x})",
                gsts
            ));
        }
        Ok(vtd)
    }

    /// Reads the version register: a register access with no effect, for timing the VMM's
    /// round trip.
    pub fn version(&self) -> u32 {
        self.regs.read32(VER_REG)
    }

    /// The capability register.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The extended capability register.
    pub fn ecap(&self) -> u64 {
        self.ecap
    }

    /// The global status register.
    pub fn gsts(&self) -> u32 {
        self.regs.read32(GSTS_REG)
    }

    /// The fault status register.
    pub fn fsts(&self) -> u32 {
        self.regs.read32(FSTS_REG)
    }

    /// Entries in the table (2^(IRTA.S + 1)).
    pub fn table_entries(&self) -> u32 {
        self.table_entries
    }

    /// The register window.
    pub(crate) fn regs(&self) -> &Mmio {
        &self.regs
    }

    /// Writes GCMD = (GSTS without one-shot bits and without `clear`) | `set`, then waits
    /// until GSTS shows every bit of `set` (IRTPS for SIRTP) and none of `clear`.
    fn command(&self, set: u32, clear: u32) -> Result<(), Text> {
        let gsts = self.gsts();
        let gcmd = (gsts & !GCMD_ONE_SHOT & !clear) | set;
        self.regs.write32(GCMD_REG, gcmd);
        let deadline = self.clock.now_ns() + COMMAND_TIMEOUT_NS;
        loop {
            let now = self.gsts();
            if now & set == set && now & clear == 0 {
                return Ok(());
            }
            if self.clock.now_ns() >= deadline {
                return Err(text!(
                    "GCMD 0x{:08x} (set 0x{:x}, clear 0x{:x}): GSTS still 0x{:08x} after {} ms",
                    gcmd,
                    set,
                    clear,
                    now,
                    COMMAND_TIMEOUT_NS / 1_000_000
                ));
            }
            x86::pause();
        }
    }

    /// Writes entry `index` of the table (high qword first, so a present bit never
    /// precedes the rest). The unit may keep using its cached copy until
    /// [`Vtd::invalidate_entries`] covers the index.
    pub fn set_irte(&self, index: u32, entry: Irte) -> Result<(), Text> {
        if index >= self.table_entries {
            return Err(text!(
                "IRTE {} beyond the table's {} entries",
                index,
                self.table_entries
            ));
        }
        irte::write_entry(index, entry);
        Ok(())
    }

    /// Invalidates the interrupt entry cache globally, then waits for the unit to confirm.
    pub fn invalidate_all(&mut self) -> Result<(), Text> {
        self.queue_and_wait(qi::iec_global())
    }

    /// Invalidates the cached entries `index .. index + 2^mask_log2` (index-selective, IM =
    /// `mask_log2`; `index` must be aligned to it), then waits for the unit to confirm.
    pub fn invalidate_entries(&mut self, index: u32, mask_log2: u32) -> Result<(), Text> {
        let desc = qi::iec_index(index, mask_log2)?;
        self.queue_and_wait(desc)
    }

    /// Submits `desc` (any descriptor) and a wait descriptor with a status write, and
    /// polls the status.
    pub(crate) fn submit(&mut self, desc: qi::Descriptor) -> Result<(), Text> {
        self.queue_and_wait(desc)
    }

    /// Submits `desc` and a wait descriptor with a status write, and polls the status.
    fn queue_and_wait(&mut self, desc: qi::Descriptor) -> Result<(), Text> {
        let regs = self.regs;
        let clock = self.clock;
        self.queue.submit_and_wait(&regs, &clock, desc)
    }
}
