//! `probe=ir-bench`: the cost of moving one remapped interrupt while many are live, as a
//! guest driver sees it (rewrite the entry, index-selective IEC invalidation, wait
//! descriptor with a polled status write), on any VMM with a VT-d unit and edu devices.
//!
//! Command line: `probe.vectors=N` (default [`DEFAULT_VECTORS`]) live vectors wanted,
//! `probe.iters=K` (default [`DEFAULT_ITERS`]) timed invalidations.
//!
//! 1. Enables queued invalidation and interrupt remapping in x2APIC mode as Linux does
//!    (65536 entries). The APs stay in wait-for-SIPI: only the BSP takes interrupts.
//! 2. Makes up to N vectors live, each through its own entry `BASE + g` (fixed delivery of
//!    [`VECTOR_INITIAL`] to the BSP, SVT = 1 with its device's requester ID), one global
//!    IEC invalidation for all of them. Sources: every `edu-msix` device (1234:11e9, irvmm,
//!    256 MSI-X vectors each) in bus order, each vector's entry programmed with a
//!    remappable address naming its IRTE (handle `BASE + g`, no SHV, data 0) while MSI-X
//!    is off, then MSI-X enabled and unmasked; where there is none (QEMU), every `edu`
//!    device (1234:11e8) instead, one MSI each. Memory decoding and bus mastering are on,
//!    so a VMM that keeps routes for programmed vectors holds all of them. Prints how many
//!    vectors are live (fewer than N when the devices run out; none is a failure).
//! 3. Times K reads of the unit's version register (`mmio_read_us`: one register round trip
//!    through the VMM, no side effect) with the BSP's wake-up tick stopped.
//! 4. Times K iterations of: rewrite entry `BASE + (i mod L)` (L live vectors; the vector
//!    alternates between [`VECTOR_MOVED`] and [`VECTOR_INITIAL`] on every pass over the
//!    entries, so each rewrite changes the entry; the destination cycles through the MADT's
//!    APIC IDs), index-selective IEC invalidation of that index, wait descriptor, poll the
//!    status (`vtd::Vtd::invalidate_entries`: one IQT write when the unit finishes during
//!    it). The clock is kvmclock (or the TSC with its CPUID frequency).
//! 5. Moves vector 0's entry once more, to the BSP with the other vector, invalidates it,
//!    raises vector 0 through its device, and checks that exactly one interrupt arrived, on
//!    the BSP, with the new vector (both vectors count receipts separately).
//!
//! Passes with `vectors=L iters=K us_per_inv=X.Y requested=N devices=D kind=msix|msi
//! mmio_read_us=X.Y` (microseconds per iteration, to a tenth; 0.0 when K = 0).
//! The time includes the guest's own instructions per iteration, which on a host whose KVM
//! emulates guest code are not negligible: compare VMMs on the same host.

use super::ir_common::{self, DELIVERY_TIMEOUT_NS, NS_PER_MS, SETTLE_NS};
use super::smp::{self, Smp};
use super::Context;
use crate::clock::Clock;
use crate::edu::{self, Edu};
use crate::msi::{Msi, MsiX};
use crate::pci::{self, Function};
use crate::report::{Outcome, Text};
use crate::tally::{self, Tally, DEVICE, EVENT};
use crate::vtd::{irte, Irte, Vtd, TABLE_LOG2_LINUX};
use crate::{irq, pvh, sprintln, text};

/// Live vectors wanted when the command line does not say.
const DEFAULT_VECTORS: u32 = 64;
/// Timed invalidations when the command line does not say.
const DEFAULT_ITERS: u32 = 200;
/// Most live vectors the probe sets up.
const MAX_VECTORS: u32 = 8192;
/// Most timed invalidations (about a minute on the slowest hosts the probe runs on).
const MAX_ITERS: u32 = 1_000_000;
/// Entry of live vector 0; vector g uses `BASE + g`.
const BASE: u32 = 0x1000;
/// Vector of every entry after setup (its receipts count in [`EVENT`]).
const VECTOR_INITIAL: u8 = irq::TEST_VECTOR_B;
/// The other vector entries alternate with (its receipts count in [`DEVICE`]).
const VECTOR_MOVED: u8 = irq::TEST_VECTOR_A;
/// The edu interrupt-status bit raised for an MSI edu device.
const RAISE_BIT: u32 = 1;
/// Nanoseconds per tenth of a microsecond.
const NS_PER_TENTH_US: u64 = 100;
/// Live vector checked at the end.
const CHECKED: u32 = 0;

const _: () = assert!(BASE + MAX_VECTORS <= 1 << TABLE_LOG2_LINUX);
const _: () = assert!(BASE + MAX_VECTORS <= u16::MAX as u32 + 1);

/// How the live vectors' devices interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// irvmm's edu-msix: many MSI-X vectors per device.
    MsiX,
    /// QEMU's edu: one MSI vector per device.
    Msi,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::MsiX => "msix",
            Kind::Msi => "msi",
        }
    }
}

/// The devices that carry the live vectors: live vector g is vector `g % per_device` of
/// device `g / per_device`.
struct Sources {
    kind: Kind,
    functions: [Function; pci::BUS_FUNCTIONS],
    /// Devices of that kind on bus 0.
    found: usize,
    /// Vectors each device contributes.
    per_device: u32,
    /// Live vectors.
    live: u32,
}

impl Sources {
    /// Finds the devices (edu-msix if any, else edu) and how many vectors they carry, up to
    /// `wanted`.
    fn find(wanted: u32) -> Result<Sources, Text> {
        let placeholder = Function {
            bus: 0,
            device: 0,
            function: 0,
        };
        let mut functions = [placeholder; pci::BUS_FUNCTIONS];
        let msix = pci::find_all_on_bus0(edu::VENDOR_ID, edu::EDU_MSIX_DEVICE_ID, &mut functions);
        let (kind, found) = if msix > 0 {
            (Kind::MsiX, msix)
        } else {
            let msi = pci::find_all_on_bus0(edu::VENDOR_ID, edu::EDU_DEVICE_ID, &mut functions);
            (Kind::Msi, msi)
        };
        let found = found.min(pci::BUS_FUNCTIONS);
        if found == 0 {
            return Err(text!(
                "no edu-msix ({:04x}:{:04x}) or edu ({:04x}:{:04x}) device on bus 0",
                edu::VENDOR_ID,
                edu::EDU_MSIX_DEVICE_ID,
                edu::VENDOR_ID,
                edu::EDU_DEVICE_ID
            ));
        }
        let per_device = match kind {
            Kind::MsiX => u32::from(MsiX::find(functions[0])?.vectors()),
            Kind::Msi => 1,
        };
        // `found` is at most 256 and `per_device` at most 2048.
        let live = wanted.min(found as u32 * per_device);
        Ok(Sources {
            kind,
            functions,
            found,
            per_device,
            live,
        })
    }

    /// Devices that carry live vectors.
    fn devices(&self) -> usize {
        self.live.div_ceil(self.per_device) as usize
    }

    /// The device of live vector `g` and its vector number there.
    fn locate(&self, g: u32) -> (Function, u16) {
        let device = (g / self.per_device) as usize;
        // Below `per_device`, which came from a u16 table size.
        let vector = (g % self.per_device) as u16;
        (self.functions[device], vector)
    }

    /// Opens every device that carries live vectors (memory decoding, bus mastering, a
    /// register check) and returns the first.
    fn open(&self) -> Result<Edu, Text> {
        let first = Edu::open(self.functions[0])?;
        for &f in &self.functions[1..self.devices()] {
            Edu::open(f)?;
        }
        Ok(first)
    }

    /// Programs every live vector with a remappable address naming its entry and enables
    /// the devices' interrupts.
    fn program(&self) -> Result<(), Text> {
        for d in 0..self.devices() {
            let function = self.functions[d];
            let first = d as u32 * self.per_device;
            let count = self.per_device.min(self.live - first);
            match self.kind {
                Kind::MsiX => {
                    let msix = MsiX::find(function)?;
                    if u32::from(msix.vectors()) < count {
                        return Err(text!(
                            "{} has {} MSI-X vectors, the first edu-msix {}",
                            function,
                            msix.vectors(),
                            self.per_device
                        ));
                    }
                    // MSI-X is still off: the entries change without sending anything.
                    for j in 0..count {
                        let address = irte::remappable_msi_address(handle(first + j), false);
                        // `j` is below the table size, a u16.
                        msix.set_entry(j as u16, address, 0, false)?;
                    }
                    msix.enable_masked();
                    msix.unmask_function();
                }
                Kind::Msi => {
                    let address = irte::remappable_msi_address(handle(first), false);
                    Msi::find(function)?.program(address, 0);
                }
            }
        }
        Ok(())
    }

    /// Makes live vector `g`'s device send it once (`edu` is that device).
    fn raise(&self, edu: &Edu, g: u32) {
        match self.kind {
            Kind::MsiX => edu.trigger_msix(self.locate(g).1),
            Kind::Msi => edu.raise(RAISE_BIT),
        }
    }

    /// Undoes what [`Sources::raise`] left behind (the MSI edu's status bit).
    fn settle_raise(&self, edu: &Edu) {
        if self.kind == Kind::Msi {
            edu.ack(RAISE_BIT);
        }
    }
}

/// The remappable-format handle of live vector `g`'s entry (below 2^16, asserted above).
fn handle(g: u32) -> u16 {
    (BASE + g) as u16
}

/// Microseconds per item, in tenths, rounded: `total_ns / count / 1000`.
fn tenths_of_us(total_ns: u64, count: u32) -> u64 {
    let count = u64::from(count);
    if count == 0 {
        return 0;
    }
    (total_ns + count * NS_PER_TENTH_US / 2) / (count * NS_PER_TENTH_US)
}

/// Display adaptor: tenths of a microsecond as `X.Y`.
struct Tenths(u64);

impl core::fmt::Display for Tenths {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.0 / 10, self.0 % 10)
    }
}

/// The vector live vector `g`'s entry holds after the timed loop wrote it `writes` times:
/// each write flips it, starting from [`VECTOR_INITIAL`].
fn vector_after(writes: u32) -> u8 {
    if writes % 2 == 1 {
        VECTOR_MOVED
    } else {
        VECTOR_INITIAL
    }
}

/// The tally counting receipts of `vector`.
fn tally_of(vector: u8) -> &'static Tally {
    if vector == VECTOR_MOVED {
        &DEVICE
    } else {
        &EVENT
    }
}

/// Reads the command-line parameters: (vectors wanted, iterations).
fn parameters(ctx: &Context) -> Result<(u32, u32), Text> {
    let vectors = pvh::cmdline_u32(ctx.cmdline, "probe.vectors", DEFAULT_VECTORS)?;
    let iters = pvh::cmdline_u32(ctx.cmdline, "probe.iters", DEFAULT_ITERS)?;
    if !(1..=MAX_VECTORS).contains(&vectors) {
        return Err(text!(
            "probe.vectors={} is outside 1..={}",
            vectors,
            MAX_VECTORS
        ));
    }
    if iters > MAX_ITERS {
        return Err(text!("probe.iters={} exceeds {}", iters, MAX_ITERS));
    }
    Ok((vectors, iters))
}

/// Times `iters` reads of the unit's version register; returns nanoseconds in all.
fn time_register_reads(vtd: &Vtd, clock: &Clock, iters: u32) -> u64 {
    let begin = clock.now_ns();
    for _ in 0..iters {
        // A volatile read: never optimised away.
        vtd.version();
    }
    clock.now_ns().saturating_sub(begin)
}

/// The timed loop (step 4); returns nanoseconds in all.
fn time_invalidations(
    vtd: &mut Vtd,
    smp: &Smp,
    sources: &Sources,
    iters: u32,
) -> Result<u64, Text> {
    let ids = smp.cpus.ids();
    let live = sources.live;
    let begin = smp.clock.now_ns();
    for i in 0..iters {
        let g = i % live;
        let vector = vector_after(i / live + 1);
        let dest = ids[(i as usize + 1) % ids.len()];
        let sid = sources.locate(g).0.sid();
        vtd.set_irte(BASE + g, Irte::remapped(vector, dest).verify_sid(sid))?;
        vtd.invalidate_entries(BASE + g, 0)?;
    }
    Ok(smp.clock.now_ns().saturating_sub(begin))
}

/// Step 5: moves live vector [`CHECKED`] to the BSP with the vector it does not hold now,
/// raises it and checks where it arrived.
fn check_moved(
    vtd: &mut Vtd,
    smp: &Smp,
    sources: &Sources,
    edu: &Edu,
    iters: u32,
) -> Result<u8, Text> {
    let live = sources.live;
    let writes = iters / live + u32::from(CHECKED < iters % live);
    let vector = if vector_after(writes) == VECTOR_MOVED {
        VECTOR_INITIAL
    } else {
        VECTOR_MOVED
    };
    let (function, _) = sources.locate(CHECKED);
    let entry = Irte::remapped(vector, smp.bsp_id).verify_sid(function.sid());
    vtd.set_irte(BASE + CHECKED, entry)?;
    vtd.invalidate_entries(BASE + CHECKED, 0)?;
    let total = || DEVICE.total() + EVENT.total();
    sources.raise(edu, CHECKED);
    let arrived = ir_common::wait(&smp.clock, DELIVERY_TIMEOUT_NS, || total() >= 1);
    ir_common::settle(&smp.clock, SETTLE_NS);
    sources.settle_raise(edu);
    let hits = tally_of(vector).hits(smp.bsp_id);
    if arrived && hits == 1 && total() == 1 {
        return Ok(vector);
    }
    Err(text!(
        "moved vector {} (IRTE 0x{:x} -> APIC ID {} vector 0x{:x}): {} there within {} ms, \
         {} interrupts in all (0x{:x}: {}, 0x{:x}: {}), FSTS 0x{:x}",
        CHECKED,
        BASE + CHECKED,
        smp.bsp_id,
        vector,
        hits,
        DELIVERY_TIMEOUT_NS / NS_PER_MS,
        total(),
        VECTOR_MOVED,
        ir_common::Takers(&DEVICE),
        VECTOR_INITIAL,
        ir_common::Takers(&EVENT),
        vtd.fsts()
    ))
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let (wanted, iters) = parameters(ctx)?;
    let smp = smp::prepare(ctx)?;
    let platform = ir_common::discover(ctx)?;
    let sources = Sources::find(wanted)?;
    let unit = platform.pci_unit(sources.functions[0])?;
    for &f in &sources.functions[1..sources.devices()] {
        let other = platform.pci_unit(f)?;
        if other.base != unit.base {
            return Err(text!(
                "{} is remapped by the unit at 0x{:x}, {} by 0x{:x}: the probe drives one",
                sources.functions[0],
                unit.base,
                f,
                other.base
            ));
        }
    }
    let clock = smp.clock;
    irq::set_handler(VECTOR_MOVED, tally::on_device)?;
    irq::set_handler(VECTOR_INITIAL, tally::on_event)?;
    let mut vtd = ir_common::enable(&unit, clock, TABLE_LOG2_LINUX)?;

    let begin = clock.now_ns();
    let edu = sources.open()?;
    for g in 0..sources.live {
        let sid = sources.locate(g).0.sid();
        vtd.set_irte(
            BASE + g,
            Irte::remapped(VECTOR_INITIAL, smp.bsp_id).verify_sid(sid),
        )?;
    }
    vtd.invalidate_all()?;
    sources.program()?;
    sprintln!(
        "ir-bench: {} live vectors of {} requested: {} {} device(s) of {} on bus 0, {} vector(s) each; \
         IRTE 0x{:x}..0x{:x} -> APIC ID {} vector 0x{:x} ({} ms)",
        sources.live,
        wanted,
        sources.devices(),
        sources.kind.name(),
        sources.found,
        sources.per_device,
        BASE,
        BASE + sources.live - 1,
        smp.bsp_id,
        VECTOR_INITIAL,
        clock.now_ns().saturating_sub(begin) / NS_PER_MS
    );

    // No wake-up ticks while timing.
    irq::stop_tick();
    let reads_ns = time_register_reads(&vtd, &clock, iters);
    let invalidations_ns = time_invalidations(&mut vtd, &smp, &sources, iters);
    irq::start_tick();
    let invalidations_ns = invalidations_ns?;
    let (per_inv, per_read) = (
        Tenths(tenths_of_us(invalidations_ns, iters)),
        Tenths(tenths_of_us(reads_ns, iters)),
    );
    sprintln!(
        "ir-bench: {} IRTE rewrites + IEC + wait in {} us ({} us each); {} register reads in {} us ({} us each)",
        iters,
        invalidations_ns / 1000,
        per_inv,
        iters,
        reads_ns / 1000,
        per_read
    );

    let vector = check_moved(&mut vtd, &smp, &sources, &edu, iters)?;
    irq::stop_tick();
    sprintln!(
        "ir-bench: moved vector {} arrived on APIC ID {} as 0x{:x}",
        CHECKED,
        smp.bsp_id,
        vector
    );
    Ok(text!(
        "vectors={} iters={} us_per_inv={} requested={} devices={} kind={} mmio_read_us={}",
        sources.live,
        iters,
        per_inv,
        wanted,
        sources.devices(),
        sources.kind.name(),
        per_read
    ))
}
