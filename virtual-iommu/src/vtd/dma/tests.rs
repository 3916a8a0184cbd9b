//! Tests of the DMA-remapping pipeline against a fake guest memory: contexts, walks of
//! every depth and page size, permissions, every fault reason, the caches and their
//! invalidation, and enumeration for shadowing.

use std::cell::RefCell;

use super::context::build as ctx;
use super::context::{AW_39, AW_48};
use super::inval::{ContextInvalidation, IotlbInvalidation};
use super::walk::build as sl;
use super::walk::{leaves, Levels, PAGE_SIZE};
use super::*;
use crate::memory::MemError;
use crate::vtd::regs::{SAGAW_39, SAGAW_48};

const RAM: usize = 0x80_0000;
const ROOT_TABLE: u64 = 0x1000;
const CONTEXT_TABLE: u64 = 0x2000;
/// Page-table pages are handed out from here.
const TABLE_POOL: u64 = 0x10_0000;
const DEV: SourceId = SourceId(0x0010);

struct Mem {
    ram: RefCell<Vec<u8>>,
    next_table: RefCell<u64>,
}

impl GuestMemoryReader for Mem {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = Self::range(gpa, buf.len())?;
        buf.copy_from_slice(&self.ram.borrow()[r]);
        Ok(())
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError> {
        let r = Self::range(gpa, buf.len())?;
        self.ram.borrow_mut()[r].copy_from_slice(buf);
        Ok(())
    }
}

impl Mem {
    fn new() -> Self {
        Mem {
            ram: RefCell::new(vec![0; RAM]),
            next_table: RefCell::new(TABLE_POOL),
        }
    }

    fn range(gpa: u64, len: usize) -> Result<std::ops::Range<usize>, MemError> {
        let err = MemError::Unmapped { gpa, len };
        let start = usize::try_from(gpa).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > RAM {
            return Err(err);
        }
        Ok(start..end)
    }

    fn put64(&self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes()).unwrap();
    }

    fn get64(&self, gpa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b).unwrap();
        u64::from_le_bytes(b)
    }

    fn put128(&self, gpa: u64, (lo, hi): (u64, u64)) {
        self.put64(gpa, lo);
        self.put64(gpa + 8, hi);
    }

    fn new_table(&self) -> u64 {
        let mut n = self.next_table.borrow_mut();
        let t = *n;
        *n += PAGE_SIZE;
        t
    }

    /// Points `source`'s context at `context`.
    fn set_context(&self, source: SourceId, context: (u64, u64)) {
        let bus = u64::from(source.0 >> 8);
        self.put128(ROOT_TABLE + 16 * bus, ctx::root(CONTEXT_TABLE));
        self.put128(CONTEXT_TABLE + 16 * u64::from(source.0 & 0xff), context);
    }

    /// Maps `iova` to `gpa` in the table rooted at `root` with `levels` levels, the leaf
    /// at `leaf_level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB); intermediate entries are RW.
    fn map(
        &self,
        root: u64,
        levels: u32,
        iova: u64,
        gpa: u64,
        leaf_level: u32,
        (r, w): (bool, bool),
    ) {
        let mut table = root;
        for level in (leaf_level + 1..=levels).rev() {
            let slot = table + 8 * sl::index(iova, level);
            let e = self.get64(slot);
            table = if e & 3 != 0 {
                e & 0x000f_ffff_ffff_f000
            } else {
                let t = self.new_table();
                self.put64(slot, sl::table(t, true, true));
                t
            };
        }
        let slot = table + 8 * sl::index(iova, leaf_level);
        let e = if leaf_level == 1 {
            sl::page(gpa, r, w)
        } else {
            sl::superpage(gpa, r, w)
        };
        self.put64(slot, e);
    }

    /// The address of the entry for `iova` at `level` (tables must exist above it).
    fn slot(&self, root: u64, levels: u32, iova: u64, level: u32) -> u64 {
        let mut table = root;
        for l in (level + 1..=levels).rev() {
            table = self.get64(table + 8 * sl::index(iova, l)) & 0x000f_ffff_ffff_f000;
        }
        table + 8 * sl::index(iova, level)
    }
}

fn support() -> DmaSupport {
    DmaSupport {
        context: ContextSupport {
            sagaw: SAGAW_39 | SAGAW_48,
            pass_through: true,
        },
        superpages: Superpages {
            two_mib: true,
            one_gib: true,
        },
    }
}

fn read(source: SourceId, iova: u64) -> DmaRequest {
    DmaRequest {
        source,
        iova,
        write: false,
    }
}

fn write(source: SourceId, iova: u64) -> DmaRequest {
    DmaRequest {
        source,
        iova,
        write: true,
    }
}

/// A device in domain 5 with a 4-level table; returns the table's root.
fn four_level(m: &Mem) -> u64 {
    let root = m.new_table();
    m.set_context(DEV, ctx::translated(root, AW_48, 5, false));
    root
}

fn reason(r: Result<DmaMapping, DmaFault>) -> DmaFaultReason {
    r.expect_err("expected a fault").reason
}

#[test]
fn untranslated_and_pass_through_are_identity() {
    let m = Mem::new();
    let mut e = DmaRemapping::new(support());
    let t = e.translate(&m, None, write(DEV, 0x1234_5678)).unwrap();
    assert_eq!(t.gpa_of(0x1234_5678), 0x1234_5678);
    assert_eq!(t.domain, None);
    assert!(t.remaining(0x1234_5678) > 0);
    m.set_context(DEV, ctx::pass_through(9));
    let t = e
        .translate(&m, Some(ROOT_TABLE), write(DEV, 0xdead_b000))
        .unwrap();
    assert_eq!(t.gpa_of(0xdead_b123), 0xdead_b123);
    assert_eq!(t.domain, Some(9));
    assert_eq!(
        e.view(&m, Some(ROOT_TABLE), DEV),
        DeviceView::PassThrough { domain: 9 }
    );
    assert_eq!(e.view(&m, None, DEV), DeviceView::Untranslated);
}

#[test]
fn four_level_walk_of_every_page_size() {
    let m = Mem::new();
    let root = four_level(&m);
    let iova_4k = 0x0000_1234_5678_9000;
    let iova_2m = 0x0000_2000_0040_0000;
    let iova_1g = 0x0000_3000_4000_0000;
    m.map(root, 4, iova_4k, 0x5_3000, 1, (true, true));
    m.map(root, 4, iova_2m, 0x20_0000, 2, (true, false));
    m.map(root, 4, iova_1g, 0, 3, (true, true));
    let mut e = DmaRemapping::new(support());
    let t = e
        .translate(&m, Some(ROOT_TABLE), write(DEV, iova_4k + 0x123))
        .unwrap();
    assert_eq!((t.iova, t.gpa, t.size), (iova_4k, 0x5_3000, 0x1000));
    assert_eq!(t.gpa_of(iova_4k + 0x123), 0x5_3123);
    assert_eq!(t.remaining(iova_4k + 0x123), 0x1000 - 0x123);
    assert_eq!(t.domain, Some(5));
    let t = e
        .translate(&m, Some(ROOT_TABLE), read(DEV, iova_2m + 0x1_2345))
        .unwrap();
    assert_eq!(
        (t.gpa, t.size, t.read, t.write),
        (0x20_0000, 0x20_0000, true, false)
    );
    assert_eq!(t.gpa_of(iova_2m + 0x1_2345), 0x21_2345);
    let t = e
        .translate(&m, Some(ROOT_TABLE), read(DEV, iova_1g + 0x3fff_ffff))
        .unwrap();
    assert_eq!((t.gpa, t.size), (0, 0x4000_0000));
    // Write to the read-only 2 MiB page.
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), write(DEV, iova_2m))),
        DmaFaultReason::WriteDenied
    );
    // Unmapped neighbours: the permission fault of the request's direction.
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), write(DEV, iova_4k + 0x1000))),
        DmaFaultReason::WriteDenied
    );
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, iova_4k + 0x1000))),
        DmaFaultReason::ReadDenied
    );
    // Beyond 48 bits.
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, 1 << 48))),
        DmaFaultReason::AddressBeyondWidth
    );
}

#[test]
fn three_level_tables_translate_39_bits() {
    let m = Mem::new();
    let root = m.new_table();
    m.set_context(DEV, ctx::translated(root, AW_39, 7, false));
    m.map(root, 3, 0x40_1234_5000, 0x7000, 1, (true, true));
    let mut e = DmaRemapping::new(support());
    let t = e
        .translate(&m, Some(ROOT_TABLE), read(DEV, 0x40_1234_5008))
        .unwrap();
    assert_eq!(t.gpa_of(0x40_1234_5008), 0x7008);
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, 1 << 39))),
        DmaFaultReason::AddressBeyondWidth
    );
    match e.view(&m, Some(ROOT_TABLE), DEV) {
        DeviceView::Translated { domain, table } => {
            assert_eq!(domain, 7);
            assert_eq!(table.levels, Levels::Three);
            assert_eq!(table.root, root);
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn permissions_narrow_on_the_way_down() {
    let m = Mem::new();
    let root = four_level(&m);
    let iova = 0x8000_0000;
    m.map(root, 4, iova, 0x9000, 1, (true, true));
    // Make the level-2 entry read-only.
    let slot = m.slot(root, 4, iova, 2);
    m.put64(slot, m.get64(slot) & !2);
    let mut e = DmaRemapping::new(support());
    assert!(e.translate(&m, Some(ROOT_TABLE), read(DEV, iova)).is_ok());
    e.flush();
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), write(DEV, iova))),
        DmaFaultReason::WriteDenied
    );
    // A write-only path denies reads.
    m.put64(slot, (m.get64(slot) & !1) | 2);
    e.flush();
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, iova))),
        DmaFaultReason::ReadDenied
    );
    assert!(e.translate(&m, Some(ROOT_TABLE), write(DEV, iova)).is_ok());
}

#[test]
fn reserved_bits_fault_0xc() {
    let m = Mem::new();
    let root = four_level(&m);
    let iova = 0x4000_0000;
    m.map(root, 4, iova, 0xa000, 1, (true, true));
    let leaf = m.slot(root, 4, iova, 1);
    let good = m.get64(leaf);
    let mut e = DmaRemapping::new(support());
    for bad in [
        good | (1 << 11),
        good | (1 << 62),
        good | (1 << 48),
        good | (1 << 51),
    ] {
        m.put64(leaf, bad);
        e.flush();
        assert_eq!(
            reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, iova))),
            DmaFaultReason::PagingEntryReserved,
            "{bad:#x}"
        );
    }
    // Ignored bits are fine: 63, 61:52, 10:8, 6:2.
    m.put64(
        leaf,
        good | (1 << 63) | (0x3ff << 52) | (0x7 << 8) | (0x1f << 2),
    );
    e.flush();
    assert!(e.translate(&m, Some(ROOT_TABLE), read(DEV, iova)).is_ok());
    m.put64(leaf, good);
    // PS at level 4 is reserved.
    let top = m.slot(root, 4, iova, 4);
    m.put64(top, m.get64(top) | (1 << 7));
    e.flush();
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, iova))),
        DmaFaultReason::PagingEntryReserved
    );
    // A not-present entry with reserved bits is just not present.
    m.put64(top, 1 << 11);
    e.flush();
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, iova))),
        DmaFaultReason::ReadDenied
    );
}

#[test]
fn superpages_must_be_supported_and_aligned() {
    let m = Mem::new();
    let root = four_level(&m);
    m.map(root, 4, 0x20_0000, 0x40_0000, 2, (true, true));
    m.map(root, 4, 0x8000_0000, 0x4000_0000, 3, (true, true));
    let none = DmaSupport {
        superpages: Superpages {
            two_mib: false,
            one_gib: false,
        },
        ..support()
    };
    let mut e = DmaRemapping::new(none);
    for iova in [0x20_0000, 0x8000_0000] {
        assert_eq!(
            reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, iova))),
            DmaFaultReason::PagingEntryReserved
        );
    }
    // Misaligned superpage addresses.
    let mut e = DmaRemapping::new(support());
    let pde = m.slot(root, 4, 0x20_0000, 2);
    m.put64(pde, sl::superpage(0x40_1000, true, true));
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, 0x20_0000))),
        DmaFaultReason::PagingEntryReserved
    );
    let pdpe = m.slot(root, 4, 0x8000_0000, 3);
    m.put64(pdpe, sl::superpage(0x4020_0000, true, true));
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, 0x8000_0000))),
        DmaFaultReason::PagingEntryReserved
    );
}

#[test]
fn unreadable_tables() {
    let m = Mem::new();
    // Top table beyond RAM: 0x3 (SLPTPTR), as the specification says.
    m.set_context(DEV, ctx::translated(0x4000_0000, AW_48, 5, false));
    let mut e = DmaRemapping::new(support());
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, 0))),
        DmaFaultReason::ContextInvalid
    );
    // A lower table beyond RAM: 0x7.
    let root = four_level(&m);
    m.put64(root, sl::table(0x4000_0000, true, true));
    e.flush();
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, 0))),
        DmaFaultReason::PagingEntryUnreadable
    );
}

#[test]
fn root_and_context_faults() {
    let m = Mem::new();
    let mut e = DmaRemapping::new(support());
    let f = e
        .translate(&m, Some(ROOT_TABLE), write(DEV, 0x1000))
        .unwrap_err();
    assert_eq!(f.reason, DmaFaultReason::RootNotPresent);
    assert_eq!((f.source_id, f.address, f.write), (DEV, 0x1000, true));
    assert_eq!(
        reason(e.translate(&m, Some(0x4000_0000), read(DEV, 0))),
        DmaFaultReason::RootTableUnreadable
    );
    m.put128(ROOT_TABLE, (ctx::root(CONTEXT_TABLE).0 | 0x10, 0));
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, 0))),
        DmaFaultReason::RootReserved
    );
    m.put128(ROOT_TABLE, ctx::root(0x4000_0000));
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, 0))),
        DmaFaultReason::ContextTableUnreadable
    );
    m.put128(ROOT_TABLE, ctx::root(CONTEXT_TABLE));
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, 0))),
        DmaFaultReason::ContextNotPresent
    );
    let (lo, hi) = ctx::translated(0x3000, AW_48, 5, false);
    m.set_context(DEV, (lo, hi | (1 << 30)));
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, 0))),
        DmaFaultReason::ContextReserved
    );
    m.set_context(DEV, ctx::translated(0x3000, 3, 5, false));
    assert_eq!(
        reason(e.translate(&m, Some(ROOT_TABLE), read(DEV, 0))),
        DmaFaultReason::ContextInvalid
    );
    assert_eq!(
        e.view(&m, Some(ROOT_TABLE), DEV),
        DeviceView::Blocked {
            reason: DmaFaultReason::ContextInvalid
        }
    );
}

#[test]
fn fpd_suppresses_qualified_faults_even_in_a_not_present_context() {
    let m = Mem::new();
    let root = m.new_table();
    m.set_context(DEV, ctx::translated(root, AW_48, 5, true));
    let mut e = DmaRemapping::new(support());
    let f = e
        .translate(&m, Some(ROOT_TABLE), write(DEV, 0x1000))
        .unwrap_err();
    assert_eq!(f.reason, DmaFaultReason::WriteDenied);
    assert!(f.suppressed);
    // P clear, FPD set (and the cached context dropped).
    let (lo, hi) = ctx::translated(root, AW_48, 5, true);
    m.set_context(DEV, (lo & !1, hi));
    e.flush();
    let f = e
        .translate(&m, Some(ROOT_TABLE), write(DEV, 0x1000))
        .unwrap_err();
    assert_eq!(f.reason, DmaFaultReason::ContextNotPresent);
    assert!(f.suppressed);
    // Root faults are never suppressed.
    let f = e
        .translate(&m, Some(0x4000_0000), write(DEV, 0))
        .unwrap_err();
    assert!(!f.suppressed);
}

#[test]
fn looping_tables_terminate() {
    let m = Mem::new();
    let root = four_level(&m);
    // Every entry of the top table points back at the top table.
    for i in 0..512 {
        m.put64(root + 8 * i, sl::table(root, true, true));
    }
    let mut e = DmaRemapping::new(support());
    // The walk reads one entry per level: the "leaf" at level 1 maps the table itself.
    let t = e
        .translate(&m, Some(ROOT_TABLE), read(DEV, 0x1234_5000))
        .unwrap();
    assert_eq!(t.gpa, root);
    // Enumeration is bounded by the budget.
    let table = match e.view(&m, Some(ROOT_TABLE), DEV) {
        DeviceView::Translated { table, .. } => table,
        v => panic!("{v:?}"),
    };
    let mut budget = 100;
    let scan = leaves(&m, &table, 0, u64::MAX, &mut budget);
    assert!(scan.truncated);
    assert_eq!(budget, 0);
    assert!(scan.leaves.len() <= 100 * 512);
}

#[test]
fn iotlb_keeps_stale_leaves_until_invalidated() {
    let m = Mem::new();
    let root = four_level(&m);
    let iova = 0x7000_0000;
    m.map(root, 4, iova, 0x1_0000, 1, (true, true));
    let mut e = DmaRemapping::new(support());
    assert_eq!(
        e.translate(&m, Some(ROOT_TABLE), write(DEV, iova))
            .unwrap()
            .gpa,
        0x1_0000
    );
    m.map(root, 4, iova, 0x2_0000, 1, (true, true));
    assert_eq!(
        e.translate(&m, Some(ROOT_TABLE), write(DEV, iova))
            .unwrap()
            .gpa,
        0x1_0000,
        "cached"
    );
    // Another domain's or page's invalidation does not help.
    e.invalidate(&DmaInvalidation::Iotlb(IotlbInvalidation::pages(
        6, iova, 0, true,
    )));
    e.invalidate(&DmaInvalidation::Iotlb(IotlbInvalidation::pages(
        5,
        iova + 0x1000,
        0,
        true,
    )));
    assert_eq!(
        e.translate(&m, Some(ROOT_TABLE), write(DEV, iova))
            .unwrap()
            .gpa,
        0x1_0000
    );
    e.invalidate(&DmaInvalidation::Iotlb(IotlbInvalidation::pages(
        5, iova, 0, true,
    )));
    assert_eq!(
        e.translate(&m, Some(ROOT_TABLE), write(DEV, iova))
            .unwrap()
            .gpa,
        0x2_0000
    );
    // Unmapped without invalidation: still cached; domain-selective drops it.
    m.put64(m.slot(root, 4, iova, 1), 0);
    assert!(e.translate(&m, Some(ROOT_TABLE), write(DEV, iova)).is_ok());
    e.invalidate(&DmaInvalidation::Iotlb(IotlbInvalidation::Domain(5)));
    assert!(e.translate(&m, Some(ROOT_TABLE), write(DEV, iova)).is_err());
    let (_, iotlb) = e.stats();
    assert!(iotlb.hits >= 2 && iotlb.misses >= 2, "{iotlb:?}");
}

#[test]
fn context_cache_keeps_stale_contexts_until_invalidated() {
    let m = Mem::new();
    let root = four_level(&m);
    m.map(root, 4, 0x1000, 0x3000, 1, (true, true));
    let mut e = DmaRemapping::new(support());
    assert!(e.translate(&m, Some(ROOT_TABLE), read(DEV, 0x1000)).is_ok());
    m.set_context(DEV, ctx::pass_through(5));
    e.invalidate(&DmaInvalidation::Iotlb(IotlbInvalidation::Global));
    assert_eq!(
        e.translate(&m, Some(ROOT_TABLE), read(DEV, 0x1000))
            .unwrap()
            .gpa,
        0x3000,
        "the cached context still translates"
    );
    e.invalidate(&DmaInvalidation::Context(ContextInvalidation::Device {
        source: DEV,
        function_mask: 0,
    }));
    assert_eq!(
        e.translate(&m, Some(ROOT_TABLE), read(DEV, 0x1000))
            .unwrap()
            .gpa_of(0x1000),
        0x1000,
        "pass-through now"
    );
    // Faults are not cached: a context fixed without invalidation is seen at once.
    let other = SourceId(0x0018);
    assert!(e.translate(&m, Some(ROOT_TABLE), read(other, 0)).is_err());
    m.set_context(other, ctx::pass_through(2));
    assert!(e.translate(&m, Some(ROOT_TABLE), read(other, 0)).is_ok());
}

#[test]
fn leaves_enumerates_a_range_with_every_page_size() {
    let m = Mem::new();
    let root = four_level(&m);
    m.map(root, 4, 0x1000, 0x10_0000, 1, (true, false));
    m.map(root, 4, 0x2000, 0x11_0000, 1, (true, true));
    m.map(root, 4, 0x20_0000, 0x40_0000, 2, (true, true));
    m.map(root, 4, 0x4000_0000, 0, 3, (false, true));
    m.map(root, 4, 0x80_0000_0000, 0x12_0000, 1, (true, true));
    let table = Table {
        root,
        levels: Levels::Four,
        superpages: support().superpages,
    };
    let mut budget = 1000;
    let all = leaves(&m, &table, 0, u64::MAX, &mut budget);
    assert!(!all.truncated);
    assert_eq!(all.bad_entries, 0);
    let got: Vec<(u64, u64, u64, bool, bool)> = all
        .leaves
        .iter()
        .map(|l| (l.iova, l.gpa, l.size, l.read, l.write))
        .collect();
    assert_eq!(
        got,
        vec![
            (0x1000, 0x10_0000, 0x1000, true, false),
            (0x2000, 0x11_0000, 0x1000, true, true),
            (0x20_0000, 0x40_0000, 0x20_0000, true, true),
            (0x4000_0000, 0, 0x4000_0000, false, true),
            (0x80_0000_0000, 0x12_0000, 0x1000, true, true),
        ]
    );
    // A range inside the 2 MiB page returns the whole page.
    let mut budget = 1000;
    let part = leaves(&m, &table, 0x21_0000, 0x21_1000, &mut budget);
    assert_eq!(part.leaves.len(), 1);
    assert_eq!(part.leaves[0].iova, 0x20_0000);
    // Reserved entries are skipped and counted.
    let slot = m.slot(root, 4, 0x2000, 1);
    m.put64(slot, m.get64(slot) | (1 << 11));
    let mut budget = 1000;
    let scan = leaves(&m, &table, 0, 0x10_0000, &mut budget);
    assert_eq!(scan.leaves.len(), 1);
    assert_eq!(scan.bad_entries, 1);
}
