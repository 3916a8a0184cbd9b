//! `probe=triple-fault`: loads an empty IDT (limit 0) and executes `ud2`. Delivering #UD
//! then fails (vector beyond the IDT limit: #GP), delivering that fails too (#DF), and so
//! does #DF: the CPU shuts down, which KVM reports as KVM_EXIT_SHUTDOWN. irvmm must end the
//! run as a crash (status 120, "triple fault" and the RIP on stderr); QEMU resets, which
//! `-no-reboot` turns into an exit.
//!
//! Prints `PROBE PASS triple-fault faulting now` first; nothing can run after the fault, so a
//! following `PROBE FAIL` means `ud2` returned.

use core::arch::asm;

use crate::report::{self, Outcome};
use crate::text;

/// Runs the scenario.
pub fn run(_ctx: &super::Context) -> Outcome {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let empty = Pointer { limit: 0, base: 0 };
    report::announce_pass(&text!("faulting now"));
    // SAFETY: deliberately makes every exception undeliverable and raises one; the resulting
    // triple fault ends the VM, which is the point. Interrupts are off (cli) so nothing but
    // the #UD uses the empty IDT; lidt only reads the 10-byte pointer.
    unsafe {
        asm!(
            "cli",
            "lidt [{}]",
            "ud2",
            in(reg) &empty,
            options(readonly, nostack)
        )
    }
    Err(text!("ud2 with an empty IDT did not triple-fault"))
}
