//! `probe=ir-many`: 64 MSI-X vectors of one device, each through its own interrupt
//! remapping table entry to a different CPU spread across the APIC ID range.
//!
//! Needs irvmm's MSI-X edu variant (1234:11e9, `--device edu-msix`; QEMU has none, so
//! there this fails with "edu-msix device ... not found"). Brings up every AP ready for
//! [`VECTOR`] (receipts counted by APIC ID), enables remapping as Linux does, writes entries
//! [`BASE`] .. [`BASE`] + 64 (entry j: fixed delivery of [`VECTOR`] to the j-th of 64 CPUs
//! picked evenly from the sorted APIC IDs, lowest and highest included; SVT = 1 with the
//! device's requester ID), invalidates all 64 with one index-selective IEC descriptor
//! (IM = 6) when ECAP.MHMV allows, and programs MSI-X entry j with a remappable address in
//! one of three encodings (j mod 3): handle `BASE + j` without SHV; handle `BASE + j` with
//! SHV and subhandle 0; handle `BASE` with SHV and subhandle `j`. Then, one vector at a
//! time, writes j to the device's register 0x68 and waits until the j-th CPU has taken it.
//! Passes with `vectors=64 cpus=N` when every target took exactly its share and nobody else
//! took anything.

use super::ir_common;
use super::smp;
use super::Context;
use crate::ap::ApMode;
use crate::report::Outcome;
use crate::tally;
use crate::vtd::{irte, Irte, TABLE_LOG2_LINUX};
use crate::{irq, sprintln, text};

/// The vector every entry delivers.
const VECTOR: u8 = irq::TEST_VECTOR_A;
/// Number of MSI-X vectors used.
const VECTORS: usize = 64;
/// log2 of [`VECTORS`]: the IEC index mask covering all entries.
const VECTORS_LOG2: u32 = 6;
/// First entry (aligned to [`VECTORS`]).
const BASE: u16 = 0x200;
/// ECAP: shift and mask of MHMV (maximum handle mask value, bits 23:20).
const ECAP_MHMV_SHIFT: u32 = 20;
const ECAP_MHMV_MASK: u64 = 0xf;
/// Address encodings cycled through.
const ENCODINGS: usize = 3;

const _: () = assert!(1 << VECTORS_LOG2 == VECTORS && (BASE as usize).is_multiple_of(VECTORS));

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = ir_common::discover(ctx)?;
    let (edu, msix) = ir_common::find_edu_msix(VECTORS)?;
    let targets: [u32; VECTORS] = ir_common::spread_targets(&smp)?;
    let sid = edu.function.sid();
    let clock = smp.clock;

    irq::set_handler(VECTOR, tally::on_device)?;
    // Remapping first, as Linux enables it before it starts the APs.
    let mut vtd = ir_common::enable(&platform.pci_unit(edu.function)?, clock, TABLE_LOG2_LINUX)?;
    smp::bring_up(ctx, &smp, ApMode::Interrupts)?;
    for (j, &t) in targets.iter().enumerate() {
        vtd.set_irte(
            u32::from(BASE) + j as u32,
            Irte::remapped(VECTOR, t).verify_sid(sid),
        )?;
    }
    let mhmv = ((vtd.ecap() >> ECAP_MHMV_SHIFT) & ECAP_MHMV_MASK) as u32;
    if mhmv >= VECTORS_LOG2 {
        vtd.invalidate_entries(BASE.into(), VECTORS_LOG2)?;
    } else {
        for j in 0..VECTORS as u32 {
            vtd.invalidate_entries(u32::from(BASE) + j, 0)?;
        }
    }
    msix.enable_masked();
    for j in 0..VECTORS as u16 {
        let (address, data) = match usize::from(j) % ENCODINGS {
            0 => (irte::remappable_msi_address(BASE + j, false), 0),
            1 => (irte::remappable_msi_address(BASE + j, true), 0),
            _ => (irte::remappable_msi_address(BASE, true), u32::from(j)),
        };
        msix.set_entry(j, address, data, false)?;
    }
    msix.unmask_function();
    sprintln!(
        "ir-many: edu-msix {} sid=0x{:04x}: {} vectors -> IRTE 0x{:x}.. -> APIC IDs {}..{} (IEC {})",
        edu.function,
        sid,
        VECTORS,
        BASE,
        targets[0],
        targets[VECTORS - 1],
        if mhmv >= VECTORS_LOG2 {
            "one descriptor, IM=6"
        } else {
            "per entry"
        }
    );

    ir_common::deliver_spread("ir-many", &edu, &clock, &targets, u32::from(BASE))?;
    Ok(text!("vectors={} cpus={}", VECTORS, smp.cpus.len()))
}
