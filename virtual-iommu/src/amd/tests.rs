//! Register-level tests of [`AmdViUnit`] against a fake guest memory, driving the unit the
//! way Linux's `drivers/iommu/amd` does.

use std::cell::RefCell;

use super::cmd::build as cmd;
use super::dte::{build as dte, Dte};
use super::intr::xt_register;
use super::irte::{build as irte, Irte};
use super::log::{
    EVENT_COMMAND_HARDWARE_ERROR, EVENT_DEV_TAB_HARDWARE_ERROR, EVENT_FLAG_I, EVENT_FLAG_PR,
    EVENT_FLAG_RW, EVENT_FLAG_RZ, EVENT_ILLEGAL_COMMAND_ERROR, EVENT_ILLEGAL_DEV_TABLE_ENTRY,
    EVENT_IO_PAGE_FAULT, EVENT_PAGE_TAB_HARDWARE_ERROR,
};
use super::regs::*;
use super::*;
use crate::memory::{GuestMemoryReader, MemError};
use crate::msi::{MsiMessage, SourceId, MSI_DATA_LEVEL_ASSERT, MSI_DATA_TRIGGER_LEVEL};

/// Guest RAM from 0 to `RAM_SIZE`; anything above fails like a hole would.
const RAM_SIZE: usize = 0x40_0000;
/// Command buffer: 512 commands (Linux's size).
const CMD_BASE: u64 = 0x1000;
/// Event log: 512 entries.
const EVT_BASE: u64 = 0x4000;
/// GA log: 512 entries (4 KiB).
const GA_BASE: u64 = 0x8000;
/// Where the GA log tail is mirrored.
const GA_TAIL_MIRROR: u64 = 0x9000;
/// Linux's completion-wait semaphore.
const SEM: u64 = 0xa000;
/// Interrupt tables: 4 KiB apart, one per test device.
const IRT_BASE: u64 = 0x1_0000;
/// vAPIC backing pages.
const BACKING: u64 = 0x3_0000;
/// Device table covering all 65536 device IDs (2 MiB).
const DEV_TAB: u64 = 0x20_0000;
/// A PCI device (00:03.0).
const DEV: u16 = 0x0018;
/// Another PCI device (00:04.0).
const DEV2: u16 = 0x0020;
/// The IOAPIC's device ID (ff:00.0).
const IOAPIC: u16 = 0xff00;
/// The XT event interrupt: vector 0x40 to APIC 0x1_0203.
const EVT_VECTOR: u8 = 0x40;
const EVT_DEST: u32 = 0x1_0203;
/// The XT GA log interrupt.
const GA_VECTOR: u8 = 0x41;

struct FakeMem {
    ram: RefCell<Vec<u8>>,
    writes: RefCell<usize>,
}

impl FakeMem {
    fn new() -> Self {
        FakeMem {
            ram: RefCell::new(vec![0; RAM_SIZE]),
            writes: RefCell::new(0),
        }
    }

    fn range(gpa: u64, len: usize) -> Result<std::ops::Range<usize>, MemError> {
        let err = MemError::Unmapped { gpa, len };
        let start = usize::try_from(gpa).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > RAM_SIZE {
            return Err(err);
        }
        Ok(start..end)
    }

    fn put(&self, gpa: u64, bytes: &[u8]) {
        self.write(gpa, bytes).unwrap();
    }

    fn get_u32(&self, gpa: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn get_u64(&self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b).unwrap();
        u64::from_le_bytes(b)
    }

    fn writes(&self) -> usize {
        *self.writes.borrow()
    }

    fn put_dte(&self, device_id: u16, d: Dte) {
        self.put(DEV_TAB + u64::from(device_id) * 32, &d.to_bytes());
    }

    /// The interrupt table of `device_id` in these tests.
    fn table(device_id: u16) -> u64 {
        IRT_BASE + u64::from(device_id % 32) * 0x1000
    }

    fn put_irte(&self, device_id: u16, index: u32, e: Irte) {
        let bytes = e.to_bytes();
        let gpa = Self::table(device_id) + u64::from(index) * bytes.len() as u64;
        self.put(gpa, &bytes);
    }

    fn put_cmd(&self, slot: u64, c: (u64, u64)) {
        self.put(CMD_BASE + slot * 16, &c.0.to_le_bytes());
        self.put(CMD_BASE + slot * 16 + 8, &c.1.to_le_bytes());
    }

    fn event(&self, slot: u64) -> [u64; 2] {
        [
            self.get_u64(EVT_BASE + slot * 16),
            self.get_u64(EVT_BASE + slot * 16 + 8),
        ]
    }
}

impl GuestMemoryReader for FakeMem {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = Self::range(gpa, buf.len())?;
        buf.copy_from_slice(&self.ram.borrow()[r]);
        Ok(())
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        let r = Self::range(gpa, buf.len())?;
        self.ram.borrow_mut()[r].copy_from_slice(buf);
        *self.writes.borrow_mut() += 1;
        Ok(())
    }
}

fn r32(u: &AmdViUnit, off: u64) -> u32 {
    let mut b = [0u8; 4];
    u.mmio_read(off, &mut b);
    u32::from_le_bytes(b)
}

fn r64(u: &AmdViUnit, off: u64) -> u64 {
    let mut b = [0u8; 8];
    u.mmio_read(off, &mut b);
    u64::from_le_bytes(b)
}

fn w32(u: &mut AmdViUnit, m: &FakeMem, off: u64, v: u32) -> Effects {
    u.mmio_write(m, off, &v.to_le_bytes())
}

fn w64(u: &mut AmdViUnit, m: &FakeMem, off: u64, v: u64) -> Effects {
    u.mmio_write(m, off, &v.to_le_bytes())
}

/// Linux's `iommu_feature_enable`/`disable`: read-modify-write of the control register.
fn feature(u: &mut AmdViUnit, m: &FakeMem, bit: u64, on: bool) -> Effects {
    let ctrl = r64(u, CONTROL_REG);
    let ctrl = if on { ctrl | bit } else { ctrl & !bit };
    w64(u, m, CONTROL_REG, ctrl)
}

/// How the tests bring a unit up.
#[derive(Clone, Copy)]
struct Setup {
    xt: bool,
    ga: bool,
    vapic: bool,
    intcapxt: bool,
}

const X2APIC: Setup = Setup {
    xt: true,
    ga: true,
    vapic: true,
    intcapxt: true,
};

const LEGACY: Setup = Setup {
    xt: false,
    ga: false,
    vapic: false,
    intcapxt: false,
};

/// Linux's bring-up: `early_enable_iommu`, `iommu_enable_event_buffer`,
/// `iommu_init_irq`, `enable_iommus_vapic`.
fn bring_up(u: &mut AmdViUnit, m: &FakeMem, s: Setup) -> Effects {
    let mut all = Effects::default();
    w64(u, m, DEV_TAB_BASE_REG, DEV_TAB | 0x1ff);
    w64(u, m, CMD_BUF_BASE_REG, CMD_BASE | 9 << 56);
    w32(u, m, CMD_HEAD_REG, 0);
    w32(u, m, CMD_TAIL_REG, 0);
    all.merge(feature(u, m, CTRL_CMDBUF_EN, true));
    if s.ga {
        all.merge(feature(u, m, CTRL_GA_EN, true));
    }
    if s.xt {
        all.merge(feature(u, m, CTRL_XT_EN, true));
    }
    all.merge(feature(u, m, CTRL_IOMMU_EN, true));
    w64(u, m, EVT_LOG_BASE_REG, EVT_BASE | 9 << 56);
    w32(u, m, EVT_HEAD_REG, 0);
    w32(u, m, EVT_TAIL_REG, 0);
    all.merge(feature(u, m, CTRL_EVT_LOG_EN, true));
    if s.intcapxt {
        w64(
            u,
            m,
            XT_EVT_INT_CTL_REG,
            xt_register(EVT_DEST, EVT_VECTOR, false),
        );
        w64(
            u,
            m,
            XT_GA_INT_CTL_REG,
            xt_register(EVT_DEST, GA_VECTOR, false),
        );
        all.merge(feature(u, m, CTRL_INTCAPXT_EN, true));
    }
    all.merge(feature(u, m, CTRL_EVT_INT_EN, true));
    if s.vapic {
        w64(u, m, GA_LOG_BASE_REG, GA_BASE | 8 << 56);
        w64(u, m, GA_LOG_TAIL_ADDR_REG, GA_TAIL_MIRROR);
        w32(u, m, GA_HEAD_REG, 0);
        w32(u, m, GA_TAIL_REG, 0);
        all.merge(feature(u, m, CTRL_GAINT_EN, true));
        all.merge(feature(u, m, CTRL_GALOG_EN, true));
        assert_ne!(
            r32(u, STATUS_REG) & STATUS_GALOG_RUN,
            0,
            "Linux polls GALogRun"
        );
        let ctrl = r64(u, CONTROL_REG) | CTRL_GAM_VAPIC << CTRL_GAM_SHIFT;
        all.merge(w64(u, m, CONTROL_REG, ctrl));
    }
    all
}

fn unit(s: Setup) -> (AmdViUnit, FakeMem) {
    let mut u = AmdViUnit::new(AmdViConfig {
        xt: s.xt,
        ga: s.ga,
        vapic: s.vapic,
    });
    let m = FakeMem::new();
    bring_up(&mut u, &m, s);
    (u, m)
}

/// Queues `cmds` after the current tail and writes the tail, as Linux does one command at
/// a time (here: all at once).
fn submit(u: &mut AmdViUnit, m: &FakeMem, cmds: &[(u64, u64)]) -> Effects {
    let entries = u.command_buffer().entries();
    let mut slot = u.command_buffer().tail() / 16;
    for c in cmds {
        m.put_cmd(slot, *c);
        slot = (slot + 1) % entries;
    }
    w32(u, m, CMD_TAIL_REG, (slot * 16) as u32)
}

/// The message Linux writes for IRTE `index` (`fill_msi_msg`): data = index,
/// address 0xfee00000.
fn msi(index: u32) -> MsiMessage {
    MsiMessage {
        address_lo: 0xfee0_0000,
        address_hi: 0,
        data: index,
    }
}

/// Gives `device_id` a remapped interrupt table of 512 entries.
fn remap_device(m: &FakeMem, device_id: u16) {
    m.put_dte(
        device_id,
        dte::remapped(device_id, FakeMem::table(device_id), 9),
    );
}

fn xt_event_interrupt() -> MsiMessage {
    MsiMessage::compat(
        EVT_DEST,
        false,
        EVT_VECTOR,
        crate::msi::DeliveryMode::Fixed,
        false,
    )
}

// ---- Registers --------------------------------------------------------------------------------

#[test]
fn reset_state_and_features() {
    let u = AmdViUnit::new(AmdViConfig::default());
    assert_eq!(
        r64(&u, EXT_FEATURE_REG),
        0x20_00c4,
        "XT, IA, GA, GAM = vAPIC"
    );
    assert_eq!(u.extended_features(), 0x20_00c4);
    assert_eq!(r64(&u, CONTROL_REG), 0);
    assert_eq!(r32(&u, STATUS_REG), 0);
    assert_eq!(r64(&u, 0x0038), 0, "no PPR log");
    assert_eq!(r64(&u, 0x01a0), 0, "EFR2 zero");
    let legacy = AmdViUnit::new(AmdViConfig {
        xt: false,
        ga: false,
        vapic: false,
    });
    assert_eq!(legacy.extended_features(), EFR_IA_SUP);
    // XT implies GA.
    let xt = AmdViUnit::new(AmdViConfig {
        xt: true,
        ga: false,
        vapic: false,
    });
    assert!(xt.config().ga);
}

#[test]
fn access_sizes_and_alignment() {
    let (mut u, m) = unit(X2APIC);
    let ctrl = r64(&u, CONTROL_REG);
    assert_eq!(r32(&u, CONTROL_REG), ctrl as u32);
    assert_eq!(r32(&u, CONTROL_REG + 4), (ctrl >> 32) as u32);
    assert_ne!(ctrl & CTRL_XT_EN, 0);
    let mut b2 = [0u8; 2];
    u.mmio_read(CONTROL_REG, &mut b2);
    assert_eq!(b2, [0xff; 2], "2-byte reads are not served");
    let mut b8 = [0u8; 8];
    u.mmio_read(CONTROL_REG + 4, &mut b8);
    assert_eq!(b8, [0xff; 8], "misaligned qword");
    u.mmio_read(AMDVI_MMIO_SIZE, &mut b8);
    assert_eq!(b8, [0xff; 8], "beyond the window");
    assert!(u.mmio_write(&m, CONTROL_REG, &[0, 0]).is_empty());
    assert_eq!(r64(&u, CONTROL_REG), ctrl, "ignored writes change nothing");
    // Writing the high dword alone keeps the low dword.
    w32(&mut u, &m, CONTROL_REG + 4, 0);
    assert_eq!(r64(&u, CONTROL_REG), ctrl & 0xffff_ffff);
}

#[test]
fn control_drops_unsupported_bits_and_reports_state_changes() {
    let mut u = AmdViUnit::new(AmdViConfig::default());
    let m = FakeMem::new();
    let e = w64(&mut u, &m, CONTROL_REG, u64::MAX);
    assert!(e.remap_state_changed);
    let ctrl = r64(&u, CONTROL_REG);
    assert_eq!(ctrl & (1 << 59), 0, "IRTCacheDis is not writable");
    assert_eq!(ctrl & (0x7 << 13 | 1 << 16), 0, "no PPR, no GT");
    assert_eq!(ctrl, control_writable(u.extended_features()));
    // Bits that do not change remapping report nothing.
    let e = feature(&mut u, &m, CTRL_COMWAIT_INT_EN, false);
    assert!(!e.remap_state_changed);
    for bit in [CTRL_IOMMU_EN, CTRL_GA_EN, CTRL_XT_EN, 1 << CTRL_GAM_SHIFT] {
        assert!(feature(&mut u, &m, bit, false).remap_state_changed);
        assert!(feature(&mut u, &m, bit, true).remap_state_changed);
    }
    // Without XTSup, XTEn stays clear and the XT registers ignore writes.
    let mut legacy = AmdViUnit::new(AmdViConfig {
        xt: false,
        ga: false,
        vapic: false,
    });
    w64(
        &mut legacy,
        &m,
        CONTROL_REG,
        CTRL_XT_EN | CTRL_GA_EN | CTRL_GALOG_EN,
    );
    assert_eq!(r64(&legacy, CONTROL_REG), 0);
    w64(&mut legacy, &m, XT_EVT_INT_CTL_REG, u64::MAX);
    assert_eq!(r64(&legacy, XT_EVT_INT_CTL_REG), 0);
    w64(&mut legacy, &m, GA_LOG_BASE_REG, 0x5000);
    assert_eq!(r64(&legacy, GA_LOG_BASE_REG), 0);
}

#[test]
fn register_masks() {
    let mut u = AmdViUnit::new(AmdViConfig::default());
    let m = FakeMem::new();
    w64(&mut u, &m, DEV_TAB_BASE_REG, u64::MAX);
    assert_eq!(r64(&u, DEV_TAB_BASE_REG), 0x000f_ffff_ffff_f1ff);
    w64(&mut u, &m, XT_EVT_INT_CTL_REG, u64::MAX);
    assert_eq!(r64(&u, XT_EVT_INT_CTL_REG), XT_WRITABLE);
    w64(&mut u, &m, GA_LOG_TAIL_ADDR_REG, u64::MAX);
    assert_eq!(r64(&u, GA_LOG_TAIL_ADDR_REG), 0x000f_ffff_ffff_fff8);
    w64(&mut u, &m, CMD_TAIL_REG, u64::MAX);
    assert_eq!(r64(&u, CMD_TAIL_REG), 0x7_fff0);
    w64(&mut u, &m, GA_HEAD_REG, u64::MAX);
    assert_eq!(r64(&u, GA_HEAD_REG), 0x7_fff8);
    w64(&mut u, &m, EXCL_BASE_REG, u64::MAX);
    assert_eq!(r64(&u, EXCL_BASE_REG), 0x000f_ffff_ffff_f003);
    w64(&mut u, &m, EXT_FEATURE_REG, 0);
    assert_eq!(r64(&u, EXT_FEATURE_REG), u.extended_features(), "read-only");
}

#[test]
fn bases_are_locked_while_enabled_and_reset_pointers() {
    let (mut u, m) = unit(X2APIC);
    w64(&mut u, &m, CMD_BUF_BASE_REG, 0x9000 | 8 << 56);
    assert_eq!(r64(&u, CMD_BUF_BASE_REG), CMD_BASE | 9 << 56);
    w64(&mut u, &m, EVT_LOG_BASE_REG, 0x9000);
    assert_eq!(r64(&u, EVT_LOG_BASE_REG), EVT_BASE | 9 << 56);
    w64(&mut u, &m, GA_LOG_BASE_REG, 0x9000);
    assert_eq!(r64(&u, GA_LOG_BASE_REG), GA_BASE | 8 << 56);
    // Tails are locked while the logs run; the command head while the buffer runs.
    w32(&mut u, &m, EVT_TAIL_REG, 0x40);
    w32(&mut u, &m, GA_TAIL_REG, 0x40);
    w32(&mut u, &m, CMD_HEAD_REG, 0x40);
    assert_eq!(r32(&u, EVT_TAIL_REG), 0);
    assert_eq!(r32(&u, GA_TAIL_REG), 0);
    assert_eq!(r32(&u, CMD_HEAD_REG), 0);
    // Disabled: a base write takes effect and resets head and tail.
    feature(&mut u, &m, CTRL_CMDBUF_EN, false);
    w32(&mut u, &m, CMD_HEAD_REG, 0x40);
    w32(&mut u, &m, CMD_TAIL_REG, 0x40);
    assert_eq!(r32(&u, CMD_HEAD_REG), 0x40);
    w64(&mut u, &m, CMD_BUF_BASE_REG, 0x9000 | 8 << 56);
    assert_eq!(r64(&u, CMD_BUF_BASE_REG), 0x9000 | 8 << 56);
    assert_eq!((r32(&u, CMD_HEAD_REG), r32(&u, CMD_TAIL_REG)), (0, 0));
}

#[test]
fn status_run_bits_follow_enables() {
    let (mut u, m) = unit(X2APIC);
    let s = r32(&u, STATUS_REG);
    assert_eq!(
        s & (STATUS_EVT_RUN | STATUS_CMDBUF_RUN | STATUS_GALOG_RUN),
        STATUS_EVT_RUN | STATUS_CMDBUF_RUN | STATUS_GALOG_RUN
    );
    // Run bits are read-only.
    w32(&mut u, &m, STATUS_REG, u32::MAX);
    assert_eq!(r32(&u, STATUS_REG), s);
    feature(&mut u, &m, CTRL_IOMMU_EN, false);
    assert_eq!(r32(&u, STATUS_REG) & STATUS_CMDBUF_RUN, 0, "needs IommuEn");
    feature(&mut u, &m, CTRL_EVT_LOG_EN, false);
    feature(&mut u, &m, CTRL_GALOG_EN, false);
    assert_eq!(r32(&u, STATUS_REG), 0);
}

#[test]
fn reset_returns_to_power_on() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(600));
    assert_eq!(e.interrupts.len(), 1);
    u.reset();
    assert_eq!(r64(&u, CONTROL_REG), 0);
    assert_eq!(r64(&u, DEV_TAB_BASE_REG), 0);
    assert_eq!(r32(&u, STATUS_REG), 0);
    assert_eq!(u.counters().events_logged, 1, "counters survive a reset");
    assert_eq!(
        u.translate(&m, SourceId(DEV), msi(1)),
        Translation::Passthrough(msi(1))
    );
}

// ---- Translation ---------------------------------------------------------------------------------

#[test]
fn disabled_unit_passes_everything() {
    let u = AmdViUnit::new(AmdViConfig::default());
    let m = FakeMem::new();
    let weird = MsiMessage {
        address_lo: 0x1234,
        address_hi: 7,
        data: 0xffff_ffff,
    };
    assert_eq!(
        u.translate(&m, SourceId(DEV), weird),
        Translation::Passthrough(weird)
    );
}

#[test]
fn legacy_irte_remaps_to_8_bit_destination() {
    let (u, m) = unit(LEGACY);
    remap_device(&m, DEV);
    m.put_irte(DEV, 5, irte::legacy(0x31, 7, false));
    let t = u.translate(&m, SourceId(DEV), msi(5));
    let expected = MsiMessage::compat(7, false, 0x31, crate::msi::DeliveryMode::Fixed, false);
    assert_eq!(
        t,
        Translation::Remapped {
            device_id: DEV,
            index: 5,
            message: expected
        }
    );
    assert!(t.is_cacheable());
    assert_eq!(t.irte_index(), Some(5));
}

#[test]
fn xt_mode_gives_32_bit_destinations() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    m.put_irte(DEV, 0x1ff, irte::remapped(0x42, 0x00ab_cdef, true));
    let t = u.translate(&m, SourceId(DEV), msi(0x1ff));
    let msg = t.message().unwrap();
    assert_eq!(msg.destination(), 0x00ab_cdef);
    assert_eq!(msg.address_hi, 0x00ab_cd00, "KVM x2APIC API layout");
    assert_eq!(msg.vector(), 0x42);
    assert_ne!(msg.address_lo & crate::msi::MSI_ADDR_DEST_MODE_LOGICAL, 0);
    // Index 0x1ff has data bits 10:8 = 001b (arbitrated): still remapped.
    assert_eq!(t.irte_index(), Some(0x1ff));
    // XTEn off: destination bits 7:0 only.
    let e = feature(&mut u, &m, CTRL_XT_EN, false);
    assert!(e.remap_state_changed);
    let msg = u
        .translate(&m, SourceId(DEV), msi(0x1ff))
        .message()
        .unwrap();
    assert_eq!(msg.destination(), 0xef);
}

#[test]
fn ioapic_level_pin_keeps_its_trigger_mode() {
    let (u, m) = unit(X2APIC);
    remap_device(&m, IOAPIC);
    m.put_irte(IOAPIC, 9, irte::remapped(0x29, 0x300, false));
    // The IOAPIC model sends the RTE's vector field (the index, by Linux's convention) and
    // its trigger mode.
    let pin = MsiMessage {
        address_lo: 0xfee0_0000,
        address_hi: 0,
        data: 9 | MSI_DATA_TRIGGER_LEVEL | MSI_DATA_LEVEL_ASSERT,
    };
    let msg = u.translate(&m, SourceId(IOAPIC), pin).message().unwrap();
    assert!(msg.is_level());
    assert_eq!(msg.vector(), 0x29);
    assert_eq!(msg.destination(), 0x300);
}

#[test]
fn interrupt_tables_are_per_device() {
    let (u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    remap_device(&m, DEV2);
    m.put_irte(DEV, 1, irte::remapped(0x50, 1, false));
    m.put_irte(DEV2, 1, irte::remapped(0x60, 2, false));
    let v = |d| {
        u.translate(&m, SourceId(d), msi(1))
            .message()
            .unwrap()
            .vector()
    };
    assert_eq!((v(DEV), v(DEV2)), (0x50, 0x60));
}

#[test]
fn dte_iv_and_intctl() {
    let (u, m) = unit(X2APIC);
    // IV = 0: unmapped.
    m.put_dte(DEV, Dte::default());
    assert_eq!(
        u.translate(&m, SourceId(DEV), msi(3)),
        Translation::Passthrough(msi(3))
    );
    // IntCtl = forward.
    m.put_dte(DEV, dte::with_int_ctl(dte::remapped(1, 0x1_0000, 9), 1));
    assert_eq!(
        u.translate(&m, SourceId(DEV), msi(3)),
        Translation::Passthrough(msi(3))
    );
    // IntCtl = abort.
    m.put_dte(DEV, dte::with_int_ctl(dte::remapped(1, 0x1_0000, 9), 0));
    let f = u.translate(&m, SourceId(DEV), msi(3)).fault().unwrap();
    assert_eq!(f.kind, FaultKind::IntCtlAbort);
    assert!(!f.suppressed);
    // IntCtl = 11b is illegal.
    m.put_dte(DEV, dte::with_int_ctl(dte::remapped(1, 0x1_0000, 9), 3));
    let f = u.translate(&m, SourceId(DEV), msi(3)).fault().unwrap();
    assert_eq!(f.kind, FaultKind::IllegalDeviceTableEntry);
    // Reserved IntTabLen.
    m.put_dte(DEV, dte::remapped(1, 0x1_0000, 13));
    let f = u.translate(&m, SourceId(DEV), msi(3)).fault().unwrap();
    assert_eq!(f.kind, FaultKind::IllegalDeviceTableEntry);
}

#[test]
fn message_types_follow_pass_bits() {
    let (u, m) = unit(X2APIC);
    let base = dte::remapped(1, FakeMem::table(DEV), 9);
    let typed = |t: u32| MsiMessage {
        address_lo: 0xfee0_1000,
        address_hi: 0,
        data: (t << 8) | 2,
    };
    m.put_dte(DEV, base);
    for t in [2u32, 3, 4, 5, 6, 7] {
        let f = u.translate(&m, SourceId(DEV), typed(t)).fault().unwrap();
        assert_eq!(f.kind, FaultKind::MessageTypeBlocked, "type {t}");
    }
    m.put_dte(DEV, dte::with_pass(base, true, true, true, true));
    for t in [2u32, 4, 5, 7] {
        assert_eq!(
            u.translate(&m, SourceId(DEV), typed(t)),
            Translation::Passthrough(typed(t)),
            "type {t}"
        );
    }
    for t in [3u32, 6] {
        let f = u.translate(&m, SourceId(DEV), typed(t)).fault().unwrap();
        assert_eq!(f.kind, FaultKind::MessageTypeBlocked, "reserved type {t}");
    }
}

#[test]
fn faults_and_their_events() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    let mut slot = 0;
    let mut check = |u: &mut AmdViUnit, msg: MsiMessage, kind, code, flags| {
        let (t, _) = u.deliver(&m, SourceId(DEV), msg);
        let f = t.fault().expect("blocked");
        assert_eq!(f.kind, kind);
        let [qw0, qw1] = m.event(slot);
        slot += 1;
        assert_eq!((qw0 >> 60) as u8, code, "{kind:?}");
        assert_eq!(qw0 & 0xffff, u64::from(DEV));
        assert_eq!(((qw0 >> 48) & 0xfff) as u16, flags, "{kind:?}");
        qw1
    };
    // Index beyond 2^9 entries: only data 10:8 = 000b/001b reach the table, so use a
    // smaller table.
    m.put_dte(DEV, dte::remapped(DEV, FakeMem::table(DEV), 2));
    let a = check(
        &mut u,
        msi(4),
        FaultKind::IndexBeyondTable,
        EVENT_IO_PAGE_FAULT,
        EVENT_FLAG_I,
    );
    assert_eq!(a, 0xfee0_0000, "request address");
    remap_device(&m, DEV);
    // RemapEn = 0 (Linux's allocated-but-unused entry).
    m.put_irte(DEV, 1, irte::invalid(irte::remapped(0xff, 0, false)));
    check(
        &mut u,
        msi(1),
        FaultKind::EntryNotValid,
        EVENT_IO_PAGE_FAULT,
        EVENT_FLAG_I,
    );
    // Reserved bits.
    m.put_irte(DEV, 2, Irte::Ga { lo: 1, hi: 1 << 8 });
    check(
        &mut u,
        msi(2),
        FaultKind::EntryReserved,
        EVENT_IO_PAGE_FAULT,
        EVENT_FLAG_I | EVENT_FLAG_PR | EVENT_FLAG_RZ,
    );
    // Illegal DTE.
    m.put_dte(DEV, dte::with_int_ctl(dte::remapped(1, 0, 9), 3));
    check(
        &mut u,
        msi(1),
        FaultKind::IllegalDeviceTableEntry,
        EVENT_ILLEGAL_DEV_TABLE_ENTRY,
        EVENT_FLAG_I | EVENT_FLAG_RZ,
    );
    // Interrupt table outside RAM.
    m.put_dte(DEV, dte::remapped(1, 0x7fff_0000, 9));
    let a = check(
        &mut u,
        msi(1),
        FaultKind::TableReadFailed,
        EVENT_PAGE_TAB_HARDWARE_ERROR,
        EVENT_FLAG_I,
    );
    assert_eq!(a, 0x7fff_0010, "the IRTE's address");
    // Device ID beyond a one-page device table (128 entries).
    w64(&mut u, &m, DEV_TAB_BASE_REG, DEV_TAB);
    let (t, _) = u.deliver(&m, SourceId(0x100), msi(1));
    assert_eq!(t.fault().unwrap().kind, FaultKind::DeviceIdBeyondTable);
    let [qw0, _] = m.event(slot);
    slot += 1;
    assert_eq!((qw0 >> 60) as u8, EVENT_ILLEGAL_DEV_TABLE_ENTRY);
    assert_eq!(qw0 & 0xffff, 0x100);
    // Device table outside RAM.
    w64(&mut u, &m, DEV_TAB_BASE_REG, 0x7000_0000 | 0x1ff);
    let (t, _) = u.deliver(&m, SourceId(DEV), msi(1));
    assert_eq!(t.fault().unwrap().kind, FaultKind::DeviceTableReadFailed);
    let [qw0, qw1] = m.event(slot);
    assert_eq!((qw0 >> 60) as u8, EVENT_DEV_TAB_HARDWARE_ERROR);
    assert_eq!(qw1, 0x7000_0000 + u64::from(DEV) * 32);
    assert_eq!(u.counters().events_logged, 7);
}

#[test]
fn ig_and_sup_iopf_suppress_io_page_faults_only() {
    let (mut u, m) = unit(X2APIC);
    m.put_dte(
        DEV,
        dte::with_ignore_unmapped(dte::with_int_ctl(dte::remapped(1, 0, 9), 0), true),
    );
    let (t, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert!(t.fault().unwrap().suppressed);
    assert!(e.is_empty());
    remap_device(&m, DEV);
    m.put_irte(
        DEV,
        1,
        irte::suppressing(irte::invalid(irte::remapped(1, 1, false))),
    );
    let (t, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert_eq!(t.fault().unwrap().kind, FaultKind::EntryNotValid);
    assert!(e.is_empty());
    assert_eq!(r32(&u, EVT_TAIL_REG), 0, "nothing logged");
    // IG does not hide hardware errors.
    m.put_dte(
        DEV,
        dte::with_ignore_unmapped(dte::remapped(1, 0x7fff_0000, 9), true),
    );
    let (t, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert_eq!(t.fault().unwrap().kind, FaultKind::TableReadFailed);
    assert_eq!(e.interrupts, vec![xt_event_interrupt()]);
}

#[test]
fn non_interrupt_addresses_are_refused_without_events() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    for msg in [
        MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 1,
            data: 0,
        },
        MsiMessage {
            address_lo: 0x1000,
            address_hi: 0,
            data: 0,
        },
    ] {
        let (t, e) = u.deliver(&m, SourceId(DEV), msg);
        assert_eq!(t.fault().unwrap().kind, FaultKind::NotInterrupt);
        assert!(e.is_empty());
    }
    assert_eq!(u.counters().events_logged, 0);
}

#[test]
fn translation_reads_but_never_writes() {
    let (u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    m.put_irte(DEV, 1, irte::guest_mode(0x30, BACKING, 1, 2, true, true));
    let before = m.writes();
    let t = u.translate(&m, SourceId(DEV), msi(1));
    assert!(t.guest_post().is_some());
    assert!(!t.is_cacheable());
    assert_eq!(t.message(), None);
    assert_eq!(m.writes(), before, "translate is pure");
}

// ---- Guest virtual APIC mode ---------------------------------------------------------------------

fn irr(m: &FakeMem, vector: u8) -> bool {
    let dword = m.get_u32(BACKING + 0x200 + 0x10 * u64::from(vector / 32));
    dword & (1 << (vector % 32)) != 0
}

#[test]
fn guest_mode_running_vcpu_gets_irr_and_doorbell() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    m.put_irte(
        DEV,
        4,
        irte::guest_mode(0x61, BACKING, 0xabcd_0123, 0x0001_0005, true, true),
    );
    // Another vector already pending in the same IRR dword survives the OR.
    m.put(BACKING + 0x230, &1u32.to_le_bytes());
    let (t, e) = u.deliver(&m, SourceId(DEV), msi(4));
    let p = t.guest_post().unwrap();
    assert_eq!(p.destination, 0x0001_0005);
    assert_eq!(p.ga_tag, 0xabcd_0123);
    assert!(irr(&m, 0x61));
    assert_eq!(m.get_u32(BACKING + 0x230), 1 | 1 << 1);
    assert!(
        e.is_empty(),
        "a doorbell sends nothing to the guest's LAPICs"
    );
    assert_eq!(u.counters().doorbells, 1);
    assert_eq!(u.counters().posted, 1);
    assert_eq!(
        r32(&u, GA_TAIL_REG),
        0,
        "a running vCPU gets no GA log entry"
    );
}

#[test]
fn guest_mode_sleeping_vcpu_gets_ga_log_entry_with_the_exact_tag() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    m.put_irte(
        DEV,
        4,
        irte::guest_mode(0x61, BACKING, 0xffff_fe01, 3, false, true),
    );
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(4));
    assert!(irr(&m, 0x61));
    let entry = m.get_u64(GA_BASE);
    assert_eq!(entry as u32, 0xffff_fe01, "GATag untouched");
    assert_eq!((entry >> 32) & 0xffff, u64::from(DEV));
    assert_eq!(entry >> 60, 1, "GUEST_NR");
    assert_eq!(r32(&u, GA_TAIL_REG), 8);
    assert_eq!(m.get_u64(GA_TAIL_MIRROR), 8, "tail mirrored");
    assert_eq!(m.get_u64(0), 0);
    assert_ne!(r32(&u, STATUS_REG) & STATUS_GA_INT, 0);
    let ga_irq = MsiMessage::compat(
        EVT_DEST,
        false,
        GA_VECTOR,
        crate::msi::DeliveryMode::Fixed,
        false,
    );
    assert_eq!(e.interrupts, vec![ga_irq]);
    // GALogIntr = 0: only the IRR bit.
    m.put_irte(DEV, 5, irte::guest_mode(0x62, BACKING, 7, 3, false, false));
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(5));
    assert!(irr(&m, 0x62));
    assert!(e.is_empty());
    assert_eq!(r32(&u, GA_TAIL_REG), 8);
}

#[test]
fn guest_mode_fields_are_read_at_every_interrupt() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    m.put_irte(DEV, 4, irte::guest_mode(0x61, BACKING, 9, 1, true, true));
    u.deliver(&m, SourceId(DEV), msi(4));
    assert_eq!(u.counters().doorbells, 1);
    // The guest hypervisor deschedules the vCPU (amd_iommu_update_ga): no invalidation.
    m.put_irte(DEV, 4, irte::guest_mode(0x61, BACKING, 9, 1, false, true));
    let (t, e) = u.deliver(&m, SourceId(DEV), msi(4));
    assert!(!t.guest_post().unwrap().is_run);
    assert_eq!(u.counters().doorbells, 1);
    assert_eq!(u.counters().ga_log_entries, 1);
    assert_eq!(e.interrupts.len(), 1);
    // And moves it to another CPU with a new tag.
    m.put_irte(
        DEV,
        4,
        irte::guest_mode(0x61, BACKING, 0x1234_5678, 0x200, true, true),
    );
    let (t, _) = u.deliver(&m, SourceId(DEV), msi(4));
    let p = t.guest_post().unwrap();
    assert_eq!(
        (p.destination, p.ga_tag, p.is_run),
        (0x200, 0x1234_5678, true)
    );
    assert_eq!(u.counters().doorbells, 2);
}

#[test]
fn guest_mode_needs_guest_apic_mode() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    m.put_irte(DEV, 4, irte::guest_mode(0x61, BACKING, 9, 1, true, true));
    let ctrl = r64(&u, CONTROL_REG) & !CTRL_GAM_MASK;
    assert!(w64(&mut u, &m, CONTROL_REG, ctrl).remap_state_changed);
    let f = u.translate(&m, SourceId(DEV), msi(4)).fault().unwrap();
    assert_eq!(f.kind, FaultKind::EntryReserved);
    assert!(!irr(&m, 0x61));
}

#[test]
fn backing_page_outside_ram_is_a_hardware_error() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    m.put_irte(
        DEV,
        4,
        irte::guest_mode(0x61, 0xf_ffff_f000, 9, 1, false, true),
    );
    let (t, e) = u.deliver(&m, SourceId(DEV), msi(4));
    assert!(t.guest_post().is_some());
    assert_eq!(e.interrupts, vec![xt_event_interrupt()]);
    let [qw0, qw1] = m.event(0);
    assert_eq!((qw0 >> 60) as u8, EVENT_PAGE_TAB_HARDWARE_ERROR);
    assert_eq!(((qw0 >> 48) & 0xfff) as u16, EVENT_FLAG_I | EVENT_FLAG_RW);
    assert_eq!(qw1, 0xf_ffff_f000 + 0x200 + 0x30);
    assert_eq!(u.counters().posted, 0);
    assert_eq!(r32(&u, GA_TAIL_REG), 0, "no GA entry for a failed post");
}

#[test]
fn ga_log_overflow_and_restart() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    m.put_irte(DEV, 4, irte::guest_mode(0x61, BACKING, 9, 1, false, true));
    // 512 entries: 511 fit.
    let mut interrupts = 0;
    for _ in 0..511 {
        let (_, e) = u.deliver(&m, SourceId(DEV), msi(4));
        interrupts += e.interrupts.len();
    }
    assert_eq!(interrupts, 1, "GAInt stays set: one interrupt");
    assert_eq!(r32(&u, GA_TAIL_REG), 511 * 8);
    assert_eq!(r32(&u, STATUS_REG) & STATUS_GALOG_OVERFLOW, 0);
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(4));
    assert!(e.is_empty(), "line already asserted by GAInt");
    let s = r32(&u, STATUS_REG);
    assert_ne!(s & STATUS_GALOG_OVERFLOW, 0);
    assert_eq!(s & STATUS_GALOG_RUN, 0, "the log stopped");
    u.deliver(&m, SourceId(DEV), msi(4));
    assert_eq!(u.counters().ga_log_lost, 2);
    assert!(irr(&m, 0x61), "the IRR bit is set regardless");
    // Linux: consume, then amd_iommu_restart_ga_log.
    w32(&mut u, &m, GA_HEAD_REG, 511 * 8);
    w32(&mut u, &m, STATUS_REG, STATUS_GA_INT);
    feature(&mut u, &m, CTRL_GALOG_EN, false);
    feature(&mut u, &m, CTRL_GAINT_EN, false);
    w32(&mut u, &m, STATUS_REG, STATUS_GALOG_OVERFLOW);
    feature(&mut u, &m, CTRL_GAINT_EN, true);
    feature(&mut u, &m, CTRL_GALOG_EN, true);
    assert_ne!(r32(&u, STATUS_REG) & STATUS_GALOG_RUN, 0);
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(4));
    assert_eq!(e.interrupts.len(), 1);
    assert_eq!(r32(&u, GA_TAIL_REG), 0, "wrapped");
    assert_eq!(m.get_u64(GA_BASE + 511 * 8) as u32, 9);
}

#[test]
fn ga_tail_mirror_only_when_programmed() {
    let (mut u, m) = unit(X2APIC);
    feature(&mut u, &m, CTRL_GALOG_EN, false);
    w64(&mut u, &m, GA_LOG_TAIL_ADDR_REG, 0);
    feature(&mut u, &m, CTRL_GALOG_EN, true);
    remap_device(&m, DEV);
    m.put_irte(DEV, 4, irte::guest_mode(0x61, BACKING, 9, 1, false, true));
    m.put(0, &u64::MAX.to_le_bytes());
    u.deliver(&m, SourceId(DEV), msi(4));
    assert_eq!(r32(&u, GA_TAIL_REG), 8);
    assert_eq!(m.get_u64(0), u64::MAX, "address 0 untouched");
}

#[test]
fn ga_log_disabled_with_entries_pending_keeps_them() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    m.put_irte(DEV, 4, irte::guest_mode(0x61, BACKING, 9, 1, false, true));
    u.deliver(&m, SourceId(DEV), msi(4));
    u.deliver(&m, SourceId(DEV), msi(4));
    feature(&mut u, &m, CTRL_GALOG_EN, false);
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(4));
    assert!(e.is_empty());
    assert_eq!(
        r32(&u, GA_TAIL_REG),
        16,
        "entries stay, new ones are dropped"
    );
    assert_eq!(u.ga_log().tail(), 16);
    assert_eq!(u.counters().ga_log_lost, 1);
    feature(&mut u, &m, CTRL_GALOG_EN, true);
    u.deliver(&m, SourceId(DEV), msi(4));
    assert_eq!(r32(&u, GA_TAIL_REG), 24);
}

#[test]
fn ga_log_head_beyond_size_counts_as_overflow() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    m.put_irte(DEV, 4, irte::guest_mode(0x61, BACKING, 9, 1, false, true));
    w32(&mut u, &m, GA_HEAD_REG, 0x7_fff8);
    u.deliver(&m, SourceId(DEV), msi(4));
    assert_ne!(r32(&u, STATUS_REG) & STATUS_GALOG_OVERFLOW, 0);
    assert_eq!(r32(&u, GA_TAIL_REG), 0);
}

// ---- Commands ------------------------------------------------------------------------------------

#[test]
fn completion_wait_store() {
    let (mut u, m) = unit(X2APIC);
    let e = submit(
        &mut u,
        &m,
        &[cmd::completion_wait(Some((SEM, 0x1_0000_0002)), false)],
    );
    assert!(e.is_empty());
    assert_eq!(m.get_u64(SEM), 0x1_0000_0002, "all 64 bits stored");
    assert_eq!(r32(&u, CMD_HEAD_REG), 16);
    assert_eq!(r32(&u, STATUS_REG) & STATUS_COMWAIT_INT, 0);
}

#[test]
fn completion_wait_interrupt_xt_and_msi() {
    let (mut u, m) = unit(X2APIC);
    // ComWaitInt is set without ComWaitIntEn (old Linux polled it); no interrupt.
    let e = submit(&mut u, &m, &[cmd::completion_wait(None, true)]);
    assert!(e.is_empty());
    assert_ne!(r32(&u, STATUS_REG) & STATUS_COMWAIT_INT, 0);
    // Enabling it sends the held interrupt through the XT event register.
    let e = feature(&mut u, &m, CTRL_COMWAIT_INT_EN, true);
    assert_eq!(e.interrupts, vec![xt_event_interrupt()]);
    // Still pending: the next wait sends nothing until software clears the bit.
    let e = submit(&mut u, &m, &[cmd::completion_wait(None, true)]);
    assert!(e.interrupts.is_empty());
    w32(&mut u, &m, STATUS_REG, STATUS_COMWAIT_INT);
    let e = submit(&mut u, &m, &[cmd::completion_wait(None, true)]);
    assert_eq!(e.interrupts.len(), 1);
    // MSI mode (IntCapXTEn clear).
    let (mut u, m) = unit(LEGACY);
    feature(&mut u, &m, CTRL_COMWAIT_INT_EN, true);
    let e = submit(&mut u, &m, &[cmd::completion_wait(Some((SEM, 1)), true)]);
    assert_eq!(e.msi, vec![InterruptCause::CompletionWait]);
    assert!(e.interrupts.is_empty());
}

#[test]
fn invalidations_name_device_ids() {
    let (mut u, m) = unit(X2APIC);
    let e = submit(
        &mut u,
        &m,
        &[
            cmd::invalidate_irt(DEV),
            cmd::invalidate_dte(IOAPIC),
            cmd::invalidate_pages_all(3),
            cmd::invalidate_iotlb_all(DEV, 8),
            cmd::completion_wait(Some((SEM, 5)), false),
        ],
    );
    assert_eq!(
        e.invalidations,
        vec![
            Invalidation::InterruptTable(DEV),
            Invalidation::DeviceTableEntry(IOAPIC)
        ]
    );
    assert!(e.invalidates(DEV) && e.invalidates(IOAPIC));
    assert!(!e.invalidates(DEV2));
    assert!(!e.invalidates_all());
    assert_eq!(m.get_u64(SEM), 5);
    let e = submit(&mut u, &m, &[cmd::invalidate_all()]);
    assert_eq!(e.invalidations, vec![Invalidation::All]);
    assert!(e.invalidates_all() && e.invalidates(0xbeef));
    assert_eq!(u.counters().commands, 6);
}

/// Linux's `modify_irte_ga`: write the IRTE, INVALIDATE_INTERRUPT_TABLE, COMPLETION_WAIT
/// polled by the writer. The store happens during the tail write; the writer sees it only
/// after the VMM re-translated what the invalidation covers.
#[test]
fn irte_update_then_invalidate_and_wait() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    m.put_irte(DEV, 3, irte::remapped(0x30, 1, false));
    let before = u.translate(&m, SourceId(DEV), msi(3)).message().unwrap();
    m.put_irte(DEV, 3, irte::remapped(0x31, 0x400, false));
    let e = submit(
        &mut u,
        &m,
        &[
            cmd::invalidate_irt(DEV),
            cmd::completion_wait(Some((SEM, 1)), false),
        ],
    );
    assert!(e.invalidates(DEV));
    assert_eq!(m.get_u64(SEM), 1);
    let after = u.translate(&m, SourceId(DEV), msi(3)).message().unwrap();
    assert_ne!(before, after);
    assert_eq!(after.destination(), 0x400);
}

#[test]
fn illegal_command_stops_the_buffer_until_reenabled() {
    let (mut u, m) = unit(X2APIC);
    let e = submit(
        &mut u,
        &m,
        &[
            cmd::invalidate_irt(DEV),
            (cmd::invalidate_all().0 | 1, 0),
            cmd::invalidate_irt(DEV2),
        ],
    );
    assert_eq!(e.invalidations, vec![Invalidation::InterruptTable(DEV)]);
    assert_eq!(e.interrupts, vec![xt_event_interrupt()]);
    assert_eq!(r32(&u, CMD_HEAD_REG), 16, "head on the offending command");
    assert_eq!(r32(&u, STATUS_REG) & STATUS_CMDBUF_RUN, 0);
    let [qw0, qw1] = m.event(0);
    assert_eq!((qw0 >> 60) as u8, EVENT_ILLEGAL_COMMAND_ERROR);
    assert_eq!(qw1, CMD_BASE + 16, "the command's address");
    // More tail writes do nothing while stopped.
    let e = submit(&mut u, &m, &[cmd::invalidate_all()]);
    assert!(e.is_empty());
    assert_eq!(r32(&u, CMD_HEAD_REG), 16);
    // Recovery: disable, fix the command, re-enable.
    feature(&mut u, &m, CTRL_CMDBUF_EN, false);
    m.put_cmd(1, cmd::invalidate_dte(DEV2));
    let e = feature(&mut u, &m, CTRL_CMDBUF_EN, true);
    assert_eq!(
        e.invalidations,
        vec![
            Invalidation::DeviceTableEntry(DEV2),
            Invalidation::InterruptTable(DEV2),
            Invalidation::All
        ]
    );
    assert_eq!(r32(&u, CMD_HEAD_REG), r32(&u, CMD_TAIL_REG));
    assert_ne!(r32(&u, STATUS_REG) & STATUS_CMDBUF_RUN, 0);
}

#[test]
fn unknown_and_unsupported_opcodes_are_illegal() {
    for opcode in [0u64, 6, 7, 9, 15] {
        let (mut u, m) = unit(X2APIC);
        submit(&mut u, &m, &[(opcode << 60, 0)]);
        let [qw0, _] = m.event(0);
        assert_eq!((qw0 >> 60) as u8, EVENT_ILLEGAL_COMMAND_ERROR, "{opcode}");
        assert_eq!(r32(&u, STATUS_REG) & STATUS_CMDBUF_RUN, 0);
    }
}

#[test]
fn command_hardware_errors() {
    // A completion-wait store outside RAM.
    let (mut u, m) = unit(X2APIC);
    let e = submit(
        &mut u,
        &m,
        &[
            cmd::invalidate_irt(DEV),
            cmd::completion_wait(Some((0x7fff_0000, 1)), false),
        ],
    );
    assert_eq!(e.invalidations, vec![Invalidation::InterruptTable(DEV)]);
    let [qw0, qw1] = m.event(0);
    assert_eq!((qw0 >> 60) as u8, EVENT_COMMAND_HARDWARE_ERROR);
    assert_eq!(qw1, 0x7fff_0000);
    assert_eq!(r32(&u, CMD_HEAD_REG), 16);
    // A command buffer outside RAM.
    let (mut u, m) = unit(X2APIC);
    feature(&mut u, &m, CTRL_CMDBUF_EN, false);
    w64(&mut u, &m, CMD_BUF_BASE_REG, 0x7000_0000 | 8 << 56);
    feature(&mut u, &m, CTRL_CMDBUF_EN, true);
    w32(&mut u, &m, CMD_TAIL_REG, 16);
    let [qw0, qw1] = m.event(0);
    assert_eq!((qw0 >> 60) as u8, EVENT_COMMAND_HARDWARE_ERROR);
    assert_eq!(qw1, 0x7000_0000);
    // A tail beyond a 256-command buffer.
    let (mut u, m) = unit(X2APIC);
    feature(&mut u, &m, CTRL_CMDBUF_EN, false);
    w64(&mut u, &m, CMD_BUF_BASE_REG, CMD_BASE | 8 << 56);
    feature(&mut u, &m, CTRL_CMDBUF_EN, true);
    let e = w32(&mut u, &m, CMD_TAIL_REG, 0x1000);
    assert_eq!(e.interrupts.len(), 1);
    let [qw0, qw1] = m.event(0);
    assert_eq!((qw0 >> 60) as u8, EVENT_COMMAND_HARDWARE_ERROR);
    assert_eq!(qw1, CMD_BASE + 0x1000);
    assert_eq!(r32(&u, STATUS_REG) & STATUS_CMDBUF_RUN, 0);
    assert_eq!(u.counters().commands, 0);
}

#[test]
fn command_buffer_wraps() {
    let (mut u, m) = unit(X2APIC);
    feature(&mut u, &m, CTRL_CMDBUF_EN, false);
    w64(&mut u, &m, CMD_BUF_BASE_REG, CMD_BASE | 8 << 56);
    feature(&mut u, &m, CTRL_CMDBUF_EN, true);
    // One command at a time, waiting for head == tail, past the end (QEMU issue 3338).
    for n in 0..300u64 {
        submit(&mut u, &m, &[cmd::completion_wait(Some((SEM, n)), false)]);
        assert_eq!(r32(&u, CMD_HEAD_REG), r32(&u, CMD_TAIL_REG), "command {n}");
        assert_eq!(m.get_u64(SEM), n);
    }
    assert_eq!(r32(&u, CMD_HEAD_REG), ((300 % 256) * 16) as u32);
}

#[test]
fn one_tail_write_runs_at_most_one_buffer() {
    let (mut u, m) = unit(X2APIC);
    feature(&mut u, &m, CTRL_CMDBUF_EN, false);
    w64(&mut u, &m, CMD_BUF_BASE_REG, CMD_BASE | 8 << 56);
    feature(&mut u, &m, CTRL_CMDBUF_EN, true);
    for slot in 0..256 {
        m.put_cmd(slot, cmd::invalidate_irt(slot as u16));
    }
    // Tail = head - 16: 255 commands pending.
    let e = w32(&mut u, &m, CMD_TAIL_REG, 255 * 16);
    assert_eq!(e.invalidations.len(), 255);
    assert_eq!(r32(&u, CMD_HEAD_REG), 255 * 16);
    assert_eq!(u.counters().commands, 255);
}

// ---- Event log -------------------------------------------------------------------------------

#[test]
fn event_interrupt_gating_and_msi_mode() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert_eq!(e.interrupts, vec![xt_event_interrupt()]);
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert!(e.is_empty(), "EventLogInt still set");
    let e = w32(&mut u, &m, STATUS_REG, STATUS_EVT_INT);
    assert!(e.is_empty());
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert_eq!(e.interrupts.len(), 1);
    assert_eq!(r32(&u, EVT_TAIL_REG), 48);
    // A masked XT register (Linux writes 0) delivers nothing.
    w32(&mut u, &m, STATUS_REG, STATUS_EVT_INT);
    w64(&mut u, &m, XT_EVT_INT_CTL_REG, 0);
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert!(e.is_empty());
    assert_eq!(r32(&u, EVT_TAIL_REG), 64);
    // MSI mode.
    let (mut u, m) = unit(LEGACY);
    remap_device(&m, DEV);
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert_eq!(e.msi, vec![InterruptCause::EventLog]);
    assert!(e.interrupts.is_empty());
}

#[test]
fn event_log_overflow_and_linux_restart() {
    let (mut u, m) = unit(X2APIC);
    feature(&mut u, &m, CTRL_EVT_LOG_EN, false);
    w64(&mut u, &m, EVT_LOG_BASE_REG, EVT_BASE | 8 << 56);
    feature(&mut u, &m, CTRL_EVT_LOG_EN, true);
    remap_device(&m, DEV);
    for _ in 0..255 {
        u.deliver(&m, SourceId(DEV), msi(1));
    }
    assert_eq!(r32(&u, EVT_TAIL_REG), 255 * 16);
    assert_eq!(r32(&u, STATUS_REG) & STATUS_EVT_OVERFLOW, 0);
    // Software took the first interrupt and cleared EventLogInt without draining.
    w32(&mut u, &m, STATUS_REG, STATUS_EVT_INT);
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert_eq!(e.interrupts.len(), 1, "overflow interrupts");
    let s = r32(&u, STATUS_REG);
    assert_ne!(s & STATUS_EVT_OVERFLOW, 0);
    assert_eq!(s & STATUS_EVT_RUN, 0);
    u.deliver(&m, SourceId(DEV), msi(1));
    assert_eq!(u.counters().events_lost, 2);
    assert_eq!(
        r32(&u, EVT_TAIL_REG),
        255 * 16,
        "nothing written past the head"
    );
    // amd_iommu_handle_irq: clear, drain (head = tail), restart.
    w32(&mut u, &m, STATUS_REG, STATUS_EVT_INT | STATUS_EVT_OVERFLOW);
    w32(&mut u, &m, EVT_HEAD_REG, 255 * 16);
    feature(&mut u, &m, CTRL_EVT_LOG_EN, false);
    feature(&mut u, &m, CTRL_EVT_INT_EN, false);
    w32(&mut u, &m, STATUS_REG, STATUS_EVT_OVERFLOW);
    feature(&mut u, &m, CTRL_EVT_INT_EN, true);
    feature(&mut u, &m, CTRL_EVT_LOG_EN, true);
    assert_ne!(r32(&u, STATUS_REG) & STATUS_EVT_RUN, 0);
    u.deliver(&m, SourceId(DEV), msi(1));
    u.deliver(&m, SourceId(DEV), msi(1));
    assert_eq!(r32(&u, EVT_TAIL_REG), 16, "wrapped");
}

#[test]
fn event_log_disabled_drops_events_and_bad_pointers_overflow() {
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    feature(&mut u, &m, CTRL_EVT_LOG_EN, false);
    let (t, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert!(t.fault().is_some());
    assert!(e.is_empty());
    assert_eq!(
        r32(&u, STATUS_REG) & (STATUS_EVT_INT | STATUS_EVT_OVERFLOW),
        0
    );
    feature(&mut u, &m, CTRL_EVT_LOG_EN, true);
    w32(&mut u, &m, EVT_HEAD_REG, 0x7_fff0);
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert_eq!(e.interrupts.len(), 1);
    assert_ne!(r32(&u, STATUS_REG) & STATUS_EVT_OVERFLOW, 0);
    assert_eq!(r32(&u, EVT_TAIL_REG), 0);
    // An event log outside RAM loses the event but keeps running.
    let (mut u, m) = unit(X2APIC);
    remap_device(&m, DEV);
    feature(&mut u, &m, CTRL_EVT_LOG_EN, false);
    w64(&mut u, &m, EVT_LOG_BASE_REG, 0x7000_0000);
    feature(&mut u, &m, CTRL_EVT_LOG_EN, true);
    let (_, e) = u.deliver(&m, SourceId(DEV), msi(1));
    assert!(e.is_empty());
    assert_eq!(u.counters().events_lost, 1);
    assert_ne!(r32(&u, STATUS_REG) & STATUS_EVT_RUN, 0);
}

#[test]
fn device_table_change_while_enabled_retranslates_all() {
    let (mut u, m) = unit(X2APIC);
    assert!(w64(&mut u, &m, DEV_TAB_BASE_REG, DEV_TAB | 0xff).remap_state_changed);
    assert!(!w64(&mut u, &m, DEV_TAB_BASE_REG, DEV_TAB | 0xff).remap_state_changed);
}

#[test]
fn linux_bring_up_effects() {
    let mut u = AmdViUnit::new(AmdViConfig::default());
    let m = FakeMem::new();
    let e = bring_up(&mut u, &m, X2APIC);
    assert!(e.remap_state_changed);
    assert!(e.interrupts.is_empty() && e.msi.is_empty());
    // amd_iommu_flush_all_caches with IASup: one INVALIDATE_IOMMU_ALL and a wait.
    let e = submit(
        &mut u,
        &m,
        &[
            cmd::invalidate_all(),
            cmd::completion_wait(Some((SEM, 1)), false),
        ],
    );
    assert_eq!(e.invalidations, vec![Invalidation::All]);
    assert_eq!(m.get_u64(SEM), 1);
    assert_eq!(u.counters().events_logged, 0);
}
