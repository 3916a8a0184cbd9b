//! `probe=pvpanic` and `probe=pvpanic-pci`: the guest reports a panic the way Linux's
//! pvpanic drivers do (`drivers/misc/pvpanic/`).
//!
//! - `pvpanic` finds the ISA device as Linux's `pvpanic-mmio` driver does: the DSDT device
//!   whose `_HID` is `"QEMU0001"`, and the first `IO` descriptor of its `_CRS` (a byte scan
//!   of the AML, like the `_S5_` scan of `poweroff`).
//! - `pvpanic-pci` finds the PCI function 1b36:0011 on bus 0 and uses its memory BAR 0, as
//!   Linux's `pvpanic-pci` does (memory decoding enabled first).
//!
//! Both then read the register (the supported events; PANICKED, bit 0, must be among them),
//! send CRASH_LOADED (bit 1) if supported, which must not stop the VM, print
//! `PROBE PASS <name> requesting panic`, and send PANICKED with a byte write. The VMM must
//! end the VM (irvmm: status 123); `PROBE FAIL ... still running` after 2 s otherwise.

use super::{platform, Context};
use crate::acpi::HEADER_LEN;
use crate::clock::Clock;
use crate::mmio::Mmio;
use crate::pci::{self, COMMAND_MEMORY};
use crate::phys::u16_at;
use crate::report::{self, Outcome, Text};
use crate::{sprintln, text, x86};

/// pvpanic event: the guest panicked.
const PVPANIC_PANICKED: u8 = 1 << 0;
/// pvpanic event: the guest panicked and starts its crash kernel.
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// The PCI function's vendor and device IDs.
const PVPANIC_PCI_VENDOR: u16 = 0x1b36;
const PVPANIC_PCI_DEVICE: u16 = 0x0011;
/// Bytes of the PCI register window the probe maps (the smallest memory BAR).
const PVPANIC_PCI_WINDOW: u64 = 16;
/// The ACPI ID of the ISA device, as an AML string: StringPrefix, the ID, NUL.
const QEMU0001_AML: &[u8] = b"\x0dQEMU0001\x00";
/// How far after the `_HID` the `_CRS` may start (bytes of AML).
const CRS_SEARCH_WINDOW: usize = 128;
/// How far into the `_CRS` the IO descriptor may start.
const IO_SEARCH_WINDOW: usize = 16;
/// Small resource item: IO port descriptor (type 0x08, length 7).
const IO_DESCRIPTOR: u8 = 0x47;

/// Where the register is.
#[derive(Clone, Copy)]
enum Register {
    Port(u16),
    Memory(Mmio),
}

impl Register {
    fn read(&self) -> u8 {
        match *self {
            // SAFETY: reading the pvpanic register has no side effect.
            Register::Port(port) => unsafe { x86::inb(port) },
            Register::Memory(m) => m.read8(0),
        }
    }

    fn write(&self, value: u8) {
        match *self {
            // SAFETY: the pvpanic register; reporting events is this scenario's aim.
            Register::Port(port) => unsafe { x86::outb(port, value) },
            Register::Memory(m) => m.write8(0, value),
        }
    }
}

/// The I/O port of the DSDT's `QEMU0001` device.
fn isa_port(ctx: &Context) -> Result<u16, Text> {
    let tables = platform::tables(ctx)?;
    let dsdt = tables.find(b"DSDT").ok_or_else(|| text!("no DSDT"))?;
    let aml = dsdt.data.get(HEADER_LEN..).unwrap_or(&[]);
    let hid = aml
        .windows(QEMU0001_AML.len())
        .position(|w| w == QEMU0001_AML)
        .ok_or_else(|| text!("the DSDT has no device with _HID \"QEMU0001\""))?;
    let after = &aml[hid + QEMU0001_AML.len()..];
    let near = &after[..after.len().min(CRS_SEARCH_WINDOW)];
    let crs = near
        .windows(4)
        .position(|w| w == b"_CRS")
        .ok_or_else(|| text!("the QEMU0001 device has no _CRS near its _HID"))?;
    let body = &near[crs + 4..];
    let io = body[..body.len().min(IO_SEARCH_WINDOW)]
        .iter()
        .position(|&b| b == IO_DESCRIPTOR)
        .ok_or_else(|| text!("the QEMU0001 device's _CRS has no IO descriptor"))?;
    // IO descriptor: tag, information, minimum base (16 bits), maximum base, ...
    u16_at(&body[io..], 2).ok_or_else(|| text!("the QEMU0001 IO descriptor is truncated"))
}

/// The PCI function's register window.
fn pci_window() -> Result<(Mmio, Text), Text> {
    let f = pci::find_on_bus0(PVPANIC_PCI_VENDOR, PVPANIC_PCI_DEVICE).ok_or_else(|| {
        text!(
            "no PCI function {:04x}:{:04x} on bus 0",
            PVPANIC_PCI_VENDOR,
            PVPANIC_PCI_DEVICE
        )
    })?;
    let bar = f.memory_bar(0)?;
    f.enable_command(COMMAND_MEMORY);
    Ok((
        Mmio::new("pvpanic", bar, PVPANIC_PCI_WINDOW)?,
        text!("PCI {} BAR0 0x{:x}", f, bar),
    ))
}

fn report_panic(reg: Register, place: &Text) -> Outcome {
    let clock = Clock::start()?;
    let events = reg.read();
    sprintln!("pvpanic: {} supports events 0x{:x}", place, events);
    if events & PVPANIC_PANICKED == 0 {
        return Err(text!(
            "{} does not offer PANICKED (reads 0x{:x})",
            place,
            events
        ));
    }
    if events & PVPANIC_CRASH_LOADED != 0 {
        reg.write(PVPANIC_CRASH_LOADED);
        sprintln!("pvpanic: CRASH_LOADED sent, still running");
    }
    report::announce_pass(&text!("requesting panic"));
    reg.write(PVPANIC_PANICKED);
    platform::still_running(&clock, &text!("writing PANICKED to {}", place))
}

/// Runs `pvpanic` (the ISA device from the DSDT).
pub fn run_isa(ctx: &Context) -> Outcome {
    let port = isa_port(ctx)?;
    report_panic(Register::Port(port), &text!("ISA port 0x{:x}", port))
}

/// Runs `pvpanic-pci` (the PCI function).
pub fn run_pci(_ctx: &Context) -> Outcome {
    let (window, place) = pci_window()?;
    report_panic(Register::Memory(window), &place)
}
