//! `probe=virtio-console-in`: the VMM's virtio-console input path, as `serial-in` is the
//! serial one. The virtio console found by PCI ID (1af4:1043), its receive queue polled
//! (no interrupts) with [`BUFFERS`] buffers of [`BUF_LEN`] bytes in flight (small, so the
//! input spreads over many buffers, each offered again as it comes back); reads
//! `probe.bytes=N` bytes (default [`DEFAULT_BYTES`], at most [`MAX_BYTES`]) within
//! [`DEADLINE_S`] seconds and passes with `bytes=N fnv=0xHHHHHHHH`: the 32-bit FNV-1a hash
//! of what arrived, which the harness compares with what it sent. A byte beyond N, a used
//! length beyond the buffer or an unknown buffer fails. Prints
//! `virtio-console-in: ready for N bytes` once the buffers are offered.

use super::Context;
use crate::clock::Clock;
use crate::report::Outcome;
use crate::virtio::{self, Buf, Device, NO_VECTOR, TYPE_CONSOLE};
use crate::{pvh, sprintln, text};

/// Bytes read when `probe.bytes` is absent.
const DEFAULT_BYTES: u32 = 256;
/// Most bytes the scenario reads.
const MAX_BYTES: u32 = 1 << 20;
/// How long the input may take to arrive.
const DEADLINE_S: u64 = 60;
/// Nanoseconds per second.
const NS_PER_S: u64 = 1_000_000_000;
/// Receive buffers in flight.
const BUFFERS: u16 = 8;
/// Bytes per receive buffer (odd, so chunk boundaries move around).
const BUF_LEN: u32 = 61;
/// Data arena offset of the first buffer.
const RX_AT: usize = 0;
/// FNV-1a, 32 bits.
const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

fn buffer(slot: u16) -> Buf {
    Buf {
        addr: virtio::data_addr(RX_AT + usize::from(slot) * BUF_LEN as usize),
        len: BUF_LEN,
        write: true,
    }
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let n = pvh::cmdline_u32(ctx.cmdline, "probe.bytes", DEFAULT_BYTES)?;
    if n > MAX_BYTES {
        return Err(text!("probe.bytes={} exceeds {}", n, MAX_BYTES));
    }
    let clock = Clock::start()?;
    let dev = Device::find(TYPE_CONSOLE)?;
    sprintln!("virtio-console-in: {} found", dev.function);
    dev.init(&clock, 0)?;
    let mut rx = dev.setup_queue(0, NO_VECTOR)?;
    if rx.size < BUFFERS {
        return Err(text!("receive queue of {} entries", rx.size));
    }
    rx.set_no_interrupt(true);
    for slot in 0..BUFFERS {
        rx.submit(slot, &[buffer(slot)]);
    }
    dev.driver_ok();
    rx.kick();
    sprintln!("virtio-console-in: ready for {} bytes", n);
    let deadline = clock.now_ns() + DEADLINE_S * NS_PER_S;
    let mut hash = FNV_OFFSET;
    let mut got = 0u32;
    while got < n {
        let Some((head, len)) = rx.pop_used() else {
            if clock.now_ns() > deadline {
                return Err(text!("{} of {} bytes within {} s", got, n, DEADLINE_S));
            }
            core::hint::spin_loop();
            continue;
        };
        if head >= BUFFERS || len > BUF_LEN {
            return Err(text!("used entry: head {} length {}", head, len));
        }
        if len > n - got {
            return Err(text!("{} bytes arrived, expected {}", got + len, n));
        }
        let at = RX_AT + usize::from(head) * BUF_LEN as usize;
        for i in 0..len as usize {
            hash = (hash ^ u32::from(virtio::data_read(at + i))).wrapping_mul(FNV_PRIME);
        }
        got += len;
        rx.submit(head, &[buffer(head)]);
        if rx.wants_kick() {
            rx.kick();
        }
    }
    Ok(text!("bytes={} fnv=0x{:08x}", n, hash))
}
