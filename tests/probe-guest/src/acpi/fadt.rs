//! The FADT's power-off and reset controls, and the `\_S5` sleep type from the DSDT.
//!
//! Field offsets are from ACPI 6.5 Table 5.9 (FADT format); a field counts as present only when
//! the table is long enough to hold it. Generic Address Structures (Table 5.1) are written
//! here for system I/O and system memory spaces; anything else is reported as unsupported.

use crate::acpi::Table;
use crate::phys::{self, u32_at, u64_at, u8_at};
use crate::report::Text;
use crate::{text, x86};

/// `PM1a_CNT_BLK`: I/O port of the PM1a control register block.
const PM1A_CNT_BLK: usize = 64;
/// `PM1b_CNT_BLK`: I/O port of the PM1b control register block (0 = none).
const PM1B_CNT_BLK: usize = 68;
/// `Flags`.
const FLAGS: usize = 112;
/// `RESET_REG` (GAS).
const RESET_REG: usize = 116;
/// `RESET_VALUE`.
const RESET_VALUE: usize = 128;
/// `X_PM1a_CNT_BLK` (GAS).
const X_PM1A_CNT_BLK: usize = 172;
/// `X_PM1b_CNT_BLK` (GAS).
const X_PM1B_CNT_BLK: usize = 184;
/// `SLEEP_CONTROL_REG` (GAS).
const SLEEP_CONTROL_REG: usize = 244;

/// Flags bit 10: RESET_REG_SUP, the reset register is supported.
pub const FLAG_RESET_REG_SUP: u32 = 1 << 10;
/// Flags bit 20: HW_REDUCED_ACPI.
pub const FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;

/// Size of a Generic Address Structure, and the offsets of its fields.
const GAS_LEN: usize = 12;
const GAS_SPACE: usize = 0;
const GAS_BIT_WIDTH: usize = 1;
const GAS_ACCESS_SIZE: usize = 3;
const GAS_ADDRESS: usize = 4;
/// End of the I/O port space.
const IO_SPACE_END: u32 = 0x1_0000;
/// GAS address space: system memory.
const SPACE_MEMORY: u8 = 0;
/// GAS address space: system I/O.
const SPACE_IO: u8 = 1;
/// GAS access size codes: byte, word, dword (0 = derive from the bit width).
const ACCESS_BYTE: u8 = 1;
const ACCESS_WORD: u8 = 2;
const ACCESS_DWORD: u8 = 3;

/// PM1 control: SLP_TYP field (bits 12:10) and SLP_EN (bit 13) (ACPI 6.5 Table 4.13).
const PM1_SLP_TYP_SHIFT: u32 = 10;
const PM1_SLP_TYP_MASK: u16 = 0x7 << PM1_SLP_TYP_SHIFT;
const PM1_SLP_EN: u16 = 1 << 13;
/// Sleep control register: SLP_TYP field (bits 4:2) and SLP_EN (bit 5) (ACPI 6.5 §4.8.3.7).
const SLEEP_CONTROL_SLP_TYP_SHIFT: u32 = 2;
const SLEEP_CONTROL_SLP_TYP_MASK: u8 = 0x7;
const SLEEP_CONTROL_SLP_EN: u8 = 1 << 5;

/// Width of a register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 8 bits.
    Byte,
    /// 16 bits.
    Word,
    /// 32 bits.
    Dword,
}

/// Where a register lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// An I/O port.
    Io(u16),
    /// A physical address under the probe's identity map.
    Memory(u64),
}

/// A register named by the FADT, validated for access.
#[derive(Clone, Copy, Debug)]
pub struct Register {
    /// Its location.
    pub space: Space,
    /// Access width.
    pub width: Width,
}

impl core::fmt::Display for Register {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let bits = match self.width {
            Width::Byte => 8,
            Width::Word => 16,
            Width::Dword => 32,
        };
        match self.space {
            Space::Io(port) => write!(f, "I/O port 0x{:x} ({} bits)", port, bits),
            Space::Memory(addr) => write!(f, "memory 0x{:x} ({} bits)", addr, bits),
        }
    }
}

impl Register {
    /// Reads the register.
    ///
    /// # Safety
    /// Reading it must have no side effect the caller did not intend.
    pub unsafe fn read(&self) -> u32 {
        match (self.space, self.width) {
            // SAFETY: the caller accepts the side effects of reading this firmware register.
            (Space::Io(port), Width::Byte) => u32::from(unsafe { x86::inb(port) }),
            // SAFETY: as above.
            (Space::Io(port), Width::Word) => u32::from(unsafe { x86::inw(port) }),
            // SAFETY: as above.
            (Space::Io(port), Width::Dword) => unsafe { x86::inl(port) },
            // SAFETY: the address is identity-mapped and aligned (checked when the register
            // was parsed); the caller accepts the side effects.
            (Space::Memory(addr), Width::Byte) => unsafe {
                u32::from(core::ptr::read_volatile(addr as *const u8))
            },
            // SAFETY: as above.
            (Space::Memory(addr), Width::Word) => unsafe {
                u32::from(core::ptr::read_volatile(addr as *const u16))
            },
            // SAFETY: as above.
            (Space::Memory(addr), Width::Dword) => unsafe {
                core::ptr::read_volatile(addr as *const u32)
            },
        }
    }

    /// Writes `value` (truncated to the register's width).
    ///
    /// # Safety
    /// The write takes effect on the platform (power-off, reset): the caller wants that.
    pub unsafe fn write(&self, value: u32) {
        match (self.space, self.width) {
            // SAFETY: the caller wants this write's effect.
            (Space::Io(port), Width::Byte) => unsafe { x86::outb(port, value as u8) },
            // SAFETY: as above.
            (Space::Io(port), Width::Word) => unsafe { x86::outw(port, value as u16) },
            // SAFETY: as above.
            (Space::Io(port), Width::Dword) => unsafe { x86::outl(port, value) },
            // SAFETY: the address is identity-mapped and aligned (checked when the register
            // was parsed); the caller wants the write's effect.
            (Space::Memory(addr), Width::Byte) => unsafe {
                core::ptr::write_volatile(addr as *mut u8, value as u8)
            },
            // SAFETY: as above.
            (Space::Memory(addr), Width::Word) => unsafe {
                core::ptr::write_volatile(addr as *mut u16, value as u16)
            },
            // SAFETY: as above.
            (Space::Memory(addr), Width::Dword) => unsafe {
                core::ptr::write_volatile(addr as *mut u32, value)
            },
        }
    }
}

/// Parses the GAS at `offset` of the FADT: `None` when the table is too short or the address
/// is 0 (not implemented), an error when it cannot be accessed by the probe.
fn gas(fadt: &Table, offset: usize, what: &str) -> Result<Option<Register>, Text> {
    let Some(raw) = fadt.data.get(offset..offset + GAS_LEN) else {
        return Ok(None);
    };
    let address = u64_at(raw, GAS_ADDRESS).unwrap_or(0);
    if address == 0 {
        return Ok(None);
    }
    let (space, bit_width, access) = (raw[GAS_SPACE], raw[GAS_BIT_WIDTH], raw[GAS_ACCESS_SIZE]);
    let width = match (access, bit_width) {
        (ACCESS_BYTE, _) | (0, 8) => Width::Byte,
        (ACCESS_WORD, _) | (0, 16) => Width::Word,
        (ACCESS_DWORD, _) | (0, 32) => Width::Dword,
        _ => {
            return Err(text!(
                "FADT {}: unsupported access size {} / bit width {}",
                what,
                access,
                bit_width
            ))
        }
    };
    let bytes = match width {
        Width::Byte => 1,
        Width::Word => 2,
        Width::Dword => 4,
    };
    let space = match space {
        SPACE_IO => Space::Io(
            u16::try_from(address)
                .ok()
                .filter(|p| u32::from(*p) + bytes <= IO_SPACE_END)
                .ok_or_else(|| text!("FADT {}: I/O address 0x{:x} out of range", what, address))?,
        ),
        SPACE_MEMORY
            if phys::is_mapped(address, u64::from(bytes))
                && address.is_multiple_of(u64::from(bytes)) =>
        {
            Space::Memory(address)
        }
        SPACE_MEMORY => {
            return Err(text!(
                "FADT {}: memory address 0x{:x} not mapped or misaligned",
                what,
                address
            ))
        }
        other => return Err(text!("FADT {}: unsupported address space {}", what, other)),
    };
    Ok(Some(Register { space, width }))
}

/// A legacy 32-bit PM1 control block port (`PM1a_CNT_BLK`, `PM1b_CNT_BLK`), if set.
fn pm1_port(fadt: &Table, offset: usize, what: &str) -> Result<Option<Register>, Text> {
    match u32_at(fadt.data, offset).unwrap_or(0) {
        0 => Ok(None),
        port => u16::try_from(port)
            .map(|p| {
                Some(Register {
                    space: Space::Io(p),
                    width: Width::Word,
                })
            })
            .map_err(|_| text!("FADT {}: port 0x{:x} out of range", what, port)),
    }
}

/// The FADT fields the platform-control scenarios use.
pub struct Fadt<'a> {
    table: &'a Table,
    /// `Flags`.
    pub flags: u32,
}

impl<'a> Fadt<'a> {
    /// Wraps a validated `FACP` table; fails when it is too short to have `Flags`.
    pub fn new(table: &'a Table) -> Result<Fadt<'a>, Text> {
        let flags = u32_at(table.data, FLAGS)
            .ok_or_else(|| text!("FADT is {} bytes, too short for Flags", table.len()))?;
        Ok(Fadt { table, flags })
    }

    /// Whether HW_REDUCED_ACPI is set.
    pub fn hw_reduced(&self) -> bool {
        self.flags & FLAG_HW_REDUCED_ACPI != 0
    }

    /// The reset register and value, when RESET_REG_SUP is set and the register is filled in.
    pub fn reset(&self) -> Result<Option<(Register, u8)>, Text> {
        if self.flags & FLAG_RESET_REG_SUP == 0 {
            return Ok(None);
        }
        let Some(reg) = gas(self.table, RESET_REG, "RESET_REG")? else {
            return Ok(None);
        };
        let value = u8_at(self.table.data, RESET_VALUE)
            .ok_or_else(|| text!("FADT too short for RESET_VALUE"))?;
        Ok(Some((reg, value)))
    }

    /// SLEEP_CONTROL_REG (hardware-reduced platforms).
    pub fn sleep_control(&self) -> Result<Option<Register>, Text> {
        gas(self.table, SLEEP_CONTROL_REG, "SLEEP_CONTROL_REG")
    }

    /// The PM1a and PM1b control registers: the extended (X_) GAS when filled in, else the
    /// legacy port.
    pub fn pm1_control(&self) -> Result<(Option<Register>, Option<Register>), Text> {
        let a = match gas(self.table, X_PM1A_CNT_BLK, "X_PM1a_CNT_BLK")? {
            Some(r) => Some(r),
            None => pm1_port(self.table, PM1A_CNT_BLK, "PM1a_CNT_BLK")?,
        };
        let b = match gas(self.table, X_PM1B_CNT_BLK, "X_PM1b_CNT_BLK")? {
            Some(r) => Some(r),
            None => pm1_port(self.table, PM1B_CNT_BLK, "PM1b_CNT_BLK")?,
        };
        Ok((a, b))
    }
}

/// The PM1 control value that enters sleep type `slp_typ`, from the register's `current`
/// value (other bits, such as SCI_EN, are kept).
pub fn pm1_sleep_value(current: u32, slp_typ: u8) -> u32 {
    let keep = (current as u16) & !(PM1_SLP_TYP_MASK | PM1_SLP_EN);
    let typ = (u16::from(slp_typ) << PM1_SLP_TYP_SHIFT) & PM1_SLP_TYP_MASK;
    u32::from(keep | typ | PM1_SLP_EN)
}

/// The sleep control register value that enters sleep type `slp_typ`.
pub fn sleep_control_value(slp_typ: u8) -> u32 {
    u32::from(
        ((slp_typ & SLEEP_CONTROL_SLP_TYP_MASK) << SLEEP_CONTROL_SLP_TYP_SHIFT)
            | SLEEP_CONTROL_SLP_EN,
    )
}

/// AML opcodes and prefixes (ACPI 6.5 §20.2) met in an `_S5_` package.
const AML_NAME_OP: u8 = 0x08;
const AML_ROOT_CHAR: u8 = b'\\';
const AML_PACKAGE_OP: u8 = 0x12;
const AML_ZERO_OP: u8 = 0x00;
const AML_ONE_OP: u8 = 0x01;
const AML_ONES_OP: u8 = 0xff;
const AML_BYTE_PREFIX: u8 = 0x0a;
const AML_WORD_PREFIX: u8 = 0x0b;
const AML_DWORD_PREFIX: u8 = 0x0c;
const AML_QWORD_PREFIX: u8 = 0x0e;
/// PkgLength lead byte: bits 7:6 count the bytes that follow.
const PKG_LENGTH_FOLLOWING_SHIFT: u32 = 6;

/// The `\_S5` sleep types (SLP_TYPa, SLP_TYPb).
#[derive(Clone, Copy, Debug)]
pub struct S5 {
    /// First package element: the value for PM1a / the sleep control register.
    pub slp_typ_a: u8,
    /// Second element (PM1b), when present.
    pub slp_typ_b: Option<u8>,
}

/// One AML integer at the start of `b`: (value, bytes used).
fn aml_integer(b: &[u8]) -> Option<(u64, usize)> {
    let (&op, rest) = b.split_first()?;
    match op {
        AML_ZERO_OP => Some((0, 1)),
        AML_ONE_OP => Some((1, 1)),
        AML_ONES_OP => Some((u64::MAX, 1)),
        AML_BYTE_PREFIX => Some((u64::from(*rest.first()?), 2)),
        AML_WORD_PREFIX => Some((u64::from(phys::u16_at(rest, 0)?), 3)),
        AML_DWORD_PREFIX => Some((u64::from(u32_at(rest, 0)?), 5)),
        AML_QWORD_PREFIX => Some((u64_at(rest, 0)?, 9)),
        _ => None,
    }
}

/// Finds `Name(_S5_, Package(){a, b, ...})` in the DSDT's AML by scanning for the name
/// (preceded by NameOp, optionally with the root prefix) and decodes the first two elements.
pub fn s5_from_dsdt(dsdt: &Table) -> Result<S5, Text> {
    let aml = dsdt.data.get(super::HEADER_LEN..).unwrap_or(&[]);
    let at = aml
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"_S5_")
        .map(|(i, _)| i)
        .find(|&i| {
            let before = |n: usize| i.checked_sub(n).and_then(|j| aml.get(j)).copied();
            before(1) == Some(AML_NAME_OP)
                || (before(1) == Some(AML_ROOT_CHAR) && before(2) == Some(AML_NAME_OP))
        })
        .ok_or_else(|| text!("DSDT has no Name(_S5_, ...)"))?;
    let body = &aml[at + 4..];
    if body.first() != Some(&AML_PACKAGE_OP) {
        return Err(text!(
            "DSDT _S5_ is not a Package (opcode 0x{:x})",
            body.first().copied().unwrap_or(0)
        ));
    }
    let lead = *body
        .get(1)
        .ok_or_else(|| text!("DSDT _S5_ package truncated"))?;
    let following = usize::from(lead >> PKG_LENGTH_FOLLOWING_SHIFT);
    // PackageOp, PkgLength (1 + following bytes), NumElements.
    let count_at = 2 + following;
    let count = *body
        .get(count_at)
        .ok_or_else(|| text!("DSDT _S5_ package truncated"))?;
    if count == 0 {
        return Err(text!("DSDT _S5_ package is empty"));
    }
    let elements = &body[count_at + 1..];
    let (a, used) =
        aml_integer(elements).ok_or_else(|| text!("DSDT _S5_ first element is not an integer"))?;
    let slp_typ_a =
        u8::try_from(a).map_err(|_| text!("DSDT _S5_ SLP_TYPa 0x{:x} out of range", a))?;
    let slp_typ_b = if count >= 2 {
        aml_integer(&elements[used..]).and_then(|(b, _)| u8::try_from(b).ok())
    } else {
        None
    };
    Ok(S5 {
        slp_typ_a,
        slp_typ_b,
    })
}
