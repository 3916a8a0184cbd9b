//! Firmware ACPI Control Structure, version 2 (ACPI 6.3 §5.2.10).
//!
//! A platform with ACPI fixed hardware (not hardware-reduced) has a FACS, which the FADT's
//! FIRMWARE_CTRL names: it holds the global lock and the waking vector. irvmm's is all zeros
//! past its header: no hardware signature, no waking vector (there is no S3), the global lock
//! free, no S4BIOS, no 64-bit wake. It is not listed in the XSDT and has no checksum.

/// FACS signature.
pub const SIGNATURE: [u8; 4] = *b"FACS";
/// Length of the FACS.
pub const FACS_LEN: usize = 64;
/// Required alignment of the FACS.
pub const FACS_ALIGN: u64 = 64;
/// FACS version (ACPI 4.0 onwards).
pub const VERSION: u8 = 2;

const LENGTH_OFFSET: usize = 4;
const VERSION_OFFSET: usize = 32;

/// The FACS bytes.
pub fn build() -> Vec<u8> {
    let mut t = vec![0u8; FACS_LEN];
    t[..SIGNATURE.len()].copy_from_slice(&SIGNATURE);
    // FACS_LEN is 64: it fits the 32-bit length field.
    t[LENGTH_OFFSET..LENGTH_OFFSET + 4].copy_from_slice(&(FACS_LEN as u32).to_le_bytes());
    t[VERSION_OFFSET] = VERSION;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let t = build();
        assert_eq!(t.len(), 64);
        assert_eq!(&t[..4], b"FACS");
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 64);
        assert_eq!(t[32], 2, "version");
        assert!(
            t[8..32].iter().all(|&b| b == 0),
            "signature, vectors, lock, flags"
        );
        assert!(t[33..].iter().all(|&b| b == 0));
    }
}
