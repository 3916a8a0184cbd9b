//! Shadowing a device's DMA mappings into a host IOMMU: which host mappings to remove and
//! which to add when the guest's mappings for a range changed.
//!
//! A passed-through device's DMA goes through the host's IOMMU (kernel VFIO's container,
//! or a vfio-user server's DMA_MAP table), not through the emulated unit. So the VMM keeps
//! the host's mappings for the device equal to what the guest's tables say: one host
//! mapping ([`ShadowExtent`]) per guest leaf (a 4 KiB, 2 MiB or 1 GiB page, cut where
//! guest RAM ends; what is not RAM, and the interrupt window 0xFEEx_xxxx, which VT-d never
//! translates, are left out), or all of RAM when the guest does not translate. Leaves are
//! never merged: a later change of one page then touches only that page's host mapping,
//! so DMA to the device's other pages never sees a gap.
//!
//! [`DmaShadow::update`] is called with the range an invalidation covers and a walker
//! that returns the guest's current leaves for a range; it widens the range to whole old
//! and new mappings (host IOMMUs unmap only whole mappings), compares, and returns the
//! operations: unmaps first, then maps, so a remapped page never overlaps its old mapping.
//! The number of host mappings is bounded ([`MAX_EXTENTS`], kernel VFIO's default
//! `dma_entry_limit`); leaves beyond it are not mapped (DMA there fails, never reaches
//! memory the guest did not map).

use std::collections::BTreeMap;

use crate::vtd::dma::walk::Leaf;

/// Most host mappings one device's shadow holds (vfio_iommu_type1's default
/// `dma_entry_limit` is 65535).
pub const MAX_EXTENTS: usize = 65535;
/// The interrupt window (VT-d: DMA writes to 0xFEEx_xxxx are interrupt requests).
pub const INTERRUPT_WINDOW: (u64, u64) = (0xfee0_0000, 0xfef0_0000);
/// How many times [`DmaShadow::update`] widens its range before giving up widening (each
/// step at least doubles nothing pathological: leaves are at most 1 GiB).
const MAX_WIDENING: usize = 8;

/// A guest RAM range (guest-physical).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RamRange {
    /// First guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One host mapping: `[iova, iova + len)` reaches guest RAM `[gpa, gpa + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShadowExtent {
    /// I/O virtual address.
    pub iova: u64,
    /// Guest-physical address (inside one [`RamRange`]).
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
}

impl ShadowExtent {
    fn end(&self) -> u64 {
        self.iova.saturating_add(self.len)
    }
}

/// What the host IOMMU must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShadowOp {
    /// Remove the mapping at `iova` of `len` bytes (made by an earlier `Map`).
    Unmap {
        /// Its I/O virtual address.
        iova: u64,
        /// Its length.
        len: u64,
    },
    /// Add this mapping.
    Map(ShadowExtent),
}

/// The host mappings of one device.
#[derive(Clone, Debug)]
pub struct DmaShadow {
    ram: Vec<RamRange>,
    extents: BTreeMap<u64, ShadowExtent>,
    /// Leaves not mapped because [`MAX_EXTENTS`] was reached.
    dropped: u64,
}

impl DmaShadow {
    /// An empty shadow over guest RAM `ram`.
    pub fn new(mut ram: Vec<RamRange>) -> Self {
        ram.sort_by_key(|r| r.gpa);
        DmaShadow {
            ram,
            extents: BTreeMap::new(),
            dropped: 0,
        }
    }

    /// The host mappings now, by I/O virtual address.
    pub fn extents(&self) -> impl Iterator<Item = &ShadowExtent> {
        self.extents.values()
    }

    /// Number of host mappings.
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    /// True when nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Leaves left unmapped so far because the shadow was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// All of guest RAM at I/O virtual address = guest-physical address, read and write:
    /// what a device reaches while the guest does not translate its DMA.
    pub fn identity(&self) -> Vec<ShadowExtent> {
        self.ram
            .iter()
            .flat_map(|r| {
                split_out_window(ShadowExtent {
                    iova: r.gpa,
                    gpa: r.gpa,
                    len: r.len,
                    read: true,
                    write: true,
                })
            })
            .collect()
    }

    /// `leaf` as host mappings: cut at the edges of guest RAM, without the interrupt
    /// window, nothing for a leaf with neither permission.
    pub fn extents_of(&self, leaf: &Leaf) -> Vec<ShadowExtent> {
        let mut out = Vec::new();
        if !leaf.read && !leaf.write {
            return out;
        }
        let gpa_end = leaf.gpa.saturating_add(leaf.size);
        for r in &self.ram {
            let r_end = r.gpa.saturating_add(r.len);
            let start = leaf.gpa.max(r.gpa);
            let end = gpa_end.min(r_end);
            if start >= end {
                continue;
            }
            let Some(iova) = leaf.iova.checked_add(start - leaf.gpa) else {
                continue;
            };
            out.extend(split_out_window(ShadowExtent {
                iova,
                gpa: start,
                len: end - start,
                read: leaf.read,
                write: leaf.write,
            }));
        }
        out
    }

    /// Makes the shadow equal to `target` everywhere: unmaps what is not in it, maps what
    /// is new.
    pub fn replace_all(&mut self, target: Vec<ShadowExtent>) -> Vec<ShadowOp> {
        let old: Vec<ShadowExtent> = self.extents.values().copied().collect();
        self.reconcile(old, target)
    }

    /// Unmaps everything.
    pub fn clear(&mut self) -> Vec<ShadowOp> {
        self.replace_all(Vec::new())
    }

    /// Makes the shadow equal to the guest's leaves over `[start, end)`: `walk(s, e)`
    /// returns the leaves overlapping `[s, e)`. The range is widened to whole old
    /// mappings and whole new leaves (bounded), so no host mapping is ever split.
    pub fn update(
        &mut self,
        start: u64,
        end: u64,
        mut walk: impl FnMut(u64, u64) -> Vec<Leaf>,
    ) -> Vec<ShadowOp> {
        let (mut s, mut e) = (start, end.max(start));
        let mut leaves = Vec::new();
        for _ in 0..MAX_WIDENING {
            let (os, oe) = self.span_of_overlapping(s, e);
            let (ws, we) = (s.min(os), e.max(oe));
            leaves = walk(ws, we);
            let ls = leaves.iter().map(|l| l.iova).min().unwrap_or(ws);
            let le = leaves
                .iter()
                .map(|l| l.iova.saturating_add(l.size))
                .max()
                .unwrap_or(we);
            let (ns, ne) = (ws.min(ls), we.max(le));
            let (os2, oe2) = self.span_of_overlapping(ns, ne);
            let (ns, ne) = (ns.min(os2), ne.max(oe2));
            let stable = (ns, ne) == (ws, we);
            s = ns;
            e = ne;
            if stable {
                break;
            }
        }
        let old: Vec<ShadowExtent> = self
            .extents
            .range(..e)
            .map(|(_, x)| *x)
            .filter(|x| x.end() > s)
            .collect();
        let new: Vec<ShadowExtent> = leaves.iter().flat_map(|l| self.extents_of(l)).collect();
        self.reconcile(old, new)
    }

    /// The span of `[s, e)` and every extent overlapping it.
    fn span_of_overlapping(&self, s: u64, e: u64) -> (u64, u64) {
        let mut span = (s, e);
        // The extent starting before `s` may reach into the range.
        if let Some((_, x)) = self.extents.range(..s).next_back() {
            if x.end() > s {
                span.0 = span.0.min(x.iova);
                span.1 = span.1.max(x.end());
            }
        }
        if let Some((_, x)) = self.extents.range(s..e).next_back() {
            span.1 = span.1.max(x.end());
        }
        span
    }

    /// Replaces the extents `old` (all in the map) with `new`, returning the operations.
    fn reconcile(&mut self, old: Vec<ShadowExtent>, new: Vec<ShadowExtent>) -> Vec<ShadowOp> {
        let mut ops = Vec::new();
        for o in &old {
            if !new.contains(o) {
                self.extents.remove(&o.iova);
                ops.push(ShadowOp::Unmap {
                    iova: o.iova,
                    len: o.len,
                });
            }
        }
        for n in new {
            if old.contains(&n) {
                continue;
            }
            if self.extents.len() >= MAX_EXTENTS {
                self.dropped += 1;
                continue;
            }
            // Never map over something still there (a leaf overlapping an extent outside
            // what was compared cannot happen after widening; stay safe regardless).
            let overlaps = self
                .extents
                .range(..n.end())
                .next_back()
                .is_some_and(|(_, x)| x.end() > n.iova);
            if overlaps {
                self.dropped += 1;
                continue;
            }
            self.extents.insert(n.iova, n);
            ops.push(ShadowOp::Map(n));
        }
        ops
    }
}

/// `x` without the part in the interrupt window.
fn split_out_window(x: ShadowExtent) -> Vec<ShadowExtent> {
    let (ws, we) = INTERRUPT_WINDOW;
    let end = x.end();
    if end <= ws || x.iova >= we {
        return vec![x];
    }
    let mut out = Vec::new();
    if x.iova < ws {
        out.push(ShadowExtent {
            len: ws - x.iova,
            ..x
        });
    }
    if end > we {
        let skip = we - x.iova;
        out.push(ShadowExtent {
            iova: we,
            gpa: x.gpa + skip,
            len: end - we,
            ..x
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: [RamRange; 2] = [
        RamRange {
            gpa: 0,
            len: 0x800_0000,
        },
        RamRange {
            gpa: 0x1_0000_0000,
            len: 0x10_0000,
        },
    ];

    fn leaf(iova: u64, gpa: u64, size: u64, write: bool) -> Leaf {
        Leaf {
            iova,
            gpa,
            size,
            read: true,
            write,
        }
    }

    fn ext(iova: u64, gpa: u64, len: u64, write: bool) -> ShadowExtent {
        ShadowExtent {
            iova,
            gpa,
            len,
            read: true,
            write,
        }
    }

    /// A walker over a fixed set of guest leaves.
    fn walker(leaves: &[Leaf]) -> impl FnMut(u64, u64) -> Vec<Leaf> + '_ {
        move |s, e| {
            leaves
                .iter()
                .copied()
                .filter(|l| l.iova < e && l.iova + l.size > s)
                .collect()
        }
    }

    #[test]
    fn identity_covers_ram() {
        let s = DmaShadow::new(RAM.to_vec());
        assert_eq!(
            s.identity(),
            vec![
                ext(0, 0, 0x800_0000, true),
                ext(0x1_0000_0000, 0x1_0000_0000, 0x10_0000, true)
            ]
        );
    }

    #[test]
    fn leaves_are_cut_at_ram_and_the_interrupt_window() {
        let s = DmaShadow::new(RAM.to_vec());
        // A 1 GiB leaf over GPA 0: only the RAM part.
        assert_eq!(
            s.extents_of(&leaf(0x40_0000_0000, 0, 0x4000_0000, true)),
            vec![ext(0x40_0000_0000, 0, 0x800_0000, true)]
        );
        // Beyond RAM: nothing.
        assert!(s.extents_of(&leaf(0, 0x2000_0000, 0x1000, true)).is_empty());
        // IOVA in the interrupt window: left out.
        assert!(s
            .extents_of(&leaf(0xfee0_0000, 0x1000, 0x1000, true))
            .is_empty());
        let around = s.extents_of(&leaf(0xfec0_0000, 0, 0x40_0000, true));
        assert_eq!(
            around,
            vec![
                ext(0xfec0_0000, 0, 0x20_0000, true),
                ext(0xfef0_0000, 0x30_0000, 0x10_0000, true)
            ]
        );
        // No permission, no mapping.
        let none = Leaf {
            read: false,
            write: false,
            ..leaf(0, 0, 0x1000, false)
        };
        assert!(s.extents_of(&none).is_empty());
    }

    #[test]
    fn map_remap_unmap_touch_only_the_changed_page() {
        let mut s = DmaShadow::new(RAM.to_vec());
        let mut guest = vec![
            leaf(0x1000, 0x5000, 0x1000, true),
            leaf(0x2000, 0x6000, 0x1000, false),
        ];
        let ops = s.update(0, u64::MAX, walker(&guest));
        assert_eq!(
            ops,
            vec![
                ShadowOp::Map(ext(0x1000, 0x5000, 0x1000, true)),
                ShadowOp::Map(ext(0x2000, 0x6000, 0x1000, false))
            ]
        );
        // Page 0x2000 remapped: one unmap, one map; page 0x1000 untouched.
        guest[1] = leaf(0x2000, 0x7000, 0x1000, true);
        let ops = s.update(0x2000, 0x3000, walker(&guest));
        assert_eq!(
            ops,
            vec![
                ShadowOp::Unmap {
                    iova: 0x2000,
                    len: 0x1000
                },
                ShadowOp::Map(ext(0x2000, 0x7000, 0x1000, true))
            ]
        );
        // Unchanged: nothing to do.
        assert!(s.update(0, u64::MAX, walker(&guest)).is_empty());
        // Unmapped in the guest.
        guest.remove(0);
        let ops = s.update(0x1000, 0x2000, walker(&guest));
        assert_eq!(
            ops,
            vec![ShadowOp::Unmap {
                iova: 0x1000,
                len: 0x1000
            }]
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s.clear().len(), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn superpage_replaced_by_small_pages_is_never_split() {
        let mut s = DmaShadow::new(RAM.to_vec());
        let guest = vec![leaf(0x20_0000, 0x40_0000, 0x20_0000, true)];
        s.update(0, u64::MAX, walker(&guest));
        // The guest replaces the 2 MiB page with two 4 KiB pages and invalidates only one.
        let guest = vec![
            leaf(0x20_0000, 0x40_0000, 0x1000, true),
            leaf(0x20_1000, 0x40_1000, 0x1000, true),
        ];
        let ops = s.update(0x20_1000, 0x20_2000, walker(&guest));
        assert_eq!(
            ops,
            vec![
                ShadowOp::Unmap {
                    iova: 0x20_0000,
                    len: 0x20_0000
                },
                ShadowOp::Map(ext(0x20_0000, 0x40_0000, 0x1000, true)),
                ShadowOp::Map(ext(0x20_1000, 0x40_1000, 0x1000, true))
            ]
        );
        // And back: the small pages go, the superpage comes.
        let guest = vec![leaf(0x20_0000, 0x40_0000, 0x20_0000, true)];
        let ops = s.update(0x20_0000, 0x20_1000, walker(&guest));
        assert_eq!(ops.len(), 3);
        assert_eq!(
            ops[2],
            ShadowOp::Map(ext(0x20_0000, 0x40_0000, 0x20_0000, true))
        );
    }

    #[test]
    fn replace_all_switches_between_identity_and_translation() {
        let mut s = DmaShadow::new(RAM.to_vec());
        let id = s.identity();
        assert_eq!(s.replace_all(id.clone()).len(), 2);
        let ops = s.replace_all(vec![ext(0x1000, 0x5000, 0x1000, true)]);
        assert_eq!(ops.len(), 3);
        assert!(matches!(ops[0], ShadowOp::Unmap { .. }));
        assert!(matches!(ops[2], ShadowOp::Map(_)));
        let ops = s.replace_all(id);
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn the_shadow_is_bounded() {
        let mut s = DmaShadow::new(RAM.to_vec());
        let guest: Vec<Leaf> = (0..MAX_EXTENTS as u64 + 10)
            .map(|i| leaf(i << 12, (i % 0x8000) << 12, 0x1000, true))
            .collect();
        let ops = s.update(0, u64::MAX, walker(&guest));
        assert_eq!(ops.len(), MAX_EXTENTS);
        assert_eq!(s.len(), MAX_EXTENTS);
        assert_eq!(s.dropped(), 10);
    }
}
