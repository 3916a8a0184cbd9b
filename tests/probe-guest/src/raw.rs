//! Register accesses of 1, 2, 4 or 8 bytes at any alignment, for the `hostile` scenario:
//! memory-mapped ones through the identity map with plain `mov` instructions (a misaligned
//! `read_volatile` would be undefined behaviour in Rust, the instruction itself is fine on
//! x86 and reaches the VMM as one MMIO exit, or two where it crosses a page), and port I/O.

use core::arch::asm;

use crate::x86;

/// The width of one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 1 byte.
    Byte,
    /// 2 bytes.
    Word,
    /// 4 bytes.
    Dword,
    /// 8 bytes (memory only).
    Qword,
}

impl Width {
    /// Every width a memory access can have.
    pub const MEMORY: [Width; 4] = [Width::Byte, Width::Word, Width::Dword, Width::Qword];
    /// Every width a port access can have.
    pub const PORT: [Width; 3] = [Width::Byte, Width::Word, Width::Dword];

    /// Bytes accessed.
    pub fn bytes(self) -> u64 {
        match self {
            Width::Byte => 1,
            Width::Word => 2,
            Width::Dword => 4,
            Width::Qword => 8,
        }
    }

    /// The value with every accessed bit set: what a read where nothing decodes returns.
    pub fn ones(self) -> u64 {
        match self {
            Width::Qword => u64::MAX,
            w => (1u64 << (8 * w.bytes())) - 1,
        }
    }
}

/// Reads `width` bytes at physical address `addr`, zero-extended.
///
/// # Safety
/// `[addr, addr + width)` must be identity-mapped, and the caller accepts what the read does
/// to the device there (reads can clear status).
pub unsafe fn read(addr: u64, width: Width) -> u64 {
    let value: u64;
    // SAFETY: per the contract; each instruction reads exactly `width` bytes at `addr` and
    // writes only the output register (a 32-bit destination zero-extends to 64 bits).
    unsafe {
        match width {
            Width::Byte => asm!(
                "movzx {v:e}, byte ptr [{a}]",
                a = in(reg) addr,
                v = out(reg) value,
                options(nostack, preserves_flags)
            ),
            Width::Word => asm!(
                "movzx {v:e}, word ptr [{a}]",
                a = in(reg) addr,
                v = out(reg) value,
                options(nostack, preserves_flags)
            ),
            Width::Dword => asm!(
                "mov {v:e}, dword ptr [{a}]",
                a = in(reg) addr,
                v = out(reg) value,
                options(nostack, preserves_flags)
            ),
            Width::Qword => asm!(
                "mov {v}, qword ptr [{a}]",
                a = in(reg) addr,
                v = out(reg) value,
                options(nostack, preserves_flags)
            ),
        }
    }
    value
}

/// Writes the low `width` bytes of `value` at physical address `addr`.
///
/// # Safety
/// `[addr, addr + width)` must be identity-mapped device registers (or nothing), never
/// memory the probe uses, and the caller accepts what the write does to the device.
pub unsafe fn write(addr: u64, width: Width, value: u64) {
    // SAFETY: per the contract; each instruction writes exactly `width` bytes at `addr`.
    unsafe {
        match width {
            Width::Byte => asm!(
                "mov byte ptr [{a}], {v:l}",
                a = in(reg) addr,
                v = in(reg) value,
                options(nostack, preserves_flags)
            ),
            Width::Word => asm!(
                "mov word ptr [{a}], {v:x}",
                a = in(reg) addr,
                v = in(reg) value,
                options(nostack, preserves_flags)
            ),
            Width::Dword => asm!(
                "mov dword ptr [{a}], {v:e}",
                a = in(reg) addr,
                v = in(reg) value,
                options(nostack, preserves_flags)
            ),
            Width::Qword => asm!(
                "mov qword ptr [{a}], {v}",
                a = in(reg) addr,
                v = in(reg) value,
                options(nostack, preserves_flags)
            ),
        }
    }
}

/// Reads `width` bytes from I/O port `port` (a [`Width::Qword`] reads 4).
///
/// # Safety
/// The caller accepts what the read does to the device (reads can have side effects).
pub unsafe fn port_read(port: u16, width: Width) -> u32 {
    // SAFETY: per the contract.
    unsafe {
        match width {
            Width::Byte => u32::from(x86::inb(port)),
            Width::Word => u32::from(x86::inw(port)),
            Width::Dword | Width::Qword => x86::inl(port),
        }
    }
}

/// Writes the low `width` bytes of `value` to I/O port `port` (a [`Width::Qword`] writes 4).
///
/// # Safety
/// As for [`x86::outb`]: the write must not break anything the guest relies on, e.g. end
/// the VM (the `hostile` scenario checks that before calling).
pub unsafe fn port_write(port: u16, width: Width, value: u32) {
    // SAFETY: per the contract.
    unsafe {
        match width {
            Width::Byte => x86::outb(port, value as u8),
            Width::Word => x86::outw(port, value as u16),
            Width::Dword | Width::Qword => x86::outl(port, value),
        }
    }
}
