//! Where the guest-visible MSI-X table lives, and which parts of the device's BARs are
//! mapped into the guest (no VM exit) or trapped.
//!
//! The guest-visible table and PBA are emulated (the physical table belongs to the host,
//! which writes its own messages there) except with `msix=direct`:
//!
//! * **relocate**: the device's BARs are mapped whole, table and PBA pages included, and
//!   the guest's MSI-X capability points at a table in a BAR irvmm adds (the first free
//!   BAR index), or, when the device uses every index, in the upper half of the table's
//!   BAR, doubled. No device register traps. Only safe when the host isolates the device's
//!   MSIs, since the guest can then write the physical table.
//! * **trap**: the pages holding the table and PBA trap; irvmm emulates the table there and
//!   forwards other registers on those pages; the rest of the BAR is mapped.
//! * **direct** (vfio-user only): the guest programs the device's own table, mapped like the
//!   rest of the BAR; irvmm reads messages from it when needed (see the router's direct
//!   vectors).
//! * **auto**: relocate when the host isolates MSIs and a BAR can hold the table, else trap;
//!   the decision and its reason are logged.

use devices::pci::config::{BarKind, PCI_BAR_MEM32_MAX_SIZE};
use devices::pci::msix::MsixLayout;
use thiserror::Error;

use super::layout::DeviceLayout;
use crate::backend::{BackendKind, Isolation};
use crate::caps::SparseArea;

/// Host page size BAR mappings are aligned to.
pub const PAGE_SIZE: u64 = 4096;

/// What the user asked for (`msix=` of `--device vfio` / `vfio-user`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MsixPolicy {
    /// Relocate when isolated and possible, else trap.
    #[default]
    Auto,
    /// Relocate (refused when impossible).
    Relocate,
    /// Trap the table and PBA pages.
    Trap,
    /// The guest programs the device's own table (vfio-user servers that honour it).
    Direct,
}

/// Where the guest-visible table and PBA are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixPlacement {
    /// Emulated where the device has them; their pages trap.
    Trap,
    /// Emulated in BAR `bar`, added by irvmm (32-bit memory, `size` bytes).
    Relocated {
        /// The added BAR's index.
        bar: u8,
        /// Its size.
        size: u64,
    },
    /// Emulated in the upper half of the table's BAR, whose size irvmm doubled.
    Doubled {
        /// The BAR.
        bar: u8,
        /// The device's size of it (the emulated table starts here).
        device_size: u64,
    },
    /// The device's own table (not emulated).
    Direct,
}

/// The placement and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsixDecision {
    /// Where the table goes.
    pub placement: MsixPlacement,
    /// A clause for the log line.
    pub reason: String,
}

/// A placement the user asked for that cannot be made.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    /// `msix=relocate` but no BAR index is free and the table's BAR cannot be doubled.
    #[error("msix=relocate: the device uses every BAR index and BAR {0} cannot be doubled; use msix=trap or msix=auto")]
    NoFreeBar(u8),
    /// `msix=direct` with kernel VFIO.
    #[error("msix=direct needs a vfio-user device (the host owns a kernel device's MSI-X table); use msix=auto")]
    DirectNeedsUser,
    /// `msix=direct` but the table or PBA is not in a mappable area.
    #[error(
        "msix=direct: the server does not offer its MSI-X {0} in a mappable area; use msix=auto"
    )]
    DirectNotMappable(&'static str),
    /// `msix=relocate`/`direct` on a device without MSI-X.
    #[error("msix={0}: the device has no MSI-X capability; leave msix= out")]
    NoMsix(&'static str),
}

fn round_up(v: u64) -> u64 {
    v.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// Size of an emulated table + PBA block: table at 0, PBA on the next page boundary.
pub fn emulated_block_size(layout: &MsixLayout) -> u64 {
    (round_up(layout.table_size()) + round_up(layout.pba_size())).next_power_of_two()
}

/// The guest-visible MSI-X layout for `placement` (the device's own for trap/direct).
pub fn guest_msix_layout(device: &MsixLayout, placement: MsixPlacement) -> MsixLayout {
    let (bar, base) = match placement {
        MsixPlacement::Trap | MsixPlacement::Direct => return *device,
        MsixPlacement::Relocated { bar, .. } => (bar, 0u64),
        MsixPlacement::Doubled { bar, device_size } => (bar, device_size),
    };
    MsixLayout {
        vectors: device.vectors,
        table_bar: bar,
        table_offset: base as u32,
        pba_bar: bar,
        pba_offset: (base + round_up(device.table_size())) as u32,
    }
}

/// Where a relocated table can go: a free BAR index, else the table's BAR doubled.
fn relocation(layout: &DeviceLayout, msix: &MsixLayout) -> Option<MsixPlacement> {
    let need = emulated_block_size(msix);
    if let Some(&bar) = layout.free_bar_indices().first() {
        return Some(MsixPlacement::Relocated { bar, size: need });
    }
    let bar = layout.bar(msix.table_bar)?;
    let max = match bar.kind {
        BarKind::Io => return None,
        BarKind::Memory32 => PCI_BAR_MEM32_MAX_SIZE / 2,
        BarKind::Memory64 => 1 << 40,
    };
    (bar.size >= need && bar.size <= max).then_some(MsixPlacement::Doubled {
        bar: bar.index,
        device_size: bar.size,
    })
}

/// Decides where the guest-visible table goes.
pub fn decide(
    policy: MsixPolicy,
    layout: &DeviceLayout,
    kind: BackendKind,
    isolation: &Isolation,
    table_mappable: bool,
) -> Result<MsixDecision, PlanError> {
    let Some(msix) = layout.msix.map(|m| m.layout) else {
        return match policy {
            MsixPolicy::Relocate => Err(PlanError::NoMsix("relocate")),
            MsixPolicy::Direct => Err(PlanError::NoMsix("direct")),
            MsixPolicy::Auto | MsixPolicy::Trap => Ok(MsixDecision {
                placement: MsixPlacement::Trap,
                reason: "the device has no MSI-X".into(),
            }),
        };
    };
    let placed = |placement: MsixPlacement, reason: String| Ok(MsixDecision { placement, reason });
    match policy {
        MsixPolicy::Trap => placed(MsixPlacement::Trap, "msix=trap".into()),
        MsixPolicy::Direct => {
            if kind != BackendKind::User {
                return Err(PlanError::DirectNeedsUser);
            }
            if !table_mappable {
                return Err(PlanError::DirectNotMappable("table and PBA"));
            }
            placed(
                MsixPlacement::Direct,
                "msix=direct: the guest programs the device's own table".into(),
            )
        }
        MsixPolicy::Relocate => match relocation(layout, &msix) {
            Some(p) => placed(p, format!("msix=relocate ({})", isolation.reason)),
            None => Err(PlanError::NoFreeBar(msix.table_bar)),
        },
        MsixPolicy::Auto if !isolation.isolated => placed(
            MsixPlacement::Trap,
            format!(
                "msix=auto: the host does not isolate MSIs ({})",
                isolation.reason
            ),
        ),
        MsixPolicy::Auto => match relocation(layout, &msix) {
            Some(p) => placed(p, format!("msix=auto: {}", isolation.reason)),
            None => placed(
                MsixPlacement::Trap,
                format!(
                    "msix=auto: no free BAR index and BAR {} cannot be doubled",
                    msix.table_bar
                ),
            ),
        },
    }
}

/// A part of a device BAR to map into the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapArea {
    /// BAR index.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u64,
    /// Size in bytes (whole pages).
    pub size: u64,
}

/// Removes `[start, end)` from `areas`.
fn punch(areas: Vec<(u64, u64)>, start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (a, b) in areas {
        if end <= a || start >= b {
            out.push((a, b));
            continue;
        }
        if a < start {
            out.push((a, start));
        }
        if end < b {
            out.push((end, b));
        }
    }
    out
}

/// The parts of memory BAR `bar` (device size `bar_size`) to map: the device's mmap
/// areas, page-aligned inward, minus the table and PBA pages when they trap.
pub fn map_areas(
    bar: u8,
    bar_size: u64,
    mmap: &[SparseArea],
    msix: Option<&MsixLayout>,
    placement: MsixPlacement,
) -> Vec<MapArea> {
    let mut areas: Vec<(u64, u64)> = mmap
        .iter()
        .filter_map(|a| {
            let start = round_up(a.offset);
            let end = (a.offset.checked_add(a.size)?.min(bar_size) / PAGE_SIZE) * PAGE_SIZE;
            (start < end).then_some((start, end))
        })
        .collect();
    if let (Some(m), MsixPlacement::Trap) = (msix, placement) {
        for (b, off, len) in [
            (m.table_bar, m.table_offset, m.table_size()),
            (m.pba_bar, m.pba_offset, m.pba_size()),
        ] {
            if b == bar {
                let start = (u64::from(off) / PAGE_SIZE) * PAGE_SIZE;
                let end = round_up(u64::from(off) + len);
                areas = punch(areas, start, end);
            }
        }
    }
    areas
        .into_iter()
        .map(|(a, b)| MapArea {
            bar,
            offset: a,
            size: b - a,
        })
        .collect()
}

/// True when `[off, off + len)` of a BAR lies inside one of `mmap`'s areas.
pub fn covered(mmap: &[SparseArea], off: u64, len: u64) -> bool {
    mmap.iter().any(|a| {
        a.offset <= off
            && off
                .checked_add(len)
                .zip(a.offset.checked_add(a.size))
                .is_some_and(|(e, ae)| e <= ae)
    })
}

#[cfg(test)]
mod tests {
    use super::super::layout::tests::{testdev_config, testdev_facts};
    use super::super::layout::{read_layout, BarInfo};
    use super::*;

    fn iso(isolated: bool) -> Isolation {
        Isolation {
            isolated,
            reason: if isolated { "isolated" } else { "not isolated" }.into(),
        }
    }

    fn testdev() -> DeviceLayout {
        read_layout(&testdev_config(256), &testdev_facts(256)).unwrap()
    }

    #[test]
    fn auto_relocates_to_the_first_free_bar_when_isolated() {
        let l = testdev();
        let d = decide(MsixPolicy::Auto, &l, BackendKind::User, &iso(true), true).unwrap();
        assert_eq!(
            d.placement,
            MsixPlacement::Relocated {
                bar: 2,
                size: 0x2000
            }
        );
        let g = guest_msix_layout(&l.msix.unwrap().layout, d.placement);
        assert_eq!(
            (g.table_bar, g.table_offset, g.pba_bar, g.pba_offset),
            (2, 0, 2, 0x1000)
        );
        let d = decide(MsixPolicy::Auto, &l, BackendKind::Kernel, &iso(false), true).unwrap();
        assert_eq!(d.placement, MsixPlacement::Trap);
        assert!(d.reason.contains("not isolated"));
    }

    #[test]
    fn full_bar_indices_double_the_table_bar_or_refuse() {
        let mut l = testdev();
        l.bars = (0..6)
            .map(|i| BarInfo {
                index: i,
                kind: BarKind::Memory32,
                prefetchable: false,
                size: 0x10000,
            })
            .collect();
        let d = decide(
            MsixPolicy::Relocate,
            &l,
            BackendKind::User,
            &iso(true),
            true,
        )
        .unwrap();
        assert_eq!(
            d.placement,
            MsixPlacement::Doubled {
                bar: 0,
                device_size: 0x10000
            }
        );
        let g = guest_msix_layout(&l.msix.unwrap().layout, d.placement);
        assert_eq!((g.table_offset, g.pba_offset), (0x10000, 0x11000));
        // A BAR too small for the table block cannot be doubled into.
        l.bars[0].size = 0x1000;
        assert_eq!(
            decide(
                MsixPolicy::Relocate,
                &l,
                BackendKind::User,
                &iso(true),
                true
            ),
            Err(PlanError::NoFreeBar(0))
        );
        let d = decide(MsixPolicy::Auto, &l, BackendKind::User, &iso(true), true).unwrap();
        assert_eq!(d.placement, MsixPlacement::Trap);
    }

    #[test]
    fn direct_needs_vfio_user_and_a_mappable_table() {
        let l = testdev();
        assert_eq!(
            decide(
                MsixPolicy::Direct,
                &l,
                BackendKind::Kernel,
                &iso(true),
                true
            ),
            Err(PlanError::DirectNeedsUser)
        );
        assert!(matches!(
            decide(MsixPolicy::Direct, &l, BackendKind::User, &iso(true), false),
            Err(PlanError::DirectNotMappable(_))
        ));
        assert_eq!(
            decide(MsixPolicy::Direct, &l, BackendKind::User, &iso(true), true)
                .unwrap()
                .placement,
            MsixPlacement::Direct
        );
    }

    #[test]
    fn trap_punches_table_and_pba_pages_out_of_the_mapping() {
        let l = testdev();
        let m = l.msix.unwrap().layout;
        let whole = [SparseArea {
            offset: 0,
            size: 0x10000,
        }];
        let trap = map_areas(0, 0x10000, &whole, Some(&m), MsixPlacement::Trap);
        // Table 0x800..0x1800 → pages 0x0..0x2000; PBA 0x9000..0x9020 → 0x9000..0xa000.
        assert_eq!(
            trap,
            vec![
                MapArea {
                    bar: 0,
                    offset: 0x2000,
                    size: 0x7000
                },
                MapArea {
                    bar: 0,
                    offset: 0xa000,
                    size: 0x6000
                }
            ]
        );
        let reloc = map_areas(
            0,
            0x10000,
            &whole,
            Some(&m),
            MsixPlacement::Relocated {
                bar: 2,
                size: 0x2000,
            },
        );
        assert_eq!(
            reloc,
            vec![MapArea {
                bar: 0,
                offset: 0,
                size: 0x10000
            }]
        );
        // Unaligned sparse areas shrink to whole pages; areas past the BAR are cut.
        let odd = [SparseArea {
            offset: 0x10,
            size: 0x30000,
        }];
        assert_eq!(
            map_areas(0, 0x10000, &odd, None, MsixPlacement::Trap),
            vec![MapArea {
                bar: 0,
                offset: 0x1000,
                size: 0xf000
            }]
        );
        assert!(covered(&whole, 0x800, 0x1000));
        assert!(!covered(&whole, 0xf800, 0x1000));
    }
}
