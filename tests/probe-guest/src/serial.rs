//! COM1 (16550 at 0x3f8), polled, output only.
//!
//! Every byte costs one or two VM exits, so the probe keeps its output short. Only the BSP
//! prints: APs of later scenarios report through memory (see notes/this-machine.md).

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::x86;

/// I/O base of COM1.
pub const COM1: u16 = 0x3f8;

const THR: u16 = 0; // transmit holding register (DLAB = 0)
const IER: u16 = 1; // interrupt enable (DLAB = 0)
const DLL: u16 = 0; // divisor low (DLAB = 1)
const DLM: u16 = 1; // divisor high (DLAB = 1)
const FCR: u16 = 2; // FIFO control
const LCR: u16 = 3; // line control
const IIR: u16 = 2; // interrupt identification (read)
const MCR: u16 = 4; // modem control
const LSR: u16 = 5; // line status
const LSR_THR_EMPTY: u8 = 1 << 5;
/// IER bit 1: interrupt when the transmit holding register is empty.
const IER_THR_EMPTY: u8 = 1 << 1;
/// MCR bits 0 and 1: DTR and RTS.
const MCR_DTR_RTS: u8 = 0x03;
/// MCR bit 3: OUT2, which gates the UART's IRQ line on PCs.
const MCR_OUT2: u8 = 1 << 3;

/// Polls of LSR per byte before the UART is declared stuck and no longer waited for.
const THR_POLL_LIMIT: u32 = 100_000;

/// Cleared when the transmitter never became ready: later bytes are written without waiting.
static RESPONSIVE: AtomicBool = AtomicBool::new(true);

/// Programs COM1 for 115200 baud, 8N1, FIFOs on, no interrupts.
pub fn init() {
    // SAFETY: COM1's registers belong to this module; nothing else in the probe uses them.
    unsafe {
        x86::outb(COM1 + IER, 0x00);
        x86::outb(COM1 + LCR, 0x80);
        x86::outb(COM1 + DLL, 0x01);
        x86::outb(COM1 + DLM, 0x00);
        x86::outb(COM1 + LCR, 0x03);
        x86::outb(COM1 + FCR, 0xc7);
        // DTR | RTS; OUT2 stays clear so the UART cannot raise IRQ 4.
        x86::outb(COM1 + MCR, MCR_DTR_RTS);
    }
}

/// Lets COM1 raise IRQ 4 when its transmitter is empty (OUT2 and IER.THRE set): a 16550
/// raises that interrupt at once, since the transmitter is idle. Nothing may print until
/// [`disable_interrupts`].
pub fn enable_thr_empty_interrupt() {
    // SAFETY: COM1 belongs to this module; the caller has a handler ready for IRQ 4.
    unsafe {
        x86::outb(COM1 + MCR, MCR_DTR_RTS | MCR_OUT2);
        x86::outb(COM1 + IER, IER_THR_EMPTY);
    }
}

/// Writes one byte to THR without waiting (with IER.THRE set, its completion interrupts).
pub fn kick_transmitter(byte: u8) {
    // SAFETY: writing THR only transmits the byte.
    unsafe { x86::outb(COM1 + THR, byte) }
}

/// Stops COM1's interrupts again: IER = 0, the pending identification read (and so
/// acknowledged), OUT2 cleared. Safe to call from an interrupt handler on any CPU.
pub fn disable_interrupts() {
    // SAFETY: COM1 belongs to this module; reading IIR only acknowledges a THRE interrupt.
    unsafe {
        x86::outb(COM1 + IER, 0);
        let _ = x86::inb(COM1 + IIR);
        x86::outb(COM1 + MCR, MCR_DTR_RTS);
    }
}

fn write_byte(byte: u8) {
    if RESPONSIVE.load(Ordering::Relaxed) {
        let mut polls = 0;
        // SAFETY: reading LSR has no side effect on transmission.
        while unsafe { x86::inb(COM1 + LSR) } & LSR_THR_EMPTY == 0 {
            polls += 1;
            if polls == THR_POLL_LIMIT {
                RESPONSIVE.store(false, Ordering::Relaxed);
                break;
            }
            x86::pause();
        }
    }
    // SAFETY: writing THR only transmits the byte.
    unsafe { x86::outb(COM1 + THR, byte) }
}

/// Writes raw bytes to COM1.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        write_byte(b);
    }
}

/// `core::fmt` sink for COM1; use it through [`sprint!`](crate::sprint) and
/// [`sprintln!`](crate::sprintln).
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Prints to COM1 with `format!` syntax.
#[macro_export]
macro_rules! sprint {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::serial::Console, format_args!($($arg)*));
    }};
}

/// Prints a line to COM1 with `format!` syntax (the line ends with `\n` only).
#[macro_export]
macro_rules! sprintln {
    () => { $crate::serial::write_bytes(b"\n") };
    ($($arg:tt)*) => {{
        $crate::sprint!($($arg)*);
        $crate::serial::write_bytes(b"\n");
    }};
}
