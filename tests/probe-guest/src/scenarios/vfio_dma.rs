//! `probe=vfio-dma`: the passed-through test device's DMA engine reading and writing guest
//! memory (I/O virtual address = guest-physical address: irvmm DMA-maps guest RAM for the
//! device and the probe enables no DMA remapping).
//!
//! Runs on the BSP alone. MSI-X entry [`DMA_VECTOR`] gets a compatibility-format message
//! to the BSP (fixed, edge, [`VECTOR`]).
//!
//! 1. guest -> device: a 4 KiB guest buffer filled with a pattern is copied to the device
//!    buffer's first 4 KiB (DMA_CMD direction 0, with the completion interrupt); DMA_STATUS
//!    must read 1, DMA_DONE 1, one interrupt must arrive, and BAR0+0xc000.. must read the
//!    pattern.
//! 2. device -> guest: a second pattern written into the device buffer's second 4 KiB
//!    through BAR0 is copied into another (zeroed) guest buffer (direction 1); status 1,
//!    DMA_DONE 2, and guest memory must hold the pattern.
//! 3. unmapped guest addresses: from the end of RAM (the PVH memory map's highest RAM end)
//!    into the device buffer's third 4 KiB, with the completion interrupt; from a range
//!    that starts 2 KiB below the end of RAM and runs past it; and from the device buffer
//!    to the end of RAM. Each must end with DMA_STATUS 2, DMA_DONE unchanged and the device
//!    buffer untouched (a failed transfer copies nothing); the failed transfer with the
//!    completion bit interrupts once too.
//!
//! Passes with `bytes=4096 to_device=ok to_guest=ok unmapped=failed irqs=2 dma_done=2`.

use core::cell::UnsafeCell;

use super::ir_common;
use super::smp;
use super::vfio_common::{self, DELIVERY_TIMEOUT_NS, SETTLE_NS, VECTOR};
use super::Context;
use crate::clock::Clock;
use crate::prng::Rng;
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE};
use crate::testdev::{self, Direction, Testdev, Transfer, DMA_FAILED, DMA_OK};
use crate::{irq, sprintln, text};

/// Bytes per transfer.
const CHUNK: usize = 4096;
/// Dwords per transfer.
const DWORDS: usize = CHUNK / 4;
/// MSI-X vector of the completion interrupts.
const DMA_VECTOR: u16 = 3;
/// Device-buffer offsets of the three 4 KiB areas the steps use.
const AREA_TO_DEVICE: u64 = 0;
const AREA_FROM_DEVICE: u64 = 0x1000;
const AREA_UNTOUCHED: u64 = 0x2000;
/// What the untouched area is filled with.
const SENTINEL: u32 = 0x5e57_1ae1;
/// Seeds of the two patterns.
const SEED_TO_DEVICE: u64 = 0xd0a_0001;
const SEED_TO_GUEST: u64 = 0xd0a_0002;
/// How far below the end of RAM the straddling transfer starts.
const STRADDLE: u64 = 2048;

/// A page-aligned guest buffer the device reads or writes.
#[repr(C, align(4096))]
struct Buffer(UnsafeCell<[u32; DWORDS]>);

// SAFETY: only the BSP touches the buffers (with volatile accesses), and the device only
// between a DMA start and its completion, which the BSP waits for.
unsafe impl Sync for Buffer {}

static SOURCE: Buffer = Buffer(UnsafeCell::new([0; DWORDS]));
static TARGET: Buffer = Buffer(UnsafeCell::new([0; DWORDS]));

impl Buffer {
    /// Guest-physical (identity-mapped) address.
    fn address(&self) -> u64 {
        self.0.get() as u64
    }

    fn write(&self, index: usize, value: u32) {
        let p = self.0.get() as *mut u32;
        assert!(index < DWORDS);
        // SAFETY: in bounds (asserted); see the `Sync` note.
        unsafe { core::ptr::write_volatile(p.add(index), value) }
    }

    fn read(&self, index: usize) -> u32 {
        let p = self.0.get() as *const u32;
        assert!(index < DWORDS);
        // SAFETY: in bounds (asserted); the device wrote it before clearing its start bit.
        unsafe { core::ptr::read_volatile(p.add(index)) }
    }
}

/// The pattern dword `i` of `seed`.
fn pattern(seed: u64) -> impl Iterator<Item = u32> {
    let mut rng = Rng::new(seed);
    (0..DWORDS).map(move |_| rng.next_u32())
}

/// Checks that `read(i)` is `expected(i)` for every dword.
fn compare(
    what: &str,
    expected: impl Iterator<Item = u32>,
    read: impl Fn(usize) -> u32,
) -> Result<(), Text> {
    for (i, want) in expected.enumerate() {
        let got = read(i);
        if got != want {
            return Err(text!(
                "{}: dword {} (byte 0x{:x}) reads 0x{:08x}, expected 0x{:08x}",
                what,
                i,
                4 * i,
                got,
                want
            ));
        }
    }
    Ok(())
}

/// Runs `t` and checks its status and DMA_DONE.
fn transfer(
    dev: &Testdev,
    clock: &Clock,
    what: &str,
    t: Transfer,
    status: u32,
    done: u32,
) -> Result<(), Text> {
    let got = dev.dma(clock, t)?;
    let got_done = dev.read(testdev::REG_DMA_DONE);
    if got != status || got_done != done {
        return Err(text!(
            "{}: DMA 0x{:x} -> 0x{:x} ({} bytes): status {} DMA_DONE {}, expected {} and {}",
            what,
            t.src,
            t.dst,
            t.count,
            got,
            got_done,
            status,
            done
        ));
    }
    Ok(())
}

/// Waits for the completion interrupt number `n` and checks no more came.
fn completion(clock: &Clock, n: u32, what: &str) -> Result<(), Text> {
    let arrived = ir_common::wait(clock, DELIVERY_TIMEOUT_NS, || DEVICE.total() >= n);
    ir_common::settle(clock, SETTLE_NS);
    if !arrived || DEVICE.total() != n {
        return Err(text!(
            "{}: {} completion interrupts in all, expected {}",
            what,
            DEVICE.total(),
            n
        ));
    }
    Ok(())
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let ram_end = vfio_common::ram_end(&ctx.start_info)?;
    let dev = Testdev::find()?;
    let msix = vfio_common::msix(&dev, usize::from(DMA_VECTOR) + 1)?;
    let address = vfio_common::compat_address(smp.bsp_id, false)
        .ok_or_else(|| text!("BSP APIC ID {} does not fit an xAPIC message", smp.bsp_id))?;
    let clock = smp.clock;
    irq::set_handler(VECTOR, tally::on_device)?;
    msix.enable_masked();
    msix.set_entry(DMA_VECTOR, address, u32::from(VECTOR), false)?;
    msix.unmask_function();
    let buffer = |area: u64, i: usize| testdev::BUFFER + area + 4 * i as u64;
    let done0 = dev.read(testdev::REG_DMA_DONE);
    sprintln!(
        "vfio-dma: {} BAR0 0x{:x}; guest buffers 0x{:x} and 0x{:x}; RAM ends at 0x{:x}",
        dev.function,
        dev.bar0(),
        SOURCE.address(),
        TARGET.address(),
        ram_end
    );

    // 1. Guest to device.
    for (i, v) in pattern(SEED_TO_DEVICE).enumerate() {
        SOURCE.write(i, v);
    }
    let to_device = Transfer {
        src: SOURCE.address(),
        dst: Testdev::buffer_device_addr(AREA_TO_DEVICE),
        count: CHUNK as u32,
        direction: Direction::ToDevice,
        vector: Some(DMA_VECTOR),
    };
    transfer(
        &dev,
        &clock,
        "guest -> device",
        to_device,
        DMA_OK,
        done0.wrapping_add(1),
    )?;
    completion(&clock, 1, "guest -> device")?;
    compare(
        "device buffer after guest -> device",
        pattern(SEED_TO_DEVICE),
        |i| dev.read(buffer(AREA_TO_DEVICE, i)),
    )?;

    // 2. Device to guest.
    for (i, v) in pattern(SEED_TO_GUEST).enumerate() {
        dev.write(buffer(AREA_FROM_DEVICE, i), v);
        TARGET.write(i, 0);
    }
    let to_guest = Transfer {
        src: Testdev::buffer_device_addr(AREA_FROM_DEVICE),
        dst: TARGET.address(),
        count: CHUNK as u32,
        direction: Direction::ToGuest,
        vector: None,
    };
    transfer(
        &dev,
        &clock,
        "device -> guest",
        to_guest,
        DMA_OK,
        done0.wrapping_add(2),
    )?;
    compare(
        "guest memory after device -> guest",
        pattern(SEED_TO_GUEST),
        |i| TARGET.read(i),
    )?;

    // 3. Unmapped guest addresses fail and copy nothing.
    for i in 0..DWORDS {
        dev.write(buffer(AREA_UNTOUCHED, i), SENTINEL);
    }
    let into_untouched = Testdev::buffer_device_addr(AREA_UNTOUCHED);
    let failing = [
        (
            "from beyond RAM",
            Transfer {
                src: ram_end,
                dst: into_untouched,
                count: CHUNK as u32,
                direction: Direction::ToDevice,
                vector: Some(DMA_VECTOR),
            },
        ),
        (
            "from across the end of RAM",
            Transfer {
                src: ram_end.saturating_sub(STRADDLE),
                dst: into_untouched,
                count: CHUNK as u32,
                direction: Direction::ToDevice,
                vector: None,
            },
        ),
        (
            "to beyond RAM",
            Transfer {
                src: into_untouched,
                dst: ram_end,
                count: CHUNK as u32,
                direction: Direction::ToGuest,
                vector: None,
            },
        ),
    ];
    for (what, t) in failing {
        transfer(&dev, &clock, what, t, DMA_FAILED, done0.wrapping_add(2))?;
        compare(what, core::iter::repeat_n(SENTINEL, DWORDS), |i| {
            dev.read(buffer(AREA_UNTOUCHED, i))
        })?;
    }
    completion(&clock, 2, "failed transfer")?;
    irq::stop_tick();
    Ok(text!(
        "bytes={} to_device=ok to_guest=ok unmapped=failed irqs={} dma_done={}",
        CHUNK,
        DEVICE.total(),
        dev.read(testdev::REG_DMA_DONE).wrapping_sub(done0)
    ))
}
