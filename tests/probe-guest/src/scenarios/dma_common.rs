//! Shared parts of the DMA-remapping scenarios (`dma-basic`, `dma-faults`, `dma-inval`,
//! `dma-superpage`, `dma-bench`, and `vfio-dma-remap`): the unit found through the DMAR
//! (queued invalidation and interrupt remapping enabled first, as Linux does), its DMA
//! capabilities checked, the root and context tables and one domain's second-level table
//! built in the DMA arena, translation enabled for one device, the fault event routed to
//! the BSP; guest pages filled with patterns and compared; DMA faults collected.
//!
//! Every table change is followed by the invalidation caching mode asks for (a
//! page-selective IOTLB invalidation after each new mapping too), so the scenarios are
//! correct on any unit, with or without CAP.CM.

use super::ir_common::{self, IrPlatform, Vmm, SETTLE_NS};
use super::smp::{self, Smp};
use super::vfio_common;
use super::Context;
use crate::clock::Clock;
use crate::prng::Rng;
use crate::report::Text;
use crate::tally::{self, EVENT};
use crate::vtd::dma::{Arena, DmaCaps, Domain, RootTable, PAGE_4K};
use crate::vtd::fault::{FaultRecord, FSTS_PFO, FSTS_PPF};
use crate::vtd::Vtd;
use crate::{irq, sprintln, text};

/// The domain the device under test is put in.
pub const DOMAIN_ID: u16 = 7;
/// Bytes of RAM the arena takes: 2 MiB for a superpage target, then tables and pages.
pub const ARENA_BYTES: u64 = 8 << 20;
/// The fault event's vector (to the BSP).
pub const EVENT_VECTOR: u8 = irq::TEST_VECTOR_C;
/// log2 of the interrupt remapping table the scenarios enable (they use no entries).
const IR_TABLE_LOG2: u32 = 8;
/// How long a DMA gets (QEMU's edu finishes 100 ms after the command).
pub const DMA_TIMEOUT_NS: u64 = 2_000_000_000;
/// How long a fault gets to be recorded and signalled.
pub const FAULT_TIMEOUT_NS: u64 = 1_000_000_000;
/// Most fault records read per check.
pub const MAX_RECORDS: usize = 8;
/// Bytes per edu DMA: half a page. QEMU 7.2's edu aborts ("DMA range ... out of bounds")
/// on a transfer that ends at the end of its 4 KiB buffer (an off-by-one in its range
/// check), so no transfer here uses the whole buffer.
pub const DMA_BYTES: u64 = 2048;
/// Dwords per 4 KiB page.
pub const DWORDS: u64 = PAGE_4K / 4;
/// Dwords of a pattern (one DMA's worth).
pub const PATTERN_DWORDS: u64 = DMA_BYTES / 4;

/// A unit with DMA translation on for one device, in domain [`DOMAIN_ID`].
pub struct Rig {
    /// BSP, clock.
    pub smp: Smp,
    /// The DMAR and the VMM it names.
    pub platform: IrPlatform,
    /// The unit.
    pub vtd: Vtd,
    /// Its DMA capabilities.
    pub caps: DmaCaps,
    /// Free RAM for tables and pages.
    pub arena: Arena,
    /// Root and bus 0 context table.
    pub roots: RootTable,
    /// The device's domain.
    pub domain: Domain,
    /// The device's requester ID.
    pub sid: u16,
}

/// Brings the unit up for `sid` (a PCI function on bus 0 that the unit covers): QI and
/// interrupt remapping, root table, `sid`'s context translated through an empty
/// [`DOMAIN_ID`] table of the deepest supported kind, translation enabled, fault events to
/// the BSP. `name` prefixes the progress line.
pub fn bring_up(ctx: &Context, name: &str, function: crate::pci::Function) -> Result<Rig, Text> {
    let smp = smp::prepare(ctx)?;
    let platform = ir_common::discover(ctx)?;
    let vtd = ir_common::enable(&platform.pci_unit(function)?, smp.clock, IR_TABLE_LOG2)?;
    translate(ctx, name, smp, platform, vtd, function)
}

/// The second half of [`bring_up`], for a unit whose queued invalidation and interrupt
/// remapping are already on (a scenario that set up its device's interrupts first): the
/// tables, `function`'s context through an empty [`DOMAIN_ID`] table, translation on,
/// fault events to the BSP.
pub fn translate(
    ctx: &Context,
    name: &str,
    smp: Smp,
    platform: IrPlatform,
    mut vtd: Vtd,
    function: crate::pci::Function,
) -> Result<Rig, Text> {
    let ram_end = vfio_common::ram_end(&ctx.start_info)?;
    irq::set_handler(EVENT_VECTOR, tally::on_event)?;
    let caps = vtd.dma_caps();
    let levels = caps.levels().ok_or_else(|| {
        text!(
            "the unit offers no DMA translation (CAP.SAGAW 0x{:x}; QEMU: intel-iommu without dma-translation=off)",
            caps.sagaw
        )
    })?;
    vtd.route_fault_events(EVENT_VECTOR, smp.bsp_id);
    if vtd.fsts() & (FSTS_PPF | FSTS_PFO) != 0 {
        return Err(text!(
            "faults pending before the test: FSTS 0x{:x}",
            vtd.fsts()
        ));
    }
    let mut arena = Arena::claim(ram_end, ARENA_BYTES)?;
    let roots = RootTable::new(&mut arena)?;
    let domain = Domain::new(&mut arena, DOMAIN_ID, levels)?;
    let sid = function.sid();
    roots.translate(sid, &domain, false)?;
    vtd.set_root_table(roots.root)?;
    vtd.enable_translation()?;
    sprintln!(
        "{}: {} {} sid=0x{:04x}; unit SAGAW=0x{:x} MGAW={} SLLPS=0x{:x} CM={} PSI={} MAMV={} PT={}; domain {} {}-level; translation on (GSTS 0x{:08x})",
        name,
        platform.vmm.name(),
        function,
        sid,
        caps.sagaw,
        caps.mgaw,
        caps.sllps,
        u8::from(caps.caching_mode),
        u8::from(caps.psi),
        caps.mamv,
        u8::from(caps.pass_through),
        DOMAIN_ID,
        levels,
        vtd.gsts()
    );
    Ok(Rig {
        smp,
        platform,
        vtd,
        caps,
        arena,
        roots,
        domain,
        sid,
    })
}

impl Rig {
    /// The clock.
    pub fn clock(&self) -> Clock {
        self.smp.clock
    }

    /// True on irvmm (checks that hold only where the VMM documents the behaviour).
    pub fn irvmm(&self) -> bool {
        self.platform.vmm == Vmm::Irvmm
    }

    /// A fresh zeroed page.
    pub fn page(&mut self) -> Result<u64, Text> {
        self.arena.page()
    }

    /// Maps one 4 KiB page and invalidates it (page-selective when the unit has PSI,
    /// else domain-selective).
    pub fn map(&mut self, iova: u64, gpa: u64, size: u64, perms: u64) -> Result<(), Text> {
        self.domain.map(&mut self.arena, iova, gpa, size, perms)?;
        self.invalidate(iova, size)
    }

    /// Unmaps the page of `size` at `iova` and invalidates it.
    pub fn unmap(&mut self, iova: u64, size: u64) -> Result<(), Text> {
        self.domain.unmap(&mut self.arena, iova, size)?;
        self.invalidate(iova, size)
    }

    /// Invalidates the IOTLB for `[iova, iova + size)` (one page-selective invalidation
    /// when PSI and MAMV allow it, else domain-selective).
    pub fn invalidate(&mut self, iova: u64, size: u64) -> Result<(), Text> {
        let am = (size / PAGE_4K).trailing_zeros() as u8;
        if self.caps.psi && am <= self.caps.mamv {
            self.vtd.flush_iotlb_pages(DOMAIN_ID, iova, am)
        } else {
            self.vtd.flush_iotlb_domain(DOMAIN_ID)
        }
    }

    /// The context of the device: translated with `fpd`, then a device-selective
    /// context-cache invalidation and a domain-selective IOTLB invalidation.
    pub fn set_fpd(&mut self, fpd: bool) -> Result<(), Text> {
        self.roots.translate(self.sid, &self.domain, fpd)?;
        self.vtd.flush_context_device(DOMAIN_ID, self.sid)?;
        self.vtd.flush_iotlb_domain(DOMAIN_ID)
    }

    /// The fault records with F set (cleared), and the fault events since `events0`.
    pub fn take_faults(&self, out: &mut [FaultRecord; MAX_RECORDS]) -> usize {
        let n = self.vtd.pending_faults(out);
        for r in &out[..n.min(MAX_RECORDS)] {
            self.vtd.clear_fault(r.slot);
        }
        n
    }

    /// Waits up to `timeout_ns` for a fault event and a record (both), then settles.
    pub fn wait_fault(&self, events0: u32, timeout_ns: u64) {
        let clock = self.clock();
        ir_common::wait(&clock, timeout_ns, || {
            EVENT.total() > events0 && self.vtd.pending_faults(&mut []) > 0
        });
        ir_common::settle(&clock, SETTLE_NS);
    }

    /// Checks that exactly one fault was recorded and signalled since `events0`, with
    /// `reason`, the device's SID, the page of `iova` and direction `read` (FRCD.T);
    /// clears it. `what` names the case.
    pub fn expect_fault(
        &self,
        what: &str,
        events0: u32,
        reason: u8,
        iova: u64,
        read: bool,
    ) -> Result<(), Text> {
        self.wait_fault(events0, FAULT_TIMEOUT_NS);
        let fsts = self.vtd.fsts();
        let mut records = [FaultRecord {
            slot: 0,
            low: 0,
            high: 0,
        }; MAX_RECORDS];
        let n = self.take_faults(&mut records);
        let events = EVENT.total() - events0;
        let first = records.first().filter(|_| n > 0);
        match first {
            Some(r) => sprintln!(
                "{}: events={} FSTS=0x{:x} records={} [fr=0x{:02x} sid=0x{:04x} addr=0x{:x} {}]",
                what,
                events,
                fsts,
                n,
                r.reason(),
                r.sid(),
                r.dma_address(),
                if r.dma_read() { "read" } else { "write" }
            ),
            None => sprintln!("{}: events={} FSTS=0x{:x} records=0", what, events, fsts),
        }
        let r = first
            .ok_or_else(|| text!("{}: no fault record (reason 0x{:x} expected)", what, reason))?;
        if n != 1 {
            return Err(text!("{}: {} fault records, expected 1", what, n));
        }
        if r.reason() != reason
            || r.sid() != self.sid
            || r.dma_address() != iova & !0xfff
            || r.dma_read() != read
        {
            return Err(text!(
                "{}: record reason 0x{:x} sid 0x{:04x} address 0x{:x} read={}, expected 0x{:x} 0x{:04x} 0x{:x} read={}",
                what,
                r.reason(),
                r.sid(),
                r.dma_address(),
                r.dma_read(),
                reason,
                self.sid,
                iova & !0xfff,
                read
            ));
        }
        if fsts & FSTS_PPF == 0 {
            return Err(text!("{}: FSTS 0x{:x} without PPF", what, fsts));
        }
        if events != 1 || EVENT.hits(self.smp.bsp_id) != EVENT.total() {
            return Err(text!(
                "{}: {} fault events, expected 1 on the BSP",
                what,
                events
            ));
        }
        if self.vtd.fsts() & (FSTS_PPF | FSTS_PFO) != 0 {
            return Err(text!(
                "{}: FSTS 0x{:x} after clearing the record",
                what,
                self.vtd.fsts()
            ));
        }
        Ok(())
    }

    /// Checks that nothing was recorded or signalled since `events0` within `watch_ns`.
    pub fn expect_no_fault(&self, what: &str, events0: u32, watch_ns: u64) -> Result<(), Text> {
        ir_common::settle(&self.clock(), watch_ns);
        let mut records = [FaultRecord {
            slot: 0,
            low: 0,
            high: 0,
        }; MAX_RECORDS];
        let n = self.take_faults(&mut records);
        let events = EVENT.total() - events0;
        sprintln!("{}: events={} records={}", what, events, n);
        if n != 0 || events != 0 {
            return Err(text!(
                "{}: {} records and {} events, expected none",
                what,
                n,
                events
            ));
        }
        Ok(())
    }
}

/// Dword `i` of the 4 KiB page at `page`.
pub fn read_dword(page: u64, i: u64) -> u32 {
    // SAFETY: `page` is an arena page (identity-mapped RAM the DMA scenarios own) and
    // `i < DWORDS` (callers iterate over 0..DWORDS).
    unsafe { core::ptr::read_volatile((page + 4 * (i % DWORDS)) as *const u32) }
}

/// Writes dword `i` of the 4 KiB page at `page`.
pub fn write_dword(page: u64, i: u64, value: u32) {
    // SAFETY: as for `read_dword`.
    unsafe { core::ptr::write_volatile((page + 4 * (i % DWORDS)) as *mut u32, value) }
}

/// The pattern of `seed` (one DMA's worth of dwords).
pub fn pattern(seed: u64) -> impl Iterator<Item = u32> {
    let mut rng = Rng::new(seed);
    (0..PATTERN_DWORDS).map(move |_| rng.next_u32())
}

/// Fills the start of the page at `page` with `seed`'s pattern.
pub fn fill(page: u64, seed: u64) {
    for (i, v) in pattern(seed).enumerate() {
        write_dword(page, i as u64, v);
    }
}

/// Fills the page at `page` with `value`.
pub fn fill_with(page: u64, value: u32) {
    for i in 0..DWORDS {
        write_dword(page, i, value);
    }
}

/// True when the start of the page at `page` holds `seed`'s pattern.
pub fn holds(page: u64, seed: u64) -> bool {
    pattern(seed)
        .enumerate()
        .all(|(i, v)| read_dword(page, i as u64) == v)
}

/// True when every dword of the page at `page` is `value`.
pub fn holds_value(page: u64, value: u32) -> bool {
    (0..DWORDS).all(|i| read_dword(page, i) == value)
}

/// Checks that the start of the page at `page` holds `seed`'s pattern; names the first
/// difference.
pub fn expect_pattern(what: &str, page: u64, seed: u64) -> Result<(), Text> {
    for (i, want) in pattern(seed).enumerate() {
        let got = read_dword(page, i as u64);
        if got != want {
            return Err(text!(
                "{}: dword {} of page 0x{:x} reads 0x{:08x}, expected 0x{:08x}",
                what,
                i,
                page,
                got,
                want
            ));
        }
    }
    Ok(())
}
