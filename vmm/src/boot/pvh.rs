//! PVH boot: an ELF kernel with a Xen PVH entry note, entered in 32-bit protected mode
//! with `ebx` pointing at `hvm_start_info`.

use std::fs::File;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{
    check_cmdline, load_image, load_initramfs, write_cmdline, BootError, BootSetup, EntryMode,
};
use crate::layout::{CMDLINE_MAX_SIZE, PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR};

/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Version 1 of the start info carries the memory map.
const START_INFO_VERSION: u32 = 1;
/// Linux's x86 COMMAND_LINE_SIZE, the most a PVH Linux reads.
const PVH_CMDLINE_MAX: usize = 2048;

pub(super) fn load(
    mem: &GuestMemoryMmap,
    setup: &BootSetup,
    file: &mut File,
    low_end: u64,
) -> Result<EntryMode, BootError> {
    check_cmdline(setup.cmdline, PVH_CMDLINE_MAX.min(CMDLINE_MAX_SIZE))?;
    let path = setup.kernel.path().to_path_buf();
    let loaded = load_image::<Elf>(mem, setup, file)?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr.0,
        _ => return Err(BootError::NoPvhEntry(path)),
    };
    let cmdline_paddr = write_cmdline(mem, setup.cmdline)?;

    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        cmdline_paddr,
        rsdp_paddr: setup.rsdp,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: setup.memory_map.len() as u32,
        ..Default::default()
    };
    let mut modules = Vec::new();
    if let Some(initrd) = setup.initramfs {
        let (paddr, size) = load_initramfs(mem, initrd, loaded.kernel_end, low_end)?;
        modules.push(hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        });
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let memmap: Vec<hvm_memmap_table_entry> = setup
        .memory_map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();

    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem).map_err(|_| {
        BootError::GuestMemory {
            what: "PVH start info",
            source: vm_memory::GuestMemoryError::InvalidGuestAddress(GuestAddress(PVH_INFO_ADDR)),
        }
    })?;
    Ok(EntryMode::Pvh {
        entry,
        start_info: PVH_INFO_ADDR,
    })
}
