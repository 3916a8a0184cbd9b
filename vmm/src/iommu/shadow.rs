//! Passed-through devices under the guest's VT-d DMA remapping: their host DMA mappings
//! shadow the guest's, batched per invalidation.
//!
//! A passed-through device's DMA never reaches the emulated unit: it goes through the host
//! IOMMU (kernel VFIO's container, or a vfio-user server's DMA_MAP table). With caching
//! mode (CAP.CM) the guest invalidates after every change to its tables, mappings made
//! included, so each invalidation says which part of a domain may have changed. After
//! every register write of the unit (a queue run, a register-based invalidation, a GCMD
//! write), before the writing vCPU resumes, [`DmaShadows::apply`] brings each device's
//! host mappings in line, one device and one batch at a time:
//!
//! | guest state of the device | host mappings |
//! |---|---|
//! | translation disabled (GSTS.TES = 0) | all of guest RAM, I/O virtual address = guest-physical address (as at attach) |
//! | pass-through context | all of guest RAM, identity |
//! | translated context (domain D, table T) | one mapping per leaf of T (4 KiB, 2 MiB or 1 GiB, cut at the ends of RAM, never the interrupt window), with the leaf's read/write permissions |
//! | context not present, invalid, unreadable | nothing: the device cannot reach guest memory |
//!
//! What triggers what: a change of TES or the root table, or a context-cache invalidation
//! covering the device, re-reads its context and, if translated, walks its whole table; a
//! global or domain-selective IOTLB invalidation of its domain walks the whole table; a
//! page-selective one walks only its pages (widened to whole host mappings). Only the
//! differences become host operations (unmaps first, then maps; see
//! [`virtual_iommu::shadow`]), so pages the guest did not touch keep their host mapping
//! and DMA to them never sees a gap. The wait descriptor's status write happens during
//! the same register write, but the vCPU polling it resumes only afterwards, so "unmapped
//! and invalidated" means the device can no longer reach the page.

use std::sync::{Arc, Mutex, MutexGuard};

use vfio::DmaRegion;
use virtual_iommu::shadow::{DmaShadow, RamRange, ShadowExtent, ShadowOp};
use virtual_iommu::vtd::dma::walk::{Leaf, Table};
use virtual_iommu::{DeviceView, DmaInvalidation, SourceId};

use super::{DmaEffects, Iommu};

/// Most guest tables one batch walks for one device (bounds the work a guest's loops or
/// huge tables cost; leaves past it stay unmapped).
pub const WALK_BUDGET: usize = 1 << 16;
/// Failed host operations logged at warning level before the rest go to debug.
const LOUD_FAILURES: u64 = 8;

/// Where a device's host DMA mappings are made.
pub trait DmaTarget: Send + Sync {
    /// Maps `region` for the device with the permissions given.
    fn map(&self, region: &DmaRegion, read: bool, write: bool) -> Result<(), String>;
    /// Removes the mapping at `iova` of `size` bytes.
    fn unmap(&self, iova: u64, size: u64) -> Result<(), String>;
}

/// What the shadows did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Register writes that changed some device's host mappings.
    pub batches: u64,
    /// Host map operations issued.
    pub maps: u64,
    /// Host unmap operations issued.
    pub unmaps: u64,
    /// Host operations that failed.
    pub failures: u64,
    /// Whole-table walks (context changes, global and domain-selective invalidations).
    pub full_walks: u64,
}

/// How a device's DMA is shadowed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// All of RAM, identity (translation off or a pass-through context).
    AllRam,
    /// The leaves of the domain's table.
    Translated { domain: u16, table: Table },
    /// Nothing (the context faults).
    Blocked,
}

impl From<DeviceView> for Mode {
    fn from(v: DeviceView) -> Self {
        match v {
            DeviceView::Untranslated | DeviceView::PassThrough { .. } => Mode::AllRam,
            DeviceView::Translated { domain, table } => Mode::Translated { domain, table },
            DeviceView::Blocked { .. } => Mode::Blocked,
        }
    }
}

struct Shadowed {
    name: String,
    sid: SourceId,
    target: Arc<dyn DmaTarget>,
    mode: Mode,
    shadow: DmaShadow,
}

/// The host DMA mappings of every passed-through device behind the VT-d unit.
pub struct DmaShadows {
    ram: Vec<DmaRegion>,
    devices: Mutex<Vec<Shadowed>>,
    stats: Mutex<ShadowStats>,
}

impl DmaShadows {
    /// Shadows over guest RAM `ram` (the regions as DMA-mapped at attach: I/O virtual
    /// address = guest-physical address).
    pub fn new(ram: Vec<DmaRegion>) -> Self {
        DmaShadows {
            ram,
            devices: Mutex::new(Vec::new()),
            stats: Mutex::new(ShadowStats::default()),
        }
    }

    fn devices(&self) -> MutexGuard<'_, Vec<Shadowed>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ram_ranges(&self) -> Vec<RamRange> {
        self.ram
            .iter()
            .map(|r| RamRange {
                gpa: r.iova,
                len: r.size,
            })
            .collect()
    }

    /// Adds device `sid`, whose host mappings are all of guest RAM already (made at
    /// attach, as for a guest that does not translate).
    pub fn add(&self, name: &str, sid: SourceId, target: Arc<dyn DmaTarget>) {
        let mut shadow = DmaShadow::new(self.ram_ranges());
        let identity = shadow.identity();
        // Recorded, not issued: attach mapped exactly these.
        let _ = shadow.replace_all(identity);
        self.devices().push(Shadowed {
            name: name.to_string(),
            sid,
            target,
            mode: Mode::AllRam,
            shadow,
        });
    }

    /// Number of devices shadowed.
    pub fn len(&self) -> usize {
        self.devices().len()
    }

    /// True when no device is shadowed.
    pub fn is_empty(&self) -> bool {
        self.devices().is_empty()
    }

    /// What the shadows did so far.
    pub fn stats(&self) -> ShadowStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host mappings of device `sid` now (for tests and logs).
    pub fn extents(&self, sid: SourceId) -> Vec<ShadowExtent> {
        self.devices()
            .iter()
            .find(|d| d.sid == sid)
            .map(|d| d.shadow.extents().copied().collect())
            .unwrap_or_default()
    }

    /// Brings every device's host mappings in line with the guest's after a register
    /// write with `effects`; returns the host operations issued.
    pub fn apply(&self, iommu: &Iommu, effects: &DmaEffects) -> usize {
        if effects.is_empty() {
            return 0;
        }
        let mut devices = self.devices();
        let mut stats = ShadowStats::default();
        for d in devices.iter_mut() {
            let ops = self.plan(iommu, effects, d, &mut stats);
            if ops.is_empty() {
                continue;
            }
            self.issue(d, &ops, &mut stats);
        }
        let issued = (stats.maps + stats.unmaps) as usize;
        let mut total = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        if issued > 0 {
            total.batches += 1;
        }
        total.maps += stats.maps;
        total.unmaps += stats.unmaps;
        total.failures += stats.failures;
        total.full_walks += stats.full_walks;
        issued
    }

    /// The host operations `effects` call for on device `d` (its shadow updated).
    fn plan(
        &self,
        iommu: &Iommu,
        effects: &DmaEffects,
        d: &mut Shadowed,
        stats: &mut ShadowStats,
    ) -> Vec<ShadowOp> {
        let context_touched = effects.state_changed
            || effects.invalidations.iter().any(|i| match (i, d.mode) {
                (DmaInvalidation::Context(c), Mode::Translated { domain, .. }) => {
                    c.covers(d.sid, domain)
                }
                (DmaInvalidation::Context(c), _) => c.covers_device(d.sid),
                _ => false,
            });
        if context_touched {
            let mode = Mode::from(iommu.dma_view(d.sid));
            if mode != d.mode {
                log::info!(
                    "{}: guest DMA remapping for {:?}: {}",
                    d.name,
                    d.sid,
                    describe(&mode)
                );
            }
            let unchanged_identity = mode == d.mode && mode != Mode::Blocked;
            d.mode = mode;
            return match mode {
                Mode::AllRam if unchanged_identity => Vec::new(),
                Mode::AllRam => {
                    let identity = d.shadow.identity();
                    d.shadow.replace_all(identity)
                }
                Mode::Blocked => d.shadow.clear(),
                Mode::Translated { table, .. } => {
                    stats.full_walks += 1;
                    full_walk(iommu, d, &table)
                }
            };
        }
        let Mode::Translated { domain, table } = d.mode else {
            return Vec::new();
        };
        let mut ops = Vec::new();
        let mut budget = WALK_BUDGET;
        for inv in &effects.invalidations {
            let DmaInvalidation::Iotlb(i) = inv else {
                continue;
            };
            if !i.covers_domain(domain) {
                continue;
            }
            let (start, end) = i.range();
            if (start, end) == (0, u64::MAX) {
                stats.full_walks += 1;
                ops.extend(full_walk(iommu, d, &table));
                continue;
            }
            ops.extend(d.shadow.update(start, end, |s, e| {
                iommu.dma_leaves(&table, s, e, &mut budget).leaves
            }));
        }
        ops
    }

    /// Issues `ops` on `d`'s target (unmaps and maps in the order given).
    fn issue(&self, d: &Shadowed, ops: &[ShadowOp], stats: &mut ShadowStats) {
        for op in ops {
            let result = match *op {
                ShadowOp::Unmap { iova, len } => {
                    stats.unmaps += 1;
                    d.target.unmap(iova, len)
                }
                ShadowOp::Map(x) => {
                    stats.maps += 1;
                    match self.region(&x) {
                        Some(r) => d.target.map(&r, x.read, x.write),
                        None => Err(format!("{:#x} is not guest RAM", x.gpa)),
                    }
                }
            };
            if let Err(e) = result {
                stats.failures += 1;
                let so_far = self.stats().failures + stats.failures;
                if so_far <= LOUD_FAILURES {
                    log::warn!("{}: shadowing DMA mapping {op:x?}: {e}", d.name);
                } else {
                    log::debug!("{}: shadowing DMA mapping {op:x?}: {e}", d.name);
                }
            }
        }
    }

    /// The host view of `x`: its RAM region's host address and file offset.
    fn region(&self, x: &ShadowExtent) -> Option<DmaRegion> {
        let r = self
            .ram
            .iter()
            .find(|r| x.gpa >= r.iova && x.gpa - r.iova < r.size)?;
        let offset = x.gpa - r.iova;
        if x.len > r.size - offset {
            return None;
        }
        Some(DmaRegion {
            iova: x.iova,
            size: x.len,
            host_addr: r.host_addr.checked_add(offset)?,
            fd: r.fd,
            fd_offset: r.fd_offset.checked_add(offset)?,
        })
    }
}

/// Makes `d`'s shadow equal to every leaf of `table`.
fn full_walk(iommu: &Iommu, d: &mut Shadowed, table: &Table) -> Vec<ShadowOp> {
    let mut budget = WALK_BUDGET;
    let scan = iommu.dma_leaves(table, 0, u64::MAX, &mut budget);
    if scan.truncated {
        log::warn!(
            "{}: the guest's DMA table for {:?} has more than {WALK_BUDGET} tables; the rest is not mapped",
            d.name,
            d.sid
        );
    }
    let target: Vec<ShadowExtent> = scan
        .leaves
        .iter()
        .flat_map(|l: &Leaf| d.shadow.extents_of(l))
        .collect();
    d.shadow.replace_all(target)
}

fn describe(mode: &Mode) -> String {
    match mode {
        Mode::AllRam => "all of RAM (untranslated or pass-through)".into(),
        Mode::Translated { domain, table } => format!(
            "domain {domain}, {}-level table at {:#x}",
            table.levels.count(),
            table.root
        ),
        Mode::Blocked => "blocked (context not usable)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtual_iommu::vtd::dma::context::{build as ctx, AW_48};
    use virtual_iommu::vtd::dma::walk::build as sl;
    use virtual_iommu::vtd::regs::{
        CCMD_CIRG_SHIFT, CCMD_ICC, CCMD_REG, CCMD_SID_SHIFT, GCMD_REG, GCMD_SRTP, GCMD_TE,
        GRANULARITY_DEVICE_OR_PAGE, GRANULARITY_GLOBAL, IOTLB_DID_SHIFT, IOTLB_IIRG_SHIFT,
        IOTLB_IVT, IOTLB_REG, IVA_REG, RTADDR_REG,
    };
    use virtual_iommu::VtdConfig;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const RAM: u64 = 0x100_0000;
    const ROOT: u64 = 0x1000;
    const CONTEXT: u64 = 0x2000;
    const PML4: u64 = 0x3000;
    const PDPT: u64 = 0x4000;
    const PD: u64 = 0x5000;
    const PT: u64 = 0x6000;
    const DOMAIN: u16 = 4;
    const SID: SourceId = SourceId(0x0008);

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Recorder {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl DmaTarget for Recorder {
        fn map(&self, r: &DmaRegion, read: bool, write: bool) -> Result<(), String> {
            self.0.lock().unwrap().push(format!(
                "map {:#x}+{:#x} host {:#x} off {:#x} {}{}",
                r.iova,
                r.size,
                r.host_addr,
                r.fd_offset,
                if read { "r" } else { "-" },
                if write { "w" } else { "-" }
            ));
            Ok(())
        }

        fn unmap(&self, iova: u64, size: u64) -> Result<(), String> {
            self.0
                .lock()
                .unwrap()
                .push(format!("unmap {iova:#x}+{size:#x}"));
            Ok(())
        }
    }

    struct Rig {
        mem: GuestMemoryMmap,
        iommu: Iommu,
        shadows: DmaShadows,
        rec: Arc<Recorder>,
    }

    impl Rig {
        fn new() -> Rig {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
            let iommu = Iommu::new(VtdConfig::default(), mem.clone());
            let shadows = DmaShadows::new(vec![DmaRegion {
                iova: 0,
                size: RAM,
                host_addr: 0x7f00_0000_0000,
                fd: -1,
                fd_offset: 0x1000_0000,
            }]);
            let rec = Arc::new(Recorder::default());
            shadows.add("dev", SID, rec.clone());
            Rig {
                mem,
                iommu,
                shadows,
                rec,
            }
        }

        fn put(&self, gpa: u64, v: u64) {
            self.mem.write_obj(v, GuestAddress(gpa)).unwrap();
        }

        fn write(&self, offset: u64, value: u64, len: usize) -> usize {
            let bytes = value.to_le_bytes();
            let (_, dma) = self.iommu.mmio_write(offset, &bytes[..len]);
            self.shadows.apply(&self.iommu, &dma)
        }

        /// Root, context (domain 4, 4 levels) and the tables down to PT for IOVA 0..2 MiB.
        fn tables(&self) {
            let (lo, hi) = ctx::root(CONTEXT);
            self.put(ROOT, lo);
            self.put(ROOT + 8, hi);
            let (lo, hi) = ctx::translated(PML4, AW_48, DOMAIN, false);
            self.put(CONTEXT + 16 * u64::from(SID.0 & 0xff), lo);
            self.put(CONTEXT + 16 * u64::from(SID.0 & 0xff) + 8, hi);
            self.put(PML4, sl::table(PDPT, true, true));
            self.put(PDPT, sl::table(PD, true, true));
            self.put(PD, sl::table(PT, true, true));
        }

        fn page(&self, iova: u64, gpa: u64, write: bool) {
            self.put(PT + 8 * sl::index(iova, 1), sl::page(gpa, true, write));
        }

        fn psi(&self, iova: u64) -> usize {
            self.write(IVA_REG, iova, 8);
            self.write(
                IOTLB_REG,
                IOTLB_IVT
                    | (GRANULARITY_DEVICE_OR_PAGE << IOTLB_IIRG_SHIFT)
                    | (u64::from(DOMAIN) << IOTLB_DID_SHIFT),
                8,
            )
        }
    }

    #[test]
    fn guest_maps_and_unmaps_become_host_maps_and_unmaps() {
        let rig = Rig::new();
        assert_eq!(rig.shadows.extents(SID).len(), 1, "all of RAM at attach");
        rig.tables();
        rig.page(0x1000, 0x10_0000, true);
        rig.write(RTADDR_REG, ROOT, 8);
        // SRTP with translation off: nothing changes.
        assert_eq!(rig.write(GCMD_REG, u64::from(GCMD_SRTP), 4), 0);
        // TE: RAM unmapped, the one leaf mapped.
        assert_eq!(rig.write(GCMD_REG, u64::from(GCMD_TE), 4), 2);
        assert_eq!(
            rig.rec.take(),
            vec![
                "unmap 0x0+0x1000000",
                "map 0x1000+0x1000 host 0x7f0000100000 off 0x10100000 rw"
            ]
        );
        // A new read-only page, announced by a page-selective invalidation.
        rig.page(0x2000, 0x20_0000, false);
        assert_eq!(rig.psi(0x2000), 1);
        assert_eq!(
            rig.rec.take(),
            vec!["map 0x2000+0x1000 host 0x7f0000200000 off 0x10200000 r-"]
        );
        // Remapped page: its old mapping goes, the new one comes; 0x1000 untouched.
        rig.page(0x2000, 0x30_0000, true);
        assert_eq!(rig.psi(0x2000), 2);
        assert_eq!(
            rig.rec.take(),
            vec![
                "unmap 0x2000+0x1000",
                "map 0x2000+0x1000 host 0x7f0000300000 off 0x10300000 rw"
            ]
        );
        // Unmapped.
        rig.put(PT + 8, 0);
        assert_eq!(rig.psi(0x1000), 1);
        assert_eq!(rig.rec.take(), vec!["unmap 0x1000+0x1000"]);
        // Another domain's invalidation: nothing.
        rig.write(IVA_REG, 0x2000, 8);
        rig.write(
            IOTLB_REG,
            IOTLB_IVT | (3 << IOTLB_IIRG_SHIFT) | (9 << IOTLB_DID_SHIFT),
            8,
        );
        assert!(rig.rec.take().is_empty());
        // A leaf beyond RAM is not mapped.
        rig.page(0x5000, 0x4000_0000, true);
        assert_eq!(rig.psi(0x5000), 0);
        // Context made not present + device-selective context invalidation: nothing left.
        rig.put(CONTEXT + 16 * u64::from(SID.0 & 0xff), 0);
        rig.write(
            CCMD_REG,
            CCMD_ICC
                | (GRANULARITY_DEVICE_OR_PAGE << CCMD_CIRG_SHIFT)
                | (u64::from(SID.0) << CCMD_SID_SHIFT),
            8,
        );
        assert_eq!(rig.rec.take(), vec!["unmap 0x2000+0x1000"]);
        assert!(rig.shadows.extents(SID).is_empty());
        // Translation off: all of RAM again.
        rig.write(GCMD_REG, 0, 4);
        assert_eq!(
            rig.rec.take(),
            vec!["map 0x0+0x1000000 host 0x7f0000000000 off 0x10000000 rw"]
        );
        let st = rig.shadows.stats();
        assert_eq!((st.maps, st.unmaps, st.failures), (4, 4, 0));
    }

    #[test]
    fn global_invalidation_rewalks_and_superpages_map_whole() {
        let rig = Rig::new();
        rig.tables();
        rig.write(RTADDR_REG, ROOT, 8);
        rig.write(GCMD_REG, u64::from(GCMD_SRTP), 4);
        rig.write(GCMD_REG, u64::from(GCMD_TE), 4);
        rig.rec.take();
        // A 2 MiB superpage at IOVA 2 MiB, then a global IOTLB invalidation.
        rig.put(PD + 8, sl::superpage(0x40_0000, true, true));
        rig.write(
            IOTLB_REG,
            IOTLB_IVT | (GRANULARITY_GLOBAL << IOTLB_IIRG_SHIFT),
            8,
        );
        assert_eq!(
            rig.rec.take(),
            vec!["map 0x200000+0x200000 host 0x7f0000400000 off 0x10400000 rw"]
        );
        assert_eq!(rig.shadows.stats().full_walks, 2);
    }

    #[test]
    fn pass_through_context_maps_all_of_ram() {
        let rig = Rig::new();
        rig.tables();
        rig.page(0x1000, 0x10_0000, true);
        rig.write(RTADDR_REG, ROOT, 8);
        rig.write(GCMD_REG, u64::from(GCMD_SRTP), 4);
        rig.write(GCMD_REG, u64::from(GCMD_TE), 4);
        rig.rec.take();
        // The guest makes the device's context pass-through and invalidates it.
        let (lo, hi) = ctx::pass_through(DOMAIN);
        rig.put(CONTEXT + 16 * u64::from(SID.0 & 0xff), lo);
        rig.put(CONTEXT + 16 * u64::from(SID.0 & 0xff) + 8, hi);
        rig.write(
            CCMD_REG,
            CCMD_ICC | (GRANULARITY_GLOBAL << CCMD_CIRG_SHIFT),
            8,
        );
        assert_eq!(
            rig.rec.take(),
            vec![
                "unmap 0x1000+0x1000",
                "map 0x0+0x1000000 host 0x7f0000000000 off 0x10000000 rw"
            ]
        );
        // Page-selective invalidations change nothing for a pass-through device.
        assert_eq!(rig.psi(0x1000), 0);
    }
}
