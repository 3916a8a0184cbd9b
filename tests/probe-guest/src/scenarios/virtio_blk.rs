//! `probe=virtio-blk`: the virtio-blk device found by PCI ID (1af4:1042), driven through
//! every queue with its interrupts on CPUs across the APIC IDs (remapped when there is a
//! DMAR), then reset and re-initialised.
//!
//! The image must hold at least 64 sectors filled with [`pattern`] (the host test writes
//! it). Steps (one request in flight at a time, each completion and its interrupt checked):
//! 1. GET_ID (the serial, if the device answers it);
//! 2. read sectors 0..8 on queue 0, compared with [`pattern`];
//! 3. write sectors 16..24 with `offset ^ 0x5a` (queue 0) and, on each queue q, sector
//!    32 + q with `0x30 + q`; flush; read 16..24 back;
//! 4. discard sectors 40..48 and write-zeroes 48..56 when offered;
//! 5. read at the capacity: must fail with IOERR (status 1);
//! 6. reset (status 0 until it reads 0), re-initialise with one queue, read sector 0 again.
//!
//! Passes with `capacity=N queues=Q serial=S discard=0|1 write_zeroes=0|1 irqs=N remapped=0|1`.
//! The host checks the image afterwards.

use super::virtio_common::{self, Irqs};
use super::Context;
use crate::report::{Outcome, Text};
use crate::virtio::{self, Buf, Device, Virtq, TYPE_BLOCK};
use crate::{sprintln, text};

/// Request types and statuses.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
/// Feature bits.
const F_SEG_MAX: u64 = 1 << 2;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
/// Configuration fields.
const CFG_CAPACITY: u64 = 0;
const CFG_NUM_QUEUES: u64 = 34;
/// Most queues the scenario drives.
const MAX_QUEUES: u16 = 4;
/// Sector size.
const SECTOR: usize = 512;
/// Data arena layout: headers and statuses in the first page, data after.
const HEADER_AT: usize = 0;
const STATUS_AT: usize = 64;
const SEGMENT_AT: usize = 128;
const DATA_AT: usize = 4096;

/// The byte the host test writes at image offset `o`.
pub fn pattern(o: usize) -> u8 {
    (o as u8) ^ ((o >> 9) as u8) ^ 0xa5
}

/// A block device ready for requests.
pub struct Disk {
    /// The device.
    pub dev: Device,
    /// Its queues.
    pub queues: [Option<Virtq>; MAX_QUEUES as usize],
    /// Accepted features.
    pub features: u64,
    /// Capacity in sectors.
    pub capacity: u64,
}

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

/// Sets up `dev` with up to `want_queues` queues; queue q uses MSI-X vector q + 1, the
/// configuration vector 0.
pub fn open(dev: Device, irqs: &Irqs, want_queues: u16) -> Result<Disk, Text> {
    let features = dev.init(
        &irqs.clock,
        F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_MQ | F_DISCARD | F_WRITE_ZEROES,
    )?;
    let capacity = dev.config64(CFG_CAPACITY);
    let nq = if features & F_MQ != 0 {
        dev.config16(CFG_NUM_QUEUES).max(1)
    } else {
        1
    };
    let nq = nq
        .min(want_queues)
        .min(MAX_QUEUES)
        .min(irqs.count.saturating_sub(1) as u16)
        .max(1);
    dev.set_config_vector(0);
    let mut queues: [Option<Virtq>; MAX_QUEUES as usize] = Default::default();
    for q in 0..nq {
        queues[usize::from(q)] = Some(dev.setup_queue(q, q + 1)?);
    }
    dev.driver_ok();
    Ok(Disk {
        dev,
        queues,
        features,
        capacity,
    })
}

impl Disk {
    /// One request on queue `q`: header, optional data buffer, status; returns the status
    /// and the used length.
    pub fn request(
        &mut self,
        irqs: &mut Irqs,
        q: usize,
        kind: u32,
        sector: u64,
        data: Option<(usize, u32, bool)>,
    ) -> Result<(u8, u32), Text> {
        let queue = self
            .queues
            .get_mut(q)
            .and_then(Option::as_mut)
            .ok_or_else(|| text!("no queue {}", q))?;
        header(kind, sector);
        let mut bufs = [Buf {
            addr: virtio::data_addr(HEADER_AT),
            len: 16,
            write: false,
        }; 3];
        let mut n = 1;
        if let Some((at, len, write)) = data {
            bufs[1] = Buf {
                addr: virtio::data_addr(at),
                len,
                write,
            };
            n = 2;
        }
        bufs[n] = Buf {
            addr: virtio::data_addr(STATUS_AT),
            len: 1,
            write: true,
        };
        queue.submit(0, &bufs[..=n]);
        queue.kick();
        let (_, len) = irqs.complete(queue, q + 1, "virtio-blk request")?;
        Ok((virtio::data_read(STATUS_AT), len))
    }

    fn expect_ok(
        &mut self,
        irqs: &mut Irqs,
        q: usize,
        kind: u32,
        sector: u64,
        data: Option<(usize, u32, bool)>,
        what: &str,
    ) -> Result<u32, Text> {
        match self.request(irqs, q, kind, sector, data)? {
            (S_OK, len) => Ok(len),
            (s, _) => Err(text!("{}: status {}", what, s)),
        }
    }

    /// Number of queues set up.
    pub fn queue_count(&self) -> usize {
        self.queues.iter().filter(|q| q.is_some()).count()
    }
}

fn check_read(
    first_sector: usize,
    sectors: usize,
    expect: impl Fn(usize) -> u8,
    what: &str,
) -> Result<(), Text> {
    for i in 0..sectors * SECTOR {
        let o = first_sector * SECTOR + i;
        let got = virtio::data_read(DATA_AT + i);
        if got != expect(o) {
            return Err(text!(
                "{}: byte at image offset 0x{:x} is 0x{:x}, expected 0x{:x}",
                what,
                o,
                got,
                expect(o)
            ));
        }
    }
    Ok(())
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let dev = Device::find(TYPE_BLOCK)?;
    sprintln!("virtio-blk: {} found", dev.function);
    let vectors = usize::from(dev.msix.vectors()).min(usize::from(MAX_QUEUES) + 1);
    let (smp, mut irqs) = virtio_common::setup(ctx, &dev, vectors)?;
    let mut disk = open(dev, &irqs, MAX_QUEUES)?;
    if disk.capacity < 64 {
        return Err(text!(
            "capacity {} sectors: the image needs at least 64",
            disk.capacity
        ));
    }
    let nq = disk.queue_count();
    sprintln!(
        "virtio-blk: features 0x{:x} capacity {} queues {}",
        disk.features,
        disk.capacity,
        nq
    );

    // 1. Serial.
    for i in 0..20 {
        virtio::data_write(DATA_AT + i, 0);
    }
    let (s, _) = disk.request(&mut irqs, 0, T_GET_ID, 0, Some((DATA_AT, 20, true)))?;
    let mut serial = [b'-'; 20];
    let mut serial_len = 0;
    if s == S_OK {
        for (i, b) in serial.iter_mut().enumerate() {
            let c = virtio::data_read(DATA_AT + i);
            if c == 0 {
                break;
            }
            *b = if c.is_ascii_graphic() { c } else { b'?' };
            serial_len = i + 1;
        }
    }
    let serial = core::str::from_utf8(&serial[..serial_len.max(1)]).unwrap_or("?");

    // 2. Read.
    let len = disk.expect_ok(
        &mut irqs,
        0,
        T_IN,
        0,
        Some((DATA_AT, 8 * SECTOR as u32, true)),
        "read 0..8",
    )?;
    if len as usize != 8 * SECTOR + 1 {
        return Err(text!(
            "read 0..8: used length {}, expected {}",
            len,
            8 * SECTOR + 1
        ));
    }
    check_read(0, 8, pattern, "read 0..8")?;

    // 3. Writes, flush, read back.
    for i in 0..8 * SECTOR {
        virtio::data_write(DATA_AT + i, ((16 * SECTOR + i) as u8) ^ 0x5a);
    }
    disk.expect_ok(
        &mut irqs,
        0,
        T_OUT,
        16,
        Some((DATA_AT, 8 * SECTOR as u32, false)),
        "write 16..24",
    )?;
    for q in 0..nq {
        for i in 0..SECTOR {
            virtio::data_write(DATA_AT + i, 0x30 + q as u8);
        }
        disk.expect_ok(
            &mut irqs,
            q,
            T_OUT,
            32 + q as u64,
            Some((DATA_AT, SECTOR as u32, false)),
            "write on a queue",
        )?;
    }
    if disk.features & F_FLUSH != 0 {
        disk.expect_ok(&mut irqs, 0, T_FLUSH, 0, None, "flush")?;
    }
    for i in 0..8 * SECTOR {
        virtio::data_write(DATA_AT + i, 0);
    }
    disk.expect_ok(
        &mut irqs,
        nq - 1,
        T_IN,
        16,
        Some((DATA_AT, 8 * SECTOR as u32, true)),
        "read 16..24",
    )?;
    check_read(16, 8, |o| (o as u8) ^ 0x5a, "read back 16..24")?;

    // 4. Discard and write-zeroes.
    let segment = |sector: u64, count: u32| {
        for (i, b) in sector
            .to_le_bytes()
            .iter()
            .chain(&count.to_le_bytes())
            .chain(&[0u8; 4])
            .enumerate()
        {
            virtio::data_write(SEGMENT_AT + i, *b);
        }
    };
    let discard = disk.features & F_DISCARD != 0;
    if discard {
        segment(40, 8);
        disk.expect_ok(
            &mut irqs,
            0,
            T_DISCARD,
            0,
            Some((SEGMENT_AT, 16, false)),
            "discard 40..48",
        )?;
    }
    let zeroes = disk.features & F_WRITE_ZEROES != 0;
    if zeroes {
        segment(48, 8);
        disk.expect_ok(
            &mut irqs,
            0,
            T_WRITE_ZEROES,
            0,
            Some((SEGMENT_AT, 16, false)),
            "write-zeroes 48..56",
        )?;
        disk.expect_ok(
            &mut irqs,
            0,
            T_IN,
            48,
            Some((DATA_AT, 8 * SECTOR as u32, true)),
            "read 48..56",
        )?;
        check_read(48, 8, |_| 0, "read back 48..56")?;
    }

    // 5. Past the end.
    let (s, _) = disk.request(
        &mut irqs,
        0,
        T_IN,
        disk.capacity,
        Some((DATA_AT, SECTOR as u32, true)),
    )?;
    if s != S_IOERR {
        return Err(text!("read at the capacity: status {}, expected IOERR", s));
    }
    // 5b. With remapping: move queue 0's vector by its IRTE alone; the next completion
    // must interrupt the new CPU (the lowest APIC ID that is no target).
    let mut moved = text!("none");
    if irqs.remapped {
        let ids = smp.cpus.ids();
        let to = ids
            .iter()
            .copied()
            .find(|id| !irqs.targets[..irqs.count].contains(id))
            .ok_or_else(|| text!("no CPU left to move a vector to"))?;
        let from = irqs.targets[1];
        irqs.move_vector(1, to, disk.dev.function.sid())?;
        disk.expect_ok(
            &mut irqs,
            0,
            T_IN,
            0,
            Some((DATA_AT, SECTOR as u32, true)),
            "read after the IRTE move",
        )?;
        moved = text!("{}->{}", from, to);
    }
    let irq_total = irqs.check_all()?;

    // 6. Reset and re-initialise.
    let dev = disk.dev;
    dev.reset(&irqs.clock)?;
    let mut disk = open(dev, &irqs, 1)?;
    disk.expect_ok(
        &mut irqs,
        0,
        T_IN,
        0,
        Some((DATA_AT, SECTOR as u32, true)),
        "read after reset",
    )?;
    check_read(0, 1, pattern, "read after reset")?;
    let irq_total = irq_total.max(irqs.check_all()?);
    Ok(text!(
        "capacity={} queues={} serial={} discard={} write_zeroes={} irqs={} remapped={} moved={}",
        disk.capacity,
        nq,
        serial,
        u8::from(discard),
        u8::from(zeroes),
        irq_total,
        u8::from(irqs.remapped),
        moved
    ))
}
