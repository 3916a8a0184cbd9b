//! The guest's view of a passed-through function's configuration space: the device's own
//! bytes, except the header (identity kept, BARs and expansion ROM BAR emulated, command
//! register emulated and forwarded) and the MSI and MSI-X capabilities, which are emulated
//! in place — at the device's offsets, linked by the device's own chain.
//!
//! Emulated state lives in a [`PciConfigSpace`] (`emu`) whose header mirrors the device's
//! identity and BARs and whose capabilities are the emulated MSI-X and MSI at offsets of its
//! own; each guest byte is routed to one of: that space (at the mapped offset), the device
//! (a config-region access through the backend), the ROM BAR register, or a fixed value.

use devices::pci::config::{
    BarKind, ConfigWriteEffect, PciConfigSpace, PciHeader, PCI_CAPABILITY_LIST, PCI_CAP_AREA_START,
    PCI_CAP_NEXT, PCI_COMMAND, PCI_EXPANSION_ROM, PCI_ROM_ADDRESS_MASK, PCI_ROM_ENABLE,
};
use devices::pci::msi::MsiCapability;
use devices::pci::msix::{MsixCapability, MsixLayout, MSIX_CAP_LEN};
use devices::pci::{MsiSink, PciError};
use std::sync::Arc;

use super::layout::DeviceLayout;
use super::plan::MsixPlacement;

/// Size of the ROM BAR register.
const ROM_REG_LEN: u16 = 4;
/// Bytes of the command register.
const COMMAND_LEN: u16 = 2;

/// An emulated capability: `len` bytes at `dev` in the guest's view, at `emu` in `emu`.
#[derive(Clone, Copy, Debug)]
struct CapMap {
    dev: u16,
    emu: u16,
    len: u16,
}

impl CapMap {
    fn lane(&self, o: u16) -> Option<u16> {
        (o >= self.dev && o < self.dev + self.len).then(|| self.emu + (o - self.dev))
    }
}

/// The expansion ROM BAR register.
#[derive(Clone, Copy, Debug)]
struct RomBar {
    size: u64,
    reg: u32,
}

impl RomBar {
    fn write_byte(&mut self, lane: u16, value: u8) {
        let shift = u32::from(lane) * 8;
        let v = (self.reg & !(0xff << shift)) | (u32::from(value) << shift);
        let mask = PCI_ROM_ADDRESS_MASK & !((self.size - 1) as u32);
        self.reg = (v & mask) | (v & PCI_ROM_ENABLE);
    }
}

/// Where one guest byte of configuration space comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// The emulated space at this offset.
    Emu(u16),
    /// The device, at the same offset.
    Dev,
    /// Byte `n` of the ROM BAR register.
    Rom(u16),
    /// A fixed value (read only).
    Fixed(u8),
}

/// The guest-visible configuration space of a passed-through function.
pub struct VirtConfig {
    emu: PciConfigSpace,
    rom: Option<RomBar>,
    msix_map: Option<CapMap>,
    msi_map: Option<CapMap>,
    /// The device's MSI-X capability when it is passed through unemulated (`msix=direct`).
    direct_msix: Option<u16>,
    /// Emulated MSI-X, unless direct or absent.
    pub(crate) msix: Option<MsixCapability>,
    /// Emulated MSI, when the device has a 64-bit MSI capability.
    pub(crate) msi: Option<MsiCapability>,
    /// Capability pointer bytes whose value differs from the device's (hidden caps).
    next_override: Vec<(u16, u8)>,
}

/// What one configuration write touched, besides its effects.
#[derive(Clone, Copy, Debug, Default)]
pub struct Touched {
    /// The emulated MSI-X capability.
    pub msix: bool,
    /// The emulated MSI capability.
    pub msi: bool,
    /// The device's own MSI-X capability (direct).
    pub direct_msix: bool,
    /// The command register.
    pub command: bool,
}

impl VirtConfig {
    /// Builds the guest view of `layout` with the MSI-X table where `placement` says.
    pub fn new(
        layout: &DeviceLayout,
        placement: MsixPlacement,
        guest_msix: Option<MsixLayout>,
        msix_sink: Arc<dyn MsiSink>,
        msi_sink: Arc<dyn MsiSink>,
    ) -> Result<Self, PciError> {
        let mut emu = PciConfigSpace::new(&PciHeader { ..layout.header });
        for b in &layout.bars {
            let size = match placement {
                MsixPlacement::Doubled { bar, device_size } if bar == b.index => device_size * 2,
                _ => b.size,
            };
            emu.add_bar(b.index, b.kind, size, b.prefetchable)?;
        }
        if let MsixPlacement::Relocated { bar, size } = placement {
            emu.add_bar(bar, BarKind::Memory32, size, false)?;
        }
        let mut cfg = VirtConfig {
            emu,
            rom: (layout.rom_size > 0).then_some(RomBar {
                size: layout.rom_size,
                reg: 0,
            }),
            msix_map: None,
            msi_map: None,
            direct_msix: None,
            msix: None,
            msi: None,
            next_override: Vec::new(),
        };
        if let (Some(dev), Some(guest)) = (layout.msix, guest_msix) {
            if placement == MsixPlacement::Direct {
                cfg.direct_msix = Some(dev.offset);
            } else {
                let cap = MsixCapability::new(&mut cfg.emu, guest, msix_sink)?;
                cfg.msix_map = Some(CapMap {
                    dev: dev.offset,
                    emu: cap.offset(),
                    len: u16::from(MSIX_CAP_LEN),
                });
                cfg.msix = Some(cap);
            }
        }
        if let Some(dev) = layout.msi {
            let cap = MsiCapability::new(&mut cfg.emu, dev.vectors, dev.maskable, msi_sink)?;
            let len = if dev.maskable { 0x18 } else { 0x10 };
            cfg.msi_map = Some(CapMap {
                dev: dev.offset,
                emu: cap.offset(),
                len,
            });
            cfg.msi = Some(cap);
        }
        // The device's 32-bit MSI capability (not offered) is unlinked from the chain.
        let msi_offsets: Vec<u16> = layout
            .caps
            .iter()
            .filter(|&&(id, _)| id == devices::pci::msi::PCI_CAP_ID_MSI)
            .map(|&(_, o)| o)
            .collect();
        let hidden: Vec<u16> = msi_offsets
            .into_iter()
            .filter(|o| cfg.msi_map.is_none_or(|m| m.dev != *o))
            .collect();
        cfg.unlink(layout, &hidden);
        Ok(cfg)
    }

    /// Overrides the pointers into `hidden` capabilities with their successors.
    fn unlink(&mut self, layout: &DeviceLayout, hidden: &[u16]) {
        if hidden.is_empty() {
            return;
        }
        let chain = &layout.caps;
        let visible_after = |i: usize| -> u8 {
            chain
                .iter()
                .skip(i)
                .find(|(_, o)| !hidden.contains(o))
                .map(|&(_, o)| o as u8)
                .unwrap_or(0)
        };
        self.next_override
            .push((PCI_CAPABILITY_LIST, visible_after(0)));
        for (i, &(_, o)) in chain.iter().enumerate() {
            self.next_override
                .push((o + PCI_CAP_NEXT, visible_after(i + 1)));
        }
    }

    fn lane(&self, o: u16) -> Lane {
        if let Some(&(_, v)) = self.next_override.iter().find(|(at, _)| *at == o) {
            return Lane::Fixed(v);
        }
        if o < PCI_CAP_AREA_START {
            if (PCI_EXPANSION_ROM..PCI_EXPANSION_ROM + ROM_REG_LEN).contains(&o) {
                return Lane::Rom(o - PCI_EXPANSION_ROM);
            }
            if o == PCI_CAPABILITY_LIST {
                return Lane::Dev;
            }
            return Lane::Emu(o);
        }
        for map in [self.msix_map, self.msi_map].into_iter().flatten() {
            if o == map.dev + PCI_CAP_NEXT {
                return Lane::Dev;
            }
            if let Some(e) = map.lane(o) {
                return Lane::Emu(e);
            }
        }
        Lane::Dev
    }

    /// Answers a guest read; `device_read` reads the device's bytes at `(offset, buf)` and
    /// returns false on failure (those bytes then read all ones).
    pub fn read(
        &self,
        offset: u16,
        data: &mut [u8],
        device_read: &mut dyn FnMut(u16, &mut [u8]) -> bool,
    ) {
        let lanes: Vec<Lane> = (0..data.len() as u16)
            .map(|i| self.lane(offset + i))
            .collect();
        if lanes.contains(&Lane::Dev) && !device_read(offset, data) {
            data.iter_mut().for_each(|b| *b = 0xff);
        }
        for (i, lane) in lanes.iter().enumerate() {
            match *lane {
                Lane::Emu(e) => self.emu.read(e, &mut data[i..i + 1]),
                Lane::Rom(n) => {
                    data[i] = self
                        .rom
                        .map(|r| (r.reg >> (u32::from(n) * 8)) as u8)
                        .unwrap_or(0);
                }
                Lane::Fixed(v) => data[i] = v,
                Lane::Dev => {}
            }
        }
    }

    /// Applies a guest write: emulated bytes here, device bytes through `device_write`
    /// (runs of consecutive device bytes), the command register to both. Returns the BAR
    /// moves and decode changes, and what was touched.
    pub fn write(
        &mut self,
        offset: u16,
        data: &[u8],
        device_write: &mut dyn FnMut(u16, &[u8]),
    ) -> (Vec<ConfigWriteEffect>, Touched) {
        let mut effects = Vec::new();
        let mut touched = Touched::default();
        // Consecutive bytes going to the same place are written together, so a BAR dword
        // is written whole (a partial BAR write would look like a move).
        let mut runs: Vec<(Lane, u16, Vec<u8>)> = Vec::new();
        for (i, &byte) in data.iter().enumerate() {
            let o = offset + i as u16;
            let lane = self.lane(o);
            let extends = match (runs.last(), lane) {
                (Some((Lane::Dev, at, bytes)), Lane::Dev) => *at + bytes.len() as u16 == o,
                (Some((Lane::Emu(e0), _, bytes)), Lane::Emu(e)) => *e0 + bytes.len() as u16 == e,
                _ => false,
            };
            match runs.last_mut() {
                Some((_, _, bytes)) if extends => bytes.push(byte),
                _ => runs.push((lane, o, vec![byte])),
            }
        }
        for (lane, o, bytes) in runs {
            let end = o + bytes.len() as u16;
            match lane {
                Lane::Dev => {
                    if let Some(d) = self.direct_msix {
                        touched.direct_msix |= o < d + u16::from(MSIX_CAP_LEN) && d < end;
                    }
                    device_write(o, &bytes);
                }
                Lane::Emu(e) => {
                    effects.extend(self.emu.write(e, &bytes));
                    let hits =
                        |m: Option<CapMap>| m.is_some_and(|m| o < m.dev + m.len && m.dev < end);
                    touched.msix |= hits(self.msix_map);
                    touched.msi |= hits(self.msi_map);
                    touched.command |= o < PCI_COMMAND + COMMAND_LEN && PCI_COMMAND < end;
                }
                Lane::Rom(n) => {
                    if let Some(r) = &mut self.rom {
                        for (k, byte) in bytes.iter().enumerate() {
                            r.write_byte(n + k as u16, *byte);
                        }
                    }
                }
                Lane::Fixed(_) => {}
            }
        }
        if touched.command {
            device_write(PCI_COMMAND, &self.emu.command().to_le_bytes());
        }
        if touched.msix {
            if let Some(m) = &mut self.msix {
                m.config_written(&self.emu);
            }
        }
        if touched.msi {
            if let Some(m) = &mut self.msi {
                m.config_written(&mut self.emu);
            }
        }
        (effects, touched)
    }

    /// The emulated header, BARs and capabilities.
    pub fn emu(&self) -> &PciConfigSpace {
        &self.emu
    }

    /// The emulated space and MSI together (MSI's trigger needs both).
    pub fn msi_parts(&mut self) -> (Option<&mut MsiCapability>, &mut PciConfigSpace) {
        (self.msi.as_mut(), &mut self.emu)
    }

    /// The ROM BAR: `(size, address, enabled)`.
    pub fn rom(&self) -> Option<(u64, u64, bool)> {
        self.rom.map(|r| {
            (
                r.size,
                u64::from(r.reg & PCI_ROM_ADDRESS_MASK),
                r.reg & PCI_ROM_ENABLE != 0,
            )
        })
    }

    /// The offset of the device's own MSI-X capability when it is passed through.
    pub fn direct_msix(&self) -> Option<u16> {
        self.direct_msix
    }
}
