//! The AMD-Vi unit as a PCI function: what the VMM's PCI code presents in its
//! configuration space.
//!
//! An AMD IOMMU is a PCI function (class 08h, subclass 06h "IOMMU") whose configuration
//! space carries the *IOMMU capability block* (capability ID 0Fh, "secure device") and an
//! MSI capability for the unit's own interrupts. Linux finds the function from the IVRS
//! (IVHD device ID and capability offset), reads the capability header for its feature
//! flags, enables the function and, in xAPIC mode, its MSI. The MMIO window itself is
//! placed by the VMM and named by the IVHD; the capability's base address registers hold
//! the same address with the Enable bit set, which locks them (firmware's job on hardware),
//! so every register of the block is read-only to the guest.
//!
//! Capability block (24 bytes, offsets from the capability pointer):
//!
//! | offset | register | value here |
//! |--------|----------|------------|
//! | 0x00 | header: CapID 0Fh, next pointer, CapType 011b (18:16), CapRev 00001b (23:19), IotlbSup 24, HtTunnel 25, NpCache 26, EFRSup 27, CapExt 28 | EFRSup and CapExt set, IotlbSup = NpCache = 0 |
//! | 0x04 | base address low: Enable bit 0, base 31:14 | the window's address, enabled |
//! | 0x08 | base address high: base 63:32 | |
//! | 0x0c | range: UnitID 4:0, RngValid 7, BusNumber 15:8, FirstDevice 23:16, LastDevice 31:24 | the devfn range of the bus the unit covers |
//! | 0x10 | misc 0: MsiNum 4:0, GVAsize 7:5, PAsize 14:8, VAsize 21:15, HtAtsResv 22, MsiNumPPR 31:27 | MsiNum 0, PAsize 48, VAsize 48 |
//! | 0x14 | misc 1: MsiNumGA 4:0 | 0 |
//!
//! `NpCache` = 0 and `IotlbSup` = 0 because the unit neither translates DMA nor supports
//! device IOTLBs; the address-size fields describe the guest-physical address width.
//!
//! The MSI capability is the VMM's ordinary single-message MSI capability (64-bit
//! addresses): every interrupt of the unit uses message 0 ([`MSI_VECTORS`]), which is what
//! Linux's `pci_enable_msi` on the IOMMU function expects. The unit signals it through
//! [`super::Effects::msi`] while `IntCapXTEn` is clear.

/// PCI vendor ID: AMD.
pub const AMD_VENDOR_ID: u16 = 0x1022;
/// PCI device ID presented for the unit: an AMD IOMMU device ID (Family 15h models
/// 10h-1fh) to which Linux applies no quirk (the RD890 quirks key on ATI's 0x5a23).
pub const AMDVI_DEVICE_ID: u16 = 0x1419;
/// Class code (base class 08h system peripheral, subclass 06h IOMMU, interface 00h).
pub const AMDVI_CLASS_CODE: u32 = 0x08_0600;
/// Capability ID of the IOMMU capability block ("secure device").
pub const CAP_ID_SECURE_DEVICE: u8 = 0x0f;
/// Length of the IOMMU capability block in bytes.
pub const IOMMU_CAP_LEN: u8 = 0x18;
/// Number of MSI messages the unit's MSI capability offers.
pub const MSI_VECTORS: u16 = 1;

/// Offset of the capability header in the block.
pub const CAP_HEADER: u16 = 0x00;
/// Offset of the base address low register.
pub const CAP_BASE_LOW: u16 = 0x04;
/// Offset of the base address high register.
pub const CAP_BASE_HIGH: u16 = 0x08;
/// Offset of the range register.
pub const CAP_RANGE: u16 = 0x0c;
/// Offset of miscellaneous information register 0.
pub const CAP_MISC0: u16 = 0x10;
/// Offset of miscellaneous information register 1.
pub const CAP_MISC1: u16 = 0x14;

/// Header: CapType 011b (IOMMU) in bits 18:16.
pub const CAP_TYPE_IOMMU: u32 = 0x3 << 16;
/// Header: CapRev 00001b in bits 23:19.
pub const CAP_REV: u32 = 0x1 << 19;
/// Header: IotlbSup (not reported).
pub const CAP_IOTLB_SUP: u32 = 1 << 24;
/// Header: HtTunnel (not reported).
pub const CAP_HT_TUNNEL: u32 = 1 << 25;
/// Header: NpCache, not-present entries are cached (not reported).
pub const CAP_NP_CACHE: u32 = 1 << 26;
/// Header: EFRSup, the extended feature register exists.
pub const CAP_EFR_SUP: u32 = 1 << 27;
/// Header: CapExt, the misc 1 register exists.
pub const CAP_EXT: u32 = 1 << 28;
/// Base address low: Enable (locks the base address registers).
pub const CAP_BASE_ENABLE: u32 = 1 << 0;
/// Base address low: bits of the address it holds (31:14).
pub const CAP_BASE_LOW_MASK: u32 = 0xffff_c000;
/// Range: RngValid.
pub const CAP_RANGE_VALID: u32 = 1 << 7;
/// Misc 0: shift of PAsize (14:8).
pub const CAP_MISC0_PA_SHIFT: u32 = 8;
/// Misc 0: shift of VAsize (21:15).
pub const CAP_MISC0_VA_SHIFT: u32 = 15;
/// The guest-physical address width reported in PAsize and VAsize.
pub const ADDRESS_BITS: u32 = 48;

/// The content of the IOMMU capability block for one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuCapability {
    /// Guest-physical base of the unit's MMIO window (16 KiB aligned).
    pub mmio_base: u64,
    /// The bus whose functions the unit covers.
    pub bus: u8,
    /// First device/function (devfn) covered.
    pub first_devfn: u8,
    /// Last device/function (devfn) covered.
    pub last_devfn: u8,
}

impl IommuCapability {
    /// A block for a unit at `mmio_base` covering every function of `bus`.
    pub fn new(mmio_base: u64, bus: u8) -> Self {
        IommuCapability {
            mmio_base,
            bus,
            first_devfn: 0,
            last_devfn: 0xff,
        }
    }

    /// The header's bits 31:16 (bits 15:0, the capability ID and next pointer, belong to
    /// the configuration space's capability list).
    pub fn header(&self) -> u32 {
        CAP_TYPE_IOMMU | CAP_REV | CAP_EFR_SUP | CAP_EXT
    }

    /// The base address low register: address bits 31:14 and Enable.
    pub fn base_low(&self) -> u32 {
        (self.mmio_base as u32 & CAP_BASE_LOW_MASK) | CAP_BASE_ENABLE
    }

    /// The base address high register: address bits 63:32.
    pub fn base_high(&self) -> u32 {
        (self.mmio_base >> 32) as u32
    }

    /// The range register.
    pub fn range(&self) -> u32 {
        CAP_RANGE_VALID
            | (u32::from(self.bus) << 8)
            | (u32::from(self.first_devfn) << 16)
            | (u32::from(self.last_devfn) << 24)
    }

    /// Miscellaneous information register 0.
    pub fn misc0(&self) -> u32 {
        (ADDRESS_BITS << CAP_MISC0_PA_SHIFT) | (ADDRESS_BITS << CAP_MISC0_VA_SHIFT)
    }

    /// Miscellaneous information register 1 (MsiNumGA = 0).
    pub fn misc1(&self) -> u32 {
        0
    }

    /// The six dwords of the block, header first (header bits 15:0 zero), every one
    /// read-only to the guest.
    pub fn dwords(&self) -> [u32; 6] {
        [
            self.header(),
            self.base_low(),
            self.base_high(),
            self.range(),
            self.misc0(),
            self.misc1(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_layout() {
        let c = IommuCapability::new(0x1_fed8_0000, 0);
        let d = c.dwords();
        assert_eq!(d[0], 0x180b_0000);
        // Linux's IOMMU_CAP_EFR (27) set, IOMMU_CAP_IOTLB (24) and NPCACHE (26) clear.
        assert_ne!(d[0] & 1 << 27, 0);
        assert_eq!(d[0] & (1 << 24 | 1 << 26), 0);
        assert_eq!(d[1], 0xfed8_0001);
        assert_eq!(d[2], 1);
        assert_eq!(d[3], 0xff00_0080);
        assert_eq!((d[4] >> 8) & 0x7f, 48);
        assert_eq!((d[4] >> 15) & 0x7f, 48);
        assert_eq!(d[4] & 0x1f, 0, "MsiNum 0");
        assert_eq!(AMDVI_CLASS_CODE >> 8, 0x0806);
    }
}
