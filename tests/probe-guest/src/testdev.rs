//! The project's vfio-user test device (`vfio-user-testdev`, PCI 1234:11ea) as irvmm passes
//! it through: finding it on bus 0 and driving its BAR0 registers.
//!
//! The register map is the contract in `tests/vfio-user-testdev/README.md`. The registers
//! live in memory the device process shares with the VMM: a guest write through a mapped
//! BAR (no VM exit) is noticed by the device's poller (every 50 us by default), a trapped
//! write is acted on before it completes. So every command here is "write, then poll until
//! the device says done" with a deadline, never "done after N instructions".

use crate::clock::Clock;
use crate::mmio::Mmio;
use crate::pci::{self, Function};
use crate::report::Text;
use crate::{text, x86};

/// Vendor ID.
pub const VENDOR_ID: u16 = 0x1234;
/// Device ID.
pub const DEVICE_ID: u16 = 0x11ea;
/// Class code (config 0x09..0x0b): "other" unclassified device.
pub const CLASS: u32 = 0x00ff00;
/// The register BAR.
pub const REGS_BAR: u8 = 0;
/// Size of BAR0.
pub const BAR0_SIZE: u64 = 0x1_0000;

/// Identification (RO).
pub const REG_ID: u64 = 0x000;
/// MSI-X vectors (RO).
pub const REG_VECTORS: u64 = 0x004;
/// Reads back as written (RW).
pub const REG_SCRATCH: u64 = 0x008;
/// Bit 0: direct MSI-X mode (RO).
pub const REG_FLAGS: u64 = 0x00c;
/// Fires MSI-X vectors (see [`DOORBELL_GO`]); the device writes 0 when done.
pub const REG_DOORBELL: u64 = 0x010;
/// MSI-X eventfd signals since reset (RO).
pub const REG_SIGNALS: u64 = 0x014;
/// MSI-X fires dropped (RO).
pub const REG_DROPPED: u64 = 0x018;
/// Direct mode: fires that found their vector masked (RO).
pub const REG_MASKED: u64 = 0x01c;
/// Vector the timer fires (RW, no action).
pub const REG_TIMER_VECTOR: u64 = 0x020;
/// Timer period in microseconds (RW, no action until TIMER_COUNT is written).
pub const REG_TIMER_PERIOD: u64 = 0x024;
/// Bit 0: the INTA level (RW).
pub const REG_INTX: u64 = 0x030;
/// INTx eventfd signals since reset (RO).
pub const REG_INTX_SIGNALS: u64 = 0x034;
/// Bit 31 signals the MSI eventfd once; the device writes 0 when done.
pub const REG_MSI_DOORBELL: u64 = 0x038;
/// DMA source, 64-bit (low dword first).
pub const REG_DMA_SRC: u64 = 0x040;
/// DMA destination, 64-bit (low dword first).
pub const REG_DMA_DST: u64 = 0x048;
/// DMA byte count (at most [`DMA_MAX`]).
pub const REG_DMA_COUNT: u64 = 0x050;
/// DMA command: [`DMA_CMD_START`], [`DMA_CMD_TO_GUEST`], [`DMA_CMD_IRQ`].
pub const REG_DMA_CMD: u64 = 0x054;
/// MSI-X vector fired when a transfer with [`DMA_CMD_IRQ`] ends.
pub const REG_DMA_VECTOR: u64 = 0x058;
/// DMA status (RO): [`DMA_IDLE`], [`DMA_OK`], [`DMA_FAILED`].
pub const REG_DMA_STATUS: u64 = 0x05c;
/// Successful transfers since reset (RO).
pub const REG_DMA_DONE: u64 = 0x060;
/// Write-only: [`CONTROL_EXIT`] ends the device process.
pub const REG_CONTROL: u64 = 0x07c;
/// The device's own MSI-X table (what `msix=direct` programs).
pub const DEVICE_TABLE: u64 = 0x800;
/// The device's own PBA.
pub const DEVICE_PBA: u64 = 0x9000;
/// The DMA buffer in BAR0.
pub const BUFFER: u64 = 0xc000;
/// Size of the DMA buffer.
pub const BUFFER_SIZE: u64 = 0x4000;
/// Device address of the first buffer byte in DMA_SRC/DMA_DST.
pub const BUFFER_DEVICE_ADDR: u64 = 0x4_0000;
/// Largest transfer.
pub const DMA_MAX: u32 = 0x4000;

/// What [`REG_ID`] reads.
pub const ID_VALUE: u32 = 0x7e57_d001;
/// [`REG_FLAGS`] bit 0: the device honours its own MSI-X table (`--direct-msix`).
pub const FLAGS_DIRECT_MSIX: u32 = 1 << 0;
/// [`REG_DOORBELL`] bit 31: fire.
const DOORBELL_GO: u32 = 1 << 31;
/// [`REG_DOORBELL`]: shift of count - 1 (bits 30:16).
const DOORBELL_COUNT_SHIFT: u32 = 16;
/// Most vectors one doorbell fires.
pub const DOORBELL_MAX_COUNT: u16 = 0x8000;
/// [`REG_MSI_DOORBELL`] bit 31: signal.
const MSI_DOORBELL_GO: u32 = 1 << 31;
/// [`REG_INTX`] bit 0: the level.
const INTX_LEVEL: u32 = 1 << 0;
/// [`REG_DMA_CMD`] bit 0: start (the device clears it when the transfer ended).
const DMA_CMD_START: u32 = 1 << 0;
/// [`REG_DMA_CMD`] bit 1: device buffer to guest memory (clear: guest to device).
const DMA_CMD_TO_GUEST: u32 = 1 << 1;
/// [`REG_DMA_CMD`] bit 2: fire DMA_VECTOR when the transfer ends.
const DMA_CMD_IRQ: u32 = 1 << 2;
/// [`REG_DMA_STATUS`]: nothing yet.
pub const DMA_IDLE: u32 = 0;
/// [`REG_DMA_STATUS`]: the last transfer completed.
pub const DMA_OK: u32 = 1;
/// [`REG_DMA_STATUS`]: the last transfer failed and copied nothing.
pub const DMA_FAILED: u32 = 2;
/// [`REG_CONTROL`]: the device process exits at once.
pub const CONTROL_EXIT: u32 = 0xdead_0001;

/// How long the device gets to act on a command (its poller runs every 50 us; the host is
/// shared and slow, so be generous).
pub const COMMAND_TIMEOUT_NS: u64 = 2_000_000_000;

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Guest memory (DMA_SRC) to the device buffer (DMA_DST).
    ToDevice,
    /// The device buffer (DMA_SRC) to guest memory (DMA_DST).
    ToGuest,
}

/// One transfer for [`Testdev::dma`].
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// DMA_SRC.
    pub src: u64,
    /// DMA_DST.
    pub dst: u64,
    /// Bytes.
    pub count: u32,
    /// Which way.
    pub direction: Direction,
    /// MSI-X vector to fire when it ends.
    pub vector: Option<u16>,
}

/// The test device, with memory decoding and bus mastering on.
#[derive(Clone, Copy, Debug)]
pub struct Testdev {
    /// Where it sits (its requester ID is the source-id of its interrupts).
    pub function: Function,
    regs: Mmio,
}

impl Testdev {
    /// Finds the first 1234:11ea function on bus 0 and opens it (see [`Testdev::open`]).
    pub fn find() -> Result<Testdev, Text> {
        let function = pci::find_on_bus0(VENDOR_ID, DEVICE_ID).ok_or_else(|| {
            text!(
                "vfio-user test device ({:04x}:{:04x}) not found on bus 0 (irvmm --device vfio-user,socket=...)",
                VENDOR_ID,
                DEVICE_ID
            )
        })?;
        Testdev::open(function)
    }

    /// Enables memory decoding and bus mastering on `function` (INTx left as it is), and
    /// checks the identification register through BAR0 where it is programmed.
    pub fn open(function: Function) -> Result<Testdev, Text> {
        function.enable_command(pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER);
        let bar = function.memory_bar(REGS_BAR)?;
        let regs = Mmio::new("test device BAR 0", bar, BAR0_SIZE)?;
        let id = regs.read32(REG_ID);
        if id != ID_VALUE {
            return Err(text!(
                "{} BAR0 at 0x{:x}: ID reads 0x{:08x}, expected 0x{:08x}",
                function,
                bar,
                id,
                ID_VALUE
            ));
        }
        Ok(Testdev { function, regs })
    }

    /// Physical address of BAR0.
    pub fn bar0(&self) -> u64 {
        self.regs.base()
    }

    /// Reads the 32-bit register (or buffer dword) at `offset` in BAR0.
    pub fn read(&self, offset: u64) -> u32 {
        self.regs.read32(offset)
    }

    /// Writes the 32-bit register (or buffer dword) at `offset` in BAR0.
    pub fn write(&self, offset: u64, value: u32) {
        self.regs.write32(offset, value)
    }

    /// Writes a 64-bit register as two dwords, low first.
    fn write_pair(&self, offset: u64, value: u64) {
        self.regs.write32(offset, value as u32);
        self.regs.write32(offset + 4, (value >> 32) as u32);
    }

    /// Polls register `offset` until `done(value)` or [`COMMAND_TIMEOUT_NS`]; returns the
    /// last value read and whether `done` held.
    pub fn poll(
        &self,
        clock: &Clock,
        offset: u64,
        mut done: impl FnMut(u32) -> bool,
    ) -> (u32, bool) {
        let deadline = clock.now_ns() + COMMAND_TIMEOUT_NS;
        loop {
            let value = self.read(offset);
            if done(value) {
                return (value, true);
            }
            if clock.now_ns() >= deadline {
                return (value, false);
            }
            x86::pause();
        }
    }

    /// Fires MSI-X vectors `first .. first + count` (one each, in order) and waits until
    /// the device has (the doorbell reads 0 again). The interrupts themselves arrive later.
    pub fn ring(&self, clock: &Clock, first: u16, count: u16) -> Result<(), Text> {
        if count == 0 || count > DOORBELL_MAX_COUNT {
            return Err(text!("doorbell for {} vectors", count));
        }
        let value = DOORBELL_GO | (u32::from(count - 1) << DOORBELL_COUNT_SHIFT) | u32::from(first);
        self.write(REG_DOORBELL, value);
        let (last, done) = self.poll(clock, REG_DOORBELL, |v| v == 0);
        if !done {
            return Err(text!(
                "doorbell 0x{:08x} still reads 0x{:08x} after {} ms",
                value,
                last,
                COMMAND_TIMEOUT_NS / 1_000_000
            ));
        }
        Ok(())
    }

    /// Sets the INTA level.
    pub fn set_intx(&self, asserted: bool) {
        self.write(REG_INTX, if asserted { INTX_LEVEL } else { 0 });
    }

    /// Starts `t` and waits until the device clears the start bit; returns DMA_STATUS.
    pub fn dma(&self, clock: &Clock, t: Transfer) -> Result<u32, Text> {
        self.write_pair(REG_DMA_SRC, t.src);
        self.write_pair(REG_DMA_DST, t.dst);
        self.write(REG_DMA_COUNT, t.count);
        let mut cmd = DMA_CMD_START;
        if t.direction == Direction::ToGuest {
            cmd |= DMA_CMD_TO_GUEST;
        }
        if let Some(v) = t.vector {
            self.write(REG_DMA_VECTOR, u32::from(v));
            cmd |= DMA_CMD_IRQ;
        }
        self.write(REG_DMA_CMD, cmd);
        let (last, done) = self.poll(clock, REG_DMA_CMD, |v| v & DMA_CMD_START == 0);
        if !done {
            return Err(text!(
                "DMA 0x{:x} -> 0x{:x} ({} bytes): DMA_CMD still 0x{:x} after {} ms",
                t.src,
                t.dst,
                t.count,
                last,
                COMMAND_TIMEOUT_NS / 1_000_000
            ));
        }
        Ok(self.read(REG_DMA_STATUS))
    }

    /// Device address of buffer byte `offset`.
    pub fn buffer_device_addr(offset: u64) -> u64 {
        BUFFER_DEVICE_ADDR + offset
    }

    /// Ends the device process (CONTROL = [`CONTROL_EXIT`]): a server that dies mid-run.
    pub fn kill_server(&self) {
        self.write(REG_CONTROL, CONTROL_EXIT);
    }
}

/// A posted-write flush for a device whose registers are mapped: makes sure the device has
/// acted on every register write made before it, by asking for an MSI (MSI_DOORBELL) and
/// waiting until the device's poller clears it. The poller services every register in the
/// same pass and holds the device while it does, so anything else the VMM asks of the
/// device (an INTx unmask after an EOI) is handled after the earlier writes. With MSI off
/// the device has no MSI eventfd and sends nothing. Usable in interrupt handlers: it needs
/// no clock and gives up after `spins` polls; returns whether the device answered.
pub fn flush_posted_writes(bar0: u64, spins: u32) -> bool {
    let Ok(regs) = Mmio::new("test device BAR 0", bar0, BAR0_SIZE) else {
        return false;
    };
    regs.write32(REG_MSI_DOORBELL, MSI_DOORBELL_GO);
    for _ in 0..spins {
        if regs.read32(REG_MSI_DOORBELL) == 0 {
            return true;
        }
        x86::pause();
    }
    false
}
