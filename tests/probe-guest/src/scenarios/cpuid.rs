//! `probe=cpuid`: the CPUID leaves every vCPU sees, and whether CR4 takes the bits of the
//! features CPUID hides.
//!
//! The BSP brings up every AP ready for interrupts (as `ipi` does), sends each CPU, itself
//! included, a fixed IPI whose handler executes CPUID for every leaf of [`LEAVES`] and stores
//! the four registers in that CPU's slot (APs never print). The BSP then prints each leaf as
//! it saw it, with how many CPUs saw the same (ignoring the fields that carry the CPU's own
//! APIC ID), then the decoded features that matter to a guest kernel:
//! `cpuid: popcnt=P smap=S smep=E x2apic=X xsave=V cx16=C tsc_deadline=T abm=A hypervisor=H`.
//!
//! First, on the BSP alone (before any AP starts), it tries to set CR4.SMEP (bit 20) and
//! CR4.SMAP (bit 21) one at a time with interrupts off (restoring CR4 right after, registers only in between; the
//! probe's pages are supervisor pages, so neither changes what it may access):
//! `ok` when the bit stuck, `gp` when the write raised #GP. A VMM that hides a feature in
//! CPUID makes KVM refuse its CR4 bit; `ok` for a hidden feature means the host lets the
//! guest use it anyway.
//!
//! Passes when every CPU answered and all agree:
//! `PROBE PASS cpuid cpus=N popcnt=P smap=S smep=E x2apic=X xsave=V cx16=C abm=A
//! cr4_smep=ok|gp cr4_smap=ok|gp vendor=V`. The scenario observes; a harness compares the
//! bits with what the VMM was told (e.g. `--cpu-features -popcnt,-smap`).

use core::arch::{asm, global_asm};
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering};

use super::{smp, Context};
use crate::ap::{self, ApMode, Cpu};
use crate::cpus::MAX_CPUS;
use crate::report::{Outcome, Text};
use crate::{apic, idt, irq, sprintln, text, x86};

/// The IPI vector whose handler records CPUID.
const VECTOR: u8 = irq::TEST_VECTOR_A;
/// Wait for every CPU's record: this much plus [`DEADLINE_PER_CPU_NS`] per CPU.
const DEADLINE_BASE_NS: u64 = 5_000_000_000;
/// Wait per CPU (each executes [`LEAVES`]`.len()` CPUIDs of ~5 µs on the build machines).
const DEADLINE_PER_CPU_NS: u64 = 10_000_000;

/// Leaf 0: vendor and highest basic leaf.
const LEAF_VENDOR: u32 = 0;
/// Leaf 1: basic features.
const LEAF_FEATURES: u32 = 1;
/// Leaf 7: structured extended features.
const LEAF_EXT_FEATURES: u32 = 7;
/// Leaf 0xb: x2APIC topology.
const LEAF_TOPOLOGY: u32 = 0xb;
/// Leaf 0xd: XSAVE state.
const LEAF_XSAVE: u32 = 0xd;
/// Leaf 0x40000000: hypervisor signature.
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// Leaf 0x40000001: KVM paravirtual features.
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
/// Leaf 0x80000000: highest extended leaf.
const LEAF_EXT_MAX: u32 = 0x8000_0000;
/// Leaf 0x80000001: AMD-defined features.
const LEAF_EXT_AMD: u32 = 0x8000_0001;

/// The (leaf, subleaf) pairs every CPU records.
const LEAVES: [(u32, u32); 10] = [
    (LEAF_VENDOR, 0),
    (LEAF_FEATURES, 0),
    (LEAF_EXT_FEATURES, 0),
    (LEAF_TOPOLOGY, 0),
    (LEAF_XSAVE, 0),
    (LEAF_XSAVE, 1),
    (LEAF_HYPERVISOR, 0),
    (LEAF_KVM_FEATURES, 0),
    (LEAF_EXT_MAX, 0),
    (LEAF_EXT_AMD, 0),
];
/// Registers per leaf: EAX, EBX, ECX, EDX.
const REGS: usize = 4;
const EAX: usize = 0;
const EBX: usize = 1;
const ECX: usize = 2;
const EDX: usize = 3;

/// Leaf 1 EBX bits 31:24: the CPU's initial APIC ID.
const LEAF1_EBX_APIC_ID: u32 = 0xff00_0000;
/// Leaf 0xb EDX: the CPU's x2APIC ID.
const LEAF_B_EDX_X2APIC_ID: u32 = u32::MAX;

/// A feature bit the summary reports.
struct Feature {
    name: &'static str,
    leaf: u32,
    reg: usize,
    bit: u32,
}

const fn feature(name: &'static str, leaf: u32, reg: usize, bit: u32) -> Feature {
    Feature {
        name,
        leaf,
        reg,
        bit,
    }
}

/// The features that matter to a guest kernel on the build machines (see its notes).
const FEATURES: [Feature; 9] = [
    feature("popcnt", LEAF_FEATURES, ECX, 23),
    feature("smap", LEAF_EXT_FEATURES, EBX, 20),
    feature("smep", LEAF_EXT_FEATURES, EBX, 7),
    feature("x2apic", LEAF_FEATURES, ECX, 21),
    feature("xsave", LEAF_FEATURES, ECX, 26),
    feature("cx16", LEAF_FEATURES, ECX, 13),
    feature("tsc_deadline", LEAF_FEATURES, ECX, 24),
    feature("abm", LEAF_EXT_AMD, ECX, 5),
    feature("hypervisor", LEAF_FEATURES, ECX, 31),
];

/// CR4.SMEP and CR4.SMAP.
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;

/// Slot of a CPU's record: 0 for the BSP, AP slot + 1 for the APs.
const BSP_SLOT: usize = 0;
/// The registers each CPU read, by slot, leaf and register.
static SEEN: [[[AtomicU32; REGS]; LEAVES.len()]; MAX_CPUS] =
    [const { [const { [const { AtomicU32::new(0) }; REGS] }; LEAVES.len()] }; MAX_CPUS];
/// Whether each slot has recorded (1) or not (0).
static DONE: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Records taken, all CPUs together.
static TOTAL: AtomicU32 = AtomicU32::new(0);

/// Handler of [`VECTOR`] on every CPU: records [`LEAVES`] in this CPU's slot, once.
fn on_ipi() {
    let slot = match ap::current_cpu() {
        Cpu::Bsp => BSP_SLOT,
        Cpu::Ap(n) => n + 1,
    };
    let (Some(regs), Some(done)) = (SEEN.get(slot), DONE.get(slot)) else {
        return;
    };
    if done.load(Ordering::Acquire) != 0 {
        return;
    }
    for (&(leaf, subleaf), out) in LEAVES.iter().zip(regs) {
        let r = x86::cpuid(leaf, subleaf);
        for (cell, v) in out.iter().zip([r.eax, r.ebx, r.ecx, r.edx]) {
            cell.store(v, Ordering::Relaxed);
        }
    }
    done.store(1, Ordering::Release);
    TOTAL.fetch_add(1, Ordering::Release);
}

/// Bits of (leaf, register) that differ legitimately between CPUs.
fn per_cpu_mask(leaf: u32, reg: usize) -> u32 {
    match (leaf, reg) {
        (LEAF_FEATURES, EBX) => LEAF1_EBX_APIC_ID,
        (LEAF_TOPOLOGY, EDX) => LEAF_B_EDX_X2APIC_ID,
        _ => 0,
    }
}

/// The registers slot `slot` recorded for leaf index `i`.
fn seen(slot: usize, i: usize) -> [u32; REGS] {
    let r = &SEEN[slot][i];
    [0, 1, 2, 3].map(|k| r[k].load(Ordering::Acquire))
}

/// Bit `f` as the BSP saw it.
fn bsp_bit(f: &Feature) -> u32 {
    LEAVES
        .iter()
        .position(|&(leaf, sub)| leaf == f.leaf && sub == 0)
        .map_or(0, |i| (seen(BSP_SLOT, i)[f.reg] >> f.bit) & 1)
}

/// The 12-character vendor string of leaf 0 (EBX, EDX, ECX).
fn vendor() -> [u8; 12] {
    let r = seen(BSP_SLOT, 0);
    let mut v = [0u8; 12];
    for (chunk, reg) in v.chunks_exact_mut(4).zip([r[EBX], r[EDX], r[ECX]]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    v
}

extern "C" {
    /// Writes `value` to CR4 with #GP caught, reads CR4 back and restores the old value;
    /// returns what stuck, or `u64::MAX` when the write raised #GP. Registers only between
    /// the write and the restore. Interrupts must be off and [`probe_cpuid_gp_handler`]
    /// installed for #GP.
    fn probe_cpuid_try_cr4(value: u64) -> u64;
    /// #GP handler for [`probe_cpuid_try_cr4`]: resumes at its failure exit.
    fn probe_cpuid_gp_handler();
}

global_asm!(
    r#"
    .pushsection .text.cpuid_cr4, "ax"
    .code64
    .global probe_cpuid_try_cr4
probe_cpuid_try_cr4:
    mov %cr4, %rsi
    mov %rdi, %cr4
    mov %cr4, %rax
    mov %rsi, %cr4
    ret
probe_cpuid_cr4_refused:
    mov $-1, %rax
    ret

    /* #GP: error code, then rip, cs, rflags, rsp, ss. Only probe_cpuid_try_cr4's CR4 write
       can fault while this gate is installed: resume at the failure exit. */
    .global probe_cpuid_gp_handler
probe_cpuid_gp_handler:
    add $8, %rsp
    lea probe_cpuid_cr4_refused(%rip), %rax
    mov %rax, (%rsp)
    iretq
    .popsection
"#,
    options(att_syntax)
);

/// #GP vector.
const GP_VECTOR: u8 = 13;

/// `ok` or `gp`: whether CR4 takes `bit` (set alone on top of the current value).
fn cr4_takes(bit: u64) -> Result<&'static str, Text> {
    let cr4: u64;
    // SAFETY: reading CR4 at ring 0 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags)) };
    // SAFETY: only the BSP runs (no AP has been started) and interrupts are off (the probe
    // runs with them disabled outside `sti; hlt`), so nothing else writes the IDT or takes
    // #GP while the gate is swapped; `idt::init` puts the exception gates back as they were.
    // The probe maps only supervisor pages, so SMEP/SMAP set for a few instructions change
    // nothing it may access.
    let got = unsafe {
        idt::set_gate(GP_VECTOR, probe_cpuid_gp_handler as *const () as u64);
        let got = probe_cpuid_try_cr4(cr4 | bit);
        idt::init();
        got
    };
    match got {
        u64::MAX => Ok("gp"),
        v if v & bit != 0 => Ok("ok"),
        v => Err(text!(
            "CR4 write of 0x{:x} neither stuck nor faulted (read 0x{:x})",
            cr4 | bit,
            v
        )),
    }
}

/// Runs the scenario.
pub fn run(ctx: &Context) -> Outcome {
    let smp = smp::prepare(ctx)?;
    // Before any AP runs: the CR4 test swaps the shared #GP gate.
    let cr4_smep = cr4_takes(CR4_SMEP)?;
    let cr4_smap = cr4_takes(CR4_SMAP)?;
    irq::set_handler(VECTOR, on_ipi)?;
    smp::bring_up(ctx, &smp, ApMode::Interrupts)?;

    let n = smp.cpus.len();
    let begin = smp.clock.now_ns();
    for &id in smp.cpus.ids() {
        // SAFETY: a fixed IPI to a CPU whose handler for VECTOR is installed.
        unsafe {
            apic::send_ipi(
                id,
                apic::ICR_DELIVERY_FIXED | apic::ICR_TRIGGER_EDGE | u64::from(VECTOR),
            )
        };
    }
    let deadline = begin + DEADLINE_BASE_NS + DEADLINE_PER_CPU_NS * n as u64;
    let all = irq::wait_until(&smp.clock, deadline, || {
        TOTAL.load(Ordering::Acquire) as usize >= n
    });
    irq::stop_tick();
    if !all || DONE[BSP_SLOT].load(Ordering::Acquire) == 0 {
        return Err(text!(
            "{} of {} CPUs recorded their CPUID leaves",
            TOTAL.load(Ordering::Acquire),
            n
        ));
    }

    let mut all_same = true;
    for (i, &(leaf, subleaf)) in LEAVES.iter().enumerate() {
        let bsp = seen(BSP_SLOT, i);
        let mut same = 1usize;
        let mut first_other = None;
        for slot in 1..n {
            let other = seen(slot, i);
            let differs = (0..REGS).any(|k| (bsp[k] ^ other[k]) & !per_cpu_mask(leaf, k) != 0);
            if differs {
                first_other.get_or_insert((slot, other));
            } else {
                same += 1;
            }
        }
        sprintln!(
            "cpuid: leaf 0x{:08x}.{} eax=0x{:08x} ebx=0x{:08x} ecx=0x{:08x} edx=0x{:08x} same on {} of {} CPUs",
            leaf,
            subleaf,
            bsp[EAX],
            bsp[EBX],
            bsp[ECX],
            bsp[EDX],
            same,
            n
        );
        if let Some((slot, r)) = first_other {
            all_same = false;
            sprintln!(
                "cpuid:   differs on APIC ID {}: eax=0x{:08x} ebx=0x{:08x} ecx=0x{:08x} edx=0x{:08x}",
                ap::slot_id(slot - 1).unwrap_or(u32::MAX),
                r[EAX],
                r[EBX],
                r[ECX],
                r[EDX]
            );
        }
    }
    let mut summary = text!("cpuid:");
    for f in &FEATURES {
        let _ = write!(summary, " {}={}", f.name, bsp_bit(f));
    }
    sprintln!("{}", summary);
    if !all_same {
        return Err(text!("the CPUs do not agree on their CPUID leaves"));
    }

    sprintln!("cpuid: cr4 smep={} smap={}", cr4_smep, cr4_smap);
    let v = vendor();
    let mut pass = text!("cpus={}", n);
    for f in FEATURES
        .iter()
        .filter(|f| f.name != "tsc_deadline" && f.name != "hypervisor")
    {
        let _ = write!(pass, " {}={}", f.name, bsp_bit(f));
    }
    let _ = write!(
        pass,
        " cr4_smep={} cr4_smap={} vendor={}",
        cr4_smep,
        cr4_smap,
        core::str::from_utf8(&v).unwrap_or("?")
    );
    Ok(pass)
}
