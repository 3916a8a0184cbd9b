//! `probe=amd-ir-many`: 64 MSI-X vectors of one device, each through its own entry of the
//! device's AMD-Vi interrupt table to a different CPU spread across the APIC ID range.
//!
//! Needs irvmm's MSI-X edu variant (1234:11e9, `--device edu-msix`). Enables the unit as
//! Linux does, brings up every AP ready for [`VECTOR`], gives the device a 512-entry table,
//! writes entries [`BASE`] .. [`BASE`] + 64 (entry j: fixed delivery of [`VECTOR`] to the
//! j-th of 64 CPUs picked evenly from the sorted APIC IDs, lowest and highest included),
//! announces them with one INVALIDATE_INTERRUPT_TABLE + COMPLETION_WAIT, and programs MSI-X
//! entry j with data = its index ([`BASE`] straddles 0x100, so half the indexes have data
//! bit 8 set: message type 001b, arbitrated, remapped like fixed). The address is 0xfee00000
//! with, for one vector in three, destination bits 19:12 set and for another one in three
//! the destination-mode bit (what Linux sets on units with 2K-entry tables): a remapping
//! unit takes everything from the entry and must ignore both. Then, one vector at a time,
//! writes j to the device's register 0x68 and waits until the j-th CPU has taken it.
//! Passes with `vectors=64 cpus=N devid=0xDDDD` when every target took exactly its share
//! and nobody else anything.

use super::amd_common;
use super::ir_common;
use super::smp;
use super::Context;
use crate::amdvi::irte::{self, Irte, LINUX_LEN_LOG2};
use crate::amdvi::{Options, UnitInterrupts};
use crate::ap::ApMode;
use crate::report::Outcome;
use crate::tally;
use crate::{irq, sprintln, text};

/// The vector every entry delivers.
const VECTOR: u8 = irq::TEST_VECTOR_A;
/// Number of MSI-X vectors used.
const VECTORS: usize = 64;
/// First entry.
const BASE: u32 = 0xe0;
/// Address variants cycled through: plain, stale destination bits, destination mode.
const VARIANTS: usize = 3;
/// Destination bits 19:12 of a compatibility address (ignored by the unit).
const ADDRESS_STALE_DEST: u32 = 0xff << 12;
/// Destination-mode bit 2 of an MSI address (ignored by the unit).
const ADDRESS_DEST_MODE: u32 = 1 << 2;

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = amd_common::discover(ctx)?;
    let (edu, msix) = ir_common::find_edu_msix(VECTORS)?;
    let device_id = platform.device_id(edu.function)?;
    let targets: [u32; VECTORS] = ir_common::spread_targets(&smp)?;
    let clock = smp.clock;

    irq::set_handler(VECTOR, tally::on_device)?;
    let options = Options {
        interrupts: UnitInterrupts::Off,
        guest_apic: false,
    };
    let mut vi = amd_common::enable(&platform, clock, options)?;
    smp::bring_up(ctx, &smp, ApMode::Interrupts)?;
    let table = vi.attach(device_id, LINUX_LEN_LOG2)?;
    for (j, &t) in targets.iter().enumerate() {
        table.set(BASE + j as u32, Irte::remapped(VECTOR, t))?;
    }
    vi.invalidate_table(device_id)?;
    msix.enable_masked();
    for j in 0..VECTORS {
        let address = match j % VARIANTS {
            0 => irte::MSI_ADDRESS,
            1 => irte::MSI_ADDRESS | ADDRESS_STALE_DEST,
            _ => irte::MSI_ADDRESS | ADDRESS_DEST_MODE,
        };
        msix.set_entry(j as u16, address, irte::msi_data(BASE + j as u32), false)?;
    }
    msix.unmask_function();
    sprintln!(
        "amd-ir-many: edu-msix {} devid=0x{:04x}: {} vectors -> table 0x{:x} IRTE 0x{:x}.. -> APIC IDs {}..{} (one INVALIDATE_INTERRUPT_TABLE)",
        edu.function,
        device_id,
        VECTORS,
        table.root,
        BASE,
        targets[0],
        targets[VECTORS - 1]
    );

    ir_common::deliver_spread("amd-ir-many", &edu, &clock, &targets, BASE)?;
    Ok(text!(
        "vectors={} cpus={} devid=0x{:04x}",
        VECTORS,
        smp.cpus.len(),
        device_id
    ))
}
