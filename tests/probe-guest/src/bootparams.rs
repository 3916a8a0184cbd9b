//! The Linux boot information (`struct boot_params`, the "zero page") turned into the PVH
//! `hvm_start_info` the rest of the probe reads, so that every scenario runs the same way
//! whichever protocol started the probe (see [`crate::entry`]).
//!
//! Fields read (arch/x86/include/uapi/asm/bootparam.h, Documentation/arch/x86/zero-page.rst):
//! `acpi_rsdp_addr` u64 @0x070, `ext_ramdisk_image` u32 @0x0c0 and `ext_ramdisk_size` u32
//! @0x0c4 (bits 63:32), `ext_cmd_line_ptr` u32 @0x0c8 (bits 63:32 of the command line
//! address), `e820_entries` u8 @0x1e8, the setup header from 0x1f1 (magic "HdrS" @0x202,
//! `version` u16 @0x206, `ramdisk_image` u32 @0x218, `ramdisk_size` u32 @0x21c, `cmd_line_ptr`
//! u32 @0x228), `e820_table` @0x2d0: up to 128 entries of 20 bytes (addr u64, size u64,
//! type u32).
//!
//! The probe has no use for an initrd, but a loader must keep one out of the memory the image
//! occupies at run time (`init_size` from the load address: the probe's `.bss`, stacks and
//! page tables): the conversion fails when the initrd overlaps it, since the entry code has
//! already overwritten that part of it.
//!
//! The synthesized structure is version 1 with the memory map converted to PVH's 24-byte
//! entries; it lives in `.bss`, inside the probe's image, so nothing the probe later writes
//! (the AP trampoline page, for instance) can overwrite it.

use core::cell::UnsafeCell;

use crate::phys::{self, u16_at, u32_at, u64_at, u8_at};
use crate::pvh::START_INFO_MAGIC;
use crate::report::Text;
use crate::text;

/// Size of `struct boot_params`.
const BOOT_PARAMS_SIZE: usize = 4096;
/// Offset of `acpi_rsdp_addr`.
const ACPI_RSDP_ADDR: usize = 0x070;
/// Offset of `ext_ramdisk_image`.
const EXT_RAMDISK_IMAGE: usize = 0x0c0;
/// Offset of `ext_ramdisk_size`.
const EXT_RAMDISK_SIZE: usize = 0x0c4;
/// Offset of `hdr.ramdisk_image`.
const HDR_RAMDISK_IMAGE: usize = 0x218;
/// Offset of `hdr.ramdisk_size`.
const HDR_RAMDISK_SIZE: usize = 0x21c;
/// Offset of `ext_cmd_line_ptr`.
const EXT_CMD_LINE_PTR: usize = 0x0c8;
/// Offset of `e820_entries`.
const E820_ENTRIES: usize = 0x1e8;
/// Offset of the setup header's magic, "HdrS".
const HDR_MAGIC: usize = 0x202;
/// Offset of the setup header's boot protocol `version`.
const HDR_VERSION: usize = 0x206;
/// Offset of `hdr.cmd_line_ptr`.
const HDR_CMD_LINE_PTR: usize = 0x228;
/// Offset of `e820_table`.
const E820_TABLE: usize = 0x2d0;
/// Size of one `struct boot_e820_entry`.
const E820_ENTRY_SIZE: usize = 20;
/// Capacity of `e820_table` (E820_MAX_ENTRIES_ZEROPAGE).
const E820_MAX: usize = 128;
/// Oldest protocol with `cmd_line_ptr` (2.02).
const CMD_LINE_PTR_PROTOCOL: u16 = 0x0202;
/// `hvm_start_info` version with a memory map.
const START_INFO_VERSION: u32 = 1;

/// `struct hvm_start_info` (version 1), as [`crate::pvh::StartInfo::read`] expects it.
#[repr(C)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[derive(Clone, Copy)]
#[repr(C)]
struct HvmMemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// The synthesized start info followed by its memory map.
#[repr(C, align(8))]
struct Synthesized {
    info: HvmStartInfo,
    memmap: [HvmMemmapEntry; E820_MAX],
}

/// Storage for [`Synthesized`], written once on the BSP before anything reads it.
struct SynthesizedCell(UnsafeCell<Synthesized>);

// SAFETY: written only by `start_info_from`, which runs once on the BSP before any other CPU
// is started; afterwards it is only read.
unsafe impl Sync for SynthesizedCell {}

static SYNTHESIZED: SynthesizedCell = SynthesizedCell(UnsafeCell::new(Synthesized {
    info: HvmStartInfo {
        magic: 0,
        version: 0,
        flags: 0,
        nr_modules: 0,
        modlist_paddr: 0,
        cmdline_paddr: 0,
        rsdp_paddr: 0,
        memmap_paddr: 0,
        memmap_entries: 0,
        reserved: 0,
    },
    memmap: [HvmMemmapEntry {
        addr: 0,
        size: 0,
        kind: 0,
        reserved: 0,
    }; E820_MAX],
}));

extern "C" {
    /// First byte of the image (link.ld).
    static __image_start: u8;
    /// End of the image at run time: `.bss`, stacks (link.ld).
    static __image_end: u8;
}

/// What was taken from a `boot_params`, for the entry line.
#[derive(Clone, Copy, Debug)]
pub struct Converted {
    /// Physical address of the synthesized `hvm_start_info`.
    pub start_info: u64,
    /// Boot protocol version from the setup header.
    pub protocol: u16,
    /// E820 entries copied.
    pub e820_entries: u32,
    /// The initrd the loader passed: (address, size), size 0 for none.
    pub ramdisk: (u64, u64),
}

/// A 64-bit field split into a low u32 at `low` and a high u32 at `high`.
fn split_u64(bp: &[u8], low: usize, high: usize) -> Option<u64> {
    Some((u64::from(u32_at(bp, high)?) << 32) | u64::from(u32_at(bp, low)?))
}

/// Reads the `boot_params` at `addr` and writes the equivalent `hvm_start_info` into the
/// probe's own memory. Fails when the structure is not mapped or has no setup header.
///
/// Must be called once, on the BSP, before other CPUs run.
pub fn start_info_from(addr: u64) -> Result<Converted, Text> {
    // SAFETY: the loader wrote boot_params before entry and nothing changes it afterwards.
    let bp = unsafe { phys::bytes(addr, BOOT_PARAMS_SIZE) }
        .ok_or_else(|| text!("boot_params at 0x{:x} not mapped", addr))?;
    let field = |what: &str| text!("boot_params at 0x{:x}: no {}", addr, what);
    if bp.get(HDR_MAGIC..HDR_MAGIC + 4) != Some(b"HdrS".as_slice()) {
        return Err(text!(
            "boot_params at 0x{:x} has no setup header (\"HdrS\" at 0x{:x})",
            addr,
            HDR_MAGIC
        ));
    }
    let protocol = u16_at(bp, HDR_VERSION).ok_or_else(|| field("version"))?;
    let cmdline = if protocol >= CMD_LINE_PTR_PROTOCOL {
        split_u64(bp, HDR_CMD_LINE_PTR, EXT_CMD_LINE_PTR).ok_or_else(|| field("cmd_line_ptr"))?
    } else {
        0
    };
    let ramdisk_image = split_u64(bp, HDR_RAMDISK_IMAGE, EXT_RAMDISK_IMAGE)
        .ok_or_else(|| field("ramdisk_image"))?;
    let ramdisk_size =
        split_u64(bp, HDR_RAMDISK_SIZE, EXT_RAMDISK_SIZE).ok_or_else(|| field("ramdisk_size"))?;
    let image = (&raw const __image_start) as u64..(&raw const __image_end) as u64;
    if ramdisk_size != 0
        && ramdisk_image < image.end
        && image.start < ramdisk_image.saturating_add(ramdisk_size)
    {
        return Err(text!(
            "the loader put the initrd (0x{:x}, {} bytes) inside the image's run-time memory 0x{:x}..0x{:x} (load address + init_size)",
            ramdisk_image,
            ramdisk_size,
            image.start,
            image.end
        ));
    }
    let rsdp = u64_at(bp, ACPI_RSDP_ADDR).ok_or_else(|| field("acpi_rsdp_addr"))?;
    let declared = u8_at(bp, E820_ENTRIES).ok_or_else(|| field("e820_entries"))?;
    if usize::from(declared) > E820_MAX {
        return Err(text!(
            "boot_params at 0x{:x}: e820_entries={} exceeds {}",
            addr,
            declared,
            E820_MAX
        ));
    }

    let cell = SYNTHESIZED.0.get();
    for i in 0..usize::from(declared) {
        let at = E820_TABLE + i * E820_ENTRY_SIZE;
        let entry = HvmMemmapEntry {
            addr: u64_at(bp, at).ok_or_else(|| field("e820_table entry"))?,
            size: u64_at(bp, at + 8).ok_or_else(|| field("e820_table entry"))?,
            kind: u32_at(bp, at + 16).ok_or_else(|| field("e820_table entry"))?,
            reserved: 0,
        };
        // SAFETY: `i` < E820_MAX; the BSP is the only CPU running (the contract) and nothing
        // holds a reference into the cell.
        unsafe { (*cell).memmap[i] = entry };
    }
    // SAFETY: as above; the memory map is part of the same static, so its address is a
    // physical address under the identity map.
    let start_info = unsafe {
        (*cell).info = HvmStartInfo {
            magic: START_INFO_MAGIC,
            version: START_INFO_VERSION,
            flags: 0,
            nr_modules: 0,
            modlist_paddr: 0,
            cmdline_paddr: cmdline,
            rsdp_paddr: rsdp,
            memmap_paddr: (&raw const (*cell).memmap) as u64,
            memmap_entries: u32::from(declared),
            reserved: 0,
        };
        (&raw const (*cell).info) as u64
    };
    Ok(Converted {
        start_info,
        protocol,
        e820_entries: u32::from(declared),
        ramdisk: (ramdisk_image, ramdisk_size),
    })
}
