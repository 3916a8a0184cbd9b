//! `probe=idle`: every AP started, then every CPU idles in `hlt`: a guest that costs the host
//! as little as a guest can (for measuring a VMM's idle overhead per vCPU) and that runs
//! until the VMM stops it (for `--timeout` and signal tests).
//!
//! Command line:
//! - `probe.seconds=S` (default 0): pass after S seconds; 0 idles until the VMM ends the VM.
//! - `probe.tick_us=T` (default 0): 0 leaves the APs in `cli; hlt`, never woken; T > 0 gives
//!   every CPU a periodic APIC timer interrupt every T microseconds, taken in `sti; hlt`, as
//!   an idle OS's tick wakes its CPUs.
//!
//! The BSP waits in `sti; hlt`, woken by its tick (T, or [`BSP_TICK_US`] when T is 0) to look
//! at its deadline. Prints `idle: cpus=N tick_us=T seconds=S idling` once every AP is up, then
//! after S seconds `PROBE PASS idle cpus=N tick_us=T seconds=S`.

use super::{smp, Context};
use crate::ap::{self, ApMode};
use crate::report::Outcome;
use crate::{apic, irq, pvh, sprintln, text};

/// The BSP's wake-up period when the CPUs take no tick: 100 ms.
const BSP_TICK_US: u32 = 100_000;
/// APIC bus clocks per microsecond (KVM's APIC bus runs at 1 GHz).
const BUS_CLOCKS_PER_US: u32 = 1_000;
/// Nanoseconds per second.
const NS_PER_S: u64 = 1_000_000_000;

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let seconds = pvh::cmdline_u32(ctx.cmdline, "probe.seconds", 0)?;
    let tick_us = pvh::cmdline_u32(ctx.cmdline, "probe.tick_us", 0)?;
    let tick_clocks = tick_us
        .checked_mul(BUS_CLOCKS_PER_US)
        .ok_or_else(|| text!("probe.tick_us={} is too long a period", tick_us))?;
    let smp = smp::prepare(ctx)?;
    let mode = if tick_us == 0 {
        ApMode::Halt
    } else {
        ap::set_ap_tick(tick_clocks);
        ApMode::Interrupts
    };
    smp::bring_up(ctx, &smp, mode)?;
    let bsp_tick = if tick_us == 0 {
        BSP_TICK_US * BUS_CLOCKS_PER_US
    } else {
        tick_clocks
    };
    apic::start_periodic_timer(irq::TIMER_VECTOR, bsp_tick);
    sprintln!(
        "idle: cpus={} tick_us={} seconds={} idling",
        smp.cpus.len(),
        tick_us,
        seconds
    );
    if seconds == 0 {
        loop {
            irq::halt_once();
        }
    }
    let deadline = smp
        .clock
        .now_ns()
        .saturating_add(u64::from(seconds) * NS_PER_S);
    irq::wait_until(&smp.clock, deadline, || false);
    irq::stop_tick();
    Ok(text!(
        "cpus={} tick_us={} seconds={}",
        smp.cpus.len(),
        tick_us,
        seconds
    ))
}
