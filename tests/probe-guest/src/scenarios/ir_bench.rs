//! `probe=ir-bench`: the cost of moving one remapped interrupt while many are live, as a
//! guest driver sees it (rewrite the entry, index-selective IEC invalidation, wait
//! descriptor with a polled status write), on any VMM with a VT-d unit and edu devices.
//!
//! Command line: `probe.vectors=N` (default [`remap_bench::DEFAULT_VECTORS`]) live vectors
//! wanted, `probe.iters=K` (default [`remap_bench::DEFAULT_ITERS`]) timed invalidations.
//! The parts shared with `amd-bench` are in [`remap_bench`].
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

use super::bench_stats::Micros;
use super::ir_common::{self, DELIVERY_TIMEOUT_NS, NS_PER_MS};
use super::remap_bench::{
    self, Fields, Kind, Sources, Unit, CHECKED, MAX_ITERS, MAX_VECTORS, VECTOR_INITIAL,
    VECTOR_MOVED,
};
use super::smp;
use super::Context;
use crate::edu::Edu;
use crate::msi::{Msi, MsiX};
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE, EVENT};
use crate::vtd::{irte, Irte, Vtd, TABLE_LOG2_LINUX};
use crate::{irq, sprintln, text};

/// Entry of live vector 0; vector g uses `BASE + g`.
const BASE: u32 = 0x1000;
/// Nanoseconds per tenth of a microsecond.
const NS_PER_TENTH_US: u64 = 100;

const _: () = assert!(BASE + MAX_VECTORS <= 1 << TABLE_LOG2_LINUX);
const _: () = assert!(BASE + MAX_VECTORS <= u16::MAX as u32 + 1);

/// Opens every device that carries live vectors (memory decoding, bus mastering, a
/// register check) and returns the first.
fn open(sources: &Sources) -> Result<Edu, Text> {
    let first = Edu::open(sources.functions[0])?;
    for &f in &sources.functions[1..sources.devices()] {
        Edu::open(f)?;
    }
    Ok(first)
}

/// Programs every live vector with a remappable address naming its entry and enables the
/// devices' interrupts.
fn program(sources: &Sources) -> Result<(), Text> {
    for d in 0..sources.devices() {
        let function = sources.functions[d];
        let first = d as u32 * sources.per_device;
        let count = sources.per_device.min(sources.live - first);
        match sources.kind {
            Kind::MsiX => {
                let msix = MsiX::find(function)?;
                if u32::from(msix.vectors()) < count {
                    return Err(text!(
                        "{} has {} MSI-X vectors, the first edu-msix {}",
                        function,
                        msix.vectors(),
                        sources.per_device
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

/// Time per item, `total_ns / count` rounded to a tenth of a microsecond.
fn per_item(total_ns: u64, count: u32) -> Micros {
    Micros(tenths_of_us(total_ns, count) * NS_PER_TENTH_US)
}

/// Reads the command-line parameters: (vectors wanted, iterations).
fn parameters(ctx: &Context) -> Result<(u32, u32), Text> {
    let (vectors, iters) = remap_bench::read_parameters(ctx)?;
    remap_bench::check_vectors(vectors)?;
    if iters > MAX_ITERS {
        return Err(text!("probe.iters={} exceeds {}", iters, MAX_ITERS));
    }
    Ok((vectors, iters))
}

/// The VT-d unit as the benchmark drives it.
struct VtdUnit<'a> {
    vtd: Vtd,
    sources: &'a Sources,
}

impl VtdUnit<'_> {
    /// The requester ID of live vector `g`'s device.
    #[inline(always)]
    fn sid(&self, g: u32) -> u16 {
        self.sources.functions[self.sources.locate(g).0].sid()
    }
}

impl Unit for VtdUnit<'_> {
    fn read_register(&self) {
        // A volatile read: never optimised away.
        self.vtd.version();
    }

    /// Rewrites entry `BASE + g`, then an index-selective IEC invalidation of that index
    /// and a wait descriptor, polling the status. Inlined into the timed loop, as it was
    /// before the loop was shared: the time per iteration includes these instructions.
    #[inline(always)]
    fn move_entry(&mut self, g: u32, vector: u8, dest: u32) -> Result<(), Text> {
        let sid = self.sid(g);
        self.vtd
            .set_irte(BASE + g, Irte::remapped(vector, dest).verify_sid(sid))?;
        self.vtd.invalidate_entries(BASE + g, 0)
    }

    fn moved_failure(&self, g: u32, vector: u8, dest: u32, hits: u32) -> Text {
        text!(
            "moved vector {} (IRTE 0x{:x} -> APIC ID {} vector 0x{:x}): {} there within {} ms, \
             {} interrupts in all (0x{:x}: {}, 0x{:x}: {}), FSTS 0x{:x}",
            g,
            BASE + g,
            dest,
            vector,
            hits,
            DELIVERY_TIMEOUT_NS / NS_PER_MS,
            remap_bench::received(),
            VECTOR_MOVED,
            ir_common::Takers(&DEVICE),
            VECTOR_INITIAL,
            ir_common::Takers(&EVENT),
            self.vtd.fsts()
        )
    }
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let (wanted, iters) = parameters(ctx)?;
    let smp = smp::prepare(ctx)?;
    let platform = ir_common::discover(ctx)?;
    let sources = Sources::find(wanted, u32::MAX)?;
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
    let vtd = ir_common::enable(&unit, clock, TABLE_LOG2_LINUX)?;
    let mut unit = VtdUnit {
        vtd,
        sources: &sources,
    };

    let begin = clock.now_ns();
    let edu = open(&sources)?;
    for g in 0..sources.live {
        let sid = unit.sid(g);
        unit.vtd.set_irte(
            BASE + g,
            Irte::remapped(VECTOR_INITIAL, smp.bsp_id).verify_sid(sid),
        )?;
    }
    unit.vtd.invalidate_all()?;
    program(&sources)?;
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

    let timing = remap_bench::time_moves(
        &mut unit,
        &smp,
        sources.live,
        iters,
        per_item,
        "ir-bench",
        "IEC + wait",
    )?;
    let vector = remap_bench::check_moved(&mut unit, &smp, &sources, &edu, iters)?;
    irq::stop_tick();
    sprintln!(
        "ir-bench: moved vector {} arrived on APIC ID {} as 0x{:x}",
        CHECKED,
        smp.bsp_id,
        vector
    );
    Ok(text!(
        "{}",
        Fields {
            sources: &sources,
            iters,
            wanted,
            timing: &timing,
        }
    ))
}
