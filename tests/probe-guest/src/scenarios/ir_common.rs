//! Shared parts of the interrupt-remapping scenarios (`ir-basic`, `ir-ioapic`, `ir-faults`,
//! `ir-many`): finding the remapping unit through the DMAR, telling the VMMs apart, enabling
//! remapping, choosing target CPUs, waiting for and checking deliveries.

use super::platform;
use super::smp::Smp;
use super::Context;
use crate::acpi::dmar::{self, Dmar, Drhd};
use crate::clock::Clock;
use crate::pci::Function;
use crate::report::Text;
use crate::tally::Tally;
use crate::vtd::Vtd;
use crate::{irq, sprintln, text};

/// How long an interrupt that should arrive gets.
pub const DELIVERY_TIMEOUT_NS: u64 = 3_000_000_000;
/// After the expected interrupts arrived, how long to watch for stray ones.
pub const SETTLE_NS: u64 = 30_000_000;
/// Highest APIC ID an xAPIC (8-bit) destination can name.
pub const MAX_XAPIC_ID: u32 = 0xff;
/// Nanoseconds per millisecond, for messages.
pub const NS_PER_MS: u64 = 1_000_000;

/// The VMM, told by the DMAR's OEM ID: some checks are strict only where the VMM documents
/// the behaviour (irvmm's routes are an interrupt entry cache; QEMU re-reads entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vmm {
    /// OEM ID "IRVMM ".
    Irvmm,
    /// OEM ID "BOCHS " (QEMU's ACPI tables).
    Qemu,
    /// Anything else.
    Other,
}

impl Vmm {
    fn from_oem_id(oem: &[u8; 6]) -> Vmm {
        match oem {
            b"IRVMM " => Vmm::Irvmm,
            b"BOCHS " => Vmm::Qemu,
            _ => Vmm::Other,
        }
    }

    /// Short name for progress lines.
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Irvmm => "irvmm",
            Vmm::Qemu => "qemu",
            Vmm::Other => "other",
        }
    }
}

/// The remapping hardware as the DMAR describes it.
pub struct IrPlatform {
    /// The parsed DMAR.
    pub dmar: Dmar,
    /// Which VMM made the tables.
    pub vmm: Vmm,
}

impl IrPlatform {
    /// The unit that remaps PCI function `function`'s interrupts.
    pub fn pci_unit(&self, function: Function) -> Result<Drhd, Text> {
        let (_, unit) = self.dmar.pci_unit(function.sid())?;
        Ok(unit)
    }
}

/// Finds and checks the DMAR; fails when the platform offers no interrupt remapping or
/// opts out of x2APIC.
pub fn discover(ctx: &Context) -> Result<IrPlatform, Text> {
    let tables = platform::tables(ctx)?;
    let table = tables.find(b"DMAR").ok_or_else(|| {
        text!("no DMAR table (irvmm: --iommu intel; QEMU: -device intel-iommu,intremap=on,eim=on)")
    })?;
    let dmar = Dmar::parse(table)?;
    if dmar.flags & dmar::FLAG_INTR_REMAP == 0 {
        return Err(text!("DMAR flags 0x{:x}: INTR_REMAP clear", dmar.flags));
    }
    if dmar.flags & dmar::FLAG_X2APIC_OPT_OUT != 0 {
        return Err(text!("DMAR flags 0x{:x}: X2APIC_OPT_OUT set", dmar.flags));
    }
    let vmm = Vmm::from_oem_id(&dmar.oem_id);
    sprintln!(
        "ir: DMAR oem=\"{}\" ({}) flags=0x{:x} units={} endpoint scopes={}",
        dmar.oem(),
        vmm.name(),
        dmar.flags,
        dmar.units().len(),
        dmar.endpoint_scopes()
    );
    Ok(IrPlatform { dmar, vmm })
}

/// Enables queued invalidation and interrupt remapping (x2APIC mode) on `unit` with a
/// table of 2^`table_log2` entries, and prints the unit's state.
pub fn enable(unit: &Drhd, clock: Clock, table_log2: u32) -> Result<Vtd, Text> {
    let begin = clock.now_ns();
    let vtd = Vtd::enable(unit.base, clock, table_log2)?;
    sprintln!(
        "vtd: unit 0x{:x} CAP 0x{:x} ECAP 0x{:x} GSTS 0x{:08x}: remapping on, x2APIC mode, {} entries ({} ms)",
        unit.base,
        vtd.cap(),
        vtd.ecap(),
        vtd.gsts(),
        vtd.table_entries(),
        clock.now_ns().saturating_sub(begin) / NS_PER_MS
    );
    Ok(vtd)
}

/// The highest AP APIC ID, which must be above 255.
pub fn highest_ap(smp: &Smp) -> Result<u32, Text> {
    let id = smp
        .cpus
        .ids()
        .iter()
        .copied()
        .rfind(|&id| id != smp.bsp_id)
        .unwrap_or(smp.bsp_id);
    if id == smp.bsp_id || id <= MAX_XAPIC_ID {
        return Err(text!(
            "highest AP APIC ID is {} (needs > {}: run with more than 256 vCPUs)",
            id,
            MAX_XAPIC_ID
        ));
    }
    Ok(id)
}

/// Waits in `sti; hlt` until `done()` or `timeout_ns` from now; returns `done()`'s last value.
pub fn wait(clock: &Clock, timeout_ns: u64, done: impl FnMut() -> bool) -> bool {
    irq::wait_until(clock, clock.now_ns() + timeout_ns, done)
}

/// Keeps taking interrupts for `ns`.
pub fn settle(clock: &Clock, ns: u64) {
    wait(clock, ns, || false);
}

/// Checks that `tally` counted exactly `count` interrupts on APIC ID `id` and none anywhere
/// else; the failure names `what` and the CPUs that took interrupts.
pub fn expect_only(tally: &Tally, id: u32, count: u32, what: &str) -> Result<(), Text> {
    let (hits, total) = (tally.hits(id), tally.total());
    if hits == count && total == count {
        return Ok(());
    }
    Err(text!(
        "{}: {} interrupts on APIC ID {} and {} in all, expected {} there only; {}",
        what,
        hits,
        id,
        total,
        count,
        Takers(tally)
    ))
}

/// Display adaptor: `taken by IDs [a, b, ...]` (first few).
pub struct Takers<'a>(pub &'a Tally);

impl core::fmt::Display for Takers<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const SHOW: usize = 4;
        let mut ids = [0u32; SHOW];
        let n = self.0.takers(&mut ids);
        write!(f, "taken by IDs {:?}", &ids[..n.min(SHOW)])?;
        if n > SHOW {
            write!(f, " and {} more", n - SHOW)?;
        }
        Ok(())
    }
}
