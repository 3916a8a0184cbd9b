//! Root System Description Pointer, revision 2 (ACPI 6.3 §5.2.5.3), and the Extended System
//! Description Table (§5.2.8). There is no RSDT: its address in the RSDP is 0, and every
//! ACPI 2.0+ OS follows the XSDT.

use super::sdt::{checksum, Sdt, OEM_ID};
use super::AcpiError;

/// Length of a revision 2 RSDP.
pub const RSDP_LEN: usize = 36;
/// Alignment the RSDP needs to be found by a legacy memory scan (a power of two).
pub const RSDP_ALIGN: u64 = 16;
/// RSDP revision for ACPI 2.0 and later.
pub const RSDP_REVISION: u8 = 2;
const RSDP_SIGNATURE: [u8; 8] = *b"RSD PTR ";

// RSDP field offsets (ACPI 6.3 Table 5-27).
const RSDP_CHECKSUM_OFFSET: usize = 8;
const RSDP_OEM_ID_OFFSET: usize = 9;
const RSDP_REVISION_OFFSET: usize = 15;
const RSDP_LENGTH_OFFSET: usize = 20;
const RSDP_XSDT_ADDRESS_OFFSET: usize = 24;
const RSDP_EXTENDED_CHECKSUM_OFFSET: usize = 32;
/// The ACPI 1.0 part of the RSDP, covered by the first checksum.
pub const RSDP_V1_LEN: usize = 20;

/// XSDT signature.
pub const XSDT_SIGNATURE: [u8; 4] = *b"XSDT";
/// XSDT revision.
pub const XSDT_REVISION: u8 = 1;
/// Size of one XSDT entry (a 64-bit table address).
pub const XSDT_ENTRY_LEN: usize = 8;

/// Builds the RSDP pointing at the XSDT at `xsdt_addr`.
pub fn rsdp(xsdt_addr: u64) -> [u8; RSDP_LEN] {
    let mut r = [0u8; RSDP_LEN];
    let put = |r: &mut [u8; RSDP_LEN], off: usize, data: &[u8]| {
        r[off..off + data.len()].copy_from_slice(data);
    };
    put(&mut r, 0, &RSDP_SIGNATURE);
    put(&mut r, RSDP_OEM_ID_OFFSET, &OEM_ID);
    put(&mut r, RSDP_REVISION_OFFSET, &[RSDP_REVISION]);
    // RsdtAddress (offset 16) stays 0: no RSDT.
    put(&mut r, RSDP_LENGTH_OFFSET, &(RSDP_LEN as u32).to_le_bytes());
    put(&mut r, RSDP_XSDT_ADDRESS_OFFSET, &xsdt_addr.to_le_bytes());
    r[RSDP_CHECKSUM_OFFSET] = checksum(&r[..RSDP_V1_LEN]);
    r[RSDP_EXTENDED_CHECKSUM_OFFSET] = checksum(&r);
    r
}

/// Length of an XSDT listing `entries` tables.
pub fn xsdt_len(entries: usize) -> usize {
    super::sdt::HEADER_LEN + entries * XSDT_ENTRY_LEN
}

/// Builds the XSDT listing the tables at `tables`.
pub fn xsdt(tables: &[u64]) -> Result<Vec<u8>, AcpiError> {
    let mut t = Sdt::new(XSDT_SIGNATURE, XSDT_REVISION);
    for &addr in tables {
        t.append_u64(addr);
    }
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsdp_layout_and_checksums() {
        let r = rsdp(0xe0030);
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(&r[9..15], b"IRVMM ");
        assert_eq!(r[15], 2);
        assert_eq!(&r[16..20], &[0; 4]);
        assert_eq!(u32::from_le_bytes(r[20..24].try_into().unwrap()), 36);
        assert_eq!(u64::from_le_bytes(r[24..32].try_into().unwrap()), 0xe0030);
        assert_eq!(checksum(&r[..20]), 0);
        assert_eq!(checksum(&r), 0);
        assert_eq!(&r[33..36], &[0; 3]);
    }

    #[test]
    fn xsdt_entries() {
        let t = xsdt(&[0x1000, 0x2000]).unwrap();
        assert_eq!(t.len(), xsdt_len(2));
        assert_eq!(&t[36..44], &0x1000u64.to_le_bytes());
        assert_eq!(&t[44..52], &0x2000u64.to_le_bytes());
        assert_eq!(checksum(&t), 0);
    }
}
