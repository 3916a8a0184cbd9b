//! virtio-blk requests: a 16-byte header (type, reserved, sector) in the readable part of
//! the chain, data (readable for writes, writable for reads), and a status byte, the last
//! writable byte. Framing is free: the header and data may span descriptors.
//!
//! | chain | result |
//! |---|---|
//! | no writable byte for the status | nothing can be reported: used length 0 |
//! | fewer than 16 readable bytes | `IOERR` |
//! | data not a multiple of 512, past the end of the image, or a buffer outside RAM | `IOERR` |
//! | write, discard or write-zeroes on a read-only image | `IOERR` |
//! | discard/write-zeroes with more than 32 segments, unknown flags, or not 16-byte segments | `UNSUPP` / `IOERR` |
//! | a type the device does not know | `UNSUPP` |
//! | an I/O error of the image | `IOERR` (logged once per kind) |
//!
//! The used length is the number of bytes written into the chain: data and status.

use log::{debug, warn};
use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestMemory};

use super::image::{Bounce, DiskImage, BOUNCE_SIZE};
use super::{MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, SERIAL_LEN};
use crate::segments::{Cursor, Segments};
use crate::spec::{SECTOR_SHIFT, SECTOR_SIZE};
use crate::worker::{drain_queue, Activation, DeviceError, QueueHandler};

/// Size of the request header.
pub const HEADER_SIZE: usize = 16;
/// Size of one discard / write-zeroes segment.
pub const DISCARD_SEGMENT_SIZE: usize = 16;

/// Status byte values.
const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Requests served, by outcome (for tests and the exit log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Completed with `OK`.
    pub ok: u64,
    /// Completed with `IOERR`.
    pub ioerr: u64,
    /// Completed with `UNSUPP`.
    pub unsupp: u64,
    /// Chains without a status byte.
    pub dropped: u64,
}

/// The virtio-blk device's I/O side.
pub struct BlockHandler {
    name: String,
    image: DiskImage,
    serial: [u8; SERIAL_LEN],
    bounce: Bounce,
    stats: BlockStats,
    io_errors_logged: bool,
}

/// Why a request failed.
enum Fail {
    IoErr(&'static str),
    Unsupp,
}

impl BlockHandler {
    /// A handler serving `image`.
    pub fn new(name: String, image: DiskImage, serial: [u8; SERIAL_LEN]) -> Self {
        BlockHandler {
            name,
            image,
            serial,
            bounce: Bounce::new(),
            stats: BlockStats::default(),
            io_errors_logged: false,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// Serves one chain; returns the used length.
    pub fn execute<M: GuestMemory>(&mut self, mut segs: Segments, mem: &M) -> u32 {
        let Some(status_addr) = segs.pop_last_writable_byte() else {
            debug!("{}: request without a status byte dropped", self.name);
            self.stats.dropped += 1;
            return 0;
        };
        let (status, written) = match self.serve(&segs, mem) {
            Ok(written) => (S_OK, written),
            Err(Fail::IoErr(why)) => {
                debug!("{}: request failed: {why}", self.name);
                (S_IOERR, 0)
            }
            Err(Fail::Unsupp) => (S_UNSUPP, 0),
        };
        match status {
            S_OK => self.stats.ok += 1,
            S_IOERR => self.stats.ioerr += 1,
            _ => self.stats.unsupp += 1,
        }
        if mem.write_obj(status, status_addr).is_err() {
            debug!("{}: status byte outside RAM", self.name);
            self.stats.dropped += 1;
            return u32::try_from(written).unwrap_or(u32::MAX);
        }
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    fn io_error(&mut self, what: &'static str, e: std::io::Error) -> Fail {
        if !self.io_errors_logged {
            warn!("{}: {what} of {} failed: {e} (reported to the guest as IOERR; further errors at debug level)", self.name, self.image.path().display());
            self.io_errors_logged = true;
        } else {
            debug!("{}: {what} failed: {e}", self.name);
        }
        Fail::IoErr(what)
    }

    /// Serves the request; `Ok` carries the data bytes written into the chain.
    fn serve<M: GuestMemory>(&mut self, segs: &Segments, mem: &M) -> Result<u64, Fail> {
        let mut reader = Cursor::new(&segs.readable);
        let mut header = [0u8; HEADER_SIZE];
        match reader.read(mem, &mut header) {
            Ok(HEADER_SIZE) => {}
            Ok(_) => return Err(Fail::IoErr("chain shorter than the request header")),
            Err(_) => return Err(Fail::IoErr("request header outside RAM")),
        }
        let (kind, sector) = parse_header(&header);
        match kind {
            VIRTIO_BLK_T_IN => self.read(sector, segs, mem),
            VIRTIO_BLK_T_OUT => self.write(sector, reader, mem),
            VIRTIO_BLK_T_FLUSH => match self.image.flush() {
                Ok(()) => Ok(0),
                Err(e) => Err(self.io_error("flush", e)),
            },
            VIRTIO_BLK_T_GET_ID => {
                let mut w = Cursor::new(&segs.writable);
                let n = usize::try_from(w.remaining())
                    .unwrap_or(SERIAL_LEN)
                    .min(SERIAL_LEN);
                let src = self.serial.get(..n).unwrap_or_default();
                w.write(mem, src)
                    .map_err(|_| Fail::IoErr("ID buffer outside RAM"))?;
                Ok(n as u64)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                self.discard(kind == VIRTIO_BLK_T_WRITE_ZEROES, reader, mem)
            }
            _ => Err(Fail::Unsupp),
        }
    }

    /// The sector count `bytes` covers, checked against the image.
    fn sectors(&self, sector: u64, bytes: u64) -> Result<u64, Fail> {
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            return Err(Fail::IoErr("data length not a multiple of 512"));
        }
        if !self.image.in_range(sector, bytes >> SECTOR_SHIFT) {
            return Err(Fail::IoErr("past the end of the image"));
        }
        Ok(bytes >> SECTOR_SHIFT)
    }

    fn read<M: GuestMemory>(&mut self, sector: u64, segs: &Segments, mem: &M) -> Result<u64, Fail> {
        let total = segs.writable_len();
        self.sectors(sector, total)?;
        let mut w = Cursor::new(&segs.writable);
        let mut offset = sector << SECTOR_SHIFT;
        while w.remaining() > 0 {
            let n = usize::try_from(w.remaining())
                .unwrap_or(BOUNCE_SIZE)
                .min(BOUNCE_SIZE);
            let buf = self.bounce.get(n);
            if let Err(e) = self.image.read_at(buf, offset) {
                return Err(self.io_error("read", e));
            }
            let buf = self.bounce.get(n);
            w.write(mem, buf)
                .map_err(|_| Fail::IoErr("read buffer outside RAM"))?;
            offset += n as u64;
        }
        Ok(total)
    }

    fn write<M: GuestMemory>(
        &mut self,
        sector: u64,
        mut r: Cursor<'_>,
        mem: &M,
    ) -> Result<u64, Fail> {
        if self.image.readonly() {
            return Err(Fail::IoErr("write to a read-only disk"));
        }
        self.sectors(sector, r.remaining())?;
        let mut offset = sector << SECTOR_SHIFT;
        while r.remaining() > 0 {
            let n = usize::try_from(r.remaining())
                .unwrap_or(BOUNCE_SIZE)
                .min(BOUNCE_SIZE);
            let buf = self.bounce.get(n);
            r.read(mem, buf)
                .map_err(|_| Fail::IoErr("write buffer outside RAM"))?;
            let buf = self.bounce.get(n);
            if let Err(e) = self.image.write_at(buf, offset) {
                return Err(self.io_error("write", e));
            }
            offset += n as u64;
        }
        Ok(0)
    }

    fn discard<M: GuestMemory>(
        &mut self,
        zeroes: bool,
        mut r: Cursor<'_>,
        mem: &M,
    ) -> Result<u64, Fail> {
        if self.image.readonly() {
            return Err(Fail::IoErr("discard or write-zeroes on a read-only disk"));
        }
        let bytes = r.remaining();
        if bytes == 0 || !bytes.is_multiple_of(DISCARD_SEGMENT_SIZE as u64) {
            return Err(Fail::IoErr("discard payload not whole 16-byte segments"));
        }
        if bytes / DISCARD_SEGMENT_SIZE as u64 > u64::from(MAX_DISCARD_SEGMENTS) {
            return Err(Fail::Unsupp);
        }
        let mut segments = Vec::new();
        let mut raw = [0u8; DISCARD_SEGMENT_SIZE];
        while r.remaining() > 0 {
            r.read(mem, &mut raw)
                .map_err(|_| Fail::IoErr("discard segment outside RAM"))?;
            segments.push(parse_discard(&raw));
        }
        for (sector, count, flags) in segments {
            let allowed = if zeroes {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            } else {
                0
            };
            if flags & !allowed != 0 {
                return Err(Fail::Unsupp);
            }
            if count > MAX_DISCARD_SECTORS || !self.image.in_range(sector, u64::from(count)) {
                return Err(Fail::IoErr("discard segment past the end or too large"));
            }
            let (offset, len) = (sector << SECTOR_SHIFT, u64::from(count) << SECTOR_SHIFT);
            let done = if zeroes {
                let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
                self.image
                    .write_zeroes(offset, len, unmap, &mut self.bounce)
            } else {
                self.image.discard(offset, len)
            };
            if let Err(e) = done {
                return Err(self.io_error(if zeroes { "write-zeroes" } else { "discard" }, e));
            }
        }
        Ok(0)
    }
}

/// Type and sector of a request header.
pub fn parse_header(h: &[u8; HEADER_SIZE]) -> (u32, u64) {
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    (kind, sector)
}

/// Sector, count and flags of a discard / write-zeroes segment.
pub fn parse_discard(s: &[u8; DISCARD_SEGMENT_SIZE]) -> (u64, u32, u32) {
    let sector = u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
    let count = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let flags = u32::from_le_bytes([s[12], s[13], s[14], s[15]]);
    (sector, count, flags)
}

impl QueueHandler for BlockHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn process_queue(
        &mut self,
        index: usize,
        active: &mut Activation,
    ) -> Result<bool, DeviceError> {
        let (used, more) = drain_queue(index, active, |segs, mem| self.execute(segs, mem))?;
        if used {
            active.notify(index);
        }
        Ok(more)
    }
}
