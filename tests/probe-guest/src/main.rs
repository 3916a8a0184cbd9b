//! irvmm's probe guest: a freestanding x86-64 program booted by PVH (`probe.elf`) or by the
//! Linux boot protocol (`probe.bzImage`), on irvmm and on QEMU, that runs one test scenario,
//! named by `probe=NAME` on the command line, and reports through COM1 and the debug-exit
//! port (see [`report`]).
//!
//! Built for the host target with `no_std` and the flags in `.cargo/config.toml`; the entry
//! code in [`entry`] leaves the BSP in long mode with the first 4 GiB identity-mapped.

#![no_std]
#![no_main]
// Failure reasons are fixed-size `Text`s returned by value: there is no allocator to box them,
// and failing is the end of a run, so their size does not matter.
#![allow(clippy::result_large_err)]

// Parsers and helpers that cover more of the tables and hardware than the scenarios use.
#[allow(dead_code)]
mod acpi;
// The AMD-Vi driver covers more of the unit than the scenarios use.
#[allow(dead_code)]
mod amdvi;
mod ap;
mod apic;
mod bootparams;
mod clock;
mod cpus;
mod edu;
#[allow(dead_code)]
mod entry;
mod idt;
mod ioapic;
mod irq;
mod kvm;
mod mem;
mod mmio;
mod msi;
mod pci;
mod phys;
mod prng;
mod pvh;
mod raw;
mod report;
#[allow(dead_code)]
mod scenarios;
mod serial;
mod tally;
// The whole register map of the test device's contract, not only what the scenarios use.
#[allow(dead_code)]
mod testdev;
mod virtio;
mod vtd;
#[allow(dead_code)]
mod x86;

use core::panic::PanicInfo;

use entry::Entry;
use report::MAX_NAME;
use scenarios::Context;

/// Rust entry point on the BSP, called by the entry code with the address of the boot
/// information and the [`entry::Entry`] it came through (`hvm_start_info` for PVH,
/// `boot_params` for the Linux protocols).
#[no_mangle]
pub extern "C" fn probe_main(info_addr: u64, entry_raw: u64) -> ! {
    serial::init();
    idt::init();
    // Start on a fresh line: firmware may have left the cursor mid-line.
    sprintln!();
    sprintln!("probe: irvmm probe guest {}", env!("CARGO_PKG_VERSION"));

    let start_info_addr = match Entry::from_raw(entry_raw) {
        Some(Entry::Pvh) => {
            sprintln!("probe: entry=pvh start_info=0x{:x}", info_addr);
            info_addr
        }
        Some(entry) => match bootparams::start_info_from(info_addr) {
            Ok(c) => {
                sprintln!(
                    "probe: entry={} boot_params=0x{:x} protocol={}.{:02} e820_entries={} initrd=0x{:x}+0x{:x}",
                    entry.name(),
                    info_addr,
                    c.protocol >> 8,
                    c.protocol & 0xff,
                    c.e820_entries,
                    c.ramdisk.0,
                    c.ramdisk.1
                );
                c.start_info
            }
            Err(reason) => report::finish("none", Err(reason)),
        },
        None => report::finish("none", Err(text!("unknown entry kind {}", entry_raw))),
    };

    let start_info = match pvh::StartInfo::read(start_info_addr) {
        Ok(si) => si,
        Err(reason) => report::finish("none", Err(reason)),
    };
    let cmdline = start_info.cmdline();
    sprintln!("probe: cmdline \"{}\"", Printable(cmdline));

    let name = match pvh::cmdline_value(cmdline, "probe") {
        None => report::finish("none", Err(text!("no probe=NAME on the command line"))),
        Some(raw) => match scenario_name(raw) {
            Some(name) => name,
            None => report::finish(
                "none",
                Err(text!("bad scenario name \"{}\"", Printable(raw))),
            ),
        },
    };
    report::set_current(name);

    let outcome = match scenarios::find(name) {
        Some(scenario) => {
            let ctx = Context {
                start_info,
                cmdline,
            };
            (scenario.run)(&ctx)
        }
        None => Err(text!("unknown scenario")),
    };
    report::finish(name, outcome)
}

/// `raw` as a scenario name: 1 to [`MAX_NAME`] characters from `[A-Za-z0-9_.-]`.
fn scenario_name(raw: &[u8]) -> Option<&str> {
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if raw.is_empty() || raw.len() > MAX_NAME || !raw.iter().all(ok) {
        return None;
    }
    core::str::from_utf8(raw).ok()
}

/// Display adaptor printing bytes as ASCII, other bytes as `?`, truncated to 200 bytes.
struct Printable<'a>(&'a [u8]);

impl core::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for &b in self.0.iter().take(200) {
            let c = if b == b' ' || b.is_ascii_graphic() {
                b as char
            } else {
                '?'
            };
            core::fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => report::fail_now(text!(
            "panic at {}:{}: {}",
            l.file(),
            l.line(),
            info.message()
        )),
        None => report::fail_now(text!("panic: {}", info.message())),
    }
}

/// Never called: unwinding is off (`panic = "abort"`), but the prebuilt `core` (compiled for
/// unwinding) refers to the personality routine, and without LTO (dev profile) that reference
/// survives to the link.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
