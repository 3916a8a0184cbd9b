//! AMD-Vi garbage: the register window with the command buffer pointing at random commands,
//! deliveries through the state the garbage left, and the reset a guest does to recover.
//!
//! The unit writes memory in four ways, and each is kept on memory the probe does not use:
//! the event log and the GA log (their base registers always name the scratch half of the
//! table section, or an address above 4 GiB), the GA log tail mirror (likewise), and
//! COMPLETION_WAIT stores (every command with that opcode in the garbage buffer stores to a
//! scratch qword). Guest-mode posts write the vAPIC backing page an interrupt table entry
//! names: during the register garbage GAMEn is kept clear (so no entry posts), and in the
//! fire phase every guest-mode entry's page is a scratch page. The unit's own interrupts
//! (XT registers) always name an APIC ID no CPU has, physical mode; its PCI MSI stays off.

use core::sync::atomic::AtomicU64;

use super::pci::{clear_byte_bits, overlaps, set_byte_bits};
use super::{Garbage, Targets, Window};
use crate::amdvi::log::PAGE_TAB_HARDWARE_ERROR;
use crate::amdvi::mem;
use crate::amdvi::regs::*;
use crate::clock::Clock;
use crate::edu::Edu;
use crate::ioapic::RTE_MASKED;
use crate::mmio::Mmio;
use crate::msi::{Msi, MsiX};
use crate::pci::{COMMAND_INTX_DISABLE, COMMAND_MEMORY, REG_COMMAND};
use crate::raw::Width;
use crate::report::Text;
use crate::scenarios::ir_common::{self, DELIVERY_TIMEOUT_NS, NS_PER_MS, SETTLE_NS};
use crate::tally::{self, EVENT};
use crate::vtd::irte::compatibility_msi_address;
use crate::{irq, serial, sprintln, text, x86};

/// The garbage command buffer: the first half of the table section (the largest buffer,
/// 32768 commands, is 512 KiB).
const COMMAND_AREA: u64 = 0;
const COMMAND_AREA_BYTES: u64 = 0x8_0000;
/// Commands filled with random contents (the rest is zero: opcode 0, illegal).
const FILLED_COMMANDS: u64 = 512;
/// Where the unit may write: the second half (the largest logs are 512 KiB).
const SCRATCH_AREA: u64 = 0x8_0000;
/// Fire phase layout: device table, IRTE tables, event log, GA log, backing pages.
const FIRE_DEVICE_TABLE: u64 = 0;
const FIRE_TABLES: u64 = 0x2000;
const FIRE_TABLE_BYTES: u64 = 0x2000;
const FIRE_TABLE_COUNT: u64 = 8;
const FIRE_EVENT_LOG: u64 = SCRATCH_AREA;
const FIRE_GA_LOG: u64 = SCRATCH_AREA + 0x2000;
const FIRE_PAGES: u64 = SCRATCH_AREA + 0x1_0000;
const FIRE_PAGE_COUNT: u64 = 16;
/// Entries filled per fire table (of 512; the rest are zero: not valid).
const FIRE_ENTRIES: u64 = 128;
/// Device table entries and their size; the fire table's size field (1: 256 entries).
const DTE_BYTES: u64 = 32;
const DEVICES: u64 = 256;
const FIRE_DEV_TABLE_SIZE: u64 = 1;
/// Length codes of the fire phase's logs: 512 events, 512 GA entries.
const EVENT_LEN_CODE: u64 = 9;
const GA_LEN_CODE: u64 = 8;
const LEN_SHIFT: u32 = 56;
/// Bytes of a page.
const PAGE: u64 = 0x1000;
/// A table far beyond the RAM of any VM the probe runs in (252 GiB).
const BEYOND_RAM: u64 = 0x3f_0000_0000;

/// Base registers: where their base may point, and their low bits (size or reserved).
const BASE_LOW_BITS: u32 = 0xfff;
/// GA log tail address: bits 51:3.
const TAIL_ADDR_LOW_BITS: u32 = 0x7;
/// Pointer registers: plausible byte offsets.
const POINTER_NEAR: u64 = 0x2000;
const POINTER_ANY: u64 = 0x8_0000;
const COMMAND_BYTES: u64 = 16;
/// XT registers: destination bits 31:24 live in byte 7; bit 6 there puts the destination at
/// 2^30 or above, an APIC ID no CPU has. Byte 0 bit 2 is the destination mode (logical).
const XT_DEST_HI_BYTE: u64 = 7;
const XT_NOWHERE_BIT: u8 = 1 << 6;
const XT_DM_BYTE_BIT: u8 = 1 << 2;
/// Control byte 3 bits 3:1 are GAMEn (bits 27:25).
const CONTROL_GAM_BYTE: u64 = 3;
const CONTROL_GAM_BYTE_BITS: u8 = 0x0e;
/// Control bits a command is assembled from.
const CONTROL_BITS: [u64; 17] = [
    CTRL_IOMMU_EN,
    CTRL_HT_TUN_EN,
    CTRL_EVT_LOG_EN,
    CTRL_EVT_INT_EN,
    CTRL_COMWAIT_INT_EN,
    CTRL_COHERENT,
    CTRL_CMDBUF_EN,
    CTRL_PPR_LOG_EN,
    CTRL_PPR_INT_EN,
    CTRL_PPR_EN,
    CTRL_GT_EN,
    CTRL_GA_EN,
    CTRL_GALOG_EN,
    CTRL_GAINT_EN,
    CTRL_XT_EN,
    CTRL_INTCAPXT_EN,
    CTRL_IRTCACHEDIS,
];
/// Percentage of accesses that write; left misaligned.
const WRITE_PERCENT: u32 = 55;
const MISALIGNED_PERCENT: u32 = 20;
/// Widths, dwords and qwords most often.
const WIDTHS: [Width; 7] = [
    Width::Dword,
    Width::Dword,
    Width::Dword,
    Width::Qword,
    Width::Qword,
    Width::Word,
    Width::Byte,
];
/// The registers the garbage aims at besides the weighted ones.
const NAMED: [u64; 28] = [
    DEV_TABLE_BASE,
    CMD_BUF_BASE,
    EVT_LOG_BASE,
    CONTROL,
    CONTROL + 4,
    EXCL_BASE,
    EXCL_LIMIT,
    EXT_FEATURES,
    EXT_FEATURES + 4,
    PPR_LOG_BASE,
    GA_LOG_BASE,
    GA_LOG_TAIL_ADDR,
    XT_EVT_INT,
    XT_PPR_INT,
    XT_GA_INT,
    XT_GA_INT + 4,
    CMD_HEAD,
    CMD_TAIL,
    EVT_HEAD,
    EVT_TAIL,
    STATUS,
    PPR_HEAD,
    PPR_TAIL,
    GA_HEAD,
    GA_TAIL,
    0x0040,
    0x0100,
    0x2050,
];
/// The registers whose base the unit writes or reads through, and the area it must name.
const BASES: [(u64, u64); 6] = [
    (DEV_TABLE_BASE, SCRATCH_AREA),
    (CMD_BUF_BASE, COMMAND_AREA),
    (EVT_LOG_BASE, SCRATCH_AREA),
    (PPR_LOG_BASE, SCRATCH_AREA),
    (GA_LOG_BASE, SCRATCH_AREA),
    (GA_LOG_TAIL_ADDR, SCRATCH_AREA),
];
/// The XT interrupt control registers.
const XT_REGISTERS: [u64; 3] = [XT_EVT_INT, XT_PPR_INT, XT_GA_INT];
/// Pointer registers.
const POINTERS: [u64; 8] = [
    CMD_HEAD, CMD_TAIL, EVT_HEAD, EVT_TAIL, PPR_HEAD, PPR_TAIL, GA_HEAD, GA_TAIL,
];

/// Command opcodes (bits 63:60 of qword 0) and fields.
const OPCODE_SHIFT: u32 = 60;
const OP_COMPLETION_WAIT: u64 = 0x1;
const OP_INV_DEVTAB: u64 = 0x2;
const OP_INV_PAGES: u64 = 0x3;
const OP_INV_IOTLB: u64 = 0x4;
const OP_INV_IRT: u64 = 0x5;
const OP_INV_ALL: u64 = 0x8;
const OPCODES: u64 = 16;
/// COMPLETION_WAIT: S, I, F (2:0) and the store address (51:3).
const CW_FLAGS: u64 = 0x7;
const CW_ADDRESS_MASK: u64 = 0x000f_ffff_ffff_fff8;

/// DTE qword 2 fields the fire phase sets: IV, IntTabLen (4:1), root (51:6), IntCtl
/// (61:60); the pass bits (56, 57, 58, 62, 63) stay clear, and so do qword 1's SysMgt bits
/// (41:40), so no message passes unremapped.
const DTE_IV: u64 = 1 << 0;
const DTE_LEN_SHIFT: u32 = 1;
const DTE_ROOT_MASK: u64 = 0x000f_ffff_ffff_ffc0;
const DTE_INT_CTL_SHIFT: u32 = 60;
/// IntCtl encodings the fire phase uses: abort, remap (four times as often), reserved.
const FIRE_INT_CTL: [u64; 6] = [0b00, 0b10, 0b10, 0b10, 0b10, 0b11];
/// IntTabLen values (12-15 are reserved: illegal entries), and the range most DTEs use
/// (tables that hold the filled entries).
const LEN_VALUES: u64 = 16;
const LEN_USUAL: (u64, u64) = (7, 12);
/// IRTE (128-bit) fields: RemapEn, IntType (4:2), DM (6), GuestMode (7), destination 23:0
/// (31:8), GATag (63:32); high: vector (7:0), GA root (51:12), destination 31:24 (63:56).
const IRTE_REMAP_EN: u64 = 1 << 0;
const IRTE_INT_TYPE_SHIFT: u32 = 2;
const IRTE_GA_LOG_INTR: u64 = 1 << 2;
const IRTE_DM_OR_IS_RUN: u64 = 1 << 6;
const IRTE_GUEST_MODE: u64 = 1 << 7;
const IRTE_DEST_LO_MASK: u64 = 0xff_ffff << 8;
const IRTE_HI_DEST_SHIFT: u32 = 56;
const IRTE_HI_ROOT_MASK: u64 = 0x000f_ffff_ffff_f000;
const IRTE_HI_DEST_MASK: u64 = 0xff << IRTE_HI_DEST_SHIFT;
/// Destination bits 31:24 of a fire-phase entry: 0x40 and up, no CPU's APIC ID.
const NOWHERE_HI: u64 = 0x40;
const NOWHERE_HI_SPAN: u64 = 0x80;

/// How many edu-msix vectors the fire phase triggers.
const FIRED_VECTORS: usize = 64;
/// How long COM1's transmitter-empty interrupt gets to fire.
const FIRE_SETTLE_NS: u64 = 20_000_000;
/// Raises of the blocked-delivery check.
const BLOCKED_RAISES: u32 = 2;
/// The vector of the delivery check (counted in [`EVENT`]).
const CHECK_VECTOR: u8 = irq::TEST_VECTOR_C;
/// The edu interrupt-status bit raised.
const RAISE_BIT: u32 = 1;
/// How long the unit gets to reflect a control change in the status register.
const STATUS_TIMEOUT_NS: u64 = 1_000_000_000;
/// Status bits that must be clear after the reset: the run bits and the pending bits.
const STATUS_ACTIVE: u32 = STATUS_EVT_RUN | STATUS_CMDBUF_RUN | STATUS_GALOG_RUN | STATUS_RW1C;

/// Where garbage COMPLETION_WAITs store (only there).
static SCRATCH: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// The AMD-Vi unit under garbage.
pub(super) struct Unit {
    regs: Mmio,
    window: Window,
    efr: u64,
}

impl Unit {
    /// The unit whose window is at `base`; remembers its feature register.
    pub(super) fn open(base: u64) -> Result<Unit, Text> {
        let regs = Mmio::new("AMD-Vi", base, WINDOW)?;
        let window = Window::new("AMD-Vi", base, WINDOW)?;
        Ok(Unit {
            regs,
            window,
            efr: regs.read64(EXT_FEATURES),
        })
    }

    /// The register window's address.
    pub(super) fn base(&self) -> u64 {
        self.regs.base()
    }

    /// Where the next access goes, and how wide it is.
    fn pick(&self, g: &mut Garbage) -> (u64, Width) {
        let width = g.rng.pick(&WIDTHS).unwrap_or(Width::Dword);
        let offset = match g.rng.below(100) {
            0..=14 => CONTROL,
            15..=26 => CMD_TAIL,
            27..=30 => CMD_HEAD,
            31..=35 => STATUS,
            36..=45 => g.rng.pick(&BASES).map_or(CMD_BUF_BASE, |b| b.0),
            46..=51 => g.rng.pick(&POINTERS).unwrap_or(EVT_TAIL),
            52..=56 => g.rng.pick(&XT_REGISTERS).unwrap_or(XT_EVT_INT),
            57..=76 => g.rng.pick(&NAMED).unwrap_or(CONTROL),
            _ => g.rng.below(WINDOW),
        };
        let offset = if g.rng.chance(MISALIGNED_PERCENT) {
            offset + g.rng.below(width.bytes())
        } else {
            offset & !(width.bytes() - 1)
        };
        (self.window.fit(offset, width), width)
    }

    /// A value for the register at `offset`: control commands and pointers with some sense
    /// in them, anything elsewhere (sanitised afterwards).
    fn value(&self, g: &mut Garbage, offset: u64) -> u64 {
        match offset {
            CONTROL if g.rng.chance(60) => CONTROL_BITS
                .iter()
                .filter(|_| g.rng.chance(40))
                .fold(0, |acc, bit| acc | bit),
            o if POINTERS.contains(&o) => match g.rng.below(10) {
                0..=5 => g.rng.below(POINTER_NEAR) & !(COMMAND_BYTES - 1),
                6..=7 => g.rng.below(POINTER_ANY),
                _ => g.rng.next_u64(),
            },
            _ => g.rng.next_u64(),
        }
    }

    /// Puts every register the unit writes or reads memory through on safe ground (the
    /// unit is off, so its base registers take the writes) and its interrupts on nowhere.
    fn arm(&self) {
        for (reg, area) in BASES {
            self.regs.write64(reg, mem::address(area));
        }
        for reg in XT_REGISTERS {
            self.regs
                .write64(reg, u64::from(XT_NOWHERE_BIT) << (8 * XT_DEST_HI_BYTE));
        }
    }

    /// `count` accesses to the register window, with the command buffer holding random
    /// commands; then the feature register must be unchanged.
    pub(super) fn garbage(&self, g: &mut Garbage, count: u32) -> Result<(), Text> {
        fill_commands(g);
        self.arm();
        for _ in 0..count {
            let (offset, width) = self.pick(g);
            if !g.rng.chance(WRITE_PERCENT) {
                g.read(&self.window, offset, width);
                continue;
            }
            let value = self.value(g, offset);
            match sanitise(offset, width, value) {
                Some(value) => g.write(&self.window, offset, width, value),
                None => {
                    g.withhold();
                    g.read(&self.window, offset, width);
                }
            }
        }
        self.check_identity()
    }

    /// Fails when the extended feature register (read-only) changed.
    fn check_identity(&self) -> Result<(), Text> {
        let efr = self.regs.read64(EXT_FEATURES);
        if efr != self.efr {
            return Err(text!(
                "AMD-Vi extended features changed: 0x{:x} (was 0x{:x})",
                efr,
                self.efr
            ));
        }
        Ok(())
    }

    /// Writes the control register whole and waits until the status shows none of
    /// `stopped` (run bits that must drop).
    fn set_control(&self, clock: &Clock, value: u64, stopped: u32) -> Result<(), Text> {
        self.regs.write64(CONTROL, value);
        let deadline = clock.now_ns() + STATUS_TIMEOUT_NS;
        loop {
            let status = self.regs.read32(STATUS);
            if status & stopped == 0 {
                return Ok(());
            }
            if clock.now_ns() >= deadline {
                return Err(text!(
                    "AMD-Vi control 0x{:x}: status still 0x{:x} after {} ms",
                    value,
                    status,
                    STATUS_TIMEOUT_NS / NS_PER_MS
                ));
            }
            x86::pause();
        }
    }

    /// Three deliveries through the state the garbage left: with the unit off, edu's MSI in
    /// compatibility format must reach the BSP exactly once; with edu's interrupt table
    /// beyond RAM, a remapped MSI must be blocked (irvmm: PAGE_TAB_HARDWARE_ERROR logged);
    /// then every source fired through random device and interrupt table entries.
    pub(super) fn deliveries(&self, g: &mut Garbage, t: &Targets) -> Result<(), Text> {
        let (edu_fn, bsp_id, clock) = (t.edu, t.bsp_id, &t.clock);
        self.set_control(
            clock,
            0,
            STATUS_CMDBUF_RUN | STATUS_EVT_RUN | STATUS_GALOG_RUN,
        )?;
        self.arm();
        let Some(address) = compatibility_msi_address(bsp_id) else {
            sprintln!(
                "hostile: delivery checks skipped: BSP APIC ID {} needs more than 8 bits",
                bsp_id
            );
            return Ok(());
        };
        super::quiet(&"before the delivery checks")?;
        irq::set_handler(CHECK_VECTOR, tally::on_event)?;
        let edu = Edu::open(edu_fn)?;
        let msi = Msi::find(edu_fn)?;

        // 1. The unit off: the message passes as it is.
        msi.program(address, u16::from(CHECK_VECTOR));
        let (before, before_bsp) = (EVENT.total(), EVENT.hits(bsp_id));
        edu.raise(RAISE_BIT);
        let arrived = ir_common::wait(clock, DELIVERY_TIMEOUT_NS, || EVENT.total() > before);
        ir_common::settle(clock, SETTLE_NS);
        edu.ack(RAISE_BIT);
        let (total, on_bsp) = (EVENT.total() - before, EVENT.hits(bsp_id) - before_bsp);
        if !arrived || total != 1 || on_bsp != 1 {
            let what = text!(
                "after the AMD-Vi garbage, edu's MSI 0x{:08x}/0x{:x} (unit off): {} interrupts, \
                 {} on the BSP, expected exactly 1 there; {}",
                address,
                CHECK_VECTOR,
                total,
                on_bsp,
                ir_common::Takers(&EVENT)
            );
            if g.strict() {
                return Err(what);
            }
            sprintln!("hostile: observation: {}", what);
        }

        // 2. Blocked: edu's interrupt table is beyond RAM.
        let blocked = self.blocked(g, t, &edu, &msi)?;
        sprintln!(
            "hostile: AMD-Vi deliveries: compatibility MSI with the unit off reached the BSP \
             once; table beyond RAM blocked{}",
            if blocked {
                " with PAGE_TAB_HARDWARE_ERROR"
            } else {
                " (observation: no event logged)"
            }
        );

        // 3. Garbage through remapping.
        self.fire(g, t)?;
        self.set_control(
            clock,
            0,
            STATUS_CMDBUF_RUN | STATUS_EVT_RUN | STATUS_GALOG_RUN,
        )
    }

    /// Points edu's DTE at a table beyond RAM and raises a remapped MSI: it must not be
    /// delivered; returns whether the event a unit logs for it (PAGE_TAB_HARDWARE_ERROR,
    /// edu's device ID, the entry's address) was found (required on irvmm).
    fn blocked(&self, g: &mut Garbage, t: &Targets, edu: &Edu, msi: &Msi) -> Result<bool, Text> {
        let clock = &t.clock;
        let device_id = t.edu.sid();
        mem::zero(FIRE_DEVICE_TABLE, DTE_BYTES * DEVICES);
        mem::zero(FIRE_EVENT_LOG, 0x2000);
        let len = g.rng.below(10) as u8;
        let index = g.rng.below(1 << len);
        let dte = mem::address(FIRE_DEVICE_TABLE) + DTE_BYTES * u64::from(device_id);
        mem::write64(
            dte + 16,
            DTE_IV
                | (u64::from(len) << DTE_LEN_SHIFT)
                | (BEYOND_RAM & DTE_ROOT_MASK)
                | (0b10 << DTE_INT_CTL_SHIFT),
        );
        self.program_tables(FIRE_DEVICE_TABLE)?;
        self.set_control(
            clock,
            CTRL_IOMMU_EN | CTRL_EVT_LOG_EN | CTRL_GA_EN | CTRL_XT_EN,
            0,
        )?;
        msi.program(0xfee0_0000, index as u16);
        let before = EVENT.total();
        for _ in 0..BLOCKED_RAISES {
            edu.raise(RAISE_BIT);
            ir_common::settle(clock, SETTLE_NS);
            edu.ack(RAISE_BIT);
        }
        let delivered = EVENT.total() - before;
        msi.disable();
        t.edu
            .write16(REG_COMMAND, COMMAND_MEMORY | COMMAND_INTX_DISABLE);
        let tail = u64::from(self.regs.read32(EVT_TAIL));
        let entry = BEYOND_RAM + 16 * index;
        let log = mem::address(FIRE_EVENT_LOG);
        let recorded = (0..tail.min(0x2000) / 16).any(|n| {
            let q0 = mem::read64(log + 16 * n);
            let q1 = mem::read64(log + 16 * n + 8);
            (q0 >> OPCODE_SHIFT) as u8 == PAGE_TAB_HARDWARE_ERROR
                && q0 as u16 == device_id
                && q1 == entry
        });
        self.set_control(clock, 0, STATUS_EVT_RUN)?;
        if delivered != 0 {
            return Err(text!(
                "edu's table beyond RAM (0x{:x}, 2^{} entries), unit on: {} of {} raises of index {} delivered",
                BEYOND_RAM,
                len,
                delivered,
                BLOCKED_RAISES,
                index
            ));
        }
        if !recorded && g.strict() {
            return Err(text!(
                "edu's table beyond RAM: its MSI (index {}) was blocked but no PAGE_TAB_HARDWARE_ERROR for device 0x{:04x} at 0x{:x} was logged (event tail 0x{:x})",
                index,
                device_id,
                entry,
                tail
            ));
        }
        Ok(recorded)
    }

    /// Points the unit at the fire phase's device table (at `table` in the section), event
    /// log and GA log, with head and tail pointers at 0 (the unit is off).
    fn program_tables(&self, table: u64) -> Result<(), Text> {
        self.regs
            .write64(DEV_TABLE_BASE, mem::address(table) | FIRE_DEV_TABLE_SIZE);
        self.regs.write64(
            EVT_LOG_BASE,
            mem::address(FIRE_EVENT_LOG) | (EVENT_LEN_CODE << LEN_SHIFT),
        );
        self.regs.write64(
            GA_LOG_BASE,
            mem::address(FIRE_GA_LOG) | (GA_LEN_CODE << LEN_SHIFT),
        );
        for reg in [EVT_HEAD, EVT_TAIL, GA_HEAD, GA_TAIL] {
            self.regs.write32(reg, 0);
        }
        Ok(())
    }

    /// Fires every source through random device table entries (IV set, IntCtl abort, remap
    /// or reserved, random IntTabLen, no pass bits) naming tables of random entries (remapped
    /// ones physical and aimed at APIC IDs from 2^30, guest-mode ones posting into scratch
    /// pages), guest virtual APIC mode and both logs on: 64 edu-msix vectors with random
    /// data, edu's MSI, COM1's pin with a random RTE. Nothing may reach the BSP.
    fn fire(&self, g: &mut Garbage, t: &Targets) -> Result<(), Text> {
        let clock = &t.clock;
        mem::zero(FIRE_DEVICE_TABLE, DTE_BYTES * DEVICES);
        mem::zero(FIRE_TABLES, FIRE_TABLE_BYTES * FIRE_TABLE_COUNT);
        mem::zero(FIRE_PAGES, PAGE * FIRE_PAGE_COUNT);
        mem::zero(SCRATCH_AREA, 0x4000);
        for index in 0..FIRE_TABLE_COUNT * FIRE_ENTRIES {
            let (table, entry) = (index / FIRE_ENTRIES, index % FIRE_ENTRIES);
            let at = mem::address(FIRE_TABLES + table * FIRE_TABLE_BYTES) + 16 * entry;
            let (lo, hi) = random_irte(g);
            mem::write64(at + 8, hi);
            mem::write64(at, lo);
        }
        for device in 0..DEVICES {
            let at = mem::address(FIRE_DEVICE_TABLE) + DTE_BYTES * device;
            mem::write64(at + 16, random_dte(g));
        }
        self.program_tables(FIRE_DEVICE_TABLE)?;
        self.regs
            .write64(GA_LOG_TAIL_ADDR, mem::address(SCRATCH_AREA + 0x3000));
        let gam = if crate::amdvi::offers_guest_apic(self.efr) {
            (GAM_VAPIC << CTRL_GAM_SHIFT) | CTRL_GALOG_EN | CTRL_GAINT_EN
        } else {
            0
        };
        let control = CTRL_IOMMU_EN
            | CTRL_EVT_LOG_EN
            | CTRL_EVT_INT_EN
            | CTRL_GA_EN
            | CTRL_XT_EN
            | CTRL_INTCAPXT_EN
            | gam;
        self.arm_interrupts();
        self.set_control(clock, control, 0)?;

        let mut fired = 0;
        if let Some(f) = t.edu_msix {
            let edu = Edu::open(f)?;
            let msix = MsiX::find(f)?;
            msix.enable_masked();
            let mut vectors = [0u16; FIRED_VECTORS];
            for vector in vectors.iter_mut() {
                *vector = g.rng.below(u64::from(msix.vectors())) as u16;
                let address = 0xfee0_0000 | (g.rng.next_u32() & 0x000f_fff0);
                let data = random_data(g);
                msix.set_entry(*vector, address, data, g.rng.chance(10))?;
            }
            msix.unmask_function();
            for vector in vectors {
                edu.trigger_msix(vector);
                fired += 1;
            }
        }
        let edu = Edu::open(t.edu)?;
        let msi = Msi::find(t.edu)?;
        let address = 0xfee0_0000 | (g.rng.next_u32() & 0x000f_fff0);
        msi.program(address, random_data(g) as u16);
        edu.raise(RAISE_BIT);
        edu.ack(RAISE_BIT);
        fired += 1;
        msi.disable();

        let rte = g.rng.next_u64() & !(RTE_MASKED | (0xff << 56));
        t.ioapic.set_rte(t.com1_pin, rte);
        serial::enable_thr_empty_interrupt();
        let deadline = clock.now_ns() + FIRE_SETTLE_NS;
        while clock.now_ns() < deadline {
            x86::pause();
        }
        serial::disable_interrupts();
        t.ioapic.set_rte(t.com1_pin, RTE_MASKED);
        fired += 1;

        let (status, events, entries) = (
            self.regs.read32(STATUS),
            self.regs.read32(EVT_TAIL) / 16,
            self.regs.read32(GA_TAIL) / 8,
        );
        let posted = (0..FIRE_PAGE_COUNT)
            .filter(|p| {
                (0..8)
                    .any(|n| mem::read64(mem::address(FIRE_PAGES + p * PAGE) + 0x200 + 16 * n) != 0)
            })
            .count();
        super::quiet(&text!(
            "after firing {} sources through random AMD-Vi entries",
            fired
        ))?;
        sprintln!(
            "hostile: fired {} sources through random DTEs and IRTEs (control 0x{:x}): nothing \
             reached the BSP; {} events and {} GA log entries logged, {} scratch pages posted, \
             status 0x{:x}",
            fired,
            control,
            events,
            entries,
            posted,
            status
        );
        Ok(())
    }

    /// The unit's XT interrupt registers: random vectors, an APIC ID no CPU has.
    fn arm_interrupts(&self) {
        for (n, reg) in XT_REGISTERS.into_iter().enumerate() {
            let vector = 0x20 + 0x10 * n as u64;
            self.regs.write64(
                reg,
                (vector << XT_VECTOR_SHIFT) | (u64::from(XT_NOWHERE_BIT) << (8 * XT_DEST_HI_BYTE)),
            );
        }
    }

    /// Resets the unit the way a guest would: control cleared (the logs and the command
    /// buffer stop), the status's write-1-to-clear bits cleared, the pointers, base, XT and
    /// exclusion registers zeroed. Then checks that it took.
    pub(super) fn reset(&self, clock: &Clock) -> Result<(), Text> {
        self.set_control(
            clock,
            0,
            STATUS_CMDBUF_RUN | STATUS_EVT_RUN | STATUS_GALOG_RUN,
        )?;
        self.regs.write32(STATUS, STATUS_RW1C);
        for reg in POINTERS {
            self.regs.write32(reg, 0);
        }
        for (reg, _) in BASES {
            self.regs.write64(reg, 0);
        }
        for reg in XT_REGISTERS.into_iter().chain([EXCL_BASE, EXCL_LIMIT]) {
            self.regs.write64(reg, 0);
        }
        let (control, status) = (self.regs.read64(CONTROL), self.regs.read32(STATUS));
        if control != 0 || status & STATUS_ACTIVE != 0 {
            return Err(text!(
                "AMD-Vi reset did not take: control 0x{:x} status 0x{:x}",
                control,
                status
            ));
        }
        let (head, tail) = (self.regs.read32(CMD_HEAD), self.regs.read32(CMD_TAIL));
        if head != 0 || tail != 0 {
            sprintln!(
                "hostile: observation: command head 0x{:x} tail 0x{:x} after zeroing them",
                head,
                tail
            );
        }
        self.check_identity()
    }
}

/// The garbage write `value` at `offset` made harmless to the probe, or `None` when it
/// cannot be (the caller reads instead): a base register only as an aligned dword or qword,
/// its address in the area it may name (or above 4 GiB); GAMEn kept clear; the XT registers'
/// destinations at 2^30 or above, physical.
fn sanitise(offset: u64, width: Width, value: u64) -> Option<u64> {
    let mut value = value;
    for (reg, area) in BASES {
        if !overlaps(offset, width.bytes(), reg, 8) {
            continue;
        }
        let low_bits = if reg == GA_LOG_TAIL_ADDR {
            TAIL_ADDR_LOW_BITS
        } else {
            BASE_LOW_BITS
        };
        // The areas are in the identity-mapped first 4 GiB: their addresses fit 32 bits.
        let low = (mem::address(area) as u32 & !low_bits) | (value as u32 & low_bits);
        value = match (offset - reg, width) {
            (0, Width::Qword) => (value & !0xffff_ffff) | u64::from(low),
            (0, Width::Dword) => u64::from(low),
            (4, Width::Dword) => value & 0xffff_ffff,
            _ => return None,
        };
    }
    value = clear_byte_bits(
        offset,
        width,
        value,
        CONTROL + CONTROL_GAM_BYTE,
        CONTROL_GAM_BYTE_BITS,
    );
    for reg in XT_REGISTERS {
        value = set_byte_bits(offset, width, value, reg + XT_DEST_HI_BYTE, XT_NOWHERE_BIT);
        value = clear_byte_bits(offset, width, value, reg, XT_DM_BYTE_BIT);
    }
    Some(value)
}

/// Zeroes the command area and fills its first [`FILLED_COMMANDS`] with random commands;
/// every COMPLETION_WAIT among them stores to [`SCRATCH`].
fn fill_commands(g: &mut Garbage) {
    mem::zero(COMMAND_AREA, COMMAND_AREA_BYTES);
    let base = mem::address(COMMAND_AREA);
    for n in 0..FILLED_COMMANDS {
        let (mut q0, q1) = random_command(g);
        if q0 >> OPCODE_SHIFT == OP_COMPLETION_WAIT {
            let slot = g.rng.below(SCRATCH.len() as u64) as usize;
            q0 = (q0 & !CW_ADDRESS_MASK) | (SCRATCH[slot].as_ptr() as u64 & CW_ADDRESS_MASK);
        }
        mem::write64(base + n * COMMAND_BYTES, q0);
        mem::write64(base + n * COMMAND_BYTES + 8, q1);
    }
}

/// A random command: invalidations and completion waits (mostly well-formed), unknown
/// opcodes and plain random bytes.
fn random_command(g: &mut Garbage) -> (u64, u64) {
    let rng = &mut g.rng;
    let op = |o: u64| o << OPCODE_SHIFT;
    match rng.below(10) {
        0..=2 => {
            let kind = if rng.chance(50) {
                OP_INV_IRT
            } else {
                OP_INV_DEVTAB
            };
            let mut q0 = op(kind) | rng.below(1 << 16);
            if rng.chance(15) {
                q0 ^= 1 << rng.between(16, 60);
            }
            (q0, if rng.chance(15) { rng.next_u64() } else { 0 })
        }
        3..=4 => (
            op(OP_COMPLETION_WAIT) | rng.below(CW_FLAGS + 1),
            rng.next_u64(),
        ),
        5 => (
            op(OP_INV_ALL),
            if rng.chance(20) { rng.next_u64() } else { 0 },
        ),
        6 => {
            let kind = if rng.chance(50) {
                OP_INV_PAGES
            } else {
                OP_INV_IOTLB
            };
            (op(kind) | (rng.next_u64() >> 4), rng.next_u64())
        }
        7 => (
            op(rng.below(OPCODES)) | (rng.next_u64() >> 4),
            rng.next_u64(),
        ),
        _ => (rng.next_u64(), rng.next_u64()),
    }
}

/// Random MSI data: mostly an index among the fire tables' filled entries with a fixed or
/// arbitrated message type, else anything (other message types, indexes beyond tables).
fn random_data(g: &mut Garbage) -> u32 {
    if g.rng.chance(70) {
        (g.rng.below(FIRE_ENTRIES) | (g.rng.below(2) << 8)) as u32
    } else {
        g.rng.next_u32()
    }
}

/// A random DTE qword 2: IV set, IntCtl abort/remap/reserved, random IntTabLen, the root
/// one of the fire tables (or beyond RAM now and then), pass bits clear.
fn random_dte(g: &mut Garbage) -> u64 {
    let rng = &mut g.rng;
    let root = if rng.chance(90) {
        mem::address(FIRE_TABLES + FIRE_TABLE_BYTES * rng.below(FIRE_TABLE_COUNT))
    } else {
        BEYOND_RAM
    };
    let int_ctl = rng.pick(&FIRE_INT_CTL).unwrap_or(0b10);
    let len = if rng.chance(70) {
        rng.between(LEN_USUAL.0, LEN_USUAL.1)
    } else {
        rng.below(LEN_VALUES)
    };
    DTE_IV | (len << DTE_LEN_SHIFT) | (root & DTE_ROOT_MASK) | (int_ctl << DTE_INT_CTL_SHIFT)
}

/// A random 128-bit IRTE: mostly well-formed (valid; remapped with fixed or arbitrated
/// delivery, or guest mode with random IsRun and GALogIntr; random vector), random
/// bits otherwise; remapped-mode destinations at 2^30 and up, physical; guest-mode ones
/// posting into a scratch page.
fn random_irte(g: &mut Garbage) -> (u64, u64) {
    let rng = &mut g.rng;
    let (mut lo, mut hi) = if rng.chance(70) {
        let mode = if rng.chance(40) {
            IRTE_GUEST_MODE | (rng.below(2) * IRTE_GA_LOG_INTR) | (rng.below(2) * IRTE_DM_OR_IS_RUN)
        } else {
            rng.below(2) << IRTE_INT_TYPE_SHIFT
        };
        let lo =
            IRTE_REMAP_EN | mode | (rng.next_u64() & (IRTE_DEST_LO_MASK | 0xffff_ffff_0000_0000));
        (lo, rng.below(256))
    } else {
        (rng.next_u64(), rng.next_u64())
    };
    let page = mem::address(FIRE_PAGES + PAGE * rng.below(FIRE_PAGE_COUNT));
    if lo & IRTE_GUEST_MODE == 0 {
        // Remapped mode: physical (bit 6 is DM), nowhere.
        lo &= !IRTE_DM_OR_IS_RUN;
    }
    // Either way the destination is nowhere and a guest-mode page is a scratch page.
    hi = (hi & !(IRTE_HI_ROOT_MASK | IRTE_HI_DEST_MASK))
        | (page & IRTE_HI_ROOT_MASK)
        | ((NOWHERE_HI + rng.below(NOWHERE_HI_SPAN)) << IRTE_HI_DEST_SHIFT);
    (lo, hi)
}
