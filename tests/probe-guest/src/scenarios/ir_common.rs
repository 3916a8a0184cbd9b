//! Shared parts of the interrupt-remapping scenarios (`ir-basic`, `ir-ioapic`, `ir-faults`,
//! `ir-many`): finding the remapping unit through the DMAR, telling the VMMs apart, enabling
//! remapping, choosing target CPUs, waiting for and checking deliveries.
//!
//! The choice of targets, the deliveries and their checks are also the AMD-Vi twins'
//! (`amd-ir-basic`, `amd-ir-ioapic`, `amd-ir-many`): those helpers take the scenario's name
//! for their progress lines and leave everything the unit does to the caller.

use super::ioapic_extdest::raise_com1_interrupt;
use super::platform;
use super::smp::Smp;
use super::Context;
use crate::acpi::dmar::{self, Dmar, Drhd};
use crate::clock::Clock;
use crate::edu::{self, Edu};
use crate::ioapic::{self, IoApic, IsaRoute};
use crate::msi::MsiX;
use crate::pci::Function;
use crate::report::Text;
use crate::tally::{self, Tally, DEVICE, MAX_ID};
use crate::vtd::Vtd;
use crate::{irq, serial, sprintln, text};

/// How long an interrupt that should arrive gets.
pub const DELIVERY_TIMEOUT_NS: u64 = 3_000_000_000;
/// After the expected interrupts arrived, how long to watch for stray ones.
pub const SETTLE_NS: u64 = 30_000_000;
/// Highest APIC ID an xAPIC (8-bit) destination can name.
pub const MAX_XAPIC_ID: u32 = 0xff;
/// Nanoseconds per millisecond, for messages.
pub const NS_PER_MS: u64 = 1_000_000;
/// COM1's ISA IRQ, which the `ioapic` scenarios remap.
pub const COM1_IRQ: u8 = 4;

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

/// The two targets of the `basic` scenarios: the highest AP (`from`, above APIC ID 255, see
/// [`highest_ap`]) and the first other AP in MADT order (`to`).
pub fn from_and_to(smp: &Smp) -> Result<(u32, u32), Text> {
    let from = highest_ap(smp)?;
    let to = smp
        .cpus
        .ids()
        .iter()
        .copied()
        .find(|&id| id != smp.bsp_id && id != from)
        .ok_or_else(|| text!("needs a second AP"))?;
    Ok((from, to))
}

/// The `many` scenarios' device: irvmm's edu-msix (1234:11e9) and its MSI-X capability,
/// which must have at least `vectors` vectors.
pub fn find_edu_msix(vectors: usize) -> Result<(Edu, MsiX), Text> {
    let edu = Edu::find(edu::EDU_MSIX_DEVICE_ID)?;
    let msix = MsiX::find(edu.function)?;
    if usize::from(msix.vectors()) < vectors {
        return Err(text!(
            "{} has {} MSI-X vectors, needs {}",
            edu.function,
            msix.vectors(),
            vectors
        ));
    }
    Ok((edu, msix))
}

/// `N` (at least 2) target CPUs picked evenly from the sorted APIC IDs, lowest and highest
/// included; fails when an APIC ID is beyond what the tallies count.
pub fn spread_targets<const N: usize>(smp: &Smp) -> Result<[u32; N], Text> {
    let ids = smp.cpus.ids();
    if ids.iter().any(|&id| id >= MAX_ID) {
        return Err(text!(
            "APIC IDs reach {} (the probe counts below {})",
            smp.cpus.max_id(),
            MAX_ID
        ));
    }
    let mut targets = [0u32; N];
    for (j, t) in targets.iter_mut().enumerate() {
        *t = ids[j * (ids.len() - 1) / (N - 1)];
    }
    Ok(targets)
}

/// The `many` scenarios' deliveries: MSI-X vector j of `edu` goes through entry
/// `first_entry + j` to `targets[j]` (sorted, as [`spread_targets`] picks them). Raises one
/// vector at a time and waits until its target has taken it, then watches for strays,
/// stops the tick, prints `<name>: N interrupts in T ms` and checks that every target took
/// exactly its share in [`DEVICE`] and nobody else anything.
pub fn deliver_spread(
    name: &str,
    edu: &Edu,
    clock: &Clock,
    targets: &[u32],
    first_entry: u32,
) -> Result<(), Text> {
    let begin = clock.now_ns();
    let mut share = 0;
    for (j, &t) in targets.iter().enumerate() {
        // Targets are sorted: how many of the vectors so far go to `t`.
        share = if j > 0 && targets[j - 1] == t {
            share + 1
        } else {
            1
        };
        edu.trigger_msix(j as u16);
        if !wait(clock, DELIVERY_TIMEOUT_NS, || DEVICE.hits(t) >= share) {
            return Err(text!(
                "MSI-X vector {} (IRTE 0x{:x}) not on APIC ID {} within {} ms; {} in all, {}",
                j,
                first_entry + j as u32,
                t,
                DELIVERY_TIMEOUT_NS / NS_PER_MS,
                DEVICE.total(),
                Takers(&DEVICE)
            ));
        }
    }
    let elapsed_ms = clock.now_ns().saturating_sub(begin) / NS_PER_MS;
    settle(clock, SETTLE_NS);
    irq::stop_tick();
    sprintln!(
        "{}: {} interrupts in {} ms",
        name,
        DEVICE.total(),
        elapsed_ms
    );
    for (j, &t) in targets.iter().enumerate() {
        let share = targets.iter().filter(|&&x| x == t).count() as u32;
        if DEVICE.hits(t) != share {
            return Err(text!(
                "APIC ID {} (vector {}) took {} interrupts, expected {}",
                t,
                j,
                DEVICE.hits(t),
                share
            ));
        }
    }
    if DEVICE.total() as usize != targets.len() {
        return Err(text!(
            "{} interrupts for {} vectors; {}",
            DEVICE.total(),
            targets.len(),
            Takers(&DEVICE)
        ));
    }
    Ok(())
}

/// The edu interrupt-status bit the `basic` scenarios raise.
const EDU_RAISE_BIT: u32 = 1;

/// Makes the edu device send its MSI once and waits until [`DEVICE`] reaches `total`
/// receipts (or the deadline), then watches for strays; returns whether the total was
/// reached.
pub fn fire_edu(edu: &Edu, clock: &Clock, total: u32) -> bool {
    edu.raise(EDU_RAISE_BIT);
    let arrived = wait(clock, DELIVERY_TIMEOUT_NS, || DEVICE.total() >= total);
    settle(clock, SETTLE_NS);
    edu.ack(EDU_RAISE_BIT);
    arrived
}

/// Step 2 of the `basic` scenarios, after the entry was rewritten from `from` to `to`
/// without telling the unit and the second raise (`arrived`: whether [`DEVICE`] reached 2).
/// The unit may have used its cached entry (the interrupt went to `from` again) or re-read
/// the entry (it went to `to`); irvmm documents the first, so there only that passes.
/// Prints `<name>: before invalidation the interrupt went to ...`; returns the receipts
/// on `from` and on `to`.
pub fn check_unannounced(
    name: &str,
    vmm: Vmm,
    from: u32,
    to: u32,
    arrived: bool,
) -> Result<(u32, u32), Text> {
    let (at_from, at_to) = (DEVICE.hits(from), DEVICE.hits(to));
    let cached = arrived && at_from == 2 && at_to == 0 && DEVICE.total() == 2;
    let reread = arrived && at_from == 1 && at_to == 1 && DEVICE.total() == 2;
    if vmm == Vmm::Irvmm && !cached {
        return Err(text!(
            "entry rewritten without invalidation: expected the cached route to APIC ID {} \
             again, got {} there and {} on ID {} ({} in all)",
            from,
            at_from,
            at_to,
            to,
            DEVICE.total()
        ));
    }
    if !cached && !reread {
        return Err(text!(
            "raise after the unannounced rewrite: {} interrupts in all, {}",
            DEVICE.total(),
            Takers(&DEVICE)
        ));
    }
    sprintln!(
        "{}: before invalidation the interrupt went to APIC ID {} ({} on {})",
        name,
        if cached { from } else { to },
        if cached {
            "the cached entry"
        } else {
            "observation: the rewritten entry, read without invalidation"
        },
        vmm.name()
    );
    Ok((at_from, at_to))
}

/// Where COM1's interrupt ([`COM1_IRQ`] after any MADT source override) comes in: its
/// route, and the I/O APIC and pin of its GSI.
pub fn com1_route(smp: &Smp) -> Result<(IsaRoute, IoApic, u32), Text> {
    let madt = smp.madt()?;
    let route = ioapic::isa_route(&madt, COM1_IRQ)?;
    let (io, pin) = IoApic::for_gsi(&madt, route.gsi)?;
    Ok((route, io, pin))
}

/// Interrupt handler for the `ioapic` scenarios' vector on every CPU: silences the UART and
/// counts in [`DEVICE`].
pub fn on_uart_interrupt() {
    serial::disable_interrupts();
    tally::on_device();
}

/// The `ioapic` scenarios' delivery: writes `rte` to `io`'s `pin` masked and checks it
/// reads back, unmasks it, makes COM1 raise its interrupt (until [`DEVICE`] counts one),
/// masks the pin again and stops the tick. Prints `<name>: no interrupt on the IER write;
/// wrote a byte to THR` when COM1 needed the second kick.
pub fn fire_com1_pin(
    name: &str,
    io: &IoApic,
    pin: u32,
    rte: u64,
    clock: &Clock,
) -> Result<(), Text> {
    io.set_rte(pin, ioapic::RTE_MASKED | rte);
    let back = io.rte(pin) & !ioapic::RTE_READ_ONLY;
    if back != ioapic::RTE_MASKED | rte {
        return Err(text!(
            "IOAPIC RTE {} reads back 0x{:016x} after writing 0x{:016x}",
            pin,
            back,
            ioapic::RTE_MASKED | rte
        ));
    }

    // No printing from here until the UART is quiet again.
    io.set_rte(pin, rte);
    let kicked = raise_com1_interrupt(clock, || DEVICE.total() > 0);
    io.set_rte(pin, ioapic::RTE_MASKED | rte);
    irq::stop_tick();
    if kicked {
        sprintln!(
            "{}: no interrupt on the IER write; wrote a byte to THR",
            name
        );
    }
    Ok(())
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
