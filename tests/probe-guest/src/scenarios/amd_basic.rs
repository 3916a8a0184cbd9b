//! `probe=amd-ir-basic`: a device MSI remapped by an AMD-Vi unit through its own device's
//! interrupt table to a CPU above APIC ID 255, and the rule that a changed entry counts
//! only once INVALIDATE_INTERRUPT_TABLE for that device has completed.
//!
//! Enables the unit as Linux does (x2APIC mode, 128-bit IRTEs; see `amdvi`), brings up every
//! AP ready for [`VECTOR`] (all CPUs count receipts by APIC ID), gives the edu device
//! (1234:11e8) a 512-entry interrupt table through its DTE, writes IRTE [`INDEX`] (fixed
//! delivery of [`VECTOR`] to the highest APIC ID `A`, which must be > 255), invalidates the
//! table, and programs edu's MSI as Linux does for AMD-Vi: address 0xfee00000, data = the
//! index.
//!
//! 1. Raise: exactly one interrupt, on `A`.
//! 2. Rewrite the entry to `B` (the lowest AP ID) without invalidation and raise: the unit
//!    may still use what it cached. irvmm documents that it does (its routes are the
//!    interrupt remapping cache), so there the interrupt must reach `A` again; elsewhere
//!    either outcome is printed as an observation.
//! 3. INVALIDATE_INTERRUPT_TABLE for edu's device ID + COMPLETION_WAIT (store polled), then
//!    raise: it reaches `B`.
//!
//! Passes with `from=A to=B index=I devid=0xDDDD`.

use super::amd_common::{self, AmdPlatform};
use super::ir_common::{self, DELIVERY_TIMEOUT_NS};
use super::smp::{self, Smp};
use super::Context;
use crate::amdvi::irte::{self, Irte, LINUX_LEN_LOG2};
use crate::amdvi::{Options, UnitInterrupts};
use crate::ap::ApMode;
use crate::edu::{self, Edu};
use crate::msi::Msi;
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE};
use crate::{irq, sprintln, text};

/// The vector the entry delivers.
const VECTOR: u8 = irq::TEST_VECTOR_A;
/// The entry edu's MSI names (bit 8 set: data bits 10:8 are also the message type, and
/// 001b, arbitrated, is remapped like fixed).
const INDEX: u32 = 0x123;

/// Where the steps moved the interrupt.
pub struct Moved {
    /// The highest APIC ID: the entry's first target.
    pub from: u32,
    /// The lowest AP ID: where the interrupt goes after the invalidation.
    pub to: u32,
    /// The entry edu's MSI names.
    pub index: u32,
    /// edu's device ID.
    pub device_id: u16,
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = amd_common::discover(ctx)?;
    let moved = exercise(ctx, &smp, &platform)?;
    Ok(text!(
        "from={} to={} index={} devid=0x{:04x}",
        moved.from,
        moved.to,
        moved.index,
        moved.device_id
    ))
}

/// The scenario's steps after [`smp::prepare`] and [`amd_common::discover`]: enables the
/// unit, starts the APs and checks the three raises (see the module documentation).
/// Shared with `hostile`, which runs them after its garbage.
pub fn exercise(ctx: &Context, smp: &Smp, platform: &AmdPlatform) -> Result<Moved, Text> {
    let edu = Edu::find(edu::EDU_DEVICE_ID)?;
    let msi = Msi::find(edu.function)?;
    let device_id = platform.device_id(edu.function)?;
    let (from, to) = ir_common::from_and_to(smp)?;
    let clock = smp.clock;

    irq::set_handler(VECTOR, tally::on_device)?;
    // The unit first, as Linux enables it before it starts the APs.
    let options = Options {
        interrupts: UnitInterrupts::Off,
        guest_apic: false,
    };
    let mut vi = amd_common::enable(platform, clock, options)?;
    smp::bring_up(ctx, smp, ApMode::Interrupts)?;
    let table = vi.attach(device_id, LINUX_LEN_LOG2)?;
    table.set(INDEX, Irte::remapped(VECTOR, from))?;
    vi.invalidate_table(device_id)?;
    let data = irte::msi_data(INDEX);
    msi.program(irte::MSI_ADDRESS, data as u16);
    sprintln!(
        "amd-ir-basic: edu {} devid=0x{:04x} bar0=0x{:x} MSI 0x{:08x}/0x{:x} -> table 0x{:x} IRTE {} -> APIC ID {} vector 0x{:x}",
        edu.function,
        device_id,
        edu.bar0(),
        irte::MSI_ADDRESS,
        data,
        table.root,
        INDEX,
        from,
        VECTOR
    );

    // 1. Remapped to `from`.
    if !ir_common::fire_edu(&edu, &clock, 1) {
        return Err(text!(
            "no interrupt within {} ms of the edu raise (edu status 0x{:x}, AMD-Vi status 0x{:x}); {}",
            DELIVERY_TIMEOUT_NS / ir_common::NS_PER_MS,
            edu.status(),
            vi.status(),
            ir_common::Takers(&DEVICE)
        ));
    }
    ir_common::expect_only(&DEVICE, from, 1, "first raise")?;

    // 2. The entry now names `to`, but nobody told the unit.
    table.set(INDEX, Irte::remapped(VECTOR, to))?;
    let arrived = ir_common::fire_edu(&edu, &clock, 2);
    let (at_from, at_to) =
        ir_common::check_unannounced("amd-ir-basic", platform.vmm, from, to, arrived)?;

    // 3. Invalidate edu's table: the next interrupt follows the entry.
    vi.invalidate_table(device_id)?;
    let expect_to = at_to + 1;
    if !ir_common::fire_edu(&edu, &clock, 3)
        || DEVICE.hits(to) != expect_to
        || DEVICE.hits(from) != at_from
    {
        return Err(text!(
            "after INVALIDATE_INTERRUPT_TABLE 0x{:04x}: {} interrupts on APIC ID {} (expected {}), \
             {} on {} (expected {}), {} in all",
            device_id,
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
        device_id,
    })
}
