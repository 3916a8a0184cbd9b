//! `probe=ir-ioapic`: an I/O APIC pin in remappable format reaches a CPU above APIC ID 255
//! through an interrupt remapping table entry.
//!
//! Brings up every AP ready for [`VECTOR`], enables remapping as Linux does, writes IRTE
//! [`INDEX`] (fixed delivery of [`VECTOR`] to the highest APIC ID, which must be > 255;
//! SVT = 1 with the I/O APIC's source-id from its DMAR device scope, matched by MADT ID),
//! invalidates it, and programs COM1's pin (IRQ 4 after any source override) in remappable
//! format: bit 48 set, index 14:0 in bits 63:49, index bit 15 in bit 11 ([`INDEX`] has it
//! set, so both parts of the handle are exercised), the vector field holding the pin number
//! as Linux does, edge. COM1 then raises its transmitter-empty interrupt (as in
//! `ioapic-extdest`). The pin is edge-triggered, so the handler's local x2APIC EOI ends it
//! (Linux writes the I/O APIC's EOI register only for level pins).
//!
//! Passes with `apic_id=M index=I sid=0xSSSS` when exactly that CPU took exactly one.

use super::ioapic_extdest::COM1_WAIT_NS;
use super::ir_common::{self, COM1_IRQ, NS_PER_MS};
use super::smp;
use super::Context;
use crate::ap::ApMode;
use crate::report::Outcome;
use crate::tally::DEVICE;
use crate::vtd::{irte, Irte, TABLE_LOG2_LINUX};
use crate::{irq, sprintln, text};

/// The vector the entry delivers.
const VECTOR: u8 = irq::TEST_VECTOR_B;
/// The entry the RTE names (bit 15 set: it travels in RTE bit 11).
const INDEX: u32 = 0x8042;
/// RTE vector field: bits 7:0.
const RTE_VECTOR_MASK: u64 = 0xff;

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = ir_common::discover(ctx)?;
    let target = ir_common::highest_ap(&smp)?;
    let (route, io, pin) = ir_common::com1_route(&smp)?;
    let scope = platform.dmar.ioapic(io.id)?;
    let unit = platform
        .dmar
        .units()
        .get(scope.unit)
        .copied()
        .ok_or_else(|| text!("DMAR scope of I/O APIC {} names no unit", io.id))?;
    let clock = smp.clock;

    irq::set_handler(VECTOR, ir_common::on_uart_interrupt)?;
    // Remapping first, as Linux enables it before it starts the APs.
    let mut vtd = ir_common::enable(&unit, clock, TABLE_LOG2_LINUX)?;
    smp::bring_up(ctx, &smp, ApMode::Interrupts)?;
    vtd.set_irte(INDEX, Irte::remapped(VECTOR, target).verify_sid(scope.sid))?;
    vtd.invalidate_entries(INDEX, 0)?;
    let handle = super::ir_basic::index_handle(INDEX)?;
    let rte = irte::remappable_rte(handle) | (u64::from(pin) & RTE_VECTOR_MASK) | route.rte_flags;
    sprintln!(
        "ir-ioapic: IOAPIC {} at 0x{:x} sid=0x{:04x} pin {} (IRQ {} GSI {}) RTE 0x{:016x} -> IRTE {} -> APIC ID {} vector 0x{:x}",
        io.id,
        io.base,
        scope.sid,
        pin,
        COM1_IRQ,
        route.gsi,
        rte,
        INDEX,
        target,
        VECTOR
    );
    ir_common::fire_com1_pin("ir-ioapic", &io, pin, rte, &clock)?;
    if DEVICE.total() == 0 {
        return Err(text!(
            "no interrupt from IOAPIC pin {} within {} ms (FSTS 0x{:x})",
            pin,
            COM1_WAIT_NS / NS_PER_MS,
            vtd.fsts()
        ));
    }
    ir_common::expect_only(&DEVICE, target, 1, "COM1 interrupt")?;
    Ok(text!(
        "apic_id={} index=0x{:x} sid=0x{:04x}",
        target,
        INDEX,
        scope.sid
    ))
}
