//! Memory-mapped device registers: a window of physical address space, checked once against
//! the identity map, read and written with volatile accesses of the register's width.
//!
//! The windows the probe uses (VT-d unit, PCI BARs) lie in the 3-4 GiB MMIO hole, which the
//! entry code maps uncached.

use crate::phys;
use crate::report::Text;
use crate::text;

/// A register window at a physical address.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: u64,
    len: u64,
}

impl Mmio {
    /// The window `[base, base + len)`; fails when it is not identity-mapped or `base` is not
    /// 8-byte aligned.
    pub fn new(what: &str, base: u64, len: u64) -> Result<Mmio, Text> {
        if !phys::is_mapped(base, len) || !base.is_multiple_of(8) {
            return Err(text!(
                "{} registers at 0x{:x}+0x{:x} are not in the probe's identity map",
                what,
                base,
                len
            ));
        }
        Ok(Mmio { base, len })
    }

    /// Physical base address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Address of the `size`-byte register at `offset`. An offset outside the window is a bug
    /// in the probe (offsets are constants or bounded by the caller), so it panics, which the
    /// panic handler reports as the scenario's failure.
    fn addr(&self, offset: u64, size: u64) -> u64 {
        assert!(
            offset.is_multiple_of(size) && offset + size <= self.len,
            "MMIO access at +0x{:x} ({} bytes) outside the 0x{:x}-byte window at 0x{:x}",
            offset,
            size,
            self.len,
            self.base
        );
        self.base + offset
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read32(&self, offset: u64) -> u32 {
        let addr = self.addr(offset, 4);
        // SAFETY: inside the window, which `new` checked is identity-mapped (uncached in the
        // MMIO hole); aligned; device registers are read with volatile loads of their width.
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write32(&self, offset: u64, value: u32) {
        let addr = self.addr(offset, 4);
        // SAFETY: as in `read32`; the caller owns the device's reaction to the write.
        unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
    }

    /// Reads the 64-bit register at `offset` with one 8-byte access.
    pub fn read64(&self, offset: u64) -> u64 {
        let addr = self.addr(offset, 8);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::read_volatile(addr as *const u64) }
    }

    /// Writes the 64-bit register at `offset` with one 8-byte access.
    pub fn write64(&self, offset: u64, value: u64) {
        let addr = self.addr(offset, 8);
        // SAFETY: as in `write32`.
        unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
    }

    /// Reads the 8-bit register at `offset`.
    pub fn read8(&self, offset: u64) -> u8 {
        let addr = self.addr(offset, 1);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::read_volatile(addr as *const u8) }
    }

    /// Writes the 8-bit register at `offset`.
    pub fn write8(&self, offset: u64, value: u8) {
        let addr = self.addr(offset, 1);
        // SAFETY: as in `write32`.
        unsafe { core::ptr::write_volatile(addr as *mut u8, value) }
    }

    /// Reads the 16-bit register at `offset`.
    pub fn read16(&self, offset: u64) -> u16 {
        let addr = self.addr(offset, 2);
        // SAFETY: as in `read32`.
        unsafe { core::ptr::read_volatile(addr as *const u16) }
    }

    /// Writes the 16-bit register at `offset`.
    pub fn write16(&self, offset: u64, value: u16) {
        let addr = self.addr(offset, 2);
        // SAFETY: as in `write32`.
        unsafe { core::ptr::write_volatile(addr as *mut u16, value) }
    }
}
