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
use super::ir_common::{self, DELIVERY_TIMEOUT_NS, NS_PER_MS, SETTLE_NS};
use super::smp;
use super::Context;
use crate::amdvi::irte::{self, Irte, LINUX_LEN_LOG2};
use crate::amdvi::{Options, UnitInterrupts};
use crate::ap::ApMode;
use crate::edu::{self, Edu};
use crate::msi::MsiX;
use crate::report::Outcome;
use crate::tally::{self, DEVICE, MAX_ID};
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
    let edu = Edu::find(edu::EDU_MSIX_DEVICE_ID)?;
    let msix = MsiX::find(edu.function)?;
    if usize::from(msix.vectors()) < VECTORS {
        return Err(text!(
            "{} has {} MSI-X vectors, needs {}",
            edu.function,
            msix.vectors(),
            VECTORS
        ));
    }
    let device_id = platform.device_id(edu.function)?;
    let ids = smp.cpus.ids();
    if ids.iter().any(|&id| id >= MAX_ID) {
        return Err(text!(
            "APIC IDs reach {} (the probe counts below {})",
            smp.cpus.max_id(),
            MAX_ID
        ));
    }
    let mut targets = [0u32; VECTORS];
    for (j, t) in targets.iter_mut().enumerate() {
        *t = ids[j * (ids.len() - 1) / (VECTORS - 1)];
    }
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

    let begin = clock.now_ns();
    let mut share = 0;
    for (j, &t) in targets.iter().enumerate() {
        // Targets are sorted: how many of the vectors so far go to `t`.
        share = if j > 0 && targets[j - 1] == t {
            share + 1
        } else {
            1
        };
        edu.trigger_msix(j as u16);
        if !ir_common::wait(&clock, DELIVERY_TIMEOUT_NS, || DEVICE.hits(t) >= share) {
            return Err(text!(
                "MSI-X vector {} (IRTE 0x{:x}) not on APIC ID {} within {} ms; {} in all, {}",
                j,
                BASE + j as u32,
                t,
                DELIVERY_TIMEOUT_NS / NS_PER_MS,
                DEVICE.total(),
                ir_common::Takers(&DEVICE)
            ));
        }
    }
    let elapsed_ms = clock.now_ns().saturating_sub(begin) / NS_PER_MS;
    ir_common::settle(&clock, SETTLE_NS);
    irq::stop_tick();
    sprintln!(
        "amd-ir-many: {} interrupts in {} ms",
        DEVICE.total(),
        elapsed_ms
    );
    for (j, &t) in targets.iter().enumerate() {
        let share = targets.iter().filter(|&&x| x == t).count() as u32;
        if DEVICE.hits(t) != share {
            return Err(text!(
                "APIC ID {} (vector {}) took {} interrupts, expected {}",
                t,
                j,
                DEVICE.hits(t),
                share
            ));
        }
    }
    if DEVICE.total() as usize != VECTORS {
        return Err(text!(
            "{} interrupts for {} vectors; {}",
            DEVICE.total(),
            VECTORS,
            ir_common::Takers(&DEVICE)
        ));
    }
    Ok(text!(
        "vectors={} cpus={} devid=0x{:04x}",
        VECTORS,
        smp.cpus.len(),
        device_id
    ))
}
