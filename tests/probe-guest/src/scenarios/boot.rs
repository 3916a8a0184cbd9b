//! `probe=boot`: the platform as the guest sees it right after PVH entry.
//!
//! Prints the PVH memory map, the RSDP and one `ACPI <SIG> len=<n> at 0x<addr>` line per
//! table (root table first), then a MADT summary; passes with
//! `tables=<signatures in the order found, root excluded> cpus=<enabled processors>`.
//! Fails when there is no RSDP, a checksum is wrong, there is no MADT or no enabled processor.
//!
//! `probe.rsdp=scan` on the command line ignores `hvm_start_info.rsdp_paddr` and finds the
//! RSDP by scanning the BIOS area, as a guest of a loader that passes 0 must.

use super::Context;
use crate::acpi::{self, madt, RsdpSource};
use crate::report::Outcome;
use crate::{pvh, sprintln, text, x86};

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let si = &ctx.start_info;
    sprintln!(
        "PVH start_info at 0x{:x} version={} memmap_entries={}",
        si.addr,
        si.version,
        si.memmap_entries
    );
    for e in (0..si.memmap_entries).map_while(|i| si.memmap_entry(i)) {
        sprintln!(
            "MEMMAP 0x{:x}-0x{:x} type={}",
            e.addr,
            e.addr.saturating_add(e.size),
            e.kind
        );
    }

    let leaf1 = x86::cpuid(1, 0);
    sprintln!(
        "CPU bsp_apic_id={} x2apic={}",
        leaf1.ebx >> 24,
        if leaf1.ecx & (1 << 21) != 0 {
            "yes"
        } else {
            "no"
        }
    );

    let force_scan = pvh::cmdline_value(ctx.cmdline, "probe.rsdp") == Some(b"scan");
    let rsdp = acpi::find_rsdp(if force_scan { 0 } else { si.rsdp_paddr })?;
    sprintln!(
        "ACPI RSDP rev={} at 0x{:x} ({})",
        rsdp.revision,
        rsdp.addr,
        match rsdp.source {
            RsdpSource::StartInfo => "start_info",
            RsdpSource::Scan => "scan",
        }
    );
    let tables = acpi::load(&rsdp, &mut |t| {
        sprintln!("ACPI {} len={} at 0x{:x}", t.name(), t.len(), t.addr)
    })?;

    let table = tables.find(b"APIC").ok_or_else(|| text!("no MADT"))?;
    let madt = madt::Madt::new(table)?;
    let s = madt::summarize(&madt)?;
    sprintln!(
        "MADT lapic_addr=0x{:x} lapic_entries={} x2apic_entries={} enabled={} online_capable={} disabled={} ioapics={} overrides={}",
        madt.lapic_addr(),
        s.lapic_entries,
        s.x2apic_entries,
        s.enabled,
        s.online_capable,
        s.disabled,
        s.ioapics,
        s.overrides
    );
    if s.enabled == 0 {
        return Err(text!("MADT lists no enabled processor"));
    }
    Ok(text!("tables={} cpus={}", tables.signatures(), s.enabled))
}
