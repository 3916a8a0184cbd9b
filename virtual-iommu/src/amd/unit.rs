//! [`AmdViUnit`]: the register file and the glue between the engines.
//!
//! # Control register
//!
//! Software writes the whole register (Linux reads it, changes one bit, writes it back);
//! the unit acts on the bits that changed. Bits of features the unit does not report are
//! dropped (read as zero); in particular `IRTCacheDis` is not writable, so Linux keeps
//! issuing the interrupt-table invalidations the VMM's route cache depends on.
//!
//! * `IommuEn`, `GAEn`, `GAMEn`, `XTEn`: a change alters what messages translate to, so
//!   the write reports `remap_state_changed`.
//! * `CmdBufEn`: commands are fetched while `IommuEn` and `CmdBufEn` are set and no error
//!   stopped the buffer (`CmdBufRun`). Clearing `CmdBufEn` releases the error stop.
//! * `EventLogEn`, `GALogEn`: a log accepts entries while enabled and not overflowed
//!   (`EventLogRun`, `GALogRun`); enabling it again after an overflow restarts it.
//! * `EventIntEn`, `ComWaitIntEn`, `GAIntEn`, `IntCapXTEn`: see [`super::intr`].
//!
//! # Pointer registers
//!
//! The command buffer head may be written while the buffer is not running, the event and
//! GA log tails while their log is disabled; such writes are ignored otherwise. The base
//! registers of the command buffer, the event log and the GA log are likewise locked while
//! their enable bit is set; writing one resets its head and tail to 0.

use crate::memory::GuestMemoryReader;
use crate::msi::{MsiMessage, SourceId};

use super::cmd::{Command, CommandBuffer};
use super::fault::{AmdFault, FaultKind};
use super::ga::{self, GuestPost, Notification};
use super::intr::{xt_message, InterruptCause, InterruptLines};
use super::irte::IrteMode;
use super::log::{Append, Event, LogRing};
use super::regs::*;
use super::remap::{self, DeviceTable, RemapOutcome, RemapSettings};
use super::{AmdViConfig, Effects, Invalidation, Translation};

/// Device table entries per 4 KiB of table.
const DTES_PER_PAGE: u32 = 128;

/// Running totals the VMM can read (for logs and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Guest-mode interrupts posted (IRR bit set).
    pub posted: u64,
    /// Doorbells a post sent to a running vCPU's physical CPU. The guest's CPUs have no
    /// AVIC to ring, so a doorbell has no effect (as on a CPU not running a guest).
    pub doorbells: u64,
    /// GA log entries written.
    pub ga_log_entries: u64,
    /// GA log entries lost (overflow, log disabled, or not writable).
    pub ga_log_lost: u64,
    /// Events written to the event log.
    pub events_logged: u64,
    /// Events lost (overflow, log disabled, or not writable).
    pub events_lost: u64,
    /// Commands executed.
    pub commands: u64,
}

/// One AMD-Vi unit with interrupt remapping, guest virtual APIC posting, a command buffer,
/// an event log and a GA log.
#[derive(Clone, Debug)]
pub struct AmdViUnit {
    config: AmdViConfig,
    efr: u64,
    control_writable: u64,
    control: u64,
    dev_tab: u64,
    excl_base: u64,
    excl_limit: u64,
    cmd: CommandBuffer,
    events: LogRing,
    ga_log: LogRing,
    ga_tail_addr: u64,
    xt_evt: u64,
    xt_ppr: u64,
    xt_ga: u64,
    /// Only the RW1C bits; the run bits are derived.
    status: u32,
    lines: InterruptLines,
    counters: Counters,
}

/// An MMIO access the window serves: the register, and where the access sits in it.
struct Access {
    reg: u64,
    shift: u32,
    mask: u64,
}

fn classify(offset: u64, len: usize) -> Option<Access> {
    let width = match len {
        DWORD => u64::from(u32::MAX),
        QWORD => u64::MAX,
        _ => return None,
    };
    let size = u64::try_from(len).ok()?;
    if offset & (size - 1) != 0 || offset.checked_add(size)? > AMDVI_MMIO_SIZE {
        return None;
    }
    let shift = u32::try_from(offset & REG_OFFSET_MASK).ok()? * BYTE_BITS;
    Some(Access {
        reg: offset & !REG_OFFSET_MASK,
        shift,
        mask: width << shift,
    })
}

impl AmdViUnit {
    /// A unit in its reset state.
    pub fn new(config: AmdViConfig) -> Self {
        let config = AmdViConfig {
            ga: config.ga || config.xt || config.vapic,
            ..config
        };
        let efr = extended_features(config.xt, config.ga, config.vapic);
        AmdViUnit {
            config,
            efr,
            control_writable: control_writable(efr),
            control: 0,
            dev_tab: 0,
            excl_base: 0,
            excl_limit: 0,
            cmd: CommandBuffer::new(),
            events: LogRing::event_log(),
            ga_log: LogRing::ga_log(),
            ga_tail_addr: 0,
            xt_evt: 0,
            xt_ppr: 0,
            xt_ga: 0,
            status: 0,
            lines: InterruptLines::default(),
            counters: Counters::default(),
        }
    }

    /// Returns the unit to its reset state (platform reset); the counters survive.
    pub fn reset(&mut self) {
        let counters = self.counters;
        *self = AmdViUnit::new(self.config);
        self.counters = counters;
    }

    /// The configuration in effect (`ga` forced on by `xt` or `vapic`).
    pub fn config(&self) -> AmdViConfig {
        self.config
    }

    /// The extended feature register, also the IVHD's EFR image.
    pub fn extended_features(&self) -> u64 {
        self.efr
    }

    /// The control register.
    pub fn control(&self) -> u64 {
        self.control
    }

    /// The status register.
    pub fn status(&self) -> u32 {
        let mut status = self.status;
        if self.events_running() {
            status |= STATUS_EVT_RUN;
        }
        if self.cmd_running() {
            status |= STATUS_CMDBUF_RUN;
        }
        if self.ga_log_running() {
            status |= STATUS_GALOG_RUN;
        }
        status
    }

    /// True while the unit remaps interrupts (`IommuEn`).
    pub fn remapping_enabled(&self) -> bool {
        self.control & CTRL_IOMMU_EN != 0
    }

    /// The running totals.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The command buffer registers.
    pub fn command_buffer(&self) -> &CommandBuffer {
        &self.cmd
    }

    /// The event log registers.
    pub fn event_log(&self) -> &LogRing {
        &self.events
    }

    /// The GA log registers.
    pub fn ga_log(&self) -> &LogRing {
        &self.ga_log
    }

    fn cmd_running(&self) -> bool {
        self.control & (CTRL_IOMMU_EN | CTRL_CMDBUF_EN) == (CTRL_IOMMU_EN | CTRL_CMDBUF_EN)
            && !self.cmd.is_stopped()
    }

    fn events_running(&self) -> bool {
        self.control & CTRL_EVT_LOG_EN != 0 && !self.events.is_stopped()
    }

    fn ga_log_running(&self) -> bool {
        self.control & CTRL_GALOG_EN != 0 && !self.ga_log.is_stopped()
    }

    /// The state translations depend on, from the registers now.
    pub fn remap_settings(&self) -> RemapSettings {
        let size = u32::try_from(self.dev_tab & DEV_TAB_SIZE_MASK).unwrap_or(0);
        let ga = self.control & CTRL_GA_EN != 0;
        RemapSettings {
            device_table: DeviceTable {
                base: self.dev_tab & BASE_ADDR_MASK,
                entries: (size + 1) * DTES_PER_PAGE,
            },
            mode: IrteMode {
                ga,
                xt: self.control & CTRL_XT_EN != 0,
                guest_apic: ga
                    && (self.control & CTRL_GAM_MASK) >> CTRL_GAM_SHIFT == CTRL_GAM_VAPIC,
            },
        }
    }

    // ---- Translation ------------------------------------------------------------------------

    /// What `msg` from `source` becomes, reading the DTE and IRTE from `mem` now. Pure: a
    /// fault is returned, not recorded; a guest-mode entry is returned, not posted.
    pub fn translate(
        &self,
        mem: &dyn GuestMemoryReader,
        source: SourceId,
        msg: MsiMessage,
    ) -> Translation {
        if !self.remapping_enabled() {
            return Translation::Passthrough(msg);
        }
        let device_id = source.0;
        match remap::remap(&self.remap_settings(), mem, device_id, &msg) {
            Ok(RemapOutcome::Passthrough(m)) => Translation::Passthrough(m),
            Ok(RemapOutcome::Remapped { index, message }) => Translation::Remapped {
                device_id,
                index,
                message,
            },
            Ok(RemapOutcome::GuestMode(post)) => Translation::GuestMode(post),
            Err(fault) => Translation::Blocked(fault),
        }
    }

    /// Delivers one interrupt the VMM handles itself: [`AmdViUnit::translate`], then the
    /// fault is recorded (blocked) or the guest-mode entry posted. The translation tells the
    /// VMM what (if anything) to send with `KVM_SIGNAL_MSI`; the effects are the unit's own.
    pub fn deliver(
        &mut self,
        mem: &dyn GuestMemoryReader,
        source: SourceId,
        msg: MsiMessage,
    ) -> (Translation, Effects) {
        let translation = self.translate(mem, source, msg);
        let effects = match translation {
            Translation::Blocked(fault) => self.record_fault(mem, &fault),
            Translation::GuestMode(post) => self.post(mem, &post),
            Translation::Passthrough(_) | Translation::Remapped { .. } => Effects::default(),
        };
        (translation, effects)
    }

    /// Records `fault` in the event log (unless suppressed or no event is due); the effects
    /// hold the event interrupt when one is due.
    pub fn record_fault(&mut self, mem: &dyn GuestMemoryReader, fault: &AmdFault) -> Effects {
        let mut effects = Effects::default();
        if let Some(event) = fault.event() {
            self.log_event(mem, &event, &mut effects);
        }
        effects
    }

    /// Performs a guest-mode post (see [`super::ga`]): sets the IRR bit, counts the
    /// doorbell or appends the GA log entry. A backing page outside guest RAM blocks the
    /// interrupt with a PAGE_TAB_HARDWARE_ERROR event.
    pub fn post(&mut self, mem: &dyn GuestMemoryReader, post: &GuestPost) -> Effects {
        let mut effects = Effects::default();
        if let Err(e) = ga::set_irr(mem, post) {
            log::debug!("amd-vi: posting {post:x?} failed: {e}");
            let fault = AmdFault {
                kind: FaultKind::BackingPageWriteFailed,
                device_id: post.device_id,
                domain_id: post.domain_id,
                index: Some(post.index),
                request_address: post.request_address,
                access_address: Some(post.irr_address().unwrap_or(post.backing_page)),
                suppressed: false,
            };
            effects.merge(self.record_fault(mem, &fault));
            return effects;
        }
        self.counters.posted += 1;
        match post.notification() {
            Notification::Doorbell(_) => self.counters.doorbells += 1,
            Notification::GaLog(entry) => self.log_ga(mem, entry, &mut effects),
            Notification::None => {}
        }
        effects
    }

    // ---- Logs and interrupts ------------------------------------------------------------------

    fn log_event(&mut self, mem: &dyn GuestMemoryReader, event: &Event, effects: &mut Effects) {
        let enabled = self.control & CTRL_EVT_LOG_EN != 0;
        match self.events.append(mem, enabled, &event.to_bytes()) {
            Append::Written => {
                self.counters.events_logged += 1;
                self.status |= STATUS_EVT_INT;
            }
            Append::Overflow => {
                self.counters.events_lost += 1;
                self.status |= STATUS_EVT_OVERFLOW;
            }
            Append::Dropped => self.counters.events_lost += 1,
            Append::WriteFailed(e) => {
                log::debug!("amd-vi: event log write failed: {e}");
                self.counters.events_lost += 1;
            }
        }
        self.update_interrupts(effects);
    }

    fn log_ga(&mut self, mem: &dyn GuestMemoryReader, entry: u64, effects: &mut Effects) {
        let enabled = self.control & CTRL_GALOG_EN != 0;
        match self.ga_log.append(mem, enabled, &entry.to_le_bytes()) {
            Append::Written => {
                self.counters.ga_log_entries += 1;
                self.status |= STATUS_GA_INT;
                // Mirror the tail pointer where software asked for it; a register never
                // programmed (0) asks for nothing, rather than for a write to address 0.
                if self.ga_tail_addr != 0 {
                    let tail = self.ga_log.tail().to_le_bytes();
                    if let Err(e) = mem.write(self.ga_tail_addr, &tail) {
                        log::debug!("amd-vi: GA log tail mirror write failed: {e}");
                    }
                }
            }
            Append::Overflow => {
                self.counters.ga_log_lost += 1;
                self.status |= STATUS_GALOG_OVERFLOW;
            }
            Append::Dropped => self.counters.ga_log_lost += 1,
            Append::WriteFailed(e) => {
                log::debug!("amd-vi: GA log write failed: {e}");
                self.counters.ga_log_lost += 1;
            }
        }
        self.update_interrupts(effects);
    }

    /// Re-evaluates the three interrupt lines and sends an interrupt for each that rose.
    fn update_interrupts(&mut self, effects: &mut Effects) {
        for cause in InterruptCause::ALL {
            let (enable, pending) = match cause {
                InterruptCause::EventLog => (CTRL_EVT_INT_EN, STATUS_EVT_INT | STATUS_EVT_OVERFLOW),
                InterruptCause::CompletionWait => (CTRL_COMWAIT_INT_EN, STATUS_COMWAIT_INT),
                InterruptCause::GaLog => (CTRL_GAINT_EN, STATUS_GA_INT | STATUS_GALOG_OVERFLOW),
            };
            let level = self.control & enable != 0 && self.status & pending != 0;
            if self.lines.set(cause, level) {
                self.send(cause, effects);
            }
        }
    }

    fn send(&self, cause: InterruptCause, effects: &mut Effects) {
        if self.control & CTRL_INTCAPXT_EN == 0 {
            effects.msi.push(cause);
            return;
        }
        let reg = match cause {
            InterruptCause::EventLog | InterruptCause::CompletionWait => self.xt_evt,
            InterruptCause::GaLog => self.xt_ga,
        };
        match xt_message(reg) {
            Some(msg) => effects.interrupts.push(msg),
            None => log::debug!("amd-vi: {cause:?} interrupt with XT register {reg:#x} dropped"),
        }
    }

    // ---- Command buffer -------------------------------------------------------------------------

    fn run_commands(&mut self, mem: &dyn GuestMemoryReader, effects: &mut Effects) {
        if !self.cmd_running() {
            return;
        }
        let run = self.cmd.run(mem);
        self.counters.commands += run.processed as u64;
        for command in run.executed {
            match command {
                Command::CompletionWait(wait) => {
                    if wait.interrupt {
                        self.status |= STATUS_COMWAIT_INT;
                        self.update_interrupts(effects);
                    }
                }
                Command::InvalidateDeviceTableEntry { device_id } => effects
                    .invalidations
                    .push(Invalidation::DeviceTableEntry(device_id)),
                Command::InvalidateInterruptTable { device_id } => effects
                    .invalidations
                    .push(Invalidation::InterruptTable(device_id)),
                Command::InvalidateAll => effects.invalidations.push(Invalidation::All),
                Command::InvalidateIommuPages | Command::InvalidateIotlbPages => {}
            }
        }
        if let Some(stop) = run.stopped {
            log::debug!("amd-vi: command buffer stopped: {stop}");
            self.log_event(mem, &stop.event(), effects);
        }
    }

    // ---- MMIO -----------------------------------------------------------------------------------

    /// Handles a guest read of `data.len()` bytes at `offset` in the register window.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let Some(access) = classify(offset, data.len()) else {
            data.iter_mut().for_each(|b| *b = 0xff);
            return;
        };
        let value = self.read_register(access.reg) >> access.shift;
        for (dst, src) in data.iter_mut().zip(value.to_le_bytes()) {
            *dst = src;
        }
    }

    fn read_register(&self, reg: u64) -> u64 {
        match reg {
            DEV_TAB_BASE_REG => self.dev_tab,
            CMD_BUF_BASE_REG => self.cmd.base_register(),
            EVT_LOG_BASE_REG => self.events.base_register(),
            CONTROL_REG => self.control,
            EXCL_BASE_REG => self.excl_base,
            EXCL_LIMIT_REG => self.excl_limit,
            EXT_FEATURE_REG => self.efr,
            GA_LOG_BASE_REG => self.ga_log.base_register(),
            GA_LOG_TAIL_ADDR_REG => self.ga_tail_addr,
            XT_EVT_INT_CTL_REG => self.xt_evt,
            XT_PPR_INT_CTL_REG => self.xt_ppr,
            XT_GA_INT_CTL_REG => self.xt_ga,
            CMD_HEAD_REG => self.cmd.head(),
            CMD_TAIL_REG => self.cmd.tail(),
            EVT_HEAD_REG => self.events.head(),
            EVT_TAIL_REG => self.events.tail(),
            STATUS_REG => u64::from(self.status()),
            GA_HEAD_REG => self.ga_log.head(),
            GA_TAIL_REG => self.ga_log.tail(),
            _ => 0,
        }
    }

    /// Handles a guest write of `data` at `offset` in the register window; `mem` is where
    /// the command buffer, the logs and the completion-wait stores live.
    pub fn mmio_write(&mut self, mem: &dyn GuestMemoryReader, offset: u64, data: &[u8]) -> Effects {
        let mut effects = Effects::default();
        let Some(access) = classify(offset, data.len()) else {
            log::debug!("amd-vi: ignoring {}-byte write at {offset:#x}", data.len());
            return effects;
        };
        let mut bytes = [0u8; QWORD];
        for (dst, src) in bytes.iter_mut().zip(data) {
            *dst = *src;
        }
        let value = u64::from_le_bytes(bytes) << access.shift;
        self.write_register(mem, &access, value, &mut effects);
        effects
    }

    fn write_register(
        &mut self,
        mem: &dyn GuestMemoryReader,
        access: &Access,
        value: u64,
        effects: &mut Effects,
    ) {
        let mask = access.mask;
        let merge = |old: u64| (old & !mask) | (value & mask);
        match access.reg {
            DEV_TAB_BASE_REG => {
                let new = merge(self.dev_tab) & (BASE_ADDR_MASK | DEV_TAB_SIZE_MASK);
                if new != self.dev_tab && self.remapping_enabled() {
                    effects.remap_state_changed = true;
                }
                self.dev_tab = new;
            }
            CMD_BUF_BASE_REG => {
                if self.control & CTRL_CMDBUF_EN != 0 {
                    log::debug!("amd-vi: command buffer base written while enabled, ignored");
                } else {
                    self.cmd
                        .write_base_register(merge(self.cmd.base_register()));
                }
            }
            EVT_LOG_BASE_REG => {
                if self.control & CTRL_EVT_LOG_EN != 0 {
                    log::debug!("amd-vi: event log base written while enabled, ignored");
                } else {
                    self.events
                        .write_base_register(merge(self.events.base_register()));
                }
            }
            CONTROL_REG => {
                let new = merge(self.control) & self.control_writable;
                self.write_control(mem, new, effects);
            }
            EXCL_BASE_REG => self.excl_base = merge(self.excl_base) & EXCL_BASE_WRITABLE,
            EXCL_LIMIT_REG => self.excl_limit = merge(self.excl_limit) & BASE_ADDR_MASK,
            GA_LOG_BASE_REG => {
                if self.control & CTRL_GALOG_EN != 0 {
                    log::debug!("amd-vi: GA log base written while enabled, ignored");
                } else if self.config.vapic {
                    self.ga_log
                        .write_base_register(merge(self.ga_log.base_register()));
                }
            }
            GA_LOG_TAIL_ADDR_REG => {
                if self.config.vapic {
                    self.ga_tail_addr = merge(self.ga_tail_addr) & GA_LOG_TAIL_ADDR_MASK;
                }
            }
            XT_EVT_INT_CTL_REG | XT_PPR_INT_CTL_REG | XT_GA_INT_CTL_REG if self.config.xt => {
                let reg = match access.reg {
                    XT_EVT_INT_CTL_REG => &mut self.xt_evt,
                    XT_PPR_INT_CTL_REG => &mut self.xt_ppr,
                    _ => &mut self.xt_ga,
                };
                *reg = merge(*reg) & XT_WRITABLE;
            }
            CMD_HEAD_REG => {
                if self.cmd_running() {
                    log::debug!("amd-vi: command head written while running, ignored");
                } else {
                    self.cmd.write_head(merge(self.cmd.head()));
                }
            }
            CMD_TAIL_REG => {
                self.cmd.write_tail(merge(self.cmd.tail()));
                self.run_commands(mem, effects);
            }
            EVT_HEAD_REG => self.events.write_head(merge(self.events.head())),
            EVT_TAIL_REG => {
                if self.control & CTRL_EVT_LOG_EN != 0 {
                    log::debug!("amd-vi: event log tail written while enabled, ignored");
                } else {
                    self.events.write_tail(merge(self.events.tail()));
                }
            }
            STATUS_REG => {
                let clear = ((value & mask) as u32) & STATUS_RW1C;
                self.status &= !clear;
                self.update_interrupts(effects);
            }
            GA_HEAD_REG => self.ga_log.write_head(merge(self.ga_log.head())),
            GA_TAIL_REG => {
                if self.control & CTRL_GALOG_EN != 0 {
                    log::debug!("amd-vi: GA log tail written while enabled, ignored");
                } else {
                    self.ga_log.write_tail(merge(self.ga_log.tail()));
                }
            }
            reg => log::debug!("amd-vi: write to unimplemented register {reg:#x} ignored"),
        }
    }

    fn write_control(&mut self, mem: &dyn GuestMemoryReader, new: u64, effects: &mut Effects) {
        let old = self.control;
        self.control = new;
        let changed = old ^ new;
        let rose = changed & new;
        let fell = changed & old;
        if changed & CTRL_REMAP_STATE != 0 {
            effects.remap_state_changed = true;
        }
        if fell & CTRL_CMDBUF_EN != 0 {
            self.cmd.restart();
        }
        if rose & CTRL_EVT_LOG_EN != 0 {
            self.events.restart();
        }
        if rose & CTRL_GALOG_EN != 0 {
            self.ga_log.restart();
        }
        if fell & CTRL_GALOG_EN != 0 && !self.ga_log.is_empty() {
            log::debug!("amd-vi: GA log disabled with entries pending; they stay in the log");
        }
        self.update_interrupts(effects);
        self.run_commands(mem, effects);
    }
}
