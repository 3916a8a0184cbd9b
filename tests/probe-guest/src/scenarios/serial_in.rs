//! `probe=serial-in`: the VMM's serial input path. Reads `probe.bytes=N` bytes (default
//! [`DEFAULT_BYTES`], at most [`MAX_BYTES`]) from COM1's receiver by polling LSR.DR, within
//! [`DEADLINE_S`] seconds, and passes with `bytes=N fnv=0xHHHHHHHH`: the 32-bit FNV-1a hash of
//! what arrived, which the harness compares with what it sent (more than the UART's 64-byte
//! FIFO, so the VMM must refill it as the guest drains it). Prints `serial-in: ready` first.

use super::Context;
use crate::clock::Clock;
use crate::report::Outcome;
use crate::{pvh, serial, sprintln, text, x86};

/// Bytes read when `probe.bytes` is absent.
const DEFAULT_BYTES: u32 = 256;
/// Most bytes the scenario reads.
const MAX_BYTES: u32 = 1 << 20;
/// How long the input may take to arrive.
const DEADLINE_S: u64 = 60;
/// Nanoseconds per second.
const NS_PER_S: u64 = 1_000_000_000;
/// Receiver buffer register (DLAB = 0) and line status register offsets.
const RBR: u16 = 0;
const LSR: u16 = 5;
/// LSR bit 0: data ready.
const LSR_DATA_READY: u8 = 1 << 0;
/// FNV-1a, 32 bits.
const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let n = pvh::cmdline_u32(ctx.cmdline, "probe.bytes", DEFAULT_BYTES)?;
    if n > MAX_BYTES {
        return Err(text!("probe.bytes={} exceeds {}", n, MAX_BYTES));
    }
    let clock = Clock::start()?;
    let deadline = clock.now_ns() + DEADLINE_S * NS_PER_S;
    sprintln!("serial-in: ready for {} bytes", n);
    let mut hash = FNV_OFFSET;
    let mut got = 0u32;
    while got < n {
        // SAFETY: reading LSR and RBR of COM1 only consumes received bytes, which is the
        // point; the probe's output path does not read them.
        let byte = unsafe {
            if x86::inb(serial::COM1 + LSR) & LSR_DATA_READY == 0 {
                if clock.now_ns() > deadline {
                    return Err(text!("{} of {} bytes within {} s", got, n, DEADLINE_S));
                }
                x86::pause();
                continue;
            }
            x86::inb(serial::COM1 + RBR)
        };
        hash = (hash ^ u32::from(byte)).wrapping_mul(FNV_PRIME);
        got += 1;
    }
    Ok(text!("bytes={} fnv=0x{:08x}", n, hash))
}
