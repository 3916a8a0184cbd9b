//! Driving an AMD-Vi unit's interrupt remapping the way Linux does
//! (`drivers/iommu/amd/init.c`, `iommu.c`), register by register.
//!
//! [`AmdVi::enable`] runs Linux's order (`early_enable_iommu`, then
//! `amd_iommu_enable_interrupts` and `enable_iommus_vapic`):
//!
//! 1. disable: CmdBufEn, EventIntEn, EventLogEn, GALogEn, GAIntEn, the PPR bits, IommuEn and
//!    IRTCacheDis off, one read-modify-write of the control register each;
//! 2. flags from the IVHD (HtTunEn, PassPW, ResPassPW, Isoc), Coherent, InvTimeOut = 1 s;
//! 3. the device table base (256 entries, every one V | TV: DMA blocked, interrupts unmapped);
//! 4. the command buffer (base | ComLen 9, head = tail = 0, CmdBufEn), the event log
//!    (base | EventLen 9, head = tail = 0, EventLogEn);
//! 5. GAEn (128-bit IRTEs), XTEn (32-bit destinations), then IommuEn;
//! 6. INVALIDATE_IOMMU_ALL + COMPLETION_WAIT (Linux's `amd_iommu_flush_all_caches` with IASup);
//! 7. the unit's own interrupts: the XT interrupt control registers then IntCapXTEn, or the
//!    PCI MSI of its function; then EventIntEn;
//! 8. for guest virtual APIC mode: the GA log (base | GALogLen 8, the tail mirror address,
//!    head = tail = 0), GAIntEn, GALogEn, wait for GALogRun, then GAMEn = vAPIC.
//!
//! Each device then gets its own interrupt table ([`AmdVi::attach`]: DTE with IV, IntCtl =
//! remap, IntTabLen, root; INVALIDATE_DEVTAB_ENTRY), and every entry change is announced
//! with INVALIDATE_INTERRUPT_TABLE + COMPLETION_WAIT, as a driver must: a unit may keep
//! using what it cached until then (guest-mode fields excepted, which no unit caches).
//! Structures live in [`mem`]; the command buffer in [`cmd`], the logs in [`log`], entries
//! in [`dte`] and [`irte`], registers in [`regs`]. The probe drives one unit, from the BSP.

pub mod cmd;
pub mod dte;
pub mod irte;
pub mod log;
pub mod mem;
pub mod regs;

use core::sync::atomic::{AtomicBool, Ordering};

use crate::acpi::ivrs::Ivhd;
use crate::clock::Clock;
use crate::mmio::Mmio;
use crate::report::Text;
use crate::{text, x86};

use cmd::{Command, CommandBuffer};
use dte::{DeviceTable, Dte};
use irte::IntTable;
use log::{EventLog, GaEntry, GaLog};
use regs::*;

/// Domain ID of every device the probe sets up.
pub const DOMAIN: u16 = 1;
/// How long the unit gets to show GALogRun.
const RUN_TIMEOUT_NS: u64 = 1_000_000_000;

/// Set once a unit has been enabled: the structures' memory belongs to it.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// How the unit's own interrupts (event log, completion wait, GA log) are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitInterrupts {
    /// Not at all (EventIntEn and GAIntEn clear).
    Off,
    /// Through the XT interrupt control registers (IntCapXTEn), as Linux does in x2APIC
    /// mode: fixed, physical, `vector` to x2APIC ID `dest`, events and GA log alike.
    Xt {
        /// The vector.
        vector: u8,
        /// The destination.
        dest: u32,
    },
    /// Through the PCI MSI of the unit's function (IntCapXTEn clear), which the caller
    /// programs.
    Msi,
}

/// What [`AmdVi::enable`] sets up beyond remapping.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The unit's own interrupts.
    pub interrupts: UnitInterrupts,
    /// Guest virtual APIC mode: the GA log and GAMEn (guest-mode IRTEs post).
    pub guest_apic: bool,
}

/// The extended feature register of the unit `unit` describes, read from the unit (before
/// enabling it: e.g. to learn whether it offers guest virtual APIC mode).
pub fn extended_features(unit: &Ivhd) -> Result<u64, Text> {
    Ok(Mmio::new("AMD-Vi", unit.base, WINDOW)?.read64(EXT_FEATURES))
}

/// Whether extended features `efr` offer guest virtual APIC mode (GAMSup = vAPIC).
pub fn offers_guest_apic(efr: u64) -> bool {
    (efr >> EFR_GAM_SHIFT) & EFR_GAM_MASK == GAM_VAPIC
}

/// An enabled unit: remapping on, 128-bit IRTEs, x2APIC destinations.
pub struct AmdVi {
    regs: Mmio,
    clock: Clock,
    efr: u64,
    devices: DeviceTable,
    cmd: CommandBuffer,
    events: EventLog,
    ga: GaLog,
}

impl AmdVi {
    /// Checks the unit `unit` describes (XTSup, GASup, and GAMSup = vAPIC for
    /// `options.guest_apic`), enables it in Linux's order and returns it. Call once per
    /// boot, on the BSP.
    pub fn enable(unit: &Ivhd, clock: Clock, options: Options) -> Result<AmdVi, Text> {
        let regs = Mmio::new("AMD-Vi", unit.base, WINDOW)?;
        let efr = regs.read64(EXT_FEATURES);
        let needed = EFR_XT_SUP | EFR_GA_SUP;
        if efr & needed != needed {
            return Err(text!(
                "AMD-Vi unit at 0x{:x}: EFR 0x{:x} lacks XTSup/GASup (needs 0x{:x})",
                unit.base,
                efr,
                needed
            ));
        }
        if options.guest_apic && !offers_guest_apic(efr) {
            return Err(text!(
                "AMD-Vi unit at 0x{:x}: EFR 0x{:x} has GAMSup {} (guest virtual APIC mode needs 1)",
                unit.base,
                efr,
                (efr >> EFR_GAM_SHIFT) & EFR_GAM_MASK
            ));
        }
        if CLAIMED.swap(true, Ordering::AcqRel) {
            return Err(text!("an AMD-Vi unit is already enabled"));
        }
        mem::reset();
        let mut vi = AmdVi {
            regs,
            clock,
            efr,
            devices: DeviceTable::new(),
            cmd: CommandBuffer::new(),
            events: EventLog::new(),
            ga: GaLog::new(),
        };

        // 1. Everything off.
        for bit in [
            CTRL_CMDBUF_EN,
            CTRL_EVT_INT_EN,
            CTRL_EVT_LOG_EN,
            CTRL_GALOG_EN,
            CTRL_GAINT_EN,
            CTRL_PPR_LOG_EN | CTRL_PPR_INT_EN | CTRL_PPR_EN,
            CTRL_IOMMU_EN,
            CTRL_IRTCACHEDIS,
        ] {
            vi.update_control(0, bit);
        }
        // 2. Flags.
        for (flag, bit) in [
            (IVHD_FLAG_HT_TUN_EN, CTRL_HT_TUN_EN),
            (IVHD_FLAG_PASS_PW, CTRL_PASS_PW),
            (IVHD_FLAG_RES_PASS_PW, CTRL_RES_PASS_PW),
            (IVHD_FLAG_ISOC, CTRL_ISOC),
        ] {
            if unit.flags & flag != 0 {
                vi.update_control(bit, 0);
            } else {
                vi.update_control(0, bit);
            }
        }
        vi.update_control(CTRL_COHERENT, 0);
        vi.update_control(
            INV_TIMEOUT_1S << CTRL_INV_TIMEOUT_SHIFT,
            CTRL_INV_TIMEOUT_MASK,
        );
        // 3. Device table: every device's DMA blocked, its interrupts unmapped until it
        // gets a table.
        for device_id in 0..dte::ENTRIES as u16 {
            vi.devices.set(device_id, Dte::blocked_dma(DOMAIN));
        }
        vi.regs.write64(DEV_TABLE_BASE, vi.devices.register());
        // 4. Command buffer and event log.
        vi.regs.write64(CMD_BUF_BASE, vi.cmd.register());
        vi.update_control(0, CTRL_CMDBUF_EN);
        vi.regs.write32(CMD_HEAD, 0);
        vi.regs.write32(CMD_TAIL, 0);
        vi.cmd.rewind(0);
        vi.update_control(CTRL_CMDBUF_EN, 0);
        vi.regs.write64(EVT_LOG_BASE, vi.events.register());
        vi.regs.write32(EVT_HEAD, 0);
        vi.regs.write32(EVT_TAIL, 0);
        vi.update_control(CTRL_EVT_LOG_EN, 0);
        // 5. Formats, then the unit.
        vi.update_control(CTRL_GA_EN, 0);
        vi.update_control(CTRL_XT_EN, 0);
        vi.update_control(CTRL_IOMMU_EN, 0);
        // 6. Nothing cached from before may survive.
        if efr & EFR_IA_SUP != 0 {
            vi.submit_and_wait(&[cmd::invalidate_all()])?;
        } else {
            for device_id in 0..dte::ENTRIES as u16 {
                vi.submit_and_wait(&[
                    cmd::invalidate_devtab_entry(device_id),
                    cmd::invalidate_interrupt_table(device_id),
                ])?;
            }
        }
        // 7. The unit's own interrupts.
        vi.set_interrupts(options.interrupts);
        // 8. Guest virtual APIC mode.
        if options.guest_apic {
            vi.regs.write64(GA_LOG_BASE, vi.ga.register());
            vi.regs
                .write64(GA_LOG_TAIL_ADDR, GaLog::tail_mirror_register());
            vi.regs.write32(GA_HEAD, 0);
            vi.regs.write32(GA_TAIL, 0);
            if options.interrupts != UnitInterrupts::Off {
                vi.update_control(CTRL_GAINT_EN, 0);
            }
            vi.update_control(CTRL_GALOG_EN, 0);
            vi.wait_status(STATUS_GALOG_RUN)?;
            vi.update_control(GAM_VAPIC << CTRL_GAM_SHIFT, CTRL_GAM_MASK);
        }
        Ok(vi)
    }

    /// Sends the unit's own interrupts as `how` says: XT registers then IntCapXTEn, or the
    /// PCI MSI (IntCapXTEn clear); EventIntEn on unless `Off`.
    pub fn set_interrupts(&self, how: UnitInterrupts) {
        match how {
            UnitInterrupts::Off => self.update_control(0, CTRL_EVT_INT_EN | CTRL_GAINT_EN),
            UnitInterrupts::Xt { vector, dest } => {
                let reg = xt_interrupt(vector, dest);
                self.regs.write64(XT_EVT_INT, reg);
                self.regs.write64(XT_PPR_INT, 0);
                self.regs.write64(XT_GA_INT, reg);
                self.update_control(CTRL_INTCAPXT_EN, 0);
                self.update_control(CTRL_EVT_INT_EN, 0);
            }
            UnitInterrupts::Msi => {
                self.update_control(0, CTRL_INTCAPXT_EN);
                self.update_control(CTRL_EVT_INT_EN, 0);
            }
        }
    }

    /// Reads the control register, sets `set` and clears `clear` (other bits kept), writes
    /// it back: Linux's `iommu_feature_enable` / `_disable`.
    pub fn update_control(&self, set: u64, clear: u64) {
        let ctrl = self.regs.read64(CONTROL);
        self.regs.write64(CONTROL, (ctrl & !clear) | set);
    }

    /// Waits until the status register shows `bits`.
    fn wait_status(&self, bits: u32) -> Result<(), Text> {
        let deadline = self.clock.now_ns() + RUN_TIMEOUT_NS;
        loop {
            let status = self.status();
            if status & bits == bits {
                return Ok(());
            }
            if self.clock.now_ns() >= deadline {
                return Err(text!(
                    "AMD-Vi status 0x{:x} lacks 0x{:x} after {} ms (control 0x{:x})",
                    status,
                    bits,
                    RUN_TIMEOUT_NS / 1_000_000,
                    self.control()
                ));
            }
            x86::pause();
        }
    }

    /// The register window.
    pub fn regs(&self) -> &Mmio {
        &self.regs
    }

    /// The extended feature register as the unit reports it.
    pub fn efr(&self) -> u64 {
        self.efr
    }

    /// The control register.
    pub fn control(&self) -> u64 {
        self.regs.read64(CONTROL)
    }

    /// The status register.
    pub fn status(&self) -> u32 {
        self.regs.read32(STATUS)
    }

    /// Clears status bits `bits` (write 1 to clear), as an interrupt handler does first.
    pub fn clear_status(&self, bits: u32) {
        self.regs.write32(STATUS, bits & STATUS_RW1C);
    }

    /// The device table.
    pub fn devices(&self) -> &DeviceTable {
        &self.devices
    }

    /// Writes `device_id`'s DTE and invalidates it (INVALIDATE_DEVTAB_ENTRY + wait).
    pub fn set_dte(&mut self, device_id: u16, dte: Dte) -> Result<(), Text> {
        if !self.devices.set(device_id, dte) {
            return Err(text!(
                "device ID 0x{:04x} beyond the device table",
                device_id
            ));
        }
        self.submit_and_wait(&[cmd::invalidate_devtab_entry(device_id)])
    }

    /// Gives `device_id` a zeroed interrupt table of 2^`len_log2` entries and points its
    /// DTE at it (IV, IntCtl = remap), as Linux's `alloc_irq_table` does.
    pub fn attach(&mut self, device_id: u16, len_log2: u8) -> Result<IntTable, Text> {
        let table = IntTable::alloc(len_log2)?;
        self.set_dte(device_id, Dte::remapped(DOMAIN, table.root, len_log2))?;
        Ok(table)
    }

    /// INVALIDATE_INTERRUPT_TABLE for `device_id` + COMPLETION_WAIT, polled.
    pub fn invalidate_table(&mut self, device_id: u16) -> Result<(), Text> {
        self.submit_and_wait(&[cmd::invalidate_interrupt_table(device_id)])
    }

    /// Queues `cmds` + a COMPLETION_WAIT, writes the tail once, polls the store.
    pub fn submit_and_wait(&mut self, cmds: &[Command]) -> Result<(), Text> {
        let (regs, clock) = (self.regs, self.clock);
        self.cmd.submit_and_wait(&regs, &clock, cmds)
    }

    /// Queues `cmds` and writes the tail once, without waiting.
    pub fn submit(&mut self, cmds: &[Command]) -> Result<(), Text> {
        let regs = self.regs;
        self.cmd.submit(&regs, cmds)
    }

    /// The command buffer's software side.
    pub fn commands(&self) -> &CommandBuffer {
        &self.cmd
    }

    /// Restarts a stopped command buffer at byte offset `head` (CmdBufEn off, head moved,
    /// CmdBufEn on): the unit resumes fetching there, up to the tail.
    pub fn restart_commands(&mut self, head: u32) {
        self.update_control(0, CTRL_CMDBUF_EN);
        self.regs.write32(CMD_HEAD, head);
        self.update_control(CTRL_CMDBUF_EN, 0);
        // The commands from `head` to the tail are still queued.
        self.cmd.set_head(head);
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Reads the new events into `out`; returns how many there were.
    pub fn drain_events(&self, out: &mut [log::Event]) -> usize {
        self.events.drain(&self.regs, out)
    }

    /// The GA log.
    pub fn ga_log(&self) -> &GaLog {
        &self.ga
    }

    /// Reads the new GA log entries into `out`; returns how many there were.
    pub fn drain_ga_log(&self, out: &mut [GaEntry]) -> usize {
        self.ga.drain(&self.regs, out)
    }
}
