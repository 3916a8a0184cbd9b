//! `probe=vfio-basic`: the passed-through test device as a driver first meets it.
//!
//! Finds 1234:11ea on bus 0 and checks its identity (class 0x00ff00, header type 0,
//! interrupt pin INTA); sizes every BAR the standard way with decoding off, restoring each
//! (BAR0 must be a 64-bit 64 KiB memory BAR); reads the MSI-X capability (the table's and
//! PBA's BAR and offset, entry 0 masked as after reset unless the device runs its own table);
//! reads ID and VECTORS through BAR0 and round-trips SCRATCH and the other plain registers
//! of BAR0's first page (the page that holds the device's own MSI-X table) [`ROUNDS`] times;
//! then sizes the expansion ROM BAR, enables it at a free address in the PCI window above
//! every BAR, checks the ROM signature 0x55 0xAA and the string at 0x10, and disables it
//! (the address then reads all ones). Passes with `msix_bir=B table=0x.. pba_bir=B pba=0x..
//! vectors=N accesses=K rom=ok` (K: BAR0 page-0 register accesses of the round trips).
//! irvmm's integration test then checks from its exit log which of them trapped.

use super::Context;
use crate::mmio::Mmio;
use crate::msi::MsiX;
use crate::pci::{
    Function, BAR_IO, BAR_MEMORY_MASK, BAR_STRIDE, BAR_TYPE_64, BAR_TYPE_MASK, COMMAND_MEMORY,
    REG_BAR0, REG_COMMAND, REG_HEADER_TYPE, TYPE0_BARS,
};
use crate::prng::Rng;
use crate::report::{Outcome, Text};
use crate::testdev::{self, Testdev};
use crate::{sprintln, text};

/// Round trips over the registers in [`PLAIN_REGISTERS`].
const ROUNDS: u32 = 125;
/// BAR0 page-0 registers that only store what is written (no action on write).
const PLAIN_REGISTERS: [u64; 8] = [
    testdev::REG_SCRATCH,
    testdev::REG_TIMER_VECTOR,
    testdev::REG_TIMER_PERIOD,
    testdev::REG_DMA_SRC,
    testdev::REG_DMA_SRC + 4,
    testdev::REG_DMA_DST,
    testdev::REG_DMA_DST + 4,
    testdev::REG_DMA_COUNT,
];
/// Seed of the values written.
const SEED: u64 = 0x7e57_d001;

/// Class code / revision register.
const REG_CLASS_REVISION: u16 = 0x08;
/// Class code shift in it.
const CLASS_SHIFT: u32 = 8;
/// Interrupt pin register (1 = INTA).
const REG_INTERRUPT_PIN: u16 = 0x3d;
/// Expansion ROM BAR.
const REG_ROM: u16 = 0x30;
/// Expansion ROM BAR bit 0: decode enable.
const ROM_ENABLE: u32 = 1 << 0;
/// Expansion ROM BAR address bits (31:11).
const ROM_ADDRESS_MASK: u32 = 0xffff_f800;
/// The ROM's first two bytes.
const ROM_SIGNATURE: [u8; 2] = [0x55, 0xaa];
/// Offset of the test device's ROM string.
const ROM_STRING_AT: u64 = 0x10;
/// The test device's ROM string.
const ROM_STRING: &[u8] = b"IRVMM-TESTDEV-ROM";
/// irvmm's 32-bit PCI MMIO window (the DSDT's host bridge _CRS; q35's ends there too).
const PCI_WINDOW_START: u64 = 0xc000_0000;
const PCI_WINDOW_END: u64 = 0xfe00_0000;

/// One sized BAR.
#[derive(Clone, Copy, Debug, Default)]
struct Bar {
    /// Programmed address (0 when unassigned or absent).
    address: u64,
    /// Size in bytes (0: absent).
    size: u64,
    /// 64-bit memory BAR (takes the next register too).
    is_64: bool,
    /// I/O BAR.
    is_io: bool,
}

/// Sizes BAR `index` of `f` (decoding must be off); restores it. Returns the BAR.
fn size_bar(f: Function, index: u8) -> Bar {
    let at = REG_BAR0 + BAR_STRIDE * u16::from(index);
    let low = f.read32(at);
    f.write32(at, u32::MAX);
    let mask_low = f.read32(at);
    f.write32(at, low);
    if low & BAR_IO != 0 {
        let size = (!(mask_low & !0x3)).wrapping_add(1) & 0xffff;
        return Bar {
            address: u64::from(low & !0x3),
            size: if mask_low & !0x3 == 0 {
                0
            } else {
                u64::from(size)
            },
            is_64: false,
            is_io: true,
        };
    }
    let is_64 = low & BAR_TYPE_MASK == BAR_TYPE_64 && index + 1 < TYPE0_BARS;
    let mut address = u64::from(low & BAR_MEMORY_MASK);
    let mut mask = u64::from(mask_low & BAR_MEMORY_MASK) | 0xffff_ffff_0000_0000;
    if is_64 {
        let high = f.read32(at + BAR_STRIDE);
        f.write32(at + BAR_STRIDE, u32::MAX);
        let mask_high = f.read32(at + BAR_STRIDE);
        f.write32(at + BAR_STRIDE, high);
        address |= u64::from(high) << 32;
        mask = (mask & 0xffff_ffff) | (u64::from(mask_high) << 32);
    }
    let size = if mask_low & BAR_MEMORY_MASK == 0 {
        0
    } else {
        (!mask).wrapping_add(1)
    };
    Bar {
        address,
        size,
        is_64,
        is_io: false,
    }
}

/// Sizes every BAR of `f` with its decoding off, restoring the BARs and the command
/// register; checks each register reads back as it was.
fn size_bars(f: Function) -> Result<[Bar; TYPE0_BARS as usize], Text> {
    let mut bars = [Bar::default(); TYPE0_BARS as usize];
    let mut before = [0u32; TYPE0_BARS as usize];
    for (i, b) in before.iter_mut().enumerate() {
        *b = f.read32(REG_BAR0 + BAR_STRIDE * i as u16);
    }
    let command = f.read16(REG_COMMAND);
    f.write16(REG_COMMAND, command & !COMMAND_MEMORY);
    let mut index = 0u8;
    while index < TYPE0_BARS {
        let bar = size_bar(f, index);
        bars[usize::from(index)] = bar;
        index += if bar.is_64 { 2 } else { 1 };
    }
    f.write16(REG_COMMAND, command);
    for (i, &b) in before.iter().enumerate() {
        let now = f.read32(REG_BAR0 + BAR_STRIDE * i as u16);
        if now != b {
            return Err(text!(
                "{} BAR register {} reads 0x{:08x} after sizing, was 0x{:08x}",
                f,
                i,
                now,
                b
            ));
        }
    }
    Ok(bars)
}

/// The lowest address at or above every memory BAR on bus 0 inside the 32-bit PCI window,
/// aligned to `align`.
fn free_window_address(align: u64) -> Result<u64, Text> {
    let mut found = [Function {
        bus: 0,
        device: 0,
        function: 0,
    }; crate::pci::BUS_FUNCTIONS];
    let n = crate::pci::all_on_bus0(&mut found).min(found.len());
    let mut top = PCI_WINDOW_START;
    for &f in &found[..n] {
        if f.read8(REG_HEADER_TYPE) & 0x7f != 0 {
            continue;
        }
        for bar in size_bars(f)? {
            let end = bar.address.saturating_add(bar.size);
            if !bar.is_io
                && bar.size != 0
                && bar.address >= PCI_WINDOW_START
                && end <= PCI_WINDOW_END
            {
                top = top.max(end);
            }
        }
    }
    let at = top.div_ceil(align) * align;
    if at + align > PCI_WINDOW_END {
        return Err(text!(
            "no room for a 0x{:x}-byte ROM in the PCI window (BARs end at 0x{:x})",
            align,
            top
        ));
    }
    Ok(at)
}

/// Round-trips the plain registers; returns the number of BAR0 accesses made.
fn round_trips(dev: &Testdev) -> Result<u32, Text> {
    let mut rng = Rng::new(SEED);
    let mut accesses = 0;
    for round in 0..ROUNDS {
        for &reg in &PLAIN_REGISTERS {
            let value = rng.next_u32();
            dev.write(reg, value);
            let back = dev.read(reg);
            accesses += 2;
            if back != value {
                return Err(text!(
                    "round {}: BAR0+0x{:x} reads 0x{:08x} after writing 0x{:08x}",
                    round,
                    reg,
                    back,
                    value
                ));
            }
        }
    }
    // Leave the DMA registers harmless.
    dev.write(testdev::REG_DMA_COUNT, 0);
    Ok(accesses + 1)
}

/// Sizes, enables, reads, disables the expansion ROM.
fn check_rom(f: Function) -> Result<u64, Text> {
    let saved = f.read32(REG_ROM);
    f.write32(REG_ROM, ROM_ADDRESS_MASK);
    let mask = f.read32(REG_ROM) & ROM_ADDRESS_MASK;
    f.write32(REG_ROM, saved & !ROM_ENABLE);
    if mask == 0 {
        return Err(text!("{} has no expansion ROM (the ROM BAR sizes to 0)", f));
    }
    let size = u64::from((!mask).wrapping_add(1));
    let base = free_window_address(size)?;
    f.write32(REG_ROM, base as u32 | ROM_ENABLE);
    let rom = Mmio::new("expansion ROM", base, size)?;
    let mut head = [0u8; 48];
    for (i, chunk) in head.chunks_mut(4).enumerate() {
        chunk.copy_from_slice(&rom.read32(4 * i as u64).to_le_bytes());
    }
    let string_at = ROM_STRING_AT as usize;
    let ok =
        head[..2] == ROM_SIGNATURE && head[string_at..string_at + ROM_STRING.len()] == *ROM_STRING;
    f.write32(REG_ROM, saved & !ROM_ENABLE);
    let after = rom.read32(0);
    if !ok {
        return Err(text!(
            "ROM at 0x{:x} ({} bytes) starts {:02x?}, expected 55 aa and \"IRVMM-TESTDEV-ROM\" at 0x10",
            base,
            size,
            &head[..]
        ));
    }
    if after != u32::MAX {
        return Err(text!(
            "ROM at 0x{:x} still reads 0x{:08x} after its decoding was disabled",
            base,
            after
        ));
    }
    sprintln!("vfio-basic: ROM of {} bytes read at 0x{:x}", size, base);
    Ok(size)
}

/// Runs the scenario.
pub fn run(_ctx: &Context) -> Outcome {
    let dev = Testdev::find()?;
    let f = dev.function;
    let class = f.read32(REG_CLASS_REVISION) >> CLASS_SHIFT;
    let header = f.read8(REG_HEADER_TYPE);
    let pin = f.read8(REG_INTERRUPT_PIN);
    if class != testdev::CLASS || header & 0x7f != 0 || pin != 1 {
        return Err(text!(
            "{}: class 0x{:06x} header type 0x{:x} interrupt pin {}, expected 0x{:06x}, 0, 1",
            f,
            class,
            header,
            pin,
            testdev::CLASS
        ));
    }
    let bars = size_bars(f)?;
    let bar0 = bars[0];
    if bar0.is_io || !bar0.is_64 || bar0.size != testdev::BAR0_SIZE {
        return Err(text!(
            "{} BAR0 is {:?}, expected a 64-bit memory BAR of 0x{:x} bytes",
            f,
            bar0,
            testdev::BAR0_SIZE
        ));
    }
    let msix = MsiX::find(f)?;
    let (table, pba) = (msix.table_location(), msix.pba_location());
    for (what, at) in [("table", table), ("PBA", pba)] {
        let sized = bars.get(usize::from(at.bir)).map_or(0, |b| b.size);
        if u64::from(at.offset) >= sized {
            return Err(text!(
                "MSI-X {} at BAR{}+0x{:x}, but that BAR is 0x{:x} bytes",
                what,
                at.bir,
                at.offset,
                sized
            ));
        }
    }
    let (id, vectors, flags) = (
        dev.read(testdev::REG_ID),
        dev.read(testdev::REG_VECTORS),
        dev.read(testdev::REG_FLAGS),
    );
    if vectors != u32::from(msix.vectors()) {
        return Err(text!(
            "VECTORS reads {} but the MSI-X capability has {}",
            vectors,
            msix.vectors()
        ));
    }
    // An emulated table starts with every entry masked (PCI 3.0 6.8.2.9).
    if flags & testdev::FLAGS_DIRECT_MSIX == 0 && !msix.is_masked(0)? {
        return Err(text!(
            "MSI-X entry 0 at BAR{}+0x{:x} is not masked after reset",
            table.bir,
            table.offset
        ));
    }
    sprintln!(
        "vfio-basic: {} BAR0 0x{:x} (64-bit, 0x{:x} bytes) ID 0x{:08x} VECTORS {} FLAGS 0x{:x}; MSI-X table BAR{}+0x{:x}, PBA BAR{}+0x{:x}",
        f,
        bar0.address,
        bar0.size,
        id,
        vectors,
        flags,
        table.bir,
        table.offset,
        pba.bir,
        pba.offset
    );
    let accesses = round_trips(&dev)?;
    check_rom(f)?;
    Ok(text!(
        "msix_bir={} table=0x{:x} pba_bir={} pba=0x{:x} vectors={} accesses={} rom=ok",
        table.bir,
        table.offset,
        pba.bir,
        pba.offset,
        vectors,
        accesses
    ))
}
