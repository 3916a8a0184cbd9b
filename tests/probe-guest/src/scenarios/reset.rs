//! `probe=reset`: a platform reset the way an OS requests it.
//!
//! Writes RESET_VALUE to the FADT's RESET_REG when the FADT sets RESET_REG_SUP and fills the
//! register in; otherwise writes 0x06 (full reset, CPU reset) to the PCI reset control port
//! 0xcf9. Prints `PROBE PASS reset requesting reset` before the write, so that line is the
//! last one when the VMM resets (irvmm and QEMU with `-no-reboot` exit);
//! `PROBE FAIL reset still running ...` if the VM is still there 2 s later.

use super::{platform, Context};
use crate::acpi::fadt::{Fadt, Register, Space, Width};
use crate::clock::Clock;
use crate::report::{self, Outcome};
use crate::{sprintln, text};

/// The PCI reset control register (Intel chipsets; also irvmm's and QEMU's).
const RESET_CONTROL_PORT: u16 = 0xcf9;
/// Its value for a full reset: SYS_RST (bit 1) | RST_CPU (bit 2).
const RESET_CONTROL_FULL: u8 = 0x06;

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let tables = platform::tables(ctx)?;
    let facp = tables.find(b"FACP").ok_or_else(|| text!("no FADT"))?;
    let fadt = Fadt::new(facp)?;
    let clock = Clock::start()?;

    let (reg, value, source) = match fadt.reset()? {
        Some((reg, value)) => (reg, value, "FADT RESET_REG"),
        None => (
            Register {
                space: Space::Io(RESET_CONTROL_PORT),
                width: Width::Byte,
            },
            RESET_CONTROL_FULL,
            "port 0xcf9 (no FADT RESET_REG)",
        ),
    };
    sprintln!("reset: writing 0x{:x} to {} at {}", value, source, reg);
    report::announce_pass(&text!("requesting reset"));
    // SAFETY: the platform's reset request; resetting is this scenario's aim.
    unsafe { reg.write(u32::from(value)) };
    platform::still_running(
        &clock,
        &text!("writing 0x{:x} to {} at {}", value, source, reg),
    )
}
