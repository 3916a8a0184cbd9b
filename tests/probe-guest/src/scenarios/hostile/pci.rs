//! PCI garbage: configuration space through the legacy ports and ECAM, and the edu devices'
//! BARs; saving and restoring what the probe needs afterwards.

use super::{Garbage, Window};
use crate::msi::Msi;
use crate::pci::{
    self, Function, ADDR_BUS_SHIFT, ADDR_DEVICE_SHIFT, ADDR_FUNCTION_SHIFT, BAR_IO,
    BAR_MEMORY_MASK, BAR_STRIDE, BAR_TYPE_64, BAR_TYPE_MASK, CAP_ID_MSI, CAP_ID_MSIX,
    COMMAND_INTX_DISABLE, COMMAND_MEMORY, CONFIG_ADDRESS, CONFIG_DATA, CONFIG_ENABLE, REG_BAR0,
    REG_COMMAND, REG_HEADER_TYPE, REG_VENDOR, TYPE0_BARS,
};
use crate::phys::{u16_at, u64_at, u8_at};
use crate::raw::Width;
use crate::report::Text;
use crate::scenarios::platform;
use crate::scenarios::Context;
use crate::text;

/// Most functions whose state is saved (irvmm: host bridge plus up to 31 devices).
const MAX_FUNCTIONS: usize = 64;
/// Most address ranges a [`Ranges`] holds.
const MAX_RANGES: usize = 96;

/// Expansion ROM base register of a type 0 header.
const REG_ROM: u16 = 0x30;
/// Interrupt line (8 bits) and pin (8 bits, read-only).
const REG_INTERRUPT: u16 = 0x3c;
/// Header type bits 6:0 = 0: a type 0 header.
const HEADER_TYPE_MASK: u8 = 0x7f;
/// Command bit 0: I/O space decode.
const COMMAND_IO: u16 = 1 << 0;
/// MSI and MSI-X: message control register offset in the capability.
const CAP_CONTROL: u16 = 0x02;
/// MSI-X control bit 15: enable.
const MSIX_ENABLE: u16 = 1 << 15;
/// MSI-X control bit 14: function mask.
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// I/O BAR address bits (31:2).
const BAR_IO_MASK: u32 = !0x3;
/// Size of the I/O port space.
const PORT_SPACE: u64 = 0x1_0000;

/// Bytes of a function's configuration space through the ports.
const PORT_CONFIG_BYTES: u64 = 0x100;
/// Bytes of a function's configuration space through ECAM.
const ECAM_CONFIG_BYTES: u64 = 0x1000;
/// Bytes of the type 0 header.
const HEADER_BYTES: u64 = 0x40;
/// ECAM: bus number shift.
const ECAM_BUS_SHIFT: u32 = 20;
/// ECAM: device number shift.
const ECAM_DEVICE_SHIFT: u32 = 15;
/// ECAM: function number shift.
const ECAM_FUNCTION_SHIFT: u32 = 12;
/// MCFG: offset of the first allocation entry.
const MCFG_ENTRIES: usize = 44;
/// MCFG: size of an allocation entry (base u64, segment u16, start bus u8, end bus u8, 4
/// reserved).
const MCFG_ENTRY_SIZE: usize = 16;
/// CONFIG_ADDRESS bits 30:24 (reserved).
const ADDRESS_RESERVED: u32 = 0x7f00_0000;
/// CONFIG_ADDRESS bits 1:0 (type 0 / type 1 cycle on real chipsets).
const ADDRESS_TYPE_BITS: u32 = 0x3;
/// Ports decoded around the configuration mechanism (0xcf8-0xcfb: CONFIG_ADDRESS, the reset
/// control register, nothing).
const ADDRESS_PORTS: u64 = 4;
/// Data ports (0xcfc-0xcff).
const DATA_PORTS: u64 = 4;
/// Percentage of configuration accesses that write.
const CONFIG_WRITE_PERCENT: u32 = 40;
/// Percentage of configuration accesses aimed at a function that exists.
const EXISTING_PERCENT: u32 = 55;
/// Percentage of port accesses to the address ports themselves.
const ODD_PORT_PERCENT: u32 = 5;
/// Percentage of CONFIG_ADDRESS writes with the enable bit clear.
const DISABLED_PERCENT: u32 = 10;
/// Percentage of CONFIG_ADDRESS writes with reserved bits, and with type bits.
const ADDRESS_NOISE_PERCENT: u32 = 10;
/// Percentage of ECAM accesses left misaligned.
const MISALIGNED_PERCENT: u32 = 25;

/// The 32-bit PCI memory window where the VMM places BARs (irvmm's; QEMU's q35 hole
/// covers it).
const PCI_WINDOW_START: u64 = 0xc000_0000;
const PCI_WINDOW_END: u64 = 0xfe00_0000;
const PCI_WINDOW_BYTES: u64 = PCI_WINDOW_END - PCI_WINDOW_START;
/// Bytes past a moved BAR's base that its reads reach.
const MOVED_BAR_SPAN: u64 = 0x100;
/// Size of the edu register BAR (1 MiB on irvmm and QEMU).
const EDU_REGS_BYTES: u64 = 0x10_0000;
/// Size of the edu-msix MSI-X BAR (table at 0, PBA at 0x1000).
const EDU_MSIX_BAR_BYTES: u64 = 0x2000;
/// The edu-msix MSI-X BAR.
const EDU_MSIX_BAR: u8 = 2;
/// The edu register BAR.
const EDU_REGS_BAR: u8 = 0;
/// The edu devices' memory BARs (registers; MSI-X table and PBA).
const EDU_BARS: [u8; 2] = [EDU_REGS_BAR, EDU_MSIX_BAR];
/// Offset of the PBA in the MSI-X BAR.
const EDU_PBA_OFFSET: u64 = 0x1000;
/// The edu registers (QEMU's `docs/specs/edu.rst` plus irvmm's 0x68/0x6c), for aiming.
const EDU_REGISTERS: [u64; 17] = [
    0x00, 0x04, 0x08, 0x20, 0x24, 0x60, 0x64, 0x68, 0x6c, 0x80, 0x84, 0x88, 0x8c, 0x90, 0x94, 0x98,
    0x9c,
];
/// Identification register and its magic low byte.
const EDU_REG_ID: u64 = 0x00;
const EDU_ID_MAGIC: u64 = 0xed;
const EDU_ID_MAGIC_MASK: u64 = 0xff;
/// Status register (bit 7: interrupt after a factorial).
const EDU_REG_STATUS: u64 = 0x20;
/// Interrupt acknowledge register.
const EDU_REG_IRQ_ACK: u64 = 0x64;
/// DMA command register and its start bit.
const EDU_REG_DMA_CMD: u64 = 0x98;
const EDU_DMA_START: u8 = 1 << 0;
/// Percentage of edu register accesses aimed at a known register.
const EDU_AIMED_PERCENT: u32 = 70;
/// Percentage of edu accesses that write.
const EDU_WRITE_PERCENT: u32 = 60;
/// Percentage of MSI-X table dword writes given a message in the interrupt window.
const PLAUSIBLE_MESSAGE_PERCENT: u32 = 50;
/// Size of an MSI-X table entry.
const MSIX_ENTRY_BYTES: u64 = 16;
/// The interrupt window: MSI addresses 0xfeexxxxx.
const MSI_WINDOW: u32 = 0xfee0_0000;
/// Address bits below the window's fixed part.
const MSI_WINDOW_LOW_MASK: u32 = 0x000f_ffff;

/// Address ranges (base, length).
pub(super) struct Ranges {
    items: [(u64, u64); MAX_RANGES],
    n: usize,
}

impl Ranges {
    const fn new() -> Ranges {
        Ranges {
            items: [(0, 0); MAX_RANGES],
            n: 0,
        }
    }

    /// Adds `[base, base + len)` (dropped when full: callers keep far fewer).
    pub(super) fn push(&mut self, base: u64, len: u64) {
        if let Some(slot) = self.items.get_mut(self.n) {
            *slot = (base, len);
            self.n += 1;
        }
    }

    /// The ranges.
    pub(super) fn ranges(&self) -> &[(u64, u64)] {
        &self.items[..self.n]
    }
}

/// Whether `[a, a + a_len)` and `[b, b + b_len)` overlap.
pub(super) fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// What is put back after garbage went into a function's configuration space.
#[derive(Clone, Copy, Debug)]
struct Saved {
    function: Function,
    /// Vendor and device ID as read (must not change).
    id: u32,
    command: u16,
    /// Dwords 0x10-0x24: BARs of a type 0 header (raw dwords of any header).
    bars: [u32; TYPE0_BARS as usize],
    /// Dword 0x30: the expansion ROM BAR of a type 0 header.
    rom: u32,
    /// Interrupt line and pin.
    interrupt: u16,
    /// MSI capability offset and message control.
    msi: Option<(u16, u16)>,
    /// MSI-X capability offset and message control.
    msix: Option<(u16, u16)>,
}

impl Saved {
    fn capture(f: Function) -> Result<Saved, Text> {
        let mut bars = [0u32; TYPE0_BARS as usize];
        for (i, bar) in (0u16..).zip(bars.iter_mut()) {
            *bar = f.read32(REG_BAR0 + BAR_STRIDE * i);
        }
        let control = |cap: Option<u16>| cap.map(|at| (at, f.read16(at + CAP_CONTROL)));
        Ok(Saved {
            function: f,
            id: f.read32(REG_VENDOR),
            command: f.read16(REG_COMMAND),
            bars,
            rom: f.read32(REG_ROM),
            interrupt: f.read16(REG_INTERRUPT),
            msi: control(f.find_capability(CAP_ID_MSI)?),
            msix: control(f.find_capability(CAP_ID_MSIX)?),
        })
    }

    /// Writes everything back (decoding off meanwhile, the command register last).
    fn restore(&self) {
        let f = self.function;
        f.write16(REG_COMMAND, 0);
        for (i, &bar) in (0u16..).zip(self.bars.iter()) {
            f.write32(REG_BAR0 + BAR_STRIDE * i, bar);
        }
        f.write32(REG_ROM, self.rom);
        f.write16(REG_INTERRUPT, self.interrupt);
        for (at, control) in self.msi.iter().chain(self.msix.iter()) {
            f.write16(at + CAP_CONTROL, *control);
        }
        f.write16(REG_COMMAND, self.command);
    }

    /// Checks that the function reads back as saved.
    fn check(&self) -> Result<(), Text> {
        let again = Saved::capture(self.function)?;
        let same_bars = again.bars == self.bars && again.rom == self.rom;
        if again.id != self.id || again.command != self.command || !same_bars {
            return Err(text!(
                "{} after restoring: ID 0x{:08x} command 0x{:x} BAR0 0x{:x} (saved 0x{:08x}, \
                 0x{:x}, 0x{:x}){}",
                self.function,
                again.id,
                again.command,
                again.bars[0],
                self.id,
                self.command,
                self.bars[0],
                if same_bars { "" } else { "; BARs differ" }
            ));
        }
        Ok(())
    }
}

/// The ECAM window of segment 0 from the MCFG.
#[derive(Clone, Copy, Debug)]
struct Ecam {
    window: Window,
    start_bus: u8,
    end_bus: u8,
}

impl Ecam {
    /// Segment 0's allocation, if the MCFG has one.
    fn find(ctx: &Context) -> Result<Option<Ecam>, Text> {
        let tables = platform::tables(ctx)?;
        let Some(mcfg) = tables.find(b"MCFG") else {
            return Ok(None);
        };
        let mut at = MCFG_ENTRIES;
        while at + MCFG_ENTRY_SIZE <= mcfg.data.len() {
            let base = u64_at(mcfg.data, at).unwrap_or(0);
            let segment = u16_at(mcfg.data, at + 8).unwrap_or(u16::MAX);
            let start_bus = u8_at(mcfg.data, at + 10).unwrap_or(0);
            let end_bus = u8_at(mcfg.data, at + 11).unwrap_or(0);
            if segment == 0 && end_bus >= start_bus {
                let buses = u64::from(end_bus - start_bus) + 1;
                let window = Window::new("ECAM", base, buses << ECAM_BUS_SHIFT)?;
                return Ok(Some(Ecam {
                    window,
                    start_bus,
                    end_bus,
                }));
            }
            at += MCFG_ENTRY_SIZE;
        }
        Ok(None)
    }
}

/// Bus 0's functions as found, the ranges their BARs decode, and the ECAM window.
pub(super) struct Config {
    saved: [Option<Saved>; MAX_FUNCTIONS],
    n: usize,
    memory: Ranges,
    io: Ranges,
    ecam: Option<Ecam>,
}

impl Config {
    /// Scans bus 0, saves every function's state and sizes its BARs (the standard way:
    /// decoding off, all ones written, the mask read, the value put back).
    pub(super) fn capture(ctx: &Context) -> Result<Config, Text> {
        let mut found = [Function {
            bus: 0,
            device: 0,
            function: 0,
        }; MAX_FUNCTIONS];
        let n = pci::all_on_bus0(&mut found);
        if n > MAX_FUNCTIONS {
            return Err(text!(
                "{} functions on bus 0 (the scenario saves {})",
                n,
                MAX_FUNCTIONS
            ));
        }
        let mut config = Config {
            saved: [None; MAX_FUNCTIONS],
            n,
            memory: Ranges::new(),
            io: Ranges::new(),
            ecam: Ecam::find(ctx)?,
        };
        for (slot, &f) in config.saved.iter_mut().zip(found[..n].iter()) {
            *slot = Some(Saved::capture(f)?);
        }
        for &f in &found[..n] {
            config.size_bars(f);
        }
        Ok(config)
    }

    /// Records the ranges of `f`'s BARs (type 0 headers only).
    fn size_bars(&mut self, f: Function) {
        if f.read8(REG_HEADER_TYPE) & HEADER_TYPE_MASK != 0 {
            return;
        }
        let command = f.read16(REG_COMMAND);
        f.write16(REG_COMMAND, command & !(COMMAND_MEMORY | COMMAND_IO));
        let mut index = 0u16;
        while index < u16::from(TYPE0_BARS) {
            let at = REG_BAR0 + BAR_STRIDE * index;
            let low = f.read32(at);
            f.write32(at, u32::MAX);
            let mask_low = f.read32(at);
            f.write32(at, low);
            if low & BAR_IO != 0 {
                let mask = u64::from(mask_low & BAR_IO_MASK) | !(PORT_SPACE - 1);
                let size = (!mask).wrapping_add(1) & (PORT_SPACE - 1);
                if size != 0 {
                    self.io.push(u64::from(low & BAR_IO_MASK), size);
                }
                index += 1;
                continue;
            }
            let (mut base, mut mask) = (
                u64::from(low & BAR_MEMORY_MASK),
                u64::from(mask_low & BAR_MEMORY_MASK) | !0xffff_ffff_u64,
            );
            if low & BAR_TYPE_MASK == BAR_TYPE_64 && index + 1 < u16::from(TYPE0_BARS) {
                let high = f.read32(at + BAR_STRIDE);
                f.write32(at + BAR_STRIDE, u32::MAX);
                let mask_high = f.read32(at + BAR_STRIDE);
                f.write32(at + BAR_STRIDE, high);
                base |= u64::from(high) << 32;
                mask = (mask & 0xffff_ffff) | (u64::from(mask_high) << 32);
                index += 1;
            }
            let size = (!mask).wrapping_add(1);
            if mask_low & BAR_MEMORY_MASK != 0 && base != 0 {
                self.memory.push(base, size);
            }
            index += 1;
        }
        f.write16(REG_COMMAND, command);
    }

    /// Number of functions on bus 0.
    pub(super) fn functions(&self) -> usize {
        self.n
    }

    /// Whether the MCFG gave an ECAM window.
    pub(super) fn has_ecam(&self) -> bool {
        self.ecam.is_some()
    }

    /// The ECAM window (base, length).
    pub(super) fn ecam_range(&self) -> Option<(u64, u64)> {
        self.ecam.map(|e| (e.window.base(), e.window.len()))
    }

    /// The memory ranges the BARs decode.
    pub(super) fn memory_ranges(&self) -> Ranges {
        let mut copy = Ranges::new();
        for &(base, len) in self.memory.ranges() {
            copy.push(base, len);
        }
        copy
    }

    /// The port ranges the BARs decode.
    pub(super) fn io_ranges(&self) -> &[(u64, u64)] {
        self.io.ranges()
    }

    fn saved(&self) -> impl Iterator<Item = &Saved> {
        self.saved[..self.n].iter().flatten()
    }

    /// Whether bus/device/function exists.
    fn exists(&self, bus: u8, device: u8, function: u8) -> bool {
        let f = Function {
            bus,
            device,
            function,
        };
        self.saved().any(|s| s.function == f)
    }

    /// A target: an existing function [`EXISTING_PERCENT`] of the time, else any in `buses`.
    fn target(&self, g: &mut Garbage, first_bus: u8, last_bus: u8) -> (u8, u8, u8) {
        if self.n > 0 && g.rng.chance(EXISTING_PERCENT) {
            let i = g.rng.below(self.n as u64) as usize;
            if let Some(Some(s)) = self.saved.get(i) {
                let f = s.function;
                if (first_bus..=last_bus).contains(&f.bus) {
                    return (f.bus, f.device, f.function);
                }
            }
        }
        let bus = g.rng.between(u64::from(first_bus), u64::from(last_bus) + 1) as u8;
        let device = g.rng.below(u64::from(pci::DEVICES)) as u8;
        let function = g.rng.below(u64::from(pci::FUNCTIONS)) as u8;
        (bus, device, function)
    }

    /// Garbage through CONFIG_ADDRESS/CONFIG_DATA: `count` configuration accesses.
    pub(super) fn config_ports(&self, g: &mut Garbage, count: u32) -> Result<(), Text> {
        for _ in 0..count {
            if g.rng.chance(ODD_PORT_PERCENT) {
                let port = CONFIG_ADDRESS + g.rng.below(ADDRESS_PORTS) as u16;
                let width = g.port_width();
                if g.rng.chance(CONFIG_WRITE_PERCENT) {
                    let value = g.rng.next_u32();
                    g.port_write(port, width, value);
                } else {
                    g.port_read(port, width);
                }
                continue;
            }
            let (bus, device, function) = self.target(g, 0, u8::MAX);
            let offset = config_offset(g, PORT_CONFIG_BYTES) as u32;
            let mut address = CONFIG_ENABLE
                | (u32::from(bus) << ADDR_BUS_SHIFT)
                | (u32::from(device) << ADDR_DEVICE_SHIFT)
                | (u32::from(function) << ADDR_FUNCTION_SHIFT)
                | (offset & !ADDRESS_TYPE_BITS);
            let enabled = !g.rng.chance(DISABLED_PERCENT);
            if !enabled {
                address &= !CONFIG_ENABLE;
            }
            if g.rng.chance(ADDRESS_NOISE_PERCENT) {
                address |= g.rng.next_u32() & ADDRESS_RESERVED;
            }
            if g.rng.chance(ADDRESS_NOISE_PERCENT) {
                address |= g.rng.next_u32() & ADDRESS_TYPE_BITS;
            }
            g.port_write(CONFIG_ADDRESS, Width::Dword, address);
            let port = CONFIG_DATA + g.rng.below(DATA_PORTS) as u16;
            let width = g.port_width();
            if g.rng.chance(CONFIG_WRITE_PERCENT) {
                let value = g.rng.next_u32();
                g.port_write(port, width, value);
                continue;
            }
            let got = g.port_read(port, width);
            if !enabled || !self.exists(bus, device, function) {
                g.expect_ones(u64::from(got), width, || {
                    text!(
                        "CONFIG_ADDRESS 0x{:08x} ({:02x}:{:02x}.{}{}), port 0x{:x}",
                        address,
                        bus,
                        device,
                        function,
                        if enabled {
                            ", absent"
                        } else {
                            ", enable clear"
                        },
                        port
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Garbage through ECAM: `count` accesses.
    pub(super) fn ecam(&self, g: &mut Garbage, count: u32) -> Result<(), Text> {
        let Some(ecam) = self.ecam else {
            return Ok(());
        };
        for _ in 0..count {
            let (bus, device, function) = self.target(g, ecam.start_bus, ecam.end_bus);
            let width = g.width();
            let mut offset = config_offset(g, ECAM_CONFIG_BYTES);
            if !g.rng.chance(MISALIGNED_PERCENT) {
                offset &= !(width.bytes() - 1);
            }
            let offset = offset.min(ECAM_CONFIG_BYTES - width.bytes());
            let at = (u64::from(bus - ecam.start_bus) << ECAM_BUS_SHIFT)
                | (u64::from(device) << ECAM_DEVICE_SHIFT)
                | (u64::from(function) << ECAM_FUNCTION_SHIFT)
                | offset;
            if g.rng.chance(CONFIG_WRITE_PERCENT) {
                let value = g.rng.next_u64();
                g.write(&ecam.window, at, width, value);
                continue;
            }
            let got = g.read(&ecam.window, at, width);
            if !self.exists(bus, device, function) {
                g.expect_ones(got, width, || {
                    text!(
                        "ECAM {:02x}:{:02x}.{} +0x{:x} (absent)",
                        bus,
                        device,
                        function,
                        offset
                    )
                })?;
            }
        }
        Ok(())
    }

    /// While the configuration garbage is still in place: `count` reads at wherever the
    /// `devices`' BARs now point (when that is inside the PCI memory window), so the VMM
    /// looks up BARs that moved, overlap or were sized. Reads only: the devices' interrupt
    /// state is garbage at this point.
    pub(super) fn moved_bar_reads(
        &self,
        g: &mut Garbage,
        devices: &[Function],
        count: u32,
    ) -> Result<(), Text> {
        let window = Window::new("PCI memory window", PCI_WINDOW_START, PCI_WINDOW_BYTES)?;
        for _ in 0..count {
            let Some(f) = g.rng.pick(devices) else {
                return Ok(());
            };
            let index = g.rng.pick(&EDU_BARS).unwrap_or(EDU_REGS_BAR);
            let bar = f.read32(REG_BAR0 + BAR_STRIDE * u16::from(index));
            let base = u64::from(bar & BAR_MEMORY_MASK);
            if bar & BAR_IO != 0 || !(PCI_WINDOW_START..PCI_WINDOW_END).contains(&base) {
                continue;
            }
            let width = g.width();
            let offset = base - PCI_WINDOW_START + g.rng.below(MOVED_BAR_SPAN);
            g.read(&window, offset, width);
        }
        Ok(())
    }

    /// Puts every function back as captured and checks it.
    pub(super) fn restore(&self) -> Result<(), Text> {
        for s in self.saved() {
            s.restore();
        }
        for s in self.saved() {
            s.check()?;
        }
        Ok(())
    }
}

/// A configuration-space offset below `limit`: the header, the capability area or anywhere.
fn config_offset(g: &mut Garbage, limit: u64) -> u64 {
    match g.rng.below(10) {
        0..=3 => g.rng.below(HEADER_BYTES),
        4..=6 => g.rng.between(HEADER_BYTES, PORT_CONFIG_BYTES),
        _ => g.rng.below(limit),
    }
}

/// A garbage MSI address: in the interrupt window half of the time.
fn garbage_msi_address(g: &mut Garbage) -> u32 {
    let bits = g.rng.next_u32();
    if g.rng.chance(PLAUSIBLE_MESSAGE_PERCENT) {
        MSI_WINDOW | (bits & MSI_WINDOW_LOW_MASK)
    } else {
        bits
    }
}

/// The edu devices' BARs, with their interrupts armed on garbage messages and bus mastering
/// off (the devices drop every interrupt).
pub(super) struct EduBars {
    edu: Window,
    msix: Option<(Window, Window)>,
}

impl EduBars {
    /// Memory decoding on, bus mastering off; edu's MSI enabled with a garbage message,
    /// edu-msix's MSI-X enabled and unmasked (its table is garbage by the end).
    pub(super) fn arm(
        g: &mut Garbage,
        edu_fn: Function,
        msix_fn: Option<Function>,
    ) -> Result<EduBars, Text> {
        let quiet = COMMAND_MEMORY | COMMAND_INTX_DISABLE;
        edu_fn.write16(REG_COMMAND, quiet);
        let msi = Msi::find(edu_fn)?;
        let address = garbage_msi_address(g);
        msi.program(address, g.rng.next_u32() as u16);
        let edu = Window::new(
            "edu BAR 0",
            edu_fn.memory_bar(EDU_REGS_BAR)?,
            EDU_REGS_BYTES,
        )?;
        let msix = match msix_fn {
            None => None,
            Some(f) => {
                f.write16(REG_COMMAND, quiet);
                let cap = f
                    .find_capability(CAP_ID_MSIX)?
                    .ok_or_else(|| text!("{} (edu-msix) has no MSI-X capability", f))?;
                let control = f.read16(cap + CAP_CONTROL);
                f.write16(
                    cap + CAP_CONTROL,
                    (control | MSIX_ENABLE) & !MSIX_FUNCTION_MASK,
                );
                let regs = Window::new(
                    "edu-msix BAR 0",
                    f.memory_bar(EDU_REGS_BAR)?,
                    EDU_REGS_BYTES,
                )?;
                let table = Window::new(
                    "edu-msix BAR 2",
                    f.memory_bar(EDU_MSIX_BAR)?,
                    EDU_MSIX_BAR_BYTES,
                )?;
                Some((regs, table))
            }
        };
        Ok(EduBars { edu, msix })
    }

    /// `count` accesses, then the devices' identification checked and every interrupt
    /// status bit acknowledged.
    pub(super) fn garbage(&self, g: &mut Garbage, count: u32) -> Result<(), Text> {
        for _ in 0..count {
            let (window, table) = match (self.msix, g.rng.below(10)) {
                (Some((regs, _)), 4..=6) => (regs, false),
                (Some((_, table)), 7..=9) => (table, true),
                _ => (self.edu, false),
            };
            let width = g.width();
            let mut offset = if table {
                if g.rng.chance(75) {
                    g.rng.below(EDU_PBA_OFFSET)
                } else {
                    g.rng.between(EDU_PBA_OFFSET, EDU_MSIX_BAR_BYTES)
                }
            } else if g.rng.chance(EDU_AIMED_PERCENT) {
                g.rng.pick(&EDU_REGISTERS).unwrap_or(EDU_REG_ID)
            } else {
                g.rng.below(EDU_REGS_BYTES)
            };
            if g.rng.chance(MISALIGNED_PERCENT) {
                offset += g.rng.between(1, width.bytes().max(2));
            } else {
                offset &= !(width.bytes() - 1);
            }
            let offset = window.fit(offset, width);
            if !g.rng.chance(EDU_WRITE_PERCENT) {
                g.read(&window, offset, width);
                continue;
            }
            let mut value = g.rng.next_u64();
            if table && offset % MSIX_ENTRY_BYTES == 0 && g.rng.chance(PLAUSIBLE_MESSAGE_PERCENT) {
                let address = garbage_msi_address(g);
                value = (value & !u64::from(u32::MAX)) | u64::from(address);
            }
            if !table && !g.strict() {
                // Only irvmm has no DMA engine: elsewhere a started transfer would copy to
                // or from random guest memory.
                value = clear_byte_bits(offset, width, value, EDU_REG_DMA_CMD, EDU_DMA_START);
            }
            g.write(&window, offset, width, value);
        }
        self.settle(self.edu)?;
        if let Some((regs, _)) = self.msix {
            self.settle(regs)?;
        }
        Ok(())
    }

    /// Checks the identification register and clears every interrupt status bit and the
    /// interrupt-after-factorial bit.
    fn settle(&self, regs: Window) -> Result<(), Text> {
        let mmio = crate::mmio::Mmio::new("edu registers", regs.base(), EDU_REGS_BYTES)?;
        let id = u64::from(mmio.read32(EDU_REG_ID));
        if id & EDU_ID_MAGIC_MASK != EDU_ID_MAGIC {
            return Err(text!(
                "edu at 0x{:x}: identification 0x{:08x} after the garbage",
                regs.base(),
                id
            ));
        }
        mmio.write32(EDU_REG_IRQ_ACK, u32::MAX);
        mmio.write32(EDU_REG_STATUS, 0);
        Ok(())
    }
}

/// `value` (a `width` write at `offset`) with `bits` cleared in the byte that lands on
/// `register_byte`, if it does.
pub(super) fn clear_byte_bits(
    offset: u64,
    width: Width,
    value: u64,
    register_byte: u64,
    bits: u8,
) -> u64 {
    match register_byte.checked_sub(offset) {
        Some(lane) if lane < width.bytes() => value & !(u64::from(bits) << (8 * lane)),
        _ => value,
    }
}

/// `value` (a `width` write at `offset`) with `bits` set in the byte that lands on
/// `register_byte`, if it does.
pub(super) fn set_byte_bits(
    offset: u64,
    width: Width,
    value: u64,
    register_byte: u64,
    bits: u8,
) -> u64 {
    match register_byte.checked_sub(offset) {
        Some(lane) if lane < width.bytes() => value | (u64::from(bits) << (8 * lane)),
        _ => value,
    }
}
