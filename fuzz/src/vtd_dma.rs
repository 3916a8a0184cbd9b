//! The `vtd_dma` harness: VT-d DMA remapping under a guest that programs the unit's
//! registers and invalidation queue and writes root, context and second-level entries
//! into guest memory, while devices issue DMA requests and the VMM shadows a device's
//! mappings into a host IOMMU.
//!
//! Memory ([`FakeMem`]): page 0 holds the root table, page 1 bus 0's context table, pages
//! 2-13 paging structures (and whatever the fuzzer points at), page 14 the invalidation
//! queue, page 15 wait status words; the second RAM region and the hole before it are
//! there for entries that point at the edges of RAM and beyond.
//!
//! Invariants asserted after every operation:
//!
//! * no panic or hang, whatever the tables hold (loops, reserved bits, pointers beyond
//!   RAM), whatever the registers and descriptors say;
//! * a DMA translation never writes guest memory; a successful one is a block of 4 KiB,
//!   2 MiB, 1 GiB (or the identity block) containing the address, aligned, inside the
//!   address width, with the permission the request needs; identity while translation is
//!   off; a fault names the request's address and direction with a DMA reason (0x1-0xC),
//!   and recording it yields only interrupts KVM accepts;
//! * the caches are coherent: after global context-cache and IOTLB invalidations (and no
//!   table write since), the unit translates exactly as an engine without caches does;
//! * the enumeration of a device's leaves ([`walk::leaves`]) is sorted, non-overlapping,
//!   aligned, overlaps the range asked for, stays within its table budget, and agrees with
//!   the page walk for each leaf;
//! * the shadow ([`DmaShadow`]) stays a set of disjoint host mappings inside RAM and
//!   outside the interrupt window, and its operations, applied to a model host IOMMU that
//!   refuses overlapping maps and unmaps of anything not mapped exactly, keep the model
//!   equal to the shadow.

use std::collections::BTreeMap;

use virtual_iommu::msi::SourceId;
use virtual_iommu::shadow::{DmaShadow, RamRange, ShadowExtent, ShadowOp, INTERRUPT_WINDOW};
use virtual_iommu::vtd::dma::walk::{self, Leaf};
use virtual_iommu::vtd::dma::{DmaRemapping, IDENTITY_BLOCK};
use virtual_iommu::vtd::qi::build;
use virtual_iommu::vtd::regs::*;
use virtual_iommu::vtd::{
    ContextInvalidation, DeviceView, DmaInvalidation, DmaRequest, Effects, IotlbInvalidation,
    VtdConfig, VtdUnit,
};

use crate::fake_mem::{FakeMem, HIGH_BASE, HIGH_SIZE, LOW_SIZE};
use crate::{assert_kvm_msi, for_each_op, fuzz_type};

/// Page of the root table.
pub const ROOT_PAGE: u64 = 0;
/// Page of bus 0's context table.
pub const CONTEXT_PAGE: u64 = 1;
/// Page of the invalidation queue.
pub const QUEUE_PAGE: u64 = 14;
/// Page of the wait status words.
pub const STATUS_PAGE: u64 = 15;
/// Tables the leaf enumeration may visit per operation.
const LEAF_BUDGET: usize = 64;
/// Leaves cross-checked against the page walk per enumeration.
const CROSS_CHECKS: usize = 16;

fuzz_type! {
    /// How the unit is configured.
    pub struct DmaSetup {
        /// Report CAP.CM.
        pub caching_mode: bool,
        /// Queued invalidation on from the start (IQA = queue page, QIE).
        pub queue: bool,
    }
}

fuzz_type! {
    /// One step of the guest, a device or the VMM.
    pub enum DmaOp {
        /// A second-level (or any) qword in page `page` (mod 16) at entry `index` (mod 512).
        Entry { page: u8, index: u16, value: u64 },
        /// A second-level entry pointing at page `target` with permissions and PS.
        Link { page: u8, index: u16, target: u8, perms: u8, ps: bool },
        /// Bus 0's root entry (or bus `bus`'s) raw.
        Root { bus: u8, lo: u64, hi: u64 },
        /// A context entry for devfn `devfn`: translated through page `table`, AW, DID,
        /// TT and FPD as given.
        Context { devfn: u8, table: u8, aw: u8, did: u16, tt: u8, fpd: bool, present: bool },
        /// A raw context entry.
        RawContext { devfn: u8, lo: u64, hi: u64 },
        /// RTADDR = `addr`, GCMD.SRTP; then TE on or off.
        Translation { addr: u64, srtp: bool, te: bool },
        /// A register write (dword or qword) at a named DMA-related offset.
        Reg { reg: u8, qword: bool, value: u64 },
        /// Context-cache invalidation through the queue (granularity 0-3).
        QueueContext { granularity: u8, did: u16, sid: u16, fm: u8 },
        /// IOTLB invalidation through the queue (granularity 0-3).
        QueueIotlb { granularity: u8, did: u16, addr: u64, am: u8, ih: bool },
        /// A raw descriptor through the queue.
        QueueRaw { qw0: u64, qw1: u64 },
        /// A DMA request from `sid` (bus 0 when `bus0`).
        Dma { sid: u16, bus0: bool, iova: u64, write: bool },
        /// Enumerates device `devfn`'s leaves in `[start, start + len)`.
        Leaves { devfn: u8, start: u64, len: u64 },
        /// Shadows device `devfn`'s leaves in `[start, start + len)`.
        Shadow { devfn: u8, start: u64, len: u64 },
        /// Shadows all of device `devfn`'s table (or all of RAM when untranslated).
        ShadowAll { devfn: u8 },
        /// Software services faults.
        Service { fsts: u32 },
        /// Platform reset.
        Reset {},
    }
}

/// Offsets [`DmaOp::Reg`] picks from.
pub const REGS: [u64; 12] = [
    GCMD_REG,
    RTADDR_REG,
    RTADDR_REG + 4,
    CCMD_REG,
    CCMD_REG + 4,
    IVA_REG,
    IVA_REG + 4,
    IOTLB_REG,
    IOTLB_REG + 4,
    IQT_REG,
    IQA_REG,
    FSTS_REG,
];

/// The harness state.
pub struct Harness {
    /// The unit.
    pub unit: VtdUnit,
    /// Its memory.
    pub mem: FakeMem,
    /// Context cache known clean (global invalidation since the last table change).
    ctx_clean: bool,
    /// IOTLB known clean.
    iotlb_clean: bool,
    /// The next free queue slot.
    tail: u32,
    /// The shadow of the device being shadowed, and the model host IOMMU.
    shadow: DmaShadow,
    host: BTreeMap<u64, ShadowExtent>,
}

fn ram() -> Vec<RamRange> {
    vec![
        RamRange {
            gpa: 0,
            len: LOW_SIZE,
        },
        RamRange {
            gpa: HIGH_BASE,
            len: HIGH_SIZE,
        },
    ]
}

impl Harness {
    /// A unit configured by `setup` over zeroed memory.
    pub fn new(setup: &DmaSetup) -> Self {
        let unit = VtdUnit::new(VtdConfig {
            caching_mode: setup.caching_mode,
            ..VtdConfig::default()
        });
        let mut h = Harness {
            unit,
            mem: FakeMem::new(),
            ctx_clean: true,
            iotlb_clean: true,
            tail: 0,
            shadow: DmaShadow::new(ram()),
            host: BTreeMap::new(),
        };
        if setup.queue {
            h.write64(IQA_REG, QUEUE_PAGE << 12);
            h.write32(GCMD_REG, GCMD_QIE);
        }
        h
    }

    fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.unit.mmio_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn read64(&self, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.unit.mmio_read(offset, &mut b);
        u64::from_le_bytes(b)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Effects {
        self.mem.reset_counters();
        let effects = self.unit.mmio_write(&self.mem, offset, data);
        for m in &effects.interrupts {
            assert_kvm_msi(m, "VT-d event");
        }
        for inv in &effects.dma {
            match inv {
                DmaInvalidation::Context(ContextInvalidation::Global) => self.ctx_clean = true,
                DmaInvalidation::Iotlb(IotlbInvalidation::Global) => self.iotlb_clean = true,
                DmaInvalidation::Iotlb(i) => {
                    let (s, e) = i.range();
                    assert!(s <= e, "{i:?}");
                }
                _ => {}
            }
        }
        if effects.dma_state_changed {
            // A new root table: cached contexts may name the old one until software
            // invalidates (CAP.ESRTPS is not reported).
            self.ctx_clean = false;
            self.iotlb_clean = false;
        }
        effects
    }

    fn write32(&mut self, offset: u64, value: u32) -> Effects {
        self.write(offset, &value.to_le_bytes())
    }

    fn write64(&mut self, offset: u64, value: u64) -> Effects {
        self.write(offset, &value.to_le_bytes())
    }

    fn poke(&mut self, gpa: u64, value: u64) {
        self.mem.poke(gpa, &value.to_le_bytes());
        self.ctx_clean = false;
        self.iotlb_clean = false;
    }

    /// Submits `desc` followed by a wait descriptor with a status write.
    fn submit(&mut self, desc: (u64, u64)) {
        let base = QUEUE_PAGE << 12;
        for d in [
            desc,
            build::wait(false, Some((STATUS_PAGE << 12, 1)), false),
        ] {
            let gpa = base + u64::from(self.tail % 256) * 16;
            self.mem.poke(gpa, &d.0.to_le_bytes());
            self.mem.poke(gpa + 8, &d.1.to_le_bytes());
            self.tail = (self.tail + 1) % 256;
        }
        self.write64(IQT_REG, u64::from(self.tail) << 4);
    }

    /// The unit's DMA request, checked.
    fn dma(&mut self, sid: SourceId, iova: u64, write: bool) {
        let req = DmaRequest {
            source: sid,
            iova,
            write,
        };
        self.mem.reset_counters();
        let (result, effects) = self.unit.dma_access(&self.mem, req);
        assert_eq!(self.mem.writes(), 0, "DMA translation wrote guest memory");
        for m in &effects.interrupts {
            assert_kvm_msi(m, "DMA fault event");
        }
        let enabled = self.unit.translation_enabled();
        match &result {
            Ok(m) => {
                assert!(
                    [0x1000, 0x20_0000, 0x4000_0000, IDENTITY_BLOCK].contains(&m.size),
                    "{m:x?}"
                );
                assert_eq!(m.iova % m.size, 0, "{m:x?}");
                assert!(iova >= m.iova && iova - m.iova < m.size, "{iova:#x} {m:x?}");
                assert!(if write { m.write } else { m.read }, "{m:x?}");
                assert_eq!(m.gpa % m.size, 0, "{m:x?}");
                if m.domain.is_none() {
                    assert!(!enabled, "no domain with translation on: {m:x?}");
                    assert_eq!(m.gpa_of(iova), iova, "identity");
                } else if m.gpa_of(iova) != iova {
                    // A second-level leaf (pass-through is identity).
                    assert!(m.gpa < 1 << 48, "{m:x?}");
                    assert!(iova < 1 << 48, "{iova:#x}");
                }
            }
            Err(f) => {
                assert!(enabled, "fault with translation off: {f:?}");
                assert_eq!((f.address, f.write, f.source_id), (iova, write, sid));
                assert!((0x1..=0xc).contains(&f.reason.code()), "{f:?}");
            }
        }
        // Coherence with an engine that caches nothing.
        if self.ctx_clean && self.iotlb_clean {
            let mut fresh = DmaRemapping::new(self.unit.dma_support());
            let root = enabled.then(|| self.unit.root_table().unwrap_or(0));
            let expected = fresh.translate(&self.mem, root, req);
            assert_eq!(
                result, expected,
                "cached translation differs from the tables"
            );
        }
    }

    /// The translated table of device `devfn`, if it has one.
    fn table(&self, devfn: u8) -> Option<walk::Table> {
        match self.unit.dma_view(&self.mem, SourceId(u16::from(devfn))) {
            DeviceView::Translated { table, .. } => Some(table),
            _ => None,
        }
    }

    fn leaves(&self, devfn: u8, start: u64, end: u64) {
        let Some(table) = self.table(devfn) else {
            return;
        };
        let mut budget = LEAF_BUDGET;
        let scan = walk::leaves(&self.mem, &table, start, end, &mut budget);
        assert!(scan.leaves.len() <= LEAF_BUDGET * 512);
        let mut last_end = 0u64;
        for (i, l) in scan.leaves.iter().enumerate() {
            assert!([0x1000, 0x20_0000, 0x4000_0000].contains(&l.size), "{l:x?}");
            assert_eq!(l.iova % l.size, 0, "{l:x?}");
            assert_eq!(l.gpa % l.size, 0, "{l:x?}");
            assert!(l.read || l.write, "{l:x?}");
            assert!(l.iova < end && l.iova + l.size > start, "{l:x?} outside");
            assert!(i == 0 || l.iova >= last_end, "leaves overlap or unsorted");
            last_end = l.iova + l.size;
            if i < CROSS_CHECKS {
                let write = !l.read;
                let t = walk::translate(&self.mem, &table, l.iova, write);
                assert_eq!(t, Ok(*l), "walk disagrees with the enumeration");
            }
        }
    }

    fn apply_shadow_ops(&mut self, ops: &[ShadowOp]) {
        let mut unmapping = true;
        for op in ops {
            match *op {
                ShadowOp::Unmap { iova, len } => {
                    assert!(unmapping, "unmap after a map in one batch");
                    let x = self.host.remove(&iova).expect("unmap of nothing mapped");
                    assert_eq!(x.len, len, "unmap splits a mapping");
                }
                ShadowOp::Map(x) => {
                    unmapping = false;
                    let end = x.iova + x.len;
                    let overlaps = self
                        .host
                        .range(..end)
                        .next_back()
                        .is_some_and(|(_, y)| y.iova + y.len > x.iova);
                    assert!(!overlaps, "map over an existing mapping: {x:x?}");
                    let in_ram = ram()
                        .iter()
                        .any(|r| x.gpa >= r.gpa && x.gpa + x.len <= r.gpa + r.len);
                    assert!(in_ram, "mapping outside RAM: {x:x?}");
                    let (ws, we) = INTERRUPT_WINDOW;
                    assert!(end <= ws || x.iova >= we, "mapping in the interrupt window");
                    assert!(x.read || x.write);
                    self.host.insert(x.iova, x);
                }
            }
        }
        let shadow: Vec<ShadowExtent> = self.shadow.extents().copied().collect();
        let host: Vec<ShadowExtent> = self.host.values().copied().collect();
        assert_eq!(shadow, host, "host IOMMU and shadow differ");
    }

    fn shadow(&mut self, devfn: u8, start: u64, end: u64) {
        let Some(table) = self.table(devfn) else {
            return;
        };
        let mem = &self.mem;
        let mut budget = LEAF_BUDGET;
        let ops = self.shadow.update(start, end, |s, e| {
            walk::leaves(mem, &table, s, e, &mut budget).leaves
        });
        self.apply_shadow_ops(&ops);
    }

    fn shadow_all(&mut self, devfn: u8) {
        let target: Vec<ShadowExtent> = match self.table(devfn) {
            Some(table) => {
                let mut budget = LEAF_BUDGET;
                walk::leaves(&self.mem, &table, 0, u64::MAX, &mut budget)
                    .leaves
                    .iter()
                    .flat_map(|l: &Leaf| self.shadow.extents_of(l))
                    .collect()
            }
            None => self.shadow.identity(),
        };
        let ops = self.shadow.replace_all(target);
        self.apply_shadow_ops(&ops);
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &DmaOp) {
        match *op {
            DmaOp::Entry { page, index, value } => {
                let gpa = (u64::from(page % 16) << 12) + u64::from(index % 512) * 8;
                self.poke(gpa, value);
            }
            DmaOp::Link {
                page,
                index,
                target,
                perms,
                ps,
            } => {
                let gpa = (u64::from(page % 16) << 12) + u64::from(index % 512) * 8;
                let to = u64::from(target) << 12;
                let mut e = to | u64::from(perms & 3);
                if ps {
                    e |= 1 << 7;
                }
                self.poke(gpa, e);
            }
            DmaOp::Root { bus, lo, hi } => {
                let gpa = (ROOT_PAGE << 12) + u64::from(bus) * 16;
                self.poke(gpa, lo);
                self.poke(gpa + 8, hi);
            }
            DmaOp::Context {
                devfn,
                table,
                aw,
                did,
                tt,
                fpd,
                present,
            } => {
                let gpa = (CONTEXT_PAGE << 12) + u64::from(devfn) * 16;
                let lo = (u64::from(table) << 12)
                    | u64::from(present)
                    | (u64::from(fpd) << 1)
                    | (u64::from(tt & 3) << 2);
                let hi = u64::from(aw & 7) | (u64::from(did) << 8);
                self.poke(gpa, lo);
                self.poke(gpa + 8, hi);
            }
            DmaOp::RawContext { devfn, lo, hi } => {
                let gpa = (CONTEXT_PAGE << 12) + u64::from(devfn) * 16;
                self.poke(gpa, lo);
                self.poke(gpa + 8, hi);
            }
            DmaOp::Translation { addr, srtp, te } => {
                self.write64(RTADDR_REG, addr);
                let mut gcmd = self.read32(GSTS_REG) & (GCMD_QIE | GCMD_IRE | GCMD_CFI | GCMD_TE);
                if srtp {
                    self.write32(GCMD_REG, gcmd | GCMD_SRTP);
                }
                if te {
                    gcmd |= GCMD_TE;
                } else {
                    gcmd &= !GCMD_TE;
                }
                self.write32(GCMD_REG, gcmd);
            }
            DmaOp::Reg { reg, qword, value } => {
                let offset = REGS[usize::from(reg) % REGS.len()];
                if qword {
                    self.write64(offset & !7, value);
                } else {
                    self.write32(offset, value as u32);
                }
            }
            DmaOp::QueueContext {
                granularity,
                did,
                sid,
                fm,
            } => {
                let qw0 = 0x1
                    | (u64::from(granularity & 3) << 4)
                    | (u64::from(did) << 16)
                    | (u64::from(sid) << 32)
                    | (u64::from(fm & 3) << 48);
                self.submit((qw0, 0));
            }
            DmaOp::QueueIotlb {
                granularity,
                did,
                addr,
                am,
                ih,
            } => {
                let qw0 = 0x2 | (u64::from(granularity & 3) << 4) | (u64::from(did) << 16);
                let qw1 = (addr & !0xfff) | u64::from(am & 0x3f) | (u64::from(ih) << 6);
                self.submit((qw0, qw1));
            }
            DmaOp::QueueRaw { qw0, qw1 } => self.submit((qw0, qw1)),
            DmaOp::Dma {
                sid,
                bus0,
                iova,
                write,
            } => {
                let sid = if bus0 { sid & 0xff } else { sid };
                self.dma(SourceId(sid), iova, write);
            }
            DmaOp::Leaves { devfn, start, len } => {
                self.leaves(devfn, start, start.saturating_add(len.max(1)))
            }
            DmaOp::Shadow { devfn, start, len } => {
                self.shadow(devfn, start, start.saturating_add(len.max(1)))
            }
            DmaOp::ShadowAll { devfn } => self.shadow_all(devfn),
            DmaOp::Service { fsts } => {
                self.write32(FSTS_REG, fsts);
                let nfr = ((self.read64(CAP_REG) >> CAP_NFR_SHIFT) & 0xff) + 1;
                for r in 0..nfr {
                    self.write32(FRCD_REG + r * FRCD_SIZE + 12, 1 << 31);
                }
            }
            DmaOp::Reset {} => {
                self.unit.reset();
                self.ctx_clean = true;
                self.iotlb_clean = true;
                self.tail = 0;
            }
        }
        // The fault log only ever holds DMA and interrupt-remapping reasons.
        let fsts = self.read32(FSTS_REG);
        let nfr = ((self.read64(CAP_REG) >> CAP_NFR_SHIFT) & 0xff) + 1;
        assert!(u64::from((fsts >> FSTS_FRI_SHIFT) & 0xff) < nfr);
        for r in 0..nfr {
            let high = self.read64(FRCD_REG + r * FRCD_SIZE + 8);
            if high >> 63 != 0 {
                let reason = (high >> 32) & 0xff;
                assert!(
                    (0x1..=0xc).contains(&reason) || (0x20..=0x28).contains(&reason),
                    "record {r}: reason {reason:#x}"
                );
            }
        }
    }
}

/// Runs one input: a setup, then operations until the bytes run out.
pub fn run(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(setup) = <DmaSetup as arbitrary::Arbitrary>::arbitrary(&mut u) else {
        return;
    };
    let mut h = Harness::new(&setup);
    let rest = u.take_rest();
    // Bound the work per input so a long input cannot time out the fuzzer.
    let mut budget = 2048;
    for_each_op::<DmaOp>(rest, |op| {
        if budget > 0 {
            budget -= 1;
            h.apply(&op);
        }
    });
}

/// The bytes of an input: `setup` then `ops`.
pub fn encode_input(setup: &DmaSetup, ops: &[DmaOp]) -> Vec<u8> {
    use crate::Encode;
    let mut out = setup.to_bytes();
    for op in ops {
        op.encode(&mut out);
    }
    out
}

/// Seed inputs: a guest setting DMA remapping up the way Linux does (4-level table,
/// queued invalidation, caching mode) and then mapping, remapping and unmapping pages
/// with page-selective invalidations while a device DMAs and the VMM shadows; a 3-level
/// table with superpages and register-based invalidations; hostile tables (a loop, an
/// entry beyond RAM, reserved bits) with FPD.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    const DEV: u8 = 0x08;
    let page = |p: u8, i: u16, target: u8, perms: u8, ps: bool| DmaOp::Link {
        page: p,
        index: i,
        target,
        perms,
        ps,
    };
    let root = DmaOp::Root {
        bus: 0,
        lo: (CONTEXT_PAGE << 12) | 1,
        hi: 0,
    };
    let enable = |levels4: bool| {
        vec![
            root.clone(),
            DmaOp::Context {
                devfn: DEV,
                table: 2,
                aw: if levels4 { 2 } else { 1 },
                did: 5,
                tt: 0,
                fpd: false,
                present: true,
            },
            DmaOp::Translation {
                addr: ROOT_PAGE << 12,
                srtp: true,
                te: false,
            },
            DmaOp::QueueContext {
                granularity: 1,
                did: 0,
                sid: 0,
                fm: 0,
            },
            DmaOp::QueueIotlb {
                granularity: 1,
                did: 0,
                addr: 0,
                am: 0,
                ih: false,
            },
            DmaOp::Translation {
                addr: ROOT_PAGE << 12,
                srtp: false,
                te: true,
            },
        ]
    };
    let dma = |iova: u64, write: bool| DmaOp::Dma {
        sid: u16::from(DEV),
        bus0: true,
        iova,
        write,
    };
    let psi = |addr: u64, am: u8| DmaOp::QueueIotlb {
        granularity: 3,
        did: 5,
        addr,
        am,
        ih: true,
    };
    // 4 levels: PML4 page 2 -> PDPT 3 -> PD 4 -> PT 5; IOVA 0x1000 -> page 6 RW,
    // IOVA 0x2000 -> page 7 read-only; a 2 MiB page at IOVA 0x20_0000 -> 0.
    let mut linux = enable(true);
    linux.extend([
        page(2, 0, 3, 3, false),
        page(3, 0, 4, 3, false),
        page(4, 0, 5, 3, false),
        page(5, 1, 6, 3, false),
        psi(0x1000, 0),
        dma(0x1000, true),
        dma(0x1008, false),
        DmaOp::Shadow {
            devfn: DEV,
            start: 0x1000,
            len: 0x1000,
        },
        page(5, 2, 7, 1, false),
        psi(0x2000, 0),
        dma(0x2000, false),
        dma(0x2000, true),
        DmaOp::Shadow {
            devfn: DEV,
            start: 0x2000,
            len: 0x1000,
        },
        page(5, 1, 8, 3, false),
        dma(0x1000, true),
        psi(0x1000, 0),
        dma(0x1000, true),
        DmaOp::Shadow {
            devfn: DEV,
            start: 0x1000,
            len: 0x1000,
        },
        page(4, 1, 0, 3, true),
        psi(0x20_0000, 9),
        dma(0x21_2345, true),
        DmaOp::Leaves {
            devfn: DEV,
            start: 0,
            len: 1 << 30,
        },
        DmaOp::ShadowAll { devfn: DEV },
        DmaOp::Entry {
            page: 5,
            index: 1,
            value: 0,
        },
        psi(0x1000, 0),
        DmaOp::Shadow {
            devfn: DEV,
            start: 0x1000,
            len: 0x1000,
        },
        dma(1 << 48, true),
        DmaOp::Translation {
            addr: ROOT_PAGE << 12,
            srtp: false,
            te: false,
        },
        dma(0x1000, true),
        DmaOp::ShadowAll { devfn: DEV },
    ]);
    // 3 levels with a 1 GiB page, register-based invalidations.
    let mut small = enable(false);
    small.extend([
        page(2, 1, 0, 3, true),
        DmaOp::Reg {
            reg: 5,
            qword: true,
            value: 0x4000_0000 | 18,
        },
        DmaOp::Reg {
            reg: 7,
            qword: true,
            value: (1 << 63) | (3 << 60) | (5 << 32),
        },
        dma(0x4000_1234, true),
        dma(0x80_0000_0000, false),
        DmaOp::Leaves {
            devfn: DEV,
            start: 0,
            len: u64::MAX,
        },
        DmaOp::Reg {
            reg: 3,
            qword: true,
            value: (1 << 63) | (3 << 61) | (u64::from(DEV) << 16) | 5,
        },
        DmaOp::ShadowAll { devfn: DEV },
    ]);
    // Hostile: a self-referencing table, an entry beyond RAM, reserved bits, FPD.
    let mut hostile = enable(true);
    hostile.extend([
        page(2, 0, 2, 3, false),
        dma(0x1000, false),
        DmaOp::Leaves {
            devfn: DEV,
            start: 0,
            len: u64::MAX,
        },
        DmaOp::Shadow {
            devfn: DEV,
            start: 0,
            len: u64::MAX,
        },
        page(2, 1, 0xff, 3, false),
        dma(0x80_0000_0000, true),
        DmaOp::Entry {
            page: 2,
            index: 2,
            value: 0x5003 | (1 << 11),
        },
        DmaOp::QueueIotlb {
            granularity: 1,
            did: 0,
            addr: 0,
            am: 0,
            ih: false,
        },
        dma(0x100_0000_0000, true),
        DmaOp::Context {
            devfn: DEV,
            table: 2,
            aw: 2,
            did: 5,
            tt: 0,
            fpd: true,
            present: false,
        },
        DmaOp::QueueContext {
            granularity: 3,
            did: 5,
            sid: u16::from(DEV),
            fm: 0,
        },
        dma(0x1000, true),
        DmaOp::QueueIotlb {
            granularity: 3,
            did: 5,
            addr: 0,
            am: 40,
            ih: false,
        },
        DmaOp::Service { fsts: 0x7f },
    ]);
    let setup = DmaSetup {
        caching_mode: true,
        queue: true,
    };
    vec![
        ("linux-4-level", encode_input(&setup, &linux)),
        ("3-level-1g-registers", encode_input(&setup, &small)),
        ("hostile-tables", encode_input(&setup, &hostile)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_decode_and_pass() {
        for (name, bytes) in seeds() {
            let mut u = arbitrary::Unstructured::new(&bytes);
            let setup = <DmaSetup as arbitrary::Arbitrary>::arbitrary(&mut u).unwrap();
            assert!(setup.queue, "{name}");
            let mut n = 0;
            for_each_op::<DmaOp>(u.take_rest(), |_| n += 1);
            assert!(n > 10, "{name}: {n} ops decoded");
            run(&bytes);
        }
    }
}
