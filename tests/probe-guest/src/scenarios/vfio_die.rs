//! `probe=vfio-die`: the vfio-user server behind the passed-through test device dies
//! mid-run; the VMM must carry on, with the device's BARs reading all ones.
//!
//! Finds the device, checks its ID register, writes CONTROL = 0xdead_0001 (the device
//! process exits at once), then reads the ID register until it reads all ones (irvmm drops
//! a dead server's BAR mappings when its socket hangs up; the reads then trap and fail)
//! within [`DEATH_TIMEOUT_NS`]. Touches nothing else of the device afterwards. Passes with
//! `id=0xffffffff after_ms=N`; the harness checks that irvmm exits with the probe's status
//! and logs the hang-up.

use super::Context;
use crate::clock::Clock;
use crate::report::Outcome;
use crate::testdev::{self, Testdev};
use crate::{sprintln, text, x86};

/// How long the VMM gets to notice the dead server.
const DEATH_TIMEOUT_NS: u64 = 5_000_000_000;
/// What a read from a device that is gone returns.
const ALL_ONES: u32 = u32::MAX;

/// Runs the scenario.
pub fn run(_ctx: &Context) -> Outcome {
    let clock = Clock::start()?;
    let dev = Testdev::find()?;
    sprintln!(
        "vfio-die: {} BAR0 0x{:x} ID 0x{:08x}; killing the server",
        dev.function,
        dev.bar0(),
        dev.read(testdev::REG_ID)
    );
    let begin = clock.now_ns();
    dev.kill_server();
    loop {
        let id = dev.read(testdev::REG_ID);
        let elapsed = clock.now_ns().saturating_sub(begin);
        if id == ALL_ONES {
            return Ok(text!("id=0x{:08x} after_ms={}", id, elapsed / 1_000_000));
        }
        if elapsed > DEATH_TIMEOUT_NS {
            return Err(text!(
                "ID still reads 0x{:08x} {} ms after CONTROL = 0x{:08x}",
                id,
                elapsed / 1_000_000,
                testdev::CONTROL_EXIT
            ));
        }
        x86::pause();
    }
}
