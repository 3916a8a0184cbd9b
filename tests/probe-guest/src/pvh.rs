//! The PVH boot information (`struct hvm_start_info`) and the kernel command line.
//!
//! Layout (xen/include/public/arch-x86/hvm/start_info.h), little endian:
//! magic u32 @0, version u32 @4, flags u32 @8, nr_modules u32 @12, modlist_paddr u64 @16,
//! cmdline_paddr u64 @24, rsdp_paddr u64 @32; version >= 1 adds memmap_paddr u64 @40,
//! memmap_entries u32 @48, reserved u32 @52. Memory-map entries are 24 bytes:
//! addr u64, size u64, type u32 (1 = RAM, E820 numbering), reserved u32.

use crate::phys::{self, u32_at, u64_at};
use crate::report::Text;
use crate::text;

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;

/// Longest command line the probe reads.
const MAX_CMDLINE: usize = 4096;
/// Most memory-map entries the probe looks at.
const MAX_MEMMAP: u32 = 128;
const MEMMAP_ENTRY_SIZE: usize = 24;

/// The parts of `hvm_start_info` the probe uses.
#[derive(Clone, Copy, Debug)]
pub struct StartInfo {
    /// Physical address of the structure itself.
    pub addr: u64,
    /// Structure version (0 has no memory map).
    pub version: u32,
    /// `cmdline_paddr` (0 = none).
    pub cmdline_paddr: u64,
    /// `rsdp_paddr` (0 = the guest must find the RSDP itself, as with QEMU).
    pub rsdp_paddr: u64,
    /// `memmap_paddr` (0 for version 0).
    pub memmap_paddr: u64,
    /// `memmap_entries` (0 for version 0).
    pub memmap_entries: u32,
}

/// One entry of the PVH memory map.
#[derive(Clone, Copy, Debug)]
pub struct MemMapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type (1 RAM, 2 reserved, 3 ACPI, 4 NVS, 5 unusable).
    pub kind: u32,
}

impl StartInfo {
    /// Reads and checks the structure at `addr` (the entry `ebx`).
    pub fn read(addr: u64) -> Result<StartInfo, Text> {
        // SAFETY: the loader places hvm_start_info in RAM and never changes it afterwards.
        let head = unsafe { phys::bytes(addr, 40) }
            .ok_or_else(|| text!("hvm_start_info at 0x{:x} not mapped", addr))?;
        let magic = u32_at(head, 0).unwrap_or(0);
        if magic != START_INFO_MAGIC {
            return Err(text!(
                "bad hvm_start_info magic 0x{:x} at 0x{:x}",
                magic,
                addr
            ));
        }
        let version = u32_at(head, 4).unwrap_or(0);
        let mut info = StartInfo {
            addr,
            version,
            cmdline_paddr: u64_at(head, 24).unwrap_or(0),
            rsdp_paddr: u64_at(head, 32).unwrap_or(0),
            memmap_paddr: 0,
            memmap_entries: 0,
        };
        if version >= 1 {
            // SAFETY: as above; version 1 structures are 56 bytes long.
            let full = unsafe { phys::bytes(addr, 56) }
                .ok_or_else(|| text!("hvm_start_info at 0x{:x} not mapped", addr))?;
            info.memmap_paddr = u64_at(full, 40).unwrap_or(0);
            info.memmap_entries = u32_at(full, 48).unwrap_or(0);
        }
        Ok(info)
    }

    /// The command line without its NUL; empty when there is none or it is unreadable.
    pub fn cmdline(&self) -> &'static [u8] {
        if self.cmdline_paddr == 0 {
            return &[];
        }
        // SAFETY: the loader writes the command line before entry and never changes it.
        unsafe { phys::c_string(self.cmdline_paddr, MAX_CMDLINE) }.unwrap_or(&[])
    }

    /// Memory-map entry `index`, if present and readable.
    pub fn memmap_entry(&self, index: u32) -> Option<MemMapEntry> {
        if index >= self.memmap_entries.min(MAX_MEMMAP) {
            return None;
        }
        let addr = self
            .memmap_paddr
            .checked_add(u64::from(index) * MEMMAP_ENTRY_SIZE as u64)?;
        // SAFETY: the loader writes the memory map before entry and never changes it.
        let e = unsafe { phys::bytes(addr, MEMMAP_ENTRY_SIZE) }?;
        Some(MemMapEntry {
            addr: u64_at(e, 0)?,
            size: u64_at(e, 8)?,
            kind: u32_at(e, 16)?,
        })
    }
}

/// The value of the first `key=value` word of `cmdline` (words split by ASCII whitespace).
pub fn cmdline_value<'a>(cmdline: &'a [u8], key: &str) -> Option<&'a [u8]> {
    cmdline
        .split(|b| b.is_ascii_whitespace())
        .find_map(|word| word.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
}

/// The decimal value of `key=N` on `cmdline`, `default` when the key is absent; fails on a
/// value that is not a decimal number below 2^32.
pub fn cmdline_u32(cmdline: &[u8], key: &str, default: u32) -> Result<u32, Text> {
    let Some(raw) = cmdline_value(cmdline, key) else {
        return Ok(default);
    };
    let parsed = (!raw.is_empty()).then_some(raw).and_then(|digits| {
        digits.iter().try_fold(0u32, |acc, &b| {
            let digit = char::from(b).to_digit(10)?;
            acc.checked_mul(10)?.checked_add(digit)
        })
    });
    parsed.ok_or_else(|| text!("{}= needs a decimal number below 2^32", key))
}
