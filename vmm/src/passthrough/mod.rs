//! Device passthrough in the VM: opening the devices the user named (before any KVM
//! object exists, so a bad `--device` starts nothing), then giving each its vectors (irqfd
//! sources of the router), its INTx pin, DMA access to guest RAM, a place on PCI bus 0 and
//! its BAR areas as memory slots. Under VT-d its DMA mappings then follow the guest's DMA
//! remapping ([`crate::iommu::shadow`]).

pub mod events;
pub mod slots;

use std::fmt;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use devices::pci::{PciAddress, PciRoot, SharedPciFunction};
use kvm_ioctls::VmFd;
pub use vfio::function::plan::MsixPolicy;
use vfio::function::{DirectTable, VectorKind};
use vfio::user::VfioUserDevice;
use vfio::{DmaRegion, Interrupts, KernelVfio, VectorSet, VfioBackend, VfioPciFunction};
use virtual_iommu::MsiMessage;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::acpi::IntxRoute;
use crate::interrupt::{DeviceVectors, InterruptRouter, IrqfdMode, VectorOwner};
use crate::iommu::shadow::{DmaShadows, DmaTarget};
use crate::vm::Error;
use events::PassthroughEvents;
use slots::{BarMapper, SlotArea};

/// How long a vfio-user server may take to answer one request before the device is
/// declared gone.
pub const VFIO_USER_TIMEOUT: Duration = Duration::from_secs(2);
/// IOAPIC pins given to passed-through devices' INTx (PCI's conventional 16..23).
pub const INTX_PINS: std::ops::Range<u32> = 16..24;

/// Where a passed-through device comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassthroughSource {
    /// Kernel VFIO: the device's sysfs path.
    Kernel(PathBuf),
    /// vfio-user: the server's socket.
    User(PathBuf),
}

/// One `--device vfio,...` or `--device vfio-user,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassthroughConfig {
    /// The device.
    pub source: PassthroughSource,
    /// Where its MSI-X table goes.
    pub msix: MsixPolicy,
    /// Bind its vectors to KVM (irqfd); off: the VMM delivers every interrupt (slower; for
    /// comparisons).
    pub irqfd: bool,
}

impl fmt::Display for PassthroughConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            PassthroughSource::Kernel(p) => {
                let name = p.file_name().unwrap_or(p.as_os_str()).to_string_lossy();
                write!(f, "vfio {name}")
            }
            PassthroughSource::User(p) => write!(f, "vfio-user {}", p.display()),
        }
    }
}

/// A device opened before the VM exists.
pub struct Opened {
    name: String,
    function: VfioPciFunction,
    irqfd: bool,
}

/// Opens every passed-through device; any failure is the user's to fix (`--device`).
pub fn open_all(configs: &[&PassthroughConfig]) -> Result<Vec<Opened>, Error> {
    let mut kernel: Option<Arc<KernelVfio>> = None;
    let mut out = Vec::new();
    for cfg in configs {
        let name = cfg.to_string();
        let usage = |what: String| Error::usage("--device", format!("{name}: {what}"));
        let backend: Box<dyn VfioBackend> = match &cfg.source {
            PassthroughSource::User(socket) => Box::new(
                VfioUserDevice::connect(socket, VFIO_USER_TIMEOUT)
                    .map_err(|e| usage(e.to_string()))?,
            ),
            PassthroughSource::Kernel(path) => {
                let host = kernel.get_or_insert_with(KernelVfio::new);
                let path = path.to_string_lossy();
                Box::new(host.open(&path).map_err(|e| usage(e.to_string()))?)
            }
        };
        let function = VfioPciFunction::open(backend, name.clone(), cfg.msix)
            .map_err(|e| usage(e.to_string()))?;
        out.push(Opened {
            name,
            function,
            irqfd: cfg.irqfd,
        });
    }
    Ok(out)
}

/// The PCI device number of the `index`-th `--device`: 1, 2, ... in order (the host bridge
/// is device 0), skipping the numbers the platform reserves
/// ([`crate::layout::RESERVED_PCI_DEVICES`]: the AMD-Vi function and its IOAPIC's requester
/// ID).
pub fn device_number(index: usize) -> Option<u8> {
    (1..devices::pci::PCI_DEVICES_PER_BUS)
        .filter(|d| !crate::layout::RESERVED_PCI_DEVICES.contains(d))
        .nth(index)
}

/// The IOAPIC inputs passed-through devices' INTx pins get, in `--device` order: one of
/// 16..23 each, while they last. Both the `_PRT` and the wiring follow it.
pub fn intx_plan(devices: &[crate::vm::DeviceConfig], opened: &[Opened]) -> Vec<IntxRoute> {
    let mut opened = opened.iter();
    let mut pins = INTX_PINS;
    let mut plan = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        if !matches!(d, crate::vm::DeviceConfig::Passthrough(_)) {
            continue;
        }
        let Some(o) = opened.next() else { break };
        let Some(device) = device_number(i) else {
            break;
        };
        let pin = o.function.layout_intx_pin();
        if let Some(pin) = pin {
            match pins.next() {
                Some(gsi) => plan.push(IntxRoute {
                    device,
                    pin: pin - 1,
                    gsi,
                }),
                None => log::warn!(
                    "{}: no IOAPIC input left for its INTx; it gets none",
                    o.name
                ),
            }
        }
    }
    plan
}

/// What the router's watcher calls back into: the function's masked-fire path and, for
/// `msix=direct`, its table.
struct Owner {
    function: Weak<Mutex<VfioPciFunction>>,
    kind: VectorKind,
    direct: Option<DirectTable>,
}

impl VectorOwner for Owner {
    fn masked_fire(&self, index: u16) {
        if let Some(f) = self.function.upgrade() {
            f.lock()
                .unwrap_or_else(|p| p.into_inner())
                .masked_fire(self.kind, index);
        }
    }

    fn read_message(&self, index: u16) -> Option<MsiMessage> {
        self.direct.as_ref().and_then(|d| d.read_message(index))
    }
}

/// A function's DMA mappings as a shadow target.
struct FunctionDma(Weak<Mutex<VfioPciFunction>>);

impl DmaTarget for FunctionDma {
    fn map(&self, region: &DmaRegion, read: bool, write: bool) -> Result<(), String> {
        let f = self.0.upgrade().ok_or("device gone")?;
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        f.dma_map_with(region, read, write)
            .map_err(|e| e.to_string())
    }

    fn unmap(&self, iova: u64, size: u64) -> Result<(), String> {
        let f = self.0.upgrade().ok_or("device gone")?;
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        f.dma_unmap(iova, size).map_err(|e| e.to_string())
    }
}

/// One attached device.
struct Attached {
    name: String,
    address: PciAddress,
    function: Arc<Mutex<VfioPciFunction>>,
    /// Kept alive: the router holds them weakly.
    _owners: Vec<Arc<dyn VectorOwner>>,
}

/// The VM's passed-through devices.
pub struct Passthrough {
    devices: Vec<Attached>,
    events: Arc<PassthroughEvents>,
    shadows: Option<Arc<DmaShadows>>,
}

/// What attaching needs from the platform.
pub struct AttachContext<'a> {
    /// The interrupt router.
    pub router: &'a Arc<InterruptRouter<VmFd>>,
    /// PCI bus 0.
    pub root: &'a mut PciRoot,
    /// Guest RAM (DMA-mapped for each device).
    pub mem: &'a GuestMemoryMmap,
    /// BAR slots.
    pub mapper: &'a Arc<BarMapper<VmFd>>,
    /// INTx and hang-up events.
    pub events: &'a Arc<PassthroughEvents>,
}

/// Guest RAM as DMA regions (I/O virtual address = guest-physical address).
pub fn dma_regions(mem: &GuestMemoryMmap) -> Vec<DmaRegion> {
    mem.iter()
        .filter_map(|r| {
            let fo = r.file_offset()?;
            Some(DmaRegion {
                iova: r.start_addr().0,
                size: r.len(),
                host_addr: r.as_ptr() as u64,
                fd: fo.file().as_raw_fd(),
                fd_offset: fo.start(),
            })
        })
        .collect()
}

fn platform(e: impl fmt::Display) -> Error {
    Error::Platform(format!("passthrough: {e}"))
}

impl Passthrough {
    /// An empty set.
    pub fn new(events: Arc<PassthroughEvents>) -> Self {
        Passthrough {
            devices: Vec::new(),
            events,
            shadows: None,
        }
    }

    /// Devices attached from now on have their DMA mappings follow the guest's VT-d DMA
    /// remapping through `shadows`.
    pub fn set_dma_shadows(&mut self, shadows: Arc<DmaShadows>) {
        self.shadows = Some(shadows);
    }

    /// Attaches `opened` at `address` on bus 0.
    pub fn attach(
        &mut self,
        ctx: &mut AttachContext<'_>,
        opened: Opened,
        address: PciAddress,
        intx_pin: Option<u32>,
    ) -> Result<(), Error> {
        let Opened {
            name,
            mut function,
            irqfd,
        } = opened;
        function
            .dma_map(&dma_regions(ctx.mem))
            .map_err(|e| platform(format!("{name}: DMA-mapping guest RAM: {e}")))?;
        let needs = function.needs();
        let direct = function.direct_table();
        let areas: Vec<SlotArea> = function
            .mapped_areas()
            .iter()
            .map(|m| SlotArea {
                area: m.area,
                host_addr: m.mmap.host_addr(),
            })
            .collect();
        let hangup = function.hangup_fd();
        let function = Arc::new(Mutex::new(function));
        let sid = address.source_id();
        if let Some(shadows) = &self.shadows {
            shadows.add(&name, sid, Arc::new(FunctionDma(Arc::downgrade(&function))));
        }
        let mut owners: Vec<Arc<dyn VectorOwner>> = Vec::new();
        let mut vectors = |kind: VectorKind, count: u16, direct: Option<DirectTable>| {
            if count == 0 {
                return Ok::<_, Error>(None);
            }
            let owner: Arc<dyn VectorOwner> = Arc::new(Owner {
                function: Arc::downgrade(&function),
                kind,
                direct: direct.clone(),
            });
            let label = match kind {
                VectorKind::Msix => format!("{name} MSI-X"),
                VectorKind::Msi => format!("{name} MSI"),
            };
            let (handles, fds) = ctx
                .router
                .add_irqfd_vectors(
                    &label,
                    sid,
                    count,
                    Arc::downgrade(&owner),
                    IrqfdMode {
                        direct: direct.is_some(),
                        vmm_only: !irqfd,
                    },
                )
                .map_err(|e| Error::usage("--device", format!("{name}: {e}")))?;
            owners.push(owner);
            Ok(Some(VectorSet {
                sink: Arc::new(DeviceVectors::irqfd(ctx.router.clone(), &label, handles)),
                fds,
            }))
        };
        let msix = vectors(VectorKind::Msix, needs.msix, direct)?;
        let msi = vectors(VectorKind::Msi, needs.msi, None)?;
        let intx_pin = intx_pin.filter(|_| needs.intx);
        let intx = match intx_pin {
            Some(pin) => {
                let fd = Arc::new(
                    vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
                        .map_err(platform)?,
                );
                self.events
                    .add_intx(pin, fd.clone(), Arc::downgrade(&function))
                    .map_err(platform)?;
                Some(fd)
            }
            None => None,
        };
        {
            let mut f = function.lock().unwrap_or_else(|p| p.into_inner());
            f.connect(Interrupts { msix, msi, intx });
            if let Some(pin) = intx_pin {
                // As firmware would: the interrupt line register names the GSI.
                use devices::pci::PciFunction;
                f.config_write(devices::pci::config::PCI_INTERRUPT_LINE, &[pin as u8]);
            }
        }
        ctx.mapper.add_device(address, &name, areas);
        let shared: SharedPciFunction = function.clone();
        ctx.root
            .add_function(address, shared)
            .map_err(|e| platform(format!("{name}: {e}")))?;
        if let Some(fd) = hangup {
            self.events
                .add_hangup(fd, &name, address)
                .map_err(platform)?;
        }
        log::info!(
            "PCI {address}: {name}{}",
            match intx_pin {
                Some(p) => format!(", INTx on IOAPIC pin {p}"),
                None => String::new(),
            }
        );
        self.devices.push(Attached {
            name,
            address,
            function,
            _owners: owners,
        });
        Ok(())
    }

    /// The INTx and hang-up event server (the EOI path uses it).
    pub fn events(&self) -> &Arc<PassthroughEvents> {
        &self.events
    }

    /// Logs, per device, its trapped BAR accesses by page (what relocation saves), and
    /// what shadowing the guest's DMA remapping cost.
    pub fn report(&self) {
        if let Some(s) = self.shadows.as_ref().filter(|s| !s.is_empty()) {
            let st = s.stats();
            log::info!(
                "passthrough DMA shadowing: {} batches, {} maps, {} unmaps, {} failed, {} whole-table walks",
                st.batches,
                st.maps,
                st.unmaps,
                st.failures,
                st.full_walks
            );
        }
        for d in &self.devices {
            let f = d.function.lock().unwrap_or_else(|p| p.into_inner());
            let traps: Vec<String> = f
                .trapped_accesses()
                .iter()
                .map(|((bar, page), n)| format!("BAR{bar}@{page:#x}={n}"))
                .collect();
            log::info!(
                "passthrough {} at {}: trapped BAR accesses: {}",
                d.name,
                d.address,
                if traps.is_empty() {
                    "none".to_string()
                } else {
                    traps.join(" ")
                }
            );
        }
    }
}
