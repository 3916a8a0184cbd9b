//! DMA Remapping Reporting table (Intel VT-d specification, chapter 8): one remapping unit
//! (DRHD) that covers every PCI device of segment 0 and the I/O APIC, with interrupt
//! remapping offered and x2APIC opt-out clear, as a Linux guest needs to enable interrupt
//! remapping in x2APIC mode.

use super::sdt::Sdt;
use super::AcpiError;

/// DMAR signature.
pub const SIGNATURE: [u8; 4] = *b"DMAR";
/// DMAR revision.
pub const REVISION: u8 = 1;
/// DMAR flags: the platform supports interrupt remapping.
pub const FLAG_INTR_REMAP: u8 = 1 << 0;
/// DMAR flags: firmware asks the OS not to use x2APIC (kept clear).
pub const FLAG_X2APIC_OPT_OUT: u8 = 1 << 1;
/// Remapping structure type: DMA-remapping hardware unit definition.
pub const TYPE_DRHD: u16 = 0;
/// DRHD flags: the unit covers every PCI device of its segment not claimed by another.
pub const DRHD_INCLUDE_PCI_ALL: u8 = 1 << 0;
/// Length of a DRHD without device scopes.
pub const DRHD_FIXED_LEN: u16 = 16;
/// Device scope type: I/O APIC.
pub const SCOPE_IOAPIC: u8 = 3;
/// Length of a device scope with one path entry.
pub const SCOPE_ONE_PATH_LEN: u8 = 8;
/// Bytes of reserved space after the DMAR flags.
const RESERVED_AFTER_FLAGS: usize = 10;

/// What the DMAR describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmarConfig {
    /// Register base of the remapping unit (4 KiB page).
    pub register_base: u64,
    /// Host address width minus one, as the table encodes it (CAP.MGAW - 1 of the unit).
    pub host_address_width: u8,
    /// The I/O APIC's enumeration ID (its MADT ID).
    pub ioapic_id: u8,
    /// The I/O APIC's source ID as bus, device, function (the SID its interrupts carry).
    pub ioapic_bdf: (u8, u8, u8),
}

/// Builds the DMAR.
pub fn build(cfg: &DmarConfig) -> Result<Vec<u8>, AcpiError> {
    let mut t = Sdt::new(SIGNATURE, REVISION);
    t.append_u8(cfg.host_address_width)
        .append_u8(FLAG_INTR_REMAP)
        .append(&[0; RESERVED_AFTER_FLAGS]);
    let (bus, dev, func) = cfg.ioapic_bdf;
    let drhd_len = DRHD_FIXED_LEN + u16::from(SCOPE_ONE_PATH_LEN);
    t.append_u16(TYPE_DRHD)
        .append_u16(drhd_len)
        .append_u8(DRHD_INCLUDE_PCI_ALL)
        .append_u8(0) // register set size: 2^0 pages
        .append_u16(0) // PCI segment
        .append_u64(cfg.register_base);
    t.append_u8(SCOPE_IOAPIC)
        .append_u8(SCOPE_ONE_PATH_LEN)
        .append_u16(0)
        .append_u8(cfg.ioapic_id)
        .append_u8(bus)
        .append_u8(dev)
        .append_u8(func);
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_vtd_specification() {
        let b = build(&DmarConfig {
            register_base: 0xfed9_0000,
            host_address_width: 38,
            ioapic_id: 0,
            ioapic_bdf: (0xff, 0, 0),
        })
        .unwrap();
        assert_eq!(&b[0..4], b"DMAR");
        assert_eq!(b.len(), 48 + 24);
        assert_eq!(
            u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        assert_eq!(b[36], 38);
        assert_eq!(b[37], FLAG_INTR_REMAP);
        // DRHD at 48.
        assert_eq!(u16::from_le_bytes([b[48], b[49]]), TYPE_DRHD);
        assert_eq!(u16::from_le_bytes([b[50], b[51]]), 24);
        assert_eq!(b[52], DRHD_INCLUDE_PCI_ALL);
        assert_eq!(
            u64::from_le_bytes(b[56..64].try_into().unwrap()),
            0xfed9_0000
        );
        // I/O APIC scope: type 3, length 8, enumeration ID 0, bus 0xff, path 0.0.
        assert_eq!(&b[64..72], &[3, 8, 0, 0, 0, 0xff, 0, 0]);
    }
}
