//! Shared parts of the two route-update benchmarks, `ir-bench` (VT-d) and `amd-bench`
//! (AMD-Vi): finding the edu devices that carry the live vectors, reading the common
//! command-line parameters, the two timed loops (register reads and entry moves), the check
//! that a moved vector arrives, and the report lines.
//!
//! What differs between the units (how an entry is written and announced, which register
//! is read, what a failure names) is behind [`Unit`].

use super::bench_stats::Micros;
use super::ir_common::{self, DELIVERY_TIMEOUT_NS, SETTLE_NS};
use super::smp::Smp;
use super::Context;
use crate::clock::Clock;
use crate::edu::{self, Edu};
use crate::msi::MsiX;
use crate::pci::{self, Function};
use crate::report::Text;
use crate::tally::{Tally, DEVICE, EVENT};
use crate::{irq, pvh, sprintln, text};

/// Live vectors wanted when the command line does not say.
pub const DEFAULT_VECTORS: u32 = 64;
/// Timed invalidations when the command line does not say.
pub const DEFAULT_ITERS: u32 = 200;
/// Most live vectors the probe sets up (bus 0 full of 256-vector devices).
pub const MAX_VECTORS: u32 = 8192;
/// Most timed invalidations (about a minute on the slowest hosts the probe runs on).
pub const MAX_ITERS: u32 = 1_000_000;
/// Vector of every entry after setup (its receipts count in [`EVENT`]).
pub const VECTOR_INITIAL: u8 = irq::TEST_VECTOR_B;
/// The other vector entries alternate with (its receipts count in [`DEVICE`]).
pub const VECTOR_MOVED: u8 = irq::TEST_VECTOR_A;
/// Live vector checked after the timed loop.
pub const CHECKED: u32 = 0;
/// The edu interrupt-status bit raised for an MSI edu device.
const RAISE_BIT: u32 = 1;

/// How the live vectors' devices interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// irvmm's edu-msix: many MSI-X vectors per device.
    MsiX,
    /// QEMU's edu: one MSI vector per device.
    Msi,
}

impl Kind {
    /// The name the report lines use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::MsiX => "msix",
            Kind::Msi => "msi",
        }
    }
}

/// The devices that carry the live vectors: live vector g is vector `g % per_device` of
/// device `g / per_device`.
pub struct Sources {
    /// How they interrupt.
    pub kind: Kind,
    /// The devices of that kind on bus 0, in bus order (the first [`Sources::found`]).
    pub functions: [Function; pci::BUS_FUNCTIONS],
    /// Devices of that kind on bus 0.
    pub found: usize,
    /// Vectors each device contributes.
    pub per_device: u32,
    /// Live vectors.
    pub live: u32,
}

impl Sources {
    /// Finds the devices (edu-msix if any, else edu) and how many vectors they carry, at
    /// most `max_per_device` each and `wanted` in all.
    pub fn find(wanted: u32, max_per_device: u32) -> Result<Sources, Text> {
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
            Kind::MsiX => u32::from(MsiX::find(functions[0])?.vectors()).min(max_per_device),
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
    pub fn devices(&self) -> usize {
        self.live.div_ceil(self.per_device) as usize
    }

    /// Live vector `g`: its device's index, and its vector number there.
    pub fn locate(&self, g: u32) -> (usize, u32) {
        ((g / self.per_device) as usize, g % self.per_device)
    }

    /// Makes live vector `g`'s device send it once (`edu` is that device).
    pub fn raise(&self, edu: &Edu, g: u32) {
        match self.kind {
            // Below `per_device`, which came from a u16 table size.
            Kind::MsiX => edu.trigger_msix(self.locate(g).1 as u16),
            Kind::Msi => edu.raise(RAISE_BIT),
        }
    }

    /// Undoes what [`Sources::raise`] left behind (the MSI edu's status bit).
    pub fn settle_raise(&self, edu: &Edu) {
        if self.kind == Kind::Msi {
            edu.ack(RAISE_BIT);
        }
    }
}

/// What the benchmarks do through their remapping unit.
pub trait Unit {
    /// Reads a register of the unit: one round trip through the VMM, no side effect.
    fn read_register(&self);
    /// Rewrites live vector `g`'s entry to fixed delivery of `vector` to APIC ID `dest` and
    /// waits until the unit has been told (invalidation + completion).
    fn move_entry(&mut self, g: u32, vector: u8, dest: u32) -> Result<(), Text>;
    /// The failure of [`check_moved`]: live vector `g` was moved to `vector` on `dest` and
    /// `hits` interrupts arrived there within [`DELIVERY_TIMEOUT_NS`].
    fn moved_failure(&self, g: u32, vector: u8, dest: u32, hits: u32) -> Text;
}

/// Reads `probe.vectors` and `probe.iters`: (vectors wanted, iterations), unchecked.
pub fn read_parameters(ctx: &Context) -> Result<(u32, u32), Text> {
    let vectors = pvh::cmdline_u32(ctx.cmdline, "probe.vectors", DEFAULT_VECTORS)?;
    let iters = pvh::cmdline_u32(ctx.cmdline, "probe.iters", DEFAULT_ITERS)?;
    Ok((vectors, iters))
}

/// Checks `probe.vectors` against 1..=[`MAX_VECTORS`].
pub fn check_vectors(vectors: u32) -> Result<(), Text> {
    if !(1..=MAX_VECTORS).contains(&vectors) {
        return Err(text!(
            "probe.vectors={} is outside 1..={}",
            vectors,
            MAX_VECTORS
        ));
    }
    Ok(())
}

/// The vector a live vector's entry holds after the timed loop wrote it `writes` times:
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

/// Interrupts received on either vector.
pub fn received() -> u32 {
    DEVICE.total() + EVENT.total()
}

/// Times `iters` reads of the unit's register; returns nanoseconds in all.
fn time_register_reads(unit: &impl Unit, clock: &Clock, iters: u32) -> u64 {
    let begin = clock.now_ns();
    for _ in 0..iters {
        unit.read_register();
    }
    clock.now_ns().saturating_sub(begin)
}

/// Times `iters` moves: iteration i moves live vector `i mod live` to the other vector
/// and the next APIC ID of the MADT's (cycling); returns nanoseconds in all.
fn time_invalidations(unit: &mut impl Unit, smp: &Smp, live: u32, iters: u32) -> Result<u64, Text> {
    let ids = smp.cpus.ids();
    let begin = smp.clock.now_ns();
    for i in 0..iters {
        let g = i % live;
        let vector = vector_after(i / live + 1);
        let dest = ids[(i as usize + 1) % ids.len()];
        unit.move_entry(g, vector, dest)?;
    }
    Ok(smp.clock.now_ns().saturating_sub(begin))
}

/// Per-iteration times of the two timed loops.
pub struct Timing {
    /// Per move (`us_per_inv`).
    pub per_inv: Micros,
    /// Per register read (`mmio_read_us`).
    pub per_read: Micros,
}

/// Times `iters` register reads and `iters` moves over `live` vectors with the wake-up
/// tick stopped, averages both with `per` (total nanoseconds, iterations) and prints
/// `<prefix>: K IRTE rewrites + <what> in T us (X us each); K register reads in ...`.
pub fn time_moves(
    unit: &mut impl Unit,
    smp: &Smp,
    live: u32,
    iters: u32,
    per: fn(u64, u32) -> Micros,
    prefix: &str,
    what: &str,
) -> Result<Timing, Text> {
    // No wake-up ticks while timing.
    irq::stop_tick();
    let reads_ns = time_register_reads(unit, &smp.clock, iters);
    let invalidations_ns = time_invalidations(unit, smp, live, iters);
    irq::start_tick();
    let invalidations_ns = invalidations_ns?;
    let timing = Timing {
        per_inv: per(invalidations_ns, iters),
        per_read: per(reads_ns, iters),
    };
    sprintln!(
        "{}: {} IRTE rewrites + {} in {} us ({} us each); {} register reads in {} us ({} us each)",
        prefix,
        iters,
        what,
        invalidations_ns / 1000,
        timing.per_inv,
        iters,
        reads_ns / 1000,
        timing.per_read
    );
    Ok(timing)
}

/// Moves live vector [`CHECKED`] to the BSP with the vector it does not hold after
/// `iters` timed moves, raises it and checks that exactly one interrupt arrived, on the
/// BSP, with that vector; returns the vector.
pub fn check_moved(
    unit: &mut impl Unit,
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
    unit.move_entry(CHECKED, vector, smp.bsp_id)?;
    sources.raise(edu, CHECKED);
    let arrived = ir_common::wait(&smp.clock, DELIVERY_TIMEOUT_NS, || received() >= 1);
    ir_common::settle(&smp.clock, SETTLE_NS);
    sources.settle_raise(edu);
    let hits = tally_of(vector).hits(smp.bsp_id);
    if arrived && hits == 1 && received() == 1 {
        return Ok(vector);
    }
    Err(unit.moved_failure(CHECKED, vector, smp.bsp_id, hits))
}

/// Display adaptor: the pass fields both benchmarks share, `vectors=L iters=K
/// us_per_inv=X.Y requested=N devices=D kind=msix|msi mmio_read_us=X.Y`.
pub struct Fields<'a> {
    /// The live vectors' devices.
    pub sources: &'a Sources,
    /// Timed iterations.
    pub iters: u32,
    /// Live vectors requested.
    pub wanted: u32,
    /// What the timed loops measured.
    pub timing: &'a Timing,
}

impl core::fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "vectors={} iters={} us_per_inv={} requested={} devices={} kind={} mmio_read_us={}",
            self.sources.live,
            self.iters,
            self.timing.per_inv,
            self.wanted,
            self.sources.devices(),
            self.sources.kind.name(),
            self.timing.per_read
        )
    }
}
