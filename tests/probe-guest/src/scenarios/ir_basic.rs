//! `probe=ir-basic`: a device MSI remapped to a CPU above APIC ID 255, and the interrupt
//! entry cache's rule that an entry changes only when it is invalidated.
//!
//! Brings up every AP ready for [`VECTOR`] (all CPUs count receipts by APIC ID), enables
//! queued invalidation and interrupt remapping in x2APIC mode as Linux does (65536 entries),
//! writes IRTE [`INDEX`] (fixed delivery of [`VECTOR`] to the highest APIC ID `A`, which must
//! be > 255; SVT = 1 with the edu device's requester ID), invalidates it, and programs the edu
//! device's MSI with a remappable-format address (handle [`INDEX`], SHV, subhandle 0).
//!
//! 1. Raise: exactly one interrupt, on `A`.
//! 2. Rewrite the entry to `B` (the lowest AP ID) without invalidating it and raise: the unit
//!    may still use its cached entry. irvmm documents that it does (its KVM routes are the
//!    interrupt entry cache), so there the interrupt must reach `A` again; elsewhere either
//!    outcome is printed as an observation (QEMU reads the entry on every interrupt).
//! 3. Invalidate just that index (IEC, index-selective, + wait) and raise: it reaches `B`.
//!
//! Passes with `from=A to=B index=I`.

use super::ir_common::{self, IrPlatform, DELIVERY_TIMEOUT_NS};
use super::smp::{self, Smp};
use super::Context;
use crate::ap::ApMode;
use crate::edu::{self, Edu};
use crate::msi::Msi;
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE};
use crate::vtd::{irte, Irte, TABLE_LOG2_LINUX};
use crate::{irq, sprintln, text};

/// The vector the entry delivers.
const VECTOR: u8 = irq::TEST_VECTOR_A;
/// The entry the device's MSI names.
const INDEX: u32 = 0x123;

/// Where the steps moved the interrupt.
pub struct Moved {
    /// The highest APIC ID: the entry's first target.
    pub from: u32,
    /// The lowest AP ID: where the interrupt goes after the invalidation.
    pub to: u32,
    /// The entry the device's MSI names.
    pub index: u32,
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = ir_common::discover(ctx)?;
    let moved = exercise(ctx, &smp, &platform)?;
    Ok(text!(
        "from={} to={} index={}",
        moved.from,
        moved.to,
        moved.index
    ))
}

/// The scenario's steps after [`smp::prepare`] and [`ir_common::discover`]: enables
/// remapping, starts the APs and checks the three raises (see the module documentation).
/// Shared with `hostile`, which runs them after its garbage.
pub fn exercise(ctx: &Context, smp: &Smp, platform: &IrPlatform) -> Result<Moved, Text> {
    let edu = Edu::find(edu::EDU_DEVICE_ID)?;
    let msi = Msi::find(edu.function)?;
    let (from, to) = ir_common::from_and_to(smp)?;
    let sid = edu.function.sid();
    let clock = smp.clock;

    irq::set_handler(VECTOR, tally::on_device)?;
    // Remapping first, as Linux enables it before it starts the APs.
    let mut vtd = ir_common::enable(&platform.pci_unit(edu.function)?, clock, TABLE_LOG2_LINUX)?;
    smp::bring_up(ctx, smp, ApMode::Interrupts)?;
    vtd.set_irte(INDEX, Irte::remapped(VECTOR, from).verify_sid(sid))?;
    vtd.invalidate_entries(INDEX, 0)?;
    let handle = index_handle(INDEX)?;
    let address = irte::remappable_msi_address(handle, true);
    msi.program(address, 0);
    sprintln!(
        "ir-basic: edu {} sid=0x{:04x} bar0=0x{:x} MSI 0x{:08x}/0 -> IRTE {} -> APIC ID {} vector 0x{:x}",
        edu.function,
        sid,
        edu.bar0(),
        address,
        INDEX,
        from,
        VECTOR
    );

    // 1. Remapped to `from`.
    if !ir_common::fire_edu(&edu, &clock, 1) {
        return Err(text!(
            "no interrupt within {} ms of the edu raise (edu status 0x{:x}, FSTS 0x{:x}); {}",
            DELIVERY_TIMEOUT_NS / ir_common::NS_PER_MS,
            edu.status(),
            vtd.fsts(),
            ir_common::Takers(&DEVICE)
        ));
    }
    ir_common::expect_only(&DEVICE, from, 1, "first raise")?;

    // 2. The entry now names `to`, but nobody told the unit.
    vtd.set_irte(INDEX, Irte::remapped(VECTOR, to).verify_sid(sid))?;
    let arrived = ir_common::fire_edu(&edu, &clock, 2);
    let (at_from, at_to) =
        ir_common::check_unannounced("ir-basic", platform.vmm, from, to, arrived)?;

    // 3. Invalidate just that entry: the next interrupt follows it.
    vtd.invalidate_entries(INDEX, 0)?;
    let expect_to = at_to + 1;
    if !ir_common::fire_edu(&edu, &clock, 3)
        || DEVICE.hits(to) != expect_to
        || DEVICE.hits(from) != at_from
    {
        return Err(text!(
            "after the IEC invalidation of index {}: {} interrupts on APIC ID {} (expected {}), \
             {} on {} (expected {}), {} in all",
            INDEX,
            DEVICE.hits(to),
            to,
            expect_to,
            DEVICE.hits(from),
            from,
            at_from,
            DEVICE.total()
        ));
    }
    irq::stop_tick();
    msi.disable();
    Ok(Moved {
        from,
        to,
        index: INDEX,
    })
}

/// `index` as a 16-bit handle.
pub(super) fn index_handle(index: u32) -> Result<u16, Text> {
    u16::try_from(index).map_err(|_| text!("interrupt index {} exceeds 16 bits", index))
}
