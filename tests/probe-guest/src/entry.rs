//! PVH entry: from 32-bit protected mode to 64-bit Rust.
//!
//! A PVH loader starts the BSP at `pvh_start` (named by the Xen ELF note below) in 32-bit
//! protected mode with paging off and `ebx` = physical address of `struct hvm_start_info`.
//! The code here
//! 1. clears `.bss` (the loader is not required to),
//! 2. builds identity page tables for the first 4 GiB with 2 MiB pages (the top 1 GiB, the
//!    MMIO hole with the IOAPIC, VT-d unit and LAPIC, cache-disabled),
//! 3. enables PAE, SSE (OSFXSR/OSXMMEXCPT) and long mode, loads its own GDT,
//! 4. far-jumps to 64-bit code, sets up the stack and calls `probe_main(start_info)`.
//!
//! GDT selectors: 0x08 = 64-bit code, 0x10 = flat data, 0x18 = 32-bit flat code (for the AP
//! trampoline of later scenarios). `probe_pml4` is exported for the same reason: APs load it
//! into CR3.

use core::arch::global_asm;

/// GDT selector of the 64-bit code segment.
pub const CODE64_SELECTOR: u16 = 0x08;

/// Bytes of physical address space that the entry page tables identity-map.
pub const IDENTITY_MAPPED: u64 = 4 << 30;

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

    .pushsection .text.entry, "ax"
    .code32
    .global pvh_start
    .type pvh_start, @function
pvh_start:
    cli
    cld
    /* %esi keeps the hvm_start_info address until it becomes probe_main's argument. */
    mov %ebx, %esi

    /* Clear .bss, page tables included. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    /* PML4[0] -> PDPT. */
    mov $probe_pdpt, %eax
    or $0x3, %eax
    mov %eax, probe_pml4

    /* PDPT[0..4] -> the four page directories. */
    mov $probe_pd, %eax
    or $0x3, %eax
    mov $probe_pdpt, %edi
    mov $4, %ecx
2:
    mov %eax, (%edi)
    add $0x1000, %eax
    add $8, %edi
    loop 2b

    /* 2048 PDEs: 2 MiB pages, present | writable | large, identity. The high dwords stay 0. */
    mov $probe_pd, %edi
    mov $0x83, %eax
    mov $2048, %ecx
3:
    mov %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 3b

    /* 3 GiB .. 4 GiB is the MMIO hole: PCD | PWT. */
    mov $(probe_pd + 3 * 4096), %edi
    mov $512, %ecx
4:
    orl $0x18, (%edi)
    add $8, %edi
    loop 4b

    /* CR4: PAE | OSFXSR | OSXMMEXCPT. */
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4

    mov $probe_pml4, %eax
    mov %eax, %cr3

    /* EFER.LME */
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr

    lgdt probe_gdt_ptr

    /* CR0: clear EM, TS, NW, CD; set PE, MP, NE, PG. */
    mov %cr0, %eax
    and $0x9ffffff3, %eax
    or $0x80000023, %eax
    mov %eax, %cr0

    ljmp $0x08, $probe_long_mode

    .code64
probe_long_mode:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $__stack_top, %rsp
    xor %ebp, %ebp
    /* Zero-extends: the hvm_start_info physical address. */
    mov %esi, %edi
    call probe_main
5:
    cli
    hlt
    jmp 5b
    .size pvh_start, . - pvh_start
    .popsection

    .pushsection .data.gdt, "aw"
    .p2align 4
    .global probe_gdt
probe_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00cf9b000000ffff
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
    .skip 4096
probe_pdpt:
    .skip 4096
probe_pd:
    .skip 4 * 4096
    .popsection
"#,
    options(att_syntax)
);
