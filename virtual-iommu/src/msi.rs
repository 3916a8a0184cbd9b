//! The message an interrupt source emits, before and after remapping.

/// Base of the x86 MSI address window (`0xfee0_0000`).
pub const MSI_ADDR_BASE: u32 = 0xfee0_0000;
/// Mask of the fixed upper bits that identify an MSI address (`0xfee`).
pub const MSI_ADDR_BASE_MASK: u32 = 0xfff0_0000;
/// Shift of the 8-bit destination ID in a compatibility-format MSI address.
pub const MSI_ADDR_DEST_SHIFT: u32 = 12;
/// Mask of the 8-bit destination ID field (address bits 19:12).
pub const MSI_ADDR_DEST_MASK: u32 = 0xff << MSI_ADDR_DEST_SHIFT;
/// Destination mode bit: 1 = logical, 0 = physical.
pub const MSI_ADDR_DEST_MODE_LOGICAL: u32 = 1 << 2;
/// Redirection hint bit.
pub const MSI_ADDR_REDIRECTION_HINT: u32 = 1 << 3;
/// Remappable-format bit (VT-d); also the bit that must be 0 for an extended destination ID.
pub const MSI_ADDR_REMAPPABLE: u32 = 1 << 4;
/// Shift of the extended destination ID (APIC ID bits 14:8) in address bits 11:5.
pub const MSI_ADDR_EXT_DEST_SHIFT: u32 = 5;
/// Mask of the extended destination ID field in the address (bits 11:5).
pub const MSI_ADDR_EXT_DEST_MASK: u32 = 0x7f << MSI_ADDR_EXT_DEST_SHIFT;

/// Vector field of the MSI data (bits 7:0).
pub const MSI_DATA_VECTOR_MASK: u32 = 0xff;
/// Shift of the delivery mode field (bits 10:8).
pub const MSI_DATA_DELIVERY_SHIFT: u32 = 8;
/// Mask of the delivery mode field.
pub const MSI_DATA_DELIVERY_MASK: u32 = 0x7 << MSI_DATA_DELIVERY_SHIFT;
/// Level-assert bit (bit 14).
pub const MSI_DATA_LEVEL_ASSERT: u32 = 1 << 14;
/// Trigger mode bit (bit 15): 1 = level.
pub const MSI_DATA_TRIGGER_LEVEL: u32 = 1 << 15;

/// PCI requester ID (bus << 8 | device << 3 | function) of an interrupt source, as the
/// IOMMU sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u16);

impl SourceId {
    /// Builds a source ID from bus, device and function numbers.
    pub fn new(bus: u8, device: u8, function: u8) -> Self {
        SourceId((u16::from(bus) << 8) | (u16::from(device & 0x1f) << 3) | u16::from(function & 7))
    }
}

/// An MSI write as a device emits it or as KVM consumes it: a 64-bit address split into
/// its two dwords, and 32 bits of data.
///
/// In KVM's x2APIC API form (`KVM_CAP_X2APIC_API`), destination bits 31:8 live in
/// `address_hi` bits 31:8 and bits 7:0 in `address_lo` bits 19:12.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    /// Address bits 31:0.
    pub address_lo: u32,
    /// Address bits 63:32.
    pub address_hi: u32,
    /// Message data.
    pub data: u32,
}

/// Interrupt delivery modes carried in MSI data bits 10:8 and IOAPIC RTE bits 10:8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DeliveryMode {
    /// Fixed delivery to the destination.
    Fixed = 0,
    /// Lowest-priority delivery among the destinations.
    LowestPriority = 1,
    /// System management interrupt.
    Smi = 2,
    /// Non-maskable interrupt.
    Nmi = 4,
    /// INIT.
    Init = 5,
    /// External interrupt (8259-style).
    ExtInt = 7,
}

impl DeliveryMode {
    /// Decodes a 3-bit delivery mode field; `None` for the reserved encodings 3 and 6.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits & 7 {
            0 => Some(Self::Fixed),
            1 => Some(Self::LowestPriority),
            2 => Some(Self::Smi),
            4 => Some(Self::Nmi),
            5 => Some(Self::Init),
            7 => Some(Self::ExtInt),
            _ => None,
        }
    }
}

impl MsiMessage {
    /// Builds a compatibility-format message for `dest` in KVM's x2APIC API layout
    /// (32-bit destination: bits 7:0 in `address_lo`, bits 31:8 in `address_hi`).
    pub fn compat(dest: u32, logical: bool, vector: u8, mode: DeliveryMode, level: bool) -> Self {
        let mut address_lo = MSI_ADDR_BASE | ((dest & 0xff) << MSI_ADDR_DEST_SHIFT);
        if logical {
            address_lo |= MSI_ADDR_DEST_MODE_LOGICAL;
        }
        let mut data = u32::from(vector) | ((mode as u32) << MSI_DATA_DELIVERY_SHIFT);
        if level {
            data |= MSI_DATA_TRIGGER_LEVEL | MSI_DATA_LEVEL_ASSERT;
        }
        MsiMessage {
            address_lo,
            address_hi: dest & !0xff,
            data,
        }
    }

    /// True when the address lies in the MSI window (`0xfeeX_XXXX`, `address_hi` free).
    pub fn is_msi_window(&self) -> bool {
        self.address_lo & MSI_ADDR_BASE_MASK == MSI_ADDR_BASE
    }

    /// True when the message uses VT-d's remappable format (address bit 4).
    pub fn is_remappable(&self) -> bool {
        self.address_lo & MSI_ADDR_REMAPPABLE != 0
    }

    /// The vector (data bits 7:0).
    pub fn vector(&self) -> u8 {
        (self.data & MSI_DATA_VECTOR_MASK) as u8
    }

    /// True when the message asks for level-triggered delivery (data bit 15).
    pub fn is_level(&self) -> bool {
        self.data & MSI_DATA_TRIGGER_LEVEL != 0
    }

    /// The full destination ID in KVM's x2APIC API layout.
    pub fn destination(&self) -> u32 {
        (self.address_hi & !0xff) | ((self.address_lo & MSI_ADDR_DEST_MASK) >> MSI_ADDR_DEST_SHIFT)
    }

    /// Applies the paravirtual extended destination ID convention
    /// (KVM_FEATURE_MSI_EXT_DEST_ID): when the message is in compatibility format
    /// (bit 4 clear) and `address_hi` is zero, address bits 11:5 carry APIC ID bits 14:8,
    /// which KVM expects in `address_hi` bits 14:8. Other messages are returned unchanged.
    pub fn with_ext_dest_swizzled(self) -> Self {
        if self.is_remappable() || self.address_hi != 0 {
            return self;
        }
        let ext = (self.address_lo & MSI_ADDR_EXT_DEST_MASK) >> MSI_ADDR_EXT_DEST_SHIFT;
        MsiMessage {
            address_lo: self.address_lo & !MSI_ADDR_EXT_DEST_MASK,
            address_hi: ext << 8,
            data: self.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_splits_32_bit_destination() {
        let m = MsiMessage::compat(0x1234, false, 0x41, DeliveryMode::Fixed, false);
        assert_eq!(m.address_lo, 0xfee3_4000);
        assert_eq!(m.address_hi, 0x1200);
        assert_eq!(m.data, 0x41);
        assert_eq!(m.destination(), 0x1234);
        assert!(m.is_msi_window());
        assert!(!m.is_remappable());
    }

    #[test]
    fn level_message_sets_trigger_and_assert() {
        let m = MsiMessage::compat(1, true, 0x30, DeliveryMode::LowestPriority, true);
        assert!(m.is_level());
        assert_eq!(m.data, 0x30 | (1 << 8) | (1 << 14) | (1 << 15));
        assert_eq!(
            m.address_lo & MSI_ADDR_DEST_MODE_LOGICAL,
            MSI_ADDR_DEST_MODE_LOGICAL
        );
    }

    #[test]
    fn ext_dest_moves_bits_11_5_to_address_hi() {
        // APIC ID 0x1ff: bits 7:0 = 0xff in 19:12, bits 14:8 = 0x1 in 11:5.
        let m = MsiMessage {
            address_lo: 0xfee0_0000 | (0xff << 12) | (0x1 << 5),
            address_hi: 0,
            data: 0x20,
        };
        let s = m.with_ext_dest_swizzled();
        assert_eq!(s.address_lo, 0xfeef_f000);
        assert_eq!(s.address_hi, 0x100);
        assert_eq!(s.destination(), 0x1ff);
    }

    #[test]
    fn ext_dest_leaves_remappable_and_high_addresses_alone() {
        let remap = MsiMessage {
            address_lo: 0xfee0_0010 | (3 << 5),
            address_hi: 0,
            data: 0,
        };
        assert_eq!(remap.with_ext_dest_swizzled(), remap);
        let high = MsiMessage {
            address_lo: 0xfee0_0000 | (3 << 5),
            address_hi: 0x100,
            data: 0,
        };
        assert_eq!(high.with_ext_dest_swizzled(), high);
    }

    #[test]
    fn delivery_mode_rejects_reserved() {
        assert_eq!(DeliveryMode::from_bits(3), None);
        assert_eq!(DeliveryMode::from_bits(6), None);
        assert_eq!(DeliveryMode::from_bits(4), Some(DeliveryMode::Nmi));
    }

    #[test]
    fn source_id_packs_bdf() {
        assert_eq!(SourceId::new(0xff, 0, 0).0, 0xff00);
        assert_eq!(SourceId::new(0, 3, 1).0, 0x19);
    }
}
