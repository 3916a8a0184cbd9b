//! Register state of the boot vCPU: GDT, identity page tables, segment and control
//! registers for the PVH (32-bit) and Linux 64-bit entries, FPU and boot MSRs.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{BootError, EntryMode};
use crate::layout::{
    BOOT_GDT_ADDR, BOOT_IDT_ADDR, BOOT_STACK_POINTER, PDPT_ADDR, PD_ADDR, PD_COUNT, PML4_ADDR,
};

/// CR0: protected mode enable.
pub const CR0_PE: u64 = 1 << 0;
/// CR0: extension type (hard-wired 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0: paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;

/// Page-table entry: present.
const PTE_PRESENT: u64 = 1 << 0;
/// Page-table entry: writable.
const PTE_WRITABLE: u64 = 1 << 1;
/// Page-directory entry: 2 MiB page.
const PDE_PAGE_SIZE: u64 = 1 << 7;
/// 2 MiB.
const HUGE_PAGE: u64 = 2 << 20;

/// GDT selectors the boot protocols expect (`__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18).
pub const BOOT_CS: u16 = 0x10;
/// Boot data segment selector.
pub const BOOT_DS: u16 = 0x18;
/// Boot TSS selector.
pub const BOOT_TSS: u16 = 0x20;

/// A GDT entry's fields, the common subset of `kvm_segment`.
#[derive(Clone, Copy)]
struct Descriptor {
    base: u32,
    limit: u32,
    type_: u8,
    s: u8,
    l: u8,
    db: u8,
    g: u8,
}

const CODE_TYPE: u8 = 0xb; // execute/read, accessed
const DATA_TYPE: u8 = 0x3; // read/write, accessed
const TSS_TYPE: u8 = 0xb; // 32-bit busy TSS

fn descriptor_bits(d: &Descriptor) -> u64 {
    let base = u64::from(d.base);
    let limit = u64::from(d.limit);
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (u64::from(d.type_) << 40)
        | (u64::from(d.s) << 44)
        | (1 << 47) // present
        | (((limit >> 16) & 0xf) << 48)
        | (u64::from(d.l) << 53)
        | (u64::from(d.db) << 54)
        | (u64::from(d.g) << 55)
        | (((base >> 24) & 0xff) << 56)
}

fn segment(selector: u16, d: &Descriptor) -> kvm_segment {
    kvm_segment {
        base: u64::from(d.base),
        limit: if d.g == 1 {
            (d.limit << 12) | 0xfff
        } else {
            d.limit
        },
        selector,
        type_: d.type_,
        present: 1,
        dpl: 0,
        db: d.db,
        s: d.s,
        l: d.l,
        g: d.g,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn gdt_for(long_mode: bool) -> [Descriptor; 3] {
    let code = Descriptor {
        base: 0,
        limit: 0xfffff,
        type_: CODE_TYPE,
        s: 1,
        l: u8::from(long_mode),
        db: u8::from(!long_mode),
        g: 1,
    };
    let data = Descriptor {
        base: 0,
        limit: 0xfffff,
        type_: DATA_TYPE,
        s: 1,
        l: 0,
        db: 1,
        g: 1,
    };
    let tss = Descriptor {
        base: 0,
        limit: 0x67,
        type_: TSS_TYPE,
        s: 0,
        l: 0,
        db: 0,
        g: 0,
    };
    [code, data, tss]
}

fn mem_err(what: &'static str) -> impl Fn(vm_memory::GuestMemoryError) -> BootError {
    move |source| BootError::GuestMemory { what, source }
}

/// Writes the boot GDT (null, null, code, data, TSS) and an empty IDT.
fn write_gdt(mem: &GuestMemoryMmap, descs: &[Descriptor; 3]) -> Result<(), BootError> {
    let table = [
        0u64,
        0,
        descriptor_bits(&descs[0]),
        descriptor_bits(&descs[1]),
        descriptor_bits(&descs[2]),
    ];
    for (i, e) in table.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_ADDR + 8 * i as u64))
            .map_err(mem_err("boot GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_ADDR))
        .map_err(mem_err("boot IDT"))
}

/// Writes page tables that identity-map the first 4 GiB with 2 MiB pages.
fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    let err = mem_err("boot page tables");
    mem.write_obj(
        PDPT_ADDR | PTE_PRESENT | PTE_WRITABLE,
        GuestAddress(PML4_ADDR),
    )
    .map_err(&err)?;
    for pd in 0..PD_COUNT {
        let pd_addr = PD_ADDR + pd * 0x1000;
        mem.write_obj(
            pd_addr | PTE_PRESENT | PTE_WRITABLE,
            GuestAddress(PDPT_ADDR + pd * 8),
        )
        .map_err(&err)?;
        for i in 0..512u64 {
            let phys = ((pd * 512) + i) * HUGE_PAGE;
            mem.write_obj(
                phys | PTE_PRESENT | PTE_WRITABLE | PDE_PAGE_SIZE,
                GuestAddress(pd_addr + i * 8),
            )
            .map_err(&err)?;
        }
    }
    Ok(())
}

/// Register state for the boot vCPU.
pub struct BootRegs {
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// System registers (applied on top of the vCPU's current ones).
    pub sregs: kvm_sregs,
}

/// Writes the boot GDT (and page tables for the 64-bit entry) and returns the boot vCPU's
/// registers for `mode`, starting from `base` (the vCPU's reset sregs).
pub fn setup(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    base: kvm_sregs,
) -> Result<BootRegs, BootError> {
    let long_mode = matches!(mode, EntryMode::Linux64 { .. });
    let descs = gdt_for(long_mode);
    write_gdt(mem, &descs)?;
    let mut sregs = base;
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (5 * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = segment(BOOT_CS, &descs[0]);
    let data = segment(BOOT_DS, &descs[1]);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(BOOT_TSS, &descs[2]);
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh { entry, start_info } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = start_info;
        }
        EntryMode::Linux64 { entry, zero_page } => {
            write_identity_map(mem)?;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = CR4_PAE;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = entry;
            regs.rsi = zero_page;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
    }
    Ok(BootRegs { regs, sregs })
}

/// x87 control word after FNINIT.
const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR reset value (all exceptions masked).
const MXCSR_RESET: u32 = 0x1f80;

/// FPU state at boot.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_RESET,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn flat_code_descriptors_match_known_encodings() {
        let d = gdt_for(true);
        assert_eq!(descriptor_bits(&d[0]), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor_bits(&d[1]), 0x00cf_9300_0000_ffff);
        assert_eq!(descriptor_bits(&gdt_for(false)[0]), 0x00cf_9b00_0000_ffff);
        assert_eq!(descriptor_bits(&d[2]), 0x0000_8b00_0000_0067);
    }

    #[test]
    fn long_mode_setup_maps_4g_identity() {
        let mem = create_guest_memory(32 << 20).unwrap();
        let r = setup(
            &mem,
            EntryMode::Linux64 {
                entry: 0x100200,
                zero_page: 0x7000,
            },
            kvm_sregs::default(),
        )
        .unwrap();
        assert_eq!(r.regs.rip, 0x100200);
        assert_eq!(r.regs.rsi, 0x7000);
        assert_eq!(r.sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!(r.sregs.cs.l, 1);
        let last: u64 = mem
            .read_obj(GuestAddress(PD_ADDR + 3 * 0x1000 + 511 * 8))
            .unwrap();
        assert_eq!(last & !0xfff, 0xffe0_0000);
    }

    #[test]
    fn pvh_setup_is_32_bit_protected_mode() {
        let mem = create_guest_memory(32 << 20).unwrap();
        let r = setup(
            &mem,
            EntryMode::Pvh {
                entry: 0x100000,
                start_info: 0x6000,
            },
            kvm_sregs::default(),
        )
        .unwrap();
        assert_eq!(r.regs.rbx, 0x6000);
        assert_eq!(r.sregs.cr0 & CR0_PG, 0);
        assert_eq!(r.sregs.cs.db, 1);
        assert_eq!(r.sregs.cs.l, 0);
        assert_eq!(r.sregs.cs.limit, 0xffff_ffff);
    }
}
