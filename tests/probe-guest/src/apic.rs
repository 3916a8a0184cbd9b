//! Local APIC in x2APIC mode: every register is an MSR (0x800 + xAPIC offset / 16).
//!
//! The probe switches each CPU it runs on to x2APIC mode (IA32_APIC_BASE EN | EXTD), so APIC
//! IDs are 32 bits wide and IPIs name their destination in ICR bits 63:32.

use crate::x86;

/// IA32_APIC_BASE.
pub const IA32_APIC_BASE: u32 = 0x1b;
/// IA32_APIC_BASE bit 10: x2APIC mode (EXTD).
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: APIC globally enabled (EN).
pub const APIC_BASE_EN: u64 = 1 << 11;

/// x2APIC ID register (read-only, 32-bit ID).
pub const MSR_X2APIC_ID: u32 = 0x802;
/// Task priority register.
pub const MSR_X2APIC_TPR: u32 = 0x808;
/// End-of-interrupt register (write 0).
pub const MSR_X2APIC_EOI: u32 = 0x80b;
/// Spurious-interrupt vector register.
pub const MSR_X2APIC_SVR: u32 = 0x80f;
/// First in-service register (vectors 31:0); register n holds vectors 32n+31..32n.
pub const MSR_X2APIC_ISR0: u32 = 0x810;
/// First interrupt request register, laid out like the ISR.
pub const MSR_X2APIC_IRR0: u32 = 0x820;
/// Registers in an ISR or IRR set (256 vectors, 32 per register).
const VECTOR_SET_REGS: u32 = 8;
/// Vectors per ISR/IRR register.
const VECTORS_PER_REG: u32 = 32;
/// Interrupt command register (one 64-bit MSR in x2APIC mode).
pub const MSR_X2APIC_ICR: u32 = 0x830;
/// LVT timer register.
pub const MSR_X2APIC_LVT_TIMER: u32 = 0x832;
/// LVT LINT0 register.
pub const MSR_X2APIC_LVT_LINT0: u32 = 0x835;
/// Timer initial-count register.
pub const MSR_X2APIC_TIMER_INITIAL: u32 = 0x838;
/// Timer divide-configuration register.
pub const MSR_X2APIC_TIMER_DIVIDE: u32 = 0x83e;

/// SVR bit 8: APIC software enable (fixed interrupts are dropped while clear).
pub const SVR_APIC_ENABLE: u64 = 1 << 8;
/// LVT bit 16: masked.
pub const LVT_MASKED: u64 = 1 << 16;
/// LVT timer bits 18:17 = 01: periodic mode.
pub const LVT_TIMER_PERIODIC: u64 = 1 << 17;
/// Divide configuration 0b1011: divide by 1.
pub const TIMER_DIVIDE_BY_1: u64 = 0b1011;

/// ICR bits 10:8, delivery mode fixed.
pub const ICR_DELIVERY_FIXED: u64 = 0b000 << 8;
/// ICR bits 10:8, delivery mode INIT.
pub const ICR_DELIVERY_INIT: u64 = 0b101 << 8;
/// ICR bits 10:8, delivery mode start-up (SIPI); the vector is the start page number.
pub const ICR_DELIVERY_STARTUP: u64 = 0b110 << 8;
/// ICR bit 11 clear: physical destination mode.
pub const ICR_DEST_PHYSICAL: u64 = 0;
/// ICR bit 14: level assert (required for INIT).
pub const ICR_LEVEL_ASSERT: u64 = 1 << 14;
/// ICR bit 15 clear: edge triggered.
pub const ICR_TRIGGER_EDGE: u64 = 0;
/// Shift of the 32-bit destination in the x2APIC ICR.
pub const ICR_DEST_SHIFT: u32 = 32;

/// Puts this CPU's local APIC in x2APIC mode (from disabled or xAPIC mode, whichever it is
/// in) and returns its 32-bit x2APIC ID.
///
/// # Safety
/// CPUID must offer x2APIC (leaf 1 ECX bit 21), and nothing on this CPU may be using the
/// APIC in xAPIC (MMIO) mode.
pub unsafe fn enable_x2apic() -> u32 {
    // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC.
    let base = unsafe { x86::rdmsr(IA32_APIC_BASE) };
    if base & APIC_BASE_EXTD == 0 {
        // Disabled -> x2APIC directly is an invalid transition: enable xAPIC mode first.
        if base & APIC_BASE_EN == 0 {
            // SAFETY: disabled -> xAPIC enabled is a valid transition; the base is kept.
            unsafe { x86::wrmsr(IA32_APIC_BASE, base | APIC_BASE_EN) };
        }
        // SAFETY: xAPIC -> x2APIC is valid when CPUID offers x2APIC (the caller's promise).
        unsafe { x86::wrmsr(IA32_APIC_BASE, base | APIC_BASE_EN | APIC_BASE_EXTD) };
    }
    id()
}

/// Whether CPUID leaf 1 offers x2APIC.
pub fn x2apic_supported() -> bool {
    const CPUID1_ECX_X2APIC: u32 = 1 << 21;
    x86::cpuid(1, 0).ecx & CPUID1_ECX_X2APIC != 0
}

/// This CPU's x2APIC ID. The APIC must be in x2APIC mode (else #GP, reported as a failure).
pub fn id() -> u32 {
    // SAFETY: reading the ID register has no side effects.
    unsafe { x86::rdmsr(MSR_X2APIC_ID) as u32 }
}

/// Software-enables the APIC with `spurious` as the spurious-interrupt vector, accepts every
/// priority (TPR 0) and masks LINT0 (the legacy PIC's ExtINT line, which firmware may have
/// left connected to a running PIT).
pub fn software_enable(spurious: u8) {
    // SAFETY: x2APIC registers of this CPU; the probe owns the APIC.
    unsafe {
        x86::wrmsr(MSR_X2APIC_TPR, 0);
        let lint0 = x86::rdmsr(MSR_X2APIC_LVT_LINT0);
        x86::wrmsr(MSR_X2APIC_LVT_LINT0, lint0 | LVT_MASKED);
        x86::wrmsr(MSR_X2APIC_SVR, SVR_APIC_ENABLE | u64::from(spurious));
    }
}

/// Signals end of interrupt to this CPU's APIC.
pub fn eoi() {
    // SAFETY: writing 0 to EOI retires the highest in-service interrupt; the callers are
    // interrupt handlers, which have one in service.
    unsafe { x86::wrmsr(MSR_X2APIC_EOI, 0) }
}

/// Writes the ICR: `command` (delivery mode, vector, level, trigger) to x2APIC ID `dest` in
/// physical destination mode.
///
/// # Safety
/// The caller owns the effect on the destination CPU (INIT resets it, SIPI starts it).
pub unsafe fn send_ipi(dest: u32, command: u64) {
    let icr = (u64::from(dest) << ICR_DEST_SHIFT) | ICR_DEST_PHYSICAL | command;
    // SAFETY: per the contract.
    unsafe { x86::wrmsr(MSR_X2APIC_ICR, icr) }
}

/// Starts this CPU's APIC timer in periodic mode: interrupt `vector` every `count` bus
/// clocks (1 ns each on KVM's default APIC bus).
pub fn start_periodic_timer(vector: u8, count: u32) {
    // SAFETY: timer registers of this CPU; the vector has a handler (the caller's job).
    unsafe {
        x86::wrmsr(MSR_X2APIC_TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
        x86::wrmsr(MSR_X2APIC_LVT_TIMER, LVT_TIMER_PERIODIC | u64::from(vector));
        x86::wrmsr(MSR_X2APIC_TIMER_INITIAL, u64::from(count));
    }
}

/// Stops this CPU's APIC timer and masks its LVT entry.
pub fn stop_timer() {
    // SAFETY: timer registers of this CPU.
    unsafe {
        x86::wrmsr(MSR_X2APIC_TIMER_INITIAL, 0);
        x86::wrmsr(MSR_X2APIC_LVT_TIMER, LVT_MASKED);
    }
}

/// The lowest vector set in this CPU's 256-bit vector register set starting at MSR `first`
/// ([`MSR_X2APIC_IRR0`] or [`MSR_X2APIC_ISR0`]) that is not in `allowed`.
pub fn first_vector_in(first: u32, allowed: &[u8]) -> Option<u8> {
    for reg in 0..VECTOR_SET_REGS {
        // SAFETY: the ISR and IRR registers exist in x2APIC mode, which the caller's CPU is
        // in (every scenario that uses interrupts switches it first); reading them has no
        // side effects.
        let bits = unsafe { x86::rdmsr(first + reg) } as u32;
        for bit in 0..VECTORS_PER_REG {
            let vector = (reg * VECTORS_PER_REG + bit) as u8;
            if bits & (1 << bit) != 0 && !allowed.contains(&vector) {
                return Some(vector);
            }
        }
    }
    None
}
