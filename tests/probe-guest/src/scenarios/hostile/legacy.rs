//! Garbage for the rest of the platform: the I/O APIC window, COM1, the platform control
//! ports, and (irvmm only) unclaimed ports and MMIO, which must read all ones.

use super::pci::{overlaps, Config};
use super::{
    Garbage, Window, PM1_PORTS, RESET_CONTROL_PORT, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT, SLP_EN,
};
use crate::ioapic::{IoApic, REG_ID, REG_VERSION, RTE_MASKED, RTE_READ_ONLY};
use crate::raw::Width;
use crate::report::Text;
use crate::serial::{self, COM1};
use crate::{sprintln, text};

/// Most I/O APIC pins (the version register's 8-bit highest-entry field, plus one).
const MAX_PINS: usize = 256;
/// The I/O APIC's register page.
const IOAPIC_WINDOW_BYTES: u64 = 0x1000;
/// IOREGSEL, IOWIN and the EOI register (version 0x20).
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOAPIC_EOI: u64 = 0x40;
/// IOREGSEL values below this name the ID, version, arbitration and redirection registers
/// of a 24-pin I/O APIC.
const IOAPIC_REGISTERS: u64 = 0x40;
/// Percentage of I/O APIC accesses that write.
const IOAPIC_WRITE_PERCENT: u32 = 65;
/// Percentage of IOREGSEL writes that name a register that exists.
const IOREGSEL_AIMED_PERCENT: u32 = 70;
/// Percentage of accesses left misaligned.
const MISALIGNED_PERCENT: u32 = 20;

/// Ports of COM1.
const COM1_PORTS: u64 = 8;
/// Percentage of COM1 accesses that write.
const COM1_WRITE_PERCENT: u32 = 60;
/// Bytes written to THR are mapped into the printable ASCII range `!`..`~`.
const PRINTABLE_FIRST: u8 = 0x21;
const PRINTABLE_COUNT: u8 = 94;

/// I/O ports of the debug-exit device (all writes to them are withheld).
const DEBUG_EXIT_PORTS: [u16; 2] = [0x501, 0x502];
/// Percentage of platform-control accesses that write.
const CONTROL_WRITE_PERCENT: u32 = 70;

/// The ports irvmm decodes: COM1, debug exit, the ACPI PM1 registers, PCI configuration
/// (0xcf8-0xcff: CONFIG_ADDRESS, reset control, CONFIG_DATA).
const IRVMM_PORTS: [(u64, u64); 4] = [(0x3f8, 8), (0x501, 2), PM1_PORTS, (0xcf8, 8)];
/// Size of the port space.
const PORT_SPACE: u64 = 0x1_0000;
/// The MMIO hole searched for unclaimed addresses: irvmm's end of low RAM (where ECAM
/// starts) up to the last MiB below 4 GiB (where KVM may keep private pages).
const HOLE_START: u64 = 0xb000_0000;
const HOLE_END: u64 = 0xfff0_0000;
/// Random picks before an unclaimed access gives up (the excluded ranges are a small part).
const PICK_TRIES: u32 = 32;

/// The I/O APIC's registers as found, to put back.
pub(super) struct IoApicState {
    rtes: [u64; MAX_PINS],
    pins: usize,
    id: u32,
    version: u32,
}

impl IoApicState {
    /// Reads the ID, version and every redirection entry.
    pub(super) fn save(io: &IoApic) -> IoApicState {
        let pins = (io.pins as usize).min(MAX_PINS);
        let mut rtes = [0u64; MAX_PINS];
        for (pin, rte) in (0u32..).zip(rtes[..pins].iter_mut()) {
            *rte = io.rte(pin);
        }
        IoApicState {
            rtes,
            pins,
            id: io.read(REG_ID),
            version: io.read(REG_VERSION),
        }
    }

    /// Masks every pin (the saved entries otherwise).
    pub(super) fn mask_all(&self, io: &IoApic) {
        for (pin, &rte) in (0u32..).zip(self.rtes[..self.pins].iter()) {
            io.set_rte(pin, rte | RTE_MASKED);
        }
    }

    /// Writes the ID and every entry back and checks them and the version register.
    pub(super) fn restore(&self, io: &IoApic) -> Result<(), Text> {
        io.write(REG_ID, self.id);
        for (pin, &rte) in (0u32..).zip(self.rtes[..self.pins].iter()) {
            io.set_rte(pin, rte);
        }
        let (id, version) = (io.read(REG_ID), io.read(REG_VERSION));
        if id != self.id || version != self.version {
            return Err(text!(
                "I/O APIC after restoring: ID 0x{:x} version 0x{:x} (were 0x{:x} 0x{:x})",
                id,
                version,
                self.id,
                self.version
            ));
        }
        for (pin, &rte) in (0u32..).zip(self.rtes[..self.pins].iter()) {
            let now = io.rte(pin);
            if now & !RTE_READ_ONLY != rte & !RTE_READ_ONLY {
                return Err(text!(
                    "I/O APIC pin {} reads 0x{:x} after restoring 0x{:x}",
                    pin,
                    now,
                    rte
                ));
            }
        }
        Ok(())
    }
}

/// `count` accesses to the I/O APIC window: IOREGSEL (mostly naming real registers), IOWIN,
/// the EOI register, anywhere in the page.
pub(super) fn ioapic(g: &mut Garbage, io: &IoApic, count: u32) -> Result<(), Text> {
    let window = Window::new("I/O APIC", io.base, IOAPIC_WINDOW_BYTES)?;
    for _ in 0..count {
        let width = g.width();
        let mut offset = match g.rng.below(10) {
            0..=3 => IOREGSEL,
            4..=7 => IOWIN,
            8 => IOAPIC_EOI,
            _ => g.rng.below(IOAPIC_WINDOW_BYTES),
        };
        if g.rng.chance(MISALIGNED_PERCENT) {
            offset += g.rng.below(width.bytes());
        } else {
            offset &= !(width.bytes() - 1);
        }
        if !g.rng.chance(IOAPIC_WRITE_PERCENT) {
            g.read(&window, offset, width);
            continue;
        }
        let value = if offset == IOREGSEL && g.rng.chance(IOREGSEL_AIMED_PERCENT) {
            g.rng.below(IOAPIC_REGISTERS)
        } else {
            g.rng.next_u64()
        };
        g.write(&window, offset, width, value);
    }
    Ok(())
}

/// `count` accesses to COM1's eight ports (bytes written to THR made printable), then
/// COM1 reinitialised for the report.
pub(super) fn com1(g: &mut Garbage, count: u32) {
    for _ in 0..count {
        let port = COM1 + g.rng.below(COM1_PORTS) as u16;
        let width = g.port_width();
        if !g.rng.chance(COM1_WRITE_PERCENT) {
            g.port_read(port, width);
            continue;
        }
        let mut value = g.rng.next_u32();
        if port == COM1 {
            let printable = PRINTABLE_FIRST + (value as u8) % PRINTABLE_COUNT;
            value = (value & !0xff) | u32::from(printable);
        }
        g.port_write(port, width, value);
    }
    serial::init();
    // End the line the garbage may have started.
    sprintln!();
}

/// `count` accesses to the ACPI PM1 registers, the reset control register and the
/// debug-exit ports; [`Garbage::port_write`] withholds the writes that would end the VM.
pub(super) fn controls(g: &mut Garbage, count: u32) {
    let ports = [
        SLEEP_CONTROL_PORT,
        SLEEP_STATUS_PORT,
        RESET_CONTROL_PORT,
        DEBUG_EXIT_PORTS[0],
        DEBUG_EXIT_PORTS[1],
    ];
    for _ in 0..count {
        let port = g.rng.pick(&ports).unwrap_or(SLEEP_STATUS_PORT);
        let width = g.port_width();
        if !g.rng.chance(CONTROL_WRITE_PERCENT) {
            g.port_read(port, width);
            continue;
        }
        let mut value = g.rng.next_u32();
        if port == SLEEP_CONTROL_PORT && g.rng.chance(50) {
            // A sleep request; the S5 ones are withheld.
            value |= u32::from(SLP_EN);
        }
        g.port_write(port, width, value);
    }
}

/// `count` writes and reads of ports nothing decodes on irvmm (outside its devices and the
/// BARs' I/O ranges): every read must be all ones.
pub(super) fn unclaimed_ports(g: &mut Garbage, config: &Config, count: u32) -> Result<(), Text> {
    for _ in 0..count {
        let Some((port, width)) = free_port(g, config.io_ranges()) else {
            continue;
        };
        let value = g.rng.next_u32();
        g.port_write(port, width, value);
        let got = g.port_read(port, width);
        g.expect_ones(u64::from(got), width, || {
            text!("unclaimed port 0x{:x}", port)
        })?;
    }
    Ok(())
}

/// A random port access touching none of irvmm's ports or `decoded`.
fn free_port(g: &mut Garbage, decoded: &[(u64, u64)]) -> Option<(u16, Width)> {
    for _ in 0..PICK_TRIES {
        let width = g.port_width();
        let port = g.rng.below(PORT_SPACE - width.bytes() + 1);
        let taken = IRVMM_PORTS
            .iter()
            .chain(decoded)
            .any(|&(base, len)| overlaps(port, width.bytes(), base, len));
        if !taken {
            return u16::try_from(port).ok().map(|p| (p, width));
        }
    }
    None
}

/// `count` writes and reads of MMIO in the hole that nothing decodes (outside `excluded`):
/// every read must be all ones.
pub(super) fn unclaimed_mmio(
    g: &mut Garbage,
    excluded: &[(u64, u64)],
    count: u32,
) -> Result<(), Text> {
    let hole = Window::new("the MMIO hole", HOLE_START, HOLE_END - HOLE_START)?;
    for _ in 0..count {
        let mut pick = None;
        for _ in 0..PICK_TRIES {
            let width = g.width();
            let offset = hole.fit(g.rng.below(hole.len()), width);
            let addr = hole.base() + offset;
            if !excluded
                .iter()
                .any(|&(base, len)| overlaps(addr, width.bytes(), base, len))
            {
                pick = Some((offset, width));
                break;
            }
        }
        let Some((offset, width)) = pick else {
            continue;
        };
        let value = g.rng.next_u64();
        g.write(&hole, offset, width, value);
        let got = g.read(&hole, offset, width);
        g.expect_ones(got, width, || {
            text!("unclaimed MMIO 0x{:x}", hole.base() + offset)
        })?;
    }
    Ok(())
}
