//! `probe=virtio-blk-bad`: a hostile driver against the virtio-blk device (1af4:1042); the
//! VMM must keep running and answer as the virtio specification says. For irvmm (QEMU
//! answers some of these with its own choices: it marks the device broken on a bad chain).
//!
//! 1. queue 0 enabled with 12 entries (not a power of two): DEVICE_NEEDS_RESET; reset;
//! 2. device-configuration writes of 1, 2, 4 and 8 bytes: ignored (capacity unchanged);
//! 3. a notify of queue 5, which does not exist, and of queue 0 before DRIVER_OK: nothing;
//! 4. a header of 8 bytes: IOERR; a data buffer outside RAM: IOERR; a chain that loops
//!    back to its head (every descriptor readable, so no status byte): used with length 0;
//!    then a good read still works;
//! 5. an available index 100 entries ahead of a 16-entry ring: DEVICE_NEEDS_RESET with a
//!    configuration interrupt;
//! 6. reset and one good read.
//!
//! Passes with `bad_size=needs_reset short=ioerr outside=ioerr loop=dropped runaway=needs_reset config_irqs=1`.

use super::virtio_blk::{open, pattern};
use super::virtio_common;
use super::Context;
use crate::report::{Outcome, Text};
use crate::virtio::{self, Device, DESC_NEXT, DESC_WRITE, S_FEATURES_OK, TYPE_BLOCK};
use crate::{sprintln, text};

const T_IN: u32 = 0;
const S_NEEDS_RESET: u8 = 0x40;
const S_IOERR: u8 = 1;
const HEADER_AT: usize = 0;
const STATUS_AT: usize = 64;
const DATA_AT: usize = 4096;
/// Far beyond the probe's 128 MiB and any MMIO.
const OUTSIDE_RAM: u64 = 0x7fff_0000_0000;

fn header(kind: u32, sector: u64) {
    for (i, b) in kind
        .to_le_bytes()
        .iter()
        .chain(&[0u8; 4])
        .chain(&sector.to_le_bytes())
        .enumerate()
    {
        virtio::data_write(HEADER_AT + i, *b);
    }
    virtio::data_write(STATUS_AT, 0xee);
}

fn wait_status(dev: &Device, irqs: &virtio_common::Irqs, bit: u8, what: &str) -> Result<(), Text> {
    if super::ir_common::wait(&irqs.clock, virtio_common::REQUEST_TIMEOUT_NS, || {
        dev.status() & bit != 0
    }) {
        return Ok(());
    }
    Err(text!(
        "{}: status 0x{:x}, expected bit 0x{:x}",
        what,
        dev.status(),
        bit
    ))
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let dev = Device::find(TYPE_BLOCK)?;
    let (_smp, mut irqs) = virtio_common::setup(ctx, &dev, 2)?;

    // 1. A queue size that is not a power of two.
    dev.init(&irqs.clock, 0)?;
    dev.setup_queue_sized(0, 1, 12)?;
    wait_status(&dev, &irqs, S_NEEDS_RESET, "queue of 12 entries")?;
    dev.reset(&irqs.clock)?;

    // 2. Device-configuration writes of every size.
    let capacity = dev.config64(0);
    for (off, size) in [(0u64, 1u64), (2, 2), (4, 4), (8, 8), (20, 4), (34, 2)] {
        dev.config_write(off, u64::MAX, size);
    }
    if dev.config64(0) != capacity {
        return Err(text!(
            "capacity changed from {} to {} by config writes",
            capacity,
            dev.config64(0)
        ));
    }

    // 3. Notifies of a queue that does not exist and of one not yet running.
    dev.init(&irqs.clock, 0)?;
    dev.set_config_vector(0);
    let mut q = dev.setup_queue(0, 1)?;
    dev.notify_raw(5)?;
    dev.notify_raw(0)?;
    if dev.status() & S_FEATURES_OK == 0 || dev.status() & S_NEEDS_RESET != 0 {
        return Err(text!("status 0x{:x} after stray notifies", dev.status()));
    }
    dev.driver_ok();

    // 4. Bad chains, then a good one.
    let hdr = virtio::data_addr(HEADER_AT);
    let status = virtio::data_addr(STATUS_AT);
    header(T_IN, 0);
    q.write_desc(0, hdr, 8, DESC_NEXT, 1);
    q.write_desc(1, status, 1, DESC_WRITE, 0);
    q.push_head(0);
    q.kick();
    irqs.complete(&mut q, 1, "short header")?;
    let short = virtio::data_read(STATUS_AT);
    header(T_IN, 0);
    q.write_desc(2, hdr, 16, DESC_NEXT, 3);
    q.write_desc(3, OUTSIDE_RAM, 512, DESC_WRITE | DESC_NEXT, 4);
    q.write_desc(4, status, 1, DESC_WRITE, 0);
    q.push_head(2);
    q.kick();
    irqs.complete(&mut q, 1, "buffer outside RAM")?;
    let outside = virtio::data_read(STATUS_AT);
    q.write_desc(5, hdr, 16, DESC_NEXT, 6);
    q.write_desc(6, hdr, 16, DESC_NEXT, 5);
    q.push_head(5);
    q.kick();
    let (_, loop_len) = irqs.complete(&mut q, 1, "looping chain")?;
    if short != S_IOERR || outside != S_IOERR || loop_len != 0 {
        return Err(text!(
            "short header status {}, outside RAM status {}, loop used length {}",
            short,
            outside,
            loop_len
        ));
    }
    let mut disk = open(dev, &irqs, 1)?;
    let (s, _) = disk.request(&mut irqs, 0, T_IN, 1, Some((DATA_AT, 512, true)))?;
    if s != 0 || (0..512).any(|i| virtio::data_read(DATA_AT + i) != pattern(512 + i)) {
        return Err(text!("good read after re-init: status {}", s));
    }

    // 5. A runaway available index.
    let q = disk.queues[0].as_mut().ok_or_else(|| text!("no queue 0"))?;
    q.runaway_avail(100);
    q.kick();
    wait_status(&disk.dev, &irqs, S_NEEDS_RESET, "runaway available index")?;
    irqs.expect_interrupt(0, "configuration interrupt for DEVICE_NEEDS_RESET")?;

    // 6. Reset and a good read.
    let dev = disk.dev;
    dev.reset(&irqs.clock)?;
    let mut disk = open(dev, &irqs, 1)?;
    let (s, _) = disk.request(&mut irqs, 0, T_IN, 0, Some((DATA_AT, 512, true)))?;
    if s != 0 || (0..512).any(|i| virtio::data_read(DATA_AT + i) != pattern(i)) {
        return Err(text!("read after the final reset: status {}", s));
    }
    let total = irqs.check_all()?;
    sprintln!("virtio-blk-bad: {} interrupts, each where expected", total);
    Ok(text!("bad_size=needs_reset short=ioerr outside=ioerr loop=dropped runaway=needs_reset config_irqs=1"))
}
