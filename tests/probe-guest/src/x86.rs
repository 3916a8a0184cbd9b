//! Thin wrappers over x86 instructions: port I/O, MSRs, CPUID, control registers, halting.
//!
//! Only instructions the build machines' KVM handles are used here (see
//! notes/this-machine.md): no `int3`/`int n`, no `xsave`, no `cmpxchg16b`.

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
/// The write must not break an invariant the guest relies on (e.g. reset the machine or
/// reprogram a device another part of the probe is using).
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the side effects; the instruction touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// Reads can have side effects on devices (e.g. clear status); the caller accepts them.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the side effects; the instruction touches no memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 16-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: the caller vouches for the side effects; the instruction touches no memory.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a 16-bit value from an I/O port.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: the caller vouches for the side effects; the instruction touches no memory.
    unsafe {
        asm!("in ax, dx", out("ax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller vouches for the side effects; the instruction touches no memory.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a 32-bit value from an I/O port.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: the caller vouches for the side effects; the instruction touches no memory.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist (otherwise #GP, which the probe reports as a failure) and reading it
/// must have no side effect the caller did not intend.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller vouches that the MSR exists; rdmsr touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR must exist and the value must be valid for it; the caller owns the effect (x2APIC
/// registers, for instance, send IPIs).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the MSR and value; wrmsr touches no memory we own.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// Result of one CPUID query.
#[derive(Clone, Copy, Debug)]
pub struct Cpuid {
    /// EAX output.
    pub eax: u32,
    /// EBX output.
    pub ebx: u32,
    /// ECX output.
    pub ecx: u32,
    /// EDX output.
    pub edx: u32,
}

/// Executes CPUID for `leaf`/`subleaf` (~5 µs each on the build machines: use sparingly).
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: CPUID exists on every x86-64 CPU and has no side effects. RBX is reserved by
    // LLVM, so it is saved in a scratch register around the instruction.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        )
    }
    Cpuid { eax, ebx, ecx, edx }
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 at ring 0 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Spin-wait hint.
pub fn pause() {
    core::hint::spin_loop();
}

/// Disables interrupts and halts this CPU for good.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli/hlt only stop this CPU; nothing is left to run on it.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
