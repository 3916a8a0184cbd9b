//! `probe=vfio-msix-ir` and `probe=vfio-msix-direct`: the passed-through test device's MSI-X
//! vectors through interrupt remapping to CPUs across the APIC ID range, and one of them
//! moved by an IRTE rewrite and an invalidation alone.
//!
//! Needs `--iommu intel` and more than 256 vCPUs. Brings up every AP ready for
//! [`VECTOR`] (receipts counted by APIC ID), enables remapping as Linux does, writes entries
//! [`BASE`] .. [`BASE`] + 64 (entry j: fixed delivery to the j-th of 64 CPUs picked evenly
//! from the sorted APIC IDs, lowest and highest included; SVT = 1 / SQ = 0 with the device's
//! requester ID), invalidates them (one index-selective IEC descriptor with IM = 6 when
//! ECAP.MHMV allows, else one per entry), and programs MSI-X entry j with a remappable
//! address in one of three encodings (j mod 3): handle `BASE + j` without SHV; handle
//! `BASE + j` with SHV and subhandle 0; handle `BASE` with SHV and subhandle `j`. The device
//! fires the vectors through its doorbell, 16 at a time; each must arrive exactly once on
//! its CPU and nowhere else.
//!
//! Then vector [`MOVED`] is moved: its entry is rewritten to the highest APIC ID that is no
//! target (> 255 with 288 vCPUs) and invalidated (index-selective IEC + wait descriptor);
//! the MSI-X table is not touched again. The first interrupt after the wait completes must
//! arrive on the new CPU.
//!
//! `vfio-msix-ir` takes the table wherever irvmm put it (relocated to an added BAR by
//! default, or trapped); `vfio-msix-direct` needs the device's own table (irvmm
//! `msix=direct`, device `--direct-msix`): FLAGS bit 0 set and the capability naming
//! BAR0+0x800, which the probe then programs straight through the mapped BAR.
//! Passes with `vectors=64 cpus=N msix_bir=B table=0x.. moved=V from=A to=B`.

use super::ir_common::{self, NS_PER_MS};
use super::smp;
use super::vfio_common::{self, SPREAD_VECTORS, VECTOR};
use super::Context;
use crate::ap::ApMode;
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE, MAX_ID};
use crate::testdev::{self, Testdev};
use crate::vtd::{irte, Irte, TABLE_LOG2_LINUX};
use crate::{irq, sprintln, text};

/// log2 of [`SPREAD_VECTORS`]: the IEC index mask covering all entries.
const VECTORS_LOG2: u32 = 6;
/// First entry (aligned to [`SPREAD_VECTORS`]).
const BASE: u16 = 0x400;
/// ECAP: shift and mask of MHMV (maximum handle mask value, bits 23:20).
const ECAP_MHMV_SHIFT: u32 = 20;
const ECAP_MHMV_MASK: u64 = 0xf;
/// Address encodings cycled through.
const ENCODINGS: usize = 3;
/// The vector moved by the IRTE rewrite.
const MOVED: usize = SPREAD_VECTORS / 2;

const _: () =
    assert!(1 << VECTORS_LOG2 == SPREAD_VECTORS && (BASE as usize).is_multiple_of(SPREAD_VECTORS));

/// Which table the probe programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// The one irvmm emulates, wherever the capability says.
    Emulated,
    /// The device's own, at BAR0 + 0x800 (`msix=direct`).
    Device,
}

/// `probe=vfio-msix-ir`.
pub fn run_ir(ctx: &Context) -> Outcome {
    run(ctx, Table::Emulated)
}

/// `probe=vfio-msix-direct`.
pub fn run_direct(ctx: &Context) -> Outcome {
    run(ctx, Table::Device)
}

/// Checks that the device runs its own table and the capability names it.
fn check_direct(dev: &Testdev, msix: &crate::msi::MsiX) -> Result<(), Text> {
    let flags = dev.read(testdev::REG_FLAGS);
    let table = msix.table_location();
    if flags & testdev::FLAGS_DIRECT_MSIX == 0
        || table.bir != testdev::REGS_BAR
        || u64::from(table.offset) != testdev::DEVICE_TABLE
    {
        return Err(text!(
            "not the device's own table: FLAGS 0x{:x}, MSI-X table at BAR{}+0x{:x} \
             (run the device with --direct-msix and irvmm with msix=direct)",
            flags,
            table.bir,
            table.offset
        ));
    }
    Ok(())
}

fn run(ctx: &Context, table: Table) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = ir_common::discover(ctx)?;
    let dev = Testdev::find()?;
    let msix = vfio_common::msix(&dev, SPREAD_VECTORS)?;
    if table == Table::Device {
        check_direct(&dev, &msix)?;
    }
    let ids = smp.cpus.ids();
    if ids.iter().any(|&id| id >= MAX_ID) {
        return Err(text!(
            "APIC IDs reach {} (the probe counts below {})",
            smp.cpus.max_id(),
            MAX_ID
        ));
    }
    ir_common::highest_ap(&smp)?;
    let mut targets = [0u32; SPREAD_VECTORS];
    vfio_common::spread(ids, &mut targets);
    let from = targets[MOVED];
    let to = ids
        .iter()
        .copied()
        .rfind(|id| !targets.contains(id))
        .ok_or_else(|| text!("needs more CPUs than the {} targets", SPREAD_VECTORS))?;
    let sid = dev.function.sid();
    let clock = smp.clock;

    irq::set_handler(VECTOR, tally::on_device)?;
    // Remapping first, as Linux enables it before it starts the APs.
    let mut vtd = ir_common::enable(&platform.pci_unit(dev.function)?, clock, TABLE_LOG2_LINUX)?;
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
        for j in 0..SPREAD_VECTORS as u32 {
            vtd.invalidate_entries(u32::from(BASE) + j, 0)?;
        }
    }
    msix.enable_masked();
    for j in 0..SPREAD_VECTORS as u16 {
        let (address, data) = match usize::from(j) % ENCODINGS {
            0 => (irte::remappable_msi_address(BASE + j, false), 0),
            1 => (irte::remappable_msi_address(BASE + j, true), 0),
            _ => (irte::remappable_msi_address(BASE, true), u32::from(j)),
        };
        msix.set_entry(j, address, data, false)?;
    }
    msix.unmask_function();
    let at = msix.table_location();
    sprintln!(
        "vfio-msix: {} sid=0x{:04x} table BAR{}+0x{:x} ({}): {} vectors -> IRTE 0x{:x}.. -> APIC IDs {}..{}",
        dev.function,
        sid,
        at.bir,
        at.offset,
        match table {
            Table::Emulated => "emulated",
            Table::Device => "the device's own",
        },
        SPREAD_VECTORS,
        BASE,
        targets[0],
        targets[SPREAD_VECTORS - 1]
    );

    let ms = vfio_common::fire_each_once(&dev, &clock, &targets)?;
    sprintln!(
        "vfio-msix: {} interrupts in {} ms, each once on its CPU",
        DEVICE.total(),
        ms
    );

    // Move one vector by its entry alone; the table stays as it is.
    let index = u32::from(BASE) + MOVED as u32;
    vtd.set_irte(index, Irte::remapped(VECTOR, to).verify_sid(sid))?;
    let begin = clock.now_ns();
    vtd.invalidate_entries(index, 0)?;
    let invalidation_us = clock.now_ns().saturating_sub(begin) / 1000;
    vfio_common::fire_one(&dev, &clock, MOVED as u16, to, "after the IRTE rewrite")?;
    if DEVICE.hits(from) != 1 {
        return Err(text!(
            "APIC ID {} took {} interrupts, expected only the one before the move",
            from,
            DEVICE.hits(from)
        ));
    }
    sprintln!(
        "vfio-msix: vector {} moved from APIC ID {} to {} (invalidation + wait {} us, {} ms budget)",
        MOVED,
        from,
        to,
        invalidation_us,
        vfio_common::DELIVERY_TIMEOUT_NS / NS_PER_MS
    );
    // MSI-X stays on: irvmm's exit report counts the vectors live in KVM.
    irq::stop_tick();
    Ok(text!(
        "vectors={} cpus={} msix_bir={} table=0x{:x} moved={} from={} to={}",
        SPREAD_VECTORS,
        smp.cpus.len(),
        at.bir,
        at.offset,
        MOVED,
        from,
        to
    ))
}
