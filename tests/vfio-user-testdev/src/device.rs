//! The device model: regions, BAR0 register semantics, interrupts, DMA, timer and reset.
//!
//! BAR0's registers live in shared memory the guest may write directly, so the model works
//! by inspection: [`Device::service`] looks at the trigger registers, acts on what it finds,
//! clears the request bits and rewrites the read-only registers from its own state. Region
//! writes store their bytes and call it at once; the server's poller calls it periodically
//! for writes that went straight to the mapping. Nothing here touches the socket.

use std::fs::File;
use std::os::fd::RawFd;
use std::time::Instant;

use thiserror::Error;

use crate::bar::{BarError, SharedBar};
use crate::config::{ConfigOutOfRange, ConfigSpace, CONFIG_SIZE, ROM_SIZE};
use crate::dma::{DmaError, DmaSpace};
use crate::irq::{self, decode_set_irqs, Intx, IrqError, IrqRequest};
use crate::msix::{Fire, Msix};
use crate::options::DeviceOptions;
use crate::regs::*;
use crate::timer::Timer;

#[cfg(test)]
mod tests;

/// Region index of BAR0.
pub const REGION_BAR0: u32 = 0;
/// Region index of the expansion ROM.
pub const REGION_ROM: u32 = 6;
/// Region index of the configuration space.
pub const REGION_CONFIG: u32 = 7;
/// Number of regions (BAR0..BAR5, ROM, config, VGA).
pub const NUM_REGIONS: u32 = 9;

/// ROM signature bytes at offset 0.
pub const ROM_SIGNATURE: [u8; 2] = [0x55, 0xaa];
/// Offset of the ROM's ID string.
pub const ROM_STRING_OFFSET: usize = 0x10;
/// The ROM's ID string.
pub const ROM_STRING: &[u8] = b"IRVMM-TESTDEV-ROM";

/// Most timer fires done in one [`Device::service`] call, so a back-to-back timer cannot
/// hold the device lock for long.
const TIMER_BATCH: u32 = 1024;

/// Size of region `index`, or `None` if there is no such region.
pub fn region_size(index: u32) -> Option<u64> {
    match index {
        REGION_BAR0 => Some(BAR0_SIZE as u64),
        1..=5 | 8 => Some(0),
        REGION_ROM => Some(ROM_SIZE as u64),
        REGION_CONFIG => Some(CONFIG_SIZE as u64),
        _ => None,
    }
}

/// A request the model refused, answered with an error reply.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// No such region.
    #[error("region {0} does not exist")]
    NoRegion(u32),
    /// The access runs outside the region.
    #[error("region {region}: {len} bytes at offset {offset:#x} are outside its {size:#x} bytes")]
    OutOfRange {
        /// The region.
        region: u32,
        /// First byte.
        offset: u64,
        /// Length.
        len: usize,
        /// Size of the region.
        size: u64,
    },
    /// A write to a read-only region.
    #[error("region {0} is read-only")]
    ReadOnly(u32),
    /// A refused SET_IRQS.
    #[error("SET_IRQS: {0}")]
    Irq(#[from] IrqError),
    /// A refused DMA_MAP or DMA_UNMAP.
    #[error("DMA: {0}")]
    Dma(#[from] DmaError),
    /// The BAR memory could not be created.
    #[error(transparent)]
    Bar(#[from] BarError),
}

/// A failure-injection request written to CONTROL, for the server glue to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Exit the process at once.
    Exit,
    /// Stop answering the socket forever.
    Hang,
}

#[derive(Debug)]
struct Counters {
    signals: u32,
    dropped: u32,
    masked: u32,
    timer_fired: u32,
    intx_signals: u32,
    msi_signals: u32,
    dma_status: u32,
    dma_done: u32,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            signals: 0,
            dropped: 0,
            masked: 0,
            timer_fired: 0,
            intx_signals: 0,
            msi_signals: 0,
            dma_status: DMA_STATUS_IDLE,
            dma_done: 0,
        }
    }
}

/// The whole device.
pub struct Device {
    options: DeviceOptions,
    bar: SharedBar,
    config: ConfigSpace,
    dma: DmaSpace,
    msix: Msix,
    intx: Intx,
    msi_fd: Option<File>,
    timer: Timer,
    counters: Counters,
    control: Option<Control>,
}

fn overlaps(offset: u64, len: usize, reg: usize, reg_len: usize) -> bool {
    let (start, end) = (offset, offset.saturating_add(len as u64));
    start < (reg + reg_len) as u64 && (reg as u64) < end
}

impl Device {
    /// A device in its reset state, with its BAR memory freshly created.
    pub fn new(options: DeviceOptions) -> Result<Device, DeviceError> {
        let mut device = Device {
            options,
            bar: SharedBar::new(BAR0_SIZE)?,
            config: ConfigSpace::new(&options),
            dma: DmaSpace::default(),
            msix: Msix::new(&options),
            intx: Intx::default(),
            msi_fd: None,
            timer: Timer::default(),
            counters: Counters::default(),
            control: None,
        };
        device.reset();
        Ok(device)
    }

    /// The memfd behind BAR0, offered to the client for mmap.
    pub fn bar_fd(&self) -> Option<RawFd> {
        self.bar.raw_fd()
    }

    /// When the timer next needs [`Device::service`], if it is running.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timer.next_deadline()
    }

    /// Takes the failure-injection request the guest wrote, if any.
    pub fn take_control(&mut self) -> Option<Control> {
        self.control.take()
    }

    fn out_of_range(region: u32, offset: u64, len: usize) -> DeviceError {
        DeviceError::OutOfRange {
            region,
            offset,
            len,
            size: region_size(region).unwrap_or(0),
        }
    }

    /// Serves a REGION_READ.
    pub fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        buf: &mut [u8],
        now: Instant,
    ) -> Result<(), DeviceError> {
        let len = buf.len();
        let oor = || Self::out_of_range(region, offset, len);
        match region {
            REGION_BAR0 => {
                self.service(now);
                self.bar.read(offset, buf).map_err(|_| oor())
            }
            REGION_ROM => read_rom(offset, buf).ok_or_else(oor),
            REGION_CONFIG => self
                .config
                .read(offset, buf)
                .map_err(|ConfigOutOfRange { .. }| oor()),
            _ => Self::empty_region(region, offset, len),
        }
    }

    /// Serves a REGION_WRITE; BAR0 writes take effect before this returns.
    pub fn region_write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
        now: Instant,
    ) -> Result<(), DeviceError> {
        match region {
            REGION_BAR0 => {
                self.bar
                    .write(offset, data)
                    .map_err(|_| Self::out_of_range(region, offset, data.len()))?;
                // A write names its register even when it stores the value already there.
                if overlaps(offset, data.len(), TIMER_COUNT, 4) {
                    self.start_timer(now);
                }
                self.service(now);
                Ok(())
            }
            REGION_ROM => Err(DeviceError::ReadOnly(region)),
            REGION_CONFIG => {
                self.config
                    .write(offset, data)
                    .map_err(|_| Self::out_of_range(region, offset, data.len()))?;
                // Clearing the function mask or setting enable may release pending vectors.
                self.service(now);
                Ok(())
            }
            _ => Self::empty_region(region, offset, data.len()),
        }
    }

    fn empty_region(region: u32, offset: u64, len: usize) -> Result<(), DeviceError> {
        match region_size(region) {
            None => Err(DeviceError::NoRegion(region)),
            Some(_) if len == 0 => Ok(()),
            Some(_) => Err(Self::out_of_range(region, offset, len)),
        }
    }

    /// Serves a DMA_MAP.
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        fd: Option<File>,
        offset: u64,
        readable: bool,
        writable: bool,
    ) -> Result<(), DeviceError> {
        Ok(self.dma.map(iova, size, fd, offset, readable, writable)?)
    }

    /// Serves a DMA_UNMAP.
    pub fn dma_unmap(
        &mut self,
        iova: u64,
        size: u64,
        all: bool,
        dirty: bool,
    ) -> Result<(), DeviceError> {
        Ok(self.dma.unmap(iova, size, all, dirty)?)
    }

    /// Serves a SET_IRQS.
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> Result<(), DeviceError> {
        match decode_set_irqs(index, flags, start, count, fds, self.options.vectors)? {
            IrqRequest::SetEventfds { index, start, fds } => match index {
                irq::INTX => self.intx.set_fd(fds.into_iter().next()),
                irq::MSI => self.msi_fd = fds.into_iter().next(),
                irq::MSIX => self.msix.set_fds(start, fds),
                _ => {}
            },
            IrqRequest::Disable { index } => match index {
                irq::INTX => self.intx.set_fd(None),
                irq::MSI => self.msi_fd = None,
                irq::MSIX => self.msix.disable(),
                _ => {}
            },
            IrqRequest::MaskIntx => self.intx.mask(),
            IrqRequest::UnmaskIntx => {
                if self.intx.unmask() {
                    self.counters.intx_signals = self.counters.intx_signals.wrapping_add(1);
                }
                self.restore_read_only();
            }
        }
        Ok(())
    }

    /// DEVICE_RESET: registers, counters, buffer, table (masked, zero messages) and PBA are
    /// cleared, INTx is deasserted and unmasked, the timer stops. Eventfds, DMA mappings and
    /// config space stay.
    pub fn reset(&mut self) {
        self.bar.clear();
        self.msix.reset(&self.bar);
        self.intx.reset();
        self.timer = Timer::default();
        self.counters = Counters::default();
        self.restore_read_only();
    }

    /// Acts on everything the guest has written to BAR0 since the last call, runs the timer
    /// up to `now`, delivers unmasked pending vectors and restores the read-only registers.
    pub fn service(&mut self, now: Instant) {
        self.check_control();
        self.check_dma();
        self.check_doorbell();
        self.check_msi_doorbell();
        self.check_intx();
        if self.bar.reg(TIMER_COUNT) != self.timer.remaining() {
            self.start_timer(now);
        }
        self.run_timer(now);
        for fire in self.msix.deliver_pending(&self.bar, &self.config) {
            self.count(fire);
        }
        self.restore_read_only();
    }

    /// The value read-only register `reg` must hold.
    fn read_only_value(&self, reg: usize) -> u32 {
        let c = &self.counters;
        match reg {
            ID => ID_VALUE,
            VECTORS => self.options.vectors,
            FLAGS if self.options.direct_msix => FLAGS_DIRECT_MSIX,
            SIGNALS => c.signals,
            DROPPED => c.dropped,
            MASKED => c.masked,
            TIMER_FIRED => c.timer_fired,
            INTX_SIGNALS => c.intx_signals,
            MSI_SIGNALS => c.msi_signals,
            DMA_STATUS => c.dma_status,
            DMA_DONE => c.dma_done,
            _ => 0,
        }
    }

    fn restore_read_only(&self) {
        for reg in READ_ONLY {
            let value = self.read_only_value(reg);
            if self.bar.reg(reg) != value {
                self.bar.store32(reg, value);
            }
        }
    }

    fn count(&mut self, fire: Fire) {
        let c = &mut self.counters;
        let counter = match fire {
            Fire::Signalled => &mut c.signals,
            Fire::Dropped => &mut c.dropped,
            Fire::Masked => &mut c.masked,
        };
        *counter = counter.wrapping_add(1);
    }

    fn fire_msix(&mut self, vector: u32) {
        let fire = self.msix.fire(&self.bar, &self.config, vector);
        self.count(fire);
    }

    fn check_control(&mut self) {
        let value = self.bar.reg(CONTROL);
        if value == 0 {
            return;
        }
        match value {
            CONTROL_EXIT => self.control = Some(Control::Exit),
            CONTROL_HANG => self.control = Some(Control::Hang),
            _ => {}
        }
        self.bar.cas32(CONTROL, value, 0);
    }

    fn check_doorbell(&mut self) {
        let value = self.bar.reg(DOORBELL);
        if value & DOORBELL_GO == 0 {
            return;
        }
        let first = value & DOORBELL_FIRST_MASK;
        let count = ((value >> DOORBELL_COUNT_SHIFT) & DOORBELL_COUNT_MASK) + 1;
        for vector in first..first + count {
            self.fire_msix(vector);
        }
        // Counters first, so a guest that sees the doorbell clear sees them updated.
        self.restore_read_only();
        self.bar.cas32(DOORBELL, value, 0);
    }

    fn check_msi_doorbell(&mut self) {
        let value = self.bar.reg(MSI_DOORBELL);
        if value & MSI_DOORBELL_GO == 0 {
            return;
        }
        if let Some(fd) = &self.msi_fd {
            match irq::signal(fd) {
                Ok(()) => self.counters.msi_signals = self.counters.msi_signals.wrapping_add(1),
                Err(e) => log::warn!("signalling the MSI eventfd: {e}"),
            }
        }
        self.restore_read_only();
        self.bar.cas32(MSI_DOORBELL, value, 0);
    }

    fn check_intx(&mut self) {
        let value = self.bar.reg(INTX);
        let level = value & INTX_LEVEL != 0;
        if level != self.intx.level() && self.intx.set_level(level) {
            self.counters.intx_signals = self.counters.intx_signals.wrapping_add(1);
        }
        if value != u32::from(level) {
            self.bar.cas32(INTX, value, u32::from(level));
        }
    }

    fn start_timer(&mut self, now: Instant) {
        let count = self.bar.reg(TIMER_COUNT);
        let vector = self.bar.reg(TIMER_VECTOR);
        let period = self.bar.reg(TIMER_PERIOD);
        self.timer.start(count, vector, period, now);
    }

    fn run_timer(&mut self, now: Instant) {
        let before = self.timer.remaining();
        let mut fired = 0;
        while fired < TIMER_BATCH {
            let Some(vector) = self.timer.take_due(now) else {
                break;
            };
            fired += 1;
            self.counters.timer_fired = self.counters.timer_fired.wrapping_add(1);
            self.fire_msix(vector);
        }
        if fired > 0 {
            self.restore_read_only();
            // If the guest rewrote TIMER_COUNT meanwhile, the next service restarts with it.
            self.bar.cas32(TIMER_COUNT, before, self.timer.remaining());
        }
    }

    fn check_dma(&mut self) {
        let cmd = self.bar.reg(DMA_CMD);
        if cmd & DMA_CMD_START == 0 {
            return;
        }
        match self.transfer(cmd) {
            Ok(()) => {
                self.counters.dma_status = DMA_STATUS_DONE;
                self.counters.dma_done = self.counters.dma_done.wrapping_add(1);
            }
            Err(e) => {
                log::debug!("DMA transfer failed: {e}");
                self.counters.dma_status = DMA_STATUS_FAILED;
            }
        }
        self.restore_read_only();
        self.bar.cas32(DMA_CMD, cmd, cmd & !DMA_CMD_START);
        if cmd & DMA_CMD_IRQ != 0 {
            self.fire_msix(self.bar.reg(DMA_VECTOR));
        }
    }

    fn reg64(&self, offset: usize) -> u64 {
        u64::from(self.bar.reg(offset)) | (u64::from(self.bar.reg(offset + 4)) << 32)
    }

    fn transfer(&self, cmd: u32) -> Result<(), TransferError> {
        let count = self.bar.reg(DMA_COUNT);
        if count > DMA_MAX_COUNT {
            return Err(TransferError::TooLong(count));
        }
        let (src, dst) = (self.reg64(DMA_SRC), self.reg64(DMA_DST));
        let mut data = vec![0u8; count as usize];
        if cmd & DMA_CMD_TO_GUEST == 0 {
            let at = buffer_offset(dst, count)?;
            self.dma.read(src, &mut data)?;
            self.bar
                .write(at, &data)
                .map_err(|_| TransferError::Buffer(dst))
        } else {
            let at = buffer_offset(src, count)?;
            self.bar
                .read(at, &mut data)
                .map_err(|_| TransferError::Buffer(src))?;
            Ok(self.dma.write(dst, &data)?)
        }
    }
}

/// Why a DMA transfer failed (reported to the guest only as DMA_STATUS 2).
#[derive(Debug, Error)]
enum TransferError {
    #[error("count {0:#x} exceeds the buffer")]
    TooLong(u32),
    #[error("device address {0:#x} does not name a range inside the DMA buffer")]
    Buffer(u64),
    #[error(transparent)]
    Guest(#[from] DmaError),
}

/// BAR offset of `count` bytes of the DMA buffer at device address `addr`.
fn buffer_offset(addr: u64, count: u32) -> Result<u64, TransferError> {
    let start = addr
        .checked_sub(DMA_BUFFER_DEVICE_ADDR)
        .filter(|start| start + u64::from(count) <= DMA_BUFFER_SIZE as u64)
        .ok_or(TransferError::Buffer(addr))?;
    Ok(DMA_BUFFER_OFFSET as u64 + start)
}

/// Copies ROM bytes at `offset` into `buf`; `None` if the range leaves the ROM.
fn read_rom(offset: u64, buf: &mut [u8]) -> Option<()> {
    let start = usize::try_from(offset).ok()?;
    if start.checked_add(buf.len())? > ROM_SIZE {
        return None;
    }
    for (i, byte) in buf.iter_mut().enumerate() {
        let at = start + i;
        *byte = if at < ROM_STRING_OFFSET {
            ROM_SIGNATURE.get(at).copied().unwrap_or(0)
        } else {
            ROM_STRING.get(at - ROM_STRING_OFFSET).copied().unwrap_or(0)
        };
    }
    Some(())
}
