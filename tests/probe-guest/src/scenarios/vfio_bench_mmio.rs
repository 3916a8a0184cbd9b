//! `probe=vfio-bench-mmio`: the cost of one register access to the passed-through test
//! device, for `benches/vfio_mmio.py` to compare irvmm's `msix=relocate` (BAR0 mapped whole:
//! no VM exit) with `msix=trap` (BAR0's page 0, which holds the MSI-X table and the
//! registers, trapped: each access exits to the VMM and is forwarded to the device server).
//!
//! Command line: `probe.accesses=N` (default [`DEFAULT_ACCESSES`], 1 to [`MAX_ACCESSES`]).
//!
//! Runs on the BSP alone with interrupts off. Times (kvmclock, or the TSC with its CPUID
//! frequency), in this order:
//! 1. N 4-byte writes and N 4-byte reads of a word in guest RAM, through the same code as
//!    the register accesses (the loop's own cost: on a host whose KVM emulates guest code,
//!    ~1.8 M instructions/s, a few instructions are microseconds);
//! 2. N 4-byte writes of SCRATCH (BAR0 + 0x8, on the table's page), value `SEED + i`;
//! 3. N 4-byte reads of SCRATCH, each of which must return the last value written.
//!
//! Passes with `accesses=N read_ns=R write_ns=W reads_per_s=X writes_per_s=Y ram_read_ns=A
//! ram_write_ns=B msix_bir=B table=0x..` (nanoseconds per access, loop included; the MSI-X
//! table location tells which placement irvmm chose: BAR2+0x0 relocated, BAR0+0x800 in
//! place).

use core::sync::atomic::AtomicU64;

use super::bench_stats::{self, NS_PER_US};
use super::ir_common::NS_PER_MS;
use super::Context;
use crate::clock::Clock;
use crate::mmio::Mmio;
use crate::msi::MsiX;
use crate::report::{Outcome, Text};
use crate::testdev::{self, Testdev};
use crate::{pvh, sprintln, text};

/// Accesses of each kind when the command line does not say.
const DEFAULT_ACCESSES: u32 = 10_000;
/// Most accesses of each kind (trapped, about a minute on the build machines).
const MAX_ACCESSES: u32 = 1_000_000;
/// First value written (then `SEED + i`).
const SEED: u32 = 0x5c7a_0000;
/// Bytes of the RAM word (the window [`Mmio::new`] checks).
const RAM_WORD_BYTES: u64 = 8;

/// The guest RAM word of the baseline loops (8-byte aligned, identity-mapped).
static RAM_WORD: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds taken by `n` writes of `SEED + i` to the 32-bit register at `offset`.
fn time_writes(regs: &Mmio, offset: u64, n: u32, clock: &Clock) -> u64 {
    let begin = clock.now_ns();
    for i in 0..n {
        regs.write32(offset, SEED.wrapping_add(i));
    }
    clock.now_ns().saturating_sub(begin)
}

/// Nanoseconds taken by `n` reads of the 32-bit register at `offset`, and how many reads
/// differed from `expected`.
fn time_reads(regs: &Mmio, offset: u64, n: u32, clock: &Clock, expected: u32) -> (u64, u32) {
    let mut wrong = 0u32;
    let begin = clock.now_ns();
    for _ in 0..n {
        if regs.read32(offset) != expected {
            wrong += 1;
        }
    }
    (clock.now_ns().saturating_sub(begin), wrong)
}

/// Writes then reads `n` times at `offset` of `regs`: (write ns, read ns) in all; fails
/// when a read does not return the last value written.
fn write_then_read(
    what: &str,
    regs: &Mmio,
    offset: u64,
    n: u32,
    clock: &Clock,
) -> Result<(u64, u64), Text> {
    let write_ns = time_writes(regs, offset, n, clock);
    let last = SEED.wrapping_add(n - 1);
    let (read_ns, wrong) = time_reads(regs, offset, n, clock, last);
    if wrong != 0 {
        return Err(text!(
            "{}: {} of {} reads differ from the last value written 0x{:08x} (now reads 0x{:08x})",
            what,
            wrong,
            n,
            last,
            regs.read32(offset)
        ));
    }
    Ok((write_ns, read_ns))
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let n = pvh::cmdline_u32(ctx.cmdline, "probe.accesses", DEFAULT_ACCESSES)?;
    if !(1..=MAX_ACCESSES).contains(&n) {
        return Err(text!(
            "probe.accesses={} is outside 1..={}",
            n,
            MAX_ACCESSES
        ));
    }
    let clock = Clock::start()?;
    let dev = Testdev::find()?;
    let at = MsiX::find(dev.function)?.table_location();
    let regs = Mmio::new("test device BAR 0", dev.bar0(), testdev::BAR0_SIZE)?;
    let ram = Mmio::new("RAM word", RAM_WORD.as_ptr() as u64, RAM_WORD_BYTES)?;
    sprintln!(
        "vfio-bench-mmio: {} BAR0 0x{:x}, MSI-X table BAR{}+0x{:x}; {} accesses of each kind, clock {}",
        dev.function,
        dev.bar0(),
        at.bir,
        at.offset,
        n,
        clock.source_name()
    );

    let (ram_write, ram_read) = write_then_read("RAM word", &ram, 0, n, &clock)?;
    let (write, read) = write_then_read("SCRATCH", &regs, testdev::REG_SCRATCH, n, &clock)?;
    let per = |ns: u64| ns / u64::from(n);
    let (reads_per_s, writes_per_s) = (
        bench_stats::per_second(u64::from(n), read),
        bench_stats::per_second(u64::from(n), write),
    );
    sprintln!(
        "vfio-bench-mmio: SCRATCH: {} writes in {} ms ({} ns each, {} per second), {} reads in {} ms ({} ns each, {} per second)",
        n,
        write / NS_PER_MS,
        per(write),
        writes_per_s,
        n,
        read / NS_PER_MS,
        per(read),
        reads_per_s
    );
    sprintln!(
        "vfio-bench-mmio: RAM word: writes {} ns each, reads {} ns each ({} us in all)",
        per(ram_write),
        per(ram_read),
        (ram_write + ram_read) / NS_PER_US
    );
    Ok(text!(
        "accesses={} read_ns={} write_ns={} reads_per_s={} writes_per_s={} ram_read_ns={} ram_write_ns={} msix_bir={} table=0x{:x}",
        n,
        per(read),
        per(write),
        reads_per_s,
        writes_per_s,
        per(ram_read),
        per(ram_write),
        at.bir,
        at.offset
    ))
}
