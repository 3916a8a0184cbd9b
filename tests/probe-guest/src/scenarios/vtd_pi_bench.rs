//! `probe=vtd-pi-bench`: how many edu-msix interrupts per second reach the guest through a
//! remapped-format IRTE and through a posted-format IRTE (VT-d CAP.PI); run by
//! `benches/vtd_posting.py`.
//!
//! Command line: `probe.iters=K` (default [`DEFAULT_ITERS`], at most [`MAX_ITERS`]; 0 sets
//! up only). Runs on the BSP alone (the APs stay in wait-for-SIPI) with irvmm's edu-msix
//! device (1234:11e9) and a unit reporting CAP.PI; MSI-X vector 0 names IRTE [`INDEX`].
//! Each round trip is sequential: raise the vector (register 0x68), wait in `sti; hlt`
//! until the handler saw it, raise the next.
//!
//! * Remapped: the entry delivers [`RV`] to the BSP; its handler counts.
//! * Posted: the entry posts [`PV`] into a descriptor whose notification vector [`NV`]
//!   targets the BSP. The NV handler does what a guest hypervisor's notification handler
//!   does: clears ON (`lock and`), harvests the PIR dword holding PV (`xchg`) and counts the
//!   posted interrupt found there. Every raise must bring exactly one notification and one
//!   harvested PIR bit.
//!
//! The formats alternate in blocks of [`BLOCK`] round trips (the entry rewritten and
//! invalidated between blocks, outside the timed spans), K per format in all, so that load
//! changes on the host hit both alike. Timed with the probe's clock (kvmclock, or the TSC
//! with its CPUID frequency), the wake-up tick left running (a lost interrupt then fails
//! the run after the delivery timeout instead of hanging it). Passes with `iters=K remapped_per_s=N
//! posted_per_s=M ratio=X.YYY` (posted / remapped).

use core::sync::atomic::{AtomicU32, Ordering};

use super::bench_stats;
use super::ir_common::{self, DELIVERY_TIMEOUT_NS, NS_PER_MS, SETTLE_NS};
use super::smp;
use super::Context;
use crate::clock::Clock;
use crate::edu::{self, Edu};
use crate::msi::MsiX;
use crate::report::{Outcome, Text};
use crate::vtd::posted::{posted_irte, Descriptor, CAP_PI, PD_ON};
use crate::vtd::{irte, Irte, Vtd, TABLE_LOG2_LINUX};
use crate::{irq, pvh, sprintln, text};

/// Round trips per phase when the command line does not say.
const DEFAULT_ITERS: u32 = 1000;
/// Most round trips per phase.
const MAX_ITERS: u32 = 1_000_000;
/// The remapped entry's vector.
const RV: u8 = irq::TEST_VECTOR_A;
/// The notification vector.
const NV: u8 = irq::TEST_VECTOR_B;
/// The posted vector (a PIR bit, never delivered to a CPU).
const PV: u8 = irq::TEST_VECTOR_C;
/// The entry MSI-X vector 0 names.
const INDEX: u16 = 0x400;
/// Parts per thousand, for the ratio.
const MILLI: u64 = 1000;
/// Round trips per block: the formats alternate block by block.
const BLOCK: u32 = 1000;

/// The descriptor the posted entry names.
static PD: Descriptor = Descriptor::new();
/// Remapped interrupts taken.
static REMAPPED: AtomicU32 = AtomicU32::new(0);
/// Notifications taken.
static NOTIFIED: AtomicU32 = AtomicU32::new(0);
/// Posted interrupts harvested from PIR.
static HARVESTED: AtomicU32 = AtomicU32::new(0);
/// Posted-vector interrupts that reached the CPU directly (must stay 0).
static STRAYS: AtomicU32 = AtomicU32::new(0);

fn on_remapped() {
    REMAPPED.fetch_add(1, Ordering::SeqCst);
}

/// The guest hypervisor's notification handler: ON first, then PIR.
fn on_notification() {
    NOTIFIED.fetch_add(1, Ordering::SeqCst);
    PD.update_control(PD_ON, 0);
    if PD.take(PV) {
        HARVESTED.fetch_add(1, Ordering::SeqCst);
    }
}

fn on_stray() {
    STRAYS.fetch_add(1, Ordering::SeqCst);
}

/// `iters` sequential round trips: raise, wait until `count` moved. Returns the elapsed
/// nanoseconds.
fn round_trips(
    edu: &Edu,
    clock: &Clock,
    iters: u32,
    count: &AtomicU32,
    what: &str,
) -> Result<u64, Text> {
    let begin = clock.now_ns();
    for i in 0..iters {
        let before = count.load(Ordering::SeqCst);
        edu.trigger_msix(0);
        if !ir_common::wait(clock, DELIVERY_TIMEOUT_NS, || {
            count.load(Ordering::SeqCst) != before
        }) {
            return Err(text!(
                "{} round trip {}: nothing within {} ms (notified {}, harvested {}, ON {})",
                what,
                i,
                DELIVERY_TIMEOUT_NS / NS_PER_MS,
                NOTIFIED.load(Ordering::SeqCst),
                HARVESTED.load(Ordering::SeqCst),
                PD.on()
            ));
        }
    }
    Ok(clock.now_ns().saturating_sub(begin))
}

/// Writes entry [`INDEX`] and invalidates it.
fn set_entry(vtd: &mut Vtd, entry: Irte) -> Result<(), Text> {
    vtd.set_irte(u32::from(INDEX), entry)?;
    vtd.invalidate_entries(u32::from(INDEX), 0)
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let iters = pvh::cmdline_u32(ctx.cmdline, "probe.iters", DEFAULT_ITERS)?;
    if iters > MAX_ITERS {
        return Err(text!("probe.iters={} exceeds {}", iters, MAX_ITERS));
    }
    let smp = smp::prepare(ctx)?;
    let platform = ir_common::discover(ctx)?;
    let edu = Edu::find(edu::EDU_MSIX_DEVICE_ID)?;
    let msix = MsiX::find(edu.function)?;
    let sid = edu.function.sid();
    let (bsp, clock) = (smp.bsp_id, smp.clock);
    irq::set_handler(RV, on_remapped)?;
    irq::set_handler(NV, on_notification)?;
    irq::set_handler(PV, on_stray)?;
    let mut vtd = ir_common::enable(&platform.pci_unit(edu.function)?, clock, TABLE_LOG2_LINUX)?;
    if vtd.cap() & CAP_PI == 0 {
        return Err(text!(
            "the VT-d unit does not report CAP.PI (CAP 0x{:x}): no posted interrupts",
            vtd.cap()
        ));
    }
    PD.reset(NV, bsp);
    let remapped_entry = Irte::remapped(RV, bsp).verify_sid(sid);
    let posted_entry = posted_irte(PV, PD.address(), false, Some(sid));
    set_entry(&mut vtd, remapped_entry)?;
    msix.enable_masked();
    msix.set_entry(0, irte::remappable_msi_address(INDEX, false), 0, false)?;
    msix.unmask_function();
    sprintln!(
        "vtd-pi-bench: edu-msix {} vector 0 -> IRTE 0x{:x} -> BSP (APIC ID {}), {} round trips per format",
        edu.function,
        INDEX,
        bsp,
        iters
    );

    // Alternating blocks, so that load changes on the host hit both formats alike.
    let (mut remapped_ns, mut posted_ns) = (0u64, 0u64);
    let mut left = iters;
    while left > 0 {
        let n = left.min(BLOCK);
        set_entry(&mut vtd, remapped_entry)?;
        remapped_ns += round_trips(&edu, &clock, n, &REMAPPED, "remapped")?;
        set_entry(&mut vtd, posted_entry)?;
        posted_ns += round_trips(&edu, &clock, n, &HARVESTED, "posted")?;
        left -= n;
    }
    ir_common::settle(&clock, SETTLE_NS);
    irq::stop_tick();
    msix.mask_function();

    let (remapped, notified, harvested, strays) = (
        REMAPPED.load(Ordering::SeqCst),
        NOTIFIED.load(Ordering::SeqCst),
        HARVESTED.load(Ordering::SeqCst),
        STRAYS.load(Ordering::SeqCst),
    );
    if remapped != iters || notified != iters || harvested != iters || strays != 0 {
        return Err(text!(
            "{} raises per format: {} remapped, {} notifications, {} harvested, {} posted vectors delivered directly",
            iters,
            remapped,
            notified,
            harvested,
            strays
        ));
    }
    let remapped_per_s = bench_stats::per_second(u64::from(iters), remapped_ns);
    let posted_per_s = bench_stats::per_second(u64::from(iters), posted_ns);
    let ratio = (posted_per_s * MILLI)
        .checked_div(remapped_per_s)
        .unwrap_or(0);
    sprintln!(
        "vtd-pi-bench: remapped {} in {} ms, posted {} in {} ms",
        iters,
        remapped_ns / NS_PER_MS,
        iters,
        posted_ns / NS_PER_MS
    );
    Ok(text!(
        "iters={} remapped_per_s={} posted_per_s={} ratio={}.{:03}",
        iters,
        remapped_per_s,
        posted_per_s,
        ratio / MILLI,
        ratio % MILLI
    ))
}
