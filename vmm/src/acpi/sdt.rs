//! The System Description Table header shared by every ACPI table (ACPI 6.3 §5.2.6), a small
//! builder that appends a table body and seals it with its length and checksum, and the
//! Generic Address Structure (§5.2.3.2) used by the FADT.

use super::AcpiError;

/// Length of the common SDT header.
pub const HEADER_LEN: usize = 36;

const SIGNATURE_OFFSET: usize = 0;
/// Offset of the 32-bit table length in the SDT header.
pub const LENGTH_OFFSET: usize = 4;
const REVISION_OFFSET: usize = 8;
/// Offset of the checksum byte in the SDT header.
pub const CHECKSUM_OFFSET: usize = 9;
const OEM_ID_OFFSET: usize = 10;
const OEM_TABLE_ID_OFFSET: usize = 16;
const OEM_REVISION_OFFSET: usize = 24;
const CREATOR_ID_OFFSET: usize = 28;
const CREATOR_REVISION_OFFSET: usize = 32;

/// OEM ID written into every table header and into the RSDP.
pub const OEM_ID: [u8; 6] = *b"IRVMM ";
/// Prefix of every OEM table ID; the first three letters of the signature follow it.
const OEM_TABLE_ID_PREFIX: [u8; 5] = *b"IRVMM";
/// Number of signature letters appended to [`OEM_TABLE_ID_PREFIX`].
const OEM_TABLE_ID_SIG_CHARS: usize = 3;
/// OEM revision of every table.
pub const OEM_REVISION: u32 = 1;
/// Creator ID ("ASL compiler vendor") of every table.
pub const CREATOR_ID: [u8; 4] = *b"IRVM";
/// Creator revision of every table.
pub const CREATOR_REVISION: u32 = 1;

/// The byte that makes `bytes` sum to zero (mod 256) when added to them.
pub fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// OEM table ID for a table with `signature`: `IRVMM` followed by the signature's first
/// three letters, e.g. `IRVMMFAC` for the FADT.
pub fn oem_table_id(signature: [u8; 4]) -> [u8; 8] {
    let mut id = [0u8; 8];
    let (prefix, rest) = id.split_at_mut(OEM_TABLE_ID_PREFIX.len());
    prefix.copy_from_slice(&OEM_TABLE_ID_PREFIX);
    rest.copy_from_slice(&signature[..OEM_TABLE_ID_SIG_CHARS]);
    id
}

/// A System Description Table under construction: the header followed by the body appended
/// so far. [`Sdt::finish`] fills in the length and checksum.
#[derive(Debug, Clone)]
pub struct Sdt {
    bytes: Vec<u8>,
}

impl Sdt {
    /// Starts a table with `signature` and `revision`; the OEM fields are irvmm's.
    pub fn new(signature: [u8; 4], revision: u8) -> Self {
        let mut sdt = Sdt {
            bytes: vec![0; HEADER_LEN],
        };
        sdt.write_at(SIGNATURE_OFFSET, &signature);
        sdt.write_at(REVISION_OFFSET, &[revision]);
        sdt.write_at(OEM_ID_OFFSET, &OEM_ID);
        sdt.write_at(OEM_TABLE_ID_OFFSET, &oem_table_id(signature));
        sdt.write_at(OEM_REVISION_OFFSET, &OEM_REVISION.to_le_bytes());
        sdt.write_at(CREATOR_ID_OFFSET, &CREATOR_ID);
        sdt.write_at(CREATOR_REVISION_OFFSET, &CREATOR_REVISION.to_le_bytes());
        sdt
    }

    /// Appends raw bytes to the body.
    pub fn append(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        self
    }

    /// Appends a byte.
    pub fn append_u8(&mut self, v: u8) -> &mut Self {
        self.append(&[v])
    }

    /// Appends a little-endian u16.
    pub fn append_u16(&mut self, v: u16) -> &mut Self {
        self.append(&v.to_le_bytes())
    }

    /// Appends a little-endian u32.
    pub fn append_u32(&mut self, v: u32) -> &mut Self {
        self.append(&v.to_le_bytes())
    }

    /// Appends a little-endian u64.
    pub fn append_u64(&mut self, v: u64) -> &mut Self {
        self.append(&v.to_le_bytes())
    }

    /// Writes `data` at `offset` from the start of the table (header included), growing the
    /// table with zeros first if it is shorter. Used by fixed-layout tables such as the FADT.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> &mut Self {
        let end = offset.saturating_add(data.len());
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[offset..end].copy_from_slice(data);
        self
    }

    /// Grows the table with zeros to at least `len` bytes (header included).
    pub fn pad_to(&mut self, len: usize) -> &mut Self {
        if self.bytes.len() < len {
            self.bytes.resize(len, 0);
        }
        self
    }

    /// Current length of the table, header included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the table is empty; never true, as the header is always present.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Writes the length and checksum and returns the table's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, AcpiError> {
        let len = u32::try_from(self.bytes.len()).map_err(|_| AcpiError::TableTooLarge {
            len: self.bytes.len(),
        })?;
        self.write_at(LENGTH_OFFSET, &len.to_le_bytes());
        self.write_at(CHECKSUM_OFFSET, &[0]);
        let sum = checksum(&self.bytes);
        self.write_at(CHECKSUM_OFFSET, &[sum]);
        Ok(self.bytes)
    }
}

/// Generic Address Structure address space ID: system I/O space.
pub const GAS_SPACE_SYSTEM_IO: u8 = 1;
/// Generic Address Structure access size: byte access.
pub const GAS_ACCESS_BYTE: u8 = 1;
/// Generic Address Structure access size: word (16-bit) access.
pub const GAS_ACCESS_WORD: u8 = 2;
/// Register width in bits of a byte-wide register.
const BYTE_BITS: u8 = 8;

/// Generic Address Structure (12 bytes), describing a register in some address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gas {
    /// Address space ID (e.g. [`GAS_SPACE_SYSTEM_IO`]).
    pub space_id: u8,
    /// Register width in bits.
    pub bit_width: u8,
    /// Bit offset of the register at `address`.
    pub bit_offset: u8,
    /// Access size (e.g. [`GAS_ACCESS_BYTE`]).
    pub access_size: u8,
    /// Address of the register in its address space.
    pub address: u64,
}

impl Gas {
    /// Encoded length of a Generic Address Structure.
    pub const LEN: usize = 12;

    /// An 8-bit register at I/O `port`, accessed bytewise.
    pub fn io_u8(port: u16) -> Self {
        Gas {
            space_id: GAS_SPACE_SYSTEM_IO,
            bit_width: BYTE_BITS,
            bit_offset: 0,
            access_size: GAS_ACCESS_BYTE,
            address: u64::from(port),
        }
    }

    /// A register block of `bit_width` bits at I/O `port`, accessed `access_size` at a
    /// time (e.g. a PM1 event block: 32 bits, word accesses).
    pub fn io(port: u16, bit_width: u8, access_size: u8) -> Self {
        Gas {
            space_id: GAS_SPACE_SYSTEM_IO,
            bit_width,
            bit_offset: 0,
            access_size,
            address: u64::from(port),
        }
    }

    /// The structure's 12 bytes.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.space_id;
        b[1] = self.bit_width;
        b[2] = self.bit_offset;
        b[3] = self.access_size;
        b[4..].copy_from_slice(&self.address.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_checksum() {
        let mut sdt = Sdt::new(*b"TEST", 3);
        sdt.append_u8(0xaa)
            .append_u16(0x1234)
            .append_u32(0xdead_beef)
            .append_u64(1);
        let t = sdt.finish().unwrap();
        assert_eq!(t.len(), 36 + 1 + 2 + 4 + 8);
        assert_eq!(&t[0..4], b"TEST");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len()
        );
        assert_eq!(t[8], 3);
        assert_eq!(&t[10..16], b"IRVMM ");
        assert_eq!(&t[16..24], b"IRVMMTES");
        assert_eq!(&t[28..32], b"IRVM");
        assert_eq!(&t[36..39], &[0xaa, 0x34, 0x12]);
        assert_eq!(checksum(&t), 0);
    }

    #[test]
    fn write_at_grows() {
        let mut sdt = Sdt::new(*b"TEST", 1);
        sdt.write_at(40, &[1, 2]);
        assert_eq!(sdt.len(), 42);
        sdt.pad_to(50);
        let t = sdt.finish().unwrap();
        assert_eq!(t.len(), 50);
        assert_eq!(&t[36..42], &[0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn gas_io_u8() {
        assert_eq!(
            Gas::io_u8(0xcf9).to_bytes(),
            [1, 8, 0, 1, 0xf9, 0x0c, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn gas_io_block() {
        assert_eq!(
            Gas::io(0x600, 32, GAS_ACCESS_WORD).to_bytes(),
            [1, 32, 0, 2, 0x00, 0x06, 0, 0, 0, 0, 0, 0]
        );
    }
}
