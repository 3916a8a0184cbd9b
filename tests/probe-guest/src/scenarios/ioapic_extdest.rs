//! `probe=ioapic-extdest`: an IOAPIC pin interrupt reaches a CPU with an APIC ID above 255
//! through the extended destination ID (no IOMMU).
//!
//! Needs a MADT whose highest AP ID is above 255 (more than 256 vCPUs) and CPUID
//! 0x40000001 EAX bit 15 (KVM_FEATURE_MSI_EXT_DEST_ID); fails with the reason otherwise.
//! Brings up all APs ready for interrupts, programs the RTE of COM1's IRQ 4 (after any MADT
//! source override) for [`VECTOR`], fixed, physical, unmasked, destination = that AP with
//! ID bits 7:0 in RTE 63:56 and bits 14:8 in RTE 55:49, then has COM1 raise its
//! transmitter-empty interrupt (IER.THRE with OUT2; if nothing arrives, one byte written to
//! THR). The handler silences the UART, records which CPU took it, and EOIs. Passes with
//! `apic_id=<M> vector=0x41` when exactly that CPU took exactly one interrupt (the BSP and
//! every other AP are running with the same handler, so a misdirected interrupt shows).

use core::sync::atomic::{AtomicU32, Ordering};

use super::smp;
use super::Context;
use crate::ap::{self, ApMode, Cpu};
use crate::clock::Clock;
use crate::cpus::MAX_CPUS;
use crate::ioapic::{self, IoApic};
use crate::kvm::{self, Kvm};
use crate::report::Outcome;
use crate::{irq, serial, sprintln, text};

/// The vector the IOAPIC delivers.
const VECTOR: u8 = irq::TEST_VECTOR_B;
/// COM1's ISA IRQ.
const COM1_IRQ: u8 = 4;
/// Highest APIC ID an xAPIC-format destination can name.
const MAX_XAPIC_ID: u32 = 0xff;
/// How long to wait for the IER-write interrupt before writing a byte to THR.
const FIRST_WAIT_NS: u64 = 2_000_000_000;
/// How long to wait after the THR write.
const SECOND_WAIT_NS: u64 = 3_000_000_000;
/// The longest [`raise_com1_interrupt`] waits for the interrupt.
pub(super) const COM1_WAIT_NS: u64 = FIRST_WAIT_NS + SECOND_WAIT_NS;
/// After the interrupt, how long to keep watching for a second one.
const SETTLE_NS: u64 = 50_000_000;
/// `TAKEN_BY` before any CPU took the interrupt.
const NONE: u32 = u32::MAX;

/// Interrupts taken on [`VECTOR`] by any CPU.
static TAKEN: AtomicU32 = AtomicU32::new(0);
/// x2APIC ID of the CPU that took the last one.
static TAKEN_BY: AtomicU32 = AtomicU32::new(NONE);
/// Of those, taken by the BSP.
static BSP_TOOK: AtomicU32 = AtomicU32::new(0);

/// Handler of [`VECTOR`] on every CPU.
fn on_uart_interrupt() {
    serial::disable_interrupts();
    TAKEN_BY.store(crate::apic::id(), Ordering::Relaxed);
    if ap::current_cpu() == Cpu::Bsp {
        BSP_TOOK.fetch_add(1, Ordering::Relaxed);
    }
    TAKEN.fetch_add(1, Ordering::Release);
}

/// Makes COM1 raise its transmitter-empty interrupt (IER.THRE with OUT2) and waits until
/// `took()` holds; if it does not within [`FIRST_WAIT_NS`], writes one byte to THR and waits
/// [`SECOND_WAIT_NS`] more. Then watches [`SETTLE_NS`] for further interrupts and turns the
/// UART's interrupts off again. Returns whether the byte was needed. Nothing may print while
/// this runs; the interrupt's handler must call [`serial::disable_interrupts`].
pub(super) fn raise_com1_interrupt(clock: &Clock, took: impl Fn() -> bool) -> bool {
    serial::enable_thr_empty_interrupt();
    let mut kicked = false;
    if !irq::wait_until(clock, clock.now_ns() + FIRST_WAIT_NS, &took) {
        kicked = true;
        serial::kick_transmitter(b'\n');
        irq::wait_until(clock, clock.now_ns() + SECOND_WAIT_NS, &took);
    }
    irq::wait_until(clock, clock.now_ns() + SETTLE_NS, || false);
    serial::disable_interrupts();
    kicked
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let mut aps = [0u32; MAX_CPUS];
    let n_aps = smp.cpus.aps(smp.bsp_id, &mut aps);
    let target = aps[..n_aps].last().copied().unwrap_or(0);
    if n_aps == 0 || target <= MAX_XAPIC_ID {
        return Err(text!(
            "highest AP APIC ID is {} (needs > {}: run with more than 256 vCPUs)",
            target,
            MAX_XAPIC_ID
        ));
    }
    let kvm = Kvm::detect().ok_or_else(|| text!("no KVM hypervisor CPUID leaves"))?;
    if !kvm.has(kvm::FEATURE_MSI_EXT_DEST_ID) {
        return Err(text!(
            "KVM_FEATURE_MSI_EXT_DEST_ID not offered (CPUID 0x{:x} EAX=0x{:x}, bit 15 clear)",
            kvm.base + 1,
            kvm.features
        ));
    }
    let dest_bits = ioapic::ext_dest_bits(target).ok_or_else(|| {
        text!(
            "APIC ID {} is above the extended destination ID's limit {}",
            target,
            ioapic::MAX_EXT_DEST_ID
        )
    })?;
    let madt = smp.madt()?;
    let route = ioapic::isa_route(&madt, COM1_IRQ)?;
    let (io, pin) = IoApic::for_gsi(&madt, route.gsi)?;

    irq::set_handler(VECTOR, on_uart_interrupt)?;
    smp::bring_up(ctx, &smp, ApMode::Interrupts)?;
    let rte = u64::from(VECTOR)
        | ioapic::RTE_DELIVERY_FIXED
        | ioapic::RTE_DEST_PHYSICAL
        | route.rte_flags
        | dest_bits;
    sprintln!(
        "ioapic-extdest: IOAPIC 0x{:x} pin {} (IRQ {} GSI {}) RTE 0x{:016x} -> APIC ID {}",
        io.base,
        pin,
        COM1_IRQ,
        route.gsi,
        rte,
        target
    );

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
    let clock = &smp.clock;
    let kicked = raise_com1_interrupt(clock, || TAKEN.load(Ordering::Acquire) > 0);
    io.set_rte(pin, ioapic::RTE_MASKED | rte);
    irq::stop_tick();

    let taken = TAKEN.load(Ordering::Acquire);
    let taken_by = TAKEN_BY.load(Ordering::Acquire);
    let bsp_took = BSP_TOOK.load(Ordering::Acquire);
    if kicked {
        sprintln!("ioapic-extdest: no interrupt on the IER write; wrote a byte to THR");
    }
    if taken == 0 {
        return Err(text!(
            "no interrupt on vector 0x{:x} from IOAPIC pin {} within {} ms",
            VECTOR,
            pin,
            COM1_WAIT_NS / 1_000_000
        ));
    }
    if bsp_took != 0 {
        return Err(text!(
            "the BSP (ID {}) took {} of {} interrupts meant for APIC ID {}",
            smp.bsp_id,
            bsp_took,
            taken,
            target
        ));
    }
    if taken != 1 || taken_by != target {
        return Err(text!(
            "{} interrupts, last on APIC ID {}, expected one on APIC ID {}",
            taken,
            taken_by,
            target
        ));
    }
    Ok(text!("apic_id={} vector=0x{:x}", target, VECTOR))
}
