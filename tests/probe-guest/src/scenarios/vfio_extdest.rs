//! `probe=vfio-msix-extdest`: the passed-through test device's MSI-X vectors to CPUs across
//! the APIC ID range without an IOMMU, through KVM's extended destination ID.
//!
//! Needs more than 256 vCPUs and CPUID 0x40000001 EAX bit 15 (KVM_FEATURE_MSI_EXT_DEST_ID),
//! and no interrupt remapping enabled (the probe enables none). Brings up every AP ready for
//! [`VECTOR`], programs MSI-X entry j (of 64) with a compatibility-format message to the j-th
//! of 64 CPUs picked evenly from the sorted APIC IDs (lowest and highest included): APIC ID
//! bits 7:0 in address bits 19:12, bits 14:8 in address bits 11:5, fixed delivery of
//! [`VECTOR`], edge. The device fires the vectors through its doorbell, 16 at a time; each
//! must arrive exactly once on its CPU and nowhere else. Passes with
//! `vectors=64 cpus=N max_apic_id=M`.

use super::smp;
use super::vfio_common::{self, SPREAD_VECTORS, VECTOR};
use super::Context;
use crate::ap::ApMode;
use crate::kvm::{self, Kvm};
use crate::report::Outcome;
use crate::tally::{self, DEVICE, MAX_ID};
use crate::testdev::Testdev;
use crate::{irq, sprintln, text};

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    super::ir_common::highest_ap(&smp)?;
    let kvm = Kvm::detect().ok_or_else(|| text!("no KVM hypervisor CPUID leaves"))?;
    if !kvm.has(kvm::FEATURE_MSI_EXT_DEST_ID) {
        return Err(text!(
            "KVM_FEATURE_MSI_EXT_DEST_ID not offered (CPUID 0x{:x} EAX=0x{:x}, bit 15 clear)",
            kvm.base + 1,
            kvm.features
        ));
    }
    let ids = smp.cpus.ids();
    if ids.iter().any(|&id| id >= MAX_ID) {
        return Err(text!(
            "APIC IDs reach {} (the probe counts below {})",
            smp.cpus.max_id(),
            MAX_ID
        ));
    }
    let dev = Testdev::find()?;
    let msix = vfio_common::msix(&dev, SPREAD_VECTORS)?;
    let mut targets = [0u32; SPREAD_VECTORS];
    vfio_common::spread(ids, &mut targets);
    let clock = smp.clock;

    irq::set_handler(VECTOR, tally::on_device)?;
    smp::bring_up(ctx, &smp, ApMode::Interrupts)?;
    msix.enable_masked();
    for (j, &t) in targets.iter().enumerate() {
        let address = vfio_common::compat_address(t, true).ok_or_else(|| {
            text!(
                "APIC ID {} is above the extended destination ID's limit {}",
                t,
                vfio_common::MAX_EXT_DEST_ID
            )
        })?;
        msix.set_entry(j as u16, address, u32::from(VECTOR), false)?;
    }
    msix.unmask_function();
    let at = msix.table_location();
    sprintln!(
        "vfio-msix-extdest: {} table BAR{}+0x{:x}: {} vectors -> APIC IDs {}..{} (address 0x{:08x} for the last)",
        dev.function,
        at.bir,
        at.offset,
        SPREAD_VECTORS,
        targets[0],
        targets[SPREAD_VECTORS - 1],
        vfio_common::compat_address(targets[SPREAD_VECTORS - 1], true).unwrap_or(0)
    );
    let ms = vfio_common::fire_each_once(&dev, &clock, &targets)?;
    sprintln!(
        "vfio-msix-extdest: {} interrupts in {} ms, each once on its CPU",
        DEVICE.total(),
        ms
    );
    // MSI-X stays on: irvmm's exit report counts the vectors live in KVM.
    irq::stop_tick();
    Ok(text!(
        "vectors={} cpus={} max_apic_id={}",
        SPREAD_VECTORS,
        smp.cpus.len(),
        targets[SPREAD_VECTORS - 1]
    ))
}
