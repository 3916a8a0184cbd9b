//! QEMU's `edu` test device (1234:11e8, `docs/specs/edu.rst`) and irvmm's MSI-X variant
//! (1234:11e9): finding it on bus 0, checking its registers answer, and making it interrupt.
//!
//! The interrupt registers: writing the raise register makes the device send its MSI (one
//! message per write), the MSI-X variant's register 0x68 sends MSI-X vector N. The DMA
//! engine ([`Edu::dma`]): source, destination, count, command (start, direction, interrupt
//! 0x100 when done), copying between guest memory (I/O virtual addresses, through the
//! platform's IOMMU) and a 4 KiB buffer at device address 0x40000.
//! A device sends nothing unless Bus Master Enable is set, which [`Edu::open`] (and so
//! [`Edu::find`]) does.

use crate::mmio::Mmio;
use crate::pci::{self, Function};
use crate::report::Text;
use crate::text;

/// Vendor ID of both devices.
pub const VENDOR_ID: u16 = 0x1234;
/// Device ID of QEMU's edu device (MSI).
pub const EDU_DEVICE_ID: u16 = 0x11e8;
/// Device ID of irvmm's MSI-X variant.
pub const EDU_MSIX_DEVICE_ID: u16 = 0x11e9;

/// The BAR holding the registers.
const REGS_BAR: u8 = 0;
/// Bytes of the register BAR the probe touches (the BAR itself is 1 MiB).
const REGS_WINDOW: u64 = 0x100;
/// Identification register: 0xRRrr00ed.
const REG_ID: u64 = 0x00;
/// Liveness register: reads back the inverse of the last value written.
const REG_LIVENESS: u64 = 0x04;
/// Interrupt status register.
const REG_IRQ_STATUS: u64 = 0x24;
/// Interrupt raise register: ORs the value into the status and sends the interrupt.
const REG_IRQ_RAISE: u64 = 0x60;
/// Interrupt acknowledge register: clears the value's bits in the status.
const REG_IRQ_ACK: u64 = 0x64;
/// MSI-X variant: writing N sends MSI-X vector N.
const REG_MSIX_RAISE: u64 = 0x68;
/// Low byte of the identification register.
const ID_MAGIC: u32 = 0xed;
/// Mask of the identification register's magic byte.
const ID_MAGIC_MASK: u32 = 0xff;
/// DMA source, destination, count and command registers (64-bit).
const REG_DMA_SRC: u64 = 0x80;
const REG_DMA_DST: u64 = 0x88;
const REG_DMA_COUNT: u64 = 0x90;
const REG_DMA_CMD: u64 = 0x98;
/// DMA command bits: start (clears when done), direction (set: buffer -> memory),
/// interrupt when done.
const DMA_CMD_START: u64 = 1 << 0;
const DMA_CMD_TO_MEMORY: u64 = 1 << 1;
const DMA_CMD_IRQ: u64 = 1 << 2;
/// The interrupt status bit a finished DMA raises.
pub const DMA_IRQ: u32 = 0x100;
/// Device address of the DMA buffer (4 KiB).
pub const DMA_BUFFER: u64 = 0x4_0000;

/// Which way an edu DMA copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaDirection {
    /// Guest memory (at an I/O virtual address) into the device buffer.
    ToDevice,
    /// The device buffer into guest memory.
    ToMemory,
}

/// Value written to the liveness register to check that BAR 0 reaches the device.
const LIVENESS_PATTERN: u32 = 0x5a5a_0f0f;

/// One edu device.
#[derive(Clone, Copy, Debug)]
pub struct Edu {
    /// Where it sits (its requester ID is the source-id of its interrupts).
    pub function: Function,
    regs: Mmio,
}

impl Edu {
    /// Finds the first `1234:device_id` function on bus 0 and opens it (see [`Edu::open`]).
    pub fn find(device_id: u16) -> Result<Edu, Text> {
        let function = pci::find_on_bus0(VENDOR_ID, device_id).ok_or_else(|| {
            text!(
                "{} device ({:04x}:{:04x}) not found on bus 0",
                if device_id == EDU_MSIX_DEVICE_ID {
                    "edu-msix"
                } else {
                    "edu"
                },
                VENDOR_ID,
                device_id
            )
        })?;
        Edu::open(function)
    }

    /// Enables memory decoding and bus mastering (INTx off) on `function`, which must be an
    /// edu device, and checks that its registers answer through BAR 0.
    pub fn open(function: Function) -> Result<Edu, Text> {
        function.enable_command(
            pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER | pci::COMMAND_INTX_DISABLE,
        );
        let bar = function.memory_bar(REGS_BAR)?;
        let regs = Mmio::new("edu BAR 0", bar, REGS_WINDOW)?;
        let id = regs.read32(REG_ID);
        if id & ID_MAGIC_MASK != ID_MAGIC {
            return Err(text!(
                "{} at BAR 0x{:x}: identification 0x{:08x} is not edu's",
                function,
                bar,
                id
            ));
        }
        regs.write32(REG_LIVENESS, LIVENESS_PATTERN);
        let back = regs.read32(REG_LIVENESS);
        if back != !LIVENESS_PATTERN {
            return Err(text!(
                "{} liveness register reads 0x{:08x} after writing 0x{:08x}",
                function,
                back,
                LIVENESS_PATTERN
            ));
        }
        Ok(Edu { function, regs })
    }

    /// Physical address of BAR 0.
    pub fn bar0(&self) -> u64 {
        self.regs.base()
    }

    /// Sets `bits` in the interrupt status, which sends the device's MSI once.
    pub fn raise(&self, bits: u32) {
        self.regs.write32(REG_IRQ_RAISE, bits);
    }

    /// Clears `bits` in the interrupt status.
    pub fn ack(&self, bits: u32) {
        self.regs.write32(REG_IRQ_ACK, bits);
    }

    /// The interrupt status.
    pub fn status(&self) -> u32 {
        self.regs.read32(REG_IRQ_STATUS)
    }

    /// MSI-X variant: sends MSI-X vector `vector`.
    pub fn trigger_msix(&self, vector: u16) {
        self.regs.write32(REG_MSIX_RAISE, u32::from(vector));
    }

    /// Starts a DMA of `count` bytes between I/O virtual address `iova` and the device
    /// buffer at `offset`, raising [`DMA_IRQ`] when done if `irq`; returns at once (see
    /// [`Edu::dma_busy`]). irvmm finishes during the command write, QEMU 100 ms later.
    pub fn start_dma(
        &self,
        direction: DmaDirection,
        iova: u64,
        offset: u64,
        count: u64,
        irq: bool,
    ) {
        let buffer = DMA_BUFFER + offset;
        let (src, dst, dir) = match direction {
            DmaDirection::ToDevice => (iova, buffer, 0),
            DmaDirection::ToMemory => (buffer, iova, DMA_CMD_TO_MEMORY),
        };
        self.regs.write64(REG_DMA_SRC, src);
        self.regs.write64(REG_DMA_DST, dst);
        self.regs.write64(REG_DMA_COUNT, count);
        let irq = if irq { DMA_CMD_IRQ } else { 0 };
        self.regs.write64(REG_DMA_CMD, DMA_CMD_START | dir | irq);
    }

    /// True while the last DMA is still running.
    pub fn dma_busy(&self) -> bool {
        self.regs.read64(REG_DMA_CMD) & DMA_CMD_START != 0
    }

    /// Runs a DMA (see [`Edu::start_dma`]) and waits until it is done, at most
    /// `timeout_ns`; fails on the time-out. A DMA the IOMMU refused is done too: it moved
    /// nothing.
    pub fn dma(
        &self,
        clock: &crate::clock::Clock,
        direction: DmaDirection,
        iova: u64,
        offset: u64,
        count: u64,
        timeout_ns: u64,
    ) -> Result<(), Text> {
        self.start_dma(direction, iova, offset, count, false);
        let deadline = clock.now_ns() + timeout_ns;
        while self.dma_busy() {
            if clock.now_ns() >= deadline {
                return Err(text!(
                    "{} DMA {:?} at IOVA 0x{:x} ({} bytes) still running after {} ms",
                    self.function,
                    direction,
                    iova,
                    count,
                    timeout_ns / 1_000_000
                ));
            }
            crate::x86::pause();
        }
        Ok(())
    }
}
