//! `probe=vfio-bench-irq`: how fast the passed-through test device's MSI-X interrupts reach
//! the guest, one at a time (latency) and as a periodic stream (rate); run by
//! `benches/vfio_interrupts.py` to compare irvmm's delivery through KVM irqfds with its
//! delivery by the VMM (`irqfd=off`).
//!
//! Command line: `probe.iters=K` (default [`DEFAULT_ITERS`], at most [`MAX_ITERS`]; 0 skips
//! the latency loop), `probe.period_us=P` (default [`DEFAULT_PERIOD_US`]) and
//! `probe.count=C` (default [`DEFAULT_COUNT`]; 0 skips the rate part).
//!
//! Runs on the BSP alone. MSI-X vector [`BENCH_VECTOR`] of the device gets one message to
//! the BSP, [`VECTOR`], fixed, edge: in compatibility format, or, when the platform has a
//! DMAR (irvmm `--iommu intel`), in remappable format through IRTE [`IRTE_INDEX`] after
//! interrupt remapping is enabled as Linux does (`format=compat|remapped`). The handler
//! reads the clock (kvmclock, or the TSC with its CPUID frequency) and counts.
//!
//! 1. Latency: K times, read the clock, write DOORBELL for the vector, wait in `sti; hlt`
//!    for the interrupt, and record the time from before the doorbell write to the
//!    handler's clock read; then poll DOORBELL until the device reads 0 (outside the timed
//!    span). Reports the median, minimum and maximum in microseconds and the round trips
//!    per second over the whole loop (`irq_per_s`: doorbell, delivery, handler, the
//!    doorbell poll and the guest's own instructions). Every doorbell must bring exactly one
//!    interrupt.
//! 2. Rate: the device's timer fires the vector C times, one every P microseconds
//!    (TIMER_VECTOR, TIMER_PERIOD, then TIMER_COUNT = C). The guest takes interrupts until
//!    it has C or, past the nominal end, TIMER_COUNT reads 0; then watches for late ones.
//!    `fired` is TIMER_FIRED's increase, `received` the interrupts taken, `lost` their
//!    difference: fires merged on the way (an eventfd read once for several signals, a
//!    vector still pending in the guest's IRR when the next arrives) or never delivered.
//!    `rate_hz` is received interrupts per second from the TIMER_COUNT write to the last
//!    arrival (at most 10^6 / P).
//!
//! What the latency includes: with the device's BAR0 page 0 mapped into the guest (irvmm
//! `msix=relocate`), the doorbell write is a plain store the device's poller notices
//! within its period (50 us by default); with that page trapped (`msix=trap`) the write
//! exits to the VMM, which forwards it to the device over the socket before the vCPU
//! continues. Then the eventfd signal, KVM's or the VMM's injection, and the guest's
//! interrupt entry up to the handler's clock read: tens of instructions, which on a host
//! whose KVM emulates guest code (~1.8 M instructions/s) are tens of microseconds.
//! Compare configurations on the same host.
//!
//! Passes with `format=compat|remapped msix_bir=B iters=K lat_med_us=X.Y lat_min_us=X.Y
//! lat_max_us=X.Y irq_per_s=N period_us=P count=C fired=F received=R lost=L rate_hz=N`.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::bench_stats::{self, Micros, Summary, NS_PER_US};
use super::ir_common::{self, NS_PER_MS};
use super::smp::{self, Smp};
use super::vfio_common::{self, DELIVERY_TIMEOUT_NS, SETTLE_NS, VECTOR};
use super::{platform, Context};
use crate::clock::Clock;
use crate::msi::MsiX;
use crate::report::{Outcome, Text};
use crate::testdev::{self, Testdev};
use crate::vtd::{irte, Irte, TABLE_LOG2_LINUX};
use crate::{irq, pvh, sprintln, text};

/// Doorbell round trips when the command line does not say.
const DEFAULT_ITERS: u32 = 1000;
/// Most doorbell round trips (the size of the sample buffer).
const MAX_ITERS: u32 = 20_000;
/// Timer period when the command line does not say (microseconds).
const DEFAULT_PERIOD_US: u32 = 200;
/// Longest timer period accepted (one second).
const MAX_PERIOD_US: u32 = 1_000_000;
/// Timer fires when the command line does not say.
const DEFAULT_COUNT: u32 = 2000;
/// Most timer fires (the rate part then takes at least this many periods).
const MAX_COUNT: u32 = 1_000_000;
/// The MSI-X vector (table entry) the benchmark fires.
const BENCH_VECTOR: u16 = 0;
/// The interrupt remapping entry of that vector when a DMAR exists.
const IRTE_INDEX: u16 = 0x20;
/// DOORBELL: bit 31 fires; bits 30:16 (count - 1) = 0: one vector, the one in bits 15:0
/// (the register contract in `tests/vfio-user-testdev/README.md`).
const DOORBELL_FIRE_ONE: u32 = 1 << 31;
/// TIMER_COUNT: writing K > 0 starts K fires; reads the fires still to come.
const REG_TIMER_COUNT: u64 = 0x028;
/// TIMER_FIRED: timer fires since reset (RO).
const REG_TIMER_FIRED: u64 = 0x02c;
/// Beyond the timer's nominal end (count * period), how long the guest waits for the rest.
const RATE_GRACE_NS: u64 = 3_000_000_000;

/// The clock the handler reads.
struct HandlerClock(UnsafeCell<Option<Clock>>);

// SAFETY: written once, by the BSP in `run`, before the handler that reads it is registered
// (`irq::set_handler` publishes the handler with a release store that the interrupt path
// loads with acquire); only the BSP takes the interrupt.
unsafe impl Sync for HandlerClock {}

static HANDLER_CLOCK: HandlerClock = HandlerClock(UnsafeCell::new(None));

/// Interrupts taken since the last [`reset_counts`].
static TAKEN: AtomicU32 = AtomicU32::new(0);
/// Clock reading of the first interrupt since the last [`reset_counts`].
static FIRST_NS: AtomicU64 = AtomicU64::new(0);
/// Clock reading of the latest interrupt.
static LAST_NS: AtomicU64 = AtomicU64::new(0);

/// Latency samples in nanoseconds.
struct Samples(UnsafeCell<[u32; MAX_ITERS as usize]>);

// SAFETY: only `claim_samples` hands the buffer out, once per boot (guarded by
// `SAMPLES_CLAIMED`), to the BSP's scenario code; handlers never touch it.
unsafe impl Sync for Samples {}

static SAMPLES: Samples = Samples(UnsafeCell::new([0; MAX_ITERS as usize]));
static SAMPLES_CLAIMED: AtomicBool = AtomicBool::new(false);

/// The sample buffer, once.
fn claim_samples() -> Result<&'static mut [u32; MAX_ITERS as usize], Text> {
    if SAMPLES_CLAIMED.swap(true, Ordering::AcqRel) {
        return Err(text!("latency sample buffer already in use"));
    }
    // SAFETY: the swap above makes this the only reference ever created (see `Samples`).
    Ok(unsafe { &mut *SAMPLES.0.get() })
}

/// Handler of [`VECTOR`]: timestamps and counts (the stub EOIs afterwards).
fn on_interrupt() {
    // SAFETY: see `HandlerClock`; set before this handler was registered, never changed.
    let clock = unsafe { *HANDLER_CLOCK.0.get() };
    let now = clock.map_or(0, |c| c.now_ns());
    LAST_NS.store(now, Ordering::Release);
    if TAKEN.fetch_add(1, Ordering::AcqRel) == 0 {
        FIRST_NS.store(now, Ordering::Release);
    }
}

/// Starts a new count; call with no interrupt of [`VECTOR`] on its way.
fn reset_counts() {
    TAKEN.store(0, Ordering::Release);
    FIRST_NS.store(0, Ordering::Release);
}

/// The command-line parameters.
struct Params {
    iters: u32,
    period_us: u32,
    count: u32,
}

impl Params {
    fn read(ctx: &Context) -> Result<Params, Text> {
        let iters = pvh::cmdline_u32(ctx.cmdline, "probe.iters", DEFAULT_ITERS)?;
        let period_us = pvh::cmdline_u32(ctx.cmdline, "probe.period_us", DEFAULT_PERIOD_US)?;
        let count = pvh::cmdline_u32(ctx.cmdline, "probe.count", DEFAULT_COUNT)?;
        if iters > MAX_ITERS {
            return Err(text!("probe.iters={} exceeds {}", iters, MAX_ITERS));
        }
        if period_us > MAX_PERIOD_US {
            return Err(text!(
                "probe.period_us={} exceeds {}",
                period_us,
                MAX_PERIOD_US
            ));
        }
        if count > MAX_COUNT {
            return Err(text!("probe.count={} exceeds {}", count, MAX_COUNT));
        }
        Ok(Params {
            iters,
            period_us,
            count,
        })
    }
}

/// How the vector's message is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Compatibility format straight to the BSP.
    Compat,
    /// Remappable format through [`IRTE_INDEX`].
    Remapped,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Compat => "compat",
            Format::Remapped => "remapped",
        }
    }
}

/// Programs [`BENCH_VECTOR`] to deliver [`VECTOR`] to the BSP (through interrupt remapping
/// when the platform has a DMAR) and enables MSI-X.
fn program(ctx: &Context, smp: &Smp, dev: &Testdev, msix: &MsiX) -> Result<Format, Text> {
    let has_dmar = platform::tables(ctx)?.find(b"DMAR").is_some();
    let (format, address, data) = if has_dmar {
        let ir = ir_common::discover(ctx)?;
        let mut vtd = ir_common::enable(&ir.pci_unit(dev.function)?, smp.clock, TABLE_LOG2_LINUX)?;
        let entry = Irte::remapped(VECTOR, smp.bsp_id).verify_sid(dev.function.sid());
        vtd.set_irte(u32::from(IRTE_INDEX), entry)?;
        vtd.invalidate_entries(u32::from(IRTE_INDEX), 0)?;
        (
            Format::Remapped,
            irte::remappable_msi_address(IRTE_INDEX, false),
            0,
        )
    } else {
        let address = vfio_common::compat_address(smp.bsp_id, false).ok_or_else(|| {
            text!(
                "BSP APIC ID {} does not fit a compatibility-format message",
                smp.bsp_id
            )
        })?;
        (Format::Compat, address, u32::from(VECTOR))
    };
    msix.enable_masked();
    msix.set_entry(BENCH_VECTOR, address, data, false)?;
    msix.unmask_function();
    Ok(format)
}

/// What the latency loop measured.
struct Latency {
    summary: Summary,
    per_s: u64,
}

/// Step 1: `iters` doorbell round trips.
fn latency(dev: &Testdev, clock: &Clock, iters: u32) -> Result<Latency, Text> {
    let samples = &mut claim_samples()?[..iters as usize];
    reset_counts();
    let doorbell = DOORBELL_FIRE_ONE | u32::from(BENCH_VECTOR);
    let begin = clock.now_ns();
    for (i, slot) in samples.iter_mut().enumerate() {
        let before = TAKEN.load(Ordering::Acquire);
        let start = clock.now_ns();
        dev.write(testdev::REG_DOORBELL, doorbell);
        let arrived = ir_common::wait(clock, DELIVERY_TIMEOUT_NS, || {
            TAKEN.load(Ordering::Acquire) != before
        });
        if !arrived {
            return Err(text!(
                "doorbell {}: no interrupt within {} ms (device SIGNALS {}, DROPPED {}, DOORBELL 0x{:x})",
                i,
                DELIVERY_TIMEOUT_NS / NS_PER_MS,
                dev.read(testdev::REG_SIGNALS),
                dev.read(testdev::REG_DROPPED),
                dev.read(testdev::REG_DOORBELL)
            ));
        }
        let ns = LAST_NS.load(Ordering::Acquire).saturating_sub(start);
        *slot = u32::try_from(ns).unwrap_or(u32::MAX);
        let (last, done) = dev.poll(clock, testdev::REG_DOORBELL, |v| v == 0);
        if !done {
            return Err(text!(
                "doorbell {}: DOORBELL still reads 0x{:x} after {} ms",
                i,
                last,
                testdev::COMMAND_TIMEOUT_NS / NS_PER_MS
            ));
        }
    }
    let elapsed = clock.now_ns().saturating_sub(begin);
    ir_common::settle(clock, SETTLE_NS);
    let taken = TAKEN.load(Ordering::Acquire);
    if taken != iters {
        return Err(text!(
            "{} interrupts for {} doorbells (one each expected)",
            taken,
            iters
        ));
    }
    let summary = Summary::of(samples);
    let per_s = bench_stats::per_second(u64::from(iters), elapsed);
    sprintln!(
        "vfio-bench-irq: {} doorbells in {} ms ({} per second); latency median {} us, min {} us, max {} us",
        iters,
        elapsed / NS_PER_MS,
        per_s,
        Micros(summary.median),
        Micros(summary.min),
        Micros(summary.max)
    );
    Ok(Latency { summary, per_s })
}

/// What the rate part measured.
struct Rate {
    fired: u32,
    received: u32,
    hz: u64,
}

/// Step 2: `count` timer fires every `period_us`.
fn rate(dev: &Testdev, clock: &Clock, period_us: u32, count: u32) -> Result<Rate, Text> {
    let fired_before = dev.read(REG_TIMER_FIRED);
    let (signals_before, dropped_before) = (
        dev.read(testdev::REG_SIGNALS),
        dev.read(testdev::REG_DROPPED),
    );
    reset_counts();
    dev.write(testdev::REG_TIMER_VECTOR, u32::from(BENCH_VECTOR));
    dev.write(testdev::REG_TIMER_PERIOD, period_us);
    let start = clock.now_ns();
    dev.write(REG_TIMER_COUNT, count);
    let nominal_end = start + u64::from(count) * u64::from(period_us) * NS_PER_US;
    let deadline = nominal_end + RATE_GRACE_NS;
    // Device registers are read only past the nominal end: with a trapped page each read
    // is a VM exit that would slow the guest down while it takes the stream.
    irq::wait_until(clock, deadline, || {
        TAKEN.load(Ordering::Acquire) >= count
            || clock.now_ns() >= nominal_end && dev.read(REG_TIMER_COUNT) == 0
    });
    ir_common::settle(clock, SETTLE_NS);
    let remaining = dev.read(REG_TIMER_COUNT);
    let fired = dev.read(REG_TIMER_FIRED).wrapping_sub(fired_before);
    let signals = dev.read(testdev::REG_SIGNALS).wrapping_sub(signals_before);
    let dropped = dev.read(testdev::REG_DROPPED).wrapping_sub(dropped_before);
    let received = TAKEN.load(Ordering::Acquire);
    let (first, last) = (
        FIRST_NS.load(Ordering::Acquire),
        LAST_NS.load(Ordering::Acquire),
    );
    if remaining != 0 {
        return Err(text!(
            "timer: {} of {} fires still to come {} ms after its nominal end ({} fired, {} received)",
            remaining,
            count,
            RATE_GRACE_NS / NS_PER_MS,
            fired,
            received
        ));
    }
    if received > fired {
        return Err(text!("timer: {} interrupts for {} fires", received, fired));
    }
    let span = if received > 0 {
        last.saturating_sub(start)
    } else {
        0
    };
    let hz = bench_stats::per_second(u64::from(received), span);
    sprintln!(
        "vfio-bench-irq: timer {} x {} us: {} fired ({} signals, {} dropped by the device), {} received, first after {} us, last after {} ms: {} per second",
        count,
        period_us,
        fired,
        signals,
        dropped,
        received,
        first.saturating_sub(start) / NS_PER_US,
        span / NS_PER_MS,
        hz
    );
    Ok(Rate {
        fired,
        received,
        hz,
    })
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let params = Params::read(ctx)?;
    let smp = smp::prepare(ctx)?;
    let clock = smp.clock;
    let dev = Testdev::find()?;
    let msix = vfio_common::msix(&dev, usize::from(BENCH_VECTOR) + 1)?;
    // SAFETY: see `HandlerClock`: the handler is registered only below.
    unsafe { *HANDLER_CLOCK.0.get() = Some(clock) };
    irq::set_handler(VECTOR, on_interrupt)?;
    let format = program(ctx, &smp, &dev, &msix)?;
    let at = msix.table_location();
    sprintln!(
        "vfio-bench-irq: {} MSI-X vector {} -> APIC ID {} vector 0x{:x} ({}), table BAR{}+0x{:x}, clock {}",
        dev.function,
        BENCH_VECTOR,
        smp.bsp_id,
        VECTOR,
        format.name(),
        at.bir,
        at.offset,
        clock.source_name()
    );

    let lat = if params.iters > 0 {
        latency(&dev, &clock, params.iters)?
    } else {
        Latency {
            summary: Summary::default(),
            per_s: 0,
        }
    };
    let rate = if params.count > 0 {
        rate(&dev, &clock, params.period_us, params.count)?
    } else {
        Rate {
            fired: 0,
            received: 0,
            hz: 0,
        }
    };
    irq::stop_tick();
    Ok(text!(
        "format={} msix_bir={} iters={} lat_med_us={} lat_min_us={} lat_max_us={} irq_per_s={} period_us={} count={} fired={} received={} lost={} rate_hz={}",
        format.name(),
        at.bir,
        params.iters,
        Micros(lat.summary.median),
        Micros(lat.summary.min),
        Micros(lat.summary.max),
        lat.per_s,
        params.period_us,
        params.count,
        rate.fired,
        rate.received,
        rate.fired - rate.received,
        rate.hz
    ))
}
