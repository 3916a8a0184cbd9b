//! Interrupt descriptor table.
//!
//! Vectors 0–31 (CPU exceptions) go to stubs that turn any exception into
//! `PROBE FAIL <name> exception ...`, so a bug in the probe or the VMM shows up as a reason on
//! the serial line rather than a triple fault. Later scenarios install their interrupt
//! handlers (stubs in `global_asm!`: `extern "x86-interrupt"` is not stable) with
//! [`set_gate`].

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;

use crate::entry::CODE64_SELECTOR;
use crate::{report, text, x86};

/// One 16-byte long-mode gate descriptor.
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present, ring-0, 64-bit interrupt gate (IF cleared on entry).
    fn interrupt(handler: u64) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: CODE64_SELECTOR,
            ist: 0,
            type_attr: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: the table is written only through `set_gate`, whose contract rules out concurrent
// writers; CPUs read it only through IDTR.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate::MISSING; 256]));

extern "C" {
    /// Addresses of the exception stubs for vectors 0..32 (defined below).
    static probe_exception_stubs: [u64; 32];
}

/// Installs `handler` (the address of an assembly stub ending in `iretq`) as an interrupt gate
/// for `vector`.
///
/// # Safety
/// No other CPU may be calling `set_gate` at the same time, and `handler` must be a valid
/// interrupt entry point for as long as the gate is installed.
pub unsafe fn set_gate(vector: u8, handler: u64) {
    let gate = Gate::interrupt(handler);
    // SAFETY: in bounds (256 entries, u8 index); exclusive writer per the contract; CPUs read
    // the descriptor only when delivering through this vector.
    unsafe { core::ptr::write_volatile(&mut (*IDT.0.get())[usize::from(vector)], gate) }
}

/// Loads the IDT on this CPU (call on every CPU that should take exceptions or interrupts).
pub fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer {
        limit: (256 * 16 - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is a static that lives forever; lidt only reads the 10-byte pointer.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) }
}

/// Installs the exception gates and loads the IDT on the BSP. Call once, before other CPUs
/// run.
pub fn init() {
    for vector in 0..32u8 {
        // SAFETY: the stub table is a read-only array defined in the assembly below.
        let stub = unsafe { probe_exception_stubs[usize::from(vector)] };
        // SAFETY: called once on the BSP before any other CPU runs; the stubs never return.
        unsafe { set_gate(vector, stub) };
    }
    load();
}

/// Short name of an exception vector.
fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        20 => "#VE",
        21 => "#CP",
        _ => "reserved",
    }
}

/// Called by the exception stubs: reports the exception as the scenario's failure.
#[no_mangle]
extern "C" fn probe_exception(vector: u64, error: u64, rip: u64) -> ! {
    let cr2 = x86::read_cr2();
    report::fail_now(text!(
        "exception {} {} error=0x{:x} rip=0x{:x} cr2=0x{:x}",
        vector,
        exception_name(vector),
        error,
        rip,
        cr2
    ))
}

global_asm!(
    r#"
    .pushsection .text.exceptions, "ax"
    .code64
.macro PROBE_EXC n, has_error
    .p2align 4
probe_exc_\n:
.if \has_error == 0
    push $0
.endif
    push $\n
    jmp probe_exc_common
.endm

    PROBE_EXC 0, 0
    PROBE_EXC 1, 0
    PROBE_EXC 2, 0
    PROBE_EXC 3, 0
    PROBE_EXC 4, 0
    PROBE_EXC 5, 0
    PROBE_EXC 6, 0
    PROBE_EXC 7, 0
    PROBE_EXC 8, 1
    PROBE_EXC 9, 0
    PROBE_EXC 10, 1
    PROBE_EXC 11, 1
    PROBE_EXC 12, 1
    PROBE_EXC 13, 1
    PROBE_EXC 14, 1
    PROBE_EXC 15, 0
    PROBE_EXC 16, 0
    PROBE_EXC 17, 1
    PROBE_EXC 18, 0
    PROBE_EXC 19, 0
    PROBE_EXC 20, 0
    PROBE_EXC 21, 1
    PROBE_EXC 22, 0
    PROBE_EXC 23, 0
    PROBE_EXC 24, 0
    PROBE_EXC 25, 0
    PROBE_EXC 26, 0
    PROBE_EXC 27, 0
    PROBE_EXC 28, 0
    PROBE_EXC 29, 1
    PROBE_EXC 30, 1
    PROBE_EXC 31, 0

    /* Stack: vector, error code, then the CPU's frame (rip, cs, rflags, rsp, ss). */
probe_exc_common:
    pop %rdi
    pop %rsi
    mov (%rsp), %rdx
    and $-16, %rsp
    call probe_exception
6:
    cli
    hlt
    jmp 6b
    .popsection

    .pushsection .rodata.exception_stubs, "a"
    .p2align 3
    .global probe_exception_stubs
probe_exception_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad probe_exc_\n
    .endr
    .popsection
"#,
    options(att_syntax)
);
