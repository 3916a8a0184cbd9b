//! What a device is made of, read once when it is opened: identity, BARs, ROM, the
//! capability chain, MSI and MSI-X, INTx. The bytes come from the device (or its server),
//! so everything is checked; a device irvmm cannot present faithfully is refused with the
//! reason, before the VM starts.

use devices::pci::config::{
    BarKind, PciHeader, PCI_BAR0, PCI_BAR_COUNT, PCI_BAR_IO_MAX_SIZE, PCI_BAR_IO_MIN_SIZE,
    PCI_BAR_MEM32_MAX_SIZE, PCI_BAR_MEM64_MAX_SIZE, PCI_BAR_MEM_MIN_SIZE, PCI_BAR_MEM_PREFETCH,
    PCI_BAR_MEM_TYPE_64, PCI_BAR_REG_SIZE, PCI_BAR_SPACE_IO, PCI_CAPABILITY_LIST, PCI_CAP_AREA_END,
    PCI_CAP_AREA_START, PCI_CAP_MAX_COUNT, PCI_CAP_POINTER_MASK, PCI_CLASS_CODE, PCI_DEVICE_ID,
    PCI_HEADER_TYPE, PCI_INTERRUPT_PIN, PCI_REVISION_ID, PCI_ROM_MIN_SIZE, PCI_STATUS,
    PCI_STATUS_CAP_LIST, PCI_SUBSYSTEM_ID, PCI_SUBSYSTEM_VENDOR_ID, PCI_VENDOR_ID,
};
use devices::pci::msi::{
    MSI_CONTROL, MSI_CTRL_64BIT, MSI_CTRL_MMC_SHIFT, MSI_CTRL_PER_VECTOR_MASK, MSI_MAX_VECTORS,
    PCI_CAP_ID_MSI,
};
use devices::pci::msix::{
    MsixLayout, MSIX_BIR_MASK, MSIX_CONTROL, MSIX_CTRL_TABLE_SIZE_MASK, MSIX_MAX_VECTORS, MSIX_PBA,
    MSIX_TABLE, PCI_CAP_ID_MSIX,
};
use thiserror::Error;

/// Bytes of conventional configuration space read from the device.
pub const CONFIG_HEADER_SIZE: usize = 256;

/// One BAR of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR index (a 64-bit BAR has the index of its low dword).
    pub index: u8,
    /// I/O, 32- or 64-bit memory.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// The device's MSI capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiInfo {
    /// Offset of the capability.
    pub offset: u16,
    /// Vectors it is capable of (a power of two, 1..=32).
    pub vectors: u16,
    /// Per-vector masking.
    pub maskable: bool,
}

/// The device's MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixInfo {
    /// Offset of the capability.
    pub offset: u16,
    /// Where the device keeps its table and PBA.
    pub layout: MsixLayout,
}

/// A device's layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLayout {
    /// Identity for the guest-visible header.
    pub header: PciHeader,
    /// Header type byte (bit 7 multi-function is not passed on).
    pub header_type: u8,
    /// BARs, by index.
    pub bars: Vec<BarInfo>,
    /// Expansion ROM size (0: none).
    pub rom_size: u64,
    /// First capability (0: none).
    pub cap_ptr: u8,
    /// The capability chain: `(id, offset)` in order.
    pub caps: Vec<(u8, u16)>,
    /// MSI, when the device has a 64-bit MSI capability.
    pub msi: Option<MsiInfo>,
    /// MSI-X, when the device has it.
    pub msix: Option<MsixInfo>,
    /// The device has INTx (pin set and an INTx interrupt to signal).
    pub intx: bool,
}

/// What the layout reader needs besides configuration space: region sizes and IRQ counts.
pub trait LayoutFacts {
    /// Size of region `index` (0: absent).
    fn region_size(&self, index: u32) -> u64;
    /// Interrupts at IRQ index `index` (0: unsupported).
    fn irq_count(&self, index: u32) -> u32;
}

/// Why a device cannot be passed through.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    /// A BAR whose size no PCI BAR can have.
    #[error("BAR {bar} has an impossible size {size:#x} for a {kind:?} BAR")]
    BarSize {
        /// BAR index.
        bar: u8,
        /// Region size.
        size: u64,
        /// BAR kind.
        kind: BarKind,
    },
    /// A 64-bit BAR in the last slot.
    #[error("BAR {0} is 64-bit but has no upper dword slot")]
    Bar64AtEnd(u8),
    /// MSI-X with 0 or more than 2048 vectors, or disagreeing with the IRQ info.
    #[error("MSI-X: {0}")]
    Msix(String),
}

fn u16_at(cfg: &[u8], off: u16) -> u16 {
    let i = usize::from(off);
    match cfg.get(i..i + 2) {
        Some(b) => u16::from_le_bytes([b[0], b[1]]),
        None => 0,
    }
}

fn u32_at(cfg: &[u8], off: u16) -> u32 {
    let i = usize::from(off);
    match cfg.get(i..i + 4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

fn u8_at(cfg: &[u8], off: u16) -> u8 {
    cfg.get(usize::from(off)).copied().unwrap_or(0)
}

/// Walks the capability chain of `cfg`: bounded, dword-aligned pointers inside
/// 0x40..0x100, stopping at a loop or a bad pointer (the rest is ignored, as a guest
/// would).
fn walk_caps(cfg: &[u8]) -> (u8, Vec<(u8, u16)>) {
    if u16_at(cfg, PCI_STATUS) & PCI_STATUS_CAP_LIST == 0 {
        return (0, Vec::new());
    }
    let first = u8_at(cfg, PCI_CAPABILITY_LIST) & PCI_CAP_POINTER_MASK;
    let mut caps: Vec<(u8, u16)> = Vec::new();
    let mut ptr = u16::from(first);
    while ptr != 0 && caps.len() < PCI_CAP_MAX_COUNT {
        if !(PCI_CAP_AREA_START..PCI_CAP_AREA_END).contains(&ptr)
            || caps.iter().any(|&(_, o)| o == ptr)
        {
            log::warn!("vfio: capability chain has a bad pointer {ptr:#x}; ignoring the rest");
            break;
        }
        caps.push((u8_at(cfg, ptr), ptr));
        ptr = u16::from(u8_at(cfg, ptr + 1) & PCI_CAP_POINTER_MASK);
    }
    let first = caps.first().map(|&(_, o)| o as u8).unwrap_or(0);
    (first, caps)
}

fn read_bars(cfg: &[u8], facts: &dyn LayoutFacts) -> Result<Vec<BarInfo>, LayoutError> {
    let mut bars = Vec::new();
    let mut i = 0usize;
    while i < PCI_BAR_COUNT {
        let index = i as u8;
        let size = facts.region_size(u32::from(index));
        let reg = u32_at(cfg, PCI_BAR0 + PCI_BAR_REG_SIZE * u16::from(index));
        let kind = if reg & PCI_BAR_SPACE_IO != 0 {
            BarKind::Io
        } else if reg & (0b11 << 1) == PCI_BAR_MEM_TYPE_64 {
            BarKind::Memory64
        } else {
            BarKind::Memory32
        };
        i += if kind == BarKind::Memory64 { 2 } else { 1 };
        if size == 0 {
            continue;
        }
        if kind == BarKind::Memory64 && usize::from(index) + 1 >= PCI_BAR_COUNT {
            return Err(LayoutError::Bar64AtEnd(index));
        }
        let (min, max) = match kind {
            BarKind::Io => (PCI_BAR_IO_MIN_SIZE, PCI_BAR_IO_MAX_SIZE),
            BarKind::Memory32 => (PCI_BAR_MEM_MIN_SIZE, PCI_BAR_MEM32_MAX_SIZE),
            BarKind::Memory64 => (PCI_BAR_MEM_MIN_SIZE, PCI_BAR_MEM64_MAX_SIZE),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(LayoutError::BarSize {
                bar: index,
                size,
                kind,
            });
        }
        bars.push(BarInfo {
            index,
            kind,
            prefetchable: kind != BarKind::Io && reg & PCI_BAR_MEM_PREFETCH != 0,
            size,
        });
    }
    Ok(bars)
}

fn read_msix(
    cfg: &[u8],
    offset: u16,
    bars: &[BarInfo],
    facts: &dyn LayoutFacts,
) -> Result<MsixInfo, LayoutError> {
    let control = u16_at(cfg, offset + MSIX_CONTROL);
    let vectors = (control & MSIX_CTRL_TABLE_SIZE_MASK) + 1;
    let irq = facts.irq_count(crate::backend::IRQ_MSIX);
    if irq == 0 || irq > u32::from(MSIX_MAX_VECTORS) {
        return Err(LayoutError::Msix(format!(
            "the device reports {irq} MSI-X interrupts (1 to {MSIX_MAX_VECTORS} are possible)"
        )));
    }
    if u32::from(vectors) != irq {
        return Err(LayoutError::Msix(format!(
            "the capability says {vectors} vectors but the device reports {irq} interrupts"
        )));
    }
    let table = u32_at(cfg, offset + MSIX_TABLE);
    let pba = u32_at(cfg, offset + MSIX_PBA);
    let layout = MsixLayout {
        vectors,
        table_bar: (table & MSIX_BIR_MASK) as u8,
        table_offset: table & !MSIX_BIR_MASK,
        pba_bar: (pba & MSIX_BIR_MASK) as u8,
        pba_offset: pba & !MSIX_BIR_MASK,
    };
    let fits = |bar: u8, off: u32, len: u64, what: &str| -> Result<(), LayoutError> {
        let b = bars
            .iter()
            .find(|b| b.index == bar && b.kind != BarKind::Io)
            .ok_or_else(|| {
                LayoutError::Msix(format!("{what} in BAR {bar}, which is not a memory BAR"))
            })?;
        if u64::from(off).saturating_add(len) > b.size {
            return Err(LayoutError::Msix(format!(
                "{what} at {off:#x}+{len:#x} exceeds BAR {bar} ({:#x} bytes)",
                b.size
            )));
        }
        Ok(())
    };
    fits(
        layout.table_bar,
        layout.table_offset,
        layout.table_size(),
        "table",
    )?;
    fits(layout.pba_bar, layout.pba_offset, layout.pba_size(), "PBA")?;
    let overlap = layout.table_bar == layout.pba_bar
        && u64::from(layout.table_offset) < u64::from(layout.pba_offset) + layout.pba_size()
        && u64::from(layout.pba_offset) < u64::from(layout.table_offset) + layout.table_size();
    if overlap {
        return Err(LayoutError::Msix("the table and the PBA overlap".into()));
    }
    Ok(MsixInfo { offset, layout })
}

/// Reads a device's layout from its first 256 configuration bytes and `facts`.
pub fn read_layout(cfg: &[u8], facts: &dyn LayoutFacts) -> Result<DeviceLayout, LayoutError> {
    let class = u32_at(cfg, PCI_CLASS_CODE - 1) >> 8;
    let header = PciHeader {
        vendor_id: u16_at(cfg, PCI_VENDOR_ID),
        device_id: u16_at(cfg, PCI_DEVICE_ID),
        revision_id: u8_at(cfg, PCI_REVISION_ID),
        class_code: class,
        subsystem_vendor_id: u16_at(cfg, PCI_SUBSYSTEM_VENDOR_ID),
        subsystem_id: u16_at(cfg, PCI_SUBSYSTEM_ID),
        interrupt_pin: 0,
    };
    let bars = read_bars(cfg, facts)?;
    let rom = facts.region_size(crate::backend::ROM_REGION);
    let rom_size =
        if rom.is_power_of_two() && (PCI_ROM_MIN_SIZE..=PCI_BAR_MEM32_MAX_SIZE).contains(&rom) {
            rom
        } else {
            if rom != 0 {
                log::warn!(
                    "vfio: expansion ROM of {rom:#x} bytes is not a valid ROM size; not offered"
                );
            }
            0
        };
    let (cap_ptr, caps) = walk_caps(cfg);
    let mut msi = None;
    let mut msix = None;
    for &(id, offset) in &caps {
        match id {
            PCI_CAP_ID_MSIX if msix.is_none() => {
                msix = Some(read_msix(cfg, offset, &bars, facts)?);
            }
            PCI_CAP_ID_MSI if msi.is_none() => {
                let control = u16_at(cfg, offset + MSI_CONTROL);
                let mmc = (control >> MSI_CTRL_MMC_SHIFT) & 0x7;
                let vectors = (1u16 << mmc.min(5)).min(MSI_MAX_VECTORS);
                let irq = facts.irq_count(crate::backend::IRQ_MSI);
                if control & MSI_CTRL_64BIT == 0 {
                    log::warn!("vfio: 32-bit-only MSI capability is not offered to the guest");
                } else if irq == 0 {
                    log::warn!("vfio: MSI capability without MSI interrupts; not offered");
                } else {
                    let vectors = vectors.min(prev_power_of_two(irq));
                    msi = Some(MsiInfo {
                        offset,
                        vectors,
                        maskable: control & MSI_CTRL_PER_VECTOR_MASK != 0,
                    });
                }
            }
            _ => {}
        }
    }
    let pin = u8_at(cfg, PCI_INTERRUPT_PIN);
    let intx = (1..=4).contains(&pin) && facts.irq_count(crate::backend::IRQ_INTX) >= 1;
    Ok(DeviceLayout {
        header: PciHeader {
            interrupt_pin: if intx { pin } else { 0 },
            ..header
        },
        header_type: u8_at(cfg, PCI_HEADER_TYPE) & 0x7f,
        bars,
        rom_size,
        cap_ptr,
        caps,
        msi,
        msix,
        intx,
    })
}

/// The largest power of two not above `n` (n ≥ 1), as u16, capped at 32.
fn prev_power_of_two(n: u32) -> u16 {
    let n = n.min(u32::from(MSI_MAX_VECTORS));
    1u16 << (31 - n.leading_zeros())
}

impl DeviceLayout {
    /// BAR `index`, if the device has it.
    pub fn bar(&self, index: u8) -> Option<&BarInfo> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// BAR register indices no BAR of the device uses (64-bit BARs use two).
    pub fn free_bar_indices(&self) -> Vec<u8> {
        (0..PCI_BAR_COUNT as u8)
            .filter(|&i| {
                !self
                    .bars
                    .iter()
                    .any(|b| b.index == i || (b.kind == BarKind::Memory64 && b.index + 1 == i))
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Facts for tests: region sizes and IRQ counts by index.
    pub(crate) struct Facts {
        pub regions: [u64; 9],
        pub irqs: [u32; 5],
    }

    impl LayoutFacts for Facts {
        fn region_size(&self, index: u32) -> u64 {
            self.regions.get(index as usize).copied().unwrap_or(0)
        }
        fn irq_count(&self, index: u32) -> u32 {
            self.irqs.get(index as usize).copied().unwrap_or(0)
        }
    }

    /// The project's vfio-user test device's configuration space: BAR0 64-bit 64 KiB,
    /// MSI-X at 0x40 (N vectors, table BAR0+0x800, PBA BAR0+0x9000), MSI at 0x50 (64-bit,
    /// maskable, 1 vector), PM at 0x68, INTA.
    pub(crate) fn testdev_config(vectors: u16) -> Vec<u8> {
        let mut c = vec![0u8; CONFIG_HEADER_SIZE];
        let put16 =
            |c: &mut Vec<u8>, o: usize, v: u16| c[o..o + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |c: &mut Vec<u8>, o: usize, v: u32| c[o..o + 4].copy_from_slice(&v.to_le_bytes());
        put16(&mut c, 0, 0x1234);
        put16(&mut c, 2, 0x11ea);
        put16(&mut c, 6, PCI_STATUS_CAP_LIST);
        c[8] = 1;
        put32(&mut c, 8, 0x00ff_0001);
        put32(&mut c, 0x10, PCI_BAR_MEM_TYPE_64);
        put16(&mut c, 0x2c, 0x1234);
        put16(&mut c, 0x2e, 1);
        c[0x34] = 0x40;
        c[0x3d] = 1;
        c[0x40] = PCI_CAP_ID_MSIX;
        c[0x41] = 0x50;
        put16(&mut c, 0x42, vectors.wrapping_sub(1) & 0x7ff);
        put32(&mut c, 0x44, 0x800);
        put32(&mut c, 0x48, 0x9000);
        c[0x50] = PCI_CAP_ID_MSI;
        c[0x51] = 0x68;
        put16(&mut c, 0x52, MSI_CTRL_64BIT | MSI_CTRL_PER_VECTOR_MASK);
        c[0x68] = 0x01;
        c[0x69] = 0;
        put16(&mut c, 0x6a, 3);
        c
    }

    pub(crate) fn testdev_facts(vectors: u32) -> Facts {
        Facts {
            regions: [0x10000, 0, 0, 0, 0, 0, 0x1000, 256, 0],
            irqs: [1, 1, vectors, 0, 0],
        }
    }

    #[test]
    fn reads_the_test_device() {
        let l = read_layout(&testdev_config(256), &testdev_facts(256)).unwrap();
        assert_eq!((l.header.vendor_id, l.header.device_id), (0x1234, 0x11ea));
        assert_eq!(l.header.class_code, 0x00ff00);
        assert_eq!(l.header.revision_id, 1);
        assert_eq!(
            l.bars,
            vec![BarInfo {
                index: 0,
                kind: BarKind::Memory64,
                prefetchable: false,
                size: 0x10000
            }]
        );
        assert_eq!(l.rom_size, 0x1000);
        assert_eq!(l.caps, vec![(0x11, 0x40), (0x05, 0x50), (0x01, 0x68)]);
        let m = l.msix.unwrap();
        assert_eq!(
            m.layout,
            MsixLayout {
                vectors: 256,
                table_bar: 0,
                table_offset: 0x800,
                pba_bar: 0,
                pba_offset: 0x9000
            }
        );
        assert_eq!(
            l.msi,
            Some(MsiInfo {
                offset: 0x50,
                vectors: 1,
                maskable: true
            })
        );
        assert!(l.intx);
        assert_eq!(l.header.interrupt_pin, 1);
        assert_eq!(l.free_bar_indices(), vec![2, 3, 4, 5]);
    }

    #[test]
    fn refuses_broken_msix_layouts() {
        // Zero vectors reported, 4096 (the capability wraps to 2048), disagreement.
        for (cap, irq) in [(1u16, 0u32), (4096, 4096), (256, 128)] {
            let e = read_layout(&testdev_config(cap), &testdev_facts(irq)).unwrap_err();
            assert!(matches!(e, LayoutError::Msix(_)), "{cap}/{irq}: {e}");
        }
        // Table beyond the BAR.
        let mut c = testdev_config(256);
        c[0x44..0x48].copy_from_slice(&0xf800u32.to_le_bytes());
        let e = read_layout(&c, &testdev_facts(256)).unwrap_err();
        assert!(e.to_string().contains("exceeds BAR 0"), "{e}");
        // PBA overlapping the table.
        let mut c = testdev_config(256);
        c[0x48..0x4c].copy_from_slice(&0x810u32.to_le_bytes());
        let e = read_layout(&c, &testdev_facts(256)).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        // Table in a BAR that does not exist.
        let mut c = testdev_config(256);
        c[0x44..0x48].copy_from_slice(&(0x800u32 | 3).to_le_bytes());
        assert!(read_layout(&c, &testdev_facts(256)).is_err());
    }

    #[test]
    fn hostile_capability_chains_and_bars_are_bounded() {
        let mut c = testdev_config(256);
        c[0x69] = 0x40; // PM points back to MSI-X: a loop
        let l = read_layout(&c, &testdev_facts(256)).unwrap();
        assert_eq!(l.caps.len(), 3);
        c[0x34] = 0x02; // pointer into the header
        c[0x34] &= 0xff;
        let l = read_layout(&c, &testdev_facts(256)).unwrap();
        assert!(l.caps.is_empty());
        let mut f = testdev_facts(256);
        f.regions[0] = 0x3000; // not a power of two
        assert!(matches!(
            read_layout(&testdev_config(256), &f),
            Err(LayoutError::BarSize { .. })
        ));
        // Garbage everywhere never panics.
        for seed in 0..200u32 {
            let c: Vec<u8> = (0..256u32)
                .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 13) as u8)
                .collect();
            let _ = read_layout(&c, &testdev_facts(seed % 3000));
            let _ = read_layout(&c[..seed as usize % 256], &testdev_facts(256));
        }
    }
}
