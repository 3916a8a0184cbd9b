//! The `amd_mmio` harness: a guest programming an AMD-Vi unit's register window while the
//! fuzzer also controls guest memory (the command buffer, device table entries, interrupt
//! tables, the logs' memory and vAPIC backing pages) and interrupts arrive from devices.
//!
//! Invariants asserted after every operation:
//!
//! * no panic, whatever the access size, offset, value or memory content;
//! * every interrupt in [`Effects::interrupts`] is one KVM accepts ([`crate::assert_kvm_msi`]),
//!   and the unit uses its XT registers or its PCI MSI, never both at once;
//! * one register write fetches at most one command buffer's worth of commands and writes
//!   guest memory at most once per command plus one event, so a guest cannot make the VMM
//!   loop;
//! * every guest-memory write lands where the unit may write: a 16-byte event inside the
//!   event log, an 8-byte GA log entry inside the GA log, an IRR dword inside a vAPIC
//!   backing page's IRR, or an 8-byte store or tail mirror at an 8-byte-aligned address;
//! * the command buffer never stays stuck: while `CmdBufRun` is set, head and tail are
//!   inside the buffer and equal (every command up to the tail ran);
//! * the status register holds only defined bits, the control register only writable ones;
//! * translation is pure and stable: no guest-memory write, at most two reads (DTE and
//!   IRTE), the same answer twice; a remapped message keeps an 8-bit destination outside
//!   x2APIC mode; a refused DTE or IRTE read is the matching hardware-error fault; a fault
//!   names the requester; a guest-mode translation is never offered as a route.
//!
//! Guest-memory accesses outside [`FakeMem`]'s RAM are refused with `MemError`.

use std::path::Path;

use virtual_iommu::amd::cmd::build as cmd;
use virtual_iommu::amd::dte::Dte;
use virtual_iommu::amd::intr::xt_register;
use virtual_iommu::amd::regs::*;
use virtual_iommu::amd::{AmdViConfig, AmdViUnit, Effects, FaultKind, Translation};
use virtual_iommu::msi::{MsiMessage, SourceId};

use crate::fake_mem::FakeMem;
use crate::{access_size, assert_kvm_msi, for_each_op, fuzz_type, value_bytes};

/// Where the bring-up puts the command buffer (256 commands, 4 KiB).
pub const CMD_BASE: u64 = 0x0000;
/// Where the bring-up puts the device table (128 entries, 4 KiB).
pub const DEV_TAB: u64 = 0x1000;
/// Where the bring-up puts the event log (256 entries, 4 KiB).
pub const EVT_BASE: u64 = 0x2000;
/// Where the bring-up puts the GA log (512 entries, 4 KiB).
pub const GA_BASE: u64 = 0x3000;
/// Interrupt tables: sixteen 1 KiB slots.
pub const IRT_AREA: u64 = 0x4000;
/// Size of one interrupt table slot.
pub const IRT_SLOT: u64 = 0x400;
/// vAPIC backing pages: four pages.
pub const BACKING: u64 = 0x8000;
/// Completion-wait stores and the GA log tail mirror.
pub const SCRATCH: u64 = 0xf000;

/// Offsets the [`AmdOp::Reg`] operation picks from (index modulo the length).
pub const NAMED_REGS: [u64; 24] = [
    DEV_TAB_BASE_REG,
    CMD_BUF_BASE_REG,
    EVT_LOG_BASE_REG,
    CONTROL_REG,
    CONTROL_REG + 4,
    EXCL_BASE_REG,
    EXCL_LIMIT_REG,
    EXT_FEATURE_REG,
    GA_LOG_BASE_REG,
    GA_LOG_TAIL_ADDR_REG,
    XT_EVT_INT_CTL_REG,
    XT_PPR_INT_CTL_REG,
    XT_GA_INT_CTL_REG,
    CMD_HEAD_REG,
    CMD_TAIL_REG,
    EVT_HEAD_REG,
    EVT_TAIL_REG,
    STATUS_REG,
    GA_HEAD_REG,
    GA_TAIL_REG,
    0x0038,
    0x015c,
    0x2030,
    0x3ff8,
];

/// The control bits, in the order [`AmdOp::Control`] numbers them.
pub const CONTROL_BITS: [u64; 14] = [
    CTRL_IOMMU_EN,
    CTRL_EVT_LOG_EN,
    CTRL_EVT_INT_EN,
    CTRL_COMWAIT_INT_EN,
    CTRL_CMDBUF_EN,
    CTRL_GA_EN,
    1 << CTRL_GAM_SHIFT,
    1 << (CTRL_GAM_SHIFT + 1),
    CTRL_GALOG_EN,
    CTRL_GAINT_EN,
    CTRL_XT_EN,
    CTRL_INTCAPXT_EN,
    1 << 59,
    1 << 16,
];

fuzz_type! {
    /// How the unit is configured and whether it starts the way Linux brings it up.
    pub struct AmdSetup {
        /// XTSup.
        pub xt: bool,
        /// GASup.
        pub ga: bool,
        /// GAMSup = vAPIC.
        pub vapic: bool,
        /// Run Linux's bring-up before the operations.
        pub bring_up: bool,
    }
}

fuzz_type! {
    /// A command the harness writes into the command buffer.
    pub enum Cmd {
        Wait { store: bool, slot: u8, data: u64, interrupt: bool },
        InvDte { device: u16 },
        InvIrt { device: u16 },
        InvAll {},
        InvPages { domain: u16 },
        InvIotlb { device: u16, qdep: u8 },
        Raw { qw0: u64, qw1: u64 },
    }
}

fuzz_type! {
    /// One step of the guest (or of a device).
    pub enum AmdOp {
        /// A read of `size` bytes anywhere in (or just past) the window.
        Read { offset: u16, size: u8 },
        /// A write of `size` bytes anywhere in (or just past) the window.
        Write { offset: u16, size: u8, value: u64 },
        /// A dword (or qword) write to a named register.
        Reg { reg: u8, qword: bool, value: u64 },
        /// The control register written the way Linux does: read, set and clear bits
        /// (bit `n` is `CONTROL_BITS[n]`), write back.
        Control { set: u16, clear: u16 },
        /// A base register: 0 device table, 1 command buffer, 2 event log, 3 GA log;
        /// `page` << 12 with length code (or device table size) `len`.
        Base { which: u8, page: u8, len: u16 },
        /// Commands written at the tail, then the tail register advanced past them.
        Submit { cmds: Vec<Cmd> },
        /// A command written into slot `slot` of the buffer without moving the tail.
        Command { slot: u16, cmd: Cmd },
        /// A DTE for `device` (in the current device table) from fields.
        Dte { device: u16, iv: bool, len: u8, int_ctl: u8, ig: bool, pass: u8, table: u8, domain: u16 },
        /// A raw DTE.
        RawDte { device: u16, q0: u64, q1: u64, q2: u64, q3: u64 },
        /// A 128-bit IRTE at `index` of table slot `table`.
        Irte { table: u8, index: u16, lo: u64, hi: u64 },
        /// A guest-mode IRTE from fields.
        GuestIrte { table: u8, index: u16, vector: u8, page: u8, tag: u32, dest: u32, is_run: bool, log: bool },
        /// A 32-bit IRTE at `index` of table slot `table`.
        LegacyIrte { table: u8, index: u16, value: u32 },
        /// A raw guest-memory write.
        Mem { addr: u32, value: u64 },
        /// A device interrupt in Linux's format: data = index (plus trigger bits).
        Indexed { device: u16, index: u16, level: bool },
        /// A device interrupt with any message.
        Interrupt { device: u16, address_lo: u32, address_hi: u32, data: u32 },
        /// An XT interrupt control register (0 event, 1 PPR, 2 GA) for `dest` and `vector`.
        Xt { which: u8, dest: u32, vector: u8, logical: bool },
        /// Status bits written 1 to clear.
        Status { value: u32 },
        /// Platform reset.
        Reset {},
    }
}

/// The harness: a unit and the guest memory it sees.
pub struct Harness {
    /// The unit under test.
    pub unit: AmdViUnit,
    /// Guest memory.
    pub mem: FakeMem,
}

impl Harness {
    /// A unit configured by `setup` over zeroed memory, brought up if asked.
    pub fn new(setup: &AmdSetup) -> Self {
        let mut h = Harness {
            unit: AmdViUnit::new(AmdViConfig {
                xt: setup.xt,
                ga: setup.ga,
                vapic: setup.vapic,
            }),
            mem: FakeMem::new(),
        };
        if setup.bring_up {
            h.bring_up();
        }
        h
    }

    /// Linux's bring-up order (`early_enable_iommu`, event log, interrupts, vAPIC).
    pub fn bring_up(&mut self) {
        self.write64(DEV_TAB_BASE_REG, DEV_TAB);
        self.write64(CMD_BUF_BASE_REG, CMD_BASE | 8 << 56);
        self.write32(CMD_HEAD_REG, 0);
        self.write32(CMD_TAIL_REG, 0);
        self.feature(CTRL_CMDBUF_EN, true);
        self.feature(CTRL_GA_EN, true);
        self.feature(CTRL_XT_EN, true);
        self.feature(CTRL_IOMMU_EN, true);
        self.write64(EVT_LOG_BASE_REG, EVT_BASE | 8 << 56);
        self.write32(EVT_HEAD_REG, 0);
        self.write32(EVT_TAIL_REG, 0);
        self.feature(CTRL_EVT_LOG_EN, true);
        self.write64(XT_EVT_INT_CTL_REG, xt_register(0x1_0001, 0x40, false));
        self.write64(XT_GA_INT_CTL_REG, xt_register(0x1_0001, 0x41, false));
        self.feature(CTRL_INTCAPXT_EN, true);
        self.feature(CTRL_EVT_INT_EN, true);
        self.write64(GA_LOG_BASE_REG, GA_BASE | 8 << 56);
        self.write64(GA_LOG_TAIL_ADDR_REG, SCRATCH + 0x800);
        self.feature(CTRL_GAINT_EN, true);
        self.feature(CTRL_GALOG_EN, true);
        let ctrl = self.read64(CONTROL_REG) | 1 << CTRL_GAM_SHIFT;
        self.write64(CONTROL_REG, ctrl);
    }

    /// Reads a dword register.
    pub fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.unit.mmio_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Reads a qword register.
    pub fn read64(&self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.unit.mmio_read(offset, &mut b);
        u64::from_le_bytes(b)
    }

    /// Linux's `iommu_feature_enable`/`disable`.
    pub fn feature(&mut self, bit: u64, on: bool) -> Effects {
        let ctrl = self.read64(CONTROL_REG);
        self.write64(CONTROL_REG, if on { ctrl | bit } else { ctrl & !bit })
    }

    /// Writes a dword register.
    pub fn write32(&mut self, offset: u64, value: u32) -> Effects {
        self.write(offset, &value.to_le_bytes())
    }

    /// Writes a qword register.
    pub fn write64(&mut self, offset: u64, value: u64) -> Effects {
        self.write(offset, &value.to_le_bytes())
    }

    /// A guest write, with every per-write invariant checked.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Effects {
        let xt_before = self.unit.control() & CTRL_INTCAPXT_EN != 0;
        let entries = self.unit.command_buffer().entries() as usize;
        self.mem.reset_counters();
        let effects = self.unit.mmio_write(&self.mem, offset, data);
        let xt_after = self.unit.control() & CTRL_INTCAPXT_EN != 0;
        self.check_effects(&effects, xt_before, xt_after);
        // A base write may change the buffer size mid-write only while it is disabled,
        // i.e. when nothing is fetched; bound by the larger of the two sizes.
        let entries = entries.max(self.unit.command_buffer().entries() as usize);
        assert!(
            self.mem.reads() <= entries,
            "{} command fetches for a buffer of {entries}",
            self.mem.reads()
        );
        assert!(
            self.mem.writes() <= entries + 1,
            "{} guest-memory writes for a buffer of {entries}",
            self.mem.writes()
        );
        self.check_writes();
        self.check_registers();
        effects
    }

    fn check_effects(&self, effects: &Effects, xt_before: bool, xt_after: bool) {
        for m in &effects.interrupts {
            assert_kvm_msi(m, "AMD-Vi XT interrupt");
        }
        if !xt_before && !xt_after {
            assert!(effects.interrupts.is_empty(), "XT interrupt in MSI mode");
        }
        if xt_before && xt_after {
            assert!(effects.msi.is_empty(), "PCI MSI in XT mode");
        }
    }

    /// Every guest-memory write the unit made since the last counter reset is one it may
    /// make.
    fn check_writes(&self) {
        let evt = self.unit.event_log();
        for (addr, bytes) in self.mem.status_writes() {
            match bytes.len() {
                16 => {
                    let off = addr.wrapping_sub(evt.base());
                    assert!(
                        off < evt.size() && off % 16 == 0,
                        "event write at {addr:#x} outside the log at {:#x}+{:#x}",
                        evt.base(),
                        evt.size()
                    );
                }
                // GA log entries, completion-wait stores and the GA tail mirror.
                8 => assert_eq!(addr % 8, 0, "unaligned 8-byte write at {addr:#x}"),
                4 => {
                    let in_page = addr & 0xfff;
                    assert!(
                        (0x200..0x280).contains(&in_page) && in_page % 0x10 == 0,
                        "4-byte write at {addr:#x} is not an IRR dword"
                    );
                }
                n => panic!("{n}-byte guest-memory write at {addr:#x}"),
            }
        }
    }

    /// Register invariants.
    pub fn check_registers(&self) {
        let status = self.read32(STATUS_REG);
        let defined = STATUS_RW1C | STATUS_EVT_RUN | STATUS_CMDBUF_RUN | STATUS_GALOG_RUN;
        assert_eq!(status & !defined, 0, "undefined status bits {status:#x}");
        assert_eq!(self.read32(STATUS_REG + 4), 0);
        let ctrl = self.read64(CONTROL_REG);
        assert_eq!(
            ctrl & !control_writable(self.unit.extended_features()),
            0,
            "control {ctrl:#x} holds unwritable bits"
        );
        assert_eq!(self.read64(EXT_FEATURE_REG), self.unit.extended_features());
        let cmd = self.unit.command_buffer();
        if status & STATUS_CMDBUF_RUN != 0 {
            assert!(cmd.head() < cmd.size(), "command head outside the buffer");
            assert!(cmd.tail() < cmd.size(), "running with the tail outside");
            assert_eq!(cmd.head(), cmd.tail(), "command buffer stuck while running");
        }
        assert_eq!(self.read64(CMD_HEAD_REG), cmd.head());
        assert_eq!(cmd.head() & !PTR16_MASK, 0);
        let evt = self.unit.event_log();
        assert_eq!(evt.tail() & !PTR16_MASK, 0);
        let ga = self.unit.ga_log();
        assert_eq!(ga.tail() & !PTR8_MASK, 0);
    }

    /// Sends a device interrupt through the unit, checking translation invariants.
    fn interrupt(&mut self, device: u16, msg: MsiMessage) {
        self.mem.reset_counters();
        let t = self.unit.translate(&self.mem, SourceId(device), msg);
        assert_eq!(self.mem.writes(), 0, "translation wrote guest memory");
        assert!(
            self.mem.reads() <= 2,
            "{} reads to translate",
            self.mem.reads()
        );
        if self.mem.refused() > 0 {
            let kind = t.fault().map(|f| f.kind);
            assert!(
                matches!(
                    kind,
                    Some(FaultKind::DeviceTableReadFailed | FaultKind::TableReadFailed)
                ),
                "refused table read gave {t:?}"
            );
        }
        assert_eq!(
            self.unit.translate(&self.mem, SourceId(device), msg),
            t,
            "translation not stable"
        );
        match t {
            Translation::Passthrough(m) => assert_eq!(m, msg),
            Translation::Remapped {
                device_id, message, ..
            } => {
                assert_eq!(device_id, device);
                assert_kvm_msi(&message, "remapped interrupt");
                if self.unit.control() & CTRL_XT_EN == 0 {
                    assert!(
                        message.destination() <= 0xff,
                        "32-bit destination in xAPIC mode"
                    );
                }
                assert!(t.is_cacheable());
            }
            Translation::GuestMode(p) => {
                assert_eq!(p.device_id, device);
                assert!(!t.is_cacheable() && t.message().is_none());
                assert!(self.unit.control() & CTRL_GA_EN != 0);
            }
            Translation::Blocked(f) => {
                assert_eq!(f.device_id, device);
                assert!(t.message().is_none());
            }
        }
        self.mem.reset_counters();
        let xt = self.unit.control() & CTRL_INTCAPXT_EN != 0;
        let (t2, effects) = self.unit.deliver(&self.mem, SourceId(device), msg);
        assert_eq!(t2, t);
        self.check_effects(&effects, xt, xt);
        assert!(
            self.mem.writes() <= 3,
            "{} writes to deliver",
            self.mem.writes()
        );
        self.check_writes();
        self.check_registers();
    }

    fn dte_address(&self, device: u16) -> u64 {
        let base = self.read64(DEV_TAB_BASE_REG) & BASE_ADDR_MASK;
        base.wrapping_add(u64::from(device) * 32)
    }

    fn table_address(table: u8) -> u64 {
        IRT_AREA + u64::from(table % 16) * IRT_SLOT
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &AmdOp) {
        match *op {
            AmdOp::Read { offset, size } => {
                let mut data = vec![0u8; access_size(size)];
                self.unit.mmio_read(u64::from(offset), &mut data);
            }
            AmdOp::Write {
                offset,
                size,
                value,
            } => {
                self.write(u64::from(offset), &value_bytes(value, access_size(size)));
            }
            AmdOp::Reg { reg, qword, value } => {
                let offset = NAMED_REGS[usize::from(reg) % NAMED_REGS.len()];
                if qword {
                    self.write64(offset & !7, value);
                } else {
                    self.write32(offset, value as u32);
                }
            }
            AmdOp::Control { set, clear } => {
                let mut ctrl = self.read64(CONTROL_REG);
                for (n, bit) in CONTROL_BITS.iter().enumerate() {
                    if set & (1 << n) != 0 {
                        ctrl |= bit;
                    }
                    if clear & (1 << n) != 0 {
                        ctrl &= !bit;
                    }
                }
                self.write64(CONTROL_REG, ctrl);
            }
            AmdOp::Base { which, page, len } => {
                let base = u64::from(page) << 12;
                let (reg, value) = match which % 4 {
                    0 => (DEV_TAB_BASE_REG, base | (u64::from(len) & 0x1ff)),
                    1 => (CMD_BUF_BASE_REG, base | (u64::from(len) & 0xf) << 56),
                    2 => (EVT_LOG_BASE_REG, base | (u64::from(len) & 0xf) << 56),
                    _ => (GA_LOG_BASE_REG, base | (u64::from(len) & 0xf) << 56),
                };
                self.write64(reg, value);
            }
            AmdOp::Submit { ref cmds } => {
                let buffer = self.unit.command_buffer();
                let (base, size) = (buffer.base_register() & BASE_ADDR_MASK, buffer.size());
                let mut tail = buffer.tail();
                for c in cmds.iter().take(64) {
                    let (qw0, qw1) = encode_cmd(c);
                    self.mem.poke(base.wrapping_add(tail), &qw0.to_le_bytes());
                    self.mem
                        .poke(base.wrapping_add(tail).wrapping_add(8), &qw1.to_le_bytes());
                    tail = (tail + 16) % size.max(16);
                }
                self.write32(CMD_TAIL_REG, tail as u32);
            }
            AmdOp::Command { slot, ref cmd } => {
                let base = self.unit.command_buffer().base_register() & BASE_ADDR_MASK;
                let gpa = base.wrapping_add(u64::from(slot) * 16);
                let (qw0, qw1) = encode_cmd(cmd);
                self.mem.poke(gpa, &qw0.to_le_bytes());
                self.mem.poke(gpa.wrapping_add(8), &qw1.to_le_bytes());
            }
            AmdOp::Dte {
                device,
                iv,
                len,
                int_ctl,
                ig,
                pass,
                table,
                domain,
            } => {
                let mut q2 = Self::table_address(table)
                    | (u64::from(len & 0xf) << 1)
                    | (u64::from(int_ctl & 3) << 60)
                    | (u64::from(pass & 0x7) << 56)
                    | (u64::from(pass >> 6) << 62);
                if iv {
                    q2 |= 1;
                }
                if ig {
                    q2 |= 1 << 5;
                }
                let q1 = u64::from(domain) | (u64::from((pass >> 3) & 3) << 40);
                let dte = Dte {
                    qwords: [3, q1, q2, 0],
                };
                self.mem.poke(self.dte_address(device), &dte.to_bytes());
            }
            AmdOp::RawDte {
                device,
                q0,
                q1,
                q2,
                q3,
            } => {
                let dte = Dte {
                    qwords: [q0, q1, q2, q3],
                };
                self.mem.poke(self.dte_address(device), &dte.to_bytes());
            }
            AmdOp::Irte {
                table,
                index,
                lo,
                hi,
            } => {
                let gpa = Self::table_address(table) + u64::from(index % 64) * 16;
                self.mem.poke(gpa, &lo.to_le_bytes());
                self.mem.poke(gpa + 8, &hi.to_le_bytes());
            }
            AmdOp::GuestIrte {
                table,
                index,
                vector,
                page,
                tag,
                dest,
                is_run,
                log,
            } => {
                let backing = if page & 0x80 != 0 {
                    u64::from(page) << 16
                } else {
                    BACKING + u64::from(page % 4) * 0x1000
                };
                let e = virtual_iommu::amd::irte::build::guest_mode(
                    vector, backing, tag, dest, is_run, log,
                );
                let gpa = Self::table_address(table) + u64::from(index % 64) * 16;
                self.mem.poke(gpa, &e.to_bytes());
            }
            AmdOp::LegacyIrte {
                table,
                index,
                value,
            } => {
                let gpa = Self::table_address(table) + u64::from(index % 256) * 4;
                self.mem.poke(gpa, &value.to_le_bytes());
            }
            AmdOp::Mem { addr, value } => self.mem.poke(u64::from(addr), &value.to_le_bytes()),
            AmdOp::Indexed {
                device,
                index,
                level,
            } => {
                let mut data = u32::from(index);
                if level {
                    data |= 0xc000;
                }
                self.interrupt(
                    device,
                    MsiMessage {
                        address_lo: 0xfee0_0000,
                        address_hi: 0,
                        data,
                    },
                );
            }
            AmdOp::Interrupt {
                device,
                address_lo,
                address_hi,
                data,
            } => self.interrupt(
                device,
                MsiMessage {
                    address_lo,
                    address_hi,
                    data,
                },
            ),
            AmdOp::Xt {
                which,
                dest,
                vector,
                logical,
            } => {
                let reg = [XT_EVT_INT_CTL_REG, XT_PPR_INT_CTL_REG, XT_GA_INT_CTL_REG]
                    [usize::from(which % 3)];
                self.write64(reg, xt_register(dest, vector, logical));
            }
            AmdOp::Status { value } => {
                self.write32(STATUS_REG, value);
            }
            AmdOp::Reset {} => self.unit.reset(),
        }
    }
}

/// The two qwords of `c`.
pub fn encode_cmd(c: &Cmd) -> (u64, u64) {
    match *c {
        Cmd::Wait {
            store,
            slot,
            data,
            interrupt,
        } => {
            let addr = SCRATCH + u64::from(slot) * 8;
            cmd::completion_wait(store.then_some((addr, data)), interrupt)
        }
        Cmd::InvDte { device } => cmd::invalidate_dte(device),
        Cmd::InvIrt { device } => cmd::invalidate_irt(device),
        Cmd::InvAll {} => cmd::invalidate_all(),
        Cmd::InvPages { domain } => cmd::invalidate_pages_all(domain),
        Cmd::InvIotlb { device, qdep } => cmd::invalidate_iotlb_all(device, qdep),
        Cmd::Raw { qw0, qw1 } => (qw0, qw1),
    }
}

/// Runs one `amd_mmio` input.
pub fn run(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(setup) = <AmdSetup as arbitrary::Arbitrary>::arbitrary(&mut u) else {
        return;
    };
    let mut h = Harness::new(&setup);
    let rest = u.take_rest();
    // Bound the work per input so a long input cannot time out the fuzzer.
    let mut budget = 2048;
    for_each_op::<AmdOp>(rest, |op| {
        if budget > 0 {
            budget -= 1;
            h.apply(&op);
        }
    });
    h.check_registers();
}

/// The bytes [`run`] decodes into `setup` followed by `ops`.
pub fn encode_input(setup: &AmdSetup, ops: &[AmdOp]) -> Vec<u8> {
    use crate::Encode;
    let mut out = setup.to_bytes();
    for op in ops {
        op.encode(&mut out);
    }
    out
}

/// A DTE op remapping `device` through table slot `table` (512 entries, IntCtl = remap).
fn remap_dte(device: u16, table: u8) -> AmdOp {
    AmdOp::Dte {
        device,
        iv: true,
        len: 9,
        int_ctl: 2,
        ig: false,
        pass: 0,
        table,
        domain: device,
    }
}

/// Meaningful seed inputs: (file name, setup, operations).
pub fn seed_inputs() -> Vec<(&'static str, AmdSetup, Vec<AmdOp>)> {
    let full = AmdSetup {
        xt: true,
        ga: true,
        vapic: true,
        bring_up: true,
    };
    let remapped = |dest: u32, vector: u8| {
        let e = virtual_iommu::amd::irte::build::remapped(vector, dest, false);
        let b = e.to_bytes();
        let lo = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
        let hi = u64::from_le_bytes(b[8..].try_into().unwrap_or([0; 8]));
        (lo, hi)
    };
    let (lo, hi) = remapped(0x1_0203, 0x31);
    let linux = vec![
        AmdOp::Submit {
            cmds: vec![
                Cmd::InvAll {},
                Cmd::Wait {
                    store: true,
                    slot: 0,
                    data: 1,
                    interrupt: false,
                },
            ],
        },
        remap_dte(0x18, 1),
        AmdOp::Irte {
            table: 1,
            index: 3,
            lo,
            hi,
        },
        AmdOp::Submit {
            cmds: vec![
                Cmd::InvDte { device: 0x18 },
                Cmd::InvIrt { device: 0x18 },
                Cmd::Wait {
                    store: true,
                    slot: 0,
                    data: 2,
                    interrupt: false,
                },
            ],
        },
        AmdOp::Indexed {
            device: 0x18,
            index: 3,
            level: false,
        },
        AmdOp::Indexed {
            device: 0x18,
            index: 4,
            level: true,
        },
        AmdOp::Status { value: 0x7ff },
    ];
    let guest = vec![
        remap_dte(0x20, 2),
        AmdOp::GuestIrte {
            table: 2,
            index: 1,
            vector: 0x61,
            page: 0,
            tag: 0x8000_0201,
            dest: 3,
            is_run: false,
            log: true,
        },
        AmdOp::Indexed {
            device: 0x20,
            index: 1,
            level: false,
        },
        AmdOp::GuestIrte {
            table: 2,
            index: 1,
            vector: 0x61,
            page: 0,
            tag: 0x8000_0201,
            dest: 3,
            is_run: true,
            log: true,
        },
        AmdOp::Indexed {
            device: 0x20,
            index: 1,
            level: false,
        },
        AmdOp::GuestIrte {
            table: 2,
            index: 2,
            vector: 0x62,
            page: 0xff,
            tag: 7,
            dest: 3,
            is_run: false,
            log: true,
        },
        AmdOp::Indexed {
            device: 0x20,
            index: 2,
            level: false,
        },
        AmdOp::Control {
            set: 0,
            clear: 1 << 8,
        },
        AmdOp::GuestIrte {
            table: 2,
            index: 1,
            vector: 0x61,
            page: 0,
            tag: 0x8000_0201,
            dest: 3,
            is_run: false,
            log: true,
        },
        AmdOp::Indexed {
            device: 0x20,
            index: 1,
            level: false,
        },
    ];
    let errors = vec![
        AmdOp::Submit {
            cmds: vec![
                Cmd::InvIrt { device: 1 },
                Cmd::Raw {
                    qw0: 0x9 << 60,
                    qw1: 0,
                },
                Cmd::InvIrt { device: 2 },
            ],
        },
        AmdOp::Control {
            set: 0,
            clear: 1 << 4,
        },
        AmdOp::Command {
            slot: 1,
            cmd: Cmd::InvAll {},
        },
        AmdOp::Control {
            set: 1 << 4,
            clear: 0,
        },
        AmdOp::Reg {
            reg: 14,
            qword: false,
            value: 0x7_fff0,
        },
        AmdOp::Interrupt {
            device: 0x300,
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x400,
        },
        AmdOp::Base {
            which: 0,
            page: 0xf0,
            len: 0x1ff,
        },
        AmdOp::Indexed {
            device: 5,
            index: 1,
            level: false,
        },
    ];
    let mut overflow = vec![remap_dte(0x18, 1)];
    for _ in 0..260 {
        overflow.push(AmdOp::Indexed {
            device: 0x18,
            index: 0x300,
            level: false,
        });
    }
    overflow.push(AmdOp::Status { value: 0x603 });
    overflow.push(AmdOp::Control {
        set: 0,
        clear: 1 << 1,
    });
    overflow.push(AmdOp::Control {
        set: 1 << 1,
        clear: 0,
    });
    let legacy = AmdSetup {
        xt: false,
        ga: false,
        vapic: false,
        bring_up: true,
    };
    let legacy_ops = vec![
        remap_dte(0x18, 1),
        AmdOp::LegacyIrte {
            table: 1,
            index: 3,
            value: 0x0031_0201,
        },
        AmdOp::Indexed {
            device: 0x18,
            index: 3,
            level: false,
        },
        AmdOp::Control {
            set: 1 << 3,
            clear: 0,
        },
        AmdOp::Submit {
            cmds: vec![Cmd::Wait {
                store: false,
                slot: 0,
                data: 0,
                interrupt: true,
            }],
        },
    ];
    vec![
        ("seed-linux-remap", full.clone(), linux),
        ("seed-guest-mode", full.clone(), guest),
        ("seed-command-errors", full.clone(), errors),
        ("seed-event-overflow", full, overflow),
        ("seed-legacy-msi", legacy, legacy_ops),
    ]
}

/// [`seed_inputs`] encoded: (file name, bytes).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    seed_inputs()
        .into_iter()
        .map(|(name, setup, ops)| (name, encode_input(&setup, &ops)))
        .collect()
}

/// Writes [`seeds`] into `corpus_dir` (the `gen_amd_mmio_seeds` example).
pub fn write_seeds(corpus_dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(corpus_dir)?;
    let seeds = seeds();
    for (name, bytes) in &seeds {
        std::fs::write(corpus_dir.join(name), bytes)?;
    }
    Ok(seeds.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated seeds run cleanly and decode back to what they encode.
    #[test]
    fn seeds_run_and_round_trip() {
        for (name, setup, ops) in seed_inputs() {
            let bytes = encode_input(&setup, &ops);
            run(&bytes);
            let mut u = arbitrary::Unstructured::new(&bytes);
            let decoded = <AmdSetup as arbitrary::Arbitrary>::arbitrary(&mut u).expect(name);
            assert_eq!(decoded, setup, "{name}");
            let mut back = Vec::new();
            for_each_op::<AmdOp>(u.take_rest(), |op| back.push(op));
            assert_eq!(back, ops, "{name}");
        }
    }

    /// Every committed `amd_mmio` seed (the regression inputs) still passes, and the
    /// committed generated seeds are current.
    #[test]
    fn committed_seeds_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/amd_mmio");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("corpus/amd_mmio") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("seed-") {
                run(&std::fs::read(&path).expect("seed"));
                count += 1;
            }
        }
        assert!(count >= 3, "only {count} amd_mmio seeds");
        for (name, bytes) in seeds() {
            let committed = std::fs::read(dir.join(name)).expect(name);
            assert_eq!(
                committed, bytes,
                "{name} is stale: run the gen_amd_mmio_seeds example"
            );
        }
    }

    /// Each seed reaches the paths it is named for.
    #[test]
    fn seeds_reach_their_paths() {
        for (name, setup, ops) in seed_inputs() {
            let mut h = Harness::new(&setup);
            for op in &ops {
                h.apply(op);
            }
            let c = h.unit.counters();
            match name {
                "seed-guest-mode" => {
                    assert!(c.posted >= 2 && c.doorbells >= 1, "{c:?}");
                    assert!(c.ga_log_entries >= 1 && c.ga_log_lost >= 1, "{c:?}");
                    assert!(c.events_logged >= 1, "unwritable backing page: {c:?}");
                }
                "seed-command-errors" => {
                    assert!(c.commands >= 2 && c.events_logged >= 2, "{c:?}");
                }
                "seed-event-overflow" => assert!(c.events_lost >= 1, "{c:?}"),
                "seed-legacy-msi" | "seed-linux-remap" => {
                    assert!(c.commands >= 1, "{c:?}")
                }
                other => panic!("unknown seed {other}"),
            }
        }
    }

    /// The Linux seed ends with the remapped interrupt delivered and no event logged.
    #[test]
    fn linux_seed_remaps() {
        let (_, bytes) = seeds().remove(0);
        let mut u = arbitrary::Unstructured::new(&bytes);
        let setup = <AmdSetup as arbitrary::Arbitrary>::arbitrary(&mut u).unwrap();
        let mut h = Harness::new(&setup);
        let mut ops = Vec::new();
        for_each_op::<AmdOp>(u.take_rest(), |op| ops.push(op));
        for op in &ops[..5] {
            h.apply(op);
        }
        let msg = MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 3,
        };
        let t = h.unit.translate(&h.mem, SourceId(0x18), msg);
        let m = t.message().expect("remapped");
        assert_eq!(m.destination(), 0x1_0203);
        assert_eq!(m.vector(), 0x31);
        assert_eq!(h.unit.counters().events_logged, 0);
    }
}
