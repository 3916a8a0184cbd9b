//! Entry points: from each boot protocol's starting state to 64-bit Rust.
//!
//! The probe can be started four ways. Every way ends in the same state (the probe's own GDT
//! and identity page tables, its stack, `.bss` cleared) and the same call,
//! `probe_main(info, entry)`, where `entry` is one of the [`Entry`] values and `info` is the
//! physical address of that protocol's boot information:
//!
//! - **PVH** (`pvh_start`, named by the Xen ELF note below; `probe.elf`): 32-bit protected
//!   mode, paging off, `ebx` = `struct hvm_start_info`.
//! - **Linux 64-bit boot protocol** (`probe_linux64_start`, at load address + 0x200 of
//!   `probe.bzImage`): long mode on the loader's page tables, which identity-map at least the
//!   image (`init_size`), the zero page and the command line; `rsi` = `struct boot_params`.
//! - **Linux 32-bit boot protocol** (`probe_linux32_start`, at the load address 0x100000,
//!   the bzImage's `code32_start`): 32-bit flat protected mode, paging off, `esi` =
//!   `struct boot_params`.
//! - **Linux 16-bit (real-mode) boot protocol**: a BIOS loader such as QEMU's `-kernel`
//!   runs the bzImage's setup code in real mode; that code (`probe_realmode_start`, placed
//!   into the setup sector by `mkbzimage.py`) switches to protected mode and continues at
//!   `probe_linux16_entered` with `esi` = the real-mode block, which doubles as
//!   `boot_params`.
//!
//! The 32-bit paths share one routine: clear `.bss`, build identity page tables for the
//! first 4 GiB with 2 MiB pages (the top 1 GiB, the MMIO hole with the IOAPIC, VT-d unit and
//! LAPIC, cache-disabled), enable PAE, SSE (OSFXSR/OSXMMEXCPT) and long mode, load the GDT,
//! far-jump to 64-bit code. The 64-bit Linux entry does the same from long mode: it clears
//! `.bss` and builds the same tables with the same macro (both run on the loader's identity
//! map of the image), switches CR3 to them, loads the GDT and reloads CS with `lretq`. So
//! every scenario sees the same memory map and page attributes whichever way it came in.
//! Rust then turns a `boot_params` into an `hvm_start_info` ([`crate::bootparams`]).
//!
//! GDT selectors: 0x08 = 64-bit code, 0x10 = flat data, 0x18 = 32-bit flat code (the AP
//! trampoline and the real-mode setup code use it). `probe_pml4` is exported for the APs,
//! which load it into CR3.

use core::arch::global_asm;

/// GDT selector of the 64-bit code segment.
pub const CODE64_SELECTOR: u16 = 0x08;
/// GDT selector of the flat data segment.
const DATA_SELECTOR: u16 = 0x10;
/// GDT selector of the 32-bit flat code segment.
const CODE32_SELECTOR: u16 = 0x18;

/// Bytes of physical address space that the entry page tables identity-map.
pub const IDENTITY_MAPPED: u64 = 4 << 30;

/// Offset of the 64-bit entry from the load address (Linux boot protocol, `XLF_KERNEL_64`).
pub const LINUX64_ENTRY_OFFSET: u64 = 0x200;

/// CR0.PE: protected mode.
const CR0_PE: u32 = 1 << 0;
/// CR0 bits cleared for long mode: EM (2), TS (3), NW (29), CD (30).
const CR0_CLEAR: u32 = (1 << 2) | (1 << 3) | (1 << 29) | (1 << 30);
/// CR0 bits set for long mode: PE (0), MP (1), NE (5), PG (31).
const CR0_SET: u32 = (1 << 0) | (1 << 1) | (1 << 5) | (1 << 31);
/// CR4 bits: PAE (5), OSFXSR (9), OSXMMEXCPT (10).
const CR4_SET: u32 = (1 << 5) | (1 << 9) | (1 << 10);
/// IA32_EFER and its long-mode-enable bit.
const IA32_EFER: u32 = 0xc000_0080;
const EFER_LME: u32 = 1 << 8;

/// Page-table entry bits: present | writable.
const PTE_TABLE: u32 = 0x3;
/// Page-directory entry bits for a 2 MiB page: present | writable | page size.
const PDE_LARGE: u32 = 0x83;
/// Page-directory entry bits PWT | PCD: uncached, for the MMIO hole.
const PDE_UNCACHED: u32 = 0x18;
/// Size of one 2 MiB page.
const LARGE_PAGE: u32 = 0x20_0000;
/// Page directories (1 GiB each) for [`IDENTITY_MAPPED`].
const PAGE_DIRECTORIES: u32 = 4;
/// Entries per page table.
const TABLE_ENTRIES: u32 = 512;
/// Size of one page table.
const TABLE_SIZE: u32 = 4096;
/// The page directory covering 3..4 GiB, the MMIO hole.
const MMIO_HOLE_DIRECTORY: u32 = 3;

/// Fast A20 gate (System Control Port A) and its A20 enable and reset bits.
const PORT_A20: u8 = 0x92;
const A20_ENABLE: u8 = 1 << 1;
const A20_FAST_RESET: u8 = 1 << 0;

/// How the probe was started: the second argument of `probe_main`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Entry {
    /// PVH (`hvm_start_info`).
    Pvh = 0,
    /// Linux 64-bit boot protocol (`boot_params`).
    Linux64 = 1,
    /// Linux 32-bit boot protocol (`boot_params`).
    Linux32 = 2,
    /// Linux real-mode boot protocol, through the probe's setup code (`boot_params`).
    Linux16 = 3,
}

impl Entry {
    /// The value the entry code passed, if it is one of ours.
    pub fn from_raw(raw: u64) -> Option<Entry> {
        [Entry::Pvh, Entry::Linux64, Entry::Linux32, Entry::Linux16]
            .into_iter()
            .find(|e| *e as u64 == raw)
    }

    /// Name for `probe: entry=NAME`.
    pub fn name(self) -> &'static str {
        match self {
            Entry::Pvh => "pvh",
            Entry::Linux64 => "linux64",
            Entry::Linux32 => "linux32",
            Entry::Linux16 => "linux16",
        }
    }
}

extern "C" {
    /// The top-level page table built by the entry code (4 KiB aligned, below 4 GiB).
    pub static probe_pml4: u8;
}

/// Physical address of the page-table root the BSP runs on (the value for CR3).
pub fn pml4_address() -> u64 {
    (&raw const probe_pml4) as u64
}

global_asm!(
    r#"
    /* PVH ELF note: name "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY), desc = entry address.
       The descriptor is 8 bytes: linux-loader reads 4, QEMU reads a size_t. */
    .pushsection .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .quad pvh_start
    .popsection

    /* Clears .bss and builds the identity map. The same source runs in 32-bit protected
       mode and in 64-bit mode (all addresses are below 2 GiB; 32-bit register writes
       zero-extend in 64-bit mode). Uses eax, ecx, edi. */
.macro PROBE_CLEAR_BSS_AND_MAP
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    /* PML4[0] -> PDPT. */
    mov $probe_pdpt, %eax
    or ${pte_table}, %eax
    mov %eax, probe_pml4

    /* PDPT[0..4] -> the four page directories. */
    mov $probe_pd, %eax
    or ${pte_table}, %eax
    mov $probe_pdpt, %edi
    mov ${page_directories}, %ecx
2:
    mov %eax, (%edi)
    add ${table_size}, %eax
    add $8, %edi
    loop 2b

    /* 2048 PDEs: 2 MiB pages, present | writable | large, identity. High dwords stay 0. */
    mov $probe_pd, %edi
    mov ${pde_large}, %eax
    mov ${all_pdes}, %ecx
3:
    mov %eax, (%edi)
    add ${large_page}, %eax
    add $8, %edi
    loop 3b

    /* 3 GiB .. 4 GiB is the MMIO hole: PCD | PWT. */
    mov $(probe_pd + {hole_directory} * {table_size}), %edi
    mov ${table_entries}, %ecx
4:
    orl ${pde_uncached}, (%edi)
    add $8, %edi
    loop 4b
.endm

    /* Linux 32-bit boot protocol entry: the load address (code32_start). The loader's
       flat segments are in use; esi = boot_params. */
    .pushsection .text.linux32, "ax"
    .code32
    .global probe_linux32_start
    .type probe_linux32_start, @function
probe_linux32_start:
    cli
    cld
    mov ${entry_linux32}, %ebp
    jmp probe_entry32
    .size probe_linux32_start, . - probe_linux32_start

    /* Continuation of the real-mode setup code (below) in 32-bit protected mode on the
       probe's GDT: data segments still hold real-mode values. esi = boot_params. */
    .global probe_linux16_entered
probe_linux16_entered:
    mov ${data}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov ${entry_linux16}, %ebp
    jmp probe_entry32
    .code64
    .popsection

    /* Linux 64-bit boot protocol entry: load address + 0x200 (link.ld places this section
       there). Long mode on the loader's page tables and GDT; rsi = boot_params, which the
       protocol puts below 4 GiB for a kernel without XLF_CAN_BE_LOADED_ABOVE_4G. */
    .pushsection .text.linux64, "ax"
    .code64
    .global probe_linux64_start
    .type probe_linux64_start, @function
probe_linux64_start:
    cli
    cld
    mov ${entry_linux64}, %ebp
    PROBE_CLEAR_BSS_AND_MAP

    mov %cr4, %rax
    or ${cr4_set}, %eax
    mov %rax, %cr4
    mov $probe_pml4, %eax
    mov %rax, %cr3
    lgdt probe_gdt_ptr
    mov %cr0, %rax
    and ${cr0_keep}, %eax
    or ${cr0_set}, %eax
    mov %rax, %cr0
    /* The protocol promises no stack: use the probe's own (zero-extending move). Then
       reload CS from the probe's GDT. */
    mov $__stack_top, %esp
    pushq ${code64}
    pushq $probe_long_mode
    lretq
    .size probe_linux64_start, . - probe_linux64_start
    .popsection

    .pushsection .text.entry, "ax"
    .code32
    .global pvh_start
    .type pvh_start, @function
pvh_start:
    cli
    cld
    /* esi keeps the boot information address until it becomes probe_main's first
       argument; ebp the entry kind (its second). */
    mov %ebx, %esi
    mov ${entry_pvh}, %ebp

probe_entry32:
    PROBE_CLEAR_BSS_AND_MAP

    mov %cr4, %eax
    or ${cr4_set}, %eax
    mov %eax, %cr4

    mov $probe_pml4, %eax
    mov %eax, %cr3

    mov ${efer}, %ecx
    rdmsr
    or ${efer_lme}, %eax
    wrmsr

    lgdt probe_gdt_ptr

    mov %cr0, %eax
    and ${cr0_keep}, %eax
    or ${cr0_set}, %eax
    mov %eax, %cr0

    ljmp ${code64}, $probe_long_mode

    .code64
probe_long_mode:
    mov ${data}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $__stack_top, %rsp
    /* Zero-extending moves: the boot information address and the entry kind. */
    mov %esi, %edi
    mov %ebp, %esi
    xor %ebp, %ebp
    call probe_main
5:
    cli
    hlt
    jmp 5b
    .size pvh_start, . - pvh_start
    .popsection

    /* Real-mode setup code of probe.bzImage. Not part of the loaded image (no "a" flag):
       mkbzimage.py copies this section into the setup sector, where the header's jump
       lands. A BIOS loader enters it with CS = real-mode block + 0x20 paragraphs,
       DS = ES = SS = the block, SP inside it, interrupts off. It uses no absolute 16-bit
       addresses, only the 32-bit linear addresses of the image (relocated by the linker). */
    .pushsection .bzimage.realmode, "", @progbits
    .code16
    .global probe_realmode_start
probe_realmode_start:
    cli
    cld
    /* esi = linear address of the real-mode block: the boot_params of this protocol. */
    xor %esi, %esi
    mov %ds, %si
    shl $4, %esi
    /* Enable A20 (fast gate), without touching the reset bit. */
    in ${port_a20}, %al
    or ${a20_enable}, %al
    and ${a20_keep}, %al
    out %al, ${port_a20}
    /* The GDT pointer on the stack: 16-bit limit, 32-bit base. */
    pushl $probe_gdt
    pushw $(probe_gdt_end - probe_gdt - 1)
    mov %sp, %bx
    lgdtl %ss:(%bx)
    add $6, %sp
    mov %cr0, %eax
    or ${cr0_pe}, %eax
    mov %eax, %cr0
    ljmpl ${code32}, $probe_linux16_entered
    .global probe_realmode_end
probe_realmode_end:
    /* global_asm! blocks are assembled as one file: leave the mode as the others expect. */
    .code64
    .popsection

    .pushsection .data.gdt, "aw"
    .p2align 4
    .global probe_gdt
probe_gdt:
    .quad 0
    .quad 0x00af9b000000ffff         /* {code64}: 64-bit code */
    .quad 0x00cf93000000ffff         /* {data}: flat data */
    .quad 0x00cf9b000000ffff         /* {code32}: 32-bit flat code */
    .global probe_gdt_end
probe_gdt_end:
    .p2align 4
    .global probe_gdt_ptr
probe_gdt_ptr:
    .word probe_gdt_end - probe_gdt - 1
    .quad probe_gdt
    .popsection

    .pushsection .bss.pagetables, "aw", @nobits
    .p2align 12
    .global probe_pml4
probe_pml4:
    .skip {table_size}
probe_pdpt:
    .skip {table_size}
probe_pd:
    .skip {page_directories} * {table_size}
    .popsection
"#,
    code64 = const CODE64_SELECTOR,
    data = const DATA_SELECTOR,
    code32 = const CODE32_SELECTOR,
    cr0_pe = const CR0_PE,
    cr0_keep = const !CR0_CLEAR,
    cr0_set = const CR0_SET,
    cr4_set = const CR4_SET,
    efer = const IA32_EFER,
    efer_lme = const EFER_LME,
    pte_table = const PTE_TABLE,
    pde_large = const PDE_LARGE,
    pde_uncached = const PDE_UNCACHED,
    large_page = const LARGE_PAGE,
    page_directories = const PAGE_DIRECTORIES,
    table_entries = const TABLE_ENTRIES,
    all_pdes = const PAGE_DIRECTORIES * TABLE_ENTRIES,
    table_size = const TABLE_SIZE,
    hole_directory = const MMIO_HOLE_DIRECTORY,
    port_a20 = const PORT_A20,
    a20_enable = const A20_ENABLE,
    a20_keep = const !A20_FAST_RESET,
    entry_pvh = const Entry::Pvh as u64,
    entry_linux64 = const Entry::Linux64 as u64,
    entry_linux32 = const Entry::Linux32 as u64,
    entry_linux16 = const Entry::Linux16 as u64,
    options(att_syntax)
);
