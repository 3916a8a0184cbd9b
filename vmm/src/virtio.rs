//! Virtio devices in the VM: opening what `--disk`, `--net`, `--console virtio` and `--rng` name
//! (before any KVM object exists, so a bad image or tap starts nothing), then placing each on PCI
//! bus 0 after the `--device`s with its MSI-X vectors as irqfd sources of the interrupt
//! router (so queue interrupts follow the guest's interrupt remapping and can be posted by
//! the host) and its queue notifications as KVM ioeventfds.
//!
//! The virtio console's input is a [`virtio::ConsoleInput`] the VM keeps
//! ([`VirtioDevices::console_input`]): irvmm's console (`crate::console`) owns standard
//! input and pushes into it from the VM's event loop; the device's I/O thread takes the
//! bytes into the driver's buffers.
//!
//! With a VT-d unit that remaps DMA (`--iommu intel`), each device offers
//! `VIRTIO_F_ACCESS_PLATFORM` with the unit's translator and its function's requester ID:
//! a driver that accepts it gives the device I/O virtual addresses, translated through the
//! unit's IOTLB at every access (see `virtio::memory`); faults are recorded and signalled
//! by the unit as for the emulated `edu`'s DMA.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use devices::dma::DmaTranslator;
use devices::pci::{PciAddress, PciRoot, SharedPciFunction};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio::{
    Block, Console, ConsoleInput, DeviceSpec, DiskConfig, DmaView, IoEventRegistrar, Net,
    NetConfig, QueueHandler, Rng, VirtioPciDevice,
};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::{DeviceVectors, InterruptRouter, IrqfdMode, VectorOwner};
use crate::vm::Error;

/// What `--console` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConsoleMode {
    /// No virtio console.
    #[default]
    Off,
    /// A virtio console (`hvc0`): output to standard output, input from irvmm's console
    /// (standard input, see `crate::console`).
    Virtio,
}

/// A device opened before the VM exists.
pub struct Opened {
    spec: DeviceSpec,
    handler: Box<dyn QueueHandler>,
    /// The flag it came from (for error lines).
    flag: &'static str,
    /// The virtio console's input.
    input: Option<Arc<ConsoleInput>>,
}

/// Opens every virtio device the configuration asks for, in placement order: disks,
/// network devices, console, rng. Failures are the user's to fix (exit status 2).
pub fn open_all(
    disks: &[DiskConfig],
    nets: &[NetConfig],
    console: ConsoleMode,
    rng: bool,
) -> Result<Vec<Opened>, Error> {
    let mut out = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let block = Block::open(disk, &format!("blk{i}"))
            .map_err(|e| Error::usage("--disk", e.to_string()))?;
        out.push(Opened {
            spec: block.spec(),
            handler: block.into_handler(),
            flag: "--disk",
            input: None,
        });
    }
    for (i, net) in nets.iter().enumerate() {
        let n =
            Net::open(net, &format!("net{i}")).map_err(|e| Error::usage("--net", e.to_string()))?;
        out.push(Opened {
            spec: n.spec(),
            handler: n.into_handler(),
            flag: "--net",
            input: None,
        });
    }
    if console == ConsoleMode::Virtio {
        let input = Arc::new(
            ConsoleInput::new(virtio::console::INPUT_CAPACITY)
                .map_err(Error::io("virtio console input eventfd"))?,
        );
        let c = Console::new(Box::new(std::io::stdout()), Some(input.clone()));
        out.push(Opened {
            spec: c.spec(),
            handler: c.into_handler(),
            flag: "--console",
            input: Some(input),
        });
    }
    if rng {
        let r = Rng::open()
            .map_err(|e| Error::usage("--rng", format!("{}: {e}", virtio::rng::RNG_SOURCE)))?;
        out.push(Opened {
            spec: r.spec(),
            handler: r.into_handler(),
            flag: "--rng",
            input: None,
        });
    }
    Ok(out)
}

/// KVM_IOEVENTFD for queue notifications (any access size, no data match).
struct KvmIoEvents(Arc<VmFd>);

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        self.0
            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn unregister(&self, addr: u64, fd: &EventFd) -> std::io::Result<()> {
        self.0
            .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// The router's way back into a device: a masked vector fired. Set once the device exists
/// (its vectors, which name the owner, are made first).
struct Owner(OnceLock<Weak<Mutex<VirtioPciDevice>>>);

impl VectorOwner for Owner {
    fn masked_fire(&self, index: u16) {
        if let Some(d) = self.0.get().and_then(Weak::upgrade) {
            d.lock()
                .unwrap_or_else(|p| p.into_inner())
                .masked_fire(index);
        }
    }
}

/// One placed device.
struct Attached {
    address: PciAddress,
    device: Arc<Mutex<VirtioPciDevice>>,
    /// Kept alive: the router holds it weakly.
    _owner: Arc<dyn VectorOwner>,
}

/// The VM's virtio devices: opened, then attached.
#[derive(Default)]
pub struct VirtioDevices {
    pending: Vec<Opened>,
    attached: Vec<Attached>,
    console_input: Option<Arc<ConsoleInput>>,
}

impl VirtioDevices {
    /// Devices to attach.
    pub fn new(opened: Vec<Opened>) -> Self {
        let console_input = opened.iter().find_map(|o| o.input.clone());
        VirtioDevices {
            pending: opened,
            attached: Vec::new(),
            console_input,
        }
    }

    /// The virtio console's input (`--console virtio`), where the console's bytes go.
    pub fn console_input(&self) -> Option<&Arc<ConsoleInput>> {
        self.console_input.as_ref()
    }

    /// Places the opened devices on bus 0 from the `first_index`-th device number on (see
    /// [`crate::passthrough::device_number`]; `--device`s come first). With `dma` (a VT-d
    /// unit that remaps DMA) each offers `VIRTIO_F_ACCESS_PLATFORM` through it.
    pub fn attach(
        &mut self,
        root: &mut PciRoot,
        router: &Arc<InterruptRouter<VmFd>>,
        vm: &Arc<VmFd>,
        mem: &GuestMemoryMmap,
        first_index: usize,
        dma: Option<Arc<dyn DmaTranslator>>,
    ) -> Result<(), Error> {
        let registrar: Arc<dyn IoEventRegistrar> = Arc::new(KvmIoEvents(vm.clone()));
        for (k, opened) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            let Opened {
                spec,
                handler,
                flag,
                input: _,
            } = opened;
            let name = format!("virtio-{}", spec.name);
            let dev = crate::passthrough::device_number(first_index + k).ok_or_else(|| {
                Error::usage(flag, format!("{name}: no free PCI device slot on bus 0"))
            })?;
            let address =
                PciAddress::new(0, dev, 0).map_err(|e| Error::Platform(format!("{name}: {e}")))?;
            let owner = Arc::new(Owner(OnceLock::new()));
            let owner_dyn: Arc<dyn VectorOwner> = owner.clone();
            let (handles, fds) = router
                .add_irqfd_vectors(
                    &name,
                    address.source_id(),
                    spec.vectors(),
                    Arc::downgrade(&owner_dyn),
                    IrqfdMode::default(),
                )
                .map_err(|e| Error::Platform(format!("{name}: {e}")))?;
            let sink = Arc::new(DeviceVectors::irqfd(router.clone(), &name, handles));
            let mut function =
                VirtioPciDevice::new(spec, handler, sink, fds, registrar.clone(), mem.clone())
                    .map_err(|e| Error::Platform(e.to_string()))?;
            if let Some(translator) = &dma {
                function = function.with_dma(DmaView {
                    translator: translator.clone(),
                    requester: address.source_id(),
                });
            }
            let device = Arc::new(Mutex::new(function));
            let _ = owner.0.set(Arc::downgrade(&device));
            self.attached.push(Attached {
                address,
                device: device.clone(),
                _owner: owner_dyn,
            });
            let shared: SharedPciFunction = device;
            root.add_function(address, shared)
                .map_err(|e| Error::Platform(format!("{name}: {e}")))?;
            log::info!("PCI {address}: {name}");
        }
        Ok(())
    }

    /// Logs each device's interrupt count (at exit).
    pub fn report(&self) {
        for a in &self.attached {
            let d = a.device.lock().unwrap_or_else(|p| p.into_inner());
            log::info!(
                "virtio {} at {}: {} interrupts signalled",
                d.name(),
                a.address,
                d.interrupt().signalled()
            );
        }
    }
}
