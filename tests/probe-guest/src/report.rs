//! The probe's reporting protocol.
//!
//! Every run ends with exactly one last serial line, `PROBE PASS <name> key=value...` or
//! `PROBE FAIL <name> <reason>`, followed by a one-byte write to the debug-exit port 0x501
//! (0 = pass, 1 = fail; irvmm exits with that status, QEMU's `isa-debug-exit` with
//! `(v << 1) | 1`) and a `cli; hlt` loop in case nothing acts on that write.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use crate::{sprintln, x86};

/// I/O port of the debug-exit device.
pub const DEBUG_EXIT_PORT: u16 = 0x501;

/// Longest scenario name the probe accepts.
pub const MAX_NAME: usize = 32;

/// Capacity of a [`Text`] in bytes.
const TEXT_CAPACITY: usize = 240;

/// A short, fixed-capacity string built with `write!` (no allocator in the guest).
/// Text beyond the capacity is dropped at a character boundary and marked with `...`.
pub struct Text {
    buf: [u8; TEXT_CAPACITY],
    len: usize,
    truncated: bool,
}

impl Text {
    /// An empty text.
    pub const fn new() -> Self {
        Text {
            buf: [0; TEXT_CAPACITY],
            len: 0,
            truncated: false,
        }
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<invalid utf-8>")
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for Text {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = TEXT_CAPACITY - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            self.truncated = true;
        }
        Ok(())
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())?;
        if self.truncated {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// Builds a [`Text`] with `format!` syntax.
#[macro_export]
macro_rules! text {
    ($($arg:tt)*) => {{
        let mut t = $crate::report::Text::new();
        let _ = core::fmt::Write::write_fmt(&mut t, format_args!($($arg)*));
        t
    }};
}

/// What a scenario returns: `Ok(key=value details)` or `Err(reason)`.
pub type Outcome = Result<Text, Text>;

/// The scenario being run, for the panic and exception handlers.
static CURRENT: [AtomicU8; MAX_NAME] = [const { AtomicU8::new(0) }; MAX_NAME];
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
static FINISHING: AtomicBool = AtomicBool::new(false);

/// Records the running scenario's name, which [`fail_now`] (panics, exceptions) reports.
pub fn set_current(name: &str) {
    let n = name.len().min(MAX_NAME);
    for (slot, &b) in CURRENT.iter().zip(&name.as_bytes()[..n]) {
        slot.store(b, Ordering::Relaxed);
    }
    CURRENT_LEN.store(n, Ordering::Release);
}

fn current(buf: &mut [u8; MAX_NAME]) -> &str {
    let n = CURRENT_LEN.load(Ordering::Acquire).min(MAX_NAME);
    for (dst, src) in buf.iter_mut().zip(&CURRENT) {
        *dst = src.load(Ordering::Relaxed);
    }
    match core::str::from_utf8(&buf[..n]) {
        Ok("") | Err(_) => "none",
        Ok(s) => s,
    }
}

/// Prints the final line for `name`, signals the debug-exit port and halts.
pub fn finish(name: &str, outcome: Outcome) -> ! {
    if FINISHING.swap(true, Ordering::AcqRel) {
        // A fault while reporting: do not print again, just exit as failed.
        exit(1);
    }
    match &outcome {
        Ok(details) if details.is_empty() => sprintln!("PROBE PASS {}", name),
        Ok(details) => sprintln!("PROBE PASS {} {}", name, details),
        Err(reason) => sprintln!("PROBE FAIL {} {}", name, reason),
    }
    exit(if outcome.is_ok() { 0 } else { 1 })
}

/// Prints the `PROBE PASS` line of the current scenario (see [`set_current`]) without ending
/// the run, for scenarios whose success is the VMM ending the VM (power-off, reset, triple
/// fault): the PASS line comes first, then the action. If the probe is still running after
/// the action, the scenario returns `Err` and [`finish`] prints `PROBE FAIL`, which is then
/// the last line.
pub fn announce_pass(details: &Text) {
    let mut buf = [0u8; MAX_NAME];
    let name = current(&mut buf);
    sprintln!("PROBE PASS {} {}", name, details);
}

/// Fails the current scenario (see [`set_current`]) with `reason` and halts.
pub fn fail_now(reason: Text) -> ! {
    let mut buf = [0u8; MAX_NAME];
    let name = current(&mut buf);
    finish(name, Err(reason))
}

fn exit(status: u8) -> ! {
    // SAFETY: the debug-exit port only ends the VM; nothing else is attached to it.
    unsafe { x86::outb(DEBUG_EXIT_PORT, status) }
    x86::halt_forever()
}
