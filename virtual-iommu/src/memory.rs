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
/// tables); it also carries the few status writes hardware performs (the status word of
/// an invalidation-wait descriptor).
pub trait GuestMemoryReader {
    /// Fills `buf` from guest-physical address `gpa`. Must fail, not wrap or truncate,
    /// when any byte of the range is outside guest RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;

    /// Writes `buf` to guest-physical address `gpa`. Must fail, writing nothing, when any
    /// byte of the range is outside guest RAM.
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemError>;
}
