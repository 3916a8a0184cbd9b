//! The narrow window through which IOMMU models touch guest memory.
//!
//! Remapping hardware reads its tables (interrupt-remapping entries, invalidation
//! descriptors) from system memory and writes a few status words back. The models in this
//! crate do the same through [`GuestMemoryReader`], which the VMM implements over its guest
//! RAM (vm-memory) and tests implement over a plain buffer. Keeping the trait this small is
//! what lets every model here run without `/dev/kvm`.

use thiserror::Error;

/// Why a guest-memory access failed.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum MemError {
    /// Some byte of `[gpa, gpa + len)` is not backed by guest RAM (a hole, MMIO, or beyond
    /// the end of memory). Remapping hardware reports such an access as a fault: a failed
    /// IRTE read is fault reason 0x23, a failed descriptor fetch or status write is an
    /// invalidation queue error.
    #[error("guest physical range {gpa:#x}+{len:#x} is not backed by guest RAM")]
    Unmapped {
        /// First guest-physical address of the access.
        gpa: u64,
        /// Length of the access in bytes.
        len: usize,
    },
}

/// Guest-physical memory as remapping hardware sees it: plain RAM reads and writes, no
/// translation (the tables of VT-d live at guest-physical addresses).
///
/// Both methods take `&self` so that a model can read tables while it is borrowed
/// immutably (`translate`); implementations use interior mutability for writes, as
/// vm-memory's `GuestMemoryMmap` already does. The name reflects its main use (reading
/// tables); it also carries the few writes hardware performs (the status word of an
/// invalidation-wait descriptor, AMD-Vi event and GA log entries, and the IRR bit of a
/// posted guest-mode interrupt through [`GuestMemoryReader::fetch_or_u32`]; VT-d posting
/// also uses [`GuestMemoryReader::compare_exchange_u64`] on a descriptor's control qword).
pub trait GuestMemoryReader {
    /// Fills `buf` from guest-physical address `gpa`. Must fail, not wrap or truncate,
    /// when any byte of the range is outside guest RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;

    /// Writes `buf` to guest-physical address `gpa`. Must fail, writing nothing, when any
    /// byte of the range is outside guest RAM.
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError>;

    /// ORs `mask` into the little-endian dword at `gpa` and returns its previous value.
    ///
    /// This is how an AMD-Vi unit posts a guest-mode interrupt: it sets the vector's bit in
    /// the IRR of a vAPIC backing page that the guest's own vCPUs (and a guest hypervisor)
    /// read and write concurrently. **The VMM must implement this as one atomic
    /// read-modify-write** (`lock or` / `AtomicU32::fetch_or` on the mapped dword, which
    /// `gpa` being 4-byte aligned makes possible), or a concurrent guest update of the same
    /// dword could be lost. The default implementation is a plain read followed by a write:
    /// correct only when nothing else touches guest memory meanwhile (tests, fuzzing).
    /// Must fail, changing nothing, when any byte of the dword is outside guest RAM.
    fn fetch_or_u32(&self, gpa: u64, mask: u32) -> Result<u32, MemError> {
        let mut bytes = [0u8; 4];
        self.read(gpa, &mut bytes)?;
        let old = u32::from_le_bytes(bytes);
        self.write(gpa, &(old | mask).to_le_bytes())?;
        Ok(old)
    }

    /// Replaces the little-endian qword at `gpa` with `new` if it holds `current`.
    /// Returns `Ok(Ok(current))` when it was replaced and `Ok(Err(actual))`, writing
    /// nothing, when it held `actual` instead.
    ///
    /// This is how a VT-d unit updates the control qword of a posted-interrupt descriptor
    /// (ON, SN, NV, NDST), which a guest hypervisor changes with `lock cmpxchg` and
    /// `lock bts`/`btr` while the unit posts. **The VMM must implement this as one atomic
    /// compare-exchange** (`lock cmpxchg` / `AtomicU64::compare_exchange` on the mapped
    /// qword, which `gpa` being 8-byte aligned makes possible). The default implementation
    /// is a plain read, compare and write: correct only when nothing else touches guest
    /// memory meanwhile (tests, fuzzing). Must fail, changing nothing, when any byte of the
    /// qword is outside guest RAM.
    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        let mut bytes = [0u8; 8];
        self.read(gpa, &mut bytes)?;
        let actual = u64::from_le_bytes(bytes);
        if actual != current {
            return Ok(Err(actual));
        }
        self.write(gpa, &new.to_le_bytes())?;
        Ok(Ok(actual))
    }
}
