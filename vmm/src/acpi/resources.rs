//! Large resource descriptors (ACPI 6.3 §6.4.3) for `_CRS` buffers: the address-space
//! descriptors a PCI host bridge uses to describe its bus, I/O and memory windows, and
//! `Memory32Fixed` for reserving the ECAM window.

/// Large item tag: 32-bit fixed memory range.
const MEMORY32_FIXED: u8 = 0x86;
/// Large item tag: DWORD address space descriptor.
const DWORD_ADDRESS_SPACE: u8 = 0x87;
/// Large item tag: WORD address space descriptor.
const WORD_ADDRESS_SPACE: u8 = 0x88;
/// Length field (bytes after the 3-byte header) of a Memory32Fixed descriptor.
const MEMORY32_FIXED_LEN: u16 = 9;
/// Length field of a WORD address space descriptor.
const WORD_ADDRESS_SPACE_LEN: u16 = 13;
/// Length field of a DWORD address space descriptor.
const DWORD_ADDRESS_SPACE_LEN: u16 = 23;

/// Address space resource type: memory.
const RESOURCE_MEMORY: u8 = 0;
/// Address space resource type: I/O.
const RESOURCE_IO: u8 = 1;
/// Address space resource type: bus number range.
const RESOURCE_BUS_NUMBER: u8 = 2;

/// General flags: the maximum address is fixed.
const FLAG_MAX_FIXED: u8 = 1 << 3;
/// General flags: the minimum address is fixed.
const FLAG_MIN_FIXED: u8 = 1 << 2;
/// General flags (bit 0 clear): the device produces the resource for its children, as a
/// bridge does (`ResourceProducer`).
const FLAG_PRODUCER: u8 = 0;
/// I/O type-specific flags: the range covers ISA and non-ISA addresses (`EntireRange`).
const IO_ENTIRE_RANGE: u8 = 3;
/// Memory type-specific flags: read-write.
const MEM_READ_WRITE: u8 = 1 << 0;
/// Memory type-specific flags: non-cacheable (bits 2:1 = 0).
const MEM_NON_CACHEABLE: u8 = 0;
/// Memory32Fixed information byte: read-write.
const MEM32_FIXED_READ_WRITE: u8 = 1;

fn header(tag: u8, len: u16) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&len.to_le_bytes());
    v
}

fn word_address_space(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
    let mut v = header(WORD_ADDRESS_SPACE, WORD_ADDRESS_SPACE_LEN);
    v.extend_from_slice(&[
        kind,
        FLAG_PRODUCER | FLAG_MIN_FIXED | FLAG_MAX_FIXED,
        type_flags,
    ]);
    let len = max.wrapping_sub(min).wrapping_add(1);
    for field in [0u16, min, max, 0, len] {
        v.extend_from_slice(&field.to_le_bytes());
    }
    v
}

/// `WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, n)`.
pub fn word_bus_number(min: u16, max: u16) -> Vec<u8> {
    word_address_space(RESOURCE_BUS_NUMBER, 0, min, max)
}

/// `WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, min, max, 0, n)`.
pub fn word_io(min: u16, max: u16) -> Vec<u8> {
    word_address_space(RESOURCE_IO, IO_ENTIRE_RANGE, min, max)
}

/// `DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,
/// 0, min, max, 0, n)`.
pub fn dword_memory(min: u32, max: u32) -> Vec<u8> {
    let mut v = header(DWORD_ADDRESS_SPACE, DWORD_ADDRESS_SPACE_LEN);
    v.extend_from_slice(&[
        RESOURCE_MEMORY,
        FLAG_PRODUCER | FLAG_MIN_FIXED | FLAG_MAX_FIXED,
        MEM_NON_CACHEABLE | MEM_READ_WRITE,
    ]);
    let len = max.wrapping_sub(min).wrapping_add(1);
    for field in [0u32, min, max, 0, len] {
        v.extend_from_slice(&field.to_le_bytes());
    }
    v
}

/// `Memory32Fixed(ReadWrite, base, len)`.
pub fn memory32_fixed(base: u32, len: u32) -> Vec<u8> {
    let mut v = header(MEMORY32_FIXED, MEMORY32_FIXED_LEN);
    v.push(MEM32_FIXED_READ_WRITE);
    v.extend_from_slice(&base.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_lengths_match_their_headers() {
        for d in [
            word_bus_number(0, 0xff),
            word_io(0, 0xcf7),
            dword_memory(0xc000_0000, 0xfdff_ffff),
            memory32_fixed(0xb000_0000, 0x1000_0000),
        ] {
            let len = u16::from_le_bytes([d[1], d[2]]) as usize;
            assert_eq!(d.len(), 3 + len);
        }
    }

    #[test]
    fn word_bus_number_bytes() {
        assert_eq!(
            word_bus_number(0, 0xff),
            [0x88, 13, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0xff, 0, 0, 0, 0, 1]
        );
    }

    #[test]
    fn dword_memory_length_field() {
        let d = dword_memory(0xc000_0000, 0xfdff_ffff);
        assert_eq!(
            u32::from_le_bytes(d[22..26].try_into().unwrap()),
            0x3e00_0000
        );
        assert_eq!(d[5], MEM_READ_WRITE);
    }
}
