//! `probe=hostile`: garbage into every register window the platform emulates, then proof
//! that the VMM still delivers interrupts correctly (the `ir-basic` steps) and exits cleanly.
//!
//! A VMM's device models are its attack surface: whatever a guest writes to them, the VMM
//! must neither crash nor hang, and must keep serving the guest once the guest behaves again.
//! This scenario plays the hostile guest, deterministically: every choice comes from a
//! SplitMix64 generator seeded with `probe.seed=N` (decimal, default [`DEFAULT_SEED`]), so a
//! failure replays with the same seed. `probe.rounds=K` (default 1, at most
//! [`MAX_ROUNDS`]) repeats the garbage phase K times before the recovery.
//!
//! One round (about 3500 accesses of 1, 2, 4 or 8 bytes, often misaligned; about a second on
//! the build machines), on the BSP with interrupts off and the APs not started:
//!
//! 1. PCI configuration space through ports 0xcf8/0xcfc (random addresses, the enable bit
//!    sometimes clear, reserved and type bits, every byte lane) and through ECAM (the MCFG's
//!    window: random bus, device, function and offset), aimed at existing functions half of
//!    the time; reads of functions that do not exist must be all ones. Reads at wherever the
//!    edu devices' BARs point now (moved, overlapping, sized). Then every function's
//!    command register, BARs, expansion ROM, interrupt line and MSI/MSI-X control are put
//!    back as they were and checked ([`pci`]).
//! 2. The edu devices' BARs: registers (DMA ones included), the rest of the 1 MiB register
//!    BAR, the MSI-X table (entries with plausible and implausible messages) and PBA, with
//!    MSI and MSI-X enabled on garbage messages but bus mastering off, so every raise is
//!    dropped by the device.
//! 3. The I/O APIC window: IOREGSEL, IOWIN (redirection entries included), the EOI register.
//! 4. The VT-d register page (every offset, GCMD with random commands, IQT inside, beyond and
//!    wrapping around the queue, IQA sizes and descriptor widths, IRTA in and beyond RAM,
//!    fault-recording registers, FSTS) with IQA always pointing at a queue of random
//!    descriptors (valid, invalid, unknown types) the probe wrote ([`vtd`]). Then two
//!    deliveries through the state the garbage left: with remapping off, edu's MSI in
//!    compatibility format must reach the BSP exactly once while every other source's route
//!    is garbage (the VMM commits its whole route table for that delivery); with IRTA beyond
//!    RAM and remapping on, a remappable MSI must be blocked (irvmm must record fault 0x23);
//!    last, through a table of random entries (half well-formed) all aimed at an APIC ID no
//!    CPU has, 64 edu-msix vectors with random messages, edu's MSI and COM1's pin with a
//!    random remappable entry are fired (compatibility format blocked): nothing may reach
//!    the BSP, and the unit's fault records fill up.
//! 5. The I/O APIC's entries and the PCI functions are restored (sources disarmed), then
//!    COM1's eight ports get garbage with the I/O APIC's pins masked (bytes written to THR are
//!    printable, so the console stays text); COM1 is reinitialised afterwards.
//! 6. The platform controls: ACPI PM1_STS (0x600) and PM1_CNT's high byte (0x605), reset
//!    control (0xcf9) and debug exit (0x501/0x502), except the writes that legitimately end
//!    the VM, which are withheld (read instead): SLP_EN with SLP_TYP = 5 (S5) at 0x605, anything at
//!    0x501-0x502, RST_CPU (bit 2) at 0xcf9. The same rule covers every port write of the
//!    scenario (multi-byte accesses by each byte lane; a dword at 0xcf8 is CONFIG_ADDRESS).
//! 7. On irvmm only (DMAR OEM ID "IRVMM "): unclaimed ports (0-0xffff outside its devices)
//!    and unclaimed MMIO in the hole between the ECAM window and 0xfff00000 (outside the
//!    ECAM window, the I/O APIC, the VT-d unit, the local APIC window and the BARs): writes,
//!    then reads that must be all ones.
//! 8. The VT-d unit is reset the way a guest would: remapping, queued invalidation and
//!    translation off through GCMD, FSTS's write-1-to-clear bits and every fault record
//!    cleared, the event interrupts masked, the pointers zeroed; the BSP must then have no
//!    interrupt pending or in service other than its own timer tick.
//!
//! On a platform with an AMD-Vi unit (an IVRS instead of a DMAR, irvmm's `--iommu amd`),
//! step 4 fills the AMD-Vi register window instead ([`amdvi`]: the control register with
//! random commands, the command buffer's tail and head over a buffer of random commands,
//! base, pointer, status and XT interrupt registers), then checks three deliveries: with the
//! unit off, edu's compatibility MSI must reach the BSP exactly once; with edu's interrupt
//! table beyond RAM, its remapped MSI must be blocked (irvmm must log
//! PAGE_TAB_HARDWARE_ERROR); through random device table entries and random 128-bit IRTEs
//! (remapped ones aimed at APIC IDs no CPU has, guest-mode ones posting into scratch pages,
//! with the GA log on), 64 edu-msix vectors, edu's MSI and COM1's pin must reach no CPU.
//! Step 8 resets it as a guest would (control cleared, status bits, pointers, bases and XT
//! registers zeroed), and the recovery runs the `amd-ir-basic` steps. The choice between the
//! two units is made by [`iommu`].
//!
//! Writes whose only possible effect is to corrupt the probe itself are not made either: IQA
//! never points into memory the probe uses (only at its garbage queue, or above 4 GiB), wait
//! descriptors in that queue write their status only to a scratch dword, the event control
//! registers (FECTL, IECTL, PECTL) keep their mask bit, and the edu DMA start bit is set only
//! on irvmm (which has no DMA engine; QEMU's would copy to random guest addresses).
//!
//! Recovery: the `ir-basic` steps (queued invalidation and remapping in x2APIC mode, every AP
//! started, edu's MSI remapped to the highest APIC ID, the entry moved with an
//! index-selective invalidation), then `PROBE PASS hostile accesses=N seed=S`, N counting
//! every garbage access (configuration-address writes included).

mod amdvi;
mod iommu;
mod legacy;
mod pci;
mod vtd;

use super::ir_common::{self, Vmm};
use super::smp::{self, Smp};
use super::Context;
use crate::clock::Clock;
use crate::edu::{self, EDU_DEVICE_ID, EDU_MSIX_DEVICE_ID};
use crate::ioapic::{self, IoApic};
use crate::pci::Function;
use crate::phys;
use crate::prng::Rng;
use crate::raw::{self, Width};
use crate::report::{Outcome, Text};
use crate::{apic, irq, pvh, sprintln, text};

/// COM1's ISA IRQ.
const COM1_IRQ: u8 = 4;
/// Seed used without `probe.seed=`.
pub const DEFAULT_SEED: u32 = 1;
/// Most rounds `probe.rounds=` may ask for.
pub const MAX_ROUNDS: u32 = 1000;

/// Accesses per round through the configuration ports (each a CONFIG_ADDRESS write plus a
/// data access, counted as two).
const CONFIG_PORT_ACCESSES: u32 = 250;
/// Accesses per round through ECAM.
const ECAM_ACCESSES: u32 = 400;
/// Reads per round at wherever the configuration garbage moved the edu devices' BARs.
const MOVED_BAR_READS: u32 = 60;
/// Accesses per round to the edu devices' BARs.
const BAR_ACCESSES: u32 = 500;
/// Accesses per round to the I/O APIC window.
const IOAPIC_ACCESSES: u32 = 300;
/// Accesses per round to the IOMMU's registers (the VT-d page or the AMD-Vi window).
const IOMMU_ACCESSES: u32 = 1000;
/// Accesses per round to COM1.
const COM1_ACCESSES: u32 = 200;
/// Accesses per round to the platform control ports.
const CONTROL_ACCESSES: u32 = 60;
/// Unclaimed port accesses per round (irvmm only), each a write and a read.
const UNCLAIMED_PORT_ACCESSES: u32 = 150;
/// Unclaimed MMIO accesses per round (irvmm only), each a write and a read.
const UNCLAIMED_MMIO_ACCESSES: u32 = 150;
/// Reads that were not all ones printed per run on VMMs where that is only observed.
const MAX_PRINTED_ODDITIES: u32 = 4;

/// Vectors the BSP may have pending after a round: its wake-up tick and the spurious vector.
const ALLOWED_PENDING: [u8; 2] = [irq::TIMER_VECTOR, irq::SPURIOUS_VECTOR];

/// A register window the scenario fills with garbage: identity-mapped (checked once).
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    base: u64,
    len: u64,
}

impl Window {
    /// Smallest window: one access of the widest kind must fit.
    const MIN_LEN: u64 = 8;

    /// The window `[base, base + len)`; fails when it is not identity-mapped or too short.
    pub(super) fn new(what: &str, base: u64, len: u64) -> Result<Window, Text> {
        if len < Self::MIN_LEN || !phys::is_mapped(base, len) {
            return Err(text!(
                "{} at 0x{:x}+0x{:x} is not in the probe's identity map",
                what,
                base,
                len
            ));
        }
        Ok(Window { base, len })
    }

    /// First address.
    pub(super) fn base(&self) -> u64 {
        self.base
    }

    /// Length in bytes.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// `offset` moved back as far as needed for a `width` access to end inside the window.
    pub(super) fn fit(&self, offset: u64, width: Width) -> u64 {
        offset.min(self.len - width.bytes())
    }
}

/// What the garbage did so far, for progress lines.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    /// Reads and writes made.
    accesses: u32,
    /// Writes made.
    writes: u32,
    /// Writes withheld (a read made instead) because they would end the VM or let a device
    /// write the probe's memory.
    withheld: u32,
}

/// The garbage generator and its account.
pub(super) struct Garbage {
    /// Every random choice.
    pub(super) rng: Rng,
    seed: u32,
    /// Unclaimed space must read all ones (irvmm); elsewhere mismatches are only printed.
    strict: bool,
    counts: Counts,
    oddities: u32,
}

impl Garbage {
    fn new(seed: u32, strict: bool) -> Garbage {
        Garbage {
            rng: Rng::new(u64::from(seed)),
            seed,
            strict,
            counts: Counts::default(),
            oddities: 0,
        }
    }

    /// Whether the platform is irvmm, whose layout and read values the scenario checks.
    pub(super) fn strict(&self) -> bool {
        self.strict
    }

    /// A random memory access width.
    pub(super) fn width(&mut self) -> Width {
        self.rng.pick(&Width::MEMORY).unwrap_or(Width::Dword)
    }

    /// A random port access width.
    pub(super) fn port_width(&mut self) -> Width {
        self.rng.pick(&Width::PORT).unwrap_or(Width::Byte)
    }

    /// Reads `width` bytes at `offset` (moved back to fit) in `window`.
    pub(super) fn read(&mut self, window: &Window, offset: u64, width: Width) -> u64 {
        let offset = window.fit(offset, width);
        self.counts.accesses += 1;
        // SAFETY: the access lies inside `window` (fitted above), which `Window::new` checked
        // is identity-mapped; windows are device registers or unclaimed space, never memory
        // the probe uses. What the read does to a device is what this scenario tests.
        unsafe { raw::read(window.base + offset, width) }
    }

    /// Writes `width` bytes of `value` at `offset` (moved back to fit) in `window`. The
    /// callers have made `value` harmless to the probe itself (see the module documentation).
    pub(super) fn write(&mut self, window: &Window, offset: u64, width: Width, value: u64) {
        let offset = window.fit(offset, width);
        self.counts.accesses += 1;
        self.counts.writes += 1;
        // SAFETY: as in `read`; the devices' reactions to garbage are what this scenario
        // tests, and it restores them before it goes on.
        unsafe { raw::write(window.base + offset, width, value) }
    }

    /// Counts a write that was not made because of what it would do; the caller reads
    /// instead.
    pub(super) fn withhold(&mut self) {
        self.counts.withheld += 1;
    }

    /// Reads `width` bytes from `port`.
    pub(super) fn port_read(&mut self, port: u16, width: Width) -> u32 {
        self.counts.accesses += 1;
        // SAFETY: port reads end nothing; their effect on devices (status cleared, FIFOs
        // drained) is what this scenario tests.
        unsafe { raw::port_read(port, width) }
    }

    /// Writes `width` bytes of `value` to `port`, unless that would end the VM
    /// ([`ends_the_vm`]): then it reads instead and returns false.
    pub(super) fn port_write(&mut self, port: u16, width: Width, value: u32) -> bool {
        if ends_the_vm(port, width, value) {
            self.withhold();
            self.port_read(port, width);
            return false;
        }
        self.counts.accesses += 1;
        self.counts.writes += 1;
        // SAFETY: checked above that the write cannot power off, reset or exit the VM; its
        // effect on the device is what this scenario tests, and the scenario restores the
        // devices it needs afterwards.
        unsafe { raw::port_write(port, width, value) };
        true
    }

    /// Checks that a read where nothing decodes returned all ones. On irvmm a mismatch fails
    /// the scenario with `describe()`; elsewhere it is counted and the first few printed.
    pub(super) fn expect_ones(
        &mut self,
        got: u64,
        width: Width,
        describe: impl FnOnce() -> Text,
    ) -> Result<(), Text> {
        if got == width.ones() {
            return Ok(());
        }
        if self.strict {
            return Err(text!(
                "seed {} access {}: {} read 0x{:x}, expected all ones ({} bytes)",
                self.seed,
                self.counts.accesses,
                describe(),
                got,
                width.bytes()
            ));
        }
        self.oddities += 1;
        if self.oddities <= MAX_PRINTED_ODDITIES {
            sprintln!(
                "hostile: observation: {} read 0x{:x} where nothing should decode",
                describe(),
                got
            );
        }
        Ok(())
    }

    /// The account so far.
    pub(super) fn counts(&self) -> Counts {
        self.counts
    }

    /// Prints one progress line: what happened since `since`.
    pub(super) fn report(&self, round: u32, what: &str, since: Counts) {
        sprintln!(
            "hostile: round {} {}: {} accesses, {} writes, {} withheld",
            round,
            what,
            self.counts.accesses - since.accesses,
            self.counts.writes - since.writes,
            self.counts.withheld - since.withheld
        );
    }
}

/// I/O port of the debug-exit device (QEMU's `isa-debug-exit,iobase=0x501,iosize=2`).
const DEBUG_EXIT_FIRST: u32 = 0x501;
/// Last port of the debug-exit device.
const DEBUG_EXIT_LAST: u32 = 0x502;
/// irvmm's ACPI PM1 registers (FADT PM1a_EVT_BLK at 0x600, PM1a_CNT_BLK at 0x604).
pub(super) const PM1_PORTS: (u64, u64) = (0x600, 6);
/// The high byte of irvmm's PM1a_CNT, which holds SLP_TYP and SLP_EN.
pub(super) const SLEEP_CONTROL_PORT: u16 = 0x605;
/// irvmm's PM1_STS (its low byte).
pub(super) const SLEEP_STATUS_PORT: u16 = 0x600;
/// PM1_CNT's SLP_EN (bit 13), bit 5 of its high byte.
pub(super) const SLP_EN: u8 = 1 << 5;
/// Shift of SLP_TYP (PM1_CNT bits 12:10) in the high byte.
const SLP_TYP_SHIFT: u32 = 2;
/// Mask (after shifting) of SLP_TYP.
const SLP_TYP_MASK: u8 = 0x7;
/// The SLP_TYP of S5 (soft off) in irvmm's DSDT `_S5_`.
const SLP_TYP_S5: u8 = 5;
/// Reset control register.
pub(super) const RESET_CONTROL_PORT: u16 = 0xcf9;
/// Reset control: RST_CPU (bit 2) starts the reset.
const RESET_RST_CPU: u8 = 1 << 2;

/// Whether writing `value` (`width` bytes) to `port` would legitimately end the VM: any byte
/// reaching the debug-exit ports, SLP_EN with SLP_TYP = S5 reaching PM1_CNT's high byte,
/// RST_CPU reaching the reset control register. A dword at 0xcf8 is
/// CONFIG_ADDRESS on every PC chipset and does not reach 0xcf9.
pub(super) fn ends_the_vm(port: u16, width: Width, value: u32) -> bool {
    if port == crate::pci::CONFIG_ADDRESS && width == Width::Dword {
        return false;
    }
    (0..width.bytes() as u32).any(|lane| {
        let byte = (value >> (8 * lane)) as u8;
        match u32::from(port) + lane {
            DEBUG_EXIT_FIRST..=DEBUG_EXIT_LAST => true,
            p if p == u32::from(SLEEP_CONTROL_PORT) => {
                byte & SLP_EN != 0 && (byte >> SLP_TYP_SHIFT) & SLP_TYP_MASK == SLP_TYP_S5
            }
            p if p == u32::from(RESET_CONTROL_PORT) => byte & RESET_RST_CPU != 0,
            _ => false,
        }
    })
}

/// Everything the garbage is aimed at.
struct Targets {
    config: pci::Config,
    edu: Function,
    edu_msix: Option<Function>,
    ioapic: IoApic,
    /// COM1's (ISA IRQ 4) pin on `ioapic`.
    com1_pin: u32,
    unit: iommu::Unit,
    bsp_id: u32,
    clock: Clock,
}

impl Targets {
    fn find(ctx: &Context, smp: &Smp, platform: &iommu::Platform) -> Result<Targets, Text> {
        let config = pci::Config::capture(ctx)?;
        let edu = crate::pci::find_on_bus0(edu::VENDOR_ID, EDU_DEVICE_ID).ok_or_else(|| {
            text!(
                "edu device ({:04x}:{:04x}) not found on bus 0 (irvmm: --device edu)",
                edu::VENDOR_ID,
                EDU_DEVICE_ID
            )
        })?;
        let edu_msix = crate::pci::find_on_bus0(edu::VENDOR_ID, EDU_MSIX_DEVICE_ID);
        let madt = smp.madt()?;
        let com1 = ioapic::isa_route(&madt, COM1_IRQ)?;
        let (ioapic, com1_pin) = IoApic::for_gsi(&madt, com1.gsi)?;
        let unit = platform.unit(edu)?;
        sprintln!(
            "hostile: {} PCI functions, edu {}, edu-msix {}, ECAM {}, IOAPIC 0x{:x} ({} pins), {} 0x{:x}",
            config.functions(),
            edu,
            if edu_msix.is_some() { "present" } else { "absent" },
            if config.has_ecam() { "present" } else { "absent" },
            ioapic.base,
            ioapic.pins,
            unit.name(),
            unit.window().0
        );
        Ok(Targets {
            config,
            edu,
            edu_msix,
            ioapic,
            com1_pin,
            unit,
            bsp_id: smp.bsp_id,
            clock: smp.clock,
        })
    }

    /// One round of garbage, ending with every source disarmed and the VT-d unit reset.
    fn round(&self, g: &mut Garbage, round: u32) -> Result<(), Text> {
        // 1. Configuration space, then everything put back.
        let mark = g.counts();
        self.config.config_ports(g, CONFIG_PORT_ACCESSES)?;
        self.config.ecam(g, ECAM_ACCESSES)?;
        let mut devices = [self.edu; 2];
        let n = match self.edu_msix {
            Some(f) => {
                devices[1] = f;
                2
            }
            None => 1,
        };
        self.config
            .moved_bar_reads(g, &devices[..n], MOVED_BAR_READS)?;
        self.config.restore()?;
        g.report(round, "PCI configuration (ports, ECAM)", mark);

        // 2. The edu BARs, interrupts armed with garbage but bus mastering off.
        let mark = g.counts();
        let bars = pci::EduBars::arm(g, self.edu, self.edu_msix)?;
        bars.garbage(g, BAR_ACCESSES)?;
        g.report(round, "edu BARs", mark);

        // 3. The I/O APIC.
        let mark = g.counts();
        let ioapic = legacy::IoApicState::save(&self.ioapic);
        legacy::ioapic(g, &self.ioapic, IOAPIC_ACCESSES)?;
        g.report(round, "I/O APIC", mark);

        // 4. The IOMMU (VT-d or AMD-Vi), then deliveries through the state it left.
        let mark = g.counts();
        self.unit.garbage(g, IOMMU_ACCESSES)?;
        g.report(round, self.unit.name(), mark);
        self.unit.deliveries(g, self)?;

        // 5. Sources disarmed; COM1 with every pin masked.
        ioapic.restore(&self.ioapic)?;
        self.config.restore()?;
        let mark = g.counts();
        ioapic.mask_all(&self.ioapic);
        legacy::com1(g, COM1_ACCESSES);
        ioapic.restore(&self.ioapic)?;
        g.report(round, "COM1", mark);

        // 6. Platform controls.
        let mark = g.counts();
        legacy::controls(g, CONTROL_ACCESSES);
        g.report(round, "platform controls", mark);

        // 7. Unclaimed space (irvmm's layout).
        if g.strict() {
            let mark = g.counts();
            legacy::unclaimed_ports(g, &self.config, UNCLAIMED_PORT_ACCESSES)?;
            let excluded = self.excluded_mmio();
            legacy::unclaimed_mmio(g, excluded.ranges(), UNCLAIMED_MMIO_ACCESSES)?;
            g.report(round, "unclaimed ports and MMIO", mark);
        } else if round == 1 {
            sprintln!("hostile: unclaimed ports and MMIO skipped (irvmm's layout only)");
        }

        // 8. The IOMMU reset as a guest would; nothing may be pending.
        self.unit.reset(&self.clock)?;
        quiet(&text!("after round {}", round))
    }

    /// The MMIO the unclaimed-space phase must not touch: ECAM, the I/O APIC, the IOMMU's
    /// register window, the local APIC window and every BAR.
    fn excluded_mmio(&self) -> pci::Ranges {
        /// The local APIC / MSI window (1 MiB at 0xfee00000).
        const LAPIC_WINDOW: (u64, u64) = (0xfee0_0000, 0x10_0000);
        /// The I/O APIC's register page.
        const IOAPIC_PAGE: u64 = 0x1000;
        let mut ranges = self.config.memory_ranges();
        ranges.push(LAPIC_WINDOW.0, LAPIC_WINDOW.1);
        ranges.push(self.ioapic.base, IOAPIC_PAGE);
        let (base, len) = self.unit.window();
        ranges.push(base, len);
        if let Some((base, len)) = self.config.ecam_range() {
            ranges.push(base, len);
        }
        ranges
    }
}

/// Fails when the BSP has an interrupt in service, or pending other than its tick: every
/// source was disarmed, so the VMM delivered something it should not have. `when` names the
/// moment in the failure.
pub(super) fn quiet(when: &dyn core::fmt::Display) -> Result<(), Text> {
    if let Some(vector) = apic::first_vector_in(apic::MSR_X2APIC_ISR0, &[]) {
        return Err(text!(
            "{}: vector 0x{:x} in service on the BSP",
            when,
            vector
        ));
    }
    if let Some(vector) = apic::first_vector_in(apic::MSR_X2APIC_IRR0, &ALLOWED_PENDING) {
        return Err(text!(
            "{}: vector 0x{:x} pending on the BSP although every source was disarmed (the \
             VMM delivered an interrupt nobody asked for)",
            when,
            vector
        ));
    }
    Ok(())
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let seed = pvh::cmdline_u32(ctx.cmdline, "probe.seed", DEFAULT_SEED)?;
    let rounds = pvh::cmdline_u32(ctx.cmdline, "probe.rounds", 1)?;
    if !(1..=MAX_ROUNDS).contains(&rounds) {
        return Err(text!("probe.rounds={} (1 to {})", rounds, MAX_ROUNDS));
    }
    let smp = smp::prepare(ctx)?;
    let platform = iommu::Platform::discover(ctx)?;
    let targets = Targets::find(ctx, &smp, &platform)?;
    let mut g = Garbage::new(seed, platform.vmm() == Vmm::Irvmm);
    sprintln!("hostile: seed={} rounds={}", seed, rounds);
    let begin = smp.clock.now_ns();
    for round in 1..=rounds {
        targets.round(&mut g, round)?;
    }
    sprintln!(
        "hostile: {} accesses in {} ms ({} withheld); recovering with the {} steps",
        g.counts().accesses,
        smp.clock.now_ns().saturating_sub(begin) / ir_common::NS_PER_MS,
        g.counts().withheld,
        platform.recovery_name()
    );
    let (from, to, index) = platform.recover(ctx, &smp)?;
    sprintln!(
        "hostile: recovered: edu's MSI went to APIC ID {}, then to {} after invalidating IRTE {}",
        from,
        to,
        index
    );
    Ok(text!("accesses={} seed={}", g.counts().accesses, seed))
}
