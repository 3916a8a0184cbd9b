//! `probe=amd-bench`: what AMD-Vi interrupt remapping costs a guest driver, timed from
//! inside the guest on any VMM with an AMD-Vi unit and edu devices: moving one remapped
//! interrupt while many are live (rewrite the entry, INVALIDATE_INTERRUPT_TABLE for its
//! device, COMPLETION_WAIT with a polled store), and, on a unit with guest virtual APIC
//! mode, delivering through remapped versus guest-mode (posted) entries.
//!
//! Command line: `probe.vectors=N` (default [`remap_bench::DEFAULT_VECTORS`]) live vectors
//! wanted, `probe.iters=K` (default [`remap_bench::DEFAULT_ITERS`]) timed invalidations,
//! `probe.deliveries=D` (default [`DEFAULT_DELIVERIES`], 0 skips) interrupts per delivery
//! mode. The parts shared with `ir-bench` are in [`remap_bench`].
//!
//! 1. Enables the unit as Linux does (XT event and GA log interrupts to the BSP; the GA log
//!    and GAMEn when the unit offers GAMSup = vAPIC). The APs stay in wait-for-SIPI.
//! 2. Makes up to N vectors live: every `edu-msix` device (1234:11e9, irvmm, 256 MSI-X
//!    vectors each) in bus order gets a 512-entry table, its vector j entry j (fixed
//!    [`VECTOR_INITIAL`] to the BSP), MSI-X entry j address 0xfee00000, data j, programmed
//!    while MSI-X is off, then enabled; where there is none (QEMU), every `edu` device
//!    (1234:11e8) gets a 2-entry table and its MSI names entry 0. One
//!    INVALIDATE_INTERRUPT_TABLE per device. Prints how many vectors are live.
//! 3. Times K reads of the control register (`mmio_read_us`) with the wake-up tick off.
//! 4. Times K iterations of: rewrite the entry of live vector `i mod L` (vector alternating
//!    between [`VECTOR_MOVED`] and [`VECTOR_INITIAL`] on every pass, destination cycling
//!    through the MADT's APIC IDs), INVALIDATE_INTERRUPT_TABLE for its device and a
//!    COMPLETION_WAIT in one tail write, poll the store (`us_per_inv`). A unit that keeps
//!    translations per device re-translates all of that device's live vectors each time.
//! 5. Moves live vector 0 to the BSP with the vector it does not hold, raises it and checks
//!    that exactly one interrupt arrived, on the BSP, with the new vector.
//! 6. With D > 0, live vector 0 delivered D times in each mode, one at a time: remapped
//!    (fixed [`VECTOR_MOVED`] to the BSP; each raise waits in `sti; hlt` for its interrupt:
//!    `remapped_per_s`); with guest virtual APIC mode, guest mode with IsRun = 1 (each
//!    raise polls the vAPIC backing page's IRR bit, then clears it: `posted_per_s`) and
//!    guest mode with IsRun = 0 and GALogIntr (each raise waits for the GA log interrupt,
//!    clears GAInt, reads the one entry and checks its tag: `galog_per_s`). `n/a` where the
//!    unit has no guest virtual APIC mode.
//!
//! Passes with `vectors=L iters=K us_per_inv=X.Y requested=N devices=D kind=msix|msi
//! mmio_read_us=X.Y deliveries=D remapped_per_s=R posted_per_s=P galog_per_s=G`. Times
//! include the guest's own instructions: compare VMMs on the same host.

use super::amd_common;
use super::bench_stats::{per_second, Micros};
use super::ir_common::{self, DELIVERY_TIMEOUT_NS, NS_PER_MS};
use super::remap_bench::{
    self, Fields, Kind, Sources, Unit, CHECKED, MAX_ITERS, VECTOR_INITIAL, VECTOR_MOVED,
};
use super::smp::{self, Smp};
use super::Context;
use crate::amdvi::irte::{self, GuestTarget, IntTable, Irte, LINUX_LEN_LOG2};
use crate::amdvi::log::GaEntry;
use crate::amdvi::regs::{CONTROL, STATUS_GALOG_OVERFLOW, STATUS_GA_INT};
use crate::amdvi::{self, mem, AmdVi, Options, UnitInterrupts};
use crate::edu::Edu;
use crate::msi::{Msi, MsiX};
use crate::pci;
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE, EVENT};
use crate::{irq, pvh, sprintln, text, x86};

/// Deliveries per mode when the command line does not say.
const DEFAULT_DELIVERIES: u32 = 1000;
/// Most vectors per device: one table of 512 entries holds them.
const MAX_PER_DEVICE: u32 = 256;
/// The unit's own interrupts (GA log; receipts in [`EVENT`] too, which step 6 uses only
/// after [`VECTOR_INITIAL`]'s checks are over).
const UNIT_VECTOR: u8 = irq::TEST_VECTOR_C;
/// Table size of an MSI device (one vector, entry 0).
const MSI_TABLE_LOG2: u8 = 1;
/// The guest vector and tag of the guest-mode deliveries.
const GUEST_VECTOR: u8 = 0x51;
const GUEST_TAG: u32 = 0x0000_0203;
/// The backing page's IRR dword of [`GUEST_VECTOR`] (0x200 + 0x10 * (vector / 32)).
const GUEST_IRR_OFFSET: u64 = 0x200 + 0x10 * (GUEST_VECTOR as u64 / 32);
const GUEST_IRR_BIT: u64 = 1 << (GUEST_VECTOR % 32);
/// Bytes of a backing page.
const PAGE: u64 = 0x1000;

/// The AMD-Vi unit as the benchmark drives it, with the live vectors' devices: live
/// vector g goes through entry `g % per_device` of its device's table.
struct AmdUnit<'a> {
    vi: AmdVi,
    sources: &'a Sources,
    tables: [Option<IntTable>; pci::BUS_FUNCTIONS],
}

impl AmdUnit<'_> {
    /// Gives every device a table with its live vectors' entries (fixed `vector` to
    /// `dest`), announces each table, and programs and enables the devices' interrupts.
    fn set_up(
        &mut self,
        platform: &amd_common::AmdPlatform,
        vector: u8,
        dest: u32,
    ) -> Result<Edu, Text> {
        let sources = self.sources;
        let first = Edu::open(sources.functions[0])?;
        for d in 0..sources.devices() {
            let function = sources.functions[d];
            if d > 0 {
                Edu::open(function)?;
            }
            let device_id = platform.device_id(function)?;
            let len = match sources.kind {
                Kind::MsiX => LINUX_LEN_LOG2,
                Kind::Msi => MSI_TABLE_LOG2,
            };
            let table = self.vi.attach(device_id, len)?;
            let count = sources
                .per_device
                .min(sources.live - d as u32 * sources.per_device);
            for j in 0..count {
                table.set(j, Irte::remapped(vector, dest))?;
            }
            self.vi.invalidate_table(device_id)?;
            self.tables[d] = Some(table);
            match sources.kind {
                Kind::MsiX => {
                    let msix = MsiX::find(function)?;
                    // MSI-X is still off: the entries change without sending anything.
                    for j in 0..count {
                        msix.set_entry(j as u16, irte::MSI_ADDRESS, irte::msi_data(j), false)?;
                    }
                    msix.enable_masked();
                    msix.unmask_function();
                }
                Kind::Msi => Msi::find(function)?.program(irte::MSI_ADDRESS, 0),
            }
        }
        Ok(first)
    }

    /// Live vector `g`'s table and entry, and its device ID.
    #[inline(always)]
    fn entry(&self, g: u32) -> Result<(IntTable, u32, u16), Text> {
        let (d, j) = self.sources.locate(g);
        let table = self.tables[d].ok_or_else(|| text!("device {} has no table", d))?;
        Ok((table, j, self.sources.functions[d].sid()))
    }
}

impl Unit for AmdUnit<'_> {
    fn read_register(&self) {
        // A volatile read: never optimised away.
        self.vi.regs().read64(CONTROL);
    }

    /// Rewrites live vector `g`'s entry, then INVALIDATE_INTERRUPT_TABLE for its device and
    /// a COMPLETION_WAIT in one tail write, polling the store. Inlined into the timed loop,
    /// as it was before the loop was shared: the time per iteration includes these
    /// instructions.
    #[inline(always)]
    fn move_entry(&mut self, g: u32, vector: u8, dest: u32) -> Result<(), Text> {
        let (table, j, device_id) = self.entry(g)?;
        table.set(j, Irte::remapped(vector, dest))?;
        self.vi.invalidate_table(device_id)
    }

    fn moved_failure(&self, g: u32, vector: u8, dest: u32, hits: u32) -> Text {
        let (_, j, device_id) = match self.entry(g) {
            Ok(entry) => entry,
            Err(why) => return why,
        };
        text!(
            "moved vector {} (device 0x{:04x} IRTE {} -> APIC ID {} vector 0x{:x}): {} there within {} ms, \
             {} interrupts in all, AMD-Vi status 0x{:x}",
            g,
            device_id,
            j,
            dest,
            vector,
            hits,
            DELIVERY_TIMEOUT_NS / NS_PER_MS,
            remap_bench::received(),
            self.vi.status()
        )
    }
}

/// The command-line parameters: (vectors wanted, iterations, deliveries).
fn parameters(ctx: &Context) -> Result<(u32, u32, u32), Text> {
    let (vectors, iters) = remap_bench::read_parameters(ctx)?;
    let deliveries = pvh::cmdline_u32(ctx.cmdline, "probe.deliveries", DEFAULT_DELIVERIES)?;
    remap_bench::check_vectors(vectors)?;
    if iters > MAX_ITERS || deliveries > MAX_ITERS {
        return Err(text!(
            "probe.iters={} / probe.deliveries={} exceed {}",
            iters,
            deliveries,
            MAX_ITERS
        ));
    }
    Ok((vectors, iters, deliveries))
}

/// Time per iteration: `total_ns / count` truncated to the nanosecond (0 when `count` is
/// 0), shown to a tenth of a microsecond.
fn per_iteration(total_ns: u64, count: u32) -> Micros {
    Micros(if count == 0 {
        0
    } else {
        total_ns / u64::from(count)
    })
}

/// Delivery rates (step 6), per second: remapped, posted, GA log (the last two `None`
/// without guest virtual APIC mode).
struct Rates {
    remapped: u64,
    posted: Option<u64>,
    galog: Option<u64>,
}

/// Display adaptor: a rate or `n/a`.
struct Rate(Option<u64>);

impl core::fmt::Display for Rate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(r) => write!(f, "{}", r),
            None => f.write_str("n/a"),
        }
    }
}

/// Step 6.
fn time_deliveries(
    unit: &mut AmdUnit,
    smp: &Smp,
    edu: &Edu,
    count: u32,
    guest_apic: bool,
) -> Result<Rates, Text> {
    let clock = &smp.clock;
    let (table, j, device_id) = unit.entry(CHECKED)?;
    let (vi, sources) = (&mut unit.vi, unit.sources);

    // Remapped: each raise waits for its interrupt.
    table.set(j, Irte::remapped(VECTOR_MOVED, smp.bsp_id))?;
    vi.invalidate_table(device_id)?;
    let base = DEVICE.total();
    let begin = clock.now_ns();
    for n in 1..=count {
        sources.raise(edu, CHECKED);
        if !ir_common::wait(clock, DELIVERY_TIMEOUT_NS, || DEVICE.total() - base >= n) {
            return Err(text!("remapped delivery {} of {} did not arrive", n, count));
        }
        sources.settle_raise(edu);
    }
    let remapped = per_second(u64::from(count), clock.now_ns().saturating_sub(begin));
    if !guest_apic {
        return Ok(Rates {
            remapped,
            posted: None,
            galog: None,
        });
    }

    let page = mem::alloc(PAGE, PAGE)?;
    let target = GuestTarget {
        vector: GUEST_VECTOR,
        destination: smp.bsp_id,
        ga_tag: GUEST_TAG,
        backing_page: page,
    };
    let irr = page + GUEST_IRR_OFFSET;

    // Posted, vCPU running: each raise polls the IRR bit, then clears it.
    table.set(j, Irte::guest(target, true, true))?;
    vi.invalidate_table(device_id)?;
    let begin = clock.now_ns();
    for n in 1..=count {
        sources.raise(edu, CHECKED);
        let deadline = clock.now_ns() + DELIVERY_TIMEOUT_NS;
        while mem::read64(irr) & GUEST_IRR_BIT == 0 {
            if clock.now_ns() >= deadline {
                return Err(text!("posted delivery {} of {}: no IRR bit", n, count));
            }
            x86::pause();
        }
        mem::write64(irr, 0);
        sources.settle_raise(edu);
    }
    let posted = per_second(u64::from(count), clock.now_ns().saturating_sub(begin));

    // Posted, vCPU not running: each raise waits for the GA log interrupt and its entry.
    table.set(j, Irte::guest(target, false, true))?;
    vi.invalidate_table(device_id)?;
    let base = EVENT.total();
    let mut entries = [GaEntry::default(); 4];
    let begin = clock.now_ns();
    for n in 1..=count {
        sources.raise(edu, CHECKED);
        if !ir_common::wait(clock, DELIVERY_TIMEOUT_NS, || EVENT.total() - base >= n) {
            return Err(text!("GA log interrupt {} of {} did not arrive", n, count));
        }
        vi.clear_status(STATUS_GA_INT | STATUS_GALOG_OVERFLOW);
        let got = vi.drain_ga_log(&mut entries);
        if got != 1 || entries[0].tag != GUEST_TAG || entries[0].device_id != device_id {
            return Err(text!(
                "GA log interrupt {} of {}: {} entries (first tag 0x{:x} devid 0x{:04x})",
                n,
                count,
                got,
                entries[0].tag,
                entries[0].device_id
            ));
        }
        mem::write64(irr, 0);
        sources.settle_raise(edu);
    }
    let galog = per_second(u64::from(count), clock.now_ns().saturating_sub(begin));
    Ok(Rates {
        remapped,
        posted: Some(posted),
        galog: Some(galog),
    })
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let (wanted, iters, deliveries) = parameters(ctx)?;
    let smp = smp::prepare(ctx)?;
    let platform = amd_common::discover(ctx)?;
    let sources = Sources::find(wanted, MAX_PER_DEVICE)?;
    let guest_apic = amdvi::offers_guest_apic(amdvi::extended_features(&platform.unit)?);
    let clock = smp.clock;
    irq::set_handler(VECTOR_MOVED, tally::on_device)?;
    irq::set_handler(VECTOR_INITIAL, tally::on_event)?;
    irq::set_handler(UNIT_VECTOR, tally::on_event)?;
    let options = Options {
        interrupts: UnitInterrupts::Xt {
            vector: UNIT_VECTOR,
            dest: smp.bsp_id,
        },
        guest_apic,
    };
    let vi = amd_common::enable(&platform, clock, options)?;
    let mut unit = AmdUnit {
        vi,
        sources: &sources,
        tables: [None; pci::BUS_FUNCTIONS],
    };

    let begin = clock.now_ns();
    let edu = unit.set_up(&platform, VECTOR_INITIAL, smp.bsp_id)?;
    sprintln!(
        "amd-bench: {} live vectors of {} requested: {} {} device(s) of {} on bus 0, {} vector(s) each, one table each -> APIC ID {} vector 0x{:x} ({} ms)",
        sources.live,
        wanted,
        sources.devices(),
        sources.kind.name(),
        sources.found,
        sources.per_device,
        smp.bsp_id,
        VECTOR_INITIAL,
        clock.now_ns().saturating_sub(begin) / NS_PER_MS
    );

    let timing = remap_bench::time_moves(
        &mut unit,
        &smp,
        sources.live,
        iters,
        per_iteration,
        "amd-bench",
        "INVALIDATE_INTERRUPT_TABLE + COMPLETION_WAIT",
    )?;
    let vector = remap_bench::check_moved(&mut unit, &smp, &sources, &edu, iters)?;
    sprintln!(
        "amd-bench: moved vector {} arrived on APIC ID {} as 0x{:x}",
        CHECKED,
        smp.bsp_id,
        vector
    );
    let rates = if deliveries > 0 {
        time_deliveries(&mut unit, &smp, &edu, deliveries, guest_apic)?
    } else {
        Rates {
            remapped: 0,
            posted: None,
            galog: None,
        }
    };
    irq::stop_tick();
    sprintln!(
        "amd-bench: {} deliveries each, per second: remapped {}, posted (IsRun=1) {}, GA log (IsRun=0) {}",
        deliveries,
        rates.remapped,
        Rate(rates.posted),
        Rate(rates.galog)
    );
    Ok(text!(
        "{} deliveries={} remapped_per_s={} posted_per_s={} galog_per_s={}",
        Fields {
            sources: &sources,
            iters,
            wanted,
            timing: &timing,
        },
        deliveries,
        rates.remapped,
        Rate(rates.posted),
        Rate(rates.galog)
    ))
}
