//! A VM: built from a [`VmConfig`] ([`Vm::build`]), run until it stops ([`Vm::run`]), and
//! [`run`], which runs one VM after another while the guest resets with
//! `--on-reset restart`.
//!
//! Order matters for the "nothing half-started" rule: everything the user controls (files,
//! sizes, vCPU counts, CPU features) is checked and the kernel is loaded into freshly
//! mapped guest RAM before the KVM VM is created. Only then are KVM capabilities enabled,
//! memory registered, devices wired, and the vCPUs created and configured, each on a thread
//! of the vCPU manager that waits until [`Vm::run`] starts them all.
//!
//! [`Vm::run`] waits on one epoll set: the exit state's eventfd (devices and vCPUs report
//! power-off, reset, panic, crash there), the stop signals' signalfd, standard input and the
//! console sink's room event (the UART's "receive FIFO drained", or the virtio console's
//! input taken by its I/O thread) and the `--timeout` deadline. The first reason wins; then
//! the vCPUs are stopped and joined, and the devices shut down.

mod config;
pub mod error;
pub mod exit;
mod preflight;
mod run;
pub mod signals;
mod vcpus;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::serial::{SerialDevice, SerialEvents};
use devices::VmExitHandler;
use kvm_bindings::{
    kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_HALT_POLL, KVM_CAP_SPLIT_IRQCHIP,
    KVM_CAP_X2APIC_API, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi::dmar::DmarConfig;
use crate::acpi::mcfg::EcamConfig;
use crate::acpi::{self, AcpiConfig, PciHostConfig};
use crate::boot::{self, BootError, BootSetup, Initramfs, KernelImage};
use crate::console::{Console, InputSink};
use crate::cpuid::{self, CpuidOptions};
use crate::interrupt::InterruptRouter;
use crate::layout::*;
use crate::memory;
use crate::passthrough::Passthrough;
use crate::platform;
use crate::vcpu::manager::CpuManager;
use crate::vcpu::{Vcpu, VcpuContext};

pub use config::{
    ApicMode, DeviceConfig, IommuKind, PciDeviceKind, PvPanicConfig, ResetAction, SerialMode,
    VmConfig,
};
pub use error::Error;
use error::{boot_usage, cpuid_usage};
pub use exit::{ExitState, StopReason, VmOutcome};
use signals::StopSignals;

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

/// The UART's "receive FIFO drained" event, as an eventfd the event loop waits on.
pub(crate) struct SerialRoom(EventFd);

impl SerialRoom {
    fn new() -> Result<Self, Error> {
        Ok(SerialRoom(
            EventFd::new(EFD_NONBLOCK).map_err(Error::io("serial eventfd"))?,
        ))
    }

    /// The eventfd.
    pub(crate) fn event(&self) -> &EventFd {
        &self.0
    }
}

impl SerialEvents for SerialRoom {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // Runs with the UART locked; an eventfd write never blocks on it.
        if let Err(e) = self.0.write(1) {
            log::debug!("serial: room event lost: {e}");
        }
    }
}

/// What outlives one VM: the stop signals, the console and the `--timeout` deadline.
pub struct Host {
    signals: StopSignals,
    console: Option<Console>,
    deadline: Option<Instant>,
}

impl Host {
    /// Blocks the stop signals (see [`signals`]: call on the main thread before any other
    /// thread exists) and starts the `--timeout` clock. No console yet.
    pub fn new(config: &VmConfig) -> Result<Host, Error> {
        Ok(Host {
            signals: StopSignals::block().map_err(Error::io("blocking SIGINT/SIGTERM/SIGHUP"))?,
            console: None,
            deadline: config.timeout.map(|t| Instant::now() + t),
        })
    }

    /// With `--serial stdio` or `--console virtio`, takes standard input as the guest's
    /// console (a terminal goes into raw mode until the host is dropped); its bytes go to
    /// the virtio console when there is one, else to COM1 (see `Vm::console_sink`).
    pub fn open_console(&mut self, config: &VmConfig) -> Result<(), Error> {
        let wanted = config.serial == SerialMode::Stdio
            || config.console == crate::virtio::ConsoleMode::Virtio;
        if wanted && self.console.is_none() {
            self.console = Some(Console::stdin().map_err(Error::io("standard input"))?);
        }
        Ok(())
    }
}

/// A built VM: its vCPU threads created (waiting), its devices wired.
pub struct Vm {
    // Field order is drop order: the vCPU threads are joined before anything they use goes.
    cpus: CpuManager<Vcpu>,
    exit: Arc<ExitState>,
    serial: Arc<Mutex<SerialDevice>>,
    serial_room: Arc<SerialRoom>,
    router: Arc<InterruptRouter<VmFd>>,
    passthrough: Passthrough,
    virtio: crate::virtio::VirtioDevices,
    stopped: bool,
    _vm: Arc<VmFd>,
}

impl Vm {
    /// Checks `config`, builds guest memory, tables, devices and vCPUs; nothing runs yet.
    pub fn build(config: &VmConfig) -> Result<Vm, Error> {
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
        let x2apic = preflight::preflight(config, &kvm)?;
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
        let virtio =
            crate::virtio::open_all(&config.disks, &config.nets, config.console, config.rng)?;
        let mem = memory::create_guest_memory(config.memory)?;
        let apic_ids = config.topology.apic_ids();
        let tables = acpi::build(
            &AcpiConfig {
                apic_ids: apic_ids.clone(),
                ioapic_id: IOAPIC_ID,
                ioapic_addr: IOAPIC_ADDR as u32,
                ioapic_gsi_base: 0,
                lapic_addr: LAPIC_ADDR as u32,
                pm1a_event_port: ACPI_PM1A_EVT_PORT,
                pm1a_control_port: ACPI_PM1A_CNT_PORT,
                reset_port: RESET_PORT,
                reset_value: RESET_VALUE,
                serial: Some((COM1_PORT, COM1_IRQ)),
                pvpanic_port: config.pvpanic.isa.then_some(PVPANIC_PORT),
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
        let msrs = vcpus::boot_msrs(&kvm)?;
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
        if let Some(ns) = config.halt_poll_ns {
            enable_cap(&vm, KVM_CAP_HALT_POLL, u64::from(ns), "KVM_CAP_HALT_POLL")?;
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
        let exit = Arc::new(ExitState::new().map_err(Error::io("exit eventfd"))?);
        let handler: Arc<dyn VmExitHandler> = exit.clone();
        let serial_room = Arc::new(SerialRoom::new()?);
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
            Some(serial_room.clone()),
        )?;
        let serial = platform.serial.clone();

        // vCPUs: all created and configured before any runs.
        let setup = vcpus::VcpuSetup {
            template: &template,
            topology: &config.topology,
            msrs: &msrs,
            x2apic,
            mem: &mem,
            entry,
        };
        let fds = vcpus::create_vcpus(&vm, &apic_ids, &setup)?;
        // Some hosts' KVM shows the guest features --cpu-features hid: say so.
        if let Some((fd, _)) = fds.first() {
            cpuid::warn_hidden_but_reported(&config.cpu_features, fd);
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
            mem: mem.clone(),
        });

        let vcpus = fds
            .into_iter()
            .enumerate()
            .map(|(index, (fd, apic_id))| Vcpu {
                fd,
                index: index as u32,
                apic_id,
                wait_for_sipi: index != 0,
                ctx: ctx.clone(),
            })
            .collect();
        let on_panic = {
            let exit = exit.clone();
            Box::new(move |index: usize, message: &str| {
                exit.fail(format!("vCPU {index} thread panicked: {message}"))
            })
        };
        let cpus = CpuManager::spawn(vcpus, VCPU_THREAD_NAME, VCPU_STACK_SIZE, on_panic)?;
        Ok(Vm {
            cpus,
            exit,
            serial,
            serial_room,
            router: platform_router,
            passthrough: platform.passthrough,
            virtio: platform.virtio,
            stopped: false,
            _vm: vm,
        })
    }

    /// Where the console's input goes in this VM, and the eventfd that says it has room
    /// again: the virtio console's input with `--console virtio`, else COM1's receive FIFO.
    pub(crate) fn console_sink(&self) -> (&dyn InputSink, &EventFd) {
        match self.virtio.console_input() {
            Some(input) => (input.as_ref(), input.room_event()),
            None => (self.serial.as_ref(), self.serial_room.event()),
        }
    }

    /// Starts every vCPU and waits until the VM must stop (see the module documentation);
    /// then stops the vCPUs and the devices. A VMM failure while running (a vCPU thread
    /// panicked) is an error.
    pub fn run(&mut self, host: &mut Host) -> Result<VmOutcome, Error> {
        self.cpus.start()?;
        let reason = run::event_loop(self, host);
        self.shutdown();
        match reason? {
            StopReason::Outcome(outcome) => Ok(outcome),
            StopReason::Failure(message) => Err(Error::Failure(message)),
        }
    }

    /// The orderly stop: every vCPU out of the guest and joined, then the devices (their
    /// reports logged, COM1's output flushed). Idempotent.
    pub fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.cpus.stop();
        let stats = self.router.stats();
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
        for g in self.router.group_stats() {
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
        self.passthrough.report();
        self.virtio.report();
        // Disks, when there are any, are flushed here, after the last vCPU access.
        self.serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush_output();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Names of vCPU threads: `vcpu0`, `vcpu1`, ...
const VCPU_THREAD_NAME: &str = "vcpu";

/// Builds and runs the VM `config` describes until it stops and says why. With
/// `--on-reset restart`, a guest reset tears the VM down and builds it again from scratch
/// (same configuration); the console, the stop signals and the `--timeout` deadline carry
/// over.
///
/// Call on the main thread before it has created any other thread: the stop signals are
/// blocked here for the whole process (see [`signals`]).
pub fn run(config: &VmConfig) -> Result<VmOutcome, Error> {
    let mut host = Host::new(config)?;
    let mut vm = Vm::build(config)?;
    // After the first build: bad input is refused before the terminal changes mode.
    host.open_console(config)?;
    let mut boots = 1u64;
    loop {
        let outcome = vm.run(&mut host)?;
        if outcome != VmOutcome::Reset || config.on_reset != ResetAction::Restart {
            return Ok(outcome);
        }
        drop(vm);
        boots += 1;
        log::info!("guest reset: building the VM again (boot {boots})");
        vm = Vm::build(config)?;
    }
}
