//! `probe=virtio-blk-iommu`: the virtio-blk device (1af4:1042) working through the VT-d
//! unit's DMA remapping with `VIRTIO_F_ACCESS_PLATFORM`, as Linux drives it with
//! `iommu=strict`.
//!
//! Set-up: the device's MSI-X vectors are remapped as in `virtio-blk` (vector 0 for
//! configuration changes, vector 1 for queue 0), then DMA translation is enabled on the
//! same unit ([`dma_common::translate`]) with the device's context pointing at a table of
//! the deepest kind the unit walks. Its pages are mapped at IOVAs far from their
//! guest-physical addresses (beyond RAM, so a device that did not translate would reach
//! nothing): the queue's ring page at `base`, three data pages IOVA-contiguous at
//! `base + 0x1000` but in another guest-physical order (the third page first), and the
//! header/status page 2 MiB further; sentinel pages on either side of the data pages are
//! never mapped. Every mapping is followed by its page-selective invalidation. The driver
//! must offer and accept ACCESS_PLATFORM and gives the device only IOVAs.
//!
//! Steps (one request at a time, each completion and its interrupt checked):
//! 1. read sectors 0..24 (12 KiB, one descriptor) into the data IOVAs: each data page holds
//!    its part of the image, no fault recorded;
//! 2. write sectors 64..88 from the data IOVAs, clear the pages, read them back;
//! 3. unmap the second data page and invalidate it; the same 12 KiB read must fail: irvmm
//!    completes it with `VIRTIO_BLK_S_IOERR` and records one fault (write, reason 0x5, the
//!    device's SID, that page); another VMM may instead set `DEVICE_NEEDS_RESET`
//!    (`needs_reset`) or complete the request with the unreachable part dropped
//!    (`dropped`: QEMU 7.2 sends it to its bounce buffer and reports OK), and must record a
//!    fault of the device. Either way the unmapped page and the sentinels are unchanged.
//!    The page is mapped again (and the device reset when it needed it); a read works;
//! 4. unmap the ring page and invalidate it, then submit a read: irvmm sets
//!    `DEVICE_NEEDS_RESET` with a configuration interrupt and records one read fault
//!    (0x6) on the ring page; the data pages are untouched. Other VMMs are reported (a
//!    device may still use a ring translation it holds: `served`, or stop: `stalled`);
//! 5. the ring mapped again, reset, re-initialised: a read of sectors 0..24 is correct.
//!
//! `PROBE PASS virtio-blk-iommu levels=4 base=0x... read=ok write=ok unmapped=ioerr
//! ring=needs_reset recovered=ok faults=2 irqs=N`. Needs a DMAR whose unit remaps DMA
//! (irvmm `--iommu intel`; QEMU `-device intel-iommu,intremap=on,eim=on,caching-mode=on,
//! aw-bits=48` and `-device virtio-blk-pci,iommu_platform=on,disable-legacy=on,...`) and an
//! image of at least 88 sectors filled with [`pattern`]; the host checks the image.

use super::dma_common::{self, read_dword, write_dword, Rig, FAULT_TIMEOUT_NS, MAX_RECORDS};
use super::ir_common::{self, SETTLE_NS};
use super::virtio_blk::pattern;
use super::virtio_common::{self, Irqs, REQUEST_TIMEOUT_NS};
use super::Context;
use crate::report::{Outcome, Text};
use crate::tally::EVENT;
use crate::virtio::{self, Buf, Device, Virtq, F_ACCESS_PLATFORM, TYPE_BLOCK};
use crate::vtd::dma::{PAGE_4K, SL_READ, SL_WRITE};
use crate::vtd::fault::{FaultRecord, FR_DMA_READ, FR_DMA_WRITE};
use crate::{irq, sprintln, text};

/// Request types and statuses.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
/// Device status: DEVICE_NEEDS_RESET.
const S_NEEDS_RESET: u8 = 0x40;
/// Sector size.
const SECTOR: u64 = 512;
/// Data pages (one descriptor of 12 KiB).
const DATA_PAGES: usize = 3;
/// Bytes a request moves.
const DATA_BYTES: u64 = DATA_PAGES as u64 * PAGE_4K;
/// Sectors a request moves.
const DATA_SECTORS: u64 = DATA_BYTES / SECTOR;
/// First sector the write step rewrites (the host checks it).
pub const WRITE_SECTOR: u64 = 64;
/// IOVA bases: 4-level tables (a non-zero top-level index) and 3-level ones.
const BASE_48: u64 = 0x0000_1234_5600_0000;
const BASE_39: u64 = 0x0000_0012_3456_0000;
/// Offsets from the base: ring page, data pages, header/status page.
const RING_AT: u64 = 0;
const DATA_AT: u64 = 0x1000;
const HEADER_AT: u64 = 0x20_0000;
/// Status byte offset in the header page.
const STATUS_OFFSET: u64 = 64;
/// Dword of the status byte.
const STATUS_DWORD: u64 = STATUS_OFFSET / 4;
/// What a status byte is before the device writes it.
const STATUS_UNSET: u32 = 0xee;
/// What sentinel pages and the unmapped page hold.
const SENTINEL: u32 = 0x5e57_1ae1;
const UNMAPPED_FILL: u32 = 0x0bad_0bad;
/// What the data pages hold when a request must not touch them.
const MARKER: u32 = 0x6d61_726b;

/// The byte the write step puts at image offset `o`.
pub fn written(o: usize) -> u8 {
    (o as u8) ^ 0x3c
}

/// How a request that should fail ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Completed (status, used length).
    Used(u8, u32),
    /// The device set DEVICE_NEEDS_RESET.
    NeedsReset,
    /// Neither within the deadline.
    Nothing,
}

/// The device, its unit and its pages.
struct Bench {
    rig: Rig,
    irqs: Irqs,
    dev: Device,
    q: Virtq,
    /// IOVA base.
    base: u64,
    /// Guest-physical address of the ring page.
    ring: u64,
    /// Guest-physical address of the header/status page.
    header: u64,
    /// Guest-physical page behind IOVA data page i.
    data: [u64; DATA_PAGES],
    /// The pages around the data pages, never mapped.
    guards: [u64; 2],
    /// Fault records checked so far.
    records: usize,
}

/// Byte `o` of the page at `page`.
fn byte(page: u64, o: u64) -> u8 {
    (read_dword(page, o / 4) >> (8 * (o % 4))) as u8
}

/// Fills the page at `page` with `f(offset)`.
fn fill_bytes(page: u64, f: impl Fn(u64) -> u8) {
    for i in 0..PAGE_4K / 4 {
        let v = u32::from_le_bytes([f(4 * i), f(4 * i + 1), f(4 * i + 2), f(4 * i + 3)]);
        write_dword(page, i, v);
    }
}

/// Initialises `dev` with ACCESS_PLATFORM, queue 0's rings at `ring_iova` on vector 1,
/// configuration changes on vector 0; DRIVER_OK.
fn open(dev: &Device, irqs: &Irqs, ring_iova: u64) -> Result<Virtq, Text> {
    if dev.device_features() & F_ACCESS_PLATFORM == 0 {
        return Err(text!(
            "{} does not offer VIRTIO_F_ACCESS_PLATFORM (irvmm: --iommu intel; QEMU: iommu_platform=on)",
            dev.function
        ));
    }
    let accepted = dev.init(&irqs.clock, F_ACCESS_PLATFORM)?;
    if accepted & F_ACCESS_PLATFORM == 0 {
        return Err(text!("ACCESS_PLATFORM not accepted"));
    }
    dev.set_config_vector(0);
    let q = dev.setup_queue_iova(0, 1, ring_iova)?;
    dev.driver_ok();
    if dev.status() & S_NEEDS_RESET != 0 {
        return Err(text!("status 0x{:x} right after DRIVER_OK", dev.status()));
    }
    Ok(q)
}

impl Bench {
    /// Puts a request of `kind` at `sector` on the queue: header, the 12 KiB data IOVAs
    /// (device-writable for reads), status; kicks.
    fn submit(&mut self, kind: u32, sector: u64) {
        write_dword(self.header, 0, kind);
        write_dword(self.header, 1, 0);
        write_dword(self.header, 2, sector as u32);
        write_dword(self.header, 3, (sector >> 32) as u32);
        write_dword(self.header, STATUS_DWORD, STATUS_UNSET);
        let header = self.base + HEADER_AT;
        let bufs = [
            Buf {
                addr: header,
                len: 16,
                write: false,
            },
            Buf {
                addr: self.base + DATA_AT,
                len: DATA_BYTES as u32,
                write: kind == T_IN,
            },
            Buf {
                addr: header + STATUS_OFFSET,
                len: 1,
                write: true,
            },
        ];
        self.q.submit(0, &bufs);
        self.q.kick();
    }

    /// The status byte.
    fn status(&self) -> u8 {
        read_dword(self.header, STATUS_DWORD) as u8
    }

    /// One request that must succeed; returns the used length.
    fn ok(&mut self, kind: u32, sector: u64, what: &str) -> Result<u32, Text> {
        self.submit(kind, sector);
        let (_, len) = self.irqs.complete(&mut self.q, 1, what)?;
        match self.status() {
            S_OK => Ok(len),
            s => Err(text!("{}: status {}", what, s)),
        }
    }

    /// Waits for a request that may fail either way: a used entry (its interrupt
    /// consumed) or DEVICE_NEEDS_RESET (its configuration interrupt consumed).
    fn end(&mut self, what: &str) -> Result<End, Text> {
        let clock = self.irqs.clock;
        let (q, dev) = (&self.q, &self.dev);
        ir_common::wait(&clock, REQUEST_TIMEOUT_NS, || {
            q.used_published() != q.used_seen() || dev.status() & S_NEEDS_RESET != 0
        });
        if self.q.used_published() != self.q.used_seen() {
            let (_, len) = self.irqs.complete(&mut self.q, 1, what)?;
            return Ok(End::Used(self.status(), len));
        }
        if self.dev.status() & S_NEEDS_RESET != 0 {
            self.irqs.expect_interrupt(0, what)?;
            return Ok(End::NeedsReset);
        }
        Ok(End::Nothing)
    }

    /// Resets the device and sets it up again.
    fn reopen(&mut self) -> Result<(), Text> {
        self.dev.reset(&self.irqs.clock)?;
        self.q = open(&self.dev, &self.irqs, self.base + RING_AT)?;
        Ok(())
    }

    /// Checks that data page i holds `f(o)` for the request's byte offset o.
    fn expect_data(&self, what: &str, f: impl Fn(u64) -> u8) -> Result<(), Text> {
        for (i, &page) in self.data.iter().enumerate() {
            for o in 0..PAGE_4K {
                let at = i as u64 * PAGE_4K + o;
                let (got, want) = (byte(page, o), f(at));
                if got != want {
                    return Err(text!(
                        "{}: request byte 0x{:x} (IOVA page {}, guest page 0x{:x}) is 0x{:x}, expected 0x{:x}",
                        what,
                        at,
                        i,
                        page,
                        got,
                        want
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that the sentinel pages are untouched.
    fn expect_guards(&self, what: &str) -> Result<(), Text> {
        for &g in &self.guards {
            if !dma_common::holds_value(g, SENTINEL) {
                return Err(text!(
                    "{}: the unmapped page 0x{:x} around the data changed",
                    what,
                    g
                ));
            }
        }
        Ok(())
    }

    /// Reads sectors 0..24 and checks every data page.
    fn read_image_start(&mut self, what: &str) -> Result<(), Text> {
        let len = self.ok(T_IN, 0, what)?;
        if u64::from(len) != DATA_BYTES + 1 {
            return Err(text!(
                "{}: used length {}, expected {}",
                what,
                len,
                DATA_BYTES + 1
            ));
        }
        self.expect_data(what, |o| pattern(o as usize))
    }

    /// The fault records that arrived since `events0` (cleared): on irvmm exactly one with
    /// `reason` at `iova`'s page, direction `read`; elsewhere at least one naming that page.
    fn faults(
        &mut self,
        what: &str,
        events0: u32,
        reason: u8,
        iova: u64,
        read: bool,
    ) -> Result<(), Text> {
        if self.rig.irvmm() {
            self.rig.expect_fault(what, events0, reason, iova, read)?;
            self.records += 1;
            return Ok(());
        }
        self.rig.wait_fault(events0, FAULT_TIMEOUT_NS);
        let n = self.take_records(what);
        if n > 0 {
            return Ok(());
        }
        Err(text!(
            "{}: no fault record for page 0x{:x}",
            what,
            iova & !0xfff
        ))
    }

    /// Takes (clears) and prints the pending fault records; counts those of the device.
    fn take_records(&mut self, what: &str) -> usize {
        let mut records = [FaultRecord {
            slot: 0,
            low: 0,
            high: 0,
        }; MAX_RECORDS];
        let n = self.rig.take_faults(&mut records).min(MAX_RECORDS);
        for r in &records[..n] {
            sprintln!(
                "{}: record fr=0x{:02x} sid=0x{:04x} addr=0x{:x} {}",
                what,
                r.reason(),
                r.sid(),
                r.dma_address(),
                if r.dma_read() { "read" } else { "write" }
            );
        }
        let mine = records[..n]
            .iter()
            .filter(|r| r.sid() == self.rig.sid)
            .count();
        self.records += mine;
        mine
    }
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let dev = Device::find(TYPE_BLOCK)?;
    sprintln!("virtio-blk-iommu: {} found", dev.function);
    let (smp, mut irqs) = virtio_common::setup(ctx, &dev, 2)?;
    let vtd = irqs
        .take_vtd()
        .ok_or_else(|| text!("no DMAR: the scenario needs a VT-d unit (irvmm: --iommu intel)"))?;
    let platform = ir_common::discover(ctx)?;
    let mut rig = dma_common::translate(ctx, "virtio-blk-iommu", smp, platform, vtd, dev.function)?;
    let base = if rig.domain.levels == 4 {
        BASE_48
    } else {
        BASE_39
    };
    // Pages in guest-physical order: sentinel, three data pages, sentinel, header.
    let g0 = rig.page()?;
    let pages = [rig.page()?, rig.page()?, rig.page()?];
    let g1 = rig.page()?;
    let header = rig.page()?;
    let ring = virtio::ring_page(0)?;
    // IOVA data page i → the pages in the order third, first, second.
    let data = [pages[2], pages[0], pages[1]];
    dma_common::fill_with(g0, SENTINEL);
    dma_common::fill_with(g1, SENTINEL);
    let rw = SL_READ | SL_WRITE;
    rig.map(base + RING_AT, ring, PAGE_4K, rw)?;
    for (i, &page) in data.iter().enumerate() {
        rig.map(base + DATA_AT + i as u64 * PAGE_4K, page, PAGE_4K, rw)?;
    }
    rig.map(base + HEADER_AT, header, PAGE_4K, rw)?;
    let q = open(&dev, &irqs, base + RING_AT)?;
    sprintln!(
        "virtio-blk-iommu: ACCESS_PLATFORM on; ring 0x{:x} at IOVA 0x{:x}, data pages 0x{:x} 0x{:x} 0x{:x} at IOVA 0x{:x}, header 0x{:x} at IOVA 0x{:x}",
        ring,
        base + RING_AT,
        data[0],
        data[1],
        data[2],
        base + DATA_AT,
        header,
        base + HEADER_AT
    );
    let mut b = Bench {
        rig,
        irqs,
        dev,
        q,
        base,
        ring,
        header,
        data,
        guards: [g0, g1],
        records: 0,
    };

    // 1. A read across the three pages.
    let events0 = EVENT.total();
    b.read_image_start("read 0..24")?;
    b.rig.expect_no_fault("read 0..24", events0, SETTLE_NS)?;

    // 2. A write, then the pages cleared and read back.
    let first = (WRITE_SECTOR * SECTOR) as usize;
    for (i, &page) in b.data.iter().enumerate() {
        fill_bytes(page, |o| written(first + i * PAGE_4K as usize + o as usize));
    }
    b.ok(T_OUT, WRITE_SECTOR, "write 64..88")?;
    for &page in &b.data {
        dma_common::fill_with(page, 0);
    }
    b.ok(T_IN, WRITE_SECTOR, "read back 64..88")?;
    b.expect_data("read back 64..88", |o| written(first + o as usize))?;
    b.expect_guards("after the writes")?;

    // 3. The second data page unmapped and invalidated.
    let hole = b.base + DATA_AT + PAGE_4K;
    b.rig.unmap(hole, PAGE_4K)?;
    dma_common::fill_with(b.data[1], UNMAPPED_FILL);
    let events0 = EVENT.total();
    b.submit(T_IN, 0);
    let end = b.end("read into an unmapped page")?;
    let unmapped = match end {
        End::Used(S_IOERR, _) => "ioerr",
        End::NeedsReset if !b.rig.irvmm() => "needs_reset",
        // QEMU 7.2 maps the unreachable page to its bounce buffer, drops what would have
        // gone there and reports success.
        End::Used(S_OK, _) if !b.rig.irvmm() => "dropped",
        End::Used(s, len) => {
            return Err(text!(
                "read into an unmapped page: status {} used length {}, expected IOERR",
                s,
                len
            ))
        }
        End::NeedsReset => {
            return Err(text!(
                "read into an unmapped page: DEVICE_NEEDS_RESET, expected IOERR"
            ))
        }
        End::Nothing => {
            return Err(text!(
                "read into an unmapped page: neither completed nor DEVICE_NEEDS_RESET"
            ))
        }
    };
    b.faults("unmapped data page", events0, FR_DMA_WRITE, hole, false)?;
    if !dma_common::holds_value(b.data[1], UNMAPPED_FILL) {
        return Err(text!("the unmapped page 0x{:x} changed", b.data[1]));
    }
    b.expect_guards("after the unmapped read")?;
    sprintln!("virtio-blk-iommu: read into an unmapped page: {}", unmapped);
    b.rig.map(hole, b.data[1], PAGE_4K, SL_READ | SL_WRITE)?;
    if end == End::NeedsReset {
        b.reopen()?;
    }
    b.read_image_start("read after remapping")?;

    // 4. The ring page unmapped and invalidated.
    b.rig.unmap(b.base + RING_AT, PAGE_4K)?;
    for &page in &b.data {
        dma_common::fill_with(page, MARKER);
    }
    let events0 = EVENT.total();
    b.submit(T_IN, 0);
    let end = b.end("request on an unmapped ring")?;
    let ring_end = match end {
        End::NeedsReset => "needs_reset",
        _ if b.rig.irvmm() => {
            return Err(text!("request on an unmapped ring: no DEVICE_NEEDS_RESET"))
        }
        End::Used(..) => "served",
        End::Nothing => "stalled",
    };
    sprintln!(
        "virtio-blk-iommu: request on an unmapped ring: {}",
        ring_end
    );
    if b.rig.irvmm() {
        b.faults(
            "unmapped ring",
            events0,
            FR_DMA_READ,
            b.base + RING_AT,
            true,
        )?;
        for &page in &b.data {
            if !dma_common::holds_value(page, MARKER) {
                return Err(text!("a data page changed with the ring unmapped"));
            }
        }
    } else {
        b.rig.wait_fault(events0, SETTLE_NS);
        let n = b.take_records("unmapped ring");
        sprintln!("virtio-blk-iommu: unmapped ring: {} fault records", n);
    }
    b.expect_guards("after the ring fault")?;

    // 5. Mapped again, reset, re-initialised.
    let ring_iova = b.base + RING_AT;
    b.rig.map(ring_iova, b.ring, PAGE_4K, SL_READ | SL_WRITE)?;
    b.reopen()?;
    b.read_image_start("read after reset")?;
    let irq_total = b.irqs.check_all()?;
    irq::stop_tick();
    Ok(text!(
        "levels={} base=0x{:x} read=ok write=ok unmapped={} ring={} recovered=ok faults={} irqs={}",
        b.rig.domain.levels,
        b.base,
        unmapped,
        ring_end,
        b.records,
        irq_total
    ))
}
