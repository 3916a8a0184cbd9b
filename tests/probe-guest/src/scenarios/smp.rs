//! `probe=smp`: every processor the MADT lists comes up in x2APIC mode.
//!
//! The BSP switches to x2APIC mode, collects the enabled type 0 and type 9 MADT entries,
//! starts every other CPU with INIT-SIPI-SIPI through the x2APIC ICR (all at once, then one
//! collective deadline of 5 s + 50 ms per AP), and checks that the x2APIC IDs the APs report
//! from their own ID register are exactly the MADT's IDs without the BSP's. Passes with
//! `cpus=<N including the BSP> max_apic_id=<M>`. `probe.init=0` leaves the INITs out: the
//! SIPIs alone start APs that are still in their power-on wait-for-SIPI state.
//!
//! [`prepare`] and [`bring_up`] are shared with the `ipi` and `ioapic-extdest` scenarios.

use super::Context;
use crate::acpi::madt::Madt;
use crate::acpi::{self, Table};
use crate::ap::{self, ApMode, BringUp, Wake};
use crate::clock::Clock;
use crate::cpus::{self, CpuList, MAX_CPUS};
use crate::report::{Outcome, Text};
use crate::{apic, irq, pvh, sprintln, text, x86};

/// Legacy PIC data ports (OCW1 = interrupt mask): master and slave.
const PIC_MASTER_DATA: u16 = 0x21;
const PIC_SLAVE_DATA: u16 = 0xa1;
/// OCW1 value masking all eight lines.
const PIC_MASK_ALL: u8 = 0xff;

/// The BSP's view of the machine once it is ready to start APs.
pub struct Smp {
    /// The MADT.
    pub madt_table: Table,
    /// Enabled processors from the MADT.
    pub cpus: CpuList,
    /// The BSP's x2APIC ID.
    pub bsp_id: u32,
    /// Deadline clock.
    pub clock: Clock,
}

impl Smp {
    /// The MADT, parsed.
    pub fn madt(&self) -> Result<Madt<'_>, Text> {
        Madt::new(&self.madt_table)
    }
}

/// Finds the MADT, switches the BSP to x2APIC mode, installs the interrupt vectors and starts
/// the clock and the BSP's wake-up tick.
pub fn prepare(ctx: &Context) -> Result<Smp, Text> {
    let rsdp = acpi::find_rsdp(ctx.start_info.rsdp_paddr)?;
    let tables = acpi::load(&rsdp, &mut |_| {})?;
    let madt_table = *tables.find(b"APIC").ok_or_else(|| text!("no MADT"))?;
    let cpus = CpuList::from_madt(&Madt::new(&madt_table)?)?;

    if !apic::x2apic_supported() {
        return Err(text!("CPUID leaf 1 does not offer x2APIC"));
    }
    // SAFETY: CPUID offers x2APIC (checked above) and the probe has not used the APIC yet.
    let bsp_id = unsafe { apic::enable_x2apic() };
    if !cpus.contains(bsp_id) {
        return Err(text!(
            "BSP x2APIC ID {} is not an enabled MADT processor",
            bsp_id
        ));
    }
    // SAFETY: masking the legacy PIC only stops interrupts the probe does not want (firmware
    // may leave the PIT running into it); on a machine without a PIC the writes go nowhere.
    unsafe {
        x86::outb(PIC_MASTER_DATA, PIC_MASK_ALL);
        x86::outb(PIC_SLAVE_DATA, PIC_MASK_ALL);
    }
    irq::init();
    ap::mark_bsp();
    apic::software_enable(irq::SPURIOUS_VECTOR);
    let clock = Clock::start()?;
    irq::start_tick();
    sprintln!(
        "smp: bsp_apic_id={} cpus={} max_apic_id={} clock={}",
        bsp_id,
        cpus.len(),
        cpus.max_id(),
        clock.source_name()
    );
    Ok(Smp {
        madt_table,
        cpus,
        bsp_id,
        clock,
    })
}

/// Starts every AP in `mode` and checks that the IDs they report are the MADT's (without the
/// BSP). Prints one progress line with the time taken.
pub fn bring_up(ctx: &Context, smp: &Smp, mode: ApMode) -> Result<BringUp, Text> {
    bring_up_with(ctx, smp, mode, Wake::InitSipiSipi)
}

/// [`bring_up`] with the wake-up sequence chosen.
fn bring_up_with(ctx: &Context, smp: &Smp, mode: ApMode, wake: Wake) -> Result<BringUp, Text> {
    let mut expected = [0u32; MAX_CPUS];
    let n = smp.cpus.aps(smp.bsp_id, &mut expected);
    let expected = &expected[..n];
    let b = ap::start(&smp.clock, &ctx.start_info, ctx.cmdline, expected, mode, wake)?;
    sprintln!(
        "smp: {} of {} APs up in {} ms (slots claimed {})",
        b.arrived,
        b.sent,
        b.elapsed_ns / 1_000_000,
        b.claimed
    );
    let mut got = [0u32; MAX_CPUS];
    let reported = ap::reported_ids(&mut got);
    let id_check = cpus::compare(expected, &mut got[..reported]);
    if !b.complete() {
        return Err(text!(
            "{} of {} APs up within {} ms ({} reached long mode): {}",
            b.arrived,
            b.sent,
            b.deadline_ns / 1_000_000,
            b.claimed,
            match &id_check {
                Ok(()) => text!("IDs so far as expected"),
                Err(reason) => text!("{}", reason),
            }
        ));
    }
    id_check.map_err(|reason| text!("AP IDs differ from the MADT: {}", reason))?;
    Ok(b)
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let wake = match pvh::cmdline_u32(ctx.cmdline, "probe.init", 1)? {
        0 => Wake::SipiOnly,
        1 => Wake::InitSipiSipi,
        other => return Err(text!("probe.init={} is neither 0 nor 1", other)),
    };
    let smp = prepare(ctx)?;
    bring_up_with(ctx, &smp, ApMode::Halt, wake)?;
    irq::stop_tick();
    Ok(text!(
        "cpus={} max_apic_id={}",
        smp.cpus.len(),
        smp.cpus.max_id()
    ))
}
