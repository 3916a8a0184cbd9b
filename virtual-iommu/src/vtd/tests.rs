//! Register-level tests of [`VtdUnit`] against a fake guest memory, driving the unit the
//! way a guest does.

use std::cell::RefCell;

use super::irte::{build as irte_build, Irte};
use super::qi::build as desc;
use super::*;
use crate::memory::MemError;
use crate::msi::{DeliveryMode, MSI_ADDR_REMAPPABLE};

/// Guest RAM from 0 to `RAM_SIZE`; anything above fails like a hole would.
const RAM_SIZE: usize = 0x10_0000;
/// Where the tests put the invalidation queue (one page, QS = 0: 256 descriptors).
const QUEUE_BASE: u64 = 0x1_0000;
/// Where the tests put the interrupt remapping table.
const TABLE_BASE: u64 = 0x2_0000;
/// Where Linux-style wait descriptors write their status.
const STATUS_ADDR: u64 = 0x8000;
/// Linux's QI_DONE status value.
const QI_DONE: u32 = 1;
/// Requester id of the test device (00:03.0).
const DEVICE_SID: SourceId = SourceId(0x0018);
/// Requester id of the IOAPIC as Linux's DMAR scope gives it (ff:00.0).
const IOAPIC_SID: SourceId = SourceId(0xff00);

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

    fn put_irte(&self, index: u32, irte: Irte) {
        self.put(TABLE_BASE + u64::from(index) * 16, &irte.to_bytes());
    }

    fn put_desc(&self, slot: u32, d: (u64, u64)) {
        let gpa = QUEUE_BASE + u64::from(slot) * 16;
        self.put(gpa, &d.0.to_le_bytes());
        self.put(gpa + 8, &d.1.to_le_bytes());
    }

    fn get_u32(&self, gpa: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b).unwrap();
        u32::from_le_bytes(b)
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

fn r32(u: &VtdUnit, off: u64) -> u32 {
    let mut b = [0u8; 4];
    u.mmio_read(off, &mut b);
    u32::from_le_bytes(b)
}

fn r64(u: &VtdUnit, off: u64) -> u64 {
    let mut b = [0u8; 8];
    u.mmio_read(off, &mut b);
    u64::from_le_bytes(b)
}

fn w32(u: &mut VtdUnit, m: &FakeMem, off: u64, v: u32) -> Effects {
    u.mmio_write(m, off, &v.to_le_bytes())
}

fn w64(u: &mut VtdUnit, m: &FakeMem, off: u64, v: u64) -> Effects {
    u.mmio_write(m, off, &v.to_le_bytes())
}

/// A remappable-format MSI naming `handle`, with SHV and `subhandle` when given.
fn remappable(handle: u16, subhandle: Option<u16>) -> MsiMessage {
    let h = u32::from(handle);
    let mut address_lo = 0xfee0_0000 | MSI_ADDR_REMAPPABLE | ((h & 0x7fff) << 5) | ((h >> 15) << 2);
    let mut data = 0;
    if let Some(s) = subhandle {
        address_lo |= 1 << 3;
        data = u32::from(s);
    }
    MsiMessage {
        address_lo,
        address_hi: 0,
        data,
    }
}

/// The fault-event message the tests program: vector 0xf0 to x2APIC ID 0x0001_0203.
fn fault_event_msg() -> MsiMessage {
    MsiMessage {
        address_lo: 0xfee0_3000,
        address_hi: 0x0001_0200,
        data: 0xf0,
    }
}

/// Programs and unmasks the fault event the way Linux's dmar_msi_write/unmask do.
fn setup_fault_event(u: &mut VtdUnit, m: &FakeMem) {
    let msg = fault_event_msg();
    w32(u, m, FEDATA_REG, msg.data);
    w32(u, m, FEADDR_REG, msg.address_lo);
    w32(u, m, FEUADDR_REG, msg.address_hi);
    assert!(w32(u, m, FECTL_REG, 0).is_empty());
}

/// Linux's qi_submit_sync: descriptors at `free_head`, a wait with status write after
/// them, then the tail write; returns the effects and the new free head.
fn submit(u: &mut VtdUnit, m: &FakeMem, free_head: u32, descs: &[(u64, u64)]) -> (Effects, u32) {
    let entries = 256;
    let mut slot = free_head;
    for d in descs {
        m.put_desc(slot, *d);
        slot = (slot + 1) % entries;
    }
    m.put(STATUS_ADDR, &0u32.to_le_bytes());
    m.put_desc(slot, desc::wait(false, Some((STATUS_ADDR, QI_DONE)), false));
    slot = (slot + 1) % entries;
    let effects = w32(u, m, IQT_REG, slot << 4);
    (effects, slot)
}

/// Linux's bring-up, step by step, checking GSTS and the effects of each step: QI enable
/// (tail 0, IQA, QIE), IRTA + SIRTP, global IEC + wait, IRE, and CFI cleared if set.
/// Returns the queue's free head.
fn linux_enable(u: &mut VtdUnit, m: &FakeMem, eime: bool, firmware_cfi: bool) -> u32 {
    if firmware_cfi {
        // Firmware left compatibility format enabled.
        assert!(w32(u, m, GCMD_REG, GCMD_CFI).ir_state_changed);
        assert_eq!(r32(u, GSTS_REG), GSTS_CFIS);
    }
    // dmar_fault(-1): nothing pending.
    assert_eq!(r32(u, FSTS_REG) & FSTS_PPF, 0);
    // dmar_disable_qi: QIES clear, nothing to do. __dmar_enable_qi:
    let mut gcmd = r32(u, GSTS_REG) & (GSTS_IRES | GSTS_TES | GSTS_QIES);
    assert!(w32(u, m, IQT_REG, 0).is_empty());
    assert!(w64(u, m, IQA_REG, QUEUE_BASE).is_empty());
    gcmd |= GCMD_QIE;
    let e = w32(u, m, GCMD_REG, gcmd);
    if firmware_cfi {
        // Linux's command value only mirrors IRE, TE and QIE from GSTS, so its first
        // GCMD write already clears a CFI firmware left set.
        assert!(e.ir_state_changed);
        assert_eq!(r32(u, GSTS_REG) & GSTS_CFIS, 0);
    } else {
        assert!(e.is_empty());
    }
    assert_ne!(r32(u, GSTS_REG) & GSTS_QIES, 0);
    // iommu_set_irq_remapping: IRTA with S = 15, EIME, then SIRTP.
    let irta = TABLE_BASE | if eime { IRTA_EIME } else { 0 } | 0xf;
    w64(u, m, IRTA_REG, irta);
    let e = w32(u, m, GCMD_REG, gcmd | GCMD_SIRTP);
    assert!(e.ir_state_changed);
    assert_ne!(r32(u, GSTS_REG) & GSTS_IRTPS, 0);
    assert_eq!(
        u.ir_table(),
        Some(IrTable {
            base: TABLE_BASE,
            entries: 65536,
            eime
        })
    );
    // qi_global_iec.
    let (e, free_head) = submit(u, m, 0, &[desc::iec_global()]);
    assert_eq!(e.iec, vec![IecInvalidation::Global]);
    assert!(e.interrupts.is_empty() && !e.ir_state_changed);
    assert_eq!(m.get_u32(STATUS_ADDR), QI_DONE);
    assert_eq!(r64(u, IQH_REG), r64(u, IQT_REG));
    // iommu_enable_irq_remapping.
    gcmd |= GCMD_IRE;
    let e = w32(u, m, GCMD_REG, gcmd);
    assert!(e.ir_state_changed);
    let sts = r32(u, GSTS_REG);
    assert_ne!(sts & GSTS_IRES, 0);
    if sts & GSTS_CFIS != 0 {
        // Linux's gcmd never had CFI, so the IRE write above already cleared it; a
        // guest that tracks CFI clears it explicitly.
        let e = w32(u, m, GCMD_REG, gcmd & !GCMD_CFI);
        assert!(e.ir_state_changed);
    }
    assert_eq!(r32(u, GSTS_REG) & GSTS_CFIS, 0);
    assert_eq!(r32(u, GSTS_REG) & GSTS_TES, 0);
    free_head
}

fn enabled_unit(eime: bool) -> (VtdUnit, FakeMem, u32) {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    let head = linux_enable(&mut u, &m, eime, false);
    (u, m, head)
}

// ---- Reset values and read-only registers ------------------------------------------------

/// What the default configuration reports.
fn default_caps() -> Capabilities {
    Capabilities {
        fault_records: 8,
        posted_interrupts: true,
        dma_translation: true,
        caching_mode: true,
        extended_interrupt_mode: true,
    }
}

#[test]
fn reset_values() {
    let u = VtdUnit::new(VtdConfig::default());
    assert_eq!(r32(&u, VER_REG), 0x10);
    assert_eq!(r64(&u, CAP_REG), capability(&default_caps()));
    assert_eq!(r32(&u, CAP_REG), capability(&default_caps()) as u32);
    assert_eq!(
        r32(&u, CAP_REG + 4),
        (capability(&default_caps()) >> 32) as u32
    );
    assert_eq!(r64(&u, ECAP_REG), extended_capability(&default_caps()));
    assert_eq!(r32(&u, GCMD_REG), 0);
    assert_eq!(r32(&u, GSTS_REG), 0);
    assert_eq!(r64(&u, RTADDR_REG), 0);
    assert_eq!(r64(&u, CCMD_REG), 0);
    assert_eq!(r32(&u, FSTS_REG), 0);
    assert_eq!(r32(&u, FECTL_REG), EVENT_CTL_IM);
    assert_eq!(r32(&u, FEDATA_REG), 0);
    assert_eq!(r32(&u, FEADDR_REG), 0);
    assert_eq!(r32(&u, FEUADDR_REG), 0);
    assert_eq!(r64(&u, IQH_REG), 0);
    assert_eq!(r64(&u, IQT_REG), 0);
    assert_eq!(r64(&u, IQA_REG), 0);
    assert_eq!(r32(&u, ICS_REG), 0);
    assert_eq!(r32(&u, IECTL_REG), EVENT_CTL_IM);
    assert_eq!(r64(&u, IRTA_REG), 0);
    assert_eq!(r64(&u, IVA_REG), 0);
    assert_eq!(r64(&u, IOTLB_REG), 0);
    for n in 0..8 {
        assert_eq!(r64(&u, FRCD_REG + 16 * n), 0);
        assert_eq!(r64(&u, FRCD_REG + 16 * n + 8), 0);
    }
    // Unimplemented offsets read as zero.
    for off in [
        0x04, 0x30, 0x48, 0x58, 0x64, 0x98, 0xb0, 0x100, 0x2a0, 0xff8,
    ] {
        assert_eq!(r32(&u, off), 0, "offset {off:#x}");
    }
    assert!(!u.remapping_enabled());
    assert_eq!(u.ir_table(), None);
}

#[test]
fn config_clamps_and_shapes_capabilities() {
    let u = VtdUnit::new(VtdConfig {
        extended_interrupt_mode: false,
        fault_records: 0,
        posted_interrupts: false,
        dma_translation: false,
        caching_mode: false,
    });
    assert_eq!(u.capability() & CAP_PI, 0);
    assert_eq!(u.config().fault_records, 1);
    assert_eq!(u.extended_capability() & ECAP_EIM, 0);
    assert_eq!((u.capability() >> CAP_NFR_SHIFT) & 0xff, 0);
    let u = VtdUnit::new(VtdConfig {
        extended_interrupt_mode: true,
        fault_records: 100_000,
        posted_interrupts: true,
        ..VtdConfig::default()
    });
    assert_eq!(u.capability() & CAP_PI, CAP_PI);
    assert_eq!(u.config().fault_records, MAX_FAULT_RECORDS);
    // The last record is reachable, the one after is not.
    let last = FRCD_REG + 16 * (MAX_FAULT_RECORDS as u64 - 1);
    assert_eq!(r32(&u, last + 12), 0);
}

#[test]
fn read_only_registers_ignore_writes() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    for off in [
        VER_REG,
        CAP_REG,
        CAP_REG + 4,
        ECAP_REG,
        ECAP_REG + 4,
        GSTS_REG,
        IQH_REG,
    ] {
        assert!(w32(&mut u, &m, off, 0xffff_ffff).is_empty());
    }
    w64(&mut u, &m, CAP_REG, 0);
    w64(&mut u, &m, IQH_REG, 0x7ff0);
    assert_eq!(r32(&u, VER_REG), 0x10);
    assert_eq!(r64(&u, CAP_REG), capability(&default_caps()));
    assert_eq!(r64(&u, ECAP_REG), extended_capability(&default_caps()));
    assert_eq!(r32(&u, GSTS_REG), 0);
    assert_eq!(r64(&u, IQH_REG), 0);
    // FSTS: PPF and FRI are not writable; FECTL.IP is not writable.
    w32(&mut u, &m, FSTS_REG, 0xffff_ffff);
    assert_eq!(r32(&u, FSTS_REG), 0);
    w32(&mut u, &m, FECTL_REG, EVENT_CTL_IP);
    assert_eq!(r32(&u, FECTL_REG), 0);
    // Fault records are read-only except F.
    w32(&mut u, &m, FRCD_REG, 0xffff_ffff);
    w32(&mut u, &m, FRCD_REG + 8, 0xffff_ffff);
    assert_eq!(r64(&u, FRCD_REG), 0);
    assert_eq!(r64(&u, FRCD_REG + 8), 0);
}

#[test]
fn writable_register_masks() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    w64(&mut u, &m, RTADDR_REG, 0x1234_5678_9abc_dfff);
    assert_eq!(
        r64(&u, RTADDR_REG),
        0x1234_5678_9abc_dc00,
        "address and TTM"
    );
    w64(&mut u, &m, IRTA_REG, 0xffff_ffff_ffff_ffff);
    assert_eq!(r64(&u, IRTA_REG), !0xfff | IRTA_EIME | 0xf);
    w32(&mut u, &m, FEDATA_REG, 0xffff_ffff);
    w32(&mut u, &m, FEADDR_REG, 0xffff_ffff);
    w32(&mut u, &m, FEUADDR_REG, 0xffff_ffff);
    assert_eq!(r32(&u, FEDATA_REG), 0xffff);
    assert_eq!(r32(&u, FEADDR_REG), 0xffff_fffc);
    assert_eq!(r32(&u, FEUADDR_REG), 0xffff_ffff);
    w32(&mut u, &m, IEDATA_REG, 0x1_2345);
    w32(&mut u, &m, IEADDR_REG, 0xfee0_0003);
    w32(&mut u, &m, IEUADDR_REG, 0x100);
    assert_eq!(r32(&u, IEDATA_REG), 0x2345);
    assert_eq!(r32(&u, IEADDR_REG), 0xfee0_0000);
    assert_eq!(r32(&u, IEUADDR_REG), 0x100);
    // Without EIM: IRTA.EIME and the upper address registers are not implemented.
    let mut u = VtdUnit::new(VtdConfig {
        extended_interrupt_mode: false,
        ..VtdConfig::default()
    });
    w64(&mut u, &m, IRTA_REG, TABLE_BASE | IRTA_EIME | 3);
    assert_eq!(r64(&u, IRTA_REG), TABLE_BASE | 3);
    w32(&mut u, &m, FEUADDR_REG, 0x100);
    w32(&mut u, &m, IEUADDR_REG, 0x100);
    assert_eq!(r32(&u, FEUADDR_REG), 0);
    assert_eq!(r32(&u, IEUADDR_REG), 0);
}

// ---- GCMD / GSTS -----------------------------------------------------------------------

#[test]
fn linux_sequence_x2apic_mode() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    linux_enable(&mut u, &m, true, false);
    assert_eq!(r32(&u, GSTS_REG), GSTS_QIES | GSTS_IRTPS | GSTS_IRES);
    assert!(u.remapping_enabled());
}

#[test]
fn linux_sequence_clears_firmware_cfi() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    linux_enable(&mut u, &m, false, true);
    assert_eq!(r32(&u, GSTS_REG), GSTS_QIES | GSTS_IRTPS | GSTS_IRES);
}

#[test]
fn explicit_cfi_clear_after_ire() {
    // A guest that keeps CFI in its command value and clears it in a separate write, as
    // Linux's code path does when it sees CFIS still set.
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    w32(&mut u, &m, GCMD_REG, GCMD_CFI);
    w32(&mut u, &m, GCMD_REG, GCMD_CFI | GCMD_IRE);
    assert_eq!(r32(&u, GSTS_REG), GSTS_CFIS | GSTS_IRES);
    let e = w32(&mut u, &m, GCMD_REG, GCMD_IRE);
    assert!(e.ir_state_changed);
    assert_eq!(r32(&u, GSTS_REG), GSTS_IRES);
}

#[test]
fn gcmd_is_change_driven() {
    let (mut u, m, _) = enabled_unit(true);
    let sts = r32(&u, GSTS_REG);
    // Rewriting the same state changes nothing.
    let e = w32(&mut u, &m, GCMD_REG, sts & (GSTS_QIES | GSTS_IRES));
    assert!(e.is_empty());
    assert_eq!(r32(&u, GSTS_REG), sts);
    // Disabling IRE only.
    let e = w32(&mut u, &m, GCMD_REG, GCMD_QIE);
    assert!(e.ir_state_changed);
    assert_eq!(r32(&u, GSTS_REG), GSTS_QIES | GSTS_IRTPS);
    assert!(!u.remapping_enabled());
}

#[test]
fn te_is_ignored_without_dma_translation_and_srtp_latches_root_table() {
    let mut u = VtdUnit::new(VtdConfig {
        dma_translation: false,
        ..VtdConfig::default()
    });
    let m = FakeMem::new();
    w64(&mut u, &m, RTADDR_REG, 0x5000);
    let e = w32(&mut u, &m, GCMD_REG, GCMD_SRTP);
    assert!(e.is_empty());
    assert_eq!(r32(&u, GSTS_REG), GSTS_RTPS);
    assert_eq!(u.root_table(), Some(0x5000));
    // A later RTADDR write is not in effect until the next SRTP.
    w64(&mut u, &m, RTADDR_REG, 0x6000);
    assert_eq!(u.root_table(), Some(0x5000));
    let e = w32(&mut u, &m, GCMD_REG, GCMD_TE);
    assert!(e.is_empty());
    assert_eq!(r32(&u, GSTS_REG) & GSTS_TES, 0);
    // Linux's iommu_disable_translation on an ignored unit: TE clear, waits for !TES.
    w32(&mut u, &m, GCMD_REG, 0);
    assert_eq!(r32(&u, GSTS_REG) & GSTS_TES, 0);
    // Unsupported one-shot/enable bits are ignored.
    w32(&mut u, &m, GCMD_REG, GCMD_SFL | GCMD_EAFL | GCMD_WBF);
    assert_eq!(r32(&u, GSTS_REG), GSTS_RTPS);
    assert_eq!((u.capability() >> CAP_SAGAW_SHIFT) & 0x1f, 0);
}

#[test]
fn te_enables_translation_through_the_latched_root_table() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    w64(&mut u, &m, RTADDR_REG, 0x5000);
    let e = w32(&mut u, &m, GCMD_REG, GCMD_SRTP);
    assert!(e.dma_state_changed);
    assert!(!u.translation_enabled());
    let e = w32(&mut u, &m, GCMD_REG, GCMD_TE);
    assert!(e.dma_state_changed && e.touches_dma());
    assert_eq!(r32(&u, GSTS_REG), GSTS_RTPS | GSTS_TES);
    assert!(u.translation_enabled());
    // Writing the same state again changes nothing.
    assert!(w32(&mut u, &m, GCMD_REG, GCMD_TE).is_empty());
    let e = w32(&mut u, &m, GCMD_REG, 0);
    assert!(e.dma_state_changed);
    assert!(!u.translation_enabled());
}

#[test]
fn sirtp_relatches_and_reports_state_change() {
    let (mut u, m, _) = enabled_unit(true);
    w64(&mut u, &m, IRTA_REG, 0x3_0000 | 3);
    // Not in effect before SIRTP.
    assert_eq!(u.ir_table().unwrap().base, TABLE_BASE);
    let gcmd = GCMD_QIE | GCMD_IRE;
    let e = w32(&mut u, &m, GCMD_REG, gcmd | GCMD_SIRTP);
    assert!(e.ir_state_changed);
    assert_eq!(
        u.ir_table(),
        Some(IrTable {
            base: 0x3_0000,
            entries: 16,
            eime: false
        })
    );
}

#[test]
fn register_based_invalidation_completes_at_once() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    // Global context invalidation: ICC | CIRG = 1.
    w64(&mut u, &m, CCMD_REG, CCMD_ICC | (1 << CCMD_CIRG_SHIFT));
    let ccmd = r64(&u, CCMD_REG);
    assert_eq!(ccmd & CCMD_ICC, 0);
    assert_eq!((ccmd >> CCMD_CAIG_SHIFT) & 3, 1);
    // Domain-selective IOTLB invalidation via two dword writes, high last.
    w32(&mut u, &m, IOTLB_REG, 0);
    w32(
        &mut u,
        &m,
        IOTLB_REG + 4,
        ((IOTLB_IVT | (2 << IOTLB_IIRG_SHIFT)) >> 32) as u32,
    );
    let iotlb = r64(&u, IOTLB_REG);
    assert_eq!(iotlb & IOTLB_IVT, 0);
    assert_eq!((iotlb >> IOTLB_IAIG_SHIFT) & 3, 2);
    w64(&mut u, &m, IVA_REG, 0x1234_5000);
    assert_eq!(r64(&u, IVA_REG), 0x1234_5000);
}

// ---- Translation -----------------------------------------------------------------------

#[test]
fn remapping_disabled_passes_everything() {
    let u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    let compat = MsiMessage::compat(0x1ff, false, 0x30, DeliveryMode::Fixed, false);
    assert_eq!(
        u.translate(&m, DEVICE_SID, compat),
        Translation::Passthrough(compat)
    );
    let remap = remappable(7, Some(1));
    let t = u.translate(&m, DEVICE_SID, remap);
    assert_eq!(t, Translation::Passthrough(remap));
    assert_eq!(t.irte_index(), None);
    assert_eq!(t.message(), Some(remap));
}

#[test]
fn remap_x2apic_without_and_with_subhandle() {
    let (u, m, _) = enabled_unit(true);
    m.put_irte(
        0x40,
        irte_build::with_requester_id(
            irte_build::remapped(0x45, 0x0001_2345, true, DeliveryMode::Fixed, false, false),
            DEVICE_SID.0,
            0,
        ),
    );
    m.put_irte(
        0x43,
        irte_build::remapped(0x46, 0x300, true, DeliveryMode::LowestPriority, true, false),
    );
    let t = u.translate(&m, DEVICE_SID, remappable(0x40, None));
    let expected = MsiMessage {
        address_lo: 0xfee4_5000,
        address_hi: 0x0001_2300,
        data: 0x45,
    };
    assert_eq!(
        t,
        Translation::Remapped {
            index: 0x40,
            message: expected
        }
    );
    assert_eq!(t.irte_index(), Some(0x40));
    assert_eq!(t.message().unwrap().destination(), 0x0001_2345);
    // SHV: handle 0x40 + subhandle 3.
    let t = u.translate(&m, DEVICE_SID, remappable(0x40, Some(3)));
    assert_eq!(
        t,
        Translation::Remapped {
            index: 0x43,
            message: MsiMessage {
                address_lo: 0xfee0_0004,
                address_hi: 0x300,
                data: 0x46 | (1 << 8),
            }
        }
    );
}

#[test]
fn remap_handle_bit_15() {
    let (u, m, _) = enabled_unit(true);
    m.put_irte(
        0x8001,
        irte_build::remapped(0x50, 7, true, DeliveryMode::Fixed, false, false),
    );
    let t = u.translate(&m, DEVICE_SID, remappable(0x8001, None));
    assert_eq!(t.irte_index(), Some(0x8001));
    assert_eq!(t.message().unwrap().vector(), 0x50);
}

#[test]
fn remap_xapic_mode_uses_dst_15_8() {
    let (u, m, _) = enabled_unit(false);
    m.put_irte(
        5,
        irte_build::remapped(0x33, 0x0a, false, DeliveryMode::Fixed, true, true),
    );
    let t = u.translate(&m, DEVICE_SID, remappable(5, None));
    assert_eq!(
        t.message(),
        Some(MsiMessage {
            address_lo: 0xfee0_a004,
            address_hi: 0,
            data: 0x33 | (1 << 14) | (1 << 15),
        })
    );
    // An x2APIC-style 32-bit destination is reserved in xAPIC mode: fault 0x24.
    m.put_irte(
        6,
        irte_build::remapped(0x33, 0x1234, true, DeliveryMode::Fixed, false, false),
    );
    let t = u.translate(&m, DEVICE_SID, remappable(6, None));
    assert_eq!(t.fault().unwrap().reason, FaultReason::EntryReserved);
}

#[test]
fn remap_ioapic_rte_message() {
    // Pin 9, level-triggered, remappable RTE naming index 0x20, as devices/src/ioapic.rs
    // turns it into an MSI; Linux's IRTE for it says edge (TM = 0).
    let (u, m, _) = enabled_unit(true);
    m.put_irte(
        0x20,
        irte_build::with_requester_id(
            irte_build::remapped(0x61, 0x1_0000, true, DeliveryMode::Fixed, false, false),
            IOAPIC_SID.0,
            0,
        ),
    );
    let index: u64 = 0x20;
    let rte: u64 = 9 | (1 << 15) | (1 << 48) | ((index & 0x7fff) << 49) | ((index >> 15) << 11);
    let msg = MsiMessage {
        address_lo: 0xfee0_0000 | (((rte >> 48) as u32) << 4) | ((((rte >> 11) & 1) as u32) << 2),
        address_hi: 0,
        data: 9 | (1 << 14) | (1 << 15),
    };
    let t = u.translate(&m, IOAPIC_SID, msg);
    assert_eq!(
        t,
        Translation::Remapped {
            index: 0x20,
            message: MsiMessage {
                address_lo: 0xfee0_0000,
                address_hi: 0x1_0000,
                data: 0x61,
            }
        }
    );
    // From another requester: source-id check fails.
    let t = u.translate(&m, DEVICE_SID, msg);
    assert_eq!(t.fault().unwrap().reason, FaultReason::SourceIdMismatch);
}

#[test]
fn fault_0x20_malformed_request() {
    let (u, m, _) = enabled_unit(true);
    m.put_irte(
        1,
        irte_build::remapped(0x40, 1, true, DeliveryMode::Fixed, false, false),
    );
    let mut msg = remappable(1, None);
    msg.address_hi = 0x100;
    let f = u.translate(&m, DEVICE_SID, msg).fault().unwrap();
    assert_eq!(f.reason, FaultReason::RequestReserved);
    assert_eq!(f.index, Some(1));
    assert!(!f.suppressed);
    let mut msg = remappable(1, Some(0));
    msg.data = 0x0001_0000;
    let f = u.translate(&m, DEVICE_SID, msg).fault().unwrap();
    assert_eq!(f.reason, FaultReason::RequestReserved);
    // SHV = 0: data bits 31:16 are still reserved.
    let mut msg = remappable(1, None);
    msg.data = 0x8000_0000;
    let f = u.translate(&m, DEVICE_SID, msg).fault().unwrap();
    assert_eq!(f.reason, FaultReason::RequestReserved);
    // Not an interrupt address at all.
    let msg = MsiMessage {
        address_lo: 0xfed0_0010,
        address_hi: 0,
        data: 0,
    };
    let f = u.translate(&m, DEVICE_SID, msg).fault().unwrap();
    assert_eq!(f.reason, FaultReason::RequestReserved);
}

#[test]
fn fault_0x21_index_beyond_table() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    // S = 3: 16 entries.
    w64(&mut u, &m, IRTA_REG, TABLE_BASE | IRTA_EIME | 3);
    w32(&mut u, &m, GCMD_REG, GCMD_SIRTP);
    w32(&mut u, &m, GCMD_REG, GCMD_IRE);
    m.put_irte(
        15,
        irte_build::remapped(0x40, 1, true, DeliveryMode::Fixed, false, false),
    );
    assert!(u
        .translate(&m, DEVICE_SID, remappable(15, None))
        .message()
        .is_some());
    let f = u
        .translate(&m, DEVICE_SID, remappable(16, None))
        .fault()
        .unwrap();
    assert_eq!(f.reason, FaultReason::IndexBeyondTable);
    assert_eq!(f.index, Some(16));
    // Handle + subhandle past 0xffff, with the largest table.
    let (u, m, _) = enabled_unit(true);
    let f = u
        .translate(&m, DEVICE_SID, remappable(0xffff, Some(1)))
        .fault()
        .unwrap();
    assert_eq!(f.reason, FaultReason::IndexBeyondTable);
    assert_eq!(f.index, Some(0x1_0000));
}

#[test]
fn fault_0x22_not_present() {
    let (u, m, _) = enabled_unit(true);
    let t = u.translate(&m, DEVICE_SID, remappable(9, None));
    let f = t.fault().unwrap();
    assert_eq!(f.reason, FaultReason::EntryNotPresent);
    assert_eq!(f.index, Some(9));
    assert_eq!(t.irte_index(), Some(9), "failed routes stay keyed by index");
    assert_eq!(t.message(), None);
}

#[test]
fn fault_0x23_table_read_failure() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    // IRE before any SIRTP: no table to read.
    w32(&mut u, &m, GCMD_REG, GCMD_IRE);
    let f = u
        .translate(&m, DEVICE_SID, remappable(0, None))
        .fault()
        .unwrap();
    assert_eq!(f.reason, FaultReason::TableReadFailed);
    // A table beyond guest RAM.
    w64(
        &mut u,
        &m,
        IRTA_REG,
        (RAM_SIZE as u64 - 0x1000) | IRTA_EIME | 0xf,
    );
    w32(&mut u, &m, GCMD_REG, GCMD_IRE | GCMD_SIRTP);
    // Entry 255 is the last one inside RAM (its bytes are zero: not present).
    let f = u
        .translate(&m, DEVICE_SID, remappable(255, None))
        .fault()
        .unwrap();
    assert_eq!(f.reason, FaultReason::EntryNotPresent);
    let f = u
        .translate(&m, DEVICE_SID, remappable(256, None))
        .fault()
        .unwrap();
    assert_eq!(f.reason, FaultReason::TableReadFailed);
    assert_eq!(f.index, Some(256));
}

#[test]
fn fault_0x24_reserved_irte_bits_and_posted_format() {
    let (u, m, _) = enabled_unit(true);
    let good = irte_build::remapped(0x40, 1, true, DeliveryMode::Fixed, false, false);
    m.put_irte(
        1,
        Irte {
            low: good.low | (1 << 13),
            high: 0,
        },
    );
    m.put_irte(
        2,
        Irte {
            low: good.low,
            high: 1 << (100 - 64),
        },
    );
    // Posted format: IM = 1.
    m.put_irte(
        3,
        Irte {
            low: good.low | (1 << 15),
            high: 0,
        },
    );
    // SVT = 3 and DLM = 3 are reserved encodings.
    m.put_irte(
        4,
        Irte {
            low: good.low,
            high: 3 << 18,
        },
    );
    m.put_irte(
        5,
        Irte {
            low: good.low | (3 << 5),
            high: 0,
        },
    );
    for index in 1..=5 {
        let f = u
            .translate(&m, DEVICE_SID, remappable(index, None))
            .fault()
            .unwrap();
        assert_eq!(f.reason, FaultReason::EntryReserved, "index {index}");
        assert!(!f.suppressed);
    }
}

#[test]
fn fault_0x25_compatibility_format() {
    let compat = MsiMessage::compat(3, false, 0x30, DeliveryMode::Fixed, false);
    // x2APIC mode: blocked, even with CFI set.
    let (mut u, m, _) = enabled_unit(true);
    let f = u.translate(&m, DEVICE_SID, compat).fault().unwrap();
    assert_eq!(f.reason, FaultReason::CompatibilityBlocked);
    assert_eq!(f.index, None);
    w32(&mut u, &m, GCMD_REG, GCMD_QIE | GCMD_IRE | GCMD_CFI);
    assert_eq!(
        u.translate(&m, DEVICE_SID, compat).fault().unwrap().reason,
        FaultReason::CompatibilityBlocked
    );
    // xAPIC mode: blocked with CFI clear, passed through with CFI set.
    let (mut u, m, _) = enabled_unit(false);
    assert_eq!(
        u.translate(&m, DEVICE_SID, compat).fault().unwrap().reason,
        FaultReason::CompatibilityBlocked
    );
    let e = w32(&mut u, &m, GCMD_REG, GCMD_QIE | GCMD_IRE | GCMD_CFI);
    assert!(e.ir_state_changed);
    assert_eq!(
        u.translate(&m, DEVICE_SID, compat),
        Translation::Passthrough(compat)
    );
}

#[test]
fn fault_0x26_source_id_each_sq_and_bus_range() {
    let (u, m, _) = enabled_unit(true);
    let base = irte_build::remapped(0x40, 1, true, DeliveryMode::Fixed, false, false);
    let sid = SourceId::new(1, 2, 0).0;
    for sq in 0..4u8 {
        m.put_irte(u32::from(sq), irte_build::with_requester_id(base, sid, sq));
    }
    m.put_irte(4, irte_build::with_bus_range(base, 2, 3));
    let check = |index: u16, source: SourceId| {
        u.translate(&m, source, remappable(index, None))
            .fault()
            .map(|f| f.reason)
    };
    let mismatch = Some(FaultReason::SourceIdMismatch);
    // SQ = 0: exact.
    assert_eq!(check(0, SourceId::new(1, 2, 0)), None);
    assert_eq!(check(0, SourceId::new(1, 2, 1)), mismatch);
    // SQ = 1: function bit 2 ignored.
    assert_eq!(check(1, SourceId::new(1, 2, 4)), None);
    assert_eq!(check(1, SourceId::new(1, 2, 2)), mismatch);
    // SQ = 2: function bits 2:1 ignored.
    assert_eq!(check(2, SourceId::new(1, 2, 6)), None);
    assert_eq!(check(2, SourceId::new(1, 2, 1)), mismatch);
    // SQ = 3: any function of the device.
    assert_eq!(check(3, SourceId::new(1, 2, 7)), None);
    assert_eq!(check(3, SourceId::new(1, 3, 0)), mismatch);
    assert_eq!(check(3, SourceId::new(2, 2, 0)), mismatch);
    // SVT = 2: buses 2..=3.
    assert_eq!(check(4, SourceId::new(1, 0, 0)), mismatch);
    assert_eq!(check(4, SourceId::new(2, 0, 0)), None);
    assert_eq!(check(4, SourceId::new(3, 31, 7)), None);
    assert_eq!(check(4, SourceId::new(4, 0, 0)), mismatch);
}

#[test]
fn fpd_suppresses_qualified_faults_only() {
    let (mut u, m, _) = enabled_unit(true);
    setup_fault_event(&mut u, &m);
    let base = irte_build::remapped(0x40, 1, true, DeliveryMode::Fixed, false, false);
    // Not present, but FPD.
    m.put_irte(
        1,
        Irte {
            low: 1 << 1,
            high: 0,
        },
    );
    // Source-id mismatch with FPD.
    m.put_irte(
        2,
        irte_build::with_fpd(irte_build::with_requester_id(base, 0x1234, 0)),
    );
    // Reserved bits with FPD.
    m.put_irte(
        3,
        irte_build::with_fpd(Irte {
            low: base.low | (1 << 24),
            high: 0,
        }),
    );
    for index in 1..=3 {
        let (t, e) = u.translate_and_record(&m, DEVICE_SID, remappable(index, None));
        let f = t.fault().unwrap();
        assert!(f.reason.is_qualified());
        assert!(f.suppressed, "index {index}");
        assert!(e.is_empty());
    }
    assert_eq!(r32(&u, FSTS_REG), 0);
    // Compatibility-format blocking is not qualified: recorded.
    let compat = MsiMessage::compat(3, false, 0x30, DeliveryMode::Fixed, false);
    let (_, e) = u.translate_and_record(&m, DEVICE_SID, compat);
    assert_eq!(e.interrupts, vec![fault_event_msg()]);
    assert_eq!(r32(&u, FSTS_REG), FSTS_PPF);
}

// ---- Fault recording -------------------------------------------------------------------

#[test]
fn fault_record_and_event_with_feuaddr() {
    let (mut u, m, _) = enabled_unit(true);
    setup_fault_event(&mut u, &m);
    let (t, e) = u.translate_and_record(&m, SourceId::new(0, 3, 0), remappable(0x1234, None));
    assert_eq!(t.fault().unwrap().reason, FaultReason::EntryNotPresent);
    assert_eq!(e.interrupts, vec![fault_event_msg()]);
    assert_eq!(e.interrupts[0].destination(), 0x0001_0203);
    assert!(e.iec.is_empty() && !e.ir_state_changed);
    // What Linux's dmar_fault reads.
    let fsts = r32(&u, FSTS_REG);
    assert_eq!(fsts, FSTS_PPF);
    let fri = u64::from((fsts >> FSTS_FRI_SHIFT) & 0xff);
    let rec = FRCD_REG + 16 * fri;
    let hi = r32(&u, rec + 12);
    assert_ne!(hi & (1 << 31), 0, "F");
    assert_eq!(hi & 0xff, 0x22, "fault reason");
    assert_eq!(r32(&u, rec + 8) & 0xffff, 0x0018, "source id");
    assert_eq!(r64(&u, rec) >> 48, 0x1234, "index in FI[63:48]");
    // Clear F with a dword write, then FSTS as Linux does.
    assert!(w32(&mut u, &m, rec + 12, 1 << 31).is_empty());
    w32(&mut u, &m, FSTS_REG, FSTS_PFO | FSTS_PPF | (1 << 7));
    assert_eq!(r32(&u, FSTS_REG), 0);
    assert_eq!(r64(&u, rec + 8), 0);
    // The next fault interrupts again (new interrupt condition) and lands in record 1.
    let (_, e) = u.translate_and_record(&m, DEVICE_SID, remappable(7, None));
    assert_eq!(e.interrupts.len(), 1);
    assert_eq!(r32(&u, FSTS_REG), FSTS_PPF | (1 << FSTS_FRI_SHIFT));
}

#[test]
fn fault_ring_wraps_and_overflows() {
    let mut u = VtdUnit::new(VtdConfig {
        fault_records: 4,
        ..VtdConfig::default()
    });
    let m = FakeMem::new();
    linux_enable(&mut u, &m, true, false);
    setup_fault_event(&mut u, &m);
    let fault = |index: u32| Fault {
        reason: FaultReason::EntryNotPresent,
        source_id: DEVICE_SID,
        index: Some(index),
        suppressed: false,
    };
    // Four faults fill the ring; only the first interrupts.
    let mut interrupts = 0;
    for i in 0..4 {
        interrupts += u.record_fault(&fault(i)).interrupts.len();
    }
    assert_eq!(interrupts, 1);
    assert_eq!(r32(&u, FSTS_REG), FSTS_PPF);
    // The fifth overflows: PFO, nothing recorded.
    assert!(u.record_fault(&fault(4)).is_empty());
    assert_eq!(r32(&u, FSTS_REG), FSTS_PPF | FSTS_PFO);
    for n in 0..4u64 {
        assert_eq!(r64(&u, FRCD_REG + 16 * n) >> 48, n);
    }
    // Service records 0 and 1; PFO still blocks recording.
    w32(&mut u, &m, FRCD_REG + 12, 1 << 31);
    w32(&mut u, &m, FRCD_REG + 16 + 12, 1 << 31);
    assert!(u.record_fault(&fault(5)).is_empty());
    assert_eq!(r32(&u, FRCD_REG + 12), 0);
    // Clear PFO: the next fault goes to record 0 (the ring wrapped).
    w32(&mut u, &m, FSTS_REG, FSTS_PFO);
    assert!(
        u.record_fault(&fault(6)).is_empty(),
        "PPF still set: no new condition"
    );
    assert_eq!(r64(&u, FRCD_REG) >> 48, 6);
    assert_eq!(r32(&u, FSTS_REG) & FSTS_PFO, 0);
    // Then record 1, then record 2 is still occupied: overflow again.
    u.record_fault(&fault(7));
    assert_eq!(r64(&u, FRCD_REG + 16) >> 48, 7);
    u.record_fault(&fault(8));
    assert_eq!(r32(&u, FSTS_REG) & FSTS_PFO, FSTS_PFO);
    assert_eq!(r64(&u, FRCD_REG + 32) >> 48, 2);
}

#[test]
fn fault_event_masking() {
    let (mut u, m, _) = enabled_unit(true);
    setup_fault_event(&mut u, &m);
    w32(&mut u, &m, FECTL_REG, EVENT_CTL_IM);
    let (_, e) = u.translate_and_record(&m, DEVICE_SID, remappable(1, None));
    assert!(e.interrupts.is_empty());
    assert_eq!(r32(&u, FECTL_REG), EVENT_CTL_IM | EVENT_CTL_IP);
    // Unmask: the held message goes out, IP clears.
    let e = w32(&mut u, &m, FECTL_REG, 0);
    assert_eq!(e.interrupts, vec![fault_event_msg()]);
    assert_eq!(r32(&u, FECTL_REG), 0);
    // Masked again, a new condition, then software services it while masked: IP clears
    // and unmasking sends nothing.
    w32(&mut u, &m, FRCD_REG + 12, 1 << 31);
    w32(&mut u, &m, FECTL_REG, EVENT_CTL_IM);
    u.translate_and_record(&m, DEVICE_SID, remappable(2, None));
    assert_eq!(r32(&u, FECTL_REG), EVENT_CTL_IM | EVENT_CTL_IP);
    let fri = u64::from((r32(&u, FSTS_REG) >> FSTS_FRI_SHIFT) & 0xff);
    w32(&mut u, &m, FRCD_REG + 16 * fri + 12, 1 << 31);
    assert_eq!(r32(&u, FECTL_REG), EVENT_CTL_IM);
    assert!(w32(&mut u, &m, FECTL_REG, 0).is_empty());
}

/// Found by the `vtd_mmio` fuzzer (minimized): the guest unmasks the fault event without
/// programming an interrupt address (FEADDR 0x1c, garbage FEUADDR), then causes a fault.
/// The unit used to return `{address_lo: 0x1c, ...}` for `KVM_SIGNAL_MSI`, which KVM
/// delivers as an interrupt; a message outside 0xFEEx_xxxx is a memory write, not an
/// interrupt, so nothing is sent (and nothing is held: IP stays clear).
#[test]
fn fault_event_outside_the_interrupt_window_is_dropped() {
    let (mut u, m, _) = enabled_unit(true);
    w32(&mut u, &m, FEDATA_REG, 3);
    w32(&mut u, &m, FEADDR_REG, 0x1c);
    w32(&mut u, &m, FEUADDR_REG, 0x7777_7700);
    assert!(w32(&mut u, &m, FECTL_REG, 0).is_empty());
    let (t, e) = u.translate_and_record(&m, DEVICE_SID, remappable(1, None));
    assert!(t.fault().is_some());
    assert!(e.interrupts.is_empty(), "{:x?}", e.interrupts);
    assert_eq!(r32(&u, FECTL_REG), 0);
    assert_ne!(
        r32(&u, FSTS_REG) & FSTS_PPF,
        0,
        "the fault is still recorded"
    );
    // Held while masked, then unmasked with the bad address: still nothing.
    w32(&mut u, &m, FRCD_REG + 12, 1 << 31);
    w32(&mut u, &m, FECTL_REG, EVENT_CTL_IM);
    u.translate_and_record(&m, DEVICE_SID, remappable(2, None));
    assert_eq!(r32(&u, FECTL_REG), EVENT_CTL_IM | EVENT_CTL_IP);
    assert!(w32(&mut u, &m, FECTL_REG, 0).is_empty());
    // The same for the invalidation completion event.
    w32(&mut u, &m, IEADDR_REG, 0);
    assert!(w32(&mut u, &m, IECTL_REG, 0).is_empty());
    let head = (r64(&u, IQH_REG) >> 4) as u32;
    m.put_desc(head, desc::wait(true, None, false));
    let e = w32(&mut u, &m, IQT_REG, (head + 1) << 4);
    assert_eq!(r32(&u, ICS_REG), ICS_IWC);
    assert!(e.interrupts.is_empty(), "{:x?}", e.interrupts);
}

// ---- Queued invalidation ---------------------------------------------------------------

#[test]
fn iec_index_selective_ranges() {
    let (mut u, m, head) = enabled_unit(true);
    let (e, head) = submit(&mut u, &m, head, &[desc::iec_index(0x45, 0)]);
    assert_eq!(
        e.iec,
        vec![IecInvalidation::Range {
            start: 0x45,
            count: 1
        }]
    );
    assert!(e.invalidates(0x45) && !e.invalidates(0x44) && !e.invalidates(0x46));
    assert!(!e.invalidates_all());
    // Linux's clear_entries: an aligned block of 2^mask.
    let (e, head) = submit(
        &mut u,
        &m,
        head,
        &[desc::iec_index(0x47, 3), desc::iec_index(0x100, 4)],
    );
    assert_eq!(
        e.iec,
        vec![
            IecInvalidation::Range {
                start: 0x40,
                count: 8
            },
            IecInvalidation::Range {
                start: 0x100,
                count: 16
            },
        ]
    );
    assert!(e.invalidates(0x47) && e.invalidates(0x40) && !e.invalidates(0x48));
    assert!(e.invalidates(0x10f) && !e.invalidates(0x110));
    let (e, _) = submit(&mut u, &m, head, &[desc::iec_global()]);
    assert!(e.invalidates_all());
}

#[test]
fn iec_changes_reach_translation_only_after_the_vmm_retranslates() {
    // The model reads IRTEs at translation time; the VMM calls translate for the routes
    // an invalidation covers. This checks the contract end to end for one route.
    let (mut u, m, head) = enabled_unit(true);
    m.put_irte(
        0x10,
        irte_build::remapped(0x40, 1, true, DeliveryMode::Fixed, false, false),
    );
    let route = u.translate(&m, DEVICE_SID, remappable(0x10, None));
    assert_eq!(route.message().unwrap().vector(), 0x40);
    m.put_irte(
        0x10,
        irte_build::remapped(0x41, 2, true, DeliveryMode::Fixed, false, false),
    );
    let (e, _) = submit(&mut u, &m, head, &[desc::iec_index(0x10, 0)]);
    assert!(e.invalidates(route.irte_index().unwrap()));
    let route = u.translate(&m, DEVICE_SID, remappable(0x10, None));
    assert_eq!(route.message().unwrap().vector(), 0x41);
    assert_eq!(route.message().unwrap().destination(), 2);
}

#[test]
fn wait_with_interrupt_and_status_write() {
    let (mut u, m, head) = enabled_unit(true);
    w32(&mut u, &m, IEDATA_REG, 0x51);
    w32(&mut u, &m, IEADDR_REG, 0xfee0_1000);
    w32(&mut u, &m, IEUADDR_REG, 0x0002_0000);
    w32(&mut u, &m, IECTL_REG, 0);
    m.put_desc(
        head,
        desc::wait(true, Some((STATUS_ADDR + 4, 0xabcd)), true),
    );
    let e = w32(&mut u, &m, IQT_REG, (head + 1) << 4);
    assert_eq!(m.get_u32(STATUS_ADDR + 4), 0xabcd);
    assert_eq!(r32(&u, ICS_REG), ICS_IWC);
    let expected = MsiMessage {
        address_lo: 0xfee0_1000,
        address_hi: 0x0002_0000,
        data: 0x51,
    };
    assert_eq!(e.interrupts, vec![expected]);
    assert_eq!(expected.destination(), 0x0002_0001);
    // IWC still set: another IF wait is no new condition.
    m.put_desc(head + 1, desc::wait(true, None, false));
    let e = w32(&mut u, &m, IQT_REG, (head + 2) << 4);
    assert!(e.interrupts.is_empty());
    // Clear IWC, mask, complete again: held (IP); unmask delivers.
    w32(&mut u, &m, ICS_REG, ICS_IWC);
    assert_eq!(r32(&u, ICS_REG), 0);
    w32(&mut u, &m, IECTL_REG, EVENT_CTL_IM);
    m.put_desc(head + 2, desc::wait(true, None, false));
    let e = w32(&mut u, &m, IQT_REG, (head + 3) << 4);
    assert!(e.interrupts.is_empty());
    assert_eq!(r32(&u, IECTL_REG), EVENT_CTL_IM | EVENT_CTL_IP);
    assert_eq!(w32(&mut u, &m, IECTL_REG, 0).interrupts, vec![expected]);
    assert_eq!(r32(&u, IECTL_REG), 0);
    // Held again, then serviced by clearing IWC: IP drops, nothing sent on unmask.
    w32(&mut u, &m, ICS_REG, ICS_IWC);
    w32(&mut u, &m, IECTL_REG, EVENT_CTL_IM);
    m.put_desc(head + 3, desc::wait(true, None, false));
    w32(&mut u, &m, IQT_REG, (head + 4) << 4);
    assert_eq!(r32(&u, IECTL_REG), EVENT_CTL_IM | EVENT_CTL_IP);
    w32(&mut u, &m, ICS_REG, ICS_IWC);
    assert_eq!(r32(&u, IECTL_REG), EVENT_CTL_IM);
    assert!(w32(&mut u, &m, IECTL_REG, 0).is_empty());
}

#[test]
fn context_cache_and_iotlb_descriptors_are_accepted() {
    let (mut u, m, head) = enabled_unit(true);
    let (e, _) = submit(
        &mut u,
        &m,
        head,
        &[desc::context_cache_global(), desc::iotlb_global()],
    );
    assert!(e.interrupts.is_empty() && e.iec.is_empty() && !e.ir_state_changed);
    assert_eq!(
        e.dma,
        vec![
            DmaInvalidation::Context(ContextInvalidation::Global),
            DmaInvalidation::Iotlb(IotlbInvalidation::Global)
        ]
    );
    assert_eq!(m.get_u32(STATUS_ADDR), QI_DONE);
    assert_eq!(r32(&u, FSTS_REG), 0);
}

#[test]
fn unknown_descriptor_stops_queue_with_iqe() {
    let (mut u, m, head) = enabled_unit(true);
    setup_fault_event(&mut u, &m);
    // A device-TLB descriptor (type 3; no ECAP.DT), then a global IEC and a wait.
    let bad = (3u64, 0u64);
    let (e, tail) = submit(&mut u, &m, head, &[bad, desc::iec_global()]);
    assert_eq!(r32(&u, FSTS_REG), FSTS_IQE);
    assert_eq!(e.interrupts, vec![fault_event_msg()]);
    assert!(e.iec.is_empty(), "nothing after the bad descriptor ran");
    assert_eq!(m.get_u32(STATUS_ADDR), 0);
    assert_eq!(
        r64(&u, IQH_REG),
        u64::from(head) << 4,
        "head on the bad descriptor"
    );
    // Further tail writes fetch nothing while IQE is set.
    assert!(w32(&mut u, &m, IQT_REG, tail << 4).is_empty());
    assert_eq!(r64(&u, IQH_REG), u64::from(head) << 4);
    // Linux's recovery: overwrite the bad slot, clear IQE; fetching resumes.
    m.put_desc(head, desc::wait(false, None, false));
    let e = w32(&mut u, &m, FSTS_REG, FSTS_IQE);
    assert_eq!(e.iec, vec![IecInvalidation::Global]);
    assert_eq!(m.get_u32(STATUS_ADDR), QI_DONE);
    assert_eq!(r64(&u, IQH_REG), u64::from(tail) << 4);
    assert_eq!(r32(&u, FSTS_REG), 0);
}

#[test]
fn reserved_bits_in_iec_descriptor_are_an_error() {
    let (mut u, m, head) = enabled_unit(true);
    let (qw0, qw1) = desc::iec_index(4, 0);
    submit(&mut u, &m, head, &[(qw0 | (1 << 60), qw1)]);
    assert_eq!(r32(&u, FSTS_REG) & FSTS_IQE, FSTS_IQE);
}

#[test]
fn tail_beyond_queue_is_an_error() {
    let (mut u, m, head) = enabled_unit(true);
    setup_fault_event(&mut u, &m);
    // QS = 0: 256 descriptors; index 256 is outside.
    let e = w32(&mut u, &m, IQT_REG, 256 << 4);
    assert_eq!(r32(&u, FSTS_REG), FSTS_IQE);
    assert_eq!(e.interrupts.len(), 1);
    assert_eq!(r64(&u, IQH_REG), u64::from(head) << 4);
    // Fix the tail, clear IQE: back to normal.
    w32(&mut u, &m, IQT_REG, head << 4);
    assert!(w32(&mut u, &m, FSTS_REG, FSTS_IQE).is_empty());
    assert_eq!(r32(&u, FSTS_REG), 0);
}

#[test]
fn queue_wraps_around() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    w64(&mut u, &m, IQA_REG, QUEUE_BASE);
    w32(&mut u, &m, GCMD_REG, GCMD_QIE);
    // Walk the head to 254 with waits.
    for slot in 0..254 {
        m.put_desc(slot, desc::wait(false, None, false));
    }
    w32(&mut u, &m, IQT_REG, 254 << 4);
    assert_eq!(r64(&u, IQH_REG), 254 << 4);
    // Slots 254, 255, 0, 1: tail at 2.
    m.put_desc(254, desc::iec_index(1, 0));
    m.put_desc(255, desc::iec_index(2, 0));
    m.put_desc(0, desc::iec_index(3, 0));
    m.put_desc(1, desc::wait(false, Some((STATUS_ADDR, 7)), false));
    let e = w32(&mut u, &m, IQT_REG, 2 << 4);
    assert_eq!(
        e.iec,
        vec![
            IecInvalidation::Range { start: 1, count: 1 },
            IecInvalidation::Range { start: 2, count: 1 },
            IecInvalidation::Range { start: 3, count: 1 },
        ]
    );
    assert_eq!(m.get_u32(STATUS_ADDR), 7);
    assert_eq!(r64(&u, IQH_REG), 2 << 4);
}

#[test]
fn larger_queue_size() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    // QS = 1: two pages, 512 descriptors.
    w64(&mut u, &m, IQA_REG, QUEUE_BASE | 1);
    w32(&mut u, &m, GCMD_REG, GCMD_QIE);
    for slot in 0..300 {
        m.put_desc(slot, desc::iec_index(slot as u16, 0));
    }
    let e = w32(&mut u, &m, IQT_REG, 300 << 4);
    assert_eq!(e.iec.len(), 300);
    assert_eq!(r32(&u, FSTS_REG), 0);
}

#[test]
fn wide_descriptors_are_rejected() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    w64(&mut u, &m, IQA_REG, QUEUE_BASE | IQA_DW);
    assert_eq!(r64(&u, IQA_REG), QUEUE_BASE | IQA_DW);
    w32(&mut u, &m, GCMD_REG, GCMD_QIE);
    m.put_desc(0, desc::iec_global());
    m.put_desc(1, desc::iec_global());
    let e = w32(&mut u, &m, IQT_REG, 2 << 4);
    assert!(e.iec.is_empty());
    assert_eq!(r32(&u, FSTS_REG), FSTS_IQE);
    assert_eq!(r64(&u, IQH_REG), 0);
}

#[test]
fn iqa_write_while_enabled_is_ignored() {
    let (mut u, m, head) = enabled_unit(true);
    assert_ne!(head, 0);
    w64(&mut u, &m, IQA_REG, 0x5_0000 | 2);
    assert_eq!(r64(&u, IQA_REG), QUEUE_BASE);
    assert_eq!(r64(&u, IQH_REG), u64::from(head) << 4, "head untouched");
    // Disable QI (Linux's dmar_disable_qi): head resets; IQA is writable again and
    // resets the tail too.
    w32(&mut u, &m, GCMD_REG, GCMD_IRE);
    assert_eq!(r32(&u, GSTS_REG) & GSTS_QIES, 0);
    assert_eq!(r64(&u, IQH_REG), 0);
    w64(&mut u, &m, IQA_REG, 0x5_0000 | 2);
    assert_eq!(r64(&u, IQA_REG), 0x5_0000 | 2);
    assert_eq!(r64(&u, IQT_REG), 0);
}

#[test]
fn tail_writes_while_disabled_do_not_fetch() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    w64(&mut u, &m, IQA_REG, QUEUE_BASE);
    m.put_desc(0, desc::iec_global());
    assert!(w32(&mut u, &m, IQT_REG, 1 << 4).is_empty());
    assert_eq!(r64(&u, IQH_REG), 0);
    // Enabling fetches what is already queued.
    let e = w32(&mut u, &m, GCMD_REG, GCMD_QIE);
    assert_eq!(e.iec, vec![IecInvalidation::Global]);
    assert_eq!(r64(&u, IQH_REG), 1 << 4);
}

#[test]
fn descriptor_fetch_and_status_write_failures() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    // Queue outside guest RAM.
    w64(&mut u, &m, IQA_REG, 0x1_0000_0000);
    w32(&mut u, &m, GCMD_REG, GCMD_QIE);
    w32(&mut u, &m, IQT_REG, 1 << 4);
    assert_eq!(r32(&u, FSTS_REG), FSTS_IQE);
    // Status write outside guest RAM.
    let (mut u, m, head) = enabled_unit(true);
    m.put_desc(head, desc::wait(false, Some((0x1_0000_0000, 1)), false));
    m.put_desc(head + 1, desc::iec_global());
    let e = w32(&mut u, &m, IQT_REG, (head + 2) << 4);
    assert_eq!(r32(&u, FSTS_REG), FSTS_IQE);
    assert!(e.iec.is_empty());
    assert_eq!(r64(&u, IQH_REG), u64::from(head) << 4);
}

// ---- MMIO access rules -----------------------------------------------------------------

#[test]
fn odd_sizes_and_alignments() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    let mut b1 = [0u8; 1];
    let mut b2 = [0u8; 2];
    let mut b3 = [0u8; 3];
    let mut b4 = [0u8; 4];
    let mut b8 = [0u8; 8];
    let mut b16 = [0u8; 16];
    u.mmio_read(VER_REG, &mut b1);
    assert_eq!(b1, [0xff]);
    u.mmio_read(VER_REG, &mut b2);
    assert_eq!(b2, [0xff; 2]);
    u.mmio_read(VER_REG, &mut b3);
    assert_eq!(b3, [0xff; 3]);
    u.mmio_read(CAP_REG + 2, &mut b4);
    assert_eq!(b4, [0xff; 4]);
    u.mmio_read(GSTS_REG, &mut b8);
    assert_eq!(b8, [0xff; 8], "8-byte access must be 8-aligned");
    u.mmio_read(CAP_REG, &mut b16);
    assert_eq!(b16, [0xff; 16]);
    u.mmio_read(VTD_MMIO_SIZE, &mut b4);
    assert_eq!(b4, [0xff; 4]);
    u.mmio_read(VTD_MMIO_SIZE - 4, &mut b8);
    assert_eq!(b8, [0xff; 8]);
    u.mmio_read(u64::MAX - 3, &mut b4);
    assert_eq!(b4, [0xff; 4]);
    let mut empty: [u8; 0] = [];
    u.mmio_read(0, &mut empty);
    // Writes of the wrong size or alignment do nothing.
    assert!(u
        .mmio_write(&m, GCMD_REG, &GCMD_IRE.to_le_bytes()[2..])
        .is_empty());
    assert!(u.mmio_write(&m, GCMD_REG + 3, &[0x02]).is_empty());
    assert!(u
        .mmio_write(&m, GCMD_REG + 2, &0x0200u16.to_le_bytes())
        .is_empty());
    assert!(u
        .mmio_write(&m, GCMD_REG + 1, &GCMD_IRE.to_le_bytes())
        .is_empty());
    assert!(u.mmio_write(&m, u64::MAX, &[0; 8]).is_empty());
    assert!(u.mmio_write(&m, 0, &[]).is_empty());
    assert!(u.mmio_write(&m, 0, &[0xff; 16]).is_empty());
    assert_eq!(r32(&u, GSTS_REG), 0);
}

#[test]
fn qword_accesses_span_dword_pairs() {
    let mut u = VtdUnit::new(VtdConfig::default());
    let m = FakeMem::new();
    // GCMD (low) + GSTS (high) in one 8-byte write: GCMD acts, GSTS is read-only.
    let e = w64(
        &mut u,
        &m,
        GCMD_REG,
        u64::from(GCMD_IRE) | (0xffff_ffff << 32),
    );
    assert!(e.ir_state_changed);
    assert_eq!(r64(&u, GCMD_REG), u64::from(GSTS_IRES) << 32);
    // FEDATA/FECTL and FEADDR/FEUADDR as qwords.
    w64(&mut u, &m, FEADDR_REG, 0x0000_0300_fee0_0000);
    assert_eq!(r32(&u, FEADDR_REG), 0xfee0_0000);
    assert_eq!(r32(&u, FEUADDR_REG), 0x300);
    w64(&mut u, &m, FECTL_REG, 0x0000_0041_0000_0000);
    assert_eq!(r64(&u, FECTL_REG), 0x0000_0041_0000_0000);
    // 64-bit registers in two dword writes, high then low.
    w32(&mut u, &m, IRTA_REG + 4, 0x1);
    w32(&mut u, &m, IRTA_REG, 0x2_0000 | 0xf);
    assert_eq!(r64(&u, IRTA_REG), 0x1_0002_000f);
    assert_eq!(r32(&u, IRTA_REG + 4), 1);
}

#[test]
fn reset_restores_everything() {
    let (mut u, m, _) = enabled_unit(true);
    setup_fault_event(&mut u, &m);
    u.translate_and_record(&m, DEVICE_SID, remappable(1, None));
    u.reset();
    assert_eq!(r32(&u, GSTS_REG), 0);
    assert_eq!(r32(&u, FSTS_REG), 0);
    assert_eq!(r32(&u, FECTL_REG), EVENT_CTL_IM);
    assert_eq!(r64(&u, IQA_REG), 0);
    assert_eq!(u.ir_table(), None);
    assert_eq!(u.config(), VtdConfig::default());
}

#[test]
fn effects_helpers() {
    let mut a = Effects::default();
    assert!(a.is_empty());
    assert!(!a.invalidates(0));
    a.merge(Effects {
        interrupts: vec![fault_event_msg()],
        iec: vec![IecInvalidation::Range { start: 4, count: 4 }],
        ..Effects::default()
    });
    assert!(!a.is_empty());
    assert!(a.invalidates(7) && !a.invalidates(8));
    assert!(!a.invalidates_all());
    a.merge(Effects {
        ir_state_changed: true,
        ..Effects::default()
    });
    assert!(a.invalidates(8) && a.invalidates_all());
    assert_eq!(a.interrupts.len(), 1);
}

#[test]
fn guest_memory_writes_only_where_asked() {
    // Translation never writes guest memory.
    let (u, m, _) = enabled_unit(true);
    let before = *m.writes.borrow();
    m.put_irte(
        1,
        irte_build::remapped(0x40, 1, true, DeliveryMode::Fixed, false, false),
    );
    let after_put = *m.writes.borrow();
    assert_eq!(after_put, before + 1);
    u.translate(&m, DEVICE_SID, remappable(1, None));
    u.translate(&m, DEVICE_SID, remappable(2, None));
    assert_eq!(*m.writes.borrow(), after_put);
}

#[test]
fn iqt_qword_write_runs_once_and_high_half_alone_does_not_fetch() {
    let (mut u, m, head) = enabled_unit(true);
    m.put_desc(head, desc::iec_index(9, 0));
    // The high dword holds only reserved bits: writing it fetches nothing.
    assert!(w32(&mut u, &m, IQT_REG + 4, 0xffff_ffff).is_empty());
    assert_eq!(r64(&u, IQH_REG), u64::from(head) << 4);
    let e = w64(
        &mut u,
        &m,
        IQT_REG,
        0xffff_ffff_0000_0000 | u64::from((head + 1) << 4),
    );
    assert_eq!(e.iec, vec![IecInvalidation::Range { start: 9, count: 1 }]);
    assert_eq!(r64(&u, IQT_REG), u64::from((head + 1) << 4));
    assert_eq!(r64(&u, IQH_REG), u64::from((head + 1) << 4));
}

mod dma;
mod posting;
