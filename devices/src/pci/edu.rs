//! The test PCI device: QEMU's educational `edu` device, and an MSI-X variant.
//!
//! Written from the public description in QEMU's `docs/specs/edu.rst`, so a guest driver
//! for it runs on both VMMs.
//!
//! # Identity
//!
//! | | `edu` ([`EduDevice::new`]) | `irvmm-edu-msix` ([`EduDevice::new_msix`]) |
//! |---|---|---|
//! | vendor:device | 1234:11e8 | 1234:11e9 |
//! | revision, class | 0x10, 0x00ff (unclassified) | same |
//! | BAR 0 | 1 MiB 32-bit memory: registers | same |
//! | BAR 2 | — | 8 KiB 64-bit memory: MSI-X table at 0x0 (256 × 16 bytes), PBA at 0x1000 |
//! | interrupts | MSI: 1 vector, 64-bit, per-vector masking | MSI-X: 256 vectors |
//!
//! Differences from QEMU's device: no INTx (interrupt pin 0: interrupts need MSI or MSI-X),
//! the MSI capability offers per-vector masking, the factorial and DMA transfers complete
//! synchronously during the register write that starts them (the "computing" status bit
//! and the command register's start bit read 0 at once; QEMU runs a transfer 100 ms after
//! the write), DMA addresses are not masked (QEMU's default `dma_mask` keeps 28 bits; this
//! device behaves like QEMU's with `dma_mask=0xffffffffffffffff`), and a transfer whose
//! device-side range leaves the 4 KiB buffer moves nothing (QEMU aborts).
//!
//! # DMA
//!
//! The DMA engine copies between guest memory, named by I/O virtual addresses that go
//! through the platform's IOMMU ([`DmaSpace`]: identity without one), and a 4 KiB buffer at
//! device address [`EDU_DMA_BUFFER_ADDR`]. Software writes the source (0x80), destination
//! (0x88) and count (0x90), then the command (0x98) with bit 0 (start), bit 1 (direction:
//! 0 guest memory → buffer, 1 buffer → guest memory) and bit 2 (raise interrupt status
//! 0x100 when done). A command written without bit 0 is ignored. The transfer then
//! happens (or not: bus mastering off, an IOMMU fault, which the IOMMU records, or a
//! buffer range outside the buffer move no data, all or nothing) and completes: bit 0
//! clears and the interrupt is raised if asked, as QEMU's device completes a transfer
//! whose memory access failed. Nothing outside the guest's mapping is ever touched.
//!
//! # BAR 0 registers
//!
//! Accesses below 0x80 must be 4 bytes; from 0x80 on, 4 or 8. Other sizes, unaligned or
//! unknown offsets read as all ones and ignore writes (as in QEMU).
//!
//! | off | access | register |
//! |---|---|---|
//! | 0x00 | RO | identification: 0x010000ed (version 1.0) |
//! | 0x04 | RW | liveness check: reads the bitwise inverse of the last value written |
//! | 0x08 | RW | factorial: writing `n` stores `n!` (modulo 2^32) |
//! | 0x20 | RW | status: bit 0 computing (RO, always 0), bit 7 raise interrupt 0x1 after a factorial |
//! | 0x24 | RO | interrupt status |
//! | 0x60 | WO | interrupt raise: ORs the value into interrupt status, then sends an interrupt (vector 0) if the status is nonzero |
//! | 0x64 | WO | interrupt acknowledge: clears the value's bits in interrupt status |
//! | 0x68 | WO | (MSI-X variant) raise vector `N`: writing `N` triggers MSI-X vector `N` (no status change; values ≥ 256 are ignored) |
//! | 0x6c | RO | (MSI-X variant) number of MSI-X vectors (256) |
//! | 0x80, 0x88, 0x90, 0x98 | RW | DMA source, destination, count, command (see "DMA"; a 4-byte write replaces the whole register) |
//!
//! Each interrupt is one message: with MSI, a raise sends vector 0 once (the status stays
//! set until acknowledged, but nothing is re-sent). Interrupts need MSI (or MSI-X) enabled
//! and Bus Master Enable set in the command register; otherwise they are dropped.

use std::sync::Arc;

use log::{debug, warn};

use super::config::{BarKind, BarRegion, ConfigWriteEffect, PciConfigSpace, PciHeader};
use super::msi::MsiCapability;
use super::msix::{MsixCapability, MsixLayout};
use super::{MsiSink, PciError, PciFunction};
use crate::dma::DmaSpace;
use crate::fill_ones;

/// Vendor ID (QEMU's).
pub const EDU_VENDOR_ID: u16 = 0x1234;
/// Device ID of the QEMU-compatible MSI device.
pub const EDU_DEVICE_ID: u16 = 0x11e8;
/// Device ID of the MSI-X variant (`irvmm-edu-msix`).
pub const EDU_MSIX_DEVICE_ID: u16 = 0x11e9;
/// Revision ID.
pub const EDU_REVISION: u8 = 0x10;
/// Class code: base class 0x00, sub-class 0xff (unclassified, "other").
pub const EDU_CLASS_CODE: u32 = 0x00_ff00;
/// Subsystem vendor ID (QEMU's default for its devices).
pub const EDU_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem ID (QEMU's default for its devices).
pub const EDU_SUBSYSTEM_ID: u16 = 0x1100;

/// The register BAR.
pub const EDU_REGS_BAR: u8 = 0;
/// Size of the register BAR.
pub const EDU_REGS_BAR_SIZE: u64 = 1 << 20;
/// The MSI-X variant's table/PBA BAR.
pub const EDU_MSIX_BAR: u8 = 2;
/// Size of the MSI-X BAR.
pub const EDU_MSIX_BAR_SIZE: u64 = 0x2000;
/// Offset of the MSI-X table in its BAR.
pub const EDU_MSIX_TABLE_OFFSET: u32 = 0x0;
/// Offset of the MSI-X PBA in its BAR.
pub const EDU_MSIX_PBA_OFFSET: u32 = 0x1000;
/// Number of MSI-X vectors of the variant.
pub const EDU_MSIX_VECTORS: u16 = 256;
/// Number of MSI vectors of the QEMU-compatible device.
pub const EDU_MSI_VECTORS: u16 = 1;

/// Identification register.
pub const EDU_REG_ID: u64 = 0x00;
/// Liveness check register.
pub const EDU_REG_LIVENESS: u64 = 0x04;
/// Factorial register.
pub const EDU_REG_FACTORIAL: u64 = 0x08;
/// Status register.
pub const EDU_REG_STATUS: u64 = 0x20;
/// Interrupt status register.
pub const EDU_REG_IRQ_STATUS: u64 = 0x24;
/// Interrupt raise register.
pub const EDU_REG_IRQ_RAISE: u64 = 0x60;
/// Interrupt acknowledge register.
pub const EDU_REG_IRQ_ACK: u64 = 0x64;
/// MSI-X variant: raise vector N.
pub const EDU_REG_MSIX_RAISE: u64 = 0x68;
/// MSI-X variant: number of vectors.
pub const EDU_REG_MSIX_VECTORS: u64 = 0x6c;
/// DMA source address register.
pub const EDU_REG_DMA_SRC: u64 = 0x80;
/// DMA destination address register.
pub const EDU_REG_DMA_DST: u64 = 0x88;
/// DMA transfer count register.
pub const EDU_REG_DMA_COUNT: u64 = 0x90;
/// DMA command register.
pub const EDU_REG_DMA_CMD: u64 = 0x98;
/// DMA command: start transfer (reads 0 once the transfer is done).
pub const EDU_DMA_CMD_START: u64 = 0x1;
/// DMA command: direction, set for buffer → guest memory.
pub const EDU_DMA_CMD_TO_MEMORY: u64 = 0x2;
/// DMA command: raise [`EDU_DMA_IRQ`] when done.
pub const EDU_DMA_CMD_IRQ: u64 = 0x4;
/// The interrupt status value a finished DMA raises.
pub const EDU_DMA_IRQ: u32 = 0x100;
/// Device address of the DMA buffer.
pub const EDU_DMA_BUFFER_ADDR: u64 = 0x4_0000;
/// Size of the DMA buffer.
pub const EDU_DMA_BUFFER_SIZE: usize = 4096;
/// Registers below this offset take 4-byte accesses only; above, 4 or 8.
pub const EDU_WIDE_REGS_START: u64 = 0x80;

/// Identification value: `0xRRrr00ed`, version 1.0.
pub const EDU_ID_VALUE: u32 = 0x0100_00ed;
/// Status: a factorial is being computed (never set here).
pub const EDU_STATUS_COMPUTING: u32 = 0x01;
/// Status: raise an interrupt when a factorial completes.
pub const EDU_STATUS_IRQ_FACTORIAL: u32 = 0x80;
/// The interrupt status value a completed factorial raises.
pub const EDU_FACTORIAL_IRQ: u32 = 0x1;
/// The vector the raise register sends.
pub const EDU_RAISE_VECTOR: u16 = 0;

/// Size of a 4-byte access.
const DWORD: usize = 4;
/// Size of an 8-byte access.
const QWORD: usize = 8;

/// How the device interrupts.
enum EduInterrupt {
    Msi(MsiCapability),
    Msix(MsixCapability),
}

/// QEMU's `edu` device, or its MSI-X variant (see the module documentation).
pub struct EduDevice {
    config: PciConfigSpace,
    irq: EduInterrupt,
    liveness: u32,
    factorial: u32,
    status: u32,
    irq_status: u32,
    dma: EduDma,
}

/// The DMA engine: its registers, its buffer and the device's view of guest memory.
struct EduDma {
    src: u64,
    dst: u64,
    count: u64,
    cmd: u64,
    buffer: Box<[u8; EDU_DMA_BUFFER_SIZE]>,
    space: Option<DmaSpace>,
    /// Transfers that moved data, and those that did not.
    done: u64,
    failed: u64,
    warned: bool,
}

impl EduDma {
    fn new() -> Self {
        EduDma {
            src: 0,
            dst: 0,
            count: 0,
            cmd: 0,
            buffer: Box::new([0; EDU_DMA_BUFFER_SIZE]),
            space: None,
            done: 0,
            failed: 0,
            warned: false,
        }
    }

    /// The buffer range `[addr, addr + count)` names, if it lies inside the buffer.
    fn buffer_range(addr: u64, count: u64) -> Option<std::ops::Range<usize>> {
        let start = addr.checked_sub(EDU_DMA_BUFFER_ADDR)?;
        let end = start.checked_add(count)?;
        if end > EDU_DMA_BUFFER_SIZE as u64 {
            return None;
        }
        Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }

    /// Runs the transfer the registers describe; true when data moved.
    fn run(&mut self, bus_master: bool) -> bool {
        let to_memory = self.cmd & EDU_DMA_CMD_TO_MEMORY != 0;
        let (buffer_addr, iova) = if to_memory {
            (self.src, self.dst)
        } else {
            (self.dst, self.src)
        };
        let Some(range) = Self::buffer_range(buffer_addr, self.count) else {
            if !self.warned {
                warn!(
                    "edu: DMA of {:#x} bytes at device address {buffer_addr:#x} leaves the buffer \
                     ({EDU_DMA_BUFFER_ADDR:#x}+{EDU_DMA_BUFFER_SIZE:#x}); nothing moved",
                    self.count
                );
                self.warned = true;
            }
            return false;
        };
        if !bus_master {
            debug!("edu: DMA with bus mastering off; nothing moved");
            return false;
        }
        let Some(space) = &self.space else {
            if !self.warned {
                warn!("edu: no DMA path to guest memory; transfer ignored");
                self.warned = true;
            }
            return false;
        };
        let Some(buf) = self.buffer.get_mut(range) else {
            return false;
        };
        let result = if to_memory {
            space.write(iova, buf)
        } else {
            // Read into a copy: a failed read leaves the buffer untouched.
            let mut data = vec![0u8; buf.len()];
            space
                .read(iova, &mut data)
                .map(|()| buf.copy_from_slice(&data))
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                debug!("edu: DMA at {iova:#x} failed: {e}");
                false
            }
        }
    }
}

impl std::fmt::Debug for EduDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EduDevice")
            .field("msix", &self.msix().is_some())
            .field("factorial", &self.factorial)
            .field("status", &self.status)
            .field("irq_status", &self.irq_status)
            .finish_non_exhaustive()
    }
}

/// `n!` modulo 2^32 (0 from 34 on, which ends the loop early).
fn factorial(n: u32) -> u32 {
    let mut acc: u32 = 1;
    for k in 2..=n {
        acc = acc.wrapping_mul(k);
        if acc == 0 {
            break;
        }
    }
    acc
}

impl EduDevice {
    /// The QEMU-compatible device (1234:11e8) with one MSI vector; `sink` is this
    /// function's route table view.
    pub fn new(sink: Arc<dyn MsiSink>) -> Result<Self, PciError> {
        let mut config = Self::config_space(EDU_DEVICE_ID)?;
        let msi = MsiCapability::new(&mut config, EDU_MSI_VECTORS, true, sink)?;
        Ok(Self::with(config, EduInterrupt::Msi(msi)))
    }

    /// The MSI-X variant (1234:11e9) with 256 vectors in BAR 2.
    pub fn new_msix(sink: Arc<dyn MsiSink>) -> Result<Self, PciError> {
        let mut config = Self::config_space(EDU_MSIX_DEVICE_ID)?;
        config.add_bar(EDU_MSIX_BAR, BarKind::Memory64, EDU_MSIX_BAR_SIZE, false)?;
        let layout = MsixLayout {
            vectors: EDU_MSIX_VECTORS,
            table_bar: EDU_MSIX_BAR,
            table_offset: EDU_MSIX_TABLE_OFFSET,
            pba_bar: EDU_MSIX_BAR,
            pba_offset: EDU_MSIX_PBA_OFFSET,
        };
        let msix = MsixCapability::new(&mut config, layout, sink)?;
        Ok(Self::with(config, EduInterrupt::Msix(msix)))
    }

    /// The header and register BAR both variants share.
    fn config_space(device_id: u16) -> Result<PciConfigSpace, PciError> {
        let mut config = PciConfigSpace::new(&PciHeader {
            vendor_id: EDU_VENDOR_ID,
            device_id,
            revision_id: EDU_REVISION,
            class_code: EDU_CLASS_CODE,
            subsystem_vendor_id: EDU_SUBSYSTEM_VENDOR_ID,
            subsystem_id: EDU_SUBSYSTEM_ID,
            interrupt_pin: 0,
        });
        config.add_bar(EDU_REGS_BAR, BarKind::Memory32, EDU_REGS_BAR_SIZE, false)?;
        Ok(config)
    }

    fn with(config: PciConfigSpace, irq: EduInterrupt) -> Self {
        EduDevice {
            config,
            irq,
            liveness: 0,
            factorial: 0,
            status: 0,
            irq_status: 0,
            dma: EduDma::new(),
        }
    }

    /// Gives the DMA engine its view of guest memory (through the platform's IOMMU).
    /// Without one, transfers move nothing.
    pub fn with_dma(mut self, space: DmaSpace) -> Self {
        self.dma.space = Some(space);
        self
    }

    /// DMA transfers that moved data, and those that did not (bus mastering off, IOMMU
    /// fault, bad buffer range).
    pub fn dma_counts(&self) -> (u64, u64) {
        (self.dma.done, self.dma.failed)
    }

    /// The DMA buffer.
    pub fn dma_buffer(&self) -> &[u8] {
        &self.dma.buffer[..]
    }

    /// The configuration space.
    pub fn config(&self) -> &PciConfigSpace {
        &self.config
    }

    /// The MSI capability (QEMU-compatible device).
    pub fn msi(&self) -> Option<&MsiCapability> {
        match &self.irq {
            EduInterrupt::Msi(m) => Some(m),
            EduInterrupt::Msix(_) => None,
        }
    }

    /// The MSI-X capability (MSI-X variant).
    pub fn msix(&self) -> Option<&MsixCapability> {
        match &self.irq {
            EduInterrupt::Msix(m) => Some(m),
            EduInterrupt::Msi(_) => None,
        }
    }

    /// The interrupt status register.
    pub fn irq_status(&self) -> u32 {
        self.irq_status
    }

    /// True for a size the register at `offset` accepts.
    fn size_ok(offset: u64, len: usize) -> bool {
        if offset < EDU_WIDE_REGS_START {
            len == DWORD
        } else {
            matches!(len, DWORD | QWORD)
        }
    }

    /// The value a read of the register at `offset` returns, `None` for all ones.
    fn read_register(&self, offset: u64) -> Option<u64> {
        let value = match offset {
            EDU_REG_ID => EDU_ID_VALUE,
            EDU_REG_LIVENESS => self.liveness,
            EDU_REG_FACTORIAL => self.factorial,
            EDU_REG_STATUS => self.status,
            EDU_REG_IRQ_STATUS => self.irq_status,
            EDU_REG_MSIX_VECTORS => u32::from(self.msix()?.vectors()),
            EDU_REG_DMA_SRC => return Some(self.dma.src),
            EDU_REG_DMA_DST => return Some(self.dma.dst),
            EDU_REG_DMA_COUNT => return Some(self.dma.count),
            EDU_REG_DMA_CMD => return Some(self.dma.cmd),
            _ => return None,
        };
        Some(u64::from(value))
    }

    /// Handles a write of `value` to the register at `offset`.
    fn write_register(&mut self, offset: u64, value: u64) {
        // Registers below 0x80 take 4-byte accesses: the value fits 32 bits.
        let value32 = value as u32;
        match offset {
            EDU_REG_LIVENESS => self.liveness = !value32,
            EDU_REG_FACTORIAL => {
                if self.status & EDU_STATUS_COMPUTING == 0 {
                    self.factorial = factorial(value32);
                    if self.status & EDU_STATUS_IRQ_FACTORIAL != 0 {
                        self.raise(EDU_FACTORIAL_IRQ);
                    }
                }
            }
            EDU_REG_STATUS => {
                self.status = (self.status & !EDU_STATUS_IRQ_FACTORIAL)
                    | (value32 & EDU_STATUS_IRQ_FACTORIAL);
            }
            EDU_REG_IRQ_RAISE => self.raise(value32),
            EDU_REG_IRQ_ACK => self.irq_status &= !value32,
            EDU_REG_MSIX_RAISE if self.msix().is_some() => match u16::try_from(value32) {
                Ok(vector) if vector < EDU_MSIX_VECTORS => {
                    self.send(vector);
                }
                _ => debug!("edu: raise of nonexistent vector {value32} ignored"),
            },
            EDU_REG_DMA_SRC => self.dma.src = value,
            EDU_REG_DMA_DST => self.dma.dst = value,
            EDU_REG_DMA_COUNT => self.dma.count = value,
            EDU_REG_DMA_CMD if value & EDU_DMA_CMD_START != 0 => self.start_dma(value),
            EDU_REG_DMA_CMD => debug!("edu: DMA command {value:#x} without start ignored"),
            _ => debug!("edu: write of {value:#x} to {offset:#x} ignored"),
        }
    }

    /// Latches `cmd`, runs the transfer, completes it (start bit clear, interrupt status
    /// 0x100 raised when asked) whether or not data moved.
    fn start_dma(&mut self, cmd: u64) {
        self.dma.cmd = cmd;
        if self.dma.run(self.config.bus_master_enabled()) {
            self.dma.done += 1;
        } else {
            self.dma.failed += 1;
        }
        self.dma.cmd &= !EDU_DMA_CMD_START;
        if cmd & EDU_DMA_CMD_IRQ != 0 {
            self.raise(EDU_DMA_IRQ);
        }
    }

    /// ORs `value` into interrupt status and sends vector 0 when the status is nonzero.
    fn raise(&mut self, value: u32) {
        self.irq_status |= value;
        if self.irq_status != 0 {
            self.send(EDU_RAISE_VECTOR);
        }
    }

    /// Sends `vector` through MSI or MSI-X (dropped without Bus Master Enable).
    fn send(&mut self, vector: u16) -> bool {
        if !self.config.bus_master_enabled() {
            debug!("edu: interrupt {vector} dropped: bus mastering disabled");
            return false;
        }
        match &mut self.irq {
            EduInterrupt::Msi(msi) => msi.trigger(&mut self.config, vector),
            EduInterrupt::Msix(msix) => msix.trigger(vector),
        }
    }

    /// A read of the register BAR.
    fn regs_read(&mut self, offset: u64, data: &mut [u8]) {
        let value = Self::size_ok(offset, data.len())
            .then(|| self.read_register(offset))
            .flatten();
        match value {
            Some(v) => {
                let bytes = v.to_le_bytes();
                if let Some(src) = bytes.get(..data.len()) {
                    data.copy_from_slice(src);
                }
            }
            None => fill_ones(data),
        }
    }

    /// A write of the register BAR.
    fn regs_write(&mut self, offset: u64, data: &[u8]) {
        if !Self::size_ok(offset, data.len()) {
            debug!("edu: {}-byte write at {offset:#x} ignored", data.len());
            return;
        }
        let mut bytes = [0u8; QWORD];
        if let Some(dst) = bytes.get_mut(..data.len()) {
            dst.copy_from_slice(data);
        }
        self.write_register(offset, u64::from_le_bytes(bytes));
    }
}

impl PciFunction for EduDevice {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<ConfigWriteEffect> {
        let effects = self.config.write(offset, data);
        match &mut self.irq {
            EduInterrupt::Msi(msi) => msi.config_written(&mut self.config),
            EduInterrupt::Msix(msix) => msix.config_written(&self.config),
        }
        effects
    }

    fn bars(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == EDU_REGS_BAR {
            self.regs_read(offset, data);
            return;
        }
        let handled = match &self.irq {
            EduInterrupt::Msix(msix) => msix.bar_read(bar, offset, data),
            EduInterrupt::Msi(_) => false,
        };
        if !handled {
            fill_ones(data);
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == EDU_REGS_BAR {
            self.regs_write(offset, data);
            return;
        }
        let handled = match &mut self.irq {
            EduInterrupt::Msix(msix) => msix.bar_write(bar, offset, data),
            EduInterrupt::Msi(_) => false,
        };
        if !handled {
            debug!("edu: write to BAR {bar} at {offset:#x} ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::IdentityDma;
    use crate::pci::config::{
        PCI_BAR0, PCI_CLASS_CODE, PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY,
        PCI_INTERRUPT_PIN, PCI_REVISION_ID, PCI_VENDOR_ID,
    };
    use crate::pci::msi::{
        MSI_ADDRESS_LO, MSI_CONTROL, MSI_CTRL_ENABLE, MSI_DATA, MSI_MASK_BITS, PCI_CAP_ID_MSI,
    };
    use crate::pci::msix::{MSIX_CONTROL, MSIX_CTRL_ENABLE, MSIX_ENTRY_SIZE, PCI_CAP_ID_MSIX};
    use crate::pci::testing::{MsiCall, RecordingMsiSink};
    use crate::test_utils::TestRam;
    use virtual_iommu::{MsiMessage, SourceId};

    const MSG_ADDR: u32 = 0xfee0_0000;

    fn cfg_read32(dev: &mut EduDevice, offset: u16) -> u32 {
        let mut data = [0u8; 4];
        dev.config_read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn cfg_write(dev: &mut EduDevice, offset: u16, data: &[u8]) {
        dev.config_write(offset, data);
    }

    fn read32(dev: &mut EduDevice, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        dev.bar_read(EDU_REGS_BAR, offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(dev: &mut EduDevice, offset: u64, value: u32) {
        dev.bar_write(EDU_REGS_BAR, offset, &value.to_le_bytes());
    }

    /// The MSI device with bus mastering and MSI enabled (vector 0 → 0x45).
    fn msi_device() -> (EduDevice, Arc<RecordingMsiSink>) {
        let sink = RecordingMsiSink::new();
        let mut dev = EduDevice::new(sink.clone()).unwrap();
        let cap = dev.msi().unwrap().offset();
        let command = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        cfg_write(&mut dev, PCI_COMMAND, &command.to_le_bytes());
        cfg_write(&mut dev, cap + MSI_ADDRESS_LO, &MSG_ADDR.to_le_bytes());
        cfg_write(&mut dev, cap + MSI_DATA, &0x45u16.to_le_bytes());
        cfg_write(&mut dev, cap + MSI_CONTROL, &MSI_CTRL_ENABLE.to_le_bytes());
        assert_eq!(
            sink.take(),
            vec![MsiCall::Route(
                0,
                Some(MsiMessage {
                    address_lo: MSG_ADDR,
                    address_hi: 0,
                    data: 0x45
                })
            )]
        );
        (dev, sink)
    }

    /// The MSI-X variant with bus mastering and MSI-X enabled; entry `n` holds vector
    /// `n & 0xff` and is unmasked for every `n` in `vectors`.
    fn msix_device(vectors: &[u16]) -> (EduDevice, Arc<RecordingMsiSink>) {
        let sink = RecordingMsiSink::new();
        let mut dev = EduDevice::new_msix(sink.clone()).unwrap();
        let cap = dev.msix().unwrap().offset();
        let command = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        cfg_write(&mut dev, PCI_COMMAND, &command.to_le_bytes());
        cfg_write(
            &mut dev,
            cap + MSIX_CONTROL,
            &MSIX_CTRL_ENABLE.to_le_bytes(),
        );
        for &v in vectors {
            let entry = u64::from(EDU_MSIX_TABLE_OFFSET) + u64::from(v) * MSIX_ENTRY_SIZE;
            let addr = u64::from(MSG_ADDR);
            dev.bar_write(EDU_MSIX_BAR, entry, &addr.to_le_bytes());
            let data_ctrl = u64::from(v & 0xff);
            dev.bar_write(EDU_MSIX_BAR, entry + 8, &data_ctrl.to_le_bytes());
        }
        sink.take();
        (dev, sink)
    }

    #[test]
    fn identity_and_capabilities() {
        let mut dev = EduDevice::new(RecordingMsiSink::new()).unwrap();
        assert_eq!(cfg_read32(&mut dev, PCI_VENDOR_ID), 0x11e8_1234);
        assert_eq!(cfg_read32(&mut dev, PCI_REVISION_ID), 0x00ff_0010);
        assert_eq!(dev.config().read_u8(PCI_CLASS_CODE + 1), 0xff);
        assert_eq!(dev.config().read_u8(PCI_INTERRUPT_PIN), 0);
        assert_eq!(
            dev.config().capabilities(),
            vec![(PCI_CAP_ID_MSI, dev.msi().unwrap().offset())]
        );
        // BAR 0 sizes as 1 MiB 32-bit memory; no other BARs.
        dev.config_write(PCI_BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(cfg_read32(&mut dev, PCI_BAR0), 0xfff0_0000);
        assert_eq!(dev.bars().len(), 1);

        let mut msix = EduDevice::new_msix(RecordingMsiSink::new()).unwrap();
        assert_eq!(cfg_read32(&mut msix, PCI_VENDOR_ID), 0x11e9_1234);
        let caps = msix.config().capabilities();
        assert_eq!(caps, vec![(PCI_CAP_ID_MSIX, msix.msix().unwrap().offset())]);
        let bars = msix.bars();
        assert_eq!(bars.len(), 2);
        assert_eq!((bars[1].index, bars[1].kind), (2, BarKind::Memory64));
        assert_eq!(bars[1].size, EDU_MSIX_BAR_SIZE);
        assert_eq!(read32(&mut msix, EDU_REG_MSIX_VECTORS), 256);
        assert_eq!(read32(&mut dev, EDU_REG_MSIX_VECTORS), u32::MAX);
    }

    #[test]
    fn identification_and_liveness() {
        let (mut dev, _) = msi_device();
        assert_eq!(read32(&mut dev, EDU_REG_ID), 0x0100_00ed);
        write32(&mut dev, EDU_REG_ID, 0);
        assert_eq!(read32(&mut dev, EDU_REG_ID), 0x0100_00ed);
        write32(&mut dev, EDU_REG_LIVENESS, 0x1234_5678);
        assert_eq!(read32(&mut dev, EDU_REG_LIVENESS), 0xedcb_a987);
        write32(&mut dev, EDU_REG_LIVENESS, 0);
        assert_eq!(read32(&mut dev, EDU_REG_LIVENESS), u32::MAX);
    }

    #[test]
    fn factorial_and_status() {
        let (mut dev, sink) = msi_device();
        for (n, expected) in [
            (0u32, 1u32),
            (1, 1),
            (5, 120),
            (12, 479_001_600),
            (13, 1_932_053_504),
            (33, 2_147_483_648),
            (34, 0),
            (u32::MAX, 0),
        ] {
            write32(&mut dev, EDU_REG_FACTORIAL, n);
            assert_eq!(read32(&mut dev, EDU_REG_FACTORIAL), expected, "{n}!");
            assert_eq!(read32(&mut dev, EDU_REG_STATUS) & EDU_STATUS_COMPUTING, 0);
        }
        // No interrupt without status bit 7.
        assert!(sink.take().is_empty());
        assert_eq!(dev.irq_status(), 0);
        // Only bit 7 of status is writable.
        write32(&mut dev, EDU_REG_STATUS, u32::MAX);
        assert_eq!(read32(&mut dev, EDU_REG_STATUS), EDU_STATUS_IRQ_FACTORIAL);
        write32(&mut dev, EDU_REG_FACTORIAL, 4);
        assert_eq!(read32(&mut dev, EDU_REG_FACTORIAL), 24);
        assert_eq!(read32(&mut dev, EDU_REG_IRQ_STATUS), EDU_FACTORIAL_IRQ);
        assert_eq!(sink.take(), vec![MsiCall::Trigger(0)]);
        write32(&mut dev, EDU_REG_STATUS, 0);
        assert_eq!(read32(&mut dev, EDU_REG_STATUS), 0);
    }

    #[test]
    fn raise_and_ack_with_msi() {
        let (mut dev, sink) = msi_device();
        write32(&mut dev, EDU_REG_IRQ_RAISE, 0x4);
        assert_eq!(read32(&mut dev, EDU_REG_IRQ_STATUS), 0x4);
        assert_eq!(sink.take(), vec![MsiCall::Trigger(0)]);
        // Each raise sends one message, even with the status already set.
        write32(&mut dev, EDU_REG_IRQ_RAISE, 0x10);
        assert_eq!(read32(&mut dev, EDU_REG_IRQ_STATUS), 0x14);
        assert_eq!(sink.take(), vec![MsiCall::Trigger(0)]);
        // Write-only registers read as all ones.
        assert_eq!(read32(&mut dev, EDU_REG_IRQ_RAISE), u32::MAX);
        assert_eq!(read32(&mut dev, EDU_REG_IRQ_ACK), u32::MAX);
        write32(&mut dev, EDU_REG_IRQ_ACK, 0x4);
        assert_eq!(read32(&mut dev, EDU_REG_IRQ_STATUS), 0x10);
        write32(&mut dev, EDU_REG_IRQ_ACK, u32::MAX);
        assert_eq!(read32(&mut dev, EDU_REG_IRQ_STATUS), 0);
        // Raising 0 with a clear status sends nothing; the status register is read only.
        write32(&mut dev, EDU_REG_IRQ_RAISE, 0);
        write32(&mut dev, EDU_REG_IRQ_STATUS, 0xff);
        assert_eq!(read32(&mut dev, EDU_REG_IRQ_STATUS), 0);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn interrupts_need_bus_master_and_msi() {
        let (mut dev, sink) = msi_device();
        cfg_write(&mut dev, PCI_COMMAND, &PCI_COMMAND_MEMORY.to_le_bytes());
        write32(&mut dev, EDU_REG_IRQ_RAISE, 1);
        assert_eq!(dev.irq_status(), 1);
        assert!(sink.take().is_empty());
        let command = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        cfg_write(&mut dev, PCI_COMMAND, &command.to_le_bytes());
        let cap = dev.msi().unwrap().offset();
        cfg_write(&mut dev, cap + MSI_CONTROL, &0u16.to_le_bytes());
        assert_eq!(sink.take(), vec![MsiCall::Route(0, None)]);
        write32(&mut dev, EDU_REG_IRQ_RAISE, 1);
        assert!(sink.take().is_empty());
    }

    #[test]
    fn masked_msi_is_pending_until_unmasked() {
        let (mut dev, sink) = msi_device();
        let cap = dev.msi().unwrap().offset();
        cfg_write(&mut dev, cap + MSI_MASK_BITS, &1u32.to_le_bytes());
        write32(&mut dev, EDU_REG_IRQ_RAISE, 2);
        assert!(sink.take().is_empty());
        assert!(dev.msi().unwrap().is_pending(0));
        cfg_write(&mut dev, cap + MSI_MASK_BITS, &0u32.to_le_bytes());
        assert_eq!(sink.take(), vec![MsiCall::Trigger(0)]);
    }

    #[test]
    fn access_sizes_and_dma_registers() {
        let (mut dev, sink) = msi_device();
        for len in [1usize, 2, 8] {
            let mut data = vec![0u8; len];
            dev.bar_read(EDU_REGS_BAR, EDU_REG_ID, &mut data);
            assert!(data.iter().all(|b| *b == 0xff), "{len}");
            dev.bar_write(EDU_REGS_BAR, EDU_REG_IRQ_RAISE, &vec![0xff; len]);
        }
        assert_eq!(read32(&mut dev, 0x01), u32::MAX);
        assert_eq!(read32(&mut dev, 0x40), u32::MAX);
        assert_eq!(read32(&mut dev, EDU_REGS_BAR_SIZE - 4), u32::MAX);
        assert_eq!(read32(&mut dev, u64::MAX), u32::MAX);
        assert!(sink.take().is_empty());
        assert_eq!(dev.irq_status(), 0);
        // DMA registers: 4- and 8-byte accesses; a 4-byte write replaces the whole
        // register; 0x84 & co. are not registers.
        for reg in [EDU_REG_DMA_SRC, EDU_REG_DMA_DST, EDU_REG_DMA_COUNT] {
            dev.bar_write(EDU_REGS_BAR, reg, &0x1122_3344_5566_7788u64.to_le_bytes());
            let mut wide = [0u8; 8];
            dev.bar_read(EDU_REGS_BAR, reg, &mut wide);
            assert_eq!(u64::from_le_bytes(wide), 0x1122_3344_5566_7788);
            write32(&mut dev, reg, 0xabcd);
            dev.bar_read(EDU_REGS_BAR, reg, &mut wide);
            assert_eq!(u64::from_le_bytes(wide), 0xabcd);
            assert_eq!(read32(&mut dev, reg + 4), u32::MAX);
        }
        // A command without the start bit is ignored.
        write32(&mut dev, EDU_REG_DMA_CMD, 0x6);
        assert_eq!(read32(&mut dev, EDU_REG_DMA_CMD), 0);
        let mut odd = [0u8; 2];
        dev.bar_read(EDU_REGS_BAR, EDU_REG_DMA_SRC, &mut odd);
        assert_eq!(odd, [0xff; 2]);
        assert!(sink.take().is_empty());
        // BARs the device does not have.
        let mut data = [0u8; 4];
        for bar in [1u8, 2, 5, 200] {
            dev.bar_read(bar, 0, &mut data);
            assert_eq!(data, [0xff; 4]);
            dev.bar_write(bar, 0, &data);
        }
    }

    #[test]
    fn msix_variant_raises_vector_n() {
        let (mut dev, sink) = msix_device(&[0, 1, 200, 255]);
        for n in [200u32, 1, 255] {
            write32(&mut dev, EDU_REG_MSIX_RAISE, n);
        }
        assert_eq!(sink.take_triggers(), vec![200, 1, 255]);
        assert_eq!(dev.irq_status(), 0, "vector raises leave the status alone");
        // Nonexistent and unprogrammed (masked) vectors.
        write32(&mut dev, EDU_REG_MSIX_RAISE, 256);
        write32(&mut dev, EDU_REG_MSIX_RAISE, u32::MAX);
        write32(&mut dev, EDU_REG_MSIX_RAISE, 7);
        assert!(sink.take().is_empty());
        assert!(dev.msix().unwrap().is_pending(7));
        // The classic raise register uses vector 0.
        write32(&mut dev, EDU_REG_IRQ_RAISE, 8);
        assert_eq!(sink.take(), vec![MsiCall::Trigger(0)]);
        assert_eq!(dev.irq_status(), 8);
        // The PBA shows vector 7 through BAR 2.
        let mut pba = [0u8; 8];
        dev.bar_read(EDU_MSIX_BAR, u64::from(EDU_MSIX_PBA_OFFSET), &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 1 << 7);
        // 0x68 is write only.
        assert_eq!(read32(&mut dev, EDU_REG_MSIX_RAISE), u32::MAX);
    }

    #[test]
    fn msix_routes_cover_all_programmed_vectors() {
        let sink = RecordingMsiSink::new();
        let mut dev = EduDevice::new_msix(sink.clone()).unwrap();
        let cap = dev.msix().unwrap().offset();
        for v in 0..EDU_MSIX_VECTORS {
            let entry = u64::from(v) * MSIX_ENTRY_SIZE;
            let addr = u64::from(MSG_ADDR);
            dev.bar_write(EDU_MSIX_BAR, entry, &addr.to_le_bytes());
            dev.bar_write(EDU_MSIX_BAR, entry + 8, &u64::from(v).to_le_bytes());
        }
        assert!(sink.take().is_empty());
        cfg_write(
            &mut dev,
            cap + MSIX_CONTROL,
            &MSIX_CTRL_ENABLE.to_le_bytes(),
        );
        let calls = sink.take();
        assert_eq!(calls.len(), 1, "one batch");
        let MsiCall::Batch(routes) = &calls[0] else {
            panic!("expected a batch, got {calls:?}");
        };
        assert_eq!(routes.len(), 256);
        assert_eq!(routes[255].0, 255);
        assert_eq!(routes[255].1.unwrap().data, 255);
        // Bus mastering off: nothing is sent.
        write32(&mut dev, EDU_REG_MSIX_RAISE, 3);
        assert!(sink.take().is_empty());
    }

    /// The MSI device with a DMA engine over 64 KiB of identity-mapped RAM.
    fn dma_device() -> (EduDevice, Arc<RecordingMsiSink>, Arc<TestRam>) {
        let (dev, sink) = msi_device();
        let ram = TestRam::new();
        let space = DmaSpace::new(Arc::new(IdentityDma), ram.clone(), SourceId(0x08));
        (dev.with_dma(space), sink, ram)
    }

    fn write64(dev: &mut EduDevice, offset: u64, value: u64) {
        dev.bar_write(EDU_REGS_BAR, offset, &value.to_le_bytes());
    }

    fn dma(dev: &mut EduDevice, src: u64, dst: u64, count: u64, cmd: u64) {
        write64(dev, EDU_REG_DMA_SRC, src);
        write64(dev, EDU_REG_DMA_DST, dst);
        write64(dev, EDU_REG_DMA_COUNT, count);
        write64(dev, EDU_REG_DMA_CMD, cmd);
    }

    #[test]
    fn dma_both_directions_with_completion_interrupt() {
        let (mut dev, sink, ram) = dma_device();
        let pattern: Vec<u8> = (0..100u8).collect();
        ram.0.lock().unwrap()[0x1000..0x1064].copy_from_slice(&pattern);
        // RAM → buffer, with the completion interrupt.
        dma(
            &mut dev,
            0x1000,
            EDU_DMA_BUFFER_ADDR + 0x10,
            100,
            EDU_DMA_CMD_START | EDU_DMA_CMD_IRQ,
        );
        assert_eq!(read32(&mut dev, EDU_REG_DMA_CMD), EDU_DMA_CMD_IRQ as u32);
        assert_eq!(&dev.dma_buffer()[0x10..0x74], &pattern[..]);
        assert_eq!(dev.irq_status(), EDU_DMA_IRQ);
        assert_eq!(sink.take(), vec![MsiCall::Trigger(0)]);
        // Buffer → RAM elsewhere, no interrupt.
        dma(
            &mut dev,
            EDU_DMA_BUFFER_ADDR + 0x10,
            0x2000,
            100,
            EDU_DMA_CMD_START | EDU_DMA_CMD_TO_MEMORY,
        );
        assert_eq!(&ram.0.lock().unwrap()[0x2000..0x2064], &pattern[..]);
        assert!(sink.take().is_empty());
        assert_eq!(dev.dma_counts(), (2, 0));
        // The whole buffer, 8-byte count register.
        dma(
            &mut dev,
            EDU_DMA_BUFFER_ADDR,
            0x3000,
            EDU_DMA_BUFFER_SIZE as u64,
            EDU_DMA_CMD_START | EDU_DMA_CMD_TO_MEMORY,
        );
        assert_eq!(dev.dma_counts(), (3, 0));
    }

    #[test]
    fn failed_dma_moves_nothing_but_completes() {
        let (mut dev, sink, ram) = dma_device();
        let before = ram.0.lock().unwrap().clone();
        // Beyond RAM, the interrupt window, a buffer range past the buffer, a count that
        // wraps: each completes (with its interrupt) and moves nothing.
        for (src, dst, count) in [
            (EDU_DMA_BUFFER_ADDR, 0xff00, 0x200),
            (EDU_DMA_BUFFER_ADDR, 0xfee0_0000, 4),
            (EDU_DMA_BUFFER_ADDR + 0xf00, 0x100, 0x200),
            (EDU_DMA_BUFFER_ADDR, 0x100, u64::MAX),
            (u64::MAX - 1, 0x100, 4),
        ] {
            dma(
                &mut dev,
                src,
                dst,
                count,
                EDU_DMA_CMD_START | EDU_DMA_CMD_TO_MEMORY | EDU_DMA_CMD_IRQ,
            );
            assert_eq!(read32(&mut dev, EDU_REG_DMA_CMD) & 1, 0);
            assert_eq!(sink.take(), vec![MsiCall::Trigger(0)]);
            write32(&mut dev, EDU_REG_IRQ_ACK, EDU_DMA_IRQ);
        }
        assert_eq!(*ram.0.lock().unwrap(), before);
        // Reading from beyond RAM leaves the buffer alone.
        dma(&mut dev, 0, EDU_DMA_BUFFER_ADDR, 16, EDU_DMA_CMD_START);
        ram.0.lock().unwrap()[..16].fill(0x77);
        dma(&mut dev, 0xfff8, EDU_DMA_BUFFER_ADDR, 16, EDU_DMA_CMD_START);
        assert_eq!(&dev.dma_buffer()[..16], &[0; 16]);
        assert_eq!(dev.dma_counts(), (1, 6));
    }

    #[test]
    fn dma_needs_bus_mastering() {
        let (mut dev, _sink, ram) = dma_device();
        cfg_write(&mut dev, PCI_COMMAND, &PCI_COMMAND_MEMORY.to_le_bytes());
        dma(
            &mut dev,
            EDU_DMA_BUFFER_ADDR,
            0x100,
            16,
            EDU_DMA_CMD_START | EDU_DMA_CMD_TO_MEMORY,
        );
        assert_eq!(dev.dma_counts(), (0, 1));
        assert_eq!(read32(&mut dev, EDU_REG_DMA_CMD) & 1, 0);
        assert!(ram.0.lock().unwrap()[0x100..0x110].iter().all(|b| *b == 0));
        // Without a DMA path at all, nothing moves either.
        let (mut plain, _) = msi_device();
        dma(
            &mut plain,
            EDU_DMA_BUFFER_ADDR,
            0x100,
            16,
            EDU_DMA_CMD_START | EDU_DMA_CMD_TO_MEMORY,
        );
        assert_eq!(plain.dma_counts(), (0, 1));
    }
}
