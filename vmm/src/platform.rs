//! The platform's devices and buses: COM1, the userspace IOAPIC, power and reset controls,
//! the debug-exit port, PCI (host bridge, config mechanisms, ECAM, BAR windows and the
//! user's devices) and, with `--iommu intel`, the VT-d unit or, with `--iommu amd`, the
//! AMD-Vi unit (its register window and its PCI function), all wired to one interrupt
//! router.
//!
//! Under AMD-Vi the IOAPIC's messages carry requester ID 00:14.0
//! ([`AMDVI_IOAPIC_SOURCE_ID`]), the device ID the IVRS special entry names: Linux's AMD
//! IOMMU driver disables interrupt remapping unless some IOAPIC has that southbridge device
//! ID (`check_ioapic_information`, `IOAPIC_SB_DEVID`). It looks for no PCI function there
//! (only fault reports look a device ID up), so none is placed; device 0x14 is reserved all
//! the same ([`RESERVED_PCI_DEVICES`]) so no `--device` shares the IOAPIC's interrupt table.

use std::io::Write;
use std::sync::{Arc, Mutex, Weak};

use devices::pci::PvPanicPci;
use devices::pci::{
    BarSpace, EduDevice, PciAddress, PciBarWindow, PciConfigAddressPort, PciConfigDataPort,
    PciEcam, PciRoot, PciWindow, SharedPciFunction,
};
use devices::serial::{IoApicPinTrigger, SerialDevice, SerialEvents};
use devices::{AcpiPm1, DebugExit, IoApic, PvPanicIsa, ResetControl, VmExitHandler};
use kvm_ioctls::VmFd;
use virtual_iommu::amd::pci::ADDRESS_BITS as AMDVI_ADDRESS_BITS;
use virtual_iommu::amd::{AmdViConfig, AmdViUnit};
use virtual_iommu::{SourceId, VtdConfig};
use vm_memory::GuestMemoryMmap;

use crate::acpi::ivrs::IvrsConfig;
use crate::acpi::IntxRoute;
use crate::bus::Bus;
use crate::interrupt::{
    DeviceVectors, HostPosting, InterruptRouter, IoApicPins, TranslationPolicy,
};
use crate::iommu::amd::UnremappedMsi;
use crate::iommu::dma::IommuDma;
use crate::iommu::shadow::DmaShadows;
use crate::iommu::{AmdIommuFunction, AmdMmio, GuestRam, Iommu, VtdMmio};
use crate::layout::*;
use crate::passthrough::events::PassthroughEvents;
use crate::passthrough::slots::BarMapper;
use crate::passthrough::{AttachContext, Opened, Passthrough};
use crate::vm::{DeviceConfig, Error, IommuKind, PciDeviceKind, VmConfig};

/// The IOAPIC's requester ID: bus 0xff, device 0, function 0, as the DMAR names it (VT-d,
/// and without an IOMMU, where nothing checks it).
pub const IOAPIC_SOURCE_ID: (u8, u8, u8) = (0xff, 0, 0);
/// The IOAPIC's requester ID under AMD-Vi: 00:14.0, as the IVRS special entry names it.
pub const AMDVI_IOAPIC_SOURCE_ID: (u8, u8, u8) = (0, AMDVI_IOAPIC_PCI_DEVICE, 0);
/// The AMD-Vi unit's own PCI function.
pub const AMDVI_BDF: (u8, u8, u8) = (0, AMDVI_PCI_DEVICE, 0);

/// The requester ID of the IOAPIC's messages with `iommu`.
pub fn ioapic_source_id(iommu: IommuKind) -> (u8, u8, u8) {
    match iommu {
        IommuKind::None | IommuKind::Intel => IOAPIC_SOURCE_ID,
        IommuKind::Amd => AMDVI_IOAPIC_SOURCE_ID,
    }
}

/// The features of the AMD-Vi unit (the model's defaults: XT, GA and guest virtual APIC).
pub fn amd_vi_config() -> AmdViConfig {
    AmdViConfig::default()
}

/// What the IVRS says about the AMD-Vi unit [`build`] places: its function, capability
/// offset, window and extended features, the bus it covers and the IOAPIC's device ID.
pub fn amd_ivrs_config() -> Result<IvrsConfig, Error> {
    // The capability offset is the one the function really gets: ask a function built
    // exactly like the platform's (its MSI sink is never used).
    let probe = amd_iommu_function(Weak::<InterruptRouter<VmFd>>::new())?;
    Ok(IvrsConfig {
        iommu_bdf: AMDVI_BDF,
        capability_offset: probe.capability_offset(),
        register_base: AMDVI_ADDR,
        efr: AmdViUnit::new(amd_vi_config()).extended_features(),
        address_bits: u8::try_from(AMDVI_ADDRESS_BITS)
            .map_err(|_| Error::Platform("AMD-Vi address width".into()))?,
        host_translation_disabled: true,
        bus: AMDVI_BDF.0,
        ioapic_id: IOAPIC_ID,
        ioapic_bdf: AMDVI_IOAPIC_SOURCE_ID,
    })
}

/// The AMD-Vi unit's PCI function, its MSI sent through `router` unremapped.
fn amd_iommu_function<B: crate::interrupt::InterruptBackend + 'static>(
    router: Weak<InterruptRouter<B>>,
) -> Result<AmdIommuFunction, Error> {
    AmdIommuFunction::new(
        AMDVI_ADDR,
        AMDVI_BDF.0,
        Arc::new(UnremappedMsi::new(router)),
    )
    .map_err(pci_error)
}

/// Places the AMD-Vi function on bus 0 and makes the router signal its MSI.
fn add_amd_iommu_function<B: crate::interrupt::InterruptBackend + 'static>(
    root: &mut PciRoot,
    router: &Arc<InterruptRouter<B>>,
) -> Result<(), Error> {
    let (bus, device, function) = AMDVI_BDF;
    let address = PciAddress::new(bus, device, function).map_err(pci_error)?;
    let unit = Arc::new(Mutex::new(amd_iommu_function(Arc::downgrade(router))?));
    let target = Arc::downgrade(&unit);
    // Runs without the router's lock; the function's MSI then calls the router.
    router.set_own_msi(Arc::new(move || {
        if let Some(f) = target.upgrade() {
            f.lock().unwrap_or_else(|p| p.into_inner()).signal();
        }
    }));
    let shared: SharedPciFunction = unit;
    root.add_function(address, shared).map_err(pci_error)?;
    log::info!("PCI {address}: AMD-Vi IOMMU");
    Ok(())
}

/// Vectors of the MSI-X test device.
const EDU_MSIX_VECTORS: u32 = 256;
/// Vectors of the MSI test device.
const EDU_MSI_VECTORS: u32 = 1;

/// The wired platform.
pub struct Platform {
    /// Port-I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// The userspace IOAPIC.
    pub ioapic: Arc<Mutex<IoApic>>,
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The interrupt router.
    pub router: Arc<InterruptRouter<VmFd>>,
    /// Passed-through devices.
    pub passthrough: Passthrough,
    /// Virtio devices.
    pub virtio: crate::virtio::VirtioDevices,
}

fn pci_error(e: devices::pci::PciError) -> Error {
    Error::Platform(format!("PCI: {e}"))
}

/// Passed-through devices, opened before the VM, and where they go.
pub struct PassthroughPlan {
    /// The opened devices, in `--device` order.
    pub opened: Vec<Opened>,
    /// Their INTx routing (as the `_PRT` says).
    pub intx: Vec<IntxRoute>,
    /// The first KVM memory slot free for BAR mappings.
    pub first_slot: u32,
    /// Virtio devices, opened before the VM, placed after the `--device`s.
    pub virtio: Vec<crate::virtio::Opened>,
}

/// What placing PCI devices needs.
struct PciSetup<'a> {
    router: &'a Arc<InterruptRouter<VmFd>>,
    mem: &'a GuestMemoryMmap,
    mapper: &'a Arc<BarMapper<VmFd>>,
    passthrough: &'a mut Passthrough,
    intx: &'a [IntxRoute],
    virtio: &'a mut crate::virtio::VirtioDevices,
    vm: &'a Arc<VmFd>,
    /// Emulated devices' DMA path (the VT-d unit's translation, or identity).
    dma: Arc<dyn devices::dma::DmaTranslator>,
    /// The DMA path virtio devices offer as `VIRTIO_F_ACCESS_PLATFORM`: the VT-d unit's
    /// translation when there is one that remaps DMA, else none (not offered).
    virtio_dma: Option<Arc<dyn devices::dma::DmaTranslator>>,
}

fn add_pci_devices(
    root: &mut PciRoot,
    setup: PciSetup<'_>,
    devices: &[DeviceConfig],
    opened: Vec<Opened>,
    pvpanic: Option<Arc<dyn VmExitHandler>>,
) -> Result<(), Error> {
    let mut opened = opened.into_iter();
    for (index, device) in devices.iter().enumerate() {
        let dev = crate::passthrough::device_number(index).ok_or_else(|| {
            Error::usage(
                "--device",
                format!(
                    "no free PCI device slot on bus 0 (at most {} devices)",
                    usize::from(devices::pci::PCI_DEVICES_PER_BUS) - 1 - RESERVED_PCI_DEVICES.len()
                ),
            )
        })?;
        let address = PciAddress::new(0, dev, 0).map_err(pci_error)?;
        let kind = match device {
            DeviceConfig::Emulated(kind) => *kind,
            DeviceConfig::Passthrough(_) => {
                let o = opened
                    .next()
                    .ok_or_else(|| Error::Platform("passthrough device not opened".into()))?;
                let events = setup.passthrough.events().clone();
                let mut ctx = AttachContext {
                    router: setup.router,
                    root,
                    mem: setup.mem,
                    mapper: setup.mapper,
                    events: &events,
                };
                let pin = setup.intx.iter().find(|r| r.device == dev).map(|r| r.gsi);
                setup.passthrough.attach(&mut ctx, o, address, pin)?;
                continue;
            }
        };
        let vectors = match kind {
            PciDeviceKind::Edu => EDU_MSI_VECTORS,
            PciDeviceKind::EduMsix => EDU_MSIX_VECTORS,
        };
        let sink = Arc::new(
            DeviceVectors::emulated(setup.router.clone(), address.source_id(), vectors)
                .map_err(|e| Error::usage("--device", e.to_string()))?,
        );
        let dma = devices::dma::DmaSpace::new(
            setup.dma.clone(),
            Arc::new(GuestRam(setup.mem.clone())),
            address.source_id(),
        );
        let function: SharedPciFunction = match kind {
            PciDeviceKind::Edu => Arc::new(Mutex::new(
                EduDevice::new(sink).map_err(pci_error)?.with_dma(dma),
            )),
            PciDeviceKind::EduMsix => Arc::new(Mutex::new(
                EduDevice::new_msix(sink).map_err(pci_error)?.with_dma(dma),
            )),
        };
        root.add_function(address, function).map_err(pci_error)?;
        log::info!("PCI {address}: {kind:?}");
    }
    // The PCI pvpanic function (when asked for) comes right after the --device list,
    // then the virtio devices.
    let mut next = devices.len();
    if let Some(handler) = pvpanic {
        add_pvpanic_pci(root, next, handler)?;
        next += 1;
    }
    setup.virtio.attach(
        root,
        setup.router,
        setup.vm,
        setup.mem,
        next,
        setup.virtio_dma,
    )?;
    root.assign_bars(PciWindow::MMIO32, Some(PciWindow::IO))
        .map_err(pci_error)?;
    Ok(())
}

/// Places the PCI pvpanic function at the `index`-th bus-0 device number (the one after the
/// `--device` list).
fn add_pvpanic_pci(
    root: &mut PciRoot,
    index: usize,
    handler: Arc<dyn VmExitHandler>,
) -> Result<(), Error> {
    let dev = crate::passthrough::device_number(index).ok_or_else(|| {
        Error::usage(
            "--pvpanic",
            "no free PCI device slot on bus 0 for the pvpanic function (use fewer --device)",
        )
    })?;
    let address = PciAddress::new(0, dev, 0).map_err(pci_error)?;
    let function: SharedPciFunction = Arc::new(Mutex::new(
        PvPanicPci::new(handler, format!("PCI {address}")).map_err(pci_error)?,
    ));
    root.add_function(address, function).map_err(pci_error)?;
    log::info!("PCI {address}: pvpanic");
    Ok(())
}

/// Whether the host can post irqfd vectors (only asked when something is passed through).
fn host_posting(opened: &[Opened]) -> HostPosting {
    if opened.is_empty() {
        return HostPosting::default();
    }
    let h = vfio::host::host_posting(std::path::Path::new("/sys"));
    log::info!(
        "host posted interrupts: {} ({})",
        if h.available {
            "available"
        } else {
            "unavailable"
        },
        h.reason
    );
    HostPosting {
        available: h.available,
        reason: h.reason,
    }
}

/// Builds every device and both buses. `serial_events`, when given, hears COM1's UART
/// events (the console waits for its receive FIFO to drain).
pub fn build(
    vm: Arc<VmFd>,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    output: Box<dyn Write + Send>,
    handler: Arc<dyn VmExitHandler>,
    passthrough_plan: PassthroughPlan,
    serial_events: Option<Arc<dyn SerialEvents + Send + Sync>>,
) -> Result<Platform, Error> {
    let PassthroughPlan {
        opened,
        intx,
        first_slot,
        virtio,
    } = passthrough_plan;
    let mut virtio = crate::virtio::VirtioDevices::new(virtio);
    let policy = TranslationPolicy {
        ext_dest_id: config.ext_dest_id,
    };
    let iommu = match config.iommu {
        IommuKind::None => None,
        IommuKind::Intel => Some(Arc::new(Iommu::new(VtdConfig::default(), mem.clone()))),
        IommuKind::Amd => Some(Arc::new(Iommu::new_amd(amd_vi_config(), mem.clone()))),
    };
    let (b, d, f) = ioapic_source_id(config.iommu);
    let router = InterruptRouter::new(
        vm.clone(),
        policy,
        iommu.clone(),
        IOAPIC_PINS as u32,
        SourceId::new(b, d, f),
        host_posting(&opened),
    );
    // Emulated devices' DMA goes through the VT-d unit; passed-through devices' host
    // mappings shadow its DMA remapping.
    let (dma, shadows): (Arc<dyn devices::dma::DmaTranslator>, _) = match (&iommu, config.iommu) {
        (Some(unit), IommuKind::Intel) => (
            Arc::new(IommuDma::new(unit.clone(), Arc::downgrade(&router))),
            Some(Arc::new(DmaShadows::new(crate::passthrough::dma_regions(
                mem,
            )))),
        ),
        _ => (Arc::new(devices::dma::IdentityDma), None),
    };
    let pins = Arc::new(IoApicPins::new(router.clone()));
    let ioapic = Arc::new(Mutex::new(IoApic::new(IOAPIC_ID, pins)));
    let trigger = IoApicPinTrigger::new(ioapic.clone(), usize::from(COM1_IRQ));
    let serial = Arc::new(Mutex::new(match serial_events {
        Some(events) => SerialDevice::with_events(output, trigger, events),
        None => SerialDevice::new(output, trigger),
    }));

    let mut pio = Bus::new("pio");
    let mut mmio = Bus::new("mmio");
    pio.insert(u64::from(COM1_PORT), COM1_PORT_COUNT, serial.clone())?;
    pio.insert(
        u64::from(DEBUG_EXIT_PORT),
        DEBUG_EXIT_PORT_COUNT,
        Arc::new(Mutex::new(DebugExit::new(handler.clone()))),
    )?;
    pio.insert(
        u64::from(ACPI_PM_PORT),
        ACPI_PM_PORT_COUNT,
        Arc::new(Mutex::new(AcpiPm1::new(handler.clone()))),
    )?;
    pio.insert(
        u64::from(RESET_PORT),
        1,
        Arc::new(Mutex::new(ResetControl::new(handler.clone()))),
    )?;
    if config.pvpanic.isa {
        pio.insert(
            u64::from(PVPANIC_PORT),
            PVPANIC_PORT_COUNT,
            Arc::new(Mutex::new(PvPanicIsa::new(handler.clone()))),
        )?;
    }
    mmio.insert(IOAPIC_ADDR, IOAPIC_SIZE, ioapic.clone())?;
    if let Some(iommu) = iommu {
        let router = Arc::downgrade(&router);
        match config.iommu {
            IommuKind::Amd => mmio.insert(
                AMDVI_ADDR,
                AMDVI_SIZE,
                Arc::new(Mutex::new(AmdMmio::new(iommu, router))),
            )?,
            IommuKind::Intel | IommuKind::None => {
                let mut window = VtdMmio::new(iommu, router);
                if let Some(s) = &shadows {
                    window = window.with_shadows(s.clone());
                }
                mmio.insert(VTD_ADDR, VTD_SIZE, Arc::new(Mutex::new(window)))?
            }
        }
    }

    let mapper = Arc::new(BarMapper::new(vm.clone(), first_slot, PciWindow::MMIO32));
    let mut passthrough = Passthrough::new(PassthroughEvents::new(ioapic.clone(), mapper.clone()));
    if let Some(s) = shadows {
        passthrough.set_dma_shadows(s);
    }
    let mut root = PciRoot::new();
    root.set_listener(mapper.clone());
    if config.iommu == IommuKind::Amd {
        add_amd_iommu_function(&mut root, &router)?;
    }
    add_pci_devices(
        &mut root,
        PciSetup {
            router: &router,
            mem,
            mapper: &mapper,
            passthrough: &mut passthrough,
            intx: &intx,
            virtio: &mut virtio,
            vm: &vm,
            virtio_dma: (config.iommu == IommuKind::Intel).then(|| dma.clone()),
            dma,
        },
        &config.devices,
        opened,
        config.pvpanic.pci.then(|| handler.clone()),
    )?;
    let root = Arc::new(Mutex::new(root));
    let address_port = PciConfigAddressPort::new();
    let data_port = PciConfigDataPort::new(root.clone(), &address_port);
    pio.insert(
        PCI_CONFIG_ADDRESS_PORT,
        1,
        Arc::new(Mutex::new(address_port)),
    )?;
    pio.insert(
        PCI_CONFIG_DATA_PORT,
        PCI_CONFIG_DATA_PORT_COUNT,
        Arc::new(Mutex::new(data_port)),
    )?;
    mmio.insert(
        PCIE_ECAM_START,
        PCIE_ECAM_SIZE,
        Arc::new(Mutex::new(PciEcam::new(root.clone()))),
    )?;
    mmio.insert(
        PciWindow::MMIO32.base,
        PciWindow::MMIO32.size,
        Arc::new(Mutex::new(PciBarWindow::new(
            root.clone(),
            BarSpace::Memory,
            PciWindow::MMIO32.base,
        ))),
    )?;
    let io = PciWindow::IO;
    pio.insert(
        io.base,
        io.size,
        Arc::new(Mutex::new(PciBarWindow::new(root, BarSpace::Io, io.base))),
    )?;
    Ok(Platform {
        pio,
        mmio,
        ioapic,
        serial,
        router,
        passthrough,
        virtio,
    })
}

#[cfg(test)]
mod tests;
