//! BAR placement, the firmware's job when there is no BIOS: the default PCI windows,
//! [`PciWindow`], [`BarAssignment`] and [`PciRoot::assign_bars`], which places every BAR
//! and programs the functions through the root's configuration writes.

use std::collections::BTreeMap;

use super::PciRoot;
use crate::pci::config::{
    BarKind, BarSpace, PCI_BAR0, PCI_BAR_REG_SIZE, PCI_COMMAND, PCI_COMMAND_IO, PCI_COMMAND_MEMORY,
    PCI_EXPANSION_ROM, PCI_ROM_BAR_INDEX,
};
use crate::pci::{PciAddress, PciError};

/// Default base of the 32-bit PCI MMIO window.
pub const PCI_MMIO32_BASE: u64 = 0xc000_0000;
/// Default size of the 32-bit PCI MMIO window (it ends at 0xfe00_0000).
pub const PCI_MMIO32_SIZE: u64 = 0xfe00_0000 - PCI_MMIO32_BASE;
/// Default base of the PCI I/O port window.
pub const PCI_IO_BASE: u64 = 0xc000;
/// Default size of the PCI I/O port window (it ends at 0x1_0000).
pub const PCI_IO_SIZE: u64 = 0x4000;
/// Memory BARs are placed on at least page boundaries (so each can be mapped alone).
pub const PCI_MMIO_MIN_ALIGN: u64 = 0x1000;

/// An address range BARs may be placed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindow {
    /// First address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl PciWindow {
    /// The default 32-bit MMIO window, 0xc000_0000..0xfe00_0000.
    pub const MMIO32: PciWindow = PciWindow {
        base: PCI_MMIO32_BASE,
        size: PCI_MMIO32_SIZE,
    };
    /// The default I/O port window, 0xc000..0x1_0000.
    pub const IO: PciWindow = PciWindow {
        base: PCI_IO_BASE,
        size: PCI_IO_SIZE,
    };

    /// The first address past the window (saturating).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// Where [`PciRoot::assign_bars`] placed one BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarAssignment {
    /// The function.
    pub address: PciAddress,
    /// BAR index.
    pub bar: u8,
    /// BAR kind.
    pub kind: BarKind,
    /// Assigned base address.
    pub base: u64,
    /// BAR size.
    pub size: u64,
}

/// `value` rounded up to a multiple of `align` (a power of two), `None` on overflow.
pub(super) fn align_up(value: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    value.checked_add(mask).map(|v| v & !mask)
}

impl PciRoot {
    /// Does the firmware's job: places every BAR of every function, largest first and
    /// naturally aligned (memory BARs on at least 4 KiB), memory BARs (64-bit ones too) in
    /// `mmio` and I/O BARs in `io`; programs the BAR registers and sets the command
    /// register's memory and I/O decode bits of each function that got a BAR of that
    /// space. Bus mastering is left to the guest's driver. Call it before the guest runs.
    pub fn assign_bars(
        &mut self,
        mmio: PciWindow,
        io: Option<PciWindow>,
    ) -> Result<Vec<BarAssignment>, PciError> {
        let mut requests = Vec::new();
        for (address, slot) in &self.slots {
            let function = slot
                .function
                .lock()
                .map_err(|_| PciError::FunctionUnavailable(*address))?;
            requests.extend(function.bars().into_iter().map(|b| (*address, b)));
        }
        requests.sort_by(|(a_addr, a), (b_addr, b)| {
            b.size
                .cmp(&a.size)
                .then(a_addr.cmp(b_addr))
                .then(a.index.cmp(&b.index))
        });

        let mut next_mem = mmio.base;
        let mut next_io = io.map(|w| w.base);
        let mut assignments = Vec::with_capacity(requests.len());
        for (address, bar) in requests {
            let space = bar.kind.space();
            let exhausted = PciError::WindowExhausted {
                address,
                bar: bar.index,
                size: bar.size,
                space,
            };
            let (window, cursor, align) = match (space, io, next_io.as_mut()) {
                (BarSpace::Memory, _, _) => (mmio, &mut next_mem, bar.size.max(PCI_MMIO_MIN_ALIGN)),
                (BarSpace::Io, Some(w), Some(c)) => (w, c, bar.size),
                (BarSpace::Io, _, _) => return Err(exhausted),
            };
            let base = align_up(*cursor, align).ok_or(exhausted.clone())?;
            let end = base.checked_add(bar.size).ok_or(exhausted.clone())?;
            if end > window.end() {
                return Err(exhausted);
            }
            *cursor = end;
            assignments.push(BarAssignment {
                address,
                bar: bar.index,
                kind: bar.kind,
                base,
                size: bar.size,
            });
        }

        let mut enables: BTreeMap<PciAddress, u16> = BTreeMap::new();
        for a in &assignments {
            // The expansion ROM is placed but left disabled, as firmware does.
            let offset = if a.bar == PCI_ROM_BAR_INDEX {
                PCI_EXPANSION_ROM
            } else {
                PCI_BAR0 + PCI_BAR_REG_SIZE * u16::from(a.bar)
            };
            self.config_write(a.address, offset, &(a.base as u32).to_le_bytes());
            if a.kind == BarKind::Memory64 {
                let high = (a.base >> u32::BITS) as u32;
                self.config_write(a.address, offset + PCI_BAR_REG_SIZE, &high.to_le_bytes());
            }
            let bit = match a.kind.space() {
                BarSpace::Memory => PCI_COMMAND_MEMORY,
                BarSpace::Io => PCI_COMMAND_IO,
            };
            *enables.entry(a.address).or_default() |= bit;
        }
        for (address, bits) in enables {
            let mut command = [0u8; 2];
            self.config_read(address, PCI_COMMAND, &mut command);
            let value = u16::from_le_bytes(command) | bits;
            self.config_write(address, PCI_COMMAND, &value.to_le_bytes());
        }
        Ok(assignments)
    }
}
