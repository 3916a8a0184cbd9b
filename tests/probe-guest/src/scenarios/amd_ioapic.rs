//! `probe=amd-ir-ioapic`: an I/O APIC pin remapped by an AMD-Vi unit through the interrupt
//! table of the I/O APIC's device ID to a CPU above APIC ID 255.
//!
//! The I/O APIC's device ID comes from the IVRS special entry (variety 1) whose handle is its
//! MADT ID (irvmm and QEMU: 00:14.0, Linux's `IOAPIC_SB_DEVID`). Enables the unit as Linux
//! does, brings up every AP ready for [`VECTOR`], gives that device ID a 512-entry table,
//! writes IRTE `pin` (Linux reserves the first 32 entries of the I/O APIC's table for its
//! pins, entry = pin) with fixed delivery of [`VECTOR`] to the highest APIC ID (> 255),
//! invalidates the table, and programs COM1's pin (IRQ 4 after any source override) the way
//! Linux's AMD remapping does: the vector field holds the entry index, destination 0,
//! fixed, physical, edge. The message the I/O APIC sends then carries the index in data
//! bits 7:0, which only the unit turns into an interrupt (vector 4 would be illegal
//! unremapped). COM1 raises its transmitter-empty interrupt (as in `ioapic-extdest`); the
//! handler's local x2APIC EOI ends it.
//!
//! Passes with `apic_id=M index=I devid=0xDDDD` when exactly that CPU took exactly one.

use super::amd_common;
use super::ioapic_extdest::COM1_WAIT_NS;
use super::ir_common::{self, COM1_IRQ, NS_PER_MS};
use super::smp;
use super::Context;
use crate::amdvi::irte::{Irte, LINUX_LEN_LOG2};
use crate::amdvi::{Options, UnitInterrupts};
use crate::ap::ApMode;
use crate::report::Outcome;
use crate::tally::DEVICE;
use crate::{irq, sprintln, text};

/// The vector the entry delivers.
const VECTOR: u8 = irq::TEST_VECTOR_B;
/// Entries Linux reserves for the I/O APIC's pins.
const RESERVED_PIN_ENTRIES: u32 = 32;
/// RTE vector field: bits 7:0.
const RTE_VECTOR_MASK: u64 = 0xff;

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = amd_common::discover(ctx)?;
    let target = ir_common::highest_ap(&smp)?;
    let (route, io, pin) = ir_common::com1_route(&smp)?;
    let device_id = platform.unit.ioapic_device_id(io.id)?;
    if pin >= RESERVED_PIN_ENTRIES {
        return Err(text!(
            "COM1 is on pin {} (Linux's I/O APIC table reserves entries for pins 0..{})",
            pin,
            RESERVED_PIN_ENTRIES
        ));
    }
    let clock = smp.clock;

    irq::set_handler(VECTOR, ir_common::on_uart_interrupt)?;
    let options = Options {
        interrupts: UnitInterrupts::Off,
        guest_apic: false,
    };
    let mut vi = amd_common::enable(&platform, clock, options)?;
    smp::bring_up(ctx, &smp, ApMode::Interrupts)?;
    let table = vi.attach(device_id, LINUX_LEN_LOG2)?;
    table.set(pin, Irte::remapped(VECTOR, target))?;
    vi.invalidate_table(device_id)?;
    // Fixed, physical, edge (or as the override says), destination 0, vector = the index.
    let rte = (u64::from(pin) & RTE_VECTOR_MASK) | route.rte_flags;
    sprintln!(
        "amd-ir-ioapic: IOAPIC {} at 0x{:x} devid=0x{:04x} pin {} (IRQ {} GSI {}) RTE 0x{:016x} -> table 0x{:x} IRTE {} -> APIC ID {} vector 0x{:x}",
        io.id,
        io.base,
        device_id,
        pin,
        COM1_IRQ,
        route.gsi,
        rte,
        table.root,
        pin,
        target,
        VECTOR
    );
    ir_common::fire_com1_pin("amd-ir-ioapic", &io, pin, rte, &clock)?;
    if DEVICE.total() == 0 {
        return Err(text!(
            "no interrupt from IOAPIC pin {} within {} ms (AMD-Vi status 0x{:x})",
            pin,
            COM1_WAIT_NS / NS_PER_MS,
            vi.status()
        ));
    }
    ir_common::expect_only(&DEVICE, target, 1, "COM1 interrupt")?;
    Ok(text!(
        "apic_id={} index={} devid=0x{:04x}",
        target,
        pin,
        device_id
    ))
}
