//! `probe=ipi`: a fixed IPI reaches every CPU by its 32-bit x2APIC ID.
//!
//! After bringing up the APs as `smp` does (but leaving them in `sti; hlt` with their APIC
//! enabled), the BSP sends one fixed, physical-destination IPI with [`VECTOR`] to every
//! CPU of the MADT in turn, itself included (through its own ID, not the self shorthand),
//! then waits for all of them collectively (5 s + 10 ms per CPU). Each CPU's handler counts
//! the interrupt in its own slot and records the ID it reads from its x2APIC ID register.
//! Passes with `cpus=<N> acked=<N>` when every CPU took exactly one such interrupt and the
//! IDs match; with more than 256 CPUs this covers APIC IDs above 255.

use core::sync::atomic::{AtomicU32, Ordering};

use super::smp;
use super::Context;
use crate::ap::{self, ApMode, Cpu, MAX_APS};
use crate::cpus::MAX_CPUS;
use crate::report::Outcome;
use crate::{apic, irq, sprintln, text};

/// The test vector.
const VECTOR: u8 = irq::TEST_VECTOR_A;
/// Wait for acknowledgments: this much plus [`DEADLINE_PER_CPU_NS`] per CPU.
const DEADLINE_BASE_NS: u64 = 5_000_000_000;
/// Wait per CPU.
const DEADLINE_PER_CPU_NS: u64 = 10_000_000;
/// After all acknowledged, how long to keep watching for duplicate deliveries.
const SETTLE_NS: u64 = 20_000_000;
/// `RECEIVED_ID` value of a slot whose handler has not run.
const NONE: u32 = u32::MAX;

/// Interrupts taken per AP slot.
static HITS: [AtomicU32; MAX_APS] = [const { AtomicU32::new(0) }; MAX_APS];
/// x2APIC ID each AP's handler read.
static RECEIVED_ID: [AtomicU32; MAX_APS] = [const { AtomicU32::new(NONE) }; MAX_APS];
/// Interrupts the BSP took.
static BSP_HITS: AtomicU32 = AtomicU32::new(0);
/// ID the BSP's handler read.
static BSP_RECEIVED_ID: AtomicU32 = AtomicU32::new(NONE);
/// Interrupts taken by all CPUs.
static TOTAL: AtomicU32 = AtomicU32::new(0);

/// Handler of [`VECTOR`] on every CPU.
fn on_ipi() {
    let id = apic::id();
    match ap::current_cpu() {
        Cpu::Bsp => {
            BSP_HITS.fetch_add(1, Ordering::Relaxed);
            BSP_RECEIVED_ID.store(id, Ordering::Relaxed);
        }
        Cpu::Ap(slot) => {
            if let (Some(hits), Some(rid)) = (HITS.get(slot), RECEIVED_ID.get(slot)) {
                hits.fetch_add(1, Ordering::Relaxed);
                rid.store(id, Ordering::Relaxed);
            }
        }
    }
    TOTAL.fetch_add(1, Ordering::Release);
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    irq::set_handler(VECTOR, on_ipi)?;
    let b = smp::bring_up(ctx, &smp, ApMode::Interrupts)?;

    let n = smp.cpus.len();
    let begin = smp.clock.now_ns();
    for &id in smp.cpus.ids() {
        // SAFETY: a fixed IPI to a CPU whose handler for VECTOR is installed.
        unsafe {
            apic::send_ipi(
                id,
                apic::ICR_DELIVERY_FIXED | apic::ICR_TRIGGER_EDGE | u64::from(VECTOR),
            )
        };
    }
    let deadline = begin + DEADLINE_BASE_NS + DEADLINE_PER_CPU_NS * n as u64;
    let all = irq::wait_until(&smp.clock, deadline, || {
        TOTAL.load(Ordering::Acquire) as usize >= n
    });
    let elapsed_ms = smp.clock.now_ns().saturating_sub(begin) / 1_000_000;
    if all {
        let settle = smp.clock.now_ns() + SETTLE_NS;
        irq::wait_until(&smp.clock, settle, || false);
    }
    irq::stop_tick();
    let total = TOTAL.load(Ordering::Acquire);
    sprintln!(
        "ipi: {} interrupts for {} CPUs in {} ms",
        total,
        n,
        elapsed_ms
    );

    let mut acked = 0usize;
    let bsp_hits = BSP_HITS.load(Ordering::Acquire);
    let bsp_rid = BSP_RECEIVED_ID.load(Ordering::Acquire);
    if bsp_hits != 1 || bsp_rid != smp.bsp_id {
        return Err(text!(
            "BSP (ID {}) took {} interrupts (handler read ID {})",
            smp.bsp_id,
            bsp_hits,
            bsp_rid
        ));
    }
    acked += 1;
    let mut missing = [0u32; MAX_CPUS];
    let mut n_missing = 0;
    for slot in 0..b.sent {
        let id = ap::slot_id(slot).unwrap_or(NONE);
        let hits = HITS[slot].load(Ordering::Acquire);
        let rid = RECEIVED_ID[slot].load(Ordering::Acquire);
        if hits == 0 {
            missing[n_missing] = id;
            n_missing += 1;
            continue;
        }
        if hits != 1 || rid != id {
            return Err(text!(
                "AP {} took {} interrupts (handler read ID {})",
                id,
                hits,
                rid
            ));
        }
        acked += 1;
    }
    if n_missing > 0 {
        let missing = &mut missing[..n_missing];
        missing.sort_unstable();
        return Err(text!(
            "{} of {} CPUs got no IPI within {} ms; first IDs: {:?}",
            n_missing,
            n,
            elapsed_ms,
            &missing[..n_missing.min(6)]
        ));
    }
    if total as usize != acked {
        return Err(text!("{} interrupts for {} CPUs", total, acked));
    }
    Ok(text!("cpus={} acked={}", n, acked))
}
