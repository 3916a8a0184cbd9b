//! Building and running a VM from a [`VmConfig`].
//!
//! Order matters for the "nothing half-started" rule: everything the user controls (files,
//! sizes, vCPU counts, CPU features) is checked and the kernel is loaded into freshly
//! mapped guest RAM before the KVM VM is created. Only then are KVM capabilities enabled,
//! memory registered, devices wired, vCPUs created and started.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

use devices::serial::{SerialDevice, SerialError};
use devices::VmExitHandler;
use kvm_bindings::{
    kvm_enable_cap, kvm_msr_entry, kvm_userspace_memory_region, Msrs, KVM_CAP_SPLIT_IRQCHIP,
    KVM_CAP_X2APIC_API, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::acpi::dmar::DmarConfig;
use crate::acpi::mcfg::EcamConfig;
use crate::acpi::{self, AcpiConfig, PciHostConfig};
use crate::boot::{self, BootError, BootSetup, Initramfs, KernelImage};
use crate::bus::BusError;
use crate::cpuid::{self, CpuidError, CpuidOptions, FeatureOverride};
use crate::layout::*;
use crate::memory::{self, MIN_MEMORY};
use crate::platform;
use crate::topology::Topology;
use crate::vcpu::{ExitState, Vcpu, VcpuContext, VmOutcome};

/// Where the guest's COM1 goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    /// Standard output (and standard input as the guest's keyboard).
    Stdio,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded (the UART still exists).
    Off,
}

/// The local APIC mode vCPUs start in, as firmware would leave them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// x2APIC when any APIC ID is 255 or above (a guest parsing the MADT in xAPIC mode
    /// ignores such CPUs), xAPIC otherwise.
    Auto,
    /// xAPIC (only APIC IDs below 255 are usable).
    XApic,
    /// x2APIC ("enabled by BIOS").
    X2Apic,
}

/// The guest-visible IOMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuKind {
    /// None.
    None,
    /// Intel VT-d with interrupt remapping (x2APIC mode capable).
    Intel,
    /// AMD-Vi with interrupt remapping (x2APIC mode and guest virtual APIC capable), no DMA
    /// translation.
    Amd,
}

/// Emulated PCI devices the user can add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciDeviceKind {
    /// The `edu` test device (QEMU's public spec): MSI.
    Edu,
    /// irvmm's MSI-X variant of `edu` with 256 vectors.
    EduMsix,
}

/// A PCI device on bus 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    /// An emulated device.
    Emulated(PciDeviceKind),
    /// A passed-through device.
    Passthrough(crate::passthrough::PassthroughConfig),
}

/// Everything needed to start a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image (PVH ELF or bzImage).
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPU topology.
    pub topology: Topology,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// COM1 backend.
    pub serial: SerialMode,
    /// `--cpu-features` overrides.
    pub cpu_features: Vec<FeatureOverride>,
    /// Offer the paravirtual extended destination ID.
    pub ext_dest_id: bool,
    /// The KVM device node (normally `/dev/kvm`).
    pub kvm_device: PathBuf,
    /// Local APIC mode at start-up.
    pub apic_mode: ApicMode,
    /// The guest-visible IOMMU.
    pub iommu: IommuKind,
    /// PCI devices, placed on bus 0 in order (device 1, 2, ...).
    pub devices: Vec<DeviceConfig>,
    /// virtio-blk disks (`--disk`), placed after the devices.
    pub disks: Vec<virtio::DiskConfig>,
    /// The virtio console (`--console`).
    pub console: crate::virtio::ConsoleMode,
    /// A virtio-rng device (`--rng`).
    pub rng: bool,
}

/// Whether the vCPUs start in x2APIC mode.
fn x2apic_at_boot(config: &VmConfig, max_apic_id: u32) -> Result<bool, Error> {
    let x2apic_hidden = config
        .cpu_features
        .iter()
        .any(|o| !o.enable && o.feature.name == "x2apic");
    let needed = max_apic_id >= XAPIC_MAX_ID;
    let on = match config.apic_mode {
        ApicMode::Auto => needed,
        ApicMode::X2Apic => true,
        ApicMode::XApic if needed => {
            return Err(Error::usage(
                "--apic-mode",
                format!("xapic cannot address APIC ID {max_apic_id} (xAPIC IDs stop at 254); use x2apic or auto"),
            ))
        }
        ApicMode::XApic => false,
    };
    if on && x2apic_hidden {
        return Err(Error::usage(
            "--cpu-features",
            "-x2apic conflicts with starting in x2APIC mode (APIC IDs above 254 or --apic-mode x2apic)",
        ));
    }
    Ok(on)
}

/// Highest APIC ID an xAPIC can address (0xff is broadcast).
const XAPIC_MAX_ID: u32 = 0xff;
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

/// VM errors. [`Error::Usage`] means the user's input was refused before anything started.
#[derive(Debug, Error)]
pub enum Error {
    /// Bad user input, detected before the VM existed. `flag` names the option to fix.
    #[error("{flag}: {message}")]
    Usage {
        /// The command-line flag (or resource) at fault.
        flag: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A KVM call failed.
    #[error("{what}: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be created.
    #[error("guest memory: {0}")]
    Memory(#[from] crate::memory::MemoryError),
    /// Boot data could not be written.
    #[error("boot: {0}")]
    Boot(BootError),
    /// ACPI tables could not be built.
    #[error("ACPI: {0}")]
    Acpi(#[from] acpi::AcpiError),
    /// Device wiring failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// Serial output file.
    #[error("--serial: cannot open {path}: {source}")]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The platform could not be assembled.
    #[error("{0}")]
    Platform(String),
    /// The interrupt router failed.
    #[error("interrupts: {0}")]
    Router(#[from] crate::interrupt::RouterError),
    /// KVM_SET_MSRS set fewer MSRs than asked.
    #[error("KVM_SET_MSRS set {set} of {asked} boot MSRs")]
    Msrs {
        /// MSRs set.
        set: usize,
        /// MSRs asked for.
        asked: usize,
    },
}

impl Error {
    /// True when the error is the user's input (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage { .. })
    }

    pub(crate) fn usage(flag: &'static str, message: impl Into<String>) -> Self {
        Error::Usage {
            flag,
            message: message.into(),
        }
    }

    fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { what, source }
    }
}

fn boot_usage(e: BootError, config: &VmConfig) -> Error {
    let flag = match &e {
        BootError::Read { path, .. } | BootError::NotAFile(path)
            if Some(path) == config.initramfs.as_ref() =>
        {
            "--initramfs"
        }
        BootError::Read { .. }
        | BootError::NotAFile(_)
        | BootError::Empty(_)
        | BootError::UnknownFormat(_)
        | BootError::NoPvhEntry(_)
        | BootError::Loader { .. }
        | BootError::BadBzImage { .. } => "--kernel",
        BootError::Cmdline(_) => "--cmdline",
        BootError::InitramfsTooLarge { .. } => "--initramfs",
        BootError::GuestMemory { .. } => return Error::Boot(e),
    };
    let mut message = e.to_string();
    if let BootError::InitramfsTooLarge { .. } = e {
        message.push_str(" (give the guest more --memory)");
    }
    Error::usage(flag, message)
}

fn cpuid_usage(e: CpuidError) -> Error {
    Error::usage("--cpu-features", e.to_string())
}

/// Host RAM in bytes, to refuse guests that could never be backed.
fn host_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration values.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

/// Checks the configuration against the host's KVM; the first step of [`run`]. Returns
/// whether the vCPUs start in x2APIC mode.
fn preflight(config: &VmConfig, kvm: &Kvm) -> Result<bool, Error> {
    let cpus = config.topology.cpus();
    let max = kvm.get_max_vcpus();
    if cpus as usize > max {
        return Err(Error::usage(
            "--cpus",
            format!("{cpus} vCPUs asked for, but this host's KVM allows at most {max}"),
        ));
    }
    let max_id = config.topology.apic_ids().into_iter().max().unwrap_or(0);
    let x2apic = x2apic_at_boot(config, max_id)?;
    let id_limit = kvm.check_extension_int(Cap::MaxVcpuId).max(max as i32) as u64;
    if u64::from(max_id) >= id_limit {
        return Err(Error::usage(
            "--cpus",
            format!("the topology needs APIC ID {max_id}, but this host's KVM allows IDs below {id_limit}; use fewer sockets or a power-of-two core count"),
        ));
    }
    if config.memory < MIN_MEMORY {
        return Err(Error::usage(
            "--memory",
            format!(
                "{} bytes is too small; give at least {}M",
                config.memory,
                MIN_MEMORY >> 20
            ),
        ));
    }
    if let Some(host) = host_memory() {
        if config.memory > host {
            return Err(Error::usage(
                "--memory",
                format!(
                    "{} MiB asked for, but the host has only {} MiB of RAM",
                    config.memory >> 20,
                    host >> 20
                ),
            ));
        }
    }
    if max_id > 255 && !config.ext_dest_id && config.iommu == IommuKind::None {
        return Err(Error::usage(
            "--cpus",
            format!("APIC IDs up to {max_id} need interrupt remapping (--iommu intel or --iommu amd) or the extended destination ID (--ext-dest-id on) to receive device interrupts"),
        ));
    }
    Ok(x2apic)
}

/// Boot MSRs: syscall MSRs cleared, fast strings on, MTRRs enabled with write-back default.
fn boot_msrs(kvm: &Kvm) -> Result<Msrs, Error> {
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

fn enable_cap(vm: &VmFd, cap: u32, arg0: u64, what: &'static str) -> Result<(), Error> {
    let mut c = kvm_enable_cap {
        cap,
        ..Default::default()
    };
    c.args[0] = arg0;
    vm.enable_cap(&c).map_err(Error::kvm(what))
}

/// KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK.
const X2APIC_API_FLAGS: u64 = 1 | 2;
/// KVM_CAP_MAX_VCPU_ID.
const KVM_CAP_MAX_VCPU_ID: u32 = 128;
/// Stack for vCPU threads: the run loop is shallow.
const VCPU_STACK_SIZE: usize = 256 << 10;

fn serial_output(mode: &SerialMode) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match mode {
        SerialMode::Stdio => Box::new(std::io::stdout()),
        SerialMode::Off => Box::new(std::io::sink()),
        SerialMode::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| Error::SerialFile {
                    path: path.clone(),
                    source,
                })?,
        ),
    })
}

/// Feeds standard input to the guest's UART.
fn spawn_stdin(serial: Arc<Mutex<SerialDevice>>) -> Result<(), Error> {
    thread::Builder::new()
        .name("serial-in".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                let n = match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    let taken = match serial.lock() {
                        Ok(mut s) => match s.enqueue_input(pending) {
                            Ok(n) => n,
                            Err(SerialError::Interrupt { accepted, .. }) => accepted,
                            Err(_) => 0,
                        },
                        Err(_) => return,
                    };
                    pending = &pending[taken..];
                    if !pending.is_empty() {
                        thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(|source| Error::Thread {
            what: "serial input",
            source,
        })
}

/// Builds the VM described by `config`, runs it until it stops and says why.
pub fn run(config: &VmConfig) -> Result<VmOutcome, Error> {
    let kvm_path = config.kvm_device.display().to_string();
    let kvm = std::ffi::CString::new(config.kvm_device.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::usage("--kvm-device", "the path contains a NUL byte"))
        .and_then(|path| {
            Kvm::new_with_path(&path).map_err(|e| {
                Error::usage(
                    "--kvm-device",
                    format!("cannot open {kvm_path}: {e}; irvmm needs KVM (load kvm_intel or kvm_amd) and read/write access to the device"),
                )
            })
        })?;
    let x2apic = preflight(config, &kvm)?;
    let kernel = KernelImage::open(&config.kernel).map_err(|e| boot_usage(e, config))?;
    let initramfs = config
        .initramfs
        .as_deref()
        .map(Initramfs::open)
        .transpose()
        .map_err(|e| boot_usage(e, config))?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    let template = cpuid::vm_template(
        &supported,
        &CpuidOptions {
            overrides: config.cpu_features.clone(),
            ext_dest_id: config.ext_dest_id,
        },
    )
    .map_err(cpuid_usage)?;

    // Passed-through devices, then guest RAM, ACPI and the kernel, all before the KVM VM
    // exists.
    let passthrough: Vec<_> = config
        .devices
        .iter()
        .filter_map(|d| match d {
            DeviceConfig::Passthrough(p) => Some(p),
            DeviceConfig::Emulated(_) => None,
        })
        .collect();
    let opened = crate::passthrough::open_all(&passthrough)?;
    let intx = crate::passthrough::intx_plan(&config.devices, &opened);
    let virtio = crate::virtio::open_all(&config.disks, config.console, config.rng)?;
    let mem = memory::create_guest_memory(config.memory)?;
    let apic_ids = config.topology.apic_ids();
    let tables = acpi::build(
        &AcpiConfig {
            apic_ids: apic_ids.clone(),
            ioapic_id: IOAPIC_ID,
            ioapic_addr: IOAPIC_ADDR as u32,
            ioapic_gsi_base: 0,
            lapic_addr: LAPIC_ADDR as u32,
            sleep_control_port: ACPI_PM_PORT,
            sleep_status_port: ACPI_PM_PORT + 1,
            reset_port: RESET_PORT,
            reset_value: RESET_VALUE,
            serial: Some((COM1_PORT, COM1_IRQ)),
            pci: Some(PciHostConfig {
                ecam: EcamConfig {
                    base: PCIE_ECAM_START,
                    start_bus: 0,
                    end_bus: PCIE_ECAM_END_BUS,
                },
                mmio32_base: PCI_MMIO_START as u32,
                mmio32_size: (PCI_MMIO_END - PCI_MMIO_START) as u32,
                intx_routes: intx.clone(),
            }),
            dmar: (config.iommu == IommuKind::Intel).then_some(DmarConfig {
                register_base: VTD_ADDR,
                host_address_width: VTD_HOST_ADDRESS_WIDTH,
                ioapic_id: IOAPIC_ID,
                ioapic_bdf: platform::IOAPIC_SOURCE_ID,
            }),
            ivrs: (config.iommu == IommuKind::Amd)
                .then(platform::amd_ivrs_config)
                .transpose()?,
        },
        ACPI_START,
        ACPI_END,
    )?;
    for (addr, bytes) in &tables.blobs {
        vm_memory::Bytes::write_slice(&mem, bytes, vm_memory::GuestAddress(*addr)).map_err(
            |source| {
                Error::Boot(BootError::GuestMemory {
                    what: "ACPI tables",
                    source,
                })
            },
        )?;
    }
    let map = memory::memory_map(config.memory);
    let entry = boot::load(
        &mem,
        &BootSetup {
            kernel: &kernel,
            initramfs: initramfs.as_ref(),
            cmdline: &config.cmdline,
            memory_map: &map,
            memory_size: config.memory,
            rsdp: tables.rsdp_addr,
        },
    )
    .map_err(|e| boot_usage(e, config))?;
    let msrs = boot_msrs(&kvm)?;
    let output = serial_output(&config.serial)?;

    // The KVM VM.
    let vm = Arc::new(kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?);
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    enable_cap(
        &vm,
        KVM_CAP_SPLIT_IRQCHIP,
        IOAPIC_PINS as u64,
        "KVM_CAP_SPLIT_IRQCHIP",
    )?;
    enable_cap(
        &vm,
        KVM_CAP_X2APIC_API,
        X2APIC_API_FLAGS,
        "KVM_CAP_X2APIC_API",
    )?;
    let max_id = apic_ids.iter().copied().max().unwrap_or(0);
    if kvm.check_extension_int(Cap::MaxVcpuId) > 0 {
        enable_cap(
            &vm,
            KVM_CAP_MAX_VCPU_ID,
            u64::from(max_id) + 1,
            "KVM_CAP_MAX_VCPU_ID",
        )?;
    }
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM (the
        // vCPU context keeps a clone), and slots do not overlap.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }

    // Interrupts and devices.
    let exit = Arc::new(ExitState::default());
    let handler: Arc<dyn VmExitHandler> = exit.clone();
    let platform = platform::build(
        vm.clone(),
        &mem,
        config,
        output,
        handler,
        platform::PassthroughPlan {
            opened,
            intx,
            first_slot: mem.num_regions() as u32,
            virtio,
        },
    )?;
    let serial = platform.serial.clone();

    // vCPUs: all created (and the BSP's registers set) before any runs.
    let mut vcpus = Vec::with_capacity(apic_ids.len());
    for (index, &apic_id) in apic_ids.iter().enumerate() {
        let fd = vm
            .create_vcpu(u64::from(apic_id))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        let cpuid = cpuid::for_vcpu(&template, &config.topology, apic_id).map_err(cpuid_usage)?;
        fd.set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
        let set = fd.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
        if set != msrs.as_slice().len() {
            return Err(Error::Msrs {
                set,
                asked: msrs.as_slice().len(),
            });
        }
        let base = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_APICBASE,
            data: apic_base(index == 0, x2apic),
            ..Default::default()
        }])
        .map_err(|_| Error::Msrs { set: 0, asked: 1 })?;
        if fd
            .set_msrs(&base)
            .map_err(Error::kvm("KVM_SET_MSRS (IA32_APIC_BASE)"))?
            != 1
        {
            return Err(Error::Msrs { set: 0, asked: 1 });
        }
        if index == 0 {
            let sregs = fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
            let mut r = boot::regs::setup(&mem, entry, sregs).map_err(Error::Boot)?;
            r.sregs.apic_base = apic_base(true, x2apic);
            fd.set_sregs(&r.sregs)
                .map_err(Error::kvm("KVM_SET_SREGS"))?;
            fd.set_regs(&r.regs).map_err(Error::kvm("KVM_SET_REGS"))?;
            fd.set_fpu(&boot::regs::boot_fpu())
                .map_err(Error::kvm("KVM_SET_FPU"))?;
            setup_lint(&fd)?;
        }
        vcpus.push(Vcpu {
            fd,
            index: index as u32,
            apic_id,
        });
    }

    let router = platform.router.clone();
    let platform_router = platform.router.clone();
    let ioapic = platform.ioapic.clone();
    let events = platform.passthrough.events().clone();
    let ctx = Arc::new(VcpuContext {
        pio: platform.pio,
        mmio: platform.mmio,
        ioapic_eoi: Box::new(move |vector| {
            // Routes hold the translated vector; with remapping it differs from the RTE's.
            for pin in router.eoi_pins(vector) {
                let intx = events.is_intx_pin(pin);
                match ioapic.lock() {
                    Ok(mut io) => {
                        // A passed-through INTx is deasserted at the EOI; the device
                        // asserts it again (after the unmask below) if it still needs to.
                        if intx {
                            io.set_irq_level(pin as usize, false);
                        }
                        io.end_of_interrupt_pin(pin as usize);
                    }
                    Err(_) => log::error!("IOAPIC lock poisoned"),
                }
                if intx {
                    events.intx_eoi(pin);
                }
            }
        }),
        exit: exit.clone(),
        mem,
    });
    // Standard input goes to the virtio console when there is one.
    if config.serial == SerialMode::Stdio && config.console == crate::virtio::ConsoleMode::Off {
        spawn_stdin(serial.clone())?;
    }
    for vcpu in vcpus {
        let ctx = ctx.clone();
        let name = format!("vcpu{}", vcpu.index);
        thread::Builder::new()
            .name(name)
            .stack_size(VCPU_STACK_SIZE)
            .spawn(move || vcpu.run(ctx))
            .map_err(|source| Error::Thread {
                what: "vCPU",
                source,
            })?;
    }
    let outcome = exit.wait();
    let stats = platform_router.stats();
    log::info!(
        "interrupt router: translations={} invalidations={} route_commits={} route_changes={} signalled={} irqfd_binds={} irqfd_unbinds={}",
        stats.translations,
        stats.invalidations,
        stats.routes.commits,
        stats.routes.changes,
        stats.signalled,
        stats.irqfd_binds,
        stats.irqfd_unbinds
    );
    for g in platform_router.group_stats() {
        log::info!(
            "irqfd vectors {}: {} vectors, {} enabled, {} in KVM, {} postable, {} delivered by the VMM, {} blocked or dropped",
            g.name,
            g.vectors,
            g.counts.enabled,
            g.counts.in_kvm,
            g.counts.postable,
            g.vmm_deliveries,
            g.blocked
        );
    }
    platform.passthrough.report();
    platform.virtio.report();
    if let Ok(mut s) = serial.lock() {
        s.flush_output();
    }
    Ok(outcome)
}
