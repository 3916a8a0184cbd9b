//! `probe=amd-ir-faults`: blocked interrupts are logged as AMD-Vi events with the right
//! code, device ID, address and flags, and raise the event interrupt; suppression bits
//! keep the log quiet; an illegal command stops the command buffer.
//!
//! Runs on the BSP alone (no APs): every entry targets the BSP with [`VECTOR`], so an
//! interrupt that should have been blocked shows up there. edu (1234:11e8) gets a table of
//! 2^[`TABLE_LOG2`] entries; each case programs edu's MSI (address 0xfee00000, data = the
//! index) and raises it once. The event interrupt goes to the BSP with [`EVENT_VECTOR`]:
//! for the first two cases through the unit's PCI function's MSI (IntCapXTEn clear, the
//! function's MSI capability programmed with a compatibility message), then through the XT
//! event interrupt register (IntCapXTEn), as Linux does in x2APIC mode. After each case the
//! probe does what Linux's handler does: clears EventLogInt (write 1), then reads the log
//! from head to tail and moves the head on.
//!
//! | case | how | event |
//! |---|---|---|
//! | `not-valid` | entry 0x10 with RemapEn clear | IO_PAGE_FAULT (2), flags I |
//! | `beyond` | index 0x105, beyond the table (data bits 10:8 = 001b, arbitrated) | IO_PAGE_FAULT, I |
//! | `reserved` | entry 0x20 with a reserved bit (high qword bit 8) | IO_PAGE_FAULT, I PR RZ |
//! | `intctl-abort` | edu's DTE with IntCtl = 00b, entry 0x30 valid | IO_PAGE_FAULT, I |
//! | `bad-dte` | edu's DTE with IntCtl = 11b (reserved) | ILLEGAL_DEV_TABLE_ENTRY (1), I RZ |
//!
//! Each must deliver nothing and log exactly one event with that code, edu's device ID,
//! the request's address (0xfee00000) and the flags, with EventLogInt set in the status,
//! and raise exactly one event interrupt, on the BSP. Then the suppressions: entry 0x40
//! with a reserved bit and SupIOPF, and entry 0x10 (not valid) with the DTE's IG bit set,
//! must log nothing and interrupt nobody within 300 ms; entry 0x40 without SupIOPF then
//! logs its event (so the device did fire). Last, an illegal command (opcode 0xf) followed
//! by a COMPLETION_WAIT: the buffer must stop on it (CmdBufRun clear, the head register on
//! the illegal command, the store not written) and log ILLEGAL_COMMAND_ERROR (5) with the
//! command's address, with one event interrupt; restarted past it (CmdBufEn off, head
//! moved, CmdBufEn on) the COMPLETION_WAIT completes.
//!
//! Passes with `events=not-valid,beyond,reserved,intctl-abort,bad-dte suppressed=ok
//! illegal_command=ok interrupts=msi,xt`. Each case prints one line, so a VMM that logs no
//! interrupt-remapping events (QEMU) shows what it did instead.

use super::amd_common::{self, AmdPlatform};
use super::ir_common::{self, Vmm, SETTLE_NS};
use super::smp;
use super::Context;
use crate::amdvi::dte::{Dte, IntCtl};
use crate::amdvi::irte::{self, IntTable, Irte};
use crate::amdvi::log::{
    Event, FLAG_I, FLAG_PR, FLAG_RZ, ILLEGAL_COMMAND_ERROR, ILLEGAL_DEV_TABLE_ENTRY, IO_PAGE_FAULT,
};
use crate::amdvi::regs::{STATUS_CMDBUF_RUN, STATUS_EVT_INT, STATUS_EVT_OVERFLOW};
use crate::amdvi::{cmd, AmdVi, Options, UnitInterrupts, DOMAIN};
use crate::clock::Clock;
use crate::edu::{self, Edu};
use crate::msi::Msi;
use crate::pci;
use crate::report::{Outcome, Text};
use crate::tally::{self, DEVICE, EVENT};
use crate::vtd::irte::compatibility_msi_address;
use crate::{irq, sprint, sprintln, text, x86};

/// The vector every entry would deliver.
const VECTOR: u8 = irq::TEST_VECTOR_A;
/// The event interrupt's vector.
const EVENT_VECTOR: u8 = irq::TEST_VECTOR_C;
/// log2 of edu's table: 256 entries, so index 0x105 is beyond it.
const TABLE_LOG2: u8 = 8;
/// The edu interrupt-status bit the probe raises.
const RAISE_BIT: u32 = 1;
/// How long an event gets to be logged and signalled.
const EVENT_TIMEOUT_NS: u64 = 1_000_000_000;
/// How long a suppressed case watches for an event that must not come.
const QUIET_WATCH_NS: u64 = 300_000_000;
/// Most events read per check.
const MAX_EVENTS: usize = 8;

/// Entries.
const NOT_VALID_INDEX: u32 = 0x10;
const BEYOND_INDEX: u32 = 0x105;
const RESERVED_INDEX: u32 = 0x20;
const VALID_INDEX: u32 = 0x30;
const SUPPRESSED_INDEX: u32 = 0x40;
/// The request address every case uses.
const REQUEST_ADDRESS: u64 = irte::MSI_ADDRESS as u64;
/// The opcode of the illegal command.
const ILLEGAL_OPCODE: u64 = 0xf;
/// Bytes of one command.
const COMMAND_BYTES: u32 = cmd::COMMAND_BYTES;

/// What one raise produced.
struct Observed {
    delivered: u32,
    interrupts: u32,
    status: u32,
    events: [Event; MAX_EVENTS],
    n_events: usize,
}

/// The scenario's fixed parts.
struct Bench {
    vi: AmdVi,
    edu: Edu,
    msi: Msi,
    table: IntTable,
    device_id: u16,
    clock: Clock,
    bsp: u32,
}

impl Bench {
    /// Clears EventLogInt and reads the log, as Linux's handler does.
    fn take_events(&self, out: &mut [Event]) -> usize {
        self.vi.clear_status(STATUS_EVT_INT | STATUS_EVT_OVERFLOW);
        self.vi.drain_events(out)
    }

    /// Raises edu's MSI naming `index` once and collects what happened: waits up to
    /// `timeout_ns` for an event interrupt and a logged event (when `expect_event`), then
    /// for strays.
    fn raise(&self, index: u32, expect_event: bool, timeout_ns: u64) -> Observed {
        let (dev0, ev0) = (DEVICE.total(), EVENT.total());
        self.msi
            .program(irte::MSI_ADDRESS, irte::msi_data(index) as u16);
        self.edu.raise(RAISE_BIT);
        ir_common::wait(&self.clock, timeout_ns, || {
            expect_event && EVENT.total() > ev0 && self.vi.events().pending(self.vi.regs())
        });
        ir_common::settle(&self.clock, SETTLE_NS);
        self.edu.ack(RAISE_BIT);
        let status = self.vi.status();
        let mut obs = Observed {
            delivered: DEVICE.total() - dev0,
            interrupts: EVENT.total() - ev0,
            status,
            events: [Event::default(); MAX_EVENTS],
            n_events: 0,
        };
        obs.n_events = self.take_events(&mut obs.events);
        obs
    }

    /// Prints one line about `obs` for case `name`.
    fn report(&self, name: &str, obs: &Observed) {
        sprint!(
            "amd-ir-faults: {}: delivered={} interrupts={} status=0x{:x} events={}",
            name,
            obs.delivered,
            obs.interrupts,
            obs.status,
            obs.n_events
        );
        if let Some(e) = obs.events.first().filter(|_| obs.n_events > 0) {
            sprint!(
                " [code {} devid 0x{:04x} domain {} flags 0x{:03x} address 0x{:x}]",
                e.code,
                e.device_id,
                e.domain,
                e.flags,
                e.address
            );
        }
        sprintln!();
    }

    /// Raises through entry `index` and checks for exactly one event `code` with `flags`.
    fn expect_event(&self, name: &str, index: u32, code: u8, flags: u16) -> Result<(), Text> {
        let o = self.raise(index, true, EVENT_TIMEOUT_NS);
        self.report(name, &o);
        let fail = |why: &str| text!("{}: {}", name, why);
        if o.delivered != 0 {
            return Err(fail("the blocked interrupt was delivered"));
        }
        if o.n_events != 1 {
            return Err(text!("{}: {} events logged, expected 1", name, o.n_events));
        }
        let e = o.events[0];
        if e.code != code
            || e.device_id != self.device_id
            || e.flags != flags
            || e.address != REQUEST_ADDRESS
        {
            return Err(text!(
                "{}: event code {} devid 0x{:04x} flags 0x{:03x} address 0x{:x}, expected code {} devid 0x{:04x} flags 0x{:03x} address 0x{:x}",
                name,
                e.code,
                e.device_id,
                e.flags,
                e.address,
                code,
                self.device_id,
                flags,
                REQUEST_ADDRESS
            ));
        }
        if o.status & STATUS_EVT_INT == 0 {
            return Err(text!(
                "{}: status 0x{:x} without EventLogInt",
                name,
                o.status
            ));
        }
        self.expect_one_interrupt(name, o.interrupts)
    }

    /// Checks that exactly one event interrupt came in the case, and every one so far on the
    /// BSP.
    fn expect_one_interrupt(&self, name: &str, interrupts: u32) -> Result<(), Text> {
        if interrupts != 1 || EVENT.hits(self.bsp) != EVENT.total() {
            return Err(text!(
                "{}: {} event interrupts ({} on the BSP of {} so far), expected 1",
                name,
                interrupts,
                EVENT.hits(self.bsp),
                EVENT.total()
            ));
        }
        Ok(())
    }

    /// Raises through entry `index` and checks that nothing is delivered, logged or
    /// signalled.
    fn expect_quiet(&self, name: &str, index: u32) -> Result<(), Text> {
        let o = self.raise(index, false, QUIET_WATCH_NS);
        self.report(name, &o);
        if o.delivered != 0 || o.interrupts != 0 || o.n_events != 0 {
            return Err(text!(
                "{}: {} delivered, {} event interrupts, {} events (all must be 0)",
                name,
                o.delivered,
                o.interrupts,
                o.n_events
            ));
        }
        Ok(())
    }

    /// Writes edu's DTE (remapped through its table, with IntCtl `int_ctl` and IG as given)
    /// and invalidates it.
    fn set_dte(&mut self, int_ctl: IntCtl, ignore: bool) -> Result<(), Text> {
        let mut dte =
            Dte::blocked_dma(DOMAIN).with_interrupts(self.table.root, self.table.len_log2, int_ctl);
        if ignore {
            dte = dte.ignoring_faults();
        }
        self.vi.set_dte(self.device_id, dte)
    }

    /// An illegal command then a COMPLETION_WAIT: the buffer stops on the first, logs
    /// ILLEGAL_COMMAND_ERROR, and resumes past it when restarted.
    fn illegal_command(&mut self) -> Result<(), Text> {
        const TOKEN: u64 = 0x1c0de;
        let ev0 = EVENT.total();
        let at = self.vi.commands().tail();
        let address = self.vi.commands().address_of(at);
        let store = cmd::CommandBuffer::semaphore_address();
        self.vi.submit(&[
            cmd::raw(ILLEGAL_OPCODE),
            cmd::completion_wait(store, TOKEN, false),
        ])?;
        ir_common::wait(&self.clock, EVENT_TIMEOUT_NS, || {
            EVENT.total() > ev0 && self.vi.events().pending(self.vi.regs())
        });
        ir_common::settle(&self.clock, SETTLE_NS);
        let status = self.vi.status();
        let head = self.vi.regs().read32(crate::amdvi::regs::CMD_HEAD);
        let stored = cmd::CommandBuffer::semaphore() == TOKEN;
        let mut events = [Event::default(); MAX_EVENTS];
        let n = self.take_events(&mut events);
        let interrupts = EVENT.total() - ev0;
        sprint!(
            "amd-ir-faults: illegal-command at 0x{:x} (offset 0x{:x}): status=0x{:x} head=0x{:x} stored={} interrupts={} events={}",
            address,
            at,
            status,
            head,
            stored,
            interrupts,
            n
        );
        if let Some(e) = events.first().filter(|_| n > 0) {
            sprint!(" [code {} address 0x{:x}]", e.code, e.address);
        }
        sprintln!();
        // Restart past the illegal command whatever happened, so the buffer works again.
        self.vi
            .restart_commands((at + COMMAND_BYTES) % (cmd::ENTRIES * COMMAND_BYTES));
        let deadline = self.clock.now_ns() + EVENT_TIMEOUT_NS;
        while cmd::CommandBuffer::semaphore() != TOKEN && self.clock.now_ns() < deadline {
            x86::pause();
        }
        let resumed = cmd::CommandBuffer::semaphore() == TOKEN;
        sprintln!(
            "amd-ir-faults: restarted past it: COMPLETION_WAIT stored={} status=0x{:x}",
            resumed,
            self.vi.status()
        );
        if status & STATUS_CMDBUF_RUN != 0 || head != at || stored {
            return Err(text!(
                "illegal command at offset 0x{:x}: status 0x{:x} (CmdBufRun must clear), head 0x{:x} (must stay on it), later COMPLETION_WAIT stored={}",
                at,
                status,
                head,
                stored
            ));
        }
        if n != 1 || events[0].code != ILLEGAL_COMMAND_ERROR || events[0].address != address {
            return Err(text!(
                "illegal command at 0x{:x}: {} events (first code {} address 0x{:x}), expected one ILLEGAL_COMMAND_ERROR ({}) naming it",
                address,
                n,
                events[0].code,
                events[0].address,
                ILLEGAL_COMMAND_ERROR
            ));
        }
        self.expect_one_interrupt("illegal-command", interrupts)?;
        if !resumed {
            return Err(text!(
                "restarted at offset 0x{:x}: the COMPLETION_WAIT after the illegal command did not store",
                at + COMMAND_BYTES
            ));
        }
        // And the buffer takes new work normally.
        self.vi.invalidate_table(self.device_id)
    }
}

/// Programs the unit's own PCI function's MSI: compatibility format, [`EVENT_VECTOR`] to
/// the BSP, bus mastering on.
fn route_function_msi(platform: &AmdPlatform, bsp: u32) -> Result<(), Text> {
    let function = platform.unit_function();
    let address = compatibility_msi_address(bsp)
        .ok_or_else(|| text!("BSP APIC ID {} does not fit a compatibility MSI", bsp))?;
    function.enable_command(pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER);
    Msi::find(function)?.program(address, u16::from(EVENT_VECTOR));
    Ok(())
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    let platform = amd_common::discover(ctx)?;
    let edu = Edu::find(edu::EDU_DEVICE_ID)?;
    let msi = Msi::find(edu.function)?;
    let device_id = platform.device_id(edu.function)?;
    irq::set_handler(VECTOR, tally::on_device)?;
    irq::set_handler(EVENT_VECTOR, tally::on_event)?;
    route_function_msi(&platform, smp.bsp_id)?;
    let options = Options {
        interrupts: UnitInterrupts::Msi,
        guest_apic: false,
    };
    let mut vi = amd_common::enable(&platform, smp.clock, options)?;
    let table = vi.attach(device_id, TABLE_LOG2)?;
    let entry = Irte::remapped(VECTOR, smp.bsp_id);
    table.set(NOT_VALID_INDEX, Irte::NOT_VALID)?;
    table.set(RESERVED_INDEX, entry.with_reserved_bit())?;
    table.set(VALID_INDEX, entry)?;
    table.set(
        SUPPRESSED_INDEX,
        entry.with_reserved_bit().suppressing_faults(),
    )?;
    vi.invalidate_table(device_id)?;
    sprintln!(
        "amd-ir-faults: edu {} devid=0x{:04x}, table 0x{:x} ({} entries), event interrupts -> APIC ID {} vector 0x{:x} via 00:{:02x}.{} MSI, {}",
        edu.function,
        device_id,
        table.root,
        table.entries(),
        smp.bsp_id,
        EVENT_VECTOR,
        platform.unit_function().device,
        platform.unit_function().function,
        platform.vmm.name()
    );
    let mut bench = Bench {
        vi,
        edu,
        msi,
        table,
        device_id,
        clock: smp.clock,
        bsp: smp.bsp_id,
    };

    let mut first_failure: Option<Text> = None;
    let mut failures = 0;
    let mut note = |r: Result<(), Text>| {
        if let Err(t) = r {
            failures += 1;
            first_failure.get_or_insert(t);
        }
    };
    note(bench.expect_event("not-valid", NOT_VALID_INDEX, IO_PAGE_FAULT, FLAG_I));
    note(bench.expect_event("beyond", BEYOND_INDEX, IO_PAGE_FAULT, FLAG_I));
    // From here on the XT event interrupt register, as Linux in x2APIC mode.
    bench.vi.set_interrupts(UnitInterrupts::Xt {
        vector: EVENT_VECTOR,
        dest: smp.bsp_id,
    });
    note(bench.expect_event(
        "reserved",
        RESERVED_INDEX,
        IO_PAGE_FAULT,
        FLAG_I | FLAG_PR | FLAG_RZ,
    ));
    note(
        bench
            .set_dte(IntCtl::Abort, false)
            .and_then(|()| bench.expect_event("intctl-abort", VALID_INDEX, IO_PAGE_FAULT, FLAG_I)),
    );
    note(bench.set_dte(IntCtl::Reserved, false).and_then(|()| {
        bench.expect_event(
            "bad-dte",
            VALID_INDEX,
            ILLEGAL_DEV_TABLE_ENTRY,
            FLAG_I | FLAG_RZ,
        )
    }));

    // Suppression: SupIOPF in the entry, IG in the DTE.
    note(
        bench
            .set_dte(IntCtl::Remap, false)
            .and_then(|()| bench.expect_quiet("supiopf", SUPPRESSED_INDEX)),
    );
    note(
        bench
            .set_dte(IntCtl::Remap, true)
            .and_then(|()| bench.expect_quiet("dte-ig", NOT_VALID_INDEX)),
    );
    note(bench.set_dte(IntCtl::Remap, false).and_then(|()| {
        let entry = Irte::remapped(VECTOR, smp.bsp_id).with_reserved_bit();
        bench.table.set(SUPPRESSED_INDEX, entry)?;
        bench.vi.invalidate_table(device_id)?;
        bench.expect_event(
            "unsuppressed",
            SUPPRESSED_INDEX,
            IO_PAGE_FAULT,
            FLAG_I | FLAG_PR | FLAG_RZ,
        )
    }));
    note(bench.illegal_command());
    irq::stop_tick();
    bench.msi.disable();

    if let Some(first) = first_failure {
        let hint = if platform.vmm == Vmm::Qemu {
            " (QEMU logs no interrupt-remapping events)"
        } else {
            ""
        };
        return Err(text!(
            "{} of 9 checks failed{}; first: {}",
            failures,
            hint,
            first
        ));
    }
    Ok(text!(
        "events=not-valid,beyond,reserved,intctl-abort,bad-dte suppressed=ok illegal_command=ok interrupts=msi,xt"
    ))
}
