//! `probe=fault`: executes `ud2`, so the run must end with
//! `PROBE FAIL fault exception 6 #UD ...` and status 1. It checks the failure path itself
//! (exception stubs, IDT, report, debug exit) for harnesses and VMMs.

use crate::report::Outcome;

/// Runs the scenario; never returns normally.
pub fn run(_ctx: &super::Context) -> Outcome {
    // SAFETY: ud2 raises #UD, which the probe's exception handler turns into the final FAIL
    // report; no state is left half-changed.
    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    Err(crate::text!("ud2 did not raise #UD"))
}
