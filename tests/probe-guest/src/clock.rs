//! A monotonic nanosecond clock for deadlines, on the BSP only.
//!
//! Preferred source: kvmclock (`KVM_FEATURE_CLOCKSOURCE2`), which both irvmm and QEMU offer on
//! KVM: the guest names a 32-byte `pvclock_vcpu_time_info` in MSR 0x4b564d01 and KVM keeps it
//! filled with a TSC-to-nanoseconds conversion. Fallback: the TSC with its frequency from
//! CPUID (leaf 0x15 crystal ratio, leaf 0x16 base MHz, or KVM's timing leaf base + 0x10).
//! The page of the kvmclock structure belongs to this module; it is registered for the BSP
//! only, so [`Clock::now_ns`] must not be called on APs.

use core::arch::asm;
use core::cell::UnsafeCell;

use crate::kvm::{self, Kvm};
use crate::report::Text;
use crate::{text, x86};

/// `MSR_KVM_SYSTEM_TIME_NEW`: physical address of this vCPU's time structure | enable bit.
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// Enable bit of [`MSR_KVM_SYSTEM_TIME_NEW`].
const KVM_SYSTEM_TIME_ENABLE: u64 = 1;
/// CPUID leaf: TSC / core crystal clock ratio (EBX/EAX) and crystal Hz (ECX).
const CPUID_TSC_CRYSTAL: u32 = 0x15;
/// CPUID leaf: processor base frequency in MHz (EAX).
const CPUID_FREQUENCY: u32 = 0x16;
/// Offset of KVM's (and VMware's) timing leaf from the hypervisor base: EAX = TSC kHz.
const KVM_TIMING_LEAF_OFFSET: u32 = 0x10;
/// Reads of the kvmclock structure before giving up on a consistent snapshot.
const PVCLOCK_RETRIES: u32 = 1000;

const NS_PER_S: u64 = 1_000_000_000;

/// `struct pvclock_vcpu_time_info` (Documentation/virt/kvm/x86/msr.rst).
#[repr(C, align(64))]
struct PvClockInfo {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

/// The BSP's kvmclock structure, written by KVM.
struct PvClockCell(UnsafeCell<PvClockInfo>);

// SAFETY: only KVM writes the structure (on behalf of the BSP); the probe only reads it with
// volatile loads and a version check, on the BSP.
unsafe impl Sync for PvClockCell {}

static PVCLOCK: PvClockCell = PvClockCell(UnsafeCell::new(PvClockInfo {
    version: 0,
    pad0: 0,
    tsc_timestamp: 0,
    system_time: 0,
    tsc_to_system_mul: 0,
    tsc_shift: 0,
    flags: 0,
    pad: [0; 2],
}));

/// Where time comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// kvmclock registered on the BSP.
    KvmClock,
    /// The TSC ticking at this many Hz.
    Tsc { hz: u64, start: u64 },
}

/// A started clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    source: Source,
}

/// Reads the time-stamp counter.
fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter (CR4.TSD is clear at ring 0 anyway).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// TSC frequency from CPUID, if any leaf states it.
fn tsc_hz_from_cpuid(kvm: Option<&Kvm>) -> Option<u64> {
    let max_basic = x86::cpuid(0, 0).eax;
    if max_basic >= CPUID_TSC_CRYSTAL {
        let l = x86::cpuid(CPUID_TSC_CRYSTAL, 0);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax));
        }
    }
    if let Some(kvm) = kvm {
        let leaf = kvm.base + KVM_TIMING_LEAF_OFFSET;
        if kvm.max_leaf >= leaf {
            let khz = x86::cpuid(leaf, 0).eax;
            if khz != 0 {
                return Some(u64::from(khz) * 1000);
            }
        }
    }
    if max_basic >= CPUID_FREQUENCY {
        let mhz = x86::cpuid(CPUID_FREQUENCY, 0).eax & 0xffff;
        if mhz != 0 {
            return Some(u64::from(mhz) * 1_000_000);
        }
    }
    None
}

impl Clock {
    /// Starts the clock on the BSP; fails when no source is available.
    pub fn start() -> Result<Clock, Text> {
        let kvm = Kvm::detect();
        if kvm.is_some_and(|k| k.has(kvm::FEATURE_CLOCKSOURCE2)) {
            let addr = PVCLOCK.0.get() as u64;
            // SAFETY: the structure is a 64-byte aligned static that lives forever (KVM
            // requires it not to cross a page), registered for this vCPU only.
            unsafe { x86::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, addr | KVM_SYSTEM_TIME_ENABLE) };
            let clock = Clock {
                source: Source::KvmClock,
            };
            if clock.pvclock_ns().is_some() {
                return Ok(clock);
            }
            // SAFETY: turns kvmclock off again; KVM stops writing the structure.
            unsafe { x86::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0) };
        }
        let hz = tsc_hz_from_cpuid(kvm.as_ref())
            .ok_or_else(|| text!("no clock: neither kvmclock nor a TSC frequency in CPUID"))?;
        Ok(Clock {
            source: Source::Tsc { hz, start: rdtsc() },
        })
    }

    /// Name of the source, for progress lines.
    pub fn source_name(&self) -> &'static str {
        match self.source {
            Source::KvmClock => "kvmclock",
            Source::Tsc { .. } => "tsc",
        }
    }

    /// One consistent kvmclock reading, or `None` if KVM never filled the structure.
    fn pvclock_ns(&self) -> Option<u64> {
        let p = PVCLOCK.0.get();
        for _ in 0..PVCLOCK_RETRIES {
            // SAFETY: `p` points to the static structure; KVM may update it at any time, so
            // every field is read with a volatile load and the snapshot is used only if the
            // version was even and unchanged around the reads.
            let (v1, ts, sys, mul, shift, v2) = unsafe {
                let v1 = core::ptr::read_volatile(&raw const (*p).version);
                let ts = core::ptr::read_volatile(&raw const (*p).tsc_timestamp);
                let sys = core::ptr::read_volatile(&raw const (*p).system_time);
                let mul = core::ptr::read_volatile(&raw const (*p).tsc_to_system_mul);
                let shift = core::ptr::read_volatile(&raw const (*p).tsc_shift);
                let tsc = rdtsc();
                let v2 = core::ptr::read_volatile(&raw const (*p).version);
                (v1, tsc.wrapping_sub(ts), sys, mul, shift, v2)
            };
            if v1 == 0 || v1 & 1 != 0 || v1 != v2 || mul == 0 {
                x86::pause();
                continue;
            }
            let delta = if shift < 0 {
                ts >> shift.unsigned_abs()
            } else {
                ts << shift
            };
            let ns = (u128::from(delta) * u128::from(mul)) >> 32;
            return Some(sys.wrapping_add(ns as u64));
        }
        None
    }

    /// Nanoseconds since an arbitrary fixed point (monotonic on the BSP).
    pub fn now_ns(&self) -> u64 {
        match self.source {
            // A structure that was valid once stays valid; 0 only if KVM breaks it later.
            Source::KvmClock => self.pvclock_ns().unwrap_or(0),
            Source::Tsc { hz, start } => {
                // Split to stay in 64 bits (no 128-bit division in a freestanding build).
                let ticks = rdtsc().wrapping_sub(start);
                (ticks / hz) * NS_PER_S + (ticks % hz) * NS_PER_S / hz
            }
        }
    }
}
