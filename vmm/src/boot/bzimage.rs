//! bzImage boot through the 64-bit entry of the Linux x86 boot protocol.

use std::fs::File;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::BzImage;
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

use super::{
    check_cmdline, load_image, load_initramfs, write_cmdline, BootError, BootSetup, EntryMode,
};
use crate::layout::{CMDLINE_MAX_SIZE, ZERO_PAGE_ADDR};

/// Oldest boot protocol with `xloadflags` (and so a declared 64-bit entry): 2.12.
const MIN_PROTOCOL: u16 = 0x020c;
/// Protocol that introduced `cmdline_size`: 2.06.
const CMDLINE_SIZE_PROTOCOL: u16 = 0x0206;
/// Protocol that introduced `init_size`: 2.10.
const INIT_SIZE_PROTOCOL: u16 = 0x020a;
/// `cmdline_size` default before 2.06.
const LEGACY_CMDLINE_SIZE: usize = 255;
/// `xloadflags`: the kernel has the 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of `startup_64` from the protected-mode load address.
const STARTUP_64_OFFSET: u64 = 0x200;
/// `type_of_loader` for a loader without an assigned ID.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `loadflags`: the kernel was loaded high (at 1 MiB).
const LOADED_HIGH: u8 = 1 << 0;
/// Maximum e820 entries in the zero page.
const E820_MAX: usize = 128;

/// `boot_params` with the `ByteValued` marker linux-loader leaves to the VMM.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);

// SAFETY: `boot_params` is a packed plain-old-data C struct of integers and arrays; every
// byte pattern is a valid value and it has no padding that could leak uninitialised data.
unsafe impl ByteValued for ZeroPage {}

pub(super) fn load(
    mem: &GuestMemoryMmap,
    setup: &BootSetup,
    file: &mut File,
    low_end: u64,
) -> Result<EntryMode, BootError> {
    let path = setup.kernel.path().to_path_buf();
    let loaded = load_image::<BzImage>(mem, setup, file)?;
    let bad = |reason: &str| BootError::BadBzImage {
        path: path.clone(),
        reason: reason.to_string(),
    };
    let hdr = loaded.setup_header.ok_or_else(|| bad("no setup header"))?;
    let version = hdr.version;
    if version < MIN_PROTOCOL {
        return Err(bad(&format!(
            "boot protocol {}.{:02} is too old (need 2.12 or later for the 64-bit entry)",
            version >> 8,
            version & 0xff
        )));
    }
    let xloadflags = hdr.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(bad(
            "kernel has no 64-bit entry point (XLF_KERNEL_64 clear)",
        ));
    }
    let cmdline_max = if version >= CMDLINE_SIZE_PROTOCOL {
        (hdr.cmdline_size as usize).saturating_add(1)
    } else {
        LEGACY_CMDLINE_SIZE + 1
    };
    check_cmdline(setup.cmdline, cmdline_max.min(CMDLINE_MAX_SIZE))?;

    let mut params = ZeroPage::default();
    params.0.hdr = hdr;
    params.0.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.0.hdr.loadflags |= LOADED_HIGH;
    params.0.hdr.cmd_line_ptr = write_cmdline(mem, setup.cmdline)? as u32;
    params.0.hdr.cmdline_size = setup.cmdline.len() as u32 + 1;
    params.0.acpi_rsdp_addr = setup.rsdp;
    if let Some(initrd) = setup.initramfs {
        let max = u64::from(hdr.initrd_addr_max)
            .saturating_add(1)
            .min(low_end);
        // The kernel uses init_size bytes from its load address while it runs (a
        // compressed kernel decompresses into them): the initramfs must stay above.
        let runtime_end = if version >= INIT_SIZE_PROTOCOL {
            loaded
                .kernel_load
                .0
                .saturating_add(u64::from(hdr.init_size))
        } else {
            0
        };
        let lowest = loaded.kernel_end.max(runtime_end);
        let (addr, size) = load_initramfs(mem, initrd, lowest, max)?;
        params.0.hdr.ramdisk_image = addr as u32;
        params.0.hdr.ramdisk_size = size as u32;
    }
    for (i, e) in setup.memory_map.iter().take(E820_MAX).enumerate() {
        params.0.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.0.e820_entries = setup.memory_map.len().min(E820_MAX) as u8;

    let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem).map_err(|_| {
        BootError::GuestMemory {
            what: "zero page",
            source: vm_memory::GuestMemoryError::InvalidGuestAddress(GuestAddress(ZERO_PAGE_ADDR)),
        }
    })?;
    Ok(EntryMode::Linux64 {
        entry: loaded.kernel_load.0 + STARTUP_64_OFFSET,
        zero_page: ZERO_PAGE_ADDR,
    })
}
