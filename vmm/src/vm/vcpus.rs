//! Creating and configuring the KVM vCPUs before any runs: CPUID, MSRs, the local APIC's
//! mode and the boot vCPU's registers and LINT pins.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry, Msrs};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::boot::{self, EntryMode};
use crate::cpuid;
use crate::layout::*;
use crate::topology::Topology;
use crate::vm::error::cpuid_usage;
use crate::vm::Error;

/// IA32_APIC_BASE.
const MSR_IA32_APICBASE: u32 = 0x1b;
/// IA32_APIC_BASE: this is the bootstrap processor.
const APICBASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE: x2APIC mode.
const APICBASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE: APIC globally enabled.
const APICBASE_EN: u64 = 1 << 11;

/// The IA32_APIC_BASE value for a vCPU.
fn apic_base(bsp: bool, x2apic: bool) -> u64 {
    let mut v = LAPIC_ADDR | APICBASE_EN;
    if bsp {
        v |= APICBASE_BSP;
    }
    if x2apic {
        v |= APICBASE_EXTD;
    }
    v
}

/// Boot MSRs: syscall MSRs cleared, fast strings on, MTRRs enabled with write-back default.
pub(crate) fn boot_msrs(kvm: &Kvm) -> Result<Msrs, Error> {
    const IA32_SYSENTER_CS: u32 = 0x174;
    const IA32_SYSENTER_ESP: u32 = 0x175;
    const IA32_SYSENTER_EIP: u32 = 0x176;
    const IA32_MISC_ENABLE: u32 = 0x1a0;
    const IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
    const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WB: u64 = 6;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    let wanted = [
        (IA32_SYSENTER_CS, 0),
        (IA32_SYSENTER_ESP, 0),
        (IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_LSTAR, 0),
        (MSR_CSTAR, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (IA32_MISC_ENABLE, IA32_MISC_ENABLE_FAST_STRING),
        (IA32_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB),
    ];
    let offered = kvm
        .get_msr_index_list()
        .map_err(Error::kvm("KVM_GET_MSR_INDEX_LIST"))?;
    let entries: Vec<kvm_msr_entry> = wanted
        .iter()
        .filter(|(i, _)| offered.as_slice().contains(i))
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(|_| Error::Msrs {
        set: 0,
        asked: entries.len(),
    })
}

/// At most this many threads create and configure vCPUs at once.
const MAX_CREATORS: usize = 8;

/// Creates and configures every vCPU (`apic_ids[i]` is the `i`th; index 0 is the boot
/// vCPU): the boot vCPU first, then KVM's master clock is settled, then the APs on up to
/// [`MAX_CREATORS`] threads (one per host CPU). KVM serialises only the creation itself;
/// CPUID, MSRs and the LAPIC of one vCPU do not wait for another's, and with a thousand
/// vCPUs that work is most of the VM's set-up. Returns the vCPUs in index order with their
/// APIC IDs; on an error, the first one (in index order) among those that failed.
pub(crate) fn create_vcpus(
    vm: &VmFd,
    apic_ids: &[u32],
    setup: &VcpuSetup<'_>,
) -> Result<Vec<(VcpuFd, u32)>, Error> {
    let Some((&boot_id, ap_ids)) = apic_ids.split_first() else {
        return Ok(Vec::new());
    };
    let boot = create_vcpu(vm, 0, boot_id, setup)?;
    settle_master_clock(vm)?;
    let creators = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_CREATORS)
        .min(ap_ids.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let mut made: Vec<(usize, Result<VcpuFd, Error>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..creators)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&apic_id) = ap_ids.get(i) else {
                            break;
                        };
                        let result = create_vcpu(vm, i + 1, apic_id, setup);
                        if result.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        out.push((i, result));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    made.sort_by_key(|(i, _)| *i);
    let mut fds = Vec::with_capacity(apic_ids.len());
    fds.push((boot, boot_id));
    for (i, result) in made {
        fds.push((result?, ap_ids[i]));
    }
    if fds.len() != apic_ids.len() {
        return Err(Error::Platform(format!(
            "created {} of {} vCPUs (a creating thread died)",
            fds.len(),
            apic_ids.len()
        )));
    }
    Ok(fds)
}

/// Settles KVM's master clock decision once the boot vCPU exists, before the APs do.
///
/// KVM decides whether the VM's kvmclock runs off one master clock when a vCPU processes a
/// master-clock update request, and until one has, every vCPU created sees the decision
/// pending and gets its own request. Each AP then handles it at its first entry into the
/// guest, after its SIPI: an update that stops and restarts the clock of every vCPU, so
/// O(vCPUs) work per AP and O(vCPUs²) in all, inside the guest's AP bring-up (about 0.3 ms
/// per AP at 1024 vCPUs on the build machines). KVM_SET_CLOCK makes the same decision at
/// once; set to the value KVM_GET_CLOCK just read, it leaves the guest's clock where it is
/// (no guest code has run yet). The APs created after it find the decision made and
/// unchanged, and get no request.
fn settle_master_clock(vm: &VmFd) -> Result<(), Error> {
    let clock = vm.get_clock().map_err(Error::kvm("KVM_GET_CLOCK"))?;
    let set = kvm_bindings::kvm_clock_data {
        clock: clock.clock,
        ..Default::default()
    };
    vm.set_clock(&set).map_err(Error::kvm("KVM_SET_CLOCK"))
}

/// LAPIC LVT LINT0 register offset and the ExtINT delivery mode.
const APIC_LVT_LINT0: usize = 0x350;
/// LAPIC LVT LINT1 register offset.
const APIC_LVT_LINT1: usize = 0x360;
const APIC_DELIVERY_EXTINT: u32 = 0x7 << 8;
const APIC_DELIVERY_NMI: u32 = 0x4 << 8;

/// Wires LINT0 as ExtINT and LINT1 as NMI on the boot vCPU, as firmware does.
fn setup_lint(fd: &kvm_ioctls::VcpuFd) -> Result<(), Error> {
    let mut lapic = fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    for (off, mode) in [
        (APIC_LVT_LINT0, APIC_DELIVERY_EXTINT),
        (APIC_LVT_LINT1, APIC_DELIVERY_NMI),
    ] {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = lapic.regs[off + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !(0x7 << 8)) | mode;
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[off + i] = *x as _;
        }
    }
    fd.set_lapic(&lapic).map_err(Error::kvm("KVM_SET_LAPIC"))
}

/// What configuring the vCPUs needs.
pub(crate) struct VcpuSetup<'a> {
    /// The VM's CPUID template (per-vCPU leaves are derived from it).
    pub template: &'a [kvm_cpuid_entry2],
    /// The topology the APIC IDs come from.
    pub topology: &'a Topology,
    /// Boot MSRs for every vCPU.
    pub msrs: &'a Msrs,
    /// Whether the local APICs start in x2APIC mode.
    pub x2apic: bool,
    /// Guest memory (the boot vCPU's page tables and GDT go there).
    pub mem: &'a GuestMemoryMmap,
    /// How the kernel is entered.
    pub entry: EntryMode,
}

/// Creates the vCPU with APIC ID `apic_id` (the `index`th; index 0 is the boot vCPU) and
/// configures it: CPUID, boot MSRs, IA32_APIC_BASE and, on the boot vCPU, the entry
/// registers, FPU and LINT pins. APs are left as KVM creates them: their threads prime them
/// and put them in wait-for-SIPI before the guest runs (`crate::vcpu::prime`).
fn create_vcpu(
    vm: &VmFd,
    index: usize,
    apic_id: u32,
    setup: &VcpuSetup<'_>,
) -> Result<VcpuFd, Error> {
    let fd = vm
        .create_vcpu(u64::from(apic_id))
        .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
    let cpuid = cpuid::for_vcpu(setup.template, setup.topology, apic_id).map_err(cpuid_usage)?;
    fd.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    // The boot MSRs and IA32_APIC_BASE in one KVM_SET_MSRS: every vCPU ioctl loads the
    // vCPU, which is not cheap on every host, and 1024 vCPUs pay it 1024 times.
    let bsp = index == 0;
    let mut entries = setup.msrs.as_slice().to_vec();
    entries.push(kvm_msr_entry {
        index: MSR_IA32_APICBASE,
        data: apic_base(bsp, setup.x2apic),
        ..Default::default()
    });
    let asked = entries.len();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Msrs { set: 0, asked })?;
    let set = fd.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    if set != asked {
        return Err(Error::Msrs { set, asked });
    }
    if bsp {
        let sregs = fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        let mut r = boot::regs::setup(setup.mem, setup.entry, sregs).map_err(Error::Boot)?;
        r.sregs.apic_base = apic_base(true, setup.x2apic);
        fd.set_sregs(&r.sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        fd.set_regs(&r.regs).map_err(Error::kvm("KVM_SET_REGS"))?;
        fd.set_fpu(&boot::regs::boot_fpu())
            .map_err(Error::kvm("KVM_SET_FPU"))?;
        setup_lint(&fd)?;
    }
    Ok(fd)
}
