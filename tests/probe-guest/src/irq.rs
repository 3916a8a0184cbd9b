//! External interrupts: entry stubs for the few vectors the probe uses, a handler table shared
//! by all CPUs, and waiting for events with `sti; hlt`.
//!
//! The build machines' KVM injects interrupts late (tens to hundreds of microseconds after
//! the event), so a CPU waiting for one halts with interrupts enabled and re-checks after
//! every interrupt; the BSP's periodic APIC timer ([`TIMER_VECTOR`]) makes sure it wakes up
//! to look at its deadline even when nothing else arrives.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::clock::Clock;
use crate::report::Text;
use crate::{apic, idt, text};

/// The BSP's periodic wake-up tick.
pub const TIMER_VECTOR: u8 = 0x30;
/// First test vector (the `ipi` scenario's fixed IPI).
pub const TEST_VECTOR_A: u8 = 0x40;
/// Second test vector (the `ioapic-extdest` scenario's IOAPIC interrupt).
pub const TEST_VECTOR_B: u8 = 0x41;
/// Third test vector (the VT-d fault event in `ir-faults`).
pub const TEST_VECTOR_C: u8 = 0x42;
/// Spurious-interrupt vector programmed in every APIC's SVR (its handler sends no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// Period of the BSP's wake-up tick in APIC bus clocks: 5 ms on KVM's 1 GHz APIC bus.
const TICK_BUS_CLOCKS: u32 = 5_000_000;

/// Vectors with an entry stub (the order of `probe_irq_stubs` below).
const STUB_VECTORS: [u8; 4] = [TIMER_VECTOR, TEST_VECTOR_A, TEST_VECTOR_B, TEST_VECTOR_C];

/// A handler runs on the interrupted CPU with interrupts disabled; EOI follows it.
pub type Handler = fn();

/// Handlers by index in [`STUB_VECTORS`]; null = only EOI.
static HANDLERS: [AtomicPtr<()>; STUB_VECTORS.len()] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; STUB_VECTORS.len()];

extern "C" {
    /// Entry stubs for [`STUB_VECTORS`], in that order (defined below).
    static probe_irq_stubs: [u64; STUB_VECTORS.len()];
    /// Entry stub of the spurious vector: `iretq`, no EOI.
    fn probe_irq_spurious();
}

/// Installs the gates of the probe's interrupt vectors (stubs that call the registered
/// handler, then EOI) and the spurious vector. Call on the BSP before other CPUs run.
pub fn init() {
    for (i, &vector) in STUB_VECTORS.iter().enumerate() {
        // SAFETY: the stub table is a read-only array defined in the assembly below.
        let stub = unsafe { probe_irq_stubs[i] };
        // SAFETY: called on the BSP while no other CPU runs; the stubs stay valid forever.
        unsafe { idt::set_gate(vector, stub) };
    }
    // SAFETY: as above.
    unsafe { idt::set_gate(SPURIOUS_VECTOR, probe_irq_spurious as *const () as u64) };
}

/// Registers `handler` for `vector` (one of the stub vectors). Handlers may be replaced at
/// any time; a CPU takes whichever is registered when its interrupt arrives.
pub fn set_handler(vector: u8, handler: Handler) -> Result<(), Text> {
    let index = STUB_VECTORS
        .iter()
        .position(|&v| v == vector)
        .ok_or_else(|| text!("vector 0x{:x} has no interrupt stub", vector))?;
    HANDLERS[index].store(handler as *mut (), Ordering::Release);
    Ok(())
}

/// Called by the stubs with the vector number.
#[no_mangle]
extern "C" fn probe_interrupt(vector: u64) {
    if let Some(index) = STUB_VECTORS.iter().position(|&v| u64::from(v) == vector) {
        let raw = HANDLERS[index].load(Ordering::Acquire);
        if !raw.is_null() {
            // SAFETY: the only non-null values stored are `Handler` function pointers
            // (see `set_handler`), converted back to the same type.
            let handler = unsafe { core::mem::transmute::<*mut (), Handler>(raw) };
            handler();
        }
    }
    apic::eoi();
}

/// Starts the BSP's wake-up tick (the periodic APIC timer at [`TIMER_VECTOR`]).
pub fn start_tick() {
    apic::start_periodic_timer(TIMER_VECTOR, TICK_BUS_CLOCKS);
}

/// Stops the wake-up tick.
pub fn stop_tick() {
    apic::stop_timer();
}

/// Halts with interrupts enabled until an interrupt has been handled, then disables them.
pub fn halt_once() {
    // SAFETY: `sti; hlt` is atomic with respect to interrupts (STI's one-instruction shadow),
    // so a wake-up cannot slip in between; every vector that can arrive has a gate (the
    // exception stubs, [`init`]'s stubs). Handlers may change memory (no `nomem`).
    unsafe { asm!("sti", "hlt", "cli", options(nostack)) }
}

/// Waits in `sti; hlt` until `done()` holds or `clock` passes `deadline_ns`; returns the last
/// value of `done()`. Needs the wake-up tick ([`start_tick`]) running.
pub fn wait_until(clock: &Clock, deadline_ns: u64, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if clock.now_ns() >= deadline_ns {
            return done();
        }
        halt_once();
    }
}

global_asm!(
    r#"
    .pushsection .text.irq, "ax"
    .code64
    /* The CPU pushed 5 quadwords after aligning RSP to 16; the 9 caller-saved registers
       make RSP 16-byte aligned again for the call. */
.macro PROBE_IRQ v
    .p2align 4
probe_irq_\v:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    cld
    mov $\v, %edi
    call probe_interrupt
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq
.endm

    PROBE_IRQ {timer}
    PROBE_IRQ {a}
    PROBE_IRQ {b}
    PROBE_IRQ {c}

    .p2align 4
    .global probe_irq_spurious
probe_irq_spurious:
    iretq
    .popsection

    .pushsection .rodata.irq_stubs, "a"
    .p2align 3
    .global probe_irq_stubs
probe_irq_stubs:
    .quad probe_irq_{timer}
    .quad probe_irq_{a}
    .quad probe_irq_{b}
    .quad probe_irq_{c}
    .popsection
"#,
    timer = const TIMER_VECTOR,
    a = const TEST_VECTOR_A,
    b = const TEST_VECTOR_B,
    c = const TEST_VECTOR_C,
    options(att_syntax)
);
