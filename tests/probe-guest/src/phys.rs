//! Access to physical memory through the entry code's identity map, and little-endian field
//! readers for byte slices.
//!
//! Addresses handed over by the VMM or firmware (ACPI pointers, the command line) are checked
//! against the mapped range here; callers turn `None` into a `PROBE FAIL` reason.

use crate::entry::IDENTITY_MAPPED;

/// Whether `[addr, addr + len)` is non-null and lies inside the identity-mapped range.
pub fn is_mapped(addr: u64, len: u64) -> bool {
    addr != 0
        && addr
            .checked_add(len)
            .is_some_and(|end| end <= IDENTITY_MAPPED)
}

/// Borrows `len` bytes of physical memory at `addr` as a slice, or `None` when the range is
/// null, empty or not mapped.
///
/// # Safety
/// The range must be ordinary memory (RAM or ROM, not MMIO) that nothing writes while the
/// slice is alive, such as firmware tables or the boot command line.
pub unsafe fn bytes(addr: u64, len: usize) -> Option<&'static [u8]> {
    if len == 0 || !is_mapped(addr, len as u64) {
        return None;
    }
    // SAFETY: the range is non-null and identity-mapped (checked above), and the caller
    // guarantees it is plain memory that stays unchanged while borrowed.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// Borrows the NUL-terminated string at `addr` (without the NUL), reading at most `max`
/// bytes; `None` when `addr` is not mapped or no NUL comes within `max` bytes.
///
/// # Safety
/// As for [`bytes`], for every byte up to the terminator.
pub unsafe fn c_string(addr: u64, max: usize) -> Option<&'static [u8]> {
    let mut len = 0usize;
    loop {
        if len == max || !is_mapped(addr, len as u64 + 1) {
            return None;
        }
        // SAFETY: this byte is mapped (checked above) and is plain memory per the contract.
        let byte = unsafe { core::ptr::read((addr + len as u64) as *const u8) };
        if byte == 0 {
            break;
        }
        len += 1;
    }
    if len == 0 {
        return Some(&[]);
    }
    // SAFETY: the `len` bytes before the terminator were just read through the same mapping.
    unsafe { bytes(addr, len) }
}

/// Little-endian `u8` at `offset`, if in bounds.
pub fn u8_at(b: &[u8], offset: usize) -> Option<u8> {
    b.get(offset).copied()
}

/// Little-endian `u16` at `offset`, if in bounds.
pub fn u16_at(b: &[u8], offset: usize) -> Option<u16> {
    let s = b.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Little-endian `u32` at `offset`, if in bounds.
pub fn u32_at(b: &[u8], offset: usize) -> Option<u32> {
    let s = b.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Little-endian `u64` at `offset`, if in bounds.
pub fn u64_at(b: &[u8], offset: usize) -> Option<u64> {
    let s = b.get(offset..offset.checked_add(8)?)?;
    let mut raw = [0u8; 8];
    raw.copy_from_slice(s);
    Some(u64::from_le_bytes(raw))
}

/// Sum of all bytes modulo 256 (ACPI checksums make it 0).
pub fn checksum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |acc, &x| acc.wrapping_add(x))
}
