//! Application processors: the real-mode trampoline, the AP entry in Rust, and bring-up with
//! INIT-SIPI-SIPI through the x2APIC ICR.
//!
//! Path of an AP: SIPI -> 16-bit trampoline at [`TRAMPOLINE_BASE`] (copied there by the BSP;
//! loads a small GDT that lives in the same page, sets CR0.PE) -> 32-bit code in `.text`
//! (PAE, the BSP's page tables in CR3, EFER.LME, CR0.PG) -> 64-bit code (the main GDT, a
//! slot number from `lock xadd` on [`NEXT_SLOT`], the slot's 4 KiB stack from the
//! `.ap_stacks` section) -> [`ap_entry`]: IDT, x2APIC mode, its ID into [`AP_IDS`], then
//! halt or wait for interrupts as the scenario chose ([`ApMode`]).
//!
//! APs never print: hundreds of vCPUs taking an exit per character on a shared lock make
//! bring-up 50-100 times slower on the build machines. They report through memory only.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use crate::clock::Clock;
use crate::pvh::StartInfo;
use crate::report::Text;
use crate::{apic, idt, irq, text, x86};

/// Most APs the probe can run (KVM's limit is 1024 vCPUs in all).
pub const MAX_APS: usize = 1024;
/// Physical address of the trampoline page; the SIPI vector is its page number. 0x8000 is
/// free in irvmm's layout (PVH start info at 0x6000, page tables from 0x9000, command line
/// at 0x20000) and on QEMU/SeaBIOS; [`start`] checks the PVH data does not overlap it.
pub const TRAMPOLINE_BASE: u64 = 0x8000;
/// Size of the trampoline page.
const TRAMPOLINE_PAGE: u64 = 0x1000;
/// SIPI vector: the start page number (below 1 MiB by construction).
const SIPI_VECTOR: u64 = TRAMPOLINE_BASE >> 12;
const _: () = assert!(TRAMPOLINE_BASE.is_multiple_of(TRAMPOLINE_PAGE) && SIPI_VECTOR < 0x100);

/// log2 of each AP's stack size (4 KiB).
const AP_STACK_SHIFT: u32 = 12;
/// Size of the `.ap_stacks` section.
const AP_STACKS_SIZE: usize = MAX_APS << AP_STACK_SHIFT;

/// GDT selectors (the same in the trampoline's GDT and the main one, see entry.rs).
const CODE64_SELECTOR: u16 = crate::entry::CODE64_SELECTOR;
const DATA_SELECTOR: u16 = 0x10;
const CODE32_SELECTOR: u16 = 0x18;
/// CR0.PE: protected mode.
const CR0_PE: u32 = 1 << 0;
/// CR0 bits the APs clear for long mode: EM (2), TS (3), NW (29), CD (30).
const CR0_CLEAR: u32 = (1 << 2) | (1 << 3) | (1 << 29) | (1 << 30);
/// CR0 bits the APs set for long mode: PE (0), MP (1), NE (5), PG (31).
const CR0_SET: u32 = (1 << 0) | (1 << 1) | (1 << 5) | (1 << 31);
/// CR4 bits as on the BSP: PAE (5), OSFXSR (9), OSXMMEXCPT (10).
const CR4_SET: u32 = (1 << 5) | (1 << 9) | (1 << 10);
/// IA32_EFER and its long-mode-enable bit.
const IA32_EFER: u32 = 0xc000_0080;
const EFER_LME: u32 = 1 << 8;

/// IA32_GS_BASE: each CPU keeps its slot + 1 there (0 on the BSP) for interrupt handlers.
const IA32_GS_BASE: u32 = 0xc000_0101;

/// Bring-up deadline: this much plus [`DEADLINE_PER_AP_NS`] per AP.
const DEADLINE_BASE_NS: u64 = 5_000_000_000;
/// Bring-up deadline per AP.
const DEADLINE_PER_AP_NS: u64 = 50_000_000;

/// `AP_IDS` value of a slot whose AP has not recorded its ID (the x2APIC broadcast ID, which
/// no CPU has).
const NO_ID: u32 = u32::MAX;

/// Next free slot; claimed by the trampoline's 64-bit code with `lock xadd`.
static NEXT_SLOT: AtomicU32 = AtomicU32::new(0);
/// APs that have recorded their ID (and, in [`ApMode::Interrupts`], enabled their APIC).
static ARRIVED: AtomicU32 = AtomicU32::new(0);
/// x2APIC ID of the AP in each slot.
static AP_IDS: [AtomicU32; MAX_APS] = [const { AtomicU32::new(NO_ID) }; MAX_APS];
/// What APs do after reporting (an [`ApMode`]).
static MODE: AtomicU8 = AtomicU8::new(ApMode::Halt as u8);
/// In [`ApMode::Interrupts`], the period of each AP's own periodic APIC timer at
/// [`irq::TIMER_VECTOR`] in APIC bus clocks; 0 = no timer ([`set_ap_tick`]).
static AP_TICK: AtomicU32 = AtomicU32::new(0);

/// Makes APs started later in [`ApMode::Interrupts`] run a periodic APIC timer of
/// `bus_clocks` (0: none), as an idle OS's tick wakes each CPU.
pub fn set_ap_tick(bus_clocks: u32) {
    AP_TICK.store(bus_clocks, Ordering::Release);
}

/// What an AP does once it has reported its ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ApMode {
    /// `cli; hlt` forever.
    Halt = 0,
    /// APIC software-enabled, then `sti; hlt` forever, taking interrupts through the shared
    /// IDT and handlers ([`irq::set_handler`]).
    Interrupts = 1,
}

/// Which CPU an interrupt handler runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpu {
    /// The bootstrap processor.
    Bsp,
    /// The AP in this slot.
    Ap(usize),
}

/// The CPU executing this (from IA32_GS_BASE, which [`ap_entry`] and [`mark_bsp`] set).
pub fn current_cpu() -> Cpu {
    // SAFETY: reading GS base has no side effects.
    match unsafe { x86::rdmsr(IA32_GS_BASE) } {
        0 => Cpu::Bsp,
        n => Cpu::Ap((n - 1) as usize),
    }
}

/// Marks the calling CPU as the BSP for [`current_cpu`]. Call on the BSP before interrupts.
pub fn mark_bsp() {
    // SAFETY: the probe does not use GS for anything else.
    unsafe { x86::wrmsr(IA32_GS_BASE, 0) }
}

/// Rust entry of every AP, on its own stack, with interrupts disabled.
extern "C" fn ap_entry(slot: u32) -> ! {
    idt::load();
    // SAFETY: the BSP checked CPUID's x2APIC bit before starting APs, and this CPU has not
    // touched its APIC yet.
    let id = unsafe { apic::enable_x2apic() };
    // SAFETY: GS is otherwise unused; the value is canonical.
    unsafe { x86::wrmsr(IA32_GS_BASE, u64::from(slot) + 1) };
    let mode = MODE.load(Ordering::Acquire);
    if mode == ApMode::Interrupts as u8 {
        apic::software_enable(irq::SPURIOUS_VECTOR);
        let tick = AP_TICK.load(Ordering::Acquire);
        if tick != 0 {
            apic::start_periodic_timer(irq::TIMER_VECTOR, tick);
        }
    }
    // The trampoline only enters with slot < MAX_APS.
    if let Some(entry) = AP_IDS.get(slot as usize) {
        entry.store(id, Ordering::Release);
    }
    ARRIVED.fetch_add(1, Ordering::Release);
    if mode == ApMode::Interrupts as u8 {
        loop {
            irq::halt_once();
        }
    }
    x86::halt_forever()
}

/// Outcome of [`start`].
#[derive(Clone, Copy, Debug)]
pub struct BringUp {
    /// APs that were sent INIT-SIPI-SIPI.
    pub sent: usize,
    /// APs that recorded their ID before the deadline.
    pub arrived: usize,
    /// APs that reached 64-bit code (claimed a slot; may exceed `sent` if a CPU nobody was
    /// asked to start ran the trampoline).
    pub claimed: usize,
    /// From the first INIT to the last arrival (or the deadline).
    pub elapsed_ns: u64,
    /// The deadline that applied.
    pub deadline_ns: u64,
}

impl BringUp {
    /// Whether every AP that was started arrived, and no other CPU did.
    pub fn complete(&self) -> bool {
        self.arrived == self.sent && self.claimed == self.sent
    }
}

/// Fails unless the trampoline page is RAM (when the PVH memory map says) and does not
/// overlap PVH data the probe still uses.
fn check_trampoline_page(si: &StartInfo, cmdline: &[u8]) -> Result<(), Text> {
    let page = TRAMPOLINE_BASE..TRAMPOLINE_BASE + TRAMPOLINE_PAGE;
    let overlaps = |start: u64, len: u64| start < page.end && page.start < start + len;
    if overlaps(si.addr, 56) || overlaps(si.cmdline_paddr, cmdline.len() as u64 + 1) {
        return Err(text!(
            "PVH start info (0x{:x}) or command line (0x{:x}) overlaps the AP trampoline page 0x{:x}",
            si.addr,
            si.cmdline_paddr,
            TRAMPOLINE_BASE
        ));
    }
    if si.memmap_entries > 0 {
        let ram = (0..si.memmap_entries)
            .map_while(|i| si.memmap_entry(i))
            .any(|e| e.kind == 1 && e.addr <= page.start && page.end <= e.addr + e.size);
        if !ram {
            return Err(text!(
                "the PVH memory map has no RAM at the AP trampoline page 0x{:x}",
                TRAMPOLINE_BASE
            ));
        }
    }
    Ok(())
}

extern "C" {
    static probe_ap_trampoline_start: u8;
    static probe_ap_trampoline_end: u8;
}

/// Copies the trampoline to [`TRAMPOLINE_BASE`].
fn install_trampoline() -> Result<(), Text> {
    let start = &raw const probe_ap_trampoline_start;
    let end = &raw const probe_ap_trampoline_end;
    let len = (end as usize).wrapping_sub(start as usize);
    if len == 0 || len as u64 > TRAMPOLINE_PAGE {
        return Err(text!("AP trampoline is {} bytes", len));
    }
    // SAFETY: the source is the trampoline in the probe's read-only data; the destination is
    // the trampoline page, RAM that nothing else uses (checked by `check_trampoline_page`)
    // and identity-mapped; the two do not overlap (the image is above 1 MiB).
    unsafe { core::ptr::copy_nonoverlapping(start, TRAMPOLINE_BASE as *mut u8, len) };
    Ok(())
}

/// How the BSP wakes the APs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// INIT to all, then SIPI to all, twice (the MP specification's sequence).
    InitSipiSipi,
    /// SIPI to all, twice, no INIT: starts only APs already in wait-for-SIPI, as they are
    /// after power-on (SDM vol. 3, 9.4.1) and before any firmware ran.
    SipiOnly,
}

/// Starts the APs with x2APIC IDs `ap_ids` (see [`Wake`]) and waits until all have reported
/// or the deadline passes. Call once per boot, on the BSP, in x2APIC mode, after
/// [`irq::init`] and with the wake-up tick running.
pub fn start(
    clock: &Clock,
    si: &StartInfo,
    cmdline: &[u8],
    ap_ids: &[u32],
    mode: ApMode,
    wake: Wake,
) -> Result<BringUp, Text> {
    if ap_ids.len() > MAX_APS {
        return Err(text!(
            "{} APs, the probe handles at most {}",
            ap_ids.len(),
            MAX_APS
        ));
    }
    check_trampoline_page(si, cmdline)?;
    install_trampoline()?;
    MODE.store(mode as u8, Ordering::Release);

    let begin = clock.now_ns();
    // SAFETY: these CPUs are the APs the firmware tables list; the probe owns them and the
    // trampoline page. INIT parks them in wait-for-SIPI; SIPI starts them at the trampoline
    // (a second SIPI is ignored by a CPU that already left wait-for-SIPI).
    unsafe {
        for &id in ap_ids.iter().filter(|_| wake == Wake::InitSipiSipi) {
            apic::send_ipi(
                id,
                apic::ICR_DELIVERY_INIT | apic::ICR_LEVEL_ASSERT | apic::ICR_TRIGGER_EDGE,
            );
        }
        for _ in 0..2 {
            for &id in ap_ids {
                apic::send_ipi(
                    id,
                    apic::ICR_DELIVERY_STARTUP | apic::ICR_LEVEL_ASSERT | SIPI_VECTOR,
                );
            }
        }
    }
    let n = ap_ids.len() as u64;
    let deadline_ns = DEADLINE_BASE_NS + DEADLINE_PER_AP_NS * n;
    let expected = ap_ids.len() as u32;
    irq::wait_until(clock, begin + deadline_ns, || {
        ARRIVED.load(Ordering::Acquire) >= expected
    });
    let elapsed_ns = clock.now_ns().saturating_sub(begin);
    Ok(BringUp {
        sent: ap_ids.len(),
        arrived: ARRIVED.load(Ordering::Acquire) as usize,
        claimed: NEXT_SLOT.load(Ordering::Acquire) as usize,
        elapsed_ns,
        deadline_ns,
    })
}

/// Copies the IDs the APs reported into `out` (slot order); returns how many.
pub fn reported_ids(out: &mut [u32]) -> usize {
    let slots = (NEXT_SLOT.load(Ordering::Acquire) as usize).min(MAX_APS);
    let mut n = 0;
    for entry in &AP_IDS[..slots] {
        let id = entry.load(Ordering::Acquire);
        if id != NO_ID {
            if let Some(slot) = out.get_mut(n) {
                *slot = id;
                n += 1;
            }
        }
    }
    n
}

/// The x2APIC ID the AP in `slot` reported, if it did.
pub fn slot_id(slot: usize) -> Option<u32> {
    let id = AP_IDS.get(slot)?.load(Ordering::Acquire);
    (id != NO_ID).then_some(id)
}

global_asm!(
    r#"
    /* Real-mode part: copied to {base} and entered by SIPI with CS = {base} >> 4, IP = 0.
       Only offsets from its start are used until the far jump. */
    .pushsection .rodata.ap_trampoline, "a"
    .p2align 4
    .global probe_ap_trampoline_start
probe_ap_trampoline_start:
    .code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl probe_ap_gdtr - probe_ap_trampoline_start
    mov %cr0, %eax
    or ${cr0_pe}, %eax
    mov %eax, %cr0
    ljmpl ${code32}, $probe_ap_protected
    .code64

    .p2align 3
probe_ap_gdt:
    .quad 0
    .quad 0x00af9b000000ffff         /* {code64}: 64-bit code */
    .quad 0x00cf93000000ffff         /* {data}: flat data */
    .quad 0x00cf9b000000ffff         /* {code32}: 32-bit flat code */
probe_ap_gdt_end:
probe_ap_gdtr:
    .word probe_ap_gdt_end - probe_ap_gdt - 1
    .long {base} + (probe_ap_gdt - probe_ap_trampoline_start)
    .global probe_ap_trampoline_end
probe_ap_trampoline_end:
    .popsection

    .pushsection .text.ap_boot, "ax"
    .code32
probe_ap_protected:
    mov ${data}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %cr4, %eax
    or ${cr4_set}, %eax
    mov %eax, %cr4
    mov $probe_pml4, %eax
    mov %eax, %cr3
    mov ${efer}, %ecx
    rdmsr
    or ${efer_lme}, %eax
    wrmsr
    mov %cr0, %eax
    and ${cr0_keep}, %eax
    or ${cr0_set}, %eax
    mov %eax, %cr0
    ljmp ${code64}, $probe_ap_long_mode

    .code64
probe_ap_long_mode:
    lgdt probe_gdt_ptr(%rip)
    mov ${data}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $1, %eax
    lock xaddl %eax, {next_slot}(%rip)
    cmp ${max_aps}, %eax
    jae 9f
    /* Stack top of slot n: probe_ap_stacks + (n + 1) << shift. */
    mov %eax, %edi
    lea 1(%rdi), %rax
    shl ${stack_shift}, %rax
    lea probe_ap_stacks(%rip), %rsp
    add %rax, %rsp
    xor %ebp, %ebp
    call {entry}
9:
    cli
    hlt
    jmp 9b
    .popsection

    /* Not cleared by the entry code (see link.ld): stacks need no initial contents. */
    .pushsection .ap_stacks, "aw", @nobits
    .p2align 12
probe_ap_stacks:
    .skip {stacks_size}
    .popsection
"#,
    base = const TRAMPOLINE_BASE,
    code64 = const CODE64_SELECTOR,
    data = const DATA_SELECTOR,
    code32 = const CODE32_SELECTOR,
    cr0_pe = const CR0_PE,
    cr0_keep = const !CR0_CLEAR,
    cr0_set = const CR0_SET,
    cr4_set = const CR4_SET,
    efer = const IA32_EFER,
    efer_lme = const EFER_LME,
    next_slot = sym NEXT_SLOT,
    max_aps = const MAX_APS,
    stack_shift = const AP_STACK_SHIFT,
    stacks_size = const AP_STACKS_SIZE,
    entry = sym ap_entry,
    options(att_syntax)
);
