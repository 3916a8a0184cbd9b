//! PCI Express memory-mapped configuration table (PCI Firmware specification, MCFG): where
//! the ECAM window of segment 0 lies and which buses it decodes.

use super::sdt::Sdt;
use super::AcpiError;

/// MCFG signature.
pub const SIGNATURE: [u8; 4] = *b"MCFG";
/// MCFG revision.
pub const REVISION: u8 = 1;
/// Reserved bytes between the header and the first allocation.
const RESERVED_LEN: usize = 8;

/// One ECAM window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamConfig {
    /// Base address of the window (bus 0 of the segment).
    pub base: u64,
    /// First bus decoded.
    pub start_bus: u8,
    /// Last bus decoded.
    pub end_bus: u8,
}

/// Builds the MCFG.
pub fn build(cfg: &EcamConfig) -> Result<Vec<u8>, AcpiError> {
    let mut t = Sdt::new(SIGNATURE, REVISION);
    t.append(&[0; RESERVED_LEN])
        .append_u64(cfg.base)
        .append_u16(0) // segment
        .append_u8(cfg.start_bus)
        .append_u8(cfg.end_bus)
        .append_u32(0);
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_allocation_entry() {
        let b = build(&EcamConfig {
            base: 0xb000_0000,
            start_bus: 0,
            end_bus: 0xff,
        })
        .unwrap();
        assert_eq!(b.len(), 60);
        assert_eq!(&b[0..4], b"MCFG");
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        assert_eq!(
            u64::from_le_bytes(b[44..52].try_into().unwrap()),
            0xb000_0000
        );
        assert_eq!((b[54], b[55]), (0, 0xff));
    }
}
