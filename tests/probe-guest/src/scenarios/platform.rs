//! Shared parts of the platform-control scenarios (`poweroff`, `reset`, `triple-fault`):
//! each succeeds when the VMM ends the VM, so each prints its `PROBE PASS` line first, then
//! acts, then waits; a probe still running after [`GRACE_NS`] fails.

use super::Context;
use crate::acpi::{self, Tables};
use crate::clock::Clock;
use crate::report::{Outcome, Text};
use crate::{text, x86};

/// How long the VMM gets to end the VM after the request.
pub const GRACE_NS: u64 = 2_000_000_000;
/// Nanoseconds per millisecond, for messages.
const NS_PER_MS: u64 = 1_000_000;

/// The ACPI tables, found through the boot information (or the BIOS-area scan).
pub fn tables(ctx: &Context) -> Result<Tables, Text> {
    let rsdp = acpi::find_rsdp(ctx.start_info.rsdp_paddr)?;
    acpi::load(&rsdp, &mut |_| {})
}

/// Spins for [`GRACE_NS`] after `action` was requested, then fails: the VM should be gone.
pub fn still_running(clock: &Clock, action: &Text) -> Outcome {
    let start = clock.now_ns();
    while clock.now_ns().wrapping_sub(start) < GRACE_NS {
        x86::pause();
    }
    Err(text!(
        "still running {} ms after {}",
        GRACE_NS / NS_PER_MS,
        action
    ))
}
