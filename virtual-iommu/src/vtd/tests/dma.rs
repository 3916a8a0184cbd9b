//! DMA remapping driven through the registers: TE and SRTP, translations and their
//! faults recorded in the shared fault log, and context-cache and IOTLB invalidations
//! through the queue and through CCMD/IOTLB.

use super::*;
use crate::vtd::dma::context::{build as ctx, AW_48};
use crate::vtd::dma::walk::build as sl;

const ROOT_TABLE: u64 = 0xc_0000;
const CONTEXT_TABLE: u64 = 0xc_1000;
const PML4: u64 = 0xc_2000;
const PDPT: u64 = 0xc_3000;
const PD: u64 = 0xc_4000;
const PT: u64 = 0xc_5000;
const IOVA: u64 = 0x1234_5000;
const DOMAIN: u16 = 3;

fn put64(m: &FakeMem, gpa: u64, v: u64) {
    m.put(gpa, &v.to_le_bytes());
}

/// Maps IOVA to `gpa` (4 KiB, `write` allowed or not) for DEVICE_SID in DOMAIN.
fn map_page(m: &FakeMem, gpa: u64, write: bool) {
    let bus = u64::from(DEVICE_SID.0 >> 8);
    let devfn = u64::from(DEVICE_SID.0 & 0xff);
    let (rlo, rhi) = ctx::root(CONTEXT_TABLE);
    put64(m, ROOT_TABLE + 16 * bus, rlo);
    put64(m, ROOT_TABLE + 16 * bus + 8, rhi);
    let (clo, chi) = ctx::translated(PML4, AW_48, DOMAIN, false);
    put64(m, CONTEXT_TABLE + 16 * devfn, clo);
    put64(m, CONTEXT_TABLE + 16 * devfn + 8, chi);
    put64(
        m,
        PML4 + 8 * sl::index(IOVA, 4),
        sl::table(PDPT, true, true),
    );
    put64(m, PDPT + 8 * sl::index(IOVA, 3), sl::table(PD, true, true));
    put64(m, PD + 8 * sl::index(IOVA, 2), sl::table(PT, true, true));
    put64(m, PT + 8 * sl::index(IOVA, 1), sl::page(gpa, true, write));
}

/// A unit with remapping and QI enabled (Linux's order) and DMA translation on through
/// ROOT_TABLE, the fault event unmasked.
fn translating_unit() -> (VtdUnit, FakeMem, u32) {
    let (mut u, m, head) = enabled_unit(true);
    setup_fault_event(&mut u, &m);
    w64(&mut u, &m, RTADDR_REG, ROOT_TABLE);
    let gcmd = GCMD_QIE | GCMD_IRE;
    assert!(w32(&mut u, &m, GCMD_REG, gcmd | GCMD_SRTP).dma_state_changed);
    let (e, head) = submit(
        &mut u,
        &m,
        head,
        &[desc::context_cache_global(), desc::iotlb_global()],
    );
    assert_eq!(e.dma.len(), 2);
    assert!(w32(&mut u, &m, GCMD_REG, gcmd | GCMD_TE).dma_state_changed);
    assert!(u.translation_enabled());
    assert!(u.remapping_enabled(), "IR untouched");
    (u, m, head)
}

fn req(write: bool) -> DmaRequest {
    DmaRequest {
        source: DEVICE_SID,
        iova: IOVA + 0x10,
        write,
    }
}

#[test]
fn translation_follows_te() {
    let (mut u, m, _) = translating_unit();
    map_page(&m, 0x7000, true);
    let t = u.translate_dma(&m, req(true)).unwrap();
    assert_eq!(t.gpa_of(IOVA + 0x10), 0x7010);
    assert_eq!(
        u.dma_view(&m, DEVICE_SID),
        DeviceView::Translated {
            domain: DOMAIN,
            table: crate::vtd::dma::walk::Table {
                root: PML4,
                levels: crate::vtd::dma::walk::Levels::Four,
                superpages: crate::vtd::dma::walk::Superpages {
                    two_mib: true,
                    one_gib: true
                }
            }
        }
    );
    // TE off: identity, whatever the tables say.
    w32(&mut u, &m, GCMD_REG, GCMD_QIE | GCMD_IRE);
    let t = u.translate_dma(&m, req(true)).unwrap();
    assert_eq!(t.gpa_of(IOVA + 0x10), IOVA + 0x10);
    assert_eq!(u.dma_view(&m, DEVICE_SID), DeviceView::Untranslated);
}

#[test]
fn dma_faults_share_the_fault_log_with_interrupt_faults() {
    let (mut u, m, _) = translating_unit();
    map_page(&m, 0x7000, false);
    // A write to the read-only page: recorded with the page address, SID, reason 5, T = 0.
    let (r, e) = u.dma_access(&m, req(true));
    assert_eq!(r.unwrap_err().reason, DmaFaultReason::WriteDenied);
    assert_eq!(e.interrupts, vec![fault_event_msg()]);
    assert_eq!(r64(&u, FRCD_REG), IOVA);
    assert_eq!(
        r64(&u, FRCD_REG + 8),
        0x8000_0005_0000_0000 | u64::from(DEVICE_SID.0)
    );
    assert_eq!(r32(&u, FSTS_REG), FSTS_PPF);
    // The read is fine.
    let (r, e) = u.dma_access(&m, req(false));
    assert!(r.is_ok() && e.is_empty());
    // An interrupt-remapping fault goes to the next record; no second event.
    let (t, e) = u.translate_and_record(&m, DEVICE_SID, remappable(0x10, None));
    assert!(t.fault().is_some());
    assert!(e.interrupts.is_empty());
    assert_eq!(r32(&u, FRCD_REG + 16 + 12) & 0xff, 0x22);
    // A read beyond the width: reason 4, T = 1.
    let (r, _) = u.dma_access(
        &m,
        DmaRequest {
            source: DEVICE_SID,
            iova: 1 << 50,
            write: false,
        },
    );
    assert_eq!(r.unwrap_err().reason, DmaFaultReason::AddressBeyondWidth);
    assert_eq!(r64(&u, FRCD_REG + 32), 1 << 50);
    assert_eq!(r64(&u, FRCD_REG + 40) >> 32, 0xc000_0004);
}

#[test]
fn queued_page_selective_invalidation_refreshes_the_iotlb() {
    let (mut u, m, head) = translating_unit();
    map_page(&m, 0x7000, true);
    assert_eq!(u.translate_dma(&m, req(true)).unwrap().gpa, 0x7000);
    map_page(&m, 0x8000, true);
    assert_eq!(
        u.translate_dma(&m, req(true)).unwrap().gpa,
        0x7000,
        "cached"
    );
    let (e, head) = submit(
        &mut u,
        &m,
        head,
        &[desc::iotlb_pages(DOMAIN, IOVA, 0, true)],
    );
    assert_eq!(
        e.dma,
        vec![DmaInvalidation::Iotlb(IotlbInvalidation::pages(
            DOMAIN, IOVA, 0, true
        ))]
    );
    assert_eq!(m.get_u32(STATUS_ADDR), QI_DONE);
    assert_eq!(u.translate_dma(&m, req(true)).unwrap().gpa, 0x8000);
    // An address mask above MAMV stops the queue.
    let (e, _) = submit(&mut u, &m, head, &[desc::iotlb_pages(DOMAIN, 0, 19, false)]);
    assert_eq!(r32(&u, FSTS_REG) & FSTS_IQE, FSTS_IQE);
    assert!(e.dma.is_empty());
    assert_eq!(
        m.get_u32(STATUS_ADDR),
        0,
        "the wait after it is not reached"
    );
}

#[test]
fn register_invalidations_report_their_granularity() {
    let (mut u, m, _) = translating_unit();
    map_page(&m, 0x7000, true);
    assert!(u.translate_dma(&m, req(false)).is_ok());
    map_page(&m, 0x9000, true);
    // Page-selective through IVA + IOTLB: IAIG = 3, IVT clears.
    w64(&mut u, &m, IVA_REG, IOVA | IVA_IH);
    let e = w64(
        &mut u,
        &m,
        IOTLB_REG,
        IOTLB_IVT | (3 << IOTLB_IIRG_SHIFT) | (u64::from(DOMAIN) << IOTLB_DID_SHIFT),
    );
    assert_eq!(
        e.dma,
        vec![DmaInvalidation::Iotlb(IotlbInvalidation::pages(
            DOMAIN, IOVA, 0, true
        ))]
    );
    let reg = r64(&u, IOTLB_REG);
    assert_eq!(reg & IOTLB_IVT, 0);
    assert_eq!((reg >> IOTLB_IAIG_SHIFT) & 3, 3);
    assert_eq!(u.translate_dma(&m, req(false)).unwrap().gpa, 0x9000);
    // AM above MAMV: not performed (IAIG = 0).
    w64(&mut u, &m, IVA_REG, 19);
    let e = w64(&mut u, &m, IOTLB_REG, IOTLB_IVT | (3 << IOTLB_IIRG_SHIFT));
    assert!(e.dma.is_empty());
    assert_eq!((r64(&u, IOTLB_REG) >> IOTLB_IAIG_SHIFT) & 3, 0);
    // Granularity 0: not performed.
    let e = w64(&mut u, &m, IOTLB_REG, IOTLB_IVT);
    assert!(e.dma.is_empty());
    assert_eq!(r64(&u, IOTLB_REG) & IOTLB_IVT, 0);
    // Context cache: device-selective with a function mask, CAIG = 3.
    let ccmd = CCMD_ICC
        | (3 << CCMD_CIRG_SHIFT)
        | (2 << CCMD_FM_SHIFT)
        | (u64::from(DEVICE_SID.0) << CCMD_SID_SHIFT)
        | u64::from(DOMAIN);
    let e = w64(&mut u, &m, CCMD_REG, ccmd);
    assert_eq!(
        e.dma,
        vec![DmaInvalidation::Context(ContextInvalidation::Device {
            source: DEVICE_SID,
            function_mask: 2
        })]
    );
    let reg = r64(&u, CCMD_REG);
    assert_eq!(reg & CCMD_ICC, 0);
    assert_eq!((reg >> CCMD_CAIG_SHIFT) & 3, 3);
    let e = w64(&mut u, &m, CCMD_REG, CCMD_ICC | (2 << CCMD_CIRG_SHIFT) | 7);
    assert_eq!(
        e.dma,
        vec![DmaInvalidation::Context(ContextInvalidation::Domain(7))]
    );
    let e = w64(&mut u, &m, CCMD_REG, CCMD_ICC);
    assert!(e.dma.is_empty());
    assert_eq!((r64(&u, CCMD_REG) >> CCMD_CAIG_SHIFT) & 3, 0);
}

#[test]
fn fpd_context_records_nothing() {
    let (mut u, m, _) = translating_unit();
    map_page(&m, 0x7000, false);
    let devfn = u64::from(DEVICE_SID.0 & 0xff);
    let (clo, chi) = ctx::translated(PML4, AW_48, DOMAIN, true);
    put64(&m, CONTEXT_TABLE + 16 * devfn, clo);
    put64(&m, CONTEXT_TABLE + 16 * devfn + 8, chi);
    let (r, e) = u.dma_access(&m, req(true));
    assert!(r.unwrap_err().suppressed);
    assert!(e.is_empty());
    assert_eq!(r32(&u, FSTS_REG), 0);
}
